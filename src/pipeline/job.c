/* Job files: stages, dependencies, substitution, validation. */
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mergelens/cli.h"
#include "mergelens/io.h"
#include "mergelens/pipeline.h"

struct ml_job {
    ml_node *root;
    char *run_dir, *job_dir, *seed;
    char task[16], tasks[16]; /* ${task}, ${tasks} */
    int n;
    ml_stage *stages; /* run order */
};

static void ml_stage_free(ml_stage *s) {
    for (int i = 0; i < s->argc; i++) ml_free(s->argv[i]);
    ml_free(s->argv);
    ml_free(s->needs);
    for (int i = 0; i < s->n_outputs; i++) ml_free(s->outputs[i]);
    ml_free(s->outputs);
    for (int i = 0; i < s->n_files; i++) {
        ml_free(s->file_paths[i]);
        ml_free(s->file_texts[i]);
    }
    ml_free(s->file_paths);
    ml_free(s->file_texts);
}

void ml_job_destroy(ml_job **pj) {
    if (!pj || !*pj) return;
    ml_job *j = *pj;
    for (int i = 0; i < j->n; i++) ml_stage_free(&j->stages[i]);
    ml_free(j->stages);
    ml_free(j->run_dir);
    ml_free(j->job_dir);
    ml_free(j->seed);
    ml_node_destroy(&j->root);
    ml_free(j);
    *pj = NULL;
}

int ml_job_stage_count(const ml_job *job) { return job->n; }
const ml_stage *ml_job_stage(const ml_job *job, int i) { return &job->stages[i]; }
const char *ml_job_run_dir(const ml_job *job) { return job->run_dir; }
const ml_node *ml_job_root(const ml_job *job) { return job->root; }

/* Replace ${run_dir}, ${job_dir} and ${seed}; unknown ${...} is an error. */
static int ml_subst(const ml_job *j, const ml_node *where, const char *in, char **out) {
    size_t cap = strlen(in) + 1;
    for (const char *p = strstr(in, "${"); p; p = strstr(p + 2, "${")) cap += 4096;
    char *buf = ml_malloc(cap), *o = buf;
    if (!buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (const char *p = in; *p;) {
        if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p, '}');
            const char *val = NULL;
            size_t klen = end ? (size_t)(end - p - 2) : 0;
            if (end && klen == 7 && !strncmp(p + 2, "run_dir", 7)) val = j->run_dir;
            else if (end && klen == 7 && !strncmp(p + 2, "job_dir", 7)) val = j->job_dir;
            else if (end && klen == 4 && !strncmp(p + 2, "seed", 4)) val = j->seed;
            else if (end && klen == 4 && !strncmp(p + 2, "task", 4)) val = j->task;
            else if (end && klen == 5 && !strncmp(p + 2, "tasks", 5)) val = j->tasks;
            if (!val) {
                ml_free(buf);
                return ml_node_error(where, "unknown substitution in '%s' (known: ${run_dir}, ${job_dir}, ${seed}, "
                                            "${task}, ${tasks})", in);
            }
            size_t vl = strlen(val);
            memcpy(o, val, vl);
            o += vl;
            p = end + 1;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    *out = buf;
    return ML_OK;
}

static int ml_push_arg(ml_stage *s, char *a) {
    char **nv = ml_realloc(s->argv, sizeof *nv * (size_t)(s->argc + 2));
    if (!nv) {
        ml_free(a);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    s->argv = nv;
    s->argv[s->argc++] = a;
    s->argv[s->argc] = NULL;
    return ML_OK;
}

/* A scalar, or a list of scalars joined by commas. */
static int ml_scalar_or_list(const ml_job *j, const ml_node *n, char **out) {
    if (n->kind == ML_NODE_SCALAR) return ml_subst(j, n, n->value, out);
    if (n->kind != ML_NODE_SEQ) return ml_node_error(n, "key '%s': expected a value or a list of values", n->key);
    size_t len = 1;
    for (int i = 0; i < n->n; i++) {
        if (n->items[i]->kind != ML_NODE_SCALAR)
            return ml_node_error(n->items[i], "key '%s': list items must be plain values", n->key);
        len += strlen(n->items[i]->value) + 4096;
    }
    char *buf = ml_calloc(len, 1);
    if (!buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int i = 0; i < n->n; i++) {
        char *v = NULL;
        int rc = ml_subst(j, n->items[i], n->items[i]->value, &v);
        if (rc) {
            ml_free(buf);
            return rc;
        }
        if (i) strcat(buf, ",");
        strcat(buf, v);
        ml_free(v);
    }
    *out = buf;
    return ML_OK;
}

/* A substituted path, made run_dir-relative unless absolute. */
static int ml_resolve_path(const ml_job *j, const ml_node *where, const char *text, char **out) {
    char *v = NULL;
    ML_CHECK(ml_subst(j, where, text, &v));
    if (v[0] == '/') {
        *out = v;
        return ML_OK;
    }
    size_t n = strlen(j->run_dir) + strlen(v) + 2;
    char *p = ml_malloc(n);
    if (!p) {
        ml_free(v);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    snprintf(p, n, "%s/%s", j->run_dir, v);
    ml_free(v);
    *out = p;
    return ML_OK;
}

/* A stage's slurm `array` as a task count: N, or 0-M[%K] (M+1 tasks);
 * 0 without one. Other Slurm index specs cannot split work: an error. */
static int ml_array_count(const ml_node *stage, int *count) {
    *count = 0;
    const ml_node *a = ml_node_get(ml_node_get(stage, "slurm"), "array");
    if (!a) return ML_OK;
    const char *v = a->kind == ML_NODE_SCALAR ? a->value : "";
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (end != v && *end == '\0' && n >= 1 && n <= 1000000) {
        *count = (int)n;
        return ML_OK;
    }
    if (!strncmp(v, "0-", 2)) {
        n = strtol(v + 2, &end, 10);
        if (end != v + 2 && (*end == '\0' || *end == '%') && n >= 0 && n < 1000000) {
            *count = (int)n + 1;
            return ML_OK;
        }
    }
    return ml_node_error(a, "stage '%s': slurm: array '%s': give a task count N or 0-M[%%K], so that task I of N "
                            "can take its share", stage->key, v);
}

/* An `args` item {each_task: TEXT, of: STAGE}: TEXT once per task of STAGE. */
static int ml_each_task(ml_job *j, const ml_node *item, ml_stage *s) {
    const ml_node *t = ml_node_get(item, "each_task"), *of = ml_node_get(item, "of");
    if (!t || !of || item->n != 2 || t->kind != ML_NODE_SCALAR || of->kind != ML_NODE_SCALAR)
        return ml_node_error(item, "an args item that is a mapping must be {each_task: TEXT, of: STAGE}");
    const ml_node *os = ml_node_get(ml_node_get(j->root, "stages"), of->value);
    if (!os) return ml_node_error(of, "each_task: no stage named '%s'", of->value);
    int n = 0;
    ML_CHECK(ml_array_count(os, &n));
    if (n == 0) return ml_node_error(of, "each_task: stage '%s' is not a job array (slurm: {array: N})", of->value);
    char saved[16], tasks_saved[16];
    memcpy(saved, j->task, sizeof saved);
    memcpy(tasks_saved, j->tasks, sizeof tasks_saved);
    snprintf(j->tasks, sizeof j->tasks, "%d", n);
    int rc = ML_OK;
    for (int k = 0; k < n && rc == ML_OK; k++) {
        char *a = NULL;
        snprintf(j->task, sizeof j->task, "%d", k);
        rc = ml_subst(j, t, t->value, &a);
        if (rc == ML_OK) rc = ml_push_arg(s, a);
    }
    memcpy(j->task, saved, sizeof saved);
    memcpy(j->tasks, tasks_saved, sizeof tasks_saved);
    return rc;
}

static int ml_stage_parse(ml_job *j, const ml_node *sn, ml_stage *s) {
    static const char *keys[] = {"command", "needs", "args", "options", "outputs", "slurm", "files", NULL};
    if (sn->kind != ML_NODE_MAP) return ml_node_error(sn, "stage '%s': expected a mapping", sn->key);
    for (int i = 0; i < sn->n; i++) {
        int known = 0;
        for (int k = 0; keys[k]; k++) known |= !strcmp(keys[k], sn->items[i]->key);
        if (!known)
            return ml_node_error(sn->items[i], "stage '%s': unknown key '%s' (known: command, needs, args, options, "
                                               "outputs, slurm, files)", sn->key, sn->items[i]->key);
    }
    s->name = sn->key;
    const ml_node *cmd = ml_node_get(sn, "command");
    if (!cmd) return ml_node_error(sn, "stage '%s': missing key 'command'", sn->key);
    ML_CHECK(ml_node_as_string(cmd, &s->command));
    if (!ml_cli_find(s->command) || !strcmp(s->command, "run"))
        return ml_node_error(cmd, "stage '%s': unknown command '%s' (see mergelens --help)", sn->key, s->command);
    char *a = ml_strdup(s->command);
    if (!a) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK(ml_push_arg(s, a));
    const ml_node *args = ml_node_get(sn, "args");
    if (args) {
        if (args->kind != ML_NODE_SEQ) return ml_node_error(args, "stage '%s': 'args' must be a list", sn->key);
        for (int i = 0; i < args->n; i++) {
            if (args->items[i]->kind == ML_NODE_MAP) {
                ML_CHECK(ml_each_task(j, args->items[i], s));
                continue;
            }
            if (args->items[i]->kind != ML_NODE_SCALAR)
                return ml_node_error(args->items[i], "stage '%s': args must be plain values", sn->key);
            ML_CHECK(ml_subst(j, args->items[i], args->items[i]->value, &a));
            ML_CHECK(ml_push_arg(s, a));
        }
    }
    const ml_node *opts = ml_node_get(sn, "options");
    if (opts) {
        if (opts->kind != ML_NODE_MAP) return ml_node_error(opts, "stage '%s': 'options' must be a mapping", sn->key);
        for (int i = 0; i < opts->n; i++) {
            const ml_node *o = opts->items[i];
            size_t kl = strlen(o->key) + 3;
            a = ml_malloc(kl);
            if (!a) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            snprintf(a, kl, "--%s", o->key);
            ML_CHECK(ml_push_arg(s, a));
            ML_CHECK(ml_scalar_or_list(j, o, &a));
            ML_CHECK(ml_push_arg(s, a));
        }
    }
    /* an array stage's command takes its share: --task ${task} --tasks ${tasks} */
    ML_CHECK(ml_array_count(sn, &s->array));
    if (s->array > 0 && !ml_node_get(opts, "task") && !ml_node_get(opts, "tasks")) {
        static const char *const flag[2] = {"--task", "--tasks"};
        for (int k = 0; k < 2; k++) {
            a = ml_strdup(flag[k]);
            if (!a) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            ML_CHECK(ml_push_arg(s, a));
            a = ml_strdup(k ? j->tasks : j->task);
            if (!a) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
            ML_CHECK(ml_push_arg(s, a));
        }
    }
    const ml_node *outs = ml_node_get(sn, "outputs");
    if (outs) {
        if (outs->kind != ML_NODE_SEQ) return ml_node_error(outs, "stage '%s': 'outputs' must be a list", sn->key);
        s->outputs = ml_calloc((size_t)outs->n + 1, sizeof *s->outputs);
        if (!s->outputs) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        for (int i = 0; i < outs->n; i++) {
            if (outs->items[i]->kind != ML_NODE_SCALAR)
                return ml_node_error(outs->items[i], "stage '%s': outputs must be paths", sn->key);
            ML_CHECK(ml_resolve_path(j, outs->items[i], outs->items[i]->value, &s->outputs[s->n_outputs]));
            s->n_outputs++;
        }
    }
    const ml_node *files = ml_node_get(sn, "files");
    if (files) {
        if (files->kind != ML_NODE_MAP)
            return ml_node_error(files, "stage '%s': 'files' must map paths to their text", sn->key);
        s->file_paths = ml_calloc((size_t)files->n + 1, sizeof *s->file_paths);
        s->file_texts = ml_calloc((size_t)files->n + 1, sizeof *s->file_texts);
        if (!s->file_paths || !s->file_texts) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        for (int i = 0; i < files->n; i++) {
            const ml_node *f = files->items[i];
            if (f->kind != ML_NODE_SCALAR)
                return ml_node_error(f, "stage '%s': file '%s' must be given as text", sn->key, f->key);
            ML_CHECK(ml_resolve_path(j, f, f->key, &s->file_paths[s->n_files]));
            s->n_files++; /* counted now, so a failure below frees the path */
            ML_CHECK(ml_subst(j, f, f->value, &s->file_texts[s->n_files - 1]));
        }
    }
    s->slurm = ml_node_get(sn, "slurm");
    return ML_OK;
}

static void ml_key_norm(char *k) {
    for (; *k; k++)
        if (*k == '-') *k = '_';
}

/* Check a stage's argv against its command's option table without running
 * it (the options registry's check mode; the command stops right after
 * parsing). A rejected option is reported at its line in the job file. */
/* 1 if a scalar under n mentions ${task}. */
static int ml_node_uses_task(const ml_node *n) {
    if (!n) return 0;
    if (n->kind == ML_NODE_SCALAR) return n->value && strstr(n->value, "${task}") != NULL;
    for (int i = 0; i < n->n; i++)
        if (ml_node_uses_task(n->items[i])) return 1;
    return 0;
}

static int ml_stage_check_options(const ml_node *sn, ml_stage *s) {
    int mpi = 0;
    MPI_Initialized(&mpi);
    if (!mpi) return ML_OK; /* commands need MPI (a fuzzer links the loader without it) */
    const ml_command *cmd = ml_cli_find(s->command);
    char what[160];
    /* `lora train`, `region centroid`: the subcommand is the first argument */
    const char *a1 = s->argc > 1 ? s->argv[1] : "";
    int sub = a1[0] && a1[0] != '-' && strspn(a1, "abcdefghijklmnopqrstuvwxyz-") == strlen(a1);
    snprintf(what, sizeof what, "%s%s%s", s->command, sub ? " " : "", sub ? s->argv[1] : "");
    ml_options_check chk;
    ml_options_check_begin();
    int rc = cmd->fn(MPI_COMM_SELF, s->argc, s->argv);
    ml_options_check_end(&chk);
    if (chk.ok) {
        ml_error_clear();
        return ML_OK;
    }
    if (rc == ML_OK) return ML_OK; /* unreachable: every command parses its options first */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ml_error_message());
    ml_error_clear();
    const char *m = msg;
    if (!strncmp(m, "command line: ", 14)) m += 14;
    const ml_node *opts = ml_node_get(sn, "options"), *at = NULL;
    for (int i = 0; opts && opts->kind == ML_NODE_MAP && i < opts->n && chk.key[0]; i++) {
        char k[128];
        snprintf(k, sizeof k, "%s", opts->items[i]->key);
        ml_key_norm(k);
        if (!strcmp(k, chk.key)) at = opts->items[i];
    }
    if (!at && chk.unknown && s->array > 0 && (!strcmp(chk.key, "task") || !strcmp(chk.key, "tasks"))) {
        /* no --task/--tasks: the stage must split by ${task} itself */
        if (ml_node_uses_task(ml_node_get(sn, "options")) || ml_node_uses_task(ml_node_get(sn, "args"))) {
            for (int k = 0; k < 4; k++) ml_free(s->argv[--s->argc]);
            s->argv[s->argc] = NULL;
            return ml_stage_check_options(sn, s);
        }
        return ml_node_error(ml_node_get(ml_node_get(sn, "slurm"), "array"),
                             "stage '%s': slurm: array: mergelens %s has no --task/--tasks and the stage does not use "
                             "${task}, so every array task would do the same work", s->name, what);
    }
    if (at && chk.unknown)
        return ml_node_error(at, "unknown key '%s' for stage '%s' (mergelens %s%s%s%s)", at->key, s->name, what,
                             chk.hint[0] ? "; did you mean '" : "", chk.hint, chk.hint[0] ? "'?" : "");
    return ml_node_error(at ? at : sn, "stage '%s' (mergelens %s): %s", s->name, what, m);
}

int ml_job_load(const char *path, const char *out_dir, ml_job **out) { return ml_job_load_task(path, out_dir, 0, 1, out); }

int ml_job_load_task(const char *path, const char *out_dir, int task, int tasks, ml_job **out) {
    int rc = ML_OK;
    ml_job *j = ml_calloc(1, sizeof *j);
    ml_stage *parsed = NULL;
    int *state = NULL;
    if (!j) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    snprintf(j->task, sizeof j->task, "%d", task);
    snprintf(j->tasks, sizeof j->tasks, "%d", tasks);
    ML_CHECK_GOTO(ml_yaml_load(path, &j->root), fail);
    const ml_node *root = j->root;
    if (root->kind != ML_NODE_MAP) ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s: a job file is a mapping", path);
    static const char *top[] = {"name", "run_dir", "seed", "description", "stages", "slurm", "defaults", NULL};
    for (int i = 0; i < root->n; i++) {
        int known = 0;
        for (int k = 0; top[k]; k++) known |= !strcmp(top[k], root->items[i]->key);
        if (!known) {
            rc = ml_node_error(root->items[i], "unknown key '%s' (known: name, run_dir, seed, description, stages, "
                                               "slurm, defaults)", root->items[i]->key);
            goto fail;
        }
    }
    /* directories */
    char jd[PATH_MAX];
    snprintf(jd, sizeof jd, "%s", path);
    char *d = dirname(jd);
    char absd[PATH_MAX];
    if (!realpath(d, absd)) snprintf(absd, sizeof absd, "%s", d);
    j->job_dir = ml_strdup(absd);
    const ml_node *rd = ml_node_get(root, "run_dir");
    const char *run_dir = out_dir;
    if (!run_dir && rd) ML_CHECK_GOTO(ml_node_as_string(rd, &run_dir), fail);
    if (!run_dir) run_dir = "runs/default";
    j->run_dir = ml_strdup(run_dir);
    const ml_node *seed = ml_node_get(root, "seed");
    int64_t sv = 42;
    if (seed) ML_CHECK_GOTO(ml_node_as_int(seed, &sv), fail);
    char sb[32];
    snprintf(sb, sizeof sb, "%lld", (long long)sv);
    j->seed = ml_strdup(sb);
    if (!j->job_dir || !j->run_dir || !j->seed) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    const ml_node *st = ml_node_get(root, "stages");
    if (!st || st->kind != ML_NODE_MAP || st->n == 0)
        ML_FAIL_GOTO(fail, ML_ERR_CONFIG, "%s: key 'stages' must be a non-empty mapping of stage names", path);
    int n = st->n;
    parsed = ml_calloc((size_t)n, sizeof *parsed);
    state = ml_calloc((size_t)n, sizeof *state);
    j->stages = ml_calloc((size_t)n, sizeof *j->stages);
    if (!parsed || !state || !j->stages) ML_FAIL_GOTO(fail, ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        rc = ml_stage_parse(j, st->items[i], &parsed[i]);
        if (!rc) rc = ml_stage_check_options(st->items[i], &parsed[i]);
        if (rc) {
            for (int k = 0; k <= i; k++) ml_stage_free(&parsed[k]);
            ml_free(parsed);
            parsed = NULL;
            goto fail;
        }
    }
    /* dependencies by name (indices into parsed) */
    for (int i = 0; i < n; i++) {
        const ml_node *needs = ml_node_get(st->items[i], "needs");
        if (!needs) continue;
        if (needs->kind == ML_NODE_SCALAR) {
            rc = ml_node_error(needs, "stage '%s': 'needs' must be a list, e.g. [tokenize]", parsed[i].name);
            goto fail_parsed;
        }
        parsed[i].needs = ml_calloc((size_t)needs->n + 1, sizeof(int));
        if (!parsed[i].needs) {
            rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
            goto fail_parsed;
        }
        for (int k = 0; k < needs->n; k++) {
            int found = -1;
            for (int m = 0; m < n; m++)
                if (needs->items[k]->value && !strcmp(parsed[m].name, needs->items[k]->value)) found = m;
            if (found < 0) {
                rc = ml_node_error(needs->items[k], "stage '%s' needs unknown stage '%s'", parsed[i].name,
                                   needs->items[k]->value ? needs->items[k]->value : "?");
                goto fail_parsed;
            }
            parsed[i].needs[parsed[i].n_needs++] = found;
        }
    }
    /* topological order, file order among ready stages; detects cycles */
    int *order = ml_calloc((size_t)n, sizeof(int)), *newidx = ml_calloc((size_t)n, sizeof(int));
    if (!order || !newidx) {
        ml_free(order);
        ml_free(newidx);
        rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
        goto fail_parsed;
    }
    int done = 0;
    while (done < n) {
        int pick = -1;
        for (int i = 0; i < n && pick < 0; i++) {
            if (state[i]) continue;
            int ready = 1;
            for (int k = 0; k < parsed[i].n_needs; k++) ready &= state[parsed[i].needs[k]];
            if (ready) pick = i;
        }
        if (pick < 0) {
            for (int i = 0; i < n; i++)
                if (!state[i]) {
                    rc = ml_node_error(st->items[i], "stage '%s' is part of a dependency cycle", parsed[i].name);
                    break;
                }
            ml_free(order);
            ml_free(newidx);
            goto fail_parsed;
        }
        state[pick] = 1;
        newidx[pick] = done;
        order[done++] = pick;
    }
    for (int i = 0; i < n; i++) {
        j->stages[i] = parsed[order[i]];
        for (int k = 0; k < j->stages[i].n_needs; k++) j->stages[i].needs[k] = newidx[j->stages[i].needs[k]];
    }
    j->n = n;
    ml_free(order);
    ml_free(newidx);
    ml_free(parsed);
    ml_free(state);
    *out = j;
    return ML_OK;
fail_parsed:
    for (int k = 0; k < n; k++) ml_stage_free(&parsed[k]);
    ml_free(parsed);
    parsed = NULL;
fail:
    ml_free(state);
    ml_job_destroy(&j);
    return ml_error_trace(rc ? rc : ml_error_code(), __FILE__, __LINE__, __func__);
}

int ml_stage_complete(const ml_stage *s) {
    if (s->n_outputs == 0) return 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    for (int i = 0; i < s->n_outputs; i++) {
        if (!ml_file_exists(s->outputs[i])) return 0;
        hid_t f = H5Fopen(s->outputs[i], H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) return 0;
        int ok = H5Aexists_by_name(f, "/", "format", H5P_DEFAULT) > 0;
        /* a checkpoint written mid-training says complete = 0: rerun (resume) it */
        if (ok && H5Aexists_by_name(f, "/", "complete", H5P_DEFAULT) > 0) {
            hid_t a = H5Aopen(f, "complete", H5P_DEFAULT);
            long long c = 0;
            if (a < 0 || H5Aread(a, H5T_NATIVE_LLONG, &c) < 0) c = 0;
            if (a >= 0) H5Aclose(a);
            ok = c != 0;
        }
        H5Fclose(f);
        if (!ok) return 0;
    }
    return 1;
}
