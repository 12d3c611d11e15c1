/* Workspace, forward pass and backward pass. Dimension legend in model_internal.h. */
#include "model_internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#define ML_ATTN_BLOCK_DEFAULT 64
#define ML_LM_CHUNK_FLOATS (8 << 20)

/* ---- workspace -------------------------------------------------------------- */
/* Carve `count` floats (rounded up to 64 bytes) from the block, or count the size when base is NULL. */
static float *ml_carve(float *base, size_t *off, size_t count) {
    float *p = base ? base + *off : NULL;
    *off += (count + 15) & ~(size_t)15;
    return p;
}

static size_t ml_workspace_layout(ml_workspace *ws, float *base) {
    const ml_model_config *c = &ws->mc;
    const size_t L = (size_t)c->n_layers, N = (size_t)ws->wc.B_max * ws->wc.T_max, D = (size_t)c->d_model,
                 F = (size_t)c->d_mlp, H = (size_t)c->n_heads, hd = (size_t)c->head_dim,
                 QD = H * hd, QKV = (H + 2 * (size_t)c->n_kv_heads) * hd, V = (size_t)c->vocab_size,
                 Br = (size_t)ws->wc.attn_block, T = (size_t)ws->wc.T_max;
    const size_t C = (size_t)ws->wc.lm_chunk < N ? (size_t)ws->wc.lm_chunk : N;
    size_t off = 0;
    ws->resid = ml_carve(base, &off, (L + 1) * N * D);
    ws->resid_mid = ml_carve(base, &off, L * N * D);
    ws->attn_out = ml_carve(base, &off, L * N * D);
    ws->mlp_out = ml_carve(base, &off, L * N * D);
    ws->ln1 = ml_carve(base, &off, L * N * D);
    ws->ln2 = ml_carve(base, &off, L * N * D);
    ws->rstd1 = ml_carve(base, &off, L * N);
    ws->rstd2 = ml_carve(base, &off, L * N);
    ws->qkv = ml_carve(base, &off, L * N * QKV);
    ws->atty = ml_carve(base, &off, L * N * QD);
    ws->lse = ml_carve(base, &off, L * N * H);
    ws->gu = ml_carve(base, &off, L * N * 2 * F);
    ws->hpost = ml_carve(base, &off, L * N * F);
    ws->lnf = ml_carve(base, &off, N * D);
    ws->rstdf = ml_carve(base, &off, N);
    ws->tok_loss = ml_carve(base, &off, N);
    ws->tok_correct = (uint8_t *)ml_carve(base, &off, (N + 3) / 4);
    ws->cos_t = ml_carve(base, &off, T * hd / 2);
    ws->sin_t = ml_carve(base, &off, T * hd / 2);
    ws->logits = ml_carve(base, &off, C * V);
    const size_t nthr = (size_t)ws->nthr;
    ws->scores = ml_carve(base, &off, nthr * Br * T);
    ws->rowtmp = ml_carve(base, &off, nthr * Br);
    if (ws->wc.grad) {
        ws->dscores = ml_carve(base, &off, nthr * Br * T);
        ws->dwpart = ml_carve(base, &off, (N + ML_ROW_BLOCK - 1) / ML_ROW_BLOCK * D);
        ws->dres = ml_carve(base, &off, N * D);
        ws->dtmp = ml_carve(base, &off, N * D);
        ws->datty = ml_carve(base, &off, N * QD);
        ws->dqkv = ml_carve(base, &off, N * QKV);
    }
    return off;
}

int ml_workspace_create(const ml_model_config *mc, const ml_workspace_config *wc, ml_workspace **out) {
    *out = NULL;
    ML_CHECK(ml_model_config_validate(mc));
    if (mc->n_layers > ML_MODEL_MAX_LAYERS)
        return ML_FAIL(ML_ERR_UNSUPPORTED, "workspace: n_layers = %d exceeds the supported %d", mc->n_layers,
                       ML_MODEL_MAX_LAYERS);
    if (wc->B_max < 1 || wc->T_max < 1)
        return ML_FAIL(ML_ERR_ARG, "workspace: B_max = %d and T_max = %d must be >= 1", wc->B_max, wc->T_max);
    if (wc->T_max > mc->max_context)
        return ML_FAIL(ML_ERR_ARG, "workspace: T_max = %d exceeds the model's max_context %d", wc->T_max,
                       mc->max_context);
    if (wc->attn_block < 0 || wc->lm_chunk < 0)
        return ML_FAIL(ML_ERR_ARG, "workspace: attn_block = %d and lm_chunk = %d must be >= 0", wc->attn_block,
                       wc->lm_chunk);
    ml_workspace *ws = ml_calloc(1, sizeof *ws);
    if (!ws) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ws->mc = *mc;
    ws->wc = *wc;
    if (!ws->wc.attn_block) ws->wc.attn_block = ML_ATTN_BLOCK_DEFAULT;
    if (ws->wc.attn_block > wc->T_max) ws->wc.attn_block = wc->T_max;
    if (!ws->wc.lm_chunk) { /* about 32 MB of logits: large products, bounded memory */
        int c = ML_LM_CHUNK_FLOATS / mc->vocab_size / 64 * 64;
        ws->wc.lm_chunk = c < 64 ? 64 : c > 1024 ? 1024 : c;
    }
    ws->nthr = ml_par_threads();
    size_t n = ml_workspace_layout(ws, NULL);
    ws->block = ml_malloc(n * sizeof(float));
    if (!ws->block) {
        ml_free(ws);
        return ML_FAIL(ML_ERR_NOMEM, "workspace: cannot allocate %.1f MB of activations for B = %d, T = %d",
                       n * 4.0 / 1e6, wc->B_max, wc->T_max);
    }
    memset(ws->block, 0, n * sizeof(float));
    ws->bytes = n * sizeof(float);
    ml_workspace_layout(ws, ws->block);
    ml_rope_tables(ws->cos_t, ws->sin_t, wc->T_max, mc->head_dim, mc->rope_theta);
    *out = ws;
    return ML_OK;
}

void ml_workspace_destroy(ml_workspace **wsp) {
    if (!wsp || !*wsp) return;
    ml_free((*wsp)->block);
    ml_free(*wsp);
    *wsp = NULL;
}

size_t ml_workspace_bytes(const ml_workspace *ws) { return ws->bytes; }

void ml_workspace_set_mlp_hook(ml_workspace *ws, ml_mlp_hook_fn fn, void *ctx) {
    ws->hook_fn = fn;
    ws->hook_ctx = ctx;
}

int ml_workspace_set_mlp_replacement(ml_workspace *ws, int layer, const float *h) {
    if (layer < 0 || layer >= ws->mc.n_layers)
        return ML_FAIL(ML_ERR_ARG, "mlp replacement: layer %d does not exist (model has %d)", layer,
                       ws->mc.n_layers);
    ws->replace[layer] = h;
    return ML_OK;
}

void ml_workspace_token_stats(const ml_workspace *ws, const float **loss, const uint8_t **correct) {
    if (loss) *loss = ws->tok_loss;
    if (correct) *correct = ws->tok_correct;
}

void ml_windows_split(const int32_t *windows, int B, int T, int32_t *tokens, int32_t *targets) {
    for (int b = 0; b < B; b++) {
        const int32_t *w = windows + (size_t)b * (T + 1);
        memcpy(tokens + (size_t)b * T, w, sizeof(int32_t) * (size_t)T);
        memcpy(targets + (size_t)b * T, w + 1, sizeof(int32_t) * (size_t)T);
    }
}

int ml_workspace_hook(ml_workspace *ws, const char *name, ml_view *v) {
    const ml_model_config *c = &ws->mc;
    const int N = ws->B * ws->T, D = c->d_model, F = c->d_mlp;
    const size_t Nmax = (size_t)ws->wc.B_max * ws->wc.T_max;
    if (N == 0) return ML_FAIL(ML_ERR_ARG, "hook %s: no forward pass has run on this workspace", name);
    *v = (ml_view){NULL, N, D, D};
    if (!strcmp(name, "ln_final.hook_normalized")) {
        v->data = ws->lnf;
        return ML_OK;
    }
    int layer = -1, pos = 0;
    if (sscanf(name, "blocks.%d.%n", &layer, &pos) == 1 && pos > 0 && layer >= 0 && layer < c->n_layers) {
        const char *s = name + pos;
        const size_t o = (size_t)layer * Nmax;
        if (!strcmp(s, "hook_resid_pre")) v->data = ws->resid + o * D;
        else if (!strcmp(s, "hook_attn_out")) v->data = ws->attn_out + o * D;
        else if (!strcmp(s, "hook_resid_mid")) v->data = ws->resid_mid + o * D;
        else if (!strcmp(s, "hook_mlp_out")) v->data = ws->mlp_out + o * D;
        else if (!strcmp(s, "hook_resid_post")) v->data = ws->resid + (o + Nmax) * D;
        else if (!strcmp(s, "mlp.hook_post")) *v = (ml_view){ws->hpost + o * F, N, F, F};
        else if (!strcmp(s, "mlp.hook_pre")) *v = (ml_view){ws->gu + o * 2 * F, N, F, 2 * F};
        else if (!strcmp(s, "mlp.hook_pre_linear")) *v = (ml_view){ws->gu + o * 2 * F + F, N, F, 2 * F};
        if (v->data) return ML_OK;
    }
    return ML_FAIL(ML_ERR_NOTFOUND,
                   "unknown hook '%s' (expected blocks.<0..%d>.{hook_resid_pre, hook_attn_out, hook_resid_mid, "
                   "hook_mlp_out, hook_resid_post, mlp.hook_pre, mlp.hook_pre_linear, mlp.hook_post} or "
                   "ln_final.hook_normalized)",
                   name, c->n_layers - 1);
}

/* ---- forward / backward -------------------------------------------------------- */
static int ml_check_batch(const ml_model *m, const ml_workspace *ws, const int32_t *tokens, const int32_t *targets,
                          int B, int T) {
    if (memcmp(&m->cfg, &ws->mc, sizeof m->cfg) != 0)
        return ML_FAIL(ML_ERR_ARG, "model forward: the workspace was created for a different model config");
    if (B < 1 || B > ws->wc.B_max || T < 1 || T > ws->wc.T_max)
        return ML_FAIL(ML_ERR_ARG, "model forward: batch (B = %d, T = %d) outside the workspace's (%d, %d)", B, T,
                       ws->wc.B_max, ws->wc.T_max);
    const int V = m->cfg.vocab_size;
    for (size_t i = 0; i < (size_t)B * T; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return ML_FAIL(ML_ERR_ARG, "model forward: token %d at row %zu position %zu is outside [0, %d)", tokens[i],
                           i / T, i % T, V);
        if (targets && (targets[i] < -1 || targets[i] >= V))
            return ML_FAIL(ML_ERR_ARG, "model forward: target %d at row %zu position %zu is outside [-1, %d)",
                           targets[i], i / T, i % T, V);
    }
    return ML_OK;
}

/* Y (N, out) = X (N, in) W^T with W (out, in) */
static void ml_linear(float *Y, const float *X, const float *W, int N, int out, int in) {
    ml_prof_begin("model.gemm");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, X, in, W, in, 0.0f, Y, out);
    ml_prof_end("model.gemm", 2.0 * N * out * (double)in, 0);
}
/* dW (out, in) += dY^T X, then dX (N, in) = dY (N, out) W (out, in) (dX may alias X) */
static void ml_linear_backward(float *dX, float *dW, const float *dY, const float *X, const float *W, int N, int out,
                               int in) {
    ml_prof_begin("model.gemm");
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, N, 1.0f, dY, out, X, in, 1.0f, dW, in);
    if (dX) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dY, out, W, in, 0.0f, dX, in);
    ml_prof_end("model.gemm", (dX ? 4.0 : 2.0) * N * out * (double)in, 0);
}

/* The forward pass; when G is non-NULL (training) the lm_head + cross-entropy
 * chunks also produce d lnf (into ws->dtmp) and accumulate G->lm_head. */
static int ml_forward(const ml_model *m, ml_workspace *ws, const int32_t *tokens, const int32_t *targets, int B, int T,
                      const ml_layout *G, float scale, ml_lm_stats *stats) {
    const ml_model_config *c = &m->cfg;
    const int N = B * T, D = c->d_model, F = c->d_mlp, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim,
              QD = H * hd, QKV = (H + 2 * KV) * hd, V = c->vocab_size, L = c->n_layers;
    const size_t Nmax = (size_t)ws->wc.B_max * ws->wc.T_max;
    const float eps = (float)c->rms_eps;
    ml_layout P;
    ml_model_layout(m, m->params, &P);
    ws->B = B;
    ws->T = T;
    ws->has_targets = targets != NULL;

    ml_prof_begin("model.forward");
    ml_l_embed(ws->resid, P.embed, tokens, N, D);
    ml_l_rmsnorm(ws->ln1, ws->rstd1, ws->resid, P.layer[0].ln1, N, D, eps);
    for (int l = 0; l < L; l++) {
        const ml_layer_ptrs *w = &P.layer[l];
        const size_t o = (size_t)l * Nmax;
        float *x = ws->resid + o * D, *ln1 = ws->ln1 + o * D, *qkv = ws->qkv + o * QKV, *atty = ws->atty + o * QD,
              *attn_out = ws->attn_out + o * D, *mid = ws->resid_mid + o * D, *ln2 = ws->ln2 + o * D,
              *gu = ws->gu + o * 2 * F, *h = ws->hpost + o * F, *mlp_out = ws->mlp_out + o * D;
        ml_linear(qkv, ln1, w->wqkv, N, QKV, D);
        ml_l_rope(qkv, B, T, H, hd, QKV, ws->cos_t, ws->sin_t, 0);
        ml_l_rope(qkv + QD, B, T, KV, hd, QKV, ws->cos_t, ws->sin_t, 0);
        ml_prof_begin("model.attention");
        ml_l_attention(ws, atty, ws->lse + o * H, qkv, B, T);
        ml_prof_end("model.attention", 4.0 * B * H * hd * (T * (T + 1) / 2.0), 0);
        ml_linear(attn_out, atty, w->wo, N, D, QD);
        ml_l_residual_rmsnorm(mid, ln2, ws->rstd2 + o, x, attn_out, w->ln2, N, D, eps);
        ml_linear(gu, ln2, w->wgu, N, 2 * F, D);
        ml_l_swiglu(h, gu, N, F);
        if (ws->replace[l]) memcpy(h, ws->replace[l], sizeof(float) * (size_t)N * F);
        if (ws->hook_fn) {
            int rc = ws->hook_fn(ws->hook_ctx, l, h, N, F);
            if (rc != ML_OK) {
                ml_prof_end("model.forward", 0, 0);
                return ml_error_trace(rc, __FILE__, __LINE__, __func__);
            }
        }
        ml_linear(mlp_out, h, w->wdown, N, D, F);
        const int last = l == L - 1;
        ml_l_residual_rmsnorm(x + Nmax * D, last ? ws->lnf : ws->ln1 + (o + Nmax) * D,
                              last ? ws->rstdf : ws->rstd1 + o + Nmax, mid, mlp_out,
                              last ? P.lnf : P.layer[l + 1].ln1, N, D, eps);
    }
    ml_prof_end("model.forward", 2.0 * N * (double)ml_model_n_nonembedding(c), 0);
    if (!targets) return ML_OK;

    ml_prof_begin("model.lm_head");
    const int C = ws->wc.lm_chunk;
    for (int r0 = 0; r0 < N; r0 += C) {
        const int cr = N - r0 < C ? N - r0 : C;
        const float *xf = ws->lnf + (size_t)r0 * D;
        ml_linear(ws->logits, xf, P.lm_head, cr, V, D);
        ml_l_cross_entropy(ws->logits, targets + r0, ws->tok_loss + r0, ws->tok_correct + r0, cr, V, G ? scale : 0.0f);
        if (G) ml_linear_backward(ws->dtmp + (size_t)r0 * D, G->lm_head, ws->logits, xf, P.lm_head, cr, V, D);
    }
    ml_lm_stats st = {0, 0, 0};
    for (int n = 0; n < N; n++) /* in row order: independent of the thread count */
        if (targets[n] >= 0) {
            st.loss_sum += ws->tok_loss[n];
            st.n_targets++;
            st.n_correct += ws->tok_correct[n];
        }
    ml_prof_end("model.lm_head", (G ? 6.0 : 2.0) * N * (double)D * V, 0);
    if (stats) *stats = st;
    return ML_OK;
}

int ml_model_forward(const ml_model *m, ml_workspace *ws, const int32_t *tokens, const int32_t *targets, int B,
                     int T, ml_lm_stats *stats) {
    ML_CHECK(ml_check_batch(m, ws, tokens, targets, B, T));
    ML_CHECK(ml_forward(m, ws, tokens, targets, B, T, NULL, 0.0f, stats));
    return ML_OK;
}

int ml_model_forward_backward(ml_model *m, ml_workspace *ws, const int32_t *tokens, const int32_t *targets, int B,
                              int T, double grad_scale, ml_lm_stats *stats) {
    ML_CHECK(ml_check_batch(m, ws, tokens, targets, B, T));
    if (!ws->wc.grad) return ML_FAIL(ML_ERR_ARG, "model backward: the workspace was created without grad buffers");
    if (!targets) return ML_FAIL(ML_ERR_ARG, "model backward: targets are required");
    if (!m->grads) return ML_FAIL(ML_ERR_ARG, "model backward: gradients not enabled (ml_model_enable_grads)");
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (ws->replace[l] || ws->hook_fn)
            return ML_FAIL(ML_ERR_UNSUPPORTED, "model backward: MLP hooks/replacements are forward-only; clear them");
    const ml_model_config *c = &m->cfg;
    const int N = B * T, D = c->d_model, F = c->d_mlp, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim,
              QD = H * hd, QKV = (H + 2 * KV) * hd, L = c->n_layers;
    const size_t Nmax = (size_t)ws->wc.B_max * ws->wc.T_max;
    int64_t nvalid = 0;
    for (int i = 0; i < N; i++) nvalid += targets[i] >= 0;
    const float scale = grad_scale > 0 ? (float)grad_scale : nvalid > 0 ? 1.0f / (float)nvalid : 0.0f;
    ml_layout P, G;
    ml_model_layout(m, m->params, &P);
    ml_model_layout(m, m->grads, &G);
    if (scale == 0.0f) return ml_forward(m, ws, tokens, targets, B, T, NULL, 0.0f, stats); /* nothing to learn */
    ML_CHECK(ml_forward(m, ws, tokens, targets, B, T, &G, scale, stats));

    ml_prof_begin("model.backward");
    float *dres = ws->dres, *dtmp = ws->dtmp;
    ml_l_rmsnorm_backward(dres, G.lnf, ws->dwpart, dtmp, ws->resid + (size_t)L * Nmax * D, P.lnf, ws->rstdf, N, D, 0);
    for (int l = L - 1; l >= 0; l--) {
        const ml_layer_ptrs *w = &P.layer[l], *gw = &G.layer[l];
        const size_t o = (size_t)l * Nmax;
        float *x = ws->resid + o * D, *ln1 = ws->ln1 + o * D, *qkv = ws->qkv + o * QKV, *atty = ws->atty + o * QD,
              *mid = ws->resid_mid + o * D, *ln2 = ws->ln2 + o * D, *gu = ws->gu + o * 2 * F,
              *h = ws->hpost + o * F;
        /* MLP: x_next = mid + down(h); h is overwritten by dh, gu by dgu */
        ml_linear_backward(h, gw->wdown, dres, h, w->wdown, N, D, F); /* dW reads h before dX overwrites it */
        ml_l_swiglu_backward(gu, h, N, F);
        ml_linear_backward(dtmp, gw->wgu, gu, ln2, w->wgu, N, 2 * F, D);
        ml_l_rmsnorm_backward(dres, gw->ln2, ws->dwpart, dtmp, mid, w->ln2, ws->rstd2 + o, N, D, 1);
        /* attention: mid = x + o_proj(atty) */
        ml_linear_backward(ws->datty, gw->wo, dres, atty, w->wo, N, D, QD);
        ml_prof_begin("model.attention_backward");
        ml_l_attention_backward(ws, ws->dqkv, ws->datty, atty, ws->lse + o * H, qkv, B, T);
        ml_prof_end("model.attention_backward", 8.0 * B * H * hd * (T * (T + 1) / 2.0), 0);
        ml_l_rope(ws->dqkv, B, T, H, hd, QKV, ws->cos_t, ws->sin_t, 1);
        ml_l_rope(ws->dqkv + QD, B, T, KV, hd, QKV, ws->cos_t, ws->sin_t, 1);
        ml_linear_backward(dtmp, gw->wqkv, ws->dqkv, ln1, w->wqkv, N, QKV, D);
        ml_l_rmsnorm_backward(dres, gw->ln1, ws->dwpart, dtmp, x, w->ln1, ws->rstd1 + o, N, D, 1);
    }
    ml_l_embed_backward(G.embed, dres, tokens, N, D);
    ml_prof_end("model.backward", 4.0 * N * (double)ml_model_n_nonembedding(c), 0);
    return ML_OK;
}
