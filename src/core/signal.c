/* Preemption signals: SIGTERM / SIGUSR1 set a flag that long commands poll at
 * their step boundaries (ml_signal_agree), so every rank stops at the same
 * point, writes its share of a checkpoint and returns ML_ERR_INTERRUPTED. */
#include "mergelens/core.h"

#include <string.h>

static volatile sig_atomic_t ml_caught_signal = 0;

static void ml_on_signal(int sig) {
    /* SIGTERM (the job ends) outranks SIGUSR1 (a warning before the limit) */
    if (ml_caught_signal != SIGTERM) ml_caught_signal = sig;
}

void ml_signals_install(ml_signal_guard *guard) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ml_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ml_caught_signal = 0;
    sigaction(SIGTERM, &sa, &guard->term);
    sigaction(SIGUSR1, &sa, &guard->usr1);
    guard->installed = 1;
}

void ml_signals_restore(ml_signal_guard *guard) {
    if (!guard || !guard->installed) return;
    sigaction(SIGTERM, &guard->term, NULL);
    sigaction(SIGUSR1, &guard->usr1, NULL);
    guard->installed = 0;
}

int ml_signal_pending(void) { return (int)ml_caught_signal; }

int ml_signal_agree(MPI_Comm comm, int *agreed_signal) {
    const int sig = ml_signal_pending();
    int flags[2] = {sig == SIGTERM, sig == SIGUSR1};
    *agreed_signal = 0;
    ML_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INT, MPI_MAX, comm));
    *agreed_signal = flags[0] ? SIGTERM : flags[1] ? SIGUSR1 : 0;
    return ML_OK;
}

const char *ml_signal_name(int sig) {
    static _Thread_local char other[32];
    if (sig == SIGTERM) return "SIGTERM";
    if (sig == SIGUSR1) return "SIGUSR1";
    snprintf(other, sizeof other, "signal %d", sig);
    return other;
}

void ml_signal_raise_at(MPI_Comm comm, int64_t step, int64_t raise_at) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (raise_at > 0 && step == raise_at && rank == size - 1) raise(SIGUSR1);
}
