/* Batch loader tests (1, 2, 4 ranks) on token stores whose token at
 * position i is i (+ 30000 for domain 1), so every row names its window:
 * rows are whole windows [k CTX, k CTX + CTX]; ranks never share a window within
 * an epoch; an epoch covers every window once; the mixture follows the
 * weights; the rows of all ranks equal those of a single-process loader;
 * seek resumes exactly; sequential mode walks each window once in order. */
#include "ml_test.h"

#include <math.h>

#include "mergelens/data.h"
#include "mergelens/io.h"

#define CTX 8
#define GB 8
static int rank, nranks;
static char paths[2][1200];
static const int64_t ntok[2] = {1000, 1500}, nval[2] = {100, 41};
static const int32_t base[2] = {0, 30000};

static void write_store(const char *path, int d) {
    ml_h5 *h = NULL;
    ML_ASSERT_OK(ml_h5_create(MPI_COMM_SELF, path, "mergelens.tokens", 1, &h));
    for (int s = 0; s < 2; s++) {
        int64_t n = s ? nval[d] : ntok[d];
        uint16_t *t = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) t[i] = (uint16_t)(base[d] + i);
        hsize_t dims[1] = {(hsize_t)n};
        ML_ASSERT_OK(ml_h5_write_tensor(h, s ? "val/tokens" : "train/tokens", ML_U16, 1, dims, t));
        int64_t off[2] = {0, n};
        hsize_t d2[1] = {2};
        ML_ASSERT_OK(ml_h5_write_tensor(h, s ? "val/doc_offsets" : "train/doc_offsets", ML_I64, 1, d2, off));
        free(t);
    }
    ML_ASSERT_OK(ml_h5_set_attr_int(h, "/", "vocab_size", 65536));
    ML_ASSERT_OK(ml_h5_close(&h));
}

static int setup(void **state) {
    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *dir = ml_test_dir("data_loader");
    for (int d = 0; d < 2; d++) {
        snprintf(paths[d], sizeof paths[d], "%s/d%d.h5", dir, d);
        if (rank == 0) write_store(paths[d], d);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

static ml_loader *make(MPI_Comm comm, const double *w, const char *split, uint64_t seed, int seq) {
    const char *p[2] = {paths[0], paths[1]};
    ml_loader_config cfg = {.n_domains = 2, .paths = p, .weights = w, .split = split, .global_batch = GB, .T = CTX,
                            .seed = seed, .sequential = seq};
    ml_loader *l = NULL;
    ML_ASSERT_OK(ml_loader_create(comm, &cfg, &l));
    return l;
}

/* Window key of a row: domain * 1e6 + start position; checks the row. */
static int64_t row_key(const int32_t *row, int32_t dom) {
    int d = row[0] >= 30000;
    assert_int_equal(d, dom);
    int64_t start = row[0] - base[d];
    assert_int_equal(start % CTX, 0);
    for (int i = 0; i <= CTX; i++) assert_int_equal(row[i], row[0] + i);
    return d * 1000000 + start / CTX;
}

/* All rows of one global step on rank 0 (gathered), with domain ids. */
static void step_all(ml_loader *l, int32_t *rows, int32_t *doms, int *nrows_total) {
    int B = GB / nranks, n;
    int32_t *mine = malloc((size_t)B * (CTX + 1) * 4), *md = malloc((size_t)B * 4);
    ML_ASSERT_OK(ml_loader_next(l, mine, &n, md));
    MPI_Gather(mine, B * (CTX + 1), MPI_INT32_T, rows, B * (CTX + 1), MPI_INT32_T, 0, MPI_COMM_WORLD);
    MPI_Gather(md, B, MPI_INT32_T, doms, B, MPI_INT32_T, 0, MPI_COMM_WORLD);
    int tot = 0;
    MPI_Reduce(&n, &tot, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (nrows_total) *nrows_total = tot;
    free(mine);
    free(md);
}

static void test_mixture_epoch_ranks(void **state) {
    (void)state;
    const double w[2] = {0.25, 0.75};
    ml_loader *l = make(MPI_COMM_WORLD, w, "train", 5, 0), *ref = NULL;
    const int64_t W0 = (ntok[0] - 1) / CTX, W1 = (ntok[1] - 1) / CTX;
    assert_int_equal(ml_loader_domain_windows(l, 0), W0);
    assert_int_equal(ml_loader_windows_per_epoch(l), W0 + W1);
    if (rank == 0) ref = make(MPI_COMM_SELF, w, "train", 5, 0);
    /* 100 steps = 800 windows: 200 from domain 0 (> one epoch of 124), 600 from domain 1 (> 187 * 3) */
    int steps = 100;
    int32_t rows[GB * (CTX + 1)], doms[GB], rrows[GB * (CTX + 1)], rdoms[GB];
    char *seen = calloc(2000000, 1);
    int64_t count[2] = {0, 0};
    for (int s = 0; s < steps; s++) {
        step_all(l, rows, doms, NULL);
        if (rank != 0) continue;
        int n;
        /* a single-process loader with the same global batch gives the same rows */
        ML_ASSERT_OK(ml_loader_next(ref, rrows, &n, rdoms));
        assert_int_equal(n, GB);
        assert_memory_equal(rows, rrows, sizeof rows);
        assert_memory_equal(doms, rdoms, sizeof doms);
        for (int j = 0; j < GB; j++) {
            int64_t k = row_key(rows + j * (CTX + 1), doms[j]);
            int d = doms[j];
            int64_t W = d ? W1 : W0;
            /* within one epoch of a domain no window repeats (across ranks and steps) */
            if (count[d] < W) {
                assert_int_equal(seen[k], 0);
                seen[k] = 1;
            }
            count[d]++;
            if (count[d] == W) { /* the epoch is complete: every window seen once */
                for (int64_t i = 0; i < W; i++) assert_int_equal(seen[d * 1000000 + i], 1);
            }
        }
        /* the mixture: after each step, counts within 1 of the weights */
        double tot = (double)(s + 1) * GB;
        assert_true(fabs((double)count[0] - 0.25 * tot) <= 1.0);
    }
    free(seen);
    ml_loader_destroy(&ref);
    ml_loader_destroy(&l);
}

static void test_seek_and_seed(void **state) {
    (void)state;
    int B = GB / nranks, n;
    ml_loader *a = make(MPI_COMM_WORLD, NULL, "train", 11, 0), *b = make(MPI_COMM_WORLD, NULL, "train", 11, 0);
    ml_loader *c = make(MPI_COMM_WORLD, NULL, "train", 12, 0);
    int32_t *x = malloc((size_t)B * (CTX + 1) * 4), *y = malloc((size_t)B * (CTX + 1) * 4);
    int32_t *z = malloc((size_t)B * (CTX + 1) * 4);
    int32_t **hist = malloc(60 * sizeof *hist);
    for (int s = 0; s < 60; s++) {
        hist[s] = malloc((size_t)B * (CTX + 1) * 4);
        ML_ASSERT_OK(ml_loader_next(a, hist[s], &n, NULL));
        assert_int_equal(n, B);
    }
    assert_int_equal(ml_loader_step(a), 60);
    /* resume at any step (forward, backward, past an epoch boundary) */
    const int64_t at[] = {37, 5, 0, 59, 40};
    for (int i = 0; i < 5; i++) {
        ML_ASSERT_OK(ml_loader_seek(b, at[i]));
        ML_ASSERT_OK(ml_loader_next(b, y, &n, NULL));
        assert_memory_equal(y, hist[at[i]], (size_t)B * (CTX + 1) * 4);
        assert_int_equal(ml_loader_step(b), at[i] + 1);
    }
    /* another seed gives another order */
    int differ = 0;
    for (int s = 0; s < 5; s++) {
        ML_ASSERT_OK(ml_loader_next(c, z, &n, NULL));
        differ |= memcmp(z, hist[s], (size_t)B * (CTX + 1) * 4) != 0;
    }
    assert_true(differ);
    for (int s = 0; s < 60; s++) free(hist[s]);
    free(hist);
    free(x);
    free(y);
    free(z);
    ml_loader_destroy(&a);
    ml_loader_destroy(&b);
    ml_loader_destroy(&c);
}

static void test_sequential(void **state) {
    (void)state;
    ml_loader *l = make(MPI_COMM_WORLD, NULL, "val", 0, 1);
    const int64_t W0 = (nval[0] - 1) / CTX, W1 = (nval[1] - 1) / CTX; /* 12 + 5 = 17 windows */
    assert_int_equal(ml_loader_windows_per_epoch(l), W0 + W1);
    int32_t rows[GB * (CTX + 1)], doms[GB];
    int64_t next = 0, steps = 0;
    for (;;) {
        int tot;
        step_all(l, rows, doms, &tot);
        MPI_Bcast(&tot, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (tot == 0) break;
        steps++;
        if (rank == 0) {
            /* gathered rows are rank-major; with fewer rows a rank's tail is unused */
            int B = GB / nranks;
            for (int r = 0; r < nranks; r++)
                for (int j = 0; j < B; j++) {
                    int64_t g = (steps - 1) * GB + r * B + j;
                    if (g >= W0 + W1) continue;
                    int64_t k = row_key(rows + (r * B + j) * (CTX + 1), doms[r * B + j]);
                    int64_t want = g < W0 ? g : 1000000 + (g - W0);
                    assert_int_equal(k, want);
                    next++;
                }
        }
    }
    assert_int_equal(steps, (W0 + W1 + GB - 1) / GB);
    if (rank == 0) assert_int_equal(next, W0 + W1);
    ml_loader_destroy(&l);
}

static ml_loader *make_subset(MPI_Comm comm, uint64_t seed, int index, int count) {
    const char *p[2] = {paths[0], paths[1]};
    ml_loader_config cfg = {.n_domains = 2, .paths = p, .split = "train", .global_batch = GB, .T = CTX, .seed = seed,
                            .subset_index = index, .subset_count = count};
    ml_loader *l = NULL;
    ML_ASSERT_OK(ml_loader_create(comm, &cfg, &l));
    return l;
}

/* Subsets 0/2 and 1/2: each draws only the windows of its contiguous slice
 * [floor(i W / 2), floor((i+1) W / 2)) of each domain, covering it once per
 * epoch; the two slices are disjoint and lie inside the split; the rows are
 * deterministic for a seed and the same for any rank count; 0/1 is the whole
 * split, bit for bit. */
static void test_subsets(void **state) {
    (void)state;
    const int steps = 40; /* 320 windows: > 2 epochs of either slice (62 + 93, 62 + 94 windows) */
    const int64_t W[2] = {(ntok[0] - 1) / CTX, (ntok[1] - 1) / CTX};
    int32_t rows[GB * (CTX + 1)], doms[GB], rrows[GB * (CTX + 1)], rdoms[GB];
    char *owner = calloc(2000000, 1); /* 1 + subset of each window seen */
    for (int sub = 0; sub < 2; sub++) {
        ml_loader *l = make_subset(MPI_COMM_WORLD, 7, sub, 2), *ref = NULL, *again = NULL;
        if (rank == 0) {
            ref = make_subset(MPI_COMM_SELF, 7, sub, 2);
            again = make_subset(MPI_COMM_SELF, 7, sub, 2);
        }
        int64_t lo[2], n[2], count[2] = {0, 0};
        for (int d = 0; d < 2; d++) {
            lo[d] = W[d] * sub / 2;
            n[d] = W[d] * (sub + 1) / 2 - lo[d];
            assert_int_equal(ml_loader_domain_first_window(l, d), lo[d]);
            assert_int_equal(ml_loader_domain_windows(l, d), n[d]);
        }
        assert_int_equal(ml_loader_windows_per_epoch(l), n[0] + n[1]);
        char *seen = calloc(2000000, 1);
        for (int s = 0; s < steps; s++) {
            step_all(l, rows, doms, NULL);
            if (rank != 0) continue;
            int nr;
            ML_ASSERT_OK(ml_loader_next(ref, rrows, &nr, rdoms)); /* 1 rank == P ranks */
            assert_memory_equal(rows, rrows, sizeof rows);
            assert_memory_equal(doms, rdoms, sizeof doms);
            ML_ASSERT_OK(ml_loader_next(again, rrows, &nr, rdoms)); /* deterministic for the seed */
            assert_memory_equal(rows, rrows, sizeof rows);
            for (int j = 0; j < GB; j++) {
                int d = doms[j];
                int64_t k = row_key(rows + j * (CTX + 1), d), w = k - d * 1000000;
                /* inside the slice, hence inside the split: tokens [w CTX, w CTX + CTX] < ntok */
                assert_in_range(w, lo[d], lo[d] + n[d] - 1);
                assert_true(w * CTX + CTX < ntok[d]);
                /* never drawn by the other subset */
                assert_true(owner[k] == 0 || owner[k] == 1 + sub);
                owner[k] = (char)(1 + sub);
                if (count[d] < n[d]) { /* one epoch of the slice: each window once */
                    assert_int_equal(seen[k], 0);
                    seen[k] = 1;
                }
                count[d]++;
            }
        }
        if (rank == 0)
            for (int d = 0; d < 2; d++) {
                assert_true(count[d] >= n[d]);
                for (int64_t w = lo[d]; w < lo[d] + n[d]; w++) assert_int_equal(seen[d * 1000000 + w], 1);
            }
        free(seen);
        ml_loader_destroy(&again);
        ml_loader_destroy(&ref);
        ml_loader_destroy(&l);
    }
    if (rank == 0) { /* the two subsets together: every window of the split, each in one subset */
        for (int d = 0; d < 2; d++)
            for (int64_t w = 0; w < W[d]; w++) assert_true(owner[d * 1000000 + w] != 0);
    }
    free(owner);
    /* subset 0/1 is the default loader, bit for bit */
    ml_loader *a = make_subset(MPI_COMM_WORLD, 3, 0, 1), *b = make(MPI_COMM_WORLD, NULL, "train", 3, 0);
    int B = GB / nranks, na, nb;
    int32_t *x = malloc((size_t)B * (CTX + 1) * 4), *y = malloc((size_t)B * (CTX + 1) * 4);
    for (int s = 0; s < 30; s++) {
        ML_ASSERT_OK(ml_loader_next(a, x, &na, NULL));
        ML_ASSERT_OK(ml_loader_next(b, y, &nb, NULL));
        assert_int_equal(na, nb);
        assert_memory_equal(x, y, (size_t)B * (CTX + 1) * 4);
    }
    free(x);
    free(y);
    ml_loader_destroy(&a);
    ml_loader_destroy(&b);
    /* seek inside a subset resumes exactly */
    ml_loader *c = make_subset(MPI_COMM_WORLD, 9, 1, 3), *e = make_subset(MPI_COMM_WORLD, 9, 1, 3);
    int32_t *h = malloc((size_t)25 * B * (CTX + 1) * 4), *z = malloc((size_t)B * (CTX + 1) * 4);
    for (int s = 0; s < 25; s++) ML_ASSERT_OK(ml_loader_next(c, h + (size_t)s * B * (CTX + 1), &na, NULL));
    ML_ASSERT_OK(ml_loader_seek(e, 17));
    ML_ASSERT_OK(ml_loader_next(e, z, &na, NULL));
    assert_memory_equal(z, h + (size_t)17 * B * (CTX + 1), (size_t)B * (CTX + 1) * 4);
    free(h);
    free(z);
    ml_loader_destroy(&c);
    ml_loader_destroy(&e);
}

static void test_loader_errors(void **state) {
    (void)state;
    const char *p[2] = {paths[0], paths[1]};
    ml_loader_config cfg = {.n_domains = 2, .paths = p, .split = "train", .global_batch = 6, .T = CTX, .seed = 1};
    ml_loader *l = NULL;
    if (nranks == 4) ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "global_batch 6");
    cfg.global_batch = GB;
    cfg.split = "test";
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "split 'test'");
    cfg.split = "val";
    cfg.T = 64; /* domain 1's val split has 41 tokens */
    const double half[2] = {0.5, 0.5};
    cfg.weights = half;
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "fewer than one window");
    const double w[2] = {1, 0}; /* a zero weight excuses a short domain */
    cfg.weights = w;
    ML_ASSERT_OK(ml_loader_create(MPI_COMM_WORLD, &cfg, &l));
    ml_loader_destroy(&l);
    assert_null(l);
    /* subsets: index out of range; a slice smaller than its share of one batch */
    cfg.weights = half;
    cfg.T = CTX; /* val: 12 and 5 windows */
    cfg.subset_index = 2;
    cfg.subset_count = 2;
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "subset 2/2 must satisfy");
    cfg.subset_index = 0;
    cfg.subset_count = -1;
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "subset 0/-1 must satisfy");
    cfg.subset_index = 1;
    cfg.subset_count = 2; /* d0: windows [6, 12) = 6 >= 4; d1: windows [2, 5) = 3 < 4 of the 8-window batch */
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG,
                    "d1.h5: subset 1/2 of split 'val' holds 3 windows of T+1 = 9 tokens, fewer than the 4");
    cfg.subset_index = 3;
    cfg.subset_count = 4; /* d0: windows [9, 12) = 3 < 4, reported first */
    ML_ASSERT_FAILS(ml_loader_create(MPI_COMM_WORLD, &cfg, &l), ML_ERR_ARG, "d0.h5: subset 3/4");
    assert_null(l);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_mixture_epoch_ranks, setup),
        cmocka_unit_test(test_seek_and_seed),
        cmocka_unit_test(test_sequential),
        cmocka_unit_test(test_subsets),
        cmocka_unit_test(test_loader_errors),
    };
    return ml_test_run(argc, argv, "data_loader", tests, sizeof tests / sizeof tests[0]);
}
