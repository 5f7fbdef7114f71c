/* test_cuda_backend.c - the CUDA backend against the CPU reference, op by op and as a model.
 *
 * Every op of mk_backend.h runs on the same random inputs through the CPU backend (host
 * memory) and the CUDA backend (uploaded with ops->from_host, downloaded with ops->to_host),
 * and the outputs are compared: ~1e-4 relative for GEMM-based ops and attention, ~1e-5 for
 * element-wise ops, exact equality for integer outputs (topk, counts, offs, row_slot,
 * slot_row). Then a whole model (forward, backward) is built on each backend from the same
 * config and seed, and the loss, statistics and every gradient tensor are compared; and the
 * CUDA model's forward + backward is run twice to check the gradients are bit-identical.
 *
 * Skips (TAP "1..0 # SKIP") where no CUDA device is visible.
 *
 * The config is filled field by field (not through mk_config_set), so the test needs no
 * INI parser. Built with -DMK_CUDA_TEST_STANDALONE it also defines the few symbols of
 * mk_config.c and mk_comm.c that the model sources reference (mk_config_validate, and comm
 * calls only reached with expert parallelism), so it links from mk_backend_cpu.c,
 * mk_model.c, mk_moe_ep.c, mk_lbl.c, mk_rng.c and mk_error.c alone: BLAS + CUDA, no
 * libinih, no MPI.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda/mk_backend_cuda.h"
#include "cuda/mk_flash_attn.h"
#include "cuda/mk_gg_cutlass.h"
#include "cuda/mk_grouped_gemm.h"
#include "mk_backend.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "mk_model.h"
#include "tap.h"

/* Tolerances: |got - want| <= atol + rtol |want|. */
#define RT_GEMM 1e-4
#define AT_GEMM 2e-5
#define RT_EW 1e-5
#define AT_EW 1e-6
#define MODEL_RTOL 1e-3

static mk_backend *cpu, *gpu;

/* ------------------------------------------------------------------ standalone link */

#ifdef MK_CUDA_TEST_STANDALONE
/* The config below is valid by construction; the real check lives in mk_config.c, which
 * needs libinih. */
int mk_config_validate(const mk_config *cfg)
{
    (void)cfg;
    return MK_OK;
}

/* Only reached with parallel.ep > 1 (a non-NULL comm); this test uses ep = 1. */
int mk_comm_size(const mk_comm *c)
{
    (void)c;
    return 1;
}

int mk_comm_rank(const mk_comm *c)
{
    (void)c;
    return 0;
}

int mk_comm_alltoallv(const mk_comm *c, const void *send, const size_t *send_counts,
                      const size_t *send_displs, void *recv, const size_t *recv_counts,
                      const size_t *recv_displs)
{
    (void)c, (void)send, (void)send_counts, (void)send_displs, (void)recv, (void)recv_counts,
        (void)recv_displs;
    return MK_FAIL(MK_ERR_INTERNAL, "test build without MPI: no all-to-all");
}

int mk_comm_alltoall_int(const mk_comm *c, const int64_t *send, int64_t *recv)
{
    (void)c, (void)send, (void)recv;
    return MK_FAIL(MK_ERR_INTERNAL, "test build without MPI: no all-to-all");
}
#endif

/* ------------------------------------------------------------------ buffers */

/* Host and device buffers of one test case, freed together at its end. */
static void *harena[1024], *darena[1024];
static int nharena, ndarena;

static void bail(const char *what)
{
    printf("Bail out! %s\n", what);
    exit(1);
}

static void *H(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p || nharena == (int)(sizeof harena / sizeof *harena)) bail("host allocation");
    harena[nharena++] = p;
    return p;
}

static float *Hf(size_t n) { return H(n * sizeof(float)); }
static int32_t *Hi(size_t n) { return H(n * sizeof(int32_t)); }

/* A zero-filled device buffer. */
static void *Dz(size_t bytes)
{
    void *p = NULL;
    if (ndarena == (int)(sizeof darena / sizeof *darena) ||
        gpu->ops->alloc(gpu, bytes, &p) != MK_OK)
        bail("device allocation");
    darena[ndarena++] = p;
    return p;
}

/* A device copy of a host buffer. */
static void *D(const void *host, size_t bytes)
{
    void *p = Dz(bytes);
    if (gpu->ops->from_host(gpu, p, host, bytes) != MK_OK) bail("from_host");
    return p;
}

/* A host copy of a device buffer (a new host buffer). */
static void *G(const void *dev, size_t bytes)
{
    void *h = H(bytes);
    if (gpu->ops->to_host(gpu, h, dev, bytes) != MK_OK) bail("to_host");
    return h;
}

static float *Gf(const float *dev, size_t n) { return G(dev, n * sizeof(float)); }

/* bf16 (round to nearest even; no NaN in these tests) and back. */
static uint16_t bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float float_of_bf16(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* n bf16 on the device (the bf16 mode's expert rows), widened. */
static float *Gbf(const void *dev, size_t n)
{
    const uint16_t *h = G(dev, n * 2);
    float *f = Hf(n);
    for (size_t i = 0; i < n; i++) f[i] = float_of_bf16(h[i]);
    return f;
}
static int32_t *Gi(const int32_t *dev, size_t n) { return G(dev, n * sizeof(int32_t)); }

static void arena_free(void)
{
    while (nharena > 0) free(harena[--nharena]);
    while (ndarena > 0) gpu->ops->free(gpu, darena[--ndarena]);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1): xorshift64*, so runs repeat exactly. */
static double rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 2685821657736338717ull;
    return (double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static int rnd_below(int n)
{
    int v = (int)((rnd() + 1.0) * 0.5 * n);
    return v < n ? v : n - 1;
}

static float *Hrand(size_t n, double scale)
{
    float *x = Hf(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rnd());
    return x;
}

static float *Hcopy(const float *src, size_t n)
{
    float *x = Hf(n);
    memcpy(x, src, n * sizeof *x);
    return x;
}

/* ------------------------------------------------------------------ checks */

/* Both backends returned MK_OK; one TAP line only on failure. */
static int both_ok(int rc_cpu, int rc_gpu, const char *what)
{
    if (rc_cpu == MK_OK && rc_gpu == MK_OK) return 1;
    tap_ok(0, "%s: cpu returned %d (%s), cuda %d (%s)", what, rc_cpu, mk_status_name(rc_cpu),
           rc_gpu, mk_status_name(rc_gpu));
    return 0;
}

/* One TAP line per array: the worst element against |got - want| <= atol + rtol |want|. */
static int check_arr(const float *got, const float *want, size_t n, double rtol, double atol,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int check_arr(const float *got, const float *want, size_t n, double rtol, double atol,
                     const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n == 0) return tap_ok(1, "%s (empty)", name);
    size_t worst = 0;
    double worst_excess = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double ex = fabs((double)got[i] - want[i]) - (atol + rtol * fabs((double)want[i]));
        if (!isfinite((double)got[i]) || !isfinite((double)want[i])) ex = INFINITY;
        if (ex > worst_excess) {
            worst_excess = ex;
            worst = i;
        }
    }
    return tap_close(got[worst], want[worst], rtol, atol, "%s (worst at %zu of %zu)", name, worst, n);
}

static int check_ints(const int32_t *got, const int32_t *want, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int check_ints(const int32_t *got, const int32_t *want, size_t n, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            tap_ok(0, "%s: equal (%zu ints)", name, n);
            tap_diag("first difference at %zu: got %d, want %d", i, (int)got[i], (int)want[i]);
            return 0;
        }
    return tap_ok(1, "%s: equal (%zu ints)", name, n);
}

/* ------------------------------------------------------------------ memory */

static void test_memory(void)
{
    unsigned char *p = Dz(1000), *h = G(p, 1000);
    int zero = 1;
    for (int i = 0; i < 1000; i++) zero &= h[i] == 0;
    tap_ok(zero, "alloc zero-fills");
    void *z = NULL;
    tap_ok(gpu->ops->alloc(gpu, 0, &z) == MK_OK && z != NULL, "alloc of 0 bytes gives a pointer");
    gpu->ops->free(gpu, z);
    gpu->ops->free(gpu, NULL);

    float host[5] = {1, -2, 3.5f, 4, 5}, back[5];
    float *a = D(host, sizeof host), *b = Dz(sizeof host);
    int rc = gpu->ops->copy(gpu, b, a, sizeof host);
    rc |= gpu->ops->to_host(gpu, back, b, sizeof host);
    tap_ok(rc == MK_OK && memcmp(back, host, sizeof host) == 0, "from_host, copy, to_host round trip");
    rc = gpu->ops->zero(gpu, b, sizeof host);
    float *hb = Gf(b, 5), *ha = Gf(a, 5);
    tap_ok(rc == MK_OK && hb[0] == 0 && hb[4] == 0 && ha[4] == 5, "zero clears only its buffer");

    /* Overlapping copy behaves like memmove (the CPU backend's copy). */
    float buf[64], want[64];
    for (int i = 0; i < 64; i++) buf[i] = want[i] = (float)i;
    memmove(want + 3, want, 40 * sizeof *want);
    float *d = D(buf, sizeof buf);
    rc = gpu->ops->copy(gpu, d + 3, d, 40 * sizeof *buf);
    float *got = Gf(d, 64);
    tap_ok(rc == MK_OK && memcmp(got, want, sizeof want) == 0, "overlapping copy is a memmove");
    arena_free();
}

/* ------------------------------------------------------------------ dense algebra */

static void one_matmul(int M, int N, int K, int ta, int tb, float alpha, float beta)
{
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *A = Hrand(na, 1), *B = Hrand(nb, 1), *C = Hrand(nc, 1);
    float *dA = D(A, na * 4), *dB = D(B, nb * 4), *dC = D(C, nc * 4);
    int r1 = cpu->ops->matmul(cpu, C, A, B, M, N, K, ta, tb, alpha, beta);
    int r2 = gpu->ops->matmul(gpu, dC, dA, dB, M, N, K, ta, tb, alpha, beta);
    if (both_ok(r1, r2, "matmul"))
        check_arr(Gf(dC, nc), C, nc, RT_GEMM, AT_GEMM * sqrt((double)K + 1),
                  "matmul %dx%dx%d trans_a %d trans_b %d alpha %g beta %g", M, N, K, ta, tb,
                  alpha, beta);
}

static void test_matmul(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            one_matmul(37, 29, 53, ta, tb, 0.7f, -0.3f);
            one_matmul(37, 29, 53, ta, tb, 1, 0);
        }
    one_matmul(300, 200, 500, 0, 1, 1, 1);
    one_matmul(200, 300, 100, 1, 0, 1, 0);
    one_matmul(2, 3, 0, 0, 0, 1, 0.5f); /* empty product: beta * C */
    one_matmul(2, 3, 0, 0, 0, 1, 0);
    arena_free();
}

static void test_grouped(void)
{
    enum { E = 4, K = 24, N = 20, R = 40 };
    const int offs[E + 1] = {0, 10, 10, 31, 40}; /* expert 1 has no rows */
    for (int tw = 0; tw < 2; tw++)
        for (int bi = 0; bi < 2; bi++) {
            float beta = bi ? 0.5f : 0;
            float *A = Hrand((size_t)R * K, 1), *W = Hrand((size_t)E * K * N, 1);
            float *C = Hrand((size_t)R * N, 1);
            float *dA = D(A, sizeof(float) * R * K), *dW = D(W, sizeof(float) * E * K * N);
            float *dC = D(C, sizeof(float) * R * N);
            int r1 = cpu->ops->grouped_matmul(cpu, C, A, W, offs, E, K, N, tw, beta);
            int r2 = gpu->ops->grouped_matmul(gpu, dC, dA, dW, offs, E, K, N, tw, beta);
            if (both_ok(r1, r2, "grouped_matmul"))
                check_arr(Gf(dC, (size_t)R * N), C, (size_t)R * N, RT_GEMM, AT_GEMM * 5,
                          "grouped_matmul trans_w %d beta %g", tw, beta);
        }
    float *A = Hrand((size_t)R * K, 1), *dCh = Hrand((size_t)R * N, 1);
    float *dW = Hrand((size_t)E * K * N, 1); /* accumulates onto what is there */
    float *gA = D(A, sizeof(float) * R * K), *gdC = D(dCh, sizeof(float) * R * N);
    float *gdW = D(dW, sizeof(float) * E * K * N);
    int r1 = cpu->ops->grouped_matmul_wgrad(cpu, dW, A, dCh, offs, E, K, N);
    int r2 = gpu->ops->grouped_matmul_wgrad(gpu, gdW, gA, gdC, offs, E, K, N);
    if (both_ok(r1, r2, "grouped_matmul_wgrad"))
        check_arr(Gf(gdW, (size_t)E * K * N), dW, (size_t)E * K * N, RT_GEMM, AT_GEMM * 5,
                  "grouped_matmul_wgrad accumulates");
    arena_free();
}

/* ------------------------------------------------------------------ element-wise */

static void test_elementwise(void)
{
    const size_t n = 100003;
    float *a = Hrand(n, 3), *b = Hrand(n, 3), *y = Hf(n);
    float *ga = D(a, n * 4), *gb = D(b, n * 4), *gy = Dz(n * 4);
    int r1 = cpu->ops->add(cpu, y, a, b, n), r2 = gpu->ops->add(gpu, gy, ga, gb, n);
    if (both_ok(r1, r2, "add")) check_arr(Gf(gy, n), y, n, 0, 0, "add");
    /* y aliasing a */
    float *a2 = Hcopy(a, n);
    r1 = cpu->ops->add(cpu, a2, a2, b, n);
    r2 = gpu->ops->add(gpu, ga, ga, gb, n);
    if (both_ok(r1, r2, "add (aliased)")) check_arr(Gf(ga, n), a2, n, 0, 0, "add with y aliasing a");
    /* 4 bytes off 16-byte alignment: the element-by-element path */
    r1 = cpu->ops->add(cpu, y + 1, a2 + 1, b + 1, n - 1);
    r2 = gpu->ops->add(gpu, gy + 1, ga + 1, gb + 1, n - 1);
    if (both_ok(r1, r2, "add (unaligned)")) check_arr(Gf(gy + 1, n - 1), y + 1, n - 1, 0, 0, "add, unaligned");

    r1 = cpu->ops->scale(cpu, b, n, -0.37f);
    r2 = gpu->ops->scale(gpu, gb, n, -0.37f);
    if (both_ok(r1, r2, "scale")) check_arr(Gf(gb, n), b, n, 0, 0, "scale");

    const size_t big = 1000003;
    float *x = Hrand(big, 2), *gx = D(x, big * 4);
    double s1 = 0, s2 = 0;
    r1 = cpu->ops->sumsq(cpu, x, big, &s1);
    r2 = gpu->ops->sumsq(gpu, gx, big, &s2);
    if (both_ok(r1, r2, "sumsq")) tap_close(s2, s1, 1e-10, 0, "sumsq of %zu elements", big);
    double s3 = -1;
    r2 = gpu->ops->sumsq(gpu, gx, big, &s3);
    tap_ok(r2 == MK_OK && memcmp(&s2, &s3, sizeof s2) == 0, "sumsq gives the same bits twice");
    r1 = cpu->ops->sumsq(cpu, x, 7, &s1);
    r2 = gpu->ops->sumsq(gpu, gx, 7, &s2);
    if (both_ok(r1, r2, "sumsq small")) tap_close(s2, s1, 1e-12, 0, "sumsq of 7 elements");
    r2 = gpu->ops->sumsq(gpu, gx, 0, &s2);
    tap_ok(r2 == MK_OK && s2 == 0, "sumsq of 0 elements is 0");
    {
        /* ranges in one wait: the bits of a sumsq call each (unaligned starts, an empty range) */
        const size_t off[5] = { 0, 1, 4099, big / 2, 9 }, len[5] = { big, 4098, big / 2 - 4099, 0, 13 };
        double want[5], got[5] = { -1, -1, -1, -1, -1 };
        r2 = MK_OK;
        for (int i = 0; r2 == MK_OK && i < 5; i++) r2 = gpu->ops->sumsq(gpu, gx + off[i], len[i], &want[i]);
        if (r2 == MK_OK) r2 = gpu->ops->sumsq_ranges(gpu, gx, off, len, 5, got);
        tap_ok(r2 == MK_OK && memcmp(want, got, sizeof want) == 0,
               "sumsq_ranges: the bits of sumsq per range (5 ranges of up to %zu elements, unaligned starts, one empty)",
               big);
    }

    int f1 = -1, f2 = -1;
    r1 = cpu->ops->nonfinite(cpu, x, big, &f1);
    r2 = gpu->ops->nonfinite(gpu, gx, big, &f2);
    tap_ok(r1 == MK_OK && r2 == MK_OK && f1 == 0 && f2 == 0, "nonfinite: finite data gives 0");
    const float bad[2] = {INFINITY, NAN};
    for (int k = 0; k < 2; k++) {
        float v = bad[k];
        if (gpu->ops->from_host(gpu, gx + 777777, &v, sizeof v) != MK_OK) bail("from_host");
        f2 = -1;
        r2 = gpu->ops->nonfinite(gpu, gx, big, &f2);
        tap_ok(r2 == MK_OK && f2 == 1, "nonfinite: %s gives 1", k ? "NaN" : "Inf");
    }
    /* from an unaligned start (one element at a time), then a NaN in the last element */
    const size_t from = 777778, len = big - from;
    r2 = gpu->ops->nonfinite(gpu, gx + from, len, &f2);
    tap_ok(r2 == MK_OK && f2 == 0, "nonfinite: finite unaligned data gives 0");
    float nan = NAN;
    if (gpu->ops->from_host(gpu, gx + big - 1, &nan, sizeof nan) != MK_OK) bail("from_host");
    r2 = gpu->ops->nonfinite(gpu, gx + from, len, &f2);
    tap_ok(r2 == MK_OK && f2 == 1, "nonfinite: a NaN in the last of %zu unaligned elements gives 1", len);
    r2 = gpu->ops->nonfinite(gpu, gx, big, &f2);
    tap_ok(r2 == MK_OK && f2 == 1, "nonfinite: a NaN in the last of %zu aligned elements gives 1", (size_t)big);

    /* SwiGLU, with large |a| where exp over/underflows. */
    float *sa = Hrand(n, 8), *sb = Hrand(n, 2), *dh = Hrand(n, 1);
    sa[0] = -100;
    sa[1] = 100;
    sa[2] = -88.5f;
    sa[3] = 0;
    float *h = Hf(n), *da = Hf(n), *db = Hf(n);
    float *gsa = D(sa, n * 4), *gsb = D(sb, n * 4), *gdh = D(dh, n * 4);
    float *gh = Dz(n * 4), *gda = Dz(n * 4), *gdb = Dz(n * 4);
    r1 = cpu->ops->swiglu_forward(cpu, h, sa, sb, n);
    r2 = gpu->ops->swiglu_forward(gpu, gh, gsa, gsb, n);
    if (both_ok(r1, r2, "swiglu_forward")) check_arr(Gf(gh, n), h, n, RT_EW, AT_EW, "swiglu_forward");
    r1 = cpu->ops->swiglu_backward(cpu, da, db, dh, sa, sb, n);
    r2 = gpu->ops->swiglu_backward(gpu, gda, gdb, gdh, gsa, gsb, n);
    if (both_ok(r1, r2, "swiglu_backward")) {
        check_arr(Gf(gda, n), da, n, RT_EW, AT_EW, "swiglu_backward da");
        check_arr(Gf(gdb, n), db, n, RT_EW, AT_EW, "swiglu_backward db");
    }

    /* AdamW, two steps (t = 1 and t = 5, the second with a clipping factor), on the
     * 16-byte-aligned block (four elements per thread) and, from element 1, unaligned. */
    float *p = Hrand(n, 1), *g = Hrand(n, 0.1), *m = Hf(n), *v = Hf(n);
    float *gp = D(p, n * 4), *gg = D(g, n * 4), *gm = Dz(n * 4), *gv = Dz(n * 4);
    for (long t = 1; t <= 5; t += 4)
        for (size_t o = 0; o < 2; o++) {
            const float gs = t == 1 ? 1.0f : 0.37f;
            r1 = cpu->ops->adamw(cpu, p + o, g + o, m + o, v + o, n - o, gs, 1e-3, 0.9, 0.95, 1e-8, 0.1, t);
            r2 = gpu->ops->adamw(gpu, gp + o, gg + o, gm + o, gv + o, n - o, gs, 1e-3, 0.9, 0.95, 1e-8,
                                 0.1, t);
            if (both_ok(r1, r2, "adamw")) {
                check_arr(Gf(gp, n), p, n, RT_EW, 1e-7, "adamw step %ld from %zu, gscale %g: p", t, o, gs);
                check_arr(Gf(gm, n), m, n, RT_EW, 1e-9, "adamw step %ld from %zu, gscale %g: m", t, o, gs);
                check_arr(Gf(gv, n), v, n, RT_EW, 1e-11, "adamw step %ld from %zu, gscale %g: v", t, o, gs);
            }
        }
    tap_ok(gpu->ops->adamw(gpu, gp, gg, gm, gv, n, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0) == MK_ERR_INTERNAL,
           "adamw rejects step 0");
    arena_free();
}

/* ------------------------------------------------------------------ embedding */

static void test_embedding(void)
{
    enum { V = 50, Dm = 300, N = 200 };
    int32_t tok[N];
    for (int n = 0; n < N; n++) tok[n] = rnd_below(n < 20 ? 3 : V); /* many repeats */
    float *wte = Hrand((size_t)V * Dm, 1), *out = Hf((size_t)N * Dm);
    int32_t *gtok = D(tok, sizeof tok);
    float *gwte = D(wte, sizeof(float) * V * Dm), *gout = Dz(sizeof(float) * N * Dm);
    int r1 = cpu->ops->embedding_forward(cpu, out, tok, wte, N, Dm);
    int r2 = gpu->ops->embedding_forward(gpu, gout, gtok, gwte, N, Dm);
    if (both_ok(r1, r2, "embedding_forward"))
        check_arr(Gf(gout, (size_t)N * Dm), out, (size_t)N * Dm, 0, 0, "embedding_forward");

    float *dout = Hrand((size_t)N * Dm, 1), *dwte = Hrand((size_t)V * Dm, 1);
    float *gdout = D(dout, sizeof(float) * N * Dm), *gdwte = D(dwte, sizeof(float) * V * Dm);
    r1 = cpu->ops->embedding_backward(cpu, dwte, tok, dout, N, Dm, V);
    r2 = gpu->ops->embedding_backward(gpu, gdwte, gtok, gdout, N, Dm, V);
    if (both_ok(r1, r2, "embedding_backward"))
        check_arr(Gf(gdwte, (size_t)V * Dm), dwte, (size_t)V * Dm, 0, 0,
                  "embedding_backward after the forward (its early copy of the tokens) accumulates in token order (bit-exact)");
    /* A second backward, no forward before it: the tokens are copied then; the same sums. */
    r1 = cpu->ops->embedding_backward(cpu, dwte, tok, dout, N, Dm, V);
    r2 = gpu->ops->embedding_backward(gpu, gdwte, gtok, gdout, N, Dm, V);
    if (both_ok(r1, r2, "embedding_backward"))
        check_arr(Gf(gdwte, (size_t)V * Dm), dwte, (size_t)V * Dm, 0, 0,
                  "embedding_backward without a forward before it (bit-exact)");

    int32_t badtok[3] = {1, V, 2};
    int32_t *gbad = D(badtok, sizeof badtok);
    tap_ok(gpu->ops->embedding_backward(gpu, gdwte, gbad, gdout, 3, Dm, V) == MK_ERR_INPUT,
           "embedding_backward rejects a token outside the vocabulary");
    /* a forward of the first 2 tokens (valid), a backward of all 3 at that address */
    int32_t bad3[3] = {1, 2, V};
    int32_t *gbad3 = D(bad3, sizeof bad3);
    float *gout2 = Dz(sizeof(float) * 3 * Dm);
    r2 = gpu->ops->embedding_forward(gpu, gout2, gbad3, gwte, 2, Dm);
    tap_ok(r2 == MK_OK && gpu->ops->embedding_backward(gpu, gdwte, gbad3, gdout, 3, Dm, V) == MK_ERR_INPUT,
           "embedding_backward: a forward of 2 tokens, then a backward of 3 at that address, copies them again");
    arena_free();
}

/* ------------------------------------------------------------------ RMSNorm */

static void test_rmsnorm(void)
{
    /* one warp per row (300, 8, 768, 1024 wide; the backward's dg over blocks of 64 rows:
     * 300 and 130 rows end in a partial block), the block-per-row kernels (30: not in
     * fours; 1100: more than a warp keeps in registers) */
    const int shapes[8][2] = {{13, 300}, {40, 8}, {50, 768}, {9, 1024}, {300, 768}, {130, 1024}, {7, 30}, {3, 1100}};
    for (int c = 0; c < 8; c++) {
        const int N = shapes[c][0], Dm = shapes[c][1];
        const size_t nd = (size_t)N * Dm;
        float *x = Hrand(nd, 2), *g = Hrand(Dm, 1), *out = Hf(nd), *rstd = Hf(N);
        float *gx = D(x, nd * 4), *gg = D(g, Dm * 4), *gout = Dz(nd * 4), *grstd = Dz(N * 4);
        int r1 = cpu->ops->rmsnorm_forward(cpu, out, rstd, x, g, N, Dm);
        int r2 = gpu->ops->rmsnorm_forward(gpu, gout, grstd, gx, gg, N, Dm);
        if (both_ok(r1, r2, "rmsnorm_forward")) {
            check_arr(Gf(gout, nd), out, nd, RT_EW, AT_EW, "rmsnorm_forward %dx%d out", N, Dm);
            check_arr(Gf(grstd, N), rstd, N, RT_EW, 0, "rmsnorm_forward %dx%d rstd", N, Dm);
        }
        /* Backward from the CPU's rstd on both sides, onto nonzero dx and dg. */
        float *dout = Hrand(nd, 1), *dx = Hrand(nd, 1), *dg = Hrand(Dm, 1);
        float *gdout = D(dout, nd * 4), *gdx = D(dx, nd * 4), *gdg = D(dg, Dm * 4);
        float *grs = D(rstd, N * 4);
        r1 = cpu->ops->rmsnorm_backward(cpu, dx, dg, dout, x, g, rstd, N, Dm);
        r2 = gpu->ops->rmsnorm_backward(gpu, gdx, gdg, gdout, gx, gg, grs, N, Dm);
        if (both_ok(r1, r2, "rmsnorm_backward")) {
            check_arr(Gf(gdx, nd), dx, nd, RT_EW, AT_EW, "rmsnorm_backward %dx%d dx (accumulated)", N, Dm);
            check_arr(Gf(gdg, Dm), dg, Dm, RT_EW, AT_EW, "rmsnorm_backward %dx%d dg (accumulated)", N, Dm);
        }
    }
    arena_free();
}

/* ------------------------------------------------------------------ attention */

static void test_rope(void)
{
    /* B, T, D, H: a block per token (D in fours; head size 6 puts a head edge inside a
     * 16-byte load), and the per-pair kernel (D 6) */
    const int cases[5][4] = {{2, 9, 32, 4}, {1, 600, 16, 2}, {2, 64, 768, 12}, {3, 5, 12, 2}, {2, 7, 6, 1}};
    for (int c = 0; c < 5; c++) {
        const int B = cases[c][0], T = cases[c][1], Dm = cases[c][2], H = cases[c][3];
        const size_t n = (size_t)B * T * 3 * Dm;
        float *q = Hrand(n, 1), *gq = D(q, n * 4);
        int r1 = cpu->ops->rope_forward(cpu, q, B, T, Dm, H, 10000.0);
        int r2 = gpu->ops->rope_forward(gpu, gq, B, T, Dm, H, 10000.0);
        if (both_ok(r1, r2, "rope_forward"))
            check_arr(Gf(gq, n), q, n, RT_EW, AT_EW, "rope_forward B %d T %d D %d H %d", B, T, Dm, H);
        float *dq = Hrand(n, 1), *gdq = D(dq, n * 4);
        r1 = cpu->ops->rope_backward(cpu, dq, B, T, Dm, H, 10000.0);
        r2 = gpu->ops->rope_backward(gpu, gdq, B, T, Dm, H, 10000.0);
        if (both_ok(r1, r2, "rope_backward"))
            check_arr(Gf(gdq, n), dq, n, RT_EW, AT_EW, "rope_backward B %d T %d D %d H %d", B, T, Dm, H);
    }
    arena_free();
}

static void test_attention(void)
{
    const int cases[3][4] = {{2, 9, 16, 2}, {1, 300, 32, 4}, {3, 1, 8, 1}}; /* B, T, D, H */
    for (int c = 0; c < 3; c++) {
        const int B = cases[c][0], T = cases[c][1], Dm = cases[c][2], H = cases[c][3];
        const size_t nqkv = (size_t)B * T * 3 * Dm, nout = (size_t)B * T * Dm;
        const size_t natt = (size_t)B * H * T * T;
        float *qkv = Hrand(nqkv, 1.5), *out = Hf(nout), *att = Hf(natt);
        float *gqkv = D(qkv, nqkv * 4), *gout = Dz(nout * 4), *gatt = Dz(natt * 4);
        int r1 = cpu->ops->attention_forward(cpu, out, att, qkv, B, T, Dm, H);
        int r2 = gpu->ops->attention_forward(gpu, gout, gatt, gqkv, B, T, Dm, H);
        if (both_ok(r1, r2, "attention_forward")) {
            check_arr(Gf(gout, nout), out, nout, RT_GEMM, AT_GEMM, "attention_forward B %d T %d D %d H %d out", B, T, Dm, H);
            check_arr(Gf(gatt, natt), att, natt, RT_GEMM, AT_GEMM, "attention_forward B %d T %d D %d H %d att", B, T, Dm, H);
        }
        float *dout = Hrand(nout, 1), *dqkv = Hrand(nqkv, 1), *datt = Hf(natt);
        float *gdout = D(dout, nout * 4), *gdqkv = D(dqkv, nqkv * 4), *gdatt = Dz(natt * 4);
        r1 = cpu->ops->attention_backward(cpu, dqkv, datt, dout, qkv, att, B, T, Dm, H);
        r2 = gpu->ops->attention_backward(gpu, gdqkv, gdatt, gdout, gqkv, gatt, B, T, Dm, H);
        if (both_ok(r1, r2, "attention_backward"))
            check_arr(Gf(gdqkv, nqkv), dqkv, nqkv, RT_GEMM, AT_GEMM,
                      "attention_backward B %d T %d D %d H %d dqkv (all columns written)", B, T, Dm, H);
        /* RoPE with attention as one op (here: the two ops in turn) against the CPU's four */
        float *cq = Hcopy(qkv, nqkv), *cd = Hf(nqkv), *gq = D(qkv, nqkv * 4), *gd = Dz(nqkv * 4);
        r1 = cpu->ops->rope_forward(cpu, cq, B, T, Dm, H, 10000.0);
        if (r1 == MK_OK) r1 = cpu->ops->attention_forward(cpu, out, att, cq, B, T, Dm, H);
        if (r1 == MK_OK) r1 = cpu->ops->attention_backward(cpu, cd, datt, dout, cq, att, B, T, Dm, H);
        if (r1 == MK_OK) r1 = cpu->ops->rope_backward(cpu, cd, B, T, Dm, H, 10000.0);
        r2 = gpu->ops->attention_rope_forward(gpu, gout, gatt, gq, B, T, Dm, H, 10000.0);
        if (r2 == MK_OK) r2 = gpu->ops->attention_rope_backward(gpu, gd, gdatt, gdout, gq, gatt, B, T, Dm, H, 10000.0);
        if (both_ok(r1, r2, "attention_rope")) {
            check_arr(Gf(gout, nout), out, nout, RT_GEMM, AT_GEMM, "attention_rope_forward B %d T %d D %d H %d out", B, T, Dm, H);
            check_arr(Gf(gd, nqkv), cd, nqkv, RT_GEMM, AT_GEMM, "attention_rope_backward B %d T %d D %d H %d dqkv", B, T, Dm,
                      H);
        }
    }
    arena_free();
}

/* sqrt(sum (got - want)^2 / sum want^2); a non-finite element makes it infinite. */
static double rel_l2(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += isfinite((double)got[i]) ? d * d : INFINITY;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The bf16 backend's fused attention (head size 64, T >= 162: mk_flash_attn.cu) against the
 * fp32 CPU. Inputs and probabilities are rounded to bf16 (relative 2^-9), so outputs are
 * compared by relative L2 error; T not a multiple of the 64-row blocks tests the edges. */
static void test_attention_bf16(mk_backend *bf)
{
    const int cases[4][4] = {{2, 200, 128, 2}, {1, 1024, 192, 3}, {1, 257, 64, 1}, {3, 190, 64, 1}};
    for (int c = 0; c < 4; c++) {
        const int B = cases[c][0], T = cases[c][1], Dm = cases[c][2], H = cases[c][3];
        const size_t nqkv = (size_t)B * T * 3 * Dm, nout = (size_t)B * T * Dm;
        const size_t natt = (size_t)B * H * T * T;
        float *qkv = Hrand(nqkv, 1.5), *out = Hf(nout), *att = Hf(natt);
        float *gqkv = D(qkv, nqkv * 4), *gout = Dz(nout * 4), *gatt = Dz(natt * 4);
        int r1 = cpu->ops->attention_forward(cpu, out, att, qkv, B, T, Dm, H);
        int r2 = bf->ops->attention_forward(bf, gout, gatt, gqkv, B, T, Dm, H);
        if (both_ok(r1, r2, "bf16 attention_forward")) {
            double e = rel_l2(Gf(gout, nout), out, nout);
            tap_ok(e < 2e-2, "bf16 attention_forward B %d T %d D %d H %d: out relative L2 error %.2e < 2e-2",
                   B, T, Dm, H, e);
        }
        float *dout = Hrand(nout, 1), *dqkv = Hrand(nqkv, 1), *datt = Hf(natt);
        float *gdout = D(dout, nout * 4), *gdqkv = D(dqkv, nqkv * 4), *gdatt = Dz(natt * 4);
        r1 = cpu->ops->attention_backward(cpu, dqkv, datt, dout, qkv, att, B, T, Dm, H);
        r2 = bf->ops->attention_backward(bf, gdqkv, gdatt, gdout, gqkv, gatt, B, T, Dm, H);
        if (both_ok(r1, r2, "bf16 attention_backward")) {
            float *g1 = Gf(gdqkv, nqkv);
            for (int part = 0; part < 3; part++) {
                /* q, k and v columns of every row: each is written by a different kernel */
                float *gp = Hf(nout), *wp = Hf(nout);
                for (size_t r = 0; r < (size_t)B * T; r++)
                    for (int d = 0; d < Dm; d++) {
                        gp[r * Dm + d] = g1[r * 3 * Dm + part * Dm + d];
                        wp[r * Dm + d] = dqkv[r * 3 * Dm + part * Dm + d];
                    }
                double e = rel_l2(gp, wp, nout);
                tap_ok(e < 3e-2, "bf16 attention_backward B %d T %d D %d H %d: d%c relative L2 error %.2e < 3e-2",
                       B, T, Dm, H, "qkv"[part], e);
            }
            /* again on fresh buffers: the same bits */
            float *gout2 = Dz(nout * 4), *gatt2 = Dz(natt * 4), *gdqkv2 = Dz(nqkv * 4), *gdatt2 = Dz(natt * 4);
            r2 = bf->ops->attention_forward(bf, gout2, gatt2, gqkv, B, T, Dm, H);
            if (r2 == MK_OK)
                r2 = bf->ops->attention_backward(bf, gdqkv2, gdatt2, gdout, gqkv, gatt2, B, T, Dm, H);
            tap_ok(r2 == MK_OK && memcmp(Gf(gout2, nout), Gf(gout, nout), nout * 4) == 0 &&
                       memcmp(Gf(gdqkv2, nqkv), g1, nqkv * 4) == 0,
                   "bf16 attention B %d T %d D %d H %d: a second run gives the same bits", B, T, Dm, H);
        }
        /* RoPE fused into the attention (q and k rotated as the forward rounds them) and
         * its backward = rope_forward, attention, attention_backward, rope_backward: the
         * same bits. */
        float *q1 = D(qkv, nqkv * 4), *q2 = D(qkv, nqkv * 4), *o1 = Dz(nout * 4), *o2 = Dz(nout * 4);
        float *a1 = Dz(natt * 4), *a2 = Dz(natt * 4), *d1 = Dz(nqkv * 4), *d2 = Dz(nqkv * 4);
        float *w1 = Dz(natt * 4), *w2 = Dz(natt * 4);
        r2 = bf->ops->rope_forward(bf, q1, B, T, Dm, H, 10000.0);
        if (r2 == MK_OK) r2 = bf->ops->attention_forward(bf, o1, a1, q1, B, T, Dm, H);
        if (r2 == MK_OK) r2 = bf->ops->attention_backward(bf, d1, w1, gdout, q1, a1, B, T, Dm, H);
        if (r2 == MK_OK) r2 = bf->ops->rope_backward(bf, d1, B, T, Dm, H, 10000.0);
        int r3 = bf->ops->attention_rope_forward(bf, o2, a2, q2, B, T, Dm, H, 10000.0);
        if (r3 == MK_OK) r3 = bf->ops->attention_rope_backward(bf, d2, w2, gdout, q2, a2, B, T, Dm, H, 10000.0);
        tap_ok(r2 == MK_OK && r3 == MK_OK && memcmp(Gf(o1, nout), Gf(o2, nout), nout * 4) == 0 &&
                   memcmp(Gf(d1, nqkv), Gf(d2, nqkv), nqkv * 4) == 0,
               "bf16 attention with RoPE fused B %d T %d D %d H %d: out and dqkv = the four ops' bits (rc %d, %d)", B, T,
               Dm, H, r2, r3);
        arena_free();
    }
}

/* One output of a composite op run twice on the GPU (got[0], got[1]) against the CPU's
 * (want); before, when not NULL, is what the output held before the op accumulated into
 * it, taken off both sides so that it does not hide the error. */
typedef struct out_pair {
    const char *name;
    float *got[2];
    const float *want, *before;
    size_t n;
} out_pair;

/* One TAP line per output (relative L2 error below tol); returns 1 when both GPU runs gave
 * the same bits for every output. */
static int check_outputs(const out_pair *out, int n, double tol, const char *label)
{
    int same = 1;
    for (int k = 0; k < n; k++) {
        float *g0 = Gf(out[k].got[0], out[k].n), *want = Hcopy(out[k].want, out[k].n);
        same = same && memcmp(g0, Gf(out[k].got[1], out[k].n), out[k].n * 4) == 0;
        if (out[k].before)
            for (size_t i = 0; i < out[k].n; i++) g0[i] -= out[k].before[i], want[i] -= out[k].before[i];
        const double e = rel_l2(g0, want, out[k].n);
        tap_ok(e < tol, "%s: %s relative L2 error %.2e < %g", label, out[k].name, e, tol);
    }
    return same;
}

/* The attention block as one op (the bf16 mode's: bf16 ln1, qkv and atty, fused attention
 * where the head size is 64) against the CPU's op sequence: h, dL/dx and the three weight
 * gradients by relative L2 error; a second run on fresh state gives the same bits. The
 * last shape (head size 32) takes the op sequence on the GPU. */
static void test_attention_block_bf16(mk_backend *bf)
{
    const int cases[3][4] = {{2, 200, 128, 2}, {1, 257, 64, 1}, {2, 40, 64, 2}};
    for (int c = 0; c < 3; c++) {
        const int B = cases[c][0], T = cases[c][1], Dm = cases[c][2], H = cases[c][3], N = B * T;
        const size_t nd = (size_t)N * Dm, natt = (size_t)B * H * T * T, nwq = (size_t)Dm * 3 * Dm,
                     nwo = (size_t)Dm * Dm;
        float *x = Hrand(nd, 1), *g = Hrand(Dm, 1), *wq = Hrand(nwq, 0.1), *wo = Hrand(nwo, 0.1);
        float *dh = Hrand(nd, 1), *dg0 = Hrand(Dm, 0.1), *dwq0 = Hrand(nwq, 0.1), *dwo0 = Hrand(nwo, 0.1);
        for (int i = 0; i < Dm; i++) g[i] += 1.5f;
        /* CPU */
        float *h = Hf(nd), *dres = Hcopy(dh, nd), *dg = Hcopy(dg0, Dm), *dwq = Hcopy(dwq0, nwq),
              *dwo = Hcopy(dwo0, nwo);
        mk_attn_block ca = {x, g, wq, wo, Hf(nd), Hf(N), Hf(3 * nd), Hf(natt), Hf(nd)};
        mk_attn_block_grads cg = {dg, dwq, dwo, Hf(nd), Hf(3 * nd), Hf(natt), Hf(nd)};
        int r1 = mk_attention_block_forward_ops(cpu, h, &ca, B, T, Dm, H, 10000.0);
        if (r1 == MK_OK) r1 = mk_attention_block_backward_ops(cpu, dres, &cg, &ca, B, T, Dm, H, 10000.0);
        /* GPU, twice */
        float *gh[2], *gres[2], *gdg[2], *gdwq[2], *gdwo[2];
        int r2 = MK_OK;
        const float *gx = D(x, nd * 4), *gg = D(g, Dm * 4), *gwq = D(wq, nwq * 4), *gwo = D(wo, nwo * 4);
        for (int rep = 0; rep < 2 && r2 == MK_OK; rep++) {
            gh[rep] = Dz(nd * 4), gres[rep] = D(dh, nd * 4), gdg[rep] = D(dg0, Dm * 4);
            gdwq[rep] = D(dwq0, nwq * 4), gdwo[rep] = D(dwo0, nwo * 4);
            mk_attn_block ga = {gx, gg, gwq, gwo, Dz(nd * 4), Dz(N * 4), Dz(3 * nd * 4), Dz(natt * 4), Dz(nd * 4)};
            mk_attn_block_grads gb = {gdg[rep], gdwq[rep], gdwo[rep], Dz(nd * 4), Dz(3 * nd * 4), Dz(natt * 4),
                                      Dz(nd * 4)};
            r2 = bf->ops->attention_block_forward(bf, gh[rep], &ga, B, T, Dm, H, 10000.0);
            if (r2 == MK_OK) r2 = bf->ops->attention_block_backward(bf, gres[rep], &gb, &ga, B, T, Dm, H, 10000.0);
        }
        if (!both_ok(r1, r2, "bf16 attention block")) continue;
        const out_pair out[5] = {
            {"h", {gh[0], gh[1]}, h, NULL, nd},
            {"dL/dx", {gres[0], gres[1]}, dres, dh, nd},
            {"d norm", {gdg[0], gdg[1]}, dg, dg0, (size_t)Dm},
            {"d w_qkv", {gdwq[0], gdwq[1]}, dwq, dwq0, nwq},
            {"d w_out", {gdwo[0], gdwo[1]}, dwo, dwo0, nwo},
        };
        char label[96];
        snprintf(label, sizeof label, "bf16 attention block B %d T %d D %d H %d", B, T, Dm, H);
        const int same = check_outputs(out, 5, 3e-2, label);
        tap_ok(same, "bf16 attention block B %d T %d D %d H %d: a second run gives the same bits", B, T, Dm, H);
        arena_free();
    }
}

/* The MoE block's input as one op (RMSNorm writing ln and its bf16 copy, the router's
 * products on the copy) against the bf16 backend's own op sequence -- the same rounding of
 * the same values, so the same bits -- and against the fp32 CPU by relative L2 error. */
static void test_moe_input_bf16(mk_backend *bf)
{
    const int cases[3][3] = {{300, 128, 16}, {64, 768, 64}, {50, 1032, 8}}; /* N, D, E; D > 1024: fallback */
    for (int c = 0; c < 3; c++) {
        const int N = cases[c][0], Dm = cases[c][1], E = cases[c][2];
        const size_t nd = (size_t)N * Dm, nz = (size_t)N * E, nw = (size_t)Dm * E;
        float *h = Hrand(nd, 1), *g = Hrand(Dm, 1), *w = Hrand(nw, 0.1), *dz = Hrand(nz, 1);
        float *dln0 = Hrand(nd, 1), *dh0 = Hrand(nd, 1), *dg0 = Hrand(Dm, 0.1), *dw0 = Hrand(nw, 0.1);
        for (int i = 0; i < Dm; i++) g[i] += 1.5f;
        float *z = Hf(nz), *ln = Hf(nd), *rstd = Hf(N), *dh = Hcopy(dh0, nd), *dg = Hcopy(dg0, Dm),
              *dw = Hcopy(dw0, nw), *dln = Hcopy(dln0, nd);
        int r1 = mk_moe_input_forward_ops(cpu, z, ln, rstd, h, g, w, N, Dm, E);
        if (r1 == MK_OK) r1 = mk_moe_input_backward_ops(cpu, dh, dg, dw, dln, dz, h, ln, rstd, g, w, N, Dm, E);
        const float *gh = D(h, nd * 4), *gg = D(g, Dm * 4), *gw = D(w, nw * 4), *gdz = D(dz, nz * 4);
        /* [0]: the op, [1]: the op sequence on the same backend */
        float *gz[2], *gln[2], *grs[2], *gdh[2], *gdg[2], *gdw[2], *gdln[2];
        void *lnop = Dz(nd * 2);
        int r2 = MK_OK;
        for (int k = 0; k < 2 && r2 == MK_OK; k++) {
            gz[k] = Dz(nz * 4), gln[k] = Dz(nd * 4), grs[k] = Dz(N * 4), gdh[k] = D(dh0, nd * 4);
            gdg[k] = D(dg0, Dm * 4), gdw[k] = D(dw0, nw * 4), gdln[k] = D(dln0, nd * 4);
            if (k == 0) {
                r2 = bf->ops->moe_input_forward(bf, gz[0], gln[0], lnop, grs[0], gh, gg, gw, N, Dm, E);
                if (r2 == MK_OK)
                    r2 = bf->ops->moe_input_backward(bf, gdh[0], gdg[0], gdw[0], gdln[0], gdz, gh, gln[0], lnop,
                                                     grs[0], gg, gw, N, Dm, E);
            } else {
                r2 = mk_moe_input_forward_ops(bf, gz[1], gln[1], grs[1], gh, gg, gw, N, Dm, E);
                if (r2 == MK_OK)
                    r2 = mk_moe_input_backward_ops(bf, gdh[1], gdg[1], gdw[1], gdln[1], gdz, gh, gln[1], grs[1], gg,
                                                   gw, N, Dm, E);
            }
        }
        if (!both_ok(r1, r2, "bf16 MoE input")) continue;
        const out_pair out[7] = {
            {"z", {gz[0], gz[1]}, z, NULL, nz},
            {"ln", {gln[0], gln[1]}, ln, NULL, nd},
            {"rstd", {grs[0], grs[1]}, rstd, NULL, (size_t)N},
            {"dL/dh", {gdh[0], gdh[1]}, dh, dh0, nd},
            {"d norm", {gdg[0], gdg[1]}, dg, dg0, (size_t)Dm},
            {"d w_router", {gdw[0], gdw[1]}, dw, dw0, nw},
            {"dln", {gdln[0], gdln[1]}, dln, dln0, nd},
        };
        char label[96];
        snprintf(label, sizeof label, "bf16 MoE input N %d D %d E %d", N, Dm, E);
        const int same = check_outputs(out, 7, 2e-2, label);
        tap_ok(same, "bf16 MoE input N %d D %d E %d: the op = the op sequence on this backend, bit for bit", N, Dm, E);
        const uint16_t *cp = G(lnop, nd * 2);
        const float *l0 = Gf(gln[0], nd);
        size_t bad = 0;
        for (size_t i = 0; i < nd; i++) bad += cp[i] != bf16_of(l0[i]);
        tap_ok(bad == 0, "bf16 MoE input N %d D %d E %d: the operand copy is ln rounded to bf16 (%zu differ)", N, Dm,
               E, bad);
        arena_free();
    }
}

/* x rounded to the nearest bf16 (ties to even), as the tensor-core operands are. */
static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float *Hbf16(const float *x, size_t n)
{
    float *y = Hf(n);
    for (size_t i = 0; i < n; i++) y[i] = bf16_round(x[i]);
    return y;
}

/* The bf16 backend's dense matmul: operands it rounds itself (aligned, counts in fours)
 * against the CPU on the operands rounded to bf16 (only the fp32 summation order differs);
 * ones that go to cuBLAS's FAST_16BF (an odd count; an operand 4 bytes off alignment), which
 * may or may not round them, within bf16 error of the fp32 product. Every transpose, alpha and
 * beta; a second run gives the same bits. */
static void one_matmul_bf16(mk_backend *bf, int M, int N, int K, int ta, int tb, float alpha,
                            float beta, int misalign)
{
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *A = Hrand(na, 1), *B = Hrand(nb, 1), *C = Hrand(nc, 1);
    float *Ar = Hbf16(A, na), *Br = Hbf16(B, nb);
    float *dA = (float *)Dz((na + 1) * 4) + misalign, *dB = D(B, nb * 4), *dC = D(C, nc * 4),
          *dC2 = D(C, nc * 4);
    if (gpu->ops->from_host(gpu, dA, A, na * 4) != MK_OK) bail("from_host");
    const int rounded = !misalign && na % 4 == 0 && nb % 4 == 0;
    const char *path = misalign ? "FAST_16BF, A misaligned" : rounded ? "rounded" : "FAST_16BF";
    int r1 = cpu->ops->matmul(cpu, C, rounded ? Ar : A, rounded ? Br : B, M, N, K, ta, tb, alpha, beta);
    int r2 = bf->ops->matmul(bf, dC, dA, dB, M, N, K, ta, tb, alpha, beta);
    if (!both_ok(r1, r2, "bf16 matmul")) return;
    float *got = Gf(dC, nc);
    if (rounded) {
        check_arr(got, C, nc, RT_GEMM, AT_GEMM * sqrt((double)K + 1),
                  "bf16 matmul (%s) %dx%dx%d trans_a %d trans_b %d alpha %g beta %g", path, M, N,
                  K, ta, tb, alpha, beta);
    } else {
        const double e = rel_l2(got, C, nc);
        tap_ok(e < 1e-2, "bf16 matmul (%s) %dx%dx%d trans_a %d trans_b %d alpha %g beta %g: "
               "relative L2 error %.2e to fp32 < 1e-2", path, M, N, K, ta, tb, alpha, beta, e);
    }
    r2 = bf->ops->matmul(bf, dC2, dA, dB, M, N, K, ta, tb, alpha, beta);
    tap_ok(r2 == MK_OK && memcmp(Gf(dC2, nc), got, nc * 4) == 0,
           "bf16 matmul (%s) %dx%dx%d trans_a %d trans_b %d: a second run gives the same bits",
           path, M, N, K, ta, tb);
}

static void test_matmul_bf16(mk_backend *bf)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            one_matmul_bf16(bf, 40, 36, 52, ta, tb, 0.7f, -0.3f, 0);
            one_matmul_bf16(bf, 37, 29, 53, ta, tb, 1, 0, 0);
        }
    one_matmul_bf16(bf, 256, 192, 768, 0, 1, 1, 0, 0);  /* x W^T, a projection */
    one_matmul_bf16(bf, 192, 256, 512, 1, 0, 1, 1, 0);  /* dW += dy^T x */
    one_matmul_bf16(bf, 64, 48, 32, 0, 0, 1, 0, 1);
    arena_free();
}

/* linear_backward of the bf16 backend (dY rounded once for dW and dX) gives the bits of the
 * two matmul calls it replaces, and matches the fp32 CPU's two products to bf16 rounding;
 * 37 x 29 x 53 (counts not in fours) takes the calls themselves. dW accumulates, dX with
 * beta 0 and 1. */
static void one_linear_backward_bf16(mk_backend *bf, int M, int K, int N, float beta)
{
    const size_t mk = (size_t)M * K, kn = (size_t)K * N, mn = (size_t)M * N;
    float *X = Hrand(mk, 1), *W = Hrand(kn, 0.3), *dY = Hrand(mn, 1);
    float *dW = Hrand(kn, 0.5), *dX = Hrand(mk, 0.5);
    float *gX = D(X, mk * 4), *gW = D(W, kn * 4), *gY = D(dY, mn * 4);
    float *gdW = D(dW, kn * 4), *gdX = D(dX, mk * 4), *gdW2 = D(dW, kn * 4), *gdX2 = D(dX, mk * 4);
    int r1 = mk_linear_backward_ops(cpu, dX, dW, X, W, dY, M, K, N, beta);
    int r2 = bf->ops->linear_backward(bf, gdX, gdW, gX, gW, gY, M, K, N, beta);
    if (both_ok(r1, r2, "linear_backward")) {
        const float *gw = Gf(gdW, kn), *gx = Gf(gdX, mk);
        tap_ok(rel_l2(gw, dW, kn) < 1e-2 && rel_l2(gx, dX, mk) < 1e-2,
               "bf16 linear_backward %dx%dx%d beta %g: dW (accumulated) and dX match the CPU (rel. L2 %.2e, %.2e)",
               M, K, N, beta, rel_l2(gw, dW, kn), rel_l2(gx, dX, mk));
        r2 = mk_linear_backward_ops(bf, gdX2, gdW2, gX, gW, gY, M, K, N, beta);
        tap_ok(r2 == MK_OK && memcmp(Gf(gdW2, kn), gw, kn * 4) == 0 && memcmp(Gf(gdX2, mk), gx, mk * 4) == 0,
               "bf16 linear_backward %dx%dx%d beta %g: the bits of the two matmul calls", M, K, N, beta);
    }
}

static void test_linear_backward_bf16(mk_backend *bf)
{
    one_linear_backward_bf16(bf, 256, 192, 576, 0);
    one_linear_backward_bf16(bf, 256, 192, 64, 1);
    one_linear_backward_bf16(bf, 37, 29, 53, 1);
    arena_free();
}

/* The bf16 backend's expert GEMMs (mk_grouped_gemm.cu) against the CPU on the same
 * operands rounded to bf16: only the fp32 summation order differs, so the tolerance is
 * fp32's. Shapes cross every tile edge (rows, K and N not multiples of the 128 x 128 x 32
 * tiles), include empty and single-row experts and one expert with most of the rows (the
 * imbalance of early training), and bench-s's own 768 <-> 256. */
static void test_grouped_bf16(mk_backend *bf)
{
    enum { NCASE = 4 };
    const int shapes[NCASE][3] = {{5, 24, 20}, {7, 200, 132}, {64, 768, 256}, {64, 256, 768}}; /* E K N */
    for (int c = 0; c < NCASE; c++) {
        const int E = shapes[c][0], K = shapes[c][1], N = shapes[c][2];
        int offs[65];
        offs[0] = 0;
        for (int e = 0; e < E; e++) {
            int rows = e == 1 ? 0 : e == 2 ? 1 : 1 + rnd_below(E > 8 ? 300 : 150);
            if (e == E - 1) rows = E > 8 ? 2500 : 333; /* one expert far above the rest */
            offs[e + 1] = offs[e] + rows;
        }
        const int R = offs[E];
        const size_t na = (size_t)R * K, nw = (size_t)E * K * N, nc = (size_t)R * N;
        float *A = Hrand(na, 1), *W = Hrand(nw, 0.1);
        float *Ar = Hbf16(A, na), *Wr = Hbf16(W, nw);
        float *gA = D(A, na * 4), *gW = D(W, nw * 4);
        for (int tw = 0; tw < 2; tw++)
            for (int bi = 0; bi < 2; bi++) {
                const float beta = bi ? 0.5f : 0;
                float *C = Hrand(nc, 1), *gC = D(C, nc * 4);
                int r1 = cpu->ops->grouped_matmul(cpu, C, Ar, Wr, offs, E, K, N, tw, beta);
                int r2 = bf->ops->grouped_matmul(bf, gC, gA, gW, offs, E, K, N, tw, beta);
                if (both_ok(r1, r2, "bf16 grouped_matmul"))
                    check_arr(Gf(gC, nc), C, nc, RT_GEMM, AT_GEMM * sqrt((double)K),
                              "bf16 grouped_matmul E %d K %d N %d (%d rows) trans_w %d beta %g", E,
                              K, N, R, tw, beta);
            }
        /* weight gradient: accumulates onto what is there; dC rounded like A */
        float *dCh = Hrand(nc, 1), *dCr = Hbf16(dCh, nc), *dW = Hrand(nw, 1);
        float *gdC = D(dCh, nc * 4), *gdW = D(dW, nw * 4), *gdW2 = D(dW, nw * 4);
        int r1 = cpu->ops->grouped_matmul_wgrad(cpu, dW, Ar, dCr, offs, E, K, N);
        int r2 = bf->ops->grouped_matmul_wgrad(bf, gdW, gA, gdC, offs, E, K, N);
        if (both_ok(r1, r2, "bf16 grouped_matmul_wgrad")) {
            float *got = Gf(gdW, nw);
            check_arr(got, dW, nw, RT_GEMM, AT_GEMM * sqrt((double)R),
                      "bf16 grouped_matmul_wgrad E %d K %d N %d (%d rows) accumulates", E, K, N, R);
            r2 = bf->ops->grouped_matmul_wgrad(bf, gdW2, gA, gdC, offs, E, K, N);
            tap_ok(r2 == MK_OK && memcmp(Gf(gdW2, nw), got, nw * 4) == 0,
                   "bf16 grouped_matmul_wgrad E %d K %d N %d: a second run gives the same bits", E, K, N);
        }
        arena_free();
    }
}

/* bf16 values (exact in bf16, as Hbf16 makes them) as a device array of bf16. */
static void *Dbf16(const float *x, size_t n)
{
    uint16_t *h = H(n * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        h[i] = (uint16_t)(u >> 16);
    }
    return D(h, n * sizeof *h);
}

static float *Gbf16(const void *dev, size_t n)
{
    const uint16_t *h = G(dev, n * sizeof *h);
    float *x = Hf(n);
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = (uint32_t)h[i] << 16;
        memcpy(&x[i], &u, sizeof u);
    }
    return x;
}

/* The bf16-operand grouped kernels (what the fused expert FFN runs) against the CPU on
 * the same bf16 values, for one kernel kind: every form the FFN uses -- W and W^T, fp32
 * output accumulating (beta 0.5) with and without a second source of K2 = K columns,
 * bf16 output (one rounding more: rtol 5e-3), the weight gradient accumulating onto dW;
 * a second run gives the same bits. */
static void one_grouped_kernel(mk_gg_kernel kern, const char *kname, int E, int K, int N, const int *offs)
{
    const size_t R = (size_t)offs[E], na = R * K, nw = (size_t)E * K * N, nc = R * N;
    float *A = Hbf16(Hrand(na, 1), na), *A2 = Hbf16(Hrand(na, 1), na);
    float *W = Hbf16(Hrand(nw, 0.1), nw), *W2 = Hbf16(Hrand(nw, 0.1), nw);
    void *gA = Dbf16(A, na), *gA2 = Dbf16(A2, na), *gW = Dbf16(W, nw), *gW2 = Dbf16(W2, nw);
    const double atol = AT_GEMM * sqrt(2.0 * K);
    for (int tw = 0; tw < 2; tw++)
        for (int two = 0; two < 2; two++) {
            float *C0 = Hrand(nc, 1), *want = Hcopy(C0, nc), *gC = D(C0, nc * 4);
            int r1 = cpu->ops->grouped_matmul(cpu, want, A, W, offs, E, K, N, tw, 0.5f);
            if (r1 == MK_OK && two) r1 = cpu->ops->grouped_matmul(cpu, want, A2, W2, offs, E, K, N, tw, 1.f);
            int r2 = mk_grouped_gemm_rows_bf16(kern, gC, 0, gA, gW, two ? gA2 : NULL, two ? gW2 : NULL,
                                               two ? K : 0, offs, E, K, N, tw, 0.5f);
            if (both_ok(r1, r2, "grouped GEMM kernel (fp32 out)"))
                check_arr(Gf(gC, nc), want, nc, RT_GEMM, atol,
                          "%s grouped GEMM E %d K %d N %d (%zu rows) trans_w %d%s, fp32 out, beta 0.5",
                          kname, E, K, N, R, tw, two ? " + second source" : "");
        }
    for (int tw = 0; tw < 2; tw++) {
        float *want = Hf(nc);
        void *gC = Dz(nc * 2 + 16);
        int r1 = cpu->ops->grouped_matmul(cpu, want, A, W, offs, E, K, N, tw, 0.f);
        int r2 = mk_grouped_gemm_rows_bf16(kern, gC, 1, gA, gW, NULL, NULL, 0, offs, E, K, N, tw, 0.f);
        if (both_ok(r1, r2, "grouped GEMM kernel (bf16 out)")) {
            float *got = Gbf16(gC, nc);
            check_arr(got, want, nc, 5e-3, atol, "%s grouped GEMM E %d K %d N %d trans_w %d, bf16 out",
                      kname, E, K, N, tw);
            r2 = mk_grouped_gemm_rows_bf16(kern, gC, 1, gA, gW, NULL, NULL, 0, offs, E, K, N, tw, 0.f);
            tap_ok(r2 == MK_OK && memcmp(Gbf16(gC, nc), got, nc * 4) == 0,
                   "%s grouped GEMM E %d K %d N %d trans_w %d: a second run gives the same bits", kname,
                   E, K, N, tw);
        }
    }
    float *dC = Hbf16(Hrand(nc, 1), nc), *dW0 = Hrand(nw, 1), *want = Hcopy(dW0, nw);
    void *gdC = Dbf16(dC, nc);
    float *gdW = D(dW0, nw * 4), *gdW2 = D(dW0, nw * 4);
    const size_t wsn = mk_grouped_gemm_wgrad_ws_floats(offs, E, K, N);
    float *ws = Dz((wsn ? wsn : 1) * 4);
    int r1 = cpu->ops->grouped_matmul_wgrad(cpu, want, A, dC, offs, E, K, N);
    int r2 = mk_grouped_gemm_wgrad_bf16(kern, gdW, ws, wsn, gA, gdC, offs, E, K, N);
    if (both_ok(r1, r2, "grouped weight gradient kernel")) {
        float *got = Gf(gdW, nw);
        check_arr(got, want, nw, RT_GEMM, AT_GEMM * sqrt((double)R),
                  "%s grouped weight gradient E %d K %d N %d (%zu rows%s) accumulates", kname, E, K, N,
                  R, wsn ? ", chunked" : "");
        r2 = mk_grouped_gemm_wgrad_bf16(kern, gdW2, ws, wsn, gA, gdC, offs, E, K, N);
        tap_ok(r2 == MK_OK && memcmp(Gf(gdW2, nw), got, nw * 4) == 0,
               "%s grouped weight gradient E %d K %d N %d: a second run gives the same bits", kname, E,
               K, N);
    }
    arena_free();
}

/* Shapes cross every tile edge (rows, K and N not multiples of 128 or of the 32- and
 * 64-wide reduction steps), with empty and single-row experts and one expert of 2,500 rows
 * (the weight gradient's chunks of 2,048), and bench-s's 768 <-> 256. wgmma must be there
 * on an sm_90 GPU: its absence would be a build without sm_90a code. */
static void test_grouped_kernels_bf16(void)
{
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    const int wg = mk_grouped_gemm_wgmma_available();
    if (major == 9) tap_ok(wg, "wgmma grouped kernels available on this sm_90 GPU");
    enum { NCASE = 4 };
    const int shapes[NCASE][3] = {{5, 24, 16}, {7, 200, 136}, {64, 768, 256}, {64, 256, 768}}; /* E K N */
    const mk_gg_kernel kinds[2] = {MK_GG_MMA, MK_GG_WGMMA};
    const char *names[2] = {"mma.sync", "wgmma"};
    for (int k = 0; k < 1 + wg; k++)
        for (int c = 0; c < NCASE; c++) {
            const int E = shapes[c][0], K = shapes[c][1], N = shapes[c][2];
            int offs[65];
            offs[0] = 0;
            for (int e = 0; e < E; e++) {
                int rows = e == 1 ? 0 : e == 2 ? 1 : 1 + rnd_below(150);
                if (e == E - 1) rows = E > 8 ? 2500 : 333;
                offs[e + 1] = offs[e] + rows;
            }
            one_grouped_kernel(kinds[k], names[k], E, K, N, offs);
        }
}

/* The bf16 attention block path's kernels (mma.sync, and wgmma where the GPU has it) on
 * random bf16 qkv and dO against a double-precision causal attention of the same bf16
 * values: the output (bf16), the log-sum-exp (base 2), dq, dk and dv; rows past a
 * multiple of 64; a second run gives the same bits. */
static void test_flash_bf16(void)
{
    const int shapes[4][3] = {{2, 200, 2}, {1, 257, 1}, {1, 64, 3}, {2, 1024, 2}}; /* B T H */
    const int wg = mk_grouped_gemm_wgmma_available();
    for (int c = 0; c < 4; c++) {
        const int B = shapes[c][0], T = shapes[c][1], NH = shapes[c][2], Dm = NH * MK_FLASH_HD, hd = MK_FLASH_HD;
        const size_t N = (size_t)B * T, nq = N * 3 * Dm, nl = mk_flash_attn_lse_floats(B, T, NH);
        uint16_t *qb = H(nq * 2), *ob = H(N * Dm * 2);
        float *qf = Hf(nq), *want = Hf(N * Dm), *wlse = Hf((size_t)B * NH * T), *dof = Hf(N * Dm);
        float *wdq = Hf(nq);
        for (size_t i = 0; i < nq; i++) qb[i] = bf16_of((float)(2 * rnd() - 1)), qf[i] = float_of_bf16(qb[i]);
        for (size_t i = 0; i < N * Dm; i++) ob[i] = bf16_of((float)(2 * rnd() - 1)), dof[i] = float_of_bf16(ob[i]);
        const double scale = 1.0 / sqrt((double)hd);
        double *P = (double *)H((size_t)T * T * sizeof(double)), *dl = (double *)H((size_t)T * sizeof(double));
#define QF(t, part, i) qf[((size_t)b * T + (t)) * 3 * Dm + (part) * Dm + h * hd + (i)]
#define DO(t, i) dof[((size_t)b * T + (t)) * Dm + h * hd + (i)]
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                for (int t = 0; t < T; t++) {
                    double *p = P + (size_t)t * T, mx = -INFINITY, sum = 0;
                    for (int k = 0; k <= t; k++) {
                        double d = 0;
                        for (int i = 0; i < hd; i++) d += (double)QF(t, 0, i) * QF(k, 1, i);
                        p[k] = d * scale;
                        if (p[k] > mx) mx = p[k];
                    }
                    for (int k = 0; k <= t; k++) sum += p[k] = exp(p[k] - mx);
                    for (int k = 0; k <= t; k++) p[k] /= sum;
                    dl[t] = 0;
                    for (int i = 0; i < hd; i++) {
                        double o = 0;
                        for (int k = 0; k <= t; k++) o += p[k] * QF(k, 2, i);
                        want[((size_t)b * T + t) * Dm + h * hd + i] = (float)o;
                        dl[t] += o * DO(t, i);
                    }
                    wlse[((size_t)b * NH + h) * T + t] = (float)((mx + log(sum)) / log(2.0));
                }
                /* dS = P (dP - delta), dP = dO V^T; dq = scale dS K, dk = scale dS^T Q, dv = P^T dO */
                for (int t = 0; t < T; t++)
                    for (int i = 0; i < hd; i++) wdq[((size_t)b * T + t) * 3 * Dm + h * hd + i] = 0;
                for (int k = 0; k < T; k++)
                    for (int i = 0; i < hd; i++)
                        wdq[((size_t)b * T + k) * 3 * Dm + Dm + h * hd + i] =
                            wdq[((size_t)b * T + k) * 3 * Dm + 2 * Dm + h * hd + i] = 0;
                for (int t = 0; t < T; t++)
                    for (int k = 0; k <= t; k++) {
                        const double p = P[(size_t)t * T + k];
                        double dp = 0;
                        for (int i = 0; i < hd; i++) dp += (double)DO(t, i) * QF(k, 2, i);
                        const double dsv = p * (dp - dl[t]) * scale;
                        for (int i = 0; i < hd; i++) {
                            wdq[((size_t)b * T + t) * 3 * Dm + h * hd + i] += (float)(dsv * QF(k, 1, i));
                            wdq[((size_t)b * T + k) * 3 * Dm + Dm + h * hd + i] += (float)(dsv * QF(t, 0, i));
                            wdq[((size_t)b * T + k) * 3 * Dm + 2 * Dm + h * hd + i] += (float)(p * DO(t, i));
                        }
                    }
            }
#undef QF
#undef DO
        for (int k = 0; k < 1 + wg; k++) {
            const char *name = k ? "wgmma" : "mma.sync";
            void *gq = D(qb, nq * 2), *gdo = D(ob, N * Dm * 2), *gout = Dz(N * Dm * 2), *gout2 = Dz(N * Dm * 2);
            float *glse = Dz(nl * 4), *glse2 = Dz(nl * 4), *gdq = Dz(nq * 4), *gdq2 = Dz(nq * 4), *gdl = Dz(nl * 4);
            int rc = mk_flash_attn_forward_bf16(gout, glse, gq, NULL, B, T, Dm, NH, k);
            if (rc == MK_OK) rc = mk_flash_attn_forward_bf16(gout2, glse2, gq, NULL, B, T, Dm, NH, k);
            if (rc == MK_OK) rc = mk_flash_attn_backward_bf16(gdq, NULL, NULL, gdl, gdo, gout, gq, glse, B, T, Dm, NH, k);
            if (rc == MK_OK) rc = mk_flash_attn_backward_bf16(gdq2, NULL, NULL, gdl, gdo, gout, gq, glse, B, T, Dm, NH, k);
            if (rc == MK_OK) rc = cudaDeviceSynchronize() == cudaSuccess ? MK_OK : MK_ERR_INTERNAL;
            if (rc != MK_OK) {
                tap_ok(0, "flash attention (%s, B %d T %d H %d): rc %d", name, B, T, NH, rc);
                continue;
            }
            const float *got = Gbf(gout, N * Dm), *lse = Gf(glse, (size_t)B * NH * T), *dq = Gf(gdq, nq);
            double e = rel_l2(got, want, N * Dm), le = 0;
            for (size_t i = 0; i < (size_t)B * NH * T; i++) le = fmax(le, fabs((double)lse[i] - wlse[i]));
            tap_ok(e < 1e-2, "flash attention forward (%s, B %d T %d H %d): output relative L2 error %.2e < 1e-2",
                   name, B, T, NH, e);
            tap_ok(le < 1e-3, "flash attention forward (%s, B %d T %d H %d): log-sum-exp within %.2e < 1e-3", name, B,
                   T, NH, le);
            tap_ok(memcmp(G(gout2, N * Dm * 2), G(gout, N * Dm * 2), N * Dm * 2) == 0 &&
                       memcmp(G(glse2, nl * 4), G(glse, nl * 4), (size_t)B * NH * T * 4) == 0,
                   "flash attention forward (%s, B %d T %d H %d): a second run gives the same bits", name, B, T, NH);
            /* dq, dk, dv: the columns of each part, compared part by part */
            static const char *part[3] = {"dq", "dk", "dv"};
            for (int pt = 0; pt < 3; pt++) {
                float *gp = Hf(N * Dm), *wp = Hf(N * Dm);
                for (size_t r = 0; r < N; r++)
                    for (int i = 0; i < Dm; i++)
                        gp[r * Dm + i] = dq[r * 3 * Dm + pt * Dm + i], wp[r * Dm + i] = wdq[r * 3 * Dm + pt * Dm + i];
                const double ep = rel_l2(gp, wp, N * Dm);
                tap_ok(ep < 2e-2, "flash attention backward (%s, B %d T %d H %d): %s relative L2 error %.2e < 2e-2",
                       name, B, T, NH, part[pt], ep);
            }
            tap_ok(memcmp(G(gdq2, nq * 4), dq, nq * 4) == 0,
                   "flash attention backward (%s, B %d T %d H %d): a second run gives the same bits", name, B, T, NH);
            /* bf16 gradients with RoPE's inverse rotation, straight from the kernel: the bits of
             * the fp32 ones above, then mk_flash_rope_round (an angle table of this test's own) */
            double *cs = (double *)Hf((size_t)T * hd * 2);
            for (int t = 0; t < T; t++)
                for (int pr = 0; pr < hd / 2; pr++) {
                    const double ang = t * 0.37 / (1.0 + pr);
                    cs[(size_t)t * hd + 2 * pr] = cos(ang), cs[(size_t)t * hd + 2 * pr + 1] = sin(ang);
                }
            const double *gcs = D(cs, (size_t)T * hd * sizeof *cs);
            void *gb1 = Dz(nq * 2), *gb2 = Dz(nq * 2);
            rc = mk_flash_rope_round(gb1, gdq, gcs, (int)N, T, Dm, -1.0);
            if (rc == MK_OK) rc = mk_flash_attn_backward_bf16(NULL, gb2, gcs, gdl, gdo, gout, gq, glse, B, T, Dm, NH, k);
            if (rc == MK_OK) rc = cudaDeviceSynchronize() == cudaSuccess ? MK_OK : MK_ERR_INTERNAL;
            tap_ok(rc == MK_OK && memcmp(G(gb1, nq * 2), G(gb2, nq * 2), nq * 2) == 0,
                   "flash attention backward (%s, B %d T %d H %d): bf16 gradients with RoPE's inverse rotation, the "
                   "bits of fp32 then RoPE and rounding", name, B, T, NH);
        }
        arena_free();
    }
}

/* CUTLASS's grouped GEMMs (mk_gg_cutlass.cu) against the CPU on bf16-rounded operands, in
 * the forms the fused expert FFN uses: B as [K, N] and as [N, K], fp32 output accumulating
 * (beta 0.5), bf16 output into the first N of rows of 2N + 8 (a strided C), and the weight
 * gradient accumulating onto dW from the second half of dC rows of 2N (a strided,
 * offset dC); a second run gives the same bits, and so does the state gm, planned for
 * fewer SMs (an SM margin: each tile is still one block's whole reduction). */
static void one_cutlass_kernel(mk_gg_cutlass *g, mk_gg_cutlass *gm, int E, int K, int N, const int *offs)
{
    const size_t R = (size_t)offs[E], na = R * K, nw = (size_t)E * K * N, nc = R * N;
    float *A = Hbf16(Hrand(na, 1), na), *W = Hbf16(Hrand(nw, 0.1), nw);
    void *gA = Dbf16(A, na), *gW = Dbf16(W, nw);
    const double atol = AT_GEMM * sqrt(2.0 * K);
    for (int tw = 0; tw < 2; tw++) {
        float *C0 = Hrand(nc, 1), *want = Hcopy(C0, nc), *gC = D(C0, nc * 4);
        int r1 = cpu->ops->grouped_matmul(cpu, want, A, W, offs, E, K, N, tw, 0.5f);
        int r2 = mk_gg_cutlass_rows(g, gC, 0, N, gA, K, gW, (size_t)K * N, tw ? K : N, tw, offs, E, K, N, 0.5f);
        if (both_ok(r1, r2, "CUTLASS grouped GEMM (fp32 out)"))
            check_arr(Gf(gC, nc), want, nc, RT_GEMM, atol,
                      "CUTLASS grouped GEMM E %d K %d N %d (%zu rows) trans_w %d, fp32 out, beta 0.5", E, K, N, R,
                      tw);
    }
    const int ldc = 2 * N + 8;
    for (int tw = 0; tw < 2; tw++) {
        float *want = Hf(nc), *got = Hf(nc);
        void *gC = Dz(R * ldc * 2 + 16);
        int r1 = cpu->ops->grouped_matmul(cpu, want, A, W, offs, E, K, N, tw, 0.f);
        int r2 = mk_gg_cutlass_rows(g, gC, 1, ldc, gA, K, gW, (size_t)K * N, tw ? K : N, tw, offs, E, K, N, 0.f);
        if (both_ok(r1, r2, "CUTLASS grouped GEMM (bf16 out)")) {
            const float *rows = Gbf16(gC, R * ldc);
            for (size_t r = 0; r < R; r++) memcpy(got + r * N, rows + r * ldc, N * sizeof *got);
            check_arr(got, want, nc, 5e-3, atol,
                      "CUTLASS grouped GEMM E %d K %d N %d trans_w %d, bf16 out into rows of %d", E, K, N, tw, ldc);
            r2 = mk_gg_cutlass_rows(g, gC, 1, ldc, gA, K, gW, (size_t)K * N, tw ? K : N, tw, offs, E, K, N, 0.f);
            tap_ok(r2 == MK_OK && memcmp(Gbf16(gC, R * ldc), rows, R * ldc * 4) == 0,
                   "CUTLASS grouped GEMM E %d K %d N %d trans_w %d: a second run gives the same bits", E, K, N, tw);
            r2 = mk_gg_cutlass_rows(gm, gC, 1, ldc, gA, K, gW, (size_t)K * N, tw ? K : N, tw, offs, E, K, N, 0.f);
            tap_ok(r2 == MK_OK && memcmp(Gbf16(gC, R * ldc), rows, R * ldc * 4) == 0,
                   "CUTLASS grouped GEMM E %d K %d N %d trans_w %d: the same bits on fewer SMs", E, K, N, tw);
        }
    }
    float *dC = Hbf16(Hrand(nc, 1), nc), *dW0 = Hrand(nw, 1), *want = Hcopy(dW0, nw);
    float *wide = Hrand(2 * nc, 1);
    for (size_t r = 0; r < R; r++) memcpy(wide + r * 2 * N + N, dC + r * N, N * sizeof *dC);
    void *gwide = Dbf16(wide, 2 * nc);
    float *gdW = D(dW0, nw * 4), *gdW2 = D(dW0, nw * 4);
    const void *gdC = (const char *)gwide + (size_t)N * 2;
    int r1 = cpu->ops->grouped_matmul_wgrad(cpu, want, A, dC, offs, E, K, N);
    int r2 = mk_gg_cutlass_wgrad(g, gdW, gA, K, gdC, 2 * N, offs, E, K, N);
    if (both_ok(r1, r2, "CUTLASS grouped weight gradient")) {
        float *got = Gf(gdW, nw);
        check_arr(got, want, nw, RT_GEMM, AT_GEMM * sqrt((double)R),
                  "CUTLASS grouped weight gradient E %d K %d N %d (%zu rows, dC rows of %d) accumulates", E, K, N, R,
                  2 * N);
        r2 = mk_gg_cutlass_wgrad(g, gdW2, gA, K, gdC, 2 * N, offs, E, K, N);
        tap_ok(r2 == MK_OK && memcmp(Gf(gdW2, nw), got, nw * 4) == 0,
               "CUTLASS grouped weight gradient E %d K %d N %d: a second run gives the same bits", E, K, N);
        float *gdW3 = D(dW0, nw * 4);
        r2 = mk_gg_cutlass_wgrad(gm, gdW3, gA, K, gdC, 2 * N, offs, E, K, N);
        tap_ok(r2 == MK_OK && memcmp(Gf(gdW3, nw), got, nw * 4) == 0,
               "CUTLASS grouped weight gradient E %d K %d N %d: the same bits on fewer SMs", E, K, N);
    }
    arena_free();
}

/* Where CUTLASS is built in, it must run on an sm_90 GPU; shapes as the kernels above, with
 * empty experts at the start, middle and end, on the default schedule table and on each
 * schedule forced by MOEKIT_GG_SCHED. */
static void test_cutlass_kernels(void)
{
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    const int have = mk_gg_cutlass_available();
#ifdef MK_HAVE_CUTLASS
    if (major == 9) tap_ok(have, "CUTLASS grouped GEMMs available on this sm_90 GPU");
#endif
    if (!have) return;
    static const char *scheds[] = {"", "coop", "wide"};
    for (size_t s = 0; s < sizeof scheds / sizeof scheds[0]; s++) {
        mk_gg_cutlass *g = NULL, *gm = NULL;
        setenv("MOEKIT_GG_SCHED", scheds[s], 1);
        if (mk_gg_cutlass_create(&g) != MK_OK || mk_gg_cutlass_create(&gm) != MK_OK ||
            mk_gg_cutlass_set_sm_margin(gm, 20) != MK_OK)
            bail("CUTLASS grouped GEMM state");
        tap_diag("CUTLASS schedule: %s", *scheds[s] ? scheds[s] : "default table");
        enum { NCASE = 4 };
        const int shapes[NCASE][3] = {{5, 24, 16}, {7, 200, 136}, {64, 768, 512}, {64, 256, 768}}; /* E K N */
        for (int c = 0; c < NCASE; c++) {
            const int E = shapes[c][0], K = shapes[c][1], N = shapes[c][2];
            int offs[65];
            offs[0] = 0;
            for (int e = 0; e < E; e++) {
                int rows = e == 0 || e == 3 ? 0 : e == 2 ? 1 : 1 + rnd_below(150);
                if (e == E - 1) rows = E > 8 ? 5000 : 0; /* 5,000: a weight gradient in chunks */
                if (E == 7 && e == 5) rows = 3000;       /* whole, more rows than a chunk */
                offs[e + 1] = offs[e] + rows;
            }
            one_cutlass_kernel(g, gm, E, K, N, offs);
        }
        const int none[3] = {0, 0, 0};
        tap_ok(mk_gg_cutlass_rows(g, NULL, 0, 16, NULL, 16, NULL, 0, 16, 0, none, 2, 16, 16, 0.f) == MK_OK,
               "CUTLASS grouped GEMM with no rows at all does nothing");
        mk_gg_cutlass_destroy(g);
        mk_gg_cutlass_destroy(gm);
    }
    unsetenv("MOEKIT_GG_SCHED");
}

/* The bf16 backend's fused expert FFN (mk_expert_ffn.cu) against the op sequence on the
 * fp32 CPU: outputs by relative L2 error; weight gradients accumulate onto what is there;
 * an expert without rows; a second run gives the same bits. The second shape has an
 * expert of 2,500 rows, whose weight gradient is reduced in chunks of 2,048 rows. */
static void one_expert_ffn_bf16(mk_backend *bf, const char *path, int E, int Dm, int F, const int *offs)
{
    const size_t R = (size_t)offs[E], W = (size_t)E * Dm * F;
    /* rows gathered from N tokens of K choices each, as the model's routing does; the
     * output gradient rows weighted by gates */
    const int K = 3, N = (int)R / 2 + 1;
    int32_t *slot = (int32_t *)Hf(R > 0 ? R : 1);
    for (size_t r = 0; r < R; r++) slot[r] = rnd_below(N * K);
    float *x = Hrand((size_t)N * Dm, 1), *dout = Hrand((size_t)N * Dm, 1), *gates = Hrand((size_t)N * K, 1);
    float *w1 = Hrand(W, 0.2), *w3 = Hrand(W, 0.2), *w2 = Hrand(W, 0.2), *dw0 = Hrand(3 * W, 0.1);
    float *xp = Hf(R * Dm), *dy = Hf(R * Dm);
    float *y = Hf(R * Dm), *a1 = Hf(R * F), *a3 = Hf(R * F), *h = Hf(R * F), *dxp = Hf(R * Dm);
    float *dh = Hf(R * F), *da1 = Hf(R * F), *da3 = Hf(R * F), *dw = Hf(3 * W);
    memcpy(dw, dw0, 3 * W * sizeof *dw);
    const mk_rows_gather hx = {x, slot, NULL, K, N, NULL, NULL}, hd = {dout, slot, gates, K, N, NULL, NULL};
    int r1 = mk_expert_ffn_forward_ops(cpu, y, a1, a3, h, xp, &hx, w1, w3, w2, offs, E, Dm, F);
    if (r1 == MK_OK)
        r1 = mk_expert_ffn_backward_ops(cpu, dxp, dw, dw + W, dw + 2 * W, dh, da1, da3, dy, &hd, xp,
                                        a1, a3, h, w1, w3, w2, offs, E, Dm, F);
    float *g1 = D(w1, W * 4), *g3 = D(w3, W * 4), *g2 = D(w2, W * 4), *gdw = D(dw0, 3 * W * 4);
    const mk_rows_gather gxs = {D(x, (size_t)N * Dm * 4), (const int32_t *)D(slot, R * 4 + 4), NULL, K, N, NULL, NULL};
    const mk_rows_gather gds = {D(dout, (size_t)N * Dm * 4), gxs.row_slot, D(gates, (size_t)N * K * 4), K, N, NULL, NULL};
    float *gx = Dz(R * Dm * 4), *gdy = Dz(R * Dm * 4);
    float *gy = Dz(R * Dm * 4), *ga1 = Dz(R * F * 4), *ga3 = Dz(R * F * 4), *gh = Dz(R * F * 4);
    float *gdx = Dz(R * Dm * 4), *gdh = Dz(R * F * 4), *gda1 = Dz(R * F * 4), *gda3 = Dz(R * F * 4);
    int r2 = bf->ops->expert_ffn_forward(bf, gy, ga1, ga3, gh, gx, &gxs, g1, g3, g2, offs, E, Dm, F);
    if (r2 == MK_OK)
        r2 = bf->ops->expert_ffn_backward(bf, gdx, gdw, gdw + W, gdw + 2 * W, gdh, gda1, gda3, gdy,
                                          &gds, gx, ga1, ga3, gh, g1, g3, g2, offs, E, Dm, F);
    if (both_ok(r1, r2, "bf16 expert FFN forward + backward")) {
        const char *names[5] = {"y", "dx", "dw1 (accumulated)", "dw3 (accumulated)", "dw2 (accumulated)"};
        /* y and dx are expert rows: bf16 in this mode */
        const float *got[5] = {Gbf(gy, R * Dm), Gbf(gdx, R * Dm), NULL, NULL, NULL};
        const float *want[5] = {y, dxp, dw, dw + W, dw + 2 * W};
        const size_t n[5] = {R * Dm, R * Dm, W, W, W};
        float *gw = Gf(gdw, 3 * W);
        got[2] = gw, got[3] = gw + W, got[4] = gw + 2 * W;
        for (int i = 0; i < 5; i++) {
            double e = rel_l2(got[i], want[i], n[i]);
            tap_ok(e < 3e-2, "bf16 expert FFN%s (E %d, D %d, F %d, %zu rows, one expert empty): %s relative L2 error %.2e < 3e-2",
                   path, E, Dm, F, R, names[i], e);
        }
        float *gy2 = Dz(R * Dm * 4), *gdx2 = Dz(R * Dm * 4), *gdw2 = D(dw0, 3 * W * 4);
        r2 = bf->ops->expert_ffn_forward(bf, gy2, ga1, ga3, gh, gx, &gxs, g1, g3, g2, offs, E, Dm, F);
        if (r2 == MK_OK)
            r2 = bf->ops->expert_ffn_backward(bf, gdx2, gdw2, gdw2 + W, gdw2 + 2 * W, gdh, gda1, gda3,
                                              gdy, &gds, gx, ga1, ga3, gh, g1, g3, g2, offs, E, Dm, F);
        tap_ok(r2 == MK_OK && memcmp(Gbf(gy2, R * Dm), got[0], R * Dm * 4) == 0 &&
                   memcmp(Gbf(gdx2, R * Dm), got[1], R * Dm * 4) == 0 &&
                   memcmp(Gf(gdw2, 3 * W), gw, 3 * W * 4) == 0,
               "bf16 expert FFN%s (E %d, D %d, F %d): a second run gives the same bits", path, E, Dm, F);
        /* N = 0: the input rows gathered straight from the fp32 rows, not through the bf16
         * copy of the token rows: the same bits */
        mk_rows_gather direct = gxs;
        direct.N = 0;
        float *gx3 = Dz(R * Dm * 4), *gy3 = Dz(R * Dm * 4);
        r2 = bf->ops->expert_ffn_forward(bf, gy3, ga1, ga3, gh, gx3, &direct, g1, g3, g2, offs, E, Dm, F);
        tap_ok(r2 == MK_OK && memcmp(G(gx3, R * Dm * 2), G(gx, R * Dm * 2), R * Dm * 2) == 0 &&
                   memcmp(Gbf(gy3, R * Dm), got[0], R * Dm * 4) == 0,
               "bf16 expert FFN%s (E %d, D %d, F %d): input rows through the bf16 copy of the tokens = gathered from fp32",
               path, E, Dm, F);
        /* the caller's bf16 copy of the token rows (src_op, as moe_input_forward leaves
         * it): gathered from it, the same bits */
        uint16_t *xb = (uint16_t *)Hf(((size_t)N * Dm + 1) / 2);
        for (size_t i = 0; i < (size_t)N * Dm; i++) xb[i] = bf16_of(x[i]);
        mk_rows_gather withop = gxs;
        withop.src_op = D(xb, (size_t)N * Dm * 2);
        float *gx4 = Dz(R * Dm * 4), *gy4 = Dz(R * Dm * 4);
        r2 = bf->ops->expert_ffn_forward(bf, gy4, ga1, ga3, gh, gx4, &withop, g1, g3, g2, offs, E, Dm, F);
        tap_ok(r2 == MK_OK && memcmp(G(gx4, R * Dm * 2), G(gx, R * Dm * 2), R * Dm * 2) == 0 &&
                   memcmp(Gbf(gy4, R * Dm), got[0], R * Dm * 4) == 0,
               "bf16 expert FFN%s (E %d, D %d, F %d): input rows gathered from the caller's bf16 copy = rounded here",
               path, E, Dm, F);
        /* the output-gradient rows as the caller gathered them (rows_op, as combine_backward
         * writes them: bf16(w dout), rounded once): read instead of gathered, the same bits */
        uint16_t *dyh = (uint16_t *)Hf((R * Dm + 1) / 2 + 1);
        for (size_t r = 0; r < R; r++)
            for (int i = 0; i < Dm; i++) dyh[r * Dm + i] = bf16_of(gates[slot[r]] * dout[(size_t)(slot[r] / K) * Dm + i]);
        mk_rows_gather given = gds;
        given.rows_op = D(dyh, R * Dm * 2 + 2);
        float *gdx5 = Dz(R * Dm * 4), *gdw5 = D(dw0, 3 * W * 4);
        r2 = bf->ops->expert_ffn_forward(bf, gy3, ga1, ga3, gh, gx, &gxs, g1, g3, g2, offs, E, Dm, F);
        if (r2 == MK_OK)
            r2 = bf->ops->expert_ffn_backward(bf, gdx5, gdw5, gdw5 + W, gdw5 + 2 * W, gdh, gda1, gda3, gdy, &given,
                                              gx, ga1, ga3, gh, g1, g3, g2, offs, E, Dm, F);
        tap_ok(r2 == MK_OK && memcmp(Gbf(gdx5, R * Dm), got[1], R * Dm * 4) == 0 &&
                   memcmp(Gf(gdw5, 3 * W), gw, 3 * W * 4) == 0,
               "bf16 expert FFN%s (E %d, D %d, F %d, %zu rows): output-gradient rows given (rows_op) = gathered here",
               path, E, Dm, F, R);
        /* a backward given the same weights in other buffers rounds them itself (the
         * forward may have left its rounded weights in the state): the same bits */
        float *c1 = D(w1, W * 4), *c3 = D(w3, W * 4), *c2 = D(w2, W * 4), *gdw3 = D(dw0, 3 * W * 4);
        float *gdx3 = Dz(R * Dm * 4);
        r2 = bf->ops->expert_ffn_forward(bf, gy3, ga1, ga3, gh, gx, &gxs, g1, g3, g2, offs, E, Dm, F);
        if (r2 == MK_OK)
            r2 = bf->ops->expert_ffn_backward(bf, gdx3, gdw3, gdw3 + W, gdw3 + 2 * W, gdh, gda1, gda3, gdy, &gds, gx,
                                              ga1, ga3, gh, c1, c3, c2, offs, E, Dm, F);
        tap_ok(r2 == MK_OK && memcmp(Gbf(gdx3, R * Dm), got[1], R * Dm * 4) == 0 &&
                   memcmp(Gf(gdw3, 3 * W), gw, 3 * W * 4) == 0,
               "bf16 expert FFN%s (E %d, D %d, F %d, %zu rows): a backward with the weights in other buffers gives the same bits",
               path, E, Dm, F, R);
    }
    arena_free();
}

static void test_expert_ffn_bf16(mk_backend *bf, const char *path)
{
    const int small[6] = {0, 7, 7, 20, 21, 41};
    one_expert_ffn_bf16(bf, path, 5, 64, 32, small);
    /* rows enough for the rounded weights (49,152 bytes) to fit in a3's 640 x 32 floats */
    const int fits[5] = {0, 150, 150, 420, 640};
    one_expert_ffn_bf16(bf, path, 4, 64, 32, fits);
    int offs[17];
    offs[0] = 0;
    for (int e = 0; e < 16; e++)
        offs[e + 1] = offs[e] + (e == 3 ? 0 : e == 9 ? 2500 : 1 + rnd_below(400));
    one_expert_ffn_bf16(bf, path, 16, 256, 128, offs);
}

/* The bf16 backend's fused output layer (logits GEMM on bf16 operands to bf16 logits,
 * cross-entropy writing bf16 dlogits to the backend's workspace) against the op sequence on
 * the fp32 CPU, tied and untied; ignored targets; a backward without a training forward is
 * refused. */
static void one_output_bf16(mk_backend *bf, int N, int V, int Dm)
{
    for (int tied = 0; tied < 2; tied++) {
        const size_t nx = (size_t)N * Dm, nw = (size_t)V * Dm, nl = (size_t)N * V;
        float *x = Hrand(nx, 1), *W = Hrand(nw, 0.3), *dW0 = Hrand(nw, 0.1);
        int32_t tg[300];
        if (N > 300) bail("one_output_bf16: at most 300 rows");
        for (int n = 0; n < N; n++) tg[n] = n % 17 == 5 ? -1 : rnd_below(V);
        if (N > 2) tg[1] = V - 1, tg[2] = 0; /* the first and last logit of a row */
        float *loss = Hf(N), *logits = Hf(nl), *dx = Hf(nx), *dW = Hcopy(dW0, nw);
        int r1 = mk_output_forward_ops(cpu, loss, logits, x, W, tied, tg, N, V, Dm, 1);
        if (r1 == MK_OK) r1 = mk_output_backward_ops(cpu, dx, dW, x, W, tied, logits, N, V, Dm, 0.01f);
        float *gx = D(x, nx * 4), *gW = D(W, nw * 4), *gdW = D(dW0, nw * 4);
        int32_t *gtg = (int32_t *)D(tg, (size_t)N * sizeof *tg);
        float *gloss = Dz(N * 4), *glog = Dz(nl * 4), *gdx = Dz(nx * 4);
        int r2 = bf->ops->output_forward(bf, gloss, glog, gx, gW, tied, gtg, N, V, Dm, 1);
        float *l1 = Gf(gloss, N);
        if (r2 == MK_OK) r2 = bf->ops->output_backward(bf, gdx, gdW, gx, gW, tied, glog, N, V, Dm, 0.01f);
        if (both_ok(r1, r2, "bf16 output layer forward + backward")) {
            double e[3] = {rel_l2(l1, loss, N), rel_l2(Gf(gdx, nx), dx, nx), rel_l2(Gf(gdW, nw), dW, nw)};
            const char *what[3] = {"losses", "dx", "dW (accumulated)"};
            for (int i = 0; i < 3; i++)
                tap_ok(e[i] < 2e-2, "bf16 output layer (%s, N %d, V %d, D %d): %s relative L2 error %.2e < 2e-2",
                       tied ? "tied" : "untied", N, V, Dm, what[i], e[i]);
            float *gdx2 = Dz(nx * 4), *gdW2 = D(dW0, nw * 4), *gloss2 = Dz(N * 4);
            r2 = bf->ops->output_forward(bf, gloss2, glog, gx, gW, tied, gtg, N, V, Dm, 1);
            if (r2 == MK_OK) r2 = bf->ops->output_backward(bf, gdx2, gdW2, gx, gW, tied, glog, N, V, Dm, 0.01f);
            tap_ok(r2 == MK_OK && memcmp(Gf(gloss2, N), l1, N * 4) == 0 &&
                       memcmp(Gf(gdx2, nx), Gf(gdx, nx), nx * 4) == 0 &&
                       memcmp(Gf(gdW2, nw), Gf(gdW, nw), nw * 4) == 0,
                   "bf16 output layer (%s, V %d): a second run gives the same bits", tied ? "tied" : "untied", V);
        }
        /* an evaluation forward leaves nothing for a backward */
        r2 = bf->ops->output_forward(bf, gloss, glog, gx, gW, tied, gtg, N, V, Dm, 0);
        tap_ok(r2 == MK_OK && rel_l2(Gf(gloss, N), loss, N) < 2e-2 &&
                   bf->ops->output_backward(bf, gdx, gdW, gx, gW, tied, glog, N, V, Dm, 0.01f) == MK_ERR_INTERNAL,
               "bf16 output layer (%s, V %d): evaluation losses match; a backward after it is refused",
               tied ? "tied" : "untied", V);
        arena_free();
    }
}

/* V 1000; GPT-2's padded 50,304 (a row of bf16 logits in half of the shared memory the
 * cross-entropy stages it in); 120,000 (more than fits: the three-pass kernel). */
static void test_output_bf16(mk_backend *bf)
{
    one_output_bf16(bf, 300, 1000, 64);
    one_output_bf16(bf, 40, 50304, 32);
    one_output_bf16(bf, 12, 120000, 32);
}

/* ------------------------------------------------------------------ router */

static void test_router(void)
{
    /* N, E, K: counts and psum over one chunk of 64 tokens, a part of one, five with a
     * short last one, and more experts than threads in a block */
    const int cases[6][3] = {{64, 8, 2}, {37, 16, 4}, {5, 3, 3}, {300, 64, 8}, {70, 300, 2}, {2500, 64, 8}};
    for (int c = 0; c < 6; c++)
        for (int norm = 0; norm < 2; norm++) {
            const int N = cases[c][0], E = cases[c][1], K = cases[c][2];
            const size_t ne = (size_t)N * E, nk = (size_t)N * K;
            float *z = Hrand(ne, 2);
            /* Ties: a constant row (all equal probabilities) and a row with two equal maxima. */
            for (int e = 0; e < E; e++) z[(size_t)1 * E + e] = 0.25f;
            if (N > 2 && E > 2) z[(size_t)2 * E + 1] = z[(size_t)2 * E + E - 1] = 5;
            float *probs = Hf(ne), *lse = Hf(N), *gates = Hf(nk), *psum = Hf(E);
            int32_t *topk = Hi(nk), *counts = Hi(E);
            float *gz = D(z, ne * 4), *gprobs = Dz(ne * 4), *glse = Dz(N * 4), *ggates = Dz(nk * 4);
            float *gpsum = Dz(E * 4);
            int32_t *gtopk = Dz(nk * 4), *gcounts = Dz(E * 4);
            int r1 = cpu->ops->router_forward(cpu, probs, lse, topk, gates, counts, psum, NULL, z, N, E, K, norm);
            int r2 = gpu->ops->router_forward(gpu, gprobs, glse, gtopk, ggates, gcounts, gpsum, NULL, gz, N,
                                              E, K, norm);
            if (!both_ok(r1, r2, "router_forward")) continue;
            check_arr(Gf(gprobs, ne), probs, ne, RT_EW, 1e-7, "router_forward N %d E %d K %d norm %d: probs", N, E, K, norm);
            check_arr(Gf(glse, N), lse, N, RT_EW, 1e-6, "router_forward N %d E %d K %d norm %d: lse", N, E, K, norm);
            check_ints(Gi(gtopk, nk), topk, nk, "router_forward N %d E %d K %d norm %d: topk (ties to lower index)", N, E, K, norm);
            check_arr(Gf(ggates, nk), gates, nk, RT_EW, 1e-7, "router_forward N %d E %d K %d norm %d: gates", N, E, K, norm);
            check_ints(Gi(gcounts, E), counts, E, "router_forward N %d E %d K %d norm %d: counts", N, E, K, norm);
            check_arr(Gf(gpsum, E), psum, E, RT_EW, 1e-6, "router_forward N %d E %d K %d norm %d: psum", N, E, K, norm);

            /* Backward from the CPU's forward outputs on both sides. */
            float *dgates = Hrand(nk, 1), *lbl_ds = Hrand(E, 0.1), *dz = Hf(ne);
            float *gdg = D(dgates, nk * 4), *glds = D(lbl_ds, E * 4), *gdz = Dz(ne * 4);
            float *cp = D(probs, ne * 4), *cl = D(lse, N * 4), *cg = D(gates, nk * 4);
            int32_t *ct = D(topk, nk * 4);
            for (int withlbl = 0; withlbl < 2; withlbl++) {
                r1 = cpu->ops->router_backward(cpu, dz, dgates, withlbl ? lbl_ds : NULL, 0.01f, probs,
                                               lse, topk, gates, N, E, K, norm);
                r2 = gpu->ops->router_backward(gpu, gdz, gdg, withlbl ? glds : NULL, 0.01f, cp, cl, ct,
                                               cg, N, E, K, norm);
                if (both_ok(r1, r2, "router_backward"))
                    check_arr(Gf(gdz, ne), dz, ne, RT_EW, 1e-7,
                              "router_backward N %d E %d K %d norm %d lbl_ds %s", N, E, K, norm,
                              withlbl ? "given" : "NULL");
            }
        }
    /* NaN logits are an error on both. */
    float z[8] = {0, 1, NAN, 2, 0, 0, 0, 0}, pr[8], ls[2], gt[2], ps[4];
    int32_t tk[2], cn[4];
    float *gz = D(z, sizeof z), *gp = Dz(sizeof pr), *gl = Dz(sizeof ls), *gg = Dz(sizeof gt), *gps = Dz(sizeof ps);
    int32_t *gtk = Dz(sizeof tk), *gcn = Dz(sizeof cn);
    int r1 = cpu->ops->router_forward(cpu, pr, ls, tk, gt, cn, ps, NULL, z, 2, 4, 1, 0);
    int r2 = gpu->ops->router_forward(gpu, gp, gl, gtk, gg, gcn, gps, NULL, gz, 2, 4, 1, 0);
    tap_ok(r1 == MK_ERR_NUMERIC && r2 == MK_ERR_NUMERIC, "router_forward: NaN logits are MK_ERR_NUMERIC on both (cpu %d, cuda %d)", r1, r2);
    /* Given a flag in device memory: set for NaN, +Inf and a lone -Inf, cleared for finite
     * logits (the flag holds 1 from the call before), counts complete either way. */
    const float nonfin[4] = {NAN, INFINITY, -INFINITY, 0.5f};
    int32_t *gflag = Dz(4);
    for (int i = 0; i < 4; i++) {
        z[2] = nonfin[i];
        float *gz2 = D(z, sizeof z);
        r2 = gpu->ops->router_forward(gpu, gp, gl, gtk, gg, gcn, gps, gflag, gz2, 2, 4, 1, 0);
        const int32_t *fl = Gi(gflag, 1), *c = Gi(gcn, 4);
        tap_ok(r2 == MK_OK && *fl == (i < 3) && c[0] + c[1] + c[2] + c[3] == 2,
               "router_forward with a device flag: logit %g gives flag %d (rc %d), counts complete", (double)nonfin[i],
               (int)*fl, r2);
    }
    arena_free();
}

/* ------------------------------------------------------------------ dispatch and combine */

/* Gate gradients with 16-byte loads (D 768, 24) and element by element (D 30: not in
 * fours), dropped choices (slot_row -1) giving 0. */
static void test_combine_gates(void)
{
    const int shapes[3][3] = {{50, 3, 768}, {20, 2, 30}, {9, 4, 24}}; /* N K D */
    for (int c = 0; c < 3; c++) {
        const int N = shapes[c][0], K = shapes[c][1], Dm = shapes[c][2], S = N * K;
        float *dout = Hrand((size_t)N * Dm, 1), *y = Hrand((size_t)S * Dm, 1), *dg = Hf(S);
        int32_t *slot_row = Hi(S);
        for (int i = 0; i < S; i++) slot_row[i] = i % 7 == 3 ? -1 : (i * 5) % S;
        float *gdout = D(dout, (size_t)N * Dm * 4), *gy = D(y, (size_t)S * Dm * 4), *gdg = Dz(S * 4);
        int32_t *gsr = D(slot_row, S * 4);
        int r1 = cpu->ops->combine_backward_gates(cpu, dg, dout, y, slot_row, N, K, Dm);
        int r2 = gpu->ops->combine_backward_gates(gpu, gdg, gdout, gy, gsr, N, K, Dm);
        if (both_ok(r1, r2, "combine_backward_gates"))
            check_arr(Gf(gdg, S), dg, S, RT_EW, AT_EW, "combine_backward_gates N %d K %d D %d", N, K, Dm);
    }
    arena_free();
}

/* The bf16 mode's expert rows (what its expert FFN writes): combine_rows and the gate
 * gradients read bf16 rows of D when D is a multiple of 8 (16-byte loads, and element by
 * element off 16-byte alignment), against the CPU on the widened rows; D 30 keeps fp32
 * rows. Accumulates onto dst; weights given and NULL; dropped choices. */
static void test_expert_rows_bf16(mk_backend *bf)
{
    const int shapes[4][4] = {{50, 3, 768, 0}, {9, 4, 24, 0}, {9, 4, 24, 1}, {20, 2, 30, 0}}; /* N K D off */
    for (int c = 0; c < 4; c++) {
        const int N = shapes[c][0], K = shapes[c][1], Dm = shapes[c][2], off = shapes[c][3], S = N * K;
        const int b16 = Dm % 8 == 0;
        const size_t ny = (size_t)S * Dm;
        float *dout = Hrand((size_t)N * Dm, 1), *y = Hrand(ny, 1), *w = Hrand(S, 1);
        float *acc0 = Hrand((size_t)N * Dm, 1), *acc = Hcopy(acc0, (size_t)N * Dm), *dg = Hf(S);
        uint16_t *yb = H(ny * 2 + 16);
        for (size_t i = 0; i < ny; i++) yb[i] = bf16_of(y[i]), y[i] = b16 ? float_of_bf16(yb[i]) : y[i];
        int32_t *slot_row = Hi(S);
        for (int i = 0; i < S; i++) slot_row[i] = i % 7 == 3 ? -1 : (i * 5) % S;
        /* off: every operand 4 bytes past 16-byte alignment */
        char *gyb = Dz(ny * 4 + 16), *gout = Dz((size_t)N * Dm * 4 + 16), *gacc = Dz((size_t)N * Dm * 4 + 16);
        float *gy = (float *)(gyb + 4 * off), *gdout = (float *)(gout + 4 * off), *gdst = (float *)(gacc + 4 * off);
        cudaMemcpy(gy, b16 ? (const void *)yb : (const void *)y, b16 ? ny * 2 : ny * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(gdout, dout, (size_t)N * Dm * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(gdst, acc0, (size_t)N * Dm * 4, cudaMemcpyHostToDevice);
        float *gw = D(w, S * 4), *gdg = Dz(S * 4);
        int32_t *gsr = D(slot_row, S * 4);
        /* onto dst itself (with and without weights), from a NULL base, from another buffer */
        char *gbase = Dz((size_t)N * Dm * 4 + 16);
        float *gb = (float *)(gbase + 4 * off), *base = Hrand((size_t)N * Dm, 1);
        cudaMemcpy(gb, base, (size_t)N * Dm * 4, cudaMemcpyHostToDevice);
        static const char *how[4] = {"accumulates, weights given", "accumulates, weights NULL",
                                     "NULL base, weights given", "another base, weights given"};
        for (int v = 0; v < 4; v++) {
            const int withw = v != 1;
            const float *hb = v < 2 ? acc : v == 2 ? NULL : base, *db = v < 2 ? gdst : v == 2 ? NULL : gb;
            int r1 = cpu->ops->combine_rows(cpu, acc, hb, y, slot_row, withw ? w : NULL, N, K, Dm);
            int r2 = bf->ops->combine_rows(bf, gdst, db, gy, gsr, withw ? gw : NULL, N, K, Dm);
            if (both_ok(r1, r2, "combine_rows"))
                check_arr(Gf(gdst, (size_t)N * Dm), acc, (size_t)N * Dm, RT_EW, AT_EW,
                          "bf16 mode combine_rows (%s rows, N %d K %d D %d%s, %s)", b16 ? "bf16" : "fp32", N, K,
                          Dm, off ? ", unaligned" : "", how[v]);
        }
        int r1 = cpu->ops->combine_backward_gates(cpu, dg, dout, y, slot_row, N, K, Dm);
        int r2 = bf->ops->combine_backward_gates(bf, gdg, gdout, gy, gsr, N, K, Dm);
        if (both_ok(r1, r2, "combine_backward_gates"))
            check_arr(Gf(gdg, S), dg, S, RT_EW, AT_EW, "bf16 mode combine_backward_gates (%s rows, N %d K %d D %d%s)",
                      b16 ? "bf16" : "fp32", N, K, Dm, off ? ", unaligned" : "");
    }
    arena_free();
}

/* The bf16 mode's combine_backward: the gate gradients with the same bits as
 * combine_backward_gates, and each kept choice's row w * dout[n] in the expert FFN's
 * operand format (bf16, each product rounded once, when D is a multiple of 8; fp32
 * otherwise), bit for bit against the host; dropped choices write no row. Rows 16-byte
 * aligned and not. */
static void test_combine_backward_bf16(mk_backend *bf)
{
    if (!bf->ops->combine_backward) {
        tap_ok(0, "the bf16 mode has combine_backward");
        return;
    }
    const int shapes[4][4] = {{50, 3, 768, 0}, {9, 4, 24, 0}, {9, 4, 24, 1}, {20, 2, 30, 0}}; /* N K D off */
    for (int c = 0; c < 4; c++) {
        const int N = shapes[c][0], K = shapes[c][1], Dm = shapes[c][2], off = shapes[c][3], S = N * K;
        const int b16 = Dm % 8 == 0, esz = b16 ? 2 : 4;
        /* a random permutation of the kept choices onto rows 0..R-1 */
        int32_t *slot_row = Hi(S);
        int R = 0;
        for (int i = 0; i < S; i++) slot_row[i] = i % 7 == 3 ? -1 : R++;
        for (int i = S - 1; i > 0; i--) {
            const int j = rnd_below(i + 1), t = slot_row[i];
            slot_row[i] = slot_row[j], slot_row[j] = t;
        }
        float *dout = Hrand((size_t)N * Dm, 1), *y = Hrand((size_t)R * Dm, 1), *w = Hrand(S, 1);
        uint16_t *yb = H((size_t)R * Dm * 2 + 16);
        for (size_t i = 0; i < (size_t)R * Dm; i++) yb[i] = bf16_of(y[i]);
        float *gy = D(b16 ? (const void *)yb : (const void *)y, (size_t)R * Dm * esz);
        float *gdout = D(dout, (size_t)N * Dm * 4), *gw = D(w, S * 4), *gdg = Dz(S * 4), *gdg2 = Dz(S * 4);
        int32_t *gsr = D(slot_row, S * 4);
        char *gdy = Dz((size_t)R * Dm * esz + 16);
        int r1 = bf->ops->combine_backward_gates(bf, gdg, gdout, gy, gsr, N, K, Dm);
        int r2 = bf->ops->combine_backward(bf, gdg2, gdy + 4 * off, gdout, gy, gsr, gw, N, K, Dm);
        if (!both_ok(r1, r2, "combine_backward")) continue;
        tap_ok(memcmp(G(gdg2, S * 4), G(gdg, S * 4), S * 4) == 0,
               "bf16 mode combine_backward (N %d K %d D %d%s): the gate gradients of combine_backward_gates, bit for bit",
               N, K, Dm, off ? ", rows unaligned" : "");
        const char *got = G(gdy + 4 * off, (size_t)R * Dm * esz);
        size_t bad = 0;
        for (int s = 0; s < S; s++) {
            if (slot_row[s] < 0) continue;
            for (int i = 0; i < Dm; i++) {
                const float v = w[s] * dout[(size_t)(s / K) * Dm + i];
                const size_t at = (size_t)slot_row[s] * Dm + i;
                uint16_t hb;
                float hf;
                if (b16)
                    memcpy(&hb, got + at * 2, 2), bad += hb != bf16_of(v);
                else
                    memcpy(&hf, got + at * 4, 4), bad += memcmp(&hf, &v, 4) != 0;
            }
        }
        tap_ok(bad == 0, "bf16 mode combine_backward (N %d K %d D %d%s): %d rows of w dout as %s, bit for bit (%zu differ)",
               N, K, Dm, off ? ", rows unaligned" : "", R, b16 ? "bf16" : "fp32", bad);
    }
    arena_free();
}

/* Expert parallelism's plans: the GPU's (route_plan's sort over bucket ids) against the
 * CPU's host loops, bit for bit, on random routing with dropped choices, then arrived
 * records with bad ones among them, then the gate gradients back. */
static void test_ep_plans(void)
{
    static const struct { int N, K, El, P; } cases[] = {{300, 4, 3, 4}, {4096, 8, 16, 4}, {2048, 8, 32, 2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int N = cases[c].N, K = cases[c].K, El = cases[c].El, P = cases[c].P, E = El * P;
        const size_t NK = (size_t)N * K, NP = (size_t)N * P;
        int32_t *topk = Hi(NK), *slot = Hi(NK);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < K; j++) {
                int e, dup;
                do { /* K distinct experts, crowded onto the first ranks */
                    e = rnd_below(n % 3 ? El + 1 : E);
                    dup = 0;
                    for (int i = 0; i < j; i++) dup |= topk[(size_t)n * K + i] == e;
                } while (dup);
                topk[(size_t)n * K + j] = e;
                slot[(size_t)n * K + j] = rnd_below(10) == 0 ? -1 : 0;
            }
        float *gates = Hrand(NK, 1);
        int32_t *offs = Hi(P + 1), *row_tok = Hi(NP), *row_of = Hi(NP), *back_of = Hi(NK);
        mk_ep_rec *rec = (mk_ep_rec *)H(NP * K * sizeof(mk_ep_rec));
        int32_t *goffs = (int32_t *)Dz((P + 1) * 4), *gtok = (int32_t *)Dz(NP * 4), *gof = (int32_t *)Dz(NP * 4);
        int32_t *gback = (int32_t *)Dz(NK * 4);
        mk_ep_rec *grec = (mk_ep_rec *)Dz(NP * K * sizeof(mk_ep_rec));
        int32_t *gtopk = (int32_t *)D(topk, NK * 4), *gslot = (int32_t *)D(slot, NK * 4);
        float *ggates = (float *)D(gates, NK * 4);
        int r1 = cpu->ops->ep_send_plan(cpu, offs, row_tok, row_of, rec, back_of, topk, slot, gates, N, K, El, P);
        int r2 = gpu->ops->ep_send_plan(gpu, goffs, gtok, gof, grec, gback, gtopk, gslot, ggates, N, K, El, P);
        if (!both_ok(r1, r2, "ep_send_plan")) continue;
        const int R = offs[P];
        check_ints(Gi(goffs, P + 1), offs, P + 1, "ep_send_plan N %d K %d El %d P %d: rows per rank", N, K, El, P);
        check_ints(Gi(gtok, R), row_tok, R, "ep_send_plan N %d: each row's token and rank (%d rows)", N, R);
        check_ints(Gi(gof, NP), row_of, NP, "ep_send_plan N %d: the row of each (token, rank)", N);
        check_ints(Gi(gback, NK), back_of, NK, "ep_send_plan N %d: where each choice's record is", N);
        const void *hrec = G(grec, (size_t)R * K * sizeof(mk_ep_rec));
        tap_ok(memcmp(hrec, rec, (size_t)R * K * sizeof(mk_ep_rec)) == 0,
               "ep_send_plan N %d: the %d rows' records, bit for bit", N, R);

        /* The records as they would arrive (all ranks' rows at one rank of El experts: the
         * ids are local already), bad ids in the second pass. */
        for (int bad = 0; bad < 2; bad++) {
            const int S = R * K;
            if (bad) rec[1].id = El, rec[S / 2].id = -3, rec[S - 1].id = 1 << 20;
            int32_t *roffs = Hi(El + 2), *rs = Hi(S), *sr = Hi(S);
            float *rg = Hrand(S, 1);
            mk_ep_rec *grr = (mk_ep_rec *)D(rec, (size_t)S * sizeof(mk_ep_rec));
            int32_t *groffs = (int32_t *)Dz((El + 2) * 4), *grs = (int32_t *)Dz((size_t)S * 4);
            int32_t *gsr = (int32_t *)Dz((size_t)S * 4);
            float *grg = (float *)Dz((size_t)S * 4);
            r1 = cpu->ops->ep_recv_plan(cpu, roffs, rs, sr, rg, rec, S, El);
            r2 = gpu->ops->ep_recv_plan(gpu, groffs, grs, gsr, grg, grr, S, El);
            if (!both_ok(r1, r2, "ep_recv_plan")) continue;
            check_ints(Gi(groffs, El + 2), roffs, El + 2, "ep_recv_plan N %d%s: offsets and the bad count (%d)", N,
                       bad ? ", bad records" : "", roffs[El + 1]);
            check_ints(Gi(grs, S), rs, S, "ep_recv_plan N %d%s: row_slot", N, bad ? ", bad records" : "");
            check_ints(Gi(gsr, S), sr, S, "ep_recv_plan N %d%s: slot_row", N, bad ? ", bad records" : "");
            check_arr(Gf(grg, S), rg, S, 0, 0, "ep_recv_plan N %d%s: gates", N, bad ? ", bad records" : "");
            if (bad) tap_ok(roffs[El + 1] == 3, "ep_recv_plan counts the 3 bad records (%d)", roffs[El + 1]);
        }
        float *dg = Hrand((size_t)R * K, 1), *dgates = Hrand(NK, 1), *gdgates = (float *)Dz(NK * 4);
        float *gdg = (float *)D(dg, (size_t)R * K * 4);
        r1 = cpu->ops->ep_gate_grads(cpu, dgates, dg, back_of, (int)NK);
        r2 = gpu->ops->ep_gate_grads(gpu, gdgates, gdg, gback, (int)NK);
        if (both_ok(r1, r2, "ep_gate_grads"))
            check_arr(Gf(gdgates, NK), dgates, NK, 0, 0, "ep_gate_grads N %d: each choice's gate gradient", N);
        arena_free();
    }
}

static void test_dispatch(void)
{
    enum { N = 40, E = 6, K = 2, Dm = 24 };
    const size_t S = (size_t)N * K;
    const int caps[3] = {0, 7, 1};
    for (int c = 0; c < 3; c++) {
        const int cap = caps[c];
        int32_t *topk = Hi(S);
        for (int n = 0; n < N; n++) {
            topk[n * K] = rnd_below(n < 30 ? 2 : E); /* crowd experts 0, 1 so capacity drops */
            do topk[n * K + 1] = rnd_below(E);
            while (topk[n * K + 1] == topk[n * K]);
        }
        int32_t *offs = Hi(E + 1), *row_slot = Hi(S), *slot_row = Hi(S);
        int32_t *gtopk = D(topk, S * 4), *goffs = Dz((E + 1) * 4), *grs = Dz(S * 4), *gsr = Dz(S * 4);
        int r1 = cpu->ops->route_plan(cpu, offs, row_slot, slot_row, topk, N, E, K, cap);
        int r2 = gpu->ops->route_plan(gpu, goffs, grs, gsr, gtopk, N, E, K, cap);
        if (!both_ok(r1, r2, "route_plan")) continue;
        check_ints(Gi(goffs, E + 1), offs, E + 1, "route_plan capacity %d: offs", cap);
        check_ints(Gi(grs, S), row_slot, S, "route_plan capacity %d: row_slot", cap);
        check_ints(Gi(gsr, S), slot_row, S, "route_plan capacity %d: slot_row", cap);
        const int R = offs[E];
        if (cap == 1) tap_ok(R < (int)S, "route_plan capacity 1 drops choices (R %d of %zu)", R, S);

        /* Dispatch and combine on the CPU's plan (uploaded, identical on both sides). */
        int32_t *prs = D(row_slot, S * 4), *psr = D(slot_row, S * 4);
        float *src = Hrand((size_t)N * Dm, 1), *w = Hrand(S, 1);
        float *gsrc = D(src, sizeof(float) * N * Dm), *gw = D(w, S * 4);
        for (int withw = 0; withw < 2; withw++) {
            float *dst = Hrand((size_t)S * Dm, 1), *gdst = D(dst, sizeof(float) * S * Dm);
            r1 = cpu->ops->permute_rows(cpu, dst, src, row_slot, withw ? w : NULL, R, K, Dm);
            r2 = gpu->ops->permute_rows(gpu, gdst, gsrc, prs, withw ? gw : NULL, R, K, Dm);
            if (both_ok(r1, r2, "permute_rows"))
                check_arr(Gf(gdst, (size_t)R * Dm), dst, (size_t)R * Dm, 0, 0,
                          "permute_rows capacity %d weights %s", cap, withw ? "given" : "NULL");

            float *rows = Hrand((size_t)S * Dm, 1), *acc = Hrand((size_t)N * Dm, 1);
            float *grows = D(rows, sizeof(float) * S * Dm), *gacc = D(acc, sizeof(float) * N * Dm);
            r1 = cpu->ops->unpermute_add(cpu, acc, rows, slot_row, withw ? w : NULL, N, K, Dm);
            r2 = gpu->ops->unpermute_add(gpu, gacc, grows, psr, withw ? gw : NULL, N, K, Dm);
            if (both_ok(r1, r2, "unpermute_add"))
                check_arr(Gf(gacc, (size_t)N * Dm), acc, (size_t)N * Dm, RT_EW, AT_EW,
                          "unpermute_add capacity %d weights %s (accumulates)", cap, withw ? "given" : "NULL");
        }
        float *dout = Hrand((size_t)N * Dm, 1), *y = Hrand((size_t)S * Dm, 1), *dg = Hrand(S, 1);
        float *gdout = D(dout, sizeof(float) * N * Dm), *gy = D(y, sizeof(float) * S * Dm);
        float *gdg = D(dg, S * 4);
        r1 = cpu->ops->combine_backward_gates(cpu, dg, dout, y, slot_row, N, K, Dm);
        r2 = gpu->ops->combine_backward_gates(gpu, gdg, gdout, gy, psr, N, K, Dm);
        if (both_ok(r1, r2, "combine_backward_gates"))
            check_arr(Gf(gdg, S), dg, S, RT_EW, AT_EW, "combine_backward_gates capacity %d", cap);
    }
    /* Plans over many chunks of choices (the GPU counts and places in chunks of 256):
     * bench-s's E and K, and more experts than a block has threads, against the CPU. */
    const int big[4][4] = {{1000, 64, 8, 0}, {1000, 64, 8, 100}, {700, 300, 3, 0}, {700, 300, 3, 5}}; /* N E K cap */
    for (int c = 0; c < 4; c++) {
        const int N2 = big[c][0], E2 = big[c][1], K2 = big[c][2], cap = big[c][3];
        const size_t S2 = (size_t)N2 * K2;
        int32_t *topk = Hi(S2);
        for (int n = 0; n < N2; n++)
            for (int j = 0; j < K2; j++) { /* K distinct experts, crowded towards the low ones */
                int e, dup;
                do {
                    e = rnd_below(2) ? rnd_below(E2 / 4) : rnd_below(E2);
                    dup = 0;
                    for (int i = 0; i < j; i++) dup |= topk[(size_t)n * K2 + i] == e;
                } while (dup);
                topk[(size_t)n * K2 + j] = e;
            }
        int32_t *offs = Hi(E2 + 1), *row_slot = Hi(S2), *slot_row = Hi(S2);
        int32_t *gtopk = D(topk, S2 * 4), *goffs = Dz((E2 + 1) * 4), *grs = Dz(S2 * 4), *gsr = Dz(S2 * 4);
        int r1 = cpu->ops->route_plan(cpu, offs, row_slot, slot_row, topk, N2, E2, K2, cap);
        int r2 = gpu->ops->route_plan(gpu, goffs, grs, gsr, gtopk, N2, E2, K2, cap);
        if (!both_ok(r1, r2, "route_plan")) continue;
        check_ints(Gi(goffs, E2 + 1), offs, E2 + 1, "route_plan N %d E %d K %d capacity %d: offs", N2, E2, K2, cap);
        check_ints(Gi(grs, S2), row_slot, S2, "route_plan N %d E %d K %d capacity %d: row_slot", N2, E2, K2, cap);
        check_ints(Gi(gsr, S2), slot_row, S2, "route_plan N %d E %d K %d capacity %d: slot_row", N2, E2, K2, cap);
    }
    /* Per-sequence counts: 5 sequences of 8 tokens, and E = 300 (more experts than a
     * block has threads), against the CPU. */
    for (int ei = 0; ei < 2; ei++) {
        const int E2 = ei ? 300 : E, B2 = 5, S2 = 8 * K;
        int32_t *tk = Hi((size_t)B2 * S2), *sc = Hi((size_t)B2 * E2);
        for (int i = 0; i < B2 * S2; i++) tk[i] = rnd_below(i < S2 ? 2 : E2);
        int32_t *gtk = D(tk, (size_t)B2 * S2 * 4), *gsc = Dz((size_t)B2 * E2 * 4);
        int r1 = cpu->ops->sequence_counts(cpu, sc, tk, B2, S2, E2);
        int r2 = gpu->ops->sequence_counts(gpu, gsc, gtk, B2, S2, E2);
        if (both_ok(r1, r2, "sequence_counts"))
            check_ints(Gi(gsc, (size_t)B2 * E2), sc, (size_t)B2 * E2, "sequence_counts (B %d, S %d, E %d)", B2, S2, E2);
    }
    int32_t bad[4] = {0, 1, 6, 2};
    int32_t *gbad = D(bad, sizeof bad), *go = Dz(7 * 4), *g1 = Dz(16), *g2 = Dz(16);
    int32_t ho[7] = {0};
    int rc = gpu->ops->route_plan(gpu, go, g1, g2, gbad, 2, 6, 2, 0);
    if (rc == MK_OK) rc = gpu->ops->to_host(gpu, ho, go, sizeof ho);
    tap_ok(rc == MK_ERR_INTERNAL, "route_plan rejects an expert outside 0..E-1 (by the read of its offsets)");
    rc = gpu->ops->to_host(gpu, ho, go, sizeof ho);
    tap_ok(rc == MK_OK && ho[6] == 3, "route_plan: the rejection is reported once (offs[E] %d: the 3 valid choices)",
           (int)ho[6]);
    arena_free();
}

/* ------------------------------------------------------------------ loss */

static void test_cross_entropy(void)
{
    enum { N = 20, V = 300 };
    const size_t nv = (size_t)N * V;
    int32_t tgt[N];
    for (int n = 0; n < N; n++) tgt[n] = n % 6 == 2 ? -1 : rnd_below(V);
    int32_t *gtgt = D(tgt, sizeof tgt);
    float *logits = Hrand(nv, 4);
    float *gl = D(logits, nv * 4);
    for (int mode = 0; mode < 3; mode++) { /* no dlogits, separate, aliased */
        const char *what = mode == 0 ? "losses only" : mode == 1 ? "separate dlogits" : "dlogits aliasing logits";
        float *l = Hcopy(logits, nv), *losses = Hf(N), *dl = mode == 1 ? Hf(nv) : mode == 2 ? l : NULL;
        float *gll = Dz(nv * 4), *glosses = Dz(N * 4);
        if (gpu->ops->copy(gpu, gll, gl, nv * 4) != MK_OK) bail("copy");
        float *gdl = mode == 1 ? Dz(nv * 4) : mode == 2 ? gll : NULL;
        int r1 = cpu->ops->cross_entropy(cpu, losses, dl, l, tgt, N, V, 0.05f);
        int r2 = gpu->ops->cross_entropy(gpu, glosses, gdl, gll, gtgt, N, V, 0.05f);
        if (!both_ok(r1, r2, "cross_entropy")) continue;
        check_arr(Gf(glosses, N), losses, N, RT_EW, AT_EW, "cross_entropy (%s): losses", what);
        if (dl) check_arr(Gf(gdl, nv), dl, nv, RT_EW, 1e-8, "cross_entropy (%s): dlogits", what);
    }
    int32_t badt[2] = {3, V};
    int32_t *gbad = D(badt, sizeof badt);
    float *gls = Dz(8);
    tap_ok(gpu->ops->cross_entropy(gpu, gls, NULL, gl, gbad, 2, V, 1) == MK_ERR_INPUT,
           "cross_entropy rejects a target outside the vocabulary");
    arena_free();
}

/* ------------------------------------------------------------------ the model */

/* Every setting at its documented default (mk_config.c's table), then the test's shape:
 * filled by hand so the test needs no INI parser. */
static void model_config(mk_config *c, int variant)
{
    memset(c, 0, sizeof *c);
    c->model.vocab = 97;
    c->model.d_model = 32;
    c->model.layers = 2;
    c->model.heads = 4;
    c->model.experts = 8;
    c->model.topk = 2;
    c->model.ffn = 24;
    c->model.shared_ffn = 0;
    c->model.seq_len = 16;
    c->model.tie_embeddings = 1;
    c->router.norm_topk = 0;
    c->router.zloss_coeff = 0;
    c->router.capacity_factor = 0;
    c->lbl.mode = MK_LBL_MICRO;
    c->lbl.coeff = 0.01;
    c->lbl.micro_coeff = 0;
    c->train.micro_batch = 3;
    c->train.grad_accum = 1;
    c->train.steps = 100;
    c->train.warmup = 10;
    c->train.seed = 1234;
    c->train.lr = 0.001;
    c->train.min_lr_ratio = 0.1;
    c->train.decay_frac = 0.2;
    c->train.weight_decay = 0.1;
    c->train.grad_clip = 1;
    c->train.beta1 = 0.9;
    c->train.beta2 = 0.95;
    c->train.eps = 1e-8;
    c->train.lr_schedule = MK_LR_COSINE;
    c->train.threads = 0;
    c->parallel.ep = 1;
    strcpy(c->data.mixture, "natural");
    c->data.repeat_cap = 4;
    strcpy(c->run.dir, "run");
    c->ckpt.every = 0;
    c->ckpt.keep = 3;
    c->log.every = 10;
    c->eval.every = 0;
    if (variant == 1) {
        /* Everything optional on: lm_head, shared expert, normalised gates, z-loss,
         * capacity drops, the global LBL scope with an extra micro LBL. */
        c->model.tie_embeddings = 0;
        c->model.shared_ffn = 16;
        c->router.norm_topk = 1;
        c->router.zloss_coeff = 1e-3;
        c->router.capacity_factor = 1.0;
        c->lbl.mode = MK_LBL_GLOBAL;
        c->lbl.coeff = 0.1;
        c->lbl.micro_coeff = 0.05;
    }
    if (variant == 2) {
        /* head size 64 and T >= 162: the fused attention and the bf16 attention block */
        c->model.d_model = 128;
        c->model.heads = 2;
        c->model.ffn = 32;
        c->model.seq_len = 192;
        c->train.micro_batch = 2;
    }
}

typedef struct side {
    mk_backend *be;
    mk_model *m;
    mk_lbl *lbl;
    mk_forward_stats st;
    double lbl_v[8];
    int32_t counts[64];
} side;

static int side_make(side *s, mk_backend *be, const mk_config *cfg, unsigned long seed)
{
    memset(s, 0, sizeof *s);
    s->be = be;
    int rc = mk_model_create(cfg, be, &s->m);
    if (rc == MK_OK) rc = mk_model_init(s->m, seed);
    if (rc == MK_OK)
        rc = mk_lbl_create(cfg->lbl.mode, cfg->model.layers, cfg->model.experts, cfg->model.topk,
                           &s->lbl);
    return rc;
}

static void side_free(side *s)
{
    mk_lbl_destroy(&s->lbl);
    mk_model_destroy(&s->m);
}

/* One training micro-step from zero gradients; keeps the stats the next forward overwrites. */
static int side_step(side *s, const mk_config *cfg, const int32_t *tok, const int32_t *tgt, int B)
{
    MK_CHECK(mk_model_zero_grad(s->m));
    mk_lbl_reset(s->lbl);
    MK_CHECK(mk_model_forward(s->m, tok, tgt, B, s->lbl, 1, &s->st));
    for (int l = 0; l < cfg->model.layers; l++) s->lbl_v[l] = s->st.lbl[l];
    memcpy(s->counts, s->st.counts, sizeof(int32_t) * cfg->model.layers * cfg->model.experts);
    MK_CHECK(mk_model_backward(s->m, 1.0 / (double)s->st.targets, 1.0));
    return MK_OK;
}

/* A backend block (params, grads) as a host copy. */
static float *host_block(mk_backend *be, const float *p, size_t n)
{
    float *h = Hf(n);
    if (be->ops->to_host(be, h, p, n * sizeof(float)) != MK_OK) bail("to_host of a model block");
    return h;
}

/* The same forward + backward twice on backend be gives bit-identical loss and gradients. */
static void check_repeat_bits(side *g, mk_backend *be, const mk_config *cfg, const int32_t *tok,
                              const int32_t *tgt, int B, const char *label, const char *what)
{
    const size_t np = mk_model_param_count(g->m);
    int r2 = side_step(g, cfg, tok, tgt, B);
    float *g1 = host_block(be, mk_model_grads(g->m), np);
    double ce1 = g->st.ce_sum;
    int r3 = side_step(g, cfg, tok, tgt, B);
    float *g2 = host_block(be, mk_model_grads(g->m), np);
    tap_ok(r2 == MK_OK && r3 == MK_OK && memcmp(g1, g2, np * sizeof *g1) == 0 &&
               memcmp(&ce1, &g->st.ce_sum, sizeof ce1) == 0,
           "%s: %s twice gives bit-identical loss and gradients", label, what);
}

static void test_model(int variant)
{
    mk_config cfg;
    model_config(&cfg, variant);
    const char *label = variant ? "model (untied, shared expert, norm_topk, z-loss, capacity, global LBL)"
                                : "model (defaults)";
    side c, g;
    if (side_make(&c, cpu, &cfg, 42) != MK_OK || side_make(&g, gpu, &cfg, 42) != MK_OK) {
        tap_ok(0, "%s: create and init on both backends", label);
        return;
    }
    const size_t np = mk_model_param_count(c.m);
    tap_ok(np == mk_model_param_count(g.m), "%s: %zu parameters on both", label, np);
    float *pc = host_block(cpu, mk_model_params(c.m), np), *pg = host_block(gpu, mk_model_params(g.m), np);
    tap_ok(memcmp(pc, pg, np * sizeof *pc) == 0, "%s: init gives bit-identical parameters", label);

    const int B = cfg.train.micro_batch, T = cfg.model.seq_len, N = B * T, L = cfg.model.layers;
    const int E = cfg.model.experts, K = cfg.model.topk;
    int32_t *tok = Hi(N), *tgt = Hi(N);
    for (int n = 0; n < N; n++) {
        tok[n] = rnd_below(cfg.model.vocab);
        tgt[n] = n % 7 == 3 ? -1 : rnd_below(cfg.model.vocab);
    }
    int r1 = side_step(&c, &cfg, tok, tgt, B), r2 = side_step(&g, &cfg, tok, tgt, B);
    if (!both_ok(r1, r2, "model forward + backward")) goto out;

    tap_ok(c.st.targets == g.st.targets, "%s: %ld target tokens on both", label, c.st.targets);
    tap_close(g.st.ce_sum, c.st.ce_sum, 1e-5, 0, "%s: CE sum", label);
    tap_close(g.st.zloss, c.st.zloss, 1e-4, 1e-8, "%s: z-loss statistic", label);
    for (int l = 0; l < L; l++) tap_close(g.lbl_v[l], c.lbl_v[l], 1e-4, 1e-8, "%s: LBL of layer %d", label, l);
    check_ints(g.counts, c.counts, (size_t)L * E, "%s: expert counts of every layer", label);
    tap_ok(g.st.dropped == c.st.dropped, "%s: dropped choices %ld (cpu %ld)", label, g.st.dropped, c.st.dropped);
    for (int l = 0; l < L; l++) {
        int32_t *tc = Hi((size_t)N * K), *tg = Hi((size_t)N * K);
        if (mk_model_topk_host(c.m, l, tc) || mk_model_topk_host(g.m, l, tg)) bail("topk_host");
        check_ints(tg, tc, (size_t)N * K, "%s: top-k choices of layer %d", label, l);
    }

    /* Every gradient tensor: max |g_cuda - g_cpu| relative to max |g_cpu|. */
    float *gc = host_block(cpu, mk_model_grads(c.m), np), *gg = host_block(gpu, mk_model_grads(g.m), np);
    for (size_t i = 0; i < mk_model_tensor_count(c.m); i++) {
        const mk_tensor *t = mk_model_tensor(c.m, i);
        double num = 0, den = 0;
        for (size_t j = t->offset; j < t->offset + t->numel; j++) {
            double d = fabs((double)gg[j] - gc[j]);
            if (!isfinite((double)gg[j])) d = INFINITY;
            num = fmax(num, d);
            den = fmax(den, fabs((double)gc[j]));
        }
        double rel = den > 0 ? num / den : num;
        tap_ok(rel < MODEL_RTOL && den > 0, "%s: d/d %s matches the CPU (max |diff| / max |g| = %.2e, max |g| %.2e)",
               label, t->name, rel, den);
    }

    /* One AdamW step over the whole parameter block, then the loss again. */
    r1 = cpu->ops->adamw(cpu, mk_model_params(c.m), mk_model_grads(c.m), mk_model_adam_m(c.m),
                         mk_model_adam_v(c.m), np, 1, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1);
    r2 = gpu->ops->adamw(gpu, mk_model_params(g.m), mk_model_grads(g.m), mk_model_adam_m(g.m),
                         mk_model_adam_v(g.m), np, 1, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1);
    if (both_ok(r1, r2, "adamw on the model")) {
        r1 = side_step(&c, &cfg, tok, tgt, B);
        r2 = side_step(&g, &cfg, tok, tgt, B);
        if (both_ok(r1, r2, "model step after adamw"))
            tap_close(g.st.ce_sum, c.st.ce_sum, 1e-4, 0, "%s: CE sum after one AdamW step", label);
    }

    /* Determinism: the same forward + backward twice on the GPU gives the same bits. */
    check_repeat_bits(&g, gpu, &cfg, tok, tgt, B, label, "CUDA forward + backward");
out:
    side_free(&c);
    side_free(&g);
    arena_free();
}

/* The layer of a tensor named "layers.L....", or -1 for the others (embeddings, norms). */
static int tensor_layer(const char *name)
{
    int l = -1;
    if (sscanf(name, "layers.%d.", &l) != 1) l = -1;
    return l;
}

/* bf16 GEMMs against the fp32 CPU: the same model step, compared with bf16 tolerances. The
 * routing of a token may flip where two router probabilities are within bf16 rounding; with
 * a capacity limit one flip also moves which later choices are dropped. So the choices are
 * compared first: gradients that a flip reaches (its layer, the layers below it and the
 * tensors outside the layers) get a loose bound, the rest the bf16 one, and the number of
 * flips is reported. The data come from a seed of this test's own, not from the stream
 * the earlier tests left. */
static void test_model_bf16(int variant, mk_backend *bf)
{
    mk_config cfg;
    model_config(&cfg, variant);
    rng_state = 0x2545F4914F6CDD1Dull + (uint64_t)variant;
    const char *label = variant == 2   ? "bf16 model (head size 64, T 192: fused attention block)"
                        : variant == 1 ? "bf16 model (untied, shared expert, norm_topk, z-loss, capacity, global LBL)"
                                       : "bf16 model (defaults)";
    side c, g;
    if (side_make(&c, cpu, &cfg, 42) != MK_OK || side_make(&g, bf, &cfg, 42) != MK_OK) {
        tap_ok(0, "%s: create and init on both backends", label);
        return;
    }
    const size_t np = mk_model_param_count(c.m);
    const int B = cfg.train.micro_batch, T = cfg.model.seq_len, N = B * T, L = cfg.model.layers;
    int32_t *tok = Hi(N), *tgt = Hi(N);
    for (int n = 0; n < N; n++) {
        tok[n] = rnd_below(cfg.model.vocab);
        tgt[n] = n % 7 == 3 ? -1 : rnd_below(cfg.model.vocab);
    }
    int r1 = side_step(&c, &cfg, tok, tgt, B), r2 = side_step(&g, &cfg, tok, tgt, B);
    if (!both_ok(r1, r2, "bf16 model forward + backward")) goto out;
    tap_close(g.st.ce_sum, c.st.ce_sum, 1e-2, 0, "%s: CE sum within 1e-2", label);
    for (int l = 0; l < L; l++) tap_close(g.lbl_v[l], c.lbl_v[l], 3e-2, 1e-6, "%s: LBL of layer %d within 3e-2", label, l);
    const int K = cfg.model.topk;
    int top_flip = -1; /* the highest layer whose routing differs from the CPU's */
    for (int l = 0; l < L; l++) {
        int32_t *tc = Hi((size_t)N * K), *tg = Hi((size_t)N * K);
        if (mk_model_topk_host(c.m, l, tc) || mk_model_topk_host(g.m, l, tg)) bail("topk_host");
        int flips = 0;
        for (size_t i = 0; i < (size_t)N * K; i++) flips += tc[i] != tg[i];
        printf("# %s: layer %d: %d of %d routing choices differ from the CPU's\n", label, l, flips, N * K);
        tap_ok(flips <= N * K / 20, "%s: layer %d routes as the CPU does but for %d of %d choices (at most 5%%)",
               label, l, flips, N * K);
        if (flips) top_flip = l;
    }
    float *gc = host_block(cpu, mk_model_grads(c.m), np), *gg = host_block(bf, mk_model_grads(g.m), np);
    for (size_t i = 0; i < mk_model_tensor_count(c.m); i++) {
        const mk_tensor *t = mk_model_tensor(c.m, i);
        double den = 0;
        for (size_t j = t->offset; j < t->offset + t->numel; j++) den += (double)gc[j] * gc[j];
        double rel = rel_l2(gg + t->offset, gc + t->offset, t->numel);
        const int reached = top_flip >= 0 && tensor_layer(t->name) <= top_flip;
        const double tol = reached ? 0.5 : 5e-2;
        tap_ok(rel < tol && den > 0, "%s: d/d %s within %s tolerance (relative L2 error %.2e < %g)",
               label, t->name, reached ? "a routing flip's" : "bf16", rel, tol);
    }
    check_repeat_bits(&g, bf, &cfg, tok, tgt, B, label, "forward + backward");
out:
    side_free(&c);
    side_free(&g);
    arena_free();
}

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) tap_skip_all("no CUDA device");
    if (mk_backend_cpu_create(1, &cpu) != MK_OK) bail("cpu backend");
    if (mk_backend_cuda_create(0, 0, &gpu) != MK_OK) bail("cuda backend");
    tap_ok(strcmp(gpu->ops->name, "cuda") == 0, "cuda backend created on device 0 of %d", ndev);

    test_memory();
    test_matmul();
    test_grouped();
    test_elementwise();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_router();
    test_dispatch();
    test_ep_plans();
    test_combine_gates();
    test_cross_entropy();
    test_model(0);
    test_model(1);

    mk_backend *bf = NULL;
    if (mk_backend_cuda_create(0, 1, &bf) != MK_OK) bail("cuda backend (bf16)");
    test_matmul_bf16(bf);
    test_linear_backward_bf16(bf);
    test_attention_bf16(bf);
    test_attention_block_bf16(bf);
    test_moe_input_bf16(bf);
    test_grouped_bf16(bf);
    test_grouped_kernels_bf16();
    test_cutlass_kernels();
    test_expert_rows_bf16(bf);
    test_combine_backward_bf16(bf);
    test_flash_bf16();
    test_expert_ffn_bf16(bf, "");
    if (mk_gg_cutlass_available()) {
        /* the same op on our own grouped kernels (the state is made on first use) */
        mk_backend *own = NULL;
        setenv("MOEKIT_NO_CUTLASS", "1", 1);
        if (mk_backend_cuda_create(0, 1, &own) != MK_OK) bail("cuda backend (bf16, no CUTLASS)");
        test_expert_ffn_bf16(own, " (own kernels)");
        mk_backend_destroy(&own);
        unsetenv("MOEKIT_NO_CUTLASS");
    }
    test_output_bf16(bf);
    test_model_bf16(0, bf);
    test_model_bf16(1, bf);
    test_model_bf16(2, bf);
    mk_backend_destroy(&bf);

    mk_backend_destroy(&gpu);
    mk_backend_destroy(&cpu);
    return tap_done();
}
