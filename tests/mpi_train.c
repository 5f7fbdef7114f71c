/* mpi_train.c - distributed training equals one process on the concatenated batch.
 * Run under mpirun with 2 or 4 ranks (TAP from rank 0; every check is agreed by all ranks):
 *   1. lbl.mode global, W ranks x B sequences == 1 rank x W*B sequences in micro mode: same
 *      LBL per layer and same gradients (relative error < 1e-5).
 *   2. global-exact, W ranks x 2 micro-steps == 1 rank, 1 step of 2*W*B, micro.
 *   3. global over 2 micro-steps: f at micro-step g is the prefix sum of every rank's counts
 *      of micro-steps 1..g (hand-computed from known counts).
 *   4. uneven valid tokens (different padding per rank): the CE gradient is the mean over
 *      the global batch's real targets, equal to one rank on the concatenation.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_comm.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "mk_rng.h"
#include "mk_trainer.h"
#include "tap.h"

static mk_comm *world;
static int rank, W;

static void base_config(mk_config *c, const char *mode, int B, int G)
{
    mk_config_defaults(c);
    const char *sets[] = { "model.vocab=64", "model.d_model=16", "model.layers=2", "model.heads=2",
                           "model.experts=8", "model.topk=2", "model.ffn=16", "model.seq_len=8",
                           "train.seed=3", "train.threads=1", "lbl.coeff=0.1", NULL };
    for (int i = 0; sets[i]; i++) mk_config_set(c, sets[i], "test");
    char buf[64];
    snprintf(buf, sizeof buf, "lbl.mode=%s", mode);
    mk_config_set(c, buf, "test");
    snprintf(buf, sizeof buf, "train.micro_batch=%d", B);
    mk_config_set(c, buf, "test");
    snprintf(buf, sizeof buf, "train.grad_accum=%d", G);
    mk_config_set(c, buf, "test");
}

/* The global batch: n sequences of T tokens; pad_of(seq) targets at the end are -1. */
static void make_batch(int n, int T, int pad, int32_t *tok, int32_t *tgt)
{
    mk_rng r = mk_rng_make(99, 0);
    for (int s = 0; s < n; s++)
        for (int t = 0; t < T; t++) {
            tok[s * T + t] = (int32_t)mk_rng_below(&r, 64);
            tgt[s * T + t] = (int32_t)mk_rng_below(&r, 64);
            if (pad && t >= T - (s * 3) % T) tgt[s * T + t] = -1; /* uneven padding */
        }
}

/* Every rank checks; rank 0 reports whether all passed. */
static void agree_ok(int cond, const char *fmt, double v)
{
    int bad = !cond;
    mk_comm_allreduce_max_int(world, &bad, 1);
    if (rank == 0) tap_ok(!bad, fmt, v);
}

static double rel_diff(const mk_real *a, const mk_real *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / (den > 0 ? den : 1);
}

/* mode on W ranks with B per micro-step and G micro-steps against micro on 1 rank with
 * the whole global batch in one micro-step. */
static void equivalence(const char *label, const char *mode, int B, int G, int pad)
{
    const int T = 8, n = W * G * B;
    int32_t *tok = malloc(sizeof(int32_t) * n * T), *tgt = malloc(sizeof(int32_t) * n * T);
    int32_t *mt = malloc(sizeof(int32_t) * G * B * T), *mg = malloc(sizeof(int32_t) * G * B * T);
    make_batch(n, T, pad, tok, tgt);
    /* this rank's micro-step g is global sequences (g*W + rank)*B.. (mk_sample_index) */
    for (int g = 0; g < G; g++)
        for (int b = 0; b < B; b++) {
            size_t src = ((size_t)(g * W + rank) * B + b) * T, dst = ((size_t)g * B + b) * T;
            memcpy(mt + dst, tok + src, T * sizeof *mt);
            memcpy(mg + dst, tgt + src, T * sizeof *mg);
        }
    mk_config cd, cr;
    base_config(&cd, mode, B, G);
    base_config(&cr, "micro", n, 1);
    mk_trainer *td, *tr;
    mk_step_stats sd, sr;
    int rc = mk_trainer_create(&cd, world, &td) || mk_trainer_create(&cr, NULL, &tr) ||
             mk_trainer_grads(td, 0, mt, mg, NULL, &sd) || mk_trainer_grads(tr, 0, tok, tgt, NULL, &sr);
    if (rc) MPI_Abort(MPI_COMM_WORLD, 99);
    double worst_lbl = 0;
    for (int l = 0; l < cd.model.layers; l++)
        worst_lbl = fmax(worst_lbl, fabs(sd.lbl_layers[l] - sr.lbl_layers[l]) / fabs(sr.lbl_layers[l]));
    char what[256];
    snprintf(what, sizeof what, "%s: LBL per layer equals 1 rank x %d micro (worst rel err %%.2e)", label, n);
    agree_ok(worst_lbl < 1e-5, what, worst_lbl);
    mk_model *md = mk_trainer_model(td), *mr = mk_trainer_model(tr);
    double worst = 0;
    for (size_t i = 0; i < mk_model_tensor_count(md); i++) {
        const mk_tensor *t = mk_model_tensor(md, i);
        worst = fmax(worst, rel_diff(mk_model_grads(md) + t->offset, mk_model_grads(mr) + t->offset, t->numel));
    }
    snprintf(what, sizeof what, "%s: every gradient equals 1 rank x %d micro (worst rel err %%.2e)", label, n);
    agree_ok(worst < 1e-5, what, worst);
    int same = 1;
    for (int i = 0; i < cd.model.layers * cd.model.experts; i++)
        same &= sd.domain_counts[i] == sr.domain_counts[i] && sd.counts[i] == sr.counts[i];
    snprintf(what, sizeof what, "%s: routing counts per layer, domain and expert reduced over the world (%%g)", label);
    agree_ok(same && sd.domain_tokens[0] == (int64_t)n * T, what, 0);
    snprintf(what, sizeof what, "%s: loss equals (rel err %%.2e)", label);
    double le = fabs(sd.loss - sr.loss) / sr.loss;
    agree_ok(le < 1e-6 && sd.targets == sr.targets, what, le);
    mk_trainer_free(&td);
    mk_trainer_free(&tr);
    free(tok);
    free(tgt);
    free(mt);
    free(mg);
}

static int allreduce_cb(void *ctx, int64_t *c, int n) { return mk_comm_allreduce_i64(ctx, c, (size_t)n); }

/* Rank r routes c(r, g, i) = (r + 1) * (g + 2) + i tokens to expert i at micro-step g. */
static void prefix_counts(void)
{
    enum { E = 4, K = 1 };
    mk_lbl *l;
    mk_lbl_create(MK_LBL_GLOBAL, 1, E, K, &l);
    mk_lbl_set_allreduce(l, allreduce_cb, world);
    int good = 1;
    for (int g = 0; g < 2; g++) {
        int32_t c[E];
        long n = 0;
        for (int i = 0; i < E; i++) n += c[i] = (rank + 1) * (g + 2) + i;
        double f[E], fm[E];
        mk_lbl_scope(l, 0, c, n, f, fm);
        for (int i = 0; i < E; i++) {
            double num = 0, den = 0;
            for (int gg = 0; gg <= g; gg++)
                for (int r = 0; r < W; r++)
                    for (int k = 0; k < E; k++) {
                        double v = (r + 1) * (gg + 2) + k;
                        den += v;
                        if (k == i) num += v;
                    }
            good &= fabs(f[i] - num / den) < 1e-15;
        }
    }
    agree_ok(good, "global LBL over 2 micro-steps: f is the prefix sum of every rank's counts (%g)", 0);
    mk_lbl_destroy(&l);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (mk_comm_world(&world)) return 99;
    rank = mk_comm_rank(world);
    W = mk_comm_size(world);
    char label[64];
    snprintf(label, sizeof label, "global, %d ranks x 2", W);
    equivalence(label, "global", 2, 1, 0);
    snprintf(label, sizeof label, "global-exact, %d ranks x 2 micro-steps x 2", W);
    equivalence(label, "global-exact", 2, 2, 0);
    snprintf(label, sizeof label, "uneven padding, global-exact, %d ranks x 2 micro-steps x 2", W);
    equivalence(label, "global-exact", 2, 2, 1);
    prefix_counts();
    int rc = rank == 0 ? tap_done() : 0;
    mk_comm_free(&world);
    MPI_Finalize();
    return rc;
}
