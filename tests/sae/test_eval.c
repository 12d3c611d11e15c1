/* Evaluation against naive loops: metrics, per-latent densities, the top-k
 * examples (exact rows), their token windows (same document, contiguous
 * positions), the quantile samples, and independence of the rank count
 * (world communicator vs MPI_COMM_SELF). */
#include <math.h>

#include "ml_test.h"
#include "mergelens/sae.h"

#define N 3000
#define D 16
#define S 40

static float g_x[N * D];
static int32_t g_tok[N], g_pos[N];
static int64_t g_doc[N];

static void make_data(void) {
    ml_rng r;
    ml_rng_seed(&r, 17, 0);
    int64_t doc = 100;
    int32_t p = 0;
    int left = 0;
    for (int i = 0; i < N; i++) {
        if (left == 0) {
            left = 30 + (int)ml_rng_below(&r, 120);
            doc += 1 + (int64_t)ml_rng_below(&r, 3);
            p = (int32_t)ml_rng_below(&r, 5); /* windows need not start at position 0 */
        }
        if (ml_rng_below(&r, 200) == 0) p += 3; /* a position jump inside a document */
        g_doc[i] = doc;
        g_pos[i] = p++;
        g_tok[i] = (int32_t)ml_rng_below(&r, 32000);
        left--;
        for (int k = 0; k < D; k++) g_x[i * D + k] = ml_rng_normal(&r) + (k == i % D ? 2.0f : 0.0f);
    }
}

static ml_sae *make_sae(ml_sae_arch arch) {
    ml_sae *s = NULL;
    ML_ASSERT_OK(ml_sae_create(arch, D, S, 4, &s));
    ml_sae_init(s, 5, 0.5f);
    ml_rng r;
    ml_rng_seed(&r, 3, 0);
    for (int j = 0; j < S; j++) s->b_enc[j] = -1.0f + 0.3f * ml_rng_normal(&r); /* sparse firing */
    for (int k = 0; k < D; k++) s->b_dec[k] = 0.1f * ml_rng_normal(&r);
    return s;
}

static void check_eval(const ml_sae *s, const ml_sae_eval *ev, int64_t row0, int64_t n, const ml_sae_eval_config *c) {
    int K = c->top_examples, Q = c->quantile_examples, cl = c->ctx_left, cr = c->ctx_right, W = cl + 1 + cr;
    assert_int_equal(ev->K, K);
    assert_int_equal(ev->Q, Q);
    assert_int_equal(ev->W, W);
    static float f[N * S], xh[N * D];
    ML_ASSERT_OK(ml_sae_encode(s, g_x, N, f));
    ML_ASSERT_OK(ml_sae_decode(s, f, N, xh));
    double se = 0, l0 = 0, mean[D] = {0}, x2 = 0;
    for (int64_t i = row0; i < row0 + n; i++)
        for (int k = 0; k < D; k++) {
            se += ((double)xh[i * D + k] - g_x[i * D + k]) * ((double)xh[i * D + k] - g_x[i * D + k]);
            mean[k] += g_x[i * D + k] / (double)n;
            x2 += (double)g_x[i * D + k] * g_x[i * D + k];
        }
    double var = x2;
    for (int k = 0; k < D; k++) var -= n * mean[k] * mean[k];
    for (int64_t i = row0; i < row0 + n; i++)
        for (int j = 0; j < S; j++) l0 += f[i * S + j] > 0;
    ML_ASSERT_CLOSE(ev->mse, se / (n * D), 1e-5);
    ML_ASSERT_CLOSE(ev->fvu, se / var, 1e-5);
    ML_ASSERT_CLOSE(ev->l0, l0 / n, 1e-9);
    int dead = 0;
    int64_t hsum = ev->hist_zero;
    for (int b = 0; b < ML_SAE_HIST_BINS; b++) hsum += ev->hist[b];
    assert_true(hsum == S);
    for (int j = 0; j < S; j++) {
        int64_t cnt = 0;
        double sum = 0, mx = 0;
        for (int64_t i = row0; i < row0 + n; i++)
            if (f[i * S + j] > 0) {
                cnt++;
                sum += f[i * S + j];
                if (f[i * S + j] > mx) mx = f[i * S + j];
            }
        dead += cnt == 0;
        assert_true(ev->count[j] == cnt);
        ML_ASSERT_CLOSE(ev->density[j], (double)cnt / n, 1e-12);
        ML_ASSERT_CLOSE(ev->max_act[j], mx, 1e-5);
        ML_ASSERT_CLOSE(ev->mean_act[j], cnt ? sum / cnt : 0, 1e-5);
        /* top examples: the K largest activations, ties to the earlier row */
        int64_t prev_row = -1;
        double prev = INFINITY;
        for (int t = 0; t < K; t++) {
            int64_t best = -1;
            for (int64_t i = row0; i < row0 + n; i++) {
                float v = f[i * S + j];
                if (!(v > 0)) continue;
                if (v > prev || (v == prev && i <= prev_row)) continue;
                if (best < 0 || v > f[best * S + j]) best = i;
            }
            assert_true(ev->top_row[j * K + t] == best);
            if (best < 0) continue;
            ML_ASSERT_CLOSE(ev->top_act[j * K + t], f[best * S + j], 1e-5);
            prev = f[best * S + j];
            prev_row = best;
            for (int o = -cl; o <= cr; o++) {
                int64_t r = best + o;
                int in = r >= 0 && r < N && g_doc[r] == g_doc[best] && g_pos[r] - g_pos[best] == o;
                assert_int_equal(ev->top_tokens[(j * K + t) * W + o + cl], in ? g_tok[r] : -1);
                ML_ASSERT_CLOSE(ev->top_window_acts[(j * K + t) * W + o + cl], in ? f[r * S + j] : 0, 1e-5);
            }
        }
        /* quantile samples: firing rows outside the top list, increasing activation */
        float last = 0;
        for (int q = 0; q < Q; q++) {
            int64_t r = ev->q_row[j * Q + q];
            if (r < 0) continue;
            assert_true(r >= row0 && r < row0 + n);
            assert_true(f[r * S + j] > 0);
            for (int t = 0; t < K; t++) assert_true(ev->top_row[j * K + t] != r);
            ML_ASSERT_CLOSE(ev->q_act[j * Q + q], f[r * S + j], 1e-5);
            assert_true(ev->q_act[j * Q + q] >= last);
            last = ev->q_act[j * Q + q];
            assert_true(ev->q_level[j * Q + q] > 0 && ev->q_level[j * Q + q] < 1);
            assert_int_equal(ev->q_tokens[(j * Q + q) * W + cl], g_tok[r]);
        }
    }
    ML_ASSERT_CLOSE(ev->dead_fraction, (double)dead / S, 1e-12);
}

static void test_eval(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    make_data();
    ml_row_memory mem;
    ml_row_memory_init(&mem, g_x, N, D, g_tok, g_doc, g_pos);
    ml_sae_eval_config c;
    ml_sae_eval_config_default(&c);
    c.row0 = 200;
    c.n_rows = 2500;
    c.block_rows = 128;
    c.top_examples = 5;
    c.quantile_examples = 3;
    c.reservoir = 10;
    c.ctx_left = 6;
    c.ctx_right = 3;
    ml_sae *saes[2] = {make_sae(ML_SAE_STANDARD), make_sae(ML_SAE_TOPK)};
    ml_sae_eval *ew[2], *es[2];
    ML_ASSERT_OK(ml_sae_evaluate(MPI_COMM_WORLD, saes, 2, &mem.src, &c, ew));
    ML_ASSERT_OK(ml_sae_evaluate(MPI_COMM_SELF, saes, 2, &mem.src, &c, es));
    for (int g = 0; g < 2; g++) {
        check_eval(saes[g], ew[g], c.row0, c.n_rows, &c);
        /* the same examples on any rank count */
        assert_memory_equal(ew[g]->top_row, es[g]->top_row, sizeof(int64_t) * S * c.top_examples);
        assert_memory_equal(ew[g]->q_row, es[g]->q_row, sizeof(int64_t) * S * c.quantile_examples);
        assert_memory_equal(ew[g]->top_tokens, es[g]->top_tokens, sizeof(int32_t) * S * c.top_examples * 10);
        assert_true(ew[g]->l0 > 0.5);
        ml_sae_eval_destroy(&ew[g]);
        ml_sae_eval_destroy(&es[g]);
        ml_sae_destroy(&saes[g]);
    }
    ml_sae_eval *bad[1];
    c.quantile_examples = 20;
    ML_ASSERT_FAILS(ml_sae_evaluate(MPI_COMM_SELF, saes, 0, &mem.src, &c, bad), ML_ERR_ARG, "quantile_examples");
    assert_true(ml_alloc_live() == live0);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_eval)};
    return ml_test_run(argc, argv, "sae_eval", tests, sizeof tests / sizeof tests[0]);
}
