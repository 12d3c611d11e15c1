/* Whole-model merges through `mergelens merge` (ml_cmd_merge) on small random
 * checkpoints, against slow independent per-element implementations; the
 * output must be bit-identical to a 1-rank merge; bad inputs fail with clear
 * messages before anything is written. */
#include <dirent.h>
#include <math.h>

#include "mergelens/io.h"
#include "mergelens/merge.h"
#include "ml_test.h"

/* tiny Mistral: V vocab, D model, F MLP, H heads, KV kv heads, HD head dim, L layers */
enum { V = 40, D = 16, F = 24, H = 4, KV = 2, HD = 4, L = 3, MAXT = 64 };

typedef struct {
    char name[96];
    int rank;
    hsize_t dims[2];
    size_t n;
} tdesc;

static int tensor_list(tdesc *t) {
    int n = 0;
#define ADD(nm, r, d0, d1)                                                                                   \
    do {                                                                                                     \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                                     \
        t[n].rank = r;                                                                                       \
        t[n].dims[0] = d0;                                                                                   \
        t[n].dims[1] = d1;                                                                                   \
        t[n].n = (size_t)(d0) * (r == 2 ? (size_t)(d1) : 1);                                                 \
        n++;                                                                                                 \
    } while (0)
    ADD("model.embed_tokens.weight", 2, V, D);
    for (int l = 0; l < L; l++) {
        char b[96];
#define LAYER(suffix, r, d0, d1)                                                                             \
        snprintf(b, sizeof b, "model.layers.%d.%s", l, suffix);                                              \
        ADD(b, r, d0, d1)
        LAYER("input_layernorm.weight", 1, D, 1);
        LAYER("self_attn.q_proj.weight", 2, H * HD, D);
        LAYER("self_attn.k_proj.weight", 2, KV * HD, D);
        LAYER("self_attn.v_proj.weight", 2, KV * HD, D);
        LAYER("self_attn.o_proj.weight", 2, D, H * HD);
        LAYER("post_attention_layernorm.weight", 1, D, 1);
        LAYER("mlp.gate_proj.weight", 2, F, D);
        LAYER("mlp.up_proj.weight", 2, F, D);
        LAYER("mlp.down_proj.weight", 2, D, F);
    }
    ADD("model.norm.weight", 1, D, 1);
    ADD("lm_head.weight", 2, V, D);
    return n;
}

static const char *config_json(double rope_theta) {
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\",\"vocab_size\":%d,"
             "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
             "\"num_key_value_heads\":%d,\"head_dim\":%d,\"max_position_embeddings\":64,\"rope_theta\":%.1f,"
             "\"rms_norm_eps\":1e-06,\"tie_word_embeddings\":false}",
             V, D, F, L, H, KV, HD, rope_theta);
    return buf;
}

/* tensor k of a model: base(k) + delta * noise(seed, k) */
static void gen(float *x, int k, size_t n, uint64_t seed, double delta) {
    ml_rng rb, rd;
    ml_rng_seed(&rb, 1000, (uint64_t)k);
    ml_rng_seed(&rd, seed, (uint64_t)k);
    for (size_t i = 0; i < n; i++) {
        double b = 0.1 * ml_rng_normal(&rb);
        x[i] = (float)(b + delta * ml_rng_normal(&rd));
    }
}

typedef struct {
    double rope_theta;
    const char *shrink; /* tensor written with one row less */
    const char *drop;   /* tensor left out */
    const char *tokenizer; /* root attribute `tokenizer` */
} ckpt_opts;

static void make_ckpt(const char *path, uint64_t seed, double delta, const ckpt_opts *o) {
    tdesc t[MAXT];
    int nt = tensor_list(t);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "model_config", config_json(o && o->rope_theta ? o->rope_theta : 10000)));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "parent", ""));
    if (o && o->tokenizer) ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "tokenizer", o->tokenizer));
    float *buf = malloc(V * D * sizeof(float));
    for (int k = 0; k < nt; k++) {
        if (o && o->drop && !strcmp(o->drop, t[k].name)) continue;
        hsize_t dims[2] = {t[k].dims[0], t[k].dims[1]};
        if (o && o->shrink && !strcmp(o->shrink, t[k].name)) dims[0]--;
        gen(buf, k, t[k].n, seed, delta);
        char p[128];
        snprintf(p, sizeof p, "/params/%s", t[k].name);
        ML_ASSERT_OK(ml_h5_write_tensor(h, p, ML_F32, t[k].rank, dims, buf));
    }
    free(buf);
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void write_text(const char *path, const char *text) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static int run_merge(MPI_Comm comm, const char *cfg, const char *out) {
    char *argv[] = {"merge", (char *)cfg, "--out", (char *)out, NULL};
    return ml_cmd_merge(comm, out ? 4 : 2, argv);
}

/* the same with reads of a few rows, so that tensors arrive in many chunks */
static int run_merge_chunked(MPI_Comm comm, const char *cfg, const char *out) {
    char *argv[] = {"merge", (char *)cfg, "--out", (char *)out, "--read-chunk", "40", NULL};
    return ml_cmd_merge(comm, 6, argv);
}

static char dir[1024];

static void setup_models(void) {
    static int done = 0;
    if (done) return;
    snprintf(dir, sizeof dir, "%s", ml_test_dir("merge_cmd"));
    char p[1200];
    snprintf(p, sizeof p, "%s/base.h5", dir);
    make_ckpt(p, 1, 0.0, NULL);
    snprintf(p, sizeof p, "%s/far.h5", dir);
    make_ckpt(p, 2, 0.08, NULL); /* about 40 degrees from base */
    snprintf(p, sizeof p, "%s/x.h5", dir);
    make_ckpt(p, 3, 0.01, NULL);
    snprintf(p, sizeof p, "%s/y.h5", dir);
    make_ckpt(p, 4, 0.01, NULL);
    snprintf(p, sizeof p, "%s/z.h5", dir);
    make_ckpt(p, 5, 0.01, NULL);
    done = 1;
}

static void read_all(const char *path, float **out) {
    tdesc t[MAXT];
    int nt = tensor_list(t);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, 1, &h));
    for (int k = 0; k < nt; k++) {
        char p[128];
        snprintf(p, sizeof p, "/params/%s", t[k].name);
        out[k] = malloc(t[k].n * sizeof(float));
        ML_ASSERT_OK(ml_h5_read_tensor(h, p, ML_F32, t[k].rank, t[k].dims, out[k]));
    }
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void free_all(float **x) {
    tdesc t[MAXT];
    int nt = tensor_list(t);
    for (int k = 0; k < nt; k++) free(x[k]);
}

/* The merge with P ranks equals, bit for bit, the same merge on one rank
 * reading its inputs in chunks of a few rows. */
static void check_rank_independent(const char *cfg, const char *out) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char out1[1200];
    snprintf(out1, sizeof out1, "%s.np1.h5", out);
    if (rank == 0) ML_ASSERT_OK(run_merge_chunked(MPI_COMM_SELF, cfg, out1));
    MPI_Barrier(MPI_COMM_WORLD);
    tdesc t[MAXT];
    int nt = tensor_list(t);
    float *a[MAXT], *b[MAXT];
    read_all(out, a);
    read_all(out1, b);
    for (int k = 0; k < nt; k++)
        if (memcmp(a[k], b[k], t[k].n * sizeof(float)))
            fail_msg("%s: tensor %s differs between %d rank(s) and 1 rank reading in chunks", out, t[k].name, size);
    free_all(a);
    free_all(b);
}

/* ---- SLERP with gradients and filters vs a literal per-element slerp ---- */
static double slerp_t_expected(const char *name) {
    /* t: [{filter: self_attn, value: [0, 1, 0.5, 0.25]}, {filter: mlp, value: 0.3}, {value: 0.58}] with
     * layer positions 0, 0.5, 1 for layers 0, 1, 2 (scaled 0, 1.5, 3) */
    if (strstr(name, "self_attn")) {
        int l = atoi(strstr(name, "layers.") + 7);
        const double v[3] = {0.0, 0.75, 0.25};
        return v[l];
    }
    if (strstr(name, "mlp")) return 0.3;
    return 0.58;
}

static void ref_slerp(double *out, const float *a, const float *b, size_t n, double t) {
    double na = 0, nb = 0, dot = 0;
    for (size_t i = 0; i < n; i++) na += (double)a[i] * a[i], nb += (double)b[i] * b[i];
    na = sqrt(na);
    nb = sqrt(nb);
    double sa = na > 1e-8 ? na : 1, sb = nb > 1e-8 ? nb : 1;
    for (size_t i = 0; i < n; i++) dot += (a[i] / sa) * (b[i] / sb);
    double c0, c1;
    if (fabs(dot) > 0.9995) {
        c0 = 1 - t;
        c1 = t;
    } else {
        double th = acos(dot);
        c0 = sin((1 - t) * th) / sin(th);
        c1 = sin(t * th) / sin(th);
    }
    for (size_t i = 0; i < n; i++) out[i] = c0 * a[i] + c1 * b[i];
}

static void test_slerp_model(void **state) {
    (void)state;
    setup_models();
    char cfg[1200], out[1200], text[2048];
    snprintf(cfg, sizeof cfg, "%s/slerp.yaml", dir);
    snprintf(out, sizeof out, "%s/slerp.h5", dir);
    snprintf(text, sizeof text,
             "merge_method: slerp\n"
             "base_model: %s/base.h5\n"
             "models:\n"
             "  - model: %s/far.h5\n"
             "  - model: %s/base.h5\n"
             "parameters:\n"
             "  t:\n"
             "    - filter: self_attn\n"
             "      value: [0, 1, 0.5, 0.25]\n"
             "    - filter: mlp\n"
             "      value: 0.3\n"
             "    - value: 0.58\n"
             "dtype: float32\n",
             dir, dir, dir);
    write_text(cfg, text);
    ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, cfg, out));
    tdesc t[MAXT];
    int nt = tensor_list(t);
    float *got[MAXT], *a = malloc(V * D * 4), *b = malloc(V * D * 4);
    double *want = malloc(V * D * 8);
    read_all(out, got);
    int spherical = 0;
    for (int k = 0; k < nt; k++) {
        gen(a, k, t[k].n, 1, 0.0);
        gen(b, k, t[k].n, 2, 0.08);
        double tt = slerp_t_expected(t[k].name);
        ref_slerp(want, a, b, t[k].n, tt);
        double err = 0, scale = 0, dot = 0, na = 0, nb = 0;
        for (size_t i = 0; i < t[k].n; i++) {
            err = fmax(err, fabs(got[k][i] - want[i]));
            scale = fmax(scale, fabs(want[i]));
            dot += (double)a[i] * b[i], na += (double)a[i] * a[i], nb += (double)b[i] * b[i];
        }
        spherical += fabs(dot / sqrt(na * nb)) <= 0.9995;
        if (err > 1e-6 * scale) fail_msg("slerp %s (t %g): max error %g of %g", t[k].name, tt, err, scale);
    }
    assert_true(spherical > nt / 2); /* the test exercises the spherical branch */
    /* the output is an ordinary checkpoint that records its recipe */
    ml_h5 *h = NULL;
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out, "mergelens.checkpoint", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "model_config", &s));
    assert_string_equal(s, config_json(10000));
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "parent", &s));
    assert_non_null(strstr(s, "base.h5"));
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "merge_recipe", &s));
    assert_non_null(strstr(s, "\"merge_method\":\"slerp\""));
    assert_non_null(strstr(s, "\"filter\":\"self_attn\""));
    ml_free(s);
    ML_ASSERT_OK(ml_h5_close(&h));
    free_all(got);
    free(a);
    free(b);
    free(want);
    check_rank_independent(cfg, out);
}

/* ---- TIES with per-model gradient / filtered parameters vs a sort-based reference ---- */
typedef struct {
    size_t i;
    float a;
} mag;
static int cmp_mag(const void *x, const void *y) {
    const mag *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? 1 : -1;
    return p->i < q->i ? -1 : p->i > q->i;
}

static void ref_ties(double *out, const float *base, const float *const *x, const double *w, const double *dens,
                     int K, size_t n, double lambda) {
    double *d[4];
    mag *m = malloc(n * sizeof *m);
    for (int k = 0; k < K; k++) {
        d[k] = calloc(n, sizeof(double));
        size_t keep = dens[k] >= 1 ? n : (size_t)(dens[k] * (double)n);
        for (size_t i = 0; i < n; i++) m[i].i = i, m[i].a = fabsf(x[k][i] - base[i]);
        qsort(m, n, sizeof *m, cmp_mag);
        for (size_t r = 0; r < keep; r++) d[k][m[r].i] = (double)(x[k][m[r].i] - base[m[r].i]);
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0, mixed = 0, div = 0;
        for (int k = 0; k < K; k++) s += w[k] * d[k][i];
        double sign = s >= 0 ? 1 : -1;
        for (int k = 0; k < K; k++) {
            double wd = w[k] * d[k][i];
            if ((wd > 0 && sign > 0) || (wd < 0 && sign < 0)) mixed += wd, div += w[k];
        }
        if (div == 0) div = 1;
        out[i] = base[i] + lambda * mixed / div;
    }
    for (int k = 0; k < K; k++) free(d[k]);
    free(m);
}

static void test_ties_model(void **state) {
    (void)state;
    setup_models();
    char cfg[1200], out[1200], text[2048];
    snprintf(cfg, sizeof cfg, "%s/ties.yaml", dir);
    snprintf(out, sizeof out, "%s/ties.h5", dir);
    snprintf(text, sizeof text,
             "merge_method: ties\n"
             "base_model: %s/base.h5\n"
             "models:\n"
             "  - model: %s/x.h5\n"
             "    parameters:\n"
             "      weight: 0.7\n"
             "      density: [0.3, 0.9]\n"
             "  - model: %s/y.h5\n"
             "    parameters:\n"
             "      weight:\n"
             "        - filter: mlp\n"
             "          value: -0.4\n"
             "        - value: 0.5\n"
             "parameters:\n"
             "  density: 0.6\n"
             "  lambda: 1.1\n",
             dir, dir, dir);
    write_text(cfg, text);
    ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, cfg, out));
    tdesc t[MAXT];
    int nt = tensor_list(t);
    float *got[MAXT], *base = malloc(V * D * 4), *x = malloc(V * D * 4), *y = malloc(V * D * 4);
    double *want = malloc(V * D * 8);
    read_all(out, got);
    for (int k = 0; k < nt; k++) {
        gen(base, k, t[k].n, 1, 0.0);
        gen(x, k, t[k].n, 3, 0.01);
        gen(y, k, t[k].n, 4, 0.01);
        const char *nm = t[k].name;
        /* mergekit 0.1.5: embed_tokens, model.norm and lm_head at position 0 */
        double pos = strstr(nm, "layers.") ? atoi(strstr(nm, "layers.") + 7) / 2.0 : 0;
        double w[2] = {0.7, strstr(nm, "mlp") ? -0.4 : 0.5}, dn[2] = {0.3 + 0.6 * pos, 0.6};
        const float *xs[2] = {x, y};
        ref_ties(want, base, xs, w, dn, 2, t[k].n, 1.1);
        double err = 0;
        for (size_t i = 0; i < t[k].n; i++) err = fmax(err, fabs(got[k][i] - want[i]));
        if (err > 1e-7) fail_msg("ties %s: max error %g", nm, err);
    }
    free_all(got);
    free(base);
    free(x);
    free(y);
    free(want);
    check_rank_independent(cfg, out);
}

/* ---- DARE, model_stock, karcher, soup: identical on any number of ranks ---- */
static void test_rank_independence(void **state) {
    (void)state;
    setup_models();
    const char *recipes[] = {
        "merge_method: dare_ties\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\nparameters: {weight: 0.5, density: 0.3}\nseed: 1234\n",
        "merge_method: model_stock\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\nparameters: {filter_wise: true}\n",
        "merge_method: karcher\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\n",
        "merge_method: soup\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\ndtype: bfloat16\n",
        /* applied chunk by chunk (one linear combination): the chunking must not change a bit */
        "merge_method: model_stock\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\n",
        "merge_method: multislerp\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\nparameters: {weight: [0.2, 0.7]}\n",
        "merge_method: task_arithmetic\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
        "  - model: %s/z.h5\nparameters: {weight: 0.6, lambda: 1.3}\nout_dtype: float16\n",
    };
    for (int i = 0; i < (int)(sizeof recipes / sizeof recipes[0]); i++) {
        char cfg[1200], out[1200], text[2048];
        snprintf(cfg, sizeof cfg, "%s/r%d.yaml", dir, i);
        snprintf(out, sizeof out, "%s/r%d.h5", dir, i);
        snprintf(text, sizeof text, recipes[i], dir, dir, dir, dir);
        write_text(cfg, text);
        ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, cfg, out));
        check_rank_independent(cfg, out);
    }
    /* soup over base, x, y, z = their mean (rounded to bfloat16) */
    tdesc t[MAXT];
    int nt = tensor_list(t);
    float *got[MAXT], *m[4];
    char out[1200];
    snprintf(out, sizeof out, "%s/r3.h5", dir);
    read_all(out, got);
    for (int j = 0; j < 4; j++) m[j] = malloc(V * D * 4);
    const uint64_t seeds[4] = {1, 3, 4, 5};
    const double deltas[4] = {0, 0.01, 0.01, 0.01};
    for (int k = 0; k < nt; k++) {
        for (int j = 0; j < 4; j++) {
            gen(m[j], k, t[k].n, seeds[j], deltas[j]);
            ml_round_bf16(m[j], t[k].n);
        }
        for (size_t i = 0; i < t[k].n; i++) {
            float want = (float)((m[0][i] + (double)m[1][i] + m[2][i] + m[3][i]) / 4);
            ml_round_bf16(&want, 1);
            if (fabsf(got[k][i] - want) > 1e-2f * fabsf(want) + 1e-30f)
                fail_msg("soup %s[%zu] = %g, expected %g", t[k].name, i, got[k][i], want);
        }
    }
    for (int j = 0; j < 4; j++) free(m[j]);
    free_all(got);
}

/* ---- bad inputs: clear errors, nothing written ---- */
static int no_files_like(const char *prefix) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) found = 1;
    closedir(d);
    return !found;
}

static void expect_fail(const char *cfg_text, const char *out_name, const char *msg) {
    char cfg[1200], out[1200];
    snprintf(cfg, sizeof cfg, "%s/bad.yaml", dir);
    snprintf(out, sizeof out, "%s/%s", dir, out_name);
    write_text(cfg, cfg_text);
    ml_error_clear();
    int rc = run_merge(MPI_COMM_WORLD, cfg, out);
    if (rc == ML_OK) fail_msg("merge succeeded; expected '%s'", msg);
    if (!strstr(ml_error_message(), msg)) fail_msg("message '%s' lacks '%s'", ml_error_message(), msg);
    MPI_Barrier(MPI_COMM_WORLD);
    assert_true(no_files_like(out_name)); /* neither the output nor a temporary */
}

static void test_bad_inputs(void **state) {
    (void)state;
    setup_models();
    char p[1200], text[2048], msg[2048];
    ckpt_opts o = {0};
    o.shrink = "model.layers.1.mlp.up_proj.weight";
    snprintf(p, sizeof p, "%s/shrunk.h5", dir);
    make_ckpt(p, 6, 0.01, &o);
    o = (ckpt_opts){0};
    o.drop = "lm_head.weight";
    snprintf(p, sizeof p, "%s/dropped.h5", dir);
    make_ckpt(p, 6, 0.01, &o);
    o = (ckpt_opts){0};
    o.rope_theta = 500000;
    snprintf(p, sizeof p, "%s/rope.h5", dir);
    make_ckpt(p, 6, 0.01, &o);
    const char *lin = "merge_method: linear\nmodels:\n  - model: %s/base.h5\n  - model: %s/%s\n"
                      "parameters: {weight: 0.5}\n";

    snprintf(text, sizeof text, lin, dir, dir, "shrunk.h5");
    snprintf(msg, sizeof msg, "tensor 'model.layers.1.mlp.up_proj.weight' has shape [24, 16] in %s/base.h5 but [23, 16] in %s/shrunk.h5", dir, dir);
    expect_fail(text, "out_shape.h5", msg);

    snprintf(text, sizeof text, lin, dir, dir, "dropped.h5");
    snprintf(msg, sizeof msg, "tensor 'lm_head.weight' of %s/base.h5 is missing in %s/dropped.h5", dir, dir);
    expect_fail(text, "out_drop.h5", msg);

    snprintf(text, sizeof text, lin, dir, dir, "rope.h5");
    snprintf(msg, sizeof msg, "model configurations differ: 'rope_theta' is 10000.0 in %s/base.h5 but 500000.0 in %s/rope.h5", dir, dir);
    expect_fail(text, "out_rope.h5", msg);

    snprintf(text, sizeof text, lin, dir, dir, "nonexistent.h5");
    expect_fail(text, "out_missing.h5", "nonexistent.h5");

    snprintf(text, sizeof text,
             "merge_method: slerp\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
             "parameters: {t: 0.5}\n",
             dir, dir, dir);
    expect_fail(text, "out_count.h5", "slerp merges exactly 2 models (base_model and one other), got 3");

    snprintf(text, sizeof text, "merge_method: task_arithmetic\nmodels:\n  - model: %s/x.h5\n", dir);
    expect_fail(text, "out_nobase.h5", "merge_method task_arithmetic needs a 'base_model'");

    snprintf(text, sizeof text,
             "merge_method: linear\nmodels:\n  - model: %s/x.h5\n    parameters: {weight: .inf}\n  - model: %s/y.h5\n"
             "parameters: {weight: 1}\n",
             dir, dir);
    snprintf(msg, sizeof msg, "%s/bad.yaml:4: key 'weight': expected a finite number, got '.inf'", dir);
    expect_fail(text, "out_inf.h5", msg);

    snprintf(text, sizeof text,
             "merge_method: ties\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n"
             "parameters:\n  weight: 1\n  densty: 0.5\n",
             dir, dir);
    snprintf(msg, sizeof msg, "%s/bad.yaml:7: unknown parameter 'densty' for merge_method ties", dir);
    expect_fail(text, "out_unknown.h5", msg);

    /* a density keeping nothing in the smallest tensors is found before writing */
    snprintf(text, sizeof text,
             "merge_method: ties\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n"
             "parameters: {weight: 1, density: 0.01}\n",
             dir, dir);
    expect_fail(text, "out_density.h5",
                "ties: tensor model.layers.0.input_layernorm.weight: density 0.01 of model 0 keeps no element of 16");

    char *argv[] = {"merge", p, NULL};
    ML_ASSERT_FAILS(ml_cmd_merge(MPI_COMM_WORLD, 2, argv), ML_ERR_ARG, "--out OUT.h5 is required");
    /* --check validates a good recipe and writes nothing */
    char cfg[1200];
    snprintf(cfg, sizeof cfg, "%s/check.yaml", dir);
    snprintf(text, sizeof text, "merge_method: soup\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n", dir, dir);
    write_text(cfg, text);
    char *argv2[] = {"merge", cfg, "--check", NULL};
    ML_ASSERT_OK(ml_cmd_merge(MPI_COMM_WORLD, 3, argv2));
    char *argv3[] = {"merge", cfg, "extra.yaml", "--out", "x.h5", NULL};
    ML_ASSERT_FAILS(ml_cmd_merge(MPI_COMM_WORLD, 5, argv3), ML_ERR_ARG, "expected one recipe file");
}

/* every allocation failure in a merge (1 rank) fails cleanly: an error,
 * nothing written, nothing leaked */
static void test_allocation_failures(void **state) {
    (void)state;
    setup_models();
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char cfg[1200], out[1200], text[2048];
    snprintf(cfg, sizeof cfg, "%s/alloc.yaml", dir);
    snprintf(text, sizeof text,
             "merge_method: ties\nbase_model: %s/base.h5\nmodels:\n  - model: %s/x.h5\n  - model: %s/y.h5\n"
             "parameters: {weight: 0.5, density: 0.5}\n",
             dir, dir, dir);
    write_text(cfg, text);
    if (rank == 0) {
        long live0 = ml_alloc_live(), c0 = ml_alloc_count();
        snprintf(out, sizeof out, "%s/alloc_ok.h5", dir);
        ML_ASSERT_OK(run_merge(MPI_COMM_SELF, cfg, out));
        long total = ml_alloc_count() - c0;
        assert_int_equal(ml_alloc_live(), live0);
        assert_true(total > 10);
        snprintf(out, sizeof out, "%s/alloc_fail.h5", dir);
        int failures = 0;
        for (long n = 1; n <= total; n += (n < 40 ? 1 : 13)) {
            ml_alloc_fail_at(n);
            int rc = run_merge(MPI_COMM_SELF, cfg, out);
            ml_alloc_fail_at(0);
            if (ml_alloc_live() != live0) fail_msg("allocation failure %ld of %ld leaks %ld allocations", n, total, ml_alloc_live() - live0);
            if (rc != ML_OK) {
                failures++;
                assert_false(ml_file_exists(out));
            } else {
                unlink(out);
            }
        }
        printf("allocation failures: %d of %ld allocations tried\n", failures, total);
        assert_true(failures > 10);
        assert_true(no_files_like("alloc_fail.h5"));
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* remove this run's files (every test above leaves its checks done) */
static void test_cleanup(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0 && dir[0]) {
        DIR *d = opendir(dir);
        struct dirent *e;
        char p[1400];
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                unlink(p);
            }
        if (d) closedir(d);
        rmdir(dir);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* The merged checkpoint carries the tokenizer its inputs share (issue #20
 * item 2): the same path or files with the same bytes; different tokenizers
 * are refused unless tokenizer_source picks one. */
static char *out_tokenizer(const char *path) {
    ml_h5 *h = NULL;
    char *v = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, 1, &h));
    if (ml_h5_get_attr_str(h, "/", "tokenizer", &v) != ML_OK) ml_error_clear();
    ML_ASSERT_OK(ml_h5_close(&h));
    return v;
}

static void test_tokenizer_carried(void **state) {
    (void)state;
    setup_models();
    char t1[1200], t2[1200], t3[1200], a[1200], b[1200], c[1200], cfg[4096], out[1200];
    snprintf(t1, sizeof t1, "%s/tok1.json", dir);
    snprintf(t2, sizeof t2, "%s/tok2.json", dir);
    snprintf(t3, sizeof t3, "%s/tok3.json", dir);
    write_text(t1, "{\"vocab\": 1}");
    write_text(t2, "{\"vocab\": 1}"); /* same bytes as t1 */
    write_text(t3, "{\"vocab\": 2}");
    snprintf(a, sizeof a, "%s/tok_a.h5", dir);
    snprintf(b, sizeof b, "%s/tok_b.h5", dir);
    snprintf(c, sizeof c, "%s/tok_c.h5", dir);
    make_ckpt(a, 1, 0.0, &(ckpt_opts){.tokenizer = t1});
    make_ckpt(b, 2, 0.05, &(ckpt_opts){.tokenizer = t2});
    make_ckpt(c, 3, 0.05, &(ckpt_opts){.tokenizer = t3});
    const char *fmt = "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\n"
                      "parameters: {t: 0.5}\n%s";
    char rpath[1200];
    snprintf(rpath, sizeof rpath, "%s/tok.yaml", dir);
    snprintf(out, sizeof out, "%s/tok_out.h5", dir);
    snprintf(cfg, sizeof cfg, fmt, a, a, b, "");
    write_text(rpath, cfg);
    ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, rpath, out));
    char *v = out_tokenizer(out);
    assert_non_null(v);
    assert_string_equal(v, t1);
    ml_free(v);
    snprintf(cfg, sizeof cfg, fmt, a, a, c, "");
    expect_fail(cfg, "tok_bad.h5", "were trained with different tokenizers (tokenizer '");
    snprintf(cfg, sizeof cfg, fmt, a, a, c, "tokenizer_source: union\n");
    expect_fail(cfg, "tok_bad.h5", "tokenizer_source: union is not supported");
    char pick[1300];
    snprintf(pick, sizeof pick, "tokenizer_source: %s\n", c);
    snprintf(cfg, sizeof cfg, fmt, a, a, c, pick);
    write_text(rpath, cfg);
    ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, rpath, out));
    v = out_tokenizer(out);
    assert_string_equal(v, t3);
    ml_free(v);
    snprintf(cfg, sizeof cfg, fmt, a, a, c, "tokenizer_source: base\n");
    write_text(rpath, cfg);
    ML_ASSERT_OK(run_merge(MPI_COMM_WORLD, rpath, out));
    v = out_tokenizer(out);
    assert_string_equal(v, t1);
    ml_free(v);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slerp_model),
        cmocka_unit_test(test_ties_model),
        cmocka_unit_test(test_rank_independence),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_tokenizer_carried),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_cleanup),
    };
    return ml_test_run(argc, argv, "merge_cmd", tests, sizeof tests / sizeof tests[0]);
}
