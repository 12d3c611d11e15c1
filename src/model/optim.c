/* AdamW (torch.optim.AdamW semantics) and Hugging Face learning-rate schedules. */
#include "model_internal.h"

#include <math.h>
#include <string.h>

void ml_adamw_config_default(ml_adamw_config *c) {
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 0.0;
}

static int ml_adamw_validate(const ml_adamw_config *c) {
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return ML_FAIL(ML_ERR_CONFIG, "adamw: betas (%g, %g) must lie in [0, 1)", c->beta1, c->beta2);
    if (!(c->eps > 0)) return ML_FAIL(ML_ERR_CONFIG, "adamw: eps = %g must be > 0", c->eps);
    if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay))
        return ML_FAIL(ML_ERR_CONFIG, "adamw: weight_decay = %g must be finite and >= 0", c->weight_decay);
    return ML_OK;
}

int ml_adamw_create(const ml_model *model, const ml_adamw_config *cfg, ml_adamw **out) {
    *out = NULL;
    ML_CHECK(ml_adamw_validate(cfg));
    ml_adamw *o = ml_calloc(1, sizeof *o);
    if (!o) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    o->cfg = *cfg;
    o->n = model->n_params;
    o->m = ml_calloc(o->n, sizeof(float));
    o->v = ml_calloc(o->n, sizeof(float));
    if (!o->m || !o->v) {
        ml_adamw_destroy(&o);
        return ML_FAIL(ML_ERR_NOMEM, "adamw: cannot allocate 2 x %zu moments (%.1f MB)", model->n_params,
                       model->n_params * 8.0 / 1e6);
    }
    *out = o;
    return ML_OK;
}

void ml_adamw_destroy(ml_adamw **op) {
    if (!op || !*op) return;
    ml_free((*op)->m);
    ml_free((*op)->v);
    ml_free(*op);
    *op = NULL;
}

/* p, g, m, v (n): one AdamW update with precomputed factors (no-math-errno lets sqrtf vectorise; v >= 0) */
__attribute__((optimize("no-math-errno"))) static void ml_adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float decay, float b1, float b2,
                            float step_size, float inv_bc2_sqrt, float eps) {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i];
        const float mi = m[i] + c1 * (gi - m[i]);
        const float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    }
}

typedef struct {
    ml_adamw *o;
    ml_model *model;
    double lr;
    float step_size, inv_bc2_sqrt;
} ml_adamw_args;

/* Flat indices [k0, k1) * 4096 of the parameter array, walked tensor by tensor. */
#define ML_ADAMW_UNIT 4096
static void ml_adamw_range(void *c, int k0, int k1, int tid) {
    const ml_adamw_args *a = c;
    const ml_model *model = a->model;
    size_t i0 = (size_t)k0 * ML_ADAMW_UNIT, i1 = (size_t)k1 * ML_ADAMW_UNIT;
    if (i1 > model->n_params) i1 = model->n_params;
    for (int i = 0; i < model->n_tensors && i0 < i1; i++) {
        const ml_tensor *t = &model->tensors[i];
        const size_t end = t->offset + t->numel;
        if (end <= i0) continue;
        const size_t stop = end < i1 ? end : i1;
        const float decay = t->decay ? (float)(1.0 - a->lr * a->o->cfg.weight_decay) : 1.0f;
        ml_adamw_kernel(model->params + i0, model->grads + i0, a->o->m + i0, a->o->v + i0, stop - i0, decay,
                        (float)a->o->cfg.beta1, (float)a->o->cfg.beta2, a->step_size, a->inv_bc2_sqrt,
                        (float)a->o->cfg.eps);
        i0 = stop;
    }
}

int ml_adamw_step(ml_adamw *o, ml_model *model, double lr) {
    if (!model->grads) return ML_FAIL(ML_ERR_ARG, "adamw: the model has no gradients (ml_model_enable_grads)");
    if (o->n != model->n_params)
        return ML_FAIL(ML_ERR_SHAPE, "adamw: optimizer holds %zu moments, model has %zu parameters", o->n,
                       model->n_params);
    if (!isfinite(lr) || lr < 0) return ML_FAIL(ML_ERR_ARG, "adamw: learning rate %g must be finite and >= 0", lr);
    ml_prof_begin("model.adamw");
    o->step++;
    const double bc1 = 1.0 - pow(o->cfg.beta1, (double)o->step), bc2 = 1.0 - pow(o->cfg.beta2, (double)o->step);
    ml_adamw_args a = {o, model, lr, (float)(lr / bc1), (float)(1.0 / sqrt(bc2))};
    ml_par_for((int)((model->n_params + ML_ADAMW_UNIT - 1) / ML_ADAMW_UNIT), ml_adamw_range, &a, 0);
    ml_prof_end("model.adamw", 12.0 * (double)o->n, 28.0 * (double)o->n);
    return ML_OK;
}

double ml_lr_at(const ml_lr_schedule *s, int64_t step) {
    if (step < s->warmup) return s->lr * (double)step / (double)(s->warmup > 1 ? s->warmup : 1);
    const double span = (double)(s->total - s->warmup > 1 ? s->total - s->warmup : 1);
    double f = 1.0;
    switch (s->kind) {
    case ML_LR_CONSTANT:
        f = 1.0;
        break;
    case ML_LR_LINEAR:
        f = (double)(s->total - step) / span;
        break;
    case ML_LR_COSINE: {
        double progress = (double)(step - s->warmup) / span;
        if (progress > 1.0) progress = 1.0; /* HF would rise again past `total`; we stay at 0 */
        f = 0.5 * (1.0 + cos(M_PI * progress));
        break;
    }
    }
    return s->lr * (f > 0 ? f : 0.0);
}

int ml_lr_kind_parse(const char *text, ml_lr_kind *kind) {
    static const char *names[] = {"constant", "linear", "cosine"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(text, names[i])) {
            *kind = (ml_lr_kind)i;
            return ML_OK;
        }
    return ML_FAIL(ML_ERR_CONFIG, "unknown learning-rate schedule '%s' (expected constant, linear or cosine)", text);
}
