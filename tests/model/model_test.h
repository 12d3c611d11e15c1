/* Shared helpers of the model tests. */
#ifndef ML_MODEL_TEST_H
#define ML_MODEL_TEST_H

#include "mergelens/model.h"

void openblas_set_num_threads(int);

/* A small config: L layers, vocabulary V, d_model D, H / KV heads, d_mlp F, max context T. */
static inline void ml_test_config(ml_model_config *c, int L, int V, int D, int H, int KV, int F, int T) {
    ml_model_config_default(c);
    c->n_layers = L;
    c->vocab_size = V;
    c->d_model = D;
    c->n_heads = H;
    c->n_kv_heads = KV;
    c->head_dim = D / H;
    c->d_mlp = F;
    c->max_context = T;
}

#endif
