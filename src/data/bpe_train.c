/* Byte-level BPE training distributed over MPI ranks.
 *
 * Each rank pre-tokenizes its own documents (GPT-2 split) and counts unique
 * chunks ("words"). Pair counts live replicated on every rank as exact
 * integer sums: the initial 256x256 byte-pair counts are one MPI_Allreduce,
 * and after every merge each rank sends the count changes of its own words
 * (MPI_Allgatherv) and every rank applies all of them. The best pair
 * (highest count, ties to the smaller (left, right)) is therefore the same
 * on every rank, for any number of ranks.
 *
 * Dimension letters: W unique local words, M merges. */
#include "internal.h"

#include <string.h>

struct ml_bpe_trainer {
    int vocab_size;
    int64_t min_frequency;
    char **specials;
    int n_specials;
    ml_bmap words; /* chunk bytes -> count (val) */
};

static const char *const default_specials[] = {"<bos>", "<|endoftext|>", "<pad>"};

void ml_bpe_trainer_destroy(ml_bpe_trainer **tp) {
    if (!tp || !*tp) return;
    ml_bpe_trainer *t = *tp;
    for (int i = 0; i < t->n_specials; i++) ml_free(t->specials[i]);
    ml_free(t->specials);
    ml_bmap_free(&t->words);
    ml_free(t);
    *tp = NULL;
}

int ml_bpe_trainer_create(const ml_bpe_config *cfg, ml_bpe_trainer **out) {
    int rc = ML_OK;
    const char *const *sp = cfg->specials ? cfg->specials : default_specials;
    int ns = cfg->specials ? cfg->n_specials : 3;
    if (cfg->vocab_size < 256 + ns)
        return ML_FAIL(ML_ERR_ARG, "vocab_size %d is too small: it needs 256 byte tokens + %d special tokens",
                       cfg->vocab_size, ns);
    ml_bpe_trainer *t = ml_calloc(1, sizeof *t);
    if (!t) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    t->vocab_size = cfg->vocab_size;
    t->min_frequency = cfg->min_frequency > 0 ? cfg->min_frequency : 2;
    t->specials = ml_calloc((size_t)ns + 1, sizeof *t->specials);
    if (!t->specials) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < ns; i++) {
        if (!sp[i] || !*sp[i]) ML_FAIL_GOTO(fail, ML_ERR_ARG, "special token %d is empty", i);
        for (int j = 0; j < i; j++)
            if (!strcmp(sp[i], sp[j])) ML_FAIL_GOTO(fail, ML_ERR_ARG, "special token '%s' given twice", sp[i]);
        t->specials[i] = ml_strdup(sp[i]);
        if (!t->specials[i]) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
        t->n_specials++;
    }
    ML_CHECK_GOTO(ml_bmap_init(&t->words, 1 << 16), fail);
    *out = t;
    return ML_OK;
fail:
    ml_bpe_trainer_destroy(&t);
    return rc;
}

static int count_chunk(void *ctx, const char *s, size_t len) {
    ml_bmap *m = ctx;
    int64_t k;
    ML_CHECK(ml_bmap_insert(m, s, len, ml_hash_bytes(s, len), &k, NULL));
    m->e[k].val++;
    return ML_OK;
}

int ml_bpe_trainer_add(ml_bpe_trainer *t, const char *text, size_t len) {
    return ml_pretokenize(ML_PRETOK_GPT2, text, len, count_chunk, &t->words);
}

/* ---- max-heap of (count, pair) with lazy invalidation -------------------------- */
typedef struct {
    int64_t count;
    uint64_t key;
} cand;
typedef struct {
    cand *v;
    size_t n, cap;
} cand_heap;

/* a before b: higher count, then smaller key */
static inline int cand_before(cand a, cand b) { return a.count > b.count || (a.count == b.count && a.key < b.key); }

static int cheap_push(cand_heap *h, cand c) {
    if (h->n == h->cap) ML_CHECK(ml_grow((void **)&h->v, &h->cap, h->n + 1, sizeof *h->v));
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(c, h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return ML_OK;
}

static cand cheap_pop(cand_heap *h) {
    cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        cand best = last;
        if (l < h->n && cand_before(h->v[l], best)) {
            m = l;
            best = h->v[l];
        }
        if (r < h->n && cand_before(h->v[r], best)) m = r;
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

/* ---- training state -------------------------------------------------------------- */
typedef struct {
    int32_t *v;
    int32_t n, cap;
} wlist;

typedef struct {
    MPI_Comm comm;
    int nranks;
    int64_t W;
    int32_t *sym;     /* word symbols, word w at sym[off[w] .. off[w] + len[w]) */
    int64_t *off;     /* (W) */
    int32_t *len;     /* (W) */
    int64_t *count;   /* (W) */
    int32_t *stamp;   /* (W) last merge that visited the word */
    ml_u64map where;  /* pair -> index into lists */
    wlist *lists;
    size_t n_lists, cap_lists;
    ml_u64map gcount; /* pair -> global count (identical on all ranks) */
    cand_heap heap;
    ml_u64map delta;  /* this merge's local count changes */
    uint64_t *dkeys;  /* keys inserted into delta this merge */
    size_t n_dkeys, cap_dkeys;
    uint64_t *sendbuf, *recvbuf;
    size_t cap_send, cap_recv;
    size_t *rcounts, *rdispls;
    uint64_t *fixed, *fixed_all; /* (1 + ML_SLOTS), (P, 1 + ML_SLOTS) */
} train_state;

#define ML_SLOTS 64 /* words (32 key/delta pairs) per rank in the fixed-size exchange */

static inline uint64_t pkey(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

static int where_add(train_state *s, uint64_t key, int32_t w) {
    int64_t slot;
    size_t before = s->where.n;
    ML_CHECK(ml_u64map_slot(&s->where, key, &slot));
    if (s->where.n != before) { /* new pair: new list */
        if (s->n_lists == s->cap_lists)
            ML_CHECK(ml_grow((void **)&s->lists, &s->cap_lists, s->n_lists + 1, sizeof *s->lists));
        memset(&s->lists[s->n_lists], 0, sizeof(wlist));
        s->where.vals[slot] = (int64_t)s->n_lists++;
    }
    wlist *l = &s->lists[s->where.vals[slot]];
    if (l->n > 0 && l->v[l->n - 1] == w) return ML_OK;
    if (l->n == l->cap) {
        int32_t nc = l->cap ? l->cap * 2 : 4;
        int32_t *nv = ml_realloc(l->v, (size_t)nc * sizeof *nv);
        if (!nv) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = w;
    return ML_OK;
}

static int delta_add(train_state *s, uint64_t key, int64_t d) {
    int64_t slot;
    size_t before = s->delta.n;
    ML_CHECK(ml_u64map_slot(&s->delta, key, &slot));
    if (s->delta.n != before) {
        if (s->n_dkeys == s->cap_dkeys)
            ML_CHECK(ml_grow((void **)&s->dkeys, &s->cap_dkeys, s->n_dkeys + 1, sizeof *s->dkeys));
        s->dkeys[s->n_dkeys++] = key;
    }
    s->delta.vals[slot] += d;
    return ML_OK;
}

/* Add d to the global count of key; push a heap candidate when it grew. */
static int gcount_add(train_state *s, uint64_t key, int64_t d) {
    int64_t slot;
    ML_CHECK(ml_u64map_slot(&s->gcount, key, &slot));
    s->gcount.vals[slot] += d;
    if (d > 0) ML_CHECK(cheap_push(&s->heap, (cand){s->gcount.vals[slot], key}));
    return ML_OK;
}

/* Gather every rank's (key, delta) list and apply all of them. */
static int exchange_deltas(train_state *s) {
    size_t n = 0;
    if (2 * s->n_dkeys > s->cap_send) {
        size_t nc = 2 * s->n_dkeys + 1024;
        ml_free(s->sendbuf);
        s->sendbuf = ml_malloc(nc * sizeof *s->sendbuf);
        if (!s->sendbuf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        s->cap_send = nc;
    }
    for (size_t i = 0; i < s->n_dkeys; i++) {
        int64_t d = s->delta.vals[ml_u64map_find(&s->delta, s->dkeys[i])];
        if (d == 0) continue;
        s->sendbuf[n++] = s->dkeys[i];
        s->sendbuf[n++] = (uint64_t)d;
    }
    /* Empty the delta map. Every key in it was inserted during this merge, so
     * blanking exactly those slots (found first, while probe chains are
     * intact) leaves a completely empty table. dkeys is reused for slots. */
    for (size_t i = 0; i < s->n_dkeys; i++) s->dkeys[i] = (uint64_t)ml_u64map_find(&s->delta, s->dkeys[i]);
    for (size_t i = 0; i < s->n_dkeys; i++) s->delta.keys[s->dkeys[i]] = ML_MAP_EMPTY;
    s->delta.n = 0;
    s->n_dkeys = 0;
    if (s->nranks == 1) {
        for (size_t i = 0; i < n; i += 2) ML_CHECK(gcount_add(s, s->sendbuf[i], (int64_t)s->sendbuf[i + 1]));
        return ML_OK;
    }
    /* One fixed-size MPI_Allgather carries up to ML_SLOTS words per rank (most
     * merges change few pairs); only larger changes need a second round. */
    int P = s->nranks, W1 = 1 + ML_SLOTS;
    s->fixed[0] = n;
    memcpy(s->fixed + 1, s->sendbuf, (n < ML_SLOTS ? n : ML_SLOTS) * sizeof *s->sendbuf);
    ML_CHECK_MPI(MPI_Allgather(s->fixed, W1, MPI_UINT64_T, s->fixed_all, W1, MPI_UINT64_T, s->comm));
    size_t over = 0;
    for (int r = 0; r < P; r++) {
        const uint64_t *f = s->fixed_all + (size_t)r * (size_t)W1;
        size_t cnt = f[0] < ML_SLOTS ? f[0] : ML_SLOTS;
        for (size_t i = 0; i < cnt; i += 2) ML_CHECK(gcount_add(s, f[1 + i], (int64_t)f[2 + i]));
        s->rcounts[r] = f[0] > ML_SLOTS ? (size_t)(f[0] - ML_SLOTS) : 0;
        s->rdispls[r] = over;
        over += s->rcounts[r];
    }
    if (over == 0) return ML_OK;
    if (over > s->cap_recv) {
        ml_free(s->recvbuf);
        s->recvbuf = ml_malloc((over + 1024) * sizeof *s->recvbuf);
        if (!s->recvbuf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        s->cap_recv = over + 1024;
    }
    ML_CHECK(ml_mpi_allgatherv(s->comm, s->sendbuf + ML_SLOTS, s->recvbuf, s->rcounts, s->rdispls, MPI_UINT64_T));
    for (size_t i = 0; i < over; i += 2) ML_CHECK(gcount_add(s, s->recvbuf[i], (int64_t)s->recvbuf[i + 1]));
    return ML_OK;
}

/* Merge (a, b) -> c in every local word containing it, recording count changes. */
static int apply_merge(train_state *s, int32_t a, int32_t b, int32_t c, int32_t m) {
    int64_t wslot = ml_u64map_find(&s->where, pkey(a, b));
    if (wslot < 0) return ML_OK;
    int64_t li = s->where.vals[wslot];
    for (int32_t k = 0; k < s->lists[li].n; k++) {
        int32_t w = s->lists[li].v[k];
        if (s->stamp[w] == m) continue;
        s->stamp[w] = m;
        int32_t *x = s->sym + s->off[w], n = s->len[w];
        int found = 0;
        for (int32_t i = 0; i + 1 < n; i++)
            if (x[i] == a && x[i + 1] == b) {
                found = 1;
                break;
            }
        if (!found) continue;
        int64_t cnt = s->count[w];
        for (int32_t i = 0; i + 1 < n; i++) ML_CHECK(delta_add(s, pkey(x[i], x[i + 1]), -cnt));
        int32_t j = 0;
        for (int32_t i = 0; i < n;) {
            if (i + 1 < n && x[i] == a && x[i + 1] == b) {
                x[j++] = c;
                i += 2;
            } else
                x[j++] = x[i++];
        }
        s->len[w] = n = j;
        for (int32_t i = 0; i + 1 < n; i++) {
            uint64_t key = pkey(x[i], x[i + 1]);
            ML_CHECK(delta_add(s, key, cnt));
            if (x[i] == c || x[i + 1] == c) ML_CHECK(where_add(s, key, w));
        }
    }
    return ML_OK;
}

static void state_free(train_state *s) {
    ml_free(s->sym);
    ml_free(s->off);
    ml_free(s->len);
    ml_free(s->count);
    ml_free(s->stamp);
    ml_u64map_free(&s->where);
    for (size_t i = 0; i < s->n_lists; i++) ml_free(s->lists[i].v);
    ml_free(s->lists);
    ml_u64map_free(&s->gcount);
    ml_free(s->heap.v);
    ml_u64map_free(&s->delta);
    ml_free(s->dkeys);
    ml_free(s->sendbuf);
    ml_free(s->recvbuf);
    ml_free(s->rcounts);
    ml_free(s->rdispls);
    ml_free(s->fixed);
    ml_free(s->fixed_all);
}

static int state_init(train_state *s, const ml_bpe_trainer *t, MPI_Comm comm) {
    memset(s, 0, sizeof *s);
    s->comm = comm;
    ML_CHECK_MPI(MPI_Comm_size(comm, &s->nranks));
    const ml_bmap *words = &t->words;
    s->W = (int64_t)words->n;
    size_t W = (size_t)s->W + 1;
    s->sym = ml_malloc((words->arena_len + 1) * sizeof *s->sym);
    s->off = ml_malloc(W * sizeof *s->off);
    s->len = ml_malloc(W * sizeof *s->len);
    s->count = ml_malloc(W * sizeof *s->count);
    s->stamp = ml_malloc(W * sizeof *s->stamp);
    s->rcounts = ml_malloc((size_t)s->nranks * sizeof *s->rcounts);
    s->rdispls = ml_malloc((size_t)s->nranks * sizeof *s->rdispls);
    s->fixed = ml_malloc((1 + ML_SLOTS) * sizeof *s->fixed);
    s->fixed_all = ml_malloc((size_t)s->nranks * (1 + ML_SLOTS) * sizeof *s->fixed_all);
    if (!s->sym || !s->off || !s->len || !s->count || !s->stamp || !s->rcounts || !s->rdispls || !s->fixed ||
        !s->fixed_all)
        return ML_FAIL(ML_ERR_NOMEM, "out of memory for %lld BPE training words", (long long)s->W);
    int64_t pos = 0;
    for (int64_t w = 0; w < s->W; w++) {
        const ml_bentry *e = &words->e[w];
        if (e->key_len > INT32_MAX) return ML_FAIL(ML_ERR_UNSUPPORTED, "BPE training chunk longer than 2^31 bytes");
        const unsigned char *k = (const unsigned char *)ml_bmap_key(words, w);
        s->off[w] = pos;
        s->len[w] = (int32_t)e->key_len;
        s->count[w] = e->val;
        s->stamp[w] = -1;
        for (uint32_t i = 0; i < e->key_len; i++) s->sym[pos++] = k[i];
    }
    ML_CHECK(ml_u64map_init(&s->where, 1 << 16));
    ML_CHECK(ml_u64map_init(&s->gcount, 1 << 16));
    ML_CHECK(ml_u64map_init(&s->delta, 1 << 12));
    /* initial byte-pair counts: dense 256x256, summed over ranks */
    int64_t *pc = ml_calloc(65536, sizeof *pc), *gpc = ml_malloc(65536 * sizeof *gpc);
    int rc = ML_OK;
    if (!pc || !gpc) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int64_t w = 0; w < s->W; w++) {
        const int32_t *x = s->sym + s->off[w];
        for (int32_t i = 0; i + 1 < s->len[w]; i++) {
            pc[x[i] * 256 + x[i + 1]] += s->count[w];
            ML_CHECK_GOTO(where_add(s, pkey(x[i], x[i + 1]), (int32_t)w), done);
        }
    }
    if (MPI_Allreduce(pc, gpc, 65536, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
        ML_FAIL_GOTO(done, ML_ERR_MPI, "MPI_Allreduce of BPE pair counts failed");
    for (int p = 0; p < 65536; p++)
        if (gpc[p] > 0) ML_CHECK_GOTO(gcount_add(s, pkey(p / 256, p % 256), gpc[p]), done);
done:
    ml_free(pc);
    ml_free(gpc);
    return rc;
}

int ml_bpe_trainer_finish(ml_bpe_trainer *t, MPI_Comm comm, ml_tokenizer **out) {
    int rc = ML_OK;
    train_state s;
    ml_prof_begin("bpe_train");
    int target = t->vocab_size - 256 - t->n_specials;
    int32_t *merges = ml_malloc(((size_t)target * 3 + 3) * sizeof *merges);
    char **tok = ml_calloc((size_t)t->vocab_size, sizeof *tok);
    size_t *tok_len = ml_calloc((size_t)t->vocab_size, sizeof *tok_len);
    uint8_t *flags = ml_calloc((size_t)t->vocab_size, 1);
    rc = state_init(&s, t, comm);
    if (!merges || !tok || !tok_len || !flags) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    for (int b = 0; b < 256; b++) {
        tok[b] = ml_malloc(1);
        if (!tok[b]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        tok[b][0] = (char)b;
        tok_len[b] = 1;
    }
    ml_progress prog;
    ml_progress_begin(&prog, "bpe merges", target);
    int m = 0;
    while (m < target && s.heap.n > 0) {
        cand c = cheap_pop(&s.heap);
        int64_t slot = ml_u64map_find(&s.gcount, c.key);
        int64_t cur = s.gcount.vals[slot];
        if (cur != c.count) { /* stale candidate */
            if (cur > 0 && cur < c.count) ML_CHECK_GOTO(cheap_push(&s.heap, (cand){cur, c.key}), done);
            continue;
        }
        if (cur < t->min_frequency) break;
        int32_t a = (int32_t)(c.key >> 32), b = (int32_t)(c.key & 0xffffffffu), id = 256 + m;
        merges[3 * m] = a;
        merges[3 * m + 1] = b;
        merges[3 * m + 2] = id;
        tok_len[id] = tok_len[a] + tok_len[b];
        tok[id] = ml_malloc(tok_len[id]);
        if (!tok[id]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        memcpy(tok[id], tok[a], tok_len[a]);
        memcpy(tok[id] + tok_len[a], tok[b], tok_len[b]);
        rc = apply_merge(&s, a, b, id, m);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        ML_CHECK_GOTO(exchange_deltas(&s), done);
        m++;
        if ((m & 63) == 0) ml_progress_update(&prog, m, NULL);
    }
    ml_progress_end(&prog, NULL);
    int V = 256 + m + t->n_specials;
    for (int i = 0; i < t->n_specials; i++) {
        int id = 256 + m + i;
        tok_len[id] = strlen(t->specials[i]);
        tok[id] = ml_strdup(t->specials[i]);
        if (!tok[id]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        flags[id] = ML_TOK_SPECIAL;
    }
    if (m < target)
        ml_info("bpe: stopped after %d of %d merges (no pair seen %lld times); vocabulary %d", m, target,
                (long long)t->min_frequency, V);
    ml_tokenizer proto;
    memset(&proto, 0, sizeof proto);
    proto.pretok = ML_PRETOK_GPT2;
    proto.byte_level = 1;
    proto.bos_id = proto.eos_id = proto.pad_id = proto.unk_id = -2;
    ML_CHECK_GOTO(ml_tokenizer_build(&proto, V, (const char *const *)tok, tok_len, flags, m, merges, out), done);
done:
    ml_prof_end("bpe_train", 0, 0);
    state_free(&s);
    if (tok)
        for (int i = 0; i < t->vocab_size; i++) ml_free(tok[i]);
    ml_free(tok);
    ml_free(tok_len);
    ml_free(flags);
    ml_free(merges);
    return rc;
}

int ml_tokenizer_train(MPI_Comm comm, const ml_bpe_config *cfg, const ml_docs *docs, ml_tokenizer **out) {
    ml_bpe_trainer *t = NULL;
    int rc = ml_bpe_trainer_create(cfg, &t);
    for (int64_t i = 0; rc == ML_OK && docs && i < docs->n_docs; i++)
        rc = ml_bpe_trainer_add(t, docs->bytes + docs->offsets[i], (size_t)(docs->offsets[i + 1] - docs->offsets[i]));
    rc = ml_agree(comm, rc);
    if (rc == ML_OK) rc = ml_bpe_trainer_finish(t, comm, out);
    ml_bpe_trainer_destroy(&t);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}
