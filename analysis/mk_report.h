/* mk_report.h - one run's report: the window's summed counts and every metric of
 * docs/report-metrics.md, computed by mk_report_compute() from a routing log. */
#ifndef MK_REPORT_H
#define MK_REPORT_H

#include <stdint.h>

#include "mk_routing_read.h"

enum { MK_SRC_AUTO = 0, MK_SRC_EVAL = 1, MK_SRC_TRAIN = 2 };

typedef struct {
    int kind;            /* 0 = all rows, 1 = last:N, 2 = steps:A-B */
    int64_t n, a, b;
} mk_window;

typedef struct {
    const char *name;    /* the run's name (its directory) */
    const char *dir;
    mk_rl log;
    char lbl_mode[64];   /* from ckpt/latest's /config, "" if unknown */
    int src;             /* MK_SRC_EVAL or MK_SRC_TRAIN: the rows the metrics use */
    int L, E, K, nd;     /* nd: selected domains */
    int *dom;            /* [nd] indices into log.domains */
    int64_t rows, step_first, step_last; /* window rows of the source series */
    int64_t *counts;     /* [L, nd, E] summed over the window */
    int64_t *tokens;     /* [nd] summed over the window */
    int64_t *load;       /* [L, E] summed over the selected domains */
    double *share;       /* [L, nd, E] counts / tokens */
    double *top1, *topk, *entropy; /* [L, nd]; entropy in bits of p_d = counts/sum */
    double *js;          /* [L, nd, nd] */
    double *js_mean;     /* [L]: mean over domain pairs (NaN with one domain) */
    double *maxvio_global; /* [L] */
    int *dead;           /* [L]: experts with load 0 */
    double *lbl_win, *maxvio_win; /* [L]: mean over the source's window rows of /lbl, /maxvio */
    double mean_top1, mean_topk, mean_js, mean_entropy, mean_maxvio_global, mean_maxvio_batch;
} mk_run_report;

/* Select domains (names comma-separated, NULL = all), apply the window and compute the
 * metrics. MK_ERR_INPUT for an unknown domain or a window without rows; MK_ERR_NOMEM. */
int mk_report_compute(mk_run_report *r, int source, const mk_window *w, const char *domains);
void mk_report_free(mk_run_report *r);

/* The series the report uses (eval or train). */
const mk_rl_series *mk_report_series(const mk_run_report *r);

#endif
