/* `mergelens region`: task-vector geometry, spectral clustering and the
 * evaluation of interpolations, extrapolations and random convex
 * combinations of fine-tuned models (format mergelens.region v1, layout in
 * docs/modules/region.md).
 *
 * Legend: M models, L labels, k clusters, T tensors, Q evaluation points,
 * W = M + 1 weights per point (column 0: the base), D evaluation domains,
 * P ranks. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/sweep.h"
#include "mergelens/config.h"
#include "mergelens/merge.h"
#include "mergelens/train.h"
#include "region_internal.h"

static const ml_option_spec ml_region_opts[] = {
    {"base", ML_OPT_STRING, NULL, 0, -1, NULL, "base checkpoint: task vectors are model - base"},
    {"models", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated label=checkpoint (label: the model's domain)"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output file region/<name>.h5"},
    {"domains", ML_OPT_STRING, "", 0, -1, NULL, "comma-separated token stores to evaluate points on (empty: no evaluation)"},
    {"k", ML_OPT_INT, "0", 0, 1 << 20, NULL, "clusters (0 = the number of distinct labels)"},
    {"n_init", ML_OPT_INT, "10", 1, 1 << 20, NULL, "k-means restarts (k-means++ seeding each)"},
    {"pairs", ML_OPT_STRING, "auto", 0, -1, NULL,
     "interpolation pairs: auto (per label its first two models; per label pair their first models), none, "
     "or i:j,... (model indices)"},
    {"alpha_from", ML_OPT_FLOAT, "-0.5", 1, -1, NULL, "first interpolation coefficient a of (1-a) x_i + a x_j"},
    {"alpha_to", ML_OPT_FLOAT, "1.5", 1, -1, NULL, "last coefficient (outside [0, 1]: extrapolation)"},
    {"alpha_count", ML_OPT_INT, "9", 0, 1e6, NULL, "coefficients per pair, evenly spaced"},
    {"random", ML_OPT_INT, "4", 0, 1e6, NULL, "random convex combinations per label and over all models"},
    {"dirichlet", ML_OPT_FLOAT, "1", 1e-3, 1e3, NULL, "Dirichlet concentration of the random weights"},
    {"seed", ML_OPT_INT, "0", 0, 9e18, NULL, "seed of k-means++ and of the random combinations"},
    ML_EVAL_POINT_OPTIONS,
    {"centroid_out", ML_OPT_STRING, "", 0, -1, NULL, "also write the centroid (mean of the models) checkpoint here"},
    ML_OPT_END,
};

enum { ML_POINT_BASE = 0, ML_POINT_MODEL = 1, ML_POINT_LINE = 2, ML_POINT_RANDOM = 3 };

typedef struct {
    int Q, W, cap;
    double *w;       /* (Q, W) */
    int64_t *kind;   /* (Q) ML_POINT_* */
    int64_t *pair;   /* (Q, 2) model indices or -1 */
    int64_t *group;  /* (Q) label index of a random point; L = all models; -1 otherwise */
    double *alpha;   /* (Q) interpolation coefficient, NaN otherwise */
} ml_points;

static void ml_points_free(ml_points *p) {
    ml_free(p->w);
    ml_free(p->kind);
    ml_free(p->pair);
    ml_free(p->group);
    ml_free(p->alpha);
    memset(p, 0, sizeof *p);
}

static int ml_points_add(ml_points *p, int kind, int i, int j, int64_t group, double alpha, double **w) {
    if (p->Q == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        double *nw = ml_realloc(p->w, sizeof *nw * (size_t)cap * p->W);
        if (nw) p->w = nw;
        int64_t *nk = ml_realloc(p->kind, sizeof *nk * (size_t)cap);
        if (nk) p->kind = nk;
        int64_t *np = ml_realloc(p->pair, sizeof *np * (size_t)cap * 2);
        if (np) p->pair = np;
        int64_t *ng = ml_realloc(p->group, sizeof *ng * (size_t)cap);
        if (ng) p->group = ng;
        double *na = ml_realloc(p->alpha, sizeof *na * (size_t)cap);
        if (na) p->alpha = na;
        if (!nw || !nk || !np || !ng || !na) return ML_FAIL(ML_ERR_NOMEM, "region: out of memory (%d points)", cap);
        p->cap = cap;
    }
    int q = p->Q++;
    *w = p->w + (size_t)q * p->W;
    memset(*w, 0, sizeof **w * (size_t)p->W);
    p->kind[q] = kind;
    p->pair[2 * q] = i;
    p->pair[2 * q + 1] = j;
    p->group[q] = group;
    p->alpha[q] = alpha;
    return ML_OK;
}

/* The evaluation points: base, models, pair lines, random combinations. */
static int ml_region_plan(const ml_region_set *s, const ml_options *o, ml_points *p) {
    int M = s->M, L = s->L;
    double *w = NULL;
    p->W = M + 1;
    ML_CHECK(ml_points_add(p, ML_POINT_BASE, -1, -1, -1, NAN, &w));
    w[0] = 1;
    for (int i = 0; i < M; i++) {
        ML_CHECK(ml_points_add(p, ML_POINT_MODEL, i, -1, -1, NAN, &w));
        w[1 + i] = 1;
    }
    /* pairs */
    int np = 0, cap = M * M + 1;
    int *pi = ml_malloc(sizeof *pi * (size_t)cap * 2);
    if (!pi) return ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    const char *spec = ml_opt_str(o, "pairs");
    int rc = ML_OK;
    if (!strcmp(spec, "auto")) {
        for (int l = 0; l < L; l++) { /* within a label: its first two models */
            int a = -1, b = -1;
            for (int i = 0; i < M; i++)
                if (s->label[i] == l) {
                    if (a < 0) a = i;
                    else if (b < 0) b = i;
                }
            if (b >= 0) pi[2 * np] = a, pi[2 * np + 1] = b, np++;
        }
        for (int l = 0; l < L; l++) /* across labels: their first models */
            for (int m = l + 1; m < L; m++) {
                int a = -1, b = -1;
                for (int i = M - 1; i >= 0; i--) {
                    if (s->label[i] == l) a = i;
                    if (s->label[i] == m) b = i;
                }
                pi[2 * np] = a, pi[2 * np + 1] = b, np++;
            }
    } else if (strcmp(spec, "none")) {
        char **items = NULL;
        int n = 0;
        rc = ml_list_split(spec, "pairs", &items, &n);
        for (int k = 0; rc == ML_OK && k < n; k++) {
            int a, b;
            char tail;
            if (sscanf(items[k], "%d:%d%c", &a, &b, &tail) != 2 || a < 0 || b < 0 || a >= M || b >= M || a == b)
                rc = ML_FAIL(ML_ERR_ARG, "region: --pairs item '%s' is not i:j with distinct model indices below %d",
                             items[k], M);
            else if (np < cap) pi[2 * np] = a, pi[2 * np + 1] = b, np++;
        }
        ml_h5_free_names(items, n);
    }
    int count = (int)ml_opt_int(o, "alpha_count");
    double from = ml_opt_float(o, "alpha_from"), to = ml_opt_float(o, "alpha_to");
    for (int k = 0; rc == ML_OK && k < np; k++)
        for (int c = 0; rc == ML_OK && c < count; c++) {
            double a = ml_sweep_grid_value(from, to, count, c);
            rc = ml_points_add(p, ML_POINT_LINE, pi[2 * k], pi[2 * k + 1], -1, a, &w);
            if (rc == ML_OK) w[1 + pi[2 * k]] += 1 - a, w[1 + pi[2 * k + 1]] += a;
        }
    ml_free(pi);
    ML_CHECK(rc);
    /* random convex combinations: per label (stream l) and over all (stream L) */
    int R = (int)ml_opt_int(o, "random");
    double conc = ml_opt_float(o, "dirichlet");
    double *tmp = ml_malloc(sizeof *tmp * (size_t)M);
    int *idx = ml_malloc(sizeof *idx * (size_t)M);
    if (!tmp || !idx) rc = ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    for (int g = 0; rc == ML_OK && g <= L; g++) {
        int n = 0;
        for (int i = 0; i < M; i++)
            if (g == L || s->label[i] == g) idx[n++] = i;
        if (n < 2 || (g == L && L < 2)) continue;
        ml_rng rng;
        ml_rng_seed(&rng, (uint64_t)ml_opt_int(o, "seed"), 0x726567696f6e00ULL + (uint64_t)g); /* "region" + g */
        for (int r = 0; rc == ML_OK && r < R; r++) {
            ml_region_dirichlet(&rng, conc, n, tmp);
            rc = ml_points_add(p, ML_POINT_RANDOM, -1, -1, g, NAN, &w);
            for (int k = 0; rc == ML_OK && k < n; k++) w[1 + idx[k]] = tmp[k];
        }
    }
    ml_free(tmp);
    ml_free(idx);
    return rc;
}

/* Local: out = sum_c w[c] x_c, tensor by tensor from the files (only the
 * inputs with a non-zero weight are read). buf (W, max_numel). */
static int ml_region_build(ml_region_set *s, const double *w, float *buf, ml_model *out) {
    const float *x[ML_MERGE_MAX_MODELS + 1];
    double c[ML_MERGE_MAX_MODELS + 1];
    for (int t = 0; t < s->T; t++) {
        int n = 0;
        for (int k = 0; k <= s->M; k++) {
            if (w[k] == 0) continue;
            float *b = buf + (size_t)n * s->max_numel;
            ML_CHECK(ml_region_read(s, k - 1, t, b));
            x[n] = b, c[n] = w[k], n++;
        }
        ml_merge_lincomb(out->params + s->t[t]->offset, x, c, n, s->t[t]->numel);
    }
    return ML_OK;
}

/* Mean of the off-diagonal entries of m (M,M) over pairs with the same
 * (same = 1) or different (same = 0) labels; NaN when there are none. */
static double ml_pair_mean(const double *m, const int *label, int M, int same) {
    double s = 0;
    int n = 0;
    for (int i = 0; i < M; i++)
        for (int j = i + 1; j < M; j++)
            if ((label[i] == label[j]) == same) s += m[(size_t)i * M + j], n++;
    return n ? s / n : NAN;
}

typedef struct {
    double *tgram, *tcos, *tdist; /* (T, M, M) */
    double *gram, *cos, *dist;    /* (M, M) */
    double *evals;                /* (M) */
    int *assign;                  /* (M) */
    int64_t *assign64, *order, *label64; /* (M) */
    double *loss, *acc;           /* (Q, D) */
    int64_t *tokens;              /* (D) */
    double accuracy, cos_in, cos_out, dist_in, dist_out;
    int k;
} ml_region_result;

static void ml_region_result_free(ml_region_result *r) {
    void *ptrs[] = {r->tgram, r->tcos, r->tdist, r->gram, r->cos, r->dist, r->evals, r->assign,
                    r->assign64, r->order, r->label64, r->loss, r->acc, r->tokens};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) ml_free(ptrs[i]);
    memset(r, 0, sizeof *r);
}

static int ml_region_write(MPI_Comm comm, const char *path, const ml_region_set *s, const ml_points *p,
                           const ml_region_result *r, int D, const char *domains_json, const char *paths_json,
                           const char *config, int T) {
    ml_h5 *h = NULL;
    char *models = NULL, *labels = NULL, *lnames = NULL, *tnames = NULL;
    const char **tn = ml_malloc(sizeof *tn * (size_t)s->T);
    int rc = tn ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    for (int t = 0; rc == ML_OK && t < s->T; t++) tn[t] = s->t[t]->name;
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)s->paths, s->M, &models);
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)s->label_of, s->M, &labels);
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)s->labels, s->L, &lnames);
    if (rc == ML_OK) rc = ml_list_to_json(tn, s->T, &tnames);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, path), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, ML_REGION_FORMAT, 1, &h), done);
    struct {
        const char *k, *v;
    } sa[] = {{"base", s->base},     {"models", models},       {"labels", labels}, {"label_names", lnames},
              {"tensors", tnames},   {"domains", domains_json}, {"paths", paths_json}, {"config", config}};
    for (size_t i = 0; i < sizeof sa / sizeof sa[0]; i++)
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", sa[i].k, sa[i].v ? sa[i].v : ""), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", T), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "cos_within", r->cos_in), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "cos_across", r->cos_out), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "distance_within", r->dist_in), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "distance_across", r->dist_out), done);
    int M = s->M;
    hsize_t dmm[2] = {(hsize_t)M, (hsize_t)M}, dtmm[3] = {(hsize_t)s->T, (hsize_t)M, (hsize_t)M}, dm[1] = {(hsize_t)M};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "gram", ML_F64, 2, dmm, r->gram), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "cosine", ML_F64, 2, dmm, r->cos), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "distance", ML_F64, 2, dmm, r->dist), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "label", ML_I64, 1, dm, r->label64), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "tensor"), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "tensor/gram", ML_F64, 3, dtmm, r->tgram), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "tensor/cosine", ML_F64, 3, dtmm, r->tcos), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "tensor/distance", ML_F64, 3, dtmm, r->tdist), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "cluster"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/cluster", "k", r->k), done);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/cluster", "accuracy", r->accuracy), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "cluster/assign", ML_I64, 1, dm, r->assign64), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "cluster/order", ML_I64, 1, dm, r->order), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "cluster/eigenvalues", ML_F64, 1, dm, r->evals), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "points"), done);
    hsize_t dq[1] = {(hsize_t)p->Q}, dqw[2] = {(hsize_t)p->Q, (hsize_t)p->W}, dq2[2] = {(hsize_t)p->Q, 2},
            dqd[2] = {(hsize_t)p->Q, (hsize_t)D}, dd[1] = {(hsize_t)D};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/weights", ML_F64, 2, dqw, p->w), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/kind", ML_I64, 1, dq, p->kind), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/pair", ML_I64, 2, dq2, p->pair), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/group", ML_I64, 1, dq, p->group), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/alpha", ML_F64, 1, dq, p->alpha), done);
    if (D > 0) {
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/loss", ML_F64, 2, dqd, r->loss), done);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "points/accuracy", ML_F64, 2, dqd, r->acc), done);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, "tokens", ML_I64, 1, dd, r->tokens), done);
    }
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    ml_h5_discard(&h);
    ml_free(tn);
    ml_free(models);
    ml_free(labels);
    ml_free(lnames);
    ml_free(tnames);
    return rc;
}

/* Geometry and clustering from the per-tensor Gram matrices (replicated). */
static int ml_region_geometry(const ml_region_set *s, int k, uint64_t seed, int n_init, ml_region_result *r) {
    int M = s->M;
    size_t mm = (size_t)M * M;
    for (int t = 0; t < s->T; t++) {
        ml_region_cos_dist(r->tgram + t * mm, M, r->tcos + t * mm, r->tdist + t * mm);
        for (size_t e = 0; e < mm; e++) r->gram[e] += r->tgram[t * mm + e]; /* tensor order: rank-independent */
    }
    ml_region_cos_dist(r->gram, M, r->cos, r->dist);
    r->cos_in = ml_pair_mean(r->cos, s->label, M, 1);
    r->cos_out = ml_pair_mean(r->cos, s->label, M, 0);
    r->dist_in = ml_pair_mean(r->dist, s->label, M, 1);
    r->dist_out = ml_pair_mean(r->dist, s->label, M, 0);
    r->k = k > 0 ? k : s->L;
    if (r->k > M) return ML_FAIL(ML_ERR_ARG, "region: --k %d exceeds the %d models", r->k, M);
    ML_CHECK(ml_region_spectral(r->cos, M, r->k, seed, n_init, r->assign, r->evals));
    ML_CHECK(ml_region_cluster_accuracy(r->assign, s->label, M, r->k, s->L, &r->accuracy));
    int q = 0;
    for (int c = 0; c < r->k; c++)
        for (int i = 0; i < M; i++)
            if (r->assign[i] == c) r->order[q++] = i;
    for (int i = 0; i < M; i++) r->assign64[i] = r->assign[i], r->label64[i] = s->label[i];
    return ML_OK;
}

/* Evaluate this rank's points (j mod P == rank) alone; gather. */
static int ml_region_evaluate(MPI_Comm comm, ml_region_set *s, const ml_points *p, const ml_eval_config *ec,
                              ml_region_result *r, ml_eval_result *res) {
    int rank, P, rc = ML_OK, D = ec->n_domains;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    ml_model *m = NULL;
    ml_evaluator *ev = NULL;
    float *buf = ml_malloc(sizeof *buf * s->max_numel * (size_t)p->W);
    rc = buf ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    if (rc == ML_OK) rc = ml_model_create(&s->mc, &m);
    if (rc == ML_OK) rc = ml_evaluator_create(MPI_COMM_SELF, &s->mc, ec, NULL, &ev);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    int mine = 0;
    for (int j = rank; j < p->Q; j += P) mine++;
    ml_progress prog;
    ml_progress_begin(&prog, "region", (double)mine);
    double t0 = ml_wtime();
    int n = 0;
    for (int j = rank; rc == ML_OK && j < p->Q; j += P) {
        rc = ml_region_build(s, p->w + (size_t)j * p->W, buf, m);
        if (rc == ML_OK) rc = ml_evaluator_run(ev, m, res);
        for (int d = 0; rc == ML_OK && d < D; d++) {
            r->loss[(size_t)j * D + d] = res[d].loss;
            r->acc[(size_t)j * D + d] = res[d].accuracy;
            r->tokens[d] = res[d].n_targets;
        }
        char extra[64];
        snprintf(extra, sizeof extra, "(%d points on %d ranks)", p->Q, P);
        ml_progress_update(&prog, ++n, extra);
    }
    char extra[64];
    snprintf(extra, sizeof extra, "%d points in %.2f s", n, ml_wtime() - t0);
    ml_progress_end(&prog, extra);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, r->loss, (size_t)p->Q * D, MPI_DOUBLE, MPI_SUM);
    if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, r->acc, (size_t)p->Q * D, MPI_DOUBLE, MPI_SUM);
    if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, r->tokens, (size_t)D, MPI_INT64_T, MPI_MAX);
done:
    ml_free(buf);
    ml_evaluator_destroy(&ev);
    ml_model_destroy(&m);
    return rc;
}

static int ml_region_main(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, help = 0, D = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    ml_region_set s = {0};
    ml_points p = {0};
    ml_region_result r = {0};
    ml_eval_result *res = NULL;
    char **domains = NULL, *config = NULL, *names_json = NULL, *paths_json = NULL;
    rc = ml_options_parse_command(
        comm, "region",
        "usage: mergelens region --base B.h5 --models lua=a.h5,lua=b.h5,stories=c.h5,... \\\n"
        "         --domains data/lua.h5,data/stories.h5 --out region/regions.h5 [--centroid_out C.h5]\n"
        "       mergelens region centroid --models l=a.h5,... [--exclude lua] --out C.h5\n"
        "       mergelens region centroid-table --domains lua,stories --centroid_evals E.h5,... --base_evals F.h5,... "
        "--out region/centroid.h5\n\n"
        "Task vectors (model - base): cosine and distance matrices (whole model and per tensor), spectral\n"
        "clustering and its accuracy against the labels, evaluation of interpolations, extrapolations and\n"
        "random convex combinations, and the centroid (Gueta et al., arXiv 2302.04863).",
        ml_region_opts, argc, argv, &o, NULL, NULL, &help);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (help) goto done;
    rc = ml_region_set_parse(&s, ml_opt_str(o, "models"), NULL);
    const char *dl = ml_opt_str(o, "domains");
    if (rc == ML_OK && dl && *dl) rc = ml_list_split(dl, "domains", &domains, &D);
    if (rc == ML_OK && s.M < 2) rc = ML_FAIL(ML_ERR_ARG, "region: --models needs at least 2 models, got %d", s.M);
    if (rc == ML_OK && s.M > ML_MERGE_MAX_MODELS)
        rc = ML_FAIL(ML_ERR_ARG, "region: at most %d models, got %d", ML_MERGE_MAX_MODELS, s.M);
    if (rc == ML_OK) rc = ml_options_to_json(o, &config);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_region_set_open(comm, &s, ml_opt_str(o, "base")), done);
    int M = s.M;
    size_t tmm = (size_t)s.T * M * M;
    r.tgram = ml_calloc(tmm, sizeof *r.tgram);
    r.tcos = ml_calloc(tmm, sizeof *r.tcos);
    r.tdist = ml_calloc(tmm, sizeof *r.tdist);
    r.gram = ml_calloc((size_t)M * M, sizeof *r.gram);
    r.cos = ml_calloc((size_t)M * M, sizeof *r.cos);
    r.dist = ml_calloc((size_t)M * M, sizeof *r.dist);
    r.evals = ml_calloc((size_t)M, sizeof *r.evals);
    r.assign = ml_calloc((size_t)M, sizeof *r.assign);
    r.assign64 = ml_calloc((size_t)M, sizeof *r.assign64);
    r.order = ml_calloc((size_t)M, sizeof *r.order);
    r.label64 = ml_calloc((size_t)M, sizeof *r.label64);
    rc = r.tgram && r.tcos && r.tdist && r.gram && r.cos && r.dist && r.evals && r.assign && r.assign64 && r.order &&
                 r.label64
             ? ML_OK
             : ML_FAIL(ML_ERR_NOMEM, "region: out of memory for %d tensors x %d x %d matrices", s.T, M, M);
    if (rc == ML_OK) rc = ml_region_plan(&s, o, &p);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);

    /* 1. the streaming pass: Gram matrices and the centroid */
    double t0 = ml_wtime();
    ML_CHECK_GOTO(ml_region_stream(comm, &s, r.tgram), done);
    ml_info("region: %d models, %d tensors streamed in %.2f s", M, s.T, ml_wtime() - t0);
    const char *cout = ml_opt_str(o, "centroid_out");
    if (cout && *cout) ML_CHECK_GOTO(ml_region_write_centroid(comm, &s, cout, NULL), done);

    /* 2. geometry and clustering (every rank, same numbers) */
    ML_CHECK_GOTO(ml_agree(comm, ml_region_geometry(&s, (int)ml_opt_int(o, "k"), (uint64_t)ml_opt_int(o, "seed"),
                                                    (int)ml_opt_int(o, "n_init"), &r)), done);
    ml_info("region: cosine within labels %.4f, across %.4f; distance within %.4g, across %.4g; "
            "spectral clustering into %d clusters: accuracy %.3f",
            r.cos_in, r.cos_out, r.dist_in, r.dist_out, r.k, r.accuracy);

    /* 3. evaluation of the points */
    const int T = ml_eval_context((int)ml_opt_int(o, "context"), s.context, &s.mc);
    if (D > 0) {
        ml_eval_config ec = ml_eval_point_config(D, (const char *const *)domains, ml_opt_str(o, "split"), T,
                                                 (int)ml_opt_int(o, "batch"), (int)ml_opt_int(o, "micro_batch"),
                                                 ml_opt_int(o, "eval_windows"), ml_opt_str(o, "eval_order"),
                                                 ml_opt_int(o, "eval_seed"));
        r.loss = ml_calloc((size_t)p.Q * D, sizeof *r.loss);
        r.acc = ml_calloc((size_t)p.Q * D, sizeof *r.acc);
        r.tokens = ml_calloc((size_t)D, sizeof *r.tokens);
        res = ml_calloc((size_t)D, sizeof *res);
        rc = r.loss && r.acc && r.tokens && res ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        t0 = ml_wtime();
        ML_CHECK_GOTO(ml_region_evaluate(comm, &s, &p, &ec, &r, res), done);
        ml_info("region: %d points x %d domains evaluated in %.2f s", p.Q, D, ml_wtime() - t0);
        /* rank 0 evaluated point 0, so it holds the domain names */
        if (rank == 0) {
            const char **dn = ml_calloc((size_t)D, sizeof *dn);
            rc = dn ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "out of memory");
            for (int d = 0; rc == ML_OK && d < D; d++) dn[d] = res[d].domain;
            if (rc == ML_OK) rc = ml_list_to_json(dn, D, &names_json);
            ml_free(dn);
        }
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        ML_CHECK_GOTO(ml_bcast_string(comm, &names_json), done);
    }
    rc = ml_list_to_json((const char *const *)domains, D, &paths_json);
    if (rc == ML_OK && !names_json) rc = ml_list_to_json(NULL, 0, &names_json);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_region_write(comm, ml_opt_str(o, "out"), &s, &p, &r, D, names_json, paths_json, config, T), done);
    ml_info("region: wrote %s", ml_opt_str(o, "out"));
done:
    ml_free(res);
    ml_free(config);
    ml_free(names_json);
    ml_free(paths_json);
    ml_h5_free_names(domains, D);
    ml_points_free(&p);
    ml_region_result_free(&r);
    ml_region_set_close(&s);
    ml_options_destroy(&o);
    return rc;
}

/* ---- `region centroid` ------------------------------------------------------------ */
static const ml_option_spec ml_centroid_opts[] = {
    {"models", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated label=checkpoint (or checkpoint)"},
    {"exclude", ML_OPT_STRING, "", 0, -1, NULL, "comma-separated labels whose models are left out"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output checkpoint models/<name>.h5"},
    ML_OPT_END,
};

static int ml_region_centroid(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0;
    ml_options *o = NULL;
    ml_region_set s = {0};
    rc = ml_options_parse_command(comm, "centroid",
                                  "usage: mergelens region centroid --models l=a.h5,... [--exclude lua] --out C.h5\n\n"
                                  "Element-wise mean of the models (those whose label is not excluded), written as an\n"
                                  "ordinary checkpoint (usable by train --init_from, eval, merge).",
                                  ml_centroid_opts, argc, argv, &o, NULL, NULL, &help);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (help) goto done;
    const char *ex = ml_opt_str(o, "exclude");
    ML_CHECK_GOTO(ml_agree(comm, ml_region_set_parse(&s, ml_opt_str(o, "models"), ex)), done);
    ML_CHECK_GOTO(ml_region_set_open(comm, &s, NULL), done);
    ML_CHECK_GOTO(ml_region_stream(comm, &s, NULL), done);
    ML_CHECK_GOTO(ml_region_write_centroid(comm, &s, ml_opt_str(o, "out"), ex), done);
done:
    ml_region_set_close(&s);
    ml_options_destroy(&o);
    return rc;
}

int ml_region_centroid_table(MPI_Comm comm, int argc, char **argv);

int ml_cmd_region(MPI_Comm comm, int argc, char **argv) {
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "centroid")) return ml_region_centroid(comm, argc - 1, argv + 1);
    if (!strcmp(sub, "centroid-table")) return ml_region_centroid_table(comm, argc - 1, argv + 1);
    return ml_region_main(comm, argc, argv);
}
