/* Training from a model's forward pass (`mergelens sae --model`): against
 * the independent route `mergelens capture` + `mergelens sae ACTS.h5` over the
 * same windows (same SAEs, examples and token windows, bitwise), 1 rank vs
 * all ranks (within float summation order), the `source` attribute, and bad
 * inputs (one-line messages, nothing leaked, no output file). */
#include <math.h>

#include "../capture/fixtures.h"
#include "sae_fixture.h"
#include "mergelens/sae.h"

#define HOOK "blocks.1.mlp.hook_post"

typedef struct {
    char dir[1024], a[1100], b[1100], ckpt[1100], doms[2300];
} env;

static void env_make(env *e, const char *name) {
    snprintf(e->dir, sizeof e->dir, "%s", ml_test_dir(name));
    snprintf(e->a, sizeof e->a, "%s/a.h5", e->dir);
    snprintf(e->b, sizeof e->b, "%s/b.h5", e->dir);
    snprintf(e->ckpt, sizeof e->ckpt, "%s/model.h5", e->dir);
    snprintf(e->doms, sizeof e->doms, "%s,%s", e->a, e->b);
    /* about 4000 train tokens per store: 250 windows of 16 */
    fx_store_write(MPI_COMM_WORLD, e->a, "alpha", 40, 200, 6, 21, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, e->b, "beta", 40, 200, 6, 22, 1, NULL);
    fx_model_write(MPI_COMM_WORLD, e->ckpt, 9, 1, NULL);
}

/* The SAE options both routes share (3000 source rows, two epochs; blocks of 64 rows do not
 * align with forward batches of 3 windows x 16 = 48 rows; the last window is cut). */
#define SAE_OPTS                                                                                                     \
    "--hook", HOOK, "--d_sae", "48", "--l1", "0.01,0.05", "--lr", "3e-3", "--batch", "64", "--tokens", "6000",       \
        "--block_rows", "64", "--buffer_blocks", "4", "--median_rows", "256", "--resample_every", "30",             \
        "--dead_window", "1500", "--log_every", "10", "--eval_rows", "1000", "--top_examples", "4",                  \
        "--quantile_examples", "3", "--ctx_left", "5", "--ctx_right", "2"
#define MODEL_OPTS(e) "--model", (e)->ckpt, "--domains", (e)->doms, "--model_tokens", "3000", "--context", "16", \
                      "--model_batch", "3", "--window_seed", "5"

static int run_sae(MPI_Comm comm, const char *const *args) { return fx_cmd(ml_cmd_sae, comm, args); }

static void grid_path(char *buf, size_t cap, const char *dir, const char *name, const char *l1) {
    snprintf(buf, cap, "%s/saes/%s-l1_%s.h5", dir, name, l1);
}

/* A whole dataset of any rank as `t`; *n elements. */
static void *read_any(ml_h5 *h, const char *ds, ml_dtype t, size_t *n) {
    int rk = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ML_ASSERT_OK(ml_h5_shape(h, ds, &rk, dims, NULL));
    *n = 1;
    for (int i = 0; i < rk; i++) *n *= (size_t)dims[i];
    void *buf = malloc(ml_dtype_size(t) * (*n ? *n : 1));
    ML_ASSERT_OK(ml_h5_read_tensor(h, ds, t, rk, dims, buf));
    return buf;
}

/* max |a - b| / max(1e-30, max |b|) over a dataset of both files. */
static double rel_diff(const char *pa, const char *pb, const char *ds, ml_dtype t) {
    ml_h5 *ha = NULL, *hb = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pa, "mergelens.sae", 1, 1, &ha));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pb, "mergelens.sae", 1, 1, &hb));
    size_t na = 0, nb = 0;
    void *x = read_any(ha, ds, t, &na), *y = read_any(hb, ds, t, &nb);
    assert_true(na == nb);
    double md = 0, mb = 1e-30;
    for (size_t i = 0; i < na; i++) {
        double u = t == ML_F32 ? ((float *)x)[i] : t == ML_I64 ? (double)((int64_t *)x)[i] : (double)((int32_t *)x)[i];
        double v = t == ML_F32 ? ((float *)y)[i] : t == ML_I64 ? (double)((int64_t *)y)[i] : (double)((int32_t *)y)[i];
        if (fabs(u - v) > md) md = fabs(u - v);
        if (fabs(v) > mb) mb = fabs(v);
    }
    free(x);
    free(y);
    ML_ASSERT_OK(ml_h5_close(&ha));
    ML_ASSERT_OK(ml_h5_close(&hb));
    return md / mb;
}

static void test_equivalence(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_forward_eq");
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char acts[1200], out_f[1200], out_m[1200];
    snprintf(acts, sizeof acts, "%s/acts/m.h5", e.dir);
    snprintf(out_f, sizeof out_f, "%s/saes/file.h5", e.dir);
    snprintf(out_m, sizeof out_m, "%s/saes/fwd.h5", e.dir);
    long live = ml_alloc_live();
    const char *cap[] = {"capture", e.ckpt, "--domains", e.doms, "--tokens", "3000", "--context", "16", "--batch", "3",
                         "--seed", "5", "--hook", HOOK, "--out", acts, NULL};
    ML_ASSERT_OK(fx_cmd(ml_cmd_capture, MPI_COMM_WORLD, cap));
    const char *from_file[] = {"sae", acts, "--out", out_f, SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(MPI_COMM_WORLD, from_file));
    const char *from_model[] = {"sae", "--out", out_m, SAE_OPTS, MODEL_OPTS(&e), NULL};
    double t0 = MPI_Wtime();
    ML_ASSERT_OK(run_sae(MPI_COMM_WORLD, from_model));
    double secs = MPI_Wtime() - t0;
    assert_int_equal(ml_alloc_live(), live);

    const char *l1s[2] = {"0.01", "0.05"};
    const char *f32[] = {"/W_enc", "/b_enc", "/W_dec", "/b_dec", "/features/top_acts", "/features/top_window_acts",
                         "/features/quantile_acts", "/features/max_act"};
    const char *i64[] = {"/features/top_rows", "/features/quantile_rows", "/features/count", "/metrics/resampled",
                         "/metrics/tokens_since_fired"};
    const char *i32[] = {"/features/top_tokens", "/features/quantile_tokens"};
    double worst = 0;
    for (int g = 0; g < 2; g++) {
        char pf[1300], pm[1300];
        grid_path(pf, sizeof pf, e.dir, "file", l1s[g]);
        grid_path(pm, sizeof pm, e.dir, "fwd", l1s[g]);
        for (size_t k = 0; k < sizeof f32 / sizeof *f32; k++) {
            double d = rel_diff(pm, pf, f32[k], ML_F32);
            if (d > worst) worst = d;
            if (d > 1e-6) fail_msg("%s %s differs from the file route by %.3g relative", pm, f32[k], d);
        }
        for (size_t k = 0; k < sizeof i64 / sizeof *i64; k++)
            if (rel_diff(pm, pf, i64[k], ML_I64) != 0) fail_msg("%s %s differs from the file route", pm, i64[k]);
        for (size_t k = 0; k < sizeof i32 / sizeof *i32; k++)
            if (rel_diff(pm, pf, i32[k], ML_I32) != 0) fail_msg("%s %s differs from the file route", pm, i32[k]);
        /* the example windows hold real tokens: the centre of each top example is the captured token of its row */
        ml_h5 *ha = NULL, *hs = NULL;
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, acts, ML_CAPTURE_FORMAT, 1, 1, &ha));
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pm, "mergelens.sae", 1, 1, &hs));
        hsize_t n = 0, S = 0, K = 0;
        int32_t *tok = fx_read_all(ha, "/tokens", ML_I32, &n, NULL);
        int64_t *rows = fx_read_all(hs, "/features/top_rows", ML_I64, &S, &K);
        size_t ntt = 0;
        int32_t *tt = read_any(hs, "/features/top_tokens", ML_I32, &ntt);
        assert_int_equal(ntt, S * K * 8);
        int checked = 0;
        for (hsize_t i = 0; i < S * K; i++)
            if (rows[i] >= 0) {
                assert_int_equal(tt[i * 8 + 5], tok[rows[i]]);
                checked++;
            }
        assert_true(checked > 20);
        /* held-out rows: 3000 - 750 (10%, at least min(2048, 25%)) rounded down to whole windows of 16 = 2240;
         * every example comes from them, on both routes; the forward route states it in `heldout` */
        for (hsize_t i = 0; i < S * K; i++)
            if (rows[i] >= 0 && rows[i] < 2240) fail_msg("%s: top example row %lld is a training row", pm, (long long)rows[i]);
        ml_h5 *hf = NULL;
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pf, "mergelens.sae", 1, 1, &hf));
        const char *ra[] = {"train_row_start", "train_row_end", "heldout_row_start", "heldout_row_end"};
        const int64_t want_f[] = {0, 2240, 2240, 3000};
        for (int q = 0; q < 4; q++) {
            int64_t vf = -7, vm = -7;
            ML_ASSERT_OK(ml_h5_get_attr_int(hf, "/", ra[q], &vf));
            ML_ASSERT_OK(ml_h5_get_attr_int(hs, "/", ra[q], &vm));
            if (vf != want_f[q] || vm != -1)
                fail_msg("%s: file route %lld (want %lld), forward route %lld (want -1)", ra[q], (long long)vf,
                         (long long)want_f[q], (long long)vm);
        }
        int64_t er0 = 0;
        ML_ASSERT_OK(ml_h5_get_attr_int(hs, "/metrics/eval", "row0", &er0));
        assert_int_equal(er0, 2240);
        char *ho = NULL;
        ML_ASSERT_OK(ml_h5_get_attr_str(hs, "/", "heldout", &ho));
        if (!strstr(ho, "held out rows [2240, 3000)")) fail_msg("forward `heldout`: %s", ho);
        ml_free(ho);
        ML_ASSERT_OK(ml_h5_close(&hf));
        free(tok);
        free(rows);
        free(tt);
        ML_ASSERT_OK(ml_h5_close(&ha));
        ML_ASSERT_OK(ml_h5_close(&hs));
        /* where the rows came from */
        char *sm = sae_attr_str(pm, "source"), *sf = sae_attr_str(pf, "source"), *mm = sae_attr_str(pm, "model"),
             *hk = sae_attr_str(pm, "hook_name");
        char want[4000];
        snprintf(want, sizeof want,
                 "{\"kind\":\"forward\",\"acts\":\"\",\"model\":\"%s\",\"domains\":[\"%s\",\"%s\"],\"n_tokens\":3000,"
                 "\"context\":16,\"split\":\"train\",\"order\":\"seeded\",\"seed\":5,\"batch\":3}",
                 e.ckpt, e.a, e.b);
        assert_string_equal(sm, want);
        snprintf(want, sizeof want,
                 "{\"kind\":\"activations\",\"acts\":\"%s\",\"model\":\"%s\",\"domains\":[\"%s\",\"%s\"],"
                 "\"n_tokens\":3000,\"context\":16,\"split\":\"train\",\"order\":\"seeded\",\"seed\":5,\"batch\":0}",
                 acts, e.ckpt, e.a, e.b);
        assert_string_equal(sf, want);
        assert_string_equal(mm, e.ckpt);
        assert_string_equal(hk, HOOK);
        ml_free(sm);
        ml_free(sf);
        ml_free(mm);
        ml_free(hk);
    }
    if (rank == 0) fprintf(stderr, "forward vs file route: max relative difference %.3g (%.1f s for the forward run)\n",
                           worst, secs);
}

/* The top examples of a and b hold the same rows and token windows, except that two examples whose
 * activations are within 1e-5 relative (a near tie, e.g. two windows of the same tokens) may swap slots:
 * their order is decided by float rounding, which depends on the rank count. Returns the swaps. */
static int same_examples_up_to_ties(const char *pa, const char *pb, int S, int K, int W) {
    ml_h5 *ha = NULL, *hb = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pa, "mergelens.sae", 1, 1, &ha));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pb, "mergelens.sae", 1, 1, &hb));
    size_t n = 0;
    int64_t *ra = read_any(ha, "/features/top_rows", ML_I64, &n), *rb = read_any(hb, "/features/top_rows", ML_I64, &n);
    assert_true(n == (size_t)S * K);
    float *aa = read_any(ha, "/features/top_acts", ML_F32, &n), *ab = read_any(hb, "/features/top_acts", ML_F32, &n);
    int32_t *ta = read_any(ha, "/features/top_tokens", ML_I32, &n), *tb = read_any(hb, "/features/top_tokens", ML_I32, &n);
    assert_true(n == (size_t)S * K * W);
    int swaps = 0;
    for (int j = 0; j < S; j++)
        for (int q = 0; q < K; q++) {
            size_t i = (size_t)j * K + q, m = i;
            if (ra[i] != rb[i]) {
                int found = 0;
                for (int d = -1; d <= 1 && !found; d += 2) {
                    if (q + d < 0 || q + d >= K) continue;
                    m = i + d;
                    found = rb[m] == ra[i] && fabsf(aa[i] - ab[m]) <= 1e-5f * fabsf(aa[i]) &&
                            fabsf(aa[i] - aa[m]) <= 1e-5f * fabsf(aa[i]);
                }
                if (!found) fail_msg("%s: feature %d example %d is row %lld, %s has row %lld (no near tie)", pa, j, q,
                                     (long long)ra[i], pb, (long long)rb[i]);
                swaps++;
            }
            if (memcmp(ta + i * W, tb + m * W, sizeof(int32_t) * W))
                fail_msg("%s: feature %d example %d (row %lld): token window differs from %s", pa, j, q,
                         (long long)ra[i], pb);
        }
    free(ra);
    free(rb);
    free(aa);
    free(ab);
    free(ta);
    free(tb);
    ML_ASSERT_OK(ml_h5_close(&ha));
    ML_ASSERT_OK(ml_h5_close(&hb));
    return swaps;
}

static void test_ranks(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_forward_ranks");
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    char out_w[1200], out_s[1200];
    snprintf(out_w, sizeof out_w, "%s/saes/world.h5", e.dir);
    snprintf(out_s, sizeof out_s, "%s/saes/self.h5", e.dir);
    /* --seed_mode exact: with the derived seeds of this configuration one latent's pre-activation sits at 0
     * within rounding and Adam amplifies the flip (W_enc 7.8e-4 relative between 1 and 2 ranks, the effect
     * docs/modules/sae.md describes); the shared seed keeps this test about the row source. */
    const char *world[] = {"sae", "--out", out_w, SAE_OPTS, MODEL_OPTS(&e), "--seed_mode", "exact", NULL};
    ML_ASSERT_OK(run_sae(MPI_COMM_WORLD, world));
    if (rank == 0) {
        const char *self[] = {"sae", "--out", out_s, SAE_OPTS, MODEL_OPTS(&e), "--seed_mode", "exact", NULL};
        ML_ASSERT_OK(run_sae(MPI_COMM_SELF, self));
        const char *l1s[2] = {"0.01", "0.05"};
        double worst = 0;
        int swaps = 0;
        for (int g = 0; g < 2; g++) {
            char pw[1300], ps[1300];
            grid_path(pw, sizeof pw, e.dir, "world", l1s[g]);
            grid_path(ps, sizeof ps, e.dir, "self", l1s[g]);
            const char *ds[] = {"/W_enc", "/b_enc", "/W_dec", "/b_dec", "/features/top_acts"};
            for (size_t k = 0; k < sizeof ds / sizeof *ds; k++) {
                double d = rel_diff(pw, ps, ds[k], ML_F32);
                if (d > worst) worst = d;
                if (d > 1e-5) fail_msg("%d ranks vs 1: %s differs by %.3g relative", P, ds[k], d);
            }
            swaps += same_examples_up_to_ties(pw, ps, 48, 4, 8);
        }
        fprintf(stderr, "%d ranks vs 1 rank: max relative difference %.3g, %d near-tied examples swapped\n", P, worst,
                swaps);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* The call fails on every rank with a one-line message holding `text` and leaves no file. */
static void expect_fail(const char *const *args, const char *text, const char *out) {
    long live = ml_alloc_live();
    ml_error_clear();
    int rc = run_sae(MPI_COMM_WORLD, args);
    if (rc == ML_OK) fail_msg("expected a failure mentioning '%s'", text);
    const char *msg = ml_error_message();
    if (!strstr(msg, text)) fail_msg("message '%s' lacks '%s'", msg, text);
    if (strchr(msg, '\n')) fail_msg("message '%s' is not one line", msg);
    assert_int_equal(ml_alloc_live(), live);
    assert_int_equal(access(out, F_OK), -1);
    ml_error_clear();
}

static void test_errors(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_forward_err");
    char out[1200], missing[1200], acts[1200];
    snprintf(out, sizeof out, "%s/saes/x.h5", e.dir);
    snprintf(missing, sizeof missing, "%s/models/none.h5", e.dir);
    snprintf(acts, sizeof acts, "%s/acts.h5", e.dir);
    const char *bad_hook[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100",
                              "--hook", "blocks.1.mlp.hook_bogus", NULL};
    expect_fail(bad_hook, "blocks.1.mlp.hook_bogus", out);
    const char *bad_layer[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100",
                               "--hook", "blocks.7.mlp.hook_post", NULL};
    expect_fail(bad_layer, "blocks.7.mlp.hook_post", out);
    const char *short_hook[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100",
                                "--hook", "mlp.hook_post", NULL};
    expect_fail(short_hook, "blocks.<i>.", out);
    const char *no_model[] = {"sae", "--out", out, "--model", missing, "--domains", e.doms, "--tokens", "100", NULL};
    expect_fail(no_model, missing, out);
    const char *both[] = {"sae", acts, "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100", NULL};
    expect_fail(both, "not both", out);
    const char *no_doms[] = {"sae", "--out", out, "--model", e.ckpt, "--tokens", "100", NULL};
    expect_fail(no_doms, "--domains", out);
    const char *no_tokens[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, NULL};
    expect_fail(no_tokens, "--tokens", out);
    const char *doms_only[] = {"sae", acts, "--out", out, "--domains", e.doms, NULL};
    expect_fail(doms_only, "--domains chooses the windows of --model", out);
    const char *long_ctx[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100",
                              "--context", "64", NULL};
    expect_fail(long_ctx, "max_context", out);
    const char *too_many[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "100000",
                              "--context", "16", NULL};
    expect_fail(too_many, e.a, out);
}

/* Making the n-th allocation of a small forward-route run fail, for every n, returns
 * ML_ERR_NOMEM, leaks nothing and leaves no file (one rank: the paths are the same on more). */
static void test_alloc(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_forward_alloc");
    int P;
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    if (P > 1) return;
    char out[1200];
    snprintf(out, sizeof out, "%s/x.h5", e.dir);
    const char *args[] = {"sae", "--out", out, "--model", e.ckpt, "--domains", e.doms, "--tokens", "200",
                          "--context", "8", "--model_batch", "2", "--hook", HOOK, "--d_sae", "16", "--batch", "32",
                          "--block_rows", "32", "--buffer_blocks", "2", "--median_rows", "64", "--log_every", "2",
                          "--eval_rows", "64", "--top_examples", "2", "--quantile_examples", "1", "--ctx_left", "2",
                          "--ctx_right", "1", NULL};
    ml_log_set_level(ML_LOG_ERROR);
    long n, points = 0;
    int completed = 0;
    for (n = 1; n < 5000 && !completed; n++) {
        long live = ml_alloc_live();
        ml_alloc_fail_at(n);
        int rc = run_sae(MPI_COMM_SELF, args);
        ml_alloc_fail_at(0);
        if (rc == ML_OK) completed = 1;
        else {
            points++;
            if (rc != ML_ERR_NOMEM && !(rc == ML_ERR_HDF5 && strstr(ml_error_message(), "cannot list group")))
                fail_msg("failing allocation %ld: %s (%s)", n, ml_status_name(rc), ml_error_message());
            assert_int_equal(access(out, F_OK), -1);
        }
        if (ml_alloc_live() != live) fail_msg("failing allocation %ld leaks %ld blocks", n, ml_alloc_live() - live);
        ml_error_clear();
    }
    ml_log_set_level(ML_LOG_WARN);
    assert_true(completed);
    printf("  forward route: %ld allocation failure points, no leaks\n", points);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_errors), cmocka_unit_test(test_equivalence),
                                       cmocka_unit_test(test_ranks), cmocka_unit_test(test_alloc)};
    return ml_test_run(argc, argv, "sae_forward", tests, sizeof tests / sizeof tests[0]);
}
