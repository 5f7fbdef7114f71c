/* mk_cuda_check.h - the CUDA sources' error checks and grid-stride loop (CUDA C++ only).
 *
 * CU_CHECK turns a failed runtime call into the project's one error convention: MK_FAIL
 * with MK_ERR_INTERNAL, naming what was being done, returned from the calling function;
 * BLAS_CHECK does the same for cuBLAS and cuBLASLt calls.
 */
#ifndef MK_CUDA_CHECK_H
#define MK_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}

#define CU_CHECK(call, what)                                                               \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: %s", (what), cudaGetErrorString(e_)); \
    } while (0)

#define BLAS_CHECK(call, what)                                                             \
    do {                                                                                   \
        cublasStatus_t s_ = (call);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: cuBLAS: %s", (what),                \
                           cublasGetStatusString(s_));                                     \
    } while (0)

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (size_t)gridDim.x * blockDim.x)

#endif
