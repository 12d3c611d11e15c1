/* The parameter table: one contiguous float array, Hugging Face names. */
#include "model_internal.h"

#include <math.h>
#include <string.h>

/* Number of table entries: embed, 9 per layer, norm, lm_head. */
static int ml_table_size(const ml_model_config *c) { return 3 + 9 * c->n_layers; }

static void ml_table_add(ml_tensor *t, int *n, size_t *off, const char *name, int64_t rows, int64_t cols,
                         int decay) {
    ml_tensor *e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = cols > 0 ? 2 : 1;
    e->shape[0] = rows;
    e->shape[1] = cols > 0 ? cols : 0;
    e->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    e->offset = *off;
    e->decay = decay;
    *off += e->numel;
}

/* Fill the table (names, shapes, offsets) in the order documented in model.h;
 * the order keeps q,k,v and gate,up adjacent so each group is one GEMM. */
static size_t ml_table_build(const ml_model_config *c, ml_tensor *t) {
    int n = 0;
    size_t off = 0;
    const int64_t D = c->d_model, F = c->d_mlp, qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim;
    char name[80];
    ml_table_add(t, &n, &off, "model.embed_tokens.weight", c->vocab_size, D, 1);
    for (int l = 0; l < c->n_layers; l++) {
#define ML_LAYER_TENSOR(suffix, rows, cols, decay)                                                    \
    do {                                                                                              \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                 \
        ml_table_add(t, &n, &off, name, rows, cols, decay);                                           \
    } while (0)
        ML_LAYER_TENSOR("input_layernorm.weight", D, 0, 0);
        ML_LAYER_TENSOR("self_attn.q_proj.weight", qd, D, 1);
        ML_LAYER_TENSOR("self_attn.k_proj.weight", kvd, D, 1);
        ML_LAYER_TENSOR("self_attn.v_proj.weight", kvd, D, 1);
        ML_LAYER_TENSOR("self_attn.o_proj.weight", D, qd, 1);
        ML_LAYER_TENSOR("post_attention_layernorm.weight", D, 0, 0);
        ML_LAYER_TENSOR("mlp.gate_proj.weight", F, D, 1);
        ML_LAYER_TENSOR("mlp.up_proj.weight", F, D, 1);
        ML_LAYER_TENSOR("mlp.down_proj.weight", D, F, 1);
#undef ML_LAYER_TENSOR
    }
    ml_table_add(t, &n, &off, "model.norm.weight", D, 0, 0);
    ml_table_add(t, &n, &off, "lm_head.weight", c->vocab_size, D, 1);
    return off;
}

size_t ml_model_n_params(const ml_model_config *c) {
    const size_t D = (size_t)c->d_model, F = (size_t)c->d_mlp, hd = (size_t)c->head_dim;
    const size_t layer = 2 * D + (size_t)c->n_heads * hd * D * 2 + (size_t)c->n_kv_heads * hd * D * 2 + 3 * F * D;
    return 2 * (size_t)c->vocab_size * D + (size_t)c->n_layers * layer + D;
}

size_t ml_model_n_nonembedding(const ml_model_config *c) {
    return ml_model_n_params(c) - 2 * (size_t)c->vocab_size * (size_t)c->d_model;
}

double ml_model_train_flops_per_token(const ml_model_config *c, int T) {
    return 6.0 * (double)ml_model_n_nonembedding(c) + 6.0 * c->d_model * (double)c->vocab_size +
           12.0 * (double)T * c->d_model;
}

int ml_model_create(const ml_model_config *cfg, ml_model **out) {
    *out = NULL;
    ML_CHECK(ml_model_config_validate(cfg));
    int rc = ML_OK;
    ml_model *m = ml_calloc(1, sizeof *m);
    if (!m) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    m->cfg = *cfg;
    m->n_tensors = ml_table_size(cfg);
    m->tensors = ml_calloc((size_t)m->n_tensors, sizeof *m->tensors);
    if (!m->tensors) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "model: cannot allocate the tensor table");
    m->n_params = ml_table_build(cfg, m->tensors);
    if (m->n_params != ml_model_n_params(cfg))
        ML_FAIL_GOTO(fail, ML_ERR_INTERNAL, "model: table holds %zu floats, expected %zu", m->n_params,
                     ml_model_n_params(cfg));
    m->params = ml_calloc(m->n_params, sizeof(float));
    if (!m->params)
        ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "model: cannot allocate %zu parameters (%.1f MB)", m->n_params,
                     m->n_params * 4.0 / 1e6);
    *out = m;
    return ML_OK;
fail:
    ml_model_destroy(&m);
    return rc;
}

void ml_model_destroy(ml_model **mp) {
    if (!mp || !*mp) return;
    ml_model *m = *mp;
    ml_free(m->params);
    ml_free(m->grads);
    ml_free(m->tensors);
    ml_free(m);
    *mp = NULL;
}

int ml_model_init(ml_model *m, uint64_t seed) {
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            continue;
        }
        ml_rng rng;
        ml_rng_seed(&rng, seed, (uint64_t)i);
        const float std = (float)m->cfg.init_std;
        for (size_t j = 0; j < t->numel; j++) p[j] = std * ml_rng_normal(&rng);
    }
    return ML_OK;
}

int ml_model_enable_grads(ml_model *m) {
    if (m->grads) return ML_OK;
    m->grads = ml_calloc(m->n_params, sizeof(float));
    if (!m->grads)
        return ML_FAIL(ML_ERR_NOMEM, "model: cannot allocate %zu gradients (%.1f MB)", m->n_params,
                       m->n_params * 4.0 / 1e6);
    return ML_OK;
}

void ml_model_zero_grad(ml_model *m) { ml_model_scale_grads(m, 0.0f); }

int ml_model_lookup(const ml_model *m, const char *name, const ml_tensor **t) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) {
            *t = &m->tensors[i];
            return ML_OK;
        }
    *t = NULL;
    return ML_FAIL(ML_ERR_NOTFOUND, "model: no tensor named '%s' (a %d-layer MistralForCausalLM)", name,
                   m->cfg.n_layers);
}

void ml_model_layout(const ml_model *m, float *base, ml_layout *lo) {
    const ml_tensor *t = m->tensors;
    lo->embed = base + t[0].offset;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const ml_tensor *e = &t[1 + 9 * l];
        lo->layer[l].ln1 = base + e[0].offset;
        lo->layer[l].wqkv = base + e[1].offset;
        lo->layer[l].wo = base + e[4].offset;
        lo->layer[l].ln2 = base + e[5].offset;
        lo->layer[l].wgu = base + e[6].offset;
        lo->layer[l].wdown = base + e[8].offset;
    }
    lo->lnf = base + t[m->n_tensors - 2].offset;
    lo->lm_head = base + t[m->n_tensors - 1].offset;
}

/* Sum of squares in fixed blocks of 2^16 floats (double partials, added in
 * block order): the norm does not depend on the thread count. */
#define ML_NORM_BLOCK 65536
#define ML_NORM_GROUP 1024
typedef struct {
    const float *g;
    size_t n, base; /* first block of this group */
    double part[ML_NORM_GROUP];
} ml_norm_args;
static void ml_norm_range(void *c, int k0, int k1, int tid) {
    ml_norm_args *a = c;
    for (int k = k0; k < k1; k++) {
        const size_t i0 = (a->base + (size_t)k) * ML_NORM_BLOCK;
        const size_t i1 = i0 + ML_NORM_BLOCK < a->n ? i0 + ML_NORM_BLOCK : a->n;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = i0;
        for (; i + 4 <= i1; i += 4) {
            s0 += (double)a->g[i] * a->g[i];
            s1 += (double)a->g[i + 1] * a->g[i + 1];
            s2 += (double)a->g[i + 2] * a->g[i + 2];
            s3 += (double)a->g[i + 3] * a->g[i + 3];
        }
        for (; i < i1; i++) s0 += (double)a->g[i] * a->g[i];
        a->part[k] = (s0 + s1) + (s2 + s3);
    }
}

double ml_model_grad_norm(const ml_model *m) {
    if (!m->grads) return 0.0;
    ml_norm_args a;
    a.g = m->grads;
    a.n = m->n_params;
    const size_t nblk = (m->n_params + ML_NORM_BLOCK - 1) / ML_NORM_BLOCK;
    double total = 0;
    for (a.base = 0; a.base < nblk; a.base += ML_NORM_GROUP) {
        const int k = (int)(nblk - a.base < ML_NORM_GROUP ? nblk - a.base : ML_NORM_GROUP);
        ml_par_for(k, ml_norm_range, &a, 0);
        for (int j = 0; j < k; j++) total += a.part[j];
    }
    return sqrt(total);
}

typedef struct {
    float *x;
    float s;
} ml_scale_args;
static void ml_scale_range(void *c, int k0, int k1, int tid) {
    const ml_scale_args *a = c;
    const size_t i0 = (size_t)k0 * ML_NORM_BLOCK, i1 = (size_t)k1 * ML_NORM_BLOCK;
    if (a->s == 0.0f) memset(a->x + i0, 0, sizeof(float) * (i1 - i0));
    else
        for (size_t i = i0; i < i1; i++) a->x[i] *= a->s;
}
/* x (n) *= s (s = 0: zero), split over threads in blocks */
static void ml_scale_array(float *x, size_t n, float s) {
    const size_t full = n / ML_NORM_BLOCK;
    ml_scale_args a = {x, s};
    ml_par_for((int)full, ml_scale_range, &a, 0);
    for (size_t i = full * ML_NORM_BLOCK; i < n; i++) x[i] = s == 0.0f ? 0.0f : x[i] * s;
}

void ml_model_scale_grads(ml_model *m, float s) {
    if (m->grads) ml_scale_array(m->grads, m->n_params, s);
}

double ml_model_clip_grads(ml_model *m, double max_norm) {
    double norm = ml_model_grad_norm(m);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) ml_model_scale_grads(m, (float)coef);
    }
    return norm;
}
