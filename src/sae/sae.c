/* The SAE object: allocation, initialisation, and inference (dense, CSR and
 * top-m encodings, decoding, reconstruction for splicing).
 *
 * Dimension letters: N rows, D = d_in, S = d_sae, K = k, M = m.
 */
#include "mergelens/sae.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define ML_SAE_BLOCK 256 /* rows encoded at a time when the caller gives no scratch */

void ml_sae_param_offsets(const ml_sae *sae, size_t *W_enc_t, size_t *b_enc, size_t *W_dec, size_t *b_dec) {
    size_t S = (size_t)sae->d_sae, D = (size_t)sae->d_in;
    *W_enc_t = 0;
    *b_enc = S * D;
    *W_dec = S * D + S;
    *b_dec = 2 * S * D + S;
}

int ml_sae_create(ml_sae_arch arch, int d_in, int d_sae, int k, ml_sae **out) {
    *out = NULL;
    if (d_in <= 0 || d_sae <= 0)
        return ML_FAIL(ML_ERR_ARG, "SAE: d_in and d_sae must be positive (got %d, %d)", d_in, d_sae);
    if (arch == ML_SAE_TOPK && (k <= 0 || k > d_sae))
        return ML_FAIL(ML_ERR_ARG, "SAE: topk needs 1 <= k <= d_sae (got k %d, d_sae %d)", k, d_sae);
    if (arch != ML_SAE_STANDARD && arch != ML_SAE_ANTHROPIC && arch != ML_SAE_TOPK)
        return ML_FAIL(ML_ERR_ARG, "SAE: unknown architecture %d", (int)arch);
    ml_sae *s = ml_calloc(1, sizeof *s);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    s->arch = arch;
    s->d_in = d_in;
    s->d_sae = d_sae;
    s->k = arch == ML_SAE_TOPK ? k : 0;
    s->apply_b_dec_to_input = arch != ML_SAE_ANTHROPIC;
    s->normalize_decoder = arch != ML_SAE_ANTHROPIC;
    s->n_params = 2 * (size_t)d_sae * (size_t)d_in + (size_t)d_sae + (size_t)d_in;
    s->params = ml_calloc(s->n_params, sizeof(float));
    if (!s->params) {
        ml_free(s);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    size_t oe, obe, od, obd;
    ml_sae_param_offsets(s, &oe, &obe, &od, &obd);
    s->W_enc_t = s->params + oe;
    s->b_enc = s->params + obe;
    s->W_dec = s->params + od;
    s->b_dec = s->params + obd;
    *out = s;
    return ML_OK;
}

void ml_sae_destroy(ml_sae **sae) {
    if (!sae || !*sae) return;
    ml_free((*sae)->params);
    ml_free(*sae);
    *sae = NULL;
}

void ml_sae_init(ml_sae *sae, uint64_t seed, float dec_norm) {
    int S = sae->d_sae, D = sae->d_in;
    ml_rng rng;
    ml_rng_seed(&rng, seed, 0x5AE1u);
    float scale = sae->normalize_decoder ? 1.0f : dec_norm;
    for (int j = 0; j < S; j++) {
        float *wj = sae->W_dec + (size_t)j * D;
        double nn = 0;
        for (int i = 0; i < D; i++) {
            wj[i] = ml_rng_normal(&rng);
            nn += (double)wj[i] * wj[i];
        }
        float s = (float)(scale / sqrt(nn > 0 ? nn : 1.0));
        for (int i = 0; i < D; i++) wj[i] *= s;
    }
    memcpy(sae->W_enc_t, sae->W_dec, sizeof(float) * (size_t)S * (size_t)D);
    memset(sae->b_enc, 0, sizeof(float) * (size_t)S);
    memset(sae->b_dec, 0, sizeof(float) * (size_t)D);
}

/* ---- inference ------------------------------------------------------------------------------- */
/* b_eff (S) = b_enc - W_enc_t b_dec when the encoder sees x - b_dec */
static void ml_effective_bias(const ml_sae *sae, float *b_eff) {
    memcpy(b_eff, sae->b_enc, sizeof(float) * (size_t)sae->d_sae);
    if (sae->apply_b_dec_to_input)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, sae->d_sae, sae->d_in, -1.0f, sae->W_enc_t, sae->d_in, sae->b_dec,
                    1, 1.0f, b_eff, 1);
}

/* f (n,S) activations of x (n,D); b_eff (S); sel_idx/sel_val (K) scratch for topk */
static void ml_encode_rows(const ml_sae *sae, const float *b_eff, const float *x, int n, float *f, int32_t *sel_idx,
                           float *sel_val) {
    int S = sae->d_sae, D = sae->d_in;
    for (int b = 0; b < n; b++) memcpy(f + (size_t)b * S, b_eff, sizeof(float) * (size_t)S);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, S, D, 1.0f, x, D, sae->W_enc_t, D, 1.0f, f, S);
    for (int b = 0; b < n; b++) {
        float *fb = f + (size_t)b * S;
        if (sae->arch == ML_SAE_TOPK) {
            int got = ml_topk_select(fb, S, NULL, S, sae->k, sel_idx, sel_val);
            memset(fb, 0, sizeof(float) * (size_t)S);
            for (int t = 0; t < got; t++)
                if (sel_val[t] > 0) fb[sel_idx[t]] = sel_val[t];
        } else {
            for (int j = 0; j < S; j++) fb[j] = fb[j] > 0 ? fb[j] : 0.0f;
        }
    }
}

/* Scratch shared by the blocked entry points. */
typedef struct {
    float *b_eff;
    int32_t *sel_idx;
    float *sel_val;
} ml_enc_scratch;

static int ml_enc_scratch_init(const ml_sae *sae, ml_enc_scratch *sc) {
    int K = sae->k > 0 ? sae->k : 1;
    sc->b_eff = ml_malloc(sizeof(float) * (size_t)sae->d_sae);
    sc->sel_idx = ml_malloc(sizeof(int32_t) * (size_t)K);
    sc->sel_val = ml_malloc(sizeof(float) * (size_t)K);
    if (!sc->b_eff || !sc->sel_idx || !sc->sel_val) {
        ml_free(sc->b_eff);
        ml_free(sc->sel_idx);
        ml_free(sc->sel_val);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ml_effective_bias(sae, sc->b_eff);
    return ML_OK;
}

static void ml_enc_scratch_free(ml_enc_scratch *sc) {
    ml_free(sc->b_eff);
    ml_free(sc->sel_idx);
    ml_free(sc->sel_val);
}

int ml_sae_encode(const ml_sae *sae, const float *x, int n, float *f) {
    if (n <= 0) return ML_OK;
    ml_enc_scratch sc;
    ML_CHECK(ml_enc_scratch_init(sae, &sc));
    ml_encode_rows(sae, sc.b_eff, x, n, f, sc.sel_idx, sc.sel_val);
    ml_enc_scratch_free(&sc);
    return ML_OK;
}

int ml_sae_decode(const ml_sae *sae, const float *f, int n, float *x_hat) {
    if (n <= 0) return ML_OK;
    int S = sae->d_sae, D = sae->d_in;
    for (int b = 0; b < n; b++) memcpy(x_hat + (size_t)b * D, sae->b_dec, sizeof(float) * (size_t)D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, S, 1.0f, f, S, sae->W_dec, D, 1.0f, x_hat, D);
    return ML_OK;
}

/* Encode x (n,D) in blocks of at most ML_SAE_BLOCK rows into f (block,S)
 * (f_scratch or a temporary) and hand each block to fn(ctx, r0, rows, f). */
typedef int (*ml_block_fn)(void *ctx, int r0, int rows, const float *f);
static int ml_encode_blocks(const ml_sae *sae, const float *x, int n, float *f_scratch, ml_block_fn fn, void *ctx) {
    if (n <= 0) return ML_OK;
    int rc = ML_OK, S = sae->d_sae, D = sae->d_in;
    int blk = n < ML_SAE_BLOCK ? n : ML_SAE_BLOCK;
    float *f = f_scratch ? f_scratch : ml_malloc(sizeof(float) * (size_t)blk * (size_t)S);
    if (!f) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ml_enc_scratch sc;
    ML_CHECK_GOTO(ml_enc_scratch_init(sae, &sc), done);
    for (int r0 = 0; r0 < n; r0 += blk) {
        int m = n - r0 < blk ? n - r0 : blk;
        ml_encode_rows(sae, sc.b_eff, x + (size_t)r0 * D, m, f, sc.sel_idx, sc.sel_val);
        ML_CHECK_GOTO(fn(ctx, r0, m, f), out);
    }
out:
    ml_enc_scratch_free(&sc);
done:
    if (!f_scratch) ml_free(f);
    return rc;
}

typedef struct {
    const ml_sae *sae;
    float *x_hat;
} ml_recon_ctx;

static int ml_recon_block(void *ctx, int r0, int rows, const float *f) {
    ml_recon_ctx *c = ctx;
    return ml_sae_decode(c->sae, f, rows, c->x_hat + (size_t)r0 * c->sae->d_in);
}

int ml_sae_reconstruct(const ml_sae *sae, const float *x, int n, float *x_hat, float *f_scratch) {
    ml_recon_ctx c = {sae, x_hat};
    ML_CHECK(ml_encode_blocks(sae, x, n, f_scratch, ml_recon_block, &c));
    return ML_OK;
}

static int ml_csr_reserve(ml_sae_csr *c, int64_t rows, int64_t nnz) {
    if (rows + 1 > c->cap_rows) {
        int64_t cap = c->cap_rows ? c->cap_rows : 256;
        while (cap < rows + 1) cap *= 2;
        int64_t *p = ml_realloc(c->row_ptr, sizeof(int64_t) * (size_t)cap);
        if (!p) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        c->row_ptr = p;
        c->cap_rows = cap;
    }
    if (nnz > c->cap_nnz) {
        int64_t cap = c->cap_nnz ? c->cap_nnz : 4096;
        while (cap < nnz) cap *= 2;
        int32_t *ci = ml_realloc(c->col, sizeof(int32_t) * (size_t)cap);
        if (!ci) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        c->col = ci;
        float *cv = ml_realloc(c->val, sizeof(float) * (size_t)cap);
        if (!cv) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        c->val = cv;
        c->cap_nnz = cap;
    }
    return ML_OK;
}

typedef struct {
    const ml_sae *sae;
    ml_sae_csr *csr;
} ml_csr_ctx;

static int ml_csr_block(void *ctx, int r0, int rows, const float *f) {
    ml_csr_ctx *c = ctx;
    ml_sae_csr *csr = c->csr;
    int S = c->sae->d_sae;
    int64_t add = 0;
    for (size_t i = 0; i < (size_t)rows * (size_t)S; i++) add += f[i] > 0;
    ML_CHECK(ml_csr_reserve(csr, r0 + rows, csr->nnz + add));
    for (int b = 0; b < rows; b++) {
        const float *fb = f + (size_t)b * S;
        for (int j = 0; j < S; j++)
            if (fb[j] > 0) {
                csr->col[csr->nnz] = j;
                csr->val[csr->nnz] = fb[j];
                csr->nnz++;
            }
        csr->row_ptr[r0 + b + 1] = csr->nnz;
    }
    csr->n_rows = r0 + rows;
    return ML_OK;
}

int ml_sae_encode_csr(const ml_sae *sae, const float *x, int n, ml_sae_csr *csr) {
    csr->n_rows = 0;
    csr->nnz = 0;
    ML_CHECK(ml_csr_reserve(csr, n, 0));
    csr->row_ptr[0] = 0;
    if (n <= 0) return ML_OK;
    if (!csr->scratch || csr->scratch_rows < ML_SAE_BLOCK) {
        ml_free(csr->scratch);
        csr->scratch = ml_malloc(sizeof(float) * (size_t)ML_SAE_BLOCK * (size_t)sae->d_sae);
        if (!csr->scratch) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        csr->scratch_rows = ML_SAE_BLOCK;
    }
    ml_csr_ctx c = {sae, csr};
    ML_CHECK(ml_encode_blocks(sae, x, n, csr->scratch, ml_csr_block, &c));
    return ML_OK;
}

void ml_sae_csr_free(ml_sae_csr *csr) {
    if (!csr) return;
    ml_free(csr->row_ptr);
    ml_free(csr->col);
    ml_free(csr->val);
    ml_free(csr->scratch);
    memset(csr, 0, sizeof *csr);
}

typedef struct {
    const ml_sae *sae;
    int m;
    int32_t *idx;
    float *val;
} ml_top_ctx;

static int ml_top_block(void *ctx, int r0, int rows, const float *f) {
    ml_top_ctx *c = ctx;
    int S = c->sae->d_sae, m = c->m;
    for (int b = 0; b < rows; b++) {
        int32_t *ib = c->idx + (size_t)(r0 + b) * m;
        float *vb = c->val + (size_t)(r0 + b) * m;
        int got = ml_topk_select(f + (size_t)b * S, S, NULL, S, m, ib, vb);
        for (int t = 0; t < m; t++)
            if (t >= got || !(vb[t] > 0)) {
                ib[t] = -1;
                vb[t] = 0;
            }
    }
    return ML_OK;
}

int ml_sae_encode_top(const ml_sae *sae, const float *x, int n, int m, int32_t *idx, float *val, float *f_scratch) {
    if (m <= 0) return ML_FAIL(ML_ERR_ARG, "SAE top-m encoding: m must be positive (got %d)", m);
    ml_top_ctx c = {sae, m, idx, val};
    ML_CHECK(ml_encode_blocks(sae, x, n, f_scratch, ml_top_block, &c));
    return ML_OK;
}
