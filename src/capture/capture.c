/* Activation capture: run a model over a window plan and write
 * acts/<model>.h5 (format mergelens.activations v1, docs/modules/capture.md).
 *
 * Dimension letters: N rows (= tokens captured), W windows, B windows per
 * forward batch, T context, R = B*T rows of a batch, d_h width of hook h,
 * P ranks. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "capture_internal.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/model.h"

void ml_capture_config_default(ml_capture_config *c) {
    memset(c, 0, sizeof *c);
    c->windows.split = "train";
    c->windows.seed = 42;
    c->batch = 8;
}

int ml_capture_load_model(MPI_Comm comm, const char *path, ml_model **out) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    ml_model_config mc;
    *out = NULL;
    ML_CHECK(ml_h5_open(comm, path, ML_CHECKPOINT_FORMAT, 1, 1, &h));
    rc = ml_model_config_load(h, &mc);
    if (rc == ML_OK) rc = ml_model_create(&mc, out);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    ML_CHECK_GOTO(ml_agree(comm, ml_model_load_params(h, *out)), fail);
    return ml_h5_close(&h);
fail:
    ml_model_destroy(out);
    ml_h5_close(&h);
    return rc;
}

int ml_capture_json_list(const char *const *items, int n, char **out) {
    json_t *a = json_array();
    int ok = a != NULL;
    for (int i = 0; ok && i < n; i++) ok = json_array_append_new(a, json_string(items[i])) == 0;
    char *text = ok ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    *out = text ? ml_strdup(text) : NULL;
    free(text);
    if (!*out) return ML_FAIL(ML_ERR_NOMEM, "out of memory (or a string that is not UTF-8) making a JSON list");
    return ML_OK;
}

typedef struct {
    int n;
    char name[ML_CAPTURE_MAX_HOOKS][128]; /* canonical hook names */
    const char *names[ML_CAPTURE_MAX_HOOKS];
    int width[ML_CAPTURE_MAX_HOOKS];   /* d_h */
    char dset[ML_CAPTURE_MAX_HOOKS][192];
    float *stage[ML_CAPTURE_MAX_HOOKS]; /* (R, d_h) */
    uint16_t *half;                     /* (R, max d_h) */
} ml_hook_set;

/* Root attributes describing the capture. */
static int ml_capture_attrs(ml_h5 *h, const ml_capture_config *c, const ml_hook_set *hs, const ml_window_plan *plan,
                            int64_t W) {
    char *json = NULL;
    const char *names[ML_CAPTURE_MAX_DOMAINS];
    const ml_window_spec *s = &c->windows;
    int rc = ML_OK;
    ML_CHECK(ml_h5_set_attr_str(h, "/", "model", c->model_path ? c->model_path : ""));
    ML_CHECK(ml_capture_json_list(s->paths, s->n_domains, &json));
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domains", json), done);
    ml_free(json);
    for (int d = 0; d < s->n_domains; d++) names[d] = ml_window_plan_domain_name(plan, d);
    ML_CHECK_GOTO(ml_capture_json_list(names, s->n_domains, &json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domain_names", json), done);
    ml_free(json);
    ML_CHECK_GOTO(ml_capture_json_list(hs->names, hs->n, &json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "hooks", json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_tokens", c->n_tokens), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_windows", W), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", s->T), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "split", s->split ? s->split : "train"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "order", s->sequential ? "sequential" : "seeded"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "seed", (int64_t)s->seed), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "dtype", c->float16 ? "float16" : "float32"), done);
    if (c->config_json) ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", c->config_json), done);
done:
    ml_free(json);
    return rc;
}


/* Canonical name (capture.h). */
int ml_capture_hook_canonical(const char *name, int n_layers, char *out, size_t cap) {
    if (!strncmp(name, "blocks.", 7) || !strncmp(name, "ln_final.", 9)) {
        if (strlen(name) >= cap) return ML_FAIL(ML_ERR_ARG, "capture: hook name '%s' is too long", name);
        snprintf(out, cap, "%s", name);
        return ML_OK;
    }
    const char *pre = !strncmp(name, "hook_", 5) || !strncmp(name, "mlp.", 4) ? "" : "hook_";
    if (n_layers != 1)
        return ML_FAIL(ML_ERR_ARG, "capture: hook '%s' is ambiguous in a %d-layer model: give blocks.<i>.%s%s", name,
                       n_layers, pre, name);
    if (strlen(name) + strlen(pre) + 9 >= cap) return ML_FAIL(ML_ERR_ARG, "capture: hook name '%s' is too long", name);
    snprintf(out, cap, "blocks.0.%s%s", pre, name);
    return ML_OK;
}

/* Check the names against the model with a one-token forward pass and learn the widths. */
static int ml_hooks_resolve(const ml_model *m, ml_workspace *ws, const ml_capture_config *c, ml_hook_set *hs) {
    if (c->n_hooks < 1 || c->n_hooks > ML_CAPTURE_MAX_HOOKS)
        return ML_FAIL(ML_ERR_ARG, "capture: %d hooks given (expected 1..%d)", c->n_hooks, ML_CAPTURE_MAX_HOOKS);
    int32_t tok = 0;
    ML_CHECK(ml_model_forward(m, ws, &tok, NULL, 1, 1, NULL));
    hs->n = c->n_hooks;
    for (int i = 0; i < c->n_hooks; i++) {
        ML_CHECK(ml_capture_hook_canonical(c->hooks[i], m->cfg.n_layers, hs->name[i], sizeof hs->name[i]));
        hs->names[i] = hs->name[i];
        for (int j = 0; j < i; j++)
            if (!strcmp(hs->name[i], hs->name[j]))
                return ML_FAIL(ML_ERR_ARG, "capture: hook '%s' is given twice", hs->name[i]);
        ml_view v;
        ML_CHECK(ml_workspace_hook(ws, hs->name[i], &v));
        hs->width[i] = v.cols;
        snprintf(hs->dset[i], sizeof hs->dset[i], "/hooks/%s/acts", hs->name[i]);
    }
    return ML_OK;
}

static int ml_hooks_alloc(ml_hook_set *hs, size_t R, int float16) {
    int wmax = 0;
    for (int i = 0; i < hs->n; i++) {
        ML_ALLOC(hs->stage[i], R * (size_t)hs->width[i]);
        if (hs->width[i] > wmax) wmax = hs->width[i];
    }
    if (float16) ML_ALLOC(hs->half, R * (size_t)wmax);
    return ML_OK;
}

static void ml_hooks_free(ml_hook_set *hs) {
    for (int i = 0; i < ML_CAPTURE_MAX_HOOKS; i++) ml_free(hs->stage[i]);
    ml_free(hs->half);
}

/* Create every dataset of the file (collective). */
static int ml_capture_datasets(ml_h5 *h, const ml_capture_config *c, const ml_hook_set *hs, int64_t N) {
    int wmax = 1;
    for (int i = 0; i < hs->n; i++) wmax = hs->width[i] > wmax ? hs->width[i] : wmax;
    int64_t chunk = c->chunk_rows > 0 ? c->chunk_rows : (1 << 20) / (4 * (int64_t)wmax);
    if (chunk < 1) chunk = 1;
    ml_h5_layout lay = {(hsize_t)chunk, 0, 0};
    for (int i = 0; i < hs->n; i++) {
        hsize_t dims[2] = {(hsize_t)N, (hsize_t)hs->width[i]};
        ML_CHECK(ml_h5_create_dataset(h, hs->dset[i], c->float16 ? ML_F16 : ML_F32, 2, dims, &lay));
    }
    /* per-row metadata: chunks of 64K rows (or the activations' chunk if larger) */
    ml_h5_layout mlay = {(hsize_t)(chunk > 65536 ? chunk : 65536), 0, 0};
    hsize_t n1[1] = {(hsize_t)N};
    ML_CHECK(ml_h5_create_dataset(h, "/tokens", ML_I32, 1, n1, &mlay));
    ML_CHECK(ml_h5_create_dataset(h, "/positions", ML_I32, 1, n1, &mlay));
    ML_CHECK(ml_h5_create_dataset(h, "/doc_ids", ML_I64, 1, n1, &mlay));
    ML_CHECK(ml_h5_create_dataset(h, "/domain_ids", ML_I32, 1, n1, &mlay));
    return ML_OK;
}

typedef struct {
    int32_t *win;     /* (B, T+1) windows */
    int32_t *tok;     /* (B, T) model inputs */
    int32_t *row_tok; /* (R) */
    int32_t *row_pos; /* (R) */
    int32_t *row_dom; /* (R) */
    int64_t *row_doc; /* (R) */
} ml_capture_bufs;

/* Read windows [w0, w1) and fill the model input and row metadata (local). */
static int ml_capture_read(ml_window_plan *plan, int64_t w0, int64_t w1, int T, ml_capture_bufs *b) {
    for (int64_t w = w0; w < w1; w++) {
        const size_t j = (size_t)(w - w0);
        int32_t *win = b->win + j * (size_t)(T + 1);
        ML_CHECK(ml_window_plan_read(plan, w, win, b->row_doc + j * (size_t)T));
        int dom;
        ml_window_plan_window(plan, w, &dom, NULL);
        memcpy(b->tok + j * (size_t)T, win, sizeof(int32_t) * (size_t)T);
        for (int t = 0; t < T; t++) {
            b->row_tok[j * T + t] = win[t];
            b->row_pos[j * T + t] = t;
            b->row_dom[j * T + t] = dom;
        }
    }
    return ML_OK;
}

/* Copy the hooks of the last forward pass (rows [0, rows)) into the staging buffers. */
static int ml_capture_stage(ml_workspace *ws, ml_hook_set *hs, int64_t rows) {
    for (int i = 0; i < hs->n; i++) {
        ml_view v;
        ML_CHECK(ml_workspace_hook(ws, hs->name[i], &v));
        const size_t d = (size_t)hs->width[i];
        for (int64_t r = 0; r < rows; r++) memcpy(hs->stage[i] + (size_t)r * d, v.data + (size_t)r * v.ld, sizeof(float) * d);
    }
    return ML_OK;
}

/* Collective: write rows [row0, row0 + rows) of every dataset (rows may be 0). */
static int ml_capture_write(ml_h5 *h, const ml_capture_config *c, ml_hook_set *hs, const ml_capture_bufs *b,
                            int64_t row0, int64_t rows, double *bytes) {
    const hsize_t r0 = (hsize_t)row0, n = (hsize_t)rows;
    for (int i = 0; i < hs->n; i++) {
        const size_t cnt = (size_t)rows * (size_t)hs->width[i];
        if (c->float16) {
            ml_f32_to_f16_array(hs->half, hs->stage[i], cnt);
            ML_CHECK(ml_h5_write_rows(h, hs->dset[i], ML_F16, r0, n, hs->half));
            *bytes += 2.0 * (double)cnt;
        } else {
            ML_CHECK(ml_h5_write_rows(h, hs->dset[i], ML_F32, r0, n, hs->stage[i]));
            *bytes += 4.0 * (double)cnt;
        }
    }
    ML_CHECK(ml_h5_write_rows(h, "/tokens", ML_I32, r0, n, b->row_tok));
    ML_CHECK(ml_h5_write_rows(h, "/positions", ML_I32, r0, n, b->row_pos));
    ML_CHECK(ml_h5_write_rows(h, "/doc_ids", ML_I64, r0, n, b->row_doc));
    ML_CHECK(ml_h5_write_rows(h, "/domain_ids", ML_I32, r0, n, b->row_dom));
    return ML_OK;
}

int ml_capture_sum(MPI_Comm comm, const double *in, double *out, int n) {
    ML_CHECK_MPI(MPI_Allreduce(in, out, n, MPI_DOUBLE, MPI_SUM, comm));
    return ML_OK;
}

int ml_capture_run(MPI_Comm comm, const ml_model *model, const ml_capture_config *c, const char *path,
                   ml_capture_stats *stats) {
    int rc = ML_OK, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    const int T = c->windows.T, B = c->batch;
    const int64_t N = c->n_tokens;
    if (N < 1) return ML_FAIL(ML_ERR_ARG, "capture: n_tokens = %lld must be >= 1", (long long)N);
    if (B < 1) return ML_FAIL(ML_ERR_ARG, "capture: batch = %d windows must be >= 1", B);
    if (T < 1 || T > model->cfg.max_context)
        return ML_FAIL(ML_ERR_ARG, "capture: context %d outside [1, %d] (the model's max_context)", T,
                       model->cfg.max_context);
    const int64_t W = (N + T - 1) / T, NB = (W + B - 1) / B, steps = (NB + P - 1) / P;
    const size_t R = (size_t)B * (size_t)T;

    ml_window_plan *plan = NULL;
    ml_workspace *ws = NULL;
    ml_h5 *h = NULL;
    ml_hook_set hs;
    ml_capture_bufs b = {0};
    memset(&hs, 0, sizeof hs);
    ml_workspace_config wc = {B, T, 0, 0, 0};
    rc = ml_workspace_create(&model->cfg, &wc, &ws);
    if (rc == ML_OK) rc = ml_hooks_resolve(model, ws, c, &hs);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_window_plan_create(comm, &c->windows, W, model->cfg.vocab_size, &plan), done);
    rc = ml_hooks_alloc(&hs, R, c->float16);
    b.win = ml_malloc(sizeof(int32_t) * (size_t)B * (size_t)(T + 1));
    b.tok = ml_malloc(sizeof(int32_t) * R);
    b.row_tok = ml_malloc(sizeof(int32_t) * R);
    b.row_pos = ml_malloc(sizeof(int32_t) * R);
    b.row_dom = ml_malloc(sizeof(int32_t) * R);
    b.row_doc = ml_malloc(sizeof(int64_t) * R);
    if (rc == ML_OK && (!b.win || !b.tok || !b.row_tok || !b.row_pos || !b.row_dom || !b.row_doc))
        rc = ML_FAIL(ML_ERR_NOMEM, "capture: out of memory for a batch of %d windows", B);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);

    ML_CHECK_GOTO(ml_h5_create(comm, path, ML_CAPTURE_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_capture_attrs(h, c, &hs, plan, W), done);
    ML_CHECK_GOTO(ml_capture_datasets(h, c, &hs, N), done);

    ml_progress pg;
    if (!c->quiet) ml_progress_begin(&pg, "capture", (double)N);
    double t0 = ml_wtime(), bytes = 0;
    for (int64_t s = 0; s < steps; s++) {
        /* this rank runs batch s*P + rank: windows [w0, w1), rows [row0, row0 + rows) */
        const int64_t bi = s * P + rank, w0 = bi < NB ? bi * B : W, w1 = w0 + B < W ? w0 + B : W;
        const int64_t row0 = w0 * T, rows = w1 > w0 ? (w1 * T < N ? w1 * T : N) - row0 : 0;
        int lrc = ML_OK;
        if (rows > 0) {
            ml_prof_begin("capture.read");
            lrc = ml_capture_read(plan, w0, w1, T, &b);
            ml_prof_end("capture.read", 0, (double)(w1 - w0) * (T + 1) * 4);
            if (lrc == ML_OK) lrc = ml_model_forward(model, ws, b.tok, NULL, (int)(w1 - w0), T, NULL);
            if (lrc == ML_OK) lrc = ml_capture_stage(ws, &hs, rows);
        }
        ML_CHECK_GOTO(ml_agree(comm, lrc), done);
        ml_prof_begin("capture.write");
        double bw = 0;
        rc = ml_capture_write(h, c, &hs, &b, rows > 0 ? row0 : 0, rows, &bw);
        ml_prof_end("capture.write", 0, bw);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        bytes += bw;
        if (!c->quiet) {
            int64_t done_rows = (s + 1) * P * (int64_t)R;
            ml_progress_update(&pg, (double)(done_rows < N ? done_rows : N), NULL);
        }
    }
    double secs = ml_wtime() - t0, total_bytes = 0;
    ML_CHECK_GOTO(ml_capture_sum(comm, &bytes, &total_bytes, 1), done);
    if (!c->quiet) {
        char extra[96];
        snprintf(extra, sizeof extra, "%.1f MB of activations, %.3g MB/s", total_bytes / 1e6,
                 total_bytes / 1e6 / (secs > 0 ? secs : 1e-9));
        ml_progress_end(&pg, extra);
    }
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    if (stats) *stats = (ml_capture_stats){N, W, secs, total_bytes};
done:
    if (h) ml_h5_discard(&h);
    ml_free(b.win);
    ml_free(b.tok);
    ml_free(b.row_tok);
    ml_free(b.row_pos);
    ml_free(b.row_dom);
    ml_free(b.row_doc);
    ml_hooks_free(&hs);
    ml_window_plan_destroy(&plan);
    ml_workspace_destroy(&ws);
    return rc;
}
