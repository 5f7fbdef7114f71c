/* mk_flash_attn.h - fused causal attention on bf16 tensor cores (the CUDA backend's bf16
 * path for head size 64).
 *
 * The scores never reach memory: each block of 64 queries streams the keys in blocks of
 * 64 with an online softmax (FlashAttention-2's forward). The backward recomputes the
 * probabilities from the saved log-sum-exp, and runs as two kernels -- one owns a block of
 * keys and accumulates dK and dV over the queries, the other owns a block of queries and
 * accumulates dQ over the keys -- so that every output element has one writer and the
 * result is the same bits on every run (FlashAttention-2 adds dQ with atomics instead).
 * On an sm_90 GPU the bf16 path's kernels run on warpgroup MMA (wgmma); elsewhere, and
 * with MOEKIT_NO_WGMMA=1, on mma.sync.
 *
 * Layout is the backend's: qkv row-major [B*T, 3D] (q at column h*64, k at D + h*64, v at
 * 2D + h*64), out and dout [B*T, D], dqkv like qkv. Q, K, V, dO and P are rounded to bf16
 * for the products; accumulation, softmax statistics and outputs are fp32.
 */
#ifndef MK_FLASH_ATTN_H
#define MK_FLASH_ATTN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MK_FLASH_HD 64

#ifdef __CUDACC__
/* RoPE on one pair (a, b) = columns 2i, 2i + 1 of a head, cp = (cos, sin) of its angle,
 * sign 1 forward and -1 backward, in double: the one rotation of the backend's rope ops
 * and of the fused attention below, so that both give the same bits. */
__device__ __forceinline__ void mk_rope_rotate(float &a, float &b, const double *cp, double sign)
{
    const double c = cp[0], s = sign * cp[1], x0 = a, x1 = b;
    a = (float)(x0 * c - x1 * s);
    b = (float)(x0 * s + x1 * c);
}
#endif

/* Floats of per-layer state the forward keeps for the backward: the log-sum-exp of every
 * row (B*H*T), a copy of the output per head (B*H*T*64) and Q, K, V rounded to bf16. */
size_t mk_flash_attn_state_floats(int B, int T, int H);

/* Floats of work area the backward needs: the row sums of dO * O and dO rounded to bf16. */
size_t mk_flash_attn_work_floats(int B, int T, int H);

/* 1 when the kernels take this shape (head size 64), 0 when the caller must use its
 * general path. Buffers must be 16-byte aligned (MK_ERR_INTERNAL otherwise). */
int mk_flash_attn_supported(int T, int D, int H);

/* out = softmax(scale Q K^T, causal) V per head; state: mk_flash_attn_state_floats. With
 * rope_cs (NULL: none), the (cos, sin) table [T][32][2] of RoPE's angles for head size 64,
 * q and k are rotated as they are rounded to bf16 (the state's copy): RoPE and attention
 * in one pass over qkv, which itself is not changed. */
int mk_flash_attn_forward(float *out, float *state, const float *qkv, const double *rope_cs, int B, int T,
                          int D, int H);

/* dqkv (every column written) from dout and the forward's state (its bf16 copy of qkv is
 * what the products use; qkv itself is not read); work: mk_flash_attn_work_floats. (RoPE's
 * backward stays a pass of its own: rotating dq and dk in these kernels' epilogues, where
 * the angle table's loads are not hidden, cost more than the pass, measured on an H200.) */
int mk_flash_attn_backward(float *dqkv, float *work, const float *dout, const float *qkv,
                           const float *state, int B, int T, int D, int H);

/* The attention block's path (bf16 tensors end to end; buffers 16-byte aligned, D a
 * multiple of 8). lse holds mk_flash_attn_lse_floats floats (the log-sum-exp the backward
 * needs). */
size_t mk_flash_attn_lse_floats(int B, int T, int H);

/* out [B*T, D] bf16 from qkv [B*T, 3D] bf16; with rope_cs, q and k of qkv are rotated in
 * place first (the backward reads the rotated qkv). wgmma 1: the kernel on Hopper's
 * warpgroup MMA (only where mk_grouped_gemm_wgmma_available() says the GPU and the build
 * have it); 0: mma.sync. The two sum in different orders: results agree to rounding. */
int mk_flash_attn_forward_bf16(void *out, float *lse, void *qkv, const double *rope_cs, int B, int T,
                               int D, int H, int wgmma);

/* dqkv [B*T, 3D] fp32 (every column written) from dout, out and qkv in bf16 as the
 * forward above saw them; or, with dqkvb, the same in bf16 into dqkvb (dqkv unused), dq
 * and dk turned back by RoPE's inverse rotation first when rope_cs is set: the bits of
 * dqkv then mk_flash_rope_round(..., -1). delta: mk_flash_attn_lse_floats floats of work
 * area; wgmma as for the forward. */
int mk_flash_attn_backward_bf16(float *dqkv, void *dqkvb, const double *rope_cs, float *delta, const void *dout,
                                const void *out, const void *qkv, const float *lse, int B, int T, int D, int H,
                                int wgmma);

/* out [N, 3D] bf16 = qkv [N, 3D] with q and k rotated by RoPE (sign 1; -1: the inverse
 * rotation, for dqkv), every column rounded to bf16, in one pass (head size 64). */
int mk_flash_rope_round(void *out, const float *qkv, const double *rope_cs, int N, int T, int D,
                        double sign);

#ifdef __cplusplus
}
#endif

#endif
