/* mk_gg_cutlass.cu - grouped expert GEMMs on CUTLASS's SM90 kernels: see mk_gg_cutlass.h.
 *
 * One kernel type per operand layout and output type: rows products A B_e (B_e k-major, as
 * W^T, or n-major, as W) into bf16 or fp32, and the weight gradient A_e^T dC_e (both
 * operands m/n-major, the reduction over the expert's rows) into fp32 with beta = 1.
 * Warp-specialised cooperative schedule: a producer warp issues TMA copies into a ring of
 * shared-memory stages guarded by mbarriers, two consumer warpgroups run wgmma on 128 x 128
 * tiles, and the persistent tile scheduler walks the groups' tiles in a fixed order.
 *
 * The per-group tables CUTLASS reads (problem shapes, pointers, strides) live on the device
 * and are written by one small kernel per call whose argument carries the expert offsets:
 * no host-to-device copy that a later call could overwrite before it runs.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdlib.h>

#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_gg_cutlass.h"
#include "mk_grouped_gemm.h"

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

int mk_gg_cutlass_shapes_ok(int K, int N, int ld1, int ld2, int ld3, const void *p1, const void *p2,
                            const void *p3)
{
    return K > 0 && N > 0 && K % 8 == 0 && N % 8 == 0 && ld1 % 8 == 0 && ld2 % 8 == 0 && ld3 % 8 == 0 &&
           aligned16(p1) && aligned16(p2) && aligned16(p3);
}

#ifdef MK_HAVE_CUTLASS

/* CUTLASS's device-side asserts are calls, and a call inside the mainloop makes ptxas
 * serialise the wgmma pipeline (warning C7510): they go, in this file only. */
#ifndef NDEBUG
#define NDEBUG 1
#endif
#include <assert.h>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

using namespace cute;

typedef cutlass::gemm::GroupProblemShape<Shape<int, int, int>> gg_problem;
typedef gg_problem::UnderlyingProblemShape gg_shape;

/* The kernel for one operand layout pair and output type. */
template <class LayoutA, class LayoutB, class ElementD> struct gg_kernel {
    using Element = cutlass::bfloat16_t;
    using Tile = Shape<_128, _128, _64>;
    using Cluster = Shape<_1, _1, _1>;
    using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
        cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementD, cutlass::layout::RowMajor *,
        16 / sizeof(ElementD), ElementD, cutlass::layout::RowMajor *, 16 / sizeof(ElementD),
        cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
        cutlass::epilogue::fusion::LinearCombination<ElementD, float>>::CollectiveOp;
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA *, 8, Element, LayoutB *, 8, float,
        Tile, Cluster,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<gg_problem, Mainloop, Epilogue>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
    using StrideA = typename Kernel::InternalStrideA;
    using StrideB = typename Kernel::InternalStrideB;
    using StrideD = typename Kernel::InternalStrideD;
};

typedef gg_kernel<cutlass::layout::RowMajor, cutlass::layout::RowMajor, cutlass::bfloat16_t> gg_nn_bf16;
typedef gg_kernel<cutlass::layout::RowMajor, cutlass::layout::RowMajor, float> gg_nn_f32;
typedef gg_kernel<cutlass::layout::RowMajor, cutlass::layout::ColumnMajor, cutlass::bfloat16_t> gg_nt_bf16;
typedef gg_kernel<cutlass::layout::RowMajor, cutlass::layout::ColumnMajor, float> gg_nt_f32;
typedef gg_kernel<cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, float> gg_tn_f32;

/* The groups of one call: expert list[g] for group g, the experts' first rows, and the
 * operands as byte addresses with their leading dimensions (elements). wgrad: the group's
 * reduction is the expert's rows; otherwise its m extent is. */
typedef struct gg_groups {
    int offs[MK_GG_MAX_EXPERTS + 1];
    unsigned char list[MK_GG_MAX_EXPERTS];
    int n, K, N, wgrad;
    const char *A, *B;
    char *D;
    long long lda, ldb, ldd, b_stride; /* b_stride, elements between experts' B (rows form) */
    int d_size;                        /* bytes of an output element */
} gg_groups;

static_assert(sizeof(gg_groups) < 4000, "the group table must fit the kernel argument space");

/* Set the m/n extent of a cute stride's int64 mode: the leading dimension. */
template <class S> __device__ __forceinline__ void set_ld(S &s, long long ld)
{
    if constexpr (cute::is_same_v<decltype(get<0>(s)), int64_t &>) get<0>(s) = ld;
    else get<1>(s) = ld;
}

template <class K>
__global__ static void k_gg_tables(gg_shape *shapes, const void **pa, const void **pb, void **pd,
                                   typename K::StrideA *sa, typename K::StrideB *sb, typename K::StrideD *sd,
                                   const gg_groups t)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= t.n) return;
    const int e = t.list[g], r0 = t.offs[e], rows = t.offs[e + 1] - r0;
    const long long es = 2; /* bf16 operands */
    if (t.wgrad) {
        shapes[g] = gg_shape(t.K, t.N, rows);
        pa[g] = t.A + (long long)r0 * t.lda * es;
        pb[g] = t.B + (long long)r0 * t.ldb * es;
        pd[g] = t.D + (long long)e * t.K * t.N * t.d_size;
    } else {
        shapes[g] = gg_shape(rows, t.N, t.K);
        pa[g] = t.A + (long long)r0 * t.lda * es;
        pb[g] = t.B + (long long)e * t.b_stride * es;
        pd[g] = t.D + (long long)r0 * t.ldd * t.d_size;
    }
    typename K::StrideA a{};
    typename K::StrideB b{};
    typename K::StrideD d{};
    set_ld(a, t.lda), set_ld(b, t.ldb), set_ld(d, t.ldd);
    sa[g] = a, sb[g] = b, sd[g] = d;
}

struct mk_gg_cutlass {
    mk_devbuf tables;    /* shapes, pointers and strides of up to MK_GG_MAX_EXPERTS groups */
    mk_devbuf workspace; /* CUTLASS's (tensor maps of the groups in flight) */
    gg_shape host_shapes[MK_GG_MAX_EXPERTS];
    int sm_count, device;
};

#define TABLE_BYTES (MK_GG_MAX_EXPERTS * 64) /* one slice per table, 64 bytes per group at most */

template <class K>
static int gg_run(mk_gg_cutlass *g, const gg_groups &t, float beta, const char *what)
{
    using Gemm = typename K::Gemm;
    static_assert(sizeof(gg_shape) <= 64 && sizeof(typename K::StrideA) <= 64, "table slice");
    char *base = (char *)g->tables.p;
    gg_shape *shapes = (gg_shape *)base;
    const void **pa = (const void **)(base + TABLE_BYTES);
    const void **pb = (const void **)(base + 2 * TABLE_BYTES);
    void **pd = (void **)(base + 3 * TABLE_BYTES);
    auto *sa = (typename K::StrideA *)(base + 4 * TABLE_BYTES);
    auto *sb = (typename K::StrideB *)(base + 5 * TABLE_BYTES);
    auto *sd = (typename K::StrideD *)(base + 6 * TABLE_BYTES);
    k_gg_tables<K><<<(t.n + 127) / 128, 128>>>(shapes, pa, pb, pd, sa, sb, sd, t);
    CU_CHECK(cudaGetLastError(), what);

    typename Gemm::Arguments args;
    decltype(args.epilogue.thread) fusion{};
    fusion.alpha = 1.0f;
    fusion.beta = beta;
    cutlass::KernelHardwareInfo hw;
    hw.device_id = g->device;
    hw.sm_count = g->sm_count;
    args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                    {t.n, shapes, g->host_shapes},
                                    {(const typename Gemm::ElementA **)pa, sa, (const typename Gemm::ElementB **)pb, sb},
                                    {fusion, (const typename Gemm::ElementC **)pd, sd, (typename Gemm::ElementD **)pd, sd},
                                    hw};
    Gemm gemm;
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: CUTLASS cannot run it: %s", what, cutlassGetStatusString(st));
    MK_CHECK(mk_devbuf_reserve(&g->workspace, Gemm::get_workspace_size(args) + 256, "grouped GEMM workspace"));
    st = gemm.initialize(args, g->workspace.p, nullptr);
    if (st == cutlass::Status::kSuccess) st = gemm.run(nullptr);
    if (st != cutlass::Status::kSuccess)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: CUTLASS: %s", what, cutlassGetStatusString(st));
    CU_CHECK(cudaGetLastError(), what);
    return MK_OK;
}

/* The experts with rows, in expert order, and their shapes for the host side. */
static int gg_list(mk_gg_cutlass *g, gg_groups *t, const int *offs_host, int E, const char *what)
{
    if (E < 1 || E > MK_GG_MAX_EXPERTS)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: %d experts (1..%d)", what, E, MK_GG_MAX_EXPERTS);
    t->n = 0;
    for (int e = 0; e <= E; e++) {
        if (offs_host[e] < 0 || (e > 0 && offs_host[e] < offs_host[e - 1]))
            return MK_FAIL(MK_ERR_INTERNAL, "%s: offsets not sorted at expert %d", what, e);
        t->offs[e] = offs_host[e];
        if (e < E && offs_host[e + 1] > offs_host[e]) {
            const int rows = offs_host[e + 1] - offs_host[e];
            g->host_shapes[t->n] = t->wgrad ? gg_shape(t->K, t->N, rows) : gg_shape(rows, t->N, t->K);
            t->list[t->n++] = (unsigned char)e;
        }
    }
    return MK_OK;
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
    if (rc == MK_OK) rc = mk_devbuf_reserve(&g->tables, 7 * TABLE_BYTES, "grouped GEMM tables");
    if (rc != MK_OK) {
        mk_gg_cutlass_destroy(g);
        return rc;
    }
    *out = g;
    return MK_OK;
}

void mk_gg_cutlass_destroy(mk_gg_cutlass *g)
{
    if (!g) return;
    mk_devbuf_release(&g->tables);
    mk_devbuf_release(&g->workspace);
    free(g);
}

int mk_gg_cutlass_rows(mk_gg_cutlass *g, void *C, int c_bf16, int ldc, const void *A, int lda,
                       const void *B, size_t b_stride, int ldb, int trans_b, const int *offs_host,
                       int E, int K, int N, float beta)
{
    static const char what[] = "grouped GEMM (CUTLASS)";
    if (c_bf16 && beta != 0.0f) return MK_FAIL(MK_ERR_INTERNAL, "%s: bf16 output with beta", what);
    gg_groups t;
    t.wgrad = 0, t.K = K, t.N = N;
    MK_CHECK(gg_list(g, &t, offs_host, E, what));
    if (t.n == 0) return MK_OK;
    t.A = (const char *)A, t.B = (const char *)B, t.D = (char *)C;
    t.lda = lda, t.ldb = ldb, t.ldd = ldc, t.b_stride = (long long)b_stride;
    t.d_size = c_bf16 ? 2 : 4;
    if (trans_b) return c_bf16 ? gg_run<gg_nt_bf16>(g, t, beta, what) : gg_run<gg_nt_f32>(g, t, beta, what);
    return c_bf16 ? gg_run<gg_nn_bf16>(g, t, beta, what) : gg_run<gg_nn_f32>(g, t, beta, what);
}

int mk_gg_cutlass_wgrad(mk_gg_cutlass *g, float *dW, const void *A, int lda, const void *dC, int ldc,
                        const int *offs_host, int E, int K, int N)
{
    static const char what[] = "grouped weight gradient (CUTLASS)";
    gg_groups t;
    t.wgrad = 1, t.K = K, t.N = N;
    MK_CHECK(gg_list(g, &t, offs_host, E, what));
    if (t.n == 0) return MK_OK;
    t.A = (const char *)A, t.B = (const char *)dC, t.D = (char *)dW;
    t.lda = lda, t.ldb = ldc, t.ldd = N, t.b_stride = 0, t.d_size = 4;
    return gg_run<gg_tn_f32>(g, t, 1.0f, what);
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
