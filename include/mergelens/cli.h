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

#endif
