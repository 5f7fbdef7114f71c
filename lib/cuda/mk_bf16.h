/* mk_bf16.h - fp32 to bf16 rounding on the device, for the CUDA backend's fused bf16 ops.
 *
 * The backend stores fp32; its bf16 ops round their GEMM operands once per op with this
 * (round to nearest even, as the tensor cores' FAST_16BF mode does) and keep the copies in
 * workspace of their own.
 */
#ifndef MK_BF16_H
#define MK_BF16_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[i] = bf16(x[i]) for n elements (y: __nv_bfloat16 array) on the default stream. x and y
 * 16- and 8-byte aligned and n a multiple of 4, else MK_ERR_INTERNAL naming `what`. */
int mk_cuda_round_bf16(void *y, const float *x, size_t n, const char *what);

#ifdef __cplusplus
}
#endif

#endif
