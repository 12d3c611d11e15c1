/* HF export/import and SAELens export: round trips against the checkpoint's
 * own tensors (read back through io.h), layouts checked tensor by tensor,
 * bad inputs checked by message. */
#include <jansson.h>
#include <math.h>

#include "fixture.h"
#include "ml_test.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"

static const char *tdir(void) {
    static char d[1024];
    if (!d[0]) snprintf(d, sizeof d, "%s", ml_test_dir("interop_hf"));
    return d;
}
/* A path in the test directory; the last 64 results stay valid. */
static const char *tpath(const char *name) {
    static char buf[64][1200];
    static int k = 0;
    k = (k + 1) % 64;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tdir(), name);
    return buf[k];
}

static json_t *load_json(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) fail_msg("%s: %s", path, e.text);
    return j;
}

/* Every parameter of checkpoint a equals transform(checkpoint b's) bitwise. */
typedef float (*fx_map)(float);
static float same(float x) { return x; }
static float via_bf16(float x) { return ml_bf16_to_f32(ml_f32_to_bf16(x)); }
static float via_f16(float x) { return ml_f16_to_f32(ml_f32_to_f16(x)); }

static void compare_checkpoints(const char *got, const char *ref, fx_map f) {
    ml_h5 *a = NULL, *b = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, got, "mergelens.checkpoint", 1, 1, &a));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, ref, "mergelens.checkpoint", 1, 1, &b));
    char **names = NULL;
    int n = 0;
    ML_ASSERT_OK(ml_h5_list(a, "/params", 0, &names, &n));
    assert_int_equal(n, FX_NPARAMS);
    ml_h5_free_names(names, n);
    const fx_param *p = fx_params();
    static float x[48 * 16], y[48 * 16];
    for (int i = 0; i < FX_NPARAMS; i++) {
        char ds[128];
        snprintf(ds, sizeof ds, "/params/%s", p[i].name);
        hsize_t dims[2] = {p[i].dims[0], p[i].dims[1]};
        ML_ASSERT_OK(ml_h5_read_tensor(a, ds, ML_F32, p[i].ndim, dims, x));
        ML_ASSERT_OK(ml_h5_read_tensor(b, ds, ML_F32, p[i].ndim, dims, y));
        for (size_t k = 0; k < fx_numel(&p[i]); k++) {
            float want = f(y[k]);
            if (memcmp(&x[k], &want, 4) != 0) fail_msg("%s[%zu]: %a != %a", p[i].name, k, x[k], want);
        }
    }
    ML_ASSERT_OK(ml_h5_close(&a));
    ML_ASSERT_OK(ml_h5_close(&b));
}

static json_t *ckpt_config(const char *path) {
    ml_h5 *h = NULL;
    char *text = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "model_config", &text));
    ML_ASSERT_OK(ml_h5_close(&h));
    json_t *j = json_loads(text, 0, NULL);
    ml_free(text);
    assert_non_null(j);
    return j;
}

/* The exported safetensors holds exactly the checkpoint's tensors. */
static void check_export_file(const char *dir, ml_st_dtype dtype, uint64_t seed, fx_map f) {
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(path, &st));
    assert_int_equal(ml_safetensors_count(st), FX_NPARAMS);
    assert_string_equal(ml_safetensors_metadata(st, "format"), "pt");
    const fx_param *p = fx_params();
    static float ref[48 * 16], got[48 * 16];
    for (int i = 0; i < FX_NPARAMS; i++) {
        int j = ml_safetensors_find(st, p[i].name), nd;
        if (j < 0) fail_msg("%s missing from %s", p[i].name, path);
        assert_int_equal(ml_safetensors_dtype(st, j), dtype);
        const int64_t *sh = ml_safetensors_shape(st, j, &nd);
        assert_int_equal(nd, p[i].ndim);
        for (int d = 0; d < nd; d++) assert_int_equal(sh[d], p[i].dims[d]);
        size_t n = fx_numel(&p[i]);
        ML_ASSERT_OK(ml_safetensors_read_f32(st, p[i].name, got, n));
        fx_values(seed, i, ref, n);
        for (size_t k = 0; k < n; k++) {
            float want = f(ref[k]);
            if (memcmp(&got[k], &want, 4) != 0) fail_msg("%s[%zu]: %a != %a", p[i].name, k, got[k], want);
        }
    }
    ml_safetensors_close(&st);
}

static void test_round_trip_f32(void **state) {
    (void)state;
    const char *ck = tpath("rt.h5"), *dir = tpath("rt_hf"), *back = tpath("rt_back.h5");
    ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 7, NULL, NULL));
    ML_ASSERT_OK(ml_hf_export(ck, dir, ML_ST_F32));
    check_export_file(dir, ML_ST_F32, 7, same);
    /* config.json = model_config + torch_dtype */
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = load_json(path), *orig = json_loads(fx_config, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "float32");
    json_object_del(cfg, "torch_dtype");
    /* transformers 5 style next to the 4.x key */
    json_t *rp = json_object_get(cfg, "rope_parameters");
    assert_string_equal(json_string_value(json_object_get(rp, "rope_type")), "default");
    assert_true(json_number_value(json_object_get(rp, "rope_theta")) == 10000.0);
    json_object_del(cfg, "rope_parameters");
    assert_true(json_equal(cfg, orig));
    json_decref(cfg);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_false(ml_file_exists(path));

    ML_ASSERT_OK(ml_hf_import(dir, back, "{\"x\":1}"));
    compare_checkpoints(back, ck, same); /* bitwise identical */
    json_t *cb = ckpt_config(back);
    assert_true(json_equal(cb, orig));
    json_decref(cb);
    json_decref(orig);
    ml_h5 *h = NULL;
    char *parent = NULL, *config = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, back, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "parent", &parent));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "config", &config));
    assert_string_equal(parent, dir);
    assert_string_equal(config, "{\"x\":1}");
    ml_free(parent);
    ml_free(config);
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void test_round_trip_16bit(void **state) {
    (void)state;
    const char *ck = tpath("rt16.h5"), *dir = tpath("rt16_bf"), *dir2 = tpath("rt16_f16"),
               *back = tpath("rt16_back.h5");
    ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 9, NULL, NULL));
    ML_ASSERT_OK(ml_hf_export(ck, dir, ML_ST_BF16));
    check_export_file(dir, ML_ST_BF16, 9, via_bf16);
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = load_json(path);
    assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "bfloat16");
    json_decref(cfg);
    ML_ASSERT_OK(ml_hf_import(dir, back, NULL));
    compare_checkpoints(back, ck, via_bf16);
    ML_ASSERT_OK(ml_hf_export(ck, dir2, ML_ST_F16));
    check_export_file(dir2, ML_ST_F16, 9, via_f16);
    ML_ASSERT_FAILS(ml_hf_export(ck, dir2, ML_ST_I32), ML_ERR_ARG, "dtype I32 is not a float dtype");
}

static void test_tokenizer_copy(void **state) {
    (void)state;
    const char *tok = tpath("tok.json"), *ck = tpath("tok.h5"), *dir = tpath("tok_hf");
    const char text[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}\n";
    FILE *f = fopen(tok, "w");
    fputs(text, f);
    fclose(f);
    ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 1, tok, NULL));
    ML_ASSERT_OK(ml_hf_export(ck, dir, ML_ST_F32));
    char path[1200], got[256] = {0};
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    assert_int_equal(n, strlen(text));
    assert_string_equal(got, text);
    /* a dangling tokenizer_json is skipped with a warning */
    const char *ck2 = tpath("tok2.h5"), *dir2 = tpath("tok2_hf");
    ML_ASSERT_OK(fx_write_checkpoint(ck2, fx_config, 1, tpath("absent.json"), NULL));
    ML_ASSERT_OK(ml_hf_export(ck2, dir2, ML_ST_F32));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir2);
    assert_false(ml_file_exists(path));
}

/* Write an HF directory by hand with the given tensors (f32 values of seed). */
static void write_hf_dir(const char *dir, const char *config, int nshards, const char *skip, const char *bad_shape,
                         const char *extra) {
    ml_mkdirs(dir);
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(config, f);
    fclose(f);
    const fx_param *p = fx_params();
    static float vals[FX_NPARAMS + 1][48 * 16];
    ml_st_tensor t[FX_NPARAMS + 1];
    int n = 0;
    for (int i = 0; i < FX_NPARAMS; i++) {
        if (skip && !strcmp(p[i].name, skip)) continue;
        fx_values(3, i, vals[n], fx_numel(&p[i]));
        t[n] = (ml_st_tensor){.name = p[i].name, .dtype = ML_ST_F32, .ndim = p[i].ndim, .data = vals[n]};
        t[n].shape[0] = (int64_t)p[i].dims[0];
        t[n].shape[1] = (int64_t)p[i].dims[1];
        if (bad_shape && !strcmp(p[i].name, bad_shape)) t[n].shape[0] -= 1;
        n++;
    }
    if (extra) t[n++] = (ml_st_tensor){.name = extra, .dtype = ML_ST_F32, .ndim = 1, .shape = {2}, .data = vals[0]};
    if (nshards == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        ML_ASSERT_OK(ml_safetensors_write(path, n, t, 0, NULL));
        return;
    }
    /* shards: tensor i goes to shard i % nshards */
    json_t *idx = json_pack("{s:{s:i}, s:{}}", "metadata", "total_size", 0, "weight_map");
    for (int s = 0; s < nshards; s++) {
        ml_st_tensor sub[FX_NPARAMS + 1];
        int m = 0;
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        for (int i = s; i < n; i += nshards) {
            sub[m++] = t[i];
            json_object_set_new(json_object_get(idx, "weight_map"), t[i].name, json_string(fname));
        }
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        ML_ASSERT_OK(ml_safetensors_write(path, m, sub, 1, (const char *[]){"format", "pt"}));
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_dump_file(idx, path, JSON_INDENT(2));
    json_decref(idx);
}

static void test_import_sharded_tied(void **state) {
    (void)state;
    const char *one = tpath("imp_one"), *sh = tpath("imp_sharded"), *a = tpath("imp_one.h5"), *b = tpath("imp_sh.h5");
    write_hf_dir(one, fx_config, 1, NULL, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq");
    write_hf_dir(sh, fx_config, 3, NULL, NULL, NULL);
    ML_ASSERT_OK(ml_hf_import(one, a, NULL));
    ML_ASSERT_OK(ml_hf_import(sh, b, NULL));
    compare_checkpoints(b, a, same);
    /* tied embeddings: lm_head absent -> copy of embed_tokens */
    json_t *cfg = json_loads(fx_config, 0, NULL);
    json_object_set_new(cfg, "tie_word_embeddings", json_true());
    json_object_del(cfg, "head_dim"); /* defaults to hidden_size / heads = 4 */
    json_object_del(cfg, "rope_theta");
    char *text = json_dumps(cfg, 0);
    const char *tied = tpath("imp_tied"), *c = tpath("imp_tied.h5");
    write_hf_dir(tied, text, 2, "lm_head.weight", NULL, NULL);
    free(text);
    json_decref(cfg);
    ML_ASSERT_OK(ml_hf_import(tied, c, NULL));
    ml_h5 *h = NULL;
    static float emb[48 * 16], head[48 * 16];
    hsize_t dims[2] = {48, 16};
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, c, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/params/model.embed_tokens.weight", ML_F32, 2, dims, emb));
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/params/lm_head.weight", ML_F32, 2, dims, head));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_memory_equal(emb, head, sizeof emb);
    float ref[48 * 16];
    fx_values(3, 0, ref, 48 * 16);
    assert_memory_equal(emb, ref, sizeof ref);
    json_t *stored = ckpt_config(c);
    assert_false(json_is_true(json_object_get(stored, "tie_word_embeddings")));
    assert_int_equal(json_integer_value(json_object_get(stored, "head_dim")), 4);
    assert_true(json_real_value(json_object_get(stored, "rope_theta")) == 10000.0);
    json_decref(stored);
}

/* config.json of transformers 4.x (rope_theta) and 5.x (rope_parameters):
 * both import to the same rope_theta; every key that changes the computation
 * and is not implemented is refused by name (issue #20 item 1). */
static const char *cfg_with(const char *set_json, const char *del_key) {
    static char buf[4][2048];
    static int slot;
    json_t *cfg = json_loads(fx_config, 0, NULL), *add = json_loads(set_json, 0, NULL);
    if (del_key) json_object_del(cfg, del_key);
    json_object_update(cfg, add);
    char *text = json_dumps(cfg, 0);
    char *out = buf[slot++ % 4];
    snprintf(out, 2048, "%s", text);
    free(text);
    json_decref(cfg);
    json_decref(add);
    return out;
}

static double imported_theta(const char *name, const char *config) {
    const char *dir = tpath(name);
    char out[1300];
    snprintf(out, sizeof out, "%s.h5", dir);
    write_hf_dir(dir, config, 1, NULL, NULL, NULL);
    ML_ASSERT_OK(ml_hf_import(dir, out, NULL));
    json_t *stored = ckpt_config(out);
    double theta = json_number_value(json_object_get(stored, "rope_theta"));
    assert_null(json_object_get(stored, "rope_parameters"));
    json_decref(stored);
    return theta;
}

static void test_import_config_styles(void **state) {
    (void)state;
    long live = ml_alloc_live();
    assert_true(imported_theta("cfg4", cfg_with("{\"rope_theta\": 500000.0}", NULL)) == 500000.0);
    assert_true(imported_theta("cfg5", cfg_with("{\"rope_parameters\": {\"rope_type\": \"default\", "
                                                "\"rope_theta\": 500000.0}}", "rope_theta")) == 500000.0);
    assert_true(imported_theta("cfg45", cfg_with("{\"rope_parameters\": {\"rope_type\": \"default\", "
                                                 "\"rope_theta\": 10000.0}, \"sliding_window\": 64, "
                                                 "\"hidden_act\": \"silu\"}", NULL)) == 10000.0);
    assert_true(imported_theta("cfg_nowin", cfg_with("{\"sliding_window\": 16, \"use_sliding_window\": false}",
                                                     NULL)) == 10000.0);
    const char *out = tpath("cfg_bad.h5");
    struct {
        const char *name, *set, *del, *msg;
        int code;
    } bad[] = {
        {"cfg_linear", "{\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0, \"rope_theta\": 1e4}}",
         "rope_theta", "rope_parameters.rope_type linear is not supported", 0},
        {"cfg_factor", "{\"rope_parameters\": {\"rope_type\": \"default\", \"factor\": 2.0}}", NULL,
         "rope_parameters.factor is not supported", 0},
        {"cfg_disagree", "{\"rope_parameters\": {\"rope_theta\": 500000.0}}", NULL,
         "rope_theta 10000 and rope_parameters.rope_theta 500000 disagree", ML_ERR_FORMAT},
        {"cfg_window", "{\"sliding_window\": 16}", NULL,
         "sliding_window 16 is not supported (mergelens attends over the whole context; expected null or >= "
         "max_position_embeddings 64)", 0},
        {"cfg_act", "{\"hidden_act\": \"gelu\"}", NULL, "hidden_act gelu is not supported", 0},
        {"cfg_partial", "{\"partial_rotary_factor\": 0.5}", NULL, "partial_rotary_factor must be 1", 0},
        {"cfg_layers", "{\"layer_types\": [\"full_attention\", \"sliding_attention\"]}", NULL,
         "layer_types[1] sliding_attention is not supported", 0},
        {"cfg_scaling", "{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", NULL,
         "rope_scaling is not supported", 0},
        {"cfg_bias", "{\"attention_bias\": true}", NULL, "attention_bias = true is not supported", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *dir = tpath(bad[i].name);
        write_hf_dir(dir, cfg_with(bad[i].set, bad[i].del), 1, NULL, NULL, NULL);
        ML_ASSERT_FAILS(ml_hf_import(dir, out, NULL), bad[i].code ? bad[i].code : ML_ERR_UNSUPPORTED, bad[i].msg);
    }
    assert_false(ml_file_exists(out));
    assert_int_equal(ml_alloc_live(), live);
}

static void test_import_errors(void **state) {
    (void)state;
    long live = ml_alloc_live();
    const char *out = tpath("bad_import.h5");
    const char *d1 = tpath("bad_shape");
    write_hf_dir(d1, fx_config, 1, NULL, "model.layers.1.mlp.up_proj.weight", NULL);
    ML_ASSERT_FAILS(ml_hf_import(d1, out, NULL), ML_ERR_SHAPE,
                    "bad_shape/model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape [39, 16] but "
                    "config.json implies [40, 16]");
    const char *d2 = tpath("bad_nohead");
    write_hf_dir(d2, fx_config, 1, "lm_head.weight", NULL, NULL);
    ML_ASSERT_FAILS(ml_hf_import(d2, out, NULL), ML_ERR_FORMAT,
                    "missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false)");
    const char *d3 = tpath("bad_extra");
    write_hf_dir(d3, fx_config, 2, NULL, NULL, "model.layers.0.self_attn.q_proj.bias");
    ML_ASSERT_FAILS(ml_hf_import(d3, out, NULL), ML_ERR_FORMAT,
                    "model.safetensors.index.json: unexpected tensor 'model.layers.0.self_attn.q_proj.bias'");
    const char *d3b = tpath("bad_extra1");
    write_hf_dir(d3b, fx_config, 1, NULL, NULL, "score.weight");
    ML_ASSERT_FAILS(ml_hf_import(d3b, out, NULL), ML_ERR_FORMAT, "unexpected tensor 'score.weight'");
    const char *d4 = tpath("bad_missing");
    write_hf_dir(d4, fx_config, 2, "model.norm.weight", NULL, NULL);
    ML_ASSERT_FAILS(ml_hf_import(d4, out, NULL), ML_ERR_FORMAT, "missing tensor 'model.norm.weight'");
    ML_ASSERT_FAILS(ml_hf_import(tpath("nowhere"), out, NULL), ML_ERR_NOTFOUND, "nowhere/config.json: no such file");
    const char *d5 = tpath("bad_json");
    write_hf_dir(d5, "{\"vocab_size\": 48,,}", 1, NULL, NULL, NULL);
    ML_ASSERT_FAILS(ml_hf_import(d5, out, NULL), ML_ERR_FORMAT, "bad_json/config.json:1:");
    const char *d6 = tpath("bad_type");
    write_hf_dir(d6, "{\"model_type\": \"gpt2\"}", 1, NULL, NULL, NULL);
    ML_ASSERT_FAILS(ml_hf_import(d6, out, NULL), ML_ERR_UNSUPPORTED, "model_type gpt2 is not supported");
    const char *d7 = tpath("bad_key");
    write_hf_dir(d7, "{\"model_type\": \"mistral\", \"vocab_size\": 48}", 1, NULL, NULL, NULL);
    ML_ASSERT_FAILS(ml_hf_import(d7, out, NULL), ML_ERR_FORMAT, "bad_key/config.json: missing key 'hidden_size'");
    const char *d8 = tpath("bad_noweights");
    write_hf_dir(d8, fx_config, 1, NULL, NULL, NULL);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", d8);
    unlink(path);
    ML_ASSERT_FAILS(ml_hf_import(d8, out, NULL), ML_ERR_NOTFOUND,
                    "no model.safetensors or model.safetensors.index.json");
    /* weight_map points at a shard that lacks the tensor */
    const char *d9 = tpath("bad_map");
    write_hf_dir(d9, fx_config, 2, NULL, NULL, NULL);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", d9);
    json_t *idx = load_json(path);
    json_object_set_new(json_object_get(idx, "weight_map"), "model.norm.weight",
                        json_string("model-00001-of-00002.safetensors"));
    json_object_set_new(json_object_get(idx, "weight_map"), "lm_head.weight",
                        json_string("model-00001-of-00002.safetensors"));
    json_dump_file(idx, path, 0);
    json_decref(idx);
    ML_ASSERT_FAILS(ml_hf_import(d9, out, NULL), ML_ERR_FORMAT, "although the weight_map lists it there");
    /* non-finite weights */
    const char *d10 = tpath("bad_nan");
    write_hf_dir(d10, fx_config, 1, NULL, NULL, NULL);
    const fx_param *p = fx_params();
    static float vals[FX_NPARAMS][48 * 16];
    ml_st_tensor all[FX_NPARAMS];
    for (int i = 0; i < FX_NPARAMS; i++) {
        fx_values(3, i, vals[i], fx_numel(&p[i]));
        if (!strcmp(p[i].name, "model.norm.weight")) vals[i][5] = NAN;
        all[i] = (ml_st_tensor){.name = p[i].name, .dtype = ML_ST_F32, .ndim = p[i].ndim, .data = vals[i]};
        all[i].shape[0] = (int64_t)p[i].dims[0];
        all[i].shape[1] = (int64_t)p[i].dims[1];
    }
    snprintf(path, sizeof path, "%s/model.safetensors", d10);
    ML_ASSERT_OK(ml_safetensors_write(path, FX_NPARAMS, all, 0, NULL));
    ML_ASSERT_FAILS(ml_hf_import(d10, out, NULL), ML_ERR_NUMERIC, "tensor 'model.norm.weight' element 5 is nan");
    assert_false(ml_file_exists(out)); /* nothing written on failure */
    assert_int_equal(ml_alloc_live(), live); /* every failure path freed what it took */
}

static void test_export_errors(void **state) {
    (void)state;
    long live = ml_alloc_live();
    const char *ck = tpath("ex_extra.h5"), *dir = tpath("ex_out");
    ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 1, NULL, "model.layers.0.self_attn.q_proj.bias"));
    ML_ASSERT_FAILS(ml_hf_export(ck, dir, ML_ST_F32), ML_ERR_FORMAT,
                    "ex_extra.h5: unexpected tensor '/params/model.layers.0.self_attn.q_proj.bias'");
    /* model_config disagreeing with the tensors: io names the tensor and both shapes */
    json_t *cfg = json_loads(fx_config, 0, NULL);
    json_object_set_new(cfg, "intermediate_size", json_integer(32));
    char *text = json_dumps(cfg, 0);
    json_decref(cfg);
    const char *ck2 = tpath("ex_shape.h5");
    ML_ASSERT_OK(fx_write_checkpoint(ck2, text, 1, NULL, NULL));
    free(text);
    ML_ASSERT_FAILS(ml_hf_export(ck2, dir, ML_ST_F32), ML_ERR_SHAPE,
                    "tensor '/params/model.layers.0.mlp.gate_proj.weight' has shape [40, 16], expected [32, 16]");
    const char *sae = tpath("ex_sae.h5");
    ML_ASSERT_OK(fx_write_sae(sae, "standard", 8, 16, 0, 1, NULL, NULL));
    ML_ASSERT_FAILS(ml_hf_export(sae, dir, ML_ST_F32), ML_ERR_FORMAT,
                    "is a 'mergelens.sae' file, expected 'mergelens.checkpoint'");
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_false(ml_file_exists(path));
    assert_int_equal(ml_alloc_live(), live);
}

static void test_saelens_export(void **state) {
    (void)state;
    const char *sae = tpath("sae_std.h5"), *dir = tpath("sae_std");
    ML_ASSERT_OK(fx_write_sae(sae, "anthropic", 16, 40, 0, 5, "runs/x/models/base.h5",
                              "{\"sae\": {\"context_size\": 64, \"lr\": 0.001}}"));
    ML_ASSERT_OK(ml_saelens_export(sae, dir, ML_ST_F32));
    char path[1200];
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", dir);
    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(path, &st));
    assert_int_equal(ml_safetensors_count(st), 4);
    const char *names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
    const int64_t shapes[4][2] = {{16, 40}, {40, 0}, {40, 16}, {16, 0}};
    static float got[640], ref[640];
    for (int i = 0; i < 4; i++) {
        int j = ml_safetensors_find(st, names[i]), nd;
        assert_true(j >= 0);
        const int64_t *sh = ml_safetensors_shape(st, j, &nd);
        assert_int_equal(nd, shapes[i][1] ? 2 : 1);
        for (int d = 0; d < nd; d++) assert_int_equal(sh[d], shapes[i][d]);
        size_t n = (size_t)(shapes[i][0] * (shapes[i][1] ? shapes[i][1] : 1));
        ML_ASSERT_OK(ml_safetensors_read_f32(st, names[i], got, n));
        fx_values(5, 100 + i, ref, n);
        assert_memory_equal(got, ref, n * sizeof(float));
    }
    ml_safetensors_close(&st);
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    json_t *cfg = load_json(path);
    json_t *want =
        json_pack("{s:s, s:i, s:i, s:s, s:s, s:s, s:s, s:i, s:s, s:b, s:s, s:i, s:s}", "architecture", "standard",
                  "d_in", 16, "d_sae", 40, "dtype", "float32", "device", "cpu", "model_name", "base", "hook_name",
                  "blocks.0.mlp.hook_post", "hook_layer", 0, "activation_fn_str", "relu", "apply_b_dec_to_input", 0,
                  "normalize_activations", "none", "context_size", 64, "mergelens_architecture", "anthropic");
    const char *key;
    json_t *v;
    json_object_foreach(want, key, v) {
        if (!json_equal(json_object_get(cfg, key), v)) fail_msg("cfg.json key '%s' differs", key);
    }
    assert_int_equal(json_object_size(json_object_get(cfg, "activation_fn_kwargs")), 0);
    json_decref(want);
    json_decref(cfg);

    /* topk: architecture topk with activation_fn_kwargs {"k": K}; bf16 weights */
    const char *sae2 = tpath("sae_topk.h5"), *dir2 = tpath("sae_topk");
    ML_ASSERT_OK(fx_write_sae(sae2, "topk", 16, 40, 6, 5, NULL, NULL));
    ML_ASSERT_OK(ml_saelens_export(sae2, dir2, ML_ST_BF16));
    snprintf(path, sizeof path, "%s/cfg.json", dir2);
    cfg = load_json(path);
    assert_string_equal(json_string_value(json_object_get(cfg, "architecture")), "topk");
    assert_string_equal(json_string_value(json_object_get(cfg, "activation_fn_str")), "topk");
    assert_string_equal(json_string_value(json_object_get(cfg, "dtype")), "bfloat16");
    assert_string_equal(json_string_value(json_object_get(cfg, "model_name")), "sae_topk");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(cfg, "activation_fn_kwargs"), "k")), 6);
    assert_null(json_object_get(cfg, "context_size"));
    json_decref(cfg);

    /* errors */
    const char *sae3 = tpath("sae_nok.h5");
    ML_ASSERT_OK(fx_write_sae(sae3, "topk", 8, 16, 0, 1, NULL, NULL));
    ML_ASSERT_FAILS(ml_saelens_export(sae3, tpath("sae_nok"), ML_ST_F32), ML_ERR_FORMAT,
                    "sae_nok.h5: topk SAE needs an attribute k in 1..d_sae (16)");
    const char *sae4 = tpath("sae_arch.h5");
    ML_ASSERT_OK(fx_write_sae(sae4, "gated", 8, 16, 0, 1, NULL, NULL));
    ML_ASSERT_FAILS(ml_saelens_export(sae4, tpath("sae_arch"), ML_ST_F32), ML_ERR_FORMAT,
                    "architecture 'gated' is not one of standard, anthropic, topk");
    const char *ck = tpath("sae_ck.h5");
    ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 1, NULL, NULL));
    ML_ASSERT_FAILS(ml_saelens_export(ck, tpath("sae_ck"), ML_ST_F32), ML_ERR_FORMAT,
                    "is a 'mergelens.checkpoint' file, expected 'mergelens.sae'");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_f32), cmocka_unit_test(test_round_trip_16bit),
        cmocka_unit_test(test_tokenizer_copy), cmocka_unit_test(test_import_sharded_tied),
        cmocka_unit_test(test_import_config_styles),
        cmocka_unit_test(test_import_errors),  cmocka_unit_test(test_export_errors),
        cmocka_unit_test(test_saelens_export),
    };
    return ml_test_run(argc, argv, "interop_hf", tests, sizeof tests / sizeof tests[0]);
}
