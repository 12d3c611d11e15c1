/* SAE files (format mergelens.sae v1) and the activations-file row source.
 *
 * Layout (docs/modules/sae.md): /W_enc (D,S), /b_enc (S), /W_dec (S,D),
 * /b_dec (D) float32 in SAELens names and orientation; root attributes;
 * /metrics (training history, final evaluation); /features (per-latent
 * statistics and examples).
 *
 * Dimension letters: N rows, D = d_in, S = d_sae, K top examples, Q quantile
 * examples, W window length, T log records, H histogram bins.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/config.h"
#include "mergelens/sae.h"
#include "sae_ckpt.h"

#define ML_SAE_FORMAT "mergelens.sae"
#define ML_SAE_VERSION 1
#define ML_ACTS_FORMAT "mergelens.activations"

/* out (C,R) = in (R,C) transposed, in tiles */
static void ml_transpose(const float *in, int R, int C, float *out) {
    const int T = 32;
    for (int r0 = 0; r0 < R; r0 += T)
        for (int c0 = 0; c0 < C; c0 += T)
            for (int r = r0; r < r0 + T && r < R; r++)
                for (int c = c0; c < c0 + T && c < C; c++) out[(size_t)c * R + r] = in[(size_t)r * C + c];
}

static int ml_w1(ml_h5 *h, const char *name, ml_dtype t, hsize_t n, const void *data) {
    hsize_t dims[1] = {n};
    return ml_h5_write_tensor(h, name, t, 1, dims, data);
}

static int ml_w2(ml_h5 *h, const char *name, ml_dtype t, hsize_t a, hsize_t b, const void *data) {
    hsize_t dims[2] = {a, b};
    return ml_h5_write_tensor(h, name, t, 2, dims, data);
}

static int ml_w3(ml_h5 *h, const char *name, ml_dtype t, hsize_t a, hsize_t b, hsize_t c, const void *data) {
    hsize_t dims[3] = {a, b, c};
    return ml_h5_write_tensor(h, name, t, 3, dims, data);
}

static int ml_write_history(ml_h5 *h, const ml_sae_trained *tr, int S) {
    const ml_sae_history *y = &tr->hist;
    hsize_t T = (hsize_t)y->n;
    ML_CHECK(ml_h5_mkgroup(h, "/metrics"));
    ML_CHECK(ml_h5_set_attr_int(h, "/metrics", "steps", tr->steps));
    ML_CHECK(ml_h5_set_attr_int(h, "/metrics", "tokens", tr->tokens_seen));
    ML_CHECK(ml_h5_set_attr_int(h, "/metrics", "resampled_total", tr->resampled_total));
    ML_CHECK(ml_h5_set_attr_double(h, "/metrics", "hist_lo", ML_SAE_HIST_LO));
    ML_CHECK(ml_h5_set_attr_double(h, "/metrics", "hist_step", ML_SAE_HIST_STEP));
    ML_CHECK(ml_h5_set_attr_int(h, "/metrics", "hist_bins", ML_SAE_HIST_BINS));
    if (T > 0) {
        ML_CHECK(ml_w1(h, "/metrics/step", ML_I64, T, y->step));
        ML_CHECK(ml_w1(h, "/metrics/tokens", ML_I64, T, y->tokens));
        ML_CHECK(ml_w1(h, "/metrics/loss", ML_F64, T, y->loss));
        ML_CHECK(ml_w1(h, "/metrics/mse", ML_F64, T, y->mse));
        ML_CHECK(ml_w1(h, "/metrics/fvu", ML_F64, T, y->fvu));
        ML_CHECK(ml_w1(h, "/metrics/l0", ML_F64, T, y->l0));
        ML_CHECK(ml_w1(h, "/metrics/loss_l1", ML_F64, T, y->loss_l1));
        ML_CHECK(ml_w1(h, "/metrics/loss_aux", ML_F64, T, y->loss_aux));
        ML_CHECK(ml_w1(h, "/metrics/dead_fraction", ML_F64, T, y->dead_fraction));
        ML_CHECK(ml_w1(h, "/metrics/dense_fraction", ML_F64, T, y->dense_fraction));
        ML_CHECK(ml_w1(h, "/metrics/resampled", ML_I64, T, y->resampled));
        ML_CHECK(ml_w2(h, "/metrics/density_hist", ML_I64, T, ML_SAE_HIST_BINS, y->hist));
        ML_CHECK(ml_w1(h, "/metrics/density_hist_zero", ML_I64, T, y->hist_zero));
    }
    if (tr->tokens_since_fired) ML_CHECK(ml_w1(h, "/metrics/tokens_since_fired", ML_I64, (hsize_t)S, tr->tokens_since_fired));
    return ML_OK;
}

static int ml_write_eval(ml_h5 *h, const ml_sae_eval *ev) {
    hsize_t S = (hsize_t)ev->S, K = (hsize_t)ev->K, Q = (hsize_t)ev->Q, W = (hsize_t)ev->W;
    ML_CHECK(ml_h5_mkgroup(h, "/metrics/eval"));
    const char *g = "/metrics/eval";
    ML_CHECK(ml_h5_set_attr_double(h, g, "mse", ev->mse));
    ML_CHECK(ml_h5_set_attr_double(h, g, "fvu", ev->fvu));
    ML_CHECK(ml_h5_set_attr_double(h, g, "l0", ev->l0));
    ML_CHECK(ml_h5_set_attr_double(h, g, "dead_fraction", ev->dead_fraction));
    ML_CHECK(ml_h5_set_attr_double(h, g, "dense_fraction", ev->dense_fraction));
    ML_CHECK(ml_h5_set_attr_int(h, g, "row0", ev->row0));
    ML_CHECK(ml_h5_set_attr_int(h, g, "n_rows", ev->n_rows));
    ML_CHECK(ml_w1(h, "/metrics/eval/density_hist", ML_I64, ML_SAE_HIST_BINS, ev->hist));
    ML_CHECK(ml_h5_set_attr_int(h, "/metrics/eval/density_hist", "zero", ev->hist_zero));

    ML_CHECK(ml_h5_mkgroup(h, "/features"));
    ML_CHECK(ml_h5_set_attr_int(h, "/features", "ctx_left", ev->ctx_left));
    ML_CHECK(ml_h5_set_attr_int(h, "/features", "ctx_right", ev->ctx_right));
    ML_CHECK(ml_h5_set_attr_int(h, "/features", "row0", ev->row0));
    ML_CHECK(ml_h5_set_attr_int(h, "/features", "n_rows", ev->n_rows));
    ML_CHECK(ml_w1(h, "/features/count", ML_I64, S, ev->count));
    ML_CHECK(ml_w1(h, "/features/density", ML_F64, S, ev->density));
    ML_CHECK(ml_w1(h, "/features/max_act", ML_F32, S, ev->max_act));
    ML_CHECK(ml_w1(h, "/features/mean_act", ML_F32, S, ev->mean_act));
    ML_CHECK(ml_w2(h, "/features/top_rows", ML_I64, S, K, ev->top_row));
    ML_CHECK(ml_w2(h, "/features/top_acts", ML_F32, S, K, ev->top_act));
    ML_CHECK(ml_w3(h, "/features/top_tokens", ML_I32, S, K, W, ev->top_tokens));
    ML_CHECK(ml_w3(h, "/features/top_window_acts", ML_F32, S, K, W, ev->top_window_acts));
    if (Q > 0) {
        ML_CHECK(ml_w2(h, "/features/quantile_rows", ML_I64, S, Q, ev->q_row));
        ML_CHECK(ml_w2(h, "/features/quantile_acts", ML_F32, S, Q, ev->q_act));
        ML_CHECK(ml_w2(h, "/features/quantile_levels", ML_F32, S, Q, ev->q_level));
        ML_CHECK(ml_w3(h, "/features/quantile_tokens", ML_I32, S, Q, W, ev->q_tokens));
        ML_CHECK(ml_w3(h, "/features/quantile_window_acts", ML_F32, S, Q, W, ev->q_window_acts));
    }
    return ML_OK;
}

/* The integer root attributes of an SAE's provenance (ml_sae_provenance). */
#define ML_PROV_INTS(p)                                                                                        \
    {"seed", (p)->seed}, {"job_seed", (p)->job_seed}, {"data_seed", (p)->data_seed}, {"replica", (p)->replica},   \
        {"replicas", (p)->replicas}, {"train_row_start", (p)->train_row_start},                                 \
        {"train_row_end", (p)->train_row_end}, {"heldout_row_start", (p)->heldout_row_start},                   \
        {"heldout_row_end", (p)->heldout_row_end}
#define ML_PROV_STRS(p)                                                                                        \
    {"seed_identity", (p)->seed_identity}, {"data_seed_identity", (p)->data_seed_identity}, {"heldout", (p)->heldout}
typedef struct {
    const char *name;
    int64_t value;
} ml_prov_int;
typedef struct {
    const char *name;
    const char *value;
} ml_prov_str;

static int ml_write_prov(ml_h5 *h, const ml_sae_provenance *p) {
    const ml_prov_int ints[] = {ML_PROV_INTS(p)};
    const ml_prov_str strs[] = {ML_PROV_STRS(p)};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) ML_CHECK(ml_h5_set_attr_int(h, "/", ints[i].name, ints[i].value));
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) ML_CHECK(ml_h5_set_attr_str(h, "/", strs[i].name, strs[i].value));
    return ML_OK;
}

static int ml_write_body(ml_h5 *h, const ml_sae *sae, const ml_sae_trained *tr, const ml_sae_eval *ev,
                         const char *config_json, const char *source_json, const float *W_enc) {
    int D = sae->d_in, S = sae->d_sae;
    ML_CHECK(ml_w2(h, "/W_enc", ML_F32, (hsize_t)D, (hsize_t)S, W_enc));
    ML_CHECK(ml_w1(h, "/b_enc", ML_F32, (hsize_t)S, sae->b_enc));
    ML_CHECK(ml_w2(h, "/W_dec", ML_F32, (hsize_t)S, (hsize_t)D, sae->W_dec));
    ML_CHECK(ml_w1(h, "/b_dec", ML_F32, (hsize_t)D, sae->b_dec));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "architecture", ml_sae_arch_name(sae->arch)));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "k", sae->k));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "hook_name", sae->hook_name));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "d_in", D));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "d_sae", S));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "model", sae->model));
    ML_CHECK(ml_h5_set_attr_double(h, "/", "l1_coefficient", sae->l1_coefficient));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "apply_b_dec_to_input", sae->apply_b_dec_to_input));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "normalize_decoder", sae->normalize_decoder));
    if (config_json) ML_CHECK(ml_h5_set_attr_str(h, "/", "config", config_json));
    if (source_json) ML_CHECK(ml_h5_set_attr_str(h, "/", "source", source_json));
    if (tr) {
        ML_CHECK(ml_h5_set_attr_str(h, "/", "mse_normalization", tr->mse_norm == ML_SAE_NORM_DATASET ? "dataset" : "row"));
        ML_CHECK(ml_h5_set_attr_double(h, "/", "mse_norm_sq", tr->norm_sq));
        ML_CHECK(ml_h5_set_attr_double(h, "/", "mean_sq_norm", tr->mean_sq_norm));
        if (tr->prov.set) ML_CHECK(ml_write_prov(h, &tr->prov));
        ML_CHECK(ml_write_history(h, tr, S));
    }
    if (ev) {
        if (ev->S != S) return ML_FAIL(ML_ERR_SHAPE, "%s: evaluation has %d latents, the SAE %d", ml_h5_path(h), ev->S, S);
        ML_CHECK(ml_h5_mkgroup(h, "/metrics"));
        ML_CHECK(ml_write_eval(h, ev));
    }
    return ML_OK;
}

int ml_sae_write(MPI_Comm comm, const char *path, const ml_sae *sae, const ml_sae_trained *tr, const ml_sae_eval *ev,
                 const char *config_json) {
    return ml_sae_write_source(comm, path, sae, tr, ev, config_json, NULL);
}

/* /checkpoint: the training state beside the SAE and its history (sae_ckpt.h) */
static int ml_write_ckpt_group(ml_h5 *h, const ml_sae *sae, const ml_sae_trained *tr, const ml_sae_ckpt_state *st) {
    const char *g = "/checkpoint";
    ML_CHECK(ml_h5_mkgroup(h, g));
    const struct {
        const char *name;
        int64_t value;
    } attrs[] = {{"step", st->step},         {"steps", st->steps}, {"stream_pos", st->stream_pos},
                 {"interval_steps", st->iv_steps}, {"ranks", st->ranks}, {"median_iters", tr->median_iters}};
    for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++) ML_CHECK(ml_h5_set_attr_int(h, g, attrs[i].name, attrs[i].value));
    ML_CHECK(ml_w1(h, "/checkpoint/params", ML_F32, (hsize_t)sae->n_params, sae->params));
    ML_CHECK(ml_w1(h, "/checkpoint/interval_sums", ML_F64, ML_SAE_CKPT_SUMS, st->iv_sums));
    if (st->adam_m) ML_CHECK(ml_w1(h, "/checkpoint/adam_m", ML_F32, (hsize_t)sae->n_params, st->adam_m));
    if (st->adam_v) ML_CHECK(ml_w1(h, "/checkpoint/adam_v", ML_F32, (hsize_t)sae->n_params, st->adam_v));
    if (st->iv_count) ML_CHECK(ml_w1(h, "/checkpoint/interval_count", ML_F64, (hsize_t)sae->d_sae, st->iv_count));
    if (st->mu) ML_CHECK(ml_w1(h, "/checkpoint/mu", ML_F32, (hsize_t)sae->d_in, st->mu));
    if ((!st->adam_m || !st->adam_v || !st->iv_count || !st->mu) && st->step < st->steps)
        return ML_FAIL(ML_ERR_INTERNAL, "%s: checkpoint at step %lld of %lld without its optimizer state", ml_h5_path(h),
                       (long long)st->step, (long long)st->steps);
    return ML_OK;
}

/* The SAE file (complete = 1, st NULL) or a training checkpoint (complete = 0, st given). */
static int ml_sae_write_file(MPI_Comm comm, const char *path, const ml_sae *sae, const ml_sae_trained *tr,
                             const ml_sae_eval *ev, const char *config_json, const char *source_json,
                             const ml_sae_ckpt_state *st) {
    int rank, rc = ML_OK;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    /* only rank 0's data is written; it alone needs the transposed encoder */
    float *W_enc = NULL;
    if (rank == 0) {
        W_enc = ml_malloc(sizeof(float) * (size_t)sae->d_in * (size_t)sae->d_sae);
        if (W_enc) ml_transpose(sae->W_enc_t, sae->d_sae, sae->d_in, W_enc);
        else rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_h5 *h = NULL;
    ML_CHECK_GOTO(ml_h5_create(comm, path, ML_SAE_FORMAT, ML_SAE_VERSION, &h), done);
    rc = ml_write_body(h, sae, tr, ev, config_json, source_json, W_enc ? W_enc : sae->params);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(h, "/", "complete", st ? 0 : 1);
    if (rc == ML_OK && st) rc = ml_write_ckpt_group(h, sae, tr, st);
    if (rc == ML_OK && !st) rc = ml_h5_write_profile(h, "/profile");
    if (rc != ML_OK) {
        ml_error_trace(rc, __FILE__, __LINE__, __func__);
        ml_h5_discard(&h);
        goto done;
    }
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    ml_free(W_enc);
    return rc;
}

int ml_sae_write_source(MPI_Comm comm, const char *path, const ml_sae *sae, const ml_sae_trained *tr,
                        const ml_sae_eval *ev, const char *config_json, const char *source_json) {
    return ml_sae_write_file(comm, path, sae, tr, ev, config_json, source_json, NULL);
}

int ml_sae_ckpt_write(MPI_Comm comm, const char *path, const ml_sae_trained *tr, const ml_sae_ckpt_state *st,
                      const char *config_json, const char *source_json) {
    return ml_sae_write_file(comm, path, tr->sae, tr, NULL, config_json, source_json, st);
}

/* An optional integer root attribute: def when it is absent. */
static int ml_attr_int_or(ml_h5 *h, const char *attr, int64_t def, int64_t *out) {
    int rc = ml_h5_get_attr_int(h, "/", attr, out);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        *out = def;
        return ML_OK;
    }
    return rc;
}

static int ml_attr_str_opt(ml_h5 *h, const char *attr, char **out);

int ml_sae_check_complete(ml_h5 *h) {
    int64_t complete = 1, step = 0, steps = 0;
    ML_CHECK(ml_attr_int_or(h, "complete", 1, &complete));
    if (complete) return ML_OK;
    if (ml_h5_exists(h, "/checkpoint")) {
        if (ml_h5_get_attr_int(h, "/checkpoint", "step", &step) != ML_OK ||
            ml_h5_get_attr_int(h, "/checkpoint", "steps", &steps) != ML_OK)
            ml_error_clear();
    }
    return ML_FAIL(ML_ERR_FORMAT,
                   "%s: not a finished SAE but the checkpoint of an interrupted `mergelens sae` (complete = 0, step "
                   "%lld of %lld); rerun that command to finish it",
                   ml_h5_path(h), (long long)step, (long long)steps);
}

/* Options of `mergelens sae` that may differ between an interrupted run and
 * its continuation: bookkeeping and the evaluation after training. */
static const char *const ml_sae_resume_free_keys[] = {
    "out",      "resume",           "raise_at",  "checkpoint_every", "eval",      "eval_acts", "eval_row0",
    "eval_rows", "eval_block",      "top_examples", "quantile_examples", "reservoir", "ctx_left", "ctx_right", NULL};

/* A checkpoint's seeds, replica and rows against this run's (one-line "cannot resume" error). */
static int ml_check_prov(ml_h5 *h, const char *path, const ml_sae_provenance *p) {
    const ml_prov_int ints[] = {ML_PROV_INTS(p)};
    const ml_prov_str strs[] = {ML_PROV_STRS(p)};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        int64_t v = 0;
        int rc = ml_h5_get_attr_int(h, "/", ints[i].name, &v);
        if (rc == ML_ERR_NOTFOUND) {
            ml_error_clear();
            return ML_FAIL(ML_ERR_CONFIG, "%s: cannot resume: it has no attribute %s (written before seeds and rows "
                           "were recorded); rerun with --resume false", path, ints[i].name);
        }
        ML_CHECK(rc);
        if (v != ints[i].value)
            return ML_FAIL(ML_ERR_CONFIG, "%s: cannot resume: its %s is %lld, this run's %lld", path, ints[i].name,
                           (long long)v, (long long)ints[i].value);
    }
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        char *v = NULL;
        ML_CHECK(ml_attr_str_opt(h, strs[i].name, &v));
        int same = v && !strcmp(v, strs[i].value);
        if (!same) {
            int rc = ML_FAIL(ML_ERR_CONFIG, "%s: cannot resume: its %s is '%s', this run's '%s'", path, strs[i].name,
                             v ? v : "(absent)", strs[i].value);
            ml_free(v);
            return rc;
        }
        ml_free(v);
    }
    return ML_OK;
}

int ml_sae_ckpt_probe(MPI_Comm comm, const char *path, const char *config_json, const char *source_json,
                      const ml_sae_provenance *prov, int *found) {
    *found = 0;
    int rank, exists = 0, rc = ML_OK;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    if (rank == 0) exists = ml_file_exists(path);
    ML_CHECK_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, comm));
    if (!exists) return ML_OK;
    ml_h5 *h = NULL;
    char *stored = NULL, *src = NULL;
    int64_t complete = 1;
    ML_CHECK(ml_h5_open(comm, path, ML_SAE_FORMAT, 1, ML_SAE_VERSION, &h));
    ML_CHECK_GOTO(ml_attr_int_or(h, "complete", 1, &complete), done);
    if (complete) goto done;
    if (!ml_h5_exists(h, "/checkpoint"))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: complete = 0 but no /checkpoint group: not a resumable SAE checkpoint "
                     "(rerun with --resume false to start over)", path);
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "config", &stored), done);
    ML_CHECK_GOTO(ml_options_check_resume(path, stored, config_json, ml_sae_resume_free_keys), done);
    ML_CHECK_GOTO(ml_attr_str_opt(h, "source", &src), done);
    if (source_json && (!src || strcmp(src, source_json)))
        ML_FAIL_GOTO(done, ML_ERR_CONFIG, "%s: cannot resume: its rows came from %s, this run's from %s", path,
                     src ? src : "(unknown)", source_json);
    if (prov && prov->set) ML_CHECK_GOTO(ml_check_prov(h, path, prov), done);
    *found = 1;
done:
    ml_free(stored);
    ml_free(src);
    ml_h5_close(&h);
    return rc;
}

static int ml_read_col(ml_h5 *h, const char *name, ml_dtype t, hsize_t n, void *out) {
    hsize_t dims[1] = {n};
    return ml_h5_read_tensor(h, name, t, 1, dims, out);
}

/* The metric history of a checkpoint into hist (empty). */
static int ml_read_history(ml_h5 *h, ml_sae_history *y) {
    if (!ml_h5_exists(h, "/metrics/step")) return ML_OK;
    int r;
    hsize_t dims[ML_H5_MAX_RANK];
    ML_CHECK(ml_h5_shape(h, "/metrics/step", &r, dims, NULL));
    if (r != 1) return ML_FAIL(ML_ERR_FORMAT, "%s: /metrics/step must be 1-d (found rank %d)", ml_h5_path(h), r);
    hsize_t T = dims[0];
    ML_CHECK(ml_sae_history_reserve(y, (int64_t)T));
    ML_CHECK(ml_read_col(h, "/metrics/step", ML_I64, T, y->step));
    ML_CHECK(ml_read_col(h, "/metrics/tokens", ML_I64, T, y->tokens));
    ML_CHECK(ml_read_col(h, "/metrics/loss", ML_F64, T, y->loss));
    ML_CHECK(ml_read_col(h, "/metrics/mse", ML_F64, T, y->mse));
    ML_CHECK(ml_read_col(h, "/metrics/fvu", ML_F64, T, y->fvu));
    ML_CHECK(ml_read_col(h, "/metrics/l0", ML_F64, T, y->l0));
    ML_CHECK(ml_read_col(h, "/metrics/loss_l1", ML_F64, T, y->loss_l1));
    ML_CHECK(ml_read_col(h, "/metrics/loss_aux", ML_F64, T, y->loss_aux));
    ML_CHECK(ml_read_col(h, "/metrics/dead_fraction", ML_F64, T, y->dead_fraction));
    ML_CHECK(ml_read_col(h, "/metrics/dense_fraction", ML_F64, T, y->dense_fraction));
    ML_CHECK(ml_read_col(h, "/metrics/resampled", ML_I64, T, y->resampled));
    hsize_t hd[2] = {T, ML_SAE_HIST_BINS};
    ML_CHECK(ml_h5_read_tensor(h, "/metrics/density_hist", ML_I64, 2, hd, y->hist));
    ML_CHECK(ml_read_col(h, "/metrics/density_hist_zero", ML_I64, T, y->hist_zero));
    y->n = (int64_t)T;
    return ML_OK;
}

int ml_sae_ckpt_read(MPI_Comm comm, const char *path, ml_sae_trained *tr, ml_sae_ckpt_state *st) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    char *arch = NULL;
    ml_sae *sae = tr->sae;
    ML_CHECK(ml_h5_open(comm, path, ML_SAE_FORMAT, 1, ML_SAE_VERSION, &h));
    int64_t d_in = 0, d_sae = 0, k = 0, med = 0, ranks = 0;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "architecture", &arch), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_in", &d_in), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_sae", &d_sae), done);
    ML_CHECK_GOTO(ml_attr_int_or(h, "k", 0, &k), done);
    if (strcmp(arch, ml_sae_arch_name(sae->arch)) || d_in != sae->d_in || d_sae != sae->d_sae || k != sae->k)
        ML_FAIL_GOTO(done, ML_ERR_CONFIG, "%s: cannot resume: it holds a %s SAE %lld x %lld (k %lld), this run trains "
                     "a %s SAE %d x %d (k %d)", path, arch, (long long)d_in, (long long)d_sae, (long long)k,
                     ml_sae_arch_name(sae->arch), sae->d_in, sae->d_sae, sae->k);
    const char *g = "/checkpoint";
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "step", &st->step), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "steps", &st->steps), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "stream_pos", &st->stream_pos), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "interval_steps", &st->iv_steps), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "ranks", &ranks), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, g, "median_iters", &med), done);
    st->ranks = ranks;
    tr->median_iters = (int)med;
    ML_CHECK_GOTO(ml_h5_get_attr_double(h, "/", "mean_sq_norm", &tr->mean_sq_norm), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/metrics", "resampled_total", &tr->resampled_total), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/metrics", "tokens", &tr->tokens_seen), done);
    const hsize_t P = (hsize_t)sae->n_params;
    ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/params", ML_F32, P, sae->params), done);
    ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/interval_sums", ML_F64, ML_SAE_CKPT_SUMS, st->iv_sums), done);
    ML_CHECK_GOTO(ml_read_col(h, "/metrics/tokens_since_fired", ML_I64, (hsize_t)d_sae, tr->tokens_since_fired), done);
    if (st->step < st->steps) {
        ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/adam_m", ML_F32, P, st->adam_m), done);
        ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/adam_v", ML_F32, P, st->adam_v), done);
        ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/interval_count", ML_F64, (hsize_t)d_sae, st->iv_count), done);
        ML_CHECK_GOTO(ml_read_col(h, "/checkpoint/mu", ML_F32, (hsize_t)d_in, st->mu), done);
    }
    ML_CHECK_GOTO(ml_read_history(h, &tr->hist), done);
done:
    ml_free(arch);
    int crc = ml_h5_close(&h);
    if (rc == ML_OK) rc = crc;
    return rc;
}

int ml_sae_load(const char *path, ml_sae **out) {
    *out = NULL;
    int rc = ML_OK;
    ml_h5 *h = NULL;
    ml_sae *s = NULL;
    char *arch = NULL, *hook = NULL, *model = NULL;
    float *W_enc = NULL;
    ML_CHECK(ml_h5_open(MPI_COMM_SELF, path, ML_SAE_FORMAT, 1, ML_SAE_VERSION, &h));
    ML_CHECK_GOTO(ml_sae_check_complete(h), done);
    int64_t d_in = 0, d_sae = 0, k = 0, apply = -1, norm = -1;
    double l1 = 0;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "architecture", &arch), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_in", &d_in), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_sae", &d_sae), done);
    ml_sae_arch a;
    rc = ml_sae_arch_parse(arch, &a);
    if (rc != ML_OK) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: %s", path, ml_error_message());
    ML_CHECK_GOTO(ml_attr_int_or(h, "k", 0, &k), done);
    ML_CHECK_GOTO(ml_attr_int_or(h, "apply_b_dec_to_input", -1, &apply), done);
    ML_CHECK_GOTO(ml_attr_int_or(h, "normalize_decoder", -1, &norm), done);
    rc = ml_h5_get_attr_double(h, "/", "l1_coefficient", &l1);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        l1 = 0;
        rc = ML_OK;
    }
    if (rc != ML_OK) goto done;
    if (d_in <= 0 || d_sae <= 0 || d_in > INT32_MAX || d_sae > INT32_MAX)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: d_in %lld and d_sae %lld must be positive", path, (long long)d_in,
                     (long long)d_sae);
    if (a == ML_SAE_TOPK && (k < 1 || k > d_sae))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: topk SAE needs an attribute k in 1..d_sae (%lld), found %lld", path,
                     (long long)d_sae, (long long)k);
    ML_CHECK_GOTO(ml_sae_create(a, (int)d_in, (int)d_sae, (int)k, &s), done);
    if (apply >= 0) s->apply_b_dec_to_input = apply != 0;
    if (norm >= 0) s->normalize_decoder = norm != 0;
    s->l1_coefficient = l1;
    if (ml_h5_get_attr_str(h, "/", "hook_name", &hook) == ML_OK)
        snprintf(s->hook_name, sizeof s->hook_name, "%s", hook);
    else ml_error_clear();
    if (ml_h5_get_attr_str(h, "/", "model", &model) == ML_OK) snprintf(s->model, sizeof s->model, "%s", model);
    else ml_error_clear();
    W_enc = ml_malloc(sizeof(float) * (size_t)d_in * (size_t)d_sae);
    if (!W_enc) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: out of memory for W_enc", path);
    hsize_t de[2] = {(hsize_t)d_in, (hsize_t)d_sae}, dd[2] = {(hsize_t)d_sae, (hsize_t)d_in};
    hsize_t ds[1] = {(hsize_t)d_sae}, di[1] = {(hsize_t)d_in};
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "/W_enc", ML_F32, 2, de, W_enc), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "/b_enc", ML_F32, 1, ds, s->b_enc), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "/W_dec", ML_F32, 2, dd, s->W_dec), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "/b_dec", ML_F32, 1, di, s->b_dec), done);
    ml_transpose(W_enc, (int)d_in, (int)d_sae, s->W_enc_t);
    const char *names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
    size_t off[4], len[4] = {(size_t)(d_in * d_sae), (size_t)d_sae, (size_t)(d_in * d_sae), (size_t)d_in};
    ml_sae_param_offsets(s, &off[0], &off[1], &off[2], &off[3]);
    for (int t = 0; t < 4; t++)
        for (size_t i = 0; i < len[t]; i++)
            if (!isfinite(s->params[off[t] + i]))
                ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: tensor %s holds a non-finite value (%g) at element %zu", path,
                             names[t], (double)s->params[off[t] + i], t == 0 ? (i % (size_t)d_in) * (size_t)d_sae + i / (size_t)d_in : i);
    *out = s;
    s = NULL;
done:
    ml_free(arch);
    ml_free(hook);
    ml_free(model);
    ml_free(W_enc);
    ml_sae_destroy(&s);
    int crc = ml_h5_close(&h);
    if (rc == ML_OK) rc = crc;
    return rc;
}

/* ---- where the rows came from (root attribute `source`) ------------------------------------ */
int ml_sae_source_json(const ml_sae_source_info *i, char **out) {
    *out = NULL;
    json_t *doms = i->domains_json && i->domains_json[0] ? json_loads(i->domains_json, 0, NULL) : NULL;
    json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:I,s:i,s:s,s:s,s:I,s:i}", "kind", i->kind, "acts", i->acts ? i->acts : "",
                          "model", i->model ? i->model : "", "domains", doms ? doms : json_null(), "n_tokens",
                          (json_int_t)i->n_tokens, "context", i->context, "split", i->split ? i->split : "", "order",
                          i->order ? i->order : "", "seed", (json_int_t)i->seed, "batch", i->batch);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    *out = text ? ml_strdup(text) : NULL;
    free(text);
    if (!*out) return ML_FAIL(ML_ERR_NOMEM, "sae: cannot format the source description (out of memory or not UTF-8)");
    return ML_OK;
}

/* An optional root attribute: "" / -1 when absent. */
static int ml_attr_str_opt(ml_h5 *h, const char *attr, char **out) {
    int rc = ml_h5_get_attr_str(h, "/", attr, out);
    if (rc == ML_ERR_NOTFOUND || rc == ML_ERR_FORMAT) {
        ml_error_clear();
        *out = NULL;
        return ML_OK;
    }
    return rc;
}

/* ---- activations file as a row source ----------------------------------------------------- */
struct ml_acts_source {
    ml_row_source src;
    ml_h5 *h;
    char ds[512];
    int f16;
    uint16_t *stage;
    int64_t stage_rows;
    char *model;
    int has_tokens, has_docs, has_pos;
    int context;       /* the capture's `context` attribute (0: absent) */
    char *source_json; /* the `source` attribute of SAEs trained on it */
};

/* The first non-finite value of rows [row0, row0 + count) as a one-line error naming the file. */
static int ml_acts_check_finite(const ml_acts_source *a, int64_t row0, int64_t count, const float *x /* [count, d] */) {
    const size_t n = (size_t)count * (size_t)a->src.d;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return ML_FAIL(ML_ERR_NUMERIC, "%s: dataset '%s' row %lld holds a non-finite value (%g)", ml_h5_path(a->h),
                           a->ds, (long long)(row0 + (int64_t)(i / (size_t)a->src.d)), (double)x[i]);
    return ML_OK;
}

static int ml_acts_read(void *ctx, int64_t row0, int64_t count, float *out) {
    ml_acts_source *a = ctx;
    if (!a->f16) {
        ML_CHECK(ml_h5_read_rows(a->h, a->ds, ML_F32, (hsize_t)row0, (hsize_t)count, out));
        return ml_acts_check_finite(a, row0, count, out);
    }
    if (count > a->stage_rows) {
        ml_free(a->stage);
        a->stage = ml_malloc(sizeof(uint16_t) * (size_t)(count * a->src.d));
        if (!a->stage) {
            a->stage_rows = 0;
            return ML_FAIL(ML_ERR_NOMEM, "%s: out of memory staging %lld float16 rows", ml_h5_path(a->h), (long long)count);
        }
        a->stage_rows = count;
    }
    ML_CHECK(ml_h5_read_rows(a->h, a->ds, ML_F16, (hsize_t)row0, (hsize_t)count, a->stage ? (void *)a->stage : (void *)out));
    if (count > 0) ml_f16_to_f32_array(out, a->stage, (size_t)(count * a->src.d));
    return ml_acts_check_finite(a, row0, count, out);
}

static int ml_acts_read_meta(void *ctx, int64_t row0, int64_t count, int32_t *tokens, int64_t *doc_ids,
                             int32_t *positions) {
    ml_acts_source *a = ctx;
    /* every rank reads each dataset the file has (collective), even into scratch it does not want */
    if (a->has_tokens && tokens) ML_CHECK(ml_h5_read_rows(a->h, "/tokens", ML_I32, (hsize_t)row0, (hsize_t)count, tokens));
    if (a->has_docs && doc_ids) ML_CHECK(ml_h5_read_rows(a->h, "/doc_ids", ML_I64, (hsize_t)row0, (hsize_t)count, doc_ids));
    if (a->has_pos && positions)
        ML_CHECK(ml_h5_read_rows(a->h, "/positions", ML_I32, (hsize_t)row0, (hsize_t)count, positions));
    for (int64_t i = 0; i < count; i++) {
        if (!a->has_tokens && tokens) tokens[i] = -1;
        if (!a->has_docs && doc_ids) doc_ids[i] = 0;
        if (!a->has_pos && positions) positions[i] = (int32_t)(row0 + i);
    }
    return ML_OK;
}

static int ml_check_meta(ml_h5 *h, const char *name, ml_dtype want, int64_t n, int *has) {
    *has = ml_h5_exists(h, name);
    if (!*has) return ML_OK;
    int rank;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    ML_CHECK(ml_h5_shape(h, name, &rank, dims, &t));
    if (rank != 1 || (int64_t)dims[0] != n || t != want)
        return ML_FAIL(ML_ERR_FORMAT, "%s: '%s' must be [%lld] %s (found rank %d, %llu rows, %s)", ml_h5_path(h), name,
                       (long long)n, ml_dtype_name(want), rank, (unsigned long long)dims[0], ml_dtype_name(t));
    return ML_OK;
}

/* The `source` description of an activations file: its path and the capture's attributes. */
static int ml_acts_describe(ml_acts_source *a, const char *path) {
    int rc = ML_OK;
    char *domains = NULL, *split = NULL, *order = NULL;
    int64_t ctx = 0, seed = -1;
    ML_CHECK_GOTO(ml_attr_str_opt(a->h, "domains", &domains), done);
    ML_CHECK_GOTO(ml_attr_str_opt(a->h, "split", &split), done);
    ML_CHECK_GOTO(ml_attr_str_opt(a->h, "order", &order), done);
    ML_CHECK_GOTO(ml_attr_int_or(a->h, "context", 0, &ctx), done);
    ML_CHECK_GOTO(ml_attr_int_or(a->h, "seed", -1, &seed), done);
    a->context = ctx > 0 && ctx <= INT32_MAX ? (int)ctx : 0;
    ml_sae_source_info i = {"activations", path, a->model, domains, a->src.n_rows, (int)ctx, split, order, seed, 0};
    rc = ml_sae_source_json(&i, &a->source_json);
done:
    ml_free(domains);
    ml_free(split);
    ml_free(order);
    return rc;
}

int ml_acts_source_open(MPI_Comm comm, const char *path, const char *hook, ml_acts_source **out) {
    *out = NULL;
    int rc = ML_OK;
    ml_acts_source *a = ml_calloc(1, sizeof *a);
    if (!a) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_h5_open(comm, path, ML_ACTS_FORMAT, 1, 1, &a->h), fail);
    snprintf(a->ds, sizeof a->ds, "/hooks/%s/acts", hook);
    if (!ml_h5_exists(a->h, a->ds)) {
        char **names = NULL, list[1024] = "";
        int n = 0;
        if (ml_h5_exists(a->h, "/hooks") && ml_h5_list(a->h, "/hooks", 0, &names, &n) == ML_OK)
            for (int i = 0; i < n; i++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
        ml_h5_free_names(names, n);
        ML_FAIL_GOTO(fail, ML_ERR_NOTFOUND, "%s: no hook '%s' (dataset %s); the file has: %s", path, hook, a->ds,
                     list[0] ? list : "no hooks");
    }
    int rank;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    ML_CHECK_GOTO(ml_h5_shape(a->h, a->ds, &rank, dims, &t), fail);
    if (rank != 2 || (t != ML_F32 && t != ML_F16) || dims[0] == 0 || dims[1] == 0)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: %s must be a non-empty [N, d] float32 or float16 dataset (found rank %d, %s)",
                     path, a->ds, rank, ml_dtype_name(t));
    a->f16 = t == ML_F16;
    a->src.n_rows = (int64_t)dims[0];
    a->src.d = (int)dims[1];
    a->src.ctx = a;
    a->src.read = ml_acts_read;
    a->src.read_meta = ml_acts_read_meta;
    ML_CHECK_GOTO(ml_check_meta(a->h, "/tokens", ML_I32, a->src.n_rows, &a->has_tokens), fail);
    ML_CHECK_GOTO(ml_check_meta(a->h, "/doc_ids", ML_I64, a->src.n_rows, &a->has_docs), fail);
    ML_CHECK_GOTO(ml_check_meta(a->h, "/positions", ML_I32, a->src.n_rows, &a->has_pos), fail);
    if (ml_h5_get_attr_str(a->h, "/", "model", &a->model) != ML_OK) {
        ml_error_clear();
        a->model = NULL;
    }
    ML_CHECK_GOTO(ml_acts_describe(a, path), fail);
    *out = a;
    return ML_OK;
fail:
    ml_acts_source_close(&a);
    return rc;
}

const ml_row_source *ml_acts_source_rows(const ml_acts_source *a) { return &a->src; }
const char *ml_acts_source_model(const ml_acts_source *a) { return a->model ? a->model : ""; }
const char *ml_acts_source_json(const ml_acts_source *a) { return a->source_json; }
int ml_acts_source_context(const ml_acts_source *a) { return a->context; }

void ml_acts_source_close(ml_acts_source **ap) {
    if (!ap || !*ap) return;
    ml_acts_source *a = *ap;
    if (a->h) {
        ml_h5_close(&a->h);
    }
    ml_free(a->stage);
    ml_free(a->model);
    ml_free(a->source_json);
    ml_free(a);
    *ap = NULL;
}
