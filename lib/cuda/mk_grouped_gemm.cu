/* mk_grouped_gemm.cu - expert GEMMs on bf16 tensor cores in one launch: see mk_grouped_gemm.h.
 *
 * A block computes a 128 x 128 tile of one expert's output with mma.sync m16n8k16 (bf16
 * in, fp32 accumulate), two blocks per SM. bf16 operands: 4 warps (2 x 2) of 64 x 64 each;
 * fp32 operands: 8 warps (2 x 4) of 64 x 32, which leaves registers for the staging. A
 * 64 x 64 warp tile reads 8 fragments from shared memory per 32 products where 64 x 32
 * reads 6 per 16. (On an H200 at bench-s shapes these run at 175-263 TFLOP/s; Nsight
 * Compute shows 70% of L2 throughput, 45% of SM throughput and fixed-latency dependencies
 * as the top stall. Tiles of 128 x 256, one block of 8 warps per SM, cut the L2 traffic
 * but ran 10-20% slower, so the tiles stay 128 x 128.)
 * The reduction runs in steps of 32. fp32 operands: each thread loads its share of the next
 * step into registers while the warps multiply the current step out of shared memory,
 * then rounds it to bf16 into the other of two shared buffers. bf16 operands (the fused
 * expert FFN): cp.async copies them straight into shared memory, four steps in flight.
 * Operands are staged in their memory layout -- k contiguous ([outer][k]) or outer
 * contiguous ([k][outer]) -- and ldmatrix (.trans for the second) turns either into mma
 * fragments, so no form needs a transposing copy. Rows of shared tiles are padded by 8
 * elements, which puts the 8 row addresses of every ldmatrix phase on 8 bank groups.
 *
 * The forward forms (C = A W_e or A W_e^T) give every expert ceil(rows / 128) x ceil(N / 128)
 * blocks, numbered expert by expert; a block finds its expert by binary search in the
 * table of first blocks, which travels as a kernel argument (no upload). The weight
 * gradient reduces over an expert's rows, in chunks of at most 2048 rows per block so that
 * no block runs far longer than the rest however unbalanced the routing; the chunks of an
 * expert are added up in chunk order by a second kernel.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdlib.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_grouped_gemm.h"
#include "mk_mma.h"
#include "mk_wgmma.h"

#define BM 128          /* tile rows (m) and columns (n): the two outer extents are equal */
#define BK 32           /* reduction step */
#define NT 256          /* threads of the fp32-operand kernels: 8 warps of 64 x 32 */
#define NT16 128        /* threads of the bf16-operand kernels: 4 warps of 64 x 64 */
#define LDK (BK + 8)    /* padded row of a k-contiguous tile [outer][k] */
#define LDO (BM + 8)    /* padded row of an outer-contiguous tile [k][outer] */
#define TILE (BM * LDK) /* elements of one staged tile (the larger of BM*LDK and BK*LDO) */
#define CHUNKS (BM * BK / 4 / NT) /* float4 loads per thread per operand and step */

typedef __nv_bfloat16 bf16;

/* The expert table of one call. Rows form: offs = first row of each expert, first = first
 * block of each expert. Weight gradient: order = experts with rows, largest first. */
typedef struct gg_table {
    int offs[MK_GG_MAX_EXPERTS + 1];
    int first[MK_GG_MAX_EXPERTS + 1];
    int E;
} gg_table;

static_assert(TILE >= BK * LDO, "a staged tile must fit either layout");
static_assert(sizeof(gg_table) < 4000, "the expert table must fit the kernel argument space");

/* This thread's float4 chunks of one operand's step: outer index o0..o0+127 (bounded by
 * olim), reduction index k0..k0+31 (bounded by klim). KC: element (o, k) at P[o*ld + k];
 * otherwise at P[k*ld + o]. Chunks past a bound are zero, so they add nothing. */
template <bool KC>
__device__ __forceinline__ void load_step(float4 r[CHUNKS], const float *P, int ld, int o0, int olim,
                                          int k0, int klim)
{
#pragma unroll
    for (int j = 0; j < CHUNKS; j++) {
        const int c = threadIdx.x + j * NT;
        int o, k;
        if (KC) o = o0 + (c >> 3), k = k0 + (c & 7) * 4;
        else k = k0 + (c >> 5), o = o0 + (c & 31) * 4;
        r[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (o < olim && k < klim)
            r[j] = __ldg((const float4 *)(P + (KC ? (size_t)o * ld + k : (size_t)k * ld + o)));
    }
}

template <bool KC>
__device__ __forceinline__ void store_step(bf16 *tile, const float4 r[CHUNKS])
{
#pragma unroll
    for (int j = 0; j < CHUNKS; j++) {
        const int c = threadIdx.x + j * NT;
        uint2 w;
        w.x = mk_pack_bf16x2(r[j].x, r[j].y);
        w.y = mk_pack_bf16x2(r[j].z, r[j].w);
        if (KC) *(uint2 *)(tile + (c >> 3) * LDK + (c & 7) * 4) = w;
        else *(uint2 *)(tile + (c >> 5) * LDO + (c & 31) * 4) = w;
    }
}

/* acc (the warp's 64 x 16 WJ) += the step's A (128 x 32) times B (32 x 128); warp (wm, wn)
 * of a 2 x (8 / WJ) grid. Fragment layouts of m16n8k16: A's four 8 x 8 pieces are
 * (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15); B's two are k 0-7
 * and k 8-15 of 8 columns. Lanes 8q..8q+7 give the row addresses of piece q. */
template <bool A_KC, bool B_KC, int WJ>
__device__ __forceinline__ void mma_step(float acc[4][2 * WJ][4], const bf16 *As, const bf16 *Bs,
                                         int wm, int wn, int lane)
{
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        uint32_t a[4][4], b[2 * WJ][2];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int mb = wm * 64 + i * 16;
            if (A_KC) mk_ldsm_x4(a[i], As + (mb + (lane & 15)) * LDK + kk + (lane >> 4) * 8);
            else mk_ldsm_x4_t(a[i], As + (kk + (lane & 7) + (lane >> 4) * 8) * LDO + mb + ((lane >> 3) & 1) * 8);
        }
#pragma unroll
        for (int j = 0; j < WJ; j++) {
            const int nb = wn * 16 * WJ + j * 16;
            uint32_t r[4];
            if (B_KC) mk_ldsm_x4(r, Bs + (nb + (lane & 7) + (lane >> 4) * 8) * LDK + kk + ((lane >> 3) & 1) * 8);
            else mk_ldsm_x4_t(r, Bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * LDO + nb + (lane >> 4) * 8);
            b[2 * j][0] = r[0], b[2 * j][1] = r[1];
            b[2 * j + 1][0] = r[2], b[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 2 * WJ; j++) mk_mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
    }
}

template <int NJ> __device__ __forceinline__ void zero_acc(float acc[4][NJ][4])
{
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
}

/* The block's tile: acc = A[m0.., :klim] B[:klim, n0..] in steps of BK, in order. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void tile_product(float acc[4][4][4], bf16 *smem, const float *A, int lda,
                                             int m0, int mlim, const float *B, int ldb, int n0,
                                             int nlim, int klim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    zero_acc<4>(acc);
    const int nk = (klim + BK - 1) / BK;
    if (nk == 0) return;
    /* buffer s: A at smem + 2 s TILE, B right after it */
    float4 ra[CHUNKS], rb[CHUNKS];
    load_step<A_KC>(ra, A, lda, m0, mlim, 0, klim);
    load_step<B_KC>(rb, B, ldb, n0, nlim, 0, klim);
    store_step<A_KC>(smem, ra);
    store_step<B_KC>(smem + TILE, rb);
    __syncthreads();
    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const int more = kt + 1 < nk;
        if (more) {
            load_step<A_KC>(ra, A, lda, m0, mlim, (kt + 1) * BK, klim);
            load_step<B_KC>(rb, B, ldb, n0, nlim, (kt + 1) * BK, klim);
        }
        bf16 *use = smem + 2 * cur * TILE, *fill = smem + 2 * (cur ^ 1) * TILE;
        mma_step<A_KC, B_KC, 2>(acc, use, use + TILE, wm, wn, lane);
        if (more) {
            store_step<A_KC>(fill, ra);
            store_step<B_KC>(fill + TILE, rb);
        }
        __syncthreads();
    }
}

/* bf16 operands: cp.async copies 16-byte chunks straight into shared memory (no register
 * staging), STAGES steps in flight, so the loads of later steps overlap the products of
 * this one. Chunks past a bound are zero-filled by the copy itself (source size 0). */
#define STAGES 4
#define STAGE_ELEMS (2 * TILE)
#define SMEM_BF16 (STAGES * STAGE_ELEMS * (int)sizeof(bf16))
#define SMEM_F32 (4 * TILE * (int)sizeof(bf16))

/* One operand's step as 512 chunks of 8 elements, 4 per thread; layouts as load_step. */
template <bool KC>
__device__ __forceinline__ void issue_step(bf16 *tile, const bf16 *P, int ld, int o0, int olim, int k0,
                                           int klim)
{
#pragma unroll
    for (int j = 0; j < BM * BK / 8 / NT16; j++) {
        const int c = threadIdx.x + j * NT16;
        int o, k, so;
        if (KC) o = o0 + (c >> 2), k = k0 + (c & 3) * 8, so = (c >> 2) * LDK + (c & 3) * 8;
        else k = k0 + (c >> 4), o = o0 + (c & 15) * 8, so = (c >> 4) * LDO + (c & 15) * 8;
        const int ok = o < olim && k < klim;
        const bf16 *src = ok ? P + (KC ? (size_t)o * ld + k : (size_t)k * ld + o) : P;
        mk_cp_async16(tile + so, src, ok ? 16 : 0);
    }
}

/* One source of the reduction: A (outer m) and B (outer n) over klim reduction indices. */
typedef struct gg_src {
    const bf16 *A, *B;
    int lda, ldb, klim;
} gg_src;

template <bool A_KC, bool B_KC>
__device__ __forceinline__ void issue_src(bf16 *st, const gg_src &s, int m0, int mlim, int n0, int nlim,
                                          int k0)
{
    issue_step<A_KC>(st, s.A, s.lda, m0, mlim, k0, s.klim);
    issue_step<B_KC>(st + TILE, s.B, s.ldb, n0, nlim, k0, s.klim);
}

/* The reduction runs over s1's steps, then s2's (s2.klim = 0: none): C = A1 B1 + A2 B2 in
 * one pass, for products whose two halves sit in different buffers (dx = da1 W1^T +
 * da3 W3^T). A partial last step of s1 is zero-filled past its bound. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void tile_product(float acc[4][8][4], bf16 *smem, const gg_src &s1,
                                             const gg_src &s2, int m0, int mlim, int n0, int nlim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    zero_acc<8>(acc);
    const int nk1 = (s1.klim + BK - 1) / BK, nk = nk1 + (s2.klim + BK - 1) / BK;
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nk) {
            if (st < nk1) issue_src<A_KC, B_KC>(smem + st * STAGE_ELEMS, s1, m0, mlim, n0, nlim, st * BK);
            else issue_src<A_KC, B_KC>(smem + st * STAGE_ELEMS, s2, m0, mlim, n0, nlim, (st - nk1) * BK);
        }
        mk_cp_async_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        /* step kt has landed; every warp is done with the stage the next issue refills */
        mk_cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int nxt = kt + STAGES - 1;
        if (nxt < nk) {
            bf16 *st = smem + (nxt % STAGES) * STAGE_ELEMS;
            if (nxt < nk1) issue_src<A_KC, B_KC>(st, s1, m0, mlim, n0, nlim, nxt * BK);
            else issue_src<A_KC, B_KC>(st, s2, m0, mlim, n0, nlim, (nxt - nk1) * BK);
        }
        mk_cp_async_commit();
        const bf16 *use = smem + (kt % STAGES) * STAGE_ELEMS;
        mma_step<A_KC, B_KC, 4>(acc, use, use + TILE, wm, wn, lane);
    }
    mk_cp_async_wait<0>();
}

/* Output pair (v.x, v.y) at p: fp32 with C = v + beta C, or bf16 (beta is 0 there). */
__device__ __forceinline__ void put2(float *p, float2 v, float beta)
{
    if (beta != 0.f) {
        const float2 old = *(const float2 *)p;
        v.x += beta * old.x, v.y += beta * old.y;
    }
    *(float2 *)p = v;
}

__device__ __forceinline__ void put2(bf16 *p, float2 v, float beta)
{
    (void)beta;
    *(__nv_bfloat162 *)p = __floats2bfloat162_rn(v.x, v.y);
}

/* The expert whose blocks (or chunks) include b: first[e] <= b < first[e + 1], found by
 * binary search; ends at the expert with rows when empty experts share its first. */
__device__ __forceinline__ int find_expert(const gg_table &t, int b)
{
    int lo = 0, hi = t.E;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (t.first[mid] <= b) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* Where a block's tile lies: expert e, the tile's first row r0 of the rows it may read
 * (rows of them), its origin (m0, n0) in the output; for the weight gradient also its
 * chunk u and the expert's chunk count. */
typedef struct gg_tile {
    int e, r0, rows, m0, n0, u, chunks;
} gg_tile;

/* Rows form: every expert's blocks in turn, m tiles then n tiles of 128. */
__device__ __forceinline__ gg_tile rows_tile(const gg_table &t, int N)
{
    gg_tile x;
    const int b = blockIdx.x, nt = (N + BM - 1) / BM;
    x.e = find_expert(t, b);
    const int local = b - t.first[x.e];
    x.m0 = (local / nt) * BM, x.n0 = (local % nt) * BM;
    x.r0 = t.offs[x.e], x.rows = t.offs[x.e + 1] - x.r0;
    x.u = b, x.chunks = 1;
    return x;
}

/* Weight gradient: every chunk's K x N tiles in turn (chunks of WG_CHUNK rows). */
#define WG_CHUNK 2048

__device__ __forceinline__ gg_tile wgrad_tile(const gg_table &t, int K, int N)
{
    gg_tile x;
    const int nt = (N + BM - 1) / BM, tiles = ((K + BM - 1) / BM) * nt;
    x.u = blockIdx.x / tiles;
    const int local = blockIdx.x % tiles;
    x.e = find_expert(t, x.u), x.chunks = t.first[x.e + 1] - t.first[x.e];
    x.m0 = (local / nt) * BM, x.n0 = (local % nt) * BM;
    x.r0 = t.offs[x.e] + (x.u - t.first[x.e]) * WG_CHUNK;
    x.rows = min(t.offs[x.e + 1] - x.r0, WG_CHUNK);
    return x;
}

/* The rows form's reduction sources for tile x: A W_e, plus A2 W2_e when A2 is given. */
template <bool B_KC>
__device__ __forceinline__ void rows_srcs(gg_src *s1, gg_src *s2, const gg_tile &x, const bf16 *A,
                                          const bf16 *W, const bf16 *A2, const bf16 *W2, int K2, int K,
                                          int N)
{
    *s1 = {A + (size_t)x.r0 * K, W + (size_t)x.e * K * N, K, B_KC ? K : N, K};
    *s2 = {A2 ? A2 + (size_t)x.r0 * K2 : A, W2 ? W2 + (size_t)x.e * K2 * N : W, K2, B_KC ? K2 : N,
           A2 ? K2 : 0};
}

/* The output pair at (row, col) of tile x, if inside the output: rows form (C = v + beta C,
 * or bf16), or weight gradient (added to dW for an expert of one chunk, else the chunk's
 * partial: wgrad_out). */
template <typename TC>
__device__ __forceinline__ void rows_put(TC *C, const gg_tile &x, int N, int row, int col, float a, float b,
                                         float beta)
{
    if (row < x.rows && col < N) put2(C + (size_t)(x.r0 + row) * N + col, make_float2(a, b), beta);
}

__device__ __forceinline__ float *wgrad_out(float *dW, float *ws, const gg_tile &x, int K, int N)
{
    return x.chunks == 1 ? dW + (size_t)x.e * K * N : ws + (size_t)x.u * K * N;
}

__device__ __forceinline__ void wgrad_put(float *out, int add, int K, int N, int row, int col, float a, float b)
{
    if (row >= K || col >= N) return;
    float2 *p = (float2 *)(out + (size_t)row * N + col);
    float2 v = make_float2(a, b);
    if (add) {
        const float2 old = *p;
        v.x += old.x, v.y += old.y;
    }
    *p = v;
}

/* The warp layout of an operand type: threads, 8-column accumulator groups per warp (NJ)
 * and warps along n (WN). */
template <typename T> struct gg_cfg {
    static constexpr int threads = sizeof(T) == 4 ? NT : NT16;
    static constexpr int NJ = sizeof(T) == 4 ? 4 : 8;
    static constexpr int WN = BM / (8 * NJ);
};

/* Accumulator (i, j, h) of this lane sits at row wm*64 + i*16 + g + 8*(h/2), columns
 * wn*8*NJ + j*8 + 2q + {0, 1} of the tile, g = lane / 4, q = lane % 4. */
template <typename T, typename TC, bool B_KC>
__global__ static void __launch_bounds__(gg_cfg<T>::threads, 2) k_gg_rows(TC *C, const T *A, const T *W, const T *A2,
                                                          const T *W2, int K2, const gg_table t,
                                                          int K, int N, float beta)
{
    extern __shared__ __align__(16) bf16 smem[];
    const gg_tile x = rows_tile(t, N);
    constexpr int NJ = gg_cfg<T>::NJ, WN = gg_cfg<T>::WN;
    float acc[4][NJ][4];
    if constexpr (sizeof(T) == 4) {
        tile_product<true, B_KC>(acc, smem, A + (size_t)x.r0 * K, K, x.m0, x.rows, W + (size_t)x.e * K * N,
                                 B_KC ? K : N, x.n0, N, K);
    } else {
        gg_src s1, s2;
        rows_srcs<B_KC>(&s1, &s2, x, A, W, A2, W2, K2, K, N);
        tile_product<true, B_KC>(acc, smem, s1, s2, x.m0, x.rows, x.n0, N);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / WN, wn = warp % WN, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int j = 0; j < NJ; j++)
                rows_put(C, x, N, x.m0 + wm * 64 + i * 16 + g + 8 * h, x.n0 + wn * 8 * NJ + j * 8 + 2 * q,
                         acc[i][j][2 * h], acc[i][j][2 * h + 1], beta);
}

/* Weight gradient over row chunks: unit u is chunk u - first[e] of expert e (at most
 * WG_CHUNK rows, so no block runs much longer than the others however unbalanced the
 * routing). An expert of one chunk adds its tile to dW directly; the chunks of a larger
 * expert write their partial tiles to ws[u] and k_gg_wgrad_sum adds them up in chunk
 * order. The A operand is A_e transposed (element (m, r) at A[r*K + m]) and B is dC_e
 * (element (r, n) at dC[r*N + n]); both are outer-contiguous. */

template <typename T>
__global__ static void __launch_bounds__(gg_cfg<T>::threads, 2) k_gg_wgrad(float *dW, float *ws, const T *A,
                                                           const T *dC, const gg_table t, int K, int N)
{
    extern __shared__ __align__(16) bf16 smem[];
    const gg_tile x = wgrad_tile(t, K, N);
    constexpr int NJ = gg_cfg<T>::NJ, WN = gg_cfg<T>::WN;
    float acc[4][NJ][4];
    if constexpr (sizeof(T) == 4) {
        tile_product<false, false>(acc, smem, A + (size_t)x.r0 * K, K, x.m0, K, dC + (size_t)x.r0 * N, N,
                                   x.n0, N, x.rows);
    } else {
        const gg_src s1 = {A + (size_t)x.r0 * K, dC + (size_t)x.r0 * N, K, N, x.rows};
        const gg_src s2 = {A, dC, K, N, 0};
        tile_product<false, false>(acc, smem, s1, s2, x.m0, K, x.n0, N);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / WN, wn = warp % WN, g = lane >> 2, q = lane & 3;
    float *out = wgrad_out(dW, ws, x, K, N);
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = x.m0 + wm * 64 + i * 16 + g + 8 * h;
            if (row >= K) continue; /* hoisted: without it this kernel spills */
#pragma unroll
            for (int j = 0; j < NJ; j++)
                wgrad_put(out, x.chunks == 1, K, N, row, x.n0 + wn * 8 * NJ + j * 8 + 2 * q, acc[i][j][2 * h],
                          acc[i][j][2 * h + 1]);
        }
}

/* dW[e] += ws[first[e]] + ws[first[e] + 1] + ... for experts of more than one chunk. */
__global__ static void k_gg_wgrad_sum(float *dW, const float *ws, const gg_table t, size_t KN)
{
    const int e = blockIdx.y;
    const int c0 = t.first[e], chunks = t.first[e + 1] - c0;
    if (chunks < 2) return;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < KN; i += (size_t)gridDim.x * blockDim.x) {
        float s = dW[(size_t)e * KN + i];
        for (int c = 0; c < chunks; c++) s += ws[(size_t)(c0 + c) * KN + i];
        dW[(size_t)e * KN + i] = s;
    }
}

/* ------------------------------------------------------------------ wgmma (sm_90a)
 *
 * The same products on Hopper's warpgroup MMA: two warpgroups of 64 rows each multiply
 * straight out of shared memory (mk_wgmma.h), so no fragment passes through registers and
 * a warpgroup issues one instruction per 64 x 128 x 16 product where mma.sync needed a
 * warp instruction per 16 x 8 x 16 plus its ldmatrix loads. Operands are copied with
 * cp.async into 128-byte-swizzled tiles in their memory layout (k-major lines of 64 k, or
 * mn-major lines of 64 rows or columns), three steps of 64 in flight, two blocks per SM
 * (one block's loads and epilogue overlap the other's products); a warpgroup waits for its
 * products before the barrier that lets the block refill that stage. Tiles are numbered
 * like the mma.sync kernels' and the weight gradient uses the same row chunks and
 * partial-sum workspace. (Tried on an H200 and dropped: 128 x 256 tiles with m64n256k16,
 * four stages, one block per SM and one step of products kept in flight -- the same
 * speed, 10% slower for the weight gradient.) */
#define WBK 64  /* reduction step: one 128-byte line of bf16 */
#define WNT 256 /* two warpgroups */

#define WSTAGES 3
#define WA_ELEMS (BM * WBK)     /* A's part of a stage; B's (128 columns) follows */
#define WSTAGE (2 * BM * WBK)
#define WSMEM (WSTAGES * WSTAGE * (int)sizeof(bf16) + 1024) /* + room to align to the atom */

/* One operand's step into a swizzled tile: OUTER (rows or columns) x 64 k as chunks of 8
 * elements. KC: OUTER lines of 64 k; otherwise slabs of 64 k lines (8192 bytes apart),
 * each line 64 consecutive outer indices. Chunks past a bound are zero-filled (olim and
 * klim are multiples of 8, so a chunk is wholly in or out). */
template <bool KC, int OUTER>
__device__ __forceinline__ void wg_issue(bf16 *tile, const bf16 *P, int ld, int o0, int olim, int k0,
                                         int klim)
{
    constexpr int per_line = OUTER / 8; /* mn-major chunks per k */
#pragma unroll
    for (int j = 0; j < OUTER * WBK / 8 / WNT; j++) {
        const int c = threadIdx.x + j * WNT;
        int o, k, so;
        if (KC) o = c >> 3, k = (c & 7) * 8, so = mk_sw128(o, c & 7);
        else k = c / per_line, o = (c % per_line) * 8, so = mk_sw128((o >> 6) * WBK + k, (o >> 3) & 7);
        o += o0, k += k0;
        const int ok = o < olim && k < klim;
        const bf16 *src = ok ? P + (KC ? (size_t)o * ld + k : (size_t)k * ld + o) : P;
        mk_cp_async16(tile + so, src, ok ? 16 : 0);
    }
}

template <bool A_KC, bool B_KC>
__device__ __forceinline__ void wg_issue_src(bf16 *st, const gg_src &s, int m0, int mlim, int n0, int nlim,
                                             int k0)
{
    wg_issue<A_KC, BM>(st, s.A, s.lda, m0, mlim, k0, s.klim);
    wg_issue<B_KC, BM>(st + WA_ELEMS, s.B, s.ldb, n0, nlim, k0, s.klim);
}

/* Step i of the reduction (s1's steps, then s2's) into stage buffer st. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void wg_issue_step(bf16 *st, int i, int nk1, const gg_src &s1, const gg_src &s2,
                                              int m0, int mlim, int n0, int nlim)
{
    if (i < nk1) wg_issue_src<A_KC, B_KC>(st, s1, m0, mlim, n0, nlim, i * WBK);
    else wg_issue_src<A_KC, B_KC>(st, s2, m0, mlim, n0, nlim, (i - nk1) * WBK);
}

/* Descriptor of k16 step kk of a staged tile: k-major lines advance 32 bytes, mn-major
 * ones 16 lines; mn-major slabs of 64 are 64 lines apart. */
template <bool KC> __device__ __forceinline__ uint64_t wg_desc(const bf16 *tile, int kk)
{
    return KC ? mk_wgmma_desc(tile + kk * 16, 16, 1024) : mk_wgmma_desc(tile + kk * 16 * 64, WBK * 128, 1024);
}

#ifdef MK_HAVE_WGMMA
/* This warpgroup's products of one staged step (four k16 instructions), committed as a group. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void wg_products(float acc[64], const bf16 *st)
{
    const bf16 *Aw = st + (threadIdx.x >> 7) * 64 * WBK; /* its 64 rows: 64 lines in, either layout */
    const bf16 *Bs = st + WA_ELEMS;
    mk_wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < WBK / 16; kk++)
        mk_wgmma_m64n128k16<A_KC ? 0 : 1, B_KC ? 0 : 1>(acc, wg_desc<A_KC>(Aw, kk), wg_desc<B_KC>(Bs, kk));
    mk_wgmma_commit();
}
#endif

/* acc = this warpgroup's 64 x 128 of the block's tile, C = A1 B1 + A2 B2 as tile_product. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void wg_tile_product(float acc[64], bf16 *smem, const gg_src &s1, const gg_src &s2,
                                                int m0, int mlim, int n0, int nlim)
{
#ifdef MK_HAVE_WGMMA
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;
    const int nk1 = (s1.klim + WBK - 1) / WBK, nk = nk1 + (s2.klim + WBK - 1) / WBK;
#pragma unroll
    for (int st = 0; st < WSTAGES - 1; st++) {
        if (st < nk) wg_issue_step<A_KC, B_KC>(smem + st * WSTAGE, st, nk1, s1, s2, m0, mlim, n0, nlim);
        mk_cp_async_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        /* step kt has landed for every thread, and every warpgroup is done with the stage
         * the next issue refills (its products were waited for in the last iteration) */
        mk_cp_async_wait<WSTAGES - 2>();
        mk_fence_proxy_async();
        __syncthreads();
        const int nxt = kt + WSTAGES - 1;
        if (nxt < nk)
            wg_issue_step<A_KC, B_KC>(smem + (nxt % WSTAGES) * WSTAGE, nxt, nk1, s1, s2, m0, mlim, n0, nlim);
        mk_cp_async_commit();
        wg_products<A_KC, B_KC>(acc, smem + (kt % WSTAGES) * WSTAGE);
        mk_wgmma_wait<0>();
    }
    mk_cp_async_wait<0>();
#else
    (void)acc, (void)smem, (void)s1, (void)s2, (void)m0, (void)mlim, (void)n0, (void)nlim;
#endif
}

/* Dynamic shared memory rounded up to the 1024-byte swizzle atom. */
__device__ __forceinline__ bf16 *wg_smem(unsigned char *raw)
{
    return (bf16 *)(((uintptr_t)raw + 1023) & ~(uintptr_t)1023);
}

/* Accumulator d[4 j + 2 h + c] of this thread is row 16 w + g + 8 h of its warpgroup's 64,
 * column 8 j + 2 q + c (mk_wgmma.h). */
template <typename TC, bool B_KC>
__global__ static void __launch_bounds__(WNT, 2)
    k_wg_rows(TC *C, const bf16 *A, const bf16 *W, const bf16 *A2, const bf16 *W2, int K2, const gg_table t,
              int K, int N, float beta)
{
#ifdef MK_HAVE_WGMMA
    extern __shared__ unsigned char wg_raw[];
    bf16 *smem = wg_smem(wg_raw);
    const gg_tile x = rows_tile(t, N);
    gg_src s1, s2;
    rows_srcs<B_KC>(&s1, &s2, x, A, W, A2, W2, K2, K, N);
    float acc[64];
    wg_tile_product<true, B_KC>(acc, smem, s1, s2, x.m0, x.rows, x.n0, N);
    const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7;
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int j = 0; j < 16; j++)
            rows_put(C, x, N, x.m0 + wg * 64 + w * 16 + g + 8 * h, x.n0 + j * 8 + 2 * q, acc[4 * j + 2 * h],
                     acc[4 * j + 2 * h + 1], beta);
#else
    (void)C, (void)A, (void)W, (void)A2, (void)W2, (void)K2, (void)t, (void)K, (void)N, (void)beta;
#endif
}

/* The weight gradient's chunks as k_gg_wgrad, on wgmma: both operands mn-major. */
__global__ static void __launch_bounds__(WNT, 2)
    k_wg_wgrad(float *dW, float *ws, const bf16 *A, const bf16 *dC, const gg_table t, int K, int N)
{
#ifdef MK_HAVE_WGMMA
    extern __shared__ unsigned char wg_raw[];
    bf16 *smem = wg_smem(wg_raw);
    const gg_tile x = wgrad_tile(t, K, N);
    const gg_src s1 = {A + (size_t)x.r0 * K, dC + (size_t)x.r0 * N, K, N, x.rows};
    const gg_src s2 = {A, dC, K, N, 0};
    float acc[64];
    wg_tile_product<false, false>(acc, smem, s1, s2, x.m0, K, x.n0, N);
    const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7;
    const int g = lane >> 2, q = lane & 3;
    float *out = wgrad_out(dW, ws, x, K, N);
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int j = 0; j < 16; j++)
            wgrad_put(out, x.chunks == 1, K, N, x.m0 + wg * 64 + w * 16 + g + 8 * h, x.n0 + j * 8 + 2 * q,
                      acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
#else
    (void)dW, (void)ws, (void)A, (void)dC, (void)t, (void)K, (void)N;
#endif
}

/* 1 in the sm_90a pass, where the kernels above are real. */
__global__ static void k_wgmma_probe(int *out)
{
#ifdef MK_HAVE_WGMMA
    *out = 1;
#else
    *out = 0;
#endif
}

int mk_grouped_gemm_wgmma_available(void)
{
    int dev = 0, major = 0, minor = 0, have = 0, *d = NULL;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return 0;
    if (major != 9 || minor != 0 || cudaMalloc(&d, sizeof *d) != cudaSuccess) return 0;
    k_wgmma_probe<<<1, 1>>>(d);
    if (cudaMemcpy(&have, d, sizeof have, cudaMemcpyDeviceToHost) != cudaSuccess) have = 0;
    cudaFree(d);
    return have == 1;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

int mk_grouped_gemm_supported(int E, int K, int N, const void *p1, const void *p2, const void *p3)
{
    return E >= 1 && E <= MK_GG_MAX_EXPERTS && K > 0 && N > 0 && K % 4 == 0 && N % 4 == 0 &&
           aligned16(p1) && aligned16(p2) && aligned16(p3);
}

int mk_grouped_gemm_bf16_supported(int E, int K, int N)
{
    return E >= 1 && E <= MK_GG_MAX_EXPERTS && K > 0 && N > 0 && K % 8 == 0 && N % 8 == 0;
}

static int table_offs(gg_table *t, const char *what, const int *offs_host, int E)
{
    if (E < 1 || E > MK_GG_MAX_EXPERTS)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: %d experts (1..%d)", what, E, MK_GG_MAX_EXPERTS);
    t->E = E;
    for (int e = 0; e <= E; e++) {
        if (offs_host[e] < 0 || (e > 0 && offs_host[e] < offs_host[e - 1]))
            return MK_FAIL(MK_ERR_INTERNAL, "%s: offsets not sorted at expert %d", what, e);
        t->offs[e] = offs_host[e];
    }
    return MK_OK;
}

static int launched(const char *what)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: %s", what, cudaGetErrorString(err));
    return MK_OK;
}

/* Kernels above 48 KiB of shared memory must say so before their launch. */
template <typename K> static int smem_attr(K kernel, int bytes, const char *what)
{
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess) return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: shared memory: %s", what, cudaGetErrorString(err));
    return MK_OK;
}

template <typename T, typename TC>
static int rows_launch(TC *C, const T *A, const T *W, const T *A2, const T *W2, int K2,
                       const int *offs_host, int E, int K, int N, int trans_w, float beta,
                       int wg, const char *what)
{
    gg_table t;
    MK_CHECK(table_offs(&t, what, offs_host, E));
    const long nt = (N + BM - 1) / BM;
    long blocks = 0;
    for (int e = 0; e < E; e++) {
        t.first[e] = (int)blocks;
        blocks += (long)(offs_host[e + 1] - offs_host[e] + BM - 1) / BM * nt;
        if (blocks > 0x7fffffffL) return MK_FAIL(MK_ERR_INTERNAL, "%s: %ld blocks", what, blocks);
    }
    t.first[E] = (int)blocks;
    if (blocks == 0) return MK_OK;
    if constexpr (sizeof(T) == 2) {
        if (wg) {
            if (trans_w) {
                MK_CHECK(smem_attr(k_wg_rows<TC, true>, WSMEM, what));
                k_wg_rows<TC, true><<<(unsigned)blocks, WNT, WSMEM>>>(C, A, W, A2, W2, K2, t, K, N, beta);
            } else {
                MK_CHECK(smem_attr(k_wg_rows<TC, false>, WSMEM, what));
                k_wg_rows<TC, false><<<(unsigned)blocks, WNT, WSMEM>>>(C, A, W, A2, W2, K2, t, K, N, beta);
            }
            return launched(what);
        }
    }
    const int smem = sizeof(T) == 4 ? SMEM_F32 : SMEM_BF16;
    if (trans_w) {
        MK_CHECK(smem_attr(k_gg_rows<T, TC, true>, smem, what));
        k_gg_rows<T, TC, true><<<(unsigned)blocks, gg_cfg<T>::threads, smem>>>(C, A, W, A2, W2, K2, t, K, N, beta);
    } else {
        MK_CHECK(smem_attr(k_gg_rows<T, TC, false>, smem, what));
        k_gg_rows<T, TC, false><<<(unsigned)blocks, gg_cfg<T>::threads, smem>>>(C, A, W, A2, W2, K2, t, K, N, beta);
    }
    return launched(what);
}

size_t mk_grouped_gemm_wgrad_ws_floats(const int *offs_host, int E, int K, int N)
{
    /* one slot per chunk (slots are indexed by chunk number), needed when any expert splits */
    size_t units = 0;
    int split = 0;
    for (int e = 0; e < E; e++) {
        const size_t chunks = (size_t)(offs_host[e + 1] - offs_host[e] + WG_CHUNK - 1) / WG_CHUNK;
        split |= chunks > 1;
        units += chunks;
    }
    return split ? units * (size_t)K * N : 0;
}

template <typename T>
static int wgrad_launch(float *dW, float *ws, size_t ws_floats, const T *A, const T *dC,
                        const int *offs_host, int E, int K, int N, int wg, const char *what)
{
    gg_table t;
    MK_CHECK(table_offs(&t, what, offs_host, E));
    long units = 0;
    int split = 0;
    for (int e = 0; e < E; e++) {
        t.first[e] = (int)units;
        const long chunks = (offs_host[e + 1] - offs_host[e] + WG_CHUNK - 1) / WG_CHUNK;
        split |= chunks > 1;
        units += chunks;
    }
    t.first[E] = (int)units;
    if (units == 0) return MK_OK;
    if (split && ws_floats < (size_t)units * K * N)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: workspace of %zu floats too small", what, ws_floats);
    const long tiles = (long)((K + BM - 1) / BM) * ((N + BM - 1) / BM);
    if (tiles * units > 0x7fffffffL) return MK_FAIL(MK_ERR_INTERNAL, "%s: %ld blocks", what, tiles * units);
    const int smem = sizeof(T) == 4 ? SMEM_F32 : SMEM_BF16;
    if constexpr (sizeof(T) == 2) {
        if (wg) {
            MK_CHECK(smem_attr(k_wg_wgrad, WSMEM, what));
            k_wg_wgrad<<<(unsigned)(tiles * units), WNT, WSMEM>>>(dW, ws, A, dC, t, K, N);
        }
    }
    if (wg == MK_GG_MMA || sizeof(T) == 4) {
        MK_CHECK(smem_attr(k_gg_wgrad<T>, smem, what));
        k_gg_wgrad<T><<<(unsigned)(tiles * units), gg_cfg<T>::threads, smem>>>(dW, ws, A, dC, t, K, N);
    }
    MK_CHECK(launched(what));
    if (!split) return MK_OK;
    const size_t KN = (size_t)K * N;
    size_t bx = (KN + 255) / 256;
    if (bx > 4096) bx = 4096;
    k_gg_wgrad_sum<<<dim3((unsigned)bx, (unsigned)E), 256>>>(dW, ws, t, KN);
    return launched(what);
}

int mk_grouped_gemm_rows(float *C, const float *A, const float *W, const int *offs_host, int E,
                         int K, int N, int trans_w, float beta)
{
    return rows_launch<float, float>(C, A, W, NULL, NULL, 0, offs_host, E, K, N, trans_w, beta, 0,
                                     "grouped_matmul");
}

int mk_grouped_gemm_wgrad(float *dW, float *ws, size_t ws_floats, const float *A, const float *dC,
                          const int *offs_host, int E, int K, int N)
{
    return wgrad_launch<float>(dW, ws, ws_floats, A, dC, offs_host, E, K, N, 0, "grouped_matmul_wgrad");
}

int mk_grouped_gemm_rows_bf16(mk_gg_kernel kern, void *C, int c_bf16, const void *A, const void *W, const void *A2,
                              const void *W2, int K2, const int *offs_host, int E, int K, int N,
                              int trans_w, float beta)
{
    if (c_bf16 && beta != 0.f)
        return MK_FAIL(MK_ERR_INTERNAL, "grouped GEMM: a bf16 output cannot accumulate (beta %g)", beta);
    if ((A2 == NULL) != (W2 == NULL) || (A2 && (K2 <= 0 || K2 % 8)))
        return MK_FAIL(MK_ERR_INTERNAL, "grouped GEMM: second source of %d columns", K2);
    if (!A2) K2 = 0;
    const int wg = kern;
    const bf16 *a = (const bf16 *)A, *w = (const bf16 *)W, *a2 = (const bf16 *)A2, *w2 = (const bf16 *)W2;
    if (c_bf16)
        return rows_launch<bf16, bf16>((bf16 *)C, a, w, a2, w2, K2, offs_host, E, K, N, trans_w, 0.f, wg,
                                       "grouped GEMM (bf16)");
    return rows_launch<bf16, float>((float *)C, a, w, a2, w2, K2, offs_host, E, K, N, trans_w, beta, wg,
                                    "grouped GEMM (bf16)");
}

int mk_grouped_gemm_wgrad_bf16(mk_gg_kernel kern, float *dW, float *ws, size_t ws_floats, const void *A, const void *dC,
                               const int *offs_host, int E, int K, int N)
{
    return wgrad_launch<bf16>(dW, ws, ws_floats, (const bf16 *)A, (const bf16 *)dC, offs_host, E, K,
                              N, kern, "grouped weight gradient (bf16)");
}
