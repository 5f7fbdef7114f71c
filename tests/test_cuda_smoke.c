/* test_cuda_smoke.c - the CUDA toolchain configure found can reach a GPU: a device is
 * visible, memory round-trips, cuBLAS computes a small GEMM correctly. Skips (TAP "1..0 #
 * SKIP") on machines without a GPU, such as CI. The CUDA backend's own tests come with it.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>

#include "tap.h"

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) tap_skip_all("no CUDA device");
    struct cudaDeviceProp prop;
    int sms = 0;
    /* The attribute query, not the struct field: the struct's layout changes across CUDA
     * versions. Queried before tap_ok, whose arguments may be evaluated in any order. */
    const int found = cudaGetDeviceProperties(&prop, 0) == cudaSuccess &&
                      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess && sms > 0;
    tap_ok(found, "device 0: %s, %d SMs", found ? prop.name : "?", sms);
    enum { M = 4, K = 3, N = 2 };
    float a[M * K], b[K * N], c[M * N], want[M * N];
    for (int i = 0; i < M * K; i++) a[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < K * N; i++) b[i] = 0.5f * (float)i - 1.0f;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            want[i * N + j] = 0;
            for (int k = 0; k < K; k++) want[i * N + j] += a[i * K + k] * b[k * N + j];
        }
    float *da, *db, *dc;
    int ok = cudaMalloc((void **)&da, sizeof a) == cudaSuccess &&
             cudaMalloc((void **)&db, sizeof b) == cudaSuccess &&
             cudaMalloc((void **)&dc, sizeof c) == cudaSuccess &&
             cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemcpy(db, b, sizeof b, cudaMemcpyHostToDevice) == cudaSuccess;
    tap_ok(ok, "device memory and host-to-device copies");
    cublasHandle_t h;
    tap_ok(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cuBLAS handle");
    const float one = 1, zero = 0;
    /* Row-major C = A B is column-major C^T = B^T A^T. */
    tap_ok(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, db, N, da, K, &zero, dc, N) ==
               CUBLAS_STATUS_SUCCESS &&
               cudaMemcpy(c, dc, sizeof c, cudaMemcpyDeviceToHost) == cudaSuccess,
           "cuBLAS sgemm runs");
    double err = 0;
    for (int i = 0; i < M * N; i++) err = fmax(err, fabs(c[i] - want[i]));
    tap_ok(err < 1e-5, "cuBLAS sgemm matches the host product (max err %.2e)", err);
    cublasDestroy(h);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return tap_done();
}
