/* routing_log_writer.c - writes a routing log whose values are a known function of the step,
 * for tests/test_routing_log_live.sh (tests/routing_log_reader.py holds the same function).
 *
 *   routing_log_writer PATH NSTEPS SLEEP_MS [RESUME]
 *
 * Without RESUME: a new log with steps 1..NSTEPS. With RESUME (a step, or "all"): continue
 * the log at PATH keeping the steps <= RESUME, then log the NSTEPS steps after the last kept
 * one. Shape: 3 layers, domains "code" and "math", 4 experts, top-2. Every even step also
 * gets an eval row. Sleeps SLEEP_MS between steps and prints "step N" after each append.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_error.h"
#include "mk_routing_log.h"

enum { L = 3, DM = 2, E = 4, K = 2 };

/* The values of step s; eval = 1 shifts them, so eval rows differ from training rows. */
static void values(int64_t s, int eval, int64_t *counts, int64_t *tokens, double *lbl,
                   double *maxvio, double *loss)
{
    for (int l = 0; l < L; l++)
        for (int d = 0; d < DM; d++)
            for (int e = 0; e < E; e++)
                counts[(l * DM + d) * E + e] =
                    (INT64_C(1) << 40) + s * 1000000 + l * 10000 + d * 100 + e + (eval ? 7 : 0);
    for (int d = 0; d < DM; d++) tokens[d] = (INT64_C(1) << 33) + s * 1000 + d + (eval ? 3 : 0);
    for (int l = 0; l < L; l++) {
        lbl[l] = 1.0 + (double)s / 1024.0 + l / 8.0 + (eval ? 0.5 : 0.0);
        maxvio[l] = (double)s * 0.25 + l + (eval ? 0.125 : 0.0);
    }
    if (eval)
        for (int d = 0; d < DM; d++) loss[d] = 5.0 + 0.5 * d - (double)s / 128.0;
    else
        loss[0] = 10.0 - (double)s / 64.0;
}

static int parse_i64(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end || x < 0) return 0;
    *v = x;
    return 1;
}

int main(int argc, char **argv)
{
    int64_t nsteps, sleep_ms, resume = MK_ROUTING_LOG_CREATE;
    if ((argc != 4 && argc != 5) || !parse_i64(argv[2], &nsteps) || !parse_i64(argv[3], &sleep_ms) ||
        (argc == 5 && strcmp(argv[4], "all") != 0 && !parse_i64(argv[4], &resume))) {
        fprintf(stderr, "usage: routing_log_writer PATH NSTEPS SLEEP_MS [RESUME_STEP|all]\n");
        return MK_ERR_USAGE;
    }
    if (argc == 5 && strcmp(argv[4], "all") == 0) resume = MK_ROUTING_LOG_KEEP_ALL;
    static const char *const domains[DM] = { "code", "math" };
    mk_routing_log *log;
    int rc = mk_routing_log_open(argv[1], L, E, K, DM, domains, resume, &log);
    if (rc != MK_OK) return rc;
    int64_t counts[L * DM * E], tokens[DM];
    double lbl[L], maxvio[L], loss[DM];
    /* Rows of the old log that were kept: continue after the last one. */
    int64_t first = mk_routing_log_steps(log) + 1;
    struct timespec pause = { (time_t)(sleep_ms / 1000), (long)(sleep_ms % 1000) * 1000000L };
    for (int64_t s = first; s < first + nsteps && rc == MK_OK; s++) {
        values(s, 0, counts, tokens, lbl, maxvio, loss);
        rc = mk_routing_log_append(log, s, counts, tokens, lbl, maxvio, loss[0]);
        if (rc == MK_OK && s % 2 == 0) {
            values(s, 1, counts, tokens, lbl, maxvio, loss);
            rc = mk_routing_log_append_eval(log, s, counts, tokens, lbl, maxvio, loss);
        }
        if (rc == MK_OK) {
            printf("step %lld\n", (long long)s);
            fflush(stdout);
            if (sleep_ms > 0) nanosleep(&pause, NULL);
        }
    }
    int rc2 = mk_routing_log_close(&log);
    return rc != MK_OK ? rc : rc2;
}
