/* File helpers: atomic writing (temporary name + rename), whole-file reading,
 * path joining, shape text for messages. */
#include "interop_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mergelens/core.h"
#include "mergelens/io.h"

static void ml_atomic_release(ml_atomic_file *f) {
    ml_free(f->path);
    ml_free(f->tmp);
    f->path = f->tmp = NULL;
    f->fd = -1;
}

int ml_atomic_open(ml_atomic_file *f, const char *path) {
    static unsigned counter = 0;
    f->fd = -1;
    f->path = ml_strdup(path);
    f->tmp = ml_malloc(strlen(path) + 48);
    if (!f->path || !f->tmp) {
        ml_atomic_release(f);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    sprintf(f->tmp, "%s.tmp.%ld.%u", path, (long)getpid(), counter++);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f->fd < 0) {
        int rc = ML_FAIL(ML_ERR_IO, "%s: cannot create: %s", f->tmp, strerror(errno));
        ml_atomic_release(f);
        return rc;
    }
    return ML_OK;
}

int ml_atomic_write(ml_atomic_file *f, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return ML_FAIL(ML_ERR_IO, "%s: cannot write: %s", f->path, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return ML_OK;
}

void ml_atomic_abort(ml_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    ml_atomic_release(f);
}

int ml_atomic_commit(ml_atomic_file *f) {
    int rc = ML_OK;
    if (fsync(f->fd) != 0) {
        rc = ML_FAIL(ML_ERR_IO, "%s: cannot write (fsync): %s", f->path, strerror(errno));
        ml_atomic_abort(f);
        return rc;
    }
    int crc = close(f->fd);
    f->fd = -1;
    if (crc != 0)
        rc = ML_FAIL(ML_ERR_IO, "%s: cannot write (close): %s", f->path, strerror(errno));
    else if (rename(f->tmp, f->path) != 0)
        rc = ML_FAIL(ML_ERR_IO, "%s: cannot rename to %s: %s", f->tmp, f->path, strerror(errno));
    if (rc != ML_OK) unlink(f->tmp);
    ml_atomic_release(f);
    return rc;
}

int ml_atomic_write_file(const char *path, const void *data, size_t n) {
    ml_atomic_file f;
    ML_CHECK(ml_atomic_open(&f, path));
    int rc = ml_atomic_write(&f, data, n);
    if (rc != ML_OK) {
        ml_atomic_abort(&f);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    ML_CHECK(ml_atomic_commit(&f));
    return ML_OK;
}

int ml_atomic_write_json(const char *path, const json_t *value) {
    char *text = json_dumps(value, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) return ML_FAIL(ML_ERR_NOMEM, "%s: cannot serialise JSON", path);
    ml_atomic_file f;
    int rc = ml_atomic_open(&f, path);
    if (rc == ML_OK) {
        rc = ml_atomic_write(&f, text, strlen(text));
        if (rc == ML_OK) rc = ml_atomic_write(&f, "\n", 1);
        if (rc == ML_OK)
            rc = ml_atomic_commit(&f);
        else
            ml_atomic_abort(&f);
    }
    free(text);
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_read_file(const char *path, char **data, size_t *n) {
    int rc = ML_OK;
    char *buf = NULL;
    *data = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ML_FAIL(errno == ENOENT ? ML_ERR_NOTFOUND : ML_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode))
        ML_FAIL_GOTO(done, ML_ERR_IO, "%s: not a regular file", path);
    size_t size = (size_t)sb.st_size;
    buf = ml_malloc(size + 1);
    if (!buf) ML_CHECK_GOTO(ML_ERR_NOMEM, done);
    if (fread(buf, 1, size, fp) != size) ML_FAIL_GOTO(done, ML_ERR_IO, "%s: read failed", path);
    buf[size] = '\0';
    *data = buf;
    if (n) *n = size;
    buf = NULL;
done:
    ml_free(buf);
    fclose(fp);
    return rc;
}

int ml_path_join(char *out, size_t cap, const char *dir, const char *name) {
    if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
        return ML_FAIL(ML_ERR_ARG, "%s/%s: path too long", dir, name);
    return ML_OK;
}

const char *ml_fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

int ml_attr_str_optional(ml_h5 *h, const char *attr, char **value) {
    return ml_h5_get_attr_str_optional(h, "/", attr, value);
}
