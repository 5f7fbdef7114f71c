/* mk_devcomm.c - collectives on backend memory: self, NCCL or staged MPI (see mk_devcomm.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_devcomm.h"

#include <stdlib.h>
#include <string.h>

#include "mk_error.h"
#ifdef MK_WITH_CUDA /* NCCL comes with the CUDA backend (mk_backend.h) */
#define MK_DEVCOMM_NCCL 1
#include "cuda/mk_nccl.h"
#endif

struct mk_devcomm {
    const mk_comm *c;
    mk_backend *be;
    const char *transport;
    int size;
    void *nccl;                 /* mk_nccl * when transport is "nccl" */
    void *stage_a, *stage_b;    /* host staging for device buffers on the MPI path */
    size_t stage_a_bytes, stage_b_bytes;
};

int mk_devcomm_create(const mk_comm *c, mk_backend *be, int max_ctas, mk_devcomm **out)
{
    *out = NULL;
    mk_devcomm *d = calloc(1, sizeof *d);
    if (!d) return MK_FAIL(MK_ERR_NOMEM, "devcomm: out of memory");
    d->c = c;
    d->be = be;
    d->size = mk_comm_size(c);
    d->transport = d->size == 1 ? "self" : "mpi";
    const char *force = getenv("MOEKIT_DEVCOMM");
    const int want_mpi = force && strcmp(force, "mpi") == 0;
    if (d->size > 1 && !be->ops->host_memory && !want_mpi) {
#ifdef MK_DEVCOMM_NCCL
        int rc = mk_nccl_create(c, max_ctas, (mk_nccl **)&d->nccl);
        if (rc != MK_OK) {
            free(d);
            return rc;
        }
        d->transport = "nccl";
#else
        (void)max_ctas;
#endif
    }
    *out = d;
    return MK_OK;
}

void mk_devcomm_free(mk_devcomm **dp)
{
    if (!dp || !*dp) return;
    mk_devcomm *d = *dp;
#ifdef MK_DEVCOMM_NCCL
    mk_nccl_free((mk_nccl **)&d->nccl);
#endif
    free(d->stage_a);
    free(d->stage_b);
    free(d);
    *dp = NULL;
}

const char *mk_devcomm_transport(const mk_devcomm *d) { return d->transport; }
int mk_devcomm_size(const mk_devcomm *d) { return d->size; }

static int stage(void **p, size_t *have, size_t bytes)
{
    if (*have >= bytes) return MK_OK;
    void *n = realloc(*p, bytes ? bytes : 1);
    if (!n) return MK_FAIL(MK_ERR_NOMEM, "devcomm: cannot stage %zu bytes in host memory", bytes);
    *p = n;
    *have = bytes;
    return MK_OK;
}

int mk_devcomm_allreduce(mk_devcomm *d, mk_real *buf, size_t n)
{
    if (d->size == 1 || n == 0) return MK_OK;
#ifdef MK_DEVCOMM_NCCL
    if (d->nccl) return mk_nccl_allreduce_f32(d->nccl, buf, n);
#endif
    if (d->be->ops->host_memory) return mk_comm_allreduce_real(d->c, buf, n);
    const size_t bytes = n * sizeof *buf;
    MK_CHECK(stage(&d->stage_a, &d->stage_a_bytes, bytes));
    MK_CHECK(d->be->ops->to_host(d->be, d->stage_a, buf, bytes));
    MK_CHECK(mk_comm_allreduce_real(d->c, d->stage_a, n));
    return d->be->ops->from_host(d->be, buf, d->stage_a, bytes);
}

int mk_devcomm_allreduce_start(mk_devcomm *d, mk_real *buf, size_t n)
{
    if (d->size == 1 || n == 0) return MK_OK;
#ifdef MK_DEVCOMM_NCCL
    if (d->nccl) return mk_nccl_allreduce_start_f32(d->nccl, buf, n);
#endif
    return mk_devcomm_allreduce(d, buf, n);
}

int mk_devcomm_wait(mk_devcomm *d)
{
#ifdef MK_DEVCOMM_NCCL
    if (d->size > 1 && d->nccl) return mk_nccl_wait(d->nccl);
#endif
    (void)d;
    return MK_OK;
}

int mk_devcomm_overlaps(const mk_devcomm *d)
{
    return d->size > 1 && d->nccl != NULL;
}

static size_t extent(const size_t *counts, const size_t *displs, int n)
{
    size_t e = 0;
    for (int i = 0; i < n; i++)
        if (counts[i] && displs[i] + counts[i] > e) e = displs[i] + counts[i];
    return e;
}

int mk_devcomm_alltoallv(mk_devcomm *d, const void *send, const size_t *send_counts,
                         const size_t *send_displs, void *recv, const size_t *recv_counts,
                         const size_t *recv_displs)
{
#ifdef MK_DEVCOMM_NCCL
    if (d->nccl)
        return mk_nccl_alltoallv(d->nccl, send, send_counts, send_displs, recv, recv_counts,
                                 recv_displs);
#endif
    if (d->be->ops->host_memory)
        return mk_comm_alltoallv(d->c, send, send_counts, send_displs, recv, recv_counts,
                                 recv_displs);
    const size_t sb = extent(send_counts, send_displs, d->size);
    const size_t rb = extent(recv_counts, recv_displs, d->size);
    MK_CHECK(stage(&d->stage_a, &d->stage_a_bytes, sb));
    MK_CHECK(stage(&d->stage_b, &d->stage_b_bytes, rb));
    if (sb) MK_CHECK(d->be->ops->to_host(d->be, d->stage_a, send, sb));
    MK_CHECK(mk_comm_alltoallv(d->c, d->stage_a, send_counts, send_displs, d->stage_b,
                               recv_counts, recv_displs));
    return rb ? d->be->ops->from_host(d->be, recv, d->stage_b, rb) : MK_OK;
}
