/* mergelens data: corpus readers, the byte-level BPE tokenizer, the token
 * store (`data/<domain>.h5`) and the batch loader.
 *
 * Data flows corpus -> tokenizer -> token store -> loader:
 *  - a domain is a list of sources (plain text split into documents, JSON
 *    Lines, directories of source files; any file may be gzip-compressed);
 *  - the tokenizer is byte-level BPE (trained here, or loaded from a Hugging
 *    Face tokenizer.json of BPE type) stored as `mergelens.tokenizer` v1;
 *  - `mergelens tokenize` writes one `mergelens.tokens` v1 file per domain;
 *  - the loader gives each rank its rows of the global batch of (T+1)-token
 *    windows drawn from a weighted mixture of domains.
 * Layouts and options: docs/modules/data.md.
 */
#ifndef MERGELENS_DATA_H
#define MERGELENS_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/core.h"

typedef struct ml_node ml_node; /* config.h */

/* ======================================================================
 * Corpus sources
 * ====================================================================== */
typedef enum {
    ML_SRC_TEXT = 0, /* a plain text file holding many documents */
    ML_SRC_JSONL,    /* JSON Lines: one object per line, text in `field` */
    ML_SRC_DIR       /* a directory tree: each matching file is a document */
} ml_source_kind;

typedef enum {
    ML_SPLIT_DELIM = 0, /* documents separated by `delimiter` */
    ML_SPLIT_BLANK,     /* documents separated by one or more blank lines */
    ML_SPLIT_LINES,     /* one document per non-empty line */
    ML_SPLIT_FILE       /* the whole file is one document */
} ml_text_split;

typedef struct {
    ml_source_kind kind;
    const char *path;      /* file, or directory for ML_SRC_DIR; gzip files are read transparently */
    ml_text_split split;   /* TEXT only */
    const char *delimiter; /* TEXT + ML_SPLIT_DELIM; NULL = "<|endoftext|>" */
    const char *field;     /* JSONL: text field; NULL = "text" */
    const char *include;   /* DIR: glob(s) on the relative path, ','-separated ("**" crosses '/',
                              a pattern without '/' matches the base name); NULL = every file */
    const char *exclude;   /* DIR: glob(s) of relative paths (files or directories) to skip; may be NULL */
    int skip_bad;          /* JSONL: skip (and count) bad lines instead of failing */
} ml_source;

/* Document and byte counts of a pass over sources. TEXT documents are
 * trimmed of surrounding whitespace; empty documents are skipped. */
typedef struct {
    int64_t files;        /* files read */
    int64_t docs;         /* documents produced */
    int64_t bytes;        /* bytes of documents produced */
    int64_t bad_lines;    /* JSONL lines skipped (skip_bad) */
    int64_t invalid_utf8_docs;  /* documents containing invalid UTF-8 */
    int64_t invalid_utf8_bytes; /* bytes that are not part of a valid UTF-8 sequence */
} ml_corpus_stats;

/* Called once per document in corpus order (sources in order; directory
 * files sorted by relative path). index counts from 0 over all sources.
 * A negative return stops the pass and is returned by ml_corpus_foreach; a
 * positive return stops it early without error (ML_OK is returned). */
typedef int (*ml_doc_fn)(void *ctx, int64_t index, const char *text, size_t len);
/* stats may be NULL; it is zeroed first. */
int ml_corpus_foreach(const ml_source *src, int n_src, ml_doc_fn fn, void *ctx, ml_corpus_stats *stats);

/* Documents held in memory: text of document i is bytes[offsets[i] .. offsets[i+1]). */
typedef struct {
    int64_t n_docs;
    int64_t *offsets; /* (n_docs + 1) */
    char *bytes;
    int64_t first; /* global index of document 0 */
    size_t cap_bytes, cap_docs;
} ml_docs;
/* Load documents [first, first + count) of the sources (count < 0: to the end). */
int ml_docs_load(const ml_source *src, int n_src, int64_t first, int64_t count, ml_docs **out,
                 ml_corpus_stats *stats);
/* Append one document. */
int ml_docs_append(ml_docs *d, const char *text, size_t len);
int ml_docs_create(ml_docs **out);
void ml_docs_destroy(ml_docs **d);

/* Number of bytes that are not part of a valid UTF-8 sequence. */
size_t ml_utf8_invalid_bytes(const char *s, size_t len);
/* Glob match used for directory sources: '*' and '?' do not cross '/',
 * "**" does ("**\/" also matches nothing). */
int ml_glob_match(const char *pattern, const char *path);

/* Domains: a name and its sources. */
typedef struct {
    char name[64];
    ml_source *sources;
    int n_sources;
} ml_domain;
typedef struct {
    ml_domain *domains;
    int n;
    char **owned; /* strings owned by the set (internal) */
    int n_owned, cap_owned;
} ml_domain_set;
/* Parse the compact command-line form
 *   "NAME=KIND:PATH[:ARG];NAME=KIND:PATH[:ARG];..."
 * KIND: text (ARG = delimiter, default <|endoftext|>), blank, lines, file,
 * jsonl (ARG = field, default text), dir (ARG = include globs). A name given
 * twice adds sources to one domain. skip_bad applies to every JSONL source. */
int ml_domains_parse(const char *spec, int skip_bad, ml_domain_set **out);
/* Parse a YAML mapping `{NAME: {sources: [{path, format, split, delimiter,
 * field, include, exclude, skip_bad}, ...]}, ...}` (see docs/modules/data.md). */
int ml_domains_from_node(const ml_node *domains, ml_domain_set **out);
void ml_domains_destroy(ml_domain_set **s);

/* ======================================================================
 * Tokenizer
 * ====================================================================== */
typedef struct ml_tokenizer ml_tokenizer;

/* Growable id buffer (encode appends). */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} ml_ids;
int ml_ids_reserve(ml_ids *v, size_t n);
int ml_ids_push(ml_ids *v, int32_t id);
void ml_ids_free(ml_ids *v);

/* Pre-tokenizer: how text is split into chunks before BPE. */
typedef enum {
    ML_PRETOK_GPT2 = 0,  /* GPT-2 pattern: contractions, letters, digits, punctuation, whitespace runs */
    ML_PRETOK_NONE,      /* no split: BPE over the whole text (Mistral tokenizer.json) */
    ML_PRETOK_METASPACE  /* split before each space (Llama Metaspace with split=true) */
} ml_pretok;

typedef struct {
    int vocab_size;                    /* total incl. 256 byte tokens and the specials */
    const char *const *specials;       /* NULL = {"<bos>", "<|endoftext|>", "<pad>"} */
    int n_specials;
    int64_t min_frequency;             /* do not merge pairs seen fewer times (default 2 if 0) */
} ml_bpe_config;

/* Streaming trainer: add local documents, then finish collectively. Pair
 * counts are summed exactly across ranks, so the merges are identical for
 * any number of ranks and any split of the documents over ranks.
 * Ties between equally frequent pairs go to the smaller (left id, right id). */
typedef struct ml_bpe_trainer ml_bpe_trainer;
int ml_bpe_trainer_create(const ml_bpe_config *cfg, ml_bpe_trainer **out);
int ml_bpe_trainer_add(ml_bpe_trainer *t, const char *text, size_t len);
/* Collective over comm; every rank gets the same tokenizer. */
int ml_bpe_trainer_finish(ml_bpe_trainer *t, MPI_Comm comm, ml_tokenizer **out);
void ml_bpe_trainer_destroy(ml_bpe_trainer **t);
/* Convenience: train on this rank's docs (collective). */
int ml_tokenizer_train(MPI_Comm comm, const ml_bpe_config *cfg, const ml_docs *local_docs, ml_tokenizer **out);

/* Load a tokenizer: `mergelens.tokenizer` HDF5 file, or a Hugging Face
 * tokenizer.json (by content). Local to the calling process. */
int ml_tokenizer_load(const char *path, ml_tokenizer **out);
int ml_tokenizer_load_hf_json(const char *path, ml_tokenizer **out);
/* Save as `mergelens.tokenizer` v1 (called by one process; serial file). */
int ml_tokenizer_save(const ml_tokenizer *tok, const char *path);
/* Export as a Hugging Face tokenizer.json. */
int ml_tokenizer_save_hf_json(const ml_tokenizer *tok, const char *path);
void ml_tokenizer_destroy(ml_tokenizer **tok);

/* Encode bytes (any bytes; special-token text is NOT interpreted) and append
 * the ids to out. The tokenizer caches chunk encodings (not thread-safe). */
int ml_tokenizer_encode(ml_tokenizer *tok, const char *text, size_t len, ml_ids *out);
/* Decode ids to bytes (ml_malloc'd, NUL-terminated; *len excludes the NUL).
 * Special tokens decode to their text. Out-of-range ids are an error. */
int ml_tokenizer_decode(const ml_tokenizer *tok, const int32_t *ids, size_t n, char **text, size_t *len);
/* The bytes of one token (not NUL-terminated); NULL for an invalid id. */
const char *ml_tokenizer_token_bytes(const ml_tokenizer *tok, int32_t id, size_t *len);
int ml_tokenizer_vocab_size(const ml_tokenizer *tok);
int ml_tokenizer_n_merges(const ml_tokenizer *tok);
/* Merge r (0 = first learned): left + right -> result. */
int ml_tokenizer_merge(const ml_tokenizer *tok, int r, int32_t *left, int32_t *right, int32_t *result);
int32_t ml_tokenizer_bos_id(const ml_tokenizer *tok); /* -1 if none */
int32_t ml_tokenizer_eos_id(const ml_tokenizer *tok);
int32_t ml_tokenizer_pad_id(const ml_tokenizer *tok);
/* Id of a special token by its text, -1 if absent. */
int32_t ml_tokenizer_special_id(const ml_tokenizer *tok, const char *text);
ml_pretok ml_tokenizer_pretok(const ml_tokenizer *tok);
/* Split text into pre-tokenizer chunks: calls fn(ctx, start, len) per chunk. */
typedef int (*ml_chunk_fn)(void *ctx, const char *chunk, size_t len);
int ml_pretokenize(ml_pretok mode, const char *text, size_t len, ml_chunk_fn fn, void *ctx);

/* ======================================================================
 * Token store `data/<domain>.h5` (format mergelens.tokens v1)
 * ====================================================================== */
typedef struct {
    double val_fraction;    /* held-out fraction of documents (rounded to a count) */
    uint64_t seed;          /* chooses the held-out documents */
    int add_bos;            /* prepend bos to every document */
    const char *token_type; /* "auto" (uint16 if the vocabulary fits), "uint16", "uint32" */
    const char *tokenizer_path; /* stored as the `tokenizer` attribute */
    const char *config_json;    /* stored as the `config` attribute; may be NULL */
} ml_store_config;

typedef struct {
    int64_t docs[2];   /* train, val */
    int64_t tokens[2]; /* train, val */
    ml_corpus_stats corpus;
    double seconds;
} ml_store_stats;

/* Collective: read the domain's documents (each rank encodes a contiguous
 * slice), split them into train/val and write `path`. Each document is
 * [bos] tokens eos. The file content does not depend on the number of
 * ranks. stats may be NULL. */
int ml_store_write(MPI_Comm comm, ml_tokenizer *tok, const ml_domain *dom, const ml_store_config *cfg,
                   const char *path, ml_store_stats *stats);

/* ======================================================================
 * Batch loader (contract: notes HELPER_COMMON.md)
 * ====================================================================== */
typedef struct {
    int n_domains;
    const char *const *paths; /* data/<domain>.h5 */
    const double *weights;    /* mixture weights (normalised); NULL = proportional to window counts */
    const char *split;        /* "train" or "val" */
    int global_batch;         /* windows per step summed over ranks; divisible by nranks */
    int T;                    /* context; each window is T+1 tokens */
    uint64_t seed;
    int sequential;           /* 1: walk the split once in order (evaluation), no shuffling */
    /* Data subsets: draw only from slice subset_index of subset_count disjoint
     * contiguous slices of windows of each domain's split (slice i holds
     * windows [floor(i W / n), floor((i+1) W / n)) of the W windows). 0 / 0 or
     * 0 / 1 = the whole split (a zero-initialised config is unchanged). */
    int subset_index;
    int subset_count;
} ml_loader_config;

typedef struct ml_loader ml_loader;
/* Collective over comm. */
int ml_loader_create(MPI_Comm comm, const ml_loader_config *cfg, ml_loader **out);
/* Fill this rank's rows of the next global step. tokens: (B, T+1) with
 * B = global_batch / nranks. Local (no communication). */
int ml_loader_next(ml_loader *l, int32_t *tokens, int *nrows, int32_t *domain_ids);
int ml_loader_seek(ml_loader *l, int64_t step);
int64_t ml_loader_step(const ml_loader *l);
int64_t ml_loader_windows_per_epoch(const ml_loader *l);
/* Windows of one domain's split (of its subset when subset_count > 1). */
int64_t ml_loader_domain_windows(const ml_loader *l, int domain);
/* First window of one domain's subset (0 without subsets): the loader's
 * windows of that domain are [first, first + ml_loader_domain_windows). */
int64_t ml_loader_domain_first_window(const ml_loader *l, int domain);
void ml_loader_destroy(ml_loader **l);

/* ======================================================================
 * Synthetic stories (demo domain; documented as synthetic)
 * ====================================================================== */
/* Write n simple children's stories separated by "<|endoftext|>" lines to
 * path (deterministic from seed). */
int ml_stories_write(const char *path, int64_t n, uint64_t seed);
/* One story appended to a growable buffer (for tests). */
int ml_story_generate(ml_rng *rng, char **buf, size_t *len, size_t *cap);

/* ======================================================================
 * Commands (registered in the CLI table by the lead)
 * ====================================================================== */
/* `mergelens tokenizer train|export|import ...` */
int ml_cmd_tokenizer(MPI_Comm comm, int argc, char **argv);
/* `mergelens tokenize ...` */
int ml_cmd_tokenize(MPI_Comm comm, int argc, char **argv);
/* `mergelens data stories|stats ...` */
int ml_cmd_data(MPI_Comm comm, int argc, char **argv);

#endif
