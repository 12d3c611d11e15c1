/* Commands of the data module:
 *   mergelens tokenizer train|export|import ...
 *   mergelens tokenize ...
 *   mergelens data stories|stats ...
 * Domains come from positional NAME=KIND:PATH[:ARG] arguments, --domains
 * "spec;spec", or the `domains` mapping of a YAML job file (--job), at the
 * root or under `data:`. A job file's `tokenizer:` / `tokenize:` section sets
 * the options of those commands; the command line overrides it. */
#include "mergelens/config.h"
#include "mergelens/data.h"

#include "internal.h"

#include <string.h>

/* ---- shared setup ----------------------------------------------------------- */
typedef struct {
    ml_options *o;
    ml_node *job;
    char **pos;
    int npos, help;
    ml_domain_set *domains;
} cmd_ctx;

static void ctx_free(cmd_ctx *c) {
    ml_options_destroy(&c->o);
    ml_node_destroy(&c->job);
    ml_free(c->pos);
    ml_domains_destroy(&c->domains);
}

static const char *job_arg(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--job=", 6)) return argv[i] + 6;
        if (!strcmp(argv[i], "--job") && i + 1 < argc) return argv[i + 1];
    }
    return NULL;
}

/* Options from the job file section, then argv. Prints help on rank 0. */
static int cmd_setup(MPI_Comm comm, const char *section, const ml_option_spec *specs, int argc, char **argv,
                     int want_domains, cmd_ctx *c) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    memset(c, 0, sizeof *c);
    ML_CHECK(ml_options_create(section, specs, &c->o));
    const char *job = job_arg(argc, argv);
    if (job) {
        ML_CHECK(ml_yaml_load(job, &c->job));
        static const char *const ignore[] = {"domains", NULL};
        ML_CHECK(ml_options_apply_node(c->o, ml_node_get(c->job, section), ignore));
    }
    ML_CHECK(ml_options_apply_argv(c->o, argc, argv, &c->npos, &c->pos, &c->help));
    if (c->help) {
        if (rank == 0) {
            printf("usage: mergelens %s [options]%s\n\noptions:\n", section,
                   want_domains ? " [NAME=KIND:PATH[:ARG] ...]" : "");
            ml_options_print_help(c->o, stdout);
            if (want_domains)
                printf("\ndomains: NAME=KIND:PATH[:ARG] with KIND text (ARG delimiter, default <|endoftext|>), "
                       "blank, lines, file, jsonl (ARG field, default text), dir (ARG include globs); or the "
                       "`domains` mapping of --job (docs/modules/data.md)\n");
        }
        return ML_OK;
    }
    ML_CHECK(ml_options_finalize(c->o));
    if (!want_domains) {
        if (c->npos) return ML_FAIL(ML_ERR_ARG, "%s: unexpected argument '%s'", section, c->pos[0]);
        return ML_OK;
    }
    int skip_bad = ml_opt_bool(c->o, "skip_bad_lines");
    const char *spec = ml_opt_str(c->o, "domains");
    if (c->npos || (spec && *spec)) {
        size_t n = spec ? strlen(spec) + 1 : 1;
        for (int i = 0; i < c->npos; i++) n += strlen(c->pos[i]) + 1;
        char *all = ml_malloc(n + 1);
        if (!all) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        snprintf(all, n + 1, "%s", spec ? spec : "");
        for (int i = 0; i < c->npos; i++) {
            strcat(all, ";");
            strcat(all, c->pos[i]);
        }
        int rc = ml_domains_parse(all, skip_bad, &c->domains);
        ml_free(all);
        ML_CHECK(rc);
    } else if (c->job) {
        const ml_node *d = ml_node_get(c->job, "domains");
        if (!d) d = ml_node_path(c->job, "data.domains");
        if (!d) return ML_FAIL(ML_ERR_CONFIG, "%s: no 'domains' mapping (at the root or under 'data')", c->job->file);
        ML_CHECK(ml_domains_from_node(d, &c->domains));
        for (int i = 0; i < c->domains->n; i++)
            for (int k = 0; k < c->domains->domains[i].n_sources; k++)
                c->domains->domains[i].sources[k].skip_bad |= skip_bad;
    }
    if (!c->domains || c->domains->n == 0)
        return ML_FAIL(ML_ERR_ARG, "%s: no domains given (NAME=KIND:PATH arguments, --domains or --job)", section);
    return ML_OK;
}

#define DOMAIN_OPTS                                                                                             \
    {"job", ML_OPT_STRING, "", 0, -1, NULL, "YAML job file (its `domains` and this command's section)"},          \
        {"domains", ML_OPT_STRING, "", 0, -1, NULL, "domain sources \"NAME=KIND:PATH[:ARG];...\""},             \
        {"skip_bad_lines", ML_OPT_BOOL, "false", 0, -1, NULL, "skip (and count) bad JSONL lines instead of failing"}

/* ---- tokenizer train -------------------------------------------------------- */
static const ml_option_spec train_specs[] = {
    DOMAIN_OPTS,
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "tokenizer file to write (mergelens.tokenizer HDF5)"},
    {"vocab_size", ML_OPT_INT, "8192", 260, 16777216, NULL, "vocabulary size incl. 256 bytes and the specials"},
    {"specials", ML_OPT_STRING, "<bos>,<|endoftext|>,<pad>", 0, -1, NULL, "special tokens, ','-separated"},
    {"min_frequency", ML_OPT_INT, "2", 1, 1e15, NULL, "stop when the best pair is rarer than this"},
    {"sample_bytes", ML_OPT_INT, "0", 0, 1e15, NULL, "train on at most this many bytes per domain (0 = all)"},
    {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "seed of the document sample"},
    {"export_json", ML_OPT_STRING, "", 0, -1, NULL, "also write a Hugging Face tokenizer.json here"},
    ML_OPT_END};

typedef struct {
    ml_bpe_trainer *t;
    const uint8_t *take; /* NULL = index % P == rank */
    int rank, P;
    int64_t bytes;
} feed_ctx;

static int feed_cb(void *ctx, int64_t index, const char *text, size_t len) {
    feed_ctx *f = ctx;
    if (f->take ? !f->take[index] : index % f->P != f->rank) return ML_OK;
    f->bytes += (int64_t)len;
    return ml_bpe_trainer_add(f->t, text, len);
}

static int sizes_cb(void *ctx, int64_t index, const char *text, size_t len) {
    (void)index;
    (void)text;
    return ml_i64_push(ctx, (int64_t)len);
}

/* Seeded sample of one domain's documents up to budget bytes; the sampled
 * documents are dealt round-robin to ranks (take[i] = 1 on its rank). */
static int sample_domain(MPI_Comm comm, const ml_domain *d, int64_t budget, uint64_t seed, uint8_t **take) {
    int rank, P, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    ml_i64vec s = {0};
    if (rank == 0) rc = ml_corpus_foreach(d->sources, d->n_sources, sizes_cb, &s, NULL);
    ML_CHECK(ml_agree(comm, rc));
    int64_t nd = (int64_t)s.n;
    ML_CHECK_MPI(MPI_Bcast(&nd, 1, MPI_INT64_T, 0, comm));
    s.n = (size_t)nd;
    if (rank != 0) {
        s.v = ml_malloc(((size_t)s.n + 1) * sizeof *s.v);
        rc = s.v ? ML_OK : ML_ERR_NOMEM;
    }
    ML_CHECK(ml_agree(comm, rc));
    ML_CHECK(ml_mpi_bcast(comm, s.v, s.n, MPI_INT64_T, 0));
    int64_t *perm = ml_malloc(((size_t)s.n + 1) * sizeof *perm);
    uint8_t *t = ml_calloc((size_t)s.n + 1, 1);
    if (!perm || !t) {
        ml_free(perm);
        ml_free(t);
        ml_free(s.v);
        return ML_FAIL(ML_ERR_NOMEM, "out of memory sampling %lld documents", (long long)s.n);
    }
    for (int64_t i = 0; i < nd; i++) perm[i] = i;
    ml_rng rng;
    ml_rng_seed(&rng, seed, 0x73616d70 /* "samp" */);
    int64_t used = 0, k = 0;
    for (int64_t i = 0; i < nd && used < budget; i++, k++) {
        int64_t j = i + (int64_t)ml_rng_below(&rng, (uint64_t)(nd - i)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
        used += s.v[perm[i]];
        if (k % P == rank) t[perm[i]] = 1;
    }
    ml_free(perm);
    ml_free(s.v);
    *take = t;
    return ML_OK;
}

static int split_specials(const char *list, char ***out, int *n) {
    int cap = 1;
    for (const char *p = list; *p; p++) cap += *p == ',';
    char **v = ml_calloc((size_t)cap + 1, sizeof *v);
    if (!v) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    int k = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len) {
            v[k] = ml_malloc(len + 1);
            if (!v[k]) break;
            memcpy(v[k], p, len);
            v[k++][len] = '\0';
        }
        if (!e) break;
        p = e + 1;
    }
    *out = v;
    *n = k;
    return ML_OK;
}

static int cmd_tokenizer_train(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    cmd_ctx c;
    ml_bpe_trainer *t = NULL;
    ml_tokenizer *tok = NULL;
    char **specials = NULL;
    int ns = 0;
    uint8_t *take = NULL;
    ML_CHECK_GOTO(cmd_setup(comm, "tokenizer", train_specs, argc, argv, 1, &c), done);
    if (c.help) goto done;
    ML_CHECK_GOTO(split_specials(ml_opt_str(c.o, "specials"), &specials, &ns), done);
    ml_bpe_config cfg = {.vocab_size = (int)ml_opt_int(c.o, "vocab_size"),
                         .specials = (const char *const *)specials,
                         .n_specials = ns,
                         .min_frequency = ml_opt_int(c.o, "min_frequency")};
    ML_CHECK_GOTO(ml_bpe_trainer_create(&cfg, &t), done);
    double t0 = ml_wtime();
    int64_t budget = ml_opt_int(c.o, "sample_bytes"), total = 0;
    for (int i = 0; i < c.domains->n; i++) {
        const ml_domain *d = &c.domains->domains[i];
        if (budget > 0) ML_CHECK_GOTO(sample_domain(comm, d, budget, (uint64_t)ml_opt_int(c.o, "seed") + (uint64_t)i, &take), done);
        feed_ctx f = {t, take, rank, P, 0};
        ml_corpus_stats st;
        rc = ml_corpus_foreach(d->sources, d->n_sources, feed_cb, &f, &st);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        int64_t used = 0;
        ML_CHECK_GOTO(MPI_Allreduce(&f.bytes, &used, 1, MPI_INT64_T, MPI_SUM, comm) == MPI_SUCCESS ? ML_OK : ML_ERR_MPI,
                      done);
        total += used;
        ml_info("tokenizer: domain %s: %lld documents, %.2f MB, %lld bytes of invalid UTF-8; %.2f MB sampled", d->name,
                (long long)st.docs, st.bytes / 1e6, (long long)st.invalid_utf8_bytes, used / 1e6);
        if (st.docs == 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "domain '%s' is empty", d->name);
        ml_free(take);
        take = NULL;
    }
    double t1 = ml_wtime();
    ML_CHECK_GOTO(ml_bpe_trainer_finish(t, comm, &tok), done);
    double t2 = ml_wtime();
    ml_info("tokenizer: %d tokens (%d merges) from %.2f MB in %.2f s (counting %.2f s, merges %.2f s) on %d ranks",
            ml_tokenizer_vocab_size(tok), ml_tokenizer_n_merges(tok), total / 1e6, t2 - t0, t1 - t0, t2 - t1, P);
    rc = ML_OK;
    if (rank == 0) {
        rc = ml_tokenizer_save(tok, ml_opt_str(c.o, "out"));
        const char *js = ml_opt_str(c.o, "export_json");
        if (rc == ML_OK && js && *js) rc = ml_tokenizer_save_hf_json(tok, js);
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ml_info("tokenizer: wrote %s", ml_opt_str(c.o, "out"));
done:
    for (int i = 0; i < ns; i++) ml_free(specials[i]);
    ml_free(specials);
    ml_free(take);
    ml_bpe_trainer_destroy(&t);
    ml_tokenizer_destroy(&tok);
    ctx_free(&c);
    return rc;
}

/* ---- tokenizer export / import ------------------------------------------------ */
static const ml_option_spec convert_specs[] = {
    {"job", ML_OPT_STRING, "", 0, -1, NULL, "YAML job file"},
    {"in", ML_OPT_STRING, NULL, 0, -1, NULL, "tokenizer to read (HDF5 or tokenizer.json)"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "file to write"},
    ML_OPT_END};

static int cmd_tokenizer_convert(MPI_Comm comm, int argc, char **argv, int to_json) {
    int rc = ML_OK, rank;
    MPI_Comm_rank(comm, &rank);
    cmd_ctx c;
    ml_tokenizer *tok = NULL;
    ML_CHECK_GOTO(cmd_setup(comm, "tokenizer", convert_specs, argc, argv, 0, &c), done);
    if (c.help) goto done;
    if (rank == 0) {
        rc = ml_tokenizer_load(ml_opt_str(c.o, "in"), &tok);
        if (rc == ML_OK)
            rc = to_json ? ml_tokenizer_save_hf_json(tok, ml_opt_str(c.o, "out"))
                         : ml_tokenizer_save(tok, ml_opt_str(c.o, "out"));
        if (rc == ML_OK)
            ml_info("tokenizer: %s -> %s: %d tokens, %d merges, bos %d, eos %d, pad %d", ml_opt_str(c.o, "in"),
                    ml_opt_str(c.o, "out"), ml_tokenizer_vocab_size(tok), ml_tokenizer_n_merges(tok),
                    ml_tokenizer_bos_id(tok), ml_tokenizer_eos_id(tok), ml_tokenizer_pad_id(tok));
    }
    rc = ml_agree(comm, rc);
done:
    ml_tokenizer_destroy(&tok);
    ctx_free(&c);
    return rc;
}

int ml_cmd_tokenizer(MPI_Comm comm, int argc, char **argv) {
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "train")) return cmd_tokenizer_train(comm, argc - 1, argv + 1);
    if (!strcmp(sub, "export")) return cmd_tokenizer_convert(comm, argc - 1, argv + 1, 1);
    if (!strcmp(sub, "import")) return cmd_tokenizer_convert(comm, argc - 1, argv + 1, 0);
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !*sub) {
        if (rank == 0)
            printf("usage: mergelens tokenizer train|export|import [options]\n"
                   "  train   train byte-level BPE on domains (--out tok.h5 --vocab_size 8192 NAME=KIND:PATH ...)\n"
                   "  export  write a Hugging Face tokenizer.json (--in tok.h5 --out tokenizer.json)\n"
                   "  import  read a Hugging Face tokenizer.json of BPE type (--in tokenizer.json --out tok.h5)\n");
        return *sub ? ML_OK : ML_FAIL(ML_ERR_ARG, "tokenizer: missing subcommand (train, export, import)");
    }
    return ML_FAIL(ML_ERR_ARG, "tokenizer: unknown subcommand '%s' (train, export, import)", sub);
}

/* ---- tokenize ------------------------------------------------------------------- */
static const ml_option_spec tokenize_specs[] = {
    DOMAIN_OPTS,
    {"tokenizer", ML_OPT_STRING, NULL, 0, -1, NULL, "tokenizer file (HDF5 or tokenizer.json)"},
    {"out_dir", ML_OPT_STRING, NULL, 0, -1, NULL, "directory for <domain>.h5 token stores"},
    {"val_fraction", ML_OPT_FLOAT, "0.2", 0, 0.99, NULL, "held-out fraction of documents"},
    {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "seed of the held-out choice"},
    {"add_bos", ML_OPT_BOOL, "false", 0, -1, NULL, "prepend bos to every document (eos always ends one)"},
    {"token_type", ML_OPT_CHOICE, "auto", 0, -1, "auto|uint16|uint32", "token dtype (auto: uint16 if it fits)"},
    ML_OPT_END};

int ml_cmd_tokenize(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    cmd_ctx c;
    ml_tokenizer *tok = NULL;
    char *json = NULL;
    ML_CHECK_GOTO(cmd_setup(comm, "tokenize", tokenize_specs, argc, argv, 1, &c), done);
    if (c.help) goto done;
    const char *tpath = ml_opt_str(c.o, "tokenizer"), *out_dir = ml_opt_str(c.o, "out_dir");
    rc = ml_tokenizer_load(tpath, &tok);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    rc = rank == 0 ? ml_mkdirs(out_dir) : ML_OK;
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_options_to_json(c.o, &json), done);
    ml_store_config cfg = {.val_fraction = ml_opt_float(c.o, "val_fraction"),
                           .seed = (uint64_t)ml_opt_int(c.o, "seed"),
                           .add_bos = ml_opt_bool(c.o, "add_bos"),
                           .token_type = ml_opt_str(c.o, "token_type"),
                           .tokenizer_path = tpath,
                           .config_json = json};
    for (int i = 0; i < c.domains->n; i++) {
        const ml_domain *d = &c.domains->domains[i];
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.h5", out_dir, d->name);
        ml_store_stats st;
        ML_CHECK_GOTO(ml_store_write(comm, tok, d, &cfg, path, &st), done);
        ml_info("tokenize: %s: %lld documents (%lld val), %.2f MB -> %lld train + %lld val tokens "
                "(%.2f bytes/token), %lld invalid UTF-8 bytes, %lld skipped lines; %.2f s = %.1f MB/s per rank -> %s",
                d->name, (long long)st.corpus.docs, (long long)st.docs[1], st.corpus.bytes / 1e6,
                (long long)st.tokens[0], (long long)st.tokens[1],
                (double)st.corpus.bytes / (double)(st.tokens[0] + st.tokens[1] > 0 ? st.tokens[0] + st.tokens[1] : 1),
                (long long)st.corpus.invalid_utf8_bytes, (long long)st.corpus.bad_lines, st.seconds,
                st.corpus.bytes / 1e6 / st.seconds / P, path);
    }
done:
    ml_free(json);
    ml_tokenizer_destroy(&tok);
    ctx_free(&c);
    return rc;
}

/* ---- data stories / stats --------------------------------------------------------- */
static const ml_option_spec stories_specs[] = {
    {"job", ML_OPT_STRING, "", 0, -1, NULL, "YAML job file"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "text file to write (stories separated by <|endoftext|>)"},
    {"n", ML_OPT_INT, "10000", 1, 1e12, NULL, "number of stories"},
    {"seed", ML_OPT_INT, "42", 0, 1e18, NULL, "generator seed"},
    ML_OPT_END};

static const ml_option_spec stats_specs[] = {
    DOMAIN_OPTS,
    {"tokenizer", ML_OPT_STRING, "", 0, -1, NULL, "also encode every document, check decode(encode(x)) == x, count tokens"},
    ML_OPT_END};

typedef struct {
    ml_tokenizer *tok;
    ml_ids ids;
    int64_t tokens, mismatched, first_bad;
} check_ctx;

static int check_cb(void *ctx, int64_t index, const char *text, size_t len) {
    check_ctx *c = ctx;
    c->ids.n = 0;
    ML_CHECK(ml_tokenizer_encode(c->tok, text, len, &c->ids));
    c->tokens += (int64_t)c->ids.n;
    char *back = NULL;
    size_t blen = 0;
    ML_CHECK(ml_tokenizer_decode(c->tok, c->ids.ids, c->ids.n, &back, &blen));
    if (blen != len || memcmp(back, text, len)) {
        if (c->mismatched++ == 0) c->first_bad = index;
    }
    ml_free(back);
    return ML_OK;
}

int ml_cmd_data(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, rank;
    MPI_Comm_rank(comm, &rank);
    const char *sub = argc > 1 ? argv[1] : "";
    cmd_ctx c;
    memset(&c, 0, sizeof c);
    if (!strcmp(sub, "stories")) {
        ML_CHECK_GOTO(cmd_setup(comm, "data", stories_specs, argc - 1, argv + 1, 0, &c), done);
        if (c.help) goto done;
        if (rank == 0) rc = ml_stories_write(ml_opt_str(c.o, "out"), ml_opt_int(c.o, "n"), (uint64_t)ml_opt_int(c.o, "seed"));
        rc = ml_agree(comm, rc);
        if (rc == ML_OK)
            ml_info("data: wrote %lld synthetic stories to %s", (long long)ml_opt_int(c.o, "n"), ml_opt_str(c.o, "out"));
    } else if (!strcmp(sub, "stats")) {
        ML_CHECK_GOTO(cmd_setup(comm, "data", stats_specs, argc - 1, argv + 1, 1, &c), done);
        if (c.help) goto done;
        for (int i = 0; i < c.domains->n && rc == ML_OK; i++) {
            const ml_domain *d = &c.domains->domains[i];
            ml_corpus_stats st;
            const char *tp = ml_opt_str(c.o, "tokenizer");
            if (rank == 0) {
                check_ctx k;
                memset(&k, 0, sizeof k);
                if (tp && *tp) rc = ml_tokenizer_load(tp, &k.tok);
                if (rc == ML_OK) rc = ml_corpus_foreach(d->sources, d->n_sources, k.tok ? check_cb : NULL, &k, &st);
                if (rc == ML_OK)
                    printf("%-12s files %8lld  documents %9lld  bytes %12lld  invalid-utf8 docs %lld bytes %lld  "
                           "skipped lines %lld",
                           d->name, (long long)st.files, (long long)st.docs, (long long)st.bytes,
                           (long long)st.invalid_utf8_docs, (long long)st.invalid_utf8_bytes, (long long)st.bad_lines);
                if (rc == ML_OK && k.tok)
                    printf("  tokens %lld (%.2f bytes/token)  round-trip mismatches %lld", (long long)k.tokens,
                           k.tokens ? (double)st.bytes / (double)k.tokens : 0.0, (long long)k.mismatched);
                if (rc == ML_OK) printf("\n");
                if (rc == ML_OK && k.mismatched)
                    rc = ML_FAIL(ML_ERR_NUMERIC, "domain '%s': %lld documents do not decode back to their text "
                                                 "(first: document %lld)",
                                 d->name, (long long)k.mismatched, (long long)k.first_bad);
                ml_ids_free(&k.ids);
                ml_tokenizer_destroy(&k.tok);
            }
            rc = ml_agree(comm, rc);
        }
    } else {
        if (rank == 0)
            printf("usage: mergelens data stories|stats [options]\n"
                   "  stories  write seeded synthetic children's stories (--out F --n N --seed S)\n"
                   "  stats    document, byte and invalid-UTF-8 counts of domains (NAME=KIND:PATH ...);\n"
                   "           with --tokenizer also token counts and a decode(encode(x)) == x check\n");
        if (strcmp(sub, "--help") && strcmp(sub, "-h"))
            rc = ML_FAIL(ML_ERR_ARG, "data: %s subcommand '%s' (stories, stats)", *sub ? "unknown" : "missing", sub);
    }
done:
    ctx_free(&c);
    return rc;
}
