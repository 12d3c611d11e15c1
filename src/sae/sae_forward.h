/* Rows of a hook taken from a model's forward pass (module-internal: the
 * declarations need capture.h, which itself includes sae.h). */
#ifndef ML_SAE_FORWARD_H
#define ML_SAE_FORWARD_H

#include "mergelens/capture.h"
#include "mergelens/sae.h"

/* A row source whose row r is position r mod T of window r / T of a window
 * plan, i.e. row r of the file `mergelens capture` writes for the same model,
 * windows, tokens and batch. Reads run the model forward over whole forward
 * batches (batch b = windows [b*batch, (b+1)*batch), as capture groups them,
 * so the rows are bitwise the captured ones) and keep the last batch's hook
 * rows and metadata, so consecutive reads inside a batch run it once. read()
 * is local (no communication): a rank runs only the batches covering the
 * rows it asks for. */
typedef struct ml_forward_source ml_forward_source;
typedef struct {
    const char *model_path;
    ml_window_spec windows; /* windows.T = context (0: the model's max_context) */
    int64_t n_tokens;       /* rows of the source (the last window may be cut) */
    const char *hook;       /* TransformerLens name; short names for a one-layer model */
    int batch;              /* windows per forward pass */
} ml_forward_config;

/* Collective: load the model, check the hook, plan the windows. */
int ml_forward_source_open(MPI_Comm comm, const ml_forward_config *c, ml_forward_source **out);
const ml_row_source *ml_forward_source_rows(const ml_forward_source *f);
const char *ml_forward_source_hook(const ml_forward_source *f); /* canonical name */
const char *ml_forward_source_json(const ml_forward_source *f); /* its `source` description (ml_sae_source_json) */
int ml_forward_source_context(const ml_forward_source *f);      /* T */
const ml_window_plan *ml_forward_source_plan(const ml_forward_source *f);
/* Forward batches run and their wall time (model forward + window reads) on this rank. */
void ml_forward_source_stats(const ml_forward_source *f, int64_t *batches, double *seconds);
void ml_forward_source_close(ml_forward_source **f);

#endif
