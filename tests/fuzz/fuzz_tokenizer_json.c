/* Fuzz the Hugging Face tokenizer.json import (data.h): arbitrary file
 * contents either load as a BPE tokenizer that round-trips a fixed text, or
 * fail with a message; no crash, no leak. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mergelens/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    long live = ml_alloc_live();
    const char *path = ml_fuzz_file("tok", ".json", data, size);
    if (!path) return 0;
    ml_tokenizer *tok = NULL;
    if (ml_tokenizer_load_hf_json(path, &tok) == ML_OK) {
        static const char sample[] = "Once upon a time, def f(x):\n\treturn x + 1 -- \xc3\xa9t\xc3\xa9 \xff\x00!";
        ml_ids ids = {0};
        if (ml_tokenizer_encode(tok, sample, sizeof sample - 1, &ids) == ML_OK) {
            char *text = NULL;
            size_t len = 0;
            /* an imported vocabulary may lack byte tokens: decode may fail, but
             * what it returns must be what was encoded */
            if (ml_tokenizer_decode(tok, ids.ids, ids.n, &text, &len) == ML_OK) {
                if (len != sizeof sample - 1 || memcmp(text, sample, len) != 0) {
                    fprintf(stderr, "fuzz: imported tokenizer does not round-trip\n");
                    abort();
                }
                ml_free(text);
            }
        }
        ml_ids_free(&ids);
        for (int32_t i = -1; i <= ml_tokenizer_vocab_size(tok); i++) {
            size_t n;
            (void)ml_tokenizer_token_bytes(tok, i, &n);
        }
        ml_tokenizer_destroy(&tok);
    } else if (!ml_error_message()[0]) {
        abort(); /* a failure must say why */
    }
    ml_error_clear();
    ml_fuzz_check_no_leak(live, "tokenizer.json import");
    return 0;
}
