/* tap.h - Test Anything Protocol output for moekit's C tests.
 *
 * Each test program prints "ok N - what" / "not ok N - what" lines and a plan, which
 * automake's tap-driver.sh turns into PASS/FAIL lines. A failed check prints the values
 * that disagreed as a TAP diagnostic ("# ..."), so a failure says why without a debugger.
 *
 *   tap_ok(cond, "name %d", i);
 *   tap_close(x, y, rtol, atol, "name");   // |x - y| <= atol + rtol * |y|
 *   return tap_done();                     // prints the plan; exit 1 if anything failed
 *   tap_skip_all("no GPU");                // "1..0 # SKIP no GPU", exit 0
 *
 * State lives in one struct per test program (static inside this header): a test program is
 * one translation unit and one process.
 */
#ifndef MK_TAP_H
#define MK_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static struct { int run, failed; } tap_state_;

static inline int tap_vok(int cond, const char *fmt, va_list ap)
{
    tap_state_.run++;
    if (!cond) tap_state_.failed++;
    printf("%sok %d - ", cond ? "" : "not ", tap_state_.run);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

static inline int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tap_vok(cond, fmt, ap);
    va_end(ap);
    return r;
}

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* Passes when |got - want| <= atol + rtol * |want| and both are finite. */
static inline int tap_close(double got, double want, double rtol, double atol, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static inline int tap_close(double got, double want, double rtol, double atol, const char *fmt, ...)
{
    int cond = isfinite(got) && isfinite(want) && fabs(got - want) <= atol + rtol * fabs(want);
    va_list ap;
    va_start(ap, fmt);
    tap_vok(cond, fmt, ap);
    va_end(ap);
    if (!cond) tap_diag("got %.10g, want %.10g (diff %.3g, rtol %.1g, atol %.1g)", got, want,
                        fabs(got - want), rtol, atol);
    return cond;
}

static inline void tap_skip_all(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    exit(0);
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_state_.run);
    if (tap_state_.failed) printf("# %d of %d checks failed\n", tap_state_.failed, tap_state_.run);
    return tap_state_.failed ? 1 : 0;
}

#endif
