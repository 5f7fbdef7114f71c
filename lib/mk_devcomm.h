/* mk_devcomm.h - collectives on backend memory (DESIGN section 4).
 *
 * The gradient all-reduce and the expert-parallel all-to-all move backend memory: host
 * arrays on the CPU backend, device arrays on CUDA. A devcomm wraps one mk_comm group for
 * one backend and picks the transport:
 *   - "self": one rank, nothing moves;
 *   - "nccl": CUDA backend in a build with NCCL: device buffers go straight to NCCL (its
 *     unique id is broadcast over the MPI group), on the backend's stream;
 *   - "mpi":  everything else: mk_comm's deterministic MPI collectives, device buffers
 *     staged through host memory.
 * Creating a devcomm is collective over its group (NCCL initialisation).
 * Reductions are deterministic: the same inputs give the same bits on every run (NCCL's
 * ring/tree order is fixed for a fixed world, message size and topology).
 */
#ifndef MK_DEVCOMM_H
#define MK_DEVCOMM_H

#include <stddef.h>

#include "mk_backend.h"
#include "mk_comm.h"

typedef struct mk_devcomm mk_devcomm;

/* MOEKIT_DEVCOMM=mpi in the environment forces the staged MPI path (for comparisons).
 * max_ctas > 0: NCCL's collectives use at most that many blocks, so SMs, each (sums that
 * run beside compute); 0: NCCL's own choice. NCCL_MAX_CTAS in the environment overrides. */
int mk_devcomm_create(const mk_comm *c, mk_backend *be, int max_ctas, mk_devcomm **out);
void mk_devcomm_free(mk_devcomm **d);

const char *mk_devcomm_transport(const mk_devcomm *d);   /* "self", "nccl" or "mpi" */
int mk_devcomm_size(const mk_devcomm *d);

/* In place element-wise sum over the group of n reals of backend memory. */
int mk_devcomm_allreduce(mk_devcomm *d, mk_real *buf, size_t n);

/* The same, started behind the backend's queued work and left running while the caller
 * queues more (NCCL: on a stream of its own; other transports finish it before returning).
 * mk_devcomm_wait: the backend's later work sees every sum started. Every rank must start
 * the same sums in the same order. */
int mk_devcomm_allreduce_start(mk_devcomm *d, mk_real *buf, size_t n);
int mk_devcomm_wait(mk_devcomm *d);
/* 1 when a started sum really runs alongside the backend's work (NCCL). */
int mk_devcomm_overlaps(const mk_devcomm *d);

/* mk_comm_alltoallv (byte counts and displacements, host arrays) on backend buffers. */
int mk_devcomm_alltoallv(mk_devcomm *d, const void *send, const size_t *send_counts,
                         const size_t *send_displs, void *recv, const size_t *recv_counts,
                         const size_t *recv_displs);

#endif
