/* Shared helpers for mergelens tests (cmocka + MPI).
 * Usage:  int main(int argc, char **argv) { const struct CMUnitTest t[] = {...};
 *                                          return ml_test_run(argc, argv, "name", t, n); }
 */
#ifndef ML_TEST_H
#define ML_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <mpi.h>

#include "mergelens/core.h"

/* Assert a mergelens call succeeded; on failure print the error. */
#define ML_ASSERT_OK(call)                                                                   \
    do {                                                                                     \
        int ml_trc_ = (call);                                                                \
        if (ml_trc_ != ML_OK) {                                                              \
            ml_error_print(stderr, 1);                                                       \
            fail_msg("%s returned %s", #call, ml_status_name(ml_trc_));                     \
        }                                                                                    \
    } while (0)
/* Assert a call fails with the given code and its message contains text. */
/* A collective failure: `code` on the ranks that failed themselves, ML_ERR_REMOTE
 * (with the failing rank's message) on the others; every rank gets a one-line
 * message containing text. */
#define ML_ASSERT_FAILS_ALL(call, code, text)                                                                \
    do {                                                                                                     \
        ml_error_clear();                                                                                    \
        int rc_ = (call);                                                                                    \
        if (rc_ != (code) && rc_ != ML_ERR_REMOTE)                                                           \
            fail_msg("%s returned %s (%s)", #call, ml_status_name(rc_), ml_error_message());                \
        if (!strstr(ml_error_message(), (text))) fail_msg("message '%s' lacks '%s'", ml_error_message(), (text)); \
        if (strchr(ml_error_message(), '\n')) fail_msg("message '%s' is not one line", ml_error_message());  \
    } while (0)
#define ML_ASSERT_FAILS(call, code, text)                                                    \
    do {                                                                                     \
        ml_error_clear();                                                                    \
        int ml_trc_ = (call);                                                                \
        if (ml_trc_ != (code))                                                               \
            fail_msg("%s returned %s, expected %s (message: %s)", #call,                    \
                     ml_status_name(ml_trc_), ml_status_name(code), ml_error_message());     \
        const char *ml_ttext_ = (text);                                                      \
        if (ml_ttext_ && !strstr(ml_error_message(), ml_ttext_))                             \
            fail_msg("%s: message '%s' lacks '%s'", #call, ml_error_message(), ml_ttext_);   \
    } while (0)
/* |a - b| <= tol * max(1, |b|), printing both values. */
#define ML_ASSERT_CLOSE(a, b, tol)                                                           \
    do {                                                                                     \
        double ml_a_ = (double)(a), ml_b_ = (double)(b);                                     \
        double ml_s_ = fabs(ml_b_) > 1 ? fabs(ml_b_) : 1;                                    \
        if (!(fabs(ml_a_ - ml_b_) <= (tol) * ml_s_))                                         \
            fail_msg("%s = %.9g, expected %s = %.9g (tol %g)", #a, ml_a_, #b, ml_b_,         \
                     (double)(tol));                                                         \
    } while (0)

/* A fresh per-test directory under $ML_TEST_TMP (or /tmp), same on all ranks
 * of MPI_COMM_WORLD. Returned pointer is static storage. */
static inline const char *ml_test_dir(const char *name) {
    static char dir[1024];
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *base = getenv("ML_TEST_TMP");
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long nonce = (long)getpid();
    MPI_Bcast(&nonce, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    snprintf(dir, sizeof dir, "%s/%s-np%d-%ld", base ? base : "/tmp", name, size, nonce);
    if (rank == 0) ml_mkdirs(dir);
    MPI_Barrier(MPI_COMM_WORLD);
    return dir;
}

static inline int ml_test_run(int argc, char **argv, const char *group, const struct CMUnitTest *tests,
                              size_t n) {
    (void)argc;
    (void)argv;
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (!getenv("ML_LOG_LEVEL")) ml_log_set_level(ML_LOG_WARN);
    int failed = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}

#endif
