/* mk_comm.h - process groups and collectives (DESIGN section 4).
 *
 * One interface, several backends: "self" (one process, no MPI calls) and "mpi" (host
 * buffers over an MPI communicator); NCCL (device buffers) comes with the CUDA backend.
 * A communicator is a group of ranks: the world, an expert-parallel (EP) group, or an
 * expert-data-parallel (EDP) group made by mk_comm_split.
 *
 * Every reduction is deterministic: the same inputs give the same bits on every run and
 * every rank, whatever MPI's reduction algorithms do. Floating-point sums are taken over
 * the ranks' contributions in rank order (gathered, then added), not in MPI's order.
 *
 * Every call returns MK_OK or an MK_ERR_* code; an MPI failure is MK_ERR_COMM.
 */
#ifndef MK_COMM_H
#define MK_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "mk_real.h"

typedef struct mk_comm mk_comm;

/* The world: MPI_COMM_WORLD when MPI is initialised (MPI_Init is the caller's job), else
 * the self backend. Rank, size, local rank (rank among the ranks of this node) and node
 * index come from MPI (MPI_Comm_split_type shared memory), so they are right under mpirun
 * and under srun --mpi=pmix. */
int mk_comm_world(mk_comm **out);
/* A one-rank communicator that never calls MPI (for single-process use and tests). */
int mk_comm_self(mk_comm **out);
/* Ranks with the same color form a group, ordered by key then old rank (MPI_Comm_split). */
int mk_comm_split(const mk_comm *c, int color, int key, mk_comm **out);
void mk_comm_free(mk_comm **c);

int mk_comm_rank(const mk_comm *c);
int mk_comm_size(const mk_comm *c);
int mk_comm_local_rank(const mk_comm *c);   /* world only; 0 for groups */
int mk_comm_node(const mk_comm *c);         /* world only; 0 for groups */
const char *mk_comm_backend(const mk_comm *c); /* "self" or "mpi" */

/* In place, element-wise sum over the group, deterministic (rank order). */
int mk_comm_allreduce_real(const mk_comm *c, mk_real *buf, size_t n);
int mk_comm_allreduce_f64(const mk_comm *c, double *buf, size_t n);
int mk_comm_allreduce_i64(const mk_comm *c, int64_t *buf, size_t n);
/* Element-wise max of ints (used to agree on an error status). */
int mk_comm_allreduce_max_int(const mk_comm *c, int *buf, size_t n);

/* Personalised all-to-all of bytes: send_counts[q] bytes from send + send_displs[q] go to
 * rank q; recv_counts[p] bytes from rank p land at recv + recv_displs[p]. Counts are known
 * on both sides (exchange them first with mk_comm_alltoall_int). */
int mk_comm_alltoallv(const mk_comm *c, const void *send, const size_t *send_counts,
                      const size_t *send_displs, void *recv, const size_t *recv_counts,
                      const size_t *recv_displs);
/* Each rank sends send[q] to rank q and receives recv[p] from rank p (one int each). */
int mk_comm_alltoall_int(const mk_comm *c, const int64_t *send, int64_t *recv);

int mk_comm_bcast(const mk_comm *c, void *buf, size_t bytes, int root);

/* The MPI communicator behind c, written to *(MPI_Comm *)out, for libraries that take one
 * (parallel HDF5). MK_ERR_INTERNAL for the self backend. */
int mk_comm_mpi_handle(const mk_comm *c, void *out);
int mk_comm_barrier(const mk_comm *c);

/* End the whole job now with status code (MPI_Abort on the world); never returns. Call
 * after printing the one error line. */
void mk_comm_abort(const mk_comm *c, int code) __attribute__((noreturn));

#endif
