/* Evaluation: per-domain loss and next-token accuracy over the windows of a
 * split (the loader's sequential mode, so every rank count sees the same
 * windows), `mergelens eval`, and reading a checkpoint's model.
 *
 * Dimension letters: G windows per evaluation step (all ranks), B rows per
 * rank (G / P), M rows per forward pass, T context, K domains. */
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
    ml_loader **ld;      /* (K) sequential loaders */
    int64_t *steps;      /* (K) evaluation steps per domain */
    int64_t *n_windows;  /* (K) windows evaluated per domain */
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
    ml_free(ev->ld);
    ml_free(ev->steps);
    ml_free(ev->n_windows);
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
    ev->steps = ml_calloc((size_t)ev->K, sizeof *ev->steps);
    ev->n_windows = ml_calloc((size_t)ev->K, sizeof *ev->n_windows);
    ev->names = ml_calloc((size_t)ev->K, sizeof *ev->names);
    ev->win = ml_malloc(sizeof(int32_t) * (size_t)ev->B * (size_t)(ev->T + 1));
    ev->tok = ml_malloc(sizeof(int32_t) * (size_t)ev->M * (size_t)ev->T);
    ev->tgt = ml_malloc(sizeof(int32_t) * (size_t)ev->M * (size_t)ev->T);
    ev->sums = ml_calloc((size_t)ev->K * 3, sizeof(double));
    rc = (!ev->ld || !ev->steps || !ev->n_windows || !ev->names || !ev->win || !ev->tok || !ev->tgt || !ev->sums)
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
                               .global_batch = ev->G, .T = ev->T, .seed = 0, .sequential = 1};
        rc = ml_loader_create(comm, &lc, &ev->ld[d]);
        if (rc != ML_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ml_error_message());
            ML_FAIL_GOTO(fail, rc, "%s: cannot evaluate on split '%s': %s", cfg->paths[d], split, msg);
        }
        int64_t W = ml_loader_domain_windows(ev->ld[d], 0);
        ev->steps[d] = (W + ev->G - 1) / ev->G;
        if (cfg->max_batches > 0 && ev->steps[d] > cfg->max_batches) ev->steps[d] = cfg->max_batches;
        ev->n_windows[d] = ev->steps[d] * ev->G < W ? ev->steps[d] * ev->G : W;
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
        ML_CHECK(ml_loader_seek(ev->ld[d], 0));
        for (int64_t s = 0; s < ev->steps[d]; s++) {
            int nrows = 0;
            ML_CHECK(ml_loader_next(ev->ld[d], ev->win, &nrows, NULL));
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
                                    int micro_batch, int64_t eval_windows) {
    return (ml_eval_config){.n_domains = n_domains,
                            .paths = paths,
                            .split = split,
                            .T = T,
                            .batch = batch,
                            .micro_batch = micro_batch,
                            .max_batches = eval_windows > 0 && batch > 0 ? (eval_windows + batch - 1) / batch : 0};
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
    ML_CHECK_GOTO(ml_h5_create(comm, path, "mergelens.eval", 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "model", model), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domains", names_json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "paths", paths_json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "split", ml_opt_str(o, "split")), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", T), done);
    hsize_t dims[1] = {(hsize_t)K};
    for (int d = 0; d < K; d++) buf[d] = r[d].loss;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "loss", ML_F64, 1, dims, buf), done);
    for (int d = 0; d < K; d++) buf[d] = r[d].accuracy;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "accuracy", ML_F64, 1, dims, buf), done);
    for (int d = 0; d < K; d++) ibuf[d] = r[d].n_targets;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "n_targets", ML_I64, 1, dims, ibuf), done);
    for (int d = 0; d < K; d++) ibuf[d] = r[d].n_windows;
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "n_windows", ML_I64, 1, dims, ibuf), done);
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
                                      "over every window of each store's validation split.",
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
                         .max_batches = ml_opt_int(o, "max_batches")};
    double t0 = ml_wtime();
    ML_AGREE_GOTO(comm, ml_eval_model(comm, m, &ec, res), done);
    if (rank == 0) {
        printf("%-20s %10s %10s %12s\n", "domain", "loss", "accuracy", "targets");
        for (int d = 0; d < K; d++)
            printf("%-20s %10.4f %10.4f %12lld\n", res[d].domain, res[d].loss, res[d].accuracy,
                   (long long)res[d].n_targets);
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
