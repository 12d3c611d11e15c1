/* Independent SAE seeds, replicas and held-out rows (issue 18, items 1, 2, 5):
 *  - ml_seed_derive against values computed independently in Python (FNV-1a-64 of the identity, two
 *    SplitMix64 steps, top bit cleared; docs/modules/sae.md "Seeds"), and distinct over model, hook,
 *    architecture, grid value, replica and job seed;
 *  - two replicas start from different dictionaries (matched decoder rows at the cosine of random
 *    directions) while the same seed reproduces bitwise;
 *  - `sae --l1 a,b --replicas 2` (4 SAEs in one pass) writes the documented files and attributes, and each
 *    SAE equals bitwise the same SAE trained alone through ml_sae_train with its recorded seeds;
 *  - the trainer never reads the held-out rows (they are NaN in one file: training succeeds, and fails
 *    when they are not held out), and the metrics are computed on them (naive recomputation). */
#include <math.h>

#include "sae_fixture.h"

#define N 4096
#define D 16
#define T 64 /* the capture's context attribute: held-out rows are whole windows */
#define N_TRAIN 3072 /* N - max(10%, min(2048, N/4)) = 4096 - 1024, a multiple of T */
#define HOOK "blocks.0.mlp.hook_post"
#define ID_BASE "model=models/base.h5;hook=" HOOK ";arch=standard"

static float g_x[N * D];

static void make_rows(void) {
    ml_rng r;
    ml_rng_seed(&r, 77, 0);
    for (int i = 0; i < N * D; i++) g_x[i] = 0.0f;
    for (int i = 0; i < N; i++)
        for (int t = 0; t < 3; t++) g_x[i * D + (int)ml_rng_below(&r, D)] += (float)(0.5 + ml_rng_uniform(&r));
}

/* an activations file; rows [nan_from, N) NaN (nan_from = N: none) */
static void write_acts(const char *path, int nan_from) {
    float *x = malloc(sizeof(float) * N * D);
    memcpy(x, g_x, sizeof(float) * N * D);
    for (int i = nan_from * D; i < N * D; i++) x[i] = NAN;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.activations", 1, &h));
    hsize_t dims[2] = {N, D};
    ml_h5_layout lay = {.chunk_rows = 512};
    ML_ASSERT_OK(ml_h5_create_dataset(h, "/hooks/" HOOK "/acts", ML_F32, 2, dims, &lay));
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    ML_ASSERT_OK(ml_h5_write_rows(h, "/hooks/" HOOK "/acts", ML_F32, 0, rank == 0 ? N : 0, x));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "model", "models/base.h5"));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "context", T));
    ML_ASSERT_OK(ml_h5_close(&h));
    free(x);
}

#define SAE_OPTS                                                                                                 \
    "--d_sae", "32", "--lr", "3e-3", "--batch", "128", "--tokens", "2560", "--block_rows", "512",               \
        "--buffer_blocks", "4", "--median_rows", "256", "--resample_every", "8", "--dead_window", "512",        \
        "--log_every", "5", "--eval_rows", "3000", "--top_examples", "4", "--quantile_examples", "3"

static int run_sae(const char *const *args) {
    int n = 0;
    while (args[n]) n++;
    return ml_cmd_sae(MPI_COMM_WORLD, n, (char **)args);
}

static void test_seed_derive(void **state) {
    (void)state;
    /* expected values computed independently with the Python lines in docs/modules/sae.md ("Seeds") */
    static const struct {
        uint64_t job;
        const char *id;
        uint64_t want;
    } cases[] = {
        {42, "", 8214586873965451841ull},
        {42, "a", 3293449990704502826ull},
        {0, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=0", 3255947654894875168ull},
        {42, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=0", 9033583092402812138ull},
        {43, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=0", 870728337142600760ull},
        {42, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=1", 2718526937968736294ull},
        {42, "model=models/lua.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=0", 2152545064141276539ull},
        {42, "model=models/base.h5;hook=blocks.1.mlp.hook_post;arch=topk;k=32;replica=0", 1392210328375564393ull},
        {42, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=standard;l1=0.0003;replica=0",
         1244714166637157322ull},
        {42, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=64;replica=0", 6726045171775528914ull},
        {42, "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;rows", 6784010338632607838ull},
    };
    const size_t n = sizeof cases / sizeof *cases;
    for (size_t i = 0; i < n; i++) {
        uint64_t s = ml_seed_derive(cases[i].job, cases[i].id);
        if (s != cases[i].want)
            fail_msg("ml_seed_derive(%llu, \"%s\") = %llu, want %llu", (unsigned long long)cases[i].job, cases[i].id,
                     (unsigned long long)s, (unsigned long long)cases[i].want);
        assert_true(s >> 63 == 0);                                       /* a non-negative int64 */
        assert_true(ml_seed_derive(cases[i].job, cases[i].id) == s);     /* stable */
        for (size_t j = 0; j < i; j++) assert_true(cases[j].want != s); /* model, hook, arch, k, replica, job */
    }
    assert_true(ml_seed_derive(42, NULL) == ml_seed_derive(42, ""));
}

/* E|cos| of two independent uniform directions in d dimensions: Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) */
static double random_abs_cos(int d) { return exp(lgamma(d / 2.0) - lgamma((d + 1) / 2.0)) / sqrt(M_PI); }

static double mean_matched_abs_cos(const ml_sae *a, const ml_sae *b) {
    double s = 0;
    for (int j = 0; j < a->d_sae; j++) {
        double ab = 0, aa = 0, bb = 0;
        for (int k = 0; k < a->d_in; k++) {
            double u = a->W_dec[(size_t)j * a->d_in + k], v = b->W_dec[(size_t)j * a->d_in + k];
            ab += u * v;
            aa += u * u;
            bb += v * v;
        }
        s += fabs(ab) / sqrt(aa * bb);
    }
    return s / a->d_sae;
}

static void test_init(void **state) {
    (void)state;
    /* the seeds of replicas 0 and 1 of one configuration */
    uint64_t s0 = ml_seed_derive(42, ID_BASE ";l1=0.05;replica=0"), s1 = ml_seed_derive(42, ID_BASE ";l1=0.05;replica=1");
    ml_sae *a = NULL, *b = NULL, *c = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 64, 512, 0, &a));
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 64, 512, 0, &b));
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, 64, 512, 0, &c));
    ml_sae_init(a, s0, 0.1f);
    ml_sae_init(b, s1, 0.1f);
    ml_sae_init(c, s0, 0.1f);
    assert_memory_equal(a->params, c->params, sizeof(float) * a->n_params); /* same seed: bitwise */
    double m = mean_matched_abs_cos(a, b), want = random_abs_cos(64);
    /* 512 rows: the mean's standard deviation is about sqrt(1/64 - want^2) / sqrt(512) = 0.0033 */
    printf("  replicas at init: mean |cos| of matched decoder rows %.4f (random directions %.4f; shared seed 1)\n", m,
           want);
    assert_true(fabs(m - want) < 0.02);
    ml_sae_destroy(&a);
    ml_sae_destroy(&b);
    ml_sae_destroy(&c);
}

static ml_sae_run *train_alone(MPI_Comm comm, int64_t data_seed, int64_t seed, double l1) {
    ml_row_memory mem;
    ml_row_memory_init(&mem, g_x, N_TRAIN, D, NULL, NULL, NULL);
    ml_sae_train_config c;
    sae_small_config(&c);
    c.n_grid = 1;
    c.l1[0] = l1;
    c.seed = (uint64_t)data_seed;
    c.per_sae_seeds = 1;
    c.sae_seed[0] = (uint64_t)seed;
    ml_sae_run *run = NULL;
    ML_ASSERT_OK(ml_sae_train(comm, &c, &mem.src, &run));
    return run;
}

static void test_replicas(void **state) {
    (void)state;
    long live = ml_alloc_live();
    make_rows();
    const char *dir = ml_test_dir("sae_replicas");
    char acts[1100], out[1100], again[1100];
    snprintf(acts, sizeof acts, "%s/acts.h5", dir);
    snprintf(out, sizeof out, "%s/saes/x.h5", dir);
    snprintf(again, sizeof again, "%s/saes/again.h5", dir);
    write_acts(acts, N);
    const char *cmd[] = {"sae", acts, "--out", out, "--l1", "0.05,0.2", "--replicas", "2", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(cmd));
    const char *cmd2[] = {"sae", acts, "--out", again, "--l1", "0.05,0.2", "--replicas", "2", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(cmd2));
    assert_int_equal(ml_alloc_live(), live);

    /* the naming contract */
    char p[4][1300], q[1300], buf[1300];
    const char *l1s[2] = {"0.05", "0.2"};
    for (int g = 0; g < 2; g++) {
        snprintf(p[2 * g], sizeof p[0], "%s/saes/x-l1_%s.h5", dir, l1s[g]);
        snprintf(p[2 * g + 1], sizeof p[0], "%s/saes/x-l1_%s-rep1.h5", dir, l1s[g]);
        ML_ASSERT_OK(ml_sae_replica_path(p[2 * g], 1, buf, sizeof buf));
        assert_string_equal(buf, p[2 * g + 1]);
        ML_ASSERT_OK(ml_sae_replica_path(p[2 * g], 0, buf, sizeof buf));
        assert_string_equal(buf, p[2 * g]);
    }
    ML_ASSERT_OK(ml_sae_replica_path("saes/x.h5", 3, buf, sizeof buf));
    assert_string_equal(buf, "saes/x-rep3.h5");
    ML_ASSERT_OK(ml_sae_replica_path("saes/x", 2, buf, sizeof buf));
    assert_string_equal(buf, "saes/x-rep2");
    ML_ASSERT_FAILS(ml_sae_replica_path("saes/x.h5", 1, buf, 8), ML_ERR_ARG, "too long");

    uint64_t seeds[4];
    const uint64_t data_seed = ml_seed_derive(42, ID_BASE ";rows");
    ml_sae *sae[4] = {0};
    for (int i = 0; i < 4; i++) {
        const int g = i / 2, r = i % 2;
        assert_int_equal(sae_attr_int(p[i], "/", "replica"), r);
        assert_int_equal(sae_attr_int(p[i], "/", "replicas"), 2);
        assert_int_equal(sae_attr_int(p[i], "/", "job_seed"), 42);
        assert_true((uint64_t)sae_attr_int(p[i], "/", "data_seed") == data_seed);
        char want_id[256];
        snprintf(want_id, sizeof want_id, ID_BASE ";l1=%s;replica=%d", l1s[g], r);
        char *id = sae_attr_str(p[i], "seed_identity");
        assert_string_equal(id, want_id);
        ml_free(id);
        seeds[i] = (uint64_t)sae_attr_int(p[i], "/", "seed");
        assert_true(seeds[i] == ml_seed_derive(42, want_id));
        for (int j = 0; j < i; j++) assert_true(seeds[j] != seeds[i]);
        ML_ASSERT_OK(ml_sae_load(p[i], &sae[i]));
        /* the same command again: bitwise the same SAE */
        snprintf(q, sizeof q, "%s/saes/again-l1_%s%s.h5", dir, l1s[g], r ? "-rep1" : "");
        ml_sae *b = NULL;
        ML_ASSERT_OK(ml_sae_load(q, &b));
        assert_memory_equal(sae[i]->params, b->params, sizeof(float) * b->n_params);
        ml_sae_destroy(&b);
        /* one pass over the data for 4 SAEs = each SAE trained alone with its recorded seeds: bitwise */
        ml_sae_run *alone =
            train_alone(MPI_COMM_WORLD, sae_attr_int(p[i], "/", "data_seed"), (int64_t)seeds[i], g ? 0.2 : 0.05);
        if (memcmp(alone->item[0].sae->params, sae[i]->params, sizeof(float) * sae[i]->n_params))
            fail_msg("%s differs from the same SAE trained alone", p[i]);
        ml_sae_run_destroy(&alone);
        /* 1 rank against this run's ranks: float summation order only */
        int rank, P;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &P);
        if (P > 1 && rank == 0) {
            alone = train_alone(MPI_COMM_SELF, sae_attr_int(p[i], "/", "data_seed"), (int64_t)seeds[i], g ? 0.2 : 0.05);
            double md = 0, mb = 1e-30;
            for (size_t k = 0; k < sae[i]->n_params; k++) {
                double u = alone->item[0].sae->params[k], v = sae[i]->params[k];
                md = fmax(md, fabs(u - v));
                mb = fmax(mb, fabs(v));
            }
            printf("  %s: 1 rank vs %d: max relative difference %.3g\n", p[i] + strlen(dir) + 1, P, md / mb);
            if (md / mb > 1e-5) fail_msg("%s: 1 rank vs %d ranks differ by %.3g relative", p[i], P, md / mb);
            ml_sae_run_destroy(&alone);
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
    /* the two replicas of a configuration ended apart (they started apart) */
    for (int g = 0; g < 2; g++) {
        double m = mean_matched_abs_cos(sae[2 * g], sae[2 * g + 1]);
        printf("  trained replicas l1=%s: mean |cos| of matched decoder rows %.3f\n", l1s[g], m);
        assert_true(m < 0.9);
    }
    for (int i = 0; i < 4; i++) ml_sae_destroy(&sae[i]);

    /* --seed_mode exact: --seed for every SAE (a shared initialisation), no identity */
    char ex[1100], ex0[1300];
    snprintf(ex, sizeof ex, "%s/saes/exact.h5", dir);
    snprintf(ex0, sizeof ex0, "%s/saes/exact-l1_0.05.h5", dir);
    const char *exact[] = {"sae", acts, "--out", ex, "--l1", "0.05,0.2", "--seed_mode", "exact", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(exact));
    assert_int_equal(sae_attr_int(ex0, "/", "seed"), 42);
    assert_int_equal(sae_attr_int(ex0, "/", "data_seed"), 42);
    char *id = sae_attr_str(ex0, "seed_identity");
    assert_string_equal(id, "");
    ml_free(id);
    const char *bad[] = {"sae", acts, "--out", ex, "--seed_mode", "exact", "--replicas", "2", SAE_OPTS, NULL};
    ML_ASSERT_FAILS(run_sae(bad), ML_ERR_ARG, "--seed_mode exact gives all 2 replicas the same seed");
    const char *many[] = {"sae", acts, "--out", ex, "--l1", "1,2,3,4,5,6,7,8,9", "--replicas", "4", SAE_OPTS, NULL};
    ML_ASSERT_FAILS(run_sae(many), ML_ERR_ARG, "9 grid values x 4 replicas = 36 SAEs");
    const char *dup[] = {"sae", acts, "--out", ex, "--l1", "0.05,0.05", SAE_OPTS, NULL};
    ML_ASSERT_FAILS(run_sae(dup), ML_ERR_ARG, "would be written to");
    assert_int_equal(ml_alloc_live(), live);
}

/* naive MSE of sae over rows [r0, r1) of g_x (double sums) */
static double naive_mse(const ml_sae *sae, int r0, int r1) {
    float *f = malloc(sizeof(float) * sae->d_sae), *xh = malloc(sizeof(float) * D);
    double se = 0;
    for (int i = r0; i < r1; i++) {
        ML_ASSERT_OK(ml_sae_encode(sae, g_x + (size_t)i * D, 1, f));
        ML_ASSERT_OK(ml_sae_decode(sae, f, 1, xh));
        for (int k = 0; k < D; k++) {
            double d = (double)xh[k] - g_x[(size_t)i * D + k];
            se += d * d;
        }
    }
    free(f);
    free(xh);
    return se / ((double)(r1 - r0) * D);
}

static void test_holdout(void **state) {
    (void)state;
    long live = ml_alloc_live();
    make_rows();
    const char *dir = ml_test_dir("sae_holdout");
    char acts[1100], nan_acts[1100], out[1100];
    snprintf(acts, sizeof acts, "%s/acts.h5", dir);
    snprintf(nan_acts, sizeof nan_acts, "%s/nan.h5", dir);
    snprintf(out, sizeof out, "%s/saes/h.h5", dir);
    write_acts(acts, N);
    write_acts(nan_acts, N_TRAIN); /* the held-out rows are NaN */

    /* 1. the trainer reads none of the held-out rows (the row source fails on any non-finite value it reads) */
    const char *train_only[] = {"sae", nan_acts, "--out", out, "--l1", "0.05", "--eval", "false", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(train_only));
    assert_int_equal(sae_attr_int(out, "/", "train_row_end"), N_TRAIN);
    assert_int_equal(sae_attr_int(out, "/", "heldout_row_start"), N_TRAIN);
    /* control: the same rows not held out are read, and fail */
    const char *no_hold[] = {"sae", nan_acts, "--out", out, "--l1", "0.05", "--eval", "false", "--holdout_rows", "0",
                             "--resume", "false", SAE_OPTS, NULL};
    ML_ASSERT_FAILS_ALL(run_sae(no_hold), ML_ERR_NUMERIC, "holds a non-finite value");
    /* ... and the metrics do read the held-out rows */
    const char *with_eval[] = {"sae", nan_acts, "--out", out, "--l1", "0.05", "--resume", "false", SAE_OPTS, NULL};
    ML_ASSERT_FAILS_ALL(run_sae(with_eval), ML_ERR_NUMERIC, "holds a non-finite value");

    /* 2. the metrics are computed on the held-out rows [N_TRAIN, N) */
    const char *full[] = {"sae", acts, "--out", out, "--l1", "0.05", "--resume", "false", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(full));
    const struct {
        const char *obj, *name;
        int64_t want;
    } rows[] = {{"/", "train_row_start", 0},         {"/", "train_row_end", N_TRAIN},
                {"/", "heldout_row_start", N_TRAIN}, {"/", "heldout_row_end", N},
                {"/metrics/eval", "row0", N_TRAIN},  {"/metrics/eval", "n_rows", N - N_TRAIN},
                {"/features", "row0", N_TRAIN},      {"/features", "n_rows", N - N_TRAIN}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        int64_t v = sae_attr_int(out, rows[i].obj, rows[i].name);
        if (v != rows[i].want) fail_msg("%s%s = %lld, want %lld", rows[i].obj, rows[i].name, (long long)v, (long long)rows[i].want);
    }
    ml_sae *s = NULL;
    ML_ASSERT_OK(ml_sae_load(out, &s));
    ml_h5 *h = NULL;
    double mse = 0;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out, "mergelens.sae", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/metrics/eval", "mse", &mse));
    ML_ASSERT_OK(ml_h5_close(&h));
    double held = naive_mse(s, N_TRAIN, N), trained = naive_mse(s, 0, N_TRAIN);
    printf("  eval mse %.6g; naive on the held-out rows %.6g, on the training rows %.6g\n", mse, held, trained);
    ML_ASSERT_CLOSE(mse, held, 1e-5 * held);
    ml_sae_destroy(&s);
    char *desc = sae_attr_str(out, "heldout");
    if (!strstr(desc, "rows [3072, 4096) of") || !strstr(desc, "not trained on")) fail_msg("heldout: %s", desc);
    ml_free(desc);

    /* 3. --holdout_rows: the split point is rounded down to whole windows of the context (64) */
    const char *h1000[] = {"sae", acts, "--out", out, "--l1", "0.05", "--eval", "false", "--holdout_rows", "1000",
                           "--resume", "false", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(h1000));
    assert_int_equal(sae_attr_int(out, "/", "train_row_end"), 3072); /* 4096 - 1000 = 3096 -> 48 windows */
    const char *h192[] = {"sae", acts, "--out", out, "--l1", "0.05", "--eval", "false", "--holdout_rows", "192",
                          "--resume", "false", SAE_OPTS, NULL};
    ML_ASSERT_OK(run_sae(h192));
    assert_int_equal(sae_attr_int(out, "/", "train_row_end"), 3904);
    const char *all[] = {"sae", acts, "--out", out, "--l1", "0.05", "--holdout_rows", "4096", SAE_OPTS, NULL};
    ML_ASSERT_FAILS(run_sae(all), ML_ERR_ARG, "--holdout_rows 4096 leaves none of the source's 4096 rows");
    assert_int_equal(ml_alloc_live(), live);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_seed_derive), cmocka_unit_test(test_init),
                                       cmocka_unit_test(test_replicas), cmocka_unit_test(test_holdout)};
    return ml_test_run(argc, argv, "sae_replicas", tests, sizeof tests / sizeof tests[0]);
}
