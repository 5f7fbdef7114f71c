/* mk_failpoint.c - the test-only fault hook (see mk_failpoint.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_failpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_error.h"

static struct {
    pthread_once_t once;
    int armed;                 /* the environment asks for a failure */
    int rank;
    long step;
    char phase[16], mode[8];
    atomic_int at_rank;
    atomic_long at_step;
    atomic_int fired;
} fp = { .once = PTHREAD_ONCE_INIT, .at_rank = -1 };

static void read_env(void)
{
    const char *r = getenv("MOEKIT_TEST_FAIL_RANK"), *s = getenv("MOEKIT_TEST_FAIL_STEP");
    const char *p = getenv("MOEKIT_TEST_FAIL_PHASE"), *m = getenv("MOEKIT_TEST_FAIL_MODE");
    if (!r || !s) return;
    fp.rank = atoi(r);
    fp.step = atol(s);
    snprintf(fp.phase, sizeof fp.phase, "%s", p && *p ? p : "load");
    snprintf(fp.mode, sizeof fp.mode, "%s", m && *m ? m : "error");
    fp.armed = 1;
}

void mk_failpoint_at(int rank, long step)
{
    atomic_store(&fp.at_rank, rank);
    atomic_store(&fp.at_step, step);
}

int mk_failpoint(const char *phase)
{
    pthread_once(&fp.once, read_env);
    if (!fp.armed || atomic_load(&fp.at_rank) != fp.rank || (fp.step && atomic_load(&fp.at_step) != fp.step) ||
        strcmp(phase, fp.phase) != 0 || atomic_exchange(&fp.fired, 1))
        return MK_OK;
    /* The tests time what follows from this line's wall-clock time. */
    static const char *const modes[][2] = { { "kill", "KILL" }, { "segv", "SEGV" }, { "stop", "STOP" },
                                            { "usr1", "USR1" }, { "term", "TERM" } };
    static const int sigs[] = { SIGKILL, SIGSEGV, SIGSTOP, SIGUSR1, SIGTERM };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const double at = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        if (strcmp(fp.mode, modes[i][0]) != 0) continue;
        fprintf(stderr, "moekit: test hook: rank %d sends itself SIG%s in %s of step %ld at %.3f\n", fp.rank,
                modes[i][1], phase, atomic_load(&fp.at_step), at);
        fflush(stderr);
        raise(sigs[i]);
        return MK_OK;
    }
    fprintf(stderr, "moekit: test hook: rank %d fails in %s of step %ld at %.3f\n", fp.rank, phase,
            atomic_load(&fp.at_step), at);
    return MK_FAIL(MK_ERR_INPUT, "step %ld, %s: injected failure (MOEKIT_TEST_FAIL_RANK)",
                   atomic_load(&fp.at_step), phase);
}
