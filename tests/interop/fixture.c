#include "fixture.h"

#include <stdio.h>
#include <string.h>

#include "mergelens/io.h"

const char fx_config[] =
    "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"vocab_size\": 48, "
    "\"hidden_size\": 16, \"intermediate_size\": 40, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 4, \"max_position_embeddings\": 64, \"rope_theta\": 10000.0, "
    "\"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": false, \"bos_token_id\": 1, \"eos_token_id\": 2}";

const fx_param *fx_params(void) {
    static fx_param p[FX_NPARAMS];
    if (p[0].name[0]) return p;
    const uint64_t V = 48, D = 16, F = 40, Q = 16, K = 8;
    int n = 0;
#define FX(r, c, ...)                                                                                                  \
    do {                                                                                                               \
        snprintf(p[n].name, sizeof p[n].name, __VA_ARGS__);                                                            \
        p[n].ndim = (c) ? 2 : 1;                                                                                       \
        p[n].dims[0] = (r);                                                                                            \
        p[n].dims[1] = (c);                                                                                            \
        n++;                                                                                                           \
    } while (0)
    FX(V, D, "model.embed_tokens.weight");
    for (int l = 0; l < 2; l++) {
        FX(D, 0, "model.layers.%d.input_layernorm.weight", l);
        FX(Q, D, "model.layers.%d.self_attn.q_proj.weight", l);
        FX(K, D, "model.layers.%d.self_attn.k_proj.weight", l);
        FX(K, D, "model.layers.%d.self_attn.v_proj.weight", l);
        FX(D, Q, "model.layers.%d.self_attn.o_proj.weight", l);
        FX(D, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        FX(F, D, "model.layers.%d.mlp.gate_proj.weight", l);
        FX(F, D, "model.layers.%d.mlp.up_proj.weight", l);
        FX(D, F, "model.layers.%d.mlp.down_proj.weight", l);
    }
    FX(D, 0, "model.norm.weight");
    FX(V, D, "lm_head.weight");
#undef FX
    return p;
}

size_t fx_numel(const fx_param *p) { return (size_t)(p->dims[0] * (p->ndim == 2 ? p->dims[1] : 1)); }

void fx_values(uint64_t seed, int i, float *out, size_t n) {
    ml_rng r;
    ml_rng_seed(&r, seed, (uint64_t)i);
    for (size_t k = 0; k < n; k++) out[k] = 0.1f * ml_rng_normal(&r);
}

int fx_write_checkpoint(const char *path, const char *config_json, uint64_t seed, const char *tokenizer_json,
                        const char *extra) {
    ml_h5 *h = NULL;
    float buf[48 * 16];
    ML_CHECK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, &h));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "model_config", config_json));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "parent", ""));
    if (tokenizer_json) ML_CHECK(ml_h5_set_attr_str(h, "/", "tokenizer_json", tokenizer_json));
    const fx_param *p = fx_params();
    for (int i = 0; i < FX_NPARAMS; i++) {
        char ds[128];
        snprintf(ds, sizeof ds, "/params/%s", p[i].name);
        fx_values(seed, i, buf, fx_numel(&p[i]));
        hsize_t dims[2] = {p[i].dims[0], p[i].dims[1]};
        ML_CHECK(ml_h5_write_tensor(h, ds, ML_F32, p[i].ndim, dims, buf));
    }
    if (extra) {
        char ds[128];
        snprintf(ds, sizeof ds, "/params/%s", extra);
        hsize_t dims[1] = {3};
        ML_CHECK(ml_h5_write_tensor(h, ds, ML_F32, 1, dims, buf));
    }
    return ml_h5_close(&h);
}

int fx_write_sae(const char *path, const char *arch, int d_in, int d_sae, int k, uint64_t seed, const char *model,
                 const char *config) {
    ml_h5 *h = NULL;
    float *buf = ml_malloc(sizeof(float) * (size_t)d_in * (size_t)d_sae);
    if (!buf) return ML_ERR_NOMEM;
    ML_CHECK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.sae", 1, &h));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "architecture", arch));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "hook_name", "blocks.0.mlp.hook_post"));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "d_in", d_in));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "d_sae", d_sae));
    ML_CHECK(ml_h5_set_attr_double(h, "/", "l1_coefficient", 5.0));
    if (k > 0) ML_CHECK(ml_h5_set_attr_int(h, "/", "k", k));
    if (model) ML_CHECK(ml_h5_set_attr_str(h, "/", "model", model));
    if (config) ML_CHECK(ml_h5_set_attr_str(h, "/", "config", config));
    const char *names[4] = {"/W_enc", "/b_enc", "/W_dec", "/b_dec"};
    hsize_t dims[4][2] = {
        {(hsize_t)d_in, (hsize_t)d_sae}, {(hsize_t)d_sae, 0}, {(hsize_t)d_sae, (hsize_t)d_in}, {(hsize_t)d_in, 0}};
    for (int i = 0; i < 4; i++) {
        fx_values(seed, 100 + i, buf, (size_t)(dims[i][0] * (dims[i][1] ? dims[i][1] : 1)));
        ML_CHECK(ml_h5_write_tensor(h, names[i], ML_F32, dims[i][1] ? 2 : 1, dims[i], buf));
    }
    ml_free(buf);
    return ml_h5_close(&h);
}
