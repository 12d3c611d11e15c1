/* mergelens pipeline: experiments as job files. `mergelens run JOB.yaml`
 * runs every stage in dependency order inside one MPI job, skipping stages
 * whose outputs exist and validate. Each stage run writes its own record
 * RUN_DIR/records/<stage>.json; RUN_DIR/experiment.h5 (job file, provenance,
 * timings, external links to every stage's outputs) is assembled from all
 * records, so concurrent stage runs (Slurm stage jobs) lose none.
 *
 * Job file:
 *   name: tiny
 *   run_dir: runs/tiny              # --out overrides
 *   seed: 42                        # available as ${seed}
 *   stages:
 *     base:                         # stage name (file order breaks ties)
 *       command: train              # any mergelens command
 *       needs: [tokenize]           # stages that must finish first
 *       args: [ ... ]               # positional arguments
 *       options: {lr: 6e-4, ...}    # --key value (lists become comma-joined)
 *       outputs: [models/base.h5]   # relative to run_dir; used for skipping
 *       slurm: {time: "01:00:00", ntasks: 4}   # per-stage resources (slurm/submit)
 *       files: {recipes/merge.yaml: "..."}     # written (substituted, run_dir-relative)
 *                                              # before the stage runs, e.g. a merge recipe
 * Strings may use ${run_dir}, ${job_dir} (the job file's directory), ${seed},
 * and ${task} / ${tasks} (array task index and count; 0 and 1 outside one).
 * Job arrays (`slurm: {array: N}`): the stage's command gets
 * `--task ${task} --tasks ${tasks}` (it must have those options, e.g. sweep),
 * each task runs as `mergelens run JOB --stage NAME --task I --tasks N`
 * (without --task, `mergelens run` runs the N tasks one after another), and
 * an `args` item `{each_task: "parts/p${task}.h5", of: STAGE}` expands to one
 * argument per task of STAGE (for the combine step).
 */
#ifndef MERGELENS_PIPELINE_H
#define MERGELENS_PIPELINE_H

#include "mergelens/config.h"

typedef struct ml_job ml_job;
typedef struct {
    const char *name, *command;
    int argc;
    char **argv;          /* argv[0] = command; substituted */
    int n_needs;
    int *needs;           /* stage indices */
    int n_outputs;
    char **outputs;       /* absolute or run_dir-relative resolved paths */
    const ml_node *slurm; /* per-stage resources (may be NULL) */
    int array;            /* slurm `array` task count (0: not an array stage) */
    int n_files;
    char **file_paths;    /* files to write before running (resolved paths) */
    char **file_texts;    /* their substituted contents */
} ml_stage;

/* Parse and validate a job file (unknown keys, unknown stages in needs,
 * cycles, unknown commands, and every stage's options against its command's
 * option table: "jobs/x.yaml:LINE: unknown key 'tokns' for stage 'NAME'
 * (mergelens COMMAND; did you mean 'tokens'?)"). out_dir overrides run_dir
 * when not NULL. Local (no collective); the option check needs MPI initialised
 * (skipped without it). */
int ml_job_load(const char *path, const char *out_dir, ml_job **out);
/* The same for array task `task` of `tasks`: ${task} and ${tasks} in the job
 * file substitute to them (ml_job_load: 0 and 1). */
int ml_job_load_task(const char *path, const char *out_dir, int task, int tasks, ml_job **out);
void ml_job_destroy(ml_job **job);
int ml_job_stage_count(const ml_job *job);
const ml_stage *ml_job_stage(const ml_job *job, int i); /* in run order */
const char *ml_job_run_dir(const ml_job *job);
const ml_node *ml_job_root(const ml_job *job);
/* 1 if every declared output exists and opens as a mergelens file. */
int ml_stage_complete(const ml_stage *s);

int ml_cmd_run(MPI_Comm comm, int argc, char **argv);

#endif
