/* mk_train.h - the training loop: micro-steps, gradient accumulation, LBL scopes,
 * clipping, AdamW, logging. moe-train is a thin command line over mk_train_run.
 */
#ifndef MK_TRAIN_H
#define MK_TRAIN_H

#include <stdio.h>

#include "mk_config.h"

typedef struct mk_train_opts {
    const char *data_path;  /* text file; NULL = cfg->data.path */
    FILE *out;              /* progress lines; NULL = silent (only rank 0 should pass one) */
    const struct mk_comm *world; /* the data-parallel ranks; NULL = this process alone */
} mk_train_opts;

typedef struct mk_train_result {
    long steps;             /* optimizer steps taken */
    double first_loss;      /* mean CE of step 1 */
    double final_loss;      /* mean CE of the last step */
    double tokens_per_s;    /* training tokens per second over the whole run */
    double seconds;
} mk_train_result;

/* Train cfg (validated here) for train.steps optimizer steps. Writes run.dir/log.tsv:
 * one row per step with full-precision values (step, loss, lbl, maxvio, gnorm, lr), no
 * timings, so two runs can be compared byte for byte. */
int mk_train_run(const mk_config *cfg, const mk_train_opts *opts, mk_train_result *res);

#endif
