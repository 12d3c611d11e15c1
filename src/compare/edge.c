/* One lineage edge parent -> child: load both SAEs, check the token
 * positions, stream both code sources through ml_compare_run (and the
 * feature flow, fed from the same pass), classify and write /edges/<edge>.
 *
 * Legend: F_A, F_B = features of the parent's and the child's SAE, T =
 * rows of one flow sample.
 */
#include <math.h>
#include <string.h>

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
}

void ml_compare_edge_result_free(ml_compare_edge_result *r) {
    if (!r) return;
    ml_track_edge_free(&r->track);
    ml_free(r->flow_partner);
    memset(r, 0, sizeof *r);
}

typedef struct {
    MPI_Comm comm;
    ml_flow *flow;
    int64_t window;
} ml_flow_feed;

/* Hook on the child's stream: every window of T rows of the chunk is one sample. */
static int ml_flow_feed_chunk(void *ctx, const ml_fcodes *child, const ml_fcodes *parent) {
    ml_flow_feed *f = ctx;
    int rc = ML_OK;
    ml_prof_begin("compare_flow");
    for (int64_t s = 0; s < child->n && rc == ML_OK; s += f->window) {
        int64_t t = child->n - s < f->window ? child->n - s : f->window;
        ml_fcodes a = *parent, b = *child;
        a.n = b.n = t;
        a.row_ptr = parent->row_ptr + s;
        b.row_ptr = child->row_ptr + s;
        rc = ml_flow_add_sample(f->flow, &a, &b);
    }
    ml_prof_end("compare_flow", 0, 0);
    return ml_agree(f->comm, rc);
}

static int ml_load_sae(MPI_Comm comm, const char *path, ml_sae **out) {
    int rc = ml_sae_load(path, out);
    return ml_agree(comm, rc);
}

/* /edges/<edge>/flow: partner [F_A] i32, support [F_A] f32, active [F_A] i64 */
static int ml_write_flow(ml_h5 *h, const char *edge, const ml_compare_opts *o, int64_t n_a, const int32_t *partner,
                         const float *support, const int64_t *active) {
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
    return ML_OK;
}

int ml_compare_edge(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_model *parent,
                    const ml_compare_model *child, ml_h5 *h, const char *edge, ml_compare_edge_result *out) {
    memset(out, 0, sizeof *out);
    out->dec_mean_max_a = out->dec_mean_max_b = NAN;
    out->logit_mean_max_a = out->logit_mean_max_b = NAN;
    int rc = ML_OK;
    ml_sae *sa = NULL, *sb = NULL;
    ml_sae_codes *ca = NULL, *cb = NULL;
    ml_flow *flow = NULL;
    ml_compare_result res;
    memset(&res, 0, sizeof res);
    ml_logit_side la, lb;
    memset(&la, 0, sizeof la);
    memset(&lb, 0, sizeof lb);
    float *support = NULL;
    int64_t *active = NULL;
    char g[600], mname[700];

    ML_CHECK_GOTO(ml_load_sae(comm, parent->sae_path, &sa), done);
    ML_CHECK_GOTO(ml_load_sae(comm, child->sae_path, &sb), done);
    int64_t n_tok = 0, vocab = 0;
    ML_CHECK_GOTO(ml_acts_same_tokens(comm, parent->acts_path, child->acts_path, o->chunk_rows, &n_tok, &vocab), done);
    int64_t chunk = o->chunk_rows > 0 ? o->chunk_rows : 16384;
    int64_t window = o->flow_window > 0 ? o->flow_window : 64;
    if (o->flow && chunk >= window) chunk -= chunk % window; /* flow samples never straddle chunks */
    ML_CHECK_GOTO(ml_sae_codes_open(comm, sa, parent->sae_path, parent->acts_path, o->hook, o->max_tokens, chunk, &ca),
                  done);
    ML_CHECK_GOTO(ml_sae_codes_open(comm, sb, child->sae_path, child->acts_path, o->hook, o->max_tokens, chunk, &cb),
                  done);
    ml_flow_feed feed = {comm, NULL, window};
    if (o->flow) {
        ml_flow_config fc = {.n_a = sa->d_sae, .n_b = sb->d_sae, .mad_threshold = o->flow_mad,
                             .consistency = o->flow_consistency, .min_samples = 0};
        ML_CHECK_GOTO(ml_flow_create(comm, &fc, &flow), done);
        feed.flow = flow;
        ml_sae_codes_set_hook(cb, ca, ml_flow_feed_chunk, &feed);
    }
    ml_compare_config cc = {.max_rows = chunk,
                            .path = o->path,
                            .vocab = o->token_profile ? vocab : 0,
                            .match_floor = o->match_floor,
                            .d_in = sa->d_in};
    if (o->decoder && sa->d_in == sb->d_in) {
        cc.dec_a = sa->W_dec;
        cc.dec_b = sb->W_dec;
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
            cc.logit_a = &la.map;
            cc.logit_b = &lb.map;
            cc.logit_dec_a = la.dec;
            cc.logit_dec_b = lb.dec;
            cc.logit_d_a = la.d;
            cc.logit_d_b = lb.d;
            cc.logit_center = o->logit_center;
        }
    }
    if (o->full_matrix) {
        snprintf(g, sizeof g, "/edges/%s/activation", edge);
        ML_CHECK_GOTO(ml_h5_mkgroup(h, g), done);
        snprintf(mname, sizeof mname, "%s/r", g);
        cc.matrix_file = h;
        cc.matrix_name = mname;
    }
    ml_prof_begin("compare_edge");
    rc = ml_compare_run(comm, &cc, ml_sae_codes_stream(ca), ml_sae_codes_stream(cb), &res);
    ml_prof_end("compare_edge", 0, 0);
    if (rc != ML_OK) goto done;
    ML_CHECK_GOTO(ml_tracking_write_compare(h, edge, parent->name, child->name, o->tau, &res, &out->track), done);
    snprintf(g, sizeof g, "/edges/%s", edge);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "parent_sae", parent->sae_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "child_sae", child->sae_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "parent_acts", parent->acts_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "child_acts", child->acts_path), done);
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
        ML_CHECK_GOTO(ml_write_flow(h, edge, o, sa->d_sae, out->flow_partner, support, active), done);
    }
    const ml_track_edge *e = &out->track;
    ml_info("compare: %s (%s -> %s, %lld tokens): parent %lld persist / %lld disappear / %lld dead, child %lld persist "
            "/ %lld emerge / %lld dead (tau %.2f); decoder mean-max %.3f, logit mean-max %.3f",
            edge, parent->name, child->name, (long long)res.n_tokens, (long long)e->counts[ML_TRACK_PARENT_PERSIST],
            (long long)e->counts[ML_TRACK_PARENT_DISAPPEAR], (long long)e->counts[ML_TRACK_PARENT_DEAD],
            (long long)e->counts[ML_TRACK_CHILD_PERSIST], (long long)e->counts[ML_TRACK_CHILD_EMERGE],
            (long long)e->counts[ML_TRACK_CHILD_DEAD], o->tau, out->dec_mean_max_a, out->logit_mean_max_a);
done:
    if (rc != ML_OK) ml_compare_edge_result_free(out);
    ml_compare_result_free(&res);
    ml_free(support);
    ml_free(active);
    ml_flow_destroy(&flow);
    ml_sae_codes_close(&cb);
    ml_sae_codes_close(&ca);
    ml_logit_side_free(&lb);
    ml_logit_side_free(&la);
    ml_sae_destroy(&sb);
    ml_sae_destroy(&sa);
    return rc;
}
