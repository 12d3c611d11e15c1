/* Shuffled, data-parallel row streams for SAE training.
 *
 * The source's rows are cut into blocks of `block_rows`. Each epoch draws a
 * permutation of the blocks (seeded by seed and epoch); consecutive groups of
 * `buffer_blocks` blocks form buffers, and each buffer's rows are permuted
 * (seeded by seed, epoch and buffer). The permuted buffers, concatenated over
 * epochs, are the stream. Global batch s is stream positions [s*B, (s+1)*B);
 * rank r takes positions whose offset inside their batch lies in
 * [r*B/P, (r+1)*B/P). Batches may straddle buffers and epochs; no row is
 * dropped.
 *
 * Reading: the blocks of a buffer are dealt round-robin to ranks (block t to
 * rank t % P) and read collectively; rows then travel to the rank that needs
 * them with one MPI_Alltoallv per buffer. Every rank computes the same
 * permutations, so sender and receiver agree on the order without metadata.
 *
 * Dimension letters: R rows in a buffer, D row width, B global batch, L = B/P.
 */
#include "mergelens/sae.h"

#include <string.h>

struct ml_sae_stream {
    MPI_Comm comm;
    int rank, P;
    ml_row_source src;
    int B, L, block_rows, buffer_blocks, peek_batches;
    uint64_t seed;
    int64_t nblocks;
    int64_t epoch;       /* current epoch (-1 before the first) */
    int64_t *block_perm; /* (nblocks) this epoch's block order */
    int64_t next_block;  /* index into block_perm of the next buffer's first block */
    int64_t buffer_no;   /* buffers drawn in this epoch */
    int64_t stream_end;  /* stream positions delivered into queues (global) */
    int64_t consumed;    /* stream positions consumed (global) */
    float *readbuf;      /* (ceil(G/P)*block_rows, D) blocks this rank read */
    float *sendbuf;      /* (same, D) rows in send order */
    float *recvbuf;      /* (qcap, D) rows received this buffer */
    float *queue;        /* (qcap, D) this rank's rows, stream order */
    int64_t q_start, q_len, qcap;
    int32_t *perm;       /* (R) buffer row of each buffer position */
    int32_t *row_block;  /* (R) block slot (0..G-1) of each buffer row */
    int64_t *blk_off;    /* (G+1) first buffer row of each block slot */
    int *scount, *sdispl, *rcount, *rdispl, *cursor; /* (P) */
    MPI_Datatype rowtype;
};

int ml_sae_stream_local_batch(const ml_sae_stream *s) { return s->L; }

void ml_sae_stream_destroy(ml_sae_stream **sp) {
    if (!sp || !*sp) return;
    ml_sae_stream *s = *sp;
    ml_free(s->block_perm);
    ml_free(s->readbuf);
    ml_free(s->sendbuf);
    ml_free(s->recvbuf);
    ml_free(s->queue);
    ml_free(s->perm);
    ml_free(s->row_block);
    ml_free(s->blk_off);
    ml_free(s->scount);
    ml_free(s->sdispl);
    ml_free(s->rcount);
    ml_free(s->rdispl);
    ml_free(s->cursor);
    if (s->rowtype != MPI_DATATYPE_NULL) MPI_Type_free(&s->rowtype);
    ml_free(s);
    *sp = NULL;
}

int ml_sae_stream_create(MPI_Comm comm, const ml_row_source *src, int global_batch, int block_rows,
                         int buffer_blocks, uint64_t seed, int peek_batches, ml_sae_stream **out) {
    *out = NULL;
    int rank, P;
    ML_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    ML_CHECK_MPI(MPI_Comm_size(comm, &P));
    if (src->n_rows <= 0 || src->d <= 0)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: the source has no rows (%lld x %d)", (long long)src->n_rows, src->d);
    if (global_batch <= 0 || global_batch % P != 0)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: batch %d must be a positive multiple of the %d ranks", global_batch, P);
    if (block_rows <= 0 || buffer_blocks <= 0)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: block_rows (%d) and buffer_blocks (%d) must be positive", block_rows,
                       buffer_blocks);
    if ((int64_t)block_rows * buffer_blocks > INT32_MAX / 2)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: buffer of %lld rows is too large", (long long)block_rows * buffer_blocks);
    if (peek_batches < 1) peek_batches = 1;
    ml_sae_stream *s = ml_calloc(1, sizeof *s);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    s->rowtype = MPI_DATATYPE_NULL;
    s->comm = comm;
    s->rank = rank;
    s->P = P;
    s->src = *src;
    s->B = global_batch;
    s->L = global_batch / P;
    s->block_rows = block_rows;
    s->nblocks = (src->n_rows + block_rows - 1) / block_rows;
    s->buffer_blocks = buffer_blocks < s->nblocks ? buffer_blocks : (int)s->nblocks;
    s->peek_batches = peek_batches;
    s->seed = seed;
    s->epoch = -1;
    s->next_block = s->nblocks;
    int G = s->buffer_blocks;
    int64_t R = (int64_t)G * block_rows, D = src->d;
    int64_t per_rank_read = (int64_t)((G + P - 1) / P) * block_rows;
    /* local rows delivered by one buffer <= (R/B + 2) L; leftovers < (peek + 1) L */
    s->qcap = (R / s->B + 2) * s->L + (int64_t)(peek_batches + 2) * s->L;
    int rc = ML_OK;
    s->block_perm = ml_malloc(sizeof(int64_t) * (size_t)s->nblocks);
    s->readbuf = ml_malloc(sizeof(float) * (size_t)(per_rank_read * D));
    s->sendbuf = P > 1 ? ml_malloc(sizeof(float) * (size_t)(per_rank_read * D)) : ml_malloc(1);
    s->recvbuf = P > 1 ? ml_malloc(sizeof(float) * (size_t)(((R / s->B + 2) * s->L) * D)) : ml_malloc(1);
    s->queue = ml_malloc(sizeof(float) * (size_t)(s->qcap * D));
    s->perm = ml_malloc(sizeof(int32_t) * (size_t)R);
    s->row_block = ml_malloc(sizeof(int32_t) * (size_t)R);
    s->blk_off = ml_malloc(sizeof(int64_t) * (size_t)(G + 1));
    s->scount = ml_calloc((size_t)P, sizeof(int));
    s->sdispl = ml_calloc((size_t)P, sizeof(int));
    s->rcount = ml_calloc((size_t)P, sizeof(int));
    s->rdispl = ml_calloc((size_t)P, sizeof(int));
    s->cursor = ml_calloc((size_t)P, sizeof(int));
    if (!s->block_perm || !s->readbuf || !s->sendbuf || !s->recvbuf || !s->queue || !s->perm || !s->row_block ||
        !s->blk_off || !s->scount || !s->sdispl || !s->rcount || !s->rdispl || !s->cursor) {
        ml_sae_stream_destroy(&s);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    rc = MPI_Type_contiguous((int)D, MPI_FLOAT, &s->rowtype);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&s->rowtype);
    if (rc != MPI_SUCCESS) {
        ml_sae_stream_destroy(&s);
        return ml_mpi_error(rc, "MPI_Type_contiguous", __FILE__, __LINE__, __func__);
    }
    *out = s;
    return ML_OK;
}

static void ml_shuffle64(int64_t *a, int64_t n, ml_rng *r) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)ml_rng_below(r, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* Start the next epoch's block order when the current one is used up. */
static void ml_stream_epoch(ml_sae_stream *s) {
    if (s->next_block < s->nblocks) return;
    s->epoch++;
    ml_rng r;
    ml_rng_seed(&r, s->seed, 0xB10C0000ull + (uint64_t)s->epoch);
    for (int64_t i = 0; i < s->nblocks; i++) s->block_perm[i] = i;
    ml_shuffle64(s->block_perm, s->nblocks, &r);
    s->next_block = 0;
    s->buffer_no = 0;
}

/* Blocks in the next buffer (after ml_stream_epoch). */
static int ml_stream_buffer_blocks(const ml_sae_stream *s) {
    return (int)(s->nblocks - s->next_block < s->buffer_blocks ? s->nblocks - s->next_block : s->buffer_blocks);
}

/* Read the next buffer and append this rank's share of its rows to the queue. */
static int ml_stream_fill(ml_sae_stream *s) {
    int64_t D = s->src.d;
    ml_stream_epoch(s);
    int G = ml_stream_buffer_blocks(s);
    s->blk_off[0] = 0;
    for (int t = 0; t < G; t++) {
        int64_t b = s->block_perm[s->next_block + t];
        int64_t len = s->src.n_rows - b * s->block_rows;
        if (len > s->block_rows) len = s->block_rows;
        s->blk_off[t + 1] = s->blk_off[t] + len;
        for (int64_t q = s->blk_off[t]; q < s->blk_off[t + 1]; q++) s->row_block[q] = t;
    }
    int64_t R = s->blk_off[G];
    /* collective block reads: round q, rank r reads block slot q*P + r */
    ml_prof_begin("sae.read");
    int read_rc = ML_OK;
    for (int q = 0; q * s->P < G; q++) {
        int t = q * s->P + s->rank;
        int64_t row0 = 0, cnt = 0;
        if (t < G) {
            row0 = s->block_perm[s->next_block + t] * s->block_rows;
            cnt = s->blk_off[t + 1] - s->blk_off[t];
        }
        int e = s->src.read(s->src.ctx, row0, cnt, s->readbuf + (size_t)q * s->block_rows * D);
        if (e && !read_rc) read_rc = e; /* keep joining the collective reads; agree below */
    }
    ML_CHECK(ml_agree(s->comm, read_rc));
    ml_prof_end("sae.read", 0, (double)R * D * 4 / s->P);
    /* the buffer's row permutation */
    {
        ml_rng r;
        ml_rng_seed(&r, s->seed ^ 0x5EEDF00Dull, ((uint64_t)s->epoch << 32) + (uint64_t)s->buffer_no);
        for (int64_t i = 0; i < R; i++) s->perm[i] = (int32_t)i;
        for (int64_t i = R - 1; i > 0; i--) {
            int64_t j = (int64_t)ml_rng_below(&r, (uint64_t)i + 1);
            int32_t t = s->perm[i];
            s->perm[i] = s->perm[j];
            s->perm[j] = t;
        }
    }
    /* compact the queue */
    if (s->q_start > 0) {
        memmove(s->queue, s->queue + (size_t)(s->q_start * D), sizeof(float) * (size_t)(s->q_len * D));
        s->q_start = 0;
    }
    ml_prof_begin("sae.shuffle");
    int64_t p0 = s->stream_end;
#define ML_DEST(i) ((int)(((p0 + (i)) % s->B) / s->L))
#define ML_LOCAL_ROW(q) /* row q of the buffer inside its reader's readbuf */                                   \
    (((int64_t)(s->row_block[q] / s->P) * s->block_rows + ((q)-s->blk_off[s->row_block[q]])) * D)
    if (s->P == 1) {
        for (int64_t i = 0; i < R; i++) {
            int32_t q = s->perm[i];
            if (s->q_len >= s->qcap) return ML_FAIL(ML_ERR_INTERNAL, "SAE stream: queue overflow");
            memcpy(s->queue + (size_t)(s->q_len * D), s->readbuf + ML_LOCAL_ROW(q), sizeof(float) * (size_t)D);
            s->q_len++;
        }
    } else {
        int P = s->P;
        memset(s->scount, 0, sizeof(int) * (size_t)P);
        memset(s->rcount, 0, sizeof(int) * (size_t)P);
        for (int64_t i = 0; i < R; i++) {
            int src = s->row_block[s->perm[i]] % P, dst = ML_DEST(i);
            if (src == s->rank) s->scount[dst]++;
            if (dst == s->rank) s->rcount[src]++;
        }
        int64_t rtot = 0;
        for (int r = 0; r < P; r++) {
            s->sdispl[r] = r ? s->sdispl[r - 1] + s->scount[r - 1] : 0;
            s->rdispl[r] = r ? s->rdispl[r - 1] + s->rcount[r - 1] : 0;
            rtot += s->rcount[r];
        }
        if (s->q_len + rtot > s->qcap) return ML_FAIL(ML_ERR_INTERNAL, "SAE stream: queue overflow");
        memcpy(s->cursor, s->sdispl, sizeof(int) * (size_t)P);
        for (int64_t i = 0; i < R; i++) {
            int32_t q = s->perm[i];
            if (s->row_block[q] % P != s->rank) continue;
            int dst = ML_DEST(i);
            memcpy(s->sendbuf + (size_t)((int64_t)s->cursor[dst]++ * D), s->readbuf + ML_LOCAL_ROW(q),
                   sizeof(float) * (size_t)D);
        }
        ML_CHECK_MPI(MPI_Alltoallv(s->sendbuf, s->scount, s->sdispl, s->rowtype, s->recvbuf, s->rcount, s->rdispl,
                                   s->rowtype, s->comm));
        memcpy(s->cursor, s->rdispl, sizeof(int) * (size_t)P);
        for (int64_t i = 0; i < R; i++) {
            if (ML_DEST(i) != s->rank) continue;
            int src = s->row_block[s->perm[i]] % P;
            memcpy(s->queue + (size_t)(s->q_len * D), s->recvbuf + (size_t)((int64_t)s->cursor[src]++ * D),
                   sizeof(float) * (size_t)D);
            s->q_len++;
        }
    }
#undef ML_DEST
#undef ML_LOCAL_ROW
    ml_prof_end("sae.shuffle", 0, (double)R * D * 8 / s->P);
    s->stream_end += R;
    s->next_block += G;
    s->buffer_no++;
    return ML_OK;
}

static int ml_stream_ensure(ml_sae_stream *s, int nbatches) {
    while (s->stream_end < s->consumed + (int64_t)nbatches * s->B) ML_CHECK(ml_stream_fill(s));
    return ML_OK;
}

int ml_sae_stream_next(ml_sae_stream *s, const float **rows, int64_t *stream_pos) {
    ML_CHECK(ml_stream_ensure(s, 1));
    *rows = s->queue + (size_t)(s->q_start * s->src.d);
    if (stream_pos) *stream_pos = s->consumed;
    s->q_start += s->L;
    s->q_len -= s->L;
    s->consumed += s->B;
    return ML_OK;
}

int ml_sae_stream_seek(ml_sae_stream *s, int64_t stream_pos) {
    if (s->consumed != 0 || s->stream_end != 0)
        return ML_FAIL(ML_ERR_INTERNAL, "SAE stream: seek on a stream already read (position %lld)", (long long)s->consumed);
    if (stream_pos < 0 || stream_pos % s->B)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: seek to %lld, not a multiple of the batch %d", (long long)stream_pos, s->B);
    if (stream_pos == 0) return ML_OK;
    for (;;) { /* skip whole buffers before stream_pos without reading them */
        ml_stream_epoch(s);
        int G = ml_stream_buffer_blocks(s);
        int64_t R = 0;
        for (int t = 0; t < G; t++) {
            int64_t len = s->src.n_rows - s->block_perm[s->next_block + t] * s->block_rows;
            R += len < s->block_rows ? len : s->block_rows;
        }
        if (s->stream_end + R > stream_pos) break;
        s->stream_end += R;
        s->next_block += G;
        s->buffer_no++;
    }
    const int64_t p0 = s->stream_end;
    ML_CHECK(ml_stream_fill(s));
    int64_t drop = 0; /* this rank's rows at positions [p0, stream_pos) */
    for (int64_t p = p0; p < stream_pos; p++) drop += (p % s->B) / s->L == s->rank;
    s->q_start += drop;
    s->q_len -= drop;
    s->consumed = stream_pos;
    return ML_OK;
}

int ml_sae_stream_peek(ml_sae_stream *s, int nbatches, const float **rows) {
    if (nbatches > s->peek_batches)
        return ML_FAIL(ML_ERR_ARG, "SAE stream: peek of %d batches exceeds the %d reserved at creation", nbatches,
                       s->peek_batches);
    ML_CHECK(ml_stream_ensure(s, nbatches));
    *rows = s->queue + (size_t)(s->q_start * s->src.d);
    return ML_OK;
}

/* ---- in-memory source ------------------------------------------------------------------ */
static int ml_mem_read(void *ctx, int64_t row0, int64_t count, float *out) {
    const ml_row_memory *m = ctx;
    if (row0 < 0 || row0 + count > m->src.n_rows)
        return ML_FAIL(ML_ERR_ARG, "memory rows [%lld, %lld) outside [0, %lld)", (long long)row0,
                       (long long)(row0 + count), (long long)m->src.n_rows);
    if (count > 0) memcpy(out, m->x + (size_t)(row0 * m->src.d), sizeof(float) * (size_t)(count * m->src.d));
    return ML_OK;
}

static int ml_mem_read_meta(void *ctx, int64_t row0, int64_t count, int32_t *tokens, int64_t *doc_ids,
                            int32_t *positions) {
    const ml_row_memory *m = ctx;
    if (row0 < 0 || row0 + count > m->src.n_rows)
        return ML_FAIL(ML_ERR_ARG, "memory rows [%lld, %lld) outside [0, %lld)", (long long)row0,
                       (long long)(row0 + count), (long long)m->src.n_rows);
    for (int64_t i = 0; i < count; i++) {
        if (tokens) tokens[i] = m->tokens ? m->tokens[row0 + i] : (int32_t)((row0 + i) % 65536);
        if (doc_ids) doc_ids[i] = m->doc_ids ? m->doc_ids[row0 + i] : 0;
        if (positions) positions[i] = m->positions ? m->positions[row0 + i] : (int32_t)(row0 + i);
    }
    return ML_OK;
}

void ml_row_memory_init(ml_row_memory *m, const float *x, int64_t n_rows, int d, const int32_t *tokens,
                        const int64_t *doc_ids, const int32_t *positions) {
    memset(m, 0, sizeof *m);
    m->x = x;
    m->tokens = tokens;
    m->doc_ids = doc_ids;
    m->positions = positions;
    m->src.n_rows = n_rows;
    m->src.d = d;
    m->src.ctx = m;
    m->src.read = ml_mem_read;
    m->src.read_meta = ml_mem_read_meta;
}
