/* mergelens checkpoint <-> Hugging Face MistralForCausalLM directory.
 *
 * Dimension letters: V vocab, D hidden, F intermediate (MLP), L layers,
 * H attention heads, KV key/value heads, hd head dim.
 * Checkpoint tensors (docs/FORMAT.md) already carry HF names and [out, in]
 * orientation, so export and import copy tensors one to one; the only
 * conversions are dtype (float32 <-> bf16/f16) and, on import, a missing
 * lm_head with tie_word_embeddings (lm_head := embed_tokens).
 */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "interop_internal.h"
#include "mergelens/data.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/model.h"

#define ML_HF_NAME_MAX 128

typedef struct {
    int64_t V, D, F, L, H, KV, hd;
    int tie;
} ml_hf_dims;

typedef struct {
    char name[ML_HF_NAME_MAX];
    int ndim;
    int64_t shape[2];
    float *data; /* into the one parameter buffer */
} ml_hf_param;

typedef struct {
    ml_hf_dims dims;
    int n;
    ml_hf_param *p;
    float *buf; /* all parameters, one allocation */
    size_t numel;
} ml_hf_model;

static void ml_hf_model_free(ml_hf_model *m) {
    ml_free(m->p);
    ml_free(m->buf);
    m->p = NULL;
    m->buf = NULL;
}

/* A positive integer config key; def < 0 means required. null counts as absent. */
static int ml_hf_int(const char *where, json_t *cfg, const char *key, int64_t def, int64_t *out) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        if (def < 0) return ML_FAIL(ML_ERR_FORMAT, "%s: missing key '%s'", where, key);
        *out = def;
        return ML_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT32_MAX)
        return ML_FAIL(ML_ERR_FORMAT, "%s: key '%s' must be a positive integer", where, key);
    *out = (int64_t)json_integer_value(v);
    return ML_OK;
}

/* Keys of config.json that change what the model computes, in the styles of
 * transformers 4.x (`rope_theta`, `rope_scaling` at the top level) and 5.x
 * (`rope_parameters: {rope_type, rope_theta}`): implemented when they describe
 * the computation mergelens does (full causal attention, default RoPE over
 * the whole head, SiLU, no biases), refused with the key's name otherwise.
 * A 5.x rope_theta is moved to the top level, where the checkpoint keeps it. */
static int ml_hf_check_computation(const char *where, json_t *cfg) {
    json_t *rp = json_object_get(cfg, "rope_parameters"), *top = json_object_get(cfg, "rope_theta");
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp)) return ML_FAIL(ML_ERR_FORMAT, "%s: key 'rope_parameters' must be an object", where);
        const char *key;
        json_t *v;
        json_object_foreach(rp, key, v) {
            if (!strcmp(key, "rope_type") || !strcmp(key, "type")) {
                if (!json_is_string(v) || strcmp(json_string_value(v), "default"))
                    return ML_FAIL(ML_ERR_UNSUPPORTED,
                                   "%s: rope_parameters.%s %s is not supported (RoPE scaling; mergelens implements "
                                   "\"default\" only)", where, key, json_is_string(v) ? json_string_value(v) : "(not a string)");
            } else if (!strcmp(key, "rope_theta")) {
                if (!json_is_number(v)) return ML_FAIL(ML_ERR_FORMAT, "%s: rope_parameters.rope_theta must be a number", where);
                if (top && !json_is_null(top) && (!json_is_number(top) || json_number_value(top) != json_number_value(v)))
                    return ML_FAIL(ML_ERR_FORMAT, "%s: rope_theta %g and rope_parameters.rope_theta %g disagree", where,
                                   json_is_number(top) ? json_number_value(top) : NAN, json_number_value(v));
            } else if (!strcmp(key, "partial_rotary_factor")) {
                if (!json_is_number(v) || json_number_value(v) != 1.0)
                    return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: rope_parameters.partial_rotary_factor must be 1", where);
            } else {
                return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: rope_parameters.%s is not supported (RoPE scaling)", where, key);
            }
        }
        json_t *theta = json_object_get(rp, "rope_theta");
        if (theta) json_object_set_new(cfg, "rope_theta", json_real(json_number_value(theta)));
        json_object_del(cfg, "rope_parameters");
    }
    json_t *prf = json_object_get(cfg, "partial_rotary_factor");
    if (prf && !json_is_null(prf) && (!json_is_number(prf) || json_number_value(prf) != 1.0))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: partial_rotary_factor must be 1 (RoPE over the whole head)", where);
    json_t *act = json_object_get(cfg, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu")))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: hidden_act %s is not supported (expected \"silu\")", where,
                       json_is_string(act) ? json_string_value(act) : "(not a string)");
    /* a window at least as long as any context the model can take changes nothing */
    json_t *sw = json_object_get(cfg, "sliding_window"), *use = json_object_get(cfg, "use_sliding_window"),
           *mp = json_object_get(cfg, "max_position_embeddings");
    if (sw && !json_is_null(sw) && !(use && json_is_false(use))) {
        if (!json_is_integer(sw) || !mp || !json_is_integer(mp) || json_integer_value(sw) < json_integer_value(mp))
            return ML_FAIL(ML_ERR_UNSUPPORTED,
                           "%s: sliding_window %lld is not supported (mergelens attends over the whole context; "
                           "expected null or >= max_position_embeddings %lld)", where,
                           json_is_integer(sw) ? (long long)json_integer_value(sw) : -1LL,
                           mp && json_is_integer(mp) ? (long long)json_integer_value(mp) : -1LL);
    }
    json_t *lt = json_object_get(cfg, "layer_types");
    if (lt && !json_is_null(lt)) {
        size_t i;
        json_t *v;
        if (!json_is_array(lt)) return ML_FAIL(ML_ERR_FORMAT, "%s: key 'layer_types' must be a list", where);
        json_array_foreach(lt, i, v) if (!json_is_string(v) || strcmp(json_string_value(v), "full_attention"))
            return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: layer_types[%zu] %s is not supported (full_attention only)", where,
                           i, json_is_string(v) ? json_string_value(v) : "(not a string)");
    }
    return ML_OK;
}

/* Read the dimensions of a MistralForCausalLM (or the identically laid out
 * LlamaForCausalLM without biases or rope scaling) from its config. */
static int ml_hf_parse_dims(const char *where, json_t *cfg, ml_hf_dims *d) {
    if (!json_is_object(cfg)) return ML_FAIL(ML_ERR_FORMAT, "%s: not a JSON object", where);
    json_t *mt = json_object_get(cfg, "model_type");
    if (mt &&
        (!json_is_string(mt) || (strcmp(json_string_value(mt), "mistral") && strcmp(json_string_value(mt), "llama"))))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: model_type %s is not supported (expected \"mistral\" or \"llama\")",
                       where, json_is_string(mt) ? json_string_value(mt) : "(not a string)");
    const char *unsupported[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++)
        if (json_is_true(json_object_get(cfg, unsupported[i])))
            return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: %s = true is not supported (mergelens models have no biases)",
                           where, unsupported[i]);
    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rs && !json_is_null(rs))
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: rope_scaling is not supported (expected null)", where);
    ML_CHECK(ml_hf_check_computation(where, cfg));
    ML_CHECK(ml_hf_int(where, cfg, "vocab_size", -1, &d->V));
    ML_CHECK(ml_hf_int(where, cfg, "hidden_size", -1, &d->D));
    ML_CHECK(ml_hf_int(where, cfg, "intermediate_size", -1, &d->F));
    ML_CHECK(ml_hf_int(where, cfg, "num_hidden_layers", -1, &d->L));
    ML_CHECK(ml_hf_int(where, cfg, "num_attention_heads", -1, &d->H));
    ML_CHECK(ml_hf_int(where, cfg, "num_key_value_heads", d->H, &d->KV));
    if (d->D % d->H != 0 && !json_object_get(cfg, "head_dim"))
        return ML_FAIL(ML_ERR_FORMAT, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", where,
                       (long long)d->D, (long long)d->H);
    ML_CHECK(ml_hf_int(where, cfg, "head_dim", d->D / d->H, &d->hd));
    if (d->H % d->KV != 0)
        return ML_FAIL(ML_ERR_FORMAT, "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                       where, (long long)d->H, (long long)d->KV);
    json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return ML_FAIL(ML_ERR_FORMAT, "%s: key 'tie_word_embeddings' must be true or false", where);
    d->tie = json_is_true(tie);
    return ML_OK;
}

static size_t ml_hf_numel(const ml_hf_param *p) { return (size_t)(p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1)); }

/* The parameter table (names and shapes in HF order) and one buffer. */
static int ml_hf_model_create(const ml_hf_dims *d, ml_hf_model *m) {
    memset(m, 0, sizeof *m);
    m->dims = *d;
    int n = (int)(9 * d->L + 3);
    m->p = ml_calloc((size_t)n, sizeof(ml_hf_param));
    if (!m->p) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    const int64_t D = d->D, F = d->F, Q = d->H * d->hd, K = d->KV * d->hd;
#define ML_HF_ADD(r, c, ...)                                                                                           \
    do {                                                                                                               \
        ml_hf_param *p_ = &m->p[m->n++];                                                                               \
        snprintf(p_->name, sizeof p_->name, __VA_ARGS__);                                                              \
        p_->ndim = (c) ? 2 : 1;                                                                                        \
        p_->shape[0] = (r);                                                                                            \
        p_->shape[1] = (c);                                                                                            \
    } while (0)
    ML_HF_ADD(d->V, D, "model.embed_tokens.weight");
    for (int64_t i = 0; i < d->L; i++) {
        const char *pre = "model.layers";
        ML_HF_ADD(D, 0, "%s.%lld.input_layernorm.weight", pre, (long long)i);
        ML_HF_ADD(Q, D, "%s.%lld.self_attn.q_proj.weight", pre, (long long)i);
        ML_HF_ADD(K, D, "%s.%lld.self_attn.k_proj.weight", pre, (long long)i);
        ML_HF_ADD(K, D, "%s.%lld.self_attn.v_proj.weight", pre, (long long)i);
        ML_HF_ADD(D, Q, "%s.%lld.self_attn.o_proj.weight", pre, (long long)i);
        ML_HF_ADD(D, 0, "%s.%lld.post_attention_layernorm.weight", pre, (long long)i);
        ML_HF_ADD(F, D, "%s.%lld.mlp.gate_proj.weight", pre, (long long)i);
        ML_HF_ADD(F, D, "%s.%lld.mlp.up_proj.weight", pre, (long long)i);
        ML_HF_ADD(D, F, "%s.%lld.mlp.down_proj.weight", pre, (long long)i);
    }
    ML_HF_ADD(D, 0, "model.norm.weight");
    ML_HF_ADD(d->V, D, "lm_head.weight");
#undef ML_HF_ADD
    for (int i = 0; i < m->n; i++) m->numel += ml_hf_numel(&m->p[i]);
    m->buf = ml_malloc(m->numel * sizeof(float));
    if (!m->buf) {
        ml_hf_model_free(m);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    size_t off = 0;
    for (int i = 0; i < m->n; i++) {
        m->p[i].data = m->buf + off;
        off += ml_hf_numel(&m->p[i]);
    }
    return ML_OK;
}

static ml_hf_param *ml_hf_find(ml_hf_model *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->p[i].name, name)) return &m->p[i];
    return NULL;
}

/* Tensors old HF checkpoints carry that are derived, not parameters. */
static int ml_hf_ignorable(const char *name) {
    size_t n = strlen(name), k = strlen("rotary_emb.inv_freq");
    return n >= k && !strcmp(name + n - k, "rotary_emb.inv_freq");
}

/* ---- export ------------------------------------------------------------------- */
/* No tokenizer_json: convert the training stores' tokenizer (root attribute `tokenizer`, a
 * mergelens.tokenizer file) to dir/tokenizer.json, when it is recorded and exists. */
static int ml_hf_export_trained_tokenizer(ml_h5 *h, const char *dir) {
    char *tok_path = NULL, path[PATH_MAX];
    ml_tokenizer *tok = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_attr_str_optional(h, "tokenizer", &tok_path));
    if (!tok_path) return ML_OK;
    if (!tok_path[0] || !ml_file_exists(tok_path)) {
        ml_warn("%s: tokenizer '%s' does not exist; %s/tokenizer.json not written", ml_h5_path(h), tok_path, dir);
        ml_free(tok_path);
        return ML_OK;
    }
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "tokenizer.json"), done);
    ML_CHECK_GOTO(ml_tokenizer_load(tok_path, &tok), done);
    ML_CHECK_GOTO(ml_tokenizer_save_hf_json(tok, path), done);
done:
    ml_tokenizer_destroy(&tok);
    ml_free(tok_path);
    return rc;
}

static int ml_hf_export_tokenizer(ml_h5 *h, const char *dir) {
    char *tok = NULL, *data = NULL, path[PATH_MAX];
    size_t n = 0;
    int rc = ML_OK;
    ML_CHECK(ml_attr_str_optional(h, "tokenizer_json", &tok));
    if (!tok) return ml_hf_export_trained_tokenizer(h, dir);
    if (!tok[0] || !ml_file_exists(tok)) {
        ml_warn("%s: tokenizer_json '%s' does not exist; %s/tokenizer.json not written", ml_h5_path(h), tok, dir);
        ml_free(tok);
        return ML_OK;
    }
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "tokenizer.json"), done);
    ML_CHECK_GOTO(ml_read_file(tok, &data, &n), done);
    ML_CHECK_GOTO(ml_atomic_write_file(path, data, n), done);
done:
    ml_free(data);
    ml_free(tok);
    return rc;
}

int ml_hf_export(const char *ckpt_path, const char *dir, ml_st_dtype dtype) {
    int rc = ML_OK, nnames = 0;
    ml_h5 *h = NULL;
    char *cfg_text = NULL, **names = NULL, path[PATH_MAX];
    json_t *cfg = NULL;
    ml_hf_model m = {0};
    ml_st_tensor *t = NULL;
    if (dtype != ML_ST_F32 && dtype != ML_ST_BF16 && dtype != ML_ST_F16)
        return ML_FAIL(ML_ERR_ARG, "export hf: dtype %s is not a float dtype (f32, bf16 or f16)",
                       ml_st_dtype_name(dtype));
    ml_prof_begin("hf_export");
    ML_CHECK_GOTO(ml_h5_open(MPI_COMM_SELF, ckpt_path, ML_CHECKPOINT_FORMAT, 1, 1, &h), done);
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "model_config", &cfg_text), done);
    json_error_t jerr;
    cfg = json_loads(cfg_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!cfg)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: attribute model_config is not valid JSON: %s", ckpt_path, jerr.text);
    char where[PATH_MAX + 32];
    snprintf(where, sizeof where, "%s: model_config", ckpt_path);
    ml_hf_dims d;
    ML_CHECK_GOTO(ml_hf_parse_dims(where, cfg, &d), done);
    ML_CHECK_GOTO(ml_hf_model_create(&d, &m), done);

    /* every dataset under /params must be a parameter of this config */
    ML_CHECK_GOTO(ml_h5_list(h, "/params", 0, &names, &nnames), done);
    for (int i = 0; i < nnames; i++)
        if (!ml_hf_find(&m, names[i]))
            ML_FAIL_GOTO(done, ML_ERR_FORMAT,
                         "%s: unexpected tensor '/params/%s' (not in a MistralForCausalLM with "
                         "this model_config)",
                         ckpt_path, names[i]);
    t = ml_calloc((size_t)m.n, sizeof *t);
    if (!t) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    for (int i = 0; i < m.n; i++) {
        ml_hf_param *p = &m.p[i];
        char dsname[ML_HF_NAME_MAX + 16];
        snprintf(dsname, sizeof dsname, "/params/%s", p->name);
        if (!ml_h5_exists(h, dsname)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: missing tensor '%s'", ckpt_path, dsname);
        hsize_t dims[2] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1]};
        ML_CHECK_GOTO(ml_h5_read_tensor(h, dsname, ML_F32, p->ndim, dims, p->data), done);
        t[i] = (ml_st_tensor){.name = p->name, .dtype = dtype, .ndim = p->ndim, .data = p->data, .from_f32 = 1};
        t[i].shape[0] = p->shape[0];
        t[i].shape[1] = p->shape[1];
    }
    ML_CHECK_GOTO(ml_mkdirs(dir), done);
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "model.safetensors"), done);
    const char *meta[] = {"format", "pt", "mergelens_checkpoint", ckpt_path};
    ML_CHECK_GOTO(ml_safetensors_write(path, m.n, t, 2, meta), done);

    /* config.json: the checkpoint's model_config plus torch_dtype */
    if (!json_object_get(cfg, "architectures"))
        json_object_set_new(cfg, "architectures", json_pack("[s]", "MistralForCausalLM"));
    if (!json_object_get(cfg, "model_type")) json_object_set_new(cfg, "model_type", json_string("mistral"));
    json_object_set_new(cfg, "torch_dtype", json_string(ml_st_dtype_torch_name(dtype)));
    /* both config styles: transformers 5 reads rope_parameters, 4.x rope_theta */
    json_t *theta = json_object_get(cfg, "rope_theta");
    json_object_set_new(cfg, "rope_parameters", json_pack("{s:s,s:f}", "rope_type", "default", "rope_theta",
                                                          theta && json_is_number(theta) ? json_number_value(theta)
                                                                                         : 10000.0));
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "config.json"), done);
    ML_CHECK_GOTO(ml_atomic_write_json(path, cfg), done);
    ML_CHECK_GOTO(ml_hf_export_tokenizer(h, dir), done);
    ml_info("exported %s -> %s (%d tensors, %zu parameters, %s)", ckpt_path, dir, m.n, m.numel,
            ml_st_dtype_name(dtype));
done:
    ml_prof_end("hf_export", 0, rc == ML_OK ? (double)m.numel * (4 + ml_st_dtype_size(dtype)) : 0);
    ml_free(t);
    ml_hf_model_free(&m);
    ml_h5_free_names(names, nnames);
    json_decref(cfg);
    ml_free(cfg_text);
    if (h) {
        int crc = ml_h5_close(&h);
        if (rc == ML_OK) rc = crc;
    }
    return rc;
}

/* ---- import ------------------------------------------------------------------- */
/* The safetensors files of a HF directory and which holds each tensor. */
typedef struct {
    int nfiles;
    char **files;        /* file names relative to dir */
    ml_safetensors **st; /* opened lazily */
    json_t *weight_map;  /* sharded: name -> file name; NULL for one file */
} ml_hf_weights;

static void ml_hf_weights_free(ml_hf_weights *w) {
    for (int i = 0; i < w->nfiles; i++) {
        ml_safetensors_close(&w->st[i]);
        ml_free(w->files[i]);
    }
    ml_free(w->files);
    ml_free(w->st);
    json_decref(w->weight_map);
    memset(w, 0, sizeof *w);
}

static int ml_hf_weights_add(ml_hf_weights *w, const char *file) {
    for (int i = 0; i < w->nfiles; i++)
        if (!strcmp(w->files[i], file)) return i;
    char **nf = ml_realloc(w->files, sizeof(char *) * (size_t)(w->nfiles + 1));
    if (!nf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    w->files = nf;
    ml_safetensors **ns = ml_realloc(w->st, sizeof(ml_safetensors *) * (size_t)(w->nfiles + 1));
    if (!ns) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    w->st = ns;
    w->st[w->nfiles] = NULL;
    if (!(w->files[w->nfiles] = ml_strdup(file))) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    return w->nfiles++;
}

static int ml_hf_weights_open(const char *dir, ml_hf_weights *w) {
    char path[PATH_MAX];
    memset(w, 0, sizeof *w);
    ML_CHECK(ml_path_join(path, sizeof path, dir, "model.safetensors"));
    if (ml_file_exists(path)) { /* one file, opened now */
        int k = ml_hf_weights_add(w, "model.safetensors");
        if (k < 0) return ml_error_trace(k, __FILE__, __LINE__, __func__);
        ML_CHECK(ml_safetensors_open(path, &w->st[k]));
        return ML_OK;
    }
    ML_CHECK(ml_path_join(path, sizeof path, dir, "model.safetensors.index.json"));
    if (!ml_file_exists(path))
        return ML_FAIL(ML_ERR_NOTFOUND, "%s: no model.safetensors or model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *idx = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!idx) return ML_FAIL(ML_ERR_FORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(idx);
        return ML_FAIL(ML_ERR_FORMAT, "%s: missing object 'weight_map'", path);
    }
    w->weight_map = json_incref(wm);
    json_decref(idx);
    const char *name;
    json_t *file;
    json_object_foreach(w->weight_map, name, file) {
        if (!json_is_string(file) || strchr(json_string_value(file), '/'))
            return ML_FAIL(ML_ERR_FORMAT, "%s: weight_map entry '%s' is not a file name in the same directory", path,
                           name);
        int k = ml_hf_weights_add(w, json_string_value(file));
        if (k < 0) return ml_error_trace(k, __FILE__, __LINE__, __func__);
    }
    return ML_OK;
}

/* The opened file that should hold `name` (shards are opened on first use);
 * *st = NULL if the directory does not have it. */
static int ml_hf_weights_locate(const char *dir, ml_hf_weights *w, const char *name, ml_safetensors **st) {
    int k = 0;
    *st = NULL;
    if (w->weight_map) {
        json_t *f = json_object_get(w->weight_map, name);
        if (!f) return ML_OK;
        k = ml_hf_weights_add(w, json_string_value(f));
        if (k < 0) return ml_error_trace(k, __FILE__, __LINE__, __func__);
    }
    if (!w->st[k]) {
        char path[PATH_MAX];
        ML_CHECK(ml_path_join(path, sizeof path, dir, w->files[k]));
        ML_CHECK(ml_safetensors_open(path, &w->st[k]));
    }
    if (ml_safetensors_find(w->st[k], name) >= 0)
        *st = w->st[k];
    else if (w->weight_map)
        return ML_FAIL(ML_ERR_FORMAT, "%s/%s: no tensor '%s' although the weight_map lists it there", dir, w->files[k],
                       name);
    return ML_OK;
}

/* Every tensor the directory holds must be a parameter (or ignorable). */
static int ml_hf_check_unexpected(const char *dir, ml_hf_weights *w, ml_hf_model *m) {
    if (w->weight_map) {
        const char *name;
        json_t *v;
        json_object_foreach(w->weight_map, name, v) {
            if (!ml_hf_find(m, name) && !ml_hf_ignorable(name))
                return ML_FAIL(ML_ERR_FORMAT,
                               "%s/model.safetensors.index.json: unexpected tensor '%s' (not in a "
                               "MistralForCausalLM with this config.json)",
                               dir, name);
        }
        return ML_OK;
    }
    ml_safetensors *st = w->st[0];
    for (int i = 0; i < ml_safetensors_count(st); i++) {
        const char *name = ml_safetensors_name(st, i);
        if (!ml_hf_find(m, name) && !ml_hf_ignorable(name))
            return ML_FAIL(ML_ERR_FORMAT,
                           "%s: unexpected tensor '%s' (not in a MistralForCausalLM with this config.json)",
                           ml_safetensors_path(st), name);
    }
    return ML_OK;
}

static int ml_hf_read_param(const char *dir, ml_hf_weights *w, ml_hf_param *p, int *missing) {
    ml_safetensors *st;
    char a[128], b[128];
    *missing = 0;
    ML_CHECK(ml_hf_weights_locate(dir, w, p->name, &st));
    if (!st) {
        *missing = 1;
        return ML_OK;
    }
    int i = ml_safetensors_find(st, p->name), nd;
    const int64_t *shape = ml_safetensors_shape(st, i, &nd);
    int same = nd == p->ndim;
    for (int d = 0; same && d < nd; d++) same = shape[d] == p->shape[d];
    if (!same)
        return ML_FAIL(ML_ERR_SHAPE, "%s: tensor '%s' has shape %s but config.json implies %s", ml_safetensors_path(st),
                       p->name, ml_fmt_shape(a, sizeof a, nd, shape), ml_fmt_shape(b, sizeof b, p->ndim, p->shape));
    ML_CHECK(ml_safetensors_read_f32(st, p->name, p->data, ml_hf_numel(p)));
    return ML_OK;
}

/* config.json as stored in the checkpoint: explicit head_dim and
 * num_key_value_heads, HF defaults for omitted keys, untied (lm_head is a
 * separate tensor in mergelens), no torch_dtype (the checkpoint is float32). */
static void ml_hf_normalise_config(json_t *cfg, const ml_hf_dims *d) {
    json_object_set_new(cfg, "architectures", json_pack("[s]", "MistralForCausalLM"));
    json_object_set_new(cfg, "model_type", json_string("mistral"));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(d->KV));
    json_object_set_new(cfg, "head_dim", json_integer(d->hd));
    json_object_set_new(cfg, "tie_word_embeddings", json_false());
    if (!json_object_get(cfg, "max_position_embeddings"))
        json_object_set_new(cfg, "max_position_embeddings", json_integer(131072));
    if (!json_object_get(cfg, "rope_theta")) json_object_set_new(cfg, "rope_theta", json_real(10000.0));
    if (!json_object_get(cfg, "rms_norm_eps")) json_object_set_new(cfg, "rms_norm_eps", json_real(1e-6));
    json_object_del(cfg, "torch_dtype");
}

int ml_hf_import(const char *dir, const char *out_path, const char *config_json) {
    int rc = ML_OK;
    char path[PATH_MAX], *cfg_text = NULL;
    json_t *cfg = NULL;
    ml_hf_model m = {0};
    ml_hf_weights w = {0};
    ml_h5 *h = NULL;
    ml_prof_begin("hf_import");
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "config.json"), done);
    json_error_t jerr;
    cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!cfg) {
        if (!ml_file_exists(path)) ML_FAIL_GOTO(done, ML_ERR_NOTFOUND, "%s: no such file", path);
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    ml_hf_dims d;
    ML_CHECK_GOTO(ml_hf_parse_dims(path, cfg, &d), done);
    ML_CHECK_GOTO(ml_hf_model_create(&d, &m), done);
    ML_CHECK_GOTO(ml_hf_weights_open(dir, &w), done);
    ML_CHECK_GOTO(ml_hf_check_unexpected(dir, &w, &m), done);
    for (int i = 0; i < m.n; i++) {
        int missing;
        ML_CHECK_GOTO(ml_hf_read_param(dir, &w, &m.p[i], &missing), done);
        if (!missing) continue;
        ml_hf_param *p = &m.p[i];
        if (!strcmp(p->name, "lm_head.weight") && d.tie) {
            memcpy(p->data, m.p[0].data, ml_hf_numel(p) * sizeof(float)); /* tied: lm_head = embed_tokens */
            ml_info("%s: lm_head.weight absent, tie_word_embeddings: copied model.embed_tokens.weight", dir);
            continue;
        }
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: missing tensor '%s'%s", dir, p->name,
                     strcmp(p->name, "lm_head.weight") ? "" : " (config.json has tie_word_embeddings false)");
    }
    for (int i = 0; i < m.n; i++)
        for (size_t k = 0; k < ml_hf_numel(&m.p[i]); k++)
            if (!(m.p[i].data[k] - m.p[i].data[k] == 0.0f)) /* NaN or Inf */
                ML_FAIL_GOTO(done, ML_ERR_NUMERIC, "%s: tensor '%s' element %zu is %g", dir, m.p[i].name, k,
                             (double)m.p[i].data[k]);

    ml_hf_normalise_config(cfg, &d);
    cfg_text = json_dumps(cfg, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!cfg_text) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory serialising the model config");
    ML_CHECK_GOTO(ml_h5_create(MPI_COMM_SELF, out_path, ML_CHECKPOINT_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "model_config", cfg_text), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "parent", dir), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", config_json ? config_json : "{}"), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "/params"), done);
    for (int i = 0; i < m.n; i++) {
        ml_hf_param *p = &m.p[i];
        char dsname[ML_HF_NAME_MAX + 16];
        snprintf(dsname, sizeof dsname, "/params/%s", p->name);
        hsize_t dims[2] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1]};
        ML_CHECK_GOTO(ml_h5_write_tensor(h, dsname, ML_F32, p->ndim, dims, p->data), done);
    }
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("imported %s -> %s (%d tensors, %zu parameters)", dir, out_path, m.n, m.numel);
done:
    ml_prof_end("hf_import", 0, rc == ML_OK ? (double)m.numel * 8 : 0);
    ml_h5_discard(&h);
    ml_hf_weights_free(&w);
    ml_hf_model_free(&m);
    json_decref(cfg);
    free(cfg_text);
    return rc;
}
