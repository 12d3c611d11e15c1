/* `mergelens lora train|port|merge|export`: adapter training on a frozen
 * host, the portability study (ported vs scratch vs sampled), merging an
 * adapter into its host, and the Hugging Face PEFT export.
 *
 * Dimension letters: K evaluation domains, A adapters, H target hosts,
 * C conditions, S seeds, R = A H C S 2 result rows. */
#include "peft_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const ml_peft_condition_names[ML_PEFT_N_CONDITIONS] = {"ported", "scratch", "sampled"};

/* Options shared by `lora train` and `lora port` (the step of ml_peft_trainer). */
#define ML_PEFT_TRAIN_OPTS                                                                                             \
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated training token stores data/<domain>.h5"},           \
        {"eval_domains", ML_OPT_STRING, "", 0, -1, NULL, "stores to evaluate on (default: domains)"},                 \
        {"context", ML_OPT_INT, "0", 0, 1 << 20, NULL, "window length T (0 = min(host max_position_embeddings, 256))"}, \
        {"global_batch", ML_OPT_INT, "16", 1, 1 << 24, NULL, "windows per step over all ranks (multiple of ranks)"},  \
        {"micro_batch", ML_OPT_INT, "0", 0, 1 << 24, NULL, "rows per forward/backward pass on a rank (0 = all)"},      \
        {"lr", ML_OPT_FLOAT, "1e-3", 0, 10, NULL, "peak learning rate"},                                               \
        {"warmup", ML_OPT_INT, "0", 0, 1e15, NULL, "linear warmup steps"},                                             \
        {"schedule", ML_OPT_CHOICE, "constant", 0, -1, "cosine|linear|constant", "decay after warmup"},                \
        {"weight_decay", ML_OPT_FLOAT, "0", 0, 10, NULL, "AdamW decoupled weight decay on the adapter"},               \
        {"betas", ML_OPT_STRING, "0.9,0.999", 0, -1, NULL, "AdamW beta1,beta2"},                                       \
        {"eps", ML_OPT_FLOAT, "1e-8", 0, 1, NULL, "AdamW epsilon"},                                                    \
        {"clip", ML_OPT_FLOAT, "1.0", 0, 1e9, NULL, "clip the adapter gradient norm (0 = off)"},                       \
        {"eval_batches", ML_OPT_INT, "0", 0, 1e15, NULL, "evaluation steps per domain (0 = the whole val split)"},   \
        {"eval_batch", ML_OPT_INT, "0", 0, 1 << 24, NULL, "windows per evaluation step (0 = global_batch)"},           \
        {"steps", ML_OPT_INT, "100", 1, 1e15, NULL, "optimizer steps (per run)"},                                      \
        {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output file"}

static const ml_option_spec ml_lora_train_opts[] = {
    ML_PEFT_TRAIN_OPTS,
    {"host", ML_OPT_STRING, NULL, 0, -1, NULL, "frozen host checkpoint models/<name>.h5"},
    {"method", ML_OPT_CHOICE, "lora", 0, -1, "lora|ia3", "PEFT method"},
    {"r", ML_OPT_INT, "8", 1, 1 << 16, NULL, "LoRA rank"},
    {"alpha", ML_OPT_FLOAT, "16", 1e-9, 1e9, NULL, "LoRA alpha (scale alpha / r)"},
    {"targets", ML_OPT_STRING, "", 0, -1, NULL,
     "comma-separated module names to adapt (default: lora q_proj,v_proj; ia3 k_proj,v_proj,down_proj)"},
    {"seed", ML_OPT_INT, "42", 0, 9.007199254740992e15, NULL, "seed of the adapter init and the data order"},
    ML_OPT_END,
};

static const ml_option_spec ml_lora_port_opts[] = {
    ML_PEFT_TRAIN_OPTS,
    {"adapters", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated adapter files (from lora train) to port"},
    {"hosts", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated destination host checkpoints (identical shapes)"},
    {"conditions", ML_OPT_STRING, "ported,scratch,sampled", 0, -1, NULL, "conditions to run (subset, in any order)"},
    {"seeds", ML_OPT_STRING, "1,2,3", 0, -1, NULL, "comma-separated seeds (init of the controls, data order)"},
    ML_OPT_END,
};

static const ml_option_spec ml_lora_merge_opts[] = {
    {"host", ML_OPT_STRING, "", 0, -1, NULL, "host checkpoint (default: the adapter's base_model)"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "merged checkpoint models/<name>.h5"},
    ML_OPT_END,
};

static const ml_option_spec ml_lora_export_opts[] = {ML_OPT_END};

static const char ml_lora_usage[] =
    "usage: mergelens lora train --host models/H.h5 --domains data/a.h5 --out adapters/X.h5 [--method lora|ia3]\n"
    "       mergelens lora port --adapters adapters/X.h5 --hosts models/B.h5,... --domains data/a.h5 --out peft/N.h5\n"
    "       mergelens lora merge ADAPTER.h5 [--host models/H.h5] --out models/M.h5\n"
    "       mergelens lora export ADAPTER.h5 DIR   (Hugging Face PEFT: adapter_model.safetensors + adapter_config.json)\n";

/* ---- shared setup ------------------------------------------------------------------- */
typedef struct {
    char **train, **eval; /* store paths */
    int n_train, n_eval;
    ml_peft_train_config tc;
    ml_eval_config ec;
} ml_peft_setup;

static void ml_peft_setup_free(ml_peft_setup *s) {
    ml_h5_free_names(s->train, s->n_train);
    ml_h5_free_names(s->eval, s->n_eval);
    memset(s, 0, sizeof *s);
}

static int ml_peft_setup_read(const ml_options *o, const ml_model_config *host, ml_peft_setup *s) {
    ML_CHECK(ml_list_split(ml_opt_str(o, "domains"), "domains", &s->train, &s->n_train));
    const char *ev = ml_opt_str(o, "eval_domains");
    ML_CHECK(ml_list_split(ev && *ev ? ev : ml_opt_str(o, "domains"), "eval_domains", &s->eval, &s->n_eval));
    ml_peft_train_config *c = &s->tc;
    c->n_domains = s->n_train;
    c->paths = (const char *const *)s->train;
    c->weights = NULL;
    c->T = (int)ml_opt_int(o, "context");
    if (c->T == 0) c->T = host->max_context < 256 ? host->max_context : 256;
    c->G = (int)ml_opt_int(o, "global_batch");
    c->M = (int)ml_opt_int(o, "micro_batch");
    c->steps = ml_opt_int(o, "steps");
    ML_CHECK(ml_lr_kind_parse(ml_opt_str(o, "schedule"), &c->sched.kind));
    c->sched.lr = ml_opt_float(o, "lr");
    c->sched.warmup = ml_opt_int(o, "warmup");
    c->sched.total = c->steps;
    ML_CHECK(ml_adamw_config_from_options(o, &c->adamw));
    c->clip = ml_opt_float(o, "clip");
    int eb = (int)ml_opt_int(o, "eval_batch");
    s->ec = (ml_eval_config){.n_domains = s->n_eval, .paths = (const char *const *)s->eval, .split = "val", .T = c->T,
                             .batch = eb > 0 ? eb : c->G, .micro_batch = 0, .max_batches = ml_opt_int(o, "eval_batches")};
    return ML_OK;
}

/* Per-domain result arrays and names as JSON (rank-independent). */
static int ml_write_eval(ml_h5 *h, const char *group, const ml_eval_result *r, int K) {
    double *buf = NULL;
    const char **names = NULL;
    char *json = NULL;
    int rc = ML_OK;
    buf = ml_malloc(sizeof *buf * (size_t)K);
    names = ml_malloc(sizeof *names * (size_t)K);
    if (!buf || !names) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    char path[256];
    hsize_t dims[1] = {(hsize_t)K};
    ML_CHECK_GOTO(ml_h5_mkgroup(h, group), done);
    for (int d = 0; d < K; d++) buf[d] = r[d].loss, names[d] = r[d].domain;
    snprintf(path, sizeof path, "%s/loss", group);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, path, ML_F64, 1, dims, buf), done);
    for (int d = 0; d < K; d++) buf[d] = r[d].accuracy;
    snprintf(path, sizeof path, "%s/accuracy", group);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, path, ML_F64, 1, dims, buf), done);
    ML_CHECK_GOTO(ml_list_to_json(names, K, &json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, group, "domains", json), done);
done:
    ml_free(buf);
    ml_free(names);
    ml_free(json);
    return rc;
}

/* ---- lora train ------------------------------------------------------------------------ */
static int ml_lora_train_write(MPI_Comm comm, const ml_options *o, const ml_adapter *a, const double *loss,
                               int64_t steps, const ml_eval_result *res, int K) {
    ml_h5 *h = NULL;
    char *cfg = NULL;
    int rc = ML_OK;
    const char *out = ml_opt_str(o, "out");
    ML_CHECK(ml_options_to_json(o, &cfg));
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_h5_create(comm, out, ML_ADAPTER_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_adapter_save(h, a), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "base_model", ml_opt_str(o, "host")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "train/log"), done);
    hsize_t dims[1] = {(hsize_t)steps};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "train/log/loss", ML_F64, 1, dims, loss), done);
    ML_CHECK_GOTO(ml_write_eval(h, "eval", res, K), done);
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    if (h) ml_h5_discard(&h);
    ml_free(cfg);
    return rc;
}

static int ml_lora_train(MPI_Comm comm, const ml_options *o) {
    int rc = ML_OK;
    ml_model *host = NULL;
    ml_adapter *a = NULL;
    ml_peft_trainer *t = NULL;
    ml_peft_setup s;
    memset(&s, 0, sizeof s);
    double *loss = NULL;
    ml_eval_result *res = NULL;
    const char *host_path = ml_opt_str(o, "host");
    ml_peft_method m;
    ML_CHECK_GOTO(ml_agree(comm, ml_peft_method_parse(ml_opt_str(o, "method"), &m)), done);
    const char *targets = ml_opt_str(o, "targets");
    if (!targets || !*targets) targets = m == ML_PEFT_LORA ? "q_proj,v_proj" : "k_proj,v_proj,down_proj";
    ML_CHECK_GOTO(ml_checkpoint_load_model(comm, host_path, &host), done);
    rc = ml_peft_setup_read(o, &host->cfg, &s);
    if (rc == ML_OK) rc = ml_adapter_create(&host->cfg, m, (int)ml_opt_int(o, "r"), ml_opt_float(o, "alpha"), targets, &a);
    if (rc == ML_OK) {
        loss = ml_calloc((size_t)s.tc.steps, sizeof *loss);
        res = ml_calloc((size_t)s.n_eval, sizeof *res);
        if (!loss || !res) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    const uint64_t seed = (uint64_t)ml_opt_int(o, "seed");
    ml_adapter_init(a, seed);
    ML_CHECK_GOTO(ml_peft_trainer_create(comm, &host->cfg, a, &s.tc, &s.ec, &t), done);
    ml_info("lora train: %s, %d modules, %zu adapter parameters on a %zu-parameter host %s; %lld steps of %d x %d",
            ml_peft_method_name(m), a->n_targets, a->view.n_params, host->n_params, host_path,
            (long long)s.tc.steps, s.tc.G, s.tc.T);
    ML_CHECK_GOTO(ml_peft_trainer_run(t, host, a, seed, loss), done);
    ML_CHECK_GOTO(ml_peft_trainer_eval(t, host, a, res), done);
    for (int d = 0; d < s.n_eval; d++)
        ml_info("lora train: %s loss %.4f accuracy %.4f", res[d].domain, res[d].loss, res[d].accuracy);
    ML_CHECK_GOTO(ml_lora_train_write(comm, o, a, loss, s.tc.steps, res, s.n_eval), done);
    ml_info("lora train: wrote %s", ml_opt_str(o, "out"));
done:
    ml_peft_trainer_destroy(&t);
    ml_adapter_destroy(&a);
    ml_model_destroy(&host);
    ml_peft_setup_free(&s);
    ml_free(loss);
    ml_free(res);
    return rc;
}

/* ---- lora port ---------------------------------------------------------------------------- */
typedef struct {
    int A, H, C, S, K;
    int64_t steps;
    int conds[ML_PEFT_N_CONDITIONS]; /* condition indices to run */
    int64_t *seeds;                  /* (S) */
    int64_t R, n;                    /* rows planned / filled */
    int32_t *adapter, *method, *target, *condition; /* (R) */
    int64_t *seed, *step;            /* (R) */
    double *loss, *acc;              /* (R, K) */
    double *train_loss;              /* (R) last training step's loss (NaN at step 0) */
    double *curves;                  /* (R / 2, steps) training loss per run */
    double *host_loss, *host_acc;    /* (H, K) bare hosts */
    double *src_loss, *src_acc;      /* (A, K) adapters on their own host (their file's /eval) */
} ml_port_table;

static void ml_port_table_free(ml_port_table *t) {
    ml_free(t->seeds);
    ml_free(t->adapter);
    ml_free(t->method);
    ml_free(t->target);
    ml_free(t->condition);
    ml_free(t->seed);
    ml_free(t->step);
    ml_free(t->loss);
    ml_free(t->acc);
    ml_free(t->train_loss);
    ml_free(t->curves);
    ml_free(t->host_loss);
    ml_free(t->host_acc);
    ml_free(t->src_loss);
    ml_free(t->src_acc);
}

static int ml_port_table_alloc(ml_port_table *t) {
    const size_t R = (size_t)t->R, K = (size_t)t->K;
    ML_ALLOC(t->adapter, R);
    ML_ALLOC(t->method, R);
    ML_ALLOC(t->target, R);
    ML_ALLOC(t->condition, R);
    ML_ALLOC(t->seed, R);
    ML_ALLOC(t->step, R);
    ML_ALLOC(t->loss, R * K);
    ML_ALLOC(t->acc, R * K);
    ML_ALLOC(t->train_loss, R);
    ML_ALLOC(t->curves, R / 2 * (size_t)t->steps);
    ML_ALLOC(t->host_loss, (size_t)t->H * K);
    ML_ALLOC(t->host_acc, (size_t)t->H * K);
    ML_ALLOC(t->src_loss, (size_t)t->A * K);
    ML_ALLOC(t->src_acc, (size_t)t->A * K);
    for (size_t i = 0; i < (size_t)t->A * K; i++) t->src_loss[i] = t->src_acc[i] = NAN;
    return ML_OK;
}

static void ml_port_row(ml_port_table *t, int a, ml_peft_method m, int h, int c, int64_t seed, int64_t step,
                        const ml_eval_result *res, double train_loss) {
    const int64_t i = t->n++;
    t->adapter[i] = a;
    t->method[i] = m;
    t->target[i] = h;
    t->condition[i] = c;
    t->seed[i] = seed;
    t->step[i] = step;
    t->train_loss[i] = train_loss;
    for (int d = 0; d < t->K; d++) {
        t->loss[i * t->K + d] = res[d].loss;
        t->acc[i * t->K + d] = res[d].accuracy;
    }
}

static int ml_port_conditions(const char *text, ml_port_table *t) {
    char **items = NULL;
    int n = 0, rc = ML_OK;
    ML_CHECK(ml_list_split(text, "conditions", &items, &n));
    t->C = 0;
    for (int i = 0; i < n && rc == ML_OK; i++) {
        int hit = -1;
        for (int c = 0; c < ML_PEFT_N_CONDITIONS; c++)
            if (!strcmp(items[i], ml_peft_condition_names[c])) hit = c;
        if (hit < 0 || t->C >= ML_PEFT_N_CONDITIONS)
            rc = ML_FAIL(ML_ERR_CONFIG, "option 'conditions': '%s' is not one of ported, scratch, sampled (or repeated)",
                         items[i]);
        else
            t->conds[t->C++] = hit;
    }
    ml_h5_free_names(items, n);
    return rc;
}

static int ml_port_seeds(const char *text, ml_port_table *t) {
    char **items = NULL;
    int n = 0, rc = ML_OK;
    ML_CHECK(ml_list_split(text, "seeds", &items, &n));
    t->seeds = ml_malloc(sizeof *t->seeds * (size_t)n);
    if (!t->seeds) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && rc == ML_OK; i++) {
        char *end = NULL;
        long long v = strtoll(items[i], &end, 10);
        if (!end || *end || v < 0) rc = ML_FAIL(ML_ERR_CONFIG, "option 'seeds': '%s' is not a seed (integer >= 0)", items[i]);
        t->seeds[i] = v;
    }
    t->S = n;
    ml_h5_free_names(items, n);
    return rc;
}

/* The adapter file's own evaluation (its /eval, on the host it was trained
 * on) when it evaluated the same domains in the same order; NaN otherwise. */
static int ml_port_source_eval(MPI_Comm comm, const char *path, ml_port_table *t, int a, const ml_eval_result *names) {
    ml_h5 *h = NULL;
    char *json = NULL, *want = NULL;
    const char **nm = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_h5_open(comm, path, ML_ADAPTER_FORMAT, 1, 1, &h));
    if (!ml_h5_exists(h, "eval/loss")) goto done;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "eval", "domains", &json), done);
    nm = ml_malloc(sizeof *nm * (size_t)t->K);
    if (!nm) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int d = 0; d < t->K; d++) nm[d] = names[d].domain;
    ML_CHECK_GOTO(ml_list_to_json(nm, t->K, &want), done);
    if (strcmp(want, json) != 0) goto done;
    hsize_t dims[1] = {(hsize_t)t->K};
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "eval/loss", ML_F64, 1, dims, t->src_loss + (size_t)a * t->K), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "eval/accuracy", ML_F64, 1, dims, t->src_acc + (size_t)a * t->K), done);
done:
    ml_free(json);
    ml_free(want);
    ml_free(nm);
    ml_h5_close(&h);
    return rc;
}

static int ml_port_write(MPI_Comm comm, const ml_options *o, const ml_port_table *t, char **adapters,
                         char **sources, char **hosts, const ml_eval_result *names) {
    ml_h5 *h = NULL;
    char *cfg = NULL, *j = NULL;
    int rc = ML_OK;
    const char *out = ml_opt_str(o, "out");
    const char *dnames[256];
    const int K = t->K < 256 ? t->K : 256;
    for (int d = 0; d < K; d++) dnames[d] = names[d].domain;
    ML_CHECK(ml_options_to_json(o, &cfg));
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_h5_create(comm, out, ML_PEFT_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
#define ML_JSON_ATTR(obj, name, items, n)                                                                              \
    do {                                                                                                               \
        ML_CHECK_GOTO(ml_list_to_json((const char *const *)(items), (n), &j), done);                                   \
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, obj, name, j), done);                                                      \
        ml_free(j);                                                                                                    \
        j = NULL;                                                                                                      \
    } while (0)
    const char *methods[] = {"lora", "ia3"};
    ML_JSON_ATTR("/", "methods", methods, 2);
    ML_JSON_ATTR("/", "conditions", ml_peft_condition_names, ML_PEFT_N_CONDITIONS);
    ML_JSON_ATTR("/", "adapters", adapters, t->A);
    ML_JSON_ATTR("/", "sources", sources, t->A);
    ML_JSON_ATTR("/", "hosts", hosts, t->H);
    ML_JSON_ATTR("/", "domains", dnames, K);
#undef ML_JSON_ATTR
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "steps", t->steps), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "results"), done);
    hsize_t r1[1] = {(hsize_t)t->n}, rk[2] = {(hsize_t)t->n, (hsize_t)t->K};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/adapter", ML_I32, 1, r1, t->adapter), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/method", ML_I32, 1, r1, t->method), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/target", ML_I32, 1, r1, t->target), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/condition", ML_I32, 1, r1, t->condition), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/seed", ML_I64, 1, r1, t->seed), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/step", ML_I64, 1, r1, t->step), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/loss", ML_F64, 2, rk, t->loss), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/accuracy", ML_F64, 2, rk, t->acc), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/train_loss", ML_F64, 1, r1, t->train_loss), done);
    hsize_t cd[2] = {(hsize_t)t->n / 2, (hsize_t)t->steps};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "results/curves", ML_F64, 2, cd, t->curves), done);
    hsize_t hd[2] = {(hsize_t)t->H, (hsize_t)t->K}, ad[2] = {(hsize_t)t->A, (hsize_t)t->K};
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "hosts"), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "hosts/loss", ML_F64, 2, hd, t->host_loss), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "hosts/accuracy", ML_F64, 2, hd, t->host_acc), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "sources"), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "sources/loss", ML_F64, 2, ad, t->src_loss), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "sources/accuracy", ML_F64, 2, ad, t->src_acc), done);
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    if (h) ml_h5_discard(&h);
    ml_free(j);
    ml_free(cfg);
    return rc;
}

/* Load every adapter and check every host's shape against it before any
 * training (so a mismatch fails at once). */
static int ml_port_check(MPI_Comm comm, char **adapters, int A, char **hosts, int H, char **sources) {
    for (int a = 0; a < A; a++) {
        ml_adapter *ad = NULL;
        ml_h5 *h = NULL;
        char *base = NULL;
        ML_CHECK(ml_adapter_load(comm, adapters[a], &ad));
        int rc = ml_h5_open(comm, adapters[a], ML_ADAPTER_FORMAT, 1, 1, &h);
        if (rc == ML_OK) rc = ml_h5_get_attr_str(h, "/", "base_model", &base);
        if (h) ml_h5_close(&h);
        if (rc == ML_OK) {
            sources[a] = base;
            base = NULL;
        }
        for (int i = 0; rc == ML_OK && i < H; i++) {
            ml_h5 *hh = NULL;
            ml_model_config mc;
            rc = ml_h5_open(comm, hosts[i], ML_CHECKPOINT_FORMAT, 1, 1, &hh);
            if (rc == ML_OK) rc = ml_model_config_load(hh, &mc);
            if (hh) ml_h5_close(&hh);
            if (rc == ML_OK) rc = ml_adapter_check_host(ad, &mc, adapters[a], hosts[i]);
        }
        ml_free(base);
        ml_adapter_destroy(&ad);
        if (rc) return rc;
    }
    return ML_OK;
}

/* All conditions and seeds of one adapter on one host. */
static int ml_port_pair(ml_peft_trainer *tr, const ml_model *host, const ml_adapter *src, ml_adapter *w, int ai,
                        int hi, ml_port_table *t, ml_eval_result *res) {
    for (int ci = 0; ci < t->C; ci++) {
        const int c = t->conds[ci];
        for (int si = 0; si < t->S; si++) {
            const uint64_t seed = (uint64_t)t->seeds[si];
            if (c == 1) {
                ml_adapter_init(w, seed);
            } else {
                memcpy(w->view.params, src->view.params, sizeof(float) * src->view.n_params);
                if (c == 2) ml_adapter_sample_like(w, seed);
            }
            ML_CHECK(ml_peft_trainer_eval(tr, host, w, res));
            ml_port_row(t, ai, src->method, hi, c, (int64_t)seed, 0, res, NAN);
            double *curve = t->curves + (size_t)(t->n / 2) * (size_t)t->steps;
            ML_CHECK(ml_peft_trainer_run(tr, host, w, seed, curve));
            ML_CHECK(ml_peft_trainer_eval(tr, host, w, res));
            ml_port_row(t, ai, src->method, hi, c, (int64_t)seed, t->steps, res, curve[t->steps - 1]);
            ml_info("lora port: adapter %d host %d %-7s seed %llu: loss %.4f -> %.4f (%s)", ai, hi,
                    ml_peft_condition_names[c], (unsigned long long)seed, t->loss[(t->n - 2) * t->K],
                    t->loss[(t->n - 1) * t->K], res[0].domain);
        }
    }
    return ML_OK;
}

static int ml_lora_port(MPI_Comm comm, const ml_options *o) {
    int rc = ML_OK, A = 0, H = 0;
    char **adapters = NULL, **hosts = NULL, **sources = NULL;
    ml_port_table t;
    memset(&t, 0, sizeof t);
    ml_peft_setup s;
    memset(&s, 0, sizeof s);
    ml_eval_result *res = NULL;
    ml_adapter *src = NULL, *w = NULL;
    ml_model *host = NULL;
    ml_peft_trainer *tr = NULL;
    rc = ml_list_split(ml_opt_str(o, "adapters"), "adapters", &adapters, &A);
    if (rc == ML_OK) rc = ml_list_split(ml_opt_str(o, "hosts"), "hosts", &hosts, &H);
    if (rc == ML_OK) rc = ml_port_conditions(ml_opt_str(o, "conditions"), &t);
    if (rc == ML_OK) rc = ml_port_seeds(ml_opt_str(o, "seeds"), &t);
    if (rc == ML_OK && !(sources = ml_calloc((size_t)A, sizeof *sources))) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_agree(comm, ml_port_check(comm, adapters, A, hosts, H, sources)), done);
    for (int a = 0; a < A; a++) {
        ML_CHECK_GOTO(ml_adapter_load(comm, adapters[a], &src), done);
        rc = ML_OK;
        if (a == 0) {
            rc = ml_peft_setup_read(o, &src->host, &s);
            t.A = A, t.H = H, t.K = s.n_eval, t.steps = s.tc.steps;
            t.R = (int64_t)A * H * t.C * t.S * 2;
            if (rc == ML_OK) rc = ml_port_table_alloc(&t);
            if (rc == ML_OK && !(res = ml_calloc((size_t)t.K, sizeof *res))) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
        }
        if (rc == ML_OK) rc = ml_adapter_create(&src->host, src->method, src->r, src->alpha, src->targets, &w);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        for (int hi = 0; hi < H; hi++) {
            /* a trainer per destination: its config (rope_theta, rms_eps, context) may differ from the origin's */
            ML_CHECK_GOTO(ml_checkpoint_load_model(comm, hosts[hi], &host), done);
            ML_CHECK_GOTO(ml_peft_trainer_create(comm, &host->cfg, src, &s.tc, &s.ec, &tr), done);
            ML_CHECK_GOTO(ml_peft_trainer_eval(tr, host, NULL, res), done);
            for (int d = 0; d < t.K; d++) {
                t.host_loss[(size_t)hi * t.K + d] = res[d].loss;
                t.host_acc[(size_t)hi * t.K + d] = res[d].accuracy;
            }
            ML_CHECK_GOTO(ml_port_pair(tr, host, src, w, a, hi, &t, res), done);
            ml_peft_trainer_destroy(&tr);
            ml_model_destroy(&host);
        }
        ML_CHECK_GOTO(ml_port_source_eval(comm, adapters[a], &t, a, res), done);
        ml_adapter_destroy(&w);
        ml_adapter_destroy(&src);
    }
    ML_CHECK_GOTO(ml_port_write(comm, o, &t, adapters, sources, hosts, res), done);
    ml_info("lora port: %lld rows (%d adapters x %d hosts x %d conditions x %d seeds x 2) written to %s",
            (long long)t.n, A, H, t.C, t.S, ml_opt_str(o, "out"));
done:
    ml_peft_trainer_destroy(&tr);
    ml_adapter_destroy(&w);
    ml_adapter_destroy(&src);
    ml_model_destroy(&host);
    ml_port_table_free(&t);
    ml_peft_setup_free(&s);
    ml_free(res);
    ml_h5_free_names(sources, A);
    ml_h5_free_names(adapters, A);
    ml_h5_free_names(hosts, H);
    return rc;
}

/* ---- lora merge / export ---------------------------------------------------------------------- */
static int ml_lora_merge(MPI_Comm comm, const ml_options *o, const char *adapter_path) {
    int rc = ML_OK;
    ml_adapter *a = NULL;
    ml_model *host = NULL, *merged = NULL;
    ml_h5 *h = NULL;
    char *base = NULL, *cfg = NULL;
    const char *out = ml_opt_str(o, "out"), *host_path = ml_opt_str(o, "host");
    ML_CHECK_GOTO(ml_adapter_load(comm, adapter_path, &a), done);
    if (!host_path || !*host_path) {
        ML_CHECK_GOTO(ml_h5_open(comm, adapter_path, ML_ADAPTER_FORMAT, 1, 1, &h), done);
        rc = ml_h5_get_attr_str(h, "/", "base_model", &base);
        ml_h5_close(&h);
        ML_CHECK_GOTO(rc, done);
        host_path = base;
    }
    ML_CHECK_GOTO(ml_checkpoint_load_model(comm, host_path, &host), done);
    rc = ml_adapter_check_host(a, &host->cfg, adapter_path, host_path);
    if (rc == ML_OK) rc = ml_model_create(&host->cfg, &merged);
    if (rc == ML_OK) rc = ml_options_to_json(o, &cfg);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_adapter_apply(a, host, merged, 1);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_h5_create(comm, out, ML_CHECKPOINT_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_model_config_save(h, &merged->cfg), done);
    ML_CHECK_GOTO(ml_model_save_params(h, merged), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "parent", host_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "adapter", adapter_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("lora merge: %s + %s -> %s", host_path, adapter_path, out);
done:
    if (h) ml_h5_discard(&h);
    ml_free(base);
    ml_free(cfg);
    ml_adapter_destroy(&a);
    ml_model_destroy(&host);
    ml_model_destroy(&merged);
    return rc;
}

int ml_cmd_lora(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, rank, help = 0, npos = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL;
    const char *sub = argc > 1 ? argv[1] : "";
    const ml_option_spec *specs = !strcmp(sub, "train")   ? ml_lora_train_opts
                                  : !strcmp(sub, "port")  ? ml_lora_port_opts
                                  : !strcmp(sub, "merge") ? ml_lora_merge_opts
                                  : !strcmp(sub, "export") ? ml_lora_export_opts
                                                          : NULL;
    if (!specs) {
        if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !*sub) {
            if (rank == 0) fputs(ml_lora_usage, stdout);
            return ml_agree(comm, *sub ? ML_OK
                                       : ML_FAIL(ML_ERR_ARG, "lora: expected a subcommand: train, port, merge or export"));
        }
        return ml_agree(comm, ML_FAIL(ML_ERR_ARG, "lora: unknown subcommand '%s' (expected train, port, merge or export)",
                                      sub));
    }
    char section[32];
    snprintf(section, sizeof section, "lora_%s", sub);
    const int want_pos = !strcmp(sub, "merge") ? 1 : !strcmp(sub, "export") ? 2 : 0;
    ML_CHECK(ml_agree(comm, ml_options_parse_command(comm, section, ml_lora_usage, specs, argc - 1, argv + 1, &o,
                                                     &npos, &pos, &help)));
    if (help) goto done;
    if (npos != want_pos)
        ML_CHECK_GOTO(ml_agree(comm, ML_FAIL(ML_ERR_ARG, "lora %s: expected %d positional argument%s, got %d (%s)", sub,
                                             want_pos, want_pos == 1 ? "" : "s", npos,
                                             want_pos == 2 ? "lora export ADAPTER.h5 DIR"
                                             : want_pos   ? "lora merge ADAPTER.h5 --out M.h5"
                                                          : "options only")),
                      done);
    if (!strcmp(sub, "train")) rc = ml_lora_train(comm, o);
    else if (!strcmp(sub, "port")) rc = ml_lora_port(comm, o);
    else if (!strcmp(sub, "merge")) rc = ml_lora_merge(comm, o, pos[0]);
    else rc = ml_agree(comm, rank == 0 ? ml_adapter_export_peft(pos[0], pos[1]) : ML_OK);
done:
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
