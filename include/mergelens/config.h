/* mergelens config: YAML job files as a tree with file:line on every node,
 * and the options registry (typed keys with defaults, ranges and help).
 *
 * A module declares its keys in a static ml_option_spec table. Values are
 * taken from a YAML mapping (ml_options_apply_node) and then from
 * `--key value` / `--key=value` command-line overrides (ml_options_apply_argv).
 * Unknown keys, wrong types and out-of-range values are ML_ERR_CONFIG errors
 * that name the key and the file:line ("jobs/x.yaml:12: unknown key
 * 'lerning_rate' (did you mean 'learning_rate'?)").
 */
#ifndef MERGELENS_CONFIG_H
#define MERGELENS_CONFIG_H

#include <stdint.h>

#include "mergelens/core.h"

/* ---- YAML tree -------------------------------------------------------------*/
typedef enum { ML_NODE_SCALAR = 0, ML_NODE_MAP, ML_NODE_SEQ } ml_node_kind;
typedef struct ml_node ml_node;
struct ml_node {
    ml_node_kind kind;
    char *value;       /* scalar text (NULL for map/seq) */
    int quoted;        /* scalar was quoted ('...' or "...") */
    char *key;         /* key in the parent mapping, or NULL */
    const char *file;  /* source file name (shared, owned by the root) */
    int line;          /* 1-based line of the node */
    int n;             /* number of children (map entries or seq items) */
    ml_node **items;   /* children; for maps each child carries its key */
    char *file_owned;  /* root only */
};
/* Parse a YAML file (or a string; `name` is used in messages). Anchors and
 * aliases are rejected; duplicate keys are an error. */
int ml_yaml_load(const char *path, ml_node **root);
int ml_yaml_parse_string(const char *text, const char *name, ml_node **root);
void ml_node_destroy(ml_node **root);
/* Lookup in a mapping (NULL if absent or node is not a map). */
ml_node *ml_node_get(const ml_node *map, const char *key);
/* Lookup by dotted path "stages.train.lr" (maps only). */
ml_node *ml_node_path(const ml_node *root, const char *dotted);
/* Typed scalar reads with errors naming file:line and key. */
int ml_node_as_double(const ml_node *n, double *out);
int ml_node_as_int(const ml_node *n, int64_t *out);
int ml_node_as_bool(const ml_node *n, int *out);
int ml_node_as_string(const ml_node *n, const char **out);
/* Fail with "<file>:<line>: <message about key>" (ML_ERR_CONFIG). */
int ml_node_error(const ml_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Serialise a node tree to JSON text (caller ml_free()s). Scalars become
 * numbers / booleans / null where they parse as such and are unquoted. */
int ml_node_to_json(const ml_node *n, char **json);

/* ---- options registry --------------------------------------------------------*/
typedef enum { ML_OPT_INT = 0, ML_OPT_FLOAT, ML_OPT_BOOL, ML_OPT_STRING, ML_OPT_CHOICE } ml_opt_type;
typedef struct {
    const char *key;      /* "learning_rate" */
    ml_opt_type type;
    const char *def;      /* default as text; NULL = required */
    double min, max;      /* inclusive range for INT/FLOAT (min > max = unbounded) */
    const char *choices;  /* ML_OPT_CHOICE: "cosine|linear|constant" */
    const char *help;
} ml_option_spec;
#define ML_OPT_END {NULL, 0, NULL, 0, 0, NULL, NULL}

typedef struct ml_options ml_options;
/* specs is a NULL-key-terminated table that must outlive the options. */
int ml_options_create(const char *section, const ml_option_spec *specs, ml_options **out);
void ml_options_destroy(ml_options **o);
/* Add another module's table to the same options set (e.g. loader + model). */
int ml_options_add_specs(ml_options *o, const ml_option_spec *specs);
/* Take values from a mapping node; keys not in the registry are an error
 * unless listed in `ignore` (NULL-terminated, may be NULL). */
int ml_options_apply_node(ml_options *o, const ml_node *map, const char *const *ignore);
/* Parse argv: `--key value`, `--key=value`, `--flag` for bools. Arguments
 * that are not options are collected as positionals. `--help` sets *help. */
int ml_options_apply_argv(ml_options *o, int argc, char **argv, int *npos, char ***positional, int *help);
int ml_options_set(ml_options *o, const char *key, const char *value, const char *where);
/* Check every required key has a value. */
int ml_options_finalize(ml_options *o);
/* Getters: the key must exist in the registry (bug otherwise). */
int64_t ml_opt_int(const ml_options *o, const char *key);
double ml_opt_float(const ml_options *o, const char *key);
int ml_opt_bool(const ml_options *o, const char *key);
const char *ml_opt_str(const ml_options *o, const char *key); /* NULL if unset & no default */
int ml_opt_is_set(const ml_options *o, const char *key);     /* explicitly given */
/* Print generated help ("  --key <type>  default  help"). */
void ml_options_print_help(const ml_options *o, FILE *out);
/* The standard way a command reads its options: values from
 * `--config FILE.yaml` (the mapping under key `section` when the file has
 * one, else the whole top-level mapping), then `--key value` overrides.
 * On `--help`, rank 0 prints `usage` and the generated option list and
 * *help is set (the caller returns ML_OK). Required keys are checked.
 * npos/pos may be NULL (then positional arguments are an error). */
int ml_options_parse_command(MPI_Comm comm, const char *section, const char *usage, const ml_option_spec *specs,
                             int argc, char **argv, ml_options **out, int *npos, char ***pos, int *help);
/* Check mode, for validating a job file's stages without running them
 * (src/pipeline/job.c): between begin and end, ml_options_apply_argv (and so
 * ml_options_parse_command, which then skips --config files and required
 * keys) only checks argv against the command's table and makes the command
 * return an error at once. `end` says what happened: reached = a table was
 * consulted, ok = argv was valid; else key/hint name the rejected option
 * (unknown = 1: not in the table; hint = the closest key, or ""). */
typedef struct {
    int reached, ok, unknown;
    char key[128], hint[128];
} ml_options_check;
void ml_options_check_begin(void);
void ml_options_check_end(ml_options_check *out);
/* Effective configuration as a JSON object (caller ml_free()s). */
int ml_options_to_json(const ml_options *o, char **json);
/* Resuming a checkpoint: the options stored in it (stored_json, a JSON object
 * as written by ml_options_to_json) must equal this run's (current_json) for
 * every key except free_keys (NULL-terminated; bookkeeping such as "out").
 * Fails with ML_ERR_CONFIG naming path, the first differing key and both values. */
int ml_options_check_resume(const char *path, const char *stored_json, const char *current_json,
                            const char *const *free_keys);
/* Comma-separated option value -> *n trimmed, non-empty items (each ml_malloc'd; release with
 * ml_list_free). key names the option in the error for an empty item. */
int ml_list_split(const char *text, const char *key, char ***items, int *n);
void ml_list_free(char **items, int n);
/* Exactly n comma-separated finite numbers of option key into out[n]. */
int ml_list_parse_numbers(const char *text, const char *key, double *out, int n);
/* items -> compact JSON array of strings (ml_malloc'd; ml_free it). */
int ml_list_to_json(const char *const *items, int n, char **json);


#endif
