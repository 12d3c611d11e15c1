/* Controls of a lineage edge: SAE replica and held-out-row metadata, the
 * in-memory codes of one SAE on the edge's rows, streams over them (with a
 * circular shift of the token axis for the null floor), random rotations of
 * a decoder (the weight-measure floor) and the calibrated shares.
 *
 * Legend: N rows used by the edge, F = d_sae, d = d_in, T = tau grid.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "controls.h"
#include "mergelens/io.h"

/* ---- metadata ------------------------------------------------------------------ */
int ml_sae_meta_read(MPI_Comm comm, const char *path, ml_sae_meta *m) {
    m->replica = m->replicas = m->train_row_start = m->train_row_end = m->heldout_row_start = m->heldout_row_end = -1;
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_open(comm, path, NULL, 0, INT_MAX, &h));
    struct {
        const char *name;
        int64_t *v;
    } at[] = {{"replica", &m->replica},
              {"replicas", &m->replicas},
              {"train_row_start", &m->train_row_start},
              {"train_row_end", &m->train_row_end},
              {"heldout_row_start", &m->heldout_row_start},
              {"heldout_row_end", &m->heldout_row_end}};
    int rc = ML_OK;
    for (size_t k = 0; k < sizeof at / sizeof at[0] && rc == ML_OK; k++) {
        int64_t v = -1;
        int e = ml_h5_get_attr_int(h, "/", at[k].name, &v);
        if (e == ML_OK) *at[k].v = v;
        else if (e == ML_ERR_NOTFOUND) ml_error_clear(); /* absent: -1 */
        else rc = e;
    }
    int rc2 = ml_h5_close(&h);
    ML_CHECK(ml_agree(comm, rc != ML_OK ? rc : rc2));
    return ML_OK;
}

int ml_heldout_rows(const char *what, int n, const char *const *paths, const ml_sae_meta *meta, int64_t n_rows,
                    int allow_train, int64_t *r0, int64_t *r1, int *heldout, char *note, size_t cap) {
    int64_t lo = 0, hi = n_rows;
    int known = 0, unknown = 0;
    char unk[2048] = "", ranges[4096] = "";
    for (int i = 0; i < n; i++) {
        const ml_sae_meta *m = &meta[i];
        int64_t a = -1, b = -1;
        if (m->heldout_row_start >= 0 && m->heldout_row_end > m->heldout_row_start) {
            a = m->heldout_row_start;
            b = m->heldout_row_end;
        } else if (m->train_row_start >= 0 && m->train_row_end > m->train_row_start) {
            /* the larger part of the file outside the training rows */
            int64_t ts = m->train_row_start, te = m->train_row_end < n_rows ? m->train_row_end : n_rows;
            if (n_rows - te >= ts) a = te, b = n_rows;
            else a = 0, b = ts;
        }
        if (a < 0) {
            unknown++;
            snprintf(unk + strlen(unk), sizeof unk - strlen(unk), "%s%s", unknown > 1 ? ", " : "", paths[i]);
            continue;
        }
        known++;
        snprintf(ranges + strlen(ranges), sizeof ranges - strlen(ranges), "%s%s [%lld, %lld)", known > 1 ? ", " : "",
                 paths[i], (long long)a, (long long)b);
        if (a > lo) lo = a;
        if (b < hi) hi = b;
    }
    *heldout = 0;
    note[0] = 0;
    if (known && hi <= lo) {
        if (!allow_train)
            return ML_FAIL(ML_ERR_ARG,
                           "%s: no row of the activations is held out by every SAE (held-out rows: %s); give "
                           "--allow_train_rows to use every row anyway",
                           what, ranges);
        *r0 = 0;
        *r1 = n_rows;
        snprintf(note, cap, "no row is held out by every SAE (%s); --allow_train_rows: every row used (rows SAEs trained on)",
                 ranges);
        return ML_OK;
    }
    *r0 = known ? lo : 0;
    *r1 = known ? hi : n_rows;
    *heldout = known > 0 && unknown == 0;
    if (!known)
        snprintf(note, cap, "no SAE records its training or held-out rows (%s); every row used, they may include rows "
                 "the SAEs trained on", unk);
    else if (unknown)
        snprintf(note, cap, "rows held out by %s; %s record no training or held-out rows", ranges, unk);
    else
        snprintf(note, cap, "rows held out by every SAE: %s", ranges);
    return ML_OK;
}

/* ---- codes cache ------------------------------------------------------------------ */
void ml_code_cache_free(ml_code_cache *c) {
    if (!c) return;
    ml_free(c->row_ptr);
    ml_free(c->col);
    ml_free(c->val);
    ml_free(c->tok);
    memset(c, 0, sizeof *c);
}

int ml_code_cache_build(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *acts_path,
                        const char *hook, int64_t row0, int64_t n, int64_t chunk, ml_code_cache *c) {
    memset(c, 0, sizeof *c);
    ml_sae_codes *sc = NULL;
    ML_CHECK(ml_sae_codes_open(comm, sae, sae_path, acts_path, hook, row0, n, chunk, &sc));
    ml_codes_stream *s = ml_sae_codes_stream(sc);
    c->F = sae->d_sae;
    c->row_ptr = ml_malloc(sizeof(int64_t) * (size_t)(s->n_rows + 1));
    c->tok = ml_malloc(sizeof(int32_t) * (size_t)(s->n_rows + 1));
    int rc = c->row_ptr && c->tok ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    c->row_ptr[0] = 0;
    for (;;) {
        ml_fcodes f;
        const int32_t *tk = NULL;
        ML_CHECK_GOTO(s->next(s->ctx, 0, c->F, chunk, &f, &tk), done); /* collective, agreed inside */
        if (f.n == 0) break;
        int64_t add = f.row_ptr[f.n] - f.row_ptr[0];
        if (c->nnz + add > c->cap) {
            int64_t cap = (c->nnz + add) * 3 / 2 + 1024;
            int32_t *nc = ml_realloc(c->col, sizeof(int32_t) * (size_t)cap);
            if (nc) c->col = nc;
            float *nv = nc ? ml_realloc(c->val, sizeof(float) * (size_t)cap) : NULL;
            if (nv) c->val = nv;
            rc = nc && nv ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            if (rc == ML_OK) c->cap = cap;
        }
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        memcpy(c->col + c->nnz, f.col + f.row_ptr[0], sizeof(int32_t) * (size_t)add);
        memcpy(c->val + c->nnz, f.val + f.row_ptr[0], sizeof(float) * (size_t)add);
        for (int64_t t = 0; t < f.n; t++) c->row_ptr[c->n + t + 1] = c->nnz + f.row_ptr[t + 1] - f.row_ptr[0];
        memcpy(c->tok + c->n, tk, sizeof(int32_t) * (size_t)f.n);
        c->n += f.n;
        c->nnz += add;
    }
done:
    ml_sae_codes_close(&sc);
    if (rc != ML_OK) ml_code_cache_free(c);
    return rc;
}

static int ml_cache_next(void *ctx, int64_t f0, int64_t nf, int64_t max_rows, ml_fcodes *out, const int32_t **tokens) {
    ml_cache_stream *s = ctx;
    (void)f0;
    (void)nf;
    const ml_code_cache *c = s->cache;
    int64_t end = s->pos + max_rows < c->n ? s->pos + max_rows : c->n;
    if (s->cut > s->pos && s->cut < end) end = s->cut;
    memset(out, 0, sizeof *out);
    if (tokens) *tokens = NULL;
    if (s->pos >= c->n) return ML_OK;
    int64_t src = (s->pos + s->shift) % c->n; /* [pos, end) maps to [src, src + end - pos): no wrap inside */
    *out = (ml_fcodes){.n = end - s->pos, .f0 = 0, .nf = c->F, .row_ptr = c->row_ptr + src, .col = c->col,
                       .val = c->val};
    if (tokens) *tokens = c->tok + s->pos; /* the unshifted rows' token ids */
    s->pos = end;
    return ML_OK;
}

void ml_cache_stream_init(ml_cache_stream *s, const ml_code_cache *c, int64_t shift, int64_t cut) {
    memset(s, 0, sizeof *s);
    s->cache = c;
    s->shift = c->n > 0 ? ((shift % c->n) + c->n) % c->n : 0;
    s->cut = cut;
    s->stream = (ml_codes_stream){.next = ml_cache_next, .ctx = s, .n_features = c->F, .n_rows = c->n};
}

int64_t ml_floor_shift(int64_t n, uint64_t seed, const char *edge) {
    uint64_t hsh = 1469598103934665603ull;
    for (const char *p = edge; *p; p++) hsh = (hsh ^ (uint8_t)*p) * 1099511628211ull;
    ml_rng r;
    ml_rng_seed(&r, seed, hsh);
    if (n < 4) return n > 1 ? 1 : 0;
    return n / 4 + (int64_t)ml_rng_below(&r, (uint64_t)(n / 2)); /* in [N/4, 3N/4) */
}

/* ---- random rotation --------------------------------------------------------------- */
int ml_random_rotate(const float *W, int64_t F, int64_t d, uint64_t seed, float *out) {
    double *Q = ml_malloc(sizeof(double) * (size_t)(d * d)), *h = ml_malloc(sizeof(double) * (size_t)d);
    float *Qf = ml_malloc(sizeof(float) * (size_t)(d * d));
    if (!Q || !h || !Qf) {
        ml_free(Q);
        ml_free(h);
        ml_free(Qf);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ml_rng r;
    ml_rng_seed(&r, seed, 0x726f74ull);
    /* rows q_j of Q: Gaussian vectors orthonormalised by classical Gram-Schmidt twice (CGS2):
     * a Haar-distributed orthogonal matrix (up to signs) */
    for (int64_t j = 0; j < d; j++) {
        double *q = Q + j * d; /* (d) */
        for (int64_t k = 0; k < d; k++) q[k] = ml_rng_normal(&r);
        for (int pass = 0; pass < 2 && j > 0; pass++) {
            cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)j, (int)d, 1.0, Q, (int)d, q, 1, 0.0, h, 1);
            cblas_dgemv(CblasRowMajor, CblasTrans, (int)j, (int)d, -1.0, Q, (int)d, h, 1, 1.0, q, 1);
        }
        double nrm = cblas_dnrm2((int)d, q, 1);
        for (int64_t k = 0; k < d; k++) q[k] /= nrm;
    }
    for (int64_t k = 0; k < d * d; k++) Qf[k] = (float)Q[k];
    /* out (F, d) = W (F, d) Q (d, d): the rows keep their norms and the matrix its singular values */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)F, (int)d, (int)d, 1.0f, W, (int)d, Qf, (int)d, 0.0f,
                out, (int)d);
    ml_free(Q);
    ml_free(h);
    ml_free(Qf);
    return ML_OK;
}

/* ---- block statistics of one comparison from caches ------------------------------------ */
int ml_ctl_bstats(MPI_Comm comm, const ml_code_cache *A, const ml_code_cache *B, int64_t shift,
                  const ml_compare_result *res, int64_t block, ml_bstats **out) {
    *out = NULL;
    ML_CHECK(ml_bstats_create(comm, A->F, B->F, res->cand, res->n_cand, A->n, block, out));
    ml_cache_stream sa, sb;
    ml_cache_stream_init(&sb, B, shift, 0);
    ml_cache_stream_init(&sa, A, 0, sb.shift ? A->n - sb.shift : 0);
    sb.cut = sa.cut;
    int rc = ML_OK;
    for (int64_t pos = 0; rc == ML_OK;) {
        ml_fcodes ca, cb;
        rc = ml_cache_next(&sa, 0, A->F, 16384, &ca, NULL);
        if (rc == ML_OK) rc = ml_cache_next(&sb, 0, B->F, 16384, &cb, NULL);
        if (rc != ML_OK || ca.n == 0) break;
        rc = ml_bstats_add(*out, pos, &ca, &cb);
        pos += ca.n;
    }
    rc = ml_agree(comm, rc);
    if (rc == ML_OK) rc = ml_bstats_reduce(*out);
    if (rc != ML_OK) ml_bstats_destroy(out);
    return rc;
}

/* ---- writing ---------------------------------------------------------------------------- */
static int ml_ctl_vec(ml_h5 *h, const char *g, const char *name, ml_dtype t, int64_t n, const void *x) {
    char d[800];
    snprintf(d, sizeof d, "%s/%s", g, name);
    hsize_t dims[1] = {(hsize_t)n};
    return ml_h5_write_tensor(h, d, t, 1, dims, x);
}

int ml_ctl_write_scores(ml_h5 *h, const char *edge, const ml_compare_result *main, const ml_compare_result *ceil,
                        const ml_compare_result *ceil_child, const ml_compare_result *floor) {
    const struct {
        const char *name;
        size_t off;
        size_t has;
    } m[] = {{"activation", offsetof(ml_compare_result, activation), 0},
             {"activation_1to1", offsetof(ml_compare_result, one_to_one), offsetof(ml_compare_result, has_one_to_one)},
             {"token_profile", offsetof(ml_compare_result, token_profile), offsetof(ml_compare_result, has_token_profile)},
             {"decoder_cos", offsetof(ml_compare_result, decoder), offsetof(ml_compare_result, has_decoder)},
             {"logit_cos", offsetof(ml_compare_result, logit), offsetof(ml_compare_result, has_logit)}};
#define ML_HAS(r, k) ((r) && (m[k].has == 0 || *(const int *)((const char *)(r) + m[k].has)))
#define ML_BEST(r, k) ((const ml_best *)((const char *)(r) + m[k].off))
    int64_t na = main->activation.n_a, nb = main->activation.n_b;
    float *nan_a = ml_malloc(sizeof(float) * (size_t)na);
    ML_CHECK(ml_agree(ml_h5_comm(h), nan_a ? ML_OK : ML_ERR_NOMEM));
    for (int64_t i = 0; i < na; i++) nan_a[i] = NAN;
    int rc = ML_OK;
    char g[700];
    for (size_t k = 0; k < sizeof m / sizeof m[0] && rc == ML_OK; k++) {
        if (!ML_HAS(main, k)) continue;
        snprintf(g, sizeof g, "/edges/%s/%s", edge, m[k].name);
        const ml_best *c = ML_HAS(ceil, k) ? ML_BEST(ceil, k) : NULL, *f = ML_HAS(floor, k) ? ML_BEST(floor, k) : NULL;
        const ml_best *cc = ML_HAS(ceil_child, k) ? ML_BEST(ceil_child, k) : NULL;
        rc = ml_ctl_vec(h, g, "ceiling_score", ML_F32, na, c && c->n_a == na ? c->a_score : nan_a);
        if (rc == ML_OK) rc = ml_h5_set_attr_double(h, g, "ceiling_mean", c && c->n_a == na ? c->a_mean : NAN);
        if (rc == ML_OK && f) rc = ml_ctl_vec(h, g, "floor_score", ML_F32, na, f->a_score);
        if (rc == ML_OK && f) rc = ml_ctl_vec(h, g, "child_floor_score", ML_F32, nb, f->b_score);
        if (rc == ML_OK) rc = ml_h5_set_attr_double(h, g, "floor_mean", f ? f->a_mean : NAN);
        if (rc == ML_OK && cc && cc->n_a == nb) rc = ml_ctl_vec(h, g, "child_ceiling_score", ML_F32, nb, cc->a_score);
    }
#undef ML_HAS
#undef ML_BEST
    ml_free(nan_a);
    return rc;
}

int ml_ctl_write_calibration(ml_h5 *h, const char *edge, const ml_compare_opts *o, const ml_calib_result *cr,
                             const ml_ctl_info *info) {
    char g[700];
    snprintf(g, sizeof g, "/edges/%s/calibration", edge);
    ML_CHECK(ml_h5_mkgroup(h, g));
    int T = cr->n_tau;
    ML_CHECK(ml_ctl_vec(h, g, "tau", ML_F64, T, o->tau_grid));
    static const char *names[ML_CALIB_NQ] = {"persist", "emerge", "disappear", "ceiling", "floor", "normalised",
                                             "ceiling_child"};
    for (int q = 0; q < ML_CALIB_NQ; q++) {
        char nm[64];
        const double *v = cr->v + q * 3 * T;
        ML_CHECK(ml_ctl_vec(h, g, names[q], ML_F64, T, v));
        snprintf(nm, sizeof nm, "%s_lo", names[q]);
        ML_CHECK(ml_ctl_vec(h, g, nm, ML_F64, T, v + T));
        snprintf(nm, sizeof nm, "%s_hi", names[q]);
        ML_CHECK(ml_ctl_vec(h, g, nm, ML_F64, T, v + 2 * T));
    }
    ML_CHECK(ml_h5_set_attr_str(h, g, "measure", "activation"));
    ML_CHECK(ml_h5_set_attr_double(h, g, "interval", 0.95));
    ML_CHECK(ml_h5_set_attr_int(h, g, "bootstrap", cr->n_boot));
    ML_CHECK(ml_h5_set_attr_int(h, g, "block_tokens", o->block_tokens));
    ML_CHECK(ml_h5_set_attr_int(h, g, "n_blocks", info->n_blocks));
    ML_CHECK(ml_h5_set_attr_int(h, g, "n_tokens", info->rows_end - info->rows_start));
    ML_CHECK(ml_h5_set_attr_int(h, g, "rows_start", info->rows_start));
    ML_CHECK(ml_h5_set_attr_int(h, g, "rows_end", info->rows_end));
    ML_CHECK(ml_h5_set_attr_int(h, g, "rows_heldout", info->rows_heldout));
    ML_CHECK(ml_h5_set_attr_str(h, g, "rows_note", info->rows_note));
    ML_CHECK(ml_h5_set_attr_int(h, g, "replicas_parent", info->replicas_parent));
    ML_CHECK(ml_h5_set_attr_int(h, g, "replicas_child", info->replicas_child));
    ML_CHECK(ml_h5_set_attr_int(h, g, "stable_min", o->stable_min));
    ML_CHECK(ml_h5_set_attr_str(h, g, "ceiling_source", info->ceiling_source));
    ML_CHECK(ml_h5_set_attr_str(h, g, "ceiling_child_source", info->ceiling_child_source));
    ML_CHECK(ml_h5_set_attr_str(h, g, "floor_source", info->floor_source));
    ML_CHECK(ml_h5_set_attr_int(h, g, "floor_shift", info->shift));
    ML_CHECK(ml_h5_set_attr_int(h, g, "seed", (int64_t)o->seed));
    ML_CHECK(ml_h5_set_attr_int(h, g, "candidates", o->candidates));
    ML_CHECK(ml_h5_set_attr_str(h, g, "share_definition",
                                "persist: tracked live parent features whose best child r >= tau; emerge: tracked live "
                                "child features whose best parent r < tau; disappear = 1 - persist; ceiling/floor: the "
                                "persist share of the replica / no-correspondence comparison; normalised = (persist - "
                                "floor) / (ceiling - floor); *_lo/*_hi: 2.5%/97.5% percentiles over the block bootstrap"));
    return ML_OK;
}
