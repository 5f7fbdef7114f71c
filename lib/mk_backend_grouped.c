/* mk_backend_grouped.c - grouped expert GEMMs as one ops->matmul per expert, shared by the
 * backends that have no grouped kernel of their own (see mk_backend.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_backend.h"

#include <stddef.h>

#include "mk_error.h"

static int check_offs(const char *op, const int *offs, int E)
{
    if (E < 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: negative expert count %d", op, E);
    if (E > 0 && offs[0] < 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: offs[0] = %d", op, offs[0]);
    for (int e = 0; e < E; e++)
        if (offs[e + 1] < offs[e])
            return MK_FAIL(MK_ERR_INTERNAL, "%s: offs not sorted at expert %d (%d > %d)", op, e,
                           offs[e], offs[e + 1]);
    return MK_OK;
}

int mk_grouped_matmul_by_expert(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *W,
                                const int *offs_host, int E, int K, int N, int trans_w, mk_real beta)
{
    MK_CHECK(check_offs("grouped_matmul", offs_host, E));
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        if (rows == 0) continue;
        MK_CHECK(be->ops->matmul(be, C + (size_t)offs_host[e] * N, A + (size_t)offs_host[e] * K,
                                 W + (size_t)e * K * N, rows, N, K, 0, trans_w, 1, beta));
    }
    return MK_OK;
}

int mk_grouped_matmul_wgrad_by_expert(mk_backend *be, mk_real *dW, const mk_real *A, const mk_real *dC,
                                      const int *offs_host, int E, int K, int N)
{
    MK_CHECK(check_offs("grouped_matmul_wgrad", offs_host, E));
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        if (rows == 0) continue;
        MK_CHECK(be->ops->matmul(be, dW + (size_t)e * K * N, A + (size_t)offs_host[e] * K,
                                 dC + (size_t)offs_host[e] * N, K, N, rows, 1, 0, 1, 1));
    }
    return MK_OK;
}
