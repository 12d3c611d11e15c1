/* Internals shared by the files of the data module (not installed). */
#ifndef MERGELENS_DATA_INTERNAL_H
#define MERGELENS_DATA_INTERNAL_H

#include "mergelens/data.h"

/* ---- growable arrays ------------------------------------------------------ */
/* Make room for `need` elements of `elem` bytes in *p (capacity *cap
 * elements, doubling from at least 1024). */
int ml_grow(void **p, size_t *cap, size_t need, size_t elem);
typedef struct {
    int64_t *v;
    size_t n, cap;
} ml_i64vec;
int ml_i64_push(ml_i64vec *a, int64_t x);

/* ---- u64 -> i64 hash map (open addressing; no deletion) ------------------ */
#define ML_MAP_EMPTY UINT64_MAX
typedef struct {
    uint64_t *keys;
    int64_t *vals;
    size_t cap, n; /* cap is a power of two */
} ml_u64map;
int ml_u64map_init(ml_u64map *m, size_t expect);
void ml_u64map_free(ml_u64map *m);
/* Slot of key, or -1. */
static inline uint64_t ml_hash64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}
static inline int64_t ml_u64map_find(const ml_u64map *m, uint64_t key) {
    size_t mask = m->cap - 1, i = (size_t)ml_hash64(key) & mask;
    for (;;) {
        if (m->keys[i] == key) return (int64_t)i;
        if (m->keys[i] == ML_MAP_EMPTY) return -1;
        i = (i + 1) & mask;
    }
}
/* Slot of key, inserting it with value 0 if absent. */
int ml_u64map_slot(ml_u64map *m, uint64_t key, int64_t *slot);

/* ---- byte-string -> (i64, i64) hash map ------------------------------------ */
typedef struct {
    uint64_t hash;
    int64_t key_off;
    int64_t val, val2;
    uint32_t key_len;
} ml_bentry;
typedef struct {
    int32_t *table; /* entry index or -1 */
    size_t cap;     /* power of two */
    ml_bentry *e;
    size_t n, ecap;
    char *arena;
    size_t arena_len, arena_cap;
} ml_bmap;
int ml_bmap_init(ml_bmap *m, size_t expect);
void ml_bmap_free(ml_bmap *m);
void ml_bmap_clear(ml_bmap *m);
uint64_t ml_hash_bytes(const void *p, size_t n);
/* Entry index or -1. */
int64_t ml_bmap_find(const ml_bmap *m, const char *key, size_t len, uint64_t hash);
/* Entry index of key, inserting (val = val2 = 0) if absent; *inserted set. */
int ml_bmap_insert(ml_bmap *m, const char *key, size_t len, uint64_t hash, int64_t *index, int *inserted);
static inline const char *ml_bmap_key(const ml_bmap *m, int64_t i) { return m->arena + m->e[i].key_off; }

/* ---- tokenizer --------------------------------------------------------------- */
enum { ML_TOK_SPECIAL = 1, ML_TOK_BYTEFB = 2 };
struct ml_tokenizer {
    int vocab_size;
    char *tok_bytes;    /* concatenated token bytes */
    int64_t *tok_off;   /* (V+1) */
    uint8_t *tok_flags; /* (V) ML_TOK_* */
    int n_merges;
    int32_t *merges;    /* (M, 3): left, right, result; row = rank */
    ml_u64map pair_rank; /* (left << 32 | right) -> rank << 32 | result */
    ml_bmap vocab_map;   /* bytes -> id, ordinary tokens only */
    int32_t byte_id[256];/* byte-level: single-byte token; fallback: <0xNN> token (-1 if absent) */
    ml_pretok pretok;
    int byte_level;      /* initial symbols are bytes (GPT-2); else UTF-8 chars + byte fallback */
    int byte_fallback;
    int prefix_space;    /* 1: prepend ' ' to non-empty text (normalizer Prepend "▁");
                            2: unless it starts with ' ' (Metaspace pre-tokenizer) */
    int strip_decode;    /* decode drops one leading ' ' */
    int ignore_merges;   /* a chunk that is a vocabulary token is emitted as is */
    int32_t unk_id, bos_id, eos_id, pad_id;
    /* encoding cache: chunk bytes -> ids in cache_ids */
    ml_bmap cache;
    int32_t *cache_ids;
    size_t cache_n, cache_cap;
    /* scratch for encoding */
    int32_t *sym;        /* symbol ids */
    int32_t *prev, *next;
    void *heap;
    size_t scratch_cap;
    char *text_buf;      /* prefix-space copy */
    size_t text_cap;
};

/* Build a tokenizer from token bytes and merges (ids must be consistent).
 * Takes ownership of nothing; copies. Fills pair_rank, vocab_map, byte_id,
 * special ids (by the usual names) and the mode fields from `proto`. */
int ml_tokenizer_build(const ml_tokenizer *proto, int vocab_size, const char *const *tok, const size_t *tok_len,
                       const uint8_t *flags, int n_merges, const int32_t *merges, ml_tokenizer **out);

/* Character classes of the GPT-2 pre-tokenizer. */
enum { ML_CC_LETTER = 0, ML_CC_NUMBER, ML_CC_SPACE, ML_CC_OTHER };
/* Decode one code point class at s (n bytes available); *adv = bytes used. */
int ml_char_class(const unsigned char *s, size_t n, size_t *adv);

/* GPT-2 byte <-> unicode map (bytes_to_unicode). */
void ml_gpt2_byte_map(uint32_t cp_of_byte[256]);
/* Encode a code point as UTF-8 into out (>= 4 bytes); returns length. */
int ml_utf8_put(uint32_t cp, char *out);

#endif
