/* One tensor's merge: parameters, the statistics pass (Gram matrices), the
 * coefficients each method derives from them, and the apply pass.
 *
 * Legend: N = R*C elements, K input models besides the base, D vectors of a
 * Gram matrix, B elements of a cache block.
 *
 * Methods whose result is a linear combination of the inputs (linear, soup,
 * slerp, task_arithmetic, model_stock, multislerp, karcher) compute small
 * coefficient vectors from the Gram matrices and then make one
 * ml_merge_lincomb pass. multislerp and karcher stay in the span of their
 * inputs, so their vector algebra is done on coefficient vectors c with
 * |sum c_i v_i|^2 = c^T G c. TIES and DARE are elementwise (ml_gta_apply).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mergelens/merge.h"

#define ML_GTA_BLOCK 4096 /* B: elements per block; also the DARE RNG block */

static const char *const ml_method_names[ML_MERGE_METHOD_COUNT_] = {
    "linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock", "soup", "multislerp",
    "karcher"};

const char *ml_merge_method_name(ml_merge_method m) {
    return (unsigned)m < ML_MERGE_METHOD_COUNT_ ? ml_method_names[m] : "?";
}

int ml_merge_method_parse(const char *name, ml_merge_method *m) {
    for (int i = 0; i < ML_MERGE_METHOD_COUNT_; i++)
        if (!strcmp(name, ml_method_names[i])) {
            *m = (ml_merge_method)i;
            return ML_OK;
        }
    return ML_FAIL(ML_ERR_NOTFOUND,
                   "unknown merge_method '%s' (known: linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, "
                   "model_stock, soup, multislerp, karcher)",
                   name);
}

int ml_merge_method_uses_base(ml_merge_method m) {
    switch (m) {
    case ML_MERGE_SLERP:
    case ML_MERGE_TASK_ARITHMETIC:
    case ML_MERGE_TIES:
    case ML_MERGE_DARE_LINEAR:
    case ML_MERGE_DARE_TIES:
    case ML_MERGE_MODEL_STOCK:
    case ML_MERGE_MULTISLERP:
        return 1;
    default:
        return 0;
    }
}

void ml_merge_params_defaults(ml_merge_params *p, ml_merge_method m) {
    memset(p, 0, sizeof *p);
    p->method = m;
    for (int i = 0; i < ML_MERGE_MAX_MODELS; i++) {
        p->weight[i] = 1.0;
        p->density[i] = 1.0;
    }
    p->lambda = 1.0;
    p->normalize = (m == ML_MERGE_LINEAR || m == ML_MERGE_SOUP || m == ML_MERGE_TIES);
    p->rescale = (m == ML_MERGE_DARE_LINEAR || m == ML_MERGE_DARE_TIES);
    p->normalize_weights = 1;
    p->eps = 1e-8;
    p->max_iter = 10;
    p->tol = 1e-5;
}

int ml_merge_params_check(const ml_merge_params *p, const char *tensor_name, size_t N) {
    const char *mn = ml_merge_method_name(p->method);
    const char *tn = tensor_name ? tensor_name : "?";
    if ((unsigned)p->method >= ML_MERGE_METHOD_COUNT_) return ML_FAIL(ML_ERR_ARG, "invalid merge method %d", p->method);
    if (p->K < 1 || p->K > ML_MERGE_MAX_MODELS)
        return ML_FAIL(ML_ERR_ARG, "%s: %d input models (1..%d supported)", mn, p->K, ML_MERGE_MAX_MODELS);
    int total = p->K + (p->has_base ? 1 : 0);
    switch (p->method) {
    case ML_MERGE_SLERP:
        if (!p->has_base || p->K != 1)
            return ML_FAIL(ML_ERR_ARG, "slerp merges exactly 2 models (base_model and one other), got %d%s", total,
                           p->has_base ? "" : " and no base_model");
        break;
    case ML_MERGE_MODEL_STOCK:
        if (!p->has_base || p->K < 2)
            return ML_FAIL(ML_ERR_ARG, "model_stock needs a base_model and at least 2 other models, got %d%s", total,
                           p->has_base ? "" : " and no base_model");
        break;
    case ML_MERGE_LINEAR:
    case ML_MERGE_SOUP:
    case ML_MERGE_KARCHER:
        if (p->has_base) return ML_FAIL(ML_ERR_INTERNAL, "%s takes no separate base tensor", mn);
        if (p->K < 2) return ML_FAIL(ML_ERR_ARG, "%s needs at least 2 models, got %d", mn, p->K);
        break;
    case ML_MERGE_MULTISLERP:
        if (p->K < 2) return ML_FAIL(ML_ERR_ARG, "multislerp needs at least 2 models besides base_model, got %d", p->K);
        break;
    default: /* GTA */
        if (!p->has_base) return ML_FAIL(ML_ERR_ARG, "%s needs a base_model", mn);
        break;
    }
    double sum = 0;
    for (int i = 0; i < p->K; i++) {
        if (!isfinite(p->weight[i]))
            return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: weight of model %d is %g (must be finite)", mn, tn, i,
                           p->weight[i]);
        if (!isfinite(p->density[i]))
            return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: density of model %d is %g (must be finite)", mn, tn, i,
                           p->density[i]);
        if ((p->method == ML_MERGE_TIES || p->method == ML_MERGE_DARE_LINEAR || p->method == ML_MERGE_DARE_TIES) &&
            !(p->density[i] > 0 && p->density[i] <= 1))
            return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: density of model %d is %g (must be in (0, 1])", mn, tn, i,
                           p->density[i]);
        if (p->method == ML_MERGE_TIES && N > 0 && p->density[i] < 1 && (size_t)(p->density[i] * (double)N) == 0)
            return ML_FAIL(ML_ERR_ARG, "ties: tensor %s: density %g of model %d keeps no element of %zu (need density >= %g)",
                           tn, p->density[i], i, N, 1.0 / (double)N);
        sum += p->weight[i];
    }
    if ((p->method == ML_MERGE_LINEAR || p->method == ML_MERGE_SOUP) && p->normalize && sum == 0)
        return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: weights sum to 0 and normalize is true (division by zero)", mn, tn);
    if (p->method == ML_MERGE_MULTISLERP && p->normalize_weights && sum == 0)
        return ML_FAIL(ML_ERR_ARG, "multislerp: tensor %s: weights sum to 0 and normalize_weights is true", tn);
    if (!isfinite(p->t) || !isfinite(p->lambda) || !isfinite(p->eps) || !isfinite(p->tol))
        return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: non-finite parameter (t %g, lambda %g, eps %g, tol %g)", mn, tn,
                       p->t, p->lambda, p->eps, p->tol);
    if (p->eps < 0 || p->tol < 0 || p->max_iter < 0)
        return ML_FAIL(ML_ERR_ARG, "%s: tensor %s: eps, tol and max_iter must be >= 0", mn, tn);
    return ML_OK;
}

int ml_merge_params_override(ml_merge_params *p, const char *key, double value) {
    if (!strcmp(key, "t")) p->t = value;
    else if (!strcmp(key, "lambda")) p->lambda = value;
    else if (!strcmp(key, "eps")) p->eps = value;
    else if (!strcmp(key, "tol")) p->tol = value;
    else if (!strcmp(key, "density"))
        for (int i = 0; i < p->K; i++) p->density[i] = value;
    else {
        int idx = -1, used = 0;
        double *arr = NULL;
        if (sscanf(key, "density[%d]%n", &idx, &used) == 1 && key[used] == '\0') arr = p->density;
        else if (sscanf(key, "weight[%d]%n", &idx, &used) == 1 && key[used] == '\0') arr = p->weight;
        if (!arr) return ML_FAIL(ML_ERR_ARG, "cannot sweep '%s' (t, lambda, eps, tol, density, density[i], weight[i])", key);
        if (idx < 0 || idx >= p->K)
            return ML_FAIL(ML_ERR_ARG, "'%s': model index out of range (0..%d, the base not counted)", key, p->K - 1);
        arr[idx] = value;
    }
    return ML_OK;
}

/* ---- statistics pass ---------------------------------------------------------- */
/* The vectors whose Gram matrices a method needs: v (D), optional sub. */
static void ml_stats_vectors(const ml_merge_params *p, const ml_merge_inputs *in, const float **v, const float **sub,
                             int *D, size_t *groups) {
    *sub = NULL;
    *groups = 1;
    switch (p->method) {
    case ML_MERGE_SLERP: /* [a = base, b] unsubtracted */
        *D = 2;
        v[0] = in->base;
        v[1] = in->x[0];
        break;
    case ML_MERGE_MODEL_STOCK: /* offsets from the base, per row if filter_wise */
        *D = p->K;
        for (int i = 0; i < p->K; i++) v[i] = in->x[i];
        *sub = in->base;
        if (p->filter_wise) *groups = in->rows;
        break;
    case ML_MERGE_MULTISLERP: /* offsets from the base when there is one */
    case ML_MERGE_KARCHER:
        *D = p->K;
        for (int i = 0; i < p->K; i++) v[i] = in->x[i];
        *sub = p->has_base ? in->base : NULL;
        break;
    default:
        *D = 0;
        *groups = 0;
        break;
    }
}

int ml_merge_stats_begin(const ml_merge_params *p, const ml_merge_inputs *in, ml_merge_stats *st) {
    const float *v[ML_MERGE_MAX_MODELS + 1], *sub;
    int D;
    size_t groups;
    ml_stats_vectors(p, in, v, &sub, &D, &groups);
    st->dim = D;
    st->ngroups = groups;
    size_t need = groups * (size_t)D * (size_t)D;
    if (need > st->cap) {
        ml_free(st->gram);
        st->cap = 0;
        ML_ALLOC(st->gram, need);
        st->cap = need;
    }
    size_t acc_need = (size_t)D * (D + 1) / 2 * ML_MERGE_GRAM_LANES;
    if (acc_need > st->acc_cap) {
        ml_free(st->acc);
        st->acc_cap = 0;
        ML_ALLOC(st->acc, acc_need);
        st->acc_cap = acc_need;
    }
    if (acc_need) memset(st->acc, 0, acc_need * sizeof *st->acc);
    return ML_OK;
}

int ml_merge_stats_rows(const ml_merge_params *p, const ml_merge_inputs *in, size_t row0, size_t nrows,
                        ml_merge_stats *st) {
    const float *v[ML_MERGE_MAX_MODELS + 1], *sub;
    int D;
    size_t groups, C = in->cols;
    ml_stats_vectors(p, in, v, &sub, &D, &groups);
    if (D == 0) return ML_OK;
    if (D != st->dim || groups != st->ngroups)
        return ML_FAIL(ML_ERR_INTERNAL, "tensor %s: statistics begun for another method", in->name ? in->name : "?");
    const float *vg[ML_MERGE_MAX_MODELS + 1];
    if (groups == 1) { /* one Gram matrix: accumulate lane sums */
        size_t off = row0 * C;
        for (int i = 0; i < D; i++) vg[i] = v[i] + off;
        ml_merge_gram_acc(st->acc, vg, sub ? sub + off : NULL, D, nrows * C, off);
        return ML_OK;
    }
    for (size_t g = row0; g < row0 + nrows; g++) { /* one per row, complete within the chunk */
        size_t off = g * C;
        for (int i = 0; i < D; i++) vg[i] = v[i] + off;
        ml_merge_gram(st->gram + g * (size_t)D * D, vg, sub ? sub + off : NULL, D, C);
    }
    return ML_OK;
}

void ml_merge_stats_end(ml_merge_stats *st) {
    if (st->dim > 0 && st->ngroups == 1) ml_merge_gram_finish(st->gram, st->acc, st->dim);
}

int ml_merge_stats_compute(const ml_merge_params *p, const ml_merge_inputs *in, ml_merge_stats *st) {
    ML_CHECK(ml_merge_stats_begin(p, in, st));
    ML_CHECK(ml_merge_stats_rows(p, in, 0, in->rows, st));
    ml_merge_stats_end(st);
    return ML_OK;
}

void ml_merge_stats_release(ml_merge_stats *st) {
    if (!st) return;
    ml_free(st->gram);
    ml_free(st->acc);
    memset(st, 0, sizeof *st);
}

/* ---- workspace -------------------------------------------------------------------- */
struct ml_merge_work {
    int K;
    size_t max_rows;
    uint32_t *hist; /* (4, 65536) radix select */
    float *dbuf;    /* (K, B) masked deltas of one block */
    double *mix;    /* (3, B) sign sums, mixed deltas, divisors of one block */
    uint32_t *draws; /* (B + 1) DARE random draws of one block */
    double *coef;   /* (max_rows, K + 1) per-row coefficients */
};

int ml_merge_work_create(int K, size_t max_rows, ml_merge_work **out) {
    int rc = ML_OK;
    *out = NULL;
    if (K < 1 || K > ML_MERGE_MAX_MODELS) return ML_FAIL(ML_ERR_ARG, "merge workspace: K = %d out of range", K);
    if (max_rows < 1) max_rows = 1;
    ml_merge_work *w = ml_calloc(1, sizeof *w);
    if (!w) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    w->K = K;
    w->max_rows = max_rows;
    w->hist = ml_malloc(4 * 65536 * sizeof *w->hist);
    w->dbuf = ml_malloc((size_t)K * ML_GTA_BLOCK * sizeof *w->dbuf);
    w->mix = ml_malloc((size_t)3 * ML_GTA_BLOCK * sizeof *w->mix);
    w->draws = ml_malloc((ML_GTA_BLOCK + 1) * sizeof *w->draws);
    w->coef = ml_malloc(max_rows * (size_t)(K + 1) * sizeof *w->coef);
    if (!w->hist || !w->dbuf || !w->mix || !w->draws || !w->coef) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory for the merge workspace");
    *out = w;
    return ML_OK;
fail:
    ml_merge_work_destroy(&w);
    return rc;
}

void ml_merge_work_destroy(ml_merge_work **w) {
    if (!w || !*w) return;
    ml_free((*w)->hist);
    ml_free((*w)->dbuf);
    ml_free((*w)->mix);
    ml_free((*w)->draws);
    ml_free((*w)->coef);
    ml_free(*w);
    *w = NULL;
}

/* ---- coefficient methods --------------------------------------------------------- */
/* c^T G c for G (D,D) */
static double ml_quad(const double *G, const double *c, int D) {
    double s = 0;
    for (int i = 0; i < D; i++) {
        double r = 0;
        for (int j = 0; j < D; j++) r += G[i * D + j] * c[j];
        s += c[i] * r;
    }
    return s > 0 ? s : 0;
}

/* model_stock: coefficients over [base, x_1..x_K] from the offsets' Gram G (K,K) */
static int ml_model_stock_coeffs(const double *G, int K, double *c, const char *name) {
    double sum = 0;
    int npairs = 0;
    for (int i = 0; i < K; i++)
        for (int j = i + 1; j < K; j++) {
            double np = sqrt(G[i * K + i]) * sqrt(G[j * K + j]);
            double cs = G[i * K + j] / (np > 1e-6 ? np : 1e-6);
            sum += cs < -1 ? -1 : cs > 1 ? 1 : cs;
            npairs++;
        }
    double cos_theta = sum / npairs;
    double den = 1.0 + (K - 1) * cos_theta;
    if (den == 0)
        return ML_FAIL(ML_ERR_NUMERIC, "model_stock: tensor %s: mean angle cos %g makes the interpolation ratio infinite",
                       name, cos_theta);
    double t = K * cos_theta / den;
    c[0] = 1.0 - t;
    for (int i = 0; i < K; i++) c[1 + i] = t / K;
    return ML_OK;
}

/* multislerp (mergekit): G (K,K) Gram of d_i (offsets or raw), w (K) weights;
 * writes r (K): result = sum r_i d_i. */
static int ml_multislerp_coeffs(const ml_merge_params *p, const double *G, double *r, const char *name) {
    int K = p->K;
    double w[ML_MERGE_MAX_MODELS], n[ML_MERGE_MAX_MODELS], m[ML_MERGE_MAX_MODELS], tr[ML_MERGE_MAX_MODELS];
    double sw = 0;
    for (int i = 0; i < K; i++) sw += p->weight[i];
    for (int i = 0; i < K; i++) w[i] = p->normalize_weights ? p->weight[i] / sw : p->weight[i];
    double eps = p->eps;
    for (int i = 0; i < K; i++) n[i] = sqrt(G[i * K + i]);
    /* unit_i = d_i / (n_i + eps); mean = sum w_i unit_i */
    for (int i = 0; i < K; i++) m[i] = w[i] / (n[i] + eps);
    double mean_norm = sqrt(ml_quad(G, m, K));
    if (mean_norm < eps) {
        if (K == 2) { /* mergekit's fallback: linear interpolation */
            r[0] = w[0];
            r[1] = w[1];
            return ML_OK;
        }
        return ML_FAIL(ML_ERR_NUMERIC,
                       "multislerp: tensor %s: the weighted sum of the unit tensors is zero (antipodal inputs with "
                       "balancing weights); use different weights",
                       name);
    }
    for (int i = 0; i < K; i++) m[i] /= mean_norm; /* mean_hat */
    /* dots_i = unit_i . mean_hat; tangent = sum w_i unit_i - (sum w_i dots_i) mean_hat */
    double wd = 0;
    for (int i = 0; i < K; i++) {
        double gm = 0;
        for (int j = 0; j < K; j++) gm += G[i * K + j] * m[j];
        wd += w[i] * gm / (n[i] + eps);
    }
    for (int i = 0; i < K; i++) tr[i] = w[i] / (n[i] + eps) - wd * m[i];
    double tn = sqrt(ml_quad(G, tr, K)) + eps;
    double avg_norm = 0;
    for (int i = 0; i < K; i++) avg_norm += n[i] * w[i];
    double cs = cos(tn), sn = sin(tn) / tn;
    for (int i = 0; i < K; i++) r[i] = avg_norm * (m[i] * cs + tr[i] * sn);
    return ML_OK;
}

/* karcher (mergekit): uniform weighted Karcher mean on the unit sphere, scaled
 * by the mean norm. G (K,K) Gram of the raw inputs; writes r (K). */
static void ml_karcher_coeffs(const ml_merge_params *p, const double *G, double *r) {
    int K = p->K;
    double tol = p->tol;
    double n[ML_MERGE_MAX_MODELS], U[ML_MERGE_MAX_MODELS * ML_MERGE_MAX_MODELS];
    double a[ML_MERGE_MAX_MODELS], mc[ML_MERGE_MAX_MODELS], tc[ML_MERGE_MAX_MODELS];
    int valid[ML_MERGE_MAX_MODELS], nvalid = 0, first = -1;
    double asum = 0;
    for (int i = 0; i < K; i++) {
        n[i] = sqrt(G[i * K + i]);
        valid[i] = n[i] > tol;
        if (valid[i]) {
            nvalid++;
            asum += 1.0 / K;
            if (first < 0) first = i;
        }
    }
    for (int i = 0; i < K; i++) r[i] = 0;
    if (!nvalid) return;
    /* U: Gram of the unit vectors (zero rows for invalid ones) */
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            U[i * K + j] = (valid[i] && valid[j]) ? G[i * K + j] / (n[i] * n[j]) : 0;
    for (int i = 0; i < K; i++) a[i] = valid[i] ? (1.0 / K) / asum : 0;
    for (int i = 0; i < K; i++) mc[i] = a[i];
    double mn = sqrt(ml_quad(U, mc, K));
    if (mn < tol) {
        for (int i = 0; i < K; i++) mc[i] = (i == first);
    } else {
        for (int i = 0; i < K; i++) mc[i] /= mn;
    }
    for (int it = 0; it < p->max_iter; it++) {
        for (int i = 0; i < K; i++) tc[i] = 0;
        for (int i = 0; i < K; i++) {
            if (!valid[i]) continue;
            double dot = 0;
            for (int j = 0; j < K; j++) dot += U[i * K + j] * mc[j];
            dot = dot < -1 ? -1 : dot > 1 ? 1 : dot;
            double theta = acos(dot);
            if (theta < tol) continue;
            double f = a[i] * theta / sin(theta);
            tc[i] += f;
            for (int j = 0; j < K; j++) tc[j] -= f * dot * mc[j];
        }
        double tn = sqrt(ml_quad(U, tc, K));
        if (tn < tol) break;
        double cs = cos(tn), sn = sin(tn) / tn;
        for (int i = 0; i < K; i++) mc[i] = cs * mc[i] + sn * tc[i];
        double un = sqrt(ml_quad(U, mc, K));
        if (un > tol)
            for (int i = 0; i < K; i++) mc[i] /= un;
    }
    double scale = 0;
    for (int i = 0; i < K; i++) scale += n[i] / K;
    for (int i = 0; i < K; i++) r[i] = valid[i] ? scale * mc[i] / n[i] : 0;
}

/* ---- TIES / DARE (generalized task arithmetic, elementwise) -------------------- */
static inline uint64_t ml_mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* out (N) = base + lambda * mix(sparsify(x_i - base)); base (N), x: K x (N) */
static int ml_gta_apply(const ml_merge_params *p, const ml_merge_inputs *in, ml_merge_work *w, float *out) {
    const int K = p->K;
    const size_t N = in->rows * in->cols;
    const float *base = in->base;
    const int magnitude = p->method == ML_MERGE_TIES;
    const int random = p->method == ML_MERGE_DARE_LINEAR || p->method == ML_MERGE_DARE_TIES;
    const int consensus = p->method == ML_MERGE_TIES || p->method == ML_MERGE_DARE_TIES;
    int sparse[ML_MERGE_MAX_MODELS];
    float thr[ML_MERGE_MAX_MODELS];
    size_t keep_eq[ML_MERGE_MAX_MODELS], seen_eq[ML_MERGE_MAX_MODELS];
    uint64_t thr32[ML_MERGE_MAX_MODELS];
    double scale[ML_MERGE_MAX_MODELS];
    for (int i = 0; i < K; i++) {
        double dens = p->density[i];
        sparse[i] = (magnitude || random) && dens < 1;
        scale[i] = 1;
        seen_eq[i] = keep_eq[i] = 0;
        if (sparse[i] && magnitude) {
            size_t k = (size_t)(dens * (double)N); /* mergekit: int(density * numel) */
            if (k == 0)
                return ML_FAIL(ML_ERR_ARG,
                               "ties: tensor %s: density %g of model %d keeps no element of %zu (need density >= %g)",
                               in->name ? in->name : "?", dens, i, N, 1.0 / (double)N);
            size_t n_gt;
            ml_merge_topk_threshold(in->x[i], base, N, k, w->hist, &thr[i], &n_gt);
            keep_eq[i] = k - n_gt;
            if (p->rescale) { /* keep the L1 norm of the task vector */
                double total = 0, kept = 0;
                const float *x = in->x[i];
                for (size_t j = 0; j < N; j++) {
                    float a = fabsf(x[j] - base[j]);
                    total += a;
                    if (a > thr[i]) kept += a;
                }
                kept += (double)keep_eq[i] * thr[i];
                if (total >= 1e-8 && kept >= 1e-8) scale[i] = total / kept;
            }
        } else if (sparse[i] && random) {
            thr32[i] = (uint64_t)(dens * 4294967296.0);
            if (p->rescale) scale[i] = 1.0 / dens;
        }
    }
    double wsum = 0;
    for (int i = 0; i < K; i++) wsum += p->weight[i];
    double divisor_lin = fabs(wsum) < 1e-8 ? 1.0 : wsum;
    double *restrict ssum = w->mix, *restrict mixed = w->mix + ML_GTA_BLOCK, *restrict div = w->mix + 2 * ML_GTA_BLOCK;
    for (size_t j0 = 0, blk = 0; j0 < N; j0 += ML_GTA_BLOCK, blk++) {
        size_t nb = N - j0 < ML_GTA_BLOCK ? N - j0 : ML_GTA_BLOCK;
        const float *b = base + j0;
        for (int i = 0; i < K; i++) { /* masked, rescaled delta of model i */
            float *restrict d = w->dbuf + (size_t)i * ML_GTA_BLOCK;
            const float *x = in->x[i] + j0;
            if (!sparse[i]) {
                for (size_t j = 0; j < nb; j++) d[j] = x[j] - b[j];
            } else if (magnitude) {
                float th = thr[i], sc = (float)scale[i];
                for (size_t j = 0; j < nb; j++) {
                    float dj = x[j] - b[j];
                    d[j] = fabsf(dj) > th ? dj * sc : 0.0f;
                }
                /* elements equal to the threshold: the first keep_eq in index order */
                for (size_t j = 0; j < nb && seen_eq[i] < keep_eq[i]; j++) {
                    float dj = x[j] - b[j];
                    if (fabsf(dj) == th) {
                        d[j] = dj * sc;
                        seen_eq[i]++;
                    }
                }
            } else {
                ml_rng r;
                ml_rng_seed(&r, p->seed, ml_mix64(p->stream ^ ml_mix64(((uint64_t)i << 40) ^ blk)));
                uint32_t *restrict draw = w->draws;
                for (size_t j = 0; j < nb; j += 2) { /* one 64-bit draw decides two elements */
                    uint64_t u = ml_rng_u64(&r);
                    draw[j] = (uint32_t)u;
                    draw[j + 1] = (uint32_t)(u >> 32);
                }
                uint32_t th = (uint32_t)thr32[i];
                float sc = (float)scale[i];
                for (size_t j = 0; j < nb; j++) { /* keep with probability density */
                    float dj = x[j] - b[j];
                    d[j] = draw[j] < th ? dj * sc : 0.0f;
                }
            }
        }
        for (size_t j = 0; j < nb; j++) mixed[j] = 0;
        if (consensus) { /* elect the sign of the weighted sum; keep agreeing deltas */
            for (size_t j = 0; j < nb; j++) ssum[j] = 0, div[j] = 0;
            for (int i = 0; i < K; i++) {
                const float *restrict d = w->dbuf + (size_t)i * ML_GTA_BLOCK;
                double wi = p->weight[i];
                for (size_t j = 0; j < nb; j++) ssum[j] += wi * d[j];
            }
            for (int i = 0; i < K; i++) {
                const float *restrict d = w->dbuf + (size_t)i * ML_GTA_BLOCK;
                double wi = p->weight[i];
                for (size_t j = 0; j < nb; j++) { /* agree: sign(w d) == elected sign (0 never agrees) */
                    double wd = wi * d[j];
                    double sg = ssum[j] >= 0 ? wd : -wd;
                    double agree = sg > 0 ? 1.0 : 0.0;
                    mixed[j] += agree * wd;
                    div[j] += agree * wi;
                }
            }
            for (size_t j = 0; j < nb; j++) div[j] = div[j] == 0 ? 1.0 : div[j];
        } else {
            for (int i = 0; i < K; i++) {
                const float *restrict d = w->dbuf + (size_t)i * ML_GTA_BLOCK;
                double wi = p->weight[i];
                for (size_t j = 0; j < nb; j++) mixed[j] += wi * d[j];
            }
            for (size_t j = 0; j < nb; j++) div[j] = divisor_lin;
        }
        float *o = out + j0;
        double lam = p->lambda;
        if (p->normalize)
            for (size_t j = 0; j < nb; j++) o[j] = (float)((double)b[j] + lam * (mixed[j] / div[j]));
        else
            for (size_t j = 0; j < nb; j++) o[j] = (float)((double)b[j] + lam * mixed[j]);
    }
    return ML_OK;
}

/* ---- apply ------------------------------------------------------------------------- */
int ml_merge_apply(const ml_merge_params *p, const ml_merge_inputs *in, const ml_merge_stats *st, ml_merge_work *w,
                   float *out) {
    const int K = p->K;
    const size_t N = in->rows * in->cols;
    const char *name = in->name ? in->name : "?";
    if (K > w->K) return ML_FAIL(ML_ERR_INTERNAL, "merge workspace sized for %d models, got %d", w->K, K);
    int want = (p->method == ML_MERGE_SLERP) ? 2
               : (p->method == ML_MERGE_MODEL_STOCK || p->method == ML_MERGE_MULTISLERP || p->method == ML_MERGE_KARCHER)
                   ? K
                   : 0;
    if (want && (!st || st->dim != want))
        return ML_FAIL(ML_ERR_INTERNAL, "tensor %s: %s needs statistics of dimension %d (ml_merge_stats_compute)", name,
                       ml_merge_method_name(p->method), want);
    const float *v[ML_MERGE_MAX_MODELS + 1];
    double *c = w->coef;
    int nv = 0;
    if (p->has_base) v[nv++] = in->base;
    for (int i = 0; i < K; i++) v[nv++] = in->x[i];
    switch (p->method) {
    case ML_MERGE_LINEAR:
    case ML_MERGE_SOUP: {
        double sum = 0;
        for (int i = 0; i < K; i++) sum += p->weight[i];
        for (int i = 0; i < K; i++) c[i] = p->normalize ? p->weight[i] / sum : p->weight[i];
        break;
    }
    case ML_MERGE_SLERP:
        ml_slerp_coeffs(st->gram, p->t, c);
        break;
    case ML_MERGE_TASK_ARITHMETIC: {
        double sum = 0;
        for (int i = 0; i < K; i++) sum += p->weight[i];
        double div = p->normalize ? (fabs(sum) < 1e-8 ? 1.0 : sum) : 1.0, csum = 0;
        for (int i = 0; i < K; i++) csum += c[1 + i] = p->lambda * p->weight[i] / div;
        c[0] = 1.0 - csum;
        break;
    }
    case ML_MERGE_TIES:
    case ML_MERGE_DARE_LINEAR:
    case ML_MERGE_DARE_TIES:
        return ml_gta_apply(p, in, w, out);
    case ML_MERGE_MODEL_STOCK:
        if (st->ngroups > 1) {
            if (st->ngroups > w->max_rows)
                return ML_FAIL(ML_ERR_INTERNAL, "merge workspace sized for %zu rows, tensor %s has %zu", w->max_rows,
                               name, st->ngroups);
            for (size_t g = 0; g < st->ngroups; g++)
                ML_CHECK(ml_model_stock_coeffs(st->gram + g * (size_t)K * K, K, c + g * (size_t)(K + 1), name));
            for (size_t g = 0; g < st->ngroups; g++) {
                const float *vg[ML_MERGE_MAX_MODELS + 1];
                for (int i = 0; i < nv; i++) vg[i] = v[i] + g * in->cols;
                ml_merge_lincomb(out + g * in->cols, vg, c + g * (size_t)(K + 1), nv, in->cols);
            }
            return ML_OK;
        }
        ML_CHECK(ml_model_stock_coeffs(st->gram, K, c, name));
        break;
    case ML_MERGE_MULTISLERP: {
        double r[ML_MERGE_MAX_MODELS], rs = 0;
        ML_CHECK(ml_multislerp_coeffs(p, st->gram, r, name));
        for (int i = 0; i < K; i++) rs += r[i];
        if (p->has_base) { /* base + sum r_i (x_i - base) */
            c[0] = 1.0 - rs;
            for (int i = 0; i < K; i++) c[1 + i] = r[i];
        } else {
            for (int i = 0; i < K; i++) c[i] = r[i];
        }
        break;
    }
    case ML_MERGE_KARCHER:
        ml_karcher_coeffs(p, st->gram, c);
        break;
    default:
        return ML_FAIL(ML_ERR_INTERNAL, "unknown merge method %d", p->method);
    }
    ml_merge_lincomb(out, v, c, nv, N);
    return ML_OK;
}
