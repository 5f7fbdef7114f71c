/* mk_backend_cpu.c - the CPU reference backend (DESIGN section 5).
 *
 * Every op of mk_backend.h on host memory: GEMMs through CBLAS, everything else in plain
 * loops parallelised with OpenMP. It is the reference the CUDA backend is checked against
 * and the backend of the gradient-check tests (built with mk_real = double there), so it
 * favours clarity and exact repeatability over speed. Determinism rule used throughout:
 * every output element is computed by one thread in a fixed order, and reductions over
 * tokens run in token order, so the bits never depend on the thread count.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mk_backend.h"
#include "mk_error.h"

#ifdef MK_REAL_DOUBLE
#define MK_GEMM cblas_dgemm
#define MK_EXP exp
#else
#define MK_GEMM cblas_sgemm
#define MK_EXP expf
#endif

/* Pragmas through a macro so a build without OpenMP compiles silently under -Wall. */
#ifdef _OPENMP
#define MK_PRAGMA_(x) _Pragma(#x)
#define MK_PARALLEL_FOR(nt) MK_PRAGMA_(omp parallel for schedule(static) num_threads(nt))
/* OR is order-independent, so this reduction is deterministic. */
#define MK_PARALLEL_FOR_OR(nt, flag) \
    MK_PRAGMA_(omp parallel for schedule(static) num_threads(nt) reduction(| : flag))
#else
#define MK_PARALLEL_FOR(nt) (void)(nt);
#define MK_PARALLEL_FOR_OR(nt, flag) (void)(nt);
#endif

#define MK_ALIGN 64
#define MK_RMS_EPS 1e-5
/* Columns per task where a reduction over tokens is split over the output dimension:
 * wide enough to read rows in contiguous runs, narrow enough to give every thread work. */
#define MK_COL_BLOCK 64

typedef struct {
    int threads; /* <= 0: OpenMP's default at call time */
} cpu_impl;

static int cpu_threads(const mk_backend *be)
{
    const cpu_impl *im = be->impl;
    if (im->threads > 0) return im->threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ------------------------------------------------------------------ memory */

static int cpu_alloc(mk_backend *be, size_t bytes, void **out)
{
    (void)be;
    void *p = NULL;
    /* posix_memalign(0) may return NULL on success; a real pointer keeps free() uniform. */
    size_t n = bytes ? bytes : 1;
    *out = NULL;
    if (posix_memalign(&p, MK_ALIGN, n) != 0 || !p)
        return MK_FAIL(MK_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes", bytes);
    memset(p, 0, n);
    *out = p;
    return MK_OK;
}

static void cpu_free(mk_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_zero(mk_backend *be, void *p, size_t bytes)
{
    (void)be;
    if (bytes) memset(p, 0, bytes);
    return MK_OK;
}

static int cpu_copy(mk_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
    return MK_OK;
}

/* ------------------------------------------------------------------ dense algebra */

static int cpu_matmul(mk_backend *be, mk_real *C, const mk_real *A, const mk_real *B, int M,
                      int N, int K, int trans_a, int trans_b, mk_real alpha, mk_real beta)
{
    if (M < 0 || N < 0 || K < 0)
        return MK_FAIL(MK_ERR_INTERNAL, "matmul: negative shape %d x %d x %d", M, N, K);
    if (M == 0 || N == 0) return MK_OK;
    if (K == 0) {
        /* BLAS rejects a leading dimension of 0; the product is empty, only beta remains. */
        size_t n = (size_t)M * N;
        int nt = cpu_threads(be);
        MK_PARALLEL_FOR(nt)
        for (size_t i = 0; i < n; i++) C[i] = beta == 0 ? 0 : beta * C[i];
        return MK_OK;
    }
    const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    /* One thread pool: BLAS runs single-threaded (see mk_backend_cpu_create) and the output
     * is split into blocks of rows (or columns, when it is wide) over the OpenMP threads.
     * Two spinning pools on the same cores slowed training by up to 6x. */
    int nt = cpu_threads(be);
    const double flops = 2.0 * M * N * K;
    if (nt <= 1 || flops < 2e5) {
        MK_GEMM(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
        return MK_OK;
    }
    const int by_rows = M >= N;
    const int extent = by_rows ? M : N;
    if (nt > extent) nt = extent;
    MK_PARALLEL_FOR(nt)
    for (int part = 0; part < nt; part++) {
        const int lo = (int)((long)extent * part / nt), hi = (int)((long)extent * (part + 1) / nt);
        if (hi <= lo) continue;
        if (by_rows) {
            const mk_real *Ap = trans_a ? A + lo : A + (size_t)lo * K;
            MK_GEMM(CblasRowMajor, ta, tb, hi - lo, N, K, alpha, Ap, lda, B, ldb, beta,
                    C + (size_t)lo * N, N);
        } else {
            const mk_real *Bp = trans_b ? B + (size_t)lo * K : B + lo;
            MK_GEMM(CblasRowMajor, ta, tb, M, hi - lo, K, alpha, A, lda, Bp, ldb, beta, C + lo, N);
        }
    }
    return MK_OK;
}

static int cpu_add(mk_backend *be, mk_real *y, const mk_real *a, const mk_real *b, size_t n)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    return MK_OK;
}

static int cpu_scale(mk_backend *be, mk_real *x, size_t n, mk_real s)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (size_t i = 0; i < n; i++) x[i] *= s;
    return MK_OK;
}

/* Partial sums over fixed chunks whose size depends on n only, added in chunk order: the
 * result is the same for any thread count. */
#define MK_SUMSQ_CHUNKS 256
#define MK_SUMSQ_MIN_CHUNK 16384

static int cpu_sumsq(mk_backend *be, const mk_real *x, size_t n, double *out_host)
{
    double part[MK_SUMSQ_CHUNKS];
    size_t chunk = (n + MK_SUMSQ_CHUNKS - 1) / MK_SUMSQ_CHUNKS;
    if (chunk < MK_SUMSQ_MIN_CHUNK) chunk = MK_SUMSQ_MIN_CHUNK;
    int nchunks = (int)((n + chunk - 1) / chunk);
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double s = 0;
        for (size_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
        part[c] = s;
    }
    double s = 0;
    for (int c = 0; c < nchunks; c++) s += part[c];
    *out_host = s;
    return MK_OK;
}

static int cpu_sumsq_ranges(mk_backend *be, const mk_real *base, const size_t *off, const size_t *len, int count,
                            double *out_host)
{
    for (int i = 0; i < count; i++) MK_CHECK(cpu_sumsq(be, base + off[i], len[i], &out_host[i]));
    return MK_OK;
}

static int cpu_nonfinite(mk_backend *be, const mk_real *x, size_t n, int *out_host)
{
    int bad = 0;
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR_OR(nt, bad)
    for (size_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    *out_host = bad != 0;
    return MK_OK;
}

/* ------------------------------------------------------------------ embedding */

static int cpu_embedding_forward(mk_backend *be, mk_real *out, const int32_t *tokens,
                                 const mk_real *wte, int N, int D)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, wte + (size_t)tokens[n] * D, (size_t)D * sizeof(mk_real));
    return MK_OK;
}

static int cpu_embedding_backward(mk_backend *be, mk_real *dwte, const int32_t *tokens,
                                  const mk_real *dout, int N, int D, int V)
{
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V)
            return MK_FAIL(MK_ERR_INPUT, "embedding: token %d at position %d outside vocabulary %d",
                           (int)tokens[n], n, V);
    /* Repeated tokens hit the same row, so split the columns, not the tokens: every
     * element still adds its tokens in token order. */
    int nblk = (D + MK_COL_BLOCK - 1) / MK_COL_BLOCK;
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int bk = 0; bk < nblk; bk++) {
        int c0 = bk * MK_COL_BLOCK, c1 = c0 + MK_COL_BLOCK < D ? c0 + MK_COL_BLOCK : D;
        for (int n = 0; n < N; n++) {
            mk_real *dst = dwte + (size_t)tokens[n] * D;
            const mk_real *src = dout + (size_t)n * D;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ RMSNorm */

static int cpu_rmsnorm_forward(mk_backend *be, mk_real *out, mk_real *rstd, const mk_real *x,
                               const mk_real *g, int N, int D)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const mk_real *xr = x + (size_t)n * D;
        mk_real *o = out + (size_t)n * D;
        double ss = 0;
        for (int i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
        mk_real r = (mk_real)(1.0 / sqrt(ss / D + MK_RMS_EPS));
        rstd[n] = r;
        for (int i = 0; i < D; i++) o[i] = xr[i] * r * g[i];
    }
    return MK_OK;
}

static int cpu_rmsnorm_backward(mk_backend *be, mk_real *dx, mk_real *dg, const mk_real *dout,
                                const mk_real *x, const mk_real *g, const mk_real *rstd, int N,
                                int D)
{
    int nt = cpu_threads(be);
    /* dx_j = r g_j dy_j - (r^3 / D) x_j sum_i g_i dy_i x_i, from d r / d x_j = -r^3 x_j / D. */
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const mk_real *xr = x + (size_t)n * D, *dy = dout + (size_t)n * D;
        mk_real *dxr = dx + (size_t)n * D;
        double r = rstd[n], dot = 0;
        for (int i = 0; i < D; i++) dot += (double)g[i] * dy[i] * xr[i];
        double c = r * r * r * dot / D;
        for (int i = 0; i < D; i++) dxr[i] += (mk_real)(r * g[i] * dy[i] - c * xr[i]);
    }
    /* dg sums over tokens: split the columns so each sum runs in token order. */
    int nblk = (D + MK_COL_BLOCK - 1) / MK_COL_BLOCK;
    MK_PARALLEL_FOR(nt)
    for (int bk = 0; bk < nblk; bk++) {
        int c0 = bk * MK_COL_BLOCK, c1 = c0 + MK_COL_BLOCK < D ? c0 + MK_COL_BLOCK : D;
        double acc[MK_COL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const mk_real *xr = x + (size_t)n * D, *dy = dout + (size_t)n * D;
            double r = rstd[n];
            for (int c = c0; c < c1; c++) acc[c - c0] += (double)dy[c] * xr[c] * r;
        }
        for (int c = c0; c < c1; c++) dg[c] += (mk_real)acc[c - c0];
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ attention */

static int check_heads(const char *op, int D, int H)
{
    if (H <= 0 || D <= 0 || D % H != 0)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: width %d not divisible into %d heads", op, D, H);
    return MK_OK;
}

/* Shared by forward and backward: sign = +1 rotates by +angle, -1 by -angle (the
 * inverse, which is also the transpose, so it is the backward). */
static int rope_apply(mk_backend *be, const char *op, mk_real *qkv, int B, int T, int D, int H,
                      double theta, double sign)
{
    MK_CHECK(check_heads(op, D, H));
    int hd = D / H;
    if (hd % 2 != 0) return MK_FAIL(MK_ERR_INTERNAL, "%s: head size %d is odd", op, hd);
    if (T <= 0 || !(theta > 0))
        return MK_FAIL(MK_ERR_INTERNAL, "%s: sequence length %d, theta %g", op, T, theta);
    const int N = B * T, half = hd / 2;
    /* cos/sin of every (position, pair) once per call instead of once per token and head.
     * Angles in double: pos * freq reaches thousands of radians at long T. */
    double *cs = malloc((size_t)T * half * 2 * sizeof *cs);
    if (!cs) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory for the angle table", op);
    for (int pos = 0; pos < T; pos++)
        for (int i = 0; i < half; i++) {
            double ang = pos * pow(theta, -2.0 * i / hd);
            cs[((size_t)pos * half + i) * 2] = cos(ang);
            cs[((size_t)pos * half + i) * 2 + 1] = sign * sin(ang);
        }
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const double *cp = cs + (size_t)(n % T) * half * 2;
        mk_real *row = qkv + (size_t)n * 3 * D;
        for (int i = 0; i < half; i++) {
            const double c = cp[2 * i], s = cp[2 * i + 1];
            /* Only q (0..D-1) and k (D..2D-1); v passes through. */
            for (int col = 2 * i; col < 2 * D; col += hd) {
                double x0 = row[col], x1 = row[col + 1];
                row[col] = (mk_real)(x0 * c - x1 * s);
                row[col + 1] = (mk_real)(x0 * s + x1 * c);
            }
        }
    }
    free(cs);
    return MK_OK;
}

static int cpu_rope_forward(mk_backend *be, mk_real *qkv, int B, int T, int D, int H, double theta)
{
    return rope_apply(be, "rope_forward", qkv, B, T, D, H, theta, 1.0);
}

static int cpu_rope_backward(mk_backend *be, mk_real *dqkv, int B, int T, int D, int H,
                             double theta)
{
    return rope_apply(be, "rope_backward", dqkv, B, T, D, H, theta, -1.0);
}

/* Attention runs per (sequence, head) pair as small GEMMs over strided views of qkv: the
 * pair's rows of q, k, v are T rows of hd columns with leading dimension 3D. Each pair is one
 * task and writes only its own columns, so tasks need no synchronisation and the result does
 * not depend on the thread count. The full T x T score block is computed and its upper
 * triangle masked: at the T of CPU runs that beats skipping it in scalar loops. */
static int cpu_attention_forward(mk_backend *be, mk_real *out, mk_real *att, const mk_real *qkv,
                                 int B, int T, int D, int H)
{
    MK_CHECK(check_heads("attention_forward", D, H));
    const int hd = D / H, ld = 3 * D;
    const mk_real scale = (mk_real)(1.0 / sqrt((double)hd));
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const mk_real *q = qkv + (size_t)b * T * ld + (size_t)h * hd;
        const mk_real *k = q + D, *v = q + 2 * D;
        mk_real *a = att + (size_t)bh * T * T;
        MK_GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ld, k, ld, 0, a, T);
        for (int t = 0; t < T; t++) {
            mk_real *row = a + (size_t)t * T;
            mk_real mx = row[0];
            for (int t2 = 1; t2 <= t; t2++) mx = row[t2] > mx ? row[t2] : mx;
            double sum = 0;
            for (int t2 = 0; t2 <= t; t2++) {
                row[t2] = MK_EXP(row[t2] - mx);
                sum += row[t2];
            }
            const mk_real inv = (mk_real)(1.0 / sum);
            for (int t2 = 0; t2 <= t; t2++) row[t2] *= inv;
            for (int t2 = t + 1; t2 < T; t2++) row[t2] = 0;
        }
        MK_GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1, a, T, v, ld, 0,
                out + (size_t)b * T * D + (size_t)h * hd, D);
    }
    return MK_OK;
}

static int cpu_attention_backward(mk_backend *be, mk_real *dqkv, mk_real *datt,
                                  const mk_real *dout, const mk_real *qkv, const mk_real *att,
                                  int B, int T, int D, int H)
{
    MK_CHECK(check_heads("attention_backward", D, H));
    const int hd = D / H, ld = 3 * D;
    const mk_real scale = (mk_real)(1.0 / sqrt((double)hd));
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t off = (size_t)b * T * ld + (size_t)h * hd;
        const mk_real *q = qkv + off, *k = q + D, *v = q + 2 * D;
        mk_real *dq = dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
        const mk_real *dy = dout + (size_t)b * T * D + (size_t)h * hd;
        const mk_real *a = att + (size_t)bh * T * T;
        mk_real *da = datt + (size_t)bh * T * T;
        /* dP = dO V^T; dS = P (dP - rowsum(P dP)) * scale; then dQ, dK, dV. */
        MK_GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1, dy, D, v, ld, 0, da, T);
        for (int t = 0; t < T; t++) {
            const mk_real *p = a + (size_t)t * T;
            mk_real *d = da + (size_t)t * T;
            double dot = 0;
            for (int t2 = 0; t2 <= t; t2++) dot += (double)p[t2] * d[t2];
            for (int t2 = 0; t2 <= t; t2++) d[t2] = p[t2] * (d[t2] - (mk_real)dot) * scale;
            for (int t2 = t + 1; t2 < T; t2++) d[t2] = 0;
        }
        MK_GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1, da, T, k, ld, 0, dq, ld);
        MK_GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1, da, T, q, ld, 0, dk, ld);
        MK_GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1, a, T, dy, D, 0, dv, ld);
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ router */

static int cpu_router_forward(mk_backend *be, mk_real *probs, mk_real *lse, int32_t *topk,
                              mk_real *gates, int32_t *counts, mk_real *psum, int32_t *bad_out,
                              const mk_real *z, int N, int E, int K, int norm_topk)
{
    if (E <= 0 || K <= 0 || K > E)
        return MK_FAIL(MK_ERR_INTERNAL, "router_forward: top-%d of %d experts", K, E);
    int nt = cpu_threads(be), bad = 0;
    MK_PARALLEL_FOR_OR(nt, bad)
    for (int n = 0; n < N; n++) {
        const mk_real *zr = z + (size_t)n * E;
        mk_real *p = probs + (size_t)n * E;
        int32_t *tk = topk + (size_t)n * K;
        mk_real *gt = gates + (size_t)n * K;
        /* Softmax and lse in double whatever mk_real is: the router is fp32-or-wider. */
        double mx = zr[0];
        for (int e = 0; e < E; e++) {
            if (zr[e] > mx) mx = zr[e];
            if (!isfinite(zr[e])) bad = 1; /* -Inf too: the sum below stays finite */
        }
        double sum = 0;
        for (int e = 0; e < E; e++) sum += exp((double)zr[e] - mx);
        for (int e = 0; e < E; e++) p[e] = (mk_real)(exp((double)zr[e] - mx) / sum);
        lse[n] = (mk_real)(mx + log(sum));
        /* Selection in the total order (prob descending, index ascending): the j-th pick is
         * the largest element below the (j-1)-th, so no "already taken" set is needed. */
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                if (j > 0) {
                    int prev = tk[j - 1];
                    int below = p[e] < p[prev] || (p[e] == p[prev] && e > prev);
                    if (!below) continue;
                }
                if (best < 0 || p[e] > p[best]) best = e;
            }
            /* NaN probabilities leave nothing "below": keep the index valid, report it. */
            if (best < 0) {
                best = 0;
                bad = 1;
            }
            tk[j] = best;
        }
        if (!isfinite(sum)) bad = 1;
        double gs = 0;
        for (int j = 0; j < K; j++) gs += p[tk[j]];
        for (int j = 0; j < K; j++)
            gt[j] = norm_topk ? (mk_real)(p[tk[j]] / gs) : p[tk[j]];
    }
    if (bad && !bad_out) return MK_FAIL(MK_ERR_NUMERIC, "router_forward: non-finite router logits");
    if (bad_out) *bad_out = bad;
    /* Token-order sums: O(N E), cheap next to the router GEMM, and serial keeps the order. */
    for (int e = 0; e < E; e++) counts[e] = 0;
    for (size_t s = 0; s < (size_t)N * K; s++) counts[topk[s]]++;
    MK_PARALLEL_FOR(nt)
    for (int e = 0; e < E; e++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += probs[(size_t)n * E + e];
        psum[e] = (mk_real)acc;
    }
    return MK_OK;
}

static int cpu_router_backward(mk_backend *be, mk_real *dz, const mk_real *dgates,
                               const mk_real *lbl_ds, mk_real zloss_scale, const mk_real *probs,
                               const mk_real *lse, const int32_t *topk, const mk_real *gates,
                               int N, int E, int K, int norm_topk)
{
    if (E <= 0 || K <= 0 || K > E)
        return MK_FAIL(MK_ERR_INTERNAL, "router_backward: top-%d of %d experts", K, E);
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const mk_real *p = probs + (size_t)n * E;
        const mk_real *dg = dgates + (size_t)n * K, *gt = gates + (size_t)n * K;
        const int32_t *tk = topk + (size_t)n * K;
        mk_real *d = dz + (size_t)n * E;
        /* The dz row holds dL/dprobs first, then becomes dL/dz in place. */
        for (int e = 0; e < E; e++) d[e] = lbl_ds ? lbl_ds[e] : 0;
        if (norm_topk) {
            /* g_j = s_j / S over the chosen: dL/ds_j = (dg_j - sum_k dg_k g_k) / S. */
            double S = 0, c = 0;
            for (int j = 0; j < K; j++) {
                S += p[tk[j]];
                c += (double)dg[j] * gt[j];
            }
            for (int j = 0; j < K; j++) d[tk[j]] += (mk_real)(((double)dg[j] - c) / S);
        } else {
            for (int j = 0; j < K; j++) d[tk[j]] += dg[j];
        }
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)p[e] * d[e];
        double zl = 2.0 * (double)zloss_scale * lse[n];
        for (int e = 0; e < E; e++) d[e] = (mk_real)(p[e] * ((double)d[e] - dot + zl));
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ dispatch and combine */

static int cpu_sequence_counts(mk_backend *be, int32_t *counts, const int32_t *topk, int B, int S, int E)
{
    (void)be;
    if (B < 0 || S < 0 || E <= 0)
        return MK_FAIL(MK_ERR_INTERNAL, "sequence_counts: B %d, S %d, E %d", B, S, E);
    memset(counts, 0, (size_t)B * E * sizeof *counts);
    for (int b = 0; b < B; b++)
        for (size_t i = (size_t)b * S; i < (size_t)(b + 1) * S; i++) {
            if (topk[i] < 0 || topk[i] >= E)
                return MK_FAIL(MK_ERR_INTERNAL, "sequence_counts: expert %d of choice %zu outside 0..%d",
                               topk[i], i, E - 1);
            counts[(size_t)b * E + topk[i]]++;
        }
    return MK_OK;
}

static int cpu_route_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row,
                          const int32_t *topk, int N, int E, int K, int capacity)
{
    (void)be;
    if (E <= 0 || K <= 0 || N < 0 || capacity < 0)
        return MK_FAIL(MK_ERR_INTERNAL, "route_plan: N %d, E %d, K %d, capacity %d", N, E, K,
                       capacity);
    size_t S = (size_t)N * K;
    for (size_t s = 0; s < S; s++)
        if (topk[s] < 0 || topk[s] >= E)
            return MK_FAIL(MK_ERR_INTERNAL, "route_plan: expert %d of choice %zu outside 0..%d",
                           (int)topk[s], s, E - 1);
    int32_t *fill = calloc((size_t)E, sizeof *fill);
    if (!fill) return MK_FAIL(MK_ERR_NOMEM, "route_plan: cannot allocate %d counters", E);
    /* Counting sort: the kept rows per expert, their prefix sums, then one pass in choice
     * order that places each choice or drops it once its expert is full. */
    for (size_t s = 0; s < S; s++) fill[topk[s]]++;
    offs[0] = 0;
    for (int e = 0; e < E; e++) {
        int kept = capacity > 0 && fill[e] > capacity ? capacity : fill[e];
        offs[e + 1] = offs[e] + kept;
        fill[e] = 0;
    }
    for (size_t s = 0; s < S; s++) {
        int e = topk[s];
        if (capacity > 0 && fill[e] >= capacity) {
            slot_row[s] = -1;
            continue;
        }
        int32_t r = offs[e] + fill[e]++;
        row_slot[r] = (int32_t)s;
        slot_row[s] = r;
    }
    /* Rows past R are unused; fill them so the outputs are fully defined. */
    for (size_t r = (size_t)offs[E]; r < S; r++) row_slot[r] = -1;
    free(fill);
    return MK_OK;
}

static int cpu_ep_send_plan(mk_backend *be, int32_t *offs, int32_t *row_tok, int32_t *row_of, mk_ep_rec *rec,
                            int32_t *back_of, const int32_t *topk, const int32_t *slot_row, const mk_real *gates,
                            int N, int K, int El, int P)
{
    (void)be;
    if (N < 0 || K <= 0 || El <= 0 || P <= 0)
        return MK_FAIL(MK_ERR_INTERNAL, "ep_send_plan: N %d, K %d, El %d, P %d", N, K, El, P);
    const size_t NK = (size_t)N * K, NP = (size_t)N * P;
    /* One pass over the choices marks the ranks each token goes to (-2), a second numbers
     * the rows rank by rank, a third writes the records. */
    for (size_t i = 0; i < NP; i++) row_of[i] = -1;
    for (size_t c = 0; c < NK; c++) {
        if (slot_row[c] < 0) continue; /* dropped by the capacity factor */
        const int q = topk[c] / El;
        if (topk[c] < 0 || q >= P)
            return MK_FAIL(MK_ERR_INTERNAL, "ep_send_plan: choice %zu names expert %d of %d", c, topk[c], El * P);
        row_of[(c / (size_t)K) * P + q] = -2;
    }
    int32_t r = 0;
    offs[0] = 0;
    for (int q = 0; q < P; q++) {
        for (size_t t = 0; t < (size_t)N; t++) {
            int32_t *mark = &row_of[t * P + q];
            if (*mark != -2) continue;
            *mark = r;
            row_tok[r] = (int32_t)(t * P + (size_t)q);
            for (int j = 0; j < K; j++) rec[(size_t)r * K + j] = (mk_ep_rec){0, -1, 0};
            r++;
        }
        offs[q + 1] = r;
    }
    for (size_t c = 0; c < NK; c++) {
        if (slot_row[c] < 0) {
            back_of[c] = -1;
            continue;
        }
        const size_t row = (size_t)row_of[(c / (size_t)K) * P + topk[c] / El], j = c % (size_t)K;
        rec[row * K + j] = (mk_ep_rec){gates[c], topk[c] % El, 0};
        back_of[c] = (int32_t)(row * K + j);
    }
    return MK_OK;
}

static int cpu_ep_recv_plan(mk_backend *be, int32_t *offs, int32_t *row_slot, int32_t *slot_row, mk_real *gates,
                            const mk_ep_rec *rec, int S, int El)
{
    (void)be;
    if (S < 0 || El <= 0) return MK_FAIL(MK_ERR_INTERNAL, "ep_recv_plan: S %d, El %d", S, El);
    /* A counting sort: one pass to count, one to place, arrival order kept within an
     * expert. */
    for (int x = 0; x <= El + 1; x++) offs[x] = 0;
    for (int s = 0; s < S; s++) {
        const int32_t x = rec[s].id;
        if (x >= El || x < -1) offs[El + 1]++;
        else if (x >= 0) offs[x + 1]++;
        gates[s] = rec[s].g;
    }
    for (int x = 0; x < El; x++) offs[x + 1] += offs[x];
    int32_t *next = malloc((size_t)El * sizeof *next);
    if (!next) return MK_FAIL(MK_ERR_NOMEM, "ep_recv_plan: cannot allocate %d counters", El);
    memcpy(next, offs, (size_t)El * sizeof *next);
    for (int s = 0; s < S; s++) {
        const int32_t x = rec[s].id;
        if (x < 0 || x >= El) {
            slot_row[s] = -1;
            continue;
        }
        const int32_t row = next[x]++;
        row_slot[row] = s;
        slot_row[s] = row;
    }
    for (int r = offs[El]; r < S; r++) row_slot[r] = -1;
    free(next);
    return MK_OK;
}

static int cpu_ep_gate_grads(mk_backend *be, mk_real *dgates, const mk_real *dg, const int32_t *back_of, int n)
{
    (void)be;
    for (int c = 0; c < n; c++) dgates[c] = back_of[c] < 0 ? 0 : dg[back_of[c]];
    return MK_OK;
}

static int cpu_permute_rows(mk_backend *be, mk_real *dst, const mk_real *src,
                            const int32_t *row_slot, const mk_real *weights, int R, int K, int D)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int r = 0; r < R; r++) {
        int32_t s = row_slot[r];
        const mk_real *x = src + (size_t)(s / K) * D;
        mk_real *y = dst + (size_t)r * D;
        if (weights) {
            mk_real w = weights[s];
            for (int i = 0; i < D; i++) y[i] = w * x[i];
        } else {
            memcpy(y, x, (size_t)D * sizeof(mk_real));
        }
    }
    return MK_OK;
}

static int cpu_unpermute_add(mk_backend *be, mk_real *dst, const mk_real *src,
                             const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    int nt = cpu_threads(be);
    /* Gather per token (not scatter per row), so each dst row has one writer and its
     * choices are added in j order. */
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        mk_real *y = dst + (size_t)n * D;
        for (int j = 0; j < K; j++) {
            size_t s = (size_t)n * K + j;
            int32_t r = slot_row[s];
            if (r < 0) continue;
            const mk_real *x = src + (size_t)r * D;
            mk_real w = weights ? weights[s] : 1;
            for (int i = 0; i < D; i++) y[i] += w * x[i];
        }
    }
    return MK_OK;
}

/* Expert rows are fp32 here: unpermute_add onto base. */
static int cpu_combine_rows(mk_backend *be, mk_real *dst, const mk_real *base, const mk_real *src,
                            const int32_t *slot_row, const mk_real *weights, int N, int K, int D)
{
    if (base && base != dst) memcpy(dst, base, (size_t)N * D * sizeof *dst);
    if (!base) memset(dst, 0, (size_t)N * D * sizeof *dst);
    return cpu_unpermute_add(be, dst, src, slot_row, weights, N, K, D);
}

static int cpu_combine_backward_gates(mk_backend *be, mk_real *dgates, const mk_real *dout,
                                      const mk_real *y, const int32_t *slot_row, int N, int K,
                                      int D)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const mk_real *dy = dout + (size_t)n * D;
        for (int j = 0; j < K; j++) {
            size_t s = (size_t)n * K + j;
            int32_t r = slot_row[s];
            double acc = 0;
            if (r >= 0) {
                const mk_real *x = y + (size_t)r * D;
                for (int i = 0; i < D; i++) acc += (double)dy[i] * x[i];
            }
            dgates[s] = (mk_real)acc;
        }
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ SwiGLU */

static mk_real sigmoid(mk_real a)
{
    /* exp(-a) overflows to inf for very negative a, which correctly gives 0. */
    return 1 / (1 + MK_EXP(-a));
}

static int cpu_swiglu_forward(mk_backend *be, mk_real *h, const mk_real *a, const mk_real *b,
                              size_t n)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (size_t i = 0; i < n; i++) h[i] = (mk_real)(a[i] * sigmoid(a[i]) * b[i]);
    return MK_OK;
}

static int cpu_swiglu_backward(mk_backend *be, mk_real *da, mk_real *db, const mk_real *dh,
                               const mk_real *a, const mk_real *b, size_t n)
{
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (size_t i = 0; i < n; i++) {
        const mk_real x = a[i], sg = sigmoid(x), g = dh[i], bi = b[i];
        /* silu'(x) = s + x s (1 - s). Read everything first: da or db may alias an input. */
        da[i] = g * bi * (sg + x * sg * (1 - sg));
        db[i] = g * x * sg;
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ loss */

static int cpu_cross_entropy(mk_backend *be, mk_real *losses, mk_real *dlogits,
                             const mk_real *logits, const int32_t *targets, int N, int V,
                             mk_real dscale)
{
    if (V <= 0) return MK_FAIL(MK_ERR_INTERNAL, "cross_entropy: vocabulary size %d", V);
    for (int n = 0; n < N; n++)
        if (targets[n] >= V)
            return MK_FAIL(MK_ERR_INPUT, "cross_entropy: target %d at position %d outside "
                           "vocabulary %d", (int)targets[n], n, V);
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (int n = 0; n < N; n++) {
        const mk_real *l = logits + (size_t)n * V;
        int tgt = targets[n];
        if (tgt < 0) {
            losses[n] = 0;
            if (dlogits) memset(dlogits + (size_t)n * V, 0, (size_t)V * sizeof(mk_real));
            continue;
        }
        mk_real mx = l[0];
        for (int i = 1; i < V; i++)
            if (l[i] > mx) mx = l[i];
        /* exp in the working precision, the sum in double: V terms of similar size. */
        double sum = 0;
        for (int i = 0; i < V; i++) sum += MK_EXP(l[i] - mx);
        const double lse = mx + log(sum);
        /* The loss is read before dlogits (which may alias logits) is written. */
        losses[n] = (mk_real)(lse - l[tgt]);
        if (dlogits) {
            mk_real *d = dlogits + (size_t)n * V;
            const mk_real lse_r = (mk_real)lse;
            for (int i = 0; i < V; i++) {
                mk_real p = MK_EXP(l[i] - lse_r);
                d[i] = dscale * (p - (mk_real)(i == tgt));
            }
        }
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ optimizer */

static int cpu_adamw(mk_backend *be, mk_real *p, const mk_real *g, mk_real *m, mk_real *v,
                     size_t n, mk_real gscale, double lr, double beta1, double beta2, double eps,
                     double wd, long t)
{
    if (t < 1) return MK_FAIL(MK_ERR_INTERNAL, "adamw: step %ld, steps start at 1", t);
    /* Reciprocals of the bias corrections, multiplied in: two divisions per element less
     * (the CUDA backend's update, bandwidth-bound on the GPU, does the same arithmetic). */
    const double ibc1 = 1.0 / (1.0 - pow(beta1, (double)t)), ibc2 = 1.0 / (1.0 - pow(beta2, (double)t));
    int nt = cpu_threads(be);
    MK_PARALLEL_FOR(nt)
    for (size_t i = 0; i < n; i++) {
        double gi = (mk_real)(gscale * g[i]);
        double mi = beta1 * m[i] + (1.0 - beta1) * gi;
        double vi = beta2 * v[i] + (1.0 - beta2) * gi * gi;
        m[i] = (mk_real)mi;
        v[i] = (mk_real)vi;
        double pi = p[i];
        /* Decoupled weight decay on the old p, in the same update. */
        p[i] = (mk_real)(pi - lr * ((mi * ibc1) / (sqrt(vi * ibc2) + eps) + wd * pi));
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ lifetime */

static int cpu_sync(mk_backend *be)
{
    (void)be;
    return MK_OK;
}

static void cpu_destroy(mk_backend *be)
{
    if (!be) return;
    free(be->impl);
    free(be);
}

static const mk_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .matmul = cpu_matmul,
    .grouped_matmul = mk_grouped_matmul_by_expert,
    .grouped_matmul_wgrad = mk_grouped_matmul_wgrad_by_expert,
    .add = cpu_add,
    .scale = cpu_scale,
    .sumsq = cpu_sumsq,
    .sumsq_ranges = cpu_sumsq_ranges,
    .nonfinite = cpu_nonfinite,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .router_forward = cpu_router_forward,
    .router_backward = cpu_router_backward,
    .route_plan = cpu_route_plan,
    .ep_send_plan = cpu_ep_send_plan,
    .ep_recv_plan = cpu_ep_recv_plan,
    .ep_gate_grads = cpu_ep_gate_grads,
    .sequence_counts = cpu_sequence_counts,
    .permute_rows = cpu_permute_rows,
    .unpermute_add = cpu_unpermute_add,
    .combine_rows = cpu_combine_rows,
    .combine_backward_gates = cpu_combine_backward_gates,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .cross_entropy = cpu_cross_entropy,
    .adamw = cpu_adamw,
    .sync = cpu_sync,
    .destroy = cpu_destroy,
};

int mk_backend_cpu_create(int threads, mk_backend **out)
{
    *out = NULL;
    mk_backend *be = calloc(1, sizeof *be);
    cpu_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return MK_FAIL(MK_ERR_NOMEM, "cpu backend: cannot allocate its state");
    }
    im->threads = threads;
    if (threads > 0) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
    }
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    /* GEMMs are split over OpenMP threads in cpu_matmul; BLAS's own pool would compete. */
    openblas_set_num_threads(1);
#endif
    be->ops = &cpu_ops;
    be->impl = im;
    *out = be;
    return MK_OK;
}

void mk_backend_destroy(mk_backend **be)
{
    if (!be || !*be) return;
    (*be)->ops->destroy(*be);
    *be = NULL;
}
