/* Layer operations over N = B*T rows, split over threads with ml_par_for.
 * Each range function applies a serial kernel (kernels.c) to its rows; every
 * output element is written by exactly one thread and every reduction is
 * formed per fixed block of rows, so results do not depend on the thread
 * count. Dimension legend in model_internal.h. */
#include "model_internal.h"

#include <string.h>

/* Shared argument block of the row operations below. */
typedef struct {
    float *out, *out2, *out3;
    const float *in, *in2, *w;
    const int32_t *idx;
    int D, F, T, nh, hd, ld, flag;
    float eps;
    ml_workspace *ws;
} ml_rows;

/* ---- embedding ---------------------------------------------------------------- */
/* out (N, D) rows = embed (V, D) rows tokens (N) */
static void ml_embed_range(void *c, int r0, int r1, int tid) {
    const ml_rows *a = c;
    for (int n = r0; n < r1; n++)
        memcpy(a->out + (size_t)n * a->D, a->in + (size_t)a->idx[n] * a->D, sizeof(float) * (size_t)a->D);
}
void ml_l_embed(float *out, const float *embed, const int32_t *tokens, int N, int D) {
    ml_rows a = {.out = out, .in = embed, .idx = tokens, .D = D};
    ml_par_for(N, ml_embed_range, &a, 0);
}

/* dembed (V, D) += dout (N, D) scattered by tokens; threads own column ranges
 * [c0, c1) and add rows in order (repeated tokens need no locks). */
static void ml_embed_backward_range(void *c, int u0, int u1, int tid) {
    const ml_rows *a = c;
    const int nunits = a->D / 16 > 0 ? a->D / 16 : 1;
    const int c0 = u0 * 16, c1 = u1 == nunits ? a->D : u1 * 16;
    for (int n = 0; n < a->T; n++) {
        float *ge = a->out + (size_t)a->idx[n] * a->D;
        const float *d = a->in + (size_t)n * a->D;
        for (int i = c0; i < c1; i++) ge[i] += d[i];
    }
}
void ml_l_embed_backward(float *dembed, const float *dout, const int32_t *tokens, int N, int D) {
    ml_rows a = {.out = dembed, .in = dout, .idx = tokens, .D = D, .T = N};
    ml_par_for(D / 16 > 0 ? D / 16 : 1, ml_embed_backward_range, &a, 0); /* 16-column units */
}

/* ---- RMSNorm ------------------------------------------------------------------- */
static void ml_rmsnorm_range(void *c, int r0, int r1, int tid) {
    const ml_rows *a = c;
    const size_t o = (size_t)r0 * a->D;
    if (a->in2) /* residual: out = in + in2, out2 = rmsnorm(out) */
        ml_k_residual_rmsnorm(a->out + o, a->out2 + o, a->out3 + r0, a->in + o, a->in2 + o, a->w, r1 - r0, a->D,
                              a->eps);
    else
        ml_k_rmsnorm_forward(a->out + o, a->out3 + r0, a->in + o, a->w, r1 - r0, a->D, a->eps);
}
void ml_l_rmsnorm(float *out, float *rstd, const float *inp, const float *w, int N, int D, float eps) {
    ml_rows a = {.out = out, .out3 = rstd, .in = inp, .w = w, .D = D, .eps = eps};
    ml_par_for(N, ml_rmsnorm_range, &a, 0);
}
void ml_l_residual_rmsnorm(float *out, float *norm, float *rstd, const float *x, const float *y, const float *w,
                           int N, int D, float eps) {
    ml_rows a = {.out = out, .out2 = norm, .out3 = rstd, .in = x, .in2 = y, .w = w, .D = D, .eps = eps};
    ml_par_for(N, ml_rmsnorm_range, &a, 0);
}

/* Block k covers rows [k*ML_ROW_BLOCK, ...); its weight-gradient partial goes to dwpart[k]. */
typedef struct {
    float *dinp, *dwpart;
    const float *dout, *inp, *w, *rstd;
    int N, D, accumulate;
} ml_rms_bwd;
static void ml_rmsnorm_backward_range(void *c, int k0, int k1, int tid) {
    const ml_rms_bwd *a = c;
    for (int k = k0; k < k1; k++) {
        const int r0 = k * ML_ROW_BLOCK, r1 = r0 + ML_ROW_BLOCK < a->N ? r0 + ML_ROW_BLOCK : a->N;
        const size_t o = (size_t)r0 * a->D;
        float *dw = a->dwpart + (size_t)k * a->D;
        memset(dw, 0, sizeof(float) * (size_t)a->D);
        ml_k_rmsnorm_backward(a->dinp + o, dw, a->dout + o, a->inp + o, a->w, a->rstd + r0, r1 - r0, a->D,
                              a->accumulate);
    }
}
void ml_l_rmsnorm_backward(float *dinp, float *dw, float *dwpart, const float *dout, const float *inp,
                           const float *w, const float *rstd, int N, int D, int accumulate) {
    ml_rms_bwd a = {dinp, dwpart, dout, inp, w, rstd, N, D, accumulate};
    const int nblk = (N + ML_ROW_BLOCK - 1) / ML_ROW_BLOCK;
    ml_par_for(nblk, ml_rmsnorm_backward_range, &a, 0);
    for (int k = 0; k < nblk; k++)
        for (int i = 0; i < D; i++) dw[i] += dwpart[(size_t)k * D + i];
}

/* ---- RoPE ------------------------------------------------------------------------ */
static void ml_rope_range(void *c, int r0, int r1, int tid) {
    const ml_rows *a = c;
    const int h2 = a->hd / 2;
    for (int r = r0; r < r1; r++) {
        const int t = r % a->T;
        ml_rope_apply(a->out + (size_t)r * a->ld, 1, 1, a->nh, a->hd, a->ld, a->in + (size_t)t * h2,
                      a->in2 + (size_t)t * h2, a->flag);
    }
}
void ml_l_rope(float *x, int B, int T, int nh, int hd, int ld, const float *cos_t, const float *sin_t, int inverse) {
    ml_rows a = {.out = x, .in = cos_t, .in2 = sin_t, .T = T, .nh = nh, .hd = hd, .ld = ld, .flag = inverse};
    ml_par_for(B * T, ml_rope_range, &a, 0);
}

/* ---- SwiGLU ------------------------------------------------------------------------ */
static void ml_swiglu_range(void *c, int r0, int r1, int tid) {
    const ml_rows *a = c;
    if (a->flag)
        ml_k_swiglu_backward(a->out + (size_t)r0 * 2 * a->F, a->in + (size_t)r0 * a->F, r1 - r0, a->F);
    else
        ml_k_swiglu_forward(a->out + (size_t)r0 * a->F, a->in + (size_t)r0 * 2 * a->F, r1 - r0, a->F);
}
void ml_l_swiglu(float *h, const float *gu, int N, int F) {
    ml_rows a = {.out = h, .in = gu, .F = F, .flag = 0};
    ml_par_for(N, ml_swiglu_range, &a, 0);
}
void ml_l_swiglu_backward(float *gu, const float *dh, int N, int F) {
    ml_rows a = {.out = gu, .in = dh, .F = F, .flag = 1};
    ml_par_for(N, ml_swiglu_range, &a, 0);
}

/* ---- attention ------------------------------------------------------------------------ */
/* OpenBLAS runs a product on one thread when M*N*K <= 4 * 65536 (its default
 * GEMM_MULTITHREAD_THRESHOLD); with several threads the query block is sized
 * so every attention product stays below that and the (b, h) items are split
 * over our threads instead of threading each tiny product. */
static int ml_attn_block(const ml_workspace *ws, int T, int nthr) {
    int Br = ws->wc.attn_block;
    if (nthr > 1) {
        int lim = (int)(262144 / ((int64_t)T * ws->mc.head_dim));
        lim = lim / 8 * 8;
        if (lim >= 8 && lim < Br) Br = lim;
    }
    return Br;
}

typedef struct {
    ml_workspace *ws;
    float *out, *lse, *dqkv;
    const float *qkv, *dout, *o, *l;
    int B, T, Br;
} ml_attn_args;

static void ml_attention_range(void *c, int i0, int i1, int tid) {
    const ml_attn_args *a = c;
    const ml_model_config *m = &a->ws->mc;
    float *scores = a->ws->scores + (size_t)tid * a->ws->wc.attn_block * a->ws->wc.T_max;
    ml_k_attention_forward(a->out, a->lse, a->qkv, scores, a->B, a->T, m->n_heads, m->n_kv_heads, m->head_dim, a->Br,
                           i0, i1);
}
void ml_l_attention(ml_workspace *ws, float *out, float *lse, const float *qkv, int B, int T) {
    const int nthr = ml_par_threads() < ws->nthr ? ml_par_threads() : ws->nthr;
    ml_attn_args a = {.ws = ws, .out = out, .lse = lse, .qkv = qkv, .B = B, .T = T, .Br = ml_attn_block(ws, T, nthr)};
    ml_par_for(B * ws->mc.n_heads, ml_attention_range, &a, ws->nthr);
}

static void ml_attention_backward_range(void *c, int i0, int i1, int tid) {
    const ml_attn_args *a = c;
    const ml_model_config *m = &a->ws->mc;
    const size_t blk = (size_t)a->ws->wc.attn_block * a->ws->wc.T_max;
    ml_k_attention_backward(a->dqkv, a->dout, a->o, a->l, a->qkv, a->ws->scores + tid * blk,
                            a->ws->dscores + tid * blk, a->ws->rowtmp + (size_t)tid * a->ws->wc.attn_block, a->B, a->T,
                            m->n_heads, m->n_kv_heads, m->head_dim, a->Br, i0, i1);
}
void ml_l_attention_backward(ml_workspace *ws, float *dqkv, const float *dout, const float *out, const float *lse,
                             const float *qkv, int B, int T) {
    const int nthr = ml_par_threads() < ws->nthr ? ml_par_threads() : ws->nthr;
    ml_attn_args a = {.ws = ws, .dqkv = dqkv, .dout = dout, .o = out, .l = lse, .qkv = qkv, .B = B, .T = T,
                      .Br = ml_attn_block(ws, T, nthr)};
    ml_par_for(B * ws->mc.n_kv_heads, ml_attention_backward_range, &a, ws->nthr);
}

/* ---- cross-entropy --------------------------------------------------------------------- */
typedef struct {
    float *logits, *loss;
    const int32_t *targets;
    uint8_t *correct;
    int V;
    float scale;
} ml_ce_args;
static void ml_ce_range(void *c, int r0, int r1, int tid) {
    const ml_ce_args *a = c;
    ml_k_cross_entropy(a->logits + (size_t)r0 * a->V, a->targets + r0, a->loss + r0, a->correct + r0, r1 - r0, a->V,
                       a->scale);
}
void ml_l_cross_entropy(float *logits, const int32_t *targets, float *loss, uint8_t *correct, int C, int V,
                        float scale) {
    ml_ce_args a = {logits, loss, targets, correct, V, scale};
    ml_par_for(C, ml_ce_range, &a, 0);
}
