/* mk_devbuf.cu - a device buffer that grows on demand: see mk_devbuf.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_devbuf.h"

int mk_devbuf_reserve(mk_devbuf *b, size_t bytes, const char *what)
{
    if (bytes == 0) bytes = 1;
    if (bytes <= b->bytes) return MK_OK;
    cudaError_t e;
    if (b->p) {
        if ((e = cudaDeviceSynchronize()) != cudaSuccess || (e = cudaFree(b->p)) != cudaSuccess)
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: freeing the old buffer: %s", what,
                           cudaGetErrorString(e));
    }
    b->p = NULL;
    b->bytes = 0;
    if ((e = cudaMalloc(&b->p, bytes)) != cudaSuccess) {
        b->p = NULL;
        return MK_FAIL(MK_ERR_NOMEM, "cuda: %s of %zu bytes: %s", what, bytes, cudaGetErrorString(e));
    }
    b->bytes = bytes;
    return MK_OK;
}

void mk_devbuf_release(mk_devbuf *b)
{
    if (b->p) cudaFree(b->p);
    b->p = NULL;
    b->bytes = 0;
}
