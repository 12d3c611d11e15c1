/* `mergelens export` and `mergelens import`: rank 0 converts (the files are
 * small and serial), every rank agrees on the outcome. */
#include <string.h>

#include "mergelens/config.h"
#include "mergelens/interop.h"

static const ml_option_spec ml_export_specs[] = {
    {"dtype", ML_OPT_CHOICE, "f32", 0, 0, "f32|bf16|f16", "dtype of the exported tensors"},
    ML_OPT_END,
};
static const ml_option_spec ml_import_specs[] = {ML_OPT_END};

static const char ml_export_synopsis[] = "mergelens export hf|saelens SRC.h5 DIR [--dtype f32|bf16|f16]";
static const char ml_import_synopsis[] = "mergelens import hf DIR OUT.h5";
static const char ml_export_usage[] =
    "usage: mergelens export hf MODEL.h5 DIR [--dtype f32|bf16|f16]\n"
    "       mergelens export saelens SAE.h5 DIR [--dtype f32|bf16|f16]\n"
    "  hf:      DIR/model.safetensors + config.json (+ tokenizer.json) for transformers' MistralForCausalLM\n"
    "  saelens: DIR/sae_weights.safetensors + cfg.json for SAELens";
static const char ml_import_usage[] =
    "usage: mergelens import hf DIR OUT.h5\n"
    "  DIR holds config.json and model.safetensors (or model.safetensors.index.json with shards)";

/* Parse argv (options registry, --config, --help); three positionals. */
static int ml_interop_args(MPI_Comm comm, const char *section, const ml_option_spec *specs, const char *usage,
                           const char *synopsis, int argc, char **argv, ml_options **o, int *npos, char ***pos,
                           int *help) {
    ML_CHECK(ml_options_parse_command(comm, section, usage, specs, argc, argv, o, npos, pos, help));
    if (!*help && *npos != 3)
        return ML_FAIL(ML_ERR_ARG, "%s: expected 3 arguments, got %d (usage: %s)", section, *npos, synopsis);
    return ML_OK;
}

int ml_cmd_export(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, npos = 0, help = 0, rank;
    ml_options *o = NULL;
    char **pos = NULL;
    MPI_Comm_rank(comm, &rank);
    ML_CHECK_GOTO(ml_interop_args(comm, "export", ml_export_specs, ml_export_usage, ml_export_synopsis, argc, argv, &o,
                                  &npos, &pos, &help),
                  out);
    if (help) goto out;
    ml_st_dtype dtype;
    ML_CHECK_GOTO(ml_st_dtype_parse(ml_opt_str(o, "dtype"), &dtype), out);
    int hf = !strcmp(pos[0], "hf"), sae = !strcmp(pos[0], "saelens");
    if (!hf && !sae) ML_FAIL_GOTO(out, ML_ERR_ARG, "export: unknown kind '%s' (expected hf or saelens)", pos[0]);
    if (rank == 0) rc = hf ? ml_hf_export(pos[1], pos[2], dtype) : ml_saelens_export(pos[1], pos[2], dtype);
    rc = ml_agree(comm, rc);
out:
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}

int ml_cmd_import(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, npos = 0, help = 0, rank;
    ml_options *o = NULL;
    char **pos = NULL, *json = NULL;
    MPI_Comm_rank(comm, &rank);
    ML_CHECK_GOTO(ml_interop_args(comm, "import", ml_import_specs, ml_import_usage, ml_import_synopsis, argc, argv, &o,
                                  &npos, &pos, &help),
                  out);
    if (help) goto out;
    if (strcmp(pos[0], "hf") != 0) ML_FAIL_GOTO(out, ML_ERR_ARG, "import: unknown kind '%s' (expected hf)", pos[0]);
    ML_CHECK_GOTO(ml_options_to_json(o, &json), out);
    if (rank == 0) rc = ml_hf_import(pos[1], pos[2], json);
    rc = ml_agree(comm, rc);
out:
    ml_free(json);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
