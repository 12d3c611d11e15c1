/* Helpers shared by the files of the interop module (not public API). */
#ifndef ML_INTEROP_INTERNAL_H
#define ML_INTEROP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* A file written at a temporary name next to its final path and renamed
 * there by ml_atomic_commit(); ml_atomic_abort() deletes it. */
typedef struct {
    int fd;
    char *path; /* final path */
    char *tmp;  /* temporary path */
} ml_atomic_file;

int ml_atomic_open(ml_atomic_file *f, const char *path);
int ml_atomic_write(ml_atomic_file *f, const void *data, size_t n);
/* fsync, close, rename to the final path. Aborts (deletes) on failure. */
int ml_atomic_commit(ml_atomic_file *f);
/* Close and delete the temporary file; tolerates an unopened file. */
void ml_atomic_abort(ml_atomic_file *f);
/* "[2, 3]" into buf (for messages); returns buf. */
const char *ml_fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape);
/* A root string attribute that may be absent (*value = NULL then). */
typedef struct ml_h5 ml_h5;
int ml_attr_str_optional(ml_h5 *h, const char *attr, char **value);

#endif
