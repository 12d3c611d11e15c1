/* Shared by the sweep tests: tiny random models a and b (model API), token
 * stores (two of vocabulary 64, one of 32), a SLERP recipe, and the command
 * helpers. Call sweep_fixture_setup("name") from a cmocka setup. */
#ifndef ML_SWEEP_FIXTURE_H
#define ML_SWEEP_FIXTURE_H

#include <math.h>

#include "mergelens/merge.h"
#include "mergelens/sweep.h"
#include "ml_test.h"
#include "../train/train_fixture.h"

enum { NDOM = 2, T = 8, BATCH = 4, WINDOWS = 8 };
static char dir[1024], st[3][1200], ma[1200], mb[1200], recipe[1200];

static inline void write_model(const char *path, uint64_t seed) {
    ml_model_config c;
    ml_model_config_default(&c);
    c.d_model = 32, c.d_mlp = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.vocab_size = 64;
    c.max_context = 16, c.init_std = 0.3;
    ml_model *m = NULL;
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_model_create(&c, &m));
    ML_ASSERT_OK(ml_model_init(m, seed));
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, &h));
    ML_ASSERT_OK(ml_model_config_save(h, &c));
    ML_ASSERT_OK(ml_model_save_params(h, m));
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_model_destroy(&m);
}

static inline void write_recipe(const char *path, double t) {
    FILE *f = fopen(path, "w");
    fprintf(f, "models:\n  - model: %s\n  - model: %s\nmerge_method: slerp\nbase_model: %s\nparameters:\n  t: %.17g\n",
            ma, mb, ma, t);
    fclose(f);
}

static inline int sweep_fixture_setup(const char *name) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(dir, sizeof dir, "%s", ml_test_dir(name));
    const char *names[3] = {"stories", "lua", "other"};
    for (int i = 0; i < 3; i++) snprintf(st[i], sizeof st[i], "%s/%s.h5", dir, names[i]);
    snprintf(ma, sizeof ma, "%s/a.h5", dir);
    snprintf(mb, sizeof mb, "%s/b.h5", dir);
    snprintf(recipe, sizeof recipe, "%s/slerp.yaml", dir);
    if (rank == 0) {
        ML_ASSERT_OK(tf_write_store(st[0], "stories", 64, 200, 150, 1));
        ML_ASSERT_OK(tf_write_store(st[1], "lua", 64, 200, 120, 2));
        ML_ASSERT_OK(tf_write_store(st[2], "other", 32, 200, 100, 3)); /* vocab mismatch */
        write_model(ma, 11);
        write_model(mb, 12);
        write_recipe(recipe, 0.5);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

#define sweep(comm, ...) tf_run(ml_cmd_sweep, comm, "sweep", __VA_ARGS__)

#endif
