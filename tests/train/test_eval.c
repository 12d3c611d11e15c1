/* Evaluation against a naive recomputation: windows [kT, kT+CTX] of each
 * store's val split, one ml_model_forward per window on this process, loss
 * and accuracy summed here. ml_eval_model (whole split and capped by
 * max_batches, in sequential and random order, partial last batches
 * included), `mergelens eval --out`, and the final evaluation rows of a
 * training run must all equal it. The random window choice is checked for
 * its properties (distinct, sorted, nested, per-domain, uniform). */
#include "ml_test.h"

#include <math.h>

#include "train_fixture.h"

#define CTX 16
static int rank, nranks;
static char dir[1024], stores[2][1200], model_path[1200];
static const int64_t nval[2] = {600, 400};

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *names[2] = {"alpha", "beta"};
    const int64_t ntrain[2] = {3000, 3000};
    int rc = tf_setup_stores("train_eval", dir, sizeof dir, 2, names, ntrain, nval, stores);
    snprintf(model_path, sizeof model_path, "%s/m.h5", dir);
    /* a briefly trained model whose final evaluation covers the whole val splits */
    if (rc == ML_OK)
        rc = tf_train(MPI_COMM_WORLD,
                      "--domains %s,%s --out %s " TF_SHAPE " --global_batch 4 --micro_batch 1 --steps 12 --lr 1e-2 "
                      "--eval_batch 8 --eval_every 6",
                      stores[0], stores[1], model_path);
    return rc;
}

/* Naive: loss and accuracy over the windows list[0 .. max_windows) (list NULL: windows 0, 1, ...;
 * max_windows < 0: every window of the split). */
static void naive_list(const ml_model *m, int d, int64_t max_windows, const int64_t *list, double *loss, double *acc,
                       int64_t *ntargets) {
    uint16_t *tok = malloc(sizeof(uint16_t) * (size_t)nval[d]);
    assert_int_equal(tf_read_col(stores[d], "/val/tokens", ML_U16, tok, nval[d]), nval[d]);
    int64_t W = (nval[d] - 1) / CTX;
    if (max_windows >= 0 && max_windows < W) W = max_windows;
    ml_workspace *ws = NULL;
    ml_workspace_config wc = {.B_max = 1, .T_max = CTX};
    ML_ASSERT_OK(ml_workspace_create(&m->cfg, &wc, &ws));
    double lsum = 0;
    int64_t correct = 0;
    for (int64_t i = 0; i < W; i++) {
        const int64_t k = list ? list[i] : i;
        assert_true(k >= 0 && (k + 1) * CTX < nval[d]);
        int32_t x[CTX], y[CTX];
        for (int t = 0; t < CTX; t++) {
            x[t] = tok[k * CTX + t];
            y[t] = tok[k * CTX + t + 1];
        }
        ml_lm_stats st;
        ML_ASSERT_OK(ml_model_forward(m, ws, x, y, 1, CTX, &st));
        assert_int_equal(st.n_targets, CTX);
        lsum += st.loss_sum;
        correct += st.n_correct;
    }
    *ntargets = W * CTX;
    *loss = lsum / (double)*ntargets;
    *acc = (double)correct / (double)*ntargets;
    ml_workspace_destroy(&ws);
    free(tok);
}

static void naive(const ml_model *m, int d, int64_t max_windows, double *loss, double *acc, int64_t *ntargets) {
    naive_list(m, d, max_windows, NULL, loss, acc, ntargets);
}

static void test_eval_model(void **state) {
    (void)state;
    ml_model *m = tf_model(model_path);
    assert_non_null(m);
    const char *p[2] = {stores[0], stores[1]};
    const char *names[2] = {"alpha", "beta"};
    for (int mode = 0; mode < 3; mode++) { /* whole split; 2 batches in order; 2 batches at random */
        const int cap = mode ? 2 : 0, sequential = mode == 1;
        ml_eval_config ec = {.n_domains = 2, .paths = p, .T = CTX, .batch = 2 * nranks, .micro_batch = 1,
                             .max_batches = cap, .sequential = sequential, .seed = 7};
        ml_eval_result r[2];
        ML_ASSERT_OK(ml_eval_model(MPI_COMM_WORLD, m, &ec, r));
        for (int d = 0; d < 2; d++) {
            double loss, acc;
            int64_t nt, W = (nval[d] - 1) / CTX, list[64];
            const int64_t n = cap ? (int64_t)cap * ec.batch : W;
            if (mode == 2) ML_ASSERT_OK(ml_eval_windows_choose(W, n, 0, 7, names[d], list));
            naive_list(m, d, cap ? n : -1, mode == 2 ? list : NULL, &loss, &acc, &nt);
            assert_string_equal(r[d].domain, names[d]);
            assert_int_equal(r[d].n_targets, nt);
            assert_int_equal(r[d].n_windows, nt / CTX);
            assert_int_equal(r[d].n_available, W);
            ML_ASSERT_CLOSE(r[d].loss, loss, 1e-6);
            ML_ASSERT_CLOSE(r[d].accuracy, acc, 1e-12);
            if (rank == 0)
                printf("  %s, %s: loss %.6f (naive %.6f), accuracy %.4f over %lld targets\n", r[d].domain,
                       mode == 0 ? "whole split" : mode == 1 ? "2 batches in order" : "2 batches at random", r[d].loss,
                       loss, r[d].accuracy, (long long)nt);
        }
    }
    ml_model_destroy(&m);
}

/* The random choice: n distinct ascending windows in [0, W); a smaller n takes a subset of a larger
 * one's windows; another domain name or seed gives other windows; n = W (or sequential) is 0 .. n-1;
 * over 4000 seeds every window is chosen with frequency n / W (a chi-square bound far above its
 * expectation W - 1 for a fixed seed set, so the check is deterministic). */
static void test_window_choice(void **state) {
    (void)state;
    enum { W = 50, N = 10, SEEDS = 4000 };
    int64_t a[W], b[W], c[W];
    ML_ASSERT_OK(ml_eval_windows_choose(W, N, 0, 3, "lua", a));
    ML_ASSERT_OK(ml_eval_windows_choose(W, 2 * N, 0, 3, "lua", b));
    for (int i = 0; i < N; i++) {
        assert_true(a[i] >= 0 && a[i] < W);
        if (i) assert_true(a[i] > a[i - 1]);
        int found = 0;
        for (int j = 0; j < 2 * N; j++) found |= b[j] == a[i];
        assert_true(found);
    }
    ML_ASSERT_OK(ml_eval_windows_choose(W, N, 0, 3, "python", c));
    assert_memory_not_equal(a, c, sizeof(int64_t) * N);
    ML_ASSERT_OK(ml_eval_windows_choose(W, N, 0, 4, "lua", c));
    assert_memory_not_equal(a, c, sizeof(int64_t) * N);
    ML_ASSERT_OK(ml_eval_windows_choose(W, N, 0, 3, "lua", c));
    assert_memory_equal(a, c, sizeof(int64_t) * N);
    for (int seq = 0; seq < 2; seq++) {
        ML_ASSERT_OK(ml_eval_windows_choose(W, seq ? N : W, seq, 3, "lua", c));
        for (int i = 0; i < (seq ? N : W); i++) assert_int_equal(c[i], i);
    }
    assert_int_equal(ml_eval_windows_choose(W, W + 1, 0, 3, "lua", c), ML_ERR_ARG);
    ml_error_clear();
    double count[W] = {0};
    for (int s = 0; s < SEEDS; s++) {
        ML_ASSERT_OK(ml_eval_windows_choose(W, N, 0, (uint64_t)s, "lua", c));
        for (int i = 0; i < N; i++) count[c[i]] += 1;
    }
    const double expect = (double)SEEDS * N / W;
    double chi2 = 0;
    for (int k = 0; k < W; k++) chi2 += (count[k] - expect) * (count[k] - expect) / expect;
    if (rank == 0) printf("  inclusion frequency over %d seeds: chi2 %.1f (%d windows, expectation %d)\n", SEEDS, chi2, W, W - 1);
    assert_true(chi2 < 100); /* P(chi2_49 > 100) < 1e-4 */
}

static void test_cmd_and_training_log(void **state) {
    (void)state;
    ml_model *m = tf_model(model_path);
    assert_non_null(m);
    char out[1200];
    snprintf(out, sizeof out, "%s/results.h5", dir);
    ML_ASSERT_OK(tf_eval(MPI_COMM_WORLD, "%s --domains %s,%s --out %s --batch %d", model_path, stores[0], stores[1],
                         out, 3 * nranks));
    double loss[2], acc[2], tl[16], ta[16];
    int64_t nt[2], st[16];
    int32_t dom[16];
    assert_int_equal(tf_read_col(out, "/loss", ML_F64, loss, 2), 2);
    assert_int_equal(tf_read_col(out, "/accuracy", ML_F64, acc, 2), 2);
    assert_int_equal(tf_read_col(out, "/n_targets", ML_I64, nt, 2), 2);
    int64_t ntok[2], avail[2];
    assert_int_equal(tf_read_col(out, "/n_tokens", ML_I64, ntok, 2), 2);
    assert_int_equal(tf_read_col(out, "/windows_available", ML_I64, avail, 2), 2);
    assert_int_equal(tf_attr_int(out, "/", "eval_seed"), 0);
    assert_int_equal(tf_attr_int(out, "/", "context"), CTX); /* from the checkpoint's training config */
    /* training log: evaluations at step 6 and at the end (12), 2 domains each */
    assert_int_equal(tf_read_col(model_path, "/train/eval/loss", ML_F64, tl, 16), 4);
    assert_int_equal(tf_read_col(model_path, "/train/eval/accuracy", ML_F64, ta, 16), 4);
    assert_int_equal(tf_read_col(model_path, "/train/eval/step", ML_I64, st, 16), 4);
    assert_int_equal(tf_read_col(model_path, "/train/eval/domain", ML_I32, dom, 16), 4);
    int64_t etok[16];
    assert_int_equal(tf_read_col(model_path, "/train/eval/n_tokens", ML_I64, etok, 16), 4);
    assert_int_equal(st[0], 6);
    assert_int_equal(st[3], 12);
    for (int d = 0; d < 2; d++) {
        double nl, na;
        int64_t n;
        naive(m, d, -1, &nl, &na, &n);
        assert_int_equal(nt[d], n);
        assert_int_equal(ntok[d], n);
        assert_int_equal(avail[d], (nval[d] - 1) / CTX);
        ML_ASSERT_CLOSE(loss[d], nl, 1e-6);
        ML_ASSERT_CLOSE(acc[d], na, 1e-12);
        assert_int_equal(dom[2 + d], d);
        ML_ASSERT_CLOSE(tl[2 + d], nl, 1e-6);
        assert_int_equal(etok[2 + d], n);
        ML_ASSERT_CLOSE(ta[2 + d], na, 1e-12);
    }
    ml_model_destroy(&m);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_eval_model, setup),
        cmocka_unit_test(test_cmd_and_training_log),
        cmocka_unit_test(test_window_choice),
    };
    return ml_test_run(argc, argv, "train_eval", tests, sizeof tests / sizeof tests[0]);
}
