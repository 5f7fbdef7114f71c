/* mk_mma.h - the tensor-core building blocks the CUDA kernels share (CUDA C++ only):
 * mma.sync m16n8k16 with bf16 operands and fp32 accumulation, ldmatrix fragment loads
 * (plain and transposing), cp.async 16-byte copies into shared memory, and bf16 packing.
 *
 * Fragment layouts (PTX ISA, m16n8k16): lane = 4 g + q holds accumulator elements
 * (g, 2q), (g, 2q + 1), (g + 8, 2q), (g + 8, 2q + 1); the A operand is four 8 x 8 pieces
 * (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15); the B operand two,
 * k 0-7 and k 8-15 of 8 columns. ldmatrix .x4 loads four 8 x 8 pieces, lanes 8i..8i+7
 * giving the row addresses of piece i.
 */
#ifndef MK_MMA_H
#define MK_MMA_H

#include <stdint.h>

#include <cuda_bf16.h>

__device__ __forceinline__ void mk_mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mk_ldsm_x4(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void mk_ldsm_x4_t(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* Two floats as one register of bf16 pairs: lo in the low half (the lower k index). */
__device__ __forceinline__ uint32_t mk_pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* 16 bytes from global src to shared dst; bytes < 16 zero-fills the rest (0: all zero). */
__device__ __forceinline__ void mk_cp_async16(void *dst, const void *src, int bytes)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

/* 4 bytes from global src to shared dst (bytes 0: a zero); src 4-byte aligned. */
__device__ __forceinline__ void mk_cp_async4(void *dst, const void *src, int bytes)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void mk_cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::);
}

/* Wait until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void mk_cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif
