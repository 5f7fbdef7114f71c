/* mk_error.c - reporting for the error convention of mk_error.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* The rank as the launcher exported it (mpirun, srun with PMIx or PMI), so every error line
 * of a multi-rank job names its rank without the reporter holding any state. */
static int launcher_rank(void)
{
    static const char *const vars[] = { "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID" };
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return -1;
}

static int launcher_size(void)
{
    static const char *const vars[] = { "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS" };
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 1;
}

int mk_error(int code, const char *file, int line, const char *func, const char *fmt, ...)
{
    char raw[1024], msg[4 * sizeof raw];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    /* One line whatever the message quotes: a value or file name holding a newline (or any
     * control character) is printed escaped, so it can neither split the line nor forge
     * another "moekit: error:" line. */
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        if (*p >= 0x20 && *p != 0x7f) msg[w++] = (char)*p;
        else if (*p == '\n') { msg[w++] = '\\'; msg[w++] = 'n'; }
        else if (*p == '\t') { msg[w++] = '\\'; msg[w++] = 't'; }
        else w += (size_t)snprintf(msg + w, sizeof msg - w, "\\x%02x", *p);
    }
    msg[w] = '\0';
    char who[32] = "";
    int rank = launcher_rank();
    if (rank >= 0 && launcher_size() > 1) snprintf(who, sizeof who, "rank %d: ", rank);
    /* One write so lines from several ranks do not interleave mid-line. */
#ifdef MK_DEBUG
    fprintf(stderr, "moekit: error: %s%s [%s at %s:%d]\n", who, msg, func, file, line);
#else
    (void)file; (void)line; (void)func;
    fprintf(stderr, "moekit: error: %s%s\n", who, msg);
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
