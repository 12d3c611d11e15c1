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
    float *scores;    /* (Br, T_max) attention probabilities block */
    float *dscores;   /* (Br, T_max) (grad only) */
    float *rowtmp;    /* (Br) */
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

/* ---- kernels (kernels.c) ---- */
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
/* causal GQA attention; out (B,T,QD), lse (B,H,T), qkv (B,T,QKV); scores (Br, T) scratch */
void ml_k_attention_forward(float *out, float *lse, const float *qkv, float *scores, int B, int T, int H, int KV,
                            int hd, int Br);
/* dqkv (B,T,QKV) = gradient (overwritten); dout (B,T,QD); out, lse, qkv as in forward */
void ml_k_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                             float *p, float *dp, float *rowtmp, int B, int T, int H, int KV, int hd, int Br);
/* Cross-entropy over a chunk: logits (C, V) -> per-row loss/correct; when
 * scale != 0 the rows become scale * (softmax - onehot) (0 for ignored rows).
 * Returns the sum of losses; *ncorrect, *ntargets incremented. */
double ml_k_cross_entropy(float *logits, const int32_t *targets, float *loss, uint8_t *correct, int C, int V,
                          float scale, int64_t *ncorrect, int64_t *ntargets);

#endif
