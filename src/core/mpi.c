/* MPI collectives with size_t counts.
 *
 * MPI takes element counts and displacements as int, so a buffer of more than
 * INT_MAX elements (an SAE of D 4096 x 2^19 latents has 2^31 decoder weights)
 * cannot go in one call. These helpers split a transfer into chunks of at most
 * ml_mpi_chunk_elements(type) elements: the test-settable limit (INT_MAX by
 * default) and at most ML_MPI_CHUNK_BYTES per chunk, so no single message is
 * larger than 1 GiB (some transports misbehave past 2 GiB). A transfer that
 * fits in one chunk is one unchanged MPI call, so today's sizes run exactly
 * as before.
 *
 *  - allreduce / bcast: consecutive chunks, each one collective call. A
 *    reduction is element-wise, so every element is reduced over the same
 *    ranks with the same operation whatever the chunking.
 *  - allgather(v): one call when the whole receive layout (largest
 *    displs[r] + counts[r]) fits one chunk; otherwise rank r's block goes to
 *    everyone by a chunked broadcast rooted at r, for r = 0 .. size-1 (no
 *    int displacement is ever formed; the root's own block is copied locally).
 *  - gatherv: one call when the layout fits; otherwise the root receives each
 *    rank's block in chunks by point-to-point messages (tag ML_MPI_TAG, rank
 *    order; message order between two ranks is guaranteed by MPI).
 *
 * Every rank computes the same plan from the same counts, so every rank enters
 * the same sequence of calls. An MPI failure in the middle of a transfer is
 * returned by the rank that saw it (after it the communicator is in MPI's
 * undefined error state, as for any failed collective). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/core.h"

#define ML_MPI_CHUNK_BYTES ((size_t)1 << 30)
#define ML_MPI_TAG 19788 /* "ML"; below the guaranteed MPI_TAG_UB of 32767 */
#define ML_MPI_STACK_RANKS 256

static size_t ml_mpi_limit = INT_MAX;
static int ml_mpi_limit_set; /* by ml_mpi_set_chunk_limit or ML_MPI_CHUNK_LIMIT */

void ml_mpi_set_chunk_limit(size_t elements) {
    ml_mpi_limit = elements == 0 || elements > (size_t)INT_MAX ? (size_t)INT_MAX : elements;
    ml_mpi_limit_set = 1;
}

/* Test hook for whole commands: env ML_MPI_CHUNK_LIMIT=N (same on every rank)
 * chunks every transfer at N elements, e.g. to run a module's tests through
 * the chunked paths. */
static size_t ml_mpi_limit_now(void) {
    if (!ml_mpi_limit_set) {
        const char *e = getenv("ML_MPI_CHUNK_LIMIT");
        ml_mpi_set_chunk_limit(e && *e ? (size_t)strtoull(e, NULL, 10) : 0);
    }
    return ml_mpi_limit;
}

size_t ml_mpi_chunk_count(size_t count, size_t limit) {
    if (limit == 0) limit = 1;
    return count / limit + (count % limit != 0);
}

size_t ml_mpi_chunk_span(size_t count, size_t limit, size_t i, size_t *offset) {
    if (limit == 0) limit = 1;
    size_t off = i < ml_mpi_chunk_count(count, limit) ? i * limit : count;
    if (offset) *offset = off;
    return count - off < limit ? count - off : limit;
}

/* Extent of type (lower bound must be 0) and its chunk size in elements. */
static int ml_mpi_plan(MPI_Datatype type, const char *op, size_t *extent, size_t *chunk) {
    MPI_Aint lb = 0, ext = 0;
    int mrc = MPI_Type_get_extent(type, &lb, &ext);
    if (mrc != MPI_SUCCESS) return ml_mpi_error(mrc, "MPI_Type_get_extent", __FILE__, __LINE__, __func__);
    if (lb != 0 || ext <= 0)
        return ML_FAIL(ML_ERR_ARG, "%s: datatype with lower bound %ld and extent %ld is not supported", op, (long)lb,
                       (long)ext);
    *extent = (size_t)ext;
    size_t by_bytes = ML_MPI_CHUNK_BYTES / (size_t)ext;
    if (by_bytes == 0) by_bytes = 1;
    const size_t limit = ml_mpi_limit_now();
    *chunk = limit < by_bytes ? limit : by_bytes;
    return ML_OK;
}

size_t ml_mpi_chunk_elements(MPI_Datatype type) {
    size_t ext = 1, chunk = 1;
    if (ml_mpi_plan(type, "ml_mpi_chunk_elements", &ext, &chunk) != ML_OK) return 0;
    return chunk;
}

/* p + off elements of ext bytes (no arithmetic on a NULL of an empty buffer). */
static void *ml_at(const void *p, size_t off, size_t ext) {
    return off ? (void *)((const char *)p + off * ext) : (void *)p;
}

/* One-line message: "MPI_Allreduce of N elements (chunk i of n) failed: <MPI's string>". */
static int ml_mpi_fail_at(int mrc, const char *op, size_t count, size_t i, size_t n, int line, const char *func) {
    char call[160];
    if (n > 1)
        snprintf(call, sizeof call, "%s of %zu elements (chunk %zu of %zu)", op, count, i + 1, n);
    else
        snprintf(call, sizeof call, "%s of %zu elements", op, count);
    return ml_mpi_error(mrc, call, __FILE__, line, func);
}
#define ml_mpi_fail(mrc, op, count, i, n) ml_mpi_fail_at((mrc), (op), (count), (i), (n), __LINE__, __func__)

int ml_mpi_allreduce(MPI_Comm comm, const void *send, void *recv, size_t count, MPI_Datatype type, MPI_Op op) {
    size_t ext = 1, chunk = 1;
    ML_CHECK(ml_mpi_plan(type, "MPI_Allreduce", &ext, &chunk));
    const size_t n = count <= chunk ? 1 : ml_mpi_chunk_count(count, chunk);
    for (size_t i = 0; i < n; i++) {
        size_t off, m = ml_mpi_chunk_span(count, chunk, i, &off);
        const void *s = send == MPI_IN_PLACE ? MPI_IN_PLACE : ml_at(send, off, ext);
        int mrc = MPI_Allreduce(s, ml_at(recv, off, ext), (int)m, type, op, comm);
        if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Allreduce", count, i, n);
    }
    return ML_OK;
}

/* The chunked broadcast, given the plan. */
static int ml_mpi_bcast_planned(MPI_Comm comm, void *buf, size_t count, MPI_Datatype type, int root, size_t ext,
                                size_t chunk) {
    const size_t n = count <= chunk ? 1 : ml_mpi_chunk_count(count, chunk);
    for (size_t i = 0; i < n; i++) {
        size_t off, m = ml_mpi_chunk_span(count, chunk, i, &off);
        int mrc = MPI_Bcast(ml_at(buf, off, ext), (int)m, type, root, comm);
        if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Bcast", count, i, n);
    }
    return ML_OK;
}

int ml_mpi_bcast(MPI_Comm comm, void *buf, size_t count, MPI_Datatype type, int root) {
    size_t ext = 1, chunk = 1;
    ML_CHECK(ml_mpi_plan(type, "MPI_Bcast", &ext, &chunk));
    return ml_mpi_bcast_planned(comm, buf, count, type, root, ext, chunk);
}

/* Rank r's block (counts[r] at displs[r], or uniform at r * uniform when
 * counts is NULL) to every rank by a chunked broadcast rooted at r. */
static int ml_mpi_gather_by_bcasts(MPI_Comm comm, const void *send, void *recv, const size_t *counts,
                                   const size_t *displs, size_t uniform, MPI_Datatype type, size_t ext,
                                   size_t chunk) {
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    size_t mine = counts ? counts[rank] : uniform, at = displs ? displs[rank] : (size_t)rank * uniform;
    if (send != MPI_IN_PLACE && mine) memcpy(ml_at(recv, at, ext), send, mine * ext);
    for (int r = 0; r < size; r++) {
        size_t c = counts ? counts[r] : uniform, d = displs ? displs[r] : (size_t)r * uniform;
        if (c) ML_CHECK(ml_mpi_bcast_planned(comm, ml_at(recv, d, ext), c, type, r, ext, chunk));
    }
    return ML_OK;
}

/* The plan of a v-collective: the chunk, and int copies of counts / displs
 * when the whole layout fits one chunk (fits), in stack (size <=
 * ML_MPI_STACK_RANKS) or in heap (ml_free'd by the caller). The decision is the
 * same on every rank; an allocation failure is agreed. */
typedef struct {
    size_t ext, chunk;
    int rank, size, fits;
    int stack[2 * ML_MPI_STACK_RANKS], *heap, *ic, *id;
} ml_mpi_vplan;

static int ml_mpi_vplan_make(MPI_Comm comm, MPI_Datatype type, const char *op, const size_t *counts,
                             const size_t *displs, ml_mpi_vplan *v) {
    v->heap = NULL;
    ML_CHECK(ml_mpi_plan(type, op, &v->ext, &v->chunk));
    MPI_Comm_rank(comm, &v->rank);
    MPI_Comm_size(comm, &v->size);
    const size_t chunk = v->chunk;
    size_t span = 0;
    for (int r = 0; r < v->size; r++)
        if (counts[r] > chunk || displs[r] > chunk - counts[r]) span = chunk + 1;
        else if (displs[r] + counts[r] > span) span = displs[r] + counts[r];
    v->fits = span <= chunk;
    if (!v->fits) return ML_OK;
    int *buf = v->stack;
    if (v->size > ML_MPI_STACK_RANKS) {
        v->heap = buf = ml_malloc(2 * sizeof(int) * (size_t)v->size);
        int rc = ml_agree(comm, buf ? ML_OK : ML_ERR_NOMEM);
        if (rc != ML_OK) {
            ml_free(v->heap);
            v->heap = NULL;
            return ml_error_trace(rc, __FILE__, __LINE__, __func__);
        }
    }
    v->ic = buf;
    v->id = buf + v->size;
    for (int r = 0; r < v->size; r++) {
        v->ic[r] = (int)counts[r];
        v->id[r] = (int)displs[r];
    }
    return ML_OK;
}

int ml_mpi_allgather(MPI_Comm comm, const void *send, void *recv, size_t count, MPI_Datatype type) {
    size_t ext = 1, chunk = 1;
    ML_CHECK(ml_mpi_plan(type, "MPI_Allgather", &ext, &chunk));
    int size;
    MPI_Comm_size(comm, &size);
    if (count <= chunk / (size_t)size) {
        int mrc = MPI_Allgather(send, (int)count, type, recv, (int)count, type, comm);
        if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Allgather", count, 0, 1);
        return ML_OK;
    }
    return ml_mpi_gather_by_bcasts(comm, send, recv, NULL, NULL, count, type, ext, chunk);
}

int ml_mpi_allgatherv(MPI_Comm comm, const void *send, void *recv, const size_t *counts, const size_t *displs,
                      MPI_Datatype type) {
    ml_mpi_vplan v;
    ML_CHECK(ml_mpi_vplan_make(comm, type, "MPI_Allgatherv", counts, displs, &v));
    if (!v.fits) return ml_mpi_gather_by_bcasts(comm, send, recv, counts, displs, 0, type, v.ext, v.chunk);
    int mrc = send == MPI_IN_PLACE ? MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, v.ic, v.id, type, comm)
                                   : MPI_Allgatherv(send, v.ic[v.rank], type, recv, v.ic, v.id, type, comm);
    ml_free(v.heap);
    if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Allgatherv", counts[v.rank], 0, 1);
    return ML_OK;
}

int ml_mpi_gatherv(MPI_Comm comm, const void *send, void *recv, const size_t *counts, const size_t *displs,
                   MPI_Datatype type, int root) {
    ml_mpi_vplan v;
    ML_CHECK(ml_mpi_vplan_make(comm, type, "MPI_Gatherv", counts, displs, &v));
    const int rank = v.rank, size = v.size;
    const size_t ext = v.ext, chunk = v.chunk;
    if (v.fits) {
        int mrc = MPI_Gatherv(send, send == MPI_IN_PLACE ? 0 : v.ic[rank], type, recv, v.ic, v.id, type, root, comm);
        ml_free(v.heap);
        if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Gatherv", counts[rank], 0, 1);
        return ML_OK;
    }
    if (rank != root) {
        const size_t n = ml_mpi_chunk_count(counts[rank], chunk);
        for (size_t i = 0; i < n; i++) {
            size_t off, m = ml_mpi_chunk_span(counts[rank], chunk, i, &off);
            int mrc = MPI_Send(ml_at(send, off, ext), (int)m, type, root, ML_MPI_TAG, comm);
            if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Gatherv (send)", counts[rank], i, n);
        }
        return ML_OK;
    }
    if (send != MPI_IN_PLACE && counts[rank]) memcpy(ml_at(recv, displs[rank], ext), send, counts[rank] * ext);
    for (int r = 0; r < size; r++) {
        const size_t n = r == root ? 0 : ml_mpi_chunk_count(counts[r], chunk);
        for (size_t i = 0; i < n; i++) {
            size_t off, m = ml_mpi_chunk_span(counts[r], chunk, i, &off);
            int mrc = MPI_Recv(ml_at(recv, displs[r] + off, ext), (int)m, type, r, ML_MPI_TAG, comm,
                               MPI_STATUS_IGNORE);
            if (mrc != MPI_SUCCESS) return ml_mpi_fail(mrc, "MPI_Gatherv (receive)", counts[r], i, n);
        }
    }
    return ML_OK;
}
