/* mergelens peft: parameter-efficient fine-tuning (LoRA, IA3) on a frozen
 * host model and the portability study of Sabry & Belz (arXiv 2401.14228):
 * an adapter trained on host A is applied to host B of identical shapes,
 * evaluated zero-shot, then trained further next to two controls (from
 * scratch, and sampled from the ported module's per-tensor distribution).
 *
 * Methods (W [out, in] is a host linear weight, frozen):
 *   LoRA  W_eff = W + s B A,  s = alpha / r,  A [r, in], B [out, r]
 *         init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform, a = sqrt(5)),
 *         B = 0, so a fresh adapter leaves the host unchanged.
 *   IA3   W_eff = diag(l) W  (output scaling, l [out]) for attention modules,
 *         W_eff = W diag(l)  (input scaling, l [in]) for MLP modules
 *         (PEFT's feedforward_modules); init l = 1.
 * The adapter is evaluated exactly through the merged weight: W_eff is
 * written into a working copy of the host, the model's forward/backward gives
 * dL/dW_eff, and the adapter gradients follow by the chain rule
 *   LoRA: dB = s dW A^T, dA = s B^T dW;  IA3: dl_i = sum_j dW_ij W_ij (rows),
 *   dl_j = sum_i dW_ij W_ij (columns).
 *
 * Adapter tensors carry Hugging Face PEFT names:
 *   base_model.model.<module>.lora_A.weight [r, in], ...lora_B.weight [out, r]
 *   base_model.model.<module>.ia3_l [out, 1] (output scaling) or [1, in] (input)
 * with <module> e.g. model.layers.0.self_attn.q_proj. File layouts:
 * docs/modules/peft.md.
 */
#ifndef MERGELENS_PEFT_H
#define MERGELENS_PEFT_H

#include <stdint.h>

#include "mergelens/io.h"
#include "mergelens/model.h"
#include "mergelens/train.h"

#define ML_ADAPTER_FORMAT "mergelens.adapter"
#define ML_PEFT_FORMAT "mergelens.peft"

typedef enum { ML_PEFT_LORA = 0, ML_PEFT_IA3 = 1 } ml_peft_method;
const char *ml_peft_method_name(ml_peft_method m); /* "lora" | "ia3" */
int ml_peft_method_parse(const char *text, ml_peft_method *m);

/* One adapted host linear layer. */
typedef struct {
    char module[80];  /* "model.layers.0.self_attn.q_proj" */
    int host_tensor;  /* index into the host's tensor table (its .weight) */
    int64_t out, in;  /* host weight shape */
    int scale_input;  /* IA3: 1 = columns (W diag(l)), 0 = rows (diag(l) W) */
    int first;        /* first adapter tensor: LoRA A (then B at first + 1), IA3 l */
} ml_peft_target;

typedef struct ml_adapter {
    ml_peft_method method;
    int r;             /* LoRA rank (0 for IA3) */
    double alpha;      /* LoRA alpha (scale s = alpha / r) */
    char targets[256]; /* the comma-separated module filters it was built from */
    ml_model_config host; /* shape of the host it fits */
    int n_targets;
    ml_peft_target *tg; /* (n_targets) */
    /* The adapter parameters as a model-like table (PEFT names, [rows, cols]),
     * so AdamW, clipping and norms of model.h apply unchanged: view.params,
     * view.grads (n_params floats each), view.tensors (n_tensors). */
    ml_model view;
} ml_adapter;

/* Build an adapter for a host shape. targets: comma-separated filters; a
 * host linear weight "model.layers.<i>.<group>.<name>.weight" is adapted when
 * <name> equals a filter (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
 * down_proj). A filter matching nothing is an error naming it. IA3 ignores r
 * and alpha. Parameters start zeroed; call ml_adapter_init. */
int ml_adapter_create(const ml_model_config *host, ml_peft_method method, int r, double alpha, const char *targets,
                      ml_adapter **out);
void ml_adapter_destroy(ml_adapter **a);
/* Standard init from ml_rng streams (seed, tensor index). */
void ml_adapter_init(ml_adapter *a, uint64_t seed);
/* The "sampled" control: every adapter tensor is replaced by draws from
 * N(mean, std) of its own current values (population std). */
void ml_adapter_sample_like(ml_adapter *a, uint64_t seed);
double ml_adapter_scale(const ml_adapter *a); /* alpha / r (1 for IA3) */
/* Collective-free checks: the host's config must equal the adapter's host
 * shape (layers, d_model, d_mlp, heads, kv heads, head_dim, vocab_size).
 * Error (ML_ERR_SHAPE), one line, naming both files and the first
 * difference, and the policy. */
int ml_adapter_check_host(const ml_adapter *a, const ml_model_config *host, const char *adapter_name,
                          const char *host_name);

/* work := host with every adapted weight replaced by W_eff. The whole
 * parameter array is copied when copy_all != 0 (else only the adapted
 * tensors are written: work's other tensors must already equal host's). */
void ml_adapter_apply(const ml_adapter *a, const ml_model *host, ml_model *work, int copy_all);
/* a->view.grads := dL/d(adapter) from work->grads = dL/dW_eff (not accumulated). */
void ml_adapter_backward(ml_adapter *a, const ml_model *host, const ml_model *work);

/* Adapter file (format mergelens.adapter v1, docs/modules/peft.md). save
 * writes the adapter's attributes and /params/<PEFT name>; the caller adds
 * what else it wants (logs, config) and closes. */
int ml_adapter_save(ml_h5 *h, const ml_adapter *a);
/* Collective: read an adapter file. Missing or misshapen tensors are errors
 * naming the file and the tensor. */
int ml_adapter_load(MPI_Comm comm, const char *path, ml_adapter **out);
/* Serial: DIR/adapter_model.safetensors + DIR/adapter_config.json (HF PEFT). */
int ml_adapter_export_peft(const char *adapter_path, const char *dir);

/* ---- data-parallel adapter training ------------------------------------------ */
typedef struct {
    int n_domains;
    const char *const *paths; /* training token stores */
    const double *weights;    /* normalised mixture, or NULL */
    int T, G, M;              /* context, global batch (multiple of ranks), micro-batch rows (0 = G / P) */
    int64_t steps;
    ml_lr_schedule sched;     /* total is set to steps */
    ml_adamw_config adamw;
    double clip;              /* global norm of the adapter gradients (0 = off) */
} ml_peft_train_config;

typedef struct ml_peft_trainer ml_peft_trainer;
/* Collective. Allocates, once: a working model of the host's shape with
 * gradients, one workspace, batch buffers, the AdamW state for adapters of
 * a's layout and, when ec != NULL, an evaluator (ec->micro_batch is forced
 * to the training micro-batch to share the workspace). */
int ml_peft_trainer_create(MPI_Comm comm, const ml_model_config *host, const ml_adapter *a,
                           const ml_peft_train_config *cfg, const ml_eval_config *ec, ml_peft_trainer **out);
void ml_peft_trainer_destroy(ml_peft_trainer **t);
/* Collective: cfg->steps AdamW steps on a's parameters (fresh optimizer
 * state, data order from seed), host frozen. Every rank computes the
 * gradient of its rows; ONE MPI_Allreduce sums the adapter gradients.
 * loss (steps) receives the mean training loss of each step (may be NULL). */
int ml_peft_trainer_run(ml_peft_trainer *t, const ml_model *host, ml_adapter *a, uint64_t seed, double *loss);
/* Collective: per-domain evaluation of host + a (a may be NULL: the host). */
int ml_peft_trainer_eval(ml_peft_trainer *t, const ml_model *host, const ml_adapter *a, ml_eval_result *res);

/* ---- commands ------------------------------------------------------------------ */
/* `mergelens lora train|port|merge|export ...` (see docs/modules/peft.md) */
int ml_cmd_lora(MPI_Comm comm, int argc, char **argv);

#endif
