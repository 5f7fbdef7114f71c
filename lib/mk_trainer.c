/* mk_trainer.c - gradients and updates of one optimizer step across ranks (see mk_trainer.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_backend_prof.h"
#include "mk_devcomm.h"
#include "mk_error.h"
#include "mk_failpoint.h"
#include "mk_lbl.h"
#include "mk_optim.h"
#ifdef MK_WITH_CUDA
#include "cuda/mk_backend_cuda.h"
#endif

struct mk_trainer {
    const mk_config *cfg;
    const mk_comm *world;
    mk_comm *own_world;             /* the self communicator when the caller gave none */
    mk_comm *ep, *edp;              /* expert-parallel and expert-data-parallel groups */
    int rank, nranks;
    mk_backend *be;
    mk_devcomm *dworld, *dedp;      /* gradient sums on backend memory (NCCL on CUDA) */
    int device;                     /* the GPU of this rank, -1 on the CPU */
    mk_model *model;
    mk_lbl *lbl;
    int64_t *counts;                /* [L, E] */
    double *lbl_sum;                /* [L] */
    int ndomains;
    int64_t *dcounts;               /* [L, ndomains, E] then [ndomains] token counts */
    int32_t *gflags;                /* backend memory, [L + 1]: the overlapped checks' flags */
    int overlap_sms;                /* SMs the overlapped gradient sums hold (MOEKIT_OVERLAP_SMS) */
    int no_overlap;                 /* MOEKIT_NO_OVERLAP=1: the sums after the backward */
    int force_overlap;              /* MOEKIT_OVERLAP=force: the overlapped path on any transport */
    int overlap_layers;             /* a layer's sums start at its end (MOEKIT_OVERLAP_LAYERS=0: per block) */
    /* The batch of the last mk_trainer_grads (the caller's), for a run again that checks
     * each rank's gradient before the sums (check_before_sums) to name a NaN's rank. */
    const int32_t *b_tokens, *b_targets, *b_domain;
    int check_before_sums;
};

static int lbl_allreduce(void *ctx, int64_t *counts, int n)
{
    return mk_comm_allreduce_i64(ctx, counts, (size_t)n);
}

/* The backend of train.backend; on CUDA the GPU of the rank's local rank. */
static int make_backend(mk_trainer *tr, const mk_config *cfg)
{
    tr->device = -1;
    if (cfg->train.backend == MK_BACKEND_CPU) return mk_backend_cpu_create(cfg->train.threads, &tr->be);
#ifdef MK_WITH_CUDA
    int n = 0;
    MK_CHECK(mk_backend_cuda_device_count(&n));
    if (n < 1) return MK_FAIL(MK_ERR_USAGE, "train.backend = cuda but no GPU is visible to rank %d", tr->rank);
    tr->device = mk_comm_local_rank(tr->world) % n;
    return mk_backend_cuda_create(tr->device, cfg->train.precision != MK_PRECISION_FP32, &tr->be);
#else
    return MK_FAIL(MK_ERR_USAGE, "train.backend = cuda, but this moekit was built without CUDA"
                   " (configure it with --with-cuda)");
#endif
}

/* The SMs the gradient sums of an overlapped backward may hold (NCCL's blocks; the
 * backend's persistent GEMMs leave them free meanwhile). NCCL's own choice on two H200s
 * was 24 blocks; capped at 16, with the expert GEMMs on the other 116 SMs while the sums
 * run, dp = 2 ran faster (docs/performance.md, fifteenth and sixteenth sessions).
 * MOEKIT_OVERLAP_SMS=0: no cap, no margin. */
#define MK_OVERLAP_SMS 16

static int overlap_sms(int *out)
{
    *out = MK_OVERLAP_SMS;
    const char *v = getenv("MOEKIT_OVERLAP_SMS");
    if (!v) return MK_OK;
    char *end;
    const long n = strtol(v, &end, 10);
    if (end == v || *end || n < 0 || n > 1024)
        return MK_FAIL(MK_ERR_USAGE, "MOEKIT_OVERLAP_SMS=%s: want a number of SMs from 0 to 1024", v);
    *out = (int)n;
    return MK_OK;
}

int mk_trainer_create(const mk_config *cfg, const mk_comm *world, mk_trainer **out)
{
    *out = NULL;
    MK_CHECK(mk_config_validate(cfg));
    mk_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) return MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
    int rc = MK_OK;
    const int L = cfg->model.layers, E = cfg->model.experts, ep = cfg->parallel.ep;
    tr->cfg = cfg;
    if (world) {
        tr->world = world;
    } else {
        MK_CHECK_GOTO(rc, mk_comm_self(&tr->own_world), fail);
        tr->world = tr->own_world;
    }
    tr->rank = mk_comm_rank(tr->world);
    tr->nranks = mk_comm_size(tr->world);
    if (tr->nranks % ep != 0) {
        rc = MK_FAIL(MK_ERR_USAGE, "parallel.ep = %d does not divide the %d ranks", ep, tr->nranks);
        goto fail;
    }
    if (ep > 1) {
        /* Consecutive ranks form an expert-parallel group (they share a node first); ranks
         * with the same position in their groups hold the same experts. */
        MK_CHECK_GOTO(rc, mk_comm_split(tr->world, tr->rank / ep, tr->rank, &tr->ep), fail);
        MK_CHECK_GOTO(rc, mk_comm_split(tr->world, tr->rank % ep, tr->rank, &tr->edp), fail);
    }
    MK_CHECK_GOTO(rc, make_backend(tr, cfg), fail);
    const char *prof = getenv("MOEKIT_PROFILE");
    if (prof && (strcmp(prof, "1") == 0 || strcmp(prof, "timeline") == 0)) {
        mk_backend *timed;
        MK_CHECK_GOTO(rc, mk_backend_prof_create(tr->be, strcmp(prof, "timeline") == 0, &timed), fail);
        tr->be = timed;
    }
    MK_CHECK_GOTO(rc, overlap_sms(&tr->overlap_sms), fail);
    tr->no_overlap = getenv("MOEKIT_NO_OVERLAP") != NULL;
    /* The MPI transport finishes each sum before returning, so nothing overlaps there; the
     * overlapped path (per-block sums, the rerun's checks) then runs on CPU ranks too, for
     * the tests. */
    const char *force = getenv("MOEKIT_OVERLAP");
    tr->force_overlap = force && strcmp(force, "force") == 0;
    /* One sum per layer, started at its end: on two H200s 1.86-1.87x one GPU, against
     * 1.84-1.87x with a sum per block (MOEKIT_OVERLAP_LAYERS=0) with or without the cap. */
    const char *per_layer = getenv("MOEKIT_OVERLAP_LAYERS");
    tr->overlap_layers = !(per_layer && strcmp(per_layer, "0") == 0);
    /* Only the data-parallel sums run beside the backward (not with expert parallelism);
     * after it, NCCL may take every SM it wants. */
    const int cap = ep == 1 && !tr->no_overlap ? tr->overlap_sms : 0;
    MK_CHECK_GOTO(rc, mk_devcomm_create(tr->world, tr->be, cap, &tr->dworld), fail);
    if (tr->edp) MK_CHECK_GOTO(rc, mk_devcomm_create(tr->edp, tr->be, 0, &tr->dedp), fail);
    MK_CHECK_GOTO(rc, mk_model_create_ep(cfg, tr->be, tr->ep, &tr->model), fail);
    MK_CHECK_GOTO(rc, mk_model_init(tr->model, cfg->train.seed), fail);
    MK_CHECK_GOTO(rc, mk_lbl_create(cfg->lbl.mode, L, E, cfg->model.topk, &tr->lbl), fail);
    /* The global scope spans every data-parallel rank: the whole world. */
    mk_lbl_set_allreduce(tr->lbl, lbl_allreduce, (void *)tr->world);
    tr->counts = malloc((size_t)L * E * sizeof *tr->counts);
    tr->lbl_sum = malloc((size_t)L * sizeof *tr->lbl_sum);
    if (!tr->counts || !tr->lbl_sum || (rc = mk_trainer_set_domains(tr, 1)) != MK_OK) {
        rc = MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
        goto fail;
    }
    *out = tr;
    return MK_OK;
fail:
    mk_trainer_free(&tr);
    return rc;
}

void mk_trainer_free(mk_trainer **trp)
{
    if (!trp || !*trp) return;
    mk_trainer *tr = *trp;
    mk_lbl_destroy(&tr->lbl);
    mk_model_destroy(&tr->model);
    mk_devcomm_free(&tr->dworld);
    mk_devcomm_free(&tr->dedp);
    if (tr->be) tr->be->ops->free(tr->be, tr->gflags);
    mk_backend_destroy(&tr->be);
    mk_comm_free(&tr->ep);
    mk_comm_free(&tr->edp);
    mk_comm_free(&tr->own_world);
    free(tr->counts);
    free(tr->lbl_sum);
    free(tr->dcounts);
    free(tr);
    *trp = NULL;
}

int mk_trainer_set_domains(mk_trainer *tr, int ndomains)
{
    if (ndomains < 1) return MK_FAIL(MK_ERR_INTERNAL, "trainer: %d domains", ndomains);
    const size_t n = (size_t)tr->cfg->model.layers * ndomains * tr->cfg->model.experts + ndomains;
    int64_t *d = calloc(n, sizeof *d);
    if (!d) return MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
    free(tr->dcounts);
    tr->dcounts = d;
    tr->ndomains = ndomains;
    return MK_OK;
}

/* Add the last forward's top-k choices of every layer to the per-domain counts. */
static int count_domains(mk_trainer *tr, const int32_t *domain, int B)
{
    const mk_config *cfg = tr->cfg;
    const int L = cfg->model.layers, E = cfg->model.experts, T = cfg->model.seq_len;
    const int Dm = tr->ndomains;
    int64_t *tok = tr->dcounts + (size_t)L * Dm * E;
    for (int b = 0; b < B; b++) {
        const int d = domain ? domain[b] : 0;
        if (d < 0 || d >= Dm) return MK_FAIL(MK_ERR_INTERNAL, "trainer: domain %d of %d", d, Dm);
        tok[d] += T;
    }
    for (int l = 0; l < L; l++) {
        const int32_t *sc = mk_model_sequence_counts(tr->model, l);
        if (!sc) return MK_FAIL(MK_ERR_INTERNAL, "trainer: no routing counts of layer %d", l);
        int64_t *c = tr->dcounts + (size_t)l * Dm * E;
        for (int b = 0; b < B; b++) {
            const int d = domain ? domain[b] : 0;
            for (int e = 0; e < E; e++) c[(size_t)d * E + e] += sc[(size_t)b * E + e];
        }
    }
    return MK_OK;
}

mk_model *mk_trainer_model(mk_trainer *tr) { return tr->model; }
int mk_trainer_device(const mk_trainer *tr) { return tr->device; }
const char *mk_trainer_transport(const mk_trainer *tr) { return mk_devcomm_transport(tr->dworld); }
const mk_config *mk_trainer_config(const mk_trainer *tr) { return tr->cfg; }
const mk_comm *mk_trainer_world(const mk_trainer *tr) { return tr->world; }
const mk_comm *mk_trainer_ep(const mk_trainer *tr) { return tr->ep; }
int mk_trainer_rank(const mk_trainer *tr) { return tr->rank; }
int mk_trainer_ranks(const mk_trainer *tr) { return tr->nranks; }

/* global-exact: count the whole global batch's routing first, so every micro-step uses the
 * final f. */
static int counting_pass(mk_trainer *tr, const int32_t *tokens, const int32_t *targets)
{
    const mk_config *cfg = tr->cfg;
    const int L = cfg->model.layers, E = cfg->model.experts, G = cfg->train.grad_accum,
              B = cfg->train.micro_batch;
    const size_t per_micro = (size_t)B * cfg->model.seq_len;
    int64_t *exact = calloc((size_t)L * E + 1, sizeof *exact);
    if (!exact) return MK_FAIL(MK_ERR_NOMEM, "global-exact counting pass: out of memory");
    int rc = MK_OK;
    for (int g = 0; g < G && rc == MK_OK; g++) {
        mk_forward_stats st;
        rc = mk_model_forward(tr->model, tokens + g * per_micro, targets + g * per_micro, B, NULL, 0, &st);
        for (int i = 0; rc == MK_OK && i < L * E; i++) exact[i] += st.counts[i];
        exact[(size_t)L * E] += (int64_t)per_micro;
    }
    if (rc == MK_OK) rc = mk_comm_allreduce_i64(tr->world, exact, (size_t)L * E + 1);
    if (rc == MK_OK) rc = mk_lbl_set_exact(tr->lbl, exact, (long)exact[(size_t)L * E]);
    free(exact);
    return rc;
}

/* Sum gradients over the ranks that share each parameter: expert tensors over the ranks
 * holding the same experts (expert-data-parallel group), everything else over the world.
 * Neighbouring tensors of the same group go as one call (the gradient block is contiguous
 * in tensor order), so with parallel.ep = 1 the whole block is one all-reduce. */
/* Sum the gradients of tensors i0..i1-1 over their ranks, one call per run of neighbouring
 * tensors on the same communicator; started (left running) when start, else finished. */
static int allreduce_range(mk_trainer *tr, size_t i0, size_t i1, int start)
{
    if (tr->nranks == 1) return MK_OK;
    mk_real *g = mk_model_grads(tr->model);
    size_t i = i0;
    while (i < i1) {
        const mk_tensor *t = mk_model_tensor(tr->model, i);
        mk_devcomm *c = t->expert && tr->dedp ? tr->dedp : tr->dworld;
        size_t first = t->offset, end = t->offset + t->numel, j = i + 1;
        for (; j < i1; j++) {
            const mk_tensor *u = mk_model_tensor(tr->model, j);
            if ((u->expert && tr->dedp ? tr->dedp : tr->dworld) != c || u->offset != end) break;
            end += u->numel;
        }
        if (start) MK_CHECK(mk_devcomm_allreduce_start(c, g + first, end - first));
        else MK_CHECK(mk_devcomm_allreduce(c, g + first, end - first));
        i = j;
    }
    return MK_OK;
}

static int allreduce_grads(mk_trainer *tr)
{
    MK_CHECK(mk_failpoint("allreduce"));
    return allreduce_range(tr, 0, mk_model_tensor_count(tr->model), 0);
}

/* Test hook (tests/hostile/test_nonfinite.sh): MOEKIT_TEST_NAN_RANK and _STEP (1-based)
 * pick one rank and step, MOEKIT_TEST_NAN_WHERE what turns non-finite there (loss: the first
 * micro-step's cross-entropy; grad: one element of the first expert tensor's gradient, in
 * its second local expert when there is one; logits: a router weight of layer 0, so that
 * layer's logits), MOEKIT_TEST_NAN_VALUE nan (default) or inf. Read from the environment
 * on each call, so there is no state; unset, it costs three getenv calls per step. */
typedef enum { HOOK_NONE, HOOK_LOSS, HOOK_GRAD, HOOK_LOGITS } hook_where;

static hook_where nan_hook(const mk_trainer *tr, long step, double *value)
{
    const char *r = getenv("MOEKIT_TEST_NAN_RANK"), *s = getenv("MOEKIT_TEST_NAN_STEP"),
               *w = getenv("MOEKIT_TEST_NAN_WHERE"), *v = getenv("MOEKIT_TEST_NAN_VALUE");
    if (!r || !s || !w || atoi(r) != tr->rank || atol(s) != step + 1) return HOOK_NONE;
    *value = v && strcmp(v, "inf") == 0 ? INFINITY : NAN;
    return strcmp(w, "loss") == 0 ? HOOK_LOSS : strcmp(w, "grad") == 0 ? HOOK_GRAD
           : strcmp(w, "logits") == 0 ? HOOK_LOGITS : HOOK_NONE;
}

static int hook_poke(mk_trainer *tr, mk_real *block, const char *name, int second_expert, double value)
{
    mk_model *m = tr->model;
    for (size_t i = 0; i < mk_model_tensor_count(m); i++) {
        const mk_tensor *t = mk_model_tensor(m, i);
        if (name ? strcmp(t->name, name) != 0 : !t->expert) continue;
        size_t at = second_expert && t->shape[0] > 1 ? t->numel / (size_t)t->shape[0] : 0;
        mk_real x = (mk_real)value;
        mk_backend *be = mk_model_backend(m);
        return be->ops->from_host(be, block + t->offset + at, &x, sizeof x);
    }
    return MK_FAIL(MK_ERR_INTERNAL, "test hook: no tensor %s", name ? name : "with experts");
}

/* This rank's gradient of tensors i0..i1-1 (neighbours in the block) before the
 * all-reduce: one pass over them, and on failure a second to say which tensor (and expert)
 * it was, so the message names the rank that produced the NaN rather than every rank that
 * received it. */
/* The gradient of tensors i0..i1-1 (neighbours in the block, i1 > i0): where and how long. */
static const mk_real *grads_span(mk_model *m, size_t i0, size_t i1, size_t *n)
{
    const mk_tensor *a = mk_model_tensor(m, i0), *z = mk_model_tensor(m, i1 - 1);
    *n = z->offset + z->numel - a->offset;
    return mk_model_grads(m) + a->offset;
}

static int check_grads_range(mk_trainer *tr, long step, size_t i0, size_t i1)
{
    mk_model *m = tr->model;
    mk_backend *be = mk_model_backend(m);
    const mk_real *g = mk_model_grads(m);
    if (i1 <= i0) return MK_OK;
    int bad = 0;
    size_t n;
    const mk_real *span = grads_span(m, i0, i1, &n);
    MK_CHECK(be->ops->nonfinite(be, span, n, &bad));
    if (!bad) return MK_OK;
    for (size_t i = i0; i < i1; i++) {
        const mk_tensor *t = mk_model_tensor(m, i);
        MK_CHECK(be->ops->nonfinite(be, g + t->offset, t->numel, &bad));
        if (!bad) continue;
        mk_real *h = malloc(t->numel * sizeof *h);
        size_t at = 0;
        if (h && be->ops->to_host(be, h, g + t->offset, t->numel * sizeof *h) == MK_OK)
            while (at < t->numel && isfinite(h[at])) at++;
        double v = h && at < t->numel ? (double)h[at] : NAN;
        free(h);
        /* one rank has no all-reduce to name */
        const char *when = tr->nranks > 1 ? " before the all-reduce" : "";
        if (t->expert)
            return MK_FAIL(MK_ERR_NUMERIC, "step %ld: the gradient of %s holds %g (element %zu, expert %d)%s",
                           step + 1, t->name, v, at,
                           t->dim0_offset + (int)(at / (t->numel / (size_t)t->shape[0])), when);
        return MK_FAIL(MK_ERR_NUMERIC, "step %ld: the gradient of %s holds %g (element %zu)%s", step + 1,
                       t->name, v, at, when);
    }
    return MK_FAIL(MK_ERR_NUMERIC, "step %ld: the gradient holds a NaN or Inf", step + 1);
}

static int check_grads(mk_trainer *tr, long step)
{
    return check_grads_range(tr, step, 0, mk_model_tensor_count(tr->model));
}

/* Overlapped gradient sums (NCCL, data parallelism only): as soon as the last micro-step's
 * backward has finished a layer, the sum of its gradients over the ranks starts on the
 * communicator's stream while the rest of the backward runs (MOEKIT_OVERLAP_LAYERS=0: a sum
 * per block, the MoE block's before the attention block's backward, for comparisons);
 * what is left (embeddings, final norm, output head) follows the
 * backward, then the update waits for all of it. The same sums as allreduce_grads, in
 * layer order on every rank. When the step runs again to name the rank of a NaN
 * (check_before_sums), each block is checked on this rank before its sum, as check_grads
 * would. Where the backend has nonfinite_flag, a check only sets a flag on the device
 * (layer l's at gflags[l], the rest's at gflags[L]) ahead of the sum, and the flags are
 * read once the sums are done: the backward never waits for a check. A flag set here names
 * this rank; the second pass that finds the tensor then reads it after the sum (where this
 * rank's NaN or Inf still is). */
typedef struct overlap_ctx {
    mk_trainer *tr;
    long step;
    int check;      /* each block's gradient checked before its sum (check_before_sums) */
    int flags;      /* checks through gflags */
    int poke;       /* the test hook's NaN goes into the gradient just before its layer's check */
    double value;
    int held_layer; /* sums per layer: the layer whose MoE block waits for its
                     * attention block (-1: none), and that block's tensors */
    size_t held_i0, held_i1;
} overlap_ctx;

/* Tensors i0..i1-1 are layer `layer`'s (layer -1: none). */
static void layer_range(const mk_model *m, int layer, size_t *i0, size_t *i1)
{
    const size_t nt = mk_model_tensor_count(m);
    size_t a = 0;
    while (a < nt && mk_model_tensor(m, a)->layer != layer) a++;
    size_t b = a;
    while (b < nt && mk_model_tensor(m, b)->layer == layer) b++;
    *i0 = a, *i1 = b;
}

/* slot: the flag, gflags[slot], when the check only sets one. */
static int check_range_async(overlap_ctx *o, size_t i0, size_t i1, int slot)
{
    if (!o->check) return MK_OK;
    if (!o->flags) return check_grads_range(o->tr, o->step, i0, i1);
    if (i1 <= i0) return MK_OK;
    mk_backend *be = mk_model_backend(o->tr->model);
    size_t n;
    const mk_real *span = grads_span(o->tr->model, i0, i1, &n);
    return be->ops->nonfinite_flag(be, span, n, o->tr->gflags + slot);
}

/* Tensors i0..i1-1, all of `layer`, are complete: check, then start their sum. Both of a
 * layer's blocks set the layer's flag; read_flags searches the whole layer. */
static int layer_grads_ready(void *ctx, int layer, size_t i0, size_t i1)
{
    overlap_ctx *o = ctx;
    if (o->tr->overlap_layers) { /* one sum per layer, at its end, as before the split */
        if (o->held_layer != layer) {
            o->held_layer = layer, o->held_i0 = i0, o->held_i1 = i1;
            return MK_OK;
        }
        i0 = i0 < o->held_i0 ? i0 : o->held_i0;
        i1 = i1 > o->held_i1 ? i1 : o->held_i1;
        o->held_layer = -1;
    }
    for (size_t i = i0; o->poke && i < i1; i++)
        if (mk_model_tensor(o->tr->model, i)->expert) { /* the first expert tensor's layer */
            o->poke = 0;
            MK_CHECK(hook_poke(o->tr, mk_model_grads(o->tr->model), NULL, 1, o->value));
        }
    MK_CHECK(check_range_async(o, i0, i1, layer));
    MK_CHECK(allreduce_range(o->tr, i0, i1, 1));
    mk_backend *be = mk_model_backend(o->tr->model);
    return be->ops->comm_overlap ? be->ops->comm_overlap(be, o->tr->overlap_sms) : MK_OK;
}

/* The flags of a step's checks cleared, where the backend sets them on the device. */
static int start_overlap(mk_trainer *tr, overlap_ctx *o)
{
    mk_backend *be = mk_model_backend(tr->model);
    const size_t bytes = (size_t)(tr->cfg->model.layers + 1) * sizeof *tr->gflags;
    o->flags = o->check && be->ops->nonfinite_flag != NULL;
    if (!o->flags) return MK_OK;
    if (!tr->gflags) MK_CHECK(be->ops->alloc(be, bytes, (void **)&tr->gflags));
    return be->ops->zero(be, tr->gflags, bytes);
}

/* The next run i..j-1 of tensors outside the layers at or after *i (none: *i = *j = count). */
static void next_outside(const mk_model *m, size_t *i, size_t *j)
{
    const size_t nt = mk_model_tensor_count(m);
    size_t a = *i;
    while (a < nt && mk_model_tensor(m, a)->layer >= 0) a++;
    size_t b = a;
    while (b < nt && mk_model_tensor(m, b)->layer < 0) b++;
    *i = a, *j = b;
}

/* After the sums: the flags this rank's checks set, and for each one the tensor. */
static int read_flags(mk_trainer *tr, long step)
{
    mk_model *m = tr->model;
    mk_backend *be = mk_model_backend(m);
    const int L = tr->cfg->model.layers;
    const size_t nt = mk_model_tensor_count(m);
    int32_t *flags = malloc((size_t)(L + 1) * sizeof *flags);
    if (!flags) return MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
    int rc = be->ops->to_host(be, flags, tr->gflags, (size_t)(L + 1) * sizeof *flags);
    int any = 0;
    for (int l = 0; rc == MK_OK && l <= L; l++) {
        if (!flags[l]) continue;
        any = 1;
        if (l < L) {
            size_t i0, i1;
            layer_range(m, l, &i0, &i1);
            rc = check_grads_range(tr, step, i0, i1);
        } else {
            for (size_t i = 0, j; rc == MK_OK && i < nt; i = j) {
                next_outside(m, &i, &j);
                rc = check_grads_range(tr, step, i, j);
            }
        }
    }
    free(flags);
    if (rc == MK_OK && any)
        rc = MK_FAIL(MK_ERR_NUMERIC, "step %ld: the gradient held a NaN or Inf before the all-reduce", step + 1);
    return rc;
}

/* The tensors outside the layers, then the wait: the end of an overlapped step. */
static int finish_overlap(mk_trainer *tr, overlap_ctx *o)
{
    mk_model *m = tr->model;
    const size_t nt = mk_model_tensor_count(m);
    for (size_t i = 0, j; i < nt; i = j) {
        next_outside(m, &i, &j);
        if (j == i) break;
        MK_CHECK(check_range_async(o, i, j, tr->cfg->model.layers));
        MK_CHECK(allreduce_range(tr, i, j, 1));
    }
    MK_CHECK(mk_devcomm_wait(tr->dworld));
    mk_backend *be = mk_model_backend(m);
    if (be->ops->comm_overlap) MK_CHECK(be->ops->comm_overlap(be, 0));
    return o->flags ? read_flags(tr, o->step) : MK_OK;
}

int mk_trainer_grads(mk_trainer *tr, long step, const int32_t *tokens, const int32_t *targets,
                     const int32_t *domain, mk_step_stats *out)
{
    const mk_config *cfg = tr->cfg;
    const int G = cfg->train.grad_accum, B = cfg->train.micro_batch, T = cfg->model.seq_len;
    const int L = cfg->model.layers, E = cfg->model.experts;
    const size_t per_micro = (size_t)B * T;
    memset(out, 0, sizeof *out);
    tr->b_tokens = tokens, tr->b_targets = targets, tr->b_domain = domain;

    /* The CE gradient is the mean over the target tokens of the whole global batch. */
    int64_t ntargets = 0;
    for (size_t i = 0; i < per_micro * G; i++) ntargets += targets[i] >= 0;
    MK_CHECK(mk_comm_allreduce_i64(tr->world, &ntargets, 1));
    if (ntargets == 0) return MK_FAIL(MK_ERR_INPUT, "a global batch without target tokens");

    MK_CHECK(mk_model_zero_grad(tr->model));
    mk_lbl_reset(tr->lbl);
    double hook_value = 0;
    const hook_where hook = nan_hook(tr, step, &hook_value);
    if (hook == HOOK_LOGITS) MK_CHECK(hook_poke(tr, mk_model_params(tr->model), "layers.0.router", 0, hook_value));
    mk_model_set_step(tr->model, step + 1);
    if (cfg->lbl.mode == MK_LBL_GLOBAL_EXACT) MK_CHECK(counting_pass(tr, tokens, targets));
    memset(tr->counts, 0, (size_t)L * E * sizeof *tr->counts);
    memset(tr->lbl_sum, 0, (size_t)L * sizeof *tr->lbl_sum);
    const size_t ndc = (size_t)L * tr->ndomains * E + tr->ndomains;
    memset(tr->dcounts, 0, ndc * sizeof *tr->dcounts);

    /* Auxiliary losses are means over micro-steps and ranks: each rank's share is
     * 1 / (G * ranks), and the gradient sum over ranks makes the mean (not 1/ranks of it,
     * Megatron-LM issue 3672). */
    const double aux_scale = 1.0 / ((double)G * tr->nranks);
    double ce = 0;
    const int overlap = tr->nranks > 1 && !tr->dedp && (mk_devcomm_overlaps(tr->dworld) || tr->force_overlap) &&
                        !tr->no_overlap;
    overlap_ctx octx = {tr, step, tr->check_before_sums, 0, overlap && hook == HOOK_GRAD, hook_value, -1, 0, 0};
    if (overlap) MK_CHECK(start_overlap(tr, &octx));
    for (int g = 0; g < G; g++) {
        mk_forward_stats st;
        MK_CHECK(mk_failpoint("forward"));
        MK_CHECK(mk_model_forward(tr->model, tokens + g * per_micro, targets + g * per_micro, B, tr->lbl, 1, &st));
        if (hook == HOOK_LOSS && g == 0) st.ce_sum = hook_value;
        /* This rank's loss before the sum over ranks, so the message names where it arose. */
        if (!isfinite(st.ce_sum))
            return MK_FAIL(MK_ERR_NUMERIC, "step %ld: the loss (cross-entropy) of micro-step %d is %g",
                           step + 1, g + 1, st.ce_sum);
        if (overlap && g == G - 1) {
            MK_CHECK(mk_failpoint("allreduce"));
            mk_model_set_layer_grads_hook(tr->model, layer_grads_ready, &octx);
        }
        const int rc = mk_model_backward(tr->model, 1.0 / (double)ntargets, aux_scale);
        mk_model_set_layer_grads_hook(tr->model, NULL, NULL);
        MK_CHECK(rc);
        ce += st.ce_sum;
        for (int i = 0; i < L * E; i++) tr->counts[i] += st.counts[i];
        for (int l = 0; l < L; l++) tr->lbl_sum[l] += st.lbl[l] * aux_scale;
        MK_CHECK(count_domains(tr, domain ? domain + (size_t)g * B : NULL, B));
    }
    mk_model_set_step(tr->model, 0);
    if (hook == HOOK_GRAD && !overlap) MK_CHECK(hook_poke(tr, mk_model_grads(tr->model), NULL, 1, hook_value));
    if (overlap) {
        MK_CHECK(finish_overlap(tr, &octx));
    } else {
        /* Only when run again to name a rank: the update's norm finds a NaN (a pass less). */
        if (tr->nranks > 1 && tr->check_before_sums) MK_CHECK(check_grads(tr, step));
        MK_CHECK(allreduce_grads(tr));
    }
    MK_CHECK(mk_comm_allreduce_f64(tr->world, &ce, 1));
    MK_CHECK(mk_comm_allreduce_f64(tr->world, tr->lbl_sum, (size_t)L));
    MK_CHECK(mk_comm_allreduce_i64(tr->world, tr->counts, (size_t)L * E));
    MK_CHECK(mk_comm_allreduce_i64(tr->world, tr->dcounts, ndc));
    out->loss = ce / (double)ntargets;
    for (int l = 0; l < L; l++) {
        out->lbl += tr->lbl_sum[l] / L;
        out->maxvio += mk_lbl_maxvio(tr->counts + (size_t)l * E, E) / L;
    }
    out->targets = (long)ntargets;
    out->lbl_layers = tr->lbl_sum;
    out->counts = tr->counts;
    out->domain_counts = tr->dcounts;
    out->domain_tokens = tr->dcounts + (size_t)L * tr->ndomains * E;
    return MK_OK;
}

/* The global gradient norm: replicated tensors count once, expert shards are summed over
 * the expert-parallel group. Every rank gets the same value. */
static int global_grad_norm(mk_trainer *tr, double *norm)
{
    mk_backend *be = mk_model_backend(tr->model);
    const mk_real *g = mk_model_grads(tr->model);
    /* One sum per run of neighbouring tensors of the same kind (the whole gradient without
     * expert parallelism), all with one wait where the backend has sumsq_ranges. */
    const size_t nt = mk_model_tensor_count(tr->model);
    size_t *off = malloc(3 * (nt ? nt : 1) * sizeof *off);
    double *v = malloc((nt ? nt : 1) * sizeof *v);
    if (!off || !v) {
        free(off);
        free(v);
        return MK_FAIL(MK_ERR_NOMEM, "gradient norm: %zu tensors", nt);
    }
    size_t *len = off + nt, *kind = off + 2 * nt;
    int runs = 0;
    for (size_t i = 0; i < nt;) {
        const mk_tensor *first = mk_model_tensor(tr->model, i);
        const int k = first->expert && tr->ep;
        size_t end = first->offset + first->numel, j = i + 1;
        for (; j < nt; j++) {
            const mk_tensor *nx = mk_model_tensor(tr->model, j);
            if ((nx->expert && tr->ep) != k || nx->offset != end) break;
            end += nx->numel;
        }
        off[runs] = first->offset, len[runs] = end - first->offset, kind[runs] = (size_t)k;
        runs++;
        i = j;
    }
    int rc = MK_OK;
    if (be->ops->sumsq_ranges) rc = be->ops->sumsq_ranges(be, g, off, len, runs, v);
    else
        for (int r = 0; rc == MK_OK && r < runs; r++) rc = be->ops->sumsq(be, g + off[r], len[r], &v[r]);
    double ss[2] = { 0, 0 };
    for (int r = 0; rc == MK_OK && r < runs; r++) ss[kind[r]] += v[r];
    free(off);
    free(v);
    MK_CHECK(rc);
    if (tr->ep) MK_CHECK(mk_comm_allreduce_f64(tr->ep, &ss[1], 1));
    *norm = sqrt(ss[0] + ss[1]);
    return MK_OK;
}

/* The step's forward and backward again, each rank's gradient checked before its sums. */
static int run_again_checked(mk_trainer *tr, long step)
{
    mk_step_stats again;
    tr->check_before_sums = 1;
    const int rc = mk_trainer_grads(tr, step, tr->b_tokens, tr->b_targets, tr->b_domain, &again);
    tr->check_before_sums = 0;
    return rc;
}

int mk_trainer_update(mk_trainer *tr, long step, mk_step_stats *st)
{
    if (!isfinite(st->loss)) return MK_FAIL(MK_ERR_NUMERIC, "step %ld: loss is %g", step + 1, st->loss);
    st->lr = mk_lr_at(tr->cfg, step);
    MK_CHECK(global_grad_norm(tr, &st->gnorm));
    if (isfinite(st->gnorm)) return mk_optim_step(tr->model, step + 1, st->lr, st->gnorm);
    /* One rank: check_grads names the tensor. More: every rank sees the same norm, and all
     * run the step again with the checks before the sums, where the rank that made the NaN
     * or Inf fails with its name (the others then wait in a sum until the job ends). */
    if (tr->nranks == 1) MK_CHECK(check_grads(tr, step));
    else if (tr->b_tokens) MK_CHECK(run_again_checked(tr, step));
    /* Every rank's gradient was finite before the sums (or the run again was): a sum can
     * still overflow. */
    return MK_FAIL(MK_ERR_NUMERIC, "step %ld: the global gradient norm is %g%s", step + 1, st->gnorm,
                   tr->nranks > 1 ? " (this rank's gradient was finite before the sums)" : "");
}

