/* Streaming Pearson engine against a naive double-loop reference: dense and
 * sparse paths, dead features, rank-count independence, token profiles,
 * diagonal correlation, bad input. Runs with 1, 2 and 4 ranks. */
#include <math.h>

#include "ml_test.h"
#include "feat_test_util.h"

/* Run a correlation over (n, FA) X and (n, FB) Y on comm, chunks of `chunk`
 * rows; csr != 0 passes CSR (only this rank's block columns when
 * block_only), else dense full-width views. r_full (FA, FB) gathered. */
static void run_corr(MPI_Comm comm, const float *X, const float *Y, int64_t n, int64_t FA, int64_t FB, int64_t chunk,
                     ml_corr_path path, int csr, int block_only, int gr, int gc, float *r_full, ml_best *best,
                     int64_t *dense_chunks, int64_t *sparse_chunks) {
    ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = chunk, .path = path, .grid_rows = gr, .grid_cols = gc};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(comm, &cfg, &c));
    int64_t a0, na, b0, nb;
    ml_corr_block(c, &a0, &na, &b0, &nb);
    ft_csr cx = ft_to_csr(X, n, FA, block_only ? a0 : 0, block_only ? na : FA);
    ft_csr cy = ft_to_csr(Y, n, FB, block_only ? b0 : 0, block_only ? nb : FB);
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        int64_t m = n - t0 < chunk ? n - t0 : chunk;
        ml_fcodes A, B;
        if (csr) {
            A = ft_csr_view(&cx, t0, m, block_only ? a0 : 0, block_only ? na : FA);
            B = ft_csr_view(&cy, t0, m, block_only ? b0 : 0, block_only ? nb : FB);
        } else {
            A = ft_dense_view(X, t0, m, FA);
            B = ft_dense_view(Y, t0, m, FB);
        }
        ML_ASSERT_OK(ml_corr_add(c, &A, &B));
    }
    assert_int_equal(ml_corr_tokens(c), n);
    ML_ASSERT_OK(ml_corr_finalize(c));
    ML_ASSERT_OK(ml_corr_gather(c, r_full));
    /* the local block view agrees with the gathered matrix */
    int64_t ld;
    const double *blk = ml_corr_r_block(c, &ld);
    for (int64_t i = 0; i < na; i++)
        for (int64_t j = 0; j < nb; j++) assert_true((float)blk[i * ld + j] == r_full[(a0 + i) * FB + b0 + j]);
    if (best) ML_ASSERT_OK(ml_corr_best(c, best));
    ml_corr_path_counts(c, dense_chunks, sparse_chunks);
    ml_corr_destroy(&c);
    assert_null(c);
    ft_csr_free(&cx);
    ft_csr_free(&cy);
}

static double max_diff_naive(const float *r, const double *ref, int64_t m) {
    double e = 0;
    for (int64_t k = 0; k < m; k++) e = fmax(e, fabs(r[k] - ref[k]));
    return e;
}

static void check_best(const ml_best *b, const double *ref, int64_t FA, int64_t FB, const uint8_t *dA,
                       const uint8_t *dB) {
    int32_t *aa = malloc(sizeof(int32_t) * FA), *ba = malloc(sizeof(int32_t) * FB);
    double *am = malloc(sizeof(double) * FA), *bm = malloc(sizeof(double) * FB);
    ft_naive_best(ref, FA, FB, dA, dB, aa, am, ba, bm);
    for (int64_t i = 0; i < FA; i++) {
        assert_int_equal(b->a_dead[i], dA[i]);
        assert_int_equal(b->a_partner[i], aa[i]);
        ML_ASSERT_CLOSE(b->a_score[i], am[i], 1e-5);
    }
    for (int64_t j = 0; j < FB; j++) {
        assert_int_equal(b->b_dead[j], dB[j]);
        assert_int_equal(b->b_partner[j], ba[j]);
        ML_ASSERT_CLOSE(b->b_score[j], bm[j], 1e-5);
    }
    free(aa);
    free(ba);
    free(am);
    free(bm);
}

static void test_naive_dense(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    const int64_t FA = 13, FB = 9, n = 50;
    ml_rng rng;
    ml_rng_seed(&rng, 7, 0);
    float *X = malloc(sizeof(float) * n * FA), *Y = malloc(sizeof(float) * n * FB), *r = malloc(sizeof(float) * FA * FB);
    ft_dense_codes(&rng, n, FA, X);
    ft_dense_codes(&rng, n, FB, Y);
    for (int64_t t = 0; t < n; t++) Y[t * FB + 4] = 0.7f * X[t * FA + 2] + 0.1f * Y[t * FB + 4]; /* a strong pair */
    double *ref = malloc(sizeof(double) * FA * FB);
    uint8_t dA[13], dB[9];
    ft_naive_pearson(X, n, FA, Y, FB, ref, dA, dB);
    ml_best best;
    int64_t dc = 0, sc = 0;
    run_corr(MPI_COMM_WORLD, X, Y, n, FA, FB, 7, ML_CORR_AUTO, 0, 0, 0, 0, r, &best, &dc, &sc);
    double err = max_diff_naive(r, ref, FA * FB);
    printf("dense vs naive: max |dr| = %.3g, r(2,4) = %.6f\n", err, r[2 * FB + 4]);
    assert_true(err < 1e-5);
    assert_true(r[2 * FB + 4] > 0.98f);
    assert_true(dc == 8 && sc == 0); /* dense data: AUTO took the dense path for all 8 chunks */
    check_best(&best, ref, FA, FB, dA, dB);
    assert_int_equal(best.a_partner[2], 4);
    ml_best_free(&best);
    free(X);
    free(Y);
    free(r);
    free(ref);
    assert_int_equal(ml_alloc_live(), live0);
}

static void test_sparse_vs_dense(void **state) {
    (void)state;
    const int64_t FA = 40, FB = 33, n = 300;
    ml_rng rng;
    ml_rng_seed(&rng, 11, 0);
    float *X = malloc(sizeof(float) * n * FA), *Y = malloc(sizeof(float) * n * FB);
    ft_sparse_codes(&rng, n, FA, 0.1, X);
    ft_sparse_codes(&rng, n, FB, 0.1, Y);
    for (int64_t t = 0; t < n; t++) /* B5 follows A3 */
        Y[t * FB + 5] = X[t * FA + 3] > 0 ? X[t * FA + 3] * 1.1f + (Y[t * FB + 5] > 0 ? 0.05f : 0.0f) : 0.0f;
    double *ref = malloc(sizeof(double) * FA * FB);
    uint8_t dA[40], dB[33];
    ft_naive_pearson(X, n, FA, Y, FB, ref, dA, dB);
    float *r[4];
    const ml_corr_path paths[4] = {ML_CORR_DENSE, ML_CORR_SPARSE, ML_CORR_DENSE, ML_CORR_SPARSE};
    const int csr[4] = {0, 1, 1, 0};
    for (int k = 0; k < 4; k++) {
        r[k] = malloc(sizeof(float) * FA * FB);
        ml_best best;
        int64_t dc = 0, sc = 0;
        run_corr(MPI_COMM_WORLD, X, Y, n, FA, FB, 64, paths[k], csr[k], 0, 0, 0, r[k], &best, &dc, &sc);
        double err = max_diff_naive(r[k], ref, FA * FB);
        printf("path %s input %s: max |r - naive| = %.3g\n", paths[k] == ML_CORR_DENSE ? "dense" : "sparse",
               csr[k] ? "csr" : "dense", err);
        assert_true(err < 1e-5);
        assert_true(paths[k] == ML_CORR_DENSE ? (dc == 5 && sc == 0) : (dc == 0 && sc == 5));
        check_best(&best, ref, FA, FB, dA, dB);
        ml_best_free(&best);
    }
    double e01 = 0;
    for (int64_t k = 0; k < FA * FB; k++) e01 = fmax(e01, fabs(r[0][k] - r[1][k]));
    printf("dense vs sparse path: max |dr| = %.3g\n", e01);
    assert_true(e01 < 1e-5);
    /* AUTO picks sparse at low density (pair density 0.01 * 0.01), dense at high */
    float *Xs = malloc(sizeof(float) * n * FA), *Ys = malloc(sizeof(float) * n * FB);
    ft_sparse_codes(&rng, n, FA, 0.01, Xs);
    ft_sparse_codes(&rng, n, FB, 0.01, Ys);
    int64_t dc, sc;
    run_corr(MPI_COMM_WORLD, Xs, Ys, n, FA, FB, 100, ML_CORR_AUTO, 1, 0, 0, 0, r[2], NULL, &dc, &sc);
    assert_true(dc == 0 && sc == 3);
    ft_sparse_codes(&rng, n, FA, 0.5, Xs);
    ft_sparse_codes(&rng, n, FB, 0.5, Ys);
    run_corr(MPI_COMM_WORLD, Xs, Ys, n, FA, FB, 100, ML_CORR_AUTO, 1, 0, 0, 0, r[2], NULL, &dc, &sc);
    assert_true(dc == 3 && sc == 0);
    for (int k = 0; k < 4; k++) free(r[k]);
    free(X);
    free(Y);
    free(Xs);
    free(Ys);
    free(ref);
}

static void test_dead_features(void **state) {
    (void)state;
    const int64_t FA = 10, FB = 8, n = 120;
    ml_rng rng;
    ml_rng_seed(&rng, 3, 0);
    float *X = malloc(sizeof(float) * n * FA), *Y = malloc(sizeof(float) * n * FB), *r = malloc(sizeof(float) * FA * FB);
    ft_sparse_codes(&rng, n, FA, 0.3, X);
    ft_sparse_codes(&rng, n, FB, 0.3, Y);
    for (int64_t t = 0; t < n; t++) {
        X[t * FA + 3] = 0.0f; /* never fires */
        X[t * FA + 7] = 1.5f; /* constant: zero variance */
        Y[t * FB + 5] = 0.0f; /* never fires */
    }
    for (int path = ML_CORR_DENSE; path <= ML_CORR_SPARSE; path++) {
        ml_best best;
        run_corr(MPI_COMM_WORLD, X, Y, n, FA, FB, 50, (ml_corr_path)path, 1, 0, 0, 0, r, &best, NULL, NULL);
        for (int64_t j = 0; j < FB; j++) {
            assert_true(r[3 * FB + j] == 0.0f);
            assert_true(r[7 * FB + j] == 0.0f);
        }
        for (int64_t i = 0; i < FA; i++) assert_true(r[i * FB + 5] == 0.0f);
        for (int64_t i = 0; i < FA; i++) {
            assert_int_equal(best.a_dead[i], i == 3 || i == 7);
            if (best.a_dead[i]) {
                assert_int_equal(best.a_partner[i], -1);
                assert_true(best.a_score[i] == 0.0f);
            } else {
                assert_true(best.a_partner[i] >= 0 && best.a_partner[i] != 5);
            }
        }
        for (int64_t j = 0; j < FB; j++) {
            assert_int_equal(best.b_dead[j], j == 5);
            assert_true(best.b_partner[j] != 3 && best.b_partner[j] != 7);
            assert_true((j == 5) == (best.b_partner[j] == -1));
        }
        ml_best_free(&best);
    }
    /* no tokens at all: every feature is dead */
    ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = 4};
    ml_corr *c = NULL;
    ml_best best;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cfg, &c));
    ML_ASSERT_OK(ml_corr_finalize(c));
    ML_ASSERT_OK(ml_corr_best(c, &best));
    for (int64_t i = 0; i < FA; i++) assert_true(best.a_dead[i] && best.a_partner[i] == -1);
    ml_best_free(&best);
    ml_corr_destroy(&c);
    free(X);
    free(Y);
    free(r);
}

/* Results on comm WORLD (grids P x 1, 1 x P, auto) equal the 1-rank result. */
static void test_rank_independence(void **state) {
    (void)state;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const int64_t FA = 37, FB = 29, n = 211;
    ml_rng rng;
    ml_rng_seed(&rng, 5, 0);
    float *X = malloc(sizeof(float) * n * FA), *Y = malloc(sizeof(float) * n * FB);
    ft_sparse_codes(&rng, n, FA, 0.15, X);
    ft_sparse_codes(&rng, n, FB, 0.15, Y);
    float *r1 = malloc(sizeof(float) * FA * FB), *rp = malloc(sizeof(float) * FA * FB);
    const int grids[3][2] = {{0, 0}, {size, 1}, {1, size}};
    for (int path = ML_CORR_DENSE; path <= ML_CORR_SPARSE; path++) {
        ml_best b1, bp;
        run_corr(MPI_COMM_SELF, X, Y, n, FA, FB, 40, (ml_corr_path)path, 0, 0, 0, 0, r1, &b1, NULL, NULL);
        for (int gi = 0; gi < 3; gi++)
            for (int block_only = 0; block_only <= 1; block_only++) {
                run_corr(MPI_COMM_WORLD, X, Y, n, FA, FB, 40, (ml_corr_path)path, block_only, block_only,
                         grids[gi][0], grids[gi][1], rp, &bp, NULL, NULL);
                double e = 0;
                for (int64_t k = 0; k < FA * FB; k++) e = fmax(e, fabs(r1[k] - rp[k]));
                if (path == ML_CORR_SPARSE) assert_true(e == 0.0); /* same summation order: bitwise */
                assert_true(e < 1e-6);
                assert_memory_equal(b1.a_partner, bp.a_partner, sizeof(int32_t) * FA);
                assert_memory_equal(b1.b_partner, bp.b_partner, sizeof(int32_t) * FB);
                for (int64_t i = 0; i < FA; i++) ML_ASSERT_CLOSE(b1.a_score[i], bp.a_score[i], 1e-6);
                for (int64_t j = 0; j < FB; j++) ML_ASSERT_CLOSE(b1.b_score[j], bp.b_score[j], 1e-6);
                ml_best_free(&bp);
            }
        ml_best_free(&b1);
    }
    free(X);
    free(Y);
    free(r1);
    free(rp);
}

static void test_pairs(void **state) {
    (void)state;
    const int64_t FA = 21, FB = 17, n = 90;
    ml_rng rng;
    ml_rng_seed(&rng, 9, 0);
    float *X = malloc(sizeof(float) * n * FA), *Y = malloc(sizeof(float) * n * FB);
    ft_dense_codes(&rng, n, FA, X);
    ft_dense_codes(&rng, n, FB, Y);
    for (int64_t t = 0; t < n; t++) X[t * FA + 4] = 0; /* dead */
    double *ref = malloc(sizeof(double) * FA * FB);
    uint8_t dA[21], dB[17];
    ft_naive_pearson(X, n, FA, Y, FB, ref, dA, dB);
    ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = 32};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cfg, &c));
    for (int64_t t0 = 0; t0 < n; t0 += 32) {
        int64_t m = n - t0 < 32 ? n - t0 : 32;
        ml_fcodes A = ft_dense_view(X, t0, m, FA), B = ft_dense_view(Y, t0, m, FB);
        ML_ASSERT_OK(ml_corr_add(c, &A, &B));
    }
    ML_ASSERT_FAILS(ml_corr_best(c, &(ml_best){0}), ML_ERR_ARG, "finalize");
    ML_ASSERT_OK(ml_corr_finalize(c));
    ml_fcodes A = ft_dense_view(X, 0, 1, FA), B = ft_dense_view(Y, 0, 1, FB);
    ML_ASSERT_FAILS(ml_corr_add(c, &A, &B), ML_ERR_ARG, "already finalized");
    for (int fl = 0; fl < 2; fl++) {
        double floor = fl ? -1.0 : 0.1;
        ml_pair *pairs = NULL;
        int64_t np = 0;
        ML_ASSERT_OK(ml_corr_pairs(c, floor, &pairs, &np));
        int64_t k = 0;
        for (int64_t i = 0; i < FA; i++)
            for (int64_t j = 0; j < FB; j++)
                if (!dA[i] && !dB[j] && ref[i * FB + j] >= floor) {
                    assert_true(k < np);
                    assert_int_equal(pairs[k].a, i);
                    assert_int_equal(pairs[k].b, j);
                    ML_ASSERT_CLOSE(pairs[k].r, ref[i * FB + j], 1e-5);
                    k++;
                }
        assert_int_equal(k, np);
        if (fl) assert_int_equal(np, (FA - 1) * FB);
        ml_free(pairs);
    }
    ml_corr_destroy(&c);
    free(X);
    free(Y);
    free(ref);
}

static void test_bad_input(void **state) {
    (void)state;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_corr_config cfg = {.n_a = 6, .n_b = 5, .max_rows = 4};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_SELF, &cfg, &c));
    float X[5 * 6] = {0}, Y[5 * 5] = {0};
    ml_fcodes A = ft_dense_view(X, 0, 3, 6), B = ft_dense_view(Y, 0, 2, 5);
    ML_ASSERT_FAILS(ml_corr_add(c, &A, &B), ML_ERR_SHAPE, "chunk has 2 rows, expected 3");
    A.n = B.n = 5;
    ML_ASSERT_FAILS(ml_corr_add(c, &A, &B), ML_ERR_SHAPE, "exceeds max_rows 4");
    A.n = B.n = 2;
    A.f0 = 1;
    A.nf = 5;
    ML_ASSERT_FAILS(ml_corr_add(c, &A, &B), ML_ERR_SHAPE, "needs [0, 6)");
    int64_t rp[3] = {0, 1, 2};
    int32_t col[2] = {0, 9};
    float val[2] = {1, 1};
    ml_fcodes S = {.n = 2, .f0 = 0, .nf = 6, .row_ptr = rp, .col = col, .val = val};
    B = ft_dense_view(Y, 0, 2, 5);
    ML_ASSERT_FAILS(ml_corr_add(c, &S, &B), ML_ERR_ARG, "CSR column 9 at row 1 is outside [0, 6)");
    /* the failed chunk poisoned the sums */
    ML_ASSERT_FAILS(ml_corr_finalize(c), ML_ERR_ARG, "earlier chunk failed");
    ml_corr_destroy(&c);
    ml_corr_destroy(&c); /* tolerates NULL */
    cfg.max_rows = 0;
    ML_ASSERT_FAILS(ml_corr_create(MPI_COMM_SELF, &cfg, &c), ML_ERR_ARG, "max_rows must be positive");
    cfg.max_rows = 4;
    cfg.grid_rows = 3;
    cfg.grid_cols = 1;
    ML_ASSERT_FAILS(ml_corr_create(MPI_COMM_SELF, &cfg, &c), ML_ERR_ARG, "does not match 1 ranks");
    /* NaN codes are reported at finalize, naming the feature */
    cfg.grid_rows = 0;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_SELF, &cfg, &c));
    X[2] = NAN;
    A = ft_dense_view(X, 0, 2, 6);
    ML_ASSERT_OK(ml_corr_add(c, &A, &B));
    ML_ASSERT_FAILS(ml_corr_finalize(c), ML_ERR_NUMERIC, "dictionary A feature 2");
    ml_corr_destroy(&c);
    (void)size;
}

/* Token profiles of two different token streams vs naive per-id means. */
static void test_token_profile(void **state) {
    (void)state;
    const int64_t FA = 12, FB = 10, V = 25, nA = 400, nB = 300;
    ml_rng rng;
    ml_rng_seed(&rng, 21, 0);
    float *X = malloc(sizeof(float) * nA * FA), *Y = malloc(sizeof(float) * nB * FB);
    int32_t *tokA = malloc(sizeof(int32_t) * nA), *tokB = malloc(sizeof(int32_t) * nB);
    ft_sparse_codes(&rng, nA, FA, 0.2, X);
    ft_sparse_codes(&rng, nB, FB, 0.2, Y);
    for (int64_t t = 0; t < nA; t++) tokA[t] = (int32_t)ml_rng_below(&rng, 16);     /* ids 0..15 */
    for (int64_t t = 0; t < nB; t++) tokB[t] = (int32_t)(6 + ml_rng_below(&rng, 19)); /* ids 6..24 */
    for (int64_t t = 0; t < nA; t++) X[t * FA + 1] = tokA[t] % 3 == 0 ? 1.0f + 0.1f * (float)(tokA[t] % 5) : 0.0f;
    for (int64_t t = 0; t < nB; t++) Y[t * FB + 2] = tokB[t] % 3 == 0 ? 2.0f + 0.2f * (float)(tokB[t] % 5) : 0.0f;
    /* naive: means per id over the shared ids */
    double *mA = calloc(V * FA, sizeof(double)), *mB = calloc(V * FB, sizeof(double));
    int64_t cA[25] = {0}, cB[25] = {0};
    for (int64_t t = 0; t < nA; t++) {
        cA[tokA[t]]++;
        for (int64_t f = 0; f < FA; f++) mA[tokA[t] * FA + f] += X[t * FA + f];
    }
    for (int64_t t = 0; t < nB; t++) {
        cB[tokB[t]]++;
        for (int64_t f = 0; f < FB; f++) mB[tokB[t] * FB + f] += Y[t * FB + f];
    }
    float *PA = malloc(sizeof(float) * V * FA), *PB = malloc(sizeof(float) * V * FB);
    int64_t nc = 0;
    for (int64_t v = 0; v < V; v++)
        if (cA[v] && cB[v]) {
            for (int64_t f = 0; f < FA; f++) PA[nc * FA + f] = (float)(mA[v * FA + f] / cA[v]);
            for (int64_t f = 0; f < FB; f++) PB[nc * FB + f] = (float)(mB[v * FB + f] / cB[v]);
            nc++;
        }
    double *ref = malloc(sizeof(double) * FA * FB);
    uint8_t dA[12], dB[10];
    ft_naive_pearson(PA, nc, FA, PB, FB, ref, dA, dB);

    /* pass 0: vocabulary 25 (dense sums); pass 1: a declared vocabulary of 2^20 ids (hashed sums) */
    for (int pass = 0; pass < 2; pass++) {
        const int64_t VV = pass ? (int64_t)1 << 20 : V;
        ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = 4}; /* several chunks of shared ids */
        ml_corr *c = NULL;
        ml_tprof *pa = NULL, *pb = NULL;
        ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cfg, &c));
        ML_ASSERT_OK(ml_tprof_create(c, 0, VV, &pa));
        ML_ASSERT_OK(ml_tprof_create(c, 1, VV, &pb));
        ft_csr cx = ft_to_csr(X, nA, FA, 0, FA);
        for (int64_t t0 = 0; t0 < nA; t0 += 64) { /* A as CSR, B as dense */
            int64_t m = nA - t0 < 64 ? nA - t0 : 64;
            ml_fcodes A = ft_csr_view(&cx, t0, m, 0, FA);
            ML_ASSERT_OK(ml_tprof_add(pa, tokA + t0, &A));
        }
        ml_fcodes B = ft_dense_view(Y, 0, nB, FB);
        ML_ASSERT_OK(ml_tprof_add(pb, tokB, &B));
        int32_t bad = 25;
        ml_fcodes B1 = ft_dense_view(Y, 0, 1, FB);
        if (!pass)
            ML_ASSERT_FAILS(ml_tprof_add(pb, &bad, &B1), ML_ERR_ARG, "token id 25 at row 0 is outside the vocabulary");
        int64_t ncom = 0;
        ML_ASSERT_OK(ml_tprof_feed(pa, pb, c, &ncom));
        assert_int_equal(ncom, nc);
        ML_ASSERT_OK(ml_corr_finalize(c));
        float *r = malloc(sizeof(float) * FA * FB);
        ML_ASSERT_OK(ml_corr_gather(c, r));
        double e = max_diff_naive(r, ref, FA * FB);
        printf("token profile (%s sums): %lld shared ids, max |r - naive| = %.3g, r(1,2) = %.4f\n",
               pass ? "hashed" : "dense", (long long)nc, e, r[1 * FB + 2]);
        assert_true(e < 1e-5);
        assert_true(r[1 * FB + 2] > 0.9f);
        ML_ASSERT_FAILS(ml_tprof_add(pa, tokA, &B1), ML_ERR_ARG, "already fed");
        ml_tprof_destroy(&pa);
        ml_tprof_destroy(&pb);
        ml_corr_destroy(&c);
        ft_csr_free(&cx);
        free(r);
    }
    free(X);
    free(Y);
    free(tokA);
    free(tokB);
    free(mA);
    free(mB);
    free(PA);
    free(PB);
    free(ref);
}

static void test_diagcorr(void **state) {
    (void)state;
    const int64_t F = 9, n = 150;
    ml_rng rng;
    ml_rng_seed(&rng, 13, 0);
    float *X1 = malloc(sizeof(float) * n * F), *X2 = malloc(sizeof(float) * n * F);
    ft_sparse_codes(&rng, n, F, 0.3, X1);
    for (int64_t k = 0; k < n * F; k++) X2[k] = X1[k] > 0 ? X1[k] * (1.0f + 0.3f * ml_rng_normal(&rng)) : 0.0f;
    for (int64_t t = 0; t < n; t++) X2[t * F + 6] = 0; /* gone on source 2 */
    ml_diagcorr *d = NULL;
    ML_ASSERT_OK(ml_diagcorr_create(F, &d));
    ft_csr c2 = ft_to_csr(X2, n, F, 0, F);
    for (int64_t t0 = 0; t0 < n; t0 += 40) {
        int64_t m = n - t0 < 40 ? n - t0 : 40;
        ml_fcodes A = ft_dense_view(X1, t0, m, F), B = ft_csr_view(&c2, t0, m, 0, F);
        ML_ASSERT_OK(ml_diagcorr_add(d, &A, &B));
    }
    double r[9];
    uint8_t dead[9];
    ML_ASSERT_OK(ml_diagcorr_result(d, r, dead));
    for (int64_t f = 0; f < F; f++) {
        /* naive: column f of each */
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        for (int64_t t = 0; t < n; t++) {
            a[t] = X1[t * F + f];
            b[t] = X2[t * F + f];
        }
        double ref;
        uint8_t da, db;
        ft_naive_pearson(a, n, 1, b, 1, &ref, &da, &db);
        assert_int_equal(dead[f], da || db);
        ML_ASSERT_CLOSE(r[f], ref, 1e-6);
        free(a);
        free(b);
    }
    assert_true(dead[6] && r[6] == 0.0);
    ml_diagcorr_destroy(&d);
    ft_csr_free(&c2);
    free(X1);
    free(X2);
}

/* One whole pipeline on MPI_COMM_SELF for the allocation-failure sweep. */
static int sweep_corr(void) {
    enum { FA = 9, FB = 7, N = 40, V = 11 };
    static float X[N * FA], Y[N * FB];
    static int32_t tok[N];
    static int init = 0;
    if (!init) {
        ml_rng rng;
        ml_rng_seed(&rng, 77, 0);
        ft_sparse_codes(&rng, N, FA, 0.3, X);
        ft_sparse_codes(&rng, N, FB, 0.3, Y);
        for (int t = 0; t < N; t++) tok[t] = t % V;
        init = 1;
    }
    ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = 16};
    ml_corr *c = NULL, *c2 = NULL;
    ml_tprof *pa = NULL, *pb = NULL;
    ml_diagcorr *d = NULL;
    ml_best best = {0};
    ml_pair *pairs = NULL;
    int64_t np, nc;
    float r[FA * FB];
    double dr[FA];
    uint8_t dd[FA];
    int rc = ML_OK;
    ML_CHECK_GOTO(ml_corr_create(MPI_COMM_SELF, &cfg, &c), done);
    ML_CHECK_GOTO(ml_tprof_create(c, 0, V, &pa), done);
    ML_CHECK_GOTO(ml_tprof_create(c, 1, V, &pb), done);
    ML_CHECK_GOTO(ml_diagcorr_create(FB, &d), done);
    for (int t0 = 0; t0 < N; t0 += 16) {
        int m = N - t0 < 16 ? N - t0 : 16;
        ml_fcodes A = ft_dense_view(X, t0, m, FA), B = ft_dense_view(Y, t0, m, FB);
        ML_CHECK_GOTO(ml_corr_add(c, &A, &B), done); /* AUTO: dense for the first chunks */
        ML_CHECK_GOTO(ml_tprof_add(pa, tok + t0, &A), done);
        ML_CHECK_GOTO(ml_tprof_add(pb, tok + t0, &B), done);
        ML_CHECK_GOTO(ml_diagcorr_add(d, &B, &B), done);
    }
    ML_CHECK_GOTO(ml_corr_finalize(c), done);
    ML_CHECK_GOTO(ml_corr_best(c, &best), done);
    ML_CHECK_GOTO(ml_corr_pairs(c, 0.0, &pairs, &np), done);
    ML_CHECK_GOTO(ml_corr_gather(c, r), done);
    ML_CHECK_GOTO(ml_diagcorr_result(d, dr, dd), done);
    cfg.path = ML_CORR_SPARSE;
    ML_CHECK_GOTO(ml_corr_create(MPI_COMM_SELF, &cfg, &c2), done);
    ML_CHECK_GOTO(ml_tprof_feed(pa, pb, c2, &nc), done);
done:
    ml_best_free(&best);
    ml_free(pairs);
    ml_corr_destroy(&c);
    ml_corr_destroy(&c2);
    ml_tprof_destroy(&pa);
    ml_tprof_destroy(&pb);
    ml_diagcorr_destroy(&d);
    return rc;
}

static void test_alloc_failures(void **state) {
    (void)state;
    ft_alloc_sweep(sweep_corr, 20);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_naive_dense),      cmocka_unit_test(test_sparse_vs_dense),
        cmocka_unit_test(test_dead_features),    cmocka_unit_test(test_rank_independence),
        cmocka_unit_test(test_pairs),            cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_token_profile),    cmocka_unit_test(test_diagcorr),
        cmocka_unit_test(test_alloc_failures),
    };
    return ml_test_run(argc, argv, "features_corr", tests, sizeof tests / sizeof tests[0]);
}
