/* CE loss recovered: an exact ("identity") SAE recovers 1, an all-zero SAE
 * 0; L_clean and L_zero agree with forward passes run here (L_zero through
 * ml_workspace_set_mlp_replacement, not the hook); an SAE reconstructing
 * x / 2 agrees with splicing x / 2 by replacement; the result does not
 * depend on the number of ranks; `mergelens sae-eval` prints and writes the
 * same numbers; bad SAEs fail with one-line messages. */
#include "fixtures.h"
#include "mergelens/sae.h"

#define T_CTX 8
#define NWIN 10
#define F 24

/* d_sae = 2F, W_enc = [I, -I], W_dec = s [I; -I], ReLU: x_hat = s (relu(x) - relu(-x)) = s x. */
static ml_sae *scaled_identity_sae(float s, const char *hook) {
    ml_sae *sae = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, F, 2 * F, 0, &sae));
    for (int j = 0; j < F; j++) {
        sae->W_enc_t[(size_t)j * F + j] = 1;
        sae->W_enc_t[(size_t)(F + j) * F + j] = -1;
        sae->W_dec[(size_t)j * F + j] = s;
        sae->W_dec[(size_t)(F + j) * F + j] = -s;
    }
    snprintf(sae->hook_name, sizeof sae->hook_name, "%s", hook);
    return sae;
}

/* Mean CE over the plan's windows, one window per forward pass: normal, with
 * layer `layer`'s MLP hidden replaced by zeros (scale 0) or by scale * its clean value. */
static void reference_losses(const ml_model *m, const ml_window_spec *spec, int layer, float scale, double *clean,
                             double *replaced) {
    ml_window_plan *p = NULL;
    ML_ASSERT_OK(ml_window_plan_create(MPI_COMM_SELF, spec, NWIN, 40, &p));
    ml_workspace *ws = NULL;
    ml_workspace_config wc = {1, T_CTX, 0, 0, 0};
    ML_ASSERT_OK(ml_workspace_create(&m->cfg, &wc, &ws));
    int32_t win[T_CTX + 1], tok[T_CTX], tgt[T_CTX];
    float h[T_CTX * F];
    double lc = 0, lr = 0;
    int64_t n = 0;
    for (int64_t w = 0; w < NWIN; w++) {
        ML_ASSERT_OK(ml_window_plan_read(p, w, win, NULL));
        ml_windows_split(win, 1, T_CTX, tok, tgt);
        ml_lm_stats st;
        ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, 1, T_CTX, &st));
        lc += st.loss_sum;
        n += st.n_targets;
        char hook[64];
        snprintf(hook, sizeof hook, "blocks.%d.mlp.hook_post", layer);
        ml_view v;
        ML_ASSERT_OK(ml_workspace_hook(ws, hook, &v));
        for (int i = 0; i < T_CTX * F; i++) h[i] = scale * v.data[i];
        ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, layer, h));
        ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, 1, T_CTX, &st));
        ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, layer, NULL));
        lr += st.loss_sum;
    }
    *clean = lc / (double)n;
    *replaced = lr / (double)n;
    ml_workspace_destroy(&ws);
    ml_window_plan_destroy(&p);
}

static void test_ce(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *dir = ml_test_dir("capture_ce");
    char a[1100], b[1100], ckpt[1100];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    snprintf(ckpt, sizeof ckpt, "%s/model.h5", dir);
    fx_store_write(MPI_COMM_WORLD, a, "alpha", 40, 10, 12, 21, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, b, "beta", 40, 10, 12, 22, 1, NULL);
    ml_model *m = NULL;
    fx_model_write(MPI_COMM_WORLD, ckpt, 4, 3, &m);
    const char *paths[2] = {a, b};
    ml_window_spec spec = {2, paths, NULL, "val", T_CTX, 0, 8};

    for (int layer = 0; layer < 2; layer++) {
        char hook[64];
        snprintf(hook, sizeof hook, "blocks.%d.mlp.hook_post", layer);
        ml_sae *ident = scaled_identity_sae(1, hook), *zero = NULL, *half = scaled_identity_sae(0.5f, hook);
        ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, F, 64, 0, &zero));
        ml_ce_result ri, rz, rh, rself;
        ML_ASSERT_OK(ml_capture_ce_recovered(MPI_COMM_WORLD, m, ident, layer, &spec, NWIN, 3, &ri));
        ML_ASSERT_OK(ml_capture_ce_recovered(MPI_COMM_WORLD, m, zero, layer, &spec, NWIN, 3, &rz));
        ML_ASSERT_OK(ml_capture_ce_recovered(MPI_COMM_WORLD, m, half, layer, &spec, NWIN, 3, &rh));
        ML_ASSERT_OK(ml_capture_ce_recovered(MPI_COMM_SELF, m, half, layer, &spec, NWIN, 3, &rself));
        double lc, lz, lh;
        reference_losses(m, &spec, layer, 0.0f, &lc, &lz);
        reference_losses(m, &spec, layer, 0.5f, &lc, &lh);
        if (rank == 0)
            printf("layer %d: L_clean %.6f L_zero %.6f L_half %.6f; CE recovered identity %.8f zero %.8f half %.6f "
                   "(reference %.6f)\n",
                   layer, ri.total.loss_clean, ri.total.loss_zero, rh.total.loss_spliced, ri.total.ce_recovered,
                   rz.total.ce_recovered, rh.total.ce_recovered, (lz - lh) / (lz - lc));
        assert_true(fabs(lz - lc) > 0.01); /* the ablation matters, so the ratio is well conditioned */
        assert_true(fabs(ri.total.ce_recovered - 1) < 1e-5);
        assert_true(fabs(rz.total.ce_recovered) < 1e-5);
        ML_ASSERT_CLOSE(ri.total.loss_clean, lc, 1e-5);
        ML_ASSERT_CLOSE(ri.total.loss_zero, lz, 1e-5);
        ML_ASSERT_CLOSE(rh.total.loss_spliced, lh, 1e-5);
        ML_ASSERT_CLOSE(rh.total.ce_recovered, (lz - lh) / (lz - lc), 1e-4);
        /* rank-count independence (up to the order of the final sums) */
        ML_ASSERT_CLOSE(rh.total.ce_recovered, rself.total.ce_recovered, 1e-12);
        ML_ASSERT_CLOSE(rh.total.loss_clean, rself.total.loss_clean, 1e-12);
        /* bookkeeping: equal shares, T targets per window, per-domain sums add up */
        assert_int_equal(ri.n_domains, 2);
        assert_int_equal(ri.total.windows, NWIN);
        assert_int_equal(ri.total.targets, NWIN * T_CTX);
        assert_int_equal(ri.domain[0].windows, NWIN / 2);
        assert_int_equal(ri.domain[1].windows, NWIN / 2);
        ML_ASSERT_CLOSE((ri.domain[0].loss_zero + ri.domain[1].loss_zero) / 2, ri.total.loss_zero, 1e-12);
        assert_true(fabs(ri.domain[1].ce_recovered - 1) < 1e-5);
        ml_sae_destroy(&ident);
        ml_sae_destroy(&zero);
        ml_sae_destroy(&half);
    }

    /* sae-eval: an SAE file recording the model; JSON on stdout and a results file */
    ml_sae *half = scaled_identity_sae(0.5f, "blocks.1.mlp.hook_post");
    snprintf(half->model, sizeof half->model, "%s", ckpt);
    char sae_path[1200], res[1200], doms[2300];
    snprintf(sae_path, sizeof sae_path, "%s/saes/half.h5", dir);
    snprintf(res, sizeof res, "%s/eval/half.h5", dir);
    snprintf(doms, sizeof doms, "%s,%s", a, b);
    char saes_dir[1200];
    snprintf(saes_dir, sizeof saes_dir, "%s/saes", dir);
    if (rank == 0) ML_ASSERT_OK(ml_mkdirs(saes_dir));
    MPI_Barrier(MPI_COMM_WORLD);
    ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, sae_path, half, NULL, NULL, NULL));
    const char *args[] = {"sae-eval", sae_path, "--domains", doms, "--windows", "10", "--context", "8", "--batch", "3",
                          "--seed", "8", "--out", res, "--json", NULL};
    ML_ASSERT_OK(fx_cmd(ml_cmd_sae_eval, MPI_COMM_WORLD, args));
    const char *args_table[] = {"sae-eval", sae_path, "--model", ckpt, "--domains", doms, "--windows", "10",
                                "--context", "8", "--batch", "3", "--seed", "8", NULL};
    ML_ASSERT_OK(fx_cmd(ml_cmd_sae_eval, MPI_COMM_WORLD, args_table));
    ml_ce_result r;
    ML_ASSERT_OK(ml_capture_ce_recovered(MPI_COMM_WORLD, m, half, 1, &spec, NWIN, 3, &r));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, res, ML_SAE_EVAL_FORMAT, 1, 1, &h));
    double v;
    int64_t n;
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "ce_recovered", &v));
    assert_true(v == r.total.ce_recovered);
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "loss_zero", &v));
    assert_true(v == r.total.loss_zero);
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "n_targets", &n));
    assert_int_equal(n, NWIN * T_CTX);
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "hook_name", &s));
    assert_string_equal(s, "blocks.1.mlp.hook_post");
    ml_free(s);
    double per[2];
    hsize_t d2[1] = {2};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/per_domain/ce_recovered", ML_F64, 1, d2, per));
    assert_true(per[0] == r.domain[0].ce_recovered && per[1] == r.domain[1].ce_recovered);
    ML_ASSERT_OK(ml_h5_close(&h));

    /* bad SAEs: wrong width, a hook that cannot be spliced */
    ml_sae *wide = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 16, 32, 0, &wide));
    snprintf(wide->hook_name, sizeof wide->hook_name, "blocks.0.hook_resid_pre");
    ML_ASSERT_FAILS(ml_capture_ce_recovered(MPI_COMM_WORLD, m, wide, 0, &spec, NWIN, 3, &r), ML_ERR_SHAPE,
                    "the SAE's d_in 16 differs from the model's d_mlp 24");
    int layer;
    ML_ASSERT_FAILS(ml_capture_splice_layer("blocks.0.hook_resid_pre", 2, &layer), ML_ERR_UNSUPPORTED,
                    "can only be spliced at blocks.<i>.mlp.hook_post");
    ML_ASSERT_FAILS(ml_capture_splice_layer("blocks.3.mlp.hook_post", 2, &layer), ML_ERR_ARG, "layer 3 does not exist");
    snprintf(sae_path + strlen(sae_path) - 7, 16, "wide.h5");
    ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, sae_path, wide, NULL, NULL, NULL));
    const char *args_bad[] = {"sae-eval", sae_path, "--model", ckpt, "--domains", doms, "--context", "8", NULL};
    ml_error_clear();
    assert_int_not_equal(fx_cmd(ml_cmd_sae_eval, MPI_COMM_WORLD, args_bad), ML_OK);
    assert_non_null(strstr(ml_error_message(), "can only be spliced"));
    const char *args_nomodel[] = {"sae-eval", sae_path, "--domains", doms, NULL};
    ml_error_clear();
    assert_int_not_equal(fx_cmd(ml_cmd_sae_eval, MPI_COMM_WORLD, args_nomodel), ML_OK);
    assert_non_null(strstr(ml_error_message(), "records no model; give --model"));
    ml_sae_destroy(&wide);
    ml_sae_destroy(&half);
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ce)};
    return ml_test_run(argc, argv, "capture_ce", tests, 1);
}
