/* The training loop against a naive single-process reference written here:
 * the same windows (a 1-process loader), one forward/backward per row,
 * gradient sum / (G T), global-norm clipping, the hand-computed warmup +
 * linear schedule and AdamW in double precision. `mergelens train` on 1 or 2
 * ranks must reproduce its parameters, losses, learning rates and gradient
 * norms. Fine-tuning with init_from starts from the parent's parameters
 * (lr 0 leaves them bitwise unchanged), with a fresh optimizer, records the
 * parent, and its first step equals the reference started from the parent. */
#include "ml_test.h"

#include <math.h>

#include "mergelens/data.h"
#include "train_fixture.h"

static int rank, nranks;
static char dir[1024], stores[2][1200], base[1200];

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *names[2] = {"alpha", "beta"};
    const int64_t ntrain[2] = {3000, 3000}, nval[2] = {300, 300};
    int rc = tf_setup_stores("train_reference", dir, sizeof dir, 2, names, ntrain, nval, stores);
    snprintf(base, sizeof base, "%s/base.h5", dir);
    return rc;
}

typedef struct {
    const char *store;
    int G, warmup;
    int64_t steps;
    int linear; /* 1 linear decay, 0 constant */
    double lr, wd, b1, b2, eps, clip;
    uint64_t seed;
} ref_cfg;

/* lr of step s (0-based): warmup from 0, then linear decay to 0 at `steps` or constant. */
static double ref_lr(const ref_cfg *c, int64_t s) {
    if (s < c->warmup) return c->lr * (double)s / c->warmup;
    if (!c->linear) return c->lr;
    return c->lr * (double)(c->steps - s) / (double)(c->steps - c->warmup);
}

/* Train m in place; fills loss, lr, gnorm per step. */
static void ref_train(ml_model *m, const ref_cfg *c, double *loss, double *lr, double *gnorm) {
    const int T = 16, V = m->cfg.vocab_size;
    (void)V;
    ml_loader *ld = NULL;
    ml_loader_config lc = {.n_domains = 1, .paths = &c->store, .split = "train", .global_batch = c->G, .T = T,
                           .seed = c->seed};
    ML_ASSERT_OK(ml_loader_create(MPI_COMM_SELF, &lc, &ld));
    ml_workspace *ws = NULL;
    ml_workspace_config wc = {.B_max = 1, .T_max = T, .grad = 1};
    ML_ASSERT_OK(ml_workspace_create(&m->cfg, &wc, &ws));
    ML_ASSERT_OK(ml_model_enable_grads(m));
    const size_t n = m->n_params;
    double *mo = calloc(n, sizeof(double)), *vo = calloc(n, sizeof(double));
    int32_t *win = malloc(sizeof(int32_t) * (size_t)c->G * (T + 1)), tok[16], tgt[16];
    for (int64_t s = 0; s < c->steps; s++) {
        int nrows;
        ML_ASSERT_OK(ml_loader_next(ld, win, &nrows, NULL));
        assert_int_equal(nrows, c->G);
        ml_model_zero_grad(m);
        double lsum = 0;
        for (int b = 0; b < c->G; b++) {
            ml_windows_split(win + (size_t)b * (T + 1), 1, T, tok, tgt);
            ml_lm_stats st;
            ML_ASSERT_OK(ml_model_forward_backward(m, ws, tok, tgt, 1, T, 1.0 / (c->G * T), &st));
            lsum += st.loss_sum;
        }
        double sq = 0;
        for (size_t i = 0; i < n; i++) sq += (double)m->grads[i] * m->grads[i];
        const double norm = sqrt(sq), scale = c->clip > 0 && norm > c->clip ? c->clip / (norm + 1e-6) : 1.0;
        loss[s] = lsum / (c->G * T);
        gnorm[s] = norm;
        lr[s] = ref_lr(c, s);
        const double t = (double)(s + 1), bc1 = 1 - pow(c->b1, t), bc2 = 1 - pow(c->b2, t);
        for (int k = 0; k < m->n_tensors; k++) {
            const ml_tensor *te = &m->tensors[k];
            for (size_t i = te->offset; i < te->offset + te->numel; i++) {
                const double g = m->grads[i] * scale;
                double p = m->params[i];
                if (te->decay) p *= 1 - lr[s] * c->wd;
                mo[i] = c->b1 * mo[i] + (1 - c->b1) * g;
                vo[i] = c->b2 * vo[i] + (1 - c->b2) * g * g;
                p -= lr[s] / bc1 * mo[i] / (sqrt(vo[i]) / sqrt(bc2) + c->eps);
                m->params[i] = (float)p;
            }
        }
    }
    free(mo);
    free(vo);
    free(win);
    ml_workspace_destroy(&ws);
    ml_loader_destroy(&ld);
}

static void compare_logs(const char *path, const double *loss, const double *lr, const double *gnorm, int steps) {
    double l[16], r[16], g[16];
    assert_int_equal(tf_read_col(path, "/train/log/loss", ML_F64, l, 16), steps);
    assert_int_equal(tf_read_col(path, "/train/log/lr", ML_F64, r, 16), steps);
    assert_int_equal(tf_read_col(path, "/train/log/grad_norm", ML_F64, g, 16), steps);
    for (int s = 0; s < steps; s++) {
        ML_ASSERT_CLOSE(l[s], loss[s], 1e-6);
        ML_ASSERT_CLOSE(r[s], lr[s], 1e-12);
        ML_ASSERT_CLOSE(g[s], gnorm[s], 1e-5);
    }
}

static void test_reference_loop(void **state) {
    (void)state;
    /* clip 0.05 is below every gradient norm here, so clipping acts on every step */
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD,
                          "--domains %s --out %s " TF_SHAPE " --global_batch 4 --steps 4 --lr 5e-3 --warmup 1 "
                          "--schedule linear --weight_decay 0.1 --clip 0.05 --betas 0.8,0.95 --eps 1e-6 --seed 5 "
                          "--eval false",
                          stores[0], base));
    ml_model_config mc;
    ml_model_config_default(&mc);
    mc.vocab_size = 64, mc.d_model = 32, mc.d_mlp = 64, mc.n_heads = 4, mc.n_kv_heads = 2, mc.head_dim = 8;
    mc.max_context = 16;
    ml_model *m = NULL;
    ML_ASSERT_OK(ml_model_create(&mc, &m));
    ML_ASSERT_OK(ml_model_init(m, 5));
    ref_cfg c = {.store = stores[0], .G = 4, .warmup = 1, .steps = 4, .linear = 1, .lr = 5e-3, .wd = 0.1, .b1 = 0.8,
                 .b2 = 0.95, .eps = 1e-6, .clip = 0.05, .seed = 5};
    double loss[4], lr[4], gnorm[4];
    ref_train(m, &c, loss, lr, gnorm);
    assert_true(lr[0] == 0 && lr[1] == 5e-3 && fabs(lr[2] - 5e-3 * 2 / 3) < 1e-18 && fabs(lr[3] - 5e-3 / 3) < 1e-18);
    for (int s = 0; s < 4; s++) assert_true(gnorm[s] > 0.05);
    compare_logs(base, loss, lr, gnorm, 4);
    ml_model *t = tf_model(base);
    assert_non_null(t);
    double d = tf_max_diff(m, t);
    if (rank == 0) printf("  %d rank%s: max |param - reference| = %.2e\n", nranks, nranks > 1 ? "s" : "", d);
    assert_true(d < 2e-6);
    assert_int_equal(tf_attr_int(base, "/optimizer", "step"), 4);
    ml_model_destroy(&t);
    ml_model_destroy(&m);
}

static void test_finetune(void **state) {
    (void)state;
    char ft[1200];
    snprintf(ft, sizeof ft, "%s/ft0.h5", dir);
    /* lr 0: the parent's parameters exactly (weight decay is lr-scaled) */
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD,
                          "--domains %s --out %s --init_from %s --context 16 --global_batch 4 --steps 2 --lr 0 "
                          "--schedule constant --eval_batches 1",
                          stores[1], ft, base));
    ml_model *p = tf_model(base), *f = tf_model(ft);
    assert_non_null(p);
    assert_non_null(f);
    assert_memory_equal(p->params, f->params, sizeof(float) * p->n_params);
    assert_memory_equal(&p->cfg, &f->cfg, sizeof p->cfg);
    char *parent = tf_attr_str(ft, "/", "parent");
    assert_non_null(parent);
    assert_string_equal(parent, base);
    ml_free(parent);
    assert_int_equal(tf_attr_int(ft, "/optimizer", "step"), 2); /* fresh optimizer, not 4 + 2 */
    ml_model_destroy(&f);
    /* one real step from the parent equals the reference started from the parent */
    snprintf(ft, sizeof ft, "%s/ft1.h5", dir);
    ML_ASSERT_OK(tf_train(MPI_COMM_WORLD,
                          "--domains %s --out %s --init_from %s --context 16 --global_batch 4 --steps 2 --lr 2e-3 "
                          "--schedule constant --weight_decay 0.01 --clip 0 --eps 1e-6 --seed 9 --eval false",
                          stores[1], ft, base));
    ref_cfg c = {.store = stores[1], .G = 4, .steps = 2, .lr = 2e-3, .wd = 0.01, .b1 = 0.9, .b2 = 0.999,
                 .eps = 1e-6, .clip = 0, .seed = 9};
    double loss[2], lr[2], gnorm[2];
    ref_train(p, &c, loss, lr, gnorm);
    compare_logs(ft, loss, lr, gnorm, 2);
    f = tf_model(ft);
    assert_non_null(f);
    double d = tf_max_diff(p, f);
    if (rank == 0) printf("  fine-tune: max |param - reference| = %.2e\n", d);
    assert_true(d < 2e-6);
    ml_model_destroy(&f);
    ml_model_destroy(&p);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_reference_loop, setup),
        cmocka_unit_test(test_finetune),
    };
    return ml_test_run(argc, argv, "train_reference", tests, sizeof tests / sizeof tests[0]);
}
