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
    memset(ml_events, 0, sizeof ml_events);
    ml_nevents = 0;
    ml_depth = 0;
}

int ml_prof_events(const ml_prof_event **events) {
    *events = ml_events;
    return ml_nevents;
}

int ml_prof_gather(MPI_Comm comm, ml_prof_stat **stats, int *count) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* ranks may have different event sets: use rank 0's list, 0 if missing */
    int n = ml_nevents;
    ML_CHECK_MPI(MPI_Bcast(&n, 1, MPI_INT, 0, comm));
    ml_prof_stat *st = ml_calloc((size_t)n + 1, sizeof *st);
    if (!st) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int rc = ML_OK;
    for (int i = 0; i < n; i++) {
        if (rank == 0) memcpy(st[i].name, ml_events[i].name, sizeof st[i].name);
        rc = MPI_Bcast(st[i].name, sizeof st[i].name, MPI_CHAR, 0, comm);
        double local[3] = {0, 0, 0}, tmin = 0, tmax = 0, sums[3] = {0, 0, 0};
        for (int j = 0; j < ml_nevents; j++)
            if (!strcmp(ml_events[j].name, st[i].name)) {
                local[0] = ml_events[j].seconds;
                local[1] = ml_events[j].flops;
                local[2] = ml_events[j].bytes;
                st[i].count = ml_events[j].count;
            }
        if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&local[0], &tmin, 1, MPI_DOUBLE, MPI_MIN, comm);
        if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&local[0], &tmax, 1, MPI_DOUBLE, MPI_MAX, comm);
        if (rc == MPI_SUCCESS) rc = MPI_Allreduce(local, sums, 3, MPI_DOUBLE, MPI_SUM, comm);
        if (rc != MPI_SUCCESS) {
            ml_free(st);
            return ml_mpi_error(rc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
        }
        st[i].seconds_min = tmin;
        st[i].seconds_max = tmax;
        st[i].seconds_mean = sums[0] / size;
        st[i].flops = sums[1];
        st[i].bytes = sums[2];
    }
    *stats = st;
    *count = n;
    return ML_OK;
}

int ml_prof_summary(MPI_Comm comm, FILE *out) {
    ml_prof_stat *st = NULL;
    int n = 0, rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    ML_CHECK(ml_prof_gather(comm, &st, &n));
    if (rank == 0 && out && n > 0) {
        fprintf(out, "\nprofile (%d rank%s)\n%-28s %7s %10s %10s %10s %9s %9s\n", size, size > 1 ? "s" : "",
                "event", "count", "min s", "max s", "mean s", "GFLOP/s", "GB/s");
        for (int i = 0; i < n; i++) {
            double t = st[i].seconds_max;
            fprintf(out, "%-28s %7ld %10.4f %10.4f %10.4f %9.2f %9.3f\n", st[i].name, st[i].count,
                    st[i].seconds_min, t, st[i].seconds_mean, t > 0 ? st[i].flops / t * 1e-9 : 0.0,
                    t > 0 ? st[i].bytes / t * 1e-9 : 0.0);
        }
    }
    ml_free(st);
    return ML_OK;
}
