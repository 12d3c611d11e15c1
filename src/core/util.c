/* Deterministic RNG (xoshiro256** seeded by splitmix64) and file helpers. */
#include "mergelens/core.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t ml_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ml_rng_seed(ml_rng *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++) r->s[i] = ml_splitmix(&x);
}

uint64_t ml_seed_derive(uint64_t job_seed, const char *identity) {
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a 64 */
    for (const unsigned char *p = (const unsigned char *)(identity ? identity : ""); *p; p++)
        h = (h ^ *p) * 0x100000001B3ull;
    uint64_t x = job_seed, a = ml_splitmix(&x);
    x = a ^ h;
    return ml_splitmix(&x) >> 1;
}

static inline uint64_t ml_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ml_rng_u64(ml_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = ml_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ml_rotl(s[3], 45);
    return result;
}

double ml_rng_uniform(ml_rng *r) { return (double)(ml_rng_u64(r) >> 11) * 0x1.0p-53; }

float ml_rng_normal(ml_rng *r) {
    double u1 = ml_rng_uniform(r), u2 = ml_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t ml_rng_below(ml_rng *r, uint64_t n) {
    if (n == 0) return 0;
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
    do x = ml_rng_u64(r);
    while (x >= lim);
    return x % n;
}

int ml_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int ml_mkdirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return ML_FAIL(ML_ERR_ARG, "%s: path too long or empty", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return ML_FAIL(ML_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return ML_FAIL(ML_ERR_IO, "%s: not a directory", path);
    return ML_OK;
}

/* Rank 0's string to every rank (others' *s is replaced). Collective. */
int ml_bcast_string(MPI_Comm comm, char **s) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    long len = rank == 0 && *s ? (long)strlen(*s) : -1;
    ML_CHECK_MPI(MPI_Bcast(&len, 1, MPI_LONG, 0, comm));
    if (len < 0) return ML_FAIL(ML_ERR_INTERNAL, "ml_bcast_string: rank 0 has no string to broadcast");
    if (rank != 0) {
        ml_free(*s);
        *s = ml_malloc((size_t)len + 1);
    }
    int ok = *s != NULL, all = 0;
    ML_CHECK_MPI(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm));
    if (!all) return ml_agree(comm, ok ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "out of memory"));
    ML_CHECK_MPI(MPI_Bcast(*s, (int)len + 1, MPI_CHAR, 0, comm));
    return ML_OK;
}
