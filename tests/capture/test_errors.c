/* Bad inputs to `mergelens capture` fail on every rank with a one-line
 * message naming the problem, leave no output file and leak nothing. */
#include "fixtures.h"
#include "mergelens/sae.h"

static char dir[1024], a[1100], b[1100], other_vocab[1100], ckpt[1100], out[1100];

static void setup_files(void) {
    snprintf(dir, sizeof dir, "%s", ml_test_dir("capture_errors"));
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    snprintf(other_vocab, sizeof other_vocab, "%s/v50.h5", dir);
    snprintf(ckpt, sizeof ckpt, "%s/model.h5", dir);
    snprintf(out, sizeof out, "%s/acts/out.h5", dir);
    fx_store_write(MPI_COMM_WORLD, a, "alpha", 40, 20, 4, 1, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, b, "beta", 40, 20, 4, 2, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, other_vocab, "gamma", 50, 20, 4, 3, 0, NULL);
    fx_model_write(MPI_COMM_WORLD, ckpt, 1, 1, NULL);
}

/* capture MODEL --domains DOMS --tokens N --out out --context 8 [extra...] must fail with text on every rank. */
static void expect_fail(const char *model, const char *doms, const char *tokens, const char *e1, const char *e2,
                        const char *text) {
    long live = ml_alloc_live();
    const char *args[] = {"capture", model, "--domains", doms, "--tokens", tokens, "--out", out, "--context", "8",
                          e1, e2, NULL};
    int rc = fx_cmd(ml_cmd_capture, MPI_COMM_WORLD, args);
    const char *msg = ml_error_message();
    if (rc == ML_OK) fail_msg("capture succeeded, expected a failure mentioning '%s'", text);
    if (!strstr(msg, text)) fail_msg("message '%s' lacks '%s'", msg, text);
    if (strchr(msg, '\n')) fail_msg("message '%s' is not one line", msg);
    assert_false(ml_file_exists(out));
    assert_int_equal(ml_alloc_live(), live);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) printf("  error: %s\n", msg);
    ml_error_clear();
}

static void test_errors(void **state) {
    (void)state;
    setup_files();
    char ab[2300], av[2300], missing[1200], ac[2300];
    snprintf(ab, sizeof ab, "%s,%s", a, b);
    snprintf(av, sizeof av, "%s,%s", a, other_vocab);
    snprintf(missing, sizeof missing, "%s/nope.h5", dir);
    snprintf(ac, sizeof ac, "%s,%s", a, ckpt);
    expect_fail(ckpt, ab, "100", "--hook", "blocks.0.mlp.hook_postt", "unknown hook 'blocks.0.mlp.hook_postt'");
    expect_fail(ckpt, ab, "100", "--hook", "blocks.2.hook_resid_pre", "unknown hook 'blocks.2.hook_resid_pre'");
    expect_fail(ckpt, ab, "100", "--hook", "blocks.0.mlp.hook_post,blocks.0.mlp.hook_post", "given twice");
    expect_fail(ckpt, ab, "100", "--hook", "blocks.0.mlp.hook_post,", "empty item");
    expect_fail(ckpt, ab, "100", "--hook", "resid_pre",
                "hook 'resid_pre' is ambiguous in a 2-layer model: give blocks.<i>.hook_resid_pre");
    expect_fail(missing, ab, "100", NULL, NULL, "nope.h5: cannot open");
    expect_fail(a, ab, "100", NULL, NULL, "is a 'mergelens.tokens' file, expected 'mergelens.checkpoint'");
    expect_fail(ckpt, av, "100", NULL, NULL, "v50.h5: vocab_size 50 differs from the model's 40");
    expect_fail(ckpt, ac, "100", NULL, NULL, "is a 'mergelens.checkpoint' file, expected 'mergelens.tokens'");
    snprintf(ac, sizeof ac, "%s,%s", a, missing);
    expect_fail(ckpt, ac, "100", NULL, NULL, "nope.h5: cannot open");
    expect_fail(ckpt, ab, "100000", NULL, NULL, "windows of T+1 = 9 tokens; the plan needs 6250");
    expect_fail(ckpt, ab, "100", "--context", "64", "--context 64 exceeds the model's max_context 32");
    expect_fail(ckpt, ab, "100", "--weights", "1", "--weights '1' has 1 values for 2 domains");
    expect_fail(ckpt, ab, "100", "--weights", "0,0", "all domain weights are zero");
    expect_fail(ckpt, ab, "100", "--weights", "1,x", "expected a comma-separated list of numbers");
    expect_fail(ckpt, ab, "100", "--split", "test", "test");
    expect_fail(ckpt, ab, "0", NULL, NULL, "tokens");
}

/* Make the n-th allocation fail for n = 1, 2, ... until the call succeeds:
 * every failure is ML_ERR_NOMEM, frees what it took and leaves no file. */
static void test_alloc_failures(void **state) {
    (void)state;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) skip(); /* one rank: an injected failure on one rank of many is the io layer's business */
    setup_files();
    char ab[2300];
    snprintf(ab, sizeof ab, "%s,%s", a, b);
    ml_model *m = NULL;
    ML_ASSERT_OK(ml_capture_load_model(MPI_COMM_SELF, ckpt, &m));
    ml_sae *sae = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 24, 48, 0, &sae));
    const char *paths[2] = {a, b};
    ml_window_spec spec = {2, paths, NULL, "val", 8, 0, 3};
    ml_log_set_level(ML_LOG_ERROR);
    for (int what = 0; what < 2; what++) {
        long n, points = 0;
        int completed = 0;
        for (n = 1; n < 5000 && !completed; n++) {
            long live = ml_alloc_live();
            const char *args[] = {"capture", ckpt, "--domains", ab, "--tokens", "50", "--out", out, "--context", "8",
                                  "--hook", "blocks.0.mlp.hook_post,blocks.1.hook_resid_post", "--dtype", "float16",
                                  NULL};
            ml_ce_result r;
            ml_alloc_fail_at(n);
            int rc = what == 0 ? fx_cmd(ml_cmd_capture, MPI_COMM_SELF, args)
                               : ml_capture_ce_recovered(MPI_COMM_SELF, m, sae, 1, &spec, 6, 4, &r);
            ml_alloc_fail_at(0);
            if (rc == ML_OK) completed = 1;
            else {
                points++;
                /* io's ml_h5_list reports an allocation failure in its iteration as ML_ERR_HDF5 */
                if (rc != ML_ERR_NOMEM && !(rc == ML_ERR_HDF5 && strstr(ml_error_message(), "cannot list group")))
                    fail_msg("case %d, failing allocation %ld: %s (%s)", what, n, ml_status_name(rc), ml_error_message());
                assert_false(ml_file_exists(out));
            }
            if (ml_alloc_live() != live) fail_msg("case %d, failing allocation %ld leaks %ld blocks", what, n, ml_alloc_live() - live);
            ml_error_clear();
        }
        assert_true(completed);
        printf("  %s: %ld allocation failure points, no leaks\n", what == 0 ? "capture" : "CE recovered", points);
        if (what == 0) remove(out);
    }
    ml_log_set_level(ML_LOG_WARN);
    ml_sae_destroy(&sae);
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_errors), cmocka_unit_test(test_alloc_failures)};
    return ml_test_run(argc, argv, "capture_errors", tests, sizeof tests / sizeof tests[0]);
}
