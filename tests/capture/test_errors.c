/* Bad inputs to `mergelens capture` fail on every rank with a one-line
 * message naming the problem, leave no output file and leak nothing. */
#include "fixtures.h"

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

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_errors)};
    return ml_test_run(argc, argv, "capture_errors", tests, 1);
}
