/* mk_expert_ffn.cu - the fused bf16 expert FFN of the CUDA backend: see mk_expert_ffn.h.
 *
 * Six grouped GEMMs per layer and step (cublasGemmGroupedBatchedEx, bf16 in and out, fp32
 * accumulate; one group per expert with rows), which is the form this cuBLAS runs fastest
 * for unequal expert sizes (tests/gpu/gemm_bench.cu: fp32 operands or fp32 output are
 * refused for grouped calls, and a loop of one GEMM per expert is 2-5x slower). With R
 * rows, D = d_model, F = the expert hidden size:
 *
 *   forward   a13[R, 2F] = x W13        (W13 = [w1 | w3] per expert, [D, 2F])
 *             h = silu(a13[:, :F]) * a13[:, F:]
 *             y[R, D]   = h W2
 *   backward  dh = dy W2^T; dW2 += h^T dy; da13 = swiglu'(dh); dx = da13 W13^T;
 *             dW13 += x^T da13 (split back into dw1 and dw3)
 *
 * The pointer tables of all grouped calls of one op go to the device in one copy. Every
 * kernel here writes each output element from one thread; cuBLAS runs without atomics
 * (the backend's handle): the op gives the same bits on every run.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_expert_ffn.h"

typedef __nv_bfloat16 bf16;

#define FFN_MAX_E 1024     /* experts per op; more: the caller uses the op sequence */
#define FFN_CALLS 4        /* grouped GEMMs of one op at most */
#define TPB 256
#define MAX_BLOCKS (1u << 20)

typedef struct gcall {
    int G;
    cublasOperation_t ta[FFN_MAX_E], tb[FFN_MAX_E];
    int m[FFN_MAX_E], n[FFN_MAX_E], k[FFN_MAX_E], lda[FFN_MAX_E], ldb[FFN_MAX_E], ldc[FFN_MAX_E];
    int size[FFN_MAX_E];
    float alpha[FFN_MAX_E], beta[FFN_MAX_E];
    const void *A[FFN_MAX_E], *B[FFN_MAX_E];
    void *C[FFN_MAX_E];
    size_t table;          /* offset of this call's A|B|C pointers in the device table */
} gcall;

struct mk_cuda_ffn {
    cublasHandle_t blas;
    int grouped;           /* 1 grouped calls work, 0 not tried yet, -1 refused: loop */
    void *ws;
    size_t ws_bytes;
    void **dtab;           /* device pointer table */
    size_t dtab_n;
    const void *htab[FFN_CALLS * 3 * FFN_MAX_E];
    gcall call[FFN_CALLS];
};

#define CU_CHECK(call, what)                                                               \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: %s", (what), cudaGetErrorString(e_)); \
    } while (0)

#define LAUNCH(kernel, n, what, ...)                                                       \
    do {                                                                                   \
        size_t b_ = ((size_t)(n) + TPB - 1) / TPB;                                         \
        kernel<<<(unsigned)(b_ > MAX_BLOCKS ? MAX_BLOCKS : (b_ ? b_ : 1)), TPB>>>(__VA_ARGS__); \
        CU_CHECK(cudaGetLastError(), what);                                                \
    } while (0)

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* ------------------------------------------------------------------ kernels */

__global__ static void k_to_bf16(bf16 *y, const float *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ static void k_to_f32(float *y, const bf16 *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] = __bfloat162float(x[i]);
}

__global__ static void k_add_bf16(float *y, const bf16 *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] += __bfloat162float(x[i]);
}

/* W13[e, d, :] = [w1[e, d, :], w3[e, d, :]] as bf16 */
__global__ static void k_pack_w13(bf16 *w13, const float *w1, const float *w3, size_t n, int F)
{
    GRID_STRIDE(i, n)
    {
        const size_t row = i / (2 * F);
        const int j = (int)(i % (2 * F));
        const float v = j < F ? w1[row * F + j] : w3[row * F + (j - F)];
        w13[i] = __float2bfloat16_rn(v);
    }
}

/* dw1 += dW13[:, :, :F], dw3 += dW13[:, :, F:] */
__global__ static void k_add_w13(float *dw1, float *dw3, const bf16 *dw13, size_t n, int F)
{
    GRID_STRIDE(i, n)
    {
        const size_t row = i / F, f = i % F;
        dw1[i] += __bfloat162float(dw13[row * 2 * F + f]);
        dw3[i] += __bfloat162float(dw13[row * 2 * F + F + f]);
    }
}

/* expf, as in the backend's fp32 SwiGLU: exp(-a) overflowing to inf gives 0 correctly. */
__device__ static float sigmoidf_(float a) { return 1.0f / (1.0f + expf(-a)); }

__global__ static void k_swiglu_fwd(bf16 *h, const bf16 *a13, size_t n, int F)
{
    GRID_STRIDE(i, n)
    {
        const size_t r = i / F, f = i % F;
        const float a = __bfloat162float(a13[r * 2 * F + f]), b = __bfloat162float(a13[r * 2 * F + F + f]);
        h[i] = __float2bfloat16_rn(a * sigmoidf_(a) * b);
    }
}

__global__ static void k_swiglu_bwd(bf16 *da13, const bf16 *dh, const bf16 *a13, size_t n, int F)
{
    GRID_STRIDE(i, n)
    {
        const size_t r = i / F, f = i % F;
        const float a = __bfloat162float(a13[r * 2 * F + f]), b = __bfloat162float(a13[r * 2 * F + F + f]);
        const float g = __bfloat162float(dh[i]), sg = sigmoidf_(a);
        da13[r * 2 * F + f] = __float2bfloat16_rn(g * b * (sg + a * sg * (1 - sg)));
        da13[r * 2 * F + F + f] = __float2bfloat16_rn(g * a * sg);
    }
}

/* ------------------------------------------------------------------ grouped GEMMs */

static void gcall_start(gcall *c) { c->G = 0; }

/* One group of a column-major call C = op(A) op(B), C m x n, k the inner size. */
static void gcall_add(gcall *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const bf16 *A, int lda, const bf16 *B, int ldb, bf16 *C, int ldc)
{
    const int i = c->G++;
    c->ta[i] = ta, c->tb[i] = tb, c->m[i] = m, c->n[i] = n, c->k[i] = k;
    c->lda[i] = lda, c->ldb[i] = ldb, c->ldc[i] = ldc, c->size[i] = 1;
    c->alpha[i] = 1.0f, c->beta[i] = 0.0f;
    c->A[i] = A, c->B[i] = B, c->C[i] = C;
}

/* All calls' pointer tables in one upload (a synchronous copy on the default stream, so it
 * waits for the previous op's GEMMs, which read the same table). */
static int upload_tables(mk_cuda_ffn *f, int ncalls)
{
    size_t n = 0;
    for (int c = 0; c < ncalls; c++) {
        gcall *g = &f->call[c];
        g->table = n;
        memcpy(f->htab + n, g->A, g->G * sizeof(void *));
        memcpy(f->htab + n + g->G, g->B, g->G * sizeof(void *));
        memcpy(f->htab + n + 2 * g->G, g->C, g->G * sizeof(void *));
        n += 3 * (size_t)g->G;
    }
    if (n > f->dtab_n) {
        if (f->dtab) CU_CHECK(cudaFree(f->dtab), "expert FFN: pointer table");
        f->dtab = NULL;
        f->dtab_n = 0;
        CU_CHECK(cudaMalloc((void **)&f->dtab, FFN_CALLS * 3 * FFN_MAX_E * sizeof(void *)),
                 "expert FFN: pointer table");
        f->dtab_n = FFN_CALLS * 3 * FFN_MAX_E;
    }
    if (n) CU_CHECK(cudaMemcpy(f->dtab, f->htab, n * sizeof(void *), cudaMemcpyHostToDevice),
                    "expert FFN: pointer table upload");
    return MK_OK;
}

static int gcall_run(mk_cuda_ffn *f, const gcall *c, const char *what)
{
    if (c->G == 0) return MK_OK;
    if (f->grouped >= 0) {
        void **t = f->dtab + c->table;
        cublasStatus_t st = cublasGemmGroupedBatchedEx(
            f->blas, c->ta, c->tb, c->m, c->n, c->k, c->alpha, (const void *const *)t, CUDA_R_16BF,
            c->lda, (const void *const *)(t + c->G), CUDA_R_16BF, c->ldb, c->beta,
            (void *const *)(t + 2 * c->G), CUDA_R_16BF, c->ldc, c->G, c->size, CUBLAS_COMPUTE_32F);
        if (st == CUBLAS_STATUS_SUCCESS) {
            f->grouped = 1;
            return MK_OK;
        }
        if (st != CUBLAS_STATUS_NOT_SUPPORTED && !(st == CUBLAS_STATUS_INVALID_VALUE && f->grouped == 0))
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: cuBLAS grouped GEMM: %s", what,
                           cublasGetStatusString(st));
        f->grouped = -1;   /* this cuBLAS has no grouped bf16 GEMM: one call per expert */
    }
    for (int i = 0; i < c->G; i++) {
        cublasStatus_t st = cublasGemmEx(f->blas, c->ta[i], c->tb[i], c->m[i], c->n[i], c->k[i],
                                         &c->alpha[i], c->A[i], CUDA_R_16BF, c->lda[i], c->B[i],
                                         CUDA_R_16BF, c->ldb[i], &c->beta[i], c->C[i], CUDA_R_16BF,
                                         c->ldc[i], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: cuBLAS: %s", what, cublasGetStatusString(st));
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ workspace */

static int ws_get(mk_cuda_ffn *f, size_t bytes, void **out)
{
    if (bytes > f->ws_bytes) {
        if (f->ws) {
            CU_CHECK(cudaDeviceSynchronize(), "expert FFN: workspace");
            CU_CHECK(cudaFree(f->ws), "expert FFN: workspace");
        }
        f->ws = NULL;
        f->ws_bytes = 0;
        cudaError_t e = cudaMalloc(&f->ws, bytes);
        if (e != cudaSuccess) {
            f->ws = NULL;
            return MK_FAIL(MK_ERR_NOMEM, "cuda: expert FFN workspace of %zu bytes: %s", bytes,
                           cudaGetErrorString(e));
        }
        f->ws_bytes = bytes;
    }
    *out = f->ws;
    return MK_OK;
}

/* bf16 buffers carved from the workspace, 256-byte aligned. */
static bf16 *carve(char **at, size_t elems)
{
    bf16 *p = (bf16 *)*at;
    *at += (elems * sizeof(bf16) + 255) & ~(size_t)255;
    return p;
}

static int check_offs(const int *offs, int E)
{
    if (E < 0 || E > FFN_MAX_E) return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: %d experts", E);
    if (E > 0 && offs[0] != 0) return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: offs[0] = %d", offs[0]);
    for (int e = 0; e < E; e++)
        if (offs[e + 1] < offs[e])
            return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: offs not sorted at expert %d", e);
    return MK_OK;
}

/* ------------------------------------------------------------------ ops */

int mk_cuda_ffn_create(cublasHandle_t blas, mk_cuda_ffn **out)
{
    *out = (mk_cuda_ffn *)calloc(1, sizeof **out);
    if (!*out) return MK_FAIL(MK_ERR_NOMEM, "expert FFN: out of host memory");
    (*out)->blas = blas;
    return MK_OK;
}

void mk_cuda_ffn_destroy(mk_cuda_ffn *f)
{
    if (!f) return;
    cudaDeviceSynchronize();
    cudaFree(f->ws);
    cudaFree(f->dtab);
    free(f);
}

int mk_cuda_ffn_forward(mk_cuda_ffn *f, float *y, float *a1, float *hact, const float *xp,
                                   const float *w1, const float *w3, const float *w2,
                                   const int *offs_host, int E, int D, int F)
{
    MK_CHECK(check_offs(offs_host, E));
    const size_t R = E > 0 ? (size_t)offs_host[E] : 0, W = (size_t)E * D * F;
    if (R == 0) return MK_OK;
    void *ws;
    MK_CHECK(ws_get(f, (3 * W + 2 * R * D) * sizeof(bf16) + 4 * 256, &ws));
    char *at = (char *)ws;
    bf16 *w13h = carve(&at, 2 * W), *w2h = carve(&at, W), *xh = carve(&at, R * D), *yh = carve(&at, R * D);
    bf16 *a13 = (bf16 *)a1, *hh = (bf16 *)hact;

    gcall *g1 = &f->call[0], *g2 = &f->call[1];
    gcall_start(g1);
    gcall_start(g2);
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        const size_t o = (size_t)offs_host[e];
        if (rows == 0) continue;
        gcall_add(g1, CUBLAS_OP_N, CUBLAS_OP_N, 2 * F, rows, D, w13h + (size_t)e * D * 2 * F, 2 * F,
                  xh + o * D, D, a13 + o * 2 * F, 2 * F);
        gcall_add(g2, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, F, w2h + (size_t)e * F * D, D, hh + o * F,
                  F, yh + o * D, D);
    }
    MK_CHECK(upload_tables(f, 2));
    LAUNCH(k_pack_w13, 2 * W, "expert FFN: w1|w3 to bf16", w13h, w1, w3, 2 * W, F);
    LAUNCH(k_to_bf16, W, "expert FFN: w2 to bf16", w2h, w2, W);
    LAUNCH(k_to_bf16, R * D, "expert FFN: x to bf16", xh, xp, R * D);
    MK_CHECK(gcall_run(f, g1, "expert FFN: x W13"));
    LAUNCH(k_swiglu_fwd, R * F, "expert FFN: SwiGLU", hh, a13, R * F, F);
    MK_CHECK(gcall_run(f, g2, "expert FFN: h W2"));
    LAUNCH(k_to_f32, R * D, "expert FFN: y to fp32", y, yh, R * D);
    return MK_OK;
}

int mk_cuda_ffn_backward(mk_cuda_ffn *f, float *dxp, float *dw1, float *dw3, float *dw2,
                                    float *dhact, float *da1, const float *dy, const float *xp,
                                    const float *a1, const float *hact, const float *w1,
                                    const float *w3, const float *w2, const int *offs_host, int E,
                                    int D, int F)
{
    MK_CHECK(check_offs(offs_host, E));
    const size_t R = E > 0 ? (size_t)offs_host[E] : 0, W = (size_t)E * D * F;
    if (R == 0) return MK_OK;
    void *ws;
    MK_CHECK(ws_get(f, (6 * W + 3 * R * D) * sizeof(bf16) + 7 * 256, &ws));
    char *at = (char *)ws;
    bf16 *w13h = carve(&at, 2 * W), *w2h = carve(&at, W), *dw13h = carve(&at, 2 * W);
    bf16 *dw2h = carve(&at, W), *dyh = carve(&at, R * D), *xh = carve(&at, R * D);
    bf16 *dxh = carve(&at, R * D);
    const bf16 *a13 = (const bf16 *)a1, *hh = (const bf16 *)hact;
    bf16 *dhh = (bf16 *)dhact, *da13 = (bf16 *)da1;

    gcall *g3 = &f->call[0], *g4 = &f->call[1], *g5 = &f->call[2], *g6 = &f->call[3];
    gcall_start(g3), gcall_start(g4), gcall_start(g5), gcall_start(g6);
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        const size_t o = (size_t)offs_host[e];
        if (rows == 0) continue;
        /* dh = dy W2^T */
        gcall_add(g3, CUBLAS_OP_T, CUBLAS_OP_N, F, rows, D, w2h + (size_t)e * F * D, D, dyh + o * D,
                  D, dhh + o * F, F);
        /* dW2 = h^T dy */
        gcall_add(g4, CUBLAS_OP_N, CUBLAS_OP_T, D, F, rows, dyh + o * D, D, hh + o * F, F,
                  dw2h + (size_t)e * F * D, D);
        /* dx = da13 W13^T */
        gcall_add(g5, CUBLAS_OP_T, CUBLAS_OP_N, D, rows, 2 * F, w13h + (size_t)e * D * 2 * F, 2 * F,
                  da13 + o * 2 * F, 2 * F, dxh + o * D, D);
        /* dW13 = x^T da13 */
        gcall_add(g6, CUBLAS_OP_N, CUBLAS_OP_T, 2 * F, D, rows, da13 + o * 2 * F, 2 * F, xh + o * D,
                  D, dw13h + (size_t)e * D * 2 * F, 2 * F);
    }
    MK_CHECK(upload_tables(f, 4));
    /* experts without rows get no GEMM: their weight gradients add 0 */
    CU_CHECK(cudaMemsetAsync(dw13h, 0, 2 * W * sizeof(bf16), 0), "expert FFN: clear dW13");
    CU_CHECK(cudaMemsetAsync(dw2h, 0, W * sizeof(bf16), 0), "expert FFN: clear dW2");
    LAUNCH(k_pack_w13, 2 * W, "expert FFN: w1|w3 to bf16", w13h, w1, w3, 2 * W, F);
    LAUNCH(k_to_bf16, W, "expert FFN: w2 to bf16", w2h, w2, W);
    LAUNCH(k_to_bf16, R * D, "expert FFN: dy to bf16", dyh, dy, R * D);
    LAUNCH(k_to_bf16, R * D, "expert FFN: x to bf16", xh, xp, R * D);
    MK_CHECK(gcall_run(f, g3, "expert FFN: dy W2^T"));
    MK_CHECK(gcall_run(f, g4, "expert FFN: h^T dy"));
    LAUNCH(k_swiglu_bwd, R * F, "expert FFN: SwiGLU backward", da13, dhh, a13, R * F, F);
    MK_CHECK(gcall_run(f, g5, "expert FFN: da13 W13^T"));
    MK_CHECK(gcall_run(f, g6, "expert FFN: x^T da13"));
    LAUNCH(k_to_f32, R * D, "expert FFN: dx to fp32", dxp, dxh, R * D);
    LAUNCH(k_add_w13, W, "expert FFN: dw1, dw3", dw1, dw3, dw13h, W, F);
    LAUNCH(k_add_bf16, W, "expert FFN: dw2", dw2, dw2h, W);
    return MK_OK;
}
