/* mk_gg_cutlass.cu - grouped expert GEMMs on CUTLASS's SM90 kernels: see mk_gg_cutlass.h.
 *
 * One kernel type per operand layout and output type: rows products A B_e (B_e k-major, as
 * W^T, or n-major, as W) into bf16 or fp32, and the weight gradient A_e^T dC_e (both
 * operands m/n-major, the reduction over the expert's rows) into fp32 with beta = 1.
 * Warp-specialised schedules (mk_gg_cutlass_kern.cuh): a producer warp issues TMA copies
 * into a ring of shared-memory stages guarded by mbarriers, consumer warpgroups run wgmma,
 * and the persistent tile scheduler walks the groups' tiles in a fixed order.
 *
 * The per-group tables CUTLASS reads (problem shapes, pointers, strides) live on the device
 * and are written by one small kernel per call whose argument carries the expert offsets:
 * no host-to-device copy that a later call could overwrite before it runs.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#ifdef MK_HAVE_CUTLASS
#include "mk_gg_cutlass_kern.cuh" /* first: it sets NDEBUG for CUTLASS */
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_gg_cutlass.h"
#include "mk_grouped_gemm.h"
#include "mk_pdl.h"

#ifdef MK_HAVE_CUTLASS

typedef int (*gg_sched_fn)(int form, const gg_ctx *c, const gg_groups &t, float beta, const char *what);

struct mk_gg_cutlass {
    mk_devbuf tables;    /* shapes, pointers and strides of up to GG_MAX_GROUPS groups */
    mk_devbuf workspace; /* CUTLASS's (tensor maps of the groups in flight) */
    mk_devbuf partials;  /* the weight gradient's partial sums of split experts */
    mk_devbuf zeros;     /* K x N zeros, the C of those partial sums */
    size_t zeros_floats; /* how many of them are cleared */
    gg_shape host_shapes[GG_MAX_GROUPS];
    int sm_count, device;
    int sm_margin;       /* SMs left to another stream's kernels (mk_gg_cutlass_set_sm_margin) */
    gg_sched_fn sched[GG_FORMS]; /* the schedule each operand form runs on */
};

/* The schedule of every form. Rows products: 128 x 256 tiles, measured fastest at
 * bench-s shapes on an H200 (docs/performance.md: 128 x 128 tiles, cooperative or
 * ping-pong, ran 4-25% slower; clusters of two blocks gained 1-6% with uniform routing and
 * lost 2-5% with skewed). Weight gradients: 128 x 128 tiles. A tile there reduces all of
 * its group's rows, and the persistent scheduler deals tiles to blocks in a fixed stride,
 * so a hot expert's tiles set the launch's length: tiles half as wide halve it (the
 * expert FFN backward of a training run took 14.5 ms per step with 128 x 256 tiles, 12.8
 * with 128 x 128). MOEKIT_GG_SCHED=coop|wide forces one for every form (tests,
 * kernel_bench). */
static int gg_pick(mk_gg_cutlass *g)
{
    static const struct {
        const char *name;
        gg_sched_fn fn;
    } all[] = {{"coop", mk_gg_cl_coop}, {"wide", mk_gg_cl_wide}};
    for (int f = 0; f < GG_FORMS; f++) g->sched[f] = f == GG_TN_F32 ? mk_gg_cl_coop : mk_gg_cl_wide;
    const char *want = getenv("MOEKIT_GG_SCHED");
    if (!want || !*want) return MK_OK;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(want, all[i].name) == 0) {
            for (int f = 0; f < GG_FORMS; f++) g->sched[f] = all[i].fn;
            return MK_OK;
        }
    return MK_FAIL(MK_ERR_USAGE, "MOEKIT_GG_SCHED=%s: not coop or wide", want);
}

static int gg_go(mk_gg_cutlass *g, int form, const gg_groups &t, float beta, const char *what)
{
    const gg_ctx c = {g->tables.p, &g->workspace, g->host_shapes, g->sm_count - g->sm_margin, g->device};
    return g->sched[form](form, &c, t, beta, what);
}

/* The groups of a call and their shapes for the host side (t->wgrad, K, N set). Rows
 * form: one group per expert with rows. Weight gradient: an expert of more than twice
 * `chunk` rows -- at least 2048 and the mean rows of an expert with rows, more when the
 * groups would not fit -- is split into chunks of `chunk` rows, so that no block reduces
 * far more rows than the rest, however unbalanced the routing (a tile's time grows with
 * the rows it reduces). t->slot numbers the partial sums of chunks after the first; their
 * count is returned in *slots (each costs a write and a read of K x N floats). */
static int gg_list(mk_gg_cutlass *g, gg_groups *t, const int *offs_host, int E, int *slots, const char *what)
{
    if (E < 1 || E > MK_GG_MAX_EXPERTS)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: %d experts (1..%d)", what, E, MK_GG_MAX_EXPERTS);
    int busy = 0;
    for (int e = 0; e <= E; e++) {
        if (offs_host[e] < 0 || (e > 0 && offs_host[e] < offs_host[e - 1]))
            return MK_FAIL(MK_ERR_INTERNAL, "%s: offsets not sorted at expert %d", what, e);
        t->offs[e] = offs_host[e];
        busy += e < E && offs_host[e + 1] > offs_host[e];
    }
    const long long R = offs_host[E] - offs_host[0];
    long long chunk = busy ? (R + busy - 1) / busy : 1;
    if (chunk < 2048) chunk = 2048;
    if (chunk < (R + GG_MAX_GROUPS - E - 1) / (GG_MAX_GROUPS - E)) chunk = (R + GG_MAX_GROUPS - E - 1) / (GG_MAX_GROUPS - E);
    t->E = E, t->n = 0, t->chunk = (int)chunk;
    *slots = 0;
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        t->first[e] = t->n;
        t->slot[e] = -1;
        if (rows == 0) continue;
        if (!t->wgrad) {
            g->host_shapes[t->n++] = gg_shape(rows, t->N, t->K);
            continue;
        }
        const int parts = rows > 2 * chunk ? (int)((rows + chunk - 1) / chunk) : 1;
        if (parts > 1) t->slot[e] = *slots, *slots += parts - 1;
        for (int c = 0; c < parts; c++) {
            const int r = parts == 1 ? rows : (int)(c + 1 < parts ? chunk : rows - c * chunk);
            g->host_shapes[t->n++] = gg_shape(t->K, t->N, r);
        }
    }
    t->first[E] = t->n;
    return MK_OK;
}

/* dW_e += the partial sums of split expert e's chunks after the first (which went into
 * dW_e), in chunk order (blockIdx.y = e). */
__global__ static void k_gg_partials_sum(float *dW, const float *ws, const gg_groups t, size_t KN)
{
    MK_PDL_ENTRY();
    const int e = blockIdx.y;
    if (t.slot[e] < 0) return;
    const int more = t.first[e + 1] - t.first[e] - 1;
    GRID_STRIDE(i, KN) {
        float s = dW[(size_t)e * KN + i];
        for (int c = 0; c < more; c++) s += ws[(size_t)(t.slot[e] + c) * KN + i];
        dW[(size_t)e * KN + i] = s;
    }
}

int mk_gg_cutlass_available(void)
{
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return 0;
    return major == 9 && minor == 0 && mk_grouped_gemm_wgmma_available();
}

int mk_gg_cutlass_create(mk_gg_cutlass **out)
{
    *out = NULL;
    mk_gg_cutlass *g = (mk_gg_cutlass *)calloc(1, sizeof *g);
    if (!g) return MK_FAIL(MK_ERR_NOMEM, "grouped GEMM state");
    int rc = MK_OK;
    if (cudaGetDevice(&g->device) != cudaSuccess ||
        cudaDeviceGetAttribute(&g->sm_count, cudaDevAttrMultiProcessorCount, g->device) != cudaSuccess)
        rc = MK_FAIL(MK_ERR_INTERNAL, "cuda: grouped GEMM: no device");
    if (rc == MK_OK) rc = mk_devbuf_reserve(&g->tables, 8 * GG_TABLE_BYTES, "grouped GEMM tables");
    if (rc == MK_OK) rc = gg_pick(g);
    if (rc != MK_OK) {
        mk_gg_cutlass_destroy(g);
        return rc;
    }
    *out = g;
    return MK_OK;
}

int mk_gg_cutlass_set_sm_margin(mk_gg_cutlass *g, int margin)
{
    if (margin < 0 || margin >= g->sm_count)
        return MK_FAIL(MK_ERR_USAGE, "grouped GEMM: an SM margin of %d on a GPU of %d SMs", margin, g->sm_count);
    g->sm_margin = margin;
    return MK_OK;
}

void mk_gg_cutlass_destroy(mk_gg_cutlass *g)
{
    if (!g) return;
    mk_devbuf_release(&g->tables);
    mk_devbuf_release(&g->workspace);
    mk_devbuf_release(&g->partials);
    mk_devbuf_release(&g->zeros);
    free(g);
}

int mk_gg_cutlass_rows(mk_gg_cutlass *g, void *C, int c_bf16, int ldc, const void *A, int lda,
                       const void *B, size_t b_stride, int ldb, int trans_b, const int *offs_host,
                       int E, int K, int N, float beta)
{
    static const char what[] = "grouped GEMM (CUTLASS)";
    if (c_bf16 && beta != 0.0f) return MK_FAIL(MK_ERR_INTERNAL, "%s: bf16 output with beta", what);
    gg_groups t;
    int slots;
    t.wgrad = 0, t.K = K, t.N = N;
    MK_CHECK(gg_list(g, &t, offs_host, E, &slots, what));
    if (t.n == 0) return MK_OK;
    t.ws = NULL, t.zeros = NULL;
    t.A = (const char *)A, t.B = (const char *)B, t.D = (char *)C;
    t.lda = lda, t.ldb = ldb, t.ldd = ldc, t.b_stride = (long long)b_stride;
    t.d_size = c_bf16 ? 2 : 4;
    const int form = trans_b ? (c_bf16 ? GG_NT_BF16 : GG_NT_F32) : (c_bf16 ? GG_NN_BF16 : GG_NN_F32);
    return gg_go(g, form, t, beta, what);
}

int mk_gg_cutlass_wgrad(mk_gg_cutlass *g, float *dW, const void *A, int lda, const void *dC, int ldc,
                        const int *offs_host, int E, int K, int N)
{
    static const char what[] = "grouped weight gradient (CUTLASS)";
    gg_groups t;
    int slots;
    t.wgrad = 1, t.K = K, t.N = N;
    MK_CHECK(gg_list(g, &t, offs_host, E, &slots, what));
    if (t.n == 0) return MK_OK;
    const size_t KN = (size_t)K * N;
    t.ws = NULL, t.zeros = NULL;
    if (slots > 0) {
        MK_CHECK(mk_devbuf_reserve(&g->partials, slots * KN * sizeof(float), "grouped weight gradient partial sums"));
        if (g->zeros_floats < KN) {
            MK_CHECK(mk_devbuf_reserve(&g->zeros, KN * sizeof(float), "grouped weight gradient zeros"));
            CU_CHECK(cudaMemsetAsync(g->zeros.p, 0, KN * sizeof(float), 0), what);
            g->zeros_floats = KN;
        }
        t.ws = (float *)g->partials.p, t.zeros = (const float *)g->zeros.p;
    }
    t.A = (const char *)A, t.B = (const char *)dC, t.D = (char *)dW;
    t.lda = lda, t.ldb = ldc, t.ldd = N, t.b_stride = 0, t.d_size = 4;
    MK_CHECK(gg_go(g, GG_TN_F32, t, 1.0f, what));
    if (slots == 0) return MK_OK;
    size_t bx = (KN + 255) / 256;
    if (bx > 4096) bx = 4096;
    CU_CHECK(mk_launch(k_gg_partials_sum, dim3((unsigned)bx, (unsigned)E), dim3(256), 0, dW, t.ws, t, KN),
                       what);
    return MK_OK;
}

#else /* !MK_HAVE_CUTLASS */

struct mk_gg_cutlass {
    int unused;
};

int mk_gg_cutlass_available(void)
{
    return 0;
}

int mk_gg_cutlass_create(mk_gg_cutlass **out)
{
    *out = NULL;
    return MK_FAIL(MK_ERR_INTERNAL, "grouped GEMM: built without CUTLASS (configure --with-cutlass)");
}

int mk_gg_cutlass_set_sm_margin(mk_gg_cutlass *g, int margin)
{
    (void)g, (void)margin;
    return MK_FAIL(MK_ERR_INTERNAL, "grouped GEMM: built without CUTLASS (configure --with-cutlass)");
}

void mk_gg_cutlass_destroy(mk_gg_cutlass *g)
{
    (void)g;
}

int mk_gg_cutlass_rows(mk_gg_cutlass *g, void *C, int c_bf16, int ldc, const void *A, int lda,
                       const void *B, size_t b_stride, int ldb, int trans_b, const int *offs_host,
                       int E, int K, int N, float beta)
{
    (void)g, (void)C, (void)c_bf16, (void)ldc, (void)A, (void)lda, (void)B, (void)b_stride, (void)ldb;
    (void)trans_b, (void)offs_host, (void)E, (void)K, (void)N, (void)beta;
    return MK_FAIL(MK_ERR_INTERNAL, "grouped GEMM: built without CUTLASS (configure --with-cutlass)");
}

int mk_gg_cutlass_wgrad(mk_gg_cutlass *g, float *dW, const void *A, int lda, const void *dC, int ldc,
                        const int *offs_host, int E, int K, int N)
{
    (void)g, (void)dW, (void)A, (void)lda, (void)dC, (void)ldc, (void)offs_host, (void)E, (void)K, (void)N;
    return MK_FAIL(MK_ERR_INTERNAL, "grouped weight gradient: built without CUTLASS (configure --with-cutlass)");
}

#endif
