/* float32 <-> IEEE binary16 and bfloat16, round to nearest, ties to even.
 * Bit layouts: f32 s|8 exp (bias 127)|23 man; f16 s|5 exp (bias 15)|10 man;
 * bf16 = the upper 16 bits of an f32. */
#include <string.h>

#include "mergelens/interop.h"

static inline uint32_t ml_f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static inline float ml_bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t ml_f32_to_f16(float x) {
    uint32_t u = ml_f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x38800000u) {             /* >= 2^-14: normal in f16 (or overflow) */
        uint32_t v = a - (112u << 23);  /* rebias 127 -> 15 */
        v += 0xFFFu + ((v >> 13) & 1u); /* round the 13 dropped bits, ties to even */
        v >>= 13;
        return (uint16_t)(sign | (v >= 0x7C00u ? 0x7C00u : v));
    }
    if (a < 0x33000000u) return sign; /* < 2^-25: rounds to zero */
    /* f16 subnormal: h = value / 2^-24 = man * 2^(e - 126), rounded */
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t s = 126u - e; /* 14..24 */
    uint32_t h = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float ml_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31) return ml_bits_f32(sign | 0x7F800000u | (m << 13));
    return ml_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t ml_f32_to_bf16(float x) {
    uint32_t u = ml_f32_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float ml_bf16_to_f32(uint16_t h) { return ml_bits_f32((uint32_t)h << 16); }

void ml_f32_to_f16_array(uint16_t *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = ml_f32_to_f16(in[i]);
}
void ml_f16_to_f32_array(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = ml_f16_to_f32(in[i]);
}
void ml_f32_to_bf16_array(uint16_t *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = ml_f32_to_bf16(in[i]);
}
void ml_bf16_to_f32_array(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = ml_bf16_to_f32(in[i]);
}
