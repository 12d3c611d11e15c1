/* Byte-level BPE tokenizer: construction from a vocabulary + merges, fast
 * encoding (pre-split chunks, a cache of chunk encodings, merges applied by
 * rank with a min-heap) and decoding.
 *
 * Dimension letters: V vocabulary size, M merges, n symbols of one chunk. */
#include "internal.h"

#include <string.h>

#define ML_CACHE_MAX_CHUNK 256       /* longer chunks are not cached */
#define ML_CACHE_MAX_ENTRIES (1 << 20)
#define ML_CACHE_MAX_IDS (1 << 24)

/* ---- id buffers ----------------------------------------------------------- */
int ml_ids_reserve(ml_ids *v, size_t n) {
    if (v->n + n <= v->cap) return ML_OK;
    return ml_grow((void **)&v->ids, &v->cap, v->n + n, sizeof *v->ids);
}

int ml_ids_push(ml_ids *v, int32_t id) {
    if (v->n == v->cap) ML_CHECK(ml_ids_reserve(v, 1));
    v->ids[v->n++] = id;
    return ML_OK;
}

void ml_ids_free(ml_ids *v) {
    ml_free(v->ids);
    memset(v, 0, sizeof *v);
}

/* ---- construction ------------------------------------------------------------- */
void ml_tokenizer_destroy(ml_tokenizer **tp) {
    if (!tp || !*tp) return;
    ml_tokenizer *t = *tp;
    ml_free(t->tok_bytes);
    ml_free(t->tok_off);
    ml_free(t->tok_flags);
    ml_free(t->merges);
    ml_u64map_free(&t->pair_rank);
    ml_bmap_free(&t->vocab_map);
    ml_bmap_free(&t->cache);
    ml_free(t->cache_ids);
    ml_free(t->sym);
    ml_free(t->prev);
    ml_free(t->next);
    ml_free(t->heap);
    ml_free(t->text_buf);
    ml_free(t);
    *tp = NULL;
}

static int32_t find_special(const ml_tokenizer *t, const char *const *names) {
    for (int k = 0; names[k]; k++) {
        int32_t id = ml_tokenizer_special_id(t, names[k]);
        if (id >= 0) return id;
    }
    return -1;
}

int ml_tokenizer_build(const ml_tokenizer *proto, int V, const char *const *tok, const size_t *tok_len,
                       const uint8_t *flags, int M, const int32_t *merges, ml_tokenizer **out) {
    int rc = ML_OK;
    if (V <= 0) return ML_FAIL(ML_ERR_FORMAT, "tokenizer has an empty vocabulary");
    ml_tokenizer *t = ml_calloc(1, sizeof *t);
    if (!t) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    t->pretok = proto->pretok;
    t->byte_level = proto->byte_level;
    t->byte_fallback = proto->byte_fallback;
    t->prefix_space = proto->prefix_space;
    t->strip_decode = proto->strip_decode;
    t->ignore_merges = proto->ignore_merges;
    t->vocab_size = V;
    t->n_merges = M;
    size_t total = 0;
    for (int i = 0; i < V; i++) total += tok_len[i];
    t->tok_bytes = ml_malloc(total + 1);
    t->tok_off = ml_malloc(((size_t)V + 1) * sizeof *t->tok_off);
    t->tok_flags = ml_malloc((size_t)V);
    t->merges = ml_malloc(((size_t)M * 3 + 1) * sizeof *t->merges);
    if (!t->tok_bytes || !t->tok_off || !t->tok_flags || !t->merges)
        ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory building a tokenizer of %d tokens", V);
    t->tok_off[0] = 0;
    for (int i = 0; i < V; i++) {
        memcpy(t->tok_bytes + t->tok_off[i], tok[i], tok_len[i]);
        t->tok_off[i + 1] = t->tok_off[i] + (int64_t)tok_len[i];
        t->tok_flags[i] = flags ? flags[i] : 0;
    }
    memcpy(t->merges, merges, (size_t)M * 3 * sizeof *merges);
    ML_CHECK_GOTO(ml_u64map_init(&t->pair_rank, (size_t)M + 1), fail);
    for (int r = 0; r < M; r++) {
        int32_t a = merges[3 * r], b = merges[3 * r + 1], c = merges[3 * r + 2];
        if (a < 0 || a >= V || b < 0 || b >= V || c < 0 || c >= V)
            ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "merge %d (%d, %d -> %d) refers to a token outside the vocabulary of %d",
                         r, a, b, c, V);
        int64_t slot;
        uint64_t key = (uint64_t)a << 32 | (uint32_t)b;
        if (ml_u64map_find(&t->pair_rank, key) >= 0) continue; /* keep the first (lowest) rank */
        ML_CHECK_GOTO(ml_u64map_slot(&t->pair_rank, key, &slot), fail);
        t->pair_rank.vals[slot] = (int64_t)((uint64_t)r << 32 | (uint32_t)c);
    }
    ML_CHECK_GOTO(ml_bmap_init(&t->vocab_map, (size_t)V), fail);
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    for (int i = 0; i < V; i++) {
        size_t n = tok_len[i];
        if (t->tok_flags[i] & ML_TOK_SPECIAL) continue;
        if (t->tok_flags[i] & ML_TOK_BYTEFB) {
            if (n == 1 && t->byte_id[(unsigned char)tok[i][0]] < 0) t->byte_id[(unsigned char)tok[i][0]] = i;
            continue;
        }
        if (n == 0) continue;
        int64_t idx;
        int ins;
        ML_CHECK_GOTO(ml_bmap_insert(&t->vocab_map, tok[i], n, ml_hash_bytes(tok[i], n), &idx, &ins), fail);
        if (ins) t->vocab_map.e[idx].val = i;
    }
    if (t->byte_level) {
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            int64_t k = ml_bmap_find(&t->vocab_map, &c, 1, ml_hash_bytes(&c, 1));
            if (k < 0)
                ML_FAIL_GOTO(fail, ML_ERR_FORMAT,
                             "byte-level tokenizer lacks a token for byte 0x%02X (every byte needs one)", b);
            t->byte_id[b] = (int32_t)t->vocab_map.e[k].val;
        }
    }
    static const char *bos_names[] = {"<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", NULL};
    static const char *eos_names[] = {"<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", NULL};
    static const char *pad_names[] = {"<pad>", "<|pad|>", "[PAD]", NULL};
    static const char *unk_names[] = {"<unk>", "[UNK]", "<|unk|>", NULL};
    t->bos_id = proto->bos_id >= -1 ? proto->bos_id : find_special(t, bos_names);
    t->eos_id = proto->eos_id >= -1 ? proto->eos_id : find_special(t, eos_names);
    t->pad_id = proto->pad_id >= -1 ? proto->pad_id : find_special(t, pad_names);
    t->unk_id = proto->unk_id >= -1 ? proto->unk_id : find_special(t, unk_names);
    if (t->bos_id < 0) t->bos_id = t->eos_id; /* GPT-2 uses <|endoftext|> for both */
    ML_CHECK_GOTO(ml_bmap_init(&t->cache, 1 << 14), fail);
    *out = t;
    return ML_OK;
fail:
    ml_tokenizer_destroy(&t);
    return rc;
}

/* ---- accessors ------------------------------------------------------------------ */
int ml_tokenizer_vocab_size(const ml_tokenizer *t) { return t->vocab_size; }
int ml_tokenizer_n_merges(const ml_tokenizer *t) { return t->n_merges; }
int32_t ml_tokenizer_bos_id(const ml_tokenizer *t) { return t->bos_id; }
int32_t ml_tokenizer_eos_id(const ml_tokenizer *t) { return t->eos_id; }
int32_t ml_tokenizer_pad_id(const ml_tokenizer *t) { return t->pad_id; }
ml_pretok ml_tokenizer_pretok(const ml_tokenizer *t) { return t->pretok; }

int ml_tokenizer_merge(const ml_tokenizer *t, int r, int32_t *left, int32_t *right, int32_t *result) {
    if (r < 0 || r >= t->n_merges) return ML_FAIL(ML_ERR_ARG, "merge %d out of range [0, %d)", r, t->n_merges);
    *left = t->merges[3 * r];
    *right = t->merges[3 * r + 1];
    *result = t->merges[3 * r + 2];
    return ML_OK;
}

const char *ml_tokenizer_token_bytes(const ml_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    *len = (size_t)(t->tok_off[id + 1] - t->tok_off[id]);
    return t->tok_bytes + t->tok_off[id];
}

int32_t ml_tokenizer_special_id(const ml_tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (int i = 0; i < t->vocab_size; i++) {
        if (!(t->tok_flags[i] & ML_TOK_SPECIAL)) continue;
        if ((size_t)(t->tok_off[i + 1] - t->tok_off[i]) == n && !memcmp(t->tok_bytes + t->tok_off[i], text, n))
            return i;
    }
    return -1;
}

/* ---- BPE over one chunk ---------------------------------------------------------- */
typedef struct {
    uint32_t rank;
    int32_t pos;
} heap_ent;

static inline int heap_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(e, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        heap_ent best = last;
        if (l < *n && heap_less(h[l], best)) {
            m = l;
            best = h[l];
        }
        if (r < *n && heap_less(h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static inline int64_t pair_lookup(const ml_tokenizer *t, int32_t a, int32_t b) {
    int64_t s = ml_u64map_find(&t->pair_rank, (uint64_t)a << 32 | (uint32_t)b);
    return s < 0 ? -1 : t->pair_rank.vals[s];
}

static int ensure_scratch(ml_tokenizer *t, size_t n) {
    if (n <= t->scratch_cap) return ML_OK;
    size_t nc = t->scratch_cap ? t->scratch_cap : 256;
    while (nc < n) nc *= 2;
    ml_free(t->sym);
    ml_free(t->prev);
    ml_free(t->next);
    ml_free(t->heap);
    t->scratch_cap = 0;
    t->sym = ml_malloc(nc * sizeof *t->sym);
    t->prev = ml_malloc(nc * sizeof *t->prev);
    t->next = ml_malloc(nc * sizeof *t->next);
    t->heap = ml_malloc(3 * nc * sizeof(heap_ent)); /* <= n-1 initial + 2 per merge */
    if (!t->sym || !t->prev || !t->next || !t->heap)
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    t->scratch_cap = nc;
    return ML_OK;
}

/* Apply merges to sym (n) in rank order, leftmost first; returns new n. */
static size_t bpe_merge(ml_tokenizer *t, size_t n) {
    int32_t *sym = t->sym, *prev = t->prev, *next = t->next;
    if (n < 2) return n;
    if (n == 2) { /* common short case */
        int64_t v = pair_lookup(t, sym[0], sym[1]);
        if (v < 0) return 2;
        sym[0] = (int32_t)(uint32_t)v;
        return 1;
    }
    heap_ent *h = t->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int64_t v = pair_lookup(t, sym[i], sym[i + 1]);
        if (v >= 0) heap_push(h, &hn, (heap_ent){(uint32_t)((uint64_t)v >> 32), (int32_t)i});
    }
    while (hn > 0) {
        heap_ent e = heap_pop(h, &hn);
        int32_t i = e.pos;
        if (sym[i] < 0 || next[i] < 0) continue;
        int32_t j = next[i];
        int64_t v = pair_lookup(t, sym[i], sym[j]);
        if (v < 0 || (uint32_t)((uint64_t)v >> 32) != e.rank) continue; /* stale */
        sym[i] = (int32_t)(uint32_t)v;
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (prev[i] >= 0) {
            int64_t w = pair_lookup(t, sym[prev[i]], sym[i]);
            if (w >= 0) heap_push(h, &hn, (heap_ent){(uint32_t)((uint64_t)w >> 32), prev[i]});
        }
        if (next[i] >= 0) {
            int64_t w = pair_lookup(t, sym[i], sym[next[i]]);
            if (w >= 0) heap_push(h, &hn, (heap_ent){(uint32_t)((uint64_t)w >> 32), i});
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (sym[i] >= 0) sym[m++] = sym[i];
    return m;
}

/* Initial symbols of a chunk into t->sym; returns count via *n. */
static int symbolize(ml_tokenizer *t, const char *s, size_t len, size_t *n) {
    ML_CHECK(ensure_scratch(t, len + 1));
    const unsigned char *u = (const unsigned char *)s;
    size_t m = 0;
    if (t->byte_level) {
        for (size_t i = 0; i < len; i++) t->sym[m++] = t->byte_id[u[i]];
        *n = m;
        return ML_OK;
    }
    size_t i = 0;
    while (i < len) {
        size_t adv;
        ml_char_class(u + i, len - i, &adv);
        int64_t k = ml_bmap_find(&t->vocab_map, s + i, adv, ml_hash_bytes(s + i, adv));
        if (k >= 0) {
            t->sym[m++] = (int32_t)t->vocab_map.e[k].val;
        } else {
            for (size_t b = 0; b < adv; b++) {
                int32_t id = t->byte_fallback ? t->byte_id[u[i + b]] : -1;
                if (id < 0 && t->byte_fallback)
                    return ML_FAIL(ML_ERR_FORMAT, "tokenizer has byte fallback but no token <0x%02X>", u[i + b]);
                if (id < 0) id = t->unk_id;
                if (id < 0)
                    return ML_FAIL(ML_ERR_UNSUPPORTED,
                                   "cannot encode byte 0x%02X: not in the vocabulary, no byte fallback, no <unk>",
                                   u[i + b]);
                if (!t->byte_fallback) { /* one <unk> per character */
                    t->sym[m++] = id;
                    break;
                }
                t->sym[m++] = id;
            }
        }
        i += adv;
    }
    *n = m;
    return ML_OK;
}

static int encode_chunk(ml_tokenizer *t, const char *s, size_t len, ml_ids *out) {
    if (t->ignore_merges) {
        int64_t k = ml_bmap_find(&t->vocab_map, s, len, ml_hash_bytes(s, len));
        if (k >= 0) return ml_ids_push(out, (int32_t)t->vocab_map.e[k].val);
    }
    size_t n = 0;
    ML_CHECK(symbolize(t, s, len, &n));
    n = bpe_merge(t, n);
    ML_CHECK(ml_ids_reserve(out, n));
    memcpy(out->ids + out->n, t->sym, n * sizeof *t->sym);
    out->n += n;
    return ML_OK;
}

typedef struct {
    ml_tokenizer *t;
    ml_ids *out;
} enc_ctx;

static int chunk_cb(void *ctx, const char *s, size_t len) {
    enc_ctx *c = ctx;
    ml_tokenizer *t = c->t;
    if (len > ML_CACHE_MAX_CHUNK) return encode_chunk(t, s, len, c->out);
    uint64_t h = ml_hash_bytes(s, len);
    int64_t k = ml_bmap_find(&t->cache, s, len, h);
    if (k >= 0) {
        const ml_bentry *e = &t->cache.e[k];
        size_t n = (size_t)e->val2;
        ML_CHECK(ml_ids_reserve(c->out, n));
        memcpy(c->out->ids + c->out->n, t->cache_ids + e->val, n * sizeof(int32_t));
        c->out->n += n;
        return ML_OK;
    }
    size_t before = c->out->n;
    ML_CHECK(encode_chunk(t, s, len, c->out));
    size_t n = c->out->n - before;
    if (t->cache.n >= ML_CACHE_MAX_ENTRIES || t->cache_n + n > ML_CACHE_MAX_IDS) {
        ml_bmap_clear(&t->cache);
        t->cache_n = 0;
    }
    ML_CHECK(ml_grow((void **)&t->cache_ids, &t->cache_cap, t->cache_n + n, sizeof *t->cache_ids));
    int64_t idx;
    ML_CHECK(ml_bmap_insert(&t->cache, s, len, h, &idx, NULL));
    memcpy(t->cache_ids + t->cache_n, c->out->ids + before, n * sizeof(int32_t));
    t->cache.e[idx].val = (int64_t)t->cache_n;
    t->cache.e[idx].val2 = (int64_t)n;
    t->cache_n += n;
    return ML_OK;
}

int ml_tokenizer_encode(ml_tokenizer *t, const char *text, size_t len, ml_ids *out) {
    if (len == 0) return ML_OK;
    if (t->prefix_space == 1 || (t->prefix_space == 2 && text[0] != ' ')) {
        if (len + 1 > t->text_cap) {
            size_t nc = t->text_cap ? t->text_cap : 4096;
            while (nc < len + 1) nc *= 2;
            char *nb = ml_realloc(t->text_buf, nc);
            if (!nb) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            t->text_buf = nb;
            t->text_cap = nc;
        }
        t->text_buf[0] = ' ';
        memcpy(t->text_buf + 1, text, len);
        text = t->text_buf;
        len++;
    }
    enc_ctx c = {t, out};
    ML_CHECK(ml_pretokenize(t->pretok, text, len, chunk_cb, &c));
    return ML_OK;
}

int ml_tokenizer_decode(const ml_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return ML_FAIL(ML_ERR_ARG, "token id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i,
                           t->vocab_size);
        total += (size_t)(t->tok_off[ids[i] + 1] - t->tok_off[ids[i]]);
    }
    char *s = ml_malloc(total + 1);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = (size_t)(t->tok_off[ids[i] + 1] - t->tok_off[ids[i]]);
        memcpy(s + m, t->tok_bytes + t->tok_off[ids[i]], k);
        m += k;
    }
    s[m] = '\0';
    if (t->strip_decode && m > 0 && s[0] == ' ') {
        memmove(s, s + 1, m);
        m--;
    }
    *text = s;
    if (len) *len = m;
    return ML_OK;
}
