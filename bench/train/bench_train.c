/* Benchmark of the full data-parallel training step (`mergelens train`:
 * loader, micro-batched forward + backward, gradient allreduce, clipping,
 * AdamW) at the two shapes of issue 4, next to the sgemm rate measured in the
 * same run with the same ranks and threads:
 *   (a) the paper's shape with vocabulary 8192: D 512, F 1024, H 16 / KV 8, T 256;
 *   (b) D 256, F 1024, H 4 / KV 4, V 4096, T 128.
 * FLOPs per training token: 6N + 6DV + 12TD (N non-embedding parameters).
 * Global batch 64 windows. Run it as
 *   mpirun -n 1 --bind-to none -x OPENBLAS_NUM_THREADS=2 bench_train   (1 rank x 2 threads)
 *   mpirun -n 2 -x OPENBLAS_NUM_THREADS=1 bench_train                   (2 ranks x 1 thread)
 * Options: --steps S (default 6; the first step is not timed), --micro_batch M
 * (default 0 = all rows of a rank at once), --shape a|b (default both),
 * --profile 1 (with --shape: print the profiling table of the run). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "mergelens/io.h"
#include "mergelens/train.h"

static int rank, nranks;

/* CPU seconds of this process (all threads), summed over ranks. */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double t = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec), sum = 0;
    MPI_Allreduce(&t, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return sum;
}
static double sgemm_cpu_rate; /* GFLOP per CPU second (all ranks and threads) */

static double sgemm_rate(void) {
    const int n = 2048;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++) a[i] = b[i] = (float)(i % 13) * 0.01f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    MPI_Barrier(MPI_COMM_WORLD);
    double c0 = cpu_seconds(), t0 = ml_wtime();
    int reps = 0;
    while (ml_wtime() - t0 < 2.0 || reps < 3) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        reps++;
    }
    double g = 2.0 * n * n * (double)n * reps / (ml_wtime() - t0) * 1e-9, tot = 0;
    MPI_Allreduce(&g, &tot, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    int allreps = 0;
    MPI_Allreduce(&reps, &allreps, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    sgemm_cpu_rate = 2.0 * n * n * (double)n * allreps / (cpu_seconds() - c0) * 1e-9;
    free(a);
    free(b);
    free(c);
    return tot;
}

/* A store of uniform random tokens (rank 0 writes; serial file). */
static int make_store(const char *path, int V, int64_t n) {
    int rc = ML_OK;
    if (rank == 0) {
        ml_h5 *h = NULL;
        rc = ml_h5_create(MPI_COMM_SELF, path, "mergelens.tokens", 1, &h);
        uint16_t *t = malloc(sizeof(uint16_t) * (size_t)n);
        ml_rng r;
        ml_rng_seed(&r, 1, 0);
        for (int64_t i = 0; i < n; i++) t[i] = (uint16_t)ml_rng_below(&r, (uint64_t)V);
        for (int s = 0; s < 2 && rc == ML_OK; s++) {
            hsize_t dims[1] = {(hsize_t)(s ? 4096 : n)}, d2[1] = {2};
            int64_t off[2] = {0, (int64_t)dims[0]};
            rc = ml_h5_write_tensor(h, s ? "val/tokens" : "train/tokens", ML_U16, 1, dims, t);
            if (!rc) rc = ml_h5_write_tensor(h, s ? "val/doc_offsets" : "train/doc_offsets", ML_I64, 1, d2, off);
        }
        if (!rc) rc = ml_h5_set_attr_int(h, "/", "vocab_size", V);
        if (!rc) rc = ml_h5_set_attr_str(h, "/", "domain", "random");
        if (!rc) rc = ml_h5_close(&h);
        else ml_h5_discard(&h);
        free(t);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    const char *name;
    int D, F, H, KV, V, T;
} shape;

static int bench_shape(const shape *s, int steps, int micro, double sgemm, int profile) {
    char store[256], out[256], args[1024];
    snprintf(store, sizeof store, "/tmp/mergelens_bench_train_%d.h5", s->V);
    snprintf(out, sizeof out, "/tmp/mergelens_bench_train_%s_np%d.h5", s->name, nranks);
    const int G = 64;
    if (make_store(store, s->V, (int64_t)(steps + 1) * G * s->T + 1) != ML_OK) return 1;
    snprintf(args, sizeof args,
             "train --domains %s --out %s --d_model %d --d_mlp %d --n_heads %d --n_kv_heads %d --context %d "
             "--global_batch %d --micro_batch %d --steps %d --lr 1e-4 --eval false --checkpoint_every 0 "
             "--resume false",
             store, out, s->D, s->F, s->H, s->KV, s->T, G, micro, steps);
    char *argv[64];
    int argc = 0;
    for (char *tok = strtok(args, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
    argv[argc] = NULL;
    const double c0 = cpu_seconds();
    if (ml_cmd_train(MPI_COMM_WORLD, argc, argv) != ML_OK) {
        if (rank == 0) ml_error_print(stderr, 1);
        return 1;
    }
    const double cpu = cpu_seconds() - c0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024.0, rss_max = 0;
    MPI_Allreduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) {
        double tps[256];
        ml_h5 *h = NULL;
        if (ml_h5_open(MPI_COMM_SELF, out, "mergelens.checkpoint", 1, 1, &h) != ML_OK) return 1;
        hsize_t dims[1] = {(hsize_t)steps};
        if (ml_h5_read_tensor(h, "/train/log/tokens_per_s", ML_F64, 1, dims, tps) != ML_OK) return 1;
        ml_h5_close(&h);
        int n = steps - 1;
        qsort(tps + 1, (size_t)n, sizeof(double), cmp_double);
        double med = n % 2 ? tps[1 + n / 2] : 0.5 * (tps[n / 2] + tps[1 + n / 2]);
        ml_model_config mc;
        ml_model_config_default(&mc);
        mc.d_model = s->D, mc.d_mlp = s->F, mc.n_heads = s->H, mc.n_kv_heads = s->KV, mc.head_dim = s->D / s->H;
        mc.vocab_size = s->V, mc.max_context = s->T;
        const double fpt = ml_model_train_flops_per_token(&mc, s->T), gf = med * fpt * 1e-9;
        /* expected memory per rank: params + grads + 2 moments + activations */
        ml_workspace *ws = NULL;
        const int B = G / nranks, M = micro > 0 && micro < B ? micro : B;
        ml_workspace_config wc = {.B_max = M, .T_max = s->T, .grad = 1};
        double wsb = 0;
        if (ml_workspace_create(&mc, &wc, &ws) == ML_OK) wsb = (double)ml_workspace_bytes(ws);
        ml_workspace_destroy(&ws);
        const double nparams = (double)ml_model_n_params(&mc), expect = 16.0 * nparams + wsb;
        printf("(%s) D %d F %d H %d/%d V %d T %d: %.1fM params, %d ranks x %d threads, batch %d x %d (micro %d): "
               "%.0f tokens/s, %.1f GFLOP/s = %.0f%% of sgemm %.1f GFLOP/s (%.1f MFLOP/token); step %.2f s; peak RSS "
               "%.0f MB per rank = %.2fx (params+grads+moments %.0f MB + activations %.0f MB)\n",
               s->name, s->D, s->F, s->H, s->KV, s->V, s->T, nparams / 1e6, nranks, ml_blas_threads(), G, s->T, M,
               med, gf, 100.0 * gf / sgemm, sgemm, fpt / 1e6, G * (double)s->T / med, rss_max / 1e6,
               rss_max / expect, 16.0 * nparams / 1e6, wsb / 1e6);
        /* CPU-time view (less sensitive to other load on the machine): the whole run incl. setup */
        const double gcpu = (double)steps * G * s->T * fpt / cpu * 1e-9;
        printf("    CPU time: %.1f GFLOP per CPU-second = %.0f%% of sgemm's %.1f GFLOP per CPU-second (%.1f CPU-s "
               "for %d steps)\n",
               gcpu, 100.0 * gcpu / sgemm_cpu_rate, sgemm_cpu_rate, cpu, steps);
        fflush(stdout);
        remove(out);
    }
    if (profile) ml_prof_summary(MPI_COMM_WORLD, stdout);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    ml_log_init(rank, nranks);
    ml_log_set_level(ML_LOG_WARN);
    int steps = 6, micro = 0, profile = 0;
    const char *only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--micro_batch")) micro = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--shape")) only = argv[i + 1];
        else if (!strcmp(argv[i], "--profile")) profile = atoi(argv[i + 1]);
    }
    if (steps < 2) steps = 2;
    if (steps > 200) steps = 200;
    const shape shapes[] = {{"b", 256, 1024, 4, 4, 4096, 128}, {"a", 512, 1024, 16, 8, 8192, 256}};
    double sg = sgemm_rate();
    if (rank == 0)
        printf("bench_train: %d rank%s x %d OpenBLAS thread%s (core %s); sgemm 2048^3 %.1f GFLOP/s summed over ranks\n",
               nranks, nranks > 1 ? "s" : "", ml_blas_threads(), ml_blas_threads() > 1 ? "s" : "", ml_blas_corename(),
               sg);
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++)
        if (!only || !strcmp(only, shapes[i].name)) rc = bench_shape(&shapes[i], steps, micro, sg, profile && only);
    MPI_Finalize();
    return rc;
}
