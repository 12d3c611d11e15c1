/* SAE kernels against independent references: gradients of every parameter
 * against central finite differences of a naive double-precision loss (each
 * architecture), the decoder-norm constraint, exact top-k against a full sort,
 * the geometric median against brute force, and the inference entry points
 * against naive loops. */
#include <math.h>

#include "ml_test.h"
#include "mergelens/sae.h"

/* ---- naive double reference -------------------------------------------------------- */
typedef struct {
    const ml_sae *s; /* shapes and flags */
    double norm_sq;  /* > 0: dataset normalisation constant; else per-row */
    double l1, aux_coef;
    int k_aux;
    const uint8_t *dead;
} ref_cfg;

/* indices of the top-k of v (n) restricted to mask (NULL = all), ties to lower index */
static int ref_topk(const double *v, int n, const uint8_t *mask, int k, int *out) {
    int cnt = 0;
    char *used = calloc((size_t)n, 1);
    for (int t = 0; t < k; t++) {
        int best = -1;
        for (int j = 0; j < n; j++) {
            if (used[j] || (mask && !mask[j])) continue;
            if (best < 0 || v[j] > v[best]) best = j;
        }
        if (best < 0) break;
        used[best] = 1;
        out[cnt++] = best;
    }
    free(used);
    return cnt;
}

/* loss for params P (double, SAE layout), rows x (N,D). If efix_out != NULL,
 * store e = x - x_hat there; if efix_in != NULL use it as the AuxK target. */
static double ref_loss(const ref_cfg *c, const double *P, const float *x, int N, double *efix_out,
                       const double *efix_in) {
    const ml_sae *s = c->s;
    int S = s->d_sae, D = s->d_in;
    size_t oe, obe, od, obd;
    ml_sae_param_offsets(s, &oe, &obe, &od, &obd);
    const double *We = P + oe, *be = P + obe, *Wd = P + od, *bd = P + obd;
    double L = 0;
    double *xin = malloc(sizeof(double) * D), *pre = malloc(sizeof(double) * S), *f = malloc(sizeof(double) * S);
    double *xh = malloc(sizeof(double) * D), *eh = malloc(sizeof(double) * D);
    int *sel = malloc(sizeof(int) * S);
    for (int b = 0; b < N; b++) {
        const float *xb = x + (size_t)b * D;
        double n2 = 0;
        for (int i = 0; i < D; i++) {
            xin[i] = xb[i] - (s->apply_b_dec_to_input ? bd[i] : 0.0);
            n2 += (double)xb[i] * xb[i];
        }
        double w = c->norm_sq > 0 ? 1.0 / (N * c->norm_sq) : 1.0 / (N * (n2 > 1e-8 ? n2 : 1e-8));
        for (int j = 0; j < S; j++) {
            pre[j] = be[j];
            for (int i = 0; i < D; i++) pre[j] += We[(size_t)j * D + i] * xin[i];
        }
        if (s->arch == ML_SAE_TOPK) {
            for (int j = 0; j < S; j++) f[j] = 0;
            int got = ref_topk(pre, S, NULL, s->k, sel);
            for (int t = 0; t < got; t++) f[sel[t]] = pre[sel[t]] > 0 ? pre[sel[t]] : 0;
        } else {
            for (int j = 0; j < S; j++) f[j] = pre[j] > 0 ? pre[j] : 0;
        }
        for (int i = 0; i < D; i++) xh[i] = bd[i];
        for (int j = 0; j < S; j++)
            for (int i = 0; i < D; i++) xh[i] += f[j] * Wd[(size_t)j * D + i];
        double se = 0;
        for (int i = 0; i < D; i++) se += (xh[i] - xb[i]) * (xh[i] - xb[i]);
        L += w * se;
        for (int j = 0; j < S; j++) {
            double cj = 1;
            if (s->arch == ML_SAE_ANTHROPIC) {
                cj = 0;
                for (int i = 0; i < D; i++) cj += Wd[(size_t)j * D + i] * Wd[(size_t)j * D + i];
                cj = sqrt(cj);
            }
            if (s->arch != ML_SAE_TOPK) L += c->l1 / N * f[j] * cj;
        }
        if (efix_out)
            for (int i = 0; i < D; i++) efix_out[(size_t)b * D + i] = xb[i] - xh[i];
        if (s->arch == ML_SAE_TOPK && c->dead && c->k_aux > 0) {
            int got = ref_topk(pre, S, c->dead, c->k_aux, sel);
            for (int i = 0; i < D; i++) eh[i] = 0;
            for (int t = 0; t < got; t++) {
                double a = pre[sel[t]] > 0 ? pre[sel[t]] : 0;
                for (int i = 0; i < D; i++) eh[i] += a * Wd[(size_t)sel[t] * D + i];
            }
            const double *e = efix_in ? efix_in + (size_t)b * D : NULL;
            double r2 = 0;
            for (int i = 0; i < D; i++) {
                double ei = e ? e[i] : xb[i] - xh[i];
                r2 += (eh[i] - ei) * (eh[i] - ei);
            }
            L += c->aux_coef * w * r2;
        }
    }
    free(xin);
    free(pre);
    free(f);
    free(xh);
    free(eh);
    free(sel);
    return L;
}

static void fill_random(float *a, size_t n, ml_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) a[i] = scale * ml_rng_normal(r);
}

static void grad_check(ml_sae_arch arch, int dataset_norm, int k_aux, int dead_every) {
    const int D = 8, S = 12, N = 6, K = 3;
    ml_sae *s = NULL;
    ML_ASSERT_OK(ml_sae_create(arch, D, S, K, &s));
    ml_sae_init(s, 7, 0.5f);
    ml_rng r;
    ml_rng_seed(&r, 11, 0);
    /* generic parameters: random biases, non-unit anthropic rows */
    fill_random(s->b_enc, S, &r, 0.3f);
    fill_random(s->b_dec, D, &r, 0.3f);
    for (size_t i = 0; i < (size_t)S * D; i++) s->W_enc_t[i] += 0.2f * ml_rng_normal(&r);
    if (arch == ML_SAE_ANTHROPIC)
        for (size_t i = 0; i < (size_t)S * D; i++) s->W_dec[i] += 0.1f * ml_rng_normal(&r);
    float x[6 * 8];
    fill_random(x, (size_t)N * D, &r, 1.0f);
    uint8_t dead[12];
    for (int j = 0; j < S; j++) dead[j] = (j % dead_every) == 1 % dead_every;

    ml_sae_loss_cfg lc = {.l1 = 0.05, .aux_coef = 1.0 / 32, .k_aux = k_aux};
    if (dataset_norm) {
        lc.mse_norm = ML_SAE_NORM_DATASET;
        lc.norm_sq = 5.5;
    }
    ml_sae_work *w = NULL;
    ML_ASSERT_OK(ml_sae_work_create(s, N, lc.k_aux, &w));
    float *g = calloc(s->n_params, sizeof(float));
    float fired[12] = {0};
    ml_sae_stats st;
    ML_ASSERT_OK(ml_sae_forward_backward(s, &lc, x, N, N, arch == ML_SAE_TOPK ? dead : NULL, w, g, fired, &st));

    ref_cfg rc = {.s = s, .norm_sq = dataset_norm ? lc.norm_sq : 0, .l1 = lc.l1, .aux_coef = lc.aux_coef, .k_aux = lc.k_aux,
                  .dead = arch == ML_SAE_TOPK ? dead : NULL};
    double *P = malloc(sizeof(double) * s->n_params);
    for (size_t i = 0; i < s->n_params; i++) P[i] = s->params[i];
    double *efix = malloc(sizeof(double) * N * D);
    double L0 = ref_loss(&rc, P, x, N, efix, NULL);
    ML_ASSERT_CLOSE(st.loss_mse + st.loss_l1 + st.loss_aux, L0, 1e-5);
    if (arch == ML_SAE_TOPK) assert_true(st.loss_aux > 0);
    if (arch != ML_SAE_TOPK) assert_true(st.loss_l1 > 0);

    const double h = 1e-5;
    double gmax = 0, errmax = 0;
    for (size_t p = 0; p < s->n_params; p++) {
        double keep = P[p];
        P[p] = keep + h;
        double lp = ref_loss(&rc, P, x, N, NULL, efix);
        P[p] = keep - h;
        double lm = ref_loss(&rc, P, x, N, NULL, efix);
        P[p] = keep;
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd) > gmax) gmax = fabs(fd);
        double err = fabs(fd - g[p]);
        if (err > errmax) errmax = err;
        if (err > 1e-3 * fabs(fd) + 2e-5)
            fail_msg("%s: param %zu: analytic %.8g vs finite difference %.8g", ml_sae_arch_name(arch), p, g[p], fd);
    }
    printf("# %s (%s nMSE, k_aux %d, %d dead): %zu params, max |grad| %.3g, max |analytic - fd| %.3g\n",
           ml_sae_arch_name(arch), dataset_norm ? "dataset" : "row", k_aux, S / dead_every, s->n_params, gmax, errmax);
    assert_true(gmax > 1e-3);
    /* fired counts: naive count of active latents */
    float f_dense[6 * 12];
    ML_ASSERT_OK(ml_sae_encode(s, x, N, f_dense));
    for (int j = 0; j < S; j++) {
        int c = 0;
        for (int b = 0; b < N; b++) c += f_dense[b * S + j] > 0;
        ML_ASSERT_CLOSE(fired[j], c, 0);
    }
    free(P);
    free(efix);
    free(g);
    ml_sae_work_destroy(&w);
    ml_sae_destroy(&s);
}

static void test_grad_standard(void **state) {
    (void)state;
    grad_check(ML_SAE_STANDARD, 0, 2, 3);
    grad_check(ML_SAE_STANDARD, 1, 2, 3);
}
static void test_grad_anthropic(void **state) {
    (void)state;
    grad_check(ML_SAE_ANTHROPIC, 0, 2, 3);
    grad_check(ML_SAE_ANTHROPIC, 1, 2, 3);
}
static void test_grad_topk(void **state) {
    (void)state;
    grad_check(ML_SAE_TOPK, 0, 2, 3); /* 4 dead latents: AuxK as dense products over them */
    grad_check(ML_SAE_TOPK, 1, 2, 3);
    grad_check(ML_SAE_TOPK, 0, 4, 3); /* k_aux = the 4 dead: every dead latent in every row */
    grad_check(ML_SAE_TOPK, 0, 1, 1); /* 12 dead > 8 k_aux: AuxK row by row */
}

/* Per-rank pieces add up: two half-batches with n_global = N give the full gradient. */
static void test_grad_split(void **state) {
    (void)state;
    const int D = 16, S = 40, N = 10;
    for (int a = 0; a < 3; a++) {
        ml_sae *s = NULL;
        ML_ASSERT_OK(ml_sae_create((ml_sae_arch)a, D, S, 5, &s));
        ml_sae_init(s, 3, 0.3f);
        ml_rng r;
        ml_rng_seed(&r, 5, 0);
        float x[10 * 16];
        fill_random(x, sizeof x / sizeof x[0], &r, 1.0f);
        uint8_t dead[40];
        for (int j = 0; j < S; j++) dead[j] = j % 4 == 0;
        ml_sae_loss_cfg lc = {.l1 = 0.01, .aux_coef = 1.0 / 32, .k_aux = 4};
        ml_sae_work *w = NULL;
        ML_ASSERT_OK(ml_sae_work_create(s, N, lc.k_aux, &w));
        float *g = calloc(s->n_params, sizeof(float)), *g1 = calloc(s->n_params, sizeof(float)),
              *g2 = calloc(s->n_params, sizeof(float));
        ml_sae_stats st, st1, st2;
        ML_ASSERT_OK(ml_sae_forward_backward(s, &lc, x, N, N, dead, w, g, NULL, &st));
        ML_ASSERT_OK(ml_sae_forward_backward(s, &lc, x, 4, N, dead, w, g1, NULL, &st1));
        ML_ASSERT_OK(ml_sae_forward_backward(s, &lc, x + 4 * D, 6, N, dead, w, g2, NULL, &st2));
        double scale = 0;
        for (size_t p = 0; p < s->n_params; p++) scale = fmax(scale, fabs(g[p]));
        for (size_t p = 0; p < s->n_params; p++) ML_ASSERT_CLOSE(g1[p] + g2[p], g[p], 1e-5 * fmax(scale, 1));
        ML_ASSERT_CLOSE(st1.loss_mse + st2.loss_mse + st1.loss_l1 + st2.loss_l1 + st1.loss_aux + st2.loss_aux,
                        st.loss_mse + st.loss_l1 + st.loss_aux, 1e-6);
        free(g);
        free(g1);
        free(g2);
        ml_sae_work_destroy(&w);
        ml_sae_destroy(&s);
    }
}

/* Decoder rows stay at unit norm through Adam steps; the projected gradient
 * is orthogonal to each row. */
static void test_decoder_unit_norm(void **state) {
    (void)state;
    const int D = 32, S = 64, N = 50;
    ml_sae_arch archs[2] = {ML_SAE_STANDARD, ML_SAE_TOPK};
    for (int a = 0; a < 2; a++) {
        ml_sae *s = NULL;
        ML_ASSERT_OK(ml_sae_create(archs[a], D, S, 4, &s));
        ml_sae_init(s, 9, 1.0f);
        ml_rng r;
        ml_rng_seed(&r, 1, 0);
        float *x = malloc(sizeof(float) * N * D);
        fill_random(x, (size_t)N * D, &r, 1.0f);
        ml_sae_loss_cfg lc = {.l1 = 1e-3, .aux_coef = 0, .k_aux = 0};
        ml_sae_work *w = NULL;
        ML_ASSERT_OK(ml_sae_work_create(s, N, 0, &w));
        float *g = calloc(s->n_params, sizeof(float)), *m = calloc(s->n_params, sizeof(float)),
              *v = calloc(s->n_params, sizeof(float));
        size_t oe, obe, od, obd;
        ml_sae_param_offsets(s, &oe, &obe, &od, &obd);
        for (int t = 1; t <= 20; t++) {
            ml_sae_stats st;
            ML_ASSERT_OK(ml_sae_forward_backward(s, &lc, x, N, N, NULL, w, g, NULL, &st));
            ml_sae_project_decoder_grad(s, g);
            for (int j = 0; j < S; j++) {
                double dot = 0, gn = 0;
                for (int i = 0; i < D; i++) {
                    dot += (double)g[od + (size_t)j * D + i] * s->W_dec[(size_t)j * D + i];
                    gn += (double)g[od + (size_t)j * D + i] * g[od + (size_t)j * D + i];
                }
                assert_true(fabs(dot) <= 1e-5 * (sqrt(gn) + 1e-12) + 1e-9);
            }
            ml_adam_step(s->params, g, m, v, s->n_params, 1e-2f, 0.9f, 0.9999f, 1e-8f, t);
            ml_sae_normalize_decoder(s);
            for (int j = 0; j < S; j++) {
                double nn = 0;
                for (int i = 0; i < D; i++) nn += (double)s->W_dec[(size_t)j * D + i] * s->W_dec[(size_t)j * D + i];
                ML_ASSERT_CLOSE(sqrt(nn), 1.0, 1e-6);
            }
        }
        free(x);
        free(g);
        free(m);
        free(v);
        ml_sae_work_destroy(&w);
        ml_sae_destroy(&s);
    }
}

/* Adam against the closed form of its first step: p -= lr * sign(g) (bias-corrected). */
static void test_adam(void **state) {
    (void)state;
    float p[3] = {1, 2, 3}, g[3] = {0.5f, -2.0f, 0.0f}, m[3] = {0}, v[3] = {0};
    ml_adam_step(p, g, m, v, 3, 0.1f, 0.9f, 0.999f, 1e-8f, 1);
    ML_ASSERT_CLOSE(p[0], 0.9, 1e-6);
    ML_ASSERT_CLOSE(p[1], 2.1, 1e-6);
    ML_ASSERT_CLOSE(p[2], 3.0, 1e-7);
    /* second step by hand */
    float g2[3] = {1.0f, 1.0f, 1.0f};
    double m0 = 0.9 * 0.05 + 0.1 * 1.0, v0 = 0.999 * 0.001 * 0.25 + 0.001 * 1.0;
    double mh = m0 / (1 - 0.81), vh = v0 / (1 - 0.999 * 0.999);
    double want = 0.9 - 0.1 * mh / (sqrt(vh) + 1e-8);
    ml_adam_step(p, g2, m, v, 3, 0.1f, 0.9f, 0.999f, 1e-8f, 2);
    ML_ASSERT_CLOSE(p[0], want, 1e-5);
}

static int cmp_desc(const void *a, const void *b) {
    const double *x = a, *y = b; /* (value, index) pairs */
    if (x[0] != y[0]) return x[0] < y[0] ? 1 : -1;
    return x[1] < y[1] ? -1 : 1;
}

static void test_topk_exact(void **state) {
    (void)state;
    ml_rng r;
    ml_rng_seed(&r, 21, 0);
    int n = 1000;
    float *v = malloc(sizeof(float) * n);
    double *pairs = malloc(sizeof(double) * 2 * n);
    int32_t idx[100], sub[1000];
    float val[100];
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < n; i++)
            v[i] = trial % 2 ? (float)(ml_rng_below(&r, 20)) : ml_rng_normal(&r); /* odd trials: many ties */
        int k = 1 + (int)ml_rng_below(&r, 99);
        int m = 0;
        int use_sub = trial % 3 == 0;
        for (int i = 0; i < n; i++)
            if (!use_sub || ml_rng_below(&r, 4) == 0) sub[m++] = i;
        int c = 0;
        for (int t = 0; t < m; t++) {
            pairs[2 * c] = v[sub[t]];
            pairs[2 * c + 1] = sub[t];
            c++;
        }
        qsort(pairs, (size_t)c, 2 * sizeof(double), cmp_desc);
        int got = ml_topk_select(v, n, use_sub ? sub : NULL, use_sub ? m : n, k, idx, val);
        assert_int_equal(got, k < c ? k : c);
        for (int t = 0; t < got; t++) {
            assert_int_equal(idx[t], (int)pairs[2 * t + 1]);
            assert_true(val[t] == (float)pairs[2 * t]);
        }
    }
    /* k larger than the candidates */
    assert_int_equal(ml_topk_select(v, 5, NULL, 5, 10, idx, val), 5);
    free(v);
    free(pairs);
}

static double gm_objective(const float *x, int n, int d, const double *y) {
    double s = 0;
    for (int b = 0; b < n; b++) {
        double t = 0;
        for (int i = 0; i < d; i++) t += (x[b * d + i] - y[i]) * (x[b * d + i] - y[i]);
        s += sqrt(t);
    }
    return s;
}

/* Weiszfeld against brute-force grid search in 2-D, and the subgradient
 * optimality condition in 5-D. */
static void test_geometric_median(void **state) {
    (void)state;
    ml_rng r;
    ml_rng_seed(&r, 33, 0);
    float x[9 * 2];
    for (int i = 0; i < 18; i++) x[i] = ml_rng_normal(&r);
    x[16] = 8; /* an outlier pulls the mean, not the median */
    x[17] = 8;
    float med[2];
    int it = 0;
    ML_ASSERT_OK(ml_geometric_median(MPI_COMM_SELF, x, 9, 2, 1000, 1e-12, med, &it));
    double best = 1e300, by[2] = {0, 0};
    for (int a = -400; a <= 400; a++)
        for (int b = -400; b <= 400; b++) {
            double y[2] = {a * 0.005, b * 0.005};
            double o = gm_objective(x, 9, 2, y);
            if (o < best) {
                best = o;
                by[0] = y[0];
                by[1] = y[1];
            }
        }
    double ym[2] = {med[0], med[1]};
    printf("# median (%.5f, %.5f) brute force (%.3f, %.3f), objective %.8f vs %.8f, %d iterations\n", med[0], med[1],
           by[0], by[1], gm_objective(x, 9, 2, ym), best, it);
    assert_true(gm_objective(x, 9, 2, ym) <= best + 1e-7);
    ML_ASSERT_CLOSE(med[0], by[0], 0.006);
    ML_ASSERT_CLOSE(med[1], by[1], 0.006);

    float z[40 * 5];
    for (int i = 0; i < 200; i++) z[i] = ml_rng_normal(&r) + (i % 5);
    float mz[5];
    ML_ASSERT_OK(ml_geometric_median(MPI_COMM_SELF, z, 40, 5, 2000, 1e-14, mz, &it));
    double gsum[5] = {0};
    for (int b = 0; b < 40; b++) {
        double dist = 0;
        for (int i = 0; i < 5; i++) dist += (z[b * 5 + i] - mz[i]) * (z[b * 5 + i] - mz[i]);
        dist = sqrt(dist);
        for (int i = 0; i < 5; i++) gsum[i] += (z[b * 5 + i] - mz[i]) / dist;
    }
    for (int i = 0; i < 5; i++) assert_true(fabs(gsum[i]) < 1e-3);
    ML_ASSERT_FAILS(ml_geometric_median(MPI_COMM_SELF, z, 0, 5, 10, 1e-6, mz, NULL), ML_ERR_ARG, "empty sample");
}

/* Inference entry points against naive loops. */
static void test_inference(void **state) {
    (void)state;
    const int D = 24, S = 70, N = 300;
    ml_rng r;
    ml_rng_seed(&r, 77, 0);
    float *x = malloc(sizeof(float) * N * D);
    fill_random(x, (size_t)N * D, &r, 1.0f);
    for (int a = 0; a < 3; a++) {
        ml_sae *s = NULL;
        ML_ASSERT_OK(ml_sae_create((ml_sae_arch)a, D, S, 6, &s));
        ml_sae_init(s, 4, 0.2f);
        fill_random(s->b_enc, S, &r, 0.2f);
        fill_random(s->b_dec, D, &r, 0.2f);
        float *f = malloc(sizeof(float) * N * S), *xh = malloc(sizeof(float) * N * D);
        float *xh2 = malloc(sizeof(float) * N * D);
        ML_ASSERT_OK(ml_sae_encode(s, x, N, f));
        ML_ASSERT_OK(ml_sae_decode(s, f, N, xh));
        ML_ASSERT_OK(ml_sae_reconstruct(s, x, N, xh2, NULL));
        double pre[70];
        int sel[70];
        for (int b = 0; b < N; b++) {
            for (int j = 0; j < S; j++) {
                pre[j] = s->b_enc[j];
                for (int i = 0; i < D; i++)
                    pre[j] += (double)s->W_enc_t[j * D + i] * (x[b * D + i] - (s->apply_b_dec_to_input ? s->b_dec[i] : 0));
            }
            double want[70] = {0};
            if (a == ML_SAE_TOPK) {
                int got = ref_topk(pre, S, NULL, s->k, sel);
                for (int t = 0; t < got; t++) want[sel[t]] = pre[sel[t]] > 0 ? pre[sel[t]] : 0;
            } else {
                for (int j = 0; j < S; j++) want[j] = pre[j] > 0 ? pre[j] : 0;
            }
            for (int j = 0; j < S; j++) ML_ASSERT_CLOSE(f[b * S + j], want[j], 1e-5);
            for (int i = 0; i < D; i++) {
                double h = s->b_dec[i];
                for (int j = 0; j < S; j++) h += want[j] * s->W_dec[j * D + i];
                ML_ASSERT_CLOSE(xh[b * D + i], h, 1e-4);
                ML_ASSERT_CLOSE(xh2[b * D + i], xh[b * D + i], 1e-5);
            }
        }
        /* CSR and top-m agree with the dense codes */
        ml_sae_csr csr = {0};
        ML_ASSERT_OK(ml_sae_encode_csr(s, x, N, &csr));
        assert_int_equal(csr.n_rows, N);
        int64_t nnz = 0;
        for (int b = 0; b < N; b++) {
            int64_t p = csr.row_ptr[b];
            for (int j = 0; j < S; j++)
                if (f[b * S + j] > 0) {
                    assert_true(p < csr.row_ptr[b + 1]);
                    assert_int_equal(csr.col[p], j);
                    ML_ASSERT_CLOSE(csr.val[p], f[b * S + j], 1e-6);
                    p++;
                    nnz++;
                }
            assert_true(p == csr.row_ptr[b + 1]);
        }
        assert_true(nnz == csr.nnz);
        ml_sae_csr_free(&csr);
        int m = 8;
        int32_t *ti = malloc(sizeof(int32_t) * N * m);
        float *tv = malloc(sizeof(float) * N * m);
        ML_ASSERT_OK(ml_sae_encode_top(s, x, N, m, ti, tv, NULL));
        for (int b = 0; b < N; b++) {
            double fv[70];
            for (int j = 0; j < S; j++) fv[j] = f[b * S + j];
            int got = ref_topk(fv, S, NULL, m, sel);
            for (int t = 0; t < m; t++) {
                if (t < got && fv[sel[t]] > 0) {
                    assert_int_equal(ti[b * m + t], sel[t]);
                    ML_ASSERT_CLOSE(tv[b * m + t], fv[sel[t]], 1e-6);
                } else {
                    assert_int_equal(ti[b * m + t], -1);
                }
            }
        }
        free(ti);
        free(tv);
        free(f);
        free(xh);
        free(xh2);
        ml_sae_destroy(&s);
    }
    free(x);
}

static void test_bad_args(void **state) {
    (void)state;
    ml_sae *s = NULL;
    ML_ASSERT_FAILS(ml_sae_create(ML_SAE_TOPK, 8, 16, 0, &s), ML_ERR_ARG, "1 <= k <= d_sae");
    ML_ASSERT_FAILS(ml_sae_create(ML_SAE_STANDARD, 0, 16, 0, &s), ML_ERR_ARG, "must be positive");
    ml_sae_arch a;
    ML_ASSERT_FAILS(ml_sae_arch_parse("relu", &a), ML_ERR_ARG, "unknown SAE architecture 'relu'");
    ML_ASSERT_OK(ml_sae_arch_parse("anthropic", &a));
    assert_int_equal(a, ML_SAE_ANTHROPIC);
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 4, 8, 0, &s));
    ml_sae_work *w = NULL;
    ML_ASSERT_OK(ml_sae_work_create(s, 2, 0, &w));
    float x[12] = {0};
    x[0] = NAN;
    ml_sae_loss_cfg lc = {.l1 = 1e-3};
    ml_sae_stats st;
    ML_ASSERT_FAILS(ml_sae_forward_backward(s, &lc, x, 3, 3, NULL, w, NULL, NULL, &st), ML_ERR_ARG,
                    "exceed the workspace");
    ML_ASSERT_FAILS(ml_sae_forward_backward(s, &lc, x, 2, 2, NULL, w, NULL, NULL, &st), ML_ERR_NUMERIC,
                    "not finite");
    ml_sae_work_destroy(&w);
    ml_sae_destroy(&s);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_standard), cmocka_unit_test(test_grad_anthropic),
        cmocka_unit_test(test_grad_topk),     cmocka_unit_test(test_grad_split),
        cmocka_unit_test(test_decoder_unit_norm), cmocka_unit_test(test_adam),
        cmocka_unit_test(test_topk_exact),    cmocka_unit_test(test_geometric_median),
        cmocka_unit_test(test_inference),     cmocka_unit_test(test_bad_args),
    };
    return ml_test_run(argc, argv, "sae_kernels", tests, sizeof tests / sizeof tests[0]);
}
