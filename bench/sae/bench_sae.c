/* SAE training-step throughput: rows/s and GFLOP/s (counting 12 x d_in x d_sae
 * FLOPs per row) for the dense ReLU step and the sparse TopK step, next to the
 * measured cblas_sgemm rate on the encoder's shape.
 * usage: bench_sae [d_in 1024] [d_sae 16384] [rows 3072] [k 32] [steps 3] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/sae.h"

static double sgemm_rate(int M, int N, int K, int reps) {
    float *a = ml_malloc(sizeof(float) * (size_t)M * K), *b = ml_malloc(sizeof(float) * (size_t)N * K);
    float *c = ml_malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = ml_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        double g = 2.0 * M * N * K / (ml_wtime() - t0) / 1e9;
        if (g > best) best = g;
    }
    ml_free(a);
    ml_free(b);
    ml_free(c);
    return best;
}

/* one optimizer step as the trainer does it (without the allreduce) */
static double step_time(ml_sae *s, ml_sae_work *w, const float *x, int n, const uint8_t *dead, float *g, float *m,
                        float *v, int steps, ml_sae_loss_cfg *lc) {
    double best = 1e30;
    for (int t = 1; t <= steps + 1; t++) {
        double t0 = ml_wtime();
        ml_sae_stats st;
        if (ml_sae_forward_backward(s, lc, x, n, n, dead, w, g, NULL, &st) != ML_OK) {
            ml_error_print(stderr, 1);
            exit(1);
        }
        if (s->normalize_decoder) ml_sae_project_decoder_grad(s, g);
        ml_adam_step(s->params, g, m, v, s->n_params, 1e-4f, 0.9f, 0.9999f, 1e-8f, t);
        if (s->normalize_decoder) ml_sae_normalize_decoder(s);
        double dt = ml_wtime() - t0;
        if (t > 1 && dt < best) best = dt; /* first step warms up */
    }
    return best;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    int D = argc > 1 ? atoi(argv[1]) : 1024, S = argc > 2 ? atoi(argv[2]) : 16384;
    int N = argc > 3 ? atoi(argv[3]) : 3072, K = argc > 4 ? atoi(argv[4]) : 32;
    int steps = argc > 5 ? atoi(argv[5]) : 3;
    const char *core = getenv("OPENBLAS_CORETYPE");
    printf("SAE step benchmark: d_in %d d_sae %d rows/step %d k %d (OPENBLAS_CORETYPE=%s, %d BLAS threads)\n", D,
           S, N, K, core ? core : "unset", openblas_get_num_threads());
    double sg = sgemm_rate(N, S, D, 3);
    printf("  sgemm (%d x %d x %d):          %7.1f GFLOP/s\n", N, S, D, sg);
    float *x = ml_malloc(sizeof(float) * (size_t)N * D);
    ml_rng r;
    ml_rng_seed(&r, 1, 0);
    for (size_t i = 0; i < (size_t)N * D; i++) x[i] = ml_rng_normal(&r);
    double flops_row = 12.0 * D * S;
    double rows_relu = 0;
    const double dead_frac[4] = {0, 0, 0.02, 0.10};
    for (int a = 0; a < 4; a++) {
        ml_sae_arch arch = a == 0 ? ML_SAE_STANDARD : ML_SAE_TOPK;
        int with_aux = a >= 2;
        ml_sae *s = NULL;
        ml_sae_work *w = NULL;
        if (ml_sae_create(arch, D, S, K, &s) || ml_sae_work_create(s, N, D / 2, &w)) {
            ml_error_print(stderr, 1);
            return 1;
        }
        ml_sae_init(s, 1, 0.1f);
        float *g = ml_calloc(s->n_params, sizeof(float)), *m = ml_calloc(s->n_params, sizeof(float)),
              *v = ml_calloc(s->n_params, sizeof(float));
        uint8_t *dead = ml_calloc((size_t)S, 1);
        int every = with_aux ? (int)(1.0 / dead_frac[a] + 0.5) : 0;
        for (int j = 0; j < S; j++) dead[j] = with_aux && (j % every == 0);
        ml_sae_loss_cfg lc = {.l1 = 3e-4, .aux_coef = 1.0 / 32, .k_aux = D / 2};
        ml_prof_event before[64];
        const ml_prof_event *ev;
        int nb0 = ml_prof_events(&ev);
        memcpy(before, ev, sizeof(ml_prof_event) * (size_t)nb0);
        double dt = step_time(s, w, x, N, with_aux ? dead : NULL, g, m, v, steps, &lc);
        double rows = N / dt;
        if (a == 0) rows_relu = rows;
        char name[64];
        if (with_aux) snprintf(name, sizeof name, "topk + AuxK (%.0f%% dead)", 100 * dead_frac[a]);
        else snprintf(name, sizeof name, "%s", a == 0 ? "standard ReLU (dense)" : "topk (sparse)");
        printf("  %-24s %9.0f rows/s  %7.1f GFLOP/s (12 d_in F / row)  %5.1f%% of sgemm  %.3f s/step\n", name, rows,
               rows * flops_row / 1e9, 100.0 * rows * flops_row / 1e9 / sg, dt);
        if (a) printf("  %-24s %.2fx faster per row than dense ReLU\n", "", rows / rows_relu);
        int ne = ml_prof_events(&ev);
        printf("     ");
        for (int e = 0; e < ne; e++) { /* this configuration's share of the cumulative events */
            double sec = ev[e].seconds - (e < nb0 ? before[e].seconds : 0);
            long cnt = ev[e].count - (e < nb0 ? before[e].count : 0);
            if (cnt > 0) printf(" %s %.3f s", ev[e].name, sec / cnt);
        }
        printf("  (per call, mean over %d steps)\n", steps + 1);
        ml_free(g);
        ml_free(m);
        ml_free(v);
        ml_free(dead);
        ml_sae_work_destroy(&w);
        ml_sae_destroy(&s);
    }
    ml_free(x);
    MPI_Finalize();
    return 0;
}
