/* Status table, error state with traceback frames, MPI failure agreement. */
#include "mergelens/core.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
    const char *message;
} ml_status_table[ML_STATUS_COUNT_] = {
    {ML_OK, "ML_OK", "success"},
    {ML_ERR_NOMEM, "ML_ERR_NOMEM", "out of memory"},
    {ML_ERR_IO, "ML_ERR_IO", "file system or I/O failure"},
    {ML_ERR_FORMAT, "ML_ERR_FORMAT", "wrong file format or version"},
    {ML_ERR_ARG, "ML_ERR_ARG", "invalid argument"},
    {ML_ERR_CONFIG, "ML_ERR_CONFIG", "invalid configuration"},
    {ML_ERR_MPI, "ML_ERR_MPI", "MPI failure"},
    {ML_ERR_HDF5, "ML_ERR_HDF5", "HDF5 failure"},
    {ML_ERR_SHAPE, "ML_ERR_SHAPE", "tensor shapes do not agree"},
    {ML_ERR_NUMERIC, "ML_ERR_NUMERIC", "non-finite or invalid numbers"},
    {ML_ERR_NOTFOUND, "ML_ERR_NOTFOUND", "not found"},
    {ML_ERR_REMOTE, "ML_ERR_REMOTE", "another rank failed"},
    {ML_ERR_INTERRUPTED, "ML_ERR_INTERRUPTED", "interrupted by a signal"},
    {ML_ERR_UNSUPPORTED, "ML_ERR_UNSUPPORTED", "unsupported input"},
    {ML_ERR_INTERNAL, "ML_ERR_INTERNAL", "internal error"},
    {ML_ERR_INJECTED, "ML_ERR_INJECTED", "injected failure"},
};

const char *ml_status_name(int code) {
    if (code > 0 || code <= -ML_STATUS_COUNT_) return "ML_ERR_UNKNOWN";
    return ml_status_table[-code].name;
}

const char *ml_status_message(int code) {
    if (code > 0 || code <= -ML_STATUS_COUNT_) return "unknown status";
    return ml_status_table[-code].message;
}

#define ML_MAX_FRAMES 32
static struct {
    int agreed; /* every rank knows about this failure (set by ml_agree) */
    int code;
    char message[1024];
    int nframes;
    struct {
        const char *file, *func;
        int line;
    } frames[ML_MAX_FRAMES];
} ml_err;

static void ml_push_frame(const char *file, int line, const char *func) {
    if (ml_err.nframes >= ML_MAX_FRAMES) return;
    ml_err.frames[ml_err.nframes].file = file;
    ml_err.frames[ml_err.nframes].line = line;
    ml_err.frames[ml_err.nframes].func = func;
    ml_err.nframes++;
}

int ml_error_set(int code, const char *file, int line, const char *func,
                 const char *fmt, ...) {
    va_list ap;
    ml_err.code = code;
    ml_err.agreed = 0;
    ml_err.nframes = 0;
    va_start(ap, fmt);
    vsnprintf(ml_err.message, sizeof ml_err.message, fmt, ap);
    va_end(ap);
    /* one-line messages: newlines become spaces */
    for (char *c = ml_err.message; *c; c++)
        if (*c == '\n') *c = ' ';
    ml_push_frame(file, line, func);
    return code;
}

int ml_error_trace(int code, const char *file, int line, const char *func) {
    if (ml_err.code == ML_OK) { /* failure without a message: give one */
        ml_err.code = code;
        snprintf(ml_err.message, sizeof ml_err.message, "%s", ml_status_message(code));
        ml_err.nframes = 0;
    }
    ml_push_frame(file, line, func);
    return code;
}

const char *ml_error_message(void) { return ml_err.message; }
int ml_error_code(void) { return ml_err.code; }
int ml_error_agreed(void) { return ml_err.agreed; }

void ml_error_adopt(int code, const char *message) {
    ml_err.code = code;
    ml_err.agreed = 0;
    ml_err.nframes = 0;
    snprintf(ml_err.message, sizeof ml_err.message, "%s", message);
}

void ml_error_clear(void) {
    ml_err.code = ML_OK;
    ml_err.agreed = 0;
    ml_err.message[0] = '\0';
    ml_err.nframes = 0;
}

void ml_error_print(FILE *out, int verbose) {
    fprintf(out, "error: %s\n", ml_err.message[0] ? ml_err.message : ml_status_message(ml_err.code));
    if (!verbose) return;
    for (int i = 0; i < ml_err.nframes; i++)
        fprintf(out, "  at %s:%d in %s()\n", ml_err.frames[i].file, ml_err.frames[i].line,
                ml_err.frames[i].func);
}

int ml_mpi_error(int mpi_rc, const char *call, const char *file, int line, const char *func) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "code %d", mpi_rc);
    return ml_error_set(ML_ERR_MPI, file, line, func, "%s failed: %s", call, text);
}

int ml_agree(MPI_Comm comm, int local_status) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* lowest failing rank (size if none) */
    int mine = local_status != ML_OK ? rank : size, first = size;
    int mrc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (mrc != MPI_SUCCESS) return ml_mpi_error(mrc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
    if (first == size) return ML_OK;
    struct {
        int code;
        char message[1024];
    } msg;
    memset(&msg, 0, sizeof msg);
    if (rank == first) {
        msg.code = local_status;
        snprintf(msg.message, sizeof msg.message, "%s", ml_err.message[0] ? ml_err.message
                                                                           : ml_status_message(local_status));
    }
    mrc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, first, comm);
    if (mrc != MPI_SUCCESS) return ml_mpi_error(mrc, "MPI_Bcast", __FILE__, __LINE__, __func__);
    ml_err.agreed = 1;
    if (local_status != ML_OK) return local_status; /* keep own error + traceback */
    char text[1100];
    if (size > 1)
        snprintf(text, sizeof text, "rank %d: %s", first, msg.message);
    else
        snprintf(text, sizeof text, "%s", msg.message);
    ml_error_adopt(ML_ERR_REMOTE, text);
    ml_err.agreed = 1;
    return ML_ERR_REMOTE;
}

int ml_inject_point(const char *site, int rank) {
    const char *spec = getenv("ML_INJECT_FAIL");
    if (!spec || !*spec) return ML_OK;
    const char *colon = strrchr(spec, ':');
    size_t site_len = colon ? (size_t)(colon - spec) : strlen(spec);
    if (strlen(site) != site_len || strncmp(spec, site, site_len) != 0) return ML_OK;
    if (colon && atoi(colon + 1) != rank) return ML_OK;
    return ml_error_set(ML_ERR_INJECTED, __FILE__, __LINE__, __func__,
                        "failure injected at '%s' on rank %d (ML_INJECT_FAIL)", site, rank);
}
