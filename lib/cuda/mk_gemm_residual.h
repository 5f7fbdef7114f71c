/* mk_gemm_residual.h - D = A B + C in one cuBLASLt call: bf16 operands, fp32 C and D.
 *
 * The attention block's output projection adds the residual stream in the GEMM's epilogue
 * (C read, D written once) instead of writing the product and adding it in a pass of its
 * own. The algorithm for a shape and alignment is chosen once and kept: the same algorithm
 * on every call, so the same bits (cuBLASLt's reductions, where an algorithm splits K, are
 * deterministic).
 */
#ifndef MK_GEMM_RESIDUAL_H
#define MK_GEMM_RESIDUAL_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mk_gemm_residual mk_gemm_residual;

int mk_gemm_residual_create(mk_gemm_residual **out);
void mk_gemm_residual_destroy(mk_gemm_residual *g);

/* D[M, N] = A[M, K] B[K, N] + C[M, N], all row-major; A and B bf16, C and D fp32 (D may be
 * C). *done = 0 when cuBLASLt offers no algorithm for it: nothing was written, and the
 * caller does the product and the addition itself. */
int mk_gemm_residual_run(mk_gemm_residual *g, float *D, const float *C, const void *A, const void *B, int M, int N,
                         int K, int *done, const char *what);

#ifdef __cplusplus
}
#endif

#endif
