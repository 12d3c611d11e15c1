/* `mergelens train`: data-parallel training and fine-tuning.
 *
 * One optimizer step: every rank takes its B = G / P rows of the global batch
 * from the loader and runs forward + backward over them in micro-batches of M
 * rows, accumulating d(sum of per-token cross-entropy) / (G T) into the flat
 * gradient buffer; a small MPI_Allreduce sums the loss, per-domain token
 * counts and the failure / signal flags, then ONE MPI_Allreduce sums the
 * gradient buffer, so every rank holds the gradient of the global mean loss.
 * Then global-norm clipping, the schedule's learning rate and AdamW, identical
 * on every rank. Metrics go to the log tables and the progress display; the
 * checkpoint is written every checkpoint_every steps (complete = 0) and at the
 * end (complete = 1).
 *
 * Dimension letters: see train_internal.h. */
#include "train_internal.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static const ml_option_spec ml_train_opts[] = {
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output checkpoint models/<name>.h5 (periodic checkpoints go there too)"},
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated token stores data/<domain>.h5"},
    {"weights", ML_OPT_STRING, "", 0, -1, NULL,
     "comma-separated mixture weights, one per domain (default: proportional to the domains' windows)"},
    {"subset", ML_OPT_STRING, "0/1", 0, -1, NULL,
     "I/N: train only on slice I (0-based) of N disjoint contiguous slices of each domain's train split "
     "(epochs count passes over the slice; evaluation uses the whole val split)"},
    {"init_from", ML_OPT_STRING, "", 0, -1, NULL,
     "checkpoint to fine-tune: its shape and parameters, a fresh optimizer; recorded as `parent`"},
    {"d_model", ML_OPT_INT, "512", 1, 1 << 16, NULL, "hidden size D (with init_from: the parent's unless given)"},
    {"d_mlp", ML_OPT_INT, "1024", 1, 1 << 20, NULL, "MLP width F"},
    {"n_heads", ML_OPT_INT, "16", 1, 4096, NULL, "query heads H (head_dim = d_model / n_heads)"},
    {"n_kv_heads", ML_OPT_INT, "8", 1, 4096, NULL, "key/value heads (divides n_heads)"},
    {"n_layers", ML_OPT_INT, "1", 1, 64, NULL, "decoder layers"},
    {"rope_theta", ML_OPT_FLOAT, "10000", 1, 1e12, NULL, "RoPE base"},
    {"rms_eps", ML_OPT_FLOAT, "1e-6", 1e-12, 1, NULL, "RMSNorm epsilon"},
    {"init_std", ML_OPT_FLOAT, "0.02", 0, 10, NULL, "std of the normal initialisation of matrices"},
    {"context", ML_OPT_INT, "256", 1, 1 << 20, NULL, "training window length T (tokens per row)"},
    {"global_batch", ML_OPT_INT, "64", 1, 1 << 24, NULL, "windows per optimizer step over all ranks (multiple of ranks)"},
    {"micro_batch", ML_OPT_INT, "0", 0, 1 << 24, NULL,
     "rows per forward/backward pass on a rank; smaller than global_batch/ranks means gradient accumulation "
     "(0 = global_batch/ranks)"},
    {"steps", ML_OPT_INT, "0", 0, 1e15, NULL, "optimizer steps (0 = from epochs)"},
    {"epochs", ML_OPT_FLOAT, "1", 0, 1e9, NULL,
     "passes over the training windows of the domains with weight > 0 (used when steps = 0)"},
    {"lr", ML_OPT_FLOAT, "6e-4", 0, 10, NULL, "peak learning rate"},
    {"warmup", ML_OPT_INT, "0", 0, 1e15, NULL, "linear warmup steps (from lr 0)"},
    {"schedule", ML_OPT_CHOICE, "cosine", 0, -1, "cosine|linear|constant", "decay after warmup (to 0 at the end)"},
    {"weight_decay", ML_OPT_FLOAT, "0.1", 0, 10, NULL, "AdamW decoupled weight decay (matrices only)"},
    {"betas", ML_OPT_STRING, "0.9,0.999", 0, -1, NULL, "AdamW beta1,beta2"},
    {"eps", ML_OPT_FLOAT, "1e-8", 0, 1, NULL, "AdamW epsilon"},
    {"clip", ML_OPT_FLOAT, "1.0", 0, 1e9, NULL, "clip the global gradient norm to this value (0 = no clipping)"},
    {"seed", ML_OPT_INT, "42", 0, 9.007199254740992e15, NULL, "seed of the initialisation and the data order"},
    {"eval", ML_OPT_BOOL, "true", 0, -1, NULL, "evaluate on each domain's val split (eval_every and at the end)"},
    {"eval_every", ML_OPT_INT, "0", 0, 1e15, NULL, "evaluate every this many steps (0 = only at the end)"},
    {"eval_batches", ML_OPT_INT, "0", 0, 1e15, NULL, "evaluation steps per domain (0 = the whole val split)"},
    {"eval_batch", ML_OPT_INT, "0", 0, 1 << 24, NULL, "windows per evaluation step over all ranks (0 = global_batch)"},
    ML_EVAL_WINDOW_OPTIONS,
    {"checkpoint_every", ML_OPT_INT, "500", 0, 1e15, NULL, "write the checkpoint every this many steps (0 = only at the end)"},
    {"resume", ML_OPT_BOOL, "true", 0, -1, NULL, "continue from --out when it holds an incomplete checkpoint"},
    {"stop_after", ML_OPT_INT, "0", 0, 1e15, NULL,
     "testing: stop after this step without a final checkpoint, as if the job were killed"},
    {"raise_at", ML_OPT_INT, "0", 0, 1e15, NULL, "testing: the last rank raises SIGUSR1 just before this step"},
    ML_OPT_END,
};

static const char ml_train_usage[] =
    "usage: mergelens train --domains data/a.h5,data/b.h5 --out models/NAME.h5 [options]\n\n"
    "Train (or, with --init_from, fine-tune) a Mistral-style language model with data parallelism over the MPI\n"
    "ranks. Rerunning an interrupted command continues from its checkpoint; SIGTERM / SIGUSR1 make every rank\n"
    "write a checkpoint at the next step and stop.";

/* ---- setup --------------------------------------------------------------------------- */
static void ml_trainer_free(ml_trainer *tr) {
    ml_evaluator_destroy(&tr->eval);
    ml_loader_destroy(&tr->loader);
    ml_workspace_destroy(&tr->ws);
    ml_adamw_destroy(&tr->opt_state);
    ml_model_destroy(&tr->model);
    ml_train_logs_free(tr);
    ml_free(tr->eval_res);
    ml_free(tr->windows);
    ml_free(tr->tokens);
    ml_free(tr->targets);
    ml_free(tr->dom_ids);
    ml_free(tr->red);
    ml_free(tr->dom_tokens);
    ml_free(tr->info);
    ml_free(tr->weights);
    ml_list_free(tr->paths, tr->K);
    ml_free(tr->config_json);
}

/* "I/N" with 0 <= I < N: the data subset of option `subset`. */
static int ml_parse_subset(const char *text, int *index, int *count) {
    char *end = NULL;
    const char *p = text ? text : "";
    long long i = -1, n = -1;
    if (*p >= '0' && *p <= '9') i = strtoll(p, &end, 10);
    if (end && *end == '/' && end[1] >= '0' && end[1] <= '9') n = strtoll(end + 1, &end, 10);
    if (i < 0 || n < 0 || !end || *end)
        return ML_FAIL(ML_ERR_CONFIG, "option 'subset': '%s' is not I/N (slice I of N, e.g. 1/4)", p);
    if (n < 1 || n > INT_MAX || i >= n)
        return ML_FAIL(ML_ERR_CONFIG, "option 'subset': '%s' needs 0 <= I < N (slices are numbered from 0)", p);
    *index = (int)i;
    *count = (int)n;
    return ML_OK;
}

/* Domains, weights, subset and what the stores say about themselves. */
static int ml_setup_data(ml_trainer *tr) {
    const ml_options *o = tr->opt;
    ML_CHECK(ml_parse_subset(ml_opt_str(o, "subset"), &tr->subset_index, &tr->subset_count));
    ML_CHECK(ml_list_split(ml_opt_str(o, "domains"), "domains", &tr->paths, &tr->K));
    tr->info = ml_calloc((size_t)tr->K, sizeof *tr->info);
    tr->dom_tokens = ml_calloc((size_t)tr->K, sizeof *tr->dom_tokens);
    if (!tr->info || !tr->dom_tokens) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    const char *w = ml_opt_str(o, "weights");
    if (w && *w) {
        ML_ALLOC(tr->weights, tr->K);
        ML_CHECK(ml_list_parse_numbers(w, "weights", tr->weights, tr->K));
        double sum = 0;
        for (int d = 0; d < tr->K; d++) {
            if (tr->weights[d] < 0)
                return ML_FAIL(ML_ERR_CONFIG, "option 'weights': weight %g of %s is negative", tr->weights[d],
                               tr->paths[d]);
            sum += tr->weights[d];
        }
        if (!(sum > 0)) return ML_FAIL(ML_ERR_CONFIG, "option 'weights': all weights are zero");
        for (int d = 0; d < tr->K; d++) tr->weights[d] /= sum;
    }
    return ML_OK;
}

/* Collective: read every store's attributes; all must share one vocabulary. */
static int ml_setup_stores(ml_trainer *tr) {
    for (int d = 0; d < tr->K; d++) {
        ML_CHECK(ml_store_info_read(tr->comm, tr->paths[d], &tr->info[d]));
        if (tr->info[d].vocab_size != tr->info[0].vocab_size)
            return ML_FAIL(ML_ERR_FORMAT, "%s has vocab_size %lld but %s has %lld (different tokenizers?)",
                           tr->paths[d], (long long)tr->info[d].vocab_size, tr->paths[0],
                           (long long)tr->info[0].vocab_size);
        if (tr->info[d].vocab_size < 1 || tr->info[d].vocab_size > INT_MAX)
            return ML_FAIL(ML_ERR_FORMAT, "%s: vocab_size %lld is out of range", tr->paths[d],
                           (long long)tr->info[d].vocab_size);
    }
    snprintf(tr->tokenizer, sizeof tr->tokenizer, "%s", tr->info[0].tokenizer);
    return ML_OK;
}

/* Model config: from the checkpoint being resumed, else the parent (init_from)
 * with explicitly given shape options overriding it, else the options. */
static int ml_setup_model_config(ml_trainer *tr, ml_h5 *resume_h, ml_h5 *parent_h) {
    const ml_options *o = tr->opt;
    ml_model_config *c = &tr->mc;
    const int V = (int)tr->info[0].vocab_size;
    if (resume_h) {
        ML_CHECK(ml_model_config_load(resume_h, c));
    } else {
        ml_model_config_default(c);
        if (parent_h) ML_CHECK(ml_model_config_load(parent_h, c));
        int shape_set = 0;
#define ML_SHAPE_OPT(key, field, get)                                                                                  \
    if (!parent_h || ml_opt_is_set(o, key)) {                                                                          \
        c->field = get(o, key);                                                                                        \
        shape_set |= parent_h != NULL;                                                                                 \
    }
        ML_SHAPE_OPT("d_model", d_model, (int)ml_opt_int)
        ML_SHAPE_OPT("d_mlp", d_mlp, (int)ml_opt_int)
        ML_SHAPE_OPT("n_heads", n_heads, (int)ml_opt_int)
        ML_SHAPE_OPT("n_kv_heads", n_kv_heads, (int)ml_opt_int)
        ML_SHAPE_OPT("n_layers", n_layers, (int)ml_opt_int)
        ML_SHAPE_OPT("rope_theta", rope_theta, ml_opt_float)
        ML_SHAPE_OPT("rms_eps", rms_eps, ml_opt_float)
        ML_SHAPE_OPT("init_std", init_std, ml_opt_float)
#undef ML_SHAPE_OPT
        if (!parent_h || ml_opt_is_set(o, "d_model") || ml_opt_is_set(o, "n_heads"))
            c->head_dim = c->n_heads > 0 ? c->d_model / c->n_heads : 0;
        if (!parent_h) {
            c->vocab_size = V;
            c->max_context = tr->T;
        }
        if (shape_set) ml_info("train: shape options given with init_from override the parent's model_config");
    }
    if (c->vocab_size != V)
        return ML_FAIL(ML_ERR_SHAPE,
                       "vocab mismatch: %s holds tokens of a %d-token vocabulary but the model%s%s has vocab_size %d "
                       "(tokens from a different tokenizer?)",
                       tr->paths[0], V, parent_h ? " " : "", parent_h ? tr->init_from : "", c->vocab_size);
    if (tr->T > c->max_context)
        return ML_FAIL(ML_ERR_CONFIG, "option 'context': %d exceeds the model's max_position_embeddings %d", tr->T,
                       c->max_context);
    ML_CHECK(ml_model_config_validate(c));
    return ML_OK;
}

/* Batch geometry, schedule and optimizer settings. */
static int ml_setup_shape(ml_trainer *tr) {
    const ml_options *o = tr->opt;
    tr->T = (int)ml_opt_int(o, "context");
    tr->G = (int)ml_opt_int(o, "global_batch");
    if (tr->G % tr->nranks)
        return ML_FAIL(ML_ERR_CONFIG, "option 'global_batch': %d is not a multiple of the %d ranks", tr->G,
                       tr->nranks);
    tr->B = tr->G / tr->nranks;
    int M = (int)ml_opt_int(o, "micro_batch");
    tr->M = M > 0 && M < tr->B ? M : tr->B;
    ML_CHECK(ml_adamw_config_from_options(o, &tr->adamw));
    tr->clip = ml_opt_float(o, "clip");
    tr->seed = (uint64_t)ml_opt_int(o, "seed");
    ML_CHECK(ml_lr_kind_parse(ml_opt_str(o, "schedule"), &tr->sched.kind));
    tr->sched.lr = ml_opt_float(o, "lr");
    tr->sched.warmup = ml_opt_int(o, "warmup");
    return ML_OK;
}

/* Steps from `steps` or `epochs` (needs the loader), then log capacities. */
static int ml_setup_steps(ml_trainer *tr, int64_t stored_eval_rows) {
    const ml_options *o = tr->opt;
    tr->total_steps = ml_opt_int(o, "steps");
    if (tr->total_steps == 0) {
        double windows = (double)ml_loader_windows_per_epoch(tr->loader);
        tr->total_steps = (int64_t)ceil(ml_opt_float(o, "epochs") * windows / tr->G);
        if (tr->total_steps < 1)
            return ML_FAIL(ML_ERR_CONFIG, "train: epochs %g of %.0f windows make no step of %d windows",
                           ml_opt_float(o, "epochs"), windows, tr->G);
    }
    tr->sched.total = tr->total_steps;
    tr->log.cap = tr->total_steps;
    int64_t every = ml_opt_int(o, "eval_every");
    tr->elog.cap = stored_eval_rows + (int64_t)tr->K * ((every > 0 ? tr->total_steps / every : 0) + 1);
    ML_CHECK(ml_train_logs_alloc(tr));
    return ML_OK;
}

/* Buffers, workspace, evaluator: allocated once for the run. */
static int ml_setup_buffers(ml_trainer *tr) {
    const size_t B = (size_t)tr->B, M = (size_t)tr->M, T = (size_t)tr->T;
    ML_ALLOC(tr->windows, B * (T + 1));
    ML_ALLOC(tr->tokens, M * T);
    ML_ALLOC(tr->targets, M * T);
    ML_ALLOC(tr->dom_ids, B);
    ML_ALLOC(tr->red, 3 + (size_t)tr->K);
    ML_ALLOC(tr->eval_res, (size_t)tr->K);
    ml_workspace_config wc = {.B_max = tr->M, .T_max = tr->T, .grad = 1};
    ML_CHECK(ml_workspace_create(&tr->mc, &wc, &tr->ws));
    return ML_OK;
}

/* ---- the step loop ---------------------------------------------------------------------- */
/* Forward + backward over this rank's rows in micro-batches; fills red. */
static int ml_local_step(ml_trainer *tr, double *loss_sum) {
    int nrows = 0;
    const int T = tr->T;
    const double scale = 1.0 / ((double)tr->G * T);
    *loss_sum = 0;
    ml_model_zero_grad(tr->model);
    ML_CHECK(ml_loader_next(tr->loader, tr->windows, &nrows, tr->dom_ids));
    if (nrows != tr->B)
        return ML_FAIL(ML_ERR_INTERNAL, "train: the loader gave %d rows, expected %d", nrows, tr->B);
    for (int r0 = 0; r0 < tr->B; r0 += tr->M) {
        const int n = tr->B - r0 < tr->M ? tr->B - r0 : tr->M;
        ml_windows_split(tr->windows + (size_t)r0 * (T + 1), n, T, tr->tokens, tr->targets);
        ml_lm_stats st;
        ML_CHECK(ml_model_forward_backward(tr->model, tr->ws, tr->tokens, tr->targets, n, T, scale, &st));
        *loss_sum += st.loss_sum;
    }
    return ML_OK;
}

static int ml_run_eval(ml_trainer *tr) {
    if (!tr->eval) return ML_OK;
    ML_CHECK(ml_evaluator_run(tr->eval, tr->model, tr->eval_res));
    char line[512];
    int k = snprintf(line, sizeof line, "eval step %lld:", (long long)tr->step);
    for (int d = 0; d < tr->K; d++) {
        ml_eval_log *e = &tr->elog;
        if (e->n >= e->cap) return ML_FAIL(ML_ERR_INTERNAL, "train: evaluation log full (%lld rows)", (long long)e->cap);
        e->step[e->n] = tr->step;
        e->domain[e->n] = d;
        e->loss[e->n] = tr->eval_res[d].loss;
        e->accuracy[e->n] = tr->eval_res[d].accuracy;
        e->n_tokens[e->n] = tr->eval_res[d].n_targets;
        e->n++;
        if (k < (int)sizeof line)
            k += snprintf(line + k, sizeof line - k, " %s loss %.4f acc %.4f", tr->eval_res[d].domain,
                          tr->eval_res[d].loss, tr->eval_res[d].accuracy);
    }
    ml_info("%s", line);
    return ML_OK;
}

static int ml_train_loop(ml_trainer *tr) {
    const int K = tr->K;
    const int64_t S = tr->total_steps, raise_at = ml_opt_int(tr->opt, "raise_at"),
                  stop_after = ml_opt_int(tr->opt, "stop_after"), ckpt_every = ml_opt_int(tr->opt, "checkpoint_every"),
                  eval_every = ml_opt_int(tr->opt, "eval_every");
    const double tokens_per_step = (double)tr->G * tr->T;
    const double flops_rank = ml_model_train_flops_per_token(&tr->mc, tr->T) * tr->B * tr->T;
    const size_t n = tr->model->n_params;
    int rc = ML_OK;
    ml_progress prog;
    char extra[128] = "";
    ml_progress_begin(&prog, "train", (double)(S - tr->step));
    const int64_t first = tr->step;
    while (tr->step < S) {
        ml_signal_raise_at(tr->comm, tr->step + 1, raise_at);
        double t0 = ml_wtime(), loss_sum = 0;
        ml_prof_begin("train.step");
        rc = ml_local_step(tr, &loss_sum);
        /* small reduction: loss, failure flag, signals, tokens per domain */
        double *red = tr->red;
        red[0] = loss_sum;
        red[1] = rc != ML_OK;
        /* signals ride on this reduction (ml_signal_vote: any SIGTERM wins) */
        red[2] = ml_signal_vote(ml_signal_pending(), tr->nranks);
        for (int d = 0; d < K; d++) red[3 + d] = 0;
        for (int r = 0; rc == ML_OK && r < tr->B; r++) red[3 + tr->dom_ids[r]] += tr->T;
        if (MPI_Allreduce(MPI_IN_PLACE, red, 3 + K, MPI_DOUBLE, MPI_SUM, tr->comm) != MPI_SUCCESS)
            rc = ML_FAIL(ML_ERR_MPI, "train: MPI_Allreduce of the step statistics failed");
        if (red[1] > 0 || rc != ML_OK) {
            ml_prof_end("train.step", 0, 0);
            return ml_agree(tr->comm, rc);
        }
        ml_prof_begin("train.allreduce");
        int mrc = ml_mpi_allreduce(tr->comm, MPI_IN_PLACE, tr->model->grads, n, MPI_FLOAT, MPI_SUM);
        ml_prof_end("train.allreduce", 0, 4.0 * (double)n);
        if (mrc != ML_OK) {
            ml_prof_end("train.step", 0, 0);
            return ml_agree(tr->comm, ml_error_trace(mrc, __FILE__, __LINE__, __func__));
        }
        const double loss = red[0] / tokens_per_step;
        const double gnorm = ml_model_clip_grads(tr->model, tr->clip);
        if (!isfinite(gnorm) || !isfinite(loss)) {
            ml_prof_end("train.step", 0, 0);
            return ml_agree(tr->comm, ML_FAIL(ML_ERR_NUMERIC,
                                              "train: step %lld: loss %g, gradient norm %g: the run diverged "
                                              "(lower lr, raise warmup, or set clip)",
                                              (long long)tr->step + 1, loss, gnorm));
        }
        const double lr = ml_lr_at(&tr->sched, tr->step);
        rc = ml_adamw_step(tr->opt_state, tr->model, lr);
        if (rc != ML_OK) {
            ml_prof_end("train.step", 0, 0);
            return ml_agree(tr->comm, rc);
        }
        tr->step++;
        for (int d = 0; d < K; d++) tr->dom_tokens[d] += (int64_t)red[3 + d];
        const double dt = ml_wtime() - t0;
        ml_prof_end("train.step", flops_rank, 0);
        ml_train_log *l = &tr->log;
        l->step[l->n] = tr->step;
        l->tokens[l->n] = tr->step * (int64_t)tokens_per_step;
        l->loss[l->n] = loss;
        l->lr[l->n] = lr;
        l->grad_norm[l->n] = gnorm;
        l->tokens_per_s[l->n] = dt > 0 ? tokens_per_step / dt : 0;
        l->n++;
        snprintf(extra, sizeof extra, "loss %.4f lr %.3g |g| %.3g %.0f tok/s", loss, lr, gnorm,
                 l->tokens_per_s[l->n - 1]);
        ml_progress_update(&prog, (double)(tr->step - first), extra);
        ml_debug("train: step %lld loss %.6f lr %.6g grad_norm %.6g %.3f s", (long long)tr->step, loss, lr, gnorm, dt);

        const int last = tr->step == S;
        if (last) break;
        if (eval_every > 0 && tr->step % eval_every == 0) ML_CHECK(ml_run_eval(tr));
        const int signalled = ml_signal_tally(red[2], tr->nranks); /* 0, SIGTERM or SIGUSR1 */
        if ((ckpt_every > 0 && tr->step % ckpt_every == 0) || signalled) ML_CHECK(ml_trainer_save(tr, 0));
        if (signalled) {
            ml_progress_end(&prog, extra);
            return ml_agree(tr->comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                              "interrupted by %s: checkpoint at step %lld of %lld written to %s; "
                                              "rerun the same command to resume",
                                              ml_signal_name(signalled), (long long)tr->step, (long long)S, tr->out));
        }
        if (stop_after > 0 && tr->step == stop_after) {
            ml_progress_end(&prog, extra);
            return ml_agree(tr->comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                              "stopped after step %lld (stop_after, testing): no final checkpoint",
                                              (long long)tr->step));
        }
    }
    ml_progress_end(&prog, extra);
    return ML_OK;
}

/* Create the directory that will hold path (rank 0). */
static int ml_mkdirs_parent(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return ML_OK;
    *slash = '\0';
    ML_CHECK(ml_mkdirs(dir));
    return ML_OK;
}

/* ---- the command --------------------------------------------------------------------------- */
/* Is tr->out an incomplete checkpoint to continue? Opens it into *h if so. */
static int ml_open_resume(ml_trainer *tr, ml_h5 **h) {
    *h = NULL;
    int exists = tr->rank == 0 ? ml_file_exists(tr->out) : 0;
    ML_CHECK_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, tr->comm));
    if (!exists) return ML_OK;
    if (!ml_opt_bool(tr->opt, "resume")) {
        ml_info("train: %s exists; --resume false: starting over (it is replaced at the first checkpoint)", tr->out);
        return ML_OK;
    }
    ML_CHECK(ml_h5_open(tr->comm, tr->out, ML_CHECKPOINT_FORMAT, 1, 1, h));
    int64_t complete = 1;
    int rc = ml_h5_get_attr_int(*h, "/", "complete", &complete);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        rc = ML_OK;
    }
    if (rc != ML_OK) {
        ml_h5_close(h);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    if (complete) {
        ml_info("train: %s holds a complete model; training from the start replaces it", tr->out);
        ml_h5_close(h);
    }
    return ML_OK;
}

int ml_cmd_train(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0;
    ml_trainer tr_, *tr = &tr_;
    memset(tr, 0, sizeof *tr);
    tr->comm = comm;
    tr->resumed_from = -1;
    MPI_Comm_rank(comm, &tr->rank);
    MPI_Comm_size(comm, &tr->nranks);
    ml_h5 *resume_h = NULL, *parent_h = NULL;
    ml_signal_guard saved = {0};
    ML_AGREE_GOTO(comm, ml_options_parse_command(comm, "train", ml_train_usage, ml_train_opts, argc, argv, &tr->opt,
                                                 NULL, NULL, &help),
                  done);
    if (help) goto done;
    double t_start = ml_wtime();
    tr->out = ml_opt_str(tr->opt, "out");
    tr->init_from = ml_opt_str(tr->opt, "init_from");
    snprintf(tr->parent, sizeof tr->parent, "%s", tr->init_from ? tr->init_from : "");
    if (tr->parent[0] && !strcmp(tr->parent, tr->out))
        ML_AGREE_GOTO(comm,
                      ML_FAIL(ML_ERR_CONFIG, "train: --out and --init_from both name %s: the fine-tune would "
                              "overwrite its parent", tr->out),
                      done);
    ML_AGREE_GOTO(comm, ml_options_to_json(tr->opt, &tr->config_json), done);
    ML_AGREE_GOTO(comm, ml_setup_data(tr), done);
    ML_AGREE_GOTO(comm, ml_setup_shape(tr), done);
    ML_AGREE_GOTO(comm, ml_setup_stores(tr), done);
    ML_AGREE_GOTO(comm, ml_open_resume(tr, &resume_h), done);
    if (!resume_h && tr->parent[0]) ML_AGREE_GOTO(comm, ml_h5_open(comm, tr->parent, ML_CHECKPOINT_FORMAT, 1, 1, &parent_h), done);
    ML_AGREE_GOTO(comm, ml_setup_model_config(tr, resume_h, parent_h), done);
    if (!tr->tokenizer[0] && parent_h) {
        char *t = NULL;
        if (ml_h5_get_attr_str(parent_h, "/", "tokenizer", &t) == ML_OK)
            snprintf(tr->tokenizer, sizeof tr->tokenizer, "%s", t);
        ml_free(t);
        ml_error_clear();
    }
    ML_AGREE_GOTO(comm, tr->rank == 0 ? ml_mkdirs_parent(tr->out) : ML_OK, done);
    /* model, optimizer, loader */
    rc = ml_model_create(&tr->mc, &tr->model);
    if (rc == ML_OK) rc = ml_model_enable_grads(tr->model);
    if (rc == ML_OK) rc = ml_adamw_create(tr->model, &tr->adamw, &tr->opt_state);
    ML_AGREE_GOTO(comm, rc, done);
    ml_loader_config lc = {.n_domains = tr->K, .paths = (const char *const *)tr->paths, .weights = tr->weights,
                           .split = "train", .global_batch = tr->G, .T = tr->T, .seed = tr->seed, .sequential = 0,
                           .subset_index = tr->subset_index, .subset_count = tr->subset_count};
    ML_AGREE_GOTO(comm, ml_loader_create(comm, &lc, &tr->loader), done);
    int64_t stored_eval_rows = 0;
    if (resume_h) ML_AGREE_GOTO(comm, ml_trainer_stored_eval_rows(resume_h, &stored_eval_rows), done);
    ML_AGREE_GOTO(comm, ml_setup_steps(tr, stored_eval_rows), done);
    /* parameters: resumed, parent's, or fresh */
    if (resume_h) {
        ML_AGREE_GOTO(comm, ml_trainer_restore(tr, resume_h), done);
        ml_h5_close(&resume_h);
    } else if (parent_h) {
        ML_AGREE_GOTO(comm, ml_model_load_params(parent_h, tr->model), done);
        ml_h5_close(&parent_h);
    } else {
        ML_AGREE_GOTO(comm, ml_model_init(tr->model, tr->seed), done);
    }
    ML_AGREE_GOTO(comm, ml_loader_seek(tr->loader, tr->step), done);
    ML_AGREE_GOTO(comm, ml_setup_buffers(tr), done);
    if (ml_opt_bool(tr->opt, "eval")) {
        int eb = (int)ml_opt_int(tr->opt, "eval_batch");
        ml_eval_config ec = {.n_domains = tr->K, .paths = (const char *const *)tr->paths, .split = "val", .T = tr->T,
                             .batch = eb > 0 ? eb : tr->G, .micro_batch = tr->M,
                             .max_batches = ml_opt_int(tr->opt, "eval_batches"),
                             .sequential = !strcmp(ml_opt_str(tr->opt, "eval_order"), "sequential"),
                             .seed = (uint64_t)ml_opt_int(tr->opt, "eval_seed")};
        ML_AGREE_GOTO(comm, ml_evaluator_create(comm, &tr->mc, &ec, tr->ws, &tr->eval), done);
    }
    char subset_note[64] = "";
    if (tr->subset_count > 1)
        snprintf(subset_note, sizeof subset_note, "; data subset %d/%d (%lld train windows)", tr->subset_index,
                 tr->subset_count, (long long)ml_loader_windows_per_epoch(tr->loader));
    ml_info("train: %zu parameters (D %d, F %d, H %d/%d, L %d, V %d); %d domain%s; %d x %d tokens per step "
            "(%d rows per rank, micro-batch %d); %lld steps%s%s",
            tr->model->n_params, tr->mc.d_model, tr->mc.d_mlp, tr->mc.n_heads, tr->mc.n_kv_heads, tr->mc.n_layers,
            tr->mc.vocab_size, tr->K, tr->K > 1 ? "s" : "", tr->G, tr->T, tr->B, tr->M, (long long)tr->total_steps,
            tr->parent[0] ? ", fine-tuning" : "", subset_note);
    if (tr->resumed_from >= 0) ml_info("train: resuming %s at step %lld", tr->out, (long long)tr->resumed_from);

    ml_signals_install(&saved);
    ML_CHECK_GOTO(ml_train_loop(tr), done);
    ML_AGREE_GOTO(comm, ml_run_eval(tr), done);
    ML_AGREE_GOTO(comm, ml_trainer_save(tr, 1), done);
    const ml_train_log *l = &tr->log;
    ml_info("train: %lld steps done (final loss %.4f) in %.1f s; wrote %s", (long long)tr->total_steps,
            l->n > 0 ? l->loss[l->n - 1] : NAN, ml_wtime() - t_start, tr->out);
done:
    ml_signals_restore(&saved);
    if (resume_h) ml_h5_close(&resume_h);
    if (parent_h) ml_h5_close(&parent_h);
    ml_trainer_free(tr);
    ml_options_destroy(&tr->opt);
    return rc;
}
