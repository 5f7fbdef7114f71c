/* mk_gg_cutlass_kern.cuh - the CUTLASS kernel types behind mk_gg_cutlass.cu (CUDA C++,
 * built only with MK_HAVE_CUTLASS). Each schedule's kernels are instantiated in a file of
 * their own (mk_gg_cutlass_<schedule>.cu), so a parallel make compiles them side by side.
 *
 * Include first in a translation unit: CUTLASS's device-side asserts are calls, and a call
 * inside the mainloop makes ptxas serialise the wgmma pipeline (warning C7510), so NDEBUG
 * is set before anything includes <assert.h>.
 */
#ifndef MK_GG_CUTLASS_KERN_CUH
#define MK_GG_CUTLASS_KERN_CUH

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

#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_grouped_gemm.h"
#include "mk_pdl.h"

typedef cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>> gg_problem;
typedef gg_problem::UnderlyingProblemShape gg_shape;

/* The groups of one call. Rows form: one group per expert with rows. Weight gradient: an
 * expert of many rows is reduced in chunks of `chunk` rows, one group each: the first
 * accumulates into dW_e, the others write partial sums (slots of K x N floats in ws, from
 * C = the zeros slab, so nothing needs clearing) that mk_gg_cutlass.cu then adds to dW_e
 * in chunk order; a whole expert accumulates straight into dW_e. Group g belongs to the
 * expert e with first[e] <= g < first[e + 1]. Operands are byte addresses with leading
 * dimensions in elements. */
typedef struct gg_groups {
    int offs[MK_GG_MAX_EXPERTS + 1];  /* first row of each expert */
    int first[MK_GG_MAX_EXPERTS + 1]; /* first group of each expert; first[E] groups in all */
    int slot[MK_GG_MAX_EXPERTS];      /* weight gradient: slot of its second chunk, -1: whole */
    int E, n, K, N, wgrad, chunk;
    const char *A, *B;
    char *D;
    float *ws;          /* partial sums */
    const float *zeros; /* K x N zeros: the C of a partial sum */
    long long lda, ldb, ldd, b_stride; /* b_stride: elements between experts' B (rows form) */
    int d_size;                        /* bytes of an output element */
} gg_groups;

/* Groups one call may have (weight gradient chunks included). */
#define GG_MAX_GROUPS 1024

static_assert(sizeof(gg_groups) < 4000, "the group table must fit the kernel argument space");

/* What a launch needs besides the groups: the device tables' buffer, CUTLASS's workspace,
 * the groups' shapes on the host (the tile scheduler sizes the grid from them). */
typedef struct gg_ctx {
    void *tables;
    mk_devbuf *workspace;
    const gg_shape *host_shapes;
    int sm_count, device;
} gg_ctx;

/* Operand forms: rows products with B as [K, N] (nn) or [N, K] (nt) into bf16 or fp32, and
 * the weight gradient A^T dC (tn) into fp32. */
enum { GG_NN_BF16, GG_NN_F32, GG_NT_BF16, GG_NT_F32, GG_TN_F32, GG_FORMS };

/* Schedules: tile, cluster and kernel/epilogue policy. */
struct gg_coop {
    using Tile = cute::Shape<cute::_128, cute::_128, cute::_64>;
    using Cluster = cute::Shape<cute::_1, cute::_1, cute::_1>;
    using Kernel = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
    using Epi = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};
struct gg_wide {
    using Tile = cute::Shape<cute::_128, cute::_256, cute::_64>;
    using Cluster = cute::Shape<cute::_1, cute::_1, cute::_1>;
    using Kernel = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
    using Epi = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};
/* The kernel of one operand layout pair, output type and schedule. */
template <class LayoutA, class LayoutB, class ElementD, class S> struct gg_kernel {
    using Element = cutlass::bfloat16_t;
    using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename S::Tile, typename S::Cluster,
        cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementD, cutlass::layout::RowMajor *,
        16 / sizeof(ElementD), ElementD, cutlass::layout::RowMajor *, 16 / sizeof(ElementD), typename S::Epi,
        cutlass::epilogue::fusion::LinearCombination<ElementD, float>>::CollectiveOp;
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA *, 8, Element, LayoutB *, 8, float,
        typename S::Tile, typename S::Cluster,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        typename S::Kernel>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<gg_problem, Mainloop, Epilogue>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
    using StrideA = typename Kernel::InternalStrideA;
    using StrideB = typename Kernel::InternalStrideB;
    using StrideD = typename Kernel::InternalStrideD;
};

/* Set the int64 mode of a cute stride (the other is the unit stride): the leading dimension. */
template <class St> __device__ __forceinline__ void gg_set_ld(St &s, long long ld)
{
    if constexpr (cute::is_same_v<decltype(cute::get<0>(s)), int64_t &>) cute::get<0>(s) = ld;
    else cute::get<1>(s) = ld;
}

template <class K>
__global__ static void k_gg_tables(gg_shape *shapes, const void **pa, const void **pb, const void **pc,
                                   void **pd, typename K::StrideA *sa, typename K::StrideB *sb, typename K::StrideD *sd,
                                   const gg_groups t)
{
    MK_PDL_ENTRY();
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= t.n) return;
    int lo = 0, hi = t.E - 1; /* the last e with first[e] <= g: its groups hold g */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (t.first[mid] <= g) lo = mid;
        else hi = mid - 1;
    }
    const int e = lo, c = g - t.first[e];
    const long long es = 2; /* bf16 operands */
    if (t.wgrad) {
        const int r0 = t.offs[e] + c * t.chunk, end = t.offs[e + 1];
        const int rows = t.slot[e] < 0 || end - r0 < t.chunk ? end - r0 : t.chunk; /* a whole expert may exceed chunk */
        shapes[g] = gg_shape(t.K, t.N, rows);
        pa[g] = t.A + (long long)r0 * t.lda * es;
        pb[g] = t.B + (long long)r0 * t.ldb * es;
        if (t.slot[e] < 0 || c == 0) {
            pd[g] = t.D + (long long)e * t.K * t.N * t.d_size;
            pc[g] = pd[g];
        } else {
            pd[g] = t.ws + (long long)(t.slot[e] + c - 1) * t.K * t.N;
            pc[g] = t.zeros;
        }
    } else {
        const int r0 = t.offs[e];
        shapes[g] = gg_shape(t.offs[e + 1] - r0, t.N, t.K);
        pa[g] = t.A + (long long)r0 * t.lda * es;
        pb[g] = t.B + (long long)e * t.b_stride * es;
        pd[g] = t.D + (long long)r0 * t.ldd * t.d_size;
        pc[g] = pd[g];
    }
    typename K::StrideA a{};
    typename K::StrideB b{};
    typename K::StrideD d{};
    gg_set_ld(a, t.lda), gg_set_ld(b, t.ldb), gg_set_ld(d, t.ldd);
    sa[g] = a, sb[g] = b, sd[g] = d;
}

#define GG_TABLE_BYTES (GG_MAX_GROUPS * 64) /* one slice per table, 64 bytes per group at most */

/* Write the groups' tables on the device, then launch CUTLASS's kernel on them (C = D but
 * for partial sums, so beta accumulates onto the output in place). */
template <class K> static int gg_run(const gg_ctx *c, const gg_groups &t, float beta, const char *what)
{
    using Gemm = typename K::Gemm;
    static_assert(sizeof(gg_shape) <= 64 && sizeof(typename K::StrideA) <= 64, "table slice");
    char *base = (char *)c->tables;
    gg_shape *shapes = (gg_shape *)base;
    const void **pa = (const void **)(base + GG_TABLE_BYTES);
    const void **pb = (const void **)(base + 2 * GG_TABLE_BYTES);
    void **pd = (void **)(base + 3 * GG_TABLE_BYTES);
    auto *sa = (typename K::StrideA *)(base + 4 * GG_TABLE_BYTES);
    auto *sb = (typename K::StrideB *)(base + 5 * GG_TABLE_BYTES);
    auto *sd = (typename K::StrideD *)(base + 6 * GG_TABLE_BYTES);
    const void **pc = (const void **)(base + 7 * GG_TABLE_BYTES);
    CU_CHECK(mk_launch(k_gg_tables<K>, dim3((t.n + 127) / 128), dim3(128), 0, shapes, pa, pb, pc, pd, sa, sb, sd, t),
                       what);

    typename Gemm::Arguments args;
    decltype(args.epilogue.thread) fusion{};
    fusion.alpha = 1.0f;
    fusion.beta = beta;
    cutlass::KernelHardwareInfo hw;
    hw.device_id = c->device;
    hw.sm_count = c->sm_count;
    args = typename Gemm::Arguments{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        {t.n, shapes, c->host_shapes},
        {(const typename Gemm::ElementA **)pa, sa, (const typename Gemm::ElementB **)pb, sb},
        {fusion, (const typename Gemm::ElementC **)pc, sd, (typename Gemm::ElementD **)pd, sd},
        hw};
    Gemm gemm;
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: CUTLASS cannot run it: %s", what, cutlassGetStatusString(st));
    MK_CHECK(mk_devbuf_reserve(c->workspace, Gemm::get_workspace_size(args) + 256, "grouped GEMM workspace"));
    st = gemm.initialize(args, c->workspace->p, nullptr);
    if (st == cutlass::Status::kSuccess) st = gemm.run(nullptr);
    if (st != cutlass::Status::kSuccess) return MK_FAIL(MK_ERR_INTERNAL, "%s: CUTLASS: %s", what, cutlassGetStatusString(st));
    CU_CHECK(cudaGetLastError(), what);
    return MK_OK;
}

/* Every form of one schedule. */
template <class S> static int gg_run_form(int form, const gg_ctx *c, const gg_groups &t, float beta, const char *what)
{
    using cutlass::layout::ColumnMajor;
    using cutlass::layout::RowMajor;
    typedef cutlass::bfloat16_t bf;
    switch (form) {
    case GG_NN_BF16: return gg_run<gg_kernel<RowMajor, RowMajor, bf, S>>(c, t, beta, what);
    case GG_NN_F32: return gg_run<gg_kernel<RowMajor, RowMajor, float, S>>(c, t, beta, what);
    case GG_NT_BF16: return gg_run<gg_kernel<RowMajor, ColumnMajor, bf, S>>(c, t, beta, what);
    case GG_NT_F32: return gg_run<gg_kernel<RowMajor, ColumnMajor, float, S>>(c, t, beta, what);
    case GG_TN_F32: return gg_run<gg_kernel<ColumnMajor, RowMajor, float, S>>(c, t, beta, what);
    }
    return MK_FAIL(MK_ERR_INTERNAL, "%s: operand form %d", what, form);
}

/* One per schedule file. */
int mk_gg_cl_coop(int form, const gg_ctx *c, const gg_groups &t, float beta, const char *what);
int mk_gg_cl_wide(int form, const gg_ctx *c, const gg_groups &t, float beta, const char *what);

#endif
