/* Test driver: the train module's commands as a standalone executable (until
 * they are registered in the mergelens CLI table), plus `mkstore` to write a
 * small token store for shell tests. */
#include <stdlib.h>
#include <string.h>

#include "mergelens/train.h"
#include "train_fixture.h"

int main(int argc, char **argv) {
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    int rc = ML_ERR_ARG;
    if (argc < 2) fprintf(stderr, "usage: train_cli train|eval|mkstore ...\n");
    else if (!strcmp(argv[1], "train")) rc = ml_cmd_train(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (!strcmp(argv[1], "eval")) rc = ml_cmd_eval(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (!strcmp(argv[1], "mkstore") && argc == 7) /* PATH DOMAIN V NTRAIN NVAL */
        rc = rank == 0 ? tf_write_store(argv[2], argv[3], atoi(argv[4]), atoll(argv[5]), atoll(argv[6]), 1) : ML_OK;
    else fprintf(stderr, "train_cli: unknown command '%s'\n", argv[1]);
    if (rc != ML_OK && rank == 0 && argc >= 2) ml_error_print(stderr, 0);
    MPI_Finalize();
    return rc == ML_OK ? 0 : rc == ML_ERR_INTERRUPTED ? 3 : 1;
}
