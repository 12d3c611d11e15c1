/* Rank-count independence of data-parallel training: the same 50-step run on
 * sub-communicators of 1, 2 and 4 ranks (the world split into groups that
 * train at the same time) gives loss curves that agree within 1e-4 relative
 * at every step and parameters within float-summation noise; groups of the
 * same size give bitwise identical models; gradient accumulation with 1-row
 * micro-batches agrees with whole-batch steps. */
#include "ml_test.h"

#include <math.h>

#include "train_fixture.h"

#define STEPS 50
static int rank, nranks;
static char dir[1024], stores[2][1200];

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *names[2] = {"alpha", "beta"};
    const int64_t ntrain[2] = {6000, 3000}, nval[2] = {600, 400};
    return tf_setup_stores("train_ranks", dir, sizeof dir, 2, names, ntrain, nval, stores);
}

/* Train on groups of `size` ranks; returns this rank's output path. */
static void train_groups(int size, const char *extra, char *out, size_t n) {
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, rank / size, rank, &sub);
    snprintf(out, n, "%s/p%d-g%d%s.h5", dir, size, rank / size, extra[0] ? "-mb" : "");
    ML_ASSERT_OK(tf_train(sub,
                          "--domains %s,%s --weights 2,1 --out %s " TF_SHAPE
                          " --global_batch 8 --steps %d --lr 1e-2 --warmup 5 --weight_decay 0.1 --clip 1.0 "
                          "--eval_every 25 --eval_batches 2 --checkpoint_every 0 %s",
                          stores[0], stores[1], out, STEPS, extra));
    MPI_Comm_free(&sub);
}

static void test_rank_counts(void **state) {
    (void)state;
    char out[1200], ref[1200];
    double loss_ref[STEPS], loss[STEPS], gn_ref[STEPS], gn[STEPS];
    snprintf(ref, sizeof ref, "%s/p1-g0.h5", dir);
    for (int size = 1; size <= nranks; size *= 2) {
        if (nranks % size) continue;
        train_groups(size, "", out, sizeof out);
        MPI_Barrier(MPI_COMM_WORLD);
        assert_int_equal(tf_read_col(ref, "/train/log/loss", ML_F64, loss_ref, STEPS), STEPS);
        assert_int_equal(tf_read_col(ref, "/train/log/grad_norm", ML_F64, gn_ref, STEPS), STEPS);
        assert_int_equal(tf_read_col(out, "/train/log/loss", ML_F64, loss, STEPS), STEPS);
        assert_int_equal(tf_read_col(out, "/train/log/grad_norm", ML_F64, gn, STEPS), STEPS);
        double worst = 0;
        for (int s = 0; s < STEPS; s++) {
            ML_ASSERT_CLOSE(loss[s], loss_ref[s], 1e-4);
            ML_ASSERT_CLOSE(gn[s], gn_ref[s], 1e-3);
            double r = fabs(loss[s] - loss_ref[s]) / loss_ref[s];
            if (r > worst) worst = r;
        }
        ml_model *a = tf_model(ref), *b = tf_model(out);
        assert_non_null(a);
        assert_non_null(b);
        double d = tf_max_diff(a, b);
        if (rank == 0)
            printf("  %d rank%s: max relative loss difference %.2e over %d steps (loss %.4f -> %.4f), max |param "
                   "difference| %.2e\n",
                   size, size > 1 ? "s" : "", worst, STEPS, loss[0], loss[STEPS - 1], d);
        assert_true(d < 1e-4);
        assert_true(loss[STEPS - 1] < loss_ref[0] - 1.0); /* it learned something */
        /* groups of the same size are bitwise identical */
        char other[1200];
        snprintf(other, sizeof other, "%s/p%d-g0.h5", dir, size);
        ml_model *c = tf_model(other);
        assert_non_null(c);
        assert_memory_equal(b->params, c->params, sizeof(float) * b->n_params);
        ml_model_destroy(&a);
        ml_model_destroy(&b);
        ml_model_destroy(&c);
        MPI_Barrier(MPI_COMM_WORLD);
    }
}

static void test_accumulation(void **state) {
    (void)state;
    char out[1200], ref[1200];
    double loss_ref[STEPS], loss[STEPS];
    snprintf(ref, sizeof ref, "%s/p1-g0.h5", dir);
    train_groups(nranks, "--micro_batch 1", out, sizeof out);
    MPI_Barrier(MPI_COMM_WORLD);
    assert_int_equal(tf_read_col(ref, "/train/log/loss", ML_F64, loss_ref, STEPS), STEPS);
    assert_int_equal(tf_read_col(out, "/train/log/loss", ML_F64, loss, STEPS), STEPS);
    for (int s = 0; s < STEPS; s++) ML_ASSERT_CLOSE(loss[s], loss_ref[s], 1e-4);
    ml_model *a = tf_model(ref), *b = tf_model(out);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(tf_max_diff(a, b) < 1e-4);
    ml_model_destroy(&a);
    ml_model_destroy(&b);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_rank_counts, setup),
        cmocka_unit_test(test_accumulation),
    };
    return ml_test_run(argc, argv, "train_ranks", tests, sizeof tests / sizeof tests[0]);
}
