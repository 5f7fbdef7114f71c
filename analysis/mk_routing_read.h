/* mk_routing_read.h - read a routing log (routing.h5, docs/routing-log-format.md) into memory,
 * also while moe-train is still writing it (SWMR read; /step is the commit record). */
#ifndef MK_ROUTING_READ_H
#define MK_ROUTING_READ_H

#include <stdint.h>

/* The committed rows of one series (training rows, or evaluation rows under /eval). */
typedef struct {
    int64_t rows;    /* S = len(/step) (or len(/eval/step)) */
    int64_t *step;   /* [S] */
    int64_t *counts; /* [S, L, Dm, E] */
    int64_t *tokens; /* [S, Dm] */
    double *lbl;     /* [S, L] */
    double *maxvio;  /* [S, L] */
    double *loss;    /* training: [S]; eval: [S, Dm] */
} mk_rl_series;

typedef struct {
    char *path;
    int layers, experts, topk, ndomains;
    char **domains;    /* [Dm] */
    mk_rl_series train, eval;
    int swmr;          /* 1 when opened with SWMR read (file possibly still being written) */
} mk_rl;

/* Read the log at path. Errors (one line naming the file): MK_ERR_INPUT for a missing,
 * unreadable, truncated or empty (no committed row) log or an unknown format version;
 * MK_ERR_NOMEM. On error *out is left freed. */
int mk_rl_read(const char *path, mk_rl *out);
void mk_rl_free(mk_rl *rl);

/* Read the string attribute name of group /config of the checkpoint named by
 * run_dir/ckpt/latest into buf; returns 1 if found, 0 otherwise (never an error). */
int mk_rl_ckpt_config(const char *run_dir, const char *name, char *buf, int size);

#endif
