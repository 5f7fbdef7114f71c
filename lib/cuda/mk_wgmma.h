/* mk_wgmma.h - Hopper's warpgroup MMA (wgmma) building blocks (CUDA C++ only).
 *
 * wgmma exists only in code compiled for sm_90a (configure's default CUDA_ARCH builds it
 * beside the portable sm_90 PTX); MK_HAVE_WGMMA says whether this compilation pass has it,
 * and kernels that use it compile to nothing in the other passes. Host code asks
 * mk_grouped_gemm_wgmma_available() before launching one.
 *
 * Operands are read by the tensor cores straight from shared memory, described by a
 * 64-bit matrix descriptor (PTX ISA, "matrix descriptor format"): start address, leading
 * and stride byte offsets (all >> 4), swizzle mode in bits 62-63. Every tile here uses the
 * 128-byte swizzle: lines of 128 bytes (64 bf16), and the 16-byte chunk c of line L stored
 * at chunk c ^ (L % 8), so the 8 lines of an 8 x 128-byte atom spread every column over
 * all banks. Tiles start on 1024-byte boundaries (the atom), as the swizzle requires.
 *
 * Canonical layouts (in 16-byte units T = 8 bf16):
 *   K-major (lines along k):   ((8,m),(T,2k)):((8T,SBO),(1,T)): SBO = 1024 (8 lines),
 *                              LBO unused; step k by 16 = +32 bytes of start address.
 *   MN-major (lines along mn): ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): a line holds 64
 *                              consecutive m (or n) of one k; LBO = bytes between 64-wide
 *                              slabs of m, SBO = 1024 (8 k lines); step k by 16 = +2048.
 *
 * Accumulators of wgmma m64nNk16 with fp32 D: thread t of the warpgroup (warp w = t / 32,
 * lane = 4 g + q) holds d[4 j + 2 h + c] = D(16 w + g + 8 h, 8 j + 2 q + c), the mma.sync
 * m16n8 layout repeated over N / 8 column blocks j.
 */
#ifndef MK_WGMMA_H
#define MK_WGMMA_H

#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MK_HAVE_WGMMA 1
#endif

/* Element offset of chunk `chunk` (8 bf16) of line `line` in a 128-byte-swizzled tile. */
__device__ __forceinline__ int mk_sw128(int line, int chunk)
{
    return line * 64 + ((chunk ^ (line & 7)) << 3);
}

__device__ __forceinline__ uint64_t mk_wgmma_desc(const void *smem, uint32_t lbo, uint32_t sbo)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

#ifdef MK_HAVE_WGMMA

/* Orders this thread's generic-proxy writes to shared memory (cp.async, st.shared) before
 * the async proxy's reads (wgmma); each thread fences, then the block synchronises. */
__device__ __forceinline__ void mk_fence_proxy_async(void)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void mk_wgmma_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void mk_wgmma_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N> __device__ __forceinline__ void mk_wgmma_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* d (64 x 128, fp32) += A (64 x 16) B (16 x 128), bf16 operands from shared memory; TA / TB
 * 1 when that operand is MN-major (transposed) in shared memory. */
template <int TA, int TB>
__device__ __forceinline__ void mk_wgmma_m64n128k16(float d[64], uint64_t da, uint64_t db)
{
    asm volatile("{\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "
                 "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, "
                 "%47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
                 "%62, %63}, %64, %65, 1, 1, 1, %66, %67;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                   "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                   "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "n"(TA), "n"(TB));
}

#define MK_WG_D32(d)                                                                          \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),          \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),  \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),            \
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),            \
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

/* d (64 x 64, fp32) += A (64 x 16) B (16 x 64), both operands K-major in shared memory. */
__device__ __forceinline__ void mk_wgmma_m64n64k16_ss(float d[32], uint64_t da, uint64_t db)
{
    asm volatile("{\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "
                 "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "%32, %33, 1, 1, 1, 0, 0;\n"
                 "}\n"
                 : MK_WG_D32(d)
                 : "l"(da), "l"(db));
}

/* d (64 x 64, fp32) += A (64 x 16, from registers: the mma.sync m16n8k16 A fragment of
 * the thread's warp, rows 16 w..16 w + 15) B (16 x 64, MN-major in shared memory). */
__device__ __forceinline__ void mk_wgmma_m64n64k16_rs_tb(float d[32], const uint32_t a[4], uint64_t db)
{
    asm volatile("{\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "
                 "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 "}\n"
                 : MK_WG_D32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

#endif /* MK_HAVE_WGMMA */

#endif
