/* Calibration engine: candidate pairs, block statistics and the block
 * bootstrap against naive float64 recomputations; flow tie tolerance.
 *
 * Data: A (N, FA) sparse codes; B (N, FB) where B feature j copies A feature
 * j (j < FA/2) with noise or is independent. Reference: the resampled token
 * sequence built explicitly (blocks concatenated in draw order), Pearson r
 * of every pair in double (ft_naive_pearson), best per feature, shares.
 */
#include "../common/ml_test.h"
#include "feat_test_util.h"

#define N 3000
#define FA 24
#define FB 20
#define BLOCK 128

static float gA[N * FA], gB[N * FB];

static void make_codes(void) {
    ml_rng r;
    ml_rng_seed(&r, 11, 0);
    ft_sparse_codes(&r, N, FA, 0.2, gA);
    ft_sparse_codes(&r, N, FB, 0.2, gB);
    for (int64_t t = 0; t < N; t++)
        for (int j = 0; j < FA / 2 && j < FB; j++) { /* B j = A j (noisy, sometimes dropped) */
            float a = gA[t * FA + j];
            gB[t * FB + j] = (a > 0 && ml_rng_uniform(&r) < 0.85) ? a * (float)(1 + 0.3 * ml_rng_normal(&r)) : 0.0f;
            if (gB[t * FB + j] < 0) gB[t * FB + j] = 0;
        }
    for (int64_t t = 0; t < N; t++) gB[t * FB + FB - 1] = 0; /* a dead B feature */
}

/* ml_corr on all rows (chunks of 500), then candidates. */
static void corr_and_candidates(int k, ml_best *best, ml_pair **cand, int64_t *nc) {
    ml_corr_config cc = {.n_a = FA, .n_b = FB, .max_rows = 500};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cc, &c));
    for (int64_t t0 = 0; t0 < N; t0 += 500) {
        ml_fcodes a = ft_dense_view(gA, t0, 500, FA), b = ft_dense_view(gB, t0, 500, FB);
        ML_ASSERT_OK(ml_corr_add(c, &a, &b));
    }
    ML_ASSERT_OK(ml_corr_finalize(c));
    ML_ASSERT_OK(ml_corr_best(c, best));
    ML_ASSERT_OK(ml_corr_candidates(c, k, cand, nc));
    ml_corr_destroy(&c);
}

static ml_bstats *make_stats(const ml_pair *cand, int64_t nc) {
    ml_bstats *s = NULL;
    ML_ASSERT_OK(ml_bstats_create(MPI_COMM_WORLD, FA, FB, cand, nc, N, BLOCK, &s));
    for (int64_t t0 = 0; t0 < N; t0 += 700) { /* chunks that straddle blocks */
        int64_t n = N - t0 < 700 ? N - t0 : 700;
        ml_fcodes a = ft_dense_view(gA, t0, n, FA);
        ft_csr cb = ft_to_csr(gB + t0 * FB, n, FB, 0, FB);
        ml_fcodes b = ft_csr_view(&cb, 0, n, 0, FB);
        ML_ASSERT_OK(ml_bstats_add(s, t0, &a, &b));
        ft_csr_free(&cb);
    }
    ML_ASSERT_OK(ml_bstats_reduce(s));
    return s;
}

/* the resampled rows: blocks drawn by w (times each block), in block order */
static int64_t resample_rows(const double *w, int64_t K, float *xa, float *xb) {
    int64_t m = 0;
    for (int64_t k = 0; k < K; k++)
        for (int rep = 0; rep < (int)w[k]; rep++)
            for (int64_t t = k * BLOCK; t < (k + 1) * BLOCK && t < N; t++, m++) {
                memcpy(xa + m * FA, gA + t * FA, sizeof(float) * FA);
                memcpy(xb + m * FB, gB + t * FB, sizeof(float) * FB);
            }
    return m;
}

/* candidates: each live feature's k best partners (by the full matrix) are in the list */
static void test_candidates(void **state) {
    (void)state;
    make_codes();
    ml_best best;
    ml_pair *cand = NULL;
    int64_t nc = 0;
    corr_and_candidates(3, &best, &cand, &nc);
    double *r = malloc(sizeof(double) * FA * FB);
    uint8_t da[FA], db[FB];
    ft_naive_pearson(gA, N, FA, gB, FB, r, da, db);
    assert_true(db[FB - 1]);
    for (int i = 0; i < FA; i++) { /* the 3 largest r of row i must be candidates */
        double prev = INFINITY;
        for (int q = 0; q < 3; q++) {
            int bj = -1;
            for (int j = 0; j < FB; j++)
                if (!db[j] && r[i * FB + j] < prev && (bj < 0 || r[i * FB + j] > r[i * FB + bj])) bj = j;
            prev = r[i * FB + bj];
            int found = 0;
            for (int64_t p = 0; p < nc; p++) found |= cand[p].a == i && cand[p].b == bj;
            if (!found) fail_msg("A feature %d: partner %d (rank %d, r %.4f) is not a candidate", i, bj, q, prev);
        }
    }
    for (int64_t p = 1; p < nc; p++)
        assert_true(cand[p].a > cand[p - 1].a || (cand[p].a == cand[p - 1].a && cand[p].b > cand[p - 1].b));
    for (int64_t p = 0; p < nc; p++) assert_true(cand[p].b != FB - 1); /* dead: never a candidate */
    free(r);
    free(cand);
    ml_best_free(&best);
}

/* one resample from block statistics == naive recomputation on the resampled tokens */
static void test_bootstrap_vs_naive(void **state) {
    (void)state;
    make_codes();
    ml_best best;
    ml_pair *cand = NULL;
    int64_t nc = 0;
    corr_and_candidates(FB, &best, &cand, &nc); /* every live pair: the best is exact */
    ml_bstats *s = make_stats(cand, nc);
    int64_t K = ml_bstats_blocks(s);
    assert_int_equal(K, (N + BLOCK - 1) / BLOCK);
    double *w = malloc(sizeof(double) * (size_t)K);
    double ab[FA], bb[FB], na_[FA], nb_[FB];
    int32_t aa[FA], ba[FB];
    float *xa = malloc(sizeof(float) * (size_t)(2 * N * FA)), *xb = malloc(sizeof(float) * (size_t)(2 * N * FB));
    double *r = malloc(sizeof(double) * FA * FB);
    uint8_t da[FA], db[FB];
    double maxdiff = 0;
    for (int k = 0; k < 3; k++) {
        ml_boot_weights(99, k, K, w);
        double tot = 0;
        for (int64_t b = 0; b < K; b++) tot += w[b];
        assert_true(tot == (double)K);
        int64_t m = resample_rows(w, K, xa, xb);
        ML_ASSERT_OK(ml_bstats_best(s, w, ab, bb));
        ft_naive_pearson(xa, m, FA, xb, FB, r, da, db);
        const uint8_t *dfa = ml_bstats_dead(s, 0), *dfb = ml_bstats_dead(s, 1);
        for (int j = 0; j < FB; j++) db[j] |= dfb[j];
        for (int i = 0; i < FA; i++) da[i] |= dfa[i];
        ft_naive_best(r, FA, FB, da, db, aa, na_, ba, nb_);
        for (int i = 0; i < FA; i++) {
            double ref = da[i] || na_[i] < 0 ? 0 : na_[i];
            maxdiff = fmax(maxdiff, fabs(ab[i] - ref));
        }
        for (int j = 0; j < FB; j++) {
            double ref = db[j] || nb_[j] < 0 ? 0 : nb_[j];
            maxdiff = fmax(maxdiff, fabs(bb[j] - ref));
        }
    }
    /* the full data (w = NULL) equals ml_corr's best scores */
    ML_ASSERT_OK(ml_bstats_best(s, NULL, ab, bb));
    double fd = 0;
    for (int i = 0; i < FA; i++) fd = fmax(fd, fabs(ab[i] - (best.a_dead[i] ? 0 : fmax(best.a_score[i], 0))));
    print_message("bootstrap from block statistics vs naive float64 on the resampled tokens: max |diff| %.3g; full "
                  "data vs ml_corr %.3g\n", maxdiff, fd);
    assert_true(maxdiff < 1e-10);
    assert_true(fd < 1e-6);
    free(w);
    free(xa);
    free(xb);
    free(r);
    free(cand);
    ml_bstats_destroy(&s);
    ml_best_free(&best);
}

/* ml_calib_run: every resample's shares equal the naive ones; percentiles
 * of the stored resamples; identical on any number of ranks (compared with
 * a run on MPI_COMM_SELF). */
static void test_calib_run(void **state) {
    (void)state;
    make_codes();
    ml_best best;
    ml_pair *cand = NULL;
    int64_t nc = 0;
    corr_and_candidates(FB, &best, &cand, &nc);
    ml_bstats *s = make_stats(cand, nc);
    double tau[3] = {0.3, 0.5, 0.7};
    uint8_t mp[3 * FA], mc[3 * FB];
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < FA; i++) mp[t * FA + i] = !best.a_dead[i];
        for (int j = 0; j < FB; j++) mc[t * FB + j] = !best.b_dead[j];
    }
    /* main = floor = ceiling = the same statistics: normalised is NAN unless ceiling > floor */
    ml_calib_config cfg = {.n_tau = 3, .tau = tau, .n_boot = 40, .seed = 5, .main = s, .floor = s, .ceiling = s,
                           .mask_parent = mp, .mask_child = mc};
    ml_calib_result cr;
    ML_ASSERT_OK(ml_calib_run(MPI_COMM_WORLD, &cfg, &cr));
    int64_t K = ml_bstats_blocks(s);
    double *w = malloc(sizeof(double) * (size_t)K), ab[FA], bb[FB];
    for (int64_t b = 0; b < cfg.n_boot; b++) {
        ml_boot_weights(5, b, K, w);
        ML_ASSERT_OK(ml_bstats_best(s, w, ab, bb));
        for (int t = 0; t < 3; t++) {
            int hp = 0, lp = 0, hc = 0, lc = 0;
            for (int i = 0; i < FA; i++) lp += mp[i], hp += mp[i] && ab[i] >= tau[t];
            for (int j = 0; j < FB; j++) lc += mc[j], hc += mc[j] && bb[j] >= tau[t];
            const double *q = cr.boot + b * ML_CALIB_NQ * 3;
            assert_true(q[ML_CALIB_PERSIST * 3 + t] == (double)hp / lp);
            assert_true(q[ML_CALIB_EMERGE * 3 + t] == 1.0 - (double)hc / lc);
            assert_true(q[ML_CALIB_CEILING * 3 + t] == (double)hp / lp);
            assert_true(isnan(q[ML_CALIB_NORMALISED * 3 + t]));
        }
    }
    /* percentile interval of the persist share at tau 0.5 from the stored resamples */
    double v[40];
    for (int b = 0; b < 40; b++) v[b] = cr.boot[b * ML_CALIB_NQ * 3 + ML_CALIB_PERSIST * 3 + 1];
    for (int a = 0; a < 40; a++)
        for (int b = a + 1; b < 40; b++)
            if (v[b] < v[a]) {
                double t = v[a];
                v[a] = v[b];
                v[b] = t;
            }
    double lo = v[0] * (1 - 0.975) + v[1] * 0.975; /* position 0.025 * 39 = 0.975 */
    ML_ASSERT_CLOSE(cr.v[(ML_CALIB_PERSIST * 3 + 1) * 3 + 1], lo, 1e-12);
    assert_true(cr.v[(ML_CALIB_PERSIST * 3 + 1) * 3 + 1] <= cr.v[(ML_CALIB_PERSIST * 3 + 0) * 3 + 1] + 0.05);
    /* same numbers from a single rank */
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        ml_bstats *s1 = NULL;
        ML_ASSERT_OK(ml_bstats_create(MPI_COMM_SELF, FA, FB, cand, nc, N, BLOCK, &s1));
        ml_fcodes a = ft_dense_view(gA, 0, N, FA), b = ft_dense_view(gB, 0, N, FB);
        ML_ASSERT_OK(ml_bstats_add(s1, 0, &a, &b));
        ML_ASSERT_OK(ml_bstats_reduce(s1));
        ml_calib_config c1 = cfg;
        c1.main = c1.floor = c1.ceiling = s1;
        ml_calib_result r1;
        ML_ASSERT_OK(ml_calib_run(MPI_COMM_SELF, &c1, &r1));
        for (int k = 0; k < ML_CALIB_NQ * 3 * 3; k++)
            assert_true(r1.v[k] == cr.v[k] || (isnan(r1.v[k]) && isnan(cr.v[k])));
        ml_calib_result_free(&r1);
        ml_bstats_destroy(&s1);
    }
    free(w);
    free(cand);
    ml_calib_result_free(&cr);
    ml_bstats_destroy(&s);
    ml_best_free(&best);
}

/* Flow: candidates within the tie tolerance are tied and the lowest index
 * wins; with exact comparison (tie_tol < 0) float rounding decides. */
static void test_flow_ties(void **state) {
    (void)state;
    enum { T = 16, NA = 1, NB = 3 };
    float a[T * NA], b[T * NB];
    for (int t = 0; t < T; t++) {
        float v = (t % 3 == 0) ? 0.5f + 0.1f * (float)t : 0.0f;
        a[t] = v;
        b[t * NB + 0] = v * (1.0f + 3e-7f * (float)(t % 2)); /* the same up to float rounding */
        b[t * NB + 1] = v;                                   /* exactly A */
        b[t * NB + 2] = (t % 3 == 1) ? 1.0f : 0.0f;          /* another feature */
    }
    for (int pass = 0; pass < 2; pass++) {
        ml_flow_config fc = {.n_a = NA, .n_b = NB, .tie_tol = pass ? -1 : 0};
        ml_flow *f = NULL;
        ML_ASSERT_OK(ml_flow_create(MPI_COMM_SELF, &fc, &f));
        ml_fcodes A = {.n = T, .nf = NA, .x = a, .ld = NA}, B = {.n = T, .nf = NB, .x = b, .ld = NB};
        ML_ASSERT_OK(ml_flow_add_sample(f, &A, &B));
        int32_t partner;
        float support;
        ML_ASSERT_OK(ml_flow_result(f, &partner, &support, NULL));
        assert_int_equal(partner, pass ? 1 : 0); /* tied -> lowest index 0; exact -> the exact copy 1 */
        assert_true(support == 1.0f);
        assert_int_equal(ml_flow_tied(f), pass ? 0 : 1);
        ml_flow_destroy(&f);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_candidates),
        cmocka_unit_test(test_bootstrap_vs_naive),
        cmocka_unit_test(test_calib_run),
        cmocka_unit_test(test_flow_ties),
    };
    return ml_test_run(argc, argv, "features_calib", tests, sizeof tests / sizeof tests[0]);
}
