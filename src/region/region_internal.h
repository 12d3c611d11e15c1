/* Internal to src/region: the opened model set (serial handles on every
 * rank, validated against one reference), the streaming pass and small
 * helpers shared by the commands.
 * Legend: M models, T tensors, N elements of a tensor. */
#ifndef ML_REGION_INTERNAL_H
#define ML_REGION_INTERNAL_H

#include "mergelens/io.h"
#include "mergelens/model.h"
#include "mergelens/region.h"


typedef struct {
    int M;                /* models (besides the base) */
    char **paths;         /* (M) */
    char **label_of;      /* (M) label text of each model */
    int L;                /* distinct labels */
    char **labels;        /* (L) in first-appearance order */
    int *label;           /* (M) index into labels */
    const char *base;     /* base path or NULL */
    ml_h5 *hbase;         /* NULL without base */
    ml_h5 **h;            /* (M) serial handles */
    ml_model_config mc;
    ml_model *table;      /* a model of the set's config (its tensor table; params used as output) */
    int T;                /* tensors */
    const ml_tensor **t;  /* (T) table entries in the files' sorted name order */
    int *owner;           /* (T) rank that streams the tensor */
    size_t max_numel;
    int context;          /* training context of the first model (0 unknown) */
} ml_region_set;

/* Parse "label=path,label=path" (a bare path is its own label);
 * drop models whose label is in `exclude` (comma list, may be NULL/""). */
int ml_region_set_parse(ml_region_set *s, const char *models, const char *exclude);
/* Open and validate (local on each rank, then agreed): same tensor names,
 * shapes and float32 dtype as the reference (base, else the first model;
 * errors name the file and tensor), same model_config; deal tensors to
 * the ranks of comm (largest first to the least loaded). */
int ml_region_set_open(MPI_Comm comm, ml_region_set *s, const char *base);
void ml_region_set_close(ml_region_set *s);
/* Read tensor t of model i (i = -1: the base) into buf (numel). */
int ml_region_read(ml_region_set *s, int i, int t, float *buf);

/* Collective streaming pass: for the tensors this rank owns, read the base
 * (when open) and every model's tensor; tgram (T, M, M) gets the Gram matrix
 * of the task vectors (zeros for other ranks' tensors; NULL skips it) and
 * s->table->params the element-wise mean of the models. Both are then
 * summed over ranks (one contributor per entry: exact). */
int ml_region_stream(MPI_Comm comm, ml_region_set *s, double *tgram);
/* Collective: write s->table (the centroid) as a checkpoint. */
int ml_region_write_centroid(MPI_Comm comm, ml_region_set *s, const char *path, const char *exclude);

#endif
