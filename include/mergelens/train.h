/* mergelens train: data-parallel training, fine-tuning and evaluation of the
 * Mistral-style language model (include/mergelens/model.h) on token stores
 * (include/mergelens/data.h).
 *
 *  - `mergelens train`: every rank processes its rows of each global batch in
 *    micro-batches (gradient accumulation); the gradients of the per-token
 *    cross-entropy SUM are divided by the global target count and summed over
 *    ranks with one MPI_Allreduce over the flat gradient buffer per optimizer
 *    step, so the update does not depend on the rank count beyond float
 *    summation order. Then global-norm clipping, the learning-rate schedule
 *    (warmup, then cosine / linear / constant) and AdamW.
 *  - Checkpoints `models/<name>.h5` (format mergelens.checkpoint v1, layout in
 *    docs/modules/train.md): written every `checkpoint_every` steps to the
 *    final path with root attribute `complete` = 0, and at the end with
 *    `complete` = 1. A rerun of the same command continues an incomplete
 *    checkpoint; with the same rank and thread counts the final parameters are
 *    bitwise identical to an uninterrupted run's.
 *  - SIGTERM / SIGUSR1 (Slurm preemption, time limit): the ranks agree at the
 *    next step boundary, write a checkpoint and return ML_ERR_INTERRUPTED.
 *  - Evaluation: per-domain loss and next-token accuracy over windows of each
 *    domain's validation split: all of them, or a seeded uniform sample
 *    without replacement (the same windows for every model evaluated with one
 *    seed), or the first ones in order (docs/modules/train.md, "Evaluation
 *    windows").
 */
#ifndef MERGELENS_TRAIN_H
#define MERGELENS_TRAIN_H

#include <stdint.h>

#include "mergelens/config.h"
#include "mergelens/core.h"
#include "mergelens/model.h"

/* ---- evaluation ------------------------------------------------------------- */
typedef struct {
    int n_domains;
    const char *const *paths; /* token stores data/<domain>.h5 */
    const char *split;        /* "val" (NULL) or "train" */
    int T;                    /* context: windows of T+1 tokens; <= the model's max_context */
    int batch;                /* windows per evaluation step summed over ranks (multiple of nranks; 0 = 8 x nranks) */
    int micro_batch;          /* rows per forward pass on a rank (0 = batch / nranks) */
    int64_t max_batches;      /* per domain: at most this many steps (0 = the whole split) */
    int sequential;           /* 1: the first max_batches x batch windows in order; 0: a seeded random sample */
    uint64_t seed;            /* random sample: the seed (the stream is a hash of the domain name) */
} ml_eval_config;

typedef struct {
    char domain[64];   /* the store's `domain` attribute (or the file stem) */
    double loss;       /* mean cross-entropy in nats over the targets (NaN when there are none) */
    double accuracy;   /* fraction of targets equal to argmax of the logits */
    int64_t n_targets; /* targets evaluated (windows x T) */
    int64_t n_windows;
    int64_t n_available; /* windows of the split (n_windows of them were evaluated) */
} ml_eval_result;

/* The n of a split's W windows that an evaluation reads (ascending indices into out (n)):
 * 0 .. n-1 when sequential or n == W, else the first n of a Fisher-Yates permutation of
 * [0, W) seeded by (seed, a hash of the domain name), sorted. Local; deterministic. */
int ml_eval_windows_choose(int64_t W, int64_t n, int sequential, uint64_t seed, const char *domain, int64_t *out);

typedef struct ml_evaluator ml_evaluator;
/* Collective over comm. Opens a sequential loader per domain and checks that
 * every store's vocab_size equals the model's. ws: a workspace for the same
 * model config to share (its B_max bounds micro_batch), or NULL to allocate
 * one. Everything is allocated here, once. */
int ml_evaluator_create(MPI_Comm comm, const ml_model_config *mc, const ml_eval_config *cfg, ml_workspace *ws,
                        ml_evaluator **out);
/* Collective: evaluate the model (same config as at create) on every domain;
 * results has room for n_domains entries. Sums are reduced across ranks. */
int ml_evaluator_run(ml_evaluator *ev, const ml_model *m, ml_eval_result *results);
int ml_evaluator_n_domains(const ml_evaluator *ev);
void ml_evaluator_destroy(ml_evaluator **ev);
/* One-shot: create, run, destroy (collective). */
int ml_eval_model(MPI_Comm comm, const ml_model *m, const ml_eval_config *cfg, ml_eval_result *results);

/* ---- checkpoints --------------------------------------------------------------- */
/* Collective: read the model of any mergelens.checkpoint v1 file (written by
 * train, import or merge): root `model_config` and /params. */
int ml_checkpoint_load_model(MPI_Comm comm, const char *path, ml_model **out);
/* Option specs of commands that evaluate many merged points per domain, each point on one rank
 * (sweep, region): split, context, batch, micro_batch, eval_windows, eval_order, eval_seed. */
#define ML_EVAL_POINT_OPTIONS                                                                                \
    {"split", ML_OPT_CHOICE, "val", 0, -1, "val|train", "split of each store to evaluate on"},              \
        {"context", ML_OPT_INT, "0", 0, 1 << 20, NULL,                                                      \
         "window length T (0 = the first model's training context, else min(max_position_embeddings, 256))"}, \
        {"batch", ML_OPT_INT, "8", 1, 1 << 20, NULL, "windows per evaluation step (one rank)"},             \
        {"micro_batch", ML_OPT_INT, "0", 0, 1 << 20, NULL, "rows per forward pass (0 = batch)"},            \
        {"eval_windows", ML_OPT_INT, "0", 0, 1e15, NULL,                                                    \
         "at most this many windows per domain, rounded up to a multiple of batch (0 = the whole split)"},     \
        ML_EVAL_WINDOW_OPTIONS
/* eval_order, eval_seed: which windows a capped evaluation reads (every evaluating command). */
#define ML_EVAL_WINDOW_OPTIONS                                                                               \
    {"eval_order", ML_OPT_CHOICE, "random", 0, -1, "random|sequential",                                      \
     "capped evaluations: a seeded uniform sample of each split's windows, or its first windows in order"},  \
        {"eval_seed", ML_OPT_INT, "0", 0, 1e15, NULL,                                                        \
         "seed of the random windows (the same seed gives every model the same windows of a domain)"}
/* The `context` an open checkpoint was trained with (its `config` attribute), or 0 (no error). */
int ml_checkpoint_train_context(ml_h5 *h);
/* The window length to evaluate with: `requested` (option `context`) if > 0, else the context the
 * model was trained with (`trained`, 0 when unknown), else min(max_position_embeddings, 256). */
int ml_eval_context(int requested, int trained, const ml_model_config *mc);
/* The evaluation of one merged point per rank from the values of ML_EVAL_POINT_OPTIONS:
 * at most eval_windows windows per domain (rounded up to whole batches; 0 = the whole split),
 * chosen as eval_order ("random" or "sequential") and eval_seed say. */
ml_eval_config ml_eval_point_config(int n_domains, const char *const *paths, const char *split, int T, int batch,
                                    int micro_batch, int64_t eval_windows, const char *eval_order,
                                    int64_t eval_seed);

/* ---- commands (registered in the CLI table by the lead) ------------------------- */
/* `mergelens train --domains a.h5,b.h5 --out models/x.h5 [options]` */
/* AdamW settings from a command's options `betas` ("b1,b2"), `eps`, `weight_decay`. */
int ml_adamw_config_from_options(const ml_options *o, ml_adamw_config *c);
int ml_cmd_train(MPI_Comm comm, int argc, char **argv);
/* `mergelens eval MODEL.h5 --domains a.h5,b.h5 [--out results.h5]` */
int ml_cmd_eval(MPI_Comm comm, int argc, char **argv);

#endif
