/* float32 <-> float16 / bfloat16 conversion against known bit patterns and an
 * independent double-precision rounding reference. */
#include <math.h>

#include "ml_test.h"
#include "mergelens/interop.h"

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

typedef struct {
    float x;
    uint16_t f16, bf16;
} known;

static void test_known_patterns(void **state) {
    (void)state;
    const known k[] = {
        {1.0f, 0x3C00, 0x3F80},
        {-2.0f, 0xC000, 0xC000},
        {0.0f, 0x0000, 0x0000},
        {-0.0f, 0x8000, 0x8000},
        {0.5f, 0x3800, 0x3F00},
        {65504.0f, 0x7BFF, 0x4780},        /* f32 0x477FE000: dropped 0xE000 > half, rounds up */
        {0x1p-14f, 0x0400, 0x3880},        /* smallest f16 normal */
        {0x1p-24f, 0x0001, 0x3380},        /* smallest f16 subnormal */
        {1023 * 0x1p-24f, 0x03FF, 0x3880}, /* largest f16 subnormal; bf16 rounds 0x387FC000 up */
        {3.140625f, 0x4248, 0x4049},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        uint16_t h = ml_f32_to_f16(k[i].x), b = ml_f32_to_bf16(k[i].x);
        if (h != k[i].f16) fail_msg("f16(%.9g) = 0x%04X, expected 0x%04X", k[i].x, h, k[i].f16);
        if (b != k[i].bf16) fail_msg("bf16(%.9g) = 0x%04X, expected 0x%04X", k[i].x, b, k[i].bf16);
        /* every value in the table is exact in f16 */
        assert_true(ml_f16_to_f32(k[i].f16) == k[i].x);
    }
    assert_true(ml_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(ml_bf16_to_f32(0xC000) == -2.0f);
}

static void test_rounding_ties(void **state) {
    (void)state;
    /* f16 has 10 mantissa bits: 1 + 2^-11 is halfway between 1 (0x3C00, even) and 0x3C01 */
    assert_int_equal(ml_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
    assert_int_equal(ml_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);        /* between 0x3C01 (odd) and 0x3C02 */
    assert_int_equal(ml_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01); /* just above the tie */
    assert_int_equal(ml_f32_to_f16(1.0f + 0x1p-11f - 0x1p-23f), 0x3C00); /* just below */
    assert_int_equal(ml_f32_to_f16(-(1.0f + 3 * 0x1p-11f)), 0xBC02);
    /* subnormal ties: 2^-25 is halfway between 0 and 2^-24 -> 0; 3*2^-25 -> 2*2^-24 */
    assert_int_equal(ml_f32_to_f16(0x1p-25f), 0x0000);
    assert_int_equal(ml_f32_to_f16(3 * 0x1p-25f), 0x0002);
    assert_int_equal(ml_f32_to_f16(1.5f * 0x1p-25f), 0x0001);
    assert_int_equal(ml_f32_to_f16(0x1p-26f), 0x0000);
    /* overflow: 65520 is halfway between 65504 (0x7BFF, odd) and 65536 (inf) -> inf */
    assert_int_equal(ml_f32_to_f16(65520.0f), 0x7C00);
    assert_int_equal(ml_f32_to_f16(65519.0f), 0x7BFF);
    assert_int_equal(ml_f32_to_f16(-1e10f), 0xFC00);
    /* bf16 keeps 7 mantissa bits: 1 + 2^-8 is the tie between 0x3F80 and 0x3F81 */
    assert_int_equal(ml_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);
    assert_int_equal(ml_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
    assert_int_equal(ml_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
    assert_int_equal(ml_f32_to_bf16(bits_f32(0x7F7FFFFFu)), 0x7F80); /* FLT_MAX rounds to inf */
    assert_int_equal(ml_f32_to_bf16(bits_f32(0x7F7F7FFFu)), 0x7F7F);
    assert_int_equal(ml_f32_to_bf16(bits_f32(0x00018000u)), 0x0002); /* f32 subnormal tie, odd -> up */
}

static void test_inf_nan(void **state) {
    (void)state;
    assert_int_equal(ml_f32_to_f16(INFINITY), 0x7C00);
    assert_int_equal(ml_f32_to_f16(-INFINITY), 0xFC00);
    assert_int_equal(ml_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(ml_f32_to_bf16(-INFINITY), 0xFF80);
    assert_true(isinf(ml_f16_to_f32(0x7C00)) && ml_f16_to_f32(0x7C00) > 0);
    assert_true(isinf(ml_f16_to_f32(0xFC00)) && ml_f16_to_f32(0xFC00) < 0);
    assert_true(isinf(ml_bf16_to_f32(0xFF80)));
    /* NaNs stay NaNs (never inf), keep their sign, and are quiet */
    const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0x7F802000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float x = bits_f32(nans[i]);
        uint16_t h = ml_f32_to_f16(x), b = ml_f32_to_bf16(x);
        assert_true((h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0 && (h & 0x0200));
        assert_true((b & 0x7F80) == 0x7F80 && (b & 0x007F) != 0 && (b & 0x0040));
        assert_int_equal(h >> 15, nans[i] >> 31);
        assert_int_equal(b >> 15, nans[i] >> 31);
        assert_true(isnan(ml_f16_to_f32(h)) && isnan(ml_bf16_to_f32(b)));
    }
}

/* Decode every f16 pattern with the textbook formula and check the encoder
 * maps the value back to the same pattern. */
static void test_f16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
        float got = ml_f16_to_f32((uint16_t)h);
        if (e == 31) {
            assert_true(m ? isnan(got) : isinf(got));
            if (!m) assert_int_equal(ml_f32_to_f16(got), h);
            continue;
        }
        double ref = e == 0 ? ldexp(m, -24) : ldexp(1.0 + m / 1024.0, e - 15);
        if (s) ref = -ref;
        if ((double)got != ref) fail_msg("f16 0x%04X decodes to %.9g, expected %.9g", h, got, ref);
        if (ml_f32_to_f16(got) != h) fail_msg("f16 0x%04X does not round trip (got 0x%04X)", h, ml_f32_to_f16(got));
        uint16_t b = (uint16_t)h; /* bf16: decoding is a shift; every non-NaN pattern round trips */
        if (!isnan(ml_bf16_to_f32(b)) && ml_f32_to_bf16(ml_bf16_to_f32(b)) != b) fail_msg("bf16 0x%04X", h);
    }
}

/* Reference: round x to a grid of spacing 2^(max(exponent, emin) - mbits) in
 * double with rint (ties to even), overflow beyond max -> inf. */
static double ref_round(double x, int mbits, int emin, double maxval) {
    if (x == 0) return x;
    int e;
    frexp(fabs(x), &e); /* |x| in [2^(e-1), 2^e) */
    e -= 1;
    if (e < emin) e = emin;
    double ulp = ldexp(1.0, e - mbits);
    double r = rint(x / ulp) * ulp;
    if (fabs(r) > maxval) return x > 0 ? INFINITY : -INFINITY;
    return r;
}

static void test_random_against_reference(void **state) {
    (void)state;
    ml_rng rng;
    ml_rng_seed(&rng, 1234, 0);
    const double f16max = 65504.0, bf16max = ldexp(255.0 / 128.0, 127);
    for (int i = 0; i < 400000; i++) {
        float x;
        if (i % 2) { /* log-uniform magnitudes over the whole f16 range and beyond */
            x = (float)ldexp(1.0 + ml_rng_uniform(&rng), (int)ml_rng_below(&rng, 46) - 30);
            if (ml_rng_u64(&rng) & 1) x = -x;
        } else { /* arbitrary finite f32 bit patterns */
            uint32_t u = (uint32_t)ml_rng_u64(&rng);
            if ((u & 0x7F800000u) == 0x7F800000u) continue;
            x = bits_f32(u);
        }
        double rh = ref_round(x, 10, -14, f16max), rb = ref_round(x, 7, -126, bf16max);
        float gh = ml_f16_to_f32(ml_f32_to_f16(x)), gb = ml_bf16_to_f32(ml_f32_to_bf16(x));
        if ((double)gh != rh) fail_msg("f16 rounding of %a: got %a, expected %a", x, gh, rh);
        if ((double)gb != rb) fail_msg("bf16 rounding of %a: got %a, expected %a", x, gb, rb);
    }
}

static void test_arrays(void **state) {
    (void)state;
    float in[5] = {1.0f, -2.0f, 0.5f, 65504.0f, 0x1p-24f}, out[5];
    uint16_t h[5], b[5];
    ml_f32_to_f16_array(h, in, 5);
    ml_f32_to_bf16_array(b, in, 5);
    assert_int_equal(h[0], 0x3C00);
    assert_int_equal(b[0], 0x3F80);
    ml_f16_to_f32_array(out, h, 5);
    for (int i = 0; i < 5; i++) assert_true(out[i] == in[i]);
    ml_bf16_to_f32_array(out, b, 5);
    for (int i = 0; i < 3; i++) assert_true(out[i] == in[i]);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_patterns),
        cmocka_unit_test(test_rounding_ties),
        cmocka_unit_test(test_inf_nan),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_arrays),
    };
    return ml_test_run(argc, argv, "interop_half", tests, sizeof tests / sizeof tests[0]);
}
