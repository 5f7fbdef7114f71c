/* mk_optim.h - learning-rate schedules, global-norm clipping and the AdamW step.
 *
 * The LR at step s (0-based optimizer step) for train.lr_schedule:
 *   warmup       s < warmup: lr * (s + 1) / warmup          (all schedules)
 *   constant     lr
 *   cosine       min + (lr - min) * (1 + cos(pi * p)) / 2,  p = (s - warmup) / (steps - warmup)
 *   wsd          lr until the last decay_frac of the steps, then linear down to min
 * with min = lr * min_lr_ratio.
 */
#ifndef MK_OPTIM_H
#define MK_OPTIM_H

#include "mk_config.h"
#include "mk_model.h"

double mk_lr_at(const mk_config *cfg, long step);

/* Global L2 norm of the gradients (all tensors), computed in double. */
int mk_grad_norm(mk_model *m, double *norm);

/* One optimizer step t (1-based) at learning rate lr: clip the gradients to
 * train.grad_clip by global norm (when > 0; gnorm is the norm before clipping), then AdamW
 * with train.weight_decay on tensors that decay (not on norms). */
int mk_optim_step(mk_model *m, long t, double lr, double gnorm);

#endif
