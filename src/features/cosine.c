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

int ml_cosine_best(MPI_Comm comm, const float *WA, int64_t n_a, const float *WB, int64_t n_b, int64_t d,
                   const float *G, ml_best *out) {
    memset(out, 0, sizeof *out);
    if (d <= 0 || !WA || !WB) return ML_FAIL(ML_ERR_ARG, "ml_cosine_best: empty decoder matrices (d = %lld)", (long long)d);
    ml_feat_grid g;
    ML_CHECK(ml_feat_grid_init(comm, n_a, n_b, 0, 0, &g));
    float *An = NULL, *Bn = NULL, *C = NULL;
    uint8_t *dead_a = NULL, *dead_b = NULL;
    ml_feat_cand cand;
    memset(&cand, 0, sizeof cand);
    int rc = ml_feat_cand_init(&cand, n_a, n_b);
    if (rc == ML_OK) {
        An = ml_malloc(sizeof(float) * (size_t)(g.na * d));
        Bn = ml_malloc(sizeof(float) * (size_t)(g.nb * d));
        C = ml_malloc(sizeof(float) * (size_t)(ML_COS_TILE * g.nb));
        dead_a = ml_malloc((size_t)g.na);
        dead_b = ml_malloc((size_t)g.nb);
        if (!An || !Bn || !C || !dead_a || !dead_b) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    float gscale = 1.0f;
    if (G) {
        gscale = 0.0f;
        for (int64_t k = 0; k < d; k++) gscale = G[k * d + k] > gscale ? G[k * d + k] : gscale;
    }
    ml_prof_begin("cosine");
    /* A rows: a / |a|_G (G applied once, on the B side) */
    ml_cos_normalise(WA + g.a0 * d, g.na, d, G, gscale, An, dead_a, 0);
    ml_cos_normalise(WB + g.b0 * d, g.nb, d, G, gscale, Bn, dead_b, 1);
    for (int64_t j = 0; j < g.nb; j++) cand.b_dead[g.b0 + j] = dead_b[j];
    for (int64_t i = 0; i < g.na; i++) cand.a_dead[g.a0 + i] = dead_a[i];
    for (int64_t t0 = 0; t0 < g.na; t0 += ML_COS_TILE) {
        int64_t T = g.na - t0 < ML_COS_TILE ? g.na - t0 : ML_COS_TILE;
        /* C (T, nb) = An[t0:t0+T] (T, d) . Bn^T (d, nb) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)g.nb, (int)d, 1.0f, An + t0 * d, (int)d,
                    Bn, (int)d, 0.0f, C, (int)g.nb);
        for (int64_t i = 0; i < T; i++)
            if (!dead_a[t0 + i]) ml_feat_cand_scan_f(&cand, C + i * g.nb, g.a0 + t0 + i, g.b0, g.nb, dead_b);
    }
    ml_prof_end("cosine", 2.0 * (double)g.na * (double)g.nb * (double)d, 4.0 * (double)(g.na + g.nb) * (double)d);
    ML_CHECK_GOTO(ml_feat_cand_reduce(comm, &cand, out), done);
done:
    ml_feat_cand_free(&cand);
    ml_free(An);
    ml_free(Bn);
    ml_free(C);
    ml_free(dead_a);
    ml_free(dead_b);
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
