/* mergelens sae: sparse autoencoders on captured activations.
 *
 * Architectures (see docs/modules/sae.md for the exact losses):
 *  - "standard": f = relu((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec,
 *    loss = nMSE + l1 * mean_b ||f_b||_1, decoder rows kept at unit norm with
 *    the parallel gradient component removed (the paper's recipe);
 *  - "anthropic": f = relu(x W_enc + b_enc) (no b_dec subtraction), L1 term
 *    weighted by decoder-row norms, no norm constraint (Anthropic, April 2024);
 *  - "topk": f = relu(TopK_k((x - b_dec) W_enc + b_enc)), unit-norm decoder
 *    rows, AuxK loss on dead latents (Gao et al. 2024).
 * nMSE (the authors' normalised MSE) = mean_b ||x_hat_b - x_b||^2 / ||x_b||^2,
 * with ||x_b||^2 floored (rows of zeros would otherwise dominate); or, as an
 * option, normalised by the constant E||x||^2 of a sample.
 *
 * Tensors follow SAELens names and orientation in files: W_enc (D,S),
 * b_enc (S), W_dec (S,D), b_dec (D). In memory the encoder is kept
 * transposed (W_enc_t (S,D): one contiguous row per latent), which makes
 * the sparse TopK gradients and single-feature reads contiguous.
 *
 * Dimension letters: N rows (tokens), D = d_in, S = d_sae (latents),
 * K = k (TopK active latents per row), A = k_aux.
 */
#ifndef MERGELENS_SAE_H
#define MERGELENS_SAE_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/core.h"

/* ---- the SAE ---------------------------------------------------------------- */
typedef enum { ML_SAE_STANDARD = 0, ML_SAE_ANTHROPIC = 1, ML_SAE_TOPK = 2 } ml_sae_arch;
const char *ml_sae_arch_name(ml_sae_arch arch); /* "standard" | "anthropic" | "topk" */
int ml_sae_arch_parse(const char *name, ml_sae_arch *arch);

typedef struct {
    ml_sae_arch arch;
    int d_in, d_sae;
    int k;                    /* TopK: active latents per row; 0 for the others */
    int apply_b_dec_to_input; /* encoder sees x - b_dec (standard, topk: 1; anthropic: 0) */
    int normalize_decoder;    /* unit-norm decoder rows (standard, topk: 1; anthropic: 0) */
    double l1_coefficient;    /* 0 for topk */
    char hook_name[128];      /* "blocks.0.mlp.hook_post" */
    char model[1024];         /* checkpoint the activations came from ("" if unknown) */
    size_t n_params;
    float *params;            /* one allocation: W_enc_t | b_enc | W_dec | b_dec */
    float *W_enc_t;           /* (S,D) encoder rows (W_enc transposed) */
    float *b_enc;             /* (S) */
    float *W_dec;             /* (S,D) decoder rows */
    float *b_dec;             /* (D) */
} ml_sae;

/* Allocate an SAE with zeroed parameters. k is used by topk only. */
int ml_sae_create(ml_sae_arch arch, int d_in, int d_sae, int k, ml_sae **out);
void ml_sae_destroy(ml_sae **sae);
/* Offsets (in floats) of the four tensors inside params (same layout for
 * gradients and optimizer moments). */
void ml_sae_param_offsets(const ml_sae *sae, size_t *W_enc_t, size_t *b_enc, size_t *W_dec, size_t *b_dec);
/* Initialise: decoder rows random unit directions (scaled by dec_norm when
 * the architecture has no norm constraint, e.g. 0.1 for anthropic),
 * encoder = decoder transposed, b_enc = 0, b_dec = 0. Deterministic in seed. */
void ml_sae_init(ml_sae *sae, uint64_t seed, float dec_norm);

/* Load saes/<name>.h5 (format mergelens.sae v1). Not collective: each
 * calling process reads the file on its own (MPI_COMM_SELF). Refuses an
 * interrupted training's checkpoint (root attribute complete = 0). */
int ml_sae_load(const char *path, ml_sae **out);
/* ML_ERR_FORMAT (one line naming the file) when an opened mergelens.sae file
 * is a checkpoint (complete = 0); files without the attribute are complete. */
typedef struct ml_h5 ml_h5;
int ml_sae_check_complete(ml_h5 *h);

/* Dense encode: f (n,S) from x (n,D). For topk, all but the K largest
 * pre-activations of each row are zero. */
int ml_sae_encode(const ml_sae *sae, const float *x, int n, float *f);
/* Decode: x_hat (n,D) from f (n,S) (dense). */
int ml_sae_decode(const ml_sae *sae, const float *f, int n, float *x_hat);
/* Encode + decode a batch, for splicing the reconstruction into a model's
 * forward pass (CE loss recovered). f_scratch (min(n,256),S) may be NULL
 * (then allocated for the call). x_hat may alias x. */
int ml_sae_reconstruct(const ml_sae *sae, const float *x, int n, float *x_hat, float *f_scratch);

/* Sparse codes as CSR: row r's active latents are col[row_ptr[r]..row_ptr[r+1])
 * in increasing latent order with values val[...]. Start from a zeroed
 * ml_sae_csr; arrays grow as needed and are reused across calls; free with
 * ml_sae_csr_free. */
typedef struct {
    int n_rows;
    int64_t nnz;
    int64_t *row_ptr; /* (n_rows+1) */
    int32_t *col;     /* (nnz) */
    float *val;       /* (nnz) */
    int64_t cap_rows, cap_nnz;
    float *scratch;   /* internal (block of rows, S) */
    int scratch_rows;
} ml_sae_csr;
int ml_sae_encode_csr(const ml_sae *sae, const float *x, int n, ml_sae_csr *csr);
void ml_sae_csr_free(ml_sae_csr *csr);
/* The m largest active latents of each row, largest first: idx (n,m) with
 * -1 padding where fewer than m are active, val (n,m) (0 at padding).
 * f_scratch as for ml_sae_reconstruct. */
int ml_sae_encode_top(const ml_sae *sae, const float *x, int n, int m, int32_t *idx, float *val,
                      float *f_scratch);

/* ---- kernels (exposed for tests and benchmarks) -------------------------------- */
/* Exact top-k of v (n) by value, ties to the lower index, sorted descending.
 * subset (m) restricts the candidates to v[subset[i]] (NULL = all, m = n).
 * Writes min(k, candidates) entries; returns that count. */
int ml_topk_select(const float *v, int n, const int32_t *subset, int m, int k, int32_t *idx, float *val);

/* Geometric median of rows distributed over comm (Weiszfeld, started at the
 * mean): x (n_local,D) this rank's rows. Collective; identical result on all
 * ranks. Stops when the step is below tol * (1 + |y|) or after max_iter. */
int ml_geometric_median(MPI_Comm comm, const float *x, int64_t n_local, int d, int max_iter, double tol,
                        float *median, int *iters);

/* How the squared reconstruction error is normalised (the nMSE term). */
typedef enum {
    ML_SAE_NORM_ROW = 0,    /* per row: ||x_hat_b - x_b||^2 / max(||x_b||^2, norm_sq) (the authors' nMSE) */
    ML_SAE_NORM_DATASET = 1 /* constant: ||x_hat_b - x_b||^2 / norm_sq, norm_sq = E||x||^2 of a sample */
} ml_sae_norm;

typedef struct {
    int mse_norm;    /* ml_sae_norm */
    double norm_sq;  /* row: floor of ||x_b||^2 (<= 0: 1e-8); dataset: the constant (must be > 0) */
    double l1;       /* L1 coefficient (standard, anthropic) */
    double aux_coef; /* AuxK coefficient alpha (topk; 1/32 in Gao et al.) */
    int k_aux;       /* AuxK latents per row (topk; 0 disables AuxK) */
} ml_sae_loss_cfg;

/* Sums over the rows of one call (add across ranks to combine). */
typedef struct {
    double loss_mse; /* sum_b w_b ||x_hat-x||^2: the nMSE term (w_b = 1 / (n_global * normaliser_b)) */
    double loss_l1;  /* l1 * sum_b sum_j f_bj c_j / n_global (c_j = 1 or ||W_dec_j||) */
    double loss_aux; /* aux_coef * sum_b w_b ||e_hat-e||^2 */
    double sq_err;   /* sum_b ||x_hat_b - x_b||^2 */
    double l0;       /* sum_b #active latents */
    double rows;     /* rows processed */
} ml_sae_stats;

typedef struct ml_sae_work ml_sae_work;
/* Scratch for up to max_rows rows per call (allocated once per run); it
 * serves every SAE of the same architecture and shape with k <= sae->k. */
int ml_sae_work_create(const ml_sae *sae, int max_rows, int k_aux, ml_sae_work **out);
void ml_sae_work_destroy(ml_sae_work **w);

/* Loss over n rows x (n,D) of a global batch of n_global rows (the loss is
 * normalised by n_global so that per-rank gradients add up). If grads != NULL
 * it receives the gradient (same layout as params; overwritten). fired (S),
 * if not NULL, gets += the number of rows on which each latent was active.
 * dead (S) marks dead latents for AuxK (NULL = none). st is overwritten. */
int ml_sae_forward_backward(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *x, int n, int64_t n_global,
                            const uint8_t *dead, ml_sae_work *w, float *grads, float *fired, ml_sae_stats *st);
/* Remove from each decoder-row gradient its component along the (unit) row. */
void ml_sae_project_decoder_grad(const ml_sae *sae, float *grads);
/* Rescale every decoder row to unit norm. */
void ml_sae_normalize_decoder(ml_sae *sae);
/* One Adam step (bias-corrected, step t >= 1) over n floats. */
void ml_adam_step(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                  float eps, int64_t t);

/* ---- shuffled row streams --------------------------------------------------------- */
/* A dataset of rows. read() is collective: every rank calls it at the same
 * time with its own range (count may be 0) and gets rows [row0,row0+count)
 * as float32 (count,d). read_meta (may be NULL) gives per-row token ids,
 * document ids and positions of a range, also collectively (any output may
 * be NULL). */
typedef struct {
    int64_t n_rows;
    int d;
    void *ctx;
    int (*read)(void *ctx, int64_t row0, int64_t count, float *out);
    int (*read_meta)(void *ctx, int64_t row0, int64_t count, int32_t *tokens, int64_t *doc_ids, int32_t *positions);
} ml_row_source;

/* A source over rows held in memory on every rank (tests, tools): init
 * fills m->src (whose ctx points at m, so m must stay in place). tokens,
 * doc_ids and positions may be NULL (then token = row % 65536, doc = 0,
 * position = row). The arrays must outlive m. */
typedef struct {
    ml_row_source src;
    const float *x;           /* (n_rows, d) */
    const int32_t *tokens;    /* (n_rows) */
    const int64_t *doc_ids;   /* (n_rows) */
    const int32_t *positions; /* (n_rows) */
} ml_row_memory;
void ml_row_memory_init(ml_row_memory *m, const float *x, int64_t n_rows, int d, const int32_t *tokens,
                        const int64_t *doc_ids, const int32_t *positions);

/* Rows shuffled by block + within-buffer permutations: the file is cut into
 * blocks of block_rows; each epoch permutes the blocks, groups them into
 * buffers of buffer_blocks, and permutes the rows of each buffer. The
 * buffers' rows concatenated form the stream; global batch s is stream
 * positions [s*B, (s+1)*B) and rank r of P takes its slice
 * [s*B + r*B/P, s*B + (r+1)*B/P). Blocks are read by one rank each and rows
 * are exchanged with MPI_Alltoallv, so memory is about 3 buffers / P per
 * rank. The union over ranks of every batch is independent of P. */
typedef struct ml_sae_stream ml_sae_stream;
int ml_sae_stream_create(MPI_Comm comm, const ml_row_source *src, int global_batch, int block_rows,
                         int buffer_blocks, uint64_t seed, int peek_batches, ml_sae_stream **out);
void ml_sae_stream_destroy(ml_sae_stream **s);
/* Collective. *rows = this rank's (B/P, D) rows of the next global batch;
 * valid until the next call. *stream_pos (may be NULL) gets the global
 * stream position of the batch's first row. */
int ml_sae_stream_next(ml_sae_stream *s, const float **rows, int64_t *stream_pos);
/* Collective. This rank's rows of the next nbatches global batches
 * (nbatches*B/P rows, batch-major) without consuming them;
 * nbatches <= peek_batches given at creation. */
int ml_sae_stream_peek(ml_sae_stream *s, int nbatches, const float **rows);
int ml_sae_stream_local_batch(const ml_sae_stream *s); /* B/P */
/* Collective, on a fresh stream only: continue at global stream position
 * stream_pos (a multiple of the batch), as if stream_pos / B batches had been
 * taken with ml_sae_stream_next (the buffers before it are not read). */
int ml_sae_stream_seek(ml_sae_stream *s, int64_t stream_pos);

/* ---- training ---------------------------------------------------------------------- */
#define ML_SAE_MAX_GRID 32 /* SAEs trained in one pass: grid points x replicas */
#define ML_SAE_HIST_BINS 40 /* log10 density histogram: bins of 0.25 over [-10, 0] */
#define ML_SAE_HIST_LO (-10.0)
#define ML_SAE_HIST_STEP 0.25

/* Where an SAE's seeds and rows came from (root attributes of its file,
 * docs/FORMAT.md): the seed of its initialisation and resampling (derived
 * from the job seed and its identity, or the job seed itself with
 * --seed_mode exact), its replica index, the rows it trained on and the
 * held-out rows its metrics use. Row ranges are [start, end) rows of the
 * activations file; -1 when the rows are not rows of a file (forward pass;
 * then `heldout` says what was held out). */
typedef struct {
    int set;                     /* 0: nothing of this is written */
    int64_t seed, job_seed;      /* seed used (init + resampling), the job's --seed */
    char seed_identity[1536];    /* "" with --seed_mode exact */
    int64_t data_seed;           /* seed of the row order (shared by the SAEs of one pass) */
    char data_seed_identity[1536];
    int64_t replica, replicas;
    int64_t train_row_start, train_row_end, heldout_row_start, heldout_row_end;
    char heldout[1536];          /* description of the held-out rows */
} ml_sae_provenance;

/* Path of replica r given replica 0's path: r = 0 -> path itself;
 * "saes/x.h5" -> "saes/x-rep<r>.h5", "saes/x-k32.h5" -> "saes/x-k32-rep<r>.h5"
 * (no ".h5": "-rep<r>" appended). ML_ERR_ARG when buf is too small. */
int ml_sae_replica_path(const char *path, int r, char *buf, size_t cap);

/* Preemption (docs/modules/sae.md, "Preemption and resume"): on an agreed
 * SIGTERM / SIGUSR1 at a step boundary, and every `every` steps, each SAE of
 * the grid is checkpointed to its final output path (complete = 0, with the
 * optimizer, stream position and metric history); ml_sae_train then returns
 * ML_ERR_INTERRUPTED. With resume, training continues from those files and
 * ends bitwise where an uninterrupted run (same ranks) ends. */
typedef struct ml_sae_ckpt_opts {
    int n;                              /* = n_grid */
    const char *paths[ML_SAE_MAX_GRID]; /* checkpoint (= output) path of each SAE */
    const char *config_json;            /* root attribute `config` (ml_options_to_json) */
    const char *source_json;            /* root attribute `source` */
    int resume;                         /* continue from the checkpoints at paths */
    int64_t every;                      /* periodic checkpoints (steps; 0: only on a signal) */
    int64_t raise_at;                   /* testing: SIGUSR1 just before this step (0: never) */
} ml_sae_ckpt_opts;

typedef struct {
    ml_sae_arch arch;
    int d_sae;                 /* 0: expansion * d_in */
    int expansion;             /* 16 */
    int n_grid;                /* SAEs trained together on the same rows */
    double l1[ML_SAE_MAX_GRID];/* per SAE (standard, anthropic) */
    int k[ML_SAE_MAX_GRID];    /* per SAE (topk) */
    int k_aux;                 /* 0: d_in / 2 */
    double aux_coef;           /* 1/32; 0 disables AuxK */
    double lr, beta1, beta2, adam_eps;
    int batch;                 /* global rows per step */
    int64_t tokens;            /* rows to train on (0: one pass over the source) */
    int64_t max_steps;         /* 0: no limit beyond tokens */
    uint64_t seed;             /* row order (stream); with per_sae_seeds 0 also every SAE's init */
    int per_sae_seeds;         /* 1: SAE g's init and resampling draw from sae_seed[g];
                                  0: every SAE starts from `seed`, SAE g resamples from seed + g */
    uint64_t sae_seed[ML_SAE_MAX_GRID];
    const ml_sae_provenance *prov; /* (n_grid) copied into each SAE's result and checkpoint; NULL: none */
    int block_rows, buffer_blocks;
    int median_rows, median_iters; /* geometric-median sample for b_dec (also gives E||x||^2 and the mean) */
    int mse_norm;              /* ml_sae_norm (row) */
    double norm_floor;         /* row normalisation: ||x_b||^2 floored at norm_floor * E||x||^2 (0.01) */
    float dec_init_norm;       /* decoder row norm at init when not normalised (anthropic: 0.1) */
    int64_t dead_window;       /* tokens without firing => dead (AuxK and metrics) */
    double dense_threshold;    /* density above this => dense (0.1) */
    int resample;              /* resample dead latents (standard, anthropic) */
    int resample_every;        /* steps between resampling checks */
    double resample_stop;      /* no resampling after this fraction of training */
    int resample_rows;         /* rows whose losses pick the new directions */
    int log_every;             /* steps between metric records */
    int l1_warmup;             /* steps of linear L1 warm-up (0 = none) */
    const char *hook_name, *model;
    int quiet;                 /* no progress display */
    const struct ml_sae_ckpt_opts *ckpt; /* checkpoints and resume (NULL: none) */
} ml_sae_train_config;
void ml_sae_train_config_default(ml_sae_train_config *c);

/* log10 firing-density histogram of S latents with count[j] firings over
 * `rows` rows: hist (ML_SAE_HIST_BINS) bins of ML_SAE_HIST_STEP from
 * ML_SAE_HIST_LO (densities below/above the range go to the end bins);
 * *zero = latents that never fired. */
void ml_sae_density_hist(const double *count, int S, double rows, int64_t *hist, int64_t *zero);

/* Metric history of one SAE, one entry per log interval (values over the
 * rows of that interval). */
typedef struct {
    int64_t n, cap;
    int64_t *step, *tokens;
    double *loss, *mse, *fvu, *l0, *loss_l1, *loss_aux, *dead_fraction, *dense_fraction;
    int64_t *resampled;  /* cumulative latents resampled */
    int64_t *hist;       /* (n, ML_SAE_HIST_BINS) log10 density histogram of the interval */
    int64_t *hist_zero;  /* latents that never fired in the interval */
} ml_sae_history;

typedef struct {
    ml_sae *sae;
    ml_sae_history hist;
    int64_t steps, tokens_seen;
    int64_t *tokens_since_fired; /* (S) at the end of training */
    int64_t resampled_total;
    int median_iters;
    int mse_norm;                /* ml_sae_norm used */
    double norm_sq;              /* its norm_sq (row: the floor; dataset: E||x||^2) */
    double mean_sq_norm;         /* E||x||^2 of the sample */
    ml_sae_provenance prov;      /* seeds, replica, rows (written when prov.set) */
} ml_sae_trained;

typedef struct {
    int n;
    ml_sae_trained *item; /* (n) */
} ml_sae_run;
/* Train cfg->n_grid SAEs in one pass over the stream of src. Collective. */
int ml_sae_train(MPI_Comm comm, const ml_sae_train_config *cfg, const ml_row_source *src, ml_sae_run **out);
void ml_sae_run_destroy(ml_sae_run **run);

/* ---- evaluation and feature examples ------------------------------------------------- */
typedef struct {
    int64_t row0, n_rows;      /* evaluation rows [row0, row0 + n_rows) of the source (n_rows 0: to the end) */
    int block_rows;            /* rows encoded at a time (512) */
    int top_examples;          /* top-activating contexts per feature (10) */
    int quantile_examples;     /* samples from lower quantiles per feature (8) */
    int reservoir;             /* uniform sample of firings kept per feature (32) */
    int ctx_left, ctx_right;   /* tokens around the example's row */
    double dense_threshold;    /* 0.1 */
    uint64_t seed;
} ml_sae_eval_config;
void ml_sae_eval_config_default(ml_sae_eval_config *c);

typedef struct {
    int S, K, Q, W;            /* latents, top examples, quantile examples, window length */
    int ctx_left, ctx_right;
    int64_t row0, n_rows;      /* evaluated rows [row0, row0 + n_rows) of the source */
    double mse, fvu, l0, dead_fraction, dense_fraction;
    int64_t *count;            /* (S) rows on which the latent fired */
    double *density;           /* (S) count / n_rows */
    float *max_act, *mean_act; /* (S) max and mean over firings */
    int64_t hist[ML_SAE_HIST_BINS], hist_zero;
    /* per feature j, slot s (top: s < K, by decreasing activation; -1 row when fewer) */
    int64_t *top_row;          /* (S,K) */
    float *top_act;            /* (S,K) */
    int32_t *top_tokens;       /* (S,K,W) token ids; -1 where the window leaves the example's context
                                  (another document, a position jump, or the source's ends) */
    float *top_window_acts;    /* (S,K,W) the latent's activation on each window token */
    int64_t *q_row;            /* (S,Q) quantile samples, increasing activation; -1 when fewer */
    float *q_act;              /* (S,Q) */
    float *q_level;            /* (S,Q) quantile of the sample among the latent's firings */
    int32_t *q_tokens;         /* (S,Q,W) */
    float *q_window_acts;      /* (S,Q,W) */
} ml_sae_eval;
/* Evaluate n SAEs on the same rows (one data pass for metrics and example
 * selection, one for the context windows). Collective. out[i] per SAE. */
int ml_sae_evaluate(MPI_Comm comm, ml_sae *const *saes, int n, const ml_row_source *src,
                    const ml_sae_eval_config *cfg, ml_sae_eval **out);
void ml_sae_eval_destroy(ml_sae_eval **ev);

/* ---- files ---------------------------------------------------------------------------- */
/* Write saes/<name>.h5 (format mergelens.sae v1): tensors, root attributes,
 * /metrics (history and eval) and /features (eval examples). tr and ev may
 * be NULL (then the groups they fill are omitted). config_json may be NULL.
 * Collective over comm. */
int ml_sae_write(MPI_Comm comm, const char *path, const ml_sae *sae, const ml_sae_trained *tr, const ml_sae_eval *ev,
                 const char *config_json);

/* As ml_sae_write, also setting the root attribute `source` (JSON, see
 * ml_sae_source_json) when source_json is not NULL. */
int ml_sae_write_source(MPI_Comm comm, const char *path, const ml_sae *sae, const ml_sae_trained *tr,
                        const ml_sae_eval *ev, const char *config_json, const char *source_json);

/* Where the training rows came from: an activations file, or a model's
 * forward pass over windows of token stores (docs/modules/sae.md). */
typedef struct {
    const char *kind;         /* "activations" | "forward" */
    const char *acts;         /* activations file ("" for forward) */
    const char *model;        /* checkpoint (the file's `model` attribute, or --model) */
    const char *domains_json; /* JSON list of token-store paths (NULL: unknown) */
    int64_t n_tokens;         /* rows of the source */
    int context;              /* T (0: unknown) */
    const char *split, *order;/* "train"/"val", "sequential"/"seeded" (NULL: unknown) */
    int64_t seed;             /* window seed (-1: unknown) */
    int batch;                /* windows per forward pass (0: unknown) */
} ml_sae_source_info;
/* One-line JSON object {kind, acts, model, domains, n_tokens, context,
 * split, order, seed, batch} (caller ml_free()s). */
int ml_sae_source_json(const ml_sae_source_info *info, char **out);

/* A row source over an activations file's /hooks/<hook>/acts (float32 or
 * float16 bits), with /tokens and /doc_ids as metadata. Collective open. */
typedef struct ml_acts_source ml_acts_source;
int ml_acts_source_open(MPI_Comm comm, const char *path, const char *hook, ml_acts_source **out);
const ml_row_source *ml_acts_source_rows(const ml_acts_source *a);
const char *ml_acts_source_model(const ml_acts_source *a); /* root attr `model` ("" if absent) */
const char *ml_acts_source_json(const ml_acts_source *a);  /* its `source` description (ml_sae_source_json) */
int ml_acts_source_context(const ml_acts_source *a);       /* root attr `context` (0 if absent) */
void ml_acts_source_close(ml_acts_source **a);

/* ---- CLI -------------------------------------------------------------------------------- */
/* `mergelens sae ACTS --out saes/NAME.h5 [options]` (see --help). */
int ml_cmd_sae(MPI_Comm comm, int argc, char **argv);

#endif
