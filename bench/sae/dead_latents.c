/* Dead latents with and without their remedies on a synthetic problem with
 * a 16x dictionary: d_in 32, 512 latents, data from F planted unit directions
 * with Zipf-like frequencies (mean `active` per row) plus noise. Trains
 * standard ReLU SAEs with and without resampling and TopK SAEs with and
 * without AuxK, then evaluates on held-out rows.
 * usage: dead_latents [steps 3000] [lr 1e-3] [l1 0.1] [F 128] [active 3] [k 4] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mergelens/sae.h"

#define D 32
#define S_LAT 512
static int F = 128;

static double recovered(const ml_sae *s, const float *dict) {
    int hit = 0;
    for (int i = 0; i < F; i++) {
        double best = -1;
        for (int j = 0; j < s->d_sae; j++) {
            const float *w = s->W_dec + (size_t)j * D;
            double dot = 0, nn = 0;
            for (int k = 0; k < D; k++) {
                dot += (double)w[k] * dict[i * D + k];
                nn += (double)w[k] * w[k];
            }
            if (nn > 0 && dot / sqrt(nn) > best) best = dot / sqrt(nn);
        }
        hit += best >= 0.9;
    }
    return (double)hit / F;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    ml_log_set_level(ML_LOG_WARN);
    int steps = argc > 1 ? atoi(argv[1]) : 3000;
    double lr = argc > 2 ? atof(argv[2]) : 1e-3;
    double l1 = argc > 3 ? atof(argv[3]) : 0.1;
    F = argc > 4 ? atoi(argv[4]) : 128;
    double active = argc > 5 ? atof(argv[5]) : 3;
    int topk_k = argc > 6 ? atoi(argv[6]) : 4;
    const int64_t N = 200000, B = 512;
    ml_rng r;
    ml_rng_seed(&r, 7, 0);
    float *dict = malloc(sizeof(float) * (size_t)F * D), *x = calloc((size_t)N * D, sizeof(float));
    double *p = malloc(sizeof(double) * (size_t)F), z = 0;
    for (int i = 0; i < F; i++) {
        double nn = 0;
        for (int k = 0; k < D; k++) {
            dict[i * D + k] = ml_rng_normal(&r);
            nn += (double)dict[i * D + k] * dict[i * D + k];
        }
        for (int k = 0; k < D; k++) dict[i * D + k] /= (float)sqrt(nn);
        p[i] = 1.0 / (i + 10.0);
        z += p[i];
    }
    for (int i = 0; i < F; i++) p[i] *= active / z;
    for (int64_t b = 0; b < N; b++) {
        for (int i = 0; i < F; i++)
            if (ml_rng_uniform(&r) < p[i]) {
                float c = (float)(0.5 + ml_rng_uniform(&r));
                for (int k = 0; k < D; k++) x[b * D + k] += c * dict[i * D + k];
            }
        for (int k = 0; k < D; k++) x[b * D + k] += 0.05f * ml_rng_normal(&r);
    }
    int64_t n_train = N - 50000;
    ml_row_memory train, all;
    ml_row_memory_init(&train, x, n_train, D, NULL, NULL, NULL);
    ml_row_memory_init(&all, x, N, D, NULL, NULL, NULL);
    printf("dead latents: d_in %d, %d latents, %d planted directions (Zipf, ~%g active), %d steps of %lld rows, "
           "lr %g, l1 %g, k %d\n",
           D, S_LAT, F, active, steps, (long long)B, lr, l1, topk_k);
    printf("  %-30s %8s %8s %8s %10s %10s %10s\n", "SAE", "FVU", "L0", "dead%", "dead%(win)", "resampled", "recovered");
    for (int run = 0; run < 4; run++) {
        ml_sae_train_config c;
        ml_sae_train_config_default(&c);
        c.arch = run < 2 ? ML_SAE_STANDARD : ML_SAE_TOPK;
        c.d_sae = S_LAT;
        c.l1[0] = l1;
        c.k[0] = topk_k;
        c.lr = lr;
        c.batch = (int)B;
        c.tokens = (int64_t)steps * B;
        c.block_rows = 8192;
        c.buffer_blocks = 8;
        c.median_rows = 8192;
        c.dead_window = 50000;
        c.resample = run == 1;
        c.resample_every = steps / 8 > 0 ? steps / 8 : 1;
        c.resample_stop = 0.6;
        c.aux_coef = run == 3 ? 1.0 / 32 : 0;
        c.k_aux = 16;
        c.log_every = steps;
        c.quiet = 1;
        ml_sae_run *tr = NULL;
        ml_sae_eval *ev = NULL;
        double t0 = ml_wtime();
        if (ml_sae_train(MPI_COMM_WORLD, &c, &train.src, &tr) != ML_OK) {
            ml_error_print(stderr, 1);
            return 1;
        }
        ml_sae_eval_config e;
        ml_sae_eval_config_default(&e);
        e.row0 = n_train;
        e.n_rows = N - n_train;
        e.ctx_left = e.ctx_right = 0;
        if (ml_sae_evaluate(MPI_COMM_WORLD, &tr->item[0].sae, 1, &all.src, &e, &ev) != ML_OK) {
            ml_error_print(stderr, 1);
            return 1;
        }
        const ml_sae_history *h = &tr->item[0].hist;
        const char *name[4] = {"standard, no resampling", "standard, resampling", "topk, no AuxK", "topk, AuxK (1/32)"};
        printf("  %-30s %8.4f %8.2f %8.2f %10.2f %10lld %9.1f%%   (%.0f s)\n", name[run], ev->fvu, ev->l0,
               100 * ev->dead_fraction, 100 * h->dead_fraction[h->n - 1], (long long)tr->item[0].resampled_total,
               100 * recovered(tr->item[0].sae, dict), ml_wtime() - t0);
        fflush(stdout);
        ml_sae_eval_destroy(&ev);
        ml_sae_run_destroy(&tr);
    }
    free(dict);
    free(x);
    free(p);
    MPI_Finalize();
    return 0;
}
