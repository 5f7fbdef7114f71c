/* mk_nccl.cu - NCCL communicators for mk_devcomm (see mk_nccl.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdlib.h>

#include <cuda_runtime.h>
#include <nccl.h>

extern "C" {
#include "mk_comm.h"
#include "mk_error.h"
}
#include "mk_cuda_check.h"
#include "mk_nccl.h"

struct mk_nccl {
    ncclComm_t comm;
    int rank, size;
    cudaStream_t stream;    /* non-blocking: the legacy default stream does not wait on it */
    cudaEvent_t queued, done;
};

#define NCCL_CHECK(call, what)                                                              \
    do {                                                                                   \
        ncclResult_t r_ = (call);                                                          \
        if (r_ != ncclSuccess)                                                             \
            return MK_FAIL(MK_ERR_COMM, "nccl: %s: %s", what, ncclGetErrorString(r_));     \
    } while (0)

extern "C" int mk_nccl_create(const mk_comm *c, int max_ctas, mk_nccl **out)
{
    *out = NULL;
    ncclUniqueId id;
    if (mk_comm_rank(c) == 0) NCCL_CHECK(ncclGetUniqueId(&id), "unique id");
    MK_CHECK(mk_comm_bcast(c, &id, sizeof id, 0));
    mk_nccl *n = (mk_nccl *)calloc(1, sizeof *n);
    if (!n) return MK_FAIL(MK_ERR_NOMEM, "nccl: out of memory");
    n->rank = mk_comm_rank(c);
    n->size = mk_comm_size(c);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    if (max_ctas > 0) cfg.maxCTAs = max_ctas;
    ncclResult_t r = ncclCommInitRankConfig(&n->comm, n->size, id, n->rank, &cfg);
    if (r != ncclSuccess) {
        free(n);
        return MK_FAIL(MK_ERR_COMM, "nccl: init of a %d-rank communicator: %s", mk_comm_size(c),
                       ncclGetErrorString(r));
    }
    cudaError_t e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&n->queued, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        mk_nccl_free(&n);
        return MK_FAIL(MK_ERR_INTERNAL, "nccl: stream for overlapped sums: %s", cudaGetErrorString(e));
    }
    *out = n;
    return MK_OK;
}

extern "C" void mk_nccl_free(mk_nccl **np)
{
    if (!np || !*np) return;
    ncclCommDestroy((*np)->comm);
    if ((*np)->stream) cudaStreamDestroy((*np)->stream);
    if ((*np)->queued) cudaEventDestroy((*np)->queued);
    if ((*np)->done) cudaEventDestroy((*np)->done);
    free(*np);
    *np = NULL;
}

extern "C" int mk_nccl_allreduce_f32(mk_nccl *n, float *buf, size_t count)
{
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, n->comm, 0), "all-reduce");
    return MK_OK;
}

extern "C" int mk_nccl_allreduce_start_f32(mk_nccl *n, float *buf, size_t count)
{
    CU_CHECK(cudaEventRecord(n->queued, 0), "all-reduce: mark the queued work");
    CU_CHECK(cudaStreamWaitEvent(n->stream, n->queued, 0), "all-reduce: order after it");
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, n->comm, n->stream), "all-reduce");
    return MK_OK;
}

extern "C" int mk_nccl_wait(mk_nccl *n)
{
    CU_CHECK(cudaEventRecord(n->done, n->stream), "all-reduce: mark the sums");
    CU_CHECK(cudaStreamWaitEvent(0, n->done, 0), "all-reduce: wait for the sums");
    return MK_OK;
}

extern "C" int mk_nccl_alltoallv(mk_nccl *n, const void *send, const size_t *send_counts,
                      const size_t *send_displs, void *recv, const size_t *recv_counts,
                      const size_t *recv_displs)
{
    NCCL_CHECK(ncclGroupStart(), "group start");
    for (int q = 0; q < n->size; q++) {
        if (send_counts[q])
            NCCL_CHECK(ncclSend((const char *)send + send_displs[q], send_counts[q], ncclUint8, q,
                                n->comm, 0), "send");
        if (recv_counts[q])
            NCCL_CHECK(ncclRecv((char *)recv + recv_displs[q], recv_counts[q], ncclUint8, q,
                                n->comm, 0), "recv");
    }
    NCCL_CHECK(ncclGroupEnd(), "all-to-all");
    return MK_OK;
}
