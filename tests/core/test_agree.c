/* core: all ranks agree on failure (1, 2 and 4 ranks). */
#include "ml_test.h"

static void test_agree(void **state) {
    (void)state;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_error_clear();
    assert_int_equal(ml_agree(MPI_COMM_WORLD, ML_OK), ML_OK);
    /* the last rank fails: everyone fails, others adopt its message */
    int local = ML_OK;
    if (rank == size - 1) local = ML_FAIL(ML_ERR_IO, "disk on fire on rank %d", rank);
    int rc = ml_agree(MPI_COMM_WORLD, local);
    assert_int_not_equal(rc, ML_OK);
    assert_true(ml_error_agreed());
    assert_non_null(strstr(ml_error_message(), "disk on fire"));
    if (rank == size - 1) assert_int_equal(rc, ML_ERR_IO);
    else assert_int_equal(rc, ML_ERR_REMOTE);
    /* two ranks fail: the lowest failing rank's message wins */
    ml_error_clear();
    local = ML_OK;
    if (rank >= size / 2) local = ML_FAIL(ML_ERR_CONFIG, "bad key on rank %d", rank);
    rc = ml_agree(MPI_COMM_WORLD, local);
    assert_int_not_equal(rc, ML_OK);
    if (rank < size / 2) {
        char want[64];
        snprintf(want, sizeof want, "bad key on rank %d", size / 2);
        assert_non_null(strstr(ml_error_message(), want));
    }
    /* injection points fire only on the named rank */
    setenv("ML_INJECT_FAIL", "site-x:1", 1);
    rc = ml_inject_point("site-x", rank);
    assert_int_equal(rc, rank == 1 ? ML_ERR_INJECTED : ML_OK);
    assert_int_equal(ml_inject_point("site-y", rank), ML_OK);
    unsetenv("ML_INJECT_FAIL");
    ml_error_clear();
}

/* ml_signal_agree: the caught signals of all ranks, SIGTERM over SIGUSR1. */
static void test_signal_agree(void **state) {
    (void)state;
    int rank, size, sig = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_signal_guard guard = {0};
    ml_signals_install(&guard);
    assert_int_equal(ml_signal_agree(MPI_COMM_WORLD, &sig), ML_OK);
    assert_int_equal(sig, 0);
    if (rank == size - 1) raise(SIGUSR1); /* one rank warned */
    assert_int_equal(ml_signal_agree(MPI_COMM_WORLD, &sig), ML_OK);
    assert_int_equal(sig, SIGUSR1);
    raise(SIGUSR1); /* every rank warned */
    assert_int_equal(ml_signal_agree(MPI_COMM_WORLD, &sig), ML_OK);
    assert_int_equal(sig, SIGUSR1);
    if (rank == 0) raise(SIGTERM); /* one rank terminated, the others warned */
    assert_int_equal(ml_signal_agree(MPI_COMM_WORLD, &sig), ML_OK);
    assert_int_equal(sig, SIGTERM);
    assert_int_equal(ml_signal_pending(), rank == 0 ? SIGTERM : SIGUSR1);
    ml_signals_restore(&guard);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_agree), cmocka_unit_test(test_signal_agree)};
    return ml_test_run(argc, argv, "core_agree", tests, sizeof tests / sizeof tests[0]);
}
