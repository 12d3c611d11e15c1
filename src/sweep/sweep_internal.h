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
    int complete;               /* 0: a checkpoint of an interrupted sweep */
    const uint8_t *done;        /* (n) rows finished (checkpoints only; NULL in a complete file) */
} ml_sweep_file;

/* Collective over comm (every rank passes the same data; rank 0 writes). */
int ml_sweep_file_write(MPI_Comm comm, const char *path, const ml_sweep_file *f);

/* Checkpoint and resume (resume.c). What a rerun needs of an interrupted sweep
 * (the output file with complete = 0), loaded on every rank. */
typedef struct {
    const char *path, *config_json, *recipe_json; /* this run's output, options and recipe */
    int n, D;
    const int64_t *points; /* (n) this task's grid indices */
    uint8_t *done;         /* (n) out: finished rows */
    double *loss, *acc;    /* (n, D) out: their results (0 in the rows not done) */
    int64_t *tokens;       /* (D) out */
    char *names_json;      /* out (ml_malloc'd): the stored domain names */
} ml_sweep_state;
/* Collective. If st->path exists, resume is set and the file is an interrupted
 * sweep, check that it is this sweep (options except the bookkeeping keys,
 * recipe, points, domains) and load its rows: *resumed = 1. A complete file or
 * --resume false: *resumed = 0 (the run starts over and replaces it). */
int ml_sweep_resume(MPI_Comm comm, int resume, ml_sweep_state *st, int *resumed);
/* Local: 1 if path is a complete checkpoint whose sweep_point attribute is point_json. */
int ml_sweep_kept_valid(const char *path, const char *point_json);

#endif
