/* Preemption signals: SIGTERM / SIGUSR1 set a flag that long commands poll at
 * their step boundaries (ml_signal_agree, or a vote riding on a reduction of
 * their own), so every rank stops at the same point, writes its share of a
 * checkpoint and returns ML_ERR_INTERRUPTED. And the death of the launcher:
 * a rank started by mpiexec dies with it (ml_signal_die_with_parent). */
#include "mergelens/core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

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

/* A rank adds 0 (no signal), 1 (SIGUSR1) or nranks + 1 (SIGTERM). At most
 * nranks ranks vote, so a sum without any SIGTERM is at most nranks and one
 * SIGTERM alone makes it exceed nranks, whatever the others voted. With
 * non-negative addends a rounded sum is never below its largest addend, so a
 * float sum decodes right too while nranks + 1 <= 2^24 (exact integers). */
double ml_signal_vote(int sig, int nranks) {
    return sig == SIGTERM ? (double)nranks + 1.0 : sig == SIGUSR1 ? 1.0 : 0.0;
}

int ml_signal_tally(double sum, int nranks) {
    return sum > (double)nranks ? SIGTERM : sum > 0 ? SIGUSR1 : 0;
}

int ml_signal_agree(MPI_Comm comm, int *agreed_signal) {
    int size = 1;
    *agreed_signal = 0;
    ML_CHECK_MPI(MPI_Comm_size(comm, &size));
    double sum = ml_signal_vote(ml_signal_pending(), size);
    ML_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_DOUBLE, MPI_SUM, comm));
    *agreed_signal = ml_signal_tally(sum, size);
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

/* ---- the launcher's death ------------------------------------------------ */
/* Noted when the program starts, before MPI_Init (which may fork helpers and
 * set variables of its own): the parent, and whether a launcher started this
 * process as a rank (the variables Open MPI's mpirun/prterun, PMIx and PMI
 * launchers such as srun and Hydra put in each rank's environment). */
static pid_t ml_start_parent = 0;
static int ml_start_launched = 0;

#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor)) static void ml_signal_note_start(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    ml_start_parent = getppid();
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) ml_start_launched = 1;
}
#endif

int ml_signal_die_with_parent(void) {
#ifdef __linux__
    if (!ml_start_launched || ml_start_parent == 0) return ML_OK; /* no launcher: nohup and & keep working */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return ML_FAIL(ML_ERR_INTERNAL, "prctl(PR_SET_PDEATHSIG): %s: this rank would outlive its launcher",
                       strerror(errno));
    /* the launcher died before prctl (this rank was reparented): die as it would have made us */
    if (getppid() != ml_start_parent) raise(SIGKILL);
#endif
    return ML_OK;
}
