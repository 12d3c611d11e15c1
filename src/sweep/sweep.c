/* `mergelens sweep`: K merge points, each merged in memory and evaluated on
 * every domain by one rank alone; results gathered and written to
 * sweeps/<name>.h5 (format mergelens.sweep v1, see include/mergelens/sweep.h).
 * The points run in rounds of P; at each round boundary the ranks agree on
 * failures and SIGTERM / SIGUSR1, and a signal (or --checkpoint_every) writes
 * a checkpoint (complete = 0) that a rerun resumes (resume.c).
 *
 * Legend: K grid points, n points of this task, D domains, P ranks. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/model.h"
#include "mergelens/train.h"
#include "sweep_internal.h"

static const ml_option_spec ml_sweep_opts[] = {
    {"param", ML_OPT_STRING, "t", 0, -1, NULL, "parameter to sweep: t, lambda, eps, tol, density, density[i], weight[i]"},
    {"from", ML_OPT_FLOAT, "0", 1, -1, NULL, "first value"},
    {"to", ML_OPT_FLOAT, "1", 1, -1, NULL, "last value"},
    {"count", ML_OPT_INT, "11", -1e9, 1e9, NULL, "number of points K (>= 1), evenly spaced from..to"},
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated token stores data/<domain>.h5"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output file sweeps/<name>.h5 (a partial file with --tasks > 1)"},
    ML_EVAL_POINT_OPTIONS,
    {"keep", ML_OPT_STRING, "", 0, -1, NULL, "comma-separated grid values whose merged checkpoints are kept"},
    {"keep_dir", ML_OPT_STRING, "models", 0, -1, NULL, "directory of kept checkpoints <keep_dir>/<name>_<param><value>.h5"},
    {"reference", ML_OPT_STRING, "", 0, -1, NULL, "also evaluate this checkpoint (rows /reference/...)"},
    {"task", ML_OPT_INT, "0", 0, 1e9, NULL, "job-array task I: evaluate the points k with k mod tasks == I"},
    {"tasks", ML_OPT_INT, "1", 1, 1e9, NULL, "job-array size N (N > 1 writes a partial file for sweep-combine)"},
    {"seed", ML_OPT_INT, "0", 0, 9e18, NULL, "seed of DARE's random drops (overrides the recipe's `seed`)"},
    {"resume", ML_OPT_BOOL, "true", 0, -1, NULL, "continue from --out when it holds an interrupted sweep (complete = 0)"},
    {"checkpoint_every", ML_OPT_INT, "0", 0, 1e9, NULL,
     "also write a checkpoint (complete = 0) to --out every N points (0 = only on SIGTERM / SIGUSR1)"},
    {"raise_at", ML_OPT_INT, "0", 0, 1e15, NULL,
     "testing: the last rank raises SIGUSR1 just before this point (1-based, of this task)"},
    ML_OPT_END,
};

/* The `context` a checkpoint was trained with (its `config` attribute), or 0. */
static int ml_sweep_train_context(MPI_Comm comm, const char *path) {
    ml_h5 *h = NULL;
    int T = ml_h5_open(comm, path, NULL, 1, 1, &h) == ML_OK ? ml_checkpoint_train_context(h) : 0;
    ml_error_clear();
    ml_h5_close(&h);
    return T;
}

/* Stem of a path: "sweeps/ab.h5" -> "ab". */
static void ml_stem(const char *path, char *out, size_t cap) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 3 && !strcmp(b + n - 3, ".h5")) n -= 3;
    if (n >= cap) n = cap - 1;
    memcpy(out, b, n);
    out[n] = '\0';
}

/* Kept checkpoint: <dir>/<name>_<param letters and digits><value %g>.h5 */
static void ml_keep_path(char *out, size_t cap, const char *dir, const char *name, const char *param, double v) {
    char p[64];
    size_t k = 0;
    for (const char *c = param; *c && k + 1 < sizeof p; c++)
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_')
            p[k++] = *c;
    p[k] = '\0';
    snprintf(out, cap, "%s/%s_%s%.10g.h5", dir, name, p, v);
}

/* The kept checkpoint's sweep_point attribute. */
static void ml_keep_point_json(char *out, size_t cap, const char *param, double v) {
    snprintf(out, cap, "{\"param\":\"%s\",\"value\":%.17g}", param, v);
}

static int ml_keep_write(const char *path, const ml_model *m, const char *parent, const char *recipe_json,
                         const char *param, double v) {
    ml_h5 *h = NULL;
    char point[160];
    ml_keep_point_json(point, sizeof point, param, v);
    ML_CHECK(ml_h5_create(MPI_COMM_SELF, path, ML_CHECKPOINT_FORMAT, 1, &h));
    int rc = ml_model_config_save(h, &m->cfg);
    if (rc == ML_OK) rc = ml_h5_set_attr_str(h, "/", "parent", parent);
    if (rc == ML_OK) rc = ml_h5_set_attr_str(h, "/", "merge_recipe", recipe_json);
    if (rc == ML_OK) rc = ml_h5_set_attr_str(h, "/", "sweep_point", point);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(h, "/", "complete", 1);
    if (rc == ML_OK) rc = ml_model_save_params(h, m);
    if (rc == ML_OK) return ml_h5_close(&h);
    ml_h5_discard(&h);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

/* Everything `sweep` needs once the options are read. */
typedef struct {
    const char *param, *out, *split, *reference, *keep_dir, *eval_order;
    double from, to;
    int count, T, batch, micro_batch, task, tasks, resume;
    int64_t eval_windows, eval_seed, raise_at, checkpoint_every;
    int D;
    char **domains;
    int n_keep;
    double *keep;
    int *keep_k; /* (n_keep) grid index */
    char *config_json;
} ml_sweep_args;

/* Local: the run's points (k mod tasks == task) and the keep indices. */
static int ml_sweep_plan(ml_sweep_args *a, int64_t **points, int *n) {
    *points = NULL;
    *n = 0;
    for (int i = 0; i < a->n_keep; i++) {
        a->keep_k[i] = -1;
        double tol = 1e-9 * fmax(1.0, fabs(a->to - a->from)), best = INFINITY;
        int bk = 0;
        for (int k = 0; k < a->count; k++) {
            double d = fabs(ml_sweep_grid_value(a->from, a->to, a->count, k) - a->keep[i]);
            if (d < best) best = d, bk = k;
        }
        if (best > tol)
            return ML_FAIL(ML_ERR_ARG, "sweep: --keep %.10g is not a grid point (nearest: %.10g, point %d of %d)",
                           a->keep[i], ml_sweep_grid_value(a->from, a->to, a->count, bk), bk, a->count);
        a->keep_k[i] = bk;
    }
    int cnt = 0;
    for (int k = a->task; k < a->count; k += a->tasks) cnt++;
    int64_t *pts = ml_malloc(sizeof *pts * (size_t)(cnt ? cnt : 1));
    if (!pts) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    cnt = 0;
    for (int k = a->task; k < a->count; k += a->tasks) pts[cnt++] = k;
    *points = pts;
    *n = cnt;
    return ML_OK;
}

/* The results held during a run: each row is set on exactly one rank (the one
 * that evaluated the point this run, or rank 0 for the rows of a resumed
 * checkpoint; zeros elsewhere), so summing over the ranks gathers them exactly. */
typedef struct {
    int n, D;
    const int64_t *points; /* (n) grid indices */
    uint8_t *done;         /* (n) finished rows (the same on every rank) */
    double *loss, *acc;    /* (n, D) this rank's rows */
    double *gl, *ga;       /* (n, D) gathered */
    int64_t *tokens;       /* (D) */
    double *refv;          /* (2 D) reference loss, accuracy */
    char *names_json;      /* domain names (JSON), once known */
} ml_sweep_rows;

/* Collective: gather the rows and write the sweep file (complete = 0: a checkpoint
 * with /done, the rows not done NaN, no reference). */
static int ml_sweep_write(MPI_Comm comm, const ml_merge_recipe *r, const ml_sweep_args *a, ml_sweep_rows *w,
                          const ml_eval_result *res, const char *recipe_json, const char *paths_json,
                          const char *models_json, const double *grid, int has_ref, int complete) {
    int rank, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    const size_t nd = (size_t)w->n * (size_t)w->D;
    int mrc = ml_mpi_allreduce(comm, w->loss, w->gl, nd, MPI_DOUBLE, MPI_SUM);
    if (mrc == ML_OK) mrc = ml_mpi_allreduce(comm, w->acc, w->ga, nd, MPI_DOUBLE, MPI_SUM);
    if (mrc == ML_OK && complete)
        mrc = ml_mpi_allreduce(comm, MPI_IN_PLACE, w->refv, 2 * (size_t)w->D, MPI_DOUBLE, MPI_SUM);
    if (mrc == ML_OK) mrc = ml_mpi_allreduce(comm, MPI_IN_PLACE, w->tokens, (size_t)w->D, MPI_INT64_T, MPI_MAX);
    if (mrc != ML_OK) return ml_agree(comm, ml_error_trace(mrc, __FILE__, __LINE__, __func__));
    if (!w->names_json) { /* rank 0 evaluated the run's first point, so it knows the domain names */
        if (rank == 0) {
            const char **dnames = ml_calloc((size_t)w->D, sizeof *dnames);
            rc = dnames ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "out of memory");
            for (int d = 0; rc == ML_OK && d < w->D; d++) dnames[d] = res[d].domain;
            if (rc == ML_OK) rc = ml_list_to_json(dnames, w->D, &w->names_json);
            ml_free(dnames);
        }
        ML_CHECK(ml_agree(comm, rc));
        ML_CHECK(ml_bcast_string(comm, &w->names_json));
    }
    for (int j = 0; j < w->n; j++)
        if (!w->done[j])
            for (int d = 0; d < w->D; d++) w->gl[(size_t)j * w->D + d] = w->ga[(size_t)j * w->D + d] = NAN;
    ml_sweep_file f = {.param = a->param,
                       .method = ml_merge_method_name(ml_merge_recipe_method(r)),
                       .recipe = recipe_json,
                       .domains = w->names_json,
                       .paths = paths_json,
                       .models = models_json,
                       .split = a->split,
                       .config = a->config_json,
                       .reference = a->reference ? a->reference : "",
                       .context = a->T,
                       .from = a->from,
                       .to = a->to,
                       .count = a->count,
                       .task = a->task,
                       .tasks = a->tasks,
                       .partial = a->tasks > 1,
                       .D = w->D,
                       .n = w->n,
                       .grid = grid,
                       .points = w->points,
                       .loss = w->gl,
                       .accuracy = w->ga,
                       .tokens = w->tokens,
                       .ref_loss = complete && has_ref ? w->refv : NULL,
                       .ref_accuracy = w->refv + w->D,
                       .complete = complete,
                       .done = complete ? NULL : w->done};
    ML_CHECK(ml_sweep_file_write(comm, a->out, &f));
    return ML_OK;
}

static void ml_sweep_rows_free(ml_sweep_rows *w) {
    ml_free(w->done);
    ml_free(w->loss);
    ml_free(w->acc);
    ml_free(w->gl);
    ml_free(w->ga);
    ml_free(w->tokens);
    ml_free(w->refv);
    ml_free(w->names_json);
}

/* Collective, on resume: a finished point whose kept checkpoint is missing or
 * incomplete is evaluated again (rank 0 checks, every rank gets the mask). */
static int ml_sweep_check_kept(MPI_Comm comm, const ml_sweep_args *a, const char *name, ml_sweep_rows *w,
                               const double *grid) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    for (int j = 0; rank == 0 && j < w->n; j++)
        for (int i = 0; w->done[j] && i < a->n_keep; i++) {
            if (a->keep_k[i] != w->points[j]) continue;
            char path[4096], point[160];
            ml_keep_path(path, sizeof path, a->keep_dir, name, a->param, a->keep[i]);
            ml_keep_point_json(point, sizeof point, a->param, grid[w->points[j]]);
            if (ml_sweep_kept_valid(path, point)) continue;
            ml_info("sweep: kept checkpoint %s is missing or incomplete: point %lld is evaluated again", path,
                    (long long)w->points[j]);
            w->done[j] = 0;
            for (int d = 0; d < w->D; d++) w->loss[(size_t)j * w->D + d] = w->acc[(size_t)j * w->D + d] = 0;
        }
    ML_CHECK(ml_mpi_bcast(comm, w->done, (size_t)w->n, MPI_UNSIGNED_CHAR, 0));
    return ML_OK;
}

static int ml_sweep_exec(MPI_Comm comm, const ml_merge_recipe *r, ml_sweep_args *a) {
    int rank, P, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    ml_sweeper *sw = NULL;
    ml_model *merged = NULL, *ref = NULL;
    ml_evaluator *ev = NULL;
    ml_eval_result *res = NULL;
    int64_t *points = NULL;
    int *todo = NULL;
    double *grid = NULL;
    char *recipe_json = NULL, *paths_json = NULL, *models_json = NULL;
    char name[256];
    ml_sweep_rows w = {0};
    ml_signal_guard guard = {0};
    int n = 0, resumed = 0;
    const char *const *mpaths = NULL;
    int M = 0;
    ml_stem(a->out, name, sizeof name);
    /* a signal during the setup is acted on at the first round boundary */
    ml_signals_install(&guard);

    /* 1. validate and load (collective); nothing is written before step 3 */
    ML_CHECK_GOTO(ml_sweeper_create(comm, r, a->param, &sw), done);
    const ml_model_config *mc = ml_sweeper_model_config(sw);
    rc = ml_sweep_plan(a, &points, &n);
    for (int k = 0; rc == ML_OK && k < a->count; k++) rc = ml_sweeper_check(sw, ml_sweep_grid_value(a->from, a->to, a->count, k));
    if (rc == ML_OK) rc = ml_merge_recipe_models(r, &mpaths, &M);
    if (rc == ML_OK && a->T == 0) a->T = ml_eval_context(0, ml_sweep_train_context(MPI_COMM_SELF, mpaths[0]), mc);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_eval_config ec = ml_eval_point_config(a->D, (const char *const *)a->domains, a->split, a->T, a->batch,
                                             a->micro_batch, a->eval_windows, a->eval_order, a->eval_seed);
    rc = ml_model_create(mc, &merged);
    if (rc == ML_OK) rc = ml_evaluator_create(MPI_COMM_SELF, mc, &ec, NULL, &ev);
    if (rc == ML_OK && a->reference && *a->reference && rank == P - 1) {
        rc = ml_checkpoint_load_model(MPI_COMM_SELF, a->reference, &ref);
        if (rc == ML_OK && memcmp(&ref->cfg, mc, sizeof *mc))
            rc = ML_FAIL(ML_ERR_SHAPE, "sweep: --reference %s has a different model configuration than %s",
                         a->reference, mpaths[0]);
    }
    const size_t nd = (size_t)n * a->D;
    w = (ml_sweep_rows){.n = n, .D = a->D, .points = points};
    res = ml_calloc((size_t)a->D, sizeof *res);
    grid = ml_malloc(sizeof *grid * (size_t)a->count);
    todo = ml_malloc(sizeof *todo * (size_t)n);
    w.done = ml_calloc((size_t)n, 1);
    w.loss = ml_calloc(nd, sizeof *w.loss);
    w.acc = ml_calloc(nd, sizeof *w.acc);
    w.gl = ml_calloc(nd, sizeof *w.gl);
    w.ga = ml_calloc(nd, sizeof *w.ga);
    w.tokens = ml_calloc((size_t)a->D, sizeof *w.tokens);
    w.refv = ml_calloc(2 * (size_t)a->D, sizeof *w.refv);
    if (rc == ML_OK &&
        (!res || !grid || !todo || !w.done || !w.loss || !w.acc || !w.gl || !w.ga || !w.tokens || !w.refv))
        rc = ML_FAIL(ML_ERR_NOMEM, "sweep: out of memory for %d points x %d domains", n, a->D);
    if (rc == ML_OK) rc = ml_merge_recipe_to_json(r, &recipe_json);
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)a->domains, a->D, &paths_json);
    if (rc == ML_OK) rc = ml_list_to_json(mpaths, M, &models_json);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    for (int k = 0; k < a->count; k++) grid[k] = ml_sweep_grid_value(a->from, a->to, a->count, k);

    /* 2. an interrupted run of this sweep left its finished points in --out */
    ml_sweep_state st = {.path = a->out, .config_json = a->config_json, .recipe_json = recipe_json, .n = n,
                         .D = a->D, .points = points, .done = w.done, .loss = w.loss, .acc = w.acc,
                         .tokens = w.tokens};
    rc = ml_sweep_resume(comm, a->resume, &st, &resumed);
    w.names_json = st.names_json;
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (resumed) {
        ML_CHECK_GOTO(ml_agree(comm, ml_sweep_check_kept(comm, a, name, &w, grid)), done);
        if (rank != 0) { /* the stored rows count once, on rank 0 */
            memset(w.loss, 0, nd * sizeof *w.loss);
            memset(w.acc, 0, nd * sizeof *w.acc);
        }
    }
    int n_todo = 0, n_done = 0;
    for (int j = 0; j < n; j++) {
        if (!w.done[j]) todo[n_todo++] = j;
        else n_done++;
    }
    if (resumed) ml_info("sweep: resuming %s: %d of %d points done", a->out, n_done, n);
    ml_info("sweep: %s of %s, %s from %g to %g, %d points (%d in this task, %d to evaluate) on %d ranks, %d domains, "
            "T = %d; %.1f MB of inputs per rank",
            ml_merge_method_name(ml_merge_recipe_method(r)), mpaths[0], a->param, a->from, a->to, a->count, n,
            n_todo, P, a->D, a->T, (double)ml_sweeper_bytes(sw) / 1e6);

    /* 3. rounds of P points: the i-th point to evaluate goes to rank i mod P; after each round
     *    the ranks agree on failures and signals (one small allreduce) and checkpoint if asked */
    int mine = 0;
    for (int i = rank; i < n_todo; i += P) mine++;
    ml_progress prog;
    ml_progress_begin(&prog, "sweep", (double)mine);
    double t0 = ml_wtime();
    int done_pts = 0, last_ckpt = n_done, sig = 0;
    char extra[96] = "";
    for (int i0 = 0; i0 < n_todo; i0 += P) {
        const int i1 = i0 + P < n_todo ? i0 + P : n_todo;
        for (int i = i0; i < i1; i++) ml_signal_raise_at(comm, todo[i] + 1, a->raise_at);
        if (rank < i1 - i0) {
            const int j = todo[i0 + rank];
            double v = grid[points[j]];
            rc = ml_sweeper_merge(sw, v, merged);
            if (rc == ML_OK) rc = ml_evaluator_run(ev, merged, res);
            for (int d = 0; rc == ML_OK && d < a->D; d++) {
                w.loss[(size_t)j * a->D + d] = res[d].loss;
                w.acc[(size_t)j * a->D + d] = res[d].accuracy;
                w.tokens[d] = res[d].n_targets;
            }
            for (int i = 0; rc == ML_OK && i < a->n_keep; i++) {
                if (a->keep_k[i] != points[j]) continue;
                char path[4096];
                ml_keep_path(path, sizeof path, a->keep_dir, name, a->param, a->keep[i]);
                rc = ml_mkdirs(a->keep_dir);
                if (rc == ML_OK) rc = ml_keep_write(path, merged, mpaths[0], recipe_json, a->param, v);
                if (rc == ML_OK) ml_debug("sweep: kept %s", path);
            }
            done_pts++;
            double el = ml_wtime() - t0;
            snprintf(extra, sizeof extra, "(~%.3g points/s on %d ranks)", el > 0 ? done_pts * P / el : 0.0, P);
            ml_progress_update(&prog, done_pts, extra);
        }
        /* the round's boundary: failure flag and signals in one allreduce */
        double flags[2] = {rc != ML_OK, ml_signal_vote(ml_signal_pending(), P)};
        ml_prof_begin("sweep.agree"); /* includes the wait for the round's slowest rank */
        if (MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS && rc == ML_OK)
            rc = ML_FAIL(ML_ERR_MPI, "sweep: MPI_Allreduce of the point flags failed");
        ml_prof_end("sweep.agree", 0, 0);
        if (flags[0] > 0 || rc != ML_OK) break;
        for (int i = i0; i < i1; i++) w.done[todo[i]] = 1;
        n_done += i1 - i0;
        if (i1 == n_todo) break; /* the last round: the final file follows */
        sig = ml_signal_tally(flags[1], P);
        if (sig || (a->checkpoint_every > 0 && n_done / a->checkpoint_every > last_ckpt / a->checkpoint_every)) {
            rc = ml_sweep_write(comm, r, a, &w, res, recipe_json, paths_json, models_json, grid, 0, 0);
            if (rc != ML_OK) break;
            last_ckpt = n_done;
            ml_debug("sweep: checkpoint of %d of %d points written to %s", n_done, n, a->out);
        }
        if (sig) break;
    }
    ml_progress_end(&prog, extra);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (sig) {
        rc = ml_agree(comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                    "interrupted by %s: checkpoint at point %d of %d written to %s; rerun the same "
                                    "command to resume",
                                    ml_signal_name(sig), n_done, n, a->out));
        goto done;
    }
    if (ref) {
        rc = ml_evaluator_run(ev, ref, res);
        for (int d = 0; rc == ML_OK && d < a->D; d++) {
            w.refv[d] = res[d].loss;
            w.refv[a->D + d] = res[d].accuracy;
            w.tokens[d] = res[d].n_targets;
        }
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    double el_max = ml_wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &el_max, 1, MPI_DOUBLE, MPI_MAX, comm);
    ml_info("sweep: %d points x %d domains in %.2f s (%.3g points/s on %d ranks)", n_todo, a->D, el_max,
            el_max > 0 ? n_todo / el_max : 0.0, P);

    /* 4. the file */
    rc = ml_sweep_write(comm, r, a, &w, res, recipe_json, paths_json, models_json, grid,
                        a->reference && *a->reference, 1);
    ML_CHECK_GOTO(rc, done);
    ml_info("sweep: wrote %s", a->out);
done:
    ml_signals_restore(&guard);
    ml_sweep_rows_free(&w);
    ml_free(points);
    ml_free(todo);
    ml_free(grid);
    ml_free(res);
    ml_free(recipe_json);
    ml_free(paths_json);
    ml_free(models_json);
    ml_evaluator_destroy(&ev);
    ml_model_destroy(&merged);
    ml_model_destroy(&ref);
    ml_sweeper_destroy(&sw);
    return rc;
}

int ml_cmd_sweep(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0, npos = 0;
    ml_options *o = NULL;
    char **pos = NULL, **keep_items = NULL;
    int n_keep_items = 0;
    ml_merge_recipe *r = NULL;
    ml_sweep_args a = {0};
    rc = ml_options_parse_command(
        comm, "sweep",
        "usage: mergelens sweep RECIPE.yaml --param t --from 0 --to 1 --count 101 --domains a.h5,b.h5 \\\n"
        "         --out sweeps/<name>.h5 [--keep 0,0.58,1] [--reference MODEL.h5] [--task I --tasks N]\n\n"
        "Merge the recipe's models at K evenly spaced values of one parameter and evaluate every merged\n"
        "model on each domain's validation split (loss, accuracy). The inputs are loaded once; ranks\n"
        "split the points; the results do not depend on the rank count.",
        ml_sweep_opts, argc, argv, &o, &npos, &pos, &help);
    if (rc != ML_OK || help) goto done;
    if (npos != 1) ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: expected one recipe file (RECIPE.yaml), got %d arguments", npos);
    a.param = ml_opt_str(o, "param");
    a.from = ml_opt_float(o, "from");
    a.to = ml_opt_float(o, "to");
    int64_t count = ml_opt_int(o, "count");
    if (count < 1) ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: --count must be >= 1, got %lld", (long long)count);
    if (!isfinite(a.from) || !isfinite(a.to))
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: --from and --to must be finite, got %g and %g", a.from, a.to);
    a.count = (int)count;
    a.out = ml_opt_str(o, "out");
    a.split = ml_opt_str(o, "split");
    a.reference = ml_opt_str(o, "reference");
    a.keep_dir = ml_opt_str(o, "keep_dir");
    a.T = (int)ml_opt_int(o, "context");
    a.batch = (int)ml_opt_int(o, "batch");
    a.micro_batch = (int)ml_opt_int(o, "micro_batch");
    a.eval_windows = ml_opt_int(o, "eval_windows");
    a.eval_order = ml_opt_str(o, "eval_order");
    a.eval_seed = ml_opt_int(o, "eval_seed");
    a.task = (int)ml_opt_int(o, "task");
    a.tasks = (int)ml_opt_int(o, "tasks");
    a.resume = ml_opt_bool(o, "resume");
    a.raise_at = ml_opt_int(o, "raise_at");
    a.checkpoint_every = ml_opt_int(o, "checkpoint_every");
    if (a.task >= a.tasks)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: --task %d must be below --tasks %d", a.task, a.tasks);
    if (a.tasks > a.count)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: --tasks %d exceeds the %d points (a task would be empty)", a.tasks,
                     a.count);
    ML_CHECK_GOTO(ml_list_split(ml_opt_str(o, "domains"), "domains", &a.domains, &a.D), done);
    const char *keep = ml_opt_str(o, "keep");
    if (keep && *keep) {
        ML_CHECK_GOTO(ml_list_split(keep, "keep", &keep_items, &n_keep_items), done);
        a.keep = ml_malloc(sizeof *a.keep * (size_t)n_keep_items);
        a.keep_k = ml_malloc(sizeof *a.keep_k * (size_t)n_keep_items);
        if (!a.keep || !a.keep_k) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        for (int i = 0; i < n_keep_items; i++) {
            char *end = NULL;
            a.keep[i] = strtod(keep_items[i], &end);
            if (!end || *end || !isfinite(a.keep[i]))
                ML_FAIL_GOTO(done, ML_ERR_ARG, "sweep: --keep: '%s' is not a number", keep_items[i]);
        }
        a.n_keep = n_keep_items;
    }
    ML_CHECK_GOTO(ml_merge_recipe_load(pos[0], &r), done);
    if (ml_opt_is_set(o, "seed")) ml_merge_recipe_set_seed(r, (uint64_t)ml_opt_int(o, "seed"));
    ML_CHECK_GOTO(ml_options_to_json(o, &a.config_json), done);
done:
    rc = ml_agree(comm, rc);
    if (rc == ML_OK && !help) rc = ml_sweep_exec(comm, r, &a);
    ml_list_free(a.domains, a.D);
    ml_list_free(keep_items, n_keep_items);
    ml_free(a.keep);
    ml_free(a.keep_k);
    ml_free(a.config_json);
    ml_merge_recipe_destroy(&r);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
