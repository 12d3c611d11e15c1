/* Bad inputs to `train` and `eval`: every rank returns a failure that all
 * ranks agreed on (so the CLI exits cleanly), with a one-line message naming
 * the file, option or tensor. */
#include "ml_test.h"

#include "train_fixture.h"

static int rank, nranks;
static char dir[1024], a64[1200], b64[1200], c80[1200], tiny[1200], base[1200];

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    snprintf(dir, sizeof dir, "%s", ml_test_dir("train_errors"));
    snprintf(a64, sizeof a64, "%s/a64.h5", dir);
    snprintf(b64, sizeof b64, "%s/b64.h5", dir);
    snprintf(c80, sizeof c80, "%s/c80.h5", dir);
    snprintf(tiny, sizeof tiny, "%s/tiny.h5", dir);
    snprintf(base, sizeof base, "%s/base.h5", dir);
    int rc = ML_OK;
    if (rank == 0) rc = tf_write_store(a64, "a", 64, 2000, 200, 1);
    if (rank == 0 && !rc) rc = tf_write_store(b64, "b", 64, 2000, 200, 2);
    if (rank == 0 && !rc) rc = tf_write_store(c80, "c", 80, 2000, 200, 3);
    if (rank == 0 && !rc) rc = tf_write_store(tiny, "tiny", 64, 2000, 5, 4); /* val shorter than one window */
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!rc) rc = tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --global_batch 2 --steps 2 --eval false",
                           a64, base);
    return rc;
}

/* The call failed on this rank, agreed, with a one-line message containing text. */
#define EXPECT_FAIL(call, text)                                                                              \
    do {                                                                                                     \
        ml_error_clear();                                                                                    \
        int rc_ = (call);                                                                                    \
        if (rc_ == ML_OK) fail_msg("%s succeeded, expected an error with '%s'", #call, text);                \
        const char *msg_ = ml_error_message();                                                               \
        if (!strstr(msg_, text)) fail_msg("rank %d: message '%s' lacks '%s'", rank, msg_, text);            \
        if (strchr(msg_, '\n')) fail_msg("rank %d: message '%s' has more than one line", rank, msg_);        \
        if (!ml_error_agreed()) fail_msg("rank %d: error '%s' was not agreed by all ranks", rank, msg_);    \
        if (rank == 0) printf("  ok: %s\n", msg_);                                                          \
    } while (0)

static void test_train_errors(void **state) {
    (void)state;
    char out[1200];
    snprintf(out, sizeof out, "%s/out.h5", dir);
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s,%s/missing.h5 --out %s " TF_SHAPE, a64, dir, out),
                "missing.h5");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s,%s --out %s " TF_SHAPE, a64, c80, out),
                "c80.h5 has vocab_size 80 but");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s --init_from %s --context 16", c80, out, base),
                "vocab mismatch");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s --init_from %s --context 16 --d_mlp 48", b64, out,
                         base),
                "tensor /params/model.layers.0.mlp.gate_proj.weight has shape [64, 32], the model expects [48, 32]");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s --init_from %s --context 32", b64, out, base),
                "option 'context': 32 exceeds the model's max_position_embeddings 16");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s,%s --weights 1 --out %s " TF_SHAPE, a64, b64, out),
                "option 'weights': '1' has 1 value, expected 2");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --lerning_rate 1", a64, out),
                "lerning_rate");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --n_kv_heads 3", a64, out),
                "kv");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --steps 2", tiny, out),
                "cannot evaluate on split 'val'");
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --steps 2", a64, b64),
                "b64.h5");  /* --out names a token store: not a checkpoint to resume */
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s --init_from %s", a64, base, base),
                "would overwrite its parent");
    static const char *const bad_subsets[][2] = {{"2/2", "option 'subset': '2/2' needs 0 <= I < N"},
                                                 {"0/0", "option 'subset': '0/0' needs 0 <= I < N"},
                                                 {"1-2", "option 'subset': '1-2' is not I/N"},
                                                 {"-1/2", "option 'subset': '-1/2' is not I/N"},
                                                 {"1/2x", "option 'subset': '1/2x' is not I/N"}};
    for (int i = 0; i < 5; i++)
        EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --subset %s", a64, out,
                             bad_subsets[i][0]),
                    bad_subsets[i][1]);
    /* 2000 tokens = 124 windows of 17: 1 window per slice of 100, fewer than a batch of 2 */
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --global_batch 2 --subset 98/100", a64,
                         out),
                "a64.h5: subset 98/100 of split 'train' holds 1 windows");
    char yaml[1200];
    snprintf(yaml, sizeof yaml, "%s/job.yaml", dir);
    if (rank == 0) {
        FILE *f = fopen(yaml, "w");
        fprintf(f, "train:\n  domains: %s\n  lerning_rate: 0.1\n", a64);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--config %s --out %s", yaml, out), "job.yaml:3: unknown key 'lerning_rate'");
    if (nranks > 1)
        EXPECT_FAIL(tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --global_batch %d", a64, out,
                             nranks + 1),
                    "is not a multiple of the");
    assert_int_equal(ml_file_exists(out), 0); /* nothing written by a failed run */
}

static void test_eval_errors(void **state) {
    (void)state;
    EXPECT_FAIL(tf_eval(MPI_COMM_WORLD, "%s/nomodel.h5 --domains %s", dir, a64), "nomodel.h5");
    EXPECT_FAIL(tf_eval(MPI_COMM_WORLD, "--domains %s", a64), "expected one model checkpoint, got 0");
    EXPECT_FAIL(tf_eval(MPI_COMM_WORLD, "%s --domains %s", base, c80), "vocab mismatch: ");
    EXPECT_FAIL(tf_eval(MPI_COMM_WORLD, "%s --domains %s --context 17", base, a64),
                "context 17 must lie in [1, 16]");
    EXPECT_FAIL(tf_eval(MPI_COMM_WORLD, "%s --domains %s", a64, a64), "a64.h5");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_train_errors, setup),
        cmocka_unit_test(test_eval_errors),
    };
    return ml_test_run(argc, argv, "train_errors", tests, sizeof tests / sizeof tests[0]);
}
