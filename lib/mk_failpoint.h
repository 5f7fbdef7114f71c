/* mk_failpoint.h - a test-only fault hook: make one rank fail in one phase of one step.
 *
 * The failure tests (tests/failure, rows T9, T10 and T12 of docs/reliability.md) need a
 * rank to die, crash, hang or get a signal at a chosen place of a chosen step. The
 * environment chooses it; unset, every hook is one atomic load and returns MK_OK.
 *
 *   MOEKIT_TEST_FAIL_RANK=R    world rank that fails
 *   MOEKIT_TEST_FAIL_STEP=S    during step S (1-based, as in log.tsv; a checkpoint written
 *                              after step S belongs to step S; 0 = any step)
 *   MOEKIT_TEST_FAIL_PHASE=P   load (data load, the default), forward, allreduce (gradient
 *                              all-reduce), alltoall (expert all-to-all, parallel.ep > 1),
 *                              ckpt (checkpoint write)
 *   MOEKIT_TEST_FAIL_MODE=M    error (the default: an MK_ERR_INPUT error naming rank, step
 *                              and phase), kill (SIGKILL), segv (SIGSEGV), stop (SIGSTOP: a
 *                              hung rank), usr1 or term (send itself SIGUSR1 or SIGTERM and
 *                              carry on)
 *
 * It fires once per process, at the first hook of phase P in step S, and first prints
 * "moekit: test hook: rank R ... at T" (T: wall-clock seconds) for the tests to time from. The deeper layers do
 * not know the step, so the training loop tells this module where it is: that (rank, step)
 * pair and the settings read once from the environment are the only mutable global state
 * of lib/ (atomics, so the OpenMP threads and the watchdog may read it).
 */
#ifndef MK_FAILPOINT_H
#define MK_FAILPOINT_H

/* The training loop: this process is world rank `rank`, now in step `step` (1-based). */
void mk_failpoint_at(int rank, long step);

/* A hook in phase `phase` ("load", "forward", ...): MK_OK, or the injected failure. */
int mk_failpoint(const char *phase);

#endif
