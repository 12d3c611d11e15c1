/* Activation capture: run a model over a window plan and write
 * acts/<model>.h5 (format mergelens.activations v1, docs/modules/capture.md).
 *
 * Dimension letters: N rows (= tokens captured), W windows, B windows per
 * forward batch, T context, R = B*T rows of a batch, d_h width of hook h,
 * P ranks. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <limits.h>
#include <zlib.h>

#include "capture_internal.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/model.h"

void ml_capture_config_default(ml_capture_config *c) {
    memset(c, 0, sizeof *c);
    c->windows.split = "train";
    c->windows.seed = 42;
    c->batch = 8;
    c->resume = 1;
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

/* Root attributes describing the capture: written when the file is created
 * and compared when a checkpoint is resumed (all but `model`, a path that
 * may be spelt differently; the parameters' CRC-32 stands for it). */
#define ML_CAPTURE_NMETA 16
typedef struct {
    int n;
    const char *name[ML_CAPTURE_NMETA];
    const char *str[ML_CAPTURE_NMETA]; /* NULL: an integer attribute */
    int64_t num[ML_CAPTURE_NMETA];
    char *json[3]; /* owned: domains, domain_names, hooks */
    int64_t n_batches;
} ml_capture_meta;

static void ml_meta_str(ml_capture_meta *m, const char *name, const char *v) {
    m->name[m->n] = name;
    m->str[m->n++] = v;
}

static void ml_meta_int(ml_capture_meta *m, const char *name, int64_t v) {
    m->name[m->n] = name;
    m->str[m->n] = NULL;
    m->num[m->n++] = v;
}

static void ml_capture_meta_clear(ml_capture_meta *m) {
    for (int i = 0; i < 3; i++) ml_free(m->json[i]);
    memset(m, 0, sizeof *m);
}

/* CRC-32 (zlib) of the model's float32 parameters in tensor-table order. */
static int64_t ml_capture_model_crc(const ml_model *model) {
    uLong crc = crc32(0L, Z_NULL, 0);
    const unsigned char *p = (const unsigned char *)model->params;
    for (size_t left = model->n_params * sizeof(float); left > 0;) {
        const uInt n = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, n);
        p += n;
        left -= n;
    }
    return (int64_t)crc;
}

static int ml_capture_meta_build(const ml_capture_config *c, const ml_model *model, const ml_hook_set *hs,
                                 const ml_window_plan *plan, int64_t W, int64_t NB, ml_capture_meta *m) {
    const char *names[ML_CAPTURE_MAX_DOMAINS];
    const ml_window_spec *s = &c->windows;
    memset(m, 0, sizeof *m);
    for (int d = 0; d < s->n_domains; d++) names[d] = ml_window_plan_domain_name(plan, d);
    ML_CHECK(ml_capture_json_list(s->paths, s->n_domains, &m->json[0]));
    ML_CHECK(ml_capture_json_list(names, s->n_domains, &m->json[1]));
    ML_CHECK(ml_capture_json_list(hs->names, hs->n, &m->json[2]));
    ml_meta_str(m, "model", c->model_path ? c->model_path : "");
    ml_meta_str(m, "domains", m->json[0]);
    ml_meta_str(m, "domain_names", m->json[1]);
    ml_meta_str(m, "hooks", m->json[2]);
    ml_meta_int(m, "n_tokens", c->n_tokens);
    ml_meta_int(m, "n_windows", W);
    ml_meta_int(m, "context", s->T);
    ml_meta_str(m, "split", s->split ? s->split : "train");
    ml_meta_str(m, "order", s->sequential ? "sequential" : "seeded");
    ml_meta_int(m, "seed", (int64_t)s->seed);
    ml_meta_str(m, "dtype", c->float16 ? "float16" : "float32");
    ml_meta_int(m, "batch", c->batch);
    ml_meta_int(m, "n_batches", NB);
    m->n_batches = NB;
    ml_meta_int(m, "model_crc32", ml_capture_model_crc(model));
    return ML_OK;
}

static int ml_capture_meta_write(ml_h5 *h, const ml_capture_meta *m, const char *config_json) {
    for (int i = 0; i < m->n; i++)
        ML_CHECK(m->str[i] ? ml_h5_set_attr_str(h, "/", m->name[i], m->str[i])
                           : ml_h5_set_attr_int(h, "/", m->name[i], m->num[i]));
    if (config_json) ML_CHECK(ml_h5_set_attr_str(h, "/", "config", config_json));
    return ML_OK;
}

/* The checkpoint h (read locally) continues this capture: same options
 * (except the bookkeeping keys), same description, same model parameters. */
static const char *const ml_capture_free_keys[] = {"out", "resume", "raise_at", "checkpoint_every", NULL};

static int ml_capture_meta_check(ml_h5 *h, const ml_capture_meta *m, const char *config_json, int64_t *batches_done) {
    const char *path = ml_h5_path(h);
    char *stored = NULL;
    int rc = ML_OK;
    if (config_json) {
        ML_CHECK(ml_h5_get_attr_str(h, "/", "config", &stored));
        rc = ml_options_check_resume(path, stored, config_json, ml_capture_free_keys);
        ml_free(stored);
        stored = NULL;
        ML_CHECK(rc);
    }
    for (int i = 0; i < m->n; i++) {
        if (!strcmp(m->name[i], "model")) continue; /* a path; model_crc32 checks the parameters */
        if (m->str[i]) {
            ML_CHECK(ml_h5_get_attr_str(h, "/", m->name[i], &stored));
            if (strcmp(stored, m->str[i]))
                rc = ML_FAIL(ML_ERR_CONFIG,
                             "%s: cannot resume: it records %s = %s, this run has %s (rerun with the original "
                             "options, or --resume false to start over)",
                             path, m->name[i], stored, m->str[i]);
            ml_free(stored);
            stored = NULL;
            ML_CHECK(rc);
        } else {
            int64_t v = 0;
            ML_CHECK(ml_h5_get_attr_int(h, "/", m->name[i], &v));
            if (v != m->num[i] && !strcmp(m->name[i], "model_crc32"))
                return ML_FAIL(ML_ERR_CONFIG,
                               "%s: cannot resume: it was captured from a model whose parameters have CRC-32 %08llx, "
                               "this run's %s has %08llx (rerun with the original model, or --resume false to start "
                               "over)",
                               path, (unsigned long long)v, m->str[0] ? m->str[0] : "model", (unsigned long long)m->num[i]);
            if (v != m->num[i])
                return ML_FAIL(ML_ERR_CONFIG,
                               "%s: cannot resume: it records %s = %lld, this run has %lld (rerun with the original "
                               "options, or --resume false to start over)",
                               path, m->name[i], (long long)v, (long long)m->num[i]);
        }
    }
    ML_CHECK(ml_h5_get_attr_int(h, "/", "batches_done", batches_done));
    const int64_t NB = m->n_batches;
    if (*batches_done < 0 || *batches_done > NB)
        return ML_FAIL(ML_ERR_FORMAT, "%s: batches_done = %lld is outside [0, %lld] (a damaged checkpoint?)", path,
                       (long long)*batches_done, (long long)NB);
    return ML_OK;
}

/* Is `path` an unfinished capture to continue? If so *h is it opened
 * read-write and *b0 the batches it holds; else *h = NULL (start over). A
 * file that is not a capture checkpoint is replaced when the new file is
 * finished; a checkpoint of another capture is an error (it is kept). */
static int ml_capture_open_resume(MPI_Comm comm, const char *path, const ml_capture_config *c,
                                  const ml_capture_meta *m, ml_h5 **h, int64_t *b0) {
    int rank, exists = 0;
    MPI_Comm_rank(comm, &rank);
    *h = NULL;
    *b0 = 0;
    if (rank == 0) exists = ml_file_exists(path);
    ML_CHECK_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, comm));
    if (!exists) return ML_OK;
    if (!c->resume) {
        ml_info("capture: %s exists; --resume false: starting over (it is replaced when the new file is written)", path);
        return ML_OK;
    }
    ml_h5 *r = NULL;
    if (ml_h5_open(comm, path, NULL, 0, INT_MAX, &r) != ML_OK) {
        ml_warn("capture: %s is not a readable mergelens file (%s): starting over (it is replaced when the new file "
                "is written)", path, ml_error_message());
        ml_error_clear();
        return ML_OK;
    }
    if (strcmp(ml_h5_format(r), ML_CAPTURE_PARTIAL_FORMAT)) {
        ml_info("capture: %s holds a finished '%s' file: capturing again replaces it", path, ml_h5_format(r));
        return ml_h5_close(&r);
    }
    int rc = ml_agree(comm, ml_capture_meta_check(r, m, c->config_json, b0));
    ml_h5_close(&r);
    ML_CHECK(rc);
    ML_CHECK(ml_h5_open_rw(comm, path, ML_CAPTURE_PARTIAL_FORMAT, 1, 1, h));
    return ML_OK;
}

/* Collective: make the file durable under `path` as a checkpoint holding
 * batches [0, done): flags first, then the close flushes everything (a
 * created file is renamed to `path`). With reopen the run continues writing
 * it in place. */
static int ml_capture_checkpoint(MPI_Comm comm, ml_h5 **h, const char *path, int64_t done, int reopen) {
    int rc = ml_h5_set_attr_str(*h, "/", "format", ML_CAPTURE_PARTIAL_FORMAT);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(*h, "/", "complete", 0);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(*h, "/", "batches_done", done);
    ML_CHECK(ml_agree(comm, rc));
    ML_CHECK(ml_h5_close(h));
    if (reopen) ML_CHECK(ml_h5_open_rw(comm, path, ML_CAPTURE_PARTIAL_FORMAT, 1, 1, h));
    return ML_OK;
}

/* Collective: finish the file. Everything but the flags is written and
 * flushed first, so a file that says complete = 1 holds every row even if
 * the process dies during this call. */
static int ml_capture_finish(MPI_Comm comm, ml_h5 **h, const char *path, int in_place, int64_t NB,
                             const char *config_json) {
    int rc = ML_OK;
    if (!ml_h5_exists(*h, "/profile")) rc = ml_h5_write_profile(*h, "/profile"); /* kept from a killed finish */
    ML_CHECK(ml_agree(comm, rc));
    if (in_place) ML_CHECK(ml_h5_flush(*h));
    rc = ml_h5_set_attr_int(*h, "/", "batches_done", NB);
    if (rc == ML_OK && config_json) rc = ml_h5_set_attr_str(*h, "/", "config", config_json);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(*h, "/", "complete", 1);
    if (rc == ML_OK) rc = ml_h5_set_attr_str(*h, "/", "format", ML_CAPTURE_FORMAT);
    ML_CHECK(ml_agree(comm, rc));
    ML_CHECK(ml_h5_close(h));
    return ML_OK;
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

int ml_capture_sum(MPI_Comm comm, const double *in, double *out, size_t n) {
    ML_CHECK(ml_mpi_allreduce(comm, in, out, n, MPI_DOUBLE, MPI_SUM));
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
    const int64_t W = (N + T - 1) / T, NB = (W + B - 1) / B;
    const size_t R = (size_t)B * (size_t)T;

    ml_window_plan *plan = NULL;
    ml_workspace *ws = NULL;
    ml_h5 *h = NULL;
    ml_hook_set hs;
    ml_capture_bufs b = {0};
    ml_capture_meta meta = {0};
    ml_signal_guard guard = {0};
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
    if (rc == ML_OK) rc = ml_capture_meta_build(c, model, &hs, plan, W, NB, &meta);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);

    /* a checkpoint of this capture at `path` is continued in place; else a new file at a temporary name */
    int64_t b0 = 0;
    ML_CHECK_GOTO(ml_capture_open_resume(comm, path, c, &meta, &h, &b0), done);
    int in_place = h != NULL;
    if (in_place) {
        ml_info("capture: resuming %s at batch %lld of %lld", path, (long long)b0, (long long)NB);
    } else {
        ML_CHECK_GOTO(ml_h5_create(comm, path, ML_CAPTURE_FORMAT, 1, &h), done);
        ML_CHECK_GOTO(ml_agree(comm, ml_capture_meta_write(h, &meta, c->config_json)), done);
        ML_CHECK_GOTO(ml_capture_datasets(h, c, &hs, N), done);
    }

    /* step s: rank p runs batch b0 + s P + p; the ranks agree on signals after every step */
    const int64_t steps = (NB - b0 + P - 1) / P, row_first = b0 * (int64_t)R < N ? b0 * (int64_t)R : N;
    ml_progress pg;
    if (!c->quiet) ml_progress_begin(&pg, "capture", (double)(N - row_first));
    double t0 = ml_wtime(), bytes = 0;
    ml_signals_install(&guard);
    for (int64_t s = 0; s < steps; s++) {
        const int64_t first = b0 + s * P, end = first + P < NB ? first + P : NB; /* batches [first, end) */
        if (c->raise_at > first && c->raise_at <= end) ml_signal_raise_at(comm, c->raise_at, c->raise_at);
        /* this rank's batch: windows [w0, w1), rows [row0, row0 + rows) */
        const int64_t bi = first + rank, w0 = bi < NB ? bi * B : W, w1 = w0 + B < W ? w0 + B : W;
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
        ml_h5_start_writeback(h); /* keeps the flush of a checkpoint or of the final close short */
        bytes += bw;
        if (!c->quiet) {
            int64_t done_rows = end * (int64_t)R;
            ml_progress_update(&pg, (double)((done_rows < N ? done_rows : N) - row_first), NULL);
        }
        if (end == NB) break; /* the last batches are written: a signal now just lets the run finish */
        int sig = 0;
        ML_CHECK_GOTO(ml_signal_agree(comm, &sig), done);
        const int64_t every = c->checkpoint_every;
        if (sig || (every > 0 && end / every > first / every)) {
            ml_prof_begin("capture.checkpoint");
            rc = ml_capture_checkpoint(comm, &h, path, end, !sig);
            ml_prof_end("capture.checkpoint", 0, 0);
            ML_CHECK_GOTO(rc, done);
            in_place = 1;
        }
        if (sig) {
            if (!c->quiet) ml_progress_end(&pg, "interrupted");
            rc = ml_agree(comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                        "interrupted by %s: checkpoint at batch %lld of %lld written to %s; rerun the "
                                        "same command to resume",
                                        ml_signal_name(sig), (long long)end, (long long)NB, path));
            goto done;
        }
    }
    /* the handlers stay until the file is finished: a signal now lets the run end normally */
    double secs = ml_wtime() - t0, total_bytes = 0;
    ML_CHECK_GOTO(ml_capture_sum(comm, &bytes, &total_bytes, 1), done);
    if (!c->quiet) {
        char extra[96];
        snprintf(extra, sizeof extra, "%.1f MB of activations, %.3g MB/s", total_bytes / 1e6,
                 total_bytes / 1e6 / (secs > 0 ? secs : 1e-9));
        ml_progress_end(&pg, extra);
    }
    ML_CHECK_GOTO(ml_capture_finish(comm, &h, path, in_place, NB, c->config_json), done);
    if (stats) *stats = (ml_capture_stats){N, W, secs, total_bytes, b0, NB};
done:
    ml_signals_restore(&guard);
    if (h) ml_h5_discard(&h); /* a created file is deleted; a checkpoint opened in place is kept */
    ml_free(b.win);
    ml_free(b.tok);
    ml_free(b.row_tok);
    ml_free(b.row_pos);
    ml_free(b.row_dom);
    ml_free(b.row_doc);
    ml_hooks_free(&hs);
    ml_capture_meta_clear(&meta);
    ml_window_plan_destroy(&plan);
    ml_workspace_destroy(&ws);
    return rc;
}
