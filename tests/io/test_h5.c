/* io: parallel HDF5 layer (runs with 1, 2 and 4 ranks). */
#include <math.h>
#include <sys/stat.h>

#include "ml_test.h"
#include "mergelens/io.h"

static int rank_, size_;
static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    return 0;
}

static void test_rows_collective_roundtrip(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/rows.h5", ml_test_dir("io_rows"));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 3, &h));
    /* the final name must not exist until close */
    int exists = ml_file_exists(path);
    assert_int_equal(exists, 0);
    const hsize_t rows = 103, cols = 7; /* not divisible by the rank count */
    hsize_t dims[2] = {rows, cols};
    ml_h5_layout chunked = {.chunk_rows = 16, .compress = 4};
    ML_ASSERT_OK(ml_h5_create_dataset(h, "grp/sub/contig", ML_F32, 2, dims, NULL));
    ML_ASSERT_OK(ml_h5_create_dataset(h, "grp/chunked", ML_F32, 2, dims, &chunked));
    hsize_t start = rows * (hsize_t)rank_ / (hsize_t)size_, end = rows * (hsize_t)(rank_ + 1) / (hsize_t)size_;
    float *buf = ml_malloc(sizeof(float) * rows * cols);
    for (hsize_t r = start; r < end; r++)
        for (hsize_t c = 0; c < cols; c++) buf[(r - start) * cols + c] = (float)(r * 1000 + c) + 0.25f;
    ML_ASSERT_OK(ml_h5_write_rows(h, "grp/sub/contig", ML_F32, start, end - start, buf));
    assert_int_not_equal(ml_h5_last_io_mode(), H5D_MPIO_NO_COLLECTIVE);
    ML_ASSERT_OK(ml_h5_write_rows(h, "grp/chunked", ML_F32, start, end - start, buf));
    assert_int_not_equal(ml_h5_last_io_mode(), H5D_MPIO_NO_COLLECTIVE);
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "grp", "note", "héllo"));
    ML_ASSERT_OK(ml_h5_set_attr_double(h, "/", "pi", 3.25));
    ML_ASSERT_OK(ml_h5_write_string(h, "config_json", "{\"a\": 1}"));
    ML_ASSERT_OK(ml_h5_close(&h));
    assert_null(h);
    assert_true(ml_file_exists(path));

    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 3, &h));
    assert_int_equal(ml_h5_format_version(h), 3);
    float *all = ml_malloc(sizeof(float) * rows * cols);
    const char *names[2] = {"grp/sub/contig", "grp/chunked"};
    for (int k = 0; k < 2; k++) {
        memset(all, 0, sizeof(float) * rows * cols);
        ML_ASSERT_OK(ml_h5_read_rows(h, names[k], ML_F32, 0, rows, all));
        for (hsize_t r = 0; r < rows; r++)
            for (hsize_t c = 0; c < cols; c++) assert_true(all[r * cols + c] == (float)(r * 1000 + c) + 0.25f);
    }
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "grp", "note", &s));
    assert_string_equal(s, "héllo");
    ml_free(s);
    ML_ASSERT_OK(ml_h5_read_string(h, "config_json", &s));
    assert_string_equal(s, "{\"a\": 1}");
    ml_free(s);
    double pi = 0;
    ML_ASSERT_OK(ml_h5_get_attr_double(h, "/", "pi", &pi));
    assert_true(pi == 3.25);
    char **list = NULL;
    int n = 0;
    ML_ASSERT_OK(ml_h5_list(h, "grp", 1, &list, &n));
    assert_int_equal(n, 2);
    assert_string_equal(list[0], "chunked");
    assert_string_equal(list[1], "sub/contig");
    ml_h5_free_names(list, n);
    /* wrong shape and wrong type are errors naming the tensor */
    hsize_t wrong[2] = {rows, cols + 1};
    ML_ASSERT_FAILS(ml_h5_read_tensor(h, "grp/chunked", ML_F32, 2, wrong, all), ML_ERR_SHAPE,
                    "tensor 'grp/chunked' has shape [103, 7], expected [103, 8]");
    ML_ASSERT_FAILS(ml_h5_read_rows(h, "grp/chunked", ML_I32, 0, 1, all), ML_ERR_FORMAT, "holds float32");
    ML_ASSERT_FAILS(ml_h5_read_rows(h, "grp/chunked", ML_F32, 100, 4, all), ML_ERR_SHAPE, "outside its 103 rows");
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_free(all);
    ml_free(buf);
}

/* Empty tensors ([0, n], as a tracking file's traces with no chain) write and read back on every rank. */
static void test_empty_tensor(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/empty.h5", ml_test_dir("io_empty"));
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
    hsize_t dims[2] = {0, 3};
    ML_ASSERT_OK(ml_h5_write_tensor(h, "traces/features", ML_I32, 2, dims, NULL));
    ML_ASSERT_OK(ml_h5_close(&h));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 1, &h));
    int rank = 0;
    hsize_t got[ML_H5_MAX_RANK];
    ML_ASSERT_OK(ml_h5_shape(h, "traces/features", &rank, got, NULL));
    assert_int_equal(rank, 2);
    assert_int_equal(got[0], 0);
    assert_int_equal(got[1], 3);
    ML_ASSERT_OK(ml_h5_read_tensor(h, "traces/features", ML_I32, 2, dims, NULL));
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void test_open_validation(void **state) {
    (void)state;
    const char *dir = ml_test_dir("io_validate");
    char good[1200], junk[1200], trunc[1200], missing[1200];
    snprintf(good, sizeof good, "%s/good.h5", dir);
    snprintf(junk, sizeof junk, "%s/junk.h5", dir);
    snprintf(trunc, sizeof trunc, "%s/trunc.h5", dir);
    snprintf(missing, sizeof missing, "%s/missing.h5", dir);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, good, "mergelens.checkpoint", 1, &h));
    hsize_t dims[1] = {5000};
    float *z = ml_calloc(5000, sizeof(float));
    ML_ASSERT_OK(ml_h5_write_tensor(h, "params/x", ML_F32, 1, dims, z));
    ml_free(z);
    ML_ASSERT_OK(ml_h5_close(&h));
    if (rank_ == 0) {
        FILE *f = fopen(junk, "w");
        fputs("this is not hdf5\n", f);
        fclose(f);
        /* a truncated copy of a valid file */
        FILE *in = fopen(good, "rb"), *out = fopen(trunc, "wb");
        char b[4096];
        size_t n = fread(b, 1, sizeof b, in);
        fwrite(b, 1, n / 2, out);
        fclose(in);
        fclose(out);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    ML_ASSERT_FAILS(ml_h5_open(MPI_COMM_WORLD, good, "mergelens.sae", 1, 1, &h), ML_ERR_FORMAT,
                    "is a 'mergelens.checkpoint' file, expected 'mergelens.sae'");
    assert_null(h);
    ML_ASSERT_FAILS(ml_h5_open(MPI_COMM_WORLD, good, "mergelens.checkpoint", 2, 3, &h), ML_ERR_FORMAT,
                    "format_version 1 is not supported (this build reads 2..3)");
    ML_ASSERT_FAILS(ml_h5_open(MPI_COMM_WORLD, junk, NULL, 1, 1, &h), ML_ERR_FORMAT, "not a readable HDF5 file");
    ML_ASSERT_FAILS(ml_h5_open(MPI_COMM_WORLD, trunc, NULL, 1, 1, &h), ML_ERR_FORMAT, "not a readable HDF5 file");
    ML_ASSERT_FAILS(ml_h5_open(MPI_COMM_WORLD, missing, NULL, 1, 1, &h), ML_ERR_IO, "No such file");
    assert_int_equal(ml_alloc_live(), 0);
}

static void test_discard_leaves_nothing(void **state) {
    (void)state;
    const char *dir = ml_test_dir("io_discard");
    char path[1200];
    snprintf(path, sizeof path, "%s/out.h5", dir);
    /* an existing complete output must survive a failed rewrite */
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "generation", 1));
    ML_ASSERT_OK(ml_h5_close(&h));
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "generation", 2));
    ml_h5_discard(&h);
    assert_null(h);
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 1, &h));
    int64_t g = 0;
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "generation", &g));
    assert_int_equal(g, 1);
    ML_ASSERT_OK(ml_h5_close(&h));
    /* no temporary files are left behind */
    if (rank_ == 0) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp > /dev/null", dir);
        assert_int_not_equal(system(cmd), 0);
    }
}

static void test_alloc_failures_free_everything(void **state) {
    (void)state;
    if (size_ != 1) skip(); /* injection on one rank would desynchronise collectives */
    const char *dir = ml_test_dir("io_nomem");
    char path[1200];
    snprintf(path, sizeof path, "%s/a.h5", dir);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
    ML_ASSERT_OK(ml_h5_set_attr_str(h, "/", "s", "v"));
    ML_ASSERT_OK(ml_h5_close(&h));
    long base = ml_alloc_live();
    int failures = 0;
    for (long n = 1; n < 200; n++) {
        ml_alloc_fail_at(n);
        int rc = ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 1, &h);
        char *s = NULL;
        if (rc == ML_OK) rc = ml_h5_get_attr_str(h, "/", "s", &s);
        ml_free(s);
        ml_h5_close(&h);
        ml_alloc_fail_at(0);
        assert_int_equal(ml_alloc_live(), base);
        if (rc == ML_OK) break;
        assert_int_equal(rc, ML_ERR_NOMEM);
        failures++;
    }
    assert_true(failures >= 3);
}


/* Raw pread/pwrite transfers give the same bytes as HDF5's own data path,
 * both ways, for contiguous float32 / float16 / int64 datasets; chunked
 * datasets take HDF5's path. Writes are independent (each rank its rows). */
static void test_raw_transfers_match_hdf5(void **state) {
    (void)state;
    const hsize_t rows = 37, cols = 5;
    const char *names[4] = {"f32", "f16", "i64", "chunked"};
    const ml_dtype types[4] = {ML_F32, ML_F16, ML_I64, ML_F32};
    float *f32 = ml_malloc(sizeof(float) * rows * cols), *back = ml_malloc(sizeof(int64_t) * rows * cols); /* the widest type */
    uint16_t *f16 = ml_malloc(sizeof(uint16_t) * rows * cols);
    int64_t *i64 = ml_malloc(sizeof(int64_t) * rows * cols);
    for (hsize_t i = 0; i < rows * cols; i++) {
        f32[i] = (float)i * 0.37f - 3.0f;
        f16[i] = (uint16_t)(i * 2654435761u >> 16);
        i64[i] = (int64_t)i * 1000003 - 77;
    }
    const void *src[4] = {f32, f16, i64, f32};
    for (int write_raw = 0; write_raw < 2; write_raw++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/raw%d.h5", ml_test_dir("io_raw"), write_raw);
        ml_h5 *h = NULL;
        ml_h5_set_raw_io(write_raw);
        int64_t raw0 = ml_h5_raw_transfer_count();
        ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
        hsize_t dims[2] = {rows, cols};
        ml_h5_layout chunked = {.chunk_rows = 8};
        for (int k = 0; k < 4; k++)
            ML_ASSERT_OK(ml_h5_create_dataset(h, names[k], types[k], 2, dims, k == 3 ? &chunked : NULL));
        /* rank r writes the rows i with i mod P == r, one call each, independently */
        for (int k = 0; k < 4; k++)
            for (hsize_t r = (hsize_t)rank_; r < rows; r += (hsize_t)size_)
                ML_ASSERT_OK(ml_h5_write_rows_independent(h, names[k], types[k], r, 1,
                                                          (const char *)src[k] + r * cols * ml_dtype_size(types[k])));
        /* raw writes: the 3 contiguous datasets' rows of this rank (chunked goes through HDF5) */
        int64_t mine = (int64_t)((rows - (hsize_t)rank_ + (hsize_t)size_ - 1) / (hsize_t)size_);
        assert_int_equal(ml_h5_raw_transfer_count() - raw0, write_raw ? 3 * mine : 0);
        ML_ASSERT_OK(ml_h5_close(&h));
        for (int read_raw = 0; read_raw < 2; read_raw++) {
            ml_h5_set_raw_io(read_raw);
            raw0 = ml_h5_raw_transfer_count();
            ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 1, &h));
            for (int k = 0; k < 4; k++) {
                size_t es = ml_dtype_size(types[k]);
                /* the whole dataset, then rows [3, 3 + 11) */
                memset(back, 0xAB, sizeof(int64_t) * rows * cols);
                ML_ASSERT_OK(ml_h5_read_rows(h, names[k], types[k], 0, rows, back));
                assert_memory_equal(back, src[k], rows * cols * es);
                ML_ASSERT_OK(ml_h5_read_rows_independent(h, names[k], types[k], 3, 11, back));
                assert_memory_equal(back, (const char *)src[k] + 3 * cols * es, 11 * cols * es);
            }
            assert_int_equal(ml_h5_raw_transfer_count() - raw0, read_raw ? 2 * 3 : 0);
            ML_ASSERT_OK(ml_h5_close(&h));
        }
    }
    ml_h5_set_raw_io(1);
    ml_free(f32);
    ml_free(back);
    ml_free(f16);
    ml_free(i64);
}

/* A file replaced by rename after it was opened (a second writer, a periodic
 * checkpoint) must still be read as the version that was opened: the raw
 * path may never reopen the file by name (issue #17 item 1). */
static void write_version(const char *path, float value) {
    ml_h5 *h = NULL;
    hsize_t dims[1] = {64};
    float v[64];
    for (int i = 0; i < 64; i++) v[i] = value + (float)i;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_WORLD, path, "mergelens.test", 1, &h));
    ML_ASSERT_OK(ml_h5_create_dataset(h, "x", ML_F32, 1, dims, NULL));
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "version_value", (int64_t)value));
    ML_ASSERT_OK(ml_h5_write_rows(h, "x", ML_F32, 0, rank_ == 0 ? 64 : 0, v));
    ML_ASSERT_OK(ml_h5_close(&h));
}

static void test_replaced_file_reads_opened_version(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/replaced.h5", ml_test_dir("io_replaced"));
    for (int raw = 0; raw < 2; raw++) {
        ml_h5_set_raw_io(raw);
        write_version(path, 100.0f);
        ml_h5 *h = NULL;
        ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.test", 1, 1, &h));
        write_version(path, 900.0f); /* renamed over the open file: a new inode */
        int64_t attr = 0;
        ML_ASSERT_OK(ml_h5_get_attr_int(h, "/", "version_value", &attr));
        assert_int_equal(attr, 100);
        float back[64];
        ML_ASSERT_OK(ml_h5_read_rows(h, "x", ML_F32, 0, 64, back));
        for (int i = 0; i < 64; i++) assert_true(back[i] == 100.0f + (float)i);
        ML_ASSERT_OK(ml_h5_read_rows_independent(h, "x", ML_F32, 5, 3, back));
        assert_true(back[0] == 105.0f);
        const void *map = NULL;
        int64_t bytes = 0;
        if (ml_h5_map_dataset(h, "x", ML_F32, &map, &bytes) == ML_OK) {
            assert_int_equal(bytes, 64 * 4);
            assert_true(((const float *)map)[7] == 107.0f);
        }
        ML_ASSERT_OK(ml_h5_close(&h));
    }
    ml_h5_set_raw_io(1);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_rows_collective_roundtrip, setup),
        cmocka_unit_test_setup(test_empty_tensor, setup),
        cmocka_unit_test_setup(test_raw_transfers_match_hdf5, setup),
        cmocka_unit_test_setup(test_replaced_file_reads_opened_version, setup),
        cmocka_unit_test_setup(test_open_validation, setup),
        cmocka_unit_test_setup(test_discard_leaves_nothing, setup),
        cmocka_unit_test_setup(test_alloc_failures_free_everything, setup),
    };
    return ml_test_run(argc, argv, "io_h5", tests, sizeof tests / sizeof tests[0]);
}
