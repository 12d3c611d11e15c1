/* Tracking features along lineage edges (persist / disappear / emerge /
 * dead) and feature-flow traces across several models.
 *
 * Legend: T = token rows of one sample, n_a, n_b = features of the parent
 * (A) and child (B) dictionaries, na = A features owned by this rank.
 */
#include "internal.h"

#include <string.h>

/* ---- classification ------------------------------------------------------- */
void ml_track_edge_free(ml_track_edge *e) {
    if (!e) return;
    ml_free(e->parent_status);
    ml_free(e->parent_partner);
    ml_free(e->parent_score);
    ml_free(e->child_status);
    ml_free(e->child_partner);
    ml_free(e->child_score);
    memset(e, 0, sizeof *e);
}

/* Status of one side: live features with score >= tau get `hit`, other
 * live ones `miss`, dead ones ML_FEAT_DEAD. counts[0..2] = hit, miss, dead. */
static void ml_track_side(int64_t n, const float *score, const int32_t *partner, const uint8_t *dead, double tau,
                          int miss, uint8_t *status, int32_t *out_partner, float *out_score, int64_t *counts) {
    for (int64_t i = 0; i < n; i++) {
        out_partner[i] = dead[i] ? -1 : partner[i];
        out_score[i] = dead[i] ? 0.0f : score[i];
        if (dead[i]) {
            status[i] = ML_FEAT_DEAD;
            counts[2]++;
        } else if (partner[i] >= 0 && (double)score[i] >= tau) {
            status[i] = ML_FEAT_PERSIST;
            counts[0]++;
        } else {
            status[i] = (uint8_t)miss;
            counts[1]++;
        }
    }
}

int ml_track_classify(const ml_best *best, double tau, ml_track_edge *e) {
    memset(e, 0, sizeof *e);
    if (!(tau > 0 && tau <= 1)) return ML_FAIL(ML_ERR_ARG, "tracking threshold tau = %g must be in (0, 1]", tau);
    int64_t na = best->n_a, nb = best->n_b;
    e->n_parent = na;
    e->n_child = nb;
    e->tau = tau;
    e->parent_status = ml_malloc((size_t)na);
    e->parent_partner = ml_malloc(sizeof(int32_t) * (size_t)na);
    e->parent_score = ml_malloc(sizeof(float) * (size_t)na);
    e->child_status = ml_malloc((size_t)nb);
    e->child_partner = ml_malloc(sizeof(int32_t) * (size_t)nb);
    e->child_score = ml_malloc(sizeof(float) * (size_t)nb);
    if (!e->parent_status || !e->parent_partner || !e->parent_score || !e->child_status || !e->child_partner ||
        !e->child_score) {
        ml_track_edge_free(e);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    ml_track_side(na, best->a_score, best->a_partner, best->a_dead, tau, ML_FEAT_DISAPPEAR, e->parent_status,
                  e->parent_partner, e->parent_score, &e->counts[ML_TRACK_PARENT_PERSIST]);
    ml_track_side(nb, best->b_score, best->b_partner, best->b_dead, tau, ML_FEAT_EMERGE, e->child_status,
                  e->child_partner, e->child_score, &e->counts[ML_TRACK_CHILD_PERSIST]);
    double lp = (double)(na - e->counts[ML_TRACK_PARENT_DEAD]), lc = (double)(nb - e->counts[ML_TRACK_CHILD_DEAD]);
    e->share_parent_persist = lp > 0 ? (double)e->counts[ML_TRACK_PARENT_PERSIST] / lp : 0;
    e->share_disappear = lp > 0 ? (double)e->counts[ML_TRACK_PARENT_DISAPPEAR] / lp : 0;
    e->share_child_persist = lc > 0 ? (double)e->counts[ML_TRACK_CHILD_PERSIST] / lc : 0;
    e->share_emerge = lc > 0 ? (double)e->counts[ML_TRACK_CHILD_EMERGE] / lc : 0;
    return ML_OK;
}

/* ---- feature flow ----------------------------------------------------------- */
struct ml_flow {
    MPI_Comm comm;
    int rank, size;
    ml_flow_config cfg;
    int64_t a0, na;      /* A features owned by this rank */
    int64_t *active;     /* (na) samples where the feature fired */
    ml_feat_hash votes;  /* key (i - a0) * n_b + j -> samples won by B feature j */
    int32_t *slot_a;     /* (n_a) index in the sample's active list, -1 */
    int32_t *slot_b;     /* (n_b) */
    int64_t tied;        /* sample matches decided among tied candidates */
    double *dist;        /* (n_b) distances of one A feature to the sample's active B features */
    int32_t *list_a, *list_b; /* active features of the sample */
    float *seq_a, *seq_b;     /* (n_active, T) sequences, capacity cap_a / cap_b floats */
    int64_t cap_a, cap_b;
};

int ml_flow_create(MPI_Comm comm, const ml_flow_config *cfg, ml_flow **out) {
    *out = NULL;
    if (!cfg || cfg->n_a <= 0 || cfg->n_b <= 0 || cfg->n_a > INT32_MAX || cfg->n_b > INT32_MAX)
        return ML_FAIL(ML_ERR_ARG, "ml_flow_create: feature counts must be in [1, 2^31)");
    if (cfg->mad_threshold < 0 || cfg->consistency < 0 || cfg->consistency > 1 || cfg->min_samples < 0)
        return ML_FAIL(ML_ERR_ARG, "ml_flow_create: mad_threshold %g must be >= 0 and consistency %g in [0, 1]",
                       cfg->mad_threshold, cfg->consistency);
    ml_flow *f = ml_calloc(1, sizeof *f);
    int rc = f ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    if (f) {
        f->comm = comm;
        MPI_Comm_rank(comm, &f->rank);
        MPI_Comm_size(comm, &f->size);
        f->cfg = *cfg;
        if (f->cfg.mad_threshold == 0) f->cfg.mad_threshold = 0.05;
        if (f->cfg.consistency == 0) f->cfg.consistency = 0.8;
        if (f->cfg.min_samples == 0) f->cfg.min_samples = 1;
        if (f->cfg.tie_tol == 0) f->cfg.tie_tol = 1e-6;
        if (f->cfg.tie_tol < 0) f->cfg.tie_tol = 0;
        f->a0 = ml_feat_split(cfg->n_a, f->rank, f->size);
        f->na = ml_feat_split(cfg->n_a, f->rank + 1, f->size) - f->a0;
        f->active = ml_calloc((size_t)(f->na ? f->na : 1), sizeof(int64_t));
        f->slot_a = ml_malloc(sizeof(int32_t) * (size_t)cfg->n_a);
        f->slot_b = ml_malloc(sizeof(int32_t) * (size_t)cfg->n_b);
        f->list_a = ml_malloc(sizeof(int32_t) * (size_t)cfg->n_a);
        f->list_b = ml_malloc(sizeof(int32_t) * (size_t)cfg->n_b);
        f->dist = ml_malloc(sizeof(double) * (size_t)cfg->n_b);
        if (!f->active || !f->slot_a || !f->slot_b || !f->list_a || !f->list_b || !f->dist)
            rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        else
            rc = ml_feat_hash_init(&f->votes, 1024);
        if (rc == ML_OK) {
            memset(f->slot_a, 0xff, sizeof(int32_t) * (size_t)cfg->n_a);
            memset(f->slot_b, 0xff, sizeof(int32_t) * (size_t)cfg->n_b);
        }
    }
    rc = ml_agree(comm, rc);
    if (rc != ML_OK) {
        ml_flow_destroy(&f);
        return rc;
    }
    *out = f;
    return ML_OK;
}

void ml_flow_destroy(ml_flow **fp) {
    if (!fp || !*fp) return;
    ml_flow *f = *fp;
    ml_free(f->active);
    ml_feat_hash_free(&f->votes);
    ml_free(f->slot_a);
    ml_free(f->slot_b);
    ml_free(f->list_a);
    ml_free(f->list_b);
    ml_free(f->dist);
    ml_free(f->seq_a);
    ml_free(f->seq_b);
    ml_free(f);
    *fp = NULL;
}

/* Gather the sample's active features in [lo, lo+m) of x into list / slot
 * and their sequences seq (n_active, T), each scaled to unit L2 norm.
 * Returns the number of active features in *nact. */
static int ml_flow_collect(const ml_fcodes *x, int64_t lo, int64_t m, int32_t *slot, int32_t *list, float **seq,
                           int64_t *cap, int64_t *nact, const char *what) {
    int64_t T = x->n, k = 0;
    /* pass 1: the active set */
    for (int64_t t = 0; t < T; t++) {
        if (x->x) {
            const float *row = x->x + t * x->ld;
            for (int64_t c = lo; c < lo + m; c++)
                if (row[c] != 0.0f && slot[c] < 0) {
                    slot[c] = (int32_t)k;
                    list[k++] = (int32_t)c;
                }
        } else {
            for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
                int64_t c = x->col[e];
                if (c < 0 || c >= x->nf) {
                    for (int64_t q = 0; q < k; q++) slot[list[q]] = -1;
                    return ML_FAIL(ML_ERR_ARG, "flow %s codes: CSR column %lld at row %lld is outside [0, %lld)",
                                   what, (long long)c, (long long)t, (long long)x->nf);
                }
                if (c >= lo && c < lo + m && x->val[e] != 0.0f && slot[c] < 0) {
                    slot[c] = (int32_t)k;
                    list[k++] = (int32_t)c;
                }
            }
        }
    }
    if (k * T > *cap) {
        int64_t ncap = k * T + k * T / 2 + 64;
        float *ns = ml_malloc(sizeof(float) * (size_t)ncap);
        if (!ns) {
            for (int64_t q = 0; q < k; q++) slot[list[q]] = -1;
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        ml_free(*seq);
        *seq = ns;
        *cap = ncap;
    }
    float *s = *seq; /* (k, T) */
    memset(s, 0, sizeof(float) * (size_t)(k * T));
    for (int64_t t = 0; t < T; t++) {
        if (x->x) {
            const float *row = x->x + t * x->ld;
            for (int64_t q = 0; q < k; q++) s[q * T + t] = row[list[q]];
        } else {
            for (int64_t e = x->row_ptr[t]; e < x->row_ptr[t + 1]; e++) {
                int32_t q = x->col[e] >= lo && x->col[e] < lo + m ? slot[x->col[e]] : -1;
                if (q >= 0) s[q * T + t] += x->val[e];
            }
        }
    }
    for (int64_t q = 0; q < k; q++) {
        double n2 = 0;
        for (int64_t t = 0; t < T; t++) n2 += (double)s[q * T + t] * s[q * T + t];
        float inv = n2 > 0 ? (float)(1.0 / sqrt(n2)) : 0.0f;
        for (int64_t t = 0; t < T; t++) s[q * T + t] *= inv;
    }
    *nact = k;
    return ML_OK;
}

/* sum_t |a_t - b_t| in 8 independent float lanes (vectorised; a fixed order, so every rank and run
 * gets the same value), the lanes and the tail added in double. */
static double ml_flow_l1(const float *a /* (T) */, const float *b /* (T) */, int64_t T) {
    float lane[8] = {0};
    int64_t t = 0;
    for (; t + 8 <= T; t += 8)
        for (int l = 0; l < 8; l++) lane[l] += fabsf(a[t + l] - b[t + l]);
    double s = 0;
    for (int l = 0; l < 8; l++) s += lane[l];
    for (; t < T; t++) s += fabsf(a[t] - b[t]);
    return s;
}

int ml_flow_add_sample(ml_flow *f, const ml_fcodes *A, const ml_fcodes *B) {
    ML_CHECK(ml_feat_check_codes(A, f->cfg.n_a, 0, f->cfg.n_a, -1, "flow A"));
    ML_CHECK(ml_feat_check_codes(B, f->cfg.n_b, 0, f->cfg.n_b, A->n, "flow B"));
    if (A->f0 != 0 || B->f0 != 0) return ML_FAIL(ML_ERR_SHAPE, "ml_flow_add_sample: samples must hold all features");
    int64_t T = A->n, ka = 0, kb = 0;
    if (T == 0) return ML_OK;
    ML_CHECK(ml_flow_collect(A, f->a0, f->na, f->slot_a, f->list_a, &f->seq_a, &f->cap_a, &ka, "A"));
    int rc = ml_flow_collect(B, 0, f->cfg.n_b, f->slot_b, f->list_b, &f->seq_b, &f->cap_b, &kb, "B");
    if (rc != ML_OK) {
        for (int64_t q = 0; q < ka; q++) f->slot_a[f->list_a[q]] = -1;
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    double thr = f->cfg.mad_threshold * (double)T; /* compare sums, not means */
    for (int64_t q = 0; q < ka && rc == ML_OK; q++) {
        const float *a = f->seq_a + q * T; /* (T) */
        int64_t i = f->list_a[q] - f->a0;
        f->active[i]++;
        /* pass 1: the smallest distance; pass 2: among the candidates within
         * tie_tol (a mean absolute difference, so tol * T on sums) of it, the
         * lowest B feature index: float rounding never decides a tie */
        double best = INFINITY, tol = f->cfg.tie_tol * (double)T;
        for (int64_t p = 0; p < kb; p++) {
            double s = ml_flow_l1(a, f->seq_b + p * T, T);
            f->dist[p] = s;
            if (s < best) best = s;
        }
        int64_t bj = -1, nt = 0;
        for (int64_t p = 0; p < kb; p++)
            if (f->dist[p] <= best + tol) {
                nt++;
                if (bj < 0 || f->list_b[p] < bj) bj = f->list_b[p];
            }
        if (bj >= 0 && best <= thr) {
            f->tied += nt > 1;
            rc = ml_feat_hash_add(&f->votes, i * f->cfg.n_b + bj, 1.0);
        }
    }
    for (int64_t q = 0; q < ka; q++) f->slot_a[f->list_a[q]] = -1;
    for (int64_t p = 0; p < kb; p++) f->slot_b[f->list_b[p]] = -1;
    if (rc != ML_OK) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    return ML_OK;
}

int ml_flow_result(ml_flow *f, int32_t *partner, float *support, int64_t *active) {
    int64_t na = f->na, nb = f->cfg.n_b;
    int32_t *mp = ml_malloc(sizeof(int32_t) * (size_t)(na ? na : 1));
    float *ms = ml_malloc(sizeof(float) * (size_t)(na ? na : 1));
    double *bc = ml_calloc((size_t)(na ? na : 1), sizeof(double));
    size_t *counts = ml_malloc(sizeof(size_t) * (size_t)f->size), *displs = ml_malloc(sizeof(size_t) * (size_t)f->size);
    int rc = (!mp || !ms || !bc || !counts || !displs) ? ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__)
                                                        : ML_OK;
    ML_CHECK_GOTO(ml_agree(f->comm, rc), done);
    for (int64_t i = 0; i < na; i++) mp[i] = -1;
    for (int64_t s = 0; s < f->votes.cap; s++) { /* most votes, ties to the smallest B feature */
        int64_t key = f->votes.keys[s];
        if (key < 0) continue;
        int64_t i = key / nb, j = key % nb;
        double v = f->votes.vals[s];
        if (v > bc[i] || (v == bc[i] && j < mp[i])) {
            bc[i] = v;
            mp[i] = (int32_t)j;
        }
    }
    for (int64_t i = 0; i < na; i++) {
        ms[i] = f->active[i] ? (float)(bc[i] / (double)f->active[i]) : 0.0f;
        if (f->active[i] < f->cfg.min_samples || (double)bc[i] < f->cfg.consistency * (double)f->active[i] ||
            bc[i] == 0)
            mp[i] = -1;
    }
    for (int r = 0; r < f->size; r++) {
        displs[r] = (size_t)ml_feat_split(f->cfg.n_a, r, f->size);
        counts[r] = (size_t)ml_feat_split(f->cfg.n_a, r + 1, f->size) - displs[r];
    }
    if (ml_mpi_allgatherv(f->comm, mp, partner, counts, displs, MPI_INT32_T) != ML_OK ||
        ml_mpi_allgatherv(f->comm, ms, support, counts, displs, MPI_FLOAT) != ML_OK ||
        (active && ml_mpi_allgatherv(f->comm, f->active, active, counts, displs, MPI_INT64_T) != ML_OK))
        ML_FAIL_GOTO(done, ML_ERR_MPI, "ml_flow_result: MPI_Allgatherv of %lld features failed",
                     (long long)f->cfg.n_a);
done:
    ml_free(mp);
    ml_free(ms);
    ml_free(bc);
    ml_free(counts);
    ml_free(displs);
    return rc;
}

int64_t ml_flow_tied(const ml_flow *f) { return f->tied; }

int ml_flow_traces(int n_models, const int64_t *n_feat, const int32_t *const *maps, int32_t **traces,
                   int64_t *n_traces) {
    *traces = NULL;
    *n_traces = 0;
    if (n_models < 2) return ML_FAIL(ML_ERR_ARG, "ml_flow_traces: need at least 2 models, got %d", n_models);
    for (int k = 0; k + 1 < n_models; k++)
        for (int64_t f = 0; f < n_feat[k]; f++)
            if (maps[k][f] < -1 || maps[k][f] >= n_feat[k + 1])
                return ML_FAIL(ML_ERR_ARG, "ml_flow_traces: map %d sends feature %lld to %d, outside [-1, %lld)", k,
                               (long long)f, maps[k][f], (long long)n_feat[k + 1]);
    int64_t total_feat = 0;
    for (int k = 0; k < n_models; k++) total_feat += n_feat[k];
    uint8_t *target = ml_calloc((size_t)(total_feat ? total_feat : 1), 1); /* per model, concatenated */
    if (!target) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int64_t off = 0;
    for (int k = 0; k + 1 < n_models; k++) {
        for (int64_t f = 0; f < n_feat[k]; f++)
            if (maps[k][f] >= 0) target[off + n_feat[k] + maps[k][f]] = 1;
        off += n_feat[k];
    }
    int64_t count = 0;
    for (int pass = 0; pass < 2; pass++) {
        int64_t row = 0;
        off = 0;
        for (int k = 0; k + 1 < n_models; k++) {
            for (int64_t f = 0; f < n_feat[k]; f++) {
                if (target[off + f] || maps[k][f] < 0) continue;
                if (pass == 1) {
                    int32_t *tr = *traces + row * n_models; /* (n_models) */
                    for (int m = 0; m < n_models; m++) tr[m] = -1;
                    int64_t cur = f;
                    for (int m = k; m < n_models && cur >= 0; m++) {
                        tr[m] = (int32_t)cur;
                        cur = m + 1 < n_models ? maps[m][cur] : -1;
                    }
                }
                row++;
            }
            off += n_feat[k];
        }
        if (pass == 0) {
            count = row;
            *traces = ml_malloc(sizeof(int32_t) * (size_t)(count ? count * n_models : 1));
            if (!*traces) {
                ml_free(target);
                return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            }
        }
    }
    ml_free(target);
    *n_traces = count;
    return ML_OK;
}
