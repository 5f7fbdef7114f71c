/* mk_trainer.c - gradients and updates of one optimizer step across ranks (see mk_trainer.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_error.h"
#include "mk_failpoint.h"
#include "mk_lbl.h"
#include "mk_optim.h"

struct mk_trainer {
    const mk_config *cfg;
    const mk_comm *world;
    mk_comm *own_world;             /* the self communicator when the caller gave none */
    mk_comm *ep, *edp;              /* expert-parallel and expert-data-parallel groups */
    int rank, nranks;
    mk_backend *be;
    mk_model *model;
    mk_lbl *lbl;
    int64_t *counts;                /* [L, E] */
    double *lbl_sum;                /* [L] */
    int ndomains;
    int64_t *dcounts;               /* [L, ndomains, E] then [ndomains] token counts */
    int32_t *topk;                  /* [B T K] host */
};

static int lbl_allreduce(void *ctx, int64_t *counts, int n)
{
    return mk_comm_allreduce_i64(ctx, counts, (size_t)n);
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
    MK_CHECK_GOTO(rc, mk_backend_cpu_create(cfg->train.threads, &tr->be), fail);
    MK_CHECK_GOTO(rc, mk_model_create_ep(cfg, tr->be, tr->ep, &tr->model), fail);
    MK_CHECK_GOTO(rc, mk_model_init(tr->model, cfg->train.seed), fail);
    MK_CHECK_GOTO(rc, mk_lbl_create(cfg->lbl.mode, L, E, cfg->model.topk, &tr->lbl), fail);
    /* The global scope spans every data-parallel rank: the whole world. */
    mk_lbl_set_allreduce(tr->lbl, lbl_allreduce, (void *)tr->world);
    tr->counts = malloc((size_t)L * E * sizeof *tr->counts);
    tr->lbl_sum = malloc((size_t)L * sizeof *tr->lbl_sum);
    tr->topk = malloc((size_t)cfg->train.micro_batch * cfg->model.seq_len * cfg->model.topk * sizeof *tr->topk);
    if (!tr->counts || !tr->lbl_sum || !tr->topk || (rc = mk_trainer_set_domains(tr, 1)) != MK_OK) {
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
    mk_backend_destroy(&tr->be);
    mk_comm_free(&tr->ep);
    mk_comm_free(&tr->edp);
    mk_comm_free(&tr->own_world);
    free(tr->counts);
    free(tr->lbl_sum);
    free(tr->dcounts);
    free(tr->topk);
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
    const int L = cfg->model.layers, E = cfg->model.experts, K = cfg->model.topk, T = cfg->model.seq_len;
    const int Dm = tr->ndomains;
    int64_t *tok = tr->dcounts + (size_t)L * Dm * E;
    for (int b = 0; b < B; b++) {
        const int d = domain ? domain[b] : 0;
        if (d < 0 || d >= Dm) return MK_FAIL(MK_ERR_INTERNAL, "trainer: domain %d of %d", d, Dm);
        tok[d] += T;
    }
    for (int l = 0; l < L; l++) {
        MK_CHECK(mk_model_topk_host(tr->model, l, tr->topk));
        int64_t *c = tr->dcounts + (size_t)l * Dm * E;
        for (int b = 0; b < B; b++) {
            const int d = domain ? domain[b] : 0;
            for (int i = 0; i < T * K; i++) c[(size_t)d * E + tr->topk[(size_t)b * T * K + i]]++;
        }
    }
    return MK_OK;
}

mk_model *mk_trainer_model(mk_trainer *tr) { return tr->model; }
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
 * holding the same experts (expert-data-parallel group), everything else over the world. */
static int allreduce_grads(mk_trainer *tr)
{
    MK_CHECK(mk_failpoint("allreduce"));
    if (tr->nranks == 1) return MK_OK;
    mk_real *g = mk_model_grads(tr->model);
    for (size_t i = 0; i < mk_model_tensor_count(tr->model); i++) {
        const mk_tensor *t = mk_model_tensor(tr->model, i);
        const mk_comm *c = t->expert && tr->edp ? tr->edp : tr->world;
        MK_CHECK(mk_comm_allreduce_real(c, g + t->offset, t->numel));
    }
    return MK_OK;
}

int mk_trainer_grads(mk_trainer *tr, const int32_t *tokens, const int32_t *targets,
                     const int32_t *domain, mk_step_stats *out)
{
    const mk_config *cfg = tr->cfg;
    const int G = cfg->train.grad_accum, B = cfg->train.micro_batch, T = cfg->model.seq_len;
    const int L = cfg->model.layers, E = cfg->model.experts;
    const size_t per_micro = (size_t)B * T;
    memset(out, 0, sizeof *out);

    /* The CE gradient is the mean over the target tokens of the whole global batch. */
    int64_t ntargets = 0;
    for (size_t i = 0; i < per_micro * G; i++) ntargets += targets[i] >= 0;
    MK_CHECK(mk_comm_allreduce_i64(tr->world, &ntargets, 1));
    if (ntargets == 0) return MK_FAIL(MK_ERR_INPUT, "a global batch without target tokens");

    MK_CHECK(mk_model_zero_grad(tr->model));
    mk_lbl_reset(tr->lbl);
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
    for (int g = 0; g < G; g++) {
        mk_forward_stats st;
        MK_CHECK(mk_failpoint("forward"));
        MK_CHECK(mk_model_forward(tr->model, tokens + g * per_micro, targets + g * per_micro, B, tr->lbl, 1, &st));
        MK_CHECK(mk_model_backward(tr->model, 1.0 / (double)ntargets, aux_scale));
        ce += st.ce_sum;
        for (int i = 0; i < L * E; i++) tr->counts[i] += st.counts[i];
        for (int l = 0; l < L; l++) tr->lbl_sum[l] += st.lbl[l] * aux_scale;
        MK_CHECK(count_domains(tr, domain ? domain + (size_t)g * B : NULL, B));
    }
    MK_CHECK(allreduce_grads(tr));
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
    double ss[2] = { 0, 0 };
    for (size_t i = 0; i < mk_model_tensor_count(tr->model); i++) {
        const mk_tensor *t = mk_model_tensor(tr->model, i);
        double v;
        MK_CHECK(be->ops->sumsq(be, g + t->offset, t->numel, &v));
        ss[t->expert && tr->ep] += v;
    }
    if (tr->ep) MK_CHECK(mk_comm_allreduce_f64(tr->ep, &ss[1], 1));
    *norm = sqrt(ss[0] + ss[1]);
    return MK_OK;
}

int mk_trainer_update(mk_trainer *tr, long step, mk_step_stats *st)
{
    if (!isfinite(st->loss)) return MK_FAIL(MK_ERR_NUMERIC, "step %ld: loss is %g", step + 1, st->loss);
    st->lr = mk_lr_at(tr->cfg, step);
    MK_CHECK(global_grad_norm(tr, &st->gnorm));
    return mk_optim_step(tr->model, step + 1, st->lr, st->gnorm);
}
