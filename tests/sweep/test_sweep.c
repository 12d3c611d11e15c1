/* `mergelens sweep` and `sweep-combine` on tiny random models and token
 * stores: each point equals an independent merge (`mergelens merge` to a
 * file) followed by ml_eval_model; t = 0 / 1 equal the endpoints; the kept
 * checkpoint equals ml_slerp per tensor; results identical for every rank
 * count (sub-communicators of 1 and 2 ranks against the whole world); a task
 * split plus combine equals the single run; bad inputs fail on every rank. */
#include "sweep_fixture.h"

enum { K = 5 };
static int setup(void **state) {
    (void)state;
    return sweep_fixture_setup("sweep");
}

#define SWEEP_ARGS "%s --param t --from 0 --to 1 --count 5 --domains %s,%s --context 8 --batch 4 --eval-windows 8"
static void read_table(const char *path, const char *name, double *out, int rows) {
    int64_t n = tf_read_col(path, name, ML_F64, out, rows);
    assert_int_equal(n, rows);
}
static void read_2d(const char *path, const char *name, double *out, int rows) {
    ml_h5 *h = NULL;
    hsize_t d[2] = {(hsize_t)rows, NDOM};
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, ML_SWEEP_FORMAT, 1, 1, &h));
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_F64, 2, d, out));
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void eval_ckpt(const char *path, ml_eval_result *res) {
    ml_model *m = tf_model(path);
    assert_non_null(m);
    const char *doms[NDOM] = {st[0], st[1]};
    ml_eval_config ec = {.n_domains = NDOM, .paths = doms, .T = T, .batch = BATCH, .max_batches = WINDOWS / BATCH};
    ML_ASSERT_OK(ml_eval_model(MPI_COMM_SELF, m, &ec, res));
    ml_model_destroy(&m);
}

static void test_reference(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char out[1400], kd[1400];
    snprintf(out, sizeof out, "%s/ref.h5", dir);
    snprintf(kd, sizeof kd, "%s/models", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, SWEEP_ARGS " --out %s --keep 0.5,1 --keep-dir %s --reference %s", recipe, st[0],
                       st[1], out, kd, mb));
    double grid[K], loss[K * NDOM], acc[K * NDOM];
    read_table(out, "grid", grid, K);
    read_2d(out, "loss", loss, K);
    read_2d(out, "accuracy", acc, K);
    for (int k = 0; k < K; k++) assert_true(grid[k] == k / 4.0);
    /* every point against `mergelens merge` (a file) + ml_eval_model */
    for (int k = 0; k < K; k++) {
        char rp[1400], mp[1400];
        snprintf(rp, sizeof rp, "%s/point%d.yaml", dir, k);
        snprintf(mp, sizeof mp, "%s/point%d.h5", dir, k);
        if (rank == 0) write_recipe(rp, grid[k]);
        MPI_Barrier(MPI_COMM_WORLD);
        ML_ASSERT_OK(tf_run(ml_cmd_merge, MPI_COMM_WORLD, "merge", "%s --out %s", rp, mp));
        ml_eval_result res[NDOM];
        eval_ckpt(mp, res);
        for (int d = 0; d < NDOM; d++) {
            ML_ASSERT_CLOSE(loss[k * NDOM + d], res[d].loss, 1e-12);
            ML_ASSERT_CLOSE(acc[k * NDOM + d], res[d].accuracy, 1e-12);
            assert_true(res[d].loss > 0.5 && res[d].n_targets == WINDOWS * T);
        }
    }
    /* endpoints: t = 0 is model a, t = 1 model b; the reference rows are model b */
    ml_eval_result ra[NDOM], rb[NDOM];
    eval_ckpt(ma, ra);
    eval_ckpt(mb, rb);
    double rl[NDOM], racc[NDOM];
    read_table(out, "reference/loss", rl, NDOM);
    read_table(out, "reference/accuracy", racc, NDOM);
    for (int d = 0; d < NDOM; d++) {
        assert_true(loss[d] == ra[d].loss && acc[d] == ra[d].accuracy);
        assert_true(loss[(K - 1) * NDOM + d] == rb[d].loss && acc[(K - 1) * NDOM + d] == rb[d].accuracy);
        assert_true(rl[d] == rb[d].loss && racc[d] == rb[d].accuracy);
        assert_true(fabs(ra[d].loss - rb[d].loss) > 1e-6); /* the endpoints differ */
    }
    /* kept checkpoint at t = 0.5 against ml_slerp per tensor; at t = 1 equal to b */
    char kp[1600];
    snprintf(kp, sizeof kp, "%s/ref_t0.5.h5", kd);
    ml_model *kept = tf_model(kp), *a = tf_model(ma), *b = tf_model(mb);
    assert_non_null(kept);
    ml_model *expect = NULL;
    ML_ASSERT_OK(ml_model_create(&a->cfg, &expect));
    for (int t = 0; t < a->n_tensors; t++) {
        const ml_tensor *tt = &a->tensors[t];
        /* returns 1 on the linear fallback (the norm weights, all ones) */
        assert_true(ml_slerp(expect->params + tt->offset, a->params + tt->offset, b->params + tt->offset, tt->numel, 0.5) >= 0);
    }
    assert_true(tf_max_diff(kept, expect) <= 1e-6);
    assert_true(tf_max_diff(kept, a) > 1e-3);
    assert_int_equal(tf_attr_int(kp, "/", "complete"), 1);
    ml_model_destroy(&kept);
    snprintf(kp, sizeof kp, "%s/ref_t1.h5", kd);
    kept = tf_model(kp);
    assert_non_null(kept);
    assert_true(tf_max_diff(kept, b) == 0);
    ml_model_destroy(&kept);
    ml_model_destroy(&expect);
    ml_model_destroy(&a);
    ml_model_destroy(&b);
}

static void same_results(const char *x, const char *y) {
    double lx[K * NDOM], ly[K * NDOM], ax[K * NDOM], ay[K * NDOM];
    read_2d(x, "loss", lx, K);
    read_2d(y, "loss", ly, K);
    read_2d(x, "accuracy", ax, K);
    read_2d(y, "accuracy", ay, K);
    assert_memory_equal(lx, ly, sizeof lx);
    assert_memory_equal(ax, ay, sizeof ax);
}

static void test_ranks(void **state) {
    (void)state;
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    char whole[1400], one[1400], two[1400];
    snprintf(whole, sizeof whole, "%s/whole.h5", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, SWEEP_ARGS " --out %s", recipe, st[0], st[1], whole));
    snprintf(one, sizeof one, "%s/one_r%d.h5", dir, rank); /* every rank alone */
    ML_ASSERT_OK(sweep(MPI_COMM_SELF, SWEEP_ARGS " --out %s", recipe, st[0], st[1], one));
    same_results(whole, one);
    if (P >= 2) { /* pairs of ranks */
        MPI_Comm pair;
        MPI_Comm_split(MPI_COMM_WORLD, rank / 2, rank, &pair);
        int ps;
        MPI_Comm_size(pair, &ps);
        snprintf(two, sizeof two, "%s/two_%d.h5", dir, rank / 2);
        ML_ASSERT_OK(sweep(pair, SWEEP_ARGS " --out %s", recipe, st[0], st[1], two));
        same_results(whole, two);
        MPI_Comm_free(&pair);
    }
}

static void test_tasks(void **state) {
    (void)state;
    char whole[1400], part[3][1400], comb[1400];
    snprintf(whole, sizeof whole, "%s/whole_t.h5", dir);
    ML_ASSERT_OK(sweep(MPI_COMM_WORLD, SWEEP_ARGS " --out %s", recipe, st[0], st[1], whole));
    for (int i = 0; i < 3; i++) {
        snprintf(part[i], sizeof part[i], "%s/part%d.h5", dir, i);
        ML_ASSERT_OK(sweep(MPI_COMM_WORLD, SWEEP_ARGS " --out %s --task %d --tasks 3", recipe, st[0], st[1], part[i], i));
        assert_int_equal(tf_attr_int(part[i], "/", "partial"), 1);
    }
    snprintf(comb, sizeof comb, "%s/comb.h5", dir);
    ML_ASSERT_OK(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s %s %s --out %s", part[2], part[0],
                        part[1], comb));
    same_results(whole, comb);
    assert_int_equal(tf_attr_int(comb, "/", "partial"), 0);
    ML_ASSERT_FAILS_ALL(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s %s --out %s", part[0], part[1], comb),
                    ML_ERR_FORMAT, "point 2 (t = 0.5) is in none of the 2 files");
    ML_ASSERT_FAILS_ALL(tf_run(ml_cmd_sweep_combine, MPI_COMM_WORLD, "sweep-combine", "%s %s %s %s --out %s", part[0],
                           part[1], part[2], part[1], comb),
                    ML_ERR_FORMAT, "appears in both");
}

static void test_bad(void **state) {
    (void)state;
    char out[1400];
    snprintf(out, sizeof out, "%s/bad.h5", dir);
    ML_ASSERT_FAILS(sweep(MPI_COMM_WORLD, "%s --param tt --domains %s --out %s", recipe, st[0], out), ML_ERR_ARG,
                    "sweep: cannot sweep parameter 'tt' of merge_method slerp (sweepable: t)");
    ML_ASSERT_FAILS(sweep(MPI_COMM_WORLD, "%s --count 0 --domains %s --out %s", recipe, st[0], out), ML_ERR_ARG,
                    "sweep: --count must be >= 1, got 0");
    ML_ASSERT_FAILS(sweep(MPI_COMM_WORLD, "%s --domains %s,%s --out %s --context 8", recipe, st[0], st[2], out),
                    ML_ERR_SHAPE, "vocab mismatch");
    ML_ASSERT_FAILS(sweep(MPI_COMM_WORLD, "%s --domains %s --out %s --keep 0.3 --count 3", recipe, st[0], out),
                    ML_ERR_ARG, "--keep 0.3 is not a grid point (nearest: 0.5");
    assert_false(ml_file_exists(out));
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_reference, setup),
        cmocka_unit_test(test_ranks),
        cmocka_unit_test(test_tasks),
        cmocka_unit_test(test_bad),
    };
    return ml_test_run(argc, argv, "sweep", tests, sizeof tests / sizeof tests[0]);
}
