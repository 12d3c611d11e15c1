/* CE loss recovered: (L_zero - L_spliced) / (L_zero - L_clean), with the
 * MLP hidden activation (blocks.<layer>.mlp.hook_post) of the model zeroed
 * (L_zero) or replaced by an SAE's reconstruction (L_spliced), measured on
 * the same windows as the normal forward pass (L_clean).
 *
 * Dimension letters: B windows per batch, T context, N = B*T positions,
 * F = d_mlp = the SAE's d_in, S = d_sae, D domains. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "capture_internal.h"

enum { ML_RUN_CLEAN = 0, ML_RUN_ZERO = 1, ML_RUN_SPLICE = 2, ML_RUNS = 3 };

typedef struct {
    int mode, layer;
    const ml_sae *sae;
    float *f_scratch; /* (256, S) */
} ml_splice;

/* ml_mlp_hook_fn: h (N,F) of `layer` -> zeros or the SAE reconstruction, in place. */
static int ml_splice_hook(void *ctx, int layer, float *h, int N, int F) {
    ml_splice *s = ctx;
    if (layer != s->layer) return ML_OK;
    if (s->mode == ML_RUN_ZERO) memset(h, 0, sizeof(float) * (size_t)N * (size_t)F);
    else if (s->mode == ML_RUN_SPLICE) ML_CHECK(ml_sae_reconstruct(s->sae, h, N, h, s->f_scratch));
    return ML_OK;
}

int ml_capture_splice_layer(const char *hook, int n_layers, int *layer) {
    int l = -1, end = 0;
    if (sscanf(hook, "blocks.%d.mlp.hook_post%n", &l, &end) != 1 || hook[end] != 0)
        return ML_FAIL(ML_ERR_UNSUPPORTED,
                       "hook '%s': the SAE can only be spliced at blocks.<i>.mlp.hook_post (the MLP hidden activation)",
                       hook);
    if (l < 0 || l >= n_layers)
        return ML_FAIL(ML_ERR_ARG, "hook '%s': layer %d does not exist (the model has %d)", hook, l, n_layers);
    *layer = l;
    return ML_OK;
}

/* Per-domain sums, one double array for one reduction: [run][D] loss,
 * [run][D] correct, [D] targets, [D] windows. */
#define ML_SUMS(D) ((size_t)(2 * ML_RUNS + 2) * (size_t)(D))

static void ml_ce_fill(ml_ce_stats *s, const double *loss, const double *corr, double targets, double windows) {
    s->windows = (int64_t)windows;
    s->targets = (int64_t)targets;
    const double n = targets > 0 ? targets : 1;
    s->loss_clean = loss[ML_RUN_CLEAN] / n;
    s->loss_zero = loss[ML_RUN_ZERO] / n;
    s->loss_spliced = loss[ML_RUN_SPLICE] / n;
    s->acc_clean = corr[ML_RUN_CLEAN] / n;
    s->acc_zero = corr[ML_RUN_ZERO] / n;
    s->acc_spliced = corr[ML_RUN_SPLICE] / n;
    const double den = s->loss_zero - s->loss_clean;
    s->ce_recovered = den != 0 ? (s->loss_zero - s->loss_spliced) / den : NAN;
}

int ml_capture_ce_recovered(MPI_Comm comm, const ml_model *model, const ml_sae *sae, int layer,
                            const ml_window_spec *win, int64_t n_windows, int batch, ml_ce_result *out) {
    int rc = ML_OK, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    const ml_model_config *mc = &model->cfg;
    const int T = win->T, B = batch, D = win->n_domains;
    if (sae->d_in != mc->d_mlp)
        return ML_FAIL(ML_ERR_SHAPE, "CE recovered: the SAE's d_in %d differs from the model's d_mlp %d (hook %s)",
                       sae->d_in, mc->d_mlp, sae->hook_name);
    if (layer < 0 || layer >= mc->n_layers)
        return ML_FAIL(ML_ERR_ARG, "CE recovered: layer %d does not exist (the model has %d)", layer, mc->n_layers);
    if (B < 1) return ML_FAIL(ML_ERR_ARG, "CE recovered: batch = %d windows must be >= 1", B);
    if (T < 1 || T > mc->max_context)
        return ML_FAIL(ML_ERR_ARG, "CE recovered: context %d outside [1, %d] (the model's max_context)", T,
                       mc->max_context);
    if (D < 1 || D > ML_CAPTURE_MAX_DOMAINS)
        return ML_FAIL(ML_ERR_ARG, "CE recovered: %d domains given (expected 1..%d)", D, ML_CAPTURE_MAX_DOMAINS);
    const int64_t NB = (n_windows + B - 1) / B, steps = (NB + P - 1) / P;
    const size_t N = (size_t)B * (size_t)T;

    ml_window_plan *plan = NULL;
    ml_workspace *ws = NULL;
    int32_t *windows = NULL, *tokens = NULL, *targets = NULL;
    double *sums = NULL, *total = NULL;
    ml_splice sp = {ML_RUN_CLEAN, layer, sae, NULL};
    ml_workspace_config wc = {B, T, 0, 0, 0};
    rc = ml_workspace_create(mc, &wc, &ws);
    windows = ml_malloc(sizeof(int32_t) * (size_t)B * (size_t)(T + 1));
    tokens = ml_malloc(sizeof(int32_t) * N);
    targets = ml_malloc(sizeof(int32_t) * N);
    sums = ml_calloc(ML_SUMS(D), sizeof(double));
    total = ml_calloc(ML_SUMS(D), sizeof(double));
    sp.f_scratch = ml_malloc(sizeof(float) * 256 * (size_t)sae->d_sae);
    if (rc == ML_OK && (!windows || !tokens || !targets || !sums || !total || !sp.f_scratch))
        rc = ML_FAIL(ML_ERR_NOMEM, "CE recovered: out of memory for a batch of %d windows", B);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_window_plan_create(comm, win, n_windows, mc->vocab_size, &plan), done);
    double *loss = sums, *corr = sums + ML_RUNS * D, *ntgt = sums + 2 * ML_RUNS * D, *nwin = ntgt + D;

    ml_progress pg;
    ml_progress_begin(&pg, "sae-eval", (double)n_windows);
    for (int64_t s = 0; s < steps; s++) {
        const int64_t bi = s * P + rank, w0 = bi < NB ? bi * B : n_windows,
                      w1 = w0 + B < n_windows ? w0 + B : n_windows;
        const int nb = (int)(w1 - w0);
        for (int j = 0; j < nb && rc == ML_OK; j++)
            rc = ml_window_plan_read(plan, w0 + j, windows + (size_t)j * (size_t)(T + 1), NULL);
        if (nb > 0 && rc == ML_OK) ml_windows_split(windows, nb, T, tokens, targets);
        for (int run = 0; run < ML_RUNS && nb > 0 && rc == ML_OK; run++) {
            sp.mode = run;
            ml_workspace_set_mlp_hook(ws, run == ML_RUN_CLEAN ? NULL : ml_splice_hook, &sp);
            rc = ml_model_forward(model, ws, tokens, targets, nb, T, NULL);
            if (rc != ML_OK) break;
            const float *tl;
            const uint8_t *tc;
            ml_workspace_token_stats(ws, &tl, &tc);
            for (int j = 0; j < nb; j++) {
                int d;
                ml_window_plan_window(plan, w0 + j, &d, NULL);
                double l = 0, c = 0;
                for (int t = 0; t < T; t++) {
                    l += tl[(size_t)j * T + t];
                    c += tc[(size_t)j * T + t];
                }
                loss[run * D + d] += l;
                corr[run * D + d] += c;
                if (run == ML_RUN_CLEAN) {
                    ntgt[d] += T;
                    nwin[d] += 1;
                }
            }
        }
        ml_workspace_set_mlp_hook(ws, NULL, NULL);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        int64_t done_w = (s + 1) * P * (int64_t)B;
        ml_progress_update(&pg, (double)(done_w < n_windows ? done_w : n_windows), NULL);
    }
    ML_CHECK_GOTO(ml_capture_sum(comm, sums, total, ML_SUMS(D)), done);
    memset(out, 0, sizeof *out);
    out->n_domains = D;
    double tl[ML_RUNS] = {0}, tc[ML_RUNS] = {0}, tt = 0, tw = 0;
    loss = total;
    corr = total + ML_RUNS * D;
    ntgt = total + 2 * ML_RUNS * D;
    nwin = ntgt + D;
    for (int d = 0; d < D; d++) {
        double dl[ML_RUNS], dc[ML_RUNS];
        for (int run = 0; run < ML_RUNS; run++) {
            dl[run] = loss[run * D + d];
            dc[run] = corr[run * D + d];
            tl[run] += dl[run];
            tc[run] += dc[run];
        }
        tt += ntgt[d];
        tw += nwin[d];
        ml_ce_fill(&out->domain[d], dl, dc, ntgt[d], nwin[d]);
    }
    ml_ce_fill(&out->total, tl, tc, tt, tw);
    char extra[96];
    snprintf(extra, sizeof extra, "CE recovered %.4f", out->total.ce_recovered);
    ml_progress_end(&pg, extra);
done:
    ml_free(sp.f_scratch);
    ml_free(sums);
    ml_free(total);
    ml_free(targets);
    ml_free(tokens);
    ml_free(windows);
    ml_window_plan_destroy(&plan);
    ml_workspace_destroy(&ws);
    return rc;
}
