/* The parallel HDF5 layer: validated files with atomic temp+rename creation,
 * row-range collective transfers, attributes and small tensors. */
#define _GNU_SOURCE /* sync_file_range */
#include "mergelens/io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef ML_GIT_COMMIT
#define ML_GIT_COMMIT "unknown"
#endif

struct ml_h5 {
    hid_t file;
    MPI_Comm comm;
    int rank, size;
    int creating; /* written at tmp_path, renamed on close */
    char *path, *tmp_path, *format;
    char *reserve_path; /* created: rank 0's reserve beside tmp_path (see ML_H5_RESERVE), or NULL */
    int version;
    int writeback_fd; /* read-only descriptor of tmp_path for ml_h5_start_writeback, or -1 */
    int readonly;     /* opened with ml_h5_open */
    int raw_fd;       /* descriptor for raw transfers (read-only: path; created: tmp_path), or -1 until used */
    void *map;        /* read-only mapping of the whole file (ml_h5_map_dataset), or NULL */
    size_t map_bytes;
};

/* Raw transfers: row ranges of contiguous, allocated datasets whose file type
 * is the memory type move with pread/pwrite at the dataset's file offset
 * instead of through HDF5's MPI-IO data path (about 3x faster from the page
 * cache). Used for reads of files opened read-only and for independent writes
 * (and serial handles' writes) to files being created; HDF5 keeps writing all
 * metadata. ML_H5_RAW=0 in the environment turns it off. */
static int ml_raw_io = -1;
static int64_t ml_raw_transfers = 0;
void ml_h5_set_raw_io(int on) { ml_raw_io = on ? 1 : 0; }
int64_t ml_h5_raw_transfer_count(void) { return ml_raw_transfers; }
static int ml_raw_io_on(void) {
    if (ml_raw_io < 0) {
        const char *e = getenv("ML_H5_RAW");
        ml_raw_io = !(e && !strcmp(e, "0"));
    }
    return ml_raw_io;
}

static int ml_last_io_mode = -1;
int ml_h5_last_io_mode(void) { return ml_last_io_mode; }

size_t ml_dtype_size(ml_dtype t) {
    static const size_t s[] = {4, 8, 2, 4, 8, 1, 2, 4};
    return s[t];
}

const char *ml_dtype_name(ml_dtype t) {
    static const char *s[] = {"float32", "float64", "float16", "int32", "int64", "uint8", "uint16", "uint32"};
    return s[t];
}

/* Memory (native) type for a dtype; F16 is stored as its uint16 bits. */
static hid_t ml_mem_type(ml_dtype t) {
    switch (t) {
    case ML_F32: return H5T_NATIVE_FLOAT;
    case ML_F64: return H5T_NATIVE_DOUBLE;
    case ML_F16: return H5T_NATIVE_UINT16;
    case ML_I32: return H5T_NATIVE_INT32;
    case ML_I64: return H5T_NATIVE_INT64;
    case ML_U8: return H5T_NATIVE_UINT8;
    case ML_U16: return H5T_NATIVE_UINT16;
    case ML_U32: return H5T_NATIVE_UINT32;
    }
    return H5T_NATIVE_FLOAT;
}

static hid_t ml_file_type(ml_dtype t) {
    switch (t) {
    case ML_F32: return H5T_IEEE_F32LE;
    case ML_F64: return H5T_IEEE_F64LE;
    case ML_F16: return H5T_STD_U16LE;
    case ML_I32: return H5T_STD_I32LE;
    case ML_I64: return H5T_STD_I64LE;
    case ML_U8: return H5T_STD_U8LE;
    case ML_U16: return H5T_STD_U16LE;
    case ML_U32: return H5T_STD_U32LE;
    }
    return H5T_IEEE_F32LE;
}

/* Classify a dataset's file type as an ml_dtype (-1 if unsupported). */
static int ml_dtype_of(hid_t type) {
    H5T_class_t cls = H5Tget_class(type);
    size_t sz = H5Tget_size(type);
    if (cls == H5T_FLOAT) return sz == 4 ? ML_F32 : sz == 8 ? ML_F64 : -1;
    if (cls == H5T_INTEGER) {
        int sgn = H5Tget_sign(type) == H5T_SGN_2;
        if (sgn) return sz == 4 ? ML_I32 : sz == 8 ? ML_I64 : -1;
        return sz == 1 ? ML_U8 : sz == 2 ? ML_U16 : sz == 4 ? ML_U32 : -1;
    }
    return -1;
}

/* The innermost HDF5 error description (for one-line messages). */
static herr_t ml_h5_walk(unsigned n, const H5E_error2_t *e, void *data) {
    char *buf = data;
    if (n == 0 && e->desc) snprintf(buf, 256, "%s", e->desc);
    return 0;
}

static const char *ml_h5_err(char *buf) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, ml_h5_walk, buf);
    if (!buf[0]) snprintf(buf, 256, "HDF5 call failed");
    return buf;
}

#define ML_H5_FAIL(h, ...)                                                                         \
    do {                                                                                           \
        char ml_hb_[256], ml_msg_[700];                                                            \
        snprintf(ml_msg_, sizeof ml_msg_, __VA_ARGS__);                                            \
        return ML_FAIL(ML_ERR_HDF5, "%s: %s (%s)", (h)->path, ml_msg_, ml_h5_err(ml_hb_));         \
    } while (0)

static void ml_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static void ml_h5_free(ml_h5 *h) {
    if (!h) return;
    if (h->comm != MPI_COMM_NULL) MPI_Comm_free(&h->comm);
    if (h->writeback_fd >= 0) close(h->writeback_fd);
    if (h->raw_fd >= 0) close(h->raw_fd);
    if (h->map) munmap(h->map, h->map_bytes);
    ml_free(h->path);
    ml_free(h->tmp_path);
    ml_free(h->reserve_path);
    ml_free(h->format);
    ml_free(h);
}

/* Disk space kept free for flushing a file being written. HDF5 writes most
 * metadata only when the file is flushed or closed, and in HDF5 1.10 a flush
 * that fails cannot be retried ("slist already enabled?": every later flush
 * and close fails too) and a failed H5Fclose leaves a dangling file id that
 * crashes MPI_Finalize (exit 139). So a flush must not run out of room: rank
 * 0 reserves this much in a file beside the output (<tmp>.reserve) before
 * HDF5 creates or opens it for writing, and gives it back just before the
 * flush or close (ml_h5_release_reserve); an output's metadata is far smaller
 * (tens of KB for a checkpoint). Raw data that does not fit fails at its
 * write, which fails cleanly; then the file is truncated before it is closed
 * and deleted. A disk without this much room fails at create, before any
 * work is written. */
#define ML_H5_RESERVE (256 * 1024)

static void ml_h5_release_reserve(ml_h5 *h) {
    if (h->rank == 0 && h->reserve_path) unlink(h->reserve_path);
    ml_free(h->reserve_path);
    h->reserve_path = NULL;
}

/* Rank 0: create the reserve `<base>.reserve` (ML_OK or an error naming the
 * output); a stale one of a killed run is reused. */
static int ml_h5_take_reserve(ml_h5 *h, const char *base) {
    if (h->rank != 0) return ML_OK;
    size_t len = strlen(base) + 16;
    if (!(h->reserve_path = ml_malloc(len))) return ML_FAIL(ML_ERR_NOMEM, "out of memory");
    snprintf(h->reserve_path, len, "%s.reserve", base);
    int fd = open(h->reserve_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        err = posix_fallocate(fd, 0, ML_H5_RESERVE);
        close(fd);
    }
    if (err == 0) return ML_OK;
    if (fd >= 0) unlink(h->reserve_path);
    ml_free(h->reserve_path);
    h->reserve_path = NULL;
    if (fd < 0) return ML_OK; /* cannot create files here: H5Fcreate says why */
    return ML_FAIL(ML_ERR_IO, "%s: cannot write: %s (not even %d KB free to create it)", h->path, strerror(err),
                   ML_H5_RESERVE / 1024);
}

/* A file that will be deleted (a write or the flush failed on some rank;
 * every rank is here): give its space and the reserve back so that the
 * close below has room for the metadata it flushes. */
static void ml_h5_free_space(ml_h5 *h) {
    MPI_Barrier(h->comm);
    if (h->rank == 0 && h->tmp_path) (void)truncate(h->tmp_path, 0);
    ml_h5_release_reserve(h);
    MPI_Barrier(h->comm);
}

static int ml_h5_alloc(MPI_Comm comm, const char *path, ml_h5 **out) {
    ml_h5 *h = ml_calloc(1, sizeof *h);
    if (!h) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    h->file = H5I_INVALID_HID;
    h->comm = MPI_COMM_NULL;
    h->writeback_fd = -1;
    h->raw_fd = -1;
    if (MPI_Comm_dup(comm, &h->comm) != MPI_SUCCESS) {
        ml_h5_free(h);
        return ML_FAIL(ML_ERR_MPI, "%s: MPI_Comm_dup failed", path);
    }
    MPI_Comm_rank(h->comm, &h->rank);
    MPI_Comm_size(h->comm, &h->size);
    if (!(h->path = ml_strdup(path))) {
        ml_h5_free(h);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    *out = h;
    return ML_OK;
}

static hid_t ml_fapl(MPI_Comm comm) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return fapl;
    if (H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0) {
        H5Pclose(fapl);
        return H5I_INVALID_HID;
    }
    return fapl;
}

int ml_h5_create(MPI_Comm comm, const char *path, const char *format, int format_version, ml_h5 **out) {
    ml_h5_quiet();
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_alloc(comm, path, &h));
    int rc = ML_OK;
    long nonce = 0;
    if (h->rank == 0) nonce = (long)getpid() * 1000003L ^ (long)(ml_wtime() * 1e6);
    MPI_Bcast(&nonce, 1, MPI_LONG, 0, h->comm);
    size_t len = strlen(path) + 32;
    h->tmp_path = ml_malloc(len);
    h->format = ml_strdup(format);
    if (!h->tmp_path || !h->format) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    snprintf(h->tmp_path, len, "%s.tmp.%lx", path, (unsigned long)nonce & 0xffffffffUL);
    h->version = format_version;
    ML_CHECK_GOTO(ml_agree(h->comm, ml_h5_take_reserve(h, h->tmp_path)), fail);
    h->creating = 1;
    hid_t fapl = ml_fapl(h->comm);
    if (fapl >= 0) {
        h->file = H5Fcreate(h->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
        H5Pclose(fapl);
    }
    if (h->file < 0) {
        char hb[256];
        /* say why in file-system terms when we can */
        const char *slash = strrchr(path, '/');
        char dir[4096] = ".";
        if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        if (access(dir, W_OK) != 0) rc = ML_FAIL(ML_ERR_IO, "%s: cannot create file: %s: %s", path, dir, strerror(errno));
        else rc = ML_FAIL(ML_ERR_HDF5, "%s: cannot create file (%s)", path, ml_h5_err(hb));
        h->creating = 0;
        goto fail;
    }
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "format", format), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "format_version", format_version), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "mergelens_version", ML_VERSION_STRING), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "git_commit", ML_GIT_COMMIT), fail);
    rc = ml_agree(h->comm, rc);
    if (rc) goto fail;
    *out = h;
    return ML_OK;
fail:
    rc = ml_agree(h->comm, rc) ? ml_error_code() : rc;
    ml_h5_discard(&h);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

/* Open `h->path` with HDF5 and, on every rank, a raw descriptor of the same
 * file (same device and inode). Raw transfers and mappings read through that
 * descriptor, never by name: outputs are replaced by rename, so a file opened
 * by name later could be another version than the one HDF5 read the metadata
 * of. The raw descriptor is opened first and the path is stat'ed again after
 * H5Fopen: if the path still names the descriptor's inode, HDF5 opened that
 * inode too (a rename installs a new inode and never brings an old one back).
 * A file replaced in between is opened again, at most a few times. */
static int ml_h5_open_pinned(ml_h5 *h, unsigned mode) {
    const char *path = h->path;
    for (int attempt = 0;; attempt++) {
        int rc = ML_OK, moved = 0;
        h->raw_fd = open(path, (mode == H5F_ACC_RDWR ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (h->raw_fd < 0) rc = ML_FAIL(ML_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        ML_CHECK(ml_agree(h->comm, rc));
        hid_t fapl = ml_fapl(h->comm);
        if (fapl >= 0) {
            h->file = H5Fopen(path, mode, fapl);
            H5Pclose(fapl);
        }
        if (h->file < 0) {
            char hb[256];
            ml_h5_err(hb);
            rc = ML_FAIL(ML_ERR_FORMAT, "%s: not a readable HDF5 file (truncated or corrupt?): %s", path, hb);
        }
        ML_CHECK(ml_agree(h->comm, rc));
        struct stat by_fd, by_name;
        if (fstat(h->raw_fd, &by_fd) != 0 || stat(path, &by_name) != 0 || by_fd.st_dev != by_name.st_dev ||
            by_fd.st_ino != by_name.st_ino)
            moved = 1;
        MPI_Allreduce(MPI_IN_PLACE, &moved, 1, MPI_INT, MPI_MAX, h->comm);
        if (!moved) return ML_OK;
        H5Fclose(h->file);
        h->file = H5I_INVALID_HID;
        close(h->raw_fd);
        h->raw_fd = -1;
        if (attempt == 4)
            return ML_FAIL(ML_ERR_IO, "%s: the file was replaced while it was being opened (5 times); is another "
                                      "run writing it?", path);
    }
}

static int ml_h5_open_mode(MPI_Comm comm, const char *path, const char *expect_format, int min_version,
                           int max_version, unsigned mode, ml_h5 **out) {
    ml_h5_quiet();
    ml_h5 *h = NULL;
    ML_CHECK(ml_h5_alloc(comm, path, &h));
    int rc = ML_OK;
    /* existence check on rank 0, so every rank reports the same thing */
    int exists = 0, err = 0;
    if (h->rank == 0) {
        struct stat st;
        exists = stat(path, &st) == 0;
        err = errno;
        if (exists && S_ISDIR(st.st_mode)) exists = 2;
    }
    int info[2] = {exists, err};
    MPI_Bcast(info, 2, MPI_INT, 0, h->comm);
    if (!info[0]) ML_FAIL_GOTO(fail, ML_ERR_IO, "%s: cannot open: %s", path, strerror(info[1]));
    if (info[0] == 2) ML_FAIL_GOTO(fail, ML_ERR_IO, "%s: is a directory, expected an HDF5 file", path);
    ML_CHECK_GOTO(ml_h5_open_pinned(h, mode), fail);
    if (mode == H5F_ACC_RDWR) { /* <path>.tmp.reserve: a temporary by its name */
        char base[4096];
        snprintf(base, sizeof base, "%s.tmp", path);
        ML_CHECK_GOTO(ml_agree(h->comm, ml_h5_take_reserve(h, base)), fail);
    }
    if (H5Aexists_by_name(h->file, "/", "format", H5P_DEFAULT) <= 0)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: not a mergelens file (no 'format' attribute)%s%s", path,
                     expect_format ? ", expected " : "", expect_format ? expect_format : "");
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "format", &h->format), fail);
    if (expect_format && strcmp(h->format, expect_format) != 0)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: is a '%s' file, expected '%s'", path, h->format, expect_format);
    int64_t v = 0;
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "format_version", &v), fail);
    h->version = (int)v;
    if (v < min_version || v > max_version)
        ML_FAIL_GOTO(fail, ML_ERR_FORMAT, "%s: '%s' format_version %lld is not supported (this build reads %d..%d)",
                     path, h->format, (long long)v, min_version, max_version);
fail:
    rc = ml_agree(h->comm, rc);
    if (rc) {
        if (h->file >= 0) H5Fclose(h->file);
        ml_h5_release_reserve(h);
        ml_h5_free(h);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = h;
    return ML_OK;
}

int ml_h5_open(MPI_Comm comm, const char *path, const char *expect_format, int min_version, int max_version,
               ml_h5 **out) {
    ML_CHECK(ml_h5_open_mode(comm, path, expect_format, min_version, max_version, H5F_ACC_RDONLY, out));
    (*out)->readonly = 1;
    return ML_OK;
}

int ml_h5_open_rw(MPI_Comm comm, const char *path, const char *expect_format, int min_version, int max_version,
                  ml_h5 **out) {
    return ml_h5_open_mode(comm, path, expect_format, min_version, max_version, H5F_ACC_RDWR, out);
}

int ml_h5_close(ml_h5 **ph) {
    if (!ph || !*ph) return ML_OK;
    ml_h5 *h = *ph;
    int rc = ML_OK;
    if (h->file >= 0) {
        if (h->reserve_path || !h->readonly) { /* room for the flush (see ML_H5_RESERVE) */
            ml_h5_release_reserve(h);
            MPI_Barrier(h->comm);
        }
        if (h->creating && H5Fflush(h->file, H5F_SCOPE_GLOBAL) < 0) {
            char hb[256];
            rc = ML_FAIL(ML_ERR_HDF5, "%s: flush failed (%s)", h->path, ml_h5_err(hb));
        }
        if (h->creating) rc = ml_agree(h->comm, rc);
        /* e.g. the disk is full: the file will be deleted, so free its
         * space first and let the close below succeed (see ML_H5_RESERVE) */
        if (rc != ML_OK) ml_h5_free_space(h);
        if (H5Fclose(h->file) < 0 && rc == ML_OK) {
            char hb[256];
            rc = ML_FAIL(ML_ERR_HDF5, "%s: close failed (%s)", h->path, ml_h5_err(hb));
        }
        h->file = H5I_INVALID_HID;
    }
    rc = ml_agree(h->comm, rc);
    ml_h5_release_reserve(h);
    if (h->creating) {
        int rrc = ML_OK;
        if (h->rank == 0) {
            if (rc != ML_OK) unlink(h->tmp_path);
            else if (rename(h->tmp_path, h->path) != 0)
                rrc = ML_FAIL(ML_ERR_IO, "%s: cannot rename from %s: %s", h->path, h->tmp_path, strerror(errno));
        }
        if (rc == ML_OK) rc = ml_agree(h->comm, rrc);
    }
    ml_h5_free(h);
    *ph = NULL;
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_h5_flush(ml_h5 *h) {
    int rc = ML_OK;
    ml_h5_release_reserve(h); /* room for the flush (see ML_H5_RESERVE), taken again after it */
    MPI_Barrier(h->comm);
    if (H5Fflush(h->file, H5F_SCOPE_GLOBAL) < 0) {
        char hb[256];
        rc = ML_FAIL(ML_ERR_HDF5, "%s: flush failed (%s)", h->path, ml_h5_err(hb));
    }
    ML_CHECK(ml_agree(h->comm, rc));
    if (!h->readonly) {
        char base[4096];
        snprintf(base, sizeof base, "%s%s", h->creating ? h->tmp_path : h->path, h->creating ? "" : ".tmp");
        rc = ml_h5_take_reserve(h, base);
    }
    return ml_agree(h->comm, rc);
}

void ml_h5_discard(ml_h5 **ph) {
    if (!ph || !*ph) return;
    ml_h5 *h = *ph;
    if (h->file >= 0) {
        /* The file is thrown away: free its space and the reserve first, so
         * that closing it (which flushes) cannot fail for lack of room after
         * a write failed with ENOSPC (see ML_H5_RESERVE). */
        if (h->creating) ml_h5_free_space(h);
        else if (!h->readonly) { /* written in place: kept, but its close needs room too */
            ml_h5_release_reserve(h);
            MPI_Barrier(h->comm);
        }
        H5Fclose(h->file);
    }
    h->file = H5I_INVALID_HID;
    MPI_Barrier(h->comm);
    ml_h5_release_reserve(h);
    if (h->creating && h->rank == 0 && h->tmp_path) unlink(h->tmp_path);
    ml_h5_free(h);
    *ph = NULL;
}

void ml_h5_start_writeback(ml_h5 *h) {
    if (!h || !h->creating || !h->tmp_path) return;
    if (h->raw_fd < 0 && h->writeback_fd < 0) h->writeback_fd = open(h->tmp_path, O_RDONLY | O_CLOEXEC);
    int fd = h->raw_fd >= 0 ? h->raw_fd : h->writeback_fd;
    if (fd >= 0) (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

hid_t ml_h5_id(const ml_h5 *h) { return h->file; }
const char *ml_h5_path(const ml_h5 *h) { return h->path; }
MPI_Comm ml_h5_comm(const ml_h5 *h) { return h->comm; }
const char *ml_h5_format(const ml_h5 *h) { return h->format; }
int ml_h5_format_version(const ml_h5 *h) { return h->version; }

int ml_h5_exists(ml_h5 *h, const char *path) {
    if (!strcmp(path, "/")) return 1;
    /* check each prefix: H5Lexists fails if an intermediate group is missing */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (H5Lexists(h->file, buf, H5P_DEFAULT) <= 0) return 0;
            if (c == '\0') return 1;
            *p = c;
        }
    }
}

int ml_h5_mkgroup(ml_h5 *h, const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (H5Lexists(h->file, buf, H5P_DEFAULT) <= 0) {
                hid_t g = H5Gcreate2(h->file, buf, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                if (g < 0) ML_H5_FAIL(h, "cannot create group '%s'", buf);
                H5Gclose(g);
            }
            if (c == '\0') return ML_OK;
            *p = c;
        }
    }
}

/* Make the parent groups of a dataset path. */
static int ml_h5_parents(ml_h5 *h, const char *name) {
    const char *slash = strrchr(name, '/');
    if (!slash || slash == name) return ML_OK;
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s", (int)(slash - name), name);
    return ml_h5_mkgroup(h, buf);
}

int ml_h5_create_dataset(ml_h5 *h, const char *name, ml_dtype type, int rank, const hsize_t *dims,
                         const ml_h5_layout *layout) {
    if (rank < 1 || rank > ML_H5_MAX_RANK)
        return ML_FAIL(ML_ERR_ARG, "%s: dataset '%s': rank %d not in 1..%d", h->path, name, rank, ML_H5_MAX_RANK);
    ML_CHECK(ml_h5_parents(h, name));
    hsize_t maxdims[ML_H5_MAX_RANK];
    for (int i = 0; i < rank; i++) maxdims[i] = dims[i];
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int chunked = layout && (layout->chunk_rows > 0 || layout->compress > 0 || layout->extendable);
    if (layout && layout->extendable) maxdims[0] = H5S_UNLIMITED;
    if (chunked) {
        hsize_t chunk[ML_H5_MAX_RANK];
        chunk[0] = layout->chunk_rows > 0 ? layout->chunk_rows : 1024;
        if (!layout->extendable && chunk[0] > dims[0] && dims[0] > 0) chunk[0] = dims[0];
        for (int i = 1; i < rank; i++) chunk[i] = dims[i] > 0 ? dims[i] : 1;
        H5Pset_chunk(dcpl, rank, chunk);
        if (layout->compress > 0) H5Pset_deflate(dcpl, (unsigned)layout->compress);
    }
    /* allocate early: required for parallel writes to chunked datasets */
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t space = H5Screate_simple(rank, dims, maxdims);
    hid_t ds = H5Dcreate2(h->file, name, ml_file_type(type), space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Sclose(space);
    H5Pclose(dcpl);
    if (ds < 0) ML_H5_FAIL(h, "cannot create dataset '%s'", name);
    H5Dclose(ds);
    if (type == ML_F16) ML_CHECK(ml_h5_set_attr_str(h, name, "encoding", "float16"));
    return ML_OK;
}

int ml_h5_extend(ml_h5 *h, const char *name, hsize_t new_rows) {
    hid_t ds = H5Dopen2(h->file, name, H5P_DEFAULT);
    if (ds < 0) ML_H5_FAIL(h, "no dataset '%s'", name);
    hsize_t dims[ML_H5_MAX_RANK];
    hid_t sp = H5Dget_space(ds);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    dims[0] = new_rows;
    herr_t e = H5Dset_extent(ds, dims);
    H5Dclose(ds);
    if (e < 0) ML_H5_FAIL(h, "cannot extend dataset '%s' to %llu rows", name, (unsigned long long)new_rows);
    return ML_OK;
}

int ml_h5_shape(ml_h5 *h, const char *name, int *rank, hsize_t *dims, ml_dtype *type) {
    if (!ml_h5_exists(h, name)) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no dataset '%s'", h->path, name);
    hid_t ds = H5Dopen2(h->file, name, H5P_DEFAULT);
    if (ds < 0) ML_H5_FAIL(h, "'%s' is not a dataset", name);
    hid_t sp = H5Dget_space(ds), ft = H5Dget_type(ds);
    int r = H5Sget_simple_extent_ndims(sp);
    int t = ml_dtype_of(ft);
    if (r >= 0 && r <= ML_H5_MAX_RANK) H5Sget_simple_extent_dims(sp, dims, NULL);
    int f16 = 0;
    if (t == ML_U16 && H5Aexists(ds, "encoding") > 0) f16 = 1;
    H5Tclose(ft);
    H5Sclose(sp);
    H5Dclose(ds);
    if (r < 0 || r > ML_H5_MAX_RANK) return ML_FAIL(ML_ERR_FORMAT, "%s: dataset '%s' has unsupported rank", h->path, name);
    if (t < 0) return ML_FAIL(ML_ERR_FORMAT, "%s: dataset '%s' has an unsupported element type", h->path, name);
    if (f16) {
        char *enc = NULL;
        ML_CHECK(ml_h5_get_attr_str(h, name, "encoding", &enc));
        if (!strcmp(enc, "float16")) t = ML_F16;
        ml_free(enc);
    }
    *rank = r;
    if (type) *type = (ml_dtype)t;
    return ML_OK;
}

/* The file offset of dataset ds when a raw transfer of `type` is possible
 * (contiguous, allocated, no external storage, file type == memory type), else -1. */
static int64_t ml_raw_offset(hid_t ds, ml_dtype type) {
    int64_t off = -1;
    hid_t dcpl = H5Dget_create_plist(ds), ftype = H5Dget_type(ds);
    if (dcpl >= 0 && ftype >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS && H5Pget_external_count(dcpl) == 0 &&
        H5Tequal(ftype, ml_mem_type(type)) > 0) {
        haddr_t a = H5Dget_offset(ds);
        if (a != HADDR_UNDEF) off = (int64_t)a;
    }
    if (ftype >= 0) H5Tclose(ftype);
    if (dcpl >= 0) H5Pclose(dcpl);
    return off;
}

/* pread/pwrite all bytes at off (retrying short transfers). */
static int ml_raw_open(ml_h5 *h, int write);
static int ml_raw_transfer(ml_h5 *h, const char *name, int write, int64_t off, void *data, size_t bytes) {
    ML_CHECK(ml_raw_open(h, write));
    char *p = data;
    size_t done = 0;
    ml_raw_transfers++;
    while (done < bytes) {
        size_t n = bytes - done > ((size_t)1 << 30) ? (size_t)1 << 30 : bytes - done;
        ssize_t k = write ? pwrite(h->raw_fd, p + done, n, (off_t)(off + (int64_t)done))
                          : pread(h->raw_fd, p + done, n, (off_t)(off + (int64_t)done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0)
            return ML_FAIL(ML_ERR_IO, "%s: cannot %s dataset '%s': %s", h->path, write ? "write" : "read", name,
                           strerror(errno));
        if (k == 0)
            return ML_FAIL(ML_ERR_FORMAT, "%s: dataset '%s' ends past the end of the file (truncated?)", h->path, name);
        done += (size_t)k;
    }
    return ML_OK;
}

static int ml_raw_open(ml_h5 *h, int write) {
    if (h->raw_fd >= 0) return ML_OK;
    if (!h->creating) /* opened files keep the descriptor of ml_h5_open_pinned: never reopen by name */
        return ML_FAIL(ML_ERR_INTERNAL, "%s: no raw descriptor for %s", h->path, write ? "writes" : "reads");
    h->raw_fd = open(h->tmp_path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (h->raw_fd < 0)
        return ML_FAIL(ML_ERR_IO, "%s: cannot open for raw %s: %s", h->path, write ? "writes" : "reads", strerror(errno));
    return ML_OK;
}

/* Offset and byte count of dataset `name` when it can take raw transfers of `type`. */
static int ml_raw_extent(ml_h5 *h, const char *name, ml_dtype type, int64_t *offset, int64_t *bytes) {
    int rank = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype ftype;
    ML_CHECK(ml_h5_shape(h, name, &rank, dims, &ftype));
    hsize_t elements = 1;
    for (int i = 0; i < rank; i++) elements *= dims[i];
    hid_t ds = H5Dopen2(h->file, name, H5P_DEFAULT);
    *offset = ds >= 0 && elements > 0 ? ml_raw_offset(ds, type) : -1;
    *bytes = (int64_t)(elements * ml_dtype_size(type));
    if (ds >= 0) H5Dclose(ds);
    return ML_OK;
}

int ml_h5_map_dataset(ml_h5 *h, const char *name, ml_dtype type, const void **data, int64_t *bytes) {
    *data = NULL;
    if (!ml_raw_io_on() || !h->readonly) return ML_ERR_UNSUPPORTED;
    int64_t off = -1;
    ML_CHECK(ml_raw_extent(h, name, type, &off, bytes));
    if (off < 0) return ML_ERR_UNSUPPORTED;
    if (!h->map) {
        ML_CHECK(ml_raw_open(h, 0));
        struct stat st;
        if (fstat(h->raw_fd, &st) != 0) return ML_FAIL(ML_ERR_IO, "%s: cannot stat: %s", h->path, strerror(errno));
        void *m = st.st_size > 0 ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, h->raw_fd, 0) : MAP_FAILED;
        if (m == MAP_FAILED) return ML_ERR_UNSUPPORTED; /* e.g. a file system without mmap: read instead */
        h->map = m;
        h->map_bytes = (size_t)st.st_size;
    }
    if (off + *bytes > (int64_t)h->map_bytes)
        return ML_FAIL(ML_ERR_FORMAT, "%s: dataset '%s' ends at byte %lld, past the end of the file (%zu bytes; truncated?)",
                       h->path, name, (long long)(off + *bytes), h->map_bytes);
    *data = (const char *)h->map + off;
    return ML_OK;
}

int ml_h5_raw_target_get(ml_h5 *h, const char *name, ml_dtype type, ml_h5_raw_target *t) {
    memset(t, 0, sizeof *t);
    t->fd = -1;
    if (!ml_raw_io_on() || !h->creating) return ML_ERR_UNSUPPORTED;
    ML_CHECK(ml_raw_extent(h, name, type, &t->offset, &t->bytes));
    if (t->offset < 0) return ML_ERR_UNSUPPORTED;
    ML_CHECK(ml_raw_open(h, 1));
    t->fd = h->raw_fd;
    return ML_OK;
}

int ml_h5_raw_pwrite(const ml_h5_raw_target *t, const void *data, int start_writeback) {
    const char *p = data;
    int64_t done = 0;
    while (done < t->bytes) {
        int64_t left = t->bytes - done;
        size_t n = left > ((int64_t)1 << 30) ? (size_t)1 << 30 : (size_t)left;
        ssize_t k = pwrite(t->fd, p + done, n, (off_t)(t->offset + done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return errno;
        if (k == 0) return EIO;
        done += k;
    }
    if (start_writeback) (void)sync_file_range(t->fd, t->offset, t->bytes, SYNC_FILE_RANGE_WRITE);
    return 0;
}

/* Row-range transfer shared by reads and writes. */
static int ml_h5_rows(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count, void *data,
                      int write, int collective) {
    int rank = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype ftype;
    ML_CHECK(ml_h5_shape(h, name, &rank, dims, &ftype));
    if (ftype != type && !(ftype == ML_F16 && type == ML_U16) && !(ftype == ML_U16 && type == ML_F16))
        return ML_FAIL(ML_ERR_FORMAT, "%s: dataset '%s' holds %s, caller expects %s", h->path, name,
                       ml_dtype_name(ftype), ml_dtype_name(type));
    if (row_start + row_count > dims[0])
        return ML_FAIL(ML_ERR_SHAPE, "%s: dataset '%s': rows [%llu, %llu) outside its %llu rows", h->path, name,
                       (unsigned long long)row_start, (unsigned long long)(row_start + row_count),
                       (unsigned long long)dims[0]);
    hsize_t elements = 1;
    for (int i = 0; i < rank; i++) elements *= dims[i];
    if (elements == 0) return ML_OK; /* an empty dataset: nothing to move (every rank sees the same shape) */
    hid_t ds = H5Dopen2(h->file, name, H5P_DEFAULT);
    /* the raw path never depends on row_count, so ranks of a collective call decide alike */
    const int raw = ml_raw_io_on() && ds >= 0 &&
                    (write ? h->creating && (!collective || h->size == 1) : h->readonly);
    const int64_t raw_off = raw ? ml_raw_offset(ds, type) : -1;
    if (raw_off >= 0) {
        size_t row_bytes = (size_t)(elements / dims[0]) * ml_dtype_size(type);
        int rc = row_count == 0 ? ML_OK
                                : ml_raw_transfer(h, name, write, raw_off + (int64_t)(row_start * row_bytes), data,
                                                  (size_t)row_count * row_bytes);
        H5Dclose(ds);
        return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    hid_t fsp = H5Dget_space(ds);
    hsize_t start[ML_H5_MAX_RANK] = {0}, count[ML_H5_MAX_RANK];
    start[0] = row_start;
    count[0] = row_count;
    for (int i = 1; i < rank; i++) count[i] = dims[i];
    hid_t msp = H5Screate_simple(rank, count, NULL);
    if (row_count == 0) {
        H5Sselect_none(fsp);
        H5Sselect_none(msp);
    } else {
        H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, NULL, count, NULL);
    }
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (collective) H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    herr_t e = write ? H5Dwrite(ds, ml_mem_type(type), msp, fsp, dxpl, data)
                     : H5Dread(ds, ml_mem_type(type), msp, fsp, dxpl, data);
    H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
    if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0) ml_last_io_mode = (int)mode;
    H5Pclose(dxpl);
    H5Sclose(msp);
    H5Sclose(fsp);
    H5Dclose(ds);
    if (e < 0)
        ML_H5_FAIL(h, "cannot %s rows [%llu, %llu) of '%s'", write ? "write" : "read", (unsigned long long)row_start,
                   (unsigned long long)(row_start + row_count), name);
    return ML_OK;
}

int ml_h5_write_rows(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                     const void *data) {
    /* collective: a write that failed on one rank (e.g. a full disk under its
     * rows) is known to every rank before the caller's next collective */
    return ml_agree(h->comm, ml_h5_rows(h, name, type, row_start, row_count, (void *)data, 1, 1));
}

int ml_h5_write_rows_independent(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                                 const void *data) {
    return ml_h5_rows(h, name, type, row_start, row_count, (void *)data, 1, 0);
}

int ml_h5_read_rows(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count, void *data) {
    return ml_h5_rows(h, name, type, row_start, row_count, data, 0, 1);
}

int ml_h5_read_rows_independent(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                                void *data) {
    return ml_h5_rows(h, name, type, row_start, row_count, data, 0, 0);
}

int ml_h5_write_tensor(ml_h5 *h, const char *name, ml_dtype type, int rank, const hsize_t *dims, const void *data) {
    ML_CHECK(ml_h5_create_dataset(h, name, type, rank, dims, NULL));
    return ml_h5_write_rows(h, name, type, 0, h->rank == 0 ? dims[0] : 0, data);
}

int ml_h5_read_tensor(ml_h5 *h, const char *name, ml_dtype type, int rank_expected, const hsize_t *dims_expected,
                      void *data) {
    int rank = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ML_CHECK(ml_h5_shape(h, name, &rank, dims, NULL));
    if (rank_expected > 0) {
        int same = rank == rank_expected;
        for (int i = 0; same && i < rank; i++) same = dims[i] == dims_expected[i];
        if (!same) {
            char a[128] = "", b[128] = "";
            for (int i = 0; i < rank; i++)
                snprintf(a + strlen(a), sizeof a - strlen(a), "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
            for (int i = 0; i < rank_expected; i++)
                snprintf(b + strlen(b), sizeof b - strlen(b), "%s%llu", i ? ", " : "",
                         (unsigned long long)dims_expected[i]);
            return ML_FAIL(ML_ERR_SHAPE, "%s: tensor '%s' has shape [%s], expected [%s]", h->path, name, a, b);
        }
    }
    return ml_h5_read_rows(h, name, type, 0, dims[0], data);
}

/* ---- attributes -------------------------------------------------------------*/
static hid_t ml_attr_target(ml_h5 *h, const char *obj) {
    return H5Oopen(h->file, obj, H5P_DEFAULT);
}

static int ml_attr_write(ml_h5 *h, const char *obj, const char *attr, hid_t ftype, hid_t mtype, const void *v) {
    hid_t o = ml_attr_target(h, obj);
    if (o < 0) ML_H5_FAIL(h, "no object '%s' for attribute '%s'", obj, attr);
    if (H5Aexists(o, attr) > 0) H5Adelete(o, attr);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, attr, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = a >= 0 ? H5Awrite(a, mtype, v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Oclose(o);
    if (e < 0) ML_H5_FAIL(h, "cannot write attribute '%s' on '%s'", attr, obj);
    return ML_OK;
}

int ml_h5_set_attr_str(ml_h5 *h, const char *obj, const char *attr, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = ml_attr_write(h, obj, attr, t, t, &value);
    H5Tclose(t);
    return rc;
}

int ml_h5_set_attr_int(ml_h5 *h, const char *obj, const char *attr, int64_t value) {
    return ml_attr_write(h, obj, attr, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

int ml_h5_set_attr_double(ml_h5 *h, const char *obj, const char *attr, double value) {
    return ml_attr_write(h, obj, attr, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

static int ml_attr_open(ml_h5 *h, const char *obj, const char *attr, hid_t *o, hid_t *a) {
    *o = ml_attr_target(h, obj);
    if (*o < 0) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no object '%s'", h->path, obj);
    if (H5Aexists(*o, attr) <= 0) {
        H5Oclose(*o);
        return ML_FAIL(ML_ERR_NOTFOUND, "%s: '%s' has no attribute '%s'", h->path, obj, attr);
    }
    *a = H5Aopen(*o, attr, H5P_DEFAULT);
    return ML_OK;
}

int ml_h5_get_attr_str(ml_h5 *h, const char *obj, const char *attr, char **value) {
    hid_t o, a;
    ML_CHECK(ml_attr_open(h, obj, attr, &o, &a));
    hid_t ft = H5Aget_type(a);
    int rc = ML_OK;
    if (H5Tget_class(ft) != H5T_STRING) {
        rc = ML_FAIL(ML_ERR_FORMAT, "%s: attribute '%s' of '%s' is not a string", h->path, attr, obj);
    } else if (H5Tis_variable_str(ft) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(ft));
        char *s = NULL;
        if (H5Aread(a, mt, &s) < 0) rc = ML_FAIL(ML_ERR_HDF5, "%s: cannot read attribute '%s'", h->path, attr);
        else {
            *value = ml_strdup(s ? s : "");
            if (!*value) rc = ML_ERR_NOMEM;
            H5free_memory(s);
        }
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(ft);
        char *s = ml_calloc(n + 1, 1);
        if (!s) rc = ML_ERR_NOMEM;
        else {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, n);
            if (H5Aread(a, mt, s) < 0) {
                ml_free(s);
                rc = ML_FAIL(ML_ERR_HDF5, "%s: cannot read attribute '%s'", h->path, attr);
            } else *value = s;
            H5Tclose(mt);
        }
    }
    H5Tclose(ft);
    H5Aclose(a);
    H5Oclose(o);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

static int ml_attr_read_num(ml_h5 *h, const char *obj, const char *attr, hid_t mtype, void *out) {
    hid_t o, a;
    ML_CHECK(ml_attr_open(h, obj, attr, &o, &a));
    hid_t ft = H5Aget_type(a);
    H5T_class_t cls = H5Tget_class(ft);
    hid_t sp = H5Aget_space(a);
    hssize_t npts = H5Sget_simple_extent_npoints(sp);
    herr_t e = (cls == H5T_INTEGER || cls == H5T_FLOAT) && npts == 1 ? H5Aread(a, mtype, out) : -1;
    H5Sclose(sp);
    H5Tclose(ft);
    H5Aclose(a);
    H5Oclose(o);
    if (e < 0) return ML_FAIL(ML_ERR_FORMAT, "%s: attribute '%s' of '%s' is not a number", h->path, attr, obj);
    return ML_OK;
}

int ml_h5_get_attr_str_optional(ml_h5 *h, const char *obj, const char *attr, char **value) {
    *value = NULL;
    int rc = ml_h5_get_attr_str(h, obj, attr, value);
    if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        return ML_OK;
    }
    return rc;
}

int ml_h5_get_attr_int(ml_h5 *h, const char *obj, const char *attr, int64_t *value) {
    return ml_attr_read_num(h, obj, attr, H5T_NATIVE_INT64, value);
}

int ml_h5_get_attr_double(ml_h5 *h, const char *obj, const char *attr, double *value) {
    return ml_attr_read_num(h, obj, attr, H5T_NATIVE_DOUBLE, value);
}

/* Strings as scalar fixed-length datasets (variable-length data cannot be
 * written with parallel HDF5). h5py reads them as bytes. */
int ml_h5_write_string(ml_h5 *h, const char *name, const char *value) {
    ML_CHECK(ml_h5_parents(h, name));
    size_t n = strlen(value);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, n > 0 ? n : 1);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(h->file, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = -1;
    if (ds >= 0) {
        hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
        hid_t fsp = H5Dget_space(ds), msp = H5Screate(H5S_SCALAR);
        if (h->rank != 0) {
            H5Sselect_none(fsp);
            H5Sselect_none(msp);
        }
        e = H5Dwrite(ds, t, msp, fsp, dxpl, n > 0 ? value : " ");
        H5Sclose(fsp);
        H5Sclose(msp);
        H5Pclose(dxpl);
        H5Dclose(ds);
    }
    H5Sclose(sp);
    H5Tclose(t);
    if (e < 0) ML_H5_FAIL(h, "cannot write string dataset '%s'", name);
    return ML_OK;
}

int ml_h5_read_string(ml_h5 *h, const char *name, char **value) {
    if (!ml_h5_exists(h, name)) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no dataset '%s'", h->path, name);
    hid_t ds = H5Dopen2(h->file, name, H5P_DEFAULT);
    hid_t ft = ds >= 0 ? H5Dget_type(ds) : -1;
    int rc = ML_OK;
    if (ft < 0 || H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) > 0) {
        rc = ML_FAIL(ML_ERR_FORMAT, "%s: '%s' is not a fixed-length string dataset", h->path, name);
    } else {
        size_t n = H5Tget_size(ft);
        char *s = ml_calloc(n + 1, 1);
        if (!s) rc = ML_ERR_NOMEM;
        else if (H5Dread(ds, ft, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) < 0) {
            ml_free(s);
            rc = ML_FAIL(ML_ERR_HDF5, "%s: cannot read '%s'", h->path, name);
        } else *value = s;
    }
    if (ft >= 0) H5Tclose(ft);
    if (ds >= 0) H5Dclose(ds);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

/* ---- listing ---------------------------------------------------------------*/
typedef struct {
    char **names;
    int n, cap, failed;
} ml_namelist;

static int ml_namelist_add(ml_namelist *l, const char *name) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **nn = ml_realloc(l->names, sizeof *nn * (size_t)cap);
        if (!nn) return -1;
        l->names = nn;
        l->cap = cap;
    }
    if (!(l->names[l->n] = ml_strdup(name))) return -1;
    l->n++;
    return 0;
}

static herr_t ml_list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)g;
    (void)info;
    return ml_namelist_add(data, name) ? -1 : 0;
}

static herr_t ml_visit_cb(hid_t o, const char *name, const H5O_info_t *info, void *data) {
    (void)o;
    if (info->type != H5O_TYPE_DATASET) return 0;
    return ml_namelist_add(data, name) ? -1 : 0;
}

void ml_h5_free_names(char **names, int count) {
    for (int i = 0; names && i < count; i++) ml_free(names[i]);
    ml_free(names);
}

int ml_h5_list(ml_h5 *h, const char *group, int recursive, char ***names, int *count) {
    if (!ml_h5_exists(h, group)) return ML_FAIL(ML_ERR_NOTFOUND, "%s: no group '%s'", h->path, group);
    hid_t g = H5Gopen2(h->file, group, H5P_DEFAULT);
    if (g < 0) ML_H5_FAIL(h, "'%s' is not a group", group);
    ml_namelist l = {0};
    herr_t e;
    if (recursive) e = H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, ml_visit_cb, &l);
    else {
        hsize_t idx = 0;
        e = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, ml_list_cb, &l);
    }
    H5Gclose(g);
    if (e < 0) {
        ml_h5_free_names(l.names, l.n);
        return ML_FAIL(ML_ERR_HDF5, "%s: cannot list group '%s'", h->path, group);
    }
    *names = l.names;
    *count = l.n;
    return ML_OK;
}

int ml_h5_write_profile(ml_h5 *h, const char *group) {
    ml_prof_stat *st = NULL;
    int n = 0, rc = ML_OK;
    ML_CHECK(ml_prof_gather(h->comm, &st, &n));
    double *cols = ml_malloc(sizeof(double) * (size_t)(n > 0 ? n : 1) * 6);
    char *names = ml_calloc((size_t)(n > 0 ? n : 1), 48);
    if (!cols || !names) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    static const char *cn[] = {"count", "seconds_min", "seconds_max", "seconds_mean", "flops", "bytes"};
    for (int i = 0; i < n; i++) {
        double v[6] = {(double)st[i].count, st[i].seconds_min, st[i].seconds_max, st[i].seconds_mean, st[i].flops,
                       st[i].bytes};
        for (int c = 0; c < 6; c++) cols[c * n + i] = v[c];
        memcpy(names + 48 * i, st[i].name, 48);
    }
    ML_CHECK_GOTO(ml_h5_mkgroup(h, group), done);
    if (n == 0) goto done;
    char path[256];
    hsize_t dims[1] = {(hsize_t)n};
    for (int c = 0; c < 6; c++) {
        snprintf(path, sizeof path, "%s/%s", group, cn[c]);
        ML_CHECK_GOTO(ml_h5_write_tensor(h, path, ML_F64, 1, dims, cols + c * n), done);
    }
    /* event names as one newline-separated string (fixed-length, parallel-safe) */
    {
        size_t len = 0;
        for (int i = 0; i < n; i++) len += strlen(st[i].name) + 1;
        char *joined = ml_calloc(len + 1, 1);
        if (!joined) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        for (int i = 0; i < n; i++) {
            strcat(joined, st[i].name);
            if (i + 1 < n) strcat(joined, "\n");
        }
        snprintf(path, sizeof path, "%s/names", group);
        rc = ml_h5_write_string(h, path, joined);
        ml_free(joined);
    }
done:
    ml_free(cols);
    ml_free(names);
    ml_free(st);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_mkdir_parent(MPI_Comm comm, const char *path) {
    int rank, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    const char *slash = strrchr(path, '/');
    if (rank == 0 && slash && slash != path) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        rc = ml_mkdirs(dir);
    }
    return ml_agree(comm, rc);
}
