/* `mergelens sae ACTS.h5 --out saes/NAME.h5`: train one SAE (or a grid of L1
 * coefficients / k values in one pass) on captured activations, evaluate it,
 * and write saes/NAME.h5. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/io.h"
#include "mergelens/config.h"
#include "mergelens/sae.h"
#include "sae_ckpt.h"
#include "sae_forward.h"

static const char ml_sae_usage[] =
    "usage: mergelens sae ACTS.h5 --out saes/NAME.h5 [options]\n"
    "       mergelens sae --model MODEL.h5 --domains data/a.h5,data/b.h5 --tokens N --out saes/NAME.h5 [options]\n\n"
    "Train sparse autoencoders on the activations of one hook of an activations file (streamed in\n"
    "shuffled row chunks, data-parallel over the MPI ranks), evaluate them, and write SAE files.\n"
    "With --model, the rows come from the model's forward pass over windows of the token stores instead:\n"
    "the same rows, in the same order, as `mergelens capture` of those windows would write (window\n"
    "options as for capture; --window_seed is capture's --seed, --model_batch its --batch).\n"
    "A comma-separated --l1 (standard, anthropic) or --k (topk) trains a grid of SAEs in one pass;\n"
    "their files get -l1_<value> / -k<value> before the .h5 suffix.\n";

static const ml_option_spec ml_sae_opts[] = {
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output SAE file (saes/NAME.h5)"},
    {"hook", ML_OPT_STRING, "blocks.0.mlp.hook_post", 0, -1, NULL, "hook whose activations to learn"},
    {"architecture", ML_OPT_CHOICE, "standard", 0, -1, "standard|anthropic|topk",
     "standard: ReLU + L1, unit-norm decoder (the paper); anthropic: L1 weighted by decoder norms; topk"},
    {"expansion", ML_OPT_INT, "16", 1, 4096, NULL, "d_sae = expansion x d_in (unless --d_sae)"},
    {"d_sae", ML_OPT_INT, "0", 0, 1 << 26, NULL, "number of latents (0: expansion x d_in)"},
    {"l1", ML_OPT_STRING, "3e-4", 0, -1, NULL, "L1 coefficient(s), comma-separated for a grid"},
    {"k", ML_OPT_STRING, "32", 0, -1, NULL, "topk: active latents per row, comma-separated for a grid"},
    {"k_aux", ML_OPT_INT, "0", 0, 1 << 26, NULL, "topk AuxK latents per row (0: d_in / 2)"},
    {"auxk_coef", ML_OPT_FLOAT, "0.03125", 0, 1e6, NULL, "topk AuxK loss coefficient (0 disables AuxK)"},
    {"lr", ML_OPT_FLOAT, "1e-4", 0, 10, NULL, "Adam learning rate"},
    {"beta1", ML_OPT_FLOAT, "0.9", 0, 1, NULL, "Adam beta1"},
    {"beta2", ML_OPT_FLOAT, "0.9999", 0, 1, NULL, "Adam beta2"},
    {"adam_eps", ML_OPT_FLOAT, "1e-8", 0, 1, NULL, "Adam epsilon"},
    {"batch", ML_OPT_INT, "3072", 1, 1 << 24, NULL, "rows per step over all ranks (the paper: 128 x 24 tokens)"},
    {"tokens", ML_OPT_INT, "0", 0, 1e15, NULL, "rows to train on (0: one pass over the file, or --model_tokens)"},
    {"max_steps", ML_OPT_INT, "0", 0, 1e15, NULL, "stop after this many steps (0: no limit)"},
    {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "seed of the shuffle, the initialisation and resampling"},
    {"block_rows", ML_OPT_INT, "4096", 1, 1 << 24, NULL, "shuffle: rows per block read from the file"},
    {"buffer_blocks", ML_OPT_INT, "16", 1, 1 << 20, NULL, "shuffle: blocks permuted together"},
    {"median_rows", ML_OPT_INT, "8192", 1, 1 << 26, NULL, "rows for b_dec's geometric median (and E||x||^2)"},
    {"median_iters", ML_OPT_INT, "100", 1, 100000, NULL, "Weiszfeld iterations at most"},
    {"mse_norm", ML_OPT_CHOICE, "row", 0, -1, "row|dataset",
     "nMSE: divide each row's squared error by its ||x||^2 (row) or by E||x||^2 (dataset)"},
    {"norm_floor", ML_OPT_FLOAT, "0.01", 0, 1, NULL, "row nMSE: floor of ||x||^2 as a fraction of E||x||^2"},
    {"dec_init_norm", ML_OPT_FLOAT, "0.1", 0, 100, NULL, "anthropic: decoder row norm at initialisation"},
    {"dead_window", ML_OPT_INT, "1000000", 1, 1e15, NULL, "tokens without firing after which a latent is dead"},
    {"dense_threshold", ML_OPT_FLOAT, "0.1", 0, 1, NULL, "firing density above which a latent is dense"},
    {"resample", ML_OPT_BOOL, "true", 0, -1, NULL, "standard/anthropic: resample dead latents"},
    {"resample_every", ML_OPT_INT, "2000", 1, 1e12, NULL, "steps between resampling (dead = no firing since)"},
    {"resample_stop", ML_OPT_FLOAT, "0.5", 0, 1, NULL, "no resampling after this fraction of training"},
    {"resample_rows", ML_OPT_INT, "16384", 1, 1 << 26, NULL, "rows whose losses pick the new directions"},
    {"l1_warmup", ML_OPT_INT, "0", 0, 1e12, NULL, "steps of linear L1 warm-up"},
    {"log_every", ML_OPT_INT, "100", 1, 1e12, NULL, "steps between metric records"},
    {"eval", ML_OPT_BOOL, "true", 0, -1, NULL, "evaluate and collect feature examples after training"},
    {"eval_acts", ML_OPT_STRING, "", 0, -1, NULL, "activations file to evaluate on (default: ACTS)"},
    {"eval_row0", ML_OPT_INT, "0", 0, 1e15, NULL, "first evaluation row"},
    {"eval_rows", ML_OPT_INT, "262144", 0, 1e15, NULL, "evaluation rows (0: to the end)"},
    {"eval_block", ML_OPT_INT, "512", 1, 1 << 20, NULL, "rows encoded at a time in the evaluation"},
    {"model", ML_OPT_STRING, "", 0, -1, NULL, "train from this checkpoint's forward pass instead of ACTS"},
    {"domains", ML_OPT_STRING, "", 0, -1, NULL, "--model: token stores, comma-separated (data/a.h5,data/b.h5)"},
    {"weights", ML_OPT_STRING, "", 0, -1, NULL, "--model: share of windows per domain, comma-separated (default: equal)"},
    {"split", ML_OPT_CHOICE, "train", 0, -1, "train|val", "--model: split of the token stores"},
    {"context", ML_OPT_INT, "0", 0, 1 << 20, NULL, "--model: tokens per window (0: the model's max_context)"},
    {"sequential", ML_OPT_BOOL, "false", 0, -1, NULL, "--model: each domain's first windows in order (default: random)"},
    {"window_seed", ML_OPT_INT, "-1", -1, 1e18, NULL, "--model: seed of the random window choice (-1: --seed)"},
    {"model_batch", ML_OPT_INT, "8", 1, 1 << 20, NULL, "--model: windows per forward pass (capture's --batch)"},
    {"model_tokens", ML_OPT_INT, "0", 0, 1e15, NULL,
     "--model: tokens the model runs over, the source's rows (0: --tokens); more --tokens re-runs them as epochs"},
    {"top_examples", ML_OPT_INT, "10", 1, 1000, NULL, "top-activating contexts kept per feature"},
    {"quantile_examples", ML_OPT_INT, "8", 0, 1000, NULL, "contexts sampled from lower activation quantiles"},
    {"reservoir", ML_OPT_INT, "24", 0, 100000, NULL, "uniform sample of firings per feature for the quantiles"},
    {"ctx_left", ML_OPT_INT, "16", 0, 10000, NULL, "tokens of context before an example"},
    {"ctx_right", ML_OPT_INT, "4", 0, 10000, NULL, "tokens of context after an example"},
    {"resume", ML_OPT_BOOL, "true", 0, -1, NULL, "continue from --out when it holds an interrupted run's checkpoint"},
    {"checkpoint_every", ML_OPT_INT, "0", 0, 1e15, NULL, "also checkpoint every N steps (0: only on SIGTERM / SIGUSR1)"},
    {"raise_at", ML_OPT_INT, "0", 0, 1e15, NULL, "testing: the last rank raises SIGUSR1 just before this step"},
    ML_OPT_END,
};

/* "3e-4,1e-3" -> values; ints when want_int */
static int ml_parse_list(const char *key, const char *text, int want_int, double *vals, int *n) {
    *n = 0;
    const char *p = text;
    while (*p) {
        char *end = NULL;
        double v = strtod(p, &end);
        if (end == p || (*end && *end != ',') || (want_int && v != (double)(long)v))
            return ML_FAIL(ML_ERR_ARG, "sae: --%s '%s': expected a comma-separated list of %s", key, text,
                           want_int ? "integers" : "numbers");
        if (*n == ML_SAE_MAX_GRID)
            return ML_FAIL(ML_ERR_ARG, "sae: --%s '%s': at most %d values", key, text, ML_SAE_MAX_GRID);
        vals[(*n)++] = v;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) return ML_FAIL(ML_ERR_ARG, "sae: --%s is empty", key);
    return ML_OK;
}

/* out "saes/base.h5" + suffix "-k32" -> "saes/base-k32.h5" */
static void ml_grid_path(char *buf, size_t cap, const char *out, const char *suffix) {
    size_t n = strlen(out);
    if (n > 3 && !strcmp(out + n - 3, ".h5")) snprintf(buf, cap, "%.*s%s.h5", (int)(n - 3), out, suffix);
    else snprintf(buf, cap, "%s%s", out, suffix);
}

int ml_cmd_sae(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, npos = 0, help = 0;
    ml_options *o = NULL;
    char **pos = NULL, *json = NULL;
    ml_acts_source *acts = NULL, *eval_src = NULL;
    ml_forward_source *fwd = NULL;
    ml_window_opts wo = {0};
    ml_sae_run *run = NULL;
    ml_sae_eval *ev[ML_SAE_MAX_GRID] = {0};
    char paths[ML_SAE_MAX_GRID][4096];
    ml_sae_ckpt_opts ck = {0};
    ml_signal_guard guard = {0};
    ML_CHECK_GOTO(ml_options_parse_command(comm, "sae", ml_sae_usage, ml_sae_opts, argc, argv, &o, &npos, &pos, &help),
                  done);
    if (help) goto done;
    const char *model_path = ml_opt_str(o, "model");
    const int from_model = model_path && model_path[0];
    if (from_model && npos > 0)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: give either an activations file (%s) or --model %s, not both", pos[0],
                     model_path);
    if (!from_model && npos != 1)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: expected one activations file (or --model), got %d (usage: %s)", npos,
                     "mergelens sae ACTS.h5 --out saes/NAME.h5");
    static const char *const model_keys[] = {"domains", "weights", "split", "context", "sequential",
                                             "window_seed", "model_batch", "model_tokens"};
    for (size_t i = 0; !from_model && i < sizeof model_keys / sizeof *model_keys; i++)
        if (ml_opt_is_set(o, model_keys[i]))
            ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: --%s chooses the windows of --model, which is not given (rows come from %s)",
                         model_keys[i], pos[0]);
    ml_sae_train_config c;
    ml_sae_train_config_default(&c);
    ML_CHECK_GOTO(ml_sae_arch_parse(ml_opt_str(o, "architecture"), &c.arch), done);
    double vals[ML_SAE_MAX_GRID];
    int nv = 0;
    if (c.arch == ML_SAE_TOPK) {
        ML_CHECK_GOTO(ml_parse_list("k", ml_opt_str(o, "k"), 1, vals, &nv), done);
        for (int i = 0; i < nv; i++) c.k[i] = (int)vals[i];
    } else {
        ML_CHECK_GOTO(ml_parse_list("l1", ml_opt_str(o, "l1"), 0, vals, &nv), done);
        for (int i = 0; i < nv; i++) c.l1[i] = vals[i];
    }
    c.n_grid = nv;
    c.expansion = (int)ml_opt_int(o, "expansion");
    c.d_sae = (int)ml_opt_int(o, "d_sae");
    c.k_aux = (int)ml_opt_int(o, "k_aux");
    c.aux_coef = ml_opt_float(o, "auxk_coef");
    c.lr = ml_opt_float(o, "lr");
    c.beta1 = ml_opt_float(o, "beta1");
    c.beta2 = ml_opt_float(o, "beta2");
    c.adam_eps = ml_opt_float(o, "adam_eps");
    c.batch = (int)ml_opt_int(o, "batch");
    c.tokens = ml_opt_int(o, "tokens");
    c.max_steps = ml_opt_int(o, "max_steps");
    c.seed = (uint64_t)ml_opt_int(o, "seed");
    c.block_rows = (int)ml_opt_int(o, "block_rows");
    c.buffer_blocks = (int)ml_opt_int(o, "buffer_blocks");
    c.median_rows = (int)ml_opt_int(o, "median_rows");
    c.median_iters = (int)ml_opt_int(o, "median_iters");
    c.mse_norm = !strcmp(ml_opt_str(o, "mse_norm"), "dataset") ? ML_SAE_NORM_DATASET : ML_SAE_NORM_ROW;
    c.norm_floor = ml_opt_float(o, "norm_floor");
    c.dec_init_norm = (float)ml_opt_float(o, "dec_init_norm");
    c.dead_window = ml_opt_int(o, "dead_window");
    c.dense_threshold = ml_opt_float(o, "dense_threshold");
    c.resample = ml_opt_bool(o, "resample");
    c.resample_every = (int)ml_opt_int(o, "resample_every");
    c.resample_stop = ml_opt_float(o, "resample_stop");
    c.resample_rows = (int)ml_opt_int(o, "resample_rows");
    c.l1_warmup = (int)ml_opt_int(o, "l1_warmup");
    c.log_every = (int)ml_opt_int(o, "log_every");
    c.hook_name = ml_opt_str(o, "hook");
    const char *out = ml_opt_str(o, "out");

    const ml_row_source *rows = NULL;
    const char *source_json = NULL;
    if (from_model) {
        ml_forward_config fc = {0};
        fc.model_path = model_path;
        const char *doms = ml_opt_str(o, "domains");
        if (!doms || !doms[0]) ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: --model needs --domains (token stores, comma-separated)");
        ML_CHECK_GOTO(ml_window_opts_read(o, 1 << 30, &wo), done); /* the context is checked against the model later */
        fc.windows = wo.spec;
        fc.windows.T = (int)ml_opt_int(o, "context"); /* 0: the model's max_context */
        if (ml_opt_int(o, "window_seed") >= 0) fc.windows.seed = (uint64_t)ml_opt_int(o, "window_seed");
        fc.n_tokens = ml_opt_int(o, "model_tokens") > 0 ? ml_opt_int(o, "model_tokens") : c.tokens;
        if (fc.n_tokens == 0)
            ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: --model needs --tokens N (rows to train on; the model runs over N tokens)");
        fc.hook = c.hook_name;
        fc.batch = (int)ml_opt_int(o, "model_batch");
        ML_CHECK_GOTO(ml_forward_source_open(comm, &fc, &fwd), done);
        c.hook_name = ml_forward_source_hook(fwd);
        c.model = model_path;
        rows = ml_forward_source_rows(fwd);
        source_json = ml_forward_source_json(fwd);
        const int64_t R = (int64_t)fc.batch * ml_forward_source_context(fwd);
        if (c.block_rows % R != 0)
            ml_warn("sae: blocks of %d rows (--block_rows) are not a multiple of the forward batches of %lld rows "
                    "(--model_batch x context): a batch split over blocks runs once per block",
                    c.block_rows, (long long)R);
    } else {
        ML_CHECK_GOTO(ml_acts_source_open(comm, pos[0], c.hook_name, &acts), done);
        c.model = ml_acts_source_model(acts);
        rows = ml_acts_source_rows(acts);
        source_json = ml_acts_source_json(acts);
    }
    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    /* output paths (= checkpoint paths): one per SAE of the grid */
    ck.n = c.n_grid;
    ck.config_json = json;
    ck.source_json = source_json;
    ck.every = ml_opt_int(o, "checkpoint_every");
    ck.raise_at = ml_opt_int(o, "raise_at");
    int found = 0;
    for (int g = 0; g < c.n_grid; g++) {
        char suffix[64];
        if (c.n_grid == 1) snprintf(paths[g], sizeof paths[g], "%s", out);
        else {
            if (c.arch == ML_SAE_TOPK) snprintf(suffix, sizeof suffix, "-k%d", c.k[g]);
            else snprintf(suffix, sizeof suffix, "-l1_%g", c.l1[g]);
            ml_grid_path(paths[g], sizeof paths[g], out, suffix);
        }
        ck.paths[g] = paths[g];
        int f = 0;
        if (ml_opt_bool(o, "resume")) ML_CHECK_GOTO(ml_sae_ckpt_probe(comm, paths[g], json, source_json, &f), done);
        found += f;
    }
    if (found == c.n_grid) ck.resume = 1;
    else if (found > 0)
        ml_warn("sae: only %d of the grid's %d files are checkpoints (%s ...): training starts over", found, c.n_grid,
                paths[0]);
    else if (!ml_opt_bool(o, "resume") && ml_file_exists(paths[0]))
        ml_info("sae: %s exists; --resume false: starting over (it is replaced when a file is written)", paths[0]);
    c.ckpt = &ck;
    ml_signals_install(&guard);
    double t_train = ml_wtime();
    ML_CHECK_GOTO(ml_sae_train(comm, &c, rows, &run), done);
    t_train = ml_wtime() - t_train;
    if (run->n > 0) {
        int64_t nb = 0;
        double fs = 0;
        if (fwd) ml_forward_source_stats(fwd, &nb, &fs);
        ml_info("sae: trained %d SAE(s) on %lld rows in %.2f s (%.0f rows/s)%s", run->n,
                (long long)run->item[0].tokens_seen, t_train, (double)run->item[0].tokens_seen / (t_train > 0 ? t_train : 1e-9),
                fwd ? "" : " from the activations file");
        if (fwd) ml_info("sae: rank 0 ran %lld forward batches in %.2f s", (long long)nb, fs);
    }

    if (ml_opt_bool(o, "eval")) {
        const char *ep = ml_opt_str(o, "eval_acts");
        if (ep && ep[0]) ML_CHECK_GOTO(ml_acts_source_open(comm, ep, c.hook_name, &eval_src), done);
        const ml_row_source *es = eval_src ? ml_acts_source_rows(eval_src) : rows;
        ml_sae_eval_config e;
        ml_sae_eval_config_default(&e);
        e.row0 = ml_opt_int(o, "eval_row0");
        if (e.row0 >= es->n_rows)
            ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: --eval_row0 %lld is past the %lld rows of the evaluation source",
                         (long long)e.row0, (long long)es->n_rows);
        int64_t er = ml_opt_int(o, "eval_rows");
        e.n_rows = er > 0 && er < es->n_rows - e.row0 ? er : es->n_rows - e.row0;
        e.block_rows = (int)ml_opt_int(o, "eval_block");
        e.top_examples = (int)ml_opt_int(o, "top_examples");
        e.quantile_examples = (int)ml_opt_int(o, "quantile_examples");
        e.reservoir = (int)ml_opt_int(o, "reservoir");
        if (e.reservoir < e.quantile_examples) e.reservoir = e.quantile_examples;
        e.ctx_left = (int)ml_opt_int(o, "ctx_left");
        e.ctx_right = (int)ml_opt_int(o, "ctx_right");
        e.dense_threshold = c.dense_threshold;
        e.seed = c.seed;
        ml_sae *saes[ML_SAE_MAX_GRID];
        for (int g = 0; g < run->n; g++) saes[g] = run->item[g].sae;
        ML_CHECK_GOTO(ml_sae_evaluate(comm, saes, run->n, es, &e, ev), done);
    }
    /* a signal during the evaluation: checkpoint the finished training; a rerun evaluates */
    int sig = 0;
    ML_CHECK_GOTO(ml_signal_agree(comm, &sig), done);
    if (sig) {
        int P;
        MPI_Comm_size(comm, &P);
        for (int g = 0; g < run->n; g++) {
            const ml_sae_trained *t = &run->item[g];
            ml_sae_ckpt_state st = {.step = t->steps, .steps = t->steps, .stream_pos = t->tokens_seen, .ranks = P};
            ML_CHECK_GOTO(ml_sae_ckpt_write(comm, paths[g], t, &st, json, source_json), done);
        }
        char more[64];
        ml_sae_ckpt_more(more, sizeof more, run->n);
        rc = ml_agree(comm, ML_FAIL(ML_ERR_INTERRUPTED,
                                    "interrupted by %s: checkpoint at step %lld of %lld written to %s%s; rerun the "
                                    "same command to resume",
                                    ml_signal_name(sig), (long long)run->item[0].steps, (long long)run->item[0].steps,
                                    paths[0], more));
        goto done;
    }
    for (int g = 0; g < run->n; g++) {
        const char *path = paths[g];
        ML_CHECK_GOTO(ml_sae_write_source(comm, path, run->item[g].sae, &run->item[g], ev[g], json, source_json), done);
        const ml_sae_history *h = &run->item[g].hist;
        int64_t i = h->n - 1;
        if (ev[g])
            ml_info("sae: wrote %s: eval on %lld rows: mse %.4g fvu %.4f L0 %.2f dead %.2f%% dense %.2f%%", path,
                    (long long)ev[g]->n_rows, ev[g]->mse, ev[g]->fvu, ev[g]->l0, 100 * ev[g]->dead_fraction,
                    100 * ev[g]->dense_fraction);
        else if (i >= 0)
            ml_info("sae: wrote %s: last interval: mse %.4g fvu %.4f L0 %.2f dead %.2f%%", path, h->mse[i], h->fvu[i],
                    h->l0[i], 100 * h->dead_fraction[i]);
    }
done:
    ml_signals_restore(&guard);
    for (int g = 0; g < ML_SAE_MAX_GRID; g++) ml_sae_eval_destroy(&ev[g]);
    ml_sae_run_destroy(&run);
    ml_acts_source_close(&eval_src);
    ml_acts_source_close(&acts);
    ml_forward_source_close(&fwd);
    ml_window_opts_clear(&wo);
    ml_free(json);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
