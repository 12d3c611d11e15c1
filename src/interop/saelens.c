/* mergelens SAE file -> SAELens directory (cfg.json + sae_weights.safetensors).
 *
 * The SAE file already uses SAELens names and orientation:
 * W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in).
 * cfg.json uses the pre-6.0 SAELens keys, which SAELens 6 still loads
 * (it renames activation_fn_str and reads k from activation_fn_kwargs).
 */
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "interop_internal.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/sae.h"

#define ML_SAE_FORMAT "mergelens.sae"

/* Optional integer attribute: *found = 0 when absent. */
static int ml_sae_opt_int(ml_h5 *h, const char *attr, int64_t *out, int *found) {
    *found = 0;
    int rc = ml_h5_get_attr_int(h, "/", attr, out);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        return ML_OK;
    }
    *found = rc == ML_OK;
    return rc;
}

/* "blocks.3.mlp.hook_post" -> 3; 0 when the hook is not inside a block. */
static int ml_sae_hook_layer(const char *hook) {
    const char *p = strncmp(hook, "blocks.", 7) == 0 ? hook + 7 : NULL;
    return p ? atoi(p) : 0;
}

/* context_size from the training configuration (root attribute `config`),
 * found as a key at the top level or one level down; -1 if unknown. */
static json_int_t ml_sae_context_size(const char *config) {
    json_t *c = config ? json_loads(config, 0, NULL) : NULL;
    json_int_t v = -1;
    json_t *x = json_object_get(c, "context_size");
    if (json_is_integer(x)) v = json_integer_value(x);
    const char *key;
    json_t *sub;
    json_object_foreach(c, key, sub) {
        x = json_object_get(sub, "context_size");
        if (v < 0 && json_is_integer(x)) v = json_integer_value(x);
    }
    json_decref(c);
    return v;
}

/* "saes/base.h5" -> "base" */
static void ml_sae_stem(char *out, size_t cap, const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, cap, "%s", b);
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = '\0';
}

int ml_saelens_export(const char *sae_path, const char *dir, ml_st_dtype dtype) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    char *arch = NULL, *hook = NULL, *model = NULL, *config = NULL, path[PATH_MAX];
    float *buf = NULL;
    json_t *cfg = NULL;
    if (dtype != ML_ST_F32 && dtype != ML_ST_BF16 && dtype != ML_ST_F16)
        return ML_FAIL(ML_ERR_ARG, "export saelens: dtype %s is not a float dtype (f32, bf16 or f16)",
                       ml_st_dtype_name(dtype));
    ml_prof_begin("saelens_export");
    ML_CHECK_GOTO(ml_h5_open(MPI_COMM_SELF, sae_path, ML_SAE_FORMAT, 1, 1, &h), done);
    ML_CHECK_GOTO(ml_sae_check_complete(h), done);
    int64_t d_in, d_sae, k = 0;
    int has_k, has_apply;
    int64_t apply_b_dec = 0;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "architecture", &arch), done);
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "hook_name", &hook), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_in", &d_in), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "d_sae", &d_sae), done);
    ML_CHECK_GOTO(ml_sae_opt_int(h, "k", &k, &has_k), done);
    /* the SAE module records whether its encoder subtracts b_dec first */
    ML_CHECK_GOTO(ml_sae_opt_int(h, "apply_b_dec_to_input", &apply_b_dec, &has_apply), done);
    ML_CHECK_GOTO(ml_attr_str_optional(h, "model", &model), done);
    ML_CHECK_GOTO(ml_attr_str_optional(h, "config", &config), done);
    int topk = !strcmp(arch, "topk");
    if (!topk && strcmp(arch, "standard") && strcmp(arch, "anthropic"))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: architecture '%s' is not one of standard, anthropic, topk", sae_path,
                     arch);
    if (topk && (!has_k || k <= 0 || k > d_sae))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: topk SAE needs an attribute k in 1..d_sae (%lld)", sae_path,
                     (long long)d_sae);
    if (d_in <= 0 || d_sae <= 0)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: d_in %lld and d_sae %lld must be positive", sae_path, (long long)d_in,
                     (long long)d_sae);

    /* W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in) */
    size_t nw = (size_t)(d_in * d_sae);
    buf = ml_malloc(sizeof(float) * (2 * nw + (size_t)d_sae + (size_t)d_in));
    if (!buf) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    ml_st_tensor t[4] = {
        {"W_enc", dtype, 2, {d_in, d_sae}, buf, 1},
        {"b_enc", dtype, 1, {d_sae}, buf + nw, 1},
        {"W_dec", dtype, 2, {d_sae, d_in}, buf + nw + d_sae, 1},
        {"b_dec", dtype, 1, {d_in}, buf + 2 * nw + d_sae, 1},
    };
    for (int i = 0; i < 4; i++) {
        char ds[16];
        snprintf(ds, sizeof ds, "/%s", t[i].name);
        hsize_t dims[2] = {(hsize_t)t[i].shape[0], (hsize_t)t[i].shape[1]};
        ML_CHECK_GOTO(ml_h5_read_tensor(h, ds, ML_F32, t[i].ndim, dims, (void *)t[i].data), done);
    }
    ML_CHECK_GOTO(ml_mkdirs(dir), done);
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "sae_weights.safetensors"), done);
    const char *meta[] = {"format", "pt", "mergelens_sae", sae_path};
    ML_CHECK_GOTO(ml_safetensors_write(path, 4, t, 2, meta), done);

    char model_name[256];
    ml_sae_stem(model_name, sizeof model_name, model ? model : sae_path);
    json_int_t ctx = ml_sae_context_size(config);
    cfg = json_pack("{s:s, s:I, s:I, s:s, s:s, s:s, s:s, s:i, s:n, s:s, s:{}, s:b, s:b, s:s}", "architecture",
                    topk ? "topk" : "standard", "d_in", (json_int_t)d_in, "d_sae", (json_int_t)d_sae, "dtype",
                    ml_st_dtype_torch_name(dtype), "device", "cpu", "model_name", model_name, "hook_name", hook,
                    "hook_layer", ml_sae_hook_layer(hook), "hook_head_index", "activation_fn_str",
                    topk ? "topk" : "relu", "activation_fn_kwargs", "apply_b_dec_to_input", apply_b_dec != 0,
                    "finetuning_scaling_factor", 0, "normalize_activations", "none");
    if (!cfg) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: cannot build cfg.json", sae_path);
    if (topk) json_object_set_new(json_object_get(cfg, "activation_fn_kwargs"), "k", json_integer(k));
    if (ctx > 0) json_object_set_new(cfg, "context_size", json_integer(ctx));
    json_object_set_new(cfg, "mergelens_architecture", json_string(arch));
    json_object_set_new(cfg, "mergelens_source", json_string(sae_path));
    if (model) json_object_set_new(cfg, "mergelens_model", json_string(model));
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "cfg.json"), done);
    ML_CHECK_GOTO(ml_atomic_write_json(path, cfg), done);
    ml_info("exported %s -> %s (SAELens %s, d_in %lld, d_sae %lld)", sae_path, dir, topk ? "topk" : "standard",
            (long long)d_in, (long long)d_sae);
done:
    ml_prof_end("saelens_export", 0, 0);
    json_decref(cfg);
    ml_free(buf);
    ml_free(arch);
    ml_free(hook);
    ml_free(model);
    ml_free(config);
    if (h) {
        int crc = ml_h5_close(&h);
        if (rc == ML_OK) rc = crc;
    }
    return rc;
}
