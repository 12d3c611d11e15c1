/* safetensors reader/writer: a file assembled byte by byte is read correctly,
 * the writer produces the exact expected bytes, every dtype round trips, and
 * malformed files fail with messages naming the file and the tensor. */
#include <dirent.h>
#include <math.h>

#include "ml_test.h"
#include "mergelens/interop.h"

static const char *test_dir(void) {
    static char dir[1024];
    if (!dir[0]) snprintf(dir, sizeof dir, "%s", ml_test_dir("interop_safetensors"));
    return dir;
}

static void path_of(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", test_dir(), name); }

/* [u64 LE hlen][header (strlen bytes)][data] written without the library. */
static void assemble(const char *path, uint64_t hlen, const char *header, const uint8_t *data, size_t ndata) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 8; i++) fputc((int)((hlen >> (8 * i)) & 0xFF), f);
    fwrite(header, 1, strlen(header), f);
    if (ndata) fwrite(data, 1, ndata, f);
    fclose(f);
}

static size_t slurp(const char *path, uint8_t *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* ---- a file made by hand --------------------------------------------------- */
static const char hand_header[] = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"hand made\"},\n"
                                  " \"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},\n"
                                  " \"half\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]},\n"
                                  " \"brain\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[30,32]},\n"
                                  " \"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[32,48]},\n"
                                  " \"count\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[48,52]},\n"
                                  " \"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[52,52]}}";
static const uint8_t hand_data[52] = {
    0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0xBF,                         /* 1, 2, -0.5 */
    0x00, 0x00, 0x80, 0x3E, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0xC0,                         /* 0.25, 3, -4 */
    0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38,                                                             /* f16 1, -2, 0.5 */
    0xC0, 0xBF,                                                                                     /* bf16 -1.5 */
    0x07, 0,    0,    0,    0,    0,    0,    0,    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, /* i64 7, -1 */
    0x40, 0xE2, 0x01, 0x00,                                                                         /* i32 123456 */
};

static void test_read_hand_made(void **state) {
    (void)state;
    char p[1024];
    path_of(p, sizeof p, "hand.safetensors");
    assemble(p, strlen(hand_header), hand_header, hand_data, sizeof hand_data);
    long live = ml_alloc_live();
    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(p, &st));
    assert_int_equal(ml_safetensors_count(st), 6);
    const char *names[] = {"brain", "count", "empty", "half", "ids", "weight"};
    const ml_st_dtype types[] = {ML_ST_BF16, ML_ST_I32, ML_ST_F32, ML_ST_F16, ML_ST_I64, ML_ST_F32};
    const int ndims[] = {0, 2, 2, 1, 1, 2};
    const size_t numels[] = {1, 1, 0, 3, 2, 6};
    for (int i = 0; i < 6; i++) {
        assert_string_equal(ml_safetensors_name(st, i), names[i]);
        assert_int_equal(ml_safetensors_find(st, names[i]), i);
        assert_int_equal(ml_safetensors_dtype(st, i), types[i]);
        int nd;
        ml_safetensors_shape(st, i, &nd);
        assert_int_equal(nd, ndims[i]);
        assert_int_equal(ml_safetensors_numel(st, i), numels[i]);
    }
    assert_int_equal(ml_safetensors_find(st, "nope"), -1);
    int nd;
    const int64_t *sh = ml_safetensors_shape(st, 5, &nd);
    assert_int_equal(sh[0], 2);
    assert_int_equal(sh[1], 3);
    sh = ml_safetensors_shape(st, 2, &nd);
    assert_int_equal(sh[0], 0);
    assert_int_equal(sh[1], 4);

    float w[6], h[3], b;
    const float w_ref[6] = {1, 2, -0.5f, 0.25f, 3, -4};
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "weight", w, 6));
    for (int i = 0; i < 6; i++) assert_true(w[i] == w_ref[i]);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "half", h, 3)); /* data at odd header offset: unaligned */
    assert_true(h[0] == 1.0f && h[1] == -2.0f && h[2] == 0.5f);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "brain", &b, 1));
    assert_true(b == -1.5f);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "empty", NULL, 0));
    int64_t ids[2];
    int32_t count;
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "ids", ids, sizeof ids));
    assert_true(ids[0] == 7 && ids[1] == -1);
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "count", &count, sizeof count));
    assert_int_equal(count, 123456);
    size_t nb;
    const uint8_t *raw = ml_safetensors_data(st, 3, &nb);
    assert_int_equal(nb, 6);
    assert_memory_equal(raw, hand_data + 24, 6);

    assert_int_equal(ml_safetensors_metadata_count(st), 2);
    assert_string_equal(ml_safetensors_metadata(st, "format"), "pt");
    assert_string_equal(ml_safetensors_metadata(st, "note"), "hand made");
    assert_null(ml_safetensors_metadata(st, "absent"));

    /* errors on a valid file: wrong count, wrong dtype, missing tensor */
    ML_ASSERT_FAILS(ml_safetensors_read_f32(st, "weight", w, 5), ML_ERR_SHAPE,
                    "tensor 'weight' has 6 elements (shape [2, 3]), expected 5");
    ML_ASSERT_FAILS(ml_safetensors_read_f32(st, "ids", w, 2), ML_ERR_FORMAT,
                    "tensor 'ids' has dtype I64, expected a float dtype");
    ML_ASSERT_FAILS(ml_safetensors_read_f32(st, "zz", w, 1), ML_ERR_NOTFOUND, "hand.safetensors: no tensor 'zz'");
    ML_ASSERT_FAILS(ml_safetensors_read_raw(st, "ids", ids, 8), ML_ERR_SHAPE, "holds 16 bytes, expected 8");
    ml_safetensors_close(&st);
    assert_null(st);
    ml_safetensors_close(&st); /* tolerates NULL */
    assert_int_equal(ml_alloc_live(), live);
}

/* ---- the writer's exact bytes ------------------------------------------------ */
static void test_write_exact_bytes(void **state) {
    (void)state;
    char p[1024];
    path_of(p, sizeof p, "exact.safetensors");
    const float v[2] = {1.0f, 2.0f};
    ml_st_tensor t = {.name = "w", .dtype = ML_ST_F32, .ndim = 1, .shape = {2}, .data = v};
    const char *meta[] = {"format", "pt"};
    ML_ASSERT_OK(ml_safetensors_write(p, 1, &t, 1, meta));
    /* header is 85 bytes, padded with 3 spaces to 88 */
    const char *hdr =
        "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    assert_int_equal(strlen(hdr), 85);
    uint8_t expect[104] = {88, 0, 0, 0, 0, 0, 0, 0};
    memcpy(expect + 8, hdr, 85);
    memset(expect + 93, ' ', 3);
    const uint8_t data[8] = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40};
    memcpy(expect + 96, data, 8);
    uint8_t got[256];
    size_t n = slurp(p, got, sizeof got);
    assert_int_equal(n, 104);
    assert_memory_equal(got, expect, 104);

    /* no metadata: no __metadata__ key; 54 header bytes pad to 56 */
    ML_ASSERT_OK(ml_safetensors_write(p, 1, &t, 0, NULL));
    n = slurp(p, got, sizeof got);
    assert_int_equal(n, 8 + 56 + 8);
    assert_int_equal(got[0], 56);
    assert_int_equal(got[8], '{'); /* then the tensor entry */
    assert_memory_equal(got + 9, hdr + 32, 53);
}

/* ---- every dtype round trips; layout follows the reference library ---------- */
static void test_round_trip_all_dtypes(void **state) {
    (void)state;
    char p[1024];
    path_of(p, sizeof p, "mixed.safetensors");
    const float f32[6] = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f};
    const float tofp16[5] = {1.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 70000.0f, 0x1p-25f};
    const uint16_t fp16_bits[5] = {0x3C00, 0x3C00, 0x3C02, 0x7C00, 0x0000};
    const float tobf16[4] = {1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -3.0e38f};
    const uint16_t bf16_bits[4] = {0x3F80, 0x3F80, 0x3F82, 0xFF62};
    const uint16_t raw16[3] = {0x3C00, 0xC000, 0x7E00};
    const float odd[3] = {0.1f, 0.2f, 0.3f};
    const int32_t i32[4] = {1, -2, 2147483647, -2147483647 - 1};
    const int64_t i64[3] = {INT64_MAX, -5, 1LL << 40};
    const float scalar = 42.0f;
    const ml_st_tensor t[] = {
        {"z_f32", ML_ST_F32, 2, {3, 2}, f32, 0},   {"a_f16", ML_ST_F16, 1, {5}, tofp16, 1},
        {"m_bf16", ML_ST_BF16, 1, {4}, tobf16, 1}, {"raw_f16", ML_ST_F16, 1, {3}, raw16, 0},
        {"odd", ML_ST_BF16, 1, {3}, odd, 1},       {"i32", ML_ST_I32, 2, {2, 2}, i32, 0},
        {"i64", ML_ST_I64, 1, {3}, i64, 0},        {"scalar", ML_ST_F32, 0, {0}, &scalar, 1},
    };
    const char *meta[] = {"format", "pt", "source", "mergelens test"};
    ML_ASSERT_OK(ml_safetensors_write(p, 8, t, 2, meta));

    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(p, &st));
    assert_int_equal(ml_safetensors_count(st), 8);
    assert_string_equal(ml_safetensors_metadata(st, "source"), "mergelens test");
    for (int k = 0; k < 8; k++) {
        int i = ml_safetensors_find(st, t[k].name), nd;
        assert_true(i >= 0);
        assert_int_equal(ml_safetensors_dtype(st, i), t[k].dtype);
        const int64_t *sh = ml_safetensors_shape(st, i, &nd);
        assert_int_equal(nd, t[k].ndim);
        for (int d = 0; d < nd; d++) assert_int_equal(sh[d], t[k].shape[d]);
        /* each tensor starts at a multiple of its element size in the file
         * (the mapping is page aligned) */
        const void *ptr = ml_safetensors_data(st, i, NULL);
        assert_int_equal((uintptr_t)ptr % ml_st_dtype_size(t[k].dtype), 0);
    }
    float buf[8];
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "z_f32", buf, 6));
    assert_memory_equal(buf, f32, sizeof f32); /* bitwise, incl. -0 */
    uint16_t bits[5];
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "a_f16", bits, 10));
    assert_memory_equal(bits, fp16_bits, 10);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "a_f16", buf, 5));
    for (int i = 0; i < 5; i++) assert_true(buf[i] == ml_f16_to_f32(fp16_bits[i]));
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "m_bf16", bits, 8));
    assert_memory_equal(bits, bf16_bits, 8);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "m_bf16", buf, 4));
    assert_true(buf[2] == 1.0f + 0x1p-6f);
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "raw_f16", bits, 6));
    assert_memory_equal(bits, raw16, 6);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "raw_f16", buf, 3));
    assert_true(buf[0] == 1.0f && buf[1] == -2.0f && isnan(buf[2]));
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "odd", buf, 3));
    for (int i = 0; i < 3; i++) assert_true(buf[i] == ml_bf16_to_f32(ml_f32_to_bf16(odd[i])));
    int32_t gi32[4];
    int64_t gi64[3];
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "i32", gi32, sizeof gi32));
    assert_memory_equal(gi32, i32, sizeof i32);
    ML_ASSERT_OK(ml_safetensors_read_raw(st, "i64", gi64, sizeof gi64));
    assert_memory_equal(gi64, i64, sizeof i64);
    ML_ASSERT_OK(ml_safetensors_read_f32(st, "scalar", buf, 1));
    assert_true(buf[0] == 42.0f);

    /* layout: by element size (8, 4, 2 bytes), then by name */
    const char *order[] = {"i64", "i32", "scalar", "z_f32", "a_f16", "m_bf16", "odd", "raw_f16"};
    const uint8_t *prev = NULL;
    for (int k = 0; k < 8; k++) {
        const uint8_t *ptr = ml_safetensors_data(st, ml_safetensors_find(st, order[k]), NULL);
        if (prev) assert_true(ptr > prev);
        prev = ptr;
    }
    ml_safetensors_close(&st);

    /* header padded with spaces to a multiple of 8 */
    uint8_t file[1024];
    size_t n = slurp(p, file, sizeof file);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)file[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_true(hlen + 8 < n);
    size_t end = 8 + hlen;
    while (file[end - 1] == ' ') end--;
    assert_int_equal(file[end - 1], '}');
    assert_true(8 + hlen - end < 8);
}

static void test_write_errors(void **state) {
    (void)state;
    char p[1024];
    path_of(p, sizeof p, "bad_write.safetensors");
    const float v[2] = {1, 2};
    const int32_t iv[2] = {1, 2};
    ml_st_tensor t[2] = {{"x", ML_ST_F32, 1, {2}, v, 0}, {"x", ML_ST_F16, 1, {2}, v, 1}};
    ML_ASSERT_FAILS(ml_safetensors_write(p, 2, t, 0, NULL), ML_ERR_ARG, "tensor name 'x' given twice");
    ml_st_tensor c = {"y", ML_ST_I32, 1, {2}, iv, 1};
    ML_ASSERT_FAILS(ml_safetensors_write(p, 1, &c, 0, NULL), ML_ERR_ARG,
                    "tensor 'y': cannot convert float32 data to I32");
    ml_st_tensor m = {"__metadata__", ML_ST_F32, 1, {2}, v, 0};
    ML_ASSERT_FAILS(ml_safetensors_write(p, 1, &m, 0, NULL), ML_ERR_ARG, "'__metadata__' cannot be a tensor name");
    ml_st_tensor neg = {"n", ML_ST_F32, 1, {-1}, v, 0};
    ML_ASSERT_FAILS(ml_safetensors_write(p, 1, &neg, 0, NULL), ML_ERR_ARG, "tensor 'n': negative dimension -1");
    assert_false(ml_file_exists(p));
    ml_st_tensor ok = {"x", ML_ST_F32, 1, {2}, v, 0};
    ML_ASSERT_FAILS(ml_safetensors_write("/nonexistent-dir/a.safetensors", 1, &ok, 0, NULL), ML_ERR_IO,
                    "/nonexistent-dir/a.safetensors.tmp.");
    /* an existing file is replaced atomically and no temporary file remains */
    ML_ASSERT_OK(ml_safetensors_write(p, 1, &ok, 0, NULL));
    ok.shape[0] = 1;
    ML_ASSERT_OK(ml_safetensors_write(p, 1, &ok, 0, NULL));
    ml_safetensors *st = NULL;
    ML_ASSERT_OK(ml_safetensors_open(p, &st));
    assert_int_equal(ml_safetensors_numel(st, 0), 1);
    ml_safetensors_close(&st);
    DIR *d = opendir(test_dir());
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) fail_msg("temporary file left behind: %s", de->d_name);
    closedir(d);
}

/* ---- malformed files ----------------------------------------------------------- */
typedef struct {
    const char *name;   /* file name */
    const char *header; /* NULL: hand_header */
    uint64_t hlen;      /* 0: strlen(header) */
    size_t ndata;       /* zero bytes of data */
    int code;
    const char *message;
} bad_case;

static void test_malformed(void **state) {
    (void)state;
    const char *two = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%s]}}";
    char overlap[256], gap[256], tail[256];
    snprintf(overlap, sizeof overlap, two, "4,12");
    snprintf(gap, sizeof gap, two, "12,20");
    snprintf(tail, sizeof tail, two, "8,16");
    const bad_case cases[] = {
        {"big.st", "{}", 1ull << 40, 4, ML_ERR_FORMAT,
         "big.st: header length 1099511627776 exceeds the 6 bytes after the length field"},
        {"overlap.st", overlap, 0, 12, ML_ERR_FORMAT,
         "overlap.st: tensors 'a' (data_offsets [0, 8]) and 'b' ([4, 12]) overlap"},
        {"gap.st", gap, 0, 20, ML_ERR_FORMAT,
         "gap.st: data section bytes [8, 12) before tensor 'b' belong to no tensor"},
        {"tail.st", tail, 0, 24, ML_ERR_FORMAT,
         "tail.st: data section bytes [16, 24) after the last tensor belong to no tensor"},
        {"dtype.st", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 0, 2, ML_ERR_FORMAT,
         "dtype.st: tensor 'a': unsupported dtype 'F8_E4M3' (supported: F32, F16, BF16, I32, I64)"},
        {"mismatch.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 0, 20, ML_ERR_FORMAT,
         "mismatch.st: tensor 'a': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] hold 20"},
        {"overflow.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 0, 4,
         ML_ERR_FORMAT, "overflow.st: tensor 'a': shape [4294967296, 4294967296] of F32 needs more than"},
        {"range.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 4, ML_ERR_FORMAT,
         "range.st: tensor 'a': data_offsets [0, 8] outside the data section of 4 bytes"},
        {"json.st", "{\"a\": {\"dtype\": ", 0, 0, ML_ERR_FORMAT, "json.st: header is not valid JSON"},
        {"array.st", "[1, 2]", 0, 0, ML_ERR_FORMAT, "array.st: header is not a JSON object"},
        {"dup.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"a\":{}}", 0, 0, ML_ERR_FORMAT,
         "dup.st: header is not valid JSON: duplicate object key"},
        {"meta.st", "{\"__metadata__\":{\"n\":1}}", 0, 0, ML_ERR_FORMAT,
         "meta.st: '__metadata__' entry 'n' is not a string"},
        {"neg.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,0]}}", 0, 0, ML_ERR_FORMAT,
         "neg.st: tensor 'a': shape entry 0 is not a non-negative integer"},
        {"real.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 0, 8, ML_ERR_FORMAT,
         "real.st: tensor 'a': shape entry 0 is not a non-negative integer"},
        {"offs.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 0, 8, ML_ERR_FORMAT,
         "offs.st: tensor 'a': 'data_offsets' is not a pair of non-negative integers"},
        {"rev.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 0, 8, ML_ERR_FORMAT,
         "rev.st: tensor 'a': data_offsets [8, 0] outside the data section"},
        {"nodtype.st", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, ML_ERR_FORMAT,
         "nodtype.st: tensor 'a': missing string 'dtype'"},
        {"noshape.st", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, 8, ML_ERR_FORMAT,
         "noshape.st: tensor 'a': missing array 'shape'"},
        {"entry.st", "{\"a\":5}", 0, 0, ML_ERR_FORMAT, "entry.st: tensor 'a': entry is not a JSON object"},
        {"dims.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 0, 4,
         ML_ERR_UNSUPPORTED, "dims.st: tensor 'a': 9 dimensions, at most 8 are supported"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const bad_case *c = &cases[k];
        char p[1024];
        path_of(p, sizeof p, c->name);
        uint8_t zeros[64] = {0};
        assemble(p, c->hlen ? c->hlen : strlen(c->header), c->header, zeros, c->ndata);
        ml_safetensors *st = (ml_safetensors *)&st; /* must be reset to NULL */
        long live = ml_alloc_live();
        ML_ASSERT_FAILS(ml_safetensors_open(p, &st), c->code, c->message);
        assert_null(st);
        assert_int_equal(ml_alloc_live(), live);
    }
}

static void test_truncated(void **state) {
    (void)state;
    char p[1024], q[1024];
    path_of(p, sizeof p, "hand_full.safetensors");
    assemble(p, strlen(hand_header), hand_header, hand_data, sizeof hand_data);
    uint8_t file[2048];
    size_t n = slurp(p, file, sizeof file);
    ml_safetensors *st = NULL;
    /* cut inside the data: the tensors at the end leave the data section */
    path_of(q, sizeof q, "trunc_data.safetensors");
    FILE *f = fopen(q, "wb");
    fwrite(file, 1, n - 4, f);
    fclose(f);
    ML_ASSERT_FAILS(ml_safetensors_open(q, &st), ML_ERR_FORMAT, "outside the data section of 48 bytes");
    assert_true(strstr(ml_error_message(), "trunc_data.safetensors: tensor '"));
    /* cut inside the header */
    path_of(q, sizeof q, "trunc_header.safetensors");
    f = fopen(q, "wb");
    fwrite(file, 1, 28, f);
    fclose(f);
    char msgbuf[256];
    const char *msg = msgbuf; /* a pointer: ML_ASSERT_FAILS tests it for NULL */
    snprintf(msgbuf, sizeof msgbuf, "trunc_header.safetensors: header length %zu exceeds the 20 bytes",
             strlen(hand_header));
    ML_ASSERT_FAILS(ml_safetensors_open(q, &st), ML_ERR_FORMAT, msg);
    /* cut inside the length field */
    path_of(q, sizeof q, "trunc_len.safetensors");
    f = fopen(q, "wb");
    fwrite(file, 1, 5, f);
    fclose(f);
    ML_ASSERT_FAILS(ml_safetensors_open(q, &st), ML_ERR_FORMAT,
                    "trunc_len.safetensors: 5 bytes is too short for a safetensors file");
    path_of(q, sizeof q, "missing.safetensors");
    ML_ASSERT_FAILS(ml_safetensors_open(q, &st), ML_ERR_NOTFOUND, "missing.safetensors: cannot open");
    ML_ASSERT_FAILS(ml_safetensors_open(test_dir(), &st), ML_ERR_IO, "not a regular file");
}

/* Every allocation failure path frees what it took (jansson style). */
static void test_alloc_failures(void **state) {
    (void)state;
    char p[1024], w[1024];
    path_of(p, sizeof p, "hand_alloc.safetensors");
    path_of(w, sizeof w, "alloc_write.safetensors");
    assemble(p, strlen(hand_header), hand_header, hand_data, sizeof hand_data);
    const float v[3] = {1, 2, 3};
    const ml_st_tensor t[2] = {{"a", ML_ST_F32, 1, {3}, v, 0}, {"b", ML_ST_BF16, 1, {3}, v, 1}};
    const char *meta[] = {"k", "v"};
    int failures = 0;
    for (long n = 1; n < 200; n++) {
        long live = ml_alloc_live();
        ml_safetensors *st = NULL;
        ml_alloc_fail_at(n);
        int rc = ml_safetensors_open(p, &st);
        ml_alloc_fail_at(0);
        if (rc == ML_OK) {
            ml_safetensors_close(&st);
            assert_int_equal(ml_alloc_live(), live);
            break;
        }
        assert_int_equal(rc, ML_ERR_NOMEM);
        assert_int_equal(ml_alloc_live(), live);
        failures++;
    }
    assert_true(failures > 5);
    failures = 0;
    for (long n = 1; n < 200; n++) {
        long live = ml_alloc_live();
        ml_alloc_fail_at(n);
        int rc = ml_safetensors_write(w, 2, t, 1, meta);
        ml_alloc_fail_at(0);
        assert_int_equal(ml_alloc_live(), live);
        if (rc == ML_OK) break;
        assert_int_equal(rc, ML_ERR_NOMEM);
        failures++;
    }
    assert_true(failures >= 3);
}

static void test_dtype_names(void **state) {
    (void)state;
    ml_st_dtype t;
    const char *names[] = {"f32", "F32",  "float32", "fp32", "bf16", "BF16", "bfloat16",
                           "f16", "fp16", "float16", "half", "i32",  "int64"};
    const ml_st_dtype want[] = {ML_ST_F32, ML_ST_F32, ML_ST_F32, ML_ST_F32, ML_ST_BF16, ML_ST_BF16, ML_ST_BF16,
                                ML_ST_F16, ML_ST_F16, ML_ST_F16, ML_ST_F16, ML_ST_I32,  ML_ST_I64};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        ML_ASSERT_OK(ml_st_dtype_parse(names[i], &t));
        assert_int_equal(t, want[i]);
    }
    ML_ASSERT_FAILS(ml_st_dtype_parse("f8", &t), ML_ERR_ARG, "unknown dtype 'f8'");
    assert_string_equal(ml_st_dtype_torch_name(ML_ST_BF16), "bfloat16");
    assert_string_equal(ml_st_dtype_name(ML_ST_I64), "I64");
    assert_int_equal(ml_st_dtype_size(ML_ST_I64), 8);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_hand_made),
        cmocka_unit_test(test_write_exact_bytes),
        cmocka_unit_test(test_round_trip_all_dtypes),
        cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_dtype_names),
    };
    return ml_test_run(argc, argv, "interop_safetensors", tests, sizeof tests / sizeof tests[0]);
}
