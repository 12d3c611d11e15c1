/* Hugging Face tokenizer.json (model type BPE): import and export.
 *
 * Supported pipelines:
 *  - GPT-2 byte-level: pre_tokenizer ByteLevel (use_regex), decoder ByteLevel;
 *    vocabulary strings are bytes through GPT-2's bytes_to_unicode map.
 *  - Llama/Mistral: normalizer Prepend("▁") + Replace(" " -> "▁") with no
 *    pre_tokenizer, or a Metaspace pre_tokenizer; BPE over characters with
 *    byte_fallback (<0xNN> tokens); decoder strips the prefix space.
 * Internally every token is its raw bytes ("▁" becomes ' ', "<0x0A>" the
 * byte 0x0A). Anything else is ML_ERR_UNSUPPORTED naming the component. */
#include "internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define METASPACE "\xE2\x96\x81" /* U+2581 "▁" */
#define ML_HF_MAX_ID_GAP (1 << 20) /* unused token ids a tokenizer.json may leave */

static const char *jstr(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *obj, const char *key, int def) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* ---- vocabulary string <-> raw bytes ------------------------------------------------ */
typedef struct {
    int byte_level, byte_fallback;
    int byte_of_cp[512]; /* GPT-2: code point -> byte, -1 if none (all mapped cps are < 512) */
    uint32_t cp_of_byte[256];
} conv;

static void conv_init(conv *c, int byte_level, int byte_fallback) {
    c->byte_level = byte_level;
    c->byte_fallback = byte_fallback;
    ml_gpt2_byte_map(c->cp_of_byte);
    for (int i = 0; i < 512; i++) c->byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) c->byte_of_cp[c->cp_of_byte[b]] = b;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

/* Convert a vocabulary string to raw bytes in out (room for strlen(s)).
 * Returns 0 on success, -1 if a GPT-2 string has an unmapped character.
 * *fb = 1 for a byte-fallback token. */
static int str_to_raw(const conv *c, const char *s, char *out, size_t *n, int *fb) {
    size_t len = strlen(s), m = 0;
    *fb = 0;
    if (c->byte_level) {
        const unsigned char *u = (const unsigned char *)s;
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t k;
            if (u[i] < 0x80) {
                cp = u[i];
                k = 1;
            } else if ((u[i] & 0xE0) == 0xC0 && i + 1 < len) {
                cp = (uint32_t)(u[i] & 0x1F) << 6 | (u[i + 1] & 0x3F);
                k = 2;
            } else
                return -1;
            if (cp >= 512 || c->byte_of_cp[cp] < 0) return -1;
            out[m++] = (char)c->byte_of_cp[cp];
            i += k;
        }
        *n = m;
        return 0;
    }
    if (c->byte_fallback && len == 6 && !strncmp(s, "<0x", 3) && s[5] == '>' && hexval(s[3]) >= 0 &&
        hexval(s[4]) >= 0) {
        out[0] = (char)(hexval(s[3]) * 16 + hexval(s[4]));
        *n = 1;
        *fb = 1;
        return 0;
    }
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && !memcmp(s + i, METASPACE, 3)) {
            out[m++] = ' ';
            i += 3;
        } else
            out[m++] = s[i++];
    }
    *n = m;
    return 0;
}

/* ---- import ----------------------------------------------------------------------- */
typedef struct {
    char **tok;
    size_t *len;
    uint8_t *flags;
    int V;
} vocab_build;

static void vocab_free(vocab_build *v) {
    if (v->tok)
        for (int i = 0; i < v->V; i++) ml_free(v->tok[i]);
    ml_free(v->tok);
    ml_free(v->len);
    ml_free(v->flags);
    memset(v, 0, sizeof *v);
}

/* Decide the pipeline from normalizer / pre_tokenizer / decoder. */
static int detect_pipeline(const char *path, json_t *root, json_t *model, ml_tokenizer *proto) {
    json_t *norm = json_object_get(root, "normalizer"), *pre = json_object_get(root, "pre_tokenizer");
    json_t *dec = json_object_get(root, "decoder");
    proto->byte_fallback = jbool(model, "byte_fallback", 0);
    proto->ignore_merges = jbool(model, "ignore_merges", 0);
    /* unwrap a Sequence of one pre-tokenizer */
    if (json_is_object(pre) && jstr(pre, "type") && !strcmp(jstr(pre, "type"), "Sequence")) {
        json_t *list = json_object_get(pre, "pretokenizers");
        if (json_array_size(list) != 1)
            return ML_FAIL(ML_ERR_UNSUPPORTED,
                           "%s: pre_tokenizer Sequence of %zu steps is not supported (only ByteLevel or Metaspace)",
                           path, json_array_size(list));
        pre = json_array_get(list, 0);
    }
    const char *pt = json_is_object(pre) ? jstr(pre, "type") : NULL;
    if (pt && !strcmp(pt, "ByteLevel")) {
        if (!json_is_null(norm) && norm)
            return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: a normalizer with a ByteLevel pre_tokenizer is not supported", path);
        if (!jbool(pre, "use_regex", 1))
            return ML_FAIL(ML_ERR_UNSUPPORTED,
                           "%s: ByteLevel pre_tokenizer with use_regex=false (a custom Split pattern) is not supported",
                           path);
        proto->byte_level = 1;
        proto->pretok = ML_PRETOK_GPT2;
        /* HF's ByteLevel prepends a space unless the text starts with one */
        proto->prefix_space = jbool(pre, "add_prefix_space", 0) ? 2 : 0;
        proto->strip_decode = 0;
        return ML_OK;
    }
    if (pt && !strcmp(pt, "Metaspace")) {
        const char *rep = jstr(pre, "replacement");
        if (rep && strcmp(rep, METASPACE))
            return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: Metaspace replacement '%s' is not supported (only U+2581)", path,
                           rep);
        if (norm && !json_is_null(norm))
            return ML_FAIL(ML_ERR_UNSUPPORTED, "%s: a normalizer with a Metaspace pre_tokenizer is not supported",
                           path);
        const char *scheme = jstr(pre, "prepend_scheme");
        proto->prefix_space = (scheme ? strcmp(scheme, "never") != 0 : jbool(pre, "add_prefix_space", 1)) ? 2 : 0;
        proto->pretok = jbool(pre, "split", 1) ? ML_PRETOK_METASPACE : ML_PRETOK_NONE;
        proto->strip_decode = proto->prefix_space != 0;
        proto->byte_level = 0;
        return ML_OK;
    }
    if (pt)
        return ML_FAIL(ML_ERR_UNSUPPORTED,
                       "%s: pre_tokenizer type '%s' is not supported (supported: ByteLevel, Metaspace, none)", path,
                       pt);
    /* no pre-tokenizer: expect the Mistral/Llama normalizer */
    proto->byte_level = 0;
    proto->pretok = ML_PRETOK_NONE;
    int has_replace = 0;
    if (norm && !json_is_null(norm)) {
        json_t *steps = norm;
        size_t ns = 1;
        if (jstr(norm, "type") && !strcmp(jstr(norm, "type"), "Sequence")) {
            steps = json_object_get(norm, "normalizers");
            ns = json_array_size(steps);
        }
        for (size_t i = 0; i < ns; i++) {
            json_t *st = steps == norm ? norm : json_array_get(steps, i);
            const char *ty = jstr(st, "type");
            if (ty && !strcmp(ty, "Prepend") && jstr(st, "prepend") && !strcmp(jstr(st, "prepend"), METASPACE)) {
                proto->prefix_space = 1;
                continue;
            }
            json_t *pat = json_object_get(st, "pattern");
            if (ty && !strcmp(ty, "Replace") && jstr(pat, "String") && !strcmp(jstr(pat, "String"), " ") &&
                jstr(st, "content") && !strcmp(jstr(st, "content"), METASPACE)) {
                has_replace = 1;
                continue;
            }
            return ML_FAIL(ML_ERR_UNSUPPORTED,
                           "%s: normalizer step '%s' is not supported (only Prepend \"\xE2\x96\x81\" and "
                           "Replace \" \" -> \"\xE2\x96\x81\")",
                           path, ty ? ty : "?");
        }
    }
    if (!has_replace)
        return ML_FAIL(ML_ERR_UNSUPPORTED,
                       "%s: BPE without a ByteLevel or Metaspace pre_tokenizer needs the Replace(\" \" -> "
                       "\"\xE2\x96\x81\") normalizer (Llama/Mistral style)",
                       path);
    /* decoder: Strip of one leading space when present */
    proto->strip_decode = 0;
    if (json_is_object(dec)) {
        json_t *ds = json_object_get(dec, "decoders");
        for (size_t i = 0; i < json_array_size(ds); i++) {
            json_t *d = json_array_get(ds, i);
            if (jstr(d, "type") && !strcmp(jstr(d, "type"), "Strip") &&
                json_integer_value(json_object_get(d, "start")) >= 1)
                proto->strip_decode = 1;
        }
    }
    return ML_OK;
}

int ml_tokenizer_load_hf_json(const char *path, ml_tokenizer **out) {
    int rc = ML_OK;
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    vocab_build vb = {0};
    int32_t *merges = NULL;
    char *buf = NULL;
    if (!root) {
        if (!ml_file_exists(path)) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no such file", path);
        return ML_FAIL(ML_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, jerr.line, jerr.text);
    }
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: no 'model' object (not a tokenizer.json?)", path);
    const char *type = jstr(model, "type");
    json_t *vocab = json_object_get(model, "vocab"), *jmerges = json_object_get(model, "merges");
    if (type && strcmp(type, "BPE"))
        ML_FAIL_GOTO(done, ML_ERR_UNSUPPORTED, "%s: tokenizer model type '%s' is not supported (only BPE)", path, type);
    if (!type && !(json_is_object(vocab) && json_is_array(jmerges)))
        ML_FAIL_GOTO(done, ML_ERR_UNSUPPORTED, "%s: tokenizer model has no type and is not BPE-shaped", path);
    if (!json_is_object(vocab) || !json_is_array(jmerges))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: BPE model lacks 'vocab' (object) or 'merges' (array)", path);
    const char *cs = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
    if ((cs && *cs) || (ew && *ew))
        ML_FAIL_GOTO(done, ML_ERR_UNSUPPORTED,
                     "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported", path);
    ml_tokenizer proto;
    memset(&proto, 0, sizeof proto);
    ML_CHECK_GOTO(detect_pipeline(path, root, model, &proto), done);
    conv cv;
    conv_init(&cv, proto.byte_level, proto.byte_fallback);

    /* vocabulary size: max id over vocab and added_tokens */
    json_t *added = json_object_get(root, "added_tokens");
    int64_t maxid = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > INT32_MAX - 1)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: vocab entry '%s' has no valid id", path, key);
        if (json_integer_value(val) > maxid) maxid = json_integer_value(val);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        int64_t id = json_integer_value(json_object_get(a, "id"));
        if (!jstr(a, "content") || id < 0 || id > INT32_MAX - 1)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: added_tokens[%zu] lacks content or a valid id", path, i);
        if (id > maxid) maxid = id;
    }
    /* ids 0..V-1 with unused ids in between are accepted (with a warning below), but not more than
     * ML_HF_MAX_ID_GAP of them: that keeps a tiny file from asking for gigabytes */
    const size_t entries = json_object_size(vocab) + json_array_size(added);
    if (maxid >= 0 && (size_t)maxid >= entries + ML_HF_MAX_ID_GAP)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT,
                     "%s: token id %lld leaves more than %d ids unused (%zu vocab and added_tokens entries)", path,
                     (long long)maxid, ML_HF_MAX_ID_GAP, entries);
    vb.V = (int)(maxid + 1);
    if (vb.V <= 0) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: empty vocabulary", path);
    vb.tok = ml_calloc((size_t)vb.V, sizeof *vb.tok);
    vb.len = ml_calloc((size_t)vb.V, sizeof *vb.len);
    vb.flags = ml_calloc((size_t)vb.V, 1);
    if (!vb.tok || !vb.len || !vb.flags) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory for %d tokens", vb.V);
    json_object_foreach(vocab, key, val) {
        int id = (int)json_integer_value(val), fb;
        size_t n;
        char *raw = ml_malloc(strlen(key) + 1);
        if (!raw) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        if (str_to_raw(&cv, key, raw, &n, &fb) != 0) {
            ml_free(raw);
            ML_FAIL_GOTO(done, ML_ERR_FORMAT,
                         "%s: vocab entry '%s' has a character outside GPT-2's byte map (not byte-level BPE?)", path,
                         key);
        }
        if (vb.tok[id]) { /* two strings for one id: decode could not invert encode */
            ml_free(raw);
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: vocab entry '%s' reuses id %d (ids must be unique)", path, key, id);
        }
        vb.tok[id] = raw;
        vb.len[id] = n;
        vb.flags[id] = fb ? ML_TOK_BYTEFB : 0;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        int id = (int)json_integer_value(json_object_get(a, "id"));
        const char *content = jstr(a, "content");
        int special = jbool(a, "special", 1);
        if (!special && vb.tok[id]) continue; /* an ordinary token also in vocab */
        ml_free(vb.tok[id]);
        vb.tok[id] = ml_strdup(content);
        if (!vb.tok[id]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        vb.len[id] = strlen(content);
        vb.flags[id] = special ? ML_TOK_SPECIAL : 0;
    }
    int gaps = 0;
    for (int i = 0; i < vb.V; i++)
        if (!vb.tok[i]) {
            vb.tok[i] = ml_strdup("");
            if (!vb.tok[i]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
            vb.flags[i] = ML_TOK_SPECIAL; /* never produced by encoding */
            gaps++;
        }
    if (gaps) ml_warn("%s: %d ids in [0, %d) have no token; they decode to nothing", path, gaps, vb.V);

    /* merges: "a b" strings or ["a", "b"] pairs */
    size_t M = json_array_size(jmerges);
    merges = ml_malloc((M * 3 + 3) * sizeof *merges);
    if (!merges) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory for %zu merges", M);
    size_t bufcap = 256;
    buf = ml_malloc(bufcap);
    if (!buf) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (size_t r = 0; r < M; r++) {
        json_t *mj = json_array_get(jmerges, r);
        const char *a = NULL, *b = NULL;
        size_t la = 0;
        if (json_is_string(mj)) {
            const char *s = json_string_value(mj), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: merge %zu '%s' is not two tokens separated by one space", path,
                             r, s);
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
        } else if (json_is_array(mj) && json_array_size(mj) == 2 && json_is_string(json_array_get(mj, 0)) &&
                   json_is_string(json_array_get(mj, 1))) {
            a = json_string_value(json_array_get(mj, 0));
            la = strlen(a);
            b = json_string_value(json_array_get(mj, 1));
        } else
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path, r);
        size_t lb = strlen(b);
        if (la + lb + 1 > bufcap) {
            bufcap = 2 * (la + lb + 1);
            ml_free(buf);
            buf = ml_malloc(bufcap);
            if (!buf) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        }
        memcpy(buf, a, la);
        buf[la] = '\0';
        json_t *ia = json_object_get(vocab, buf), *ib = json_object_get(vocab, b);
        memcpy(buf + la, b, lb + 1);
        json_t *ic = json_object_get(vocab, buf);
        if (!ia || !ib || !ic)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: merge %zu (%.*s + %s) refers to a token missing from the vocab",
                         path, r, (int)la, a, b);
        merges[3 * r] = (int32_t)json_integer_value(ia);
        merges[3 * r + 1] = (int32_t)json_integer_value(ib);
        merges[3 * r + 2] = (int32_t)json_integer_value(ic);
    }
    const char *unk = jstr(model, "unk_token");
    proto.bos_id = proto.eos_id = proto.pad_id = -2;
    proto.unk_id = -1;
    if (unk) {
        json_t *u = json_object_get(vocab, unk);
        if (u) proto.unk_id = (int32_t)json_integer_value(u);
    }
    ML_CHECK_GOTO(ml_tokenizer_build(&proto, vb.V, (const char *const *)vb.tok, vb.len, vb.flags, (int)M, merges, out),
                  done);
done:
    vocab_free(&vb);
    ml_free(merges);
    ml_free(buf);
    json_decref(root);
    return rc;
}

/* ---- export ----------------------------------------------------------------------- */
/* Vocabulary string of token id (ml_malloc'd). */
static char *token_string(const ml_tokenizer *t, const conv *cv, int32_t id) {
    size_t n;
    const char *b = ml_tokenizer_token_bytes(t, id, &n);
    char *s = ml_malloc(4 * n + 8);
    if (!s) return NULL;
    size_t m = 0;
    if (t->tok_flags[id] & ML_TOK_SPECIAL) {
        memcpy(s, b, n);
        m = n;
    } else if (t->byte_level) {
        for (size_t i = 0; i < n; i++) m += (size_t)ml_utf8_put(cv->cp_of_byte[(unsigned char)b[i]], s + m);
    } else if (t->tok_flags[id] & ML_TOK_BYTEFB) {
        m = (size_t)sprintf(s, "<0x%02X>", (unsigned char)b[0]);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (b[i] == ' ') {
                memcpy(s + m, METASPACE, 3);
                m += 3;
            } else
                s[m++] = b[i];
        }
    }
    s[m] = '\0';
    return s;
}

static json_t *jobj(const char *type) {
    json_t *o = json_object();
    if (o && type) json_object_set_new(o, "type", json_string(type));
    return o;
}

static json_t *byte_level_component(int prefix_space) {
    json_t *o = jobj("ByteLevel");
    json_object_set_new(o, "add_prefix_space", json_boolean(prefix_space));
    json_object_set_new(o, "trim_offsets", json_true());
    json_object_set_new(o, "use_regex", json_true());
    return o;
}

int ml_tokenizer_save_hf_json(const ml_tokenizer *t, const char *path) {
    int rc = ML_OK;
    conv cv;
    conv_init(&cv, t->byte_level, t->byte_fallback);
    json_t *root = json_object(), *added = json_array(), *model = jobj("BPE"), *vocab = json_object(),
           *merges = json_array();
    char **names = ml_calloc((size_t)t->vocab_size, sizeof *names);
    if (!root || !added || !model || !vocab || !merges || !names) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < t->vocab_size; i++) {
        names[i] = token_string(t, &cv, i);
        if (!names[i]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        if (json_object_get(vocab, names[i]))
            ML_FAIL_GOTO(done, ML_ERR_UNSUPPORTED, "%s: tokens %d and %lld have the same string '%s'", path, i,
                         (long long)json_integer_value(json_object_get(vocab, names[i])), names[i]);
        json_object_set_new(vocab, names[i], json_integer(i));
        if (t->tok_flags[i] & ML_TOK_SPECIAL) {
            json_t *a = json_object();
            json_object_set_new(a, "id", json_integer(i));
            json_object_set_new(a, "content", json_string(names[i]));
            json_object_set_new(a, "single_word", json_false());
            json_object_set_new(a, "lstrip", json_false());
            json_object_set_new(a, "rstrip", json_false());
            json_object_set_new(a, "normalized", json_false());
            json_object_set_new(a, "special", json_true());
            json_array_append_new(added, a);
        }
    }
    for (int r = 0; r < t->n_merges; r++) {
        const char *a = names[t->merges[3 * r]], *b = names[t->merges[3 * r + 1]];
        size_t la = strlen(a), lb = strlen(b);
        char *s = ml_malloc(la + lb + 2);
        if (!s) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        memcpy(s, a, la);
        s[la] = ' ';
        memcpy(s + la + 1, b, lb + 1);
        json_array_append_new(merges, json_string(s));
        ml_free(s);
    }
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set(root, "added_tokens", added);
    if (t->byte_level) {
        json_object_set_new(root, "normalizer", json_null());
        json_object_set_new(root, "pre_tokenizer", byte_level_component(t->prefix_space));
        json_object_set_new(root, "post_processor", byte_level_component(t->prefix_space));
        json_object_set_new(root, "decoder", byte_level_component(t->prefix_space));
    } else {
        json_t *norm = jobj("Sequence"), *steps = json_array();
        if (t->prefix_space) { /* Metaspace tokenizers (ByteLevel keeps add_prefix_space in its components above) */
            json_t *p = jobj("Prepend");
            json_object_set_new(p, "prepend", json_string(METASPACE));
            json_array_append_new(steps, p);
        }
        json_t *rep = jobj("Replace"), *pat = json_object();
        json_object_set_new(pat, "String", json_string(" "));
        json_object_set_new(rep, "pattern", pat);
        json_object_set_new(rep, "content", json_string(METASPACE));
        json_array_append_new(steps, rep);
        json_object_set_new(norm, "normalizers", steps);
        if (t->pretok == ML_PRETOK_METASPACE || t->prefix_space == 2) { /* Metaspace prepends (and splits) */
            json_decref(norm);
            json_t *ms = jobj("Metaspace");
            json_object_set_new(ms, "replacement", json_string(METASPACE));
            json_object_set_new(ms, "prepend_scheme", json_string(t->prefix_space ? "first" : "never"));
            json_object_set_new(ms, "split", json_boolean(t->pretok == ML_PRETOK_METASPACE));
            json_object_set_new(root, "normalizer", json_null());
            json_object_set_new(root, "pre_tokenizer", ms);
        } else {
            json_object_set_new(root, "normalizer", norm);
            json_object_set_new(root, "pre_tokenizer", json_null());
        }
        json_object_set_new(root, "post_processor", json_null());
        json_t *dec = jobj("Sequence"), *ds = json_array();
        json_t *d1 = jobj("Replace"), *p1 = json_object();
        json_object_set_new(p1, "String", json_string(METASPACE));
        json_object_set_new(d1, "pattern", p1);
        json_object_set_new(d1, "content", json_string(" "));
        json_array_append_new(ds, d1);
        json_array_append_new(ds, jobj("ByteFallback"));
        json_array_append_new(ds, jobj("Fuse"));
        if (t->strip_decode) {
            json_t *st = jobj("Strip");
            json_object_set_new(st, "content", json_string(" "));
            json_object_set_new(st, "start", json_integer(1));
            json_object_set_new(st, "stop", json_integer(0));
            json_array_append_new(ds, st);
        }
        json_object_set_new(dec, "decoders", ds);
        json_object_set_new(root, "decoder", dec);
    }
    json_object_set_new(model, "dropout", json_null());
    json_object_set_new(model, "unk_token", t->unk_id >= 0 ? json_string(names[t->unk_id]) : json_null());
    json_object_set_new(model, "continuing_subword_prefix", json_null());
    json_object_set_new(model, "end_of_word_suffix", json_null());
    json_object_set_new(model, "fuse_unk", json_boolean(!t->byte_level));
    json_object_set_new(model, "byte_fallback", json_boolean(t->byte_fallback));
    json_object_set_new(model, "ignore_merges", json_boolean(t->ignore_merges));
    json_object_set(model, "vocab", vocab);
    json_object_set(model, "merges", merges);
    json_object_set(root, "model", model);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(root, tmp, JSON_COMPACT) != 0)
        ML_FAIL_GOTO(done, ML_ERR_IO, "%s: cannot write", tmp);
    if (rename(tmp, path) != 0) {
        remove(tmp);
        ML_FAIL_GOTO(done, ML_ERR_IO, "%s: cannot rename %s into place", path, tmp);
    }
done:
    if (names)
        for (int i = 0; i < t->vocab_size; i++) ml_free(names[i]);
    ml_free(names);
    json_decref(added);
    json_decref(model);
    json_decref(vocab);
    json_decref(merges);
    json_decref(root);
    return rc;
}
