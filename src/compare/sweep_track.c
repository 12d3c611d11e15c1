/* `mergelens track-sweep`: which of a fine-tuned model's SAE features are
 * still present in the merged model at each point of a merge-ratio sweep.
 *
 * For every grid point t of sweeps/<name>.h5 the merged model is rebuilt in
 * memory from the recipe recorded in the sweep file (module sweep's
 * ml_sweeper), run over the same token windows as the fine-tuned model, and
 * the fine-tuned SAE encodes both models' activations. Feature f is present
 * at t when the Pearson correlation over tokens of its code on the merged
 * model with its code on its own model (same feature, same tokens: the
 * diagonal correlation ml_diagcorr) is >= tau.
 *
 * Distribution: the fine-tuned model's own codes are computed on every rank
 * (one pass, kept as CSR: N x L0 entries); grid point k goes to rank k mod P,
 * which merges, runs and correlates it alone, so results do not depend on P.
 *
 * Legend: N token rows (n_win windows of T), F = d_sae, d = d_in, K = grid
 * points, B = windows per forward pass.
 */
#include <math.h>
#include <string.h>

#include <jansson.h>

#include "mergelens/compare.h"
#include "mergelens/config.h"
#include "mergelens/io.h"
#include "mergelens/sweep.h"
#include "mergelens/train.h"

#define ML_SWEEP_TRACK_FORMAT "mergelens.feature_sweep"

static const char ml_sweep_track_usage[] =
    "usage: mergelens track-sweep SWEEP.h5 --sae saes/lua.h5 --acts acts/lua.h5 --out tracking/lua_sweep.h5\n"
    "         [--model models/lua.h5] [--tau 0.8] [--max-tokens N]\n\n"
    "For every point of a merge sweep, rebuild the merged model from the sweep's recipe, run it over the\n"
    "token windows of the activations file, encode with the fine-tuned model's SAE, and correlate each\n"
    "feature with itself on the fine-tuned model (same tokens): a feature is present at t when r >= tau.\n";

static const ml_option_spec ml_sweep_track_opts[] = {
    {"sae", ML_OPT_STRING, NULL, 0, -1, NULL, "SAE of the fine-tuned model (saes/lua.h5)"},
    {"acts", ML_OPT_STRING, NULL, 0, -1, NULL, "activations file whose /tokens windows are used (acts/lua.h5)"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "file to write (tracking/lua_sweep.h5)"},
    {"model", ML_OPT_STRING, "", 0, -1, NULL, "fine-tuned model checkpoint (default: the SAE's `model`)"},
    {"recipe", ML_OPT_STRING, "", 0, -1, NULL, "merge recipe (default: the one recorded in the sweep file)"},
    {"hook", ML_OPT_STRING, "", 0, -1, NULL, "activation hook (default: the SAE's hook_name)"},
    {"tau", ML_OPT_FLOAT, "0.8", 0.0, 1.0, NULL, "present threshold on the correlation"},
    {"max_tokens", ML_OPT_INT, "0", 0, 1e15, NULL, "use the first rows only, whole windows (0: all)"},
    {"batch", ML_OPT_INT, "8", 1, 1 << 16, NULL, "windows per forward pass"},
    {"allow_train_rows", ML_OPT_BOOL, "false", 0, -1, NULL,
     "use every row when the SAE holds out none (default: refuse)"},
    ML_OPT_END,
};

/* Growing CSR of the own model's codes, row-major over all N rows. */
typedef struct {
    int64_t n, nnz, cap;
    int64_t *row_ptr; /* (N + 1) */
    int32_t *col;     /* (cap) */
    float *val;       /* (cap) */
} ml_csr_store;

static int ml_csr_store_append(ml_csr_store *s, const ml_sae_csr *c) {
    if (s->nnz + c->nnz > s->cap) {
        int64_t cap = (s->nnz + c->nnz) * 3 / 2 + 1024;
        int32_t *col = ml_malloc(sizeof(int32_t) * (size_t)cap);
        float *val = ml_malloc(sizeof(float) * (size_t)cap);
        if (!col || !val) {
            ml_free(col);
            ml_free(val);
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        if (s->nnz) {
            memcpy(col, s->col, sizeof(int32_t) * (size_t)s->nnz);
            memcpy(val, s->val, sizeof(float) * (size_t)s->nnz);
        }
        ml_free(s->col);
        ml_free(s->val);
        s->col = col;
        s->val = val;
        s->cap = cap;
    }
    memcpy(s->col + s->nnz, c->col, sizeof(int32_t) * (size_t)c->nnz);
    memcpy(s->val + s->nnz, c->val, sizeof(float) * (size_t)c->nnz);
    for (int i = 0; i < c->n_rows; i++) s->row_ptr[s->n + i + 1] = s->nnz + c->row_ptr[i + 1];
    s->n += c->n_rows;
    s->nnz += c->nnz;
    return ML_OK;
}

/* Everything one run needs. */
typedef struct {
    const ml_sae *sae;
    const char *hook;
    int T, batch;
    int64_t n_win;
    const int32_t *tokens; /* (n_win * T) */
    ml_workspace *ws;
    ml_sae_csr csr;        /* codes of one forward batch */
} ml_sweep_run;

/* Forward windows [w0, w0 + B) of m and encode the hook's rows: run->csr. */
static int ml_sweep_encode(ml_sweep_run *run, const ml_model *m, int64_t w0, int B) {
    ML_CHECK(ml_model_forward(m, run->ws, run->tokens + w0 * run->T, NULL, B, run->T, NULL));
    ml_view v;
    ML_CHECK(ml_workspace_hook(run->ws, run->hook, &v));
    if (v.cols != run->sae->d_in || v.ld != v.cols)
        return ML_FAIL(ML_ERR_SHAPE, "track-sweep: hook '%s' has width %d but the SAE has d_in %d", run->hook, v.cols,
                       run->sae->d_in);
    ML_CHECK(ml_sae_encode_csr(run->sae, v.data, v.rows, &run->csr));
    return ML_OK;
}

/* r (F), dead (F) of model m against the stored own codes (dead = zero
 * variance on either side). */
static int ml_sweep_diag(ml_sweep_run *run, const ml_model *m, const ml_csr_store *own, double *r, uint8_t *dead) {
    ml_diagcorr *dc = NULL;
    int64_t F = run->sae->d_sae;
    ML_CHECK(ml_diagcorr_create(F, &dc));
    int rc = ML_OK;
    for (int64_t w0 = 0; w0 < run->n_win && rc == ML_OK; w0 += run->batch) {
        int B = (int)(run->n_win - w0 < run->batch ? run->n_win - w0 : run->batch);
        rc = m ? ml_sweep_encode(run, m, w0, B) : ML_OK;
        int64_t r0 = w0 * run->T, n = (int64_t)B * run->T;
        ml_fcodes x1 = {.n = n, .f0 = 0, .nf = F, .row_ptr = own->row_ptr + r0, .col = own->col, .val = own->val};
        ml_fcodes x2 = x1;
        if (m) x2 = (ml_fcodes){.n = n, .f0 = 0, .nf = F, .row_ptr = run->csr.row_ptr, .col = run->csr.col,
                                .val = run->csr.val};
        if (rc == ML_OK) rc = ml_diagcorr_add(dc, &x1, &x2);
    }
    if (rc == ML_OK) rc = ml_diagcorr_result(dc, r, dead);
    ml_diagcorr_destroy(&dc);
    return rc;
}

/* The sweep file's recipe JSON without the keys the recipe parser does not
 * take (`inputs`, `source`); *name = the recorded source file (for paths
 * relative to the recipe's directory). */
static int ml_sweep_recipe(const char *sweep_path, const char *json, ml_merge_recipe **r) {
    json_error_t err;
    json_t *j = json_loads(json, 0, &err);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return ML_FAIL(ML_ERR_FORMAT, "track-sweep: %s: attribute `recipe` is not a JSON object (%s)", sweep_path,
                       err.text);
    }
    char name[4096];
    const char *src = json_string_value(json_object_get(j, "source"));
    snprintf(name, sizeof name, "%s", src ? src : sweep_path);
    json_object_del(j, "inputs");
    json_object_del(j, "source");
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(j);
    if (!text) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int rc = ml_merge_recipe_parse(text, name, r);
    free(text);
    return rc;
}

/* Relative L2 distance of two parameter vectors. */
static double ml_param_distance(const ml_model *a, const ml_model *ref) {
    double d = 0, n = 0;
    for (size_t i = 0; i < ref->n_params; i++) {
        double e = (double)a->params[i] - ref->params[i];
        d += e * e;
        n += (double)ref->params[i] * ref->params[i];
    }
    return n > 0 ? sqrt(d / n) : sqrt(d);
}

typedef struct {
    int K;
    int64_t F, n_tokens, n_live;
    double tau;
    double *grid;       /* (K) */
    double *r;          /* (K, F) */
    uint8_t *mdead;     /* (K, F) zero variance on the merged model */
    uint8_t *dead;      /* (F) never fires on the own model */
    double *dist;       /* (K) */
    double *present;    /* (K) */
    int64_t *n_present; /* (K) */
    double *mean_r;     /* (K) over live features */
    int64_t rows_start, rows_end; /* rows of the activations file used (whole windows) */
    int rows_heldout;
    char rows_note[4096];
} ml_sweep_track_result;

static void ml_sweep_track_result_free(ml_sweep_track_result *s) {
    ml_free(s->grid);
    ml_free(s->r);
    ml_free(s->mdead);
    ml_free(s->dead);
    ml_free(s->dist);
    ml_free(s->present);
    ml_free(s->n_present);
    ml_free(s->mean_r);
    memset(s, 0, sizeof *s);
}

/* Collective: every point was computed by one rank (zeros elsewhere), so
 * the sums are exact and identical for any number of ranks. */
static int ml_sweep_track_gather(MPI_Comm comm, ml_sweep_track_result *s) {
    const size_t KF = (size_t)s->K * (size_t)s->F;
    ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, s->r, KF, MPI_DOUBLE, MPI_SUM));
    ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, s->mdead, KF, MPI_UINT8_T, MPI_SUM));
    ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, s->dist, (size_t)s->K, MPI_DOUBLE, MPI_SUM));
    return ML_OK;
}

static int ml_sweep_track_write(MPI_Comm comm, const char *out, const ml_sweep_track_result *s, ml_options *o,
                                const char *sweep_path, const char *model_path, const char *hook, const char *param,
                                const char *method) {
    ml_h5 *h = NULL;
    char *json = NULL;
    int K = s->K;
    float *rf = ml_malloc(sizeof(float) * (size_t)K * (size_t)s->F);
    int rc = rf ? ml_options_to_json(o, &json) : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    for (int64_t i = 0; i < (int64_t)K * s->F; i++) rf[i] = (float)s->r[i];
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_h5_create(comm, out, ML_SWEEP_TRACK_FORMAT, 1, &h), done);
    hsize_t dk[1] = {(hsize_t)K}, dkf[2] = {(hsize_t)K, (hsize_t)s->F}, df[1] = {(hsize_t)s->F};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/grid", ML_F64, 1, dk, s->grid), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/r", ML_F32, 2, dkf, rf), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/merged_dead", ML_U8, 2, dkf, s->mdead), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/dead", ML_U8, 1, df, s->dead), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/present", ML_F64, 1, dk, s->present), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/n_present", ML_I64, 1, dk, s->n_present), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/mean_r", ML_F64, 1, dk, s->mean_r), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/weight_distance", ML_F64, 1, dk, s->dist), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "sweep", sweep_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "sae", ml_opt_str(o, "sae")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "acts", ml_opt_str(o, "acts")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "model", model_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "hook", hook), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "param", param), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "method", method), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "tau", s->tau), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_tokens", s->n_tokens), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_features", s->F), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_live", s->n_live), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "rows_start", s->rows_start), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "rows_end", s->rows_end), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "rows_heldout", s->rows_heldout), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "rows_note", s->rows_note), done);
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    if (h) ml_h5_discard(&h);
    ml_free(rf);
    ml_free(json);
    return rc;
}

/* Read the token windows: n_win windows of T tokens from acts' /tokens,
 * whole windows inside the rows the SAE did not train on (s->rows_*). */
static int ml_sweep_tokens(MPI_Comm comm, const char *acts, const char *sae_path, int allow_train, int64_t max_tokens,
                           int *T, int64_t *n_win, int32_t **tokens, char **acts_model, ml_sweep_track_result *s) {
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_open(comm, acts, "mergelens.activations", 1, 1, &h));
    int64_t ctx = 0;
    int rk = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    int rc = ml_h5_get_attr_int(h, "/", "context", &ctx);
    if (rc == ML_OK) rc = ml_h5_shape(h, "/tokens", &rk, dims, &t);
    if (rc == ML_OK && (rk != 1 || t != ML_I32))
        rc = ML_FAIL(ML_ERR_FORMAT, "track-sweep: %s: /tokens must be [N] int32", acts);
    if (rc == ML_OK && ml_h5_get_attr_str(h, "/", "model", acts_model) != ML_OK) {
        ml_error_clear();
        *acts_model = NULL;
    }
    int64_t N = rc == ML_OK ? (int64_t)dims[0] : 0;
    if (rc == ML_OK && (ctx <= 0 || N < ctx))
        rc = ML_FAIL(ML_ERR_FORMAT, "track-sweep: %s: context %lld and %lld token rows give no whole window", acts,
                     (long long)ctx, (long long)N);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_sae_meta meta;
    int64_t r0 = 0, r1 = N;
    ML_CHECK_GOTO(ml_sae_meta_read(comm, sae_path, &meta), done);
    ML_CHECK_GOTO(ml_agree(comm, ml_heldout_rows("track-sweep", 1, (const char *const[]){sae_path}, &meta, N,
                                                 allow_train, &r0, &r1, &s->rows_heldout, s->rows_note,
                                                 sizeof s->rows_note)),
                  done);
    int64_t w0 = (r0 + ctx - 1) / ctx, w1 = r1 / ctx; /* whole windows inside [r0, r1) */
    if (w1 <= w0)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "track-sweep: rows [%lld, %lld) of %s (%s) hold no whole window of %lld tokens",
                     (long long)r0, (long long)r1, acts, s->rows_note, (long long)ctx);
    int64_t use = (w1 - w0) * ctx;
    if (max_tokens > 0 && max_tokens < use) use = max_tokens;
    *T = (int)ctx;
    *n_win = use / ctx;
    s->rows_start = w0 * ctx;
    s->rows_end = s->rows_start + *n_win * ctx;
    if (s->rows_heldout) ml_info("track-sweep: rows [%lld, %lld); %s", (long long)s->rows_start, (long long)s->rows_end, s->rows_note);
    else ml_warn("track-sweep: rows [%lld, %lld); %s", (long long)s->rows_start, (long long)s->rows_end, s->rows_note);
    *tokens = ml_malloc(sizeof(int32_t) * (size_t)N);
    rc = *tokens ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "/tokens", ML_I32, 1, dims, *tokens), done);
    if (s->rows_start > 0)
        memmove(*tokens, *tokens + s->rows_start, sizeof(int32_t) * (size_t)(*n_win * ctx));
done:
    ml_h5_close(&h);
    return rc;
}

int ml_cmd_track_sweep(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0, npos = 0, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    ml_options *o = NULL;
    char **pos = NULL, *recipe_json = NULL, *param = NULL, *acts_model = NULL;
    ml_sae *sae = NULL;
    ml_model *ft = NULL, *merged = NULL;
    ml_merge_recipe *recipe = NULL;
    ml_sweeper *sw = NULL;
    ml_h5 *hs = NULL;
    int32_t *tokens = NULL;
    ml_csr_store own = {0};
    ml_sweep_run run;
    memset(&run, 0, sizeof run);
    ml_sweep_track_result s;
    memset(&s, 0, sizeof s);
    ML_CHECK_GOTO(ml_options_parse_command(comm, "track-sweep", ml_sweep_track_usage, ml_sweep_track_opts, argc, argv,
                                           &o, &npos, &pos, &help),
                  done);
    if (help) goto done;
    if (npos != 1)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "track-sweep: expected one sweep file (sweeps/NAME.h5), got %d arguments", npos);
    const char *sweep_path = pos[0], *sae_path = ml_opt_str(o, "sae"), *acts = ml_opt_str(o, "acts");
    s.tau = ml_opt_float(o, "tau");

    /* 1. the fine-tuned SAE and model */
    ML_CHECK_GOTO(ml_agree(comm, ml_sae_load(sae_path, &sae)), done);
    const char *model_path = ml_opt_str(o, "model")[0] ? ml_opt_str(o, "model") : sae->model;
    if (!model_path[0])
        ML_FAIL_GOTO(done, ML_ERR_ARG, "track-sweep: %s records no model checkpoint; give --model", sae_path);
    const char *hook = ml_opt_str(o, "hook")[0] ? ml_opt_str(o, "hook") : sae->hook_name;
    ML_CHECK_GOTO(ml_checkpoint_load_model(comm, model_path, &ft), done);

    /* 2. the sweep: grid, parameter and recipe */
    ML_CHECK_GOTO(ml_sweep_open(comm, sweep_path, &hs), done); /* refuses an interrupted sweep (complete = 0) */
    int rk = 0;
    hsize_t gd[ML_H5_MAX_RANK];
    ml_dtype gt;
    rc = ml_h5_get_attr_str(hs, "/", "param", &param);
    if (rc == ML_OK) rc = ml_h5_get_attr_str(hs, "/", "recipe", &recipe_json);
    if (rc == ML_OK) rc = ml_h5_shape(hs, "/grid", &rk, gd, &gt);
    if (rc == ML_OK && (rk != 1 || gd[0] == 0))
        rc = ML_FAIL(ML_ERR_FORMAT, "track-sweep: %s: /grid must be a non-empty [K] vector", sweep_path);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    s.K = (int)gd[0];
    s.F = sae->d_sae;
    s.grid = ml_malloc(sizeof(double) * (size_t)s.K);
    rc = s.grid ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(hs, "/grid", ML_F64, 1, gd, s.grid), done);
    ML_CHECK_GOTO(ml_h5_close(&hs), done);
    if (ml_opt_str(o, "recipe")[0]) rc = ml_merge_recipe_load(ml_opt_str(o, "recipe"), &recipe);
    else rc = ml_sweep_recipe(sweep_path, recipe_json, &recipe);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_sweeper_create(comm, recipe, param, &sw), done);
    if (memcmp(ml_sweeper_model_config(sw), &ft->cfg, sizeof ft->cfg))
        ML_FAIL_GOTO(done, ML_ERR_SHAPE, "track-sweep: the merged models of %s and %s have different configurations",
                     sweep_path, model_path);

    /* 3. token windows and the own model's codes (every rank) */
    ML_CHECK_GOTO(ml_sweep_tokens(comm, acts, sae_path, ml_opt_bool(o, "allow_train_rows"), ml_opt_int(o, "max_tokens"),
                                  &run.T, &run.n_win, &tokens, &acts_model, &s),
                  done);
    if (acts_model && strcmp(acts_model, model_path))
        ml_warn("track-sweep: %s was captured from %s, not %s (only its token windows are used)", acts, acts_model,
                model_path);
    run.sae = sae;
    run.hook = hook;
    run.batch = (int)ml_opt_int(o, "batch");
    run.tokens = tokens;
    s.n_tokens = run.n_win * run.T;
    ml_workspace_config wc = {.B_max = run.batch, .T_max = run.T};
    rc = run.T <= ft->cfg.max_context ? ML_OK
                                      : ML_FAIL(ML_ERR_SHAPE, "track-sweep: %s has context %d but %s allows at most %d",
                                                acts, run.T, model_path, ft->cfg.max_context);
    if (rc == ML_OK) rc = ml_workspace_create(&ft->cfg, &wc, &run.ws);
    if (rc == ML_OK) rc = ml_model_create(&ft->cfg, &merged);
    own.row_ptr = ml_calloc((size_t)s.n_tokens + 1, sizeof(int64_t));
    int64_t KF = (int64_t)s.K * s.F;
    s.r = ml_calloc((size_t)KF, sizeof(double));
    s.mdead = ml_calloc((size_t)KF, 1);
    s.dead = ml_calloc((size_t)s.F, 1);
    s.dist = ml_calloc((size_t)s.K, sizeof(double));
    s.present = ml_calloc((size_t)s.K, sizeof(double));
    s.n_present = ml_calloc((size_t)s.K, sizeof(int64_t));
    s.mean_r = ml_calloc((size_t)s.K, sizeof(double));
    double *rk1 = ml_malloc(sizeof(double) * (size_t)s.F);
    if (rc == ML_OK && (!own.row_ptr || !s.r || !s.mdead || !s.dead || !s.dist || !s.present || !s.n_present ||
                        !s.mean_r || !rk1))
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done_rk);
    ml_info("track-sweep: %s at %d points of %s, %lld tokens (%lld windows of %d), %lld features of %s, on %d ranks",
            param, s.K, sweep_path, (long long)s.n_tokens, (long long)run.n_win, run.T, (long long)s.F, sae_path, P);
    ml_prof_begin("track_sweep_own");
    for (int64_t w0 = 0; w0 < run.n_win && rc == ML_OK; w0 += run.batch) {
        int B = (int)(run.n_win - w0 < run.batch ? run.n_win - w0 : run.batch);
        rc = ml_sweep_encode(&run, ft, w0, B);
        if (rc == ML_OK) rc = ml_csr_store_append(&own, &run.csr);
    }
    if (rc == ML_OK) rc = ml_sweep_diag(&run, NULL, &own, rk1, s.dead); /* dead on the own model */
    ml_prof_end("track_sweep_own", 0, 0);
    ML_CHECK_GOTO(ml_agree(comm, rc), done_rk);

    /* 4. the points: k -> rank k mod P */
    ml_progress prog;
    int mine = 0;
    for (int k = rank; k < s.K; k += P) mine++;
    ml_progress_begin(&prog, "track-sweep", (double)mine);
    int done_pts = 0;
    for (int k = rank; k < s.K && rc == ML_OK; k += P) {
        ml_prof_begin("track_sweep_point");
        rc = ml_sweeper_merge(sw, s.grid[k], merged);
        if (rc == ML_OK) rc = ml_sweep_diag(&run, merged, &own, s.r + (int64_t)k * s.F, s.mdead + (int64_t)k * s.F);
        if (rc == ML_OK) s.dist[k] = ml_param_distance(merged, ft);
        ml_prof_end("track_sweep_point", 0, 0);
        ml_progress_update(&prog, ++done_pts, NULL);
    }
    ml_progress_end(&prog, NULL);
    ML_CHECK_GOTO(ml_agree(comm, rc), done_rk);
    /* each point has exactly one contributor: the sums are exact */
    ML_CHECK_GOTO(ml_sweep_track_gather(comm, &s), done_rk);
    for (int64_t f = 0; f < s.F; f++) s.n_live += !s.dead[f];
    for (int k = 0; k < s.K; k++) {
        double sum = 0;
        for (int64_t f = 0; f < s.F; f++) {
            double *r = &s.r[(int64_t)k * s.F + f];
            if (s.dead[f]) { /* never fires on its own model: not counted */
                *r = 0;
                continue;
            }
            s.n_present[k] += *r >= s.tau;
            sum += *r;
        }
        s.present[k] = s.n_live ? (double)s.n_present[k] / (double)s.n_live : 0.0;
        s.mean_r[k] = s.n_live ? sum / (double)s.n_live : 0.0;
        ml_info("track-sweep: %s = %-8.4g present %5.1f%% (%lld of %lld live), mean r %.4f, weight distance %.4f", param,
                s.grid[k], 100 * s.present[k], (long long)s.n_present[k], (long long)s.n_live, s.mean_r[k], s.dist[k]);
    }
    {
        const char *method = ml_merge_method_name(ml_merge_recipe_method(recipe));
        ML_CHECK_GOTO(ml_sweep_track_write(comm, ml_opt_str(o, "out"), &s, o, sweep_path, model_path, hook, param,
                                           method),
                      done_rk);
    }
    ml_info("track-sweep: wrote %s", ml_opt_str(o, "out"));
done_rk:
    ml_free(rk1);
done:
    if (hs) ml_h5_close(&hs);
    ml_sweep_track_result_free(&s);
    ml_sae_csr_free(&run.csr);
    ml_workspace_destroy(&run.ws);
    ml_free(own.row_ptr);
    ml_free(own.col);
    ml_free(own.val);
    ml_free(tokens);
    ml_free(acts_model);
    ml_free(param);
    ml_free(recipe_json);
    ml_sweeper_destroy(&sw);
    ml_merge_recipe_destroy(&recipe);
    ml_model_destroy(&merged);
    ml_model_destroy(&ft);
    ml_sae_destroy(&sae);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
