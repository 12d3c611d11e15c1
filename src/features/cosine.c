/* Decoder-direction cosine and logit-weight cosine between two
 * dictionaries, best partner per feature.
 *
 * Legend: d = decoder width (SAE input width), n_a, n_b = features, na, nb =
 * this rank's block, T = rows per tile, V = vocabulary, D = residual width.
 *
 * Under a metric G (d, d) the similarity is a^T G b / (|a|_G |b|_G) with
 * |a|_G^2 = a^T G a. For G = M^T M it equals the cosine of the logit vectors
 * M a and M b, so the (n, V) logit matrices are never formed.
 */
#include "internal.h"

#include <cblas.h>
#include <string.h>

#define ML_COS_TILE 256

/* out (m, d) = rows of W (m, d) scaled to unit G-norm (W G when G given,
 * then divided by |w|_G); dead (m) = rows of zero norm. tmp (m, d). */
static void ml_cos_normalise(const float *W, int64_t m, int64_t d, const float *G, float gscale, float *out,
                             uint8_t *dead, int right_multiply) {
    if (G) /* out = W G (G symmetric) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)d, 1.0f, W, (int)d, G, (int)d,
                    0.0f, out, (int)d);
    for (int64_t i = 0; i < m; i++) {
        const float *w = W + i * d; /* (d) */
        float *o = out + i * d;     /* (d) */
        double n2 = 0, w2 = 0;
        for (int64_t k = 0; k < d; k++) {
            n2 += (double)w[k] * (G ? o[k] : w[k]);
            w2 += (double)w[k] * w[k];
        }
        /* zero norm, or (numerically) in the null space of G */
        dead[i] = !(n2 > 1e-12 * w2 * gscale) || w2 == 0.0;
        float s = dead[i] ? 0.0f : (float)(1.0 / sqrt(n2));
        const float *src = (G && right_multiply) ? o : w;
        for (int64_t k = 0; k < d; k++) o[k] = src[k] * s;
    }
}

/* Scan the (na, nb) similarity block An Bn^T in tiles of ML_COS_TILE rows
 * (sgemm per tile) and offer every live pair to cand. An (na, d), Bn (nb, d)
 * rows already normalised (and, on one side, multiplied by the metric). */
static void ml_cos_scan(const ml_feat_grid *g, const float *An, const float *Bn, int64_t d, const uint8_t *dead_a,
                        const uint8_t *dead_b, float *C, ml_feat_cand *cand) {
    for (int64_t j = 0; j < g->nb; j++) cand->b_dead[g->b0 + j] = dead_b[j];
    for (int64_t i = 0; i < g->na; i++) cand->a_dead[g->a0 + i] = dead_a[i];
    for (int64_t t0 = 0; t0 < g->na; t0 += ML_COS_TILE) {
        int64_t T = g->na - t0 < ML_COS_TILE ? g->na - t0 : ML_COS_TILE;
        /* C (T, nb) = An[t0:t0+T] (T, d) . Bn^T (d, nb) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)g->nb, (int)d, 1.0f, An + t0 * d, (int)d,
                    Bn, (int)d, 0.0f, C, (int)g->nb);
        for (int64_t i = 0; i < T; i++)
            if (!dead_a[t0 + i]) ml_feat_cand_scan_f(cand, C + i * g->nb, g->a0 + t0 + i, g->b0, g->nb, dead_b);
    }
}

/* Scratch of one cosine comparison on this rank's (na, nb) block. */
typedef struct {
    float *An, *Bn, *C;       /* (na, da), (nb, db), (ML_COS_TILE, nb) */
    uint8_t *dead_a, *dead_b; /* (na), (nb) */
    ml_feat_cand cand;
} ml_cos_work;

static void ml_cos_work_free(ml_cos_work *w) {
    ml_feat_cand_free(&w->cand);
    ml_free(w->An);
    ml_free(w->Bn);
    ml_free(w->C);
    ml_free(w->dead_a);
    ml_free(w->dead_b);
    memset(w, 0, sizeof *w);
}

/* Local; the caller agrees on the status. */
static int ml_cos_work_alloc(const ml_feat_grid *g, int64_t da, int64_t db, ml_cos_work *w) {
    memset(w, 0, sizeof *w);
    ML_CHECK(ml_feat_cand_init(&w->cand, g->n_a, g->n_b));
    w->An = ml_malloc(sizeof(float) * (size_t)(g->na * da));
    w->Bn = ml_malloc(sizeof(float) * (size_t)(g->nb * db));
    w->C = ml_malloc(sizeof(float) * (size_t)(ML_COS_TILE * g->nb));
    w->dead_a = ml_malloc((size_t)g->na);
    w->dead_b = ml_malloc((size_t)g->nb);
    if (!w->An || !w->Bn || !w->C || !w->dead_a || !w->dead_b) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    return ML_OK;
}

/* Largest diagonal entry of G (d, d): the scale of the null-space test. */
static float ml_cos_gscale(const float *G, int64_t d) {
    float s = 0.0f;
    for (int64_t k = 0; k < d; k++) s = G[k * d + k] > s ? G[k * d + k] : s;
    return s;
}

int ml_cosine_best(MPI_Comm comm, const float *WA, int64_t n_a, const float *WB, int64_t n_b, int64_t d,
                   const float *G, ml_best *out) {
    memset(out, 0, sizeof *out);
    if (d <= 0 || !WA || !WB) return ML_FAIL(ML_ERR_ARG, "ml_cosine_best: empty decoder matrices (d = %lld)", (long long)d);
    ml_feat_grid g;
    ML_CHECK(ml_feat_grid_init(comm, n_a, n_b, 0, 0, &g));
    ml_cos_work w;
    int rc = ml_cos_work_alloc(&g, d, d, &w);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    float gscale = G ? ml_cos_gscale(G, d) : 1.0f;
    ml_prof_begin("cosine");
    /* A rows: a / |a|_G (G applied once, on the B side) */
    ml_cos_normalise(WA + g.a0 * d, g.na, d, G, gscale, w.An, w.dead_a, 0);
    ml_cos_normalise(WB + g.b0 * d, g.nb, d, G, gscale, w.Bn, w.dead_b, 1);
    ml_cos_scan(&g, w.An, w.Bn, d, w.dead_a, w.dead_b, w.C, &w.cand);
    ml_prof_end("cosine", 2.0 * (double)g.na * (double)g.nb * (double)d, 4.0 * (double)(g.na + g.nb) * (double)d);
    ML_CHECK_GOTO(ml_feat_cand_reduce(comm, &w.cand, out), done);
done:
    ml_cos_work_free(&w);
    return rc;
}

/* ---- logit-weight cosine across two models ------------------------------------------------- */
/* U (m, D) = W (m, d) . down^T (d, D), columns scaled by norm_w: the
 * residual-stream write of each decoder row after the final RMSNorm weight.
 * Without down_proj the rows are copied (d == D). */
static void ml_logit_project(const ml_logit_map *mp, const float *W, int64_t m, int64_t d, float *U) {
    int64_t D = mp->D;
    if (mp->down)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)D, (int)d, 1.0f, W, (int)d, mp->down, (int)d,
                    0.0f, U, (int)D);
    else
        memcpy(U, W, sizeof(float) * (size_t)(m * D));
    if (mp->norm_w)
        for (int64_t i = 0; i < m; i++)
            for (int64_t k = 0; k < D; k++) U[i * D + k] *= mp->norm_w[k];
}

/* K (DA, DB) = HA^T HB over the vocabulary (HA (V, DA), HB (V, DB)); with
 * center, logits centred over the vocabulary: K -= V muA muB^T. */
static int ml_logit_cross_gram(const ml_logit_map *a, const ml_logit_map *b, int center, float *K) {
    int64_t V = a->V, DA = a->D, DB = b->D;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)DA, (int)DB, (int)V, 1.0f, a->lm_head, (int)DA,
                b->lm_head, (int)DB, 0.0f, K, (int)DB);
    if (!center) return ML_OK;
    double *mu = ml_calloc((size_t)(DA + DB), sizeof(double));
    if (!mu) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int64_t v = 0; v < V; v++) {
        for (int64_t k = 0; k < DA; k++) mu[k] += a->lm_head[v * DA + k];
        for (int64_t k = 0; k < DB; k++) mu[DA + k] += b->lm_head[v * DB + k];
    }
    for (int64_t i = 0; i < DA; i++)
        for (int64_t j = 0; j < DB; j++) K[i * DB + j] = (float)(K[i * DB + j] - mu[i] * mu[DA + j] / (double)V);
    ml_free(mu);
    return ML_OK;
}

static int ml_logit_map_check(const ml_logit_map *mp, int64_t d, const char *side) {
    if (!mp || !mp->lm_head || mp->V <= 0 || mp->D <= 0)
        return ML_FAIL(ML_ERR_ARG, "logit cosine: model %s needs a non-empty lm_head (V, D)", side);
    if (!mp->down && d != mp->D)
        return ML_FAIL(ML_ERR_SHAPE, "logit cosine: model %s: without down_proj the decoder width %lld must equal "
                       "hidden_size %lld", side, (long long)d, (long long)mp->D);
    return ML_OK;
}

int ml_logit_cosine_best(MPI_Comm comm, const float *WA, int64_t n_a, int64_t d_a, const ml_logit_map *ma,
                         const float *WB, int64_t n_b, int64_t d_b, const ml_logit_map *mb, int center, ml_best *out) {
    memset(out, 0, sizeof *out);
    int rc = ml_logit_map_check(ma, d_a, "A");
    if (rc == ML_OK) rc = ml_logit_map_check(mb, d_b, "B");
    if (rc == ML_OK && ma->V != mb->V)
        rc = ML_FAIL(ML_ERR_SHAPE, "logit cosine: the models have different vocabularies (%lld vs %lld tokens)",
                     (long long)ma->V, (long long)mb->V);
    if (rc == ML_OK && (!WA || !WB || n_a <= 0 || n_b <= 0))
        rc = ML_FAIL(ML_ERR_ARG, "logit cosine: empty decoder matrices");
    ML_CHECK(rc);
    int64_t DA = ma->D, DB = mb->D;
    int same = ma->lm_head == mb->lm_head && DA == DB;
    ml_feat_grid g;
    ML_CHECK(ml_feat_grid_init(comm, n_a, n_b, 0, 0, &g));
    float *UA = NULL, *UB = NULL, *Kab = NULL, *Kaa = NULL, *Kbb = NULL;
    ml_cos_work w;
    rc = ml_cos_work_alloc(&g, DA > DB ? DA : DB, DB, &w);
    if (rc == ML_OK) {
        UA = ml_malloc(sizeof(float) * (size_t)(g.na * DA));
        UB = ml_malloc(sizeof(float) * (size_t)(g.nb * DB));
        Kab = ml_malloc(sizeof(float) * (size_t)(DA * DB));
        Kaa = same ? Kab : ml_malloc(sizeof(float) * (size_t)(DA * DA));
        Kbb = same ? Kab : ml_malloc(sizeof(float) * (size_t)(DB * DB));
        if (!UA || !UB || !Kab || !Kaa || !Kbb) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_prof_begin("logit_cosine");
    /* the Gram matrices are computed on every rank (V D^2 each; identical everywhere) */
    rc = ml_logit_cross_gram(ma, mb, center, Kab);
    if (rc == ML_OK && !same) rc = ml_logit_cross_gram(ma, ma, center, Kaa);
    if (rc == ML_OK && !same) rc = ml_logit_cross_gram(mb, mb, center, Kbb);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_logit_project(ma, WA + g.a0 * d_a, g.na, d_a, UA);
    ml_logit_project(mb, WB + g.b0 * d_b, g.nb, d_b, UB);
    /* A: u_a / |u_a|_Kaa, then (DA) . Kab -> (DB); B: u_b / |u_b|_Kbb */
    ml_cos_normalise(UA, g.na, DA, Kaa, ml_cos_gscale(Kaa, DA), w.An, w.dead_a, 0);
    memcpy(UA, w.An, sizeof(float) * (size_t)(g.na * DA));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.na, (int)DB, (int)DA, 1.0f, UA, (int)DA, Kab,
                (int)DB, 0.0f, w.An, (int)DB);
    ml_cos_normalise(UB, g.nb, DB, Kbb, ml_cos_gscale(Kbb, DB), w.Bn, w.dead_b, 0);
    ml_cos_scan(&g, w.An, w.Bn, DB, w.dead_a, w.dead_b, w.C, &w.cand);
    ml_prof_end("logit_cosine", 2.0 * (double)g.na * (double)g.nb * DB, 0);
    ML_CHECK_GOTO(ml_feat_cand_reduce(comm, &w.cand, out), done);
done:
    ml_cos_work_free(&w);
    if (Kaa != Kab) ml_free(Kaa);
    if (Kbb != Kab) ml_free(Kbb);
    ml_free(Kab);
    ml_free(UA);
    ml_free(UB);
    return rc;
}

int ml_logit_gram(const float *lm_head, int64_t V, int64_t D, const float *norm_w, const float *down, int64_t d,
                  int center, float *G) {
    if (!lm_head || V <= 0 || D <= 0 || d <= 0)
        return ML_FAIL(ML_ERR_ARG, "ml_logit_gram: lm_head must be a non-empty (V, D) matrix (V=%lld, D=%lld)",
                       (long long)V, (long long)D);
    if (!down && d != D)
        return ML_FAIL(ML_ERR_SHAPE, "ml_logit_gram: without down_proj the decoder width %lld must equal D = %lld",
                       (long long)d, (long long)D);
    float *U = NULL, *K = NULL, *KP = NULL;
    int rc = ML_OK;
    const float *src = lm_head;
    K = ml_malloc(sizeof(float) * (size_t)(D * D));
    if (!K) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "ml_logit_gram: out of memory for a %lld x %lld Gram matrix",
                         (long long)D, (long long)D);
    if (center) { /* U = lm_head - column means (logits centred over the vocabulary) */
        U = ml_malloc(sizeof(float) * (size_t)(V * D));
        double *mu = ml_calloc((size_t)D, sizeof(double));
        if (!U || !mu) {
            ml_free(mu);
            ML_FAIL_GOTO(done, ML_ERR_NOMEM, "ml_logit_gram: out of memory centring a %lld x %lld lm_head",
                         (long long)V, (long long)D);
        }
        for (int64_t v = 0; v < V; v++)
            for (int64_t k = 0; k < D; k++) mu[k] += lm_head[v * D + k];
        for (int64_t k = 0; k < D; k++) mu[k] /= (double)V;
        for (int64_t v = 0; v < V; v++)
            for (int64_t k = 0; k < D; k++) U[v * D + k] = (float)(lm_head[v * D + k] - mu[k]);
        ml_free(mu);
        src = U;
    }
    /* K (D, D) = U^T U, then diag(w) K diag(w) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D, (int)D, (int)V, 1.0f, src, (int)D, src, (int)D, 0.0f,
                K, (int)D);
    if (norm_w)
        for (int64_t i = 0; i < D; i++)
            for (int64_t j = 0; j < D; j++) K[i * D + j] *= norm_w[i] * norm_w[j];
    if (!down) {
        memcpy(G, K, sizeof(float) * (size_t)(D * D));
        goto done;
    }
    /* G (d, d) = P^T (K P), P = down (D, d) */
    KP = ml_malloc(sizeof(float) * (size_t)(D * d));
    if (!KP) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "ml_logit_gram: out of memory (%lld x %lld)", (long long)D, (long long)d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)D, (int)d, (int)D, 1.0f, K, (int)D, down, (int)d, 0.0f,
                KP, (int)d);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)d, (int)D, 1.0f, down, (int)d, KP, (int)d, 0.0f,
                G, (int)d);
done:
    ml_free(U);
    ml_free(K);
    ml_free(KP);
    return rc;
}
