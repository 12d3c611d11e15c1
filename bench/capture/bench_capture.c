/* Activation-capture throughput of the capture module on the paper's model
 * (1 layer, D 512, F 1024, 16/8 heads, V 32000, random init) over windows of
 * T = 256 tokens from two synthetic token stores.
 *
 *   OPENBLAS_CORETYPE=SkylakeX mpirun -n 1 ./bench_capture [--tokens N] [--dir DIR] [--batch B]
 *
 * Prints tokens/s of the whole capture, the forward pass's GFLOP/s (2N per
 * token for the non-embedding parameters plus attention, as counted by the
 * model's profiling event) next to a measured cblas_sgemm rate, the write
 * bandwidth of the activations (capture.write event) and the window-read
 * time, for float32 and float16 storage of blocks.0.mlp.hook_post. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mergelens/capture.h"
#include "mergelens/io.h"

/* GFLOP/s of C (n,n) = A (n,n) B (n,n)^T, best of 3. */
static double sgemm_rate(int n) {
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++) a[i] = (float)(i % 13) * 0.1f, b[i] = (float)(i % 7) * 0.1f;
    double best = 0;
    for (int r = 0; r < 4; r++) {
        double t0 = ml_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double g = 2.0 * n * (double)n * n / (ml_wtime() - t0) / 1e9;
        if (r > 0 && g > best) best = g;
    }
    free(a), free(b), free(c);
    return best;
}

/* A token store of random tokens in documents of 100..1000 tokens (train and val). */
static int write_store(MPI_Comm comm, const char *path, int64_t ntok, int V, uint64_t seed) {
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_create(comm, path, "mergelens.tokens", 1, &h));
    const char *split[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        int64_t n = s == 0 ? ntok : ntok / 10, nd = 0;
        uint16_t *t = malloc(sizeof(uint16_t) * (size_t)n);
        int64_t *off = malloc(sizeof(int64_t) * (size_t)(n / 100 + 2));
        ml_rng r;
        ml_rng_seed(&r, seed, (uint64_t)s);
        off[0] = 0;
        for (int64_t i = 0; i < n;) {
            int64_t len = 100 + (int64_t)ml_rng_below(&r, 901);
            if (len > n - i) len = n - i;
            for (int64_t j = 0; j < len; j++) t[i + j] = (uint16_t)(2 + ml_rng_below(&r, (uint64_t)V - 2));
            i += len;
            off[++nd] = i;
        }
        char ds[64];
        hsize_t dn[1] = {(hsize_t)n}, dd[1] = {(hsize_t)(nd + 1)};
        snprintf(ds, sizeof ds, "/%s/tokens", split[s]);
        ML_CHECK(ml_h5_write_tensor(h, ds, ML_U16, 1, dn, t));
        snprintf(ds, sizeof ds, "/%s/doc_offsets", split[s]);
        ML_CHECK(ml_h5_write_tensor(h, ds, ML_I64, 1, dd, off));
        free(t);
        free(off);
    }
    ML_CHECK(ml_h5_set_attr_int(h, "/", "vocab_size", V));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "domain", "synthetic"));
    return ml_h5_close(&h);
}

/* Accumulated seconds (and flops, bytes) of a profiling event so far. */
static double event(const char *name, double *flops, double *bytes) {
    const ml_prof_event *ev;
    int n = ml_prof_events(&ev);
    if (flops) *flops = 0;
    if (bytes) *bytes = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(ev[i].name, name)) {
            if (flops) *flops = ev[i].flops;
            if (bytes) *bytes = ev[i].bytes;
            return ev[i].seconds;
        }
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    ml_log_init(rank, P);
    int64_t N = 131072;
    int B = 8;
    const char *dir = "/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) N = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
    }
    char advice[256];
    if (rank == 0 && ml_blas_check(advice, sizeof advice)) printf("warning: %s\n", advice);
    ml_model_config mc;
    ml_model_config_default(&mc);
    ml_model *m = NULL;
    int rc = ml_model_create(&mc, &m);
    if (rc == ML_OK) rc = ml_model_init(m, 42);
    char pa[1024], pb[1024], out[1024];
    long nonce = (long)getpid();
    MPI_Bcast(&nonce, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    snprintf(pa, sizeof pa, "%s/bench_capture_%ld_a.h5", dir, nonce);
    snprintf(pb, sizeof pb, "%s/bench_capture_%ld_b.h5", dir, nonce);
    snprintf(out, sizeof out, "%s/bench_capture_%ld_acts.h5", dir, nonce);
    const int64_t store_tokens = N / 2 + 10 * 257 * 64;
    if (rc == ML_OK) rc = write_store(MPI_COMM_WORLD, pa, store_tokens, mc.vocab_size, 1);
    if (rc == ML_OK) rc = write_store(MPI_COMM_WORLD, pb, store_tokens, mc.vocab_size, 2);
    double sg = rank == 0 ? sgemm_rate(2048) : 0;
    if (rank == 0)
        printf("bench_capture: %d rank(s) x %d BLAS thread(s) (%s), paper model D 512 F 1024 V 32000, T 256, "
               "batch %d windows, %lld tokens; sgemm 2048^3: %.1f GFLOP/s\n",
               P, ml_blas_threads(), ml_blas_corename(), B, (long long)N, sg);
    const char *paths[2] = {pa, pb};
    const char *hooks[1] = {"blocks.0.mlp.hook_post"};
    for (int f16 = 0; f16 < 2 && rc == ML_OK; f16++) {
        ml_capture_config c;
        ml_capture_config_default(&c);
        c.windows.n_domains = 2;
        c.windows.paths = paths;
        c.windows.T = 256;
        c.n_tokens = N;
        c.n_hooks = 1;
        c.hooks = hooks;
        c.float16 = f16;
        c.batch = B;
        c.quiet = 1;
        /* differences of the accumulated events (ml_prof_reset does not zero reused slots) */
        double ff0, ta0 = event("model.attention", NULL, NULL), tf0 = event("model.forward", &ff0, NULL),
                    tw0 = event("capture.write", NULL, NULL), tr0 = event("capture.read", NULL, NULL);
        ml_capture_stats st;
        rc = ml_capture_run(MPI_COMM_WORLD, m, &c, out, &st);
        if (rc != ML_OK) break;
        double ff = 0;
        double ta = event("model.attention", NULL, NULL) - ta0, tf = event("model.forward", &ff, NULL) - tf0,
               tw = event("capture.write", NULL, NULL) - tw0, tr = event("capture.read", NULL, NULL) - tr0;
        ff -= ff0;
        double tf_max = 0, tw_max = 0, tr_max = 0, ff_sum = 0, ta_max = 0;
        MPI_Reduce(&ta, &ta_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&tf, &tf_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&tw, &tw_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&tr, &tr_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&ff, &ff_sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            printf("  %s: %.2f s, %.0f tokens/s; forward %.2f s (%.1f GFLOP/s per rank, sgemm %.1f; attention "
                   "%.2f s of it); write %.2f s for %.0f MB (%.2f GB/s incl. waiting); window reads %.3f s\n",
                   f16 ? "float16" : "float32", st.seconds, (double)N / st.seconds, tf_max,
                   ff_sum / P / tf_max / 1e9, sg, ta_max, tw_max, st.bytes_written / 1e6,
                   st.bytes_written / tw_max / 1e9, tr_max);
            fflush(stdout);
        }
        if (rank == 0) remove(out);
    }
    if (rc != ML_OK) ml_error_print(stderr, 1);
    if (rank == 0) {
        remove(pa);
        remove(pb);
    }
    ml_model_destroy(&m);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
