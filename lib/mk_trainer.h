/* mk_trainer.h - one optimizer step across ranks: the model, its LBL scope and the process
 * groups, without the data source or the log (mk_train.c adds those).
 *
 * Each rank brings its G micro-batches of B sequences. mk_trainer_grads gives every rank
 * the gradient of the global batch's loss
 *   mean CE over all target tokens of all ranks
 *   + mean over micro-steps and ranks of (lbl.coeff LBL + lbl.micro_coeff LBL_micro + z-loss)
 * summed over the ranks that share each parameter; mk_trainer_update clips and steps.
 * With lbl.mode = global and one micro-step per rank this equals one rank holding the
 * whole batch in micro mode: f is global and the per-rank P terms average to the global P.
 */
#ifndef MK_TRAINER_H
#define MK_TRAINER_H

#include <stdint.h>

#include "mk_comm.h"
#include "mk_config.h"
#include "mk_model.h"

typedef struct mk_step_stats {
    double loss;            /* mean CE over the global batch */
    double lbl;             /* mean over layers of the LBL (mean over micro-steps and ranks) */
    double maxvio;          /* mean over layers of MaxVio of the global batch's counts */
    double gnorm, lr;
    long targets;           /* target tokens of the global batch */
    const double *lbl_layers;   /* [L] */
    const int64_t *counts;      /* [L, E] global batch */
    const int64_t *domain_counts;   /* [L, domains, E] tokens of each domain that chose each
                                     * expert among their top-k, global batch */
    const int64_t *domain_tokens;   /* [domains] */
} mk_step_stats;

typedef struct mk_trainer mk_trainer;

/* world may be NULL (one process). Creates the CPU backend, the expert-parallel groups of
 * parallel.ep consecutive ranks, and the model initialised from train.seed. */
int mk_trainer_create(const mk_config *cfg, const mk_comm *world, mk_trainer **out);
void mk_trainer_free(mk_trainer **tr);

mk_model *mk_trainer_model(mk_trainer *tr);
const mk_config *mk_trainer_config(const mk_trainer *tr);
const mk_comm *mk_trainer_world(const mk_trainer *tr);
const mk_comm *mk_trainer_ep(const mk_trainer *tr);     /* NULL when parallel.ep = 1 */
int mk_trainer_rank(const mk_trainer *tr);
/* The GPU this rank computes on (its local rank modulo the visible GPUs), -1 on the CPU. */
int mk_trainer_device(const mk_trainer *tr);
/* How gradients travel between ranks: "self", "mpi" or "nccl". */
const char *mk_trainer_transport(const mk_trainer *tr);
int mk_trainer_ranks(const mk_trainer *tr);

/* Routing statistics per domain: samples carry a domain id 0..ndomains-1 (default 1). */
int mk_trainer_set_domains(mk_trainer *tr, int ndomains);

/* Zero the gradients and compute them for this rank's micro-batches of optimizer step
 * `step` (0-based; named in errors): tokens and targets are host [G, B, T] (a target < 0 is
 * padding), domain [G, B] the domain of each sequence (NULL = domain 0). Collective over the
 * world. MK_ERR_NUMERIC, before any collective that would spread it, when this rank's
 * router logits or loss hold a NaN or Inf; the message names the step and the tensor (and
 * mk_error the rank). A gradient is not checked here (a pass over every gradient each
 * step): mk_trainer_update finds it in the norm. The arrays must stay as they are until
 * mk_trainer_update has run. */
int mk_trainer_grads(mk_trainer *tr, long step, const int32_t *tokens, const int32_t *targets,
                     const int32_t *domain, mk_step_stats *st);

/* Clip by the global gradient norm and take AdamW step `step` (0-based). Fills st->gnorm
 * and st->lr. MK_ERR_NUMERIC for a non-finite loss or norm, before the weights change. A
 * norm that is not finite names the tensor: with one rank from its gradient; with more,
 * every rank runs the step's forward and backward again on the batch mk_trainer_grads was
 * given, this time checking its gradient before the sums, so that the rank whose gradient
 * held the NaN or Inf names itself (the same bits come back: the step is deterministic). */
int mk_trainer_update(mk_trainer *tr, long step, mk_step_stats *st);

#endif
