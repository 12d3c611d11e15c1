/* Corpus reader tests on small files in the formats users bring:
 * TinyStories (text split by <|endoftext|>, also gzip), BabyLM (one
 * utterance per line; paragraphs by blank lines; JSONL {"text"}), The Stack
 * (JSONL {"content"}, and source trees by glob). Also bad input and UTF-8
 * counting, reader buffer boundaries, globbing and domain specs. */
#include "ml_test.h"

#include <sys/stat.h>
#include <zlib.h>

#include "mergelens/config.h"
#include "mergelens/data.h"

static const char *dir;

static void put(const char *name, const char *text) {
    char p[1300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *slash = strrchr(p, '/');
    *slash = 0;
    ml_mkdirs(p);
    *slash = '/';
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

static const char *path_of(const char *name) {
    static char p[4][1300];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

typedef struct {
    char docs[64][256];
    int n;
} got;

static int collect(void *ctx, int64_t index, const char *text, size_t len) {
    got *g = ctx;
    assert_int_equal(index, g->n);
    snprintf(g->docs[g->n++], sizeof g->docs[0], "%.*s", (int)len, text);
    return ML_OK;
}

static void expect_docs(const ml_source *src, int n_src, const char *const *want, int n, ml_corpus_stats *st) {
    got g = {.n = 0};
    ML_ASSERT_OK(ml_corpus_foreach(src, n_src, collect, &g, st));
    if (g.n != n) fail_msg("%d documents, expected %d (first: '%s')", g.n, n, g.n ? g.docs[0] : "");
    for (int i = 0; i < n; i++)
        if (strcmp(g.docs[i], want[i])) fail_msg("document %d = '%s', expected '%s'", i, g.docs[i], want[i]);
}

static const char *stories = "Once upon a time, there was a cat.\nThe cat was happy.\n<|endoftext|>\n"
                             "Lily had a red ball. She liked it.\n<|endoftext|>\n"
                             "\n<|endoftext|>\nTom ran fast.<|endoftext|>";
static const char *const story_docs[] = {"Once upon a time, there was a cat.\nThe cat was happy.",
                                         "Lily had a red ball. She liked it.", "Tom ran fast."};

static void test_tinystories(void **state) {
    (void)state;
    put("ts/train.txt", stories);
    ml_source src = {.kind = ML_SRC_TEXT, .path = path_of("ts/train.txt")};
    ml_corpus_stats st;
    expect_docs(&src, 1, story_docs, 3, &st);
    assert_int_equal(st.docs, 3);
    assert_int_equal(st.files, 1);
    assert_int_equal(st.bytes, (int64_t)(strlen(story_docs[0]) + strlen(story_docs[1]) + strlen(story_docs[2])));
    assert_int_equal(st.invalid_utf8_docs, 0);
    /* the same file gzip-compressed */
    gzFile gz = gzopen(path_of("ts/train.txt.gz"), "wb");
    gzwrite(gz, stories, (unsigned)strlen(stories));
    gzclose(gz);
    src.path = path_of("ts/train.txt.gz");
    expect_docs(&src, 1, story_docs, 3, NULL);
    /* a truncated gzip file is an error naming the file */
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "head -c 30 %s > %s", path_of("ts/train.txt.gz"), path_of("ts/cut.txt.gz"));
    assert_int_equal(system(cmd), 0);
    src.path = path_of("ts/cut.txt.gz");
    ML_ASSERT_FAILS(ml_corpus_foreach(&src, 1, NULL, NULL, NULL), ML_ERR_FORMAT, "cut.txt.gz: corrupt gzip");
    /* a custom delimiter */
    put("ts/custom.txt", "a1 ## b2 ##c3##");
    src.path = path_of("ts/custom.txt");
    src.delimiter = "##";
    const char *const w[] = {"a1", "b2", "c3"};
    expect_docs(&src, 1, w, 3, NULL);
}

static void test_babylm_text(void **state) {
    (void)state;
    put("babylm/childes.train", "*CHI: more juice .\n*MOT: you want more ?\n\n*CHI: yes .\n");
    ml_source src = {.kind = ML_SRC_TEXT, .split = ML_SPLIT_LINES, .path = path_of("babylm/childes.train")};
    const char *const lines[] = {"*CHI: more juice .", "*MOT: you want more ?", "*CHI: yes ."};
    expect_docs(&src, 1, lines, 3, NULL);
    put("babylm/wiki.train", "= Title =\nFirst paragraph.\n \t\nSecond paragraph\nwith two lines.\n\n\n\nThird.\n");
    src.split = ML_SPLIT_BLANK;
    src.path = path_of("babylm/wiki.train");
    const char *const paras[] = {"= Title =\nFirst paragraph.", "Second paragraph\nwith two lines.", "Third."};
    expect_docs(&src, 1, paras, 3, NULL);
    src.split = ML_SPLIT_FILE;
    const char *const whole[] = {"= Title =\nFirst paragraph.\n \t\nSecond paragraph\nwith two lines.\n\n\n\nThird."};
    expect_docs(&src, 1, whole, 1, NULL);
}

static void test_jsonl(void **state) {
    (void)state;
    /* BabyLM-style {"text"} and The Stack-style {"content", "lang", ...} */
    put("babylm.jsonl", "{\"text\": \"The dog barked.\", \"source\": \"bnc\"}\n\n{\"text\": \"caf\\u00e9 \\n ok\"}\r\n");
    ml_source src = {.kind = ML_SRC_JSONL, .path = path_of("babylm.jsonl")};
    const char *const w1[] = {"The dog barked.", "caf\xC3\xA9 \n ok"};
    expect_docs(&src, 1, w1, 2, NULL);
    put("stack/lua.jsonl", "{\"content\": \"local x = 1\\nreturn x\\n\", \"lang\": \"Lua\", \"size\": 21}\n"
                           "{\"content\": \"print('hi')\", \"lang\": \"Lua\"}");
    src.path = path_of("stack/lua.jsonl");
    src.field = "content";
    const char *const w2[] = {"local x = 1\nreturn x\n", "print('hi')"};
    expect_docs(&src, 1, w2, 2, NULL);
    /* bad lines: file:line in the error; skip_bad counts them */
    put("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 5}\n{not json\n{\"body\": \"x\"}\n[1]\n{\"text\": \"fine\"}\n");
    src.path = path_of("bad.jsonl");
    src.field = NULL;
    ML_ASSERT_FAILS(ml_corpus_foreach(&src, 1, NULL, NULL, NULL), ML_ERR_FORMAT,
                    "bad.jsonl:2: field 'text' is not a string");
    src.field = "body";
    ML_ASSERT_FAILS(ml_corpus_foreach(&src, 1, NULL, NULL, NULL), ML_ERR_FORMAT, "bad.jsonl:1: no field 'body'");
    src.field = NULL;
    src.skip_bad = 1;
    ml_corpus_stats st;
    const char *const w3[] = {"ok", "fine"};
    expect_docs(&src, 1, w3, 2, &st);
    assert_int_equal(st.bad_lines, 4);
    put("bad2.jsonl", "{\"text\": \"ok\"}\n{not json\n");
    src.path = path_of("bad2.jsonl");
    src.skip_bad = 0;
    ML_ASSERT_FAILS(ml_corpus_foreach(&src, 1, NULL, NULL, NULL), ML_ERR_FORMAT, "bad2.jsonl:2: not valid JSON");
}

static void test_dir_glob(void **state) {
    (void)state;
    put("tree/a.lua", "print(1)");
    put("tree/sub/b.lua", "print(2)");
    put("tree/sub/deep/c.lua", "print(3)");
    put("tree/sub/deep/d.py", "print(4)");
    put("tree/.git/e.lua", "hidden");
    put("tree/tests/f.lua", "test");
    put("tree/empty.lua", "");
    ml_source src = {.kind = ML_SRC_DIR, .path = path_of("tree"), .include = "**/*.lua", .exclude = "tests"};
    ml_corpus_stats st;
    const char *const w[] = {"print(1)", "print(2)", "print(3)"}; /* sorted by relative path */
    expect_docs(&src, 1, w, 3, &st);
    assert_int_equal(st.files, 4); /* a, empty, sub/b, sub/deep/c: empty.lua yields no document */
    src.include = "*.py,sub/*.lua";
    const char *const w2[] = {"print(2)", "print(4)"};
    expect_docs(&src, 1, w2, 2, NULL);
    assert_true(ml_glob_match("**/*.lua", "a.lua"));
    assert_true(ml_glob_match("**/*.lua", "x/y/a.lua"));
    assert_false(ml_glob_match("*.lua", "x/a.lua"));
    assert_true(ml_glob_match("x/**", "x/y/z"));
    assert_true(ml_glob_match("[a-c]?.nse", "b1.nse"));
    assert_false(ml_glob_match("[!a-c]?.nse", "b1.nse"));
    assert_false(ml_glob_match("a*b", "a/b"));
    /* errors */
    src.path = path_of("tree/a.lua");
    ML_ASSERT_FAILS(ml_corpus_foreach(&src, 1, NULL, NULL, NULL), ML_ERR_ARG, "not a directory");
    ml_source t = {.kind = ML_SRC_TEXT, .path = path_of("tree")};
    ML_ASSERT_FAILS(ml_corpus_foreach(&t, 1, NULL, NULL, NULL), ML_ERR_ARG, "is a directory");
    t.path = path_of("nowhere.txt");
    ML_ASSERT_FAILS(ml_corpus_foreach(&t, 1, NULL, NULL, NULL), ML_ERR_NOTFOUND, "nowhere.txt: No such file");
}

static void test_utf8(void **state) {
    (void)state;
    /* valid: é (2), € (3), 😀 (4); invalid: FF, FE, C0 AF (overlong), ED A0 80 (surrogate), lone E2 82 */
    assert_int_equal(ml_utf8_invalid_bytes("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9), 0);
    assert_int_equal(ml_utf8_invalid_bytes("a\xFF\xFE" "b", 4), 2);
    assert_int_equal(ml_utf8_invalid_bytes("\xC0\xAF", 2), 2);
    assert_int_equal(ml_utf8_invalid_bytes("\xED\xA0\x80", 3), 3);
    assert_int_equal(ml_utf8_invalid_bytes("x\xE2\x82", 3), 2);
    put("utf.txt", "ok \xC3\xA9<|endoftext|>bad \xFF\xFE<|endoftext|>bad \xC0\xAF too");
    ml_source src = {.kind = ML_SRC_TEXT, .path = path_of("utf.txt")};
    ml_corpus_stats st;
    ML_ASSERT_OK(ml_corpus_foreach(&src, 1, NULL, NULL, &st));
    assert_int_equal(st.docs, 3);
    assert_int_equal(st.invalid_utf8_docs, 2);
    assert_int_equal(st.invalid_utf8_bytes, 4);
}

/* Documents that straddle the reader's 1 MiB buffer: contents must be exact. */
typedef struct {
    int64_t n;
    int bad;
} big_ctx;

static void big_doc(int64_t i, char *buf, size_t *len) {
    *len = (size_t)(1 + (i * 7919) % 3000);
    for (size_t k = 0; k < *len; k++) buf[k] = (char)('a' + (i + (int64_t)k) % 26);
}

static int check_big(void *ctx, int64_t index, const char *text, size_t len) {
    big_ctx *c = ctx;
    char want[4000];
    size_t wl;
    big_doc(index, want, &wl);
    if (wl != len || memcmp(want, text, len)) c->bad++;
    c->n++;
    return ML_OK;
}

static void test_buffer_boundaries(void **state) {
    (void)state;
    const char *seps[] = {"<|endoftext|>", "\n\n \n", "\n"};
    const ml_text_split split[] = {ML_SPLIT_DELIM, ML_SPLIT_BLANK, ML_SPLIT_LINES};
    for (int m = 0; m < 3; m++) {
        const char *p = path_of("big.txt");
        FILE *f = fopen(p, "wb");
        char buf[4000];
        size_t len;
        int64_t n = 2500; /* about 3.7 MB */
        for (int64_t i = 0; i < n; i++) {
            big_doc(i, buf, &len);
            fwrite(buf, 1, len, f);
            fputs(seps[m], f);
        }
        fclose(f);
        ml_source src = {.kind = ML_SRC_TEXT, .path = p, .split = split[m]};
        big_ctx c = {0, 0};
        ML_ASSERT_OK(ml_corpus_foreach(&src, 1, check_big, &c, NULL));
        assert_int_equal(c.n, n);
        assert_int_equal(c.bad, 0);
        /* a document range */
        ml_docs *d = NULL;
        ML_ASSERT_OK(ml_docs_load(&src, 1, 1000, 5, &d, NULL));
        assert_int_equal(d->n_docs, 5);
        big_doc(1003, buf, &len);
        assert_int_equal(d->offsets[4] - d->offsets[3], (int64_t)len);
        assert_memory_equal(d->bytes + d->offsets[3], buf, len);
        ml_docs_destroy(&d);
    }
}

static void test_domain_specs(void **state) {
    (void)state;
    ml_domain_set *s = NULL;
    ML_ASSERT_OK(ml_domains_parse("english=text:/a/b.txt;python=dir:/src/py:**/*.py; english=jsonl:/x.jsonl:content",
                                  1, &s));
    assert_int_equal(s->n, 2);
    assert_string_equal(s->domains[0].name, "english");
    assert_int_equal(s->domains[0].n_sources, 2);
    assert_int_equal(s->domains[0].sources[1].kind, ML_SRC_JSONL);
    assert_string_equal(s->domains[0].sources[1].field, "content");
    assert_int_equal(s->domains[0].sources[1].skip_bad, 1);
    assert_string_equal(s->domains[1].sources[0].include, "**/*.py");
    assert_string_equal(s->domains[1].sources[0].path, "/src/py");
    ml_domains_destroy(&s);
    ML_ASSERT_FAILS(ml_domains_parse("english:/a.txt", 0, &s), ML_ERR_ARG, "is not NAME=KIND:PATH");
    ML_ASSERT_FAILS(ml_domains_parse("e=csv:/a.txt", 0, &s), ML_ERR_ARG, "source kind 'csv'");
    ML_ASSERT_FAILS(ml_domains_parse("a/b=text:/a.txt", 0, &s), ML_ERR_ARG, "domain name 'a/b'");
    /* YAML form */
    ml_node *root = NULL;
    ML_ASSERT_OK(ml_yaml_parse_string("domains:\n"
                                      "  stories:\n"
                                      "    - path: ts/train.txt\n"
                                      "      split: delimiter\n"
                                      "  lua:\n"
                                      "    sources:\n"
                                      "      - {path: stack/lua.jsonl, field: content, skip_bad: true}\n"
                                      "      - {path: tree, include: '**/*.lua'}\n",
                                      "job.yaml", &root));
    ML_ASSERT_OK(ml_domains_from_node(ml_node_get(root, "domains"), &s));
    assert_int_equal(s->n, 2);
    assert_int_equal(s->domains[1].n_sources, 2);
    assert_int_equal(s->domains[1].sources[0].kind, ML_SRC_JSONL);
    assert_int_equal(s->domains[1].sources[0].skip_bad, 1);
    assert_string_equal(s->domains[1].sources[1].include, "**/*.lua");
    ml_domains_destroy(&s);
    ml_node_destroy(&root);
    ML_ASSERT_OK(ml_yaml_parse_string("domains:\n  x:\n    - path: a.txt\n      feild: text\n", "job.yaml", &root));
    ML_ASSERT_FAILS(ml_domains_from_node(ml_node_get(root, "domains"), &s), ML_ERR_CONFIG,
                    "job.yaml:4: unknown source key 'feild'");
    ml_node_destroy(&root);
}

static void test_stories(void **state) {
    (void)state;
    const char *a = path_of("st_a.txt"), *b = path_of("st_b.txt"), *c = path_of("st_c.txt");
    ML_ASSERT_OK(ml_stories_write(a, 50, 7));
    ML_ASSERT_OK(ml_stories_write(b, 50, 7));
    ML_ASSERT_OK(ml_stories_write(c, 50, 8));
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", a, b);
    assert_int_equal(system(cmd), 0); /* same seed, same stories */
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", a, c);
    assert_int_not_equal(system(cmd), 0);
    ml_source src = {.kind = ML_SRC_TEXT, .path = a};
    ml_corpus_stats st;
    ML_ASSERT_OK(ml_corpus_foreach(&src, 1, NULL, NULL, &st));
    assert_int_equal(st.docs, 50);
    assert_true(st.bytes > 50 * 200);
    assert_int_equal(st.invalid_utf8_docs, 0);
}

static int setup(void **state) {
    (void)state;
    dir = ml_test_dir("data_corpus");
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_tinystories, setup), cmocka_unit_test(test_babylm_text),
        cmocka_unit_test(test_jsonl),        cmocka_unit_test(test_dir_glob),
        cmocka_unit_test(test_utf8),         cmocka_unit_test(test_buffer_boundaries),
        cmocka_unit_test(test_domain_specs), cmocka_unit_test(test_stories),
    };
    return ml_test_run(argc, argv, "data_corpus", tests, sizeof tests / sizeof tests[0]);
}
