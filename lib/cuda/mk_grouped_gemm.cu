/* mk_grouped_gemm.cu - expert GEMMs on bf16 tensor cores in one launch: see mk_grouped_gemm.h.
 *
 * A block computes a 128 x 128 tile of one expert's output with 8 warps (2 x 4, each
 * 64 x 32) and mma.sync m16n8k16 (bf16 in, fp32 accumulate). The reduction runs in steps
 * of 32: each thread loads its share of the next step's fp32 operands into registers while
 * the warps multiply the current step out of shared memory, then rounds them to bf16 into
 * the other of two shared buffers. Operands are staged in their memory layout -- k
 * contiguous ([outer][k]) or outer contiguous ([k][outer]) -- and ldmatrix (.trans for the
 * second) turns either into mma fragments, so no form needs a transposing copy. Rows of
 * shared tiles are padded by 8 elements, which puts the 8 row addresses of every ldmatrix
 * phase on 8 different bank groups.
 *
 * The forward forms (C = A W_e or A W_e^T) give every expert ceil(rows / 128) x ceil(N / 128)
 * blocks, numbered expert by expert; a block finds its expert by binary search in the
 * table of first blocks, which travels as a kernel argument (no upload). The weight
 * gradient reduces over an expert's rows inside one block, so experts are scheduled
 * largest first: the longest blocks start in the first wave instead of trailing the last.
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

#define BM 128          /* tile rows (m) and columns (n): the two outer extents are equal */
#define BK 32           /* reduction step */
#define NT 256          /* threads: 8 warps */
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

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

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
        w.x = pack2(r[j].x, r[j].y);
        w.y = pack2(r[j].z, r[j].w);
        if (KC) *(uint2 *)(tile + (c >> 3) * LDK + (c & 7) * 4) = w;
        else *(uint2 *)(tile + (c >> 5) * LDO + (c & 31) * 4) = w;
    }
}

/* acc (the warp's 64 x 32) += the step's A (128 x 32) times B (32 x 128). Fragment layouts
 * of m16n8k16: A's four 8 x 8 pieces are (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15),
 * (m 8-15, k 8-15); B's two are k 0-7 and k 8-15 of 8 columns. Lanes 8q..8q+7 give the row
 * addresses of piece q. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void mma_step(float acc[4][4][4], const bf16 *As, const bf16 *Bs, int wm,
                                         int wn, int lane)
{
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        uint32_t a[4][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int mb = wm * 64 + i * 16;
            if (A_KC) ldsm_x4(a[i], As + (mb + (lane & 15)) * LDK + kk + (lane >> 4) * 8);
            else ldsm_x4_t(a[i], As + (kk + (lane & 7) + (lane >> 4) * 8) * LDO + mb + ((lane >> 3) & 1) * 8);
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int nb = wn * 32 + j * 16;
            uint32_t r[4];
            if (B_KC) ldsm_x4(r, Bs + (nb + (lane & 7) + (lane >> 4) * 8) * LDK + kk + ((lane >> 3) & 1) * 8);
            else ldsm_x4_t(r, Bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * LDO + nb + (lane >> 4) * 8);
            b[2 * j][0] = r[0], b[2 * j][1] = r[1];
            b[2 * j + 1][0] = r[2], b[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
    }
}

/* The block's tile: acc = A[m0.., :klim] B[:klim, n0..] in steps of BK, in order. */
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void tile_product(float acc[4][4][4], bf16 *smem, const float *A, int lda,
                                             int m0, int mlim, const float *B, int ldb, int n0,
                                             int nlim, int klim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 2, wn = warp & 3;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
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
        mma_step<A_KC, B_KC>(acc, use, use + TILE, wm, wn, lane);
        if (more) {
            store_step<A_KC>(fill, ra);
            store_step<B_KC>(fill + TILE, rb);
        }
        __syncthreads();
    }
}

/* Accumulator (i, j, h) of this lane sits at row wm*64 + i*16 + g + 8*(h/2), columns
 * wn*32 + j*8 + 2q + {0, 1} of the tile, g = lane / 4, q = lane % 4. */
template <bool B_KC>
__global__ static void __launch_bounds__(NT, 2) k_gg_rows(float *C, const float *A, const float *W,
                                                       const gg_table t, int K, int N, float beta)
{
    __shared__ __align__(16) bf16 smem[4 * TILE];
    const int b = blockIdx.x;
    int lo = 0, hi = t.E; /* first[lo] <= b < first[hi]; ends at the expert with rows */
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (t.first[mid] <= b) lo = mid;
        else hi = mid;
    }
    const int e = lo, nt = (N + BM - 1) / BM, local = b - t.first[e];
    const int m0 = (local / nt) * BM, n0 = (local % nt) * BM;
    const int r0 = t.offs[e], rows = t.offs[e + 1] - r0;
    float acc[4][4][4];
    tile_product<true, B_KC>(acc, smem, A + (size_t)r0 * K, K, m0, rows, W + (size_t)e * K * N,
                             B_KC ? K : N, n0, N, K);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + wm * 64 + i * 16 + g + 8 * h;
            if (row >= rows) continue;
            float *Crow = C + (size_t)(r0 + row) * N;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int col = n0 + wn * 32 + j * 8 + 2 * q;
                if (col >= N) continue;
                float2 v = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                if (beta != 0.f) {
                    const float2 old = *(const float2 *)(Crow + col);
                    v.x += beta * old.x, v.y += beta * old.y;
                }
                *(float2 *)(Crow + col) = v;
            }
        }
}

/* dW[e] += A_e^T dC_e: the A operand is A_e transposed (element (m, r) at A[r*K + m]) and
 * B is dC_e (element (r, n) at dC[r*N + n]); both are outer-contiguous. */
__global__ static void __launch_bounds__(NT, 2) k_gg_wgrad(float *dW, const float *A, const float *dC,
                                                        const gg_table t, int K, int N)
{
    __shared__ __align__(16) bf16 smem[4 * TILE];
    const int nt = (N + BM - 1) / BM, tiles = ((K + BM - 1) / BM) * nt;
    const int e = t.first[blockIdx.x / tiles], local = blockIdx.x % tiles;
    const int m0 = (local / nt) * BM, n0 = (local % nt) * BM;
    const int r0 = t.offs[e], rows = t.offs[e + 1] - r0;
    float acc[4][4][4];
    tile_product<false, false>(acc, smem, A + (size_t)r0 * K, K, m0, K, dC + (size_t)r0 * N, N, n0,
                               N, rows);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, q = lane & 3;
    float *dWe = dW + (size_t)e * K * N;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + wm * 64 + i * 16 + g + 8 * h;
            if (row >= K) continue;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int col = n0 + wn * 32 + j * 8 + 2 * q;
                if (col >= N) continue;
                float2 *p = (float2 *)(dWe + (size_t)row * N + col);
                float2 v = *p;
                v.x += acc[i][j][2 * h], v.y += acc[i][j][2 * h + 1];
                *p = v;
            }
        }
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

int mk_grouped_gemm_rows(float *C, const float *A, const float *W, const int *offs_host, int E,
                         int K, int N, int trans_w, float beta)
{
    gg_table t;
    MK_CHECK(table_offs(&t, "grouped_matmul", offs_host, E));
    const long nt = (N + BM - 1) / BM;
    long blocks = 0;
    for (int e = 0; e < E; e++) {
        t.first[e] = (int)blocks;
        blocks += (long)(offs_host[e + 1] - offs_host[e] + BM - 1) / BM * nt;
        if (blocks > 0x7fffffffL)
            return MK_FAIL(MK_ERR_INTERNAL, "grouped_matmul: %ld blocks", blocks);
    }
    t.first[E] = (int)blocks;
    if (blocks == 0) return MK_OK;
    if (trans_w) k_gg_rows<true><<<(unsigned)blocks, NT>>>(C, A, W, t, K, N, beta);
    else k_gg_rows<false><<<(unsigned)blocks, NT>>>(C, A, W, t, K, N, beta);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: grouped_matmul: %s", cudaGetErrorString(err));
    return MK_OK;
}

int mk_grouped_gemm_wgrad(float *dW, const float *A, const float *dC, const int *offs_host, int E,
                          int K, int N)
{
    gg_table t;
    MK_CHECK(table_offs(&t, "grouped_matmul_wgrad", offs_host, E));
    int n = 0;
    for (int e = 0; e < E; e++) {
        const int rows = offs_host[e + 1] - offs_host[e];
        if (rows == 0) continue;
        /* insertion by rows descending, ties by expert: a fixed schedule for fixed offsets */
        int i = n++;
        while (i > 0 && offs_host[t.first[i - 1] + 1] - offs_host[t.first[i - 1]] < rows) {
            t.first[i] = t.first[i - 1];
            i--;
        }
        t.first[i] = e;
    }
    if (n == 0) return MK_OK;
    const long tiles = (long)((K + BM - 1) / BM) * ((N + BM - 1) / BM);
    if (tiles * n > 0x7fffffffL)
        return MK_FAIL(MK_ERR_INTERNAL, "grouped_matmul_wgrad: %ld blocks", tiles * n);
    k_gg_wgrad<<<(unsigned)(tiles * n), NT>>>(dW, A, dC, t, K, N);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return MK_FAIL(MK_ERR_INTERNAL, "cuda: grouped_matmul_wgrad: %s", cudaGetErrorString(err));
    return MK_OK;
}
