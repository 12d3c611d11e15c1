/* Fuzz the YAML tree (config.h), the options registry fed from it, and the
 * job-file parser (pipeline.h) on arbitrary bytes: every input either parses
 * or fails with a recorded one-line error; no crash, no leak, no UB. */
#include <string.h>

#include "fuzz_util.h"
#include "mergelens/config.h"
#include "mergelens/pipeline.h"

static const ml_option_spec specs[] = {
    {"steps", ML_OPT_INT, "10", 1, 1e9, NULL, "int"},
    {"lr", ML_OPT_FLOAT, "1e-3", 0, 10, NULL, "float"},
    {"flag", ML_OPT_BOOL, "false", 0, -1, NULL, "bool"},
    {"out", ML_OPT_STRING, "x.h5", 0, -1, NULL, "string"},
    {"schedule", ML_OPT_CHOICE, "cosine", 0, -1, "cosine|linear|constant", "choice"},
    {"seed", ML_OPT_INT, "0", 0, -1, NULL, "unbounded int"},
    ML_OPT_END,
};

static void walk(const ml_node *n, int depth) {
    if (!n || depth > 64) return;
    if (n->kind == ML_NODE_SCALAR) {
        double d;
        int64_t i;
        int b;
        const char *s;
        if (ml_node_as_double(n, &d) != ML_OK) ml_error_clear();
        if (ml_node_as_int(n, &i) != ML_OK) ml_error_clear();
        if (ml_node_as_bool(n, &b) != ML_OK) ml_error_clear();
        if (ml_node_as_string(n, &s) != ML_OK) ml_error_clear();
        return;
    }
    for (int k = 0; k < n->n; k++) walk(n->items[k], depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    long live = ml_alloc_live();
    char *text = ml_fuzz_cstr(data, size);
    ml_node *root = NULL;
    if (ml_yaml_parse_string(text, "fuzz.yaml", &root) == ML_OK) {
        walk(root, 0);
        char *json = NULL;
        if (ml_node_to_json(root, &json) == ML_OK) ml_free(json);
        else ml_error_clear();
        (void)ml_node_path(root, "stages.train.options");
        ml_options *o = NULL;
        if (ml_options_create("train", specs, &o) == ML_OK) {
            const ml_node *sec = ml_node_get(root, "train");
            if (ml_options_apply_node(o, sec ? sec : root, NULL) == ML_OK && ml_options_finalize(o) == ML_OK) {
                char *cfg = NULL;
                if (ml_options_to_json(o, &cfg) == ML_OK) ml_free(cfg);
            }
            ml_error_clear();
            ml_options_destroy(&o);
        }
        ml_node_destroy(&root);
    } else {
        if (!ml_error_message()[0]) __builtin_trap(); /* a failure must say why */
        ml_error_clear();
    }
    ml_free(text);
    ml_fuzz_check_no_leak(live, "yaml parse / options");
    /* the same bytes as a job file */
    const char *path = ml_fuzz_file("job", ".yaml", data, size);
    ml_job *job = NULL;
    if (path && ml_job_load(path, "/nonexistent/run", &job) == ML_OK) {
        for (int i = 0; i < ml_job_stage_count(job); i++) (void)ml_job_stage(job, i);
        ml_job_destroy(&job);
    }
    ml_error_clear();
    ml_fuzz_check_no_leak(live, "job file parse");
    return 0;
}
