/* End-to-end `mergelens compare` on synthetic files: two TopK SAEs (random
 * dictionaries, F features, k active) on random activations (N x D).
 * Prints the wall time of the command and its profile.
 * usage: bench_compare [F] [D] [N] [k] [dir] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/compare.h"
#include "mergelens/io.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    int F = argc > 1 ? atoi(argv[1]) : 4096, D = argc > 2 ? atoi(argv[2]) : 256;
    int64_t N = argc > 3 ? atoll(argv[3]) : 32768;
    int k = argc > 4 ? atoi(argv[4]) : 32;
    const char *dir = argc > 5 ? argv[5] : "/tmp/bench_compare";
    char sae[2][512], acts[2][512], out[512];
    int rc = ML_OK;
    if (rank == 0) ml_mkdirs(dir);
    MPI_Barrier(MPI_COMM_WORLD);
    for (int m = 0; m < 2 && rc == ML_OK; m++) {
        snprintf(sae[m], sizeof sae[m], "%s/sae%d.h5", dir, m);
        snprintf(acts[m], sizeof acts[m], "%s/acts%d.h5", dir, m);
        ml_sae *s = NULL;
        rc = ml_sae_create(ML_SAE_TOPK, D, F, k, &s);
        if (rc) break;
        ml_sae_init(s, 11 + (uint64_t)m, 1.0f);
        snprintf(s->hook_name, sizeof s->hook_name, "blocks.0.mlp.hook_post");
        rc = ml_sae_write(MPI_COMM_WORLD, sae[m], s, NULL, NULL, NULL);
        ml_sae_destroy(&s);
        if (rc) break;
        ml_h5 *h = NULL;
        rc = ml_h5_create(MPI_COMM_WORLD, acts[m], "mergelens.activations", 1, &h);
        if (rc) break;
        hsize_t dims[2] = {(hsize_t)N, (hsize_t)D}, n1[1] = {(hsize_t)N};
        ml_h5_layout lay = {.chunk_rows = 4096};
        rc = ml_h5_create_dataset(h, "/hooks/blocks.0.mlp.hook_post/acts", ML_F32, 2, dims, &lay);
        float *x = malloc(sizeof(float) * (size_t)(N * D));
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)N);
        ml_rng r;
        ml_rng_seed(&r, 5, 0); /* same data for both models: the same tokens and close activations */
        for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)ml_rng_below(&r, 8192);
        for (int64_t i = 0; i < N * D; i++) x[i] = ml_rng_normal(&r);
        if (rc == ML_OK)
            rc = ml_h5_write_rows(h, "/hooks/blocks.0.mlp.hook_post/acts", ML_F32, 0, rank == 0 ? (hsize_t)N : 0, x);
        if (rc == ML_OK) rc = ml_h5_write_tensor(h, "/tokens", ML_I32, 1, n1, tok);
        free(x);
        free(tok);
        if (rc == ML_OK) rc = ml_h5_close(&h);
    }
    snprintf(out, sizeof out, "%s/out.h5", dir);
    if (rc == ML_OK) {
        char *av[] = {"compare", "--a", sae[0], "--acts-a", acts[0], "--b", sae[1], "--acts-b", acts[1], "--out", out,
                      NULL};
        ml_prof_reset();
        double t0 = ml_wtime();
        rc = ml_cmd_compare(MPI_COMM_WORLD, 11, av);
        double t = ml_wtime() - t0;
        if (rank == 0 && rc == ML_OK)
            printf("compare F=%d D=%d N=%lld k=%d ranks=%d: %.2f s wall\n", F, D, (long long)N, k, size, t);
        ml_prof_summary(MPI_COMM_WORLD, stdout);
    }
    if (rc != ML_OK) ml_error_print(stderr, 0);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
