/* Test driver: the data module's commands as a standalone executable
 * (until they are registered in the mergelens CLI table). */
#include <string.h>

#include "mergelens/data.h"

int main(int argc, char **argv) {
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    int rc = ML_ERR_ARG;
    if (argc < 2) fprintf(stderr, "usage: data_cli tokenizer|tokenize|data ...\n");
    else if (!strcmp(argv[1], "tokenizer")) rc = ml_cmd_tokenizer(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (!strcmp(argv[1], "tokenize")) rc = ml_cmd_tokenize(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (!strcmp(argv[1], "data")) rc = ml_cmd_data(MPI_COMM_WORLD, argc - 1, argv + 1);
    else fprintf(stderr, "data_cli: unknown command '%s'\n", argv[1]);
    if (rc != ML_OK && rank == 0 && argc >= 2) ml_error_print(stderr, 0);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
