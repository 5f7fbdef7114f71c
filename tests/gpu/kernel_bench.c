/* kernel_bench.c - time the CUDA backend's own kernels at schedules/bench-s.ini's shapes.
 *
 * One layer's expert FFN products (64 experts, 8 of them for each of 16384 tokens, d_model
 * 768, expert hidden size 256), the bf16 rounding they need, and the fused attention
 * (16 x 1024 tokens, 12 heads of 64): ms per call and TFLOP/s, to see which kernel holds
 * the step back (the op profile of moe-train only shows whole ops). Routing is uniform
 * (2048 rows per expert) or, with "skew", one expert gets a quarter of the rows as in
 * early training. Not a test: numbers only. Built by `make tests/gpu/kernel_bench` in a
 * CUDA build; tests/gpu/run.sh runs it with MOEKIT_KERNEL_BENCH=1.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "mk_error.h"
#include "mk_bf16.h"
#include "mk_flash_attn.h"
#include "mk_gg_cutlass.h"
#include "mk_grouped_gemm.h"

enum { E = 64, TOPK = 8, TOKENS = 16384, DM = 768, FF = 256, B = 16, T = 1024, H = 12, REPS = 10 };

static void *dev(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        fprintf(stderr, "kernel_bench: cudaMalloc of %zu bytes failed\n", bytes);
        exit(1);
    }
    cudaMemset(p, 0, bytes);
    return p;
}

/* Random fp32 values in [-s, s) on the device. */
static float *drand(size_t n, float s)
{
    float *h = malloc(n * sizeof *h), *d = dev(n * sizeof *h);
    if (!h) exit(1);
    unsigned x = 12345u + (unsigned)n;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        h[i] = ((x >> 8) / 16777216.0f - 0.5f) * 2 * s;
    }
    cudaMemcpy(d, h, n * sizeof *h, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

/* The buffers every job reads or writes. */
typedef struct bufs {
    int offs[E + 1];
    float *xp, *y, *dw, *ws, *qkv, *out, *state, *dqkv, *work, *dout;
    void *qkvb, *outb; /* the attention block's bf16 path */
    void *xb, *wb, *w2b, *hb, *db, *d3b, *yb;
    void *w13b, *a13b, *da13b; /* CUTLASS path: gate and up side by side ([.., 2F]) */
    size_t wsn;
    mk_gg_kernel kern;
    mk_gg_cutlass *cl;
} bufs;

typedef int (*job_fn)(const bufs *g);
typedef struct job {
    const char *name;
    double flop;
    job_fn fn;
} job;

static int j_round(const bufs *g) { return mk_cuda_round_bf16(g->xb, g->xp, (size_t)g->offs[E] * DM, "round"); }
static int j_a1(const bufs *g) { return mk_grouped_gemm_rows_bf16(g->kern, g->hb, 1, g->xb, g->wb, NULL, NULL, 0, g->offs, E, DM, FF, 0, 0.f); }
static int j_down(const bufs *g) { return mk_grouped_gemm_rows_bf16(g->kern, g->y, 1, g->hb, g->w2b, NULL, NULL, 0, g->offs, E, FF, DM, 0, 0.f); }
static int j_dh(const bufs *g) { return mk_grouped_gemm_rows_bf16(g->kern, g->hb, 1, g->yb, g->w2b, NULL, NULL, 0, g->offs, E, DM, FF, 1, 0.f); }
static int j_dx(const bufs *g) { return mk_grouped_gemm_rows_bf16(g->kern, g->y, 1, g->db, g->wb, g->d3b, g->wb, FF, g->offs, E, FF, DM, 1, 0.f); }
static int j_dw2(const bufs *g) { return mk_grouped_gemm_wgrad_bf16(g->kern, g->dw, g->ws, g->wsn, g->hb, g->yb, g->offs, E, FF, DM); }
static int j_dw1(const bufs *g) { return mk_grouped_gemm_wgrad_bf16(g->kern, g->dw, g->ws, g->wsn, g->xb, g->db, g->offs, E, DM, FF); }
static int c_a13(const bufs *g) { return mk_gg_cutlass_rows(g->cl, g->a13b, 1, 2 * FF, g->xb, DM, g->w13b, (size_t)DM * 2 * FF, 2 * FF, 0, g->offs, E, DM, 2 * FF, 0.f); }
static int c_down(const bufs *g) { return mk_gg_cutlass_rows(g->cl, g->y, 1, DM, g->hb, FF, g->w2b, (size_t)FF * DM, DM, 0, g->offs, E, FF, DM, 0.f); }
static int c_dh(const bufs *g) { return mk_gg_cutlass_rows(g->cl, g->hb, 1, FF, g->yb, DM, g->w2b, (size_t)FF * DM, DM, 1, g->offs, E, DM, FF, 0.f); }
static int c_dx(const bufs *g) { return mk_gg_cutlass_rows(g->cl, g->y, 1, DM, g->da13b, 2 * FF, g->w13b, (size_t)DM * 2 * FF, 2 * FF, 1, g->offs, E, 2 * FF, DM, 0.f); }
static int c_dw2(const bufs *g) { return mk_gg_cutlass_wgrad(g->cl, g->dw, g->hb, FF, g->yb, DM, g->offs, E, FF, DM); }
static int c_dw1(const bufs *g) { return mk_gg_cutlass_wgrad(g->cl, g->dw, g->xb, DM, g->da13b, 2 * FF, g->offs, E, DM, FF); }
static int j_att_f(const bufs *g) { return mk_flash_attn_forward(g->out, g->state, g->qkv, NULL, B, T, DM, H); }
static int j_att_f16(const bufs *g) { return mk_flash_attn_forward_bf16(g->outb, g->state, g->qkvb, NULL, B, T, DM, H, 0); }
static int j_att_f16w(const bufs *g) { return mk_flash_attn_forward_bf16(g->outb, g->state, g->qkvb, NULL, B, T, DM, H, 1); }
static int j_att_b16(const bufs *g) { return mk_flash_attn_backward_bf16(g->dqkv, NULL, NULL, g->work, g->outb, g->outb, g->qkvb, g->state, B, T, DM, H, 0); }
static int j_att_b16w(const bufs *g) { return mk_flash_attn_backward_bf16(g->dqkv, NULL, NULL, g->work, g->outb, g->outb, g->qkvb, g->state, B, T, DM, H, 1); }
static int j_att_b(const bufs *g) { return mk_flash_attn_backward(g->dqkv, g->work, g->dout, g->qkv, g->state, B, T, DM, H); }

static void run(const job *j, const bufs *g)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    if (j->fn(g) != MK_OK || cudaDeviceSynchronize() != cudaSuccess) {
        printf("%-44s failed\n", j->name);
        return;
    }
    cudaEventRecord(a, 0);
    for (int r = 0; r < REPS; r++) j->fn(g);
    cudaEventRecord(b, 0);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    ms /= REPS;
    if (j->flop > 0) printf("%-44s %8.3f ms  %6.1f TFLOP/s\n", j->name, ms, j->flop / ms / 1e9);
    else printf("%-44s %8.3f ms\n", j->name, ms);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

int main(int argc, char **argv)
{
    const int skew = argc > 1 && strcmp(argv[1], "skew") == 0;
    bufs all, *g = &all;
    memset(g, 0, sizeof *g);
    const int R = TOKENS * TOPK;
    g->offs[0] = 0;
    for (int e = 0; e < E; e++) {
        int rows = R / E;
        if (skew) rows = e == 0 ? R / 4 : (R - R / 4) / (E - 1) + (e <= (R - R / 4) % (E - 1) ? 1 : 0);
        g->offs[e + 1] = g->offs[e] + rows;
    }
    g->offs[E] = R;
    const size_t nx = (size_t)R * DM, nh = (size_t)R * FF, nw = (size_t)E * DM * FF;
    g->xp = drand(nx, 1);
    g->y = dev(nx * 4);
    g->xb = dev(nx * 2);
    g->yb = dev(nx * 2);
    g->hb = dev(nh * 2);
    g->db = dev(nh * 2);
    g->d3b = dev(nh * 2);
    g->wb = dev(nw * 2);
    g->w2b = dev(nw * 2);
    g->dw = dev(nw * 4);
    g->w13b = dev(2 * nw * 2);
    g->a13b = dev(2 * nh * 2);
    g->da13b = dev(2 * nh * 2);
    mk_cuda_round_bf16(g->w13b, g->xp, 2 * nw, "w13");
    mk_cuda_round_bf16(g->da13b, g->xp + nh, 2 * nh, "da13");
    g->wsn = mk_grouped_gemm_wgrad_ws_floats(g->offs, E, DM, FF);
    g->ws = dev((g->wsn ? g->wsn : 1) * 4);
    mk_cuda_round_bf16(g->xb, g->xp, nx, "x");
    mk_cuda_round_bf16(g->yb, g->xp, nx, "dy");
    mk_cuda_round_bf16(g->wb, g->xp, nw, "w");
    mk_cuda_round_bf16(g->w2b, g->xp + nw, nw, "w2");
    mk_cuda_round_bf16(g->hb, g->xp, nh, "h");
    mk_cuda_round_bf16(g->db, g->xp + nh, nh, "da1");
    mk_cuda_round_bf16(g->d3b, g->xp + 2 * nh, nh, "da3");
    const size_t nqkv = (size_t)B * T * 3 * DM, nout = (size_t)B * T * DM;
    g->qkv = drand(nqkv, 1);
    g->out = dev(nout * 4);
    g->dout = drand(nout, 1);
    g->dqkv = dev(nqkv * 4);
    g->state = dev(mk_flash_attn_state_floats(B, T, H) * 4);
    g->work = dev(mk_flash_attn_work_floats(B, T, H) * 4);
    g->qkvb = dev(nqkv * 2);
    g->outb = dev(nout * 2);
    mk_cuda_round_bf16(g->qkvb, g->qkv, nqkv, "qkv");

    const double ffn = 2.0 * R * DM * FF;                 /* one of the three expert products */
    const double att = 4.0 * B * H * (double)T * T * 64 / 2; /* causal: half the square */
    const job jobs[] = {
        {"round expert input rows to bf16 (R x 768)", 0, j_round},
        {"fwd a1 = x W1 (bf16 out, K 768, N 256)", ffn, j_a1},
        {"fwd y = h W2 (bf16 out, K 256, N 768)", ffn, j_down},
        {"bwd dh = dy W2^T (bf16 out, K 768, N 256)", ffn, j_dh},
        {"bwd dx = da1 W1^T + da3 W3^T (bf16 out, K 2x256)", 2 * ffn, j_dx},
        {"bwd dW2 += h^T dy (K 256, N 768)", ffn, j_dw2},
        {"bwd dW1 += x^T da1 (K 768, N 256)", ffn, j_dw1},
        {"attention forward (16 x 1024, 12 heads)", att, j_att_f},
        {"attention backward", 2.5 * att, j_att_b},
        {"attention forward, bf16 block path, mma.sync", att, j_att_f16},
        {"attention backward, bf16 block path, mma.sync", 2.5 * att, j_att_b16},
        {"attention forward, bf16 block path, wgmma", att, j_att_f16w},
        {"attention backward, bf16 block path, wgmma", 2.5 * att, j_att_b16w},
    };
    printf("kernel_bench: %s routing, %d rows over %d experts\n", skew ? "skewed (one expert 1/4)" : "uniform", R, E);
    const int wg = mk_grouped_gemm_wgmma_available();
    const mk_gg_kernel kinds[2] = {MK_GG_MMA, MK_GG_WGMMA};
    const char *names[2] = {"mma.sync", "wgmma"};
    for (int k = 0; k < 1 + wg; k++) {
        g->kern = kinds[k];
        printf("expert GEMMs on %s:\n", names[k]);
        for (size_t i = 1; i < 7; i++) run(&jobs[i], g);
    }
    static const char *scheds[] = {"coop", "wide"};
    for (size_t s = 0; s < sizeof scheds / sizeof scheds[0] && mk_gg_cutlass_available(); s++) {
        setenv("MOEKIT_GG_SCHED", scheds[s], 1);
        if (mk_gg_cutlass_create(&g->cl) != MK_OK) continue;
        const job cjobs[] = {
            {"fwd a13 = x W13 (bf16 out, K 768, N 512)", 2 * ffn, c_a13},
            {"fwd y = h W2 (bf16 out, K 256, N 768)", ffn, c_down},
            {"bwd dh = dy W2^T (bf16 out, K 768, N 256)", ffn, c_dh},
            {"bwd dx = da13 W13^T (bf16 out, K 512)", 2 * ffn, c_dx},
            {"bwd dW2 += h^T dy (K 256, N 768)", ffn, c_dw2},
            {"bwd dW1 += x^T da13[:, :F] (K 768, N 256)", ffn, c_dw1},
        };
        printf("expert GEMMs on CUTLASS, schedule %s:\n", scheds[s]);
        for (size_t i = 0; i < sizeof cjobs / sizeof cjobs[0]; i++) run(&cjobs[i], g);
        mk_gg_cutlass_destroy(g->cl);
    }
    unsetenv("MOEKIT_GG_SCHED");
    run(&jobs[0], g);
    for (size_t i = 7; i < sizeof jobs / sizeof jobs[0] - 2 * (size_t)!wg; i++) run(&jobs[i], g);
    return 0;
}
