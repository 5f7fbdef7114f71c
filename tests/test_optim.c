/* test_optim.c - LR schedules at their turning points, global-norm clipping, and AdamW
 * over the tensor table (weight decay on matrices, none on norms) against hand formulas.
 */
#include <math.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_config.h"
#include "mk_model.h"
#include "mk_optim.h"
#include "tap.h"

static void test_schedules(void)
{
    mk_config c;
    mk_config_defaults(&c);
    mk_config_set(&c, "train.lr=1.0", "t");
    mk_config_set(&c, "train.min_lr_ratio=0.1", "t");
    mk_config_set(&c, "train.warmup=10", "t");
    mk_config_set(&c, "train.steps=110", "t");
    mk_config_set(&c, "train.lr_schedule=cosine", "t");
    tap_close(mk_lr_at(&c, 0), 0.1, 0, 1e-15, "warmup step 0: lr/10");
    tap_close(mk_lr_at(&c, 9), 1.0, 0, 1e-15, "warmup ends at the peak");
    tap_close(mk_lr_at(&c, 10), 1.0, 0, 1e-15, "cosine starts at the peak");
    tap_close(mk_lr_at(&c, 60), 0.55, 0, 1e-12, "cosine half way: (1 + 0.1) / 2");
    tap_close(mk_lr_at(&c, 110), 0.1, 0, 1e-12, "cosine ends at min_lr_ratio * lr");
    mk_config_set(&c, "train.lr_schedule=wsd", "t");
    mk_config_set(&c, "train.decay_frac=0.2", "t"); /* last 22 steps decay */
    tap_close(mk_lr_at(&c, 87), 1.0, 0, 1e-15, "wsd stable before the decay");
    tap_close(mk_lr_at(&c, 88), 1.0 - 0.9 / 22, 0, 1e-12, "wsd first decay step");
    tap_close(mk_lr_at(&c, 109), 0.1, 0, 1e-12, "wsd last step reaches min");
    mk_config_set(&c, "train.lr_schedule=constant", "t");
    tap_close(mk_lr_at(&c, 100), 1.0, 0, 1e-15, "constant after warmup");
}

static void test_adamw_and_clip(void)
{
    mk_config c;
    mk_config_defaults(&c);
    const char *sets[] = { "model.vocab=11", "model.d_model=4", "model.layers=1", "model.heads=1",
                           "model.experts=2", "model.topk=1", "model.ffn=3", "model.seq_len=2",
                           "train.micro_batch=1", "train.grad_clip=1.0", "train.weight_decay=0.5",
                           "train.beta1=0.9", "train.beta2=0.99", "train.eps=1e-8" };
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) mk_config_set(&c, sets[i], "t");
    mk_backend *be;
    mk_model *m;
    if (mk_backend_cpu_create(1, &be) || mk_model_create(&c, be, &m) || mk_model_init(m, 1)) {
        tap_ok(0, "model setup");
        return;
    }
    const size_t n = mk_model_param_count(m);
    mk_real *p = mk_model_params(m), *g = mk_model_grads(m);
    for (size_t i = 0; i < n; i++) {
        p[i] = 0.5;
        g[i] = 3.0; /* norm 3 sqrt(n): clipped to 1 */
    }
    double gnorm;
    mk_grad_norm(m, &gnorm);
    tap_close(gnorm, 3.0 * sqrt((double)n), 1e-6, 0, "grad norm over every tensor");
    mk_optim_step(m, 1, 0.01, gnorm);
    /* Step 1: mhat = g', vhat = g'^2, so the Adam term is ~sign(g) = 1 whatever the clip. */
    size_t qkv, norm;
    mk_model_find(m, "layers.0.qkv", &qkv);
    mk_model_find(m, "layers.0.attn_norm", &norm);
    const mk_tensor *tq = mk_model_tensor(m, qkv), *tn = mk_model_tensor(m, norm);
    double gc = 3.0 / gnorm; /* clipped gradient */
    double adam = gc / (gc + 1e-8);
    tap_close(p[tq->offset], 0.5 - 0.01 * (adam + 0.5 * 0.5), 1e-6, 0, "AdamW step 1 with decay on qkv");
    tap_close(p[tn->offset], 0.5 - 0.01 * adam, 1e-6, 0, "AdamW step 1 without decay on a norm");
    /* Clipping happens inside the update: the first moment saw the clipped gradient,
     * and the stored gradient keeps its value. */
    tap_close(mk_model_adam_m(m)[tn->offset], 0.1 * gc, 1e-6, 0, "AdamW saw the gradient clipped to norm 1");
    tap_close(mk_model_grads(m)[0], 3.0, 0, 0, "the stored gradient is left unclipped");
    /* Step 2 with the same clipped gradient: bias-corrected moments equal g again. */
    for (size_t i = 0; i < n; i++) g[i] = (mk_real)gc;
    double p1 = p[tn->offset];
    mk_optim_step(m, 2, 0.01, 1.0);
    double m2 = 0.9 * (0.1 * gc) + 0.1 * gc, v2 = 0.99 * (0.01 * gc * gc) + 0.01 * gc * gc;
    double mh = m2 / (1 - 0.81), vh = v2 / (1 - 0.9801);
    tap_close(p[tn->offset], p1 - 0.01 * mh / (sqrt(vh) + 1e-8), 1e-6, 0, "AdamW step 2 bias correction");
    tap_ok(mk_optim_step(m, 3, 0.01, NAN) == 6, "a NaN gradient norm stops the update (exit status 6)");
    mk_model_destroy(&m);
    mk_backend_destroy(&be);
}

int main(void)
{
    test_schedules();
    test_adamw_and_clip();
    return tap_done();
}
