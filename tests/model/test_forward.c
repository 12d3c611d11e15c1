/* The forward pass against an independent naive double-precision
 * implementation (embedding, RMSNorm, q/k/v, RoPE, causal grouped-query
 * attention written as plain loops, SwiGLU, lm_head, cross-entropy), hook
 * points, MLP replacement / hook functions, RoPE against its closed form. */
#include <math.h>

#include "ml_test.h"
#include "model_test.h"

/* ---- naive reference --------------------------------------------------------- */
typedef struct {
    int N, D;
    double *resid_pre, *attn_out, *resid_mid, *hpost, *mlp_out, *resid_post; /* per layer (L, N, *) */
    double *lnf, *tok_loss;
    double loss_sum;
    long n_targets, n_correct;
} ml_ref;

static const float *P(const ml_model *m, const char *name) {
    const ml_tensor *t = NULL;
    ML_ASSERT_OK(ml_model_lookup(m, name, &t));
    return m->params + t->offset;
}

static void ref_rmsnorm(double *y, const double *x, const float *w, int D, double eps) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / D + eps);
    for (int i = 0; i < D; i++) y[i] = x[i] * r * w[i];
}

/* y (out) = W (out, in) x (in) */
static void ref_matvec(double *y, const float *W, const double *x, int out, int in) {
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

/* rotate-half RoPE of one head vector at position t, angle t * theta^(-2i/hd) */
static void ref_rope(double *x, int hd, int t, double theta) {
    for (int i = 0; i < hd / 2; i++) {
        double a = t * pow(theta, -2.0 * i / hd), c = cos(a), s = sin(a);
        double x1 = x[i], x2 = x[i + hd / 2];
        x[i] = x1 * c - x2 * s;
        x[i + hd / 2] = x2 * c + x1 * s;
    }
}

static void ref_forward(const ml_model *m, const int32_t *tok, const int32_t *tgt, int B, int T, int zero_mlp,
                        ml_ref *r) {
    const ml_model_config *c = &m->cfg;
    const int N = B * T, D = c->d_model, F = c->d_mlp, H = c->n_heads, KV = c->n_kv_heads, hd = D / H,
              L = c->n_layers, V = c->vocab_size;
    r->N = N;
    r->D = D;
    r->resid_pre = calloc((size_t)L * N * D, 8);
    r->attn_out = calloc((size_t)L * N * D, 8);
    r->resid_mid = calloc((size_t)L * N * D, 8);
    r->mlp_out = calloc((size_t)L * N * D, 8);
    r->resid_post = calloc((size_t)L * N * D, 8);
    r->hpost = calloc((size_t)L * N * F, 8);
    r->lnf = calloc((size_t)N * D, 8);
    r->tok_loss = calloc((size_t)N, 8);
    double *x = calloc((size_t)N * D, 8), *n1 = calloc((size_t)N * D, 8), *q = calloc((size_t)N * H * hd, 8),
           *k = calloc((size_t)N * KV * hd, 8), *v = calloc((size_t)N * KV * hd, 8), *att = calloc((size_t)N * H * hd, 8),
           *g = calloc(F, 8), *u = calloc(F, 8), *logit = calloc(V, 8), *sc = calloc(T, 8);
    const float *emb = P(m, "model.embed_tokens.weight");
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++) x[(size_t)n * D + i] = emb[(size_t)tok[n] * D + i];
    char name[128];
    for (int l = 0; l < L; l++) {
#define W(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), P(m, name))
        const size_t lo = (size_t)l * N * D;
        memcpy(r->resid_pre + lo, x, sizeof(double) * N * D);
        for (int n = 0; n < N; n++) {
            ref_rmsnorm(n1 + (size_t)n * D, x + (size_t)n * D, W("input_layernorm.weight"), D, c->rms_eps);
            ref_matvec(q + (size_t)n * H * hd, W("self_attn.q_proj.weight"), n1 + (size_t)n * D, H * hd, D);
            ref_matvec(k + (size_t)n * KV * hd, W("self_attn.k_proj.weight"), n1 + (size_t)n * D, KV * hd, D);
            ref_matvec(v + (size_t)n * KV * hd, W("self_attn.v_proj.weight"), n1 + (size_t)n * D, KV * hd, D);
            for (int h = 0; h < H; h++) ref_rope(q + (size_t)n * H * hd + h * hd, hd, n % T, c->rope_theta);
            for (int h = 0; h < KV; h++) ref_rope(k + (size_t)n * KV * hd + h * hd, hd, n % T, c->rope_theta);
        }
        /* attention: query head h reads kv head h / (H / KV) */
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const int kvh = h / (H / KV);
                for (int t = 0; t < T; t++) {
                    const double *qt = q + ((size_t)(b * T + t) * H + h) * hd;
                    double mx = -1e300, sum = 0;
                    for (int j = 0; j <= t; j++) {
                        const double *kj = k + ((size_t)(b * T + j) * KV + kvh) * hd;
                        double s = 0;
                        for (int i = 0; i < hd; i++) s += qt[i] * kj[i];
                        sc[j] = s / sqrt((double)hd);
                        if (sc[j] > mx) mx = sc[j];
                    }
                    for (int j = 0; j <= t; j++) sum += exp(sc[j] - mx);
                    double *ot = att + ((size_t)(b * T + t) * H + h) * hd;
                    for (int i = 0; i < hd; i++) ot[i] = 0;
                    for (int j = 0; j <= t; j++) {
                        const double p = exp(sc[j] - mx) / sum, *vj = v + ((size_t)(b * T + j) * KV + kvh) * hd;
                        for (int i = 0; i < hd; i++) ot[i] += p * vj[i];
                    }
                }
            }
        for (int n = 0; n < N; n++) {
            double *ao = r->attn_out + lo + (size_t)n * D, *mid = r->resid_mid + lo + (size_t)n * D;
            ref_matvec(ao, W("self_attn.o_proj.weight"), att + (size_t)n * H * hd, D, H * hd);
            for (int i = 0; i < D; i++) mid[i] = x[(size_t)n * D + i] + ao[i];
            ref_rmsnorm(n1 + (size_t)n * D, mid, W("post_attention_layernorm.weight"), D, c->rms_eps);
            ref_matvec(g, W("mlp.gate_proj.weight"), n1 + (size_t)n * D, F, D);
            ref_matvec(u, W("mlp.up_proj.weight"), n1 + (size_t)n * D, F, D);
            double *hp = r->hpost + ((size_t)l * N + n) * F;
            for (int i = 0; i < F; i++) hp[i] = zero_mlp ? 0.0 : g[i] / (1.0 + exp(-g[i])) * u[i];
            double *mo = r->mlp_out + lo + (size_t)n * D;
            ref_matvec(mo, W("mlp.down_proj.weight"), hp, D, F);
            for (int i = 0; i < D; i++) x[(size_t)n * D + i] = mid[i] + mo[i];
        }
        memcpy(r->resid_post + lo, x, sizeof(double) * N * D);
#undef W
    }
    r->loss_sum = 0;
    r->n_targets = r->n_correct = 0;
    for (int n = 0; n < N; n++) {
        ref_rmsnorm(r->lnf + (size_t)n * D, x + (size_t)n * D, P(m, "model.norm.weight"), D, c->rms_eps);
        ref_matvec(logit, P(m, "lm_head.weight"), r->lnf + (size_t)n * D, V, D);
        if (tgt[n] < 0) continue;
        double mx = logit[0];
        int am = 0;
        for (int j = 1; j < V; j++)
            if (logit[j] > mx) mx = logit[j], am = j;
        double sum = 0;
        for (int j = 0; j < V; j++) sum += exp(logit[j] - mx);
        r->tok_loss[n] = mx + log(sum) - logit[tgt[n]];
        r->loss_sum += r->tok_loss[n];
        r->n_targets++;
        r->n_correct += am == tgt[n];
    }
    free(x), free(n1), free(q), free(k), free(v), free(att), free(g), free(u), free(logit), free(sc);
}

static void ref_free(ml_ref *r) {
    free(r->resid_pre), free(r->attn_out), free(r->resid_mid), free(r->hpost), free(r->mlp_out);
    free(r->resid_post), free(r->lnf), free(r->tok_loss);
}

/* max |a - b| / max |b| over a hook view vs a reference array (rows, cols) */
static double view_err(ml_workspace *ws, const char *hook, const double *ref, int rows, int cols) {
    ml_view v;
    ML_ASSERT_OK(ml_workspace_hook(ws, hook, &v));
    assert_int_equal(v.rows, rows);
    assert_int_equal(v.cols, cols);
    double e = 0, s = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double a = v.data[(size_t)r * v.ld + c], b = ref[(size_t)r * cols + c];
            e = fabs(a - b) > e ? fabs(a - b) : e;
            s = fabs(b) > s ? fabs(b) : s;
        }
    return e / (s > 0 ? s : 1);
}

static void make_tiny(ml_model_config *c, int H, int KV, int L) {
    ml_test_config(c, L, 50, 32, H, KV, 48, 64);
    c->init_std = 0.2;
}

static void check_against_reference(int H, int KV, int L) {
    ml_model_config c;
    make_tiny(&c, H, KV, L);
    const int B = 3, T = 37, N = B * T; /* T not a multiple of the block of 16 rows */
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 11));
    ml_workspace_config wc = {.B_max = 4, .T_max = 40, .grad = 0, .attn_block = 16, .lm_chunk = 50};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    int32_t tok[3 * 37], tgt[3 * 37];
    ml_rng rng;
    ml_rng_seed(&rng, 5, 0);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)ml_rng_below(&rng, 50);
    for (int i = 0; i < N; i++) tgt[i] = i % 10 == 9 ? -1 : (int32_t)ml_rng_below(&rng, 50);
    ml_lm_stats st;
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &st));
    ml_ref r;
    ref_forward(m, tok, tgt, B, T, 0, &r);
    char hook[64];
    double worst = 0;
    for (int l = 0; l < L; l++) {
        const size_t lo = (size_t)l * N * c.d_model;
        const struct {
            const char *name;
            const double *ref;
            int cols;
        } hooks[] = {{"hook_resid_pre", r.resid_pre + lo, c.d_model},   {"hook_attn_out", r.attn_out + lo, c.d_model},
                     {"hook_resid_mid", r.resid_mid + lo, c.d_model},   {"mlp.hook_post", r.hpost + (size_t)l * N * c.d_mlp, c.d_mlp},
                     {"hook_mlp_out", r.mlp_out + lo, c.d_model},       {"hook_resid_post", r.resid_post + lo, c.d_model}};
        for (size_t i = 0; i < sizeof hooks / sizeof hooks[0]; i++) {
            snprintf(hook, sizeof hook, "blocks.%d.%s", l, hooks[i].name);
            double e = view_err(ws, hook, hooks[i].ref, N, hooks[i].cols);
            printf("H %d KV %d L %d: %-26s rel err %.2e\n", H, KV, L, hook, e);
            if (!(e < 2e-5)) fail_msg("%s: relative error %.3e", hook, e);
            worst = e > worst ? e : worst;
        }
    }
    double e = view_err(ws, "ln_final.hook_normalized", r.lnf, N, c.d_model);
    if (!(e < 2e-5)) fail_msg("ln_final: relative error %.3e", e);
    printf("H %d KV %d L %d: loss %.8f (ref %.8f), correct %lld (ref %ld) of %lld, worst hook err %.2e\n", H, KV, L,
           st.loss_sum / st.n_targets, r.loss_sum / r.n_targets, (long long)st.n_correct, r.n_correct,
           (long long)st.n_targets, worst);
    ML_ASSERT_CLOSE(st.loss_sum, r.loss_sum, 1e-5);
    assert_int_equal(st.n_targets, r.n_targets);
    assert_int_equal(st.n_correct, r.n_correct);
    const float *tl;
    const uint8_t *tc;
    ml_workspace_token_stats(ws, &tl, &tc);
    for (int i = 0; i < N; i++) ML_ASSERT_CLOSE(tl[i], r.tok_loss[i], 1e-5);
    ref_free(&r);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

static void test_reference_gqa(void **state) {
    (void)state;
    check_against_reference(4, 2, 1);
    check_against_reference(4, 1, 1);
}

static void test_reference_mha_two_layers(void **state) {
    (void)state;
    check_against_reference(4, 4, 2);
}

/* ---- MLP replacement and hook functions ------------------------------------------ */
typedef struct {
    float *copy;
    int calls;
    int fail;
} hook_ctx;

static int doubling_hook(void *ctx, int layer, float *h, int N, int F) {
    hook_ctx *c = ctx;
    c->calls++;
    if (c->fail) return ML_FAIL(ML_ERR_INJECTED, "hook refused layer %d", layer);
    memcpy(c->copy, h, sizeof(float) * (size_t)N * F);
    for (size_t i = 0; i < (size_t)N * F; i++) h[i] *= 2.0f;
    return ML_OK;
}

static void test_mlp_replacement_and_hook(void **state) {
    (void)state;
    ml_model_config c;
    make_tiny(&c, 4, 2, 1);
    const int B = 2, T = 9, N = B * T, D = c.d_model, F = c.d_mlp;
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, 3));
    ml_workspace_config wc = {.B_max = B, .T_max = T};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    int32_t tok[18], tgt[18];
    for (int i = 0; i < N; i++) tok[i] = (i * 7) % 50, tgt[i] = (i * 3 + 1) % 50;
    ml_lm_stats clean, ablated;
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &clean));
    ml_view hp, mo, mid, post;
    ML_ASSERT_OK(ml_workspace_hook(ws, "blocks.0.mlp.hook_post", &hp));
    float *h0 = malloc(sizeof(float) * N * F), *mo0 = malloc(sizeof(float) * N * D);
    memcpy(h0, hp.data, sizeof(float) * N * F);
    ML_ASSERT_OK(ml_workspace_hook(ws, "blocks.0.hook_mlp_out", &mo));
    memcpy(mo0, mo.data, sizeof(float) * N * D);

    /* zero ablation equals the reference with h = 0 */
    float *zeros = calloc((size_t)N * F, sizeof(float));
    ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, 0, zeros));
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &ablated));
    ml_ref r;
    ref_forward(m, tok, tgt, B, T, 1, &r);
    ML_ASSERT_CLOSE(ablated.loss_sum, r.loss_sum, 1e-5);
    printf("clean loss %.5f, zero-ablated loss %.5f (ref %.5f)\n", clean.loss_sum / clean.n_targets,
           ablated.loss_sum / ablated.n_targets, r.loss_sum / r.n_targets);
    ML_ASSERT_OK(ml_workspace_hook(ws, "blocks.0.hook_resid_mid", &mid));
    ML_ASSERT_OK(ml_workspace_hook(ws, "blocks.0.hook_resid_post", &post));
    for (int i = 0; i < N * D; i++) assert_true(mid.data[i] == post.data[i]);
    ref_free(&r);

    /* replacing with the clean activation reproduces the clean loss */
    ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, 0, h0));
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, tgt, B, T, &ablated));
    ML_ASSERT_CLOSE(ablated.loss_sum, clean.loss_sum, 1e-6);
    ML_ASSERT_OK(ml_workspace_set_mlp_replacement(ws, 0, NULL));
    ML_ASSERT_FAILS(ml_workspace_set_mlp_replacement(ws, 1, zeros), ML_ERR_ARG, "layer 1 does not exist");

    /* a hook function sees h and its in-place change propagates (down_proj is linear) */
    hook_ctx hc = {malloc(sizeof(float) * N * F), 0, 0};
    ml_workspace_set_mlp_hook(ws, doubling_hook, &hc);
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, NULL, B, T, NULL));
    assert_int_equal(hc.calls, 1);
    for (int i = 0; i < N * F; i++) assert_true(hc.copy[i] == h0[i]);
    ML_ASSERT_OK(ml_workspace_hook(ws, "blocks.0.hook_mlp_out", &mo));
    for (int i = 0; i < N * D; i++) ML_ASSERT_CLOSE(mo.data[i], 2.0f * mo0[i], 1e-5);
    hc.fail = 1;
    ML_ASSERT_FAILS(ml_model_forward(m, ws, tok, NULL, B, T, NULL), ML_ERR_INJECTED, "hook refused layer 0");
    ml_workspace_set_mlp_hook(ws, NULL, NULL);
    free(hc.copy), free(zeros), free(h0), free(mo0);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

static void test_bad_inputs(void **state) {
    (void)state;
    ml_model_config c;
    make_tiny(&c, 4, 2, 1);
    ml_model *m = NULL;
    ml_workspace *ws = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ml_workspace_config wc = {.B_max = 2, .T_max = 8};
    ML_ASSERT_OK(ml_workspace_create(&c, &wc, &ws));
    ml_view v;
    ML_ASSERT_FAILS(ml_workspace_hook(ws, "blocks.0.mlp.hook_post", &v), ML_ERR_ARG, "no forward pass");
    int32_t tok[8] = {0, 1, 2, 3, 50, 5, 6, 7}, tgt[8] = {1, 2, 3, 4, 5, 6, 7, -2};
    ML_ASSERT_FAILS(ml_model_forward(m, ws, tok, NULL, 1, 8, NULL), ML_ERR_ARG, "token 50 at row 0 position 4");
    tok[4] = 4;
    ML_ASSERT_FAILS(ml_model_forward(m, ws, tok, tgt, 1, 8, NULL), ML_ERR_ARG, "target -2 at row 0 position 7");
    ML_ASSERT_FAILS(ml_model_forward(m, ws, tok, NULL, 3, 8, NULL), ML_ERR_ARG, "outside the workspace");
    ML_ASSERT_OK(ml_model_forward(m, ws, tok, NULL, 1, 8, NULL));
    ML_ASSERT_FAILS(ml_workspace_hook(ws, "blocks.1.mlp.hook_post", &v), ML_ERR_NOTFOUND, "unknown hook");
    ML_ASSERT_FAILS(ml_workspace_hook(ws, "blocks.0.hook_z", &v), ML_ERR_NOTFOUND, "blocks.<0..0>");
    ml_workspace_config big = {.B_max = 1, .T_max = 65};
    ml_workspace *ws2 = NULL;
    ML_ASSERT_FAILS(ml_workspace_create(&c, &big, &ws2), ML_ERR_ARG, "exceeds the model's max_context 64");
    ml_model_config c2 = c;
    c2.d_mlp = 47;
    ML_ASSERT_OK(ml_workspace_create(&c2, &wc, &ws2));
    ML_ASSERT_FAILS(ml_model_forward(m, ws2, tok, NULL, 1, 8, NULL), ML_ERR_ARG, "different model config");
    ml_workspace_destroy(&ws2);
    ml_workspace_destroy(&ws);
    ml_model_destroy(&m);
}

/* ---- RoPE closed form -------------------------------------------------------------- */
static void test_rope_closed_form(void **state) {
    (void)state;
    const int B = 2, T = 300, nh = 3, hd = 8, ld = nh * hd + 5, h2 = hd / 2;
    const double theta = 10000.0;
    float *cs = malloc(sizeof(float) * T * h2), *sn = malloc(sizeof(float) * T * h2);
    float *x = malloc(sizeof(float) * B * T * ld), *x0 = malloc(sizeof(float) * B * T * ld);
    ml_rng rng;
    ml_rng_seed(&rng, 1, 2);
    for (int i = 0; i < B * T * ld; i++) x0[i] = x[i] = ml_rng_normal(&rng);
    ml_rope_tables(cs, sn, T, hd, theta);
    ml_rope_apply(x, B, T, nh, hd, ld, cs, sn, 0);
    double maxerr = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < nh; j++) {
                const size_t o = ((size_t)b * T + t) * ld + (size_t)j * hd;
                for (int i = 0; i < h2; i++) {
                    double a = t * pow(theta, -2.0 * i / hd);
                    double e1 = x0[o + i] * cos(a) - x0[o + i + h2] * sin(a);
                    double e2 = x0[o + i + h2] * cos(a) + x0[o + i] * sin(a);
                    maxerr = fmax(maxerr, fmax(fabs(x[o + i] - e1), fabs(x[o + i + h2] - e2)));
                }
                for (int i = nh * hd; i < ld && j == 0; i++)
                    assert_true(x[((size_t)b * T + t) * ld + i] == x0[((size_t)b * T + t) * ld + i]);
            }
    printf("rope closed-form max error %.2e\n", maxerr);
    assert_true(maxerr < 2e-5);
    /* relative position: <R_m q, R_n k> depends on m - n only */
    {
        const float *q = x0, *k = x0 + hd;
        float qm[8], kn[8], qd[8];
        const int m = 250, n = 17;
        double a = 0, e = 0;
        memcpy(qm, q, sizeof qm), memcpy(kn, k, sizeof kn), memcpy(qd, q, sizeof qd);
        ml_rope_apply(qm, 1, 1, 1, hd, hd, cs + (size_t)m * h2, sn + (size_t)m * h2, 0);
        ml_rope_apply(kn, 1, 1, 1, hd, hd, cs + (size_t)n * h2, sn + (size_t)n * h2, 0);
        ml_rope_apply(qd, 1, 1, 1, hd, hd, cs + (size_t)(m - n) * h2, sn + (size_t)(m - n) * h2, 0);
        for (int i = 0; i < hd; i++) a += (double)qm[i] * kn[i], e += (double)qd[i] * k[i];
        printf("rope relative-position dot %.6f vs %.6f\n", a, e);
        ML_ASSERT_CLOSE(a, e, 1e-4);
    }
    /* inverse undoes the rotation */
    ml_rope_apply(x, B, T, nh, hd, ld, cs, sn, 1);
    for (int i = 0; i < B * T * ld; i++) ML_ASSERT_CLOSE(x[i], x0[i], 1e-5);
    free(cs), free(sn), free(x), free(x0);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_gqa),
        cmocka_unit_test(test_reference_mha_two_layers),
        cmocka_unit_test(test_mlp_replacement_and_hook),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_rope_closed_form),
    };
    return ml_test_run(argc, argv, "model_forward", tests, sizeof tests / sizeof tests[0]);
}
