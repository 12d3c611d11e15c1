/* Merge throughput in GB/s of tensor bytes read + written, next to the
 * machine's bounds: a STREAM-like triad (memory) and a file write with
 * fdatasync (disk).
 *
 *   bench_merge [DIR]     (run under mpiexec for the rank-parallel merge)
 *
 * Part 1 (rank 0, 1-rank runs): in-memory kernels on embedding-sized tensors
 * (N = 32000 x 512 floats per model). Part 2 (all ranks): `mergelens merge`
 * of two checkpoints of the paper's model (35.1M parameters each), SLERP
 * t = 0.58, timed until the output is on disk (ml_h5_close flushes it);
 * inputs are in the page cache. The bound is min(triad, 3 x disk write):
 * 2 bytes are read from memory for each byte that must reach the disk.
 */
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mergelens/io.h"
#include "mergelens/merge.h"

static double best_of(int reps, void (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = ml_wtime();
        fn(arg);
        double dt = ml_wtime() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

typedef struct {
    float *a, *b, *c;
    size_t n;
} triad_arg;
static void triad(void *p) {
    triad_arg *t = p;
    float s = 1.0001f;
    for (size_t i = 0; i < t->n; i++) t->a[i] = t->b[i] + s * t->c[i];
}

/* one triad pass over 3 x 256 MB (beyond the L3), in GB/s */
static double triad_once(triad_arg *t) {
    double dt = best_of(1, triad, t);
    return 3.0 * t->n * 4 / dt / 1e9;
}

static double measure_disk(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/bench_disk.tmp", dir);
    size_t chunk = (size_t)16 << 20, total = (size_t)512 << 20;
    char *buf = ml_malloc(chunk);
    memset(buf, 1, chunk);
    double t0 = ml_wtime();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    for (size_t w = 0; w < total; w += chunk)
        if (write(fd, buf, chunk) != (ssize_t)chunk) break;
    fdatasync(fd);
    close(fd);
    double dt = ml_wtime() - t0;
    unlink(path);
    ml_free(buf);
    return total / dt / 1e9;
}

typedef struct {
    ml_merge_params p;
    ml_merge_inputs in;
    ml_merge_stats st;
    ml_merge_work *w;
    float *out;
    int stats_each_time;
} kern_arg;
static void kern(void *v) {
    kern_arg *k = v;
    if (k->stats_each_time) ml_merge_stats_compute(&k->p, &k->in, &k->st);
    if (ml_merge_apply(&k->p, &k->in, &k->st, k->w, k->out)) ml_error_print(stderr, 0);
}

static void bench_kernels(double triad_bw) {
    const size_t R = 32000, C = 512, N = R * C;
    float *x[4], *out = ml_malloc(N * 4);
    for (int i = 0; i < 4; i++) {
        x[i] = ml_malloc(N * 4);
        ml_rng r;
        ml_rng_seed(&r, 1, (uint64_t)i);
        for (size_t j = 0; j < N; j++) x[i][j] = 0.02f * ml_rng_normal(&r);
    }
    printf("in-memory kernels, N = %zu floats per model (%.0f MB), best of 5, next to a triad of %.2f GB/s:\n", N,
           N * 4 / 1e6, triad_bw);
    printf("  %-34s %9s %9s %8s\n", "method", "ms", "GB/s", "% triad");
    struct {
        const char *label;
        ml_merge_method m;
        int K, base, stats_each;
        double density;
    } cases[] = {
        {"slerp (stats + apply)", ML_MERGE_SLERP, 1, 1, 1, 1},
        {"slerp apply only (sweep point)", ML_MERGE_SLERP, 1, 1, 0, 1},
        {"linear K=2", ML_MERGE_LINEAR, 2, 0, 1, 1},
        {"task_arithmetic K=2", ML_MERGE_TASK_ARITHMETIC, 2, 1, 1, 1},
        {"ties K=2 density 0.5", ML_MERGE_TIES, 2, 1, 1, 0.5},
        {"dare_ties K=2 density 0.5", ML_MERGE_DARE_TIES, 2, 1, 1, 0.5},
        {"model_stock K=3", ML_MERGE_MODEL_STOCK, 3, 1, 1, 1},
        {"multislerp K=3 (with base)", ML_MERGE_MULTISLERP, 3, 1, 1, 1},
        {"karcher K=4", ML_MERGE_KARCHER, 4, 0, 1, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kern_arg k = {0};
        ml_merge_params_defaults(&k.p, cases[c].m);
        k.p.K = cases[c].K;
        k.p.has_base = cases[c].base;
        k.p.t = 0.58;
        for (int i = 0; i < k.p.K; i++) k.p.density[i] = cases[c].density;
        k.p.stream = 12345;
        k.in.rows = R;
        k.in.cols = C;
        k.in.name = "bench";
        k.in.base = cases[c].base ? x[0] : NULL;
        for (int i = 0; i < k.p.K; i++) k.in.x[i] = x[i + cases[c].base];
        k.out = out;
        k.stats_each_time = cases[c].stats_each;
        ml_merge_work_create(k.p.K, R, &k.w);
        ml_merge_stats_compute(&k.p, &k.in, &k.st);
        double dt = best_of(5, kern, &k);
        int nin = k.p.K + cases[c].base;
        double gb = (double)(nin + 1) * N * 4 / 1e9;
        printf("  %-34s %9.2f %9.2f %7.0f%%\n", cases[c].label, dt * 1e3, gb / dt, 100 * gb / dt / triad_bw);
        ml_merge_stats_release(&k.st);
        ml_merge_work_destroy(&k.w);
    }
    for (int i = 0; i < 4; i++) ml_free(x[i]);
    ml_free(out);
}

/* the paper's model: V 32000, D 512, F 1024, 16 heads / 8 kv heads of 32, 1 layer */
static int write_model(MPI_Comm comm, const char *path, uint64_t seed) {
    const int V = 32000, D = 512, F = 1024, HQ = 512, HKV = 256;
    struct {
        const char *name;
        int rank;
        hsize_t d0, d1;
    } t[] = {{"model.embed_tokens.weight", 2, V, D},
             {"model.layers.0.input_layernorm.weight", 1, D, 1},
             {"model.layers.0.self_attn.q_proj.weight", 2, HQ, D},
             {"model.layers.0.self_attn.k_proj.weight", 2, HKV, D},
             {"model.layers.0.self_attn.v_proj.weight", 2, HKV, D},
             {"model.layers.0.self_attn.o_proj.weight", 2, D, HQ},
             {"model.layers.0.post_attention_layernorm.weight", 1, D, 1},
             {"model.layers.0.mlp.gate_proj.weight", 2, F, D},
             {"model.layers.0.mlp.up_proj.weight", 2, F, D},
             {"model.layers.0.mlp.down_proj.weight", 2, D, F},
             {"model.norm.weight", 1, D, 1},
             {"lm_head.weight", 2, V, D}};
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_create(comm, path, "mergelens.checkpoint", 1, &h));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "model_config",
                                "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\","
                                "\"vocab_size\":32000,\"hidden_size\":512,\"intermediate_size\":1024,"
                                "\"num_hidden_layers\":1,\"num_attention_heads\":16,\"num_key_value_heads\":8,"
                                "\"head_dim\":32,\"max_position_embeddings\":2048,\"rope_theta\":10000.0,"
                                "\"rms_norm_eps\":1e-06,\"tie_word_embeddings\":false}"));
    ML_CHECK(ml_h5_set_attr_str(h, "/", "parent", ""));
    float *buf = ml_malloc((size_t)V * D * 4);
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        size_t n = t[k].d0 * (t[k].rank == 2 ? t[k].d1 : 1);
        ml_rng r;
        ml_rng_seed(&r, seed, k);
        for (size_t j = 0; j < n; j++) buf[j] = 0.02f * ml_rng_normal(&r);
        hsize_t dims[2] = {t[k].d0, t[k].d1};
        char p[128];
        snprintf(p, sizeof p, "/params/%s", t[k].name);
        ML_CHECK(ml_h5_write_tensor(h, p, ML_F32, t[k].rank, dims, buf));
    }
    ml_free(buf);
    return ml_h5_close(&h);
}

int main(int argc, char **argv) {
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    ml_log_set_level(ML_LOG_WARN);
    const char *dir = argc > 1 ? argv[1] : "/tmp/mergelens-bench-merge";
    if (rank == 0) ml_mkdirs(dir);
    /* the bounds and the merge are measured in alternation, best of 5 each,
     * so that a busy moment on a shared machine does not skew the ratio */
    double triad_bw = 0, disk_bw = 0;
    triad_arg ta = {0};
    if (rank == 0) {
        ta.n = (size_t)64 << 20;
        ta.a = ml_malloc(ta.n * 4);
        ta.b = ml_malloc(ta.n * 4);
        ta.c = ml_malloc(ta.n * 4);
        for (size_t i = 0; i < ta.n; i++) ta.a[i] = 0, ta.b[i] = (float)i, ta.c[i] = 1;
        for (int i = 0; i < 3; i++) {
            double tb = triad_once(&ta);
            if (tb > triad_bw) triad_bw = tb;
        }
        if (size == 1) bench_kernels(triad_bw);
    }
    char a[1024], b[1024], cfg[1024], out[1024];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    snprintf(cfg, sizeof cfg, "%s/slerp.yaml", dir);
    snprintf(out, sizeof out, "%s/merged.h5", dir);
    if (write_model(MPI_COMM_WORLD, a, 1) || write_model(MPI_COMM_WORLD, b, 2)) {
        ml_error_print(stderr, 1);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0) {
        FILE *f = fopen(cfg, "w");
        fprintf(f, "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\nparameters:\n  t: 0.58\n",
                a, a, b);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    ml_merge_recipe *r = NULL;
    if (ml_merge_recipe_load(cfg, &r)) {
        ml_error_print(stderr, 1);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        if (rank == 0) {
            double tb = triad_once(&ta), db = measure_disk(dir);
            if (tb > triad_bw) triad_bw = tb;
            if (db > disk_bw) disk_bw = db;
        }
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = ml_wtime();
        if (ml_merge_checkpoints(MPI_COMM_WORLD, r, out, NULL, 0)) {
            ml_error_print(stderr, 1);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        double dt = ml_wtime() - t0; /* ml_h5_close flushes the output to disk */
        if (dt < best) best = dt;
    }
    if (rank == 0) {
        ml_free(ta.a);
        ml_free(ta.b);
        ml_free(ta.c);
        double params = 2.0 * 32000 * 512 + 512 * 512 * 2 + 256 * 512 * 2 + 1024 * 512 * 3 + 512 * 3;
        double bytes = 3 * params * 4, written = params * 4; /* 2 models read + 1 written */
        double bound_disk = disk_bw * bytes / written;
        double bound = triad_bw < bound_disk ? triad_bw : bound_disk;
        printf("machine (best of 5): STREAM-like triad %.2f GB/s (1 thread), file write + fdatasync %.2f GB/s\n",
               triad_bw, disk_bw);
        printf("merge command: SLERP of 2 x %.1fM parameters, %d rank%s, inputs in the page cache, output flushed "
               "to disk (best of 5)\n",
               params / 1e6, size, size > 1 ? "s" : "");
        printf("  %.3f s, %.2f GB/s read+written = %.0f%% of the bound %.2f GB/s = min(triad, 3 x disk write)\n",
               best, bytes / best / 1e9, 100 * bytes / best / 1e9 / bound, bound);
    }
    ml_prof_summary(MPI_COMM_WORLD, stdout);
    ml_merge_recipe_destroy(&r);
    MPI_Finalize();
    return 0;
}
