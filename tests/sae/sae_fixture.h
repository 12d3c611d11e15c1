/* Helpers shared by the SAE command tests: root/group attributes of an SAE file (read on this process
 * alone) and the small training configuration of test_file.c and test_replicas.c (d_in 16 rows, 20
 * steps of 128 with resampling every 8), which matches their command lines. */
#ifndef ML_TEST_SAE_FIXTURE_H
#define ML_TEST_SAE_FIXTURE_H

#include "ml_test.h"
#include "mergelens/io.h"
#include "mergelens/sae.h"

/* the int64 attribute `name` of object `obj` of SAE file path */
static inline int64_t sae_attr_int(const char *path, const char *obj, const char *name) {
    ml_h5 *h = NULL;
    int64_t v = -7;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.sae", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_int(h, obj, name, &v));
    ML_ASSERT_OK(ml_h5_close(&h));
    return v;
}

/* the string root attribute `name` of SAE file path (caller ml_free()s) */
static inline char *sae_attr_str(const char *path, const char *name) {
    ml_h5 *h = NULL;
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.sae", 1, 1, &h));
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/", name, &s));
    ML_ASSERT_OK(ml_h5_close(&h));
    return s;
}

/* the options "--d_sae 32 --lr 3e-3 --batch 128 --tokens 2560 --block_rows 512 --buffer_blocks 4
 * --median_rows 256 --resample_every 8 --dead_window 512 --log_every 5" as a config */
static inline void sae_small_config(ml_sae_train_config *c) {
    ml_sae_train_config_default(c);
    c->d_sae = 32;
    c->lr = 3e-3;
    c->batch = 128;
    c->tokens = 20 * 128;
    c->block_rows = 512;
    c->buffer_blocks = 4;
    c->median_rows = 256;
    c->resample_every = 8;
    c->dead_window = 512;
    c->log_every = 5;
    c->quiet = 1;
}

#endif
