/* Calibration of best-match shares: candidate partner pairs, per-block
 * sufficient statistics, the block bootstrap and the calibrated shares
 * (persist / emerge / disappear, seed ceiling, null floor, normalised
 * persistence) with percentile intervals.
 *
 * Legend: n_a, n_b = features of A and B; P = candidate pairs; K = blocks
 * of block_tokens contiguous rows (the last may be shorter); T = tau grid
 * points; B = bootstrap resamples.
 *
 * Statistics (double), per block k: n_k (rows), sa_k, sa2_k (n_a), sb_k,
 * sb2_k (n_b), cross_k (P) = sum_t a_t b_t over the pair's two features.
 * A resample draws K blocks with replacement (weights w_k = times drawn);
 * its Pearson r of pair (i, j) is
 *   (N S - Sa Sb) / sqrt((N Sa2 - Sa^2)(N Sb2 - Sb^2)),  N = sum_k w_k n_k,
 * S = sum_k w_k cross_k, ... : a weighted sum of block statistics, never a
 * pass over tokens. Only candidate pairs are kept (each live feature's top
 * few partners from the full-data pass), so memory is O((F + P) K).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- candidate pairs ------------------------------------------------------ */
typedef struct {
    int32_t a, b;
    double r;
} ml_cand_t;

static int ml_cand_cmp_a(const void *x, const void *y) { /* a, r descending, b */
    const ml_cand_t *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    if (p->r != q->r) return p->r > q->r ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}
static int ml_cand_cmp_b(const void *x, const void *y) { /* b, r descending, a */
    const ml_cand_t *p = x, *q = y;
    if (p->b != q->b) return p->b < q->b ? -1 : 1;
    if (p->r != q->r) return p->r > q->r ? -1 : 1;
    return (p->a > q->a) - (p->a < q->a);
}
static int ml_cand_cmp_ab(const void *x, const void *y) {
    const ml_cand_t *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

/* Insert (v, idx) into a top-k list kept sorted (value descending, index ascending). */
static void ml_topk_insert(ml_cand_t *list, int *len, int k, ml_cand_t c, int by_b) {
    int n = *len, pos = n;
    while (pos > 0) {
        const ml_cand_t *p = &list[pos - 1];
        int better = c.r > p->r || (c.r == p->r && (by_b ? c.a < p->a : c.b < p->b));
        if (!better) break;
        pos--;
    }
    if (pos >= k) return;
    if (n < k) n++;
    for (int q = n - 1; q > pos; q--) list[q] = list[q - 1];
    list[pos] = c;
    *len = n;
}

int ml_corr_candidates(ml_corr *c, int k, ml_pair **pairs, int64_t *npairs) {
    *pairs = NULL;
    *npairs = 0;
    const ml_feat_grid *g = ml_feat_corr_grid(c);
    int64_t ld = 0;
    const double *R = ml_corr_r_block(c, &ld); /* (na, nb) */
    const uint8_t *da, *db;
    ml_feat_corr_dead(c, &da, &db);
    int rc = R ? ML_OK : ML_FAIL(ML_ERR_ARG, "ml_corr_candidates: call ml_corr_finalize first");
    if (rc == ML_OK && (k < 1 || k > 64)) rc = ML_FAIL(ML_ERR_ARG, "ml_corr_candidates: k = %d must be in [1, 64]", k);
    int64_t cap = (g->na + g->nb) * (int64_t)k;
    ml_cand_t *mine = NULL, *all = NULL, *colk = NULL;
    int *lenb = NULL;
    size_t *counts = NULL, *displs = NULL;
    if (rc == ML_OK) {
        mine = ml_malloc(sizeof(ml_cand_t) * (size_t)(cap ? cap : 1));
        colk = ml_malloc(sizeof(ml_cand_t) * (size_t)(g->nb * k + 1));
        lenb = ml_calloc((size_t)g->nb + 1, sizeof(int));
        counts = ml_malloc(sizeof(size_t) * (size_t)g->size);
        displs = ml_malloc(sizeof(size_t) * (size_t)g->size);
        if (!mine || !colk || !lenb || !counts || !displs) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ML_CHECK_GOTO(ml_agree(g->comm, rc), done);
    int64_t nm = 0;
    ml_cand_t rowk[64];
    for (int64_t i = 0; i < g->na; i++) {
        if (da[i]) continue;
        int len = 0;
        for (int64_t j = 0; j < g->nb; j++) {
            if (db[j]) continue;
            ml_cand_t e = {(int32_t)(g->a0 + i), (int32_t)(g->b0 + j), R[i * ld + j]};
            ml_topk_insert(rowk, &len, k, e, 0);
            ml_topk_insert(colk + j * k, &lenb[j], k, e, 1);
        }
        for (int q = 0; q < len; q++) mine[nm++] = rowk[q];
    }
    for (int64_t j = 0; j < g->nb; j++)
        for (int q = 0; q < lenb[j]; q++) mine[nm++] = colk[j * k + q];
    int64_t per_me = nm * (int64_t)sizeof(ml_cand_t), total = 0;
    int64_t *per = ml_malloc(sizeof(int64_t) * (size_t)g->size);
    ML_CHECK_GOTO(ml_agree(g->comm, per ? ML_OK : ML_ERR_NOMEM), done);
    if (MPI_Allgather(&per_me, 1, MPI_INT64_T, per, 1, MPI_INT64_T, g->comm) != MPI_SUCCESS) {
        ml_free(per);
        ML_FAIL_GOTO(done, ML_ERR_MPI, "ml_corr_candidates: MPI_Allgather failed");
    }
    for (int r = 0; r < g->size; r++) total += per[r];
    for (size_t r = 0, off = 0; r < (size_t)g->size; r++) {
        counts[r] = (size_t)per[r];
        displs[r] = off;
        off += counts[r];
    }
    ml_free(per);
    int64_t nall = total / (int64_t)sizeof(ml_cand_t);
    all = ml_malloc(sizeof(ml_cand_t) * (size_t)(nall ? nall : 1));
    ML_CHECK_GOTO(ml_agree(g->comm, all ? ML_OK : ML_ERR_NOMEM), done);
    ML_CHECK_GOTO(ml_mpi_allgatherv(g->comm, mine, all, counts, displs, MPI_BYTE), done);
    /* global top-k per A feature, then per B feature, marked in place (r := NAN drops) */
    uint8_t *keep = ml_calloc((size_t)(nall ? nall : 1), 1);
    ML_CHECK_GOTO(ml_agree(g->comm, keep ? ML_OK : ML_ERR_NOMEM), done);
    /* a pair can arrive twice (a row's and a column's list): duplicates are adjacent after sorting and count once */
    qsort(all, (size_t)nall, sizeof *all, ml_cand_cmp_a);
    for (int64_t s = 0, run = 0; s < nall; s++) {
        if (s > 0 && all[s].a == all[s - 1].a && all[s].b == all[s - 1].b) continue;
        run = (s > 0 && all[s].a == all[s - 1].a) ? run + 1 : 0;
        if (run < k) keep[s] = 1;
    }
    /* move the kept ones first, then the B pass over everything */
    int64_t nk = 0;
    ml_cand_t *sel = ml_malloc(sizeof(ml_cand_t) * (size_t)(2 * nall + 1));
    if (!sel) ml_free(keep);
    ML_CHECK_GOTO(ml_agree(g->comm, sel ? ML_OK : ML_ERR_NOMEM), done);
    for (int64_t s = 0; s < nall; s++)
        if (keep[s]) sel[nk++] = all[s];
    ml_free(keep);
    qsort(all, (size_t)nall, sizeof *all, ml_cand_cmp_b);
    for (int64_t s = 0, run = 0; s < nall; s++) {
        if (s > 0 && all[s].a == all[s - 1].a && all[s].b == all[s - 1].b) continue;
        run = (s > 0 && all[s].b == all[s - 1].b) ? run + 1 : 0;
        if (run < k) sel[nk++] = all[s];
    }
    qsort(sel, (size_t)nk, sizeof *sel, ml_cand_cmp_ab);
    int64_t nu = 0;
    for (int64_t s = 0; s < nk; s++)
        if (nu == 0 || sel[s].a != sel[nu - 1].a || sel[s].b != sel[nu - 1].b) sel[nu++] = sel[s];
    ml_pair *out = ml_malloc(sizeof(ml_pair) * (size_t)(nu ? nu : 1));
    if (out)
        for (int64_t s = 0; s < nu; s++) out[s] = (ml_pair){sel[s].a, sel[s].b, (float)sel[s].r};
    ml_free(sel);
    ML_CHECK_GOTO(ml_agree(g->comm, out ? ML_OK : ML_ERR_NOMEM), done);
    *pairs = out;
    *npairs = nu;
done:
    ml_free(mine);
    ml_free(all);
    ml_free(colk);
    ml_free(lenb);
    ml_free(counts);
    ml_free(displs);
    return rc;
}

/* ---- block statistics ------------------------------------------------------ */
struct ml_bstats {
    MPI_Comm comm;
    int rank, size;
    int64_t n_a, n_b, np, n_tokens, block, K;
    int32_t *pa, *pb;  /* (np) pair features */
    int64_t *aptr;     /* (n_a + 1) pairs of A feature i: [aptr[i], aptr[i+1]) (pairs sorted by a) */
    double *n;         /* (K) rows per block */
    double *sa, *sa2;  /* (K, n_a) */
    double *sb, *sb2;  /* (K, n_b) */
    double *cross;     /* (K, np) */
    float *ybuf;       /* (n_b) dense scatter of one B row */
    uint8_t *dead_a, *dead_b; /* (n_a), (n_b) full-data dead flags (after reduce) */
    int reduced;
};

int ml_bstats_create(MPI_Comm comm, int64_t n_a, int64_t n_b, const ml_pair *pairs, int64_t npairs, int64_t n_tokens,
                     int64_t block_tokens, ml_bstats **out) {
    *out = NULL;
    int rc = ML_OK;
    if (n_a <= 0 || n_b <= 0 || n_tokens <= 0 || block_tokens <= 0 || npairs < 0)
        rc = ML_FAIL(ML_ERR_ARG, "ml_bstats_create: need features, tokens and block_tokens > 0 (n_a %lld n_b %lld "
                     "tokens %lld block %lld)", (long long)n_a, (long long)n_b, (long long)n_tokens,
                     (long long)block_tokens);
    for (int64_t p = 0; rc == ML_OK && p < npairs; p++)
        if (pairs[p].a < 0 || pairs[p].a >= n_a || pairs[p].b < 0 || pairs[p].b >= n_b ||
            (p > 0 && pairs[p].a < pairs[p - 1].a))
            rc = ML_FAIL(ML_ERR_ARG, "ml_bstats_create: pair %lld (%d, %d) is out of range or not sorted by A",
                         (long long)p, pairs[p].a, pairs[p].b);
    ML_CHECK(ml_agree(comm, rc));
    ml_bstats *s = ml_calloc(1, sizeof *s);
    ML_CHECK(ml_agree(comm, s ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__)));
    s->comm = comm;
    MPI_Comm_rank(comm, &s->rank);
    MPI_Comm_size(comm, &s->size);
    s->n_a = n_a;
    s->n_b = n_b;
    s->np = npairs;
    s->n_tokens = n_tokens;
    s->block = block_tokens;
    s->K = (n_tokens + block_tokens - 1) / block_tokens;
    size_t K = (size_t)s->K;
    s->pa = ml_malloc(sizeof(int32_t) * (size_t)(npairs + 1));
    s->pb = ml_malloc(sizeof(int32_t) * (size_t)(npairs + 1));
    s->aptr = ml_calloc((size_t)n_a + 1, sizeof(int64_t));
    s->n = ml_calloc(K, sizeof(double));
    s->sa = ml_calloc(K * (size_t)n_a, sizeof(double));
    s->sa2 = ml_calloc(K * (size_t)n_a, sizeof(double));
    s->sb = ml_calloc(K * (size_t)n_b, sizeof(double));
    s->sb2 = ml_calloc(K * (size_t)n_b, sizeof(double));
    s->cross = ml_calloc(K * (size_t)(npairs + 1), sizeof(double));
    s->ybuf = ml_calloc((size_t)n_b, sizeof(float));
    s->dead_a = ml_calloc((size_t)n_a, 1);
    s->dead_b = ml_calloc((size_t)n_b, 1);
    if (!s->pa || !s->pb || !s->aptr || !s->n || !s->sa || !s->sa2 || !s->sb || !s->sb2 || !s->cross || !s->ybuf ||
        !s->dead_a || !s->dead_b)
        rc = ML_FAIL(ML_ERR_NOMEM, "ml_bstats_create: %lld blocks x (%lld + %lld features, %lld pairs) of statistics do "
                     "not fit; raise the block size", (long long)s->K, (long long)n_a, (long long)n_b,
                     (long long)npairs);
    rc = ml_agree(comm, rc);
    if (rc != ML_OK) {
        ml_bstats_destroy(&s);
        return rc;
    }
    for (int64_t p = 0; p < npairs; p++) {
        s->pa[p] = pairs[p].a;
        s->pb[p] = pairs[p].b;
        s->aptr[pairs[p].a + 1]++;
    }
    for (int64_t i = 0; i < n_a; i++) s->aptr[i + 1] += s->aptr[i];
    *out = s;
    return ML_OK;
}

void ml_bstats_destroy(ml_bstats **sp) {
    if (!sp || !*sp) return;
    ml_bstats *s = *sp;
    ml_free(s->pa);
    ml_free(s->pb);
    ml_free(s->aptr);
    ml_free(s->n);
    ml_free(s->sa);
    ml_free(s->sa2);
    ml_free(s->sb);
    ml_free(s->sb2);
    ml_free(s->cross);
    ml_free(s->ybuf);
    ml_free(s->dead_a);
    ml_free(s->dead_b);
    ml_free(s);
    *sp = NULL;
}

int64_t ml_bstats_blocks(const ml_bstats *s) { return s->K; }
int64_t ml_bstats_pairs(const ml_bstats *s) { return s->np; }

/* Entries of row t of x: calls body with (column, value) for nonzeros. */
#define ML_ROW_FOREACH(X, t, COL, VAL, BODY)                                                    \
    do {                                                                                         \
        if ((X)->x) {                                                                            \
            const float *row_ = (X)->x + (t) * (X)->ld;                                          \
            for (int64_t c_ = 0; c_ < (X)->nf; c_++)                                             \
                if (row_[c_] != 0.0f) {                                                          \
                    int64_t COL = (X)->f0 + c_;                                                  \
                    double VAL = row_[c_];                                                       \
                    BODY                                                                         \
                }                                                                                \
        } else {                                                                                 \
            for (int64_t e_ = (X)->row_ptr[t]; e_ < (X)->row_ptr[(t) + 1]; e_++) {               \
                int64_t COL = (X)->f0 + (X)->col[e_];                                            \
                double VAL = (X)->val[e_];                                                       \
                BODY                                                                             \
            }                                                                                    \
        }                                                                                        \
    } while (0)

int ml_bstats_add(ml_bstats *s, int64_t row0, const ml_fcodes *A, const ml_fcodes *B) {
    if (s->reduced) return ML_FAIL(ML_ERR_ARG, "ml_bstats_add: statistics already reduced");
    ML_CHECK(ml_feat_check_codes(A, s->n_a, 0, s->n_a, -1, "bootstrap A"));
    ML_CHECK(ml_feat_check_codes(B, s->n_b, 0, s->n_b, A->n, "bootstrap B"));
    if (row0 < 0 || row0 + A->n > s->n_tokens)
        return ML_FAIL(ML_ERR_SHAPE, "ml_bstats_add: rows [%lld, %lld) outside the %lld rows", (long long)row0,
                       (long long)(row0 + A->n), (long long)s->n_tokens);
    for (int64_t t = 0; t < A->n; t++) {
        int64_t k = (row0 + t) / s->block;
        if (k % s->size != s->rank) continue; /* one rank per block: the reduction is exact */
        s->n[k] += 1;
        double *sb = s->sb + k * s->n_b, *sb2 = s->sb2 + k * s->n_b;
        ML_ROW_FOREACH(B, t, j, v, {
            if (j < 0 || j >= s->n_b) return ML_FAIL(ML_ERR_ARG, "bootstrap B codes: column %lld out of range", (long long)j);
            s->ybuf[j] += (float)v;
            sb[j] += v;
            sb2[j] += v * v;
        });
        double *sa = s->sa + k * s->n_a, *sa2 = s->sa2 + k * s->n_a, *cr = s->cross + k * s->np;
        ML_ROW_FOREACH(A, t, i, v, {
            if (i < 0 || i >= s->n_a) return ML_FAIL(ML_ERR_ARG, "bootstrap A codes: column %lld out of range", (long long)i);
            sa[i] += v;
            sa2[i] += v * v;
            for (int64_t p = s->aptr[i]; p < s->aptr[i + 1]; p++) cr[p] += v * (double)s->ybuf[s->pb[p]];
        });
        ML_ROW_FOREACH(B, t, j, v, {
            (void)v;
            s->ybuf[j] = 0.0f;
        });
    }
    return ML_OK;
}

/* Sum over ranks (chunked by ml_mpi_allreduce: 2^27 doubles per call). */
static int ml_bstats_allreduce(MPI_Comm comm, double *x, int64_t n) {
    return ml_mpi_allreduce(comm, MPI_IN_PLACE, x, (size_t)n, MPI_DOUBLE, MPI_SUM);
}

int ml_bstats_reduce(ml_bstats *s) {
    int64_t K = s->K;
    if (s->size > 1) {
        ML_CHECK(ml_bstats_allreduce(s->comm, s->n, K));
        ML_CHECK(ml_bstats_allreduce(s->comm, s->sa, K * s->n_a));
        ML_CHECK(ml_bstats_allreduce(s->comm, s->sa2, K * s->n_a));
        ML_CHECK(ml_bstats_allreduce(s->comm, s->sb, K * s->n_b));
        ML_CHECK(ml_bstats_allreduce(s->comm, s->sb2, K * s->n_b));
        ML_CHECK(ml_bstats_allreduce(s->comm, s->cross, K * s->np));
    }
    double tot = 0;
    for (int64_t k = 0; k < K; k++) tot += s->n[k];
    int rc = tot == (double)s->n_tokens ? ML_OK
                                        : ML_FAIL(ML_ERR_SHAPE, "ml_bstats_reduce: %.0f rows were added, expected %lld",
                                                  tot, (long long)s->n_tokens);
    ML_CHECK(ml_agree(s->comm, rc));
    /* full-data dead flags (zero variance), as ml_corr decides them */
    for (int side = 0; side < 2; side++) {
        int64_t n = side ? s->n_b : s->n_a;
        const double *x = side ? s->sb : s->sa, *x2 = side ? s->sb2 : s->sa2;
        uint8_t *dead = side ? s->dead_b : s->dead_a;
        for (int64_t i = 0; i < n; i++) {
            double a = 0, a2 = 0;
            for (int64_t k = 0; k < K; k++) {
                a += x[k * n + i];
                a2 += x2[k * n + i];
            }
            (void)ml_feat_inv_sd(tot, a, a2, &dead[i]);
        }
    }
    s->reduced = 1;
    return ML_OK;
}

const uint8_t *ml_bstats_dead(const ml_bstats *s, int side) { return side ? s->dead_b : s->dead_a; }

/* acc (n) = sum_k w_k x_k (x: (K, n)), blocks in ascending order. */
static void ml_bstats_wsum(const double *x, int64_t K, int64_t n, const double *w, double *acc) {
    memset(acc, 0, sizeof(double) * (size_t)n);
    for (int64_t k = 0; k < K; k++) {
        double wk = w ? w[k] : 1.0;
        if (wk == 0) continue;
        const double *xk = x + k * n;
        for (int64_t i = 0; i < n; i++) acc[i] += wk * xk[i];
    }
}

int ml_bstats_best(const ml_bstats *s, const double *w, double *a_best, double *b_best) {
    if (!s->reduced) return ML_FAIL(ML_ERR_ARG, "ml_bstats_best: call ml_bstats_reduce first");
    int64_t K = s->K, na = s->n_a, nb = s->n_b, np = s->np;
    double *buf = ml_malloc(sizeof(double) * (size_t)(2 * na + 2 * nb + np + 1));
    if (!buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    double *Sa = buf, *Sa2 = Sa + na, *Sb = Sa2 + na, *Sb2 = Sb + nb, *Sx = Sb2 + nb;
    double N = 0;
    for (int64_t k = 0; k < K; k++) N += (w ? w[k] : 1.0) * s->n[k];
    ml_bstats_wsum(s->sa, K, na, w, Sa);
    ml_bstats_wsum(s->sa2, K, na, w, Sa2);
    ml_bstats_wsum(s->sb, K, nb, w, Sb);
    ml_bstats_wsum(s->sb2, K, nb, w, Sb2);
    ml_bstats_wsum(s->cross, K, np, w, Sx);
    for (int64_t i = 0; i < na; i++) {
        uint8_t d;
        a_best[i] = 0;
        Sa2[i] = ml_feat_inv_sd(N, Sa[i], Sa2[i], &d); /* now 1/sd (0 if no variance) */
    }
    for (int64_t j = 0; j < nb; j++) {
        uint8_t d;
        b_best[j] = 0;
        Sb2[j] = ml_feat_inv_sd(N, Sb[j], Sb2[j], &d);
    }
    /* best over candidates; a feature whose every candidate has r <= 0 keeps 0 */
    for (int64_t p = 0; p < np; p++) {
        int32_t i = s->pa[p], j = s->pb[p];
        if (s->dead_a[i] || s->dead_b[j]) continue;
        double r = (N * Sx[p] - Sa[i] * Sb[j]) * Sa2[i] * Sb2[j];
        if (r > a_best[i]) a_best[i] = r;
        if (r > b_best[j]) b_best[j] = r;
    }
    ml_free(buf);
    return ML_OK;
}

void ml_boot_weights(uint64_t seed, int64_t k, int64_t n_blocks, double *w) {
    ml_rng r;
    ml_rng_seed(&r, seed, (uint64_t)k + 1);
    memset(w, 0, sizeof(double) * (size_t)n_blocks);
    for (int64_t d = 0; d < n_blocks; d++) w[ml_rng_below(&r, (uint64_t)n_blocks)] += 1.0;
}

/* ---- calibrated shares ---------------------------------------------------------- */
static int ml_dbl_cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Percentile of sorted v (n) at q in [0, 1], linear interpolation between order statistics. */
static double ml_quantile(const double *v, int64_t n, double q) {
    if (n == 0) return NAN;
    double pos = q * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    if (lo >= n - 1) return v[n - 1];
    double f = pos - (double)lo;
    return v[lo] * (1 - f) + v[lo + 1] * f;
}

/* share of tracked features with best >= tau (NAN if none tracked) */
static double ml_share_at(const double *best, const uint8_t *mask, int64_t n, double tau) {
    int64_t hit = 0, tot = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!mask[i]) continue;
        tot++;
        hit += best[i] >= tau;
    }
    return tot ? (double)hit / (double)tot : NAN;
}

/* The quantities of one resample (w) or of the full data (w NULL): q (ML_CALIB_NQ, T). */
static int ml_calib_eval(const ml_calib_config *cfg, const double *w, double *bufs, double *q) {
    int T = cfg->n_tau;
    const ml_bstats *m = cfg->main;
    double *ma = bufs, *mb = ma + m->n_a, *fa = mb + m->n_b, *fb = fa + cfg->floor->n_a;
    double *ca = fb + cfg->floor->n_b, *cb = cfg->ceiling ? ca + cfg->ceiling->n_a : ca;
    double *ka = cfg->ceiling ? cb + cfg->ceiling->n_b : cb;
    double *kb = cfg->ceiling_child ? ka + cfg->ceiling_child->n_a : ka;
    ML_CHECK(ml_bstats_best(m, w, ma, mb));
    ML_CHECK(ml_bstats_best(cfg->floor, w, fa, fb));
    if (cfg->ceiling) ML_CHECK(ml_bstats_best(cfg->ceiling, w, ca, cb));
    if (cfg->ceiling_child) ML_CHECK(ml_bstats_best(cfg->ceiling_child, w, ka, kb));
    for (int t = 0; t < T; t++) {
        double tau = cfg->tau[t];
        const uint8_t *mp = cfg->mask_parent + (int64_t)t * m->n_a, *mc = cfg->mask_child + (int64_t)t * m->n_b;
        double persist = ml_share_at(ma, mp, m->n_a, tau);
        double child_persist = ml_share_at(mb, mc, m->n_b, tau);
        double floor = ml_share_at(fa, mp, m->n_a, tau);
        double ceil = NAN, ceil_child = NAN;
        if (cfg->ceiling) ceil = ml_share_at(ca, cfg->ceiling_is_child ? mc : mp, cfg->ceiling->n_a, tau);
        if (cfg->ceiling_child) ceil_child = ml_share_at(ka, mc, cfg->ceiling_child->n_a, tau);
        q[ML_CALIB_PERSIST * T + t] = persist;
        q[ML_CALIB_DISAPPEAR * T + t] = 1.0 - persist;
        q[ML_CALIB_EMERGE * T + t] = 1.0 - child_persist;
        q[ML_CALIB_CEILING * T + t] = ceil;
        q[ML_CALIB_FLOOR * T + t] = floor;
        q[ML_CALIB_NORMALISED * T + t] = ceil - floor > 0 ? (persist - floor) / (ceil - floor) : NAN;
        q[ML_CALIB_CEILING_CHILD * T + t] = ceil_child;
    }
    return ML_OK;
}

void ml_calib_result_free(ml_calib_result *r) {
    if (!r) return;
    ml_free(r->v);
    ml_free(r->boot);
    memset(r, 0, sizeof *r);
}

int ml_calib_run(MPI_Comm comm, const ml_calib_config *cfg, ml_calib_result *out) {
    memset(out, 0, sizeof *out);
    int rank, size, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (!cfg || !cfg->main || !cfg->floor || cfg->n_tau < 1 || !cfg->tau || !cfg->mask_parent || !cfg->mask_child ||
        cfg->n_boot < 1)
        return ML_FAIL(ML_ERR_ARG, "ml_calib_run: need main and floor statistics, a tau grid, masks and n_boot >= 1");
    int64_t K = cfg->main->K;
    const ml_bstats *all[4] = {cfg->main, cfg->floor, cfg->ceiling, cfg->ceiling_child};
    int64_t nbuf = 0;
    for (int s = 0; s < 4; s++) {
        if (!all[s]) continue;
        if (all[s]->K != K || all[s]->n_tokens != cfg->main->n_tokens)
            return ML_FAIL(ML_ERR_SHAPE, "ml_calib_run: every comparison must cover the same %lld rows in %lld blocks",
                           (long long)cfg->main->n_tokens, (long long)K);
        nbuf += all[s]->n_a + all[s]->n_b;
    }
    if (cfg->floor->n_a != cfg->main->n_a)
        return ML_FAIL(ML_ERR_SHAPE, "ml_calib_run: the floor's A side must be the parent's features");
    int T = cfg->n_tau, NQ = ML_CALIB_NQ;
    int64_t B = cfg->n_boot;
    out->n_tau = T;
    out->n_boot = B;
    out->v = ml_calloc((size_t)(NQ * 3 * T), sizeof(double));
    out->boot = ml_calloc((size_t)(B * NQ * T), sizeof(double));
    double *bufs = ml_malloc(sizeof(double) * (size_t)(nbuf + 1)), *w = ml_malloc(sizeof(double) * (size_t)K);
    double *sorted = ml_malloc(sizeof(double) * (size_t)B), *point = ml_malloc(sizeof(double) * (size_t)(NQ * T));
    rc = out->v && out->boot && bufs && w && sorted && point ? ML_OK
                                                              : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    rc = ml_calib_eval(cfg, NULL, bufs, point);
    for (int64_t b = rank; b < B && rc == ML_OK; b += size) { /* resample b on rank b mod P */
        ml_boot_weights(cfg->seed, b, K, w);
        rc = ml_calib_eval(cfg, w, bufs, out->boot + b * NQ * T);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    /* one contributor per entry (the others hold 0): the sum is exact */
    ML_CHECK_GOTO(ml_bstats_allreduce(comm, out->boot, B * NQ * T), done);
    for (int qi = 0; qi < NQ; qi++)
        for (int t = 0; t < T; t++) {
            int64_t n = 0;
            for (int64_t b = 0; b < B; b++) {
                double v = out->boot[(b * NQ + qi) * T + t];
                if (!isnan(v)) sorted[n++] = v;
            }
            qsort(sorted, (size_t)n, sizeof(double), ml_dbl_cmp);
            double *o = out->v + (qi * 3) * T;
            o[t] = point[qi * T + t];
            /* an interval needs the quantity defined (not NAN) in the full data and in at
             * least 97.5% of the resamples; else the percentiles would describe only the
             * resamples where, e.g., the ceiling happened to exceed the floor */
            int ok = !isnan(o[t]) && (double)n >= 0.975 * (double)B;
            o[T + t] = ok ? ml_quantile(sorted, n, 0.025) : NAN;
            o[2 * T + t] = ok ? ml_quantile(sorted, n, 0.975) : NAN;
        }
done:
    ml_free(bufs);
    ml_free(w);
    ml_free(sorted);
    ml_free(point);
    if (rc != ML_OK) ml_calib_result_free(out);
    return rc;
}
