/* Training-step throughput of the model module.
 *
 *   OPENBLAS_CORETYPE=SkylakeX ./bench_model [--shape a|b|all] [--threads 2,1] [--B n] [--steps n] [--lm_chunk n] [--attn_block n]
 *
 * Shapes: (a) the paper's model with vocabulary 8192: D 512, F 1024, 16/8 heads, T 256;
 *         (b) D 256, F 1024, 4 heads, V 4096, T 128.
 * A step = zero_grad + forward_backward + clip + AdamW. FLOPs per token are
 * counted as 6N + 6DV + 12TD (N = non-embedding parameters), the usual
 * convention; the achieved rate is printed next to cblas_sgemm's rate measured
 * in the same run with the same thread count (M = N = K = 2048). Peak RSS
 * (VmHWM, reset per shape) is compared with params + grads + moments +
 * activation workspace. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mergelens/model.h"

void openblas_set_num_threads(int);

/* CPU seconds of all threads of this process (excludes time waiting for a CPU). */
static double cpu_time(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* GFLOP/s of one C (n, n) = A (n, n) B (n, n)^T; buffers allocated once.
 * *cpu receives the CPU seconds the product used. */
static double sgemm_rate(int n, double *cpu) {
    static float *a, *b, *c;
    static int have;
    if (have != n) {
        free(a), free(b), free(c);
        a = malloc(sizeof(float) * n * n), b = malloc(sizeof(float) * n * n), c = malloc(sizeof(float) * n * n);
        for (int i = 0; i < n * n; i++) a[i] = (float)(i % 13) * 0.1f, b[i] = (float)(i % 7) * 0.1f, c[i] = 0;
        have = n;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    }
    double t0 = ml_wtime(), c0 = cpu_time();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    if (cpu) *cpu = cpu_time() - c0;
    return 2.0 * n * (double)n * n / (ml_wtime() - t0) / 1e9;
}

static long vm_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key) + 1);
    if (f) fclose(f);
    return v;
}

static void reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static int lm_chunk_opt, attn_block_opt;

static int run_shape(char shape, int threads, int B, int steps) {
    ml_model_config c;
    ml_model_config_default(&c);
    int T;
    if (shape == 'a') {
        c.vocab_size = 8192;
        T = 256;
        if (!B) B = 8;
    } else {
        c.d_model = 256;
        c.d_mlp = 1024;
        c.n_heads = 4;
        c.n_kv_heads = 4;
        c.head_dim = 64;
        c.vocab_size = 4096;
        T = 128;
        if (!B) B = 16;
    }
    c.max_context = T;
    openblas_set_num_threads(threads);
    for (int r = 0; r < 3; r++) sgemm_rate(2048, NULL); /* warm up the BLAS threads */
    reset_peak_rss();
    const long rss0 = vm_kb("VmRSS:");
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ml_adamw *opt = NULL;
    ml_adamw_config oc;
    ml_adamw_config_default(&oc);
    oc.weight_decay = 0.1;
    ml_workspace_config wc = {.B_max = B, .T_max = T, .grad = 1, .attn_block = attn_block_opt, .lm_chunk = lm_chunk_opt};
    int rc = ML_OK;
    ML_CHECK_GOTO(ml_model_create(&c, &m), done);
    ML_CHECK_GOTO(ml_model_init(m, 42), done);
    ML_CHECK_GOTO(ml_model_enable_grads(m), done);
    ML_CHECK_GOTO(ml_adamw_create(m, &oc, &opt), done);
    ML_CHECK_GOTO(ml_workspace_create(&c, &wc, &ws), done);
    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    ml_rng rng;
    ml_rng_seed(&rng, 1, 0);
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)ml_rng_below(&rng, c.vocab_size);
    for (int i = 0; i < B * T; i++) tgt[i] = (int32_t)ml_rng_below(&rng, c.vocab_size);
    ml_lm_stats st;
    double best = 1e30, total = 0, sg_sum = 0, sg_best = 0, cpu_step = 0, cpu_sgemm = 0, wall_sgemm = 0;
    /* ml_prof_reset keeps old totals in reused slots: take differences of snapshots */
    ml_prof_event ev0[64];
    int ne0 = 0;
    for (int s = -2; s < steps; s++) {
        if (s == 0) {
            const ml_prof_event *e;
            ne0 = ml_prof_events(&e);
            memcpy(ev0, e, sizeof(ml_prof_event) * (size_t)ne0);
        }
        double t0 = ml_wtime(), c0 = cpu_time();
        ml_model_zero_grad(m);
        ML_CHECK_GOTO(ml_model_forward_backward(m, ws, tok, tgt, B, T, 0.0, &st), done);
        ml_model_clip_grads(m, 1.0);
        ML_CHECK_GOTO(ml_adamw_step(opt, m, 1e-4), done);
        double t = ml_wtime() - t0, ct = cpu_time() - c0;
        if (s >= 0) {
            total += t;
            cpu_step += ct;
            best = t < best ? t : best;
            /* an sgemm after every step: the machine's rate at the same moment */
            double sc;
            const double r = sgemm_rate(2048, &sc);
            cpu_sgemm += sc;
            wall_sgemm += 2.0 * 2048.0 * 2048.0 * 2048.0 / r / 1e9;
            sg_sum += r;
            sg_best = r > sg_best ? r : sg_best;
        }
    }
    const double fpt = ml_model_train_flops_per_token(&c, T), tokens = (double)B * T;
    const double mean = total / steps;
    const double gf = fpt * tokens / mean / 1e9, gf_best = fpt * tokens / best / 1e9;
    printf("shape (%c) D %d F %d H %d/%d V %d T %d B %d, %d thread(s), core %s\n", shape, c.d_model, c.d_mlp, c.n_heads,
           c.n_kv_heads, c.vocab_size, T, B, threads, ml_blas_corename());
    printf("  params %zu (non-embedding %zu), FLOPs/token 6N+6DV+12TD = %.2f M\n", m->n_params,
           ml_model_n_nonembedding(&c), fpt / 1e6);
    printf("  step %.1f ms mean (%.1f best) over %d steps: %.0f tokens/s, %.1f GFLOP/s (best %.1f)\n", mean * 1e3,
           best * 1e3, steps, tokens / mean, gf, gf_best);
    const double sg = sg_sum / steps;
    printf("  sgemm 2048^3 after each step, same threads: %.1f GFLOP/s mean (%.1f best) -> step at %.0f%% of sgemm "
           "(means), %.0f%% (bests)\n",
           sg, sg_best, 100 * gf / sg, 100 * gf_best / sg_best);
    /* CPU-time view (robust to other jobs on the machine): FLOPs per CPU-second of all our threads */
    const double cpu_rate = fpt * tokens * steps / cpu_step / 1e9,
                 cpu_sg = 2.0 * 2048.0 * 2048.0 * 2048.0 * steps / cpu_sgemm / 1e9;
    printf("  per CPU-second of all threads: step %.1f GFLOP, sgemm %.1f GFLOP -> %.0f%%; CPU use %.2f cores in "
           "steps, %.2f in sgemm\n",
           cpu_rate, cpu_sg, 100 * cpu_rate / cpu_sg, cpu_step / total, cpu_sgemm / wall_sgemm);
    const ml_prof_event *ev;
    int ne = ml_prof_events(&ev);
    printf("  per step:");
    for (int i = 0; i < ne; i++) {
        if (strncmp(ev[i].name, "model.", 6)) continue;
        double sec = ev[i].seconds, fl = ev[i].flops;
        for (int j = 0; j < ne0; j++)
            if (!strcmp(ev0[j].name, ev[i].name)) sec -= ev0[j].seconds, fl -= ev0[j].flops;
        printf(" %s %.1f ms", ev[i].name + 6, sec / steps * 1e3);
        if (!strcmp(ev[i].name, "model.gemm") || !strcmp(ev[i].name, "model.attention") ||
            !strcmp(ev[i].name, "model.attention_backward"))
            printf(" (%.0f GF/s)", fl / sec / 1e9);
        printf(";");
    }
    printf("\n");
    const double state_mb = 4.0 * m->n_params * 4 / 1e6, act_mb = ml_workspace_bytes(ws) / 1e6;
    const long hwm = vm_kb("VmHWM:");
    printf("  memory: params+grads+moments %.1f MB + activations %.1f MB = %.1f MB; peak RSS %.1f MB, of which "
           "%.1f MB before the model (MPI, OpenBLAS buffers, the sgemm test matrices); model peak / budget %.2f\n",
           state_mb, act_mb, state_mb + act_mb, hwm / 1e3, rss0 / 1e3, (hwm - rss0) / 1e3 / (state_mb + act_mb));
    printf("  final loss %.4f\n", st.loss_sum / st.n_targets);
    free(tok), free(tgt);
done:
    if (rc != ML_OK) ml_error_print(stderr, 1);
    ml_workspace_destroy(&ws);
    ml_adamw_destroy(&opt);
    ml_model_destroy(&m);
    return rc;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    const char *shapes = "ab", *threads = "2,1";
    int B = 0, steps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--shape")) shapes = !strcmp(argv[i + 1], "all") ? "ab" : argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = argv[i + 1];
        else if (!strcmp(argv[i], "--B")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lm_chunk")) lm_chunk_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--attn_block")) attn_block_opt = atoi(argv[i + 1]);
    }
    int rc = 0;
    for (const char *s = shapes; *s; s++)
        for (const char *t = threads; *t; t++)
            if (*t >= '1' && *t <= '9') rc |= run_shape(*s, *t - '0', B, steps) != ML_OK;
    MPI_Finalize();
    return rc;
}
