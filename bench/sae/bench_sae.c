/* SAE training-step throughput: rows/s and GFLOP/s (counting 12 x d_in x d_sae
 * FLOPs per row) for the dense ReLU step and the sparse TopK step (also with
 * AuxK on 2% and 10% dead latents), next to the measured cblas_sgemm rate on
 * the encoder's shape. A step is what the trainer does per SAE without the
 * allreduce: forward + backward, decoder-gradient projection, Adam, decoder
 * renormalisation. Measurements are interleaved (sgemm, then one step of each
 * configuration, repeated) and the best of the repetitions is reported, so a
 * busy machine hurts every column alike. Besides wall time, the process CPU
 * time divided by the BLAS thread count is reported ("cpu" columns): on a
 * shared machine it discounts the time other processes held our cores.
 * usage: bench_sae [d_in 1024] [d_sae 16384] [rows 3072] [k 32] [reps 4] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mergelens/sae.h"

#define NCFG 4

typedef struct {
    const char *name;
    ml_sae *s;
    ml_sae_work *w;
    float *g, *m, *v;
    uint8_t *dead;
    double best, best_cpu;
    double ev[8]; /* best per-event seconds */
    int64_t t;
} cfg_t;

static double cpu_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *ev_names[] = {"sae.encode", "sae.decode", "sae.backward", "sae.topk", "sae.auxk"};
#define NEV 5

static double ev_seconds(const char *name, long *count) {
    const ml_prof_event *ev;
    int n = ml_prof_events(&ev);
    for (int i = 0; i < n; i++)
        if (!strcmp(ev[i].name, name)) {
            *count = ev[i].count;
            return ev[i].seconds;
        }
    *count = 0;
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    int D = argc > 1 ? atoi(argv[1]) : 1024, S = argc > 2 ? atoi(argv[2]) : 16384;
    int N = argc > 3 ? atoi(argv[3]) : 3072, K = argc > 4 ? atoi(argv[4]) : 32;
    int reps = argc > 5 ? atoi(argv[5]) : 4;
    const char *core = getenv("OPENBLAS_CORETYPE");
    printf("SAE step benchmark: d_in %d d_sae %d rows/step %d k %d (OPENBLAS_CORETYPE=%s, kernels %s, %d BLAS "
           "threads, best of %d)\n",
           D, S, N, K, core ? core : "unset", ml_blas_corename(), ml_blas_threads(), reps);
    float *x = ml_malloc(sizeof(float) * (size_t)N * D);
    float *ga = ml_malloc(sizeof(float) * (size_t)N * D), *gb = ml_malloc(sizeof(float) * (size_t)S * D);
    float *gc = ml_malloc(sizeof(float) * (size_t)N * S);
    ml_rng r;
    ml_rng_seed(&r, 1, 0);
    for (size_t i = 0; i < (size_t)N * D; i++) x[i] = ml_rng_normal(&r), ga[i] = x[i];
    for (size_t i = 0; i < (size_t)S * D; i++) gb[i] = 0.03f * ml_rng_normal(&r);
    cfg_t c[NCFG] = {{.name = "standard ReLU (dense)"},
                     {.name = "topk (sparse)"},
                     {.name = "topk + AuxK, 2% dead"},
                     {.name = "topk + AuxK, 10% dead"}};
    const double dead_frac[NCFG] = {0, 0, 0.02, 0.10};
    ml_sae_loss_cfg lc = {.l1 = 3e-4, .aux_coef = 1.0 / 32, .k_aux = D / 2};
    for (int a = 0; a < NCFG; a++) {
        if (ml_sae_create(a == 0 ? ML_SAE_STANDARD : ML_SAE_TOPK, D, S, K, &c[a].s) ||
            ml_sae_work_create(c[a].s, N, D / 2, &c[a].w)) {
            ml_error_print(stderr, 1);
            return 1;
        }
        ml_sae_init(c[a].s, 1, 0.1f);
        c[a].g = ml_calloc(c[a].s->n_params, sizeof(float));
        c[a].m = ml_calloc(c[a].s->n_params, sizeof(float));
        c[a].v = ml_calloc(c[a].s->n_params, sizeof(float));
        c[a].dead = ml_calloc((size_t)S, 1);
        int every = dead_frac[a] > 0 ? (int)(1.0 / dead_frac[a] + 0.5) : 0;
        for (int j = 0; every && j < S; j++) c[a].dead[j] = j % every == 0;
        c[a].best = c[a].best_cpu = 1e30;
        for (int e = 0; e < NEV; e++) c[a].ev[e] = 1e30;
    }
    double sg = 0, sg_cpu = 0, nth = ml_blas_threads() > 0 ? ml_blas_threads() : 1;
    for (int rep = 0; rep <= reps; rep++) { /* rep 0 warms up */
        double t0 = ml_wtime(), c0 = cpu_time();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, S, D, 1.0f, ga, D, gb, D, 0.0f, gc, S);
        double rate = 2.0 * N * S * D / (ml_wtime() - t0) / 1e9;
        double rate_cpu = 2.0 * N * S * D / ((cpu_time() - c0) / nth) / 1e9;
        if (rep > 0 && rate > sg) sg = rate;
        if (rep > 0 && rate_cpu > sg_cpu) sg_cpu = rate_cpu;
        for (int a = 0; a < NCFG; a++) {
            double before[NEV];
            long cnt;
            for (int e = 0; e < NEV; e++) before[e] = ev_seconds(ev_names[e], &cnt);
            ml_sae *s = c[a].s;
            t0 = ml_wtime();
            c0 = cpu_time();
            ml_sae_stats st;
            if (ml_sae_forward_backward(s, &lc, x, N, N, dead_frac[a] > 0 ? c[a].dead : NULL, c[a].w, c[a].g, NULL,
                                        &st) != ML_OK) {
                ml_error_print(stderr, 1);
                return 1;
            }
            if (s->normalize_decoder) ml_sae_project_decoder_grad(s, c[a].g);
            ml_adam_step(s->params, c[a].g, c[a].m, c[a].v, s->n_params, 1e-4f, 0.9f, 0.9999f, 1e-8f, ++c[a].t);
            if (s->normalize_decoder) ml_sae_normalize_decoder(s);
            double dt = ml_wtime() - t0, dc = (cpu_time() - c0) / nth;
            if (rep == 0) continue;
            if (dt < c[a].best) c[a].best = dt;
            if (dc < c[a].best_cpu) c[a].best_cpu = dc;
            for (int e = 0; e < NEV; e++) {
                double d = ev_seconds(ev_names[e], &cnt) - before[e];
                if (d > 0 && d < c[a].ev[e]) c[a].ev[e] = d;
            }
        }
    }
    printf("  %-26s %9s %8s %8s   %9s %8s %8s\n", "", "wall", "", "", "cpu", "", "");
    printf("  %-26s %9s %8s %8s   %9s %8s %8s\n", "", "rows/s", "GFLOP/s", "%sgemm", "rows/s", "GFLOP/s", "%sgemm");
    printf("  %-26s %9s %8.1f %8s   %9s %8.1f %8s\n", "sgemm (encoder shape, NT)", "", sg, "100.0", "", sg_cpu, "100.0");
    double flops_row = 12.0 * D * S, relu_rows = N / c[0].best, relu_cpu = N / c[0].best_cpu;
    for (int a = 0; a < NCFG; a++) {
        double rows = N / c[a].best, rc = N / c[a].best_cpu;
        printf("  %-26s %9.0f %8.1f %8.1f   %9.0f %8.1f %8.1f", c[a].name, rows, rows * flops_row / 1e9,
               100.0 * rows * flops_row / 1e9 / sg, rc, rc * flops_row / 1e9, 100.0 * rc * flops_row / 1e9 / sg_cpu);
        if (a) printf("   %.2fx / %.2fx dense ReLU per row", rows / relu_rows, rc / relu_cpu);
        printf("\n     ");
        for (int e = 0; e < NEV; e++)
            if (c[a].ev[e] < 1e29) printf(" %s %.3f s", ev_names[e] + 4, c[a].ev[e]);
        printf("\n");
    }
    for (int a = 0; a < NCFG; a++) {
        ml_free(c[a].g);
        ml_free(c[a].m);
        ml_free(c[a].v);
        ml_free(c[a].dead);
        ml_sae_work_destroy(&c[a].w);
        ml_sae_destroy(&c[a].s);
    }
    ml_free(x);
    ml_free(ga);
    ml_free(gb);
    ml_free(gc);
    MPI_Finalize();
    return 0;
}
