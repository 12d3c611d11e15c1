/* Private helpers shared by the features module's sources (not installed). */
#ifndef MERGELENS_FEATURES_INTERNAL_H
#define MERGELENS_FEATURES_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "mergelens/features.h"

/* 2-D process grid over the (n_a, n_b) feature matrix: rank = p * pc + q
 * owns A rows [a0, a0+na) (block p of pr) and B columns [b0, b0+nb) (block
 * q of pc). */
typedef struct {
    MPI_Comm comm;
    int rank, size, pr, pc, p, q;
    int64_t n_a, n_b, a0, na, b0, nb;
} ml_feat_grid;
int ml_feat_grid_init(MPI_Comm comm, int64_t n_a, int64_t n_b, int grid_rows, int grid_cols, ml_feat_grid *g);
/* Start of block k of K over n items (balanced). */
static inline int64_t ml_feat_split(int64_t n, int k, int K) { return n * k / K; }

/* Local best-partner candidates before the cross-rank reduction: one
 * (value, index) per feature of each side; features a rank does not own
 * stay at (-inf, INT32_MAX). */
typedef struct {
    double v;
    int i;
} ml_feat_vi;
typedef struct {
    int64_t n_a, n_b;
    ml_feat_vi *a, *b; /* (n_a), (n_b) */
    uint8_t *a_dead, *b_dead;
} ml_feat_cand;
int ml_feat_cand_init(ml_feat_cand *c, int64_t n_a, int64_t n_b);
void ml_feat_cand_free(ml_feat_cand *c);
/* Offer value v for the pair (A feature ia, B feature ib), both global. */
static inline void ml_feat_cand_offer(ml_feat_cand *c, int64_t ia, int64_t ib, double v) {
    if (v > c->a[ia].v) { c->a[ia].v = v; c->a[ia].i = (int)ib; }
    if (v > c->b[ib].v) { c->b[ib].v = v; c->b[ib].i = (int)ia; }
}
/* Offer a row of similarities of A feature ia (global) against B features
 * [b0, b0+nb); B features with dead_b[j] (local index) are skipped. */
void ml_feat_cand_scan_d(ml_feat_cand *c, const double *row, int64_t ia, int64_t b0, int64_t nb,
                         const uint8_t *dead_b);
void ml_feat_cand_scan_f(ml_feat_cand *c, const float *row, int64_t ia, int64_t b0, int64_t nb,
                         const uint8_t *dead_b);
/* Collective: MAXLOC over ranks (ties to the smallest index), OR of the dead
 * flags, then fill out (allocated here). */
int ml_feat_cand_reduce(MPI_Comm comm, ml_feat_cand *c, ml_best *out);

/* Open-addressing hash map int64 key (>= 0) -> double, grow-only. */
typedef struct {
    int64_t *keys; /* -1 = empty */
    double *vals;
    int64_t cap, count;
} ml_feat_hash;
int ml_feat_hash_init(ml_feat_hash *h, int64_t cap_hint);
void ml_feat_hash_free(ml_feat_hash *h);
int ml_feat_hash_add(ml_feat_hash *h, int64_t key, double v);
/* Move the entries into sorted arrays (keys ascending); the map is emptied.
 * *keys, *vals ml_malloc'd. */
int ml_feat_hash_sorted(ml_feat_hash *h, int64_t **keys, double **vals, int64_t *n);

/* Check a codes chunk: covers [f0, f0+nf) of a dictionary of F features,
 * has n rows (n_expect >= 0) and sane CSR pointers. what names it in errors. */
int ml_feat_check_codes(const ml_fcodes *x, int64_t F, int64_t need0, int64_t needn, int64_t n_expect,
                        const char *what);

/* 1/sqrt(N s2 - s^2) for a feature with sums s, s2 over N tokens; 0 when
 * the variance is zero up to rounding (never fires, or constant): dead. */
static inline double ml_feat_inv_sd(double N, double s, double s2, uint8_t *dead) {
    double var = N * s2 - s * s;
    *dead = !(var > 1e-9 * N * s2) || s2 == 0.0;
    return *dead ? 0.0 : 1.0 / sqrt(var);
}

/* ml_corr internals for the other sources of the module. */
const ml_feat_grid *ml_feat_corr_grid(const ml_corr *c);
int64_t ml_feat_corr_max_rows(const ml_corr *c);
void ml_feat_corr_dead(const ml_corr *c, const uint8_t **dead_a, const uint8_t **dead_b);

#endif
