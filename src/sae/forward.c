/* The forward-pass row source: hook activations computed on demand from a
 * model over a window plan, with the row layout of `mergelens capture`
 * (docs/modules/sae.md, "Training from the forward pass").
 *
 * Dimension letters: N rows (tokens), W windows, B windows per forward batch,
 * T context, R = B*T rows of a batch, D hook width.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sae_forward.h"

struct ml_forward_source {
    ml_row_source src;
    ml_model *model;
    ml_workspace *ws;
    ml_window_plan *plan;
    char hook[128];
    char *source_json; /* the `source` attribute of SAEs trained on it */
    int T, B;
    int64_t W, NB;    /* windows, forward batches */
    int64_t meta_b;   /* batch whose windows are in win/doc (-1: none) */
    int64_t acts_b;   /* batch whose hook rows are in rows (-1: none) */
    float *rows;      /* (R, D) hook rows of batch acts_b */
    int32_t *win;     /* (B, T+1) windows of batch meta_b */
    int32_t *tok;     /* (B, T) model input */
    int64_t *doc;     /* (R) document ids */
    int64_t batches;  /* forward batches run */
    double seconds;   /* time in window reads + forward */
};

/* Windows of batch b into win/tok/doc. */
static int ml_fwd_meta(ml_forward_source *f, int64_t b) {
    if (f->meta_b == b) return ML_OK;
    const int T = f->T;
    const int64_t w0 = b * f->B, w1 = w0 + f->B < f->W ? w0 + f->B : f->W;
    f->meta_b = -1;
    for (int64_t w = w0; w < w1; w++) {
        const size_t j = (size_t)(w - w0);
        int32_t *win = f->win + j * (size_t)(T + 1);
        ML_CHECK(ml_window_plan_read(f->plan, w, win, f->doc + j * (size_t)T));
        memcpy(f->tok + j * (size_t)T, win, sizeof(int32_t) * (size_t)T);
    }
    f->meta_b = b;
    return ML_OK;
}

/* Hook rows of batch b (forward pass over its windows, as capture runs it). */
static int ml_fwd_acts(ml_forward_source *f, int64_t b) {
    if (f->acts_b == b) return ML_OK;
    double t0 = ml_wtime();
    f->acts_b = -1;
    ML_CHECK(ml_fwd_meta(f, b));
    const int64_t w0 = b * f->B, nw = (w0 + f->B < f->W ? f->B : f->W - w0);
    ML_CHECK(ml_model_forward(f->model, f->ws, f->tok, NULL, (int)nw, f->T, NULL));
    ml_view v;
    ML_CHECK(ml_workspace_hook(f->ws, f->hook, &v));
    const size_t D = (size_t)f->src.d;
    for (int64_t r = 0; r < nw * f->T; r++) memcpy(f->rows + (size_t)r * D, v.data + (size_t)r * v.ld, sizeof(float) * D);
    f->acts_b = b;
    f->batches++;
    f->seconds += ml_wtime() - t0;
    return ML_OK;
}

static int ml_fwd_range(const ml_forward_source *f, int64_t row0, int64_t count) {
    if (row0 < 0 || count < 0 || row0 + count > f->src.n_rows)
        return ML_FAIL(ML_ERR_ARG, "forward rows [%lld, %lld) outside [0, %lld)", (long long)row0,
                       (long long)(row0 + count), (long long)f->src.n_rows);
    return ML_OK;
}

static int ml_fwd_read(void *ctx, int64_t row0, int64_t count, float *out) {
    ml_forward_source *f = ctx;
    ML_CHECK(ml_fwd_range(f, row0, count));
    const int64_t R = (int64_t)f->B * f->T;
    const size_t D = (size_t)f->src.d;
    ml_prof_begin("sae.forward");
    int rc = ML_OK;
    for (int64_t r = row0; r < row0 + count && rc == ML_OK;) {
        const int64_t b = r / R, end = (b + 1) * R < row0 + count ? (b + 1) * R : row0 + count;
        rc = ml_fwd_acts(f, b);
        if (rc == ML_OK) memcpy(out + (size_t)(r - row0) * D, f->rows + (size_t)(r - b * R) * D, sizeof(float) * D * (size_t)(end - r));
        r = end;
    }
    ml_prof_end("sae.forward", 0, 0);
    return rc;
}

static int ml_fwd_read_meta(void *ctx, int64_t row0, int64_t count, int32_t *tokens, int64_t *doc_ids,
                            int32_t *positions) {
    ml_forward_source *f = ctx;
    ML_CHECK(ml_fwd_range(f, row0, count));
    const int64_t R = (int64_t)f->B * f->T;
    for (int64_t i = 0; i < count; i++) {
        const int64_t r = row0 + i, b = r / R, j = r - b * R; /* j: row inside the batch */
        if (tokens || doc_ids) ML_CHECK(ml_fwd_meta(f, b));
        if (tokens) tokens[i] = f->tok[j];
        if (doc_ids) doc_ids[i] = f->doc[j];
        if (positions) positions[i] = (int32_t)(r % f->T);
    }
    return ML_OK;
}

static int ml_fwd_describe(ml_forward_source *f, const ml_forward_config *c, const ml_window_spec *s) {
    json_t *a = json_array();
    for (int d = 0; a && d < s->n_domains; d++)
        if (json_array_append_new(a, json_string(s->paths[d]))) {
            json_decref(a);
            a = NULL;
        }
    char *doms = a ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    if (!doms) return ML_FAIL(ML_ERR_NOMEM, "sae: cannot format the domain list (out of memory or not UTF-8)");
    ml_sae_source_info i = {"forward", "", c->model_path, doms, f->src.n_rows, f->T, s->split ? s->split : "train",
                            s->sequential ? "sequential" : "seeded", (int64_t)s->seed, f->B};
    int rc = ml_sae_source_json(&i, &f->source_json);
    free(doms);
    return rc;
}

int ml_forward_source_open(MPI_Comm comm, const ml_forward_config *c, ml_forward_source **out) {
    *out = NULL;
    int rc = ML_OK;
    if (c->n_tokens < 1) return ML_FAIL(ML_ERR_ARG, "sae: the forward-pass source needs tokens >= 1 (got %lld)", (long long)c->n_tokens);
    if (c->batch < 1) return ML_FAIL(ML_ERR_ARG, "sae: --model_batch %d must be >= 1", c->batch);
    ml_forward_source *f = ml_calloc(1, sizeof *f);
    if (!f) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    f->meta_b = f->acts_b = -1;
    ML_CHECK_GOTO(ml_capture_load_model(comm, c->model_path, &f->model), fail);
    const ml_model_config *mc = &f->model->cfg;
    ml_window_spec spec = c->windows;
    if (spec.T == 0) spec.T = mc->max_context;
    if (spec.T < 1 || spec.T > mc->max_context)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "sae: --context %d outside [1, %d] (the max_context of %s)", spec.T,
                     mc->max_context, c->model_path);
    f->T = spec.T;
    f->B = c->batch;
    f->W = (c->n_tokens + f->T - 1) / f->T;
    f->NB = (f->W + f->B - 1) / f->B;
    /* the hook: canonical name, checked against the model by a one-token forward pass */
    ml_workspace_config wc = {f->B, f->T, 0, 0, 0};
    rc = ml_capture_hook_canonical(c->hook, mc->n_layers, f->hook, sizeof f->hook);
    if (rc == ML_OK) rc = ml_workspace_create(mc, &wc, &f->ws);
    int32_t tok0 = 0;
    if (rc == ML_OK) rc = ml_model_forward(f->model, f->ws, &tok0, NULL, 1, 1, NULL);
    ml_view v = {0};
    if (rc == ML_OK) rc = ml_workspace_hook(f->ws, f->hook, &v);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    ML_CHECK_GOTO(ml_window_plan_create(comm, &spec, f->W, mc->vocab_size, &f->plan), fail);
    const size_t R = (size_t)f->B * (size_t)f->T;
    f->rows = ml_malloc(sizeof(float) * R * (size_t)v.cols);
    f->win = ml_malloc(sizeof(int32_t) * (size_t)f->B * (size_t)(f->T + 1));
    f->tok = ml_malloc(sizeof(int32_t) * R);
    f->doc = ml_malloc(sizeof(int64_t) * R);
    if (!f->rows || !f->win || !f->tok || !f->doc)
        rc = ML_FAIL(ML_ERR_NOMEM, "sae: out of memory for a forward batch of %d windows x %d tokens x %d", f->B, f->T,
                     v.cols);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    f->src.n_rows = c->n_tokens;
    f->src.d = v.cols;
    f->src.ctx = f;
    f->src.read = ml_fwd_read;
    f->src.read_meta = ml_fwd_read_meta;
    ML_CHECK_GOTO(ml_fwd_describe(f, c, &spec), fail);
    *out = f;
    return ML_OK;
fail:
    ml_forward_source_close(&f);
    return rc;
}

const ml_row_source *ml_forward_source_rows(const ml_forward_source *f) { return &f->src; }
const char *ml_forward_source_hook(const ml_forward_source *f) { return f->hook; }
const char *ml_forward_source_json(const ml_forward_source *f) { return f->source_json; }
int ml_forward_source_context(const ml_forward_source *f) { return f->T; }
const ml_window_plan *ml_forward_source_plan(const ml_forward_source *f) { return f->plan; }
void ml_forward_source_stats(const ml_forward_source *f, int64_t *batches, double *seconds) {
    if (batches) *batches = f->batches;
    if (seconds) *seconds = f->seconds;
}

void ml_forward_source_close(ml_forward_source **fp) {
    if (!fp || !*fp) return;
    ml_forward_source *f = *fp;
    ml_window_plan_destroy(&f->plan);
    ml_workspace_destroy(&f->ws);
    ml_model_destroy(&f->model);
    ml_free(f->rows);
    ml_free(f->win);
    ml_free(f->tok);
    ml_free(f->doc);
    ml_free(f->source_json);
    ml_free(f);
    *fp = NULL;
}
