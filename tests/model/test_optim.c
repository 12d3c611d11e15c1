/* AdamW against a hand-written scalar reference (torch.optim.AdamW formulas
 * in double), learning-rate schedules at known steps, gradient clipping, and
 * a tiny model that overfits one batch. */
#include <math.h>

#include "ml_test.h"
#include "model_test.h"


static void tiny_config(ml_model_config *c) {
    ml_test_config(c, 1, 16, 32, 4, 2, 64, 16);
}

static void test_adamw_reference(void **state) {
    (void)state;
    ml_model_config c;
    tiny_config(&c);
    ml_model *m = NULL;
    ml_adamw *opt = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 3));
    ML_ASSERT_OK(ml_model_enable_grads(m));
    ml_adamw_config oc = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1};
    ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
    const size_t n = m->n_params;
    double *p = malloc(8 * n), *mm = calloc(n, 8), *vv = calloc(n, 8);
    int *decay = malloc(sizeof(int) * n);
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t j = 0; j < m->tensors[i].numel; j++) decay[m->tensors[i].offset + j] = m->tensors[i].decay;
    for (size_t j = 0; j < n; j++) p[j] = m->params[j];
    ml_rng rng;
    ml_rng_seed(&rng, 8, 0);
    const double lrs[4] = {1e-3, 5e-3, 2e-3, 0.0};
    for (int step = 1; step <= 4; step++) {
        const double lr = lrs[step - 1];
        for (size_t j = 0; j < n; j++) m->grads[j] = 0.01f * ml_rng_normal(&rng) * (j % 7 == 0 ? 100.0f : 1.0f);
        ML_ASSERT_OK(ml_adamw_step(opt, m, lr));
        /* torch.optim.AdamW, written out */
        const double bc1 = 1 - pow(0.9, step), bc2 = 1 - pow(0.95, step);
        for (size_t j = 0; j < n; j++) {
            const double g = m->grads[j];
            if (decay[j]) p[j] *= 1 - lr * 0.1;
            mm[j] = 0.9 * mm[j] + 0.1 * g;
            vv[j] = 0.95 * vv[j] + 0.05 * g * g;
            p[j] -= lr / bc1 * mm[j] / (sqrt(vv[j]) / sqrt(bc2) + 1e-6);
        }
        double maxerr = 0;
        for (size_t j = 0; j < n; j++) {
            maxerr = fmax(maxerr, fabs(m->params[j] - p[j]));
            ML_ASSERT_CLOSE(opt->m[j], mm[j], 1e-5);
            ML_ASSERT_CLOSE(opt->v[j], vv[j], 1e-5);
        }
        printf("adamw step %d lr %g: max |p - p_ref| = %.2e\n", step, lr, maxerr);
        assert_true(maxerr < 1e-6);
    }
    assert_int_equal(opt->step, 4);
    /* decay: with zero gradients and lr 1, wd 0.1, a matrix shrinks by 0.9, a norm weight does not */
    ml_adamw_destroy(&opt);
    ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
    ml_model_zero_grad(m);
    const ml_tensor *tq = NULL, *tn = NULL;
    ML_ASSERT_OK(ml_model_lookup(m, "model.layers.0.self_attn.q_proj.weight", &tq));
    ML_ASSERT_OK(ml_model_lookup(m, "model.norm.weight", &tn));
    float q0 = m->params[tq->offset], n0 = m->params[tn->offset];
    ML_ASSERT_OK(ml_adamw_step(opt, m, 1.0));
    ML_ASSERT_CLOSE(m->params[tq->offset], 0.9f * q0, 1e-6);
    assert_true(m->params[tn->offset] == n0);
    ML_ASSERT_FAILS(ml_adamw_step(opt, m, NAN), ML_ERR_ARG, "learning rate nan");
    oc.beta2 = 1.0;
    ml_adamw *bad = NULL;
    ML_ASSERT_FAILS(ml_adamw_create(m, &oc, &bad), ML_ERR_CONFIG, "betas (0.9, 1) must lie in [0, 1)");
    ml_adamw_destroy(&opt);
    ml_adamw_destroy(&opt);
    free(p), free(mm), free(vv), free(decay);
    ml_model_destroy(&m);
}

static void test_clip(void **state);

/* the update and the norm are split over threads: same answers with 3 */
static void test_adamw_reference_threads(void **state) {
    openblas_set_num_threads(3);
    test_adamw_reference(state);
    test_clip(state);
    openblas_set_num_threads(1);
}

static void test_schedules(void **state) {
    (void)state;
    ml_lr_schedule s = {ML_LR_COSINE, 1.0, 10, 110};
    const struct {
        ml_lr_kind kind;
        int64_t warmup, step;
        double expect;
    } cases[] = {
        {ML_LR_COSINE, 10, 0, 0.0},      {ML_LR_COSINE, 10, 5, 0.5},   {ML_LR_COSINE, 10, 10, 1.0},
        {ML_LR_COSINE, 10, 35, 0.5 * (1 + cos(M_PI * 0.25))},          {ML_LR_COSINE, 10, 60, 0.5},
        {ML_LR_COSINE, 10, 110, 0.0},    {ML_LR_COSINE, 10, 150, 0.0}, {ML_LR_COSINE, 0, 0, 1.0},
        {ML_LR_LINEAR, 10, 5, 0.5},      {ML_LR_LINEAR, 10, 10, 1.0},  {ML_LR_LINEAR, 10, 60, 0.5},
        {ML_LR_LINEAR, 10, 110, 0.0},    {ML_LR_LINEAR, 10, 200, 0.0}, {ML_LR_CONSTANT, 10, 3, 0.3},
        {ML_LR_CONSTANT, 10, 50, 1.0},   {ML_LR_CONSTANT, 0, 0, 1.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s.kind = cases[i].kind;
        s.warmup = cases[i].warmup;
        s.lr = 6e-4;
        ML_ASSERT_CLOSE(ml_lr_at(&s, cases[i].step), 6e-4 * cases[i].expect, 1e-12);
    }
    ml_lr_kind k;
    ML_ASSERT_OK(ml_lr_kind_parse("linear", &k));
    assert_int_equal(k, ML_LR_LINEAR);
    ML_ASSERT_FAILS(ml_lr_kind_parse("cosin", &k), ML_ERR_CONFIG, "unknown learning-rate schedule 'cosin'");
}

static void test_clip(void **state) {
    (void)state;
    ml_model_config c;
    tiny_config(&c);
    ml_model *m = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_enable_grads(m));
    double ss = 0;
    for (size_t j = 0; j < m->n_params; j++) {
        m->grads[j] = (float)((j % 5) - 2) * 0.5f;
        ss += (double)m->grads[j] * m->grads[j];
    }
    const double norm = sqrt(ss);
    ML_ASSERT_CLOSE(ml_model_grad_norm(m), norm, 1e-9);
    ML_ASSERT_CLOSE(ml_model_clip_grads(m, 2.0 * norm), norm, 1e-9); /* no change */
    ML_ASSERT_CLOSE(ml_model_grad_norm(m), norm, 1e-9);
    ML_ASSERT_CLOSE(ml_model_clip_grads(m, 1.0), norm, 1e-9);
    ML_ASSERT_CLOSE(ml_model_grad_norm(m), norm / (norm + 1e-6), 1e-6);
    ml_model_destroy(&m);
}

static void test_overfit_one_batch(void **state) {
    (void)state;
    ml_model_config c;
    tiny_config(&c);
    const int B = 4, T = 16;
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ml_adamw *opt = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 1));
    ML_ASSERT_OK(ml_model_enable_grads(m));
    ml_workspace_config wc = {.B_max = B, .T_max = T, .grad = 1};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    ml_adamw_config oc;
    ml_adamw_config_default(&oc);
    oc.weight_decay = 0.01;
    ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
    int32_t win[4 * 17], tok[64], tgt[64];
    ml_rng rng;
    ml_rng_seed(&rng, 2024, 0);
    for (int i = 0; i < B * (T + 1); i++) win[i] = (int32_t)ml_rng_below(&rng, 16);
    for (int b = 0; b < B; b++) win[b * (T + 1)] = b; /* distinct first tokens: every target is learnable */
    ml_windows_split(win, B, T, tok, tgt);
    assert_true(tok[T] == win[T + 1] && tgt[T] == win[T + 2]);
    ml_lr_schedule sched = {ML_LR_COSINE, 1e-2, 10, 300};
    ml_lm_stats st = {0};
    double first = 0;
    for (int step = 0; step < 300; step++) {
        ml_model_zero_grad(m);
        ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.0, &st));
        if (step == 0) first = st.loss_sum / st.n_targets;
        ml_model_clip_grads(m, 1.0);
        ML_ASSERT_OK(ml_adamw_step(opt, m, ml_lr_at(&sched, step)));
    }
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &st));
    const double last = st.loss_sum / st.n_targets;
    printf("overfit: loss %.4f -> %.5f, accuracy %lld / %lld\n", first, last, (long long)st.n_correct,
           (long long)st.n_targets);
    assert_true(first > 2.5 && last < 0.02);
    assert_int_equal(st.n_correct, st.n_targets);
    ml_adamw_destroy(&opt);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_reference),
        cmocka_unit_test(test_adamw_reference_threads),
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_overfit_one_batch),
    };
    return ml_test_run(argc, argv, "model_optim", tests, sizeof tests / sizeof tests[0]);
}
