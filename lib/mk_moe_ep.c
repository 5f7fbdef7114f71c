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

/* The layer's plans and the shared exchange buffers, once, for the most rows a micro-batch
 * of Bmax sequences can make: N * min(ep, K) send rows (a token goes once to each rank
 * holding one of its K experts) and N * ep arrived rows (at most one per token of each
 * rank). */
static int ep_setup(mk_model *m, ep_layer *e)
{
    if (e->send_n) return MK_OK;
    mk_backend *be = m->be;
    const size_t D = (size_t)m->D, K = (size_t)m->K, R = sizeof(mk_real);
    const size_t P = (size_t)m->ep, El = (size_t)m->El, N = (size_t)m->Bmax * m->T;
    const size_t NS = N * (P < K ? P : K), NR = N * P, nplan = P + 1 + El + 2;
    e->send_n = calloc(P, sizeof *e->send_n);
    e->recv_n = calloc(P, sizeof *e->recv_n);
    e->plan_h = calloc(nplan, sizeof *e->plan_h);
    if (!e->send_n || !e->recv_n || !e->plan_h) return MK_FAIL(MK_ERR_NOMEM, "expert parallelism: out of memory");
    MK_CHECK(grow_dev(be, (void **)&e->plan_offs, nplan * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->row_tok, N * P * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->send_row_of, N * P * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->send_rec, N * P * K * sizeof(mk_ep_rec)));
    MK_CHECK(grow_dev(be, (void **)&e->back_of, N * K * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->recv_rec, NR * K * sizeof(mk_ep_rec)));
    MK_CHECK(grow_dev(be, (void **)&e->row_slot, NR * K * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->slot_row, NR * K * sizeof(int32_t)));
    MK_CHECK(grow_dev(be, (void **)&e->recv_g, NR * K * R));
    MK_CHECK(grow_dev(be, (void **)&e->dg_recv, NR * K * R));
    ep_io *io = &m->epio;
    if (io->send_x) return MK_OK;
    const char *own = getenv("MOEKIT_EP_OWN_ROWS");
    io->own_rows = own && strcmp(own, "1") == 0;
    MK_CHECK(grow_dev(be, (void **)&io->send_x, NS * D * R));
    MK_CHECK(grow_dev(be, (void **)&io->back, NS * D * R));
    MK_CHECK(grow_dev(be, (void **)&io->dg_back, NS * K * R));
    MK_CHECK(grow_dev(be, (void **)&io->recv_x, NR * D * R));
    MK_CHECK(grow_dev(be, (void **)&io->partial, NR * D * R));
    return MK_OK;
}

/* Which of own[] are [rows, D] (the rest are [rows, F]); the order of ep_rows. */
static const int ep_rowbuf_d[EP_ROWBUFS] = { 1, 0, 0, 0, 1, 1, 0, 0, 0, 1 };

typedef struct ep_rows {
    mk_real *xp, *a1, *a3, *hact, *y;   /* kept for the backward */
    mk_real *dy, *dhact, *da1, *da3, *dxp;
} ep_rows;

/* The expert-row buffers for `rows` rows: the layer's activations and the scratch while
 * the rows fit their N * K (nothing allocated: a device allocation waits for the GPU),
 * else the layer's own (a routing that sends more than N * K choices to one rank), grown
 * to twice the rows when too small, never past the most a rank can receive (N * ep tokens
 * of min(K, local experts) choices each): a routing growing more skewed step by step costs
 * few allocations (two H200s at ep = 2: 1.5x growth cost 3.3 ms a step of 77 while the
 * routing of bench-s.ini settled). The forward and its backward see the same rows. */
static int ep_rows_for(mk_model *m, int l, size_t rows, ep_rows *r)
{
    ep_layer *e = &m->epl[l];
    if (!m->epio.own_rows && rows <= (size_t)m->Bmax * m->T * m->K) {
        const layer_acts *a = &m->acts[l];
        const scratch *s = &m->s;
        *r = (ep_rows){ a->xp, a->a1, a->a3, a->hact, a->y, s->dy, s->dhact, s->da1, s->da3, s->dxp };
        return MK_OK;
    }
    if (rows > e->cap_rows) {
        const size_t most = (size_t)m->Bmax * m->T * m->ep * (size_t)(m->K < m->El ? m->K : m->El);
        const size_t c = 2 * rows < most ? 2 * rows : most > rows ? most : rows;
        for (int i = 0; i < EP_ROWBUFS; i++)
            MK_CHECK(grow_dev(m->be, (void **)&e->own[i], c * (size_t)(ep_rowbuf_d[i] ? m->D : m->F) * sizeof(mk_real)));
        e->cap_rows = c;
    }
    mk_real **o = e->own;
    *r = (ep_rows){ o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9] };
    return MK_OK;
}

void mk_moe_ep_free(mk_model *m, ep_layer *e)
{
    mk_backend *be = m->be;
    void *dev[] = { e->plan_offs, e->row_tok, e->send_row_of, e->send_rec, e->back_of, e->recv_rec,
                    e->recv_g, e->row_slot, e->slot_row, e->dg_recv };
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) be->ops->free(be, dev[i]);
    for (int i = 0; i < EP_ROWBUFS; i++) be->ops->free(be, e->own[i]);
    void *host[] = { e->send_n, e->recv_n, e->plan_h };
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    memset(e, 0, sizeof *e);
}

void mk_moe_ep_io_free(mk_model *m)
{
    ep_io *io = &m->epio;
    void *dev[] = { io->send_x, io->back, io->dg_back, io->recv_x, io->partial };
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) m->be->ops->free(m->be, dev[i]);
    memset(io, 0, sizeof *io);
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
    MK_CHECK(ep_setup(m, e));
    const ep_io *io = &m->epio;

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
    if (R_recv > (size_t)m->Bmax * m->T * P)
        return MK_FAIL(MK_ERR_COMM, "expert parallelism: layer %d: %zu rows would arrive, at most %zu can",
                       l, R_recv, (size_t)m->Bmax * m->T * P);
    e->R_recv = R_recv;
    MK_CHECK(o->permute_rows(be, io->send_x, a->ln2, e->row_tok, NULL, (int)R_send, P, D));
    MK_CHECK(exchange(m, e, 0, io->send_x, io->recv_x, (size_t)D * sizeof(mk_real)));
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
    ep_rows r;
    MK_CHECK(ep_rows_for(m, l, rows, &r));
    const mk_rows_gather x = {io->recv_x, e->row_slot, NULL, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_expert_ffn_forward(m, p, e->offs, El, (int)rows, &x, r.xp, r.a1, r.a3, r.hact, r.y));
    MK_CHECK(o->combine_rows(be, io->partial, NULL, r.y, e->slot_row, e->recv_g, (int)R_recv, K, D));

    /* 4. Back to the senders; each token adds its destinations' rows in rank order. */
    MK_CHECK(exchange(m, e, 1, io->partial, io->back, (size_t)D * sizeof(mk_real)));
    MK_CHECK(o->unpermute_add(be, out, io->back, e->send_row_of, NULL, N, P, D));
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
    const ep_io *io = &m->epio;
    const int rows = e->offs[El];
    ep_rows r;
    MK_CHECK(ep_rows_for(m, l, (size_t)rows, &r));

    /* dout of each send row goes to its destination (recv_x is free again: the experts'
     * inputs are kept in xp). */
    MK_CHECK(o->permute_rows(be, io->send_x, s->dresid, e->row_tok, NULL, (int)R_send, P, D));
    MK_CHECK(exchange(m, e, 0, io->send_x, io->recv_x, (size_t)D * sizeof(mk_real)));
    mk_rows_gather dout = {io->recv_x, e->row_slot, e->recv_g, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_combine_backward(m, e->dg_recv, r.dy, &dout, r.y, e->slot_row));
    MK_CHECK(mk_expert_ffn_backward(m, p, g, e->offs, El, rows, &dout, r.dy, r.xp, r.a1, r.a3, r.hact,
                                    r.dhact, r.da1, r.da3, r.dxp));
    MK_CHECK(o->combine_rows(be, io->partial, NULL, r.dxp, e->slot_row, NULL, (int)R_recv, K, D));

    /* dx rows and gate gradients back to the senders, the gate gradients into the
     * choices' order. */
    MK_CHECK(exchange(m, e, 1, io->partial, io->back, (size_t)D * sizeof(mk_real)));
    MK_CHECK(exchange(m, e, 1, e->dg_recv, io->dg_back, (size_t)K * sizeof(mk_real)));
    MK_CHECK(o->unpermute_add(be, s->dln, io->back, e->send_row_of, NULL, N, P, D));
    return o->ep_gate_grads(be, s->dgates, io->dg_back, e->back_of, N * K);
}
