/* Test fixtures for the capture module: tiny token stores (written with
 * io.h per the mergelens.tokens v1 layout, regenerable in memory for
 * checks) and tiny random-init model checkpoints. */
#ifndef ML_CAPTURE_FIXTURES_H
#define ML_CAPTURE_FIXTURES_H

#include <math.h>

#include "mergelens/capture.h"
#include "mergelens/io.h"
#include "mergelens/model.h"
#include "ml_test.h"

/* One split of a synthetic store: documents of 3..40 random tokens ending in eos = 1. */
typedef struct {
    int64_t n, ndocs;
    int32_t *tok;     /* (n) */
    int64_t *offsets; /* (ndocs + 1) */
} fx_split;

static inline void fx_split_make(fx_split *s, uint64_t seed, uint64_t stream, int64_t ndocs, int V) {
    ml_rng r;
    ml_rng_seed(&r, seed, stream);
    s->ndocs = ndocs;
    s->offsets = malloc(sizeof(int64_t) * (size_t)(ndocs + 1));
    s->tok = malloc(sizeof(int32_t) * (size_t)(ndocs * 40));
    s->n = 0;
    s->offsets[0] = 0;
    for (int64_t d = 0; d < ndocs; d++) {
        int len = 3 + (int)ml_rng_below(&r, 38);
        for (int i = 0; i < len - 1; i++) s->tok[s->n++] = 2 + (int32_t)ml_rng_below(&r, (uint64_t)V - 2);
        s->tok[s->n++] = 1;
        s->offsets[d + 1] = s->n;
    }
}

static inline void fx_split_free(fx_split *s) {
    free(s->tok);
    free(s->offsets);
}

typedef struct {
    fx_split split[2]; /* train, val */
} fx_store;

/* Write a store with vocabulary V (uint16 tokens, or uint32 when u32). */
static inline void fx_store_write(MPI_Comm comm, const char *path, const char *domain, int V, int64_t train_docs,
                                  int64_t val_docs, uint64_t seed, int u32, fx_store *keep) {
    fx_store st;
    fx_split_make(&st.split[0], seed, 0, train_docs, V);
    fx_split_make(&st.split[1], seed, 1, val_docs, V);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(comm, path, "mergelens.tokens", 1, &h));
    const char *names[2] = {"train", "val"};
    for (int k = 0; k < 2; k++) {
        fx_split *s = &st.split[k];
        char ds[64];
        hsize_t n[1] = {(hsize_t)s->n}, no[1] = {(hsize_t)(s->ndocs + 1)};
        snprintf(ds, sizeof ds, "/%s/tokens", names[k]);
        if (u32) {
            uint32_t *t = malloc(sizeof(uint32_t) * (size_t)s->n);
            for (int64_t i = 0; i < s->n; i++) t[i] = (uint32_t)s->tok[i];
            ML_ASSERT_OK(ml_h5_write_tensor(h, ds, ML_U32, 1, n, t));
            free(t);
        } else {
            uint16_t *t = malloc(sizeof(uint16_t) * (size_t)s->n);
            for (int64_t i = 0; i < s->n; i++) t[i] = (uint16_t)s->tok[i];
            ML_ASSERT_OK(ml_h5_write_tensor(h, ds, ML_U16, 1, n, t));
            free(t);
        }
        snprintf(ds, sizeof ds, "/%s/doc_offsets", names[k]);
        ML_ASSERT_OK(ml_h5_write_tensor(h, ds, ML_I64, 1, no, s->offsets));
    }
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "domain", domain));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "vocab_size", V));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "eos_id", 1));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "bos_id", 0));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "pad_id", 0));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "tokenizer", "none"));
    ML_ASSERT_OK(ml_h5_close(&h));
    if (keep) *keep = st;
    else {
        fx_split_free(&st.split[0]);
        fx_split_free(&st.split[1]);
    }
}

/* 2 layers, V 40, D 16, 4 heads / 2 kv heads of 4, F 24, context 32. */
static inline void fx_model_config(ml_model_config *c) {
    ml_model_config_default(c);
    c->n_layers = 2;
    c->vocab_size = 40;
    c->d_model = 16;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = 4;
    c->d_mlp = 24;
    c->max_context = 32;
    c->init_std = 0.3; /* large enough that the MLP matters for the loss */
}

/* Write a random-init checkpoint with the MLP matrices scaled by mlp_scale;
 * the model is returned in *keep if not NULL. */
static inline void fx_model_write_cfg(MPI_Comm comm, const char *path, const ml_model_config *cfg, uint64_t seed,
                                      float mlp_scale, ml_model **keep) {
    const ml_model_config c = *cfg;
    ml_model *m = NULL;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, seed));
    for (int i = 0; i < m->n_tensors; i++)
        if (strstr(m->tensors[i].name, "mlp."))
            for (size_t j = 0; j < m->tensors[i].numel; j++) m->params[m->tensors[i].offset + j] *= mlp_scale;
    ML_ASSERT_OK(ml_h5_create(comm, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_model_config_save(h, &c));
    ML_ASSERT_OK(ml_model_save_params(h, m));
    ML_ASSERT_OK(ml_h5_close(&h));
    if (keep) *keep = m;
    else ml_model_destroy(&m);
}

/* The same for the fixture config (fx_model_config). */
static inline void fx_model_write(MPI_Comm comm, const char *path, uint64_t seed, float mlp_scale, ml_model **keep) {
    ml_model_config c;
    fx_model_config(&c);
    fx_model_write_cfg(comm, path, &c, seed, mlp_scale, keep);
}

/* Read a whole 1-D or 2-D dataset of the file (collective over the handle's comm). */
static inline void *fx_read_all(ml_h5 *h, const char *name, ml_dtype type, hsize_t *rows, hsize_t *cols) {
    int rank = 0;
    hsize_t dims[ML_H5_MAX_RANK];
    ml_dtype t;
    ML_ASSERT_OK(ml_h5_shape(h, name, &rank, dims, &t));
    size_t n = (size_t)dims[0] * (rank > 1 ? (size_t)dims[1] : 1);
    void *buf = malloc(ml_dtype_size(type) * (n ? n : 1));
    ML_ASSERT_OK(ml_h5_read_rows(h, name, type, 0, dims[0], buf));
    if (rows) *rows = dims[0];
    if (cols) *cols = rank > 1 ? dims[1] : 1;
    return buf;
}

/* Run a command function with a NULL-terminated argument list. */
static inline int fx_cmd(int (*fn)(MPI_Comm, int, char **), MPI_Comm comm, const char *const *args) {
    int argc = 0;
    while (args[argc]) argc++;
    char **argv = malloc(sizeof(char *) * (size_t)(argc + 1));
    for (int i = 0; i < argc; i++) argv[i] = strdup(args[i]);
    argv[argc] = NULL;
    int rc = fn(comm, argc, argv);
    for (int i = 0; i < argc; i++) free(argv[i]);
    free(argv);
    return rc;
}

#endif
