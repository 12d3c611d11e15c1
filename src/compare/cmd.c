/* `mergelens compare` (one pair of SAEs) and `mergelens track` (every edge of
 * a lineage graph, a summary table and multi-model feature-flow traces). */
#include <stdlib.h>
#include <string.h>

#include "mergelens/compare.h"
#include "mergelens/config.h"
#include "mergelens/io.h"

#define ML_TRACK_MAX_MODELS 32
#define ML_TRACK_MAX_EDGES 128

static const char ml_compare_usage[] =
    "usage: mergelens compare --a SAE_A.h5 --acts-a ACTS_A.h5 --b SAE_B.h5 --acts-b ACTS_B.h5 --out tracking/A__B.h5\n\n"
    "Run SAE A on model A's activations and SAE B on model B's activations over the same token positions\n"
    "(identical /tokens), and compare the features: Pearson correlation (best partners both ways, optional\n"
    "full matrix), one-to-one matching, token-profile correlation, decoder cosine, and the persist /\n"
    "disappear / emerge / dead classification of the edge A (parent) -> B (child).\n";

static const char ml_track_usage[] =
    "usage: mergelens track --edges base:lua,base:stories,lua:merge,stories:merge,base:merge\n"
    "         --saes base=saes/base.h5,... --acts base=acts/base.h5,... --out tracking/summary.h5\n\n"
    "Compare every lineage edge parent:child, write one /edges/<parent>__<child> group per edge, the\n"
    "summary table (/summary) and the feature-flow traces along every chain of two or more edges (/traces).\n";

/* options shared by both commands */
#define ML_COMPARE_ENGINE_OPTS                                                                                         \
    {"tau", ML_OPT_FLOAT, "0.8", 0.0, 1.0, NULL, "persist threshold on the best correlation"},                         \
        {"chunk_rows", ML_OPT_INT, "16384", 1, 1 << 26, NULL, "token rows per chunk (all ranks together)"},            \
        {"max_tokens", ML_OPT_INT, "0", 0, 1e15, NULL, "use only the first rows (0: all)"},                            \
        {"path", ML_OPT_CHOICE, "auto", 0, -1, "auto|dense|sparse",                                                    \
         "correlation kernel: by measured density (auto), dense sgemm or sparse"},                                     \
        {"hook", ML_OPT_STRING, "", 0, -1, NULL, "activation hook (default: each SAE's hook_name)"},                   \
        {"full_matrix", ML_OPT_BOOL, "false", 0, -1, NULL, "also write the full F_A x F_B correlation matrix"},        \
        {"token_profile", ML_OPT_BOOL, "true", 0, -1, NULL, "token-profile correlation (mean activation per token id)"}, \
        {"decoder", ML_OPT_BOOL, "true", 0, -1, NULL, "decoder-direction cosine"},                                     \
        {"match_floor", ML_OPT_FLOAT, "0.2", -1, 2, NULL, "one-to-one matching on pairs with r >= floor (> 1: skip)"}, \
        {"logit", ML_OPT_BOOL, "true", 0, -1, NULL,                                                                    \
         "logit-weight cosine (decoder rows through each model's down_proj, final norm weight and lm_head)"},          \
        {"logit_center", ML_OPT_BOOL, "false", 0, -1, NULL, "logit cosine: centre the logit vectors over the vocabulary"}, \
        {"calibrate", ML_OPT_BOOL, "true", 0, -1, NULL,                                                                \
         "controls: seed ceiling (SAE replicas), null floor, bootstrap intervals (/edges/<edge>/calibration)"},       \
        {"tau_grid", ML_OPT_STRING, "0.5,0.6,0.7,0.8,0.9", 0, -1, NULL, "tau values of the calibrated shares"},        \
        {"bootstrap", ML_OPT_INT, "200", 1, 100000, NULL, "bootstrap resamples"},                                      \
        {"block_tokens", ML_OPT_INT, "256", 1, 1 << 30, NULL, "contiguous token rows per bootstrap block"},            \
        {"seed", ML_OPT_INT, "1", 0, 1e15, NULL, "seed of the bootstrap, the floor's shift and rotation"},             \
        {"candidates", ML_OPT_INT, "4", 1, 64, NULL, "best partners per feature kept for the bootstrap"},              \
        {"stable_min", ML_OPT_INT, "0", 0, ML_COMPARE_MAX_REPLICAS, NULL,                                              \
         "track only features found at tau in at least this many replicas of their model (0: all live features)"},    \
        {"allow_train_rows", ML_OPT_BOOL, "false", 0, -1, NULL,                                                        \
         "use every row when no row is held out by every SAE (default: refuse)"}

static const ml_option_spec ml_compare_opts_spec[] = {
    {"a", ML_OPT_STRING, NULL, 0, -1, NULL, "SAE file of model A (parent)"},
    {"acts_a", ML_OPT_STRING, NULL, 0, -1, NULL, "activations file of model A"},
    {"b", ML_OPT_STRING, NULL, 0, -1, NULL, "SAE file of model B (child)"},
    {"acts_b", ML_OPT_STRING, NULL, 0, -1, NULL, "activations file of model B"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "tracking file to write (tracking/A__B.h5)"},
    {"name_a", ML_OPT_STRING, "", 0, -1, NULL, "name of model A (default: SAE file name without .h5)"},
    {"name_b", ML_OPT_STRING, "", 0, -1, NULL, "name of model B"},
    {"edge", ML_OPT_STRING, "", 0, -1, NULL, "edge group name (default: <name_a>__<name_b>)"},
    {"model_a", ML_OPT_STRING, "", 0, -1, NULL, "model checkpoint of A for the logit cosine (default: SAE A's `model`)"},
    {"model_b", ML_OPT_STRING, "", 0, -1, NULL, "model checkpoint of B (default: SAE B's `model`)"},
    ML_COMPARE_ENGINE_OPTS,
    ML_OPT_END,
};

static const ml_option_spec ml_track_opts_spec[] = {
    {"edges", ML_OPT_STRING, NULL, 0, -1, NULL, "lineage edges parent:child, comma-separated"},
    {"saes", ML_OPT_STRING, NULL, 0, -1, NULL, "SAE file per model: name=path,..."},
    {"acts", ML_OPT_STRING, NULL, 0, -1, NULL, "activations file per model: name=path,..."},
    {"models", ML_OPT_STRING, "", 0, -1, NULL, "model checkpoints for the logit cosine: name=path,... (default: each SAE's `model`)"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "tracking file to write (tracking/summary.h5)"},
    {"flow", ML_OPT_BOOL, "true", 0, -1, NULL, "feature-flow maps per edge and traces along chains"},
    {"flow_window", ML_OPT_INT, "64", 1, 1 << 20, NULL, "token rows per flow sample"},
    {"flow_mad", ML_OPT_FLOAT, "0.05", 0, 2, NULL, "flow: largest mean absolute difference of a match"},
    {"flow_consistency", ML_OPT_FLOAT, "0.8", 0, 1, NULL, "flow: share of samples the partner must win (support)"},
    {"flow_tie_tol", ML_OPT_FLOAT, "1e-6", 0, 1, NULL,
     "flow: candidates within this mean absolute difference of the best are tied (lowest index wins)"},
    ML_COMPARE_ENGINE_OPTS,
    ML_OPT_END,
};

static int ml_engine_opts(const ml_options *o, ml_compare_opts *c) {
    ml_compare_opts_default(c);
    c->calibrate = ml_opt_bool(o, "calibrate");
    c->bootstrap = ml_opt_int(o, "bootstrap");
    c->block_tokens = ml_opt_int(o, "block_tokens");
    c->seed = (uint64_t)ml_opt_int(o, "seed");
    c->candidates = (int)ml_opt_int(o, "candidates");
    c->stable_min = (int)ml_opt_int(o, "stable_min");
    c->allow_train_rows = ml_opt_bool(o, "allow_train_rows");
    const char *grid = ml_opt_str(o, "tau_grid");
    c->n_tau = 0;
    for (const char *p = grid; *p;) {
        char *end = NULL;
        double v = strtod(p, &end);
        if (end == p || !(v > 0 && v <= 1) || c->n_tau == 32)
            return ML_FAIL(ML_ERR_ARG, "--tau_grid '%s': expected up to 32 comma-separated values in (0, 1]", grid);
        c->tau_grid[c->n_tau++] = v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    if (c->n_tau == 0) return ML_FAIL(ML_ERR_ARG, "--tau_grid is empty");
    c->tau = ml_opt_float(o, "tau");
    c->chunk_rows = ml_opt_int(o, "chunk_rows");
    c->max_tokens = ml_opt_int(o, "max_tokens");
    const char *p = ml_opt_str(o, "path");
    c->path = !strcmp(p, "dense") ? ML_CORR_DENSE : !strcmp(p, "sparse") ? ML_CORR_SPARSE : ML_CORR_AUTO;
    c->hook = ml_opt_str(o, "hook");
    c->full_matrix = ml_opt_bool(o, "full_matrix");
    c->token_profile = ml_opt_bool(o, "token_profile");
    c->decoder = ml_opt_bool(o, "decoder");
    c->match_floor = ml_opt_float(o, "match_floor");
    c->logit = ml_opt_bool(o, "logit");
    c->logit_center = ml_opt_bool(o, "logit_center");
    return ML_OK;
}

/* "saes/base.h5" -> "base" */
static void ml_stem(const char *path, char *buf, size_t cap) {
    const char *s = strrchr(path, '/');
    s = s ? s + 1 : path;
    size_t n = strlen(s);
    if (n > 3 && !strcmp(s + n - 3, ".h5")) n -= 3;
    snprintf(buf, cap, "%.*s", (int)n, s);
}

int ml_cmd_compare(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0;
    ml_options *o = NULL;
    ml_h5 *h = NULL;
    char *json = NULL;
    ml_compare_edge_result er;
    memset(&er, 0, sizeof er);
    ML_CHECK_GOTO(ml_options_parse_command(comm, "compare", ml_compare_usage, ml_compare_opts_spec, argc, argv, &o,
                                           NULL, NULL, &help),
                  done);
    if (help) goto done;
    ml_compare_opts c;
    ML_CHECK_GOTO(ml_engine_opts(o, &c), done);
    char na[256], nb[256], edge[600];
    const char *pa = ml_opt_str(o, "a"), *pb = ml_opt_str(o, "b");
    if (ml_opt_str(o, "name_a")[0]) snprintf(na, sizeof na, "%s", ml_opt_str(o, "name_a"));
    else ml_stem(pa, na, sizeof na);
    if (ml_opt_str(o, "name_b")[0]) snprintf(nb, sizeof nb, "%s", ml_opt_str(o, "name_b"));
    else ml_stem(pb, nb, sizeof nb);
    if (ml_opt_str(o, "edge")[0]) snprintf(edge, sizeof edge, "%s", ml_opt_str(o, "edge"));
    else snprintf(edge, sizeof edge, "%s__%s", na, nb);
    ml_compare_model ma = {na, pa, ml_opt_str(o, "acts_a"), ml_opt_str(o, "model_a"), NULL},
                     mb = {nb, pb, ml_opt_str(o, "acts_b"), ml_opt_str(o, "model_b"), NULL};
    const char *out = ml_opt_str(o, "out");
    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_tracking_create(comm, out, json, c.tau, &h), done);
    ML_CHECK_GOTO(ml_compare_edge(comm, &c, &ma, &mb, h, edge, &er), done);
    const ml_track_edge *e = &er.track;
    ML_CHECK_GOTO(ml_tracking_write_summary(h, 1, (const char *const[]){edge}, (const ml_track_edge *const[]){e}), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("compare: wrote %s", out);
done:
    if (h) ml_h5_discard(&h);
    ml_compare_edge_result_free(&er);
    ml_free(json);
    ml_options_destroy(&o);
    return rc;
}

/* ---- track ---------------------------------------------------------------------------------- */
typedef struct {
    char *buf;                 /* owned copy of the option text */
    int n;
    char *key[ML_TRACK_MAX_EDGES], *val[ML_TRACK_MAX_EDGES];
} ml_kv_list;

/* "a=x,b=y" (sep '=') or "a:b,c:d" (sep ':') */
static int ml_kv_parse(const char *opt, const char *text, char sep, ml_kv_list *l) {
    memset(l, 0, sizeof *l);
    l->buf = ml_strdup(text);
    if (!l->buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (char *save = NULL, *tok = strtok_r(l->buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *s = strchr(tok, sep);
        if (!s || s == tok || !s[1])
            return ML_FAIL(ML_ERR_ARG, "track: --%s: '%s' is not of the form %s", opt, tok,
                           sep == ':' ? "parent:child" : "name=path");
        if (l->n == ML_TRACK_MAX_EDGES) return ML_FAIL(ML_ERR_ARG, "track: --%s: at most %d entries", opt, ML_TRACK_MAX_EDGES);
        *s = 0;
        l->key[l->n] = tok;
        l->val[l->n++] = s + 1;
    }
    if (l->n == 0) return ML_FAIL(ML_ERR_ARG, "track: --%s is empty", opt);
    return ML_OK;
}

static const char *ml_kv_get(const ml_kv_list *l, const char *key) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->key[i], key)) return l->val[i];
    return NULL;
}

typedef struct {
    int n_models, n_edges;
    const char *model[ML_TRACK_MAX_MODELS];
    int64_t n_feat[ML_TRACK_MAX_MODELS];
    int from[ML_TRACK_MAX_EDGES], to[ML_TRACK_MAX_EDGES];
    int32_t *map[ML_TRACK_MAX_EDGES];
    double support[ML_TRACK_MAX_EDGES]; /* best flow support of each edge */
    double consistency;                 /* the support a map needs */
    int path[ML_TRACK_MAX_MODELS];
    ml_replica_cache *ceiling[ML_TRACK_MAX_MODELS]; /* each model's seed ceiling, computed once */
    ml_h5 *h;
} ml_lineage;

static int ml_model_index(ml_lineage *g, const char *name) {
    for (int i = 0; i < g->n_models; i++)
        if (!strcmp(g->model[i], name)) return i;
    if (g->n_models == ML_TRACK_MAX_MODELS) return -1;
    g->model[g->n_models] = name;
    return g->n_models++;
}

/* Write the traces of one chain of models (path[0..len)). */
static int ml_write_chain(ml_lineage *g, int len) {
    const int32_t *maps[ML_TRACK_MAX_MODELS];
    int64_t nf[ML_TRACK_MAX_MODELS];
    const char *names[ML_TRACK_MAX_MODELS];
    char tname[2048] = "", why[2048] = "";
    for (int k = 0; k < len; k++) {
        names[k] = g->model[g->path[k]];
        nf[k] = g->n_feat[g->path[k]];
        snprintf(tname + strlen(tname), sizeof tname - strlen(tname), "%s%s", k ? "__" : "", names[k]);
        if (k + 1 < len)
            for (int e = 0; e < g->n_edges; e++)
                if (g->from[e] == g->path[k] && g->to[e] == g->path[k + 1]) {
                    maps[k] = g->map[e];
                    snprintf(why + strlen(why), sizeof why - strlen(why), "%s%s -> %s %.3f", k ? ", " : "",
                             g->model[g->from[e]], g->model[g->to[e]], g->support[e]);
                }
    }
    int32_t *traces = NULL;
    int64_t nt = 0;
    int rc = ml_agree(ml_h5_comm(g->h), ml_flow_traces(len, nf, maps, &traces, &nt));
    if (rc == ML_OK) rc = ml_tracking_write_traces(g->h, tname, len, names, traces, nt);
    if (rc == ML_OK && nt > 0) ml_info("track: %lld feature-flow traces along %s", (long long)nt, tname);
    if (rc == ML_OK && nt == 0)
        ml_warn("track: 0 feature-flow traces along %s: no feature keeps a partner on every edge; best support per edge "
                "(%s) vs the required %.2f (--flow_consistency)",
                tname, why, g->consistency);
    char tg[2100];
    snprintf(tg, sizeof tg, "/traces/%s", tname);
    if (rc == ML_OK) rc = ml_h5_set_attr_str(g->h, tg, "best_support_per_edge", why);
    if (rc == ML_OK) rc = ml_h5_set_attr_double(g->h, tg, "consistency", g->consistency);
    if (rc == ML_OK) rc = ml_h5_set_attr_int(g->h, tg, "n_traces", nt);
    ml_free(traces);
    return rc;
}

/* Depth-first over the lineage from model m; every maximal chain of >= 3 models is written. */
static int ml_walk(ml_lineage *g, int m, int depth) {
    g->path[depth] = m;
    int more = 0;
    for (int e = 0; e < g->n_edges; e++) {
        if (g->from[e] != m || depth + 1 >= g->n_models) continue;
        int seen = 0;
        for (int k = 0; k <= depth; k++) seen |= g->path[k] == g->to[e];
        if (seen) continue;
        more = 1;
        ML_CHECK(ml_walk(g, g->to[e], depth + 1));
    }
    if (!more && depth >= 2) ML_CHECK(ml_write_chain(g, depth + 1));
    return ML_OK;
}

int ml_cmd_track(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0;
    ml_options *o = NULL;
    ml_h5 *h = NULL;
    char *json = NULL;
    ml_kv_list edges = {0}, saes = {0}, acts = {0}, models = {0};
    ml_lineage g;
    memset(&g, 0, sizeof g);
    ml_compare_edge_result *res = NULL;
    char **enames = NULL;
    ML_CHECK_GOTO(ml_options_parse_command(comm, "track", ml_track_usage, ml_track_opts_spec, argc, argv, &o, NULL,
                                           NULL, &help),
                  done);
    if (help) goto done;
    ml_compare_opts c;
    ML_CHECK_GOTO(ml_engine_opts(o, &c), done);
    c.flow = ml_opt_bool(o, "flow");
    c.flow_window = ml_opt_int(o, "flow_window");
    c.flow_mad = ml_opt_float(o, "flow_mad");
    c.flow_consistency = ml_opt_float(o, "flow_consistency");
    c.flow_tie_tol = ml_opt_float(o, "flow_tie_tol");
    /* every rank parses the same text: failures are the same everywhere */
    ML_CHECK_GOTO(ml_kv_parse("edges", ml_opt_str(o, "edges"), ':', &edges), done);
    ML_CHECK_GOTO(ml_kv_parse("saes", ml_opt_str(o, "saes"), '=', &saes), done);
    ML_CHECK_GOTO(ml_kv_parse("acts", ml_opt_str(o, "acts"), '=', &acts), done);
    if (ml_opt_str(o, "models")[0]) ML_CHECK_GOTO(ml_kv_parse("models", ml_opt_str(o, "models"), '=', &models), done);
    g.n_edges = edges.n;
    for (int e = 0; e < edges.n; e++) {
        for (int s = 0; s < 2; s++) {
            const char *m = s ? edges.val[e] : edges.key[e];
            if (!ml_kv_get(&saes, m)) ML_FAIL_GOTO(done, ML_ERR_ARG, "track: model '%s' of edge %s:%s has no --saes entry", m, edges.key[e], edges.val[e]);
            if (!ml_kv_get(&acts, m)) ML_FAIL_GOTO(done, ML_ERR_ARG, "track: model '%s' of edge %s:%s has no --acts entry", m, edges.key[e], edges.val[e]);
        }
        if (!strcmp(edges.key[e], edges.val[e])) ML_FAIL_GOTO(done, ML_ERR_ARG, "track: edge %s:%s links a model to itself", edges.key[e], edges.val[e]);
        g.from[e] = ml_model_index(&g, edges.key[e]);
        g.to[e] = ml_model_index(&g, edges.val[e]);
        if (g.from[e] < 0 || g.to[e] < 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "track: at most %d models", ML_TRACK_MAX_MODELS);
    }
    res = ml_calloc((size_t)edges.n, sizeof *res);
    enames = ml_calloc((size_t)edges.n, sizeof *enames);
    rc = res && enames ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int e = 0; e < edges.n && rc == ML_OK; e++) {
        enames[e] = ml_malloc(strlen(edges.key[e]) + strlen(edges.val[e]) + 3);
        if (!enames[e]) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        else sprintf(enames[e], "%s__%s", edges.key[e], edges.val[e]);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    const char *out = ml_opt_str(o, "out");
    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_tracking_create(comm, out, json, c.tau, &h), done);
    for (int m = 0; m < g.n_models && rc == ML_OK; m++) rc = ml_replica_cache_create(&g.ceiling[m]);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    for (int e = 0; e < edges.n; e++) {
        ml_compare_model mp = {edges.key[e], ml_kv_get(&saes, edges.key[e]), ml_kv_get(&acts, edges.key[e]),
                               ml_kv_get(&models, edges.key[e]), g.ceiling[g.from[e]]};
        ml_compare_model mc = {edges.val[e], ml_kv_get(&saes, edges.val[e]), ml_kv_get(&acts, edges.val[e]),
                               ml_kv_get(&models, edges.val[e]), g.ceiling[g.to[e]]};
        ML_CHECK_GOTO(ml_compare_edge(comm, &c, &mp, &mc, h, enames[e], &res[e]), done);
        g.n_feat[g.from[e]] = res[e].track.n_parent;
        g.n_feat[g.to[e]] = res[e].track.n_child;
        g.map[e] = res[e].flow_partner;
        g.support[e] = res[e].flow_best_support;
        for (int m = 0; m < g.n_models; m++) { /* a model's ceiling after its last edge: free it */
            int later = 0;
            for (int f = e + 1; f < edges.n; f++) later |= g.from[f] == m || g.to[f] == m;
            if (!later) ml_replica_cache_destroy(&g.ceiling[m]);
        }
    }
    const ml_track_edge *tr[ML_TRACK_MAX_EDGES];
    for (int e = 0; e < edges.n; e++) tr[e] = &res[e].track;
    ML_CHECK_GOTO(ml_tracking_write_summary(h, edges.n, (const char *const *)enames, tr), done);
    if (c.flow) {
        g.h = h;
        g.consistency = c.flow_consistency > 0 ? c.flow_consistency : 0.8;
        for (int m = 0; m < g.n_models; m++) {
            int has_parent = 0;
            for (int e = 0; e < g.n_edges; e++) has_parent |= g.to[e] == m;
            if (!has_parent) ML_CHECK_GOTO(ml_walk(&g, m, 0), done);
        }
    }
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("track: wrote %s (%d edges)", out, edges.n);
done:
    if (h) ml_h5_discard(&h);
    for (int e = 0; res && e < edges.n; e++) ml_compare_edge_result_free(&res[e]);
    for (int m = 0; m < ML_TRACK_MAX_MODELS; m++) ml_replica_cache_destroy(&g.ceiling[m]);
    for (int e = 0; enames && e < edges.n; e++) ml_free(enames[e]);
    ml_free(res);
    ml_free(enames);
    ml_free(edges.buf);
    ml_free(saes.buf);
    ml_free(acts.buf);
    ml_free(models.buf);
    ml_free(json);
    ml_options_destroy(&o);
    return rc;
}
