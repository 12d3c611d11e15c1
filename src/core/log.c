/* Logging with timestamps (rank 0, or every rank at debug level) and the
 * progress display (live bar on a terminal, periodic plain lines otherwise). */
#include "mergelens/core.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int ml_log_rank = 0, ml_log_size = 1;
static ml_log_level ml_level = ML_LOG_INFO;
static double ml_t0 = -1.0;

double ml_wtime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ml_log_init(int rank, int size) {
    ml_log_rank = rank;
    ml_log_size = size;
    if (ml_t0 < 0) ml_t0 = ml_wtime();
    const char *lv = getenv("ML_LOG_LEVEL");
    if (lv) {
        if (!strcasecmp(lv, "error")) ml_level = ML_LOG_ERROR;
        else if (!strcasecmp(lv, "warn")) ml_level = ML_LOG_WARN;
        else if (!strcasecmp(lv, "info")) ml_level = ML_LOG_INFO;
        else if (!strcasecmp(lv, "debug")) ml_level = ML_LOG_DEBUG;
    }
}

void ml_log_set_level(ml_log_level level) { ml_level = level; }

void ml_log(ml_log_level level, const char *fmt, ...) {
    if (level > ml_level) return;
    /* info and warn come from rank 0 only; debug and error from every rank */
    if ((level == ML_LOG_INFO || level == ML_LOG_WARN) && ml_log_rank != 0) return;
    if (ml_t0 < 0) ml_t0 = ml_wtime();
    static const char *tags[] = {"error", "warn", "info", "debug"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    FILE *out = level == ML_LOG_INFO ? stdout : stderr;
    if (ml_log_size > 1 && level == ML_LOG_DEBUG)
        fprintf(out, "[%9.3f] [rank %d] %s: %s\n", ml_wtime() - ml_t0, ml_log_rank, tags[level], msg);
    else
        fprintf(out, "[%9.3f] %s: %s\n", ml_wtime() - ml_t0, tags[level], msg);
    fflush(out);
}

/* ---- progress ------------------------------------------------------------- */
static void ml_fmt_duration(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e8) snprintf(buf, n, "--:--");
    else if (s < 3600) snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void ml_progress_print(ml_progress *p, const char *extra, int final) {
    double now = ml_wtime(), el = now - p->start;
    double rate = el > 0 ? p->done / el : 0;
    double eta = rate > 0 ? (p->total - p->done) / rate : -1;
    char eta_s[16], el_s[16];
    ml_fmt_duration(eta_s, sizeof eta_s, eta);
    ml_fmt_duration(el_s, sizeof el_s, el);
    double frac = p->total > 0 ? p->done / p->total : 0;
    if (frac > 1) frac = 1;
    if (p->tty) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %5.1f%% %.4g/s elapsed %s eta %s %s\033[K%s", p->label, bar, 100 * frac, rate,
                el_s, eta_s, extra ? extra : "", final ? "\n" : "");
    } else {
        fprintf(stderr, "[progress] %s %.0f/%.0f (%.1f%%) %.4g/s elapsed %s eta %s %s\n", p->label, p->done,
                p->total, 100 * frac, rate, el_s, eta_s, extra ? extra : "");
    }
    fflush(stderr);
    p->last_print = now;
}

void ml_progress_begin(ml_progress *p, const char *label, double total) {
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    p->start = p->last_print = ml_wtime();
    p->active = ml_log_rank == 0 && ml_level >= ML_LOG_INFO;
    p->tty = isatty(STDERR_FILENO);
}

void ml_progress_update(ml_progress *p, double done, const char *extra) {
    p->done = done;
    if (!p->active) return;
    double interval = p->tty ? 0.2 : 10.0; /* batch logs: a line every 10 s */
    const char *env = getenv("ML_PROGRESS_INTERVAL");
    if (env) interval = atof(env);
    if (ml_wtime() - p->last_print >= interval) ml_progress_print(p, extra, 0);
}

void ml_progress_end(ml_progress *p, const char *extra) {
    if (p->active) ml_progress_print(p, extra, 1);
    p->active = 0;
}
