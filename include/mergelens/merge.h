/* mergelens merge: model merging with mergekit semantics.
 *
 * Three layers:
 *  1. kernels over flat float arrays (linear combinations, Gram matrices,
 *     SLERP coefficients, TIES/DARE task-vector mixing);
 *  2. one tensor's merge: ml_merge_stats_compute (the pass that reduces the
 *     tensor to small statistics: Gram matrices of norms and angles) followed
 *     by ml_merge_apply (the pass that writes the merged tensor). A sweep
 *     computes the statistics of each tensor ONCE and calls apply per point;
 *     for SLERP, linear, task_arithmetic, soup, model_stock, multislerp and
 *     karcher the output is a linear combination of the inputs whose
 *     coefficients follow from the statistics, so a point costs one pass;
 *  3. recipes (the mergekit YAML subset) and the streaming, rank-parallel
 *     merge of checkpoints (`mergelens merge CONFIG.yaml --out OUT.h5`).
 *
 * Dimension legend: N elements of one tensor (flattened, row-major),
 * R rows x C columns (N = R*C; 1-D tensors have R = 1), K input models
 * besides the base model, D vectors in a Gram matrix.
 */
#ifndef MERGELENS_MERGE_H
#define MERGELENS_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/config.h"
#include "mergelens/core.h"

#define ML_MERGE_MAX_MODELS 32

typedef enum {
    ML_MERGE_LINEAR = 0,
    ML_MERGE_SLERP,
    ML_MERGE_TASK_ARITHMETIC,
    ML_MERGE_TIES,
    ML_MERGE_DARE_LINEAR,
    ML_MERGE_DARE_TIES,
    ML_MERGE_MODEL_STOCK,
    ML_MERGE_SOUP,
    ML_MERGE_MULTISLERP,
    ML_MERGE_KARCHER,
    ML_MERGE_METHOD_COUNT_
} ml_merge_method;

const char *ml_merge_method_name(ml_merge_method m); /* "slerp" */
/* ML_ERR_NOTFOUND if name is not a method (message lists the methods). */
int ml_merge_method_parse(const char *name, ml_merge_method *m);
/* 1 if the method takes a base model as its reference point (slerp's t = 0
 * end, the task vectors' origin, model_stock's anchor). For linear, soup and
 * karcher a base_model is just one more input; multislerp uses it as the
 * origin of the sphere when given. */
int ml_merge_method_uses_base(ml_merge_method m);

/* ---- 1. kernels ------------------------------------------------------------ */
/* out (N) = sum_k c[k] * x[k] (N), summed in double, rounded once. */
void ml_merge_lincomb(float *out, const float *const *x, const double *c, int K, size_t N);
/* gram (D,D): gram[i*D+j] = (v[i] - sub) . (v[j] - sub) over N elements, v[i] (N),
 * sub (N) or NULL. Accumulated in double in a fixed order (deterministic). */
void ml_merge_gram(double *gram, const float *const *v, const float *sub, int D, size_t N);
/* The same in pieces, for tensors that arrive in chunks: acc has
 * D(D+1)/2 x ML_MERGE_GRAM_LANES doubles (zeroed first); a chunk of N
 * elements starting at element `offset` of the tensor adds to it. The result
 * is bit-identical for any chunking. */
#define ML_MERGE_GRAM_LANES 16
void ml_merge_gram_acc(double *acc, const float *const *v, const float *sub, int D, size_t N, size_t offset);
void ml_merge_gram_finish(double *gram /* (D,D) */, const double *acc, int D);
/* mergekit SLERP coefficients from the Gram matrix of [a, b] (a = base, t=0):
 * res = c[0] a + c[1] b. Copies are normalised only when their norm exceeds
 * 1e-8; |dot| > 0.9995 falls back to lerp (c = 1-t, t). Returns 1 when the
 * linear fallback was used, else 0. Any real t is allowed (extrapolation). */
int ml_slerp_coeffs(const double *gram /* (2,2) */, double t, double *c /* (2) */);
/* res = slerp of a, b (N): ml_merge_gram + ml_slerp_coeffs + ml_merge_lincomb. */
int ml_slerp(float *out, const float *a, const float *b, size_t N, double t);
/* Largest-magnitude selection for TIES: the k-th largest value of |x - base|
 * (1 <= k <= N), and how many elements are strictly larger. hist is scratch
 * of 4 x 65536 uint32 (radix select on the float bits: two passes, no copy). */
void ml_merge_topk_threshold(const float *x, const float *base, size_t N, size_t k, uint32_t *hist, float *thr,
                             size_t *n_gt);
/* Round every element to bfloat16 / float16 precision (round to nearest even);
 * used to emulate a mergekit `dtype`. */
void ml_round_bf16(float *x, size_t N);
void ml_round_f16(float *x, size_t N);
/* RNG stream of a tensor: FNV-1a 64 of its name (DARE masks depend on the
 * seed and the tensor name only, never on ranks or tensor order). */
uint64_t ml_merge_stream_id(const char *tensor_name);

/* ---- 2. one tensor ------------------------------------------------------------ */
/* Parameters of one tensor's merge, resolved from a recipe (mergekit names). */
typedef struct {
    ml_merge_method method;
    int K;                               /* input models besides the base */
    int has_base;                        /* inputs carry a base tensor */
    double weight[ML_MERGE_MAX_MODELS];  /* (K) linear/soup/GTA/multislerp */
    double density[ML_MERGE_MAX_MODELS]; /* (K) ties/dare, in (0, 1] */
    double t;                            /* slerp */
    double lambda;                       /* GTA: task vector scale (default 1) */
    int normalize;                       /* linear (1), ties (1), others (0) */
    int rescale;                         /* dare (1): 1/density; ties (0): L1 */
    int filter_wise;                     /* model_stock: one angle per row */
    int normalize_weights;               /* multislerp (1) */
    double eps;                          /* multislerp (1e-8) */
    int max_iter;                        /* karcher (10) */
    double tol;                          /* karcher (1e-5) */
    uint64_t seed;                       /* dare */
    uint64_t stream;                     /* dare: ml_merge_stream_id(name) */
} ml_merge_params;
/* Defaults of a method (mergekit's), K and has_base set by the caller. */
void ml_merge_params_defaults(ml_merge_params *p, ml_merge_method m);

/* Set one swept parameter of resolved params (a sweep point): "t",
 * "lambda", "eps", "tol", "density" (every model), "density[i]",
 * "weight[i]" (model i, counted without the base). ML_ERR_ARG names an
 * unknown key or index. The statistics of a tensor stay valid for any value. */
int ml_merge_params_override(ml_merge_params *p, const char *key, double value);

/* One tensor's inputs (borrowed pointers). */
typedef struct {
    const char *name;                   /* for messages */
    const float *base;                  /* (N), NULL when has_base == 0 */
    const float *x[ML_MERGE_MAX_MODELS]; /* K x (N) */
    size_t rows, cols;                  /* N = rows * cols */
} ml_merge_inputs;

/* Statistics pass output (Gram matrices); reusable across parameter points
 * that keep method, K, has_base and filter_wise. */
typedef struct {
    int dim;        /* D: each Gram matrix is D x D (0: method needs none) */
    size_t ngroups; /* 1, or R for model_stock filter_wise */
    double *gram;   /* (ngroups, D, D) */
    size_t cap;     /* doubles allocated */
    double *acc;    /* lane sums while rows arrive */
    size_t acc_cap;
} ml_merge_stats;
int ml_merge_stats_compute(const ml_merge_params *p, const ml_merge_inputs *in, ml_merge_stats *st);
/* The same while a tensor arrives in row chunks (e.g. right after each chunk
 * is read, while it is in cache): begin, rows for consecutive row ranges in
 * increasing order covering the tensor, end. in's pointers address the
 * whole tensor. The result equals ml_merge_stats_compute bit for bit. */
int ml_merge_stats_begin(const ml_merge_params *p, const ml_merge_inputs *in, ml_merge_stats *st);
int ml_merge_stats_rows(const ml_merge_params *p, const ml_merge_inputs *in, size_t row0, size_t nrows,
                        ml_merge_stats *st);
void ml_merge_stats_end(ml_merge_stats *st);
void ml_merge_stats_release(ml_merge_stats *st);

/* Workspace of ml_merge_apply, sized once for the largest tensor. */
typedef struct ml_merge_work ml_merge_work;
int ml_merge_work_create(int K, size_t max_rows, ml_merge_work **out);
void ml_merge_work_destroy(ml_merge_work **w);
/* out (N) = the merge of in under p, given st from ml_merge_stats_compute.
 * Fails (naming the tensor) on degenerate input: TIES density keeping no
 * element, linear weights summing to 0 with normalize, a multislerp mean of
 * zero norm. */
int ml_merge_apply(const ml_merge_params *p, const ml_merge_inputs *in, const ml_merge_stats *st, ml_merge_work *w,
                   float *out);
/* Check that parameters are usable (finite, in range, right model count,
 * a TIES density that keeps at least one of the tensor's N elements; N = 0
 * skips that check); the message names the tensor. */
int ml_merge_params_check(const ml_merge_params *p, const char *tensor_name, size_t N);

/* ---- 3. recipes and checkpoints ------------------------------------------------ */
typedef struct ml_merge_recipe ml_merge_recipe;
/* Parse and validate a mergekit-style YAML recipe (file or string). Model
 * paths are resolved relative to the recipe file's directory unless
 * absolute. Errors name file:line and the key. */
int ml_merge_recipe_load(const char *path, ml_merge_recipe **out);
int ml_merge_recipe_parse(const char *text, const char *name, ml_merge_recipe **out);
void ml_merge_recipe_destroy(ml_merge_recipe **r);
ml_merge_method ml_merge_recipe_method(const ml_merge_recipe *r);
/* Input checkpoints in merge order: index 0 is the base model when the method
 * uses one; *n counts them all (base included). */
int ml_merge_recipe_models(const ml_merge_recipe *r, const char *const **paths, int *n);
/* Seed for DARE (recipe `seed`, default 0); the command's --seed overrides. */
uint64_t ml_merge_recipe_seed(const ml_merge_recipe *r);
void ml_merge_recipe_set_seed(ml_merge_recipe *r, uint64_t seed);
/* "float32" | "bfloat16" | "float16": precision inputs are rounded to
 * (`dtype`) and the output is rounded to (`out_dtype`, default dtype). */
const char *ml_merge_recipe_dtype(const ml_merge_recipe *r);
const char *ml_merge_recipe_out_dtype(const ml_merge_recipe *r);
/* `tokenizer_source` (mergekit's key) resolved to a model path: `base` is the
 * base model; NULL when the recipe has none (the models must then agree). */
const char *ml_merge_recipe_tokenizer_source(const ml_merge_recipe *r);
/* Parameters for one tensor: per-model settings first, then the global
 * `parameters`, then the method's defaults (mergekit's lookup order).
 * layer_t is the tensor's position for gradients: i/(L-1) for layer i of L
 * (1 when L == 1), 0 for the embedding, 1 for the final norm and lm_head
 * (see ml_merge_layer_t). */
int ml_merge_recipe_resolve(const ml_merge_recipe *r, const char *tensor_name, double layer_t, ml_merge_params *p);
/* mergekit's gradient position of a Hugging Face tensor name. */
double ml_merge_layer_t(const char *tensor_name, int n_layers);
/* The recipe as JSON (what `merge_recipe` stores); caller ml_free()s. */
int ml_merge_recipe_to_json(const ml_merge_recipe *r, char **json);

/* Merge checkpoints as r says into out_path (collective over comm). Tensors
 * are spread over the ranks; each rank reads only the tensors it merges,
 * one tensor at a time, in reads of read_chunk elements per model (0: the
 * default, 1M; the result does not depend on it). Everything is validated
 * before the output is created; out_path NULL only validates. config_json
 * (may be NULL) becomes the root `config` attribute. */
int ml_merge_checkpoints(MPI_Comm comm, const ml_merge_recipe *r, const char *out_path, const char *config_json,
                         size_t read_chunk);

/* `mergelens merge CONFIG.yaml --out OUT.h5 [--seed S]` */
int ml_cmd_merge(MPI_Comm comm, int argc, char **argv);

#endif
