/* mk_backend_grouped.c - the composite ops of mk_backend.h as sequences of basic ops: grouped
 * expert GEMMs as one ops->matmul per expert, the expert FFN, the attention block, the MoE
 * block's input and the output layer, shared by the backends that have no fused kernel of
 * their own. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_backend.h"

#include <stddef.h>

#include "mk_error.h"

static int check_offs(const char *op, const int *offs, int E)
{
    if (E < 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: negative expert count %d", op, E);
    if (E > 0 && offs[0] < 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: offs[0] = %d", op, offs[0]);
    for (int e = 0; e < E; e++)
        if (offs[e + 1] < offs[e])
            return MK_FAIL(MK_ERR_INTERNAL, "%s: offs not sorted at expert %d (%d > %d)", op, e,
                           offs[e], offs[e + 1]);
    return MK_OK;
}

int mk_grouped_matmul_by_expert(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W,
                                const int *offs_host, int E, int K, int N, int trans_w, mk_real beta)
{
    MK_CHECK(check_offs("grouped_matmul", offs_host, E));
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        if (rows == 0) continue;
        MK_CHECK(be->ops->matmul(be, C + (size_t)offs_host[e] * N, A + (size_t)offs_host[e] * K,
                                 W + (size_t)e * K * N, rows, N, K, 0, trans_w, 1, beta));
    }
    return MK_OK;
}

int mk_grouped_matmul_wgrad_by_expert(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC,
                                      const int *offs_host, int E, int K, int N)
{
    MK_CHECK(check_offs("grouped_matmul_wgrad", offs_host, E));
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        if (rows == 0) continue;
        MK_CHECK(be->ops->matmul(be, dW + (size_t)e * K * N, A + (size_t)offs_host[e] * K,
                                 dC + (size_t)offs_host[e] * N, K, N, rows, 1, 0, 1, 1));
    }
    return MK_OK;
}

int mk_linear_backward_ops(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X, const mk_real *W,
                           const mk_real *dY, int M, int K, int N, mk_real beta)
{
    MK_CHECK(be->ops->matmul(be, dW, X, dY, K, N, M, 1, 0, 1, 1));
    return be->ops->matmul(be, dX, dY, W, M, K, N, 0, 1, 1, beta);
}

int mk_expert_ffn_forward_ops(mk_backend *be, mk_real *y, mk_real *a1, mk_real *a3, mk_real *hact,
                              mk_real *xp, const mk_rows_gather *x, const mk_real *w1,
                              const mk_real *w3, const mk_real *w2, const int *offs_host, int E,
                              int D, int F)
{
    const mk_backend_ops *o = be->ops;
    MK_CHECK(check_offs("expert_ffn_forward", offs_host, E));
    const size_t rows = E > 0 ? (size_t)offs_host[E] : 0;
    MK_CHECK(o->permute_rows(be, xp, x->src, x->row_slot, x->weights, (int)rows, x->K, D));
    MK_CHECK(o->grouped_matmul(be, a1, xp, w1, offs_host, E, D, F, 0, 0));
    MK_CHECK(o->grouped_matmul(be, a3, xp, w3, offs_host, E, D, F, 0, 0));
    MK_CHECK(o->swiglu_forward(be, hact, a1, a3, rows * F));
    MK_CHECK(o->grouped_matmul(be, y, hact, w2, offs_host, E, F, D, 0, 0));
    return MK_OK;
}

int mk_expert_ffn_backward_ops(mk_backend *be, mk_real *dxp, mk_real *dw1, mk_real *dw3,
                               mk_real *dw2, mk_real *dhact, mk_real *da1, mk_real *da3,
                               mk_real *dy, const mk_rows_gather *dout, const mk_real *xp,
                               const mk_real *a1, const mk_real *a3, const mk_real *hact,
                               const mk_real *w1, const mk_real *w3, const mk_real *w2,
                               const int *offs_host, int E, int D, int F)
{
    const mk_backend_ops *o = be->ops;
    MK_CHECK(check_offs("expert_ffn_backward", offs_host, E));
    const size_t rows = E > 0 ? (size_t)offs_host[E] : 0;
    MK_CHECK(o->permute_rows(be, dy, dout->src, dout->row_slot, dout->weights, (int)rows, dout->K, D));
    MK_CHECK(o->grouped_matmul(be, dhact, dy, w2, offs_host, E, D, F, 1, 0));
    MK_CHECK(o->grouped_matmul_wgrad(be, dw2, hact, dy, offs_host, E, F, D));
    MK_CHECK(o->swiglu_backward(be, da1, da3, dhact, a1, a3, rows * F));
    MK_CHECK(o->grouped_matmul(be, dxp, da1, w1, offs_host, E, F, D, 1, 0));
    MK_CHECK(o->grouped_matmul(be, dxp, da3, w3, offs_host, E, F, D, 1, 1));
    MK_CHECK(o->grouped_matmul_wgrad(be, dw1, xp, da1, offs_host, E, D, F));
    MK_CHECK(o->grouped_matmul_wgrad(be, dw3, xp, da3, offs_host, E, D, F));
    return MK_OK;
}

/* The backend's linear_backward where it has one, else the two matmul calls. */
static int linear_backward(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X, const mk_real *W,
                           const mk_real *dY, int M, int K, int N, mk_real beta)
{
    if (be->ops->linear_backward) return be->ops->linear_backward(be, dX, dW, X, W, dY, M, K, N, beta);
    return mk_linear_backward_ops(be, dX, dW, X, W, dY, M, K, N, beta);
}

int mk_attention_block_forward_ops(mk_backend *be, mk_real *h, const mk_attn_block *a, int B, int T,
                                   int D, int H, double theta)
{
    const mk_backend_ops *o = be->ops;
    const int N = B * T;
    MK_CHECK(o->rmsnorm_forward(be, a->ln1, a->rstd, a->x, a->norm, N, D));
    MK_CHECK(o->matmul(be, a->qkv, a->ln1, a->w_qkv, N, 3 * D, D, 0, 0, 1, 0));
    if (o->attention_rope_forward) {
        MK_CHECK(o->attention_rope_forward(be, a->atty, a->att, a->qkv, B, T, D, H, theta));
    } else {
        MK_CHECK(o->rope_forward(be, a->qkv, B, T, D, H, theta));
        MK_CHECK(o->attention_forward(be, a->atty, a->att, a->qkv, B, T, D, H));
    }
    MK_CHECK(o->matmul(be, h, a->atty, a->w_out, N, D, D, 0, 0, 1, 0));
    return o->add(be, h, h, a->x, (size_t)N * D);
}

int mk_attention_block_backward_ops(mk_backend *be, mk_real *dres, const mk_attn_block_grads *g,
                                    const mk_attn_block *a, int B, int T, int D, int H, double theta)
{
    const mk_backend_ops *o = be->ops;
    const int N = B * T;
    MK_CHECK(linear_backward(be, g->datty, g->dw_out, a->atty, a->w_out, dres, N, D, D, 0));
    if (o->attention_rope_backward) {
        MK_CHECK(o->attention_rope_backward(be, g->dqkv, g->datt, g->datty, a->qkv, a->att, B, T, D, H, theta));
    } else {
        MK_CHECK(o->attention_backward(be, g->dqkv, g->datt, g->datty, a->qkv, a->att, B, T, D, H));
        MK_CHECK(o->rope_backward(be, g->dqkv, B, T, D, H, theta));
    }
    MK_CHECK(linear_backward(be, g->dln, g->dw_qkv, a->ln1, a->w_qkv, g->dqkv, N, D, 3 * D, 0));
    return o->rmsnorm_backward(be, dres, g->dnorm, g->dln, a->x, a->norm, a->rstd, N, D);
}

int mk_moe_input_forward_ops(mk_backend *be, mk_real *z, mk_real *ln, mk_real *rstd, const mk_real *h,
                             const mk_real *g, const mk_real *w_router, int N, int D, int E)
{
    MK_CHECK(be->ops->rmsnorm_forward(be, ln, rstd, h, g, N, D));
    return be->ops->matmul(be, z, ln, w_router, N, E, D, 0, 0, 1, 0);
}

int mk_moe_input_backward_ops(mk_backend *be, mk_real *dh, mk_real *dg, mk_real *dw_router, mk_real *dln,
                              const mk_real *dz, const mk_real *h, const mk_real *ln, const mk_real *rstd,
                              const mk_real *g, const mk_real *w_router, int N, int D, int E)
{
    MK_CHECK(linear_backward(be, dln, dw_router, ln, w_router, dz, N, D, E, 1));
    return be->ops->rmsnorm_backward(be, dh, dg, dln, h, g, rstd, N, D);
}

int mk_output_forward_ops(mk_backend *be, mk_real *losses, mk_real *logits, const mk_real *x,
                          const mk_real *W, int tied, const int32_t *targets, int N, int V, int D,
                          int train)
{
    const mk_backend_ops *o = be->ops;
    MK_CHECK(o->matmul(be, logits, x, W, N, V, D, 0, tied, 1, 0));
    /* softmax - onehot in place for the backward, which applies ce_scale as its GEMMs'
     * alpha: one pass over [N, V] instead of two. */
    return o->cross_entropy(be, losses, train ? logits : NULL, logits, targets, N, V, 1);
}

int mk_output_backward_ops(mk_backend *be, mk_real *dx, mk_real *dW, const mk_real *x,
                           const mk_real *W, int tied, mk_real *logits, int N, int V, int D,
                           mk_real ce_scale)
{
    const mk_backend_ops *o = be->ops;
    MK_CHECK(o->matmul(be, dx, logits, W, N, D, V, 0, !tied, ce_scale, 0));
    if (tied) return o->matmul(be, dW, logits, x, V, D, N, 1, 0, ce_scale, 1);
    return o->matmul(be, dW, x, logits, D, V, N, 1, 0, ce_scale, 1);
}
