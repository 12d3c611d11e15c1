/* Commands: `mergelens capture` (activations file) and `mergelens sae-eval`
 * (CE loss recovered of an SAE spliced into its model). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "capture_internal.h"
#include "mergelens/config.h"
#include "mergelens/io.h"

/* Options shared by both commands: which windows are read. */
#define ML_WINDOW_OPTS(split_default)                                                                                \
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "token stores, comma-separated (data/a.h5,data/b.h5)"},              \
        {"weights", ML_OPT_STRING, "", 0, -1, NULL, "share of windows per domain, comma-separated (default: equal)"}, \
        {"split", ML_OPT_CHOICE, split_default, 0, -1, "train|val", "split of the token stores"},                    \
        {"context", ML_OPT_INT, "0", 0, 1 << 20, NULL, "tokens per window fed to the model (0: its max_context)"},    \
        {"sequential", ML_OPT_BOOL, "false", 0, -1, NULL,                                                          \
         "take each domain's first windows in order (default: distinct windows drawn at random)"},                  \
        {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "seed of the random window choice"},                              \
        {"batch", ML_OPT_INT, "8", 1, 1 << 20, NULL, "windows per forward pass (results do not depend on the ranks)"}

/* Comma-separated option -> at most max items (owned by *list; release with ml_list_free). */
static int ml_capture_list(const char *key, const char *text, char ***list, const char **items, int max, int *n) {
    ML_CHECK(ml_list_split(text, key, list, n));
    if (*n > max) return ML_FAIL(ML_ERR_ARG, "--%s '%s': at most %d items", key, text, max);
    for (int i = 0; i < *n; i++) items[i] = (*list)[i];
    return ML_OK;
}

void ml_window_opts_clear(ml_window_opts *w) {
    if (!w) return;
    ml_list_free(w->store, w->spec.n_domains);
    w->store = NULL;
    w->spec.n_domains = 0;
}

/* Fill the window spec from the options; T = 0 takes max_context (capture.h). */
int ml_window_opts_read(const ml_options *o, int max_context, ml_window_opts *w) {
    ml_window_spec *s = &w->spec;
    memset(s, 0, sizeof *s);
    ML_CHECK(ml_capture_list("domains", ml_opt_str(o, "domains"), &w->store, w->paths, ML_CAPTURE_MAX_DOMAINS,
                           &s->n_domains));
    s->paths = w->paths;
    const char *wt = ml_opt_str(o, "weights");
    if (wt && wt[0]) {
        int n = 0;
        const char *p = wt;
        while (*p) {
            char *end = NULL;
            double v = strtod(p, &end);
            if (end == p || (*end && *end != ',') || !(v >= 0) || !isfinite(v))
                return ML_FAIL(ML_ERR_ARG, "--weights '%s': expected a comma-separated list of numbers >= 0", wt);
            if (n < ML_CAPTURE_MAX_DOMAINS) w->weights[n] = v;
            n++;
            p = *end ? end + 1 : end;
        }
        if (n != s->n_domains)
            return ML_FAIL(ML_ERR_ARG, "--weights '%s' has %d values for %d domains", wt, n, s->n_domains);
        s->weights = w->weights;
    }
    s->split = ml_opt_str(o, "split");
    s->T = (int)ml_opt_int(o, "context");
    if (s->T == 0) s->T = max_context;
    if (s->T > max_context)
        return ML_FAIL(ML_ERR_ARG, "--context %d exceeds the model's max_context %d", s->T, max_context);
    s->sequential = ml_opt_bool(o, "sequential");
    s->seed = (uint64_t)ml_opt_int(o, "seed");
    return ML_OK;
}

/* ---- capture -------------------------------------------------------------------- */
static const char ml_capture_usage[] =
    "usage: mergelens capture MODEL.h5 --domains data/a.h5,data/b.h5 --tokens N --out acts/NAME.h5 [options]\n\n"
    "Run the model over windows of the token stores and write the activations of the given hooks\n"
    "(blocks.<i>.mlp.hook_post, blocks.<i>.hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out,\n"
    "hook_mlp_out, mlp.hook_pre, mlp.hook_pre_linear, ln_final.hook_normalized) with token ids, positions,\n"
    "document ids and domain ids (format mergelens.activations v1). For a one-layer model short names\n"
    "(mlp.hook_post, resid_pre, attn_out, ...) mean layer 0. The file is identical for any number of ranks.\n"
    "SIGTERM or SIGUSR1 stops it at the next batch with a checkpoint at --out (complete = 0); running the\n"
    "same command again continues it.\n";

static const ml_option_spec ml_capture_opts[] = {
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "activations file to write (acts/NAME.h5)"},
    {"tokens", ML_OPT_INT, NULL, 1, 1e15, NULL, "tokens (rows) to capture"},
    {"hook", ML_OPT_STRING, "blocks.0.mlp.hook_post", 0, -1, NULL, "hook name(s), comma-separated"},
    {"dtype", ML_OPT_CHOICE, "float32", 0, -1, "float32|float16",
     "storage: float32, or IEEE half bits in uint16 (attribute encoding = float16)"},
    {"chunk_rows", ML_OPT_INT, "0", 0, 1e12, NULL, "HDF5 chunk rows (0: about 1 MiB chunks)"},
    {"resume", ML_OPT_BOOL, "true", 0, -1, NULL,
     "continue --out when it holds an unfinished capture (complete = 0, after SIGTERM/SIGUSR1)"},
    {"checkpoint_every", ML_OPT_INT, "0", 0, 1e15, NULL,
     "also make --out a durable checkpoint every this many batches, so kill -9 resumes too (0: only on a signal)"},
    {"raise_at", ML_OPT_INT, "0", 0, 1e15, NULL, "testing: the last rank raises SIGUSR1 just before batch N (1-based)"},
    ML_WINDOW_OPTS("train"),
    ML_OPT_END,
};

int ml_cmd_capture(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, npos = 0, help = 0;
    ml_options *o = NULL;
    char **pos = NULL, *json = NULL, **hook_store = NULL;
    ml_model *model = NULL;
    ml_window_opts w = {0};
    const char *hooks[ML_CAPTURE_MAX_HOOKS];
    ML_CHECK_GOTO(ml_options_parse_command(comm, "capture", ml_capture_usage, ml_capture_opts, argc, argv, &o, &npos,
                                           &pos, &help),
                  done);
    if (help) goto done;
    if (npos != 1)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "capture: expected one model checkpoint, got %d (usage: %s)", npos,
                     "mergelens capture MODEL.h5 --domains a.h5,b.h5 --tokens N --out acts/NAME.h5");
    ml_capture_config c;
    ml_capture_config_default(&c);
    ML_CHECK_GOTO(ml_capture_list("hook", ml_opt_str(o, "hook"), &hook_store, hooks, ML_CAPTURE_MAX_HOOKS, &c.n_hooks),
                  done);
    c.hooks = hooks;
    ML_CHECK_GOTO(ml_capture_load_model(comm, pos[0], &model), done);
    ML_CHECK_GOTO(ml_window_opts_read(o, model->cfg.max_context, &w), done);
    c.windows = w.spec;
    c.model_path = pos[0];
    c.n_tokens = ml_opt_int(o, "tokens");
    c.float16 = !strcmp(ml_opt_str(o, "dtype"), "float16");
    c.batch = (int)ml_opt_int(o, "batch");
    c.chunk_rows = ml_opt_int(o, "chunk_rows");
    c.resume = ml_opt_bool(o, "resume");
    c.checkpoint_every = ml_opt_int(o, "checkpoint_every");
    c.raise_at = ml_opt_int(o, "raise_at");
    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    c.config_json = json;
    const char *out = ml_opt_str(o, "out");
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ml_capture_stats st;
    ML_CHECK_GOTO(ml_capture_run(comm, model, &c, out, &st), done);
    const double done_tokens = (double)st.n_tokens * (double)(st.n_batches - st.resumed_from) / (double)st.n_batches;
    ml_info("capture: wrote %s: %lld tokens (%lld windows of %d) x %d hook(s), %.1f MB in %.2f s (%.0f tokens/s)%s", out,
            (long long)st.n_tokens, (long long)st.n_windows, c.windows.T, c.n_hooks, st.bytes_written / 1e6,
            st.seconds, done_tokens / (st.seconds > 0 ? st.seconds : 1e-9),
            st.resumed_from > 0 ? " (resumed: rate of this run's batches)" : "");
done:
    ml_model_destroy(&model);
    ml_window_opts_clear(&w);
    ml_list_free(hook_store, c.n_hooks);
    ml_free(json);
    ml_free(pos);
    ml_options_destroy(&o);
    return ml_agree(comm, rc); /* failures seen alike by every rank become agreed ones */
}

/* ---- sae-eval --------------------------------------------------------------------- */
static const char ml_sae_eval_usage[] =
    "usage: mergelens sae-eval SAE.h5 --domains data/a.h5,data/b.h5 [--model MODEL.h5] [--windows N]\n"
    "                          [--out FILE.h5] [--json]\n\n"
    "CE loss recovered of an SAE: mean next-token cross-entropy of the model normally (L_clean), with the\n"
    "MLP hidden activation at the SAE's hook zeroed (L_zero) and replaced by the SAE's reconstruction\n"
    "(L_spliced), on windows of the token stores (validation split by default);\n"
    "CE recovered = (L_zero - L_spliced) / (L_zero - L_clean). Prints a table (or JSON) and optionally\n"
    "writes the numbers to a mergelens.sae_eval file.\n";

static const ml_option_spec ml_sae_eval_opts[] = {
    {"model", ML_OPT_STRING, "", 0, -1, NULL, "model checkpoint (default: the SAE's `model` attribute)"},
    {"hook", ML_OPT_STRING, "", 0, -1, NULL, "splice point (default: the SAE's hook_name; blocks.<i>.mlp.hook_post)"},
    {"windows", ML_OPT_INT, "64", 1, 1e12, NULL, "windows to evaluate on (shared over the domains)"},
    {"out", ML_OPT_STRING, "", 0, -1, NULL, "also write the results to this file (format mergelens.sae_eval)"},
    {"json", ML_OPT_BOOL, "false", 0, -1, NULL, "print the results as one JSON object instead of a table"},
    ML_WINDOW_OPTS("val"),
    ML_OPT_END,
};

/* ce_recovered is null when undefined (L_zero == L_clean). */
static json_t *ml_ce_json(const ml_ce_stats *s) {
    return json_pack("{s:I,s:I,s:f,s:f,s:f,s:o,s:f,s:f,s:f}", "windows", (json_int_t)s->windows, "targets",
                     (json_int_t)s->targets, "loss_clean", s->loss_clean, "loss_zero", s->loss_zero, "loss_spliced",
                     s->loss_spliced, "ce_recovered",
                     isfinite(s->ce_recovered) ? json_real(s->ce_recovered) : json_null(), "acc_clean", s->acc_clean,
                     "acc_zero", s->acc_zero, "acc_spliced", s->acc_spliced);
}

/* Rank 0: the results on stdout. */
static int ml_sae_eval_print(const char *sae_path, const char *model_path, const char *hook,
                             const ml_window_spec *w, const ml_ce_result *r, int as_json) {
    if (as_json) {
        json_t *doms = json_array(), *root = NULL;
        for (int d = 0; doms && d < r->n_domains; d++) {
            json_t *x = ml_ce_json(&r->domain[d]);
            if (x) json_object_set_new(x, "path", json_string(w->paths[d]));
            json_array_append_new(doms, x);
        }
        root = json_pack("{s:s,s:s,s:s,s:s,s:i,s:o,s:o}", "sae", sae_path, "model", model_path, "hook", hook, "split",
                         w->split, "context", w->T, "total", ml_ce_json(&r->total), "domains", doms);
        char *text = root ? json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(root);
        if (!text) return ML_FAIL(ML_ERR_NOMEM, "sae-eval: cannot format the JSON results");
        printf("%s\n", text);
        free(text);
    } else {
        printf("sae-eval %s on %s at %s: %lld windows x %d tokens (%s split)\n", sae_path, model_path, hook,
               (long long)r->total.windows, w->T, w->split);
        printf("%-32s %8s %9s %9s %9s %12s %9s %9s\n", "domain (store)", "windows", "L_clean", "L_zero", "L_spliced",
               "CE_recovered", "acc_clean", "acc_splic");
        for (int d = 0; d <= r->n_domains; d++) {
            const ml_ce_stats *s = d < r->n_domains ? &r->domain[d] : &r->total;
            const char *name = d < r->n_domains ? w->paths[d] : "all", *slash = strrchr(name, '/');
            printf("%-32.32s %8lld %9.4f %9.4f %9.4f %12.4f %9.4f %9.4f\n", slash ? slash + 1 : name,
                   (long long)s->windows, s->loss_clean, s->loss_zero, s->loss_spliced, s->ce_recovered,
                   s->acc_clean, s->acc_spliced);
        }
    }
    fflush(stdout);
    return ML_OK;
}

/* The results as a mergelens.sae_eval v1 file (collective). */
static int ml_sae_eval_write(MPI_Comm comm, const char *path, const char *sae_path, const char *model_path,
                             const char *hook, const ml_window_spec *w, const ml_ce_result *r, const char *config) {
    int rc = ML_OK, D = r->n_domains;
    ml_h5 *h = NULL;
    char *json = NULL;
    ML_CHECK(ml_h5_create(comm, path, ML_SAE_EVAL_FORMAT, 1, &h));
    const ml_ce_stats *t = &r->total;
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "sae", sae_path), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "model", model_path), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "hook_name", hook), fail);
    ML_CHECK_GOTO(ml_capture_json_list(w->paths, D, &json), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domains", json), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "split", w->split), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "order", w->sequential ? "sequential" : "seeded"), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "seed", (int64_t)w->seed), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "context", w->T), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_windows", t->windows), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "n_targets", t->targets), fail);
    const char *names[] = {"loss_clean", "loss_zero", "loss_spliced", "ce_recovered", "acc_clean", "acc_zero",
                           "acc_spliced"};
    double vals[7][ML_CAPTURE_MAX_DOMAINS + 1];
    int64_t wins[ML_CAPTURE_MAX_DOMAINS], tgts[ML_CAPTURE_MAX_DOMAINS];
    for (int d = 0; d <= D; d++) {
        const ml_ce_stats *s = d < D ? &r->domain[d] : t;
        const double v[7] = {s->loss_clean, s->loss_zero, s->loss_spliced, s->ce_recovered,
                             s->acc_clean,  s->acc_zero,  s->acc_spliced};
        for (int k = 0; k < 7; k++) vals[k][d] = v[k];
        if (d < D) {
            wins[d] = s->windows;
            tgts[d] = s->targets;
        }
    }
    char name[64];
    hsize_t dims[1] = {(hsize_t)D};
    for (int k = 0; k < 7; k++) {
        ML_CHECK_GOTO(ml_h5_set_attr_double(h, "/", names[k], vals[k][D]), fail);
        snprintf(name, sizeof name, "/per_domain/%s", names[k]);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, name, ML_F64, 1, dims, vals[k]), fail);
    }
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/per_domain/windows", ML_I64, 1, dims, wins), fail);
    ML_CHECK_GOTO(ml_h5_write_tensor(h, "/per_domain/targets", ML_I64, 1, dims, tgts), fail);
    if (config) ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", config), fail);
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), fail);
    ml_free(json);
    return ml_h5_close(&h);
fail:
    ml_free(json);
    ml_h5_discard(&h);
    return rc;
}

int ml_cmd_sae_eval(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, npos = 0, help = 0, rank;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL, *json = NULL;
    ml_model *model = NULL;
    ml_sae *sae = NULL;
    ml_window_opts w = {0};
    ML_CHECK_GOTO(ml_options_parse_command(comm, "sae-eval", ml_sae_eval_usage, ml_sae_eval_opts, argc, argv, &o,
                                           &npos, &pos, &help),
                  done);
    if (help) goto done;
    if (npos != 1)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae-eval: expected one SAE file, got %d (usage: %s)", npos,
                     "mergelens sae-eval SAE.h5 --domains a.h5,b.h5 [--model MODEL.h5]");
    ML_CHECK_GOTO(ml_agree(comm, ml_sae_load(pos[0], &sae)), done); /* local read on every rank */
    const char *model_path = ml_opt_str(o, "model");
    if (!model_path || !model_path[0]) model_path = sae->model;
    if (!model_path[0])
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae-eval: %s records no model; give --model MODEL.h5", pos[0]);
    const char *hook = ml_opt_str(o, "hook");
    if (!hook || !hook[0]) hook = sae->hook_name;
    ML_CHECK_GOTO(ml_capture_load_model(comm, model_path, &model), done);
    int layer = 0;
    ML_CHECK_GOTO(ml_capture_splice_layer(hook, model->cfg.n_layers, &layer), done);
    ML_CHECK_GOTO(ml_window_opts_read(o, model->cfg.max_context, &w), done);
    ml_ce_result r;
    ML_CHECK_GOTO(ml_capture_ce_recovered(comm, model, sae, layer, &w.spec, ml_opt_int(o, "windows"),
                                          (int)ml_opt_int(o, "batch"), &r),
                  done);
    if (rank == 0) rc = ml_sae_eval_print(pos[0], model_path, hook, &w.spec, &r, ml_opt_bool(o, "json"));
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    const char *out = ml_opt_str(o, "out");
    if (out && out[0]) {
        ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
        ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
        ML_CHECK_GOTO(ml_sae_eval_write(comm, out, pos[0], model_path, hook, &w.spec, &r, json), done);
    }
done:
    ml_model_destroy(&model);
    ml_sae_destroy(&sae);
    ml_window_opts_clear(&w);
    ml_free(json);
    ml_free(pos);
    ml_options_destroy(&o);
    return ml_agree(comm, rc); /* failures seen alike by every rank become agreed ones */
}
