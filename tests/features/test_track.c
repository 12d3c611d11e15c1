/* Planted tracking case: B's dictionary is a known permutation of part of
 * A's with noise, some A features removed, some new ones added, one dead
 * feature on each side. The tracker must recover exactly the planted
 * persist / disappear / emerge / dead sets (max matching and one-to-one),
 * and the tracking file must hold them. Runs with 1, 2 and 4 ranks. */
#include <math.h>

#include "mergelens/io.h"
#include "ml_test.h"
#include "feat_test_util.h"

enum { FA = 60, FB = 52, NTOK = 4000, NKEEP = 42, CHUNK = 512 };

typedef struct {
    float *X, *Y;        /* (NTOK, FA), (NTOK, FB) */
    int32_t a2b[FA];     /* planted partner or -1 */
    int32_t b2a[FB];
    uint8_t deadA[FA], deadB[FB];
} planted;

static void make_planted(planted *p) {
    ml_rng rng;
    ml_rng_seed(&rng, 1234, 0);
    p->X = malloc(sizeof(float) * NTOK * FA);
    p->Y = malloc(sizeof(float) * NTOK * FB);
    ft_sparse_codes(&rng, NTOK, FA, 0.05, p->X);
    ft_sparse_codes(&rng, NTOK, FB, 0.05, p->Y); /* unplanted B features: new (emerging) */
    /* random permutation of A; the first NKEEP map into random B slots */
    int32_t perm_a[FA], perm_b[FB];
    for (int i = 0; i < FA; i++) perm_a[i] = i;
    for (int j = 0; j < FB; j++) perm_b[j] = j;
    for (int i = FA - 1; i > 0; i--) {
        int k = (int)ml_rng_below(&rng, (uint64_t)i + 1), t = perm_a[i];
        perm_a[i] = perm_a[k];
        perm_a[k] = t;
    }
    for (int j = FB - 1; j > 0; j--) {
        int k = (int)ml_rng_below(&rng, (uint64_t)j + 1), t = perm_b[j];
        perm_b[j] = perm_b[k];
        perm_b[k] = t;
    }
    for (int i = 0; i < FA; i++) p->a2b[i] = -1;
    for (int j = 0; j < FB; j++) p->b2a[j] = -1;
    memset(p->deadA, 0, sizeof p->deadA);
    memset(p->deadB, 0, sizeof p->deadB);
    for (int k = 0; k < NKEEP; k++) {
        int i = perm_a[k], j = perm_b[k];
        p->a2b[i] = j;
        p->b2a[j] = i;
        float scale = 0.5f + 1.5f * (float)ml_rng_uniform(&rng);
        for (int t = 0; t < NTOK; t++) {
            float a = p->X[t * FA + i];
            /* noise: 10% multiplicative jitter, 0.5% spurious firings */
            float v = a > 0 ? a * scale * (1.0f + 0.1f * ml_rng_normal(&rng)) : 0.0f;
            if (a == 0 && ml_rng_uniform(&rng) < 0.005) v = 0.5f;
            p->Y[t * FB + j] = v > 0 ? v : 0.0f;
        }
    }
    /* dead: one removed A feature and one new B feature never fire */
    int ia = perm_a[FA - 1], jb = perm_b[FB - 1];
    for (int t = 0; t < NTOK; t++) {
        p->X[t * FA + ia] = 0;
        p->Y[t * FB + jb] = 0;
    }
    p->deadA[ia] = 1;
    p->deadB[jb] = 1;
}

static void check_edge(const ml_track_edge *e, const planted *p) {
    int64_t np = 0, nd = 0, ne = 0;
    for (int i = 0; i < FA; i++) {
        int expect = p->deadA[i] ? ML_FEAT_DEAD : p->a2b[i] >= 0 ? ML_FEAT_PERSIST : ML_FEAT_DISAPPEAR;
        if (e->parent_status[i] != expect)
            fail_msg("parent %d: status %d, planted %d (score %.3f partner %d)", i, e->parent_status[i], expect,
                     e->parent_score[i], e->parent_partner[i]);
        if (expect == ML_FEAT_PERSIST) assert_int_equal(e->parent_partner[i], p->a2b[i]);
        np += expect == ML_FEAT_PERSIST;
        nd += expect == ML_FEAT_DISAPPEAR;
    }
    for (int j = 0; j < FB; j++) {
        int expect = p->deadB[j] ? ML_FEAT_DEAD : p->b2a[j] >= 0 ? ML_FEAT_PERSIST : ML_FEAT_EMERGE;
        if (e->child_status[j] != expect)
            fail_msg("child %d: status %d, planted %d (score %.3f)", j, e->child_status[j], expect, e->child_score[j]);
        if (expect == ML_FEAT_PERSIST) assert_int_equal(e->child_partner[j], p->b2a[j]);
        ne += expect == ML_FEAT_EMERGE;
    }
    assert_int_equal(e->counts[ML_TRACK_PARENT_PERSIST], np);
    assert_int_equal(e->counts[ML_TRACK_PARENT_DISAPPEAR], nd);
    assert_int_equal(e->counts[ML_TRACK_PARENT_DEAD], 1);
    assert_int_equal(e->counts[ML_TRACK_CHILD_PERSIST], NKEEP);
    assert_int_equal(e->counts[ML_TRACK_CHILD_EMERGE], ne);
    assert_int_equal(e->counts[ML_TRACK_CHILD_DEAD], 1);
    ML_ASSERT_CLOSE(e->share_parent_persist, (double)NKEEP / (FA - 1), 1e-12);
    ML_ASSERT_CLOSE(e->share_emerge, (double)ne / (FB - 1), 1e-12);
}

static void test_planted(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    planted p;
    make_planted(&p);
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ml_corr_config cfg = {.n_a = FA, .n_b = FB, .max_rows = CHUNK};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cfg, &c));
    ft_csr cx = ft_to_csr(p.X, NTOK, FA, 0, FA), cy = ft_to_csr(p.Y, NTOK, FB, 0, FB);
    for (int64_t t0 = 0; t0 < NTOK; t0 += CHUNK) {
        int64_t m = NTOK - t0 < CHUNK ? NTOK - t0 : CHUNK;
        ml_fcodes A = ft_csr_view(&cx, t0, m, 0, FA), B = ft_csr_view(&cy, t0, m, 0, FB);
        ML_ASSERT_OK(ml_corr_add(c, &A, &B));
    }
    ML_ASSERT_OK(ml_corr_finalize(c));
    ml_best best;
    ML_ASSERT_OK(ml_corr_best(c, &best));
    /* margins: planted pairs well above tau, everything else well below */
    double lo = 1, hi = -1;
    for (int i = 0; i < FA; i++) {
        if (p.a2b[i] >= 0) lo = fmin(lo, best.a_score[i]);
        else if (!p.deadA[i]) hi = fmax(hi, best.a_score[i]);
    }
    printf("planted: weakest persisting r = %.3f, strongest non-match r = %.3f\n", lo, hi);
    ml_track_edge e_max;
    ML_ASSERT_OK(ml_track_classify(&best, 0.8, &e_max));
    check_edge(&e_max, &p);

    /* one-to-one matching on the candidate pairs gives the same sets */
    ml_pair *pairs = NULL;
    int64_t np = 0;
    ML_ASSERT_OK(ml_corr_pairs(c, 0.3, &pairs, &np));
    int32_t ap[FA], bp[FB];
    ML_ASSERT_OK(ml_assign_pairs(FA, FB, pairs, np, 0.3, 0, ap, bp));
    ml_best one;
    ML_ASSERT_OK(ml_best_from_assignment(&best, pairs, np, ap, bp, &one));
    ml_track_edge e_one;
    ML_ASSERT_OK(ml_track_classify(&one, 0.8, &e_one));
    check_edge(&e_one, &p);

    /* decoder cosine: B's decoder rows are the planted A rows, permuted, with noise */
    const int64_t d = 24;
    float *WA = malloc(sizeof(float) * FA * d), *WB = malloc(sizeof(float) * FB * d);
    ml_rng rng;
    ml_rng_seed(&rng, 99, 0);
    for (int64_t k = 0; k < FA * d; k++) WA[k] = ml_rng_normal(&rng);
    for (int64_t k = 0; k < FB * d; k++) WB[k] = ml_rng_normal(&rng);
    for (int j = 0; j < FB; j++)
        if (p.b2a[j] >= 0)
            for (int64_t q = 0; q < d; q++) WB[j * d + q] = WA[p.b2a[j] * d + q] + 0.05f * ml_rng_normal(&rng);
    ml_best cb;
    ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, NULL, &cb));
    for (int j = 0; j < FB; j++)
        if (p.b2a[j] >= 0) {
            assert_int_equal(cb.b_partner[j], p.b2a[j]);
            assert_true(cb.b_score[j] > 0.99f);
        }

    /* tracking file: edges, best, summary, traces, full matrix */
    const char *dir = ml_test_dir("features_track");
    char path[1200];
    snprintf(path, sizeof path, "%s/tracking.h5", dir);
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_tracking_create(MPI_COMM_WORLD, path, "{\"tau\": 0.8}", 0.8, &h));
    ML_ASSERT_OK(ml_tracking_write_edge(h, "base_to_lua", "base", "lua", "activation", &e_max));
    ML_ASSERT_OK(ml_tracking_write_best(h, "/edges/base_to_lua/activation", &best));
    ML_ASSERT_OK(ml_tracking_write_best(h, "/edges/base_to_lua/decoder_cos", &cb));
    const char *names[2] = {"base_to_lua", "base_to_lua_1to1"};
    const ml_track_edge *edges[2] = {&e_max, &e_one};
    ML_ASSERT_OK(ml_tracking_write_summary(h, 2, names, edges));
    const int32_t traces[2][3] = {{0, 1, -1}, {3, 0, 2}};
    const char *models[3] = {"base", "lua", "merge"};
    ML_ASSERT_OK(ml_tracking_write_traces(h, "flow", 3, models, &traces[0][0], 2));
    ML_ASSERT_OK(ml_corr_write_matrix(c, h, "/edges/base_to_lua/activation/r", 7));
    ML_ASSERT_OK(ml_h5_close(&h));

    float *r_full = malloc(sizeof(float) * FA * FB), *r_file = malloc(sizeof(float) * FA * FB);
    ML_ASSERT_OK(ml_corr_gather(c, r_full));
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.tracking", 1, 1, &h));
    hsize_t dr[2] = {FA, FB}, dpa[1] = {FA}, dcb[1] = {FB}, dsum[2] = {2, ML_TRACK_NCOUNTS}, dtr[2] = {2, 3};
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/base_to_lua/activation/r", ML_F32, 2, dr, r_file));
    assert_memory_equal(r_full, r_file, sizeof(float) * FA * FB);
    uint8_t st[FA];
    int32_t cp[FB];
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/base_to_lua/parent_status", ML_U8, 1, dpa, st));
    assert_memory_equal(st, e_max.parent_status, FA);
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/edges/base_to_lua/decoder_cos/b_partner", ML_I32, 1, dcb, cp));
    assert_memory_equal(cp, cb.b_partner, sizeof cp);
    int64_t counts[2 * ML_TRACK_NCOUNTS];
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/summary/counts", ML_I64, 2, dsum, counts));
    assert_memory_equal(counts + ML_TRACK_NCOUNTS, e_one.counts, sizeof e_one.counts);
    int32_t tr[6];
    ML_ASSERT_OK(ml_h5_read_tensor(h, "/traces/flow/features", ML_I32, 2, dtr, tr));
    assert_memory_equal(tr, traces, sizeof tr);
    char *s = NULL;
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/edges/base_to_lua", "child", &s));
    assert_string_equal(s, "lua");
    ml_free(s);
    ML_ASSERT_OK(ml_h5_get_attr_str(h, "/summary", "edges", &s));
    assert_string_equal(s, "[\"base_to_lua\",\"base_to_lua_1to1\"]");
    ml_free(s);
    ML_ASSERT_OK(ml_h5_close(&h));

    ml_free(pairs);
    ml_best_free(&best);
    ml_best_free(&one);
    ml_best_free(&cb);
    ml_track_edge_free(&e_max);
    ml_track_edge_free(&e_one);
    ml_corr_destroy(&c);
    ft_csr_free(&cx);
    ft_csr_free(&cy);
    free(WA);
    free(WB);
    free(r_full);
    free(r_file);
    free(p.X);
    free(p.Y);
    assert_int_equal(ml_alloc_live(), live0);
}

/* A code stream over an in-memory CSR (full width), with token ids. */
typedef struct {
    const ft_csr *csr;
    const int32_t *tokens;
    int64_t n, F, pos, short_by; /* short_by: give fewer rows (mismatch test) */
} mem_stream;

static int mem_next(void *ctx, int64_t f0, int64_t nf, int64_t max_rows, ml_fcodes *out, const int32_t **tokens) {
    mem_stream *m = ctx;
    (void)f0;
    (void)nf;
    int64_t k = m->n - m->pos < max_rows ? m->n - m->pos : max_rows;
    if (k > 0 && m->short_by) k -= m->short_by;
    *out = ft_csr_view(m->csr, m->pos, k, 0, m->F);
    if (tokens) *tokens = m->tokens + m->pos;
    m->pos += k;
    return ML_OK;
}

static void test_compare_streams(void **state) {
    (void)state;
    long live0 = ml_alloc_live();
    planted p;
    make_planted(&p);
    ft_csr cx = ft_to_csr(p.X, NTOK, FA, 0, FA), cy = ft_to_csr(p.Y, NTOK, FB, 0, FB);
    int32_t *tok = malloc(sizeof(int32_t) * NTOK);
    for (int t = 0; t < NTOK; t++) tok[t] = (t * 7) % 97;
    const int64_t d = 16, V = 30;
    float *WA = malloc(sizeof(float) * FA * d), *WB = malloc(sizeof(float) * FB * d), *U = malloc(sizeof(float) * V * d);
    float G[16 * 16];
    ml_rng rng;
    ml_rng_seed(&rng, 5, 1);
    for (int64_t k = 0; k < FA * d; k++) WA[k] = ml_rng_normal(&rng);
    for (int64_t k = 0; k < FB * d; k++) WB[k] = ml_rng_normal(&rng);
    for (int64_t k = 0; k < V * d; k++) U[k] = ml_rng_normal(&rng);
    ML_ASSERT_OK(ml_logit_gram(U, V, d, NULL, NULL, d, 1, G));
    mem_stream ma = {&cx, tok, NTOK, FA, 0, 0}, mb = {&cy, tok, NTOK, FB, 0, 0};
    ml_codes_stream sa = {mem_next, &ma, FA, NTOK}, sb = {mem_next, &mb, FB, NTOK};
    ml_compare_config cfg = {.max_rows = 700, .vocab = 97, .dec_a = WA, .dec_b = WB, .d_in = d, .gram = G};
    ml_compare_result res;
    ML_ASSERT_OK(ml_compare_run(MPI_COMM_WORLD, &cfg, &sa, &sb, &res));
    assert_int_equal(res.n_tokens, NTOK);
    assert_int_equal(res.n_common_ids, 97);
    assert_true(res.has_one_to_one && res.has_token_profile && res.has_decoder && res.has_logit);
    ML_ASSERT_CLOSE(res.match_floor, 0.2, 1e-12);
    /* each measure equals its direct computation */
    ml_corr_config cc = {.n_a = FA, .n_b = FB, .max_rows = 700};
    ml_corr *c = NULL;
    ML_ASSERT_OK(ml_corr_create(MPI_COMM_WORLD, &cc, &c));
    ml_tprof *pa = NULL, *pb = NULL;
    ML_ASSERT_OK(ml_tprof_create(c, 0, 97, &pa));
    ML_ASSERT_OK(ml_tprof_create(c, 1, 97, &pb));
    ml_fcodes A = ft_csr_view(&cx, 0, NTOK, 0, FA), B = ft_csr_view(&cy, 0, NTOK, 0, FB);
    ML_ASSERT_OK(ml_tprof_add(pa, tok, &A));
    ML_ASSERT_OK(ml_tprof_add(pb, tok, &B));
    int64_t nc;
    ML_ASSERT_OK(ml_tprof_feed(pa, pb, c, &nc));
    ML_ASSERT_OK(ml_corr_finalize(c));
    ml_best tp, dec, lg;
    ML_ASSERT_OK(ml_corr_best(c, &tp));
    ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, NULL, &dec));
    ML_ASSERT_OK(ml_cosine_best(MPI_COMM_WORLD, WA, FA, WB, FB, d, G, &lg));
    assert_memory_equal(tp.a_partner, res.token_profile.a_partner, sizeof(int32_t) * FA);
    assert_memory_equal(tp.b_score, res.token_profile.b_score, sizeof(float) * FB);
    assert_memory_equal(dec.a_partner, res.decoder.a_partner, sizeof(int32_t) * FA);
    assert_memory_equal(lg.b_partner, res.logit.b_partner, sizeof(int32_t) * FB);
    for (int i = 0; i < FA; i++) {
        assert_int_equal(res.activation.a_partner[i], p.deadA[i] ? -1 : (p.a2b[i] >= 0 ? p.a2b[i] : res.activation.a_partner[i]));
        if (p.a2b[i] >= 0) assert_int_equal(res.one_to_one.a_partner[i], p.a2b[i]);
    }
    /* the file: statuses from the activation max matching + one group per measure */
    char path[1200];
    snprintf(path, sizeof path, "%s/compare.h5", ml_test_dir("features_compare"));
    ml_h5 *h = NULL;
    ml_track_edge e;
    ML_ASSERT_OK(ml_tracking_create(MPI_COMM_WORLD, path, NULL, 0.8, &h));
    ML_ASSERT_OK(ml_tracking_write_compare(h, "base_to_lua", "base", "lua", 0.8, &res, &e));
    ML_ASSERT_OK(ml_h5_close(&h));
    check_edge(&e, &p);
    ML_ASSERT_OK(ml_h5_open(MPI_COMM_WORLD, path, "mergelens.tracking", 1, 1, &h));
    const char *groups[5] = {"activation", "activation_1to1", "token_profile", "decoder_cos", "logit_cos"};
    const ml_best *bests[5] = {&res.activation, &res.one_to_one, &res.token_profile, &res.decoder, &res.logit};
    for (int k = 0; k < 5; k++) {
        char ds[256];
        float sc[FB];
        hsize_t dims[1] = {FB};
        snprintf(ds, sizeof ds, "/edges/base_to_lua/%s/b_score", groups[k]);
        ML_ASSERT_OK(ml_h5_read_tensor(h, ds, ML_F32, 1, dims, sc));
        assert_memory_equal(sc, bests[k]->b_score, sizeof sc);
    }
    int64_t ncommon = 0;
    ML_ASSERT_OK(ml_h5_get_attr_int(h, "/edges/base_to_lua/token_profile", "n_common_ids", &ncommon));
    assert_int_equal(ncommon, 97);
    ML_ASSERT_OK(ml_h5_close(&h));
    ml_track_edge_free(&e);

    ml_compare_result_free(&res);
    /* streams that disagree on the chunking fail on every rank */
    ma.pos = mb.pos = 0;
    mb.short_by = 1;
    ML_ASSERT_FAILS(ml_compare_run(MPI_COMM_WORLD, &cfg, &sa, &sb, &res), ML_ERR_SHAPE,
                    "stream A gave a chunk of 700 rows but stream B one of 699");

    ml_compare_result_free(&res);
    ml_best_free(&tp);
    ml_best_free(&dec);
    ml_best_free(&lg);
    ml_tprof_destroy(&pa);
    ml_tprof_destroy(&pb);
    ml_corr_destroy(&c);
    ft_csr_free(&cx);
    ft_csr_free(&cy);
    free(tok);
    free(WA);
    free(WB);
    free(U);
    free(p.X);
    free(p.Y);
    assert_int_equal(ml_alloc_live(), live0);
}

static int sweep_compare(void) {
    static planted p;
    static ft_csr cx, cy;
    static int32_t tok[NTOK];
    static float W[FA * 8];
    static int init = 0;
    if (!init) {
        make_planted(&p);
        cx = ft_to_csr(p.X, NTOK, FA, 0, FA);
        cy = ft_to_csr(p.Y, NTOK, FB, 0, FB);
        for (int t = 0; t < NTOK; t++) tok[t] = t % 13;
        for (int k = 0; k < FA * 8; k++) W[k] = (float)((k * 37) % 11) - 5.0f;
        init = 1;
    }
    mem_stream ma = {&cx, tok, NTOK, FA, 0, 0}, mb = {&cy, tok, NTOK, FB, 0, 0};
    ml_codes_stream sa = {mem_next, &ma, FA, NTOK}, sb = {mem_next, &mb, FB, NTOK};
    ml_compare_config cfg = {.max_rows = 1500, .vocab = 13, .dec_a = W, .dec_b = W, .d_in = 8, .gram = NULL};
    ml_compare_result res;
    int rc = ml_compare_run(MPI_COMM_SELF, &cfg, &sa, &sb, &res);
    if (rc == ML_OK) ml_compare_result_free(&res);
    return rc;
}

static void test_alloc_failures(void **state) {
    (void)state;
    ft_alloc_sweep(sweep_compare, 20);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_planted), cmocka_unit_test(test_compare_streams),
                                       cmocka_unit_test(test_alloc_failures)};
    return ml_test_run(argc, argv, "features_track", tests, sizeof tests / sizeof tests[0]);
}
