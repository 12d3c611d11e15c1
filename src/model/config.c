/* Model configuration and its Hugging Face config.json (MistralForCausalLM). */
#include "mergelens/model.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void ml_model_config_default(ml_model_config *c) {
    memset(c, 0, sizeof *c);
    c->n_layers = 1;
    c->d_model = 512;
    c->d_mlp = 1024;
    c->n_heads = 16;
    c->n_kv_heads = 8;
    c->head_dim = 32;
    c->vocab_size = 32000;
    c->max_context = 256;
    c->rope_theta = 10000.0;
    c->rms_eps = 1e-6;
    c->init_std = 0.02;
}

int ml_model_config_validate(const ml_model_config *c) {
    const struct {
        const char *name;
        int value, lo, hi;
    } ints[] = {
        {"n_layers", c->n_layers, 1, 1024},       {"d_model", c->d_model, 2, 1 << 16},
        {"d_mlp", c->d_mlp, 1, 1 << 20},          {"n_heads", c->n_heads, 1, 4096},
        {"n_kv_heads", c->n_kv_heads, 1, 4096},   {"vocab_size", c->vocab_size, 2, 1 << 24},
        {"max_context", c->max_context, 1, 1 << 20},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].value < ints[i].lo || ints[i].value > ints[i].hi)
            return ML_FAIL(ML_ERR_CONFIG, "model config: %s = %d is outside [%d, %d]", ints[i].name, ints[i].value,
                           ints[i].lo, ints[i].hi);
    if (c->d_model % c->n_heads)
        return ML_FAIL(ML_ERR_CONFIG, "model config: d_model (%d) must be divisible by n_heads (%d)", c->d_model,
                       c->n_heads);
    if (c->head_dim != c->d_model / c->n_heads)
        return ML_FAIL(ML_ERR_CONFIG, "model config: head_dim = %d, expected d_model / n_heads = %d", c->head_dim,
                       c->d_model / c->n_heads);
    if (c->head_dim % 2)
        return ML_FAIL(ML_ERR_CONFIG, "model config: head_dim = %d must be even (RoPE)", c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return ML_FAIL(ML_ERR_CONFIG, "model config: n_heads (%d) must be divisible by n_kv_heads (%d)", c->n_heads,
                       c->n_kv_heads);
    if (!(c->rope_theta > 1.0) || !isfinite(c->rope_theta))
        return ML_FAIL(ML_ERR_CONFIG, "model config: rope_theta = %g, expected a finite value > 1", c->rope_theta);
    if (!(c->rms_eps > 0.0) || !(c->rms_eps < 1.0))
        return ML_FAIL(ML_ERR_CONFIG, "model config: rms_eps = %g, expected 0 < eps < 1", c->rms_eps);
    if (!(c->init_std > 0.0) || !isfinite(c->init_std))
        return ML_FAIL(ML_ERR_CONFIG, "model config: init_std = %g, expected a finite value > 0", c->init_std);
    return ML_OK;
}

int ml_model_config_to_json(const ml_model_config *c, char **json) {
    ML_CHECK(ml_model_config_validate(c));
    json_t *o = json_pack("{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:f,s:b,s:s,s:n,s:f,s:s}",
                          "architectures", "MistralForCausalLM", "model_type", "mistral", "vocab_size",
                          c->vocab_size, "hidden_size", c->d_model, "intermediate_size", c->d_mlp,
                          "num_hidden_layers", c->n_layers, "num_attention_heads", c->n_heads,
                          "num_key_value_heads", c->n_kv_heads, "head_dim", c->head_dim,
                          "max_position_embeddings", c->max_context, "rope_theta", c->rope_theta,
                          "rms_norm_eps", c->rms_eps, "initializer_range", c->init_std, "tie_word_embeddings", 0,
                          "hidden_act", "silu", "sliding_window", "attention_dropout", 0.0, "torch_dtype",
                          "float32");
    if (!o) return ML_FAIL(ML_ERR_INTERNAL, "model config: json_pack failed");
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text) return ML_FAIL(ML_ERR_NOMEM, "model config: json_dumps failed");
    *json = ml_strdup(text);
    free(text);
    if (!*json) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    return ML_OK;
}

/* Read an optional integer key; absent or null keeps *v. */
static int ml_json_int(const json_t *o, const char *where, const char *key, int required, int *v) {
    json_t *x = json_object_get(o, key);
    if (!x || json_is_null(x)) {
        if (required) return ML_FAIL(ML_ERR_FORMAT, "%s: config.json lacks the key '%s'", where, key);
        return ML_OK;
    }
    if (!json_is_integer(x) || json_integer_value(x) < INT32_MIN || json_integer_value(x) > INT32_MAX)
        return ML_FAIL(ML_ERR_FORMAT, "%s: config.json key '%s' must be an integer", where, key);
    *v = (int)json_integer_value(x);
    return ML_OK;
}

static int ml_json_real(const json_t *o, const char *where, const char *key, double *v) {
    json_t *x = json_object_get(o, key);
    if (!x || json_is_null(x)) return ML_OK;
    if (!json_is_number(x)) return ML_FAIL(ML_ERR_FORMAT, "%s: config.json key '%s' must be a number", where, key);
    *v = json_number_value(x);
    return ML_OK;
}

/* Keys whose presence with a non-default value we cannot honour. */
static int ml_json_check_unsupported(const json_t *o, const char *where) {
    json_t *x = json_object_get(o, "model_type");
    if (x && (!json_is_string(x) ||
              (strcmp(json_string_value(x), "mistral") != 0 && strcmp(json_string_value(x), "llama") != 0)))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: model_type %s is not supported (expected \"mistral\" or \"llama\")",
                       where, x && json_is_string(x) ? json_string_value(x) : "(not a string)");
    x = json_object_get(o, "tie_word_embeddings");
    if (x && json_is_true(x))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: tie_word_embeddings = true is not supported (untied lm_head only)",
                       where);
    x = json_object_get(o, "hidden_act");
    if (x && (!json_is_string(x) || strcmp(json_string_value(x), "silu") != 0))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: hidden_act must be \"silu\"", where);
    x = json_object_get(o, "rope_scaling");
    if (x && !json_is_null(x)) return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: rope_scaling is not supported", where);
    x = json_object_get(o, "attention_bias");
    if (x && json_is_true(x)) return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: attention_bias = true is not supported", where);
    x = json_object_get(o, "mlp_bias");
    if (x && json_is_true(x)) return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: mlp_bias = true is not supported", where);
    return ML_OK;
}

int ml_model_config_from_json(const char *json, const char *where, ml_model_config *out) {
    if (!where) where = "model config";
    json_error_t err;
    json_t *o = json_loads(json, 0, &err);
    if (!o) return ML_FAIL(ML_ERR_FORMAT, "%s: invalid JSON at line %d: %s", where, err.line, err.text);
    int rc = ML_OK;
    if (!json_is_object(o)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: config.json is not a JSON object", where);
    ml_model_config c;
    ml_model_config_default(&c);
    ML_CHECK_GOTO(ml_json_check_unsupported(o, where), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "vocab_size", 1, &c.vocab_size), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "hidden_size", 1, &c.d_model), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "intermediate_size", 1, &c.d_mlp), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "num_hidden_layers", 1, &c.n_layers), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "num_attention_heads", 1, &c.n_heads), done);
    c.n_kv_heads = c.n_heads; /* HF default when the key is absent */
    ML_CHECK_GOTO(ml_json_int(o, where, "num_key_value_heads", 0, &c.n_kv_heads), done);
    c.head_dim = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
    ML_CHECK_GOTO(ml_json_int(o, where, "head_dim", 0, &c.head_dim), done);
    ML_CHECK_GOTO(ml_json_int(o, where, "max_position_embeddings", 0, &c.max_context), done);
    ML_CHECK_GOTO(ml_json_real(o, where, "rope_theta", &c.rope_theta), done);
    ML_CHECK_GOTO(ml_json_real(o, where, "rms_norm_eps", &c.rms_eps), done);
    ML_CHECK_GOTO(ml_json_real(o, where, "initializer_range", &c.init_std), done);
    rc = ml_model_config_validate(&c);
    if (rc != ML_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", where, ml_error_message());
        rc = ML_FAIL(rc, "%s", msg);
        goto done;
    }
    *out = c;
done:
    json_decref(o);
    return rc;
}
