/* mergelens cli: the `mergelens` executable's subcommand table and the
 * top-level error policy (agree on failure, else MPI_Abort). */
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

int ml_cli_main(int argc, char **argv);
/* The command of that name, or NULL. */
const ml_command *ml_cli_find(const char *name);

#endif
