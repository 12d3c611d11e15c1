/* Matching and similarity measures: Hungarian against brute force, the
 * sparse component matching against brute-force maximum-weight matching,
 * decoder / logit cosine against explicit loops, classification, feature
 * flow and traces. Runs with 1, 2 and 4 ranks. */
#include <math.h>

#include "ml_test.h"
#include "feat_test_util.h"

/* ---- brute force --------------------------------------------------------- */
/* Minimum over injections rows -> columns (n <= m) of the summed cost. */
static double brute_assign(const float *cost, int n, int m, int row, uint32_t used) {
    if (row == n) return 0;
    double best = INFINITY;
    for (int j = 0; j < m; j++)
        if (!(used & (1u << j))) {
            double v = cost[row * m + j] + brute_assign(cost, n, m, row + 1, used | (1u << j));
            if (v < best) best = v;
        }
    return best;
}

/* Maximum over matchings (rows may stay unmatched) of sum (w - floor) on
 * entries w >= floor; w (n, m) with NAN for "no candidate". */
static double brute_match(const float *w, int n, int m, double floor, int row, uint32_t used) {
    if (row == n) return 0;
    double best = brute_match(w, n, m, floor, row + 1, used); /* row unmatched */
    for (int j = 0; j < m; j++)
        if (!(used & (1u << j)) && w[row * m + j] >= floor) {
            double v = (w[row * m + j] - floor) + brute_match(w, n, m, floor, row + 1, used | (1u << j));
            if (v > best) best = v;
        }
    return best;
}

static void test_hungarian_brute_force(void **state) {
    (void)state;
    const int sizes[][2] = {{1, 1}, {2, 2}, {3, 3}, {5, 5}, {7, 7}, {4, 6}, {6, 4}, {2, 7}, {8, 3}};
    ml_rng rng;
    ml_rng_seed(&rng, 17, 0);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = sizes[s][0], m = sizes[s][1];
        for (int rep = 0; rep < 25; rep++) {
            float cost[64];
            for (int k = 0; k < n * m; k++) /* half the matrices have ties (small integers) */
                cost[k] = rep % 2 ? (float)ml_rng_below(&rng, 4) : (float)ml_rng_uniform(&rng) * 2.0f - 0.5f;
            int32_t r2c[8];
            double total;
            ML_ASSERT_OK(ml_assign_dense(cost, n, m, r2c, &total));
            double ref;
            if (n <= m) {
                ref = brute_assign(cost, n, m, 0, 0);
            } else { /* transpose */
                float t[64];
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < m; j++) t[j * n + i] = cost[i * m + j];
                ref = brute_assign(t, m, n, 0, 0);
            }
            ML_ASSERT_CLOSE(total, ref, 1e-6);
            /* a valid one-to-one assignment of min(n, m) pairs with that cost */
            uint32_t used = 0;
            int matched = 0;
            double sum = 0;
            for (int i = 0; i < n; i++) {
                if (r2c[i] < 0) continue;
                assert_true(r2c[i] < m && !(used & (1u << r2c[i])));
                used |= 1u << r2c[i];
                matched++;
                sum += cost[i * m + r2c[i]];
            }
            assert_int_equal(matched, n < m ? n : m);
            ML_ASSERT_CLOSE(sum, total, 1e-6);
        }
    }
    float bad[4] = {0, NAN, 1, 2};
    int32_t r2c[2];
    ML_ASSERT_FAILS(ml_assign_dense(bad, 2, 2, r2c, NULL), ML_ERR_NUMERIC, "cost (0, 1) is not finite");
}

static void test_assign_pairs_brute_force(void **state) {
    (void)state;
    ml_rng rng;
    ml_rng_seed(&rng, 23, 0);
    for (int rep = 0; rep < 60; rep++) {
        int n = 2 + (int)ml_rng_below(&rng, 5), m = 2 + (int)ml_rng_below(&rng, 5);
        float w[64];
        ml_pair pairs[64];
        int64_t np = 0;
        double floor = rep % 3 == 0 ? -1.0 : 0.3;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++) {
                float r = (float)(ml_rng_uniform(&rng) * 2 - 1);
                int cand = rep % 3 == 0 || ml_rng_uniform(&rng) < 0.5; /* floor -1: all pairs */
                w[i * m + j] = cand ? r : NAN;
                if (cand) pairs[np++] = (ml_pair){i, j, r};
            }
        int32_t ap[8], bp[8];
        ML_ASSERT_OK(ml_assign_pairs(n, m, pairs, np, floor, 0, ap, bp));
        double got = 0;
        for (int i = 0; i < n; i++)
            if (ap[i] >= 0) {
                assert_int_equal(bp[ap[i]], i);
                assert_true(w[i * m + ap[i]] >= floor);
                got += w[i * m + ap[i]] - floor;
            }
        for (int j = 0; j < m; j++)
            if (bp[j] >= 0) assert_int_equal(ap[bp[j]], j);
        ML_ASSERT_CLOSE(got, brute_match(w, n, m, floor, 0, 0), 1e-5);
        if (floor == -1.0) { /* the classic Hungarian on 1 - r */
            float cost[64];
            for (int k = 0; k < n * m; k++) cost[k] = 1.0f - w[k];
            int32_t r2c[8];
            double total;
            ML_ASSERT_OK(ml_assign_dense(cost, n, m, r2c, &total));
            int k = n < m ? n : m;
            ML_ASSERT_CLOSE(got, 2.0 * k - total, 1e-5); /* sum (r + 1) = 2k - sum (1 - r) */
        }
    }
    /* a chain component larger than the limit */
    ml_pair chain[9];
    for (int k = 0; k < 9; k++) chain[k] = (ml_pair){k / 2 + k % 2, k / 2, 0.9f};
    int32_t ap[8], bp[8];
    ML_ASSERT_FAILS(ml_assign_pairs(8, 8, chain, 9, 0.5, 4, ap, bp), ML_ERR_UNSUPPORTED,
                    "more than 4 features");
    ml_pair out_of_range = {3, 9, 0.9f};
    ML_ASSERT_FAILS(ml_assign_pairs(8, 8, &out_of_range, 1, 0.5, 0, ap, bp), ML_ERR_ARG, "(3, 9) is outside 8 x 8");
}

/* Naive best cosine between rows of LA (FA, k) and LB (FB, k). */
static void naive_cos_best(const double *LA, int64_t FA, const double *LB, int64_t FB, int64_t k, int32_t *a_arg,
                           double *a_max, int32_t *b_arg, double *b_max, uint8_t *dA, uint8_t *dB) {
    double *c = malloc(sizeof(double) * FA * FB);
    for (int64_t i = 0; i < FA; i++) {
        double ni = 0;
        for (int64_t q = 0; q < k; q++) ni += LA[i * k + q] * LA[i * k + q];
        dA[i] = ni < 1e-20;
        for (int64_t j = 0; j < FB; j++) {
            double nj = 0, dot = 0;
            for (int64_t q = 0; q < k; q++) {
                nj += LB[j * k + q] * LB[j * k + q];
                dot += LA[i * k + q] * LB[j * k + q];
            }
            dB[j] = nj < 1e-20;
            c[i * FB + j] = dA[i] || dB[j] ? 0 : dot / sqrt(ni * nj);
        }
    }
    ft_naive_best(c, FA, FB, dA, dB, a_arg, a_max, b_arg, b_max);
    free(c);
}

static void check_cos(const ml_best *b, const double *LA, int64_t FA, const double *LB, int64_t FB, int64_t k) {
    int32_t aa[64], ba[64];
    double am[64], bm[64];
    uint8_t dA[64], dB[64];
    naive_cos_best(LA, FA, LB, FB, k, aa, am, ba, bm, dA, dB);
    double sa = 0;
    int64_t la = 0;
    for (int64_t i = 0; i < FA; i++) {
        assert_int_equal(b->a_dead[i], dA[i]);
        assert_int_equal(b->a_partner[i], aa[i]);
        ML_ASSERT_CLOSE(b->a_score[i], am[i], 2e-5);
        if (!dA[i]) {
            sa += am[i];
            la++;
        }
    }
    for (int64_t j = 0; j < FB; j++) {
        assert_int_equal(b->b_dead[j], dB[j]);
        assert_int_equal(b->b_partner[j], ba[j]);
        ML_ASSERT_CLOSE(b->b_score[j], bm[j], 2e-5);
    }
    ML_ASSERT_CLOSE(b->a_mean, sa / la, 2e-5);
}

static void test_cosine_and_logit(void **state) {
    (void)state;
    const int64_t FA = 23, FB = 19, d = 16, V = 40, D = 12;
    ml_rng rng;
    ml_rng_seed(&rng, 29, 0);
    float WA[23 * 16], WB[19 * 16];
    for (int64_t k = 0; k < FA * d; k++) WA[k] = ml_rng_normal(&rng);
    for (int64_t k = 0; k < FB * d; k++) WB[k] = ml_rng_normal(&rng);
    for (int64_t q = 0; q < d; q++) {
        WA[5 * d + q] = 0.0f;                                   /* dead decoder row */
        WB[7 * d + q] = 2.0f * WA[3 * d + q] + 0.01f * WB[7 * d + q]; /* a near copy */
    }
    double LA[23 * 40], LB[19 * 40];
    for (int64_t k = 0; k < FA * d; k++) LA[k] = WA[k];
    for (int64_t k = 0; k < FB * d; k++) LB[k] = WB[k];
    ml_best b;
    ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, NULL, &b));
    check_cos(&b, LA, FA, LB, FB, d);
    assert_int_equal(b.a_partner[3], 7);
    assert_true(b.a_score[3] > 0.999f);
    ml_best_free(&b);

    /* logit map M = U diag(w) P, U (V, D), P (D, d): explicit logits vs Gram */
    float U[40 * 12], w[12], P[12 * 16], G[16 * 16];
    for (int64_t k = 0; k < V * D; k++) U[k] = ml_rng_normal(&rng) + 0.5f; /* nonzero mean: centring matters */
    for (int64_t k = 0; k < D; k++) w[k] = 0.5f + (float)ml_rng_uniform(&rng);
    for (int64_t k = 0; k < D * d; k++) P[k] = ml_rng_normal(&rng);
    for (int center = 0; center <= 1; center++) {
        double M[40 * 16] = {0};
        for (int64_t v = 0; v < V; v++)
            for (int64_t q = 0; q < d; q++)
                for (int64_t e = 0; e < D; e++) M[v * d + q] += (double)U[v * D + e] * w[e] * P[e * d + q];
        if (center)
            for (int64_t q = 0; q < d; q++) {
                double mu = 0;
                for (int64_t v = 0; v < V; v++) mu += M[v * d + q] / V;
                for (int64_t v = 0; v < V; v++) M[v * d + q] -= mu;
            }
        ML_ASSERT_OK(ml_logit_gram(U, V, D, w, P, d, center, G));
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = 0; j < d; j++) {
                double g = 0;
                for (int64_t v = 0; v < V; v++) g += M[v * d + i] * M[v * d + j];
                ML_ASSERT_CLOSE(G[i * d + j], g, 1e-4);
            }
        for (int64_t i = 0; i < FA; i++)
            for (int64_t v = 0; v < V; v++) {
                double s = 0;
                for (int64_t q = 0; q < d; q++) s += M[v * d + q] * WA[i * d + q];
                LA[i * V + v] = s;
            }
        for (int64_t j = 0; j < FB; j++)
            for (int64_t v = 0; v < V; v++) {
                double s = 0;
                for (int64_t q = 0; q < d; q++) s += M[v * d + q] * WB[j * d + q];
                LB[j * V + v] = s;
            }
        ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, G, &b));
        check_cos(&b, LA, FA, LB, FB, V);
        ml_best_free(&b);
    }
    ML_ASSERT_FAILS(ml_logit_gram(U, V, D, w, NULL, d, 0, G), ML_ERR_SHAPE, "decoder width 16 must equal D = 12");
}

/* Explicit logits L (F, V) of decoder rows W (F, d) through lm_head U (V, D),
 * norm weight w (D) and down P (D, d) (P NULL: d == D), in double. */
static void naive_logits(const float *W, int64_t F, int64_t d, const float *U, int64_t V, int64_t D, const float *w,
                         const float *P, int center, double *L) {
    for (int64_t i = 0; i < F; i++) {
        double u[16];
        for (int64_t e = 0; e < D; e++) {
            double s = 0;
            if (P)
                for (int64_t q = 0; q < d; q++) s += (double)P[e * d + q] * W[i * d + q];
            else
                s = W[i * d + e];
            u[e] = s * w[e];
        }
        double mu = 0;
        for (int64_t v = 0; v < V; v++) {
            double s = 0;
            for (int64_t e = 0; e < D; e++) s += (double)U[v * D + e] * u[e];
            L[i * V + v] = s;
            mu += s / V;
        }
        if (center)
            for (int64_t v = 0; v < V; v++) L[i * V + v] -= mu;
    }
}

/* Logit-weight cosine across two models (own lm_head, norm, down_proj each)
 * against explicit V-wide logit vectors. */
static void test_logit_cross_model(void **state) {
    (void)state;
    enum { FA = 21, FB = 17, d = 16, V = 48, D = 12 };
    ml_rng rng;
    ml_rng_seed(&rng, 31, 0);
    float WA[FA * d], WB[FB * d], WBr[FB * D], UA[V * D], UB[V * D], wA[D], wB[D], PA[D * d], PB[D * d];
    for (int k = 0; k < FA * d; k++) WA[k] = ml_rng_normal(&rng);
    for (int k = 0; k < FB * d; k++) WB[k] = ml_rng_normal(&rng);
    for (int k = 0; k < FB * D; k++) WBr[k] = ml_rng_normal(&rng);
    for (int k = 0; k < V * D; k++) UA[k] = ml_rng_normal(&rng) + 0.3f;
    for (int k = 0; k < V * D; k++) UB[k] = UA[k] + 0.3f * ml_rng_normal(&rng); /* a fine-tuned copy */
    for (int k = 0; k < D; k++) wA[k] = 0.5f + (float)ml_rng_uniform(&rng);
    for (int k = 0; k < D; k++) wB[k] = wA[k] * (0.9f + 0.2f * (float)ml_rng_uniform(&rng));
    for (int k = 0; k < D * d; k++) PA[k] = ml_rng_normal(&rng);
    for (int k = 0; k < D * d; k++) PB[k] = PA[k] + 0.2f * ml_rng_normal(&rng);
    for (int q = 0; q < d; q++) {
        WA[4 * d + q] = 0.0f;             /* dead decoder row */
        WB[9 * d + q] = 3.0f * WA[2 * d + q]; /* the same direction in the other dictionary */
    }
    ml_logit_map ma = {UA, wA, PA, V, D}, mb = {UB, wB, PB, V, D}, mbr = {UB, wB, NULL, V, D};
    static double LA[FA * V], LB[FB * V];
    ml_best b;
    for (int center = 0; center <= 1; center++) {
        /* both through down_proj (mlp.hook_post SAEs) */
        naive_logits(WA, FA, d, UA, V, D, wA, PA, center, LA);
        naive_logits(WB, FB, d, UB, V, D, wB, PB, center, LB);
        ML_ASSERT_OK(ml_logit_cosine_best(MPI_COMM_WORLD, WA, FA, d, &ma, WB, FB, d, &mb, center, &b));
        check_cos(&b, LA, FA, LB, FB, V);
        assert_true(b.a_dead[4]);
        ml_best_free(&b);
        /* B on a residual-stream hook: no down_proj, d_b = D */
        naive_logits(WBr, FB, D, UB, V, D, wB, NULL, center, LB);
        ML_ASSERT_OK(ml_logit_cosine_best(MPI_COMM_WORLD, WA, FA, d, &ma, WBr, FB, D, &mbr, center, &b));
        check_cos(&b, LA, FA, LB, FB, V);
        ml_best_free(&b);
        /* the same model on both sides equals the single-Gram path */
        float G[d * d];
        ML_ASSERT_OK(ml_logit_gram(UA, V, D, wA, PA, d, center, G));
        ml_best g1;
        ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, G, &g1));
        ML_ASSERT_OK(ml_logit_cosine_best(MPI_COMM_WORLD, WA, FA, d, &ma, WB, FB, d, &ma, center, &b));
        for (int i = 0; i < FA; i++) {
            assert_int_equal(b.a_partner[i], g1.a_partner[i]);
            ML_ASSERT_CLOSE(b.a_score[i], g1.a_score[i], 2e-5);
        }
        ml_best_free(&g1);
        ml_best_free(&b);
    }
    ml_logit_map bad = {UB, wB, PB, V - 1, D};
    ML_ASSERT_FAILS(ml_logit_cosine_best(MPI_COMM_WORLD, WA, FA, d, &ma, WB, FB, d, &bad, 0, &b), ML_ERR_SHAPE,
                    "different vocabularies (48 vs 47 tokens)");
    ML_ASSERT_FAILS(ml_logit_cosine_best(MPI_COMM_WORLD, WA, FA, d, &ma, WB, FB, d, &mbr, 0, &b), ML_ERR_SHAPE,
                    "decoder width 16 must equal hidden_size 12");
}

static void test_classify(void **state) {
    (void)state;
    ml_best b;
    ML_ASSERT_OK(ml_best_alloc(&b, 5, 4));
    const float as[5] = {0.95f, 0.8f, 0.79f, 0.0f, 0.5f};
    const int32_t ap[5] = {2, 0, 1, -1, 3};
    const uint8_t ad[5] = {0, 0, 0, 1, 0};
    const float bs[4] = {0.8f, 0.79f, 0.95f, 0.0f};
    const int32_t bpp[4] = {1, 2, 0, -1};
    const uint8_t bd[4] = {0, 0, 0, 1};
    memcpy(b.a_score, as, sizeof as);
    memcpy(b.a_partner, ap, sizeof ap);
    memcpy(b.a_dead, ad, sizeof ad);
    memcpy(b.b_score, bs, sizeof bs);
    memcpy(b.b_partner, bpp, sizeof bpp);
    memcpy(b.b_dead, bd, sizeof bd);
    ml_track_edge e;
    ML_ASSERT_OK(ml_track_classify(&b, 0.8, &e));
    const uint8_t ps[5] = {ML_FEAT_PERSIST, ML_FEAT_PERSIST, ML_FEAT_DISAPPEAR, ML_FEAT_DEAD, ML_FEAT_DISAPPEAR};
    const uint8_t cs[4] = {ML_FEAT_PERSIST, ML_FEAT_EMERGE, ML_FEAT_PERSIST, ML_FEAT_DEAD};
    assert_memory_equal(e.parent_status, ps, 5);
    assert_memory_equal(e.child_status, cs, 4);
    assert_int_equal(e.parent_partner[3], -1);
    assert_int_equal(e.parent_partner[2], 1); /* best candidate kept, status says no match */
    const int64_t counts[ML_TRACK_NCOUNTS] = {2, 2, 1, 2, 1, 1};
    assert_memory_equal(e.counts, counts, sizeof counts);
    ML_ASSERT_CLOSE(e.share_parent_persist, 0.5, 1e-12);
    ML_ASSERT_CLOSE(e.share_disappear, 0.5, 1e-12);
    ML_ASSERT_CLOSE(e.share_child_persist, 2.0 / 3.0, 1e-12);
    ML_ASSERT_CLOSE(e.share_emerge, 1.0 / 3.0, 1e-12);
    ml_track_edge_free(&e);
    ML_ASSERT_FAILS(ml_track_classify(&b, 0.0, &e), ML_ERR_ARG, "tau = 0 must be in (0, 1]");
    ml_best_free(&b);
    ml_best_free(&b); /* tolerates a freed struct */
}

/* Flow: B features are scaled copies of A features on every sample (one
 * only on 70% of them); consistency 0.8 keeps exactly the planted maps. */
static void test_flow(void **state) {
    (void)state;
    const int64_t FA = 7, FB = 5, T = 10, NS = 40;
    const int32_t planted[7] = {1, -1, 0, -1, 3, -1, -1}; /* A5 -> B4 only on 70%: dropped */
    ml_flow_config cfg = {.n_a = FA, .n_b = FB};
    ml_flow *f = NULL;
    ML_ASSERT_OK(ml_flow_create(MPI_COMM_WORLD, &cfg, &f));
    ml_rng rng;
    ml_rng_seed(&rng, 31, 0);
    float A[10 * 7], B[10 * 5];
    for (int64_t s = 0; s < NS; s++) {
        ft_sparse_codes(&rng, T, FA, 0.4, A);
        ft_sparse_codes(&rng, T, FB, 0.4, B);
        for (int64_t t = 0; t < T; t++) {
            A[t * FA + 6] = 0; /* never fires */
            B[t * FB + 1] = A[t * FA + 0] * 3.0f;
            B[t * FB + 0] = A[t * FA + 2] * 0.5f;
            B[t * FB + 3] = A[t * FA + 4] * 1.7f + (A[t * FA + 4] > 0 ? 0.001f : 0.0f);
            if (s % 10 < 7) B[t * FB + 4] = A[t * FA + 5];
        }
        ft_csr ca = ft_to_csr(A, T, FA, 0, FA);
        ml_fcodes a = ft_csr_view(&ca, 0, T, 0, FA), b = ft_dense_view(B, 0, T, FB);
        ML_ASSERT_OK(ml_flow_add_sample(f, &a, &b));
        ft_csr_free(&ca);
    }
    int32_t partner[7];
    float support[7];
    int64_t active[7];
    ML_ASSERT_OK(ml_flow_result(f, partner, support, active));
    assert_memory_equal(partner, planted, sizeof planted);
    assert_int_equal(active[6], 0);
    assert_true(support[0] == 1.0f && support[2] == 1.0f);
    ML_ASSERT_CLOSE(support[5], 0.7, 0.051); /* fired on most samples, won on 70% */
    ml_flow_destroy(&f);
    assert_null(f);

    /* traces across 3 models */
    const int64_t nf[3] = {4, 3, 3};
    const int32_t m0[4] = {1, -1, 1, 0}, m1[3] = {2, -1, 0};
    const int32_t *maps[2] = {m0, m1};
    int32_t *tr = NULL;
    int64_t ntr = 0;
    ML_ASSERT_OK(ml_flow_traces(3, nf, maps, &tr, &ntr));
    const int32_t expect[4][3] = {{0, 1, -1}, {2, 1, -1}, {3, 0, 2}, {-1, 2, 0}};
    assert_int_equal(ntr, 4);
    assert_memory_equal(tr, expect, sizeof expect);
    ml_free(tr);
    const int32_t bad[4] = {1, 5, 1, 0};
    maps[0] = bad;
    ML_ASSERT_FAILS(ml_flow_traces(3, nf, maps, &tr, &ntr), ML_ERR_ARG, "sends feature 1 to 5");
}

static int sweep_match(void) {
    enum { FA = 6, FB = 5, D = 4, T = 6 };
    static float WA[FA * D], WB[FB * D], CA[T * FA], CB[T * FB];
    static int init = 0;
    if (!init) {
        ml_rng rng;
        ml_rng_seed(&rng, 3, 3);
        for (int k = 0; k < FA * D; k++) WA[k] = ml_rng_normal(&rng);
        for (int k = 0; k < FB * D; k++) WB[k] = ml_rng_normal(&rng);
        ft_sparse_codes(&rng, T, FA, 0.5, CA);
        ft_sparse_codes(&rng, T, FB, 0.5, CB);
        init = 1;
    }
    float G[D * D], cost[FA * FB];
    ml_best b = {0}, b2 = {0}, b3 = {0};
    ml_track_edge e = {0};
    ml_flow *f = NULL;
    float U1[5 * D], U2[5 * D];
    for (int k = 0; k < 5 * D; k++) U1[k] = (float)(k % 7) - 3.0f, U2[k] = (float)(k % 5) - 2.0f;
    ml_logit_map m1 = {U1, NULL, NULL, 5, D}, m2 = {U2, NULL, NULL, 5, D};
    int32_t ap[FA], bp[FB], r2c[FA], *tr = NULL;
    float sup[FA];
    int64_t ntr;
    ml_pair pairs[3] = {{0, 1, 0.9f}, {1, 1, 0.8f}, {2, 3, 0.7f}};
    int rc = ML_OK;
    for (int k = 0; k < FA * FB; k++) cost[k] = (float)((k * 7) % 5);
    ML_CHECK_GOTO(ml_assign_dense(cost, FA, FB, r2c, NULL), done);
    ML_CHECK_GOTO(ml_logit_gram(WA, FA, D, NULL, NULL, D, 1, G), done);
    ML_CHECK_GOTO(ml_cosine_best(MPI_COMM_SELF, WA, FA, WB, FB, D, G, &b), done);
    ML_CHECK_GOTO(ml_logit_cosine_best(MPI_COMM_SELF, WA, FA, D, &m1, WB, FB, D, &m2, 1, &b3), done);
    ML_CHECK_GOTO(ml_assign_pairs(FA, FB, pairs, 3, 0.5, 0, ap, bp), done);
    ML_CHECK_GOTO(ml_best_from_assignment(&b, pairs, 3, ap, bp, &b2), done);
    ML_CHECK_GOTO(ml_track_classify(&b2, 0.75, &e), done);
    ML_CHECK_GOTO(ml_flow_create(MPI_COMM_SELF, &(ml_flow_config){.n_a = FA, .n_b = FB}, &f), done);
    ml_fcodes A = ft_dense_view(CA, 0, T, FA), B = ft_dense_view(CB, 0, T, FB);
    ML_CHECK_GOTO(ml_flow_add_sample(f, &A, &B), done);
    ML_CHECK_GOTO(ml_flow_result(f, ap, sup, NULL), done);
    const int64_t nf[2] = {FA, FB};
    const int32_t *maps[1] = {ap};
    ML_CHECK_GOTO(ml_flow_traces(2, nf, maps, &tr, &ntr), done);
done:
    ml_best_free(&b);
    ml_best_free(&b2);
    ml_best_free(&b3);
    ml_track_edge_free(&e);
    ml_flow_destroy(&f);
    ml_free(tr);
    return rc;
}

static void test_alloc_failures(void **state) {
    (void)state;
    ft_alloc_sweep(sweep_match, 20);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hungarian_brute_force), cmocka_unit_test(test_assign_pairs_brute_force),
        cmocka_unit_test(test_cosine_and_logit),      cmocka_unit_test(test_logit_cross_model),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_flow),                  cmocka_unit_test(test_alloc_failures),
    };
    return ml_test_run(argc, argv, "features_match", tests, sizeof tests / sizeof tests[0]);
}
