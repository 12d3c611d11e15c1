/* SAE training checkpoints (module-internal): one file per SAE of the grid at
 * its output path, format mergelens.sae with complete = 0 and a /checkpoint
 * group (layout: docs/modules/sae.md, "Preemption and resume").
 *
 * Dimension letters: D = d_in, S = d_sae, P = n_params. */
#ifndef ML_SAE_CKPT_H
#define ML_SAE_CKPT_H

#include <stdio.h>

#include "mergelens/sae.h"

#define ML_SAE_CKPT_SUMS 7 /* loss sums of the open log interval (train.c's ST_N) */

/* The training state beside the SAE and its metric history. Pointers may be
 * NULL on write only at the end of training (step == steps), when nothing of
 * them is needed to finish. */
typedef struct {
    int64_t step, steps;          /* steps done, steps planned */
    int64_t stream_pos;           /* stream position of the next batch (step * batch) */
    int64_t iv_steps;             /* steps in the open log interval */
    int64_t ranks;                /* ranks of the run that wrote it */
    float *adam_m, *adam_v;       /* (P) Adam moments, memory layout W_enc_t | b_enc | W_dec | b_dec */
    int64_t *since;               /* (S) tokens since each latent fired */
    double *iv_count;             /* (S) firings in the open log interval */
    double iv_sums[ML_SAE_CKPT_SUMS];
    float *mu;                    /* (D) mean row of the median sample (FVU) */
} ml_sae_ckpt_state;

/* Collective: write tr (its SAE, history, resampled count, normalisation)
 * and st to path as a complete = 0 file (atomic, ml_h5_create). */
int ml_sae_ckpt_write(MPI_Comm comm, const char *path, const ml_sae_trained *tr, const ml_sae_ckpt_state *st,
                      const char *config_json, const char *source_json);
/* Collective: is path an incomplete SAE checkpoint to continue? *found = 1 if
 * so, after checking that its options (except bookkeeping keys) and row
 * source equal this run's, and (prov not NULL, prov->set) that its seeds,
 * replica and row ranges equal prov's (else the one-line "cannot resume"
 * error). */
int ml_sae_ckpt_probe(MPI_Comm comm, const char *path, const char *config_json, const char *source_json,
                      const ml_sae_provenance *prov, int *found);
/* Collective: restore from path into tr->sae (created with the run's shape,
 * checked against the file), tr->hist (empty), tr's scalars (resampled_total,
 * median_iters, mean_sq_norm) and st, whose arrays the caller allocated
 * (adam_m, adam_v, since, iv_count, mu). */
int ml_sae_ckpt_read(MPI_Comm comm, const char *path, ml_sae_trained *tr, ml_sae_ckpt_state *st);

/* The interruption message's note on a grid's other files ("" for one SAE). */
static inline void ml_sae_ckpt_more(char *buf, size_t cap, int n_grid) {
    buf[0] = '\0';
    if (n_grid > 1) snprintf(buf, cap, " (and %d more file%s of the grid)", n_grid - 1, n_grid > 2 ? "s" : "");
}

/* Grow a metric history to hold at least n records (train.c). */
int ml_sae_history_reserve(ml_sae_history *h, int64_t n);

#endif
