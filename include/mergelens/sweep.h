/* mergelens sweep: merge-ratio sweeps with per-domain evaluation.
 *
 * `mergelens sweep RECIPE.yaml --param t --from 0 --to 1 --count 101
 *  --domains a.h5,b.h5 --out sweeps/<name>.h5` merges the recipe's models at
 * K parameter values and evaluates every merged model on every domain's
 * validation split (loss and next-token accuracy).
 *
 *  - The input models are loaded ONCE into memory on every rank (M models of
 *    n parameters: M x 4n bytes, plus one merged model, 4n bytes); each
 *    tensor's merge statistics (norms, angles: ml_merge_stats_compute) are
 *    computed once; each point is ml_merge_params_override + ml_merge_apply
 *    per tensor, followed by an evaluation (ml_evaluator_run).
 *  - Ranks split the POINTS: the j-th point of the run goes to rank j mod P,
 *    which merges and evaluates it alone (MPI_COMM_SELF); the results are
 *    gathered, so they are identical for every rank count.
 *  - Job arrays: --task I --tasks N evaluates the points k with
 *    k mod N == I and writes a partial file; `mergelens sweep-combine`
 *    assembles the partial files into the final one.
 *
 * File `sweeps/<name>.h5` (format mergelens.sweep v1), K points, D domains,
 * n points held (n = K in a complete file):
 *   /grid [K] f64           parameter value of every point of the grid
 *   /points [n] i64         grid indices of the rows below (0..K-1 when complete)
 *   /loss [n, D] f64        mean cross-entropy (nats per token)
 *   /accuracy [n, D] f64    next-token accuracy
 *   /tokens [D] i64         targets evaluated per domain
 *   /reference/loss [D], /reference/accuracy [D]   (with --reference)
 *   root attrs: param, method, recipe (JSON), domains (JSON names),
 *   paths (JSON store paths), models (JSON input checkpoints), split,
 *   context, from, to, count, task, tasks, partial (0/1), config (JSON),
 *   reference (path or ""), complete (1; 0 in a checkpoint).
 *
 * Preemption: SIGTERM / SIGUSR1 (or --checkpoint_every N points) writes the
 * same file with complete = 0, /done [n] u8 (finished rows; the others are
 * NaN) and attribute points_done; a rerun of the same command resumes it
 * (docs/modules/sweep.md, "Preemption and resume").
 */
#ifndef MERGELENS_SWEEP_H
#define MERGELENS_SWEEP_H

#include "mergelens/merge.h"
#include "mergelens/model.h"
#include "mergelens/train.h"

#define ML_SWEEP_FORMAT "mergelens.sweep"

/* Value of grid point k of count points from..to (count 1: from). */
double ml_sweep_grid_value(double from, double to, int count, int k);
/* ML_ERR_ARG unless `param` can be swept for this method (t for slerp,
 * weight[i] for linear/soup/task arithmetic/ties/dare/multislerp, lambda for
 * the task-vector methods, density / density[i] for ties/dare, eps for
 * multislerp, tol for karcher); the message lists the sweepable ones. */
int ml_sweep_param_check(ml_merge_method m, const char *param);

/* In-memory merger: the recipe's inputs and their per-tensor statistics. */
typedef struct ml_sweeper ml_sweeper;
/* Collective over comm: validates the recipe and checkpoints (the merge
 * module's checks), then every rank loads all inputs and computes every
 * tensor's statistics once. */
int ml_sweeper_create(MPI_Comm comm, const ml_merge_recipe *r, const char *param, ml_sweeper **out);
void ml_sweeper_destroy(ml_sweeper **s);
const ml_model_config *ml_sweeper_model_config(const ml_sweeper *s);
/* Local: check every tensor's parameters with param = value (names the tensor). */
int ml_sweeper_check(ml_sweeper *s, double value);
/* Local: out (a model of the inputs' config) = the merge with param = value. */
int ml_sweeper_merge(ml_sweeper *s, double value, ml_model *out);
/* Bytes held: input models, statistics and workspace. */
size_t ml_sweeper_bytes(const ml_sweeper *s);

/* Collective: open a sweep file for reading (format mergelens.sweep v1) and
 * refuse an interrupted one (root attribute complete = 0, a checkpoint that a
 * rerun of the same command finishes) with a one-line error naming it. */
int ml_sweep_open(MPI_Comm comm, const char *path, ml_h5 **h);

/* `mergelens sweep RECIPE.yaml --param t --from 0 --to 1 --count 101 --domains a.h5,b.h5 --out F.h5` */
int ml_cmd_sweep(MPI_Comm comm, int argc, char **argv);
/* `mergelens sweep-combine PART.h5... --out F.h5` */
int ml_cmd_sweep_combine(MPI_Comm comm, int argc, char **argv);

#endif
