/* `mergelens run JOB.yaml`: stages in dependency order, skip-if-complete,
 * experiment.h5 with the job, provenance, timings and external links. */
#include <errno.h>
#include <jansson.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mergelens/cli.h"
#include "mergelens/io.h"
#include "mergelens/pipeline.h"

static const ml_option_spec ml_run_opts[] = {
    {"out", ML_OPT_STRING, "", 0, -1, NULL, "run directory (overrides the job's run_dir)"},
    {"stage", ML_OPT_STRING, "", 0, -1, NULL, "run only this stage (its inputs must exist)"},
    {"force", ML_OPT_BOOL, "false", 0, -1, NULL, "rerun stages even when their outputs are complete"},
    {"dry_run", ML_OPT_BOOL, "false", 0, -1, NULL, "print the plan and exit"},
    {"plan", ML_OPT_BOOL, "false", 0, -1, NULL, "print the stages as tab-separated lines (for slurm/submit) and exit"},
    {"task", ML_OPT_INT, "-1", -1, 1e6, NULL, "with --stage: run array task I of that array stage (-1: all tasks)"},
    {"tasks", ML_OPT_INT, "0", 0, 1e6, NULL, "with --task: the array's task count (must equal its slurm array)"},
    ML_OPT_END,
};

typedef struct {
    const char *status; /* "done", "skipped", "failed", "interrupted", "pending" */
    double seconds;
} ml_stage_result;

/* A stage's own record, RUN_DIR/records/<stage>.json, written atomically by
 * the run that ran it (concurrent stage jobs never share a file). Fixed size
 * and zero-filled so that two reads compare with memcmp. */
typedef struct {
    char status[16]; /* "" if the stage has no record */
    double seconds;
    char finished[32];
    char slurm_job[32];
} ml_stage_record;

/* task >= 0: the record of one task of an array stage, <stage>@<task>.json */
static void ml_record_path(const ml_job *job, const char *stage, int task, char *buf, size_t n) {
    if (task >= 0) snprintf(buf, n, "%s/records/%s@%d.json", ml_job_run_dir(job), stage, task);
    else snprintf(buf, n, "%s/records/%s.json", ml_job_run_dir(job), stage);
}

/* Read one record file into r (left zeroed if missing or not a record). */
static void ml_record_read(const char *path, ml_stage_record *r) {
    json_t *o = ml_file_exists(path) ? json_load_file(path, 0, NULL) : NULL;
    const char *fmt = o ? json_string_value(json_object_get(o, "format")) : NULL;
    const char *st = o ? json_string_value(json_object_get(o, "status")) : NULL;
    if (fmt && st && !strcmp(fmt, "mergelens.stage_record")) {
        snprintf(r->status, sizeof r->status, "%s", st);
        r->seconds = json_number_value(json_object_get(o, "seconds"));
        const char *f = json_string_value(json_object_get(o, "finished"));
        const char *j = json_string_value(json_object_get(o, "slurm_job"));
        snprintf(r->finished, sizeof r->finished, "%s", f ? f : "");
        snprintf(r->slurm_job, sizeof r->slurm_job, "%s", j ? j : "");
    }
    json_decref(o);
}

static void ml_iso_now(char *buf, size_t n);

/* Rank 0: write a stage's record (temp name, then rename). */
static int ml_record_write(const ml_job *job, const ml_stage *s, int task, const char *status, double seconds) {
    char path[4096], tmp[4200], dir[4096], now[64];
    snprintf(dir, sizeof dir, "%s/records", ml_job_run_dir(job));
    ML_CHECK(ml_mkdirs(dir));
    ml_record_path(job, s->name, task, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    ml_iso_now(now, sizeof now);
    const char *jid = getenv("SLURM_JOB_ID"), *atask = getenv("SLURM_ARRAY_TASK_ID");
    char job_id[32];
    snprintf(job_id, sizeof job_id, "%s%s%s", jid ? jid : "", atask && jid ? "_" : "", atask && jid ? atask : "");
    json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:f, s:s, s:s}", "format", "mergelens.stage_record", "version", 1,
                          "stage", s->name, "command", s->command, "status", status, "seconds", seconds, "finished",
                          now, "slurm_job", job_id);
    if (!o) return ML_FAIL(ML_ERR_NOMEM, "out of memory building the record of stage '%s'", s->name);
    int bad = json_dump_file(o, tmp, JSON_COMPACT) != 0;
    json_decref(o);
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return ML_FAIL(ML_ERR_IO, "%s: cannot write the stage record: %s", path, strerror(e));
    }
    return ML_OK;
}

/* Every stage's record (rank 0 reads, all ranks get the same). A missing or
 * unreadable record counts as none. Collective. */
static int ml_records_load(MPI_Comm comm, const ml_job *job, ml_stage_record *rec) {
    int rank, n = ml_job_stage_count(job);
    MPI_Comm_rank(comm, &rank);
    memset(rec, 0, sizeof *rec * (size_t)n);
    for (int i = 0; rank == 0 && i < n; i++) {
        const ml_stage *st = ml_job_stage(job, i);
        char path[4096];
        ml_record_path(job, st->name, -1, path, sizeof path);
        ml_record_read(path, &rec[i]);
        if (rec[i].status[0] || st->array <= 0) continue;
        /* an array stage: done when every task is, failed/interrupted when
         * one is, partial while only some have finished */
        int done = 0, failed = 0, stopped = 0;
        for (int t = 0; t < st->array; t++) {
            ml_stage_record r;
            memset(&r, 0, sizeof r);
            ml_record_path(job, st->name, t, path, sizeof path);
            ml_record_read(path, &r);
            done += !strcmp(r.status, "done");
            failed += !strcmp(r.status, "failed");
            stopped += !strcmp(r.status, "interrupted");
            rec[i].seconds += r.seconds;
            if (strcmp(r.finished, rec[i].finished) > 0) memcpy(rec[i].finished, r.finished, sizeof r.finished);
        }
        const char *agg = failed ? "failed" : stopped ? "interrupted" : done == st->array ? "done" : done ? "partial" : "";
        snprintf(rec[i].status, sizeof rec[i].status, "%s", agg);
    }
    ML_CHECK_MPI(MPI_Bcast(rec, (int)(sizeof *rec * (size_t)n), MPI_BYTE, 0, comm));
    return ML_OK;
}

static void ml_print_slurm(FILE *f, const char *who, const ml_node *m) {
    if (!m || m->kind != ML_NODE_MAP) return;
    for (int i = 0; i < m->n; i++) {
        const ml_node *v = m->items[i];
        fprintf(f, "slurm\t%s\t%s\t%s\t%d\n", who, v->key, v->kind == ML_NODE_SCALAR ? v->value : "", v->line);
    }
}

/* --plan: the job as tab-separated lines, in run order (read by slurm/submit):
 *   job   NAME RUN_DIR
 *   stage NAME NEEDS(comma-separated, or -) COMPLETE(0|1) RECORDED(status in
 *         the stage's record: done, failed, interrupted, or -)
 *   slurm STAGE(or * for the job-level mapping) KEY VALUE LINE */
static void ml_print_plan(const ml_job *job, const ml_stage_record *rec, FILE *f) {
    const ml_node *nm = ml_node_get(ml_job_root(job), "name");
    const char *name = nm && nm->kind == ML_NODE_SCALAR ? nm->value : "";
    fprintf(f, "job\t%s\t%s\n", name, ml_job_run_dir(job));
    ml_print_slurm(f, "*", ml_node_get(ml_job_root(job), "slurm"));
    for (int i = 0; i < ml_job_stage_count(job); i++) {
        const ml_stage *s = ml_job_stage(job, i);
        fprintf(f, "stage\t%s\t", s->name);
        for (int k = 0; k < s->n_needs; k++) fprintf(f, "%s%s", k ? "," : "", ml_job_stage(job, s->needs[k])->name);
        fprintf(f, "%s\t%d\t%s\n", s->n_needs ? "" : "-", ml_stage_complete(s),
                rec[i].status[0] ? rec[i].status : "-");
        ml_print_slurm(f, s->name, s->slurm);
    }
    fflush(f);
}

static void ml_iso_now(char *buf, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int ml_read_text(const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return ML_FAIL(ML_ERR_IO, "%s: cannot read", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = ml_malloc((size_t)n + 1);
    if (!b) {
        fclose(f);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = '\0';
    *out = b;
    return ML_OK;
}

/* Unique host names of all ranks as a JSON list (same on every rank). */
static int ml_hosts_json(MPI_Comm comm, char **out) {
    int size;
    MPI_Comm_size(comm, &size);
    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPI_Get_processor_name(name, &len);
    char *all = ml_calloc((size_t)size, MPI_MAX_PROCESSOR_NAME);
    if (!all) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    ML_CHECK_MPI(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm));
    json_t *arr = json_array();
    for (int r = 0; r < size; r++) {
        const char *h = all + (size_t)r * MPI_MAX_PROCESSOR_NAME;
        int seen = 0;
        for (size_t k = 0; k < json_array_size(arr); k++) seen |= !strcmp(json_string_value(json_array_get(arr, k)), h);
        if (!seen) json_array_append_new(arr, json_string(h));
    }
    ml_free(all);
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    *out = s ? ml_strdup(s) : NULL;
    free(s);
    return *out ? ML_OK : ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
}

static int ml_write_experiment(MPI_Comm comm, const char *job_path, const ml_job *job, const ml_stage_result *res,
                               const ml_stage_record *rec, const char *started) {
    int rc = ML_OK, size;
    MPI_Comm_size(comm, &size);
    char path[4096], finished[64], *text = NULL, *json = NULL, *hosts = NULL;
    snprintf(path, sizeof path, "%s/experiment.h5", ml_job_run_dir(job));
    ml_iso_now(finished, sizeof finished);
    ml_h5 *h = NULL;
    ML_CHECK_GOTO(ml_read_text(job_path, &text), done);
    ML_CHECK_GOTO(ml_node_to_json(ml_job_root(job), &json), done);
    ML_CHECK_GOTO(ml_hosts_json(comm, &hosts), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, "mergelens.experiment", 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "job_file", job_path), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "job_yaml", text), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", json), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "hosts", hosts), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "ranks", size), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "started", started), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "finished", finished), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "run_dir", ml_job_run_dir(job)), done);
    const char *rd = ml_job_run_dir(job);
    size_t rdl = strlen(rd);
    for (int i = 0; i < ml_job_stage_count(job); i++) {
        const ml_stage *s = ml_job_stage(job, i);
        char g[512];
        snprintf(g, sizeof g, "/stages/%s", s->name);
        ML_CHECK_GOTO(ml_h5_mkgroup(h, g), done);
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "command", s->command), done);
        /* the stage's record (this run's own stages wrote theirs already);
         * without one, what this run did (pending, or skipped as complete) */
        const char *status = res[i].status;
        double secs = res[i].seconds;
        if (rec[i].status[0] && (strcmp(status, "skipped") || !strcmp(rec[i].status, "done"))) {
            status = rec[i].status;
            secs = rec[i].seconds;
        }
        ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "status", status), done);
        ML_CHECK_GOTO(ml_h5_set_attr_double(h, g, "seconds", secs), done);
        if (rec[i].finished[0]) ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "finished", rec[i].finished), done);
        if (rec[i].slurm_job[0]) ML_CHECK_GOTO(ml_h5_set_attr_str(h, g, "slurm_job", rec[i].slurm_job), done);
        json_t *cmdline = json_array();
        for (int a = 0; a < s->argc; a++) json_array_append_new(cmdline, json_string(s->argv[a]));
        char *cl = json_dumps(cmdline, JSON_COMPACT);
        json_decref(cmdline);
        rc = cl ? ml_h5_set_attr_str(h, g, "argv", cl) : ML_FAIL(ML_ERR_NOMEM, "out of memory");
        free(cl);
        if (rc) goto done;
        for (int o = 0; o < s->n_outputs; o++) {
            if (!ml_file_exists(s->outputs[o])) continue;
            /* links relative to run_dir resolve next to experiment.h5 */
            const char *target = s->outputs[o];
            if (!strncmp(target, rd, rdl) && target[rdl] == '/') target += rdl + 1;
            const char *base = strrchr(s->outputs[o], '/');
            base = base ? base + 1 : s->outputs[o];
            char link[600];
            snprintf(link, sizeof link, "/outputs/%s/%.*s", s->name,
                     (int)(strlen(base) > 3 && !strcmp(base + strlen(base) - 3, ".h5") ? strlen(base) - 3 : strlen(base)),
                     base);
            char grp[520];
            snprintf(grp, sizeof grp, "/outputs/%s", s->name);
            ML_CHECK_GOTO(ml_h5_mkgroup(h, grp), done);
            if (H5Lcreate_external(target, "/", ml_h5_id(h), link, H5P_DEFAULT, H5P_DEFAULT) < 0)
                ML_FAIL_GOTO(done, ML_ERR_HDF5, "%s: cannot create external link %s -> %s", path, link, target);
        }
    }
    ML_CHECK_GOTO(ml_h5_write_profile(h, "/profile"), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
done:
    if (h) ml_h5_discard(&h);
    ml_free(text);
    ml_free(json);
    ml_free(hosts);
    return rc;
}

/* experiment.h5 assembled from every stage's record. Stage jobs running at
 * once each do this; a writer whose records changed while it wrote (another
 * stage finished) writes again, so the last file renamed into place holds
 * every record written before it: a record written later belongs to a stage
 * that assembles (and renames) after reading it. Collective. */
static int ml_assemble_experiment(MPI_Comm comm, const char *job_path, const ml_job *job, const ml_stage_result *res,
                                  const char *started) {
    int rc = ML_OK, n = ml_job_stage_count(job);
    ml_stage_record *rec = ml_calloc((size_t)n, sizeof *rec), *again = ml_calloc((size_t)n, sizeof *again);
    if (!rec || !again) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int attempt = 0;; attempt++) {
        ML_CHECK_GOTO(ml_records_load(comm, job, rec), done);
        ML_CHECK_GOTO(ml_write_experiment(comm, job_path, job, res, rec, started), done);
        ML_CHECK_GOTO(ml_records_load(comm, job, again), done);
        if (!memcmp(rec, again, sizeof *rec * (size_t)n)) break; /* same on every rank (broadcast) */
        if (attempt == 50)
            ML_FAIL_GOTO(done, ML_ERR_IO, "%s/records: stage records keep changing while experiment.h5 is written",
                         ml_job_run_dir(job));
    }
done:
    ml_free(rec);
    ml_free(again);
    return rc;
}

/* A stage's `files`, written atomically (temp name, then rename), and the
 * directories its declared outputs go to (e.g. sweeps/parts/). */
static int ml_write_stage_files(const ml_stage *s) {
    for (int i = 0; i < s->n_outputs; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", s->outputs[i]);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            ML_CHECK(ml_mkdirs(dir));
        }
    }
    for (int i = 0; i < s->n_files; i++) {
        char tmp[4200], dir[4096];
        snprintf(dir, sizeof dir, "%s", s->file_paths[i]);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = '\0';
            ML_CHECK(ml_mkdirs(dir));
        }
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", s->file_paths[i], (int)getpid());
        FILE *f = fopen(tmp, "w");
        if (!f) return ML_FAIL(ML_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
        size_t len = strlen(s->file_texts[i]);
        int bad = fwrite(s->file_texts[i], 1, len, f) != len;
        bad |= fclose(f) != 0;
        if (bad || rename(tmp, s->file_paths[i]) != 0) {
            unlink(tmp);
            return ML_FAIL(ML_ERR_IO, "%s: cannot write stage file: %s", s->file_paths[i], strerror(errno));
        }
    }
    return ML_OK;
}

/* The tasks of an array stage run here one after another, each as
 * `run JOB --out RUN_DIR --stage NAME --task T --tasks N` (what each Slurm
 * array task runs), keeping --force and --dry_run. Collective. */
static int ml_run_array_tasks(MPI_Comm comm, const char *job_path, const char *run_dir, const ml_stage *s,
                              const ml_options *o) {
    char t[16], nt[16];
    snprintf(nt, sizeof nt, "%d", s->array);
    for (int k = 0; k < s->array; k++) {
        snprintf(t, sizeof t, "%d", k);
        char *av[14] = {"run", (char *)job_path, "--out", (char *)run_dir, "--stage", (char *)s->name,
                        "--task", t, "--tasks", nt};
        int ac = 10;
        if (ml_opt_bool(o, "force")) av[ac++] = "--force";
        if (ml_opt_bool(o, "dry_run")) av[ac++] = "--dry_run";
        ML_CHECK(ml_cmd_run(comm, ac, av));
    }
    return ML_OK;
}

int ml_cmd_run(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, npos = 0, help = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    char **pos = NULL;
    ml_job *job = NULL;
    ml_stage_result *res = NULL;
    ML_CHECK(ml_options_parse_command(comm, "run",
                                      "usage: mergelens run JOB.yaml [options]\n\n"
                                      "Run a job file's stages in dependency order. Stages whose outputs exist and "
                                      "validate are skipped, so a rerun resumes where a failure stopped.",
                                      ml_run_opts, argc, argv, &o, &npos, &pos, &help));
    if (help) goto done;
    if (npos != 1) ML_FAIL_GOTO(done, ML_ERR_ARG, "run: expected one job file (usage: mergelens run JOB.yaml)");
    const char *out = ml_opt_str(o, "out"), *only = ml_opt_str(o, "stage");
    const int task = (int)ml_opt_int(o, "task"), tasks = (int)ml_opt_int(o, "tasks");
    if (task >= 0 && (!*only || task >= tasks))
        ML_FAIL_GOTO(done, ML_ERR_ARG, "run: --task I needs --stage NAME and --tasks N with I < N (got --task %d --tasks %d)",
                     task, tasks);
    rc = ml_job_load_task(pos[0], *out ? out : NULL, task >= 0 ? task : 0, task >= 0 ? tasks : 1, &job);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    int n = ml_job_stage_count(job), only_idx = -1;
    if (*only) {
        for (int i = 0; i < n; i++)
            if (!strcmp(ml_job_stage(job, i)->name, only)) only_idx = i;
        if (only_idx < 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: no stage named '%s'", pos[0], only);
        if (task >= 0 && ml_job_stage(job, only_idx)->array != tasks)
            ML_FAIL_GOTO(done, ML_ERR_ARG, "%s: stage '%s' is %s, not an array of %d tasks (--tasks)", pos[0], only,
                         ml_job_stage(job, only_idx)->array ? "an array of another size" : "not a job array", tasks);
    }
    if (n > 256) ML_FAIL_GOTO(done, ML_ERR_CONFIG, "%s: %d stages, at most 256 are supported", pos[0], n);
    res = ml_calloc((size_t)n, sizeof *res);
    if (!res) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) res[i].status = "pending";
    if (ml_opt_bool(o, "plan")) {
        ml_stage_record *rec = ml_calloc((size_t)n, sizeof *rec);
        if (!rec) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        rc = ml_records_load(comm, job, rec);
        if (rc == ML_OK && rank == 0) ml_print_plan(job, rec, stdout);
        ml_free(rec);
        goto done;
    }
    char started[64];
    ml_iso_now(started, sizeof started);
    const char *rd = ml_job_run_dir(job);
    if (rank == 0) {
        static const char *sub[] = {"",       "/data",     "/models", "/acts", "/saes",
                                    "/sweeps", "/tracking", "/region", "/adapters", "/peft"};
        char p[4096];
        for (size_t i = 0; rc == ML_OK && i < sizeof sub / sizeof sub[0]; i++) {
            snprintf(p, sizeof p, "%s%s", rd, sub[i]);
            rc = ml_mkdirs(p);
        }
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    int complete[256] = {0};
    for (int i = 0; i < n && i < 256; i++) {
        /* rank 0 decides, so every rank takes the same branch */
        complete[i] = rank == 0 ? ml_stage_complete(ml_job_stage(job, i)) : 0;
    }
    ML_CHECK_MPI(MPI_Bcast(complete, 256, MPI_INT, 0, comm));
    ml_info("job %s: %d stage%s, run directory %s", pos[0], n, n == 1 ? "" : "s", rd);
    for (int i = 0; i < n; i++) {
        const ml_stage *s = ml_job_stage(job, i);
        int selected = only_idx < 0 || only_idx == i;
        if (!selected) continue;
        if (s->array > 0 && task < 0) { /* not one task of it: every task, one after another */
            ML_CHECK_GOTO(ml_run_array_tasks(comm, pos[0], rd, s, o), done);
            if (!ml_opt_bool(o, "dry_run")) res[i].status = "done";
            complete[i] = 1;
            continue;
        }
        if (complete[i] && !ml_opt_bool(o, "force")) {
            res[i].status = "skipped";
            ml_info("stage %d/%d %-12s complete, skipped", i + 1, n, s->name);
            continue;
        }
        if (only_idx >= 0) /* a lone stage needs its inputs */
            for (int k = 0; k < s->n_needs; k++)
                if (!complete[s->needs[k]] && ml_job_stage(job, s->needs[k])->n_outputs > 0)
                    ML_FAIL_GOTO(done, ML_ERR_CONFIG, "%s: stage '%s' needs stage '%s', whose outputs are missing",
                                 pos[0], s->name, ml_job_stage(job, s->needs[k])->name);
        if (ml_opt_bool(o, "dry_run")) {
            if (rank == 0) {
                printf("stage %s:", s->name);
                for (int a = 0; a < s->argc; a++) printf(" %s", s->argv[a]);
                printf("\n");
            }
            continue;
        }
        if (rank == 0) rc = ml_write_stage_files(s);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        ml_info("stage %d/%d %-12s mergelens %s ...", i + 1, n, s->name, s->command);
        const ml_command *cmd = ml_cli_find(s->command);
        double t0 = ml_wtime();
        ml_prof_begin(s->name);
        ml_cli_guard *guard = NULL;
        rc = ml_cli_guard_acquire(comm, s->command, s->argc, s->argv, &guard);
        if (rc == ML_OK) rc = cmd->fn(comm, s->argc, s->argv);
        ml_cli_guard_release(&guard);
        ml_prof_end(s->name, 0, 0);
        res[i].seconds = ml_wtime() - t0;
        rc = ml_agree(comm, rc);
        if (rc) {
            res[i].status = rc == ML_ERR_INTERRUPTED ? "interrupted" : "failed";
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ml_error_message());
            int code = rc;
            ml_error_clear();
            if (rank == 0 && ml_record_write(job, s, task, res[i].status, res[i].seconds) != ML_OK) ml_error_clear();
            if (ml_assemble_experiment(comm, pos[0], job, res, started) != ML_OK) ml_error_clear();
            rc = ML_FAIL(code, "stage '%s' (mergelens %s) failed: %s", s->name, s->command, msg);
            rc = ml_agree(comm, rc);
            goto done;
        }
        for (int k = 0; k < s->n_outputs; k++)
            if (rank == 0 && !ml_stage_complete(s)) {
                rc = ML_FAIL(ML_ERR_INTERNAL, "stage '%s' finished but its output %s is missing or invalid", s->name,
                             s->outputs[k]);
                break;
            }
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        res[i].status = "done";
        if (rank == 0) rc = ml_record_write(job, s, task, "done", res[i].seconds);
        ML_CHECK_GOTO(ml_agree(comm, rc), done);
        complete[i] = 1;
        ml_info("stage %d/%d %-12s done in %.1f s", i + 1, n, s->name, res[i].seconds);
    }
    if (!ml_opt_bool(o, "dry_run")) {
        ML_CHECK_GOTO(ml_assemble_experiment(comm, pos[0], job, res, started), done);
        ml_info("experiment record: %s/experiment.h5", rd);
    }
done:
    ml_free(res);
    ml_job_destroy(&job);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
