/* Fuzz the byte-level BPE tokenizer (data.h) with a fixed vocabulary loaded
 * once from tests/fuzz/data/tokenizer.json: encode arbitrary bytes and decode
 * them back (byte-level BPE must give the input bytes back exactly), and
 * decode arbitrary id sequences (out-of-range ids are an error, not a crash). */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mergelens/data.h"

static ml_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *path = getenv("ML_FUZZ_TOKENIZER");
    if (!path) path = ML_FUZZ_DATA "/tokenizer.json";
    if (ml_tokenizer_load(path, &tok) != ML_OK) {
        ml_error_print(stderr, 1);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    long live = ml_alloc_live();
    ml_ids ids = {0};
    if (data[0] & 1) {
        /* encode + decode round trip */
        if (ml_tokenizer_encode(tok, (const char *)data + 1, size - 1, &ids) != ML_OK) {
            ml_error_print(stderr, 1);
            abort(); /* any bytes are valid input */
        }
        char *text = NULL;
        size_t len = 0;
        if (ml_tokenizer_decode(tok, ids.ids, ids.n, &text, &len) != ML_OK) abort();
        if (len != size - 1 || memcmp(text, data + 1, len) != 0) {
            fprintf(stderr, "fuzz: decode(encode(x)) != x (%zu vs %zu bytes)\n", len, size - 1);
            abort();
        }
        ml_free(text);
    } else {
        /* decode arbitrary ids (4 bytes each, any value) */
        size_t n = (size - 1) / 4;
        int32_t *v = ml_malloc(n * sizeof *v + 1);
        if (!v) abort();
        if (n) memcpy(v, data + 1, n * sizeof *v);
        char *text = NULL;
        size_t len = 0;
        int rc = ml_tokenizer_decode(tok, v, n, &text, &len);
        int valid = 1;
        for (size_t i = 0; i < n; i++) valid &= v[i] >= 0 && v[i] < ml_tokenizer_vocab_size(tok);
        if ((rc == ML_OK) != valid) abort(); /* error exactly for out-of-range ids */
        if (rc == ML_OK) ml_free(text);
        ml_error_clear();
        ml_free(v);
    }
    ml_ids_free(&ids);
    /* encode grows the tokenizer's chunk cache; only decode must leave the
     * allocation count where it was (LeakSanitizer covers the rest) */
    if (!(data[0] & 1)) ml_fuzz_check_no_leak(live, "tokenizer decode");
    return 0;
}
