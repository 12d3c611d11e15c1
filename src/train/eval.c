/* Evaluation: per-domain loss and next-token accuracy over windows of a
 * split, `mergelens eval`, and reading a checkpoint's model.
 *
 * Windows are the loader's: window k of a split of N tokens covers tokens
 * [k T, k T + T + 1), k < W = (N - 1) / T. A domain evaluates n of its W
 * windows (n = W, or max_batches x G when that is smaller): in random order
 * (the default) the first n of a seeded Fisher-Yates permutation of [0, W)
 * (uniform, without replacement; the permutation's seed is the config's seed
 * and its stream a hash of the store's `domain` name, so every model and
 * every command evaluated with one seed sees the same windows of a domain,
 * and the windows of a smaller n are a subset of those of a larger one),
 * sorted ascending; in sequential order windows 0 .. n-1. Slot g of the list
 * is read in step g / G by rank (g mod G) / B, so the windows do not depend
 * on the rank count.
 *
 * Dimension letters: G windows per evaluation step (all ranks), B rows per
 * rank (G / P), M rows per forward pass, T context, K domains, W windows of a
 * domain's split, n windows evaluated. */
#include "train_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ml_evaluator {
    MPI_Comm comm;
    int rank, nranks;
    int K, T, G, B, M;
    ml_model_config mc;
    ml_loader **ld;      /* (K) sequential loaders over this rank alone, global batch 1: seek(k) reads window k */
    int64_t **wins;      /* (K) (n) window indices evaluated, ascending */
    int64_t *steps;      /* (K) evaluation steps per domain */
    int64_t *n_windows;  /* (K) windows evaluated per domain (n) */
    int64_t *available;  /* (K) windows of the split (W) */
    char (*names)[64];   /* (K) */
    ml_workspace *ws;
    int own_ws;
    int32_t *win;        /* (B, T+1) */
    int32_t *tok, *tgt;  /* (M, T) */
    double *sums;        /* (K, 3): loss sum, targets, correct */
};

void ml_evaluator_destroy(ml_evaluator **evp) {
    if (!evp || !*evp) return;
    ml_evaluator *ev = *evp;
    for (int d = 0; ev->ld && d < ev->K; d++) ml_loader_destroy(&ev->ld[d]);
    for (int d = 0; ev->wins && d < ev->K; d++) ml_free(ev->wins[d]);
    ml_free(ev->ld);
    ml_free(ev->wins);
    ml_free(ev->steps);
    ml_free(ev->n_windows);
    ml_free(ev->available);
    ml_free(ev->names);
    if (ev->own_ws) ml_workspace_destroy(&ev->ws);
    ml_free(ev->win);
    ml_free(ev->tok);
    ml_free(ev->tgt);
    ml_free(ev->sums);
    ml_free(ev);
    *evp = NULL;
}

int ml_evaluator_n_domains(const ml_evaluator *ev) { return ev->K; }

static int ml_cmp_i64(const void *x, const void *y) {
    const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static uint64_t ml_eval_domain_stream(const char *domain) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 of the name */
    for (const unsigned char *c = (const unsigned char *)domain; *c; c++) h = (h ^ *c) * 0x100000001b3ULL;
    return h ^ 0x6576616c77696eULL; /* "evalwin" */
}

int ml_eval_windows_choose(int64_t W, int64_t n, int sequential, uint64_t seed, const char *domain, int64_t *out) {
    if (n < 0 || n > W) return ML_FAIL(ML_ERR_ARG, "eval: %lld windows asked of %lld", (long long)n, (long long)W);
    if (sequential || n == W) {
        for (int64_t i = 0; i < n; i++) out[i] = i;
        return ML_OK;
    }
    int64_t *perm = ml_malloc(sizeof *perm * (size_t)W);
    if (!perm) return ML_FAIL(ML_ERR_NOMEM, "eval: out of memory for a permutation of %lld windows", (long long)W);
    ml_rng rng;
    ml_rng_seed(&rng, seed, ml_eval_domain_stream(domain));
    for (int64_t i = 0; i < W; i++) perm[i] = i;
    for (int64_t i = 0; i < n; i++) {
        int64_t j = i + (int64_t)ml_rng_below(&rng, (uint64_t)(W - i)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        out[i] = perm[i];
    }
    ml_free(perm);
    /* ascending: the reads walk the file forward */
    qsort(out, (size_t)n, sizeof *out, ml_cmp_i64);
    return ML_OK;
}

int ml_evaluator_create(MPI_Comm comm, const ml_model_config *mc, const ml_eval_config *cfg, ml_workspace *ws,
                        ml_evaluator **out) {
    int rc = ML_OK;
    *out = NULL;
    ml_evaluator *ev = ml_calloc(1, sizeof *ev);
    if (!ev) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ev->comm = comm;
    MPI_Comm_rank(comm, &ev->rank);
    MPI_Comm_size(comm, &ev->nranks);
    ev->mc = *mc;
    ev->K = cfg->n_domains;
    ev->T = cfg->T;
    ev->G = cfg->batch > 0 ? cfg->batch : 8 * ev->nranks;
    const char *split = cfg->split ? cfg->split : "val";
    if (ev->K < 1) ML_FAIL_GOTO(fail, ML_ERR_ARG, "eval: no domains given");
    if (ev->T < 1 || ev->T > mc->max_context)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "eval: context %d must lie in [1, %d] (the model's max_position_embeddings)",
                     ev->T, mc->max_context);
    if (ev->G % ev->nranks)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "eval: batch %d is not a multiple of the %d ranks", ev->G, ev->nranks);
    ev->B = ev->G / ev->nranks;
    ev->M = cfg->micro_batch > 0 && cfg->micro_batch < ev->B ? cfg->micro_batch : ev->B;
    if (ws && cfg->micro_batch <= 0)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "eval: a shared workspace needs micro_batch <= its B_max");
    ev->ld = ml_calloc((size_t)ev->K, sizeof *ev->ld);
    ev->wins = ml_calloc((size_t)ev->K, sizeof *ev->wins);
    ev->steps = ml_calloc((size_t)ev->K, sizeof *ev->steps);
    ev->n_windows = ml_calloc((size_t)ev->K, sizeof *ev->n_windows);
    ev->available = ml_calloc((size_t)ev->K, sizeof *ev->available);
    ev->names = ml_calloc((size_t)ev->K, sizeof *ev->names);
    ev->win = ml_malloc(sizeof(int32_t) * (size_t)ev->B * (size_t)(ev->T + 1));
    ev->tok = ml_malloc(sizeof(int32_t) * (size_t)ev->M * (size_t)ev->T);
    ev->tgt = ml_malloc(sizeof(int32_t) * (size_t)ev->M * (size_t)ev->T);
    ev->sums = ml_calloc((size_t)ev->K * 3, sizeof(double));
    rc = (!ev->ld || !ev->wins || !ev->steps || !ev->n_windows || !ev->available || !ev->names || !ev->win ||
          !ev->tok || !ev->tgt || !ev->sums)
             ? ML_FAIL(ML_ERR_NOMEM, "eval: out of memory for %d domains, batch %d x %d", ev->K, ev->B, ev->T + 1)
             : ML_OK;
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    for (int d = 0; d < ev->K; d++) {
        ml_store_info info;
        ML_CHECK_GOTO(ml_store_info_read(comm, cfg->paths[d], &info), fail);
        if (info.vocab_size != mc->vocab_size)
            ML_FAIL_GOTO(fail, ML_ERR_SHAPE,
                         "vocab mismatch: %s holds tokens of a %lld-token vocabulary but the model has vocab_size %d "
                         "(tokens from a different tokenizer?)",
                         cfg->paths[d], (long long)info.vocab_size, mc->vocab_size);
        memcpy(ev->names[d], info.name, sizeof ev->names[d]);
        ml_loader_config lc = {.n_domains = 1, .paths = &cfg->paths[d], .weights = NULL, .split = split,
                               .global_batch = 1, .T = ev->T, .seed = 0, .sequential = 1};
        rc = ml_agree(comm, ml_loader_create(MPI_COMM_SELF, &lc, &ev->ld[d]));
        if (rc != ML_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ml_error_message());
            ML_FAIL_GOTO(fail, rc, "%s: cannot evaluate on split '%s': %s", cfg->paths[d], split, msg);
        }
        const int64_t W = ml_loader_domain_windows(ev->ld[d], 0);
        int64_t n = W;
        if (cfg->max_batches > 0 && cfg->max_batches < (W + ev->G - 1) / ev->G) n = cfg->max_batches * ev->G;
        ev->available[d] = W;
        ev->n_windows[d] = n;
        ev->steps[d] = (n + ev->G - 1) / ev->G;
        ev->wins[d] = ml_malloc(sizeof **ev->wins * (size_t)(n > 0 ? n : 1));
        rc = ev->wins[d] ? ml_eval_windows_choose(W, n, cfg->sequential, cfg->seed, ev->names[d], ev->wins[d])
                         : ML_FAIL(ML_ERR_NOMEM, "eval: out of memory for %lld windows", (long long)n);
        ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    }
    if (ws) {
        ev->ws = ws;
    } else {
        ml_workspace_config wc = {.B_max = ev->M, .T_max = ev->T, .grad = 0};
        rc = ml_workspace_create(mc, &wc, &ev->ws);
        ev->own_ws = 1;
        ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    }
    *out = ev;
    return ML_OK;
fail:
    ml_evaluator_destroy(&ev);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

/* Local part: the loss / target / correct sums of this rank's rows. */
static int ml_eval_local(ml_evaluator *ev, const ml_model *m) {
    const int T = ev->T;
    memset(ev->sums, 0, sizeof(double) * 3 * (size_t)ev->K);
    for (int d = 0; d < ev->K; d++) {
        for (int64_t s = 0; s < ev->steps[d]; s++) {
            const int64_t g0 = s * ev->G + (int64_t)ev->rank * ev->B;
            int nrows = 0;
            for (int64_t g = g0; g < g0 + ev->B && g < ev->n_windows[d]; g++, nrows++) {
                int one = 0;
                ML_CHECK(ml_loader_seek(ev->ld[d], ev->wins[d][g]));
                ML_CHECK(ml_loader_next(ev->ld[d], ev->win + (size_t)nrows * (T + 1), &one, NULL));
                if (one != 1)
                    return ML_FAIL(ML_ERR_INTERNAL, "eval: window %lld of domain %s could not be read",
                                   (long long)ev->wins[d][g], ev->names[d]);
            }
            for (int r0 = 0; r0 < nrows; r0 += ev->M) {
                const int n = nrows - r0 < ev->M ? nrows - r0 : ev->M;
                ml_windows_split(ev->win + (size_t)r0 * (T + 1), n, T, ev->tok, ev->tgt);
                ml_lm_stats st;
                ML_CHECK(ml_model_forward(m, ev->ws, ev->tok, ev->tgt, n, T, &st));
                ev->sums[3 * d] += st.loss_sum;
                ev->sums[3 * d + 1] += (double)st.n_targets;
                ev->sums[3 * d + 2] += (double)st.n_correct;
            }
        }
    }
    return ML_OK;
}

int ml_evaluator_run(ml_evaluator *ev, const ml_model *m, ml_eval_result *results) {
    int rc = ML_OK;
    if (memcmp(&m->cfg, &ev->mc, sizeof m->cfg) != 0)
        return ML_FAIL(ML_ERR_ARG, "eval: the model's config differs from the evaluator's");
    ml_prof_begin("train.eval");
    rc = ml_eval_local(ev, m);
    ML_CHECK_GOTO(ml_agree(ev->comm, rc), done);
    if (MPI_Allreduce(MPI_IN_PLACE, ev->sums, 3 * ev->K, MPI_DOUBLE, MPI_SUM, ev->comm) != MPI_SUCCESS)
        ML_FAIL_GOTO(done, ML_ERR_MPI, "eval: MPI_Allreduce of the loss sums failed");
    for (int d = 0; d < ev->K; d++) {
        ml_eval_result *r = &results[d];
        memcpy(r->domain, ev->names[d], sizeof r->domain);
        r->n_targets = (int64_t)ev->sums[3 * d + 1];
        r->n_windows = ev->n_windows[d];
        r->n_available = ev->available[d];
        r->loss = r->n_targets > 0 ? ev->sums[3 * d] / (double)r->n_targets : NAN;
        r->accuracy = r->n_targets > 0 ? ev->sums[3 * d + 2] / (double)r->n_targets : NAN;
    }
done:;
    double tokens = 0;
    for (int d = 0; d < ev->K; d++) tokens += (double)ev->n_windows[d] * ev->T;
    ml_prof_end("train.eval", tokens * 2.0 * (double)ml_model_n_params(&ev->mc) / ev->nranks, 0);
    return rc;
}

int ml_eval_model(MPI_Comm comm, const ml_model *m, const ml_eval_config *cfg, ml_eval_result *results) {
    ml_evaluator *ev = NULL;
    ML_CHECK(ml_evaluator_create(comm, &m->cfg, cfg, NULL, &ev));
    int rc = ml_evaluator_run(ev, m, results);
    ml_evaluator_destroy(&ev);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

/* ---- checkpoints ------------------------------------------------------------------ */
/* Read the model of an open checkpoint. */
static int ml_ckpt_model(ml_h5 *h, ml_model **out) {
    ml_model_config mc;
    *out = NULL;
    ML_CHECK(ml_model_config_load(h, &mc));
    ML_CHECK(ml_model_create(&mc, out));
    int rc = ml_model_load_params(h, *out);
    if (rc != ML_OK) {
        ml_model_destroy(out);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    return ML_OK;
}

int ml_checkpoint_load_model(MPI_Comm comm, const char *path, ml_model **out) {
    ml_h5 *h = NULL;
    *out = NULL;
    ML_CHECK(ml_h5_open(comm, path, ML_CHECKPOINT_FORMAT, 1, 1, &h));
    int rc = ml_ckpt_model(h, out);
    ml_h5_close(&h);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

int ml_eval_context(int requested, int trained, const ml_model_config *mc) {
    if (requested > 0) return requested;
    if (trained > 0) return trained;
    return mc->max_context < 256 ? mc->max_context : 256;
}

ml_eval_config ml_eval_point_config(int n_domains, const char *const *paths, const char *split, int T, int batch,
                                    int micro_batch, int64_t eval_windows, const char *eval_order,
                                    int64_t eval_seed) {
    return (ml_eval_config){.n_domains = n_domains,
                            .paths = paths,
                            .split = split,
                            .T = T,
                            .batch = batch,
                            .micro_batch = micro_batch,
                            .max_batches = eval_windows > 0 && batch > 0 ? (eval_windows + batch - 1) / batch : 0,
                            .sequential = eval_order && !strcmp(eval_order, "sequential"),
                            .seed = (uint64_t)eval_seed};
}

int ml_checkpoint_train_context(ml_h5 *h) {
    char *cfg = NULL;
    int T = 0;
    if (ml_h5_get_attr_str(h, "/", "config", &cfg) != ML_OK) {
        ml_error_clear();
        return 0;
    }
    json_t *j = json_loads(cfg, 0, NULL);
    json_t *c = j ? json_object_get(j, "context") : NULL;
    if (c && json_is_integer(c)) T = (int)json_integer_value(c);
    json_decref(j);
    ml_free(cfg);
    return T;
}

/* ---- `mergelens eval` ----------------------------------------------------------------- */
static const ml_option_spec ml_eval_opts[] = {
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated token stores data/<domain>.h5"},
    {"split", ML_OPT_CHOICE, "val", 0, -1, "val|train", "split of each store to evaluate on"},
    {"context", ML_OPT_INT, "0", 0, 1 << 20, NULL,
     "window length T (0 = the context the model was trained with, else min(max_position_embeddings, 256))"},
    {"batch", ML_OPT_INT, "0", 0, 1 << 20, NULL, "windows per step over all ranks (0 = 8 per rank)"},
    {"micro_batch", ML_OPT_INT, "0", 0, 1 << 20, NULL, "rows per forward pass on a rank (0 = batch / ranks)"},
    {"max_batches", ML_OPT_INT, "0", 0, 1e15, NULL, "at most this many steps per domain (0 = the whole split)"},
    ML_EVAL_WINDOW_OPTIONS,
    {"out", ML_OPT_STRING, "", 0, -1, NULL, "write the results to this HDF5 file (format mergelens.eval)"},
    ML_OPT_END,
};

static int ml_eval_write(MPI_Comm comm, const char *path, const char *model, const ml_options *o,
                         const ml_eval_result *r, int K, const char *const *paths, int T) {
    ml_h5 *h = NULL;
    char *cfg = NULL, *names_json = NULL, *paths_json = NULL;
    const char **names = NULL;
    double *buf = NULL;
    int64_t *ibuf = NULL;
    int rc = ML_OK;
    names = ml_malloc(sizeof *names * (size_t)K);
    buf = ml_malloc(sizeof *buf * (size_t)K);
    ibuf = ml_malloc(sizeof *ibuf * (size_t)K);
    rc = !names || !buf || !ibuf ? ML_FAIL(ML_ERR_NOMEM, "eval: out of memory") : ML_OK;
    for (int d = 0; rc == ML_OK && d < K; d++) names[d] = r[d].domain;
    if (rc == ML_OK) rc = ml_options_to_json(o, &cfg);
    if (rc == ML_OK) rc = ml_list_to_json(names, K, &names_json);
    if (rc == ML_OK) rc = ml_list_to_json(paths, K, &paths_json);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, path), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, "mergelens.eval", 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "model", model), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domains", names_json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "paths", paths_json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "split", ml_opt_str(o, "split")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", T), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "eval_order", ml_opt_str(o, "eval_order")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "eval_seed", ml_opt_int(o, "eval_seed")), done);
    hsize_t dims[1] = {(hsize_t)K};
    for (int d = 0; d < K; d++) buf[d] = r[d].loss;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "loss", ML_F64, 1, dims, buf), done);
    for (int d = 0; d < K; d++) buf[d] = r[d].accuracy;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "accuracy", ML_F64, 1, dims, buf), done);
    for (int d = 0; d < K; d++) ibuf[d] = r[d].n_targets;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "n_targets", ML_I64, 1, dims, ibuf), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "n_tokens", ML_I64, 1, dims, ibuf), done); /* = n_targets */
    for (int d = 0; d < K; d++) ibuf[d] = r[d].n_windows;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "n_windows", ML_I64, 1, dims, ibuf), done);
    for (int d = 0; d < K; d++) ibuf[d] = r[d].n_available;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "windows_available", ML_I64, 1, dims, ibuf), done);
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    if (h) ml_h5_discard(&h);
    ml_free(cfg);
    ml_free(names_json);
    ml_free(paths_json);
    ml_free(names);
    ml_free(buf);
    ml_free(ibuf);
    return rc;
}

int ml_cmd_eval(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, npos = 0, help = 0, K = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL, **paths = NULL;
    ml_model *m = NULL;
    ml_h5 *h = NULL;
    ml_eval_result *res = NULL;
    ML_AGREE_GOTO(comm, ml_options_parse_command(comm, "eval",
                                      "usage: mergelens eval MODEL.h5 --domains a.h5,b.h5 [--out results.h5] "
                                      "[options]\n\n"
                                      "Per-domain loss (nats per token) and next-token accuracy of a checkpoint "
                                      "over the windows of each store's validation split: all of them, or with "
                                      "--max_batches N at most N x batch windows drawn at random (seeded by "
                                      "--eval_seed, the same windows for every model) or, with --eval_order "
                                      "sequential, the first ones.",
                                      ml_eval_opts, argc, argv, &o, &npos, &pos, &help), done);
    if (help) goto done;
    if (npos != 1)
        ML_AGREE_GOTO(comm,
                      ML_FAIL(ML_ERR_ARG, "eval: expected one model checkpoint, got %d arguments (usage: mergelens "
                              "eval MODEL.h5 --domains a.h5,b.h5)", npos),
                      done);
    ML_AGREE_GOTO(comm, ml_list_split(ml_opt_str(o, "domains"), "domains", &paths, &K), done);
    ML_AGREE_GOTO(comm, ml_h5_open(comm, pos[0], ML_CHECKPOINT_FORMAT, 1, 1, &h), done);
    ML_AGREE_GOTO(comm, ml_ckpt_model(h, &m), done);
    const int trained_T = ml_checkpoint_train_context(h);
    int T = ml_eval_context((int)ml_opt_int(o, "context"), trained_T, &m->cfg);
    if (ml_opt_int(o, "context") == 0 && trained_T == 0)
        ml_info("eval: %s does not record its training context; windows of T = %d (set --context)", pos[0], T);
    ml_h5_close(&h);
    res = ml_calloc((size_t)K, sizeof *res);
    ML_AGREE_GOTO(comm, res ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "out of memory"), done);
    ml_eval_config ec = {.n_domains = K,
                         .paths = (const char *const *)paths,
                         .split = ml_opt_str(o, "split"),
                         .T = T,
                         .batch = (int)ml_opt_int(o, "batch"),
                         .micro_batch = (int)ml_opt_int(o, "micro_batch"),
                         .max_batches = ml_opt_int(o, "max_batches"),
                         .sequential = !strcmp(ml_opt_str(o, "eval_order"), "sequential"),
                         .seed = (uint64_t)ml_opt_int(o, "eval_seed")};
    double t0 = ml_wtime();
    ML_AGREE_GOTO(comm, ml_eval_model(comm, m, &ec, res), done);
    if (rank == 0) {
        printf("%-20s %10s %10s %12s %16s\n", "domain", "loss", "accuracy", "tokens", "windows");
        for (int d = 0; d < K; d++) {
            char w[48];
            snprintf(w, sizeof w, "%lld/%lld", (long long)res[d].n_windows, (long long)res[d].n_available);
            printf("%-20s %10.4f %10.4f %12lld %16s\n", res[d].domain, res[d].loss, res[d].accuracy,
                   (long long)res[d].n_targets, w);
        }
        fflush(stdout);
    }
    ml_info("eval: %s on %d domain%s (T = %d) in %.1f s", pos[0], K, K > 1 ? "s" : "", T, ml_wtime() - t0);
    const char *out = ml_opt_str(o, "out");
    if (out && *out) ML_AGREE_GOTO(comm, ml_eval_write(comm, out, pos[0], o, res, K, (const char *const *)paths, T), done);
done:
    if (h) ml_h5_close(&h);
    ml_free(res);
    ml_model_destroy(&m);
    ml_list_free(paths, K);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
