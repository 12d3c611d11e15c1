/* Checkpoint tensors (docs/FORMAT.md): /params/<HF name>, /optimizer/{m,v}/<HF name>. */
#include "model_internal.h"

#include <math.h>
#include <string.h>

int ml_model_config_save(ml_h5 *h5, const ml_model_config *c) {
    char *json = NULL;
    ML_CHECK(ml_model_config_to_json(c, &json));
    int rc = ml_h5_set_attr_str(h5, "/", "model_config", json);
    ml_free(json);
    if (rc != ML_OK) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    return ML_OK;
}

int ml_model_config_load(ml_h5 *h5, ml_model_config *c) {
    char *json = NULL;
    ML_CHECK(ml_h5_get_attr_str(h5, "/", "model_config", &json));
    char where[600];
    snprintf(where, sizeof where, "%s: attribute model_config", ml_h5_path(h5));
    int rc = ml_model_config_from_json(json, where, c);
    ml_free(json);
    if (rc != ML_OK) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    return ML_OK;
}

/* Write every tensor of the table from base (n_params floats) under group. */
static int ml_save_table(ml_h5 *h5, const char *group, const ml_model *m, const float *base) {
    ML_CHECK(ml_h5_mkgroup(h5, group));
    char path[256];
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_tensor *t = &m->tensors[i];
        hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        snprintf(path, sizeof path, "%s/%s", group, t->name);
        ML_CHECK(ml_h5_write_tensor(h5, path, ML_F32, t->ndim, dims, base + t->offset));
    }
    return ML_OK;
}

static void ml_shape_text(char *buf, size_t n, int rank, const hsize_t *dims) {
    int k = snprintf(buf, n, "[");
    for (int i = 0; i < rank && k < (int)n; i++) k += snprintf(buf + k, n - k, i ? ", %llu" : "%llu", (unsigned long long)dims[i]);
    if (k < (int)n) snprintf(buf + k, n - k, "]");
}

/* Read every tensor of the table into base; the group must hold exactly the
 * table's tensors, float32, same shapes, finite values. */
static int ml_load_table(ml_h5 *h5, const char *group, const ml_model *m, float *base) {
    const char *file = ml_h5_path(h5);
    if (!ml_h5_exists(h5, group)) return ML_FAIL(ML_ERR_FORMAT, "%s: no group %s", file, group);
    char **names = NULL;
    int count = 0, rc = ML_OK;
    ML_CHECK(ml_h5_list(h5, group, 0, &names, &count));
    for (int j = 0; j < count; j++) {
        const ml_tensor *t = NULL;
        for (int i = 0; i < m->n_tensors && !t; i++)
            if (!strcmp(m->tensors[i].name, names[j])) t = &m->tensors[i];
        if (!t)
            ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: %s/%s is not a tensor of this model (%d layers, d_model %d)", file,
                         group, names[j], m->cfg.n_layers, m->cfg.d_model);
    }
    char path[256], want[64], got[64];
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_tensor *t = &m->tensors[i];
        snprintf(path, sizeof path, "%s/%s", group, t->name);
        if (!ml_h5_exists(h5, path)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: tensor %s is missing", file, path);
        int rank = 0;
        hsize_t dims[ML_H5_MAX_RANK], expect[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        ml_dtype type;
        ML_CHECK_GOTO(ml_h5_shape(h5, path, &rank, dims, &type), done);
        int same = rank == t->ndim;
        for (int d = 0; same && d < rank; d++) same = dims[d] == expect[d];
        if (!same) {
            ml_shape_text(got, sizeof got, rank, dims);
            ml_shape_text(want, sizeof want, t->ndim, expect);
            ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: tensor %s has shape %s, the model expects %s", file, path, got, want);
        }
        if (type != ML_F32)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: tensor %s is %s, expected float32", file, path, ml_dtype_name(type));
        float *p = base + t->offset;
        ML_CHECK_GOTO(ml_h5_read_tensor(h5, path, ML_F32, t->ndim, expect, p), done);
        for (size_t k = 0; k < t->numel; k++)
            if (!isfinite(p[k]))
                ML_FAIL_GOTO(done, ML_ERR_NUMERIC, "%s: tensor %s holds a non-finite value (%g at flat index %zu)", file,
                             path, (double)p[k], k);
    }
done:
    ml_h5_free_names(names, count);
    return rc;
}

int ml_model_save_params(ml_h5 *h5, const ml_model *m) {
    ML_CHECK(ml_save_table(h5, "/params", m, m->params));
    return ML_OK;
}

int ml_model_load_params(ml_h5 *h5, ml_model *m) {
    ML_CHECK(ml_load_table(h5, "/params", m, m->params));
    return ML_OK;
}

int ml_adamw_save(ml_h5 *h5, const ml_adamw *o, const ml_model *m) {
    if (o->n != m->n_params)
        return ML_FAIL(ML_ERR_SHAPE, "adamw save: optimizer holds %zu moments, model has %zu parameters", o->n,
                       m->n_params);
    ML_CHECK(ml_save_table(h5, "/optimizer/m", m, o->m));
    ML_CHECK(ml_save_table(h5, "/optimizer/v", m, o->v));
    ML_CHECK(ml_h5_set_attr_int(h5, "/optimizer", "step", o->step));
    ML_CHECK(ml_h5_set_attr_double(h5, "/optimizer", "beta1", o->cfg.beta1));
    ML_CHECK(ml_h5_set_attr_double(h5, "/optimizer", "beta2", o->cfg.beta2));
    ML_CHECK(ml_h5_set_attr_double(h5, "/optimizer", "eps", o->cfg.eps));
    ML_CHECK(ml_h5_set_attr_double(h5, "/optimizer", "weight_decay", o->cfg.weight_decay));
    return ML_OK;
}

int ml_adamw_load(ml_h5 *h5, ml_adamw *o, const ml_model *m) {
    if (o->n != m->n_params)
        return ML_FAIL(ML_ERR_SHAPE, "adamw load: optimizer holds %zu moments, model has %zu parameters", o->n,
                       m->n_params);
    int64_t step = 0;
    ML_CHECK(ml_load_table(h5, "/optimizer/m", m, o->m));
    ML_CHECK(ml_load_table(h5, "/optimizer/v", m, o->v));
    ML_CHECK(ml_h5_get_attr_int(h5, "/optimizer", "step", &step));
    if (step < 0) return ML_FAIL(ML_ERR_FORMAT, "%s: /optimizer step = %lld is negative", ml_h5_path(h5), (long long)step);
    for (size_t k = 0; k < o->n; k++)
        if (o->v[k] < 0)
            return ML_FAIL(ML_ERR_NUMERIC, "%s: /optimizer/v holds a negative second moment at flat index %zu",
                           ml_h5_path(h5), k);
    o->step = step;
    return ML_OK;
}
