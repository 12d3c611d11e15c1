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
    "their files get -l1_<value> / -k<value> before the .h5 suffix. --replicas R trains R SAEs per grid\n"
    "point that differ only in their seed, in the same pass; replica r >= 1 of NAME.h5 is NAME-rep<r>.h5.\n"
    "Seeds: each SAE's initialisation and resampling, and the row order, derive from --seed and the SAE's\n"
    "identity (model, hook, architecture, k or l1, replica; --seed_mode exact: --seed itself).\n"
    "The last rows of the source (--holdout_rows, default 10%) are not trained on; the metrics and feature\n"
    "examples are computed on them.\n";

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
    {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "job seed: the shuffle, initialisation and resampling derive from it"},
    {"seed_mode", ML_OPT_CHOICE, "derived", 0, -1, "derived|exact",
     "derived: seeds from (--seed, the SAE's identity), no two SAEs alike; exact: --seed as is for every SAE"},
    {"replicas", ML_OPT_INT, "1", 1, ML_SAE_MAX_GRID, NULL,
     "SAEs per grid point differing only in their seed, trained in the same pass (NAME-rep<r>.h5 for r >= 1)"},
    {"holdout_rows", ML_OPT_INT, "-1", -1, 1e15, NULL,
     "rows at the end of the source not trained on, for the metrics (-1: 10%, at least min(2048, 25%); 0: none); "
     "the split point is rounded down to whole windows of the context"},
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
    {"eval_row0", ML_OPT_INT, "-1", -1, 1e15, NULL, "first evaluation row (-1: the first held-out row; 0 with --eval_acts)"},
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

/* out "saes/base.h5" + suffix "-k32" -> "saes/base-k32.h5"; ML_ERR_ARG when it does not fit */
static int ml_grid_path(char *buf, size_t cap, const char *out, const char *suffix) {
    size_t n = strlen(out);
    int w = n > 3 && !strcmp(out + n - 3, ".h5") ? snprintf(buf, cap, "%.*s%s.h5", (int)(n - 3), out, suffix)
                                                 : snprintf(buf, cap, "%s%s", out, suffix);
    if (w < 0 || (size_t)w >= cap) return ML_FAIL(ML_ERR_ARG, "sae: output path %s%s is too long", out, suffix);
    return ML_OK;
}

int ml_sae_replica_path(const char *path, int r, char *buf, size_t cap) {
    if (r < 0) return ML_FAIL(ML_ERR_ARG, "sae: replica %d of %s: expected r >= 0", r, path);
    char suffix[32] = "";
    if (r > 0) snprintf(suffix, sizeof suffix, "-rep%d", r);
    return ml_grid_path(buf, cap, path, suffix);
}

/* Held-out rows by default: 10% of the source, at least min(2048, 25%). */
static int64_t ml_holdout_default(int64_t n) {
    int64_t h = (n + 9) / 10, q = n / 4 < 2048 ? n / 4 : 2048;
    return h > q ? h : q;
}

/* Training rows [0, *n_train) and held-out rows [*n_train, n) of a source of n
 * rows in windows of T (0: unknown): the split point is rounded down to whole
 * windows, so that no window has rows on both sides. */
static int ml_split_rows(int64_t n, int64_t holdout_opt, int T, int64_t *n_train) {
    int64_t hold = holdout_opt < 0 ? ml_holdout_default(n) : holdout_opt;
    if (hold >= n)
        return ML_FAIL(ML_ERR_ARG, "sae: --holdout_rows %lld leaves none of the source's %lld rows to train on",
                       (long long)hold, (long long)n);
    int64_t a = n - hold;
    if (hold > 0 && T > 0 && a >= T) a -= a % T;
    *n_train = a;
    return ML_OK;
}

/* The seed identity of SAE (grid value of slot i, replica r), or of the shared
 * row order (data = 1): "model=M;hook=H;arch=A" + ";k=32;replica=0" |
 * ";l1=0.0003;replica=0" | ";rows" (docs/modules/sae.md, "Seeds"). */
static void ml_seed_identity(char *buf, size_t cap, const char *model, const ml_sae_train_config *c, int i, int r,
                             int data) {
    int n = snprintf(buf, cap, "model=%s;hook=%s;arch=%s", model, c->hook_name, ml_sae_arch_name(c->arch));
    if (n < 0 || (size_t)n >= cap) return;
    if (data) snprintf(buf + n, cap - (size_t)n, ";rows");
    else if (c->arch == ML_SAE_TOPK) snprintf(buf + n, cap - (size_t)n, ";k=%d;replica=%d", c->k[i], r);
    else snprintf(buf + n, cap - (size_t)n, ";l1=%g;replica=%d", c->l1[i], r);
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
    ml_sae_provenance *prov = NULL;
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
    const int R = (int)ml_opt_int(o, "replicas"), exact = !strcmp(ml_opt_str(o, "seed_mode"), "exact");
    if (nv * R > ML_SAE_MAX_GRID)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: %d grid values x %d replicas = %d SAEs; at most %d train in one pass", nv,
                     R, nv * R, ML_SAE_MAX_GRID);
    if (exact && R > 1)
        ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: --seed_mode exact gives all %d replicas the same seed; use --seed_mode "
                     "derived (the default) for replicas", R);
    /* SAE i = grid value i / R, replica i % R */
    for (int i = nv * R - 1; i >= 0; i--) {
        c.k[i] = c.k[i / R];
        c.l1[i] = c.l1[i / R];
    }
    c.n_grid = nv * R;
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
    int ctx_T = 0;
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
        ctx_T = ml_forward_source_context(fwd);
        source_json = ml_forward_source_json(fwd);
        const int64_t fb = (int64_t)fc.batch * ctx_T;
        if (c.block_rows % fb != 0)
            ml_warn("sae: blocks of %d rows (--block_rows) are not a multiple of the forward batches of %lld rows "
                    "(--model_batch x context): a batch split over blocks runs once per block",
                    c.block_rows, (long long)fb);
    } else {
        ML_CHECK_GOTO(ml_acts_source_open(comm, pos[0], c.hook_name, &acts), done);
        c.model = ml_acts_source_model(acts);
        rows = ml_acts_source_rows(acts);
        ctx_T = ml_acts_source_context(acts);
        source_json = ml_acts_source_json(acts);
    }
    /* held-out rows: the trainer sees rows [0, n_train), the metrics use [n_train, N) */
    const int64_t n_src = rows->n_rows;
    int64_t n_train = 0;
    ML_CHECK_GOTO(ml_split_rows(n_src, ml_opt_int(o, "holdout_rows"), ctx_T, &n_train), done);
    ml_row_source train_rows = *rows;
    train_rows.n_rows = n_train;
    if (from_model && ml_opt_int(o, "model_tokens") == 0) c.tokens = n_train; /* --tokens counted the held-out rows */
    if (n_train < n_src)
        ml_info("sae: training on rows [0, %lld) of the source; rows [%lld, %lld) are held out for the metrics",
                (long long)n_train, (long long)n_train, (long long)n_src);
    else ml_warn("sae: --holdout_rows 0: no held-out rows; the metrics are computed on training rows");

    /* seeds: the shared row order and each SAE's initialisation + resampling */
    const uint64_t job_seed = (uint64_t)ml_opt_int(o, "seed");
    const char *seed_model = c.model && c.model[0] ? c.model : from_model ? model_path : pos[0];
    prov = ml_calloc((size_t)c.n_grid, sizeof *prov);
    if (!prov) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "sae: out of memory");
    char data_id[sizeof prov->data_seed_identity];
    ml_seed_identity(data_id, sizeof data_id, seed_model, &c, 0, 0, 1);
    c.seed = exact ? job_seed : ml_seed_derive(job_seed, data_id);
    c.per_sae_seeds = !exact;
    const char *ep = ml_opt_str(o, "eval_acts");
    const int own_eval = !(ep && ep[0]);
    for (int i = 0; i < c.n_grid; i++) {
        ml_sae_provenance *p = &prov[i];
        p->set = 1;
        p->job_seed = (int64_t)job_seed;
        p->replica = i % R;
        p->replicas = R;
        if (!exact) {
            ml_seed_identity(p->seed_identity, sizeof p->seed_identity, seed_model, &c, i, i % R, 0);
            snprintf(p->data_seed_identity, sizeof p->data_seed_identity, "%s", data_id);
            c.sae_seed[i] = ml_seed_derive(job_seed, p->seed_identity);
        } else c.sae_seed[i] = job_seed;
        p->seed = (int64_t)c.sae_seed[i];
        p->data_seed = (int64_t)c.seed;
        const char *ev_note = own_eval ? "" : "; the metrics use --eval_acts ";
        if (from_model) {
            p->train_row_start = p->train_row_end = p->heldout_row_start = p->heldout_row_end = -1;
            if (n_train < n_src)
                snprintf(p->heldout, sizeof p->heldout,
                         "forward pass over %s: trained on rows [0, %lld) of the window plan (windows of %d tokens), "
                         "held out rows [%lld, %lld): whole windows, distinct windows of the same split, not files' "
                         "rows (a capture with the same window options holds them as rows [%lld, %lld))%s%s",
                         model_path, (long long)n_train, ctx_T, (long long)n_train, (long long)n_src,
                         (long long)n_train, (long long)n_src, ev_note, own_eval ? "" : ep);
            else snprintf(p->heldout, sizeof p->heldout, "none (--holdout_rows 0): the metrics use training rows%s%s",
                          ev_note, own_eval ? "" : ep);
        } else {
            p->train_row_start = 0;
            p->train_row_end = n_train;
            p->heldout_row_start = n_train;
            p->heldout_row_end = n_src;
            char split_note[96];
            if (ctx_T > 0) snprintf(split_note, sizeof split_note, "split at a multiple of the context %d", ctx_T);
            else snprintf(split_note, sizeof split_note, "the file has no context attribute: not rounded to windows");
            if (n_train < n_src)
                snprintf(p->heldout, sizeof p->heldout, "rows [%lld, %lld) of %s, the last %lld rows (%s); not "
                         "trained on%s%s",
                         (long long)n_train, (long long)n_src, pos[0], (long long)(n_src - n_train), split_note, ev_note,
                         own_eval ? "" : ep);
            else snprintf(p->heldout, sizeof p->heldout, "none (--holdout_rows 0): the metrics use training rows%s%s",
                          ev_note, own_eval ? "" : ep);
        }
    }
    c.prov = prov;

    ML_CHECK_GOTO(ml_options_to_json(o, &json), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    /* output paths (= checkpoint paths): one per SAE of the grid, replica r >= 1 as NAME-rep<r>.h5 */
    ck.n = c.n_grid;
    ck.config_json = json;
    ck.source_json = source_json;
    ck.every = ml_opt_int(o, "checkpoint_every");
    ck.raise_at = ml_opt_int(o, "raise_at");
    int found = 0;
    for (int i = 0; i < c.n_grid; i++) {
        char suffix[64], grid[4096];
        if (nv == 1) snprintf(grid, sizeof grid, "%s", out);
        else {
            if (c.arch == ML_SAE_TOPK) snprintf(suffix, sizeof suffix, "-k%d", c.k[i]);
            else snprintf(suffix, sizeof suffix, "-l1_%g", c.l1[i]);
            ML_CHECK_GOTO(ml_grid_path(grid, sizeof grid, out, suffix), done);
        }
        ML_CHECK_GOTO(ml_sae_replica_path(grid, i % R, paths[i], sizeof paths[i]), done);
        for (int j = 0; j < i; j++)
            if (!strcmp(paths[i], paths[j]))
                ML_FAIL_GOTO(done, ML_ERR_ARG, "sae: two SAEs of the grid would be written to %s (repeated --%s value?)",
                             paths[i], c.arch == ML_SAE_TOPK ? "k" : "l1");
        ck.paths[i] = paths[i];
        int f = 0;
        if (ml_opt_bool(o, "resume"))
            ML_CHECK_GOTO(ml_sae_ckpt_probe(comm, paths[i], json, source_json, &prov[i], &f), done);
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
    ML_CHECK_GOTO(ml_sae_train(comm, &c, &train_rows, &run), done);
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
        if (!own_eval) ML_CHECK_GOTO(ml_acts_source_open(comm, ep, c.hook_name, &eval_src), done);
        const ml_row_source *es = eval_src ? ml_acts_source_rows(eval_src) : rows;
        ml_sae_eval_config e;
        ml_sae_eval_config_default(&e);
        e.row0 = ml_opt_int(o, "eval_row0");
        if (e.row0 < 0) e.row0 = own_eval && n_train < n_src ? n_train : 0;
        if (own_eval && e.row0 < n_train && n_train < n_src)
            ml_warn("sae: --eval_row0 %lld: the metrics include training rows (rows [0, %lld) are trained on)",
                    (long long)e.row0, (long long)n_train);
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
    ml_free(prov);
    ml_free(json);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
