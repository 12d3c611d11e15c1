/* Activation capture: the file holds the model's own hook values (checked
 * against forward passes run here and a naive silu(gate x) * up x from the
 * parameters), the right tokens, positions, document and domain ids, the
 * documented attributes; float16 storage round-trips within half precision
 * and is readable by the sae module's activations source. */
#include <zlib.h>

#include "fixtures.h"
#include "mergelens/interop.h"
#include "mergelens/sae.h"

#define T_CTX 8
#define BATCH 3
#define NTOK 203 /* 25 full windows + 3 rows */

static const char *HOOKS[] = {"blocks.0.mlp.hook_post",   "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid",
                              "blocks.1.hook_resid_post", "blocks.1.hook_attn_out",  "blocks.1.mlp.hook_post"};
#define NHOOKS 6
static const char HOOK_ARG[] = "blocks.0.mlp.hook_post,blocks.0.hook_resid_pre,blocks.0.hook_resid_mid,"
                               "blocks.1.hook_resid_post,blocks.1.hook_attn_out,blocks.1.mlp.hook_post";

typedef struct {
    char dir[1024], a[1100], b[1100], ckpt[1100];
    fx_store sa, sb;
    ml_model *m;
} fx_env;

static void env_make(fx_env *e, const char *name) {
    snprintf(e->dir, sizeof e->dir, "%s", ml_test_dir(name));
    snprintf(e->a, sizeof e->a, "%s/a.h5", e->dir);
    snprintf(e->b, sizeof e->b, "%s/b.h5", e->dir);
    snprintf(e->ckpt, sizeof e->ckpt, "%s/model.h5", e->dir);
    fx_store_write(MPI_COMM_WORLD, e->a, "alpha", 40, 30, 6, 11, 0, &e->sa);
    fx_store_write(MPI_COMM_WORLD, e->b, "beta", 40, 25, 6, 12, 1, &e->sb);
    fx_model_write(MPI_COMM_WORLD, e->ckpt, 7, 1, &e->m);
}

static void env_free(fx_env *e) {
    for (int k = 0; k < 2; k++) {
        fx_split_free(&e->sa.split[k]);
        fx_split_free(&e->sb.split[k]);
    }
    ml_model_destroy(&e->m);
}

static void run_capture(const fx_env *e, const char *out, const char *dtype, const char *order_flag) {
    char doms[2300];
    snprintf(doms, sizeof doms, "%s,%s", e->a, e->b);
    const char *args[] = {"capture", e->ckpt, "--domains", doms, "--tokens", "203", "--hook", HOOK_ARG, "--out", out,
                          "--context", "8", "--batch", "3", "--dtype", dtype, order_flag, NULL};
    ML_ASSERT_OK(fx_cmd(ml_cmd_capture, MPI_COMM_WORLD, args));
}

/* Naive document index of token offset `off`. */
static int64_t naive_doc(const fx_split *s, int64_t off) {
    int64_t d = 0;
    while (s->offsets[d + 1] <= off) d++;
    return d;
}

static void test_values(void **state) {
    (void)state;
    fx_env e;
    env_make(&e, "capture_values");
    char out[1200];
    snprintf(out, sizeof out, "%s/acts/m.h5", e.dir);
    long live = ml_alloc_live();
    run_capture(&e, out, "float32", "--sequential");
    assert_int_equal(ml_alloc_live(), live);

    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, ML_CAPTURE_FORMAT, 1, 1, &h));
    int64_t n_tokens = 0, ctx = 0, nw = 0;
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "n_tokens", &n_tokens));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "context", &ctx));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "n_windows", &nw));
    assert_int_equal(n_tokens, NTOK);
    assert_int_equal(ctx, T_CTX);
    assert_int_equal(nw, 26);
    /* finished-file bookkeeping: 26 windows in batches of 3; CRC-32 of the parameters computed here */
    const char *ikeys[] = {"complete", "batch", "n_batches", "batches_done", "model_crc32"};
    const int64_t iwant[] = {1, 3, 9, 9,
                             (int64_t)crc32(0L, (const Bytef *)e.m->params, (uInt)(e.m->n_params * sizeof(float)))};
    for (int k = 0; k < 5; k++) {
        int64_t v = -1;
        ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", ikeys[k], &v));
        if (v != iwant[k]) fail_msg("attribute %s = %lld, expected %lld", ikeys[k], (long long)v, (long long)iwant[k]);
    }
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "model", &s));
    assert_string_equal(s, e.ckpt);
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "domain_names", &s));
    assert_string_equal(s, "[\"alpha\",\"beta\"]");
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "hooks", &s));
    assert_non_null(strstr(s, "\"blocks.1.hook_attn_out\""));
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "domains", &s));
    char want[2400];
    snprintf(want, sizeof want, "[\"%s\",\"%s\"]", e.a, e.b);
    assert_string_equal(s, want);
    ml_free(s);

    hsize_t rows = 0;
    int32_t *tok = fx_read_all(h, "/tokens", ML_I32, &rows, NULL);
    int32_t *pos = fx_read_all(h, "/positions", ML_I32, NULL, NULL);
    int32_t *dom = fx_read_all(h, "/domain_ids", ML_I32, NULL, NULL);
    int64_t *doc = fx_read_all(h, "/doc_ids", ML_I64, NULL, NULL);
    assert_int_equal(rows, NTOK);
    float *acts[NHOOKS];
    hsize_t width[NHOOKS];
    for (int k = 0; k < NHOOKS; k++) {
        char ds[256];
        snprintf(ds, sizeof ds, "/hooks/%s/acts", HOOKS[k]);
        hsize_t r = 0;
        acts[k] = fx_read_all(h, ds, ML_F32, &r, &width[k]);
        assert_int_equal(r, NTOK);
        assert_int_equal(width[k], strstr(HOOKS[k], "mlp.hook_post") ? 24 : 16);
    }
    ML_ASSERT_OK(ml_h5_close(&h));

    /* sequential, equal shares: windows alternate a0 b0 a1 b1 ...; window k covers tokens [8k, 8k+9) */
    for (hsize_t r = 0; r < rows; r++) {
        int64_t w = (int64_t)r / T_CTX, k = w / 2, t = (int64_t)r % T_CTX;
        const fx_split *sp = w % 2 ? &e.sb.split[0] : &e.sa.split[0];
        assert_int_equal(dom[r], w % 2);
        assert_int_equal(pos[r], t);
        assert_int_equal(tok[r], sp->tok[k * T_CTX + t]);
        assert_int_equal(doc[r], naive_doc(sp, k * T_CTX + t));
    }

    /* the model's own values: forward passes over the same batches of 3 windows (bitwise), and
     * over single windows (same up to float rounding) */
    ml_workspace *ws = NULL, *ws1 = NULL;
    ml_workspace_config wc = {BATCH, T_CTX, 0, 0, 0}, wc1 = {1, T_CTX, 0, 0, 0};
    ML_ASSERT_OK(ml_workspace_create(&e.m->cfg, &wc, &ws));
    ML_ASSERT_OK(ml_workspace_create(&e.m->cfg, &wc1, &ws1));
    int32_t in[BATCH * T_CTX];
    double max_err1 = 0;
    for (int64_t w0 = 0; w0 < 26; w0 += BATCH) {
        int nb = w0 + BATCH <= 26 ? BATCH : (int)(26 - w0);
        for (int j = 0; j < nb; j++) {
            int64_t w = w0 + j, k = w / 2;
            const fx_split *sp = w % 2 ? &e.sb.split[0] : &e.sa.split[0];
            memcpy(in + j * T_CTX, sp->tok + k * T_CTX, sizeof(int32_t) * T_CTX);
        }
        ML_ASSERT_OK(ml_model_forward(e.m, ws, in, NULL, nb, T_CTX, NULL));
        for (int k = 0; k < NHOOKS; k++) {
            ml_view v;
            ML_ASSERT_OK(ml_workspace_hook(ws, HOOKS[k], &v));
            for (int r = 0; r < nb * T_CTX; r++) {
                int64_t row = w0 * T_CTX + r;
                if (row >= NTOK) break;
                if (memcmp(acts[k] + row * width[k], v.data + (size_t)r * v.ld, sizeof(float) * width[k]))
                    fail_msg("hook %s row %lld differs from the model's forward pass", HOOKS[k], (long long)row);
            }
        }
        for (int j = 0; j < nb; j++) {
            ML_ASSERT_OK(ml_model_forward(e.m, ws1, in + j * T_CTX, NULL, 1, T_CTX, NULL));
            for (int k = 0; k < NHOOKS; k++) {
                ml_view v;
                ML_ASSERT_OK(ml_workspace_hook(ws1, HOOKS[k], &v));
                for (int t = 0; t < T_CTX; t++) {
                    int64_t row = (w0 + j) * T_CTX + t;
                    if (row >= NTOK) break;
                    for (hsize_t c = 0; c < width[k]; c++) {
                        double a = acts[k][row * width[k] + c], b = v.data[(size_t)t * v.ld + c];
                        double err = fabs(a - b) / (1 + fabs(b));
                        if (err > max_err1) max_err1 = err;
                    }
                }
            }
        }
    }
    assert_true(max_err1 < 1e-5);

    /* naive recomputation from the parameters: resid_pre = embedding row, and
     * mlp.hook_post = silu(gate n) * up n with n = rmsnorm(resid_mid) (layer 0) */
    const ml_tensor *te, *tg, *tu, *tn;
    ML_ASSERT_OK(ml_model_lookup(e.m, "model.embed_tokens.weight", &te));
    ML_ASSERT_OK(ml_model_lookup(e.m, "model.layers.0.mlp.gate_proj.weight", &tg));
    ML_ASSERT_OK(ml_model_lookup(e.m, "model.layers.0.mlp.up_proj.weight", &tu));
    ML_ASSERT_OK(ml_model_lookup(e.m, "model.layers.0.post_attention_layernorm.weight", &tn));
    const float *E = e.m->params + te->offset, *G = e.m->params + tg->offset, *U = e.m->params + tu->offset,
                *nw2 = e.m->params + tn->offset;
    const int D = 16, F = 24;
    const int check_rows[] = {0, 1, 7, 77, 150, 202};
    double max_naive = 0;
    for (int i = 0; i < 6; i++) {
        int r = check_rows[i];
        assert_memory_equal(acts[1] + (size_t)r * D, E + (size_t)tok[r] * D, sizeof(float) * D);
        const float *x = acts[2] + (size_t)r * D;
        double ss = 0, n[16];
        for (int c = 0; c < D; c++) ss += (double)x[c] * x[c];
        double rstd = 1.0 / sqrt(ss / D + e.m->cfg.rms_eps);
        for (int c = 0; c < D; c++) n[c] = x[c] * rstd * nw2[c];
        for (int f = 0; f < F; f++) {
            double g = 0, u = 0;
            for (int c = 0; c < D; c++) {
                g += G[(size_t)f * D + c] * n[c];
                u += U[(size_t)f * D + c] * n[c];
            }
            double want_h = g / (1 + exp(-g)) * u, got = acts[0][(size_t)r * F + f];
            double err = fabs(got - want_h) / (1 + fabs(want_h));
            if (err > max_naive) max_naive = err;
        }
    }
    if (max_naive > 1e-5) fail_msg("naive silu(gate x) * up x differs by %g", max_naive);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) printf("capture values: max rel err vs single-window forward %.3g, vs naive %.3g\n", max_err1, max_naive);

    ml_workspace_destroy(&ws);
    ml_workspace_destroy(&ws1);
    for (int k = 0; k < NHOOKS; k++) free(acts[k]);
    free(tok);
    free(pos);
    free(dom);
    free(doc);
    env_free(&e);
}

/* Seeded windows: distinct, equal shares, each equal to its store window; doc ids agree. */
static void test_seeded_plan(void **state) {
    (void)state;
    fx_env e;
    env_make(&e, "capture_plan");
    const char *paths[2] = {e.a, e.b};
    const double weights[2] = {3, 1};
    ml_window_spec sp = {2, paths, weights, "train", T_CTX, 0, 5};
    ml_window_plan *p = NULL;
    ML_ASSERT_OK(ml_window_plan_create(MPI_COMM_WORLD, &sp, 40, 40, &p));
    assert_int_equal(ml_window_plan_domain_share(p, 0), 30);
    assert_int_equal(ml_window_plan_domain_share(p, 1), 10);
    assert_string_equal(ml_window_plan_domain_name(p, 1), "beta");
    int seen[2][200] = {{0}};
    int32_t win[T_CTX + 1];
    int64_t docs[T_CTX];
    int per[2] = {0, 0};
    for (int64_t w = 0; w < 40; w++) {
        int d;
        int64_t k;
        ml_window_plan_window(p, w, &d, &k);
        per[d]++;
        /* balanced mix: every prefix is within one window of its share */
        assert_true(fabs(per[0] - 0.75 * (w + 1)) <= 1.0);
        assert_true(k >= 0 && k < ml_window_plan_domain_available(p, d));
        assert_int_equal(seen[d][k], 0);
        seen[d][k] = 1;
        ML_ASSERT_OK(ml_window_plan_read(p, w, win, docs));
        const fx_split *s = d ? &e.sb.split[0] : &e.sa.split[0];
        assert_memory_equal(win, s->tok + k * T_CTX, sizeof(int32_t) * (T_CTX + 1));
        for (int t = 0; t < T_CTX; t++) assert_int_equal(docs[t], naive_doc(s, k * T_CTX + t));
    }
    /* another seed picks other windows */
    ml_window_plan *q = NULL;
    sp.seed = 6;
    ML_ASSERT_OK(ml_window_plan_create(MPI_COMM_WORLD, &sp, 40, 40, &q));
    int same = 0;
    for (int64_t w = 0; w < 40; w++) {
        int64_t k1, k2;
        ml_window_plan_window(p, w, NULL, &k1);
        ml_window_plan_window(q, w, NULL, &k2);
        same += k1 == k2;
    }
    assert_true(same < 20);
    ml_window_plan_destroy(&p);
    ml_window_plan_destroy(&q);
    env_free(&e);
}

/* float16 storage: IEEE half bits (uint16, encoding attribute) within half precision of float32. */
static void test_float16(void **state) {
    (void)state;
    fx_env e;
    env_make(&e, "capture_f16");
    char out32[1200], out16[1200];
    snprintf(out32, sizeof out32, "%s/m32.h5", e.dir);
    snprintf(out16, sizeof out16, "%s/m16.h5", e.dir);
    run_capture(&e, out32, "float32", "--seed=3");
    run_capture(&e, out16, "float16", "--seed=3");
    ml_h5 *h32 = NULL, *h16 = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out32, ML_CAPTURE_FORMAT, 1, 1, &h32));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out16, ML_CAPTURE_FORMAT, 1, 1, &h16));
    double max_rel = 0;
    for (int k = 0; k < NHOOKS; k++) {
        char ds[256], *enc = NULL;
        snprintf(ds, sizeof ds, "/hooks/%s/acts", HOOKS[k]);
        int rank;
        hsize_t dims[ML_H5_MAX_RANK];
        ml_dtype t;
        ML_ASSERT_OK(ml_h5_shape(h16, ds, &rank, dims, &t));
        assert_int_equal(t, ML_F16);
        ML_ASSERT_OK(ml_h5_get_attr_str(h16, ds, "encoding", &enc));
        assert_string_equal(enc, "float16");
        ml_free(enc);
        hsize_t r, c;
        float *f = fx_read_all(h32, ds, ML_F32, &r, &c);
        uint16_t *b = fx_read_all(h16, ds, ML_U16, NULL, NULL);
        for (size_t i = 0; i < (size_t)(r * c); i++) {
            double x = f[i], y = ml_f16_to_f32(b[i]);
            /* round to nearest: |error| <= 2^-11 |x| (normal) or 2^-25 (subnormal) */
            if (fabs(y - x) > ldexp(fabs(x), -11) + ldexp(1, -25))
                fail_msg("%s element %zu: half %g vs float %g", ds, i, y, x);
            if (fabs(x) > 1e-3 && fabs(y - x) / fabs(x) > max_rel) max_rel = fabs(y - x) / fabs(x);
        }
        free(f);
        free(b);
    }
    /* metadata identical to the float32 file */
    const char *meta[] = {"/tokens", "/positions", "/domain_ids"};
    for (int k = 0; k < 3; k++) {
        hsize_t r;
        int32_t *x = fx_read_all(h32, meta[k], ML_I32, &r, NULL), *y = fx_read_all(h16, meta[k], ML_I32, NULL, NULL);
        assert_memory_equal(x, y, sizeof(int32_t) * r);
        free(x);
        free(y);
    }
    char *dt = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_str(h16, "/", "dtype", &dt));
    assert_string_equal(dt, "float16");
    ml_free(dt);
    ML_ASSERT_OK(ml_h5_close(&h32));
    ML_ASSERT_OK(ml_h5_close(&h16));

    /* the sae module reads it back as float32 */
    ml_acts_source *src = NULL;
    ML_ASSERT_OK(ml_acts_source_open(MPI_COMM_WORLD, out16, "blocks.0.mlp.hook_post", &src));
    const ml_row_source *rs = ml_acts_source_rows(src);
    assert_int_equal(rs->n_rows, NTOK);
    assert_int_equal(rs->d, 24);
    float *x = malloc(sizeof(float) * NTOK * 24);
    ML_ASSERT_OK(rs->read(rs->ctx, 0, NTOK, x));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out16, ML_CAPTURE_FORMAT, 1, 1, &h));
    uint16_t *b = fx_read_all(h, "/hooks/blocks.0.mlp.hook_post/acts", ML_U16, NULL, NULL);
    ML_ASSERT_OK(ml_h5_close(&h));
    for (int i = 0; i < NTOK * 24; i++) assert_true(x[i] == ml_f16_to_f32(b[i]));
    assert_string_equal(ml_acts_source_model(src), e.ckpt);
    ml_acts_source_close(&src);
    free(x);
    free(b);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) printf("capture float16: max relative error %.3g (bound 2^-11 = %.3g)\n", max_rel, ldexp(1, -11));
    env_free(&e);
}

/* Short hook names (the spelling) mean layer 0 of a one-layer model. */
static void test_short_names(void **state) {
    (void)state;
    const char *dir = ml_test_dir("capture_short");
    char a[1100], ckpt[1100], out[1100];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(ckpt, sizeof ckpt, "%s/one.h5", dir);
    snprintf(out, sizeof out, "%s/acts.h5", dir);
    fx_store_write(MPI_COMM_WORLD, a, "alpha", 40, 20, 4, 5, 0, NULL);
    ml_model_config c;
    fx_model_config(&c);
    c.n_layers = 1;
    fx_model_write_cfg(MPI_COMM_WORLD, ckpt, &c, 3, 1, NULL);
    ml_h5 *h = NULL;
    const char *args[] = {"capture", ckpt, "--domains", a, "--tokens", "40", "--context", "8", "--out", out, "--hook",
                          "mlp.hook_post,resid_pre,hook_resid_post,attn_out", NULL};
    ML_ASSERT_OK(fx_cmd(ml_cmd_capture, MPI_COMM_WORLD, args));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, ML_CAPTURE_FORMAT, 1, 1, &h));
    char *hooks = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", "hooks", &hooks));
    assert_string_equal(hooks, "[\"blocks.0.mlp.hook_post\",\"blocks.0.hook_resid_pre\",\"blocks.0.hook_resid_post\","
                               "\"blocks.0.hook_attn_out\"]");
    ml_free(hooks);
    assert_int_equal(ml_h5_exists(h, "/hooks/blocks.0.hook_attn_out/acts"), 1);
    ML_ASSERT_OK(ml_h5_close(&h));
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_seeded_plan),
        cmocka_unit_test(test_float16),
        cmocka_unit_test(test_short_names),
    };
    return ml_test_run(argc, argv, "capture", tests, sizeof tests / sizeof tests[0]);
}
