/* Adapter kernels against independent references:
 *  - gradients of LoRA (A, B) and IA3 (row and column scaling) by central
 *    finite differences of the model's loss in double-checked coordinates;
 *  - the merged weight W_eff against a naive per-element computation;
 *  - the sampled control's per-tensor mean and std within sampling error;
 *  - fresh adapters leave the host unchanged (B = 0, l = 1). */
#include "ml_test.h"

#include <math.h>

#include "mergelens/peft.h"

#define B_ 2
#define T_ 8

static void small_config(ml_model_config *c, int D, int F) {
    ml_model_config_default(c);
    c->d_model = D;
    c->d_mlp = F;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = D / 4;
    c->vocab_size = 32;
    c->max_context = T_;
    c->n_layers = 2;
}

typedef struct {
    ml_model *host, *work;
    ml_workspace *ws;
    int32_t tok[B_ * T_], tgt[B_ * T_];
} fixture;

static void fixture_make(fixture *f) {
    ml_model_config c;
    small_config(&c, 16, 24);
    ML_ASSERT_OK(ml_model_create(&c, &f->host));
    ML_ASSERT_OK(ml_model_init(f->host, 3));
    /* a larger init so the loss depends visibly on every weight */
    for (size_t i = 0; i < f->host->n_params; i++) f->host->params[i] *= 10.0f;
    for (int i = 0; i < f->host->n_tensors; i++)
        if (f->host->tensors[i].ndim == 1)
            for (size_t j = 0; j < f->host->tensors[i].numel; j++)
                f->host->params[f->host->tensors[i].offset + j] = 1.0f;
    ML_ASSERT_OK(ml_model_create(&c, &f->work));
    ML_ASSERT_OK(ml_model_enable_grads(f->work));
    ml_workspace_config wc = {.B_max = B_, .T_max = T_, .grad = 1};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &f->ws));
    ml_rng r;
    ml_rng_seed(&r, 11, 0);
    for (int i = 0; i < B_ * T_; i++) {
        f->tok[i] = (int32_t)ml_rng_below(&r, 32);
        f->tgt[i] = (int32_t)ml_rng_below(&r, 32);
    }
}

static void fixture_free(fixture *f) {
    ml_workspace_destroy(&f->ws);
    ml_model_destroy(&f->work);
    ml_model_destroy(&f->host);
}

static double loss_of(fixture *f, const ml_adapter *a) {
    ml_adapter_apply(a, f->host, f->work, 1);
    ml_lm_stats st;
    ML_ASSERT_OK(ml_model_forward(f->work, f->ws, f->tok, f->tgt, B_, T_, &st));
    return st.loss_sum / (double)st.n_targets;
}

/* Check every adapter coordinate of a few tensors against central differences. */
static void grad_check(ml_peft_method m, const char *targets) {
    const long live0 = ml_alloc_live();
    fixture f;
    memset(&f, 0, sizeof f);
    fixture_make(&f);
    ml_adapter *a = NULL;
    ML_ASSERT_OK(ml_adapter_create(&f.host->cfg, m, 4, 8.0, targets, &a));
    ml_rng r;
    ml_rng_seed(&r, 5, 1);
    /* non-trivial point: B != 0, l != 1 */
    for (size_t i = 0; i < a->view.n_params; i++)
        a->view.params[i] = m == ML_PEFT_IA3 ? 1.0f + 0.3f * ml_rng_normal(&r) : 0.3f * ml_rng_normal(&r);
    ml_adapter_apply(a, f.host, f.work, 1);
    ml_model_zero_grad(f.work);
    ML_ASSERT_OK(ml_model_forward_backward(f.work, f.ws, f.tok, f.tgt, B_, T_, 0, NULL));
    ml_adapter_backward(a, f.host, f.work);
    double worst = 0, gmax = 0;
    int checked = 0;
    for (size_t i = 0; i < a->view.n_params; i += 1 + a->view.n_params / 97) {
        const float keep = a->view.params[i];
        const double h = 1e-2;
        a->view.params[i] = keep + (float)h;
        const double lp = loss_of(&f, a);
        a->view.params[i] = keep - (float)h;
        const double lm = loss_of(&f, a);
        a->view.params[i] = keep;
        const double fd = (lp - lm) / (2 * h), g = a->view.grads[i];
        const double err = fabs(fd - g) / (fabs(fd) + 1e-2);
        if (err > worst) worst = err;
        if (fabs(g) > gmax) gmax = fabs(g);
        checked++;
    }
    print_message("%s gradients: %d coordinates, worst relative error %.3g, max |g| %.3g\n", ml_peft_method_name(m),
                  checked, worst, gmax);
    assert_true(gmax > 1e-3);
    assert_true(worst < 2e-2);
    ml_adapter_destroy(&a);
    fixture_free(&f);
    assert_int_equal(ml_alloc_live(), live0);
}

static void test_grad_lora(void **s) {
    (void)s;
    grad_check(ML_PEFT_LORA, "q_proj,v_proj,gate_proj,down_proj");
}
static void test_grad_ia3(void **s) {
    (void)s;
    grad_check(ML_PEFT_IA3, "k_proj,v_proj,down_proj");
}

/* W_eff against naive loops; untouched tensors stay the host's. */
static void test_merge_naive(void **s) {
    (void)s;
    fixture f;
    memset(&f, 0, sizeof f);
    fixture_make(&f);
    for (int method = 0; method < 2; method++) {
        ml_adapter *a = NULL;
        ML_ASSERT_OK(ml_adapter_create(&f.host->cfg, (ml_peft_method)method, 3, 5.0,
                                       method ? "k_proj,down_proj" : "q_proj,o_proj,up_proj", &a));
        ml_rng r;
        ml_rng_seed(&r, 9, (uint64_t)method);
        for (size_t i = 0; i < a->view.n_params; i++) a->view.params[i] = ml_rng_normal(&r);
        ml_adapter_apply(a, f.host, f.work, 1);
        double worst = 0;
        int adapted = 0;
        for (int ti = 0; ti < f.host->n_tensors; ti++) {
            const ml_tensor *ht = &f.host->tensors[ti];
            const ml_peft_target *tg = NULL;
            for (int k = 0; k < a->n_targets; k++) {
                char want[96];
                snprintf(want, sizeof want, "%s.weight", a->tg[k].module);
                if (!strcmp(want, ht->name)) tg = &a->tg[k];
            }
            const float *W = f.host->params + ht->offset, *We = f.work->params + ht->offset;
            if (!tg) {
                assert_memory_equal(W, We, ht->numel * sizeof(float));
                continue;
            }
            adapted++;
            assert_int_equal(tg->out, ht->shape[0]);
            assert_int_equal(tg->in, ht->shape[1]);
            const float *p0 = a->view.params + a->view.tensors[tg->first].offset;
            for (int64_t o = 0; o < tg->out; o++)
                for (int64_t j = 0; j < tg->in; j++) {
                    double ref = W[o * tg->in + j];
                    if (method == ML_PEFT_LORA) {
                        const float *B = a->view.params + a->view.tensors[tg->first + 1].offset;
                        double acc = 0;
                        for (int k = 0; k < 3; k++) acc += (double)B[o * 3 + k] * p0[k * tg->in + j];
                        ref += 5.0 / 3.0 * acc;
                    } else {
                        ref *= tg->scale_input ? p0[j] : p0[o];
                    }
                    double e = fabs(ref - We[o * tg->in + j]) / (1 + fabs(ref));
                    if (e > worst) worst = e;
                }
        }
        print_message("%s merge vs naive: %d tensors, worst error %.3g\n", ml_peft_method_name((ml_peft_method)method),
                      adapted, worst);
        assert_int_equal(adapted, a->n_targets);
        assert_int_equal(adapted, f.host->cfg.n_layers * (method ? 2 : 3));
        assert_true(worst < 1e-5);
        ml_adapter_destroy(&a);
    }
    fixture_free(&f);
}

/* A fresh adapter changes nothing; the sampled control matches the moments. */
static void test_init_and_sample(void **s) {
    (void)s;
    ml_model_config c;
    small_config(&c, 64, 128);
    ml_model *host = NULL, *work = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &host));
    ML_ASSERT_OK(ml_model_init(host, 1));
    ML_ASSERT_OK(ml_model_create(&c, &work));
    for (int method = 0; method < 2; method++) {
        ml_adapter *a = NULL;
        ML_ASSERT_OK(ml_adapter_create(&c, (ml_peft_method)method, 8, 16, "q_proj,v_proj,down_proj", &a));
        ml_adapter_init(a, 4);
        ml_adapter_apply(a, host, work, 1);
        assert_memory_equal(host->params, work->params, host->n_params * sizeof(float));
        /* a "trained" module with distinct per-tensor moments */
        for (int i = 0; i < a->view.n_tensors; i++) {
            const ml_tensor *t = &a->view.tensors[i];
            ml_rng r;
            ml_rng_seed(&r, 77, (uint64_t)i);
            for (size_t j = 0; j < t->numel; j++)
                a->view.params[t->offset + j] = (float)(0.1 * i - 0.2 + (0.01 + 0.02 * i) * ml_rng_normal(&r));
        }
        double mean0[64], std0[64];
        assert_true(a->view.n_tensors <= 64);
        for (int i = 0; i < a->view.n_tensors; i++) {
            const ml_tensor *t = &a->view.tensors[i];
            double s1 = 0, s2 = 0;
            for (size_t j = 0; j < t->numel; j++) s1 += a->view.params[t->offset + j];
            mean0[i] = s1 / (double)t->numel;
            for (size_t j = 0; j < t->numel; j++)
                s2 += pow(a->view.params[t->offset + j] - mean0[i], 2);
            std0[i] = sqrt(s2 / (double)t->numel);
        }
        ml_adapter_sample_like(a, 8);
        double worst_m = 0, worst_s = 0;
        for (int i = 0; i < a->view.n_tensors; i++) {
            const ml_tensor *t = &a->view.tensors[i];
            double s1 = 0, s2 = 0;
            for (size_t j = 0; j < t->numel; j++) s1 += a->view.params[t->offset + j];
            const double m = s1 / (double)t->numel;
            for (size_t j = 0; j < t->numel; j++) s2 += pow(a->view.params[t->offset + j] - m, 2);
            const double sd = sqrt(s2 / (double)t->numel), n = (double)t->numel;
            /* z-scores: mean error in units of std / sqrt(n), std error in std / sqrt(2n) */
            const double zm = fabs(m - mean0[i]) / (std0[i] / sqrt(n)), zs = fabs(sd - std0[i]) / (std0[i] / sqrt(2 * n));
            if (zm > worst_m) worst_m = zm;
            if (zs > worst_s) worst_s = zs;
        }
        print_message("%s sampled control: %d tensors, worst z of mean %.2f, of std %.2f\n",
                      ml_peft_method_name((ml_peft_method)method), a->view.n_tensors, worst_m, worst_s);
        assert_true(worst_m < 5 && worst_s < 5);
        ml_adapter_destroy(&a);
    }
    ml_model_destroy(&host);
    ml_model_destroy(&work);
}

static void test_bad_targets(void **s) {
    (void)s;
    const long live0 = ml_alloc_live();
    ml_model_config c;
    small_config(&c, 16, 24);
    ml_adapter *a = NULL;
    ML_ASSERT_FAILS(ml_adapter_create(&c, ML_PEFT_LORA, 4, 8, "q_proj,qv_proj", &a), ML_ERR_CONFIG,
                    "target 'qv_proj' matches no linear layer");
    assert_null(a);
    ML_ASSERT_FAILS(ml_adapter_create(&c, ML_PEFT_LORA, 0, 8, "q_proj", &a), ML_ERR_CONFIG, "must be positive");
    ML_ASSERT_OK(ml_adapter_create(&c, ML_PEFT_LORA, 4, 8, "q_proj", &a));
    ml_model_config d = c;
    d.d_mlp = 32;
    ML_ASSERT_FAILS(ml_adapter_check_host(a, &d, "x.h5", "b.h5"), ML_ERR_SHAPE,
                    "b.h5: cannot port x.h5: host intermediate_size = 32 differs from the adapter's host (24); "
                    "porting requires hosts of identical shapes");
    ml_adapter_destroy(&a);
    assert_int_equal(ml_alloc_live(), live0); /* the failed creates freed what they took */
}

/* Make the n-th allocation of ml_adapter_create fail, n = 1, 2, ...: every
 * failure is ML_ERR_NOMEM, leaves *out NULL and frees what it took. */
static void test_alloc_failures(void **s) {
    (void)s;
    ml_model_config c;
    small_config(&c, 16, 24);
    int n = 1, failures = 0;
    for (;; n++) {
        const long live0 = ml_alloc_live();
        ml_adapter *a = NULL;
        ml_alloc_fail_at(n);
        int rc = ml_adapter_create(&c, n % 2 ? ML_PEFT_LORA : ML_PEFT_IA3, 4, 8, "q_proj,down_proj", &a);
        ml_alloc_fail_at(0);
        ml_error_clear();
        if (rc == ML_OK) {
            ml_adapter_destroy(&a);
            assert_int_equal(ml_alloc_live(), live0);
            break;
        }
        failures++;
        assert_int_equal(rc, ML_ERR_NOMEM);
        assert_null(a);
        assert_int_equal(ml_alloc_live(), live0);
    }
    print_message("ml_adapter_create: %d allocation failures, each freed everything\n", failures);
    assert_true(failures >= 4);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_lora),      cmocka_unit_test(test_grad_ia3),
        cmocka_unit_test(test_merge_naive),    cmocka_unit_test(test_init_and_sample),
        cmocka_unit_test(test_bad_targets),    cmocka_unit_test(test_alloc_failures),
    };
    return ml_test_run(argc, argv, "peft_kernels", tests, sizeof tests / sizeof tests[0]);
}
