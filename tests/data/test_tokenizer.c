/* Tokenizer tests: BPE training on a hand-checked corpus, the GPT-2 split,
 * round trips of random bytes, and Hugging Face tokenizer.json files written
 * here (GPT-2 byte-level and Mistral byte-fallback) encoding a fixed text to
 * hand-computed ids. */
#include "ml_test.h"

#include "mergelens/data.h"

static ml_docs *docs_of(const char *const *texts, const int *repeat, int n) {
    ml_docs *d = NULL;
    ML_ASSERT_OK(ml_docs_create(&d));
    for (int i = 0; i < n; i++)
        for (int k = 0; k < (repeat ? repeat[i] : 1); k++) ML_ASSERT_OK(ml_docs_append(d, texts[i], strlen(texts[i])));
    return d;
}

static void expect_ids(ml_tokenizer *tok, const char *text, const int32_t *want, size_t nwant) {
    ml_ids ids = {0};
    ML_ASSERT_OK(ml_tokenizer_encode(tok, text, strlen(text), &ids));
    int same = ids.n == nwant;
    for (size_t i = 0; same && i < nwant; i++) same = ids.ids[i] == want[i];
    if (!same) {
        fprintf(stderr, "encode('%s') = [", text);
        for (size_t i = 0; i < ids.n; i++) fprintf(stderr, "%s%d", i ? ", " : "", ids.ids[i]);
        fprintf(stderr, "], expected [");
        for (size_t i = 0; i < nwant; i++) fprintf(stderr, "%s%d", i ? ", " : "", want[i]);
        fprintf(stderr, "]\n");
        fail_msg("wrong ids for '%s'", text);
    }
    ml_ids_free(&ids);
}

static void expect_roundtrip(ml_tokenizer *tok, const char *text, size_t len) {
    ml_ids ids = {0};
    ML_ASSERT_OK(ml_tokenizer_encode(tok, text, len, &ids));
    char *back = NULL;
    size_t blen = 0;
    ML_ASSERT_OK(ml_tokenizer_decode(tok, ids.ids, ids.n, &back, &blen));
    assert_int_equal(blen, len);
    assert_memory_equal(back, text, len);
    ml_free(back);
    ml_ids_free(&ids);
}

/* The hug/pug/pun/bun/hugs corpus, counts 10/5/12/4/5, one word per document.
 * Worked by hand (docs/modules/data.md):
 *   u g (20) -> 256; u n (16) -> 257; h ug (15) -> 258; p un (12) -> 259;
 *   p ug (5) ties hug s (5): smaller pair (112, 256) first -> 260; hug s -> 261;
 *   b un (4) -> 262. */
static void test_bpe_hand_checked(void **state) {
    (void)state;
    const char *words[] = {"hug", "pug", "pun", "bun", "hugs"};
    const int counts[] = {10, 5, 12, 4, 5};
    ml_docs *d = docs_of(words, counts, 5);
    ml_bpe_config cfg = {.vocab_size = 1000};
    ml_tokenizer *tok = NULL;
    ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &tok));
    const int32_t want[][3] = {{'u', 'g', 256}, {'u', 'n', 257}, {'h', 256, 258}, {'p', 257, 259},
                               {'p', 256, 260}, {258, 's', 261}, {'b', 257, 262}};
    assert_int_equal(ml_tokenizer_n_merges(tok), 7);
    for (int r = 0; r < 7; r++) {
        int32_t a, b, c;
        ML_ASSERT_OK(ml_tokenizer_merge(tok, r, &a, &b, &c));
        if (a != want[r][0] || b != want[r][1] || c != want[r][2])
            fail_msg("merge %d: (%d, %d -> %d), expected (%d, %d -> %d)", r, a, b, c, want[r][0], want[r][1],
                     want[r][2]);
    }
    /* vocabulary: 256 bytes + 7 merges + 3 specials */
    assert_int_equal(ml_tokenizer_vocab_size(tok), 266);
    assert_int_equal(ml_tokenizer_bos_id(tok), 263);
    assert_int_equal(ml_tokenizer_eos_id(tok), 264);
    assert_int_equal(ml_tokenizer_pad_id(tok), 265);
    size_t n;
    const char *b = ml_tokenizer_token_bytes(tok, 261, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(b, "hugs", 4);
    /* chunks "hugs", " bun", " pugs": hugs; ' ' bun; ' ' pug s */
    const int32_t e1[] = {261, ' ', 262, ' ', 260, 's'};
    expect_ids(tok, "hugs bun pugs", e1, 6);
    ml_tokenizer_destroy(&tok);
    /* vocab_size caps the merges: 256 + 3 specials + 4 merges */
    cfg.vocab_size = 263;
    ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &tok));
    assert_int_equal(ml_tokenizer_n_merges(tok), 4);
    ml_tokenizer_destroy(&tok);
    cfg.vocab_size = 200;
    ML_ASSERT_FAILS(ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &tok), ML_ERR_ARG, "vocab_size 200 is too small");
    ml_docs_destroy(&d);
}

typedef struct {
    char out[64][32];
    int n;
} chunks;

static int collect(void *ctx, const char *s, size_t len) {
    chunks *c = ctx;
    snprintf(c->out[c->n++], sizeof c->out[0], "%.*s", (int)len, s);
    return ML_OK;
}

static void test_gpt2_split(void **state) {
    (void)state;
    /* expected chunks of GPT-2's pattern, checked by hand */
    const char *text = "Hello world! It's 2024,  ok?\n\n  x  \xC3\xA9t\xC3\xA9 \xE2\x80\x94 x";
    const char *want[] = {"Hello", " world", "!", " It", "'s", " 2024", ",", " ", " ok", "?", "\n\n ", " x", " ",
                          " \xC3\xA9t\xC3\xA9", " \xE2\x80\x94", " x"};
    chunks c = {.n = 0};
    ML_ASSERT_OK(ml_pretokenize(ML_PRETOK_GPT2, text, strlen(text), collect, &c));
    assert_int_equal(c.n, (int)(sizeof want / sizeof want[0]));
    for (int i = 0; i < c.n; i++)
        if (strcmp(c.out[i], want[i])) fail_msg("chunk %d = '%s', expected '%s'", i, c.out[i], want[i]);
    /* trailing whitespace run stays whole */
    c.n = 0;
    ML_ASSERT_OK(ml_pretokenize(ML_PRETOK_GPT2, "a  \n", 4, collect, &c));
    assert_int_equal(c.n, 2);
    assert_string_equal(c.out[1], "  \n");
}

static ml_tokenizer *train_small(void) {
    const char *texts[] = {"The cat sat on the mat. The dog sat on the log.\n",
                           "def f(x):\n    return x + 1\n\nprint(f(2))\n",
                           "local function g(t)\n  for i, v in ipairs(t) do print(i, v) end\nend\n",
                           "Once upon a time, there was a little girl named Lily. She liked to play.\n"};
    const int rep[] = {30, 30, 30, 30};
    ml_docs *d = docs_of(texts, rep, 4);
    ml_bpe_config cfg = {.vocab_size = 400};
    ml_tokenizer *tok = NULL;
    ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &tok));
    ml_docs_destroy(&d);
    return tok;
}

static void test_roundtrip_random(void **state) {
    (void)state;
    ml_tokenizer *tok = train_small();
    assert_true(ml_tokenizer_n_merges(tok) > 50);
    ml_rng rng;
    ml_rng_seed(&rng, 7, 0);
    char buf[4096];
    for (int trial = 0; trial < 300; trial++) {
        size_t len = (size_t)ml_rng_below(&rng, sizeof buf);
        int mode = trial % 3;
        for (size_t i = 0; i < len; i++) {
            if (mode == 0) buf[i] = (char)ml_rng_below(&rng, 256); /* any bytes, NULs, invalid UTF-8 */
            else if (mode == 1) buf[i] = " \n\tabcdeht.,'0123"[ml_rng_below(&rng, 17)];
            else buf[i] = "The cat sat on the mat \xC3\xA9\xE2\x80\x94\n"[ml_rng_below(&rng, 28)];
        }
        expect_roundtrip(tok, buf, len);
    }
    /* a text encodes identically from a cold and a warm cache */
    const char *t = "The cat sat on the mat. def f(x): return x";
    ml_ids a = {0}, b = {0};
    ML_ASSERT_OK(ml_tokenizer_encode(tok, t, strlen(t), &a));
    ML_ASSERT_OK(ml_tokenizer_encode(tok, t, strlen(t), &b));
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof(int32_t));
    assert_true(a.n < strlen(t) / 2); /* merges were used */
    ml_ids_free(&a);
    ml_ids_free(&b);
    int32_t bad = 400000;
    char *out;
    ML_ASSERT_FAILS(ml_tokenizer_decode(tok, &bad, 1, &out, NULL), ML_ERR_ARG, "outside the vocabulary");
    ml_tokenizer_destroy(&tok);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* GPT-2 bytes_to_unicode, written out independently for the test. */
static int gpt2_char(int b, char *out) {
    int cp = b, n = 0;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
    return 2;
}

static void test_hf_gpt2(void **state) {
    (void)state;
    const char *dir = ml_test_dir("data_tok_gpt2");
    char path[1200], path2[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    /* ids 0..255: byte b (as its GPT-2 character); then the merges */
    char *json = malloc(1 << 16);
    size_t m = (size_t)sprintf(json, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":262,\"content\":\"<|endoftext|>\","
                                     "\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
                                     "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
                                     "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
                                     "\"use_regex\":true},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char c[4];
        gpt2_char(b, c);
        if (b == '"' || b == '\\') m += (size_t)sprintf(json + m, "\"\\%s\":%d,", c, b);
        else m += (size_t)sprintf(json + m, "\"%s\":%d,", c, b);
    }
    /* Ġ is U+0120 (byte 32) */
    m += (size_t)sprintf(json + m, "\"\xC4\xA0t\":256,\"he\":257,\"\xC4\xA0the\":258,\"\xC4\xA0" "c\":259,\"at\":260,"
                                   "\"\xC4\xA0" "cat\":261,\"<|endoftext|>\":262},\"merges\":[\"\xC4\xA0 t\",\"h e\","
                                   "\"\xC4\xA0t he\",\"\xC4\xA0 c\",\"a t\",\"\xC4\xA0" "c at\"]}}");
    write_file(path, json);
    /* add_prefix_space: HF's ByteLevel prepends a space only when the text
     * does not start with one (issue #20 item 3) */
    char *pre = strstr(json, "\"add_prefix_space\":false");
    memcpy(pre, "\"add_prefix_space\":true ", strlen("\"add_prefix_space\":false"));
    snprintf(path2, sizeof path2, "%s/prefix.json", dir);
    write_file(path2, json);
    free(json);
    ml_tokenizer *tok = NULL;
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok));
    const int32_t prefixed[] = {258, 261};
    expect_ids(tok, "the cat", prefixed, 2);
    expect_ids(tok, " the cat", prefixed, 2);
    const int32_t spaces[] = {' ', 258, 261}; /* two spaces: one stays a lone byte */
    expect_ids(tok, "  the cat", spaces, 3);
    ml_tokenizer_destroy(&tok);
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path, &tok));
    assert_int_equal(ml_tokenizer_vocab_size(tok), 263);
    assert_int_equal(ml_tokenizer_eos_id(tok), 262);
    /* "the": t + he; " cat": Ġc, at -> Ġcat; " sat": Ġ, s, at; "." */
    const int32_t want[] = {'t', 257, 261, ' ', 's', 260, '.'};
    expect_ids(tok, "the cat sat.", want, 7);
    const int32_t want2[] = {258, 261};
    expect_ids(tok, " the cat", want2, 2);
    expect_roundtrip(tok, "the cat \xFF\x00 sat", 14);
    /* export and re-import: identical encodings */
    snprintf(path2, sizeof path2, "%s/exported.json", dir);
    ML_ASSERT_OK(ml_tokenizer_save_hf_json(tok, path2));
    ml_tokenizer *tok2 = NULL;
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok2));
    expect_ids(tok2, "the cat sat.", want, 7);
    assert_int_equal(ml_tokenizer_eos_id(tok2), 262);
    ml_tokenizer_destroy(&tok2);
    ml_tokenizer_destroy(&tok);
    /* a trained tokenizer survives export + import */
    tok = train_small();
    ML_ASSERT_OK(ml_tokenizer_save_hf_json(tok, path2));
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok2));
    const char *t = "The cat sat on the mat.\n\tdef f(x): return x \xC3\xA9";
    ml_ids a = {0}, b = {0};
    ML_ASSERT_OK(ml_tokenizer_encode(tok, t, strlen(t), &a));
    ML_ASSERT_OK(ml_tokenizer_encode(tok2, t, strlen(t), &b));
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof(int32_t));
    assert_int_equal(ml_tokenizer_bos_id(tok2), ml_tokenizer_bos_id(tok));
    assert_int_equal(ml_tokenizer_pad_id(tok2), ml_tokenizer_pad_id(tok));
    ml_ids_free(&a);
    ml_ids_free(&b);
    ml_tokenizer_destroy(&tok2);
    ml_tokenizer_destroy(&tok);
}

static void test_hf_byte_fallback(void **state) {
    (void)state;
    const char *dir = ml_test_dir("data_tok_fb");
    char path[1200], path2[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *json = malloc(1 << 16);
    size_t m = (size_t)sprintf(
        json, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\","
              "\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":1,\"content\":\"<s>\","
              ""
              "\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":2,\"content\":\"</s>\","
              "\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
              "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xE2\x96\x81\"},"
              "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]},"
              "\"pre_tokenizer\":null,\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\","
              "\"pattern\":{\"String\":\"\xE2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},"
              "{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
              "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"byte_fallback\":true,\"fuse_unk\":true,"
              "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2,");
    for (int b = 0; b < 256; b++) m += (size_t)sprintf(json + m, "\"<0x%02X>\":%d,", b, 3 + b);
    sprintf(json + m, "\"\xE2\x96\x81\":259,\"t\":260,\"h\":261,\"e\":262,\"c\":263,\"a\":264,\"\xE2\x96\x81t\":265,"
                      "\"he\":266,\"\xE2\x96\x81the\":267,\"at\":268,\"\xE2\x96\x81" "c\":269,\"\xE2\x96\x81" "cat\":270},"
                      "\"merges\":[\"\xE2\x96\x81 t\",\"h e\",\"\xE2\x96\x81t he\",\"a t\",\"\xE2\x96\x81 c\","
                      "\"\xE2\x96\x81" "c at\"]}}");
    write_file(path, json);
    free(json);
    ml_tokenizer *tok = NULL;
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path, &tok));
    assert_int_equal(ml_tokenizer_vocab_size(tok), 271);
    assert_int_equal(ml_tokenizer_bos_id(tok), 1);
    assert_int_equal(ml_tokenizer_eos_id(tok), 2);
    /* "▁the▁cat▁é": ▁the, ▁cat, ▁, <0xC3>, <0xA9> */
    const int32_t want[] = {267, 270, 259, 3 + 0xC3, 3 + 0xA9};
    expect_ids(tok, "the cat \xC3\xA9", want, 5);
    expect_roundtrip(tok, "the cat \xC3\xA9 \xFF!", 13);
    snprintf(path2, sizeof path2, "%s/exported.json", dir);
    ML_ASSERT_OK(ml_tokenizer_save_hf_json(tok, path2));
    ml_tokenizer *tok2 = NULL;
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok2));
    expect_ids(tok2, "the cat \xC3\xA9", want, 5);
    ml_tokenizer_destroy(&tok2);
    ml_tokenizer_destroy(&tok);
    /* the same vocabulary behind a Metaspace pre-tokenizer (Llama 2 style): "▁" is prepended only when
     * the text does not start with a space, and chunks start at each space (ids checked with HF) */
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = calloc((size_t)n + 1, 1);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    char *norm = strstr(text, "\"normalizer\""), *dec = strstr(text, ",\"decoder\"");
    assert_true(norm && dec && dec > norm);
    snprintf(path2, sizeof path2, "%s/metaspace.json", dir);
    f = fopen(path2, "wb");
    fwrite(text, 1, (size_t)(norm - text), f);
    fputs("\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\","
          "\"prepend_scheme\":\"first\",\"split\":true}", f);
    fputs(dec, f);
    fclose(f);
    free(text);
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok));
    expect_ids(tok, "the cat \xC3\xA9", want, 5);
    const int32_t m1[] = {259, 267, 259, 270}, m2[] = {267, 3 + '\n', 263, 268};
    expect_ids(tok, "  the  cat", m1, 4);
    expect_ids(tok, "the\ncat", m2, 4);
    ML_ASSERT_OK(ml_tokenizer_save_hf_json(tok, path2));
    ML_ASSERT_OK(ml_tokenizer_load_hf_json(path2, &tok2));
    expect_ids(tok2, "  the  cat", m1, 4);
    ml_tokenizer_destroy(&tok2);
    ml_tokenizer_destroy(&tok);
}

static void test_hf_errors(void **state) {
    (void)state;
    const char *dir = ml_test_dir("data_tok_err");
    char path[1200];
    ml_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/wp.json", dir);
    write_file(path, "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}");
    ML_ASSERT_FAILS(ml_tokenizer_load_hf_json(path, &tok), ML_ERR_UNSUPPORTED,
                    "tokenizer model type 'WordPiece' is not supported (only BPE)");
    snprintf(path, sizeof path, "%s/ws.json", dir);
    write_file(path, "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},"
                     "\"merges\":[]}}");
    ML_ASSERT_FAILS(ml_tokenizer_load_hf_json(path, &tok), ML_ERR_UNSUPPORTED, "pre_tokenizer type 'Whitespace'");
    snprintf(path, sizeof path, "%s/bad.json", dir);
    write_file(path, "{\"model\": {\n  \"type\": BPE}");
    ML_ASSERT_FAILS(ml_tokenizer_load_hf_json(path, &tok), ML_ERR_FORMAT, "bad.json:2: not valid JSON");
    snprintf(path, sizeof path, "%s/missing.json", dir);
    ML_ASSERT_FAILS(ml_tokenizer_load_hf_json(path, &tok), ML_ERR_NOTFOUND, "missing.json");
    assert_null(tok);
}

/* Every allocation failure inside training, JSON import and encoding is
 * reported as ML_ERR_NOMEM and leaks nothing (jansson's own memory aside). */
static void test_alloc_failures(void **state) {
    (void)state;
    const char *words[] = {"hug pug", "pun bun", "hugs"};
    const int counts[] = {3, 2, 2};
    ml_docs *d = docs_of(words, counts, 3);
    ml_bpe_config cfg = {.vocab_size = 300};
    ml_tokenizer *tok = NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/t.json", ml_test_dir("data_tok_alloc"));
    ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &tok));
    ML_ASSERT_OK(ml_tokenizer_save_hf_json(tok, path));
    ml_tokenizer_destroy(&tok);
    ml_log_set_level(ML_LOG_ERROR);
    for (int what = 0; what < 3; what++) {
        int completed = 0;
        for (long n = 1; n < 2000 && !completed; n++) {
            long live = ml_alloc_live();
            ml_tokenizer *t = NULL;
            ml_ids ids = {0};
            if (what == 2) ML_ASSERT_OK(ml_tokenizer_load_hf_json(path, &t));
            ml_alloc_fail_at(n);
            int rc;
            if (what == 0) rc = ml_tokenizer_train(MPI_COMM_SELF, &cfg, d, &t);
            else if (what == 1) rc = ml_tokenizer_load_hf_json(path, &t);
            else rc = ml_tokenizer_encode(t, "hugs and pugs, 1234 buns!", 25, &ids);
            ml_alloc_fail_at(0);
            if (rc == ML_OK) completed = 1;
            else if (rc != ML_ERR_NOMEM) fail_msg("case %d, failing allocation %ld: %s", what, n, ml_status_name(rc));
            ml_ids_free(&ids);
            ml_tokenizer_destroy(&t);
            if (ml_alloc_live() != live) fail_msg("case %d, failing allocation %ld leaks %ld blocks", what, n,
                                                  ml_alloc_live() - live);
        }
        assert_true(completed);
    }
    ml_log_set_level(ML_LOG_WARN);
    ml_docs_destroy(&d);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_hand_checked), cmocka_unit_test(test_gpt2_split),
        cmocka_unit_test(test_roundtrip_random), cmocka_unit_test(test_hf_gpt2),
        cmocka_unit_test(test_hf_byte_fallback), cmocka_unit_test(test_hf_errors),
        cmocka_unit_test(test_alloc_failures),
    };
    return ml_test_run(argc, argv, "data_tokenizer", tests, sizeof tests / sizeof tests[0]);
}
