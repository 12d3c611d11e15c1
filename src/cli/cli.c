/* Subcommand dispatch and the top-level error policy:
 * a failure that every rank agreed on (ml_agree) ends the job cleanly with
 * exit code 1 on every rank; a failure on one rank that the others do not
 * know about ends the job through MPI_Abort, so no rank is left hanging. */
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
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) printf("mergelens %s\n", ML_VERSION_STRING);
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

int ml_cli_main(int argc, char **argv) {
    int provided, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_log_init(rank, size);
    if (ml_signal_die_with_parent() != ML_OK) ml_warn("%s", ml_error_message()); /* ranks die with mpiexec */
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
    char advice[512];
    if (strcmp(cmd->name, "doctor") != 0 && ml_blas_check(advice, sizeof advice)) ml_warn("%s", advice);
    int rc = cmd->fn(MPI_COMM_WORLD, argc - 1, argv + 1);
    if (rc == ML_OK) {
        /* like PETSc's -log_view: per-phase time (min/max/mean over ranks),
         * GFLOP/s and GB/s; ML_PROFILE=0 turns it off */
        const ml_prof_event *ev;
        const char *pf = getenv("ML_PROFILE");
        int quiet = (pf && !strcmp(pf, "0")) || !strcmp(cmd->name, "version") || !strcmp(cmd->name, "inspect");
        if (!quiet && ml_prof_events(&ev) > 0) rc = ml_prof_summary(MPI_COMM_WORLD, stderr);
    }
    if (rc != ML_OK) {
        const char *lv = getenv("ML_LOG_LEVEL");
        int verbose = lv && !strcmp(lv, "debug");
        if (ml_error_agreed()) {
            /* every rank knows: rank 0 reports, the failing rank adds its traceback */
            if (rank == 0 || (verbose && rc != ML_ERR_REMOTE)) ml_error_print(stderr, verbose);
            fflush(stderr);
            MPI_Finalize();
            return 1;
        }
        /* only this rank knows: report and take the whole job down */
        if (size > 1) fprintf(stderr, "[rank %d] ", rank);
        ml_error_print(stderr, verbose);
        fflush(stderr);
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
        MPI_Finalize();
        return 1;
    }
    MPI_Finalize();
    return 0;
}
