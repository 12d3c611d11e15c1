/* Internal to src/sweep: the sweep file (written by sweep and sweep-combine)
 * and small helpers. Legend: K grid points, n points held, D domains. */
#ifndef ML_SWEEP_INTERNAL_H
#define ML_SWEEP_INTERNAL_H

#include "mergelens/io.h"
#include "mergelens/sweep.h"

typedef struct {
    const char *param, *method, *recipe, *domains, *paths, *models, *split, *config, *reference;
    int context;
    double from, to;
    int count, task, tasks, partial;
    int D, n;
    const double *grid;         /* (K) */
    const int64_t *points;      /* (n) grid indices */
    const double *loss;         /* (n, D) */
    const double *accuracy;     /* (n, D) */
    const int64_t *tokens;      /* (D) */
    const double *ref_loss;     /* (D) or NULL */
    const double *ref_accuracy; /* (D) */
} ml_sweep_file;

/* Collective over comm (every rank passes the same data; rank 0 writes). */
int ml_sweep_file_write(MPI_Comm comm, const char *path, const ml_sweep_file *f);
/* Split "a,b" into ml_malloc'd strings (free with ml_h5_free_names). */
/* Broadcast rank 0's ml_malloc'd string to every rank (collective). */

#endif
