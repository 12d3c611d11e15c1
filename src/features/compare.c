/* One comparison of two dictionaries from two code streams: activation
 * correlation (max and one-to-one matching), token-profile correlation,
 * decoder and logit cosine. The building block of `mergelens compare` and
 * of each lineage edge of `mergelens track`.
 *
 * Legend: n_a, n_b = features of A and B; na, nb = this rank's block.
 */
#include "internal.h"

#include <string.h>

void ml_compare_result_free(ml_compare_result *r) {
    if (!r) return;
    ml_best_free(&r->activation);
    ml_best_free(&r->one_to_one);
    ml_best_free(&r->token_profile);
    ml_best_free(&r->decoder);
    ml_best_free(&r->logit);
    ml_free(r->cand);
    memset(r, 0, sizeof *r);
}

/* Pull the next chunk of both streams; *n = rows (0 at the end). */
static int ml_compare_next(ml_codes_stream *a, ml_codes_stream *b, const ml_feat_grid *g, int64_t max_rows,
                           int want_tokens, ml_fcodes *ca, ml_fcodes *cb, const int32_t **ta, const int32_t **tb,
                           int64_t *n) {
    memset(ca, 0, sizeof *ca);
    memset(cb, 0, sizeof *cb);
    *ta = *tb = NULL;
    ML_CHECK(a->next(a->ctx, g->a0, g->na, max_rows, ca, want_tokens ? ta : NULL));
    ML_CHECK(b->next(b->ctx, g->b0, g->nb, max_rows, cb, want_tokens ? tb : NULL));
    if (ca->n != cb->n)
        return ML_FAIL(ML_ERR_SHAPE, "compare: stream A gave a chunk of %lld rows but stream B one of %lld; both must "
                       "walk the same token positions", (long long)ca->n, (long long)cb->n);
    if (ca->n > max_rows)
        return ML_FAIL(ML_ERR_SHAPE, "compare: a stream gave %lld rows, more than max_rows %lld", (long long)ca->n,
                       (long long)max_rows);
    if (want_tokens && ca->n > 0 && (!*ta || !*tb))
        return ML_FAIL(ML_ERR_ARG, "compare: the token-profile correlation needs token ids from both streams");
    *n = ca->n;
    return ML_OK;
}

/* One-to-one matching on the pairs with r >= floor; the floor is raised
 * towards 1 while a connected component is too large. */
static int ml_compare_one_to_one(ml_corr *corr, const ml_compare_config *cfg, ml_compare_result *out) {
    double floor = cfg->match_floor != 0 ? cfg->match_floor : 0.2;
    int64_t n_a = out->activation.n_a, n_b = out->activation.n_b;
    int32_t *ap = ml_malloc(sizeof(int32_t) * (size_t)n_a), *bp = ml_malloc(sizeof(int32_t) * (size_t)n_b);
    ml_pair *pairs = NULL;
    int64_t np = 0;
    int rc = (ap && bp) ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(ml_feat_corr_grid(corr)->comm, rc), done);
    ML_CHECK_GOTO(ml_corr_pairs(corr, floor, &pairs, &np), done);
    for (;;) { /* every rank holds the same pairs: the same outcome everywhere */
        rc = ml_assign_pairs(n_a, n_b, pairs, np, floor, cfg->max_component, ap, bp);
        if (rc != ML_ERR_UNSUPPORTED || floor >= 0.95) break;
        double raised = floor < 0 ? 0.5 : (floor + 1.0) / 2;
        ml_warn("compare: one-to-one matching component too large at r >= %.3f; raising the floor to %.3f", floor,
                raised);
        floor = raised;
    }
    if (rc != ML_OK) goto done;
    ML_CHECK_GOTO(ml_best_from_assignment(&out->activation, pairs, np, ap, bp, &out->one_to_one), done);
    out->match_floor = floor;
    out->has_one_to_one = 1;
done:
    ml_free(ap);
    ml_free(bp);
    ml_free(pairs);
    return rc;
}

int ml_compare_run(MPI_Comm comm, const ml_compare_config *cfg, ml_codes_stream *a, ml_codes_stream *b,
                   ml_compare_result *out) {
    memset(out, 0, sizeof *out);
    if (!cfg || !a || !b || !a->next || !b->next)
        return ML_FAIL(ML_ERR_ARG, "ml_compare_run: missing configuration or code stream");
    if ((cfg->dec_a || cfg->dec_b || cfg->gram) && (!cfg->dec_a || !cfg->dec_b || cfg->d_in <= 0))
        return ML_FAIL(ML_ERR_ARG, "ml_compare_run: decoder and logit similarity need both decoders and d_in > 0");
    int64_t max_rows = cfg->max_rows > 0 ? cfg->max_rows : 16384;
    ml_corr_config cc = {.n_a = a->n_features,
                         .n_b = b->n_features,
                         .max_rows = max_rows,
                         .path = cfg->path,
                         .grid_rows = cfg->grid_rows,
                         .grid_cols = cfg->grid_cols};
    ml_corr *corr = NULL;
    ml_tprof *pa = NULL, *pb = NULL;
    int want_tokens = cfg->vocab > 0;
    ML_CHECK(ml_corr_create(comm, &cc, &corr));
    const ml_feat_grid *g = ml_feat_corr_grid(corr);
    int rc = ML_OK;
    if (want_tokens) {
        rc = ml_tprof_create(corr, 0, cfg->vocab, &pa);
        if (rc == ML_OK) rc = ml_tprof_create(corr, 1, cfg->vocab, &pb);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    ml_progress prog;
    ml_progress_begin(&prog, "compare", (double)a->n_rows);
    for (;;) {
        ml_fcodes ca, cb;
        const int32_t *ta, *tb;
        int64_t n = 0;
        rc = ml_compare_next(a, b, g, max_rows, want_tokens, &ca, &cb, &ta, &tb, &n);
        if (rc == ML_OK && n > 0) rc = ml_corr_add(corr, &ca, &cb);
        ml_prof_begin("compare_tprof_add");
        if (rc == ML_OK && n > 0 && want_tokens) rc = ml_tprof_add(pa, ta, &ca);
        if (rc == ML_OK && n > 0 && want_tokens) rc = ml_tprof_add(pb, tb, &cb);
        ml_prof_end("compare_tprof_add", 0, 0);
        ML_CHECK_GOTO(ml_agree(comm, rc), fail);
        if (n == 0) break;
        out->n_tokens += n;
        ml_progress_update(&prog, (double)out->n_tokens, NULL);
    }
    ml_progress_end(&prog, NULL);
    ML_CHECK_GOTO(ml_agree(comm, ml_corr_finalize(corr)), fail);
    ML_CHECK_GOTO(ml_corr_best(corr, &out->activation), fail);
    if (cfg->n_cand > 0) ML_CHECK_GOTO(ml_corr_candidates(corr, cfg->n_cand, &out->cand, &out->n_cand), fail);
    if (cfg->matrix_file) ML_CHECK_GOTO(ml_corr_write_matrix(corr, cfg->matrix_file, cfg->matrix_name, 0), fail);
    ml_prof_begin("compare_one_to_one");
    if (cfg->match_floor <= 1) rc = ml_compare_one_to_one(corr, cfg, out);
    ml_prof_end("compare_one_to_one", 0, 0);
    if (rc != ML_OK) goto fail;
    ml_corr_destroy(&corr); /* one block at a time */
    if (want_tokens) {
        cc.path = ML_CORR_AUTO;
        ML_CHECK_GOTO(ml_corr_create(comm, &cc, &corr), fail);
        int64_t nc = 0;
        ml_prof_begin("compare_tprof_corr");
        rc = ml_agree(comm, ml_tprof_feed(pa, pb, corr, &nc));
        ml_prof_end("compare_tprof_corr", 0, 0);
        if (rc != ML_OK) goto fail;
        ML_CHECK_GOTO(ml_agree(comm, ml_corr_finalize(corr)), fail);
        ML_CHECK_GOTO(ml_corr_best(corr, &out->token_profile), fail);
        out->n_common_ids = nc;
        out->has_token_profile = 1;
        ml_corr_destroy(&corr);
    }
    if (cfg->dec_a) {
        ML_CHECK_GOTO(ml_cosine_best(comm, cfg->dec_a, a->n_features, cfg->dec_b, b->n_features, cfg->d_in, NULL,
                                     &out->decoder),
                      fail);
        out->has_decoder = 1;
    }
    if (cfg->logit_a && cfg->logit_b) {
        ML_CHECK_GOTO(ml_logit_cosine_best(comm, cfg->logit_dec_a, a->n_features, cfg->logit_d_a, cfg->logit_a,
                                           cfg->logit_dec_b, b->n_features, cfg->logit_d_b, cfg->logit_b,
                                           cfg->logit_center, &out->logit),
                      fail);
        out->has_logit = 1;
    } else if (cfg->gram) {
        ML_CHECK_GOTO(ml_cosine_best(comm, cfg->dec_a, a->n_features, cfg->dec_b, b->n_features, cfg->d_in, cfg->gram,
                                     &out->logit),
                      fail);
        out->has_logit = 1;
    }
    ml_tprof_destroy(&pa);
    ml_tprof_destroy(&pb);
    return ML_OK;
fail:
    ml_corr_destroy(&corr);
    ml_tprof_destroy(&pa);
    ml_tprof_destroy(&pb);
    ml_compare_result_free(out);
    return rc;
}
