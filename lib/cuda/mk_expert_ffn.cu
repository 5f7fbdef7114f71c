/* mk_expert_ffn.cu - the fused bf16 expert FFN of the CUDA backend: see mk_expert_ffn.h.
 *
 * With R rows, D = d_model, F = the expert hidden size, per layer and step:
 *
 *   forward   xb = bf16(gathered x), kept in xp; a1 = xb W1; a3 = xb W3 (bf16 out);
 *             h = silu(a1) a3 (bf16); y = h W2 (bf16 out)
 *   backward  dyb = bf16(gathered dout) (or the caller's, mk_rows_gather.rows_op);
 *             dh = dyb W2^T (bf16 out); dW2 += h^T dyb;
 *             da1, da3 = swiglu'(dh) (bf16); dxp = da1 W1^T + da3 W3^T (one pass, bf16 out);
 *             dW1 += xb^T da1; dW3 += xb^T da3
 *
 * in the order of the op sequence (mk_expert_ffn_backward_ops), so any aliasing of the
 * model's buffers that the sequence allows is safe here too. All products are the grouped
 * kernels of mk_grouped_gemm.cu (one launch per product, however unbalanced the experts),
 * or, on an sm_90 GPU in a build with CUTLASS, CUTLASS's grouped GEMMs with gate and up as
 * one product (the CUTLASS path below).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_bf16.h"
#include "mk_cuda_check.h"
#include "mk_devbuf.h"
#include "mk_expert_ffn.h"
#include "mk_gg_cutlass.h"
#include "mk_grouped_gemm.h"
#include "mk_pdl.h"

typedef __nv_bfloat16 bf16;

#define TPB 256
#define MAX_BLOCKS 65536u

/* Forwards whose rounded weights were left in their a3 buffer (the CUTLASS path), for the
 * backward that reads that state: one per layer, found by the buffer's address. */
#define FFN_KEPT 128
typedef struct ffn_kept {
    const void *state;               /* the forward's a3 buffer */
    const float *w1, *w3, *w2;       /* the weights it rounded */
    int E, D, F;
} ffn_kept;

struct mk_cuda_ffn {
    ffn_kept kept[FFN_KEPT];
    int nkept;
    mk_devbuf buf;     /* bf16 copies, then the weight gradient's fp32 partials */
    mk_gg_kernel kern; /* wgmma where the GPU has it, unless MOEKIT_NO_WGMMA=1 */
    mk_gg_cutlass *cl; /* CUTLASS's grouped GEMMs where built and the GPU is sm_90, unless
                        * MOEKIT_NO_CUTLASS=1; NULL: our own kernels */
};

static unsigned grid_for(size_t n)
{
    size_t b = (n + TPB - 1) / TPB;
    return (unsigned)(b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------ kernels */

/* bf16(w * p[0..7]) as one 16-byte store; p read as two float4 when vec (16-byte
 * aligned). Each product is rounded once. */
__device__ __forceinline__ uint4 round8(const float *p, float w, int vec)
{
    float v[8];
    if (vec) {
        const float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = p[k];
    }
    __nv_bfloat162 h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(w * v[2 * k], w * v[2 * k + 1]);
    return *(const uint4 *)h;
}

/* The gathers run one warp per row, its lanes over the row's 16-byte chunks: the row's
 * choice (and gate) is read once, and no 64-bit division per chunk finds the row (one
 * thread per chunk spent about as long on the index arithmetic as on the copy). */
#define GATHER_WARPS (TPB / 32)

static unsigned gather_grid(size_t R)
{
    const size_t b = (R + GATHER_WARPS - 1) / GATHER_WARPS;
    return (unsigned)(b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* out[r, :] = bf16(w * src[row_slot[r] / K, :]) (w = weights[row_slot[r]] or 1), 8 columns
 * per chunk (D8 = D / 8); the source row is read as float4 when vec (16-byte aligned).
 * The product w * x is rounded once, as permute_rows followed by a rounding would. */
__global__ static void k_gather_bf16(uint4 *out, const float *src, const int *row_slot,
                                     const float *weights, int K, size_t R, int D8, int vec)
{
    MK_PDL_ENTRY();
    const int lane = threadIdx.x % 32;
    for (size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < R;
         r += (size_t)gridDim.x * GATHER_WARPS) {
        const int s = row_slot[r];
        const float w = weights ? weights[s] : 1.0f;
        const float *row = src + (size_t)(s / K) * D8 * 8;
        uint4 *o = out + r * D8;
        for (int c = lane; c < D8; c += 32) o[c] = round8(row + (size_t)c * 8, w, vec);
    }
}

/* The unweighted gather from a bf16 copy of the token rows (srcb, D8 chunks of 8 per row):
 * the bits of k_gather_bf16 (bf16(x) either way), with half the bytes for the K reads of
 * each row. A lane issues all its loads of a row before its stores (the pointers do not
 * alias), and the stores stream past L2, which then keeps the token rows that every row's
 * K copies read. */
#define GATHER_UNROLL 4
__global__ static void k_gather_rows_bf16(uint4 *__restrict__ out, const uint4 *__restrict__ srcb,
                                          const int *__restrict__ row_slot, int K, size_t R, int D8)
{
    MK_PDL_ENTRY();
    const int lane = threadIdx.x % 32;
    for (size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < R;
         r += (size_t)gridDim.x * GATHER_WARPS) {
        const uint4 *row = srcb + (size_t)(row_slot[r] / K) * D8;
        uint4 *o = out + r * D8;
        for (int c0 = 0; c0 < D8; c0 += 32 * GATHER_UNROLL) {
            uint4 v[GATHER_UNROLL];
#pragma unroll
            for (int u = 0; u < GATHER_UNROLL; u++)
                if (c0 + lane + 32 * u < D8) v[u] = __ldg(row + c0 + lane + 32 * u);
#pragma unroll
            for (int u = 0; u < GATHER_UNROLL; u++)
                if (c0 + lane + 32 * u < D8) __stcs(o + c0 + lane + 32 * u, v[u]);
        }
    }
}

/* h = silu(a) b in fp32, rounded once, for one pair. */
__device__ __forceinline__ __nv_bfloat162 swiglu2(__nv_bfloat162 a, __nv_bfloat162 b)
{
    const float2 x = __bfloat1622float2(a), u = __bfloat1622float2(b);
    const float s0 = 1.0f / (1.0f + expf(-x.x)), s1 = 1.0f / (1.0f + expf(-x.y));
    return __floats2bfloat162_rn(x.x * s0 * u.x, x.y * s1 * u.y);
}

/* silu'(x) = s + x s (1 - s), for one pair: da and db from dh, a and b. */
__device__ __forceinline__ void swiglu2_backward(__nv_bfloat162 *da, __nv_bfloat162 *db,
                                                 __nv_bfloat162 dh, __nv_bfloat162 a,
                                                 __nv_bfloat162 b)
{
    const float2 x = __bfloat1622float2(a), u = __bfloat1622float2(b), g = __bfloat1622float2(dh);
    const float s0 = 1.0f / (1.0f + expf(-x.x)), s1 = 1.0f / (1.0f + expf(-x.y));
    *da = __floats2bfloat162_rn(g.x * u.x * (s0 + x.x * s0 * (1 - s0)),
                                g.y * u.y * (s1 + x.y * s1 * (1 - s1)));
    *db = __floats2bfloat162_rn(g.x * x.x * s0, g.y * x.y * s1);
}

/* Pairs (n2 = n / 2), four pairs per 16-byte load over the first n8 = n2 / 4 when vec (all
 * operands 16-byte aligned), then one pair at a time: 4-byte accesses left the pass at
 * about half the memory bandwidth. */
__global__ static void k_swiglu(__nv_bfloat162 *h, const __nv_bfloat162 *a, const __nv_bfloat162 *b,
                                size_t n2, size_t n8)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n8) {
        uint4 A = ((const uint4 *)a)[i], B = ((const uint4 *)b)[i], H;
        const __nv_bfloat162 *pa = (const __nv_bfloat162 *)&A, *pb = (const __nv_bfloat162 *)&B;
        __nv_bfloat162 *ph = (__nv_bfloat162 *)&H;
#pragma unroll
        for (int k = 0; k < 4; k++) ph[k] = swiglu2(pa[k], pb[k]);
        ((uint4 *)h)[i] = H;
    }
    GRID_STRIDE(i, n2 - 4 * n8) h[4 * n8 + i] = swiglu2(a[4 * n8 + i], b[4 * n8 + i]);
}

/* Everything is read before da or db is written (they may alias a or b, as in the op
 * sequence). */
__global__ static void k_swiglu_backward(__nv_bfloat162 *da, __nv_bfloat162 *db,
                                         const __nv_bfloat162 *dh, const __nv_bfloat162 *a,
                                         const __nv_bfloat162 *b, size_t n2, size_t n8)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, n8) {
        const uint4 G = ((const uint4 *)dh)[i], A = ((const uint4 *)a)[i], B = ((const uint4 *)b)[i];
        const __nv_bfloat162 *pg = (const __nv_bfloat162 *)&G, *pa = (const __nv_bfloat162 *)&A;
        const __nv_bfloat162 *pb = (const __nv_bfloat162 *)&B;
        uint4 DA, DB;
        __nv_bfloat162 *pda = (__nv_bfloat162 *)&DA, *pdb = (__nv_bfloat162 *)&DB;
#pragma unroll
        for (int k = 0; k < 4; k++) swiglu2_backward(&pda[k], &pdb[k], pg[k], pa[k], pb[k]);
        ((uint4 *)da)[i] = DA, ((uint4 *)db)[i] = DB;
    }
    GRID_STRIDE(i, n2 - 4 * n8) {
        const size_t j = 4 * n8 + i;
        __nv_bfloat162 x, y;
        swiglu2_backward(&x, &y, dh[j], a[j], b[j]);
        da[j] = x, db[j] = y;
    }
}

/* The CUTLASS path keeps gate and up side by side: w13 [E][D][2F] (row d of expert e is
 * w1's row then w3's), so a13 = x w13 is one GEMM of 2F columns whose rows hold a1 then a3,
 * and dx = da13 w13^T is one GEMM reducing over 2F. Chunks of 8 columns (F8 = F / 8);
 * float4 loads when vec. */
__global__ static void k_pack13_bf16(uint4 *out, const float *w1, const float *w3, size_t rows, int F8,
                                     int vec)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, rows * 2 * F8) {
        const size_t row = i / (2 * F8);
        const int j = (int)(i % (2 * F8));
        out[i] = round8((j < F8 ? w1 : w3) + row * F8 * 8 + (size_t)(j % F8) * 8, 1.0f, vec);
    }
}

/* h [R][F] = silu(a1) a3 from a13 [R][2F], 8 columns per thread. */
__global__ static void k_swiglu13(uint4 *h, const uint4 *a13, size_t R, int F8)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, R * F8) {
        const size_t r = i / F8, c = i % F8;
        const uint4 A = a13[r * 2 * F8 + c], B = a13[r * 2 * F8 + F8 + c];
        uint4 H;
        const __nv_bfloat162 *pa = (const __nv_bfloat162 *)&A, *pb = (const __nv_bfloat162 *)&B;
        __nv_bfloat162 *ph = (__nv_bfloat162 *)&H;
#pragma unroll
        for (int k = 0; k < 4; k++) ph[k] = swiglu2(pa[k], pb[k]);
        h[i] = H;
    }
}

/* da13 [R][2F] from dh [R][F] and a13; a thread reads its chunks of a13 before it writes
 * the same chunks of da13, so da13 may be a13. */
__global__ static void k_swiglu13_backward(uint4 *da13, const uint4 *dh, const uint4 *a13, size_t R, int F8)
{
    MK_PDL_ENTRY();
    GRID_STRIDE(i, R * F8) {
        const size_t r = i / F8, c = i % F8, ia = r * 2 * F8 + c;
        const uint4 G = dh[i], A = a13[ia], B = a13[ia + F8];
        uint4 DA, DB;
        const __nv_bfloat162 *pg = (const __nv_bfloat162 *)&G, *pa = (const __nv_bfloat162 *)&A;
        const __nv_bfloat162 *pb = (const __nv_bfloat162 *)&B;
        __nv_bfloat162 *pda = (__nv_bfloat162 *)&DA, *pdb = (__nv_bfloat162 *)&DB;
#pragma unroll
        for (int k = 0; k < 4; k++) swiglu2_backward(&pda[k], &pdb[k], pg[k], pa[k], pb[k]);
        da13[ia] = DA, da13[ia + F8] = DB;
    }
}

/* n8 for the kernels above: the fours of pairs when every pointer is 16-byte aligned. */
static size_t quads(size_t n2, const void *p, const void *q, const void *r, const void *s, const void *t)
{
    const uintptr_t u = (uintptr_t)p | (uintptr_t)q | (uintptr_t)r | (uintptr_t)s | (uintptr_t)t;
    return (u & 15) ? 0 : n2 / 4;
}

/* ------------------------------------------------------------------ workspace */

int mk_cuda_ffn_create(mk_cuda_ffn **out)
{
    *out = (mk_cuda_ffn *)calloc(1, sizeof **out);
    if (!*out) return MK_FAIL(MK_ERR_NOMEM, "cuda expert FFN: cannot allocate its state");
    const char *off = getenv("MOEKIT_NO_WGMMA");
    const int no = off && strcmp(off, "1") == 0;
    (*out)->kern = !no && mk_grouped_gemm_wgmma_available() ? MK_GG_WGMMA : MK_GG_MMA;
    const char *nocl = getenv("MOEKIT_NO_CUTLASS");
    if (!(nocl && strcmp(nocl, "1") == 0) && mk_gg_cutlass_available()) {
        const int rc = mk_gg_cutlass_create(&(*out)->cl);
        if (rc != MK_OK) {
            mk_cuda_ffn_destroy(*out);
            *out = NULL;
            return rc;
        }
    }
    return MK_OK;
}

int mk_cuda_ffn_set_sm_margin(mk_cuda_ffn *f, int margin)
{
    return f->cl ? mk_gg_cutlass_set_sm_margin(f->cl, margin) : MK_OK;
}

void mk_cuda_ffn_destroy(mk_cuda_ffn *f)
{
    if (!f) return;
    mk_devbuf_release(&f->buf);
    mk_gg_cutlass_destroy(f->cl);
    free(f);
}

/* Successive pieces of the workspace, each 256-byte aligned. */
static size_t up256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

static int to_bf16(bf16 *y, const float *x, size_t n, const char *what)
{
    return mk_cuda_round_bf16(y, x, n, what);
}

/* Unweighted rows whose bf16 copy the caller has (mk_rows_gather.src_op: the CUDA
 * backend's operand format is bf16) are gathered from it: no rounding pass at all. */
static int from_op(const mk_rows_gather *g)
{
    return g->src_op && !g->weights && ((uintptr_t)g->src_op & 15) == 0;
}

/* The rows already gathered by the caller (mk_rows_gather.rows_op: the CUDA backend's
 * combine_backward writes them as bf16, each w x rounded once as k_gather_bf16 rounds it),
 * or NULL: gather them here. */
static const bf16 *given_rows(const mk_rows_gather *g)
{
    return g->rows_op && ((uintptr_t)g->rows_op & 15) == 0 ? (const bf16 *)g->rows_op : NULL;
}

/* Bytes of workspace gather_bf16 uses for a bf16 copy of the token rows (0: it gathers
 * from the fp32 rows). Weighted rows (the output gradient's, by the gates) are gathered
 * from the fp32 rows, so that w x is rounded once: from a rounded copy it would be rounded
 * twice, for about 0.1 ms per step at bench-s. */
static size_t gather_ws(const mk_rows_gather *g, int D)
{
    const int ok = !g->weights && !from_op(g) && g->N > 0 && ((uintptr_t)g->src & 15) == 0;
    return ok ? up256((size_t)g->N * D * 2) : 0;
}

/* The rows gathered and rounded: through a bf16 copy of the token rows in ws (gather_ws
 * bytes) where there is one, else straight from the fp32 rows. */
static int gather_bf16(bf16 *out, const mk_rows_gather *g, size_t R, int D, void *ws, const char *what)
{
    if (R == 0) return MK_OK;
    if (from_op(g)) {
        CU_CHECK(mk_launch(k_gather_rows_bf16, dim3(gather_grid(R)), dim3(TPB), 0, (uint4 *)out,
                           (const uint4 *)g->src_op, g->row_slot, g->K, R, D / 8), what);
    } else if (gather_ws(g, D)) {
        MK_CHECK(mk_cuda_round_bf16(ws, g->src, (size_t)g->N * D, what));
        CU_CHECK(mk_launch(k_gather_rows_bf16, dim3(gather_grid(R)), dim3(TPB), 0, (uint4 *)out, (const uint4 *)ws,
                           g->row_slot, g->K, R, D / 8), what);
    } else {
        const int vec = ((uintptr_t)g->src & 15) == 0;
        CU_CHECK(mk_launch(k_gather_bf16, dim3(gather_grid(R)), dim3(TPB), 0, (uint4 *)out, g->src, g->row_slot,
                           g->weights, g->K, R, D / 8, vec), what);
    }
    return MK_OK;
}

int mk_cuda_ffn_supported(int E, int D, int F)
{
    return mk_grouped_gemm_bf16_supported(E, D, F);
}

static int check_rows(const int *offs_host, int E, size_t *R)
{
    for (int e = 0; e < E; e++)
        if (offs_host[e] < 0 || offs_host[e + 1] < offs_host[e])
            return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: offsets not sorted at expert %d", e);
    *R = (size_t)offs_host[E];
    return MK_OK;
}

/* ------------------------------------------------------------------ the CUTLASS path
 *
 *   forward   xb = bf16(gathered x); w13 = bf16(w1 | w3); a13 = xb w13 (bf16, in a1's
 *             buffer: R x 2F bf16 fill its R x F floats); h = silu(a1) a3; y = h W2 (bf16)
 *   backward  dyb; dh = dyb W2^T; dW2 += h^T dyb; da13 = swiglu'(dh) (in da1's buffer);
 *             dxp = da13 w13^T (one GEMM over 2F); dW1 += xb^T da13[:, :F]; dW3 likewise
 *             with da13[:, F:]
 *
 * a3's buffer holds the forward's rounded weights w13 | w2 where they fit, for its backward.
 * Which path runs is fixed when the op's state is made, so a backward always reads the a13
 * its forward wrote. */

static int pack13(bf16 *w13, const float *w1, const float *w3, int E, int D, int F, const char *what)
{
    const size_t rows = (size_t)E * D, n = rows * 2 * (F / 8);
    const int vec = (((uintptr_t)w1 | (uintptr_t)w3) & 15) == 0;
    CU_CHECK(mk_launch(k_pack13_bf16, dim3(grid_for(n)), dim3(TPB), 0, (uint4 *)w13, w1, w3, rows, F / 8, vec), what);
    return MK_OK;
}

static int cl_aligned(const void *p, const void *q, const void *r, const void *s, const void *t)
{
    if ((((uintptr_t)p | (uintptr_t)q | (uintptr_t)r | (uintptr_t)s | (uintptr_t)t) & 15) == 0) return MK_OK;
    return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: a buffer is not 16-byte aligned (CUTLASS's TMA needs it)");
}

/* The entry of the forward whose state is a3 (NULL: none), and a free or reusable one. */
static ffn_kept *kept_find(mk_cuda_ffn *f, const void *a3, int add)
{
    for (int i = 0; i < f->nkept; i++)
        if (f->kept[i].state == a3) return &f->kept[i];
    if (!add) return NULL;
    ffn_kept *k = &f->kept[f->nkept < FFN_KEPT ? f->nkept++ : (int)((uintptr_t)a3 / 256 % FFN_KEPT)];
    k->state = a3;
    return k;
}

/* The rounded weights w13 | w2 fit in a3's R x F floats (at bench-s: 75 MB of 134). */
static int kept_fits(size_t R, int E, int D, int F, const void *a3)
{
    const size_t nw = (size_t)E * D * F;
    return ((uintptr_t)a3 & 15) == 0 && up256(2 * nw * 2) + up256(nw * 2) <= R * F * sizeof(float);
}

static int cl_forward(mk_cuda_ffn *f, float *y, float *a1, float *a3, float *hact, float *xp,
                      const mk_rows_gather *x, const float *w1, const float *w3, const float *w2,
                      const int *offs_host, int E, int D, int F, size_t R)
{
    MK_CHECK(cl_aligned(y, a1, hact, xp, w2));
    const size_t nw = (size_t)E * D * F;
    const size_t s13 = up256(2 * nw * 2), s2 = up256(nw * 2);
    /* The rounded weights go to a3's buffer, unused on this path, where they fit: the
     * backward, whose weights are the forward's, then reads them instead of rounding the
     * same weights again (225 MB of traffic per layer at bench-s). */
    const int keep = kept_fits(R, E, D, F, a3);
    const size_t wbytes = keep ? 0 : s13 + s2;
    MK_CHECK(mk_devbuf_reserve(&f->buf, wbytes + gather_ws(x, D), "expert FFN workspace"));
    char *wbase = keep ? (char *)a3 : (char *)f->buf.p;
    bf16 *w13b = (bf16 *)wbase, *w2b = (bf16 *)(wbase + s13);
    bf16 *xb = (bf16 *)xp, *a13 = (bf16 *)a1, *hb = (bf16 *)hact;
    ffn_kept *k = kept_find(f, a3, keep);
    if (k && keep) {
        k->w1 = w1, k->w3 = w3, k->w2 = w2;
        k->E = E, k->D = D, k->F = F;
    } else if (k) {
        k->state = NULL;
    }
    MK_CHECK(gather_bf16(xb, x, R, D, (char *)f->buf.p + wbytes, "expert FFN forward: input rows"));
    MK_CHECK(pack13(w13b, w1, w3, E, D, F, "expert FFN forward: w1 | w3"));
    MK_CHECK(to_bf16(w2b, w2, nw, "expert FFN forward: w2"));
    MK_CHECK(mk_gg_cutlass_rows(f->cl, a13, 1, 2 * F, xb, D, w13b, (size_t)D * 2 * F, 2 * F, 0, offs_host, E, D,
                                2 * F, 0.f));
    CU_CHECK(mk_launch(k_swiglu13, dim3(grid_for(R * (F / 8))), dim3(TPB), 0, (uint4 *)hb, (const uint4 *)a13, R,
                       F / 8), "expert FFN forward: SwiGLU");
    return mk_gg_cutlass_rows(f->cl, y, 1, D, hb, F, w2b, (size_t)F * D, D, 0, offs_host, E, F, D, 0.f);
}

static int cl_backward(mk_cuda_ffn *f, float *dxp, float *dw1, float *dw3, float *dw2, float *dhact, float *da1,
                       const mk_rows_gather *dout, const float *xp, const float *a1, const float *a3,
                       const float *hact, const float *w1, const float *w3, const float *w2, const int *offs_host,
                       int E, int D, int F, size_t R)
{
    MK_CHECK(cl_aligned(dxp, dhact, da1, dw2, dw1));
    MK_CHECK(cl_aligned(dw3, xp, a1, hact, w2));
    const bf16 *given = given_rows(dout);
    const size_t nw = (size_t)E * D * F, sx = given ? 0 : up256(R * D * 2), s13 = up256(2 * nw * 2);
    /* The forward's rounded weights where it left them in a3 (the same weight buffers and
     * shape), else rounded here. */
    const ffn_kept *k = kept_find(f, a3, 0);
    const int kept = k && k->w1 == w1 && k->w3 == w3 && k->w2 == w2 && k->E == E && k->D == D && k->F == F &&
                     kept_fits(R, E, D, F, a3);
    const size_t wbytes = kept ? 0 : s13 + up256(nw * 2), gws = given ? 0 : gather_ws(dout, D);
    MK_CHECK(mk_devbuf_reserve(&f->buf, sx + wbytes + gws, "expert FFN workspace"));
    char *base = (char *)f->buf.p, *wbase = kept ? (char *)a3 : base + sx;
    bf16 *w13b = (bf16 *)wbase, *w2b = (bf16 *)(wbase + s13);
    const bf16 *xb = (const bf16 *)xp, *a13 = (const bf16 *)a1, *hb = (const bf16 *)hact;
    bf16 *dhb = (bf16 *)dhact, *da13 = (bf16 *)da1;
    const bf16 *dyb = given ? given : (const bf16 *)base;
    if (!given)
        MK_CHECK(gather_bf16((bf16 *)base, dout, R, D, base + sx + wbytes, "expert FFN backward: output gradient rows"));
    if (!kept) {
        MK_CHECK(pack13(w13b, w1, w3, E, D, F, "expert FFN backward: w1 | w3"));
        MK_CHECK(to_bf16(w2b, w2, nw, "expert FFN backward: w2"));
    }
    MK_CHECK(mk_gg_cutlass_rows(f->cl, dhb, 1, F, dyb, D, w2b, (size_t)F * D, D, 1, offs_host, E, D, F, 0.f));
    MK_CHECK(mk_gg_cutlass_wgrad(f->cl, dw2, hb, F, dyb, D, offs_host, E, F, D));
    CU_CHECK(mk_launch(k_swiglu13_backward, dim3(grid_for(R * (F / 8))), dim3(TPB), 0, (uint4 *)da13,
                       (const uint4 *)dhb, (const uint4 *)a13, R, F / 8), "expert FFN backward: SwiGLU");
    MK_CHECK(mk_gg_cutlass_rows(f->cl, dxp, 1, D, da13, 2 * F, w13b, (size_t)D * 2 * F, 2 * F, 1, offs_host, E,
                                2 * F, D, 0.f));
    MK_CHECK(mk_gg_cutlass_wgrad(f->cl, dw1, xb, D, da13, 2 * F, offs_host, E, D, F));
    return mk_gg_cutlass_wgrad(f->cl, dw3, xb, D, da13 + F, 2 * F, offs_host, E, D, F);
}

/* ------------------------------------------------------------------ the op */

int mk_cuda_ffn_forward(mk_cuda_ffn *f, float *y, float *a1, float *a3, float *hact, float *xp,
                        const mk_rows_gather *x, const float *w1, const float *w3, const float *w2,
                        const int *offs_host, int E, int D, int F)
{
    size_t R = 0;
    MK_CHECK(check_rows(offs_host, E, &R));
    if (R == 0) return MK_OK;
    if (f->cl) return cl_forward(f, y, a1, a3, hact, xp, x, w1, w3, w2, offs_host, E, D, F, R);
    const size_t nw = (size_t)E * D * F, nh = R * F;
    const size_t bytes = 3 * up256(nw * 2);
    MK_CHECK(mk_devbuf_reserve(&f->buf, bytes + gather_ws(x, D), "expert FFN workspace"));
    char *base = (char *)f->buf.p;
    bf16 *xb = (bf16 *)xp, *w1b = (bf16 *)base;
    bf16 *w3b = (bf16 *)(base + up256(nw * 2)), *w2b = (bf16 *)(base + 2 * up256(nw * 2));
    MK_CHECK(gather_bf16(xb, x, R, D, base + bytes, "expert FFN forward: input rows"));
    MK_CHECK(to_bf16(w1b, w1, nw, "expert FFN forward: w1"));
    MK_CHECK(to_bf16(w3b, w3, nw, "expert FFN forward: w3"));
    MK_CHECK(to_bf16(w2b, w2, nw, "expert FFN forward: w2"));
    bf16 *a1b = (bf16 *)a1, *a3b = (bf16 *)a3, *hb = (bf16 *)hact;
    MK_CHECK(mk_grouped_gemm_rows_bf16(f->kern, a1b, 1, xb, w1b, NULL, NULL, 0, offs_host, E, D, F, 0, 0.f));
    MK_CHECK(mk_grouped_gemm_rows_bf16(f->kern, a3b, 1, xb, w3b, NULL, NULL, 0, offs_host, E, D, F, 0, 0.f));
    const size_t n8f = quads(nh / 2, hb, a1b, a3b, hb, hb);
    CU_CHECK(mk_launch(k_swiglu, dim3(grid_for(n8f ? n8f : nh / 2)), dim3(TPB), 0, (__nv_bfloat162 *)hb,
                       (const __nv_bfloat162 *)a1b, (const __nv_bfloat162 *)a3b, nh / 2, n8f),
                       "expert FFN forward: SwiGLU");
    return mk_grouped_gemm_rows_bf16(f->kern, y, 1, hb, w2b, NULL, NULL, 0, offs_host, E, F, D, 0, 0.f);
}

int mk_cuda_ffn_backward(mk_cuda_ffn *f, float *dxp, float *dw1, float *dw3, float *dw2,
                         float *dhact, float *da1, float *da3, const mk_rows_gather *dout,
                         const float *xp, const float *a1, const float *a3, const float *hact,
                         const float *w1, const float *w3, const float *w2, const int *offs_host,
                         int E, int D, int F)
{
    size_t R = 0;
    MK_CHECK(check_rows(offs_host, E, &R));
    if (R == 0) return MK_OK;
    if (f->cl)
        return cl_backward(f, dxp, dw1, dw3, dw2, dhact, da1, dout, xp, a1, a3, hact, w1, w3, w2, offs_host, E, D, F,
                           R);
    const bf16 *given = given_rows(dout);
    const size_t nx = R * D, nw = (size_t)E * D * F, nh = R * F;
    const size_t wsn = mk_grouped_gemm_wgrad_ws_floats(offs_host, E, D, F);
    const size_t sx = given ? 0 : up256(nx * 2), sw = up256(nw * 2);
    const size_t bytes = sx + 3 * sw + up256(wsn * sizeof(float));
    MK_CHECK(mk_devbuf_reserve(&f->buf, bytes + (given ? 0 : gather_ws(dout, D)), "expert FFN workspace"));
    char *base = (char *)f->buf.p;
    const bf16 *xb = (const bf16 *)xp;
    const bf16 *dyb = given ? given : (const bf16 *)base;
    bf16 *w1b = (bf16 *)(base + sx), *w3b = (bf16 *)(base + sx + sw);
    bf16 *w2b = (bf16 *)(base + sx + 2 * sw);
    float *ws = (float *)(base + sx + 3 * sw);
    if (!given)
        MK_CHECK(gather_bf16((bf16 *)base, dout, R, D, base + bytes, "expert FFN backward: output gradient rows"));
    MK_CHECK(to_bf16(w1b, w1, nw, "expert FFN backward: w1"));
    MK_CHECK(to_bf16(w3b, w3, nw, "expert FFN backward: w3"));
    MK_CHECK(to_bf16(w2b, w2, nw, "expert FFN backward: w2"));
    const bf16 *a1b = (const bf16 *)a1, *a3b = (const bf16 *)a3, *hb = (const bf16 *)hact;
    bf16 *dhb = (bf16 *)dhact, *da1b = (bf16 *)da1, *da3b = (bf16 *)da3;
    MK_CHECK(mk_grouped_gemm_rows_bf16(f->kern, dhb, 1, dyb, w2b, NULL, NULL, 0, offs_host, E, D, F, 1, 0.f));
    MK_CHECK(mk_grouped_gemm_wgrad_bf16(f->kern, dw2, ws, wsn, hb, dyb, offs_host, E, F, D));
    const size_t n8b = quads(nh / 2, da1b, da3b, dhb, a1b, a3b);
    CU_CHECK(mk_launch(k_swiglu_backward, dim3(grid_for(n8b ? n8b : nh / 2)), dim3(TPB), 0, (__nv_bfloat162 *)da1b,
                       (__nv_bfloat162 *)da3b, (const __nv_bfloat162 *)dhb, (const __nv_bfloat162 *)a1b,
                       (const __nv_bfloat162 *)a3b, nh / 2, n8b), "expert FFN backward: SwiGLU");
    /* dxp = da1 W1^T + da3 W3^T as one product over 2F columns: no second pass over dxp */
    MK_CHECK(mk_grouped_gemm_rows_bf16(f->kern, dxp, 1, da1b, w1b, da3b, w3b, F, offs_host, E, F, D, 1, 0.f));
    MK_CHECK(mk_grouped_gemm_wgrad_bf16(f->kern, dw1, ws, wsn, xb, da1b, offs_host, E, D, F));
    return mk_grouped_gemm_wgrad_bf16(f->kern, dw3, ws, wsn, xb, da3b, offs_host, E, D, F);
}
