/* Evaluation of trained SAEs on a range of rows: reconstruction metrics,
 * per-latent firing statistics, and examples for interpretation.
 *
 * Pass 1 (rows split contiguously over ranks): encode + decode each block;
 * accumulate MSE/FVU/L0, per-latent firing counts, sums and maxima; keep per
 * latent a min-heap of its K most activating rows and a uniform sample of R
 * firing rows (the R smallest hash priorities of (row, latent), which is
 * independent of how rows are split over ranks). Heaps and samples are
 * all-gathered and merged; Q quantile examples are picked from the sample at
 * evenly spaced ranks of its activations.
 * Pass 2 (the same range widened by the context): every rank encodes its
 * share of rows and fills the token windows [-ctx_left, +ctx_right] around
 * each example with token ids and the latent's activations; a window entry
 * belongs to the example only if it has the same document id and its
 * position differs by exactly the offset.
 *
 * Dimension letters: E rows per block, D = d_in, S = d_sae, K top examples,
 * Q quantile examples, R reservoir size, W = ctx_left + 1 + ctx_right.
 */
#include "mergelens/sae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float val;
    int32_t pos;
    int64_t row; /* -1 = empty */
    int64_t doc;
} ml_ex;

typedef struct {
    uint64_t pri;
    ml_ex e;
} ml_rex;

typedef struct {
    const ml_sae *sae;
    int64_t *count; /* (S) */
    double *sum;    /* (S) */
    float *max;     /* (S) */
    ml_ex *top;     /* (S,K) min-heaps */
    int32_t *top_n; /* (S) */
    ml_rex *res;    /* (S,R) max-heaps on pri */
    int32_t *res_n; /* (S) */
    double sq[3];   /* sum ||x - x_hat||^2, sum L0, spare */
    ml_sae_eval *out;
    int64_t *rowptr; /* pass 2: CSR of window requests over this rank's rows */
    int64_t *codes;
} ml_evs;

void ml_sae_eval_config_default(ml_sae_eval_config *c) {
    memset(c, 0, sizeof *c);
    c->block_rows = 512;
    c->top_examples = 10;
    c->quantile_examples = 8;
    c->reservoir = 24;
    c->ctx_left = 16;
    c->ctx_right = 4;
    c->dense_threshold = 0.1;
    c->seed = 42;
}

void ml_sae_eval_destroy(ml_sae_eval **evp) {
    if (!evp || !*evp) return;
    ml_sae_eval *e = *evp;
    ml_free(e->count);
    ml_free(e->density);
    ml_free(e->max_act);
    ml_free(e->mean_act);
    ml_free(e->top_row);
    ml_free(e->top_act);
    ml_free(e->top_tokens);
    ml_free(e->top_window_acts);
    ml_free(e->q_row);
    ml_free(e->q_act);
    ml_free(e->q_level);
    ml_free(e->q_tokens);
    ml_free(e->q_window_acts);
    ml_free(e);
    *evp = NULL;
}

static uint64_t ml_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* a ranks below b: smaller activation, or equal and a later row */
static inline int ml_ex_worse(const ml_ex *a, const ml_ex *b) {
    return a->val < b->val || (a->val == b->val && a->row > b->row);
}

static void ml_top_push(ml_ex *h, int32_t *n, int K, const ml_ex *e) {
    int i;
    if (*n < K) {
        i = (*n)++;
        h[i] = *e;
        while (i > 0) {
            int p = (i - 1) / 2;
            if (!ml_ex_worse(&h[i], &h[p])) break;
            ml_ex t = h[i];
            h[i] = h[p];
            h[p] = t;
            i = p;
        }
        return;
    }
    if (!ml_ex_worse(&h[0], e)) return;
    h[0] = *e;
    for (i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < K && ml_ex_worse(&h[l], &h[m])) m = l;
        if (r < K && ml_ex_worse(&h[r], &h[m])) m = r;
        if (m == i) break;
        ml_ex t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void ml_res_push(ml_rex *h, int32_t *n, int R, const ml_rex *e) {
    int i;
    if (*n < R) {
        i = (*n)++;
        h[i] = *e;
        while (i > 0) {
            int p = (i - 1) / 2;
            if (h[i].pri <= h[p].pri) break;
            ml_rex t = h[i];
            h[i] = h[p];
            h[p] = t;
            i = p;
        }
        return;
    }
    if (e->pri >= h[0].pri) return;
    h[0] = *e;
    for (i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < R && h[l].pri > h[m].pri) m = l;
        if (r < R && h[r].pri > h[m].pri) m = r;
        if (m == i) break;
        ml_rex t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int ml_cmp_ex_desc(const void *a, const void *b) {
    const ml_ex *x = a, *y = b;
    if (ml_ex_worse(y, x)) return -1;
    if (ml_ex_worse(x, y)) return 1;
    return 0;
}

static int ml_cmp_rex_pri(const void *a, const void *b) {
    const ml_rex *x = a, *y = b;
    if (x->pri != y->pri) return x->pri < y->pri ? -1 : 1;
    return x->e.row < y->e.row ? -1 : x->e.row > y->e.row;
}

static int ml_cmp_rex_val(const void *a, const void *b) {
    const ml_rex *x = a, *y = b;
    if (x->e.val != y->e.val) return x->e.val < y->e.val ? -1 : 1;
    return x->e.row < y->e.row ? -1 : x->e.row > y->e.row;
}

/* read rows [r0, r0+cnt) and their metadata (collective; cnt may be 0) */
static int ml_read_block(const ml_row_source *src, int64_t r0, int64_t cnt, float *x, int32_t *tok, int64_t *doc,
                         int32_t *pos) {
    ML_CHECK(src->read(src->ctx, r0, cnt, x));
    if (src->read_meta) {
        ML_CHECK(src->read_meta(src->ctx, r0, cnt, tok, doc, pos));
    } else {
        for (int64_t i = 0; i < cnt; i++) {
            if (tok) tok[i] = -1;
            if (doc) doc[i] = 0;
            if (pos) pos[i] = (int32_t)(r0 + i);
        }
    }
    return ML_OK;
}

static void ml_evs_free(ml_evs *v) {
    ml_free(v->count);
    ml_free(v->sum);
    ml_free(v->max);
    ml_free(v->top);
    ml_free(v->top_n);
    ml_free(v->res);
    ml_free(v->res_n);
    ml_free(v->rowptr);
    ml_free(v->codes);
}

static int ml_eval_alloc(ml_sae_eval **out, int S, int K, int Q, int W) {
    ml_sae_eval *e = ml_calloc(1, sizeof *e);
    if (!e) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    e->S = S;
    e->K = K;
    e->Q = Q;
    e->W = W;
    size_t s = (size_t)S;
    e->count = ml_calloc(s, sizeof(int64_t));
    e->density = ml_calloc(s, sizeof(double));
    e->max_act = ml_calloc(s, sizeof(float));
    e->mean_act = ml_calloc(s, sizeof(float));
    e->top_row = ml_malloc(sizeof(int64_t) * s * (size_t)K);
    e->top_act = ml_calloc(s * (size_t)K, sizeof(float));
    e->top_tokens = ml_malloc(sizeof(int32_t) * s * (size_t)K * (size_t)W);
    e->top_window_acts = ml_calloc(s * (size_t)K * (size_t)W, sizeof(float));
    e->q_row = ml_malloc(sizeof(int64_t) * s * (size_t)(Q ? Q : 1));
    e->q_act = ml_calloc(s * (size_t)(Q ? Q : 1), sizeof(float));
    e->q_level = ml_calloc(s * (size_t)(Q ? Q : 1), sizeof(float));
    e->q_tokens = ml_malloc(sizeof(int32_t) * s * (size_t)(Q ? Q : 1) * (size_t)W);
    e->q_window_acts = ml_calloc(s * (size_t)(Q ? Q : 1) * (size_t)W, sizeof(float));
    if (!e->count || !e->density || !e->max_act || !e->mean_act || !e->top_row || !e->top_act || !e->top_tokens ||
        !e->top_window_acts || !e->q_row || !e->q_act || !e->q_level || !e->q_tokens || !e->q_window_acts) {
        ml_sae_eval_destroy(&e);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (size_t i = 0; i < s * (size_t)K; i++) e->top_row[i] = -1;
    for (size_t i = 0; i < s * (size_t)Q; i++) e->q_row[i] = -1;
    for (size_t i = 0; i < s * (size_t)K * (size_t)W; i++) e->top_tokens[i] = -1;
    for (size_t i = 0; i < s * (size_t)Q * (size_t)W; i++) e->q_tokens[i] = -1;
    *out = e;
    return ML_OK;
}

/* The example behind window slot (j, s): top example s < K, else quantile example s - K. */
typedef struct {
    ml_ex *top;   /* (S,K) merged, best first */
    ml_ex *qex;   /* (S,Q) chosen quantile examples */
} ml_examples;

/* Merge the gathered heaps and samples of all ranks; fill ev's example
 * tables and ex (the examples with doc/pos, for pass 2). */
static int ml_merge_examples(MPI_Comm comm, ml_evs *v, const ml_sae_eval_config *cfg, ml_examples *ex) {
    int P;
    ML_CHECK_MPI(MPI_Comm_size(comm, &P));
    ml_sae_eval *ev = v->out;
    int S = ev->S, K = ev->K, Q = ev->Q, R = cfg->reservoir;
    int rc = ML_OK;
    for (int j = 0; j < S; j++) {
        for (int t = v->top_n[j]; t < K; t++) v->top[(size_t)j * K + t].row = -1;
        for (int t = v->res_n[j]; t < R; t++) v->res[(size_t)j * R + t].e.row = -1;
    }
    size_t tb = sizeof(ml_ex) * (size_t)S * K, rb = sizeof(ml_rex) * (size_t)S * R;
    ml_ex *gt = ml_malloc(tb * (size_t)P), *cand = ml_malloc(sizeof(ml_ex) * (size_t)P * K);
    ml_rex *gr = ml_malloc(rb * (size_t)P), *rc2 = ml_malloc(sizeof(ml_rex) * (size_t)P * R);
    if (!gt || !cand || !gr || !rc2) {
        rc = ML_FAIL(ML_ERR_NOMEM, "sae eval: out of memory merging examples (%d ranks)", P);
        goto done;
    }
    rc = ml_mpi_allgather(comm, v->top, gt, tb, MPI_BYTE);
    if (rc == ML_OK) rc = ml_mpi_allgather(comm, v->res, gr, rb, MPI_BYTE);
    if (rc != ML_OK) {
        ml_error_trace(rc, __FILE__, __LINE__, __func__);
        goto done;
    }
    for (int j = 0; j < S; j++) {
        int nc = 0;
        for (int p = 0; p < P; p++)
            for (int t = 0; t < K; t++) {
                const ml_ex *e = &gt[(size_t)p * S * K + (size_t)j * K + t];
                if (e->row >= 0) cand[nc++] = *e;
            }
        qsort(cand, (size_t)nc, sizeof *cand, ml_cmp_ex_desc);
        for (int t = 0; t < K; t++) {
            ml_ex *dst = &ex->top[(size_t)j * K + t];
            if (t < nc) *dst = cand[t];
            else dst->row = -1;
            ev->top_row[(size_t)j * K + t] = dst->row;
            ev->top_act[(size_t)j * K + t] = t < nc ? dst->val : 0.0f;
        }
        /* reservoir: the R smallest priorities overall, minus the top examples */
        int nr = 0;
        for (int p = 0; p < P; p++)
            for (int t = 0; t < R; t++) {
                const ml_rex *e = &gr[(size_t)p * S * R + (size_t)j * R + t];
                if (e->e.row >= 0) rc2[nr++] = *e;
            }
        qsort(rc2, (size_t)nr, sizeof *rc2, ml_cmp_rex_pri);
        if (nr > R) nr = R;
        int m = 0;
        for (int t = 0; t < nr; t++) {
            int in_top = 0;
            for (int u = 0; u < K && u < nc; u++) in_top |= ex->top[(size_t)j * K + u].row == rc2[t].e.row;
            if (!in_top) rc2[m++] = rc2[t];
        }
        qsort(rc2, (size_t)m, sizeof *rc2, ml_cmp_rex_val);
        for (int i = 0; i < Q; i++) {
            ml_ex *dst = &ex->qex[(size_t)j * Q + i];
            int idx = m >= Q ? (int)(((double)i + 0.5) * m / Q) : i;
            if (idx < m) {
                *dst = rc2[idx].e;
                ev->q_row[(size_t)j * Q + i] = dst->row;
                ev->q_act[(size_t)j * Q + i] = dst->val;
                ev->q_level[(size_t)j * Q + i] = (float)(((double)idx + 0.5) / m);
            } else {
                dst->row = -1;
            }
        }
    }
done:
    ml_free(gt);
    ml_free(cand);
    ml_free(gr);
    ml_free(rc2);
    return rc;
}

static const ml_ex *ml_slot_example(const ml_examples *ex, int j, int s, int K, int Q) {
    return s < K ? &ex->top[(size_t)j * K + s] : &ex->qex[(size_t)j * Q + (s - K)];
}

/* CSR of (j, slot, offset) requests for rows [a, b) of this rank */
static int ml_build_requests(ml_evs *v, const ml_examples *ex, int64_t a, int64_t b, int cl, int cr) {
    ml_sae_eval *ev = v->out;
    int S = ev->S, K = ev->K, Q = ev->Q, KQ = K + Q, W = ev->W;
    int64_t n = b - a;
    v->rowptr = ml_calloc((size_t)n + 1, sizeof(int64_t));
    if (!v->rowptr) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < S; j++)
            for (int s = 0; s < KQ; s++) {
                const ml_ex *e = ml_slot_example(ex, j, s, K, Q);
                if (e->row < 0) continue;
                for (int o = -cl; o <= cr; o++) {
                    int64_t r = e->row + o;
                    if (r < a || r >= b) continue;
                    if (pass == 0) v->rowptr[r - a + 1]++;
                    else v->codes[v->rowptr[r - a]++] = (((int64_t)j * KQ + s) * W) + (o + cl);
                }
            }
        if (pass == 0) {
            for (int64_t i = 0; i < n; i++) v->rowptr[i + 1] += v->rowptr[i];
            v->codes = ml_malloc(sizeof(int64_t) * (size_t)(v->rowptr[n] + 1));
            if (!v->codes) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        } else { /* the fill advanced rowptr[i] to the old rowptr[i+1]: shift back */
            for (int64_t i = n; i > 0; i--) v->rowptr[i] = v->rowptr[i - 1];
            v->rowptr[0] = 0;
        }
    }
    return ML_OK;
}

static void ml_split(int64_t lo, int64_t hi, int r, int P, int64_t *a, int64_t *b) {
    int64_t n = hi - lo;
    *a = lo + n * r / P;
    *b = lo + n * (r + 1) / P;
}

int ml_sae_evaluate(MPI_Comm comm, ml_sae *const *saes, int n_saes, const ml_row_source *src,
                    const ml_sae_eval_config *cfg, ml_sae_eval **out) {
    int rank, P, rc = ML_OK;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    ML_CHECK_MPI(MPI_Comm_size(comm, &P));
    for (int g = 0; g < n_saes; g++) out[g] = NULL;
    int D = src->d, E = cfg->block_rows > 0 ? cfg->block_rows : 512;
    int K = cfg->top_examples, Q = cfg->quantile_examples, R = cfg->reservoir;
    int cl = cfg->ctx_left, cr = cfg->ctx_right, W = cl + 1 + cr;
    if (K < 1 || Q < 0 || R < Q || cl < 0 || cr < 0)
        return ML_FAIL(ML_ERR_ARG, "sae eval: need top_examples >= 1, 0 <= quantile_examples <= reservoir, contexts "
                                   ">= 0 (got %d, %d, %d, %d, %d)",
                       K, Q, R, cl, cr);
    int64_t row0 = cfg->row0, n = cfg->n_rows > 0 ? cfg->n_rows : src->n_rows - cfg->row0;
    if (row0 < 0 || n <= 0 || row0 + n > src->n_rows)
        return ML_FAIL(ML_ERR_ARG, "sae eval: rows [%lld, %lld) outside the source's %lld rows", (long long)row0,
                       (long long)(row0 + n), (long long)src->n_rows);
    int S = 0;
    for (int g = 0; g < n_saes; g++) {
        if (saes[g]->d_in != D)
            return ML_FAIL(ML_ERR_SHAPE, "sae eval: SAE %d has d_in %d but the rows have %d values", g, saes[g]->d_in, D);
        if (saes[g]->d_sae > S) S = saes[g]->d_sae;
    }
    ml_evs *vs = ml_calloc((size_t)n_saes, sizeof *vs);
    ml_examples *exs = ml_calloc((size_t)n_saes, sizeof *exs);
    float *x = ml_malloc(sizeof(float) * (size_t)E * D), *xh = ml_malloc(sizeof(float) * (size_t)E * D);
    float *f = ml_malloc(sizeof(float) * (size_t)E * S);
    int32_t *tok = ml_malloc(sizeof(int32_t) * (size_t)E), *pos = ml_malloc(sizeof(int32_t) * (size_t)E);
    int64_t *doc = ml_malloc(sizeof(int64_t) * (size_t)E);
    double *xsum = ml_calloc((size_t)D + 1, sizeof(double)); /* sum x (D), sum ||x||^2 */
    if (!vs || !exs || !x || !xh || !f || !tok || !pos || !doc || !xsum)
        ML_FAIL_GOTO(done, ML_ERR_NOMEM, "sae eval: out of memory (block of %d rows x %d latents)", E, S);
    for (int g = 0; g < n_saes; g++) {
        ml_evs *v = &vs[g];
        int Sg = saes[g]->d_sae;
        v->sae = saes[g];
        ML_CHECK_GOTO(ml_eval_alloc(&v->out, Sg, K, Q, W), done);
        v->out->ctx_left = cl;
        v->out->ctx_right = cr;
        v->out->row0 = row0;
        v->out->n_rows = n;
        v->count = ml_calloc((size_t)Sg, sizeof(int64_t));
        v->sum = ml_calloc((size_t)Sg, sizeof(double));
        v->max = ml_calloc((size_t)Sg, sizeof(float));
        v->top = ml_malloc(sizeof(ml_ex) * (size_t)Sg * K);
        v->top_n = ml_calloc((size_t)Sg, sizeof(int32_t));
        v->res = ml_malloc(sizeof(ml_rex) * (size_t)Sg * R);
        v->res_n = ml_calloc((size_t)Sg, sizeof(int32_t));
        exs[g].top = ml_malloc(sizeof(ml_ex) * (size_t)Sg * K);
        exs[g].qex = ml_malloc(sizeof(ml_ex) * (size_t)Sg * (Q ? Q : 1));
        if (!v->count || !v->sum || !v->max || !v->top || !v->top_n || !v->res || !v->res_n || !exs[g].top ||
            !exs[g].qex)
            ML_FAIL_GOTO(done, ML_ERR_NOMEM, "sae eval: out of memory for SAE %d", g);
    }

    /* ---- pass 1 ---- */
    int64_t a, b;
    ml_split(row0, row0 + n, rank, P, &a, &b);
    int64_t nb = ((n + P - 1) / P + E - 1) / E;
    ml_prof_begin("sae.eval");
    for (int64_t it = 0; it < nb; it++) {
        int64_t r0 = a + it * E, cnt = b - r0 < E ? b - r0 : E;
        if (cnt < 0) cnt = 0;
        ML_CHECK_GOTO(ml_read_block(src, cnt ? r0 : 0, cnt, x, NULL, doc, pos), done);
        for (int64_t i = 0; i < cnt; i++)
            for (int k = 0; k < D; k++) {
                double t = x[(size_t)i * D + k];
                xsum[k] += t;
                xsum[D] += t * t;
            }
        for (int g = 0; g < n_saes && cnt > 0; g++) {
            ml_evs *v = &vs[g];
            int Sg = v->sae->d_sae;
            ML_CHECK_GOTO(ml_sae_encode(v->sae, x, (int)cnt, f), done);
            ML_CHECK_GOTO(ml_sae_decode(v->sae, f, (int)cnt, xh), done);
            for (int64_t i = 0; i < cnt; i++) {
                const float *fi = f + (size_t)i * Sg;
                double se = 0;
                for (int k = 0; k < D; k++) {
                    double d = (double)xh[(size_t)i * D + k] - x[(size_t)i * D + k];
                    se += d * d;
                }
                v->sq[0] += se;
                int64_t row = r0 + i;
                for (int j = 0; j < Sg; j++) {
                    float val = fi[j];
                    if (!(val > 0)) continue;
                    v->sq[1] += 1;
                    v->count[j]++;
                    v->sum[j] += val;
                    if (val > v->max[j]) v->max[j] = val;
                    ml_ex e = {val, pos[i], row, doc[i]};
                    ml_top_push(v->top + (size_t)j * K, &v->top_n[j], K, &e);
                    ml_rex re = {ml_mix(cfg->seed ^ ml_mix((uint64_t)row * 0x100000001B3ull + (uint64_t)j)), e};
                    ml_res_push(v->res + (size_t)j * R, &v->res_n[j], R, &re);
                }
            }
        }
    }
    ml_prof_end("sae.eval", 4.0 * (double)(b - a) * D * S * n_saes, 0);
    rc = MPI_Allreduce(MPI_IN_PLACE, xsum, D + 1, MPI_DOUBLE, MPI_SUM, comm);
    if (rc != MPI_SUCCESS) {
        rc = ml_mpi_error(rc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
        goto done;
    }
    double var = xsum[D];
    for (int k = 0; k < D; k++) var -= xsum[k] * xsum[k] / (double)n;
    for (int g = 0; g < n_saes; g++) {
        ml_evs *v = &vs[g];
        ml_sae_eval *ev = v->out;
        int Sg = ev->S;
        rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, v->count, (size_t)Sg, MPI_INT64_T, MPI_SUM);
        if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, v->sum, (size_t)Sg, MPI_DOUBLE, MPI_SUM);
        if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, v->max, (size_t)Sg, MPI_FLOAT, MPI_MAX);
        if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, v->sq, 3, MPI_DOUBLE, MPI_SUM);
        if (rc != ML_OK) {
            ml_error_trace(rc, __FILE__, __LINE__, __func__);
            goto done;
        }
        rc = ML_OK;
        ev->mse = v->sq[0] / ((double)n * D);
        ev->fvu = var > 0 ? v->sq[0] / var : 0;
        ev->l0 = v->sq[1] / (double)n;
        int64_t nd = 0, nn = 0;
        double *cnt_d = ml_malloc(sizeof(double) * (size_t)Sg);
        if (!cnt_d) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "sae eval: out of memory");
        for (int j = 0; j < Sg; j++) {
            ev->count[j] = v->count[j];
            ev->density[j] = (double)v->count[j] / (double)n;
            ev->max_act[j] = v->max[j];
            ev->mean_act[j] = v->count[j] ? (float)(v->sum[j] / (double)v->count[j]) : 0.0f;
            nd += v->count[j] == 0;
            nn += ev->density[j] > cfg->dense_threshold;
            cnt_d[j] = (double)v->count[j];
        }
        ml_sae_density_hist(cnt_d, Sg, (double)n, ev->hist, &ev->hist_zero);
        ml_free(cnt_d);
        ev->dead_fraction = (double)nd / Sg;
        ev->dense_fraction = (double)nn / Sg;
        ML_CHECK_GOTO(ml_merge_examples(comm, v, cfg, &exs[g]), done);
    }

    /* ---- pass 2: context windows ---- */
    int64_t lo2 = row0 - cl > 0 ? row0 - cl : 0, hi2 = row0 + n + cr < src->n_rows ? row0 + n + cr : src->n_rows;
    ml_split(lo2, hi2, rank, P, &a, &b);
    for (int g = 0; g < n_saes; g++) ML_CHECK_GOTO(ml_build_requests(&vs[g], &exs[g], a, b, cl, cr), done);
    nb = ((hi2 - lo2 + P - 1) / P + E - 1) / E;
    ml_prof_begin("sae.eval_windows");
    for (int64_t it = 0; it < nb; it++) {
        int64_t r0 = a + it * E, cnt = b - r0 < E ? b - r0 : E;
        if (cnt < 0) cnt = 0;
        ML_CHECK_GOTO(ml_read_block(src, cnt ? r0 : 0, cnt, x, tok, doc, pos), done);
        for (int g = 0; g < n_saes && cnt > 0; g++) {
            ml_evs *v = &vs[g];
            ml_sae_eval *ev = v->out;
            int Sg = ev->S, KQ = K + Q;
            int64_t i0 = r0 - a;
            if (v->rowptr[i0 + cnt] == v->rowptr[i0]) continue;
            ML_CHECK_GOTO(ml_sae_encode(v->sae, x, (int)cnt, f), done);
            for (int64_t i = 0; i < cnt; i++)
                for (int64_t q = v->rowptr[i0 + i]; q < v->rowptr[i0 + i + 1]; q++) {
                    int64_t code = v->codes[q];
                    int oi = (int)(code % W), s = (int)((code / W) % KQ), j = (int)(code / W / KQ);
                    const ml_ex *e = ml_slot_example(&exs[g], j, s, K, Q);
                    if (doc[i] != e->doc || (int64_t)pos[i] - e->pos != oi - cl) continue;
                    size_t at = s < K ? ((size_t)j * K + s) * W + oi : ((size_t)j * Q + (s - K)) * W + oi;
                    int32_t *tt = s < K ? ev->top_tokens : ev->q_tokens;
                    float *ta = s < K ? ev->top_window_acts : ev->q_window_acts;
                    tt[at] = tok[i];
                    ta[at] = f[(size_t)i * Sg + j];
                }
        }
    }
    ml_prof_end("sae.eval_windows", 2.0 * (double)(b - a) * D * S * n_saes, 0);
    for (int g = 0; g < n_saes; g++) {
        ml_sae_eval *ev = vs[g].out;
        size_t nt = (size_t)ev->S * K * W, nq = (size_t)ev->S * Q * W;
        rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, ev->top_tokens, nt, MPI_INT32_T, MPI_MAX);
        if (rc == ML_OK) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, ev->top_window_acts, nt, MPI_FLOAT, MPI_SUM);
        if (rc == ML_OK && nq) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, ev->q_tokens, nq, MPI_INT32_T, MPI_MAX);
        if (rc == ML_OK && nq) rc = ml_mpi_allreduce(comm, MPI_IN_PLACE, ev->q_window_acts, nq, MPI_FLOAT, MPI_SUM);
        if (rc != ML_OK) {
            ml_error_trace(rc, __FILE__, __LINE__, __func__);
            goto done;
        }
        rc = ML_OK;
    }
    for (int g = 0; g < n_saes; g++) {
        out[g] = vs[g].out;
        vs[g].out = NULL;
    }
    rc = ML_OK;
done:
    if (vs)
        for (int g = 0; g < n_saes; g++) {
            ml_sae_eval_destroy(&vs[g].out);
            ml_evs_free(&vs[g]);
        }
    if (exs)
        for (int g = 0; g < n_saes; g++) {
            ml_free(exs[g].top);
            ml_free(exs[g].qex);
        }
    ml_free(vs);
    ml_free(exs);
    ml_free(x);
    ml_free(xh);
    ml_free(f);
    ml_free(tok);
    ml_free(pos);
    ml_free(doc);
    ml_free(xsum);
    return rc;
}
