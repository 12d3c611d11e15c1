/* Merge kernels over flat float arrays: linear combinations, Gram matrices,
 * SLERP coefficients, radix top-k selection, precision emulation.
 *
 * Legend: N elements of one tensor, K inputs of a linear combination,
 * D vectors of a Gram matrix, B elements of a cache block.
 */
#include <math.h>
#include <string.h>

#include "mergelens/interop.h"
#include "mergelens/merge.h"

#define ML_BLOCK 512 /* B: elements per cache block (double tmp = 4 KB) */
#define ML_LANES ML_MERGE_GRAM_LANES /* double accumulators per dot product (independent FMA chains) */

/* out (N) = sum_k c[k] x[k] (N); x: K pointers */
void ml_merge_lincomb(float *out, const float *const *x, const double *c, int K, size_t N) {
    if (K == 1) {
        const float *x0 = x[0];
        double c0 = c[0];
        for (size_t j = 0; j < N; j++) out[j] = (float)(c0 * (double)x0[j]);
        return;
    }
    if (K == 2) {
        const float *x0 = x[0], *x1 = x[1];
        double c0 = c[0], c1 = c[1];
        for (size_t j = 0; j < N; j++) out[j] = (float)(c0 * (double)x0[j] + c1 * (double)x1[j]);
        return;
    }
    if (K == 3) {
        const float *x0 = x[0], *x1 = x[1], *x2 = x[2];
        double c0 = c[0], c1 = c[1], c2 = c[2];
        for (size_t j = 0; j < N; j++)
            out[j] = (float)(c0 * (double)x0[j] + c1 * (double)x1[j] + c2 * (double)x2[j]);
        return;
    }
    double tmp[ML_BLOCK];
    for (size_t j0 = 0; j0 < N; j0 += ML_BLOCK) {
        size_t nb = N - j0 < ML_BLOCK ? N - j0 : ML_BLOCK;
        const float *x0 = x[0] + j0;
        double c0 = c[0];
        for (size_t j = 0; j < nb; j++) tmp[j] = c0 * (double)x0[j];
        for (int k = 1; k < K; k++) {
            const float *xk = x[k] + j0;
            double ck = c[k];
            for (size_t j = 0; j < nb; j++) tmp[j] += ck * (double)xk[j];
        }
        float *o = out + j0;
        for (size_t j = 0; j < nb; j++) o[j] = (float)tmp[j];
    }
}

/* acc (LANES) += a (nb) . b (nb) in double; element j goes to lane
 * (lane0 + j) % LANES, so the sums do not depend on how a tensor is split */
static inline void ml_dot_lanes(double *restrict acc, const double *restrict a, const double *restrict b, size_t nb,
                                unsigned lane0) {
    size_t j = 0;
    for (unsigned l = lane0; l && l < ML_LANES && j < nb; l++, j++) acc[l] += a[j] * b[j];
    double s[ML_LANES];
    for (int l = 0; l < ML_LANES; l++) s[l] = acc[l];
    for (; j + ML_LANES <= nb; j += ML_LANES)
        for (int l = 0; l < ML_LANES; l++) s[l] += a[j + l] * b[j + l];
    for (int l = 0; j < nb; j++, l++) s[l] += a[j] * b[j];
    for (int l = 0; l < ML_LANES; l++) acc[l] = s[l];
}

static double ml_lanes_sum(const double *s) {
    double r = 0;
    for (int h = 0; h < ML_LANES; h += 4) r += (s[h] + s[h + 1]) + (s[h + 2] + s[h + 3]);
    return r;
}

/* acc (3, LANES) += lane sums of a.a, b.b, a.b in one pass (SLERP) */
static void ml_gram2_acc(double *acc, const float *restrict a, const float *restrict b, size_t N, unsigned lane0) {
    double *saa_ = acc, *sbb_ = acc + 2 * ML_LANES, *sab_ = acc + ML_LANES; /* pair order (0,0) (0,1) (1,1) */
    size_t j = 0;
    for (unsigned l = lane0; l && l < ML_LANES && j < N; l++, j++) {
        double x = a[j], y = b[j];
        saa_[l] += x * x;
        sbb_[l] += y * y;
        sab_[l] += x * y;
    }
    double saa[ML_LANES], sbb[ML_LANES], sab[ML_LANES];
    for (int l = 0; l < ML_LANES; l++) saa[l] = saa_[l], sbb[l] = sbb_[l], sab[l] = sab_[l];
    for (; j + ML_LANES <= N; j += ML_LANES)
        for (int l = 0; l < ML_LANES; l++) {
            double x = a[j + l], y = b[j + l];
            saa[l] += x * x;
            sbb[l] += y * y;
            sab[l] += x * y;
        }
    for (int l = 0; j < N; j++, l++) {
        double x = a[j], y = b[j];
        saa[l] += x * x;
        sbb[l] += y * y;
        sab[l] += x * y;
    }
    for (int l = 0; l < ML_LANES; l++) saa_[l] = saa[l], sbb_[l] = sbb[l], sab_[l] = sab[l];
}

/* acc (D(D+1)/2, LANES) += lane sums of (v[i] - sub) . (v[j] - sub), pairs i <= j in row order */
void ml_merge_gram_acc(double *acc, const float *const *v, const float *sub, int D, size_t N, size_t offset) {
    unsigned lane0 = (unsigned)(offset % ML_LANES);
    if (D == 2 && !sub) {
        ml_gram2_acc(acc, v[0], v[1], N, lane0);
        return;
    }
    double blk[D][ML_BLOCK]; /* the block's vectors, converted once */
    for (size_t j0 = 0; j0 < N; j0 += ML_BLOCK) { /* ML_BLOCK % LANES == 0: every block starts at lane0 */
        size_t nb = N - j0 < ML_BLOCK ? N - j0 : ML_BLOCK;
        for (int d = 0; d < D; d++) {
            const float *vd = v[d] + j0;
            double *bd = blk[d];
            if (sub) {
                const float *s = sub + j0;
                for (size_t j = 0; j < nb; j++) bd[j] = (double)(vd[j] - s[j]);
            } else {
                for (size_t j = 0; j < nb; j++) bd[j] = (double)vd[j];
            }
        }
        int p = 0;
        for (int a = 0; a < D; a++)
            for (int b = a; b < D; b++, p++) ml_dot_lanes(acc + (size_t)p * ML_LANES, blk[a], blk[b], nb, lane0);
    }
}

void ml_merge_gram_finish(double *gram, const double *acc, int D) {
    int p = 0;
    for (int a = 0; a < D; a++)
        for (int b = a; b < D; b++, p++) gram[a * D + b] = gram[b * D + a] = ml_lanes_sum(acc + (size_t)p * ML_LANES);
}

/* gram (D,D) = (v[i] - sub) . (v[j] - sub); v: D pointers to (N), sub (N) or NULL */
void ml_merge_gram(double *gram, const float *const *v, const float *sub, int D, size_t N) {
    size_t P = (size_t)D * (D + 1) / 2;
    double acc[P * ML_LANES];
    memset(acc, 0, sizeof acc);
    ml_merge_gram_acc(acc, v, sub, D, N, 0);
    ml_merge_gram_finish(gram, acc, D);
}

int ml_slerp_coeffs(const double *gram, double t, double *c) {
    /* mergekit: normalise a copy only if its norm exceeds eps = 1e-8 */
    double na = sqrt(gram[0]), nb = sqrt(gram[3]);
    double sa = na > 1e-8 ? na : 1.0, sb = nb > 1e-8 ? nb : 1.0;
    double dot = gram[1] / (sa * sb);
    if (fabs(dot) > 0.9995) { /* colinear: plain lerp of the unnormalised tensors */
        c[0] = 1.0 - t;
        c[1] = t;
        return 1;
    }
    double theta0 = acos(dot), sin0 = sin(theta0), thetat = theta0 * t;
    c[0] = sin(theta0 - thetat) / sin0;
    c[1] = sin(thetat) / sin0;
    return 0;
}

/* out (N) = slerp(t; a (N), b (N)) */
int ml_slerp(float *out, const float *a, const float *b, size_t N, double t) {
    const float *v[2] = {a, b};
    double gram[4], c[2];
    ml_merge_gram(gram, v, NULL, 2, N);
    int fallback = ml_slerp_coeffs(gram, t, c);
    ml_merge_lincomb(out, v, c, 2, N);
    return fallback;
}

static inline uint32_t ml_abs_bits(float d) {
    uint32_t u;
    memcpy(&u, &d, sizeof u);
    return u & 0x7fffffffu; /* order-preserving for |d| (NaN sorts above inf) */
}

/* x (N), base (N) or NULL; hist (65536) scratch */
void ml_merge_topk_threshold(const float *x, const float *base, size_t N, size_t k, uint32_t *hist, float *thr,
                             size_t *n_gt) {
    /* pass 1: histogram of the high 16 bits of |x - base|, in 4 interleaved
     * copies so that repeated bins do not serialise on one counter */
    memset(hist, 0, 4 * 65536 * sizeof *hist);
    size_t j = 0;
    for (; j + 4 <= N; j += 4)
        for (int c = 0; c < 4; c++) hist[c * 65536 + (ml_abs_bits(base ? x[j + c] - base[j + c] : x[j + c]) >> 16)]++;
    for (; j < N; j++) hist[ml_abs_bits(base ? x[j] - base[j] : x[j]) >> 16]++;
    for (int b = 0; b < 65536; b++) hist[b] += hist[65536 + b] + hist[2 * 65536 + b] + hist[3 * 65536 + b];
    size_t above = 0;
    int hb = 65535;
    for (; hb > 0; hb--) {
        if (above + hist[hb] >= k) break;
        above += hist[hb];
    }
    /* pass 2: low 16 bits inside bin hb */
    memset(hist, 0, 65536 * sizeof *hist);
    for (j = 0; j < N; j++) {
        uint32_t u = ml_abs_bits(base ? x[j] - base[j] : x[j]);
        if ((int)(u >> 16) == hb) hist[u & 0xffffu]++;
    }
    int lb = 65535;
    for (; lb > 0; lb--) {
        if (above + hist[lb] >= k) break;
        above += hist[lb];
    }
    uint32_t bits = ((uint32_t)hb << 16) | (uint32_t)lb;
    memcpy(thr, &bits, sizeof *thr);
    *n_gt = above;
}

void ml_round_bf16(float *x, size_t N) {
    for (size_t j = 0; j < N; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof u);
        if ((u & 0x7f800000u) == 0x7f800000u) { /* inf / NaN: truncate, keep NaN quiet */
            if (u & 0x007fffffu) u |= 0x00400000u;
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);
        }
        u &= 0xffff0000u;
        memcpy(&x[j], &u, sizeof u);
    }
}

void ml_round_f16(float *x, size_t N) {
#ifdef __FLT16_MAX__
    for (size_t j = 0; j < N; j++) x[j] = (float)(_Float16)x[j];
#else /* compilers without _Float16 on this target (clang 14 on x86-64) */
    for (size_t j = 0; j < N; j++) x[j] = ml_f16_to_f32(ml_f32_to_f16(x[j]));
#endif
}

uint64_t ml_merge_stream_id(const char *tensor_name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *s = (const unsigned char *)tensor_name; *s; s++) {
        h ^= *s;
        h *= 0x100000001b3ull;
    }
    return h;
}
