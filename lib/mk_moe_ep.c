/* mk_moe_ep.c - expert parallelism: tokens travel to the ranks holding their experts.
 *
 * Rank q of an expert-parallel group of size ep holds global experts q*El .. q*El+El-1.
 * Forward, per layer:
 *   1. From the routing over all E experts (capacity already applied at the source, so the
 *      result is the same as with ep = 1), every token that chose at least one expert of
 *      rank q becomes one send row for q — once, however many of its K experts live there —
 *      with a record of K (local expert or -1, gate).
 *   2. All-to-all: row counts, then rows and records.
 *   3. The receiver groups the arrived (row, choice) pairs by local expert, runs the
 *      experts, and combines each arrived row's expert outputs weighted by their gates.
 *   4. All-to-all back: one combined row per send row; the sender adds them to the output.
 * Backward retraces it: dout rows go out once per (token, rank), the receiver computes the
 * gate gradients and the expert backward, and dx rows and gate gradients come back.
 * Every sum has a fixed order, so results do not depend on timing.
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
#include "mk_devcomm.h"
#include "mk_failpoint.h"
#include "mk_model_impl.h"

static int grow_dev(mk_backend *be, void **p, size_t bytes)
{
    be->ops->free(be, *p);
    *p = NULL;
    return be->ops->alloc(be, bytes ? bytes : 1, p);
}

static int grow_host(void **p, size_t bytes)
{
    void *q = realloc(*p, bytes ? bytes : 1);
    if (!q) return MK_FAIL(MK_ERR_NOMEM, "expert parallelism: out of memory");
    *p = q;
    return MK_OK;
}

/* Make room for R_send send rows, R_recv received rows and `rows` expert rows. */
static int ep_reserve(mk_model *m, ep_layer *e, size_t R_send, size_t R_recv, size_t rows)
{
    mk_backend *be = m->be;
    const size_t D = (size_t)m->D, F = (size_t)m->F, K = (size_t)m->K, R = sizeof(mk_real);
    if (!e->send_n) {
        e->send_n = calloc((size_t)m->ep, sizeof *e->send_n);
        e->recv_n = calloc((size_t)m->ep, sizeof *e->recv_n);
        const size_t N = (size_t)m->Bmax * m->T;
        if (!e->send_n || !e->recv_n) return MK_FAIL(MK_ERR_NOMEM, "expert parallelism: out of memory");
        MK_CHECK(grow_dev(be, (void **)&e->send_row_of, N * m->ep * sizeof(int32_t)));
        MK_CHECK(grow_host((void **)&e->send_row_of_h, N * m->ep * sizeof(int32_t)));
        MK_CHECK(grow_host((void **)&e->back_of_h, N * K * sizeof(int32_t)));
    }
    if (R_send > e->cap_send) {
        size_t c = R_send + R_send / 2;
        MK_CHECK(grow_host((void **)&e->send_slot_h, c * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->send_slot, c * sizeof(int32_t)));
        MK_CHECK(grow_host((void **)&e->send_rec_h, c * K * sizeof(ep_rec)));
        MK_CHECK(grow_host((void **)&e->dg_back_h, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->send_x, c * D * R));
        MK_CHECK(grow_dev(be, (void **)&e->back, c * D * R));
        e->cap_send = c;
    }
    if (R_recv > e->cap_recv) {
        size_t c = R_recv + R_recv / 2;
        MK_CHECK(grow_host((void **)&e->recv_rec_h, c * K * sizeof(ep_rec)));
        MK_CHECK(grow_host((void **)&e->recv_g_h, c * K * R));
        MK_CHECK(grow_host((void **)&e->dg_recv_h, c * K * R));
        MK_CHECK(grow_host((void **)&e->slot_row_h, c * K * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->slot_row, c * K * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->recv_g, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->dg_recv, c * K * R));
        MK_CHECK(grow_dev(be, (void **)&e->recv_x, c * D * R));
        MK_CHECK(grow_dev(be, (void **)&e->partial, c * D * R));
        e->cap_recv = c;
    }
    if (rows > e->cap_rows) {
        size_t c = rows + rows / 2;
        MK_CHECK(grow_host((void **)&e->row_slot_h, c * sizeof(int32_t)));
        MK_CHECK(grow_dev(be, (void **)&e->row_slot, c * sizeof(int32_t)));
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
    void *dev[] = { e->send_slot, e->send_row_of, e->recv_g, e->row_slot, e->slot_row, e->send_x,
                    e->recv_x, e->partial, e->back, e->xp, e->a1, e->a3, e->hact, e->y, e->dy,
                    e->dhact, e->da1, e->da3, e->dxp, e->dg_recv };
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) be->ops->free(be, dev[i]);
    void *host[] = { e->send_slot_h, e->send_row_of_h, e->send_n, e->recv_n, e->send_rec_h,
                     e->recv_rec_h, e->recv_g_h, e->row_slot_h, e->slot_row_h, e->dg_recv_h,
                     e->dg_back_h, e->back_of_h };
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

/* Backend buffers travel through the devcomm (NCCL on CUDA), host tables through MPI. */
static int exchange(mk_model *m, const ep_layer *e, int back, const void *src, void *dst,
                    size_t row_bytes, int on_backend)
{
    const int P = m->ep;
    size_t sc[P], sd[P], rc[P], rd[P];
    layout(back ? e->recv_n : e->send_n, P, row_bytes, sc, sd);
    layout(back ? e->send_n : e->recv_n, P, row_bytes, rc, rd);
    MK_CHECK(mk_failpoint("alltoall"));
    const double t0 = now_s();
    int rc_ = on_backend ? mk_devcomm_alltoallv(m->ep_dev, src, sc, sd, dst, rc, rd)
                         : mk_comm_alltoallv(m->ep_comm, src, sc, sd, dst, rc, rd);
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
    MK_CHECK(ep_reserve(m, e, 0, 0, 0));
    const size_t NK = (size_t)N * K;
    MK_CHECK(o->to_host(be, m->topk_h, a->topk, NK * sizeof(int32_t)));
    MK_CHECK(o->to_host(be, m->slot_h, a->slot_row, NK * sizeof(int32_t)));
    MK_CHECK(o->to_host(be, m->gates_h, a->gates, NK * sizeof(mk_real)));

    /* 1. Send rows, grouped by destination, tokens in order within each: one pass over the
     *    choices marks the ranks each token goes to, a second numbers the rows rank by rank
     *    (not a pass over every choice per rank). */
    int32_t *row_of = e->send_row_of_h; /* [N, P]: -1 none, -2 marked, then the row */
    for (size_t i = 0; i < (size_t)N * P; i++) row_of[i] = -1;
    for (int q = 0; q < P; q++) e->send_n[q] = 0;
    for (size_t c = 0; c < NK; c++) {
        if (m->slot_h[c] < 0) continue; /* dropped by the capacity factor */
        const int q = m->topk_h[c] / El;
        if (q < 0 || q >= P) return MK_FAIL(MK_ERR_INTERNAL, "expert parallelism: layer %d chose expert %d of %d",
                                            l, m->topk_h[c], m->E);
        int32_t *mark = &row_of[(c / (size_t)K) * P + q];
        if (*mark == -1) *mark = -2, e->send_n[q]++;
    }
    size_t R_send = 0, first[P];
    for (int q = 0; q < P; q++) first[q] = R_send, R_send += e->send_n[q];
    MK_CHECK(ep_reserve(m, e, R_send, 0, 0));
    for (int t = 0; t < N; t++)
        for (int q = 0; q < P; q++) {
            int32_t *mark = &row_of[(size_t)t * P + q];
            if (*mark != -2) continue;
            const size_t r = first[q]++;
            *mark = (int32_t)r;
            e->send_slot_h[r] = t * K;
            for (int j = 0; j < K; j++) e->send_rec_h[r * K + j] = (ep_rec){0, -1, 0};
        }
    /* Each choice's record, and where its gate gradient will come back (the backward then
     * needs no second read of the routing). */
    for (size_t c = 0; c < NK; c++) {
        if (m->slot_h[c] < 0) {
            e->back_of_h[c] = -1;
            continue;
        }
        const int32_t ex = m->topk_h[c];
        const size_t r = (size_t)row_of[(c / (size_t)K) * P + ex / El], j = c % (size_t)K;
        e->send_rec_h[r * K + j] = (ep_rec){m->gates_h[c], ex % El, 0};
        e->back_of_h[c] = (int32_t)(r * K + j);
    }
    e->R_send = R_send;

    /* 2. Counts, then rows and records. */
    int64_t sn[P], rn[P];
    for (int q = 0; q < P; q++) sn[q] = (int64_t)e->send_n[q];
    MK_CHECK(mk_comm_alltoall_int(m->ep_comm, sn, rn));
    size_t R_recv = 0;
    for (int q = 0; q < P; q++) R_recv += e->recv_n[q] = (size_t)rn[q];
    MK_CHECK(ep_reserve(m, e, R_send, R_recv, 0));
    e->R_recv = R_recv;
    MK_CHECK(o->from_host(be, e->send_slot, e->send_slot_h, R_send * sizeof(int32_t)));
    MK_CHECK(o->from_host(be, e->send_row_of, e->send_row_of_h, (size_t)N * P * sizeof(int32_t)));
    MK_CHECK(o->permute_rows(be, e->send_x, a->ln2, e->send_slot, NULL, (int)R_send, K, D));
    MK_CHECK(exchange(m, e, 0, e->send_x, e->recv_x, (size_t)D * sizeof(mk_real), 1));
    MK_CHECK(exchange(m, e, 0, e->send_rec_h, e->recv_rec_h, (size_t)K * sizeof(ep_rec), 0));

    /* 3. Arrived choices grouped by local expert (then by arrival order), the experts, and
     *    each arrived row's outputs combined by gate. */
    /* A counting sort (one pass to count, one to place, arrival order kept within an
     * expert): a scan of every slot per expert cost El passes over R_recv * K slots, about
     * 8M per layer at bench-s with ep = 2, on the host, every layer. */
    for (int x = 0; x <= El; x++) e->offs[x] = 0;
    for (size_t i = 0; i < R_recv * K; i++) {
        const int32_t x = e->recv_rec_h[i].id;
        if (x >= El) return MK_FAIL(MK_ERR_COMM, "expert parallelism: a record names local expert %d of %d", x, El);
        if (x >= 0) e->offs[x + 1]++;
        e->recv_g_h[i] = e->recv_rec_h[i].g;
    }
    for (int x = 0; x < El; x++) e->offs[x + 1] += e->offs[x];
    const size_t rows = (size_t)e->offs[El];
    MK_CHECK(ep_reserve(m, e, R_send, R_recv, rows));
    int next[MK_EP_MAX_LOCAL];
    for (int x = 0; x < El; x++) next[x] = e->offs[x];
    for (size_t s = 0; s < R_recv * K; s++) {
        const int32_t x = e->recv_rec_h[s].id;
        if (x < 0) {
            e->slot_row_h[s] = -1;
            continue;
        }
        const int row = next[x]++;
        e->row_slot_h[row] = (int32_t)s;
        e->slot_row_h[s] = (int32_t)row;
    }
    MK_CHECK(o->from_host(be, e->row_slot, e->row_slot_h, rows * sizeof(int32_t)));
    MK_CHECK(o->from_host(be, e->slot_row, e->slot_row_h, R_recv * K * sizeof(int32_t)));
    MK_CHECK(o->from_host(be, e->recv_g, e->recv_g_h, R_recv * K * sizeof(mk_real)));
    const mk_rows_gather x = {e->recv_x, e->row_slot, NULL, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_expert_ffn_forward(m, p, e->offs, El, (int)rows, &x, e->xp, e->a1, e->a3, e->hact,
                                   e->y));
    MK_CHECK(o->combine_rows(be, e->partial, NULL, e->y, e->slot_row, e->recv_g, (int)R_recv, K, D));

    /* 4. Back to the senders; each token adds its destinations' rows in rank order. */
    MK_CHECK(exchange(m, e, 1, e->partial, e->back, (size_t)D * sizeof(mk_real), 1));
    MK_CHECK(o->unpermute_add(be, out, e->back, e->send_row_of, NULL, N, P, D));
    return MK_OK;
}

int mk_moe_ep_backward(mk_model *m, int l, const layer_params *p, layer_params *g, layer_acts *a, int N)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    ep_layer *e = &m->epl[l];
    scratch *s = &m->s;
    const int K = m->K, El = m->El, P = m->ep, D = m->D;
    const size_t R_send = e->R_send, R_recv = e->R_recv;
    const int rows = e->offs[El];
    (void)a;

    /* dout of each send row goes to its destination (recv_x is free again: the experts'
     * inputs are kept in xp). */
    MK_CHECK(o->permute_rows(be, e->send_x, s->dresid, e->send_slot, NULL, (int)R_send, K, D));
    MK_CHECK(exchange(m, e, 0, e->send_x, e->recv_x, (size_t)D * sizeof(mk_real), 1));
    mk_rows_gather dout = {e->recv_x, e->row_slot, e->recv_g, K, (int)R_recv, NULL, NULL};
    MK_CHECK(mk_combine_backward(m, e->dg_recv, e->dy, &dout, e->y, e->slot_row));
    MK_CHECK(mk_expert_ffn_backward(m, p, g, e->offs, El, rows, &dout, e->dy, e->xp, e->a1, e->a3,
                                    e->hact, e->dhact, e->da1, e->da3, e->dxp));
    MK_CHECK(o->combine_rows(be, e->partial, NULL, e->dxp, e->slot_row, NULL, (int)R_recv, K, D));

    /* dx rows and gate gradients back to the senders. */
    MK_CHECK(exchange(m, e, 1, e->partial, e->back, (size_t)D * sizeof(mk_real), 1));
    MK_CHECK(o->to_host(be, e->dg_recv_h, e->dg_recv, R_recv * K * sizeof(mk_real)));
    MK_CHECK(exchange(m, e, 1, e->dg_recv_h, e->dg_back_h, (size_t)K * sizeof(mk_real), 0));
    MK_CHECK(o->unpermute_add(be, s->dln, e->back, e->send_row_of, NULL, N, P, D));
    for (size_t c = 0; c < (size_t)N * K; c++) {
        const int32_t b = e->back_of_h[c];
        m->dgates_h[c] = b < 0 ? 0 : e->dg_back_h[b]; /* b < 0: dropped by the capacity factor */
    }
    MK_CHECK(o->from_host(be, s->dgates, m->dgates_h, (size_t)N * K * sizeof(mk_real)));
    return MK_OK;
}
