/* Checkpoint and resume of `mergelens sweep`: an interrupted sweep (SIGTERM /
 * SIGUSR1, or a periodic --checkpoint_every) leaves its output file with
 * complete = 0, /done [n] and the finished rows; a rerun of the same command
 * loads them here and evaluates only the other points.
 *
 * Legend: n points of the task, D domains. */
#include <string.h>

#include "sweep_internal.h"

/* Options that do not change any stored row: bookkeeping and test hooks, the
 * kept checkpoints (those of finished points are checked and rewritten when
 * missing) and the reference (evaluated after the last point). */
static const char *const ml_sweep_free_keys[] = {"out",  "resume",   "raise_at",  "checkpoint_every",
                                                 "keep", "keep_dir", "reference", NULL};

/* The checkpoint's rows into st (every rank reads the same file). */
static int ml_sweep_resume_read(ml_h5 *h, ml_sweep_state *st) {
    const char *path = st->path;
    char *stored = NULL;
    int64_t *points = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_h5_get_attr_str(h, "/", "config", &stored));
    rc = ml_options_check_resume(path, stored, st->config_json, ml_sweep_free_keys);
    ml_free(stored);
    stored = NULL;
    ML_CHECK(rc);
    ML_CHECK(ml_h5_get_attr_str(h, "/", "recipe", &stored));
    if (strcmp(stored, st->recipe_json))
        rc = ML_FAIL(ML_ERR_CONFIG,
                     "%s: cannot resume: it was started from another merge recipe (the recipe file changed; rerun "
                     "with the original recipe, or --resume false to start over)",
                     path);
    ml_free(stored);
    ML_CHECK(rc);
    hsize_t dn[1] = {(hsize_t)st->n}, dnd[2] = {(hsize_t)st->n, (hsize_t)st->D}, dd[1] = {(hsize_t)st->D};
    points = ml_malloc(sizeof *points * (size_t)st->n);
    if (!points) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    rc = ml_h5_read_tensor(h, "points", ML_I64, 1, dn, points);
    if (rc == ML_OK && memcmp(points, st->points, sizeof *points * (size_t)st->n))
        rc = ML_FAIL(ML_ERR_FORMAT, "%s: cannot resume: /points differs from this run's points", path);
    ml_free(points);
    ML_CHECK(rc);
    ML_CHECK(ml_h5_read_tensor(h, "done", ML_U8, 1, dn, st->done));
    ML_CHECK(ml_h5_read_tensor(h, "loss", ML_F64, 2, dnd, st->loss));
    ML_CHECK(ml_h5_read_tensor(h, "accuracy", ML_F64, 2, dnd, st->acc));
    ML_CHECK(ml_h5_read_tensor(h, "tokens", ML_I64, 1, dd, st->tokens));
    ML_CHECK(ml_h5_get_attr_str(h, "/", "domains", &st->names_json));
    for (int j = 0; j < st->n; j++) /* the rows not done are NaN in the file; the run sums into zeros */
        if (!st->done[j])
            for (int d = 0; d < st->D; d++) st->loss[(size_t)j * st->D + d] = st->acc[(size_t)j * st->D + d] = 0;
    return ML_OK;
}

int ml_sweep_resume(MPI_Comm comm, int resume, ml_sweep_state *st, int *resumed) {
    int rank, exists = 0;
    ml_h5 *h = NULL;
    *resumed = 0;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) exists = ml_file_exists(st->path);
    ML_CHECK_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, comm));
    if (!exists) return ML_OK;
    if (!resume) {
        ml_info("sweep: %s exists; --resume false: starting over (it is replaced at the first write)", st->path);
        return ML_OK;
    }
    ML_CHECK(ml_h5_open(comm, st->path, ML_SWEEP_FORMAT, 1, 1, &h));
    int64_t complete = 1;
    int rc = ml_h5_get_attr_int(h, "/", "complete", &complete);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        rc = ML_OK;
    }
    if (rc == ML_OK && complete) {
        ml_info("sweep: %s holds a complete sweep; this run replaces it", st->path);
    } else if (rc == ML_OK) {
        rc = ml_sweep_resume_read(h, st);
        *resumed = rc == ML_OK;
    }
    ml_h5_close(&h);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_sweep_kept_valid(const char *path, const char *point_json) {
    ml_h5 *h = NULL;
    int64_t complete = 0;
    char *point = NULL;
    int ok = ml_file_exists(path) && ml_h5_open(MPI_COMM_SELF, path, ML_CHECKPOINT_FORMAT, 1, 1, &h) == ML_OK &&
             ml_h5_get_attr_int(h, "/", "complete", &complete) == ML_OK && complete == 1 &&
             ml_h5_get_attr_str(h, "/", "sweep_point", &point) == ML_OK && !strcmp(point, point_json);
    ml_free(point);
    ml_h5_close(&h);
    ml_error_clear();
    return ok;
}
