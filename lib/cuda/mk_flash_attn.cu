/* mk_flash_attn.cu - fused causal attention on bf16 tensor cores: see mk_flash_attn.h.
 *
 * Every kernel runs 4 warps over a block of 64 rows (queries, or keys in the dK/dV pass);
 * each warp owns 16 of them and multiplies with mma.sync m16n8k16 (bf16 in, fp32
 * accumulate). The accumulator fragment of one product has the register layout of the A
 * operand of the next (rows g and g + 8 of the warp's 16, column pairs 2q and 2q + 1 with
 * g = lane / 4, q = lane % 4), so probabilities go from the score product to the value
 * product without leaving registers, and a row's statistics reduce over the 4 lanes that
 * share it. Tiles of the other operand sit in shared memory as bf16, row-major or
 * transposed so that each lane's pair of k-elements is one 32-bit word; rows are padded to
 * 72 elements, which puts the 32 lanes of a fragment load on 32 different banks.
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
#include "mk_flash_attn.h"

#define HD MK_FLASH_HD
#define BR 64            /* rows per block (queries, or keys in the dK/dV pass) */
#define BC 64            /* columns per step of the inner loop */
#define NT 128           /* threads per block: 4 warps of 16 rows */
#define LDS 72           /* padded shared-memory row, in bf16 elements */
#define LOG2E 1.4426950408889634

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as one register of bf16 pairs: lo in the low half (the lower k index). */
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* The pair at (r, c), (r, c + 1) of a padded shared tile. */
__device__ __forceinline__ uint32_t lds32(const bf16 *tile, int r, int c)
{
    return *(const uint32_t *)(tile + r * LDS + c);
}

/* The pair at row t, columns c and c + 1 of a global fp32 matrix, 0 past the last row. */
__device__ __forceinline__ uint32_t ldg_pair(const float *base, size_t ld, int t, int c, int T)
{
    if (t >= T) return 0;
    const float2 v = *(const float2 *)(base + (size_t)t * ld + c);
    return pack2(v.x, v.y);
}

/* A operand of the warp's 16 rows (r0 and r0 + 8 for this lane) over all HD columns. */
__device__ __forceinline__ void load_a_rows(uint32_t a[HD / 16][4], const float *base, size_t ld,
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

/* 64 rows x HD columns of a global fp32 matrix from row t0 into shared bf16 tiles: rm
 * row-major [row][col], tr transposed [col][row] (either may be NULL); rows past T are 0. */
__device__ __forceinline__ void load_tile(bf16 *rm, bf16 *tr, const float *base, size_t ld, int t0, int T)
{
    for (int i = threadIdx.x; i < BC * (HD / 4); i += NT) {
        const int r = i / (HD / 4), c = (i % (HD / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t0 + r < T) v = *(const float4 *)(base + (size_t)(t0 + r) * ld + c);
        if (rm) {
            uint2 w;
            w.x = pack2(v.x, v.y);
            w.y = pack2(v.z, v.w);
            *(uint2 *)(rm + r * LDS + c) = w;
        }
        if (tr) {
            tr[(c + 0) * LDS + r] = __float2bfloat16_rn(v.x);
            tr[(c + 1) * LDS + r] = __float2bfloat16_rn(v.y);
            tr[(c + 2) * LDS + r] = __float2bfloat16_rn(v.z);
            tr[(c + 3) * LDS + r] = __float2bfloat16_rn(v.w);
        }
    }
}

/* acc[j] (16 rows x 8 columns each, 8 of them: 64 columns) += A(16 x HD) B^T where row n
 * of the shared tile holds column n of B^T: the score product S = Q K^T and its kin. */
__device__ __forceinline__ void mma_rows_by_tile(float acc[BC / 8][4], const uint32_t a[HD / 16][4],
                                                 const bf16 *tile, int g, int q)
{
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++)
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
            mma16816(acc[j], a[kc], lds32(tile, 8 * j + g, kc * 16 + 2 * q),
                     lds32(tile, 8 * j + g, kc * 16 + 8 + 2 * q));
}

/* acc (16 rows x HD) += P(16 x BC, from accumulator fragments p) V where the shared tile
 * is V transposed: row d holds column d of V over the BC columns of P. */
__device__ __forceinline__ void mma_frags_by_tile(float acc[HD / 8][4], const float p[BC / 8][4],
                                                  const bf16 *tile_t, int g, int q)
{
#pragma unroll
    for (int kc = 0; kc < BC / 16; kc++) {
        uint32_t a[4];
        a[0] = pack2(p[2 * kc][0], p[2 * kc][1]);
        a[1] = pack2(p[2 * kc][2], p[2 * kc][3]);
        a[2] = pack2(p[2 * kc + 1][0], p[2 * kc + 1][1]);
        a[3] = pack2(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
        for (int dj = 0; dj < HD / 8; dj++)
            mma16816(acc[dj], a, lds32(tile_t, 8 * dj + g, kc * 16 + 2 * q),
                     lds32(tile_t, 8 * dj + g, kc * 16 + 8 + 2 * q));
    }
}

__device__ __forceinline__ void zero_acc(float acc[8][4])
{
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

/* Forward: grid (query blocks, B*H). sl2 = scale * log2(e): the softmax runs in base 2,
 * and lse is kept in that unit. */
__global__ static void __launch_bounds__(NT) k_flash_fwd(float *out, float *lse, float *ostore,
                                                         const float *qkv, int T, int D, int H, float sl2)
{
    __shared__ __align__(16) bf16 Ks[BC * LDS];
    __shared__ __align__(16) bf16 Vt[HD * LDS];
    const int qb = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D;
    const float *base = qkv + (size_t)b * T * ld + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    uint32_t qa[HD / 16][4];
    load_a_rows(qa, base, ld, r0, T, q);
    float o[HD / 8][4];
    zero_acc(o);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    const int last = min(qb, (T - 1) / BC);
    for (int kb = 0; kb <= last; kb++) {
        __syncthreads();
        load_tile(Ks, NULL, base + D, ld, kb * BC, T);
        load_tile(NULL, Vt, base + 2 * D, ld, kb * BC, T);
        __syncthreads();
        float s[BC / 8][4];
        zero_acc(s);
        mma_rows_by_tile(s, qa, Ks, g, q);
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = kb * BC + 8 * j + 2 * q + (e & 1), row = e < 2 ? r0 : r1;
                const float v = (key > row || key >= T) ? -INFINITY : s[j][e] * sl2;
                s[j][e] = v;
                if (e < 2) mx0 = fmaxf(mx0, v);
                else mx1 = fmaxf(mx1, v);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* Key 0 is in every row's first block, so the maxima are finite from there on. */
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float al0 = exp2f(m0 - mn0), al1 = exp2f(m1 - mn1);
        m0 = mn0, m1 = mn1;
        float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
        for (int j = 0; j < BC / 8; j++) {
            s[j][0] = exp2f(s[j][0] - m0), s[j][1] = exp2f(s[j][1] - m0);
            s[j][2] = exp2f(s[j][2] - m1), s[j][3] = exp2f(s[j][3] - m1);
            ps0 += s[j][0] + s[j][1];
            ps1 += s[j][2] + s[j][3];
        }
        /* Each lane keeps its partial row sum; the 4 lanes of a row share al0/al1, so the
         * partials are combined once after the loop. */
        l0 = l0 * al0 + ps0, l1 = l1 * al1 + ps1;
#pragma unroll
        for (int dj = 0; dj < HD / 8; dj++) {
            o[dj][0] *= al0, o[dj][1] *= al0;
            o[dj][2] *= al1, o[dj][3] *= al1;
        }
        mma_frags_by_tile(o, s, Vt, g, q);
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    const size_t srow = (size_t)bh * T;
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (r0 < T) {
            const float2 v = make_float2(o[dj][0] * i0, o[dj][1] * i0);
            *(float2 *)(out + ((size_t)b * T + r0) * D + h * HD + c) = v;
            *(float2 *)(ostore + (srow + r0) * HD + c) = v;
        }
        if (r1 < T) {
            const float2 v = make_float2(o[dj][2] * i1, o[dj][3] * i1);
            *(float2 *)(out + ((size_t)b * T + r1) * D + h * HD + c) = v;
            *(float2 *)(ostore + (srow + r1) * HD + c) = v;
        }
    }
    if (q == 0) {
        if (r0 < T) lse[srow + r0] = m0 + log2f(l0);
        if (r1 < T) lse[srow + r1] = m1 + log2f(l1);
    }
}

/* delta[bh, t] = sum_d dO[t, d] O[t, d]: one warp per row, a fixed shuffle tree. */
__global__ static void k_flash_delta(float *delta, const float *dout, const float *ostore,
                                     size_t rows, int T, int D, int H)
{
    const size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= rows) return;
    const size_t bh = w / T, t = w % T, b = bh / H, h = bh % H;
    const float *dO = dout + (b * T + t) * D + h * HD, *O = ostore + w * HD;
    float acc = dO[lane] * O[lane] + dO[lane + 32] * O[lane + 32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[w] = acc;
}

/* dK, dV: grid (key blocks, B*H). The warp's 16 keys are the rows; the loop runs over the
 * query blocks at or after the key block (causal), with S^T = K Q^T recomputed and
 * P^T = exp2(S^T sl2 - lse). */
__global__ static void __launch_bounds__(NT) k_flash_bwd_dkdv(float *dqkv, const float *qkv,
                                                              const float *dout, const float *lse,
                                                              const float *delta, int T, int D,
                                                              int H, float sl2, float scale)
{
    __shared__ __align__(16) bf16 Qs[BC * LDS];
    __shared__ __align__(16) bf16 Qt[HD * LDS];
    __shared__ __align__(16) bf16 Os[BC * LDS];
    __shared__ __align__(16) bf16 Ot[HD * LDS];
    __shared__ float sl[BC], sd[BC];
    const int kb = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const float *qbase = qkv + (size_t)b * T * ld + h * HD;
    const float *dobase = dout + (size_t)b * T * D + h * HD;
    const int k0 = kb * BR + warp * 16 + g, k1 = k0 + 8;

    uint32_t ka[HD / 16][4], va[HD / 16][4];
    load_a_rows(ka, qbase + D, ld, k0, T, q);
    load_a_rows(va, qbase + 2 * D, ld, k0, T, q);
    float dk[HD / 8][4], dv[HD / 8][4];
    zero_acc(dk);
    zero_acc(dv);

    const int nqb = (T + BC - 1) / BC;
    for (int qb = kb; qb < nqb; qb++) {
        __syncthreads();
        load_tile(Qs, Qt, qbase, ld, qb * BC, T);
        load_tile(Os, Ot, dobase, D, qb * BC, T);
        for (int i = threadIdx.x; i < BC; i += NT) {
            const int t = qb * BC + i;
            sl[i] = t < T ? lse[srow + t] : 0.f;
            sd[i] = t < T ? delta[srow + t] : 0.f;
        }
        __syncthreads();
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        mma_rows_by_tile(p, ka, Qs, g, q);          /* S^T = K Q^T */
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qi = 8 * j + 2 * q + (e & 1), qt = qb * BC + qi, key = e < 2 ? k0 : k1;
                p[j][e] = (key > qt || qt >= T || key >= T) ? 0.f : exp2f(p[j][e] * sl2 - sl[qi]);
            }
        mma_frags_by_tile(dv, p, Ot, g, q);         /* dV += P^T dO */
        zero_acc(ds);
        mma_rows_by_tile(ds, va, Os, g, q);         /* dP^T = V dO^T */
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qi = 8 * j + 2 * q + (e & 1);
                ds[j][e] = p[j][e] * (ds[j][e] - sd[qi]);
            }
        mma_frags_by_tile(dk, ds, Qt, g, q);        /* dK += dS^T Q (scale at the end) */
    }
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (k0 < T) {
            float *row = dqkv + ((size_t)b * T + k0) * ld + h * HD + c;
            *(float2 *)(row + D) = make_float2(dk[dj][0] * scale, dk[dj][1] * scale);
            *(float2 *)(row + 2 * D) = make_float2(dv[dj][0], dv[dj][1]);
        }
        if (k1 < T) {
            float *row = dqkv + ((size_t)b * T + k1) * ld + h * HD + c;
            *(float2 *)(row + D) = make_float2(dk[dj][2] * scale, dk[dj][3] * scale);
            *(float2 *)(row + 2 * D) = make_float2(dv[dj][2], dv[dj][3]);
        }
    }
}

/* dQ: grid (query blocks, B*H). The warp's 16 queries are the rows; the loop runs over the
 * key blocks up to the diagonal. */
__global__ static void __launch_bounds__(NT) k_flash_bwd_dq(float *dqkv, const float *qkv,
                                                            const float *dout, const float *lse,
                                                            const float *delta, int T, int D,
                                                            int H, float sl2, float scale)
{
    __shared__ __align__(16) bf16 Ks[BC * LDS];
    __shared__ __align__(16) bf16 Kt[HD * LDS];
    __shared__ __align__(16) bf16 Vs[BC * LDS];
    const int qb = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const size_t ld = 3 * (size_t)D, srow = (size_t)bh * T;
    const float *qbase = qkv + (size_t)b * T * ld + h * HD;
    const float *dobase = dout + (size_t)b * T * D + h * HD;
    const int r0 = qb * BR + warp * 16 + g, r1 = r0 + 8;

    uint32_t qa[HD / 16][4], da[HD / 16][4];
    load_a_rows(qa, qbase, ld, r0, T, q);
    load_a_rows(da, dobase, D, r0, T, q);
    const float lse0 = r0 < T ? lse[srow + r0] : 0.f, lse1 = r1 < T ? lse[srow + r1] : 0.f;
    const float d0 = r0 < T ? delta[srow + r0] : 0.f, d1 = r1 < T ? delta[srow + r1] : 0.f;
    float dq[HD / 8][4];
    zero_acc(dq);

    const int last = min(qb, (T - 1) / BC);
    for (int kb = 0; kb <= last; kb++) {
        __syncthreads();
        load_tile(Ks, Kt, qbase + D, ld, kb * BC, T);
        load_tile(Vs, NULL, qbase + 2 * D, ld, kb * BC, T);
        __syncthreads();
        float p[BC / 8][4], ds[BC / 8][4];
        zero_acc(p);
        mma_rows_by_tile(p, qa, Ks, g, q);          /* S = Q K^T */
        zero_acc(ds);
        mma_rows_by_tile(ds, da, Vs, g, q);         /* dP = dO V^T */
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = kb * BC + 8 * j + 2 * q + (e & 1), row = e < 2 ? r0 : r1;
                const float pv = (key > row || key >= T || row >= T)
                                     ? 0.f : exp2f(p[j][e] * sl2 - (e < 2 ? lse0 : lse1));
                ds[j][e] = pv * (ds[j][e] - (e < 2 ? d0 : d1));
            }
        mma_frags_by_tile(dq, ds, Kt, g, q);        /* dQ += dS K (scale at the end) */
    }
#pragma unroll
    for (int dj = 0; dj < HD / 8; dj++) {
        const int c = 8 * dj + 2 * q;
        if (r0 < T)
            *(float2 *)(dqkv + ((size_t)b * T + r0) * ld + h * HD + c) =
                make_float2(dq[dj][0] * scale, dq[dj][1] * scale);
        if (r1 < T)
            *(float2 *)(dqkv + ((size_t)b * T + r1) * ld + h * HD + c) =
                make_float2(dq[dj][2] * scale, dq[dj][3] * scale);
    }
}

#define FA_CHECK(what)                                                                     \
    do {                                                                                   \
        cudaError_t e_ = cudaGetLastError();                                               \
        if (e_ != cudaSuccess)                                                             \
            return MK_FAIL(MK_ERR_INTERNAL, "cuda: %s: %s", (what), cudaGetErrorString(e_)); \
    } while (0)

/* The log-sum-exps, rounded up so that the output copy after them stays 16-byte aligned. */
static size_t lse_floats(int B, int T, int H) { return ((size_t)B * H * T + 3) & ~(size_t)3; }

extern "C" size_t mk_flash_attn_state_floats(int B, int T, int H)
{
    return lse_floats(B, T, H) + (size_t)B * H * T * HD;
}

extern "C" int mk_flash_attn_supported(int T, int D, int H)
{
    return H > 0 && T > 0 && D == H * HD;
}

/* float4 tile loads and float2 stores need 16-byte aligned rows (the model's arena aligns
 * every buffer to 64 bytes). */
static int check_aligned(const char *what, const void *a, const void *b, const void *c, const void *d)
{
    if ((((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) != 0)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: buffers not 16-byte aligned", what);
    return MK_OK;
}

extern "C" int mk_flash_attn_forward(float *out, float *state, const float *qkv, int B, int T, int D, int H)
{
    if (B <= 0 || T <= 0) return MK_OK;
    MK_CHECK(check_aligned("flash attention forward", out, state, qkv, qkv));
    const float sl2 = (float)(LOG2E / sqrt((double)HD));
    float *lse = state, *ostore = state + lse_floats(B, T, H);
    dim3 grid((unsigned)((T + BR - 1) / BR), (unsigned)(B * H));
    k_flash_fwd<<<grid, NT>>>(out, lse, ostore, qkv, T, D, H, sl2);
    FA_CHECK("flash attention forward");
    return MK_OK;
}

extern "C" int mk_flash_attn_backward(float *dqkv, float *work, const float *dout, const float *qkv,
                                      const float *state, int B, int T, int D, int H)
{
    if (B <= 0 || T <= 0) return MK_OK;
    MK_CHECK(check_aligned("flash attention backward", dqkv, dout, qkv, state));
    const double scale = 1.0 / sqrt((double)HD);
    const float sl2 = (float)(LOG2E * scale);
    const float *lse = state, *ostore = state + lse_floats(B, T, H);
    const size_t rows = (size_t)B * H * T;
    k_flash_delta<<<(unsigned)((rows * 32 + 255) / 256), 256>>>(work, dout, ostore, rows, T, D, H);
    FA_CHECK("flash attention backward (row sums)");
    dim3 grid((unsigned)((T + BR - 1) / BR), (unsigned)(B * H));
    k_flash_bwd_dkdv<<<grid, NT>>>(dqkv, qkv, dout, lse, work, T, D, H, sl2, (float)scale);
    FA_CHECK("flash attention backward (dK, dV)");
    k_flash_bwd_dq<<<grid, NT>>>(dqkv, qkv, dout, lse, work, T, D, H, sl2, (float)scale);
    FA_CHECK("flash attention backward (dQ)");
    return MK_OK;
}
