/* The training checkpoint: everything needed to continue a run exactly
 * (parameters, AdamW moments and step, loader position, metrics logs, data
 * provenance), written atomically to the output path. Layout:
 * docs/modules/train.md. */
#include "train_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Options that may change between an interrupted run and its continuation
 * without changing the trajectory (bookkeeping, evaluation, test hooks).
 * micro_batch changes only the float summation order. */
static const char *const ml_resume_free_keys[] = {"out",        "resume",      "stop_after", "raise_at",
                                                  "checkpoint_every", "eval", "eval_every", "eval_batches",
                                                  "eval_batch", "eval_order", "eval_seed", "micro_batch", NULL};

int ml_train_logs_alloc(ml_trainer *tr) {
    ml_train_log *l = &tr->log;
    ml_eval_log *e = &tr->elog;
    size_t n = (size_t)l->cap > 0 ? (size_t)l->cap : 1, ne = (size_t)e->cap > 0 ? (size_t)e->cap : 1;
    l->step = ml_malloc(n * sizeof *l->step);
    l->tokens = ml_malloc(n * sizeof *l->tokens);
    l->loss = ml_malloc(n * sizeof *l->loss);
    l->lr = ml_malloc(n * sizeof *l->lr);
    l->grad_norm = ml_malloc(n * sizeof *l->grad_norm);
    l->tokens_per_s = ml_malloc(n * sizeof *l->tokens_per_s);
    e->step = ml_malloc(ne * sizeof *e->step);
    e->domain = ml_malloc(ne * sizeof *e->domain);
    e->loss = ml_malloc(ne * sizeof *e->loss);
    e->accuracy = ml_malloc(ne * sizeof *e->accuracy);
    e->n_tokens = ml_malloc(ne * sizeof *e->n_tokens);
    if (!l->step || !l->tokens || !l->loss || !l->lr || !l->grad_norm || !l->tokens_per_s || !e->step || !e->domain ||
        !e->loss || !e->accuracy || !e->n_tokens)
        return ML_FAIL(ML_ERR_NOMEM, "train: out of memory for the metrics of %lld steps", (long long)l->cap);
    return ML_OK;
}

void ml_train_logs_free(ml_trainer *tr) {
    ml_train_log *l = &tr->log;
    ml_eval_log *e = &tr->elog;
    ml_free(l->step);
    ml_free(l->tokens);
    ml_free(l->loss);
    ml_free(l->lr);
    ml_free(l->grad_norm);
    ml_free(l->tokens_per_s);
    ml_free(e->step);
    ml_free(e->domain);
    ml_free(e->loss);
    ml_free(e->accuracy);
    ml_free(e->n_tokens);
    memset(l, 0, sizeof *l);
    memset(e, 0, sizeof *e);
}

/* ---- save -------------------------------------------------------------------------- */
/* The columns of /train/log and /train/eval (rows: the log's row count). */
#define ML_LOG_COLS 11
typedef struct {
    const char *path;
    ml_dtype type;
    void *data;
    const int64_t *rows;
} ml_log_col;

static int ml_log_columns(ml_trainer *tr, ml_log_col *c) {
    ml_train_log *l = &tr->log;
    ml_eval_log *e = &tr->elog;
    int n = 0;
    c[n++] = (ml_log_col){"/train/log/step", ML_I64, l->step, &l->n};
    c[n++] = (ml_log_col){"/train/log/tokens", ML_I64, l->tokens, &l->n};
    c[n++] = (ml_log_col){"/train/log/loss", ML_F64, l->loss, &l->n};
    c[n++] = (ml_log_col){"/train/log/lr", ML_F64, l->lr, &l->n};
    c[n++] = (ml_log_col){"/train/log/grad_norm", ML_F64, l->grad_norm, &l->n};
    c[n++] = (ml_log_col){"/train/log/tokens_per_s", ML_F64, l->tokens_per_s, &l->n};
    c[n++] = (ml_log_col){"/train/eval/step", ML_I64, e->step, &e->n};
    c[n++] = (ml_log_col){"/train/eval/domain", ML_I32, e->domain, &e->n};
    c[n++] = (ml_log_col){"/train/eval/loss", ML_F64, e->loss, &e->n};
    c[n++] = (ml_log_col){"/train/eval/accuracy", ML_F64, e->accuracy, &e->n};
    c[n++] = (ml_log_col){"/train/eval/n_tokens", ML_I64, e->n_tokens, &e->n};
    return n;
}

static int ml_write_col(ml_h5 *h, const char *path, ml_dtype t, int64_t n, const void *data) {
    hsize_t dims[1] = {(hsize_t)n};
    ML_CHECK(ml_h5_write_tensor(h, path, t, 1, dims, data));
    return ML_OK;
}

static int ml_save_body(ml_trainer *tr, ml_h5 *h, int complete, const char *names_json, const char *paths_json,
                        double *weights, int64_t *windows /* (2, K) first window, windows */) {
    const int64_t tokens_per_step = (int64_t)tr->G * tr->T;
    ML_CHECK(ml_h5_set_attr_str(h, "/", "config", tr->config_json));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "parent", tr->parent));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "complete", complete));
    if (tr->tokenizer[0]) {
        ML_CHECK(ml_h5_set_attr_str(h, "/", "tokenizer", tr->tokenizer));
        size_t n = strlen(tr->tokenizer);
        if (n > 5 && !strcmp(tr->tokenizer + n - 5, ".json"))
            ML_CHECK(ml_h5_set_attr_str(h, "/", "tokenizer_json", tr->tokenizer));
    }
    ML_CHECK(ml_model_config_save(h, &tr->model->cfg));
    ML_CHECK(ml_model_save_params(h, tr->model));
    ML_CHECK(ml_adamw_save(h, tr->opt_state, tr->model));
    /* training state */
    ML_CHECK(ml_h5_mkgroup(h, "/train"));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "step", tr->step));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "total_steps", tr->total_steps));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "tokens_seen", tr->step * tokens_per_step));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "loader_step", ml_loader_step(tr->loader)));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "seed", (int64_t)tr->seed));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "global_batch", tr->G));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "context", tr->T));
    ML_CHECK(ml_h5_set_attr_int(h, "/train", "nranks", tr->nranks));
    ML_CHECK(ml_h5_mkgroup(h, "/train/log"));
    ML_CHECK(ml_h5_mkgroup(h, "/train/eval"));
    ML_CHECK(ml_h5_set_attr_str(h, "/train/eval", "domains", names_json));
    ml_log_col cols[ML_LOG_COLS];
    for (int i = 0, n = ml_log_columns(tr, cols); i < n; i++)
        if (*cols[i].rows > 0) ML_CHECK(ml_write_col(h, cols[i].path, cols[i].type, *cols[i].rows, cols[i].data));
    /* data provenance */
    ML_CHECK(ml_h5_mkgroup(h, "/data"));
    ML_CHECK(ml_h5_set_attr_str(h, "/data", "paths", paths_json));
    ML_CHECK(ml_h5_set_attr_str(h, "/data", "domains", names_json));
    ML_CHECK(ml_write_col(h, "/data/weights", ML_F64, tr->K, weights));
    ML_CHECK(ml_write_col(h, "/data/tokens_seen", ML_I64, tr->K, tr->dom_tokens));
    ML_CHECK(ml_h5_set_attr_int(h, "/data", "subset_index", tr->subset_index));
    ML_CHECK(ml_h5_set_attr_int(h, "/data", "subset_count", tr->subset_count));
    ML_CHECK(ml_write_col(h, "/data/subset_first_window", ML_I64, tr->K, windows));
    ML_CHECK(ml_write_col(h, "/data/subset_windows", ML_I64, tr->K, windows + tr->K));
    if (complete) ML_CHECK(ml_h5_write_profile(h, "/profile")); /* rank 0's events */
    return ML_OK;
}

int ml_trainer_save(ml_trainer *tr, int complete) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    char *names_json = NULL, *paths_json = NULL;
    const char **names = NULL;
    double *weights = NULL;
    int64_t *windows = NULL; /* (2, K) */
    ml_prof_begin("train.checkpoint");
    double t0 = ml_wtime();
    names = ml_malloc(sizeof *names * (size_t)tr->K);
    weights = ml_malloc(sizeof *weights * (size_t)tr->K);
    windows = ml_malloc(sizeof *windows * 2 * (size_t)tr->K);
    rc = names && weights && windows ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "out of memory");
    double wsum = 0;
    for (int d = 0; rc == ML_OK && d < tr->K; d++) {
        names[d] = tr->info[d].name;
        windows[d] = ml_loader_domain_first_window(tr->loader, d);
        windows[tr->K + d] = ml_loader_domain_windows(tr->loader, d);
        weights[d] = tr->weights ? tr->weights[d] : (double)windows[tr->K + d];
        wsum += weights[d];
    }
    for (int d = 0; rc == ML_OK && d < tr->K; d++) weights[d] = wsum > 0 ? weights[d] / wsum : 0;
    if (rc == ML_OK) rc = ml_list_to_json(names, tr->K, &names_json);
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)tr->paths, tr->K, &paths_json);
    ML_AGREE_GOTO(tr->comm, rc, done);
    /* Every rank holds the same state: rank 0 writes the file alone, through
     * a serial handle (no collective operation per dataset and attribute). */
    if (tr->rank == 0) {
        rc = ml_h5_create(MPI_COMM_SELF, tr->out, ML_CHECKPOINT_FORMAT, 1, &h);
        if (rc == ML_OK) rc = ml_save_body(tr, h, complete, names_json, paths_json, weights, windows);
        if (rc == ML_OK) rc = ml_h5_close(&h);
        if (rc != ML_OK) ml_error_trace(rc, __FILE__, __LINE__, __func__);
        if (h) ml_h5_discard(&h);
    }
    ML_AGREE_GOTO(tr->comm, rc, done);
    ml_debug("train: checkpoint at step %lld written to %s in %.2f s", (long long)tr->step, tr->out,
             ml_wtime() - t0);
done:
    ml_free(names);
    ml_free(weights);
    ml_free(windows);
    ml_free(names_json);
    ml_free(paths_json);
    ml_prof_end("train.checkpoint", 0, 16.0 * (double)tr->model->n_params);
    return rc;
}

/* ---- restore ------------------------------------------------------------------------- */
static int ml_read_col(ml_h5 *h, const char *path, ml_dtype t, int64_t n, void *data) {
    hsize_t dims[1] = {(hsize_t)n};
    ML_CHECK(ml_h5_read_tensor(h, path, t, 1, dims, data));
    return ML_OK;
}

/* Rows of a log column (0 when the log group has no rows yet). */
static int ml_log_rows(ml_h5 *h, const char *col, int64_t cap, int64_t *n) {
    *n = 0;
    if (!ml_h5_exists(h, col)) return ML_OK;
    int r;
    hsize_t dims[ML_H5_MAX_RANK];
    ML_CHECK(ml_h5_shape(h, col, &r, dims, NULL));
    if (r != 1 || (int64_t)dims[0] > cap)
        return ML_FAIL(ML_ERR_FORMAT, "%s: %s has %llu rows, more than the %lld this run can hold", ml_h5_path(h), col,
                       (unsigned long long)dims[0], (long long)cap);
    *n = (int64_t)dims[0];
    return ML_OK;
}

int ml_trainer_stored_eval_rows(ml_h5 *h, int64_t *n) {
    ML_CHECK(ml_log_rows(h, "/train/eval/step", INT64_MAX, n));
    return ML_OK;
}

int ml_trainer_restore(ml_trainer *tr, ml_h5 *h) {
    const char *path = tr->out;
    char *stored = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_h5_get_attr_str(h, "/", "config", &stored));
    rc = ml_options_check_resume(tr->out, stored, tr->config_json, ml_resume_free_keys);
    ml_free(stored);
    if (rc != ML_OK) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    ML_CHECK(ml_model_load_params(h, tr->model));
    ML_CHECK(ml_adamw_load(h, tr->opt_state, tr->model));
    int64_t step = 0, loader_step = 0, total = 0;
    ML_CHECK(ml_h5_get_attr_int(h, "/train", "step", &step));
    ML_CHECK(ml_h5_get_attr_int(h, "/train", "loader_step", &loader_step));
    ML_CHECK(ml_h5_get_attr_int(h, "/train", "total_steps", &total));
    if (total != tr->total_steps)
        return ML_FAIL(ML_ERR_CONFIG,
                       "%s: cannot resume: it planned %lld steps, this run plans %lld (did the token stores change?)",
                       path, (long long)total, (long long)tr->total_steps);
    if (step != tr->opt_state->step || loader_step != step || step > tr->total_steps)
        return ML_FAIL(ML_ERR_FORMAT,
                       "%s: inconsistent training state: step %lld, optimizer step %lld, loader step %lld, %lld steps "
                       "planned",
                       path, (long long)step, (long long)tr->opt_state->step, (long long)loader_step,
                       (long long)tr->total_steps);
    ml_train_log *l = &tr->log;
    ML_CHECK(ml_log_rows(h, "/train/log/step", l->cap, &l->n));
    if (l->n != step)
        return ML_FAIL(ML_ERR_FORMAT, "%s: /train/log has %lld rows for %lld steps", path, (long long)l->n,
                       (long long)step);
    ml_eval_log *e = &tr->elog;
    ML_CHECK(ml_log_rows(h, "/train/eval/step", e->cap, &e->n));
    ml_log_col cols[ML_LOG_COLS];
    for (int i = 0, n = ml_log_columns(tr, cols); i < n; i++) {
        if (*cols[i].rows > 0 && cols[i].data == e->n_tokens && !ml_h5_exists(h, cols[i].path)) {
            for (int64_t r = 0; r < e->n; r++) e->n_tokens[r] = -1; /* written before the column existed */
            continue;
        }
        if (*cols[i].rows > 0) ML_CHECK(ml_read_col(h, cols[i].path, cols[i].type, *cols[i].rows, cols[i].data));
    }
    ML_CHECK(ml_read_col(h, "/data/tokens_seen", ML_I64, tr->K, tr->dom_tokens));
    /* the data subset (the option is checked above; older checkpoints have no attributes: 0/1) */
    int64_t si = 0, sn = 1;
    rc = ml_h5_get_attr_int(h, "/data", "subset_count", &sn);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        sn = 1;
    } else {
        ML_CHECK(rc);
        ML_CHECK(ml_h5_get_attr_int(h, "/data", "subset_index", &si));
    }
    if (si != tr->subset_index || sn != tr->subset_count)
        return ML_FAIL(ML_ERR_FORMAT, "%s: cannot resume: /data records subset %lld/%lld, this run has subset %d/%d",
                       path, (long long)si, (long long)sn, tr->subset_index, tr->subset_count);
    tr->step = step;
    tr->resumed_from = step;
    return ML_OK;
}
