/* Adapters: the LoRA / IA3 parameter table over a host's linear layers, the
 * merged-weight kernels (W_eff and the chain rule back to the adapter), the
 * standard and sampled initialisations, and the adapter file.
 *
 * Dimension letters: out, in = the host weight's [out, in]; r = LoRA rank;
 * s = alpha / r. */
#include "peft_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* The adaptable linear layers of one decoder layer, in host table order
 * (model.h: embed; per layer input_layernorm, q, k, v, o,
 * post_attention_layernorm, gate, up, down; norm; lm_head). */
static const struct {
    const char *name, *group;
    int slot; /* index within the layer's 9 table entries */
} ml_peft_linears[] = {
    {"q_proj", "self_attn", 1},  {"k_proj", "self_attn", 2}, {"v_proj", "self_attn", 3}, {"o_proj", "self_attn", 4},
    {"gate_proj", "mlp", 6},     {"up_proj", "mlp", 7},      {"down_proj", "mlp", 8},
};
#define ML_PEFT_NLINEAR 7

const char *ml_peft_method_name(ml_peft_method m) { return m == ML_PEFT_IA3 ? "ia3" : "lora"; }

int ml_peft_method_parse(const char *text, ml_peft_method *m) {
    if (!strcmp(text, "lora")) *m = ML_PEFT_LORA;
    else if (!strcmp(text, "ia3")) *m = ML_PEFT_IA3;
    else return ML_FAIL(ML_ERR_CONFIG, "unknown PEFT method '%s' (expected lora or ia3)", text);
    return ML_OK;
}

/* Host weight shape [out, in] of linear k. */
static void ml_linear_shape(const ml_model_config *c, int k, int64_t *out, int64_t *in) {
    const int64_t D = c->d_model, F = c->d_mlp, qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t rows[ML_PEFT_NLINEAR] = {qd, kvd, kvd, D, F, F, D};
    const int64_t cols[ML_PEFT_NLINEAR] = {D, D, D, qd, D, D, F};
    *out = rows[k];
    *in = cols[k];
}

static void ml_view_add(ml_model *v, const char *module, const char *suffix, int64_t rows, int64_t cols) {
    ml_tensor *t = &v->tensors[v->n_tensors++];
    snprintf(t->name, sizeof t->name, "base_model.model.%s.%s", module, suffix);
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (size_t)cols;
    t->offset = v->n_params;
    t->decay = 1;
    v->n_params += t->numel;
}

int ml_adapter_create(const ml_model_config *host, ml_peft_method method, int r, double alpha, const char *targets,
                      ml_adapter **out) {
    *out = NULL;
    char **filters = NULL;
    int nf = 0, rc = ML_OK;
    ml_adapter *a = NULL;
    if (method == ML_PEFT_LORA && (r < 1 || !(alpha > 0) || !isfinite(alpha)))
        return ML_FAIL(ML_ERR_CONFIG, "lora: r = %d and alpha = %g must be positive", r, alpha);
    if (strlen(targets) >= sizeof(((ml_adapter *)0)->targets))
        return ML_FAIL(ML_ERR_CONFIG, "lora: option 'targets' is too long (%zu characters)", strlen(targets));
    ML_CHECK(ml_list_split(targets, "targets", &filters, &nf));
    int use[ML_PEFT_NLINEAR] = {0};
    for (int f = 0; f < nf; f++) {
        int hit = -1;
        for (int k = 0; k < ML_PEFT_NLINEAR; k++)
            if (!strcmp(filters[f], ml_peft_linears[k].name)) hit = k;
        if (hit < 0)
            ML_FAIL_GOTO(done, ML_ERR_CONFIG,
                         "%s: target '%s' matches no linear layer (known: q_proj, k_proj, v_proj, o_proj, gate_proj, "
                         "up_proj, down_proj)", ml_peft_method_name(method), filters[f]);
        use[hit] = 1;
    }
    int per_layer = 0;
    for (int k = 0; k < ML_PEFT_NLINEAR; k++) per_layer += use[k];
    a = ml_calloc(1, sizeof *a);
    if (!a) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    a->method = method;
    a->r = method == ML_PEFT_LORA ? r : 0;
    a->alpha = method == ML_PEFT_LORA ? alpha : 1.0;
    snprintf(a->targets, sizeof a->targets, "%s", targets);
    a->host = *host;
    a->n_targets = per_layer * host->n_layers;
    const int per_target = method == ML_PEFT_LORA ? 2 : 1;
    a->tg = ml_calloc((size_t)a->n_targets, sizeof *a->tg);
    a->view.tensors = ml_calloc((size_t)a->n_targets * per_target, sizeof *a->view.tensors);
    a->view.cfg = *host;
    if (!a->tg || !a->view.tensors) {
        ml_adapter_destroy(&a);
        ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory for %d adapter targets", per_layer * host->n_layers);
    }
    int n = 0;
    for (int l = 0; l < host->n_layers; l++)
        for (int k = 0; k < ML_PEFT_NLINEAR; k++) {
            if (!use[k]) continue;
            ml_peft_target *t = &a->tg[n++];
            snprintf(t->module, sizeof t->module, "model.layers.%d.%s.%s", l, ml_peft_linears[k].group,
                     ml_peft_linears[k].name);
            t->host_tensor = 1 + 9 * l + ml_peft_linears[k].slot;
            ml_linear_shape(host, k, &t->out, &t->in);
            t->scale_input = method == ML_PEFT_IA3 && !strcmp(ml_peft_linears[k].group, "mlp");
            t->first = a->view.n_tensors;
            if (method == ML_PEFT_LORA) {
                ml_view_add(&a->view, t->module, "lora_A.weight", r, t->in);
                ml_view_add(&a->view, t->module, "lora_B.weight", t->out, r);
            } else if (t->scale_input) {
                ml_view_add(&a->view, t->module, "ia3_l", 1, t->in);
            } else {
                ml_view_add(&a->view, t->module, "ia3_l", t->out, 1);
            }
        }
    a->view.params = ml_calloc(a->view.n_params, sizeof(float));
    a->view.grads = ml_calloc(a->view.n_params, sizeof(float));
    if (!a->view.params || !a->view.grads) {
        ml_adapter_destroy(&a);
        ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory for adapter parameters");
    }
    *out = a;
done:
    ml_h5_free_names(filters, nf);
    return rc;
}

void ml_adapter_destroy(ml_adapter **ap) {
    if (!ap || !*ap) return;
    ml_adapter *a = *ap;
    ml_free(a->tg);
    ml_free(a->view.tensors);
    ml_free(a->view.params);
    ml_free(a->view.grads);
    ml_free(a);
    *ap = NULL;
}

double ml_adapter_scale(const ml_adapter *a) { return a->method == ML_PEFT_LORA ? a->alpha / a->r : 1.0; }

void ml_adapter_init(ml_adapter *a, uint64_t seed) {
    for (int i = 0; i < a->view.n_tensors; i++) {
        const ml_tensor *t = &a->view.tensors[i];
        float *p = a->view.params + t->offset;
        ml_rng rng;
        ml_rng_seed(&rng, seed, (uint64_t)i);
        const int is_a = a->method == ML_PEFT_LORA && strstr(t->name, ".lora_A.") != NULL;
        /* torch kaiming_uniform_(a = sqrt(5)) on [r, in]: bound = sqrt(6 / ((1 + 5) in)) = 1 / sqrt(in) */
        const double bound = 1.0 / sqrt((double)t->shape[1]);
        for (size_t j = 0; j < t->numel; j++)
            p[j] = a->method == ML_PEFT_IA3 ? 1.0f : is_a ? (float)(bound * (2.0 * ml_rng_uniform(&rng) - 1.0)) : 0.0f;
    }
}

void ml_adapter_sample_like(ml_adapter *a, uint64_t seed) {
    for (int i = 0; i < a->view.n_tensors; i++) {
        const ml_tensor *t = &a->view.tensors[i];
        float *p = a->view.params + t->offset;
        double s1 = 0, s2 = 0;
        for (size_t j = 0; j < t->numel; j++) s1 += p[j];
        const double mean = s1 / (double)t->numel;
        for (size_t j = 0; j < t->numel; j++) s2 += (p[j] - mean) * (p[j] - mean);
        const double std = sqrt(s2 / (double)t->numel);
        ml_rng rng;
        ml_rng_seed(&rng, seed, 1000003u + (uint64_t)i);
        for (size_t j = 0; j < t->numel; j++) p[j] = (float)(mean + std * ml_rng_normal(&rng));
    }
}

int ml_adapter_check_host(const ml_adapter *a, const ml_model_config *c, const char *adapter_name,
                          const char *host_name) {
    const ml_model_config *h = &a->host;
    const struct {
        const char *key;
        int want, got;
    } f[] = {{"num_hidden_layers", h->n_layers, c->n_layers},      {"hidden_size", h->d_model, c->d_model},
             {"intermediate_size", h->d_mlp, c->d_mlp},            {"num_attention_heads", h->n_heads, c->n_heads},
             {"num_key_value_heads", h->n_kv_heads, c->n_kv_heads}, {"head_dim", h->head_dim, c->head_dim},
             {"vocab_size", h->vocab_size, c->vocab_size}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].want != f[i].got)
            return ML_FAIL(ML_ERR_SHAPE,
                           "%s: cannot port %s: host %s = %d differs from the adapter's host (%d); porting requires "
                           "hosts of identical shapes",
                           host_name, adapter_name, f[i].key, f[i].got, f[i].want);
    return ML_OK;
}

void ml_adapter_apply(const ml_adapter *a, const ml_model *host, ml_model *work, int copy_all) {
    if (copy_all) memcpy(work->params, host->params, sizeof(float) * host->n_params);
    const float s = (float)ml_adapter_scale(a);
    for (int i = 0; i < a->n_targets; i++) {
        const ml_peft_target *t = &a->tg[i];
        const ml_tensor *ht = &host->tensors[t->host_tensor];
        const float *W = host->params + ht->offset; /* [out, in] */
        float *We = work->params + ht->offset;      /* [out, in] */
        const float *p = a->view.params + a->view.tensors[t->first].offset;
        const int64_t nO = t->out, nI = t->in;
        if (a->method == ML_PEFT_LORA) {
            const float *A = p;                                             /* [r, in] */
            const float *B = a->view.params + a->view.tensors[t->first + 1].offset; /* [out, r] */
            memcpy(We, W, sizeof(float) * (size_t)(nO * nI));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nO, (int)nI, a->r, s, B, a->r, A, (int)nI, 1.0f,
                        We, (int)nI);
        } else {
            const float *l = p; /* [out] (rows) or [in] (columns) */
            for (int64_t o = 0; o < nO; o++)
                for (int64_t j = 0; j < nI; j++) We[o * nI + j] = W[o * nI + j] * (t->scale_input ? l[j] : l[o]);
        }
    }
}

void ml_adapter_backward(ml_adapter *a, const ml_model *host, const ml_model *work) {
    const float s = (float)ml_adapter_scale(a);
    for (int i = 0; i < a->n_targets; i++) {
        const ml_peft_target *t = &a->tg[i];
        const ml_tensor *ht = &host->tensors[t->host_tensor];
        const float *dW = work->grads + ht->offset; /* [out, in] = dL/dW_eff */
        const int64_t nO = t->out, nI = t->in;
        const size_t off = a->view.tensors[t->first].offset;
        if (a->method == ML_PEFT_LORA) {
            const size_t offb = a->view.tensors[t->first + 1].offset;
            const float *A = a->view.params + off, *B = a->view.params + offb; /* [r, in], [out, r] */
            float *dA = a->view.grads + off, *dB = a->view.grads + offb;       /* [r, in], [out, r] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nO, a->r, (int)nI, s, dW, (int)nI, A, (int)nI, 0.0f,
                        dB, a->r);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->r, (int)nI, (int)nO, s, B, a->r, dW, (int)nI, 0.0f,
                        dA, (int)nI);
        } else {
            const float *W = host->params + ht->offset; /* [out, in] */
            float *dl = a->view.grads + off;            /* [out] or [in] */
            if (t->scale_input) {
                for (int64_t j = 0; j < nI; j++) {
                    double acc = 0;
                    for (int64_t o = 0; o < nO; o++) acc += (double)dW[o * nI + j] * W[o * nI + j];
                    dl[j] = (float)acc;
                }
            } else {
                for (int64_t o = 0; o < nO; o++) {
                    double acc = 0;
                    for (int64_t j = 0; j < nI; j++) acc += (double)dW[o * nI + j] * W[o * nI + j];
                    dl[o] = (float)acc;
                }
            }
        }
    }
}

/* ---- the adapter file ------------------------------------------------------------ */
int ml_adapter_save(ml_h5 *h, const ml_adapter *a) {
    ML_CHECK(ml_h5_set_attr_str(h, "/", "method", ml_peft_method_name(a->method)));
    ML_CHECK(ml_h5_set_attr_int(h, "/", "r", a->r));
    ML_CHECK(ml_h5_set_attr_double(h, "/", "lora_alpha", a->alpha));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "targets", a->targets));
    ML_CHECK(ml_model_config_save(h, &a->host));
    ML_CHECK(ml_model_save_params(h, &a->view));
    return ML_OK;
}

int ml_adapter_load(MPI_Comm comm, const char *path, ml_adapter **out) {
    ml_h5 *h = NULL;
    char *method = NULL, *targets = NULL;
    int rc = ML_OK;
    *out = NULL;
    ML_CHECK(ml_h5_open(comm, path, ML_ADAPTER_FORMAT, 1, 1, &h));
    int64_t r = 0;
    double alpha = 0;
    ml_model_config mc;
    ml_peft_method m = ML_PEFT_LORA;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "method", &method), done);
    ML_CHECK_GOTO(ml_peft_method_parse(method, &m), done);
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "r", &r), done);
    ML_CHECK_GOTO(ml_h5_get_attr_double(h, "/", "lora_alpha", &alpha), done);
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "targets", &targets), done);
    ML_CHECK_GOTO(ml_model_config_load(h, &mc), done);
    ML_CHECK_GOTO(ml_adapter_create(&mc, m, (int)r, alpha, targets, out), done);
    ML_CHECK_GOTO(ml_model_load_params(h, &(*out)->view), done);
done:
    if (rc != ML_OK) ml_adapter_destroy(out);
    ml_free(method);
    ml_free(targets);
    ml_h5_close(&h);
    return rc;
}
