/* Data-parallel SAE training: several SAEs (a grid of L1 coefficients or k)
 * learn from the same shuffled row stream. Per step and SAE: forward +
 * backward on this rank's rows, one MPI_Allreduce of [gradients | per-latent
 * firing counts | loss sums], decoder-gradient projection, Adam, decoder
 * renormalisation. Dead latents: resampling (standard, anthropic) or AuxK
 * (topk). Metrics are recorded every log_every steps.
 *
 * Dimension letters: D = d_in, S = d_sae, B global batch, L = B/P local rows.
 */
#include "mergelens/sae.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "sae_ckpt.h"

enum { ST_MSE = 0, ST_L1, ST_AUX, ST_SQERR, ST_L0, ST_VAR, ST_ROWS, ST_N };
_Static_assert(ST_N == ML_SAE_CKPT_SUMS, "checkpoint interval sums");

typedef struct {
    ml_sae *sae;
    ml_sae_loss_cfg lc;
    double l1_target;
    float *buf;           /* (n_params + S + ST_N + 1) allreduce buffer (last: the signal flag) */
    float *m, *v;         /* (n_params) Adam moments */
    int64_t *since;       /* (S) tokens since the latent last fired */
    uint8_t *dead;        /* (S) */
    double *iv_count;     /* (S) firing counts in the current log interval */
    double iv[ST_N];      /* loss sums in the current log interval */
    int64_t iv_steps;
    int64_t resampled;
    ml_sae_history hist;
} ml_slot;

void ml_sae_train_config_default(ml_sae_train_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = ML_SAE_STANDARD;
    c->expansion = 16;
    c->n_grid = 1;
    c->l1[0] = 3e-4;
    c->k[0] = 32;
    c->aux_coef = 1.0 / 32;
    c->lr = 1e-4;
    c->beta1 = 0.9;
    c->beta2 = 0.9999;
    c->adam_eps = 1e-8;
    c->batch = 3072;
    c->seed = 42;
    c->block_rows = 4096;
    c->buffer_blocks = 16;
    c->median_rows = 8192;
    c->median_iters = 100;
    c->mse_norm = ML_SAE_NORM_ROW;
    c->norm_floor = 0.01;
    c->dec_init_norm = 0.1f;
    c->dead_window = 1000000;
    c->dense_threshold = 0.1;
    c->resample = 1;
    c->resample_every = 2000;
    c->resample_stop = 0.5;
    c->resample_rows = 16384;
    c->log_every = 100;
    c->hook_name = "blocks.0.mlp.hook_post";
    c->model = "";
}

static void ml_history_free(ml_sae_history *h) {
    ml_free(h->step);
    ml_free(h->tokens);
    ml_free(h->loss);
    ml_free(h->mse);
    ml_free(h->fvu);
    ml_free(h->l0);
    ml_free(h->loss_l1);
    ml_free(h->loss_aux);
    ml_free(h->dead_fraction);
    ml_free(h->dense_fraction);
    ml_free(h->resampled);
    ml_free(h->hist);
    ml_free(h->hist_zero);
    memset(h, 0, sizeof *h);
}

#define ML_GROW(ptr, cap)                                                                                   \
    do {                                                                                                    \
        void *np_ = ml_realloc((ptr), sizeof(*(ptr)) * (size_t)(cap));                                      \
        if (!np_) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);                        \
        (ptr) = np_;                                                                                        \
    } while (0)

int ml_sae_history_reserve(ml_sae_history *h, int64_t need) {
    if (need <= h->cap) return ML_OK;
    int64_t cap = h->cap ? 2 * h->cap : 64;
    while (cap < need) cap *= 2;
    ML_GROW(h->step, cap);
    ML_GROW(h->tokens, cap);
    ML_GROW(h->loss, cap);
    ML_GROW(h->mse, cap);
    ML_GROW(h->fvu, cap);
    ML_GROW(h->l0, cap);
    ML_GROW(h->loss_l1, cap);
    ML_GROW(h->loss_aux, cap);
    ML_GROW(h->dead_fraction, cap);
    ML_GROW(h->dense_fraction, cap);
    ML_GROW(h->resampled, cap);
    ML_GROW(h->hist, cap * ML_SAE_HIST_BINS);
    ML_GROW(h->hist_zero, cap);
    h->cap = cap;
    return ML_OK;
}

/* log10 density histogram: bins of ML_SAE_HIST_STEP from ML_SAE_HIST_LO; zero counts apart */
void ml_sae_density_hist(const double *count, int S, double rows, int64_t *hist, int64_t *zero) {
    memset(hist, 0, sizeof(int64_t) * ML_SAE_HIST_BINS);
    *zero = 0;
    for (int j = 0; j < S; j++) {
        if (count[j] <= 0 || rows <= 0) {
            (*zero)++;
            continue;
        }
        int b = (int)floor((log10(count[j] / rows) - ML_SAE_HIST_LO) / ML_SAE_HIST_STEP);
        if (b < 0) b = 0;
        if (b >= ML_SAE_HIST_BINS) b = ML_SAE_HIST_BINS - 1;
        hist[b]++;
    }
}

static int ml_record(ml_slot *sl, int64_t step, int64_t tokens, const ml_sae_train_config *cfg) {
    ml_sae_history *h = &sl->hist;
    ML_CHECK(ml_sae_history_reserve(h, h->n + 1));
    int S = sl->sae->d_sae, D = sl->sae->d_in;
    int64_t i = h->n;
    double rows = sl->iv[ST_ROWS], ns = sl->iv_steps > 0 ? (double)sl->iv_steps : 1;
    h->step[i] = step;
    h->tokens[i] = tokens;
    h->loss[i] = (sl->iv[ST_MSE] + sl->iv[ST_L1] + sl->iv[ST_AUX]) / ns;
    h->loss_l1[i] = sl->iv[ST_L1] / ns;
    h->loss_aux[i] = sl->iv[ST_AUX] / ns;
    h->mse[i] = rows > 0 ? sl->iv[ST_SQERR] / (rows * D) : 0;
    h->fvu[i] = sl->iv[ST_VAR] > 0 ? sl->iv[ST_SQERR] / sl->iv[ST_VAR] : 0;
    h->l0[i] = rows > 0 ? sl->iv[ST_L0] / rows : 0;
    int64_t window = cfg->dead_window < tokens ? cfg->dead_window : tokens;
    int64_t nd = 0, nn = 0;
    for (int j = 0; j < S; j++) {
        nd += sl->since[j] >= window;
        nn += rows > 0 && sl->iv_count[j] / rows > cfg->dense_threshold;
    }
    h->dead_fraction[i] = (double)nd / S;
    h->dense_fraction[i] = (double)nn / S;
    h->resampled[i] = sl->resampled;
    ml_sae_density_hist(sl->iv_count, S, rows, h->hist + i * ML_SAE_HIST_BINS, &h->hist_zero[i]);
    h->n++;
    memset(sl->iv, 0, sizeof sl->iv);
    memset(sl->iv_count, 0, sizeof(double) * (size_t)S);
    sl->iv_steps = 0;
    return ML_OK;
}

static void ml_slot_free(ml_slot *sl) {
    ml_free(sl->buf);
    ml_free(sl->m);
    ml_free(sl->v);
    ml_free(sl->since);
    ml_free(sl->dead);
    ml_free(sl->iv_count);
}

/* ---- resampling dead latents (Anthropic, "Towards Monosemanticity") ---------------------------- */
typedef struct {
    int nb;          /* batches peeked */
    float *xhat;     /* (nb*L, D) */
    float *f;        /* (256, S) encode scratch */
    float *loss;     /* (nb*L) local per-row losses */
    float *all_loss; /* (nb*B) gathered, rank-major */
    double *cum;     /* (nb*B) cumulative loss^2 in stream order */
    float *dirs;     /* (S, D) chosen residual directions (only n_dead rows used) */
    int32_t *dead_idx; /* (S) */
} ml_resampler;

static void ml_resampler_free(ml_resampler *r) {
    ml_free(r->xhat);
    ml_free(r->f);
    ml_free(r->loss);
    ml_free(r->all_loss);
    ml_free(r->cum);
    ml_free(r->dirs);
    ml_free(r->dead_idx);
    memset(r, 0, sizeof *r);
}

static int ml_resampler_init(ml_resampler *r, const ml_sae_train_config *cfg, int B, int L, int D, int S) {
    memset(r, 0, sizeof *r);
    r->nb = (cfg->resample_rows + B - 1) / B;
    if (r->nb < 1) r->nb = 1;
    size_t nl = (size_t)r->nb * (size_t)L, ng = (size_t)r->nb * (size_t)B;
    r->xhat = ml_malloc(sizeof(float) * nl * (size_t)D);
    r->f = ml_malloc(sizeof(float) * 256 * (size_t)S);
    r->loss = ml_malloc(sizeof(float) * nl);
    r->all_loss = ml_malloc(sizeof(float) * ng);
    r->cum = ml_malloc(sizeof(double) * ng);
    r->dirs = ml_malloc(sizeof(float) * (size_t)S * (size_t)D);
    r->dead_idx = ml_malloc(sizeof(int32_t) * (size_t)S);
    if (!r->xhat || !r->f || !r->loss || !r->all_loss || !r->cum || !r->dirs || !r->dead_idx) {
        ml_resampler_free(r);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    return ML_OK;
}

static double ml_row_norm(const float *a, int D) {
    double s = 0;
    for (int i = 0; i < D; i++) s += (double)a[i] * a[i];
    return sqrt(s);
}

/* Latents that did not fire during the last resample interval get new
 * directions: the normalised residual x - x_hat of an input sampled with
 * probability proportional to its squared (normalised) loss. Decoder row =
 * direction (times the mean alive decoder norm when rows are not unit),
 * encoder row = direction * 0.2 * mean alive encoder norm, b_enc = 0, and
 * their Adam moments are reset. Collective; rank-count independent. */
static int ml_resample(MPI_Comm comm, ml_slot *sl, ml_resampler *rs, ml_sae_stream *stream, int B, int L,
                       int64_t window, uint64_t seed, int64_t step) {
    ml_sae *sae = sl->sae;
    int S = sae->d_sae, D = sae->d_in, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    int n_dead = 0;
    double enc_alive = 0, dec_alive = 0;
    for (int j = 0; j < S; j++) {
        if (sl->since[j] >= window) rs->dead_idx[n_dead++] = j;
        else {
            enc_alive += ml_row_norm(sae->W_enc_t + (size_t)j * D, D);
            dec_alive += ml_row_norm(sae->W_dec + (size_t)j * D, D);
        }
    }
    if (n_dead == 0) return ML_OK;
    int n_alive = S - n_dead;
    enc_alive = n_alive ? enc_alive / n_alive : 1.0;
    dec_alive = n_alive ? dec_alive / n_alive : 1.0;
    ml_prof_begin("sae.resample");
    const float *x;
    ML_CHECK(ml_sae_stream_peek(stream, rs->nb, &x));
    int nl = rs->nb * L;
    ML_CHECK(ml_sae_reconstruct(sae, x, nl, rs->xhat, rs->f));
    for (int b = 0; b < nl; b++) {
        double e2 = 0, x2 = 0;
        for (int i = 0; i < D; i++) {
            double d = (double)x[(size_t)b * D + i] - rs->xhat[(size_t)b * D + i];
            e2 += d * d;
            x2 += (double)x[(size_t)b * D + i] * x[(size_t)b * D + i];
        }
        rs->loss[b] = (float)(e2 / (x2 > 1e-8 ? x2 : 1e-8));
    }
    ML_CHECK(ml_mpi_allgather(comm, rs->loss, rs->all_loss, (size_t)nl, MPI_FLOAT));
    /* stream order: global row g = batch*B + r*L + i lives on rank r at local batch*L + i */
    int ng = rs->nb * B;
    double tot = 0;
    for (int g = 0; g < ng; g++) {
        int bt = g / B, r = (g % B) / L, i = (g % B) % L;
        double l = rs->all_loss[(size_t)r * nl + (size_t)bt * L + i];
        tot += l * l;
        rs->cum[g] = tot;
    }
    memset(rs->dirs, 0, sizeof(float) * (size_t)n_dead * D);
    ml_rng rng;
    ml_rng_seed(&rng, seed ^ 0x7E5A3B1Eull, (uint64_t)step);
    for (int t = 0; t < n_dead; t++) {
        double u = ml_rng_uniform(&rng) * tot;
        int lo = 0, hi = ng - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (rs->cum[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        int g = lo, bt = g / B, r = (g % B) / L, i = (g % B) % L;
        if (r != rank) continue;
        size_t lr = (size_t)bt * L + i;
        float *d = rs->dirs + (size_t)t * D;
        for (int k = 0; k < D; k++) d[k] = x[lr * D + k] - rs->xhat[lr * D + k];
        double nrm = ml_row_norm(d, D);
        for (int k = 0; k < D; k++) d[k] = nrm > 0 ? (float)(d[k] / nrm) : 0.0f;
    }
    ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, rs->dirs, (size_t)n_dead * D, MPI_FLOAT, MPI_SUM));
    size_t oe, obe, od, obd;
    ml_sae_param_offsets(sae, &oe, &obe, &od, &obd);
    float dscale = sae->normalize_decoder ? 1.0f : (float)dec_alive, escale = (float)(0.2 * enc_alive);
    for (int t = 0; t < n_dead; t++) {
        int j = rs->dead_idx[t];
        const float *d = rs->dirs + (size_t)t * D;
        for (int k = 0; k < D; k++) {
            sae->W_dec[(size_t)j * D + k] = dscale * d[k];
            sae->W_enc_t[(size_t)j * D + k] = escale * d[k];
        }
        sae->b_enc[j] = 0;
        size_t offs[3] = {oe + (size_t)j * D, od + (size_t)j * D, obe + (size_t)j};
        size_t lens[3] = {(size_t)D, (size_t)D, 1};
        for (int q = 0; q < 3; q++) {
            memset(sl->m + offs[q], 0, sizeof(float) * lens[q]);
            memset(sl->v + offs[q], 0, sizeof(float) * lens[q]);
        }
        sl->since[j] = 0;
    }
    sl->resampled += n_dead;
    ml_prof_end("sae.resample", 0, 0);
    ml_info("sae: step %lld: resampled %d dead latents (%.2f%%) of SAE l1=%g", (long long)step, n_dead,
            100.0 * n_dead / S, sl->l1_target);
    return ML_OK;
}

/* ---- the training loop -------------------------------------------------------------------------- */
void ml_sae_run_destroy(ml_sae_run **runp) {
    if (!runp || !*runp) return;
    ml_sae_run *run = *runp;
    for (int i = 0; i < run->n; i++) {
        ml_sae_destroy(&run->item[i].sae);
        ml_history_free(&run->item[i].hist);
        ml_free(run->item[i].tokens_since_fired);
    }
    ml_free(run->item);
    ml_free(run);
    *runp = NULL;
}

/* ---- checkpoints (sae_ckpt.h) ------------------------------------------------------------------ */
typedef struct {
    int64_t step, steps;
    int B, P;
    const float *mu;      /* (D) */
    double mean_sq;
    int median_iters;
} ml_run_pos;

/* Every SAE of the grid to its output path, complete = 0. Collective. */
static int ml_save_checkpoints(MPI_Comm comm, const ml_sae_train_config *cfg, ml_slot *slots, const ml_run_pos *rp) {
    const ml_sae_ckpt_opts *ck = cfg->ckpt;
    ml_prof_begin("sae.checkpoint");
    for (int g = 0; g < cfg->n_grid; g++) {
        ml_slot *sl = &slots[g];
        ml_sae_trained tr = {.sae = sl->sae, .hist = sl->hist, .steps = rp->step, .tokens_seen = rp->step * rp->B,
                             .tokens_since_fired = sl->since, .resampled_total = sl->resampled,
                             .median_iters = rp->median_iters, .mse_norm = sl->lc.mse_norm, .norm_sq = sl->lc.norm_sq,
                             .mean_sq_norm = rp->mean_sq};
        if (cfg->prov) tr.prov = cfg->prov[g];
        ml_sae_ckpt_state st = {.step = rp->step, .steps = rp->steps, .stream_pos = rp->step * rp->B,
                                .iv_steps = sl->iv_steps, .ranks = rp->P, .adam_m = sl->m, .adam_v = sl->v,
                                .iv_count = sl->iv_count, .mu = (float *)rp->mu};
        memcpy(st.iv_sums, sl->iv, sizeof st.iv_sums);
        ML_CHECK(ml_sae_ckpt_write(comm, ck->paths[g], &tr, &st, ck->config_json, ck->source_json));
    }
    ml_prof_end("sae.checkpoint", 0, 0);
    ml_debug("sae: checkpoint at step %lld written to %s", (long long)rp->step, ck->paths[0]);
    return ML_OK;
}

/* Restore every SAE of the grid from its checkpoint and move the stream to
 * the next batch. Sets rp->step, mean_sq, median_iters and mu. Collective. */
static int ml_restore_checkpoints(MPI_Comm comm, const ml_sae_train_config *cfg, ml_slot *slots, ml_run_pos *rp,
                                  float *mu, ml_sae_stream *stream) {
    const ml_sae_ckpt_opts *ck = cfg->ckpt;
    int64_t ranks0 = 0;
    for (int g = 0; g < cfg->n_grid; g++) {
        ml_slot *sl = &slots[g];
        const char *path = ck->paths[g];
        ml_sae_trained tr = {.sae = sl->sae, .tokens_since_fired = sl->since};
        ml_sae_ckpt_state st = {.adam_m = sl->m, .adam_v = sl->v, .iv_count = sl->iv_count, .mu = mu};
        int rc = ml_sae_ckpt_read(comm, path, &tr, &st);
        ml_history_free(&sl->hist);
        sl->hist = tr.hist;
        if (rc != ML_OK) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
        if (st.steps != rp->steps)
            return ML_FAIL(ML_ERR_CONFIG, "%s: cannot resume: it planned %lld steps, this run plans %lld (did the rows "
                           "change?)", path, (long long)st.steps, (long long)rp->steps);
        if (st.step < 0 || st.step > st.steps || st.stream_pos != st.step * rp->B || tr.tokens_seen != st.stream_pos ||
            sl->hist.n > st.step)
            return ML_FAIL(ML_ERR_FORMAT, "%s: inconsistent checkpoint: step %lld of %lld, stream position %lld, %lld "
                           "tokens, %lld log records (batch %d)", path, (long long)st.step, (long long)st.steps,
                           (long long)st.stream_pos, (long long)tr.tokens_seen, (long long)sl->hist.n, rp->B);
        if (g == 0) {
            rp->step = st.step;
            rp->mean_sq = tr.mean_sq_norm;
            rp->median_iters = tr.median_iters;
            ranks0 = st.ranks;
        } else if (st.step != rp->step || tr.mean_sq_norm != rp->mean_sq) {
            return ML_FAIL(ML_ERR_CONFIG, "%s: cannot resume: checkpoint at step %lld but %s at step %lld (the grid's "
                           "files disagree; --resume false starts over)", path, (long long)st.step, ck->paths[0],
                           (long long)rp->step);
        }
        memcpy(sl->iv, st.iv_sums, sizeof sl->iv);
        sl->iv_steps = st.iv_steps;
        sl->resampled = tr.resampled_total;
    }
    if (ranks0 != rp->P)
        ml_warn("sae: %s was written by %lld ranks, this run has %d: it continues, but the sums run in another order "
                "(not bitwise an uninterrupted run)", ck->paths[0], (long long)ranks0, rp->P);
    ML_CHECK(ml_sae_stream_seek(stream, rp->step * rp->B));
    ml_info("sae: resuming %s%s at step %lld of %lld", ck->paths[0], cfg->n_grid > 1 ? " (and the grid's other files)" : "",
            (long long)rp->step, (long long)rp->steps);
    return ML_OK;
}

/* SAE g's seed of its initialisation (resample 0) or resampling draws (1). */
static uint64_t ml_slot_seed(const ml_sae_train_config *cfg, int g, int resample) {
    if (cfg->per_sae_seeds) return cfg->sae_seed[g];
    return cfg->seed + (resample ? (uint64_t)g : 0);
}

static int ml_check_config(const ml_sae_train_config *c, int P, int d_in) {
    if (c->n_grid < 1 || c->n_grid > ML_SAE_MAX_GRID)
        return ML_FAIL(ML_ERR_ARG, "sae: %d SAEs in the grid; expected 1..%d", c->n_grid, ML_SAE_MAX_GRID);
    if (c->batch <= 0 || c->batch % P)
        return ML_FAIL(ML_ERR_ARG, "sae: batch %d must be a positive multiple of the %d ranks", c->batch, P);
    int S = c->d_sae > 0 ? c->d_sae : c->expansion * d_in;
    if (S <= 0) return ML_FAIL(ML_ERR_ARG, "sae: d_sae %d (expansion %d x d_in %d) must be positive", S, c->expansion, d_in);
    for (int g = 0; g < c->n_grid; g++) {
        if (c->arch == ML_SAE_TOPK && (c->k[g] < 1 || c->k[g] > S))
            return ML_FAIL(ML_ERR_ARG, "sae: k %d must be in 1..d_sae (%d)", c->k[g], S);
        if (c->arch != ML_SAE_TOPK && !(c->l1[g] >= 0))
            return ML_FAIL(ML_ERR_ARG, "sae: L1 coefficient %g must be >= 0", c->l1[g]);
    }
    if (!(c->lr > 0)) return ML_FAIL(ML_ERR_ARG, "sae: learning rate %g must be positive", c->lr);
    return ML_OK;
}

int ml_sae_train(MPI_Comm comm, const ml_sae_train_config *cfg, const ml_row_source *src, ml_sae_run **out) {
    *out = NULL;
    int rank, P, rc = ML_OK;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    ML_CHECK_MPI(MPI_Comm_size(comm, &P));
    int D = src->d;
    ML_CHECK(ml_check_config(cfg, P, D));
    int S = cfg->d_sae > 0 ? cfg->d_sae : cfg->expansion * D;
    int B = cfg->batch, L = B / P, G = cfg->n_grid;
    int64_t tokens = cfg->tokens > 0 ? cfg->tokens : src->n_rows;
    int64_t steps = tokens / B;
    if (steps < 1) steps = 1;
    if (cfg->max_steps > 0 && steps > cfg->max_steps) steps = cfg->max_steps;
    int median_nb = (cfg->median_rows + B - 1) / B;
    if (median_nb < 1) median_nb = 1;
    int do_resample = cfg->resample && cfg->arch != ML_SAE_TOPK && cfg->resample_every > 0;
    int resample_nb = do_resample ? (cfg->resample_rows + B - 1) / B : 1;
    if (resample_nb < 1) resample_nb = 1;
    int k_aux = cfg->k_aux > 0 ? cfg->k_aux : D / 2;
    int kmax = 0;
    for (int g = 0; g < G; g++) kmax = cfg->k[g] > kmax ? cfg->k[g] : kmax;

    ml_sae_stream *stream = NULL;
    ml_sae_work *work = NULL;
    ml_slot *slots = NULL;
    ml_sae_run *run = NULL;
    float *median = NULL, *mu = NULL;
    ml_resampler rs;
    memset(&rs, 0, sizeof rs);
    ML_CHECK_GOTO(ml_sae_stream_create(comm, src, B, cfg->block_rows, cfg->buffer_blocks, cfg->seed,
                                       median_nb > resample_nb ? median_nb : resample_nb, &stream),
                  fail);
    slots = ml_calloc((size_t)G, sizeof *slots);
    run = ml_calloc(1, sizeof *run);
    median = ml_malloc(sizeof(float) * (size_t)D);
    mu = ml_calloc((size_t)D, sizeof(float));
    if (!slots || !run || !median || !mu) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "sae: out of memory for the trainer");
    run->item = ml_calloc((size_t)G, sizeof *run->item);
    if (!run->item) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "sae: out of memory for the trainer");
    run->n = G;

    /* b_dec at the geometric median of the first batches; mu = their mean (for FVU) */
    const ml_sae_ckpt_opts *ck = cfg->ckpt;
    const int resuming = ck && ck->resume;
    ml_run_pos rp = {.step = 0, .steps = steps, .B = B, .P = P, .mu = mu};
    int median_iters = 0;
    double mean_sq = 0;
    if (!resuming) {
    const float *sample;
    ML_CHECK_GOTO(ml_sae_stream_peek(stream, median_nb, &sample), fail);
    ml_prof_begin("sae.median");
    ML_CHECK_GOTO(ml_geometric_median(comm, sample, (int64_t)median_nb * L, D, cfg->median_iters, 1e-6, median,
                                      &median_iters),
                  fail);
    ml_prof_end("sae.median", 0, 0);
    {
        double *acc = ml_calloc((size_t)D + 1, sizeof(double)); /* sum x (D), sum ||x||^2 */
        if (!acc) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "sae: out of memory");
        for (int64_t b = 0; b < (int64_t)median_nb * L; b++)
            for (int i = 0; i < D; i++) {
                double v = sample[(size_t)b * D + i];
                acc[i] += v;
                acc[D] += v * v;
            }
        rc = MPI_Allreduce(MPI_IN_PLACE, acc, D + 1, MPI_DOUBLE, MPI_SUM, comm);
        for (int i = 0; i < D; i++) mu[i] = (float)(acc[i] / ((double)median_nb * B));
        mean_sq = acc[D] / ((double)median_nb * B);
        ml_free(acc);
        if (rc != MPI_SUCCESS) {
            rc = ml_mpi_error(rc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
            goto fail;
        }
    }
    } /* !resuming */

    for (int g = 0; g < G; g++) {
        ml_slot *sl = &slots[g];
        ML_CHECK_GOTO(ml_sae_create(cfg->arch, D, S, cfg->arch == ML_SAE_TOPK ? cfg->k[g] : 0, &sl->sae), fail);
        if (!resuming) {
            ml_sae_init(sl->sae, ml_slot_seed(cfg, g, 0), cfg->dec_init_norm);
            memcpy(sl->sae->b_dec, median, sizeof(float) * (size_t)D);
        }
        sl->sae->l1_coefficient = cfg->arch == ML_SAE_TOPK ? 0 : cfg->l1[g];
        snprintf(sl->sae->hook_name, sizeof sl->sae->hook_name, "%s", cfg->hook_name ? cfg->hook_name : "");
        snprintf(sl->sae->model, sizeof sl->sae->model, "%s", cfg->model ? cfg->model : "");
        sl->l1_target = sl->sae->l1_coefficient;
        sl->lc.l1 = sl->l1_target;
        sl->lc.mse_norm = cfg->mse_norm;
        sl->lc.aux_coef = cfg->arch == ML_SAE_TOPK ? cfg->aux_coef : 0;
        sl->lc.k_aux = cfg->arch == ML_SAE_TOPK && cfg->aux_coef > 0 ? k_aux : 0;
        size_t nbuf = sl->sae->n_params + (size_t)S + ST_N + 1;
        sl->buf = ml_calloc(nbuf, sizeof(float));
        sl->m = ml_calloc(sl->sae->n_params, sizeof(float));
        sl->v = ml_calloc(sl->sae->n_params, sizeof(float));
        sl->since = ml_calloc((size_t)S, sizeof(int64_t));
        sl->dead = ml_calloc((size_t)S, 1);
        sl->iv_count = ml_calloc((size_t)S, sizeof(double));
        if (!sl->buf || !sl->m || !sl->v || !sl->since || !sl->dead || !sl->iv_count)
            ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "sae: out of memory for SAE %d of the grid", g);
    }
    if (resuming) {
        ML_CHECK_GOTO(ml_restore_checkpoints(comm, cfg, slots, &rp, mu, stream), fail);
        mean_sq = rp.mean_sq;
        median_iters = rp.median_iters;
    }
    rp.mean_sq = mean_sq;
    rp.median_iters = median_iters;
    for (int g = 0; g < G; g++) {
        ml_sae_loss_cfg *lc = &slots[g].lc;
        lc->norm_sq = cfg->mse_norm == ML_SAE_NORM_DATASET ? mean_sq : cfg->norm_floor * mean_sq;
        if (!(lc->norm_sq > 0)) lc->norm_sq = cfg->mse_norm == ML_SAE_NORM_DATASET ? 1.0 : 0.0;
    }
    {
        /* one workspace for the grid: the SAE with the largest k */
        ml_sae *wide = slots[0].sae;
        for (int g = 1; g < G; g++)
            if (slots[g].sae->k > wide->k) wide = slots[g].sae;
        ML_CHECK_GOTO(ml_sae_work_create(wide, L, k_aux, &work), fail);
    }
    if (do_resample) ML_CHECK_GOTO(ml_resampler_init(&rs, cfg, B, L, D, S), fail);

    ml_info("sae: training %d %s SAE%s d_in %d d_sae %d on %lld rows: %lld steps of %d rows (%d ranks), b_dec at "
            "the geometric median of %d rows (%d iterations)",
            G, ml_sae_arch_name(cfg->arch), G > 1 ? "s" : "", D, S, (long long)src->n_rows, (long long)steps, B, P,
            median_nb * B, median_iters);
    ml_progress pg;
    if (!cfg->quiet) ml_progress_begin(&pg, "sae", (double)steps);
    int64_t resample_until = (int64_t)(cfg->resample_stop * (double)steps);
    int64_t tokens_seen = rp.step * B;
    const int64_t first = rp.step; /* steps done before this run */
    for (int64_t step = rp.step + 1; step <= steps; step++) {
        if (ck) ml_signal_raise_at(comm, step, ck->raise_at);
        double sigval = 0; /* the sum of every rank's ml_signal_vote */
        const float *x;
        ML_CHECK_GOTO(ml_sae_stream_next(stream, &x, NULL), fail);
        tokens_seen += B;
        double var = 0;
        for (int b = 0; b < L; b++)
            for (int i = 0; i < D; i++) {
                double t = (double)x[(size_t)b * D + i] - mu[i];
                var += t * t;
            }
        for (int g = 0; g < G; g++) {
            ml_slot *sl = &slots[g];
            ml_sae *sae = sl->sae;
            size_t np = sae->n_params;
            if (cfg->l1_warmup > 0 && step <= cfg->l1_warmup)
                sl->lc.l1 = sl->l1_target * (double)step / (double)cfg->l1_warmup;
            else sl->lc.l1 = sl->l1_target;
            const uint8_t *dead = NULL;
            if (sl->lc.k_aux > 0) {
                for (int j = 0; j < S; j++) sl->dead[j] = sl->since[j] >= cfg->dead_window;
                dead = sl->dead;
            }
            float *fired = sl->buf + np, *stv = fired + S;
            memset(fired, 0, sizeof(float) * (size_t)S);
            ml_sae_stats st;
            rc = ml_sae_forward_backward(sae, &sl->lc, x, L, B, dead, work, sl->buf, fired, &st);
            if (rc != ML_OK) ml_error_trace(rc, __FILE__, __LINE__, __func__);
            if (P > 1) rc = ml_agree(comm, rc); /* e.g. NaN rows on one rank: every rank stops cleanly */
            if (rc != ML_OK) goto fail;
            stv[ST_MSE] = (float)st.loss_mse;
            stv[ST_L1] = (float)st.loss_l1;
            stv[ST_AUX] = (float)st.loss_aux;
            stv[ST_SQERR] = (float)st.sq_err;
            stv[ST_L0] = (float)st.l0;
            stv[ST_VAR] = (float)var;
            stv[ST_ROWS] = (float)st.rows;
            /* the signal flag rides on the first SAE's reduction */
            const int pend = g == 0 && ck ? ml_signal_pending() : 0;
            stv[ST_N] = (float)ml_signal_vote(pend, P);
            if (P > 1) {
                ml_prof_begin("sae.allreduce");
                rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, sl->buf, np + (size_t)S + ST_N + 1, MPI_FLOAT, MPI_SUM);
                ml_prof_end("sae.allreduce", 0, 4.0 * (double)(np + (size_t)S));
                if (rc != ML_OK) {
                    ml_error_trace(rc, __FILE__, __LINE__, __func__);
                    goto fail;
                }
            }
            if (g == 0) sigval = stv[ST_N];
            ml_prof_begin("sae.update");
            if (sae->normalize_decoder) ml_sae_project_decoder_grad(sae, sl->buf);
            ml_adam_step(sae->params, sl->buf, sl->m, sl->v, np, (float)cfg->lr, (float)cfg->beta1,
                         (float)cfg->beta2, (float)cfg->adam_eps, step);
            if (sae->normalize_decoder) ml_sae_normalize_decoder(sae);
            ml_prof_end("sae.update", 10.0 * (double)np, 28.0 * (double)np);
            for (int j = 0; j < S; j++) {
                sl->since[j] = fired[j] > 0 ? 0 : sl->since[j] + B;
                sl->iv_count[j] += fired[j];
            }
            for (int q = 0; q < ST_N; q++) sl->iv[q] += stv[q];
            sl->iv_steps++;
        }
        if (step % cfg->log_every == 0 || step == steps) {
            for (int g = 0; g < G; g++) ML_CHECK_GOTO(ml_record(&slots[g], step, tokens_seen, cfg), fail);
            const ml_sae_history *h = &slots[0].hist;
            int64_t i = h->n - 1;
            char extra[160];
            snprintf(extra, sizeof extra, "loss %.4g fvu %.3f L0 %.1f dead %.1f%% dense %.1f%%", h->loss[i], h->fvu[i],
                     h->l0[i], 100 * h->dead_fraction[i], 100 * h->dense_fraction[i]);
            if (!cfg->quiet) ml_progress_update(&pg, (double)step, extra);
            for (int g = 0; g < G; g++) {
                h = &slots[g].hist;
                ml_debug("sae[%d] step %lld: loss %.5g mse %.4g fvu %.4f L0 %.2f dead %.2f%% dense %.2f%%", g,
                         (long long)step, h->loss[i], h->mse[i], h->fvu[i], h->l0[i], 100 * h->dead_fraction[i],
                         100 * h->dense_fraction[i]);
            }
        }
        if (do_resample && step % cfg->resample_every == 0 && step <= resample_until)
            for (int g = 0; g < G; g++)
                ML_CHECK_GOTO(ml_resample(comm, &slots[g], &rs, stream, B, L, (int64_t)cfg->resample_every * B,
                                          ml_slot_seed(cfg, g, 1), step),
                              fail);
        if (ck) {
            rp.step = step;
            const int sig = ml_signal_tally(sigval, P); /* 0, SIGTERM or SIGUSR1 */
            if (sig || (ck->every > 0 && step % ck->every == 0 && step < steps))
                ML_CHECK_GOTO(ml_save_checkpoints(comm, cfg, slots, &rp), fail);
            if (sig) {
                if (!cfg->quiet) ml_progress_end(&pg, NULL);
                char more[64];
                ml_sae_ckpt_more(more, sizeof more, G);
                rc = ml_agree(comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                            "interrupted by %s: checkpoint at step %lld of %lld written to %s%s; rerun "
                                            "the same command to resume",
                                            ml_signal_name(sig), (long long)step,
                                            (long long)steps, ck->paths[0], more));
                goto fail;
            }
        }
    }
    if (!cfg->quiet) ml_progress_end(&pg, NULL);
    /* testing: raise_at = steps + 1 signals during the evaluation (of a run that trained) */
    if (ck && first < steps) ml_signal_raise_at(comm, steps + 1, ck->raise_at);

    for (int g = 0; g < G; g++) {
        ml_sae_trained *t = &run->item[g];
        t->sae = slots[g].sae;
        slots[g].sae = NULL;
        t->hist = slots[g].hist;
        memset(&slots[g].hist, 0, sizeof slots[g].hist);
        t->steps = steps;
        t->tokens_seen = tokens_seen;
        t->tokens_since_fired = slots[g].since;
        slots[g].since = NULL;
        t->resampled_total = slots[g].resampled;
        t->median_iters = median_iters;
        t->mse_norm = slots[g].lc.mse_norm;
        t->norm_sq = slots[g].lc.norm_sq;
        t->mean_sq_norm = mean_sq;
        if (cfg->prov) t->prov = cfg->prov[g];
    }
    *out = run;
    run = NULL;
    rc = ML_OK;
fail:
    if (slots)
        for (int g = 0; g < G; g++) {
            ml_sae_destroy(&slots[g].sae);
            ml_history_free(&slots[g].hist);
            ml_slot_free(&slots[g]);
        }
    ml_free(slots);
    ml_sae_run_destroy(&run);
    ml_resampler_free(&rs);
    ml_sae_work_destroy(&work);
    ml_sae_stream_destroy(&stream);
    ml_free(median);
    ml_free(mu);
    return rc;
}
