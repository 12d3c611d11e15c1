/* Data parallelism: the shuffled stream gives every global batch the same
 * rows in the same order for any rank count, every epoch is a permutation of
 * the rows, and training (with resampling and AuxK events) ends with the same
 * parameters on 1, 2 and 4 ranks up to float summation order. Each run
 * compares the world communicator against a single-process run on
 * MPI_COMM_SELF inside the same test. */
#include <math.h>

#include "ml_test.h"
#include "mergelens/sae.h"

static void test_stream_union(void **state) {
    (void)state;
    const int64_t N = 1000;
    const int d = 3, B = 48;
    float *x = malloc(sizeof(float) * N * d);
    for (int64_t i = 0; i < N; i++) {
        x[i * d] = (float)i;
        x[i * d + 1] = (float)(2 * i);
        x[i * d + 2] = (float)-i;
    }
    ml_row_memory mem;
    ml_row_memory_init(&mem, x, N, d, NULL, NULL, NULL);
    int P;
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    int L = B / P;
    ml_sae_stream *sw = NULL, *ss = NULL;
    ML_ASSERT_OK(ml_sae_stream_create(MPI_COMM_WORLD, &mem.src, B, 64, 3, 5, 2, &sw));
    ML_ASSERT_OK(ml_sae_stream_create(MPI_COMM_SELF, &mem.src, B, 64, 3, 5, 2, &ss));
    assert_int_equal(ml_sae_stream_local_batch(sw), L);
    float *all = malloc(sizeof(float) * B * d);
    int *seen = calloc((size_t)N, sizeof(int));
    int64_t pos = 0;
    for (int s = 0; s < 64; s++) { /* about 3 epochs */
        const float *rw, *rs, *pk;
        if (s == 10) { /* peek returns what next then returns */
            ML_ASSERT_OK(ml_sae_stream_peek(sw, 2, &pk));
            float *copy = malloc(sizeof(float) * 2 * L * d);
            memcpy(copy, pk, sizeof(float) * 2 * L * d);
            const float *r1, *r2;
            int64_t p1, p2;
            ML_ASSERT_OK(ml_sae_stream_next(sw, &r1, &p1));
            assert_memory_equal(copy, r1, sizeof(float) * L * d);
            ML_ASSERT_OK(ml_sae_stream_next(sw, &r2, &p2));
            assert_memory_equal(copy + L * d, r2, sizeof(float) * L * d);
            assert_true(p2 == p1 + B);
            free(copy);
            for (int t = 0; t < 2; t++) {
                ML_ASSERT_OK(ml_sae_stream_next(ss, &rs, NULL));
                for (int b = 0; b < B; b++)
                    if (pos + t * B + b < N) seen[(int64_t)rs[b * d]]++;
            }
            s++;
            pos += 2 * B;
            continue;
        }
        int64_t p;
        ML_ASSERT_OK(ml_sae_stream_next(sw, &rw, &p));
        assert_true(p == pos);
        for (int b = 0; b < L; b++) { /* rows arrive intact */
            assert_true(rw[b * d + 1] == 2 * rw[b * d]);
            assert_true(rw[b * d + 2] == -rw[b * d]);
        }
        MPI_Allgather(rw, L * d, MPI_FLOAT, all, L * d, MPI_FLOAT, MPI_COMM_WORLD);
        ML_ASSERT_OK(ml_sae_stream_next(ss, &rs, NULL));
        assert_memory_equal(all, rs, sizeof(float) * B * d);
        for (int b = 0; b < B; b++)
            if (pos + b < N) seen[(int64_t)rs[b * d]]++;
        pos += B;
    }
    for (int64_t i = 0; i < N; i++) assert_int_equal(seen[i], 1); /* the first epoch is a permutation */
    ML_ASSERT_FAILS(ml_sae_stream_peek(sw, 3, (const float **)&all), ML_ERR_ARG, "exceeds the 2 reserved");
    ml_sae_stream_destroy(&sw);
    ml_sae_stream_destroy(&ss);
    ml_sae_stream *bad = NULL;
    ML_ASSERT_FAILS(ml_sae_stream_create(MPI_COMM_SELF, &mem.src, 0, 64, 3, 5, 2, &bad), ML_ERR_ARG,
                    "positive multiple");
    free(all);
    free(seen);
    free(x);
}

static void test_median_ranks(void **state) {
    (void)state;
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    const int n = 400, d = 7;
    float *x = malloc(sizeof(float) * n * d);
    ml_rng r;
    ml_rng_seed(&r, 8, 0);
    for (int i = 0; i < n * d; i++) x[i] = ml_rng_normal(&r) * (1 + i % 3);
    float mw[7], ms[7];
    int lo = n * rank / P, hi = n * (rank + 1) / P;
    ML_ASSERT_OK(ml_geometric_median(MPI_COMM_WORLD, x + lo * d, hi - lo, d, 200, 1e-9, mw, NULL));
    ML_ASSERT_OK(ml_geometric_median(MPI_COMM_SELF, x, n, d, 200, 1e-9, ms, NULL));
    for (int i = 0; i < d; i++) ML_ASSERT_CLOSE(mw[i], ms[i], 1e-5);
    free(x);
}

/* synthetic sparse data: 48 directions in 16 dims */
static float *make_data(int64_t n, int d) {
    ml_rng r;
    ml_rng_seed(&r, 99, 0);
    int F = 48;
    float *dict = malloc(sizeof(float) * F * d), *x = calloc((size_t)n * d, sizeof(float));
    for (int i = 0; i < F * d; i++) dict[i] = ml_rng_normal(&r) / sqrtf((float)d);
    for (int64_t b = 0; b < n; b++)
        for (int i = 0; i < F; i++)
            if (ml_rng_uniform(&r) < 0.06) {
                float c = (float)(0.5 + ml_rng_uniform(&r));
                for (int k = 0; k < d; k++) x[b * d + k] += c * dict[i * d + k];
            }
    free(dict);
    return x;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void test_train_ranks(void **state) {
    (void)state;
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    const int64_t N = 6000;
    const int d = 16;
    float *x = make_data(N, d);
    ml_row_memory mem;
    ml_row_memory_init(&mem, x, N, d, NULL, NULL, NULL);
    for (int a = 0; a < 3; a++) {
        ml_sae_train_config c;
        ml_sae_train_config_default(&c);
        c.arch = (ml_sae_arch)a;
        c.d_sae = 96;
        c.n_grid = 2; /* two SAEs in one pass */
        c.l1[0] = 0.05;
        c.l1[1] = 1.0;
        c.k[0] = 3;
        c.k[1] = 6;
        c.k_aux = 8;
        c.lr = 1e-2;
        c.batch = 64;
        c.tokens = 100 * 64; /* long runs can drift further: a pre-activation at ~0 flips (see docs) */
        c.block_rows = 500;
        c.buffer_blocks = 3;
        c.median_rows = 256;
        c.dead_window = 640; /* AuxK has dead latents to work on */
        c.resample_every = 10;
        c.resample_rows = 512;
        c.resample_stop = 1.0;
        c.log_every = 40;
        c.quiet = 1;
        ml_sae_run *rw = NULL, *rs = NULL;
        ML_ASSERT_OK(ml_sae_train(MPI_COMM_WORLD, &c, &mem.src, &rw));
        ML_ASSERT_OK(ml_sae_train(MPI_COMM_SELF, &c, &mem.src, &rs));
        for (int g = 0; g < 2; g++) {
            const ml_sae *sw = rw->item[g].sae, *ss = rs->item[g].sae;
            size_t off[4], len[4] = {(size_t)96 * d, 96, (size_t)96 * d, (size_t)d};
            ml_sae_param_offsets(sw, &off[0], &off[1], &off[2], &off[3]);
            const char *names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
            double worst = 0;
            for (int t = 0; t < 4; t++) {
                double rd = rel_diff(sw->params + off[t], ss->params + off[t], len[t]);
                if (rd > worst) worst = rd;
                if (rd > 1e-5)
                    fail_msg("%s SAE %d: %s differs between %d ranks and 1 (relative %.3g)", ml_sae_arch_name(c.arch), g,
                             names[t], P, rd);
            }
            const ml_sae_history *hw = &rw->item[g].hist, *hs = &rs->item[g].hist;
            assert_true(hw->n == hs->n);
            for (int64_t i = 0; i < hw->n; i++) {
                ML_ASSERT_CLOSE(hw->dead_fraction[i], hs->dead_fraction[i], 0);
                ML_ASSERT_CLOSE(hw->l0[i], hs->l0[i], 1e-5);
                ML_ASSERT_CLOSE(hw->fvu[i], hs->fvu[i], 1e-4);
            }
            assert_true(rw->item[g].resampled_total == rs->item[g].resampled_total);
            if (rank == 0)
                printf("# %s SAE %d on %d ranks: max relative parameter difference %.2g; resampled %lld, final dead "
                       "%.1f%%, aux %.3g\n",
                       ml_sae_arch_name(c.arch), g, P, worst, (long long)rw->item[g].resampled_total,
                       100 * hw->dead_fraction[hw->n - 1], hw->loss_aux[hw->n - 1]);
        }
        if (c.arch == ML_SAE_STANDARD) assert_true(rw->item[0].resampled_total + rw->item[1].resampled_total > 0);
        if (c.arch == ML_SAE_TOPK) {
            double aux = 0;
            for (int64_t i = 0; i < rw->item[0].hist.n; i++) aux += rw->item[0].hist.loss_aux[i];
            assert_true(aux > 0); /* AuxK was active */
        }
        ml_sae_run_destroy(&rw);
        ml_sae_run_destroy(&rs);
    }
    free(x);
}

/* A NaN row reaching one rank stops every rank with the message, no hang. */
static void test_nan_rows(void **state) {
    (void)state;
    const int64_t N = 2000;
    const int d = 8;
    float *x = make_data(N, d);
    for (int k = 0; k < d; k++) x[1500 * d + k] = NAN; /* outside the geometric-median sample */
    ml_row_memory mem;
    ml_row_memory_init(&mem, x, N, d, NULL, NULL, NULL);
    ml_sae_train_config c;
    ml_sae_train_config_default(&c);
    c.d_sae = 16;
    c.batch = 64;
    c.block_rows = 2000; /* one block: the stream is a permutation of all rows from step 1 */
    c.median_rows = 64;
    c.tokens = 2 * N;
    c.quiet = 1;
    ml_sae_run *run = NULL;
    ml_error_clear();
    int rc = ml_sae_train(MPI_COMM_WORLD, &c, &mem.src, &run);
    assert_true(rc == ML_ERR_NUMERIC || rc == ML_ERR_REMOTE);
    if (!strstr(ml_error_message(), "not finite")) fail_msg("message: %s", ml_error_message());
    assert_null(run);
    free(x);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_union),
        cmocka_unit_test(test_median_ranks),
        cmocka_unit_test(test_train_ranks),
        cmocka_unit_test(test_nan_rows),
    };
    return ml_test_run(argc, argv, "sae_ranks", tests, sizeof tests / sizeof tests[0]);
}
