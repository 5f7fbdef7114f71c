/* mk_grouped_gemm.h - the expert GEMMs of the CUDA backend's bf16 mode as one kernel each.
 *
 * grouped_matmul and grouped_matmul_wgrad of mk_backend.h (rows grouped by expert, one
 * weight matrix per expert) on bf16 tensor cores with fp32 accumulation, over the
 * backend's fp32 storage: operands are rounded to bf16 as they are staged into shared
 * memory, so the products are those of cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF. One launch
 * covers every expert, however unbalanced the routing: cuBLAS 13 has no grouped call for
 * fp32 operands, and one call per expert costs a launch and a half-empty wave each.
 *
 * Every output element has one writer and sums its products in a fixed order: the same
 * inputs give the same bits on every call.
 */
#ifndef MK_GROUPED_GEMM_H
#define MK_GROUPED_GEMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Experts one call takes (the expert table travels as a kernel argument). */
#define MK_GG_MAX_EXPERTS 256

/* 1 when the kernels take this call: E <= MK_GG_MAX_EXPERTS, K and N multiples of 4 and
 * every pointer 16-byte aligned; 0 when the caller must use its general path. */
int mk_grouped_gemm_supported(int E, int K, int N, const void *p1, const void *p2, const void *p3);

/* C[r] = A[r] @ W[e] (W[e] is [K, N]), or A[r] @ W[e]^T (W[e] is [N, K]) when trans_w, for
 * the rows offs_host[e]..offs_host[e+1]-1 of expert e; C = result + beta * C (C is not read
 * when beta is 0). offs_host is host memory, checked sorted. */
int mk_grouped_gemm_rows(float *C, const float *A, const float *W, const int *offs_host, int E,
                         int K, int N, int trans_w, float beta);

/* Floats of workspace the weight gradient needs for these offsets (0: none). Experts of
 * more than 2048 rows are reduced in chunks of 2048 rows by separate blocks, whose partial
 * sums are added in chunk order by a second kernel: fixed order, and no block runs much
 * longer than the rest however unbalanced the routing. */
size_t mk_grouped_gemm_wgrad_ws_floats(const int *offs_host, int E, int K, int N);

/* dW[e] += A_e^T @ dC_e for every expert (dW [E, K, N], A [R, K], dC [R, N]); ws holds
 * ws_floats device floats (mk_grouped_gemm_wgrad_ws_floats). */
int mk_grouped_gemm_wgrad(float *dW, float *ws, size_t ws_floats, const float *A, const float *dC,
                          const int *offs_host, int E, int K, int N);

/* Which kernels run the bf16 products: mma.sync (any GPU from sm_80), or Hopper's
 * warpgroup MMA, two warpgroups reading their operands straight from shared memory (an
 * sm_90 GPU and a library built with sm_90a code: mk_grouped_gemm_wgmma_available). Each
 * is deterministic (fixed tiles, one writer per element, a fixed order of products); their
 * bits differ from each other's in the last places. */
typedef enum mk_gg_kernel { MK_GG_MMA = 0, MK_GG_WGMMA = 1 } mk_gg_kernel;

/* 1 when MK_GG_WGMMA can run on the current device (it launches a probe kernel once). */
int mk_grouped_gemm_wgmma_available(void);

/* The same with bf16 operands (A, W, dC: __nv_bfloat16 arrays, 16-byte aligned), copied
 * to shared memory with cp.async in a four-stage pipeline: what the fused expert FFN
 * (mk_expert_ffn.cu) runs. K and N multiples of 8. The rows form writes C as bf16 when
 * c_bf16 (beta must be 0 then), else fp32 with C = result + beta * C. With A2 and W2 (else
 * NULL) it adds a second product over K2 more columns in the same pass: C = A W[e] +
 * A2 W2[e] (A2 [R, K2]; W2[e] [K2, N], or [N, K2] when trans_w). */
int mk_grouped_gemm_bf16_supported(int E, int K, int N);
int mk_grouped_gemm_rows_bf16(mk_gg_kernel kern, void *C, int c_bf16, const void *A, const void *W, const void *A2,
                              const void *W2, int K2, const int *offs_host, int E, int K, int N,
                              int trans_w, float beta);
int mk_grouped_gemm_wgrad_bf16(mk_gg_kernel kern, float *dW, float *ws, size_t ws_floats, const void *A, const void *dC,
                               const int *offs_host, int E, int K, int N);

#ifdef __cplusplus
}
#endif

#endif
