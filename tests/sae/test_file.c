/* SAE files and the `mergelens sae` command: write/load round trip (bitwise,
 * W_enc transposed to SAELens orientation), the command on an activations
 * file (float32 and float16) gives the same SAEs as training on the same rows
 * in memory, the file carries the documented datasets and attributes, and bad
 * inputs fail with messages that name the problem. */
#include <math.h>
#include <sys/stat.h>

#include "sae_fixture.h"
#include "mergelens/interop.h"

#define N 4096
#define D 16
#define HOOK "blocks.0.mlp.hook_post"

static float g_x[N * D];
static int32_t g_tok[N], g_pos[N];
static int64_t g_doc[N];

static void make_rows(void) {
    ml_rng r;
    ml_rng_seed(&r, 2024, 0);
    for (int i = 0; i < N; i++) {
        g_doc[i] = i / 64;
        g_pos[i] = i % 64;
        g_tok[i] = (int32_t)ml_rng_below(&r, 1000);
        for (int k = 0; k < D; k++) g_x[i * D + k] = 0.0f;
        for (int t = 0; t < 3; t++) g_x[i * D + (int)ml_rng_below(&r, D)] += (float)(0.5 + ml_rng_uniform(&r));
    }
}

/* an activations file as the capture command writes it */
static void write_acts(const char *path, int f16) {
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.activations", 1, &h));
    hsize_t dims[2] = {N, D}, n1[1] = {N};
    ml_h5_layout lay = {.chunk_rows = 512};
    ML_ASSERT_OK(ml_h5_create_dataset(h, "/hooks/" HOOK "/acts", f16 ? ML_F16 : ML_F32, 2, dims, &lay));
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    hsize_t cnt = rank == 0 ? N : 0;
    if (f16) {
        uint16_t *hb = malloc(sizeof(uint16_t) * N * D);
        ml_f32_to_f16_array(hb, g_x, (size_t)N * D);
        ML_ASSERT_OK(ml_h5_write_rows(h, "/hooks/" HOOK "/acts", ML_F16, 0, cnt, hb));
        free(hb);
    } else {
        ML_ASSERT_OK(ml_h5_write_rows(h, "/hooks/" HOOK "/acts", ML_F32, 0, cnt, g_x));
    }
    ML_ASSERT_OK(ml_h5_write_tensor(h, "/tokens", ML_I32, 1, n1, g_tok));
    ML_ASSERT_OK(ml_h5_write_tensor(h, "/positions", ML_I32, 1, n1, g_pos));
    ML_ASSERT_OK(ml_h5_write_tensor(h, "/doc_ids", ML_I64, 1, n1, g_doc));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "model", "models/base.h5"));
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void assert_same_sae(const ml_sae *a, const ml_sae *b) {
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->d_in, b->d_in);
    assert_int_equal(a->d_sae, b->d_sae);
    assert_int_equal(a->k, b->k);
    assert_int_equal(a->apply_b_dec_to_input, b->apply_b_dec_to_input);
    assert_memory_equal(a->params, b->params, sizeof(float) * a->n_params);
}

static void test_roundtrip(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    const char *dir = ml_test_dir("sae_roundtrip");
    char path[1024];
    snprintf(path, sizeof path, "%s/t.h5", dir);
    for (int a = 0; a < 3; a++) {
        ml_sae *s = NULL, *l = NULL;
        ML_ASSERT_OK(ml_sae_create((ml_sae_arch)a, 5, 7, 2, &s));
        for (size_t i = 0; i < s->n_params; i++) s->params[i] = (float)i * 0.25f - 3.0f;
        s->l1_coefficient = 3e-4;
        snprintf(s->hook_name, sizeof s->hook_name, "%s", HOOK);
        ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, path, s, NULL, NULL, "{\"x\": 1}"));
        ML_ASSERT_OK(ml_sae_load(path, &l));
        assert_same_sae(s, l);
        assert_string_equal(l->hook_name, HOOK);
        ML_ASSERT_CLOSE(l->l1_coefficient, 3e-4, 1e-12);
        /* the file holds W_enc in SAELens orientation (d_in, d_sae) */
        ml_h5 *h = NULL;
        float we[5 * 7];
        hsize_t dims[2] = {5, 7};
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.sae", 1, 1, &h));
        ML_ASSERT_OK(ml_h5_read_tensor(h, "/W_enc", ML_F32, 2, dims, we));
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 7; j++) assert_true(we[i * 7 + j] == s->W_enc_t[j * 5 + i]);
        char *arch = NULL;
        int64_t apply;
        ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "architecture", &arch));
        assert_string_equal(arch, ml_sae_arch_name((ml_sae_arch)a));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "apply_b_dec_to_input", &apply));
        assert_true(apply == (a != ML_SAE_ANTHROPIC));
        ml_free(arch);
        ML_ASSERT_OK(ml_h5_close(&h));
        /* a non-finite value is refused with the tensor's name */
        s->W_dec[3] = NAN;
        ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, path, s, NULL, NULL, NULL));
        ml_sae_destroy(&l);
        ML_ASSERT_FAILS(ml_sae_load(path, &l), ML_ERR_FORMAT, "tensor W_dec holds a non-finite value");
        ml_sae_destroy(&s);
    }
    assert_true(ml_alloc_live() == live0); /* nothing leaked, failure paths included */
}

/* The command's defaults: rows [0, N_TRAIN) train (N - 10%, at least min(2048, N/4) held out; the file has no
 * context attribute, so no rounding to windows), seeds derived from --seed 42 and the documented identities. */
#define N_TRAIN (N - 1024)
#define ID_BASE "model=models/base.h5;hook=" HOOK ";arch=standard"

static ml_sae_run *train_memory(const float *x, int arch, double l1a, double l1b) {
    ml_row_memory mem;
    ml_row_memory_init(&mem, x, N_TRAIN, D, NULL, NULL, NULL);
    ml_sae_train_config c;
    sae_small_config(&c);
    c.arch = (ml_sae_arch)arch;
    c.n_grid = 2;
    c.l1[0] = l1a;
    c.l1[1] = l1b;
    c.k[0] = 3;
    c.k[1] = 5;
    c.seed = ml_seed_derive(42, ID_BASE ";rows");
    c.per_sae_seeds = 1;
    char id[256];
    for (int g = 0; g < 2; g++) {
        snprintf(id, sizeof id, ID_BASE ";l1=%g;replica=0", g ? l1b : l1a);
        c.sae_seed[g] = ml_seed_derive(42, id);
    }
    ml_sae_run *run = NULL;
    ML_ASSERT_OK(ml_sae_train(MPI_COMM_WORLD, &c, &mem.src, &run));
    return run;
}

static int run_cmd(int n, const char **args) {
    return ml_cmd_sae(MPI_COMM_WORLD, n, (char **)args);
}

static void test_command(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    make_rows();
    const char *dir = ml_test_dir("sae_cmd");
    char acts[1024], acts16[1024], out[1024], p1[1024], p2[1024];
    snprintf(acts, sizeof acts, "%s/acts.h5", dir);
    snprintf(acts16, sizeof acts16, "%s/acts16.h5", dir);
    snprintf(out, sizeof out, "%s/saes/base.h5", dir);
    write_acts(acts, 0);
    write_acts(acts16, 1);
    for (int f16 = 0; f16 < 2; f16++) {
        const char *args[] = {"sae", f16 ? acts16 : acts, "--out", out, "--d_sae", "32", "--l1", "0.05,0.2",
                              "--lr", "3e-3", "--batch", "128", "--tokens", "2560", "--block_rows", "512",
                              "--buffer_blocks", "4", "--median_rows", "256", "--resample_every", "8",
                              "--dead_window", "512", "--log_every", "5", "--eval_rows", "3000", "--top_examples", "4",
                              "--quantile_examples", "3", "--ctx_left", "5", "--ctx_right", "2"};
        ML_ASSERT_OK(run_cmd((int)(sizeof args / sizeof args[0]), args));
        /* the same rows in memory give the same SAEs */
        float *x = g_x, *xr = NULL;
        if (f16) {
            uint16_t *hb = malloc(sizeof(uint16_t) * N * D);
            xr = malloc(sizeof(float) * N * D);
            ml_f32_to_f16_array(hb, g_x, (size_t)N * D);
            ml_f16_to_f32_array(xr, hb, (size_t)N * D);
            free(hb);
            x = xr;
        }
        ml_sae_run *ref = train_memory(x, ML_SAE_STANDARD, 0.05, 0.2);
        snprintf(p1, sizeof p1, "%s/saes/base-l1_0.05.h5", dir);
        snprintf(p2, sizeof p2, "%s/saes/base-l1_0.2.h5", dir);
        const char *paths[2] = {p1, p2};
        for (int g = 0; g < 2; g++) {
            ml_sae *l = NULL;
            ML_ASSERT_OK(ml_sae_load(paths[g], &l));
            assert_same_sae(l, ref->item[g].sae);
            assert_string_equal(l->model, "models/base.h5");
            assert_string_equal(l->hook_name, HOOK);
            ml_sae_destroy(&l);
            /* documented datasets and attributes */
            ml_h5 *h = NULL;
            ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, paths[g], "mergelens.sae", 1, 1, &h));
            const char *must[] = {"/metrics/step", "/metrics/fvu", "/metrics/l0", "/metrics/dead_fraction",
                                  "/metrics/density_hist", "/metrics/eval/density_hist", "/features/density",
                                  "/features/top_rows", "/features/top_tokens", "/features/top_window_acts",
                                  "/features/quantile_rows", "/features/quantile_window_acts"};
            for (size_t m = 0; m < sizeof must / sizeof must[0]; m++)
                if (!ml_h5_exists(h, must[m])) fail_msg("%s lacks %s", paths[g], must[m]);
            int rk;
            hsize_t dims[ML_H5_MAX_RANK];
            ML_ASSERT_OK(ml_h5_shape(h, "/features/top_tokens", &rk, dims, NULL));
            assert_int_equal(rk, 3);
            assert_true(dims[0] == 32 && dims[1] == 4 && dims[2] == 8);
            double l1, fvu;
            int64_t steps;
            ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "l1_coefficient", &l1));
            ML_ASSERT_CLOSE(l1, g ? 0.2 : 0.05, 1e-12);
            ML_ASSERT_OK(ml_h5_get_attr_int(h, "/metrics", "steps", &steps));
            assert_true(steps == 20);
            ML_ASSERT_OK(ml_h5_get_attr_double(h, "/metrics/eval", "fvu", &fvu));
            assert_true(fvu > 0 && fvu < 1.5);
            /* held-out rows: the metrics use rows [N_TRAIN, N), which the trainer did not see */
            const struct {
                const char *g, *a;
                int64_t want;
            } rows[] = {{"/", "train_row_start", 0},          {"/", "train_row_end", N_TRAIN},
                        {"/", "heldout_row_start", N_TRAIN},  {"/", "heldout_row_end", N},
                        {"/metrics/eval", "row0", N_TRAIN},   {"/metrics/eval", "n_rows", N - N_TRAIN},
                        {"/features", "row0", N_TRAIN},       {"/", "replica", 0},
                        {"/", "replicas", 1},                 {"/", "job_seed", 42}};
            for (size_t q = 0; q < sizeof rows / sizeof *rows; q++) {
                int64_t v = -7;
                ML_ASSERT_OK(ml_h5_get_attr_int(h, rows[q].g, rows[q].a, &v));
                if (v != rows[q].want) fail_msg("%s %s%s = %lld, want %lld", paths[g], rows[q].g, rows[q].a, (long long)v,
                                                (long long)rows[q].want);
            }
            int64_t seed = 0;
            char *ident = NULL, want_id[256];
            snprintf(want_id, sizeof want_id, ID_BASE ";l1=%g;replica=0", g ? 0.2 : 0.05);
            ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "seed_identity", &ident));
            assert_string_equal(ident, want_id);
            ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "seed", &seed));
            assert_true((uint64_t)seed == ml_seed_derive(42, want_id));
            ml_free(ident);
            char *cfg = NULL;
            ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "config", &cfg));
            assert_non_null(strstr(cfg, "\"batch\""));
            ml_free(cfg);
            ML_ASSERT_OK(ml_h5_close(&h));
        }
        ml_sae_run_destroy(&ref);
        free(xr);
    }
    const char *help[] = {"sae", "--help"};
    ML_ASSERT_OK(run_cmd(2, help));
    /* bad inputs */
    const char *nohook[] = {"sae", acts, "--out", out, "--hook", "blocks.0.hook_resid_pre"};
    ML_ASSERT_FAILS(run_cmd(6, nohook), ML_ERR_NOTFOUND, "no hook 'blocks.0.hook_resid_pre'");
    ML_ASSERT_FAILS(run_cmd(6, nohook), ML_ERR_NOTFOUND, "blocks.0.mlp.hook_post");
    const char *badl1[] = {"sae", acts, "--out", out, "--l1", "3e-4,x"};
    ML_ASSERT_FAILS(run_cmd(6, badl1), ML_ERR_ARG, "--l1 '3e-4,x'");
    const char *noout[] = {"sae", acts};
    ML_ASSERT_FAILS(run_cmd(2, noout), ML_ERR_CONFIG, "out");
    const char *typo[] = {"sae", acts, "--out", out, "--lerning_rate", "1"};
    ML_ASSERT_FAILS(run_cmd(6, typo), ML_ERR_CONFIG, "lerning_rate");
    const char *two[] = {"sae", acts, acts, "--out", out};
    ML_ASSERT_FAILS(run_cmd(5, two), ML_ERR_ARG, "expected one activations file");
    ML_ASSERT_FAILS(ml_sae_load(acts, &(ml_sae *){NULL}), ML_ERR_FORMAT, "mergelens.activations");
    assert_true(ml_alloc_live() == live0);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_roundtrip), cmocka_unit_test(test_command)};
    return ml_test_run(argc, argv, "sae_file", tests, sizeof tests / sizeof tests[0]);
}
