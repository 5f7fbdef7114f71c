/* test_lbl.c - the load-balancing loss of DESIGN section 3 against hand-computed values:
 * f and LBL for each scope, the global buffer over micro-steps and its reset, global-exact,
 * MaxVio, and the router gradient against the closed form
 *   dLBL/dz_{t,j} = (E / N) * s_{t,j} * (f_j - sum_i s_{t,i} f_i).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "tap.h"

/* A fake all-reduce over 2 "ranks": the other rank contributes fixed counts. */
typedef struct other_rank { int64_t counts[5]; } other_rank;
static int add_other(void *ctx, int64_t *counts, int n)
{
    const other_rank *o = ctx;
    for (int i = 0; i < n; i++) counts[i] += o->counts[i];
    return MK_OK;
}

static void test_micro(void)
{
    mk_lbl *l;
    mk_lbl_create(MK_LBL_MICRO, 1, 4, 2, &l);
    /* 4 tokens, top-2: 8 choices. */
    int32_t c[4] = { 4, 2, 1, 1 };
    double f[4], fm[4];
    mk_lbl_scope(l, 0, c, 4, f, fm);
    tap_close(f[0], 0.5, 0, 1e-15, "micro f_0 = 4 / (2 * 4)");
    tap_close(f[3], 0.125, 0, 1e-15, "micro f_3 = 1 / (2 * 4)");
    double psum[4] = { 1.6, 1.2, 0.8, 0.4 }; /* sums of probs over the 4 tokens */
    /* LBL = 4 * (0.5*0.4 + 0.25*0.3 + 0.125*0.2 + 0.125*0.1) = 4 * 0.3125 = 1.25 */
    tap_close(mk_lbl_value(f, psum, 4, 4), 1.25, 0, 1e-14, "micro LBL = 1.25 by hand");
    int32_t u[4] = { 2, 2, 2, 2 };
    double pu[4] = { 1, 1, 1, 1 };
    mk_lbl_scope(l, 0, u, 4, f, fm);
    tap_close(mk_lbl_value(f, pu, 4, 4), 1.0, 0, 1e-15, "perfect balance gives LBL = 1");
    tap_ok(mk_lbl_scope(l, 1, u, 4, f, fm) == MK_ERR_INTERNAL, "layer out of range is an error");
    mk_lbl_destroy(&l);
    tap_ok(l == NULL, "destroy clears the handle");
}

static void test_global_buffer(void)
{
    mk_lbl *l;
    mk_lbl_create(MK_LBL_GLOBAL, 2, 4, 1, &l);
    other_rank o = { { 1, 1, 1, 1, 4 } }; /* the other rank: 4 tokens, one per expert */
    mk_lbl_set_allreduce(l, add_other, &o);
    double f[4], fm[4];
    int32_t c1[4] = { 3, 1, 0, 0 };       /* this rank, micro-step 1: 4 tokens */
    mk_lbl_scope(l, 0, c1, 4, f, fm);
    /* buffer = {4, 2, 1, 1} over 8 tokens */
    tap_close(f[0], 0.5, 0, 1e-15, "global step 1: f_0 = (3+1) / 8");
    tap_close(fm[0], 0.75, 0, 1e-15, "global step 1: micro f_0 = 3 / 4");
    int32_t c2[4] = { 0, 0, 2, 0 };       /* micro-step 2: 2 tokens (uneven micro-batch) */
    mk_lbl_scope(l, 0, c2, 2, f, fm);
    /* buffer = {5, 3, 4, 2} over 14 tokens */
    tap_close(f[0], 5.0 / 14, 0, 1e-15, "global step 2: f_0 = 5 / 14 (N_f counts real tokens)");
    tap_close(f[2], 4.0 / 14, 0, 1e-15, "global step 2: f_2 = 4 / 14");
    /* layer 1 has its own buffer */
    mk_lbl_scope(l, 1, c2, 2, f, fm);
    tap_close(f[2], 3.0 / 6, 0, 1e-15, "layer 1 buffer is separate: f_2 = 3 / 6");
    mk_lbl_reset(l);
    mk_lbl_scope(l, 0, c2, 2, f, fm);
    tap_close(f[0], 1.0 / 6, 0, 1e-15, "after reset the buffer restarts: f_0 = 1 / 6");
    mk_lbl_destroy(&l);
}

static void test_exact(void)
{
    mk_lbl *l;
    mk_lbl_create(MK_LBL_GLOBAL_EXACT, 1, 2, 1, &l);
    double f[2], fm[2];
    int32_t c[2] = { 1, 1 };
    tap_ok(mk_lbl_scope(l, 0, c, 2, f, fm) == MK_ERR_INTERNAL, "global-exact before its counting pass is an error");
    int64_t exact[2] = { 6, 2 };
    mk_lbl_set_exact(l, exact, 8);
    mk_lbl_scope(l, 0, c, 2, f, fm);
    tap_close(f[0], 0.75, 0, 1e-15, "global-exact uses the whole batch: f_0 = 6 / 8");
    tap_close(fm[0], 0.5, 0, 1e-15, "global-exact micro f_0 = 1 / 2");
    mk_lbl_destroy(&l);
}

static void test_maxvio(void)
{
    int64_t c[4] = { 4, 2, 1, 1 };
    tap_close(mk_lbl_maxvio(c, 4), 1.0, 0, 1e-15, "MaxVio {4,2,1,1} = (4 - 2) / 2 = 1");
    int64_t u[3] = { 5, 5, 5 };
    tap_close(mk_lbl_maxvio(u, 3), 0.0, 0, 1e-15, "MaxVio of a balanced load = 0");
    int64_t z[3] = { 0, 0, 0 };
    tap_close(mk_lbl_maxvio(z, 3), 0.0, 0, 1e-15, "MaxVio with no tokens = 0");
}

/* The backend's router gradient with only the LBL term equals DESIGN's closed form. */
static void test_router_gradient_formula(void)
{
    mk_backend *be;
    mk_backend_cpu_create(1, &be);
    enum { N = 3, E = 4, K = 2 };
    mk_real z[N * E] = { 0.1, -0.4, 0.9, 0.3, 1.2, 0.05, -0.7, 0.2, -0.2, 0.6, 0.4, -1.0 };
    mk_real *probs, *lse, *gates, *psum, *dz, *dgates, *lbl_ds, *zd;
    int32_t *topk, *counts;
    be->ops->alloc(be, sizeof z, (void **)&zd);
    be->ops->alloc(be, N * E * sizeof(mk_real), (void **)&probs);
    be->ops->alloc(be, N * sizeof(mk_real), (void **)&lse);
    be->ops->alloc(be, N * K * sizeof(mk_real), (void **)&gates);
    be->ops->alloc(be, E * sizeof(mk_real), (void **)&psum);
    be->ops->alloc(be, N * E * sizeof(mk_real), (void **)&dz);
    be->ops->alloc(be, N * K * sizeof(mk_real), (void **)&dgates); /* zero: LBL term only */
    be->ops->alloc(be, E * sizeof(mk_real), (void **)&lbl_ds);
    be->ops->alloc(be, N * K * sizeof(int32_t), (void **)&topk);
    be->ops->alloc(be, E * sizeof(int32_t), (void **)&counts);
    be->ops->from_host(be, zd, z, sizeof z);
    be->ops->router_forward(be, probs, lse, topk, gates, counts, psum, NULL, zd, N, E, K, 0);
    double f[E];
    for (int i = 0; i < E; i++) f[i] = (double)counts[i] / (K * N);
    for (int i = 0; i < E; i++) lbl_ds[i] = (mk_real)(E * f[i] / N);
    be->ops->router_backward(be, dz, dgates, lbl_ds, 0, probs, lse, topk, gates, N, E, K, 0);
    double worst = 0;
    for (int t = 0; t < N; t++) {
        double sf = 0;
        for (int i = 0; i < E; i++) sf += probs[t * E + i] * f[i];
        for (int j = 0; j < E; j++) {
            double want = (double)E / N * probs[t * E + j] * (f[j] - sf);
            worst = fmax(worst, fabs(dz[t * E + j] - want));
        }
    }
    tap_ok(worst < 1e-6, "router LBL gradient = (E/N) s_j (f_j - sum_i s_i f_i) (max abs diff %.2e)", worst);
    void *bufs[] = { zd, probs, lse, gates, psum, dz, dgates, lbl_ds, topk, counts };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) be->ops->free(be, bufs[i]);
    mk_backend_destroy(&be);
}

int main(void)
{
    test_micro();
    test_global_buffer();
    test_exact();
    test_maxvio();
    test_router_gradient_formula();
    return tap_done();
}
