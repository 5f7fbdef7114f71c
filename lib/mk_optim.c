/* mk_optim.c - LR schedules, gradient clipping and AdamW over the model's tensor table. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_optim.h"

#include <math.h>

#include "mk_error.h"

double mk_lr_at(const mk_config *cfg, long step)
{
    const double lr = cfg->train.lr, min = lr * cfg->train.min_lr_ratio;
    const long warmup = cfg->train.warmup, steps = cfg->train.steps;
    if (step < warmup) return lr * (double)(step + 1) / (double)warmup;
    switch (cfg->train.lr_schedule) {
    case MK_LR_CONSTANT:
        return lr;
    case MK_LR_COSINE: {
        if (steps <= warmup) return lr;
        double p = (double)(step - warmup) / (double)(steps - warmup);
        if (p > 1) p = 1;
        return min + (lr - min) * 0.5 * (1.0 + cos(3.14159265358979323846 * p));
    }
    case MK_LR_WSD: {
        long decay = (long)ceil(cfg->train.decay_frac * (double)steps);
        long start = steps - decay;
        if (step < start || decay <= 0) return lr;
        double p = (double)(step - start + 1) / (double)decay;
        if (p > 1) p = 1;
        return lr + (min - lr) * p;
    }
    }
    return lr;
}

int mk_grad_norm(mk_model *m, double *norm)
{
    mk_backend *be = mk_model_backend(m);
    double ss = 0;
    MK_CHECK(be->ops->sumsq(be, mk_model_grads(m), mk_model_param_count(m), &ss));
    *norm = sqrt(ss);
    return MK_OK;
}

int mk_optim_step(mk_model *m, long t, double lr, double gnorm)
{
    const mk_config *cfg = mk_model_config(m);
    mk_backend *be = mk_model_backend(m);
    const mk_backend_ops *o = be->ops;
    mk_real *p = mk_model_params(m), *g = mk_model_grads(m), *mm = mk_model_adam_m(m),
            *vv = mk_model_adam_v(m);
    if (!isfinite(gnorm))
        return MK_FAIL(MK_ERR_NUMERIC, "step %ld: gradient norm is %g; stopping before the update", t, gnorm);
    /* Clipping scales the gradient inside the update (one pass over memory less); the
     * stored gradient keeps its unclipped values. */
    mk_real gscale = 1;
    if (cfg->train.grad_clip > 0 && gnorm > cfg->train.grad_clip)
        gscale = (mk_real)(cfg->train.grad_clip / gnorm);
    /* One call per run of neighbouring tensors with the same weight decay: the update is
     * element-wise, so the runs change nothing but the number of launches (about half of
     * one per tensor: norms break the runs). */
    const size_t nt = mk_model_tensor_count(m);
    for (size_t i = 0; i < nt;) {
        const mk_tensor *first = mk_model_tensor(m, i);
        size_t end = first->offset + first->numel;
        size_t j = i + 1;
        for (; j < nt; j++) {
            const mk_tensor *nx = mk_model_tensor(m, j);
            if (nx->decay != first->decay || nx->offset != end) break;
            end += nx->numel;
        }
        double wd = first->decay ? cfg->train.weight_decay : 0.0;
        MK_CHECK(o->adamw(be, p + first->offset, g + first->offset, mm + first->offset,
                          vv + first->offset, end - first->offset, gscale, lr, cfg->train.beta1,
                          cfg->train.beta2, cfg->train.eps, wd, t));
        i = j;
    }
    return MK_OK;
}
