/* mk_backend_cuda.h - the CUDA backend (fp32 device buffers, cuBLAS GEMMs in fp32 or bf16).
 *
 * Every op of mk_backend.h on memory of one GPU, with the CPU backend's semantics and its
 * determinism rule (no atomics in reductions, fixed orders): see mk_backend_cuda.cu.
 */
#ifndef MK_BACKEND_CUDA_H
#define MK_BACKEND_CUDA_H

#include "mk_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A backend on CUDA device `device` (made current on the calling thread, which must be the
 * thread that runs the ops). bf16 != 0: GEMM operands are rounded to bf16 and multiplied on
 * tensor cores with fp32 accumulation (storage stays fp32: master weights, gradients,
 * optimizer state, activations); 0: pedantic fp32, which matches the CPU to fp32 rounding.
 * MK_ERR_INTERNAL when the device or cuBLAS cannot be set up. */
int mk_backend_cuda_create(int device, int bf16, mk_backend **out);
/* GPUs visible to this process (CUDA_VISIBLE_DEVICES applies). */
int mk_backend_cuda_device_count(int *n);

#ifdef __cplusplus
}
#endif

#endif
