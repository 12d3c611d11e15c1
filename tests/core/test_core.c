/* core: status table, error tracebacks, YAML, options registry, RNG,
 * allocation-failure injection. */
#include <math.h>

#include "ml_test.h"
#include "mergelens/config.h"

static int inner(int x) {
    if (x < 0) return ML_FAIL(ML_ERR_ARG, "x must be >= 0, got %d", x);
    return ML_OK;
}
static int outer(int x) {
    ML_CHECK(inner(x));
    return ML_OK;
}

static void test_status_and_traceback(void **state) {
    (void)state;
    assert_string_equal(ml_status_name(ML_ERR_IO), "ML_ERR_IO");
    assert_string_equal(ml_status_name(ML_OK), "ML_OK");
    assert_string_equal(ml_status_name(-999), "ML_ERR_UNKNOWN");
    for (int c = 0; c > -ML_STATUS_COUNT_; c--) assert_non_null(strstr(ml_status_name(c), "ML_"));
    assert_int_equal(outer(1), ML_OK);
    assert_int_equal(outer(-3), ML_ERR_ARG);
    assert_string_equal(ml_error_message(), "x must be >= 0, got -3");
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf, "w");
    ml_error_print(f, 1);
    fclose(f);
    /* two frames: where it failed and where it was propagated */
    assert_non_null(strstr(buf, "in inner()"));
    assert_non_null(strstr(buf, "in outer()"));
    assert_non_null(strstr(buf, "test_core.c:"));
}

static const char *job =
    "# a job file\n"
    "train:\n"
    "  learning_rate: 6e-4\n"
    "  steps: 100\n"
    "  schedule: cosine\n"
    "  name: \"base\"\n"
    "  resume: yes\n"
    "other:\n"
    "  a: [1, 2, 3]\n"
    "broken:\n"
    "  steps: 10\n"
    "  lerning_rate: 1e-3\n"
    "typed:\n"
    "  steps: \"12\"\n"
    "ranged:\n"
    "  steps: -4\n"
    "choice:\n"
    "  schedule: cosin\n";

static const ml_option_spec train_opts[] = {
    {"learning_rate", ML_OPT_FLOAT, "1e-3", 0, 1, NULL, "peak learning rate"},
    {"steps", ML_OPT_INT, "10", 1, 1e9, NULL, "optimizer steps"},
    {"schedule", ML_OPT_CHOICE, "constant", 0, -1, "cosine|linear|constant", "learning-rate schedule"},
    {"name", ML_OPT_STRING, NULL, 0, -1, NULL, "model name"},
    {"resume", ML_OPT_BOOL, "false", 0, -1, NULL, "resume from a checkpoint"},
    ML_OPT_END,
};

static void test_options_from_yaml_and_argv(void **state) {
    (void)state;
    ml_node *root = NULL;
    ML_ASSERT_OK(ml_yaml_parse_string(job, "jobs/x.yaml", &root));
    ml_options *o = NULL;
    ML_ASSERT_OK(ml_options_create("train", train_opts, &o));
    ML_ASSERT_FAILS(ml_options_finalize(o), ML_ERR_CONFIG, "missing required key 'name'");
    ML_ASSERT_OK(ml_options_apply_node(o, ml_node_get(root, "train"), NULL));
    assert_true(ml_opt_float(o, "learning_rate") == 6e-4);
    assert_int_equal(ml_opt_int(o, "steps"), 100);
    assert_string_equal(ml_opt_str(o, "schedule"), "cosine");
    assert_string_equal(ml_opt_str(o, "name"), "base");
    assert_int_equal(ml_opt_bool(o, "resume"), 1);
    char *argv[] = {"train", "--steps", "7", "--learning-rate=0.5", "pos1", "--resume", "false", "--name", "x"};
    int npos = 0, help = 0;
    char **pos = NULL;
    ML_ASSERT_OK(ml_options_apply_argv(o, 9, argv, &npos, &pos, &help));
    assert_int_equal(npos, 1);
    assert_string_equal(pos[0], "pos1");
    ml_free(pos);
    assert_int_equal(ml_opt_int(o, "steps"), 7);
    assert_true(ml_opt_float(o, "learning_rate") == 0.5);
    assert_int_equal(ml_opt_bool(o, "resume"), 0);
    ML_ASSERT_OK(ml_options_finalize(o));
    char *json = NULL;
    ML_ASSERT_OK(ml_options_to_json(o, &json));
    assert_string_equal(json, "{\"learning_rate\":0.5,\"steps\":7,\"schedule\":\"cosine\",\"name\":\"x\","
                              "\"resume\":false}");
    ml_free(json);
    /* the errors users see */
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "broken"), NULL), ML_ERR_CONFIG,
                    "jobs/x.yaml:12: unknown key 'lerning_rate' (did you mean 'learning_rate'?)");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "typed"), NULL), ML_ERR_CONFIG,
                    "jobs/x.yaml:14: key 'steps': expected a number, got the string \"12\"");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "ranged"), NULL), ML_ERR_CONFIG,
                    "jobs/x.yaml:16: key 'steps': -4 is out of range [1, 1000000000]");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "choice"), NULL), ML_ERR_CONFIG,
                    "jobs/x.yaml:18: key 'schedule': 'cosin' is not one of cosine|linear|constant");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "other"), NULL), ML_ERR_CONFIG,
                    "jobs/x.yaml:9: unknown key 'a'");
    char *bad[] = {"train", "--stepz", "3"};
    ML_ASSERT_FAILS(ml_options_apply_argv(o, 3, bad, NULL, NULL, NULL), ML_ERR_CONFIG,
                    "command line: unknown key 'stepz' (did you mean 'steps'?)");
    char *bad2[] = {"train", "--learning_rate", "abc"};
    ML_ASSERT_FAILS(ml_options_apply_argv(o, 3, bad2, NULL, NULL, NULL), ML_ERR_CONFIG,
                    "key 'learning_rate': expected a number, got 'abc'");
    ml_options_destroy(&o);
    assert_null(o);
    ml_options_destroy(&o); /* tolerates NULL */
    /* the tree */
    const ml_node *a = ml_node_path(root, "other.a");
    assert_non_null(a);
    assert_int_equal(a->kind, ML_NODE_SEQ);
    assert_int_equal(a->n, 3);
    int64_t v = 0;
    ML_ASSERT_OK(ml_node_as_int(a->items[2], &v));
    assert_int_equal(v, 3);
    ML_ASSERT_OK(ml_node_to_json(ml_node_get(root, "train"), &json));
    assert_non_null(strstr(json, "\"steps\":100,\"schedule\":\"cosine\",\"name\":\"base\",\"resume\":true}"));
    assert_non_null(strstr(json, "{\"learning_rate\":0.000"));
    ml_free(json);
    ml_node_destroy(&root);
    assert_int_equal(ml_alloc_live(), 0);
}

/* A YAML list for a string option joins with commas; the comma splitter trims and names empty items. */
static void test_lists(void **state) {
    (void)state;
    ml_node *root = NULL;
    ML_ASSERT_OK(ml_yaml_parse_string("ok:\n  name: [data/a.h5, data/b.h5]\nnested:\n  name: [[1]]\n"
                                      "comma:\n  name: [a, \"b,c\"]\nnum:\n  steps: [1, 2]\n",
                                      "l.yaml", &root));
    ml_options *o = NULL;
    ML_ASSERT_OK(ml_options_create("train", train_opts, &o));
    ML_ASSERT_OK(ml_options_apply_node(o, ml_node_get(root, "ok"), NULL));
    assert_string_equal(ml_opt_str(o, "name"), "data/a.h5,data/b.h5");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "nested"), NULL), ML_ERR_CONFIG,
                    "l.yaml:4: key 'name': list items must be plain values");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "comma"), NULL), ML_ERR_CONFIG,
                    "key 'name': list item 'b,c' holds a comma");
    ML_ASSERT_FAILS(ml_options_apply_node(o, ml_node_get(root, "num"), NULL), ML_ERR_CONFIG,
                    "l.yaml:8: key 'steps': expected a single value, got a list");
    ml_options_destroy(&o);
    ml_node_destroy(&root);
    char **items = NULL, *json = NULL;
    int n = 0;
    ML_ASSERT_OK(ml_list_split(" a ,b\t,c", "domains", &items, &n));
    assert_int_equal(n, 3);
    assert_string_equal(items[0], "a");
    assert_string_equal(items[1], "b");
    assert_string_equal(items[2], "c");
    ML_ASSERT_OK(ml_list_to_json((const char *const *)items, n, &json));
    assert_string_equal(json, "[\"a\",\"b\",\"c\"]");
    ml_free(json);
    ml_list_free(items, n);
    ML_ASSERT_FAILS(ml_list_split("a,,b", "domains", &items, &n), ML_ERR_CONFIG,
                    "option 'domains': empty item 2 in 'a,,b'");
    assert_null(items);
    ML_ASSERT_FAILS(ml_list_split("", "hook", &items, &n), ML_ERR_CONFIG, "option 'hook': empty item 1");
    assert_int_equal(ml_alloc_live(), 0);
}

static void test_yaml_errors(void **state) {
    (void)state;
    ml_node *root = NULL;
    ML_ASSERT_FAILS(ml_yaml_parse_string("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml", &root), ML_ERR_CONFIG,
                    "bad.yaml:3: YAML syntax error");
    ML_ASSERT_FAILS(ml_yaml_parse_string("a: 1\nb: 2\na: 3\n", "dup.yaml", &root), ML_ERR_CONFIG,
                    "dup.yaml:3: duplicate key 'a' (first at line 1)");
    ML_ASSERT_FAILS(ml_yaml_parse_string("a: &x 1\nb: *x\n", "alias.yaml", &root), ML_ERR_CONFIG,
                    "alias.yaml:2: YAML aliases are not supported");
    ML_ASSERT_FAILS(ml_yaml_load("/nonexistent/job.yaml", &root), ML_ERR_IO, "/nonexistent/job.yaml: cannot open");
    assert_null(root);
    assert_int_equal(ml_alloc_live(), 0);
}

/* Fail the n-th allocation for n = 1, 2, ...: every path must return
 * ML_ERR_NOMEM (never crash) and free everything it took. */
static int parse_everything(void) {
    ml_node *root = NULL;
    ml_options *o = NULL;
    char *json = NULL;
    int rc = ML_OK;
    ML_CHECK_GOTO(ml_yaml_parse_string(job, "jobs/x.yaml", &root), done);
    ML_CHECK_GOTO(ml_options_create("train", train_opts, &o), done);
    ML_CHECK_GOTO(ml_options_apply_node(o, ml_node_get(root, "train"), NULL), done);
    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    ml_free(json);
    json = NULL;
    ML_CHECK_GOTO(ml_node_to_json(root, &json), done);
done:
    ml_free(json);
    ml_options_destroy(&o);
    ml_node_destroy(&root);
    return rc;
}

static void test_allocation_failures(void **state) {
    (void)state;
    long base = ml_alloc_live();
    int n, failures = 0;
    for (n = 1; n < 10000; n++) {
        ml_alloc_fail_at(n);
        int rc = parse_everything();
        ml_alloc_fail_at(0);
        assert_int_equal(ml_alloc_live(), base);
        if (rc == ML_OK) break;
        if (rc != ML_ERR_NOMEM) fail_msg("allocation %d: got %s (%s)", n, ml_status_name(rc), ml_error_message());
        failures++;
    }
    assert_true(failures > 20);
    print_message("allocation-failure test: %d failure points, all freed\n", failures);
}

static void test_rng(void **state) {
    (void)state;
    ml_rng a, b;
    ml_rng_seed(&a, 42, 0);
    ml_rng_seed(&b, 42, 0);
    for (int i = 0; i < 100; i++) assert_true(ml_rng_u64(&a) == ml_rng_u64(&b));
    ml_rng_seed(&b, 42, 1); /* another stream differs */
    assert_true(ml_rng_u64(&a) != ml_rng_u64(&b));
    /* moments of uniform and normal against closed forms */
    const int n = 200000;
    double su = 0, su2 = 0, sn = 0, sn2 = 0;
    for (int i = 0; i < n; i++) {
        double u = ml_rng_uniform(&a), z = ml_rng_normal(&a);
        assert_true(u >= 0 && u < 1);
        su += u, su2 += u * u, sn += z, sn2 += z * z;
    }
    ML_ASSERT_CLOSE(su / n, 0.5, 0.01);
    ML_ASSERT_CLOSE(su2 / n - (su / n) * (su / n), 1.0 / 12, 0.01);
    ML_ASSERT_CLOSE(sn / n, 0.0, 0.01);
    ML_ASSERT_CLOSE(sn2 / n, 1.0, 0.01);
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) counts[ml_rng_below(&a, 7)]++;
    for (int i = 0; i < 7; i++) assert_true(abs(counts[i] - 10000) < 500);
}

static void test_profiling(void **state) {
    (void)state;
    ml_prof_reset();
    ml_prof_begin("outer");
    ml_prof_begin("inner");
    ml_prof_end("inner", 100, 10);
    ml_prof_begin("inner");
    ml_prof_end("inner", 50, 5);
    ml_prof_end("outer", 0, 0);
    const ml_prof_event *ev;
    int n = ml_prof_events(&ev);
    assert_int_equal(n, 2);
    assert_string_equal(ev[1].name, "inner");
    assert_int_equal(ev[1].count, 2);
    assert_true(ev[1].flops == 150 && ev[1].bytes == 15);
    assert_true(ev[0].seconds >= ev[1].seconds);
}

/* The signal a sum of votes must decode to, by definition: any SIGTERM wins. */
static int expected_signal(int64_t n_term, int64_t n_usr1) { return n_term ? SIGTERM : n_usr1 ? SIGUSR1 : 0; }

/* Rank r's signal in pattern p of P ranks: 0 none, 1 all SIGUSR1, 2 all
 * SIGTERM, 3 SIGUSR1 but the last rank SIGTERM, 4 alternating, 5 only the last SIGUSR1. */
static int pattern_signal(int p, int64_t r, int64_t P) {
    switch (p) {
    case 1: return SIGUSR1;
    case 2: return SIGTERM;
    case 3: return r == P - 1 ? SIGTERM : SIGUSR1;
    case 4: return r % 2 ? SIGTERM : SIGUSR1;
    case 5: return r == P - 1 ? SIGUSR1 : 0;
    default: return 0;
    }
}

static void test_signal_votes(void **state) {
    (void)state;
    /* closed-form sums of t SIGTERM and u SIGUSR1 votes (t + u <= P), up to
     * the largest communicator; 4096 and 65536 broke the old encodings (sae
     * read 4096 SIGUSR1 ranks as SIGTERM, train 65536 SIGTERM ranks as SIGUSR1) */
    const int64_t sizes[] = {1, 2, 3, 4095, 4096, 4097, 65535, 65536, 65537, 1 << 20, (1 << 24) - 1, 1 << 30, INT32_MAX};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const int64_t P = sizes[k];
        const int64_t tu[][2] = {{0, 0}, {0, 1}, {0, P}, {1, 0}, {1, P - 1}, {P, 0}, {P / 2, P - P / 2}, {P - 1, 0}};
        for (size_t c = 0; c < sizeof tu / sizeof tu[0]; c++) {
            const int64_t t = tu[c][0], u = tu[c][1];
            const double sum = (double)t * ml_signal_vote(SIGTERM, (int)P) + (double)u * ml_signal_vote(SIGUSR1, (int)P);
            if (ml_signal_tally(sum, (int)P) != expected_signal(t, u))
                fail_msg("P %lld, %lld SIGTERM + %lld SIGUSR1 ranks: tally %d, expected %d", (long long)P,
                         (long long)t, (long long)u, ml_signal_tally(sum, (int)P), expected_signal(t, u));
        }
    }
    /* rank-by-rank sums as MPI would add them: double (train, sweep,
     * ml_signal_agree) and float (sae: the vote rides on a float allreduce) */
    const int64_t naive[] = {1, 2, 5, 4096, 5000, 65536, 70001, (1 << 24) - 1};
    for (size_t k = 0; k < sizeof naive / sizeof naive[0]; k++) {
        const int64_t P = naive[k];
        for (int p = 0; p <= 5; p++) {
            double sd = 0;
            float sf = 0;
            int64_t t = 0, u = 0;
            for (int64_t r = 0; r < P; r++) {
                const int sig = pattern_signal(p, r, P);
                t += sig == SIGTERM;
                u += sig == SIGUSR1;
                sd += ml_signal_vote(sig, (int)P);
                sf += (float)ml_signal_vote(sig, (int)P);
            }
            const int want = expected_signal(t, u);
            if (ml_signal_tally(sd, (int)P) != want || ml_signal_tally(sf, (int)P) != want)
                fail_msg("P %lld, pattern %d: tally %d (double sum %.17g), %d (float sum %.9g), expected %d",
                         (long long)P, p, ml_signal_tally(sd, (int)P), sd, ml_signal_tally(sf, (int)P), (double)sf,
                         want);
        }
    }
    assert_string_equal(ml_signal_name(ml_signal_tally(0, 4)), "signal 0");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_and_traceback), cmocka_unit_test(test_options_from_yaml_and_argv),
        cmocka_unit_test(test_yaml_errors), cmocka_unit_test(test_lists),          cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_rng),                  cmocka_unit_test(test_profiling),
        cmocka_unit_test(test_signal_votes),
    };
    return ml_test_run(argc, argv, "core", tests, sizeof tests / sizeof tests[0]);
}
