/* SAE training kernels over flat float arrays: forward + backward of the three
 * architectures, exact top-k selection, decoder-norm constraint, Adam, and the
 * geometric median (Weiszfeld).
 *
 * Dimension letters: N rows in this call, D = d_in, S = d_sae, K = k (TopK),
 * A = k_aux (AuxK latents per row).
 *
 * Loss for a global batch of G rows, of which this call sees N (per-rank
 * gradients add up across ranks):
 *   L = sum_b w_b ||x_hat_b - x_b||^2                      (nMSE, w_b = 1 / (G max(||x_b||^2, floor))
 *                                                          or 1 / (G E||x||^2) with ML_SAE_NORM_DATASET)
 *     + (l1 / G) sum_b sum_j f_bj c_j                     (standard: c_j = 1; anthropic: c_j = ||W_dec_j||)
 *     + alpha sum_b w_b ||e_hat_b - e_b||^2               (topk AuxK; e = x - x_hat, held constant)
 */
#include "mergelens/sae.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

struct ml_sae_work {
    int max_rows, S, D, K, A;
    float *xin;       /* (N,D) encoder input x - b_dec */
    float *f;         /* (N,S) dense: activations; topk: pre-activations */
    float *df;        /* (N,S) dense archs: gradient w.r.t. pre-activations */
    float *xhat;      /* (N,D) */
    float *dxhat;     /* (N,D) */
    float *rw;        /* (N) row weights w_b */
    int32_t *tk_idx;  /* (N,K) */
    float *tk_val;    /* (N,K) */
    int32_t *ax_idx;  /* (N,A) */
    float *ax_val;    /* (N,A) */
    float *rvec;      /* (D) per-row scratch */
    int32_t *dead_list; /* (S) */
    float *cj;        /* (S) L1 weights c_j */
    double *colsum;   /* (S) per-latent sums of activations */
    float *cnt;       /* (S) per-latent firing counts */
    int32_t *csc_ptr; /* (S+1) topk: the batch's codes grouped by latent */
    int32_t *csc_row; /* (N*K) */
    float *csc_val;   /* (N*K) */
    /* AuxK over a moderate number of dead latents M <= aux_mmax runs as dense
     * products over the dead subset (cache friendly) instead of row by row */
    int aux_mmax;
    float *ax_W;      /* (M,D) decoder rows of the dead latents */
    float *ax_Z;      /* (N,M) AuxK codes */
    float *ax_dZ;     /* (N,M) their gradients */
    float *ax_E;      /* (N,D) e_hat, then its gradient */
    float *ax_G;      /* (M,D) gradient rows before the scatter */
    float *ax_row;    /* (M) one row's dead pre-activations */
    int32_t *ax_pos;  /* (M) their positions in the dead list */
};

/* ---- small vector helpers (16 partial sums so GCC vectorises the reduction) ---- */
static inline float ml_dotf(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0;
    for (int l = 0; l < 16; l++) s += acc[l];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void ml_axpyf(float alpha, const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* ---- architecture names ------------------------------------------------------------ */
const char *ml_sae_arch_name(ml_sae_arch arch) {
    switch (arch) {
    case ML_SAE_STANDARD: return "standard";
    case ML_SAE_ANTHROPIC: return "anthropic";
    case ML_SAE_TOPK: return "topk";
    }
    return "unknown";
}

int ml_sae_arch_parse(const char *name, ml_sae_arch *arch) {
    for (int a = 0; a <= ML_SAE_TOPK; a++)
        if (name && !strcmp(name, ml_sae_arch_name((ml_sae_arch)a))) {
            *arch = (ml_sae_arch)a;
            return ML_OK;
        }
    return ML_FAIL(ML_ERR_ARG, "unknown SAE architecture '%s' (expected standard, anthropic or topk)",
                   name ? name : "(null)");
}

/* ---- top-k selection ----------------------------------------------------------------- */
/* "a ranks below b": smaller value, or equal value and larger index. */
static inline int ml_tk_worse(float va, int32_t ia, float vb, int32_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static inline void ml_tk_swap(float *v, int32_t *id, int a, int b) {
    float tv = v[a];
    v[a] = v[b];
    v[b] = tv;
    int32_t ti = id[a];
    id[a] = id[b];
    id[b] = ti;
}

static void ml_tk_sift_down(float *hv, int32_t *hi, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && ml_tk_worse(hv[l], hi[l], hv[m], hi[m])) m = l;
        if (r < n && ml_tk_worse(hv[r], hi[r], hv[m], hi[m])) m = r;
        if (m == i) return;
        ml_tk_swap(hv, hi, i, m);
        i = m;
    }
}

/* insert (x, j) into the full min-heap of kk entries if it ranks above the root */
static inline void ml_tk_offer(float *val, int32_t *idx, int kk, float x, int32_t j) {
    if (ml_tk_worse(val[0], idx[0], x, j)) {
        val[0] = x;
        idx[0] = j;
        ml_tk_sift_down(val, idx, kk, 0);
    }
}

int ml_topk_select(const float *v, int n, const int32_t *subset, int m, int k, int32_t *idx, float *val) {
    int cand = subset ? m : n;
    int kk = k < cand ? k : cand;
    if (kk <= 0) return 0;
    /* min-heap (root = worst kept) in idx/val, filled with the first kk candidates */
    for (int h = 0; h < kk; h++) {
        int32_t j = subset ? subset[h] : h;
        int i = h;
        idx[i] = j;
        val[i] = v[j];
        while (i > 0) { /* sift up */
            int p = (i - 1) / 2;
            if (!ml_tk_worse(val[i], idx[i], val[p], idx[p])) break;
            ml_tk_swap(val, idx, i, p);
            i = p;
        }
    }
    int c = kk;
    if (!subset) {
        /* later candidates have larger indices, so they enter only with a value
         * above the root's: skip 16-wide chunks with none (a vectorised test) */
        for (; c + 16 <= n; c += 16) {
            float thr = val[0];
            int any = 0;
            for (int l = 0; l < 16; l++) any |= v[c + l] > thr;
            if (!any) continue;
            for (int l = 0; l < 16; l++) ml_tk_offer(val, idx, kk, v[c + l], c + l);
        }
    }
    for (; c < cand; c++) {
        int32_t j = subset ? subset[c] : c;
        ml_tk_offer(val, idx, kk, v[j], j);
    }
    /* heap sort: repeatedly move the worst to the end -> descending order */
    for (int e = kk - 1; e > 0; e--) {
        ml_tk_swap(val, idx, 0, e);
        ml_tk_sift_down(val, idx, e, 0);
    }
    return kk;
}

/* Unordered top-k by quickselect: afterwards v[0..k) / id[0..k) hold the k
 * best of the n pairs (value descending, ties to the lower id: the same set
 * ml_topk_select picks). Expected O(n). */
static inline int ml_tk_better(float va, int32_t ia, float vb, int32_t ib) { return ml_tk_worse(vb, ib, va, ia); }

static void ml_select_top(float *v, int32_t *id, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi && k > lo && k <= hi) {
        /* median of three as pivot, moved to hi */
        int mid = lo + (hi - lo) / 2;
        int a = lo, b = mid, c = hi, m;
        if (ml_tk_better(v[a], id[a], v[b], id[b])) {
            if (ml_tk_better(v[b], id[b], v[c], id[c])) m = b;
            else m = ml_tk_better(v[a], id[a], v[c], id[c]) ? c : a;
        } else {
            if (ml_tk_better(v[a], id[a], v[c], id[c])) m = a;
            else m = ml_tk_better(v[b], id[b], v[c], id[c]) ? c : b;
        }
        ml_tk_swap(v, id, m, hi);
        float pv = v[hi];
        int32_t pi = id[hi];
        int st = lo;
        for (int i = lo; i < hi; i++)
            if (ml_tk_better(v[i], id[i], pv, pi)) ml_tk_swap(v, id, i, st++);
        ml_tk_swap(v, id, st, hi);
        /* [lo, st) better than the pivot, st the pivot, (st, hi] worse */
        if (st == k || st + 1 == k) return;
        if (st > k) hi = st - 1;
        else lo = st + 1;
    }
}

/* ---- workspace ---------------------------------------------------------------------------- */
int ml_sae_work_create(const ml_sae *sae, int max_rows, int k_aux, ml_sae_work **out) {
    *out = NULL;
    if (max_rows <= 0) return ML_FAIL(ML_ERR_ARG, "SAE workspace: max_rows must be positive (got %d)", max_rows);
    ml_sae_work *w = ml_calloc(1, sizeof *w);
    if (!w) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int N = max_rows, S = sae->d_sae, D = sae->d_in;
    int topk = sae->arch == ML_SAE_TOPK;
    w->max_rows = N;
    w->S = S;
    w->D = D;
    w->K = topk ? sae->k : 0;
    w->A = topk ? (k_aux < S ? k_aux : S) : 0;
    if (w->A < 0) w->A = 0;
    size_t ns = (size_t)N * (size_t)S, nd = (size_t)N * (size_t)D;
    w->xin = ml_malloc(sizeof(float) * nd);
    w->f = ml_malloc(sizeof(float) * ns);
    w->df = topk ? ml_malloc(1) : ml_malloc(sizeof(float) * ns);
    w->xhat = ml_malloc(sizeof(float) * nd);
    w->dxhat = ml_malloc(sizeof(float) * nd);
    w->rw = ml_malloc(sizeof(float) * (size_t)N);
    w->tk_idx = ml_malloc(sizeof(int32_t) * (size_t)N * (size_t)(w->K + 1));
    w->tk_val = ml_malloc(sizeof(float) * (size_t)N * (size_t)(w->K + 1));
    w->ax_idx = ml_malloc(sizeof(int32_t) * (size_t)N * (size_t)(w->A + 1));
    w->ax_val = ml_malloc(sizeof(float) * (size_t)N * (size_t)(w->A + 1));
    w->rvec = ml_malloc(sizeof(float) * (size_t)D);
    w->dead_list = ml_malloc(sizeof(int32_t) * (size_t)S);
    w->cj = ml_malloc(sizeof(float) * (size_t)S);
    w->colsum = ml_malloc(sizeof(double) * (size_t)S);
    w->cnt = ml_malloc(sizeof(float) * (size_t)S);
    w->csc_ptr = ml_malloc(sizeof(int32_t) * ((size_t)S + 1));
    w->csc_row = ml_malloc(sizeof(int32_t) * (size_t)N * (size_t)(w->K + 1));
    w->csc_val = ml_malloc(sizeof(float) * (size_t)N * (size_t)(w->K + 1));
    w->aux_mmax = w->A > 0 ? (8 * w->A < S ? 8 * w->A : S) : 0;
    size_t M = (size_t)(w->aux_mmax > 0 ? w->aux_mmax : 1);
    w->ax_W = ml_malloc(sizeof(float) * M * (size_t)(w->A > 0 ? D : 1));
    w->ax_Z = ml_malloc(sizeof(float) * M * (size_t)(w->A > 0 ? N : 1));
    w->ax_dZ = ml_malloc(sizeof(float) * M * (size_t)(w->A > 0 ? N : 1));
    w->ax_E = ml_malloc(sizeof(float) * (w->A > 0 ? nd : 1));
    w->ax_G = ml_malloc(sizeof(float) * M * (size_t)(w->A > 0 ? D : 1));
    w->ax_row = ml_malloc(sizeof(float) * M);
    w->ax_pos = ml_malloc(sizeof(int32_t) * M);
    if (!w->ax_pos || !w->ax_W || !w->ax_Z || !w->ax_dZ || !w->ax_E || !w->ax_G || !w->ax_row) {
        ml_sae_work_destroy(&w);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    if (!w->xin || !w->f || !w->df || !w->xhat || !w->dxhat || !w->rw || !w->tk_idx || !w->tk_val || !w->ax_idx ||
        !w->ax_val || !w->rvec || !w->dead_list || !w->cj || !w->colsum || !w->cnt || !w->csc_ptr ||
        !w->csc_row || !w->csc_val) {
        ml_sae_work_destroy(&w);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    *out = w;
    return ML_OK;
}

void ml_sae_work_destroy(ml_sae_work **wp) {
    if (!wp || !*wp) return;
    ml_sae_work *w = *wp;
    ml_free(w->xin);
    ml_free(w->f);
    ml_free(w->df);
    ml_free(w->xhat);
    ml_free(w->dxhat);
    ml_free(w->rw);
    ml_free(w->tk_idx);
    ml_free(w->tk_val);
    ml_free(w->ax_idx);
    ml_free(w->ax_val);
    ml_free(w->rvec);
    ml_free(w->dead_list);
    ml_free(w->cj);
    ml_free(w->colsum);
    ml_free(w->cnt);
    ml_free(w->csc_ptr);
    ml_free(w->csc_row);
    ml_free(w->csc_val);
    ml_free(w->ax_W);
    ml_free(w->ax_Z);
    ml_free(w->ax_dZ);
    ml_free(w->ax_E);
    ml_free(w->ax_G);
    ml_free(w->ax_row);
    ml_free(w->ax_pos);
    ml_free(w);
    *wp = NULL;
}

/* ---- forward pieces ------------------------------------------------------------------------ */
/* rw (N) row weights w_b from x (N,D) */
static void ml_row_weights(float *rw, const float *x, int N, int D, int64_t n_global, const ml_sae_loss_cfg *cfg) {
    if (cfg->mse_norm == ML_SAE_NORM_DATASET) {
        float w = (float)(1.0 / ((double)n_global * cfg->norm_sq));
        for (int b = 0; b < N; b++) rw[b] = w;
        return;
    }
    double floor_sq = cfg->norm_sq > 0 ? cfg->norm_sq : 1e-8;
    for (int b = 0; b < N; b++) {
        const float *xb = x + (size_t)b * D;
        double n2 = ml_dotf(xb, xb, D);
        rw[b] = (float)(1.0 / ((double)n_global * (n2 > floor_sq ? n2 : floor_sq)));
    }
}

/* xin (N,D) = x - b_dec (or a plain copy pointer when b_dec is not applied) */
static const float *ml_encoder_input(const ml_sae *sae, const float *x, int N, float *xin) {
    if (!sae->apply_b_dec_to_input) return x;
    int D = sae->d_in;
    for (int b = 0; b < N; b++) {
        const float *xb = x + (size_t)b * D;
        float *o = xin + (size_t)b * D;
        for (int i = 0; i < D; i++) o[i] = xb[i] - sae->b_dec[i];
    }
    return xin;
}

/* pre (N,S) = xin (N,D) W_enc_t^T (S,D) + b_enc */
static void ml_encoder_pre(const ml_sae *sae, const float *xin, int N, float *pre) {
    int S = sae->d_sae, D = sae->d_in;
    for (int b = 0; b < N; b++) memcpy(pre + (size_t)b * S, sae->b_enc, sizeof(float) * (size_t)S);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, S, D, 1.0f, xin, D, sae->W_enc_t, D, 1.0f, pre, S);
}

/* x_hat (N,D) = f (N,S) W_dec (S,D) + b_dec */
static void ml_decode_dense(const ml_sae *sae, const float *f, int N, float *xhat) {
    int S = sae->d_sae, D = sae->d_in;
    for (int b = 0; b < N; b++) memcpy(xhat + (size_t)b * D, sae->b_dec, sizeof(float) * (size_t)D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, S, 1.0f, f, S, sae->W_dec, D, 1.0f, xhat, D);
}

/* per row: diff = x_hat - x; loss terms; dxhat = 2 w_b diff (in place over x_hat's copy) */
static void ml_recon_loss(const float *x, const float *xhat, const float *rw, int N, int D, float *dxhat,
                          ml_sae_stats *st) {
    double lm = 0, se = 0;
    for (int b = 0; b < N; b++) {
        const float *xb = x + (size_t)b * D, *hb = xhat + (size_t)b * D;
        float *db = dxhat + (size_t)b * D;
        for (int i = 0; i < D; i++) db[i] = hb[i] - xb[i];
        float sq = ml_dotf(db, db, D);
        se += sq;
        lm += (double)rw[b] * sq;
        float s2 = 2.0f * rw[b];
        for (int i = 0; i < D; i++) db[i] *= s2;
    }
    st->loss_mse = lm;
    st->sq_err = se;
}

/* ---- dense architectures (standard, anthropic) ------------------------------------------------ */
static void ml_fb_dense(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *x, int N, int64_t G,
                        ml_sae_work *w, float *grads, float *fired, ml_sae_stats *st) {
    int S = sae->d_sae, D = sae->d_in;
    int anth = sae->arch == ML_SAE_ANTHROPIC;
    ml_row_weights(w->rw, x, N, D, G, cfg);
    const float *xin = ml_encoder_input(sae, x, N, w->xin);
    for (int j = 0; j < S; j++) {
        w->cj[j] = anth ? sqrtf(ml_dotf(sae->W_dec + (size_t)j * D, sae->W_dec + (size_t)j * D, D)) : 1.0f;
        w->colsum[j] = 0;
    }
    float *f = w->f;
    ml_prof_begin("sae.encode");
    ml_encoder_pre(sae, xin, N, f);
    ml_prof_end("sae.encode", 2.0 * N * S * D, 0);
    /* ReLU and per-latent sums in one branch-free pass (vectorised); row sums follow from them */
    float *cnt = w->cnt;
    memset(cnt, 0, sizeof(float) * (size_t)S);
    for (int b = 0; b < N; b++) {
        float *fb = f + (size_t)b * S;
        for (int j = 0; j < S; j++) {
            float v = fb[j] > 0 ? fb[j] : 0.0f;
            fb[j] = v;
            cnt[j] += v > 0 ? 1.0f : 0.0f;
            w->colsum[j] += v;
        }
    }
    double l1sum = 0, l0 = 0;
    for (int j = 0; j < S; j++) {
        l1sum += w->colsum[j] * w->cj[j];
        l0 += cnt[j];
        if (fired) fired[j] += cnt[j];
    }
    st->loss_l1 = cfg->l1 * l1sum / (double)G;
    st->l0 = l0;
    ml_prof_begin("sae.decode");
    ml_decode_dense(sae, f, N, w->xhat);
    ml_prof_end("sae.decode", 2.0 * N * S * D, 0);
    ml_recon_loss(x, w->xhat, w->rw, N, D, w->dxhat, st);
    if (!grads) return;

    size_t oe, obe, od, obd;
    ml_sae_param_offsets(sae, &oe, &obe, &od, &obd);
    float *gWe = grads + oe, *gbe = grads + obe, *gWd = grads + od, *gbd = grads + obd;
    ml_prof_begin("sae.backward");
    /* gW_dec (S,D) = f^T (S,N) dxhat (N,D) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, N, 1.0f, f, S, w->dxhat, D, 0.0f, gWd, D);
    /* df (N,S) = dxhat (N,D) W_dec^T (D,S) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, S, D, 1.0f, w->dxhat, D, sae->W_dec, D, 0.0f, w->df, S);
    float l1g = (float)(cfg->l1 / (double)G);
    memset(gbe, 0, sizeof(float) * (size_t)S);
    for (int b = 0; b < N; b++) {
        float *db = w->df + (size_t)b * S;
        const float *fb = f + (size_t)b * S;
        for (int j = 0; j < S; j++) {
            float g = fb[j] > 0 ? db[j] + l1g * w->cj[j] : 0.0f;
            db[j] = g;
            gbe[j] += g;
        }
    }
    /* gW_enc_t (S,D) = dpre^T (S,N) xin (N,D) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, N, 1.0f, w->df, S, xin, D, 0.0f, gWe, D);
    if (anth) /* d/dW_dec_j of l1/G * colsum_j * ||W_dec_j|| */
        for (int j = 0; j < S; j++)
            if (w->colsum[j] != 0 && w->cj[j] > 0)
                ml_axpyf((float)((double)l1g * w->colsum[j] / w->cj[j]), sae->W_dec + (size_t)j * D,
                         gWd + (size_t)j * D, D);
    /* gb_dec = colsum dxhat - [apply] W_enc_t^T gb_enc */
    memset(gbd, 0, sizeof(float) * (size_t)D);
    for (int b = 0; b < N; b++) ml_axpyf(1.0f, w->dxhat + (size_t)b * D, gbd, D);
    if (sae->apply_b_dec_to_input)
        cblas_sgemv(CblasRowMajor, CblasTrans, S, D, -1.0f, sae->W_enc_t, D, gbe, 1, 1.0f, gbd, 1);
    ml_prof_end("sae.backward", 6.0 * N * S * D, 0);
}

/* ---- TopK (sparse decoder and gradients) ---------------------------------------------------------- */
/* Gradients of one row's sparse code: idx/val (T) active latents, dout (D)
 * gradient w.r.t. the decoded vector, xin (D) encoder input. */
static void ml_sparse_grad(const ml_sae *sae, const int32_t *idx, const float *val, int T, const float *dout,
                           const float *xin, float *gWe, float *gbe, float *gWd) {
    int D = sae->d_in;
    for (int t = 0; t < T; t++) {
        if (!(val[t] > 0)) continue;
        int32_t j = idx[t];
        ml_axpyf(val[t], dout, gWd + (size_t)j * D, D);
        float dv = ml_dotf(dout, sae->W_dec + (size_t)j * D, D);
        ml_axpyf(dv, xin, gWe + (size_t)j * D, D);
        gbe[j] += dv;
    }
}

/* The TopK gradients latent by latent: the (row, value) pairs of the batch's
 * codes are grouped by latent (counting sort), then each latent's gradient
 * rows are accumulated in cache and written once; latents without pairs get
 * zero rows. This overwrites every W_enc_t, b_enc and W_dec gradient entry. */
static void ml_topk_grad_by_latent(const ml_sae *sae, const float *xin, int N, ml_sae_work *w, float *gWe,
                                   float *gbe, float *gWd) {
    int S = sae->d_sae, D = sae->d_in, K = sae->k;
    int32_t *ptr = w->csc_ptr;
    memset(ptr, 0, sizeof(int32_t) * ((size_t)S + 1));
    for (size_t p = 0; p < (size_t)N * K; p++)
        if (w->tk_val[p] > 0) ptr[w->tk_idx[p] + 1]++;
    for (int j = 0; j < S; j++) ptr[j + 1] += ptr[j];
    for (int b = 0; b < N; b++)
        for (int t = 0; t < K; t++) {
            size_t p = (size_t)b * K + t;
            if (!(w->tk_val[p] > 0)) continue;
            int32_t q = ptr[w->tk_idx[p]]++;
            w->csc_row[q] = b;
            w->csc_val[q] = w->tk_val[p];
        }
    for (int j = S; j > 0; j--) ptr[j] = ptr[j - 1]; /* the fill advanced each start to its end */
    ptr[0] = 0;
    for (int j = 0; j < S; j++) {
        float *gd = gWd + (size_t)j * D, *ge = gWe + (size_t)j * D;
        const float *wd = sae->W_dec + (size_t)j * D;
        memset(gd, 0, sizeof(float) * (size_t)D);
        memset(ge, 0, sizeof(float) * (size_t)D);
        float gb = 0;
        for (int32_t q = ptr[j]; q < ptr[j + 1]; q++) {
            const float *db = w->dxhat + (size_t)w->csc_row[q] * D;
            ml_axpyf(w->csc_val[q], db, gd, D);
            float dv = ml_dotf(db, wd, D);
            ml_axpyf(dv, xin + (size_t)w->csc_row[q] * D, ge, D);
            gb += dv;
        }
        gbe[j] = gb;
    }
}

/* AuxK as dense products over the M dead latents (M <= aux_mmax): the codes
 * Z (N,M) hold each row's A largest dead pre-activations (after ReLU).
 * e_hat = Z W_M; dE = 2 alpha w_b (e_hat - e); gW_dec[M] += Z^T dE;
 * dZ = (dE W_M^T) masked to Z > 0; gW_enc_t[M] += dZ^T xin; gb_enc[M] += colsum dZ. */
static double ml_aux_dense(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *xin, int N, int M,
                           ml_sae_work *w, float *gWe, float *gbe, float *gWd) {
    int D = sae->d_in;
    for (int t = 0; t < M; t++)
        memcpy(w->ax_W + (size_t)t * D, sae->W_dec + (size_t)w->dead_list[t] * D, sizeof(float) * (size_t)D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, M, 1.0f, w->ax_Z, M, w->ax_W, D, 0.0f, w->ax_E, D);
    double laux = 0;
    for (int b = 0; b < N; b++) { /* r = e_hat - e = e_hat + (x_hat - x) */
        float *eb = w->ax_E + (size_t)b * D;
        const float *db = w->dxhat + (size_t)b * D;
        float inv = 1.0f / (2.0f * w->rw[b]);
        for (int i = 0; i < D; i++) eb[i] += db[i] * inv;
        laux += cfg->aux_coef * (double)w->rw[b] * ml_dotf(eb, eb, D);
        float sc = (float)(2.0 * cfg->aux_coef * w->rw[b]);
        for (int i = 0; i < D; i++) eb[i] *= sc;
    }
    if (!gWd) return laux;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, D, N, 1.0f, w->ax_Z, M, w->ax_E, D, 0.0f, w->ax_G, D);
    for (int t = 0; t < M; t++) ml_axpyf(1.0f, w->ax_G + (size_t)t * D, gWd + (size_t)w->dead_list[t] * D, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, D, 1.0f, w->ax_E, D, w->ax_W, D, 0.0f, w->ax_dZ, M);
    for (int b = 0; b < N; b++) {
        const float *zb = w->ax_Z + (size_t)b * M;
        float *gb = w->ax_dZ + (size_t)b * M;
        for (int t = 0; t < M; t++) {
            gb[t] = zb[t] > 0 ? gb[t] : 0.0f;
            gbe[w->dead_list[t]] += gb[t];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, D, N, 1.0f, w->ax_dZ, M, xin, D, 0.0f, w->ax_G, D);
    for (int t = 0; t < M; t++) ml_axpyf(1.0f, w->ax_G + (size_t)t * D, gWe + (size_t)w->dead_list[t] * D, D);
    return laux;
}

/* AuxK row by row over many dead latents: sparse gathers and scatters. */
static double ml_aux_sparse(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *xin, int N, int A,
                            ml_sae_work *w, float *gWe, float *gbe, float *gWd) {
    int D = sae->d_in;
    double laux = 0;
    for (int b = 0; b < N; b++) {
        const float *db = w->dxhat + (size_t)b * D;
        const int32_t *ia = w->ax_idx + (size_t)b * A;
        const float *va = w->ax_val + (size_t)b * A;
        float *r = w->rvec;
        float inv = 1.0f / (2.0f * w->rw[b]);
        for (int i = 0; i < D; i++) r[i] = db[i] * inv;
        for (int t = 0; t < A; t++)
            if (va[t] > 0) ml_axpyf(va[t], sae->W_dec + (size_t)ia[t] * D, r, D);
        laux += cfg->aux_coef * (double)w->rw[b] * ml_dotf(r, r, D);
        if (!gWd) continue;
        float sc = (float)(2.0 * cfg->aux_coef * w->rw[b]);
        for (int i = 0; i < D; i++) r[i] *= sc;
        ml_sparse_grad(sae, ia, va, A, r, xin + (size_t)b * D, gWe, gbe, gWd);
    }
    return laux;
}

static void ml_fb_topk(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *x, int N, int64_t G,
                       const uint8_t *dead, ml_sae_work *w, float *grads, float *fired, ml_sae_stats *st) {
    int S = sae->d_sae, D = sae->d_in, K = sae->k;
    ml_row_weights(w->rw, x, N, D, G, cfg);
    const float *xin = ml_encoder_input(sae, x, N, w->xin);
    float *pre = w->f;
    ml_prof_begin("sae.encode");
    ml_encoder_pre(sae, xin, N, pre);
    ml_prof_end("sae.encode", 2.0 * N * S * D, 0);

    int A = 0, M = 0;
    if (dead && cfg->k_aux > 0 && cfg->aux_coef > 0 && w->A > 0) {
        for (int j = 0; j < S; j++)
            if (dead[j]) w->dead_list[M++] = j;
        A = M < w->A ? M : w->A;
        if (A > cfg->k_aux) A = cfg->k_aux;
    }
    int aux_dense = A > 0 && M <= w->aux_mmax;
    if (aux_dense) memset(w->ax_Z, 0, sizeof(float) * (size_t)N * (size_t)M);
    ml_prof_begin("sae.topk");
    double l0 = 0;
    for (int b = 0; b < N; b++) {
        const float *pb = pre + (size_t)b * S;
        int32_t *ib = w->tk_idx + (size_t)b * K;
        float *vb = w->tk_val + (size_t)b * K;
        int got = ml_topk_select(pb, S, NULL, S, K, ib, vb);
        for (int t = 0; t < K; t++) {
            if (t >= got) {
                ib[t] = 0;
                vb[t] = 0;
            }
            if (!(vb[t] > 0)) vb[t] = 0; /* ReLU after TopK */
            if (vb[t] > 0) {
                l0 += 1;
                if (fired) fired[ib[t]] += 1.0f;
            }
        }
        if (A == 0) continue;
        int32_t *ia = w->ax_idx + (size_t)b * A;
        float *va = w->ax_val + (size_t)b * A;
        if (aux_dense) { /* Z row: the A best dead pre-activations, by position in the dead list */
            float *zb = w->ax_Z + (size_t)b * M;
            if (A == M) {
                for (int t = 0; t < M; t++) {
                    float p = pb[w->dead_list[t]];
                    zb[t] = p > 0 ? p : 0.0f;
                }
                continue;
            }
            for (int t = 0; t < M; t++) {
                w->ax_row[t] = pb[w->dead_list[t]];
                w->ax_pos[t] = t;
            }
            ml_select_top(w->ax_row, w->ax_pos, M, A);
            for (int t = 0; t < A; t++)
                if (w->ax_row[t] > 0) zb[w->ax_pos[t]] = w->ax_row[t];
        } else {
            int ga = ml_topk_select(pb, S, w->dead_list, M, A, ia, va);
            for (int t = 0; t < A; t++)
                if (t >= ga || !(va[t] > 0)) va[t] = 0;
        }
    }
    ml_prof_end("sae.topk", 0, 0);
    st->l0 = l0;
    st->loss_l1 = 0;

    /* x_hat_b = b_dec + sum_t v_t W_dec[i_t] */
    ml_prof_begin("sae.decode");
    for (int b = 0; b < N; b++) {
        float *hb = w->xhat + (size_t)b * D;
        memcpy(hb, sae->b_dec, sizeof(float) * (size_t)D);
        const int32_t *ib = w->tk_idx + (size_t)b * K;
        const float *vb = w->tk_val + (size_t)b * K;
        for (int t = 0; t < K; t++)
            if (vb[t] > 0) ml_axpyf(vb[t], sae->W_dec + (size_t)ib[t] * D, hb, D);
    }
    ml_prof_end("sae.decode", 2.0 * N * K * D, 0);
    ml_recon_loss(x, w->xhat, w->rw, N, D, w->dxhat, st);

    size_t oe = 0, obe = 0, od = 0, obd = 0;
    float *gWe = NULL, *gbe = NULL, *gWd = NULL, *gbd = NULL;
    if (grads) {
        ml_sae_param_offsets(sae, &oe, &obe, &od, &obd);
        gWe = grads + oe;
        gbe = grads + obe;
        gWd = grads + od;
        gbd = grads + obd;
        memset(gbd, 0, sizeof(float) * (size_t)D);
        ml_prof_begin("sae.backward");
        ml_topk_grad_by_latent(sae, xin, N, w, gWe, gbe, gWd);
        ml_prof_end("sae.backward", 6.0 * N * K * D, 0);
    }
    /* AuxK: e_hat_b = sum_a v_a W_dec[i_a] should predict e = x - x_hat (held constant) */
    st->loss_aux = 0;
    if (A > 0) {
        ml_prof_begin("sae.auxk");
        st->loss_aux = aux_dense ? ml_aux_dense(sae, cfg, xin, N, M, w, gWe, gbe, gWd)
                                 : ml_aux_sparse(sae, cfg, xin, N, A, w, gWe, gbe, gWd);
        ml_prof_end("sae.auxk", aux_dense ? 8.0 * N * M * D : 6.0 * N * A * D, 0);
    }
    if (grads) {
        for (int b = 0; b < N; b++) ml_axpyf(1.0f, w->dxhat + (size_t)b * D, gbd, D);
        if (sae->apply_b_dec_to_input)
            cblas_sgemv(CblasRowMajor, CblasTrans, S, D, -1.0f, sae->W_enc_t, D, gbe, 1, 1.0f, gbd, 1);
    }
}

int ml_sae_forward_backward(const ml_sae *sae, const ml_sae_loss_cfg *cfg, const float *x, int n, int64_t n_global,
                            const uint8_t *dead, ml_sae_work *w, float *grads, float *fired, ml_sae_stats *st) {
    memset(st, 0, sizeof *st);
    if (n > w->max_rows)
        return ML_FAIL(ML_ERR_ARG, "SAE forward: %d rows exceed the workspace's %d", n, w->max_rows);
    if (w->S != sae->d_sae || w->D != sae->d_in || (sae->arch == ML_SAE_TOPK) != (w->K > 0) || sae->k > w->K)
        return ML_FAIL(ML_ERR_SHAPE, "SAE forward: workspace made for d_in %d d_sae %d k <= %d, SAE has %d %d %d", w->D,
                       w->S, w->K, sae->d_in, sae->d_sae, sae->k);
    if (n_global < n) return ML_FAIL(ML_ERR_ARG, "SAE forward: n_global %lld < n %d", (long long)n_global, n);
    if (cfg->mse_norm == ML_SAE_NORM_DATASET && !(cfg->norm_sq > 0))
        return ML_FAIL(ML_ERR_ARG, "SAE forward: dataset normalisation needs norm_sq > 0 (got %g)", cfg->norm_sq);
    st->rows = n;
    if (n == 0) {
        if (grads) memset(grads, 0, sizeof(float) * sae->n_params);
        return ML_OK;
    }
    if (sae->arch == ML_SAE_TOPK) ml_fb_topk(sae, cfg, x, n, n_global, dead, w, grads, fired, st);
    else ml_fb_dense(sae, cfg, x, n, n_global, w, grads, fired, st);
    double tot = st->loss_mse + st->loss_l1 + st->loss_aux;
    if (!isfinite(tot))
        return ML_FAIL(ML_ERR_NUMERIC, "SAE loss is not finite (nMSE %g, L1 %g, AuxK %g): lower the learning rate "
                                       "or check the activations for NaN/Inf",
                       st->loss_mse, st->loss_l1, st->loss_aux);
    return ML_OK;
}

/* ---- decoder norm constraint ------------------------------------------------------------------- */
void ml_sae_project_decoder_grad(const ml_sae *sae, float *grads) {
    size_t oe, obe, od, obd;
    ml_sae_param_offsets(sae, &oe, &obe, &od, &obd);
    int S = sae->d_sae, D = sae->d_in;
    for (int j = 0; j < S; j++) {
        const float *wj = sae->W_dec + (size_t)j * D;
        float *gj = grads + od + (size_t)j * D;
        float nn = ml_dotf(wj, wj, D);
        if (nn <= 0) continue;
        ml_axpyf(-ml_dotf(gj, wj, D) / nn, wj, gj, D);
    }
}

void ml_sae_normalize_decoder(ml_sae *sae) {
    int S = sae->d_sae, D = sae->d_in;
    for (int j = 0; j < S; j++) {
        float *wj = sae->W_dec + (size_t)j * D;
        float nn = sqrtf(ml_dotf(wj, wj, D));
        if (nn > 0) {
            float s = 1.0f / nn;
            for (int i = 0; i < D; i++) wj[i] *= s;
        }
    }
}

/* ---- Adam ------------------------------------------------------------------------------------------ */
void ml_adam_step(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                  float eps, int64_t t) {
    double bc1 = 1.0 - pow((double)beta1, (double)t), bc2 = 1.0 - pow((double)beta2, (double)t);
    float a = (float)((double)lr / bc1), rb2 = (float)(1.0 / sqrt(bc2));
    float c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = beta1 * m[i] + c1 * gi;
        float vi = beta2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= a * mi / (sqrtf(vi) * rb2 + eps);
    }
}

/* ---- geometric median (Weiszfeld) -------------------------------------------------------------------- */
int ml_geometric_median(MPI_Comm comm, const float *x, int64_t n_local, int d, int max_iter, double tol,
                        float *median, int *iters) {
    int rc = ML_OK;
    double *acc = ml_calloc((size_t)d + 1, sizeof(double)); /* sum w x (d), sum w */
    double *y = ml_calloc((size_t)d, sizeof(double));
    if (!acc || !y) {
        rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        goto done;
    }
    for (int64_t b = 0; b < n_local; b++)
        for (int i = 0; i < d; i++) acc[i] += x[(size_t)b * d + i];
    acc[d] = (double)n_local;
    rc = MPI_Allreduce(MPI_IN_PLACE, acc, d + 1, MPI_DOUBLE, MPI_SUM, comm);
    if (rc != MPI_SUCCESS) {
        rc = ml_mpi_error(rc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
        goto done;
    }
    if (acc[d] <= 0) {
        rc = ML_FAIL(ML_ERR_ARG, "geometric median of an empty sample");
        goto done;
    }
    for (int i = 0; i < d; i++) y[i] = acc[i] / acc[d];
    int it = 0;
    for (it = 0; it < max_iter; it++) {
        memset(acc, 0, sizeof(double) * ((size_t)d + 1));
        for (int64_t b = 0; b < n_local; b++) {
            const float *xb = x + (size_t)b * d;
            double dist = 0;
            for (int i = 0; i < d; i++) {
                double t = xb[i] - y[i];
                dist += t * t;
            }
            double wgt = 1.0 / fmax(sqrt(dist), 1e-10);
            for (int i = 0; i < d; i++) acc[i] += wgt * xb[i];
            acc[d] += wgt;
        }
        rc = MPI_Allreduce(MPI_IN_PLACE, acc, d + 1, MPI_DOUBLE, MPI_SUM, comm);
        if (rc != MPI_SUCCESS) {
            rc = ml_mpi_error(rc, "MPI_Allreduce", __FILE__, __LINE__, __func__);
            goto done;
        }
        double step = 0, ny = 0;
        for (int i = 0; i < d; i++) {
            double nv = acc[i] / acc[d];
            step += (nv - y[i]) * (nv - y[i]);
            ny += nv * nv;
            y[i] = nv;
        }
        if (sqrt(step) <= tol * (1.0 + sqrt(ny))) {
            it++;
            break;
        }
    }
    for (int i = 0; i < d; i++) median[i] = (float)y[i];
    if (iters) *iters = it;
    rc = ML_OK;
done:
    ml_free(acc);
    ml_free(y);
    return rc;
}
