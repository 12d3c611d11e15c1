/* Recipe parsing and mergekit's per-tensor parameter resolution (gradients
 * over the layer position, {filter, value} conditions, lookup order), and
 * the recipe-level bad-input messages. */
#include <math.h>

#include "mergelens/merge.h"
#include "ml_test.h"

static ml_merge_recipe *parse_ok(const char *text) {
    ml_merge_recipe *r = NULL;
    ML_ASSERT_OK(ml_merge_recipe_parse(text, "recipe.yaml", &r));
    return r;
}

static void test_layer_t(void **state) {
    (void)state;
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.embed_tokens.weight", 3), 0.0, 0);
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.layers.0.mlp.up_proj.weight", 3), 0.0, 0);
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.layers.1.mlp.up_proj.weight", 3), 0.5, 0);
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.layers.2.self_attn.q_proj.weight", 3), 1.0, 0);
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.layers.0.mlp.up_proj.weight", 1), 1.0, 0); /* mergekit: t = 1 if L == 1 */
    /* mergekit 0.1.5 plans pre- and post-weights at t = 0 (issue #20 item 4) */
    ML_ASSERT_CLOSE(ml_merge_layer_t("model.norm.weight", 3), 0.0, 0);
    ML_ASSERT_CLOSE(ml_merge_layer_t("lm_head.weight", 3), 0.0, 0);
}

static void test_gradient_and_filters(void **state) {
    (void)state;
    ml_merge_recipe *r = parse_ok("merge_method: slerp\n"
                                  "base_model: a.h5\n"
                                  "models:\n"
                                  "  - model: a.h5\n"
                                  "  - model: b.h5\n"
                                  "parameters:\n"
                                  "  t:\n"
                                  "    - filter: self_attn\n"
                                  "      value: [0, 1, 0.5, 0.25]\n"
                                  "    - filter: mlp\n"
                                  "      value: 0.3\n"
                                  "    - filter: layers.1.\n"
                                  "      value: 0.9\n"
                                  "    - value: 0.58\n");
    assert_int_equal(ml_merge_recipe_method(r), ML_MERGE_SLERP);
    ml_merge_params p;
    /* gradient of 4 values at t = 0, 1/3, 2/3, 1 (layers 0..3 of 4):
     * scaled 0, 1, 2, 3 -> 0, 1, 0.5, 0.25; at t = 0.5: scaled 1.5 -> 0.75 */
    const double pos[] = {0, 1.0 / 3, 2.0 / 3, 1, 0.5, 0.1};
    const double want[] = {0, 1, 0.5, 0.25, 0.75, 0.3};
    for (int i = 0; i < 6; i++) {
        ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.1.self_attn.q_proj.weight", pos[i], &p));
        ML_ASSERT_CLOSE(p.t, want[i], 1e-12);
    }
    /* first match wins: layers.1.mlp matches 'mlp' before 'layers.1.' */
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.1.mlp.up_proj.weight", 0.5, &p));
    ML_ASSERT_CLOSE(p.t, 0.3, 0);
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.1.input_layernorm.weight", 0.5, &p));
    ML_ASSERT_CLOSE(p.t, 0.9, 0);
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.embed_tokens.weight", 0, &p));
    ML_ASSERT_CLOSE(p.t, 0.58, 0);
    assert_int_equal(p.K, 1);
    assert_int_equal(p.has_base, 1);
    const char *const *paths;
    int n;
    ml_merge_recipe_models(r, &paths, &n);
    assert_int_equal(n, 2);
    assert_string_equal(paths[0], "a.h5");
    assert_string_equal(paths[1], "b.h5");
    ml_merge_recipe_destroy(&r);
    assert_null(r);
}

static void test_lookup_order(void **state) {
    (void)state;
    /* per-model settings first; a condition list with no match falls through
     * to the global value; base first; global tensor parameters as defaults */
    ml_merge_recipe *r = parse_ok("merge_method: ties\n"
                                  "base_model: base.h5\n"
                                  "models:\n"
                                  "  - model: x.h5\n"
                                  "    parameters:\n"
                                  "      weight: [0.2, 0.6]\n"
                                  "      density:\n"
                                  "        - filter: mlp\n"
                                  "          value: 0.4\n"
                                  "  - model: base.h5\n"
                                  "  - model: y.h5\n"
                                  "    parameters: {weight: 1.5}\n"
                                  "parameters:\n"
                                  "  density: 0.8\n"
                                  "  weight: 0.1\n"
                                  "  normalize: false\n"
                                  "  lambda: 1.25\n"
                                  "  int8_mask: true\n"
                                  "dtype: bfloat16\n"
                                  "seed: 7\n");
    const char *const *paths;
    int n;
    ml_merge_recipe_models(r, &paths, &n);
    assert_int_equal(n, 3);
    assert_string_equal(paths[0], "base.h5");
    assert_string_equal(paths[1], "x.h5");
    assert_string_equal(paths[2], "y.h5");
    assert_string_equal(ml_merge_recipe_dtype(r), "bfloat16");
    assert_string_equal(ml_merge_recipe_out_dtype(r), "bfloat16");
    ml_merge_params p;
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.0.mlp.up_proj.weight", 0.25, &p));
    assert_int_equal(p.K, 2);
    ML_ASSERT_CLOSE(p.weight[0], 0.3, 1e-12); /* 0.2 + 0.25 * (0.6 - 0.2) */
    ML_ASSERT_CLOSE(p.weight[1], 1.5, 0);
    ML_ASSERT_CLOSE(p.density[0], 0.4, 0);
    ML_ASSERT_CLOSE(p.density[1], 0.8, 0);
    assert_int_equal(p.normalize, 0);
    assert_int_equal(p.rescale, 0);
    ML_ASSERT_CLOSE(p.lambda, 1.25, 0);
    assert_int_equal(p.seed, 7);
    assert_true(p.stream == ml_merge_stream_id("model.layers.0.mlp.up_proj.weight"));
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.0.self_attn.q_proj.weight", 1, &p));
    ML_ASSERT_CLOSE(p.density[0], 0.8, 0); /* no condition matched: global */
    ML_ASSERT_CLOSE(p.weight[0], 0.6, 0);
    char *json = NULL;
    ML_ASSERT_OK(ml_merge_recipe_to_json(r, &json));
    assert_non_null(strstr(json, "\"merge_method\":\"ties\""));
    assert_non_null(strstr(json, "\"inputs\":[\"base.h5\",\"x.h5\",\"y.h5\"]"));
    assert_non_null(strstr(json, "\"seed\":7"));
    ml_free(json);
    ml_merge_recipe_destroy(&r);

    /* defaults: dare rescales, ties normalizes, linear normalizes; an unlisted
     * base joins a linear merge as one more input */
    r = parse_ok("merge_method: dare_linear\nbase_model: b.h5\nmodels:\n  - model: x.h5\n"
                 "parameters: {weight: 1, density: 0.5}\n");
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "lm_head.weight", 1, &p));
    assert_int_equal(p.rescale, 1);
    assert_int_equal(p.normalize, 0);
    ml_merge_recipe_destroy(&r);
    r = parse_ok("merge_method: linear\nbase_model: b.h5\nmodels:\n  - model: x.h5\n"
                 "parameters: {weight: 0.5}\n");
    ml_merge_recipe_models(r, &paths, &n);
    assert_int_equal(n, 2);
    assert_string_equal(paths[1], "b.h5");
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "lm_head.weight", 1, &p));
    assert_int_equal(p.K, 2);
    assert_int_equal(p.has_base, 0);
    assert_int_equal(p.normalize, 1);
    ml_merge_recipe_destroy(&r);
    r = parse_ok("merge_method: soup\nmodels:\n  - model: x.h5\n  - model: y.h5\n  - model: z.h5\n");
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "lm_head.weight", 1, &p));
    assert_int_equal(p.K, 3);
    ML_ASSERT_CLOSE(p.weight[2], 1.0, 0);
    ml_merge_recipe_destroy(&r);
    r = parse_ok("merge_method: multislerp\nmodels:\n  - model: x.h5\n    parameters: {weight: 1}\n"
                 "  - model: y.h5\n    parameters: {weight: 2}\nparameters: {eps: 1e-6}\n");
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "lm_head.weight", 1, &p));
    assert_int_equal(p.has_base, 0);
    ML_ASSERT_CLOSE(p.eps, 1e-6, 0);
    ml_merge_recipe_destroy(&r);
}

/* the paper's recipe (nilq/feature-dynamics experiments/merging/finetuned/
 * baby-python-1L-mistral-lua-stories-slerp.yaml) with local paths */
static void test_paper_recipe(void **state) {
    (void)state;
    ml_merge_recipe *r = parse_ok("models:\n"
                                  "  - model: models/lua.h5\n"
                                  "  - model: models/tinystories.h5\n"
                                  "merge_method: slerp\n"
                                  "base_model: models/lua.h5\n"
                                  "parameters:\n"
                                  "  t:\n"
                                  "    - value: 0.58\n"
                                  "dtype: float16\n");
    const char *const *paths;
    int n;
    ml_merge_recipe_models(r, &paths, &n);
    assert_int_equal(n, 2);
    assert_string_equal(paths[0], "models/lua.h5"); /* t = 0 end */
    assert_string_equal(paths[1], "models/tinystories.h5");
    assert_string_equal(ml_merge_recipe_dtype(r), "float16");
    assert_string_equal(ml_merge_recipe_out_dtype(r), "float16");
    ml_merge_params p;
    const char *names[] = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"};
    for (int i = 0; i < 3; i++) {
        ML_ASSERT_OK(ml_merge_recipe_resolve(r, names[i], ml_merge_layer_t(names[i], 1), &p));
        ML_ASSERT_CLOSE(p.t, 0.58, 0);
    }
    ml_merge_recipe_destroy(&r);
}

#define BAD(text, code, msg)                                                                                 \
    do {                                                                                                     \
        ml_merge_recipe *r_ = NULL;                                                                          \
        ML_ASSERT_FAILS(ml_merge_recipe_parse(text, "recipe.yaml", &r_), code, msg);                         \
        assert_null(r_);                                                                                     \
    } while (0)

static void test_bad_recipes(void **state) {
    (void)state;
    BAD("merge_method: slerp\nbase_model: a.h5\nmodels:\n  - model: a.h5\n  - model: b.h5\nparameters:\n  tt: 0.5\n",
        ML_ERR_CONFIG, "recipe.yaml:7: unknown parameter 'tt' for merge_method slerp (known: t)");
    BAD("merge_method: slerp\nbase_model: a.h5\nmodels:\n  - model: a.h5\n  - model: b.h5\n  - model: c.h5\n"
        "parameters: {t: 0.5}\n",
        ML_ERR_CONFIG, "slerp merges exactly 2 models (base_model and one other), got 3");
    BAD("merge_method: slerp\nmodels:\n  - model: a.h5\n  - model: b.h5\nparameters: {t: 0.5}\n", ML_ERR_CONFIG,
        "recipe.yaml:1: merge_method slerp needs a 'base_model'");
    BAD("merge_method: ties\nmodels:\n  - model: a.h5\n", ML_ERR_CONFIG, "needs a 'base_model'");
    BAD("merge_method: model_stock\nbase_model: a.h5\nmodels:\n  - model: b.h5\n", ML_ERR_CONFIG,
        "model_stock needs a base_model and at least 2 other models, got 1 other");
    BAD("merge_method: linear\nmodels:\n  - model: a.h5\n    parameters: {weight: .nan}\n  - model: b.h5\n",
        ML_ERR_CONFIG, "recipe.yaml:4: key 'weight': expected a finite number, got '.nan'");
    BAD("merge_method: linear\nmodels:\n  - model: a.h5\n    parameters: {weight: [1, inf]}\n  - model: b.h5\n",
        ML_ERR_CONFIG, "expected a finite number, got 'inf'");
    BAD("merge_method: slerp\nbase_model: a.h5\nmodels:\n  - model: a.h5\n  - model: b.h5\n    parameters: {t: 0.3}\n",
        ML_ERR_CONFIG, "recipe.yaml:6: parameter 't' of slerp applies to the whole merge");
    BAD("merge_method: slurp\nmodels:\n  - model: a.h5\n", ML_ERR_CONFIG,
        "recipe.yaml:1: unknown merge_method 'slurp'");
    BAD("merge_method: linear\nmodels:\n  - model: a.h5\n  - model: a.h5\n", ML_ERR_CONFIG,
        "recipe.yaml:4: model 'a.h5' is listed twice");
    BAD("merge_method: linear\nslices: []\nmodels:\n  - model: a.h5\n", ML_ERR_CONFIG, "'slices' is not supported");
    BAD("merge_method: linear\nmodel: [a]\n", ML_ERR_CONFIG, "recipe.yaml:2: unknown key 'model'");
    BAD("merge_method: ties\nbase_model: a.h5\nmodels:\n  - model: b.h5\n    parameters:\n      weight:\n"
        "        - filter: mlp\n          valu: 1\n",
        ML_ERR_CONFIG, "recipe.yaml:8: parameter 'weight': unknown key 'valu' in a condition");
    BAD("merge_method: linear\ndtype: int8\nmodels:\n  - model: a.h5\n", ML_ERR_CONFIG, "dtype 'int8' is not supported");
    BAD("merge_method: linear\nmodels:\n  - model: a.h5\n    parameters: {normalize: true}\n  - model: b.h5\n",
        ML_ERR_CONFIG, "parameter 'normalize' of linear applies to the whole merge");

    /* per-tensor problems surface at resolve time, naming the tensor */
    ml_merge_recipe *r = NULL;
    ml_merge_params p;
    ML_ASSERT_OK(ml_merge_recipe_parse("merge_method: linear\nmodels:\n  - model: a.h5\n    parameters: {weight: 1}\n"
                                       "  - model: b.h5\n    parameters:\n      weight:\n        - filter: mlp\n"
                                       "          value: 2\n",
                                       "recipe.yaml", &r));
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.layers.0.mlp.up_proj.weight", 0, &p));
    ML_ASSERT_FAILS(ml_merge_recipe_resolve(r, "lm_head.weight", 1, &p), ML_ERR_CONFIG,
                    "recipe.yaml:5: model b.h5: missing required parameter 'weight' of linear for tensor lm_head.weight");
    ml_merge_recipe_destroy(&r);
    ML_ASSERT_OK(ml_merge_recipe_parse("merge_method: ties\nbase_model: a.h5\nmodels:\n  - model: b.h5\n"
                                       "    parameters: {weight: 1, density: [0.5, 0]}\n",
                                       "recipe.yaml", &r));
    ML_ASSERT_FAILS(ml_merge_recipe_resolve(r, "model.norm.weight", 1, &p), ML_ERR_ARG,
                    "ties: tensor model.norm.weight: density of model 0 is 0 (must be in (0, 1])");
    ml_merge_recipe_destroy(&r);
    ML_ASSERT_OK(ml_merge_recipe_parse("merge_method: linear\nmodels:\n  - model: a.h5\n  - model: b.h5\n"
                                       "parameters: {weight: [1, -1]}\n",
                                       "recipe.yaml", &r));
    ML_ASSERT_OK(ml_merge_recipe_resolve(r, "model.embed_tokens.weight", 0, &p));
    ML_ASSERT_FAILS(ml_merge_recipe_resolve(r, "model.layers.1.mlp.up_proj.weight", 0.5, &p), ML_ERR_ARG,
                    "weights sum to 0");
    ml_merge_recipe_destroy(&r);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_t),
        cmocka_unit_test(test_gradient_and_filters),
        cmocka_unit_test(test_lookup_order),
        cmocka_unit_test(test_paper_recipe),
        cmocka_unit_test(test_bad_recipes),
    };
    return ml_test_run(argc, argv, "merge_recipe", tests, sizeof tests / sizeof tests[0]);
}
