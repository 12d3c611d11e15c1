/* Streaming Pearson cross-correlation between the features of two
 * dictionaries over the same token rows, on a 2-D grid of feature blocks.
 *
 * Legend: n = token rows of a chunk; na, nb = this rank's A and B features
 * (block [a0, a0+na) x [b0, b0+nb)); n_a, n_b = all features.
 *
 * Sums (double): sa, sa2 (na), sb, sb2 (nb), S = A^T B (na, nb). Then
 *   r[i][j] = (N S_ij - sa_i sb_j) / sqrt((N sa2_i - sa_i^2)(N sb2_j - sb_j^2)).
 * Dense path: cblas_sgemm of the chunk into a float block C, added into S
 * (float error is bounded by one chunk's accumulation). Sparse path: per
 * token, the outer product of the active sets, in double. Both add each
 * token's contribution in token order, so results do not depend on the grid
 * beyond the sgemm's internal float summation.
 */
#include "internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct ml_corr {
    ml_feat_grid g;
    ml_corr_config cfg;
    double threshold;
    double *S;                /* (na, nb) cross sums, r after finalize */
    double *sa, *sa2, *sb, *sb2; /* (na), (na), (nb), (nb) */
    uint8_t *dead_a, *dead_b; /* (na), (nb), after finalize */
    int64_t *cnt_a, *cnt_b;   /* (max_rows) active features of the block per token */
    float *C;                 /* (na, nb) dense-path chunk product, lazily */
    float *xa, *xb;           /* (max_rows, na), (max_rows, nb) densified CSR input, lazily */
    int64_t *pa, *pb;         /* (max_rows + 1) block-filtered CSR row pointers */
    int32_t *ia, *ib;         /* block-filtered CSR columns (local), capacity cap_a / cap_b */
    float *va, *vb;
    int64_t cap_a, cap_b;
    int64_t *fptr;            /* (na + 1) feature-major pointers of A's block */
    int32_t *ft;              /* feature-major token ids / values, capacity cap_t */
    float *fv;
    int64_t cap_t;
    int64_t n_tokens, dense_chunks, sparse_chunks;
    int finalized, broken;
};

const ml_feat_grid *ml_feat_corr_grid(const ml_corr *c) { return &c->g; }
int64_t ml_feat_corr_max_rows(const ml_corr *c) { return c->cfg.max_rows; }

/* Ask for transparent huge pages on a large buffer before first touch (the
 * sparse path updates S at random places: fewer TLB misses). Advisory. */
static void ml_corr_hugepages(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, e = ((uintptr_t)p + bytes) & ~(uintptr_t)4095;
    if (e > a + ((size_t)4 << 20)) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

int ml_corr_create(MPI_Comm comm, const ml_corr_config *cfg, ml_corr **out) {
    *out = NULL;
    if (!cfg) return ML_FAIL(ML_ERR_ARG, "ml_corr_create: NULL config");
    if (cfg->max_rows <= 0)
        return ML_FAIL(ML_ERR_ARG, "ml_corr_create: max_rows must be positive, got %lld", (long long)cfg->max_rows);
    if (cfg->path < ML_CORR_AUTO || cfg->path > ML_CORR_SPARSE)
        return ML_FAIL(ML_ERR_ARG, "ml_corr_create: unknown path %d (0 auto, 1 dense, 2 sparse)", (int)cfg->path);
    if (cfg->sparse_threshold < 0 || cfg->sparse_threshold > 1)
        return ML_FAIL(ML_ERR_ARG, "ml_corr_create: sparse_threshold %g is outside [0, 1]", cfg->sparse_threshold);
    ml_feat_grid g;
    ML_CHECK(ml_feat_grid_init(comm, cfg->n_a, cfg->n_b, cfg->grid_rows, cfg->grid_cols, &g));
    ml_corr *c = ml_calloc(1, sizeof *c);
    int rc = ML_OK;
    if (!c) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto agree;
    }
    c->g = g;
    c->cfg = *cfg;
    c->threshold = cfg->sparse_threshold > 0 ? cfg->sparse_threshold : ML_CORR_SPARSE_THRESHOLD;
    size_t na = (size_t)g.na, nb = (size_t)g.nb, mr = (size_t)cfg->max_rows;
    c->S = ml_malloc(sizeof(double) * na * nb);
    if (c->S) {
        ml_corr_hugepages(c->S, sizeof(double) * na * nb);
        memset(c->S, 0, sizeof(double) * na * nb);
    }
    c->sa = ml_calloc(na, sizeof(double));
    c->sa2 = ml_calloc(na, sizeof(double));
    c->sb = ml_calloc(nb, sizeof(double));
    c->sb2 = ml_calloc(nb, sizeof(double));
    c->dead_a = ml_calloc(na, 1);
    c->dead_b = ml_calloc(nb, 1);
    c->cnt_a = ml_malloc(sizeof(int64_t) * mr);
    c->cnt_b = ml_malloc(sizeof(int64_t) * mr);
    c->pa = ml_malloc(sizeof(int64_t) * (mr + 1));
    c->pb = ml_malloc(sizeof(int64_t) * (mr + 1));
    c->fptr = ml_malloc(sizeof(int64_t) * (na + 1));
    if (!c->S || !c->sa || !c->sa2 || !c->sb || !c->sb2 || !c->dead_a || !c->dead_b || !c->cnt_a || !c->cnt_b ||
        !c->pa || !c->pb || !c->fptr)
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
agree:
    rc = ml_agree(comm, rc);
    if (rc != ML_OK) {
        ml_corr_destroy(&c);
        return rc;
    }
    ml_debug("corr: grid %d x %d, rank %d block A[%lld,+%lld) x B[%lld,+%lld)", g.pr, g.pc, g.rank,
             (long long)g.a0, (long long)g.na, (long long)g.b0, (long long)g.nb);
    *out = c;
    return ML_OK;
}

void ml_corr_destroy(ml_corr **cp) {
    if (!cp || !*cp) return;
    ml_corr *c = *cp;
    ml_free(c->S);
    ml_free(c->sa);
    ml_free(c->sa2);
    ml_free(c->sb);
    ml_free(c->sb2);
    ml_free(c->dead_a);
    ml_free(c->dead_b);
    ml_free(c->cnt_a);
    ml_free(c->cnt_b);
    ml_free(c->C);
    ml_free(c->xa);
    ml_free(c->xb);
    ml_free(c->pa);
    ml_free(c->pb);
    ml_free(c->ia);
    ml_free(c->ib);
    ml_free(c->va);
    ml_free(c->vb);
    ml_free(c->fptr);
    ml_free(c->ft);
    ml_free(c->fv);
    ml_free(c);
    *cp = NULL;
}

void ml_corr_block(const ml_corr *c, int64_t *a0, int64_t *na, int64_t *b0, int64_t *nb) {
    if (a0) *a0 = c->g.a0;
    if (na) *na = c->g.na;
    if (b0) *b0 = c->g.b0;
    if (nb) *nb = c->g.nb;
}

void ml_corr_path_counts(const ml_corr *c, int64_t *dense_chunks, int64_t *sparse_chunks) {
    if (dense_chunks) *dense_chunks = c->dense_chunks;
    if (sparse_chunks) *sparse_chunks = c->sparse_chunks;
}

int64_t ml_corr_tokens(const ml_corr *c) { return c->n_tokens; }

/* Pass over one side's chunk restricted to features [lo, lo+m): sums s, s2
 * (m), active count per token cnt (n). For CSR input also checks columns. */
static int ml_corr_scan(const ml_fcodes *x, int64_t lo, int64_t m, double *s, double *s2, int64_t *cnt,
                        const char *what) {
    int64_t off = lo - x->f0;
    if (x->x) {
        for (int64_t t = 0; t < x->n; t++) {
            const float *row = x->x + t * x->ld + off; /* (m) */
            int64_t k = 0;
            for (int64_t c = 0; c < m; c++) {
                double v = row[c];
                s[c] += v;
                s2[c] += v * v;
                k += row[c] != 0.0f;
            }
            cnt[t] = k;
        }
        return ML_OK;
    }
    for (int64_t t = 0; t < x->n; t++) {
        int64_t k = 0;
        for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
            int64_t col = x->col[e];
            if (col < 0 || col >= x->nf)
                return ML_FAIL(ML_ERR_ARG, "%s codes: CSR column %lld at row %lld is outside [0, %lld)", what,
                               (long long)col, (long long)t, (long long)x->nf);
            int64_t c = col - off;
            if (c < 0 || c >= m) continue;
            double v = x->val[e];
            s[c] += v;
            s2[c] += v * v;
            k += x->val[e] != 0.0f;
        }
        cnt[t] = k;
    }
    return ML_OK;
}

/* Dense (n, m) view of the block [lo, lo+m) of x: a pointer into x's own
 * storage, or x scattered into buf (n, m). *ld = row stride. */
static const float *ml_corr_dense_view(const ml_fcodes *x, int64_t lo, int64_t m, float *buf, int64_t *ld) {
    int64_t off = lo - x->f0;
    if (x->x) {
        *ld = x->ld;
        return x->x + off;
    }
    memset(buf, 0, sizeof(float) * (size_t)(x->n * m));
    for (int64_t t = 0; t < x->n; t++)
        for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
            int64_t c = x->col[e] - off;
            if (c >= 0 && c < m) buf[t * m + c] += x->val[e];
        }
    *ld = m;
    return buf;
}

/* Block-filtered CSR of x over features [lo, lo+m): row pointers p (n+1),
 * local columns *ip and values *vp (capacity *cap, grown). cnt (n) = the
 * nonzeros per row from the scan. */
static int ml_corr_sparse_view(const ml_fcodes *x, int64_t lo, int64_t m, const int64_t *cnt, int64_t *p,
                               int32_t **ip, float **vp, int64_t *cap) {
    int64_t off = lo - x->f0;
    p[0] = 0;
    for (int64_t t = 0; t < x->n; t++) p[t + 1] = p[t] + cnt[t];
    int64_t need = p[x->n];
    if (need > *cap) {
        int64_t ncap = need + need / 2 + 64;
        int32_t *ni = ml_malloc(sizeof(int32_t) * (size_t)ncap);
        float *nv = ml_malloc(sizeof(float) * (size_t)ncap);
        if (!ni || !nv) {
            ml_free(ni);
            ml_free(nv);
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        ml_free(*ip);
        ml_free(*vp);
        *ip = ni;
        *vp = nv;
        *cap = ncap;
    }
    int32_t *ii = *ip;
    float *vv = *vp;
    for (int64_t t = 0; t < x->n; t++) {
        int64_t k = p[t];
        if (x->x) {
            const float *row = x->x + t * x->ld + off;
            for (int64_t c = 0; c < m; c++)
                if (row[c] != 0.0f) {
                    ii[k] = (int32_t)c;
                    vv[k++] = row[c];
                }
        } else {
            for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
                int64_t c = x->col[e] - off;
                if (c >= 0 && c < m && x->val[e] != 0.0f) {
                    ii[k] = (int32_t)c;
                    vv[k++] = x->val[e];
                }
            }
        }
    }
    return ML_OK;
}

/* S (na, nb) += sum_t outer(A_t, B_t) over the active sets, in double.
 * Feature-major: A's block CSR is transposed (stably, so every S entry still
 * receives its terms in token order) and each row of S is updated for all
 * tokens where its feature fires, so the row (nb doubles) stays in cache
 * instead of one random miss per update. cnt (na+1), ft, fv (nnz) scratch. */
static void ml_corr_sparse_accumulate(double *S, int64_t na, int64_t nb, int64_t n, const int64_t *pa,
                                      const int32_t *ia, const float *va, const int64_t *pb, const int32_t *ib,
                                      const float *vb, int64_t *fptr, int32_t *ft, float *fv) {
    memset(fptr, 0, sizeof(int64_t) * (size_t)(na + 1));
    for (int64_t e = pa[0]; e < pa[n]; e++) fptr[ia[e] + 1]++;
    for (int64_t i = 0; i < na; i++) fptr[i + 1] += fptr[i];
    for (int64_t t = 0; t < n; t++) /* counting sort by feature, tokens ascending */
        for (int64_t e = pa[t]; e < pa[t + 1]; e++) {
            int64_t k = fptr[ia[e]]++;
            ft[k] = (int32_t)t;
            fv[k] = va[e];
        }
    for (int64_t i = na; i > 0; i--) fptr[i] = fptr[i - 1];
    fptr[0] = 0;
    const int64_t lines = (nb * (int64_t)sizeof(double) + 63) / 64; /* cache lines per row of S */
    for (int64_t i = 0; i < na; i++) {
        double *row = S + i * nb; /* (nb) */
        int64_t fires = fptr[i + 1] - fptr[i];
        /* when the next row will see about as many updates as it has lines,
         * stream it in while this one is updated (interleaved prefetches) */
        const char *next = (const char *)(row + nb);
        int64_t per = 0, done = 0;
        if (i + 1 < na && fires > 0) {
            int64_t upd = 0;
            for (int64_t e = fptr[i + 1]; e < fptr[i + 2]; e++) upd += pb[ft[e] + 1] - pb[ft[e]];
            if (2 * upd >= lines) per = (lines + fires - 1) / fires;
        }
        for (int64_t e = fptr[i]; e < fptr[i + 1]; e++) {
            double a = fv[e];
            int64_t t = ft[e];
            for (int64_t q = 0; q < per && done < lines; q++, done++) __builtin_prefetch(next + 64 * done, 1, 3);
            for (int64_t f = pb[t]; f < pb[t + 1]; f++) row[ib[f]] += a * (double)vb[f];
        }
    }
}

/* Rows [s, s+m) of a codes chunk, as a codes chunk. */
static ml_fcodes ml_corr_rows(const ml_fcodes *x, int64_t s, int64_t m) {
    ml_fcodes y = *x;
    y.n = m;
    if (x->x)
        y.x = x->x + s * x->ld;
    else
        y.row_ptr = x->row_ptr + s;
    return y;
}

static int ml_corr_add_dense(ml_corr *c, const ml_fcodes *A, const ml_fcodes *B) {
    const ml_feat_grid *g = &c->g;
    int64_t n = A->n, na = g->na, nb = g->nb;
    int64_t sub = c->cfg.max_rows < ML_CORR_DENSE_ROWS ? c->cfg.max_rows : ML_CORR_DENSE_ROWS;
    if (!c->C) ML_ALLOC(c->C, na * nb);
    if (!A->x && !c->xa) ML_ALLOC(c->xa, sub * na);
    if (!B->x && !c->xb) ML_ALLOC(c->xb, sub * nb);
    /* CSR input is densified in sub-chunks of <= sub rows; dense input is
     * multiplied whole. C accumulates in float over the chunk. */
    int64_t step = (A->x && B->x) ? n : sub;
    for (int64_t s = 0; s < n; s += step) {
        int64_t m = n - s < step ? n - s : step;
        ml_fcodes As = ml_corr_rows(A, s, m), Bs = ml_corr_rows(B, s, m);
        int64_t lda, ldb;
        const float *XA = ml_corr_dense_view(&As, g->a0, na, c->xa, &lda); /* (m, lda) */
        const float *XB = ml_corr_dense_view(&Bs, g->b0, nb, c->xb, &ldb); /* (m, ldb) */
        ml_prof_begin("corr_dense_gemm");
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)na, (int)nb, (int)m, 1.0f, XA, (int)lda, XB,
                    (int)ldb, s == 0 ? 0.0f : 1.0f, c->C, (int)nb);
        ml_prof_end("corr_dense_gemm", 2.0 * (double)m * (double)na * (double)nb,
                    4.0 * (double)m * (double)(na + nb));
    }
    ml_prof_begin("corr_dense_accum");
    double *S = c->S;
    const float *C = c->C;
    int64_t total = na * nb;
    for (int64_t k = 0; k < total; k++) S[k] += C[k];
    ml_prof_end("corr_dense_accum", (double)total, 20.0 * (double)total);
    c->dense_chunks++;
    return ML_OK;
}

static int ml_corr_add_sparse(ml_corr *c, const ml_fcodes *A, const ml_fcodes *B, double pairs) {
    const ml_feat_grid *g = &c->g;
    ML_CHECK(ml_corr_sparse_view(A, g->a0, g->na, c->cnt_a, c->pa, &c->ia, &c->va, &c->cap_a));
    ML_CHECK(ml_corr_sparse_view(B, g->b0, g->nb, c->cnt_b, c->pb, &c->ib, &c->vb, &c->cap_b));
    int64_t nnz = c->pa[A->n];
    if (nnz > c->cap_t) {
        ml_free(c->ft);
        ml_free(c->fv);
        c->cap_t = 0;
        c->ft = ml_malloc(sizeof(int32_t) * (size_t)(nnz + nnz / 2 + 64));
        c->fv = ml_malloc(sizeof(float) * (size_t)(nnz + nnz / 2 + 64));
        if (!c->ft || !c->fv) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        c->cap_t = nnz + nnz / 2 + 64;
    }
    ml_prof_begin("corr_sparse");
    ml_corr_sparse_accumulate(c->S, g->na, g->nb, A->n, c->pa, c->ia, c->va, c->pb, c->ib, c->vb, c->fptr, c->ft,
                              c->fv);
    ml_prof_end("corr_sparse", 2.0 * pairs, 16.0 * pairs);
    c->sparse_chunks++;
    return ML_OK;
}

int ml_corr_add(ml_corr *c, const ml_fcodes *A, const ml_fcodes *B) {
    if (c->finalized) return ML_FAIL(ML_ERR_ARG, "ml_corr_add: the correlation was already finalized");
    if (c->broken) return ML_FAIL(ML_ERR_ARG, "ml_corr_add: an earlier chunk failed; the sums are incomplete");
    const ml_feat_grid *g = &c->g;
    ML_CHECK(ml_feat_check_codes(A, g->n_a, g->a0, g->na, -1, "A"));
    ML_CHECK(ml_feat_check_codes(B, g->n_b, g->b0, g->nb, A->n, "B"));
    int64_t n = A->n;
    if (n > c->cfg.max_rows)
        return ML_FAIL(ML_ERR_SHAPE, "ml_corr_add: chunk of %lld rows exceeds max_rows %lld", (long long)n,
                       (long long)c->cfg.max_rows);
    if (n == 0) return ML_OK;
    c->broken = 1; /* until the chunk is fully added */
    ml_prof_begin("corr_scan");
    ML_CHECK(ml_corr_scan(A, g->a0, g->na, c->sa, c->sa2, c->cnt_a, "A"));
    ML_CHECK(ml_corr_scan(B, g->b0, g->nb, c->sb, c->sb2, c->cnt_b, "B"));
    ml_prof_end("corr_scan", 0, 4.0 * (double)n * (double)(g->na + g->nb));
    double pairs = 0;
    for (int64_t t = 0; t < n; t++) pairs += (double)c->cnt_a[t] * (double)c->cnt_b[t];
    int sparse = c->cfg.path == ML_CORR_SPARSE;
    if (c->cfg.path == ML_CORR_AUTO)
        sparse = pairs <= c->threshold * (double)n * (double)g->na * (double)g->nb;
    if (sparse)
        ML_CHECK(ml_corr_add_sparse(c, A, B, pairs));
    else
        ML_CHECK(ml_corr_add_dense(c, A, B));
    c->n_tokens += n;
    c->broken = 0;
    return ML_OK;
}

/* Inverse standard deviation factors (m) and dead flags; fails on
 * non-finite sums. */
static int ml_corr_inv_sd(const double *s, const double *s2, int64_t m, double N, int64_t base, const char *side,
                          double *inv, uint8_t *dead) {
    for (int64_t i = 0; i < m; i++) {
        if (!isfinite(s[i]) || !isfinite(s2[i]))
            return ML_FAIL(ML_ERR_NUMERIC, "dictionary %s feature %lld: activation sums are not finite (NaN/Inf codes)",
                           side, (long long)(base + i));
        inv[i] = ml_feat_inv_sd(N, s[i], s2[i], &dead[i]);
    }
    return ML_OK;
}

int ml_corr_finalize(ml_corr *c) {
    if (c->finalized) return ML_OK;
    if (c->broken) return ML_FAIL(ML_ERR_ARG, "ml_corr_finalize: an earlier chunk failed; the sums are incomplete");
    const ml_feat_grid *g = &c->g;
    int64_t na = g->na, nb = g->nb;
    double N = (double)c->n_tokens;
    double *ia = NULL, *ib = NULL;
    int rc = ML_OK;
    ia = ml_malloc(sizeof(double) * (size_t)na);
    ib = ml_malloc(sizeof(double) * (size_t)nb);
    if (!ia || !ib) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    ML_CHECK_GOTO(ml_corr_inv_sd(c->sa, c->sa2, na, N, g->a0, "A", ia, c->dead_a), done);
    ML_CHECK_GOTO(ml_corr_inv_sd(c->sb, c->sb2, nb, N, g->b0, "B", ib, c->dead_b), done);
    ml_prof_begin("corr_finalize");
    for (int64_t i = 0; i < na; i++) {
        double *row = c->S + i * nb; /* (nb) */
        double sai = c->sa[i], fi = ia[i];
        for (int64_t j = 0; j < nb; j++) {
            double r = (N * row[j] - sai * c->sb[j]) * fi * ib[j];
            row[j] = r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
        }
    }
    ml_prof_end("corr_finalize", 4.0 * (double)na * (double)nb, 16.0 * (double)na * (double)nb);
    c->finalized = 1;
done:
    ml_free(ia);
    ml_free(ib);
    return rc;
}

const double *ml_corr_r_block(const ml_corr *c, int64_t *ld) {
    if (ld) *ld = c->g.nb;
    return c->finalized ? c->S : NULL;
}

/* internal: dead flags of the block, after finalize */
void ml_feat_corr_dead(const ml_corr *c, const uint8_t **dead_a, const uint8_t **dead_b) {
    *dead_a = c->dead_a;
    *dead_b = c->dead_b;
}

int ml_corr_best(ml_corr *c, ml_best *out) {
    memset(out, 0, sizeof *out);
    const ml_feat_grid *g = &c->g;
    int rc = c->finalized ? ML_OK : ML_FAIL(ML_ERR_ARG, "ml_corr_best: call ml_corr_finalize first");
    ml_feat_cand cand;
    memset(&cand, 0, sizeof cand);
    if (rc == ML_OK) rc = ml_feat_cand_init(&cand, g->n_a, g->n_b);
    ML_CHECK_GOTO(ml_agree(g->comm, rc), done);
    for (int64_t j = 0; j < g->nb; j++) cand.b_dead[g->b0 + j] = c->dead_b[j];
    for (int64_t i = 0; i < g->na; i++) {
        cand.a_dead[g->a0 + i] = c->dead_a[i];
        if (c->dead_a[i]) continue;
        ml_feat_cand_scan_d(&cand, c->S + i * g->nb, g->a0 + i, g->b0, g->nb, c->dead_b);
    }
    ML_CHECK_GOTO(ml_feat_cand_reduce(g->comm, &cand, out), done);
done:
    ml_feat_cand_free(&cand);
    return rc;
}

static int ml_pair_cmp(const void *x, const void *y) {
    const ml_pair *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

int ml_corr_pairs(ml_corr *c, double floor, ml_pair **pairs, int64_t *npairs) {
    *pairs = NULL;
    *npairs = 0;
    const ml_feat_grid *g = &c->g;
    int rc = c->finalized ? ML_OK : ML_FAIL(ML_ERR_ARG, "ml_corr_pairs: call ml_corr_finalize first");
    ml_pair *mine = NULL, *all = NULL;
    size_t *counts = NULL, *displs = NULL;
    int64_t *per = NULL, nmine = 0, total = 0;
    if (rc == ML_OK) {
        for (int64_t i = 0; i < g->na; i++)
            for (int64_t j = 0; j < g->nb; j++)
                if (!c->dead_a[i] && !c->dead_b[j] && c->S[i * g->nb + j] >= floor) nmine++;
        mine = ml_malloc(sizeof(ml_pair) * (size_t)(nmine ? nmine : 1));
        counts = ml_malloc(sizeof(size_t) * (size_t)g->size);
        displs = ml_malloc(sizeof(size_t) * (size_t)g->size);
        per = ml_malloc(sizeof(int64_t) * (size_t)g->size);
        if (!mine || !counts || !displs || !per) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ML_CHECK_GOTO(ml_agree(g->comm, rc), done);
    int64_t k = 0;
    for (int64_t i = 0; i < g->na; i++)
        for (int64_t j = 0; j < g->nb; j++) {
            double r = c->S[i * g->nb + j];
            if (!c->dead_a[i] && !c->dead_b[j] && r >= floor)
                mine[k++] = (ml_pair){(int32_t)(g->a0 + i), (int32_t)(g->b0 + j), (float)r};
        }
    if (MPI_Allgather(&nmine, 1, MPI_INT64_T, per, 1, MPI_INT64_T, g->comm) != MPI_SUCCESS)
        ML_FAIL_GOTO(done, ML_ERR_MPI, "ml_corr_pairs: MPI_Allgather of pair counts failed");
    for (int r = 0; r < g->size; r++) total += per[r];
    for (size_t r = 0, off = 0; r < (size_t)g->size; r++) {
        counts[r] = (size_t)per[r] * sizeof(ml_pair);
        displs[r] = off;
        off += counts[r];
    }
    all = ml_malloc(sizeof(ml_pair) * (size_t)(total ? total : 1));
    ML_CHECK_GOTO(ml_agree(g->comm, all ? ML_OK : ML_ERR_NOMEM), done);
    ML_CHECK_GOTO(ml_mpi_allgatherv(g->comm, mine, all, counts, displs, MPI_BYTE), done);
    qsort(all, (size_t)total, sizeof(ml_pair), ml_pair_cmp);
    *pairs = all;
    *npairs = total;
    all = NULL;
done:
    ml_free(mine);
    ml_free(all);
    ml_free(counts);
    ml_free(displs);
    ml_free(per);
    return rc;
}

int ml_corr_gather(ml_corr *c, float *r_full) {
    const ml_feat_grid *g = &c->g;
    ML_CHECK(ml_agree(g->comm, c->finalized ? ML_OK : ML_FAIL(ML_ERR_ARG, "ml_corr_gather: call ml_corr_finalize first")));
    int64_t total = g->n_a * g->n_b;
    memset(r_full, 0, sizeof(float) * (size_t)total);
    for (int64_t i = 0; i < g->na; i++)
        for (int64_t j = 0; j < g->nb; j++) r_full[(g->a0 + i) * g->n_b + g->b0 + j] = (float)c->S[i * g->nb + j];
    /* blocks are disjoint: the sum assembles them exactly */
    ML_CHECK(ml_mpi_allreduce(g->comm, MPI_IN_PLACE, r_full, (size_t)total, MPI_FLOAT, MPI_SUM));
    return ML_OK;
}
