/* Internal to src/train: the trainer state shared by train.c (setup and the
 * step loop) and state.c (checkpoint save / restore), and small helpers.
 *
 * Dimension letters: G global batch (windows per optimizer step, all ranks),
 * B rows of a step on this rank (G / P), M micro-batch rows, T context,
 * S optimizer steps, K domains, n parameters.
 */
#ifndef ML_TRAIN_INTERNAL_H
#define ML_TRAIN_INTERNAL_H

#include "mergelens/config.h"
#include "mergelens/data.h"
#include "mergelens/io.h"
#include "mergelens/train.h"


/* Run a call whose failure may be local to some ranks, then agree on the
 * outcome (collective: every rank of comm must get here). Needs `int rc`. */
#define ML_AGREE_GOTO(comm, call, label)                                       \
    do {                                                                       \
        rc = ml_agree((comm), (call));                                         \
        if (rc != ML_OK) goto label;                                           \
    } while (0)

/* What a token store says about itself (root attributes). */
typedef struct {
    char name[64];        /* `domain`, else the file stem */
    int64_t vocab_size;
    char tokenizer[1024]; /* `tokenizer` path or "" */
} ml_store_info;
/* Collective: rank 0 reads the store's attributes (serial open), every rank
 * gets them; a failure is agreed by all ranks. */
int ml_store_info_read(MPI_Comm comm, const char *path, ml_store_info *info);

/* Split "a,b,c" into ml_malloc'd strings (blanks around items dropped; empty
 * items are an error naming key). Free with ml_h5_free_names. */
/* JSON array of n strings (ml_malloc'd text). */

/* Training metrics, one row per optimizer step / per (evaluation, domain);
 * capacity fixed at setup (allocated once per run). */
typedef struct {
    int64_t n, cap;
    int64_t *step, *tokens;
    double *loss, *lr, *grad_norm, *tokens_per_s;
} ml_train_log;
typedef struct {
    int64_t n, cap;
    int64_t *step;
    int32_t *domain;
    double *loss, *accuracy;
    int64_t *n_tokens; /* targets behind each row (-1: a checkpoint written before the column existed) */
} ml_eval_log;

typedef struct {
    MPI_Comm comm;
    int rank, nranks;
    ml_options *opt;
    char *config_json; /* effective options (root attribute `config`) */
    /* data */
    int K;               /* domains */
    char **paths;        /* (K) */
    double *weights;     /* (K) normalised, or NULL = proportional to windows */
    ml_store_info *info; /* (K) */
    int subset_index, subset_count; /* option `subset` I/N (0/1 = the whole train split) */
    /* shape of the run */
    ml_model_config mc;
    int T, G, B, M;      /* context, global batch, rows per rank, micro-batch rows */
    int64_t total_steps;
    ml_lr_schedule sched;
    ml_adamw_config adamw;
    double clip;
    uint64_t seed;
    const char *out, *init_from;
    char parent[4096];
    char tokenizer[1024];
    /* state */
    ml_model *model;
    ml_adamw *opt_state;
    ml_workspace *ws;
    ml_loader *loader;
    ml_evaluator *eval;   /* NULL when evaluation is off */
    ml_eval_result *eval_res; /* (K) */
    int32_t *windows;     /* (B, T+1) */
    int32_t *tokens, *targets; /* (M, T) */
    int32_t *dom_ids;     /* (B) */
    double *red;          /* (3 + K) per-step reduction */
    int64_t step;         /* optimizer steps done */
    int64_t *dom_tokens;  /* (K) training tokens seen per domain */
    int64_t resumed_from; /* step of the checkpoint resumed from, -1 if none */
    ml_train_log log;
    ml_eval_log elog;
} ml_trainer;

/* state.c: the whole checkpoint (collective; atomic via ml_h5_create). */
int ml_trainer_save(ml_trainer *tr, int complete);
/* Restore the state of an incomplete checkpoint at tr->out into an
 * initialised trainer (options checked against the stored ones). */
int ml_trainer_restore(ml_trainer *tr, ml_h5 *h);
/* Rows of /train/eval in a checkpoint (to size the evaluation log). */
int ml_trainer_stored_eval_rows(ml_h5 *h, int64_t *n);
int ml_train_logs_alloc(ml_trainer *tr);
void ml_train_logs_free(ml_trainer *tr);

#endif
