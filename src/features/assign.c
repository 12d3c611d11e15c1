/* One-to-one matching of features: the dense rectangular assignment problem
 * (shortest augmenting path with dual potentials, the Jonker-Volgenant form
 * of the Hungarian method) and an exact sparse variant that splits the
 * candidate-pair graph into connected components.
 *
 * Legend: n rows, m columns (n <= m inside the solver; the caller's matrix
 * is transposed when n > m).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* cost (n, m) with n <= m, row-major, stride ld; transposed access when tr
 * (then element (i, j) is cost[j * ld + i]). row_to_col (n). Every row is
 * assigned. O(n^2 m) time, O(m) extra memory besides the input. */
static int ml_assign_core(const float *cost, int64_t n, int64_t m, int64_t ld, int tr, int32_t *row_to_col) {
    double *u = ml_calloc((size_t)(n + 1), sizeof(double));
    double *v = ml_calloc((size_t)(m + 1), sizeof(double));
    double *minv = ml_malloc(sizeof(double) * (size_t)(m + 1));
    int64_t *p = ml_calloc((size_t)(m + 1), sizeof(int64_t));   /* p[j]: row (1-based) on column j, 0 = free */
    int64_t *way = ml_calloc((size_t)(m + 1), sizeof(int64_t)); /* previous column on the augmenting path */
    uint8_t *used = ml_malloc((size_t)(m + 1));
    int rc = ML_OK;
    if (!u || !v || !minv || !p || !way || !used) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    for (int64_t i = 1; i <= n; i++) {
        p[0] = i;
        int64_t j0 = 0;
        for (int64_t j = 0; j <= m; j++) {
            minv[j] = INFINITY;
            used[j] = 0;
        }
        do { /* Dijkstra step on reduced costs from the free row i */
            used[j0] = 1;
            int64_t i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            const float *crow = cost + (i0 - 1) * ld; /* (m) when !tr */
            for (int64_t j = 1; j <= m; j++) {
                if (used[j]) continue;
                double c = tr ? cost[(j - 1) * ld + (i0 - 1)] : crow[j - 1];
                double cur = c - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            if (j1 == 0) {
                rc = ML_FAIL(ML_ERR_NUMERIC, "assignment: non-finite cost reached from row %lld", (long long)(i - 1));
                goto done;
            }
            for (int64_t j = 0; j <= m; j++) {
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
        } while (p[j0] != 0);
        do { /* augment along the path */
            int64_t j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    for (int64_t i = 0; i < n; i++) row_to_col[i] = -1;
    for (int64_t j = 1; j <= m; j++)
        if (p[j]) row_to_col[p[j] - 1] = (int32_t)(j - 1);
done:
    ml_free(u);
    ml_free(v);
    ml_free(minv);
    ml_free(p);
    ml_free(way);
    ml_free(used);
    return rc;
}

int ml_assign_dense(const float *cost, int64_t n, int64_t m, int32_t *row_to_col, double *total) {
    if (n < 0 || m < 0 || (n > 0 && m > 0 && !cost))
        return ML_FAIL(ML_ERR_ARG, "ml_assign_dense: bad cost matrix (%lld x %lld)", (long long)n, (long long)m);
    for (int64_t k = 0; k < n * m; k++)
        if (!isfinite(cost[k]))
            return ML_FAIL(ML_ERR_NUMERIC, "ml_assign_dense: cost (%lld, %lld) is not finite", (long long)(k / m),
                           (long long)(k % m));
    for (int64_t i = 0; i < n; i++) row_to_col[i] = -1;
    if (n == 0 || m == 0) {
        if (total) *total = 0;
        return ML_OK;
    }
    if (n <= m) {
        ML_CHECK(ml_assign_core(cost, n, m, m, 0, row_to_col));
    } else { /* assign every column: solve the transpose */
        int32_t *col_to_row = ml_malloc(sizeof(int32_t) * (size_t)m);
        if (!col_to_row) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        int rc = ml_assign_core(cost, m, n, m, 1, col_to_row);
        if (rc == ML_OK)
            for (int64_t j = 0; j < m; j++) row_to_col[col_to_row[j]] = (int32_t)j;
        ml_free(col_to_row);
        ML_CHECK(rc);
    }
    if (total) {
        double s = 0;
        for (int64_t i = 0; i < n; i++)
            if (row_to_col[i] >= 0) s += cost[i * m + row_to_col[i]];
        *total = s;
    }
    return ML_OK;
}

/* ---- sparse: components of the candidate graph ---------------------------- */
static int64_t ml_uf_find(int64_t *par, int64_t x) {
    while (par[x] != x) {
        par[x] = par[par[x]];
        x = par[x];
    }
    return x;
}

typedef struct {
    int64_t root, idx;
} ml_comp_key;

static int ml_comp_cmp(const void *x, const void *y) {
    const ml_comp_key *p = x, *q = y;
    if (p->root != q->root) return p->root < q->root ? -1 : 1;
    return (p->idx > q->idx) - (p->idx < q->idx);
}

int ml_assign_pairs(int64_t n_a, int64_t n_b, const ml_pair *pairs, int64_t npairs, double floor,
                    int64_t max_component, int32_t *a_partner, int32_t *b_partner) {
    if (max_component <= 0) max_component = 8192;
    for (int64_t i = 0; i < n_a; i++) a_partner[i] = -1;
    for (int64_t j = 0; j < n_b; j++) b_partner[j] = -1;
    for (int64_t k = 0; k < npairs; k++)
        if (pairs[k].a < 0 || pairs[k].a >= n_a || pairs[k].b < 0 || pairs[k].b >= n_b)
            return ML_FAIL(ML_ERR_ARG, "ml_assign_pairs: pair %lld (%d, %d) is outside %lld x %lld", (long long)k,
                           pairs[k].a, pairs[k].b, (long long)n_a, (long long)n_b);
    int rc = ML_OK;
    int64_t *par = ml_malloc(sizeof(int64_t) * (size_t)(n_a + n_b));
    int64_t *local = ml_malloc(sizeof(int64_t) * (size_t)(n_a + n_b));
    ml_comp_key *keys = ml_malloc(sizeof(ml_comp_key) * (size_t)(npairs ? npairs : 1));
    int64_t *rows = NULL, *cols = NULL;
    float *cost = NULL;
    int32_t *r2c = NULL;
    if (!par || !local || !keys) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    for (int64_t x = 0; x < n_a + n_b; x++) {
        par[x] = x;
        local[x] = -1;
    }
    int64_t ne = 0;
    for (int64_t k = 0; k < npairs; k++) {
        if (!(pairs[k].r >= floor)) continue;
        int64_t x = ml_uf_find(par, pairs[k].a), y = ml_uf_find(par, n_a + pairs[k].b);
        if (x != y) par[x < y ? y : x] = x < y ? x : y;
        keys[ne++] = (ml_comp_key){0, k};
    }
    for (int64_t e = 0; e < ne; e++) keys[e].root = ml_uf_find(par, pairs[keys[e].idx].a);
    qsort(keys, (size_t)ne, sizeof(ml_comp_key), ml_comp_cmp);
    rows = ml_malloc(sizeof(int64_t) * (size_t)(max_component + 1));
    cols = ml_malloc(sizeof(int64_t) * (size_t)(max_component + 1));
    if (!rows || !cols) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    for (int64_t e0 = 0, e1; e0 < ne; e0 = e1) {
        int64_t nr = 0, nc = 0;
        for (e1 = e0; e1 < ne && keys[e1].root == keys[e0].root; e1++) {
            const ml_pair *pp = &pairs[keys[e1].idx];
            if (local[pp->a] < 0) {
                if (nr + nc >= max_component) goto too_big;
                local[pp->a] = nr;
                rows[nr++] = pp->a;
            }
            if (local[n_a + pp->b] < 0) {
                if (nr + nc >= max_component) goto too_big;
                local[n_a + pp->b] = nc;
                cols[nc++] = pp->b;
            }
        }
        /* cost (nr, nc): -(r - floor) on candidate pairs, 0 elsewhere */
        ml_free(cost);
        ml_free(r2c);
        cost = ml_calloc((size_t)(nr * nc), sizeof(float));
        r2c = ml_malloc(sizeof(int32_t) * (size_t)nr);
        if (!cost || !r2c) {
            rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            goto done;
        }
        for (int64_t e = e0; e < e1; e++) {
            const ml_pair *pp = &pairs[keys[e].idx];
            float w = -(float)(pp->r - floor);
            float *cell = &cost[local[pp->a] * nc + local[n_a + pp->b]];
            if (w < *cell) *cell = w;
        }
        ML_CHECK_GOTO(ml_assign_dense(cost, nr, nc, r2c, NULL), done);
        /* keep assigned cells that are candidate pairs */
        for (int64_t e = e0; e < e1; e++) {
            const ml_pair *pp = &pairs[keys[e].idx];
            if (r2c[local[pp->a]] == local[n_a + pp->b]) {
                a_partner[pp->a] = pp->b;
                b_partner[pp->b] = pp->a;
            }
        }
        for (int64_t i = 0; i < nr; i++) local[rows[i]] = -1;
        for (int64_t j = 0; j < nc; j++) local[n_a + cols[j]] = -1;
    }
    goto done;
too_big:
    rc = ML_FAIL(ML_ERR_UNSUPPORTED,
                 "ml_assign_pairs: a connected component of the pairs with r >= %g has more than %lld features; "
                 "raise the floor or max_component",
                 floor, (long long)max_component);
done:
    ml_free(par);
    ml_free(local);
    ml_free(keys);
    ml_free(rows);
    ml_free(cols);
    ml_free(cost);
    ml_free(r2c);
    return rc;
}

int ml_best_from_assignment(const ml_best *like, const ml_pair *pairs, int64_t npairs, const int32_t *a_partner,
                            const int32_t *b_partner, ml_best *out) {
    ML_CHECK(ml_best_alloc(out, like->n_a, like->n_b));
    memcpy(out->a_dead, like->a_dead, (size_t)like->n_a);
    memcpy(out->b_dead, like->b_dead, (size_t)like->n_b);
    for (int64_t k = 0; k < npairs; k++) {
        const ml_pair *pp = &pairs[k];
        if (pp->a < 0 || pp->a >= like->n_a || pp->b < 0 || pp->b >= like->n_b) continue;
        if (a_partner[pp->a] == pp->b && b_partner[pp->b] == pp->a && !like->a_dead[pp->a] && !like->b_dead[pp->b]) {
            out->a_partner[pp->a] = pp->b;
            out->a_score[pp->a] = pp->r;
            out->b_partner[pp->b] = pp->a;
            out->b_score[pp->b] = pp->r;
        }
    }
    double sa = 0, sb = 0;
    int64_t la = 0, lb = 0;
    for (int64_t i = 0; i < like->n_a; i++)
        if (!out->a_dead[i]) {
            sa += out->a_score[i];
            la++;
        }
    for (int64_t j = 0; j < like->n_b; j++)
        if (!out->b_dead[j]) {
            sb += out->b_score[j];
            lb++;
        }
    out->a_mean = la ? sa / (double)la : 0;
    out->b_mean = lb ? sb / (double)lb : 0;
    return ML_OK;
}
