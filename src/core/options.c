/* The options registry: typed keys with defaults, ranges and help text;
 * values from YAML mappings and command-line overrides; JSON export. */
#include "mergelens/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    const ml_option_spec *spec;
    char *value; /* current text value (NULL = unset, no default) */
    int set;     /* explicitly given */
} ml_opt_slot;

/* check mode (ml_options_check_begin/end) */
static struct {
    int active;
    ml_options_check st;
} ml_check;

void ml_options_check_begin(void) {
    memset(&ml_check, 0, sizeof ml_check);
    ml_check.active = 1;
}

void ml_options_check_end(ml_options_check *out) {
    if (out) *out = ml_check.st;
    memset(&ml_check, 0, sizeof ml_check);
}

static void ml_check_note(const char *key, const char *hint) {
    if (!ml_check.active) return;
    snprintf(ml_check.st.key, sizeof ml_check.st.key, "%s", key ? key : "");
    snprintf(ml_check.st.hint, sizeof ml_check.st.hint, "%s", hint ? hint : "");
}

struct ml_options {
    char *section;
    int n;
    ml_opt_slot *slots;
};

int ml_options_create(const char *section, const ml_option_spec *specs, ml_options **out) {
    ml_options *o = ml_calloc(1, sizeof *o);
    if (!o) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    o->section = ml_strdup(section ? section : "");
    if (!o->section) {
        ml_options_destroy(&o);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    int rc = ml_options_add_specs(o, specs);
    if (rc) {
        ml_options_destroy(&o);
        return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = o;
    return ML_OK;
}

void ml_options_destroy(ml_options **po) {
    if (!po || !*po) return;
    ml_options *o = *po;
    for (int i = 0; i < o->n; i++) ml_free(o->slots[i].value);
    ml_free(o->slots);
    ml_free(o->section);
    ml_free(o);
    *po = NULL;
}

static ml_opt_slot *ml_find(const ml_options *o, const char *key) {
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->slots[i].spec->key, key)) return &o->slots[i];
    return NULL;
}

int ml_options_add_specs(ml_options *o, const ml_option_spec *specs) {
    int add = 0;
    while (specs && specs[add].key) add++;
    ml_opt_slot *slots = ml_realloc(o->slots, sizeof *slots * (size_t)(o->n + add + 1));
    if (!slots) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    o->slots = slots;
    for (int i = 0; i < add; i++) {
        if (ml_find(o, specs[i].key))
            return ML_FAIL(ML_ERR_INTERNAL, "option '%s' registered twice", specs[i].key);
        ml_opt_slot *s = &o->slots[o->n];
        s->spec = &specs[i];
        s->set = 0;
        s->value = NULL;
        if (specs[i].def && !(s->value = ml_strdup(specs[i].def)))
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        o->n++;
    }
    return ML_OK;
}

/* Edit distance for "did you mean" suggestions. */
static int ml_edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

static const char *ml_suggest(const ml_options *o, const char *key) {
    const char *best = NULL;
    int bestd = 4;
    for (int i = 0; i < o->n; i++) {
        int dd = ml_edit_distance(key, o->slots[i].spec->key);
        if (dd < bestd) bestd = dd, best = o->slots[i].spec->key;
    }
    return best;
}

static int ml_unknown_key(const ml_options *o, const char *key, const char *where) {
    const char *s = ml_suggest(o, key);
    ml_check_note(key, s);
    ml_check.st.unknown = ml_check.active;
    char hint[128] = "";
    if (s) snprintf(hint, sizeof hint, " (did you mean '%s'?)", s);
    return ML_FAIL(ML_ERR_CONFIG, "%s: unknown key '%s'%s", where, key, hint);
}

static int ml_validate(const ml_option_spec *sp, const char *value, const char *where) {
    char *end = NULL;
    errno = 0;
    switch (sp->type) {
    case ML_OPT_INT: {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end || errno == ERANGE) {
            double d = strtod(value, &end);
            if (end == value || *end || d != floor(d) || fabs(d) > 9e18)
                return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': expected an integer, got '%s'", where, sp->key, value);
            v = (long long)d;
        }
        if (sp->min <= sp->max && (v < sp->min || v > sp->max))
            return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': %lld is out of range [%.15g, %.15g]", where, sp->key, v,
                           sp->min, sp->max);
        return ML_OK;
    }
    case ML_OPT_FLOAT: {
        double v = strtod(value, &end);
        if (end == value || *end || errno == ERANGE || !isfinite(v))
            return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': expected a number, got '%s'", where, sp->key, value);
        if (sp->min <= sp->max && (v < sp->min || v > sp->max))
            return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': %g is out of range [%g, %g]", where, sp->key, v, sp->min,
                           sp->max);
        return ML_OK;
    }
    case ML_OPT_BOOL: {
        static const char *ok[] = {"true", "false", "yes", "no", "on", "off", "1", "0"};
        for (int i = 0; i < 8; i++)
            if (!strcasecmp(value, ok[i])) return ML_OK;
        return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': expected true or false, got '%s'", where, sp->key, value);
    }
    case ML_OPT_CHOICE: {
        const char *c = sp->choices ? sp->choices : "";
        size_t n = strlen(value);
        for (const char *p = c; *p;) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && !strncmp(p, value, n)) return ML_OK;
            p += len + (bar ? 1 : 0);
        }
        return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': '%s' is not one of %s", where, sp->key, value, c);
    }
    case ML_OPT_STRING:
        return ML_OK;
    }
    return ML_OK;
}

int ml_options_set(ml_options *o, const char *key, const char *value, const char *where) {
    ml_opt_slot *s = ml_find(o, key);
    if (!s) return ml_unknown_key(o, key, where);
    ML_CHECK(ml_validate(s->spec, value, where));
    char *v = ml_strdup(value);
    if (!v) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ml_free(s->value);
    s->value = v;
    s->set = 1;
    return ML_OK;
}

/* A YAML list of plain values for a string option: joined with commas (items must not hold one). */
static int ml_options_set_list(ml_options *o, const ml_node *list, const char *where) {
    size_t len = 1;
    for (int i = 0; i < list->n; i++) {
        const ml_node *it = list->items[i];
        if (it->kind != ML_NODE_SCALAR)
            return ML_FAIL(ML_ERR_CONFIG, "%s:%d: key '%s': list items must be plain values", it->file, it->line,
                           list->key);
        if (strchr(it->value, ','))
            return ML_FAIL(ML_ERR_CONFIG, "%s:%d: key '%s': list item '%s' holds a comma", it->file, it->line,
                           list->key, it->value);
        len += strlen(it->value) + 1;
    }
    char *joined = ml_calloc(len, 1);
    if (!joined) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int i = 0; i < list->n; i++) {
        if (i) strcat(joined, ",");
        strcat(joined, list->items[i]->value);
    }
    int rc = ml_options_set(o, list->key, joined, where);
    ml_free(joined);
    return rc;
}

int ml_options_apply_node(ml_options *o, const ml_node *map, const char *const *ignore) {
    if (!map) return ML_OK;
    if (map->kind != ML_NODE_MAP)
        return ml_node_error(map, "section '%s': expected a mapping of keys", map->key ? map->key : o->section);
    for (int i = 0; i < map->n; i++) {
        const ml_node *c = map->items[i];
        int skip = 0;
        for (int k = 0; ignore && ignore[k]; k++)
            if (!strcmp(ignore[k], c->key)) skip = 1;
        if (skip) continue;
        char where[600];
        snprintf(where, sizeof where, "%s:%d", c->file, c->line);
        if (!ml_find(o, c->key)) return ml_unknown_key(o, c->key, where);
        if (c->kind == ML_NODE_SEQ && ml_find(o, c->key)->spec->type == ML_OPT_STRING) {
            ML_CHECK(ml_options_set_list(o, c, where));
            continue;
        }
        if (c->kind != ML_NODE_SCALAR)
            return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': expected a single value, got a %s", where, c->key,
                           c->kind == ML_NODE_MAP ? "mapping" : "list");
        if (ml_find(o, c->key)->spec->type != ML_OPT_STRING && c->quoted &&
            ml_find(o, c->key)->spec->type != ML_OPT_CHOICE)
            return ML_FAIL(ML_ERR_CONFIG, "%s: key '%s': expected a %s, got the string \"%s\"", where, c->key,
                           ml_find(o, c->key)->spec->type == ML_OPT_BOOL ? "boolean" : "number", c->value);
        ML_CHECK(ml_options_set(o, c->key, c->value, where));
    }
    return ML_OK;
}

int ml_options_apply_argv(ml_options *o, int argc, char **argv, int *npos, char ***positional, int *help) {
    int np = 0;
    char **pos = NULL;
    if (help) *help = 0;
    if (positional) {
        pos = ml_calloc((size_t)argc + 1, sizeof *pos);
        if (!pos) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (help) *help = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (!pos) {
                ML_FAIL(ML_ERR_ARG, "command line: unexpected argument '%s'", a);
                goto fail;
            }
            pos[np++] = argv[i];
            continue;
        }
        char key[128];
        const char *eq = strchr(a + 2, '=');
        size_t klen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (klen >= sizeof key) klen = sizeof key - 1;
        memcpy(key, a + 2, klen);
        key[klen] = '\0';
        for (char *c = key; *c; c++)
            if (*c == '-') *c = '_'; /* --learning-rate == --learning_rate */
        ml_opt_slot *s = ml_find(o, key);
        if (!s) {
            ml_unknown_key(o, key, "command line");
            goto fail;
        }
        const char *value;
        if (eq) value = eq + 1;
        else if (s->spec->type == ML_OPT_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0 ||
                                                  ml_validate(s->spec, argv[i + 1], "") != ML_OK))
            value = "true";
        else if (i + 1 < argc) value = argv[++i];
        else {
            ML_FAIL(ML_ERR_ARG, "command line: option '--%s' needs a value", key);
            goto fail;
        }
        if (ml_options_set(o, key, value, "command line")) {
            ml_check_note(key, NULL);
            goto fail;
        }
    }
    if (ml_check.active) { /* argv is valid: stop the command here */
        ml_free(pos);
        ml_check.st.reached = ml_check.st.ok = 1;
        return ML_FAIL(ML_ERR_ARG, "%s: options checked (check mode)", o->section);
    }
    if (npos) *npos = np;
    if (positional) *positional = pos;
    else ml_free(pos);
    return ML_OK;
fail:
    ml_free(pos);
    ml_check.st.reached = 1;
    return ml_error_trace(ml_error_code(), __FILE__, __LINE__, __func__);
}

int ml_options_finalize(ml_options *o) {
    for (int i = 0; i < o->n; i++)
        if (!o->slots[i].value)
            return ML_FAIL(ML_ERR_CONFIG, "%s%smissing required key '%s' (%s)", o->section,
                           *o->section ? ": " : "", o->slots[i].spec->key, o->slots[i].spec->help);
    return ML_OK;
}

static const ml_opt_slot *ml_get(const ml_options *o, const char *key) {
    const ml_opt_slot *s = ml_find(o, key);
    if (!s) {
        /* a programming error: the key is not registered */
        fprintf(stderr, "mergelens: internal error: option '%s' is not registered in '%s'\n", key, o->section);
        abort();
    }
    return s;
}

int64_t ml_opt_int(const ml_options *o, const char *key) {
    const ml_opt_slot *s = ml_get(o, key);
    return s->value ? (int64_t)strtod(s->value, NULL) : 0;
}

double ml_opt_float(const ml_options *o, const char *key) {
    const ml_opt_slot *s = ml_get(o, key);
    return s->value ? strtod(s->value, NULL) : 0.0;
}

int ml_opt_bool(const ml_options *o, const char *key) {
    const ml_opt_slot *s = ml_get(o, key);
    if (!s->value) return 0;
    return !strcasecmp(s->value, "true") || !strcasecmp(s->value, "yes") || !strcasecmp(s->value, "on") ||
           !strcmp(s->value, "1");
}

const char *ml_opt_str(const ml_options *o, const char *key) { return ml_get(o, key)->value; }
int ml_opt_is_set(const ml_options *o, const char *key) { return ml_get(o, key)->set; }

void ml_options_print_help(const ml_options *o, FILE *out) {
    static const char *tn[] = {"int", "float", "bool", "string", "choice"};
    for (int i = 0; i < o->n; i++) {
        const ml_option_spec *sp = o->slots[i].spec;
        char arg[160];
        if (sp->type == ML_OPT_CHOICE) snprintf(arg, sizeof arg, "--%s {%s}", sp->key, sp->choices);
        else snprintf(arg, sizeof arg, "--%s <%s>", sp->key, tn[sp->type]);
        fprintf(out, "  %-34s %s", arg, sp->help ? sp->help : "");
        if (sp->def) fprintf(out, " [default: %s]", *sp->def ? sp->def : "\"\"");
        else fprintf(out, " [required]");
        if ((sp->type == ML_OPT_INT || sp->type == ML_OPT_FLOAT) && sp->min <= sp->max)
            fprintf(out, " [range %g..%g]", sp->min, sp->max);
        fputc('\n', out);
    }
}

int ml_options_to_json(const ml_options *o, char **json) {
    json_t *j = json_object();
    if (!j) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int i = 0; i < o->n; i++) {
        const ml_opt_slot *s = &o->slots[i];
        json_t *v;
        if (!s->value) v = json_null();
        else if (s->spec->type == ML_OPT_INT) v = json_integer((json_int_t)strtod(s->value, NULL));
        else if (s->spec->type == ML_OPT_FLOAT) v = json_real(strtod(s->value, NULL));
        else if (s->spec->type == ML_OPT_BOOL) v = json_boolean(ml_opt_bool(o, s->spec->key));
        else v = json_string(s->value);
        if (!v || json_object_set_new(j, s->spec->key, v)) {
            json_decref(j);
            return ML_FAIL(ML_ERR_NOMEM, "out of memory building JSON");
        }
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!text) return ML_FAIL(ML_ERR_NOMEM, "out of memory building JSON");
    *json = ml_strdup(text);
    free(text);
    return *json ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
}

int ml_options_parse_command(MPI_Comm comm, const char *section, const char *usage, const ml_option_spec *specs,
                             int argc, char **argv, ml_options **out, int *npos, char ***pos, int *help) {
    int rank = 0, rc = ML_OK, h = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    ml_node *root = NULL;
    char **args = NULL;
    *out = NULL;
    ML_CHECK(ml_options_create(section, specs, &o));
    /* strip --config FILE / --config=FILE from argv */
    args = ml_calloc((size_t)argc + 1, sizeof *args);
    if (!args) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    int nargs = 0;
    const char *config = NULL;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) ML_FAIL_GOTO(fail, ML_ERR_ARG, "command line: option '--config' needs a file");
            config = argv[++i];
        } else if (i > 0 && !strncmp(argv[i], "--config=", 9)) {
            config = argv[i] + 9;
        } else {
            args[nargs++] = argv[i];
        }
    }
    if (config && !ml_check.active) { /* check mode: the file may not exist yet */
        ML_CHECK_GOTO(ml_yaml_load(config, &root), fail);
        const ml_node *sec = ml_node_get(root, section);
        ML_CHECK_GOTO(ml_options_apply_node(o, sec ? sec : root, NULL), fail);
    }
    ML_CHECK_GOTO(ml_options_apply_argv(o, nargs, args, npos, pos, &h), fail);
    if (h) {
        if (rank == 0) {
            printf("%s\n\noptions (also readable from --config FILE.yaml, key '%s' or top level):\n", usage, section);
            ml_options_print_help(o, stdout);
        }
        if (help) *help = 1;
    } else {
        if (help) *help = 0;
        ML_CHECK_GOTO(ml_options_finalize(o), fail);
    }
    ml_free(args);
    ml_node_destroy(&root);
    *out = o;
    return ML_OK;
fail:
    if (pos && *pos) {
        ml_free(*pos);
        *pos = NULL;
    }
    ml_free(args);
    ml_node_destroy(&root);
    ml_options_destroy(&o);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

/* ---- comma-separated lists ---------------------------------------------------------------- */

void ml_list_free(char **items, int n) {
    if (!items) return;
    for (int i = 0; i < n; i++) ml_free(items[i]);
    ml_free(items);
}

int ml_list_split(const char *text, const char *key, char ***items, int *n) {
    *items = NULL;
    *n = 0;
    if (!text) text = "";
    int count = 1;
    for (const char *p = text; *p; p++) count += *p == ',';
    char **v = ml_calloc((size_t)count, sizeof *v);
    if (!v) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    const char *p = text;
    for (int i = 0; i < count; i++) {
        size_t len = strcspn(p, ",");
        const char *a = p, *b = p + len;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (a == b) {
            ml_list_free(v, i);
            return ML_FAIL(ML_ERR_CONFIG, "option '%s': empty item %d in '%s' (expected a comma-separated list)", key,
                           i + 1, text);
        }
        v[i] = ml_malloc((size_t)(b - a) + 1);
        if (!v[i]) {
            ml_list_free(v, i);
            return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        }
        memcpy(v[i], a, (size_t)(b - a));
        v[i][b - a] = '\0';
        p += len + 1;
    }
    *items = v;
    *n = count;
    return ML_OK;
}

int ml_list_to_json(const char *const *items, int n, char **json) {
    *json = NULL;
    json_t *a = json_array();
    if (!a) return ML_FAIL(ML_ERR_NOMEM, "out of memory building JSON");
    for (int i = 0; i < n; i++)
        if (json_array_append_new(a, json_string(items[i])) != 0) {
            json_decref(a);
            return ML_FAIL(ML_ERR_ARG, "cannot store '%s' as a JSON string (not UTF-8?)", items[i]);
        }
    char *t = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    if (!t) return ML_FAIL(ML_ERR_NOMEM, "out of memory building JSON");
    *json = ml_strdup(t);
    free(t);
    return *json ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
}

int ml_list_parse_numbers(const char *text, const char *key, double *out, int n) {
    char **items = NULL;
    int count = 0, rc = ML_OK;
    ML_CHECK(ml_list_split(text, key, &items, &count));
    if (count != n)
        ML_FAIL_GOTO(done, ML_ERR_CONFIG, "option '%s': '%s' has %d value%s, expected %d", key, text, count,
                     count == 1 ? "" : "s", n);
    for (int i = 0; i < n; i++) {
        char *end = NULL;
        out[i] = strtod(items[i], &end);
        if (!end || *end || !isfinite(out[i]))
            ML_FAIL_GOTO(done, ML_ERR_CONFIG, "option '%s': '%s' is not a number", key, items[i]);
    }
done:
    ml_list_free(items, count);
    return rc;
}

static int ml_key_in(const char *key, const char *const *keys) {
    for (int i = 0; keys && keys[i]; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

int ml_options_check_resume(const char *path, const char *stored_json, const char *current_json,
                            const char *const *free_keys) {
    json_error_t err;
    int rc = ML_OK;
    json_t *stored = json_loads(stored_json ? stored_json : "", 0, &err);
    json_t *cur = json_loads(current_json ? current_json : "", 0, NULL);
    if (!stored || !json_is_object(stored))
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: attribute config is not a JSON object (%s)", path,
                     stored ? "not an object" : err.text);
    if (!cur || !json_is_object(cur)) ML_FAIL_GOTO(done, ML_ERR_INTERNAL, "%s: this run's options are not a JSON object", path);
    const char *key;
    json_t *v;
    json_object_foreach(cur, key, v) {
        if (ml_key_in(key, free_keys)) continue;
        json_t *s = json_object_get(stored, key);
        if (s && json_equal(s, v)) continue;
        char *a = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL, *b = json_dumps(v, JSON_ENCODE_ANY);
        rc = ML_FAIL(ML_ERR_CONFIG,
                     "%s: cannot resume: it was started with %s = %s, this run has %s = %s (rerun with the original "
                     "options, or --resume false to start over)",
                     path, key, a ? a : "(unset)", key, b ? b : "?");
        free(a);
        free(b);
        goto done;
    }
done:
    json_decref(stored);
    json_decref(cur);
    return rc;
}
