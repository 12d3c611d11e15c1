/* core: MPI collectives with size_t counts (src/core/mpi.c) on 1, 2 and 3 ranks.
 * With the chunk limit at 7 elements every transfer of more than 7 elements
 * goes in chunks (or, for gather(v), by the per-rank fallback); the results
 * must equal the unchunked call bit for bit and a naive reference computed
 * locally from every rank's (deterministic) data. */
#include <float.h>
#include <limits.h>
#include <math.h>

#include "ml_test.h"

static const size_t sizes[] = {0, 1, 6, 7, 8, 1000};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
/* rank r's element i: signed, magnitudes over 2^-10 .. 2^10 (float sums depend on the order) */
static float fval(int r, size_t i) {
    uint64_t u = mix((uint64_t)r << 40 | i);
    return (float)ldexp((double)(u >> 40) / (double)(1 << 24) - 0.5, (int)(u % 21) - 10);
}
static int64_t ival(int r, size_t i) { return (int64_t)mix((uint64_t)r << 40 | i | 1ull << 63); }

static void world(int *rank, int *size) {
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
}

static void test_plan(void **state) {
    (void)state;
    assert_int_equal(ml_mpi_chunk_count(0, 7), 0);
    assert_int_equal(ml_mpi_chunk_count(1, 7), 1);
    assert_int_equal(ml_mpi_chunk_count(7, 7), 1);
    assert_int_equal(ml_mpi_chunk_count(8, 7), 2);
    assert_int_equal(ml_mpi_chunk_count(1000, 7), 143);
    /* a count past 2^31: two int-sized chunks, the second of 6 elements */
    const size_t big = ((size_t)1 << 31) + 5;
    assert_true(big > (size_t)INT_MAX);
    assert_int_equal(ml_mpi_chunk_count(big, INT_MAX), 2);
    size_t off = 99;
    assert_int_equal(ml_mpi_chunk_span(big, INT_MAX, 0, &off), (size_t)INT_MAX);
    assert_int_equal(off, 0);
    assert_int_equal(ml_mpi_chunk_span(big, INT_MAX, 1, &off), 6);
    assert_int_equal(off, (size_t)INT_MAX);
    /* at the float chunk (2^28, 1 GiB): 9 chunks, the spans tile the count exactly */
    const size_t f = (size_t)1 << 28;
    assert_int_equal(ml_mpi_chunk_count(big, f), 9);
    size_t total = 0;
    for (size_t i = 0; i < 9; i++) {
        size_t len = ml_mpi_chunk_span(big, f, i, &off);
        assert_int_equal(off, total);
        assert_true(len >= 1 && len <= f && len <= (size_t)INT_MAX);
        total += len;
    }
    assert_int_equal(total, big);
    assert_int_equal(ml_mpi_chunk_span(big, f, 8, NULL), 5);
    /* 2^40 elements: every chunk fits an int */
    assert_int_equal(ml_mpi_chunk_count((size_t)1 << 40, INT_MAX), 513);
    /* chunk sizes: INT_MAX elements and at most 1 GiB per chunk by default */
    ml_mpi_set_chunk_limit(0);
    assert_int_equal(ml_mpi_chunk_elements(MPI_FLOAT), f);
    assert_int_equal(ml_mpi_chunk_elements(MPI_DOUBLE), f / 2);
    assert_int_equal(ml_mpi_chunk_elements(MPI_BYTE), (size_t)1 << 30);
    ml_mpi_set_chunk_limit(7);
    assert_int_equal(ml_mpi_chunk_elements(MPI_DOUBLE_INT), 7);
    ml_mpi_set_chunk_limit((size_t)1 << 40); /* clamped to INT_MAX */
    assert_int_equal(ml_mpi_chunk_elements(MPI_BYTE), (size_t)1 << 30);
    ml_mpi_set_chunk_limit(0);
}

/* allreduce with the default limit (one call) and with 7 (chunks), in place and not */
static void reduce_both(const void *send, void *unchunked, void *chunked, void *inplace, size_t n, size_t esz,
                        MPI_Datatype t, MPI_Op op) {
    ml_mpi_set_chunk_limit(0);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, send, unchunked, n, t, op));
    ml_mpi_set_chunk_limit(7);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, send, chunked, n, t, op));
    memcpy(inplace, send, n * esz);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, MPI_IN_PLACE, inplace, n, t, op));
    ml_mpi_set_chunk_limit(0);
    assert_memory_equal(chunked, unchunked, n * esz + 1);
    assert_memory_equal(inplace, unchunked, n * esz + 1);
}

static void test_allreduce(void **state) {
    (void)state;
    int rank, size;
    world(&rank, &size);
    for (size_t k = 0; k < NSIZES; k++) {
        const size_t n = sizes[k];
        /* (n + 1): the element past the end must stay untouched */
        float *fs = calloc(n + 1, sizeof(float)), *fu = calloc(n + 1, sizeof(float)),
              *fc = calloc(n + 1, sizeof(float)), *fi = calloc(n + 1, sizeof(float));
        int64_t *is = calloc(n + 1, 8), *iu = calloc(n + 1, 8), *ic = calloc(n + 1, 8), *ii = calloc(n + 1, 8);
        for (size_t i = 0; i < n; i++) {
            fs[i] = fval(rank, i);
            is[i] = ival(rank, i);
        }
        reduce_both(fs, fu, fc, fi, n, sizeof(float), MPI_FLOAT, MPI_SUM);
        reduce_both(is, iu, ic, ii, n, 8, MPI_INT64_T, MPI_MAX);
        for (size_t i = 0; i < n; i++) { /* naive: every rank's values, summed in double */
            double exact = 0, mag = 0;
            int64_t mx = INT64_MIN;
            for (int r = 0; r < size; r++) {
                exact += fval(r, i);
                mag += fabs(fval(r, i));
                mx = ival(r, i) > mx ? ival(r, i) : mx;
            }
            if (!(fabs(fu[i] - exact) <= 2.0 * size * FLT_EPSILON * mag))
                fail_msg("sum[%zu] = %.9g, naive %.9g (n %zu)", i, (double)fu[i], exact, n);
            if (size == 1) assert_memory_equal(&fu[i], &fs[i], sizeof(float));
            assert_true(iu[i] == mx);
        }
        free(fs), free(fu), free(fc), free(fi), free(is), free(iu), free(ic), free(ii);
    }
    /* MPI_DOUBLE_INT (extent 16, size 12) with MPI_MAXLOC, as the feature matcher uses */
    typedef struct { double v; int i; } vi;
    const size_t n = 1000;
    vi *s = calloc(n, sizeof *s), *u = calloc(n, sizeof *u), *c = calloc(n, sizeof *c), *p = calloc(n, sizeof *p);
    for (size_t i = 0; i < n; i++) s[i] = (vi){fval(rank, i), rank};
    ml_mpi_set_chunk_limit(0);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, s, u, n, MPI_DOUBLE_INT, MPI_MAXLOC));
    ml_mpi_set_chunk_limit(7);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, s, c, n, MPI_DOUBLE_INT, MPI_MAXLOC));
    memcpy(p, s, n * sizeof *s);
    ML_ASSERT_OK(ml_mpi_allreduce(MPI_COMM_WORLD, MPI_IN_PLACE, p, n, MPI_DOUBLE_INT, MPI_MAXLOC));
    ml_mpi_set_chunk_limit(0);
    for (size_t i = 0; i < n; i++) {
        int best = 0;
        for (int r = 1; r < size; r++)
            if (fval(r, i) > fval(best, i)) best = r;
        assert_true(u[i].v == fval(best, i) && u[i].i == best);
        assert_true(c[i].v == u[i].v && c[i].i == u[i].i);
        assert_true(p[i].v == u[i].v && p[i].i == u[i].i);
    }
    free(s), free(u), free(c), free(p);
}

static void test_bcast(void **state) {
    (void)state;
    int rank, size;
    world(&rank, &size);
    for (int chunked = 0; chunked < 2; chunked++)
        for (size_t k = 0; k < NSIZES; k++) {
            const size_t n = sizes[k];
            const int root = size - 1;
            ml_mpi_set_chunk_limit(chunked ? 7 : 0);
            float *f = calloc(n + 1, sizeof(float));
            int64_t *v = calloc(n + 1, 8);
            for (size_t i = 0; i < n; i++) {
                f[i] = rank == root ? fval(root, i) : -1.0f;
                v[i] = rank == 0 ? ival(0, i) : 7;
            }
            ML_ASSERT_OK(ml_mpi_bcast(MPI_COMM_WORLD, f, n, MPI_FLOAT, root));
            ML_ASSERT_OK(ml_mpi_bcast(MPI_COMM_WORLD, v, n, MPI_INT64_T, 0));
            for (size_t i = 0; i < n; i++) {
                float want = fval(root, i);
                assert_memory_equal(&f[i], &want, sizeof want);
                assert_true(v[i] == ival(0, i));
            }
            assert_true(f[n] == 0.0f && v[n] == 0);
            free(f), free(v);
        }
    ml_mpi_set_chunk_limit(0);
}

/* Layout of pattern `shift`: rank r contributes sizes[(r + shift) % NSIZES]
 * elements (shift 0: rank 0 contributes none) at displs with a gap of r + 1
 * elements before each block; returns the span. */
static size_t layout(int size, int shift, size_t *counts, size_t *displs) {
    size_t at = 0;
    for (int r = 0; r < size; r++) {
        at += (size_t)r + 1;
        counts[r] = sizes[(size_t)(r + shift) % NSIZES];
        displs[r] = at;
        at += counts[r];
    }
    return at + 1;
}

/* The naive gathered buffer: rank r's block at displs[r], gaps -7. */
static int64_t *expected(int size, const size_t *counts, const size_t *displs, size_t span) {
    int64_t *e = malloc(span * 8);
    for (size_t i = 0; i < span; i++) e[i] = -7;
    for (int r = 0; r < size; r++)
        for (size_t i = 0; i < counts[r]; i++) e[displs[r] + i] = ival(r, i);
    return e;
}

static void test_allgatherv(void **state) {
    (void)state;
    int rank, size;
    world(&rank, &size);
    assert_true(size <= 3);
    size_t counts[3], displs[3];
    for (int shift = 0; shift < (int)NSIZES; shift++) {
        size_t span = layout(size, shift, counts, displs);
        int64_t *want = expected(size, counts, displs, span);
        int64_t *mine = malloc((counts[rank] + 1) * 8), *got[2][2];
        for (size_t i = 0; i < counts[rank]; i++) mine[i] = ival(rank, i);
        for (int chunked = 0; chunked < 2; chunked++)
            for (int inplace = 0; inplace < 2; inplace++) {
                int64_t *g = got[chunked][inplace] = malloc(span * 8);
                for (size_t i = 0; i < span; i++) g[i] = -7;
                if (inplace) memcpy(g + displs[rank], mine, counts[rank] * 8);
                ml_mpi_set_chunk_limit(chunked ? 7 : 0);
                ML_ASSERT_OK(ml_mpi_allgatherv(MPI_COMM_WORLD, inplace ? MPI_IN_PLACE : mine, g, counts, displs,
                                               MPI_INT64_T));
                assert_memory_equal(g, want, span * 8);
            }
        ml_mpi_set_chunk_limit(0);
        for (int c = 0; c < 2; c++)
            for (int p = 0; p < 2; p++) free(got[c][p]);
        free(mine), free(want);
    }
    /* allgather of uniform float blocks: chunked equals unchunked equals naive */
    for (size_t k = 0; k < NSIZES; k++) {
        const size_t n = sizes[k], all = n * (size_t)size;
        float *mine = malloc((n + 1) * sizeof(float)), *u = calloc(all + 1, sizeof(float)),
              *c = calloc(all + 1, sizeof(float)), *want = calloc(all + 1, sizeof(float));
        for (size_t i = 0; i < n; i++) mine[i] = fval(rank, i);
        for (int r = 0; r < size; r++)
            for (size_t i = 0; i < n; i++) want[(size_t)r * n + i] = fval(r, i);
        ml_mpi_set_chunk_limit(0);
        ML_ASSERT_OK(ml_mpi_allgather(MPI_COMM_WORLD, mine, u, n, MPI_FLOAT));
        ml_mpi_set_chunk_limit(7);
        ML_ASSERT_OK(ml_mpi_allgather(MPI_COMM_WORLD, mine, c, n, MPI_FLOAT));
        ml_mpi_set_chunk_limit(0);
        assert_memory_equal(u, want, (all + 1) * sizeof(float));
        assert_memory_equal(c, want, (all + 1) * sizeof(float));
        free(mine), free(u), free(c), free(want);
    }
}

static void test_gatherv(void **state) {
    (void)state;
    int rank, size;
    world(&rank, &size);
    assert_true(size <= 3);
    size_t counts[3], displs[3];
    for (int shift = 0; shift < (int)NSIZES; shift++)
        for (int root = 0; root < size; root += size > 1 ? size - 1 : 1) {
            size_t span = layout(size, shift, counts, displs);
            int64_t *want = expected(size, counts, displs, span);
            int64_t *mine = malloc((counts[rank] + 1) * 8);
            for (size_t i = 0; i < counts[rank]; i++) mine[i] = ival(rank, i);
            for (int chunked = 0; chunked < 2; chunked++)
                for (int pass = 0; pass < 2; pass++) {
                    const int inplace = pass && rank == root; /* MPI_IN_PLACE is the root's option */
                    int64_t *g = malloc(span * 8);
                    for (size_t i = 0; i < span; i++) g[i] = -7;
                    if (inplace) memcpy(g + displs[rank], mine, counts[rank] * 8);
                    ml_mpi_set_chunk_limit(chunked ? 7 : 0);
                    ML_ASSERT_OK(ml_mpi_gatherv(MPI_COMM_WORLD, inplace ? MPI_IN_PLACE : mine, g, counts, displs,
                                                MPI_INT64_T, root));
                    if (rank == root) assert_memory_equal(g, want, span * 8);
                    else
                        for (size_t i = 0; i < span; i++) assert_true(g[i] == -7); /* untouched */
                    free(g);
                }
            ml_mpi_set_chunk_limit(0);
            free(mine), free(want);
        }
}

/* Failures: an unsupported datatype is refused on every rank; an MPI error
 * code (MPI_ERRORS_RETURN) becomes one line naming the call and MPI's text. */
static void test_errors(void **state) {
    (void)state;
    MPI_Datatype shifted;
    MPI_Type_create_resized(MPI_FLOAT, -4, 8, &shifted);
    MPI_Type_commit(&shifted);
    float x[4] = {0};
    ML_ASSERT_FAILS(ml_mpi_bcast(MPI_COMM_WORLD, x, 1, shifted, 0), ML_ERR_ARG, "lower bound -4");
    MPI_Type_free(&shifted);
    MPI_Comm comm;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int size;
    MPI_Comm_size(comm, &size);
    /* an invalid root is refused by MPI's argument check on every rank */
    ML_ASSERT_FAILS(ml_mpi_bcast(comm, x, 4, MPI_FLOAT, size), ML_ERR_MPI, "MPI_Bcast of 4 elements failed: ");
    char text[MPI_MAX_ERROR_STRING];
    int len;
    MPI_Error_string(MPI_ERR_ROOT, text, &len);
    if (!strstr(ml_error_message(), text)) fail_msg("'%s' lacks MPI's '%s'", ml_error_message(), text);
    assert_null(strchr(ml_error_message(), '\n'));
    ml_error_clear();
    MPI_Comm_free(&comm);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),       cmocka_unit_test(test_allreduce), cmocka_unit_test(test_bcast),
        cmocka_unit_test(test_allgatherv), cmocka_unit_test(test_gatherv),   cmocka_unit_test(test_errors),
    };
    return ml_test_run(argc, argv, "core_mpi", tests, sizeof tests / sizeof tests[0]);
}
