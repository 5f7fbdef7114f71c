/* mk_flash_attn.cu - fused causal attention on bf16 tensor cores: see mk_flash_attn.h.
 *
 * Every kernel runs 4 warps over a block of 64 rows (queries, or keys in the dK/dV pass);
 * each warp owns 16 of them and multiplies with mma.sync m16n8k16 (bf16 in, fp32
 * accumulate). The accumulator fragment of one product has the register layout of the A
 * operand of the next (rows g and g + 8 of the warp's 16, column pairs 2q and 2q + 1 with
 * g = lane / 4, q = lane % 4), so probabilities go from the score product to the value
 * product without leaving registers, and a row's statistics reduce over the 4 lanes that
 * share it.
 *
 * The forward rounds Q, K and V to bf16 once (kept in its state for the backward), and
 * the backward rounds dO once; the tiles streamed by the inner loops are then copied with
 * cp.async into two alternating shared buffers, the next tile landing while this one is
 * multiplied. Tiles stay in their memory layout ([row][head dim], rows padded to 72
 * elements so that the 8 row addresses of an ldmatrix phase fall on different banks), and
 * ldmatrix -- transposing where the tile is the B operand's k-major side -- turns them
 * into fragments, so no product needs a transposed copy. Blocks start with the longest
 * causal loops, so the short ones fill the last wave.
 *
 * On Hopper the bf16 block path runs the same loops on warpgroup MMA instead (the wgmma
 * kernels below: operands straight from swizzled shared memory, no ldmatrix), sharing the
 * softmax, masking and store helpers with the mma.sync kernels.
 *
 * No atomics and fixed loop orders: the same inputs give the same bits.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "mk_error.h"
}
#include "mk_bf16.h"
#include "mk_cuda_check.h"
#include "mk_flash_attn.h"
#include "mk_mma.h"
#include "mk_wgmma.h"
#include "mk_pdl.h"

#define HD MK_FLASH_HD
#define BR 64            /* rows per block (queries, or keys in the dK/dV pass) */
#define BC 64            /* columns per step of the inner loop */
#define NT 128           /* threads per block: 4 warps of 16 rows */
#define LDS 72           /* padded shared-memory row, in bf16 elements */
#define TILE (BC * LDS)  /* elements of one staged tile */
#define LOG2E 1.4426950408889634

typedef __nv_bfloat16 bf16;

/* The pair at row t, columns c and c + 1 of a bf16 matrix as one word, 0 past the last row. */
__device__ __forceinline__ uint32_t ldg_pair(const bf16 *base, size_t ld, int t, int c, int T)
{
    if (t >= T) return 0;
    return *(const uint32_t *)(base + (size_t)t * ld + c);
}

/* A operand of the warp's 16 rows (r0 and r0 + 8 for this lane) over all HD columns. */
__device__ __forceinline__ void load_a_rows(uint32_t a[HD / 16][4], const bf16 *base, size_t ld,
                                            int r0, int T, int q)
{
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) {
        const int c = kc * 16 + 2 * q;
        a[kc][0] = ldg_pair(base, ld, r0, c, T);
        a[kc][1] = ldg_pair(base, ld, r0 + 8, c, T);
        a[kc][2] = ldg_pair(base, ld, r0, c + 8, T);
        a[kc][3] = ldg_pair(base, ld, r0 + 8, c + 8, T);
    }
}

/* Start copying 64 rows x HD columns of a bf16 matrix from row t0 into a shared tile;
 * rows past T are zero-filled by the copy. */
__device__ __forceinline__ void issue_tile(bf16 *tile, const bf16 *base, size_t ld, int t0, int T)
{
#pragma unroll
    for (int j = 0; j < BC * HD / 8 / NT; j++) {
        const int c = threadIdx.x + j * NT, r = c / (HD / 8), col = (c % (HD / 8)) * 8;
        const int ok = t0 + r < T;
        mk_cp_async16(tile + r * LDS + col, ok ? base + (size_t)(t0 + r) * ld + col : base, ok ? 16 : 0);
    }
}

/* acc[j] (16 rows x 8 columns each, 8 of them: 64 columns) += A(16 x HD) B where the tile
 * holds B^T row-major (row n = column n of B): the score product S = Q K^T and its kin. */
__device__ __forceinline__ void mma_rows_by_tile(float acc[BC / 8][4], const uint32_t a[HD / 16][4],
                                                 const bf16 *tile, int lane)
{
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++)
#pragma unroll
        for (int jj = 0; jj < BC / 16; jj++) {
            uint32_t r[4];
            mk_ldsm_x4(r, tile + (jj * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kc * 16 + ((lane >> 3) & 1) * 8);
            mk_mma16816(acc[2 * jj], a[kc], r[0], r[1]);
            mk_mma16816(acc[2 * jj + 1], a[kc], r[2], r[3]);
        }
}

/* The same with the A operand's 16 rows read from a shared tile (row r0 on), one 16-column
 * slice at a time: no registers hold A between calls. */
__device__ __forceinline__ void mma_tilerows_by_tile(float acc[BC / 8][4], const bf16 *atile, int r0,
                                                     const bf16 *tile, int lane)
{
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) {
        uint32_t a[4];
        mk_ldsm_x4(a, atile + (r0 + (lane & 15)) * LDS + kc * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int jj = 0; jj < BC / 16; jj++) {
            uint32_t r[4];
            mk_ldsm_x4(r, tile + (jj * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kc * 16 + ((lane >> 3) & 1) * 8);
            mk_mma16816(acc[2 * jj], a, r[0], r[1]);
            mk_mma16816(acc[2 * jj + 1], a, r[2], r[3]);
        }
    }
}

/* acc (16 rows x HD) += P(16 x BC, from accumulator fragments p) B where the tile holds B
 * row-major (row k = the k-th of the BC rows P multiplies): O += P V and its kin. */
__device__ __forceinline__ void mma_frags_by_tile(float acc[HD / 8][4], const float p[BC / 8][4],
                                                  const bf16 *tile, int lane)
{
#pragma unroll
    for (int kc = 0; kc < BC / 16; kc++) {
        uint32_t a[4];
        a[0] = mk_pack_bf16x2(p[2 * kc][0], p[2 * kc][1]);
        a[1] = mk_pack_bf16x2(p[2 * kc][2], p[2 * kc][3]);
        a[2] = mk_pack_bf16x2(p[2 * kc + 1][0], p[2 * kc + 1][1]);
        a[3] = mk_pack_bf16x2(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
        for (int jj = 0; jj < HD / 16; jj++) {
            uint32_t r[4];
            mk_ldsm_x4_t(r, tile + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + jj * 16 + (lane >> 4) * 8);
            mk_mma16816(acc[2 * jj], a, r[0], r[1]);
            mk_mma16816(acc[2 * jj + 1], a, r[2], r[3]);
        }
    }
}

__device__ __forceinline__ void zero_acc(float acc[8][4])
{
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

/* Block id -> (row block, b*H + h) with the longest causal loops first: query blocks from
 * the last (desc = 1, forward and dQ) or key blocks from the first (dK/dV). */
__device__ __forceinline__ void block_of(int *rb, int *bh, int nrb, int BH, int desc)
{
    const int i = (int)blockIdx.x / BH;
    *bh = (int)blockIdx.x % BH;
    *rb = desc ? nrb - 1 - i : i;
}

/* The running statistics of the forward's online softmax for this lane's two rows (r0 and
 * r1 = r0 + 8 of its warp's 16): max and partial sum, in base 2. */
typedef struct softmax_rows {
    float m0, m1, l0, l1;
} softmax_rows;

/* One key block kb of the forward's online softmax, on the score accumulator s (the m16n8
 * layout of mma.sync, which wgmma's 64-row accumulators repeat per warp): the diagonal
 * block (kb == qb; also the one that can run past T) masked, s turned into unnormalised
 * probabilities, o rescaled, the statistics updated. */
__device__ __forceinline__ void softmax_block(float s[BC / 8][4], float o[HD / 8][4], softmax_rows *st, int kb,
                                              int qb, int r0, int r1, int q, int T, float sl2)
{
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = s[j][e] * sl2;
            if (kb == qb) {
                const int key = kb * BC + 8 * j + 2 * q + (e & 1), row = e < 2 ? r0 : r1;
                if (key > row || key >= T) v = -INFINITY;
            }
            s[j][e] = v;
            if (e < 2) mx0 = fmaxf(mx0, v);
            else mx1 = fmaxf(mx1, v);
        }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* Key 0 is in every row's first block, so the maxima are finite from there on. */
    const float mn0 = fmaxf(st->m0, mx0), mn1 = fmaxf(st->m1, mx1);
    const float al0 = exp2f(st->m0 - mn0), al1 = exp2f(st->m1 - mn1);
    st->m0 = mn0, st->m1 = mn1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int j = 0; j < BC / 8; j++) {
        s[j][0] = exp2f(s[j][0] - mn0), s[j][1] = exp2f(s[j][1] - mn0);
        s[j][2] = exp2f(s[j][2] - mn1), s[j][3] = exp2f(s[j][3] - mn1);
        ps0 += s[j][0] + s[j][1];
        ps1 += s[j][2] + s[j][3];
    }
    /* Each lane keeps its partial row sum; the 4 lanes of a row share al0/al1, so the
     * partials are combined once after the loop. */
    st->l0 = st->l0 * al0 + ps0, st->l1 = st->l1 * al1 + ps1;
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        o[dj][0] *= al0, o[dj][1] *= al0;
        o[dj][2] *= al1, o[dj][3] *= al1;
    }
}

/* The forward's output rows r0 and r1 (bf16 to outb, or fp32 to out with the per-head copy
 * in ostore) and their log-sum-exp, from o and the statistics after the last block. */
template <bool BF16_OUT>
__device__ __forceinline__ void softmax_store(const float o[HD / 8][4], softmax_rows st, float *out, bf16 *outb,
                                              float *lse, float *ostore, int b, int h, int bh, int r0, int r1,
                                              int q, int T, int D)
{
    st.l0 += __shfl_xor_sync(0xffffffffu, st.l0, 1);
    st.l0 += __shfl_xor_sync(0xffffffffu, st.l0, 2);
    st.l1 += __shfl_xor_sync(0xffffffffu, st.l1, 1);
    st.l1 += __shfl_xor_sync(0xffffffffu, st.l1, 2);
    const float i0 = 1.f / st.l0, i1 = 1.f / st.l1;
    const size_t srow = (size_t)bh * T;
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (r0 < T) {
            const float2 v = make_float2(o[dj][0] * i0, o[dj][1] * i0);
            if (BF16_OUT) {
                *(__nv_bfloat162 *)(outb + ((size_t)b * T + r0) * D + h * HD + c) = __float22bfloat162_rn(v);
            } else {
                *(float2 *)(out + ((size_t)b * T + r0) * D + h * HD + c) = v;
                *(float2 *)(ostore + (srow + r0) * HD + c) = v;
            }
        }
        if (r1 < T) {
            const float2 v = make_float2(o[dj][2] * i1, o[dj][3] * i1);
            if (BF16_OUT) {
                *(__nv_bfloat162 *)(outb + ((size_t)b * T + r1) * D + h * HD + c) = __float22bfloat162_rn(v);
            } else {
                *(float2 *)(out + ((size_t)b * T + r1) * D + h * HD + c) = v;
                *(float2 *)(ostore + (srow + r1) * HD + c) = v;
            }
        }
    }
    if (q == 0) {
        if (r0 < T) lse[srow + r0] = st.m0 + log2f(st.l0);
        if (r1 < T) lse[srow + r1] = st.m1 + log2f(st.l1);
    }
}

/* dK/dV pass, query block qb against key block kb: p (S^T: rows are this lane's keys k0
 * and k1, columns queries) becomes P^T, with the queries' lse from sl (float2 pairs, this
 * lane's first); masked entries 0. */
__device__ __forceinline__ void kv_probs(float p[BC / 8][4], const float2 *sl, int qb, int kb, int k0, int k1, int q,
                                         int T, float sl2)
{
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int qt = qb * BC + 8 * j + 2 * q + (e & 1), key = e < 2 ? k0 : k1;
            const int masked = (qb == kb && key > qt) || qt >= T || key >= T;
            const float2 l = sl[4 * j];
            p[j][e] = masked ? 0.f : exp2f(p[j][e] * sl2 - ((e & 1) ? l.y : l.x));
        }
}

/* dS^T = P^T (dP^T - delta) over the columns' (queries') delta in sd, in place of dP^T. */
__device__ __forceinline__ void kv_dscores(float ds[BC / 8][4], const float p[BC / 8][4], const float2 *sd)
{
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 d = sd[4 * j];
            ds[j][e] = p[j][e] * (ds[j][e] - ((e & 1) ? d.y : d.x));
        }
}

/* dQ pass, key block kb against query block qb: p (S, rows r0 and r1) becomes P with the
 * rows' lse; masked entries 0. */
__device__ __forceinline__ void q_probs(float p[BC / 8][4], int kb, int qb, int r0, int r1, int q, int T, float sl2,
                                        float lse0, float lse1)
{
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = kb * BC + 8 * j + 2 * q + (e & 1), row = e < 2 ? r0 : r1;
            const int masked = (kb == qb && (key > row || key >= T)) || row >= T;
            p[j][e] = masked ? 0.f : exp2f(p[j][e] * sl2 - (e < 2 ? lse0 : lse1));
        }
}

/* dS = P (dP - delta) with the rows' delta, in place of dP. */
__device__ __forceinline__ void q_dscores(float ds[BC / 8][4], const float p[BC / 8][4], float d0, float d1)
{
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) ds[j][e] = p[j][e] * (ds[j][e] - (e < 2 ? d0 : d1));
}

/* Where the backward's gradients go: fp32 rows of [B*T, 3D] (f32), or bf16 rows (b16) with
 * dq and dk turned back by RoPE's inverse rotation (cs) first when cs is set: the bits of
 * the fp32 rows then k_qkv_rope_bf16, without the fp32 rows' round trip through memory. */
struct dqkv_dst {
    float *f32;
    bf16 *b16;
    const double *cs;
};

/* Two neighbouring gradient columns c, c + 1 of a head (an even c: one RoPE pair) at
 * element e of row pos of its sequence. */
__device__ __forceinline__ void put2(const dqkv_dst &o, size_t e, int pos, int c, float x, float y, bool rope)
{
    if (o.b16) {
        if (rope && o.cs) mk_rope_rotate(x, y, o.cs + (size_t)pos * HD + c, -1.0);
        *(__nv_bfloat162 *)(o.b16 + e) = __floats2bfloat162_rn(x, y);
    } else {
        *(float2 *)(o.f32 + e) = make_float2(x, y);
    }
}

/* dK (times scale) and dV of keys k0 and k1. */
__device__ __forceinline__ void store_dkdv(const dqkv_dst &o, const float dk[HD / 8][4], const float dv[HD / 8][4],
                                           int b, int h, int k0, int k1, int q, int T, int D, float scale)
{
    const size_t ld = 3 * (size_t)D;
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (k0 < T) {
            const size_t e = ((size_t)b * T + k0) * ld + h * HD + c;
            put2(o, e + D, k0, c, dk[dj][0] * scale, dk[dj][1] * scale, true);
            put2(o, e + 2 * D, k0, c, dv[dj][0], dv[dj][1], false);
        }
        if (k1 < T) {
            const size_t e = ((size_t)b * T + k1) * ld + h * HD + c;
            put2(o, e + D, k1, c, dk[dj][2] * scale, dk[dj][3] * scale, true);
            put2(o, e + 2 * D, k1, c, dv[dj][2], dv[dj][3], false);
        }
    }
}

/* dQ (times scale) of queries r0 and r1. */
__device__ __forceinline__ void store_dq(const dqkv_dst &o, const float dq[HD / 8][4], int b, int h, int r0, int r1,
                                         int q, int T, int D, float scale)
{
    const size_t ld = 3 * (size_t)D;
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (r0 < T)
            put2(o, ((size_t)b * T + r0) * ld + h * HD + c, r0, c, dq[dj][0] * scale, dq[dj][1] * scale, true);
        if (r1 < T)
            put2(o, ((size_t)b * T + r1) * ld + h * HD + c, r1, c, dq[dj][2] * scale, dq[dj][3] * scale, true);
    }
}

/* Forward: 1-D grid of (query blocks x B*H). sl2 = scale * log2(e): the softmax runs in
 * base 2, and lse is kept in that unit. */
template <bool BF16_OUT>
__global__ static void __launch_bounds__(NT) k_flash_fwd(float *out, bf16 *outb, float *lse, float *ostore,
                                                         const bf16 *qkv, int T, int D, int H,
                                                         int nqb, float sl2)
{
    MK_PDL_ENTRY();
    __shared__ __align__(16) bf16 Ks[2][TILE];
    __shared__ __align__(16) bf16 Vs[2][TILE];
    int qb, bh;
    block_of(&qb, &bh, nqb, (int)gridDim.x / nqb, 1);
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D;
    const bf16 *base = qkv + (size_t)b * T * ld + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    issue_tile(Ks[0], base + D, ld, 0, T);
    issue_tile(Vs[0], base + 2 * D, ld, 0, T);
    mk_cp_async_commit();
    uint32_t qa[HD / 16][4];
    load_a_rows(qa, base, ld, r0, T, q);
    float o[HD / 8][4];
    zero_acc(o);
    softmax_rows st = {-INFINITY, -INFINITY, 0.f, 0.f};

    /* BR == BC: the keys of blocks before qb are all at or before every row of this block,
     * so only the diagonal block (which is also the one that can run past T) is masked. */
    for (int kb = 0; kb <= qb; kb++) {
        if (kb < qb) {
            issue_tile(Ks[(kb + 1) & 1], base + D, ld, (kb + 1) * BC, T);
            issue_tile(Vs[(kb + 1) & 1], base + 2 * D, ld, (kb + 1) * BC, T);
        }
        mk_cp_async_commit();
        mk_cp_async_wait<1>();
        __syncthreads();
        float s[BC / 8][4];
        zero_acc(s);
        mma_rows_by_tile(s, qa, Ks[kb & 1], lane);
        softmax_block(s, o, &st, kb, qb, r0, r1, q, T, sl2);
        mma_frags_by_tile(o, s, Vs[kb & 1], lane);
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    softmax_store<BF16_OUT>(o, st, out, outb, lse, ostore, b, h, bh, r0, r1, q, T, D);
}

/* ------------------------------------------------------------------ the wgmma forward
 *
 * The bf16 forward on Hopper's warpgroup MMA: one warpgroup (the 4 warps) per block of 64
 * queries, the same loop and online softmax as k_flash_fwd, but the products read their
 * operands from shared memory themselves: S = Q K^T with Q and K K-major (a query's or
 * key's 64 head elements are one 128-byte line), O += P V with P from registers (the score
 * accumulator is the A fragment, as above) and V MN-major (a key's line holds the 64
 * output columns). No ldmatrix and no fragments of K or V in registers: mma.sync spent
 * half its issue slots on them and held the forward at 25% occupancy. Tiles use the
 * 128-byte swizzle of mk_wgmma.h (1024-byte aligned). */
#define WG_TILE (BC * HD)                 /* elements of one swizzled 64 x 64 tile */
#define WG_SMEM (5 * WG_TILE * 2 + 1024)  /* Q, two K and two V tiles, and alignment slack:
                                           * 41 KB, under the 48 KB that needs no opt-in */

/* Start copying 64 rows x HD columns from row t0 into a swizzled tile (zeros past T). */
__device__ __forceinline__ void issue_tile_sw(bf16 *tile, const bf16 *base, size_t ld, int t0, int T)
{
#pragma unroll
    for (int j = 0; j < BC * HD / 8 / NT; j++) {
        const int c = threadIdx.x + j * NT, r = c / (HD / 8), ch = c % (HD / 8);
        const int ok = t0 + r < T;
        mk_cp_async16(tile + mk_sw128(r, ch), ok ? base + (size_t)(t0 + r) * ld + ch * 8 : base, ok ? 16 : 0);
    }
}

__device__ __forceinline__ uint64_t kmaj(const bf16 *tile, int kc)
{
    return mk_wgmma_desc(tile + kc * 16, 16, 1024);
}

__device__ __forceinline__ uint64_t mnmaj(const bf16 *tile, int kc)
{
    return mk_wgmma_desc(tile + kc * 16 * HD, WG_TILE * 2, 1024);
}

/* The accumulator of a 64 x 64 product as the A fragments of the next (k over its 64
 * columns, 16 at a time). */
__device__ __forceinline__ void frags_of(uint32_t a[BC / 16][4], const float d[BC / 8][4])
{
#pragma unroll
    for (int kc = 0; kc < BC / 16; kc++) {
        a[kc][0] = mk_pack_bf16x2(d[2 * kc][0], d[2 * kc][1]);
        a[kc][1] = mk_pack_bf16x2(d[2 * kc][2], d[2 * kc][3]);
        a[kc][2] = mk_pack_bf16x2(d[2 * kc + 1][0], d[2 * kc + 1][1]);
        a[kc][3] = mk_pack_bf16x2(d[2 * kc + 1][2], d[2 * kc + 1][3]);
    }
}

/* 1024-byte aligned start of the dynamic shared memory. */
__device__ __forceinline__ bf16 *wg_smem(unsigned char *raw)
{
    return (bf16 *)(((uintptr_t)raw + 1023) & ~(uintptr_t)1023);
}

/* Key block kb's K and V tiles (buffers kb & 1 of Ks and Vs, whose copies the previous
 * call issued) ready for wgmma, and block kb + 1's copies issued into the other buffers
 * while it runs (none past the diagonal block qb). The forward's and dQ's loop head. */
__device__ __forceinline__ void wg_stream_kv(bf16 *Ks, bf16 *Vs, const bf16 *base, size_t ld, int D, int kb, int qb,
                                             int T)
{
#ifdef MK_HAVE_WGMMA
    if (kb < qb) {
        issue_tile_sw(Ks + ((kb + 1) & 1) * WG_TILE, base + D, ld, (kb + 1) * BC, T);
        issue_tile_sw(Vs + ((kb + 1) & 1) * WG_TILE, base + 2 * D, ld, (kb + 1) * BC, T);
    }
    mk_cp_async_commit();
    mk_cp_async_wait<1>();
    mk_fence_proxy_async();
    __syncthreads();
#endif
}

__global__ static void __launch_bounds__(NT) k_flash_fwd_wg(bf16 *outb, float *lse, const bf16 *qkv, int T, int D,
                                                            int H, int nqb, float sl2)
{
    MK_PDL_ENTRY();
#ifdef MK_HAVE_WGMMA
    extern __shared__ unsigned char wg_raw[];
    bf16 *sm = wg_smem(wg_raw);
    bf16 *Qs = sm, *Ks = sm + WG_TILE, *Vs = sm + 3 * WG_TILE; /* K and V: two tiles each */
    int qb, bh;
    block_of(&qb, &bh, nqb, (int)gridDim.x / nqb, 1);
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D;
    const bf16 *base = qkv + (size_t)b * T * ld + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    issue_tile_sw(Qs, base, ld, qb * BR, T);
    issue_tile_sw(Ks, base + D, ld, 0, T);
    issue_tile_sw(Vs, base + 2 * D, ld, 0, T);
    mk_cp_async_commit();
    float o[HD / 8][4];
    zero_acc(o);
    softmax_rows st = {-INFINITY, -INFINITY, 0.f, 0.f};

    for (int kb = 0; kb <= qb; kb++) {
        const bf16 *Kt = Ks + (kb & 1) * WG_TILE, *Vt = Vs + (kb & 1) * WG_TILE;
        wg_stream_kv(Ks, Vs, base, ld, D, kb, qb, T);
        float s[BC / 8][4];
        zero_acc(s);
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++)
            mk_wgmma_m64n64k16_ss(&s[0][0], kmaj(Qs, kc), kmaj(Kt, kc));
        mk_wgmma_commit();
        mk_wgmma_wait<0>();
        softmax_block(s, o, &st, kb, qb, r0, r1, q, T, sl2);
        uint32_t pa[BC / 16][4];
        frags_of(pa, s);
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < BC / 16; kc++)
            mk_wgmma_m64n64k16_rs_tb(&o[0][0], pa[kc], mnmaj(Vt, kc));
        mk_wgmma_commit();
        mk_wgmma_wait<0>();
        __syncthreads(); /* the products are done with this buffer before it is refilled */
    }
    softmax_store<true>(o, st, NULL, outb, lse, NULL, b, h, bh, r0, r1, q, T, D);
#endif
}

/* delta[bh, t] = sum_d dO[t, d] O[t, d] (one warp per row, a fixed shuffle tree), and dO
 * rounded to bf16 for the products. */
__global__ static void k_flash_delta(float *delta, bf16 *dob, const float *dout,
                                     const float *ostore, size_t rows, int T, int D, int H)
{
    MK_PDL_ENTRY();
    const size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= rows) return;
    const size_t bh = w / T, t = w % T, b = bh / H, h = bh % H;
    const size_t at = (b * T + t) * D + h * HD + 2 * lane;
    const float2 dO = *(const float2 *)(dout + at), O = *(const float2 *)(ostore + w * HD + 2 * lane);
    *(__nv_bfloat162 *)(dob + at) = __floats2bfloat162_rn(dO.x, dO.y);
    float acc = dO.x * O.x + dO.y * O.y;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[w] = acc;
}

/* The same from dO and O already in bf16 (the attention block's: its GEMM writes dO, its
 * forward wrote O, both rounded from the fp32 values the fp32 path rounds). */
__global__ static void k_flash_delta_bf16(float *delta, const bf16 *dob, const bf16 *ob, size_t rows, int T,
                                          int D, int H)
{
    MK_PDL_ENTRY();
    const size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= rows) return;
    const size_t bh = w / T, t = w % T, b = bh / H, h = bh % H;
    const size_t at = (b * T + t) * D + h * HD + 2 * lane;
    const float2 dO = __bfloat1622float2(*(const __nv_bfloat162 *)(dob + at));
    const float2 O = __bfloat1622float2(*(const __nv_bfloat162 *)(ob + at));
    float acc = dO.x * O.x + dO.y * O.y;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[w] = acc;
}

/* dK, dV: 1-D grid of (key blocks x B*H). The warp's 16 keys are the rows; the loop runs
 * over the query blocks at or after the key block (causal), with S^T = K Q^T recomputed
 * and P^T = exp2(S^T sl2 - lse). */
/* The lse and delta of query block qb (BC each, 0 past T) into shared memory, with the tiles'
 * copies: one element per thread. */
__device__ __forceinline__ void issue_rowstats(float *ls, float *ds, const float *lse, const float *delta,
                                               size_t srow, int qb, int T)
{
    const int i = threadIdx.x % BC, qt = qb * BC + i;
    const float *src = threadIdx.x < BC ? lse : delta;
    mk_cp_async4((threadIdx.x < BC ? ls : ds) + i, qt < T ? src + srow + qt : src, qt < T ? 4 : 0);
}

/* Three blocks per SM (168 registers): the query block's lse and delta come through shared
 * memory with its tiles, and V's rows are read from a shared tile, instead of living in
 * registers. */
__global__ static void __launch_bounds__(NT, 3) k_flash_bwd_dkdv(const dqkv_dst dqkv, const bf16 *qkv,
                                                                 const bf16 *dout, const float *lse,
                                                                 const float *delta, int T, int D,
                                                                 int H, int nqb, float sl2, float scale)
{
    MK_PDL_ENTRY();
    static_assert(NT == 2 * BC, "one thread per staged lse and delta element");
    __shared__ __align__(16) bf16 Qs[2][TILE];
    __shared__ __align__(16) bf16 Os[2][TILE];
    __shared__ __align__(16) float Ls[2][BC], Dl[2][BC];
    __shared__ __align__(16) bf16 Vs[TILE];
    int kb, bh;
    block_of(&kb, &bh, nqb, (int)gridDim.x / nqb, 0);
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const bf16 *qbase = qkv + (size_t)b * T * ld + h * HD;
    const bf16 *dobase = dout + (size_t)b * T * D + h * HD;
    const int k0 = kb * BR + warp * 16 + g, k1 = k0 + 8;

    issue_tile(Qs[0], qbase, ld, kb * BC, T);
    issue_tile(Os[0], dobase, D, kb * BC, T);
    issue_rowstats(Ls[0], Dl[0], lse, delta, srow, kb, T);
    issue_tile(Vs, qbase + 2 * D, ld, kb * BR, T);
    mk_cp_async_commit();
    uint32_t ka[HD / 16][4];
    load_a_rows(ka, qbase + D, ld, k0, T, q);
    float dk[HD / 8][4], dv[HD / 8][4];
    zero_acc(dk);
    zero_acc(dv);

    for (int qb = kb; qb < nqb; qb++) {
        const int cur = (qb - kb) & 1;
        if (qb + 1 < nqb) {
            issue_tile(Qs[cur ^ 1], qbase, ld, (qb + 1) * BC, T);
            issue_tile(Os[cur ^ 1], dobase, D, (qb + 1) * BC, T);
            issue_rowstats(Ls[cur ^ 1], Dl[cur ^ 1], lse, delta, srow, qb + 1, T);
        }
        mk_cp_async_commit();
        mk_cp_async_wait<1>();
        __syncthreads();
        const bf16 *Q = Qs[cur], *dO = Os[cur];
        /* this lane's queries 8j + 2q + {0, 1}: their lse and delta (0 past T) */
        const float2 *sl = (const float2 *)Ls[cur] + q, *sd = (const float2 *)Dl[cur] + q;
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        mma_rows_by_tile(p, ka, Q, lane);            /* S^T = K Q^T */
        kv_probs(p, sl, qb, kb, k0, k1, q, T, sl2);
        mma_frags_by_tile(dv, p, dO, lane);          /* dV += P^T dO */
        zero_acc(ds);
        mma_tilerows_by_tile(ds, Vs, warp * 16, dO, lane); /* dP^T = V dO^T */
        kv_dscores(ds, p, sd);
        mma_frags_by_tile(dk, ds, Q, lane);          /* dK += dS^T Q (scale at the end) */
        __syncthreads();
    }
    store_dkdv(dqkv, dk, dv, b, h, k0, k1, q, T, D, scale);
}

/* dQ: 1-D grid of (query blocks x B*H). The warp's 16 queries are the rows; the loop runs
 * over the key blocks up to the diagonal. */
/* Three blocks per SM (168 registers, 16 bytes spilled): with the dK/dV kernel's bound,
 * the backward took 0.498 ms at bench-s against 0.546 unbounded (two blocks per SM). */
__global__ static void __launch_bounds__(NT, 3) k_flash_bwd_dq(const dqkv_dst dqkv, const bf16 *qkv,
                                                            const bf16 *dout, const float *lse,
                                                            const float *delta, int T, int D,
                                                            int H, int nqb, float sl2, float scale)
{
    MK_PDL_ENTRY();
    __shared__ __align__(16) bf16 Ks[2][TILE];
    __shared__ __align__(16) bf16 Vs[2][TILE];
    int qb, bh;
    block_of(&qb, &bh, nqb, (int)gridDim.x / nqb, 1);
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const bf16 *qbase = qkv + (size_t)b * T * ld + h * HD;
    const bf16 *dobase = dout + (size_t)b * T * D + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    issue_tile(Ks[0], qbase + D, ld, 0, T);
    issue_tile(Vs[0], qbase + 2 * D, ld, 0, T);
    mk_cp_async_commit();
    uint32_t qa[HD / 16][4], da[HD / 16][4];
    load_a_rows(qa, qbase, ld, r0, T, q);
    load_a_rows(da, dobase, D, r0, T, q);
    const float lse0 = r0 < T ? lse[srow + r0] : 0.f, lse1 = r1 < T ? lse[srow + r1] : 0.f;
    const float d0 = r0 < T ? delta[srow + r0] : 0.f, d1 = r1 < T ? delta[srow + r1] : 0.f;
    float dq[HD / 8][4];
    zero_acc(dq);

    for (int kb = 0; kb <= qb; kb++) {
        if (kb < qb) {
            issue_tile(Ks[(kb + 1) & 1], qbase + D, ld, (kb + 1) * BC, T);
            issue_tile(Vs[(kb + 1) & 1], qbase + 2 * D, ld, (kb + 1) * BC, T);
        }
        mk_cp_async_commit();
        mk_cp_async_wait<1>();
        __syncthreads();
        const bf16 *K = Ks[kb & 1], *V = Vs[kb & 1];
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        mma_rows_by_tile(p, qa, K, lane);            /* S = Q K^T */
        zero_acc(ds);
        mma_rows_by_tile(ds, da, V, lane);           /* dP = dO V^T */
        q_probs(p, kb, qb, r0, r1, q, T, sl2, lse0, lse1);
        q_dscores(ds, p, d0, d1);
        mma_frags_by_tile(dq, ds, K, lane);          /* dQ += dS K (scale at the end) */
        __syncthreads();
    }
    store_dq(dqkv, dq, b, h, r0, r1, q, T, D, scale);
}

/* ------------------------------------------------------------------ the wgmma backward
 *
 * The two backward kernels above on warpgroup MMA, in the same loops with the same masks
 * and statistics: every product reads its tiles from shared memory through descriptors,
 * and the probability and dS fragments go from the accumulators to the A operand in
 * registers. A staged tile serves as K-major (its lines along the head dimension) for the
 * score-like products and as MN-major for the ones that reduce over its rows. Six tiles
 * and the row statistics take 50 KB of shared memory (opted in past the 48 KB default). */
#define WG_BWD_SMEM (6 * WG_TILE * 2 + 4 * BC * 4 + 1024)

/* The dK/dV blocks and the dQ blocks run in one launch (k_flash_bwd_wg below): blk is the
 * block's index among its kind's nblk. */
__device__ __forceinline__ void flash_bwd_dkdv_wg(int blk, int nblk, const dqkv_dst &dqkv, const bf16 *qkv, const bf16 *dout,
                                                  const float *lse, const float *delta, int T, int D, int H, int nqb,
                                                  float sl2, float scale)
{
#ifdef MK_HAVE_WGMMA
    extern __shared__ unsigned char wg_raw[];
    bf16 *sm = wg_smem(wg_raw);
    bf16 *Kt = sm, *Vt = sm + WG_TILE, *Qs = sm + 2 * WG_TILE, *Os = sm + 4 * WG_TILE; /* Q, dO: two each */
    float *Ls = (float *)(sm + 6 * WG_TILE), *Dl = Ls + 2 * BC;
    const int BH = nblk / nqb, kb = blk / BH, bh = blk % BH; /* key blocks from the first */
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const bf16 *qbase = qkv + (size_t)b * T * ld + h * HD;
    const bf16 *dobase = dout + (size_t)b * T * D + h * HD;
    const int k0 = kb * BR + warp * 16 + g, k1 = k0 + 8;

    issue_tile_sw(Kt, qbase + D, ld, kb * BR, T);
    issue_tile_sw(Vt, qbase + 2 * D, ld, kb * BR, T);
    issue_tile_sw(Qs, qbase, ld, kb * BC, T);
    issue_tile_sw(Os, dobase, D, kb * BC, T);
    issue_rowstats(Ls, Dl, lse, delta, srow, kb, T);
    mk_cp_async_commit();
    float dk[HD / 8][4], dv[HD / 8][4];
    zero_acc(dk);
    zero_acc(dv);

    for (int qb = kb; qb < nqb; qb++) {
        const int cur = (qb - kb) & 1;
        if (qb + 1 < nqb) {
            issue_tile_sw(Qs + (cur ^ 1) * WG_TILE, qbase, ld, (qb + 1) * BC, T);
            issue_tile_sw(Os + (cur ^ 1) * WG_TILE, dobase, D, (qb + 1) * BC, T);
            issue_rowstats(Ls + (cur ^ 1) * BC, Dl + (cur ^ 1) * BC, lse, delta, srow, qb + 1, T);
        }
        mk_cp_async_commit();
        mk_cp_async_wait<1>();
        mk_fence_proxy_async();
        __syncthreads();
        const bf16 *Q = Qs + cur * WG_TILE, *dO = Os + cur * WG_TILE;
        const float2 *sl = (const float2 *)(Ls + cur * BC) + q, *sd = (const float2 *)(Dl + cur * BC) + q;
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        zero_acc(ds);
        /* P is made while dP^T is multiplied. */
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) mk_wgmma_m64n64k16_ss(&p[0][0], kmaj(Kt, kc), kmaj(Q, kc)); /* S^T = K Q^T */
        mk_wgmma_commit();
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) mk_wgmma_m64n64k16_ss(&ds[0][0], kmaj(Vt, kc), kmaj(dO, kc)); /* dP^T = V dO^T */
        mk_wgmma_commit();
        mk_wgmma_wait<1>();
        kv_probs(p, sl, qb, kb, k0, k1, q, T, sl2);
        mk_wgmma_wait<0>();
        kv_dscores(ds, p, sd);
        uint32_t pa[BC / 16][4], sa[BC / 16][4];
        frags_of(pa, p);
        frags_of(sa, ds);
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < BC / 16; kc++) mk_wgmma_m64n64k16_rs_tb(&dv[0][0], pa[kc], mnmaj(dO, kc)); /* dV += P^T dO */
#pragma unroll
        for (int kc = 0; kc < BC / 16; kc++) mk_wgmma_m64n64k16_rs_tb(&dk[0][0], sa[kc], mnmaj(Q, kc)); /* dK += dS^T Q */
        mk_wgmma_commit();
        mk_wgmma_wait<0>();
        __syncthreads();
    }
    store_dkdv(dqkv, dk, dv, b, h, k0, k1, q, T, D, scale);
#endif
}

__device__ __forceinline__ void flash_bwd_dq_wg(int blk, int nblk, const dqkv_dst &dqkv, const bf16 *qkv, const bf16 *dout,
                                                const float *lse, const float *delta, int T, int D, int H, int nqb,
                                                float sl2, float scale)
{
#ifdef MK_HAVE_WGMMA
    extern __shared__ unsigned char wg_raw[];
    bf16 *sm = wg_smem(wg_raw);
    bf16 *Qt = sm, *Ot = sm + WG_TILE, *Ks = sm + 2 * WG_TILE, *Vs = sm + 4 * WG_TILE; /* K, V: two each */
    const int BH = nblk / nqb, qb = nqb - 1 - blk / BH, bh = blk % BH; /* query blocks from the last */
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const bf16 *qbase = qkv + (size_t)b * T * ld + h * HD;
    const bf16 *dobase = dout + (size_t)b * T * D + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    issue_tile_sw(Qt, qbase, ld, qb * BR, T);
    issue_tile_sw(Ot, dobase, D, qb * BR, T);
    issue_tile_sw(Ks, qbase + D, ld, 0, T);
    issue_tile_sw(Vs, qbase + 2 * D, ld, 0, T);
    mk_cp_async_commit();
    const float lse0 = r0 < T ? lse[srow + r0] : 0.f, lse1 = r1 < T ? lse[srow + r1] : 0.f;
    const float d0 = r0 < T ? delta[srow + r0] : 0.f, d1 = r1 < T ? delta[srow + r1] : 0.f;
    float dq[HD / 8][4];
    zero_acc(dq);

    for (int kb = 0; kb <= qb; kb++) {
        const bf16 *K = Ks + (kb & 1) * WG_TILE, *V = Vs + (kb & 1) * WG_TILE;
        wg_stream_kv(Ks, Vs, qbase, ld, D, kb, qb, T);
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        zero_acc(ds);
        /* P is made while dP is multiplied. */
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) mk_wgmma_m64n64k16_ss(&p[0][0], kmaj(Qt, kc), kmaj(K, kc)); /* S = Q K^T */
        mk_wgmma_commit();
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) mk_wgmma_m64n64k16_ss(&ds[0][0], kmaj(Ot, kc), kmaj(V, kc)); /* dP = dO V^T */
        mk_wgmma_commit();
        mk_wgmma_wait<1>();
        q_probs(p, kb, qb, r0, r1, q, T, sl2, lse0, lse1);
        mk_wgmma_wait<0>();
        q_dscores(ds, p, d0, d1);
        uint32_t sa[BC / 16][4];
        frags_of(sa, ds);
        mk_wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < BC / 16; kc++) mk_wgmma_m64n64k16_rs_tb(&dq[0][0], sa[kc], mnmaj(K, kc)); /* dQ += dS K */
        mk_wgmma_commit();
        mk_wgmma_wait<0>();
        __syncthreads();
    }
    store_dq(dqkv, dq, b, h, r0, r1, q, T, D, scale);
#endif
}

/* Both backward kernels in one launch, alternating: block 2i is the i-th dK/dV block and
 * block 2i + 1 the i-th dQ block, so the longest loops of both kinds start first and
 * neither kind's last wave waits for the other's. nblk blocks of each kind. */
__global__ static void __launch_bounds__(NT, 3) k_flash_bwd_wg(const dqkv_dst dqkv, const bf16 *qkv, const bf16 *dout,
                                                             const float *lse, const float *delta, int T, int D,
                                                             int H, int nqb, int nblk, float sl2, float scale)
{
    MK_PDL_ENTRY();
    const int i = (int)blockIdx.x / 2;
    if (blockIdx.x & 1)
        flash_bwd_dq_wg(i, nblk, dqkv, qkv, dout, lse, delta, T, D, H, nqb, sl2, scale);
    else
        flash_bwd_dkdv_wg(i, nblk, dqkv, qkv, dout, lse, delta, T, D, H, nqb, sl2, scale);
}

/* qkv rounded to bf16 with q and k rotated by RoPE first (the rope op then the rounding,
 * in one pass; sign -1: the inverse rotation, for dqkv): one block per token, four columns
 * per thread. */
__global__ static void k_qkv_rope_bf16(uint2 *out, const float4 *qkv, const double *cs, int T, int D,
                                       double sign)
{
    MK_PDL_ENTRY();
    const size_t n = blockIdx.x;
    const float4 *row = qkv + n * (3 * (size_t)D / 4);
    uint2 *o = out + n * (3 * (size_t)D / 4);
    const double *ct = cs + (size_t)(n % T) * HD;
    for (int j = threadIdx.x; j < 3 * D / 4; j += blockDim.x) {
        float4 v = row[j];
        const int col = 4 * j;
        if (col < 2 * D) {
            mk_rope_rotate(v.x, v.y, ct + (col % HD), sign);
            mk_rope_rotate(v.z, v.w, ct + ((col + 2) % HD), sign);
        }
        const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
        o[j] = make_uint2(*(const uint32_t *)&a, *(const uint32_t *)&b);
    }
}

/* q and k of a bf16 qkv rotated in place (the rotation of mk_rope_rotate on the bf16
 * values, rounded back): one block per token, four columns per thread. */
__global__ static void k_rope_bf16_inplace(uint2 *qkv, const double *cs, int T, int D)
{
    MK_PDL_ENTRY();
    const size_t n = blockIdx.x;
    uint2 *row = qkv + n * (3 * (size_t)D / 4);
    const double *ct = cs + (size_t)(n % T) * HD;
    for (int j = threadIdx.x; j < D / 2; j += blockDim.x) { /* q and k: 2D columns */
        const uint2 u = row[j];
        float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x);
        float2 b = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
        const int col = 4 * j;
        mk_rope_rotate(a.x, a.y, ct + (col % HD), 1.0);
        mk_rope_rotate(b.x, b.y, ct + ((col + 2) % HD), 1.0);
        const __nv_bfloat162 ra = __float22bfloat162_rn(a), rb = __float22bfloat162_rn(b);
        row[j] = make_uint2(*(const uint32_t *)&ra, *(const uint32_t *)&rb);
    }
}

/* Pieces of the state and of the backward's work area, each a multiple of 4 floats so that
 * the ones after it stay 16-byte aligned: state = lse, output copy, bf16 qkv; work =
 * delta, bf16 dO. */
static size_t up4(size_t n) { return (n + 3) & ~(size_t)3; }
static size_t lse_floats(int B, int T, int H) { return up4((size_t)B * H * T); }
static size_t ostore_floats(int B, int T, int H) { return (size_t)B * H * T * HD; }
static size_t bf16_floats(size_t elems) { return up4((elems + 1) / 2); }

extern "C" size_t mk_flash_attn_state_floats(int B, int T, int H)
{
    return lse_floats(B, T, H) + ostore_floats(B, T, H) + bf16_floats((size_t)B * T * 3 * H * HD);
}

extern "C" size_t mk_flash_attn_work_floats(int B, int T, int H)
{
    return lse_floats(B, T, H) + bf16_floats((size_t)B * T * H * HD);
}

extern "C" int mk_flash_attn_supported(int T, int D, int H)
{
    return H > 0 && T > 0 && D == H * HD;
}

/* float2 and 16-byte copies need 16-byte aligned buffers (the model's arena aligns every
 * buffer to 64 bytes). */
static int check_aligned(const char *what, const void *a, const void *b, const void *c, const void *d)
{
    if ((((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) != 0)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: buffers not 16-byte aligned", what);
    return MK_OK;
}

extern "C" int mk_flash_attn_forward(float *out, float *state, const float *qkv, const double *rope_cs, int B,
                                     int T, int D, int H)
{
    if (B <= 0 || T <= 0) return MK_OK;
    MK_CHECK(check_aligned("flash attention forward", out, state, qkv, qkv));
    const float sl2 = (float)(LOG2E / sqrt((double)HD));
    float *lse = state, *ostore = state + lse_floats(B, T, H);
    bf16 *qkvb = (bf16 *)(ostore + ostore_floats(B, T, H));
    if (rope_cs) {
        CU_CHECK(mk_launch(k_qkv_rope_bf16, dim3((unsigned)((size_t)B * T)), dim3(256), 0, (uint2 *)qkvb,
                           (const float4 *)qkv, rope_cs, T, D, 1.0), "flash attention forward (RoPE, bf16 qkv)");
    } else {
        MK_CHECK(mk_cuda_round_bf16(qkvb, qkv, (size_t)B * T * 3 * D, "flash attention forward (bf16 qkv)"));
    }
    const int nqb = (T + BR - 1) / BR;
    CU_CHECK(mk_launch(k_flash_fwd<false>, dim3((unsigned)nqb * B * H), dim3(NT), 0, out, nullptr, lse, ostore, qkvb,
                       T, D, H, nqb, sl2), "flash attention forward");
    return MK_OK;
}

extern "C" int mk_flash_attn_backward(float *dqkv, float *work, const float *dout, const float *qkv,
                                      const float *state, int B, int T, int D, int H)
{
    (void)qkv; /* the forward's bf16 copy in state is what the products use */
    if (B <= 0 || T <= 0) return MK_OK;
    MK_CHECK(check_aligned("flash attention backward", dqkv, dout, work, state));
    const double scale = 1.0 / sqrt((double)HD);
    const float sl2 = (float)(LOG2E * scale);
    const float *lse = state, *ostore = state + lse_floats(B, T, H);
    const bf16 *qkvb = (const bf16 *)(ostore + ostore_floats(B, T, H));
    float *delta = work;
    bf16 *dob = (bf16 *)(work + lse_floats(B, T, H));
    const size_t rows = (size_t)B * H * T;
    CU_CHECK(mk_launch(k_flash_delta, dim3((unsigned)((rows * 32 + 255) / 256)), dim3(256), 0, delta, dob, dout,
                       ostore, rows, T, D, H), "flash attention backward (row sums)");
    const int nqb = (T + BR - 1) / BR;
    const unsigned blocks = (unsigned)nqb * B * H;
    const dqkv_dst dst = {dqkv, NULL, NULL};
    CU_CHECK(mk_launch(k_flash_bwd_dkdv, dim3(blocks), dim3(NT), 0, dst, qkvb, dob, lse, delta, T, D, H, nqb, sl2,
                       (float)scale), "flash attention backward (dK, dV)");
    CU_CHECK(mk_launch(k_flash_bwd_dq, dim3(blocks), dim3(NT), 0, dst, qkvb, dob, lse, delta, T, D, H, nqb, sl2,
                       (float)scale), "flash attention backward (dQ)");
    return MK_OK;
}

extern "C" size_t mk_flash_attn_lse_floats(int B, int T, int H)
{
    return lse_floats(B, T, H);
}

extern "C" int mk_flash_attn_forward_bf16(void *out, float *lse, void *qkv, const double *rope_cs, int B, int T,
                                          int D, int H, int wgmma)
{
    if (B <= 0 || T <= 0) return MK_OK;
    MK_CHECK(check_aligned("flash attention forward (bf16)", out, lse, qkv, qkv));
    if (rope_cs) {
        CU_CHECK(mk_launch(k_rope_bf16_inplace, dim3((unsigned)((size_t)B * T)), dim3(128), 0, (uint2 *)qkv, rope_cs,
                           T, D), "flash attention forward (RoPE on bf16 qkv)");
    }
    const float sl2 = (float)(LOG2E / sqrt((double)HD));
    const int nqb = (T + BR - 1) / BR;
    if (wgmma) {
        CU_CHECK(mk_launch(k_flash_fwd_wg, dim3((unsigned)nqb * B * H), dim3(NT), WG_SMEM, (bf16 *)out, lse,
                           (const bf16 *)qkv, T, D, H, nqb, sl2), "flash attention forward (bf16, wgmma)");
        return MK_OK;
    }
    CU_CHECK(mk_launch(k_flash_fwd<true>, dim3((unsigned)nqb * B * H), dim3(NT), 0, nullptr, (bf16 *)out, lse,
                       nullptr, (const bf16 *)qkv, T, D, H, nqb, sl2), "flash attention forward (bf16)");
    return MK_OK;
}

extern "C" int mk_flash_attn_backward_bf16(float *dqkv, void *dqkvb, const double *rope_cs, float *delta,
                                           const void *dout, const void *out, const void *qkv, const float *lse,
                                           int B, int T, int D, int H, int wgmma)
{
    if (B <= 0 || T <= 0) return MK_OK;
    const dqkv_dst dst = {dqkvb ? NULL : dqkv, (bf16 *)dqkvb, dqkvb ? rope_cs : NULL};
    MK_CHECK(check_aligned("flash attention backward (bf16)", dqkvb ? dqkvb : (void *)dqkv, delta, dout, qkv));
    MK_CHECK(check_aligned("flash attention backward (bf16)", out, lse, out, lse));
    const double scale = 1.0 / sqrt((double)HD);
    const float sl2 = (float)(LOG2E * scale);
    const size_t rows = (size_t)B * H * T;
    CU_CHECK(mk_launch(k_flash_delta_bf16, dim3((unsigned)((rows * 32 + 255) / 256)), dim3(256), 0, delta,
                       (const bf16 *)dout, (const bf16 *)out, rows, T, D, H),
             "flash attention backward (bf16 row sums)");
    const int nqb = (T + BR - 1) / BR;
    const unsigned blocks = (unsigned)nqb * B * H;
    if (wgmma) {
        CU_CHECK(cudaFuncSetAttribute(k_flash_bwd_wg, cudaFuncAttributeMaxDynamicSharedMemorySize, WG_BWD_SMEM),
                "flash attention backward (wgmma): shared memory");
        CU_CHECK(mk_launch(k_flash_bwd_wg, dim3(2 * blocks), dim3(NT), WG_BWD_SMEM, dst, (const bf16 *)qkv,
                           (const bf16 *)dout, lse, delta, T, D, H, nqb, (int)blocks, sl2, (float)scale),
                 "flash attention backward (bf16, wgmma)");
        return MK_OK;
    }
    CU_CHECK(mk_launch(k_flash_bwd_dkdv, dim3(blocks), dim3(NT), 0, dst, (const bf16 *)qkv, (const bf16 *)dout, lse,
                       delta, T, D, H, nqb, sl2, (float)scale), "flash attention backward (bf16: dK, dV)");
    CU_CHECK(mk_launch(k_flash_bwd_dq, dim3(blocks), dim3(NT), 0, dst, (const bf16 *)qkv, (const bf16 *)dout, lse,
                       delta, T, D, H, nqb, sl2, (float)scale), "flash attention backward (bf16: dQ)");
    return MK_OK;
}

extern "C" int mk_flash_rope_round(void *out, const float *qkv, const double *rope_cs, int N, int T, int D,
                                   double sign)
{
    if (N <= 0) return MK_OK;
    MK_CHECK(check_aligned("RoPE and bf16 rounding", out, qkv, rope_cs, out));
    CU_CHECK(mk_launch(k_qkv_rope_bf16, dim3((unsigned)N), dim3(256), 0, (uint2 *)out, (const float4 *)qkv, rope_cs,
                       T, D, sign), "RoPE and bf16 rounding");
    return MK_OK;
}
