/* YAML job files as a node tree with file:line on every node (libyaml). */
#include "mergelens/config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

static void ml_node_free(ml_node *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) ml_node_free(n->items[i]);
    ml_free(n->items);
    ml_free(n->value);
    ml_free(n->key);
    ml_free(n->file_owned);
    ml_free(n);
}

void ml_node_destroy(ml_node **root) {
    if (!root) return;
    ml_node_free(*root);
    *root = NULL;
}

static ml_node *ml_node_new(ml_node_kind kind, const char *file, int line) {
    ml_node *n = ml_calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->file = file;
    n->line = line;
    return n;
}

static int ml_node_append(ml_node *parent, ml_node *child) {
    ml_node **items = ml_realloc(parent->items, sizeof *items * (size_t)(parent->n + 1));
    if (!items) return ML_ERR_NOMEM;
    parent->items = items;
    parent->items[parent->n++] = child;
    return ML_OK;
}

/* Recursive descent over libyaml events. */
static int ml_parse_node(yaml_parser_t *p, yaml_event_t *ev, const char *file, ml_node **out);

static int ml_next_event(yaml_parser_t *p, yaml_event_t *ev, const char *file) {
    if (!yaml_parser_parse(p, ev))
        return ML_FAIL(ML_ERR_CONFIG, "%s:%zu: YAML syntax error: %s", file, p->problem_mark.line + 1,
                       p->problem ? p->problem : "unknown");
    return ML_OK;
}

static int ml_parse_children(yaml_parser_t *p, ml_node *n, const char *file, int is_map) {
    int rc = ML_OK;
    for (;;) {
        yaml_event_t ev;
        ML_CHECK(ml_next_event(p, &ev, file));
        if (ev.type == (is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT)) {
            yaml_event_delete(&ev);
            return ML_OK;
        }
        char *key = NULL;
        int key_line = (int)ev.start_mark.line + 1;
        if (is_map) {
            if (ev.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&ev);
                return ML_FAIL(ML_ERR_CONFIG, "%s:%d: mapping keys must be plain scalars", file, key_line);
            }
            key = ml_strdup((const char *)ev.data.scalar.value);
            yaml_event_delete(&ev);
            if (!key) return ML_ERR_NOMEM;
            for (int i = 0; i < n->n; i++)
                if (!strcmp(n->items[i]->key, key)) {
                    rc = ML_FAIL(ML_ERR_CONFIG, "%s:%d: duplicate key '%s' (first at line %d)", file, key_line,
                                 key, n->items[i]->line);
                    ml_free(key);
                    return rc;
                }
            rc = ml_next_event(p, &ev, file);
            if (rc) {
                ml_free(key);
                return rc;
            }
        }
        ml_node *child = NULL;
        rc = ml_parse_node(p, &ev, file, &child);
        yaml_event_delete(&ev);
        if (rc == ML_OK && is_map) {
            child->key = key;
            key = NULL;
            child->line = key_line;
        }
        ml_free(key);
        if (rc) return rc;
        if (ml_node_append(n, child)) {
            ml_node_free(child);
            return ML_FAIL(ML_ERR_NOMEM, "%s: out of memory parsing YAML", file);
        }
    }
}

static int ml_parse_node(yaml_parser_t *p, yaml_event_t *ev, const char *file, ml_node **out) {
    int line = (int)ev->start_mark.line + 1;
    ml_node *n = NULL;
    int rc = ML_OK;
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return ML_FAIL(ML_ERR_CONFIG, "%s:%d: YAML aliases are not supported", file, line);
    case YAML_SCALAR_EVENT:
        n = ml_node_new(ML_NODE_SCALAR, file, line);
        if (!n) return ML_ERR_NOMEM;
        n->value = ml_strdup((const char *)ev->data.scalar.value);
        if (!n->value) {
            ml_node_free(n);
            return ML_ERR_NOMEM;
        }
        n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        break;
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        if ((is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor) != NULL)
            return ML_FAIL(ML_ERR_CONFIG, "%s:%d: YAML anchors are not supported", file, line);
        n = ml_node_new(is_map ? ML_NODE_MAP : ML_NODE_SEQ, file, line);
        if (!n) return ML_ERR_NOMEM;
        rc = ml_parse_children(p, n, file, is_map);
        if (rc) {
            ml_node_free(n);
            return ml_error_trace(rc, __FILE__, __LINE__, __func__);
        }
        break;
    }
    default:
        return ML_FAIL(ML_ERR_CONFIG, "%s:%d: unexpected YAML event", file, line);
    }
    *out = n;
    return ML_OK;
}

static int ml_yaml_parse(yaml_parser_t *p, const char *name, ml_node **root) {
    int rc = ML_OK;
    char *file = ml_strdup(name);
    if (!file) return ML_ERR_NOMEM;
    ml_node *doc = NULL;
    yaml_event_t ev;
    /* stream start, document start, root node, document end */
    for (;;) {
        ML_CHECK_GOTO(ml_next_event(p, &ev, file), fail);
        if (ev.type == YAML_STREAM_START_EVENT || ev.type == YAML_DOCUMENT_START_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        if (ev.type == YAML_STREAM_END_EVENT || ev.type == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            doc = ml_node_new(ML_NODE_MAP, file, 1); /* empty file = empty mapping */
            if (!doc) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
            break;
        }
        rc = ml_parse_node(p, &ev, file, &doc);
        yaml_event_delete(&ev);
        if (rc) goto fail;
        break;
    }
    doc->file_owned = file;
    /* set file pointers: children already point at `file` */
    *root = doc;
    return ML_OK;
fail:
    ml_free(file);
    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_yaml_load(const char *path, ml_node **root) {
    FILE *f = fopen(path, "rb");
    if (!f) return ML_FAIL(ML_ERR_IO, "%s: cannot open job file: %s", path, strerror(errno));
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        return ML_FAIL(ML_ERR_NOMEM, "%s: cannot initialise YAML parser", path);
    }
    yaml_parser_set_input_file(&p, f);
    int rc = ml_yaml_parse(&p, path, root);
    yaml_parser_delete(&p);
    fclose(f);
    if (rc) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    return ML_OK;
}

int ml_yaml_parse_string(const char *text, const char *name, ml_node **root) {
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return ML_FAIL(ML_ERR_NOMEM, "%s: cannot initialise YAML parser", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, strlen(text));
    int rc = ml_yaml_parse(&p, name, root);
    yaml_parser_delete(&p);
    if (rc) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    return ML_OK;
}

ml_node *ml_node_get(const ml_node *map, const char *key) {
    if (!map || map->kind != ML_NODE_MAP) return NULL;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->items[i]->key, key)) return map->items[i];
    return NULL;
}

ml_node *ml_node_path(const ml_node *root, const char *dotted) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", dotted);
    const ml_node *n = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && n; tok = strtok_r(NULL, ".", &save))
        n = ml_node_get(n, tok);
    return (ml_node *)n;
}

int ml_node_error(const ml_node *n, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ML_FAIL(ML_ERR_CONFIG, "%s:%d: %s", n && n->file ? n->file : "?", n ? n->line : 0, msg);
}

static const char *ml_node_keyname(const ml_node *n) { return n->key ? n->key : "value"; }

int ml_node_as_string(const ml_node *n, const char **out) {
    if (!n || n->kind != ML_NODE_SCALAR)
        return ml_node_error(n, "key '%s': expected a scalar", n ? ml_node_keyname(n) : "?");
    *out = n->value;
    return ML_OK;
}

int ml_node_as_double(const ml_node *n, double *out) {
    const char *s = NULL;
    ML_CHECK(ml_node_as_string(n, &s));
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || n->quoted)
        return ml_node_error(n, "key '%s': expected a number, got '%s'", ml_node_keyname(n), s);
    if (!isfinite(v)) return ml_node_error(n, "key '%s': expected a finite number, got '%s'", ml_node_keyname(n), s);
    *out = v;
    return ML_OK;
}

int ml_node_as_int(const ml_node *n, int64_t *out) {
    const char *s = NULL;
    ML_CHECK(ml_node_as_string(n, &s));
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno == ERANGE || n->quoted) goto bad;
    if (*end != '\0') { /* allow 1e6-style integers */
        double d = strtod(s, &end);
        if (*end != '\0' || d != floor(d) || fabs(d) > 9e18) goto bad;
        v = (long long)d;
    }
    *out = v;
    return ML_OK;
bad:
    return ml_node_error(n, "key '%s': expected an integer, got '%s'", ml_node_keyname(n), s);
}

static int ml_parse_bool(const char *s, int *out) {
    static const char *t[] = {"true", "yes", "on", "1"}, *f[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, t[i])) return *out = 1, 1;
        if (!strcasecmp(s, f[i])) return *out = 0, 1;
    }
    return 0;
}

int ml_node_as_bool(const ml_node *n, int *out) {
    const char *s = NULL;
    ML_CHECK(ml_node_as_string(n, &s));
    if (n->quoted || !ml_parse_bool(s, out))
        return ml_node_error(n, "key '%s': expected true or false, got '%s'", ml_node_keyname(n), s);
    return ML_OK;
}

static json_t *ml_node_json(const ml_node *n) {
    if (n->kind == ML_NODE_SCALAR) {
        if (!n->quoted) {
            char *end;
            long long iv = strtoll(n->value, &end, 10);
            if (*n->value && *end == '\0') return json_integer(iv);
            double dv = strtod(n->value, &end);
            if (*n->value && *end == '\0' && isfinite(dv)) return json_real(dv);
            int b;
            if (ml_parse_bool(n->value, &b) && strcmp(n->value, "1") && strcmp(n->value, "0"))
                return json_boolean(b);
            if (!strcmp(n->value, "null") || !strcmp(n->value, "~")) return json_null();
        }
        return json_string(n->value);
    }
    json_t *j = n->kind == ML_NODE_MAP ? json_object() : json_array();
    if (!j) return NULL;
    for (int i = 0; i < n->n; i++) {
        json_t *c = ml_node_json(n->items[i]);
        if (!c) {
            json_decref(j);
            return NULL;
        }
        if (n->kind == ML_NODE_MAP) json_object_set_new(j, n->items[i]->key, c);
        else json_array_append_new(j, c);
    }
    return j;
}

int ml_node_to_json(const ml_node *n, char **json) {
    json_t *j = ml_node_json(n);
    if (!j) return ML_FAIL(ML_ERR_NOMEM, "out of memory converting YAML to JSON");
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return ML_FAIL(ML_ERR_NOMEM, "out of memory converting YAML to JSON");
    *json = ml_strdup(s);
    free(s);
    return *json ? ML_OK : ML_ERR_NOMEM;
}
