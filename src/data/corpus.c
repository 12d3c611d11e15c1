/* Corpus readers: plain text split into documents, JSON Lines, directory
 * trees of source files; every file is read through zlib so gzip inputs are
 * decompressed transparently. Documents are streamed to a callback. */
#define _GNU_SOURCE
#include "mergelens/data.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define ML_DEFAULT_DELIM "<|endoftext|>"
#define ML_READ_CHUNK (1 << 20)

/* ---- UTF-8 validation ------------------------------------------------------ */
/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the byte at s does
 * not start one. Rejects overlongs, surrogates and code points > U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < need) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return need;
}

size_t ml_utf8_invalid_bytes(const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t bad = 0, i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, len - i);
        if (k == 0) {
            bad++;
            i++;
        } else
            i += k;
    }
    return bad;
}

/* ---- glob ------------------------------------------------------------------ */
static int glob_class(const char **pp, char c) {
    const char *p = *pp + 1; /* after '[' */
    int neg = 0, hit = 0;
    if (*p == '!' || *p == '^') {
        neg = 1;
        p++;
    }
    int first = 1;
    while (*p && (*p != ']' || first)) {
        first = 0;
        char a = *p, b = a;
        if (p[1] == '-' && p[2] && p[2] != ']') {
            b = p[2];
            p += 3;
        } else
            p++;
        if (c >= a && c <= b) hit = 1;
    }
    if (*p != ']') return -1; /* unterminated: treat '[' literally */
    *pp = p + 1;
    return hit != neg;
}

int ml_glob_match(const char *p, const char *s) {
    while (*p) {
        if (p[0] == '*' && p[1] == '*') {
            p += 2;
            if (*p == '/') { /* "**" + "/": zero or more whole directories */
                if (ml_glob_match(p + 1, s)) return 1;
                for (const char *t = s; *t; t++)
                    if (*t == '/' && ml_glob_match(p + 1, t + 1)) return 1;
                return 0;
            }
            for (const char *t = s;; t++) {
                if (ml_glob_match(p, t)) return 1;
                if (!*t) return 0;
            }
        }
        if (*p == '*') {
            p++;
            for (const char *t = s;; t++) {
                if (ml_glob_match(p, t)) return 1;
                if (!*t || *t == '/') return 0;
            }
        }
        if (!*s) return 0;
        if (*p == '?') {
            if (*s == '/') return 0;
            p++;
            s++;
            continue;
        }
        if (*p == '[') {
            const char *q = p;
            int m = glob_class(&q, *s);
            if (m >= 0) {
                if (!m || *s == '/') return 0;
                p = q;
                s++;
                continue;
            }
        }
        if (*p != *s) return 0;
        p++;
        s++;
    }
    return *s == '\0';
}

/* Match a ','-separated list of globs; a glob without '/' matches the base
 * name, otherwise the whole relative path. */
static int glob_list_match(const char *list, const char *rel) {
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    char pat[1024];
    while (*list) {
        const char *end = strchr(list, ',');
        size_t n = end ? (size_t)(end - list) : strlen(list);
        if (n > 0 && n < sizeof pat) {
            memcpy(pat, list, n);
            pat[n] = '\0';
            if (ml_glob_match(pat, strchr(pat, '/') ? rel : base)) return 1;
        }
        if (!end) break;
        list = end + 1;
    }
    return 0;
}

/* ---- document emission ------------------------------------------------------ */
typedef struct {
    ml_doc_fn fn;
    void *ctx;
    ml_corpus_stats *st;
    int stop; /* callback asked to stop */
} emitter;

static int emit(emitter *e, const char *text, size_t len, int trim) {
    if (trim) {
        while (len && (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r' || *text == '\f' ||
                       *text == '\v')) {
            text++;
            len--;
        }
        while (len && (text[len - 1] == ' ' || text[len - 1] == '\t' || text[len - 1] == '\n' ||
                       text[len - 1] == '\r' || text[len - 1] == '\f' || text[len - 1] == '\v'))
            len--;
    }
    if (len == 0) return ML_OK;
    size_t bad = ml_utf8_invalid_bytes(text, len);
    if (bad) {
        e->st->invalid_utf8_docs++;
        e->st->invalid_utf8_bytes += (int64_t)bad;
    }
    int64_t idx = e->st->docs++;
    e->st->bytes += (int64_t)len;
    int rc = e->fn ? e->fn(e->ctx, idx, text, len) : ML_OK;
    if (rc > 0) {
        e->stop = 1;
        return ML_OK;
    }
    return rc;
}

/* ---- buffered reader over zlib ---------------------------------------------- */
typedef struct {
    gzFile gz;
    const char *path;
    char *buf;
    size_t pos, len, cap;
    int eof;
} reader;

static int reader_open(reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    struct stat st;
    if (stat(path, &st) != 0) return ML_FAIL(ML_ERR_NOTFOUND, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return ML_FAIL(ML_ERR_ARG, "%s: is a directory (use a 'dir' source)", path);
    r->gz = gzopen(path, "rb");
    if (!r->gz) return ML_FAIL(ML_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    gzbuffer(r->gz, 1 << 17);
    r->cap = ML_READ_CHUNK;
    r->buf = ml_malloc(r->cap + 1);
    if (!r->buf) {
        gzclose(r->gz);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    return ML_OK;
}

static void reader_close(reader *r) {
    if (r->gz) gzclose(r->gz);
    ml_free(r->buf);
    memset(r, 0, sizeof *r);
}

/* Read more data: keep [pos, len), compact, grow when full. */
static int reader_fill(reader *r) {
    if (r->eof) return ML_OK;
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        r->len -= r->pos;
        r->pos = 0;
    }
    if (r->cap - r->len < ML_READ_CHUNK / 2) {
        size_t ncap = r->cap * 2;
        char *nb = ml_realloc(r->buf, ncap + 1);
        if (!nb) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        r->buf = nb;
        r->cap = ncap;
    }
    int want = (int)(r->cap - r->len > (1u << 30) ? (1u << 30) : r->cap - r->len);
    int got = gzread(r->gz, r->buf + r->len, (unsigned)want);
    if (got < 0) {
        int zerr = 0;
        const char *msg = gzerror(r->gz, &zerr);
        return ML_FAIL(ML_ERR_IO, "%s: read failed: %s", r->path, zerr == Z_ERRNO ? strerror(errno) : msg);
    }
    if (got == 0) {
        int zerr = 0;
        const char *msg = gzerror(r->gz, &zerr);
        if (zerr != Z_OK) /* Z_BUF_ERROR: truncated stream */
            return ML_FAIL(ML_ERR_FORMAT, "%s: corrupt gzip data: %s", r->path, msg);
        r->eof = 1;
    }
    r->len += (size_t)got;
    r->buf[r->len] = '\0';
    return ML_OK;
}

/* Find the next separator in buf[from, len). Returns 1 and [*s, *e) when
 * found; 0 when more data is needed (or at EOF, none). *resume is where to
 * continue searching after a fill. */
static int find_sep(const reader *r, ml_text_split split, const char *delim, size_t dlen, size_t from, size_t *s,
                    size_t *e, size_t *resume) {
    const char *b = r->buf;
    if (split == ML_SPLIT_DELIM) {
        const char *p = memmem(b + from, r->len - from, delim, dlen);
        if (p) {
            *s = (size_t)(p - b);
            *e = *s + dlen;
            return 1;
        }
        *resume = r->len >= dlen ? r->len - dlen + 1 : 0;
        return 0;
    }
    if (split == ML_SPLIT_LINES) {
        const char *p = memchr(b + from, '\n', r->len - from);
        if (p) {
            *s = (size_t)(p - b);
            *e = *s + 1;
            return 1;
        }
        *resume = r->len;
        return 0;
    }
    /* ML_SPLIT_BLANK: '\n' ([ \t\r]* '\n')+ */
    size_t i = from;
    for (;;) {
        const char *p = memchr(b + i, '\n', r->len - i);
        if (!p) {
            *resume = r->len;
            return 0;
        }
        size_t nl = (size_t)(p - b), j = nl + 1, last_nl = nl;
        int blank = 0;
        for (;;) {
            while (j < r->len && (b[j] == ' ' || b[j] == '\t' || b[j] == '\r')) j++;
            if (j == r->len) {
                if (!r->eof) { /* cannot decide yet */
                    *resume = nl;
                    return 0;
                }
                break;
            }
            if (b[j] != '\n') break;
            blank = 1;
            last_nl = j;
            j++;
        }
        if (blank) {
            *s = nl;
            *e = last_nl + 1;
            return 1;
        }
        i = nl + 1;
    }
}

static int read_text(const ml_source *src, emitter *em) {
    reader r;
    ML_CHECK(reader_open(&r, src->path));
    int rc = ML_OK;
    const char *delim = src->delimiter ? src->delimiter : ML_DEFAULT_DELIM;
    size_t dlen = strlen(delim);
    if (src->split == ML_SPLIT_DELIM && dlen == 0)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: empty document delimiter", src->path);
    ML_CHECK_GOTO(reader_fill(&r), done);
    size_t scan = 0;
    while (!em->stop) {
        size_t s, e, resume = 0;
        if (src->split != ML_SPLIT_FILE && find_sep(&r, src->split, delim, dlen, scan, &s, &e, &resume)) {
            ML_CHECK_GOTO(emit(em, r.buf + r.pos, s - r.pos, 1), done);
            r.pos = e;
            scan = e;
            continue;
        }
        if (r.eof) {
            ML_CHECK_GOTO(emit(em, r.buf + r.pos, r.len - r.pos, 1), done);
            break;
        }
        size_t shift = r.pos;
        ML_CHECK_GOTO(reader_fill(&r), done);
        scan = (src->split != ML_SPLIT_FILE && resume > shift) ? resume - shift : 0;
    }
done:
    reader_close(&r);
    return rc;
}

static int read_jsonl(const ml_source *src, emitter *em) {
    reader r;
    ML_CHECK(reader_open(&r, src->path));
    int rc = ML_OK;
    const char *field = src->field ? src->field : "text";
    int64_t lineno = 0;
    ML_CHECK_GOTO(reader_fill(&r), done);
    size_t scan = 0;
    while (!em->stop) {
        const char *p = memchr(r.buf + scan, '\n', r.len - scan);
        size_t end;
        if (p)
            end = (size_t)(p - r.buf);
        else if (r.eof)
            end = r.len;
        else {
            size_t shift = r.pos, searched = r.len;
            ML_CHECK_GOTO(reader_fill(&r), done);
            scan = searched - shift;
            continue;
        }
        lineno++;
        size_t n = end - r.pos;
        const char *line = r.buf + r.pos;
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t')) k++;
        if (k < n) {
            json_error_t jerr;
            json_t *obj = json_loadb(line, n, 0, &jerr);
            const char *why = NULL;
            char whybuf[300];
            json_t *val = NULL;
            if (!obj) {
                snprintf(whybuf, sizeof whybuf, "not valid JSON (%s)", jerr.text);
                why = whybuf;
            } else if (!json_is_object(obj))
                why = "not a JSON object";
            else if (!(val = json_object_get(obj, field))) {
                snprintf(whybuf, sizeof whybuf, "no field '%s'", field);
                why = whybuf;
            } else if (!json_is_string(val)) {
                snprintf(whybuf, sizeof whybuf, "field '%s' is not a string", field);
                why = whybuf;
            }
            if (why) {
                if (obj) json_decref(obj);
                if (!src->skip_bad)
                    ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s:%lld: %s (skip_bad skips such lines)", src->path,
                                 (long long)lineno, why);
                em->st->bad_lines++;
            } else {
                rc = emit(em, json_string_value(val), json_string_length(val), 0);
                json_decref(obj);
                if (rc != ML_OK) {
                    ml_error_trace(rc, __FILE__, __LINE__, __func__);
                    goto done;
                }
            }
        }
        if (!p) break;
        r.pos = end + 1;
        scan = r.pos;
    }
done:
    reader_close(&r);
    return rc;
}

static int read_whole(const char *path, emitter *em) {
    reader r;
    ML_CHECK(reader_open(&r, path));
    int rc = ML_OK;
    while (!r.eof) ML_CHECK_GOTO(reader_fill(&r), done);
    ML_CHECK_GOTO(emit(em, r.buf + r.pos, r.len - r.pos, 0), done);
done:
    reader_close(&r);
    return rc;
}

/* ---- directory trees ------------------------------------------------------ */
typedef struct {
    char **v;
    size_t n, cap;
} strlist;

static int strlist_push(strlist *l, const char *s) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        char **nv = ml_realloc(l->v, nc * sizeof *nv);
        if (!nv) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n] = ml_strdup(s);
    if (!l->v[l->n]) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    l->n++;
    return ML_OK;
}

static void strlist_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) ml_free(l->v[i]);
    ml_free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Collect relative paths of regular files under root/rel (hidden entries
 * and symlinked directories are skipped). */
static int walk(const char *root, const char *rel, const ml_source *src, strlist *out) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return ML_FAIL(ML_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = ML_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char sub[4096], full[4096 + 256];
        if (snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", de->d_name) >= (int)sizeof sub) continue;
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat st, lst;
        if (stat(full, &st) != 0 || lstat(full, &lst) != 0) continue; /* dangling link */
        if (src->exclude && glob_list_match(src->exclude, sub)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (S_ISLNK(lst.st_mode)) continue;
            ML_CHECK_GOTO(walk(root, sub, src, out), done);
        } else if (S_ISREG(st.st_mode)) {
            if (src->include && !glob_list_match(src->include, sub)) continue;
            ML_CHECK_GOTO(strlist_push(out, sub), done);
        }
    }
done:
    closedir(d);
    return rc;
}

static int read_dir(const ml_source *src, emitter *em) {
    struct stat st;
    if (stat(src->path, &st) != 0) return ML_FAIL(ML_ERR_NOTFOUND, "%s: %s", src->path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return ML_FAIL(ML_ERR_ARG, "%s: not a directory (a 'dir' source needs one)", src->path);
    strlist files = {0};
    int rc = ML_OK;
    ML_CHECK_GOTO(walk(src->path, "", src, &files), done);
    if (files.n) qsort(files.v, files.n, sizeof *files.v, cmp_str);
    for (size_t i = 0; i < files.n && !em->stop; i++) {
        char full[8192];
        snprintf(full, sizeof full, "%s/%s", src->path, files.v[i]);
        ML_CHECK_GOTO(read_whole(full, em), done);
        em->st->files++;
    }
done:
    strlist_free(&files);
    return rc;
}

int ml_corpus_foreach(const ml_source *src, int n_src, ml_doc_fn fn, void *ctx, ml_corpus_stats *stats) {
    ml_corpus_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    emitter em = {fn, ctx, stats, 0};
    for (int i = 0; i < n_src && !em.stop; i++) {
        if (!src[i].path || !*src[i].path) return ML_FAIL(ML_ERR_ARG, "corpus source %d has no path", i);
        switch (src[i].kind) {
        case ML_SRC_TEXT:
            ML_CHECK(read_text(&src[i], &em));
            stats->files++;
            break;
        case ML_SRC_JSONL:
            ML_CHECK(read_jsonl(&src[i], &em));
            stats->files++;
            break;
        case ML_SRC_DIR:
            ML_CHECK(read_dir(&src[i], &em));
            break;
        default:
            return ML_FAIL(ML_ERR_ARG, "%s: unknown source kind %d", src[i].path, (int)src[i].kind);
        }
    }
    return ML_OK;
}

/* ---- documents in memory ---------------------------------------------------- */
int ml_docs_create(ml_docs **out) {
    ml_docs *d = ml_calloc(1, sizeof *d);
    if (!d) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    d->cap_docs = 256;
    d->cap_bytes = 1 << 16;
    d->offsets = ml_malloc((d->cap_docs + 1) * sizeof *d->offsets);
    d->bytes = ml_malloc(d->cap_bytes);
    if (!d->offsets || !d->bytes) {
        ml_docs_destroy(&d);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    d->offsets[0] = 0;
    *out = d;
    return ML_OK;
}

void ml_docs_destroy(ml_docs **d) {
    if (!d || !*d) return;
    ml_free((*d)->offsets);
    ml_free((*d)->bytes);
    ml_free(*d);
    *d = NULL;
}

int ml_docs_append(ml_docs *d, const char *text, size_t len) {
    size_t used = (size_t)d->offsets[d->n_docs];
    if (used + len > d->cap_bytes) {
        size_t nc = d->cap_bytes * 2;
        while (nc < used + len) nc *= 2;
        char *nb = ml_realloc(d->bytes, nc);
        if (!nb) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        d->bytes = nb;
        d->cap_bytes = nc;
    }
    if ((size_t)d->n_docs + 1 > d->cap_docs) {
        size_t nc = d->cap_docs * 2;
        int64_t *no = ml_realloc(d->offsets, (nc + 1) * sizeof *no);
        if (!no) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        d->offsets = no;
        d->cap_docs = nc;
    }
    memcpy(d->bytes + used, text, len);
    d->n_docs++;
    d->offsets[d->n_docs] = (int64_t)(used + len);
    return ML_OK;
}

typedef struct {
    ml_docs *d;
    int64_t first, end;
} load_ctx;

static int load_cb(void *ctx, int64_t index, const char *text, size_t len) {
    load_ctx *c = ctx;
    if (index < c->first) return ML_OK;
    if (c->end >= 0 && index >= c->end) return 1;
    ML_CHECK(ml_docs_append(c->d, text, len));
    return ML_OK;
}

int ml_docs_load(const ml_source *src, int n_src, int64_t first, int64_t count, ml_docs **out,
                 ml_corpus_stats *stats) {
    ml_docs *d = NULL;
    ML_CHECK(ml_docs_create(&d));
    d->first = first;
    load_ctx c = {d, first, count < 0 ? -1 : first + count};
    int rc = ml_corpus_foreach(src, n_src, load_cb, &c, stats);
    if (rc != ML_OK) {
        ml_docs_destroy(&d);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = d;
    return ML_OK;
}
