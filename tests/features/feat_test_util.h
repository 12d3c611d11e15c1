/* Test helpers for the features module: synthetic codes, CSR conversion and
 * naive (two-pass, centred) reference implementations. */
#ifndef FEAT_TEST_UTIL_H
#define FEAT_TEST_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/features.h"

/* x (n, F): each entry fires with probability p, value in (0.1, 2.1) */
static inline void ft_sparse_codes(ml_rng *rng, int64_t n, int64_t F, double p, float *x) {
    for (int64_t k = 0; k < n * F; k++)
        x[k] = ml_rng_uniform(rng) < p ? (float)(0.1 + 2.0 * ml_rng_uniform(rng)) : 0.0f;
}

static inline void ft_dense_codes(ml_rng *rng, int64_t n, int64_t F, float *x) {
    for (int64_t k = 0; k < n * F; k++) x[k] = ml_rng_normal(rng) + 0.3f;
}

typedef struct {
    int64_t *row_ptr;
    int32_t *col;
    float *val;
} ft_csr;

/* CSR of the dense (n, F) matrix x restricted to columns [c0, c0+nc). */
static inline ft_csr ft_to_csr(const float *x, int64_t n, int64_t F, int64_t c0, int64_t nc) {
    ft_csr c;
    int64_t nnz = 0;
    for (int64_t t = 0; t < n; t++)
        for (int64_t f = c0; f < c0 + nc; f++) nnz += x[t * F + f] != 0.0f;
    c.row_ptr = malloc(sizeof(int64_t) * (size_t)(n + 1));
    c.col = malloc(sizeof(int32_t) * (size_t)(nnz + 1));
    c.val = malloc(sizeof(float) * (size_t)(nnz + 1));
    int64_t k = 0;
    c.row_ptr[0] = 0;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t f = c0; f < c0 + nc; f++)
            if (x[t * F + f] != 0.0f) {
                c.col[k] = (int32_t)(f - c0);
                c.val[k++] = x[t * F + f];
            }
        c.row_ptr[t + 1] = k;
    }
    return c;
}

static inline void ft_csr_free(ft_csr *c) {
    free(c->row_ptr);
    free(c->col);
    free(c->val);
}

/* Codes view of rows [t0, t0+n) of a dense (N, F) matrix (full width). */
static inline ml_fcodes ft_dense_view(const float *x, int64_t t0, int64_t n, int64_t F) {
    ml_fcodes c = {.n = n, .f0 = 0, .nf = F, .x = x + t0 * F, .ld = F};
    return c;
}

/* Codes view of rows [t0, t0+n) of a CSR (rows of the whole matrix). */
static inline ml_fcodes ft_csr_view(const ft_csr *c, int64_t t0, int64_t n, int64_t f0, int64_t nf) {
    ml_fcodes v = {.n = n, .f0 = f0, .nf = nf, .row_ptr = c->row_ptr + t0, .col = c->col, .val = c->val};
    return v;
}

/* Naive Pearson r (FA, FB) in double with centred two-pass sums; dead
 * features (zero variance) give 0 and set deadA / deadB. */
static inline void ft_naive_pearson(const float *X, int64_t n, int64_t FA, const float *Y, int64_t FB, double *r,
                                    uint8_t *deadA, uint8_t *deadB) {
    double *mx = calloc((size_t)FA, sizeof(double)), *my = calloc((size_t)FB, sizeof(double));
    double *sx = calloc((size_t)FA, sizeof(double)), *sy = calloc((size_t)FB, sizeof(double));
    for (int64_t t = 0; t < n; t++) {
        for (int64_t i = 0; i < FA; i++) mx[i] += X[t * FA + i] / (double)n;
        for (int64_t j = 0; j < FB; j++) my[j] += Y[t * FB + j] / (double)n;
    }
    for (int64_t t = 0; t < n; t++) {
        for (int64_t i = 0; i < FA; i++) sx[i] += (X[t * FA + i] - mx[i]) * (X[t * FA + i] - mx[i]);
        for (int64_t j = 0; j < FB; j++) sy[j] += (Y[t * FB + j] - my[j]) * (Y[t * FB + j] - my[j]);
    }
    for (int64_t i = 0; i < FA; i++) deadA[i] = sx[i] <= 1e-12 * (1 + mx[i] * mx[i]) * (double)n;
    for (int64_t j = 0; j < FB; j++) deadB[j] = sy[j] <= 1e-12 * (1 + my[j] * my[j]) * (double)n;
    for (int64_t i = 0; i < FA; i++)
        for (int64_t j = 0; j < FB; j++) {
            if (deadA[i] || deadB[j]) {
                r[i * FB + j] = 0;
                continue;
            }
            double s = 0;
            for (int64_t t = 0; t < n; t++) s += (X[t * FA + i] - mx[i]) * (Y[t * FB + j] - my[j]);
            r[i * FB + j] = s / sqrt(sx[i] * sy[j]);
        }
    free(mx);
    free(my);
    free(sx);
    free(sy);
}

/* Row and column argmax of r over live entries (first index on ties). */
static inline void ft_naive_best(const double *r, int64_t FA, int64_t FB, const uint8_t *deadA, const uint8_t *deadB,
                                 int32_t *a_arg, double *a_max, int32_t *b_arg, double *b_max) {
    for (int64_t i = 0; i < FA; i++) {
        a_arg[i] = -1;
        a_max[i] = 0;
    }
    for (int64_t j = 0; j < FB; j++) {
        b_arg[j] = -1;
        b_max[j] = 0;
    }
    for (int64_t i = 0; i < FA; i++)
        for (int64_t j = 0; j < FB; j++) {
            if (deadA[i] || deadB[j]) continue;
            double v = r[i * FB + j];
            if (a_arg[i] < 0 || v > a_max[i]) {
                a_max[i] = v;
                a_arg[i] = (int32_t)j;
            }
            if (b_arg[j] < 0 || v > b_max[j]) {
                b_max[j] = v;
                b_arg[j] = (int32_t)i;
            }
        }
}

/* Make the 1st, 2nd, ... allocation of f() fail until it succeeds: every
 * failure must return ML_ERR_NOMEM (or ML_ERR_REMOTE from a peer) and free
 * what it took. Prints and checks the number of failure points tried. */
static inline void ft_alloc_sweep(int (*f)(void), int min_points) {
    for (int n = 1; n < 10000; n++) {
        long live0 = ml_alloc_live();
        ml_alloc_fail_at(n);
        int rc = f();
        ml_alloc_fail_at(0);
        if (ml_alloc_live() != live0) fail_msg("allocation %d failing leaks %ld blocks", n, ml_alloc_live() - live0);
        if (rc == ML_OK) {
            printf("allocation-failure sweep: %d failure points, all clean\n", n - 1);
            if (n - 1 < min_points) fail_msg("only %d allocations: the sweep missed the pipeline", n - 1);
            return;
        }
        if (rc != ML_ERR_NOMEM) fail_msg("allocation %d failing gave %s: %s", n, ml_status_name(rc), ml_error_message());
    }
    fail_msg("the pipeline never succeeded");
}

#endif
