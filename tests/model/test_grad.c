/* Every gradient tensor of ml_model_forward_backward against central finite
 * differences of the loss computed by ml_model_forward (float), on tiny
 * models with grouped-query (H 2 / KV 1) and plain (2 / 2) attention. */
#include <math.h>

#include "ml_test.h"
#include "model_test.h"


typedef struct {
    const char *label;
    int L, H, KV;
} ml_grad_case;

static double ml_mean_loss(const ml_model *m, ml_workspace *ws, const int32_t *tok, const int32_t *tgt, int B, int T) {
    ml_lm_stats st;
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &st));
    return st.loss_sum / (double)st.n_targets;
}

static void ml_check_case(const ml_grad_case *gc) {
    ml_model_config c;
    ml_test_config(&c, gc->L, 11, 8, gc->H, gc->KV, 12, 8);
    c.init_std = 0.4; /* large weights: gradients well above float noise */
    const int B = 2, T = 5, N = B * T;
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 7));
    /* perturb the norm weights away from 1 so their gradients are generic */
    ml_rng rng;
    ml_rng_seed(&rng, 99, 0);
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim == 1)
            for (size_t j = 0; j < m->tensors[i].numel; j++)
                m->params[m->tensors[i].offset + j] = 1.0f + 0.3f * ml_rng_normal(&rng);
    ML_ASSERT_OK(ml_model_enable_grads(m));
    ml_workspace_config wc = {.B_max = B, .T_max = T, .grad = 1, .attn_block = 2, .lm_chunk = 3};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    int32_t tok[10], tgt[10];
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)ml_rng_below(&rng, 11);
        tgt[i] = (int32_t)ml_rng_below(&rng, 11);
    }
    tgt[3] = -1; /* ignored targets */
    tgt[7] = -1;
    ml_model_zero_grad(m);
    ml_lm_stats st;
    ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.0, &st));
    assert_int_equal(st.n_targets, 8);
    double l0 = ml_mean_loss(m, ws, tok, tgt, B, T);
    ML_ASSERT_CLOSE(st.loss_sum / st.n_targets, l0, 1e-6);

    printf("[%s] loss %.6f\n", gc->label, l0);
    const float eps = 2e-3f;
    double worst = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_tensor *t = &m->tensors[i];
        double maxerr = 0, maxg = 0, num = 0, den = 0;
        for (size_t j = 0; j < t->numel; j++) {
            float *p = m->params + t->offset + j;
            const float save = *p;
            *p = save + eps;
            double lp = ml_mean_loss(m, ws, tok, tgt, B, T);
            *p = save - eps;
            double lm = ml_mean_loss(m, ws, tok, tgt, B, T);
            *p = save;
            double fd = (lp - lm) / (2.0 * eps), g = m->grads[t->offset + j];
            double e = fabs(fd - g);
            maxerr = e > maxerr ? e : maxerr;
            maxg = fabs(fd) > maxg ? fabs(fd) : maxg;
            num += e * e;
            den += fd * fd;
        }
        double rel = sqrt(num / (den > 0 ? den : 1e-30));
        printf("[%s] %-45s max|g| %.3e  max|err| %.3e  rel L2 err %.2e\n", gc->label, t->name, maxg, maxerr, rel);
        if (maxg < 1e-4) fail_msg("%s: gradient too small to test (%g)", t->name, maxg);
        worst = rel > worst ? rel : worst;
        if (!(rel < 1e-2)) fail_msg("%s: relative error %.3e", t->name, rel);
    }
    printf("[%s] worst relative L2 error %.2e\n", gc->label, worst);

    /* accumulation: a second call adds the same gradient; explicit grad_scale scales it */
    float *g1 = malloc(sizeof(float) * m->n_params);
    memcpy(g1, m->grads, sizeof(float) * m->n_params);
    ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.0, NULL));
    for (size_t j = 0; j < m->n_params; j++) ML_ASSERT_CLOSE(m->grads[j], 2.0f * g1[j], 1e-5);
    ml_model_zero_grad(m);
    ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.5, NULL)); /* 0.5 * sum = 4 * mean */
    for (size_t j = 0; j < m->n_params; j++) ML_ASSERT_CLOSE(m->grads[j], 4.0f * g1[j], 1e-5);
    free(g1);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

static void test_grad_gqa(void **state) {
    (void)state;
    ml_grad_case gc = {"L1 H2 KV1", 1, 2, 1};
    ml_check_case(&gc);
}

static void test_grad_mha_two_layers(void **state) {
    (void)state;
    ml_grad_case gc = {"L2 H2 KV2", 2, 2, 2};
    ml_check_case(&gc);
}

/* The non-GEMM loops run on OpenBLAS's thread count: gradients must agree for
 * 1, 2 and 3 threads and repeat bitwise for a given count. */
static void test_grad_threads(void **state) {
    (void)state;
    openblas_set_num_threads(2);
    ml_grad_case gc = {"L1 H2 KV1, 2 threads", 1, 2, 1};
    ml_check_case(&gc);
    openblas_set_num_threads(1);
}

static void test_thread_count_independence(void **state) {
    (void)state;
    ml_model_config c;
    ml_test_config(&c, 1, 64, 64, 4, 2, 96, 48);
    const int B = 3, T = 48, N = B * T;
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 4));
    ML_ASSERT_OK(ml_model_enable_grads(m));
    openblas_set_num_threads(3); /* scratch for up to 3 threads */
    ml_workspace_config wc = {.B_max = B, .T_max = T, .grad = 1, .attn_block = 16, .lm_chunk = 50};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    int32_t tok[144], tgt[144];
    for (int i = 0; i < N; i++) tok[i] = (i * 37 + 5) % 64, tgt[i] = i % 11 == 0 ? -1 : (i * 13 + 1) % 64;
    float *g[4];
    double loss[4];
    const int threads[4] = {1, 2, 3, 2};
    for (int k = 0; k < 4; k++) {
        openblas_set_num_threads(threads[k]);
        ml_model_zero_grad(m);
        ml_lm_stats st;
        ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.0, &st));
        loss[k] = st.loss_sum;
        g[k] = malloc(sizeof(float) * m->n_params);
        memcpy(g[k], m->grads, sizeof(float) * m->n_params);
    }
    openblas_set_num_threads(1);
    for (int k = 1; k < 3; k++) {
        double maxd = 0, maxg = 0;
        for (size_t j = 0; j < m->n_params; j++) {
            maxd = fmax(maxd, fabs(g[k][j] - g[0][j]));
            maxg = fmax(maxg, fabs(g[0][j]));
        }
        printf("%d threads vs 1: loss %.9g vs %.9g, max grad difference %.2e (max |g| %.2e)%s\n", threads[k],
               loss[k], loss[0], maxd, maxg,
               memcmp(g[k], g[0], sizeof(float) * m->n_params) ? "" : ", bitwise equal");
        ML_ASSERT_CLOSE(loss[k], loss[0], 1e-6);
        assert_true(maxd <= 1e-5 * maxg);
    }
    assert_true(loss[3] == loss[1]);
    assert_memory_equal(g[3], g[1], sizeof(float) * m->n_params);
    for (int k = 0; k < 4; k++) free(g[k]);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

static void test_backward_errors(void **state) {
    (void)state;
    ml_model_config c;
    ml_test_config(&c, 1, 11, 8, 2, 1, 12, 256);
    ml_model *m = NULL;
    ml_workspace *ws = NULL, *ws_nograd = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 1));
    ml_workspace_config wc = {.B_max = 1, .T_max = 4, .grad = 1};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    wc.grad = 0;
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws_nograd));
    int32_t tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5};
    ML_ASSERT_FAILS(ml_model_forward_backward(m, ws, tok, tgt, 1, 4, 0, NULL), ML_ERR_ARG, "gradients not enabled");
    ML_ASSERT_OK(ml_model_enable_grads(m));
    ML_ASSERT_FAILS(ml_model_forward_backward(m, ws_nograd, tok, tgt, 1, 4, 0, NULL), ML_ERR_ARG, "without grad");
    float zeros[4 * 12] = {0};
    ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, 0, zeros));
    ML_ASSERT_FAILS(ml_model_forward_backward(m, ws, tok, tgt, 1, 4, 0, NULL), ML_ERR_UNSUPPORTED, "forward-only");
    ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, 0, NULL));
    /* all targets ignored: no gradient, loss 0 */
    int32_t none[4] = {-1, -1, -1, -1};
    ml_lm_stats st;
    ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, none, 1, 4, 0, &st));
    assert_int_equal(st.n_targets, 0);
    assert_true(ml_model_grad_norm(m) == 0.0);
    ml_workspace_destroy(&ws);
    ml_workspace_destroy(&ws_nograd);
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_gqa),
        cmocka_unit_test(test_grad_mha_two_layers),
        cmocka_unit_test(test_grad_threads),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_backward_errors),
    };
    return ml_test_run(argc, argv, "model_grad", tests, sizeof tests / sizeof tests[0]);
}
