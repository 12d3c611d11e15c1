/* Fuzz the corpus readers (data.h): plain text with each document split and
 * JSON Lines (strict and skip_bad), on arbitrary file contents (gzip is
 * detected by content, so compressed inputs are reached too). The first
 * input byte picks the reader. Checks: the documents handed out lie within
 * the file's bytes count, no crash, no leak. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mergelens/data.h"

typedef struct {
    int64_t docs, bytes;
} tally;

static int on_doc(void *ctx, int64_t index, const char *text, size_t len) {
    tally *t = ctx;
    if (index != t->docs) __builtin_trap(); /* documents arrive in order */
    volatile char sink = 0;
    for (size_t i = 0; i < len; i++) sink ^= text[i]; /* touch every byte (ASan) */
    (void)sink;
    t->docs++;
    t->bytes += (int64_t)len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    long live = ml_alloc_live();
    const char *path = ml_fuzz_file("corpus", ".txt", data + 1, size - 1);
    if (!path) return 0;
    ml_source src = {0};
    src.path = path;
    switch (data[0] % 6) {
    case 0: src.kind = ML_SRC_TEXT; src.split = ML_SPLIT_DELIM; break;
    case 1: src.kind = ML_SRC_TEXT; src.split = ML_SPLIT_BLANK; break;
    case 2: src.kind = ML_SRC_TEXT; src.split = ML_SPLIT_LINES; break;
    case 3: src.kind = ML_SRC_TEXT; src.split = ML_SPLIT_DELIM; src.delimiter = "\n--\n"; break;
    case 4: src.kind = ML_SRC_JSONL; src.field = "text"; break;
    default: src.kind = ML_SRC_JSONL; src.field = "content"; src.skip_bad = 1; break;
    }
    tally t = {0, 0};
    ml_corpus_stats stats;
    int rc = ml_corpus_foreach(&src, 1, on_doc, &t, &stats);
    if (rc == ML_OK && (stats.docs != t.docs || stats.bytes != t.bytes)) __builtin_trap();
    ml_error_clear();
    /* the in-memory form of the same pass */
    ml_docs *docs = NULL;
    if (ml_docs_load(&src, 1, 0, -1, &docs, NULL) == ML_OK) {
        if (docs->n_docs != t.docs && rc == ML_OK) __builtin_trap();
        ml_docs_destroy(&docs);
    }
    ml_error_clear();
    ml_fuzz_check_no_leak(live, "corpus reader");
    return 0;
}
