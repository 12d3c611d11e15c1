/* Interop throughput: float32 -> f16/bf16 conversion, safetensors write and
 * open+read, and HF export/import of a synthetic 1-layer checkpoint.
 *   bench_interop [DIR] [V D F]   (default /tmp, 8192 512 2048) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mergelens/interop.h"
#include "mergelens/io.h"

static double best_of(int reps, double (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = fn(arg);
        if (t < best) best = t;
    }
    return best;
}

typedef struct {
    float *x;
    uint16_t *h;
    float *y;
    size_t n;
    int kind;
} conv_arg;

static double run_conv(void *p) {
    conv_arg *a = p;
    double t0 = ml_wtime();
    switch (a->kind) {
    case 0:
        ml_f32_to_bf16_array(a->h, a->x, a->n);
        break;
    case 1:
        ml_f32_to_f16_array(a->h, a->x, a->n);
        break;
    case 2:
        ml_bf16_to_f32_array(a->y, a->h, a->n);
        break;
    default:
        ml_f16_to_f32_array(a->y, a->h, a->n);
        break;
    }
    return ml_wtime() - t0;
}

static int write_checkpoint(const char *path, int V, int D, int F, float *buf) {
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"vocab_size\": %d, "
             "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": 1, \"num_attention_heads\": 8, "
             "\"num_key_value_heads\": 8, \"head_dim\": %d, \"max_position_embeddings\": 512, \"rope_theta\": "
             "10000.0, \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": false}",
             V, D, F, D / 8);
    struct {
        const char *name;
        hsize_t r, c;
    } p[] = {{"model.embed_tokens.weight", V, D},
             {"model.layers.0.input_layernorm.weight", D, 0},
             {"model.layers.0.self_attn.q_proj.weight", D, D},
             {"model.layers.0.self_attn.k_proj.weight", D, D},
             {"model.layers.0.self_attn.v_proj.weight", D, D},
             {"model.layers.0.self_attn.o_proj.weight", D, D},
             {"model.layers.0.post_attention_layernorm.weight", D, 0},
             {"model.layers.0.mlp.gate_proj.weight", F, D},
             {"model.layers.0.mlp.up_proj.weight", F, D},
             {"model.layers.0.mlp.down_proj.weight", D, F},
             {"model.norm.weight", D, 0},
             {"lm_head.weight", V, D}};
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, &h));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "model_config", cfg));
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        char ds[128];
        snprintf(ds, sizeof ds, "/params/%s", p[i].name);
        hsize_t dims[2] = {p[i].r, p[i].c};
        ML_CHECK(ml_h5_write_tensor(h, ds, ML_F32, p[i].c ? 2 : 1, dims, buf));
    }
    return ml_h5_close(&h);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    ml_log_set_level(ML_LOG_WARN);
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int V = argc > 4 ? atoi(argv[2]) : 8192, D = argc > 4 ? atoi(argv[3]) : 512, F = argc > 4 ? atoi(argv[4]) : 2048;
    size_t n = (size_t)32 << 20; /* 32 Mi floats = 128 MiB */
    float *x = ml_malloc(n * 4), *y = ml_malloc(n * 4);
    uint16_t *h = ml_malloc(n * 2);
    if (!x || !y || !h) return 1;
    ml_rng r;
    ml_rng_seed(&r, 1, 0);
    for (size_t i = 0; i < n; i++) x[i] = ml_rng_normal(&r);

    printf("conversion, %zu elements (best of 3):\n", n);
    const char *names[] = {"f32 -> bf16", "f32 -> f16", "bf16 -> f32", "f16 -> f32"};
    for (int k = 0; k < 4; k++) {
        conv_arg a = {x, h, y, n, k};
        if (k == 2) ml_f32_to_bf16_array(h, x, n);
        if (k == 3) ml_f32_to_f16_array(h, x, n);
        double t = best_of(3, run_conv, &a);
        printf("  %-12s %7.3f s  %7.1f Melem/s  %6.2f GB/s (read+write)\n", names[k], t, n / t / 1e6,
               n * 6.0 / t / 1e9);
    }

    char path[1024];
    snprintf(path, sizeof path, "%s/bench_interop.safetensors", dir);
    printf("safetensors, one tensor of %zu floats:\n", n);
    ml_st_dtype dts[] = {ML_ST_F32, ML_ST_BF16};
    for (int k = 0; k < 2; k++) {
        ml_st_tensor t = {"x", dts[k], 1, {(int64_t)n}, x, 1};
        double t0 = ml_wtime();
        if (ml_safetensors_write(path, 1, &t, 0, NULL)) goto fail;
        double tw = ml_wtime() - t0;
        t0 = ml_wtime();
        ml_safetensors *st = NULL;
        if (ml_safetensors_open(path, &st) || ml_safetensors_read_f32(st, "x", y, n)) goto fail;
        ml_safetensors_close(&st);
        double tr = ml_wtime() - t0;
        double bytes = (double)n * ml_st_dtype_size(dts[k]);
        printf("  %-5s write (incl. fsync) %6.3f s %6.2f GB/s   open+read_f32 %6.3f s %6.2f GB/s (file bytes)\n",
               ml_st_dtype_name(dts[k]), tw, bytes / tw / 1e9, tr, bytes / tr / 1e9);
    }
    unlink(path);

    char ck[1024], hf[1024], back[1024];
    snprintf(ck, sizeof ck, "%s/bench_interop.h5", dir);
    snprintf(hf, sizeof hf, "%s/bench_interop_hf", dir);
    snprintf(back, sizeof back, "%s/bench_interop_back.h5", dir);
    if (write_checkpoint(ck, V, D, F, x)) goto fail;
    double params = 2.0 * V * D + 4.0 * D * D + 3.0 * D * F + 3.0 * D;
    printf("HF, 1-layer checkpoint V=%d D=%d F=%d (%.1f M parameters):\n", V, D, F, params / 1e6);
    for (int k = 0; k < 2; k++) {
        double t0 = ml_wtime();
        if (ml_hf_export(ck, hf, dts[k])) goto fail;
        double te = ml_wtime() - t0;
        t0 = ml_wtime();
        if (ml_hf_import(hf, back, NULL)) goto fail;
        double ti = ml_wtime() - t0;
        printf("  %-5s export %6.3f s (%6.1f Mparam/s)   import %6.3f s (%6.1f Mparam/s)\n", ml_st_dtype_name(dts[k]),
               te, params / te / 1e6, ti, params / ti / 1e6);
    }
    unlink(ck);
    unlink(back);
    snprintf(path, sizeof path, "rm -rf '%s'", hf);
    if (system(path) != 0) fprintf(stderr, "could not remove %s\n", hf);
    ml_free(x);
    ml_free(y);
    ml_free(h);
    MPI_Finalize();
    return 0;
fail:
    ml_error_print(stderr, 1);
    MPI_Finalize();
    return 1;
}
