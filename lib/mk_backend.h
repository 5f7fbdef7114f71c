/* mk_backend.h - the compute backend interface (DESIGN section 5).
 *
 * The model (mk_model.c) is written once, against this table of operations; a backend
 * implements them for its memory and its hardware. The CPU backend (mk_backend_cpu.c,
 * fp32, BLAS, OpenMP) is the reference; the CUDA backend implements the same table.
 *
 * Conventions every implementation keeps:
 * - Pointers passed to ops are backend memory from ops->alloc (device memory on a GPU).
 *   Arguments named *_host are ordinary host memory.
 * - Matrices are row-major; weights are [in, out] (y = x @ W).
 * - N tokens of a micro-batch are B sequences of T positions, token n at position n % T.
 * - Activation gradients are written (=) unless the op says it accumulates; parameter
 *   gradients always accumulate (+=) so gradient accumulation over micro-steps is free.
 * - Every op is deterministic: the same inputs give the same bits on every call (no atomics,
 *   fixed reduction orders), so runs repeat exactly.
 * - Every op returns MK_OK or an MK_ERR_* code (mk_error.h).
 */
#ifndef MK_BACKEND_H
#define MK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mk_real.h"

/* The CUDA backend and NCCL are in this library: a --with-cuda build of the fp32 library.
 * Programs that compile the library's sources themselves without the CUDA objects (the
 * float64 check library, fault-injection and fuzz builds) leave them out with MK_CPU_ONLY. */
#if defined(MK_HAVE_CUDA) && !defined(MK_REAL_DOUBLE) && !defined(MK_CPU_ONLY)
#define MK_WITH_CUDA 1
#endif

typedef struct mk_backend mk_backend;

/* One routing choice of an expert-parallel send row, as it travels between ranks: the local
 * expert at the destination (-1: none in this position) and its gate. No padding bytes
 * (for either mk_real), so every byte sent is written. */
typedef struct mk_ep_rec {
    mk_real g;
    int32_t id, pad;
} mk_ep_rec;

/* Timestamp slots of mk_backend_ops.mark. */
#define MK_MARKS 8192

/* Rows gathered from token rows as permute_rows does: row r is w * src[row_slot[r] / K, :]
 * with w = weights[row_slot[r]], or 1 when weights is NULL (the fused expert FFN's input).
 * src holds N rows (row_slot[r] / K < N). src_op, when not NULL, holds the same rows in the
 * backend's GEMM operand format (moe_input_forward's ln_op): a backend that rounds its
 * operands may gather from it instead of rounding src again. rows_op, when not NULL, holds
 * the gathered rows themselves (all R of them, weights applied) in that format, as
 * combine_backward writes them: a backend may read them instead of gathering at all (src,
 * row_slot and weights stay valid for one that does not). */
typedef struct mk_rows_gather {
    const mk_real *src;
    const int32_t *row_slot;
    const mk_real *weights;
    int K;
    int N;
    const void *src_op;
    const void *rows_op;
} mk_rows_gather;

/* One layer's attention block (attention_block_forward / _backward): its input x [N, D]
 * (the residual stream), parameters (RMSNorm gain [D], w_qkv [D, 3D], w_out [D, D]) and
 * the state its forward leaves for its backward. ln1 [N, D], qkv [N, 3D], att (the size
 * attention_forward's att has) and atty [N, D] are the op's: what they hold between the
 * forward and the backward is the backend's choice (a backend that rounds its GEMM
 * operands may keep them rounded); rstd [N] is RMSNorm's. */
typedef struct mk_attn_block {
    const mk_real *x, *norm, *w_qkv, *w_out;
    mk_real *ln1, *rstd, *qkv, *att, *atty;
} mk_attn_block;

/* The attention block backward's parameter gradients (accumulated, +=) and its scratch
 * (datty [N, D], dqkv [N, 3D], datt as att, dln [N, D]). */
typedef struct mk_attn_block_grads {
    mk_real *dnorm, *dw_qkv, *dw_out;
    mk_real *datty, *dqkv, *datt, *dln;
} mk_attn_block_grads;

typedef struct mk_backend_ops {
    const char *name;
    int host_memory;    /* 1 when backend memory is ordinary host memory (the CPU backend) */

    /* --- memory ------------------------------------------------------------------- */
    int (*alloc)(mk_backend *be, size_t bytes, void **out);      /* zero-filled */
    void (*free)(mk_backend *be, void *p);                       /* NULL is fine */
    int (*zero)(mk_backend *be, void *p, size_t bytes);
    int (*copy)(mk_backend *be, void *dst, const void *src, size_t bytes);
    int (*to_host)(mk_backend *be, void *dst_host, const void *src, size_t bytes);
    int (*from_host)(mk_backend *be, void *dst, const void *src_host, size_t bytes);

    /* --- dense algebra ------------------------------------------------------------ */
    /* C[M,N] = alpha * op(A) @ op(B) + beta * C. op(A) is [M,K]: A is [M,K], or [K,M]
     * when trans_a. op(B) is [K,N]: B is [K,N], or [N,K] when trans_b. */
    int (*matmul)(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *B,
                  int M, int N, int K, int trans_a, int trans_b, mk_real alpha, mk_real beta);

    /* Backward of a projection Y [M, N] = X [M, K] W [K, N], both products over the one dY
     * [M, N]: dW += X^T dY (accumulates), then dX = dY W^T + beta dX. The same results as
     * those two matmul calls (mk_linear_backward_ops); a backend that rounds its operands
     * rounds dY once for both. NULL: the model makes the two calls. */
    int (*linear_backward)(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X,
                           const mk_real *W, const mk_real *dY, int M, int K, int N, mk_real beta);

    /* Per-expert GEMMs over rows grouped by expert: rows offs[e]..offs[e+1]-1 of A use
     * W[e]. W is [E, K, N] (C_e = A_e @ W[e]), or [E, N, K] when trans_w (C_e = A_e @ W[e]^T).
     * A is [R, K], C is [R, N], R = offs_host[E]. C = result + beta * C. */
    int (*grouped_matmul)(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W,
                          const int *offs_host, int E, int K, int N, int trans_w, mk_real beta);
    /* dW[e] += A_e^T @ dC_e for every expert; dW is [E, K, N], A [R, K], dC [R, N]. */
    int (*grouped_matmul_wgrad)(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC,
                                const int *offs_host, int E, int K, int N);

    /* y[i] = a[i] + b[i]; y may alias a or b. */
    int (*add)(mk_backend *be, mk_real *y, const mk_real *a, const mk_real *b, size_t n);
    /* x[i] *= s. */
    int (*scale)(mk_backend *be, mk_real *x, size_t n, mk_real s);
    /* *out_host = sum_i x[i]^2, accumulated in double. */
    int (*sumsq)(mk_backend *be, const mk_real *x, size_t n, double *out_host);
    /* Optional: out_host[i] = sumsq of the len[i] values at base + off[i], for i < count,
     * the bits of count sumsq calls with one wait for the device instead of count (the
     * gradient norm under expert parallelism sums two kinds of tensor in 25 runs at
     * bench-s). NULL: the caller calls sumsq per range. */
    int (*sumsq_ranges)(mk_backend *be, const mk_real *base, const size_t *off, const size_t *len, int count,
                        double *out_host);
    /* *out_host = 1 if any x[i] is NaN or Inf, else 0. */
    int (*nonfinite)(mk_backend *be, const mk_real *x, size_t n, int *out_host);
    /* Optional (NULL: nonfinite is used): *flag (int32 backend memory) becomes 1 if any
     * x[i] is NaN or Inf and is left as it was otherwise; the host does not wait. */
    int (*nonfinite_flag)(mk_backend *be, const mk_real *x, size_t n, int32_t *flag);

    /* --- embedding ---------------------------------------------------------------- */
    /* out[n, :] = wte[tokens[n], :]; tokens is int32 backend memory. */
    int (*embedding_forward)(mk_backend *be, mk_real *out, const int32_t *tokens,
                             const mk_real *wte, int N, int D);
    /* dwte[tokens[n], :] += dout[n, :] (deterministic: fixed order per vocabulary row).
     * tokens hold what the last embedding_forward given them saw, if any (a backend may
     * start copying them there). */
    int (*embedding_backward)(mk_backend *be, mk_real *dwte, const int32_t *tokens,
                              const mk_real *dout, int N, int D, int V);

    /* --- RMSNorm: out = x / sqrt(mean(x^2) + 1e-5) * g ------------------------------- */
    int (*rmsnorm_forward)(mk_backend *be, mk_real *out, mk_real *rstd, const mk_real *x,
                           const mk_real *g, int N, int D);
    /* dx += (accumulates: the residual stream's gradient is already there), dg += . */
    int (*rmsnorm_backward)(mk_backend *be, mk_real *dx, mk_real *dg, const mk_real *dout,
                            const mk_real *x, const mk_real *g, const mk_real *rstd, int N, int D);

    /* --- attention ---------------------------------------------------------------- */
    /* In place on the q and k columns of qkv [N, 3D] (q: 0..D-1, k: D..2D-1, head h at
     * h*hd within each): rotate pair (2i, 2i+1) of each head by pos * theta^(-2i/hd),
     * pos = n % T. rope_backward applies the inverse rotation to dqkv. */
    int (*rope_forward)(mk_backend *be, mk_real *qkv, int B, int T, int D, int H, double theta);
    int (*rope_backward)(mk_backend *be, mk_real *dqkv, int B, int T, int D, int H, double theta);
    /* Causal softmax attention with scale 1/sqrt(hd). out [N, D] (head h at cols h*hd),
     * att [B, H, T, T] keeps the probabilities for the backward (zero above the diagonal). */
    int (*attention_forward)(mk_backend *be, mk_real *out, mk_real *att, const mk_real *qkv,
                             int B, int T, int D, int H);
    /* dqkv = (written, all 3D columns), datt is scratch of the size of att. */
    int (*attention_backward)(mk_backend *be, mk_real *dqkv, mk_real *datt, const mk_real *dout,
                              const mk_real *qkv, const mk_real *att, int B, int T, int D, int H);
    /* Optional, one op each: rope_forward(qkv) then attention_forward, and
     * attention_backward then rope_backward(dqkv) of that state. After the forward, qkv's q
     * and k may be rotated or not (the backend's choice: only this backward reads them).
     * NULL: the model calls the two ops. */
    int (*attention_rope_forward)(mk_backend *be, mk_real *out, mk_real *att, mk_real *qkv, int B,
                                  int T, int D, int H, double theta);
    int (*attention_rope_backward)(mk_backend *be, mk_real *dqkv, mk_real *datt,
                                   const mk_real *dout, const mk_real *qkv, const mk_real *att,
                                   int B, int T, int D, int H, double theta);

    /* Optional, the attention block as one op each (mk_attention_block_forward_ops is its
     * semantics): h = x + attention(RoPE(RMSNorm(x) w_qkv)) w_out. The backward takes
     * dres = dL/dh and leaves dL/dx there (the residual path's dL/dh plus the block's; it
     * accumulates, like rmsnorm_backward). A backend with these keeps the block's inner
     * activations in its own format (the CUDA bf16 mode: bf16, so no pass of their own
     * rounds them for the GEMMs). NULL: the model runs the op sequence. */
    int (*attention_block_forward)(mk_backend *be, mk_real *h, const mk_attn_block *a, int B, int T,
                                   int D, int H, double theta);
    int (*attention_block_backward)(mk_backend *be, mk_real *dres, const mk_attn_block_grads *g,
                                    const mk_attn_block *a, int B, int T, int D, int H,
                                    double theta);

    /* --- router ------------------------------------------------------------------- */
    /* From logits z [N, E] (always fp32 or wider): probs = softmax(z) [N, E], lse [N] the
     * log-sum-exp of each row, topk [N, K] int32 the K experts with the largest probs in
     * descending order (ties to the lower index), gates [N, K] = their probs (renormalised
     * to sum 1 when norm_topk), counts [E] int32 = tokens that chose each expert among their
     * top-K, psum [E] = sum over tokens of probs (in a fixed order: the CPU's is token
     * order). A logit that is not finite (NaN, +-Inf): with bad NULL the op fails with
     * MK_ERR_NUMERIC; else it writes 1 to bad (backend memory, one int32; 0 when all are
     * finite), keeps every topk entry a valid expert index and returns MK_OK, so that the
     * caller reads the flag with the statistics it copies to the host anyway (no wait for
     * the GPU of its own). */
    int (*router_forward)(mk_backend *be, mk_real *probs, mk_real *lse, int32_t *topk,
                          mk_real *gates, int32_t *counts, mk_real *psum, int32_t *bad,
                          const mk_real *z, int N, int E, int K, int norm_topk);
    /* Optional, the MoE block's input as one op each (mk_moe_input_forward_ops is its
     * semantics): ln = RMSNorm(h) g [N, D] and the router logits z = ln w_router [N, E],
     * with a copy of ln in the backend's GEMM operand format in ln_op (room for N x D
     * elements of two bytes; the CUDA bf16 mode: bf16), which the backward and the expert
     * FFN's gather (mk_rows_gather.src_op) read instead of rounding ln again. The backward
     * takes dz and dln (dL/dln from the experts): dw_router += ln^T dz, dln += dz w_router^T,
     * then RMSNorm's backward into dh and dg (both accumulate, as rmsnorm_backward's).
     * NULL: the model runs the op sequence and passes no operand copy. */
    int (*moe_input_forward)(mk_backend *be, mk_real *z, mk_real *ln, void *ln_op, mk_real *rstd,
                             const mk_real *h, const mk_real *g, const mk_real *w_router, int N,
                             int D, int E);
    int (*moe_input_backward)(mk_backend *be, mk_real *dh, mk_real *dg, mk_real *dw_router,
                              mk_real *dln, const mk_real *dz, const mk_real *h, const mk_real *ln,
                              const void *ln_op, const mk_real *rstd, const mk_real *g,
                              const mk_real *w_router, int N, int D, int E);

    /* dz [N, E] (written) from: dgates [N, K] (dL/dgate), the LBL term lbl_ds [E] added to
     * dL/dprobs of every token (may be NULL), and the z-loss term zloss_scale * lse^2
     * (dz += zloss_scale * 2 * lse * probs). */
    int (*router_backward)(mk_backend *be, mk_real *dz, const mk_real *dgates,
                           const mk_real *lbl_ds, mk_real zloss_scale, const mk_real *probs,
                           const mk_real *lse, const int32_t *topk, const mk_real *gates,
                           int N, int E, int K, int norm_topk);

    /* --- token dispatch (permute) and combine --------------------------------------- */
    /* Counting sort of the N*K routing choices by expert. Choice s = n*K + j (token n, its
     * j-th expert). Rows are ordered by expert, then by s; an expert keeps at most
     * capacity rows (0 = no limit), later choices are dropped. Outputs: offs [E+1] int32
     * (rows of expert e are offs[e]..offs[e+1]-1; offs[E] = R kept rows), row_slot [N*K]
     * (the choice s of each row; entries past R unused), slot_row [N*K] (the row of choice
     * s, or -1 when dropped). A choice naming no expert 0..E-1 is an internal error,
     * reported by this call or, on a GPU, by the next call that waits for it (to_host,
     * sync), which is before anything reads the offsets on the host. */
    int (*route_plan)(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row,
                      const int32_t *topk, int N, int E, int K, int capacity);
    /* counts [B, E] int32 (written): how many of sequence b's S choices topk[b*S .. b*S+S-1]
     * (S = tokens x K) picked expert e, every choice counted (capacity drops none here).
     * The per-domain routing statistics are sums of these rows. */
    int (*sequence_counts)(mk_backend *be, int32_t *counts, const int32_t *topk, int B, int S,
                           int E);
    /* Expert parallelism over P ranks of El experts each (expert x lives on rank x / El), the
     * sender's plan for N tokens' choices c = n*K + j (expert topk[c], kept where
     * slot_row[c] >= 0): one send row per (token, rank holding any of its kept choices),
     * grouped by rank, tokens in order within a rank. Writes offs [P+1] (rank q's rows are
     * offs[q]..offs[q+1]-1, offs[P] = R rows), row_tok [N*P] (row r's token n as n*P + q:
     * permute_rows with K = P gathers the rows; entries past R unused), row_of [N*P] (the
     * row of token n for rank q, or -1: unpermute_add with K = P sums them back), rec
     * [N*P, K] (row r's K records: choice j's local expert at the rank or -1, and its gate;
     * rows past R unused) and back_of [N*K] (where choice c's record is, r*K + j, or -1 when
     * dropped). */
    int (*ep_send_plan)(mk_backend *be, int32_t *offs, int32_t *row_tok, int32_t *row_of,
                        mk_ep_rec *rec, int32_t *back_of, const int32_t *topk,
                        const int32_t *slot_row, const mk_real *gates, int N, int K, int El, int P);
    /* The receiver's plan for S arrived records: grouped by local expert 0..El-1 in arrival
     * order within an expert, as route_plan groups choices, records of expert -1 left out.
     * offs [El+2]: offs[0..El] as route_plan's, offs[El+1] the number of records naming
     * neither -1 nor 0..El-1 (the caller reports them); row_slot [S] (entries past offs[El]
     * unused), slot_row [S] (-1 for the left-out records), gates [S] each record's gate. */
    int (*ep_recv_plan)(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row,
                        mk_real *gates, const mk_ep_rec *rec, int S, int El);
    /* dgates[c] = dg[back_of[c]], or 0 where back_of[c] < 0, for c < n: the gate gradients
     * that came back to the sender, in its choices' order. */
    int (*ep_gate_grads)(mk_backend *be, mk_real *dgates, const mk_real *dg, const int32_t *back_of,
                         int n);
    /* dst[r, :] = w * src[row_slot[r] / K, :] for r < R, with w = weights[row_slot[r]] or 1
     * when weights is NULL. (Forward: gather tokens to expert rows. Backward of combine.) */
    int (*permute_rows)(mk_backend *be, mk_real *dst, const mk_real *src, const int32_t *row_slot,
                        const mk_real *weights, int R, int K, int D);
    /* dst[n, :] += sum_j w * src[slot_row[n*K+j], :] over kept choices j = 0..K-1 in order,
     * w = weights[n*K+j] or 1 when NULL. (Forward: combine. Backward of permute.) */
    int (*unpermute_add)(mk_backend *be, mk_real *dst, const mk_real *src, const int32_t *slot_row,
                         const mk_real *weights, int N, int K, int D);
    /* dst[n, :] = base[n, :] + sum_j w * src[slot_row[n*K+j], :] as unpermute_add sums
     * (base may be dst: accumulate; NULL: from 0), where src [R, D] is the output of the
     * expert FFN (its y, or its dxp) in the backend's expert-row format (see
     * expert_ffn_forward). (Forward: the residual plus the combine of y. Backward: the
     * expert input rows' gradient back to the tokens.) */
    int (*combine_rows)(mk_backend *be, mk_real *dst, const mk_real *base, const mk_real *src,
                        const int32_t *slot_row, const mk_real *weights, int N, int K, int D);
    /* dgates[n*K+j] = dot(dout[n, :], y[slot_row[n*K+j], :]), 0 for dropped choices; y is
     * expert rows in the backend's expert-row format. */
    int (*combine_backward_gates)(mk_backend *be, mk_real *dgates, const mk_real *dout,
                                  const mk_real *y, const int32_t *slot_row, int N, int K, int D);
    /* Optional, the combine's backward in one pass over dout: dgates as
     * combine_backward_gates, and the expert FFN's output-gradient rows dy_op, row
     * slot_row[n*K+j] = weights[n*K+j] * dout[n, :] for every kept choice (the rows
     * permute_rows gathers with these weights), in the backend's GEMM operand format (room
     * for R x D elements of four bytes), for expert_ffn_backward to read through
     * mk_rows_gather.rows_op. NULL: the model runs combine_backward_gates and the expert
     * FFN gathers its rows itself. */
    int (*combine_backward)(mk_backend *be, mk_real *dgates, void *dy_op, const mk_real *dout,
                            const mk_real *y, const int32_t *slot_row, const mk_real *weights,
                            int N, int K, int D);

    /* --- SwiGLU: h = silu(a) * b ---------------------------------------------------- */
    int (*swiglu_forward)(mk_backend *be, mk_real *h, const mk_real *a, const mk_real *b, size_t n);
    /* da, db written. */
    int (*swiglu_backward)(mk_backend *be, mk_real *da, mk_real *db, const mk_real *dh,
                           const mk_real *a, const mk_real *b, size_t n);

    /* --- expert FFN, fused (optional) --------------------------------------------- */
    /* y = (silu(xp W1) * (xp W3)) W2 per expert, rows grouped by expert as in grouped_matmul
     * (R = offs_host[E] rows; W1, W3 [E, D, F], W2 [E, F, D]), where the input rows xp
     * [R, D] are gathered from the tokens as x says (permute_rows); the same result as
     * mk_expert_ffn_forward_ops. xp, a1, a3, hact [R, F] hold what the backward needs, in a
     * format of the backend's choosing (a backend that rounds its operands can gather
     * straight into the rounded form). y [R, D] is written in the backend's expert-row
     * format, which only combine_rows and combine_backward_gates read: fp32 [R, D] unless
     * the backend says otherwise (the CUDA backend's bf16 mode: bf16 rows when D is a
     * multiple of 8, in the first half of the buffer), so a backend may store its outputs
     * at the precision it computes them. NULL: the model runs the op sequence (whose rows
     * are fp32). */
    int (*expert_ffn_forward)(mk_backend *be, mk_real *y, mk_real *a1, mk_real *a3, mk_real *hact,
                              mk_real *xp, const mk_rows_gather *x, const mk_real *w1,
                              const mk_real *w3, const mk_real *w2, const int *offs_host, int E,
                              int D, int F);
    /* dxp written (expert rows, in the format y has), dw1, dw3, dw2 accumulated (+=) from
     * the output gradient rows dy [R, D], gathered as dout says, and the forward's state;
     * dy, dhact, da1, da3 are scratch. w1, w3, w2 hold the values the forward of that
     * state saw (a backend may keep what it derived from them in the state). */
    int (*expert_ffn_backward)(mk_backend *be, mk_real *dxp, mk_real *dw1, mk_real *dw3,
                               mk_real *dw2, mk_real *dhact, mk_real *da1, mk_real *da3,
                               mk_real *dy, const mk_rows_gather *dout, const mk_real *xp,
                               const mk_real *a1, const mk_real *a3, const mk_real *hact,
                               const mk_real *w1, const mk_real *w3, const mk_real *w2,
                               const int *offs_host, int E, int D, int F);

    /* --- output layer, fused (optional) ------------------------------------------ */
    /* logits [N, V] = x W^T with tied (W = wte [V, D]), else x W (W = lm_head [D, V]);
     * losses as cross_entropy. The logits buffer is the op's work area: the logits may be
     * kept there in a backend's format (the CUDA bf16 mode: bf16), and when train it (or
     * the backend) then keeps what output_backward needs, until the next output_forward;
     * the op sequence keeps fp32 softmax - onehot there. NULL: the op sequence. */
    int (*output_forward)(mk_backend *be, mk_real *losses, mk_real *logits, const mk_real *x,
                          const mk_real *W, int tied, const int32_t *targets, int N, int V,
                          int D, int train);
    /* With dlogits = ce_scale (softmax - onehot) of the training forward: dx = dlogits W
     * (tied) or dlogits W^T (written), dW += dlogits^T x (tied) or x^T dlogits. */
    int (*output_backward)(mk_backend *be, mk_real *dx, mk_real *dW, const mk_real *x,
                           const mk_real *W, int tied, mk_real *logits, int N, int V, int D,
                           mk_real ce_scale);

    /* --- loss ---------------------------------------------------------------------- */
    /* losses[n] = logsumexp(logits[n]) - logits[n, targets[n]], 0 where targets[n] < 0
     * (ignored). When dlogits is not NULL it gets dscale * (softmax(logits[n]) - onehot)
     * (0 rows for ignored targets); dlogits may alias logits. */
    int (*cross_entropy)(mk_backend *be, mk_real *losses, mk_real *dlogits, const mk_real *logits,
                         const int32_t *targets, int N, int V, mk_real dscale);

    /* --- optimizer ----------------------------------------------------------------- */
    /* AdamW step t (1-based, for bias correction) on n elements, with the gradient
     * g = gscale * g_stored (rounded to mk_real, as scale() followed by this op would; 1:
     * as stored; gradient clipping passes its factor here instead of rewriting g):
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p). */
    int (*adamw)(mk_backend *be, mk_real *p, const mk_real *g, mk_real *m, mk_real *v, size_t n,
                 mk_real gscale, double lr, double beta1, double beta2, double eps, double wd, long t);

    /* Wait until every op issued so far has finished (timing; a no-op on the CPU). */
    int (*sync)(mk_backend *be);
    /* Optional (NULL: nothing to adjust): sms > 0 while a collective started on another
     * stream (the gradient sums of an overlapped backward), holding up to sms SMs, may run
     * beside the ops issued next; 0 once it has been waited for. A backend whose kernels
     * hold every SM for their whole run (persistent GEMMs) leaves those SMs meanwhile. */
    int (*comm_overlap)(mk_backend *be, int sms);

    /* Optional (NULL: none; the profiler's timeline mode needs both): timestamps taken
     * where the device's queue has got to, so a profile can see idle time without
     * synchronising. mark records timestamp i (0 <= i < MK_MARKS) once the work issued so
     * far has run, without waiting; mark_ms waits until mark b has been reached and gives
     * the milliseconds from mark a to mark b (both recorded, a before b). A slot may be
     * recorded again once read. */
    int (*mark)(mk_backend *be, int i);
    int (*mark_ms)(mk_backend *be, int a, int b, double *ms);

    void (*destroy)(mk_backend *be);
} mk_backend_ops;

struct mk_backend {
    const mk_backend_ops *ops;
    void *impl;     /* the backend's own state */
};

/* grouped_matmul and grouped_matmul_wgrad as one ops->matmul per expert with rows, for
 * backends without a grouped kernel (offs checked: non-negative, sorted). */
int mk_grouped_matmul_by_expert(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W,
                                const int *offs_host, int E, int K, int N, int trans_w, mk_real beta);
int mk_grouped_matmul_wgrad_by_expert(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC,
                                      const int *offs_host, int E, int K, int N);

/* linear_backward as two matmul calls (the semantics of ops->linear_backward). */
int mk_linear_backward_ops(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X, const mk_real *W,
                           const mk_real *dY, int M, int K, int N, mk_real beta);

/* The expert FFN as a sequence of grouped_matmul, swiglu and grouped_matmul_wgrad calls
 * (the semantics of ops->expert_ffn_forward / _backward, for backends without them). */
int mk_expert_ffn_forward_ops(mk_backend *be, mk_real *y, mk_real *a1, mk_real *a3, mk_real *hact,
                              mk_real *xp, const mk_rows_gather *x, const mk_real *w1,
                              const mk_real *w3, const mk_real *w2, const int *offs_host, int E,
                              int D, int F);
int mk_expert_ffn_backward_ops(mk_backend *be, mk_real *dxp, mk_real *dw1, mk_real *dw3,
                               mk_real *dw2, mk_real *dhact, mk_real *da1, mk_real *da3,
                               mk_real *dy, const mk_rows_gather *dout, const mk_real *xp,
                               const mk_real *a1, const mk_real *a3, const mk_real *hact,
                               const mk_real *w1, const mk_real *w3, const mk_real *w2,
                               const int *offs_host, int E, int D, int F);

/* The attention block as rmsnorm, matmul, attention_rope (or rope and attention), matmul
 * and add calls, and their backward (the semantics of ops->attention_block_forward /
 * _backward, for backends without them). */
int mk_attention_block_forward_ops(mk_backend *be, mk_real *h, const mk_attn_block *a, int B, int T,
                                   int D, int H, double theta);
int mk_attention_block_backward_ops(mk_backend *be, mk_real *dres, const mk_attn_block_grads *g,
                                    const mk_attn_block *a, int B, int T, int D, int H, double theta);

/* The MoE block's input as rmsnorm_forward and matmul calls (ln_op is not written), and its
 * backward as linear_backward (or two matmul calls) and rmsnorm_backward: the semantics of
 * ops->moe_input_forward / _backward, for backends without them. */
int mk_moe_input_forward_ops(mk_backend *be, mk_real *z, mk_real *ln, mk_real *rstd, const mk_real *h,
                             const mk_real *g, const mk_real *w_router, int N, int D, int E);
int mk_moe_input_backward_ops(mk_backend *be, mk_real *dh, mk_real *dg, mk_real *dw_router, mk_real *dln,
                              const mk_real *dz, const mk_real *h, const mk_real *ln, const mk_real *rstd,
                              const mk_real *g, const mk_real *w_router, int N, int D, int E);

/* The output layer as matmul + cross_entropy calls (the semantics of ops->output_forward
 * / _backward, for backends without them). */
int mk_output_forward_ops(mk_backend *be, mk_real *losses, mk_real *logits, const mk_real *x,
                          const mk_real *W, int tied, const int32_t *targets, int N, int V, int D,
                          int train);
int mk_output_backward_ops(mk_backend *be, mk_real *dx, mk_real *dW, const mk_real *x,
                           const mk_real *W, int tied, mk_real *logits, int N, int V, int D,
                           mk_real ce_scale);

/* The CPU reference backend. threads <= 0 means OpenMP's default. */
int mk_backend_cpu_create(int threads, mk_backend **out);

/* Destroy a backend made by any *_create; *be becomes NULL. NULL is fine. */
void mk_backend_destroy(mk_backend **be);

#endif
