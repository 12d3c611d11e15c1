/* The sweep file (format mergelens.sweep v1) and `mergelens sweep-combine`,
 * which assembles the partial files of a job array (--task I --tasks N).
 * Legend: K grid points, n points held by a file, D domains. */
#include <math.h>
#include <string.h>

#include "sweep_internal.h"

int ml_sweep_file_write(MPI_Comm comm, const char *path, const ml_sweep_file *f) {
    ml_h5 *h = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_h5_create(comm, path, ML_SWEEP_FORMAT, 1, &h));
    struct {
        const char *k, *v;
    } sa[] = {{"param", f->param},   {"method", f->method}, {"recipe", f->recipe},   {"domains", f->domains},
              {"paths", f->paths},   {"models", f->models}, {"split", f->split},     {"config", f->config},
              {"reference", f->reference}};
    for (size_t i = 0; i < sizeof sa / sizeof sa[0]; i++)
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", sa[i].k, sa[i].v ? sa[i].v : ""), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", f->context), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "from", f->from), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "to", f->to), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "count", f->count), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "task", f->task), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "tasks", f->tasks), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "partial", f->partial), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", f->complete), fail);
    hsize_t dk[1] = {(hsize_t)f->count}, dn[1] = {(hsize_t)f->n}, dnd[2] = {(hsize_t)f->n, (hsize_t)f->D},
            dd[1] = {(hsize_t)f->D};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "grid", ML_F64, 1, dk, f->grid), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points", ML_I64, 1, dn, f->points), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "loss", ML_F64, 2, dnd, f->loss), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "accuracy", ML_F64, 2, dnd, f->accuracy), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "tokens", ML_I64, 1, dd, f->tokens), fail);
    if (f->done) {
        int64_t n_done = 0;
        for (int j = 0; j < f->n; j++) n_done += f->done[j] != 0;
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "done", ML_U8, 1, dn, f->done), fail);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "points_done", n_done), fail);
    }
    if (f->ref_loss) {
        ML_CHECK_GOTO(ml_h5_mkgroup(h, "reference"), fail);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "reference/loss", ML_F64, 1, dd, f->ref_loss), fail);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "reference/accuracy", ML_F64, 1, dd, f->ref_accuracy), fail);
    }
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), fail);
    return ml_h5_close(&h);
fail:
    ml_h5_discard(&h);
    return rc;
}

int ml_sweep_open(MPI_Comm comm, const char *path, ml_h5 **out) {
    ml_h5 *h = NULL;
    int64_t complete = 1, done = 0;
    *out = NULL;
    ML_CHECK(ml_h5_open(comm, path, ML_SWEEP_FORMAT, 1, 1, &h));
    int rc = ml_h5_get_attr_int(h, "/", "complete", &complete);
    if (rc == ML_ERR_NOTFOUND) { /* files written before checkpoints existed are complete */
        ml_error_clear();
        rc = ML_OK;
    }
    if (rc == ML_OK && !complete) {
        if (ml_h5_get_attr_int(h, "/", "points_done", &done) != ML_OK) ml_error_clear();
        rc = ML_FAIL(ML_ERR_FORMAT,
                     "%s: an interrupted sweep (complete = 0, %lld points done): rerun its `mergelens sweep` command "
                     "to finish it",
                     path, (long long)done);
    }
    if (rc != ML_OK) {
        ml_h5_close(&h);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = h;
    return ML_OK;
}

/* ---- sweep-combine (rank 0 reads the parts serially and writes the result) ---- */
typedef struct {
    char *s[9]; /* the string attributes in ml_sweep_file order */
    int64_t context, count, task, tasks, partial;
    double from, to;
    int D, n, has_ref;
    double *grid, *loss, *acc, *ref;
    int64_t *points, *tokens;
} ml_part;

static const char *const ml_part_attrs[9] = {"param", "method", "recipe", "domains", "paths",
                                             "models", "split", "config", "reference"};

static void ml_part_free(ml_part *p) {
    for (int i = 0; i < 9; i++) ml_free(p->s[i]);
    ml_free(p->grid);
    ml_free(p->loss);
    ml_free(p->acc);
    ml_free(p->ref);
    ml_free(p->points);
    ml_free(p->tokens);
    memset(p, 0, sizeof *p);
}

/* Read a whole dataset of `rank` dims into a new buffer; dims out. */
static int ml_read_all(ml_h5 *h, const char *name, ml_dtype t, int rank, hsize_t *dims, void **buf) {
    int r;
    ml_dtype ft;
    ML_CHECK(ml_h5_shape(h, name, &r, dims, &ft));
    if (r != rank) return ML_FAIL(ML_ERR_FORMAT, "%s: /%s has %d dimensions, expected %d", ml_h5_path(h), name, r, rank);
    size_t n = 1;
    for (int i = 0; i < r; i++) n *= dims[i];
    *buf = ml_malloc(ml_dtype_size(t) * (n ? n : 1));
    if (!*buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK(ml_h5_read_tensor(h, name, t, r, dims, *buf));
    return ML_OK;
}

static int ml_part_read(const char *path, ml_part *p) {
    ml_h5 *h = NULL;
    int rc = ML_OK;
    hsize_t d[ML_H5_MAX_RANK];
    void *b = NULL;
    ML_CHECK(ml_sweep_open(MPI_COMM_SELF, path, &h));
    for (int i = 0; i < 9; i++) ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", ml_part_attrs[i], &p->s[i]), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "context", &p->context), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "count", &p->count), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "task", &p->task), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "tasks", &p->tasks), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "partial", &p->partial), done);
    ML_CHECK_GOTO(ml_h5_get_attr_double(h, "/", "from", &p->from), done);
    ML_CHECK_GOTO(ml_h5_get_attr_double(h, "/", "to", &p->to), done);
    ML_CHECK_GOTO(ml_read_all(h, "grid", ML_F64, 1, d, &b), done);
    p->grid = b;
    if ((int64_t)d[0] != p->count) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /grid has %llu points but count is %lld", path, (unsigned long long)d[0], (long long)p->count);
    ML_CHECK_GOTO(ml_read_all(h, "points", ML_I64, 1, d, &b), done);
    p->points = b;
    p->n = (int)d[0];
    ML_CHECK_GOTO(ml_read_all(h, "tokens", ML_I64, 1, d, &b), done);
    p->tokens = b;
    p->D = (int)d[0];
    ML_CHECK_GOTO(ml_read_all(h, "loss", ML_F64, 2, d, &b), done);
    p->loss = b;
    if ((int)d[0] != p->n || (int)d[1] != p->D)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /loss is [%llu, %llu], expected [%d, %d]", path,
                     (unsigned long long)d[0], (unsigned long long)d[1], p->n, p->D);
    ML_CHECK_GOTO(ml_read_all(h, "accuracy", ML_F64, 2, d, &b), done);
    p->acc = b;
    if ((int)d[0] != p->n || (int)d[1] != p->D)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /accuracy is [%llu, %llu], expected [%d, %d]", path,
                     (unsigned long long)d[0], (unsigned long long)d[1], p->n, p->D);
    p->has_ref = ml_h5_exists(h, "reference/loss");
    if (p->has_ref) {
        p->ref = ml_malloc(sizeof(double) * 2 * (size_t)p->D);
        if (!p->ref) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        hsize_t dd[1] = {(hsize_t)p->D};
        ML_CHECK_GOTO(ml_h5_read_tensor(h, "reference/loss", ML_F64, 1, dd, p->ref), done);
        ML_CHECK_GOTO(ml_h5_read_tensor(h, "reference/accuracy", ML_F64, 1, dd, p->ref + p->D), done);
    }
    for (int i = 0; i < p->n; i++)
        if (p->points[i] < 0 || p->points[i] >= p->count)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: point index %lld outside the grid of %lld", path,
                         (long long)p->points[i], (long long)p->count);
done:
    ml_h5_close(&h);
    return rc;
}

/* Local (rank 0): read and validate the parts, then fill the combined arrays. */
static int ml_combine_local(int np, char **paths, ml_part *parts, int **owner_out) {
    int rc = ML_OK;
    for (int i = 0; i < np; i++) ML_CHECK(ml_part_read(paths[i], &parts[i]));
    const ml_part *a = &parts[0];
    for (int i = 1; i < np; i++) {
        const ml_part *b = &parts[i];
        for (int s = 0; s < 9; s++) {
            if (s == 7) continue; /* config: differs in task / out */
            if (strcmp(a->s[s], b->s[s]))
                return ML_FAIL(ML_ERR_FORMAT, "sweep-combine: %s and %s come from different sweeps: attribute '%s' is '%.80s' vs '%.80s'",
                               paths[0], paths[i], ml_part_attrs[s], a->s[s], b->s[s]);
        }
        if (a->count != b->count || a->D != b->D || a->context != b->context || a->tasks != b->tasks ||
            memcmp(a->grid, b->grid, sizeof(double) * (size_t)a->count))
            return ML_FAIL(ML_ERR_FORMAT, "sweep-combine: %s and %s come from different sweeps: the grids, domain counts, contexts or task counts differ",
                           paths[0], paths[i]);
        if (memcmp(a->tokens, b->tokens, sizeof(int64_t) * (size_t)a->D))
            return ML_FAIL(ML_ERR_FORMAT, "sweep-combine: %s and %s evaluated different numbers of tokens", paths[0], paths[i]);
    }
    int *owner = ml_malloc(sizeof(int) * 2 * (size_t)a->count); /* (K) part, (K) row */
    if (!owner) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int k = 0; k < a->count; k++) owner[k] = -1;
    for (int i = 0; i < np && rc == ML_OK; i++)
        for (int j = 0; j < parts[i].n; j++) {
            int k = (int)parts[i].points[j];
            if (owner[k] >= 0) {
                rc = ML_FAIL(ML_ERR_FORMAT, "sweep-combine: point %d (%s = %.10g) appears in both %s and %s", k,
                             a->s[0], a->grid[k], paths[owner[k]], paths[i]);
                break;
            }
            owner[k] = i;
            owner[a->count + k] = j;
        }
    for (int k = 0; k < a->count && rc == ML_OK; k++)
        if (owner[k] < 0)
            rc = ML_FAIL(ML_ERR_FORMAT, "sweep-combine: point %d (%s = %.10g) is in none of the %d files (task %lld of %lld missing?)",
                         k, a->s[0], a->grid[k], np, (long long)(k % a->tasks), (long long)a->tasks);
    if (rc) {
        ml_free(owner);
        return rc;
    }
    *owner_out = owner;
    return ML_OK;
}

static const ml_option_spec ml_combine_opts[] = {
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "the combined sweep file"},
    ML_OPT_END,
};

int ml_cmd_sweep_combine(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, help = 0, np = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL;
    ml_part *parts = NULL;
    int *owner = NULL;
    double *loss = NULL, *acc = NULL, *grid = NULL;
    int64_t *points = NULL;
    rc = ml_options_parse_command(comm, "sweep-combine",
                                  "usage: mergelens sweep-combine PART.h5... --out sweeps/<name>.h5\n\n"
                                  "Assemble the partial files of a sweep run as a job array (--task I --tasks N).\n"
                                  "They must come from the same recipe and grid and hold every point exactly once.",
                                  ml_combine_opts, argc, argv, &o, &np, &pos, &help);
    if (rc == ML_OK && !help && np < 1) rc = ML_FAIL(ML_ERR_ARG, "sweep-combine: expected the partial files, got none");
    rc = ml_agree(comm, rc);
    if (rc || help) goto done;
    if (rank == 0) {
        parts = ml_calloc((size_t)np, sizeof *parts);
        rc = parts ? ml_combine_local(np, pos, parts, &owner) : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        if (rc == ML_OK) {
            const ml_part *a = &parts[0];
            loss = ml_malloc(sizeof *loss * (size_t)a->count * a->D);
            acc = ml_malloc(sizeof *acc * (size_t)a->count * a->D);
            points = ml_malloc(sizeof *points * (size_t)a->count);
            if (!loss || !acc || !points) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
            for (int k = 0; rc == ML_OK && k < a->count; k++) {
                const ml_part *p = &parts[owner[k]];
                int j = owner[a->count + k];
                points[k] = k;
                memcpy(loss + (size_t)k * a->D, p->loss + (size_t)j * p->D, sizeof(double) * (size_t)a->D);
                memcpy(acc + (size_t)k * a->D, p->acc + (size_t)j * p->D, sizeof(double) * (size_t)a->D);
            }
            const double *ref = NULL;
            for (int i = 0; i < np && !ref; i++)
                if (parts[i].has_ref) ref = parts[i].ref;
            ml_sweep_file f = {.param = a->s[0], .method = a->s[1], .recipe = a->s[2], .domains = a->s[3],
                               .paths = a->s[4], .models = a->s[5], .split = a->s[6], .config = a->s[7],
                               .reference = a->s[8], .context = (int)a->context, .from = a->from, .to = a->to,
                               .count = (int)a->count, .task = 0, .tasks = 1, .partial = 0, .D = a->D,
                               .n = (int)a->count, .grid = a->grid, .points = points, .loss = loss,
                               .accuracy = acc, .tokens = a->tokens, .ref_loss = ref,
                               .ref_accuracy = ref ? ref + a->D : NULL, .complete = 1};
            if (rc == ML_OK) rc = ml_sweep_file_write(MPI_COMM_SELF, ml_opt_str(o, "out"), &f);
            if (rc == ML_OK) ml_info("sweep-combine: %d files, %lld points -> %s", np, (long long)a->count, ml_opt_str(o, "out"));
        }
    }
    rc = ml_agree(comm, rc);
done:
    for (int i = 0; parts && i < np; i++) ml_part_free(&parts[i]);
    ml_free(parts);
    ml_free(owner);
    ml_free(loss);
    ml_free(acc);
    ml_free(grid);
    ml_free(points);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
