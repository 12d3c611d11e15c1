/* Helpers shared by the compare module's tests: running a command and
 * writing an activations file. */
#ifndef CMP_TEST_UTIL_H
#define CMP_TEST_UTIL_H

#include "../common/ml_test.h"
#include "mergelens/io.h"

/* Run a command with a NULL-terminated list of arguments. */
static inline int run_cmd(int (*cmd)(MPI_Comm, int, char **), MPI_Comm comm, const char **args) {
    char *argv[64];
    int argc = 0;
    for (; args[argc]; argc++) argv[argc] = (char *)args[argc];
    argv[argc] = NULL;
    return cmd(comm, argc, argv);
}

/* acts file at path: /hooks/<hook>/acts = x (n, d), /tokens = tok (n), written by rank 0. */
static inline void cmp_write_acts(const char *path, const char *hook, const float *x, const int32_t *tok, int64_t n,
                                  int64_t d, int64_t chunk_rows) {
    ml_h5 *h = NULL;
    char ds[512];
    snprintf(ds, sizeof ds, "/hooks/%s/acts", hook);
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.activations", 1, &h));
    hsize_t dims[2] = {(hsize_t)n, (hsize_t)d}, n1[1] = {(hsize_t)n};
    ml_h5_layout lay = {.chunk_rows = chunk_rows};
    ML_ASSERT_OK(ml_h5_create_dataset(h, ds, ML_F32, 2, dims, &lay));
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    ML_ASSERT_OK(ml_h5_write_rows(h, ds, ML_F32, 0, rank == 0 ? (hsize_t)n : 0, x));
    ML_ASSERT_OK(ml_h5_write_tensor(h, "/tokens", ML_I32, 1, n1, tok));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "model", "models/x.h5"));
    ML_ASSERT_OK(ml_h5_close(&h));
}

#endif
