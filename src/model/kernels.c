/* Layer kernels over flat float arrays (llm.c style). Dimension legend in
 * model_internal.h. Matrix products go through cblas_sgemm; the elementwise
 * loops are written so that gcc -O3 vectorises them (reductions use 16
 * independent lanes, exp is a polynomial without libm calls). */
#include "model_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define ML_LANES 16

/* exp(x) for x <= 88 (Cephes expf: range reduction by ln 2 and a degree-6
 * polynomial, about 2 ulp); x < -87 returns ~1e-38 instead of 0. Branch-free
 * so loops calling it vectorise. */
static inline float ml_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

static inline float ml_dot(const float *a, const float *b, int n) {
    float acc[ML_LANES] = {0};
    int i = 0;
    for (; i + ML_LANES <= n; i += ML_LANES)
        for (int k = 0; k < ML_LANES; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0;
    for (int k = 0; k < ML_LANES; k++) s += acc[k];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* max of x[0..n); finite-math lets gcc use vmaxps (a NaN input gives an unspecified result). */
__attribute__((optimize("finite-math-only", "no-signed-zeros"))) static float ml_max(const float *x, int n) {
    float m = x[0];
    int i = 0;
    if (n >= ML_LANES) {
        float acc[ML_LANES];
        for (int k = 0; k < ML_LANES; k++) acc[k] = x[k];
        for (i = ML_LANES; i + ML_LANES <= n; i += ML_LANES)
            for (int k = 0; k < ML_LANES; k++) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
        for (int k = 0; k < ML_LANES; k++) m = acc[k] > m ? acc[k] : m;
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x[i] <- exp(x[i] - shift) for i < n; returns the sum. */
static inline float ml_exp_shift_sum(float *x, int n, float shift) {
    float acc[ML_LANES] = {0};
    int i = 0;
    for (; i + ML_LANES <= n; i += ML_LANES)
        for (int k = 0; k < ML_LANES; k++) {
            float e = ml_expf(x[i + k] - shift);
            x[i + k] = e;
            acc[k] += e;
        }
    float s = 0;
    for (int k = 0; k < ML_LANES; k++) s += acc[k];
    for (; i < n; i++) {
        x[i] = ml_expf(x[i] - shift);
        s += x[i];
    }
    return s;
}

/* ---- RMSNorm ---------------------------------------------------------------- */
/* out (N, D), rstd (N), inp (N, D), w (D) */
void ml_k_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int D, float eps) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D;
        float *y = out + (size_t)n * D;
        float r = 1.0f / sqrtf(ml_dot(x, x, D) / (float)D + eps);
        rstd[n] = r;
        for (int i = 0; i < D; i++) y[i] = x[i] * r * w[i];
    }
}

/* out (N, D) = a + b; norm (N, D), rstd (N) = rmsnorm(out) with weight w (D) */
void ml_k_residual_rmsnorm(float *out, float *norm, float *rstd, const float *a, const float *b, const float *w,
                           int N, int D, float eps) {
    for (int n = 0; n < N; n++) {
        const size_t o = (size_t)n * D;
        for (int i = 0; i < D; i++) out[o + i] = a[o + i] + b[o + i];
    }
    ml_k_rmsnorm_forward(norm, rstd, out, w, N, D, eps);
}

/* dinp (N, D) (+)= d/dinp; dw (D) +=; dout, inp (N, D); w (D); rstd (N) */
void ml_k_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int D, int accumulate) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D, *dy = dout + (size_t)n * D;
        float *dx = dinp + (size_t)n * D;
        const float r = rstd[n];
        /* c = mean(dy * w * xhat) */
        float acc[ML_LANES] = {0};
        int i = 0;
        for (; i + ML_LANES <= D; i += ML_LANES)
            for (int k = 0; k < ML_LANES; k++) acc[k] += dy[i + k] * w[i + k] * x[i + k];
        float c = 0;
        for (int k = 0; k < ML_LANES; k++) c += acc[k];
        for (; i < D; i++) c += dy[i] * w[i] * x[i];
        c *= r * r / (float)D;
        if (accumulate)
            for (i = 0; i < D; i++) dx[i] += r * (dy[i] * w[i] - x[i] * c);
        else
            for (i = 0; i < D; i++) dx[i] = r * (dy[i] * w[i] - x[i] * c);
        for (i = 0; i < D; i++) dw[i] += dy[i] * x[i] * r;
    }
}

/* ---- SwiGLU ---------------------------------------------------------------- */
/* h (N, F) = silu(g) * u with gu (N, 2F) = [g | u] */
void ml_k_swiglu_forward(float *h, const float *gu, int N, int F) {
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * F, *u = g + F;
        float *y = h + (size_t)n * F;
        for (int i = 0; i < F; i++) y[i] = g[i] / (1.0f + ml_expf(-g[i])) * u[i];
    }
}

/* gu (N, 2F) <- [dg | du] given dh (N, F) */
void ml_k_swiglu_backward(float *gu, const float *dh, int N, int F) {
    for (int n = 0; n < N; n++) {
        float *g = gu + (size_t)n * 2 * F, *u = g + F;
        const float *d = dh + (size_t)n * F;
        for (int i = 0; i < F; i++) {
            float s = 1.0f / (1.0f + ml_expf(-g[i]));
            float silu = g[i] * s;
            float dgi = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
            u[i] = d[i] * silu;
            g[i] = dgi;
        }
    }
}

/* ---- RoPE ------------------------------------------------------------------ */
void ml_rope_tables(float *cos_t, float *sin_t, int T, int hd, double theta) {
    const int h2 = hd / 2;
    for (int i = 0; i < h2; i++) {
        double inv_freq = pow(theta, -2.0 * i / hd);
        for (int t = 0; t < T; t++) {
            double a = (double)t * inv_freq;
            cos_t[(size_t)t * h2 + i] = (float)cos(a);
            sin_t[(size_t)t * h2 + i] = (float)sin(a);
        }
    }
}

/* x (B, T, ld): nh heads of width hd at columns j*hd; cos/sin (T, hd/2) */
void ml_rope_apply(float *x, int B, int T, int nh, int hd, int ld, const float *cos_t, const float *sin_t,
                   int inverse) {
    const int h2 = hd / 2;
    const float sg = inverse ? -1.0f : 1.0f;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cos_t + (size_t)t * h2, *s = sin_t + (size_t)t * h2;
            float *row = x + ((size_t)b * T + t) * ld;
            for (int j = 0; j < nh; j++) {
                float *x1 = row + (size_t)j * hd, *x2 = x1 + h2;
                for (int i = 0; i < h2; i++) {
                    float a = x1[i], bb = x2[i], si = sg * s[i];
                    x1[i] = a * c[i] - bb * si;
                    x2[i] = bb * c[i] + a * si;
                }
            }
        }
}

/* ---- attention --------------------------------------------------------------- */
/* Causal GQA attention, one (b, h) and one block of Br query rows at a time:
 * the scores of a block (Br x keys up to the block's last row) are the only
 * scores ever held. out (B,T,QD), lse (B,H,T), qkv (B,T,QKV), scores (Br, T). */
void ml_k_attention_forward(float *out, float *lse, const float *qkv, float *scores, int B, int T, int H, int KV,
                            int hd, int Br, int i0_item, int i1_item) {
    const int QD = H * hd, W = (H + 2 * KV) * hd, rep = H / KV;
    const float scale = 1.0f / sqrtf((float)hd);
    (void)B;
    for (int item = i0_item; item < i1_item; item++) {
            const int b = item / H, h = item % H, g = h / rep;
            const float *q = qkv + (size_t)b * T * W + (size_t)h * hd;
            const float *k = qkv + (size_t)b * T * W + QD + (size_t)g * hd;
            const float *v = k + (size_t)KV * hd;
            float *o = out + (size_t)b * T * QD + (size_t)h * hd;
            float *l = lse + ((size_t)b * H + h) * T;
            for (int i0 = 0; i0 < T; i0 += Br) {
                const int r = T - i0 < Br ? T - i0 : Br, kend = i0 + r;
                /* S (r, kend) = scale * q[i0:i0+r] k[0:kend]^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, kend, hd, scale, q + (size_t)i0 * W, W, k,
                            W, 0.0f, scores, kend);
                for (int ii = 0; ii < r; ii++) {
                    float *s = scores + (size_t)ii * kend;
                    const int n = i0 + ii + 1; /* keys 0..t */
                    const float mx = ml_max(s, n);
                    const float sum = ml_exp_shift_sum(s, n, mx);
                    const float inv = 1.0f / sum;
                    for (int j = 0; j < n; j++) s[j] *= inv;
                    for (int j = n; j < kend; j++) s[j] = 0.0f;
                    l[i0 + ii] = mx + logf(sum);
                }
                /* o[i0:i0+r] (r, hd) = P (r, kend) v[0:kend] (kend, hd) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, hd, kend, 1.0f, scores, kend, v, W, 0.0f,
                            o + (size_t)i0 * QD, QD);
            }
        }
}

/* dqkv (B,T,QKV) overwritten with d/dq, d/dk, d/dv; dout, out (B,T,QD); lse
 * (B,H,T); qkv (B,T,QKV); p, dp (Br, T), rowtmp (Br) scratch. */
void ml_k_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                             float *p, float *dp, float *rowtmp, int B, int T, int H, int KV, int hd, int Br,
                             int i0_item, int i1_item) {
    const int QD = H * hd, W = (H + 2 * KV) * hd, rep = H / KV;
    const float scale = 1.0f / sqrtf((float)hd);
    (void)B;
    for (int item = i0_item; item < i1_item; item++) {
        const int b = item / KV, g = item % KV;
        const size_t base = (size_t)b * T * W;
        for (int t = 0; t < T; t++) { /* dk, dv of this group accumulate over its heads and blocks */
            memset(dqkv + base + (size_t)t * W + QD + (size_t)g * hd, 0, sizeof(float) * (size_t)hd);
            memset(dqkv + base + (size_t)t * W + QD + (size_t)(KV + g) * hd, 0, sizeof(float) * (size_t)hd);
        }
        for (int h = g * rep; h < (g + 1) * rep; h++) {
            const float *q = qkv + base + (size_t)h * hd;
            const float *k = qkv + base + QD + (size_t)g * hd;
            const float *v = k + (size_t)KV * hd;
            float *dq = dqkv + base + (size_t)h * hd;
            float *dk = dqkv + base + QD + (size_t)g * hd;
            float *dv = dk + (size_t)KV * hd;
            const float *o = out + (size_t)b * T * QD + (size_t)h * hd;
            const float *dO = dout + (size_t)b * T * QD + (size_t)h * hd;
            const float *l = lse + ((size_t)b * H + h) * T;
            for (int i0 = 0; i0 < T; i0 += Br) {
                const int r = T - i0 < Br ? T - i0 : Br, kend = i0 + r;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, kend, hd, scale, q + (size_t)i0 * W, W, k,
                            W, 0.0f, p, kend);
                /* dP (r, kend) = dO[i0:i0+r] v[0:kend]^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, kend, hd, 1.0f, dO + (size_t)i0 * QD, QD, v,
                            W, 0.0f, dp, kend);
                for (int ii = 0; ii < r; ii++) {
                    const int t = i0 + ii, n = t + 1;
                    rowtmp[ii] = ml_dot(dO + (size_t)t * QD, o + (size_t)t * QD, hd);
                    float *ps = p + (size_t)ii * kend, *ds = dp + (size_t)ii * kend;
                    const float lt = l[t], di = rowtmp[ii];
                    for (int j = 0; j < n; j++) {
                        float pj = ml_expf(ps[j] - lt);
                        ps[j] = pj;
                        ds[j] = pj * (ds[j] - di);
                    }
                    for (int j = n; j < kend; j++) ps[j] = ds[j] = 0.0f;
                }
                /* dq[i0:i0+r] (r, hd) = scale * dS (r, kend) k[0:kend] (kend, hd) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, hd, kend, scale, dp, kend, k, W, 0.0f,
                            dq + (size_t)i0 * W, W);
                /* dk[0:kend] (kend, hd) += scale * dS^T q[i0:i0+r] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hd, r, scale, dp, kend, q + (size_t)i0 * W,
                            W, 1.0f, dk, W);
                /* dv[0:kend] (kend, hd) += P^T dO[i0:i0+r] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hd, r, 1.0f, p, kend, dO + (size_t)i0 * QD,
                            QD, 1.0f, dv, W);
            }
        }
    }
}

/* ---- cross-entropy ------------------------------------------------------------ */
/* logits (C, V); targets (C) with -1 = ignore; loss, correct (C) */
void ml_k_cross_entropy(float *logits, const int32_t *targets, float *loss, uint8_t *correct, int C, int V,
                        float scale) {
    for (int c = 0; c < C; c++) {
        float *row = logits + (size_t)c * V;
        const int y = targets[c];
        if (y < 0) {
            loss[c] = 0.0f;
            correct[c] = 0;
            if (scale != 0.0f) memset(row, 0, sizeof(float) * (size_t)V);
            continue;
        }
        const float mx = ml_max(row, V);
        int am = 0;
        while (am < V - 1 && row[am] != mx) am++; /* first index of the maximum (torch.argmax) */
        const float ly = row[y];
        const float sum = ml_exp_shift_sum(row, V, mx);
        loss[c] = mx + logf(sum) - ly;
        correct[c] = (uint8_t)(am == y);
        if (scale != 0.0f) {
            const float f = scale / sum;
            for (int j = 0; j < V; j++) row[j] *= f;
            row[y] -= scale;
        }
    }
}
