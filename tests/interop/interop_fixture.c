/* Driver for the script tests: writes fixture files and runs the interop CLI
 * functions (until they are reachable through the mergelens executable).
 *   interop_fixture checkpoint OUT.h5 SEED
 *   interop_fixture sae OUT.h5 ARCH D_IN D_SAE K SEED
 *   interop_fixture export ... | import ...      (as `mergelens export ...`) */
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "mergelens/interop.h"

int main(int argc, char **argv) {
    int provided, rank, size, rc = ML_ERR_ARG;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (argc >= 4 && !strcmp(argv[1], "checkpoint"))
        rc = fx_write_checkpoint(argv[2], fx_config, strtoull(argv[3], NULL, 10), NULL, NULL);
    else if (argc >= 8 && !strcmp(argv[1], "sae"))
        rc = fx_write_sae(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), strtoull(argv[7], NULL, 10),
                          "models/base.h5", "{\"context_size\": 32}");
    else if (argc >= 2 && !strcmp(argv[1], "export"))
        rc = ml_cmd_export(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (argc >= 2 && !strcmp(argv[1], "import"))
        rc = ml_cmd_import(MPI_COMM_WORLD, argc - 1, argv + 1);
    else if (rank == 0)
        fprintf(stderr, "usage: interop_fixture checkpoint|sae|export|import ...\n");
    if (rc != ML_OK && rank == 0) ml_error_print(stderr, 0);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
