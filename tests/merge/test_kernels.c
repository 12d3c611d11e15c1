/* Merge kernels against closed forms, hand-computed vectors and literal
 * double-precision transcriptions of mergekit's vector code. */
#include <math.h>

#include "mergelens/merge.h"
#include "ml_test.h"

static void fill_normal(float *x, size_t n, uint64_t seed, double scale) {
    ml_rng r;
    ml_rng_seed(&r, seed, 7);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * ml_rng_normal(&r));
}

static double dnorm(const double *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i] * x[i];
    return sqrt(s);
}

/* mergekit slerp(), literally, in double */
static void ref_slerp(double *out, const float *a, const float *b, size_t n, double t) {
    double *v0 = malloc(n * sizeof *v0), *v1 = malloc(n * sizeof *v1);
    for (size_t i = 0; i < n; i++) v0[i] = a[i], v1[i] = b[i];
    double n0 = dnorm(v0, n), n1 = dnorm(v1, n);
    if (n0 > 1e-8)
        for (size_t i = 0; i < n; i++) v0[i] /= n0;
    if (n1 > 1e-8)
        for (size_t i = 0; i < n; i++) v1[i] /= n1;
    double dot = 0;
    for (size_t i = 0; i < n; i++) dot += v0[i] * v1[i];
    if (fabs(dot) > 0.9995) {
        for (size_t i = 0; i < n; i++) out[i] = (1 - t) * a[i] + t * b[i];
    } else {
        double th0 = acos(dot), s0 = sin(th0), tht = th0 * t;
        double c0 = sin(th0 - tht) / s0, c1 = sin(tht) / s0;
        for (size_t i = 0; i < n; i++) out[i] = c0 * a[i] + c1 * b[i];
    }
    free(v0);
    free(v1);
}

static void assert_close_vec(const float *got, const double *want, size_t n, double tol) {
    double err = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        if (e > err) err = e;
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    if (err > tol * (scale > 1 ? scale : 1)) fail_msg("max error %.3g (scale %.3g, tol %.3g)", err, scale, tol);
}

static void test_slerp_orthogonal(void **state) {
    (void)state;
    enum { N = 1000 };
    float a[N] = {0}, b[N] = {0}, out[N];
    a[3] = 1.0f;
    b[700] = 1.0f;
    assert_int_equal(ml_slerp(out, a, b, N, 0.5), 0);
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], (a[i] + b[i]) / sqrt(2.0), 1e-7);
    /* general orthogonal unit vectors */
    float u[N], v[N];
    fill_normal(u, N, 1, 1);
    fill_normal(v, N, 2, 1);
    double uu = 0, uv = 0;
    for (int i = 0; i < N; i++) uu += (double)u[i] * u[i], uv += (double)u[i] * v[i];
    for (int i = 0; i < N; i++) v[i] -= (float)(uv / uu * u[i]);
    double nu = 0, nv = 0;
    for (int i = 0; i < N; i++) nu += (double)u[i] * u[i], nv += (double)v[i] * v[i];
    for (int i = 0; i < N; i++) u[i] /= (float)sqrt(nu), v[i] /= (float)sqrt(nv);
    assert_int_equal(ml_slerp(out, u, v, N, 0.5), 0);
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], (u[i] + v[i]) / sqrt(2.0), 1e-6);
}

static void test_slerp_endpoints_exact(void **state) {
    (void)state;
    enum { N = 4099 };
    float *a = malloc(N * 4), *b = malloc(N * 4), *out = malloc(N * 4);
    fill_normal(a, N, 3, 0.02);
    fill_normal(b, N, 4, 0.03);
    ml_slerp(out, a, b, N, 0.0);
    assert_memory_equal(out, a, N * 4);
    ml_slerp(out, a, b, N, 1.0);
    assert_memory_equal(out, b, N * 4);
    /* nearly colinear: the lerp branch is exact at the ends too */
    for (int i = 0; i < N; i++) b[i] = a[i] * 1.5f + 1e-6f * (float)(i % 3);
    assert_int_equal(ml_slerp(out, a, b, N, 0.0), 1);
    assert_memory_equal(out, a, N * 4);
    ml_slerp(out, a, b, N, 1.0);
    assert_memory_equal(out, b, N * 4);
    free(a);
    free(b);
    free(out);
}

static void test_slerp_general_and_extrapolation(void **state) {
    (void)state;
    enum { N = 3001 };
    float *a = malloc(N * 4), *b = malloc(N * 4), *out = malloc(N * 4);
    double *want = malloc(N * 8);
    fill_normal(a, N, 5, 1);
    fill_normal(b, N, 6, 2);
    for (int i = 0; i < N; i++) b[i] += 0.7f * a[i]; /* angle well inside (0, pi/2) */
    const double ts[] = {0.58, 0.25, -0.5, 1.7};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(ml_slerp(out, a, b, N, ts[k]), 0);
        ref_slerp(want, a, b, N, ts[k]);
        assert_close_vec(out, want, N, 1e-6);
    }
    free(a);
    free(b);
    free(out);
    free(want);
}

static void test_slerp_colinear_fallback(void **state) {
    (void)state;
    enum { N = 257 };
    float a[N], b[N], out[N];
    fill_normal(a, N, 8, 1);
    for (int i = 0; i < N; i++) b[i] = -3.0f * a[i]; /* antiparallel: |dot| = 1 */
    assert_int_equal(ml_slerp(out, a, b, N, 0.3), 1);
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], 0.7 * a[i] + 0.3 * b[i], 1e-6);
    double g[4] = {1, 0.9996, 0.9996, 1}, c[2];
    assert_int_equal(ml_slerp_coeffs(g, 0.4, c), 1);
    ML_ASSERT_CLOSE(c[0], 0.6, 1e-15);
    ML_ASSERT_CLOSE(c[1], 0.4, 1e-15);
    g[1] = g[2] = 0.9994; /* just below the threshold: spherical */
    assert_int_equal(ml_slerp_coeffs(g, 0.4, c), 0);
}

static void test_slerp_zero_tensor(void **state) {
    (void)state;
    enum { N = 100 };
    float a[N] = {0}, b[N], out[N];
    fill_normal(b, N, 9, 1);
    /* a = 0 is not normalised (norm <= 1e-8): dot = 0, theta = pi/2 */
    for (int k = 0; k <= 4; k++) {
        double t = k / 4.0;
        assert_int_equal(ml_slerp(out, a, b, N, t), 0);
        for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], sin(t * M_PI / 2) * b[i], 1e-6);
        ml_slerp(out, b, a, N, t);
        for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], sin((1 - t) * M_PI / 2) * b[i], 1e-6);
    }
}

static void test_slerp_norms_follow_sin_weights(void **state) {
    (void)state;
    /* orthogonal a (norm 3) and b (norm 2): the components of the result along
     * a/|a| and b/|b| are 3 sin((1-t) pi/2) and 2 sin(t pi/2) */
    enum { N = 64 };
    float a[N] = {0}, b[N] = {0}, out[N];
    a[0] = 3;
    b[1] = 2;
    for (int k = 0; k <= 10; k++) {
        double t = k / 10.0;
        ml_slerp(out, a, b, N, t);
        ML_ASSERT_CLOSE(out[0], 3 * sin((1 - t) * M_PI / 2), 1e-6);
        ML_ASSERT_CLOSE(out[1], 2 * sin(t * M_PI / 2), 1e-6);
        double nrm = sqrt((double)out[0] * out[0] + (double)out[1] * out[1]);
        ML_ASSERT_CLOSE(nrm, sqrt(9 * pow(sin((1 - t) * M_PI / 2), 2) + 4 * pow(sin(t * M_PI / 2), 2)), 1e-6);
    }
    /* equal norms: the norm stays constant along the arc */
    a[0] = 2;
    for (int k = 0; k <= 10; k++) {
        ml_slerp(out, a, b, N, k / 10.0);
        ML_ASSERT_CLOSE(sqrt((double)out[0] * out[0] + (double)out[1] * out[1]), 2.0, 1e-6);
    }
}

static void test_lincomb_and_gram(void **state) {
    (void)state;
    enum { N = 5003, K = 5 };
    float *x[K], *out = malloc(N * 4);
    double c[K] = {0.3, -1.25, 2.0, 0.125, 0.7};
    for (int k = 0; k < K; k++) {
        x[k] = malloc(N * 4);
        fill_normal(x[k], N, 20 + k, 1);
    }
    for (int kk = 1; kk <= K; kk++) {
        ml_merge_lincomb(out, (const float *const *)x, c, kk, N);
        for (int i = 0; i < N; i++) {
            double s = 0;
            for (int k = 0; k < kk; k++) s += c[k] * x[k][i];
            ML_ASSERT_CLOSE(out[i], s, 1e-6);
        }
    }
    double G[K * K];
    ml_merge_gram(G, (const float *const *)x, NULL, K, N);
    for (int a = 0; a < K; a++)
        for (int b = 0; b < K; b++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += (double)x[a][i] * x[b][i];
            ML_ASSERT_CLOSE(G[a * K + b], s, 1e-12);
        }
    ml_merge_gram(G, (const float *const *)x + 1, x[0], K - 1, N);
    for (int a = 0; a < K - 1; a++)
        for (int b = 0; b < K - 1; b++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += (double)(x[a + 1][i] - x[0][i]) * (double)(x[b + 1][i] - x[0][i]);
            ML_ASSERT_CLOSE(G[a * (K - 1) + b], s, 1e-12);
        }
    for (int k = 0; k < K; k++) free(x[k]);
    free(out);
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void test_topk_threshold(void **state) {
    (void)state;
    enum { N = 20000 };
    float *x = malloc(N * 4), *base = malloc(N * 4), *mag = malloc(N * 4);
    uint32_t *hist = malloc(4 * 65536 * 4);
    fill_normal(x, N, 30, 1);
    fill_normal(base, N, 31, 1);
    for (int i = 0; i < N; i += 7) x[i] = base[i]; /* many exact zeros (ties) */
    for (int i = 1; i < N; i += 11) x[i] = base[i] + 0.5f; /* many equal magnitudes */
    for (int i = 0; i < N; i++) mag[i] = fabsf(x[i] - base[i]);
    qsort(mag, N, 4, cmp_desc);
    const size_t ks[] = {1, 2, 100, 4999, 10000, 17000, 19999, 20000};
    for (int t = 0; t < 8; t++) {
        float thr;
        size_t ngt;
        ml_merge_topk_threshold(x, base, N, ks[t], hist, &thr, &ngt);
        assert_true(thr == mag[ks[t] - 1]);
        size_t want = 0;
        while (want < N && mag[want] > thr) want++;
        assert_int_equal(ngt, want);
    }
    free(x);
    free(base);
    free(mag);
    free(hist);
}

/* run one tensor merge through stats + apply */
static int merge1(const ml_merge_params *p, const float *base, float *const *x, size_t rows, size_t cols, float *out) {
    ml_merge_inputs in = {.name = "t", .base = base, .rows = rows, .cols = cols};
    for (int i = 0; i < p->K; i++) in.x[i] = x[i];
    ml_merge_stats st = {0};
    ml_merge_work *w = NULL;
    int rc = ml_merge_params_check(p, "t", 0);
    if (rc == ML_OK) rc = ml_merge_work_create(p->K, rows, &w);
    if (rc == ML_OK) rc = ml_merge_stats_compute(p, &in, &st);
    if (rc == ML_OK) rc = ml_merge_apply(p, &in, &st, w, out);
    ml_merge_stats_release(&st);
    ml_merge_work_destroy(&w);
    return rc;
}

static void test_ties_hand(void **state) {
    (void)state;
    /* base 10; deltas x1 = [1,-2,3,-4], x2 = [-1,3,-1,2], density 0.5 (k = 2):
     * trimmed x1 = [0,0,3,-4], x2 = [0,3,0,2]; sums [0,3,3,-2] elect signs
     * [+,+,+,-]; disjoint means: [0 (nothing), 3/1, 3/1, -4/1]. */
    float base[4] = {10, 10, 10, 10}, x1[4] = {11, 8, 13, 6}, x2[4] = {9, 13, 9, 12}, out[4];
    float *x[2] = {x1, x2};
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_TIES);
    p.K = 2;
    p.has_base = 1;
    p.density[0] = p.density[1] = 0.5;
    ML_ASSERT_OK(merge1(&p, base, x, 1, 4, out));
    const float want[4] = {10, 13, 13, 6};
    for (int i = 0; i < 4; i++) ML_ASSERT_CLOSE(out[i], want[i], 1e-7);
    /* weights 2 and 1, no trimming: weighted deltas x1 = [2,-4,6,-8],
     * x2 = [-1,3,-1,2]; sums [1,-1,5,-6] -> signs [+,-,+,-]; kept
     * [2 (w 2), -4 (w 2), 6 (w 2), -8 (w 2)] -> divided by 2: [1,-2,3,-4] */
    p.density[0] = p.density[1] = 1;
    p.weight[0] = 2;
    ML_ASSERT_OK(merge1(&p, base, x, 1, 4, out));
    const float want2[4] = {11, 8, 13, 6};
    for (int i = 0; i < 4; i++) ML_ASSERT_CLOSE(out[i], want2[i], 1e-7);
    /* agreeing deltas average: x1 = +2, x2 = +4, weights 1 -> +3; normalize
     * false -> +6; lambda 0.5 -> +3 */
    float y1[2] = {12, 7}, y2[2] = {14, 6}, b2[2] = {10, 10}, o2[2];
    float *y[2] = {y1, y2};
    p.weight[0] = 1;
    ML_ASSERT_OK(merge1(&p, b2, y, 1, 2, o2));
    ML_ASSERT_CLOSE(o2[0], 13, 1e-7);
    ML_ASSERT_CLOSE(o2[1], 10 - 3.5, 1e-7);
    p.normalize = 0;
    ML_ASSERT_OK(merge1(&p, b2, y, 1, 2, o2));
    ML_ASSERT_CLOSE(o2[0], 16, 1e-7);
    p.lambda = 0.5;
    ML_ASSERT_OK(merge1(&p, b2, y, 1, 2, o2));
    ML_ASSERT_CLOSE(o2[0], 13, 1e-7);
    /* ties at the threshold: |d| = [1,1,1,1], density 0.5 keeps the first two */
    float e1[4] = {11, 9, 11, 9}, o4[4];
    float *e[1] = {e1};
    ml_merge_params_defaults(&p, ML_MERGE_TIES);
    p.K = 1;
    p.has_base = 1;
    p.density[0] = 0.5;
    ML_ASSERT_OK(merge1(&p, base, e, 1, 4, o4));
    const float want4[4] = {11, 9, 10, 10};
    for (int i = 0; i < 4; i++) ML_ASSERT_CLOSE(o4[i], want4[i], 1e-7);
    /* rescale (L1): kept |d| sum 2 of 4 -> kept deltas doubled */
    p.rescale = 1;
    ML_ASSERT_OK(merge1(&p, base, e, 1, 4, o4));
    const float want5[4] = {12, 8, 10, 10};
    for (int i = 0; i < 4; i++) ML_ASSERT_CLOSE(o4[i], want5[i], 1e-7);
    /* density too small to keep anything */
    p.density[0] = 0.2;
    ML_ASSERT_FAILS(merge1(&p, base, e, 1, 4, o4), ML_ERR_ARG, "keeps no element");
}

static void test_dare(void **state) {
    (void)state;
    enum { N = 100003 };
    float *base = malloc(N * 4), *x1 = malloc(N * 4), *x2 = malloc(N * 4), *o1 = malloc(N * 4),
          *o2 = malloc(N * 4);
    for (int i = 0; i < N; i++) base[i] = 1.0f, x1[i] = 1.5f, x2[i] = 1.25f; /* deltas 0.5, 0.25 */
    float *x[2] = {x1, x2};
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_DARE_LINEAR);
    p.K = 2;
    p.has_base = 1;
    p.density[0] = p.density[1] = 0.5;
    p.seed = 42;
    p.stream = ml_merge_stream_id("model.layers.0.mlp.up_proj.weight");
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o1));
    /* each element: base + 2*(m1*0.5 + m2*0.25) with masks m in {0,1} */
    long counts[4] = {0};
    for (int i = 0; i < N; i++) {
        double d = o1[i] - 1.0;
        int code = -1;
        const double vals[4] = {0, 1.0, 0.5, 1.5}; /* none, x1, x2, both */
        for (int c = 0; c < 4; c++)
            if (fabs(d - vals[c]) < 1e-6) code = c;
        if (code < 0) fail_msg("element %d = %g is not a rescaled combination", i, o1[i]);
        counts[code]++;
    }
    for (int c = 0; c < 4; c++) /* each 1/4; 6 sigma = 6*sqrt(N*3/16) ~ 822 */
        if (labs(counts[c] - N / 4) > 822) fail_msg("mask combination %d occurs %ld times of %d", c, counts[c], N);
    /* reproducible from the seed */
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o2));
    assert_memory_equal(o1, o2, N * 4);
    /* a different row split gives the same masks (RNG blocks follow elements) */
    ML_ASSERT_OK(merge1(&p, base, x, 7, N / 7 + 0, o2)); /* N = 7 * 14286 + 1 -> compare the prefix */
    assert_memory_equal(o1, o2, (size_t)7 * (N / 7) * 4);
    p.seed = 43;
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o2));
    assert_true(memcmp(o1, o2, N * 4) != 0);
    p.seed = 42;
    p.stream = ml_merge_stream_id("model.layers.0.mlp.down_proj.weight");
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o2));
    assert_true(memcmp(o1, o2, N * 4) != 0);
    /* no rescale: kept deltas unscaled */
    p.stream = ml_merge_stream_id("model.layers.0.mlp.up_proj.weight");
    p.rescale = 0;
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o2));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(o2[i] - 1.0, (o1[i] - 1.0) / 2, 1e-6);
    /* dare_ties with opposite deltas: sign election keeps only the majority */
    for (int i = 0; i < N; i++) x2[i] = 0.75f; /* delta -0.25 */
    ml_merge_params_defaults(&p, ML_MERGE_DARE_TIES);
    p.K = 2;
    p.has_base = 1;
    p.density[0] = p.density[1] = 0.5;
    p.seed = 42;
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o1));
    for (int i = 0; i < N; i++) {
        double d = o1[i] - 1.0; /* 2*0.5 = 1 wins when kept, else -0.5 or 0 */
        if (!(fabs(d - 1.0) < 1e-6 || fabs(d + 0.5) < 1e-6 || fabs(d) < 1e-7))
            fail_msg("dare_ties element %d = %g", i, o1[i]);
    }
    /* density 1: no drop, no rescale (mergekit returns the delta unchanged) */
    p.density[0] = p.density[1] = 1;
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, o1));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(o1[i], 1.5, 1e-7);
    free(base);
    free(x1);
    free(x2);
    free(o1);
    free(o2);
}

static void test_model_stock(void **state) {
    (void)state;
    float base[2] = {1, 1}, out[2];
    /* offsets at 60 degrees: cos 0.5, t = 2*0.5/(1+0.5) = 2/3 */
    float a[2] = {2, 1}, b[2] = {1.5f, 1 + (float)(sqrt(3.0) / 2)};
    float *x[2] = {a, b};
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_MODEL_STOCK);
    p.K = 2;
    p.has_base = 1;
    ML_ASSERT_OK(merge1(&p, base, x, 1, 2, out));
    for (int i = 0; i < 2; i++) ML_ASSERT_CLOSE(out[i], (2.0 / 3) * (a[i] + b[i]) / 2 + (1.0 / 3) * base[i], 1e-6);
    /* orthogonal offsets: t = 0 -> base */
    float c[2] = {2, 1}, d[2] = {1, 3};
    x[0] = c;
    x[1] = d;
    ML_ASSERT_OK(merge1(&p, base, x, 1, 2, out));
    ML_ASSERT_CLOSE(out[0], 1, 1e-6);
    ML_ASSERT_CLOSE(out[1], 1, 1e-6);
    /* filter_wise: row 0 parallel offsets (t = 1 -> mean), row 1 orthogonal (t = 0) */
    float B[4] = {0, 0, 0, 0}, X1[4] = {1, 2, 1, 0}, X2[4] = {2, 4, 0, 1}, O[4];
    float *xx[2] = {X1, X2};
    p.filter_wise = 1;
    ML_ASSERT_OK(merge1(&p, B, xx, 2, 2, O));
    ML_ASSERT_CLOSE(O[0], 1.5, 1e-6);
    ML_ASSERT_CLOSE(O[1], 3.0, 1e-6);
    ML_ASSERT_CLOSE(O[2], 0, 1e-6);
    ML_ASSERT_CLOSE(O[3], 0, 1e-6);
    p.K = 1;
    ML_ASSERT_FAILS(ml_merge_params_check(&p, "t", 0), ML_ERR_ARG, "at least 2 other models");
}

/* mergekit multislerp(), literally, in double */
static void ref_multislerp(double *res, float *const *x, const float *base, const double *w_in, int K, size_t n) {
    double eps = 1e-8, w[8], sw = 0, norms[8], mean_norm = 0, *u[8], *mean = calloc(n, 8), *tr = calloc(n, 8);
    for (int k = 0; k < K; k++) sw += w_in[k];
    for (int k = 0; k < K; k++) w[k] = w_in[k] / sw;
    for (int k = 0; k < K; k++) {
        u[k] = malloc(n * 8);
        for (size_t i = 0; i < n; i++) u[k][i] = x[k][i] - (base ? base[i] : 0);
        norms[k] = dnorm(u[k], n);
        for (size_t i = 0; i < n; i++) u[k][i] /= norms[k] + eps;
        for (size_t i = 0; i < n; i++) mean[i] += w[k] * u[k][i];
    }
    mean_norm = dnorm(mean, n);
    for (size_t i = 0; i < n; i++) mean[i] /= mean_norm;
    for (int k = 0; k < K; k++) {
        double dot = 0;
        for (size_t i = 0; i < n; i++) dot += u[k][i] * mean[i];
        for (size_t i = 0; i < n; i++) tr[i] += w[k] * (u[k][i] - dot * mean[i]);
    }
    double tn = dnorm(tr, n) + eps, avg = 0;
    for (int k = 0; k < K; k++) avg += norms[k] * w[k];
    for (size_t i = 0; i < n; i++) res[i] = avg * (mean[i] * cos(tn) + tr[i] * sin(tn) / tn) + (base ? base[i] : 0);
    for (int k = 0; k < K; k++) free(u[k]);
    free(mean);
    free(tr);
}

/* mergekit karcher_merge_tensors(), literally, in double (uniform alphas) */
static void ref_karcher(double *res, float *const *x, int K, size_t n, int max_iter, double tol) {
    double norms[8], *u[8], alpha = 1.0 / K, *mean = calloc(n, 8), *tan = calloc(n, 8);
    for (int k = 0; k < K; k++) {
        u[k] = malloc(n * 8);
        for (size_t i = 0; i < n; i++) u[k][i] = x[k][i];
        norms[k] = dnorm(u[k], n);
        for (size_t i = 0; i < n; i++) u[k][i] /= norms[k];
        for (size_t i = 0; i < n; i++) mean[i] += alpha * u[k][i];
    }
    double mn = dnorm(mean, n);
    for (size_t i = 0; i < n; i++) mean[i] /= mn;
    for (int it = 0; it < max_iter; it++) {
        memset(tan, 0, n * 8);
        for (int k = 0; k < K; k++) {
            double dot = 0;
            for (size_t i = 0; i < n; i++) dot += mean[i] * u[k][i];
            dot = dot < -1 ? -1 : dot > 1 ? 1 : dot;
            double th = acos(dot);
            if (th < tol) continue;
            for (size_t i = 0; i < n; i++) tan[i] += alpha * (th / sin(th)) * (u[k][i] - dot * mean[i]);
        }
        double tnm = dnorm(tan, n);
        if (tnm < tol) break;
        for (size_t i = 0; i < n; i++) mean[i] = cos(tnm) * mean[i] + sin(tnm) * tan[i] / tnm;
        double un = dnorm(mean, n);
        for (size_t i = 0; i < n; i++) mean[i] /= un;
    }
    double scale = 0;
    for (int k = 0; k < K; k++) scale += alpha * norms[k];
    for (size_t i = 0; i < n; i++) res[i] = scale * mean[i];
    for (int k = 0; k < K; k++) free(u[k]);
    free(mean);
    free(tan);
}

static void test_spherical_means(void **state) {
    (void)state;
    enum { N = 2000, K = 3 };
    float *x[K], *base = malloc(N * 4), *out = malloc(N * 4);
    double *want = malloc(N * 8), w[K] = {0.5, 0.3, 0.4};
    fill_normal(base, N, 50, 1);
    for (int k = 0; k < K; k++) {
        x[k] = malloc(N * 4);
        fill_normal(x[k], N, 51 + k, 0.5 + k);
        for (int i = 0; i < N; i++) x[k][i] += base[i];
    }
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_MULTISLERP);
    p.K = K;
    for (int k = 0; k < K; k++) p.weight[k] = w[k];
    p.has_base = 1;
    ML_ASSERT_OK(merge1(&p, base, x, 1, N, out));
    ref_multislerp(want, x, base, w, K, N);
    assert_close_vec(out, want, N, 1e-5);
    p.has_base = 0;
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    ref_multislerp(want, x, NULL, w, K, N);
    assert_close_vec(out, want, N, 1e-5);
    /* two orthogonal unit vectors, equal weights: the SLERP midpoint */
    float a[4] = {1, 0, 0, 0}, b[4] = {0, 1, 0, 0}, o4[4];
    float *ab[2] = {a, b};
    p.K = 2;
    p.weight[0] = p.weight[1] = 1;
    ML_ASSERT_OK(merge1(&p, NULL, ab, 1, 4, o4));
    ML_ASSERT_CLOSE(o4[0], 1 / sqrt(2.0), 1e-6);
    ML_ASSERT_CLOSE(o4[1], 1 / sqrt(2.0), 1e-6);

    ml_merge_params_defaults(&p, ML_MERGE_KARCHER);
    p.K = K;
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    ref_karcher(want, x, K, N, 10, 1e-5);
    assert_close_vec(out, want, N, 1e-5);
    p.max_iter = 100;
    p.tol = 1e-12;
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    ref_karcher(want, x, K, N, 100, 1e-12);
    assert_close_vec(out, want, N, 1e-5);
    /* two orthogonal unit vectors: the geodesic midpoint */
    p.K = 2;
    ML_ASSERT_OK(merge1(&p, NULL, ab, 1, 4, o4));
    ML_ASSERT_CLOSE(o4[0], 1 / sqrt(2.0), 1e-6);
    ML_ASSERT_CLOSE(o4[1], 1 / sqrt(2.0), 1e-6);
    for (int k = 0; k < K; k++) free(x[k]);
    free(base);
    free(out);
    free(want);
}

static void test_linear_taskarith(void **state) {
    (void)state;
    enum { N = 333 };
    float b[N], x1[N], x2[N], out[N];
    fill_normal(b, N, 60, 1);
    fill_normal(x1, N, 61, 1);
    fill_normal(x2, N, 62, 1);
    float *x[2] = {x1, x2};
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_LINEAR);
    p.K = 2;
    p.weight[0] = 1.5;
    p.weight[1] = -0.5; /* extrapolation */
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], 1.5 * x1[i] - 0.5 * x2[i], 1e-6);
    p.weight[0] = 3;
    p.weight[1] = 1;
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], 0.75 * x1[i] + 0.25 * x2[i], 1e-6);
    p.normalize = 0;
    ML_ASSERT_OK(merge1(&p, NULL, x, 1, N, out));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out[i], 3 * x1[i] + x2[i], 1e-6);
    p.normalize = 1;
    p.weight[1] = -3;
    ML_ASSERT_FAILS(merge1(&p, NULL, x, 1, N, out), ML_ERR_ARG, "weights sum to 0");
    p.weight[1] = NAN;
    ML_ASSERT_FAILS(merge1(&p, NULL, x, 1, N, out), ML_ERR_ARG, "must be finite");
    ml_merge_params_defaults(&p, ML_MERGE_TASK_ARITHMETIC);
    p.K = 2;
    p.has_base = 1;
    p.weight[0] = 0.7;
    p.weight[1] = 0.4;
    p.lambda = 1.3;
    ML_ASSERT_OK(merge1(&p, b, x, 1, N, out));
    for (int i = 0; i < N; i++)
        ML_ASSERT_CLOSE(out[i], b[i] + 1.3 * (0.7 * (x1[i] - b[i]) + 0.4 * (x2[i] - b[i])), 1e-5);
    /* the elementwise GTA path with density 1 agrees with the coefficient path */
    float out2[N];
    p.method = ML_MERGE_DARE_LINEAR;
    p.rescale = 0;
    ML_ASSERT_OK(merge1(&p, b, x, 1, N, out2));
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(out2[i], out[i], 1e-6);
    p.has_base = 0;
    ML_ASSERT_FAILS(ml_merge_params_check(&p, "t", 0), ML_ERR_ARG, "needs a base_model");
}

static void test_rounding(void **state) {
    (void)state;
    float x[6] = {1.0f, 1.00390625f /* 1 + 2^-8: tie -> even (1) */, 1.01171875f /* 1+3*2^-8 -> 1+2^-6 */,
                  3.14159265f, -2.5e-3f, 65520.0f};
    ml_round_bf16(x, 6);
    ML_ASSERT_CLOSE(x[0], 1.0, 0);
    ML_ASSERT_CLOSE(x[1], 1.0, 0);
    ML_ASSERT_CLOSE(x[2], 1.015625, 0);
    ML_ASSERT_CLOSE(x[3], 3.140625, 0);
    float h[3] = {1.0f + 1.0f / 4096, 3.14159265f, 1e-8f};
    ml_round_f16(h, 3);
    ML_ASSERT_CLOSE(h[0], 1.0, 0);
    ML_ASSERT_CLOSE(h[1], 3.140625, 0);
    ML_ASSERT_CLOSE(h[2], 0.0, 0);
}

/* a sweep reuses one tensor's statistics for every point */
static void test_stats_reuse(void **state) {
    (void)state;
    enum { N = 4096 };
    float *a = malloc(N * 4), *b = malloc(N * 4), *o1 = malloc(N * 4), *o2 = malloc(N * 4);
    fill_normal(a, N, 70, 1);
    fill_normal(b, N, 71, 1);
    float *x[1] = {b};
    ml_merge_params p;
    ml_merge_params_defaults(&p, ML_MERGE_SLERP);
    p.K = 1;
    p.has_base = 1;
    ml_merge_inputs in = {.name = "t", .base = a, .rows = 1, .cols = N};
    in.x[0] = b;
    ml_merge_stats st = {0};
    ml_merge_work *w = NULL;
    ML_ASSERT_OK(ml_merge_work_create(1, 1, &w));
    ML_ASSERT_OK(ml_merge_stats_compute(&p, &in, &st));
    for (int k = 0; k <= 10; k++) {
        ML_ASSERT_OK(ml_merge_params_override(&p, "t", k / 10.0));
        ML_ASSERT_OK(ml_merge_apply(&p, &in, &st, w, o1));
        ML_ASSERT_OK(merge1(&p, a, x, 1, N, o2));
        assert_memory_equal(o1, o2, N * 4);
    }
    ML_ASSERT_OK(ml_merge_params_override(&p, "weight[0]", 2));
    ML_ASSERT_CLOSE(p.weight[0], 2, 0);
    ML_ASSERT_FAILS(ml_merge_params_override(&p, "weight[1]", 2), ML_ERR_ARG, "model index out of range");
    ML_ASSERT_FAILS(ml_merge_params_override(&p, "tt", 2), ML_ERR_ARG, "cannot sweep 'tt'");
    ml_merge_stats_release(&st);
    ml_merge_work_destroy(&w);
    free(a);
    free(b);
    free(o1);
    free(o2);
}

/* statistics accumulated over row chunks equal the one-pass statistics bit for bit */
static void test_stats_chunked(void **state) {
    (void)state;
    enum { R = 37, C = 13, N = R * C };
    float *x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = malloc(N * 4);
        fill_normal(x[i], N, 80 + i, 1);
    }
    const ml_merge_method ms[3] = {ML_MERGE_SLERP, ML_MERGE_MODEL_STOCK, ML_MERGE_KARCHER};
    const size_t chunks[4] = {1, 2, 5, 36};
    for (int m = 0; m < 3; m++) {
        ml_merge_params p;
        ml_merge_params_defaults(&p, ms[m]);
        p.has_base = ms[m] != ML_MERGE_KARCHER;
        p.K = ms[m] == ML_MERGE_SLERP ? 1 : 3;
        ml_merge_inputs in = {.name = "t", .base = p.has_base ? x[0] : NULL, .rows = R, .cols = C};
        for (int i = 0; i < p.K; i++) in.x[i] = x[i + p.has_base];
        ml_merge_stats one = {0}, ch = {0};
        ML_ASSERT_OK(ml_merge_stats_compute(&p, &in, &one));
        for (int c = 0; c < 4; c++) {
            ML_ASSERT_OK(ml_merge_stats_begin(&p, &in, &ch));
            for (size_t r0 = 0; r0 < R; r0 += chunks[c])
                ML_ASSERT_OK(ml_merge_stats_rows(&p, &in, r0, r0 + chunks[c] <= R ? chunks[c] : R - r0, &ch));
            ml_merge_stats_end(&ch);
            assert_int_equal(ch.dim, one.dim);
            assert_memory_equal(ch.gram, one.gram, (size_t)one.dim * one.dim * sizeof(double));
        }
        /* and the Gram matrix is right */
        double want = 0;
        for (int j = 0; j < N; j++)
            want += (double)(in.x[0][j] - (ms[m] == ML_MERGE_MODEL_STOCK ? x[0][j] : 0)) *
                    (double)(in.x[0][j] - (ms[m] == ML_MERGE_MODEL_STOCK ? x[0][j] : 0));
        ML_ASSERT_CLOSE(one.gram[ms[m] == ML_MERGE_SLERP ? 3 : 0], want, 1e-12);
        ml_merge_stats_release(&one);
        ml_merge_stats_release(&ch);
    }
    for (int i = 0; i < 4; i++) free(x[i]);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slerp_orthogonal),
        cmocka_unit_test(test_slerp_endpoints_exact),
        cmocka_unit_test(test_slerp_general_and_extrapolation),
        cmocka_unit_test(test_slerp_colinear_fallback),
        cmocka_unit_test(test_slerp_zero_tensor),
        cmocka_unit_test(test_slerp_norms_follow_sin_weights),
        cmocka_unit_test(test_lincomb_and_gram),
        cmocka_unit_test(test_topk_threshold),
        cmocka_unit_test(test_ties_hand),
        cmocka_unit_test(test_dare),
        cmocka_unit_test(test_model_stock),
        cmocka_unit_test(test_spherical_means),
        cmocka_unit_test(test_linear_taskarith),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_stats_reuse),
        cmocka_unit_test(test_stats_chunked),
    };
    return ml_test_run(argc, argv, "merge_kernels", tests, sizeof tests / sizeof tests[0]);
}
