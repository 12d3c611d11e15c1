/* mergelens features: comparing two SAE dictionaries' features and tracking
 * them along a model lineage (persist / disappear / emerge).
 *
 * This module never encodes activations: it consumes feature codes (the SAE
 * module's output) chunk by chunk, dense or CSR-sparse, and decoder matrices.
 *
 * Measures
 *  - activation similarity: Pearson r between every feature of A and every
 *    feature of B over the same token positions (ml_corr: streaming, 2-D
 *    feature-block decomposition over the ranks, dense sgemm or sparse
 *    outer-product path chosen from the measured density);
 *  - token-profile correlation: each feature's mean activation per token id,
 *    correlated over the token ids both streams saw (ml_tprof + ml_corr);
 *  - decoder-direction cosine and logit-weight cosine (ml_cosine_best, with a
 *    Gram metric G = M^T M for a decoder-space -> vocabulary map M);
 *  - best (max) matching per feature and one-to-one matching (ml_assign_*);
 *  - diagonal correlation of the same features on two activation sources
 *    (ml_diagcorr, for "is feature i still present in the merged model");
 *  - feature-flow traces across several models with consistency filtering
 *    (ml_flow).
 * Tracking: ml_track_classify turns best matches into status codes and
 * counts per lineage edge; ml_tracking_* write tracking/<name>.h5 (format
 * `mergelens.tracking` v1, docs/modules/features.md).
 *
 * Dead features: a feature with zero variance over the tokens seen (never
 * fires) has r = 0 with every feature, is flagged dead and is never matched.
 * A decoder row of zero norm is dead for the cosine measures.
 */
#ifndef MERGELENS_FEATURES_H
#define MERGELENS_FEATURES_H

#include <stdint.h>

#include "mergelens/core.h"

/* ---- feature codes: one chunk of token rows --------------------------------
 * The chunk holds features [f0, f0 + nf) of a dictionary for n token rows,
 * either dense (x != NULL) or CSR. A rank may pass the full dictionary width
 * (f0 = 0, nf = F) or only the features it owns (see ml_corr_block). */
typedef struct {
    int64_t n;               /* token rows */
    int64_t f0, nf;          /* feature range held by the chunk */
    const float *x;          /* dense (n, ld) row-major: feature f0 + c in column c; NULL = sparse */
    int64_t ld;              /* dense row stride (>= nf) */
    const int64_t *row_ptr;  /* CSR (n + 1): row t is entries [row_ptr[t], row_ptr[t+1]) */
    const int32_t *col;      /* CSR column in [0, nf), i.e. feature f0 + col */
    const float *val;        /* CSR value */
} ml_fcodes;

/* Best partner of every feature on both sides of a comparison (replicated
 * on every rank). score = the best similarity over live partners; partner
 * -1 (score 0) for a dead feature or when no live partner exists. */
typedef struct {
    int64_t n_a, n_b;
    float *a_score;      /* (n_a) */
    int32_t *a_partner;  /* (n_a) index into B or -1 */
    uint8_t *a_dead;     /* (n_a) 1 = dead */
    float *b_score;      /* (n_b) */
    int32_t *b_partner;  /* (n_b) index into A or -1 */
    uint8_t *b_dead;     /* (n_b) */
    double a_mean, b_mean; /* mean best score over live features ("mean max") */
} ml_best;
int ml_best_alloc(ml_best *b, int64_t n_a, int64_t n_b);
void ml_best_free(ml_best *b); /* tolerates a zeroed or freed struct */

/* ---- streaming Pearson cross-correlation (ml_corr) ------------------------ */
typedef enum { ML_CORR_AUTO = 0, ML_CORR_DENSE = 1, ML_CORR_SPARSE = 2 } ml_corr_path;

/* AUTO picks the sparse path for a chunk when its pair density
 *   sum_t nnzA_t * nnzB_t / (n * FA_blk * FB_blk)
 * (about density_A * density_B) is at most this (measured crossover, see
 * docs/modules/features.md). */
#define ML_CORR_SPARSE_THRESHOLD 1.5e-3
/* The dense path densifies CSR input in sub-chunks of at most this many
 * rows (scratch: rows x (FA_blk + FB_blk) floats). */
#define ML_CORR_DENSE_ROWS 4096

typedef struct {
    int64_t n_a, n_b;        /* features of dictionaries A and B */
    int64_t max_rows;        /* most token rows per chunk */
    ml_corr_path path;       /* AUTO, or force DENSE / SPARSE */
    double sparse_threshold; /* AUTO threshold on pair density; 0 = ML_CORR_SPARSE_THRESHOLD */
    int grid_rows, grid_cols;/* process grid (rows split A, columns split B); 0 = MPI_Dims_create */
} ml_corr_config;

typedef struct ml_corr ml_corr;
/* Collective (builds the process grid). The rank's block of the F_A x F_B
 * matrix is allocated here (na * nb doubles): memory never depends on the
 * number of tokens. */
int ml_corr_create(MPI_Comm comm, const ml_corr_config *cfg, ml_corr **out);
void ml_corr_destroy(ml_corr **c);
/* This rank's block: A features [a0, a0+na) x B features [b0, b0+nb). */
void ml_corr_block(const ml_corr *c, int64_t *a0, int64_t *na, int64_t *b0, int64_t *nb);
/* Add one chunk (local, not collective; every rank must add the same token
 * rows). A and B hold the same n rows; each must cover this rank's block. */
int ml_corr_add(ml_corr *c, const ml_fcodes *A, const ml_fcodes *B);
/* Chunks handled by each path so far (diagnostics, tests). */
void ml_corr_path_counts(const ml_corr *c, int64_t *dense_chunks, int64_t *sparse_chunks);
int64_t ml_corr_tokens(const ml_corr *c);
/* Local: turn the sums into r for the block. No ml_corr_add afterwards. */
int ml_corr_finalize(ml_corr *c);
/* After finalize: the block (na, nb) of r, row stride *ld. */
const double *ml_corr_r_block(const ml_corr *c, int64_t *ld);
/* Collective, after finalize: best partner per row and column (max r, ties
 * to the smallest index) and dead flags, replicated. *out is allocated. */
int ml_corr_best(ml_corr *c, ml_best *out);
/* Collective: every pair with r >= floor, on every rank, sorted by (a, b). */
typedef struct { int32_t a, b; float r; } ml_pair;
int ml_corr_pairs(ml_corr *c, double floor, ml_pair **pairs, int64_t *npairs);
/* Collective: the full (n_a, n_b) r matrix (float) on every rank. For
 * moderate sizes only (it is n_a * n_b floats per rank). */
int ml_corr_gather(ml_corr *c, float *r_full);

/* ---- token-profile correlation (ml_tprof) --------------------------------- */
/* One profile per side: sums of each feature's activation per token id and
 * the count of each token id, stored sparsely (hash of nonzero (id, feature)
 * sums: memory grows with distinct pairs, never with N x F). A profile keeps
 * the features of corr's block on its side (side 0 = A, 1 = B). */
typedef struct ml_tprof ml_tprof;
int ml_tprof_create(const ml_corr *corr, int side, int64_t vocab, ml_tprof **out);
void ml_tprof_destroy(ml_tprof **p);
/* tokens (n) int32 ids in [0, vocab), codes (n rows) covering the block. */
int ml_tprof_add(ml_tprof *p, const int32_t *tokens, const ml_fcodes *codes);
/* Feed the mean activation rows of the token ids seen by both profiles into
 * corr (created with the same grid; not finalized). *n_common = the number
 * of shared token ids (the "tokens" of this correlation). Local. */
int ml_tprof_feed(ml_tprof *a, ml_tprof *b, ml_corr *corr, int64_t *n_common);

/* ---- decoder-direction and logit-weight cosine ----------------------------- */
/* Collective. WA (n_a, d), WB (n_b, d) decoder rows, replicated on every
 * rank. With G (d, d) symmetric PSD (NULL = identity) the similarity is
 * a^T G b / sqrt(a^T G a * b^T G b): with G = M^T M this is the cosine of
 * the logit vectors M a, M b without forming them. The (n_a, n_b) matrix is
 * split over the same 2-D grid as ml_corr and computed in tiles; only the
 * best partners are returned. Rows with zero (G-)norm are dead. */
int ml_cosine_best(MPI_Comm comm, const float *WA, int64_t n_a, const float *WB, int64_t n_b, int64_t d,
                   const float *G, ml_best *out);
/* G = M^T M for the logit map of a one-layer model:
 *   M = lm_head (V, D) . diag(norm_w) (D) . down (D, d)
 * norm_w NULL = ones, down NULL = identity (then d == D). center != 0 uses
 * logits centred over the vocabulary (M - 1 mean(M)). G (d, d) out. */
int ml_logit_gram(const float *lm_head, int64_t V, int64_t D, const float *norm_w, const float *down, int64_t d,
                  int center, float *G);

/* Logit-weight cosine across two models (each SAE with its own model's
 * unembedding). A decoder row a (d) maps to the logits
 *   l(a) = lm_head (V, D) . diag(norm_w) (D) . down (D, d) . a   (V)
 * (the final RMSNorm's 1/rms scale is a positive scalar per token and does
 * not change a cosine, so it is left out); without down_proj (residual-stream
 * hooks) d == D. */
typedef struct {
    const float *lm_head; /* (V, D) */
    const float *norm_w;  /* (D) final RMSNorm weight; NULL = ones */
    const float *down;    /* (D, d) mlp.down_proj; NULL = identity */
    int64_t V, D;
} ml_logit_map;
/* Collective. WA (n_a, d_a), WB (n_b, d_b) decoder rows, replicated. The
 * similarity of (i, j) is cos(l_A(a_i), l_B(b_j)) (centred over the
 * vocabulary with center != 0), computed without forming the V-wide logit
 * vectors: with u = diag(norm_w) down a (D), cos = u_a^T K_AB u_b /
 * sqrt(u_a^T K_AA u_a  u_b^T K_BB u_b), K_XY = lm_head_X^T lm_head_Y (the
 * Gram matrices, V D^2 flops each, on every rank), then sgemm tiles of the
 * (n_a, n_b) matrix on the ml_corr grid. Best partners both ways; rows whose
 * logit vector is zero are dead. Both models need the same V. */
int ml_logit_cosine_best(MPI_Comm comm, const float *WA, int64_t n_a, int64_t d_a, const ml_logit_map *ma,
                         const float *WB, int64_t n_b, int64_t d_b, const ml_logit_map *mb, int center, ml_best *out);

/* ---- one-to-one matching ---------------------------------------------------- */
/* Dense rectangular assignment minimising the total cost (n, m) row-major:
 * every row is assigned when n <= m (else every column). Shortest
 * augmenting path with potentials (Jonker-Volgenant / Kuhn-Munkres):
 * O(min^2 * max) time, O(n*m) memory for the input. row_to_col (n): column
 * or -1. *total (may be NULL): the summed cost. */
int ml_assign_dense(const float *cost, int64_t n, int64_t m, int32_t *row_to_col, double *total);
/* Exact maximum-weight one-to-one matching on the candidate pairs with
 * r >= floor, weight r - floor (so pairs below floor are never matched).
 * The bipartite graph splits into connected components, each solved with
 * ml_assign_dense: cost is the sum over components of min^2 * max. A
 * component larger than max_component (rows + cols) fails with
 * ML_ERR_UNSUPPORTED. floor = -1 on all pairs is the classic Hungarian on
 * 1 - r. a_partner (n_a), b_partner (n_b) get the matched index or -1. */
int ml_assign_pairs(int64_t n_a, int64_t n_b, const ml_pair *pairs, int64_t npairs, double floor,
                    int64_t max_component, int32_t *a_partner, int32_t *b_partner);
/* Best-match struct from a one-to-one matching: score = r of the matched
 * pair (0, partner -1 if unmatched); dead flags copied from `like`. */
int ml_best_from_assignment(const ml_best *like, const ml_pair *pairs, int64_t npairs, const int32_t *a_partner,
                            const int32_t *b_partner, ml_best *out);

/* ---- diagonal correlation: the same features on two sources ---------------- */
/* Per feature i: Pearson r between its activations on source 1 and on
 * source 2 over the same tokens (e.g. a fine-tuned SAE on its own model and
 * on a merged model). Local; O(nnz) per chunk. */
typedef struct ml_diagcorr ml_diagcorr;
int ml_diagcorr_create(int64_t n_features, ml_diagcorr **out);
void ml_diagcorr_destroy(ml_diagcorr **d);
int ml_diagcorr_add(ml_diagcorr *d, const ml_fcodes *X1, const ml_fcodes *X2); /* full width */
/* r (n_features), dead (n_features; 1 if zero variance on either source). */
int ml_diagcorr_result(const ml_diagcorr *d, double *r, uint8_t *dead);

/* ---- tracking along a lineage edge ------------------------------------------ */
typedef enum {
    ML_FEAT_PERSIST = 1,   /* best match >= tau */
    ML_FEAT_DISAPPEAR = 2, /* parent feature without a match */
    ML_FEAT_EMERGE = 3,    /* child feature without a match */
    ML_FEAT_DEAD = 4       /* never fires: never matched */
} ml_feat_status;
enum {
    ML_TRACK_PARENT_PERSIST = 0, ML_TRACK_PARENT_DISAPPEAR, ML_TRACK_PARENT_DEAD,
    ML_TRACK_CHILD_PERSIST, ML_TRACK_CHILD_EMERGE, ML_TRACK_CHILD_DEAD, ML_TRACK_NCOUNTS
};
typedef struct {
    int64_t n_parent, n_child;
    double tau;
    uint8_t *parent_status;  /* (n_parent) ml_feat_status */
    int32_t *parent_partner; /* (n_parent) best child (a match only if PERSIST); -1 if dead or none */
    float *parent_score;     /* (n_parent) best score */
    uint8_t *child_status;   /* (n_child) */
    int32_t *child_partner;  /* (n_child) best parent (a match only if PERSIST); -1 if dead or none */
    float *child_score;      /* (n_child) */
    int64_t counts[ML_TRACK_NCOUNTS];
    /* shares of live features: persist and disappear of the parent's live
     * features, persist and emerge of the child's live features */
    double share_parent_persist, share_disappear, share_child_persist, share_emerge;
} ml_track_edge;
/* best: A = parent, B = child. tau in (0, 1]. */
int ml_track_classify(const ml_best *best, double tau, ml_track_edge *out);
void ml_track_edge_free(ml_track_edge *e);

/* ---- feature flow traces (consistency-filtered) ----------------------------- */
/* For each sample (a sequence of T token rows seen by two models), every
 * feature active in the sample has its activation sequence L2-normalised;
 * an A feature's match on the sample is the active B feature with the
 * smallest mean absolute difference, if that is <= mad_threshold. The
 * mapping A -> B is kept when one partner wins on >= consistency of the
 * samples where the A feature fired (and on >= min_samples of them).
 * A features are split over the ranks (1-D); all ranks add every sample. */
typedef struct {
    int64_t n_a, n_b;
    double mad_threshold; /* 0 = 0.05 */
    double consistency;   /* 0 = 0.8 */
    int64_t min_samples;  /* 0 = 1 */
    double tie_tol;       /* candidates whose mean absolute difference is within tie_tol of the
                           * smallest are tied; the lowest B feature index wins. 0 = 1e-6; < 0 = exact */
} ml_flow_config;
typedef struct ml_flow ml_flow;
int ml_flow_create(MPI_Comm comm, const ml_flow_config *cfg, ml_flow **out);
void ml_flow_destroy(ml_flow **f);
/* One sample: A and B hold the same T rows, full width. Local. */
int ml_flow_add_sample(ml_flow *f, const ml_fcodes *A, const ml_fcodes *B);
/* Collective. partner (n_a): the kept B partner or -1; support (n_a): the
 * share of active samples won by the most frequent partner (wins of the most
 * frequent winner / samples where the A feature fired; 0 if it never fired;
 * ties between partners with equal wins go to the lowest index); active (n_a,
 * may be NULL): samples where the A feature fired. */
int ml_flow_result(ml_flow *f, int32_t *partner, float *support, int64_t *active);
/* Local, after samples: sample matches of this rank's A features decided
 * among tied candidates (more than one within tie_tol of the best). */
int64_t ml_flow_tied(const ml_flow *f);
/* Chain per-edge maps model k -> k+1 into traces. maps[k] (n_feat[k]).
 * A trace starts at a feature that is no earlier feature's partner and has a
 * partner itself; traces (n_traces, n_models) get feature ids, -1 where the
 * chain has not started or has ended. *traces is ml_malloc'd. */
int ml_flow_traces(int n_models, const int64_t *n_feat, const int32_t *const *maps, int32_t **traces,
                   int64_t *n_traces);

/* ---- calibration: candidate pairs, block statistics, bootstrap ------------- */
/* Collective, after ml_corr_finalize: the union of every live A feature's k
 * best B partners and every live B feature's k best A partners (by r, ties
 * to the smaller index), sorted by (a, b), unique, on every rank. k in [1, 64]. */
int ml_corr_candidates(ml_corr *c, int k, ml_pair **pairs, int64_t *npairs);

/* Per-block sufficient statistics of one comparison A vs B over a stream of
 * n_tokens rows cut into blocks of block_tokens contiguous rows (the last
 * may be shorter): per block the row count, each feature's sum and sum of
 * squares (both sides) and the cross sum of every candidate pair. Memory:
 * (2 n_a + 2 n_b + npairs) x blocks doubles on every rank. A bootstrap
 * resample is then a weighted sum of block statistics (docs/modules/features.md). */
typedef struct ml_bstats ml_bstats;
/* Collective. pairs sorted by a (ml_corr_candidates). */
int ml_bstats_create(MPI_Comm comm, int64_t n_a, int64_t n_b, const ml_pair *pairs, int64_t npairs, int64_t n_tokens,
                     int64_t block_tokens, ml_bstats **out);
void ml_bstats_destroy(ml_bstats **s);
/* Local: rows [row0, row0 + A->n) of the stream, full width on both sides.
 * Every rank adds every row; a rank keeps only blocks k with k mod P = rank. */
int ml_bstats_add(ml_bstats *s, int64_t row0, const ml_fcodes *A, const ml_fcodes *B);
/* Collective: sum the blocks over the ranks (exact: one contributor per
 * block); checks that every row was added; sets the full-data dead flags. */
int ml_bstats_reduce(ml_bstats *s);
int64_t ml_bstats_blocks(const ml_bstats *s);
int64_t ml_bstats_pairs(const ml_bstats *s);
const uint8_t *ml_bstats_dead(const ml_bstats *s, int side); /* side 0 = A (n_a), 1 = B (n_b) */
/* Local: each feature's best r over its candidate pairs under block weights
 * w (blocks; NULL = every block once, the full data). a_best (n_a), b_best
 * (n_b); 0 for a dead feature or when no candidate has r > 0. */
int ml_bstats_best(const ml_bstats *s, const double *w, double *a_best, double *b_best);
/* Weights of resample k: n_blocks draws with replacement from an ml_rng
 * seeded with (seed, stream k + 1); w (n_blocks) = times each block drawn. */
void ml_boot_weights(uint64_t seed, int64_t k, int64_t n_blocks, double *w);

/* Calibrated shares of one edge parent (A) -> child (B) at each tau. */
enum {
    ML_CALIB_PERSIST = 0,  /* share of tracked parent features with best >= tau (main) */
    ML_CALIB_EMERGE,       /* share of tracked child features with best < tau (main) */
    ML_CALIB_DISAPPEAR,    /* 1 - persist */
    ML_CALIB_CEILING,      /* persist share of the replica comparison (ceiling) */
    ML_CALIB_FLOOR,        /* persist share under no correspondence (floor) */
    ML_CALIB_NORMALISED,   /* (persist - floor) / (ceiling - floor); NAN if ceiling <= floor */
    ML_CALIB_CEILING_CHILD,/* persist share of the child's replica comparison (NAN without) */
    ML_CALIB_NQ
};
typedef struct {
    int n_tau;
    const double *tau;          /* (n_tau) */
    int64_t n_boot;             /* resamples B */
    uint64_t seed;
    const ml_bstats *main;      /* A = parent, B = child */
    const ml_bstats *floor;     /* A = parent, B = child without correspondence */
    const ml_bstats *ceiling;   /* NULL, or A = replica 0, B = replica 1 of one model */
    int ceiling_is_child;       /* the ceiling's model is the child (mask_child applies) */
    const ml_bstats *ceiling_child; /* NULL, or the child's replica 0 vs 1 */
    const uint8_t *mask_parent; /* (n_tau, n_a) 1 = tracked at tau (live, and stable if asked) */
    const uint8_t *mask_child;  /* (n_tau, n_b) */
} ml_calib_config;
typedef struct {
    int n_tau;
    int64_t n_boot;
    double *v;    /* (ML_CALIB_NQ, 3, n_tau): {full-data value, 2.5% and 97.5% percentile} */
    double *boot; /* (n_boot, ML_CALIB_NQ, n_tau) every resample's values */
} ml_calib_result;
/* Collective: the full-data values and B block-bootstrap resamples (resample
 * b on rank b mod P, every comparison under the same weights, so the
 * normalised persistence is computed per resample); percentile intervals
 * over the resamples, NAN unless the full-data value and >= 97.5% of the
 * resamples are defined. Identical for any number of ranks. */
int ml_calib_run(MPI_Comm comm, const ml_calib_config *cfg, ml_calib_result *out);
void ml_calib_result_free(ml_calib_result *r);

/* ---- tracking/<name>.h5 (format mergelens.tracking v1) ---------------------- */
typedef struct ml_h5 ml_h5;
/* Collective create (root attrs format, format_version, mergelens_version,
 * config (JSON, may be NULL), tau). Close with ml_h5_close. */
int ml_tracking_create(MPI_Comm comm, const char *path, const char *config_json, double tau, ml_h5 **out);
/* /edges/<name>: attrs parent, child, measure, tau; parent_{status,partner,
 * score}, child_{status,partner,score}, counts [6] int64, shares [4] f64. */
int ml_tracking_write_edge(ml_h5 *h, const char *name, const char *parent, const char *child, const char *measure,
                           const ml_track_edge *e);
/* <group>/{a_score,a_partner,a_dead,b_score,b_partner,b_dead}, attrs a_mean, b_mean. */
int ml_tracking_write_best(ml_h5 *h, const char *group, const ml_best *b);
/* /summary: edges (JSON attr), counts [n_edges, 6] int64, shares [n_edges, 4]. */
int ml_tracking_write_summary(ml_h5 *h, int n_edges, const char *const *names, const ml_track_edge *const *edges);
/* /traces/<name>: features [n_traces, n_models] int32, attr models (JSON list). */
int ml_tracking_write_traces(ml_h5 *h, const char *name, int n_models, const char *const *models,
                             const int32_t *traces, int64_t n_traces);
/* Collective: the full r matrix as dataset `name` [n_a, n_b] float32,
 * chunked by chunk_rows rows (0 = 256). Each grid row's blocks are gathered
 * slab by slab to one rank, which writes them (memory: chunk_rows x n_b). */
int ml_corr_write_matrix(ml_corr *c, ml_h5 *h, const char *name, int64_t chunk_rows);

/* ---- one comparison from two code streams (for `mergelens compare`) -------- */
/* A stream of codes, e.g. the SAE module encoding a model's activations.
 * next() fills *out with the next chunk of at most max_rows token rows that
 * covers at least features [f0, f0 + nf) (it may give the full width) and,
 * when asked (tokens != NULL), the chunk's token ids; out->n == 0 ends the
 * stream. The arrays must stay valid until the next call. Both streams of a
 * comparison walk the same token positions with the same chunking, and
 * every rank receives the same rows. */
typedef struct {
    int (*next)(void *ctx, int64_t f0, int64_t nf, int64_t max_rows, ml_fcodes *out, const int32_t **tokens);
    void *ctx;
    int64_t n_features;
    int64_t n_rows; /* total token rows when known (progress display), else 0 */
} ml_codes_stream;

typedef struct {
    int64_t max_rows;         /* rows per chunk; 0 = 16384 */
    ml_corr_path path;        /* activation correlation path (AUTO) */
    int grid_rows, grid_cols; /* 0 = MPI_Dims_create */
    int64_t vocab;            /* > 0: token-profile correlation too (streams give token ids) */
    const float *dec_a, *dec_b; /* decoder rows (n_a, d_in), (n_b, d_in), replicated; NULL = skip */
    int64_t d_in;
    const float *gram;        /* (d_in, d_in) logit Gram matrix (ml_logit_gram); NULL = skip */
    /* logit cosine across two models (ml_logit_cosine_best); used instead of
     * gram when both are set. Decoders logit_dec_a (n_a, logit_d_a), ... */
    const ml_logit_map *logit_a, *logit_b;
    const float *logit_dec_a, *logit_dec_b;
    int64_t logit_d_a, logit_d_b;
    int logit_center;
    double match_floor;       /* one-to-one matching on pairs with r >= floor; 0 = 0.2; > 1 = skip */
    int64_t max_component;    /* see ml_assign_pairs; 0 = 8192 */
    int n_cand;               /* > 0: also return each feature's n_cand best activation partners (cand) */
    ml_h5 *matrix_file;       /* non-NULL: write the full r matrix there ... */
    const char *matrix_name;  /* ... as this dataset */
} ml_compare_config;

typedef struct {
    int64_t n_tokens, n_common_ids;
    double match_floor;       /* floor actually used (raised when a component was too large) */
    int has_one_to_one, has_token_profile, has_decoder, has_logit;
    ml_best activation;       /* max matching on Pearson r over token positions */
    ml_best one_to_one;       /* one-to-one matching on the same r */
    ml_best token_profile;    /* Pearson r of per-token-id mean activations */
    ml_best decoder;          /* decoder-direction cosine */
    ml_best logit;            /* logit-weight cosine */
    ml_pair *cand;            /* (n_cand) ml_corr_candidates of the activation r (cfg.n_cand > 0) */
    int64_t n_cand;
} ml_compare_result;

/* Collective: stream both code sources once and compute every requested
 * measure. Memory: one (na, nb) block of doubles at a time plus the chunks
 * and the token profiles. */
int ml_compare_run(MPI_Comm comm, const ml_compare_config *cfg, ml_codes_stream *a, ml_codes_stream *b,
                   ml_compare_result *out);
void ml_compare_result_free(ml_compare_result *r);
/* Collective: /edges/<edge> with the statuses of the activation max matching
 * (ml_tracking_write_edge) and one best group per computed measure:
 * activation, activation_1to1, token_profile, decoder_cos, logit_cos. The
 * classified edge is returned in *e (may be NULL). */
int ml_tracking_write_compare(ml_h5 *h, const char *edge, const char *parent, const char *child, double tau,
                              const ml_compare_result *r, ml_track_edge *e);

#endif
