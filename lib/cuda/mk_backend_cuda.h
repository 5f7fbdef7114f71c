/* mk_backend_cuda.h - the CUDA backend (fp32 device buffers, cuBLAS GEMMs).
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
 * thread that runs the ops). MK_ERR_INTERNAL when the device or cuBLAS cannot be set up. */
int mk_backend_cuda_create(int device, mk_backend **out);

#ifdef __cplusplus
}
#endif

#endif
