/* The output guard of every command (issue #17 items 2 and 7):
 *  - an output that is one of the command's inputs, an existing directory
 *    where a file is written, or a file in a directory that does not exist
 *    is refused before any work;
 *  - each output is locked for the whole run by a lock file beside it,
 *    `<output>.lock`, created with O_CREAT|O_EXCL by rank 0 and unlinked at
 *    exit; a lock of a provably dead run is taken over.
 * docs/RELIABILITY.md ("One writer per output") says what is relied on. */
#include "mergelens/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mergelens/config.h"
#include "mergelens/merge.h"
#include "mergelens/pipeline.h"

#define ML_GUARD_MAX_OUT 32
#define ML_GUARD_MAX_IN 256
#define ML_LOCK_TEXT 2048

/* ---- which arguments of which command are outputs -------------------------------------- */
typedef struct {
    const char *command, *sub; /* sub: argv[1] for commands with subcommands, NULL = any */
    const char *file_opts;     /* space-separated option keys naming output files */
    const char *dir_opts;      /* option keys naming output directories */
    int pos_file, pos_dir;     /* index of an output among the positionals (argv[1..]), -1: none */
    int makes_parent;          /* the command creates the output's directory itself */
} ml_guard_spec;

static const ml_guard_spec ml_guard_specs[] = {
    {"train", NULL, "out", "", -1, -1, 1},
    {"eval", NULL, "out", "", -1, -1, 1},
    {"capture", NULL, "out", "", -1, -1, 1},
    {"sae-eval", NULL, "out", "", -1, -1, 1},
    {"sae", NULL, "out", "", -1, -1, 1},
    {"compare", NULL, "out", "", -1, -1, 1},
    {"track", NULL, "out", "", -1, -1, 1},
    {"track-sweep", NULL, "out", "", -1, -1, 1},
    {"merge", NULL, "out", "", -1, -1, 0},
    {"sweep", NULL, "out", "", -1, -1, 0},
    {"sweep-combine", NULL, "out", "", -1, -1, 0},
    {"region", "centroid", "out", "", -1, -1, 1},
    {"region", "centroid-table", "out", "", -1, -1, 1},
    {"region", NULL, "out centroid_out", "", -1, -1, 1},
    {"tokenize", NULL, "", "out_dir", -1, -1, 1},
    {"tokenizer", "train", "out export_json", "", -1, -1, 0},
    {"tokenizer", "export", "out", "", -1, -1, 0},
    {"tokenizer", "import", "out", "", -1, -1, 0},
    {"data", "stories", "out", "", -1, -1, 0},
    {"lora", "train", "out", "", -1, -1, 1},
    {"lora", "port", "out", "", -1, -1, 1},
    {"lora", "merge", "out", "", -1, -1, 1},
    {"lora", "export", "", "", -1, 2, 1},    /* lora export ADAPTER DIR */
    {"export", NULL, "", "", -1, 2, 1},      /* export hf|saelens SRC DIR */
    {"import", NULL, "", "", 2, -1, 0},      /* import hf DIR OUT */
};

typedef struct {
    char label[64];       /* "--out", "DIR" */
    const char *path;     /* as given */
    int is_dir, makes_parent;
    int check_only;       /* a file inside a locked directory output (tokenize's stores) */
    char lock[PATH_MAX + 16];
    char text[ML_LOCK_TEXT]; /* what we wrote into the lock */
    int held;
} ml_guard_out;

struct ml_cli_guard {
    int n;
    ml_guard_out out[ML_GUARD_MAX_OUT];
    ml_node *config;       /* --config / --job file, if any (rank 0) */
    char *strings[ML_GUARD_MAX_OUT];
};

/* The key of an option token ("--acts-a=x" -> "acts_a"); 0 if not an option. */
static int ml_opt_key(const char *a, char *key, size_t n) {
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') return 0;
    size_t len = strcspn(a + 2, "=");
    if (len >= n) len = n - 1;
    memcpy(key, a + 2, len);
    key[len] = '\0';
    for (char *c = key; *c; c++)
        if (*c == '-') *c = '_';
    return 1;
}

/* ---- inputs: every other argument that names an existing path ---------------------------- */
typedef struct {
    struct stat st[ML_GUARD_MAX_IN];
    char *path[ML_GUARD_MAX_IN];
    int tree[ML_GUARD_MAX_IN]; /* a directory whose every file is read (import hf DIR, dir: domains) */
    int n;
} ml_inputs;

static void ml_inputs_add(ml_inputs *in, const char *p, size_t len, int tree) {
    char buf[PATH_MAX];
    if (len == 0 || len >= sizeof buf || in->n >= ML_GUARD_MAX_IN) return;
    memcpy(buf, p, len);
    buf[len] = '\0';
    struct stat st;
    if (stat(buf, &st) != 0) return;
    tree = tree && S_ISDIR(st.st_mode);
    for (int i = 0; i < in->n; i++)
        if (in->st[i].st_dev == st.st_dev && in->st[i].st_ino == st.st_ino) {
            in->tree[i] |= tree;
            return;
        }
    char *copy = ml_strdup(buf);
    if (!copy) return;
    in->st[in->n] = st;
    in->tree[in->n] = tree;
    in->path[in->n++] = copy;
}

/* A value split on ',' and ';'; each piece also after a `name=` and at each ':'
 * (domain specs NAME=KIND:PATH[:ARG]). */
static void ml_inputs_scan(ml_inputs *in, const char *v) {
    for (const char *p = v; *p;) {
        size_t len = strcspn(p, ",;");
        ml_inputs_add(in, p, len, 0);
        const char *eq = memchr(p, '=', len);
        const char *q = eq ? eq + 1 : p;
        size_t qlen = len - (size_t)(q - p);
        if (eq) ml_inputs_add(in, q, qlen, 0);
        for (const char *c = q, *prev = NULL; c < q + qlen;) {
            size_t l = strcspn(c, ":");
            if (l > qlen - (size_t)(c - q)) l = qlen - (size_t)(c - q);
            if (l < qlen) ml_inputs_add(in, c, l, prev && c - prev == 4 && !strncmp(prev, "dir:", 4));
            prev = c;
            c += l + 1;
        }
        p += len + (p[len] ? 1 : 0);
    }
}

static void ml_inputs_free(ml_inputs *in) {
    for (int i = 0; i < in->n; i++) ml_free(in->path[i]);
    in->n = 0;
}

/* ---- /proc: is a process alive, and is it the one that took the lock? -------------------- */
/* 1: found (start time and state set), 0: no such process, -1: cannot tell. */
static int ml_proc_start(long pid, unsigned long long *start, char *state) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return access("/proc/self/stat", R_OK) == 0 ? 0 : -1;
        return -1;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    if (!p) return -1;
    /* after ')': state (field 3) ... starttime (field 22) */
    char st = 0;
    unsigned long long v = 0;
    int field = 2;
    for (char *t = strtok(p + 1, " "); t; t = strtok(NULL, " ")) {
        field++;
        if (field == 3) st = t[0];
        if (field == 22) {
            v = strtoull(t, NULL, 10);
            break;
        }
    }
    if (field != 22) return -1;
    *start = v;
    *state = st;
    return 1;
}

/* The holder of a lock on this host: 1 alive, 0 provably dead (gone, a zombie, or its
 * pid now belongs to a process started at another time). */
static int ml_holder_alive(long pid, unsigned long long start) {
    unsigned long long s = 0;
    char state = 0;
    int r = ml_proc_start(pid, &s, &state);
    if (r == 0) return 0;
    if (r < 0) return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
    if (state == 'Z' || state == 'X') return 0;
    return start == 0 || s == start;
}

/* ---- lock files ----------------------------------------------------------------------- */
typedef struct {
    char host[256], job[64], started[64];
    long pid;
    unsigned long long start;
} ml_holder;

/* Read a lock file: 1 complete (fields parsed), 0 absent, 2 incomplete (being written), -1 error. */
static int ml_lock_read(const char *path, char *text, size_t cap, ml_holder *h) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(fd, text + n, cap - 1 - n)) > 0) n += (size_t)r;
    close(fd);
    text[n] = '\0';
    if (strncmp(text, "mergelens lock\n", 15) != 0 || n < 5 || strcmp(text + n - 5, "\nend\n") != 0) return 2;
    memset(h, 0, sizeof *h);
    for (char *line = text; *line;) {
        size_t len = strcspn(line, "\n");
        char *eq = memchr(line, '=', len);
        if (eq) {
            size_t kl = (size_t)(eq - line), vl = len - kl - 1;
            char val[256];
            snprintf(val, sizeof val, "%.*s", (int)(vl < sizeof val ? vl : sizeof val - 1), eq + 1);
            if (kl == 4 && !strncmp(line, "host", 4)) snprintf(h->host, sizeof h->host, "%s", val);
            else if (kl == 3 && !strncmp(line, "pid", 3)) h->pid = strtol(val, NULL, 10);
            else if (kl == 5 && !strncmp(line, "start", 5)) h->start = strtoull(val, NULL, 10);
            else if (kl == 3 && !strncmp(line, "job", 3)) snprintf(h->job, sizeof h->job, "%s", val);
            else if (kl == 7 && !strncmp(line, "started", 7)) snprintf(h->started, sizeof h->started, "%s", val);
        }
        line += len + (line[len] ? 1 : 0);
    }
    return 1;
}

static void ml_lock_text(char *t, size_t cap, const char *command, int argc, char **argv) {
    char host[256] = "?", when[64];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    unsigned long long start = 0;
    char state;
    if (ml_proc_start((long)getpid(), &start, &state) != 1) start = 0;
    const char *job = getenv("SLURM_JOB_ID");
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char cmd[1024];
    size_t c = (size_t)snprintf(cmd, sizeof cmd, "mergelens %s", command);
    for (int i = 1; i < argc && c < sizeof cmd; i++) c += (size_t)snprintf(cmd + c, sizeof cmd - c, " %s", argv[i]);
    for (char *p = cmd; *p; p++)
        if (*p == '\n') *p = ' ';
    snprintf(t, cap, "mergelens lock\nhost=%s\npid=%ld\nstart=%llu\njob=%s\ncommand=%s\nstarted=%s\nend\n", host,
             (long)getpid(), start, job ? job : "", cmd, when);
}

/* Why a holder's lock may be taken over (NULL: it may not). */
static const char *ml_stale_reason(const ml_holder *h) {
    char host[256] = "?";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    const char *job = getenv("SLURM_JOB_ID");
    int same_host = !strcmp(h->host, host);
    if (same_host && !ml_holder_alive(h->pid, h->start)) return "its process is gone";
    if (!same_host && job && *job && !strcmp(job, h->job)) return "it is this Slurm job before a requeue";
    return NULL;
}

static void ml_describe(const ml_holder *h, char *buf, size_t n) {
    snprintf(buf, n, "host %s, pid %ld%s%s%s%s", h->host, h->pid, *h->job ? ", Slurm job " : "", h->job,
             *h->started ? ", since " : "", h->started);
}

/* Take the lock of one output (rank 0). A stale lock is renamed aside under a name of
 * our own, and its content checked again: if another taker replaced it meanwhile, the
 * moved lock is put back (link, which never replaces) and we look again. */
static int ml_lock_take(ml_guard_out *o) {
    char seen[ML_LOCK_TEXT], moved[ML_LOCK_TEXT], desc[512];
    ml_holder h;
    for (int attempt = 0; attempt < 40; attempt++) {
        int fd = open(o->lock, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            size_t len = strlen(o->text), done = 0;
            while (done < len) {
                ssize_t w = write(fd, o->text + done, len - done);
                if (w <= 0) break;
                done += (size_t)w;
            }
            int bad = done < len || fsync(fd) != 0;
            bad |= close(fd) != 0;
            if (bad) {
                int e = errno;
                unlink(o->lock);
                return ML_FAIL(ML_ERR_IO, "%s: cannot write its lock %s (%s): %s", o->path, o->lock, o->label,
                               strerror(e));
            }
            o->held = 1;
            return ML_OK;
        }
        if (errno != EEXIST)
            return ML_FAIL(ML_ERR_IO, "%s: cannot write its lock %s (%s): %s", o->path, o->lock, o->label,
                           strerror(errno));
        int r = ml_lock_read(o->lock, seen, sizeof seen, &h);
        if (r == 0) continue; /* released meanwhile */
        if (r < 0)
            return ML_FAIL(ML_ERR_IO, "%s %s: cannot read its lock %s: %s", o->label, o->path, o->lock,
                           strerror(errno));
        if (r == 2) { /* being written by its creator: look again shortly */
            if (attempt < 20) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
                continue;
            }
            return ML_FAIL(ML_ERR_IO, "%s %s: its lock %s is unreadable or incomplete; if no other run uses "
                                      "%s, remove the lock: rm %s",
                           o->label, o->path, o->lock, o->path, o->lock);
        }
        const char *why = ml_stale_reason(&h);
        ml_describe(&h, desc, sizeof desc);
        if (!why)
            return ML_FAIL(ML_ERR_IO, "%s %s: in use by another run (%s); if that run is dead, remove its lock: rm %s",
                           o->label, o->path, desc, o->lock);
        /* tests: stop here (SIGSTOP) so that another run can take the lock meanwhile */
        if (getenv("ML_GUARD_TEST_STOP")) raise(SIGSTOP);
        char aside[PATH_MAX + 96];
        char host[64] = "?";
        gethostname(host, sizeof host);
        host[sizeof host - 1] = '\0';
        snprintf(aside, sizeof aside, "%s.stale.%s.%ld", o->lock, host, (long)getpid());
        if (rename(o->lock, aside) != 0) {
            if (errno == ENOENT) continue;
            return ML_FAIL(ML_ERR_IO, "%s: cannot move the stale lock aside: %s", o->lock, strerror(errno));
        }
        ml_holder h2;
        int r2 = ml_lock_read(aside, moved, sizeof moved, &h2);
        if (r2 == 1 && !strcmp(moved, seen)) {
            unlink(aside);
            ml_warn("%s %s: taking over a stale lock (%s): %s", o->label, o->path, desc, why);
            continue; /* O_EXCL again: another taker may still win */
        }
        /* not the lock we judged: put it back without replacing a newer one */
        int put = link(aside, o->lock);
        if (put != 0 && errno != EEXIST) put = rename(aside, o->lock); /* no hard links here */
        else if (put != 0)
            ml_warn("%s: lock contention by three runs at once; the run of %s lost its lock", o->lock, desc);
        unlink(aside);
    }
    return ML_FAIL(ML_ERR_IO, "%s %s: could not take its lock %s (contended)", o->label, o->path, o->lock);
}

/* Unlink a lock only if it is still ours. */
static void ml_lock_drop(ml_guard_out *o) {
    if (!o->held) return;
    char now[ML_LOCK_TEXT];
    ml_holder h;
    if (ml_lock_read(o->lock, now, sizeof now, &h) == 1 && !strcmp(now, o->text)) unlink(o->lock);
    else ml_warn("%s: the lock of %s is no longer this run's; left in place", o->lock, o->path);
    o->held = 0;
}

/* ---- finding the outputs ---------------------------------------------------------------- */
/* A string option's value from argv (last one wins, like the options registry), else
 * from the --config / --job file's section. */
static const char *ml_find_opt(ml_cli_guard *g, const char *key, int argc, char **argv, const char *section,
                               int root_fallback) {
    const char *v = NULL;
    char k[128];
    for (int i = 1; i < argc; i++) {
        if (!ml_opt_key(argv[i], k, sizeof k) || strcmp(k, key) != 0) continue;
        const char *eq = strchr(argv[i], '=');
        if (eq) v = eq + 1;
        else if (i + 1 < argc) v = argv[++i];
    }
    if (v || !g->config) return v;
    const ml_node *sec = ml_node_get(g->config, section);
    if (!sec && root_fallback) sec = g->config;
    const ml_node *n = sec ? ml_node_get(sec, key) : NULL;
    return n && n->kind == ML_NODE_SCALAR ? n->value : NULL;
}

static int ml_add_out(ml_cli_guard *g, const char *label, const char *path, int is_dir, int makes_parent) {
    if (!path || !*path) return ML_OK;
    if (g->n >= ML_GUARD_MAX_OUT) return ML_FAIL(ML_ERR_INTERNAL, "too many outputs");
    ml_guard_out *o = &g->out[g->n++];
    snprintf(o->label, sizeof o->label, "%s", label);
    o->path = path;
    o->is_dir = is_dir;
    o->makes_parent = makes_parent;
    return ML_OK;
}

/* The directory that holds path ("." if none), without trailing slashes of path. */
static void ml_parent_of(const char *path, char *dir, size_t n, char *base, size_t bn) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    size_t len = strlen(tmp);
    while (len > 1 && tmp[len - 1] == '/') tmp[--len] = '\0';
    char *slash = strrchr(tmp, '/');
    if (!slash) {
        snprintf(dir, n, ".");
        snprintf(base, bn, "%s", tmp);
    } else {
        snprintf(base, bn, "%s", slash + 1);
        if (slash == tmp) snprintf(dir, n, "/");
        else snprintf(dir, n, "%.*s", (int)(slash - tmp), tmp);
    }
}

/* Check one output against the inputs and the file system; set its lock path. */
static int ml_check_out(ml_guard_out *o, const ml_inputs *in) {
    struct stat st;
    int exists = stat(o->path, &st) == 0;
    if (exists && o->is_dir && !S_ISDIR(st.st_mode))
        return ML_FAIL(ML_ERR_ARG, "%s %s: exists and is not a directory", o->label, o->path);
    if (exists && !o->is_dir && S_ISDIR(st.st_mode))
        return ML_FAIL(ML_ERR_ARG, "%s %s: is a directory (give the file to write)", o->label, o->path);
    char real_out[PATH_MAX], real_in[PATH_MAX];
    int have_real = exists && realpath(o->path, real_out) != NULL;
    for (int i = 0; exists && i < in->n; i++) {
        if (o->is_dir && S_ISDIR(in->st[i].st_mode)) continue; /* writing new files into a read directory */
        int same = in->st[i].st_dev == st.st_dev && in->st[i].st_ino == st.st_ino;
        if (!same && have_real && realpath(in->path[i], real_in)) same = !strcmp(real_in, real_out);
        size_t dl = 0;
        if (!same && have_real && in->tree[i] && realpath(in->path[i], real_in)) { /* a file of an input tree */
            dl = strlen(real_in);
            same = !strncmp(real_out, real_in, dl) && real_out[dl] == '/';
        }
        if (same)
            return ML_FAIL(ML_ERR_ARG, "%s %s: is also an input of this command (%s%s); writing it would destroy it",
                           o->label, o->path, dl ? "a file of " : "", in->path[i]);
    }
    char dir[PATH_MAX], base[PATH_MAX], real_dir[PATH_MAX];
    ml_parent_of(o->path, dir, sizeof dir, base, sizeof base);
    struct stat ds;
    if (stat(dir, &ds) != 0) {
        if (!o->makes_parent)
            return ML_FAIL(ML_ERR_ARG, "%s %s: directory %s does not exist", o->label, o->path, dir);
    } else if (!S_ISDIR(ds.st_mode)) {
        return ML_FAIL(ML_ERR_ARG, "%s %s: %s is not a directory", o->label, o->path, dir);
    }
    if (!strcmp(base, ".") || !strcmp(base, "..")) { /* `--out_dir .`: lock beside the real directory */
        if (!realpath(o->path, real_dir)) return ML_FAIL(ML_ERR_IO, "%s %s: %s", o->label, o->path, strerror(errno));
        snprintf(o->lock, sizeof o->lock, "%s.lock", real_dir);
    } else {
        snprintf(o->lock, sizeof o->lock, "%s/%s.lock", dir, base);
    }
    return ML_OK;
}

/* `run JOB.yaml`: the experiment record RUN_DIR/experiment.h5 of a whole run (a lone
 * --stage, as Slurm runs stages side by side, and --plan / --dry_run take no lock). */
static int ml_guard_run(ml_cli_guard *g, int argc, char **argv) {
    char k[128];
    const char *pos = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!ml_opt_key(argv[i], k, sizeof k)) {
            if (!pos) pos = argv[i];
            continue;
        }
        if (!strcmp(k, "stage") || !strcmp(k, "plan") || !strcmp(k, "dry_run")) return ML_OK;
        const char *eq = strchr(argv[i], '=');
        if ((!strcmp(k, "out") || !strcmp(k, "config")) && !eq && i + 1 < argc) i++;
        if (!strcmp(k, "out")) out = eq ? eq + 1 : argv[i];
    }
    ml_job *job = NULL;
    if (!pos || ml_job_load(pos, out, &job) != ML_OK) {
        ml_error_clear(); /* the command reports it */
        return ML_OK;
    }
    size_t len = strlen(ml_job_run_dir(job)) + 16;
    g->strings[0] = ml_malloc(len);
    if (g->strings[0]) snprintf(g->strings[0], len, "%s/experiment.h5", ml_job_run_dir(job));
    ml_job_destroy(&job);
    if (!g->strings[0]) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    return ml_add_out(g, "run record", g->strings[0], 0, 1);
}

/* tokenize writes OUT_DIR/NAME.h5 for each domain spec NAME=KIND:PATH (positionals and --domains,
 * specs separated by ';'): checked against the inputs, locked by OUT_DIR's lock. */
static int ml_guard_stores(ml_cli_guard *g, int argc, char **argv) {
    const char *dir = g->out[0].path;
    char k[128];
    for (int i = 1; i < argc; i++) {
        const char *v = argv[i];
        if (ml_opt_key(argv[i], k, sizeof k)) {
            const char *eq = strchr(argv[i], '=');
            v = eq ? eq + 1 : i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[++i] : "";
            if (strcmp(k, "domains") != 0) continue;
        }
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ";"), nl = strcspn(p, "=");
            if (nl < len && nl > 0) {
                size_t n = strlen(dir) + nl + 8;
                char *path = ml_malloc(n);
                if (!path) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
                snprintf(path, n, "%s/%.*s.h5", dir, (int)nl, p);
                if (g->n >= ML_GUARD_MAX_OUT) {
                    ml_free(path);
                    return ML_OK; /* the first ones are checked */
                }
                g->strings[g->n] = path;
                ML_CHECK(ml_add_out(g, "--out_dir", path, 0, 1));
                g->out[g->n - 1].check_only = 1;
            }
            p += len + (p[len] ? 1 : 0);
        }
    }
    return ML_OK;
}

/* The outputs and inputs of a command with an entry in ml_guard_specs. */
static int ml_guard_find(ml_cli_guard *g, const ml_guard_spec *sp, const char *command, int argc, char **argv,
                         ml_inputs *in) {
    const char *sub = argc > 1 ? argv[1] : "";
    /* the options file and its section, as the command reads them */
    int is_data = !strcmp(command, "tokenizer") || !strcmp(command, "tokenize") || !strcmp(command, "data");
    char section[64];
    if (!strcmp(command, "lora")) snprintf(section, sizeof section, "lora_%s", sub);
    else if (!strcmp(command, "region") && sp->sub) snprintf(section, sizeof section, "%s", sub);
    else snprintf(section, sizeof section, "%s", command);
    const char *cfg = ml_find_opt(g, is_data ? "job" : "config", argc, argv, section, 0);
    if (cfg && *cfg) {
        ml_inputs_add(in, cfg, strlen(cfg), 0);
        if (ml_yaml_load(cfg, &g->config) != ML_OK) ml_error_clear(); /* the command reports it */
    }
    /* outputs given as options */
    const char *lists[2] = {sp->file_opts, sp->dir_opts};
    for (int kind = 0; kind < 2; kind++)
        for (const char *p = lists[kind]; *p;) {
            while (*p == ' ') p++;
            size_t len = strcspn(p, " ");
            char key[64], label[72];
            snprintf(key, sizeof key, "%.*s", (int)len, p);
            p += len;
            if (!*key) continue;
            snprintf(label, sizeof label, "--%s", key);
            ML_CHECK(ml_add_out(g, label, ml_find_opt(g, key, argc, argv, section, !is_data), kind, sp->makes_parent));
        }
    /* positionals (an option takes the next argument unless it starts with --) and inputs */
    int npos = 0;
    char k[128];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (ml_opt_key(a, k, sizeof k)) {
            const char *v = strchr(a, '=');
            if (v) v++;
            else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) v = argv[++i];
            int is_out = 0;
            for (int o = 0; o < g->n; o++) is_out |= g->out[o].path == v;
            if (v && !is_out) ml_inputs_scan(in, v);
            continue;
        }
        if (npos == sp->pos_file || npos == sp->pos_dir) {
            ML_CHECK(ml_add_out(g, npos == sp->pos_dir ? "DIR" : "OUT", a, npos == sp->pos_dir, sp->makes_parent));
        } else {
            ml_inputs_scan(in, a);
            if (npos == 1 && !strcmp(command, "import")) ml_inputs_add(in, a, strlen(a), 1); /* import hf DIR */
            if (npos == 0 && (!strcmp(command, "merge") || !strcmp(command, "sweep"))) {
                ml_merge_recipe *r = NULL; /* the recipe's models are inputs too */
                const char *const *paths = NULL;
                int nm = 0;
                if (ml_merge_recipe_load(a, &r) == ML_OK && ml_merge_recipe_models(r, &paths, &nm) == ML_OK)
                    for (int m = 0; m < nm; m++) ml_inputs_add(in, paths[m], strlen(paths[m]), 0);
                ml_error_clear();
                ml_merge_recipe_destroy(&r);
            }
        }
        npos++;
    }
    if (!strcmp(command, "tokenize") && g->n == 1) ML_CHECK(ml_guard_stores(g, argc, argv));
    return ML_OK;
}

/* Rank 0: find the outputs and inputs, check every output, then lock them. */
static int ml_guard_local(ml_cli_guard *g, const char *command, int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return ML_OK;
    const char *sub = argc > 1 ? argv[1] : "";
    int rc = ML_OK;
    ml_inputs in = {.n = 0};
    if (!strcmp(command, "run")) {
        ML_CHECK_GOTO(ml_guard_run(g, argc, argv), done);
    } else {
        const ml_guard_spec *sp = NULL;
        for (size_t i = 0; !sp && i < sizeof ml_guard_specs / sizeof ml_guard_specs[0]; i++)
            if (!strcmp(ml_guard_specs[i].command, command) &&
                (!ml_guard_specs[i].sub || !strcmp(ml_guard_specs[i].sub, sub)))
                sp = &ml_guard_specs[i];
        if (!sp) return ML_OK; /* no outputs (inspect, doctor, version, data stats) */
        ML_CHECK_GOTO(ml_guard_find(g, sp, command, argc, argv, &in), done);
    }
    for (int o = 0; o < g->n; o++) ML_CHECK_GOTO(ml_check_out(&g->out[o], &in), done);
    for (int o = 0; o < g->n; o++) {
        ml_guard_out *x = &g->out[o];
        if (x->check_only) continue;
        char dir[PATH_MAX], base[PATH_MAX];
        ml_parent_of(x->path, dir, sizeof dir, base, sizeof base);
        if (x->makes_parent) ML_CHECK_GOTO(ml_mkdirs(dir), done);
        ml_lock_text(x->text, sizeof x->text, command, argc, argv);
        ML_CHECK_GOTO(ml_lock_take(x), done);
    }
done:
    ml_inputs_free(&in);
    if (rc != ML_OK)
        for (int o = 0; o < g->n; o++) ml_lock_drop(&g->out[o]);
    return rc;
}

int ml_cli_guard_acquire(MPI_Comm comm, const char *command, int argc, char **argv, ml_cli_guard **out) {
    int rank, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    *out = NULL;
    ml_cli_guard *g = ml_calloc(1, sizeof *g);
    if (!g) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    else if (rank == 0) rc = ml_guard_local(g, command, argc, argv);
    rc = ml_agree(comm, rc);
    if (rc != ML_OK) {
        ml_cli_guard_release(&g);
        return rc;
    }
    *out = g;
    return ML_OK;
}

void ml_cli_guard_release(ml_cli_guard **pg) {
    if (!pg || !*pg) return;
    ml_cli_guard *g = *pg;
    for (int o = 0; o < g->n; o++) ml_lock_drop(&g->out[o]);
    for (int i = 0; i < ML_GUARD_MAX_OUT; i++) ml_free(g->strings[i]);
    ml_node_destroy(&g->config);
    ml_free(g);
    *pg = NULL;
}
