/* mk_train.h - the training loop: micro-steps, gradient accumulation, LBL scopes,
 * clipping, AdamW, logging. moe-train is a thin command line over mk_train_run.
 */
#ifndef MK_TRAIN_H
#define MK_TRAIN_H

#include <signal.h>
#include <stdio.h>

#include "mk_config.h"

typedef struct mk_train_opts {
    const char *data_path;  /* text file; NULL = cfg->data.path */
    FILE *out;              /* progress lines; NULL = silent (only rank 0 should pass one) */
    const struct mk_comm *world; /* the data-parallel ranks; NULL = this process alone */
    const char *resume;     /* NULL: start fresh; "auto": newest verifying checkpoint of
                             * run.dir if any; else a checkpoint path */
    volatile sig_atomic_t *stop; /* set by a signal handler: checkpoint and stop (may be NULL) */
} mk_train_opts;

/* moe-train's exit status after a signal made it checkpoint and stop: the job script
 * should requeue (EX_TEMPFAIL of sysexits.h). */
#define MK_EXIT_REQUEUE 75

typedef struct mk_train_result {
    long steps;             /* optimizer steps taken */
    double first_loss;      /* mean CE of step 1 */
    double final_loss;      /* mean CE of the last step */
    double tokens_per_s;    /* training tokens per second over the whole run */
    double seconds;
    long first_step;        /* 0, or the step a resumed run started from */
    int stopped;            /* 1: a signal stopped the run after a checkpoint */
} mk_train_result;

/* Train cfg (validated here) for train.steps optimizer steps. Writes run.dir/log.tsv:
 * one row per step with full-precision values (step, loss, lbl, maxvio, gnorm, lr), no
 * timings, so two runs can be compared byte for byte. */
int mk_train_run(const mk_config *cfg, const mk_train_opts *opts, mk_train_result *res);

#endif
