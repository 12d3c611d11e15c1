/* Token-profile correlation (each feature's mean activation per token id,
 * correlated over the token ids seen by both streams) and the diagonal
 * correlation of the same features on two activation sources.
 *
 * Legend: V = vocabulary, n = token rows of a chunk, nf = features of the
 * profile's block, F = features of a dictionary.
 */
#include "internal.h"

#include <string.h>

/* Profiles of at most this many (id, feature) sums are kept dense (16 MB). */
#define ML_TPROF_DENSE_MAX ((int64_t)1 << 21)

struct ml_tprof {
    int64_t vocab, f0, nf, max_rows;
    int64_t *count;  /* (V) rows seen per token id */
    ml_feat_hash h;  /* key v * nf + (f - f0) -> activation sum (when dense is NULL) */
    double *dense;   /* (V, nf) the same sums, when V x nf <= ML_TPROF_DENSE_MAX (no hashing) */
    int consumed;
};

int ml_tprof_create(const ml_corr *corr, int side, int64_t vocab, ml_tprof **out) {
    *out = NULL;
    if (side != 0 && side != 1) return ML_FAIL(ML_ERR_ARG, "ml_tprof_create: side must be 0 (A) or 1 (B), got %d", side);
    if (vocab <= 0) return ML_FAIL(ML_ERR_ARG, "ml_tprof_create: vocabulary size must be positive, got %lld", (long long)vocab);
    const ml_feat_grid *g = ml_feat_corr_grid(corr);
    ml_tprof *p = ml_calloc(1, sizeof *p);
    if (!p) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    p->vocab = vocab;
    p->f0 = side == 0 ? g->a0 : g->b0;
    p->nf = side == 0 ? g->na : g->nb;
    p->max_rows = ml_feat_corr_max_rows(corr);
    p->count = ml_calloc((size_t)vocab, sizeof(int64_t));
    int rc = p->count ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    if (rc == ML_OK && vocab * p->nf <= ML_TPROF_DENSE_MAX) {
        p->dense = ml_calloc((size_t)(vocab * p->nf), sizeof(double));
        if (!p->dense) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    } else if (rc == ML_OK) {
        rc = ml_feat_hash_init(&p->h, 1 << 16);
    }
    if (rc != ML_OK) {
        ml_tprof_destroy(&p);
        return rc;
    }
    *out = p;
    return ML_OK;
}

void ml_tprof_destroy(ml_tprof **pp) {
    if (!pp || !*pp) return;
    ml_free((*pp)->count);
    ml_free((*pp)->dense);
    ml_feat_hash_free(&(*pp)->h);
    ml_free(*pp);
    *pp = NULL;
}

int ml_tprof_add(ml_tprof *p, const int32_t *tokens, const ml_fcodes *x) {
    if (p->consumed) return ML_FAIL(ML_ERR_ARG, "ml_tprof_add: the profile was already fed into a correlation");
    ML_CHECK(ml_feat_check_codes(x, INT64_MAX, p->f0, p->nf, -1, "token-profile"));
    for (int64_t t = 0; t < x->n; t++)
        if (tokens[t] < 0 || tokens[t] >= p->vocab)
            return ML_FAIL(ML_ERR_ARG, "ml_tprof_add: token id %d at row %lld is outside the vocabulary [0, %lld)",
                           tokens[t], (long long)t, (long long)p->vocab);
    int64_t off = p->f0 - x->f0;
    for (int64_t t = 0; t < x->n; t++) {
        int64_t base = (int64_t)tokens[t] * p->nf;
        p->count[tokens[t]]++;
        if (x->x) {
            const float *row = x->x + t * x->ld + off; /* (nf) */
            for (int64_t c = 0; c < p->nf; c++)
                if (row[c] != 0.0f) {
                    if (p->dense) p->dense[base + c] += row[c];
                    else ML_CHECK(ml_feat_hash_add(&p->h, base + c, row[c]));
                }
        } else {
            for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
                int64_t c = (int64_t)x->col[e] - off;
                if (x->col[e] < 0 || x->col[e] >= x->nf)
                    return ML_FAIL(ML_ERR_ARG, "token-profile codes: CSR column %d at row %lld is outside [0, %lld)",
                                   x->col[e], (long long)t, (long long)x->nf);
                if (c >= 0 && c < p->nf && x->val[e] != 0.0f) {
                    if (p->dense) p->dense[base + c] += x->val[e];
                    else ML_CHECK(ml_feat_hash_add(&p->h, base + c, x->val[e]));
                }
            }
        }
    }
    return ML_OK;
}

/* CSR of the mean-activation rows of the common token ids: row_ptr
 * (n_common + 1), col, val. common (V) marks the shared ids. */
static int ml_tprof_rows(ml_tprof *p, const uint8_t *common, int64_t n_common, int64_t **row_ptr, int32_t **col,
                         float **val) {
    int64_t *keys = NULL, m = 0;
    double *sums = NULL;
    if (p->dense) { /* the nonzero sums in key order, as the hash would give them */
        for (int64_t k = 0; k < p->vocab * p->nf; k++) m += p->dense[k] != 0.0;
        keys = ml_malloc(sizeof(int64_t) * (size_t)(m ? m : 1));
        sums = ml_malloc(sizeof(double) * (size_t)(m ? m : 1));
        if (!keys || !sums) {
            ml_free(keys);
            ml_free(sums);
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        for (int64_t k = 0, e = 0; k < p->vocab * p->nf; k++)
            if (p->dense[k] != 0.0) {
                keys[e] = k;
                sums[e++] = p->dense[k];
            }
    } else {
        ML_CHECK(ml_feat_hash_sorted(&p->h, &keys, &sums, &m));
    }
    int rc = ML_OK;
    *row_ptr = ml_malloc(sizeof(int64_t) * (size_t)(n_common + 1));
    *col = ml_malloc(sizeof(int32_t) * (size_t)(m ? m : 1));
    *val = ml_malloc(sizeof(float) * (size_t)(m ? m : 1));
    if (!*row_ptr || !*col || !*val) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    int64_t row = 0, k = 0, e = 0;
    (*row_ptr)[0] = 0;
    for (int64_t v = 0; v < p->vocab; v++) {
        if (!common[v]) {
            while (e < m && keys[e] / p->nf == v) e++;
            continue;
        }
        for (; e < m && keys[e] / p->nf == v; e++) {
            (*col)[k] = (int32_t)(keys[e] % p->nf);
            (*val)[k++] = (float)(sums[e] / (double)p->count[v]);
        }
        (*row_ptr)[++row] = k;
    }
done:
    ml_free(keys);
    ml_free(sums);
    return rc;
}

int ml_tprof_feed(ml_tprof *a, ml_tprof *b, ml_corr *corr, int64_t *n_common) {
    const ml_feat_grid *g = ml_feat_corr_grid(corr);
    if (a->vocab != b->vocab)
        return ML_FAIL(ML_ERR_SHAPE, "ml_tprof_feed: vocabularies differ (%lld vs %lld)", (long long)a->vocab,
                       (long long)b->vocab);
    if (a->f0 != g->a0 || a->nf != g->na || b->f0 != g->b0 || b->nf != g->nb)
        return ML_FAIL(ML_ERR_SHAPE, "ml_tprof_feed: the profiles' feature blocks do not match the correlation's");
    if (a->consumed || b->consumed) return ML_FAIL(ML_ERR_ARG, "ml_tprof_feed: a profile was already fed");
    a->consumed = b->consumed = 1;
    uint8_t *common = ml_malloc((size_t)a->vocab);
    int64_t *pa = NULL, *pb = NULL;
    int32_t *ca = NULL, *cb = NULL;
    float *va = NULL, *vb = NULL;
    int rc = ML_OK;
    if (!common) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int64_t nc = 0;
    for (int64_t v = 0; v < a->vocab; v++) {
        common[v] = a->count[v] > 0 && b->count[v] > 0;
        nc += common[v];
    }
    ML_CHECK_GOTO(ml_tprof_rows(a, common, nc, &pa, &ca, &va), done);
    ML_CHECK_GOTO(ml_tprof_rows(b, common, nc, &pb, &cb, &vb), done);
    for (int64_t t0 = 0; t0 < nc; t0 += a->max_rows) {
        int64_t n = nc - t0 < a->max_rows ? nc - t0 : a->max_rows;
        ml_fcodes A = {.n = n, .f0 = a->f0, .nf = a->nf, .row_ptr = pa + t0, .col = ca, .val = va};
        ml_fcodes B = {.n = n, .f0 = b->f0, .nf = b->nf, .row_ptr = pb + t0, .col = cb, .val = vb};
        ML_CHECK_GOTO(ml_corr_add(corr, &A, &B), done);
    }
    *n_common = nc;
done:
    ml_free(common);
    ml_free(pa);
    ml_free(pb);
    ml_free(ca);
    ml_free(cb);
    ml_free(va);
    ml_free(vb);
    return rc;
}

/* ---- diagonal correlation ---------------------------------------------------- */
struct ml_diagcorr {
    int64_t F, n;
    double *s1, *q1, *s2, *q2, *x; /* (F) sums, sums of squares, cross sums */
    float *row2;                   /* (F) source-2 row scattered */
};

int ml_diagcorr_create(int64_t n_features, ml_diagcorr **out) {
    *out = NULL;
    if (n_features <= 0) return ML_FAIL(ML_ERR_ARG, "ml_diagcorr_create: need at least one feature, got %lld", (long long)n_features);
    ml_diagcorr *d = ml_calloc(1, sizeof *d);
    if (!d) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    size_t F = (size_t)n_features;
    d->F = n_features;
    d->s1 = ml_calloc(F, sizeof(double));
    d->q1 = ml_calloc(F, sizeof(double));
    d->s2 = ml_calloc(F, sizeof(double));
    d->q2 = ml_calloc(F, sizeof(double));
    d->x = ml_calloc(F, sizeof(double));
    d->row2 = ml_calloc(F, sizeof(float));
    if (!d->s1 || !d->q1 || !d->s2 || !d->q2 || !d->x || !d->row2) {
        ml_diagcorr_destroy(&d);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    *out = d;
    return ML_OK;
}

void ml_diagcorr_destroy(ml_diagcorr **dp) {
    if (!dp || !*dp) return;
    ml_diagcorr *d = *dp;
    ml_free(d->s1);
    ml_free(d->q1);
    ml_free(d->s2);
    ml_free(d->q2);
    ml_free(d->x);
    ml_free(d->row2);
    ml_free(d);
    *dp = NULL;
}

/* Sums of one row of x into s, q; columns checked for CSR. */
static int ml_diag_row_sums(const ml_fcodes *x, int64_t t, double *s, double *q) {
    if (x->x) {
        const float *row = x->x + t * x->ld;
        for (int64_t f = 0; f < x->nf; f++) {
            s[f] += row[f];
            q[f] += (double)row[f] * row[f];
        }
        return ML_OK;
    }
    for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
        if (x->col[e] < 0 || x->col[e] >= x->nf)
            return ML_FAIL(ML_ERR_ARG, "diagonal correlation codes: CSR column %d at row %lld is outside [0, %lld)",
                           x->col[e], (long long)t, (long long)x->nf);
        s[x->col[e]] += x->val[e];
        q[x->col[e]] += (double)x->val[e] * x->val[e];
    }
    return ML_OK;
}

int ml_diagcorr_add(ml_diagcorr *d, const ml_fcodes *X1, const ml_fcodes *X2) {
    ML_CHECK(ml_feat_check_codes(X1, d->F, 0, d->F, -1, "source-1"));
    ML_CHECK(ml_feat_check_codes(X2, d->F, 0, d->F, X1->n, "source-2"));
    if (X1->f0 != 0 || X2->f0 != 0)
        return ML_FAIL(ML_ERR_SHAPE, "ml_diagcorr_add: chunks must hold all %lld features from 0", (long long)d->F);
    for (int64_t t = 0; t < X1->n; t++) {
        ML_CHECK(ml_diag_row_sums(X1, t, d->s1, d->q1));
        ML_CHECK(ml_diag_row_sums(X2, t, d->s2, d->q2));
        const float *r2 = X2->x ? X2->x + t * X2->ld : d->row2; /* (F) */
        if (!X2->x)
            for (int64_t e = X2->row_ptr[t]; e < X2->row_ptr[t + 1]; e++) d->row2[X2->col[e]] += X2->val[e];
        if (X1->x) {
            const float *r1 = X1->x + t * X1->ld;
            for (int64_t f = 0; f < d->F; f++) d->x[f] += (double)r1[f] * r2[f];
        } else {
            for (int64_t e = X1->row_ptr[t]; e < X1->row_ptr[t + 1]; e++)
                d->x[X1->col[e]] += (double)X1->val[e] * r2[X1->col[e]];
        }
        if (!X2->x)
            for (int64_t e = X2->row_ptr[t]; e < X2->row_ptr[t + 1]; e++) d->row2[X2->col[e]] = 0.0f;
    }
    d->n += X1->n;
    return ML_OK;
}

int ml_diagcorr_result(const ml_diagcorr *d, double *r, uint8_t *dead) {
    double N = (double)d->n;
    for (int64_t f = 0; f < d->F; f++) {
        if (!isfinite(d->x[f]) || !isfinite(d->q1[f]) || !isfinite(d->q2[f]))
            return ML_FAIL(ML_ERR_NUMERIC, "diagonal correlation: feature %lld has non-finite sums", (long long)f);
        uint8_t d1, d2;
        double i1 = ml_feat_inv_sd(N, d->s1[f], d->q1[f], &d1), i2 = ml_feat_inv_sd(N, d->s2[f], d->q2[f], &d2);
        dead[f] = d1 || d2;
        double v = dead[f] ? 0.0 : (N * d->x[f] - d->s1[f] * d->s2[f]) * i1 * i2;
        r[f] = v > 1 ? 1 : (v < -1 ? -1 : v);
    }
    return ML_OK;
}
