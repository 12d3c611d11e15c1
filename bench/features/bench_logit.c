/* Logit-weight cosine across two models (ml_logit_cosine_best) at a given
 * size: two dictionaries of F random decoder rows (d = d_mlp wide, through
 * down_proj), two random models' lm_head (V, D), norm weights and down_proj.
 * Prints the wall time (max over ranks) and the rate of the main terms
 * (3 V D^2 Gram + 2 F d D projection + F^2 D cosine tiles, flops x 2).
 * usage: bench_features_logit [F] [d_mlp] [D] [V]   (default: the paper's 16384 1024 512 32000) */
#include <stdio.h>
#include <stdlib.h>

#include "mergelens/features.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    int64_t F = argc > 1 ? atoll(argv[1]) : 16384, d = argc > 2 ? atoll(argv[2]) : 1024;
    int64_t D = argc > 3 ? atoll(argv[3]) : 512, V = argc > 4 ? atoll(argv[4]) : 32000;
    float *W[2], *U[2], *w[2], *P[2];
    ml_rng r;
    ml_rng_seed(&r, 3, 0);
    for (int m = 0; m < 2; m++) {
        W[m] = malloc(sizeof(float) * (size_t)(F * d));
        U[m] = malloc(sizeof(float) * (size_t)(V * D));
        w[m] = malloc(sizeof(float) * (size_t)D);
        P[m] = malloc(sizeof(float) * (size_t)(D * d));
        if (!W[m] || !U[m] || !w[m] || !P[m]) {
            fprintf(stderr, "bench_features_logit: out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (int64_t i = 0; i < F * d; i++) W[m][i] = ml_rng_normal(&r);
        for (int64_t i = 0; i < V * D; i++) U[m][i] = ml_rng_normal(&r);
        for (int64_t i = 0; i < D; i++) w[m][i] = 1.0f + 0.1f * ml_rng_normal(&r);
        for (int64_t i = 0; i < D * d; i++) P[m][i] = ml_rng_normal(&r);
    }
    ml_logit_map ma = {U[0], w[0], P[0], V, D}, mb = {U[1], w[1], P[1], V, D};
    ml_best b;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    int rc = ml_logit_cosine_best(MPI_COMM_WORLD, W[0], F, d, &ma, W[1], F, d, &mb, 0, &b);
    double el = MPI_Wtime() - t0, mx = 0;
    MPI_Allreduce(&el, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rc != ML_OK) {
        ml_error_print(stderr, 0);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double gram = 3.0 * 2 * V * D * D, proj = 2.0 * 2 * F * d * D / size, cos = 2.0 * F * F * D / size;
    if (rank == 0)
        printf("logit cosine F %lld x %lld, d_mlp %lld, D %lld, V %lld on %d rank(s): %.2f s wall; per rank %.1f GFLOP "
               "(Gram %.1f, projection %.1f, cosine tiles %.1f) = %.1f GFLOP/s; mean-max %.4f / %.4f\n",
               (long long)F, (long long)F, (long long)d, (long long)D, (long long)V, size, mx,
               (gram + proj + cos) / 1e9, gram / 1e9, proj / 1e9, cos / 1e9, (gram + proj + cos) / 1e9 / mx, b.a_mean,
               b.b_mean);
    ml_best_free(&b);
    for (int m = 0; m < 2; m++) {
        free(W[m]);
        free(U[m]);
        free(w[m]);
        free(P[m]);
    }
    MPI_Finalize();
    return 0;
}
