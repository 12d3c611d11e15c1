/* mergelens model: a Mistral-style decoder-only language model in C.
 *
 * Architecture (Hugging Face MistralForCausalLM, no sliding window):
 *   x = embed_tokens[tok]
 *   per layer:  h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm1(x)
 *               x = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                 n2 = rmsnorm2(h)
 *   logits = lm_head(rmsnorm_f(x));  loss = mean cross-entropy over targets != -1
 * RMSNorm without bias, RoPE in the rotate-half convention, grouped-query
 * attention (query head h uses kv head h / (n_heads / n_kv_heads)), causal.
 *
 * Parameters live in ONE contiguous float array described by a table of
 * named tensors whose names, shapes and orientation are exactly those of a
 * Hugging Face state dict ([out, in] for linear layers). Gradients and the
 * AdamW moments are arrays of the same length with the same offsets.
 *
 * Activations live in a workspace allocated once for a maximum (B, T). The
 * forward pass exposes TransformerLens hook points for activation capture and
 * lets the caller replace the MLP hidden activation (SAE splicing).
 */
#ifndef MERGELENS_MODEL_H
#define MERGELENS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/core.h"
#include "mergelens/io.h"

/* ---- configuration ------------------------------------------------------- */
/* The `format` attribute of checkpoint files (models/<name>.h5). */
#define ML_CHECKPOINT_FORMAT "mergelens.checkpoint"

typedef struct {
    int n_layers;      /* num_hidden_layers (default 1) */
    int d_model;       /* hidden_size D */
    int d_mlp;         /* intermediate_size F */
    int n_heads;       /* num_attention_heads H */
    int n_kv_heads;    /* num_key_value_heads KV (divides H) */
    int head_dim;      /* head_dim = D / H */
    int vocab_size;    /* V */
    int max_context;   /* max_position_embeddings: the largest T */
    double rope_theta; /* 10000 */
    double rms_eps;    /* 1e-6 */
    double init_std;   /* initializer_range: std of the normal init (0.02) */
} ml_model_config;

/* The paper's model: 1 layer, D 512, F 1024, 16 heads / 8 kv heads, V 32000, context 256. */
void ml_model_config_default(ml_model_config *c);
/* Check ranges and divisibility; errors name the field and the expected value. */
int ml_model_config_validate(const ml_model_config *c);
/* Hugging Face config.json of a MistralForCausalLM (ml_malloc'd string). */
int ml_model_config_to_json(const ml_model_config *c, char **json);
/* Parse a config.json (mistral or llama model_type); `where` names the source
 * in error messages. Missing optional keys take the defaults above. */
int ml_model_config_from_json(const char *json, const char *where, ml_model_config *c);

/* ---- parameters ------------------------------------------------------------ */
typedef struct {
    char name[80];    /* Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    int ndim;         /* 1 or 2 */
    int64_t shape[2]; /* [out, in] for linear layers, [n] for norms */
    size_t offset;    /* in floats, into params / grads / moments */
    size_t numel;
    int decay;        /* 1: AdamW weight decay applies (all matrices); 0: norm weights */
} ml_tensor;

typedef struct ml_model {
    ml_model_config cfg;
    int n_tensors;
    ml_tensor *tensors; /* table order: embed_tokens; per layer input_layernorm, q, k, v, o,
                           post_attention_layernorm, gate, up, down; norm; lm_head */
    size_t n_params;    /* total floats */
    float *params;      /* (n_params) */
    float *grads;       /* (n_params) once ml_model_enable_grads was called, else NULL */
} ml_model;

/* Allocate the parameter array (zeroed) and the tensor table. */
int ml_model_create(const ml_model_config *cfg, ml_model **out);
void ml_model_destroy(ml_model **m);
/* Hugging Face init: matrices ~ N(0, init_std), norm weights = 1. Each tensor
 * draws from its own ml_rng stream (seed, tensor index). */
int ml_model_init(ml_model *m, uint64_t seed);
/* Allocate (zeroed) gradients. Idempotent. */
int ml_model_enable_grads(ml_model *m);
void ml_model_zero_grad(ml_model *m);
/* Table entry by name; ML_ERR_NOTFOUND naming the tensor if absent. */
int ml_model_lookup(const ml_model *m, const char *name, const ml_tensor **t);
/* Non-embedding parameters (everything except embed_tokens and lm_head). */
size_t ml_model_n_nonembedding(const ml_model_config *c);
size_t ml_model_n_params(const ml_model_config *c);
/* Training FLOPs per token, the usual convention: 6N + 6DV + 12TD with
 * N = non-embedding parameters, T = context. */
double ml_model_train_flops_per_token(const ml_model_config *c, int T);

/* ---- workspace (activations) ------------------------------------------------ */
typedef struct {
    int B_max, T_max; /* largest batch and context of any call */
    int grad;         /* 1: also allocate backward buffers (ml_model_forward_backward) */
    int attn_block;   /* query rows per attention score block (0 = 64) */
    int lm_chunk;     /* rows per lm_head + cross-entropy chunk (0 = about 8M logits, 64..1024 rows) */
} ml_workspace_config;

typedef struct ml_workspace ml_workspace;
int ml_workspace_create(const ml_model_config *mc, const ml_workspace_config *wc, ml_workspace **out);
void ml_workspace_destroy(ml_workspace **ws);
size_t ml_workspace_bytes(const ml_workspace *ws); /* activation + scratch bytes allocated */

/* A 2-D view into a workspace buffer: row r, column c at data[r * ld + c]. */
typedef struct {
    float *data;
    int rows, cols, ld;
} ml_view;
/* Activation of the last forward pass by TransformerLens hook name; rows are
 * b * T + t. Names (i = layer): blocks.i.hook_resid_pre, blocks.i.hook_attn_out,
 * blocks.i.hook_resid_mid, blocks.i.hook_mlp_out, blocks.i.hook_resid_post,
 * blocks.i.mlp.hook_pre (gate_proj x), blocks.i.mlp.hook_pre_linear (up_proj x),
 * blocks.i.mlp.hook_post (silu(gate x) * up x, the SAE input), ln_final.hook_normalized.
 * Valid after ml_model_forward; ml_model_forward_backward reuses the mlp
 * buffers for gradients. ML_ERR_NOTFOUND for other names. */
int ml_workspace_hook(ml_workspace *ws, const char *name, ml_view *out);

/* Called in the forward pass after the MLP hidden activation h (N, F) of
 * `layer` is computed and before down_proj: may read or overwrite h in place.
 * A non-OK return aborts the forward pass with that status. */
typedef int (*ml_mlp_hook_fn)(void *ctx, int layer, float *h, int N, int F);
void ml_workspace_set_mlp_hook(ml_workspace *ws, ml_mlp_hook_fn fn, void *ctx);
/* Replace the MLP hidden activation of `layer` by h (B*T, F) in subsequent
 * forward passes (SAE splicing, zero ablation with a zero array); NULL clears.
 * Applied before the hook function. */
int ml_workspace_set_mlp_replacement(ml_workspace *ws, int layer, const float *h);

/* Per-batch language-modelling statistics (sums, so they add across batches and ranks). */
typedef struct {
    double loss_sum;   /* sum of cross-entropy (nats) over targets != -1 */
    int64_t n_targets; /* number of targets != -1 */
    int64_t n_correct; /* targets where argmax(logits) == target */
} ml_lm_stats;

/* Forward pass over tokens (B, T). targets (B, T) with -1 = ignore, or NULL
 * to stop before lm_head (activation capture). stats may be NULL. */
int ml_model_forward(const ml_model *m, ml_workspace *ws, const int32_t *tokens, const int32_t *targets, int B,
                     int T, ml_lm_stats *stats);
/* Forward and backward: ACCUMULATES d(grad_scale * sum of cross-entropy)/d(params)
 * into m->grads (call ml_model_zero_grad first when not accumulating).
 * grad_scale <= 0 means 1 / (targets != -1 in this batch): the batch mean.
 * The workspace must have been created with grad = 1. */
int ml_model_forward_backward(ml_model *m, ml_workspace *ws, const int32_t *tokens, const int32_t *targets, int B,
                              int T, double grad_scale, ml_lm_stats *stats);
/* Per-position results of the last pass with targets: loss (N) in nats (0
 * where ignored) and correct (N) 0/1. */
void ml_workspace_token_stats(const ml_workspace *ws, const float **loss, const uint8_t **correct);
/* Split windows (B, T+1) into tokens (B, T) and next-token targets (B, T). */
void ml_windows_split(const int32_t *windows, int B, int T, int32_t *tokens, int32_t *targets);

/* ---- RoPE kernel (exposed for tests and tools) ------------------------------- */
/* cos, sin (T, hd/2): angle t * theta^(-2i/hd), computed in double. */
void ml_rope_tables(float *cos_t, float *sin_t, int T, int hd, double theta);
/* Rotate nh heads of x in place, rotate-half convention:
 * x[i] <- x[i] c - x[i+hd/2] s, x[i+hd/2] <- x[i+hd/2] c + x[i] s for i < hd/2.
 * x (B, T, ld) with head j at column j*hd; inverse != 0 rotates by -angle
 * (the backward pass). */
void ml_rope_apply(float *x, int B, int T, int nh, int hd, int ld, const float *cos_t, const float *sin_t,
                   int inverse);

/* ---- optimisation --------------------------------------------------------- */
typedef struct {
    double beta1, beta2, eps; /* 0.9, 0.999, 1e-8 */
    double weight_decay;      /* decoupled, only on tensors with decay = 1 */
} ml_adamw_config;
void ml_adamw_config_default(ml_adamw_config *c);

typedef struct ml_adamw {
    ml_adamw_config cfg;
    int64_t step;  /* optimizer steps taken */
    size_t n;      /* = model n_params */
    float *m, *v;  /* first and second moments, same offsets as the parameters */
} ml_adamw;
int ml_adamw_create(const ml_model *model, const ml_adamw_config *cfg, ml_adamw **out);
void ml_adamw_destroy(ml_adamw **o);
/* One step with learning rate lr (torch.optim.AdamW semantics):
 * p *= 1 - lr wd (decay tensors); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
int ml_adamw_step(ml_adamw *o, ml_model *model, double lr);

typedef enum { ML_LR_CONSTANT = 0, ML_LR_LINEAR, ML_LR_COSINE } ml_lr_kind;
typedef struct {
    ml_lr_kind kind;
    double lr;      /* peak learning rate */
    int64_t warmup; /* linear warmup steps from 0 */
    int64_t total;  /* total optimizer steps (linear / cosine decay to 0 at total) */
} ml_lr_schedule;
/* Learning rate of optimizer step `step` (0-based), Hugging Face semantics
 * (get_{constant,linear,cosine}_schedule_with_warmup): the first step of a
 * warmup uses lr 0. */
double ml_lr_at(const ml_lr_schedule *s, int64_t step);
int ml_lr_kind_parse(const char *text, ml_lr_kind *kind); /* "constant" | "linear" | "cosine" */

/* Global L2 norm of the gradients (double accumulation). */
double ml_model_grad_norm(const ml_model *m);
void ml_model_scale_grads(ml_model *m, float s);
/* torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6));
 * returns the norm before clipping. max_norm <= 0 only computes the norm. */
double ml_model_clip_grads(ml_model *m, double max_norm);

/* ---- checkpoint tensors (docs/FORMAT.md) ----------------------------------- */
/* Root attribute `model_config` (config.json text). */
int ml_model_config_save(ml_h5 *h5, const ml_model_config *c);
int ml_model_config_load(ml_h5 *h5, ml_model_config *c);
/* /params/<HF name> float32. Load checks that the file holds exactly the
 * model's tensors with the same shapes and only finite values; errors name the
 * tensor (and both shapes). */
int ml_model_save_params(ml_h5 *h5, const ml_model *m);
int ml_model_load_params(ml_h5 *h5, ml_model *m);
/* /optimizer/m/<HF name>, /optimizer/v/<HF name>, attribute /optimizer step. */
int ml_adamw_save(ml_h5 *h5, const ml_adamw *o, const ml_model *m);
int ml_adamw_load(ml_h5 *h5, ml_adamw *o, const ml_model *m);

#endif
