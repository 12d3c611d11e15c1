/* Checkpoint tensors through the io layer (1 and 2 ranks): parameters,
 * optimizer moments and the config round-trip bitwise; wrong shapes, missing
 * or extra tensors and non-finite values are rejected naming the tensor. */
#include <math.h>

#include "ml_test.h"
#include "model_test.h"

static void small_config(ml_model_config *c, int L, int F) {
    ml_test_config(c, L, 40, 16, 4, 2, F, 32);
}

/* Write a checkpoint of a model initialised with `seed` (plus optimizer state when opt_steps > 0). */
static void write_ckpt(const char *path, const ml_model_config *c, uint64_t seed, int opt_steps, float poison) {
    ml_model *m = NULL;
    ml_adamw *opt = NULL;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_model_create(c, &m));
    ML_ASSERT_OK(ml_model_init(m, seed));
    if (poison != 0) m->params[m->tensors[3].offset + 5] = poison;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_model_config_save(h, c));
    ML_ASSERT_OK(ml_model_save_params(h, m));
    if (opt_steps > 0) {
        ML_ASSERT_OK(ml_model_enable_grads(m));
        ml_adamw_config oc;
        ml_adamw_config_default(&oc);
        ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
        for (int s = 0; s < opt_steps; s++) {
            for (size_t j = 0; j < m->n_params; j++) m->grads[j] = sinf((float)(j + s));
            ML_ASSERT_OK(ml_adamw_step(opt, m, 1e-3));
        }
        ML_ASSERT_OK(ml_adamw_save(h, opt, m));
    }
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_adamw_destroy(&opt);
    ml_model_destroy(&m);
}

static void test_round_trip(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/model.h5", ml_test_dir("model_ckpt"));
    ml_model_config c, c2;
    small_config(&c, 1, 24);
    write_ckpt(path, &c, 5, 3, 0);

    ml_model *ref = NULL, *m = NULL;
    ml_adamw *ropt = NULL, *opt = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &ref));
    ML_ASSERT_OK(ml_model_init(ref, 5));
    ML_ASSERT_OK(ml_model_enable_grads(ref));
    ml_adamw_config oc;
    ml_adamw_config_default(&oc);
    ML_ASSERT_OK(ml_adamw_create(ref, &oc, &ropt));
    for (int s = 0; s < 3; s++) {
        for (size_t j = 0; j < ref->n_params; j++) ref->grads[j] = sinf((float)(j + s));
        ML_ASSERT_OK(ml_adamw_step(ropt, ref, 1e-3));
    }

    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_model_config_load(h, &c2));
    assert_memory_equal(&c, &c2, sizeof c);
    ML_ASSERT_OK(ml_model_create(&c2, &m));
    ML_ASSERT_OK(ml_model_load_params(h, m));
    ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
    ML_ASSERT_OK(ml_adamw_load(h, opt, m));
    ML_ASSERT_OK(ml_h5_close(&h));
    /* the saved parameters are those before the optimizer steps (init, seed 5) */
    ml_model *init = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &init));
    ML_ASSERT_OK(ml_model_init(init, 5));
    assert_memory_equal(m->params, init->params, sizeof(float) * m->n_params);
    assert_memory_equal(opt->m, ropt->m, sizeof(float) * m->n_params);
    assert_memory_equal(opt->v, ropt->v, sizeof(float) * m->n_params);
    assert_int_equal(opt->step, 3);
    ml_model_destroy(&init);
    ml_adamw_destroy(&opt);
    ml_adamw_destroy(&ropt);
    ml_model_destroy(&m);
    ml_model_destroy(&ref);
}

static void expect_load_failure(const char *path, const ml_model_config *c, int code, const char *text) {
    ml_model *m = NULL;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_model_create(c, &m));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_FAILS(ml_model_load_params(h, m), code, text);
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_model_destroy(&m);
}

static void test_rejects(void **state) {
    (void)state;
    const char *dir = ml_test_dir("model_ckpt_bad");
    char p1[1200], p2[1200], p3[1200];
    snprintf(p1, sizeof p1, "%s/f24.h5", dir);
    snprintf(p2, sizeof p2, "%s/two_layers.h5", dir);
    snprintf(p3, sizeof p3, "%s/nan.h5", dir);
    ml_model_config c1, c2, c48;
    small_config(&c1, 1, 24);
    small_config(&c2, 2, 24);
    small_config(&c48, 1, 48);
    write_ckpt(p1, &c1, 1, 0, 0);
    write_ckpt(p2, &c2, 1, 0, 0);
    write_ckpt(p3, &c1, 1, 0, NAN);
    expect_load_failure(p1, &c48, ML_ERR_SHAPE,
                        "tensor /params/model.layers.0.mlp.gate_proj.weight has shape [24, 16], the model expects [48, 16]");
    expect_load_failure(p1, &c2, ML_ERR_FORMAT, "tensor /params/model.layers.1.input_layernorm.weight is missing");
    expect_load_failure(p2, &c1, ML_ERR_SHAPE, "/params/model.layers.1.input_layernorm.weight is not a tensor of this model");
    expect_load_failure(p3, &c1, ML_ERR_NUMERIC,
                        "tensor /params/model.layers.0.self_attn.k_proj.weight holds a non-finite value (nan at flat index 5)");
    /* no optimizer state in the file */
    ml_model *m = NULL;
    ml_adamw *opt = NULL;
    ml_h5 *h = NULL;
    ml_adamw_config oc;
    ml_adamw_config_default(&oc);
    ML_ASSERT_OK(ml_model_create(&c1, &m));
    ML_ASSERT_OK(ml_adamw_create(m, &oc, &opt));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, p1, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_FAILS(ml_adamw_load(h, opt, m), ML_ERR_FORMAT, "no group /optimizer/m");
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_adamw_destroy(&opt);
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_rejects),
    };
    return ml_test_run(argc, argv, "model_checkpoint", tests, sizeof tests / sizeof tests[0]);
}
