/* fixture.h - what the fault loops (alloc_loop, h5_loop) start from: a trainer of a small
 * model (schedules/tiny.ini made smaller) on one rank, without MPI. */
#ifndef MK_TEST_FIXTURE_H
#define MK_TEST_FIXTURE_H

#include <stdio.h>

#include "mk_comm.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_trainer.h"

/* c is the caller's and must outlive the trainer, which keeps a pointer to it. */
static inline int fixture_trainer(const char *srcdir, mk_config *c, mk_comm **self, mk_trainer **tr)
{
    char ini[4300];
    snprintf(ini, sizeof ini, "%s/schedules/tiny.ini", srcdir);
    mk_config_defaults(c);
    const char *sets[] = { "model.d_model=32", "model.ffn=32", "model.seq_len=32", "model.experts=4",
                           "train.threads=1", NULL };
    int rc = mk_config_load_ini(c, ini);
    for (int i = 0; rc == MK_OK && sets[i]; i++) rc = mk_config_set(c, sets[i], "test");
    if (rc == MK_OK) rc = mk_comm_self(self);
    if (rc == MK_OK) rc = mk_trainer_create(c, *self, tr);
    return rc;
}

#endif
