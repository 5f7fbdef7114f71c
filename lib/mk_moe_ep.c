/* mk_moe_ep.c - expert parallelism: tokens travel to the ranks holding their experts.
 *
 * Rank q of an expert-parallel group of size ep holds global experts q*El .. q*El+El-1.
 * Forward, per layer:
 *   1. From the routing over all E experts (capacity already applied at the source, so the
 *      result is the same as with ep = 1), every token that chose at least one expert of
 *      rank q becomes one send row for q — once, however many of its K experts live there —
 *      with K records (local expert or -1, gate): the backend's ep_send_plan.
 *   2. All-to-all: row counts (the host's only read of the plan), then rows and records.
 *   3. The receiver groups the arrived (row, choice) pairs by local expert (ep_recv_plan;
 *      the host reads the experts' offsets for the grouped GEMMs), runs the experts, and
 *      combines each arrived row's expert outputs weighted by their gates.
 *   4. All-to-all back: one combined row per send row; the sender adds them to the output.
 * Backward retraces it: dout rows go out once per (token, rank), the receiver computes the
 * gate gradients and the expert backward, and dx rows and gate gradients come back, all in
 * backend memory. Every sum has a fixed order, so results do not depend on timing.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_comm.h"
#include "mk_devcomm.h"
#include "mk_error.h"
#include "mk_failpoint.h"
#include "mk_model_impl.h"

static int grow_dev(mk_backend *be, void **p, size_t bytes)
{
    be->ops->free(be, *p);
    *p = NULL;
    return be->ops->alloc(be, bytes ? bytes : 1, p);
}

/* Make room for R_send send rows, R_recv received rows and `rows` expert rows. */
static int ep_reserve(mk_model *m, ep_layer *e, size_t R_send, size_t R_recv, size_t rows)
{
    mk_backend *be = m->be;
    const size_t D = (size_t)m->D, F = (size_t)m->F, K = (size_t)m->K, R = sizeof(mk_real);
    const size_t P = (size_t)m->ep, El = (size_t)m->El;
    if (!e->send_n) {
        const size_t N = (size_t)m->Bmax * m->T, nplan = P + 1 + El + 2;
        e->send_n = calloc(P, sizeof *e->send_n);
        e->recv_n = calloc(P, sizeof *e->recv_n);
        e->plan_h = calloc(nplan, sizeof *e->plan_h);
        if (!e->send_n || !e->recv_n || !e->plan_h) return MK_FAIL(MK_ERR_NOMEM, "expert parallelism: out of memory");
        MK_CHECK(grow_dev(be, (void **)&e->plan_offs, nplan * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->row_tok, N * P * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->send_row_of, N * P * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->send_rec, N * P * K * sizeof(mk_ep_rec)));
        MK_CHECK(grow_dev(be, (void **)&e->back_of, N * K * sizeof(int32_t)));
    }
    if (R_send > e->cap_send) {
        size_t c = R_send + R_send / 2;
        MK_CHECK(grow_dev(be, (void **)&e->dg_back, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->send_x, c * D * R));
        MK_CHECK(grow_dev(be, (void **)&e->back, c * D * R));
        e->cap_send = c;
    }
    if (R_recv > e->cap_recv) {
        size_t c = R_recv + R_recv / 2;
        MK_CHECK(grow_dev(be, (void **)&e->recv_rec, c * K * sizeof(mk_ep_rec)));
        MK_CHECK(grow_dev(be, (void **)&e->row_slot, c * K * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->slot_row, c * K * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->recv_g, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->dg_recv, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->recv_x, c * D * R));
        MK_CHECK(grow_dev(be, (void **)&e->partial, c * D * R));
        e->cap_recv = c;
    }
    if (rows > e->cap_rows) {
        size_t c = rows + rows / 2;
        mk_real **dbufs[] = { &e->xp, &e->y, &e->dy, &e->dxp };
        for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++)
            MK_CHECK(grow_dev(be, (void **)dbufs[i], c * D * R));
        mk_real **fbufs[] = { &e->a1, &e->a3, &e->hact, &e->dhact, &e->da1, &e->da3 };
        for (size_t i = 0; i < sizeof fbufs / sizeof *fbufs; i++)
            MK_CHECK(grow_dev(be, (void **)fbufs[i], c * F * R));
        e->cap_rows = c;
    }
    return MK_OK;
}

void mk_moe_ep_free(mk_model *m, ep_layer *e)
{
    mk_backend *be = m->be;
    void *dev[] = { e->plan_offs, e->row_tok, e->send_row_of, e->send_rec, e->back_of, e->recv_rec,
                    e->recv_g, e->row_slot, e->slot_row, e->send_x, e->recv_x, e->partial, e->back,
                    e->xp, e->a1, e->a3, e->hact, e->y, e->dy, e->dhact, e->da1, e->da3, e->dxp,
                    e->dg_recv, e->dg_back };
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) be->ops->free(be, dev[i]);
    void *host[] = { e->send_n, e->recv_n, e->plan_h };
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    memset(e, 0, sizeof *e);
}

/* Row counts -> byte counts and displacements for mk_comm_alltoallv. */
static void layout(const size_t *rows, int n, size_t row_bytes, size_t *counts, size_t *displs)
{
    size_t at = 0;
    for (int q = 0; q < n; q++) {
        counts[q] = rows[q] * row_bytes;
        displs[q] = at;
        at += counts[q];
    }
}

/* Send rows out (from send buffers sized by send_n) and receive by recv_n, or the reverse. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Backend buffers travel through the devcomm (NCCL on CUDA, MPI on the CPU). */
static int exchange(mk_model *m, const ep_layer *e, int back, const void *src, void *dst, size_t row_bytes)
{
    const int P = m->ep;
    size_t sc[P], sd[P], rc[P], rd[P];
    layout(back ? e->recv_n : e->send_n, P, row_bytes, sc, sd);
    layout(back ? e->send_n : e->recv_n, P, row_bytes, rc, rd);
    MK_CHECK(mk_failpoint("alltoall"));
    const double t0 = now_s();
    const int rc_ = mk_devcomm_alltoallv(m->ep_dev, src, sc, sd, dst, rc, rd);
    m->a2a_seconds += now_s() - t0;
    return rc_;
}

int mk_moe_ep_forward(mk_model *m, int l, const layer_params *p, layer_acts *a, int N, mk_real *out)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    ep_layer *e = &m->epl[l];
    const int K = m->K, El = m->El, P = m->ep, D = m->D;
    if (El > MK_EP_MAX_LOCAL)
        return MK_FAIL(MK_ERR_USAGE, "%d experts per rank; at most %d with expert parallelism", El, MK_EP_MAX_LOCAL);
    if (!o->ep_send_plan || !o->ep_recv_plan || !o->ep_gate_grads)
        return MK_FAIL(MK_ERR_USAGE, "this backend has no expert-parallel plans (parallel.ep = %d)", P);
    MK_CHECK(ep_reserve(m, e, 0, 0, 0));

    /* 1. Send rows, grouped by destination, tokens in order within each, and their
     *    records; the host reads the rows per destination. */
    int32_t *offs_s = e->plan_offs, *offs_r = e->plan_offs + P + 1;
    MK_CHECK(o->ep_send_plan(be, offs_s, e->row_tok, e->send_row_of, e->send_rec, e->back_of, a->topk, a->slot_row,
                             a->gates, N, K, El, P));
    MK_CHECK(o->to_host(be, e->plan_h, offs_s, (size_t)(P + 1) * sizeof(int32_t)));
    for (int q = 0; q < P; q++) e->send_n[q] = (size_t)(e->plan_h[q + 1] - e->plan_h[q]);
    const size_t R_send = (size_t)e->plan_h[P];
    e->R_send = R_send;

    /* 2. Counts, then rows and records. */
    int64_t sn[P], rn[P];
    for (int q = 0; q < P; q++) sn[q] = (int64_t)e->send_n[q];
    MK_CHECK(mk_comm_alltoall_int(m->ep_comm, sn, rn));
    size_t R_recv = 0;
    for (int q = 0; q < P; q++) R_recv += e->recv_n[q] = (size_t)rn[q];
    MK_CHECK(ep_reserve(m, e, R_send, R_recv, 0));
    e->R_recv = R_recv;
    MK_CHECK(o->permute_rows(be, e->send_x, a->ln2, e->row_tok, NULL, (int)R_send, P, D));
    MK_CHECK(exchange(m, e, 0, e->send_x, e->recv_x, (size_t)D * sizeof(mk_real)));
    MK_CHECK(exchange(m, e, 0, e->send_rec, e->recv_rec, (size_t)K * sizeof(mk_ep_rec)));

    /* 3. Arrived choices grouped by local expert (then by arrival order), the experts, and
     *    each arrived row's outputs combined by gate. */
    MK_CHECK(o->ep_recv_plan(be, offs_r, e->row_slot, e->slot_row, e->recv_g, e->recv_rec, (int)(R_recv * K), El));
    int32_t *offs_h = e->plan_h + P + 1;
    MK_CHECK(o->to_host(be, offs_h, offs_r, (size_t)(El + 2) * sizeof(int32_t)));
    if (offs_h[El + 1] != 0)
        return MK_FAIL(MK_ERR_COMM, "expert parallelism: layer %d: %d arrived records name no local expert of %d",
                       l, offs_h[El + 1], El);
    for (int x = 0; x <= El; x++) e->offs[x] = offs_h[x];
    const size_t rows = (size_t)e->offs[El];
    MK_CHECK(ep_reserve(m, e, R_send, R_recv, rows));
    const mk_rows_gather x = {e->recv_x, e->row_slot, NULL, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_expert_ffn_forward(m, p, e->offs, El, (int)rows, &x, e->xp, e->a1, e->a3, e->hact,
                                   e->y));
    MK_CHECK(o->combine_rows(be, e->partial, NULL, e->y, e->slot_row, e->recv_g, (int)R_recv, K, D));

    /* 4. Back to the senders; each token adds its destinations' rows in rank order. */
    MK_CHECK(exchange(m, e, 1, e->partial, e->back, (size_t)D * sizeof(mk_real)));
    MK_CHECK(o->unpermute_add(be, out, e->back, e->send_row_of, NULL, N, P, D));
    return MK_OK;
}

int mk_moe_ep_backward(mk_model *m, int l, const layer_params *p, layer_params *g, int N)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    ep_layer *e = &m->epl[l];
    scratch *s = &m->s;
    const int K = m->K, El = m->El, P = m->ep, D = m->D;
    const size_t R_send = e->R_send, R_recv = e->R_recv;
    const int rows = e->offs[El];

    /* dout of each send row goes to its destination (recv_x is free again: the experts'
     * inputs are kept in xp). */
    MK_CHECK(o->permute_rows(be, e->send_x, s->dresid, e->row_tok, NULL, (int)R_send, P, D));
    MK_CHECK(exchange(m, e, 0, e->send_x, e->recv_x, (size_t)D * sizeof(mk_real)));
    mk_rows_gather dout = {e->recv_x, e->row_slot, e->recv_g, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_combine_backward(m, e->dg_recv, e->dy, &dout, e->y, e->slot_row));
    MK_CHECK(mk_expert_ffn_backward(m, p, g, e->offs, El, rows, &dout, e->dy, e->xp, e->a1, e->a3,
                                    e->hact, e->dhact, e->da1, e->da3, e->dxp));
    MK_CHECK(o->combine_rows(be, e->partial, NULL, e->dxp, e->slot_row, NULL, (int)R_recv, K, D));

    /* dx rows and gate gradients back to the senders, the gate gradients into the
     * choices' order. */
    MK_CHECK(exchange(m, e, 1, e->partial, e->back, (size_t)D * sizeof(mk_real)));
    MK_CHECK(exchange(m, e, 1, e->dg_recv, e->dg_back, (size_t)K * sizeof(mk_real)));
    MK_CHECK(o->unpermute_add(be, s->dln, e->back, e->send_row_of, NULL, N, P, D));
    return o->ep_gate_grads(be, s->dgates, e->dg_back, e->back_of, N * K);
}
