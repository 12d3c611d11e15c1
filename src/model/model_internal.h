/* Internal to src/model: parameter layout pointers, the workspace, kernels.
 *
 * Dimension legend used in every shape comment of src/model:
 *   B batch rows, T context (time), N = B*T token rows, D d_model, F d_mlp,
 *   H query heads, KV key/value heads, hd head_dim, QD = H*hd, QKV = (H+2KV)*hd,
 *   V vocabulary, L layers, Br attention query rows per block, C lm_head chunk rows.
 */
#ifndef ML_MODEL_INTERNAL_H
#define ML_MODEL_INTERNAL_H

#include "mergelens/model.h"

#define ML_MODEL_MAX_LAYERS 64

/* Pointers into a params/grads array (same offsets for both). */
typedef struct {
    float *ln1;   /* (D) input_layernorm */
    float *wqkv;  /* (QKV, D): q_proj (QD, D), k_proj (KV*hd, D), v_proj (KV*hd, D) adjacent */
    float *wo;    /* (D, QD) */
    float *ln2;   /* (D) post_attention_layernorm */
    float *wgu;   /* (2F, D): gate_proj (F, D), up_proj (F, D) adjacent */
    float *wdown; /* (D, F) */
} ml_layer_ptrs;

typedef struct {
    float *embed;   /* (V, D) */
    ml_layer_ptrs layer[ML_MODEL_MAX_LAYERS];
    float *lnf;     /* (D) */
    float *lm_head; /* (V, D) */
} ml_layout;

void ml_model_layout(const ml_model *m, float *base, ml_layout *lo);

struct ml_workspace {
    ml_model_config mc;
    ml_workspace_config wc;
    int B, T; /* shape of the last pass */
    int has_targets;
    size_t bytes;
    float *block; /* the one allocation */
    /* forward activations (per layer l: offset l * N_max * width) */
    float *resid;     /* (L+1, N, D): resid[l] = resid_pre of layer l, resid[L] = final resid_post */
    float *resid_mid; /* (L, N, D) */
    float *attn_out;  /* (L, N, D) */
    float *mlp_out;   /* (L, N, D) */
    float *ln1, *ln2; /* (L, N, D) normalised inputs of attention / MLP */
    float *rstd1, *rstd2; /* (L, N) */
    float *qkv;       /* (L, N, QKV) q and k after RoPE */
    float *atty;      /* (L, N, QD) attention output before o_proj */
    float *lse;       /* (L, B, H, T) log-sum-exp of each attention row */
    float *gu;        /* (L, N, 2F) gate x | up x */
    float *hpost;     /* (L, N, F) silu(gate x) * up x */
    float *lnf;       /* (N, D) */
    float *rstdf;     /* (N) */
    float *tok_loss;  /* (N) */
    uint8_t *tok_correct; /* (N) */
    float *cos_t, *sin_t; /* (T_max, hd/2) */
    float *logits;    /* (C, V) chunk; becomes dlogits in training */
    int nthr;         /* threads with attention scratch (ml_par_threads() at creation) */
    float *scores;    /* (nthr, Br, T_max) attention probabilities block per thread */
    float *dscores;   /* (nthr, Br, T_max) (grad only) */
    float *rowtmp;    /* (nthr, Br) */
    float *dwpart;    /* (ceil(N / ML_ROW_BLOCK), D) RMSNorm weight-gradient partials (grad only) */
    /* backward (grad only) */
    float *dres;  /* (N, D) running residual gradient */
    float *dtmp;  /* (N, D) */
    float *datty; /* (N, QD) */
    float *dqkv;  /* (N, QKV) */
    /* hooks */
    ml_mlp_hook_fn hook_fn;
    void *hook_ctx;
    const float *replace[ML_MODEL_MAX_LAYERS];
};

/* ---- fork-join over index ranges (parallel.c) ---- */
typedef void (*ml_range_fn)(void *ctx, int begin, int end, int tid);
int ml_par_threads(void); /* = OpenBLAS's thread count */
/* fn(ctx, begin, end, tid) on static contiguous ranges of [0, n), tid 0 on the
 * caller; at most max_threads threads (0 = no cap). */
void ml_par_for(int n, ml_range_fn fn, void *ctx, int max_threads);

/* Rows per block of a reduction over rows: sums are formed per block and the
 * blocks added in order, so results do not depend on the thread count. */
#define ML_ROW_BLOCK 64

/* ---- parallel layer operations (layers.c) over N = B*T rows ---- */
void ml_l_embed(float *out, const float *embed, const int32_t *tokens, int N, int D);
void ml_l_embed_backward(float *dembed, const float *dout, const int32_t *tokens, int N, int D);
void ml_l_rmsnorm(float *out, float *rstd, const float *inp, const float *w, int N, int D, float eps);
void ml_l_residual_rmsnorm(float *out, float *norm, float *rstd, const float *a, const float *b, const float *w,
                           int N, int D, float eps);
void ml_l_rmsnorm_backward(float *dinp, float *dw, float *dwpart, const float *dout, const float *inp,
                           const float *w, const float *rstd, int N, int D, int accumulate);
void ml_l_rope(float *x, int B, int T, int nh, int hd, int ld, const float *cos_t, const float *sin_t, int inverse);
void ml_l_swiglu(float *h, const float *gu, int N, int F);
void ml_l_swiglu_backward(float *gu, const float *dh, int N, int F);
void ml_l_attention(ml_workspace *ws, float *out, float *lse, const float *qkv, int B, int T);
void ml_l_attention_backward(ml_workspace *ws, float *dqkv, const float *dout, const float *out, const float *lse,
                             const float *qkv, int B, int T);
void ml_l_cross_entropy(float *logits, const int32_t *targets, float *loss, uint8_t *correct, int C, int V,
                        float scale);

/* ---- serial kernels (kernels.c) ---- */
/* out (N, D), rstd (N), inp (N, D), w (D) */
void ml_k_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int D, float eps);
/* dinp (N, D) += (accumulate) or = d rmsnorm; dw (D) +=; dout, inp (N, D); rstd (N) */
void ml_k_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int D, int accumulate);
/* out (N, D) = a + b, then norm (N, D), rstd (N) = rmsnorm(out) */
void ml_k_residual_rmsnorm(float *out, float *norm, float *rstd, const float *a, const float *b, const float *w,
                           int N, int D, float eps);
/* h (N, F) = silu(gu[:, :F]) * gu[:, F:], gu (N, 2F) */
void ml_k_swiglu_forward(float *h, const float *gu, int N, int F);
/* gu (N, 2F) overwritten by its gradient given dh (N, F) */
void ml_k_swiglu_backward(float *gu, const float *dh, int N, int F);
/* causal GQA attention for items [i0, i1) of (b, h) = item / H, item % H;
 * out (B,T,QD), lse (B,H,T), qkv (B,T,QKV); scores (Br, T) scratch */
void ml_k_attention_forward(float *out, float *lse, const float *qkv, float *scores, int B, int T, int H, int KV,
                            int hd, int Br, int i0, int i1);
/* backward for items [i0, i1) of (b, g) = item / KV, item % KV (all heads of kv group g):
 * writes d/dq of those heads and d/dk, d/dv of group g into dqkv (B,T,QKV);
 * dout (B,T,QD); out, lse, qkv as in forward; p, dp (Br, T), rowtmp (Br) scratch */
void ml_k_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                             float *p, float *dp, float *rowtmp, int B, int T, int H, int KV, int hd, int Br, int i0,
                             int i1);
/* Cross-entropy over C rows: logits (C, V) -> loss, correct (C); when
 * scale != 0 the rows become scale * (softmax - onehot) (0 for ignored rows). */
void ml_k_cross_entropy(float *logits, const int32_t *targets, float *loss, uint8_t *correct, int C, int V,
                        float scale);

#endif
