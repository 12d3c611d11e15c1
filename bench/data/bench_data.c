/* Benchmark of the data module: BPE training time and encoding throughput
 * (MB/s per core) on a corpus, plus the loader's step rate.
 * Usage: bench_data [DOMAINS_SPEC] [--vocab V] [--ranks-note]
 *   DOMAINS_SPEC: "NAME=KIND:PATH[:ARG];..." (e.g. the demo's domains.txt);
 *   default: synthetic stories (generated here) + the Python standard library
 *   when /usr/lib/python3.11 exists. Run on one rank (mpirun -n 1). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mergelens/data.h"

/* CPU seconds of this process: the per-core rate on a shared machine. */
static double cpu_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ml_log_init(0, 1);
    ml_log_set_level(ML_LOG_WARN);
    int vocab = 8192;
    const char *spec = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = atoi(argv[++i]);
        else spec = argv[i];
    }
    char defspec[1024];
    if (!spec) {
        const char *st = "/tmp/mergelens_bench_stories.txt";
        if (ml_stories_write(st, 10000, 1) != ML_OK) goto fail;
        snprintf(defspec, sizeof defspec, "stories=text:%s%s", st,
                 ml_file_exists("/usr/lib/python3.11/json") ? ";python=dir:/usr/lib/python3.11/json:*.py;"
                                                              "python=dir:/usr/lib/python3.11/email:*.py;"
                                                              "python=dir:/usr/lib/python3.11/asyncio:*.py"
                                                            : "");
        spec = defspec;
    }
    ml_domain_set *ds = NULL;
    if (ml_domains_parse(spec, 0, &ds) != ML_OK) goto fail;
    ml_docs *all = NULL;
    if (ml_docs_create(&all) != ML_OK) goto fail;
    for (int d = 0; d < ds->n; d++) {
        ml_docs *x = NULL;
        if (ml_docs_load(ds->domains[d].sources, ds->domains[d].n_sources, 0, -1, &x, NULL) != ML_OK) goto fail;
        for (int64_t i = 0; i < x->n_docs; i++)
            if (ml_docs_append(all, x->bytes + x->offsets[i], (size_t)(x->offsets[i + 1] - x->offsets[i])) != ML_OK)
                goto fail;
        ml_docs_destroy(&x);
    }
    double mb = (double)all->offsets[all->n_docs] / 1e6;
    printf("corpus: %d domains, %lld documents, %.2f MB\n", ds->n, (long long)all->n_docs, mb);

    /* BPE training */
    ml_bpe_config cfg = {.vocab_size = vocab};
    ml_tokenizer *tok = NULL;
    double t0 = ml_wtime(), c0 = cpu_time();
    if (ml_tokenizer_train(MPI_COMM_SELF, &cfg, all, &tok) != ML_OK) goto fail;
    double t1 = ml_wtime(), c1 = cpu_time();
    printf("bpe_train: vocab %d (%d merges) on %.2f MB: %.2f s wall, %.2f s CPU (1 rank)\n",
           ml_tokenizer_vocab_size(tok), ml_tokenizer_n_merges(tok), mb, t1 - t0, c1 - c0);

    /* encoding: a fresh tokenizer (cold chunk cache), then a second pass (warm) */
    const char *tp = "/tmp/mergelens_bench_tok.h5";
    if (ml_tokenizer_save(tok, tp) != ML_OK) goto fail;
    ml_tokenizer_destroy(&tok);
    if (ml_tokenizer_load(tp, &tok) != ML_OK) goto fail;
    ml_ids ids = {0};
    for (int pass = 0; pass < 2; pass++) {
        ids.n = 0;
        double a = ml_wtime(), ca = cpu_time();
        for (int64_t i = 0; i < all->n_docs; i++)
            if (ml_tokenizer_encode(tok, all->bytes + all->offsets[i], (size_t)(all->offsets[i + 1] - all->offsets[i]),
                                    &ids) != ML_OK)
                goto fail;
        double b = ml_wtime(), cb = cpu_time();
        printf("encode (%s cache): %.2f MB -> %zu tokens (%.2f bytes/token): %.3f s wall = %.1f MB/s, "
               "%.3f s CPU = %.1f MB/s per core\n",
               pass ? "warm" : "cold", mb, ids.n, mb * 1e6 / (double)ids.n, b - a, mb / (b - a), cb - ca,
               mb / (cb - ca));
    }
    /* token stores (1 rank) and the loader: B=64 windows of T=256 per step */
    {
        char paths[16][256];
        const char *pp[16];
        double ts = ml_wtime();
        int nd = ds->n < 16 ? ds->n : 16;
        for (int d = 0; d < nd; d++) {
            snprintf(paths[d], sizeof paths[d], "/tmp/mergelens_bench_%s.h5", ds->domains[d].name);
            pp[d] = paths[d];
            ml_store_config sc = {.val_fraction = 0.2, .seed = 1, .token_type = "auto"};
            if (ml_store_write(MPI_COMM_SELF, tok, &ds->domains[d], &sc, paths[d], NULL) != ML_OK) goto fail;
        }
        double te = ml_wtime();
        printf("tokenize (read + encode + write stores, 1 rank): %.2f MB in %.2f s = %.1f MB/s\n", mb, te - ts,
               mb / (te - ts));
        ml_loader_config lc = {.n_domains = nd, .paths = pp, .split = "train", .global_batch = 64, .T = 256, .seed = 1};
        ml_loader *l = NULL;
        if (ml_loader_create(MPI_COMM_SELF, &lc, &l) != ML_OK) goto fail;
        int32_t *batch = ml_malloc(64 * 257 * sizeof *batch);
        int nrows = 0, steps = 200;
        double la = ml_wtime();
        for (int s = 0; s < steps; s++)
            if (ml_loader_next(l, batch, &nrows, NULL) != ML_OK) goto fail;
        double lb = ml_wtime();
        printf("loader: %d steps of 64 x 257 tokens in %.3f s = %.0f steps/s (%.1f M tokens/s)\n", steps, lb - la,
               steps / (lb - la), steps * 64.0 * 257 / (lb - la) / 1e6);
        double sa = ml_wtime();
        if (ml_loader_seek(l, 100000) != ML_OK) goto fail;
        printf("loader: seek to step 100000 in %.3f s\n", ml_wtime() - sa);
        ml_free(batch);
        ml_loader_destroy(&l);
        for (int d = 0; d < nd; d++) remove(paths[d]);
    }
    /* decode */
    double a = ml_wtime();
    char *text = NULL;
    size_t len = 0;
    if (ml_tokenizer_decode(tok, ids.ids, ids.n, &text, &len) != ML_OK) goto fail;
    printf("decode: %.1f MB/s\n", (double)len / 1e6 / (ml_wtime() - a));
    ml_free(text);
    ml_ids_free(&ids);
    ml_tokenizer_destroy(&tok);
    ml_docs_destroy(&all);
    ml_domains_destroy(&ds);
    remove(tp);
    MPI_Finalize();
    return 0;
fail:
    ml_error_print(stderr, 1);
    MPI_Finalize();
    return 1;
}
