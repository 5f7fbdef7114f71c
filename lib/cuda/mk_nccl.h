/* mk_nccl.h - the NCCL transport of mk_devcomm (built with --with-cuda only).
 *
 * One NCCL communicator per mk_comm group, on the current CUDA device, running on the
 * default stream so it is ordered with the backend's kernels without extra events.
 */
#ifndef MK_NCCL_H
#define MK_NCCL_H

#include <stddef.h>

#include "mk_comm.h"

typedef struct mk_nccl mk_nccl;

#ifdef __cplusplus
extern "C" {
#endif

/* Collective over c: rank 0 makes the unique id, mk_comm_bcast hands it to the others.
 * max_ctas > 0: ncclConfig_t.maxCTAs (at most that many blocks per collective); 0: NCCL's. */
int mk_nccl_create(const mk_comm *c, int max_ctas, mk_nccl **out);
void mk_nccl_free(mk_nccl **n);
int mk_nccl_allreduce_f32(mk_nccl *n, float *buf, size_t count);
/* The same on a stream of the communicator's own, ordered after the work already queued
 * on the default stream, so that later default-stream work (the rest of a backward) runs
 * alongside it; mk_nccl_wait makes later default-stream work wait for every sum started. */
int mk_nccl_allreduce_start_f32(mk_nccl *n, float *buf, size_t count);
int mk_nccl_wait(mk_nccl *n);
/* Grouped ncclSend/ncclRecv of bytes to and from every rank of the group. */
int mk_nccl_alltoallv(mk_nccl *n, const void *send, const size_t *send_counts,
                      const size_t *send_displs, void *recv, const size_t *recv_counts,
                      const size_t *recv_displs);

#ifdef __cplusplus
}
#endif

#endif
