/* Checkpoint and resume of `mergelens sweep` (SIGUSR1 through the raise_at
 * hook): the interrupted run fails on every rank with the one-line message and
 * leaves --out with complete = 0, /done and the finished rows (bitwise those of
 * the uninterrupted run, the others NaN); readers (ml_sweep_open,
 * sweep-combine) refuse it; a changed option cannot resume and leaves it
 * untouched; the rerun's file is bitwise the uninterrupted run's (h5diff,
 * /profile excluded), also when resumed on another rank count, and a kept
 * checkpoint deleted meanwhile is written again, bitwise equal. Job-array
 * slices: an interrupted slice is refused by sweep-combine, its rerun combines
 * to the whole sweep's results. */
#include <sys/stat.h>

#include "sweep_fixture.h"

enum { K = 9 };
static int rank_, P_;
static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    return sweep_fixture_setup("sweep_resume");
}

#define ARGS "%s --param t --count 9 --domains %s,%s --context 8 --batch 4 --eval-windows 8"
#define KEEP_ARGS ARGS " --keep 0.25,1 --keep-dir %s --out %s"

/* Rank 0 runs `cmd`; every rank gets its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int status = rank_ == 0 ? system(cmd) : 0;
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return status;
}
/* Bitwise equal sweep files (datasets and attributes; the timing profile excluded). */
#define SAME_H5(a, b) assert_int_equal(sh("h5diff -q --exclude-path /profile %s %s", (a), (b)), 0)
/* The same result datasets (files of different runs: attributes config, task, ... differ). */
#define SAME_ROWS(a, b)                                                                                             \
    assert_int_equal(sh("for d in grid points loss accuracy tokens; do h5diff -q %s %s /$d /$d || exit 1; done", (a), \
                        (b)),                                                                                       \
                     0)

/* Whole file contents (rank 0; NULL elsewhere), ml_malloc'd. */
static char *slurp(const char *path, long *n) {
    *n = 0;
    if (rank_ != 0) return NULL;
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = ml_malloc((size_t)*n + 1);
    assert_int_equal(fread(b, 1, (size_t)*n, f), (size_t)*n);
    fclose(f);
    return b;
}

static void read_rows(const char *path, const char *name, double *out, int rows) {
    ml_h5 *h = NULL;
    hsize_t d[2] = {(hsize_t)rows, NDOM};
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, ML_SWEEP_FORMAT, 1, 1, &h));
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_F64, 2, d, out));
    ML_ASSERT_OK(ml_h5_close(&h));
}

/* Points finished at the first round boundary after the last rank raised before
 * 1-based point `raise_at` of n, rounds of P points. */
static int ckpt_points(int raise_at, int n, int P) {
    int x = ((raise_at - 1) / P + 1) * P;
    return x < n ? x : n;
}

/* The interrupted file: complete = 0, x rows done, equal to the full run's, the others NaN. */
static void check_checkpoint(const char *path, const char *full, int x, int n) {
    assert_int_equal(tf_attr_int(path, "/", "complete"), 0);
    assert_int_equal(tf_attr_int(path, "/", "points_done"), x);
    uint8_t done[K];
    assert_int_equal(tf_read_col(path, "done", ML_U8, done, K), n);
    for (int j = 0; j < n; j++) assert_int_equal(done[j], j < x);
    double l[K * NDOM], a[K * NDOM], lf[K * NDOM], af[K * NDOM];
    read_rows(path, "loss", l, n);
    read_rows(path, "accuracy", a, n);
    read_rows(full, "loss", lf, n);
    read_rows(full, "accuracy", af, n);
    for (int i = 0; i < n * NDOM; i++) {
        if (i < x * NDOM) {
            assert_memory_equal(&l[i], &lf[i], sizeof(double));
            assert_memory_equal(&a[i], &af[i], sizeof(double));
        } else {
            assert_true(isnan(l[i]) && isnan(a[i]));
        }
    }
}

static void test_interrupt_resume(void **state) {
    (void)state;
    char out[1400], kd[1400], full[1400], msg[2000], kp[1600], kf[1600];
    snprintf(out, sizeof out, "%s/r.h5", dir);
    snprintf(kd, sizeof kd, "%s/kept", dir);
    snprintf(full, sizeof full, "%s/r_full.h5", dir);
    const long live = ml_alloc_live();
    /* the uninterrupted run, moved aside (the same command must write the same file) */
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, KEEP_ARGS, recipe, st[0], st[1], kd, out));
    assert_int_equal(tf_attr_int(out, "/", "complete"), 1);
    assert_int_equal(sh("mv %s %s && mv %s/r_t0.25.h5 %s/full_t0.25.h5 && mv %s/r_t1.h5 %s/full_t1.h5", out, full,
                        kd, dir, kd, dir),
                     0);
    /* interrupted before point 3 */
    const int x = ckpt_points(3, K, P_);
    snprintf(msg, sizeof msg,
             "interrupted by SIGUSR1: checkpoint at point %d of %d written to %s; rerun the same command to resume", x,
             K, out);
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, KEEP_ARGS " --raise_at 3", recipe, st[0], st[1], kd, out), ML_ERR_INTERRUPTED,
              msg);
    assert_null(strchr(ml_error_message(), '\n'));
    check_checkpoint(out, full, x, K);
    snprintf(kp, sizeof kp, "%s/r_t0.25.h5", kd);
    assert_true(ml_file_exists(kp));
    snprintf(kp, sizeof kp, "%s/r_t1.h5", kd);
    assert_false(ml_file_exists(kp));
    /* readers refuse it */
    ml_h5 *h = NULL;
    snprintf(msg, sizeof msg, "%s: an interrupted sweep (complete = 0, %d points done)", out, x);
    ML_ASSERT_FAILS(ml_sweep_open(MPI_COMM_SELF, out, &h), ML_ERR_FORMAT, msg);
    assert_null(h);
    ML_ASSERT_FAILS_ALL(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s --out %s/c.h5", out, dir),
              ML_ERR_FORMAT, msg);
    /* a changed option: cannot resume, the checkpoint untouched */
    long n0, n1;
    char *before = slurp(out, &n0);
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, KEEP_ARGS " --batch 2", recipe, st[0], st[1], kd, out), ML_ERR_CONFIG,
              "cannot resume: it was started with batch = 4, this run has batch = 2");
    char *after = slurp(out, &n1);
    assert_int_equal(n0, n1);
    if (rank_ == 0) assert_memory_equal(before, after, (size_t)n0);
    ml_free(before);
    ml_free(after);
    /* the kept checkpoint of a finished point is lost: evaluated and written again */
    snprintf(kp, sizeof kp, "%s/r_t0.25.h5", kd);
    assert_int_equal(sh("rm %s", kp), 0);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, KEEP_ARGS, recipe, st[0], st[1], kd, out));
    SAME_H5(full, out);
    snprintf(kf, sizeof kf, "%s/full_t0.25.h5", dir);
    assert_int_equal(sh("h5diff -q %s %s", kf, kp), 0);
    snprintf(kp, sizeof kp, "%s/r_t1.h5", kd);
    snprintf(kf, sizeof kf, "%s/full_t1.h5", dir);
    assert_int_equal(sh("h5diff -q %s %s", kf, kp), 0);
    /* --resume false starts over (its config differs only in `resume`) */
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, KEEP_ARGS " --raise_at 2", recipe, st[0], st[1], kd, out), ML_ERR_INTERRUPTED,
              "interrupted by SIGUSR1");
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, KEEP_ARGS " --resume false --raise_at 0", recipe, st[0], st[1], kd, out));
    assert_int_equal(tf_attr_int(out, "/", "complete"), 1);
    SAME_ROWS(full, out);
    assert_int_equal(ml_alloc_live(), live); /* the interrupted, refused and resumed runs freed what they took */
}

/* Interrupted on all ranks, resumed on rank 0 alone, and the other way round. */
static void test_other_ranks(void **state) {
    (void)state;
    if (P_ < 2) skip();
    char out[1400], kd[1400], full[1400];
    snprintf(out, sizeof out, "%s/x.h5", dir);
    snprintf(kd, sizeof kd, "%s/kept_x", dir);
    snprintf(full, sizeof full, "%s/x_full.h5", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, KEEP_ARGS, recipe, st[0], st[1], kd, out));
    assert_int_equal(sh("mv %s %s", out, full), 0);
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, KEEP_ARGS " --raise_at 4", recipe, st[0], st[1], kd, out), ML_ERR_INTERRUPTED,
              "interrupted by SIGUSR1");
    if (rank_ == 0) ML_ASSERT_OK(sweep(MPI_COMM_SELF, KEEP_ARGS, recipe, st[0], st[1], kd, out));
    MPI_Barrier(MPI_COMM_WORLD);
    SAME_H5(full, out);
    assert_int_equal(sh("rm %s", out), 0);
    if (rank_ == 0)
        ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_SELF, KEEP_ARGS " --raise_at 6", recipe, st[0], st[1], kd, out), ML_ERR_INTERRUPTED,
                  "interrupted by SIGUSR1: checkpoint at point 6 of 9");
    MPI_Barrier(MPI_COMM_WORLD);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, KEEP_ARGS, recipe, st[0], st[1], kd, out));
    SAME_H5(full, out);
}

/* Job-array slices: an interrupted slice is refused by sweep-combine; its rerun completes the set. */
static void test_slices(void **state) {
    (void)state;
    char whole[1400], p0[1400], p1[1400], comb[1400], msg[2000];
    snprintf(whole, sizeof whole, "%s/s_whole.h5", dir);
    snprintf(p0, sizeof p0, "%s/s0.h5", dir);
    snprintf(p1, sizeof p1, "%s/s1.h5", dir);
    snprintf(comb, sizeof comb, "%s/s.h5", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s", recipe, st[0], st[1], whole));
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s --task 0 --tasks 2", recipe, st[0], st[1], p0));
    const int n1 = K / 2, x = ckpt_points(2, n1, P_); /* task 1 holds points 1, 3, 5, 7 */
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, ARGS " --out %s --task 1 --tasks 2 --raise_at 2", recipe, st[0], st[1], p1),
              ML_ERR_INTERRUPTED, "interrupted by SIGUSR1: checkpoint at point 2 of 4");
    assert_int_equal(tf_attr_int(p1, "/", "complete"), 0);
    assert_int_equal(tf_attr_int(p1, "/", "points_done"), x);
    snprintf(msg, sizeof msg, "%s: an interrupted sweep (complete = 0, %d points done): rerun its `mergelens sweep`", p1,
             x);
    ML_ASSERT_FAILS_ALL(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s %s --out %s", p0, p1, comb),
              ML_ERR_FORMAT, msg);
    assert_false(ml_file_exists(comb));
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, ARGS " --out %s --task 0 --tasks 2", recipe, st[0], st[1], p1), ML_ERR_CONFIG,
              "cannot resume: it was started with task = 1, this run has task = 0");
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s --task 1 --tasks 2", recipe, st[0], st[1], p1));
    ML_ASSERT_OK(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s %s --out %s", p1, p0, comb));
    assert_int_equal(tf_attr_int(comb, "/", "complete"), 1);
    SAME_ROWS(whole, comb);
}

/* --checkpoint_every: periodic checkpoints change nothing in the results (kill -9 after one: test_signals.sh). */
static void test_periodic(void **state) {
    (void)state;
    char out[1400], full[1400];
    snprintf(out, sizeof out, "%s/p.h5", dir);
    snprintf(full, sizeof full, "%s/p_full.h5", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s --checkpoint_every 2", recipe, st[0], st[1], out));
    assert_int_equal(sh("mv %s %s", out, full), 0);
    /* rank 0 alone, interrupted before point 4 (a periodic checkpoint after point 2 was replaced) */
    if (rank_ == 0)
        ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_SELF, ARGS " --out %s --checkpoint_every 2 --raise_at 4", recipe, st[0], st[1], out),
                  ML_ERR_INTERRUPTED, "checkpoint at point 4 of 9");
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0) check_checkpoint(out, full, 4, K);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s --checkpoint_every 2", recipe, st[0], st[1], out));
    SAME_H5(full, out);
    /* --keep and --reference may be added on resume: the kept point (finished before) is merged again */
    char kd[1400], kp[1600];
    snprintf(kd, sizeof kd, "%s/kept_p", dir);
    snprintf(kp, sizeof kp, "%s/p_t0.h5", kd);
    ML_ASSERT_FAILS_ALL(sweep(MPI_COMM_WORLD, ARGS " --out %s --raise_at 4", recipe, st[0], st[1], out), ML_ERR_INTERRUPTED,
              "interrupted by SIGUSR1");
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, ARGS " --out %s --keep 0 --keep-dir %s --reference %s", recipe, st[0], st[1],
                       out, kd, ma));
    SAME_ROWS(full, out);
    assert_int_equal(tf_attr_int(kp, "/", "complete"), 1);
    ml_model *kept = tf_model(kp), *a = tf_model(ma);
    assert_true(kept && a && tf_max_diff(kept, a) == 0); /* t = 0 is model a */
    ml_model_destroy(&kept);
    ml_model_destroy(&a);
    double rl[NDOM], l0[K * NDOM];
    assert_int_equal(tf_read_col(out, "reference/loss", ML_F64, rl, NDOM), NDOM);
    read_rows(out, "loss", l0, K);
    assert_memory_equal(rl, l0, sizeof rl); /* the reference a equals point t = 0 */
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_interrupt_resume, setup),
        cmocka_unit_test(test_other_ranks),
        cmocka_unit_test(test_slices),
        cmocka_unit_test(test_periodic),
    };
    return ml_test_run(argc, argv, "sweep_resume", tests, sizeof tests / sizeof tests[0]);
}
