/* test_gradcheck.c - finite-difference checks of the whole model's gradients (float64 build).
 *
 * For several model variants, the analytic gradient of
 *   L = sum_n CE_n / targets + lbl.coeff * sum_l LBL_l + zloss_coeff * sum_l mean lse^2
 * is compared with central differences on sampled elements of every tensor. A perturbation
 * that changes any token's top-k choice (a near tie) would make L jump, so such elements are
 * skipped and counted. Also: gradient accumulation over micro-steps equals one big batch,
 * and global-exact over 2 micro-steps equals micro over their concatenation.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "mk_model.h"
#include "mk_rng.h"
#include "tap.h"

typedef struct fixture {
    mk_config cfg;
    mk_backend *be;
    mk_model *m;
    mk_lbl *lbl;
    int32_t *tokens, *targets;
    int B, N;
} fixture;

static void setup(fixture *fx, const char *const *sets)
{
    memset(fx, 0, sizeof *fx);
    mk_config_defaults(&fx->cfg);
    const char *base[] = { "model.vocab=19", "model.d_model=8", "model.layers=2", "model.heads=2",
                           "model.experts=4", "model.topk=2", "model.ffn=6", "model.seq_len=5",
                           "train.micro_batch=3", "lbl.coeff=0.5", NULL };
    for (int i = 0; base[i]; i++)
        if (mk_config_set(&fx->cfg, base[i], "test")) exit(99);
    for (int i = 0; sets && sets[i]; i++)
        if (mk_config_set(&fx->cfg, sets[i], "test")) exit(99);
    if (mk_backend_cpu_create(1, &fx->be) || mk_model_create(&fx->cfg, fx->be, &fx->m) ||
        mk_model_init(fx->m, 7) ||
        mk_lbl_create(fx->cfg.lbl.mode, fx->cfg.model.layers, fx->cfg.model.experts,
                      fx->cfg.model.topk, &fx->lbl))
        exit(99);
    /* Larger weights than the 0.02 init so every path carries a visible gradient. */
    mk_real *p = mk_model_params(fx->m);
    mk_rng r = mk_rng_make(11, 0);
    for (size_t i = 0; i < mk_model_tensor_count(fx->m); i++) {
        const mk_tensor *t = mk_model_tensor(fx->m, i);
        for (size_t j = 0; j < t->numel; j++) {
            double w = 0.5 * mk_rng_normal(&r);
            if (t->ndim == 1) w = 1.0 + 0.3 * w; /* norms near 1 */
            p[t->offset + j] = w;
        }
    }
    fx->B = fx->cfg.train.micro_batch;
    fx->N = fx->B * fx->cfg.model.seq_len;
    fx->tokens = malloc(fx->N * sizeof *fx->tokens);
    fx->targets = malloc(fx->N * sizeof *fx->targets);
    for (int n = 0; n < fx->N; n++) {
        fx->tokens[n] = (int32_t)mk_rng_below(&r, fx->cfg.model.vocab);
        fx->targets[n] = n % 7 == 3 ? -1 : (int32_t)mk_rng_below(&r, fx->cfg.model.vocab);
    }
}

static void teardown(fixture *fx)
{
    free(fx->tokens);
    free(fx->targets);
    mk_lbl_destroy(&fx->lbl);
    mk_model_destroy(&fx->m);
    mk_backend_destroy(&fx->be);
}

/* The loss backward differentiates, and (optionally) every layer's top-k choices. */
static double loss_of(fixture *fx, int32_t *topk_out)
{
    mk_forward_stats st;
    mk_lbl_reset(fx->lbl);
    if (mk_model_forward(fx->m, fx->tokens, fx->targets, fx->B, fx->lbl, 1, &st)) exit(99);
    double loss = st.ce_sum / st.targets + fx->cfg.router.zloss_coeff * st.zloss;
    if (fx->cfg.lbl.mode != MK_LBL_NONE)
        for (int l = 0; l < fx->cfg.model.layers; l++) loss += fx->cfg.lbl.coeff * st.lbl[l];
    /* One micro-step: the micro f equals the scope's f, so the mix adds micro_coeff * LBL. */
    for (int l = 0; l < fx->cfg.model.layers; l++) loss += fx->cfg.lbl.micro_coeff * st.lbl[l];
    if (topk_out) {
        size_t per = (size_t)fx->N * fx->cfg.model.topk;
        for (int l = 0; l < fx->cfg.model.layers; l++)
            if (mk_model_topk_host(fx->m, l, topk_out + l * per)) exit(99);
    }
    return loss;
}

static void check_variant(const char *label, const char *const *sets)
{
    fixture fx;
    setup(&fx, sets);
    mk_forward_stats st;
    mk_model_zero_grad(fx.m);
    mk_lbl_reset(fx.lbl);
    if (mk_model_forward(fx.m, fx.tokens, fx.targets, fx.B, fx.lbl, 1, &st)) exit(99);
    if (mk_model_backward(fx.m, 1.0 / st.targets, 1.0)) exit(99);

    const size_t per = (size_t)fx.N * fx.cfg.model.topk * fx.cfg.model.layers;
    int32_t *topk0 = malloc(per * sizeof *topk0), *topk1 = malloc(per * sizeof *topk1);
    loss_of(&fx, topk0);
    mk_real *p = mk_model_params(fx.m);
    const mk_real *g = mk_model_grads(fx.m);
    const double eps = 1e-6;
    mk_rng r = mk_rng_make(5, 1);
    int skipped = 0;
    for (size_t i = 0; i < mk_model_tensor_count(fx.m); i++) {
        const mk_tensor *t = mk_model_tensor(fx.m, i);
        double worst = 0, gmax = 0;
        int checked = 0;
        for (int k = 0; k < 10; k++) {
            size_t j = t->offset + mk_rng_below(&r, t->numel);
            double w = p[j];
            p[j] = w + eps;
            double lp = loss_of(&fx, topk1);
            int tie = memcmp(topk0, topk1, per * sizeof *topk0) != 0;
            p[j] = w - eps;
            double lm = loss_of(&fx, topk1);
            tie |= memcmp(topk0, topk1, per * sizeof *topk0) != 0;
            p[j] = w;
            if (tie) {
                skipped++;
                continue;
            }
            double fd = (lp - lm) / (2 * eps);
            /* Central differences in float64 carry ~1e-10 absolute noise at eps 1e-6. */
            double err = fabs(fd - g[j]) / (1e-4 * fabs(g[j]) + 1e-8);
            if (err > worst) worst = err;
            if (err > 1) tap_diag("%s %s[%zu]: fd %.12g analytic %.12g", label, t->name, j - t->offset, fd, g[j]);
            if (fabs(g[j]) > gmax) gmax = fabs(g[j]);
            checked++;
        }
        tap_ok(checked > 0 && worst <= 1, "%s: d/d %s matches finite differences (%d elements, worst |fd - g| / (1e-4 |g| + 1e-8) = %.2e, max |g| %.2e)",
               label, t->name, checked, worst, gmax);
    }
    if (skipped) tap_diag("%s: %d elements skipped (near top-k tie)", label, skipped);
    free(topk0);
    free(topk1);
    teardown(&fx);
}

/* Gradients after forward/backward over micro-batches; sets pick the shape. */
static double *grads_after(const char *const *sets, int G, const int32_t *tok, const int32_t *tgt,
                           size_t *n_out)
{
    fixture fx;
    setup(&fx, sets);
    long targets = 0;
    const int total = fx.N * G;
    for (int n = 0; n < total; n++) targets += tgt[n] >= 0;
    mk_model_zero_grad(fx.m);
    mk_lbl_reset(fx.lbl);
    if (fx.cfg.lbl.mode == MK_LBL_GLOBAL_EXACT) {
        int64_t *c = calloc((size_t)fx.cfg.model.layers * fx.cfg.model.experts, sizeof *c);
        for (int g = 0; g < G; g++) {
            mk_forward_stats st;
            if (mk_model_forward(fx.m, tok + g * fx.N, tgt + g * fx.N, fx.B, NULL, 0, &st)) exit(99);
            for (int i = 0; i < fx.cfg.model.layers * fx.cfg.model.experts; i++) c[i] += st.counts[i];
        }
        mk_lbl_set_exact(fx.lbl, c, (long)total);
        free(c);
    }
    for (int g = 0; g < G; g++) {
        mk_forward_stats st;
        if (mk_model_forward(fx.m, tok + g * fx.N, tgt + g * fx.N, fx.B, fx.lbl, 1, &st)) exit(99);
        if (mk_model_backward(fx.m, 1.0 / targets, 1.0 / G)) exit(99);
    }
    *n_out = mk_model_param_count(fx.m);
    double *out = malloc(*n_out * sizeof *out);
    for (size_t i = 0; i < *n_out; i++) out[i] = mk_model_grads(fx.m)[i];
    teardown(&fx);
    return out;
}

static double max_rel_diff(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs(a[i] - b[i]));
        den = fmax(den, fabs(b[i]));
    }
    return num / den;
}

static void check_accumulation(void)
{
    /* 2 micro-steps of 3 sequences against 1 of 6 sequences, same tokens. */
    const int T = 5, Bbig = 6, Nbig = Bbig * T;
    int32_t tok[Nbig], tgt[Nbig];
    mk_rng r = mk_rng_make(3, 3);
    for (int n = 0; n < Nbig; n++) {
        tok[n] = (int32_t)mk_rng_below(&r, 19);
        tgt[n] = (int32_t)mk_rng_below(&r, 19);
    }
    size_t n1, n2;
    const char *acc_none[] = { "lbl.mode=none", NULL };
    const char *big_none[] = { "lbl.mode=none", "train.micro_batch=6", NULL };
    double *a = grads_after(acc_none, 2, tok, tgt, &n1);
    double *b = grads_after(big_none, 1, tok, tgt, &n2);
    double d = max_rel_diff(a, b, n1);
    tap_ok(n1 == n2 && d < 1e-10, "lbl none: 2 accumulated micro-steps of 3 = 1 step of 6 (max rel diff %.2e)", d);
    free(a);
    free(b);

    const char *acc_exact[] = { "lbl.mode=global-exact", NULL };
    const char *big_micro[] = { "lbl.mode=micro", "train.micro_batch=6", NULL };
    a = grads_after(acc_exact, 2, tok, tgt, &n1);
    b = grads_after(big_micro, 1, tok, tgt, &n2);
    d = max_rel_diff(a, b, n1);
    tap_ok(n1 == n2 && d < 1e-10, "global-exact over 2 micro-steps = micro LBL over their concatenation (max rel diff %.2e)", d);
    free(b);

    /* micro over 2 micro-steps differs: its scope is each half alone. */
    const char *acc_micro[] = { "lbl.mode=micro", NULL };
    b = grads_after(acc_micro, 2, tok, tgt, &n2);
    d = max_rel_diff(a, b, n1);
    tap_ok(d > 1e-6, "micro over 2 micro-steps differs from global-exact (max rel diff %.2e)", d);
    free(a);
    free(b);
}

/* The backward's per-block hook (mk_model_set_layer_grads_hook): what it reports is final
 * when reported. Each call's tensors are copied at the call; after the backward every
 * layer tensor was reported exactly once, with the bits it ends with, in backward order
 * (layers descending, a layer's MoE block, the one with expert tensors, before its
 * attention block), and an error from the hook ends the backward with it. */
typedef struct hook_log {
    const mk_model *m;
    mk_real *snap;
    int *seen;          /* per tensor: times reported */
    int calls, order_ok, range_ok, last_layer, last_moe;
    int fail_at;        /* the call that returns an error (0: none) */
} hook_log;

static int record_block(void *ctx, int layer, size_t i0, size_t i1)
{
    hook_log *h = ctx;
    h->calls++;
    const mk_real *g = mk_model_grads((mk_model *)h->m);
    int moe = 0;
    if (i1 <= i0 || i1 > mk_model_tensor_count(h->m)) h->range_ok = 0;
    for (size_t i = i0; h->range_ok && i < i1; i++) {
        const mk_tensor *t = mk_model_tensor(h->m, i);
        if (t->layer != layer) h->range_ok = 0;
        moe |= t->expert;
        h->seen[i]++;
        memcpy(h->snap + t->offset, g + t->offset, t->numel * sizeof *g);
    }
    /* (layer, moe) strictly after (last_layer, last_moe) in backward order */
    if (h->calls > 1 && !(layer < h->last_layer || (layer == h->last_layer && h->last_moe && !moe))) h->order_ok = 0;
    if (h->calls == 1 && !moe) h->order_ok = 0;
    h->last_layer = layer, h->last_moe = moe;
    return h->calls == h->fail_at ? MK_FAIL(MK_ERR_COMM, "test hook: failing on call %d", h->calls) : MK_OK;
}

static void check_block_hook(const char *label, const char *const *sets)
{
    fixture fx;
    setup(&fx, sets);
    const size_t nt = mk_model_tensor_count(fx.m), np = mk_model_param_count(fx.m);
    hook_log h = {fx.m, calloc(np, sizeof(mk_real)), calloc(nt, sizeof(int)), 0, 1, 1, 0, 0, 0};
    mk_forward_stats st;
    mk_model_zero_grad(fx.m);
    mk_lbl_reset(fx.lbl);
    mk_model_set_layer_grads_hook(fx.m, record_block, &h);
    if (mk_model_forward(fx.m, fx.tokens, fx.targets, fx.B, fx.lbl, 1, &st)) exit(99);
    int rc = mk_model_backward(fx.m, 1.0 / st.targets, 1.0);
    const mk_real *g = mk_model_grads(fx.m);
    int once = 1, same = 1;
    for (size_t i = 0; i < nt; i++) {
        const mk_tensor *t = mk_model_tensor(fx.m, i);
        if (h.seen[i] != (t->layer >= 0)) once = 0;
        if (h.seen[i] == 1 && memcmp(h.snap + t->offset, g + t->offset, t->numel * sizeof *g) != 0) same = 0;
    }
    const int L = fx.cfg.model.layers;
    tap_ok(rc == MK_OK && h.calls == 2 * L && h.range_ok && h.order_ok,
           "%s: the backward reports each layer's MoE block, then its attention block, layers descending (%d calls for %d layers)",
           label, h.calls, L);
    tap_ok(once, "%s: every layer tensor is reported once, nothing outside the layers", label);
    tap_ok(same, "%s: each reported gradient is final when reported (the same bits after the backward)", label);
    /* a failing hook ends the backward with its error */
    memset(h.seen, 0, nt * sizeof *h.seen);
    h.calls = 0, h.fail_at = 2;
    if (mk_model_forward(fx.m, fx.tokens, fx.targets, fx.B, fx.lbl, 1, &st)) exit(99);
    rc = mk_model_backward(fx.m, 1.0 / st.targets, 1.0);
    tap_ok(rc == MK_ERR_COMM && h.calls == 2, "%s: an error from the hook ends the backward (%d, after %d calls)", label,
           rc, h.calls);
    mk_model_set_layer_grads_hook(fx.m, NULL, NULL);
    free(h.snap);
    free(h.seen);
    teardown(&fx);
}

/* A second step's gradients after mk_model_zero_grad are the first's, bit for bit: nothing
 * of the step before stays in any gradient, the experts' included (also with a capacity
 * that drops choices). */
static void check_zero_grad(const char *label, const char *const *sets)
{
    fixture fx;
    setup(&fx, sets);
    const size_t np = mk_model_param_count(fx.m);
    mk_real *first = malloc(np * sizeof *first);
    int rc = MK_OK, same = 1;
    for (int step = 0; step < 2 && rc == MK_OK; step++) {
        mk_forward_stats st;
        rc = mk_model_zero_grad(fx.m);
        mk_lbl_reset(fx.lbl);
        if (rc == MK_OK) rc = mk_model_forward(fx.m, fx.tokens, fx.targets, fx.B, fx.lbl, 1, &st);
        if (rc == MK_OK) rc = mk_model_backward(fx.m, 1.0 / st.targets, 1.0);
        if (step == 0) memcpy(first, mk_model_grads(fx.m), np * sizeof *first);
        else same = memcmp(first, mk_model_grads(fx.m), np * sizeof *first) == 0;
    }
    double expert_sq = 0;
    for (size_t i = 0; i < mk_model_tensor_count(fx.m); i++) {
        const mk_tensor *t = mk_model_tensor(fx.m, i);
        for (size_t j = 0; t->expert && j < t->numel; j++) expert_sq += (double)first[t->offset + j] * first[t->offset + j];
    }
    tap_ok(rc == MK_OK && same && expert_sq > 0,
           "%s: zero_grad, forward, backward twice: the same gradients, bit for bit (experts' sum of squares %.3g)",
           label, expert_sq);
    free(first);
    teardown(&fx);
}

int main(void)
{
    const char *v_default[] = { NULL };
    const char *v_shared[] = { "model.tie_embeddings=false", "model.shared_ffn=5", "router.norm_topk=true",
                               "router.zloss_coeff=0.1", NULL };
    const char *v_capacity[] = { "router.capacity_factor=0.75", "model.topk=1", NULL };
    const char *v_none[] = { "lbl.mode=none", "model.layers=1", "model.topk=3", NULL };
    const char *v_global[] = { "lbl.mode=global", "lbl.micro_coeff=0.25", NULL };
    check_variant("tied, micro LBL", v_default);
    check_variant("untied, shared expert, norm_topk, z-loss", v_shared);
    check_variant("capacity factor 0.75, top-1", v_capacity);
    check_variant("no LBL, top-3", v_none);
    check_variant("global + micro LBL mix", v_global);
    check_accumulation();
    check_block_hook("tied", v_default);
    check_block_hook("untied, shared expert", v_shared);
    check_zero_grad("tied", v_default);
    check_zero_grad("capacity factor 0.75, top-1", v_capacity);
    return tap_done();
}
