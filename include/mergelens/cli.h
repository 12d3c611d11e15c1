/* mergelens cli: the `mergelens` executable's subcommand table and the
 * top-level error policy (one exit epilogue on every rank; exit 0, 1, or 75 =
 * interrupted with a checkpoint written). */
#ifndef MERGELENS_CLI_H
#define MERGELENS_CLI_H

#include "mergelens/core.h"

/* A subcommand: argv[0] is the subcommand name. Collective over comm.
 * Returns ML_OK or a status (the error message is set). */
typedef int (*ml_cmd_fn)(MPI_Comm comm, int argc, char **argv);
typedef struct {
    const char *name;
    ml_cmd_fn fn;
    const char *summary;
} ml_command;

/* Exit status of a run whose every failing rank was stopped by a signal
 * after writing its checkpoint (EX_TEMPFAIL): rerun to resume. Any other
 * failure exits 1. */
#define ML_EXIT_INTERRUPTED 75

int ml_cli_main(int argc, char **argv);
/* The command of that name, or NULL. */
const ml_command *ml_cli_find(const char *name);

/* The output guard around a command (src/cli/guard.c). Collective over comm:
 * argv is the command's own (argv[0] = command name; for lora, export,
 * import, tokenizer and data the subcommand is argv[1]). Refuses, on every
 * rank alike, an output that is an input of the command, an existing
 * directory where a file is written or a file in a missing directory, then
 * takes on rank 0 the lock `<output>.lock` of every output (a second run on
 * the same output fails at once; a lock of a dead run is taken over).
 * *out is NULL on failure. */
typedef struct ml_cli_guard ml_cli_guard;
int ml_cli_guard_acquire(MPI_Comm comm, const char *command, int argc, char **argv, ml_cli_guard **out);
/* Not collective: rank 0 unlinks its locks (those still its own). Tolerates NULL. */
void ml_cli_guard_release(ml_cli_guard **g);

#endif
