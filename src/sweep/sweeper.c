/* The in-memory merger of a sweep: the recipe's input models, loaded once,
 * each tensor's resolved parameters and statistics (computed once), and the
 * per-point merge (parameter override + ml_merge_apply per tensor).
 *
 * Legend: M input checkpoints (base first when the method has one), K of
 * them besides the base, T tensors, N elements of a tensor. */
#include <jansson.h>
#include <string.h>

#include "mergelens/sweep.h"

struct ml_sweeper {
    int M, T;
    ml_model *in[ML_MERGE_MAX_MODELS + 1]; /* (M) input models */
    ml_merge_params *params;               /* (T) resolved per tensor */
    ml_merge_stats *stats;                 /* (T) */
    ml_merge_work *work;
    char *param;
    const char *dtype, *out_dtype;
    size_t stats_bytes;
};

double ml_sweep_grid_value(double from, double to, int count, int k) {
    if (count <= 1) return from;
    if (k == count - 1) return to;
    return from + (to - from) * (double)k / (double)(count - 1);
}

int ml_sweep_param_check(ml_merge_method m, const char *param) {
    static const char *const keys[ML_MERGE_METHOD_COUNT_] = {
        [ML_MERGE_LINEAR] = "weight[i]",
        [ML_MERGE_SLERP] = "t",
        [ML_MERGE_TASK_ARITHMETIC] = "weight[i], lambda",
        [ML_MERGE_TIES] = "weight[i], density, density[i], lambda",
        [ML_MERGE_DARE_LINEAR] = "weight[i], density, density[i], lambda",
        [ML_MERGE_DARE_TIES] = "weight[i], density, density[i], lambda",
        [ML_MERGE_MODEL_STOCK] = "",
        [ML_MERGE_SOUP] = "weight[i]",
        [ML_MERGE_MULTISLERP] = "weight[i], eps",
        [ML_MERGE_KARCHER] = "tol",
    };
    const char *list = keys[m];
    char head[64];
    size_t n = strcspn(param, "[");
    int ok = 0;
    if (n < sizeof head - 4) {
        memcpy(head, param, n);
        strcpy(head + n, param[n] == '[' ? "[i]" : "");
        for (const char *p = list; *p && !ok; p += strcspn(p, ",") + (p[strcspn(p, ",")] ? 2 : 0)) {
            size_t len = strcspn(p, ",");
            ok = strlen(head) == len && !strncmp(p, head, len);
        }
    }
    if (!ok)
        return ML_FAIL(ML_ERR_ARG, "sweep: cannot sweep parameter '%s' of merge_method %s (sweepable: %s)", param,
                       ml_merge_method_name(m), *list ? list : "none");
    ml_merge_params p;
    ml_merge_params_defaults(&p, m);
    p.K = ML_MERGE_MAX_MODELS;
    ML_CHECK(ml_merge_params_override(&p, param, 0.0)); /* syntax of weight[i] / density[i] */
    return ML_OK;
}

void ml_sweeper_destroy(ml_sweeper **sp) {
    if (!sp || !*sp) return;
    ml_sweeper *s = *sp;
    for (int i = 0; i < s->M; i++) ml_model_destroy(&s->in[i]);
    for (int t = 0; s->stats && t < s->T; t++) ml_merge_stats_release(&s->stats[t]);
    ml_free(s->stats);
    ml_free(s->params);
    ml_merge_work_destroy(&s->work);
    ml_free(s->param);
    ml_free(s);
    *sp = NULL;
}

const ml_model_config *ml_sweeper_model_config(const ml_sweeper *s) { return &s->in[0]->cfg; }

size_t ml_sweeper_bytes(const ml_sweeper *s) {
    return (size_t)s->M * s->in[0]->n_params * sizeof(float) + s->stats_bytes;
}

static void ml_round_dtype(const char *dtype, float *x, size_t n) {
    if (!strcmp(dtype, "bfloat16")) ml_round_bf16(x, n);
    else if (!strcmp(dtype, "float16")) ml_round_f16(x, n);
}

/* Inputs of tensor t (pointers into the loaded models). */
static void ml_sweeper_inputs(const ml_sweeper *s, int t, ml_merge_inputs *in) {
    const ml_tensor *tt = &s->in[0]->tensors[t];
    const ml_merge_params *p = &s->params[t];
    memset(in, 0, sizeof *in);
    in->name = tt->name;
    in->rows = tt->ndim > 1 ? (size_t)tt->shape[0] : 1;
    in->cols = tt->numel / (in->rows ? in->rows : 1);
    int first = p->has_base ? 1 : 0;
    in->base = first ? s->in[0]->params + tt->offset : NULL;
    for (int i = 0; i < p->K; i++) in->x[i] = s->in[first + i]->params + tt->offset;
}

int ml_sweeper_create(MPI_Comm comm, const ml_merge_recipe *r, const char *param, ml_sweeper **out) {
    int rc = ML_OK;
    *out = NULL;
    const char *const *paths = NULL;
    int M = 0;
    /* the merge module's validation: configs, names, shapes, dtypes, per-tensor parameters */
    ML_CHECK(ml_sweep_param_check(ml_merge_recipe_method(r), param));
    ML_CHECK(ml_merge_checkpoints(comm, r, NULL, NULL, 0));
    ML_CHECK(ml_merge_recipe_models(r, &paths, &M));
    ml_sweeper *s = ml_calloc(1, sizeof *s);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    s->param = ml_strdup(param);
    s->dtype = ml_merge_recipe_dtype(r);
    s->out_dtype = ml_merge_recipe_out_dtype(r);
    rc = s->param ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    ml_prof_begin("sweep.load");
    for (int i = 0; i < M && rc == ML_OK; i++) {
        rc = ml_checkpoint_load_model(comm, paths[i], &s->in[i]);
        if (rc == ML_OK) {
            s->M = i + 1;
            ml_round_dtype(s->dtype, s->in[i]->params, s->in[i]->n_params);
        }
    }
    ml_prof_end("sweep.load", 0, (double)M * (s->M ? s->in[0]->n_params : 0) * sizeof(float));
    ML_CHECK_GOTO(ml_agree(comm, rc), fail); /* e.g. a NaN in a model: every rank ends cleanly */
    const ml_model *m0 = s->in[0];
    for (int i = 1; i < M; i++) /* the merge check compared the configs; the table must follow */
        if (memcmp(&s->in[i]->cfg, &m0->cfg, sizeof m0->cfg))
            ML_FAIL_GOTO(fail, ML_ERR_SHAPE, "sweep: model configurations of %s and %s differ", paths[0], paths[i]);
    s->T = m0->n_tensors;
    s->params = ml_calloc((size_t)s->T, sizeof *s->params);
    s->stats = ml_calloc((size_t)s->T, sizeof *s->stats);
    if (!s->params || !s->stats) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    size_t max_rows = 1;
    ml_prof_begin("sweep.stats");
    for (int t = 0; t < s->T && rc == ML_OK; t++) {
        const ml_tensor *tt = &m0->tensors[t];
        ML_CHECK_GOTO(ml_merge_recipe_resolve(r, tt->name, ml_merge_layer_t(tt->name, m0->cfg.n_layers),
                                              &s->params[t]), stats_done);
        ml_merge_params probe = s->params[t]; /* an index of weight[i] / density[i] in range? */
        ML_CHECK_GOTO(ml_merge_params_override(&probe, param, 0.0), stats_done);
        ml_merge_inputs in;
        ml_sweeper_inputs(s, t, &in);
        if (in.rows > max_rows) max_rows = in.rows;
        ML_CHECK_GOTO(ml_merge_stats_compute(&s->params[t], &in, &s->stats[t]), stats_done);
        s->stats_bytes += (s->stats[t].cap + s->stats[t].acc_cap) * sizeof(double);
    }
stats_done:
    ml_prof_end("sweep.stats", 0, 0);
    if (rc == ML_OK) rc = ml_merge_work_create(s->params[0].K, max_rows, &s->work);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    *out = s;
    return ML_OK;
fail:
    ml_sweeper_destroy(&s);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_sweeper_check(ml_sweeper *s, double value) {
    for (int t = 0; t < s->T; t++) {
        ml_merge_params p = s->params[t];
        ML_CHECK(ml_merge_params_override(&p, s->param, value));
        ML_CHECK(ml_merge_params_check(&p, s->in[0]->tensors[t].name, s->in[0]->tensors[t].numel));
    }
    return ML_OK;
}

int ml_sweeper_merge(ml_sweeper *s, double value, ml_model *out) {
    if (memcmp(&out->cfg, &s->in[0]->cfg, sizeof out->cfg))
        return ML_FAIL(ML_ERR_ARG, "sweep: the output model's config differs from the inputs'");
    ml_prof_begin("sweep.merge");
    int rc = ML_OK;
    for (int t = 0; t < s->T && rc == ML_OK; t++) {
        ml_merge_params p = s->params[t];
        ml_merge_inputs in;
        ml_sweeper_inputs(s, t, &in);
        const ml_tensor *tt = &out->tensors[t];
        rc = ml_merge_params_override(&p, s->param, value);
        if (rc == ML_OK) rc = ml_merge_apply(&p, &in, &s->stats[t], s->work, out->params + tt->offset);
        if (rc == ML_OK) ml_round_dtype(s->out_dtype, out->params + tt->offset, tt->numel);
    }
    ml_prof_end("sweep.merge", 0, (double)(s->M + 1) * out->n_params * sizeof(float));
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}
