/* capture_signal_fixture DIR: the inputs of test_signals.sh, written serially
 * (fixtures.h): DIR/model.h5 (2 layers, V 40, context 32) and the token
 * stores DIR/a.h5, DIR/b.h5 (6000 training documents, about 125k tokens, each). */
#include "fixtures.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/a.h5", argv[1]);
    fx_store_write(MPI_COMM_SELF, path, "alpha", 40, 6000, 20, 1, 0, NULL);
    snprintf(path, sizeof path, "%s/b.h5", argv[1]);
    fx_store_write(MPI_COMM_SELF, path, "beta", 40, 6000, 20, 2, 1, NULL);
    snprintf(path, sizeof path, "%s/model.h5", argv[1]);
    fx_model_write(MPI_COMM_SELF, path, 1, 1, NULL);
    MPI_Finalize();
    return 0;
}
