/* features module plumbing: the 2-D process grid, the cross-rank best-partner
 * reduction, a small int64 -> double hash map, codes-chunk validation.
 *
 * Legend: A, B = the two dictionaries; n_a, n_b = their feature counts.
 */
#include "internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int ml_feat_grid_init(MPI_Comm comm, int64_t n_a, int64_t n_b, int grid_rows, int grid_cols, ml_feat_grid *g) {
    memset(g, 0, sizeof *g);
    g->comm = comm;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &g->rank));
    ML_CHECK_MPI(MPI_Comm_size(comm, &g->size));
    if (n_a <= 0 || n_b <= 0 || n_a > INT32_MAX || n_b > INT32_MAX)
        return ML_FAIL(ML_ERR_ARG, "feature counts must be in [1, 2^31): got n_a=%lld n_b=%lld", (long long)n_a,
                       (long long)n_b);
    int dims[2] = {grid_rows > 0 ? grid_rows : 0, grid_cols > 0 ? grid_cols : 0};
    if ((dims[0] && g->size % dims[0]) || (dims[1] && g->size % dims[1]) ||
        (dims[0] && dims[1] && dims[0] * dims[1] != g->size))
        return ML_FAIL(ML_ERR_ARG, "process grid %d x %d does not match %d ranks", grid_rows, grid_cols, g->size);
    ML_CHECK_MPI(MPI_Dims_create(g->size, 2, dims));
    g->pr = dims[0];
    g->pc = dims[1];
    /* more blocks than features would leave empty blocks: refuse */
    if (g->pr > n_a || g->pc > n_b)
        return ML_FAIL(ML_ERR_ARG, "process grid %d x %d is larger than the %lld x %lld feature matrix", g->pr,
                       g->pc, (long long)n_a, (long long)n_b);
    g->p = g->rank / g->pc;
    g->q = g->rank % g->pc;
    g->n_a = n_a;
    g->n_b = n_b;
    g->a0 = ml_feat_split(n_a, g->p, g->pr);
    g->na = ml_feat_split(n_a, g->p + 1, g->pr) - g->a0;
    g->b0 = ml_feat_split(n_b, g->q, g->pc);
    g->nb = ml_feat_split(n_b, g->q + 1, g->pc) - g->b0;
    return ML_OK;
}

int ml_best_alloc(ml_best *b, int64_t n_a, int64_t n_b) {
    memset(b, 0, sizeof *b);
    b->n_a = n_a;
    b->n_b = n_b;
    b->a_score = ml_calloc((size_t)n_a, sizeof(float));
    b->a_partner = ml_malloc(sizeof(int32_t) * (size_t)n_a);
    b->a_dead = ml_calloc((size_t)n_a, 1);
    b->b_score = ml_calloc((size_t)n_b, sizeof(float));
    b->b_partner = ml_malloc(sizeof(int32_t) * (size_t)n_b);
    b->b_dead = ml_calloc((size_t)n_b, 1);
    if (!b->a_score || !b->a_partner || !b->a_dead || !b->b_score || !b->b_partner || !b->b_dead) {
        ml_best_free(b);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int64_t i = 0; i < n_a; i++) b->a_partner[i] = -1;
    for (int64_t j = 0; j < n_b; j++) b->b_partner[j] = -1;
    return ML_OK;
}

void ml_best_free(ml_best *b) {
    if (!b) return;
    ml_free(b->a_score);
    ml_free(b->a_partner);
    ml_free(b->a_dead);
    ml_free(b->b_score);
    ml_free(b->b_partner);
    ml_free(b->b_dead);
    memset(b, 0, sizeof *b);
}

int ml_feat_cand_init(ml_feat_cand *c, int64_t n_a, int64_t n_b) {
    memset(c, 0, sizeof *c);
    c->n_a = n_a;
    c->n_b = n_b;
    c->a = ml_malloc(sizeof(ml_feat_vi) * (size_t)n_a);
    c->b = ml_malloc(sizeof(ml_feat_vi) * (size_t)n_b);
    c->a_dead = ml_calloc((size_t)n_a, 1);
    c->b_dead = ml_calloc((size_t)n_b, 1);
    if (!c->a || !c->b || !c->a_dead || !c->b_dead) {
        ml_feat_cand_free(c);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int64_t i = 0; i < n_a; i++) c->a[i] = (ml_feat_vi){-INFINITY, INT_MAX};
    for (int64_t j = 0; j < n_b; j++) c->b[j] = (ml_feat_vi){-INFINITY, INT_MAX};
    return ML_OK;
}

void ml_feat_cand_free(ml_feat_cand *c) {
    ml_free(c->a);
    ml_free(c->b);
    ml_free(c->a_dead);
    ml_free(c->b_dead);
    memset(c, 0, sizeof *c);
}

/* Row maximum (first index on ties) and per-column maxima of one row. */
#define ML_FEAT_SCAN_BODY                                                                   \
    double best = -INFINITY;                                                                \
    int64_t bj = -1;                                                                        \
    for (int64_t j = 0; j < nb; j++) {                                                      \
        if (dead_b[j]) continue;                                                            \
        double v = row[j];                                                                  \
        if (v > best) {                                                                     \
            best = v;                                                                       \
            bj = j;                                                                         \
        }                                                                                   \
        ml_feat_vi *cb = &c->b[b0 + j];                                                     \
        if (v > cb->v) {                                                                    \
            cb->v = v;                                                                      \
            cb->i = (int)ia;                                                                \
        }                                                                                   \
    }                                                                                       \
    if (bj >= 0 && best > c->a[ia].v) {                                                     \
        c->a[ia].v = best;                                                                  \
        c->a[ia].i = (int)(b0 + bj);                                                        \
    }

void ml_feat_cand_scan_d(ml_feat_cand *c, const double *row, int64_t ia, int64_t b0, int64_t nb,
                         const uint8_t *dead_b) {
    ML_FEAT_SCAN_BODY
}

void ml_feat_cand_scan_f(ml_feat_cand *c, const float *row, int64_t ia, int64_t b0, int64_t nb,
                         const uint8_t *dead_b) {
    ML_FEAT_SCAN_BODY
}

/* Fill one side of out from reduced candidates; returns the mean score. */
static double ml_feat_best_side(const ml_feat_vi *vi, const uint8_t *dead, int64_t n, float *score,
                                int32_t *partner, uint8_t *dead_out) {
    double sum = 0;
    int64_t live = 0;
    for (int64_t i = 0; i < n; i++) {
        dead_out[i] = dead[i];
        if (dead[i] || vi[i].v == -INFINITY) {
            score[i] = 0;
            partner[i] = -1;
        } else {
            score[i] = (float)vi[i].v;
            partner[i] = vi[i].i;
        }
        if (!dead[i]) {
            sum += score[i];
            live++;
        }
    }
    return live ? sum / (double)live : 0.0;
}

int ml_feat_cand_reduce(MPI_Comm comm, ml_feat_cand *c, ml_best *out) {
    ML_CHECK(ml_agree(comm, ml_best_alloc(out, c->n_a, c->n_b)));
    int rc = ML_OK;
    if (ml_mpi_allreduce(comm, MPI_IN_PLACE, c->a, (size_t)c->n_a, MPI_DOUBLE_INT, MPI_MAXLOC) != ML_OK ||
        ml_mpi_allreduce(comm, MPI_IN_PLACE, c->b, (size_t)c->n_b, MPI_DOUBLE_INT, MPI_MAXLOC) != ML_OK ||
        ml_mpi_allreduce(comm, MPI_IN_PLACE, c->a_dead, (size_t)c->n_a, MPI_UINT8_T, MPI_MAX) != ML_OK ||
        ml_mpi_allreduce(comm, MPI_IN_PLACE, c->b_dead, (size_t)c->n_b, MPI_UINT8_T, MPI_MAX) != ML_OK) {
        ml_best_free(out);
        rc = ML_FAIL(ML_ERR_MPI, "MPI_Allreduce of best partners (%lld + %lld features) failed", (long long)c->n_a,
                     (long long)c->n_b);
        return rc;
    }
    out->a_mean = ml_feat_best_side(c->a, c->a_dead, c->n_a, out->a_score, out->a_partner, out->a_dead);
    out->b_mean = ml_feat_best_side(c->b, c->b_dead, c->n_b, out->b_score, out->b_partner, out->b_dead);
    return ML_OK;
}

/* ---- hash map ------------------------------------------------------------ */
static inline uint64_t ml_feat_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

int ml_feat_hash_init(ml_feat_hash *h, int64_t cap_hint) {
    memset(h, 0, sizeof *h);
    int64_t cap = 1024;
    while (cap < 2 * cap_hint) cap *= 2;
    h->keys = ml_malloc(sizeof(int64_t) * (size_t)cap);
    h->vals = ml_malloc(sizeof(double) * (size_t)cap);
    if (!h->keys || !h->vals) {
        ml_feat_hash_free(h);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    memset(h->keys, 0xff, sizeof(int64_t) * (size_t)cap);
    h->cap = cap;
    return ML_OK;
}

void ml_feat_hash_free(ml_feat_hash *h) {
    ml_free(h->keys);
    ml_free(h->vals);
    memset(h, 0, sizeof *h);
}

static void ml_feat_hash_put(int64_t *keys, double *vals, int64_t cap, int64_t key, double v, int64_t *count) {
    uint64_t mask = (uint64_t)cap - 1, s = ml_feat_mix((uint64_t)key) & mask;
    while (keys[s] != -1 && keys[s] != key) s = (s + 1) & mask;
    if (keys[s] == -1) {
        keys[s] = key;
        vals[s] = v;
        (*count)++;
    } else {
        vals[s] += v;
    }
}

int ml_feat_hash_add(ml_feat_hash *h, int64_t key, double v) {
    if (2 * (h->count + 1) > h->cap) { /* grow to keep the load <= 1/2 */
        int64_t ncap = h->cap * 2, n = 0;
        int64_t *nk = ml_malloc(sizeof(int64_t) * (size_t)ncap);
        double *nv = ml_malloc(sizeof(double) * (size_t)ncap);
        if (!nk || !nv) {
            ml_free(nk);
            ml_free(nv);
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        memset(nk, 0xff, sizeof(int64_t) * (size_t)ncap);
        for (int64_t s = 0; s < h->cap; s++)
            if (h->keys[s] != -1) ml_feat_hash_put(nk, nv, ncap, h->keys[s], h->vals[s], &n);
        ml_free(h->keys);
        ml_free(h->vals);
        h->keys = nk;
        h->vals = nv;
        h->cap = ncap;
    }
    ml_feat_hash_put(h->keys, h->vals, h->cap, key, v, &h->count);
    return ML_OK;
}

static int ml_feat_cmp_i64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

int ml_feat_hash_sorted(ml_feat_hash *h, int64_t **keys, double **vals, int64_t *n) {
    /* compact (key, slot) pairs, sort keys, then gather values */
    int64_t m = h->count;
    int64_t *pairs = ml_malloc(sizeof(int64_t) * 2 * (size_t)(m ? m : 1));
    if (!pairs) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int64_t k = 0;
    for (int64_t s = 0; s < h->cap; s++)
        if (h->keys[s] != -1) {
            pairs[2 * k] = h->keys[s];
            pairs[2 * k + 1] = s;
            k++;
        }
    qsort(pairs, (size_t)m, 2 * sizeof(int64_t), ml_feat_cmp_i64);
    int64_t *ko = ml_malloc(sizeof(int64_t) * (size_t)(m ? m : 1));
    double *vo = ml_malloc(sizeof(double) * (size_t)(m ? m : 1));
    if (!ko || !vo) {
        ml_free(pairs);
        ml_free(ko);
        ml_free(vo);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int64_t i = 0; i < m; i++) {
        ko[i] = pairs[2 * i];
        vo[i] = h->vals[pairs[2 * i + 1]];
    }
    ml_free(pairs);
    memset(h->keys, 0xff, sizeof(int64_t) * (size_t)h->cap);
    h->count = 0;
    *keys = ko;
    *vals = vo;
    *n = m;
    return ML_OK;
}

int ml_feat_check_codes(const ml_fcodes *x, int64_t F, int64_t need0, int64_t needn, int64_t n_expect,
                        const char *what) {
    if (!x) return ML_FAIL(ML_ERR_ARG, "%s codes: NULL chunk", what);
    if (x->n < 0 || (n_expect >= 0 && x->n != n_expect))
        return ML_FAIL(ML_ERR_SHAPE, "%s codes: chunk has %lld rows, expected %lld", what, (long long)x->n,
                       (long long)n_expect);
    if (x->f0 < 0 || x->nf < 0 || x->f0 + x->nf > F)
        return ML_FAIL(ML_ERR_SHAPE, "%s codes: feature range [%lld, %lld) is outside the %lld features", what,
                       (long long)x->f0, (long long)(x->f0 + x->nf), (long long)F);
    if (x->f0 > need0 || x->f0 + x->nf < need0 + needn)
        return ML_FAIL(ML_ERR_SHAPE, "%s codes: chunk holds features [%lld, %lld) but this rank needs [%lld, %lld)",
                       what, (long long)x->f0, (long long)(x->f0 + x->nf), (long long)need0,
                       (long long)(need0 + needn));
    if (x->x) {
        if (x->ld < x->nf)
            return ML_FAIL(ML_ERR_SHAPE, "%s codes: dense row stride %lld < %lld features", what, (long long)x->ld,
                           (long long)x->nf);
    } else {
        if (!x->row_ptr || (x->n > 0 && x->row_ptr[x->n] > x->row_ptr[0] && (!x->col || !x->val)))
            return ML_FAIL(ML_ERR_ARG, "%s codes: neither dense values nor CSR arrays given", what);
        for (int64_t t = 0; t < x->n; t++)
            if (x->row_ptr[t + 1] < x->row_ptr[t])
                return ML_FAIL(ML_ERR_ARG, "%s codes: CSR row_ptr decreases at row %lld", what, (long long)t);
    }
    return ML_OK;
}
