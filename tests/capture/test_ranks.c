/* Rank-count independence: captures written by communicators of 1, 2 and 4
 * ranks (sub-communicators of the world) hold identical datasets and
 * attributes, for float32 and float16 storage, and the row writes were
 * collective. */
#include "fixtures.h"

static const char *ROOT_ATTRS[] = {"format", "model", "domains", "domain_names", "hooks", "split", "order", "dtype"}; /* config differs: it names --out */
static const char *ROOT_INTS[] = {"format_version", "n_tokens", "n_windows", "context", "seed"};

/* Every dataset (outside /profile) and the root attributes of b equal those of a. */
static void compare_files(const char *pa, const char *pb) {
    ml_h5 *a = NULL, *b = NULL;
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pa, ML_CAPTURE_FORMAT, 1, 1, &a));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_SELF, pb, ML_CAPTURE_FORMAT, 1, 1, &b));
    char **na = NULL, **nb = NULL;
    int ca = 0, cb = 0, compared = 0;
    ML_ASSERT_OK(ml_h5_list(a, "/", 1, &na, &ca));
    ML_ASSERT_OK(ml_h5_list(b, "/", 1, &nb, &cb));
    assert_int_equal(ca, cb);
    for (int i = 0; i < ca; i++) {
        assert_string_equal(na[i], nb[i]);
        if (!strncmp(na[i], "profile", 7)) continue;
        char name[512];
        snprintf(name, sizeof name, "/%s", na[i]);
        int ra, rb;
        hsize_t da[ML_H5_MAX_RANK], db[ML_H5_MAX_RANK];
        ml_dtype ta, tb;
        ML_ASSERT_OK(ml_h5_shape(a, name, &ra, da, &ta));
        ML_ASSERT_OK(ml_h5_shape(b, name, &rb, db, &tb));
        assert_int_equal(ra, rb);
        assert_int_equal(ta, tb);
        size_t n = ml_dtype_size(ta);
        for (int k = 0; k < ra; k++) {
            assert_int_equal(da[k], db[k]);
            n *= da[k];
        }
        void *xa = malloc(n), *xb = malloc(n);
        ML_ASSERT_OK(ml_h5_read_rows(a, name, ta, 0, da[0], xa));
        ML_ASSERT_OK(ml_h5_read_rows(b, name, tb, 0, db[0], xb));
        if (memcmp(xa, xb, n)) fail_msg("%s differs between %s and %s", name, pa, pb);
        free(xa);
        free(xb);
        compared++;
    }
    assert_true(compared >= 6);
    for (size_t k = 0; k < sizeof ROOT_ATTRS / sizeof *ROOT_ATTRS; k++) {
        char *x = NULL, *y = NULL;
        ML_ASSERT_OK(ml_h5_get_attr_str(a, "/", ROOT_ATTRS[k], &x));
        ML_ASSERT_OK(ml_h5_get_attr_str(b, "/", ROOT_ATTRS[k], &y));
        assert_string_equal(x, y);
        ml_free(x);
        ml_free(y);
    }
    for (size_t k = 0; k < sizeof ROOT_INTS / sizeof *ROOT_INTS; k++) {
        int64_t x, y;
        ML_ASSERT_OK(ml_h5_get_attr_int(a, "/", ROOT_INTS[k], &x));
        ML_ASSERT_OK(ml_h5_get_attr_int(b, "/", ROOT_INTS[k], &y));
        assert_int_equal(x, y);
    }
    ml_h5_free_names(na, ca);
    ml_h5_free_names(nb, cb);
    ML_ASSERT_OK(ml_h5_close(&a));
    ML_ASSERT_OK(ml_h5_close(&b));
}

static void test_ranks(void **state) {
    (void)state;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *dir = ml_test_dir("capture_ranks");
    char a[1100], b[1100], ckpt[1100], doms[2300];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    snprintf(ckpt, sizeof ckpt, "%s/model.h5", dir);
    snprintf(doms, sizeof doms, "%s,%s", a, b);
    fx_store_write(MPI_COMM_WORLD, a, "alpha", 40, 30, 6, 11, 0, NULL);
    fx_store_write(MPI_COMM_WORLD, b, "beta", 40, 25, 6, 12, 1, NULL);
    fx_model_write(MPI_COMM_WORLD, ckpt, 9, 1, NULL);
    const char *dtypes[2] = {"float32", "float16"};
    const int ks[3] = {1, 2, 4};
    for (int di = 0; di < 2; di++) {
        for (int ki = 0; ki < 3; ki++) {
            const int k = ks[ki];
            if (k > size || size % k) continue;
            MPI_Comm sub;
            MPI_Comm_split(MPI_COMM_WORLD, rank / k, rank, &sub);
            char out[1200];
            snprintf(out, sizeof out, "%s/%s_k%d_g%d.h5", dir, dtypes[di], k, rank / k);
            /* 211 tokens = 26 windows of 8 + 3 rows; 14 batches of 2 windows; weights 2:1 */
            const char *args[] = {"capture", ckpt, "--domains", doms, "--weights", "2,1", "--tokens", "211",
                                  "--hook",
                                  "blocks.0.mlp.hook_post,blocks.1.hook_resid_pre,blocks.1.hook_resid_mid,"
                                  "blocks.1.hook_resid_post,blocks.0.hook_attn_out",
                                  "--out", out, "--context", "8", "--batch", "2", "--chunk_rows", "24", "--dtype",
                                  dtypes[di], "--seed", "17", NULL};
            ML_ASSERT_OK(fx_cmd(ml_cmd_capture, sub, args));
            if (k > 1) assert_int_not_equal(ml_h5_last_io_mode(), H5D_MPIO_NO_COLLECTIVE);
            MPI_Comm_free(&sub);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            char ref[1200], other[1200];
            snprintf(ref, sizeof ref, "%s/%s_k1_g0.h5", dir, dtypes[di]);
            for (int ki = 0; ki < 3; ki++) {
                if (ks[ki] > size || size % ks[ki]) continue;
                for (int g = 0; g < size / ks[ki]; g++) {
                    if (ks[ki] == 1 && g == 0) continue;
                    snprintf(other, sizeof other, "%s/%s_k%d_g%d.h5", dir, dtypes[di], ks[ki], g);
                    compare_files(ref, other);
                }
            }
            printf("capture ranks: %s files of 1..%d ranks identical\n", dtypes[di], size);
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ranks)};
    return ml_test_run(argc, argv, "capture_ranks", tests, 1);
}
