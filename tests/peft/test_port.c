/* `mergelens lora` end to end on small stores and hosts:
 *  - train: the adapter learns (loss falls), the host file is untouched;
 *  - port to the identical host reproduces the adapter's own evaluation
 *    exactly; the scratch control's zero-shot equals the bare host exactly;
 *    the table has A x H x C x S x 2 rows with the documented columns;
 *  - merge: the merged checkpoint equals host + s B A computed naively;
 *  - export: adapter_model.safetensors holds the PEFT names, shapes and the
 *    same values; adapter_config.json says LORA / IA3;
 *  - bad inputs: a host of another shape (one line stating the policy), an
 *    adapter file missing a tensor;
 *  - data parallel: 1 rank (a sub-communicator) and all ranks agree within
 *    1e-4 relative after 8 steps. */
#include "ml_test.h"

#include <math.h>

#include "../train/train_fixture.h"
#include "mergelens/interop.h"
#include "mergelens/peft.h"

#define tf_lora(comm, ...) tf_run(ml_cmd_lora, comm, "lora", __VA_ARGS__)

static int rank, nranks;
static char dir[1024], stores[2][1200], host_a[1200], host_b[1200], host_c[1200], ad_lora[1200], ad_ia3[1200];
#define LORA_OPTS "--context 16 --global_batch 4 --eval_batch 8 --eval_batches 4 --lr 1e-2"

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *names[2] = {"alpha", "beta"};
    const int64_t ntrain[2] = {4000, 4000}, nval[2] = {600, 600};
    int rc = tf_setup_stores("peft_port", dir, sizeof dir, 2, names, ntrain, nval, stores);
    snprintf(host_a, sizeof host_a, "%s/host_a.h5", dir);
    snprintf(host_b, sizeof host_b, "%s/host_b.h5", dir);
    snprintf(host_c, sizeof host_c, "%s/host_c.h5", dir);
    snprintf(ad_lora, sizeof ad_lora, "%s/lora.h5", dir);
    snprintf(ad_ia3, sizeof ad_ia3, "%s/ia3.h5", dir);
    /* two hosts of one shape (different seeds), one of another shape; trained on alpha */
    if (!rc) rc = tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --global_batch 4 --steps 30 --lr 1e-2 --seed 1 --eval false", stores[0], host_a);
    if (!rc) rc = tf_train(MPI_COMM_WORLD, "--domains %s --out %s " TF_SHAPE " --global_batch 4 --steps 30 --lr 1e-2 --seed 2 --eval false", stores[0], host_b);
    if (!rc) rc = tf_train(MPI_COMM_WORLD, "--domains %s --out %s --d_model 32 --d_mlp 48 --n_heads 4 --n_kv_heads 2 --context 16 --global_batch 4 --steps 2 --eval false", stores[0], host_c);
    /* adapters learn the beta domain */
    if (!rc) rc = tf_lora(MPI_COMM_WORLD, "train --host %s --domains %s --out %s --r 4 --alpha 8 --targets q_proj,v_proj,gate_proj --steps 30 " LORA_OPTS, host_a, stores[1], ad_lora);
    if (!rc) rc = tf_lora(MPI_COMM_WORLD, "train --host %s --domains %s --out %s --method ia3 --steps 30 " LORA_OPTS, host_a, stores[1], ad_ia3);
    if (rc) ml_error_print(stderr, 1);
    return rc;
}

static double *read_f64(const char *path, const char *name, int64_t *n) {
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, path, NULL, 1, 1, &h));
    int r = 0;
    hsize_t d[ML_H5_MAX_RANK];
    ML_ASSERT_OK(ml_h5_shape(h, name, &r, d, NULL));
    int64_t total = 1;
    for (int i = 0; i < r; i++) total *= (int64_t)d[i];
    double *v = malloc(sizeof *v * (size_t)total);
    ML_ASSERT_OK(ml_h5_read_tensor(h, name, ML_F64, 0, NULL, v));
    ml_h5_close(&h);
    *n = total;
    return v;
}

static void test_train_learns(void **s) {
    (void)s;
    int64_t n = 0;
    double *loss = read_f64(ad_lora, "/train/log/loss", &n);
    assert_int_equal(n, 30);
    print_message("lora train loss %.4f -> %.4f\n", loss[0], loss[n - 1]);
    assert_true(loss[n - 1] < loss[0] - 0.3);
    free(loss);
    char *m = tf_attr_str(ad_ia3, "/", "method");
    assert_string_equal(m, "ia3");
    ml_free(m);
    char *b = tf_attr_str(ad_lora, "/", "base_model");
    assert_string_equal(b, host_a);
    ml_free(b);
}

static void test_port_table(void **s) {
    (void)s;
    char out[1300];
    snprintf(out, sizeof out, "%s/port.h5", dir);
    const long live0 = ml_alloc_live();
    ML_ASSERT_OK(tf_lora(MPI_COMM_WORLD, "port --adapters %s,%s --hosts %s,%s --domains %s --seeds 1,2 --steps 3 " LORA_OPTS " --out %s",
                         ad_lora, ad_ia3, host_a, host_b, stores[1], out));
    assert_int_equal(ml_alloc_live(), live0);
    const int64_t R = 2 * 2 * 3 * 2 * 2;
    int64_t n = 0, K = 1;
    double *loss = read_f64(out, "/results/loss", &n);
    assert_int_equal(n, R * K);
    int32_t adapter[R], cond[R], target[R], method[R];
    int64_t step[R];
    assert_int_equal(tf_read_col(out, "/results/adapter", ML_I32, adapter, R), R);
    assert_int_equal(tf_read_col(out, "/results/condition", ML_I32, cond, R), R);
    assert_int_equal(tf_read_col(out, "/results/target", ML_I32, target, R), R);
    assert_int_equal(tf_read_col(out, "/results/method", ML_I32, method, R), R);
    assert_int_equal(tf_read_col(out, "/results/step", ML_I64, step, R), R);
    double *src = read_f64(out, "/sources/loss", &n), *hostl = read_f64(out, "/hosts/loss", &n);
    double *own = read_f64(ad_lora, "/eval/loss", &n);
    assert_true(src[0] == own[0]); /* the adapter's /eval copied */
    int seen_port = 0, seen_scratch = 0;
    for (int64_t i = 0; i < R; i++) {
        assert_int_equal(method[i], adapter[i]); /* lora first, ia3 second */
        if (step[i] != 0) {
            assert_int_equal(step[i], 3);
            continue;
        }
        if (cond[i] == 0 && target[i] == 0) { /* ported to the identical host: the original evaluation exactly */
            if (loss[i] != src[adapter[i]]) fail_msg("row %lld: ported %.17g != original %.17g", (long long)i, loss[i], src[adapter[i]]);
            seen_port++;
        }
        if (cond[i] == 1) { /* scratch: the host itself */
            if (loss[i] != hostl[target[i]]) fail_msg("row %lld: scratch %.17g != host %.17g", (long long)i, loss[i], hostl[target[i]]);
            seen_scratch++;
        }
    }
    assert_int_equal(seen_port, 4);
    assert_int_equal(seen_scratch, 8);
    /* the adapter helps on its own host, and zero-shot on the other host it beats the controls' mean */
    print_message("beta loss: host_a %.4f, host_b %.4f, lora on a %.4f, ia3 on a %.4f\n", hostl[0], hostl[1], src[0], src[1]);
    assert_true(src[0] < hostl[0] - 0.2);
    char *conds = tf_attr_str(out, "/", "conditions");
    assert_string_equal(conds, "[\"ported\",\"scratch\",\"sampled\"]");
    ml_free(conds);
    assert_int_equal(tf_attr_int(out, "/", "complete"), 1);
    free(loss);
    free(src);
    free(hostl);
    free(own);
}

static void test_merge_export(void **s) {
    (void)s;
    char merged[1300], exp[1300], st_path[1400];
    snprintf(merged, sizeof merged, "%s/merged.h5", dir);
    snprintf(exp, sizeof exp, "%s/peft_export", dir);
    ML_ASSERT_OK(tf_lora(MPI_COMM_WORLD, "merge %s --out %s", ad_lora, merged));
    ML_ASSERT_OK(tf_lora(MPI_COMM_WORLD, "export %s %s", ad_lora, exp));
    ml_model *h = tf_model(host_a), *m = tf_model(merged);
    ml_adapter *a = NULL;
    ML_ASSERT_OK(ml_adapter_load(MPI_COMM_SELF, ad_lora, &a));
    assert_non_null(h);
    assert_non_null(m);
    double worst = 0;
    for (int ti = 0; ti < h->n_tensors; ti++) {
        const ml_tensor *t = &h->tensors[ti];
        const ml_peft_target *tg = NULL;
        for (int k = 0; k < a->n_targets; k++) {
            char want[96];
            snprintf(want, sizeof want, "%s.weight", a->tg[k].module);
            if (!strcmp(want, t->name)) tg = &a->tg[k];
        }
        for (int64_t i = 0; i < (int64_t)t->numel; i++) {
            double ref = h->params[t->offset + i];
            if (tg) {
                const int64_t o = i / tg->in, j = i % tg->in;
                const float *A = a->view.params + a->view.tensors[tg->first].offset;
                const float *B = a->view.params + a->view.tensors[tg->first + 1].offset;
                for (int k = 0; k < a->r; k++) ref += a->alpha / a->r * B[o * a->r + k] * A[k * tg->in + j];
            }
            double e = fabs(ref - m->params[t->offset + i]);
            if (e > worst) worst = e;
        }
    }
    print_message("lora merge vs naive: worst |error| %.3g\n", worst);
    assert_true(worst < 1e-5);
    /* export */
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", exp);
    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(st_path, &st));
    assert_int_equal(ml_safetensors_count(st), a->view.n_tensors);
    int idx = ml_safetensors_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    assert_true(idx >= 0);
    int nd = 0;
    const int64_t *shape = ml_safetensors_shape(st, idx, &nd);
    assert_int_equal(nd, 2);
    assert_int_equal(shape[0], 4);
    assert_int_equal(shape[1], 32);
    idx = ml_safetensors_find(st, "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight");
    assert_true(idx >= 0);
    shape = ml_safetensors_shape(st, idx, &nd);
    assert_int_equal(shape[0], 64);
    assert_int_equal(shape[1], 4);
    for (int i = 0; i < a->view.n_tensors; i++) {
        const ml_tensor *t = &a->view.tensors[i];
        float *buf = malloc(sizeof(float) * t->numel);
        ML_ASSERT_OK(ml_safetensors_read_f32(st, t->name, buf, t->numel));
        assert_memory_equal(buf, a->view.params + t->offset, sizeof(float) * t->numel);
        free(buf);
    }
    ml_safetensors_close(&st);
    char cfg_path[1400], text[4096] = "";
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", exp);
    FILE *f = fopen(cfg_path, "r");
    assert_non_null(f);
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    fclose(f);
    assert_non_null(strstr(text, "\"peft_type\": \"LORA\""));
    assert_non_null(strstr(text, "\"r\": 4"));
    assert_non_null(strstr(text, "\"lora_alpha\": 8"));
    assert_non_null(strstr(text, "\"gate_proj\""));
    assert_non_null(strstr(text, host_a));
    /* IA3: [out, 1] for attention, [1, in] for the MLP's down_proj (PEFT's feedforward_modules) */
    ML_ASSERT_OK(tf_lora(MPI_COMM_WORLD, "export %s %s_ia3", ad_ia3, exp));
    snprintf(st_path, sizeof st_path, "%s_ia3/adapter_model.safetensors", exp);
    ML_ASSERT_OK(ml_safetensors_open(st_path, &st));
    assert_int_equal(ml_safetensors_count(st), 3 * 1);
    shape = ml_safetensors_shape(st, ml_safetensors_find(st, "base_model.model.model.layers.0.self_attn.k_proj.ia3_l"), &nd);
    assert_true(nd == 2 && shape[0] == 16 && shape[1] == 1);
    shape = ml_safetensors_shape(st, ml_safetensors_find(st, "base_model.model.model.layers.0.mlp.down_proj.ia3_l"), &nd);
    assert_true(nd == 2 && shape[0] == 1 && shape[1] == 64);
    ml_safetensors_close(&st);
    snprintf(cfg_path, sizeof cfg_path, "%s_ia3/adapter_config.json", exp);
    f = fopen(cfg_path, "r");
    assert_non_null(f);
    got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    fclose(f);
    assert_non_null(strstr(text, "\"peft_type\": \"IA3\""));
    assert_non_null(strstr(text, "\"feedforward_modules\": [\n    \"down_proj\"\n  ]"));
    ml_adapter_destroy(&a);
    ml_model_destroy(&h);
    ml_model_destroy(&m);
}

static void test_bad_inputs(void **s) {
    (void)s;
    const long live0 = ml_alloc_live();
    char out[1300], broken[1300];
    snprintf(out, sizeof out, "%s/bad.h5", dir);
    ML_ASSERT_FAILS(tf_lora(MPI_COMM_WORLD, "port --adapters %s --hosts %s,%s --domains %s --steps 1 " LORA_OPTS " --out %s",
                            ad_lora, host_b, host_c, stores[1], out),
                    ML_ERR_SHAPE, "cannot port");
    assert_non_null(strstr(ml_error_message(), "host intermediate_size = 48 differs from the adapter's host (64); porting "
                                               "requires hosts of identical shapes"));
    assert_non_null(strstr(ml_error_message(), host_c));
    assert_int_equal(ml_file_exists(out), 0);
    /* an adapter file without one of its tensors */
    snprintf(broken, sizeof broken, "%s/broken.h5", dir);
    ml_adapter *a = NULL;
    ML_ASSERT_OK(ml_adapter_load(MPI_COMM_WORLD, ad_lora, &a));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, broken, ML_ADAPTER_FORMAT, 1, &h));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "method", "lora"));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "r", a->r));
    ML_ASSERT_OK(ml_h5_set_attr_double(h, "/", "lora_alpha", a->alpha));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "targets", a->targets));
    ML_ASSERT_OK(ml_model_config_save(h, &a->host));
    for (int i = 1; i < a->view.n_tensors; i++) { /* skip tensor 0 */
        const ml_tensor *t = &a->view.tensors[i];
        char p[200];
        hsize_t d[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        snprintf(p, sizeof p, "params/%s", t->name);
        if (i == 1) ML_ASSERT_OK(ml_h5_mkgroup(h, "params"));
        ML_ASSERT_OK(ml_h5_write_tensor(h, p, ML_F32, 2, d, a->view.params + t->offset));
    }
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_adapter *b = NULL;
    ML_ASSERT_FAILS(ml_adapter_load(MPI_COMM_WORLD, broken, &b), ML_ERR_FORMAT,
                    "tensor /params/base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is missing");
    assert_null(b);
    ML_ASSERT_FAILS(tf_lora(MPI_COMM_WORLD, "merge %s --host %s --out %s", broken, host_a, out), ML_ERR_FORMAT, "is missing");
    ML_ASSERT_FAILS(tf_lora(MPI_COMM_WORLD, "fly"), ML_ERR_ARG, "unknown subcommand 'fly'");
    ml_adapter_destroy(&a);
    assert_int_equal(ml_alloc_live(), live0); /* every failure path freed what it took */
}

/* One rank alone (its own communicator) and every rank: the same 8 steps. */
static void test_ranks_agree(void **s) {
    (void)s;
    char one[1300], all[1300];
    snprintf(one, sizeof one, "%s/ranks_one.h5", dir);
    snprintf(all, sizeof all, "%s/ranks_all.h5", dir);
    const char *fmt = "train --host %s --domains %s,%s --out %s --steps 8 --micro_batch 1 --targets q_proj,k_proj,down_proj " LORA_OPTS;
    if (rank == 0) ML_ASSERT_OK(tf_lora(MPI_COMM_SELF, fmt, host_a, stores[0], stores[1], one));
    MPI_Barrier(MPI_COMM_WORLD);
    ML_ASSERT_OK(tf_lora(MPI_COMM_WORLD, fmt, host_a, stores[0], stores[1], all));
    if (rank == 0) {
        ml_adapter *a = NULL, *b = NULL;
        ML_ASSERT_OK(ml_adapter_load(MPI_COMM_SELF, one, &a));
        ML_ASSERT_OK(ml_adapter_load(MPI_COMM_SELF, all, &b));
        double worst = 0, scale = 0;
        for (size_t i = 0; i < a->view.n_params; i++) {
            worst = fmax(worst, fabs((double)a->view.params[i] - b->view.params[i]));
            scale = fmax(scale, fabs((double)a->view.params[i]));
        }
        int64_t n = 0;
        double *l1 = read_f64(one, "/train/log/loss", &n), *l2 = read_f64(all, "/train/log/loss", &n);
        double lw = 0;
        for (int64_t i = 0; i < n; i++) lw = fmax(lw, fabs(l1[i] - l2[i]) / fabs(l1[i]));
        print_message("1 vs %d ranks: parameters max |diff| %.3g (max |p| %.3g), losses %.3g relative\n", nranks, worst,
                      scale, lw);
        assert_true(worst <= 1e-4 * scale);
        assert_true(lw <= 1e-4);
        free(l1);
        free(l2);
        ml_adapter_destroy(&a);
        ml_adapter_destroy(&b);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_train_learns, setup), cmocka_unit_test(test_port_table), cmocka_unit_test(test_merge_export),
        cmocka_unit_test(test_bad_inputs),   cmocka_unit_test(test_ranks_agree),
    };
    return ml_test_run(argc, argv, "peft_port", tests, sizeof tests / sizeof tests[0]);
}
