/* Tracked, 64-byte aligned allocation with failure injection for tests. */
#include "mergelens/core.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long ml_live;
static atomic_long ml_attempts;
static atomic_long ml_fail_at; /* absolute attempt number that fails; 0 = off */

static int ml_should_fail(void) {
    long n = atomic_fetch_add(&ml_attempts, 1) + 1;
    long f = atomic_load(&ml_fail_at);
    return f != 0 && n == f;
}

void *ml_malloc(size_t bytes) {
    void *p = NULL;
    if (ml_should_fail() || posix_memalign(&p, 64, bytes ? bytes : 1) != 0) {
        ml_error_set(ML_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    atomic_fetch_add(&ml_live, 1);
    return p;
}

void *ml_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        ml_error_set(ML_ERR_NOMEM, __FILE__, __LINE__, __func__, "allocation of %zu x %zu bytes overflows", count,
                     size);
        return NULL;
    }
    void *p = ml_malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *ml_realloc(void *ptr, size_t bytes) {
    if (!ptr) return ml_malloc(bytes);
    if (ml_should_fail()) {
        ml_error_set(ML_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory reallocating %zu bytes", bytes);
        return NULL;
    }
    void *p = realloc(ptr, bytes ? bytes : 1);
    if (!p) ml_error_set(ML_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory reallocating %zu bytes", bytes);
    return p;
}

char *ml_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = ml_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void ml_free(void *ptr) {
    if (!ptr) return;
    atomic_fetch_sub(&ml_live, 1);
    free(ptr);
}

long ml_alloc_live(void) { return atomic_load(&ml_live); }
long ml_alloc_count(void) { return atomic_load(&ml_attempts); }
void ml_alloc_fail_at(long n) { atomic_store(&ml_fail_at, n > 0 ? atomic_load(&ml_attempts) + n : 0); }
