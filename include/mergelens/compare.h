/* mergelens compare: `mergelens compare` and `mergelens track`, the glue
 * between the SAE encoder (module sae), captured activations (module
 * capture) and the comparison engine (module features).
 *
 * Each SAE encodes its own model's activations on the same token positions
 * (the two activations files must hold identical /tokens). Rows are streamed
 * in chunks: every rank reads and encodes its share of a chunk's rows
 * (collective ml_h5_read_rows), the CSR codes are all-gathered so that every
 * rank holds the chunk (the contract of ml_codes_stream), and
 * ml_compare_run accumulates every measure. Memory is bounded by the chunk
 * size and the engine's (na, nb) block, never by N x F.
 *
 * Legend: N token rows, D = d_in, F = d_sae, n = rows of one chunk.
 */
#ifndef MERGELENS_COMPARE_H
#define MERGELENS_COMPARE_H

#include <stdint.h>

#include "mergelens/core.h"
#include "mergelens/features.h"
#include "mergelens/model.h"
#include "mergelens/sae.h"

/* ---- codes of one SAE on one activations file --------------------------- */
typedef struct ml_sae_codes ml_sae_codes;
/* Collective. hook NULL or "" = the SAE's hook_name. Rows [row0, row0 +
 * n_rows) of the file (n_rows 0 = to the end). chunk_rows: most rows per chunk
 * (all ranks together). The SAE's d_in must equal the hook's width (the
 * error names both files). sae must outlive the stream. */
int ml_sae_codes_open(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *acts_path,
                      const char *hook, int64_t row0, int64_t n_rows, int64_t chunk_rows, ml_sae_codes **out);
void ml_sae_codes_close(ml_sae_codes **c);
/* The stream (for ml_compare_run); it gives full-width CSR chunks and token
 * ids. next() is collective and agrees on failure internally. */
ml_codes_stream *ml_sae_codes_stream(ml_sae_codes *c);
/* The chunk last returned (CSR, full width); NULL before the first. */
const ml_fcodes *ml_sae_codes_chunk(const ml_sae_codes *c);

/* Collective: the two activations files hold the same /tokens (same row
 * count, same ids), compared chunk by chunk (each rank its share). The
 * error names both files and the first differing row. *n_rows (may be
 * NULL) = N, *vocab (may be NULL) = max id + 1. */
int ml_acts_same_tokens(MPI_Comm comm, const char *path_a, const char *path_b, int64_t chunk_rows, int64_t *n_rows,
                        int64_t *vocab);

/* ---- one lineage edge ------------------------------------------------------- */
typedef struct {
    double tau;            /* persist threshold (0.8) */
    int64_t chunk_rows;    /* rows per chunk (16384) */
    int64_t max_tokens;    /* first rows only (0 = all) */
    ml_corr_path path;     /* activation correlation path */
    const char *hook;      /* NULL = each SAE's hook_name */
    int full_matrix;       /* write /edges/<edge>/activation/r */
    int token_profile;     /* token-profile correlation too */
    int decoder;           /* decoder cosine (when d_in agree) */
    double match_floor;    /* one-to-one matching floor (0 = 0.2; > 1 = skip) */
    int flow;              /* feature flow map of the edge (track) */
    int64_t flow_window;   /* rows per flow sample (64) */
    double flow_mad;       /* 0 = 0.05 */
    double flow_consistency; /* 0 = 0.8 */
    int logit;             /* logit-weight cosine (each SAE through its own model's unembedding) */
    int logit_center;      /* centre the logit vectors over the vocabulary */
    double flow_tie_tol;   /* flow: tie tolerance on the mean absolute difference (0 = 1e-6) */
    /* controls and calibrated shares (docs/modules/features.md, "How to read the numbers") */
    int calibrate;         /* seed ceiling, null floor, bootstrap (1) */
    int n_tau;             /* tau grid of the calibrated shares (default 0.5 0.6 0.7 0.8 0.9) */
    double tau_grid[32];
    int64_t bootstrap;     /* resamples B (200) */
    int64_t block_tokens;  /* contiguous rows per bootstrap block (256) */
    uint64_t seed;         /* bootstrap, floor shift and rotation seed (1) */
    int candidates;        /* partners per feature kept for the bootstrap (4) */
    int stable_min;        /* > 0: track only features found at tau in >= stable_min replicas of their model */
    int allow_train_rows;  /* use all rows when no row is held out by every SAE (else refuse) */
} ml_compare_opts;
void ml_compare_opts_default(ml_compare_opts *o);

/* The seed-ceiling comparison of one model (its SAE's replica 0 against its
 * replicas, on its own activations) is the same in every edge the model is
 * part of: a cache per model lets `track` compute it once per model and row
 * range. Opaque; create/destroy pairs. */
typedef struct ml_replica_cache ml_replica_cache;
int ml_replica_cache_create(ml_replica_cache **out);
void ml_replica_cache_destroy(ml_replica_cache **c);

typedef struct {
    const char *name;      /* model name (lineage node) */
    const char *sae_path;  /* saes/<name>.h5 */
    const char *acts_path; /* acts/<name>.h5 */
    const char *model_path; /* model checkpoint for the logit cosine; NULL or "" = the SAE's `model` attribute */
    ml_replica_cache *replicas; /* NULL: the ceiling is computed for this edge alone */
} ml_compare_model;

typedef struct {
    ml_track_edge track;   /* classification (activation max matching) */
    int64_t n_tokens;
    double dec_mean_max_a, dec_mean_max_b; /* decoder cosine mean-max (NAN if not computed) */
    double logit_mean_max_a, logit_mean_max_b; /* logit-weight cosine mean-max (NAN if not computed) */
    int32_t *flow_partner; /* (n_parent) flow map parent -> child or -1 (opts.flow), ml_malloc'd */
    double flow_best_support; /* largest flow support over the parent's features (NAN without flow) */
    int64_t rows_start, rows_end; /* rows of the activations files used */
} ml_compare_edge_result;

/* ---- SAE replicas and held-out rows ------------------------------------------ */
#define ML_COMPARE_MAX_REPLICAS 16 /* replicas of one SAE a comparison reads */
/* Root attributes of an SAE file written by `sae --replicas` (all -1 when
 * absent: an SAE without them is one replica with no held-out information). */
typedef struct {
    int64_t replica, replicas;            /* index r, count R */
    int64_t train_row_start, train_row_end;     /* rows of the activations file trained on */
    int64_t heldout_row_start, heldout_row_end; /* rows held out */
} ml_sae_meta;
/* Collective: read the attributes of an SAE file (absent ones stay -1). */
int ml_sae_meta_read(MPI_Comm comm, const char *path, ml_sae_meta *m);
/* Replica paths: ml_sae_replica_path (mergelens/sae.h). */
/* Rows [*r0, *r1) of n_rows that none of the n SAEs trained on: the
 * intersection of their held-out ranges (an SAE with no held-out range but
 * a known training range contributes the larger part of [0, n_rows) outside
 * it; one with neither is unconstrained and named in *note). An empty
 * intersection fails naming the files unless allow_train, which uses every
 * row. *heldout = 1 when every SAE states its rows and the range is held
 * out. what names the command in messages. note (cap) is always set. */
int ml_heldout_rows(const char *what, int n, const char *const *paths, const ml_sae_meta *meta, int64_t n_rows,
                    int allow_train, int64_t *r0, int64_t *r1, int *heldout, char *note, size_t cap);
void ml_compare_edge_result_free(ml_compare_edge_result *r);

/* ---- logit map of one side (logit-weight cosine) ------------------------------ */
typedef struct {
    int ok;              /* 1: map and dec are usable */
    char path[1024];     /* the model checkpoint */
    ml_model *model;     /* loaded checkpoint (shared with the other side when the paths agree) */
    int owns_model;
    ml_logit_map map;    /* lm_head, model.norm.weight, down_proj (mlp.hook_post only) */
    const float *dec;    /* (F, d) the SAE's decoder rows */
    int64_t d;
} ml_logit_side;
/* Collective. The model is model_path, else the SAE's recorded `model`.
 * blocks.<L>.mlp.hook_post goes through layer L's down_proj (d_in must be
 * intermediate_size); residual-stream hooks (hook_resid_*, hook_attn_out,
 * hook_mlp_out) map directly (d_in must be hidden_size). Other hooks, an SAE
 * without a recorded model, or a recorded model that no longer exists leave
 * out->ok = 0 with a warning; a given model_path that fails to load, or
 * mismatched widths, are errors. share (may be NULL): the other side,
 * whose model is reused when the paths agree. */
int ml_logit_side_open(MPI_Comm comm, const ml_sae *sae, const char *sae_path, const char *model_path,
                       const char *hook, const ml_logit_side *share, ml_logit_side *out);
void ml_logit_side_free(ml_logit_side *s);

/* Collective: compare parent (A) and child (B) and write /edges/<edge>
 * (docs/modules/features.md layout; + /edges/<edge>/flow with opts.flow)
 * into the open tracking file h. */
int ml_compare_edge(MPI_Comm comm, const ml_compare_opts *o, const ml_compare_model *parent,
                    const ml_compare_model *child, ml_h5 *h, const char *edge, ml_compare_edge_result *out);

/* ---- CLI ---------------------------------------------------------------------- */
/* mergelens compare --a SAE_A.h5 --acts-a ACTS_A.h5 --b SAE_B.h5 --acts-b ACTS_B.h5 --out tracking/A__B.h5 */
int ml_cmd_compare(MPI_Comm comm, int argc, char **argv);
/* mergelens track --edges "base:lua,..." --saes name=SAE.h5,... --acts name=ACTS.h5,... --out tracking/summary.h5 */
int ml_cmd_track(MPI_Comm comm, int argc, char **argv);
/* mergelens track-sweep sweeps/NAME.h5 --sae saes/FT.h5 --acts acts/FT.h5 --out tracking/FT_sweep.h5: per sweep
 * point, the fine-tuned SAE's features on the merged model vs on their own model (format mergelens.feature_sweep) */
int ml_cmd_track_sweep(MPI_Comm comm, int argc, char **argv);

#endif
