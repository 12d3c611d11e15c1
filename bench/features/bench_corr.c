/* Benchmark of the feature cross-correlation engine.
 *
 *  sparse: F_A x F_B features (default 16384 x 16384) over N tokens (default
 *          102400) of synthetic SAE codes with L0 active features per token
 *          (default 64; 3/4 of B's active set is a fixed permutation of A's).
 *          Timed on the sparse path, and on the forced dense path for one
 *          sample of --dense-sample tokens (extrapolated to N) for the speed-up.
 *  dense:  F x F features (default 4096) over M dense tokens (default 32768),
 *          forced dense path, effective GFLOP/s = 2 M F^2 / t next to the
 *          measured cblas_sgemm rate of the same per-rank block shape.
 *
 * Usage: bench_features_corr [--fa N] [--fb N] [--tokens N] [--l0 K] [--chunk N]
 *        [--dense-sample N] [--path 0|1|2 (auto|dense|sparse)] [--dense-f F] [--dense-tokens M] [--dense-chunk N] [--reps R]
 *        [--skip-sparse] [--skip-dense] [--profile]
 * Run with OPENBLAS_CORETYPE=SkylakeX (see docs/modules/features.md).
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#include "mergelens/features.h"

/* CPU seconds of this process (all threads): robust to a shared machine for
 * single-threaded phases. */
static double cpu_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t arg_i(int argc, char **argv, const char *key, int64_t def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], key)) return atoll(argv[i + 1]);
    return def;
}

static int arg_flag(int argc, char **argv, const char *key) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], key)) return 1;
    return 0;
}

/* Synthetic CSR chunk of n tokens: row t of A has L0 distinct features; B's
 * row has 3/4 of them through the permutation perm plus L0/4 random ones. */
static void gen_chunk(ml_rng *rng, int64_t n, int64_t F, int64_t L0, const int32_t *perm, int64_t *ra, int32_t *ca,
                      float *va, int64_t *rb, int32_t *cb, float *vb, uint8_t *mark) {
    ra[0] = rb[0] = 0;
    for (int64_t t = 0; t < n; t++) {
        int64_t ka = ra[t], kb = rb[t];
        for (int64_t k = 0; k < L0; k++) {
            int32_t f;
            do f = (int32_t)ml_rng_below(rng, (uint64_t)F);
            while (mark[f]);
            mark[f] = 1;
            ca[ka] = f;
            va[ka++] = 0.1f + (float)ml_rng_uniform(rng);
        }
        for (int64_t k = ra[t]; k < ka; k++) mark[ca[k]] = 0;
        for (int64_t k = 0; k < L0; k++) {
            int32_t f;
            if (k < 3 * L0 / 4) {
                f = perm[ca[ra[t] + k]];
            } else {
                do f = (int32_t)ml_rng_below(rng, (uint64_t)F);
                while (mark[f]);
            }
            if (mark[f]) continue;
            mark[f] = 1;
            cb[kb] = f;
            vb[kb++] = k < 3 * L0 / 4 ? va[ra[t] + k] * 1.3f : 0.1f + (float)ml_rng_uniform(rng);
        }
        for (int64_t k = rb[t]; k < kb; k++) mark[cb[k]] = 0;
        ra[t + 1] = ka;
        rb[t + 1] = kb;
    }
}

/* Best rate of C (m, n) = A^T B with A (k, m), B (k, n), over reps (wall
 * clock; *cpu_rate, if given, by process CPU time). */
static double sgemm_rate(MPI_Comm comm, int64_t m, int64_t n, int64_t k, int reps, double *cpu_rate) {
    float *A = ml_malloc(sizeof(float) * (size_t)(k * m)), *B = ml_malloc(sizeof(float) * (size_t)(k * n));
    float *C = ml_malloc(sizeof(float) * (size_t)(m * n));
    for (int64_t i = 0; i < k * m; i++) A[i] = (float)((i * 7) % 13) * 0.1f;
    for (int64_t i = 0; i < k * n; i++) B[i] = (float)((i * 5) % 11) * 0.1f;
    double best = 0, best_cpu = 0;
    for (int r = 0; r < reps; r++) {
        MPI_Barrier(comm);
        double t0 = ml_wtime(), c0 = cpu_time();
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, A, (int)m, B, (int)n, 0.0f,
                    C, (int)n);
        double t = ml_wtime() - t0, c = cpu_time() - c0;
        best = fmax(best, 2.0 * (double)m * (double)n * (double)k / t / 1e9);
        best_cpu = fmax(best_cpu, 2.0 * (double)m * (double)n * (double)k / c / 1e9);
    }
    if (cpu_rate) *cpu_rate = best_cpu;
    ml_free(A);
    ml_free(B);
    ml_free(C);
    return best;
}

static int bench_sparse(MPI_Comm comm, int rank, int size, int64_t FA, int64_t FB, int64_t N, int64_t L0,
                        int64_t chunk, int64_t dense_sample, ml_corr_path main_path) {
    ml_rng rng;
    ml_rng_seed(&rng, 42, 0);
    int64_t F = FA < FB ? FA : FB;
    int32_t *perm = ml_malloc(sizeof(int32_t) * (size_t)FA);
    for (int64_t i = 0; i < FA; i++) perm[i] = (int32_t)(i % F);
    for (int64_t i = F - 1; i > 0; i--) {
        int64_t k = (int64_t)ml_rng_below(&rng, (uint64_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[k];
        perm[k] = t;
    }
    int64_t *ra = ml_malloc(sizeof(int64_t) * (size_t)(chunk + 1)), *rb = ml_malloc(sizeof(int64_t) * (size_t)(chunk + 1));
    int32_t *ca = ml_malloc(sizeof(int32_t) * (size_t)(chunk * L0)), *cb = ml_malloc(sizeof(int32_t) * (size_t)(chunk * L0));
    float *va = ml_malloc(sizeof(float) * (size_t)(chunk * L0)), *vb = ml_malloc(sizeof(float) * (size_t)(chunk * L0));
    uint8_t *mark = ml_calloc((size_t)(FA > FB ? FA : FB), 1);
    if (!perm || !ra || !rb || !ca || !cb || !va || !vb || !mark) return ML_ERR_NOMEM;
    double results[2] = {0, 0}; /* seconds per token: sparse, dense */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && dense_sample <= 0) break;
        int64_t ch = pass && dense_sample < chunk ? dense_sample : chunk; /* dense: one sample */
        ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = ch, .path = pass ? ML_CORR_DENSE : main_path};
        ml_corr *c = NULL;
        ML_CHECK(ml_corr_create(comm, &cfg, &c));
        ml_rng_seed(&rng, 43, 0);
        int64_t ntok = pass ? (dense_sample < N ? dense_sample : N) : N;
        double t_add = 0, t_gen = 0, cpu_add = 0;
        MPI_Barrier(comm);
        double t0 = ml_wtime();
        for (int64_t t = 0; t < ntok; t += ch) {
            int64_t n = ntok - t < ch ? ntok - t : ch;
            double g0 = ml_wtime();
            gen_chunk(&rng, n, F, L0, perm, ra, ca, va, rb, cb, vb, mark);
            double g1 = ml_wtime(), c1 = cpu_time();
            ml_fcodes A = {.n = n, .f0 = 0, .nf = FA, .row_ptr = ra, .col = ca, .val = va};
            ml_fcodes B = {.n = n, .f0 = 0, .nf = FB, .row_ptr = rb, .col = cb, .val = vb};
            ML_CHECK(ml_corr_add(c, &A, &B));
            t_gen += g1 - g0;
            t_add += ml_wtime() - g1;
            cpu_add += cpu_time() - c1;
        }
        double f0 = ml_wtime();
        ML_CHECK(ml_corr_finalize(c));
        ml_best best;
        ML_CHECK(ml_corr_best(c, &best));
        double t_fin = ml_wtime() - f0;
        MPI_Barrier(comm);
        double wall = ml_wtime() - t0;
        int64_t dch, sch;
        ml_corr_path_counts(c, &dch, &sch);
        double t_add_max = t_add, cpu_max = cpu_add;
        MPI_Allreduce(MPI_IN_PLACE, &t_add_max, 1, MPI_DOUBLE, MPI_MAX, comm);
        MPI_Allreduce(MPI_IN_PLACE, &cpu_max, 1, MPI_DOUBLE, MPI_MAX, comm);
        int64_t hits = 0;
        for (int64_t i = 0; i < FA; i++) hits += best.a_partner[i] == perm[i] && best.a_score[i] > 0.5f;
        results[pass] = t_add_max / (double)ntok;
        if (rank == 0) {
            printf("%s pass: %lld x %lld features, %lld tokens, L0 %lld, %d rank(s): accumulate %.2f s (max over ranks; "
                   "CPU %.2f s), "
                   "finalize+best %.2f s, wall %.2f s (synthetic generation %.2f s), chunks dense/sparse %lld/%lld\n",
                   pass ? "dense" : "sparse", (long long)FA, (long long)FB, (long long)ntok, (long long)L0, size,
                   t_add_max, cpu_max, t_fin, wall, t_gen, (long long)dch, (long long)sch);
            printf("  effective %.1f GFLOP/s (2 N F_A F_B / accumulate time); planted partners recovered %lld / %lld\n",
                   2.0 * (double)ntok * (double)FA * (double)FB / t_add_max / 1e9, (long long)hits, (long long)FA);
        }
        ml_best_free(&best);
        ml_corr_destroy(&c);
    }
    if (rank == 0 && results[1] > 0)
        printf("sparse vs dense path at L0 %lld: dense %.1f s extrapolated to %lld tokens, sparse %.2f s: %.0fx faster\n",
               (long long)L0, results[1] * (double)N, (long long)N, results[0] * (double)N, results[1] / results[0]);
    ml_free(perm);
    ml_free(ra);
    ml_free(rb);
    ml_free(ca);
    ml_free(cb);
    ml_free(va);
    ml_free(vb);
    ml_free(mark);
    return ML_OK;
}

/* Dense path vs plain sgemm of the same per-rank block shape. The machine
 * may be shared, so chunks of the engine and plain sgemm calls alternate and
 * the best rate of each is compared (and the wall time of all M tokens). */
static int bench_dense(MPI_Comm comm, int rank, int size, int64_t F, int64_t M, int64_t chunk, int reps) {
    float *X = ml_malloc(sizeof(float) * (size_t)(chunk * F)), *Y = ml_malloc(sizeof(float) * (size_t)(chunk * F));
    if (!X || !Y) return ML_ERR_NOMEM;
    ml_rng rng;
    ml_rng_seed(&rng, 44, 0);
    for (int64_t k = 0; k < chunk * F; k++) {
        X[k] = ml_rng_normal(&rng);
        Y[k] = ml_rng_normal(&rng);
    }
    ml_corr_config cfg = {.n_a = F, .n_b = F, .max_rows = chunk, .path = ML_CORR_DENSE};
    ml_corr *c = NULL;
    ML_CHECK(ml_corr_create(comm, &cfg, &c));
    int64_t a0, na, b0, nb;
    ml_corr_block(c, &a0, &na, &b0, &nb);
    ml_fcodes A = {.n = chunk, .f0 = 0, .nf = F, .x = X, .ld = F};
    ml_fcodes B = {.n = chunk, .f0 = 0, .nf = F, .x = Y, .ld = F};
    double flops_rank = 2.0 * (double)chunk * (double)na * (double)nb, best[4] = {0, 0, 0, 0};
    for (int r = 0; r < reps; r++) { /* best[]: sgemm wall, engine wall, sgemm CPU, engine CPU */
        double cpu_rate;
        best[0] = fmax(best[0], sgemm_rate(comm, na, nb, chunk, 1, &cpu_rate));
        best[2] = fmax(best[2], cpu_rate);
        MPI_Barrier(comm);
        double t0 = ml_wtime(), c0 = cpu_time();
        ML_CHECK(ml_corr_add(c, &A, &B));
        best[1] = fmax(best[1], flops_rank / (ml_wtime() - t0) / 1e9);
        best[3] = fmax(best[3], flops_rank / (cpu_time() - c0) / 1e9);
    }
    MPI_Allreduce(MPI_IN_PLACE, best, 4, MPI_DOUBLE, MPI_SUM, comm);
    /* end to end: M tokens through the engine, between two runs of the same
     * number of plain sgemm calls (their mean total time is the reference) */
    int64_t nchunks = (M + chunk - 1) / chunk;
    double plain = 0;
    for (int64_t t = 0; t < nchunks; t++) plain += flops_rank / sgemm_rate(comm, na, nb, chunk, 1, NULL) / 1e9;
    MPI_Barrier(comm);
    double t0 = ml_wtime();
    for (int64_t t = 0; t < nchunks; t++) /* the same chunk repeatedly: the rate is what matters */
        ML_CHECK(ml_corr_add(c, &A, &B));
    MPI_Barrier(comm);
    double t_add = ml_wtime() - t0;
    ML_CHECK(ml_corr_finalize(c));
    double wall = ml_wtime() - t0;
    for (int64_t t = 0; t < nchunks; t++) plain += flops_rank / sgemm_rate(comm, na, nb, chunk, 1, NULL) / 1e9;
    plain /= 2;
    MPI_Allreduce(MPI_IN_PLACE, &plain, 1, MPI_DOUBLE, MPI_MAX, comm);
    M = nchunks * chunk;
    double gf = 2.0 * (double)M * (double)F * (double)F / t_add / 1e9;
    double after = 2.0 * (double)M * (double)F * (double)F / plain / 1e9;
    if (rank == 0) {
        printf("dense path: %lld x %lld features, chunks of %lld dense tokens, %d rank(s), per-rank block %lld x %lld\n",
               (long long)F, (long long)F, (long long)chunk, size, (long long)na, (long long)nb);
        printf("  best of %d alternating (summed over ranks): wall clock: engine %.1f GFLOP/s, sgemm %.1f GFLOP/s: "
               "%.0f%%; per CPU second: engine %.1f, sgemm %.1f: %.0f%%\n",
               reps, best[1], best[0], 100.0 * best[1] / best[0], best[3], best[2], 100.0 * best[3] / best[2]);
        printf("  %lld tokens end to end: accumulate %.2f s = %.1f GFLOP/s, finalize %.2f s; the same sgemm calls "
               "before and after (mean): %.1f GFLOP/s: %.0f%%\n",
               (long long)M, t_add, gf, wall - t_add, after, 100.0 * gf / after);
    }
    ml_corr_destroy(&c);
    ml_free(X);
    ml_free(Y);
    return ML_OK;
}

int main(int argc, char **argv) {
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (rank == 0) {
        const char *ct = getenv("OPENBLAS_CORETYPE");
        printf("bench_features_corr: %d rank(s), OPENBLAS_CORETYPE=%s, OPENBLAS_NUM_THREADS=%s\n", size, ct ? ct : "(unset)",
               getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "(unset)");
    }
    int rc = ML_OK;
    if (!arg_flag(argc, argv, "--skip-sparse"))
        rc = bench_sparse(MPI_COMM_WORLD, rank, size, arg_i(argc, argv, "--fa", 16384), arg_i(argc, argv, "--fb", 16384),
                          arg_i(argc, argv, "--tokens", 102400), arg_i(argc, argv, "--l0", 64),
                          arg_i(argc, argv, "--chunk", 16384), arg_i(argc, argv, "--dense-sample", 4096),
                          (ml_corr_path)arg_i(argc, argv, "--path", ML_CORR_AUTO));
    if (rc == ML_OK && !arg_flag(argc, argv, "--skip-dense"))
        rc = bench_dense(MPI_COMM_WORLD, rank, size, arg_i(argc, argv, "--dense-f", 4096),
                         arg_i(argc, argv, "--dense-tokens", 32768), arg_i(argc, argv, "--dense-chunk", 4096),
                         (int)arg_i(argc, argv, "--reps", 6));
    if (rc == ML_OK && arg_flag(argc, argv, "--profile")) rc = ml_prof_summary(MPI_COMM_WORLD, stdout);
    if (rc != ML_OK) ml_error_print(stderr, 1);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
