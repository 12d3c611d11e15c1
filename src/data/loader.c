/* Batch loader over token stores (contract: notes HELPER_COMMON.md).
 *
 * A domain split of N tokens holds W = (N - 1) / T windows; window k covers
 * tokens [k T, k T + T + 1), so every token after the first is a target once
 * per epoch. Global slot g = step * G + j (G = global_batch) is assigned a
 * domain by smooth weighted round robin over the mixture weights (exact
 * proportions, deterministic), and the i-th window drawn from domain d is
 * perm_{d,e}[i mod W_d] with e = i / W_d its epoch and perm a seeded
 * Fisher-Yates permutation per (domain, epoch). Rank r of P reads slots
 * [r B, (r+1) B) of each step (B = G / P), one hyperslab per window, so the
 * union over ranks does not depend on P. Sequential mode walks every window
 * of every domain once, in order.
 *
 * Subsets (subset_count n > 1): a domain's W split windows are cut into n
 * contiguous slices, slice i = windows [floor(i W / n), floor((i+1) W / n));
 * the loader then behaves as above over the W_i windows of slice i (the
 * permutations are over slice positions, offset by the slice's first window).
 * Slices hold disjoint windows, so their targets are disjoint token ranges;
 * adjacent slices share one token (the last target of one slice is the first
 * input of the next). n = 1 is the whole split, bit for bit.
 *
 * Dimension letters: G global batch, B rows per rank, T context, D domains. */
#include "internal.h"

#include "mergelens/io.h"

#include <math.h>
#include <string.h>

typedef struct {
    ml_h5 *h;
    ml_dtype type;
    int64_t n_tokens, n_windows; /* n_windows: of the subset */
    int64_t first;               /* first window of the subset in the split */
    double weight;
    int64_t *perm;     /* (W) permutation of the cached epoch */
    int64_t perm_epoch;/* -1 = none */
} ldomain;

struct ml_loader {
    MPI_Comm comm;
    int rank, nranks;
    int D, G, B, T, sequential;
    uint64_t seed;
    char dset[32]; /* "<split>/tokens" */
    int vocab_size;
    ldomain *dom;
    int64_t step;
    double *cur;      /* (D) smooth round-robin credits */
    int64_t *drawn;   /* (D) windows drawn so far */
    int64_t total_windows;
    void *buf;        /* (T+1) file-typed scratch */
};

void ml_loader_destroy(ml_loader **lp) {
    if (!lp || !*lp) return;
    ml_loader *l = *lp;
    for (int d = 0; l->dom && d < l->D; d++) {
        ml_h5_close(&l->dom[d].h);
        ml_free(l->dom[d].perm);
    }
    ml_free(l->dom);
    ml_free(l->cur);
    ml_free(l->drawn);
    ml_free(l->buf);
    ml_free(l);
    *lp = NULL;
}

int ml_loader_create(MPI_Comm comm, const ml_loader_config *cfg, ml_loader **out) {
    int rc = ML_OK;
    ml_loader *l = ml_calloc(1, sizeof *l);
    if (!l) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    l->comm = comm;
    MPI_Comm_rank(comm, &l->rank);
    MPI_Comm_size(comm, &l->nranks);
    l->D = cfg->n_domains;
    l->G = cfg->global_batch;
    l->T = cfg->T;
    l->seed = cfg->seed;
    l->sequential = cfg->sequential;
    const int sub_n = cfg->subset_count > 1 ? cfg->subset_count : 1, sub_i = cfg->subset_index;
    if (cfg->subset_count < 0 || sub_i < 0 || sub_i >= sub_n)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: subset %d/%d must satisfy 0 <= index < count", sub_i,
                     cfg->subset_count);
    if (l->D < 1) ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: no domains given");
    if (l->T < 1) ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: context T = %d must be >= 1", l->T);
    if (l->G < 1 || l->G % l->nranks)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: global_batch %d is not a positive multiple of the %d ranks", l->G,
                     l->nranks);
    l->B = l->G / l->nranks;
    const char *split = cfg->split ? cfg->split : "train";
    if (strcmp(split, "train") && strcmp(split, "val"))
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: split '%s' is not 'train' or 'val'", split);
    snprintf(l->dset, sizeof l->dset, "%s/tokens", split);
    l->dom = ml_calloc((size_t)l->D, sizeof *l->dom);
    l->cur = ml_calloc((size_t)l->D, sizeof *l->cur);
    l->drawn = ml_calloc((size_t)l->D, sizeof *l->drawn);
    l->buf = ml_malloc(((size_t)l->T + 1) * 4);
    if (!l->dom || !l->cur || !l->drawn || !l->buf) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    double wsum = 0;
    for (int d = 0; d < l->D; d++) {
        ldomain *x = &l->dom[d];
        x->perm_epoch = -1;
        ML_CHECK_GOTO(ml_h5_open(comm, cfg->paths[d], "mergelens.tokens", 1, 1, &x->h), fail);
        int r;
        hsize_t dims[ML_H5_MAX_RANK];
        ML_CHECK_GOTO(ml_h5_shape(x->h, l->dset, &r, dims, &x->type), fail);
        if (r != 1 || (x->type != ML_U16 && x->type != ML_U32))
            ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: '%s' must be a 1-D uint16 or uint32 dataset", cfg->paths[d], l->dset);
        int64_t V;
        ML_CHECK_GOTO(ml_h5_get_attr_int(x->h, "/", "vocab_size", &V), fail);
        if (d == 0) l->vocab_size = (int)V;
        else if (V != l->vocab_size)
            ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: vocab_size %lld differs from %s (%d): different tokenizers?",
                         cfg->paths[d], (long long)V, cfg->paths[0], l->vocab_size);
        x->n_tokens = (int64_t)dims[0];
        const int64_t W = x->n_tokens > l->T ? (x->n_tokens - 1) / l->T : 0; /* windows of the split */
        x->first = W * sub_i / sub_n;
        x->n_windows = W * (sub_i + 1) / sub_n - x->first;
        x->weight = cfg->weights ? cfg->weights[d] : (double)x->n_windows;
        if (!(x->weight >= 0)) ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: weight of %s is %g (must be >= 0)", cfg->paths[d], x->weight);
        /* a store too short for the context: named, with the option (without
         * explicit weights its weight would silently be 0) */
        if (!l->sequential && (x->weight > 0 || !cfg->weights) && W == 0)
            ML_FAIL_GOTO(fail, ML_ERR_ARG,
                         "%s: split '%s' has %lld tokens, fewer than one window of T+1 = %d (--context %d is longer "
                         "than the store: use a smaller --context)",
                         cfg->paths[d], split, (long long)x->n_tokens, l->T + 1, l->T);
        if (l->sequential || x->weight > 0) l->total_windows += x->n_windows;
        wsum += x->weight;
    }
    if (!l->sequential && !(wsum > 0)) ML_FAIL_GOTO(fail, ML_ERR_ARG, "loader: all mixture weights are zero");
    for (int d = 0; d < l->D; d++) l->dom[d].weight = wsum > 0 ? l->dom[d].weight / wsum : 0;
    for (int d = 0; sub_n > 1 && !l->sequential && d < l->D; d++) {
        /* a slice must hold the domain's share of one global batch */
        const int64_t need = (int64_t)ceil(l->dom[d].weight * l->G - 1e-9);
        if (l->dom[d].n_windows < need)
            ML_FAIL_GOTO(fail, ML_ERR_ARG,
                         "%s: subset %d/%d of split '%s' holds %lld windows of T+1 = %d tokens, fewer than the %lld "
                         "of its share of one global batch of %d (use fewer subsets or a smaller global_batch)",
                         cfg->paths[d], sub_i, sub_n, split, (long long)l->dom[d].n_windows, l->T + 1,
                         (long long)need, l->G);
    }
    if (l->sequential && l->total_windows == 0)
        ML_FAIL_GOTO(fail, ML_ERR_ARG,
                     "%s%s: split '%s' has no window of T+1 = %d tokens (--context %d is longer than the store)",
                     cfg->paths[0], l->D > 1 ? " (and every other store)" : "", split, l->T + 1, l->T);
    *out = l;
    return ML_OK;
fail:
    ml_loader_destroy(&l);
    return rc;
}

int64_t ml_loader_step(const ml_loader *l) { return l->step; }
int64_t ml_loader_windows_per_epoch(const ml_loader *l) { return l->total_windows; }
int64_t ml_loader_domain_windows(const ml_loader *l, int d) {
    return d >= 0 && d < l->D ? l->dom[d].n_windows : 0;
}
int64_t ml_loader_domain_first_window(const ml_loader *l, int d) {
    return d >= 0 && d < l->D ? l->dom[d].first : 0;
}

/* Smooth weighted round robin: the domain of the next global slot. */
static int next_domain(ml_loader *l) {
    int best = 0;
    for (int d = 0; d < l->D; d++) {
        l->cur[d] += l->dom[d].weight;
        if (l->cur[d] > l->cur[best]) best = d;
    }
    l->cur[best] -= 1.0;
    return best;
}

int ml_loader_seek(ml_loader *l, int64_t step) {
    if (step < 0) return ML_FAIL(ML_ERR_ARG, "loader: cannot seek to step %lld", (long long)step);
    l->step = step;
    if (l->sequential) return ML_OK;
    memset(l->cur, 0, (size_t)l->D * sizeof *l->cur);
    memset(l->drawn, 0, (size_t)l->D * sizeof *l->drawn);
    for (int64_t g = 0; g < step * l->G; g++) l->drawn[next_domain(l)]++;
    return ML_OK;
}

static int epoch_perm(ml_loader *l, int d, int64_t epoch) {
    ldomain *x = &l->dom[d];
    if (x->perm_epoch == epoch) return ML_OK;
    if (!x->perm) {
        x->perm = ml_malloc((size_t)x->n_windows * sizeof *x->perm);
        if (!x->perm) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int64_t i = 0; i < x->n_windows; i++) x->perm[i] = i;
    ml_rng rng;
    ml_rng_seed(&rng, l->seed, ((uint64_t)d << 40) ^ (uint64_t)epoch);
    for (int64_t i = x->n_windows - 1; i > 0; i--) {
        int64_t j = (int64_t)ml_rng_below(&rng, (uint64_t)i + 1), t = x->perm[i];
        x->perm[i] = x->perm[j];
        x->perm[j] = t;
    }
    x->perm_epoch = epoch;
    return ML_OK;
}

/* Read window w of domain d's split into row (T+1) as int32. */
static int read_window(ml_loader *l, int d, int64_t w, int32_t *row) {
    ldomain *x = &l->dom[d];
    hsize_t n = (hsize_t)l->T + 1;
    ML_CHECK(ml_h5_read_rows_independent(x->h, l->dset, x->type, (hsize_t)(w * l->T), n, l->buf));
    uint32_t bad = 0;
    if (x->type == ML_U16) {
        const uint16_t *s = l->buf;
        for (hsize_t i = 0; i < n; i++) row[i] = s[i];
    } else {
        const uint32_t *s = l->buf;
        for (hsize_t i = 0; i < n; i++) {
            row[i] = (int32_t)s[i];
            bad |= s[i] >= (uint32_t)l->vocab_size;
        }
    }
    for (hsize_t i = 0; i < n; i++) bad |= row[i] >= l->vocab_size;
    if (bad)
        return ML_FAIL(ML_ERR_FORMAT, "%s: window %lld of '%s' holds a token id >= vocab_size %d", ml_h5_path(x->h),
                       (long long)w, l->dset, l->vocab_size);
    return ML_OK;
}

int ml_loader_next(ml_loader *l, int32_t *tokens, int *nrows, int32_t *domain_ids) {
    int rc = ML_OK;
    int64_t T1 = l->T + 1, first = l->step * l->G + (int64_t)l->rank * l->B;
    *nrows = 0;
    ml_prof_begin("loader_next");
    if (l->sequential) {
        for (int j = 0; j < l->B; j++) {
            int64_t g = first + j;
            if (g >= l->total_windows) break;
            int d = 0;
            while (g >= l->dom[d].n_windows) g -= l->dom[d++].n_windows;
            ML_CHECK_GOTO(read_window(l, d, l->dom[d].first + g, tokens + (size_t)j * (size_t)T1), done);
            if (domain_ids) domain_ids[j] = d;
            (*nrows)++;
        }
    } else {
        for (int j = 0; j < l->G; j++) { /* every rank advances the whole step */
            int d = next_domain(l);
            int64_t k = l->drawn[d]++;
            int row = j - l->rank * l->B;
            if (row < 0 || row >= l->B) continue;
            ldomain *x = &l->dom[d];
            ML_CHECK_GOTO(epoch_perm(l, d, k / x->n_windows), done);
            ML_CHECK_GOTO(read_window(l, d, x->first + x->perm[k % x->n_windows], tokens + (size_t)row * (size_t)T1), done);
            if (domain_ids) domain_ids[row] = d;
        }
        *nrows = l->B;
    }
    l->step++;
done:
    ml_prof_end("loader_next", 0, (double)*nrows * (double)T1 * 4);
    return rc;
}
