/* mk_backend_cuda.cu - the CUDA backend (DESIGN section 5).
 *
 * Every op of mk_backend.h on device memory of one GPU. GEMMs go through cuBLAS: pedantic
 * fp32 (no TF32), which matches the CPU to fp32 rounding, or, in bf16 mode, bf16 tensor-core
 * products with fp32 accumulation over fp32 storage. bf16 mode also runs the fused ops:
 * the expert FFN (mk_expert_ffn.cu, on the grouped kernels of mk_grouped_gemm.cu, bf16
 * state), the output layer (bf16 operands, bf16 dlogits in the backend's workspace) and,
 * with head size 64, attention (mk_flash_attn.cu) and the attention block around it (bf16
 * ln1, qkv and atty end to end), and the MoE block's input (ln2 with its bf16 copy, which
 * the router's products and the expert gather read); otherwise attention is cuBLAS batched
 * GEMMs over the [B, H, T, T] probabilities. Everything else is a plain CUDA kernel
 * written to follow the CPU reference (mk_backend_cpu.c) closely, so the two can be
 * compared element by element (tests/test_cuda_backend.c).
 *
 * Determinism rule, as on the CPU: every output element is written by one thread, and
 * every reduction runs in a fixed order that depends on the shapes only -- a serial loop
 * in one thread (the embedding gradient in token order), fixed chunks then their partials
 * in chunk order (RMSNorm gain gradient, router counts and psum), or a tree over a block or
 * warp of fixed size (row sums of softmax and cross-entropy, RMSNorm, sumsq, gate
 * gradients, the router's). No atomics anywhere, so the same inputs give the same bits on
 * every call.
 *
 * Still slow (docs/performance.md): the expert FFN gathers its rows and applies SwiGLU in
 * passes of their own; the attention kernels wait on their own loads (no producer warp);
 * the model reads route_plan's offsets back once per layer (the expert GEMMs' shapes are
 * set on the host).
 *
 * All work is issued on the legacy default stream, so ops are ordered with each other and
 * with the synchronous cudaMemcpy of to_host/from_host; errors of asynchronous kernels show
 * up at the next synchronising call at the latest (to_host in practice).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_backend.h"
#include "mk_error.h"
}
#include "mk_backend_cuda.h"
#include "mk_flash_attn.h"
#include "mk_bf16.h"
#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_expert_ffn.h"
#include "mk_gemm_residual.h"
#include "mk_grouped_gemm.h"
#include "mk_pdl.h"

#ifdef MK_REAL_DOUBLE
#error "the CUDA backend is fp32 only (mk_real = float): build it without MK_REAL_DOUBLE"
#endif

#define MK_RMS_EPS 1e-5

/* Threads per block of every kernel. The block-tree reductions depend on it, so it is a
 * constant, never derived from the device: results stay the same on any GPU. */
#define TPB 256
/* Blocks of the first sumsq pass: fixed for the same reason. */
#define SUMSQ_BLOCKS 1024
/* Upper bound on blocks of grid-stride kernels (they loop over the rest). */
#define MAX_BLOCKS (1u << 20)
/* Experts one grouped GEMM call takes; more fall back to one GEMM per expert. */
#define MK_CUDA_MAX_GROUPS 1024

typedef struct cuda_impl {
    mk_backend_ops ops;   /* per backend: no global mutable state, and C++17 has no
                             designated initialisers for a static table */
    int device;
    int bf16;             /* GEMM operands rounded to bf16 on tensor cores (fp32 accumulate) */
    int grouped_ok;       /* 1 cublasGemmGroupedBatchedEx works here, 0 unknown, -1 it does not */
    int fused;            /* bf16: our grouped GEMMs, the fused expert FFN and output layer */
    int flash_wgmma;      /* the attention kernels on wgmma (sm_90a), unless MOEKIT_NO_WGMMA=1 */
    int overlap_sms;      /* comm_overlap: SMs a collective beside our ops may hold */
    cublasHandle_t blas;
    void **gptr;          /* device arrays of A, B, C pointers for grouped GEMMs */
    double *rope_cs;      /* RoPE cos/sin table of (rope_T, rope_hd, rope_theta) */
    int rope_T, rope_hd;
    double rope_theta;
    size_t gptr_n;
    mk_devbuf scratch;    /* device scratch for per-call tables (angles, index lists) */
    mk_devbuf epb;        /* the expert-parallel plans' bucket ids and full offsets */
    mk_cuda_ffn *ffn;     /* the fused bf16 expert FFN's workspace, made on first use */
    mk_devbuf outb;       /* the fused output layer's bf16 x, W and dlogits */
    mk_devbuf mmb;        /* dense matmul's operands rounded to bf16 */
    mk_gemm_residual *gres; /* the attention block's output projection plus its residual */
    int out_ready;        /* a training output_forward left its state in outb, for: */
    int out_N, out_V, out_D, out_tied;
    size_t ce_smem_bf16;  /* the longest row of bf16 logits (bytes) k_cross_entropy_row stages */
    int32_t *emb_h;       /* pinned: the embedding's tokens, then the backward's index list */
    size_t emb_cap;       /* int32s emb_h holds */
    const int32_t *emb_tok; /* the tokens whose copy the last embedding_forward started */
    int emb_N, emb_up_pending;
    cudaEvent_t emb_tok_ev, emb_up_ev; /* that copy; the backward's upload of the list */
    int32_t *route_fill_h; /* pinned: the last route_plan's per-expert counts, on their way */
    size_t route_S;        /* the choices they must add up to (route_check) */
    int route_E, route_pending;
    cudaEvent_t route_ev;  /* that copy */
    cudaEvent_t *marks;    /* MK_MARKS timing events of mark/mark_ms, made on first use */
} cuda_impl;

static cuda_impl *impl_of(mk_backend *be) { return (cuda_impl *)be->impl; }

/* ------------------------------------------------------------------ error checks */



/* Every kernel here starts with MK_PDL_ENTRY() and is launched through mk_launch (mk_pdl.h),
 * which returns a bad configuration at once; faults inside the kernel surface at the next
 * synchronising call. */
#define LAUNCH(kernel, grid, what, ...) CU_CHECK(mk_launch(kernel, dim3(grid), dim3(TPB), 0, __VA_ARGS__), what)

#define MK_ROUTER_GATES_MAX 32 /* gates the router keeps in registers; more are re-read */

static unsigned grid_for(size_t n)
{
    size_t b = (n + TPB - 1) / TPB;
    return (unsigned)(b > MAX_BLOCKS ? MAX_BLOCKS : b);
}


/* Device scratch for one op's tables (mk_devbuf: grows on demand, frees only when idle;
 * uploads into it are synchronous cudaMemcpy calls on the default stream, ordered after
 * every kernel issued before them). */
static int scratch_get(cuda_impl *im, size_t bytes, void **out)
{
    MK_CHECK(mk_devbuf_reserve(&im->scratch, bytes, "scratch"));
    *out = im->scratch.p;
    return MK_OK;
}

/* ------------------------------------------------------------------ block reductions */

/* Sum over the block (blockDim.x == TPB) in a fixed tree: same order on every call. All
 * threads must call it; it ends with a barrier so sh can be reused right away. */
__device__ static double block_sum(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = TPB / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

/* Max over the block; max is order-independent, so it is exact whatever the tree. */
__device__ static float block_max(float v, float *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = TPB / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) {
            float o = sh[threadIdx.x + w];
            if (o > sh[threadIdx.x]) sh[threadIdx.x] = o;
        }
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Warp-wide max and sum over a butterfly: every lane ends with the same bits (each step adds
 * the same two values, in either order), and the order is fixed. */
__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ------------------------------------------------------------------ memory */

static int cuda_alloc(mk_backend *be, size_t bytes, void **out)
{
    (void)be;
    *out = NULL;
    /* A real pointer for 0 bytes keeps free() uniform, as on the CPU. */
    size_t n = bytes ? bytes : 1;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess)
        return MK_FAIL(MK_ERR_NOMEM, "cuda: cannot allocate %zu bytes: %s", bytes,
                       cudaGetErrorString(e));
    e = cudaMemset(p, 0, n);
    if (e != cudaSuccess) {
        cudaFree(p);
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: memset of %zu bytes: %s", n, cudaGetErrorString(e));
    }
    *out = p;
    return MK_OK;
}

static void cuda_free(mk_backend *be, void *p)
{
    (void)be;
    if (!p) return;
    cudaError_t e = cudaFree(p);
    /* free cannot return a status; report it so the failure is not silent. */
    if (e != cudaSuccess) MK_FAIL(MK_ERR_INTERNAL, "cuda: free: %s", cudaGetErrorString(e));
}

static int cuda_zero(mk_backend *be, void *p, size_t bytes)
{
    (void)be;
    if (bytes) CU_CHECK(cudaMemset(p, 0, bytes), "zero");
    return MK_OK;
}

static int cuda_copy(mk_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (!bytes || dst == src) return MK_OK;
    const char *d = (const char *)dst, *s = (const char *)src;
    if (d < s + bytes && s < d + bytes) {
        /* The CPU copy is memmove; cudaMemcpy leaves overlap undefined, so bounce. */
        void *tmp = NULL;
        cudaError_t e = cudaMalloc(&tmp, bytes);
        if (e != cudaSuccess)
            return MK_FAIL(MK_ERR_NOMEM, "cuda: copy: bounce buffer of %zu bytes: %s", bytes,
                           cudaGetErrorString(e));
        e = cudaMemcpy(tmp, src, bytes, cudaMemcpyDeviceToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(dst, tmp, bytes, cudaMemcpyDeviceToDevice);
        cudaError_t e2 = cudaFree(tmp);
        CU_CHECK(e, "copy (overlapping)");
        CU_CHECK(e2, "copy: free bounce buffer");
        return MK_OK;
    }
    CU_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "copy");
    return MK_OK;
}

/* route_plan's counts must add up to its choices: a topk entry outside 0..E-1 is a bug
 * upstream. The counts come back in a copy of their own, checked at the next call that
 * waits for the GPU anyway (the model's read of the offsets, right after route_plan, before
 * any expert GEMM uses them): the plan itself does not hold the host up. */
static int route_check(cuda_impl *im)
{
    if (!im->route_pending) return MK_OK;
    im->route_pending = 0;
    CU_CHECK(cudaEventSynchronize(im->route_ev), "route_plan: counts");
    size_t tot = 0;
    for (int e = 0; e < im->route_E; e++) tot += (size_t)im->route_fill_h[e];
    if (tot != im->route_S)
        return MK_FAIL(MK_ERR_INTERNAL, "route_plan: %zu of %zu choices name an expert outside 0..%d",
                       im->route_S - tot, im->route_S, im->route_E - 1);
    return MK_OK;
}

static int cuda_to_host(mk_backend *be, void *dst_host, const void *src, size_t bytes)
{
    if (bytes) CU_CHECK(cudaMemcpy(dst_host, src, bytes, cudaMemcpyDeviceToHost), "to_host");
    return route_check(impl_of(be));
}

static int cuda_from_host(mk_backend *be, void *dst, const void *src_host, size_t bytes)
{
    (void)be;
    if (bytes) CU_CHECK(cudaMemcpy(dst, src_host, bytes, cudaMemcpyHostToDevice), "from_host");
    return MK_OK;
}

/* ------------------------------------------------------------------ dense algebra */

/* Column-major GEMM in the backend's precision: pedantic fp32 SGEMM, or fp32 storage with
 * bf16 tensor-core products and fp32 accumulation (CUBLAS_COMPUTE_32F_FAST_16BF). */
static int gemm_cm(cuda_impl *im, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                   float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                   float *C, int ldc, const char *what)
{
    if (!im->bf16) {
        BLAS_CHECK(cublasSgemm(im->blas, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), what);
        return MK_OK;
    }
    BLAS_CHECK(cublasGemmEx(im->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F,
                            ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF,
                            CUBLAS_GEMM_DEFAULT), what);
    return MK_OK;
}

/* Row-major C[M, N] = alpha op(A) op(B) + beta C with bf16 A and B and fp32 C (tensor
 * cores, fp32 accumulate); shapes and transposes as cuda_matmul. */
static int matmul_bf16_to(cuda_impl *im, void *C, cudaDataType_t ctype, const void *A, const void *B, int M,
                          int N, int K, int trans_a, int trans_b, float alpha, float beta, const char *what)
{
    const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    BLAS_CHECK(cublasGemmEx(im->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_16BF,
                            ldb, A, CUDA_R_16BF, lda, &beta, C, ctype, N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT), what);
    return MK_OK;
}

static int matmul_bf16(cuda_impl *im, float *C, const void *A, const void *B, int M, int N, int K,
                       int trans_a, int trans_b, float alpha, float beta, const char *what)
{
    return matmul_bf16_to(im, C, CUDA_R_32F, A, B, M, N, K, trans_a, trans_b, alpha, beta, what);
}

static size_t up256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

/* The same over `batch` matrices at fixed strides (attention: one per head). */
static int gemm_cm_batched(cuda_impl *im, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           int k, float alpha, const float *A, int lda, long long sa, const float *B,
                           int ldb, long long sb, float beta, float *C, int ldc, long long sc,
                           int batch, const char *what)
{
    BLAS_CHECK(cublasGemmStridedBatchedEx(im->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, sa,
                                          B, CUDA_R_32F, ldb, sb, &beta, C, CUDA_R_32F, ldc, sc,
                                          batch, im->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                          : CUBLAS_COMPUTE_32F_PEDANTIC,
                                          CUBLAS_GEMM_DEFAULT), what);
    return MK_OK;
}

/* Per-expert GEMMs as one cublasGemmGroupedBatchedEx call (one group per expert with rows;
 * the pointer tables go up in one copy). When this cuBLAS cannot run the call (type or
 * compute mode not supported), the backend falls back to one GEMM per expert for good. */
typedef struct group_call {
    int G;
    cublasOperation_t ta[MK_CUDA_MAX_GROUPS], tb[MK_CUDA_MAX_GROUPS];
    int m[MK_CUDA_MAX_GROUPS], n[MK_CUDA_MAX_GROUPS], k[MK_CUDA_MAX_GROUPS];
    int lda[MK_CUDA_MAX_GROUPS], ldb[MK_CUDA_MAX_GROUPS], ldc[MK_CUDA_MAX_GROUPS];
    int size[MK_CUDA_MAX_GROUPS];
    float alpha[MK_CUDA_MAX_GROUPS], beta[MK_CUDA_MAX_GROUPS];
    const void *ptr[3 * MK_CUDA_MAX_GROUPS];   /* A[G] | B[G] | C[G] */
} group_call;

static void group_add(group_call *g, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    const int i = g->G++;
    g->ta[i] = ta, g->tb[i] = tb, g->m[i] = m, g->n[i] = n, g->k[i] = k;
    g->lda[i] = lda, g->ldb[i] = ldb, g->ldc[i] = ldc, g->size[i] = 1;
    g->alpha[i] = 1.0f, g->beta[i] = beta;
    g->ptr[i] = A;
    g->ptr[MK_CUDA_MAX_GROUPS + i] = B;
    g->ptr[2 * MK_CUDA_MAX_GROUPS + i] = C;
}

/* *done = 1 when the grouped call ran; 0 means: use the per-expert loop. */
static int group_run(cuda_impl *im, group_call *g, int *done, const char *what)
{
    *done = 0;
    if (im->grouped_ok < 0 || g->G == 0) {
        *done = g->G == 0;
        return MK_OK;
    }
    const size_t bytes = 3 * MK_CUDA_MAX_GROUPS * sizeof(void *);
    if (!im->gptr) CU_CHECK(cudaMalloc((void **)&im->gptr, bytes), "grouped GEMM: pointer table");
    CU_CHECK(cudaMemcpy(im->gptr, g->ptr, bytes, cudaMemcpyHostToDevice), "grouped GEMM: pointers");
    const void *const *A = (const void *const *)im->gptr;
    const void *const *B = A + MK_CUDA_MAX_GROUPS;
    void *const *C = (void *const *)(im->gptr + 2 * MK_CUDA_MAX_GROUPS);
    cublasStatus_t st = cublasGemmGroupedBatchedEx(
        im->blas, g->ta, g->tb, g->m, g->n, g->k, g->alpha, A, CUDA_R_32F, g->lda, B, CUDA_R_32F,
        g->ldb, g->beta, C, CUDA_R_32F, g->ldc, g->G, g->size,
        im->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_INVALID_VALUE && im->grouped_ok == 0)) {
        im->grouped_ok = -1;
        return MK_OK;
    }
    if (st != CUBLAS_STATUS_SUCCESS)
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: cuBLAS grouped GEMM: %s", what, cublasGetStatusString(st));
    im->grouped_ok = 1;
    *done = 1;
    return MK_OK;
}

static int cuda_grouped_matmul(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W,
                               const int *offs_host, int E, int K, int N, int trans_w, mk_real beta)
{
    cuda_impl *im = impl_of(be);
    if (im->fused && mk_grouped_gemm_supported(E, K, N, C, A, W))
        return mk_grouped_gemm_rows(C, A, W, offs_host, E, K, N, trans_w, beta);
    if (E <= MK_CUDA_MAX_GROUPS && im->grouped_ok >= 0 && K > 0) {
        group_call g;
        g.G = 0;
        for (int e = 0; e < E; e++) {
            const int rows = offs_host[e + 1] - offs_host[e];
            if (offs_host[e] < 0 || rows < 0)
                return MK_FAIL(MK_ERR_INTERNAL, "grouped_matmul: offsets not sorted at expert %d", e);
            if (rows == 0) continue;
            /* C_e^T = op(W_e)^T A_e^T, column-major */
            group_add(&g, trans_w ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, rows, K,
                      W + (size_t)e * K * N, trans_w ? K : N, A + (size_t)offs_host[e] * K, K, beta,
                      C + (size_t)offs_host[e] * N, N);
        }
        int done;
        MK_CHECK(group_run(im, &g, &done, "grouped_matmul"));
        if (done) return MK_OK;
    }
    return mk_grouped_matmul_by_expert(be, C, A, W, offs_host, E, K, N, trans_w, beta);
}

static int cuda_grouped_matmul_wgrad(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC,
                                     const int *offs_host, int E, int K, int N)
{
    cuda_impl *im = impl_of(be);
    if (im->fused && mk_grouped_gemm_supported(E, K, N, dW, A, dC)) {
        const size_t wsn = mk_grouped_gemm_wgrad_ws_floats(offs_host, E, K, N);
        void *ws = NULL;
        if (wsn) MK_CHECK(scratch_get(im, wsn * sizeof(float), &ws));
        return mk_grouped_gemm_wgrad(dW, (float *)ws, wsn, A, dC, offs_host, E, K, N);
    }
    if (E <= MK_CUDA_MAX_GROUPS && im->grouped_ok >= 0) {
        group_call g;
        g.G = 0;
        for (int e = 0; e < E; e++) {
            const int rows = offs_host[e + 1] - offs_host[e];
            if (offs_host[e] < 0 || rows < 0)
                return MK_FAIL(MK_ERR_INTERNAL, "grouped_matmul_wgrad: offsets not sorted at expert %d", e);
            if (rows == 0) continue;
            /* dW_e^T += dC_e^T A_e, column-major */
            group_add(&g, CUBLAS_OP_N, CUBLAS_OP_T, N, K, rows, dC + (size_t)offs_host[e] * N, N,
                      A + (size_t)offs_host[e] * K, K, 1.0f, dW + (size_t)e * K * N, N);
        }
        int done;
        MK_CHECK(group_run(im, &g, &done, "grouped_matmul_wgrad"));
        if (done) return MK_OK;
    }
    return mk_grouped_matmul_wgrad_by_expert(be, dW, A, dC, offs_host, E, K, N);
}

__global__ static void k_beta_only(float *C, size_t n, float beta)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n) C[i] = beta == 0 ? 0.0f : beta * C[i];
}

/* bf16 mode with the fused paths: operands whose rounding kernel applies (16-byte aligned,
 * element counts in fours). Anything else takes FAST_16BF on the fp32 operands. */
static int use_bf16_operands(const cuda_impl *im, const float *A, const float *B, int M, int N,
                             int K)
{
    return im->fused && ((size_t)M * K) % 4 == 0 && ((size_t)K * N) % 4 == 0 &&
           (((uintptr_t)A | (uintptr_t)B) & 15) == 0;
}

static int cuda_matmul(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *B, int M,
                       int N, int K, int trans_a, int trans_b, mk_real alpha, mk_real beta)
{
    cuda_impl *im = impl_of(be);
    if (M < 0 || N < 0 || K < 0)
        return MK_FAIL(MK_ERR_INTERNAL, "matmul: negative shape %d x %d x %d", M, N, K);
    if (M == 0 || N == 0) return MK_OK;
    if (K == 0) {
        /* cuBLAS rejects a leading dimension of 0; the product is empty, only beta remains. */
        size_t n = (size_t)M * N;
        LAUNCH(k_beta_only, grid_for(n), "matmul (K = 0)", C, n, beta);
        return MK_OK;
    }
    /* cuBLAS is column-major: a row-major [R, C] matrix is its transpose. Row-major
     * C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, i.e. the same call with A and B
     * swapped and M and N swapped; the leading dimensions are the row-major row lengths. */
    if (use_bf16_operands(im, A, B, M, N, K)) {
        /* The dense projections' fp32 activations and weights rounded to bf16 here, then a
         * bf16 GEMM: cuBLAS's FAST_16BF kernels on fp32 operands move twice the bytes and
         * ran the step's 108 dense products at about 200 TFLOP/s. The rounding is the same
         * (to nearest even), so the products are the ones FAST_16BF computes. */
        const size_t sa = up256((size_t)M * K * 2);
        MK_CHECK(mk_devbuf_reserve(&im->mmb, sa + up256((size_t)K * N * 2), "matmul: bf16 operands"));
        char *ab = (char *)im->mmb.p, *bb = ab + sa;
        MK_CHECK(mk_cuda_round_bf16(ab, A, (size_t)M * K, "matmul: A to bf16"));
        MK_CHECK(mk_cuda_round_bf16(bb, B, (size_t)K * N, "matmul: B to bf16"));
        return matmul_bf16(im, C, ab, bb, M, N, K, trans_a, trans_b, alpha, beta, "matmul");
    }
    const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    return gemm_cm(im, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, N, "matmul");
}

/* dW += X^T dY and dX = dY W^T + beta dX with dY rounded to bf16 once for both products
 * (the two matmul calls rounded it twice: for the qkv projection, 226 MB of traffic per
 * layer at bench-s). The products are those of the two calls. */
static int cuda_linear_backward(mk_backend *be, mk_real *dX, mk_real *dW, const mk_real *X, const mk_real *W,
                                const mk_real *dY, int M, int K, int N, mk_real beta)
{
    cuda_impl *im = impl_of(be);
    const size_t mk = (size_t)M * K, mn = (size_t)M * N, kn = (size_t)K * N;
    if (M <= 0 || K <= 0 || N <= 0 || !im->fused || mk % 4 || mn % 4 || kn % 4 ||
        (((uintptr_t)X | (uintptr_t)W | (uintptr_t)dY) & 15))
        return mk_linear_backward_ops(be, dX, dW, X, W, dY, M, K, N, beta);
    const size_t sy = up256(mn * 2), sx = up256(mk * 2);
    MK_CHECK(mk_devbuf_reserve(&im->mmb, sy + sx + up256(kn * 2), "linear_backward: bf16 operands"));
    char *yb = (char *)im->mmb.p, *xb = yb + sy, *wb = xb + sx;
    MK_CHECK(mk_cuda_round_bf16(yb, dY, mn, "linear_backward: dY to bf16"));
    MK_CHECK(mk_cuda_round_bf16(xb, X, mk, "linear_backward: X to bf16"));
    MK_CHECK(mk_cuda_round_bf16(wb, W, kn, "linear_backward: W to bf16"));
    MK_CHECK(matmul_bf16(im, dW, xb, yb, K, N, M, 1, 0, 1, 1, "linear_backward: dW"));
    return matmul_bf16(im, dX, yb, wb, M, K, N, 0, 1, 1, beta, "linear_backward: dX");
}

/* 16-byte loads over the first n4 fours where all three are aligned, then the rest. */
__global__ static void k_add(float *y, const float *a, const float *b, size_t n, size_t n4)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n4)
    {
        const float4 A = ((const float4 *)a)[i], B = ((const float4 *)b)[i];
        ((float4 *)y)[i] = make_float4(A.x + B.x, A.y + B.y, A.z + B.z, A.w + B.w);
    }
    GRID_STRIDE(i, n - 4 * n4) y[4 * n4 + i] = a[4 * n4 + i] + b[4 * n4 + i];
}

static int cuda_add(mk_backend *be, mk_real *y, const mk_real *a, const mk_real *b, size_t n)
{
    (void)be;
    const size_t n4 = (((uintptr_t)y | (uintptr_t)a | (uintptr_t)b) & 15) == 0 ? n / 4 : 0;
    if (n) LAUNCH(k_add, grid_for(n4 ? n4 : n), "add", y, a, b, n, n4);
    return MK_OK;
}

__global__ static void k_scale(float *x, size_t n, float s)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n) x[i] *= s;
}

static int cuda_scale(mk_backend *be, mk_real *x, size_t n, mk_real s)
{
    (void)be;
    if (n) LAUNCH(k_scale, grid_for(n), "scale", x, n, s);
    return MK_OK;
}

/* Pass 1: a fixed grid of SUMSQ_BLOCKS x TPB threads, four-element chunk i (where x is
 * 16-byte aligned: n4 = n / 4 chunks, then the rest one by one) to thread i mod the grid
 * size, each block's tree sum to part[block]. Pass 2 (on the host) adds the partials in
 * block order. Both orders depend on n and the alignment only. */
__global__ static void k_sumsq(const float *x, size_t n, size_t n4, double *part)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    double s = 0;
    GRID_STRIDE(i, n4)
    {
        const float4 v = ((const float4 *)x)[i];
        s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    GRID_STRIDE(i, n - 4 * n4)
    {
        double v = x[4 * n4 + i];
        s += v * v;
    }
    double t = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = t;
}
static int cuda_sumsq(mk_backend *be, const mk_real *x, size_t n, double *out_host)
{
    cuda_impl *im = impl_of(be);
    *out_host = 0;
    if (n == 0) return MK_OK;
    void *sp;
    MK_CHECK(scratch_get(im, SUMSQ_BLOCKS * sizeof(double), &sp));
    double part[SUMSQ_BLOCKS];
    const size_t n4 = ((uintptr_t)x & 15) == 0 ? n / 4 : 0;
    LAUNCH(k_sumsq, SUMSQ_BLOCKS, "sumsq", x, n, n4, (double *)sp);
    CU_CHECK(cudaMemcpy(part, sp, sizeof part, cudaMemcpyDeviceToHost), "sumsq: partials");
    double s = 0;
    for (int b = 0; b < SUMSQ_BLOCKS; b++) s += part[b];
    *out_host = s;
    return MK_OK;
}

/* The partials of every range in one buffer, one copy to the host, then each range's
 * partials added in block order: the bits of cuda_sumsq per range. */
static int cuda_sumsq_ranges(mk_backend *be, const mk_real *base, const size_t *off, const size_t *len, int count,
                             double *out_host)
{
    cuda_impl *im = impl_of(be);
    if (count <= 0) return MK_OK;
    const size_t per = SUMSQ_BLOCKS * sizeof(double);
    void *sp;
    MK_CHECK(scratch_get(im, (size_t)count * per, &sp));
    double *part = (double *)malloc((size_t)count * per);
    if (!part) return MK_FAIL(MK_ERR_NOMEM, "sumsq_ranges: %d ranges", count);
    int rc = MK_OK;
    for (int i = 0; rc == MK_OK && i < count; i++) {
        if (len[i] == 0) continue;
        const mk_real *x = base + off[i];
        const size_t n4 = ((uintptr_t)x & 15) == 0 ? len[i] / 4 : 0;
        const cudaError_t e = mk_launch(k_sumsq, dim3(SUMSQ_BLOCKS), dim3(TPB), 0, x, len[i], n4,
                                        (double *)((char *)sp + (size_t)i * per));
        if (e != cudaSuccess) rc = MK_FAIL(MK_ERR_INTERNAL, "cuda: sumsq_ranges: %s", cudaGetErrorString(e));
    }
    if (rc == MK_OK) {
        const cudaError_t e = cudaMemcpy(part, sp, (size_t)count * per, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) rc = MK_FAIL(MK_ERR_INTERNAL, "cuda: sumsq_ranges: partials: %s", cudaGetErrorString(e));
    }
    for (int i = 0; rc == MK_OK && i < count; i++) {
        double s = 0;
        for (int b = 0; len[i] && b < SUMSQ_BLOCKS; b++) s += part[(size_t)i * SUMSQ_BLOCKS + b];
        out_host[i] = s;
    }
    free(part);
    return rc;
}

/* Every thread that sees a bad value stores the same 1: the result does not depend on
 * which thread wins, so this plain store is deterministic. */
__global__ static void k_nonfinite(const float *x, size_t n, size_t n4, int *flag)
{
    MK_PDL_ENTRY();
    int bad = 0;
    GRID_STRIDE(i, n4)
    {
        const float4 v = ((const float4 *)x)[i];
        bad |= !isfinite(v.x) | !isfinite(v.y) | !isfinite(v.z) | !isfinite(v.w);
    }
    GRID_STRIDE(i, n - 4 * n4) bad |= !isfinite(x[4 * n4 + i]);
    if (bad) *flag = 1;
}

static int cuda_nonfinite_flag(mk_backend *be, const mk_real *x, size_t n, int32_t *flag)
{
    (void)be;
    if (n == 0) return MK_OK;
    /* 16-byte loads where x is aligned (n4 chunks of four): this check reads every
     * gradient once per step */
    const size_t n4 = ((uintptr_t)x & 15) == 0 ? n / 4 : 0;
    LAUNCH(k_nonfinite, grid_for(n4 ? n4 : n), "nonfinite", x, n, n4, (int *)flag);
    return MK_OK;
}

static int cuda_nonfinite(mk_backend *be, const mk_real *x, size_t n, int *out_host)
{
    *out_host = 0;
    if (n == 0) return MK_OK;
    void *sp;
    MK_CHECK(scratch_get(impl_of(be), sizeof(int32_t), &sp));
    CU_CHECK(cudaMemset(sp, 0, sizeof(int32_t)), "nonfinite: clear flag");
    MK_CHECK(cuda_nonfinite_flag(be, x, n, (int32_t *)sp));
    int32_t bad = 0;
    CU_CHECK(cudaMemcpy(&bad, sp, sizeof bad, cudaMemcpyDeviceToHost), "nonfinite: flag");
    *out_host = bad != 0;
    return MK_OK;
}

/* ------------------------------------------------------------------ embedding */

__global__ static void k_embedding_forward(float *out, const int32_t *tokens, const float *wte,
                                           int N, int D)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)N * D)
    {
        size_t n = i / D, c = i % D;
        out[i] = wte[(size_t)tokens[n] * D + c];
    }
}

/* Pinned host room for the embedding backward: the tokens (N) then its index list
 * (3N + 1). A pending upload from it completes before it is written again. */
static int emb_host_reserve(cuda_impl *im, int N)
{
    const size_t need = (size_t)4 * N + 1;
    if (im->emb_up_pending) {
        CU_CHECK(cudaEventSynchronize(im->emb_up_ev), "embedding: upload");
        im->emb_up_pending = 0;
    }
    if (need <= im->emb_cap) return MK_OK;
    /* a forward's copy of its tokens may still be on its way into the old buffer */
    if (im->emb_tok) CU_CHECK(cudaEventSynchronize(im->emb_tok_ev), "embedding: tokens");
    if (im->emb_h) cudaFreeHost(im->emb_h);
    im->emb_h = NULL, im->emb_cap = 0, im->emb_tok = NULL;
    CU_CHECK(cudaMallocHost((void **)&im->emb_h, need * sizeof *im->emb_h), "embedding: pinned host buffer");
    im->emb_cap = need;
    return MK_OK;
}

static int cuda_embedding_forward(mk_backend *be, mk_real *out, const int32_t *tokens,
                                  const mk_real *wte, int N, int D)
{
    cuda_impl *im = impl_of(be);
    size_t n = (size_t)N * D;
    if (N > 0 && D > 0) LAUNCH(k_embedding_forward, grid_for(n), "embedding_forward", out, tokens, wte, N, D);
    /* The backward groups the tokens by row on the host: they start on their way now,
     * while the GPU is idle at the start of the step, so that the backward does not wait
     * at its end for the whole backward to finish before it can copy them. */
    im->emb_tok = NULL;
    if (N > 0) {
        MK_CHECK(emb_host_reserve(im, N));
        CU_CHECK(cudaMemcpyAsync(im->emb_h, tokens, (size_t)N * sizeof *tokens, cudaMemcpyDeviceToHost, 0),
                 "embedding_forward: tokens to the host");
        CU_CHECK(cudaEventRecord(im->emb_tok_ev, 0), "embedding_forward: event");
        im->emb_tok = tokens, im->emb_N = N;
    }
    return MK_OK;
}

/* One block per vocabulary row that occurs, threads over its columns; each element adds
 * its tokens in token order -- the CPU's order exactly, so the bits match the CPU too.
 * list = [rows (nu) | start (nu + 1) | token index in token order (N)]. */
__global__ static void k_embedding_backward(float *dwte, const float *dout, const int32_t *list,
                                            int nu, int D)
{
    MK_PDL_ENTRY();
    const int32_t *rows = list, *start = list + nu, *idx = list + 2 * nu + 1;
    const int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= D) return;
    float *dst = dwte + (size_t)rows[b] * D;
    float v = dst[c];
    int j = start[b];
    const int end = start[b + 1];
    /* The sum stays in token order (the CPU's bits); only the loads of sixteen tokens are
     * issued ahead of their adds, so a frequent token's long row (a byte-level corpus's
     * space: thousands of tokens) is not one load latency per token. */
    for (; j + 16 <= end; j += 16) {
        float a[16];
#pragma unroll
        for (int k = 0; k < 16; k++) a[k] = dout[(size_t)idx[j + k] * D + c];
#pragma unroll
        for (int k = 0; k < 16; k++) v += a[k];
    }
    for (; j < end; j++) v += dout[(size_t)idx[j] * D + c];
    dst[c] = v;
}

static int cuda_embedding_backward(mk_backend *be, mk_real *dwte, const int32_t *tokens,
                                   const mk_real *dout, int N, int D, int V)
{
    cuda_impl *im = impl_of(be);
    if (N <= 0 || D <= 0) return MK_OK;
    /* The tokens, on the host, are validated as on the CPU and grouped by row: a counting
     * sort, stable, so each row's tokens stay in token order. They are the copy the
     * forward started where it saw these tokens, else copied now. */
    const int kept = im->emb_tok == tokens && im->emb_N == N;
    if (kept) {
        CU_CHECK(cudaEventSynchronize(im->emb_tok_ev), "embedding_backward: tokens");
    } else {
        MK_CHECK(emb_host_reserve(im, N));
        CU_CHECK(cudaMemcpy(im->emb_h, tokens, (size_t)N * sizeof *tokens, cudaMemcpyDeviceToHost),
                 "embedding_backward: tokens");
    }
    im->emb_tok = NULL; /* one backward per forward's copy; another call copies again */
    const int32_t *tok = im->emb_h;
    for (int n = 0; n < N; n++)
        if (tok[n] < 0 || tok[n] >= V)
            return MK_FAIL(MK_ERR_INPUT, "embedding: token %d at position %d outside vocabulary %d", (int)tok[n], n,
                           V);
    int32_t *cnt = (int32_t *)calloc((size_t)V + 1, sizeof *cnt);
    if (!cnt) return MK_FAIL(MK_ERR_NOMEM, "embedding_backward: out of host memory");
    for (int n = 0; n < N; n++) cnt[tok[n]]++;
    int nu = 0;
    for (int v = 0; v < V; v++) nu += cnt[v] > 0;
    int32_t *list = im->emb_h + N;
    int32_t *rows = list, *start = list + nu, *idx = list + 2 * nu + 1;
    /* cnt becomes each row's first position in idx; rows in vocabulary order. */
    int pos = 0, u = 0;
    for (int v = 0; v < V; v++) {
        int c = cnt[v];
        cnt[v] = pos;
        if (c) {
            rows[u] = v;
            start[u] = pos;
            u++;
        }
        pos += c;
    }
    start[nu] = pos;
    for (int n = 0; n < N; n++) idx[cnt[tok[n]]++] = n;
    free(cnt);
    /* From pinned memory the upload does not wait for the GPU; the buffer is not written
     * again before it is done (emb_host_reserve). */
    const size_t bytes = ((size_t)2 * nu + 1 + N) * sizeof *list;
    void *sp;
    MK_CHECK(scratch_get(im, bytes, &sp));
    CU_CHECK(cudaMemcpyAsync(sp, list, bytes, cudaMemcpyHostToDevice, 0), "embedding_backward: upload");
    CU_CHECK(cudaEventRecord(im->emb_up_ev, 0), "embedding_backward: event");
    im->emb_up_pending = 1;
    CU_CHECK(mk_launch(k_embedding_backward, dim3((unsigned)nu, (unsigned)((D + TPB - 1) / TPB)), dim3(TPB), 0,
                       dwte, dout, (const int32_t *)sp, nu, D), "embedding_backward");
    return MK_OK;
}

/* ------------------------------------------------------------------ RMSNorm */

/* One block per row: sum of squares in double by the block tree, then the row. */
__global__ static void k_rmsnorm_forward(float *out, float *rstd, const float *x, const float *g,
                                         int D)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    const size_t n = blockIdx.x;
    const float *xr = x + n * D;
    float *o = out + n * D;
    double ss = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum(ss, sh);
    const float r = (float)(1.0 / sqrt(ss / D + MK_RMS_EPS));
    if (threadIdx.x == 0) rstd[n] = r;
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = xr[i] * r * g[i];
}

/* One warp per row, for rows of at most RMS_NV float4 per lane (d_model <= 1024, a multiple
 * of 4, 16-byte aligned): the row stays in registers between the sum of squares and the
 * scaling, and no block barrier is needed -- a block per 768-wide row left most of its
 * time in the shared-memory tree. Sums in double, in a fixed order. */
#define RMS_NV 8
#define RMS_ROWS_PER_BLOCK (TPB / 32)

static int rms_warp_fits(int D, const void *a, const void *b, const void *c, const void *d)
{
    return D % 4 == 0 && D <= 4 * 32 * RMS_NV &&
           (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) == 0;
}

/* Four outputs of a row as one store: float4, or four bf16 (the attention block's ln1). */
__device__ __forceinline__ void store4(float *o, int j, float4 v) { ((float4 *)o)[j] = v; }
__device__ __forceinline__ void store4(__nv_bfloat16 *o, int j, float4 v)
{
    const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    ((uint2 *)o)[j] = make_uint2(*(const uint32_t *)&a, *(const uint32_t *)&b);
}

template <typename TO>
__global__ static void k_rmsnorm_forward_warp(TO *out, __nv_bfloat16 *twin, float *rstd, const float *x,
                                              const float *g, int N, int D)
{
    MK_PDL_ENTRY();
    const size_t n = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x & 31, D4 = D / 4;
    if (n >= (size_t)N) return; /* whole warps: no shuffle is left short */
    const float4 *xr = (const float4 *)(x + n * D);
    float4 v[RMS_NV];
    double ss = 0;
#pragma unroll
    for (int t = 0; t < RMS_NV; t++) {
        const int j = lane + 32 * t;
        if (j < D4) {
            v[t] = xr[j];
            ss += (double)v[t].x * v[t].x + (double)v[t].y * v[t].y + (double)v[t].z * v[t].z +
                  (double)v[t].w * v[t].w;
        }
    }
    ss = warp_sum(ss);
    const float r = (float)(1.0 / sqrt(ss / D + MK_RMS_EPS));
    if (lane == 0) rstd[n] = r;
    TO *o = out + n * D;
#pragma unroll
    for (int t = 0; t < RMS_NV; t++) {
        const int j = lane + 32 * t;
        if (j < D4) {
            const float4 G = ((const float4 *)g)[j];
            const float4 y = make_float4(v[t].x * r * G.x, v[t].y * r * G.y, v[t].z * r * G.z, v[t].w * r * G.w);
            store4(o, j, y);
            if (twin) store4(twin + n * D, j, y); /* the same values rounded: the GEMMs' operand */
        }
    }
}

static int cuda_rmsnorm_forward(mk_backend *be, mk_real *out, mk_real *rstd, const mk_real *x,
                                const mk_real *g, int N, int D)
{
    (void)be;
    if (N <= 0) return MK_OK;
    if (rms_warp_fits(D, out, x, g, x))
        LAUNCH(k_rmsnorm_forward_warp<float>, (unsigned)((N + RMS_ROWS_PER_BLOCK - 1) / RMS_ROWS_PER_BLOCK),
               "rmsnorm_forward", out, (__nv_bfloat16 *)NULL, rstd, x, g, N, D);
    else
        LAUNCH(k_rmsnorm_forward, (unsigned)N, "rmsnorm_forward", out, rstd, x, g, D);
    return MK_OK;
}

/* dx_j += r g_j dy_j - (r^3 / D) x_j sum_i g_i dy_i x_i, one block per row. */
__global__ static void k_rmsnorm_backward_dx(float *dx, const float *dout, const float *x,
                                             const float *g, const float *rstd, int D)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    const size_t n = blockIdx.x;
    const float *xr = x + n * D, *dy = dout + n * D;
    float *dxr = dx + n * D;
    const double r = rstd[n];
    double dot = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dot += (double)g[i] * dy[i] * xr[i];
    dot = block_sum(dot, sh);
    const double c = r * r * r * dot / D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dxr[i] += (float)(r * g[i] * dy[i] - c * xr[i]);
}

__device__ __forceinline__ float rms_dx1(float dx, double r, float g, float dy, double c, float x)
{
    return dx + (float)(r * g * dy - c * x);
}

/* One warp per row (see k_rmsnorm_forward_warp), and dg's partial sums in the same pass:
 * block b takes the RMS_FUSED_ROWS rows from b * RMS_FUSED_ROWS, its warps rows w, w + 8,
 * ...; each lane sums dout x rstd for its columns over its warp's rows in double, then the
 * warps' sums are added in warp order into part[b, :]. dout and x are read once for both
 * (a separate dg pass read them again: a third of the op's traffic). x and dy are read
 * twice, the second time from L1. The lanes' dg sums live in shared memory (one slice per
 * warp, [k][column chunk] so that a warp's accesses are consecutive): in registers they
 * took 116 per thread, two blocks per SM, and the op ran at about 2.5 TB/s. NV float4 per
 * lane (D <= 128 NV). */
#define RMS_FUSED_ROWS 32

static size_t rms_fused_smem(int NV)
{
    return (size_t)(TPB / 32) * 4 * 32 * NV * sizeof(double);
}

template <int NV>
__global__ static void __launch_bounds__(TPB, 3)
k_rmsnorm_backward_fused(float *dx, double *__restrict__ part, const float *dout,
                         const float *__restrict__ x, const float *__restrict__ g,
                         const float *__restrict__ rstd, int N, int D)
{
    MK_PDL_ENTRY();
    extern __shared__ double rms_sh[]; /* [warp][k][32 NV] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, D4 = D / 4, W = 32 * NV;
    double *dg = rms_sh + (size_t)warp * 4 * W;
    const float4 *g4 = (const float4 *)g;
#pragma unroll
    for (int t = 0; t < NV; t++)
        for (int k = 0; k < 4; k++) dg[k * W + lane + 32 * t] = 0;
    const int n0 = blockIdx.x * RMS_FUSED_ROWS, n1 = min(n0 + RMS_FUSED_ROWS, N);
    for (int n = n0 + warp; n < n1; n += TPB / 32) {
        const float4 *xr = (const float4 *)(x + (size_t)n * D), *dyr = (const float4 *)(dout + (size_t)n * D);
        double dot = 0;
#pragma unroll
        for (int t = 0; t < NV; t++) {
            const int j = lane + 32 * t;
            if (j < D4) {
                const float4 X = xr[j], Y = dyr[j], G = g4[j];
                dot += (double)G.x * Y.x * X.x + (double)G.y * Y.y * X.y + (double)G.z * Y.z * X.z +
                       (double)G.w * Y.w * X.w;
            }
        }
        dot = warp_sum(dot);
        const double r = rstd[n], c = r * r * r * dot / D;
        float4 *o = (float4 *)(dx + (size_t)n * D);
#pragma unroll
        for (int t = 0; t < NV; t++) {
            const int j = lane + 32 * t;
            if (j < D4) {
                const float4 X = xr[j], Y = dyr[j], G = g4[j];
                float4 a = o[j];
                a.x = rms_dx1(a.x, r, G.x, Y.x, c, X.x);
                a.y = rms_dx1(a.y, r, G.y, Y.y, c, X.y);
                a.z = rms_dx1(a.z, r, G.z, Y.z, c, X.z);
                a.w = rms_dx1(a.w, r, G.w, Y.w, c, X.w);
                o[j] = a;
                dg[j] += (double)Y.x * X.x * r;
                dg[W + j] += (double)Y.y * X.y * r;
                dg[2 * W + j] += (double)Y.z * X.z * r;
                dg[3 * W + j] += (double)Y.w * X.w * r;
            }
        }
    }
    __syncthreads();
    for (int cidx = threadIdx.x; cidx < D; cidx += TPB) {
        const int j = cidx / 4, k = cidx % 4;
        double sum = rms_sh[k * W + j];
        for (int w = 1; w < TPB / 32; w++) sum += rms_sh[(size_t)w * 4 * W + k * W + j];
        part[(size_t)blockIdx.x * D + cidx] = sum;
    }
}

/* dg sums over tokens in two fixed stages: RMS_CHUNKS blocks of consecutive tokens give
 * partial sums per column (threads over columns, so reads are coalesced), then one thread
 * per column adds the partials in chunk order. Same order every call; the CPU sums in plain
 * token order, so the two agree to rounding of the double sums. */
#define RMS_CHUNKS 512 /* enough blocks to fill the GPU at d_model 768; short chunks */
__global__ static void k_rmsnorm_dg_partial(double *part, const float *dout, const float *x,
                                            const float *rstd, int N, int D)
{
    MK_PDL_ENTRY();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    const int per = (N + RMS_CHUNKS - 1) / RMS_CHUNKS;
    const int n0 = blockIdx.y * per, n1 = n0 + per < N ? n0 + per : N;
    double acc = 0;
#pragma unroll 4
    for (int n = n0; n < n1; n++) {
        const size_t o = (size_t)n * D + c;
        acc += (double)dout[o] * x[o] * (double)rstd[n];
    }
    part[(size_t)blockIdx.y * D + c] = acc;
}

/* 32 columns per block (coalesced), 8 threads per column each adding every 8th chunk,
 * then the 8 sums in a fixed order: the partials' loads are in flight together instead
 * of one column's 512 one after another. */
__global__ static void k_rmsnorm_dg_final(float *dg, const double *part, int chunks, int D)
{
    MK_PDL_ENTRY();
    __shared__ double sh[8][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    double acc = 0;
    if (c < D) {
#pragma unroll 8
        for (int k = threadIdx.y; k < chunks; k += 8) acc += part[(size_t)k * D + c];
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < D) {
        double sum = 0;
        for (int y = 0; y < 8; y++) sum += sh[y][threadIdx.x];
        dg[c] += (float)sum;
    }
}

static int cuda_rmsnorm_backward(mk_backend *be, mk_real *dx, mk_real *dg, const mk_real *dout,
                                 const mk_real *x, const mk_real *g, const mk_real *rstd, int N,
                                 int D)
{
    if (N <= 0 || D <= 0) return MK_OK;
    void *sp;
    int chunks = RMS_CHUNKS;
    if (rms_warp_fits(D, dx, dout, x, g)) {
        chunks = (N + RMS_FUSED_ROWS - 1) / RMS_FUSED_ROWS;
        MK_CHECK(scratch_get(impl_of(be), (size_t)chunks * D * sizeof(double), &sp));
        /* 48 KB of dg sums at d_model 768, 64 KB at 1024: opted in past the default 48 */
        if (D <= 4 * 32 * 6) {
            CU_CHECK(cudaFuncSetAttribute(k_rmsnorm_backward_fused<6>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)rms_fused_smem(6)), "rmsnorm_backward: shared memory");
            CU_CHECK(mk_launch(k_rmsnorm_backward_fused<6>, dim3((unsigned)chunks), dim3(TPB), rms_fused_smem(6), dx,
                               (double *)sp, dout, x, g, rstd, N, D), "rmsnorm_backward");
        } else {
            CU_CHECK(cudaFuncSetAttribute(k_rmsnorm_backward_fused<RMS_NV>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)rms_fused_smem(RMS_NV)),
                     "rmsnorm_backward: shared memory");
            CU_CHECK(mk_launch(k_rmsnorm_backward_fused<RMS_NV>, dim3((unsigned)chunks), dim3(TPB),
                               rms_fused_smem(RMS_NV), dx, (double *)sp, dout, x, g, rstd, N, D), "rmsnorm_backward");
        }
    } else {
        LAUNCH(k_rmsnorm_backward_dx, (unsigned)N, "rmsnorm_backward (dx)", dx, dout, x, g, rstd, D);
        MK_CHECK(scratch_get(impl_of(be), (size_t)RMS_CHUNKS * D * sizeof(double), &sp));
        CU_CHECK(mk_launch(k_rmsnorm_dg_partial, dim3((unsigned)((D + TPB - 1) / TPB), RMS_CHUNKS), dim3(TPB),
                           0, (double *)sp, dout, x, rstd, N, D), "rmsnorm_backward (dg partials)");
    }
    CU_CHECK(mk_launch(k_rmsnorm_dg_final, dim3((unsigned)((D + 31) / 32)), dim3(32, 8), 0, dg,
                       (const double *)sp, chunks, D), "rmsnorm_backward (dg)");
    return MK_OK;
}

/* ------------------------------------------------------------------ attention */

static int check_heads(const char *op, int D, int H)
{
    if (H <= 0 || D <= 0 || D % H != 0)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: width %d not divisible into %d heads", op, D, H);
    return MK_OK;
}

/* One thread per (token, pair) of the q and k columns; cs holds cos and sin of every
 * (position, pair), computed on the host in double exactly as the CPU does; sign -1 is the
 * inverse rotation (backward). */
__global__ static void k_rope(float *qkv, const double *cs, int N, int T, int D, int hd, double sign)
{
    MK_PDL_ENTRY();
    const int half = hd / 2;
    GRID_STRIDE(i, (size_t)N * D)
    {
        const size_t n = i / D;
        const int col = 2 * (int)(i % D); /* even column in 0 .. 2D-1: q, then k */
        const int p = (col % hd) / 2;
        float *row = qkv + n * 3 * D;
        mk_rope_rotate(row[col], row[col + 1], cs + ((size_t)(n % T) * half + p) * 2, sign);
    }
}

/* The same, one block per token and two pairs per thread (16-byte loads, no 64-bit division
 * per element); for D a multiple of 4 and an aligned qkv. */

__global__ static void k_rope_row(float *qkv, const double *cs, int T, int D, int hd, double sign)
{
    MK_PDL_ENTRY();
    const size_t n = blockIdx.x;
    const int half = hd / 2;
    float4 *row = (float4 *)(qkv + n * 3 * D);
    const double *ct = cs + (size_t)(n % T) * half * 2;
    for (int j = threadIdx.x; j < D / 2; j += blockDim.x) { /* q and k: 2D columns */
        const int col = 4 * j;
        float4 v = row[j];
        mk_rope_rotate(v.x, v.y, ct + (col % hd), sign);
        mk_rope_rotate(v.z, v.w, ct + ((col + 2) % hd), sign);
        row[j] = v;
    }
}

/* im->rope_cs for (T, hd, theta); the arguments checked as rope_forward does. */
static int rope_table(cuda_impl *im, const char *op, int T, int D, int H, double theta)
{
    MK_CHECK(check_heads(op, D, H));
    const int hd = D / H;
    if (hd % 2 != 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: head size %d is odd", op, hd);
    if (T <= 0 || !(theta > 0))
        return MK_FAIL(MK_ERR_INTERNAL, "%s: sequence length %d, theta %g", op, T, theta);
    const int half = hd / 2;
    /* The angle table depends on (T, hd, theta) only: made once, kept on the device. */
    if (!im->rope_cs || im->rope_T != T || im->rope_hd != hd || im->rope_theta != theta) {
        size_t bytes = (size_t)T * half * 2 * sizeof(double);
        double *cs = (double *)malloc(bytes);
        if (!cs) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory for the angle table", op);
        /* The host's pow/cos/sin, so the table is bit-identical to the CPU backend's. */
        for (int pos = 0; pos < T; pos++)
            for (int i = 0; i < half; i++) {
                double ang = pos * pow(theta, -2.0 * i / hd);
                cs[((size_t)pos * half + i) * 2] = cos(ang);
                cs[((size_t)pos * half + i) * 2 + 1] = sin(ang);
            }
        if (im->rope_cs) cudaFree(im->rope_cs);
        im->rope_cs = NULL;
        cudaError_t e = cudaMalloc((void **)&im->rope_cs, bytes);
        if (e == cudaSuccess) e = cudaMemcpy(im->rope_cs, cs, bytes, cudaMemcpyHostToDevice);
        free(cs);
        if (e != cudaSuccess) {
            if (im->rope_cs) cudaFree(im->rope_cs);
            im->rope_cs = NULL;
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: angle table: %s", op, cudaGetErrorString(e));
        }
        im->rope_T = T, im->rope_hd = hd, im->rope_theta = theta;
    }
    return MK_OK;
}

static int rope_apply(mk_backend *be, const char *op, mk_real *qkv, int B, int T, int D, int H,
                      double theta, double sign)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(rope_table(im, op, T, D, H, theta));
    const int N = B * T, hd = D / H;
    if (N <= 0) return MK_OK;
    if (D % 4 == 0 && ((uintptr_t)qkv & 15) == 0)
        LAUNCH(k_rope_row, (unsigned)N, op, qkv, (const double *)im->rope_cs, T, D, hd, sign);
    else
        LAUNCH(k_rope, grid_for((size_t)N * D), op, qkv, (const double *)im->rope_cs, N, T, D, hd, sign);
    return MK_OK;
}

static int cuda_rope_forward(mk_backend *be, mk_real *qkv, int B, int T, int D, int H, double theta)
{
    return rope_apply(be, "rope_forward", qkv, B, T, D, H, theta, 1.0);
}

static int cuda_rope_backward(mk_backend *be, mk_real *dqkv, int B, int T, int D, int H,
                              double theta)
{
    return rope_apply(be, "rope_backward", dqkv, B, T, D, H, theta, -1.0);
}

/* Attention on cuBLAS: per sequence b, the H heads are one strided batch (head h of q, k
 * and v starts h*hd columns further in qkv). Scores fill att [B,H,T,T] in full -- the upper
 * triangle is computed and then zeroed by the causal softmax, twice the causal FLOPs but on
 * tensor cores -- and are kept for the backward. Row-major X [R, C] with leading dimension
 * ld is column-major X^T, so each product below is written transposed.
 * q of (b, h) at row t is qkv[(b T + t) 3D + h hd], k at + D, v at + 2D. */
/* One block per row (bh, t): the CPU's causal softmax, exp in float, sum in double. */
__global__ static void k_att_softmax(float *att, int T)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    __shared__ float shf[TPB];
    const size_t rowid = blockIdx.x;
    const int t = (int)(rowid % T);
    float *row = att + rowid * T;
    float mx = -INFINITY;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) mx = row[t2] > mx ? row[t2] : mx;
    mx = block_max(mx, shf);
    double sum = 0;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
        float e = expf(row[t2] - mx);
        row[t2] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    const float inv = (float)(1.0 / sum);
    for (int t2 = threadIdx.x; t2 < T; t2 += blockDim.x) row[t2] = t2 <= t ? row[t2] * inv : 0.0f;
}

/* bf16 with head size 64 takes the fused kernels of mk_flash_attn.cu; they keep their
 * state (log-sum-exps, an output copy, bf16 Q, K, V) in the [B, H, T, T] probability
 * buffer and work in its gradient, which are large enough from T = 162 on. Forward and
 * backward decide alike, so the backward always finds what its forward left there. */
static int use_flash(const cuda_impl *im, int B, int T, int D, int H)
{
    const size_t att = (size_t)B * H * T * T;
    return im->bf16 && mk_flash_attn_supported(T, D, H) &&
           mk_flash_attn_state_floats(B, T, H) <= att && mk_flash_attn_work_floats(B, T, H) <= att;
}

static int cuda_attention_forward(mk_backend *be, mk_real *out, mk_real *att, const mk_real *qkv,
                                  int B, int T, int D, int H)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(check_heads("attention_forward", D, H));
    if (B <= 0 || T <= 0) return MK_OK;
    if (use_flash(im, B, T, D, H)) return mk_flash_attn_forward(out, att, qkv, NULL, B, T, D, H);
    const int hd = D / H, ld = 3 * D;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const long long TT = (long long)T * T;
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * ld, *k = q + D;
        float *S = att + (size_t)b * H * TT;
        /* S = scale Q K^T: column-major S^T = K Q^T. */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, ld, hd, q, ld, hd,
                                 0.0f, S, T, TT, H, "attention_forward (scores)"));
    }
    LAUNCH(k_att_softmax, (unsigned)((size_t)B * H * T), "attention_forward (softmax)", att, T);
    for (int b = 0; b < B; b++) {
        const float *v = qkv + (size_t)b * T * ld + 2 * D;
        const float *P = att + (size_t)b * H * TT;
        /* O = P V: column-major O^T = V^T P^T, written at h*hd of out's rows (ld D). */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, v, ld, hd, P, T, TT,
                                 0.0f, out + (size_t)b * T * D, D, hd, H, "attention_forward (out)"));
    }
    return MK_OK;
}

/* dS = P (dP - rowsum(P dP)) * scale, one block per row, the row sum in double. */
__global__ static void k_att_dsoftmax(float *datt, const float *att, int T, float scale)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    const size_t rowid = blockIdx.x;
    const int t = (int)(rowid % T);
    const float *p = att + rowid * T;
    float *d = datt + rowid * T;
    double dot = 0;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) dot += (double)p[t2] * d[t2];
    dot = block_sum(dot, sh);
    const float dotf = (float)dot;
    for (int t2 = threadIdx.x; t2 < T; t2 += blockDim.x)
        d[t2] = t2 <= t ? p[t2] * (d[t2] - dotf) * scale : 0.0f;
}

static int cuda_attention_backward(mk_backend *be, mk_real *dqkv, mk_real *datt,
                                   const mk_real *dout, const mk_real *qkv, const mk_real *att,
                                   int B, int T, int D, int H)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(check_heads("attention_backward", D, H));
    if (B <= 0 || T <= 0) return MK_OK;
    if (use_flash(im, B, T, D, H))
        return mk_flash_attn_backward(dqkv, datt, dout, qkv, att, B, T, D, H);
    const int hd = D / H, ld = 3 * D;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const long long TT = (long long)T * T;
    for (int b = 0; b < B; b++) {
        const float *v = qkv + (size_t)b * T * ld + 2 * D, *dO = dout + (size_t)b * T * D;
        /* dP = dO V^T: column-major dP^T = V dO^T. */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, v, ld, hd, dO, D, hd,
                                 0.0f, datt + (size_t)b * H * TT, T, TT, H, "attention_backward (dP)"));
    }
    LAUNCH(k_att_dsoftmax, (unsigned)((size_t)B * H * T), "attention_backward (dS)", datt, att, T, scale);
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * ld, *k = q + D, *dO = dout + (size_t)b * T * D;
        const float *dS = datt + (size_t)b * H * TT, *P = att + (size_t)b * H * TT;
        float *dq = dqkv + (size_t)b * T * ld, *dk = dq + D, *dv = dq + 2 * D;
        /* dQ = dS K: column-major dQ^T = K^T dS^T. */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, k, ld, hd, dS, T, TT,
                                 0.0f, dq, ld, hd, H, "attention_backward (dQ)"));
        /* dK = dS^T Q: column-major dK^T = Q^T dS. */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, q, ld, hd, dS, T, TT,
                                 0.0f, dk, ld, hd, H, "attention_backward (dK)"));
        /* dV = P^T dO: column-major dV^T = dO^T P. */
        MK_CHECK(gemm_cm_batched(im, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, dO, D, hd, P, T, TT,
                                 0.0f, dv, ld, hd, H, "attention_backward (dV)"));
    }
    return MK_OK;
}

/* RoPE and attention as one op: where the fused kernels run, q and k are rotated as the
 * forward rounds them (qkv keeps its unrotated values; only the backward below reads this
 * state, and the fused backward does not read qkv): a pass over qkv less per layer.
 * Elsewhere the two ops in turn. The backward is the two ops in turn either way (see
 * mk_flash_attn.h). */
static int cuda_attention_rope_forward(mk_backend *be, mk_real *out, mk_real *att, mk_real *qkv, int B, int T,
                                       int D, int H, double theta)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(check_heads("attention_rope_forward", D, H));
    if (B <= 0 || T <= 0) return MK_OK;
    if (!use_flash(im, B, T, D, H)) {
        MK_CHECK(cuda_rope_forward(be, qkv, B, T, D, H, theta));
        return cuda_attention_forward(be, out, att, qkv, B, T, D, H);
    }
    MK_CHECK(rope_table(im, "attention_rope_forward", T, D, H, theta));
    return mk_flash_attn_forward(out, att, qkv, im->rope_cs, B, T, D, H);
}

static int cuda_attention_rope_backward(mk_backend *be, mk_real *dqkv, mk_real *datt, const mk_real *dout,
                                        const mk_real *qkv, const mk_real *att, int B, int T, int D, int H,
                                        double theta)
{
    MK_CHECK(cuda_attention_backward(be, dqkv, datt, dout, qkv, att, B, T, D, H));
    return cuda_rope_backward(be, dqkv, B, T, D, H, theta);
}

/* ------------------------------------------------------------------ attention block */

/* The attention block in bf16 end to end, where the fused attention runs (head size 64,
 * bf16 mode) and the row kernels apply: RMSNorm writes ln1 as bf16, the qkv GEMM writes
 * bf16 qkv, RoPE rotates it in place, the attention reads it and writes bf16 atty, which
 * the output projection reads -- no fp32 copy of ln1, qkv or atty is written, and no pass
 * of its own rounds them for a GEMM. The state (bf16 ln1, rotated qkv, atty in the first
 * half of their fp32 buffers; the log-sum-exps in att) is what the backward's GEMMs and
 * attention kernels read. Elsewhere the op sequence. */
static int use_block(const cuda_impl *im, const mk_attn_block *a, int B, int T, int D, int H)
{
    return im->fused && use_flash(im, B, T, D, H) && D % 8 == 0 &&
           rms_warp_fits(D, a->x, a->norm, a->ln1, a->qkv) &&
           (((uintptr_t)a->att | (uintptr_t)a->atty | (uintptr_t)a->w_qkv | (uintptr_t)a->w_out) & 15) == 0;
}

/* The block's weights rounded to bf16 in the matmul scratch: w_qkv then w_out. */
static int block_weights(cuda_impl *im, const mk_attn_block *a, int D, size_t extra, char **wq, char **wo,
                         char **rest, const char *what)
{
    const size_t sq = up256((size_t)D * 3 * D * 2), so = up256((size_t)D * D * 2);
    MK_CHECK(mk_devbuf_reserve(&im->mmb, sq + so + extra, what));
    *wq = (char *)im->mmb.p, *wo = *wq + sq, *rest = *wo + so;
    MK_CHECK(mk_cuda_round_bf16(*wq, a->w_qkv, (size_t)D * 3 * D, what));
    return mk_cuda_round_bf16(*wo, a->w_out, (size_t)D * D, what);
}

static int cuda_attention_block_forward(mk_backend *be, mk_real *h, const mk_attn_block *a, int B, int T, int D,
                                        int H, double theta)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(check_heads("attention_block_forward", D, H));
    if (B <= 0 || T <= 0) return MK_OK;
    if (!use_block(im, a, B, T, D, H)) return mk_attention_block_forward_ops(be, h, a, B, T, D, H, theta);
    const int N = B * T;
    MK_CHECK(rope_table(im, "attention_block_forward", T, D, H, theta));
    char *wq, *wo, *rest;
    MK_CHECK(block_weights(im, a, D, 0, &wq, &wo, &rest, "attention_block_forward: bf16 weights"));
    LAUNCH(k_rmsnorm_forward_warp<__nv_bfloat16>, (unsigned)((N + RMS_ROWS_PER_BLOCK - 1) / RMS_ROWS_PER_BLOCK),
           "attention_block_forward (RMSNorm)", (__nv_bfloat16 *)a->ln1, (__nv_bfloat16 *)NULL, a->rstd, a->x,
           a->norm, N, D);
    MK_CHECK(matmul_bf16_to(im, a->qkv, CUDA_R_16BF, a->ln1, wq, N, 3 * D, D, 0, 0, 1, 0,
                            "attention_block_forward: qkv"));
    MK_CHECK(mk_flash_attn_forward_bf16(a->atty, a->att, a->qkv, im->rope_cs, B, T, D, H, im->flash_wgmma));
    int done;
    MK_CHECK(mk_gemm_residual_run(im->gres, h, a->x, a->atty, wo, N, D, D, &done,
                                  "attention_block_forward: out + residual"));
    if (done) return MK_OK;
    MK_CHECK(matmul_bf16(im, h, a->atty, wo, N, D, D, 0, 0, 1, 0, "attention_block_forward: out"));
    return cuda_add(be, h, h, a->x, (size_t)N * D);
}

/* The backward of the above (dres rounded once for both of w_out's products; dO comes
 * out of its GEMM in bf16, dqkv leaves RoPE's inverse rotation in bf16). */
static int cuda_attention_block_backward(mk_backend *be, mk_real *dres, const mk_attn_block_grads *g,
                                         const mk_attn_block *a, int B, int T, int D, int H, double theta)
{
    cuda_impl *im = impl_of(be);
    MK_CHECK(check_heads("attention_block_backward", D, H));
    if (B <= 0 || T <= 0) return MK_OK;
    /* the forward's choice (the state is in its format); scratch off alignment fails below */
    if (!use_block(im, a, B, T, D, H)) return mk_attention_block_backward_ops(be, dres, g, a, B, T, D, H, theta);
    const int N = B * T;
    MK_CHECK(rope_table(im, "attention_block_backward", T, D, H, theta));
    char *wq, *wo, *db;
    MK_CHECK(block_weights(im, a, D, up256((size_t)N * D * 2), &wq, &wo, &db,
                           "attention_block_backward: bf16 operands"));
    MK_CHECK(mk_cuda_round_bf16(db, dres, (size_t)N * D, "attention_block_backward: dh to bf16"));
    MK_CHECK(matmul_bf16(im, g->dw_out, a->atty, db, D, D, N, 1, 0, 1, 1, "attention_block_backward: dW_out"));
    MK_CHECK(matmul_bf16_to(im, g->datty, CUDA_R_16BF, db, wo, N, D, D, 0, 1, 1, 0,
                            "attention_block_backward: datty"));
    float *delta = g->datt;
    void *dqkvb = g->datt + mk_flash_attn_lse_floats(B, T, H);
    MK_CHECK(mk_flash_attn_backward_bf16(NULL, dqkvb, im->rope_cs, delta, g->datty, a->atty, a->qkv, a->att, B, T, D,
                                         H, im->flash_wgmma));
    MK_CHECK(matmul_bf16(im, g->dw_qkv, a->ln1, dqkvb, D, 3 * D, N, 1, 0, 1, 1, "attention_block_backward: dW_qkv"));
    MK_CHECK(matmul_bf16(im, g->dln, dqkvb, wq, N, D, 3 * D, 0, 1, 1, 0, "attention_block_backward: dln"));
    return cuda_rmsnorm_backward(be, dres, g->dnorm, g->dln, a->x, a->norm, a->rstd, N, D);
}

/* ------------------------------------------------------------------ MoE block input */

/* RMSNorm writes ln2 and its bf16 copy in one pass; the router's GEMM, its weight gradient
 * and the expert FFN's gather read the copy, where each rounded ln2 in a pass of its own
 * (the same rounding of the same values: the products do not change). Elsewhere the op
 * sequence, with the copy rounded from ln2 for the gather where the fused FFN may run. */
static int use_moe_input(const cuda_impl *im, const void *ln_op, const void *ln, const void *h, const void *g,
                         const void *w, int D)
{
    return im->fused && ln_op && rms_warp_fits(D, ln, h, g, ln_op) && ((uintptr_t)w & 15) == 0;
}

static int cuda_moe_input_forward(mk_backend *be, mk_real *z, mk_real *ln, void *ln_op, mk_real *rstd,
                                  const mk_real *h, const mk_real *g, const mk_real *w_router, int N, int D, int E)
{
    cuda_impl *im = impl_of(be);
    if (N <= 0) return MK_OK;
    if (!use_moe_input(im, ln_op, ln, h, g, w_router, D)) {
        MK_CHECK(mk_moe_input_forward_ops(be, z, ln, rstd, h, g, w_router, N, D, E));
        /* the fused FFN (D a multiple of 8) gathers from the copy: it must be there */
        if (ln_op && im->fused && D % 8 == 0)
            MK_CHECK(mk_cuda_round_bf16(ln_op, ln, (size_t)N * D, "moe_input_forward: bf16 copy of ln"));
        return MK_OK;
    }
    LAUNCH(k_rmsnorm_forward_warp<float>, (unsigned)((N + RMS_ROWS_PER_BLOCK - 1) / RMS_ROWS_PER_BLOCK),
           "moe_input_forward (RMSNorm)", ln, (__nv_bfloat16 *)ln_op, rstd, h, g, N, D);
    if (E <= 0) return MK_OK;
    const size_t nw = (size_t)D * E; /* a multiple of 4: D is (rms_warp_fits) */
    MK_CHECK(mk_devbuf_reserve(&im->mmb, up256(nw * 2), "moe_input_forward: bf16 router weights"));
    MK_CHECK(mk_cuda_round_bf16(im->mmb.p, w_router, nw, "moe_input_forward: bf16 router weights"));
    return matmul_bf16(im, z, ln_op, im->mmb.p, N, E, D, 0, 0, 1, 0, "moe_input_forward: router");
}

static int cuda_moe_input_backward(mk_backend *be, mk_real *dh, mk_real *dg, mk_real *dw_router, mk_real *dln,
                                   const mk_real *dz, const mk_real *h, const mk_real *ln, const void *ln_op,
                                   const mk_real *rstd, const mk_real *g, const mk_real *w_router, int N, int D,
                                   int E)
{
    cuda_impl *im = impl_of(be);
    if (N <= 0) return MK_OK;
    const size_t nz = (size_t)N * E, nw = (size_t)D * E;
    if (!use_moe_input(im, ln_op, ln, h, g, w_router, D) || E <= 0 || nz % 4 || ((uintptr_t)dz & 15))
        return mk_moe_input_backward_ops(be, dh, dg, dw_router, dln, dz, h, ln, rstd, g, w_router, N, D, E);
    const size_t sz = up256(nz * 2);
    MK_CHECK(mk_devbuf_reserve(&im->mmb, sz + up256(nw * 2), "moe_input_backward: bf16 operands"));
    char *zb = (char *)im->mmb.p, *wb = zb + sz;
    MK_CHECK(mk_cuda_round_bf16(zb, dz, nz, "moe_input_backward: dz to bf16"));
    MK_CHECK(mk_cuda_round_bf16(wb, w_router, nw, "moe_input_backward: router weights to bf16"));
    MK_CHECK(matmul_bf16(im, dw_router, ln_op, zb, D, E, N, 1, 0, 1, 1, "moe_input_backward: dW_router"));
    MK_CHECK(matmul_bf16(im, dln, zb, wb, N, D, E, 0, 1, 1, 1, "moe_input_backward: dln"));
    return cuda_rmsnorm_backward(be, dh, dg, dln, h, g, rstd, N, D);
}

/* ------------------------------------------------------------------ router */

/* (p, e) ranks above (q, f) in the router's order: larger probability first, the lower
 * expert index on ties. */
__device__ __forceinline__ int router_above(float p, int e, float q, int f)
{
    return p > q || (p == q && e < f);
}

/* The best (p, e) of the warp in router order (e = -1: none), the same in every lane: the
 * order is total, so the butterfly's result does not depend on the pairing. */
__device__ __forceinline__ void warp_best(float *p, int *e)
{
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        const float q = __shfl_xor_sync(0xffffffffu, *p, off);
        const int f = __shfl_xor_sync(0xffffffffu, *e, off);
        if (f >= 0 && (*e < 0 || router_above(q, f, *p, *e))) *p = q, *e = f;
    }
}

/* One warp per token (lanes take experts lane, lane + 32, ...): softmax in double with a
 * fixed shuffle tree, then K rounds of a warp-wide pick of the best expert ranking below
 * the previous pick, which is the CPU's selection (descending probability, lower index
 * first on ties). A non-finite logit makes the sum non-finite and sets *bad. */
__global__ static void k_router_forward(float *probs, float *lse, int32_t *topk, float *gates,
                                        const float *z, int N, int E, int K, int norm_topk,
                                        int *bad)
{
    MK_PDL_ENTRY();
    const size_t nn = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (nn >= (size_t)N) return;
    const float *zr = z + nn * E;
    float *p = probs + nn * E;
    double mx = -INFINITY;
    int nonfin = 0;
    for (int e = lane; e < E; e += 32) {
        mx = fmax(mx, (double)zr[e]);
        nonfin |= !isfinite(zr[e]); /* -Inf too: the sum below stays finite */
    }
    if (__any_sync(0xffffffffu, nonfin) && lane == 0) *bad = 1;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    double sum = 0;
    for (int e = lane; e < E; e += 32) sum += exp((double)zr[e] - mx);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    for (int e = lane; e < E; e += 32) p[e] = (float)(exp((double)zr[e] - mx) / sum);
    if (lane == 0) lse[nn] = (float)(mx + log(sum));
    if (!isfinite(sum) && lane == 0) *bad = 1; /* same value from every writer */
    float pp = 0.f, gsel[MK_ROUTER_GATES_MAX];
    int pe = -1;
    double gs = 0;
    for (int j = 0; j < K; j++) {
        float bp = 0.f;
        int be = -1;
        for (int e = lane; e < E; e += 32) {
            const float v = p[e];
            if (pe >= 0 && !router_above(pp, pe, v, e)) continue;
            if (be < 0 || router_above(v, e, bp, be)) bp = v, be = e;
        }
        warp_best(&bp, &be);
        if (be < 0) { /* only when probabilities are NaN: flagged, any valid index */
            be = 0, bp = p[0];
            if (lane == 0) *bad = 1;
        }
        pp = bp, pe = be;
        gs += bp;
        if (lane == 0) topk[nn * K + j] = be;
        if (j < MK_ROUTER_GATES_MAX) gsel[j] = bp;
    }
    if (lane == 0)
        for (int j = 0; j < K; j++) {
            const float v = j < MK_ROUTER_GATES_MAX ? gsel[j] : p[topk[nn * K + j]];
            gates[nn * K + j] = norm_topk ? (float)(v / gs) : v;
        }
}

/* Counts (exact integers) and psum in two fixed stages, like RMSNorm's gain gradient:
 * RS_CHUNK tokens per block, one thread per expert counting its choices among the chunk's
 * N*K (every thread reads the same entries: broadcasts) and summing its column of probs in
 * double (coalesced over experts); then per expert the chunks' partials in a fixed order. One
 * block per expert scanning all N*K choices left 64 blocks on 132 SMs. */
#define RS_CHUNK 64
__global__ static void k_router_stats_partial(int32_t *cpart, double *ppart, const int32_t *topk,
                                              const float *probs, int N, int E, int K)
{
    MK_PDL_ENTRY();
    const int n0 = blockIdx.x * RS_CHUNK, n1 = n0 + RS_CHUNK < N ? n0 + RS_CHUNK : N;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
        double acc = 0;
#pragma unroll 8
        for (size_t s = (size_t)n0 * K; s < (size_t)n1 * K; s++) c += topk[s] == e;
#pragma unroll 8
        for (int n = n0; n < n1; n++) acc += probs[(size_t)n * E + e];
        cpart[(size_t)blockIdx.x * E + e] = c;
        ppart[(size_t)blockIdx.x * E + e] = acc;
    }
}

/* One warp per expert: lane k sums the partials of chunks k, k + 32, ... in order, then a
 * fixed shuffle tree. One thread per expert walking all chunks spent about 40 us of
 * dependent loads per layer at bench-s (256 chunks). */
__global__ static void k_router_stats_final(int32_t *counts, float *psum, const int32_t *cpart,
                                            const double *ppart, int chunks, int E)
{
    MK_PDL_ENTRY();
    const size_t e = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (e >= (size_t)E) return; /* whole warps leave together */
    long long c = 0;
    double acc = 0;
    for (int k = lane; k < chunks; k += 32) {
        c += cpart[(size_t)k * E + e];
        acc += ppart[(size_t)k * E + e];
    }
    acc = warp_sum(acc);
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    if (lane == 0) counts[e] = (int32_t)c, psum[e] = (float)acc;
}

static int cuda_router_forward(mk_backend *be, mk_real *probs, mk_real *lse, int32_t *topk,
                               mk_real *gates, int32_t *counts, mk_real *psum, int32_t *bad_out,
                               const mk_real *z, int N, int E, int K, int norm_topk)
{
    cuda_impl *im = impl_of(be);
    if (E <= 0 || K <= 0 || K > E)
        return MK_FAIL(MK_ERR_INTERNAL, "router_forward: top-%d of %d experts", K, E);
    /* Given a flag in device memory the op does not wait for the GPU: the model reads the
     * flag with the routing statistics, one copy per layer instead of one per check. */
    if (bad_out) CU_CHECK(cudaMemsetAsync(bad_out, 0, sizeof *bad_out), "router_forward: clear flag");
    if (N > 0) {
        void *sp = bad_out;
        if (!bad_out) {
            MK_CHECK(scratch_get(im, sizeof(int), &sp));
            CU_CHECK(cudaMemset(sp, 0, sizeof(int)), "router_forward: clear flag");
        }
        const size_t blocks = ((size_t)N * 32 + TPB - 1) / TPB;
        CU_CHECK(mk_launch(k_router_forward, dim3((unsigned)blocks), dim3(TPB), 0, probs, lse, topk, gates, z, N, E,
                           K, norm_topk, (int *)sp), "router_forward");
        if (!bad_out) {
            int bad = 0;
            CU_CHECK(cudaMemcpy(&bad, sp, sizeof bad, cudaMemcpyDeviceToHost), "router_forward: flag");
            if (bad) return MK_FAIL(MK_ERR_NUMERIC, "router_forward: non-finite router logits");
        }
    }
    if (N <= 0) { /* no tokens: zero counts and psum, as on the CPU */
        CU_CHECK(cudaMemset(counts, 0, (size_t)E * sizeof *counts), "router_forward (counts)");
        CU_CHECK(cudaMemset(psum, 0, (size_t)E * sizeof *psum), "router_forward (psum)");
        return MK_OK;
    }
    const int chunks = (N + RS_CHUNK - 1) / RS_CHUNK;
    const size_t cb = ((size_t)chunks * E * sizeof(int32_t) + 15) & ~(size_t)15;
    void *sp;
    MK_CHECK(scratch_get(im, cb + (size_t)chunks * E * sizeof(double), &sp));
    int32_t *cpart = (int32_t *)sp;
    double *ppart = (double *)((char *)sp + cb);
    LAUNCH(k_router_stats_partial, (unsigned)chunks, "router_forward (count partials)", cpart,
           ppart, topk, probs, N, E, K);
    LAUNCH(k_router_stats_final, (unsigned)(((size_t)E * 32 + TPB - 1) / TPB), "router_forward (counts, psum)", counts,
           psum, cpart, ppart, chunks, E);
    return MK_OK;
}

/* One warp per token, the CPU's loop body with lanes over the experts (e = lane, lane + 32,
 * ...; each dz element is only ever touched by its lane): the dz row holds dL/dprobs first
 * (in float, as the CPU stores it, the K gate terms added in the CPU's order), then becomes
 * dL/dz in place. The dot product is summed per lane and over the warp in a fixed order. One
 * thread per token walked its 64-wide row alone, with scattered loads. */
__global__ static void k_router_backward(float *dz, const float *dgates, const float *lbl_ds,
                                         float zloss_scale, const float *probs, const float *lse,
                                         const int32_t *topk, const float *gates, int N, int E,
                                         int K, int norm_topk)
{
    MK_PDL_ENTRY();
    const size_t nn = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (nn >= (size_t)N) return; /* whole warps */
    const float *p = probs + nn * E;
    const float *dg = dgates + nn * K, *gt = gates + nn * K;
    const int32_t *tk = topk + nn * K;
    float *d = dz + nn * E;
    for (int e = lane; e < E; e += 32) d[e] = lbl_ds ? lbl_ds[e] : 0.0f;
    if (norm_topk) {
        double S = 0, c = 0;
        for (int j = 0; j < K; j++) {
            S += p[tk[j]];
            c += (double)dg[j] * gt[j];
        }
        for (int j = 0; j < K; j++)
            if (tk[j] % 32 == lane) d[tk[j]] += (float)(((double)dg[j] - c) / S);
    } else {
        for (int j = 0; j < K; j++)
            if (tk[j] % 32 == lane) d[tk[j]] += dg[j];
    }
    double dot = 0;
    for (int e = lane; e < E; e += 32) dot += (double)p[e] * d[e];
    dot = warp_sum(dot);
    const double zl = 2.0 * (double)zloss_scale * lse[nn];
    for (int e = lane; e < E; e += 32) d[e] = (float)(p[e] * ((double)d[e] - dot + zl));
}

static int cuda_router_backward(mk_backend *be, mk_real *dz, const mk_real *dgates,
                                const mk_real *lbl_ds, mk_real zloss_scale, const mk_real *probs,
                                const mk_real *lse, const int32_t *topk, const mk_real *gates,
                                int N, int E, int K, int norm_topk)
{
    (void)be;
    if (E <= 0 || K <= 0 || K > E)
        return MK_FAIL(MK_ERR_INTERNAL, "router_backward: top-%d of %d experts", K, E);
    if (N > 0)
        LAUNCH(k_router_backward, (unsigned)(((size_t)N * 32 + TPB - 1) / TPB), "router_backward", dz,
               dgates, lbl_ds, zloss_scale, probs, lse, topk, gates, N, E, K, norm_topk);
    return MK_OK;
}

/* ------------------------------------------------------------------ dispatch and combine */

/* route_plan, a counting sort by expert in passes wide over the GPU, with no atomics:
 * per chunk of ROUTE_CHUNK choices, each expert's count (one thread per expert walking the
 * chunk in shared memory); per expert, the exclusive prefix of its counts over the chunks
 * (one block per expert) and the offsets; then each chunk places its choices, one thread
 * per expert walking the chunk in order. A choice's rank within its expert is the count
 * before its chunk plus its order within the chunk, i.e. its order among all choices of
 * the expert, as on the CPU. Small chunks keep each thread's walk short: with 2,048-choice
 * chunks the walks of 64 threads per block took most of the op's 87 us at bench-s. */
#define ROUTE_CHUNK 256

/* This block's chunk of choices into shared memory; returns how many there are. */
__device__ static int load_chunk(int32_t *sh, const int32_t *topk, size_t s0, size_t S)
{
    const int n = (int)(S - s0 < ROUTE_CHUNK ? S - s0 : ROUTE_CHUNK);
    for (int i = threadIdx.x; i < n; i += blockDim.x) sh[i] = topk[s0 + i];
    __syncthreads();
    return n;
}

__global__ static void k_route_hist(int32_t *hist, const int32_t *topk, size_t S, int E)
{
    MK_PDL_ENTRY();
    __shared__ int32_t sh[ROUTE_CHUNK];
    const size_t s0 = (size_t)blockIdx.x * ROUTE_CHUNK;
    const int n = load_chunk(sh, topk, s0, S);
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
#pragma unroll 8
        for (int i = 0; i < n; i++) c += sh[i] == e;
        hist[(size_t)blockIdx.x * E + e] = c;
    }
}

/* One block per expert e: hist[., e] becomes the exclusive prefix over the chunks, fill[e]
 * the expert's choices. Thread t takes a run of consecutive chunks; the runs' sums are
 * scanned in shared memory (integers: any order gives the same sums). */
__global__ static void k_route_scan(int32_t *fill, int32_t *hist, int chunks, int E)
{
    MK_PDL_ENTRY();
    __shared__ int32_t run[TPB];
    const int e = blockIdx.x, t = threadIdx.x;
    const int per = (chunks + TPB - 1) / TPB, c0 = t * per, c1 = c0 + per < chunks ? c0 + per : chunks;
    int sum = 0;
    for (int c = c0; c < c1; c++) sum += hist[(size_t)c * E + e];
    run[t] = sum;
    __syncthreads();
    for (int w = 1; w < TPB; w *= 2) { /* inclusive scan of the runs */
        const int v = t >= w ? run[t - w] : 0;
        __syncthreads();
        run[t] += v;
        __syncthreads();
    }
    int pre = run[t] - sum;
    for (int c = c0; c < c1; c++) {
        const int v = hist[(size_t)c * E + e];
        hist[(size_t)c * E + e] = pre;
        pre += v;
    }
    if (t == TPB - 1) fill[e] = run[t];
}

/* offs from the kept counts (capacity applied): E additions. */
__global__ static void k_route_offs(int32_t *offs, const int32_t *fill, int E, int capacity)
{
    MK_PDL_ENTRY();
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int q = 0;
    offs[0] = 0;
    for (int e = 0; e < E; e++) {
        q += capacity > 0 && fill[e] > capacity ? capacity : fill[e];
        offs[e + 1] = q;
    }
}

__global__ static void k_route_place(int32_t *row_slot, int32_t *slot_row, const int32_t *offs,
                                     const int32_t *hist, const int32_t *topk, size_t S, int E,
                                     int capacity)
{
    MK_PDL_ENTRY();
    __shared__ int32_t sh[ROUTE_CHUNK];
    const size_t s0 = (size_t)blockIdx.x * ROUTE_CHUNK;
    const int n = load_chunk(sh, topk, s0, S);
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int rank = hist[(size_t)blockIdx.x * E + e];
        const int base = offs[e];
        for (int i = 0; i < n; i++) {
            if (sh[i] != e) continue;
            const size_t s = s0 + (size_t)i;
            if (capacity > 0 && rank >= capacity) {
                slot_row[s] = -1;
            } else {
                row_slot[base + rank] = (int32_t)s;
                slot_row[s] = base + rank;
            }
            rank++;
        }
    }
}

__global__ static void k_route_tail(int32_t *row_slot, const int32_t *offs, int E, size_t S)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(r, S) if (r >= (size_t)offs[E]) row_slot[r] = -1;
}

/* One block per sequence, a histogram of its choices in shared memory. Integer additions
 * in any order give the same counts, so the shared-memory atomics keep the op
 * deterministic. */
__global__ static void k_sequence_counts(int32_t *counts, const int32_t *topk, int S, int E)
{
    MK_PDL_ENTRY();
    extern __shared__ int hist_sc[];
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist_sc[e] = 0;
    __syncthreads();
    const int32_t *t = topk + (size_t)blockIdx.x * S;
    for (int i = threadIdx.x; i < S; i += blockDim.x) /* route_check reports the others */
        if ((unsigned)t[i] < (unsigned)E) atomicAdd(&hist_sc[t[i]], 1);
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts[(size_t)blockIdx.x * E + e] = hist_sc[e];
}

/* topk comes from router_forward, which only writes experts 0..E-1. */
static int cuda_sequence_counts(mk_backend *be, int32_t *counts, const int32_t *topk, int B, int S, int E)
{
    (void)be;
    if (B < 0 || S < 0 || E <= 0 || (size_t)E * sizeof(int) > 48 * 1024)
        return MK_FAIL(MK_ERR_INTERNAL, "sequence_counts: B %d, S %d, E %d", B, S, E);
    if (B == 0) return MK_OK;
    CU_CHECK(mk_launch(k_sequence_counts, dim3((unsigned)B), dim3(TPB), (size_t)E * sizeof(int), counts, topk, S, E),
                       "sequence_counts");
    return MK_OK;
}

/* topk comes from router_forward, which only writes experts 0..E-1. */
static int cuda_route_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row,
                           const int32_t *topk, int N, int E, int K, int capacity)
{
    cuda_impl *im = impl_of(be);
    if (E <= 0 || K <= 0 || N < 0 || capacity < 0)
        return MK_FAIL(MK_ERR_INTERNAL, "route_plan: N %d, E %d, K %d, capacity %d", N, E, K,
                       capacity);
    const size_t S = (size_t)N * K, chunks = (S + ROUTE_CHUNK - 1) / ROUTE_CHUNK;
    if (chunks > 0x7fffffffu)
        return MK_FAIL(MK_ERR_INTERNAL, "route_plan: %zu choices", S);
    void *sp;
    MK_CHECK(scratch_get(im, ((size_t)E + chunks * E) * sizeof(int32_t), &sp));
    int32_t *fill = (int32_t *)sp, *hist = fill + E;
    if (chunks) LAUNCH(k_route_hist, (unsigned)chunks, "route_plan (count)", hist, topk, S, E);
    LAUNCH(k_route_scan, (unsigned)E, "route_plan (scan)", fill, hist, (int)chunks, E);
    LAUNCH(k_route_offs, 1, "route_plan (offsets)", offs, fill, E, capacity);
    /* Every choice must have landed in some expert (route_check). */
    if (E <= MK_CUDA_MAX_GROUPS) {
        MK_CHECK(route_check(im)); /* the previous plan's, before its buffer is reused */
        if (!im->route_fill_h)
            CU_CHECK(cudaMallocHost((void **)&im->route_fill_h, MK_CUDA_MAX_GROUPS * sizeof(int32_t)),
                     "route_plan: pinned host buffer");
        CU_CHECK(cudaMemcpyAsync(im->route_fill_h, fill, (size_t)E * sizeof(int32_t), cudaMemcpyDeviceToHost, 0),
                 "route_plan: counts");
        CU_CHECK(cudaEventRecord(im->route_ev, 0), "route_plan: event");
        im->route_S = S, im->route_E = E, im->route_pending = 1;
    }
    if (chunks)
        LAUNCH(k_route_place, (unsigned)chunks, "route_plan (place)", row_slot, slot_row, offs, hist,
               topk, S, E, capacity);
    if (S) LAUNCH(k_route_tail, grid_for(S), "route_plan (tail)", row_slot, offs, E, S);
    return MK_OK;
}

/* ------------------------------------------------------------------ expert-parallel plans
 *
 * Both plans are route_plan's counting sort over bucket ids made for it, with one bucket
 * more than there are ranks (experts) for the pairs that are no rows: its stable order is
 * the CPU's (rows by rank, tokens in order; arrived choices by local expert, in arrival
 * order). No host work and no atomics but the count of bad records (an integer count: the
 * same in any order). */

/* ids[t*P + q] = q where token t has a kept choice on rank q, else P (no row). */
__global__ static void k_ep_mark(int32_t *ids, const int32_t *topk, const int32_t *slot_row, int N, int K, int El,
                                 int P)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(t, (size_t)N) {
        for (int q = 0; q < P; q++) ids[t * P + q] = P;
        for (int j = 0; j < K; j++) {
            const size_t c = t * K + j;
            const int q = topk[c] / El;
            if (slot_row[c] >= 0 && q >= 0 && q < P) ids[t * P + q] = q;
        }
    }
}

/* offs [P+1] from the plan's [P+2]; pairs without a row get -1; each row's K records
 * start empty (its choices on other ranks stay so). */
__global__ static void k_ep_rows(int32_t *offs, int32_t *row_of, mk_ep_rec *rec, const int32_t *full, size_t NP,
                                 int P, int K)
{
    MK_PDL_ENTRY();
    const int32_t R = full[P];
    GRID_STRIDE(i, NP * K > (size_t)P + 1 ? NP * K : (size_t)P + 1) {
        if (i <= (size_t)P) offs[i] = full[i];
        if (i < NP && row_of[i] >= R) row_of[i] = -1;
        if (i < NP * K && i / K < (size_t)R) rec[i] = mk_ep_rec{0.f, -1, 0};
    }
}

__global__ static void k_ep_records(mk_ep_rec *rec, int32_t *back_of, const int32_t *row_of, const int32_t *topk,
                                    const int32_t *slot_row, const float *gates, size_t NK, int K, int El, int P)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(c, NK) {
        if (slot_row[c] < 0) {
            back_of[c] = -1;
            continue;
        }
        const size_t t = c / K, j = c % K;
        const int32_t r = row_of[t * P + topk[c] / El];
        rec[(size_t)r * K + j] = mk_ep_rec{gates[c], topk[c] % El, 0};
        back_of[c] = (int32_t)((size_t)r * K + j);
    }
}

static int cuda_ep_send_plan(mk_backend *be, int32_t *offs, int32_t *row_tok, int32_t *row_of, mk_ep_rec *rec,
                             int32_t *back_of, const int32_t *topk, const int32_t *slot_row, const mk_real *gates,
                             int N, int K, int El, int P)
{
    cuda_impl *im = impl_of(be);
    if (N < 0 || K <= 0 || El <= 0 || P <= 0 || (size_t)N * P > 0x7fffffffu)
        return MK_FAIL(MK_ERR_INTERNAL, "ep_send_plan: N %d, K %d, El %d, P %d", N, K, El, P);
    const size_t NP = (size_t)N * P;
    MK_CHECK(mk_devbuf_reserve(&im->epb, (NP + (size_t)P + 2) * sizeof(int32_t), "ep_send_plan: bucket ids"));
    int32_t *ids = (int32_t *)im->epb.p, *full = ids + NP;
    if (N) LAUNCH(k_ep_mark, grid_for((size_t)N), "ep_send_plan (marks)", ids, topk, slot_row, N, K, El, P);
    MK_CHECK(cuda_route_plan(be, full, row_tok, row_of, ids, (int)NP, P + 1, 1, 0));
    LAUNCH(k_ep_rows, grid_for(NP * K > (size_t)P + 1 ? NP * K : (size_t)P + 1), "ep_send_plan (rows)", offs,
           row_of, rec, full, NP, P, K);
    if (N) LAUNCH(k_ep_records, grid_for((size_t)N * K), "ep_send_plan (records)", rec, back_of, row_of, topk,
                  slot_row, gates, (size_t)N * K, K, El, P);
    return MK_OK;
}

/* ids[s]: the record's local expert, or El (no row) for -1 and for bad ones, which *bad
 * counts. */
__global__ static void k_ep_unpack(int32_t *ids, float *gates, int32_t *bad, const mk_ep_rec *rec, size_t S, int El)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(s, S) {
        const int32_t x = rec[s].id;
        gates[s] = rec[s].g;
        ids[s] = x >= 0 && x < El ? x : El;
        if (x < -1 || x >= El) atomicAdd(bad, 1);
    }
}

/* offs [El+2] from the plan's and the bad count; the no-row bucket's slots and rows -1. */
__global__ static void k_ep_recv_fix(int32_t *offs, int32_t *row_slot, int32_t *slot_row, const int32_t *full,
                                     const int32_t *bad, size_t S, int El)
{
    MK_PDL_ENTRY();
    const int32_t R = full[El];
    GRID_STRIDE(i, S > (size_t)El + 2 ? S : (size_t)El + 2) {
        if (i <= (size_t)El) offs[i] = full[i];
        if (i == (size_t)El + 1) offs[i] = *bad;
        if (i < S && slot_row[i] >= R) slot_row[i] = -1;
        if (i < S && i >= (size_t)R) row_slot[i] = -1;
    }
}

static int cuda_ep_recv_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row, mk_real *gates,
                             const mk_ep_rec *rec, int S, int El)
{
    cuda_impl *im = impl_of(be);
    if (S < 0 || El <= 0) return MK_FAIL(MK_ERR_INTERNAL, "ep_recv_plan: S %d, El %d", S, El);
    MK_CHECK(mk_devbuf_reserve(&im->epb, ((size_t)S + (size_t)El + 3) * sizeof(int32_t), "ep_recv_plan: bucket ids"));
    int32_t *ids = (int32_t *)im->epb.p, *full = ids + S, *bad = full + El + 2;
    CU_CHECK(cudaMemsetAsync(bad, 0, sizeof *bad, 0), "ep_recv_plan: count");
    if (S) LAUNCH(k_ep_unpack, grid_for((size_t)S), "ep_recv_plan (records)", ids, gates, bad, rec, (size_t)S, El);
    MK_CHECK(cuda_route_plan(be, full, row_slot, slot_row, ids, S, El + 1, 1, 0));
    LAUNCH(k_ep_recv_fix, grid_for((size_t)S > (size_t)El + 2 ? (size_t)S : (size_t)El + 2), "ep_recv_plan (fix)",
           offs, row_slot, slot_row, full, bad, (size_t)S, El);
    return MK_OK;
}

__global__ static void k_ep_gate_grads(float *dgates, const float *dg, const int32_t *back_of, size_t n)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(c, n) dgates[c] = back_of[c] < 0 ? 0.f : dg[back_of[c]];
}

static int cuda_ep_gate_grads(mk_backend *be, mk_real *dgates, const mk_real *dg, const int32_t *back_of, int n)
{
    (void)be;
    if (n > 0) LAUNCH(k_ep_gate_grads, grid_for((size_t)n), "ep_gate_grads", dgates, dg, back_of, (size_t)n);
    return MK_OK;
}


__global__ static void k_permute_rows(float *dst, const float *src, const int32_t *row_slot,
                                      const float *weights, int R, int K, int D)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)R * D)
    {
        const size_t r = i / D, c = i % D;
        const int32_t s = row_slot[r];
        const float x = src[(size_t)(s / K) * D + c];
        dst[i] = weights ? weights[s] * x : x;
    }
}

/* The same four columns at a time (D4 = D / 4): rows are copied at full memory width. */
__global__ static void k_permute_rows4(float4 *dst, const float4 *src, const int32_t *row_slot,
                                       const float *weights, int R, int K, int D4)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)R * D4)
    {
        const size_t r = i / D4, c = i % D4;
        const int32_t s = row_slot[r];
        float4 x = src[(size_t)(s / K) * D4 + c];
        if (weights) {
            const float w = weights[s];
            x.x *= w, x.y *= w, x.z *= w, x.w *= w;
        }
        dst[i] = x;
    }
}

/* Rows of D floats can be moved as float4 when D is a multiple of 4 and both bases are
 * 16-byte aligned (the model's buffers are 64-byte aligned). */
static int rows_vec4(const void *a, const void *b, int D)
{
    return D % 4 == 0 && (((uintptr_t)a | (uintptr_t)b) & 15) == 0;
}

static int cuda_permute_rows(mk_backend *be, mk_real *dst, const mk_real *src,
                             const int32_t *row_slot, const mk_real *weights, int R, int K, int D)
{
    (void)be;
    if (R <= 0 || D <= 0) return MK_OK;
    if (rows_vec4(dst, src, D))
        LAUNCH(k_permute_rows4, grid_for((size_t)R * D / 4), "permute_rows", (float4 *)dst,
               (const float4 *)src, row_slot, weights, R, K, D / 4);
    else
        LAUNCH(k_permute_rows, grid_for((size_t)R * D), "permute_rows", dst, src, row_slot,
               weights, R, K, D);
    return MK_OK;
}

/* Gather per token element: one writer per dst element, choices added in j order. */
__global__ static void k_unpermute_add(float *dst, const float *src, const int32_t *slot_row,
                                       const float *weights, int N, int K, int D)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)N * D)
    {
        const size_t n = i / D, c = i % D;
        float y = dst[i];
        for (int j = 0; j < K; j++) {
            const size_t s = n * K + j;
            const int32_t r = slot_row[s];
            if (r < 0) continue;
            const float w = weights ? weights[s] : 1.0f;
            y += w * src[(size_t)r * D + c];
        }
        dst[i] = y;
    }
}

/* The same four columns at a time; each lane adds in the same j order as above. */
__global__ static void k_unpermute_add4(float4 *dst, const float4 *src, const int32_t *slot_row,
                                        const float *weights, int N, int K, int D4)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)N * D4)
    {
        const size_t n = i / D4, c = i % D4;
        float4 y = dst[i];
        for (int j = 0; j < K; j++) {
            const size_t s = n * K + j;
            const int32_t r = slot_row[s];
            if (r < 0) continue;
            const float w = weights ? weights[s] : 1.0f;
            const float4 x = src[(size_t)r * D4 + c];
            y.x += w * x.x, y.y += w * x.y, y.z += w * x.z, y.w += w * x.w;
        }
        dst[i] = y;
    }
}

static int cuda_unpermute_add(mk_backend *be, mk_real *dst, const mk_real *src,
                              const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    (void)be;
    if (N <= 0 || D <= 0) return MK_OK;
    if (rows_vec4(dst, src, D))
        LAUNCH(k_unpermute_add4, grid_for((size_t)N * D / 4), "unpermute_add", (float4 *)dst,
               (const float4 *)src, slot_row, weights, N, K, D / 4);
    else
        LAUNCH(k_unpermute_add, grid_for((size_t)N * D), "unpermute_add", dst, src, slot_row,
               weights, N, K, D);
    return MK_OK;
}

/* ------------------------------------------------------------------ expert rows
 *
 * The expert FFN's outputs (y, dxp) are expert rows: in bf16 mode with the fused ops, bf16
 * rows of D (D a multiple of 8), as the grouped GEMMs' epilogues write them; otherwise fp32.
 * Only combine_rows and combine_backward_gates read them; both widen each element exactly,
 * so they do in the same order what the fp32 kernels do on the widened rows. */
static int rows_bf16(const cuda_impl *im, int D)
{
    return im->fused && D % 8 == 0;
}

/* Eight bf16 as floats. */
__device__ __forceinline__ void widen8(float *v, uint4 x)
{
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}

/* dst = base + k_unpermute_add's sum over bf16 rows (base NULL: 0; base may be dst), eight
 * columns per thread (D8 = D / 8; dst, base and src 16-byte aligned). */
__global__ static void k_combine_rows_bf16(float4 *dst, const float4 *base, const uint4 *src,
                                           const int32_t *slot_row, const float *weights, int N, int K,
                                           int D8)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)N * D8)
    {
        const size_t n = i / D8, c = i % D8;
        float4 y0 = make_float4(0.f, 0.f, 0.f, 0.f), y1 = y0;
        if (base) y0 = base[2 * i], y1 = base[2 * i + 1];
        for (int j = 0; j < K; j++) {
            const size_t s = n * K + j;
            const int32_t r = slot_row[s];
            if (r < 0) continue;
            const float w = weights ? weights[s] : 1.0f;
            float x[8];
            widen8(x, src[(size_t)r * D8 + c]);
            y0.x += w * x[0], y0.y += w * x[1], y0.z += w * x[2], y0.w += w * x[3];
            y1.x += w * x[4], y1.y += w * x[5], y1.z += w * x[6], y1.w += w * x[7];
        }
        dst[2 * i] = y0, dst[2 * i + 1] = y1;
    }
}

/* The same one column at a time, for buffers off 16-byte alignment. */
__global__ static void k_combine_rows_bf16_1(float *dst, const float *base, const __nv_bfloat16 *src,
                                             const int32_t *slot_row, const float *weights, int N, int K,
                                             int D)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, (size_t)N * D)
    {
        const size_t n = i / D, c = i % D;
        float y = base ? base[i] : 0.f;
        for (int j = 0; j < K; j++) {
            const size_t s = n * K + j;
            const int32_t r = slot_row[s];
            if (r < 0) continue;
            y += (weights ? weights[s] : 1.0f) * __bfloat162float(src[(size_t)r * D + c]);
        }
        dst[i] = y;
    }
}

static int cuda_combine_rows(mk_backend *be, mk_real *dst, const mk_real *base, const mk_real *src,
                             const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    if (N <= 0 || D <= 0) return MK_OK;
    if (!rows_bf16(impl_of(be), D)) {
        if (base && base != dst) MK_CHECK(cuda_copy(be, dst, base, (size_t)N * D * sizeof(float)));
        if (!base) MK_CHECK(cuda_zero(be, dst, (size_t)N * D * sizeof(float)));
        return cuda_unpermute_add(be, dst, src, slot_row, weights, N, K, D);
    }
    if ((((uintptr_t)dst | (uintptr_t)base | (uintptr_t)src) & 15) == 0)
        LAUNCH(k_combine_rows_bf16, grid_for((size_t)N * D / 8), "combine_rows", (float4 *)dst,
               (const float4 *)base, (const uint4 *)src, slot_row, weights, N, K, D / 8);
    else
        LAUNCH(k_combine_rows_bf16_1, grid_for((size_t)N * D), "combine_rows", dst, base,
               (const __nv_bfloat16 *)src, slot_row, weights, N, K, D);
    return MK_OK;
}

/* fp32 rows made by the op sequence, rounded in place into the bf16 expert-row format (for
 * shapes the fused op does not take). */
static int rows_round(cuda_impl *im, float *p, size_t n, const char *what)
{
    if (n == 0) return MK_OK;
    void *tmp;
    MK_CHECK(scratch_get(im, n * 2, &tmp));
    MK_CHECK(mk_cuda_round_bf16(tmp, p, n, what));
    CU_CHECK(cudaMemcpyAsync(p, tmp, n * 2, cudaMemcpyDeviceToDevice, 0), what);
    return MK_OK;
}

/* One warp per choice: the dot product in double, lanes over strided columns, then a fixed
 * shuffle tree (the CPU sums in column order; the float results agree to rounding). With
 * dy not NULL (combine_backward) the warp also writes the choice's output-gradient row,
 * dy[r, :] = w * dout[n, :] (w = weights[s], or 1 when NULL), from the dout it reads for
 * the dot anyway; ovec: dy 16-byte aligned. */
__global__ static void k_combine_backward_gates(float *dgates, float *dy, const float *weights, const float *dout,
                                                const float *y, const int32_t *slot_row, int N, int K, int D,
                                                int vec, int ovec)
{
    MK_PDL_ENTRY();
    const size_t s = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (s >= (size_t)N * K) return; /* whole warps leave together: blockDim is a multiple of 32 */
    const float *d = dout + (s / K) * D;
    const int32_t r = slot_row[s];
    const float w = weights ? weights[s] : 1.0f;
    double acc = 0;
    if (r >= 0 && vec) { /* 16-byte loads: D in fours, rows aligned */
        const float4 *x4 = (const float4 *)(y + (size_t)r * D), *d4 = (const float4 *)d;
        for (int i = lane; i < D / 4; i += 32) {
            const float4 a = d4[i], b = x4[i];
            acc += (double)a.x * b.x + (double)a.y * b.y + (double)a.z * b.z + (double)a.w * b.w;
            if (!dy) continue;
            float *o = dy + (size_t)r * D + 4 * i;
            const float4 v = make_float4(w * a.x, w * a.y, w * a.z, w * a.w);
            if (ovec)
                *(float4 *)o = v;
            else
                o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
        }
    } else if (r >= 0) {
        const float *x = y + (size_t)r * D;
        for (int i = lane; i < D; i += 32) {
            acc += (double)d[i] * x[i];
            if (dy) dy[(size_t)r * D + i] = w * d[i];
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) dgates[s] = (float)acc;
}

/* The same over bf16 rows, eight columns per lane step when vec (dout and y 16-byte
 * aligned, D a multiple of 8); the rows to dy as bf16, each product w * dout rounded once
 * (the bits of the expert FFN's own gather). */
__global__ static void k_combine_backward_gates_bf16(float *dgates, __nv_bfloat16 *dy, const float *weights,
                                                     const float *dout, const __nv_bfloat16 *y,
                                                     const int32_t *slot_row, int N, int K, int D, int vec,
                                                     int ovec)
{
    MK_PDL_ENTRY();
    const size_t s = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (s >= (size_t)N * K) return;
    const float *d = dout + (s / K) * D;
    const int32_t r = slot_row[s];
    const float w = weights ? weights[s] : 1.0f;
    double acc = 0;
    if (r >= 0 && vec) {
        const uint4 *x8 = (const uint4 *)(y + (size_t)r * D);
        for (int i = lane; i < D / 8; i += 32) {
            float b[8];
            widen8(b, x8[i]);
            const float4 a0 = ((const float4 *)d)[2 * i], a1 = ((const float4 *)d)[2 * i + 1];
            acc += (double)a0.x * b[0] + (double)a0.y * b[1] + (double)a0.z * b[2] + (double)a0.w * b[3];
            acc += (double)a1.x * b[4] + (double)a1.y * b[5] + (double)a1.z * b[6] + (double)a1.w * b[7];
            if (!dy) continue;
            __nv_bfloat162 h[4] = {__floats2bfloat162_rn(w * a0.x, w * a0.y), __floats2bfloat162_rn(w * a0.z, w * a0.w),
                                   __floats2bfloat162_rn(w * a1.x, w * a1.y), __floats2bfloat162_rn(w * a1.z, w * a1.w)};
            __nv_bfloat16 *o = dy + (size_t)r * D + 8 * i;
            if (ovec)
                *(uint4 *)o = *(const uint4 *)h;
            else
                for (int k = 0; k < 4; k++) o[2 * k] = h[k].x, o[2 * k + 1] = h[k].y;
        }
    } else if (r >= 0) {
        const __nv_bfloat16 *x = y + (size_t)r * D;
        for (int i = lane; i < D; i += 32) {
            acc += (double)d[i] * __bfloat162float(x[i]);
            if (dy) dy[(size_t)r * D + i] = __float2bfloat16_rn(w * d[i]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) dgates[s] = (float)acc;
}

/* combine_backward_gates, and with dy not NULL combine_backward's rows: bf16 where the
 * expert rows are (the expert FFN's operand format), else fp32. The dot products run the
 * same code either way: the gate gradients have the same bits with and without the rows. */
static int combine_backward(mk_backend *be, mk_real *dgates, void *dy, const mk_real *dout, const mk_real *y,
                            const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    if (N <= 0 || K <= 0) return MK_OK;
    const size_t warps = (size_t)N * K, per_block = TPB / 32;
    const unsigned grid = (unsigned)((warps + per_block - 1) / per_block);
    const int ovec = ((uintptr_t)dy & 15) == 0;
    if (rows_bf16(impl_of(be), D)) {
        const int vec = (((uintptr_t)dout | (uintptr_t)y) & 15) == 0;
        LAUNCH(k_combine_backward_gates_bf16, grid, dy ? "combine_backward" : "combine_backward_gates", dgates,
               (__nv_bfloat16 *)dy, weights, dout, (const __nv_bfloat16 *)y, slot_row, N, K, D, vec, ovec);
    } else {
        const int vec = D % 4 == 0 && (((uintptr_t)dout | (uintptr_t)y) & 15) == 0;
        LAUNCH(k_combine_backward_gates, grid, dy ? "combine_backward" : "combine_backward_gates", dgates,
               (float *)dy, weights, dout, y, slot_row, N, K, D, vec, ovec);
    }
    return MK_OK;
}

static int cuda_combine_backward_gates(mk_backend *be, mk_real *dgates, const mk_real *dout,
                                       const mk_real *y, const int32_t *slot_row, int N, int K,
                                       int D)
{
    return combine_backward(be, dgates, NULL, dout, y, slot_row, NULL, N, K, D);
}

/* The gate gradients and the expert FFN's output-gradient rows in one pass: each token's
 * dout row is read once for its K choices (adjacent warps) instead of once more per choice
 * by the FFN's gather. */
static int cuda_combine_backward(mk_backend *be, mk_real *dgates, void *dy_op, const mk_real *dout,
                                 const mk_real *y, const int32_t *slot_row, const mk_real *weights, int N,
                                 int K, int D)
{
    if (!dy_op) return MK_FAIL(MK_ERR_INTERNAL, "combine_backward: no buffer for the rows");
    return combine_backward(be, dgates, dy_op, dout, y, slot_row, weights, N, K, D);
}

/* ------------------------------------------------------------------ SwiGLU */

/* expf (not __expf): the accurate one, closest to the host's. exp(-a) overflows to inf
 * for very negative a, which correctly gives 0. */
__device__ static float sigmoidf_(float a) { return 1.0f / (1.0f + expf(-a)); }

__global__ static void k_swiglu_forward(float *h, const float *a, const float *b, size_t n)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n) h[i] = a[i] * sigmoidf_(a[i]) * b[i];
}

static int cuda_swiglu_forward(mk_backend *be, mk_real *h, const mk_real *a, const mk_real *b,
                               size_t n)
{
    (void)be;
    if (n) LAUNCH(k_swiglu_forward, grid_for(n), "swiglu_forward", h, a, b, n);
    return MK_OK;
}

__global__ static void k_swiglu_backward(float *da, float *db, const float *dh, const float *a,
                                         const float *b, size_t n)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n)
    {
        /* Read everything first: da or db may alias an input. */
        const float x = a[i], sg = sigmoidf_(x), g = dh[i], bi = b[i];
        da[i] = g * bi * (sg + x * sg * (1 - sg));
        db[i] = g * x * sg;
    }
}

static int cuda_swiglu_backward(mk_backend *be, mk_real *da, mk_real *db, const mk_real *dh,
                                const mk_real *a, const mk_real *b, size_t n)
{
    (void)be;
    if (n) LAUNCH(k_swiglu_backward, grid_for(n), "swiglu_backward", da, db, dh, a, b, n);
    return MK_OK;
}

/* ------------------------------------------------------------------ expert FFN */

/* bf16 with our own grouped GEMMs: the fused op of mk_expert_ffn.cu (a1, a3 and hact then
 * hold bf16 state, which only the fused backward reads). Otherwise the op sequence. Forward
 * and backward decide alike from the shape and the state buffers, so a backward always
 * reads its forward's state in the format that forward wrote. */
static int use_fused_ffn(const cuda_impl *im, int E, int D, int F, const void *xp, const void *a1,
                         const void *a3, const void *hact)
{
    return im->fused && mk_cuda_ffn_supported(E, D, F) &&
           (((uintptr_t)xp | (uintptr_t)a1 | (uintptr_t)a3 | (uintptr_t)hact) & 15) == 0;
}

/* The fused expert FFN's state, made on first use, with the SM margin of the moment. */
static int ffn_state(cuda_impl *im)
{
    if (im->ffn) return MK_OK;
    MK_CHECK(mk_cuda_ffn_create(&im->ffn));
    return mk_cuda_ffn_set_sm_margin(im->ffn, im->overlap_sms);
}

static int cuda_expert_ffn_forward(mk_backend *be, mk_real *y, mk_real *a1, mk_real *a3,
                                   mk_real *hact, mk_real *xp, const mk_rows_gather *x,
                                   const mk_real *w1, const mk_real *w3, const mk_real *w2,
                                   const int *offs_host, int E, int D, int F)
{
    cuda_impl *im = impl_of(be);
    if (!use_fused_ffn(im, E, D, F, xp, a1, a3, hact)) {
        MK_CHECK(mk_expert_ffn_forward_ops(be, y, a1, a3, hact, xp, x, w1, w3, w2, offs_host, E, D, F));
        return rows_bf16(im, D) ? rows_round(im, y, (size_t)offs_host[E] * D, "expert FFN forward: y rows") : MK_OK;
    }
    MK_CHECK(ffn_state(im));
    return mk_cuda_ffn_forward(im->ffn, y, a1, a3, hact, xp, x, w1, w3, w2, offs_host,
                               E, D, F);
}

static int cuda_expert_ffn_backward(mk_backend *be, mk_real *dxp, mk_real *dw1, mk_real *dw3,
                                    mk_real *dw2, mk_real *dhact, mk_real *da1, mk_real *da3,
                                    mk_real *dy, const mk_rows_gather *dout, const mk_real *xp,
                                    const mk_real *a1, const mk_real *a3, const mk_real *hact,
                                    const mk_real *w1, const mk_real *w3, const mk_real *w2,
                                    const int *offs_host, int E, int D, int F)
{
    cuda_impl *im = impl_of(be);
    if (!use_fused_ffn(im, E, D, F, xp, a1, a3, hact)) {
        MK_CHECK(mk_expert_ffn_backward_ops(be, dxp, dw1, dw3, dw2, dhact, da1, da3, dy, dout, xp, a1,
                                            a3, hact, w1, w3, w2, offs_host, E, D, F));
        return rows_bf16(im, D) ? rows_round(im, dxp, (size_t)offs_host[E] * D, "expert FFN backward: dxp rows")
                                : MK_OK;
    }
    MK_CHECK(ffn_state(im));
    return mk_cuda_ffn_backward(im->ffn, dxp, dw1, dw3, dw2, dhact, da1, da3, dout, xp,
                                a1, a3, hact, w1, w3, w2, offs_host, E, D, F);
}

/* ------------------------------------------------------------------ loss */

/* One block per row: max (exact), sum of exp in double by the block tree, then the loss
 * and the gradient. Every read of the row, the target logit included, happens before the
 * block_sum barrier and every write after it, so dlogits may alias logits. */
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename TL, typename TD>
__global__ static void k_cross_entropy(float *losses, TD *dlogits, const TL *logits,
                                       const int32_t *targets, int V, float dscale)
{
    MK_PDL_ENTRY();
    __shared__ double sh[TPB];
    __shared__ float shf[TPB];
    const size_t n = blockIdx.x;
    const TL *l = logits + n * V;
    const int tgt = targets[n];
    if (tgt < 0) { /* uniform per block: no thread reaches a barrier alone */
        if (threadIdx.x == 0) losses[n] = 0;
        if (dlogits)
            for (int i = threadIdx.x; i < V; i += blockDim.x) dlogits[n * V + i] = (TD)0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = to_f32(l[i]) > mx ? to_f32(l[i]) : mx;
    mx = block_max(mx, shf);
    const float lt = to_f32(l[tgt]);
    double sum = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(to_f32(l[i]) - mx);
    sum = block_sum(sum, sh);
    const double lse = mx + log(sum);
    if (threadIdx.x == 0) losses[n] = (float)(lse - lt);
    if (dlogits) {
        TD *d = dlogits + n * V;
        const float lse_r = (float)lse;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            float p = expf(to_f32(l[i]) - lse_r);
            d[i] = (TD)(dscale * (p - (float)(i == tgt)));
        }
    }
}

/* The fused output layer's cross-entropy: one row per block of CE_TPB threads with the row
 * of logits staged in shared memory, so HBM is read once instead of three times (max, sum,
 * dlogits over a 201 KB row of GPT-2's vocabulary, which does not stay in L1 or L2 between
 * passes with thousands of rows in flight). The reductions run in a fixed order (warp
 * shuffles, then the 32 warp results by warp 0): the same bits on every call. Rows longer
 * than the shared memory, or logits off 16-byte alignment, take k_cross_entropy. */
#define CE_TPB 1024
/* Static shared memory the kernel needs beside the row (rounded up). */
#define CE_STATIC_SMEM 1024

/* Four logits of a row as one load (uint2 of bf16 logits: the fused output layer's). */
template <typename TL> struct ce_chunk;
template <> struct ce_chunk<__nv_bfloat16> {
    typedef uint2 T;
    static __device__ __forceinline__ float4 f4(uint2 u)
    {
        const float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x);
        const float2 b = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
        return make_float4(a.x, a.y, b.x, b.y);
    }
};

template <typename TL>
__global__ static void __launch_bounds__(CE_TPB)
k_cross_entropy_row(float *losses, __nv_bfloat16 *dlogits, const TL *logits,
                    const int32_t *targets, int V, float dscale)
{
    MK_PDL_ENTRY();
    typedef typename ce_chunk<TL>::T chunk;
    extern __shared__ float4 row_smem[];
    chunk *row4 = (chunk *)row_smem;
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t n = blockIdx.x;
    const int V4 = V / 4, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tgt = targets[n];
    uint2 *d = dlogits ? (uint2 *)(dlogits + n * V) : NULL;
    if (tgt < 0) { /* uniform per block: no thread reaches a barrier alone */
        if (threadIdx.x == 0) losses[n] = 0;
        if (dlogits)
            for (int i = threadIdx.x; i < V4; i += CE_TPB) d[i] = make_uint2(0, 0);
        return;
    }
    const chunk *l4 = (const chunk *)(logits + n * V);
    float mx = -INFINITY;
#pragma unroll 4
    for (int i = threadIdx.x; i < V4; i += CE_TPB) {
        const chunk c = l4[i];
        row4[i] = c;
        const float4 v = ce_chunk<TL>::f4(c);
        /* comparisons that skip NaN, like the other cross-entropy kernels */
        mx = v.x > mx ? v.x : mx, mx = v.y > mx ? v.y : mx;
        mx = v.z > mx ? v.z : mx, mx = v.w > mx ? v.w : mx;
    }
    mx = warp_max(mx);
    if (lane == 0) shf[warp] = mx;
    __syncthreads();
    mx = warp_max(lane < CE_TPB / 32 ? shf[lane] : -INFINITY);
    /* __expf (one multiply and the SFU's exp2) for the two passes of exps: the accurate
     * expf's range reduction made the kernel issue-bound beside its memory traffic (1.21 ms
     * at bench-s, with 0.8 ms of bytes). Its arguments are at most 0 here, where its
     * relative error (a few ulp of float) is far below the bf16 of the logits and of
     * dlogits; the sum stays in double. */
    double sum = 0;
    for (int i = threadIdx.x; i < V4; i += CE_TPB) {
        const float4 v = ce_chunk<TL>::f4(row4[i]);
        sum += (double)(__expf(v.x - mx) + __expf(v.y - mx)) + (double)(__expf(v.z - mx) + __expf(v.w - mx));
    }
    sum = warp_sum(sum);
    if (lane == 0) shd[warp] = sum;
    __syncthreads();
    sum = warp_sum(lane < CE_TPB / 32 ? shd[lane] : 0.0);
    const double lse = mx + log(sum);
    const float lt = to_f32(((const TL *)row4)[tgt]);
    if (threadIdx.x == 0) losses[n] = (float)(lse - lt);
    if (!dlogits) return;
    const float lse_r = (float)lse;
    for (int i = threadIdx.x; i < V4; i += CE_TPB) {
        const float4 v = ce_chunk<TL>::f4(row4[i]);
        const int j = 4 * i;
        const __nv_bfloat162 a = __floats2bfloat162_rn(dscale * (__expf(v.x - lse_r) - (float)(j == tgt)),
                                                       dscale * (__expf(v.y - lse_r) - (float)(j + 1 == tgt)));
        const __nv_bfloat162 b = __floats2bfloat162_rn(dscale * (__expf(v.z - lse_r) - (float)(j + 2 == tgt)),
                                                       dscale * (__expf(v.w - lse_r) - (float)(j + 3 == tgt)));
        d[i] = make_uint2(*(const uint32_t *)&a, *(const uint32_t *)&b);
    }
}

/* Targets come to the host to be validated like the CPU does (N ints). */
static int check_targets(const int32_t *targets, int N, int V)
{
    int32_t *tg = (int32_t *)malloc((size_t)N * sizeof *tg);
    if (!tg) return MK_FAIL(MK_ERR_NOMEM, "cross_entropy: out of host memory");
    cudaError_t e = cudaMemcpy(tg, targets, (size_t)N * sizeof *tg, cudaMemcpyDeviceToHost);
    int rc = MK_OK;
    if (e != cudaSuccess)
        rc = MK_FAIL(MK_ERR_INTERNAL, "cuda: cross_entropy: targets: %s", cudaGetErrorString(e));
    for (int n = 0; rc == MK_OK && n < N; n++)
        if (tg[n] >= V)
            rc = MK_FAIL(MK_ERR_INPUT, "cross_entropy: target %d at position %d outside "
                         "vocabulary %d", (int)tg[n], n, V);
    free(tg);
    return rc;
}

static int cuda_cross_entropy(mk_backend *be, mk_real *losses, mk_real *dlogits,
                              const mk_real *logits, const int32_t *targets, int N, int V,
                              mk_real dscale)
{
    (void)be;
    if (V <= 0) return MK_FAIL(MK_ERR_INTERNAL, "cross_entropy: vocabulary size %d", V);
    if (N <= 0) return MK_OK;
    MK_CHECK(check_targets(targets, N, V));
    CU_CHECK(mk_launch(k_cross_entropy<float, float>, dim3((unsigned)N), dim3(TPB), 0, losses, dlogits, logits,
                       targets, V, dscale), "cross_entropy");
    return MK_OK;
}

/* ------------------------------------------------------------------ output layer */

/* bf16 mode (fused): x and W rounded to bf16 once, the logits GEMM on bf16 operands, and
 * cross-entropy writing dlogits as bf16 into the backend's workspace, where the backward's
 * two GEMMs read them (half the bytes of fp32, and no rounding pass over [N, V]). Forward
 * and backward decide alike from the shape, so they agree on where the state is. */
static int use_fused_output(const cuda_impl *im, int N, int V, int D)
{
    return im->fused && N > 0 && V > 0 && D > 0 && V % 4 == 0 && D % 4 == 0;
}

static int cuda_output_forward(mk_backend *be, mk_real *losses, mk_real *logits, const mk_real *x,
                               const mk_real *W, int tied, const int32_t *targets, int N, int V,
                               int D, int train)
{
    cuda_impl *im = impl_of(be);
    im->out_ready = 0;
    if (!use_fused_output(im, N, V, D))
        return mk_output_forward_ops(be, losses, logits, x, W, tied, targets, N, V, D, train);
    const size_t sx = up256((size_t)N * D * 2), sw = up256((size_t)V * D * 2);
    const size_t bytes = sx + sw + (train ? up256((size_t)N * V * 2) : 0);
    MK_CHECK(mk_devbuf_reserve(&im->outb, bytes, "output layer workspace"));
    char *xb = (char *)im->outb.p, *wb = xb + sx;
    __nv_bfloat16 *dlog = train ? (__nv_bfloat16 *)(wb + sw) : NULL;
    MK_CHECK(mk_cuda_round_bf16(xb, x, (size_t)N * D, "output layer: input"));
    MK_CHECK(mk_cuda_round_bf16(wb, W, (size_t)V * D, "output layer: weights"));
    /* The logits leave the GEMM as bf16 (in the first half of the logits buffer, which
     * holds what the backend chooses): half the bytes to write and to read back, like
     * autocast's bf16 logits; the cross-entropy widens them and sums in fp32 and double. */
    __nv_bfloat16 *logb = (__nv_bfloat16 *)logits;
    MK_CHECK(matmul_bf16_to(im, logb, CUDA_R_16BF, xb, wb, N, V, D, 0, tied, 1, 0, "output layer: logits"));
    MK_CHECK(check_targets(targets, N, V));
    if ((size_t)V * sizeof *logb <= im->ce_smem_bf16 && ((uintptr_t)logits & 15) == 0) {
        CU_CHECK(mk_launch(k_cross_entropy_row<__nv_bfloat16>, dim3((unsigned)N), dim3(CE_TPB),
                           (size_t)V * sizeof *logb, losses, dlog, logb, targets, V, 1.0f),
                           "output layer: cross_entropy");
    } else {
        CU_CHECK(mk_launch(k_cross_entropy<__nv_bfloat16, __nv_bfloat16>, dim3((unsigned)N), dim3(TPB), 0, losses,
                           dlog, logb, targets, V, 1.0f), "output layer: cross_entropy");
    }
    im->out_ready = train;
    im->out_N = N, im->out_V = V, im->out_D = D, im->out_tied = tied;
    return MK_OK;
}

static int cuda_output_backward(mk_backend *be, mk_real *dx, mk_real *dW, const mk_real *x,
                                const mk_real *W, int tied, mk_real *logits, int N, int V, int D,
                                mk_real ce_scale)
{
    cuda_impl *im = impl_of(be);
    if (!use_fused_output(im, N, V, D))
        return mk_output_backward_ops(be, dx, dW, x, W, tied, logits, N, V, D, ce_scale);
    if (!im->out_ready || im->out_N != N || im->out_V != V || im->out_D != D || im->out_tied != tied)
        return MK_FAIL(MK_ERR_INTERNAL, "output_backward without the training output_forward of "
                       "this shape (%d x %d x %d)", N, V, D);
    const size_t sx = up256((size_t)N * D * 2), sw = up256((size_t)V * D * 2);
    const char *xb = (const char *)im->outb.p, *wb = xb + sx, *dlog = wb + sw;
    MK_CHECK(matmul_bf16(im, dx, dlog, wb, N, D, V, 0, !tied, ce_scale, 0, "output layer: dx"));
    if (tied) MK_CHECK(matmul_bf16(im, dW, dlog, xb, V, D, N, 1, 0, ce_scale, 1, "output layer: dW"));
    else MK_CHECK(matmul_bf16(im, dW, xb, dlog, D, V, N, 1, 0, ce_scale, 1, "output layer: dW"));
    im->out_ready = 0;
    return MK_OK;
}

/* ------------------------------------------------------------------ optimizer */

/* The CPU's update in the CPU's double arithmetic, element by element (the same bits). */
typedef struct adamw_args {
    float gscale;
    double lr, beta1, beta2, eps, wd, ibc1, ibc2; /* reciprocal bias corrections */
} adamw_args;

__device__ __forceinline__ void adamw1(float &p, float g, float &m, float &v, const adamw_args &a)
{
    const double gi = (float)(a.gscale * g);
    const double mi = a.beta1 * m + (1.0 - a.beta1) * gi;
    const double vi = a.beta2 * v + (1.0 - a.beta2) * gi * gi;
    m = (float)mi;
    v = (float)vi;
    const double pi = p;
    p = (float)(pi - a.lr * ((mi * a.ibc1) / (sqrt(vi * a.ibc2) + a.eps) + a.wd * pi));
}

/* Four elements per thread with 16-byte loads where all four arrays are 16-byte aligned
 * (n4 = n / 4 chunks), then the rest one by one: the update is memory-bound, and scalar
 * loads left it at half the bandwidth. Four blocks per SM (64 registers a thread; the
 * double arithmetic took 66, which left three): more loads in flight. */
__global__ static void __launch_bounds__(TPB, 4) k_adamw(float *p, const float *g, float *m, float *v, size_t n,
                                                         size_t n4, const adamw_args a)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n4)
    {
        float4 P = ((float4 *)p)[i], M = ((float4 *)m)[i], V = ((float4 *)v)[i];
        const float4 G = ((const float4 *)g)[i];
        adamw1(P.x, G.x, M.x, V.x, a);
        adamw1(P.y, G.y, M.y, V.y, a);
        adamw1(P.z, G.z, M.z, V.z, a);
        adamw1(P.w, G.w, M.w, V.w, a);
        ((float4 *)p)[i] = P, ((float4 *)m)[i] = M, ((float4 *)v)[i] = V;
    }
    GRID_STRIDE(i, n - 4 * n4)
    {
        const size_t j = 4 * n4 + i;
        adamw1(p[j], g[j], m[j], v[j], a);
    }
}

static int cuda_adamw(mk_backend *be, mk_real *p, const mk_real *g, mk_real *m, mk_real *v,
                      size_t n, mk_real gscale, double lr, double beta1, double beta2, double eps,
                      double wd, long t)
{
    (void)be;
    if (t < 1) return MK_FAIL(MK_ERR_INTERNAL, "adamw: step %ld, steps start at 1", t);
    /* Bias corrections on the host with the host's pow, as on the CPU. */
    const adamw_args a = {gscale, lr, beta1, beta2, eps, wd, 1.0 / (1.0 - pow(beta1, (double)t)),
                          1.0 / (1.0 - pow(beta2, (double)t))};
    const int vec = (((uintptr_t)p | (uintptr_t)g | (uintptr_t)m | (uintptr_t)v) & 15) == 0;
    const size_t n4 = vec ? n / 4 : 0;
    if (n) LAUNCH(k_adamw, grid_for(n4 ? n4 : n), "adamw", p, g, m, v, n, n4, a);
    return MK_OK;
}

/* ------------------------------------------------------------------ lifetime */

/* Only the expert FFN's GEMMs are persistent (CUTLASS); cuBLAS's and our own kernels launch
 * a block per tile and fill whatever SMs are free. */
static int cuda_comm_overlap(mk_backend *be, int sms)
{
    cuda_impl *im = impl_of(be);
    im->overlap_sms = sms > 0 ? sms : 0;
    return im->ffn ? mk_cuda_ffn_set_sm_margin(im->ffn, im->overlap_sms) : MK_OK;
}

static int cuda_sync(mk_backend *be)
{
    CU_CHECK(cudaDeviceSynchronize(), "synchronize");
    return route_check(impl_of(be));
}

/* Timing events for the profiler's timeline (mk_backend_prof.c): recorded on the queue, read
 * later, so the profiled run waits no more often than a plain one. */
static int cuda_mark(mk_backend *be, int i)
{
    cuda_impl *im = impl_of(be);
    if (i < 0 || i >= MK_MARKS) return MK_FAIL(MK_ERR_INTERNAL, "cuda: mark %d outside 0..%d", i, MK_MARKS - 1);
    if (!im->marks && !(im->marks = (cudaEvent_t *)calloc(MK_MARKS, sizeof *im->marks)))
        return MK_FAIL(MK_ERR_NOMEM, "cuda: timing events");
    if (!im->marks[i]) CU_CHECK(cudaEventCreate(&im->marks[i]), "mark: cudaEventCreate");
    CU_CHECK(cudaEventRecord(im->marks[i], 0), "mark");
    return MK_OK;
}

static int cuda_mark_ms(mk_backend *be, int a, int b, double *ms)
{
    cuda_impl *im = impl_of(be);
    if (a < 0 || b < 0 || a >= MK_MARKS || b >= MK_MARKS || !im->marks || !im->marks[a] || !im->marks[b])
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: mark_ms(%d, %d): not recorded", a, b);
    float f = 0;
    CU_CHECK(cudaEventSynchronize(im->marks[b]), "mark_ms");
    CU_CHECK(cudaEventElapsedTime(&f, im->marks[a], im->marks[b]), "mark_ms");
    *ms = f;
    return MK_OK;
}

static void cuda_destroy(mk_backend *be)
{
    if (!be) return;
    cuda_impl *im = impl_of(be);
    if (im) {
        mk_cuda_ffn_destroy(im->ffn);
        mk_devbuf_release(&im->outb);
        mk_devbuf_release(&im->mmb);
        mk_gemm_residual_destroy(im->gres);
        if (im->blas) cublasDestroy(im->blas);
        if (im->gptr) cudaFree(im->gptr);
        if (im->rope_cs) cudaFree(im->rope_cs);
        mk_devbuf_release(&im->scratch);
        mk_devbuf_release(&im->epb);
        if (im->emb_up_pending) cudaEventSynchronize(im->emb_up_ev);
        if (im->emb_h) cudaFreeHost(im->emb_h);
        if (im->emb_tok_ev) cudaEventDestroy(im->emb_tok_ev);
        if (im->emb_up_ev) cudaEventDestroy(im->emb_up_ev);
        if (im->route_pending) cudaEventSynchronize(im->route_ev);
        if (im->route_fill_h) cudaFreeHost(im->route_fill_h);
        if (im->route_ev) cudaEventDestroy(im->route_ev);
        if (im->marks)
            for (int i = 0; i < MK_MARKS; i++)
                if (im->marks[i]) cudaEventDestroy(im->marks[i]);
        free(im->marks);
        free(im);
    }
    free(be);
}

static void fill_ops(mk_backend_ops *o)
{
    memset(o, 0, sizeof *o);
    o->name = "cuda";
    o->alloc = cuda_alloc;
    o->free = cuda_free;
    o->zero = cuda_zero;
    o->copy = cuda_copy;
    o->to_host = cuda_to_host;
    o->from_host = cuda_from_host;
    o->matmul = cuda_matmul;
    o->grouped_matmul = cuda_grouped_matmul;
    o->grouped_matmul_wgrad = cuda_grouped_matmul_wgrad;
    o->add = cuda_add;
    o->scale = cuda_scale;
    o->sumsq = cuda_sumsq;
    o->sumsq_ranges = cuda_sumsq_ranges;
    o->nonfinite = cuda_nonfinite;
    o->nonfinite_flag = cuda_nonfinite_flag;
    o->embedding_forward = cuda_embedding_forward;
    o->embedding_backward = cuda_embedding_backward;
    o->rmsnorm_forward = cuda_rmsnorm_forward;
    o->rmsnorm_backward = cuda_rmsnorm_backward;
    o->rope_forward = cuda_rope_forward;
    o->rope_backward = cuda_rope_backward;
    o->attention_forward = cuda_attention_forward;
    o->attention_backward = cuda_attention_backward;
    o->attention_rope_forward = cuda_attention_rope_forward;
    o->attention_block_forward = cuda_attention_block_forward;
    o->attention_block_backward = cuda_attention_block_backward;
    o->moe_input_forward = cuda_moe_input_forward;
    o->moe_input_backward = cuda_moe_input_backward;
    o->attention_rope_backward = cuda_attention_rope_backward;
    o->router_forward = cuda_router_forward;
    o->router_backward = cuda_router_backward;
    o->route_plan = cuda_route_plan;
    o->ep_send_plan = cuda_ep_send_plan;
    o->ep_recv_plan = cuda_ep_recv_plan;
    o->ep_gate_grads = cuda_ep_gate_grads;
    o->sequence_counts = cuda_sequence_counts;
    o->permute_rows = cuda_permute_rows;
    o->unpermute_add = cuda_unpermute_add;
    o->linear_backward = cuda_linear_backward;
    o->combine_rows = cuda_combine_rows;
    o->combine_backward_gates = cuda_combine_backward_gates;
    o->swiglu_forward = cuda_swiglu_forward;
    o->swiglu_backward = cuda_swiglu_backward;
    o->expert_ffn_forward = cuda_expert_ffn_forward;
    o->expert_ffn_backward = cuda_expert_ffn_backward;
    o->output_forward = cuda_output_forward;
    o->output_backward = cuda_output_backward;
    o->cross_entropy = cuda_cross_entropy;
    o->adamw = cuda_adamw;
    o->sync = cuda_sync;
    o->comm_overlap = cuda_comm_overlap;
    o->mark = cuda_mark;
    o->mark_ms = cuda_mark_ms;
    o->destroy = cuda_destroy;
}

extern "C" int mk_backend_cuda_device_count(int *n)
{
    /* No device, no driver or a driver too old for this runtime all mean: no usable GPU. */
    if (cudaGetDeviceCount(n) != cudaSuccess) *n = 0;
    cudaGetLastError();
    return MK_OK;
}

extern "C" int mk_backend_cuda_create(int device, int bf16, mk_backend **out)
{
    *out = NULL;
    int count = 0;
    CU_CHECK(cudaGetDeviceCount(&count), "device count");
    if (device < 0 || device >= count)
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: device %d requested, %d visible", device, count);
    CU_CHECK(cudaSetDevice(device), "set device");
    mk_backend *be = (mk_backend *)calloc(1, sizeof *be);
    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return MK_FAIL(MK_ERR_NOMEM, "cuda backend: cannot allocate its state");
    }
    im->device = device;
    im->bf16 = bf16 != 0;
    /* MOEKIT_CUDA_FUSED=0 runs bf16 mode without our grouped GEMMs and fused ops (expert
     * GEMMs as one cuBLAS call per expert, the output layer as matmul + cross_entropy): a
     * benchmarking switch, read once here so that the ops never look at the environment. */
    const char *fz = getenv("MOEKIT_CUDA_FUSED");
    im->fused = im->bf16 && !(fz && strcmp(fz, "0") == 0);
    const char *nowg = getenv("MOEKIT_NO_WGMMA");
    im->flash_wgmma = !(nowg && strcmp(nowg, "1") == 0) && mk_grouped_gemm_wgmma_available();
    fill_ops(&im->ops);
    /* the rows it writes are the fused expert FFN's operands, read only in that mode */
    if (im->fused) im->ops.combine_backward = cuda_combine_backward;
    be->ops = &im->ops;
    be->impl = im;
    cublasStatus_t s = cublasCreate(&im->blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        im->blas = NULL;
        cuda_destroy(be);
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: cublasCreate: %s", cublasGetStatusString(s));
    }
    int rc = mk_gemm_residual_create(&im->gres);
    if (rc != MK_OK) {
        cuda_destroy(be);
        return rc;
    }
    cudaError_t ev = cudaEventCreateWithFlags(&im->emb_tok_ev, cudaEventDisableTiming);
    if (ev == cudaSuccess) ev = cudaEventCreateWithFlags(&im->emb_up_ev, cudaEventDisableTiming);
    if (ev == cudaSuccess) ev = cudaEventCreateWithFlags(&im->route_ev, cudaEventDisableTiming);
    if (ev != cudaSuccess) {
        cuda_destroy(be);
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: cudaEventCreate: %s", cudaGetErrorString(ev));
    }
    /* Pedantic fp32: no TF32 or other reduced-precision shortcuts (not even through
     * NVIDIA_TF32_OVERRIDE), so GEMMs match the CPU to fp32 round-off. No atomics: cuBLAS
     * is then bitwise reproducible run to run on the same GPU and toolkit. The default
     * stream keeps GEMMs ordered with the kernels and copies. */
    if ((s = cublasSetMathMode(im->blas, im->bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetAtomicsMode(im->blas, CUBLAS_ATOMICS_NOT_ALLOWED)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetPointerMode(im->blas, CUBLAS_POINTER_MODE_HOST)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetStream(im->blas, 0)) != CUBLAS_STATUS_SUCCESS) {
        cuda_destroy(be);
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: cuBLAS setup: %s", cublasGetStatusString(s));
    }
    /* The output layer's cross-entropy keeps a row of logits in shared memory: as much as
     * the device lets one block opt in to (0 when it cannot: the three-pass kernel then). */
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
        optin > CE_STATIC_SMEM &&
        cudaFuncSetAttribute(k_cross_entropy_row<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin - CE_STATIC_SMEM) == cudaSuccess)
        im->ce_smem_bf16 = (size_t)(optin - CE_STATIC_SMEM);
    cudaGetLastError();
    *out = be;
    return MK_OK;
}
