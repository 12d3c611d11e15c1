/* One lineage edge parent -> child: load both SAEs, check the token
 * positions, choose the rows (held out by every SAE read), encode each SAE's
 * codes once into memory, run ml_compare_run and the feature flow on them,
 * classify and write /edges/<edge>; then the controls: the null floor (the
 * child's codes shifted along the token axis, its decoder rotated), the seed
 * ceilings (replica 0 vs 1 of each model, cached per model by `track`), the
 * block statistics and the calibrated shares (/edges/<edge>/calibration).
 *
 * Legend: F_A, F_B = features of the parent's and the child's SAE, T =
 * rows of one flow sample.
 */
#include <math.h>
#include <string.h>

#include "controls.h"
#include "mergelens/compare.h"
#include "mergelens/io.h"

void ml_compare_opts_default(ml_compare_opts *o) {
    memset(o, 0, sizeof *o);
    o->tau = 0.8;
    o->chunk_rows = 16384;
    o->path = ML_CORR_AUTO;
    o->token_profile = 1;
    o->decoder = 1;
    o->flow_window = 64;
    o->logit = 1;
    o->calibrate = 1;
    o->n_tau = 5;
    for (int t = 0; t < 5; t++) o->tau_grid[t] = 0.5 + 0.1 * t;
    o->bootstrap = 200;
    o->block_tokens = 256;
    o->seed = 1;
    o->candidates = 4;
}

void ml_compare_edge_result_free(ml_compare_edge_result *r) {
    if (!r) return;
    ml_track_edge_free(&r->track);
    ml_free(r->flow_partner);
    memset(r, 0, sizeof *r);
}

/* Feed the flow from cached codes: every window of T rows is one sample. */
static int ml_flow_feed_cache(MPI_Comm comm, ml_flow *flow, const ml_code_cache *pa, const ml_code_cache *ch,
                              int64_t window) {
    int rc = ML_OK;
    ml_prof_begin("compare_flow");
    for (int64_t s = 0; s < pa->n && rc == ML_OK; s += window) {
        int64_t t = pa->n - s < window ? pa->n - s : window;
        ml_fcodes a = {.n = t, .f0 = 0, .nf = pa->F, .row_ptr = pa->row_ptr + s, .col = pa->col, .val = pa->val};
        ml_fcodes b = {.n = t, .f0 = 0, .nf = ch->F, .row_ptr = ch->row_ptr + s, .col = ch->col, .val = ch->val};
        rc = ml_flow_add_sample(flow, &a, &b);
    }
    ml_prof_end("compare_flow", 0, 0);
    return ml_agree(comm, rc);
}

static int ml_load_sae(MPI_Comm comm, const char *path, ml_sae **out) {
    int rc = ml_sae_load(path, out);
    return ml_agree(comm, rc);
}

/* /edges/<edge>/flow: partner [F_A] i32, support [F_A] f32, active [F_A] i64 */
static int ml_write_flow(ml_h5 *h, const char *edge, const ml_compare_opts *o, int64_t n_a, const int32_t *partner,
                         const float *support, const int64_t *active, int64_t tied) {
    char g[600], d[700];
    snprintf(g, sizeof g, "/edges/%s/flow", edge);
    ML_CHECK(ml_h5_mkgroup(h, g));
    hsize_t dims[1] = {(hsize_t)n_a};
    snprintf(d, sizeof d, "%s/partner", g);
    ML_CHECK(ml_h5_write_tensor(h, d, ML_I32, 1, dims, partner));
    snprintf(d, sizeof d, "%s/support", g);
    ML_CHECK(ml_h5_write_tensor(h, d, ML_F32, 1, dims, support));
    snprintf(d, sizeof d, "%s/active", g);
    ML_CHECK(ml_h5_write_tensor(h, d, ML_I64, 1, dims, active));
    ML_CHECK(ml_h5_set_attr_int(h, g, "window", o->flow_window));
    ML_CHECK(ml_h5_set_attr_double(h, g, "mad_threshold", o->flow_mad > 0 ? o->flow_mad : 0.05));
    ML_CHECK(ml_h5_set_attr_double(h, g, "consistency", o->flow_consistency > 0 ? o->flow_consistency : 0.8));
    ML_CHECK(ml_h5_set_attr_double(h, g, "tie_tol", o->flow_tie_tol > 0 ? o->flow_tie_tol : 1e-6));
    double best = 0;
    int64_t kept = 0;
    for (int64_t i = 0; i < n_a; i++) {
        if (support[i] > best) best = support[i];
        kept += partner[i] >= 0;
    }
    ML_CHECK(ml_h5_set_attr_double(h, g, "best_support", best));
    ML_CHECK(ml_h5_set_attr_int(h, g, "n_kept", kept));
    ML_CHECK(ml_h5_set_attr_int(h, g, "tied_matches", tied));
    return ML_OK;
}


/* Replica files of one model: paths[0] = the SAE, paths[r] = its replica r
 * (existing files only, up to `want`). *R = the replicas recorded (1 if the
 * SAE records none). */
typedef char ml_rep_path[1100];
static int ml_edge_replicas(MPI_Comm comm, const char *sae_path, const ml_sae_meta *m, int want, ml_rep_path *paths,
                            int *n_found, int64_t *R) {
    *R = m->replicas >= 1 ? m->replicas : 1;
    snprintf(paths[0], sizeof paths[0], "%s", sae_path);
    int n = 1;
    for (int r = 1; r < *R && r < want && r < ML_COMPARE_MAX_REPLICAS; r++) {
        ML_CHECK(ml_sae_replica_path(sae_path, r, paths[n], sizeof paths[n]));
        int ex = ml_file_exists(paths[n]);
        int all = 0;
        ML_CHECK_MPI(MPI_Allreduce(&ex, &all, 1, MPI_INT, MPI_MIN, comm));
        if (!all) {
            ml_warn("compare: %s records %lld replicas but %s does not exist; using %d", sae_path, (long long)*R,
                    paths[n], n);
            break;
        }
        n++;
    }
    *n_found = n;
    return ML_OK;
}

struct ml_replica_cache {
    int valid, n;                 /* replicas compared (replica 0 included) */
    int64_t r0, r1, block;        /* rows and block size the entry was computed for */
    int stable, logit;            /* stable_min > 0 (all replicas), logit cosine on */
    ml_compare_result res;        /* replica 0 vs 1, every measure */
    ml_bstats *bs;                /* its block statistics */
    float *stab;                  /* (n - 1, F) replica 0's best activation r against replica r */
};

static void ml_replica_cache_clear(ml_replica_cache *c) {
    ml_compare_result_free(&c->res);
    ml_bstats_destroy(&c->bs);
    ml_free(c->stab);
    memset(c, 0, sizeof *c);
}

int ml_replica_cache_create(ml_replica_cache **out) {
    *out = ml_calloc(1, sizeof **out);
    return *out ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
}

void ml_replica_cache_destroy(ml_replica_cache **c) {
    if (!c || !*c) return;
    ml_replica_cache_clear(*c);
    ml_free(*c);
    *c = NULL;
}

/* Everything the controls of an edge own. */
typedef struct {
    ml_compare_result floor;
    ml_replica_cache own_p, own_c; /* the ceilings when the models bring no cache */
    ml_replica_cache *rp, *rc;     /* the ceilings used: a model's cache or own_* */
    ml_bstats *bs_main, *bs_floor;
    float *rot;                  /* (F_child, d) rotated child decoder */
    uint8_t *mask_p, *mask_c;    /* (T, F) */
    ml_calib_result cr;
} ml_edge_ctl;

static void ml_edge_ctl_free(ml_edge_ctl *c) {
    ml_compare_result_free(&c->floor);
    ml_replica_cache_clear(&c->own_p);
    ml_replica_cache_clear(&c->own_c);
    ml_bstats_destroy(&c->bs_main);
    ml_bstats_destroy(&c->bs_floor);
    ml_free(c->rot);
    ml_free(c->mask_p);
    ml_free(c->mask_c);
    ml_calib_result_free(&c->cr);
}

static int ml_edge_replica_runs(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_config *base,
                                const ml_compare_model *m, const ml_code_cache *c0, const ml_logit_side *l0, int n,
                                ml_rep_path *paths, int64_t r0, int64_t nrows, int64_t chunk, int need_stab,
                                ml_compare_result *res, ml_bstats **bs, float *stab);

/* The ceiling entry of one model: its cache when valid for these rows and
 * settings, else (re)computed into the cache or into own. */
static int ml_edge_ceiling(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_config *base,
                           const ml_compare_model *m, const ml_code_cache *c0, const ml_logit_side *l0, int n,
                           ml_rep_path *paths, int64_t r0, int64_t chunk, ml_replica_cache *own,
                           ml_replica_cache **use) {
    ml_replica_cache *e = m->replicas ? m->replicas : own;
    int stable = o->stable_min > 0, logit = l0->ok;
    int64_t r1 = r0 + c0->n;
    if (e->valid && e->n == n && e->r0 == r0 && e->r1 == r1 && e->block == o->block_tokens && e->stable == stable &&
        e->logit == logit) {
        ml_info("compare: seed ceiling of %s reused (rows [%lld, %lld))", m->sae_path, (long long)r0, (long long)r1);
        *use = e;
        return ML_OK;
    }
    ml_replica_cache_clear(e);
    if (stable) {
        e->stab = ml_malloc(sizeof(float) * (size_t)((n - 1) * c0->F));
        ML_CHECK(ml_agree(comm, e->stab ? ML_OK : ML_ERR_NOMEM));
    }
    int rc = ml_edge_replica_runs(comm, o, base, m, c0, l0, n, paths, r0, c0->n, chunk, stable, &e->res, &e->bs,
                                  e->stab);
    if (rc != ML_OK) {
        ml_replica_cache_clear(e);
        return rc;
    }
    e->valid = 1;
    e->n = n;
    e->r0 = r0;
    e->r1 = r1;
    e->block = o->block_tokens;
    e->stable = stable;
    e->logit = logit;
    *use = e;
    return ML_OK;
}

/* Replica 0 of one model (codes c0, logit side l0) against its
 * replicas 1..n-1 on the same activations: the full comparison for replica
 * 1 (res, bstats), activation best scores only for the others (stab rows),
 * and replica 1's scores in stab row 0. */
static int ml_edge_replica_runs(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_config *base,
                                const ml_compare_model *m, const ml_code_cache *c0, const ml_logit_side *l0, int n,
                                ml_rep_path *paths, int64_t r0, int64_t nrows, int64_t chunk, int need_stab,
                                ml_compare_result *res, ml_bstats **bs, float *stab) {
    int rc = ML_OK;
    for (int r = 1; r < n && rc == ML_OK; r++) {
        if (r > 1 && !need_stab) break;
        ml_sae *sr = NULL;
        ml_code_cache cr;
        memset(&cr, 0, sizeof cr);
        ml_logit_side lr;
        memset(&lr, 0, sizeof lr);
        ml_compare_result tmp;
        memset(&tmp, 0, sizeof tmp);
        rc = ml_load_sae(comm, paths[r], &sr);
        if (rc == ML_OK) rc = ml_code_cache_build(comm, sr, paths[r], m->acts_path, o->hook, r0, nrows, chunk, &cr);
        ml_compare_config cfg = *base;
        cfg.matrix_file = NULL;
        cfg.matrix_name = NULL;
        cfg.logit_a = cfg.logit_b = NULL;
        cfg.gram = NULL;
        if (rc != ML_OK) {
            /* nothing to configure: the SAE or its codes failed (agreed) */
        } else if (r == 1) {
            cfg.dec_b = base->dec_a ? sr->W_dec : NULL;
            if (cfg.dec_b && sr->d_in != base->d_in) cfg.dec_a = cfg.dec_b = NULL;
            if (l0->ok) {
                rc = ml_agree(comm, ml_logit_side_open(comm, sr, paths[r], m->model_path, o->hook, l0, &lr));
                if (rc == ML_OK && lr.ok) {
                    cfg.logit_a = &l0->map;
                    cfg.logit_b = &lr.map;
                    cfg.logit_dec_a = l0->dec;
                    cfg.logit_dec_b = lr.dec;
                    cfg.logit_d_a = l0->d;
                    cfg.logit_d_b = lr.d;
                }
            }
        } else { /* stability only: activation best partners */
            cfg.vocab = 0;
            cfg.dec_a = cfg.dec_b = NULL;
            cfg.match_floor = 2;
            cfg.n_cand = 0;
        }
        if (rc == ML_OK) {
            ml_cache_stream sa, sb;
            ml_cache_stream_init(&sa, c0, 0, 0);
            ml_cache_stream_init(&sb, &cr, 0, 0);
            rc = cr.n == c0->n ? ML_OK
                               : ML_FAIL(ML_ERR_SHAPE, "compare: replica %s gave %lld rows, expected %lld", paths[r],
                                         (long long)cr.n, (long long)c0->n);
            rc = ml_agree(comm, rc);
            if (rc == ML_OK) rc = ml_compare_run(comm, &cfg, &sa.stream, &sb.stream, r == 1 ? res : &tmp);
        }
        if (rc == ML_OK && r == 1) rc = ml_ctl_bstats(comm, c0, &cr, 0, res, o->block_tokens, bs);
        if (rc == ML_OK && stab) {
            const ml_best *b = r == 1 ? &res->activation : &tmp.activation;
            memcpy(stab + (int64_t)(r - 1) * c0->F, b->a_score, sizeof(float) * (size_t)c0->F);
        }
        ml_compare_result_free(&tmp);
        ml_logit_side_free(&lr);
        ml_code_cache_free(&cr);
        ml_sae_destroy(&sr);
    }
    return rc;
}

/* Tracked features per tau: live (main comparison), and found at tau in >= m
 * of the model's n replicas (replica 0 counts itself) when m > 0. */
static void ml_edge_mask(const ml_compare_opts *o, int64_t F, const uint8_t *dead, int n, const float *stab,
                         uint8_t *mask) {
    for (int t = 0; t < o->n_tau; t++)
        for (int64_t i = 0; i < F; i++) {
            int found = 1;
            for (int r = 1; r < n && stab; r++) found += (double)stab[(int64_t)(r - 1) * F + i] >= o->tau_grid[t];
            mask[(int64_t)t * F + i] = !dead[i] && (o->stable_min <= 0 || found >= o->stable_min);
        }
}

static int ml_edge_calibrate(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_model *parent,
                             const ml_compare_model *child, ml_h5 *h, const char *edge, const ml_sae *sa,
                             const ml_sae *sb, const ml_code_cache *cp, const ml_code_cache *cc,
                             const ml_compare_config *base, const ml_logit_side *la, const ml_logit_side *lb,
                             int np, ml_rep_path *rp, int nc, ml_rep_path *rc_paths, int64_t r0, int64_t chunk,
                             const ml_compare_result *mainr, ml_ctl_info *info) {
    ml_edge_ctl c;
    memset(&c, 0, sizeof c);
    int rc = ML_OK, T = o->n_tau;
    int64_t N = cp->n, Fp = sa->d_sae, Fc = sb->d_sae;
    if (o->stable_min > 0 && (np < o->stable_min || nc < o->stable_min))
        ML_FAIL_GOTO(done, ML_ERR_ARG,
                     "compare: --stable_min %d needs at least %d replicas of every SAE (%s has %d, %s has %d)",
                     o->stable_min, o->stable_min, parent->sae_path, np, child->sae_path, nc);
    /* 1. floor: child codes shifted along the token axis; child decoder rotated */
    info->shift = ml_floor_shift(N, o->seed, edge);
    if (N < 1024)
        ml_warn("compare: %s: only %lld rows; the floor's shift of %lld rows may be short", edge, (long long)N,
                (long long)info->shift);
    ml_compare_config cf = *base;
    cf.matrix_file = NULL;
    cf.matrix_name = NULL;
    if (base->dec_b || base->logit_dec_b) {
        c.rot = ml_malloc(sizeof(float) * (size_t)(Fc * sb->d_in));
        rc = c.rot ? ml_random_rotate(sb->W_dec, Fc, sb->d_in, o->seed, c.rot)
                   : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        if (cf.dec_b) cf.dec_b = c.rot;
        if (cf.logit_dec_b) {
            if (lb->dec == sb->W_dec && lb->d == sb->d_in) cf.logit_dec_b = c.rot;
            else cf.logit_a = cf.logit_b = NULL; /* cannot rotate that decoder: no logit floor */
        }
    }
    {
        ml_cache_stream sa_, sb_;
        ml_cache_stream_init(&sb_, cc, info->shift, 0);
        ml_cache_stream_init(&sa_, cp, 0, N - sb_.shift);
        sb_.cut = sa_.cut;
        ml_prof_begin("controls_floor");
        rc = ml_compare_run(comm, &cf, &sa_.stream, &sb_.stream, &c.floor);
        ml_prof_end("controls_floor", 0, 0);
        if (rc != ML_OK) goto done;
    }
    ml_prof_begin("controls_bstats");
    rc = ml_ctl_bstats(comm, cp, cc, info->shift, &c.floor, o->block_tokens, &c.bs_floor);
    if (rc == ML_OK) rc = ml_ctl_bstats(comm, cp, cc, 0, mainr, o->block_tokens, &c.bs_main);
    ml_prof_end("controls_bstats", 0, 0);
    if (rc != ML_OK) goto done;
    snprintf(info->floor_source, sizeof info->floor_source,
             "activation measures: child codes circularly shifted by %lld of %lld rows against the parent's; weight "
             "measures: child decoder times a random orthogonal matrix (same singular values); seed %llu",
             (long long)info->shift, (long long)N, (unsigned long long)o->seed);
    /* 2. ceilings: replica 0 vs replica 1 of each model on its own activations */
    ml_prof_begin("controls_replicas");
    if (np > 1) {
        ml_compare_config pc = *base; /* the parent's model on both sides */
        pc.dec_a = base->dec_a ? sa->W_dec : NULL;
        pc.logit_a = pc.logit_b = NULL;
        rc = ml_edge_ceiling(comm, o, &pc, parent, cp, la, np, rp, r0, chunk, &c.own_p, &c.rp);
    }
    if (rc == ML_OK && nc > 1) {
        ml_compare_config bc = *base; /* the child's model on both sides */
        bc.dec_a = base->dec_b;
        bc.d_in = sb->d_in;
        bc.logit_a = bc.logit_b = NULL;
        rc = ml_edge_ceiling(comm, o, &bc, child, cc, lb, nc, rc_paths, r0, chunk, &c.own_c, &c.rc);
    }
    ml_prof_end("controls_replicas", 0, 0);
    if (rc != ML_OK) goto done;
    if (np > 1)
        snprintf(info->ceiling_source, sizeof info->ceiling_source, "parent replica 0 vs parent replica 1 (%s vs %s)",
                 rp[0], rp[1]);
    else if (nc > 1)
        snprintf(info->ceiling_source, sizeof info->ceiling_source,
                 "child replica 0 vs child replica 1 (%s vs %s; the parent has no replicas)", rc_paths[0], rc_paths[1]);
    else
        snprintf(info->ceiling_source, sizeof info->ceiling_source, "none (no replicas)");
    if (nc > 1)
        snprintf(info->ceiling_child_source, sizeof info->ceiling_child_source,
                 "child replica 0 vs child replica 1 (%s vs %s)", rc_paths[0], rc_paths[1]);
    else
        snprintf(info->ceiling_child_source, sizeof info->ceiling_child_source, "none (no replicas)");
    if (np <= 1 && nc <= 1) {
        char r1[1100];
        if (ml_sae_replica_path(parent->sae_path, 1, r1, sizeof r1) != ML_OK) ml_error_clear();
        ml_warn("compare: %s: neither %s nor %s has replicas (e.g. %s, attribute `replicas`): no seed ceiling, the "
                "calibration's ceiling and normalised persistence are NaN; train SAEs with --replicas 2 or more",
                edge, parent->sae_path, child->sae_path, r1);
    }
    /* 3. masks, bootstrap */
    c.mask_p = ml_malloc((size_t)(T * Fp));
    c.mask_c = ml_malloc((size_t)(T * Fc));
    ML_CHECK_GOTO(ml_agree(comm, c.mask_p && c.mask_c ? ML_OK : ML_ERR_NOMEM), done);
    ml_edge_mask(o, Fp, mainr->activation.a_dead, np, c.rp ? c.rp->stab : NULL, c.mask_p);
    ml_edge_mask(o, Fc, mainr->activation.b_dead, nc, c.rc ? c.rc->stab : NULL, c.mask_c);
    ml_calib_config kc = {.n_tau = T,
                          .tau = o->tau_grid,
                          .n_boot = o->bootstrap,
                          .seed = o->seed,
                          .main = c.bs_main,
                          .floor = c.bs_floor,
                          .ceiling = np > 1 ? c.rp->bs : nc > 1 ? c.rc->bs : NULL,
                          .ceiling_is_child = np <= 1,
                          .ceiling_child = nc > 1 ? c.rc->bs : NULL,
                          .mask_parent = c.mask_p,
                          .mask_child = c.mask_c};
    info->n_blocks = ml_bstats_blocks(c.bs_main);
    ml_prof_begin("controls_bootstrap");
    rc = ml_calib_run(comm, &kc, &c.cr);
    ml_prof_end("controls_bootstrap", 0, 0);
    if (rc != ML_OK) goto done;
    ML_CHECK_GOTO(ml_ctl_write_calibration(h, edge, o, &c.cr, info), done);
    ML_CHECK_GOTO(ml_ctl_write_scores(h, edge, mainr, np > 1 ? &c.rp->res : NULL, nc > 1 ? &c.rc->res : NULL,
                                      &c.floor),
                  done);
    int tb = 0; /* the grid point nearest the classification's tau */
    for (int t = 1; t < T; t++)
        if (fabs(o->tau_grid[t] - o->tau) < fabs(o->tau_grid[tb] - o->tau)) tb = t;
    const double *v = c.cr.v;
#define ML_Q(q, k) v[((q) * 3 + (k)) * T + tb]
    ml_info("compare: %s calibrated at tau %.2f (%lld blocks of %lld rows, %lld resamples): persist %.3f [%.3f, %.3f], "
            "ceiling %.3f [%.3f, %.3f], floor %.3f [%.3f, %.3f], normalised %.3f [%.3f, %.3f]",
            edge, o->tau_grid[tb], (long long)info->n_blocks, (long long)o->block_tokens, (long long)o->bootstrap,
            ML_Q(ML_CALIB_PERSIST, 0), ML_Q(ML_CALIB_PERSIST, 1), ML_Q(ML_CALIB_PERSIST, 2), ML_Q(ML_CALIB_CEILING, 0),
            ML_Q(ML_CALIB_CEILING, 1), ML_Q(ML_CALIB_CEILING, 2), ML_Q(ML_CALIB_FLOOR, 0), ML_Q(ML_CALIB_FLOOR, 1),
            ML_Q(ML_CALIB_FLOOR, 2), ML_Q(ML_CALIB_NORMALISED, 0), ML_Q(ML_CALIB_NORMALISED, 1),
            ML_Q(ML_CALIB_NORMALISED, 2));
    double gap = ML_Q(ML_CALIB_CEILING, 0) - ML_Q(ML_CALIB_FLOOR, 0);
    if (!isnan(gap) && gap < 0.05)
        ml_warn("compare: %s: at tau %.2f the seed ceiling (%.3f) is within %.3f of the floor (%.3f): even replicas of "
                "one SAE rarely match at this tau, so the persist share cannot be told from seed noise and the "
                "normalised persistence is %s; try a lower tau or larger/longer-trained SAEs",
                edge, o->tau_grid[tb], ML_Q(ML_CALIB_CEILING, 0), gap, ML_Q(ML_CALIB_FLOOR, 0),
                gap > 0 ? "ill-conditioned" : "undefined");
#undef ML_Q
done:
    ml_edge_ctl_free(&c);
    return rc;
}

int ml_compare_edge(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_model *parent,
                    const ml_compare_model *child, ml_h5 *h, const char *edge, ml_compare_edge_result *out) {
    memset(out, 0, sizeof *out);
    out->dec_mean_max_a = out->dec_mean_max_b = NAN;
    out->logit_mean_max_a = out->logit_mean_max_b = NAN;
    out->flow_best_support = NAN;
    int rc = ML_OK;
    ml_sae *sa = NULL, *sb = NULL;
    ml_code_cache cp, cc;
    memset(&cp, 0, sizeof cp);
    memset(&cc, 0, sizeof cc);
    ml_flow *flow = NULL;
    ml_compare_result res;
    memset(&res, 0, sizeof res);
    ml_logit_side la, lb;
    memset(&la, 0, sizeof la);
    memset(&lb, 0, sizeof lb);
    float *support = NULL;
    int64_t *active = NULL;
    char g[600], mname[700];
    ml_rep_path *rp = NULL, *rcp = NULL;
    ml_ctl_info *info = ml_calloc(1, sizeof *info);
    rp = ml_calloc(ML_COMPARE_MAX_REPLICAS, sizeof *rp);
    rcp = ml_calloc(ML_COMPARE_MAX_REPLICAS, sizeof *rcp);
    ML_CHECK_GOTO(ml_agree(comm, info && rp && rcp ? ML_OK : ML_ERR_NOMEM), done);

    ML_CHECK_GOTO(ml_load_sae(comm, parent->sae_path, &sa), done);
    ML_CHECK_GOTO(ml_load_sae(comm, child->sae_path, &sb), done);
    int64_t n_tok = 0, vocab = 0;
    ML_CHECK_GOTO(ml_acts_same_tokens(comm, parent->acts_path, child->acts_path, o->chunk_rows, &n_tok, &vocab), done);
    int64_t chunk = o->chunk_rows > 0 ? o->chunk_rows : 16384;
    int64_t window = o->flow_window > 0 ? o->flow_window : 64;
    /* replicas and rows: every SAE whose codes the edge uses must not have trained on them */
    ml_sae_meta mp, mc;
    ML_CHECK_GOTO(ml_sae_meta_read(comm, parent->sae_path, &mp), done);
    ML_CHECK_GOTO(ml_sae_meta_read(comm, child->sae_path, &mc), done);
    int want = !o->calibrate ? 1 : o->stable_min > 0 ? ML_COMPARE_MAX_REPLICAS : 2, np = 1, nc = 1;
    ML_CHECK_GOTO(ml_edge_replicas(comm, parent->sae_path, &mp, want, rp, &np, &info->replicas_parent), done);
    ML_CHECK_GOTO(ml_edge_replicas(comm, child->sae_path, &mc, want, rcp, &nc, &info->replicas_child), done);
    {
        const char *paths[2 * ML_COMPARE_MAX_REPLICAS];
        ml_sae_meta metas[2 * ML_COMPARE_MAX_REPLICAS];
        int n = 0;
        for (int s = 0; s < 2; s++)
            for (int r = 0; r < (s ? nc : np); r++) {
                paths[n] = s ? rcp[r] : rp[r];
                if (r == 0) metas[n] = s ? mc : mp;
                else ML_CHECK_GOTO(ml_sae_meta_read(comm, paths[n], &metas[n]), done);
                n++;
            }
        int64_t r0 = 0, r1 = n_tok;
        ML_CHECK_GOTO(ml_agree(comm, ml_heldout_rows("compare", n, paths, metas, n_tok, o->allow_train_rows, &r0, &r1,
                                                     &info->rows_heldout, info->rows_note, sizeof info->rows_note)),
                      done);
        if (o->max_tokens > 0 && r1 - r0 > o->max_tokens) r1 = r0 + o->max_tokens;
        info->rows_start = out->rows_start = r0;
        info->rows_end = out->rows_end = r1;
        if (info->rows_heldout) ml_info("compare: %s: rows [%lld, %lld); %s", edge, (long long)r0, (long long)r1, info->rows_note);
        else ml_warn("compare: %s: rows [%lld, %lld); %s", edge, (long long)r0, (long long)r1, info->rows_note);
    }
    ML_CHECK_GOTO(ml_code_cache_build(comm, sa, parent->sae_path, parent->acts_path, o->hook, out->rows_start,
                                      out->rows_end - out->rows_start, chunk, &cp),
                  done);
    ML_CHECK_GOTO(ml_code_cache_build(comm, sb, child->sae_path, child->acts_path, o->hook, out->rows_start,
                                      out->rows_end - out->rows_start, chunk, &cc),
                  done);
    if (o->flow) {
        ml_flow_config fc = {.n_a = sa->d_sae, .n_b = sb->d_sae, .mad_threshold = o->flow_mad,
                             .consistency = o->flow_consistency, .min_samples = 0, .tie_tol = o->flow_tie_tol};
        ML_CHECK_GOTO(ml_flow_create(comm, &fc, &flow), done);
        ML_CHECK_GOTO(ml_flow_feed_cache(comm, flow, &cp, &cc, window), done);
    }
    ml_compare_config cfg = {.max_rows = chunk,
                             .path = o->path,
                             .vocab = o->token_profile ? vocab : 0,
                             .match_floor = o->match_floor,
                             .d_in = sa->d_in,
                             .n_cand = o->calibrate ? (o->candidates > 0 ? o->candidates : 4) : 0};
    if (o->decoder && sa->d_in == sb->d_in) {
        cfg.dec_a = sa->W_dec;
        cfg.dec_b = sb->W_dec;
    } else if (o->decoder) {
        ml_warn("compare: %s: decoder cosine skipped (d_in %d vs %d)", edge, sa->d_in, sb->d_in);
    }
    if (o->logit) {
        ML_CHECK_GOTO(ml_agree(comm, ml_logit_side_open(comm, sa, parent->sae_path, parent->model_path, o->hook, NULL,
                                                        &la)),
                      done);
        if (la.ok)
            ML_CHECK_GOTO(ml_agree(comm, ml_logit_side_open(comm, sb, child->sae_path, child->model_path, o->hook, &la,
                                                            &lb)),
                          done);
        if (la.ok && lb.ok) {
            cfg.logit_a = &la.map;
            cfg.logit_b = &lb.map;
            cfg.logit_dec_a = la.dec;
            cfg.logit_dec_b = lb.dec;
            cfg.logit_d_a = la.d;
            cfg.logit_d_b = lb.d;
            cfg.logit_center = o->logit_center;
        }
    }
    if (o->full_matrix) {
        snprintf(g, sizeof g, "/edges/%s/activation", edge);
        ML_CHECK_GOTO(ml_h5_mkgroup(h, g), done);
        snprintf(mname, sizeof mname, "%s/r", g);
        cfg.matrix_file = h;
        cfg.matrix_name = mname;
    }
    ml_prof_begin("compare_edge");
    {
        ml_cache_stream sa_, sb_;
        ml_cache_stream_init(&sa_, &cp, 0, 0);
        ml_cache_stream_init(&sb_, &cc, 0, 0);
        rc = ml_compare_run(comm, &cfg, &sa_.stream, &sb_.stream, &res);
    }
    ml_prof_end("compare_edge", 0, 0);
    if (rc != ML_OK) goto done;
    ML_CHECK_GOTO(ml_tracking_write_compare(h, edge, parent->name, child->name, o->tau, &res, &out->track), done);
    snprintf(g, sizeof g, "/edges/%s", edge);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "parent_sae", parent->sae_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "child_sae", child->sae_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "parent_acts", parent->acts_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "child_acts", child->acts_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "rows_start", out->rows_start), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "rows_end", out->rows_end), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "rows_heldout", info->rows_heldout), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "rows_note", info->rows_note), done);
    if (res.has_logit) {
        snprintf(g, sizeof g, "/edges/%s/logit_cos", edge);
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "model_a", la.path), done);
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "model_b", lb.path), done);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "center", o->logit_center), done);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "down_proj_a", la.map.down != NULL), done);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "down_proj_b", lb.map.down != NULL), done);
        out->logit_mean_max_a = res.logit.a_mean;
        out->logit_mean_max_b = res.logit.b_mean;
    }
    out->n_tokens = res.n_tokens;
    if (res.has_decoder) {
        out->dec_mean_max_a = res.decoder.a_mean;
        out->dec_mean_max_b = res.decoder.b_mean;
    }
    if (flow) {
        out->flow_partner = ml_malloc(sizeof(int32_t) * (size_t)sa->d_sae);
        support = ml_malloc(sizeof(float) * (size_t)sa->d_sae);
        active = ml_malloc(sizeof(int64_t) * (size_t)sa->d_sae);
        rc = out->flow_partner && support && active ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        ML_CHECK_GOTO(ml_flow_result(flow, out->flow_partner, support, active), done);
        int64_t tied = ml_flow_tied(flow);
        if (MPI_Allreduce(MPI_IN_PLACE, &tied, 1, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
            ML_FAIL_GOTO(done, ML_ERR_MPI, "compare: MPI_Allreduce of the flow's tie count failed");
        ML_CHECK_GOTO(ml_write_flow(h, edge, o, sa->d_sae, out->flow_partner, support, active, tied), done);
        out->flow_best_support = 0;
        for (int64_t i = 0; i < sa->d_sae; i++)
            if (support[i] > out->flow_best_support) out->flow_best_support = support[i];
        ml_info("compare: %s flow: best support %.3f (threshold %.2f), %lld sample matches decided among tied "
                "candidates (tolerance %g, lowest index wins)",
                edge, out->flow_best_support, o->flow_consistency > 0 ? o->flow_consistency : 0.8, (long long)tied,
                o->flow_tie_tol > 0 ? o->flow_tie_tol : 1e-6);
    }
    const ml_track_edge *e = &out->track;
    ml_info("compare: %s (%s -> %s, %lld tokens, rows [%lld, %lld)): parent %lld persist / %lld disappear / %lld dead, "
            "child %lld persist / %lld emerge / %lld dead (tau %.2f, raw: not calibrated); decoder mean-max %.3f, logit "
            "mean-max %.3f",
            edge, parent->name, child->name, (long long)res.n_tokens, (long long)out->rows_start,
            (long long)out->rows_end, (long long)e->counts[ML_TRACK_PARENT_PERSIST],
            (long long)e->counts[ML_TRACK_PARENT_DISAPPEAR], (long long)e->counts[ML_TRACK_PARENT_DEAD],
            (long long)e->counts[ML_TRACK_CHILD_PERSIST], (long long)e->counts[ML_TRACK_CHILD_EMERGE],
            (long long)e->counts[ML_TRACK_CHILD_DEAD], o->tau, out->dec_mean_max_a, out->logit_mean_max_a);
    if (o->calibrate) {
        ml_prof_begin("compare_controls");
        rc = ml_edge_calibrate(comm, o, parent, child, h, edge, sa, sb, &cp, &cc, &cfg, &la, &lb, np, rp, nc, rcp,
                               out->rows_start, chunk, &res, info);
        ml_prof_end("compare_controls", 0, 0);
        if (rc != ML_OK) goto done;
    }
done:
    if (rc != ML_OK) ml_compare_edge_result_free(out);
    ml_compare_result_free(&res);
    ml_free(support);
    ml_free(active);
    ml_free(info);
    ml_free(rp);
    ml_free(rcp);
    ml_flow_destroy(&flow);
    ml_code_cache_free(&cc);
    ml_code_cache_free(&cp);
    ml_logit_side_free(&lb);
    ml_logit_side_free(&la);
    ml_sae_destroy(&sb);
    ml_sae_destroy(&sa);
    return rc;
}
