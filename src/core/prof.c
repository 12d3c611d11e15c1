/* Profiling events: accumulated time, flops and bytes per named phase,
 * summarised across ranks like PETSc's -log_view. */
#include "mergelens/core.h"

#include <string.h>

#define ML_PROF_MAX 64
#define ML_PROF_DEPTH 16
static ml_prof_event ml_events[ML_PROF_MAX];
static int ml_nevents;
static struct {
    int idx;
    double t0;
} ml_stack[ML_PROF_DEPTH];
static int ml_depth;

static int ml_prof_find(const char *name) {
    for (int i = 0; i < ml_nevents; i++)
        if (!strcmp(ml_events[i].name, name)) return i;
    if (ml_nevents == ML_PROF_MAX) return -1;
    snprintf(ml_events[ml_nevents].name, sizeof ml_events[0].name, "%s", name);
    return ml_nevents++;
}

void ml_prof_begin(const char *event) {
    int i = ml_prof_find(event);
    if (i < 0 || ml_depth == ML_PROF_DEPTH) return;
    ml_stack[ml_depth].idx = i;
    ml_stack[ml_depth].t0 = ml_wtime();
    ml_depth++;
}

void ml_prof_end(const char *event, double flops, double bytes) {
    /* find the innermost open event of this name */
    for (int d = ml_depth - 1; d >= 0; d--) {
        ml_prof_event *e = &ml_events[ml_stack[d].idx];
        if (strcmp(e->name, event) != 0) continue;
        e->count++;
        e->seconds += ml_wtime() - ml_stack[d].t0;
        e->flops += flops;
        e->bytes += bytes;
        memmove(&ml_stack[d], &ml_stack[d + 1], sizeof ml_stack[0] * (size_t)(ml_depth - d - 1));
        ml_depth--;
        return;
    }
}

void ml_prof_reset(void) {
    ml_nevents = 0;
    ml_depth = 0;
}

int ml_prof_events(const ml_prof_event **events) {
    *events = ml_events;
    return ml_nevents;
}

int ml_prof_summary(MPI_Comm comm, FILE *out) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* ranks may have different event sets: use rank 0's list, 0 if missing */
    int n = ml_nevents;
    ML_CHECK_MPI(MPI_Bcast(&n, 1, MPI_INT, 0, comm));
    if (rank == 0 && out) {
        fprintf(out, "\n%-28s %7s %10s %10s %10s %9s %9s\n", "event", "count", "min s", "max s",
                "mean s", "GFLOP/s", "GB/s");
    }
    for (int i = 0; i < n; i++) {
        char name[48];
        if (rank == 0) memcpy(name, ml_events[i].name, sizeof name);
        ML_CHECK_MPI(MPI_Bcast(name, sizeof name, MPI_CHAR, 0, comm));
        double t = 0, fl = 0, by = 0;
        long cnt = 0;
        for (int j = 0; j < ml_nevents; j++)
            if (!strcmp(ml_events[j].name, name)) {
                t = ml_events[j].seconds;
                fl = ml_events[j].flops;
                by = ml_events[j].bytes;
                cnt = ml_events[j].count;
            }
        double tmin, tmax, tsum, flsum, bysum;
        ML_CHECK_MPI(MPI_Reduce(&t, &tmin, 1, MPI_DOUBLE, MPI_MIN, 0, comm));
        ML_CHECK_MPI(MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, comm));
        ML_CHECK_MPI(MPI_Reduce(&t, &tsum, 1, MPI_DOUBLE, MPI_SUM, 0, comm));
        ML_CHECK_MPI(MPI_Reduce(&fl, &flsum, 1, MPI_DOUBLE, MPI_SUM, 0, comm));
        ML_CHECK_MPI(MPI_Reduce(&by, &bysum, 1, MPI_DOUBLE, MPI_SUM, 0, comm));
        if (rank == 0 && out)
            fprintf(out, "%-28s %7ld %10.4f %10.4f %10.4f %9.2f %9.3f\n", name, cnt, tmin, tmax, tsum / size,
                    tmax > 0 ? flsum / tmax * 1e-9 : 0.0, tmax > 0 ? bysum / tmax * 1e-9 : 0.0);
    }
    return ML_OK;
}
