/* mergelens core runtime: status codes, error propagation with tracebacks,
 * tracked allocation (with failure injection), logging, progress, profiling,
 * and MPI failure agreement.
 *
 * Conventions (see docs/ARCHITECTURE.md):
 *  - every fallible function returns int: ML_OK (0) or a negative ml_status;
 *  - ML_FAIL(code, fmt, ...) records a message + the first traceback frame and
 *    returns code; ML_CHECK(call) propagates a failure, adding a frame;
 *  - ml_xxx_create(..., &obj) / ml_xxx_destroy(&obj): destroy tolerates NULL
 *    and sets the caller's handle to NULL.
 */
#ifndef MERGELENS_CORE_H
#define MERGELENS_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <mpi.h>
#include <signal.h>

#define ML_VERSION_STRING "0.1.0"

/* ---- status codes (one table: code, name, message) ---------------------- */
typedef enum {
    ML_OK = 0,
    ML_ERR_NOMEM = -1,       /* allocation failed */
    ML_ERR_IO = -2,          /* file system / read / write failure */
    ML_ERR_FORMAT = -3,      /* file has the wrong format, version or layout */
    ML_ERR_ARG = -4,         /* invalid argument or option value */
    ML_ERR_CONFIG = -5,      /* invalid job file / configuration */
    ML_ERR_MPI = -6,         /* an MPI call failed */
    ML_ERR_HDF5 = -7,        /* an HDF5 call failed */
    ML_ERR_SHAPE = -8,       /* tensor shapes do not agree */
    ML_ERR_NUMERIC = -9,     /* NaN / Inf or other numerical failure */
    ML_ERR_NOTFOUND = -10,   /* a named object does not exist */
    ML_ERR_REMOTE = -11,     /* another rank failed (message is that rank's) */
    ML_ERR_INTERRUPTED = -12,/* stopped by a signal (checkpoint written) */
    ML_ERR_UNSUPPORTED = -13,/* valid but not supported input */
    ML_ERR_INTERNAL = -14,   /* a bug: an invariant was violated */
    ML_ERR_INJECTED = -15,   /* failure injected by a test */
    ML_STATUS_COUNT_ = 16
} ml_status;

const char *ml_status_name(int code);    /* "ML_ERR_IO" */
const char *ml_status_message(int code); /* "file system or I/O failure" */

/* ---- errors with traceback ---------------------------------------------- */
/* Record a new error (clears any previous one) and return code. */
int ml_error_set(int code, const char *file, int line, const char *func,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Add a traceback frame to the current error and return code. */
int ml_error_trace(int code, const char *file, int line, const char *func);
/* The one-line message of the current error ("" if none). */
const char *ml_error_message(void);
/* Replace the message (used when adopting another rank's error). */
void ml_error_adopt(int code, const char *message);
int ml_error_code(void);
/* 1 if the current error went through ml_agree (every rank knows of it). */
int ml_error_agreed(void);
void ml_error_clear(void);
/* Print "error: <message>" and, if verbose, the traceback frames. */
void ml_error_print(FILE *out, int verbose);

#define ML_FAIL(code, ...) \
    ml_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)
#define ML_CHECK(call)                                                         \
    do {                                                                       \
        int ml_rc_ = (call);                                                   \
        if (ml_rc_ != ML_OK)                                                   \
            return ml_error_trace(ml_rc_, __FILE__, __LINE__, __func__);      \
    } while (0)
/* Requires an int variable named `rc` and a cleanup label. */
#define ML_CHECK_GOTO(call, label)                                             \
    do {                                                                       \
        rc = (call);                                                           \
        if (rc != ML_OK) {                                                     \
            ml_error_trace(rc, __FILE__, __LINE__, __func__);                  \
            goto label;                                                        \
        }                                                                      \
    } while (0)
#define ML_FAIL_GOTO(label, code, ...)                                         \
    do {                                                                       \
        rc = ML_FAIL((code), __VA_ARGS__);                                     \
        goto label;                                                            \
    } while (0)
/* Wrap an MPI call: a failure becomes ML_ERR_MPI with MPI's error string. */
int ml_mpi_error(int mpi_rc, const char *call, const char *file, int line,
                 const char *func);
#define ML_CHECK_MPI(call)                                                     \
    do {                                                                       \
        int ml_mrc_ = (call);                                                  \
        if (ml_mrc_ != MPI_SUCCESS)                                            \
            return ml_mpi_error(ml_mrc_, #call, __FILE__, __LINE__, __func__); \
    } while (0)

/* ---- all ranks agree on failure ------------------------------------------ */
/* Collective over comm. Every rank passes its local status. If any rank
 * failed, every rank returns non-OK: the failing rank keeps its own error,
 * the others adopt the message of the lowest failing rank with code
 * ML_ERR_REMOTE. Returns ML_OK on every rank if all succeeded. */
int ml_agree(MPI_Comm comm, int local_status);
/* Broadcast rank 0's ml_malloc'd string: other ranks' *s is freed and replaced. Collective. */
int ml_bcast_string(MPI_Comm comm, char **s);
/* Test hook: if env ML_INJECT_FAIL="<site>:<rank>" names this site and rank,
 * return ML_ERR_INJECTED (with a message), else ML_OK. */
int ml_inject_point(const char *site, int rank);

/* ---- tracked allocation -------------------------------------------------- */
/* 64-byte aligned; zero-size requests return a valid pointer. NULL on failure
 * (after recording ML_ERR_NOMEM with the byte count). Use ML_ALLOC below. */
void *ml_malloc(size_t bytes);
void *ml_calloc(size_t count, size_t size);
void *ml_realloc(void *ptr, size_t bytes); /* alignment not kept */
char *ml_strdup(const char *s);
void ml_free(void *ptr);
/* Allocation bookkeeping and failure injection (for tests). */
long ml_alloc_live(void);              /* allocations not yet freed */
void ml_alloc_fail_at(long n);         /* make the n-th next allocation fail (0 = off) */
long ml_alloc_count(void);             /* allocations attempted since start */
#define ML_ALLOC(ptr, count)                                                   \
    do {                                                                       \
        (ptr) = ml_malloc(sizeof(*(ptr)) * (size_t)(count));                   \
        if (!(ptr))                                                            \
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__); \
    } while (0)

/* ---- logging (rank 0 by default; per-rank debug on request) -------------- */
typedef enum { ML_LOG_ERROR = 0, ML_LOG_WARN, ML_LOG_INFO, ML_LOG_DEBUG } ml_log_level;
void ml_log_init(int rank, int size);   /* reads ML_LOG_LEVEL=error|warn|info|debug */
void ml_log_set_level(ml_log_level level);
void ml_log(ml_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ml_info(...) ml_log(ML_LOG_INFO, __VA_ARGS__)
#define ml_warn(...) ml_log(ML_LOG_WARN, __VA_ARGS__)
#define ml_debug(...) ml_log(ML_LOG_DEBUG, __VA_ARGS__)
double ml_wtime(void); /* seconds, monotonic */

/* ---- progress (rank 0): live bar on a tty, plain lines in batch logs ----- */
typedef struct {
    char label[64];
    double total, done, start, last_print;
    int tty;
    int active; /* rank 0 only */
} ml_progress;
void ml_progress_begin(ml_progress *p, const char *label, double total);
/* extra: optional short text ("loss 3.12"), may be NULL. */
void ml_progress_update(ml_progress *p, double done, const char *extra);
void ml_progress_end(ml_progress *p, const char *extra);

/* ---- profiling events (like PETSc -log_view) ----------------------------- */
/* Nested begin/end pairs; an event accumulates count, time, flops, bytes. */
void ml_prof_begin(const char *event);
void ml_prof_end(const char *event, double flops, double bytes);
void ml_prof_reset(void);
typedef struct {
    char name[48];
    long count;
    double seconds, flops, bytes;
} ml_prof_event;
int ml_prof_events(const ml_prof_event **events); /* returns count */
/* Collective: per event of rank 0's list, time min/max/mean across ranks and
 * flops/bytes summed over ranks. *stats is ml_malloc'd (caller ml_free()s). */
typedef struct {
    char name[48];
    long count;
    double seconds_min, seconds_max, seconds_mean, flops, bytes;
} ml_prof_stat;
int ml_prof_gather(MPI_Comm comm, ml_prof_stat **stats, int *count);
/* Collective: prints the gathered table on rank 0 (GFLOP/s and GB/s use the
 * max time across ranks). */
int ml_prof_summary(MPI_Comm comm, FILE *out);

/* ---- preemption signals (Slurm --signal, scancel, time limit) ------------ */
/* Long commands catch SIGTERM and SIGUSR1 with a flag-setting handler, poll
 * the flag at their step boundaries with ml_signal_agree (collective), write a
 * checkpoint and return ML_ERR_INTERRUPTED; a rerun resumes. */
typedef struct {
    struct sigaction term, usr1; /* the handlers before ml_signals_install */
    int installed;
} ml_signal_guard;
void ml_signals_install(ml_signal_guard *guard);  /* clears the pending flag */
void ml_signals_restore(ml_signal_guard *guard);  /* tolerates a guard never installed */
int ml_signal_pending(void);                      /* 0, SIGTERM or SIGUSR1 caught on this rank */
/* The one encoding of signals in a sum reduction (ml_signal_agree, and the
 * reductions that train, sae and sweep do anyway): every rank of an nranks
 * communicator adds ml_signal_vote(ml_signal_pending(), nranks); then
 * ml_signal_tally(sum, nranks) = SIGTERM if any rank caught SIGTERM, else
 * SIGUSR1 if any caught SIGUSR1, else 0. Exact for any rank count in a double
 * sum, for fewer than 2^24 ranks in a float sum. */
double ml_signal_vote(int sig, int nranks);
int ml_signal_tally(double sum, int nranks);
/* Collective: *agreed_signal = ml_signal_tally of every rank's vote.
 * Fails only if MPI fails. */
int ml_signal_agree(MPI_Comm comm, int *agreed_signal);
/* Linux: a rank started by a launcher (mpirun, srun) gets SIGKILL when its
 * parent dies (prctl PR_SET_PDEATHSIG), and kills itself at once if the parent
 * is already gone; elsewhere, and for a process started without a launcher, a
 * no-op. Call right after MPI_Init (see docs/RELIABILITY.md). */
int ml_signal_die_with_parent(void);
const char *ml_signal_name(int sig); /* "SIGTERM", "SIGUSR1", "signal N" */
/* Testing: the last rank raises SIGUSR1 when `step` == `raise_at` (> 0). */
void ml_signal_raise_at(MPI_Comm comm, int64_t step, int64_t raise_at);

/* ---- small utilities ------------------------------------------------------ */
/* Deterministic counter-based RNG (splitmix64/xoshiro-style). */
typedef struct { uint64_t s[4]; } ml_rng;
void ml_rng_seed(ml_rng *r, uint64_t seed, uint64_t stream);
uint64_t ml_rng_u64(ml_rng *r);
double ml_rng_uniform(ml_rng *r);         /* [0, 1) */
float ml_rng_normal(ml_rng *r);           /* N(0, 1) */
uint64_t ml_rng_below(ml_rng *r, uint64_t n); /* uniform in [0, n) */
/* A stage's seed from the job's seed and the identity of what it seeds
 * (e.g. "model=models/base.h5;hook=blocks.0.mlp.hook_post;arch=topk;k=32;replica=0"):
 * h = FNV-1a-64 of the identity's bytes, then
 * seed = splitmix64(splitmix64(job_seed) ^ h) >> 1, where splitmix64(x) is
 * one SplitMix64 step from state x (z = x + 0x9E3779B97F4A7C15;
 * z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
 * z ^ z>>31). The top bit is cleared so that the seed is a non-negative int64
 * (an HDF5 attribute, a --seed value). Stable: part of the file formats. */
uint64_t ml_seed_derive(uint64_t job_seed, const char *identity);

/* OpenBLAS: the kernel family it chose and its thread count. ml_blas_check
 * returns 1 (and fills advice) when the kernels are weaker than the CPU
 * supports, e.g. Prescott on an AVX-512 CPU. */
const char *ml_blas_corename(void);
int ml_blas_threads(void);
int ml_blas_check(char *advice, size_t n);

/* Make directories like `mkdir -p`. */
int ml_mkdirs(const char *path);
int ml_file_exists(const char *path);

/* ---- MPI collectives with size_t counts (src/core/mpi.c) ----------------- */
/* MPI counts are int. These take size_t element counts and split a transfer
 * into chunks of at most ml_mpi_chunk_elements(type) elements (INT_MAX, and at
 * most 1 GiB per chunk); a transfer that fits is one unchanged MPI call. Each
 * is collective (same count / counts on every rank) and returns ML_OK or
 * ML_ERR_MPI with a message naming the operation, the count and MPI's error
 * string. Datatypes must have lower bound 0 (every predefined type does).
 * docs/RELIABILITY.md "Counts past 2^31". */
int ml_mpi_allreduce(MPI_Comm comm, const void *send /* MPI_IN_PLACE ok */, void *recv, size_t count,
                     MPI_Datatype type, MPI_Op op);
int ml_mpi_bcast(MPI_Comm comm, void *buf, size_t count, MPI_Datatype type, int root);
/* recv (size * count) gets rank r's count elements at r * count. */
int ml_mpi_allgather(MPI_Comm comm, const void *send, void *recv, size_t count, MPI_Datatype type);
/* Rank r contributes counts[r] elements (send, or MPI_IN_PLACE: already at
 * recv + displs[r]); recv gets them at displs[r]. counts and displs (in
 * elements) are read on every rank and must be the same everywhere. A layout
 * whose span exceeds one chunk goes by one chunked broadcast per rank. */
int ml_mpi_allgatherv(MPI_Comm comm, const void *send, void *recv, const size_t *counts, const size_t *displs,
                      MPI_Datatype type);
/* The same, to root only (recv significant at root; counts and displs on
 * every rank). A layout past one chunk goes by chunked point-to-point sends. */
int ml_mpi_gatherv(MPI_Comm comm, const void *send, void *recv, const size_t *counts, const size_t *displs,
                   MPI_Datatype type, int root);
/* Test hook: chunk limit in elements (0 restores the default INT_MAX; values
 * above INT_MAX are clamped). Set it to the same value on every rank. Until
 * it is called, env ML_MPI_CHUNK_LIMIT=N (if set) gives the limit. */
void ml_mpi_set_chunk_limit(size_t elements);
/* The chunk size used for type: min(limit, 1 GiB / extent), at least 1. */
size_t ml_mpi_chunk_elements(MPI_Datatype type);
/* The chunk plan (pure arithmetic, used by every helper): count elements in
 * chunks of at most limit (>= 1) are ceil(count / limit) chunks (0 for count
 * 0); chunk i starts at i * limit (*offset) and has the returned length. */
size_t ml_mpi_chunk_count(size_t count, size_t limit);
size_t ml_mpi_chunk_span(size_t count, size_t limit, size_t i, size_t *offset);

#endif
