/* The tokenizer file (format mergelens.tokenizer v1):
 *   /vocab/bytes [total] uint8     token bytes, concatenated
 *   /vocab/offsets [V+1] int64     token i is bytes[offsets[i] .. offsets[i+1])
 *   /vocab/flags [V] uint8         1 = special token, 2 = byte-fallback token <0xNN>
 *   /merges [M, 3] int32           (left, right, result); row r has rank r
 *   root attrs vocab_size, n_merges, bos_id, eos_id, pad_id, unk_id (-1 = none),
 *   pretokenizer ("gpt2" | "none" | "metaspace"), byte_level, byte_fallback,
 *   prefix_space (0 no, 1 always, 2 unless the text starts with a space),
 *   strip_decode, ignore_merges (0/1). */
#include "internal.h"

#include "mergelens/io.h"

#include <string.h>

static const char *pretok_names[] = {"gpt2", "none", "metaspace"};

int ml_tokenizer_save(const ml_tokenizer *t, const char *path) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.tokenizer", 1, &h));
    hsize_t V = (hsize_t)t->vocab_size, total = (hsize_t)t->tok_off[t->vocab_size];
    hsize_t d1[1] = {total}, d2[1] = {V + 1}, d3[1] = {V}, dm[2] = {(hsize_t)t->n_merges, 3};
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "vocab/bytes", ML_U8, 1, d1, t->tok_bytes), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "vocab/offsets", ML_I64, 1, d2, t->tok_off), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "vocab/flags", ML_U8, 1, d3, t->tok_flags), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "merges", ML_I32, 2, dm, t->merges), fail);
    const struct {
        const char *k;
        int64_t v;
    } ia[] = {{"vocab_size", t->vocab_size},     {"n_merges", t->n_merges},       {"bos_id", t->bos_id},
              {"eos_id", t->eos_id},             {"pad_id", t->pad_id},           {"unk_id", t->unk_id},
              {"byte_level", t->byte_level},     {"byte_fallback", t->byte_fallback},
              {"prefix_space", t->prefix_space}, {"strip_decode", t->strip_decode},
              {"ignore_merges", t->ignore_merges}};
    for (size_t i = 0; i < sizeof ia / sizeof ia[0]; i++) ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", ia[i].k, ia[i].v), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "pretokenizer", pretok_names[t->pretok]), fail);
    ML_CHECK_GOTO(ml_h5_close(&h), fail);
    return ML_OK;
fail:
    ml_h5_discard(&h);
    return rc;
}

static int get_int(ml_h5 *h, const char *key, int64_t lo, int64_t hi, int64_t *v) {
    ML_CHECK(ml_h5_get_attr_int(h, "/", key, v));
    if (*v < lo || *v > hi)
        return ML_FAIL(ML_ERR_FORMAT, "%s: attribute '%s' = %lld outside [%lld, %lld]", ml_h5_path(h), key,
                       (long long)*v, (long long)lo, (long long)hi);
    return ML_OK;
}

static int load_h5(const char *path, ml_tokenizer **out) {
    int rc = ML_OK;
    ml_h5 *h = NULL;
    uint8_t *bytes = NULL, *flags = NULL;
    int64_t *off = NULL;
    int32_t *merges = NULL;
    const char **tok = NULL;
    size_t *len = NULL;
    char *pt = NULL;
    ML_CHECK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.tokenizer", 1, 1, &h));
    int64_t V, M, v;
    ML_CHECK_GOTO(get_int(h, "vocab_size", 1, INT32_MAX - 1, &V), done);
    ML_CHECK_GOTO(get_int(h, "n_merges", 0, INT32_MAX - 1, &M), done);
    ml_tokenizer proto;
    memset(&proto, 0, sizeof proto);
    ML_CHECK_GOTO(get_int(h, "bos_id", -1, V - 1, &v), done);
    proto.bos_id = (int32_t)v;
    ML_CHECK_GOTO(get_int(h, "eos_id", -1, V - 1, &v), done);
    proto.eos_id = (int32_t)v;
    ML_CHECK_GOTO(get_int(h, "pad_id", -1, V - 1, &v), done);
    proto.pad_id = (int32_t)v;
    ML_CHECK_GOTO(get_int(h, "unk_id", -1, V - 1, &v), done);
    proto.unk_id = (int32_t)v;
    ML_CHECK_GOTO(get_int(h, "byte_level", 0, 1, &v), done);
    proto.byte_level = (int)v;
    ML_CHECK_GOTO(get_int(h, "byte_fallback", 0, 1, &v), done);
    proto.byte_fallback = (int)v;
    ML_CHECK_GOTO(get_int(h, "prefix_space", 0, 2, &v), done);
    proto.prefix_space = (int)v;
    ML_CHECK_GOTO(get_int(h, "strip_decode", 0, 1, &v), done);
    proto.strip_decode = (int)v;
    ML_CHECK_GOTO(get_int(h, "ignore_merges", 0, 1, &v), done);
    proto.ignore_merges = (int)v;
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "pretokenizer", &pt), done);
    int found = 0;
    for (int i = 0; i < 3; i++)
        if (!strcmp(pt, pretok_names[i])) {
            proto.pretok = (ml_pretok)i;
            found = 1;
        }
    if (!found) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: unknown pretokenizer '%s'", path, pt);
    hsize_t d2[1] = {(hsize_t)V + 1}, d3[1] = {(hsize_t)V}, dm[2] = {(hsize_t)M, 3};
    off = ml_malloc(((size_t)V + 1) * sizeof *off);
    flags = ml_malloc((size_t)V);
    merges = ml_malloc(((size_t)M * 3 + 1) * sizeof *merges);
    tok = ml_malloc((size_t)V * sizeof *tok);
    len = ml_malloc((size_t)V * sizeof *len);
    if (!off || !flags || !merges || !tok || !len) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "vocab/offsets", ML_I64, 1, d2, off), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "vocab/flags", ML_U8, 1, d3, flags), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "merges", ML_I32, 2, dm, merges), done);
    if (off[0] != 0) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: vocab/offsets[0] = %lld, expected 0", path, (long long)off[0]);
    for (int64_t i = 0; i < V; i++)
        if (off[i + 1] < off[i]) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: vocab/offsets decrease at %lld", path, (long long)i);
    hsize_t d1[1] = {(hsize_t)off[V]};
    bytes = ml_malloc((size_t)off[V] + 1);
    if (!bytes) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "vocab/bytes", ML_U8, 1, d1, bytes), done);
    for (int64_t i = 0; i < V; i++) {
        tok[i] = (const char *)bytes + off[i];
        len[i] = (size_t)(off[i + 1] - off[i]);
    }
    ML_CHECK_GOTO(ml_tokenizer_build(&proto, (int)V, tok, len, flags, (int)M, merges, out), done);
done:
    ml_h5_close(&h);
    ml_free(pt);
    ml_free(bytes);
    ml_free(flags);
    ml_free(off);
    ml_free(merges);
    ml_free(tok);
    ml_free(len);
    return rc;
}

int ml_tokenizer_load(const char *path, ml_tokenizer **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no such tokenizer file", path);
    int c;
    do c = fgetc(f);
    while (c == ' ' || c == '\n' || c == '\r' || c == '\t');
    fclose(f);
    if (c == '{') ML_CHECK(ml_tokenizer_load_hf_json(path, out));
    else ML_CHECK(load_h5(path, out));
    return ML_OK;
}
