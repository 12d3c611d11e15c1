/* Model config <-> Hugging Face config.json, validation messages, the
 * parameter table (names, shapes, offsets, counts) and the init. */
#include <math.h>

#include "ml_test.h"
#include "model_test.h"

static void test_json_round_trip(void **state) {
    (void)state;
    ml_model_config c, d;
    ml_model_config_default(&c);
    char *json = NULL;
    ML_ASSERT_OK(ml_model_config_to_json(&c, &json));
    assert_non_null(strstr(json, "\"MistralForCausalLM\""));
    assert_non_null(strstr(json, "\"num_key_value_heads\": 8"));
    assert_non_null(strstr(json, "\"tie_word_embeddings\": false"));
    ML_ASSERT_OK(ml_model_config_from_json(json, "round trip", &d));
    assert_memory_equal(&c, &d, sizeof c);
    ml_free(json);
}

static void test_json_hf_file(void **state) {
    (void)state;
    /* shaped like the authors' published config.json (extra keys are ignored) */
    const char *hf = "{\"architectures\": [\"MistralForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": 1,"
                     " \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 512, \"initializer_range\": 0.02,"
                     " \"intermediate_size\": 1024, \"max_position_embeddings\": 32768, \"model_type\": \"mistral\","
                     " \"num_attention_heads\": 16, \"num_hidden_layers\": 1, \"num_key_value_heads\": 8,"
                     " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"sliding_window\": 4096,"
                     " \"tie_word_embeddings\": false, \"torch_dtype\": \"float32\", \"vocab_size\": 32000}";
    ml_model_config c;
    ML_ASSERT_OK(ml_model_config_from_json(hf, "config.json", &c));
    assert_int_equal(c.d_model, 512);
    assert_int_equal(c.d_mlp, 1024);
    assert_int_equal(c.n_heads, 16);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.vocab_size, 32000);
    assert_int_equal(c.max_context, 32768);
    assert_true(c.rope_theta == 10000.0 && c.rms_eps == 1e-6);
    /* 35.1M parameters, as the paper says */
    printf("paper model: %zu parameters, %zu non-embedding\n", ml_model_n_params(&c), ml_model_n_nonembedding(&c));
    /* 2 V D + q,o 2 D^2 + k,v 2 D (KV hd) + 3 D F + 3 D (norms) */
    assert_int_equal(ml_model_n_params(&c), 2 * 32000 * 512 + 2 * 512 * 512 + 2 * 512 * 256 + 3 * 512 * 1024 + 3 * 512);
    /* num_key_value_heads absent: equals num_attention_heads (HF default) */
    const char *mha = "{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
                      " \"num_attention_heads\": 4, \"vocab_size\": 100}";
    ML_ASSERT_OK(ml_model_config_from_json(mha, "mha.json", &c));
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
}

static void test_json_errors(void **state) {
    (void)state;
    ml_model_config c;
    ML_ASSERT_FAILS(ml_model_config_from_json("{\"hidden_size\": 8,", "bad.json", &c), ML_ERR_FORMAT,
                    "bad.json: invalid JSON");
    ML_ASSERT_FAILS(ml_model_config_from_json("[1]", "arr.json", &c), ML_ERR_FORMAT, "not a JSON object");
    const char *base = "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                       " \"vocab_size\": 10";
    char buf[512];
    snprintf(buf, sizeof buf, "{%s}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_FORMAT, "lacks the key 'hidden_size'");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": \"8\"}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_FORMAT, "'hidden_size' must be an integer");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": 8, \"tie_word_embeddings\": true}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_UNSUPPORTED, "tie_word_embeddings");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": 8, \"model_type\": \"gpt2\"}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_UNSUPPORTED, "model_type gpt2");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": 8, \"num_key_value_heads\": 3}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_CONFIG,
                    "x.json: model config: n_heads (2) must be divisible by n_kv_heads (3)");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": 8, \"head_dim\": 8}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_CONFIG, "head_dim = 8, expected");
    snprintf(buf, sizeof buf, "{%s, \"hidden_size\": 8, \"rope_scaling\": {\"type\": \"linear\"}}", base);
    ML_ASSERT_FAILS(ml_model_config_from_json(buf, "x.json", &c), ML_ERR_UNSUPPORTED, "rope_scaling");
    ml_model_config_default(&c);
    c.n_layers = 0;
    ML_ASSERT_FAILS(ml_model_config_validate(&c), ML_ERR_CONFIG, "n_layers = 0 is outside");
}

static void test_table(void **state) {
    (void)state;
    ml_model_config c;
    ml_model_config_default(&c);
    c.n_layers = 2;
    c.vocab_size = 100;
    ml_model *m = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    assert_int_equal(m->n_tensors, 21);
    const struct {
        const char *name;
        int64_t r, c;
        int decay;
    } expect[] = {
        {"model.embed_tokens.weight", 100, 512, 1},
        {"model.layers.1.input_layernorm.weight", 512, 0, 0},
        {"model.layers.1.self_attn.q_proj.weight", 512, 512, 1},
        {"model.layers.1.self_attn.k_proj.weight", 256, 512, 1},
        {"model.layers.1.self_attn.v_proj.weight", 256, 512, 1},
        {"model.layers.1.self_attn.o_proj.weight", 512, 512, 1},
        {"model.layers.1.post_attention_layernorm.weight", 512, 0, 0},
        {"model.layers.1.mlp.gate_proj.weight", 1024, 512, 1},
        {"model.layers.1.mlp.up_proj.weight", 1024, 512, 1},
        {"model.layers.1.mlp.down_proj.weight", 512, 1024, 1},
        {"model.norm.weight", 512, 0, 0},
        {"lm_head.weight", 100, 512, 1},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        const ml_tensor *t = NULL;
        ML_ASSERT_OK(ml_model_lookup(m, expect[i].name, &t));
        assert_int_equal(t->shape[0], expect[i].r);
        assert_int_equal(t->ndim, expect[i].c ? 2 : 1);
        if (expect[i].c) assert_int_equal(t->shape[1], expect[i].c);
        assert_int_equal(t->decay, expect[i].decay);
    }
    /* offsets tile the array without gaps */
    size_t off = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        assert_int_equal(m->tensors[i].offset, off);
        off += m->tensors[i].numel;
    }
    assert_int_equal(off, m->n_params);
    assert_int_equal(ml_model_n_nonembedding(&c), m->n_params - 2 * 100 * 512);
    const ml_tensor *t = NULL;
    ML_ASSERT_FAILS(ml_model_lookup(m, "model.layers.2.mlp.up_proj.weight", &t), ML_ERR_NOTFOUND,
                    "no tensor named 'model.layers.2.mlp.up_proj.weight'");
    /* FLOPs per token: 6N + 6DV + 12TD */
    ML_ASSERT_CLOSE(ml_model_train_flops_per_token(&c, 256),
                    6.0 * ml_model_n_nonembedding(&c) + 6.0 * 512 * 100 + 12.0 * 256 * 512, 1e-12);

    /* init: norms 1, matrices N(0, 0.02), reproducible from the seed */
    ML_ASSERT_OK(ml_model_init(m, 42));
    ML_ASSERT_OK(ml_model_lookup(m, "model.layers.0.mlp.gate_proj.weight", &t));
    double s = 0, s2 = 0;
    for (size_t j = 0; j < t->numel; j++) s += m->params[t->offset + j], s2 += pow(m->params[t->offset + j], 2);
    double mean = s / t->numel, sd = sqrt(s2 / t->numel - mean * mean);
    printf("gate_proj init mean %.2e std %.5f\n", mean, sd);
    assert_true(fabs(mean) < 1e-3 && fabs(sd - 0.02) < 5e-4);
    ML_ASSERT_OK(ml_model_lookup(m, "model.norm.weight", &t));
    for (size_t j = 0; j < t->numel; j++) assert_true(m->params[t->offset + j] == 1.0f);
    float first = m->params[0];
    ML_ASSERT_OK(ml_model_init(m, 42));
    assert_true(m->params[0] == first);
    ML_ASSERT_OK(ml_model_init(m, 43));
    assert_true(m->params[0] != first);
    ml_model_destroy(&m);
    ml_model_destroy(&m); /* tolerates NULL */
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_json_hf_file),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_table),
    };
    return ml_test_run(argc, argv, "model_config", tests, sizeof tests / sizeof tests[0]);
}
