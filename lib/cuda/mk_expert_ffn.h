/* mk_expert_ffn.h - the expert FFN of the CUDA backend's bf16 mode, fused (CUDA C++ only).
 *
 * The routed experts' SwiGLU over rows grouped by expert, as ops->expert_ffn_forward and
 * _backward of mk_backend.h, with bf16 operands end to end inside the op: w1 and w3 go into
 * one [D, 2F] matrix per expert so that the gate and up projections are one grouped GEMM,
 * the SwiGLU reads and writes bf16, and the saved state (a1 holds the [R, 2F] gate|up
 * products, hact the [R, F] activations, both as bf16) stays in the model's fp32 buffers,
 * which are large enough. Inputs (xp, dy) and outputs (y, dxp, weight gradients) are fp32 at
 * the op's edges; weight gradients are accumulated into fp32 from bf16 GEMM results.
 */
#ifndef MK_EXPERT_FFN_H
#define MK_EXPERT_FFN_H

#include <cublas_v2.h>

typedef struct mk_cuda_ffn mk_cuda_ffn;

/* State for one backend: workspace and pointer tables, grown on demand. */
int mk_cuda_ffn_create(cublasHandle_t blas, mk_cuda_ffn **out);
void mk_cuda_ffn_destroy(mk_cuda_ffn *f);

int mk_cuda_ffn_forward(mk_cuda_ffn *f, float *y, float *a1, float *hact, const float *xp,
                        const float *w1, const float *w3, const float *w2, const int *offs_host,
                        int E, int D, int F);
int mk_cuda_ffn_backward(mk_cuda_ffn *f, float *dxp, float *dw1, float *dw3, float *dw2,
                         float *dhact, float *da1, const float *dy, const float *xp,
                         const float *a1, const float *hact, const float *w1, const float *w3,
                         const float *w2, const int *offs_host, int E, int D, int F);

#endif
