/* pdl_bench.cu - what programmatic dependent launch (PDL) would save between two dependent
 * kernels on this GPU: a chain of element-wise kernels, each reading the previous one's
 * output, launched plainly and with the programmatic-serialization attribute (each kernel
 * waits for its predecessor with griddepcontrol.wait and lets its successor be scheduled
 * with griddepcontrol.launch_dependents), on the legacy default stream (the backend's) and
 * on a stream of its own. Prints microseconds per kernel. Built and run by tests/gpu/run.sh
 * with MOEKIT_PDL_BENCH=1:
 *
 *   nvcc -O2 -std=c++17 -arch=sm_90 tests/gpu/pdl_bench.cu -o tests/gpu/pdl_bench
 */
#include <cstdio>
#include <cstdlib>
#include <utility>

#include <cuda_runtime.h>

#define CK(call)                                                                            \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "pdl_bench: %s: %s\n", #call, cudaGetErrorString(e_));        \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

template <bool PDL> __global__ void k_step(float4 *__restrict__ y, const float4 *__restrict__ x, size_t n4)
{
    if (PDL) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;");
    }
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = x[i];
        v.x = v.x * 0.999f + 1.0f, v.y = v.y * 0.999f + 1.0f, v.z = v.z * 0.999f + 1.0f, v.w = v.w * 0.999f + 1.0f;
        y[i] = v;
    }
}

static void launch(bool pdl, cudaStream_t s, float4 *y, const float4 *x, size_t n4)
{
    size_t blocks = (n4 + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3((unsigned)blocks);
    c.blockDim = dim3(256);
    c.stream = s;
    c.attrs = &at;
    c.numAttrs = pdl ? 1 : 0;
    if (pdl) CK(cudaLaunchKernelEx(&c, k_step<true>, y, x, n4));
    else CK(cudaLaunchKernelEx(&c, k_step<false>, y, x, n4));
}

/* Microseconds per kernel over a chain of `count` kernels (after a warm-up chain). */
static double chain(bool pdl, cudaStream_t s, float4 *a, float4 *b, size_t n4, int count)
{
    cudaEvent_t t0, t1;
    CK(cudaEventCreate(&t0));
    CK(cudaEventCreate(&t1));
    for (int i = 0; i < 20; i++) launch(pdl, s, i % 2 ? a : b, i % 2 ? b : a, n4);
    CK(cudaEventRecord(t0, s));
    for (int i = 0; i < count; i++) launch(pdl, s, i % 2 ? a : b, i % 2 ? b : a, n4);
    CK(cudaEventRecord(t1, s));
    CK(cudaEventSynchronize(t1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, t0, t1));
    CK(cudaEventDestroy(t0));
    CK(cudaEventDestroy(t1));
    return 1e3 * ms / count;
}

int main(void)
{
    const size_t sizes[] = {1 << 16, 1 << 20, 1 << 22, 1 << 24}; /* floats: 256 KB .. 64 MB */
    const size_t most = sizes[sizeof sizes / sizeof *sizes - 1];
    float4 *a, *b;
    CK(cudaMalloc(&a, most * sizeof(float)));
    CK(cudaMalloc(&b, most * sizeof(float)));
    CK(cudaMemset(a, 0, most * sizeof(float)));
    CK(cudaMemset(b, 0, most * sizeof(float)));
    cudaStream_t own;
    CK(cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking));
    printf("pdl_bench: a chain of 400 dependent element-wise kernels, microseconds per kernel\n");
    printf("%12s %12s %12s %12s %12s\n", "MB per pass", "default", "default+PDL", "own stream", "own+PDL");
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        const size_t n4 = sizes[k] / 4;
        const double p0 = chain(false, 0, a, b, n4, 400), p1 = chain(true, 0, a, b, n4, 400);
        const double s0 = chain(false, own, a, b, n4, 400), s1 = chain(true, own, a, b, n4, 400);
        printf("%12.2f %12.2f %12.2f %12.2f %12.2f\n", 2.0 * sizes[k] * 4 / 1e6, p0, p1, s0, s1);
    }
    CK(cudaStreamDestroy(own));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 0;
}
