/* Data-parallel adapter training on a frozen host, the same step as
 * `mergelens train` (src/train/train.c) restricted to the adapter:
 *
 *  1. work := host with W_eff in the adapted layers (ml_adapter_apply);
 *  2. each rank runs forward + backward over its B = G / P rows in
 *     micro-batches of M rows, accumulating d(sum of cross-entropy)/(G T)
 *     into work->grads (dL/dW_eff for every host tensor);
 *  3. ml_adapter_backward turns the adapted layers' dL/dW_eff into the
 *     adapter gradients; a small MPI_Allreduce sums the loss and the failure
 *     flags, then ONE MPI_Allreduce sums the adapter gradients;
 *  4. global-norm clipping, the schedule's learning rate and AdamW on the
 *     adapter only (the host never changes).
 *
 * Dimension letters: G global batch, B rows per rank, M micro-batch rows,
 * T context, n adapter parameters. */
#include "peft_internal.h"

#include <math.h>
#include <string.h>

struct ml_peft_trainer {
    MPI_Comm comm;
    int rank, nranks;
    ml_peft_train_config cfg;
    int B, M;
    ml_model *work;      /* host-shaped working copy with gradients */
    ml_workspace *ws;    /* (M, T) with backward buffers */
    ml_evaluator *eval;  /* NULL without evaluation */
    ml_adamw *opt;       /* moments of the adapter's n parameters */
    int32_t *windows;    /* (B, T+1) */
    int32_t *tokens, *targets; /* (M, T) */
};

void ml_peft_trainer_destroy(ml_peft_trainer **tp) {
    if (!tp || !*tp) return;
    ml_peft_trainer *t = *tp;
    ml_evaluator_destroy(&t->eval);
    ml_workspace_destroy(&t->ws);
    ml_model_destroy(&t->work);
    ml_adamw_destroy(&t->opt);
    ml_free(t->windows);
    ml_free(t->tokens);
    ml_free(t->targets);
    ml_free(t);
    *tp = NULL;
}

static int ml_peft_trainer_alloc(ml_peft_trainer *t, const ml_model_config *host, const ml_adapter *a) {
    const size_t B = (size_t)t->B, M = (size_t)t->M, T = (size_t)t->cfg.T;
    ML_ALLOC(t->windows, B * (T + 1));
    ML_ALLOC(t->tokens, M * T);
    ML_ALLOC(t->targets, M * T);
    ML_CHECK(ml_model_create(host, &t->work));
    ML_CHECK(ml_model_enable_grads(t->work));
    ML_CHECK(ml_adamw_create(&a->view, &t->cfg.adamw, &t->opt));
    ml_workspace_config wc = {.B_max = t->M, .T_max = t->cfg.T, .grad = 1};
    ML_CHECK(ml_workspace_create(host, &wc, &t->ws));
    return ML_OK;
}

int ml_peft_trainer_create(MPI_Comm comm, const ml_model_config *host, const ml_adapter *a,
                           const ml_peft_train_config *cfg, const ml_eval_config *ec, ml_peft_trainer **out) {
    int rc = ML_OK;
    *out = NULL;
    ml_peft_trainer *t = ml_calloc(1, sizeof *t);
    if (!t) return ml_agree(comm, ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__));
    t->comm = comm;
    MPI_Comm_rank(comm, &t->rank);
    MPI_Comm_size(comm, &t->nranks);
    t->cfg = *cfg;
    t->cfg.sched.total = cfg->steps;
    if (cfg->G < 1 || cfg->G % t->nranks)
        rc = ML_FAIL(ML_ERR_CONFIG, "option 'global_batch': %d is not a multiple of the %d ranks", cfg->G, t->nranks);
    else if (cfg->T < 1 || cfg->T > host->max_context)
        rc = ML_FAIL(ML_ERR_CONFIG, "option 'context': %d must lie in [1, %d] (the host's max_position_embeddings)",
                     cfg->T, host->max_context);
    if (rc == ML_OK) {
        t->B = cfg->G / t->nranks;
        t->M = cfg->M > 0 && cfg->M < t->B ? cfg->M : t->B;
        rc = ml_peft_trainer_alloc(t, host, a);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    if (ec) {
        ml_eval_config e = *ec;
        e.micro_batch = t->M;
        ML_CHECK_GOTO(ml_evaluator_create(comm, host, &e, t->ws, &t->eval), fail);
    }
    *out = t;
    return ML_OK;
fail:
    ml_peft_trainer_destroy(&t);
    return rc;
}

/* This rank's forward + backward over its rows of one global batch. */
static int ml_peft_local_step(ml_peft_trainer *t, ml_loader *ld, const ml_model *host, ml_adapter *a,
                              double *loss_sum) {
    const int T = t->cfg.T;
    const double scale = 1.0 / ((double)t->cfg.G * T);
    int nrows = 0;
    *loss_sum = 0;
    ml_model_zero_grad(t->work);
    ML_CHECK(ml_loader_next(ld, t->windows, &nrows, NULL));
    if (nrows != t->B) return ML_FAIL(ML_ERR_INTERNAL, "peft: the loader gave %d rows, expected %d", nrows, t->B);
    for (int r0 = 0; r0 < t->B; r0 += t->M) {
        const int n = t->B - r0 < t->M ? t->B - r0 : t->M;
        ml_windows_split(t->windows + (size_t)r0 * (T + 1), n, T, t->tokens, t->targets);
        ml_lm_stats st;
        ML_CHECK(ml_model_forward_backward(t->work, t->ws, t->tokens, t->targets, n, T, scale, &st));
        *loss_sum += st.loss_sum;
    }
    ml_adapter_backward(a, host, t->work);
    return ML_OK;
}

static int ml_peft_steps(ml_peft_trainer *t, ml_loader *ld, const ml_model *host, ml_adapter *a, double *loss) {
    const ml_peft_train_config *c = &t->cfg;
    const size_t n = a->view.n_params;
    ml_progress prog;
    char extra[96] = "";
    ml_progress_begin(&prog, "peft", (double)c->steps);
    for (int64_t s = 0; s < c->steps; s++) {
        double red[2] = {0, 0};
        int rc = ml_peft_local_step(t, ld, host, a, &red[0]);
        red[1] = rc != ML_OK;
        if (MPI_Allreduce(MPI_IN_PLACE, red, 2, MPI_DOUBLE, MPI_SUM, t->comm) != MPI_SUCCESS)
            rc = ML_FAIL(ML_ERR_MPI, "peft: MPI_Allreduce of the step statistics failed");
        if (red[1] > 0 || rc != ML_OK) return ml_agree(t->comm, rc);
        ML_CHECK(ml_mpi_allreduce(t->comm, MPI_IN_PLACE, a->view.grads, n, MPI_FLOAT, MPI_SUM));
        const double l = red[0] / ((double)c->G * c->T);
        const double gnorm = ml_model_clip_grads(&a->view, c->clip);
        if (!isfinite(l) || !isfinite(gnorm))
            return ml_agree(t->comm, ML_FAIL(ML_ERR_NUMERIC,
                                             "peft: step %lld: loss %g, adapter gradient norm %g: the run diverged "
                                             "(lower lr or set clip)", (long long)s + 1, l, gnorm));
        ML_CHECK(ml_agree(t->comm, ml_adamw_step(t->opt, &a->view, ml_lr_at(&c->sched, s))));
        ml_adapter_apply(a, host, t->work, 0);
        if (loss) loss[s] = l;
        snprintf(extra, sizeof extra, "loss %.4f |g| %.3g", l, gnorm);
        ml_progress_update(&prog, (double)(s + 1), extra);
    }
    ml_progress_end(&prog, extra);
    return ML_OK;
}

int ml_peft_trainer_run(ml_peft_trainer *t, const ml_model *host, ml_adapter *a, uint64_t seed, double *loss) {
    const ml_peft_train_config *c = &t->cfg;
    if (a->view.n_params != t->opt->n)
        return ml_agree(t->comm, ML_FAIL(ML_ERR_SHAPE, "peft: the adapter holds %zu parameters, the trainer was built "
                                                       "for %zu", a->view.n_params, t->opt->n));
    memset(t->opt->m, 0, sizeof(float) * t->opt->n);
    memset(t->opt->v, 0, sizeof(float) * t->opt->n);
    t->opt->step = 0;
    ml_adapter_apply(a, host, t->work, 1);
    ml_loader *ld = NULL;
    ml_loader_config lc = {.n_domains = c->n_domains, .paths = c->paths, .weights = c->weights, .split = "train",
                           .global_batch = c->G, .T = c->T, .seed = seed, .sequential = 0};
    ML_CHECK(ml_loader_create(t->comm, &lc, &ld));
    ml_prof_begin("peft.train");
    int rc = ml_peft_steps(t, ld, host, a, loss);
    ml_prof_end("peft.train", 0, 0);
    ml_loader_destroy(&ld);
    return rc;
}

int ml_peft_trainer_eval(ml_peft_trainer *t, const ml_model *host, const ml_adapter *a, ml_eval_result *res) {
    if (!t->eval) return ml_agree(t->comm, ML_FAIL(ML_ERR_INTERNAL, "peft: the trainer has no evaluator"));
    if (a)
        ml_adapter_apply(a, host, t->work, 1);
    else
        memcpy(t->work->params, host->params, sizeof(float) * host->n_params);
    ML_CHECK(ml_evaluator_run(t->eval, t->work, res));
    return ML_OK;
}
