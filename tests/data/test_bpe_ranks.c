/* BPE training with 1, 2, 4 ranks, each holding a different share of the
 * documents, learns exactly the merges of one process holding all of them. */
#include "ml_test.h"

#include "mergelens/data.h"

static void make_doc(int i, char *buf, size_t cap) {
    static const char *w[] = {"the", "then", "there", "cat", "cats", "scat", "def", "return", "x", "=", "(", ")",
                              "\n", "    ", "Lily", "\xC3\xA9t\xC3\xA9", "42", "1234", ",", ".", "'s", "they're"};
    ml_rng r;
    ml_rng_seed(&r, 3, (uint64_t)i);
    size_t n = 0, words = 1 + ml_rng_below(&r, 40);
    for (size_t k = 0; k < words && n + 16 < cap; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", ml_rng_below(&r, 3) ? " " : "", w[ml_rng_below(&r, 22)]);
}

static void test_rank_independent(void **state) {
    (void)state;
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    ml_docs *mine = NULL, *all = NULL;
    ML_ASSERT_OK(ml_docs_create(&mine));
    ML_ASSERT_OK(ml_docs_create(&all));
    char buf[1024];
    for (int i = 0; i < 600; i++) {
        make_doc(i, buf, sizeof buf);
        if (i % P == rank) ML_ASSERT_OK(ml_docs_append(mine, buf, strlen(buf)));
        ML_ASSERT_OK(ml_docs_append(all, buf, strlen(buf)));
    }
    ml_bpe_config cfg = {.vocab_size = 420};
    ml_tokenizer *dist = NULL, *serial = NULL;
    ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_WORLD, &cfg, mine, &dist));
    if (rank == 0) {
        ML_ASSERT_OK(ml_tokenizer_train(MPI_COMM_SELF, &cfg, all, &serial));
        int m = ml_tokenizer_n_merges(serial);
        assert_true(m > 100);
        assert_int_equal(ml_tokenizer_n_merges(dist), m);
        for (int r = 0; r < m; r++) {
            int32_t a[3], b[3];
            ML_ASSERT_OK(ml_tokenizer_merge(dist, r, &a[0], &a[1], &a[2]));
            ML_ASSERT_OK(ml_tokenizer_merge(serial, r, &b[0], &b[1], &b[2]));
            if (memcmp(a, b, sizeof a)) fail_msg("merge %d differs: (%d,%d) vs (%d,%d)", r, a[0], a[1], b[0], b[1]);
        }
        ml_tokenizer_destroy(&serial);
    }
    /* every rank holds the same tokenizer */
    int32_t last[3] = {0, 0, 0}, l0[3];
    ML_ASSERT_OK(ml_tokenizer_merge(dist, ml_tokenizer_n_merges(dist) - 1, &last[0], &last[1], &last[2]));
    memcpy(l0, last, sizeof l0);
    MPI_Bcast(l0, 3, MPI_INT32_T, 0, MPI_COMM_WORLD);
    assert_memory_equal(l0, last, sizeof l0);
    ml_tokenizer_destroy(&dist);
    ml_docs_destroy(&mine);
    ml_docs_destroy(&all);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_rank_independent)};
    return ml_test_run(argc, argv, "data_bpe_ranks", tests, 1);
}
