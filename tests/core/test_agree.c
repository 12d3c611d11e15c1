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

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_agree)};
    return ml_test_run(argc, argv, "core_agree", tests, 1);
}
