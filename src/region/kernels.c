/* Region kernels: cosine / distance from a Gram matrix, Jacobi eigen-
 * decomposition, k-means++, spectral clustering, cluster accuracy, Dirichlet
 * sampling. All local and deterministic (fixed loop orders, seeded ml_rng).
 *
 * Legend: n items (models), d features per item, k clusters, L labels. */
#include <math.h>
#include <string.h>

#include "mergelens/features.h"
#include "mergelens/region.h"

void ml_region_cos_dist(const double *gram, int M, double *cosine, double *distance) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) {
            double gi = gram[(size_t)i * M + i], gj = gram[(size_t)j * M + j], g = gram[(size_t)i * M + j];
            double den = sqrt(gi) * sqrt(gj);
            cosine[(size_t)i * M + j] = i == j ? 1.0 : den > 0 ? g / den : 0.0;
            double d2 = gi + gj - 2 * g;
            distance[(size_t)i * M + j] = i == j || d2 <= 0 ? 0.0 : sqrt(d2);
        }
}

int ml_region_eigh(double *a, int n, double *evals, double *evecs) {
    /* a (n,n) symmetric; V accumulates the rotations (columns = eigenvectors) */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) evecs[(size_t)i * n + j] = i == j;
    int converged = n < 2;
    for (int sweep = 0; sweep < 100 && !converged; sweep++) {
        double off = 0, tot = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double v = a[(size_t)i * n + j] * a[(size_t)i * n + j];
                tot += v;
                if (i != j) off += v;
            }
        if (off <= 1e-30 * (tot > 0 ? tot : 1)) {
            converged = 1;
            break;
        }
        for (int p = 0; p < n - 1; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[(size_t)p * n + q];
                if (apq == 0) continue;
                double app = a[(size_t)p * n + p], aqq = a[(size_t)q * n + q];
                double theta = (aqq - app) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int r = 0; r < n; r++) { /* columns p, q of a */
                    double arp = a[(size_t)r * n + p], arq = a[(size_t)r * n + q];
                    a[(size_t)r * n + p] = c * arp - s * arq;
                    a[(size_t)r * n + q] = s * arp + c * arq;
                }
                for (int r = 0; r < n; r++) { /* rows p, q */
                    double apr = a[(size_t)p * n + r], aqr = a[(size_t)q * n + r];
                    a[(size_t)p * n + r] = c * apr - s * aqr;
                    a[(size_t)q * n + r] = s * apr + c * aqr;
                }
                for (int r = 0; r < n; r++) {
                    double vrp = evecs[(size_t)r * n + p], vrq = evecs[(size_t)r * n + q];
                    evecs[(size_t)r * n + p] = c * vrp - s * vrq;
                    evecs[(size_t)r * n + q] = s * vrp + c * vrq;
                }
            }
    }
    if (!converged) return ML_FAIL(ML_ERR_NUMERIC, "region: Jacobi eigen-decomposition of a %dx%d matrix did not converge", n, n);
    /* sort descending by eigenvalue (selection sort; swaps columns of V) */
    for (int i = 0; i < n; i++) evals[i] = a[(size_t)i * n + i];
    for (int i = 0; i < n; i++) {
        int best = i;
        for (int j = i + 1; j < n; j++)
            if (evals[j] > evals[best]) best = j;
        if (best == i) continue;
        double t = evals[i];
        evals[i] = evals[best];
        evals[best] = t;
        for (int r = 0; r < n; r++) {
            t = evecs[(size_t)r * n + i];
            evecs[(size_t)r * n + i] = evecs[(size_t)r * n + best];
            evecs[(size_t)r * n + best] = t;
        }
    }
    return ML_OK;
}

static double ml_sqdist(const double *a, const double *b, int d) {
    double s = 0;
    for (int j = 0; j < d; j++) s += (a[j] - b[j]) * (a[j] - b[j]);
    return s;
}

/* One k-means run from k-means++ seeds: Lloyd iterations until stable. */
static double ml_kmeans_once(const double *x, int n, int d, int k, ml_rng *rng, double *cent /* (k,d) */,
                             double *dmin /* (n) */, int *assign) {
    int first = (int)ml_rng_below(rng, (uint64_t)n);
    memcpy(cent, x + (size_t)first * d, sizeof *cent * (size_t)d);
    for (int i = 0; i < n; i++) dmin[i] = ml_sqdist(x + (size_t)i * d, cent, d);
    for (int c = 1; c < k; c++) {
        double tot = 0;
        for (int i = 0; i < n; i++) tot += dmin[i];
        int pick = n - 1;
        if (tot > 0) {
            double u = ml_rng_uniform(rng) * tot, acc = 0;
            for (int i = 0; i < n; i++) {
                acc += dmin[i];
                if (u < acc) {
                    pick = i;
                    break;
                }
            }
        } else {
            pick = (int)ml_rng_below(rng, (uint64_t)n);
        }
        memcpy(cent + (size_t)c * d, x + (size_t)pick * d, sizeof *cent * (size_t)d);
        for (int i = 0; i < n; i++) {
            double v = ml_sqdist(x + (size_t)i * d, cent + (size_t)c * d, d);
            if (v < dmin[i]) dmin[i] = v;
        }
    }
    for (int i = 0; i < n; i++) assign[i] = -1;
    double inertia = 0;
    for (int it = 0; it < 300; it++) {
        int changed = 0;
        inertia = 0;
        for (int i = 0; i < n; i++) {
            int best = 0;
            double bd = INFINITY;
            for (int c = 0; c < k; c++) {
                double v = ml_sqdist(x + (size_t)i * d, cent + (size_t)c * d, d);
                if (v < bd) bd = v, best = c;
            }
            inertia += bd;
            if (assign[i] != best) changed = 1, assign[i] = best;
        }
        if (!changed) break;
        for (int c = 0; c < k; c++) { /* empty clusters keep their centre */
            int cnt = 0;
            for (int i = 0; i < n; i++) cnt += assign[i] == c;
            if (!cnt) continue;
            for (int j = 0; j < d; j++) {
                double s = 0;
                for (int i = 0; i < n; i++)
                    if (assign[i] == c) s += x[(size_t)i * d + j];
                cent[(size_t)c * d + j] = s / cnt;
            }
        }
    }
    return inertia;
}

int ml_region_kmeans(const double *x, int n, int d, int k, uint64_t seed, int n_init, int *assign,
                     double *inertia) {
    if (n < 1 || k < 1 || k > n) return ML_FAIL(ML_ERR_ARG, "region: k-means needs 1 <= k <= n items, got k = %d, n = %d", k, n);
    double *cent = ml_malloc(sizeof *cent * (size_t)k * d), *dmin = ml_malloc(sizeof *dmin * (size_t)n);
    int *tmp = ml_malloc(sizeof *tmp * (size_t)n), *map = ml_malloc(sizeof *map * (size_t)k);
    int rc = cent && dmin && tmp && map ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory (k-means)");
    double best = INFINITY;
    ml_rng rng;
    ml_rng_seed(&rng, seed, 0x6b6d65616e73ULL); /* "kmeans" */
    for (int r = 0; rc == ML_OK && r < (n_init > 0 ? n_init : 1); r++) {
        double in = ml_kmeans_once(x, n, d, k, &rng, cent, dmin, tmp);
        if (in < best - 1e-12 * fabs(best) || r == 0) {
            best = in;
            memcpy(assign, tmp, sizeof *tmp * (size_t)n);
        }
    }
    if (rc == ML_OK) { /* renumber by first appearance */
        int next = 0;
        for (int c = 0; c < k; c++) map[c] = -1;
        for (int i = 0; i < n; i++) {
            if (map[assign[i]] < 0) map[assign[i]] = next++;
            assign[i] = map[assign[i]];
        }
        if (inertia) *inertia = best;
    }
    ml_free(cent);
    ml_free(dmin);
    ml_free(tmp);
    ml_free(map);
    return rc;
}

int ml_region_spectral(const double *cosine, int n, int k, uint64_t seed, int n_init, int *assign, double *evals) {
    if (k < 1 || k > n) return ML_FAIL(ML_ERR_ARG, "region: cannot form %d clusters from %d models", k, n);
    double *a = ml_malloc(sizeof *a * (size_t)n * n), *v = ml_malloc(sizeof *v * (size_t)n * n);
    double *ev = ml_malloc(sizeof *ev * (size_t)n), *deg = ml_malloc(sizeof *deg * (size_t)n);
    double *emb = ml_malloc(sizeof *emb * (size_t)n * k);
    int rc = a && v && ev && deg && emb ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory (spectral)");
    if (rc == ML_OK) {
        for (int i = 0; i < n; i++) {
            deg[i] = 0;
            for (int j = 0; j < n; j++) {
                double c = i == j ? 1.0 : cosine[(size_t)i * n + j];
                a[(size_t)i * n + j] = c > 0 ? c : 0;
                deg[i] += a[(size_t)i * n + j];
            }
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) a[(size_t)i * n + j] /= sqrt(deg[i] * deg[j]);
        rc = ml_region_eigh(a, n, ev, v);
    }
    if (rc == ML_OK) {
        for (int i = 0; i < n; i++) { /* the k leading eigenvectors, rows normalised */
            double s = 0;
            for (int c = 0; c < k; c++) s += v[(size_t)i * n + c] * v[(size_t)i * n + c];
            s = s > 0 ? 1 / sqrt(s) : 0;
            for (int c = 0; c < k; c++) emb[(size_t)i * k + c] = v[(size_t)i * n + c] * s;
        }
        if (evals) memcpy(evals, ev, sizeof *ev * (size_t)n);
        rc = ml_region_kmeans(emb, n, k, k, seed, n_init, assign, NULL);
    }
    ml_free(a);
    ml_free(v);
    ml_free(ev);
    ml_free(deg);
    ml_free(emb);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

int ml_region_cluster_accuracy(const int *assign, const int *labels, int n, int k, int L, double *accuracy) {
    /* maximise matched counts = minimise -count; rows = the smaller side */
    int rows = k <= L ? k : L, cols = k <= L ? L : k;
    float *cost = ml_calloc((size_t)rows * cols, sizeof *cost);
    int32_t *r2c = ml_malloc(sizeof *r2c * (size_t)rows);
    if (!cost || !r2c) {
        ml_free(cost);
        ml_free(r2c);
        return ML_FAIL(ML_ERR_NOMEM, "region: out of memory (accuracy)");
    }
    for (int i = 0; i < n; i++) {
        int c = assign[i], l = labels[i];
        if (k <= L) cost[(size_t)c * cols + l] -= 1;
        else cost[(size_t)l * cols + c] -= 1;
    }
    double total = 0;
    int rc = ml_assign_dense(cost, rows, cols, r2c, &total);
    if (rc == ML_OK) *accuracy = n ? -total / n : 0;
    ml_free(cost);
    ml_free(r2c);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

/* Gamma(shape, 1) by Marsaglia-Tsang; shape < 1 via Gamma(shape + 1) U^(1/shape). */
static double ml_gamma(ml_rng *r, double shape) {
    if (shape < 1) {
        double u = ml_rng_uniform(r);
        return ml_gamma(r, shape + 1) * pow(u > 0 ? u : 1e-300, 1 / shape);
    }
    double d = shape - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x = ml_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = ml_rng_uniform(r);
        if (u < 1 - 0.0331 * x * x * x * x) return d * v;
        if (u > 0 && log(u) < 0.5 * x * x + d * (1 - v + log(v))) return d * v;
    }
}

void ml_region_dirichlet(ml_rng *r, double alpha, int n, double *w) {
    double s = 0;
    for (int i = 0; i < n; i++) s += w[i] = ml_gamma(r, alpha);
    for (int i = 0; i < n; i++) w[i] = s > 0 ? w[i] / s : 1.0 / n;
}
