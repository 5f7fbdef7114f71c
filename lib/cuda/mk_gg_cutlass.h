/* mk_gg_cutlass.h - the expert GEMMs of the fused expert FFN on CUTLASS's Hopper grouped
 * GEMM (TMA loads from a producer warp, mbarrier-driven stages, two consumer warpgroups on
 * wgmma): what torch._grouped_mm runs on an H100/H200.
 *
 * Built when configure finds CUTLASS (--with-cutlass=DIR; tests/gpu/fetch-deps.sh puts its
 * headers in .deps/cutlass); otherwise every call answers MK_ERR_INTERNAL and
 * mk_gg_cutlass_available() says 0, so the caller keeps its own kernels
 * (mk_grouped_gemm.h).
 *
 * Operands are bf16, accumulation fp32. Each expert with rows is one group of the launch;
 * experts without rows are left out (their outputs untouched). Every output tile is
 * computed by one block over the whole reduction in a fixed order (no split-k): the same
 * inputs give the same bits on every call.
 */
#ifndef MK_GG_CUTLASS_H
#define MK_GG_CUTLASS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mk_gg_cutlass mk_gg_cutlass;

/* 1 when the library was built with CUTLASS and the current device is an sm_90 GPU. */
int mk_gg_cutlass_available(void);

int mk_gg_cutlass_create(mk_gg_cutlass **out);
void mk_gg_cutlass_destroy(mk_gg_cutlass *g);

/* The persistent kernels launch one block per SM and each block works through a fixed
 * share of the tiles, so a block that finds its SM held by another stream's kernel (NCCL's
 * gradient sum) starts its share only once that kernel ends, and the launch waits for it.
 * With a margin of m they launch for m SMs fewer (0 to SMs - 1; 0 at creation). Each
 * tile is still one block's whole reduction: the same bits. */
int mk_gg_cutlass_set_sm_margin(mk_gg_cutlass *g, int margin);

/* For each expert e: C[r] = A[r] B_e (+ beta C[r]) over its rows offs_host[e]..offs_host[e+1]-1.
 * A: bf16 rows of lda elements (K used); B_e = B + e * b_stride elements: [K, N] with
 * rows of ldb, or [N, K] with rows of ldb when trans_b; C: rows of ldc elements, bf16 when
 * c_bf16 (beta must be 0 then), else fp32. Leading dimensions are multiples of 8 and the
 * pointers 16-byte aligned (TMA's rule; the caller checks). */
int mk_gg_cutlass_rows(mk_gg_cutlass *g, void *C, int c_bf16, int ldc, const void *A, int lda,
                       const void *B, size_t b_stride, int ldb, int trans_b, const int *offs_host,
                       int E, int K, int N, float beta);

/* For each expert e: dW_e += A_e^T dC_e, reducing over its rows: A [R, K] (rows of lda),
 * dC [R, N] (rows of ldc), both bf16; dW [E, K, N] fp32. An expert of many more rows than
 * the mean is reduced in chunks whose partial sums are added in chunk order (the same
 * order every call). */
int mk_gg_cutlass_wgrad(mk_gg_cutlass *g, float *dW, const void *A, int lda, const void *dC, int ldc,
                        const int *offs_host, int E, int K, int N);

#ifdef __cplusplus
}
#endif

#endif
