/* compare / track through the full commands on planted SAE + activation files.
 *
 * Data: D = 32 basis directions u_k; token t has coefficients c_tk >= 0
 * (each fires with probability 0.15, never for the dead directions), the
 * activations are x_t = sum_k c_tk u_k (model "base"), and the other models'
 * activations scale each coefficient by (1 + 0.01 noise) (fine-tunes keep
 * the features, with small changes). Every SAE has F = 24 unit encoder /
 * decoder rows, each a basis direction, so its code of feature i is
 * c_t,dir(i). SAE "base" reads u_0..u_23 (u_23 never fires: dead); SAE "ft"
 * reads u_0..u_17 under a permutation plus u_24..u_29 (u_29 dead), so base
 * features 0..17 persist, 18..22 disappear, and ft's u_24..u_28 features
 * emerge. SAE "merge" reads ft's first 20 rows' directions permuted again
 * plus u_30, u_31 and two further dead/absent directions.
 */
#include <math.h>

#include "cmp_test_util.h"
#include "mergelens/compare.h"

#define N 2000
#define D 32
#define F 24
#define HOOK "blocks.0.mlp.hook_post"

static float g_c[N * D];  /* base coefficients */
static int32_t g_tok[N];
static int g_dir[3][F];   /* direction read by feature i of SAE base / ft / merge */
static char g_dir_s[1024];

static void make_data(void) {
    ml_rng r;
    ml_rng_seed(&r, 7, 0);
    for (int t = 0; t < N; t++) {
        g_tok[t] = (int32_t)ml_rng_below(&r, 50);
        for (int k = 0; k < D; k++) {
            int dead = k == 23 || k == 29;
            g_c[t * D + k] = (!dead && ml_rng_uniform(&r) < 0.15) ? (float)(0.5 + ml_rng_uniform(&r)) : 0.0f;
        }
    }
    /* base: identity */
    for (int i = 0; i < F; i++) g_dir[0][i] = i;
    /* ft: base directions 0..17 at permuted slots, new directions 24..29 elsewhere */
    int slot[F];
    for (int i = 0; i < F; i++) slot[i] = i;
    for (int i = F - 1; i > 0; i--) {
        int j = (int)ml_rng_below(&r, (uint64_t)i + 1), t = slot[i];
        slot[i] = slot[j];
        slot[j] = t;
    }
    for (int i = 0; i < 18; i++) g_dir[1][slot[i]] = i;
    for (int i = 18; i < F; i++) g_dir[1][slot[i]] = 24 + (i - 18);
    /* merge: ft's directions of slots' first 20 features (dirs 0..17, 24, 25) reversed order, then 30, 31, 23, 29 */
    int m = 0;
    for (int i = F - 1; i >= 0; i--)
        if (g_dir[1][i] < 18 || g_dir[1][i] == 24 || g_dir[1][i] == 25) g_dir[2][m++] = g_dir[1][i];
    g_dir[2][m++] = 30;
    g_dir[2][m++] = 31;
    g_dir[2][m++] = 23;
    g_dir[2][m++] = 29;
    assert_int_equal(m, F);
    (void)g_dir_s;
}

static void write_acts(const char *path, uint64_t noise_seed, int change_token_row) {
    float *x = malloc(sizeof(float) * N * D);
    int32_t *tok = malloc(sizeof(int32_t) * N);
    ml_rng r;
    ml_rng_seed(&r, noise_seed, 1);
    for (int t = 0; t < N; t++) {
        tok[t] = g_tok[t];
        for (int k = 0; k < D; k++)
            x[t * D + k] = g_c[t * D + k] * (noise_seed ? (float)(1.0 + 0.01 * ml_rng_normal(&r)) : 1.0f);
    }
    if (change_token_row >= 0) tok[change_token_row] = 99;
    cmp_write_acts(path, HOOK, x, tok, N, D, 256);
    free(x);
    free(tok);
}

static void write_sae(const char *path, const int *dir, int d_in) {
    ml_sae *s = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, d_in, F, 0, &s));
    memset(s->params, 0, sizeof(float) * s->n_params);
    for (int i = 0; i < F; i++) {
        s->W_enc_t[(size_t)i * d_in + dir[i] % d_in] = 1.0f;
        s->W_dec[(size_t)i * d_in + dir[i] % d_in] = 1.0f;
    }
    snprintf(s->hook_name, sizeof s->hook_name, "%s", HOOK);
    ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, path, s, NULL, NULL, NULL));
    ml_sae_destroy(&s);
}

static char g_dir_path[1024];
static char p_sae[3][1100], p_acts[3][1100], p_bad_tok[1100], p_bad_sae[1100];

static int setup(void **state) {
    (void)state;
    snprintf(g_dir_path, sizeof g_dir_path, "%s", ml_test_dir("compare"));
    make_data();
    const char *names[3] = {"base", "ft", "merge"};
    for (int m = 0; m < 3; m++) {
        snprintf(p_sae[m], sizeof p_sae[m], "%s/sae_%s.h5", g_dir_path, names[m]);
        snprintf(p_acts[m], sizeof p_acts[m], "%s/acts_%s.h5", g_dir_path, names[m]);
        write_sae(p_sae[m], g_dir[m], D);
        write_acts(p_acts[m], (uint64_t)m, -1);
    }
    snprintf(p_bad_tok, sizeof p_bad_tok, "%s/acts_badtok.h5", g_dir_path);
    write_acts(p_bad_tok, 5, 1234);
    snprintf(p_bad_sae, sizeof p_bad_sae, "%s/sae_d16.h5", g_dir_path);
    write_sae(p_bad_sae, g_dir[1], 16);
    return 0;
}

static void read_i32(ml_h5 *h, const char *name, int32_t *v, hsize_t n) {
    hsize_t d[1] = {n};
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_I32, 1, d, v));
}
static void read_u8(ml_h5 *h, const char *name, uint8_t *v, hsize_t n) {
    hsize_t d[1] = {n};
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_U8, 1, d, v));
}
static void read_f32(ml_h5 *h, const char *name, float *v, hsize_t n) {
    hsize_t d[1] = {n};
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_F32, 1, d, v));
}

/* expected statuses of edge (parent model p, child model c) from the planted directions */
static void expected(int p, int c, uint8_t *ps, int32_t *pp, uint8_t *cs, int32_t *cp) {
    for (int i = 0; i < F; i++) {
        int d = g_dir[p][i], dead = d == 23 || d == 29, j = -1;
        for (int k = 0; k < F; k++)
            if (g_dir[c][k] == d) j = k;
        ps[i] = dead ? ML_FEAT_DEAD : j >= 0 ? ML_FEAT_PERSIST : ML_FEAT_DISAPPEAR;
        pp[i] = dead ? -1 : j;
    }
    for (int k = 0; k < F; k++) {
        int d = g_dir[c][k], dead = d == 23 || d == 29, i = -1;
        for (int q = 0; q < F; q++)
            if (g_dir[p][q] == d) i = q;
        cs[k] = dead ? ML_FEAT_DEAD : i >= 0 ? ML_FEAT_PERSIST : ML_FEAT_EMERGE;
        cp[k] = dead ? -1 : i;
    }
}

static void check_edge(ml_h5 *h, const char *edge, int p, int c, float *score_out) {
    uint8_t ps[F], cs[F], eps[F], ecs[F];
    int32_t pp[F], cp[F], epp[F], ecp[F];
    float sc[F];
    char name[256];
    expected(p, c, eps, epp, ecs, ecp);
    snprintf(name, sizeof name, "/edges/%s/parent_status", edge);
    read_u8(h, name, ps, F);
    snprintf(name, sizeof name, "/edges/%s/child_status", edge);
    read_u8(h, name, cs, F);
    snprintf(name, sizeof name, "/edges/%s/parent_partner", edge);
    read_i32(h, name, pp, F);
    snprintf(name, sizeof name, "/edges/%s/child_partner", edge);
    read_i32(h, name, cp, F);
    snprintf(name, sizeof name, "/edges/%s/parent_score", edge);
    read_f32(h, name, sc, F);
    for (int i = 0; i < F; i++) {
        assert_int_equal(ps[i], eps[i]);
        assert_int_equal(cs[i], ecs[i]);
        if (eps[i] == ML_FEAT_PERSIST) {
            assert_int_equal(pp[i], epp[i]);
            assert_true(sc[i] > 0.99f);
        } else {
            assert_true(sc[i] < 0.3f); /* independent firing: no partner near tau */
        }
        if (ecs[i] == ML_FEAT_PERSIST) assert_int_equal(cp[i], ecp[i]);
        if (eps[i] == ML_FEAT_DEAD) assert_int_equal(pp[i], -1);
        if (ecs[i] == ML_FEAT_DEAD) assert_int_equal(cp[i], -1);
    }
    /* decoder cosine: the planted permutation exactly */
    snprintf(name, sizeof name, "/edges/%s/decoder_cos/a_partner", edge);
    read_i32(h, name, pp, F);
    snprintf(name, sizeof name, "/edges/%s/decoder_cos/a_score", edge);
    read_f32(h, name, sc, F);
    for (int i = 0; i < F; i++)
        if (epp[i] >= 0) {
            assert_int_equal(pp[i], epp[i]);
            ML_ASSERT_CLOSE(sc[i], 1.0, 1e-6);
        }
    if (score_out) {
        snprintf(name, sizeof name, "/edges/%s/parent_score", edge);
        read_f32(h, name, score_out, F);
        snprintf(name, sizeof name, "/edges/%s/child_score", edge);
        read_f32(h, name, score_out + F, F);
    }
}

static void test_compare_planted(void **state) {
    (void)state;
    char out[1200], out_self[1200];
    snprintf(out, sizeof out, "%s/tracking/base__ft.h5", g_dir_path);
    const char *args[] = {"compare", "--a", p_sae[0], "--acts-a", p_acts[0], "--b", p_sae[1], "--acts-b", p_acts[1],
                          "--out", out, "--chunk-rows", "300", "--full-matrix", "--path", "sparse", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args));
    ml_h5 *h = NULL;
    float sw[2 * F], ss[2 * F];
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, "mergelens.tracking", 1, 1, &h));
    check_edge(h, "sae_base__sae_ft", 0, 1, sw);
    int64_t counts[6], nt = 0;
    hsize_t d6[1] = {6};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/sae_base__sae_ft/counts", ML_I64, 1, d6, counts));
    int64_t want[6] = {18, 5, 1, 18, 5, 1};
    for (int k = 0; k < 6; k++) assert_int_equal(counts[k], want[k]);
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/edges/sae_base__sae_ft", "n_tokens", &nt));
    assert_int_equal(nt, N);
    assert_int_equal(ml_h5_exists(h, "/edges/sae_base__sae_ft/token_profile/a_score"), 1);
    assert_int_equal(ml_h5_exists(h, "/summary/counts"), 1);
    /* full matrix: r against a naive Pearson of the planted codes for a few pairs */
    float *R = malloc(sizeof(float) * F * F);
    hsize_t dr[2] = {F, F};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/sae_base__sae_ft/activation/r", ML_F32, 2, dr, R));
    ML_ASSERT_OK(ml_h5_close(&h));
    /* naive: base feature i = c_t,dir0(i) (no noise), ft feature j = c_t,dir1(j) * (1 + 0.01 noise_t) */
    float *xb = malloc(sizeof(float) * N * D);
    ml_rng r;
    ml_rng_seed(&r, 1, 1);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < D; k++) xb[t * D + k] = g_c[t * D + k] * (float)(1.0 + 0.01 * ml_rng_normal(&r));
    double maxd = 0;
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            int a = g_dir[0][i], b = g_dir[1][j];
            double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
            for (int t = 0; t < N; t++) {
                double u = g_c[t * D + a], v = xb[t * D + b];
                sa += u, sb += v, saa += u * u, sbb += v * v, sab += u * v;
            }
            double va = N * saa - sa * sa, vb = N * sbb - sb * sb;
            double rr = (va <= 1e-9 * N * saa || vb <= 1e-9 * N * sbb || va == 0 || vb == 0)
                            ? 0
                            : (N * sab - sa * sb) / sqrt(va * vb);
            double dd = fabs(rr - R[i * F + j]);
            if (dd > maxd) maxd = dd;
        }
    assert_true(maxd < 1e-5);
    free(xb);
    free(R);

    /* the same command on one rank (rank 0 alone) gives the same answer */
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(out_self, sizeof out_self, "%s/tracking/self.h5", g_dir_path);
    if (rank == 0) {
        const char *a2[] = {"compare", "--a", p_sae[0], "--acts-a", p_acts[0], "--b", p_sae[1], "--acts-b", p_acts[1],
                            "--out", out_self, "--chunk-rows", "300", "--path", "sparse", NULL};
        ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_SELF, a2));
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out_self, "mergelens.tracking", 1, 1, &h));
        check_edge(h, "sae_base__sae_ft", 0, 1, ss);
        ML_ASSERT_OK(ml_h5_close(&h));
        for (int i = 0; i < 2 * F; i++) assert_true(fabsf(sw[i] - ss[i]) <= 1e-6f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_track_lineage(void **state) {
    (void)state;
    char out[1200], saes[4000], acts[4000];
    snprintf(out, sizeof out, "%s/tracking/summary.h5", g_dir_path);
    snprintf(saes, sizeof saes, "base=%s,ft=%s,merge=%s", p_sae[0], p_sae[1], p_sae[2]);
    snprintf(acts, sizeof acts, "base=%s,ft=%s,merge=%s", p_acts[0], p_acts[1], p_acts[2]);
    const char *args[] = {"track", "--edges", "base:ft,ft:merge,base:merge", "--saes", saes, "--acts", acts, "--out",
                          out, "--chunk-rows", "256", "--flow-window", "40", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_track, MPI_COMM_WORLD, args));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, "mergelens.tracking", 1, 1, &h));
    check_edge(h, "base__ft", 0, 1, NULL);
    check_edge(h, "ft__merge", 1, 2, NULL);
    check_edge(h, "base__merge", 0, 2, NULL);
    int64_t counts[3 * 6];
    hsize_t dc[2] = {3, 6};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/summary/counts", ML_I64, 2, dc, counts));
    /* base->ft 18/5/1, 18/5/1; ft->merge: ft dirs 0..17,24,25 kept (20), 24..28 minus 24,25 gone (3), 29 dead;
     * merge 20 persist, 30,31 emerge, 23 and 29 dead; base->merge: 18 kept, 5 gone, 1 dead; 18, 4 (24,25,30,31), 2 */
    int64_t want[18] = {18, 5, 1, 18, 5, 1, 20, 3, 1, 20, 2, 2, 18, 5, 1, 18, 4, 2};
    for (int k = 0; k < 18; k++) assert_int_equal(counts[k], want[k]);
    /* flow traces base -> ft -> merge: every base feature of dirs 0..17 chains through its planted partners */
    int rk;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    ML_ASSERT_OK(ml_h5_shape(h, "/traces/base__ft__merge/features", &rk, dims, &t));
    assert_int_equal(rk, 2);
    assert_int_equal((int)dims[1], 3);
    int32_t *tr = malloc(sizeof(int32_t) * dims[0] * 3);
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/traces/base__ft__merge/features", ML_I32, 2, dims, tr));
    int full = 0;
    for (hsize_t r = 0; r < dims[0]; r++) {
        int a = tr[r * 3], b = tr[r * 3 + 1], c = tr[r * 3 + 2];
        if (a >= 0 && b >= 0) assert_int_equal(g_dir[0][a], g_dir[1][b]);
        if (b >= 0 && c >= 0) assert_int_equal(g_dir[1][b], g_dir[2][c]);
        full += a >= 0 && b >= 0 && c >= 0;
    }
    assert_int_equal(full, 18);
    free(tr);
    float sw[2 * F], ss[2 * F];
    read_f32(h, "/edges/ft__merge/parent_score", sw, F);
    read_f32(h, "/edges/ft__merge/child_score", sw + F, F);
    ML_ASSERT_OK(ml_h5_close(&h));
    /* the same command on rank 0 alone gives the same scores (1, 2 and 4 ranks vs 1) */
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        char out_self[1200];
        snprintf(out_self, sizeof out_self, "%s/tracking/summary_self.h5", g_dir_path);
        args[8] = out_self;
        ML_ASSERT_OK(run_cmd(ml_cmd_track, MPI_COMM_SELF, args));
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out_self, "mergelens.tracking", 1, 1, &h));
        read_f32(h, "/edges/ft__merge/parent_score", ss, F);
        read_f32(h, "/edges/ft__merge/child_score", ss + F, F);
        int64_t c2[3 * 6];
        ML_ASSERT_OK(ml_h5_read_tensor(h, "/summary/counts", ML_I64, 2, dc, c2));
        for (int k = 0; k < 18; k++) assert_int_equal(c2[k], want[k]);
        ML_ASSERT_OK(ml_h5_close(&h));
        for (int i = 0; i < 2 * F; i++) assert_true(fabsf(sw[i] - ss[i]) <= 1e-6f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* ---- logit-weight cosine through the models' unembeddings ---------------- */
static void write_model(const char *path, uint64_t seed, ml_model **out) {
    ml_model_config c;
    ml_model_config_default(&c);
    c.d_model = 8;
    c.d_mlp = D;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.vocab_size = 40;
    c.max_context = 16;
    ML_ASSERT_OK(ml_model_create(&c, out));
    ML_ASSERT_OK(ml_model_init(*out, seed));
    const ml_tensor *nw;
    ML_ASSERT_OK(ml_model_lookup(*out, "model.norm.weight", &nw));
    for (size_t k = 0; k < nw->numel; k++) (*out)->params[nw->offset + k] = 0.5f + 0.1f * (float)k; /* not ones */
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_model_config_save(h, &c));
    ML_ASSERT_OK(ml_model_save_params(h, *out));
    ML_ASSERT_OK(ml_h5_close(&h));
}

/* Logit vectors (F, V) of the planted SAE decoder rows (unit basis directions dir[i]) through model m, naively. */
static void naive_logits(const ml_model *m, const int *dir, double *L) {
    const ml_tensor *lm, *nw, *dn;
    ML_ASSERT_OK(ml_model_lookup(m, "lm_head.weight", &lm));
    ML_ASSERT_OK(ml_model_lookup(m, "model.norm.weight", &nw));
    ML_ASSERT_OK(ml_model_lookup(m, "model.layers.0.mlp.down_proj.weight", &dn));
    const int V = m->cfg.vocab_size, Dm = m->cfg.d_model;
    const float *U = m->params + lm->offset, *w = m->params + nw->offset, *P = m->params + dn->offset;
    for (int i = 0; i < F; i++) {
        double u[8];
        for (int e = 0; e < Dm; e++) u[e] = (double)P[e * D + dir[i]] * w[e]; /* down . unit vector = a column */
        for (int v = 0; v < V; v++) {
            double s = 0;
            for (int e = 0; e < Dm; e++) s += (double)U[v * Dm + e] * u[e];
            L[i * V + v] = s;
        }
    }
}

static void test_compare_logit(void **state) {
    (void)state;
    char pm[2][1200], ps[2][1200], out[1200], out2[1200], name[256];
    ml_model *m[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        snprintf(pm[k], sizeof pm[k], "%s/model_%d.h5", g_dir_path, k);
        snprintf(ps[k], sizeof ps[k], "%s/sae_logit_%d.h5", g_dir_path, k);
        write_model(pm[k], 100 + (uint64_t)k, &m[k]);
        ml_sae *s = NULL; /* the base / ft planted SAEs, recording their model */
        ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, D, F, 0, &s));
        memset(s->params, 0, sizeof(float) * s->n_params);
        for (int i = 0; i < F; i++) s->W_enc_t[(size_t)i * D + g_dir[k][i]] = s->W_dec[(size_t)i * D + g_dir[k][i]] = 1.0f;
        snprintf(s->hook_name, sizeof s->hook_name, "%s", HOOK);
        snprintf(s->model, sizeof s->model, "%s", pm[k]);
        ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, ps[k], s, NULL, NULL, NULL));
        ml_sae_destroy(&s);
    }
    snprintf(out, sizeof out, "%s/tracking/logit.h5", g_dir_path);
    const char *args[] = {"compare", "--a", ps[0], "--acts-a", p_acts[0], "--b", ps[1], "--acts-b", p_acts[1],
                          "--out", out, "--chunk-rows", "500", "--name-a", "a", "--name-b", "b", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args));
    /* naive: explicit V-wide logit vectors, cosine, best partner both ways */
    const int V = m[0]->cfg.vocab_size;
    double *LA = malloc(sizeof(double) * F * V), *LB = malloc(sizeof(double) * F * V);
    naive_logits(m[0], g_dir[0], LA);
    naive_logits(m[1], g_dir[1], LB);
    double cosm[F][F];
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            double ab = 0, aa = 0, bb = 0;
            for (int v = 0; v < V; v++) {
                ab += LA[i * V + v] * LB[j * V + v];
                aa += LA[i * V + v] * LA[i * V + v];
                bb += LB[j * V + v] * LB[j * V + v];
            }
            cosm[i][j] = ab / sqrt(aa * bb);
        }
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, "mergelens.tracking", 1, 1, &h));
    float as[F], bs[F];
    int32_t ap[F], bp[F];
    read_f32(h, "/edges/a__b/logit_cos/a_score", as, F);
    read_f32(h, "/edges/a__b/logit_cos/b_score", bs, F);
    read_i32(h, "/edges/a__b/logit_cos/a_partner", ap, F);
    read_i32(h, "/edges/a__b/logit_cos/b_partner", bp, F);
    double amean = 0, maxd = 0;
    for (int i = 0; i < F; i++) {
        int bi = 0, bj = 0;
        for (int j = 1; j < F; j++) {
            if (cosm[i][j] > cosm[i][bi]) bi = j;
            if (cosm[j][i] > cosm[bj][i]) bj = j;
        }
        assert_int_equal(ap[i], bi);
        assert_int_equal(bp[i], bj);
        maxd = fmax(maxd, fmax(fabs(as[i] - cosm[i][bi]), fabs(bs[i] - cosm[bj][i])));
        amean += cosm[i][bi] / F;
    }
    print_message("logit cosine vs explicit logit vectors: max |diff| %.2e, mean-max %.4f\n", maxd, amean);
    assert_true(maxd < 1e-5);
    double am = 0;
    char *mb = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/edges/a__b/logit_cos", "a_mean", &am));
    ML_ASSERT_CLOSE(am, amean, 1e-5);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/edges/a__b/logit_cos", "model_b", &mb));
    assert_string_equal(mb, pm[1]);
    ml_free(mb);
    ML_ASSERT_OK(ml_h5_close(&h));
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) { /* rank 0 alone: the same logit scores and partners */
        char out_self[1200];
        float s1[F];
        int32_t p1[F];
        snprintf(out_self, sizeof out_self, "%s/tracking/logit_self.h5", g_dir_path);
        args[10] = out_self;
        ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_SELF, args));
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out_self, "mergelens.tracking", 1, 1, &h));
        read_f32(h, "/edges/a__b/logit_cos/a_score", s1, F);
        read_i32(h, "/edges/a__b/logit_cos/a_partner", p1, F);
        ML_ASSERT_OK(ml_h5_close(&h));
        for (int i = 0; i < F; i++) {
            assert_int_equal(p1[i], ap[i]);
            assert_true(fabsf(s1[i] - as[i]) <= 1e-6f);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    /* --model-b overrides the SAE's recorded model: both sides through model 0 */
    snprintf(out2, sizeof out2, "%s/tracking/logit2.h5", g_dir_path);
    const char *a2[] = {"compare", "--a", ps[0], "--acts-a", p_acts[0], "--b", ps[1], "--acts-b", p_acts[1],
                        "--out", out2, "--model-b", pm[0], "--name-a", "a", "--name-b", "b", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a2));
    naive_logits(m[0], g_dir[1], LB);
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out2, "mergelens.tracking", 1, 1, &h));
    read_f32(h, "/edges/a__b/logit_cos/a_score", as, F);
    read_i32(h, "/edges/a__b/logit_cos/a_partner", ap, F);
    for (int i = 0; i < F; i++) { /* same model, same direction: cosine 1 with the planted partner */
        int j = -1;
        for (int k = 0; k < F; k++)
            if (g_dir[1][k] == g_dir[0][i]) j = k;
        if (j >= 0) {
            ML_ASSERT_CLOSE(as[i], 1.0, 1e-5);
            assert_int_equal(ap[i], j);
        }
    }
    snprintf(name, sizeof name, "/edges/a__b/logit_cos");
    ML_ASSERT_OK(ml_h5_get_attr_str(h, name, "model_b", &mb));
    assert_string_equal(mb, pm[0]);
    ml_free(mb);
    ML_ASSERT_OK(ml_h5_close(&h));
    free(LA);
    free(LB);
    ml_model_destroy(&m[0]);
    ml_model_destroy(&m[1]);
}

/* a failure on every rank with the text in the message */
#define ASSERT_FAILS_ALL(call, text)                                                                  \
    do {                                                                                              \
        ml_error_clear();                                                                             \
        int rc_ = (call);                                                                             \
        if (rc_ == ML_OK) fail_msg("%s succeeded", #call);                                            \
        if (!strstr(ml_error_message(), text))                                                        \
            fail_msg("%s: message '%s' lacks '%s'", #call, ml_error_message(), text);                 \
        if (strchr(ml_error_message(), '\n')) fail_msg("message is not one line: %s", ml_error_message()); \
        ml_error_clear();                                                                             \
    } while (0)

static void test_bad_inputs(void **state) {
    (void)state;
    char out[1200], missing[1200];
    snprintf(out, sizeof out, "%s/tracking/bad.h5", g_dir_path);
    snprintf(missing, sizeof missing, "%s/nope.h5", g_dir_path);
    const char *a1[] = {"compare", "--a", p_sae[0], "--acts-a", p_acts[0], "--b", p_sae[1], "--acts-b", p_bad_tok,
                        "--out", out, NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a1), "different tokens (first at row 1234");
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a1), p_bad_tok);
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a1), p_acts[0]);
    const char *a2[] = {"compare", "--a", p_sae[0], "--acts-a", missing, "--b", p_sae[1], "--acts-b", p_acts[1],
                        "--out", out, NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a2), missing);
    const char *a3[] = {"compare", "--a", missing, "--acts-a", p_acts[0], "--b", p_sae[1], "--acts-b", p_acts[1],
                        "--out", out, NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a3), missing);
    const char *a4[] = {"compare", "--a", p_sae[0], "--acts-a", p_acts[0], "--b", p_bad_sae, "--acts-b", p_acts[1],
                        "--out", out, NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a4), "has d_in 16 but the activations");
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a4), p_bad_sae);
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a4), p_acts[1]);
    const char *a5[] = {"track", "--edges", "base:ft", "--saes", "base=x.h5", "--acts", "base=y.h5,ft=z.h5", "--out",
                        out, NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_track, MPI_COMM_WORLD, a5), "model 'ft' of edge base:ft has no --saes entry");
    const char *a6[] = {"track", "--edges", "base-ft", "--saes", "base=x.h5", "--acts", "base=y.h5", "--out", out,
                        NULL};
    ASSERT_FAILS_ALL(run_cmd(ml_cmd_track, MPI_COMM_WORLD, a6), "'base-ft' is not of the form parent:child");
    /* nothing was left behind */
    assert_int_equal(ml_file_exists(out), 0);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_compare_planted, setup),
        cmocka_unit_test(test_track_lineage),
        cmocka_unit_test(test_compare_logit),
        cmocka_unit_test(test_bad_inputs),
    };
    return ml_test_run(argc, argv, "compare", tests, sizeof tests / sizeof tests[0]);
}
