/* Subcommand dispatch and the top-level error policy:
 * every rank enters one exit epilogue (ml_cli_exit) whatever its command
 * returned: a failure on any rank ends the job cleanly with one error line and
 * exit code 1 on every rank; only a failed rank whose peers are stuck in a
 * collective it never entered ends the job through MPI_Abort, after
 * ML_EXIT_WAIT seconds, so no rank is left hanging. */
#include "mergelens/cli.h"

#include <cblas.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mergelens/config.h"
#include "mergelens/capture.h"
#include "mergelens/compare.h"
#include "mergelens/data.h"
#include "mergelens/interop.h"
#include "mergelens/io.h"
#include "mergelens/merge.h"
#include "mergelens/peft.h"
#include "mergelens/pipeline.h"
#include "mergelens/region.h"
#include "mergelens/sae.h"
#include "mergelens/sweep.h"
#include "mergelens/train.h"

static int ml_cmd_version(MPI_Comm comm, int argc, char **argv) {
    static const ml_option_spec none[] = {ML_OPT_END};
    int rank, help = 0;
    ml_options *o = NULL;
    MPI_Comm_rank(comm, &rank);
    /* no options, but through the registry like every command (job-file checks) */
    ML_CHECK(ml_options_parse_command(comm, "version", "usage: mergelens version", none, argc, argv, &o, NULL, NULL,
                                      &help));
    ml_options_destroy(&o);
    if (rank == 0 && !help) printf("mergelens %s\n", ML_VERSION_STRING);
    return ML_OK;
}

static const ml_option_spec ml_inspect_opts[] = {
    {"all", ML_OPT_BOOL, "false", 0, -1, NULL, "print long attribute values in full"},
    ML_OPT_END,
};

static int ml_cmd_inspect(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, npos = 0, help = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL;
    ML_CHECK(ml_options_parse_command(comm, "inspect",
                                      "usage: mergelens inspect FILE.h5 [FILE.h5 ...] [options]\n\n"
                                      "Print the tree of an HDF5 file: groups, datasets with shapes and dtypes, "
                                      "attributes.",
                                      ml_inspect_opts, argc, argv, &o, &npos, &pos, &help));
    if (help) goto done;
    if (rc == ML_OK && npos == 0) rc = ML_FAIL(ML_ERR_ARG, "inspect: no file given (usage: mergelens inspect FILE.h5)");
    for (int i = 0; rc == ML_OK && i < npos; i++)
        if (rank == 0) rc = ml_h5_inspect(pos[i], stdout, ml_opt_bool(o, "all"));
    rc = ml_agree(comm, rc);
done:
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}

static const ml_option_spec ml_doctor_opts[] = {
    {"dir", ML_OPT_STRING, "/tmp", 0, -1, NULL, "directory for the collective HDF5 write test"},
    {"gemm_n", ML_OPT_INT, "1024", 64, 8192, NULL, "matrix size of the sgemm speed check"},
    ML_OPT_END,
};

/* `mergelens doctor`: check the runtime (MPI, OpenBLAS kernels and speed,
 * parallel HDF5 collective I/O) the way the pipeline will use it. */
static int ml_cmd_doctor(MPI_Comm comm, int argc, char **argv) {
    int rank, size, rc = ML_OK, help = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    ml_options *o = NULL;
    float *a = NULL, *b = NULL, *c = NULL;
    ml_h5 *h = NULL;
    ML_CHECK(ml_options_parse_command(comm, "doctor",
                                      "usage: mergelens doctor [options]\n\nCheck MPI, OpenBLAS and parallel HDF5.",
                                      ml_doctor_opts, argc, argv, &o, NULL, NULL, &help));
    if (help) goto done;
    /* a rank failing alone, before any agreement point (tests the abort path) */
    ML_CHECK_GOTO(ml_inject_point("doctor-alone", rank), done);
    char host[256] = "?";
    gethostname(host, sizeof host);
    unsigned maj, min, rel;
    H5get_libversion(&maj, &min, &rel);
    char advice[512];
    int weak = ml_blas_check(advice, sizeof advice);
    ml_info("mergelens %s: %d rank%s, rank 0 on %s", ML_VERSION_STRING, size, size > 1 ? "s" : "", host);
    ml_info("OpenBLAS core %s, %d thread%s per rank%s", ml_blas_corename(), ml_blas_threads(),
            ml_blas_threads() > 1 ? "s" : "", weak ? " (WEAK KERNELS)" : "");
    if (weak) ml_warn("%s", advice);
    ml_info("HDF5 %u.%u.%u (parallel)", maj, min, rel);
    int n = (int)ml_opt_int(o, "gemm_n");
    a = ml_malloc(sizeof(float) * (size_t)n * (size_t)n);
    b = ml_malloc(sizeof(float) * (size_t)n * (size_t)n);
    c = ml_malloc(sizeof(float) * (size_t)n * (size_t)n);
    if (!a || !b || !c) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "doctor: out of memory for %d x %d matrices", n, n);
    for (size_t i = 0; i < (size_t)n * (size_t)n; i++) a[i] = b[i] = 1.0f / (float)(1 + i % 7);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double t0 = ml_wtime();
    int reps = 0;
    while (ml_wtime() - t0 < 0.5 || reps < 2) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        reps++;
    }
    double gf = 2.0 * n * n * (double)n * reps / (ml_wtime() - t0) * 1e-9, gsum = 0;
    ML_CHECK_MPI(MPI_Allreduce(&gf, &gsum, 1, MPI_DOUBLE, MPI_SUM, comm));
    ml_info("sgemm %dx%dx%d: %.1f GFLOP/s on rank 0, %.1f summed over ranks", n, n, n, gf, gsum);
    char path[4096];
    snprintf(path, sizeof path, "%s/mergelens-doctor-%d.h5", ml_opt_str(o, "dir"), (int)getpid());
    ML_CHECK_MPI(MPI_Bcast(path, sizeof path, MPI_CHAR, 0, comm));
    /* a failure on one rank that every rank learns of at the next agreement */
    rc = ml_inject_point("doctor", rank);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, "mergelens.doctor", 1, &h), done);
    hsize_t dims[1] = {(hsize_t)size * 1024};
    ml_h5_layout lay = {.chunk_rows = 1024, .compress = 1};
    ML_CHECK_GOTO(ml_h5_create_dataset(h, "x", ML_F32, 1, dims, &lay), done);
    ML_CHECK_GOTO(ml_h5_write_rows(h, "x", ML_F32, (hsize_t)rank * 1024, 1024, a), done);
    int mode = ml_h5_last_io_mode();
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    if (rank == 0) unlink(path);
    ml_info("parallel HDF5: collective compressed write %s", mode != H5D_MPIO_NO_COLLECTIVE ? "ok" : "NOT collective");
done:
    if (h) ml_h5_discard(&h);
    ml_free(a);
    ml_free(b);
    ml_free(c);
    ml_options_destroy(&o);
    return rc;
}

static const ml_command ml_commands[] = {
    {"capture", ml_cmd_capture, "run a model over token windows and write hook activations (acts/<model>.h5)"},
    {"compare", ml_cmd_compare, "correlate two SAEs' features on the same tokens; persist / emerge / disappear"},
    {"data", ml_cmd_data, "synthetic demo stories; corpus statistics"},
    {"doctor", ml_cmd_doctor, "check MPI, OpenBLAS kernels and speed, parallel HDF5"},
    {"lora", ml_cmd_lora, "PEFT adapters (LoRA, IA3): train on a frozen host, port to another host, merge, export"},
    {"merge", ml_cmd_merge, "merge checkpoints (mergekit recipes: slerp, linear, ties, dare, model_stock, soups)"},
    {"eval", ml_cmd_eval, "per-domain validation loss and accuracy of a checkpoint"},
    {"export", ml_cmd_export, "write a model as a Hugging Face directory or an SAE as a SAELens directory"},
    {"import", ml_cmd_import, "read a Hugging Face MistralForCausalLM directory into a checkpoint"},
    {"inspect", ml_cmd_inspect, "print the tree of an HDF5 file (groups, shapes, dtypes, attributes)"},
    {"region", ml_cmd_region, "weight-space regions: task-vector geometry, clustering, interpolation, centroids"},
    {"run", ml_cmd_run, "run a job file's stages in dependency order (resumes; see jobs/)"},
    {"sae", ml_cmd_sae, "train sparse autoencoders on captured activations or a model's forward pass (standard, anthropic, topk)"},
    {"sae-eval", ml_cmd_sae_eval, "CE loss recovered of an SAE spliced into its model"},
    {"sweep", ml_cmd_sweep, "merge-ratio sweep: merge and evaluate K points on every domain"},
    {"sweep-combine", ml_cmd_sweep_combine, "assemble the partial files of a job-array sweep"},
    {"tokenize", ml_cmd_tokenize, "tokenize domains into <out_dir>/<domain>.h5 token stores"},
    {"tokenizer", ml_cmd_tokenizer, "train, export or import a byte-level BPE tokenizer"},
    {"track", ml_cmd_track, "classify features along a lineage graph (base -> fine-tunes -> merge) with flow traces"},
    {"track-sweep", ml_cmd_track_sweep, "per merge-sweep point: which fine-tuned SAE features are still present in the merge"},
    {"train", ml_cmd_train, "train or fine-tune a model, data-parallel, resumable"},
    {"version", ml_cmd_version, "print the version"},
};
static const int ml_ncommands = (int)(sizeof ml_commands / sizeof ml_commands[0]);

const ml_command *ml_cli_find(const char *name) {
    for (int i = 0; i < ml_ncommands; i++)
        if (!strcmp(name, ml_commands[i].name)) return &ml_commands[i];
    return NULL;
}

static void ml_usage(FILE *out) {
    fprintf(out, "usage: mergelens <command> [options]\n\ncommands:\n");
    for (int i = 0; i < ml_ncommands; i++) fprintf(out, "  %-14s %s\n", ml_commands[i].name, ml_commands[i].summary);
    fprintf(out, "\n`mergelens <command> --help` lists a command's options.\n"
                 "Environment: ML_LOG_LEVEL=error|warn|info|debug (debug: per-rank logs and error tracebacks).\n");
}

/* How long a failed rank waits for the others at exit before it gives up on
 * them (they are then stuck in a collective that the failed rank never
 * entered) and ends the job with MPI_Abort; ML_EXIT_WAIT seconds. */
static double ml_exit_wait_seconds(void) {
    const char *e = getenv("ML_EXIT_WAIT");
    double w = e && *e ? atof(e) : 10.0;
    return w > 0 ? w : 10.0;
}

/* The exit epilogue, entered by every rank whatever its command returned.
 * One non-blocking reduction on a communicator of its own (so it can never
 * match a collective of the command) gives every rank the lowest failing rank
 * and whether any rank recorded profiling events. Then, with every rank
 * present: the profile summary when all succeeded, or one error line from the
 * lowest failing rank and exit 1 everywhere. A failed rank whose peers never
 * arrive (they wait in a collective it did not enter) aborts the job after
 * ML_EXIT_WAIT seconds instead of hanging. */
static int ml_cli_exit(MPI_Comm exit_comm, const ml_command *cmd, int rc) {
    int rank, size;
    MPI_Comm_rank(exit_comm, &rank);
    MPI_Comm_size(exit_comm, &size);
    const ml_prof_event *ev;
    const char *pf = getenv("ML_PROFILE");
    int quiet = (pf && !strcmp(pf, "0")) || !strcmp(cmd->name, "version") || !strcmp(cmd->name, "inspect");
    /* {lowest failing rank, -(any events), -(any failure other than an interruption)} under MPI_MIN */
    int mine[3] = {rc != ML_OK ? rank : size, !quiet && ml_prof_events(&ev) > 0 ? -1 : 0,
                   rc != ML_OK && rc != ML_ERR_INTERRUPTED ? -1 : 0},
        all[3] = {size, 0, 0};
    MPI_Request req;
    int done = 0;
    if (MPI_Iallreduce(mine, all, 3, MPI_INT, MPI_MIN, exit_comm, &req) != MPI_SUCCESS) {
        all[0] = mine[0];
        done = -1;
    }
    if (!done && rc == ML_OK) {
        done = MPI_Wait(&req, MPI_STATUS_IGNORE) == MPI_SUCCESS ? 1 : -1;
    } else if (!done) {
        double t0 = ml_wtime(), wait = ml_exit_wait_seconds();
        while (!done && ml_wtime() - t0 < wait) {
            if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) done = -1;
            if (!done) usleep(1000);
        }
    }
    const char *lv = getenv("ML_LOG_LEVEL");
    int verbose = lv && !strcmp(lv, "debug");
    if (done != 1) { /* only this rank knows: report and take the whole job down */
        if (size > 1) fprintf(stderr, "[rank %d] ", rank);
        ml_error_print(stderr, verbose);
        if (size > 1) fprintf(stderr, "[rank %d] the other ranks did not reach the exit within %.0f s (ML_EXIT_WAIT): "
                                      "aborting the job\n", rank, ml_exit_wait_seconds());
        fflush(stderr);
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    if (all[0] == size && all[1] < 0) {
        rc = ml_agree(MPI_COMM_WORLD, ml_prof_summary(MPI_COMM_WORLD, stderr));
        if (rc != ML_OK) all[0] = 0;
    }
    if (all[0] == size) return 0;
    /* every rank is here: the lowest failing rank reports (rank 0 for agreed
     * errors, which carry the failing rank's message), the failing ranks add
     * their traceback in debug mode */
    if (rank == all[0] || (verbose && rc != ML_OK && rc != ML_ERR_REMOTE)) {
        if (rank != 0 && size > 1 && !ml_error_agreed()) fprintf(stderr, "[rank %d] ", rank);
        ml_error_print(stderr, verbose);
    }
    fflush(stderr);
    /* EX_TEMPFAIL: every failing rank stopped at a signal and wrote its
     * checkpoint, so a batch script can requeue instead of failing */
    return all[2] == 0 ? ML_EXIT_INTERRUPTED : 1;
}

int ml_cli_main(int argc, char **argv) {
    int provided, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    /* MPI failures come back as codes (ML_CHECK_MPI) instead of killing the job */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        if (rank == 0) ml_usage(argc < 2 ? stderr : stdout);
        MPI_Finalize();
        return argc < 2 ? 2 : 0;
    }
    const ml_command *cmd = ml_cli_find(argv[1]);
    if (!cmd) {
        if (rank == 0) {
            fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
            ml_usage(stderr);
        }
        MPI_Finalize();
        return 2;
    }
    MPI_Comm exit_comm;
    MPI_Comm_dup(MPI_COMM_WORLD, &exit_comm);
    char advice[512];
    if (strcmp(cmd->name, "doctor") != 0 && ml_blas_check(advice, sizeof advice)) ml_warn("%s", advice);
    int rc = cmd->fn(MPI_COMM_WORLD, argc - 1, argv + 1);
    int code = ml_cli_exit(exit_comm, cmd, rc);
    MPI_Comm_free(&exit_comm);
    MPI_Finalize();
    return code;
}
