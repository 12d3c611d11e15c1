/* Subcommand dispatch and the top-level error policy. */
#include "mergelens/cli.h"

#include <stdlib.h>
#include <string.h>

static int ml_cmd_version(MPI_Comm comm, int argc, char **argv) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) printf("mergelens %s\n", ML_VERSION_STRING);
    return ML_OK;
}

static const ml_command ml_commands[] = {
    {"version", ml_cmd_version, "print the version"},
};
static const int ml_ncommands = (int)(sizeof ml_commands / sizeof ml_commands[0]);

static void ml_usage(FILE *out) {
    fprintf(out, "usage: mergelens <command> [options]\n\ncommands:\n");
    for (int i = 0; i < ml_ncommands; i++) fprintf(out, "  %-14s %s\n", ml_commands[i].name, ml_commands[i].summary);
    fprintf(out, "\n`mergelens <command> --help` lists a command's options.\n");
}

int ml_cli_main(int argc, char **argv) {
    int provided, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        if (rank == 0) ml_usage(stdout);
        MPI_Finalize();
        return argc < 2 ? 2 : 0;
    }
    const ml_command *cmd = NULL;
    for (int i = 0; i < ml_ncommands; i++)
        if (!strcmp(argv[1], ml_commands[i].name)) cmd = &ml_commands[i];
    if (!cmd) {
        if (rank == 0) {
            fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
            ml_usage(stderr);
        }
        MPI_Finalize();
        return 2;
    }
    int rc = cmd->fn(MPI_COMM_WORLD, argc - 1, argv + 1);
    MPI_Finalize();
    return rc == ML_OK ? 0 : 1;
}
