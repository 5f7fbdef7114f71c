/* mk_error.c - reporting for the error convention of mk_error.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_error.h"

#include <stdarg.h>
#include <stdio.h>

int mk_error(int code, const char *file, int line, const char *func, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One write so lines from several ranks do not interleave mid-line. */
#ifdef MK_DEBUG
    fprintf(stderr, "moekit: error: %s [%s at %s:%d]\n", msg, func, file, line);
#else
    (void)file; (void)line; (void)func;
    fprintf(stderr, "moekit: error: %s\n", msg);
#endif
    return code;
}

int mk_trace(int code, const char *file, int line, const char *func)
{
#ifdef MK_DEBUG
    fprintf(stderr, "  from %s (%s:%d)\n", func, file, line);
#else
    (void)file; (void)line; (void)func;
#endif
    return code;
}

const char *mk_status_name(int code)
{
    switch (code) {
    case MK_OK: return "ok";
    case MK_ERR_USAGE: return "usage";
    case MK_ERR_INPUT: return "input";
    case MK_ERR_IO: return "io";
    case MK_ERR_NOMEM: return "nomem";
    case MK_ERR_NUMERIC: return "numeric";
    case MK_ERR_INTERNAL: return "internal";
    case MK_ERR_COMM: return "comm";
    default: return "unknown";
    }
}
