/* mk_flash_attn.h - fused causal attention on bf16 tensor cores (the CUDA backend's bf16
 * path for head size 64).
 *
 * The scores never reach memory: each block of 64 queries streams the keys in blocks of
 * 64 with an online softmax (FlashAttention-2's forward). The backward recomputes the
 * probabilities from the saved log-sum-exp, and runs as two kernels -- one owns a block of
 * keys and accumulates dK and dV over the queries, the other owns a block of queries and
 * accumulates dQ over the keys -- so that every output element has one writer and the
 * result is the same bits on every run (FlashAttention-2 adds dQ with atomics instead).
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

/* Floats of per-layer state the forward keeps for the backward: the log-sum-exp of every
 * row (B*H*T), a copy of the output per head (B*H*T*64) and Q, K, V rounded to bf16. */
size_t mk_flash_attn_state_floats(int B, int T, int H);

/* Floats of work area the backward needs: the row sums of dO * O and dO rounded to bf16. */
size_t mk_flash_attn_work_floats(int B, int T, int H);

/* 1 when the kernels take this shape (head size 64), 0 when the caller must use its
 * general path. Buffers must be 16-byte aligned (MK_ERR_INTERNAL otherwise). */
int mk_flash_attn_supported(int T, int D, int H);

/* out = softmax(scale Q K^T, causal) V per head; state: mk_flash_attn_state_floats. */
int mk_flash_attn_forward(float *out, float *state, const float *qkv, int B, int T, int D, int H);

/* dqkv (every column written) from dout and the forward's state (its bf16 copy of qkv is
 * what the products use; qkv itself is not read); work: mk_flash_attn_work_floats. */
int mk_flash_attn_backward(float *dqkv, float *work, const float *dout, const float *qkv,
                           const float *state, int B, int T, int D, int H);

#ifdef __cplusplus
}
#endif

#endif
