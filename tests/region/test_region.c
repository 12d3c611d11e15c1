/* `mergelens region` against independent references: spectral clustering
 * recovers planted clusters (kernel and command, accuracy exactly 1); the
 * Jacobi eigen-decomposition reconstructs its matrix; the Gram / cosine /
 * distance matrices (whole model and per tensor) equal a naive double loop
 * over the loaded checkpoints; the centroid equals the element-wise mean;
 * interpolation endpoints (alpha 0 and 1) evaluate exactly like the models
 * (and like ml_eval_model of the loaded checkpoints); one rank alone gives
 * the same file as the whole world; models of different shapes fail with a
 * one-line message naming the file and the tensor; `region centroid
 * --exclude` and `region centroid-table` against hand computations. */
#include <math.h>

#include "mergelens/region.h"
#include "ml_test.h"
#include "../train/train_fixture.h"

enum { NL = 3, PER = 3, NM = NL * PER, T = 8, BATCH = 4 };
static char dir[1024], st[2][1200], basep[1200], mp[NM][1200], badp[1200], models_arg[16384];
static const char *dom_names[NL] = {"stories", "lua", "python"};

static void model_config(ml_model_config *c, int d_mlp) {
    ml_model_config_default(c);
    c->d_model = 32, c->d_mlp = d_mlp, c->n_heads = 4, c->n_kv_heads = 2, c->head_dim = 8, c->vocab_size = 64;
    c->max_context = 16, c->init_std = 0.3;
}

static void save(const char *path, const ml_model *m) {
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_model_config_save(h, &m->cfg));
    ML_ASSERT_OK(ml_model_save_params(h, m));
    ML_ASSERT_OK(ml_h5_close(&h));
}

/* Base, and NM fine-tunes = base + 0.05 u_label + 0.02 noise (planted clusters). */
static int setup(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(dir, sizeof dir, "%s", ml_test_dir("region"));
    snprintf(st[0], sizeof st[0], "%s/stories.h5", dir);
    snprintf(st[1], sizeof st[1], "%s/lua.h5", dir);
    snprintf(basep, sizeof basep, "%s/base.h5", dir);
    snprintf(badp, sizeof badp, "%s/bad.h5", dir);
    models_arg[0] = '\0';
    for (int i = 0; i < NM; i++) {
        snprintf(mp[i], sizeof mp[i], "%s/m%d.h5", dir, i);
        snprintf(models_arg + strlen(models_arg), sizeof models_arg - strlen(models_arg), "%s%s=%s", i ? "," : "",
                 dom_names[i / PER], mp[i]);
    }
    if (rank == 0) {
        ML_ASSERT_OK(tf_write_store(st[0], "stories", 64, 200, 150, 1));
        ML_ASSERT_OK(tf_write_store(st[1], "lua", 64, 200, 120, 2));
        ml_model_config c;
        model_config(&c, 64);
        ml_model *b = NULL, *m = NULL;
        ML_ASSERT_OK(ml_model_create(&c, &b));
        ML_ASSERT_OK(ml_model_create(&c, &m));
        ML_ASSERT_OK(ml_model_init(b, 5));
        save(basep, b);
        float *u = malloc(sizeof *u * b->n_params * NL);
        ml_rng r;
        ml_rng_seed(&r, 99, 1);
        for (size_t e = 0; e < b->n_params * NL; e++) u[e] = ml_rng_normal(&r);
        for (int i = 0; i < NM; i++) {
            for (size_t e = 0; e < b->n_params; e++)
                m->params[e] = b->params[e] + 0.05f * u[(size_t)(i / PER) * b->n_params + e] + 0.02f * ml_rng_normal(&r);
            save(mp[i], m);
        }
        free(u);
        ml_model_destroy(&b);
        ml_model_destroy(&m);
        model_config(&c, 48); /* a different MLP width */
        ML_ASSERT_OK(ml_model_create(&c, &m));
        ML_ASSERT_OK(ml_model_init(m, 7));
        save(badp, m);
        ml_model_destroy(&m);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

#define region(comm, ...) tf_run(ml_cmd_region, comm, "region", __VA_ARGS__)
#define REGION_ARGS "--base %s --models %s --domains %s,%s --context 8 --batch 4 --eval_windows 8 --random 2 --alpha_count 5"

/* Shape of a dataset (serial open); returns the element count. */
static int64_t shape_of(const char *path, const char *name, int *rk, hsize_t *d) {
    ml_h5 *h = NULL;
    ml_dtype ft;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h));
    ML_ASSERT_OK(ml_h5_shape(h, name, rk, d, &ft));
    ML_ASSERT_OK(ml_h5_close(&h));
    int64_t n = 1;
    for (int i = 0; i < *rk; i++) n *= (int64_t)d[i];
    return n;
}

static int64_t read_all(const char *path, const char *name, ml_dtype t, void *out) {
    ml_h5 *h = NULL;
    int rk;
    hsize_t d[ML_H5_MAX_RANK];
    int64_t n = shape_of(path, name, &rk, d);
    if (out) {
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h));
        ML_ASSERT_OK(ml_h5_read_tensor(h, name, t, rk, d, out));
        ML_ASSERT_OK(ml_h5_close(&h));
    }
    return n;
}

/* ---- kernels -------------------------------------------------------------------- */
static void test_kernels(void **state) {
    (void)state;
    /* planted clusters: 4 groups x 5 vectors of dimension 50 around random directions */
    enum { G = 4, E = 5, N = G * E, DIM = 50 };
    double v[N][DIM], cosm[N * N];
    int labels[N], assign[N];
    ml_rng r;
    ml_rng_seed(&r, 3, 0);
    double u[G][DIM];
    for (int g = 0; g < G; g++)
        for (int j = 0; j < DIM; j++) u[g][j] = ml_rng_normal(&r);
    for (int i = 0; i < N; i++) {
        labels[i] = (i * 7) % G; /* interleaved labels */
        for (int j = 0; j < DIM; j++) v[i][j] = u[labels[i]][j] + 0.5 * ml_rng_normal(&r);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double d = 0, a = 0, b = 0;
            for (int e = 0; e < DIM; e++) d += v[i][e] * v[j][e], a += v[i][e] * v[i][e], b += v[j][e] * v[j][e];
            cosm[i * N + j] = d / sqrt(a * b);
        }
    double ev[N], acc = 0;
    ML_ASSERT_OK(ml_region_spectral(cosm, N, G, 1, 10, assign, ev));
    ML_ASSERT_OK(ml_region_cluster_accuracy(assign, labels, N, G, G, &acc));
    assert_true(acc == 1.0);
    /* accuracy under the best matching: a relabelled clustering is still perfect; one error costs 1/N */
    int perm[N];
    for (int i = 0; i < N; i++) perm[i] = (labels[i] + 1) % G;
    ML_ASSERT_OK(ml_region_cluster_accuracy(perm, labels, N, G, G, &acc));
    assert_true(acc == 1.0);
    perm[0] = (perm[0] + 1) % G;
    ML_ASSERT_OK(ml_region_cluster_accuracy(perm, labels, N, G, G, &acc));
    ML_ASSERT_CLOSE(acc, (N - 1.0) / N, 1e-12);
    /* Jacobi: A = V diag(ev) V^T, V orthonormal, eigenvalues descending */
    double a[N * N], vec[N * N];
    memcpy(a, cosm, sizeof a);
    ML_ASSERT_OK(ml_region_eigh(a, N, ev, vec));
    double err = 0, orth = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, o = 0;
            for (int k = 0; k < N; k++) s += vec[i * N + k] * ev[k] * vec[j * N + k], o += vec[k * N + i] * vec[k * N + j];
            err = fmax(err, fabs(s - cosm[i * N + j]));
            orth = fmax(orth, fabs(o - (i == j)));
        }
    for (int k = 1; k < N; k++) assert_true(ev[k] <= ev[k - 1]);
    if (err > 1e-10 || orth > 1e-10) fail_msg("Jacobi: reconstruction error %g, orthogonality error %g", err, orth);
    /* Dirichlet weights: positive, sum 1, mean 1/n over many draws */
    double w[4], mean[4] = {0};
    for (int t = 0; t < 4000; t++) {
        ml_region_dirichlet(&r, t % 2 ? 0.5 : 2.0, 4, w);
        double s = 0;
        for (int i = 0; i < 4; i++) assert_true(w[i] >= 0), s += w[i], mean[i] += w[i] / 4000;
        ML_ASSERT_CLOSE(s, 1.0, 1e-12);
    }
    for (int i = 0; i < 4; i++) ML_ASSERT_CLOSE(mean[i], 0.25, 0.02);
}

/* ---- the command against naive references ------------------------------------------- */
static void test_reference(void **state) {
    (void)state;
    char out[1300], cen[1300];
    long live0 = ml_alloc_live();
    snprintf(out, sizeof out, "%s/regions.h5", dir);
    snprintf(cen, sizeof cen, "%s/centroid.h5", dir);
    ML_ASSERT_OK(region(MPI_COMM_WORLD, REGION_ARGS " --out %s --centroid_out %s", basep, models_arg, st[0], st[1], out,
                        cen));
    ml_model *b = tf_model(basep), *m[NM], *c = tf_model(cen);
    assert_non_null(b);
    assert_non_null(c);
    for (int i = 0; i < NM; i++) assert_non_null(m[i] = tf_model(mp[i]));
    /* naive double loop over all parameters */
    double gram[NM * NM], cosm[NM * NM], dist[NM * NM], fg[NM * NM], fc[NM * NM], fd[NM * NM];
    for (int i = 0; i < NM; i++)
        for (int j = 0; j < NM; j++) {
            double s = 0, dd = 0;
            for (size_t e = 0; e < b->n_params; e++) {
                s += ((double)m[i]->params[e] - b->params[e]) * ((double)m[j]->params[e] - b->params[e]);
                dd += ((double)m[i]->params[e] - m[j]->params[e]) * ((double)m[i]->params[e] - m[j]->params[e]);
            }
            gram[i * NM + j] = s;
            dist[i * NM + j] = sqrt(dd);
        }
    for (int i = 0; i < NM; i++)
        for (int j = 0; j < NM; j++) cosm[i * NM + j] = gram[i * NM + j] / sqrt(gram[i * NM + i] * gram[j * NM + j]);
    read_all(out, "gram", ML_F64, fg);
    read_all(out, "cosine", ML_F64, fc);
    read_all(out, "distance", ML_F64, fd);
    for (int e = 0; e < NM * NM; e++) {
        ML_ASSERT_CLOSE(fg[e], gram[e], 1e-6); /* task vectors are float differences */
        ML_ASSERT_CLOSE(fc[e], cosm[e], 1e-6);
        ML_ASSERT_CLOSE(fd[e], dist[e], 1e-6);
    }
    /* per tensor: the cosine of one tensor (lm_head) */
    int ntens = b->n_tensors;
    double *tc = malloc(sizeof *tc * (size_t)ntens * NM * NM);
    read_all(out, "tensor/cosine", ML_F64, tc);
    char *tn = tf_attr_str(out, "/", "tensors");
    assert_non_null(tn);
    assert_non_null(strstr(tn, "\"lm_head.weight\""));
    int ti = 0; /* index of lm_head.weight in the JSON list (sorted names: first) */
    assert_int_equal(strncmp(tn, "[\"lm_head.weight\"", 17), 0);
    const ml_tensor *lt = NULL;
    ML_ASSERT_OK(ml_model_lookup(b, "lm_head.weight", &lt));
    for (int i = 0; i < NM; i++)
        for (int j = 0; j < NM; j++) {
            double s = 0, a2 = 0, b2 = 0;
            for (size_t e = lt->offset; e < lt->offset + lt->numel; e++) {
                double x = (double)m[i]->params[e] - b->params[e], y = (double)m[j]->params[e] - b->params[e];
                s += x * y, a2 += x * x, b2 += y * y;
            }
            ML_ASSERT_CLOSE(tc[((size_t)ti * NM + i) * NM + j], s / sqrt(a2 * b2), 1e-6);
        }
    free(tc);
    ml_free(tn);
    /* planted clusters recovered exactly */
    double acc = 0;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, out, "mergelens.region", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/cluster", "accuracy", &acc));
    double cin, cout;
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "cos_within", &cin));
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "cos_across", &cout));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_true(acc == 1.0);
    assert_true(cin > cout);
    /* centroid = element-wise mean */
    double mx = 0;
    for (size_t e = 0; e < b->n_params; e++) {
        double s = 0;
        for (int i = 0; i < NM; i++) s += m[i]->params[e];
        mx = fmax(mx, fabs(c->params[e] - s / NM));
    }
    if (mx > 1e-6) fail_msg("centroid differs from the mean by %g", mx);
    /* interpolation endpoints: alpha 0 / 1 evaluate exactly like the models */
    int64_t Q = read_all(out, "points/kind", ML_I64, NULL);
    int64_t *kind = malloc(sizeof *kind * Q), *pair = malloc(sizeof *pair * Q * 2);
    double *alpha = malloc(sizeof *alpha * Q), *loss = malloc(sizeof *loss * Q * 2), *pacc = malloc(sizeof *pacc * Q * 2);
    read_all(out, "points/kind", ML_I64, kind);
    read_all(out, "points/pair", ML_I64, pair);
    read_all(out, "points/alpha", ML_F64, alpha);
    read_all(out, "points/loss", ML_F64, loss);
    read_all(out, "points/accuracy", ML_F64, pacc);
    const char *doms[2] = {st[0], st[1]};
    ml_eval_config ec = {.n_domains = 2, .paths = doms, .split = "val", .T = T, .batch = BATCH, .max_batches = 2};
    ml_eval_result res[2];
    int checked = 0, extrap = 0;
    for (int64_t q = 0; q < Q; q++) {
        if (kind[q] == 2 && (alpha[q] < 0 || alpha[q] > 1)) extrap++;
        if (kind[q] != 2 || (alpha[q] != 0 && alpha[q] != 1)) continue;
        int i = (int)pair[2 * q + (alpha[q] == 1)];
        int64_t mq = 1 + i; /* model points follow the base point */
        assert_int_equal(kind[mq], 1);
        ML_ASSERT_OK(ml_eval_model(MPI_COMM_SELF, m[i], &ec, res));
        for (int d = 0; d < 2; d++) {
            assert_true(loss[q * 2 + d] == loss[mq * 2 + d]);
            assert_true(pacc[q * 2 + d] == pacc[mq * 2 + d]);
            ML_ASSERT_CLOSE(loss[q * 2 + d], res[d].loss, 1e-12);
            ML_ASSERT_CLOSE(pacc[q * 2 + d], res[d].accuracy, 1e-12);
        }
        checked++;
    }
    ML_ASSERT_OK(ml_eval_model(MPI_COMM_SELF, b, &ec, res)); /* the base point */
    ML_ASSERT_CLOSE(loss[0], res[0].loss, 1e-12);
    assert_true(checked >= 2 * 6); /* 3 within + 3 across pairs */
    assert_true(extrap >= 2 * 6);
    free(kind);
    free(pair);
    free(alpha);
    free(loss);
    free(pacc);
    ml_model_destroy(&b);
    ml_model_destroy(&c);
    for (int i = 0; i < NM; i++) ml_model_destroy(&m[i]);
    assert_int_equal(ml_alloc_live(), live0);
}

/* ---- one rank alone = all ranks --------------------------------------------------------- */
static void compare_dataset(const char *a, const char *b, const char *name) {
    int64_t n = read_all(a, name, ML_F64, NULL);
    double *x = malloc(sizeof *x * n), *y = malloc(sizeof *y * n);
    read_all(a, name, ML_F64, x);
    read_all(b, name, ML_F64, y);
    for (int64_t e = 0; e < n; e++)
        if (!(x[e] == y[e] || (isnan(x[e]) && isnan(y[e]))))
            fail_msg("%s[%lld]: %.17g (all ranks) vs %.17g (one rank)", name, (long long)e, x[e], y[e]);
    free(x);
    free(y);
}

static void test_ranks(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char all[1300], one[1300];
    snprintf(all, sizeof all, "%s/all.h5", dir);
    snprintf(one, sizeof one, "%s/one.h5", dir);
    ML_ASSERT_OK(region(MPI_COMM_WORLD, REGION_ARGS " --out %s", basep, models_arg, st[0], st[1], all));
    MPI_Comm solo;
    MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? 0 : MPI_UNDEFINED, 0, &solo);
    if (rank == 0) {
        ML_ASSERT_OK(region(solo, REGION_ARGS " --out %s", basep, models_arg, st[0], st[1], one));
        MPI_Comm_free(&solo);
        static const char *const names[] = {"gram",          "cosine",          "distance",        "tensor/gram",
                                            "tensor/cosine", "tensor/distance", "points/weights",  "points/alpha",
                                            "points/loss",   "points/accuracy", "cluster/eigenvalues"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) compare_dataset(all, one, names[i]);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* ---- centroid --exclude and centroid-table ------------------------------------------ */
static void test_centroid_table(void **state) {
    (void)state;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char cen[1300], e1[1300], e2[1300], tab[1300];
    snprintf(cen, sizeof cen, "%s/no_lua.h5", dir);
    snprintf(e1, sizeof e1, "%s/e1.h5", dir);
    snprintf(e2, sizeof e2, "%s/e2.h5", dir);
    snprintf(tab, sizeof tab, "%s/centroid.h5", dir);
    ML_ASSERT_OK(tf_run(ml_cmd_region, MPI_COMM_WORLD, "region", "centroid --models %s --exclude lua --out %s",
                        models_arg, cen));
    ml_model *c = tf_model(cen), *m[NM];
    assert_non_null(c);
    double mx = 0;
    for (int i = 0; i < NM; i++) assert_non_null(m[i] = tf_model(mp[i]));
    for (size_t e = 0; e < c->n_params; e++) {
        double s = 0;
        int n = 0;
        for (int i = 0; i < NM; i++)
            if (i / PER != 1) s += m[i]->params[e], n++;
        mx = fmax(mx, fabs(c->params[e] - s / n));
    }
    if (mx > 1e-6) fail_msg("centroid without lua differs from the mean by %g", mx);
    /* the table from two eval files */
    ML_ASSERT_OK(tf_eval(MPI_COMM_WORLD, "%s --domains %s,%s --context 8 --batch 4 --max_batches 2 --out %s", cen,
                         st[0], st[1], e1));
    ML_ASSERT_OK(tf_eval(MPI_COMM_WORLD, "%s --domains %s,%s --context 8 --batch 4 --max_batches 2 --out %s", mp[0],
                         st[0], st[1], e2));
    ML_ASSERT_OK(tf_run(ml_cmd_region, MPI_COMM_WORLD, "region",
                        "centroid-table --domains lua,stories --centroid_evals %s,%s --base_evals %s,%s --out %s", e1,
                        e1, e2, e2, tab));
    double l1[2], l2[2], lc[2], lb[2], ld[2];
    read_all(e1, "loss", ML_F64, l1);
    read_all(e2, "loss", ML_F64, l2);
    read_all(tab, "loss_centroid", ML_F64, lc);
    read_all(tab, "loss_base", ML_F64, lb);
    read_all(tab, "loss_diff", ML_F64, ld);
    /* eval domains: stories (0), lua (1); table domains: lua, stories */
    assert_true(lc[0] == l1[1] && lc[1] == l1[0] && lb[0] == l2[1] && lb[1] == l2[0]);
    ML_ASSERT_CLOSE(ld[0], l1[1] - l2[1], 1e-15);
    ML_ASSERT_FAILS(tf_run(ml_cmd_region, MPI_COMM_WORLD, "region",
                           "centroid-table --domains english --centroid_evals %s --base_evals %s --out %s", e1, e2, tab),
                    rank == 0 ? ML_ERR_NOTFOUND : ml_error_code(), "no domain 'english'");
    ml_model_destroy(&c);
    for (int i = 0; i < NM; i++) ml_model_destroy(&m[i]);
}

/* ---- bad input -------------------------------------------------------------------------- */

static void test_errors(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    char out[1300], arg[4000];
    snprintf(out, sizeof out, "%s/bad_out.h5", dir);
    snprintf(arg, sizeof arg, "lua=%s,lua=%s,stories=%s", mp[0], badp, mp[1]);
    ML_ASSERT_FAILS_ALL(region(MPI_COMM_WORLD, "--base %s --models %s --out %s", basep, arg, out), ML_ERR_SHAPE, badp);
    ML_ASSERT_FAILS_ALL(region(MPI_COMM_WORLD, "--base %s --models %s --out %s", basep, arg, out), ML_ERR_SHAPE,
              "tensor 'model.layers.0.mlp.down_proj.weight' has shape [32, 48], expected [32, 64]");
    assert_false(ml_file_exists(out));
    ML_ASSERT_FAILS_ALL(region(MPI_COMM_WORLD, "--base %s --models lua=%s --out %s", basep, mp[0], out), ML_ERR_ARG,
              "at least 2 models");
    ML_ASSERT_FAILS_ALL(region(MPI_COMM_WORLD, "--base %s --models %s --out %s --k 40", basep, models_arg, out), ML_ERR_ARG,
              "--k 40 exceeds");
    ML_ASSERT_FAILS_ALL(region(MPI_COMM_WORLD, "--base %s --models %s --out %s --pairs 0:0", basep, models_arg, out), ML_ERR_ARG,
              "--pairs item '0:0'");
    ML_ASSERT_FAILS_ALL(tf_run(ml_cmd_region, MPI_COMM_WORLD, "region", "centroid --models %s --exclude rust --out %s",
                     models_arg, out), ML_ERR_ARG, "--exclude 'rust'");
    assert_int_equal(ml_alloc_live(), live0); /* failure paths free what they took */
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels),
        cmocka_unit_test_setup(test_reference, setup),
        cmocka_unit_test(test_ranks),
        cmocka_unit_test(test_centroid_table),
        cmocka_unit_test(test_errors),
    };
    return ml_test_run(argc, argv, "region", tests, sizeof tests / sizeof tests[0]);
}
