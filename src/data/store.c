/* The token store data/<domain>.h5 (format mergelens.tokens v1), written
 * collectively:
 *   1. rank 0 scans the sources for document sizes (broadcast);
 *   2. documents are split into contiguous per-rank slices of about equal
 *      bytes; each rank reads and encodes its slice;
 *   3. a seeded permutation (same on every rank) picks the held-out docs;
 *   4. token and document offsets come from MPI_Exscan; each rank writes its
 *      rows of /train/tokens, /train/doc_offsets, /val/... collectively.
 * The content depends only on the documents, tokenizer and seed, never on
 * the number of ranks. Each document is [bos] tokens eos. */
#include "internal.h"

#include "mergelens/io.h"

#include <math.h>
#include <string.h>

#define ML_WRITE_PIECE ((int64_t)1 << 26) /* elements per collective write call */

static int size_cb(void *ctx, int64_t index, const char *text, size_t len) {
    (void)index;
    (void)text;
    return ml_i64_push(ctx, (int64_t)len);
}

/* Held-out flags: exactly round(frac * n) documents chosen by a seeded shuffle. */
static int choose_val(int64_t n, double frac, uint64_t seed, uint8_t **is_val, int64_t *n_val) {
    uint8_t *f = ml_calloc((size_t)n + 1, 1);
    int64_t *perm = ml_malloc(((size_t)n + 1) * sizeof *perm);
    if (!f || !perm) {
        ml_free(f);
        ml_free(perm);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    int64_t k = (int64_t)llround(frac * (double)n);
    if (frac > 0 && k == 0 && n >= 2) k = 1;
    if (k >= n && n >= 2 && frac < 1) k = n - 1;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    ml_rng rng;
    ml_rng_seed(&rng, seed, 0x76616c /* "val" */);
    for (int64_t i = 0; i < k; i++) { /* partial Fisher-Yates: the first k are the sample */
        int64_t j = i + (int64_t)ml_rng_below(&rng, (uint64_t)(n - i));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        f[perm[i]] = 1;
    }
    ml_free(perm);
    *is_val = f;
    *n_val = k;
    return ML_OK;
}

/* Collective write of n local elements at global offset off (any n per rank). */
static int write_split(ml_h5 *h, MPI_Comm comm, const char *name, ml_dtype type, int64_t off, int64_t n,
                       const void *data) {
    int64_t pieces = (n + ML_WRITE_PIECE - 1) / ML_WRITE_PIECE, maxp = 0;
    ML_CHECK_MPI(MPI_Allreduce(&pieces, &maxp, 1, MPI_INT64_T, MPI_MAX, comm));
    size_t es = ml_dtype_size(type);
    for (int64_t p = 0; p < maxp; p++) {
        int64_t a = p * ML_WRITE_PIECE, b = a + ML_WRITE_PIECE < n ? a + ML_WRITE_PIECE : n;
        int64_t cnt = b > a ? b - a : 0;
        ML_CHECK(ml_h5_write_rows(h, name, type, (hsize_t)(off + (cnt ? a : 0)), (hsize_t)cnt,
                                  (const char *)data + (size_t)(cnt ? a : 0) * es));
    }
    return ML_OK;
}

typedef struct {
    ml_ids tok[2];   /* local tokens, train/val */
    ml_i64vec starts[2];/* local document start offsets (relative) */
} local_split;

int ml_store_write(MPI_Comm comm, ml_tokenizer *tok, const ml_domain *dom, const ml_store_config *cfg,
                   const char *path, ml_store_stats *stats) {
    int rc = ML_OK, rank, P;
    double t0 = ml_wtime();
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    ML_CHECK_MPI(MPI_Comm_size(comm, &P));
    ml_store_stats st;
    memset(&st, 0, sizeof st);
    ml_i64vec sizes = {0};
    ml_docs *docs = NULL;
    uint8_t *is_val = NULL;
    void *wbuf = NULL;
    ml_h5 *h = NULL;
    local_split ls;
    memset(&ls, 0, sizeof ls);
    ml_prof_begin("tokenize");

    /* checks every rank can make alone */
    int V = ml_tokenizer_vocab_size(tok);
    const char *tt = cfg->token_type ? cfg->token_type : "auto";
    ml_dtype type;
    if (!strcmp(tt, "auto")) type = V <= 65536 ? ML_U16 : ML_U32;
    else if (!strcmp(tt, "uint16")) type = ML_U16;
    else if (!strcmp(tt, "uint32")) type = ML_U32;
    else ML_FAIL_GOTO(done, ML_ERR_ARG, "token_type '%s' is not one of auto, uint16, uint32", tt);
    if (type == ML_U16 && V > 65536)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "a vocabulary of %d tokens does not fit token_type uint16 (at most 65536)", V);
    int32_t eos = ml_tokenizer_eos_id(tok), bos = ml_tokenizer_bos_id(tok);
    if (eos < 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "the tokenizer has no end-of-text token to close documents");
    if (cfg->add_bos && bos < 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "add_bos is set but the tokenizer has no bos token");
    if (!(cfg->val_fraction >= 0 && cfg->val_fraction < 1))
        ML_FAIL_GOTO(done, ML_ERR_ARG, "val_fraction %g is not in [0, 1)", cfg->val_fraction);
    if (dom->n_sources == 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "domain '%s' has no sources", dom->name);

    /* 1. document sizes (rank 0 scans, everyone gets them) */
    if (rank == 0) rc = ml_corpus_foreach(dom->sources, dom->n_sources, size_cb, &sizes, &st.corpus);
    if (rc == ML_OK && rank == 0 && st.corpus.docs == 0)
        rc = ML_FAIL(ML_ERR_ARG, "domain '%s' is empty: its sources (first: %s) hold no documents", dom->name,
                     dom->sources[0].path);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (MPI_Bcast(&st.corpus, 6, MPI_INT64_T, 0, comm) != MPI_SUCCESS)
        ML_FAIL_GOTO(done, ML_ERR_MPI, "MPI_Bcast of corpus statistics failed");
    int64_t ndocs = st.corpus.docs;
    if (rank != 0) {
        sizes.v = ml_malloc((size_t)ndocs * sizeof *sizes.v);
        rc = sizes.v ? ML_OK : ML_ERR_NOMEM;
        sizes.n = sizes.cap = (size_t)ndocs;
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_mpi_bcast(comm, sizes.v, (size_t)ndocs, MPI_INT64_T, 0), done);

    ml_debug("tokenize %s: scanned %lld documents in %.3f s", dom->name, (long long)ndocs, ml_wtime() - t0);
    /* 2. contiguous slice of about total/P bytes */
    int64_t lo = 0, hi = 0;
    {
        double total = (double)st.corpus.bytes, acc = 0;
        int64_t i = 0;
        for (int r = 0; r <= rank; r++) {
            lo = i;
            double end = total * (double)(r + 1) / P;
            while (i < ndocs && (r == P - 1 || acc + 0.5 * (double)sizes.v[i] <= end)) acc += (double)sizes.v[i++];
            hi = i;
        }
    }
    rc = ml_docs_load(dom->sources, dom->n_sources, lo, hi - lo, &docs, NULL);
    if (rc == ML_OK && docs->n_docs != hi - lo)
        rc = ML_FAIL(ML_ERR_IO, "domain '%s': sources changed while reading (%lld documents, expected %lld)",
                     dom->name, (long long)docs->n_docs, (long long)(hi - lo));
    if (rc == ML_OK) rc = choose_val(ndocs, cfg->val_fraction, cfg->seed, &is_val, &st.docs[1]);
    st.docs[0] = ndocs - st.docs[1];
    ml_debug("tokenize %s: read documents [%lld, %lld) at %.3f s", dom->name, (long long)lo, (long long)hi,
             ml_wtime() - t0);
    ml_progress prog;
    ml_progress_begin(&prog, dom->name, (double)st.corpus.bytes);
    for (int64_t i = 0; rc == ML_OK && i < hi - lo; i++) {
        int s = is_val[lo + i];
        ml_ids *v = &ls.tok[s];
        rc = ml_i64_push(&ls.starts[s], (int64_t)v->n);
        if (rc == ML_OK && cfg->add_bos) rc = ml_ids_push(v, bos);
        if (rc == ML_OK)
            rc = ml_tokenizer_encode(tok, docs->bytes + docs->offsets[i],
                                     (size_t)(docs->offsets[i + 1] - docs->offsets[i]), v);
        if (rc == ML_OK) rc = ml_ids_push(v, eos);
        if ((i & 255) == 0) ml_progress_update(&prog, (double)docs->offsets[i] * P, NULL);
    }
    ml_progress_end(&prog, NULL);
    ml_docs_destroy(&docs);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);

    ml_debug("tokenize %s: encoded at %.3f s", dom->name, ml_wtime() - t0);
    /* 3. offsets */
    int64_t mine[4] = {(int64_t)ls.tok[0].n, (int64_t)ls.tok[1].n, (int64_t)ls.starts[0].n, (int64_t)ls.starts[1].n};
    int64_t before[4] = {0, 0, 0, 0}, tot[4];
    ML_CHECK_MPI(MPI_Exscan(mine, before, 4, MPI_INT64_T, MPI_SUM, comm));
    if (rank == 0) memset(before, 0, sizeof before);
    ML_CHECK_MPI(MPI_Allreduce(mine, tot, 4, MPI_INT64_T, MPI_SUM, comm));
    st.tokens[0] = tot[0];
    st.tokens[1] = tot[1];

    /* 4. write */
    size_t wcap = ls.tok[0].n > ls.tok[1].n ? ls.tok[0].n : ls.tok[1].n;
    if (ls.starts[0].n + 1 > wcap) wcap = ls.starts[0].n + 1;
    if (ls.starts[1].n + 1 > wcap) wcap = ls.starts[1].n + 1;
    wbuf = ml_malloc((wcap + 1) * 8);
    rc = wbuf ? ML_OK : ML_ERR_NOMEM;
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, "mergelens.tokens", 1, &h), done);
    static const char *split_name[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        char name[64];
        hsize_t dt[1] = {(hsize_t)tot[s]}, dd[1] = {(hsize_t)tot[2 + s] + 1};
        snprintf(name, sizeof name, "%s/tokens", split_name[s]);
        ML_CHECK_GOTO(ml_h5_create_dataset(h, name, type, 1, dt, NULL), fail);
        size_t n = ls.tok[s].n;
        for (size_t i = 0; i < n; i++) {
            if (type == ML_U16) ((uint16_t *)wbuf)[i] = (uint16_t)ls.tok[s].ids[i];
            else ((uint32_t *)wbuf)[i] = (uint32_t)ls.tok[s].ids[i];
        }
        ML_CHECK_GOTO(write_split(h, comm, name, type, before[s], (int64_t)n, wbuf), fail);
        snprintf(name, sizeof name, "%s/doc_offsets", split_name[s]);
        ML_CHECK_GOTO(ml_h5_create_dataset(h, name, ML_I64, 1, dd, NULL), fail);
        int64_t *o = wbuf, nd = (int64_t)ls.starts[s].n;
        for (int64_t i = 0; i < nd; i++) o[i] = before[s] + ls.starts[s].v[i];
        if (rank == P - 1) o[nd++] = tot[s]; /* closing offset */
        ML_CHECK_GOTO(write_split(h, comm, name, ML_I64, before[2 + s], nd, o), fail);
        ML_CHECK_GOTO(ml_h5_set_attr_int(h, split_name[s], "n_docs", tot[2 + s]), fail);
    }
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domain", dom->name), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "vocab_size", V), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "eos_id", eos), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "bos_id", bos), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "pad_id", ml_tokenizer_pad_id(tok)), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "add_bos", cfg->add_bos), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "tokenizer", cfg->tokenizer_path ? cfg->tokenizer_path : ""), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", "val_fraction", cfg->val_fraction), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "seed", (int64_t)cfg->seed), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "source_bytes", st.corpus.bytes), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "invalid_utf8_bytes", st.corpus.invalid_utf8_bytes), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "skipped_lines", st.corpus.bad_lines), fail);
    if (cfg->config_json) ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg->config_json), fail);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_debug("tokenize %s: written at %.3f s", dom->name, ml_wtime() - t0);
    st.seconds = ml_wtime() - t0;
    if (stats) *stats = st;
    goto done;
fail:
    ml_h5_discard(&h);
done:
    ml_prof_end("tokenize", 0, (double)st.corpus.bytes);
    for (int s = 0; s < 2; s++) {
        ml_ids_free(&ls.tok[s]);
        ml_free(ls.starts[s].v);
    }
    ml_free(sizes.v);
    ml_free(is_val);
    ml_free(wbuf);
    ml_docs_destroy(&docs);
    return rc;
}
