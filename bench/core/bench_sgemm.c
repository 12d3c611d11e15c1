/* The machine's sgemm rate under the current settings: the reference every
 * other benchmark reports its GFLOP/s against. MPI-aware: every rank runs
 * the same product at once (as in data-parallel training). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "mergelens/core.h"

static double measure(int m, int n, int k, float *a, float *b, float *c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    double t0 = ml_wtime();
    int reps = 0;
    while (ml_wtime() - t0 < 1.0 || reps < 3) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
        reps++;
    }
    return 2.0 * m * n * (double)k * reps / (ml_wtime() - t0) * 1e-9;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const int shapes[][3] = {{2048, 2048, 2048}, {8192, 1024, 512}, {8192, 512, 1024}, {4096, 8192, 512}};
    size_t maxe = (size_t)8192 * 8192;
    float *a = malloc(sizeof(float) * maxe), *b = malloc(sizeof(float) * maxe), *c = malloc(sizeof(float) * maxe);
    for (size_t i = 0; i < maxe; i++) a[i] = b[i] = (float)(i % 13) * 0.01f;
    if (rank == 0) printf("%-22s %12s %12s\n", "sgemm M x N x K", "GFLOP/s/rank", "GFLOP/s total");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double g = measure(shapes[s][0], shapes[s][1], shapes[s][2], a, b, c), tot = 0;
        MPI_Reduce(&g, &tot, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0)
            printf("%5d x %5d x %5d    %12.1f %12.1f\n", shapes[s][0], shapes[s][1], shapes[s][2], tot / size, tot);
    }
    free(a);
    free(b);
    free(c);
    MPI_Finalize();
    return 0;
}
