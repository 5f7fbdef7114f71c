/* mk_backend_prof.c - a backend that times another one, op by op (see mk_backend.h).
 *
 * Two modes. Synchronised (MOEKIT_PROFILE=1): every op of the inner backend is called,
 * then the inner backend is synchronised and the wall time added to the op's total, so
 * each op's share of a step can be read without a vendor profiler. The synchronisation
 * removes any overlap between ops and adds a wait per op, so a profiled step is slower
 * than a plain one: use the shares, and take throughput from plain runs.
 *
 * Timeline (MOEKIT_PROFILE=timeline, backends with mark/mark_ms): each op is bracketed by
 * two timestamps on the device's queue and nothing waits that would not wait anyway; the
 * timestamps are read back at a to_host (which waits for the queue in any case) once half
 * the slots are used, and at the report.
 * An op's time is then the queue's time inside it, and the time between one op's end and
 * the next one's start is time the queue had nothing of ours to run: it waited for the
 * host, or ran work outside the backend's ops (the trainer's NCCL sums).
 *
 * The wrappers are one function each; the list follows mk_backend_ops field for field.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_backend_prof.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_error.h"

enum {    OP_alloc,
    OP_zero,
    OP_copy,
    OP_to_host,
    OP_from_host,
    OP_matmul,
    OP_linear_backward,
    OP_grouped_matmul,
    OP_grouped_matmul_wgrad,
    OP_add,
    OP_scale,
    OP_sumsq,
    OP_sumsq_ranges,
    OP_nonfinite,
    OP_nonfinite_flag,
    OP_embedding_forward,
    OP_embedding_backward,
    OP_rmsnorm_forward,
    OP_rmsnorm_backward,
    OP_rope_forward,
    OP_rope_backward,
    OP_attention_forward,
    OP_attention_backward,
    OP_attention_rope_forward,
    OP_attention_rope_backward,
    OP_attention_block_forward,
    OP_attention_block_backward,
    OP_moe_input_forward,
    OP_moe_input_backward,
    OP_router_forward,
    OP_router_backward,
    OP_route_plan,
    OP_ep_send_plan,
    OP_ep_recv_plan,
    OP_ep_gate_grads,
    OP_sequence_counts,
    OP_permute_rows,
    OP_unpermute_add,
    OP_combine_rows,
    OP_combine_backward_gates,
    OP_combine_backward,
    OP_swiglu_forward,
    OP_swiglu_backward,
    OP_expert_ffn_forward,
    OP_expert_ffn_backward,
    OP_output_forward,
    OP_output_backward,
    OP_cross_entropy,
    OP_adamw,
    OP_COUNT
};
static const char *const op_names[OP_COUNT] = {
    "alloc",
    "zero",
    "copy",
    "to_host",
    "from_host",
    "matmul",
    "linear_backward",
    "grouped_matmul",
    "grouped_matmul_wgrad",
    "add",
    "scale",
    "sumsq",
    "sumsq_ranges",
    "nonfinite",
    "nonfinite_flag",
    "embedding_forward",
    "embedding_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "rope_forward",
    "rope_backward",
    "attention_forward",
    "attention_backward",
    "attention_rope_forward",
    "attention_rope_backward",
    "attention_block_forward",
    "attention_block_backward",
    "moe_input_forward",
    "moe_input_backward",
    "router_forward",
    "router_backward",
    "route_plan",
    "ep_send_plan",
    "ep_recv_plan",
    "ep_gate_grads",
    "sequence_counts",
    "permute_rows",
    "unpermute_add",
    "combine_rows",
    "combine_backward_gates",
    "combine_backward",
    "swiglu_forward",
    "swiglu_backward",
    "expert_ffn_forward",
    "expert_ffn_backward",
    "output_forward",
    "output_backward",
    "cross_entropy",
    "adamw",
};

/* Ops whose timestamps are not read yet: at most this many, so that their marks and the
 * previous op's end mark never share a slot. */
#define PEND_MAX (MK_MARKS / 2 - 1)

typedef struct prof {
    mk_backend_ops ops;
    mk_backend *inner;
    double seconds[OP_COUNT];
    long calls[OP_COUNT];
    /* timeline mode */
    int timeline;
    double gap_ms[OP_COUNT];  /* queue time between the previous op's end and this op's start */
    int pend_op[PEND_MAX], pend_mark[PEND_MAX]; /* op and start mark (end: the next slot) */
    int npend, next_mark, prev_end; /* prev_end: the last read op's end mark, -1: none */
    int failed;                      /* a timestamp could not be read: the timeline stops */
    long gaps, gaps_skipped;         /* gaps measured, and not (the profiler's own reads) */
} prof;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Read the timestamps of the ops so far into their totals (waits for the last one). */
static int flush(prof *p)
{
    const mk_backend_ops *o = p->inner->ops;
    int rc = MK_OK;
    for (int k = 0; k < p->npend && rc == MK_OK && !p->failed; k++) {
        const int op = p->pend_op[k], s = p->pend_mark[k], e = (s + 1) % MK_MARKS;
        double in = 0, gap = 0;
        rc = o->mark_ms(p->inner, s, e, &in);
        if (rc == MK_OK && p->prev_end >= 0) rc = o->mark_ms(p->inner, p->prev_end, s, &gap), p->gaps++;
        else if (rc == MK_OK) p->gaps_skipped++;
        p->seconds[op] += 1e-3 * in;
        p->gap_ms[op] += gap;
        p->prev_end = e;
    }
    if (rc != MK_OK) p->failed = 1;
    p->npend = 0;
    /* The host's time reading them lies between this end and the next op's start: that
     * gap is the profiler's, not the program's, so it is not counted. */
    p->prev_end = -1;
    return rc;
}

/* The start of an op: its wall-clock start, and in timeline mode its first mark. */
static double begin(prof *p)
{
    if (p->timeline && !p->failed) {
        if (p->npend == PEND_MAX) (void)flush(p);
        if (!p->failed && p->inner->ops->mark(p->inner, p->next_mark) != MK_OK) p->failed = 1;
    }
    return now_s();
}

static int done(prof *p, int op, double t0, int rc)
{
    if (!p->timeline) {
        if (rc == MK_OK) rc = p->inner->ops->sync(p->inner);
        p->seconds[op] += now_s() - t0;
        p->calls[op]++;
        return rc;
    }
    p->calls[op]++;
    if (p->failed) return rc;
    const int s = p->next_mark, e = (s + 1) % MK_MARKS;
    if (p->inner->ops->mark(p->inner, e) != MK_OK) {
        p->failed = 1;
        return rc;
    }
    p->pend_op[p->npend] = op, p->pend_mark[p->npend] = s, p->npend++;
    p->next_mark = (e + 1) % MK_MARKS;
    /* Read at a wait of the program's own, once half the slots are used: reading costs
     * the host about a microsecond a timestamp, and a gap is lost per read. */
    if (op == OP_to_host && rc == MK_OK && p->npend >= PEND_MAX / 2) (void)flush(p);
    return rc;
}

#define P(be) ((prof *)(be)->impl)
static int p_alloc(mk_backend *be, size_t bytes, void **out)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_alloc, t0, P(be)->inner->ops->alloc(P(be)->inner, bytes, out));
}

static int p_zero(mk_backend *be, void *p, size_t bytes)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_zero, t0, P(be)->inner->ops->zero(P(be)->inner, p, bytes));
}

static int p_copy(mk_backend *be, void *dst, const void *src, size_t bytes)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_copy, t0, P(be)->inner->ops->copy(P(be)->inner, dst, src, bytes));
}

static int p_to_host(mk_backend *be, void *dst_host, const void *src, size_t bytes)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_to_host, t0, P(be)->inner->ops->to_host(P(be)->inner, dst_host, src, bytes));
}

static int p_from_host(mk_backend *be, void *dst, const void *src_host, size_t bytes)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_from_host, t0, P(be)->inner->ops->from_host(P(be)->inner, dst, src_host, bytes));
}

static int p_matmul(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *B, int M, int N, int K, int trans_a, int trans_b, mk_real alpha, mk_real beta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_matmul, t0, P(be)->inner->ops->matmul(P(be)->inner, C, A, B, M, N, K, trans_a, trans_b, alpha, beta));
}

static int p_linear_backward(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X, const mk_real *W, const mk_real *dY, int M, int K, int N, mk_real beta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_linear_backward, t0, P(be)->inner->ops->linear_backward(P(be)->inner, dX, dW, X, W, dY, M, K, N, beta));
}

static int p_grouped_matmul(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W, const int *offs_host, int E, int K, int N, int trans_w, mk_real beta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_grouped_matmul, t0, P(be)->inner->ops->grouped_matmul(P(be)->inner, C, A, W, offs_host, E, K, N, trans_w, beta));
}

static int p_grouped_matmul_wgrad(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC, const int *offs_host, int E, int K, int N)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_grouped_matmul_wgrad, t0, P(be)->inner->ops->grouped_matmul_wgrad(P(be)->inner, dW, A, dC, offs_host, E, K, N));
}

static int p_add(mk_backend *be, mk_real *y, const mk_real *a, const mk_real *b, size_t n)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_add, t0, P(be)->inner->ops->add(P(be)->inner, y, a, b, n));
}

static int p_scale(mk_backend *be, mk_real *x, size_t n, mk_real s)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_scale, t0, P(be)->inner->ops->scale(P(be)->inner, x, n, s));
}

static int p_sumsq(mk_backend *be, const mk_real *x, size_t n, double *out_host)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_sumsq, t0, P(be)->inner->ops->sumsq(P(be)->inner, x, n, out_host));
}

static int p_sumsq_ranges(mk_backend *be, const mk_real *base, const size_t *off, const size_t *len, int count,
                          double *out_host)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_sumsq_ranges, t0, P(be)->inner->ops->sumsq_ranges(P(be)->inner, base, off, len, count, out_host));
}

static int p_nonfinite(mk_backend *be, const mk_real *x, size_t n, int *out_host)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_nonfinite, t0, P(be)->inner->ops->nonfinite(P(be)->inner, x, n, out_host));
}

static int p_nonfinite_flag(mk_backend *be, const mk_real *x, size_t n, int32_t *flag)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_nonfinite_flag, t0, P(be)->inner->ops->nonfinite_flag(P(be)->inner, x, n, flag));
}

static int p_embedding_forward(mk_backend *be, mk_real *out, const int32_t *tokens, const mk_real *wte, int N, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_embedding_forward, t0, P(be)->inner->ops->embedding_forward(P(be)->inner, out, tokens, wte, N, D));
}

static int p_embedding_backward(mk_backend *be, mk_real *dwte, const int32_t *tokens, const mk_real *dout, int N, int D, int V)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_embedding_backward, t0, P(be)->inner->ops->embedding_backward(P(be)->inner, dwte, tokens, dout, N, D, V));
}

static int p_rmsnorm_forward(mk_backend *be, mk_real *out, mk_real *rstd, const mk_real *x, const mk_real *g, int N, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_rmsnorm_forward, t0, P(be)->inner->ops->rmsnorm_forward(P(be)->inner, out, rstd, x, g, N, D));
}

static int p_rmsnorm_backward(mk_backend *be, mk_real *dx, mk_real *dg, const mk_real *dout, const mk_real *x, const mk_real *g, const mk_real *rstd, int N, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_rmsnorm_backward, t0, P(be)->inner->ops->rmsnorm_backward(P(be)->inner, dx, dg, dout, x, g, rstd, N, D));
}

static int p_rope_forward(mk_backend *be, mk_real *qkv, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_rope_forward, t0, P(be)->inner->ops->rope_forward(P(be)->inner, qkv, B, T, D, H, theta));
}

static int p_rope_backward(mk_backend *be, mk_real *dqkv, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_rope_backward, t0, P(be)->inner->ops->rope_backward(P(be)->inner, dqkv, B, T, D, H, theta));
}

static int p_attention_forward(mk_backend *be, mk_real *out, mk_real *att, const mk_real *qkv, int B, int T, int D, int H)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_forward, t0, P(be)->inner->ops->attention_forward(P(be)->inner, out, att, qkv, B, T, D, H));
}

static int p_attention_rope_forward(mk_backend *be, mk_real *out, mk_real *att, mk_real *qkv, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_rope_forward, t0, P(be)->inner->ops->attention_rope_forward(P(be)->inner, out, att, qkv, B, T, D, H, theta));
}

static int p_attention_rope_backward(mk_backend *be, mk_real *dqkv, mk_real *datt, const mk_real *dout, const mk_real *qkv, const mk_real *att, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_rope_backward, t0, P(be)->inner->ops->attention_rope_backward(P(be)->inner, dqkv, datt, dout, qkv, att, B, T, D, H, theta));
}

static int p_attention_block_forward(mk_backend *be, mk_real *h, const mk_attn_block *a, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_block_forward, t0, P(be)->inner->ops->attention_block_forward(P(be)->inner, h, a, B, T, D, H, theta));
}

static int p_attention_block_backward(mk_backend *be, mk_real *dres, const mk_attn_block_grads *g, const mk_attn_block *a, int B, int T, int D, int H, double theta)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_block_backward, t0, P(be)->inner->ops->attention_block_backward(P(be)->inner, dres, g, a, B, T, D, H, theta));
}

static int p_moe_input_forward(mk_backend *be, mk_real *z, mk_real *ln, void *ln_op, mk_real *rstd, const mk_real *h, const mk_real *g, const mk_real *w_router, int N, int D, int E)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_moe_input_forward, t0, P(be)->inner->ops->moe_input_forward(P(be)->inner, z, ln, ln_op, rstd, h, g, w_router, N, D, E));
}

static int p_moe_input_backward(mk_backend *be, mk_real *dh, mk_real *dg, mk_real *dw_router, mk_real *dln, const mk_real *dz, const mk_real *h, const mk_real *ln, const void *ln_op, const mk_real *rstd, const mk_real *g, const mk_real *w_router, int N, int D, int E)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_moe_input_backward, t0, P(be)->inner->ops->moe_input_backward(P(be)->inner, dh, dg, dw_router, dln, dz, h, ln, ln_op, rstd, g, w_router, N, D, E));
}

static int p_attention_backward(mk_backend *be, mk_real *dqkv, mk_real *datt, const mk_real *dout, const mk_real *qkv, const mk_real *att, int B, int T, int D, int H)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_attention_backward, t0, P(be)->inner->ops->attention_backward(P(be)->inner, dqkv, datt, dout, qkv, att, B, T, D, H));
}

static int p_router_forward(mk_backend *be, mk_real *probs, mk_real *lse, int32_t *topk, mk_real *gates, int32_t *counts, mk_real *psum, int32_t *bad, const mk_real *z, int N, int E, int K, int norm_topk)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_router_forward, t0, P(be)->inner->ops->router_forward(P(be)->inner, probs, lse, topk, gates, counts, psum, bad, z, N, E, K, norm_topk));
}

static int p_router_backward(mk_backend *be, mk_real *dz, const mk_real *dgates, const mk_real *lbl_ds, mk_real zloss_scale, const mk_real *probs, const mk_real *lse, const int32_t *topk, const mk_real *gates, int N, int E, int K, int norm_topk)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_router_backward, t0, P(be)->inner->ops->router_backward(P(be)->inner, dz, dgates, lbl_ds, zloss_scale, probs, lse, topk, gates, N, E, K, norm_topk));
}

static int p_sequence_counts(mk_backend *be, int32_t *counts, const int32_t *topk, int B, int S, int E)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_sequence_counts, t0, P(be)->inner->ops->sequence_counts(P(be)->inner, counts, topk, B, S, E));
}

static int p_route_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row, const int32_t *topk, int N, int E, int K, int capacity)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_route_plan, t0, P(be)->inner->ops->route_plan(P(be)->inner, offs, row_slot, slot_row, topk, N, E, K, capacity));
}

static int p_ep_send_plan(mk_backend *be, int32_t *offs, int32_t *row_tok, int32_t *row_of, mk_ep_rec *rec, int32_t *back_of, const int32_t *topk, const int32_t *slot_row, const mk_real *gates, int N, int K, int El, int Pr)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_ep_send_plan, t0, P(be)->inner->ops->ep_send_plan(P(be)->inner, offs, row_tok, row_of, rec, back_of, topk, slot_row, gates, N, K, El, Pr));
}

static int p_ep_recv_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row, mk_real *gates, const mk_ep_rec *rec, int S, int El)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_ep_recv_plan, t0, P(be)->inner->ops->ep_recv_plan(P(be)->inner, offs, row_slot, slot_row, gates, rec, S, El));
}

static int p_ep_gate_grads(mk_backend *be, mk_real *dgates, const mk_real *dg, const int32_t *back_of, int n)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_ep_gate_grads, t0, P(be)->inner->ops->ep_gate_grads(P(be)->inner, dgates, dg, back_of, n));
}

static int p_permute_rows(mk_backend *be, mk_real *dst, const mk_real *src, const int32_t *row_slot, const mk_real *weights, int R, int K, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_permute_rows, t0, P(be)->inner->ops->permute_rows(P(be)->inner, dst, src, row_slot, weights, R, K, D));
}

static int p_unpermute_add(mk_backend *be, mk_real *dst, const mk_real *src, const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_unpermute_add, t0, P(be)->inner->ops->unpermute_add(P(be)->inner, dst, src, slot_row, weights, N, K, D));
}

static int p_combine_rows(mk_backend *be, mk_real *dst, const mk_real *base, const mk_real *src, const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_combine_rows, t0, P(be)->inner->ops->combine_rows(P(be)->inner, dst, base, src, slot_row, weights, N, K, D));
}

static int p_combine_backward_gates(mk_backend *be, mk_real *dgates, const mk_real *dout, const mk_real *y, const int32_t *slot_row, int N, int K, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_combine_backward_gates, t0, P(be)->inner->ops->combine_backward_gates(P(be)->inner, dgates, dout, y, slot_row, N, K, D));
}

static int p_combine_backward(mk_backend *be, mk_real *dgates, void *dy_op, const mk_real *dout, const mk_real *y, const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_combine_backward, t0, P(be)->inner->ops->combine_backward(P(be)->inner, dgates, dy_op, dout, y, slot_row, weights, N, K, D));
}

static int p_swiglu_forward(mk_backend *be, mk_real *h, const mk_real *a, const mk_real *b, size_t n)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_swiglu_forward, t0, P(be)->inner->ops->swiglu_forward(P(be)->inner, h, a, b, n));
}

static int p_swiglu_backward(mk_backend *be, mk_real *da, mk_real *db, const mk_real *dh, const mk_real *a, const mk_real *b, size_t n)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_swiglu_backward, t0, P(be)->inner->ops->swiglu_backward(P(be)->inner, da, db, dh, a, b, n));
}

static int p_cross_entropy(mk_backend *be, mk_real *losses, mk_real *dlogits, const mk_real *logits, const int32_t *targets, int N, int V, mk_real dscale)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_cross_entropy, t0, P(be)->inner->ops->cross_entropy(P(be)->inner, losses, dlogits, logits, targets, N, V, dscale));
}

static int p_adamw(mk_backend *be, mk_real *p, const mk_real *g, mk_real *m, mk_real *v, size_t n, mk_real gscale, double lr, double beta1, double beta2, double eps, double wd, long t)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_adamw, t0, P(be)->inner->ops->adamw(P(be)->inner, p, g, m, v, n, gscale, lr, beta1, beta2, eps, wd, t));
}

static void p_free(mk_backend *be, void *ptr) { P(be)->inner->ops->free(P(be)->inner, ptr); }

static int p_expert_ffn_forward(mk_backend *be, mk_real *y, mk_real *a1, mk_real *a3, mk_real *hact, mk_real *xp, const mk_rows_gather *x, const mk_real *w1, const mk_real *w3, const mk_real *w2, const int *offs_host, int E, int D, int F)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_expert_ffn_forward, t0, P(be)->inner->ops->expert_ffn_forward(P(be)->inner, y, a1, a3, hact, xp, x, w1, w3, w2, offs_host, E, D, F));
}

static int p_expert_ffn_backward(mk_backend *be, mk_real *dxp, mk_real *dw1, mk_real *dw3, mk_real *dw2, mk_real *dhact, mk_real *da1, mk_real *da3, mk_real *dy, const mk_rows_gather *dout, const mk_real *xp, const mk_real *a1, const mk_real *a3, const mk_real *hact, const mk_real *w1, const mk_real *w3, const mk_real *w2, const int *offs_host, int E, int D, int F)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_expert_ffn_backward, t0, P(be)->inner->ops->expert_ffn_backward(P(be)->inner, dxp, dw1, dw3, dw2, dhact, da1, da3, dy, dout, xp, a1, a3, hact, w1, w3, w2, offs_host, E, D, F));
}

static int p_output_forward(mk_backend *be, mk_real *losses, mk_real *logits, const mk_real *x, const mk_real *W, int tied, const int32_t *targets, int N, int V, int D, int train)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_output_forward, t0, P(be)->inner->ops->output_forward(P(be)->inner, losses, logits, x, W, tied, targets, N, V, D, train));
}

static int p_output_backward(mk_backend *be, mk_real *dx, mk_real *dW, const mk_real *x, const mk_real *W, int tied, mk_real *logits, int N, int V, int D, mk_real ce_scale)
{
    const double t0 = begin(P(be));
    return done(P(be), OP_output_backward, t0, P(be)->inner->ops->output_backward(P(be)->inner, dx, dW, x, W, tied, logits, N, V, D, ce_scale));
}

static int p_sync(mk_backend *be) { return P(be)->inner->ops->sync(P(be)->inner); }
static int p_comm_overlap(mk_backend *be, int sms) { return P(be)->inner->ops->comm_overlap(P(be)->inner, sms); }

static void p_destroy(mk_backend *be)
{
    if (!be) return;
    mk_backend_destroy(&P(be)->inner);
    free(be->impl);
    free(be);
}

int mk_backend_prof_create(mk_backend *inner, int timeline, mk_backend **out)
{
    *out = NULL;
    mk_backend *be = calloc(1, sizeof *be);
    prof *p = calloc(1, sizeof *p);
    if (!be || !p) {
        free(be);
        free(p);
        return MK_FAIL(MK_ERR_NOMEM, "profiling backend: out of memory");
    }
    if (timeline && (!inner->ops->mark || !inner->ops->mark_ms)) {
        free(be);
        free(p);
        return MK_FAIL(MK_ERR_USAGE, "MOEKIT_PROFILE=timeline: the %s backend has no device timestamps"
                       " (MOEKIT_PROFILE=1 times any backend)", inner->ops->name);
    }
    p->inner = inner;
    p->timeline = timeline;
    p->prev_end = -1;
    p->ops = *inner->ops;   /* name, host_memory, and anything not wrapped below */
    p->ops.alloc = p_alloc;
    p->ops.zero = p_zero;
    p->ops.copy = p_copy;
    p->ops.to_host = p_to_host;
    p->ops.from_host = p_from_host;
    p->ops.matmul = p_matmul;
    p->ops.linear_backward = inner->ops->linear_backward ? p_linear_backward : NULL;
    p->ops.grouped_matmul = p_grouped_matmul;
    p->ops.grouped_matmul_wgrad = p_grouped_matmul_wgrad;
    p->ops.add = p_add;
    p->ops.scale = p_scale;
    p->ops.sumsq = p_sumsq;
    p->ops.sumsq_ranges = inner->ops->sumsq_ranges ? p_sumsq_ranges : NULL;
    p->ops.nonfinite = p_nonfinite;
    p->ops.nonfinite_flag = inner->ops->nonfinite_flag ? p_nonfinite_flag : NULL;
    p->ops.embedding_forward = p_embedding_forward;
    p->ops.embedding_backward = p_embedding_backward;
    p->ops.rmsnorm_forward = p_rmsnorm_forward;
    p->ops.rmsnorm_backward = p_rmsnorm_backward;
    p->ops.rope_forward = p_rope_forward;
    p->ops.rope_backward = p_rope_backward;
    p->ops.attention_forward = p_attention_forward;
    p->ops.attention_backward = p_attention_backward;
    p->ops.attention_rope_forward = inner->ops->attention_rope_forward ? p_attention_rope_forward : NULL;
    p->ops.attention_rope_backward = inner->ops->attention_rope_backward ? p_attention_rope_backward : NULL;
    p->ops.attention_block_forward = inner->ops->attention_block_forward ? p_attention_block_forward : NULL;
    p->ops.attention_block_backward = inner->ops->attention_block_backward ? p_attention_block_backward : NULL;
    p->ops.moe_input_forward = inner->ops->moe_input_forward ? p_moe_input_forward : NULL;
    p->ops.moe_input_backward = inner->ops->moe_input_backward ? p_moe_input_backward : NULL;
    p->ops.router_forward = p_router_forward;
    p->ops.router_backward = p_router_backward;
    p->ops.route_plan = p_route_plan;
    p->ops.ep_send_plan = inner->ops->ep_send_plan ? p_ep_send_plan : NULL;
    p->ops.ep_recv_plan = inner->ops->ep_recv_plan ? p_ep_recv_plan : NULL;
    p->ops.ep_gate_grads = inner->ops->ep_gate_grads ? p_ep_gate_grads : NULL;
    p->ops.sequence_counts = p_sequence_counts;
    p->ops.permute_rows = p_permute_rows;
    p->ops.unpermute_add = p_unpermute_add;
    p->ops.combine_rows = p_combine_rows;
    p->ops.combine_backward_gates = p_combine_backward_gates;
    p->ops.combine_backward = inner->ops->combine_backward ? p_combine_backward : NULL;
    p->ops.swiglu_forward = p_swiglu_forward;
    p->ops.swiglu_backward = p_swiglu_backward;
    /* optional ops stay NULL when the inner backend has none */
    p->ops.expert_ffn_forward = inner->ops->expert_ffn_forward ? p_expert_ffn_forward : NULL;
    p->ops.expert_ffn_backward = inner->ops->expert_ffn_backward ? p_expert_ffn_backward : NULL;
    p->ops.output_forward = inner->ops->output_forward ? p_output_forward : NULL;
    p->ops.output_backward = inner->ops->output_backward ? p_output_backward : NULL;
    p->ops.cross_entropy = p_cross_entropy;
    p->ops.adamw = p_adamw;
    p->ops.free = p_free;
    p->ops.sync = p_sync;
    p->ops.comm_overlap = inner->ops->comm_overlap ? p_comm_overlap : NULL;
    p->ops.destroy = p_destroy;
    be->ops = &p->ops;
    be->impl = p;
    *out = be;
    return MK_OK;
}

void mk_backend_prof_reset(mk_backend *be)
{
    if (!be || be->ops->destroy != p_destroy) return;
    prof *p = P(be);
    if (p->timeline) (void)flush(p); /* what ran before the reset is not counted */
    memset(p->seconds, 0, sizeof p->seconds);
    memset(p->calls, 0, sizeof p->calls);
    memset(p->gap_ms, 0, sizeof p->gap_ms);
    p->gaps = p->gaps_skipped = 0;
}

void mk_backend_prof_report(mk_backend *be, FILE *f, long steps)
{
    if (!be || be->ops->destroy != p_destroy) return;
    prof *p = P(be);
    if (p->timeline) (void)flush(p);
    double total = 0, gaps = 0;
    for (int i = 0; i < OP_COUNT; i++) total += p->seconds[i], gaps += p->gap_ms[i];
    if (steps < 1) steps = 1;
    if (p->timeline && p->failed) {
        fprintf(f, "profile: backend %s, timeline: a timestamp could not be read; no profile\n", p->inner->ops->name);
        return;
    }
    if (p->timeline)
        fprintf(f, "profile: backend %s, timeline of %ld steps (no added waits): %.2f ms per step on the queue,"
                   " %.2f ms in ops, %.2f ms between them (%ld gaps timed, %ld left out: the profiler's reads)\n",
                p->inner->ops->name, steps, (1e3 * total + gaps) / steps, 1e3 * total / steps, gaps / steps, p->gaps,
                p->gaps_skipped);
    else
        fprintf(f, "profile: backend %s, %.2f ms of synchronised op time per step over %ld steps\n",
                p->inner->ops->name, 1e3 * total / steps, steps);
    int order[OP_COUNT];
    for (int i = 0; i < OP_COUNT; i++) order[i] = i;
    for (int i = 1; i < OP_COUNT; i++) /* by time, descending */
        for (int j = i; j > 0 && p->seconds[order[j]] > p->seconds[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int i = 0; i < OP_COUNT; i++) {
        const int o = order[i];
        if (!p->calls[o]) continue;
        if (p->timeline)
            fprintf(f, "profile: %-24s %9.3f ms/step %5.1f%% %7ld calls %9.3f ms/step idle before\n", op_names[o],
                    1e3 * p->seconds[o] / steps, total > 0 ? 100.0 * p->seconds[o] / total : 0.0,
                    p->calls[o] / steps, p->gap_ms[o] / steps);
        else
            fprintf(f, "profile: %-24s %9.3f ms/step %5.1f%% %7ld calls\n", op_names[o],
                    1e3 * p->seconds[o] / steps, total > 0 ? 100.0 * p->seconds[o] / total : 0.0,
                    p->calls[o] / steps);
    }
}
