/* mk_gemm_residual.cu - D = A B + C in one cuBLASLt call (see mk_gemm_residual.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdlib.h>

#include <cublasLt.h>

#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_gemm_residual.h"

#define LT_WORKSPACE (32u << 20) /* what cuBLAS itself gives Hopper GEMMs */

struct mk_gemm_residual {
    cublasLtHandle_t lt;
    mk_devbuf ws;
    /* the plan of the last shape: descriptors and the algorithm the heuristic chose */
    int M, N, K, align, ready, none;
    size_t wsb;                  /* the workspace the algorithm asks for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

static void plan_free(mk_gemm_residual *g)
{
    if (g->op) cublasLtMatmulDescDestroy(g->op);
    if (g->la) cublasLtMatrixLayoutDestroy(g->la);
    if (g->lb) cublasLtMatrixLayoutDestroy(g->lb);
    if (g->lc) cublasLtMatrixLayoutDestroy(g->lc);
    g->op = NULL, g->la = g->lb = g->lc = NULL;
    g->ready = g->none = 0;
}

extern "C" int mk_gemm_residual_create(mk_gemm_residual **out)
{
    *out = NULL;
    mk_gemm_residual *g = (mk_gemm_residual *)calloc(1, sizeof *g);
    if (!g) return MK_FAIL(MK_ERR_NOMEM, "cuda: out of host memory (GEMM with residual)");
    cublasStatus_t s = cublasLtCreate(&g->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: cublasLtCreate: %s", cublasGetStatusString(s));
    }
    *out = g;
    return MK_OK;
}

extern "C" void mk_gemm_residual_destroy(mk_gemm_residual *g)
{
    if (!g) return;
    plan_free(g);
    mk_devbuf_release(&g->ws);
    cublasLtDestroy(g->lt);
    free(g);
}

/* The largest power of two up to 256 that divides every pointer: the heuristic's default
 * assumes 256-byte alignment and would pick algorithms the buffers cannot feed. */
static int alignment(const void *a, const void *b, const void *c, const void *d)
{
    const uintptr_t u = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d;
    int al = 256;
    while (al > 1 && (u & (uintptr_t)(al - 1))) al /= 2;
    return al;
}

/* Column-major view, as cuBLAS sees row-major matrices: D^T (N x M) = B^T A^T + C^T. */
static int plan(mk_gemm_residual *g, int M, int N, int K, int align, const char *what)
{
    plan_free(g);
    g->M = M, g->N = N, g->K = K, g->align = align;
    BLAS_CHECK(cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), what);
    const cublasOperation_t nt = CUBLAS_OP_N;
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &nt, sizeof nt), what);
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt), what);
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&g->la, CUDA_R_16BF, N, K, N), what);
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&g->lb, CUDA_R_16BF, K, M, K), what);
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&g->lc, CUDA_R_32F, N, M, N), what);
    cublasLtMatmulPreference_t pref;
    BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), what);
    const size_t wsb = LT_WORKSPACE;
    const uint32_t al = (uint32_t)align;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                                            sizeof wsb);
    const cublasLtMatmulPreferenceAttributes_t aligns[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al, sizeof al);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, g->la, g->lb, g->lc, g->lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    g->ready = 1;
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && found == 0)) {
        g->none = 1; /* the caller's two-step path, from now on for this shape */
        return MK_OK;
    }
    BLAS_CHECK(s, what);
    g->algo = res.algo;
    g->wsb = res.workspaceSize;
    return MK_OK;
}

extern "C" int mk_gemm_residual_run(mk_gemm_residual *g, float *D, const float *C, const void *A, const void *B, int M,
                                    int N, int K, int *done, const char *what)
{
    *done = 0;
    if (M <= 0 || N <= 0 || K <= 0) return MK_OK;
    const int al = alignment(A, B, C, D);
    if (!g->ready || g->M != M || g->N != N || g->K != K || g->align != al) MK_CHECK(plan(g, M, N, K, al, what));
    if (g->none) return MK_OK;
    if (g->wsb) MK_CHECK(mk_devbuf_reserve(&g->ws, g->wsb, "GEMM with residual: workspace"));
    const float one = 1.0f;
    BLAS_CHECK(cublasLtMatmul(g->lt, g->op, &one, B, g->la, A, g->lb, &one, C, g->lc, D, g->lc, &g->algo, g->ws.p,
                            g->wsb, 0),
             what);
    *done = 1;
    return MK_OK;
}
