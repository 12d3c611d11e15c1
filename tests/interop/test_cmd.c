/* `mergelens export` / `mergelens import` as CLI functions on 1 and 2 ranks:
 * rank 0 converts, every rank returns the same outcome. */
#include <jansson.h>

#include "fixture.h"
#include "ml_test.h"
#include "mergelens/interop.h"

static int rank_;

static const char *tdir(void) {
    static char d[1024];
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    if (!d[0]) snprintf(d, sizeof d, "%s", ml_test_dir("interop_cmd"));
    return d;
}

/* Run a command from a space-separated line (paths must not hold spaces). */
static int run(int (*cmd)(MPI_Comm, int, char **), const char *line) {
    char buf[4096], *argv[32];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *tok = strtok(buf, " "); tok && argc < 31; tok = strtok(NULL, " ")) argv[argc++] = tok;
    argv[argc] = NULL;
    return cmd(MPI_COMM_WORLD, argc, argv);
}

static void expect_fail(int rc, int code0, const char *text) {
    int want = rank_ == 0 ? code0 : ML_ERR_REMOTE;
    if (rc != want)
        fail_msg("rank %d: got %s, expected %s (%s)", rank_, ml_status_name(rc), ml_status_name(want),
                 ml_error_message());
    if (!strstr(ml_error_message(), text))
        fail_msg("rank %d: message '%s' lacks '%s'", rank_, ml_error_message(), text);
}

static void test_export_import(void **state) {
    (void)state;
    const char *d = tdir();
    char line[4096], ck[1100], path[1100];
    snprintf(ck, sizeof ck, "%s/m.h5", d);
    if (rank_ == 0) ML_ASSERT_OK(fx_write_checkpoint(ck, fx_config, 4, NULL, NULL));
    MPI_Barrier(MPI_COMM_WORLD);
    snprintf(line, sizeof line, "export hf %s %s/hf --dtype bf16", ck, d);
    ML_ASSERT_OK(run(ml_cmd_export, line));
    snprintf(line, sizeof line, "import hf %s/hf %s/back.h5", d, d);
    ML_ASSERT_OK(run(ml_cmd_import, line));
    if (rank_ == 0) {
        snprintf(path, sizeof path, "%s/hf/config.json", d);
        json_t *cfg = json_load_file(path, 0, NULL);
        assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "bfloat16");
        json_decref(cfg);
        snprintf(path, sizeof path, "%s/back.h5", d);
        assert_true(ml_file_exists(path));
    }
    char sae[1100];
    snprintf(sae, sizeof sae, "%s/s.h5", d);
    if (rank_ == 0) ML_ASSERT_OK(fx_write_sae(sae, "standard", 8, 32, 0, 2, NULL, NULL));
    MPI_Barrier(MPI_COMM_WORLD);
    snprintf(line, sizeof line, "export saelens %s %s/sae", sae, d);
    ML_ASSERT_OK(run(ml_cmd_export, line));
    if (rank_ == 0) {
        snprintf(path, sizeof path, "%s/sae/sae_weights.safetensors", d);
        ml_safetensors *st = NULL;
        ML_ASSERT_OK(ml_safetensors_open(path, &st));
        assert_int_equal(ml_safetensors_dtype(st, 0), ML_ST_F32);
        ml_safetensors_close(&st);
    }
    ML_ASSERT_OK(run(ml_cmd_export, "export --help"));
    ML_ASSERT_OK(run(ml_cmd_import, "import --help"));
}

static void test_errors(void **state) {
    (void)state;
    char line[4096];
    tdir();
    /* argument errors: every rank finds them itself */
    ML_ASSERT_FAILS(run(ml_cmd_export, "export hf only_one"), ML_ERR_ARG, "export: expected 3 arguments, got 2");
    ML_ASSERT_FAILS(run(ml_cmd_export, "export onnx a b"), ML_ERR_ARG,
                    "export: unknown kind 'onnx' (expected hf or saelens)");
    ML_ASSERT_FAILS(run(ml_cmd_import, "import saelens a b"), ML_ERR_ARG,
                    "import: unknown kind 'saelens' (expected hf)");
    ML_ASSERT_FAILS(run(ml_cmd_export, "export hf a b --dtype f8"), ML_ERR_CONFIG, "dtype");
    ML_ASSERT_FAILS(run(ml_cmd_export, "export hf a b --dtpye f16"), ML_ERR_CONFIG, "did you mean 'dtype'");
    /* a failure on rank 0 reaches every rank */
    ml_error_clear();
    snprintf(line, sizeof line, "export hf %s/absent.h5 %s/x", tdir(), tdir());
    expect_fail(run(ml_cmd_export, line), ML_ERR_IO, "absent.h5: cannot open");
    ml_error_clear();
    snprintf(line, sizeof line, "import hf %s/absent_dir %s/y.h5", tdir(), tdir());
    expect_fail(run(ml_cmd_import, line), ML_ERR_NOTFOUND, "absent_dir/config.json: no such file");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_export_import), cmocka_unit_test(test_errors)};
    return ml_test_run(argc, argv, "interop_cmd", tests, sizeof tests / sizeof tests[0]);
}
