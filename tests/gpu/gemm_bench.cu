/* gemm_bench.cu - which cuBLAS call shape is fastest for bench-s.ini's GEMMs on this GPU.
 *
 * Times, for the dense shapes (tokens x d_model times d_model x {3 d_model, vocab}) and the
 * grouped expert shapes (64 experts x ~2048 rows, d_model <-> ffn), the backend's current
 * form (fp32 operands, CUBLAS_COMPUTE_32F_FAST_16BF) against bf16 operands with fp32 or
 * bf16 output, and the cost of rounding an fp32 operand to bf16 first. Prints one line per
 * variant: ms per call and TFLOP/s. Used to choose the bf16 GEMM path (docs/performance.md).
 *
 *   nvcc -O2 -std=c++17 -arch=sm_90 tests/gpu/gemm_bench.cu -lcublas -o gemm_bench
 */
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                       \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

__global__ static void k_fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        x[i] = ((h & 0xffff) / 65536.0f - 0.5f) * 0.1f;
    }
}

__global__ static void k_round(__nv_bfloat16 *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

static float *fbuf(size_t n, unsigned seed)
{
    float *p;
    CK(cudaMalloc(&p, n * 4));
    k_fill<<<1024, 256>>>(p, n, seed);
    return p;
}

static __nv_bfloat16 *hbuf(const float *src, size_t n)
{
    __nv_bfloat16 *p;
    CK(cudaMalloc(&p, n * 2));
    k_round<<<1024, 256>>>(p, src, n);
    return p;
}

/* ms per call over 20 calls after 3 warm-ups; negative: cuBLAS refused (status printed). */
template <typename F> static double time_it(F f)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) {
        cublasStatus_t s = f();
        if (s != CUBLAS_STATUS_SUCCESS) return -(double)s - 1;
    }
    CK(cudaEventRecord(a));
    for (int i = 0; i < 20; i++) f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms / 20;
}

static void report(const char *what, double ms, double flop)
{
    if (ms < 0) printf("%-58s refused (cuBLAS status %d)\n", what, (int)(-ms - 1));
    else printf("%-58s %8.3f ms  %6.1f TFLOP/s\n", what, ms, flop / ms / 1e9);
}

int main(void)
{
    cublasHandle_t h;
    cublasCreate(&h);
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    const float one = 1, zero = 0;
    const int tokens = 16384, d = 768, ffn = 256, E = 64, rows = tokens * 8 / E;

    /* dense: C[tokens, n] = A[tokens, d] W[d, n] (row-major), i.e. column-major C^T = W^T A^T */
    /* n: the router (E), the attention output projection, qkv, the LM head */
    int ns[4] = {E, d, 3 * d, 50304};
    for (int t = 0; t < 4; t++) {
        const int n = ns[t];
        float *A = fbuf((size_t)tokens * d, 1), *W = fbuf((size_t)d * n, 2), *C = fbuf((size_t)tokens * n, 3);
        __nv_bfloat16 *Ah = hbuf(A, (size_t)tokens * d), *Wh = hbuf(W, (size_t)d * n), *Ch;
        CK(cudaMalloc(&Ch, (size_t)tokens * n * 2));
        const double flop = 2.0 * tokens * d * n;
        char what[128];
        snprintf(what, sizeof what, "dense %dx%dx%d fp32 FAST_16BF (current)", tokens, d, n);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, tokens, d, &one, W, CUDA_R_32F, n, A, CUDA_R_32F, d, &zero, C, CUDA_R_32F, n, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "dense %dx%dx%d bf16 in, fp32 out", tokens, d, n);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, tokens, d, &one, Wh, CUDA_R_16BF, n, Ah, CUDA_R_16BF, d, &zero, C, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "dense %dx%dx%d bf16 in, bf16 out", tokens, d, n);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, tokens, d, &one, Wh, CUDA_R_16BF, n, Ah, CUDA_R_16BF, d, &zero, Ch, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        /* backward shapes: dA = dC W^T (k = n), dW = A^T dC (k = tokens) */
        snprintf(what, sizeof what, "dense dgrad k=%d fp32 FAST_16BF", n);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, d, tokens, n, &one, W, CUDA_R_32F, n, C, CUDA_R_32F, n, &zero, A, CUDA_R_32F, d, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "dense wgrad k=%d fp32 FAST_16BF", tokens);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, n, d, tokens, &one, C, CUDA_R_32F, n, A, CUDA_R_32F, d, &zero, W, CUDA_R_32F, n, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        /* what the bf16 mode runs: bf16 operands, fp32 dW accumulated (beta 1) */
        snprintf(what, sizeof what, "dense wgrad k=%d bf16 in, fp32 out, n=%d", tokens, n);
        report(what, time_it([&] { return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, n, d, tokens, &one, Ch, CUDA_R_16BF, n, Ah, CUDA_R_16BF, d, &one, W, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "round %dx%d fp32 -> bf16", tokens, n);
        report(what, time_it([&] { k_round<<<4096, 256>>>(Ch, C, (size_t)tokens * n); return CUBLAS_STATUS_SUCCESS; }), 0);
        cudaFree(A), cudaFree(W), cudaFree(C), cudaFree(Ah), cudaFree(Wh), cudaFree(Ch);
    }

    /* grouped: per expert C_e[rows, ffn] = A_e[rows, d] W_e[d, ffn] */
    {
        const size_t R = (size_t)E * rows;
        float *A = fbuf(R * d, 4), *W = fbuf((size_t)E * d * ffn, 5), *C = fbuf(R * ffn, 6);
        __nv_bfloat16 *Ah = hbuf(A, R * d), *Wh = hbuf(W, (size_t)E * d * ffn), *Ch;
        CK(cudaMalloc(&Ch, R * ffn * 2));
        const double flop = 2.0 * R * d * ffn;
        std::vector<cublasOperation_t> ta(E, CUBLAS_OP_N), tb(E, CUBLAS_OP_N);
        std::vector<int> m(E, ffn), n(E, rows), k(E, d), lda(E, ffn), ldb(E, d), ldc(E, ffn), gs(E, 1);
        std::vector<float> al(E, 1.f), be(E, 0.f);
        std::vector<const void *> hp(3 * E);
        void **dp32, **dp16, **dp16o;
        CK(cudaMalloc(&dp32, 3 * E * sizeof(void *)));
        CK(cudaMalloc(&dp16, 3 * E * sizeof(void *)));
        CK(cudaMalloc(&dp16o, 3 * E * sizeof(void *)));
        for (int e = 0; e < E; e++) hp[e] = W + (size_t)e * d * ffn, hp[E + e] = A + (size_t)e * rows * d, hp[2 * E + e] = C + (size_t)e * rows * ffn;
        CK(cudaMemcpy(dp32, hp.data(), 3 * E * sizeof(void *), cudaMemcpyHostToDevice));
        for (int e = 0; e < E; e++) hp[e] = Wh + (size_t)e * d * ffn, hp[E + e] = Ah + (size_t)e * rows * d, hp[2 * E + e] = C + (size_t)e * rows * ffn;
        CK(cudaMemcpy(dp16, hp.data(), 3 * E * sizeof(void *), cudaMemcpyHostToDevice));
        for (int e = 0; e < E; e++) hp[2 * E + e] = Ch + (size_t)e * rows * ffn;
        CK(cudaMemcpy(dp16o, hp.data(), 3 * E * sizeof(void *), cudaMemcpyHostToDevice));
        char what[128];
        snprintf(what, sizeof what, "grouped %d x (%dx%dx%d) fp32 FAST_16BF (current)", E, rows, d, ffn);
        report(what, time_it([&] { return cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), k.data(), al.data(), (const void *const *)dp32, CUDA_R_32F, lda.data(), (const void *const *)(dp32 + E), CUDA_R_32F, ldb.data(), be.data(), (void *const *)(dp32 + 2 * E), CUDA_R_32F, ldc.data(), E, gs.data(), CUBLAS_COMPUTE_32F_FAST_16BF); }), flop);
        snprintf(what, sizeof what, "grouped bf16 in, fp32 out");
        report(what, time_it([&] { return cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), k.data(), al.data(), (const void *const *)dp16, CUDA_R_16BF, lda.data(), (const void *const *)(dp16 + E), CUDA_R_16BF, ldb.data(), be.data(), (void *const *)(dp16 + 2 * E), CUDA_R_32F, ldc.data(), E, gs.data(), CUBLAS_COMPUTE_32F); }), flop);
        snprintf(what, sizeof what, "grouped bf16 in, bf16 out");
        report(what, time_it([&] { return cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), k.data(), al.data(), (const void *const *)dp16o, CUDA_R_16BF, lda.data(), (const void *const *)(dp16o + E), CUDA_R_16BF, ldb.data(), be.data(), (void *const *)(dp16o + 2 * E), CUDA_R_16BF, ldc.data(), E, gs.data(), CUBLAS_COMPUTE_32F); }), flop);
        snprintf(what, sizeof what, "strided-batched bf16 in, fp32 out (equal rows: bound)");
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, ffn, rows, d, &one, Wh, CUDA_R_16BF, ffn, (long long)d * ffn, Ah, CUDA_R_16BF, d, (long long)rows * d, &zero, C, CUDA_R_32F, ffn, (long long)rows * ffn, E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "strided-batched fp32 FAST_16BF (equal rows)");
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, ffn, rows, d, &one, W, CUDA_R_32F, ffn, (long long)d * ffn, A, CUDA_R_32F, d, (long long)rows * d, &zero, C, CUDA_R_32F, ffn, (long long)rows * ffn, E, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "loop of %d cublasGemmEx bf16 in, fp32 out", E);
        report(what, time_it([&] {
            cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
            for (int e = 0; e < E && s == CUBLAS_STATUS_SUCCESS; e++)
                s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, ffn, rows, d, &one, Wh + (size_t)e * d * ffn, CUDA_R_16BF, ffn, Ah + (size_t)e * rows * d, CUDA_R_16BF, d, &zero, C + (size_t)e * rows * ffn, CUDA_R_32F, ffn, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            return s; }), flop);
        /* the down projection: C_e[rows, d] = H_e[rows, ffn] W2_e[ffn, d] (k = 256) */
        snprintf(what, sizeof what, "strided-batched down proj k=%d fp32 FAST_16BF", ffn);
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, d, rows, ffn, &one, W, CUDA_R_32F, d, (long long)d * ffn, C, CUDA_R_32F, ffn, (long long)rows * ffn, &zero, A, CUDA_R_32F, d, (long long)rows * d, E, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "strided-batched down proj k=%d bf16 in, fp32 out", ffn);
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, d, rows, ffn, &one, Wh, CUDA_R_16BF, d, (long long)d * ffn, Ch, CUDA_R_16BF, ffn, (long long)rows * ffn, &zero, A, CUDA_R_32F, d, (long long)rows * d, E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "expert wgrad strided k=%d fp32 FAST_16BF", rows);
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_T, ffn, d, rows, &one, C, CUDA_R_32F, ffn, (long long)rows * ffn, A, CUDA_R_32F, d, (long long)rows * d, &one, W, CUDA_R_32F, ffn, (long long)d * ffn, E, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "expert wgrad strided k=%d bf16 in, fp32 out", rows);
        report(what, time_it([&] { return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_T, ffn, d, rows, &one, Ch, CUDA_R_16BF, ffn, (long long)rows * ffn, Ah, CUDA_R_16BF, d, (long long)rows * d, &one, W, CUDA_R_32F, ffn, (long long)d * ffn, E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); }), flop);
        snprintf(what, sizeof what, "round %zux%d fp32 -> bf16", R, d);
        report(what, time_it([&] { k_round<<<4096, 256>>>(Ah, A, R * d); return CUBLAS_STATUS_SUCCESS; }), 0);
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
