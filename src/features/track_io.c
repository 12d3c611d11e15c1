/* tracking/<name>.h5 (format mergelens.tracking, version 1) and the
 * chunked full-matrix writer of ml_corr. Layout: docs/modules/features.md.
 *
 * Legend: n_a, n_b = features; na, nb = a rank's block; R = rows per slab.
 */
#include "internal.h"
#include "mergelens/io.h"

#include <string.h>

#define ML_TRACKING_FORMAT "mergelens.tracking"
#define ML_TRACKING_VERSION 1

static const char *const ml_track_count_names =
    "[\"parent_persist\", \"parent_disappear\", \"parent_dead\", \"child_persist\", \"child_emerge\", "
    "\"child_dead\"]";
static const char *const ml_track_share_names =
    "[\"parent_persist\", \"disappear\", \"child_persist\", \"emerge\"]";

int ml_tracking_create(MPI_Comm comm, const char *path, const char *config_json, double tau, ml_h5 **out) {
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_create(comm, path, ML_TRACKING_FORMAT, ML_TRACKING_VERSION, &h));
    int rc = ML_OK;
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", config_json ? config_json : "{}"), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "tau", tau), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "status_codes",
                                     "{\"1\": \"persist\", \"2\": \"disappear\", \"3\": \"emerge\", \"4\": \"dead\"}"),
                  fail);
    *out = h;
    return ML_OK;
fail:
    ml_h5_discard(&h);
    return rc;
}

static int ml_tracking_vec(ml_h5 *h, const char *group, const char *name, ml_dtype type, int64_t n,
                           const void *data) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", group, name);
    hsize_t dims[1] = {(hsize_t)n};
    return ml_h5_write_tensor(h, path, type, 1, dims, data);
}

int ml_tracking_write_edge(ml_h5 *h, const char *name, const char *parent, const char *child, const char *measure,
                           const ml_track_edge *e) {
    char g[512];
    snprintf(g, sizeof g, "/edges/%s", name);
    ML_CHECK(ml_h5_mkgroup(h, g));
    ML_CHECK(ml_h5_set_attr_str(h, g, "parent", parent ? parent : ""));
    ML_CHECK(ml_h5_set_attr_str(h, g, "child", child ? child : ""));
    ML_CHECK(ml_h5_set_attr_str(h, g, "measure", measure ? measure : ""));
    ML_CHECK(ml_h5_set_attr_double(h, g, "tau", e->tau));
    ML_CHECK(ml_h5_set_attr_str(h, g, "count_names", ml_track_count_names));
    ML_CHECK(ml_h5_set_attr_str(h, g, "share_names", ml_track_share_names));
    ML_CHECK(ml_tracking_vec(h, g, "parent_status", ML_U8, e->n_parent, e->parent_status));
    ML_CHECK(ml_tracking_vec(h, g, "parent_partner", ML_I32, e->n_parent, e->parent_partner));
    ML_CHECK(ml_tracking_vec(h, g, "parent_score", ML_F32, e->n_parent, e->parent_score));
    ML_CHECK(ml_tracking_vec(h, g, "child_status", ML_U8, e->n_child, e->child_status));
    ML_CHECK(ml_tracking_vec(h, g, "child_partner", ML_I32, e->n_child, e->child_partner));
    ML_CHECK(ml_tracking_vec(h, g, "child_score", ML_F32, e->n_child, e->child_score));
    ML_CHECK(ml_tracking_vec(h, g, "counts", ML_I64, ML_TRACK_NCOUNTS, e->counts));
    double shares[4] = {e->share_parent_persist, e->share_disappear, e->share_child_persist, e->share_emerge};
    ML_CHECK(ml_tracking_vec(h, g, "shares", ML_F64, 4, shares));
    return ML_OK;
}

int ml_tracking_write_best(ml_h5 *h, const char *group, const ml_best *b) {
    ML_CHECK(ml_h5_mkgroup(h, group));
    ML_CHECK(ml_tracking_vec(h, group, "a_score", ML_F32, b->n_a, b->a_score));
    ML_CHECK(ml_tracking_vec(h, group, "a_partner", ML_I32, b->n_a, b->a_partner));
    ML_CHECK(ml_tracking_vec(h, group, "a_dead", ML_U8, b->n_a, b->a_dead));
    ML_CHECK(ml_tracking_vec(h, group, "b_score", ML_F32, b->n_b, b->b_score));
    ML_CHECK(ml_tracking_vec(h, group, "b_partner", ML_I32, b->n_b, b->b_partner));
    ML_CHECK(ml_tracking_vec(h, group, "b_dead", ML_U8, b->n_b, b->b_dead));
    ML_CHECK(ml_h5_set_attr_double(h, group, "a_mean", b->a_mean));
    ML_CHECK(ml_h5_set_attr_double(h, group, "b_mean", b->b_mean));
    return ML_OK;
}

/* JSON list of strings (no escaping needed for model / edge names; quotes
 * and backslashes are escaped anyway). Caller ml_free()s. */
static int ml_json_list(int n, const char *const *items, char **out) {
    size_t len = 3;
    for (int i = 0; i < n; i++) len += 2 * strlen(items[i]) + 4;
    char *s = ml_malloc(len);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    size_t k = 0;
    s[k++] = '[';
    for (int i = 0; i < n; i++) {
        if (i) s[k++] = ',';
        s[k++] = '"';
        for (const char *c = items[i]; *c; c++) {
            if (*c == '"' || *c == '\\') s[k++] = '\\';
            s[k++] = *c;
        }
        s[k++] = '"';
    }
    s[k++] = ']';
    s[k] = 0;
    *out = s;
    return ML_OK;
}

int ml_tracking_write_summary(ml_h5 *h, int n_edges, const char *const *names, const ml_track_edge *const *edges) {
    if (n_edges < 1) return ML_FAIL(ML_ERR_ARG, "tracking summary: no edges");
    int64_t *counts = ml_malloc(sizeof(int64_t) * (size_t)(n_edges * ML_TRACK_NCOUNTS));
    double *shares = ml_malloc(sizeof(double) * (size_t)(n_edges * 4));
    char *json = NULL;
    int rc = (counts && shares) ? ml_json_list(n_edges, names, &json)
                                : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(ml_h5_comm(h), rc), done);
    for (int e = 0; e < n_edges; e++) {
        memcpy(counts + e * ML_TRACK_NCOUNTS, edges[e]->counts, sizeof(int64_t) * ML_TRACK_NCOUNTS);
        shares[e * 4 + 0] = edges[e]->share_parent_persist;
        shares[e * 4 + 1] = edges[e]->share_disappear;
        shares[e * 4 + 2] = edges[e]->share_child_persist;
        shares[e * 4 + 3] = edges[e]->share_emerge;
    }
    hsize_t dc[2] = {(hsize_t)n_edges, ML_TRACK_NCOUNTS}, ds[2] = {(hsize_t)n_edges, 4};
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "/summary"), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/summary", "edges", json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/summary", "count_names", ml_track_count_names), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/summary", "share_names", ml_track_share_names), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/summary/counts", ML_I64, 2, dc, counts), done);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/summary/shares", ML_F64, 2, ds, shares), done);
done:
    ml_free(counts);
    ml_free(shares);
    ml_free(json);
    return rc;
}

int ml_tracking_write_traces(ml_h5 *h, const char *name, int n_models, const char *const *models,
                             const int32_t *traces, int64_t n_traces) {
    char g[512], path[600];
    snprintf(g, sizeof g, "/traces/%s", name);
    char *json = NULL;
    ML_CHECK(ml_agree(ml_h5_comm(h), ml_json_list(n_models, models, &json)));
    int rc = ML_OK;
    ML_CHECK_GOTO(ml_h5_mkgroup(h, g), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "models", json), done);
    snprintf(path, sizeof path, "%s/features", g);
    hsize_t dims[2] = {(hsize_t)n_traces, (hsize_t)n_models};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, path, ML_I32, 2, dims, traces), done);
done:
    ml_free(json);
    return rc;
}

int ml_corr_write_matrix(ml_corr *c, ml_h5 *h, const char *name, int64_t chunk_rows) {
    const ml_feat_grid *g = ml_feat_corr_grid(c);
    int64_t ld;
    const double *r = ml_corr_r_block(c, &ld);
    ML_CHECK(ml_agree(g->comm, r ? ML_OK : ML_FAIL(ML_ERR_ARG, "ml_corr_write_matrix: call ml_corr_finalize first")));
    int64_t R = chunk_rows > 0 ? chunk_rows : 256;
    hsize_t dims[2] = {(hsize_t)g->n_a, (hsize_t)g->n_b};
    ml_h5_layout layout = {.chunk_rows = (hsize_t)R, .compress = 0, .extendable = 0};
    ML_CHECK(ml_h5_create_dataset(h, name, ML_F32, 2, dims, &layout));
    /* each grid row gathers its blocks slab by slab on its q = 0 rank */
    MPI_Comm row_comm = MPI_COMM_NULL;
    ML_CHECK_MPI(MPI_Comm_split(g->comm, g->p, g->q, &row_comm));
    float *mine = ml_malloc(sizeof(float) * (size_t)(R * g->nb));
    float *gath = g->q == 0 ? ml_malloc(sizeof(float) * (size_t)(R * g->n_b)) : NULL;
    float *slab = g->q == 0 ? ml_malloc(sizeof(float) * (size_t)(R * g->n_b)) : NULL;
    size_t *counts = ml_malloc(sizeof(size_t) * (size_t)g->pc), *displs = ml_malloc(sizeof(size_t) * (size_t)g->pc);
    int rc = (!mine || (g->q == 0 && (!gath || !slab)) || !counts || !displs)
                 ? ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__)
                 : ML_OK;
    ML_CHECK_GOTO(ml_agree(g->comm, rc), done);
    int64_t max_na = 0;
    for (int p = 0; p < g->pr; p++) {
        int64_t m = ml_feat_split(g->n_a, p + 1, g->pr) - ml_feat_split(g->n_a, p, g->pr);
        max_na = m > max_na ? m : max_na;
    }
    for (int64_t s0 = 0; s0 < max_na; s0 += R) {
        int64_t rows = g->na - s0 < R ? g->na - s0 : R;
        if (rows < 0) rows = 0;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < g->nb; j++) mine[i * g->nb + j] = (float)r[(s0 + i) * ld + j];
        for (size_t q = 0, off = 0; q < (size_t)g->pc; q++) {
            int64_t nbq = ml_feat_split(g->n_b, (int)q + 1, g->pc) - ml_feat_split(g->n_b, (int)q, g->pc);
            counts[q] = (size_t)(rows * nbq);
            displs[q] = off;
            off += counts[q];
        }
        if (ml_mpi_gatherv(row_comm, mine, gath, counts, displs, MPI_FLOAT, 0) != ML_OK)
            ML_FAIL_GOTO(done, ML_ERR_MPI, "ml_corr_write_matrix: MPI_Gatherv of a %lld-row slab failed",
                         (long long)rows);
        if (g->q == 0) /* blocks (rows, nb_q) side by side -> full rows (rows, n_b) */
            for (int q = 0; q < g->pc; q++) {
                int64_t bq = ml_feat_split(g->n_b, q, g->pc), nbq = ml_feat_split(g->n_b, q + 1, g->pc) - bq;
                for (int64_t i = 0; i < rows; i++)
                    memcpy(slab + i * g->n_b + bq, gath + displs[q] + i * nbq, sizeof(float) * (size_t)nbq);
            }
        int writer = g->q == 0 && rows > 0;
        ML_CHECK_GOTO(ml_h5_write_rows(h, name, ML_F32, writer ? (hsize_t)(g->a0 + s0) : 0, writer ? (hsize_t)rows : 0,
                                       writer ? slab : mine),
                      done);
    }
done:
    if (row_comm != MPI_COMM_NULL) MPI_Comm_free(&row_comm);
    ml_free(mine);
    ml_free(gath);
    ml_free(slab);
    ml_free(counts);
    ml_free(displs);
    return rc;
}

int ml_tracking_write_compare(ml_h5 *h, const char *edge, const char *parent, const char *child, double tau,
                              const ml_compare_result *r, ml_track_edge *e_out) {
    ml_track_edge e;
    ML_CHECK(ml_agree(ml_h5_comm(h), ml_track_classify(&r->activation, tau, &e)));
    int rc = ML_OK;
    char g[600];
    ML_CHECK_GOTO(ml_tracking_write_edge(h, edge, parent, child, "activation", &e), done);
    snprintf(g, sizeof g, "/edges/%s", edge);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "n_tokens", r->n_tokens), done);
    const struct {
        int has;
        const char *name;
        const ml_best *b;
    } groups[] = {{1, "activation", &r->activation},
                  {r->has_one_to_one, "activation_1to1", &r->one_to_one},
                  {r->has_token_profile, "token_profile", &r->token_profile},
                  {r->has_decoder, "decoder_cos", &r->decoder},
                  {r->has_logit, "logit_cos", &r->logit}};
    for (size_t k = 0; k < sizeof groups / sizeof groups[0]; k++) {
        if (!groups[k].has) continue;
        snprintf(g, sizeof g, "/edges/%s/%s", edge, groups[k].name);
        ML_CHECK_GOTO(ml_tracking_write_best(h, g, groups[k].b), done);
    }
    if (r->has_one_to_one) {
        snprintf(g, sizeof g, "/edges/%s/activation_1to1", edge);
        ML_CHECK_GOTO(ml_h5_set_attr_double(h, g, "match_floor", r->match_floor), done);
    }
    if (r->has_token_profile) {
        snprintf(g, sizeof g, "/edges/%s/token_profile", edge);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, g, "n_common_ids", r->n_common_ids), done);
    }
done:
    if (rc == ML_OK && e_out)
        *e_out = e;
    else
        ml_track_edge_free(&e);
    return rc;
}
