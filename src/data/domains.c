/* Domains and their sources, from the compact command-line form
 * "NAME=KIND:PATH[:ARG];..." or from a YAML job-file mapping. */
#include "mergelens/config.h"
#include "mergelens/data.h"

#include <string.h>
#include <sys/stat.h>

void ml_domains_destroy(ml_domain_set **sp) {
    if (!sp || !*sp) return;
    ml_domain_set *s = *sp;
    for (int i = 0; i < s->n; i++) ml_free(s->domains[i].sources);
    ml_free(s->domains);
    for (int i = 0; i < s->n_owned; i++) ml_free(s->owned[i]);
    ml_free(s->owned);
    ml_free(s);
    *sp = NULL;
}

static int own(ml_domain_set *s, const char *str, size_t n, const char **out) {
    if (s->n_owned == s->cap_owned) {
        int nc = s->cap_owned ? 2 * s->cap_owned : 16;
        char **no = ml_realloc(s->owned, (size_t)nc * sizeof *no);
        if (!no) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        s->owned = no;
        s->cap_owned = nc;
    }
    char *c = ml_malloc(n + 1);
    if (!c) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    memcpy(c, str, n);
    c[n] = '\0';
    s->owned[s->n_owned++] = c;
    *out = c;
    return ML_OK;
}

/* Domain by name, created if absent. */
static int get_domain(ml_domain_set *s, const char *name, size_t n, ml_domain **out) {
    if (n == 0 || n >= sizeof s->domains[0].name)
        return ML_FAIL(ML_ERR_ARG, "domain name '%.*s' must have 1 to 63 characters", (int)n, name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return ML_FAIL(ML_ERR_ARG, "domain name '%.*s': use letters, digits, '_', '-', '.' (it names a file)",
                           (int)n, name);
    }
    for (int i = 0; i < s->n; i++)
        if (strlen(s->domains[i].name) == n && !strncmp(s->domains[i].name, name, n)) {
            *out = &s->domains[i];
            return ML_OK;
        }
    ml_domain *nd = ml_realloc(s->domains, (size_t)(s->n + 1) * sizeof *nd);
    if (!nd) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    s->domains = nd;
    memset(&nd[s->n], 0, sizeof nd[0]);
    memcpy(nd[s->n].name, name, n);
    *out = &nd[s->n++];
    return ML_OK;
}

static int add_source(ml_domain *d, ml_source **out) {
    ml_source *ns = ml_realloc(d->sources, (size_t)(d->n_sources + 1) * sizeof *ns);
    if (!ns) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    d->sources = ns;
    memset(&ns[d->n_sources], 0, sizeof ns[0]);
    *out = &ns[d->n_sources++];
    return ML_OK;
}

/* Kind names: text, blank, lines, file, jsonl, dir. */
static int set_kind(ml_source *src, const char *kind, size_t n) {
    static const struct {
        const char *name;
        ml_source_kind kind;
        ml_text_split split;
    } kinds[] = {{"text", ML_SRC_TEXT, ML_SPLIT_DELIM}, {"blank", ML_SRC_TEXT, ML_SPLIT_BLANK},
                 {"lines", ML_SRC_TEXT, ML_SPLIT_LINES}, {"file", ML_SRC_TEXT, ML_SPLIT_FILE},
                 {"jsonl", ML_SRC_JSONL, ML_SPLIT_DELIM}, {"dir", ML_SRC_DIR, ML_SPLIT_DELIM}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strlen(kinds[i].name) == n && !strncmp(kinds[i].name, kind, n)) {
            src->kind = kinds[i].kind;
            src->split = kinds[i].split;
            return ML_OK;
        }
    return ML_FAIL(ML_ERR_ARG, "source kind '%.*s' is not one of text, blank, lines, file, jsonl, dir", (int)n, kind);
}

int ml_domains_parse(const char *spec, int skip_bad, ml_domain_set **out) {
    int rc = ML_OK;
    ml_domain_set *s = ml_calloc(1, sizeof *s);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    const char *p = spec ? spec : "";
    while (*p) {
        const char *end = strchr(p, ';');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\n')) {
            p++;
            n--;
        }
        if (n > 0) {
            const char *eq = memchr(p, '=', n), *c1 = eq ? memchr(eq, ':', n - (size_t)(eq - p)) : NULL;
            if (!eq || !c1)
                ML_FAIL_GOTO(fail, ML_ERR_ARG, "domain source '%.*s' is not NAME=KIND:PATH[:ARG]", (int)n, p);
            ml_domain *d;
            ml_source *src = NULL;
            ML_CHECK_GOTO(get_domain(s, p, (size_t)(eq - p), &d), fail);
            ML_CHECK_GOTO(add_source(d, &src), fail);
            ML_CHECK_GOTO(set_kind(src, eq + 1, (size_t)(c1 - eq - 1)), fail);
            const char *path = c1 + 1, *stop = p + n, *c2 = memchr(path, ':', (size_t)(stop - path));
            ML_CHECK_GOTO(own(s, path, (size_t)((c2 ? c2 : stop) - path), &src->path), fail);
            if (!*src->path) ML_FAIL_GOTO(fail, ML_ERR_ARG, "domain source '%.*s' has an empty path", (int)n, p);
            if (c2) {
                const char *arg;
                ML_CHECK_GOTO(own(s, c2 + 1, (size_t)(stop - c2 - 1), &arg), fail);
                if (src->kind == ML_SRC_JSONL) src->field = arg;
                else if (src->kind == ML_SRC_DIR) src->include = arg;
                else if (src->split == ML_SPLIT_DELIM) src->delimiter = arg;
                else ML_FAIL_GOTO(fail, ML_ERR_ARG, "domain source '%.*s': this kind takes no argument", (int)n, p);
            }
            src->skip_bad = skip_bad;
        }
        if (!end) break;
        p = end + 1;
    }
    *out = s;
    return ML_OK;
fail:
    ml_domains_destroy(&s);
    return rc;
}

static int node_str(ml_domain_set *s, const ml_node *n, const char **out) {
    const char *v;
    ML_CHECK(ml_node_as_string(n, &v));
    return own(s, v, strlen(v), out);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int source_from_node(ml_domain_set *s, ml_domain *d, const ml_node *n) {
    ml_source *src = NULL;
    ML_CHECK(add_source(d, &src));
    if (n->kind == ML_NODE_SCALAR) { /* just a path */
        ML_CHECK(node_str(s, n, &src->path));
    } else if (n->kind == ML_NODE_MAP) {
        const ml_node *fmt = NULL, *split = NULL;
        for (int i = 0; i < n->n; i++) {
            const ml_node *c = n->items[i];
            const char *k = c->key;
            if (!strcmp(k, "path")) ML_CHECK(node_str(s, c, &src->path));
            else if (!strcmp(k, "format")) fmt = c;
            else if (!strcmp(k, "split")) split = c;
            else if (!strcmp(k, "delimiter")) ML_CHECK(node_str(s, c, &src->delimiter));
            else if (!strcmp(k, "field")) ML_CHECK(node_str(s, c, &src->field));
            else if (!strcmp(k, "include")) ML_CHECK(node_str(s, c, &src->include));
            else if (!strcmp(k, "exclude")) ML_CHECK(node_str(s, c, &src->exclude));
            else if (!strcmp(k, "skip_bad")) ML_CHECK(ml_node_as_bool(c, &src->skip_bad));
            else
                return ml_node_error(c, "unknown source key '%s' (path, format, split, delimiter, field, include, "
                                        "exclude, skip_bad)",
                                     k);
        }
        if (!src->path) return ml_node_error(n, "domain '%s': a source needs a 'path'", d->name);
        if (fmt) {
            const char *f;
            ML_CHECK(ml_node_as_string(fmt, &f));
            if (!strcmp(f, "text")) src->kind = ML_SRC_TEXT;
            else if (!strcmp(f, "jsonl")) src->kind = ML_SRC_JSONL;
            else if (!strcmp(f, "dir")) src->kind = ML_SRC_DIR;
            else return ml_node_error(fmt, "format '%s' is not one of text, jsonl, dir", f);
        } else if (is_dir(src->path)) src->kind = ML_SRC_DIR;
        else if (ends_with(src->path, ".jsonl") || ends_with(src->path, ".jsonl.gz") || ends_with(src->path, ".json") ||
                 ends_with(src->path, ".json.gz"))
            src->kind = ML_SRC_JSONL;
        if (split) {
            const char *v;
            ML_CHECK(ml_node_as_string(split, &v));
            static const char *names[] = {"delimiter", "blank", "lines", "file"};
            int found = 0;
            for (int i = 0; i < 4; i++)
                if (!strcmp(v, names[i])) {
                    src->split = (ml_text_split)i;
                    found = 1;
                }
            if (!found) return ml_node_error(split, "split '%s' is not one of delimiter, blank, lines, file", v);
        }
        return ML_OK;
    } else
        return ml_node_error(n, "domain '%s': a source is a path or a mapping", d->name);
    if (is_dir(src->path)) src->kind = ML_SRC_DIR;
    else if (ends_with(src->path, ".jsonl") || ends_with(src->path, ".jsonl.gz")) src->kind = ML_SRC_JSONL;
    return ML_OK;
}

int ml_domains_from_node(const ml_node *domains, ml_domain_set **out) {
    int rc = ML_OK;
    if (!domains || domains->kind != ML_NODE_MAP)
        return ml_node_error(domains, "'domains' must be a mapping of domain name to sources");
    ml_domain_set *s = ml_calloc(1, sizeof *s);
    if (!s) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int i = 0; i < domains->n; i++) {
        const ml_node *dn = domains->items[i], *list = dn;
        ml_domain *d;
        rc = get_domain(s, dn->key, strlen(dn->key), &d);
        if (rc != ML_OK) ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s:%d: %s", dn->file, dn->line, ml_error_message());
        if (dn->kind == ML_NODE_MAP) {
            list = ml_node_get(dn, "sources");
            for (int k = 0; k < dn->n; k++)
                if (strcmp(dn->items[k]->key, "sources"))
                    ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s:%d: domain '%s': unknown key '%s' (expected 'sources')",
                                 dn->items[k]->file, dn->items[k]->line, d->name, dn->items[k]->key);
        }
        if (!list) ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s:%d: domain '%s' has no sources", dn->file, dn->line, d->name);
        if (list->kind == ML_NODE_SEQ) {
            if (list->n == 0)
                ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s:%d: domain '%s' has no sources", list->file, list->line, d->name);
            for (int k = 0; k < list->n; k++) ML_CHECK_GOTO(source_from_node(s, d, list->items[k]), fail);
        } else
            ML_CHECK_GOTO(source_from_node(s, d, list), fail);
    }
    *out = s;
    return ML_OK;
fail:
    ml_domains_destroy(&s);
    return rc;
}
