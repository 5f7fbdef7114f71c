/* mk_error.h - the one error convention of moekit.
 *
 * Every function that can fail returns an int status: MK_OK (0) on success, one of the
 * positive MK_ERR_* codes otherwise. The place that detects a failure reports it once,
 * through MK_FAIL(), which prints a single line
 *     moekit: error: <message>
 * to stderr and evaluates to the code. Callers propagate with MK_CHECK(), which adds a
 * traceback line ("  from func (file:line)") in --enable-debug builds only, so users see
 * one clear line and developers see where it came from.
 *
 * Exit statuses of the programs are the codes themselves (documented in moe-train(1)).
 */
#ifndef MK_ERROR_H
#define MK_ERROR_H

enum {
    MK_OK = 0,
    MK_ERR_USAGE = 2,    /* bad command line, schedule key or value */
    MK_ERR_INPUT = 3,    /* bad or unreadable input file */
    MK_ERR_IO = 4,       /* write, fsync or rename failed */
    MK_ERR_NOMEM = 5,    /* allocation failed */
    MK_ERR_NUMERIC = 6,  /* NaN or Inf in loss or gradients */
    MK_ERR_INTERNAL = 7, /* a moekit bug: a broken invariant */
    MK_ERR_COMM = 8      /* a collective or another rank failed */
};

/* Print one error line and return code. fmt is printf-style. Never fails. */
int mk_error(int code, const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Print a traceback line in debug builds; return code unchanged. */
int mk_trace(int code, const char *file, int line, const char *func);

/* Short name of a status code, for logs ("usage", "input", ...). */
const char *mk_status_name(int code);

#define MK_FAIL(code, ...) mk_error((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define MK_CHECK(expr)                                                  \
    do {                                                                \
        int mk_rc_ = (expr);                                            \
        if (mk_rc_ != MK_OK)                                            \
            return mk_trace(mk_rc_, __FILE__, __LINE__, __func__);      \
    } while (0)

/* For cleanup paths: run expr, on failure jump to label with rc set. */
#define MK_CHECK_GOTO(rc, expr, label)                                  \
    do {                                                                \
        (rc) = (expr);                                                  \
        if ((rc) != MK_OK) {                                            \
            mk_trace((rc), __FILE__, __LINE__, __func__);               \
            goto label;                                                 \
        }                                                               \
    } while (0)

#endif
