/* Open-addressing hash maps used by the tokenizer (pair ranks, vocabulary,
 * chunk cache) and the BPE trainer (pair counts, word counts). */
#include "internal.h"

#include <string.h>

int ml_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return ML_OK;
    size_t nc = *cap > 512 ? *cap : 512;
    while (nc < need) nc *= 2;
    void *np = ml_realloc(*p, nc * elem);
    if (!np) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    *p = np;
    *cap = nc;
    return ML_OK;
}

int ml_i64_push(ml_i64vec *a, int64_t x) {
    if (a->n == a->cap) ML_CHECK(ml_grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v));
    a->v[a->n++] = x;
    return ML_OK;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int ml_u64map_init(ml_u64map *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expect * 2);
    m->keys = ml_malloc(m->cap * sizeof *m->keys);
    m->vals = ml_malloc(m->cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        ml_u64map_free(m);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    memset(m->keys, 0xff, m->cap * sizeof *m->keys);
    return ML_OK;
}

void ml_u64map_free(ml_u64map *m) {
    ml_free(m->keys);
    ml_free(m->vals);
    memset(m, 0, sizeof *m);
}

static int u64map_grow(ml_u64map *m) {
    ml_u64map nm;
    ML_CHECK(ml_u64map_init(&nm, m->cap));
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == ML_MAP_EMPTY) continue;
        size_t mask = nm.cap - 1, j = (size_t)ml_hash64(m->keys[i]) & mask;
        while (nm.keys[j] != ML_MAP_EMPTY) j = (j + 1) & mask;
        nm.keys[j] = m->keys[i];
        nm.vals[j] = m->vals[i];
    }
    nm.n = m->n;
    ml_u64map_free(m);
    *m = nm;
    return ML_OK;
}

int ml_u64map_slot(ml_u64map *m, uint64_t key, int64_t *slot) {
    if ((m->n + 1) * 2 > m->cap) ML_CHECK(u64map_grow(m));
    size_t mask = m->cap - 1, i = (size_t)ml_hash64(key) & mask;
    while (m->keys[i] != ML_MAP_EMPTY) {
        if (m->keys[i] == key) {
            *slot = (int64_t)i;
            return ML_OK;
        }
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->vals[i] = 0;
    m->n++;
    *slot = (int64_t)i;
    return ML_OK;
}

/* ---- byte-string map -------------------------------------------------------- */
uint64_t ml_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ ml_hash64(w)) * 0x9FB21C651E98DF25ull;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ ml_hash64(w ^ ((uint64_t)n << 56))) * 0x9FB21C651E98DF25ull;
    return h ^ (h >> 29);
}

int ml_bmap_init(ml_bmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expect * 2);
    m->ecap = expect > 16 ? expect : 16;
    m->arena_cap = m->ecap * 8;
    m->table = ml_malloc(m->cap * sizeof *m->table);
    m->e = ml_malloc(m->ecap * sizeof *m->e);
    m->arena = ml_malloc(m->arena_cap);
    if (!m->table || !m->e || !m->arena) {
        ml_bmap_free(m);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    memset(m->table, 0xff, m->cap * sizeof *m->table);
    return ML_OK;
}

void ml_bmap_free(ml_bmap *m) {
    ml_free(m->table);
    ml_free(m->e);
    ml_free(m->arena);
    memset(m, 0, sizeof *m);
}

void ml_bmap_clear(ml_bmap *m) {
    memset(m->table, 0xff, m->cap * sizeof *m->table);
    m->n = 0;
    m->arena_len = 0;
}

int64_t ml_bmap_find(const ml_bmap *m, const char *key, size_t len, uint64_t hash) {
    size_t mask = m->cap - 1, i = (size_t)hash & mask;
    for (;;) {
        int32_t k = m->table[i];
        if (k < 0) return -1;
        const ml_bentry *e = &m->e[k];
        if (e->hash == hash && e->key_len == len && memcmp(m->arena + e->key_off, key, len) == 0) return k;
        i = (i + 1) & mask;
    }
}

static int bmap_rehash(ml_bmap *m, size_t ncap) {
    int32_t *nt = ml_malloc(ncap * sizeof *nt);
    if (!nt) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    memset(nt, 0xff, ncap * sizeof *nt);
    size_t mask = ncap - 1;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)m->e[k].hash & mask;
        while (nt[i] >= 0) i = (i + 1) & mask;
        nt[i] = (int32_t)k;
    }
    ml_free(m->table);
    m->table = nt;
    m->cap = ncap;
    return ML_OK;
}

int ml_bmap_insert(ml_bmap *m, const char *key, size_t len, uint64_t hash, int64_t *index, int *inserted) {
    int64_t k = ml_bmap_find(m, key, len, hash);
    if (inserted) *inserted = k < 0;
    if (k >= 0) {
        *index = k;
        return ML_OK;
    }
    if (m->n >= (size_t)INT32_MAX - 1) return ML_FAIL(ML_ERR_NOMEM, "hash map exceeds 2^31 entries");
    if ((m->n + 1) * 2 > m->cap) ML_CHECK(bmap_rehash(m, m->cap * 2));
    if (m->n == m->ecap) {
        size_t nc = m->ecap * 2;
        ml_bentry *ne = ml_realloc(m->e, nc * sizeof *ne);
        if (!ne) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        m->e = ne;
        m->ecap = nc;
    }
    if (m->arena_len + len > m->arena_cap) {
        size_t nc = m->arena_cap * 2;
        while (nc < m->arena_len + len) nc *= 2;
        char *na = ml_realloc(m->arena, nc);
        if (!na) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        m->arena = na;
        m->arena_cap = nc;
    }
    memcpy(m->arena + m->arena_len, key, len);
    ml_bentry *e = &m->e[m->n];
    e->hash = hash;
    e->key_off = (int64_t)m->arena_len;
    e->key_len = (uint32_t)len;
    e->val = e->val2 = 0;
    m->arena_len += len;
    size_t mask = m->cap - 1, i = (size_t)hash & mask;
    while (m->table[i] >= 0) i = (i + 1) & mask;
    m->table[i] = (int32_t)m->n;
    *index = (int64_t)m->n++;
    return ML_OK;
}
