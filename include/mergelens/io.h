/* mergelens io: the parallel HDF5 layer.
 *
 * Every file mergelens writes carries root attributes `format` (e.g.
 * "mergelens.checkpoint") and `format_version` (int), validated on open.
 * Files are created under a temporary name (PATH.tmp.<nonce>) and renamed to
 * PATH only after a successful collective close, so an interrupted job never
 * leaves a file that looks complete.
 *
 * All metadata operations are collective: every rank of the handle's
 * communicator calls them with the same arguments. Row-range writes and reads
 * use collective MPI-IO transfers; a rank with nothing to do passes count 0.
 * Use MPI_COMM_SELF for serial (single-process) files.
 */
#ifndef MERGELENS_IO_H
#define MERGELENS_IO_H

#include <hdf5.h>
#include <stdint.h>

#include "mergelens/core.h"

typedef enum { ML_F32 = 0, ML_F64, ML_F16, ML_I32, ML_I64, ML_U8, ML_U16, ML_U32 } ml_dtype;
size_t ml_dtype_size(ml_dtype t);
const char *ml_dtype_name(ml_dtype t);

#define ML_H5_MAX_RANK 8

typedef struct ml_h5 ml_h5;

/* Create a new file (collective). It is written at a temporary name and
 * becomes `path` at ml_h5_close(). An existing `path` is left untouched
 * until that rename. */
int ml_h5_create(MPI_Comm comm, const char *path, const char *format, int format_version, ml_h5 **out);
/* Open an existing file read-only (collective) and validate it: it must be
 * HDF5, carry `format` == expect_format (NULL accepts any mergelens format)
 * and min_version <= format_version <= max_version. */
int ml_h5_open(MPI_Comm comm, const char *path, const char *expect_format, int min_version, int max_version,
               ml_h5 **out);
/* Open an existing file read-write (collective), validated like ml_h5_open;
 * writes go to the file in place (used for appending to experiment.h5). */
int ml_h5_open_rw(MPI_Comm comm, const char *path, const char *expect_format, int min_version, int max_version,
                  ml_h5 **out);
/* Collective close. For created files: flush, close, then rename the
 * temporary file to its final path. Failure of any rank fails all ranks.
 * Sets *h = NULL; tolerates NULL. */
/* Advisory, local: start the kernel's write-back of what this rank has written so far to a file
 * being created, so the flush in ml_h5_close overlaps with later work (no-op for opened files or
 * where the page cache does not support it). */
void ml_h5_start_writeback(ml_h5 *h);
int ml_h5_close(ml_h5 **h);
/* Collective: hand everything written so far (data and metadata) to the
 * operating system, so that it survives the death of the process. */
int ml_h5_flush(ml_h5 *h);
/* Collective: close and delete a file being created (on error paths).
 * Tolerates NULL. Never fails (errors are logged at debug level). */
void ml_h5_discard(ml_h5 **h);

/* Raw transfers (default on; ML_H5_RAW=0 turns them off): row ranges of
 * contiguous datasets whose file type is the memory type are read from files
 * opened read-only, and written by independent (or serial-handle) writes to
 * files being created, with pread/pwrite at the dataset's offset rather than
 * through MPI-IO. Same bytes either way; testing switch: */
void ml_h5_set_raw_io(int on);
int64_t ml_h5_raw_transfer_count(void); /* raw transfers made by this process so far */
/* Zero-copy reads of a file opened with ml_h5_open (local, not collective):
 * *data points at contiguous dataset `name` (*bytes long) inside a read-only
 * mapping of the file, valid until ml_h5_close. Returns ML_ERR_UNSUPPORTED,
 * without setting an error message, when the dataset cannot be mapped
 * (chunked, not of `type`, raw transfers off, opened read-write): read it
 * with ml_h5_read_rows then. A dataset past the end of the file is an error. */
int ml_h5_map_dataset(ml_h5 *h, const char *name, ml_dtype type, const void **data, int64_t *bytes);
/* Raw writes from any thread. Resolve the target on the thread that makes the
 * HDF5 calls (local; ML_ERR_UNSUPPORTED, without a message, when the dataset
 * of a file being created cannot take raw writes); ml_h5_raw_pwrite then
 * writes the dataset's t->bytes from data with pwrite and no HDF5 call
 * (thread-safe; returns 0 or an errno value and sets no error state).
 * start_writeback starts the kernel's write-back of that range. */
typedef struct {
    int fd;              /* the file's raw descriptor (owned by the ml_h5) */
    int64_t offset, bytes;
} ml_h5_raw_target;
int ml_h5_raw_target_get(ml_h5 *h, const char *name, ml_dtype type, ml_h5_raw_target *t);
int ml_h5_raw_pwrite(const ml_h5_raw_target *t, const void *data, int start_writeback);

hid_t ml_h5_id(const ml_h5 *h);              /* the HDF5 file id */
const char *ml_h5_path(const ml_h5 *h);      /* final path */
MPI_Comm ml_h5_comm(const ml_h5 *h);
const char *ml_h5_format(const ml_h5 *h);    /* value of `format` */
int ml_h5_format_version(const ml_h5 *h);

/* Groups: create intermediate groups of `path` ("a/b/c") if missing. */
int ml_h5_mkgroup(ml_h5 *h, const char *path);
int ml_h5_exists(ml_h5 *h, const char *path); /* 1 if a link exists, else 0 */
/* Names of the direct members of a group, sorted by name (creation order is
 * not tracked). *names is an ml_malloc'd array of ml_malloc'd strings; free
 * with ml_h5_free_names. Recursive listing of datasets when recursive != 0
 * (names are then paths relative to the group, e.g. "model.layers.0.x"). */
int ml_h5_list(ml_h5 *h, const char *group, int recursive, char ***names, int *count);
void ml_h5_free_names(char **names, int count);

/* Datasets. Rows are the first dimension. chunk_rows > 0 makes the dataset
 * chunked (chunk = chunk_rows x the other dims); compress (0-9) adds deflate
 * and requires chunking. Unlimited first dimension when maxrows < 0. */
typedef struct {
    hsize_t chunk_rows; /* 0 = contiguous */
    int compress;       /* deflate level 0..9 */
    int extendable;     /* first dimension unlimited */
} ml_h5_layout;
int ml_h5_create_dataset(ml_h5 *h, const char *name, ml_dtype type, int rank, const hsize_t *dims,
                         const ml_h5_layout *layout /* NULL = contiguous */);
/* Grow the first dimension (collective, extendable datasets only). */
int ml_h5_extend(ml_h5 *h, const char *name, hsize_t new_rows);
/* Write rows [row_start, row_start + row_count) of an existing dataset from
 * this rank (collective transfer). data is (row_count, rest-of-dims). */
int ml_h5_write_rows(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                     const void *data);
/* Independent write by one rank (no collective needed; unfiltered datasets
 * only, which are allocated early at creation). */
int ml_h5_write_rows_independent(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                                 const void *data);
/* Read rows (collective transfer). */
int ml_h5_read_rows(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count, void *data);
/* Independent read by one rank of a row range (no collective needed). Only
 * for unfiltered datasets or serial files. */
int ml_h5_read_rows_independent(ml_h5 *h, const char *name, ml_dtype type, hsize_t row_start, hsize_t row_count,
                                void *data);
/* Create and write a whole (small or replicated) tensor: every rank passes
 * the same data; rank 0 writes it. */
int ml_h5_write_tensor(ml_h5 *h, const char *name, ml_dtype type, int rank, const hsize_t *dims, const void *data);
/* Read a whole tensor on every rank. dims must match the file exactly
 * (error names the dataset and both shapes) unless rank_expected == 0,
 * which skips the check. */
int ml_h5_read_tensor(ml_h5 *h, const char *name, ml_dtype type, int rank_expected, const hsize_t *dims_expected,
                      void *data);
/* Shape and type of a dataset. dims has room for ML_H5_MAX_RANK. */
int ml_h5_shape(ml_h5 *h, const char *name, int *rank, hsize_t *dims, ml_dtype *type);

/* Attributes on any object path ("/" for the root). Strings are UTF-8,
 * variable length. JSON is stored as a string attribute. */
int ml_h5_set_attr_str(ml_h5 *h, const char *obj, const char *attr, const char *value);
int ml_h5_set_attr_int(ml_h5 *h, const char *obj, const char *attr, int64_t value);
int ml_h5_set_attr_double(ml_h5 *h, const char *obj, const char *attr, double value);
/* Reads allocate with ml_malloc; caller ml_free()s. */
int ml_h5_get_attr_str(ml_h5 *h, const char *obj, const char *attr, char **value);
/* The same, with *value = NULL and ML_OK when the attribute is absent. */
int ml_h5_get_attr_str_optional(ml_h5 *h, const char *obj, const char *attr, char **value);
int ml_h5_get_attr_int(ml_h5 *h, const char *obj, const char *attr, int64_t *value);
int ml_h5_get_attr_double(ml_h5 *h, const char *obj, const char *attr, double *value);
/* Store a string (e.g. JSON config) as a 1-D uint8 dataset is NOT used;
 * large text goes in a string attribute or a scalar string dataset: */
int ml_h5_write_string(ml_h5 *h, const char *name, const char *value);
int ml_h5_read_string(ml_h5 *h, const char *name, char **value);

/* Store the profiling events of this run under `group` (collective):
 * datasets name (strings), count, seconds_min/max/mean, flops, bytes. */
int ml_h5_write_profile(ml_h5 *h, const char *group);

/* Test support: the I/O mode of the last row write/read on this rank
 * (H5D_MPIO_NO_COLLECTIVE / H5D_MPIO_CHUNK_COLLECTIVE / ...). */
int ml_h5_last_io_mode(void);

/* Collective: rank 0 creates the parent directories of `path` (mkdir -p);
 * every rank gets the agreed result. */
int ml_mkdir_parent(MPI_Comm comm, const char *path);

/* `mergelens inspect`: print the semantic tree of a file to out. */
int ml_h5_inspect(const char *path, FILE *out, int show_all_attrs);

#endif
