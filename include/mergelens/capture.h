/* mergelens capture: run a model over windows of token stores and record hook
 * activations (`acts/<model>.h5`, format mergelens.activations v1), and
 * measure how much of the model's loss an SAE recovers when its
 * reconstruction is spliced into the forward pass (CE loss recovered).
 *
 * Windows. A window plan picks n windows of T+1 tokens from the `train` or
 * `val` split of one or more token stores: window k of a domain covers tokens
 * [k T, k T + T + 1) of that split (the batch loader's windows, read with one
 * sequential ml_loader per domain). Each domain gets a share of the windows
 * (equal, or proportional to given weights; counts by largest remainder) and
 * the domains are interleaved evenly through the window list, so any prefix
 * of the list is a balanced mix. Inside a domain the windows are its first
 * ones in order (sequential) or distinct windows drawn at random without
 * replacement (seeded). The plan is a pure function of the stores and the
 * spec: every rank computes the same list, whatever the number of ranks.
 *
 * Rank-count independence. Windows are grouped into forward batches of a
 * fixed size (batch b = windows [b*batch, (b+1)*batch)), and batch b is run
 * by rank b mod P. Row r of every dataset is position r mod T of window
 * r / T, so the files written with 1, 2 or 4 ranks hold identical data.
 *
 * Preemption. SIGTERM / SIGUSR1 are polled at every batch boundary (all ranks
 * agree); the file is then made durable under its final name as a checkpoint
 * (format ML_CAPTURE_PARTIAL_FORMAT, complete = 0, batches_done) and the run
 * returns ML_ERR_INTERRUPTED. Running the same capture again (resume) checks
 * the stored options and model, opens the checkpoint read-write, continues
 * at batch batches_done and flips it to a finished file (complete = 1) only
 * after everything else is flushed.
 *
 * Layouts and options: docs/modules/capture.md.
 */
#ifndef MERGELENS_CAPTURE_H
#define MERGELENS_CAPTURE_H

#include <stdint.h>

#include "mergelens/config.h"
#include "mergelens/core.h"
#include "mergelens/model.h"
#include "mergelens/sae.h"

#define ML_CAPTURE_FORMAT "mergelens.activations"
/* `format` of an unfinished capture (a checkpoint, root attribute complete = 0):
 * readers that expect ML_CAPTURE_FORMAT refuse it through ml_h5_open. */
#define ML_CAPTURE_PARTIAL_FORMAT "mergelens.activations.incomplete"
#define ML_SAE_EVAL_FORMAT "mergelens.sae_eval"
#define ML_CAPTURE_MAX_DOMAINS 64
#define ML_CAPTURE_MAX_HOOKS 64

/* ---- window plans ------------------------------------------------------------ */
typedef struct {
    int n_domains;
    const char *const *paths; /* data/<domain>.h5 token stores (mergelens.tokens v1) */
    const double *weights;    /* share of the windows per domain (normalised); NULL = equal shares */
    const char *split;        /* "train" or "val" (NULL = "train") */
    int T;                    /* context: tokens fed to the model per window */
    int sequential;           /* 1: each domain's first windows in order; 0: random distinct windows */
    uint64_t seed;            /* seeded mode: window choice (ml_rng stream per domain) */
} ml_window_spec;

typedef struct ml_window_plan ml_window_plan;
/* Collective over comm: open every store (format, split, vocab_size equal to
 * `vocab_size` when > 0, else equal across the stores), split n_windows into
 * the domains' shares and choose the windows. A domain whose split holds
 * fewer windows than its share is an error naming the store. */
int ml_window_plan_create(MPI_Comm comm, const ml_window_spec *spec, int64_t n_windows, int vocab_size,
                          ml_window_plan **out);
void ml_window_plan_destroy(ml_window_plan **p);
int64_t ml_window_plan_count(const ml_window_plan *p);
int ml_window_plan_T(const ml_window_plan *p);
/* Window w: its domain and its window index k inside that domain's split. */
void ml_window_plan_window(const ml_window_plan *p, int64_t w, int *domain, int64_t *index);
/* Windows of domain d assigned by the plan / available in its split. */
int64_t ml_window_plan_domain_share(const ml_window_plan *p, int d);
int64_t ml_window_plan_domain_available(const ml_window_plan *p, int d);
/* The store's `domain` attribute ("" if absent). */
const char *ml_window_plan_domain_name(const ml_window_plan *p, int d);
/* Local (no communication): tokens (T+1) of window w and, if doc_ids is not
 * NULL, the document index (inside the domain's split, from doc_offsets) of
 * each of its first T tokens (T). */
int ml_window_plan_read(ml_window_plan *p, int64_t w, int32_t *tokens, int64_t *doc_ids);

/* The window options of a command (keys domains, weights, split, context,
 * sequential, seed) as a spec; context 0 takes max_context. w->spec points
 * into w; release with ml_window_opts_clear. */
typedef struct {
    char **store; /* [spec.n_domains] owned domain paths */
    const char *paths[ML_CAPTURE_MAX_DOMAINS];
    double weights[ML_CAPTURE_MAX_DOMAINS];
    ml_window_spec spec;
} ml_window_opts;
int ml_window_opts_read(const ml_options *o, int max_context, ml_window_opts *w);
void ml_window_opts_clear(ml_window_opts *w); /* tolerates a zeroed or partly read w */

/* ---- activation capture ------------------------------------------------------- */
typedef struct {
    const char *model_path;   /* recorded as the root attribute `model` (may be NULL) */
    ml_window_spec windows;   /* windows.T = context (<= the model's max_context) */
    int64_t n_tokens;         /* rows to capture (the last window may be cut) */
    int n_hooks;
    const char *const *hooks; /* TransformerLens names (ml_workspace_hook), e.g. blocks.0.mlp.hook_post */
    int float16;              /* store IEEE half bits (uint16, attribute encoding = "float16") */
    int batch;                /* windows per forward pass (same grouping for any rank count) */
    int64_t chunk_rows;       /* HDF5 chunk rows of every dataset (0: about 1 MiB of the widest hook) */
    const char *config_json;  /* root attribute `config` (may be NULL); checked on resume */
    int quiet;                /* no progress display */
    int resume;               /* continue `path` when it is an unfinished capture (default 1) */
    int64_t checkpoint_every; /* also make the file durable every this many batches (0: only on a signal) */
    int64_t raise_at;         /* testing: the last rank raises SIGUSR1 just before batch raise_at (1-based) */
} ml_capture_config;
void ml_capture_config_default(ml_capture_config *c);

typedef struct {
    int64_t n_tokens, n_windows;
    double seconds;       /* wall time of the capture loop */
    double bytes_written; /* activation bytes over all hooks and ranks (this run) */
    int64_t resumed_from; /* batches already in the checkpoint this run continued (0: fresh) */
    int64_t n_batches;
} ml_capture_stats;

/* Collective: run `model` (same parameters on every rank) over the plan's
 * windows and write the activations file `path` (atomic: temp + rename, or
 * a checkpoint finished in place). On SIGTERM / SIGUSR1 (agreed at a batch
 * boundary) it leaves a checkpoint at `path` and returns ML_ERR_INTERRUPTED;
 * with cfg->resume a later call continues it. stats may be NULL. */
int ml_capture_run(MPI_Comm comm, const ml_model *model, const ml_capture_config *cfg, const char *path,
                   ml_capture_stats *stats);

/* ---- CE loss recovered -------------------------------------------------------- */
typedef struct {
    int64_t windows, targets;
    double loss_clean;   /* mean next-token cross-entropy (nats), normal forward */
    double loss_zero;    /* MLP hidden activation of the layer replaced by zeros */
    double loss_spliced; /* MLP hidden activation replaced by the SAE's reconstruction */
    double ce_recovered; /* (loss_zero - loss_spliced) / (loss_zero - loss_clean); NaN if the two are equal */
    double acc_clean, acc_zero, acc_spliced; /* next-token accuracy */
} ml_ce_stats;

typedef struct {
    int n_domains;
    ml_ce_stats total;
    ml_ce_stats domain[ML_CAPTURE_MAX_DOMAINS];
} ml_ce_result;

/* Collective: CE loss recovered of `sae` spliced at blocks.<layer>.mlp.hook_post
 * of `model` over n_windows windows (batch windows per forward pass), sums
 * reduced across ranks. The SAE's d_in must be the model's d_mlp. */
int ml_capture_ce_recovered(MPI_Comm comm, const ml_model *model, const ml_sae *sae, int layer,
                            const ml_window_spec *windows, int64_t n_windows, int batch, ml_ce_result *out);
/* Layer of a hook name "blocks.<i>.mlp.hook_post" (the only splice point);
 * ML_ERR_UNSUPPORTED for other hooks. */
int ml_capture_splice_layer(const char *hook_name, int n_layers, int *layer);

/* Canonical hook name: "blocks.<i>.<hook>" and "ln_final.*" as given; a short
 * name ("mlp.hook_post", "resid_pre", "hook_attn_out", ...) means layer 0 of a
 * one-layer model (an error naming blocks.<i>. in a deeper model). */
int ml_capture_hook_canonical(const char *name, int n_layers, char *out, size_t cap);

/* ---- checkpoints ------------------------------------------------------------------- */
/* Collective: load a model checkpoint (mergelens.checkpoint v1) on every rank. */
int ml_capture_load_model(MPI_Comm comm, const char *path, ml_model **out);

/* ---- commands (registered by the lead) --------------------------------------------- */
/* `mergelens capture MODEL.h5 --domains a.h5,b.h5 --tokens N --out acts/M.h5 [options]` */
int ml_cmd_capture(MPI_Comm comm, int argc, char **argv);
/* `mergelens sae-eval SAE.h5 --domains a.h5,b.h5 [--model MODEL.h5] [--windows N] [--out F.h5] [--json]` */
int ml_cmd_sae_eval(MPI_Comm comm, int argc, char **argv);

#endif
