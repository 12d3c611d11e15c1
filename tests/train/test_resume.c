/* Exact resume: a run stopped at a random step (as if killed: --stop_after,
 * no final write) or interrupted by SIGUSR1 (raised on the last rank only;
 * all ranks agree, checkpoint, ML_ERR_INTERRUPTED) and then rerun gives
 * parameters, optimizer moments and loss log BITWISE identical to an
 * uninterrupted run; the interrupted file is marked complete = 0 and holds
 * the right step; a rerun with a changed option is refused. The same with
 * a data subset (--subset 1/2): recorded under /data, a rerun with another
 * subset is refused, the resumed run is bitwise the uninterrupted one, and
 * on 2 ranks the subset run matches a 1-rank run's loss curve. */
#include "ml_test.h"

#include <math.h>
#include <signal.h>
#include <time.h>

#include "train_fixture.h"

#define STEPS 30
#define EVERY 6
static int rank, nranks;
static char dir[1024], stores[2][1200], full[1200], common[4096];

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *names[2] = {"alpha", "beta"};
    const int64_t ntrain[2] = {5000, 2000}, nval[2] = {500, 300};
    int rc = tf_setup_stores("train_resume", dir, sizeof dir, 2, names, ntrain, nval, stores);
    snprintf(common, sizeof common,
             "--domains %s,%s " TF_SHAPE " --global_batch 4 --micro_batch 1 --steps %d --lr 1e-2 --warmup 3 "
             "--schedule cosine --eval_every 10 --eval_batches 2 --checkpoint_every %d",
             stores[0], stores[1], STEPS, EVERY);
    snprintf(full, sizeof full, "%s/full.h5", dir);
    if (rc == ML_OK) rc = tf_train(MPI_COMM_WORLD, "%s --out %s", common, full);
    return rc;
}

/* Compare every saved array of two checkpoints bitwise. */
static void assert_same_run(const char *a, const char *b) {
    ml_model *ma = tf_model(a), *mb = tf_model(b);
    assert_non_null(ma);
    assert_non_null(mb);
    assert_memory_equal(ma->params, mb->params, sizeof(float) * ma->n_params);
    ml_adamw_config ac;
    ml_adamw_config_default(&ac);
    ml_adamw *oa = NULL, *ob = NULL;
    ML_ASSERT_OK(ml_adamw_create(ma, &ac, &oa));
    ML_ASSERT_OK(ml_adamw_create(mb, &ac, &ob));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, a, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_adamw_load(h, oa, ma));
    ML_ASSERT_OK(ml_h5_close(&h));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, b, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_adamw_load(h, ob, mb));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_int_equal(oa->step, STEPS);
    assert_int_equal(ob->step, STEPS);
    assert_memory_equal(oa->m, ob->m, sizeof(float) * oa->n);
    assert_memory_equal(oa->v, ob->v, sizeof(float) * oa->n);
    double la[STEPS], lb[STEPS], ea[64], eb[64];
    int64_t ta[2], tb[2];
    assert_int_equal(tf_read_col(a, "/train/log/loss", ML_F64, la, STEPS), STEPS);
    assert_int_equal(tf_read_col(b, "/train/log/loss", ML_F64, lb, STEPS), STEPS);
    assert_memory_equal(la, lb, sizeof la);
    int64_t ne = tf_read_col(a, "/train/eval/loss", ML_F64, ea, 64);
    assert_int_equal(ne, 2 * (STEPS / 10)); /* steps 10, 20, 30 and the end, 2 domains */
    assert_int_equal(tf_read_col(b, "/train/eval/loss", ML_F64, eb, 64), ne);
    assert_memory_equal(ea, eb, sizeof(double) * (size_t)ne);
    assert_int_equal(tf_read_col(a, "/data/tokens_seen", ML_I64, ta, 2), 2);
    assert_int_equal(tf_read_col(b, "/data/tokens_seen", ML_I64, tb, 2), 2);
    assert_int_equal(ta[0], tb[0]);
    assert_int_equal(ta[1], tb[1]);
    assert_int_equal(ta[0] + ta[1], (int64_t)STEPS * 4 * 16);
    assert_int_equal(tf_attr_int(b, "/", "complete"), 1);
    ml_adamw_destroy(&oa);
    ml_adamw_destroy(&ob);
    ml_model_destroy(&ma);
    ml_model_destroy(&mb);
}

static void test_stop_and_resume(void **state) {
    (void)state;
    /* a random stop step after the first periodic checkpoint */
    int64_t k = 0;
    if (rank == 0) k = EVERY + 1 + (int64_t)(((unsigned)time(NULL) ^ (unsigned)getpid()) % (STEPS - EVERY - 2));
    MPI_Bcast(&k, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("  stop after step %lld, resume from step %lld\n", (long long)k, (long long)(k / EVERY * EVERY));
    char out[1200];
    snprintf(out, sizeof out, "%s/stopped.h5", dir);
    ML_ASSERT_FAILS(tf_train(MPI_COMM_WORLD, "%s --out %s --stop_after %lld", common, out, (long long)k),
                    ML_ERR_INTERRUPTED, "stopped after step");
    assert_int_equal(tf_attr_int(out, "/", "complete"), 0);
    assert_int_equal(tf_attr_int(out, "/train", "step"), k / EVERY * EVERY);
    /* a changed option is refused, the checkpoint stays */
    ML_ASSERT_FAILS(tf_train(MPI_COMM_WORLD, "%s --out %s --lr 2e-2", common, out), ML_ERR_CONFIG,
                    "cannot resume: it was started with lr = 0.01, this run has lr = 0.02");
    assert_int_equal(tf_attr_int(out, "/train", "step"), k / EVERY * EVERY);
    /* resume */
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD, "%s --out %s", common, out));
    assert_same_run(full, out);
}

static void test_signal_and_resume(void **state) {
    (void)state;
    char out[1200];
    snprintf(out, sizeof out, "%s/signalled.h5", dir);
    struct sigaction before, after;
    sigaction(SIGUSR1, NULL, &before);
    ML_ASSERT_FAILS(tf_train(MPI_COMM_WORLD, "%s --out %s --raise_at 17", common, out), ML_ERR_INTERRUPTED,
                    "interrupted by SIGUSR1: checkpoint at step 17 of 30");
    assert_non_null(strstr(ml_error_message(), "rerun the same command to resume"));
    assert_int_equal(tf_attr_int(out, "/", "complete"), 0);
    assert_int_equal(tf_attr_int(out, "/train", "step"), 17);
    /* the command's handler is gone: SIGUSR1 is back to its previous disposition */
    sigaction(SIGUSR1, NULL, &after);
    assert_true(after.sa_handler == before.sa_handler);
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD, "%s --out %s", common, out));
    assert_same_run(full, out);
}

static void test_subset_resume(void **state) {
    (void)state;
    char sub_full[1200], out[1200], sub_common[4200];
    snprintf(sub_common, sizeof sub_common, "%s --subset 1/2", common);
    snprintf(sub_full, sizeof sub_full, "%s/subset_full.h5", dir);
    snprintf(out, sizeof out, "%s/subset_stopped.h5", dir);
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD, "%s --out %s", sub_common, sub_full));
    /* provenance: alpha 5000 tokens = 312 windows of 17, beta 2000 = 124: slice 1 of 2 is the second half */
    assert_int_equal(tf_attr_int(sub_full, "/data", "subset_index"), 1);
    assert_int_equal(tf_attr_int(sub_full, "/data", "subset_count"), 2);
    int64_t first[2], nwin[2];
    assert_int_equal(tf_read_col(sub_full, "/data/subset_first_window", ML_I64, first, 2), 2);
    assert_int_equal(tf_read_col(sub_full, "/data/subset_windows", ML_I64, nwin, 2), 2);
    assert_int_equal(first[0], 156);
    assert_int_equal(nwin[0], 156);
    assert_int_equal(first[1], 62);
    assert_int_equal(nwin[1], 62);
    assert_int_equal(tf_attr_int(full, "/data", "subset_count"), 1);
    char *cfg = tf_attr_str(sub_full, "/", "config");
    assert_non_null(cfg);
    assert_non_null(strstr(cfg, "\"subset\":\"1/2\""));
    ml_free(cfg);
    /* another subset trains on other windows: another model */
    ml_model *a = tf_model(full), *b = tf_model(sub_full);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(tf_max_diff(a, b) > 1e-3);
    ml_model_destroy(&a);
    ml_model_destroy(&b);
    /* stop, a rerun with another subset is refused, resume */
    ML_ASSERT_FAILS(tf_train(MPI_COMM_WORLD, "%s --out %s --stop_after 15", sub_common, out), ML_ERR_INTERRUPTED,
                    "stopped after step 15");
    assert_int_equal(tf_attr_int(out, "/train", "step"), 12);
    ML_ASSERT_FAILS(tf_train(MPI_COMM_WORLD, "%s --out %s --subset 0/2", common, out), ML_ERR_CONFIG,
                    "cannot resume: it was started with subset = \"1/2\", this run has subset = \"0/2\"");
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD, "%s --out %s", sub_common, out));
    assert_same_run(sub_full, out);
    if (nranks == 2) { /* the same subset run on 1 rank (each rank alone) */
        char one[1200];
        double l1[STEPS], l2[STEPS];
        snprintf(one, sizeof one, "%s/subset_one_rank%d.h5", dir, rank);
        ML_ASSERT_OK(tf_train(MPI_COMM_SELF, "%s --out %s", sub_common, one));
        assert_int_equal(tf_read_col(one, "/train/log/loss", ML_F64, l1, STEPS), STEPS);
        assert_int_equal(tf_read_col(sub_full, "/train/log/loss", ML_F64, l2, STEPS), STEPS);
        double worst = 0;
        for (int s = 0; s < STEPS; s++) {
            ML_ASSERT_CLOSE(l1[s], l2[s], 1e-4);
            worst = fmax(worst, fabs(l1[s] - l2[s]) / l2[s]);
        }
        if (rank == 0) printf("  subset 1/2: 1 vs 2 ranks, max relative loss difference %.2e\n", worst);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_stop_and_resume, setup),
        cmocka_unit_test(test_signal_and_resume),
        cmocka_unit_test(test_subset_resume),
    };
    return ml_test_run(argc, argv, "train_resume", tests, sizeof tests / sizeof tests[0]);
}
