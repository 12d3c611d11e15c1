/* Test fixtures of the train module: small token stores written directly
 * with io.h in the documented `mergelens.tokens` v1 layout, and helpers to
 * read checkpoints back. */
#ifndef ML_TRAIN_FIXTURE_H
#define ML_TRAIN_FIXTURE_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/io.h"
#include "mergelens/train.h"

/* A learnable sequence: next = (a t + c) mod V with probability 3/4, else a
 * uniform token; a and c depend on the domain seed. One document per split. */
static inline int tf_write_store(const char *path, const char *domain, int V, int64_t ntrain, int64_t nval,
                                 uint64_t seed) {
    ml_h5 *h = NULL;
    int rc = ml_h5_create(MPI_COMM_SELF, path, "mergelens.tokens", 1, &h);
    if (rc) return rc;
    ml_rng rng;
    ml_rng_seed(&rng, seed, 7);
    const int64_t a = 1 + 2 * (int64_t)ml_rng_below(&rng, (uint64_t)V / 2), c = (int64_t)ml_rng_below(&rng, (uint64_t)V);
    for (int s = 0; s < 2 && rc == ML_OK; s++) {
        int64_t n = s ? nval : ntrain;
        uint16_t *t = malloc((size_t)(n > 0 ? n : 1) * 2);
        int64_t x = (int64_t)ml_rng_below(&rng, (uint64_t)V);
        for (int64_t i = 0; i < n; i++) {
            t[i] = (uint16_t)x;
            x = ml_rng_below(&rng, 4) ? (a * x + c) % V : (int64_t)ml_rng_below(&rng, (uint64_t)V);
        }
        hsize_t dims[1] = {(hsize_t)n}, d2[1] = {2};
        int64_t off[2] = {0, n};
        rc = ml_h5_write_tensor(h, s ? "val/tokens" : "train/tokens", ML_U16, 1, dims, t);
        if (!rc) rc = ml_h5_write_tensor(h, s ? "val/doc_offsets" : "train/doc_offsets", ML_I64, 1, d2, off);
        free(t);
    }
    if (!rc) rc = ml_h5_set_attr_int(h, "/", "vocab_size", V);
    if (!rc) rc = ml_h5_set_attr_str(h, "/", "domain", domain);
    if (!rc) rc = ml_h5_set_attr_int(h, "/", "eos_id", V - 1);
    if (!rc) rc = ml_h5_set_attr_int(h, "/", "bos_id", -1);
    if (!rc) rc = ml_h5_set_attr_int(h, "/", "pad_id", -1);
    if (!rc) rc = ml_h5_set_attr_str(h, "/", "tokenizer", "tok/test-tokenizer.json");
    if (rc) {
        ml_h5_discard(&h);
        return rc;
    }
    return ml_h5_close(&h);
}

#ifdef ML_TEST_H /* cmocka tests only */
/* The per-test directory (same on every rank) and stores
 * <dir>/<names[i]>.h5 (vocabulary 64, seed i + 1, ntrain[i] / nval[i]
 * tokens) written by rank 0. Collective; returns rank 0's status. */
static inline int tf_setup_stores(const char *test, char *dir, size_t dir_size, int n, const char *const *names,
                                  const int64_t *ntrain, const int64_t *nval, char (*stores)[1200]) {
    int rank, rc = ML_OK;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(dir, dir_size, "%s", ml_test_dir(test));
    for (int i = 0; i < n; i++) {
        snprintf(stores[i], 1200, "%s/%s.h5", dir, names[i]);
        if (rank == 0 && rc == ML_OK) rc = tf_write_store(stores[i], names[i], 64, ntrain[i], nval[i], (uint64_t)i + 1);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc;
}
#endif

/* Run a command whose arguments are given as one space-separated string
 * (printf format); argv[0] = cmd. */
typedef int (*tf_cmd_fn)(MPI_Comm, int, char **);
static inline int tf_run(tf_cmd_fn fn, MPI_Comm comm, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static inline int tf_run(tf_cmd_fn fn, MPI_Comm comm, const char *cmd, const char *fmt, ...) {
    char line[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    char *argv[128];
    int argc = 0;
    argv[argc++] = (char *)cmd;
    for (char *tok = strtok(line, " "); tok && argc < 127; tok = strtok(NULL, " ")) argv[argc++] = tok;
    argv[argc] = NULL;
    return fn(comm, argc, argv);
}
#define tf_train(comm, ...) tf_run(ml_cmd_train, comm, "train", __VA_ARGS__)
#define tf_eval(comm, ...) tf_run(ml_cmd_eval, comm, "eval", __VA_ARGS__)

/* The tiny model of the tests: D 32, F 64, H 4 / KV 2, T 16. */
#define TF_SHAPE "--d_model 32 --d_mlp 64 --n_heads 4 --n_kv_heads 2 --context 16"

/* Read a whole 1-D dataset (serial open on this process). Returns rows. */
static inline int64_t tf_read_col(const char *path, const char *name, ml_dtype t, void *buf, int64_t cap) {
    ml_h5 *h = NULL;
    if (ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h)) return -1;
    int r;
    hsize_t dims[ML_H5_MAX_RANK];
    int64_t n = -1;
    if (!ml_h5_shape(h, name, &r, dims, NULL) && (int64_t)dims[0] <= cap &&
        !ml_h5_read_rows_independent(h, name, t, 0, dims[0], buf))
        n = (int64_t)dims[0];
    ml_h5_close(&h);
    return n;
}

static inline int64_t tf_attr_int(const char *path, const char *obj, const char *attr) {
    ml_h5 *h = NULL;
    int64_t v = -12345;
    if (ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h)) return v;
    if (ml_h5_get_attr_int(h, obj, attr, &v)) v = -12345;
    ml_h5_close(&h);
    return v;
}

/* ml_malloc'd string attribute or NULL. */
static inline char *tf_attr_str(const char *path, const char *obj, const char *attr) {
    ml_h5 *h = NULL;
    char *v = NULL;
    if (ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h)) return NULL;
    if (ml_h5_get_attr_str(h, obj, attr, &v)) v = NULL;
    ml_h5_close(&h);
    return v;
}

/* Model of a checkpoint (serial read on this process), NULL on failure. */
static inline ml_model *tf_model(const char *path) {
    ml_model *m = NULL;
    if (ml_checkpoint_load_model(MPI_COMM_SELF, path, &m)) {
        ml_error_print(stderr, 1);
        return NULL;
    }
    return m;
}

/* Largest |a - b| over two models' parameters (both must exist). */
static inline double tf_max_diff(const ml_model *a, const ml_model *b) {
    double mx = 0;
    for (size_t i = 0; i < a->n_params; i++) {
        double d = fabs((double)a->params[i] - (double)b->params[i]);
        if (d > mx) mx = d;
    }
    return mx;
}

#endif
