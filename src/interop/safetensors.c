/* safetensors reader and writer.
 *
 * File layout: [u64 little-endian N][N bytes of JSON header][data section].
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [b, e]}
 * (byte offsets relative to the data section) plus an optional
 * "__metadata__" object of string -> string. Tensor bytes are little-endian,
 * row-major. The reader accepts exactly what the reference implementation
 * accepts: the tensors tile the data section without overlap or holes.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "interop_internal.h"
#include "mergelens/interop.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mergelens safetensors support assumes a little-endian host"
#endif

/* The reference implementation's limit on the JSON header size. */
#define ML_ST_MAX_HEADER 100000000ull
/* Elements converted per chunk when reading or writing 16-bit floats. */
#define ML_ST_CHUNK 8192

static const struct {
    const char *name, *torch;
    size_t size;
} ml_st_types[ML_ST_DTYPE_COUNT_] = {
    [ML_ST_F32] = {"F32", "float32", 4}, [ML_ST_F16] = {"F16", "float16", 2}, [ML_ST_BF16] = {"BF16", "bfloat16", 2},
    [ML_ST_I32] = {"I32", "int32", 4},   [ML_ST_I64] = {"I64", "int64", 8},
};

static int ml_st_dtype_valid(ml_st_dtype t) { return (int)t >= 0 && t < ML_ST_DTYPE_COUNT_; }
const char *ml_st_dtype_name(ml_st_dtype t) { return ml_st_dtype_valid(t) ? ml_st_types[t].name : "?"; }
size_t ml_st_dtype_size(ml_st_dtype t) { return ml_st_dtype_valid(t) ? ml_st_types[t].size : 0; }
const char *ml_st_dtype_torch_name(ml_st_dtype t) { return ml_st_dtype_valid(t) ? ml_st_types[t].torch : "?"; }

int ml_st_dtype_parse(const char *name, ml_st_dtype *out) {
    static const struct {
        const char *alias;
        ml_st_dtype t;
    } aliases[] = {{"fp32", ML_ST_F32}, {"fp16", ML_ST_F16}, {"half", ML_ST_F16}, {"bf16", ML_ST_BF16}};
    for (int t = 0; t < ML_ST_DTYPE_COUNT_; t++)
        if (!strcasecmp(name, ml_st_types[t].name) || !strcasecmp(name, ml_st_types[t].torch)) {
            *out = (ml_st_dtype)t;
            return ML_OK;
        }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcasecmp(name, aliases[i].alias)) {
            *out = aliases[i].t;
            return ML_OK;
        }
    return ML_FAIL(ML_ERR_ARG, "unknown dtype '%s' (expected f32, f16, bf16, i32 or i64)", name);
}

/* Element count of a shape; 0 on overflow past limit (with *overflow set). */
static uint64_t ml_st_numel(int ndim, const int64_t *shape, uint64_t limit, int *overflow) {
    uint64_t n = 1;
    *overflow = 0;
    for (int d = 0; d < ndim; d++) {
        uint64_t s = (uint64_t)shape[d];
        if (s != 0 && n > limit / s) *overflow = 1;
        n *= s;
    }
    return *overflow ? 0 : n;
}

/* ---- reader ------------------------------------------------------------------ */
typedef struct {
    char *name;
    ml_st_dtype dtype;
    int ndim;
    int64_t shape[ML_ST_MAX_DIMS];
    uint64_t begin, end; /* byte range in the data section */
} ml_st_entry;

struct ml_safetensors {
    char *path;
    void *map;
    size_t map_size;
    const uint8_t *data; /* data section */
    uint64_t data_size;
    int n;
    ml_st_entry *t; /* sorted by name */
    int nmeta;
    char **meta; /* key, value pairs sorted by key */
};

static int ml_st_cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const ml_st_entry *)a)->name, ((const ml_st_entry *)b)->name);
}
static int ml_st_cmp_entry_ptr_offset(const void *a, const void *b) {
    const ml_st_entry *x = *(const ml_st_entry *const *)a, *y = *(const ml_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}
static int ml_st_cmp_meta(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A non-negative JSON integer. */
static int ml_st_json_u63(const json_t *v, int64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (int64_t)json_integer_value(v);
    return 1;
}

static int ml_st_parse_metadata(ml_safetensors *st, json_t *meta) {
    if (!json_is_object(meta)) return ML_FAIL(ML_ERR_FORMAT, "%s: '__metadata__' is not a JSON object", st->path);
    size_t n = json_object_size(meta);
    st->meta = ml_calloc(2 * n + 1, sizeof(char *));
    if (!st->meta) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val))
            return ML_FAIL(ML_ERR_FORMAT, "%s: '__metadata__' entry '%s' is not a string", st->path, key);
        st->meta[2 * st->nmeta] = ml_strdup(key);
        st->meta[2 * st->nmeta + 1] = ml_strdup(json_string_value(val));
        st->nmeta++;
        if (!st->meta[2 * st->nmeta - 2] || !st->meta[2 * st->nmeta - 1])
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    qsort(st->meta, (size_t)st->nmeta, 2 * sizeof(char *), ml_st_cmp_meta);
    return ML_OK;
}

static int ml_st_parse_entry(ml_safetensors *st, const char *name, json_t *v, ml_st_entry *e) {
    const char *p = st->path;
    char sbuf[256];
    if (!name[0]) return ML_FAIL(ML_ERR_FORMAT, "%s: a tensor has an empty name", p);
    e->name = ml_strdup(name);
    if (!e->name) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    if (!json_is_object(v)) return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", p, name);
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': missing string 'dtype'", p, name);
    const char *dts = json_string_value(dt);
    int found = 0;
    for (int t = 0; t < ML_ST_DTYPE_COUNT_; t++)
        if (!strcmp(dts, ml_st_types[t].name)) {
            e->dtype = (ml_st_dtype)t;
            found = 1;
        }
    if (!found)
        return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': unsupported dtype '%s' (supported: F32, F16, BF16, I32, I64)",
                       p, name, dts);
    if (!json_is_array(sh)) return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': missing array 'shape'", p, name);
    if (json_array_size(sh) > ML_ST_MAX_DIMS)
        return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions, at most %d are supported", p, name,
                       json_array_size(sh), ML_ST_MAX_DIMS);
    e->ndim = (int)json_array_size(sh);
    for (int d = 0; d < e->ndim; d++)
        if (!ml_st_json_u63(json_array_get(sh, (size_t)d), &e->shape[d]))
            return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer", p, name, d);
    int64_t b, en;
    if (!json_is_array(off) || json_array_size(off) != 2 || !ml_st_json_u63(json_array_get(off, 0), &b) ||
        !ml_st_json_u63(json_array_get(off, 1), &en))
        return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' is not a pair of non-negative integers", p,
                       name);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->begin > e->end || e->end > st->data_size)
        return ML_FAIL(ML_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section of %llu bytes", p, name,
                       (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)st->data_size);
    int overflow;
    size_t es = ml_st_types[e->dtype].size;
    uint64_t numel = ml_st_numel(e->ndim, e->shape, UINT64_MAX / es, &overflow);
    if (overflow || numel * es != e->end - e->begin)
        return ML_FAIL(
            ML_ERR_FORMAT, "%s: tensor '%s': shape %s of %s needs %s%llu bytes but data_offsets [%llu, %llu] hold %llu",
            p, name, ml_fmt_shape(sbuf, sizeof sbuf, e->ndim, e->shape), dts, overflow ? "more than " : "",
            overflow ? (unsigned long long)UINT64_MAX : (unsigned long long)(numel * es), (unsigned long long)e->begin,
            (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    return ML_OK;
}

/* The tensors must tile the data section: sorted by offset, each starts
 * where the previous ended, and the last ends at the section's end. */
static int ml_st_check_tiling(ml_safetensors *st) {
    int rc = ML_OK;
    const ml_st_entry **order = ml_malloc(sizeof(*order) * (size_t)(st->n + 1));
    if (!order) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int i = 0; i < st->n; i++) order[i] = &st->t[i];
    qsort(order, (size_t)st->n, sizeof(*order), ml_st_cmp_entry_ptr_offset);
    uint64_t pos = 0;
    for (int i = 0; i < st->n; i++) {
        const ml_st_entry *e = order[i];
        if (e->begin < pos) {
            const ml_st_entry *prev = order[i - 1];
            rc = ML_FAIL(ML_ERR_FORMAT, "%s: tensors '%s' (data_offsets [%llu, %llu]) and '%s' ([%llu, %llu]) overlap",
                         st->path, prev->name, (unsigned long long)prev->begin, (unsigned long long)prev->end, e->name,
                         (unsigned long long)e->begin, (unsigned long long)e->end);
            goto done;
        }
        if (e->begin > pos) {
            rc = ML_FAIL(ML_ERR_FORMAT, "%s: data section bytes [%llu, %llu) before tensor '%s' belong to no tensor",
                         st->path, (unsigned long long)pos, (unsigned long long)e->begin, e->name);
            goto done;
        }
        pos = e->end;
    }
    if (pos != st->data_size)
        rc = ML_FAIL(ML_ERR_FORMAT, "%s: data section bytes [%llu, %llu) after the last tensor belong to no tensor",
                     st->path, (unsigned long long)pos, (unsigned long long)st->data_size);
done:
    ml_free(order);
    return rc;
}

static int ml_st_parse_header(ml_safetensors *st, const char *text, size_t len) {
    int rc = ML_OK;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ML_FAIL(ML_ERR_FORMAT, "%s: header is not valid JSON: %s (header byte %d)", st->path, jerr.text,
                       jerr.position);
    if (!json_is_object(root)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: header is not a JSON object", st->path);
    size_t cap = json_object_size(root);
    st->t = ml_calloc(cap + 1, sizeof(ml_st_entry));
    if (!st->t) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            ML_CHECK_GOTO(ml_st_parse_metadata(st, val), done);
            continue;
        }
        ML_CHECK_GOTO(ml_st_parse_entry(st, key, val, &st->t[st->n++]), done);
    }
    qsort(st->t, (size_t)st->n, sizeof(ml_st_entry), ml_st_cmp_entry_name);
    ML_CHECK_GOTO(ml_st_check_tiling(st), done);
done:
    json_decref(root);
    return rc;
}

int ml_safetensors_open(const char *path, ml_safetensors **out) {
    int rc = ML_OK, fd = -1;
    *out = NULL;
    ml_prof_begin("safetensors_open");
    ml_safetensors *st = ml_calloc(1, sizeof *st);
    if (!st) ML_CHECK_GOTO(ML_ERR_NOMEM, fail);
    st->path = ml_strdup(path);
    if (!st->path) ML_CHECK_GOTO(ML_ERR_NOMEM, fail);
    fd = open(path, O_RDONLY);
    if (fd < 0)
        ML_FAIL_GOTO(fail, errno == ENOENT ? ML_ERR_NOTFOUND : ML_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) ML_FAIL_GOTO(fail, ML_ERR_IO, "%s: not a regular file", path);
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT,
                     "%s: %llu bytes is too short for a safetensors file (no 8-byte header length)", path,
                     (unsigned long long)size);
    st->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        ML_FAIL_GOTO(fail, ML_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    }
    st->map_size = (size_t)size;
    close(fd);
    fd = -1;
    uint64_t hlen;
    memcpy(&hlen, st->map, 8);
    if (hlen > size - 8)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT,
                     "%s: header length %llu exceeds the %llu bytes after the length field (truncated or not "
                     "safetensors)",
                     path, (unsigned long long)hlen, (unsigned long long)(size - 8));
    if (hlen > ML_ST_MAX_HEADER)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                     (unsigned long long)hlen, ML_ST_MAX_HEADER);
    st->data = (const uint8_t *)st->map + 8 + hlen;
    st->data_size = size - 8 - hlen;
    ML_CHECK_GOTO(ml_st_parse_header(st, (const char *)st->map + 8, (size_t)hlen), fail);
    ml_prof_end("safetensors_open", 0, (double)(8 + hlen));
    *out = st;
    return ML_OK;
fail:
    if (fd >= 0) close(fd);
    ml_safetensors_close(&st);
    ml_prof_end("safetensors_open", 0, 0);
    return rc;
}

void ml_safetensors_close(ml_safetensors **pst) {
    if (!pst || !*pst) return;
    ml_safetensors *st = *pst;
    if (st->map) munmap(st->map, st->map_size);
    if (st->t)
        for (int i = 0; i < st->n; i++) ml_free(st->t[i].name);
    ml_free(st->t);
    if (st->meta)
        for (int i = 0; i < 2 * st->nmeta; i++) ml_free(st->meta[i]);
    ml_free(st->meta);
    ml_free(st->path);
    ml_free(st);
    *pst = NULL;
}

const char *ml_safetensors_path(const ml_safetensors *st) { return st->path; }
int ml_safetensors_count(const ml_safetensors *st) { return st->n; }
const char *ml_safetensors_name(const ml_safetensors *st, int i) { return st->t[i].name; }
ml_st_dtype ml_safetensors_dtype(const ml_safetensors *st, int i) { return st->t[i].dtype; }

int ml_safetensors_find(const ml_safetensors *st, const char *name) {
    ml_st_entry key = {.name = (char *)name};
    const ml_st_entry *e = bsearch(&key, st->t, (size_t)st->n, sizeof(ml_st_entry), ml_st_cmp_entry_name);
    return e ? (int)(e - st->t) : -1;
}

const int64_t *ml_safetensors_shape(const ml_safetensors *st, int i, int *ndim) {
    if (ndim) *ndim = st->t[i].ndim;
    return st->t[i].shape;
}

size_t ml_safetensors_numel(const ml_safetensors *st, int i) {
    return (size_t)((st->t[i].end - st->t[i].begin) / ml_st_types[st->t[i].dtype].size);
}

const void *ml_safetensors_data(const ml_safetensors *st, int i, size_t *nbytes) {
    if (nbytes) *nbytes = (size_t)(st->t[i].end - st->t[i].begin);
    return st->data + st->t[i].begin;
}

int ml_safetensors_metadata_count(const ml_safetensors *st) { return st->nmeta; }
const char *ml_safetensors_metadata_key(const ml_safetensors *st, int i) { return st->meta[2 * i]; }
const char *ml_safetensors_metadata(const ml_safetensors *st, const char *key) {
    for (int i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta[2 * i], key)) return st->meta[2 * i + 1];
    return NULL;
}

static int ml_st_lookup(const ml_safetensors *st, const char *name, int *idx) {
    *idx = ml_safetensors_find(st, name);
    if (*idx < 0) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no tensor '%s'", st->path, name);
    return ML_OK;
}

int ml_safetensors_read_f32(const ml_safetensors *st, const char *name, float *out, size_t n) {
    int i;
    char sbuf[256];
    ML_CHECK(ml_st_lookup(st, name, &i));
    const ml_st_entry *e = &st->t[i];
    size_t numel = ml_safetensors_numel(st, i);
    if (n != numel)
        return ML_FAIL(ML_ERR_SHAPE, "%s: tensor '%s' has %zu elements (shape %s), expected %zu", st->path, name, numel,
                       ml_fmt_shape(sbuf, sizeof sbuf, e->ndim, e->shape), n);
    const uint8_t *src = st->data + e->begin;
    if (e->dtype == ML_ST_F32) {
        if (n) memcpy(out, src, n * sizeof(float)); /* out may be NULL when n == 0 */
        return ML_OK;
    }
    if (e->dtype != ML_ST_F16 && e->dtype != ML_ST_BF16)
        return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected a float dtype (F32, F16 or BF16)",
                       st->path, name, ml_st_types[e->dtype].name);
    uint16_t buf[ML_ST_CHUNK]; /* the mapping may not be 2-byte aligned */
    for (size_t k = 0; k < n; k += ML_ST_CHUNK) {
        size_t m = n - k < ML_ST_CHUNK ? n - k : ML_ST_CHUNK;
        memcpy(buf, src + 2 * k, 2 * m);
        if (e->dtype == ML_ST_F16)
            ml_f16_to_f32_array(out + k, buf, m);
        else
            ml_bf16_to_f32_array(out + k, buf, m);
    }
    return ML_OK;
}

int ml_safetensors_read_raw(const ml_safetensors *st, const char *name, void *out, size_t nbytes) {
    int i;
    ML_CHECK(ml_st_lookup(st, name, &i));
    size_t have;
    const void *src = ml_safetensors_data(st, i, &have);
    if (nbytes != have)
        return ML_FAIL(ML_ERR_SHAPE, "%s: tensor '%s' holds %zu bytes, expected %zu", st->path, name, have, nbytes);
    if (have) memcpy(out, src, have);
    return ML_OK;
}

/* ---- writer ------------------------------------------------------------------ */
static int ml_st_cmp_write_order(const void *a, const void *b) {
    const ml_st_tensor *x = *(const ml_st_tensor *const *)a, *y = *(const ml_st_tensor *const *)b;
    size_t sx = ml_st_types[x->dtype].size, sy = ml_st_types[y->dtype].size;
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int ml_st_check_tensor(const char *path, const ml_st_tensor *t, uint64_t *nbytes) {
    if (!t->name || !t->name[0]) return ML_FAIL(ML_ERR_ARG, "%s: a tensor has an empty name", path);
    if (!strcmp(t->name, "__metadata__"))
        return ML_FAIL(ML_ERR_ARG, "%s: '__metadata__' cannot be a tensor name", path);
    if (!ml_st_dtype_valid(t->dtype))
        return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, t->name, (int)t->dtype);
    if (t->from_f32 && t->dtype != ML_ST_F32 && t->dtype != ML_ST_F16 && t->dtype != ML_ST_BF16)
        return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': cannot convert float32 data to %s", path, t->name,
                       ml_st_types[t->dtype].name);
    if (t->ndim < 0 || t->ndim > ML_ST_MAX_DIMS)
        return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': %d dimensions (0..%d allowed)", path, t->name, t->ndim,
                       ML_ST_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0)
            return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': negative dimension %lld", path, t->name,
                           (long long)t->shape[d]);
    int overflow;
    uint64_t numel = ml_st_numel(t->ndim, t->shape, UINT64_MAX / 8, &overflow);
    if (overflow) return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': shape too large", path, t->name);
    if (numel > 0 && !t->data) return ML_FAIL(ML_ERR_ARG, "%s: tensor '%s': no data", path, t->name);
    *nbytes = numel * ml_st_types[t->dtype].size;
    return ML_OK;
}

/* Build the padded JSON header. *header is ml_malloc'd; *hlen % 8 == 0. */
static int ml_st_build_header(const char *path, int n, const ml_st_tensor *const *order, const uint64_t *nbytes,
                              int nmeta, const char *const *meta, char **header, size_t *hlen) {
    int rc = ML_OK;
    char *text = NULL;
    json_t *root = json_object(), *jm = NULL;
    if (!root) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: out of memory building the header", path);
    if (nmeta > 0) {
        jm = json_object();
        if (!jm || json_object_set_new(root, "__metadata__", jm) != 0)
            ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: out of memory building the header", path);
        for (int i = 0; i < nmeta; i++) {
            json_t *v = json_string(meta[2 * i + 1]);
            if (!meta[2 * i] || !v || json_object_set_new(jm, meta[2 * i], v) != 0)
                ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: metadata entry %d is not a valid UTF-8 key/value pair", path, i);
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const ml_st_tensor *t = order[i];
        if (json_object_get(root, t->name))
            ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: tensor name '%s' given twice", path, t->name);
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        json_t *e = json_pack("{s:s, s:o?, s:[I, I]}", "dtype", ml_st_types[t->dtype].name, "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + nbytes[i]));
        if (!shape || !e || json_object_set_new(root, t->name, e) != 0)
            ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: cannot encode tensor '%s' (name must be valid UTF-8)", path, t->name);
        off += nbytes[i];
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "%s: cannot serialise the header", path);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    *header = ml_malloc(padded + 1);
    if (!*header) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    memcpy(*header, text, len);
    memset(*header + len, ' ', padded - len);
    (*header)[padded] = '\0';
    *hlen = padded;
done:
    free(text);
    json_decref(root);
    return rc;
}

static int ml_st_write_data(ml_atomic_file *f, const ml_st_tensor *t, uint64_t nbytes) {
    if (!t->from_f32 || t->dtype == ML_ST_F32) return ml_atomic_write(f, t->data, (size_t)nbytes);
    const float *src = t->data;
    size_t n = (size_t)(nbytes / 2);
    uint16_t buf[ML_ST_CHUNK];
    for (size_t k = 0; k < n; k += ML_ST_CHUNK) {
        size_t m = n - k < ML_ST_CHUNK ? n - k : ML_ST_CHUNK;
        if (t->dtype == ML_ST_F16)
            ml_f32_to_f16_array(buf, src + k, m);
        else
            ml_f32_to_bf16_array(buf, src + k, m);
        ML_CHECK(ml_atomic_write(f, buf, 2 * m));
    }
    return ML_OK;
}

int ml_safetensors_write(const char *path, int n, const ml_st_tensor *tensors, int nmeta, const char *const *meta) {
    int rc = ML_OK;
    const ml_st_tensor **order = NULL;
    uint64_t *nbytes = NULL, *sorted_bytes = NULL, total = 0;
    char *header = NULL;
    size_t hlen = 0;
    ml_atomic_file f = {.fd = -1};
    if (n < 0 || nmeta < 0 || (n > 0 && !tensors) || (nmeta > 0 && !meta))
        return ML_FAIL(ML_ERR_ARG, "%s: invalid tensor or metadata list", path);
    ml_prof_begin("safetensors_write");
    order = ml_malloc(sizeof(*order) * (size_t)(n + 1));
    nbytes = ml_malloc(sizeof(*nbytes) * (size_t)(n + 1));
    if (!order || !nbytes) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    sorted_bytes = ml_malloc(sizeof(*sorted_bytes) * (size_t)(n + 1));
    if (!sorted_bytes) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    for (int i = 0; i < n; i++) {
        ML_CHECK_GOTO(ml_st_check_tensor(path, &tensors[i], &nbytes[i]), done);
        order[i] = &tensors[i];
        total += nbytes[i];
    }
    qsort(order, (size_t)n, sizeof(*order), ml_st_cmp_write_order);
    for (int i = 0; i < n; i++) sorted_bytes[i] = nbytes[order[i] - tensors];
    ML_CHECK_GOTO(ml_st_build_header(path, n, order, sorted_bytes, nmeta, meta, &header, &hlen), done);
    ML_CHECK_GOTO(ml_atomic_open(&f, path), done);
    uint64_t le = (uint64_t)hlen;
    ML_CHECK_GOTO(ml_atomic_write(&f, &le, 8), abort);
    ML_CHECK_GOTO(ml_atomic_write(&f, header, hlen), abort);
    for (int i = 0; i < n; i++) ML_CHECK_GOTO(ml_st_write_data(&f, order[i], sorted_bytes[i]), abort);
    ML_CHECK_GOTO(ml_atomic_commit(&f), done);
    goto done;
abort:
    ml_atomic_abort(&f);
done:
    ml_free(header);
    ml_free(sorted_bytes);
    ml_free(nbytes);
    ml_free(order);
    ml_prof_end("safetensors_write", 0, rc == ML_OK ? (double)(8 + hlen + total) : 0);
    return rc;
}
