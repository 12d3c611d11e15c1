/* Merge recipes: the mergekit YAML subset (models, base_model, merge_method,
 * parameters, dtype, out_dtype; mergelens adds `seed`) and mergekit's
 * per-tensor parameter resolution:
 *  - a scalar;
 *  - a list of numbers: a gradient over the layer position t in [0, 1]
 *    (scaled = t (n-1), i0 = int(scaled), i1 = min(n-1, i0+1),
 *    value = (1-frac) v[i0] + frac v[i1]);
 *  - a list of {filter: substring, value: X} conditions: the first whose
 *    filter is absent, "*" or a substring of the tensor name wins; X is a
 *    scalar or a gradient;
 *  - lookup order: the model's own parameters, then the top-level
 *    `parameters`, then the method's default (a setting that matches no
 *    condition falls through to the next level).
 */
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mergelens/merge.h"

typedef enum { ML_P_NUM = 0, ML_P_BOOL, ML_P_INT } ml_ptype;
typedef struct {
    const char *key;
    ml_ptype type;
    int per_model; /* a tensor parameter (one value per input model) */
    int required;
    size_t offset; /* into ml_merge_params (per-model: start of the array) */
} ml_param_def;

#define ML_PD(key, type, pm, req, field) {key, type, pm, req, offsetof(ml_merge_params, field)}
#define ML_PD_END {NULL, 0, 0, 0, 0}

static const ml_param_def ml_p_linear[] = {ML_PD("weight", ML_P_NUM, 1, 1, weight),
                                           ML_PD("normalize", ML_P_BOOL, 0, 0, normalize), ML_PD_END};
static const ml_param_def ml_p_soup[] = {ML_PD("weight", ML_P_NUM, 1, 0, weight), ML_PD_END};
static const ml_param_def ml_p_slerp[] = {ML_PD("t", ML_P_NUM, 0, 1, t), ML_PD_END};
static const ml_param_def ml_p_gta[] = {ML_PD("weight", ML_P_NUM, 1, 1, weight),
                                        ML_PD("density", ML_P_NUM, 1, 0, density),
                                        ML_PD("normalize", ML_P_BOOL, 0, 0, normalize),
                                        ML_PD("rescale", ML_P_BOOL, 0, 0, rescale),
                                        ML_PD("lambda", ML_P_NUM, 0, 0, lambda),
                                        {"int8_mask", ML_P_BOOL, 0, 0, (size_t)-1}, /* accepted, no effect */
                                        ML_PD_END};
static const ml_param_def ml_p_model_stock[] = {ML_PD("filter_wise", ML_P_BOOL, 0, 0, filter_wise), ML_PD_END};
static const ml_param_def ml_p_multislerp[] = {ML_PD("weight", ML_P_NUM, 1, 1, weight),
                                               ML_PD("normalize_weights", ML_P_BOOL, 0, 0, normalize_weights),
                                               ML_PD("eps", ML_P_NUM, 0, 0, eps), ML_PD_END};
static const ml_param_def ml_p_karcher[] = {ML_PD("max_iter", ML_P_INT, 0, 0, max_iter),
                                            ML_PD("tol", ML_P_NUM, 0, 0, tol), ML_PD_END};

static const ml_param_def *ml_method_params(ml_merge_method m) {
    switch (m) {
    case ML_MERGE_LINEAR: return ml_p_linear;
    case ML_MERGE_SOUP: return ml_p_soup;
    case ML_MERGE_SLERP: return ml_p_slerp;
    case ML_MERGE_MODEL_STOCK: return ml_p_model_stock;
    case ML_MERGE_MULTISLERP: return ml_p_multislerp;
    case ML_MERGE_KARCHER: return ml_p_karcher;
    default: return ml_p_gta;
    }
}

typedef struct {
    char *path;            /* as resolved (readable) */
    const ml_node *params; /* the model's `parameters` map, or NULL */
    const ml_node *where;  /* for messages */
} ml_recipe_model;

struct ml_merge_recipe {
    ml_node *root;
    ml_merge_method method;
    int n;        /* input checkpoints, base included */
    int has_base; /* models[0] is the base the method uses */
    ml_recipe_model models[ML_MERGE_MAX_MODELS + 1];
    const char *paths[ML_MERGE_MAX_MODELS + 1];
    const ml_node *global; /* top-level `parameters`, or NULL */
    char dtype[16], out_dtype[16];
    uint64_t seed;
    const char *tokenizer_source; /* path of the model whose tokenizer the output keeps, or NULL */
};

/* ---- value syntax ------------------------------------------------------------ */
static int ml_scalar_value(const ml_node *n, ml_ptype type, double *out) {
    if (type == ML_P_BOOL) {
        int b;
        ML_CHECK(ml_node_as_bool(n, &b));
        *out = b;
    } else if (type == ML_P_INT) {
        int64_t v;
        ML_CHECK(ml_node_as_int(n, &v));
        if (v < 0 || v > 1000000) return ml_node_error(n, "key '%s': %lld is out of range [0, 1000000]", n->key ? n->key : "value", (long long)v);
        *out = (double)v;
    } else {
        if (n->kind == ML_NODE_SCALAR && !n->quoted && n->value) { /* YAML spellings of NaN and infinities */
            const char *v = n->value + (n->value[0] == '-' || n->value[0] == '+');
            if (!strcasecmp(v, ".nan") || !strcasecmp(v, ".inf") || !strcasecmp(v, "nan") ||
                !strcasecmp(v, "inf") || !strcasecmp(v, "infinity"))
                return ml_node_error(n, "key '%s': expected a finite number, got '%s'", n->key ? n->key : "value",
                                     n->value);
        }
        ML_CHECK(ml_node_as_double(n, out));
    }
    return ML_OK;
}

static int ml_is_condition_list(const ml_node *n) {
    if (n->kind == ML_NODE_MAP) return 1;
    for (int i = 0; i < n->n; i++)
        if (n->items[i]->kind != ML_NODE_SCALAR) return 1;
    return 0;
}

/* Check a ScalarOrGradient (a scalar, or a list of numbers) */
static int ml_check_value(const ml_node *n, const char *key, ml_ptype type) {
    double v;
    if (n->kind == ML_NODE_SCALAR) return ml_scalar_value(n, type, &v);
    if (n->kind == ML_NODE_MAP)
        return ml_node_error(n, "parameter '%s': a condition's value must be a scalar or a list of numbers", key);
    if (type != ML_P_NUM)
        return ml_node_error(n, "parameter '%s': a gradient (list of numbers) needs a numeric parameter", key);
    if (n->n == 0) return ml_node_error(n, "parameter '%s': empty gradient list", key);
    for (int i = 0; i < n->n; i++) {
        if (n->items[i]->kind != ML_NODE_SCALAR)
            return ml_node_error(n->items[i], "parameter '%s': a gradient lists numbers only", key);
        ML_CHECK(ml_scalar_value(n->items[i], ML_P_NUM, &v));
    }
    return ML_OK;
}

/* Check a parameter setting: a value, or conditions (a list of maps or one map) */
static int ml_check_setting(const ml_node *n, const char *key, ml_ptype type) {
    if (n->kind == ML_NODE_SEQ && n->n == 0) return ml_node_error(n, "parameter '%s': empty list", key);
    if (!(n->kind != ML_NODE_SCALAR && ml_is_condition_list(n))) return ml_check_value(n, key, type);
    int nc = n->kind == ML_NODE_MAP ? 1 : n->n;
    for (int i = 0; i < nc; i++) {
        const ml_node *c = n->kind == ML_NODE_MAP ? n : n->items[i];
        if (c->kind != ML_NODE_MAP)
            return ml_node_error(c, "parameter '%s': a list mixing numbers and {filter, value} conditions", key);
        const ml_node *value = NULL;
        for (int j = 0; j < c->n; j++) {
            const ml_node *e = c->items[j];
            if (!strcmp(e->key, "value")) value = e;
            else if (!strcmp(e->key, "filter")) {
                if (e->kind != ML_NODE_SCALAR)
                    return ml_node_error(e, "parameter '%s': filter must be a substring of tensor names", key);
            } else
                return ml_node_error(e, "parameter '%s': unknown key '%s' in a condition (known: filter, value)",
                                     key, e->key);
        }
        if (!value) return ml_node_error(c, "parameter '%s': condition without a 'value'", key);
        ML_CHECK(ml_check_value(value, key, type));
    }
    return ML_OK;
}

/* ---- evaluation (mergekit evaluate_setting) ----------------------------------- */
static double ml_gradient(const ml_node *n, double t) {
    int len = n->n;
    double scaled = t * (len - 1);
    int i0 = (int)scaled; /* Python int(): truncation */
    if (i0 < 0) i0 = 0;
    if (i0 > len - 1) i0 = len - 1;
    int i1 = i0 + 1 < len - 1 ? i0 + 1 : len - 1;
    double frac = scaled - i0, v0 = 0, v1 = 0;
    ml_node_as_double(n->items[i0], &v0);
    ml_node_as_double(n->items[i1], &v1);
    return (1 - frac) * v0 + frac * v1;
}

/* *found = 0 when a condition list matches nothing (mergekit's None). The
 * syntax was checked at load time. */
static int ml_eval_setting(const ml_node *n, ml_ptype type, const char *tensor, double t, double *out, int *found) {
    *found = 0;
    if (n->kind == ML_NODE_SCALAR) {
        ML_CHECK(ml_scalar_value(n, type, out));
        *found = 1;
        return ML_OK;
    }
    if (!ml_is_condition_list(n)) {
        *out = ml_gradient(n, t);
        *found = 1;
        return ML_OK;
    }
    int nc = n->kind == ML_NODE_MAP ? 1 : n->n;
    for (int i = 0; i < nc; i++) {
        const ml_node *c = n->kind == ML_NODE_MAP ? n : n->items[i];
        const ml_node *filter = ml_node_get(c, "filter"), *value = ml_node_get(c, "value");
        if (!filter || !strcmp(filter->value, "*") || (tensor && strstr(tensor, filter->value)))
            return ml_eval_setting(value, type, tensor, t, out, found);
    }
    return ML_OK;
}

/* ---- loading ------------------------------------------------------------------- */
static const ml_param_def *ml_find_param(ml_merge_method m, const char *key) {
    for (const ml_param_def *d = ml_method_params(m); d->key; d++)
        if (!strcmp(d->key, key)) return d;
    return NULL;
}

static void ml_param_list(ml_merge_method m, int per_model_only, char *buf, size_t cap) {
    buf[0] = '\0';
    for (const ml_param_def *d = ml_method_params(m); d->key; d++) {
        if (per_model_only && !d->per_model) continue;
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? ", " : "", d->key);
    }
    if (!buf[0]) snprintf(buf, cap, "none");
}

static int ml_check_params_map(const ml_merge_recipe *r, const ml_node *map, int per_model) {
    const char *mn = ml_merge_method_name(r->method);
    if (map->kind != ML_NODE_MAP) return ml_node_error(map, "'parameters' must be a mapping");
    for (int i = 0; i < map->n; i++) {
        const ml_node *e = map->items[i];
        const ml_param_def *d = ml_find_param(r->method, e->key);
        char known[256];
        if (!d) {
            ml_param_list(r->method, per_model, known, sizeof known);
            return ml_node_error(e, "unknown parameter '%s' for merge_method %s (known: %s)", e->key, mn, known);
        }
        if (per_model && !d->per_model)
            return ml_node_error(e, "parameter '%s' of %s applies to the whole merge: set it under the top-level "
                                    "'parameters', not under a model", e->key, mn);
        ML_CHECK(ml_check_setting(e, e->key, d->type));
    }
    return ML_OK;
}

/* Resolve a model path: as given (relative to the working directory), else
 * relative to the recipe's directory. */
static int ml_resolve_path(const ml_node *n, char **out) {
    const char *p = n->value;
    if (p[0] == '/' || ml_file_exists(p) || !n->file) {
        *out = ml_strdup(p);
        return *out ? ML_OK : ML_ERR_NOMEM;
    }
    const char *slash = strrchr(n->file, '/');
    if (slash) {
        size_t len = (size_t)(slash - n->file) + 1 + strlen(p) + 1;
        char *q = ml_malloc(len);
        if (!q) return ML_ERR_NOMEM;
        snprintf(q, len, "%.*s/%s", (int)(slash - n->file), n->file, p);
        if (ml_file_exists(q)) {
            *out = q;
            return ML_OK;
        }
        ml_free(q);
    }
    *out = ml_strdup(p);
    return *out ? ML_OK : ML_ERR_NOMEM;
}

static int ml_add_model(ml_merge_recipe *r, const ml_node *path_node, const ml_node *params, const ml_node *where) {
    if (r->n >= ML_MERGE_MAX_MODELS + 1)
        return ml_node_error(where, "too many models (at most %d)", ML_MERGE_MAX_MODELS + 1);
    char *p = NULL;
    int rc = ml_resolve_path(path_node, &p);
    if (rc) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    r->models[r->n].path = p;
    r->models[r->n].params = params;
    r->models[r->n].where = where;
    r->paths[r->n] = p;
    r->n++;
    return ML_OK;
}

static int ml_check_dtype(const ml_node *n, char *out) {
    const char *s;
    ML_CHECK(ml_node_as_string(n, &s));
    if (strcmp(s, "float32") && strcmp(s, "bfloat16") && strcmp(s, "float16"))
        return ml_node_error(n, "%s '%s' is not supported (float32, bfloat16 or float16)", n->key, s);
    snprintf(out, 16, "%s", s);
    return ML_OK;
}

static int ml_recipe_build(ml_merge_recipe *r) {
    const ml_node *root = r->root;
    if (root->kind != ML_NODE_MAP) return ml_node_error(root, "a merge recipe must be a mapping");
    static const char *const known[] = {"models", "base_model", "merge_method", "parameters", "dtype", "out_dtype",
                                        "seed", "tokenizer_source", NULL};
    for (int i = 0; i < root->n; i++) {
        const ml_node *e = root->items[i];
        int ok = 0;
        for (int k = 0; known[k]; k++) ok |= !strcmp(e->key, known[k]);
        if (ok) continue;
        if (!strcmp(e->key, "slices") || !strcmp(e->key, "modules"))
            return ml_node_error(e, "'%s' is not supported: list whole models under 'models'", e->key);
        if (!strcmp(e->key, "tokenizer") || !strcmp(e->key, "chat_template"))
            return ml_node_error(e, "'%s' is not supported: merged models share one tokenizer (tokenizer_source: "
                                    "base or a model's path picks whose the output keeps)", e->key);
        return ml_node_error(e, "unknown key '%s' (known: models, base_model, merge_method, parameters, dtype, "
                                "out_dtype, seed, tokenizer_source)", e->key);
    }
    const ml_node *mm = ml_node_get(root, "merge_method");
    if (!mm) return ml_node_error(root, "missing 'merge_method'");
    const char *mname;
    ML_CHECK(ml_node_as_string(mm, &mname));
    if (ml_merge_method_parse(mname, &r->method) != ML_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ml_error_message());
        return ml_node_error(mm, "%s", msg);
    }
    snprintf(r->dtype, sizeof r->dtype, "float32");
    const ml_node *n;
    if ((n = ml_node_get(root, "dtype"))) ML_CHECK(ml_check_dtype(n, r->dtype));
    snprintf(r->out_dtype, sizeof r->out_dtype, "%s", r->dtype);
    if ((n = ml_node_get(root, "out_dtype"))) ML_CHECK(ml_check_dtype(n, r->out_dtype));
    if ((n = ml_node_get(root, "seed"))) {
        int64_t s;
        ML_CHECK(ml_node_as_int(n, &s));
        if (s < 0) return ml_node_error(n, "seed must be >= 0, got %lld", (long long)s);
        r->seed = (uint64_t)s;
    }
    r->global = ml_node_get(root, "parameters");
    if (r->global) ML_CHECK(ml_check_params_map(r, r->global, 0));

    const ml_node *models = ml_node_get(root, "models");
    if (!models) return ml_node_error(root, "missing 'models' (a list of {model: PATH, parameters: {...}})");
    if (models->kind != ML_NODE_SEQ || models->n == 0)
        return ml_node_error(models, "'models' must be a non-empty list of {model: PATH, parameters: {...}}");
    const ml_node *base = ml_node_get(root, "base_model");
    const char *base_path = NULL;
    if (base) ML_CHECK(ml_node_as_string(base, &base_path));
    int uses_base = ml_merge_method_uses_base(r->method);
    int base_required = uses_base && r->method != ML_MERGE_MULTISLERP;
    if (base_required && !base)
        return ml_node_error(root, "merge_method %s needs a 'base_model'", ml_merge_method_name(r->method));
    /* the base first when the method uses one */
    r->has_base = uses_base && base;
    const ml_node *base_entry = NULL;
    for (int i = 0; i < models->n; i++) {
        const ml_node *m = models->items[i];
        if (m->kind != ML_NODE_MAP) return ml_node_error(m, "each entry of 'models' must be {model: PATH, ...}");
        const ml_node *path = ml_node_get(m, "model"), *params = ml_node_get(m, "parameters");
        for (int j = 0; j < m->n; j++)
            if (strcmp(m->items[j]->key, "model") && strcmp(m->items[j]->key, "parameters"))
                return ml_node_error(m->items[j], "unknown key '%s' in a model entry (known: model, parameters)",
                                     m->items[j]->key);
        if (!path) return ml_node_error(m, "model entry without 'model: PATH'");
        const char *ps;
        ML_CHECK(ml_node_as_string(path, &ps));
        for (int j = 0; j < i; j++)
            if (!strcmp(ml_node_get(models->items[j], "model")->value, ps))
                return ml_node_error(path, "model '%s' is listed twice", ps);
        if (params) ML_CHECK(ml_check_params_map(r, params, 1));
        if (base_path && !strcmp(ps, base_path)) base_entry = m;
    }
    if (r->has_base)
        ML_CHECK(ml_add_model(r, base, base_entry ? ml_node_get(base_entry, "parameters") : NULL, base));
    for (int i = 0; i < models->n; i++) {
        const ml_node *m = models->items[i];
        if (r->has_base && m == base_entry) continue;
        ML_CHECK(ml_add_model(r, ml_node_get(m, "model"), ml_node_get(m, "parameters"), m));
    }
    if (!uses_base && base && !base_entry) /* mergekit adds an unlisted base as one more input */
        ML_CHECK(ml_add_model(r, base, NULL, base));

    const ml_node *ts = ml_node_get(root, "tokenizer_source");
    if (ts) {
        const char *v;
        ML_CHECK(ml_node_as_string(ts, &v));
        if (!strcmp(v, "base")) {
            if (!base_path) return ml_node_error(ts, "tokenizer_source: base needs a 'base_model'");
            v = base_path;
        } else if (!strcmp(v, "union")) {
            return ml_node_error(ts, "tokenizer_source: union is not supported (the models share one vocabulary; "
                                     "name base or one model's path)");
        }
        int found = 0;
        for (int i = 0; i < r->n; i++) found |= !strcmp(r->paths[i], v);
        if (!found) return ml_node_error(ts, "tokenizer_source '%s' is not one of the recipe's models", v);
        r->tokenizer_source = v;
    }

    /* model counts (ml_merge_params_check repeats these per tensor) */
    int K = r->n - (r->has_base ? 1 : 0);
    const char *mn = ml_merge_method_name(r->method);
    switch (r->method) {
    case ML_MERGE_SLERP:
        if (r->n != 2)
            return ml_node_error(models, "slerp merges exactly 2 models (base_model and one other), got %d", r->n);
        break;
    case ML_MERGE_MODEL_STOCK:
        if (K < 2)
            return ml_node_error(models, "model_stock needs a base_model and at least 2 other models, got %d other%s",
                                 K, K == 1 ? "" : "s");
        break;
    case ML_MERGE_TASK_ARITHMETIC:
    case ML_MERGE_TIES:
    case ML_MERGE_DARE_LINEAR:
    case ML_MERGE_DARE_TIES:
        if (K < 1) return ml_node_error(models, "%s needs at least 1 model besides base_model", mn);
        break;
    default:
        if (K < 2)
            return ml_node_error(models, "%s needs at least 2 models%s, got %d", mn,
                                 r->has_base ? " besides base_model" : "", K);
        break;
    }
    if (K > ML_MERGE_MAX_MODELS) return ml_node_error(models, "too many models (at most %d)", ML_MERGE_MAX_MODELS);
    return ML_OK;
}

static int ml_recipe_finish(ml_node *root, ml_merge_recipe **out) {
    ml_merge_recipe *r = ml_calloc(1, sizeof *r);
    if (!r) {
        ml_node_destroy(&root);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    r->root = root;
    int rc = ml_recipe_build(r);
    if (rc) {
        ml_merge_recipe_destroy(&r);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = r;
    return ML_OK;
}

int ml_merge_recipe_load(const char *path, ml_merge_recipe **out) {
    ml_node *root = NULL;
    *out = NULL;
    ML_CHECK(ml_yaml_load(path, &root));
    ML_CHECK(ml_recipe_finish(root, out));
    return ML_OK;
}

int ml_merge_recipe_parse(const char *text, const char *name, ml_merge_recipe **out) {
    ml_node *root = NULL;
    *out = NULL;
    ML_CHECK(ml_yaml_parse_string(text, name, &root));
    ML_CHECK(ml_recipe_finish(root, out));
    return ML_OK;
}

void ml_merge_recipe_destroy(ml_merge_recipe **pr) {
    if (!pr || !*pr) return;
    ml_merge_recipe *r = *pr;
    for (int i = 0; i < r->n; i++) ml_free(r->models[i].path);
    ml_node_destroy(&r->root);
    ml_free(r);
    *pr = NULL;
}

ml_merge_method ml_merge_recipe_method(const ml_merge_recipe *r) { return r->method; }

int ml_merge_recipe_models(const ml_merge_recipe *r, const char *const **paths, int *n) {
    *paths = r->paths;
    *n = r->n;
    return ML_OK;
}

uint64_t ml_merge_recipe_seed(const ml_merge_recipe *r) { return r->seed; }
void ml_merge_recipe_set_seed(ml_merge_recipe *r, uint64_t seed) { r->seed = seed; }
const char *ml_merge_recipe_dtype(const ml_merge_recipe *r) { return r->dtype; }
const char *ml_merge_recipe_out_dtype(const ml_merge_recipe *r) { return r->out_dtype; }
const char *ml_merge_recipe_tokenizer_source(const ml_merge_recipe *r) { return r->tokenizer_source; }

double ml_merge_layer_t(const char *tensor_name, int n_layers) {
    const char *p = strstr(tensor_name, "layers.");
    if (p) {
        char *end;
        long i = strtol(p + 7, &end, 10);
        if (end != p + 7 && *end == '.') return n_layers > 1 ? (double)i / (n_layers - 1) : 1.0;
    }
    /* mergekit 0.1.5 (plan_module): pre-weights (embed_tokens) and post-weights
     * (model.norm, lm_head) are planned with a ConfigReader at t = 0, so a
     * gradient gives them its first value (releases before 0.1 used t = 1
     * for the post-weights) */
    return 0.0;
}

/* Look a parameter up for input model `m` (NULL for a global one). */
static int ml_lookup(const ml_merge_recipe *r, const ml_param_def *d, const ml_recipe_model *m, const char *tensor,
                     double t, double *v, int *found) {
    *found = 0;
    if (m && m->params) {
        const ml_node *s = ml_node_get(m->params, d->key);
        if (s) ML_CHECK(ml_eval_setting(s, d->type, tensor, t, v, found));
        if (*found) return ML_OK;
    }
    if (r->global) {
        const ml_node *s = ml_node_get(r->global, d->key);
        if (s) ML_CHECK(ml_eval_setting(s, d->type, tensor, t, v, found));
    }
    return ML_OK;
}

static void ml_store(ml_merge_params *p, const ml_param_def *d, int index, double v) {
    if (d->offset == (size_t)-1) return;
    char *base = (char *)p + d->offset;
    if (d->type == ML_P_NUM) ((double *)base)[index] = v;
    else ((int *)base)[index] = (int)v;
}

int ml_merge_recipe_resolve(const ml_merge_recipe *r, const char *tensor_name, double layer_t, ml_merge_params *p) {
    ml_merge_params_defaults(p, r->method);
    int first = r->has_base ? 1 : 0;
    p->K = r->n - first;
    p->has_base = r->has_base;
    p->seed = r->seed;
    p->stream = ml_merge_stream_id(tensor_name);
    for (const ml_param_def *d = ml_method_params(r->method); d->key; d++) {
        double v = 0;
        int found = 0;
        if (!d->per_model) {
            ML_CHECK(ml_lookup(r, d, NULL, tensor_name, layer_t, &v, &found));
            if (found) ml_store(p, d, 0, v);
            else if (d->required)
                return ML_FAIL(ML_ERR_CONFIG, "%s: missing required parameter '%s' of %s for tensor %s",
                               r->root->file ? r->root->file : "recipe", d->key, ml_merge_method_name(r->method),
                               tensor_name);
            continue;
        }
        for (int i = first; i < r->n; i++) {
            ML_CHECK(ml_lookup(r, d, &r->models[i], tensor_name, layer_t, &v, &found));
            if (found) ml_store(p, d, i - first, v);
            else if (d->required)
                return ML_FAIL(ML_ERR_CONFIG, "%s:%d: model %s: missing required parameter '%s' of %s for tensor %s",
                               r->models[i].where->file ? r->models[i].where->file : "recipe",
                               r->models[i].where->line, r->models[i].path, d->key, ml_merge_method_name(r->method),
                               tensor_name);
        }
    }
    return ml_merge_params_check(p, tensor_name, 0);
}

int ml_merge_recipe_to_json(const ml_merge_recipe *r, char **json) {
    char *yaml_json = NULL;
    ML_CHECK(ml_node_to_json(r->root, &yaml_json));
    json_error_t jerr;
    json_t *j = json_loads(yaml_json, 0, &jerr);
    ml_free(yaml_json);
    if (!j) return ML_FAIL(ML_ERR_INTERNAL, "recipe JSON does not parse: %s", jerr.text);
    json_t *inputs = json_array();
    for (int i = 0; i < r->n; i++) json_array_append_new(inputs, json_string(r->paths[i]));
    json_object_set_new(j, "inputs", inputs); /* resolved paths, base first when used */
    json_object_set_new(j, "seed", json_integer((json_int_t)r->seed));
    if (r->root->file) json_object_set_new(j, "source", json_string(r->root->file));
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(j);
    if (!s) return ML_FAIL(ML_ERR_NOMEM, "out of memory writing the recipe JSON");
    *json = ml_strdup(s);
    free(s);
    return *json ? ML_OK : ML_ERR_NOMEM;
}
