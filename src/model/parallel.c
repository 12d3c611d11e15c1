/* A tiny fork-join pool for the model's non-GEMM loops.
 *
 * OpenBLAS threads the matrix products; everything else (norms, SwiGLU,
 * softmax cross-entropy, the attention blocks, AdamW) would run on one core
 * and leave the others idle. ml_par_for splits a loop statically over as many
 * threads as OpenBLAS uses (ml_blas_threads, i.e. OPENBLAS_NUM_THREADS),
 * so with 1 thread nothing changes. Workers sleep on a condition variable
 * between loops (no spinning that would compete with OpenBLAS's threads).
 * Static contiguous ranges: each index is processed by exactly one thread;
 * callers keep reductions independent of the split. */
#include "model_internal.h"

#include <pthread.h>
#include <stdatomic.h>

#define ML_PAR_MAX 64

static struct {
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    int nworkers;   /* worker threads created (tid 1..nworkers) */
    unsigned gen;   /* bumped for every loop */
    int pending;    /* workers still running the current loop */
    ml_range_fn fn;
    void *ctx;
    int n, nthr;
    unsigned born[ML_PAR_MAX]; /* generation current when worker tid was created */
} ml_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, NULL, 0,
             0, {0}};
static atomic_int ml_pool_busy;

int ml_par_threads(void) {
    int t = ml_blas_threads();
    return t < 1 ? 1 : t > ML_PAR_MAX ? ML_PAR_MAX : t;
}

static void *ml_pool_worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    pthread_mutex_lock(&ml_pool.mu);
    unsigned seen = ml_pool.born[tid]; /* not ml_pool.gen: the first loop may already have been posted */
    for (;;) {
        while (ml_pool.gen == seen) pthread_cond_wait(&ml_pool.start, &ml_pool.mu);
        seen = ml_pool.gen;
        ml_range_fn fn = ml_pool.fn;
        void *ctx = ml_pool.ctx;
        const int n = ml_pool.n, nthr = ml_pool.nthr;
        pthread_mutex_unlock(&ml_pool.mu);
        if (tid < nthr) fn(ctx, (int)((int64_t)n * tid / nthr), (int)((int64_t)n * (tid + 1) / nthr), tid);
        pthread_mutex_lock(&ml_pool.mu);
        if (--ml_pool.pending == 0) pthread_cond_signal(&ml_pool.done);
    }
    return NULL;
}

/* A forked child has none of the parent's workers. */
static void ml_pool_after_fork(void) {
    pthread_mutex_init(&ml_pool.mu, NULL);
    pthread_cond_init(&ml_pool.start, NULL);
    pthread_cond_init(&ml_pool.done, NULL);
    ml_pool.nworkers = 0;
    atomic_store(&ml_pool_busy, 0);
}

/* Grow the pool to `want` workers (called with the mutex held); returns the count. */
static int ml_pool_grow(int want) {
    static int atfork;
    if (!atfork) atfork = pthread_atfork(NULL, NULL, ml_pool_after_fork) == 0;
    while (ml_pool.nworkers < want && ml_pool.nworkers + 1 < ML_PAR_MAX) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ml_pool.born[ml_pool.nworkers + 1] = ml_pool.gen;
        int rc = pthread_create(&th, &attr, ml_pool_worker, (void *)(intptr_t)(ml_pool.nworkers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* run with what we have */
        ml_pool.nworkers++;
    }
    return ml_pool.nworkers;
}

void ml_par_for(int n, ml_range_fn fn, void *ctx, int max_threads) {
    int nthr = ml_par_threads();
    if (max_threads > 0 && nthr > max_threads) nthr = max_threads;
    if (nthr > n) nthr = n;
    int expected = 0;
    if (nthr <= 1 || !atomic_compare_exchange_strong(&ml_pool_busy, &expected, 1)) {
        if (n > 0) fn(ctx, 0, n, 0); /* serial (also when another thread uses the pool) */
        return;
    }
    pthread_mutex_lock(&ml_pool.mu);
    const int have = ml_pool_grow(nthr - 1);
    if (nthr > have + 1) nthr = have + 1;
    ml_pool.fn = fn;
    ml_pool.ctx = ctx;
    ml_pool.n = n;
    ml_pool.nthr = nthr;
    ml_pool.pending = have;
    ml_pool.gen++;
    pthread_cond_broadcast(&ml_pool.start);
    pthread_mutex_unlock(&ml_pool.mu);
    fn(ctx, 0, (int)((int64_t)n / nthr), 0);
    pthread_mutex_lock(&ml_pool.mu);
    while (ml_pool.pending > 0) pthread_cond_wait(&ml_pool.done, &ml_pool.mu);
    pthread_mutex_unlock(&ml_pool.mu);
    atomic_store(&ml_pool_busy, 0);
}
