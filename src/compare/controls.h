/* Private helpers of the compare module for the controls of an edge (not installed). */
#ifndef MERGELENS_COMPARE_CONTROLS_H
#define MERGELENS_COMPARE_CONTROLS_H

#include "mergelens/compare.h"

/* Full-width CSR codes of one SAE on the edge's N rows, on every rank. */
typedef struct {
    int64_t n, F, nnz, cap;
    int64_t *row_ptr; /* (n + 1) */
    int32_t *col;     /* (nnz) */
    float *val;       /* (nnz) */
    int32_t *tok;     /* (n) token ids */
} ml_code_cache;
/* Collective: encode rows [row0, row0 + n) (n 0 = to the end) of acts_path. */
int ml_code_cache_build(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *acts_path,
                        const char *hook, int64_t row0, int64_t n, int64_t chunk, ml_code_cache *c);
void ml_code_cache_free(ml_code_cache *c);

/* A stream over a cache whose row t is cache row (t + shift) mod n (token ids
 * stay those of row t: the codes are moved against the tokens). Chunks end
 * at `cut` too (> 0), so that a shifted chunk never wraps; both streams of
 * one comparison must use the same cut. */
typedef struct {
    const ml_code_cache *cache;
    int64_t shift, cut, pos;
    ml_codes_stream stream;
} ml_cache_stream;
void ml_cache_stream_init(ml_cache_stream *s, const ml_code_cache *c, int64_t shift, int64_t cut);
/* The floor's circular shift of n rows: in [n/4, 3n/4), from (seed, edge name). */
int64_t ml_floor_shift(int64_t n, uint64_t seed, const char *edge);
/* out (F, d) = W (F, d) Q with Q a seeded random orthogonal (d, d) matrix
 * (Gaussian rows, Gram-Schmidt twice): same row norms and singular values. */
int ml_random_rotate(const float *W, int64_t F, int64_t d, uint64_t seed, float *out);

/* Collective: block statistics of A vs (B shifted by `shift`) over res's candidates. */
int ml_ctl_bstats(MPI_Comm comm, const ml_code_cache *A, const ml_code_cache *B, int64_t shift,
                  const ml_compare_result *res, int64_t block, ml_bstats **out);

typedef struct {
    int64_t rows_start, rows_end, n_blocks, shift;
    int rows_heldout;
    int64_t replicas_parent, replicas_child;
    char rows_note[4096];
    char ceiling_source[2200], ceiling_child_source[2200], floor_source[512];
} ml_ctl_info;
/* /edges/<edge>/<measure>/{ceiling_score, floor_score, child_ceiling_score,
 * child_floor_score} for every measure of main (NULL controls are skipped;
 * a missing ceiling is written as NAN). */
int ml_ctl_write_scores(ml_h5 *h, const char *edge, const ml_compare_result *main, const ml_compare_result *ceil,
                        const ml_compare_result *ceil_child, const ml_compare_result *floor);
/* /edges/<edge>/calibration (docs/FORMAT.md). */
int ml_ctl_write_calibration(ml_h5 *h, const char *edge, const ml_compare_opts *o, const ml_calib_result *cr,
                             const ml_ctl_info *info);

#endif
