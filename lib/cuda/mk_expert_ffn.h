/* mk_expert_ffn.h - the expert FFN of the CUDA backend's bf16 mode, fused (CUDA C++ only).
 *
 * ops->expert_ffn_forward and _backward of mk_backend.h: the routed experts' SwiGLU over
 * rows grouped by expert, with bf16 operands end to end inside the op. The token rows are
 * rounded to bf16 once, then gathered into the input rows (no fp32 copy of the permuted
 * rows is ever written); the output-gradient rows are gathered and rounded in one pass
 * (each row times its gate weight, rounded once), or read as the caller gathered them
 * (mk_rows_gather.rows_op: the backend's combine_backward); the weights are
 * rounded once per op, and every product runs on the bf16 grouped GEMMs of
 * mk_grouped_gemm.cu or, where built and on an sm_90 GPU, CUTLASS's (mk_gg_cutlass.h;
 * MOEKIT_NO_CUTLASS=1 keeps ours). The state the backward needs (the input rows xp, a1, a3
 * and hact) is kept as bf16 in the first half of the model's fp32 buffers of the same
 * shape; the backward's scratch (dhact, da1, da3) likewise. (The CUTLASS path keeps gate
 * and up side by side as a13 [R][2F] in all of a1's buffer, and da13 in da1's; da3 is not
 * used, and a3's buffer keeps the forward's rounded weights for the backward where they fit
 * in it, so that the backward does not round the same weights again.) The outputs y and
 * dxp are expert rows in the bf16 mode's format (bf16 rows of D in the first half of the
 * buffer, as the products' epilogues round them: half the bytes for the GEMM to write and
 * for the combine and gate gradients to read); weight gradients accumulate in fp32.
 *
 * Deterministic: every kernel writes each output element from one thread, in a fixed order.
 */
#ifndef MK_EXPERT_FFN_H
#define MK_EXPERT_FFN_H

extern "C" {
#include "mk_backend.h" /* mk_rows_gather; the CUDA build has mk_real = float */
}

typedef struct mk_cuda_ffn mk_cuda_ffn;

/* Workspace of one backend (bf16 copies of inputs and weights), grown on demand. */
int mk_cuda_ffn_create(mk_cuda_ffn **out);
void mk_cuda_ffn_destroy(mk_cuda_ffn *f); /* NULL is fine */
/* SMs the grouped GEMMs leave free from now on (mk_gg_cutlass_set_sm_margin; our own
 * kernels are not persistent and need none). */
int mk_cuda_ffn_set_sm_margin(mk_cuda_ffn *f, int margin);

/* 1 when the fused op takes this shape (d_model and hidden size multiples of 8, at most
 * MK_GG_MAX_EXPERTS experts, 16-byte aligned buffers); 0: the caller runs the op sequence. */
int mk_cuda_ffn_supported(int E, int D, int F);

/* xp (16-byte aligned, [R, D] floats) receives the input rows gathered as x says, as bf16. */
int mk_cuda_ffn_forward(mk_cuda_ffn *f, float *y, float *a1, float *a3, float *hact, float *xp,
                        const mk_rows_gather *x, const float *w1, const float *w3, const float *w2,
                        const int *offs_host, int E, int D, int F);
/* xp as the forward left it; the output-gradient rows are gathered from dout. */
int mk_cuda_ffn_backward(mk_cuda_ffn *f, float *dxp, float *dw1, float *dw3, float *dw2,
                         float *dhact, float *da1, float *da3, const mk_rows_gather *dout,
                         const float *xp, const float *a1, const float *a3, const float *hact,
                         const float *w1, const float *w3, const float *w2, const int *offs_host,
                         int E, int D, int F);

#endif
