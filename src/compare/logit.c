/* The logit map of one SAE side: its model checkpoint's lm_head, final
 * RMSNorm weight and (for MLP-hidden hooks) down_proj, for the logit-weight
 * cosine of `compare` / `track` (ml_logit_cosine_best).
 *
 * Legend: V vocabulary, D = hidden_size, F_mlp = intermediate_size, d = the
 * SAE's d_in.
 */
#include <stdio.h>
#include <string.h>

#include "mergelens/compare.h"
#include "mergelens/io.h"
#include "mergelens/train.h"

void ml_logit_side_free(ml_logit_side *s) {
    if (!s) return;
    if (s->owns_model) ml_model_destroy(&s->model);
    memset(s, 0, sizeof *s);
}

/* Which tensors map a hook's d-wide direction into the residual stream:
 * *down_layer >= 0 for blocks.<L>.mlp.hook_post (through that layer's
 * down_proj), -1 for residual-stream hooks; 0 if the hook has no logit map. */
static int ml_logit_hook_kind(const char *hook, int *down_layer) {
    int layer = -1, pos = 0;
    *down_layer = -1;
    if (sscanf(hook, "blocks.%d.%n", &layer, &pos) != 1 || pos <= 0 || layer < 0) return 0;
    const char *s = hook + pos;
    if (!strcmp(s, "mlp.hook_post")) {
        *down_layer = layer;
        return 1;
    }
    return !strcmp(s, "hook_resid_pre") || !strcmp(s, "hook_resid_mid") || !strcmp(s, "hook_resid_post") ||
           !strcmp(s, "hook_attn_out") || !strcmp(s, "hook_mlp_out");
}

int ml_logit_side_open(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *model_path,
                       const char *hook, const ml_logit_side *share, ml_logit_side *out) {
    memset(out, 0, sizeof *out);
    const char *hk = hook && hook[0] ? hook : sae->hook_name;
    const char *path = model_path && model_path[0] ? model_path : sae->model;
    int down_layer = -1;
    if (!ml_logit_hook_kind(hk, &down_layer)) {
        ml_warn("compare: logit cosine skipped for %s: hook '%s' is neither blocks.<L>.mlp.hook_post nor a "
                "residual-stream hook", sae_path, hk);
        return ML_OK;
    }
    if (!path[0]) {
        ml_warn("compare: logit cosine skipped: %s records no model checkpoint (give --model-a / --model-b)", sae_path);
        return ML_OK;
    }
    if (!(model_path && model_path[0]) && !ml_file_exists(path)) { /* same answer on every rank (shared files) */
        ml_warn("compare: logit cosine skipped: the model %s recorded in %s does not exist (give --model-a / "
                "--model-b)", path, sae_path);
        return ML_OK;
    }
    snprintf(out->path, sizeof out->path, "%s", path);
    if (share && share->model && !strcmp(share->path, path)) {
        out->model = share->model; /* the same checkpoint on both sides: one copy, one Gram matrix */
    } else {
        ML_CHECK(ml_checkpoint_load_model(comm, path, &out->model));
        out->owns_model = 1;
    }
    const ml_model_config *c = &out->model->cfg;
    const ml_tensor *lm = NULL, *nw = NULL, *dn = NULL;
    char name[96];
    int rc = ml_model_lookup(out->model, "lm_head.weight", &lm);
    if (rc == ML_OK) rc = ml_model_lookup(out->model, "model.norm.weight", &nw);
    if (rc == ML_OK && down_layer >= 0) {
        if (down_layer >= c->n_layers)
            rc = ML_FAIL(ML_ERR_SHAPE, "compare: hook '%s' of %s names layer %d but %s has %d layer(s)", hk, sae_path,
                         down_layer, path, c->n_layers);
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", down_layer);
        if (rc == ML_OK) rc = ml_model_lookup(out->model, name, &dn);
    }
    int64_t want = down_layer >= 0 ? c->d_mlp : c->d_model;
    if (rc == ML_OK && sae->d_in != want)
        rc = ML_FAIL(ML_ERR_SHAPE, "compare: SAE %s (hook '%s') has d_in %d but the model %s has %s %lld", sae_path, hk,
                     sae->d_in, path, down_layer >= 0 ? "intermediate_size" : "hidden_size", (long long)want);
    if (rc != ML_OK) {
        ml_logit_side_free(out);
        return rc;
    }
    if (c->n_layers > 1 && (down_layer < 0 || down_layer < c->n_layers - 1))
        ml_warn("compare: logit cosine of %s uses the direct path only (later layers of %s are left out)", sae_path,
                path);
    const float *p = out->model->params;
    out->map = (ml_logit_map){.lm_head = p + lm->offset,
                              .norm_w = p + nw->offset,
                              .down = dn ? p + dn->offset : NULL,
                              .V = c->vocab_size,
                              .D = c->d_model};
    out->dec = sae->W_dec;
    out->d = sae->d_in;
    out->ok = 1;
    return ML_OK;
}
