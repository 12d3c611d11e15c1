/* Test driver: the train module's commands as a standalone executable, plus
 * `mkstore PATH DOMAIN V NTRAIN NVAL` to write a small token store for shell tests. */
#include <stdlib.h>

#include "mergelens/train.h"
#include "ml_test_driver.h"
#include "train_fixture.h"

static int mkstore(MPI_Comm comm, int argc, char **argv) {
    if (argc != 6) return ML_FAIL(ML_ERR_ARG, "mkstore: expected PATH DOMAIN V NTRAIN NVAL");
    int rank;
    MPI_Comm_rank(comm, &rank);
    return rank == 0 ? tf_write_store(argv[1], argv[2], atoi(argv[3]), atoll(argv[4]), atoll(argv[5]), 1) : ML_OK;
}

int main(int argc, char **argv) {
    static const ml_command cmds[] = {
        {"train", ml_cmd_train, NULL},
        {"eval", ml_cmd_eval, NULL},
        {"mkstore", mkstore, NULL},
        {NULL, NULL, NULL},
    };
    return ml_test_driver_main(argc, argv, "train_cli", cmds);
}
