/* Window plans: which windows of which token stores a capture or an
 * evaluation reads (see include/mergelens/capture.h).
 *
 * Dimension letters: D domains, W windows of the plan, W_d windows available
 * in domain d's split, n_d windows the plan takes from domain d, T context. */
#include <math.h>
#include <string.h>

#include "mergelens/capture.h"
#include "mergelens/data.h"
#include "mergelens/io.h"

typedef struct {
    char *path, *name;
    ml_loader *loader;    /* sequential, global_batch 1, over MPI_COMM_SELF: random access by seek */
    int64_t available;    /* W_d */
    int64_t share;        /* n_d */
    int64_t n_docs;
    int64_t *doc_offsets; /* (n_docs + 1) */
} ml_plan_domain;

struct ml_window_plan {
    int D, T;
    int64_t W;
    ml_plan_domain *dom; /* (D) */
    int32_t *win_dom;    /* (W) domain of window w */
    int64_t *win_idx;    /* (W) window index inside the domain's split */
};

void ml_window_plan_destroy(ml_window_plan **pp) {
    if (!pp || !*pp) return;
    ml_window_plan *p = *pp;
    for (int d = 0; p->dom && d < p->D; d++) {
        ml_loader_destroy(&p->dom[d].loader);
        ml_free(p->dom[d].path);
        ml_free(p->dom[d].name);
        ml_free(p->dom[d].doc_offsets);
    }
    ml_free(p->dom);
    ml_free(p->win_dom);
    ml_free(p->win_idx);
    ml_free(p);
    *pp = NULL;
}

int64_t ml_window_plan_count(const ml_window_plan *p) { return p->W; }
int ml_window_plan_T(const ml_window_plan *p) { return p->T; }
int64_t ml_window_plan_domain_share(const ml_window_plan *p, int d) {
    return d >= 0 && d < p->D ? p->dom[d].share : 0;
}
int64_t ml_window_plan_domain_available(const ml_window_plan *p, int d) {
    return d >= 0 && d < p->D ? p->dom[d].available : 0;
}
const char *ml_window_plan_domain_name(const ml_window_plan *p, int d) {
    return d >= 0 && d < p->D && p->dom[d].name ? p->dom[d].name : "";
}
void ml_window_plan_window(const ml_window_plan *p, int64_t w, int *domain, int64_t *index) {
    if (domain) *domain = p->win_dom[w];
    if (index) *index = p->win_idx[w];
}

/* Read the store's attributes and doc_offsets (collective over comm). */
static int ml_plan_open_store(MPI_Comm comm, const char *path, const char *split, ml_plan_domain *x, int64_t *V) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    char ds[64];
    ML_CHECK(ml_h5_open(comm, path, "mergelens.tokens", 1, 1, &h));
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "vocab_size", V), done);
    if (ml_h5_get_attr_str(h, "/", "domain", &x->name) != ML_OK) {
        ml_error_clear();
        x->name = ml_strdup("");
        if (!x->name) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    }
    snprintf(ds, sizeof ds, "/%s/doc_offsets", split);
    int r = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    if (!ml_h5_exists(h, ds)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: no dataset '%s' (split '%s')", path, ds, split);
    ML_CHECK_GOTO(ml_h5_shape(h, ds, &r, dims, &t), done);
    if (r != 1 || t != ML_I64 || dims[0] < 1)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: '%s' must be a non-empty 1-D int64 dataset", path, ds);
    x->n_docs = (int64_t)dims[0] - 1;
    x->doc_offsets = ml_malloc(sizeof(int64_t) * (size_t)dims[0]);
    if (!x->doc_offsets) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: out of memory for %llu doc offsets", path,
                                      (unsigned long long)dims[0]);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, ds, ML_I64, 1, dims, x->doc_offsets), done);
    /* refuse corrupt offsets (the document search below relies on them):
     * 0 first, non-decreasing, the split's token count last */
    char ts[64];
    hsize_t tdims[ML_H5_MAX_RANK];
    snprintf(ts, sizeof ts, "/%s/tokens", split);
    ML_CHECK_GOTO(ml_h5_shape(h, ts, &r, tdims, &t), done);
    for (int64_t i = 0; i <= x->n_docs; i++) {
        const int64_t prev = i ? x->doc_offsets[i - 1] : 0, want_last = r == 1 ? (int64_t)tdims[0] : -1;
        if (x->doc_offsets[i] < prev || (i == 0 && x->doc_offsets[0] != 0) ||
            (i == x->n_docs && x->doc_offsets[i] != want_last))
            ML_FAIL_GOTO(done, ML_ERR_FORMAT,
                         "%s: dataset '%s' is corrupt: entry %lld is %lld (offsets must rise from 0 to the %lld "
                         "tokens of '%s')",
                         path, ds, (long long)i, (long long)x->doc_offsets[i], (long long)want_last, ts);
    }
done:
    if (rc == ML_OK) return ml_h5_close(&h);
    ml_h5_close(&h);
    return rc;
}

/* n_d by largest remainder of W * weight_d (ties to the lower domain). */
static void ml_plan_shares(ml_window_plan *p, const double *weights, int64_t W) {
    double wsum = 0, frac[ML_CAPTURE_MAX_DOMAINS];
    for (int d = 0; d < p->D; d++) wsum += weights ? weights[d] : 1.0;
    int64_t given = 0;
    for (int d = 0; d < p->D; d++) {
        double exact = (double)W * (weights ? weights[d] : 1.0) / wsum;
        p->dom[d].share = (int64_t)floor(exact);
        frac[d] = exact - (double)p->dom[d].share;
        given += p->dom[d].share;
    }
    for (; given < W; given++) {
        int best = -1;
        for (int d = 0; d < p->D; d++)
            if ((weights ? weights[d] : 1.0) > 0 && (best < 0 || frac[d] > frac[best])) best = d;
        p->dom[best].share++;
        frac[best] = -1;
    }
}

/* Interleave: window i of domain d sits at key (i + 1/2) / n_d; the list is
 * sorted by key (ties to the lower domain). Compared exactly in integers. */
static void ml_plan_interleave(ml_window_plan *p, int64_t **chosen) {
    int64_t next[ML_CAPTURE_MAX_DOMAINS] = {0};
    for (int64_t w = 0; w < p->W; w++) {
        int best = -1;
        for (int d = 0; d < p->D; d++) {
            if (next[d] >= p->dom[d].share) continue;
            /* key_d < key_best  <=>  (2 i_d + 1) n_best < (2 i_best + 1) n_d */
            if (best < 0 || (2 * next[d] + 1) * p->dom[best].share < (2 * next[best] + 1) * p->dom[d].share) best = d;
        }
        p->win_dom[w] = best;
        p->win_idx[w] = chosen[best][next[best]++];
    }
}

/* The n_d windows of domain d: the first ones, or a seeded partial Fisher-Yates draw. */
static int ml_plan_choose(const ml_window_spec *s, int d, const ml_plan_domain *x, int64_t **out) {
    int64_t *idx = NULL;
    const int64_t n = x->share, Wd = x->available;
    ML_ALLOC(idx, s->sequential || n == 0 ? (n > 0 ? n : 1) : Wd);
    if (s->sequential || n == 0) {
        for (int64_t i = 0; i < n; i++) idx[i] = i;
    } else {
        ml_rng rng;
        ml_rng_seed(&rng, s->seed, 0x636170747572ULL + (uint64_t)d); /* "captur" + domain */
        for (int64_t i = 0; i < Wd; i++) idx[i] = i;
        for (int64_t i = 0; i < n; i++) {
            int64_t j = i + (int64_t)ml_rng_below(&rng, (uint64_t)(Wd - i)), t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
        }
    }
    *out = idx;
    return ML_OK;
}

int ml_window_plan_create(MPI_Comm comm, const ml_window_spec *s, int64_t n_windows, int vocab_size,
                          ml_window_plan **out) {
    int rc = ML_OK;
    *out = NULL;
    const char *split = s->split ? s->split : "train";
    if (s->n_domains < 1 || s->n_domains > ML_CAPTURE_MAX_DOMAINS)
        return ML_FAIL(ML_ERR_ARG, "windows: %d domains given (expected 1..%d)", s->n_domains, ML_CAPTURE_MAX_DOMAINS);
    if (strcmp(split, "train") && strcmp(split, "val"))
        return ML_FAIL(ML_ERR_ARG, "windows: split '%s' is not 'train' or 'val'", split);
    if (s->T < 1) return ML_FAIL(ML_ERR_ARG, "windows: context T = %d must be >= 1", s->T);
    if (n_windows < 1) return ML_FAIL(ML_ERR_ARG, "windows: %lld windows requested (must be >= 1)", (long long)n_windows);
    double wsum = 0;
    for (int d = 0; s->weights && d < s->n_domains; d++) {
        if (!(s->weights[d] >= 0) || !isfinite(s->weights[d]))
            return ML_FAIL(ML_ERR_ARG, "windows: weight %g of %s must be finite and >= 0", s->weights[d], s->paths[d]);
        wsum += s->weights[d];
    }
    if (s->weights && !(wsum > 0)) return ML_FAIL(ML_ERR_ARG, "windows: all domain weights are zero");

    ml_window_plan *p = ml_calloc(1, sizeof *p);
    int64_t *chosen[ML_CAPTURE_MAX_DOMAINS] = {0};
    if (!p) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    p->D = s->n_domains;
    p->T = s->T;
    p->W = n_windows;
    p->dom = ml_calloc((size_t)p->D, sizeof *p->dom);
    p->win_dom = ml_malloc(sizeof(int32_t) * (size_t)n_windows);
    p->win_idx = ml_malloc(sizeof(int64_t) * (size_t)n_windows);
    if (!p->dom || !p->win_dom || !p->win_idx)
        ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "windows: out of memory for a plan of %lld windows", (long long)n_windows);
    ml_plan_shares(p, s->weights, n_windows);
    int64_t V0 = 0;
    for (int d = 0; d < p->D; d++) {
        ml_plan_domain *x = &p->dom[d];
        x->path = ml_strdup(s->paths[d]);
        if (!x->path) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
        int64_t V = 0;
        ML_CHECK_GOTO(ml_plan_open_store(comm, x->path, split, x, &V), fail);
        if (vocab_size > 0 && V != vocab_size)
            ML_FAIL_GOTO(fail, ML_ERR_FORMAT,
                         "%s: vocab_size %lld differs from the model's %d (tokenized with another tokenizer?)", x->path,
                         (long long)V, vocab_size);
        if (d == 0) V0 = V;
        else if (V != V0)
            ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: vocab_size %lld differs from %lld of %s (another tokenizer?)",
                         x->path, (long long)V, (long long)V0, s->paths[0]);
        /* a sequential loader over this rank alone: seek(k) + next reads window k */
        ml_loader_config lc = {.n_domains = 1, .paths = (const char *const *)&x->path, .weights = NULL, .split = split,
                               .global_batch = 1, .T = s->T, .seed = 0, .sequential = 1};
        rc = ml_agree(comm, ml_loader_create(MPI_COMM_SELF, &lc, &x->loader));
        if (rc != ML_OK) goto fail;
        x->available = ml_loader_windows_per_epoch(x->loader);
        if (x->share > x->available)
            ML_FAIL_GOTO(fail, ML_ERR_ARG,
                         "%s: split '%s' holds %lld windows of T+1 = %d tokens; the plan needs %lld from it (fewer "
                         "tokens, a shorter context or another weight)",
                         x->path, split, (long long)x->available, s->T + 1, (long long)x->share);
        ML_CHECK_GOTO(ml_plan_choose(s, d, x, &chosen[d]), fail);
    }
    ml_plan_interleave(p, chosen);
    for (int d = 0; d < p->D; d++) ml_free(chosen[d]);
    *out = p;
    return ML_OK;
fail:
    for (int d = 0; d < ML_CAPTURE_MAX_DOMAINS; d++) ml_free(chosen[d]);
    ml_window_plan_destroy(&p);
    return rc;
}

int ml_window_plan_read(ml_window_plan *p, int64_t w, int32_t *tokens, int64_t *doc_ids) {
    if (w < 0 || w >= p->W)
        return ML_FAIL(ML_ERR_ARG, "windows: window %lld outside the plan's %lld", (long long)w, (long long)p->W);
    ml_plan_domain *x = &p->dom[p->win_dom[w]];
    const int64_t k = p->win_idx[w];
    int nrows = 0;
    ML_CHECK(ml_loader_seek(x->loader, k));
    ML_CHECK(ml_loader_next(x->loader, tokens, &nrows, NULL));
    if (nrows != 1)
        return ML_FAIL(ML_ERR_INTERNAL, "%s: window %lld could not be read (%d rows)", x->path, (long long)k, nrows);
    if (!doc_ids) return ML_OK;
    /* document of token k T: the last offset <= it (binary search), then walk forward */
    const int64_t first = k * p->T, *off = x->doc_offsets;
    int64_t lo = 0, hi = x->n_docs; /* off[lo] <= first < off[hi] holds for valid files */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (off[mid] <= first) lo = mid;
        else hi = mid;
    }
    for (int t = 0; t < p->T; t++) {
        while (lo + 1 < x->n_docs && off[lo + 1] <= first + t) lo++;
        doc_ids[t] = lo;
    }
    return ML_OK;
}
