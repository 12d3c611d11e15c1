/* SAE codes of an activations file as an ml_codes_stream, and the token
 * check of two activations files.
 *
 * Legend: N token rows, D = d_in, F = d_sae, n = rows of one chunk,
 * m = this rank's rows of the chunk, P = ranks.
 */
#include <limits.h>
#include <string.h>

#include "mergelens/compare.h"
#include "mergelens/io.h"

struct ml_sae_codes {
    MPI_Comm comm;
    int rank, size;
    const ml_sae *sae;
    ml_acts_source *src;
    const ml_row_source *rows;
    int64_t row0, n_rows, pos, chunk_rows; /* rows [row0, row0 + n_rows) of the file */
    float *x;          /* (chunk_rows / P + 1, D) this rank's activation rows */
    ml_sae_csr csr;    /* this rank's codes */
    int64_t *row_ptr;  /* (chunk_rows + 1) the chunk's codes, all ranks' rows */
    int64_t *row_nnz;  /* (chunk_rows) */
    int32_t *col;      /* (cap_nnz) */
    float *val;        /* (cap_nnz) */
    int64_t cap_nnz;
    int32_t *tokens;   /* (chunk_rows) */
    size_t *counts, *displs; /* (P) */
    ml_fcodes chunk;
    int has_chunk;
    ml_codes_stream stream;
};

static void ml_codes_split(int64_t n, int P, int r, int64_t *r0, int64_t *cnt) {
    *r0 = n * r / P;
    *cnt = n * (r + 1) / P - *r0;
}

/* Grow the gathered col/val arrays to nnz entries (local; agreed by the caller). */
static int ml_codes_reserve(ml_sae_codes *c, int64_t nnz) {
    if (nnz <= c->cap_nnz) return ML_OK;
    int64_t cap = nnz + nnz / 4 + 1024;
    ml_free(c->col);
    ml_free(c->val);
    c->col = ml_malloc(sizeof(int32_t) * (size_t)cap);
    c->val = ml_malloc(sizeof(float) * (size_t)cap);
    c->cap_nnz = (c->col && c->val) ? cap : 0;
    if (!c->col || !c->val) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    return ML_OK;
}

/* Collective: read + encode this rank's rows of the next chunk, all-gather the codes. */
static int ml_codes_next(void *ctx, int64_t f0, int64_t nf, int64_t max_rows, ml_fcodes *out, const int32_t **tokens) {
    ml_sae_codes *c = ctx;
    (void)f0;
    (void)nf;
    memset(out, 0, sizeof *out);
    if (tokens) *tokens = NULL;
    int64_t n = c->n_rows - c->pos;
    if (n > max_rows) n = max_rows;
    if (n > c->chunk_rows) n = c->chunk_rows;
    if (n <= 0) {
        c->has_chunk = 0;
        return ML_OK;
    }
    int64_t r0, m;
    ml_codes_split(n, c->size, c->rank, &r0, &m);
    ml_prof_begin("compare_read");
    int rc = c->rows->read(c->rows->ctx, c->row0 + c->pos + r0, m, c->x);
    if (rc == ML_OK) rc = c->rows->read_meta(c->rows->ctx, c->row0 + c->pos, n, c->tokens, NULL, NULL);
    ml_prof_end("compare_read", 0, (double)m * c->rows->d * 4);
    ML_CHECK(ml_agree(c->comm, rc));
    ml_prof_begin("compare_encode");
    rc = ml_sae_encode_csr(c->sae, c->x, (int)m, &c->csr);
    ml_prof_end("compare_encode", 2.0 * (double)m * c->sae->d_in * c->sae->d_sae, 0);
    ML_CHECK(ml_agree(c->comm, rc));
    /* per-row nnz of every rank's rows */
    int64_t *mine = c->row_nnz + r0;
    for (int64_t i = 0; i < m; i++) mine[i] = c->csr.row_ptr[i + 1] - c->csr.row_ptr[i];
    for (int p = 0; p < c->size; p++) {
        int64_t p0, pc;
        ml_codes_split(n, c->size, p, &p0, &pc);
        c->counts[p] = (size_t)pc;
        c->displs[p] = (size_t)p0;
    }
    ML_CHECK(ml_mpi_allgatherv(c->comm, MPI_IN_PLACE, c->row_nnz, c->counts, c->displs, MPI_INT64_T));
    c->row_ptr[0] = 0;
    for (int64_t i = 0; i < n; i++) c->row_ptr[i + 1] = c->row_ptr[i] + c->row_nnz[i];
    int64_t nnz = c->row_ptr[n];
    rc = ml_codes_reserve(c, nnz);
    ML_CHECK(ml_agree(c->comm, rc));
    for (int p = 0; p < c->size; p++) {
        int64_t p0, pc;
        ml_codes_split(n, c->size, p, &p0, &pc);
        c->displs[p] = (size_t)c->row_ptr[p0];
        c->counts[p] = (size_t)(c->row_ptr[p0 + pc] - c->row_ptr[p0]);
    }
    ML_CHECK(ml_mpi_allgatherv(c->comm, c->csr.col, c->col, c->counts, c->displs, MPI_INT32_T));
    ML_CHECK(ml_mpi_allgatherv(c->comm, c->csr.val, c->val, c->counts, c->displs, MPI_FLOAT));
    c->chunk = (ml_fcodes){.n = n, .f0 = 0, .nf = c->sae->d_sae, .x = NULL, .ld = 0,
                           .row_ptr = c->row_ptr, .col = c->col, .val = c->val};
    c->has_chunk = 1;
    c->pos += n;
    *out = c->chunk;
    if (tokens) *tokens = c->tokens;
    return ML_OK;
}

int ml_sae_codes_open(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *acts_path,
                      const char *hook, int64_t row0, int64_t n_rows, int64_t chunk_rows, ml_sae_codes **out) {
    *out = NULL;
    int rc = ML_OK;
    if (chunk_rows <= 0) return ML_FAIL(ML_ERR_ARG, "compare: chunk rows must be > 0 (got %lld)", (long long)chunk_rows);
    ml_sae_codes *c = ml_calloc(1, sizeof *c);
    rc = c ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK(ml_agree(comm, rc));
    c->comm = comm;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->size);
    c->sae = sae;
    const char *hk = hook && hook[0] ? hook : sae->hook_name;
    ML_CHECK_GOTO(ml_acts_source_open(comm, acts_path, hk, &c->src), fail);
    c->rows = ml_acts_source_rows(c->src);
    if (c->rows->d != sae->d_in)
        ML_FAIL_GOTO(fail, ML_ERR_SHAPE,
                     "compare: SAE %s has d_in %d but the activations %s (hook '%s') have width %d", sae_path,
                     sae->d_in, acts_path, hk, c->rows->d);
    if (row0 < 0 || row0 >= c->rows->n_rows)
        ML_FAIL_GOTO(fail, ML_ERR_ARG, "compare: first row %lld is outside the %lld rows of %s", (long long)row0,
                     (long long)c->rows->n_rows, acts_path);
    c->row0 = row0;
    c->n_rows = n_rows > 0 && n_rows < c->rows->n_rows - row0 ? n_rows : c->rows->n_rows - row0;
    c->chunk_rows = chunk_rows;
    int64_t local = chunk_rows / c->size + 1;
    c->x = ml_malloc(sizeof(float) * (size_t)(local * sae->d_in));
    c->row_ptr = ml_malloc(sizeof(int64_t) * (size_t)(chunk_rows + 1));
    c->row_nnz = ml_malloc(sizeof(int64_t) * (size_t)chunk_rows);
    c->tokens = ml_malloc(sizeof(int32_t) * (size_t)chunk_rows);
    c->counts = ml_malloc(sizeof(size_t) * (size_t)c->size);
    c->displs = ml_malloc(sizeof(size_t) * (size_t)c->size);
    rc = (c->x && c->row_ptr && c->row_nnz && c->tokens && c->counts && c->displs)
             ? ML_OK
             : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    c->stream = (ml_codes_stream){.next = ml_codes_next, .ctx = c, .n_features = sae->d_sae, .n_rows = c->n_rows};
    *out = c;
    return ML_OK;
fail:
    rc = ml_agree(comm, rc);
    ml_sae_codes_close(&c);
    return rc;
}

void ml_sae_codes_close(ml_sae_codes **cp) {
    if (!cp || !*cp) return;
    ml_sae_codes *c = *cp;
    ml_acts_source_close(&c->src);
    ml_sae_csr_free(&c->csr);
    ml_free(c->x);
    ml_free(c->row_ptr);
    ml_free(c->row_nnz);
    ml_free(c->col);
    ml_free(c->val);
    ml_free(c->tokens);
    ml_free(c->counts);
    ml_free(c->displs);
    ml_free(c);
    *cp = NULL;
}

ml_codes_stream *ml_sae_codes_stream(ml_sae_codes *c) { return &c->stream; }
const ml_fcodes *ml_sae_codes_chunk(const ml_sae_codes *c) { return c->has_chunk ? &c->chunk : NULL; }

/* ---- token check --------------------------------------------------------------------------- */
static int ml_tokens_rows(ml_h5 *h, const char *path, int64_t *n) {
    if (!ml_h5_exists(h, "/tokens"))
        return ML_FAIL(ML_ERR_FORMAT, "compare: %s has no /tokens dataset; the token positions cannot be checked", path);
    int rank;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    ML_CHECK(ml_h5_shape(h, "/tokens", &rank, dims, &t));
    if (rank != 1 || t != ML_I32)
        return ML_FAIL(ML_ERR_FORMAT, "compare: %s: /tokens must be [N] int32 (found rank %d, %s)", path, rank,
                       ml_dtype_name(t));
    *n = (int64_t)dims[0];
    return ML_OK;
}

int ml_acts_same_tokens(MPI_Comm comm, const char *path_a, const char *path_b, int64_t chunk_rows, int64_t *n_rows,
                        int64_t *vocab) {
    int rc = ML_OK, rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    ml_h5 *ha = NULL, *hb = NULL;
    int32_t *ta = NULL, *tb = NULL;
    int64_t na = 0, nb = 0;
    if (chunk_rows <= 0) chunk_rows = 16384;
    ML_CHECK_GOTO(ml_h5_open(comm, path_a, "mergelens.activations", 1, 1, &ha), done);
    ML_CHECK_GOTO(ml_h5_open(comm, path_b, "mergelens.activations", 1, 1, &hb), done);
    ML_CHECK_GOTO(ml_agree(comm, ml_tokens_rows(ha, path_a, &na)), done);
    ML_CHECK_GOTO(ml_agree(comm, ml_tokens_rows(hb, path_b, &nb)), done);
    if (na != nb)
        ML_FAIL_GOTO(done, ML_ERR_SHAPE,
                     "compare: %s has %lld token rows but %s has %lld; both SAEs must see the same token positions",
                     path_a, (long long)na, path_b, (long long)nb);
    int64_t local = chunk_rows / size + 1;
    ta = ml_malloc(sizeof(int32_t) * (size_t)local);
    tb = ml_malloc(sizeof(int32_t) * (size_t)local);
    rc = ta && tb ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    int64_t vmax = -1, first = INT64_MAX;
    for (int64_t pos = 0; pos < na && first == INT64_MAX; pos += chunk_rows) {
        int64_t n = na - pos < chunk_rows ? na - pos : chunk_rows;
        int64_t r0 = pos + n * rank / size, m = pos + n * (rank + 1) / size - r0;
        rc = ml_h5_read_rows(ha, "/tokens", ML_I32, (hsize_t)r0, (hsize_t)m, ta);
        if (rc == ML_OK) rc = ml_h5_read_rows(hb, "/tokens", ML_I32, (hsize_t)r0, (hsize_t)m, tb);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        int64_t mine = INT64_MAX;
        for (int64_t i = 0; i < m; i++) {
            if (ta[i] != tb[i] && mine == INT64_MAX) mine = r0 + i;
            if (ta[i] > vmax) vmax = ta[i];
        }
        ML_CHECK_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT64_T, MPI_MIN, comm));
    }
    if (first != INT64_MAX) {
        int32_t pair[2] = {0, 0};
        /* every rank reads the differing row (collective) to name it */
        rc = ml_h5_read_rows(ha, "/tokens", ML_I32, (hsize_t)first, 1, &pair[0]);
        if (rc == ML_OK) rc = ml_h5_read_rows(hb, "/tokens", ML_I32, (hsize_t)first, 1, &pair[1]);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        ML_FAIL_GOTO(done, ML_ERR_SHAPE,
                     "compare: %s and %s hold different tokens (first at row %lld: %d vs %d); both SAEs must see the "
                     "same token positions",
                     path_a, path_b, (long long)first, pair[0], pair[1]);
    }
    int64_t vglob = 0;
    ML_CHECK_MPI(MPI_Allreduce(&vmax, &vglob, 1, MPI_INT64_T, MPI_MAX, comm));
    if (n_rows) *n_rows = na;
    if (vocab) *vocab = vglob + 1;
done:
    ml_free(ta);
    ml_free(tb);
    if (ha) ml_h5_close(&ha);
    if (hb) ml_h5_close(&hb);
    return rc;
}
