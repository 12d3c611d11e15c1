/* A module's commands as a standalone test executable: `driver CMD args...` runs the matching
 * entry of a command table under MPI, prints the error on rank 0 and maps the status to the exit
 * code the mergelens CLI uses (0 ok, 3 interrupted, 1 otherwise). */
#ifndef ML_TEST_DRIVER_H
#define ML_TEST_DRIVER_H

#include <stdio.h>
#include <string.h>

#include <mpi.h>

#include "mergelens/cli.h"
#include "mergelens/core.h"

static inline int ml_test_driver_main(int argc, char **argv, const char *name, const ml_command *table) {
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    int rc = ML_ERR_ARG;
    const ml_command *c = table;
    if (argc >= 2)
        while (c->name && strcmp(c->name, argv[1])) c++;
    if (argc < 2 || !c->name) {
        fprintf(stderr, "%s: expected a command:", name);
        for (c = table; c->name; c++) fprintf(stderr, " %s", c->name);
        fprintf(stderr, "\n");
    } else {
        rc = c->fn(MPI_COMM_WORLD, argc - 1, argv + 1);
        if (rc != ML_OK && rank == 0) ml_error_print(stderr, 0);
    }
    MPI_Finalize();
    return rc == ML_OK ? 0 : rc == ML_ERR_INTERRUPTED ? 3 : 1;
}

#endif
