/* mk_devbuf.h - a device buffer that grows on demand (the CUDA backend's workspaces).
 *
 * Growing frees the old buffer only after the device is idle: kernels of earlier ops may
 * still read it. Reuse without a wait is safe on the one stream the backend issues on.
 */
#ifndef MK_DEVBUF_H
#define MK_DEVBUF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mk_devbuf {
    void *p;
    size_t bytes;
} mk_devbuf;

/* b->p holds at least `bytes` bytes (contents not kept when it grows); MK_ERR_NOMEM naming
 * `what` when the device has no room. */
int mk_devbuf_reserve(mk_devbuf *b, size_t bytes, const char *what);
void mk_devbuf_release(mk_devbuf *b);

#ifdef __cplusplus
}
#endif

#endif
