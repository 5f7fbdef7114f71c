/* mk_pdl.h - programmatic dependent launch (Hopper) for the backend's own kernels (CUDA C++).
 *
 * Between two dependent kernels the GPU spends about 3 us launching the second and filling
 * the SMs with it (tests/gpu/pdl_bench.cu), and a bench-s step runs about 800 kernels. A
 * kernel launched with mk_launch may be scheduled while the kernel before it in the
 * stream runs its last blocks; it starts with MK_PDL_ENTRY(), which waits until that
 * kernel has finished and its writes are visible (griddepcontrol.wait) and then lets the
 * next kernel be scheduled early in turn (griddepcontrol.launch_dependents). Every kernel
 * that mk_launch launches must begin with MK_PDL_ENTRY(): before it, nothing the previous
 * kernel writes may be read, nor anything it reads be written. A kernel launched without
 * the attribute (<<< >>>, cuBLAS, CUTLASS) is ordered as always, and passes its own wait
 * at once.
 *
 * MOEKIT_NO_PDL=1 launches every kernel the plain way (for comparisons). The variable is
 * read at each launch (a getenv, well under a microsecond, while the GPU runs ahead).
 */
#ifndef MK_PDL_H
#define MK_PDL_H

#include <stdlib.h>

#include <utility>

#include <cuda_runtime.h>

__device__ __forceinline__ void mk_pdl_entry(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#define MK_PDL_ENTRY() mk_pdl_entry()

static inline int mk_pdl_on(void)
{
    const char *v = getenv("MOEKIT_NO_PDL");
    return !(v && v[0] == '1' && v[1] == '\0');
}

/* kernel<<<grid, block, smem>>>(args...) on the legacy default stream, with programmatic
 * stream serialization unless MOEKIT_NO_PDL=1. */
template <typename... K, typename... A>
static inline cudaError_t mk_launch(void (*kernel)(K...), dim3 grid, dim3 block, size_t smem, A &&...args)
{
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t c = {};
    c.gridDim = grid;
    c.blockDim = block;
    c.dynamicSmemBytes = smem;
    c.stream = 0;
    c.attrs = &at;
    c.numAttrs = mk_pdl_on() ? 1 : 0;
    return cudaLaunchKernelEx(&c, kernel, std::forward<A>(args)...);
}

#endif
