/* Preemption of `mergelens sae` (SIGUSR1 through the raise_at test hook, on
 * every rank count the test runs with): the interrupted run fails with the
 * one-line "interrupted by SIGUSR1: checkpoint at step S of N ..." message and
 * leaves complete = 0 files that the SAE readers refuse; a changed option
 * cannot resume (checkpoint untouched); the rerun's files equal an
 * uninterrupted run's bit for bit (h5diff of every dataset and non-root
 * attribute, the root attributes but `config` one by one). Both row sources:
 * an activations file (a grid of two SAEs, interrupted mid-interval, and
 * during the evaluation) and the model's forward pass (periodic checkpoints);
 * a topk grid with AuxK; and replicas (--replicas 2: both files checkpointed and resumed, a checkpoint
 * whose recorded seed differs from the run's refused). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "../capture/fixtures.h"
#include "sae_fixture.h"
#include "mergelens/interop.h"
#include "mergelens/sae.h"

#define HOOK "blocks.1.mlp.hook_post"
/* 6000 rows / 64 = 93 steps (two epochs of 3000 rows); records every 10; resampling of dead latents
 * (L1 1 kills some) every 10 steps up to step 83, so before and after the interruption */
#define SAE_OPTS                                                                                                     \
    "--hook", HOOK, "--d_sae", "96", "--lr", "3e-2", "--batch", "64", "--tokens", "6000", "--block_rows", "64",      \
        "--buffer_blocks", "4", "--median_rows", "256", "--resample_every", "10", "--resample_rows", "512",          \
        "--resample_stop", "0.9", "--dead_window", "1500", "--log_every", "10", "--eval_rows", "1000",              \
        "--top_examples", "4", "--quantile_examples", "3"

typedef struct {
    char dir[1024], a[1100], b[1100], model[1100], doms[2300], acts[1100];
} env;

static void env_make(env *e, const char *name, int with_acts) {
    snprintf(e->dir, sizeof e->dir, "%s", ml_test_dir(name));
    snprintf(e->a, sizeof e->a, "%s/a.h5", e->dir);
    snprintf(e->b, sizeof e->b, "%s/b.h5", e->dir);
    snprintf(e->model, sizeof e->model, "%s/model.h5", e->dir);
    snprintf(e->doms, sizeof e->doms, "%s,%s", e->a, e->b);
    snprintf(e->acts, sizeof e->acts, "%s/acts.h5", e->dir);
    fx_store_write(MPI_COMM_WORLD, e->a, "alpha", 40, 200, 6, 21, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, e->b, "beta", 40, 200, 6, 22, 1, NULL);
    fx_model_write(MPI_COMM_WORLD, e->model, 9, 1, NULL);
    if (with_acts) {
        const char *cap[] = {"capture", e->model, "--domains", e->doms, "--tokens", "3000", "--context", "16",
                             "--batch", "3", "--seed", "5", "--hook", HOOK, "--out", e->acts, NULL};
        ML_ASSERT_OK(fx_cmd(ml_cmd_capture, MPI_COMM_WORLD, cap));
    }
}

static int run_sae(const char *const *args) {
    int rc = fx_cmd(ml_cmd_sae, MPI_COMM_WORLD, args);
    return rc;
}

/* The interrupted run's state: non-zero status, the message, complete = 0 at `step` in every file. */
static void expect_interrupted(int rc, const char *const *paths, int n, int64_t step, int64_t steps) {
    if (rc != ML_ERR_INTERRUPTED) fail_msg("expected ML_ERR_INTERRUPTED, got %s: %s", ml_status_name(rc), ml_error_message());
    char want[2400];
    snprintf(want, sizeof want, "interrupted by SIGUSR1: checkpoint at step %lld of %lld written to %s", (long long)step,
             (long long)steps, paths[0]);
    if (!strstr(ml_error_message(), want)) fail_msg("message '%s' lacks '%s'", ml_error_message(), want);
    if (!strstr(ml_error_message(), "rerun the same command to resume")) fail_msg("message: %s", ml_error_message());
    assert_null(strchr(ml_error_message(), '\n'));
    ml_error_clear();
    for (int g = 0; g < n; g++) {
        assert_int_equal(sae_attr_int(paths[g], "/", "complete"), 0);
        assert_int_equal(sae_attr_int(paths[g], "/checkpoint", "step"), step);
    }
}

/* Every reader of SAE files refuses a checkpoint with one line naming it. */
static void expect_refused(const char *path, const char *dir) {
    ml_sae *s = NULL;
    int rc = ml_sae_load(path, &s);
    assert_int_equal(rc, ML_ERR_FORMAT);
    assert_null(s);
    if (!strstr(ml_error_message(), path) || !strstr(ml_error_message(), "complete = 0"))
        fail_msg("ml_sae_load: %s", ml_error_message());
    ml_error_clear();
    char out[1300];
    snprintf(out, sizeof out, "%s/export", dir);
    rc = ml_saelens_export(path, out, ML_ST_F32);
    assert_int_equal(rc, ML_ERR_FORMAT);
    if (!strstr(ml_error_message(), "complete = 0")) fail_msg("saelens export: %s", ml_error_message());
    ml_error_clear();
}

static int system_rc(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* a and b bitwise equal but for the timing profile and the `config` attribute (test options differ). */
static void expect_same(const char *a, const char *b) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        char cmd[3000];
        snprintf(cmd, sizeof cmd, "h5diff -r --exclude-path /profile --exclude-attribute / '%s' '%s' > /dev/null 2>&1", a, b);
        if (system_rc(cmd) != 0) {
            snprintf(cmd, sizeof cmd, "h5diff -r --exclude-path /profile --exclude-attribute / '%s' '%s' | grep -v '^ *0 differences' | head -20", a, b);
            (void)!system(cmd);
            fail_msg("%s differs from the uninterrupted %s", b, a);
        }
        ml_h5 *ha = NULL, *hb = NULL;
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, a, "mergelens.sae", 1, 1, &ha));
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, b, "mergelens.sae", 1, 1, &hb));
        const char *ints[] = {"complete",        "d_in",          "d_sae",           "k",
                              "apply_b_dec_to_input", "normalize_decoder", "seed",   "job_seed",
                              "data_seed",       "replica",       "replicas",        "train_row_start",
                              "train_row_end",   "heldout_row_start", "heldout_row_end"};
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
            int64_t x = -1, y = -2;
            ML_ASSERT_OK(ml_h5_get_attr_int(ha, "/", ints[i], &x));
            ML_ASSERT_OK(ml_h5_get_attr_int(hb, "/", ints[i], &y));
            if (x != y) fail_msg("%s: root attribute %s %lld, uninterrupted %lld", b, ints[i], (long long)y, (long long)x);
        }
        const char *dbls[] = {"l1_coefficient", "mse_norm_sq", "mean_sq_norm"};
        for (size_t i = 0; i < sizeof dbls / sizeof *dbls; i++) {
            double x = 0, y = 1;
            ML_ASSERT_OK(ml_h5_get_attr_double(ha, "/", dbls[i], &x));
            ML_ASSERT_OK(ml_h5_get_attr_double(hb, "/", dbls[i], &y));
            if (memcmp(&x, &y, sizeof x)) fail_msg("%s: root attribute %s %.17g, uninterrupted %.17g", b, dbls[i], y, x);
        }
        const char *strs[] = {"architecture", "hook_name", "model", "source", "mse_normalization", "seed_identity",
                              "data_seed_identity", "heldout"};
        for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
            char *x = NULL, *y = NULL;
            ML_ASSERT_OK(ml_h5_get_attr_str(ha, "/", strs[i], &x));
            ML_ASSERT_OK(ml_h5_get_attr_str(hb, "/", strs[i], &y));
            if (strcmp(x, y)) fail_msg("%s: root attribute %s '%s', uninterrupted '%s'", b, strs[i], y, x);
            ml_free(x);
            ml_free(y);
        }
        assert_int_equal(ml_h5_exists(hb, "/checkpoint"), 0);
        ML_ASSERT_OK(ml_h5_close(&ha));
        ML_ASSERT_OK(ml_h5_close(&hb));
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_file_route(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_signals_file", 1);
    char ref[1200], out[1200], rp[2][1300], op[2][1300];
    snprintf(ref, sizeof ref, "%s/saes/ref.h5", e.dir);
    snprintf(out, sizeof out, "%s/saes/sig.h5", e.dir);
    const char *l1s[2] = {"0.01", "1"};
    for (int g = 0; g < 2; g++) {
        snprintf(rp[g], sizeof rp[g], "%s/saes/ref-l1_%s.h5", e.dir, l1s[g]);
        snprintf(op[g], sizeof op[g], "%s/saes/sig-l1_%s.h5", e.dir, l1s[g]);
    }
    const char *paths[2] = {op[0], op[1]};
    long live = ml_alloc_live();
    const char *full[] = {"sae", e.acts, "--out", ref, "--l1", "0.01,1", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(full));

    /* 1. SIGUSR1 before step 45 (inside a log interval and a resampling interval) */
    double t0 = MPI_Wtime();
    const char *sig[] = {"sae", e.acts, "--out", out, "--l1", "0.01,1", SAE_OPTS, "--raise_at", "45", NULL};
    expect_interrupted(run_sae(sig), paths, 2, 45, 93);
    double t_int = MPI_Wtime() - t0;
    assert_int_equal(ml_alloc_live(), live);
    expect_refused(op[0], e.dir);

    /* 2. a changed option cannot resume; the checkpoint stays */
    const char *changed[] = {"sae", e.acts, "--out", out, "--l1", "0.01,1", SAE_OPTS, "--lr", "2e-3", NULL};
    int rc = run_sae(changed);
    assert_int_equal(rc, ML_ERR_CONFIG);
    if (!strstr(ml_error_message(), "cannot resume") || !strstr(ml_error_message(), "lr") || strchr(ml_error_message(), '\n'))
        fail_msg("changed option: %s", ml_error_message());
    ml_error_clear();
    for (int g = 0; g < 2; g++) assert_int_equal(sae_attr_int(op[g], "/checkpoint", "step"), 45);

    /* 3. the same command resumes (raise_at 45 is behind it) and ends where the uninterrupted run did */
    ML_ASSERT_OK(run_sae(sig));
    for (int g = 0; g < 2; g++) expect_same(rp[g], op[g]);
    int64_t resampled = sae_attr_int(rp[1], "/metrics", "resampled_total");
    if (resampled <= 0) fail_msg("the test should resample dead latents (resampled_total %lld)", (long long)resampled);

    /* 4. a signal during the evaluation: the finished training is checkpointed, the rerun evaluates */
    for (int g = 0; g < 2; g++)
        if (MPI_Comm_rank(MPI_COMM_WORLD, &rc), rc == 0) unlink(op[g]);
    MPI_Barrier(MPI_COMM_WORLD);
    const char *late[] = {"sae", e.acts, "--out", out, "--l1", "0.01,1", SAE_OPTS, "--raise_at", "94", NULL};
    expect_interrupted(run_sae(late), paths, 2, 93, 93);
    ML_ASSERT_OK(run_sae(late));
    for (int g = 0; g < 2; g++) expect_same(rp[g], op[g]);
    assert_int_equal(ml_alloc_live(), live);
    printf("  file route: interrupted at step 45 of 93 in %.2f s; resumed bitwise (%lld latents resampled)\n", t_int,
           (long long)resampled);
}

static void test_model_route(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_signals_model", 0);
    char ref[1200], out[1200];
    snprintf(ref, sizeof ref, "%s/saes/ref.h5", e.dir);
    snprintf(out, sizeof out, "%s/saes/sig.h5", e.dir);
    const char *paths[1] = {out};
    long live = ml_alloc_live();
#define MODEL_OPTS                                                                                                   \
    "--model", e.model, "--domains", e.doms, "--model_tokens", "3000", "--context", "16", "--model_batch", "3",      \
        "--window_seed", "5", "--l1", "1"
    const char *full[] = {"sae", "--out", ref, SAE_OPTS, MODEL_OPTS, NULL};
    ML_ASSERT_OK(run_sae(full));
    /* periodic checkpoints every 20 steps, then SIGUSR1 before step 50 (a log record and resampling step) */
    const char *sig[] = {"sae", "--out", out, SAE_OPTS, MODEL_OPTS, "--checkpoint_every", "20", "--raise_at", "50", NULL};
    expect_interrupted(run_sae(sig), paths, 1, 50, 93);
    expect_refused(out, e.dir);
    const char *changed[] = {"sae", "--out", out, SAE_OPTS, MODEL_OPTS, "--window_seed", "6", NULL};
    int rc = run_sae(changed);
    assert_int_equal(rc, ML_ERR_CONFIG);
    if (!strstr(ml_error_message(), "cannot resume")) fail_msg("changed option: %s", ml_error_message());
    ml_error_clear();
    assert_int_equal(sae_attr_int(out, "/checkpoint", "step"), 50);
    ML_ASSERT_OK(run_sae(sig));
    expect_same(ref, out);
    /* --resume false starts over (and ends at the same place) */
    expect_interrupted(run_sae(sig), paths, 1, 50, 93);
    const char *fresh[] = {"sae", "--out", out, SAE_OPTS, MODEL_OPTS, "--resume", "false", NULL};
    ML_ASSERT_OK(run_sae(fresh));
    expect_same(ref, out);
    assert_int_equal(ml_alloc_live(), live);
#undef MODEL_OPTS
}

/* topk with AuxK on dead latents (dead after 500 rows), a grid of k */
static void test_topk(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_signals_topk", 1);
    char ref[1200], out[1200], rp[2][1300], op[2][1300];
    snprintf(ref, sizeof ref, "%s/saes/ref.h5", e.dir);
    snprintf(out, sizeof out, "%s/saes/sig.h5", e.dir);
    const char *ks[2] = {"4", "8"};
    for (int g = 0; g < 2; g++) {
        snprintf(rp[g], sizeof rp[g], "%s/saes/ref-k%s.h5", e.dir, ks[g]);
        snprintf(op[g], sizeof op[g], "%s/saes/sig-k%s.h5", e.dir, ks[g]);
    }
    const char *paths[2] = {op[0], op[1]};
    long live = ml_alloc_live();
    const char *full[] = {"sae", e.acts, "--out", ref, SAE_OPTS, "--architecture", "topk", "--k", "4,8", "--k_aux", "16",
                          "--dead_window", "500", NULL};
    ML_ASSERT_OK(run_sae(full));
    const char *sig[] = {"sae", e.acts, "--out", out, SAE_OPTS, "--architecture", "topk", "--k", "4,8", "--k_aux", "16",
                         "--dead_window", "500", "--raise_at", "33", NULL};
    expect_interrupted(run_sae(sig), paths, 2, 33, 93);
    ML_ASSERT_OK(run_sae(sig));
    for (int g = 0; g < 2; g++) expect_same(rp[g], op[g]);
    assert_int_equal(ml_alloc_live(), live);
}

/* rank 0 adds delta to the int64 root attribute `seed` of path (HDF5 directly: no writer of ours edits files) */
static void bump_seed(const char *path, int64_t delta) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        assert_true(f >= 0);
        hid_t a = H5Aopen(f, "seed", H5P_DEFAULT);
        assert_true(a >= 0);
        int64_t v = 0;
        assert_true(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0);
        v += delta;
        assert_true(H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0);
        H5Aclose(a);
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* --replicas 2 (dead latents resampled by each replica from its own seed): both files are checkpoints at the
 * interruption; a checkpoint whose seed is not the run's cannot resume; the rerun equals the uninterrupted run */
static void test_replicas(void **state) {
    (void)state;
    env e;
    env_make(&e, "sae_signals_replicas", 1);
    char ref[1200], out[1200], rp[2][1300], op[2][1300];
    snprintf(ref, sizeof ref, "%s/saes/ref.h5", e.dir);
    snprintf(out, sizeof out, "%s/saes/sig.h5", e.dir);
    for (int r = 0; r < 2; r++) {
        ML_ASSERT_OK(ml_sae_replica_path(ref, r, rp[r], sizeof rp[r]));
        ML_ASSERT_OK(ml_sae_replica_path(out, r, op[r], sizeof op[r]));
    }
    const char *paths[2] = {op[0], op[1]};
    long live = ml_alloc_live();
    const char *full[] = {"sae", e.acts, "--out", ref, "--l1", "1", "--replicas", "2", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(full));
    const char *sig[] = {"sae", e.acts, "--out", out, "--l1", "1", "--replicas", "2", SAE_OPTS, "--raise_at", "45", NULL};
    expect_interrupted(run_sae(sig), paths, 2, 45, 93);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(sae_attr_int(op[r], "/", "replica"), r);
        assert_int_equal(sae_attr_int(op[r], "/", "replicas"), 2);
    }
    assert_true(sae_attr_int(op[0], "/", "seed") != sae_attr_int(op[1], "/", "seed"));
    bump_seed(op[1], 1);
    ML_ASSERT_FAILS_ALL(run_sae(sig), ML_ERR_CONFIG, "cannot resume: its seed is");
    assert_int_equal(sae_attr_int(op[1], "/checkpoint", "step"), 45);
    bump_seed(op[1], -1);
    ML_ASSERT_OK(run_sae(sig));
    for (int r = 0; r < 2; r++) expect_same(rp[r], op[r]);
    if (sae_attr_int(rp[0], "/metrics", "resampled_total") <= 0 || sae_attr_int(rp[1], "/metrics", "resampled_total") <= 0)
        fail_msg("both replicas should resample dead latents");
    assert_int_equal(ml_alloc_live(), live);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_file_route), cmocka_unit_test(test_model_route),
                                       cmocka_unit_test(test_topk), cmocka_unit_test(test_replicas)};
    return ml_test_run(argc, argv, "sae_signals", tests, sizeof tests / sizeof tests[0]);
}
