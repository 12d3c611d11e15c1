/* Every allocation of the SAE paths can fail: making the n-th allocation
 * fail for n = 1, 2, ... gives ML_ERR_NOMEM (or the error that the failure
 * caused) and leaks nothing, until the call succeeds (single process). */
#include <math.h>

#include "ml_test.h"
#include "mergelens/sae.h"

#define N 600
#define D 8

static float g_x[N * D];

typedef int (*call_fn)(void);

static int call_train(void) {
    ml_row_memory mem;
    ml_row_memory_init(&mem, g_x, N, D, NULL, NULL, NULL);
    for (int a = 0; a < 3; a++) {
        ml_sae_train_config c;
        ml_sae_train_config_default(&c);
        c.arch = (ml_sae_arch)a;
        c.d_sae = 24;
        c.n_grid = 2;
        c.l1[1] = 0.1;
        c.k[0] = 2;
        c.k[1] = 3;
        c.k_aux = 4;
        c.batch = 32;
        c.tokens = 12 * 32;
        c.block_rows = 100;
        c.buffer_blocks = 2;
        c.median_rows = 64;
        c.dead_window = 64;
        c.resample_every = 4;
        c.resample_rows = 64;
        c.resample_stop = 1;
        c.log_every = 3;
        c.quiet = 1;
        ml_sae_run *run = NULL;
        int rc = ml_sae_train(MPI_COMM_SELF, &c, &mem.src, &run);
        if (rc != ML_OK) return rc;
        ml_sae_eval_config e;
        ml_sae_eval_config_default(&e);
        e.block_rows = 100;
        e.top_examples = 3;
        e.quantile_examples = 2;
        e.reservoir = 4;
        e.ctx_left = 2;
        e.ctx_right = 1;
        ml_sae *saes[2] = {run->item[0].sae, run->item[1].sae};
        ml_sae_eval *ev[2] = {NULL, NULL};
        rc = ml_sae_evaluate(MPI_COMM_SELF, saes, 2, &mem.src, &e, ev);
        ml_sae_eval_destroy(&ev[0]);
        ml_sae_eval_destroy(&ev[1]);
        ml_sae_run_destroy(&run);
        if (rc != ML_OK) return rc;
    }
    return ML_OK;
}

static int call_inference(void) {
    ml_sae *s = NULL;
    int rc = ml_sae_create(ML_SAE_TOPK, D, 20, 3, &s);
    if (rc != ML_OK) return rc;
    ml_sae_init(s, 1, 0.1f);
    float f[10 * 20], xh[10 * D];
    int32_t idx[10 * 4];
    float val[10 * 4];
    ml_sae_csr csr = {0};
    rc = ml_sae_encode(s, g_x, 10, f);
    if (rc == ML_OK) rc = ml_sae_reconstruct(s, g_x, 10, xh, NULL);
    if (rc == ML_OK) rc = ml_sae_encode_top(s, g_x, 10, 4, idx, val, NULL);
    if (rc == ML_OK) rc = ml_sae_encode_csr(s, g_x, 10, &csr);
    ml_sae_csr_free(&csr);
    ml_sae_destroy(&s);
    return rc;
}

static void chaos(call_fn fn, const char *name) {
    long live0 = ml_alloc_live();
    int n = 1, failures = 0;
    for (;; n++) {
        ml_error_clear();
        ml_alloc_fail_at(n);
        int rc = fn();
        ml_alloc_fail_at(0);
        if (ml_alloc_live() != live0)
            fail_msg("%s: allocation %d failing leaks %ld allocations (rc %s: %s)", name, n, ml_alloc_live() - live0,
                     ml_status_name(rc), ml_error_message());
        if (rc == ML_OK) break;
        if (rc != ML_ERR_NOMEM) fail_msg("%s: allocation %d failing gave %s: %s", name, n, ml_status_name(rc), ml_error_message());
        failures++;
        if (n > 5000) fail_msg("%s: still failing after %d allocations", name, n);
    }
    printf("# %s: %d allocation sites failed cleanly\n", name, failures);
    assert_true(failures > 10);
}

static void test_alloc_failures(void **state) {
    (void)state;
    ml_rng r;
    ml_rng_seed(&r, 4, 0);
    for (int i = 0; i < N * D; i++) g_x[i] = ml_rng_uniform(&r) < 0.3 ? (float)ml_rng_uniform(&r) : 0.0f;
    chaos(call_inference, "inference");
    chaos(call_train, "train + evaluate");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_alloc_failures)};
    return ml_test_run(argc, argv, "sae_alloc", tests, sizeof tests / sizeof tests[0]);
}
