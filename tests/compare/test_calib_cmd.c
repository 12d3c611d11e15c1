/* compare's controls through the full command, on a synthetic lineage with
 * planted ground truth.
 *
 * Lineage: the parent's activations are x_t = sum_k z_tk e_k over F = 160
 * atoms (basis directions e_0..e_159 of a D = 320 space; z fires with
 * probability 0.05, magnitude in [0.5, 1.5)). The child keeps a fraction p
 * of the parent's atoms (the set S: the same direction and the same code on
 * the same token) and replaces the others by new atoms e_{160+k} with
 * independent codes. SAE "replicas" are emulated, not trained: feature i of
 * a replica reads atom i (encoder = decoder = e_atom + 0.01 Gaussian noise,
 * b_enc = -0.1) when the replica "learned" it, else a random unit direction
 * (junk). The seed lottery is balanced, so that the estimator is checked
 * and not the lottery's sampling noise: with u = the atom's position in a
 * random permutation and c = u mod 16, replica 0 of the parent learns c mod
 * 4 != 3, replica 1 of the parent c / 4 != 3, the child (replica 0)
 * (c / 4 + c) mod 4 != 3, the child's replica 1 (c / 4 + 2c) mod 4 != 3: each
 * learns 3/4 of the atoms, independently in exact proportions, also inside
 * S (|S| = pF is a multiple of 16). Then
 *   raw persist    = |L0 and S and LC| / F = (3/4)^2 p   (biased: 0.5625 p)
 *   seed ceiling   = |L0 and L1| / F       = (3/4)^2
 *   null floor     = 0 at tau >= 0.5
 *   normalised     = (persist - floor) / (ceiling - floor) = p.
 * Rows: N = 12288; every SAE trained on [0, 4096) and holds out [4096,
 * 12288), except the child's replica 1 (held out [4096, 10240)): the edge
 * must use [4096, 10240).
 */
#include <limits.h>
#include <math.h>

#include "cmp_test_util.h"
#include "mergelens/compare.h"

#define N 12288
#define F 160
#define D 320
#define HOOK "blocks.0.mlp.hook_post"

static char g_dir[1024];
static int g_perm_pos[F]; /* position u of atom k in the permutation */

/* acts file: x_t = sum_k z_tk e_dir(k); dir (F) atom directions; fires p 0.05 */
static void write_acts(const char *path, const float *z /* (N, F) */, const int *dir) {
    float *x = calloc((size_t)N * D, sizeof(float));
    int32_t *tok = malloc(sizeof(int32_t) * N);
    for (int t = 0; t < N; t++) {
        tok[t] = t % 97;
        for (int k = 0; k < F; k++) x[(size_t)t * D + dir[k]] += z[(size_t)t * F + k];
    }
    cmp_write_acts(path, HOOK, x, tok, N, D, 1024);
    free(x);
    free(tok);
}

/* SAE replica: feature i reads direction dir[i] (+ noise) if learned[i], else junk. */
static void write_sae(const char *path, const int *dir, const int *learned, uint64_t seed, int64_t replica,
                      int64_t replicas, int64_t held_end) {
    ml_sae *s = NULL;
    ML_ASSERT_OK(ml_sae_create(ML_SAE_STANDARD, D, F, 0, &s));
    memset(s->params, 0, sizeof(float) * s->n_params);
    ml_rng r;
    ml_rng_seed(&r, seed, 3);
    for (int i = 0; i < F; i++) {
        float *w = s->W_enc_t + (size_t)i * D;
        double n2 = 0;
        for (int k = 0; k < D; k++) {
            w[k] = learned[i] ? 0.01f * ml_rng_normal(&r) : ml_rng_normal(&r);
            if (learned[i] && k == dir[i]) w[k] += 1.0f;
            n2 += (double)w[k] * w[k];
        }
        for (int k = 0; k < D; k++) w[k] /= (float)sqrt(n2);
        memcpy(s->W_dec + (size_t)i * D, w, sizeof(float) * D);
        s->b_enc[i] = learned[i] ? -0.1f : 0.0f;
    }
    snprintf(s->hook_name, sizeof s->hook_name, "%s", HOOK);
    ML_ASSERT_OK(ml_sae_write(MPI_COMM_WORLD, path, s, NULL, NULL, NULL));
    ml_sae_destroy(&s);
    if (replicas <= 0) return;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open_rw(MPI_COMM_WORLD, path, NULL, 0, INT_MAX, &h));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "replica", replica));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "replicas", replicas));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "train_row_start", 0));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "train_row_end", 4096));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "heldout_row_start", 4096));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "heldout_row_end", held_end));
    ML_ASSERT_OK(ml_h5_close(&h));
}

typedef struct {
    char parent_sae[1100], child_sae[1100], parent_acts[1100], child_acts[1100], out[1100], out_self[1100];
} lineage;

/* Build the lineage of sharing fraction p (percent); replicas: 2 per model (0 = no replica attributes) */
static void make_lineage(int p_pct, int replicas, lineage *L) {
    snprintf(L->parent_sae, sizeof L->parent_sae, "%s/p%d_parent.h5", g_dir, p_pct);
    snprintf(L->child_sae, sizeof L->child_sae, "%s/p%d_child.h5", g_dir, p_pct);
    snprintf(L->parent_acts, sizeof L->parent_acts, "%s/p%d_acts_parent.h5", g_dir, p_pct);
    snprintf(L->child_acts, sizeof L->child_acts, "%s/p%d_acts_child.h5", g_dir, p_pct);
    snprintf(L->out, sizeof L->out, "%s/p%d_out.h5", g_dir, p_pct);
    snprintf(L->out_self, sizeof L->out_self, "%s/p%d_self.h5", g_dir, p_pct);
    ml_rng r;
    ml_rng_seed(&r, 1000 + (uint64_t)p_pct, 0);
    int perm[F];
    for (int k = 0; k < F; k++) perm[k] = k;
    for (int k = F - 1; k > 0; k--) {
        int j = (int)ml_rng_below(&r, (uint64_t)k + 1), t = perm[k];
        perm[k] = perm[j];
        perm[j] = t;
    }
    for (int u = 0; u < F; u++) g_perm_pos[perm[u]] = u;
    int nshared = F * p_pct / 100;
    float *zp = malloc(sizeof(float) * (size_t)N * F), *zc = malloc(sizeof(float) * (size_t)N * F);
    for (size_t e = 0; e < (size_t)N * F; e++) {
        zp[e] = ml_rng_uniform(&r) < 0.05 ? (float)(0.5 + ml_rng_uniform(&r)) : 0.0f;
        zc[e] = ml_rng_uniform(&r) < 0.05 ? (float)(0.5 + ml_rng_uniform(&r)) : 0.0f;
    }
    int dir_p[F], dir_c[F];
    for (int k = 0; k < F; k++) {
        int shared = g_perm_pos[k] < nshared;
        dir_p[k] = k;
        dir_c[k] = shared ? k : F + k;
        if (shared)
            for (int t = 0; t < N; t++) zc[(size_t)t * F + k] = zp[(size_t)t * F + k];
    }
    write_acts(L->parent_acts, zp, dir_p);
    write_acts(L->child_acts, zc, dir_c);
    int lp0[F], lp1[F], lc0[F], lc1[F];
    for (int k = 0; k < F; k++) {
        int c = g_perm_pos[k] % 16;
        lp0[k] = c % 4 != 3;
        lp1[k] = c / 4 != 3;
        lc0[k] = (c / 4 + c) % 4 != 3;
        lc1[k] = (c / 4 + 2 * c) % 4 != 3;
    }
    write_sae(L->parent_sae, dir_p, lp0, 10, 0, replicas, 12288);
    write_sae(L->child_sae, dir_c, lc0, 20, 0, replicas, 12288);
    if (replicas) {
        char rp[1200];
        ML_ASSERT_OK(ml_sae_replica_path(L->parent_sae, 1, rp, sizeof rp));
        write_sae(rp, dir_p, lp1, 11, 1, replicas, 12288);
        ML_ASSERT_OK(ml_sae_replica_path(L->child_sae, 1, rp, sizeof rp));
        write_sae(rp, dir_c, lc1, 21, 1, replicas, 10240);
    }
    free(zp);
    free(zc);
}

static void read_f64(ml_h5 *h, const char *g, const char *name, double *v, hsize_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g, name);
    hsize_t d[1] = {n};
    ML_ASSERT_OK(ml_h5_read_tensor(h, path, ML_F64, 1, d, v));
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "%s", ml_test_dir("compare_calib"));
    return 0;
}

#define NT 5
static const char *g_q[] = {"persist", "persist_lo", "persist_hi", "emerge", "emerge_lo", "emerge_hi", "disappear",
                            "disappear_lo", "disappear_hi", "ceiling", "ceiling_lo", "ceiling_hi", "floor",
                            "floor_lo", "floor_hi", "normalised", "normalised_lo", "normalised_hi"};
#define NQ (sizeof g_q / sizeof g_q[0])

static void read_calib(const char *path, MPI_Comm comm, double v[NQ][NT]) {
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(comm, path, "mergelens.tracking", 1, 1, &h));
    for (size_t q = 0; q < NQ; q++) read_f64(h, "/edges/parent__child/calibration", g_q[q], v[q], NT);
    ML_ASSERT_OK(ml_h5_close(&h));
}

/* The calibrated measure recovers p within its interval; the raw share is
 * (3/4)^2 p; the floor is 0; the rows are the held-out intersection; the
 * same numbers on one rank. */
static void test_planted_p(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const int ps[3] = {20, 50, 80};
    for (int pi = 0; pi < 3; pi++) {
        lineage L;
        make_lineage(ps[pi], 2, &L);
        const char *args[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae,
                              "--acts-b", L.child_acts, "--out", L.out, "--name-a", "parent", "--name-b", "child",
                              "--chunk-rows", "2000", "--logit", "false", NULL};
        ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args));
        double v[NQ][NT];
        read_calib(L.out, MPI_COMM_WORLD, v);
        ml_h5 *h = NULL;
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, L.out, "mergelens.tracking", 1, 1, &h));
        int64_t r0 = 0, r1 = 0, rp = 0, rc = 0, nb = 0, boot = 0;
        const char *g = "/edges/parent__child/calibration";
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "rows_start", &r0));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "rows_end", &r1));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "replicas_parent", &rp));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "replicas_child", &rc));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "n_blocks", &nb));
        ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "bootstrap", &boot));
        char *src = NULL;
        ML_ASSERT_OK(ml_h5_get_attr_str(h, g, "ceiling_source", &src));
        assert_non_null(strstr(src, "parent replica 0 vs parent replica 1"));
        ml_free(src);
        double shares[4], tau[NT], fs[F], cs[F];
        read_f64(h, "/edges/parent__child", "shares", shares, 4);
        read_f64(h, g, "tau", tau, NT);
        hsize_t d1[1] = {F};
        float f32[F];
        ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/parent__child/activation/floor_score", ML_F32, 1, d1, f32));
        for (int i = 0; i < F; i++) fs[i] = f32[i];
        ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/parent__child/decoder_cos/ceiling_score", ML_F32, 1, d1, f32));
        for (int i = 0; i < F; i++) cs[i] = f32[i];
        ML_ASSERT_OK(ml_h5_close(&h));
        assert_int_equal(r0, 4096);
        assert_int_equal(r1, 10240);
        assert_int_equal(rp, 2);
        assert_int_equal(rc, 2);
        assert_int_equal(nb, (10240 - 4096) / 256);
        assert_int_equal(boot, 200);
        double p = ps[pi] / 100.0;
        double fmax = 0;
        int dec_hi = 0;
        for (int i = 0; i < F; i++) {
            fmax = fmax > fs[i] ? fmax : fs[i];
            dec_hi += cs[i] > 0.9;
        }
        if (rank == 0)
            print_message("p = %.1f: raw persist %.4f (expected %.4f), at tau 0.8: persist %.4f [%.4f, %.4f], ceiling "
                          "%.4f [%.4f, %.4f], floor %.4f, normalised %.4f [%.4f, %.4f]; largest floor score %.3f\n",
                          p, shares[0], 0.5625 * p, v[0][3], v[1][3], v[2][3], v[9][3], v[10][3], v[11][3], v[12][3],
                          v[15][3], v[16][3], v[17][3], fmax);
        ML_ASSERT_CLOSE(shares[0], 0.5625 * p, 1e-12); /* the raw share is biased by the seed lottery */
        assert_true(fabs(shares[0] - p) > 0.05);
        assert_int_equal(dec_hi, 90); /* decoder ceiling: the 90 atoms both parent replicas learned */
        for (int t = 0; t < NT; t++) {
            ML_ASSERT_CLOSE(tau[t], 0.5 + 0.1 * t, 1e-12);
            assert_true(v[15][t] - 1e-9 <= p + 1e-12 && p <= v[17][t] + 1e-9 && v[16][t] - 1e-9 <= p); /* recovers p */
            assert_true(!(v[1][t] <= p && p <= v[2][t]));     /* the raw share's interval misses p */
            ML_ASSERT_CLOSE(v[9][t], 0.5625, 1e-12);          /* ceiling = (3/4)^2 */
            assert_true(v[12][t] == 0 && v[14][t] == 0);      /* floor 0 */
            ML_ASSERT_CLOSE(v[6][t], 1 - v[0][t], 1e-12);     /* disappear = 1 - persist */
            assert_true(v[1][t] <= v[0][t] && v[0][t] <= v[2][t]);
        }
        assert_true(fmax < 0.2);
        /* the same numbers from one rank */
        if (pi == 1 && rank == 0) {
            const char *a1[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae,
                                "--acts-b", L.child_acts, "--out", L.out_self, "--name-a", "parent", "--name-b",
                                "child", "--chunk-rows", "3000", "--logit", "false", NULL};
            ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_SELF, a1));
            double w[NQ][NT];
            read_calib(L.out_self, MPI_COMM_SELF, w);
            for (size_t q = 0; q < NQ; q++)
                for (int t = 0; t < NT; t++)
                    if (!(w[q][t] == v[q][t]))
                        fail_msg("%s[%d]: %.17g on 1 rank vs %.17g", g_q[q], t, w[q][t], v[q][t]);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        /* stable features only (found in both parent replicas): the ceiling is 1 by construction */
        if (pi == 0) {
            const char *a2[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae,
                                "--acts-b", L.child_acts, "--out", L.out, "--name-a", "parent", "--name-b", "child",
                                "--logit", "false", "--stable-min", "2", "--bootstrap", "20", NULL};
            ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a2));
            double s[NQ][NT];
            read_calib(L.out, MPI_COMM_WORLD, s);
            for (int t = 0; t < NT; t++) {
                ML_ASSERT_CLOSE(s[9][t], 1.0, 1e-12);
                /* stable parent atoms (L0 and L1) in S that the child learned: 7 of 9 classes */
                ML_ASSERT_CLOSE(s[0][t], p * 7.0 / 9.0, 1e-12);
            }
            const char *a3[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae,
                                "--acts-b", L.child_acts, "--out", L.out, "--stable-min", "3", NULL};
            ML_ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a3), ML_ERR_ARG, "needs at least 3 replicas");
        }
    }
}

/* The null floor on unrelated tokens: codes i.i.d. over tokens, the same SAE
 * and activations on both sides (persist 1). The floor's mean best score is
 * E[max of F Pearson r] of independent series of n tokens, computed from
 * the exact null density of r, f(r) ~ (1 - r^2)^((n - 4) / 2). */
static double expected_max_r(int64_t n, int64_t Fb) {
    const int M = 200001;
    double lo = -0.25, hi = 0.25, h = (hi - lo) / (M - 1), *G = malloc(sizeof(double) * M), tot = 0;
    for (int k = 0; k < M; k++) {
        double r = lo + h * k;
        G[k] = exp(0.5 * (double)(n - 4) * log1p(-r * r));
        tot += G[k];
    }
    double acc = 0, e = 0;
    for (int k = 0; k < M; k++) {
        acc += G[k] / tot;
        G[k] = acc; /* CDF */
    }
    /* E[X] = int_0^hi (1 - G^F) dr - int_lo^0 G^F dr */
    for (int k = 0; k < M; k++) {
        double r = lo + h * k, gf = pow(G[k], (double)Fb);
        e += (r >= 0 ? 1 - gf : -gf) * h;
    }
    free(G);
    return e;
}

static void test_null_floor(void **state) {
    (void)state;
    char sae[1100], acts[1100], out[1100];
    snprintf(sae, sizeof sae, "%s/floor_sae.h5", g_dir);
    snprintf(acts, sizeof acts, "%s/floor_acts.h5", g_dir);
    snprintf(out, sizeof out, "%s/floor_out.h5", g_dir);
    ml_rng r;
    ml_rng_seed(&r, 77, 0);
    float *z = malloc(sizeof(float) * (size_t)N * F);
    for (size_t e = 0; e < (size_t)N * F; e++) z[e] = ml_rng_uniform(&r) < 0.3 ? (float)(0.5 + ml_rng_uniform(&r)) : 0.0f;
    int dir[F], learned[F];
    for (int k = 0; k < F; k++) dir[k] = k, learned[k] = 1;
    write_acts(acts, z, dir);
    write_sae(sae, dir, learned, 5, 0, 0, 0); /* no replica / row attributes */
    free(z);
    const char *args[] = {"compare", "--a", sae, "--acts-a", acts, "--b", sae, "--acts-b", acts, "--out", out,
                          "--name-a", "x", "--name-b", "y", "--logit", "false", "--bootstrap", "50", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, out, "mergelens.tracking", 1, 1, &h));
    float fs[F];
    hsize_t d1[1] = {F};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/x__y/activation/floor_score", ML_F32, 1, d1, fs));
    double ceil[NT], norm[NT], persist[NT];
    read_f64(h, "/edges/x__y/calibration", "ceiling", ceil, NT);
    read_f64(h, "/edges/x__y/calibration", "normalised", norm, NT);
    read_f64(h, "/edges/x__y/calibration", "persist", persist, NT);
    char *src = NULL, *note = NULL;
    int64_t r0 = -1, r1 = -1, held = -1;
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/edges/x__y/calibration", "ceiling_source", &src));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/edges/x__y/calibration", "rows_note", &note));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/edges/x__y/calibration", "rows_start", &r0));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/edges/x__y/calibration", "rows_end", &r1));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/edges/x__y/calibration", "rows_heldout", &held));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_string_equal(src, "none (no replicas)");
    assert_non_null(strstr(note, "no SAE records its training or held-out rows"));
    assert_true(r0 == 0 && r1 == N && held == 0);
    ml_free(src);
    ml_free(note);
    double mean = 0;
    for (int i = 0; i < F; i++) mean += fs[i] / F;
    double ref = expected_max_r(N, F);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0)
        print_message("null floor: mean best r %.5f over %d features vs analytic E[max of %d r] = %.5f (n = %d)\n",
                      mean, F, F, ref, N);
    assert_true(fabs(mean - ref) < 0.05 * ref);
    for (int t = 0; t < NT; t++) {
        assert_true(persist[t] == 1.0);
        assert_true(isnan(ceil[t]) && isnan(norm[t]));
    }
}

/* Held-out rows: an empty intersection is refused naming the files, unless --allow_train_rows. */
static void test_heldout_refusal(void **state) {
    (void)state;
    lineage L;
    make_lineage(50, 2, &L);
    /* the parent now holds out only [0, 4096): disjoint from the child's [4096, ...) */
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open_rw(MPI_COMM_WORLD, L.parent_sae, NULL, 0, INT_MAX, &h));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "heldout_row_start", 0));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "heldout_row_end", 4096));
    ML_ASSERT_OK(ml_h5_close(&h));
    snprintf(L.out, sizeof L.out, "%s/refused.h5", g_dir);
    const char *args[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae, "--acts-b",
                          L.child_acts, "--out", L.out, "--logit", "false", "--bootstrap", "10", NULL};
    ML_ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args), ML_ERR_ARG, "no row of the activations is held out");
    ML_ASSERT_FAILS_ALL(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, args), ML_ERR_ARG, L.parent_sae);
    assert_false(ml_file_exists(L.out));
    const char *a2[] = {"compare", "--a", L.parent_sae, "--acts-a", L.parent_acts, "--b", L.child_sae, "--acts-b",
                        L.child_acts, "--out", L.out, "--logit", "false", "--bootstrap", "10", "--allow-train-rows",
                        "true", NULL};
    ML_ASSERT_OK(run_cmd(ml_cmd_compare, MPI_COMM_WORLD, a2));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, L.out, "mergelens.tracking", 1, 1, &h));
    int64_t r0 = -1, r1 = -1;
    char g[256];
    snprintf(g, sizeof g, "/edges/p50_parent__p50_child/calibration");
    ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "rows_start", &r0));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, g, "rows_end", &r1));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_true(r0 == 0 && r1 == N);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_planted_p, setup),
        cmocka_unit_test(test_null_floor),
        cmocka_unit_test(test_heldout_refusal),
    };
    return ml_test_run(argc, argv, "compare_calib", tests, sizeof tests / sizeof tests[0]);
}
