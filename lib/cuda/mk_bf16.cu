/* mk_bf16.cu - fp32 to bf16 rounding on the device: see mk_bf16.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_bf16.h"
#include "mk_cuda_check.h"
#include "mk_pdl.h"

#define TPB 256
#define MAX_BLOCKS 65536u

__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* Four at a time: one 16-byte load, one 8-byte store. */
__global__ static void k_round_bf16(uint2 *y, const float4 *x, size_t n4)
{
    MK_PDL_ENTRY();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const float4 v = x[i];
        y[i] = make_uint2(pack2(v.x, v.y), pack2(v.z, v.w));
    }
}

int mk_cuda_round_bf16(void *y, const float *x, size_t n, const char *what)
{
    if (n == 0) return MK_OK;
    if (n % 4 || ((uintptr_t)x & 15) || ((uintptr_t)y & 7))
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: %zu floats at %p to %p (need aligned fours)",
                       what, n, (const void *)x, y);
    size_t b = (n / 4 + TPB - 1) / TPB;
    CU_CHECK(mk_launch(k_round_bf16, dim3((unsigned)(b > MAX_BLOCKS ? MAX_BLOCKS : b)), dim3(TPB), 0, (uint2 *)y,
                       (const float4 *)x, n / 4), what);
    return MK_OK;
}
