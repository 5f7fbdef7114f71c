/* mk_model.c - the MoE transformer of DESIGN section 2, forward and backward, over the
 * backend interface (mk_backend.h). The same code drives every backend.
 *
 * Memory: parameters, gradients and the two AdamW moments are four blocks with one layout,
 * given by the tensor table. Activations of one micro-batch live in one arena carved into
 * named buffers. Nothing here indexes tensors by number: the table is walked by role.
 *
 * Backward reads the activations the last forward kept and follows it in reverse, one
 * mk_*_backward step per forward step; see mk_model.h for the loss it differentiates.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_devcomm.h"
#include "mk_error.h"
#include "mk_model_impl.h"
#include "mk_rng.h"

#define MK_ROPE_THETA 10000.0
#define MK_INIT_STD 0.02

/* ------------------------------------------------------------------ tensor table */

static int add_tensor(mk_model *m, size_t *cap, tensor_role role, int layer, const char *name,
                      int ndim, int d0, int d1, int d2)
{
    if (m->ntensors == *cap) {
        size_t ncap = *cap ? 2 * *cap : 32;
        mk_tensor *t = realloc(m->tensors, ncap * sizeof *t);
        if (!t) return MK_FAIL(MK_ERR_NOMEM, "model: out of memory for the tensor table");
        m->tensors = t;
        tensor_role *r = realloc(m->roles, ncap * sizeof *r);
        if (!r) return MK_FAIL(MK_ERR_NOMEM, "model: out of memory for the tensor table");
        m->roles = r;
        *cap = ncap;
    }
    mk_tensor *t = &m->tensors[m->ntensors];
    memset(t, 0, sizeof *t);
    if (layer >= 0)
        snprintf(t->name, sizeof t->name, "layers.%d.%s", layer, name);
    else
        snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 1;
    t->shape[2] = ndim > 2 ? d2 : 1;
    t->numel = (size_t)t->shape[0] * t->shape[1] * t->shape[2];
    t->offset = m->nparams;
    t->layer = layer;
    t->decay = !(role == R_ATTN_NORM || role == R_MLP_NORM || role == R_FINAL_NORM);
    t->expert = role == R_W1 || role == R_W3 || role == R_W2;
    t->dim0_offset = t->expert ? m->ep_rank * m->El : 0;
    t->dim0_global = t->expert ? m->E : t->shape[0];
    m->roles[m->ntensors] = role;
    m->nparams += t->numel;
    m->ntensors++;
    return MK_OK;
}

static int build_tensor_table(mk_model *m)
{
    size_t cap = 0;
    const int V = m->V, D = m->D, E = m->E, F = m->F, Fs = m->Fs;
    (void)E;
    MK_CHECK(add_tensor(m, &cap, R_WTE, -1, "wte", 2, V, D, 0));
    for (int l = 0; l < m->L; l++) {
        MK_CHECK(add_tensor(m, &cap, R_ATTN_NORM, l, "attn_norm", 1, D, 0, 0));
        MK_CHECK(add_tensor(m, &cap, R_QKV, l, "qkv", 2, D, 3 * D, 0));
        MK_CHECK(add_tensor(m, &cap, R_ATTN_OUT, l, "attn_out", 2, D, D, 0));
        MK_CHECK(add_tensor(m, &cap, R_MLP_NORM, l, "mlp_norm", 1, D, 0, 0));
        MK_CHECK(add_tensor(m, &cap, R_ROUTER, l, "router", 2, D, E, 0));
        MK_CHECK(add_tensor(m, &cap, R_W1, l, "w1", 3, m->El, D, F));
        MK_CHECK(add_tensor(m, &cap, R_W3, l, "w3", 3, m->El, D, F));
        MK_CHECK(add_tensor(m, &cap, R_W2, l, "w2", 3, m->El, F, D));
        if (Fs > 0) {
            MK_CHECK(add_tensor(m, &cap, R_SHARED_W1, l, "shared_w1", 2, D, Fs, 0));
            MK_CHECK(add_tensor(m, &cap, R_SHARED_W3, l, "shared_w3", 2, D, Fs, 0));
            MK_CHECK(add_tensor(m, &cap, R_SHARED_W2, l, "shared_w2", 2, Fs, D, 0));
        }
    }
    MK_CHECK(add_tensor(m, &cap, R_FINAL_NORM, -1, "final_norm", 1, D, 0, 0));
    if (!m->cfg.model.tie_embeddings) MK_CHECK(add_tensor(m, &cap, R_LM_HEAD, -1, "lm_head", 2, D, V, 0));
    return MK_OK;
}

static void point_view(const mk_model *m, params_view *v, mk_real *base)
{
    for (size_t i = 0; i < m->ntensors; i++) {
        mk_real *p = base + m->tensors[i].offset;
        layer_params *lp = m->tensors[i].layer >= 0 ? &v->layers[m->tensors[i].layer] : NULL;
        switch (m->roles[i]) {
        case R_WTE: v->wte = p; break;
        case R_FINAL_NORM: v->final_norm = p; break;
        case R_LM_HEAD: v->lm_head = p; break;
        case R_ATTN_NORM: lp->attn_norm = p; break;
        case R_QKV: lp->qkv = p; break;
        case R_ATTN_OUT: lp->attn_out = p; break;
        case R_MLP_NORM: lp->mlp_norm = p; break;
        case R_ROUTER: lp->router = p; break;
        case R_W1: lp->w1 = p; break;
        case R_W3: lp->w3 = p; break;
        case R_W2: lp->w2 = p; break;
        case R_SHARED_W1: lp->shared_w1 = p; break;
        case R_SHARED_W3: lp->shared_w3 = p; break;
        case R_SHARED_W2: lp->shared_w2 = p; break;
        }
    }
    if (m->cfg.model.tie_embeddings) v->lm_head = NULL;
}

/* ------------------------------------------------------------------ activation arena */

/* Carving runs twice: once with base NULL to size the arena, once to hand out pointers. */
typedef struct carver { char *base; size_t used; } carver;

static void *carve(carver *c, size_t bytes)
{
    size_t at = (c->used + 63) & ~(size_t)63;
    c->used = at + bytes;
    return c->base ? c->base + at : NULL;
}

#define CARVE_R(c, n) ((mk_real *)carve((c), (size_t)(n) * sizeof(mk_real)))
#define CARVE_I(c, n) ((int32_t *)carve((c), (size_t)(n) * sizeof(int32_t)))

/* Where the router's statistics lie in their per-layer block (byte offsets, each a multiple
 * of 16): the forward copies offs, the non-finite flag, counts, psum, the counts of each
 * sequence and lse to the host in one copy, the only wait for the GPU in the layer (the
 * expert GEMMs' sizes are needed on the host). One copy each cost a round trip to the GPU,
 * five per layer, and the per-domain counts were made on the host from all N x K choices
 * of every layer (6 MB per step at bench-s) while the GPU waited. */
typedef struct stats_layout { size_t bad, counts, psum, seqc, lse, bytes; } stats_layout;

_Static_assert(sizeof(int) == sizeof(int32_t), "offs_host (int) aliases the int32 offsets");

static size_t up16(size_t b) { return (b + 15) & ~(size_t)15; }

static stats_layout route_stats_layout(const mk_model *m)
{
    const size_t E = (size_t)m->E, N = (size_t)m->Bmax * m->T;
    stats_layout s;
    s.bad = (E + 1) * sizeof(int32_t);
    s.counts = up16(s.bad + sizeof(int32_t));
    s.psum = up16(s.counts + E * sizeof(int32_t));
    s.seqc = up16(s.psum + E * sizeof(mk_real));
    s.lse = up16(s.seqc + (size_t)m->Bmax * E * sizeof(int32_t));
    s.bytes = up16(s.lse + N * sizeof(mk_real));
    return s;
}

static void carve_acts(mk_model *m, carver *c)
{
    const size_t N = (size_t)m->Bmax * m->T, D = m->D, E = m->E, K = m->K, F = m->F,
                 Fs = m->Fs, R = N * K, A = (size_t)m->Bmax * m->H * m->T * m->T;
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &m->acts[l];
        a->x_in = CARVE_R(c, N * D);
        a->ln1 = CARVE_R(c, N * D);
        a->rstd1 = CARVE_R(c, N);
        a->qkv = CARVE_R(c, N * 3 * D);
        a->att = CARVE_R(c, A);
        a->atty = CARVE_R(c, N * D);
        a->h = CARVE_R(c, N * D);
        a->ln2 = CARVE_R(c, N * D);
        a->ln2_op = m->be->ops->moe_input_forward ? carve(c, N * D * 2) : NULL;
        a->rstd2 = CARVE_R(c, N);
        a->z = CARVE_R(c, N * E);
        a->probs = CARVE_R(c, N * E);
        a->gates = CARVE_R(c, N * K);
        a->topk = CARVE_I(c, N * K);
        const stats_layout sl = route_stats_layout(m);
        char *st = carve(c, sl.bytes);
        a->offs = (int32_t *)st;
        a->bad = (int32_t *)(st + sl.bad);
        a->counts = (int32_t *)(st + sl.counts);
        a->psum = (mk_real *)(st + sl.psum);
        a->seqc = (int32_t *)(st + sl.seqc);
        a->lse = (mk_real *)(st + sl.lse);
        a->row_slot = CARVE_I(c, R);
        a->slot_row = CARVE_I(c, R);
        a->xp = CARVE_R(c, R * D);
        a->a1 = CARVE_R(c, R * F);
        a->a3 = CARVE_R(c, R * F);
        a->hact = CARVE_R(c, R * F);
        a->y = CARVE_R(c, R * D);
        if (Fs) {
            a->sa1 = CARVE_R(c, N * Fs);
            a->sa3 = CARVE_R(c, N * Fs);
            a->sh = CARVE_R(c, N * Fs);
        }
    }
    scratch *s = &m->s;
    s->tokens = CARVE_I(c, N);
    s->targets = CARVE_I(c, N);
    s->x_final = CARVE_R(c, N * D);
    s->lnf = CARVE_R(c, N * D);
    s->rstdf = CARVE_R(c, N);
    s->logits = CARVE_R(c, N * m->V);
    s->losses = CARVE_R(c, N);
    s->dresid = CARVE_R(c, N * D);
    s->dln = CARVE_R(c, N * D);
    s->dqkv = CARVE_R(c, N * 3 * D);
    s->datt = CARVE_R(c, A);
    s->datty = CARVE_R(c, N * D);
    s->dz = CARVE_R(c, N * E);
    s->dgates = CARVE_R(c, N * K);
    s->dxp = CARVE_R(c, R * D);
    s->dy = CARVE_R(c, R * D);
    s->dhact = CARVE_R(c, R * F);
    s->da1 = CARVE_R(c, R * F);
    s->da3 = CARVE_R(c, R * F);
    if (Fs) {
        s->dsh = CARVE_R(c, N * Fs);
        s->dsa1 = CARVE_R(c, N * Fs);
        s->dsa3 = CARVE_R(c, N * Fs);
    }
    s->lbl_ds = CARVE_R(c, (size_t)m->L * E);
}

/* ------------------------------------------------------------------ create / destroy */

int mk_model_create(const mk_config *cfg, mk_backend *be, mk_model **out)
{
    return mk_model_create_ep(cfg, be, NULL, out);
}

int mk_model_create_ep(const mk_config *cfg, mk_backend *be, const mk_comm *ep, mk_model **out)
{
    int rc = MK_OK;
    *out = NULL;
    MK_CHECK(mk_config_validate(cfg));
    const int ep_size = ep ? mk_comm_size(ep) : 1;
    if (ep_size != cfg->parallel.ep)
        return MK_FAIL(MK_ERR_USAGE, "parallel.ep = %d but the expert-parallel group has %d ranks",
                       cfg->parallel.ep, ep_size);
    mk_model *m = calloc(1, sizeof *m);
    if (!m) return MK_FAIL(MK_ERR_NOMEM, "model: out of memory");
    m->cfg = *cfg;
    m->be = be;
    m->V = cfg->model.vocab;
    m->D = cfg->model.d_model;
    m->L = cfg->model.layers;
    m->H = cfg->model.heads;
    m->E = cfg->model.experts;
    m->K = cfg->model.topk;
    m->F = cfg->model.ffn;
    m->Fs = cfg->model.shared_ffn;
    m->T = cfg->model.seq_len;
    m->Bmax = cfg->train.micro_batch;
    m->ep = ep_size;
    m->ep_rank = ep ? mk_comm_rank(ep) : 0;
    m->ep_comm = ep;
    m->El = m->E / m->ep;
    const mk_backend_ops *ops = be->ops;
    if (ep_size > 1) MK_CHECK_GOTO(rc, mk_devcomm_create(ep, be, 0, &m->ep_dev), fail);

    MK_CHECK_GOTO(rc, build_tensor_table(m), fail);
    size_t bytes = m->nparams * sizeof(mk_real);
    MK_CHECK_GOTO(rc, ops->alloc(be, bytes, (void **)&m->params), fail);
    MK_CHECK_GOTO(rc, ops->alloc(be, bytes, (void **)&m->grads), fail);
    MK_CHECK_GOTO(rc, ops->alloc(be, bytes, (void **)&m->adam_m), fail);
    MK_CHECK_GOTO(rc, ops->alloc(be, bytes, (void **)&m->adam_v), fail);
    m->pv.layers = calloc((size_t)m->L, sizeof *m->pv.layers);
    m->gv.layers = calloc((size_t)m->L, sizeof *m->gv.layers);
    m->acts = calloc((size_t)m->L, sizeof *m->acts);
    if (!m->pv.layers || !m->gv.layers || !m->acts) goto nomem;
    point_view(m, &m->pv, m->params);
    point_view(m, &m->gv, m->grads);

    carver c = { NULL, 0 };
    carve_acts(m, &c);
    MK_CHECK_GOTO(rc, ops->alloc(be, c.used, &m->arena), fail);
    c.base = m->arena;
    c.used = 0;
    carve_acts(m, &c);

    const size_t N = (size_t)m->Bmax * m->T;
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &m->acts[l];
        a->stats_host = calloc(1, route_stats_layout(m).bytes);
        a->offs_host = a->stats_host;
        a->f = calloc((size_t)m->E, sizeof *a->f);
        a->f_micro = calloc((size_t)m->E, sizeof *a->f_micro);
        a->psum_h = calloc((size_t)m->E, sizeof *a->psum_h);
        if (!a->offs_host || !a->f || !a->f_micro || !a->psum_h) goto nomem;
    }
    m->lbl_host = calloc((size_t)m->L, sizeof *m->lbl_host);
    m->counts_host = calloc((size_t)m->L * m->E, sizeof *m->counts_host);
    m->host_n = calloc(N, sizeof *m->host_n);
    m->lbl_ds_host = calloc((size_t)m->L * m->E, sizeof *m->lbl_ds_host);
    m->targets_host = calloc(N, sizeof *m->targets_host);
    if (m->ep > 1 && !(m->epl = calloc((size_t)m->L, sizeof *m->epl))) goto nomem;
    if (!m->lbl_host || !m->counts_host || !m->host_n || !m->lbl_ds_host ||
        !m->targets_host)
        goto nomem;
    *out = m;
    return MK_OK;
nomem:
    rc = MK_FAIL(MK_ERR_NOMEM, "model: out of memory");
fail:
    mk_model_destroy(&m);
    return rc;
}

void mk_model_destroy(mk_model **mp)
{
    if (!mp || !*mp) return;
    mk_model *m = *mp;
    const mk_backend_ops *ops = m->be->ops;
    mk_devcomm_free(&m->ep_dev);
    ops->free(m->be, m->params);
    ops->free(m->be, m->grads);
    ops->free(m->be, m->adam_m);
    ops->free(m->be, m->adam_v);
    ops->free(m->be, m->arena);
    if (m->acts)
        for (int l = 0; l < m->L; l++) {
            free(m->acts[l].stats_host);
            free(m->acts[l].f);
            free(m->acts[l].f_micro);
            free(m->acts[l].psum_h);
        }
    free(m->acts);
    free(m->pv.layers);
    free(m->gv.layers);
    free(m->tensors);
    free(m->roles);
    free(m->lbl_host);
    free(m->counts_host);
    free(m->host_n);
    free(m->lbl_ds_host);
    free(m->targets_host);
    for (int l = 0; m->epl && l < m->L; l++) mk_moe_ep_free(m, &m->epl[l]);
    free(m->epl);
    mk_moe_ep_io_free(m);
    free(m);
    *mp = NULL;
}

/* ------------------------------------------------------------------ parameters */

int mk_model_init(mk_model *m, unsigned long seed)
{
    size_t maxn = 0;
    for (size_t i = 0; i < m->ntensors; i++)
        if (m->tensors[i].numel > maxn) maxn = m->tensors[i].numel;
    mk_real *host = malloc(maxn * sizeof *host);
    if (!host) return MK_FAIL(MK_ERR_NOMEM, "model init: out of memory");
    const double out_scale = 1.0 / sqrt(2.0 * m->L);
    int rc = MK_OK;
    for (size_t i = 0; i < m->ntensors && rc == MK_OK; i++) {
        const mk_tensor *t = &m->tensors[i];
        tensor_role r = m->roles[i];
        if (r == R_ATTN_NORM || r == R_MLP_NORM || r == R_FINAL_NORM) {
            for (size_t j = 0; j < t->numel; j++) host[j] = 1;
        } else {
            /* One stream per tensor: a tensor's values do not depend on which others exist. */
            mk_rng g = mk_rng_make(seed, i);
            double std = MK_INIT_STD * ((r == R_ATTN_OUT || r == R_W2) ? out_scale : 1.0);
            /* A shard of experts takes its slice of the full tensor's sequence, so the
             * model is the same for every parallel.ep. */
            const size_t skip = (size_t)t->dim0_offset * (t->numel / (size_t)t->shape[0]);
            for (size_t j = 0; j < skip; j++) mk_rng_normal(&g);
            for (size_t j = 0; j < t->numel; j++) host[j] = (mk_real)(std * mk_rng_normal(&g));
        }
        rc = m->be->ops->from_host(m->be, m->params + t->offset, host, t->numel * sizeof *host);
    }
    free(host);
    return rc;
}

size_t mk_model_tensor_count(const mk_model *m) { return m->ntensors; }
const mk_tensor *mk_model_tensor(const mk_model *m, size_t i)
{
    return i < m->ntensors ? &m->tensors[i] : NULL;
}

int mk_model_find(const mk_model *m, const char *name, size_t *idx)
{
    for (size_t i = 0; i < m->ntensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) {
            *idx = i;
            return MK_OK;
        }
    return MK_FAIL(MK_ERR_USAGE, "model has no tensor '%s'", name);
}

size_t mk_model_param_count(const mk_model *m) { return m->nparams; }

size_t mk_model_active_param_count(const mk_model *m)
{
    size_t expert = 0;
    for (size_t i = 0; i < m->ntensors; i++)
        if (m->tensors[i].expert) expert += m->tensors[i].numel;
    return m->nparams - expert + expert / (size_t)m->El * (size_t)m->K;
}

double mk_model_flops_per_token(const mk_model *m)
{
    const double D = m->D, L = m->L, F = m->F, Fs = m->Fs, K = m->K, T = m->T, V = m->V;
    const double matmul_params = L * (D * 3 * D + D * D + K * 3 * D * F + 3 * D * Fs) + D * V;
    return 6 * matmul_params + 6 * T * D * L;
}

mk_real *mk_model_params(mk_model *m) { return m->params; }
mk_real *mk_model_grads(mk_model *m) { return m->grads; }
mk_real *mk_model_adam_m(mk_model *m) { return m->adam_m; }
mk_real *mk_model_adam_v(mk_model *m) { return m->adam_v; }
const mk_config *mk_model_config(const mk_model *m) { return &m->cfg; }
mk_backend *mk_model_backend(mk_model *m) { return m->be; }
double mk_model_a2a_seconds(const mk_model *m) { return m->a2a_seconds; }

int mk_model_zero_grad(mk_model *m)
{
    return m->be->ops->zero(m->be, m->grads, m->nparams * sizeof(mk_real));
}

/* ------------------------------------------------------------------ experts */

int mk_expert_ffn_forward(mk_model *m, const layer_params *p, const int *offs, int nexp, int rows,
                          const mk_rows_gather *x, mk_real *xp, mk_real *a1, mk_real *a3,
                          mk_real *hact, mk_real *y)
{
    mk_backend *be = m->be;
    if (nexp > 0 && offs[nexp] != rows)
        return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: %d rows, offsets end at %d", rows, offs[nexp]);
    if (be->ops->expert_ffn_forward)
        return be->ops->expert_ffn_forward(be, y, a1, a3, hact, xp, x, p->w1, p->w3, p->w2, offs,
                                           nexp, m->D, m->F);
    return mk_expert_ffn_forward_ops(be, y, a1, a3, hact, xp, x, p->w1, p->w3, p->w2, offs, nexp,
                                     m->D, m->F);
}

int mk_combine_backward(mk_model *m, mk_real *dgates, mk_real *dy, mk_rows_gather *dout, const mk_real *y,
                        const int32_t *slot_row)
{
    mk_backend *be = m->be;
    if (!be->ops->combine_backward)
        return be->ops->combine_backward_gates(be, dgates, dout->src, y, slot_row, dout->N, dout->K, m->D);
    MK_CHECK(be->ops->combine_backward(be, dgates, dy, dout->src, y, slot_row, dout->weights, dout->N, dout->K,
                                       m->D));
    dout->rows_op = dy;
    return MK_OK;
}

int mk_expert_ffn_backward(mk_model *m, const layer_params *p, layer_params *g, const int *offs,
                           int nexp, int rows, const mk_rows_gather *dout, mk_real *dy,
                           const mk_real *xp, const mk_real *a1, const mk_real *a3,
                           const mk_real *hact, mk_real *dhact, mk_real *da1, mk_real *da3,
                           mk_real *dxp)
{
    mk_backend *be = m->be;
    if (nexp > 0 && offs[nexp] != rows)
        return MK_FAIL(MK_ERR_INTERNAL, "expert FFN: %d rows, offsets end at %d", rows, offs[nexp]);
    if (be->ops->expert_ffn_backward)
        return be->ops->expert_ffn_backward(be, dxp, g->w1, g->w3, g->w2, dhact, da1, da3, dy, dout,
                                            xp, a1, a3, hact, p->w1, p->w3, p->w2, offs, nexp,
                                            m->D, m->F);
    return mk_expert_ffn_backward_ops(be, dxp, g->w1, g->w3, g->w2, dhact, da1, da3, dy, dout, xp,
                                      a1, a3, hact, p->w1, p->w3, p->w2, offs, nexp, m->D, m->F);
}

/* ------------------------------------------------------------------ forward */

static mk_attn_block attn_block_of(const layer_params *p, layer_acts *a)
{
    const mk_attn_block b = {a->x_in, p->attn_norm, p->qkv, p->attn_out,
                             a->ln1, a->rstd1, a->qkv, a->att, a->atty};
    return b;
}

static int attention_block_forward(mk_model *m, const layer_params *p, layer_acts *a, int B)
{
    mk_backend *be = m->be;
    const mk_attn_block ab = attn_block_of(p, a);
    if (be->ops->attention_block_forward)
        return be->ops->attention_block_forward(be, a->h, &ab, B, m->T, m->D, m->H, MK_ROPE_THETA);
    return mk_attention_block_forward_ops(be, a->h, &ab, B, m->T, m->D, m->H, MK_ROPE_THETA);
}

/* Name the first non-finite router logit: its token and expert. Failure path only. */
static int fail_logits(mk_model *m, int l, const mk_real *z, int N, int E)
{
    char step[40] = "";
    if (m->step > 0) snprintf(step, sizeof step, "step %ld: ", m->step);
    mk_real *h = malloc((size_t)N * E * sizeof *h);
    if (h && m->be->ops->to_host(m->be, h, z, (size_t)N * E * sizeof *h) == MK_OK)
        for (size_t i = 0; i < (size_t)N * E; i++)
            if (!isfinite(h[i])) {
                double v = h[i];
                free(h);
                return MK_FAIL(MK_ERR_NUMERIC, "%srouter logits of layer %d are not finite (%g at token %zu,"
                               " expert %zu)", step, l, v, i / (size_t)E, i % (size_t)E);
            }
    free(h);
    return MK_FAIL(MK_ERR_NUMERIC, "%srouter logits of layer %d are not finite", step, l);
}

void mk_model_set_step(mk_model *m, long step) { m->step = step; }

/* Router, dispatch, experts, combine, shared expert; out = h + MoE(RMSNorm(h)). */
static int moe_block_forward(mk_model *m, int l, const layer_params *p, layer_acts *a, int B,
                             mk_lbl *lbl, mk_real *out, mk_forward_stats *st)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    const int N = B * m->T, D = m->D, E = m->E, K = m->K, Fs = m->Fs;

    if (o->moe_input_forward)
        MK_CHECK(o->moe_input_forward(be, a->z, a->ln2, a->ln2_op, a->rstd2, a->h, p->mlp_norm, p->router, N, D, E));
    else
        MK_CHECK(mk_moe_input_forward_ops(be, a->z, a->ln2, a->rstd2, a->h, p->mlp_norm, p->router, N, D, E));
    MK_CHECK(o->router_forward(be, a->probs, a->lse, a->topk, a->gates, a->counts, a->psum, a->bad,
                               a->z, N, E, K, m->cfg.router.norm_topk));

    int capacity = 0;
    if (m->cfg.router.capacity_factor > 0)
        capacity = (int)ceil(m->cfg.router.capacity_factor * (double)N * K / E);
    MK_CHECK(o->route_plan(be, a->offs, a->row_slot, a->slot_row, a->topk, N, E, K, capacity));
    MK_CHECK(o->sequence_counts(be, a->seqc, a->topk, B, m->T * K, E));
    /* offs, the flag, counts, psum, the sequences' counts, lse: one copy. A NaN or Inf
     * logit would otherwise turn into routing by whatever order NaN compares in, long
     * before the loss shows it; the router kept every choice a valid expert, and nothing
     * has used them yet. */
    const stats_layout sl = route_stats_layout(m);
    MK_CHECK(o->to_host(be, a->stats_host, a->offs, sl.lse + (size_t)N * sizeof(mk_real)));
    if (*(const int32_t *)((const char *)a->stats_host + sl.bad)) return fail_logits(m, l, a->z, N, E);
    const int R = a->offs_host[E];
    st->dropped += (long)N * K - R;

    if (m->ep > 1) {
        MK_CHECK(o->copy(be, out, a->h, (size_t)N * D * sizeof(mk_real)));
        MK_CHECK(mk_moe_ep_forward(m, l, p, a, N, out));
    } else {
        const mk_rows_gather x = {a->ln2, a->row_slot, NULL, K, N, a->ln2_op, NULL};
        MK_CHECK(mk_expert_ffn_forward(m, p, a->offs_host, E, R, &x, a->xp, a->a1, a->a3, a->hact,
                                       a->y));
        MK_CHECK(o->combine_rows(be, out, a->h, a->y, a->slot_row, a->gates, N, K, D));
    }
    if (Fs > 0) {
        MK_CHECK(o->matmul(be, a->sa1, a->ln2, p->shared_w1, N, Fs, D, 0, 0, 1, 0));
        MK_CHECK(o->matmul(be, a->sa3, a->ln2, p->shared_w3, N, Fs, D, 0, 0, 1, 0));
        MK_CHECK(o->swiglu_forward(be, a->sh, a->sa1, a->sa3, (size_t)N * Fs));
        MK_CHECK(o->matmul(be, out, a->sh, p->shared_w2, N, D, Fs, 0, 0, 1, 1));
    }

    /* Statistics: counts and mean router probabilities make the LBL of the scope. */
    int32_t *counts = m->counts_host + (size_t)l * E;
    const char *sh = a->stats_host;
    memcpy(counts, sh + sl.counts, (size_t)E * sizeof(int32_t));
    const mk_real *psum = (const mk_real *)(sh + sl.psum), *lse = (const mk_real *)(sh + sl.lse);
    for (int i = 0; i < E; i++) a->psum_h[i] = psum[i];
    /* The scope's f comes after the last layer (mk_lbl_commit: one all-reduce for all). */
    if (lbl)
        MK_CHECK(mk_lbl_record(lbl, l, counts, N, a->f_micro));
    else
        for (int i = 0; i < E; i++) a->f_micro[i] = (double)counts[i] / ((double)K * N);

    /* Reported even when its coefficient is 0: large router logits show up here first. */
    double z2 = 0;
    for (int n = 0; n < N; n++) z2 += (double)lse[n] * lse[n];
    st->zloss += z2 / N;
    return MK_OK;
}

int mk_model_forward(mk_model *m, const int32_t *tokens_host, const int32_t *targets_host, int B,
                     mk_lbl *lbl, int train, mk_forward_stats *st)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    if (B < 1 || B > m->Bmax)
        return MK_FAIL(MK_ERR_INTERNAL, "model forward: %d sequences, room for 1..%d", B, m->Bmax);
    const int N = B * m->T, D = m->D, V = m->V;
    for (int n = 0; n < N; n++)
        if (tokens_host[n] < 0 || tokens_host[n] >= V || targets_host[n] >= V)
            return MK_FAIL(MK_ERR_INPUT, "token %d at position %d is outside the vocabulary (model.vocab = %d)",
                           tokens_host[n] < 0 || tokens_host[n] >= V ? tokens_host[n] : targets_host[n], n, V);
    memset(st, 0, sizeof *st);
    m->last_B = 0;
    MK_CHECK(o->from_host(be, m->s.tokens, tokens_host, (size_t)N * sizeof(int32_t)));
    MK_CHECK(o->from_host(be, m->s.targets, targets_host, (size_t)N * sizeof(int32_t)));
    memcpy(m->targets_host, targets_host, (size_t)N * sizeof(int32_t));

    MK_CHECK(o->embedding_forward(be, m->acts[0].x_in, m->s.tokens, m->pv.wte, N, D));
    for (int l = 0; l < m->L; l++) {
        mk_real *out = l + 1 < m->L ? m->acts[l + 1].x_in : m->s.x_final;
        MK_CHECK(attention_block_forward(m, &m->pv.layers[l], &m->acts[l], B));
        MK_CHECK(moe_block_forward(m, l, &m->pv.layers[l], &m->acts[l], B, lbl, out, st));
    }
    if (lbl) MK_CHECK(mk_lbl_commit(lbl));
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &m->acts[l];
        if (lbl)
            MK_CHECK(mk_lbl_f(lbl, l, a->f));
        else
            memcpy(a->f, a->f_micro, (size_t)m->E * sizeof *a->f);
        m->lbl_host[l] = mk_lbl_value(a->f, a->psum_h, N, m->E);
    }
    MK_CHECK(o->rmsnorm_forward(be, m->s.lnf, m->s.rstdf, m->s.x_final, m->pv.final_norm, N, D));
    /* A training forward leaves in the logits buffer (or the backend) what the backward
     * needs: one pass of cross-entropy per step, ce_scale applied by the backward. */
    const int tied = m->pv.lm_head == NULL;
    const mk_real *W = tied ? m->pv.wte : m->pv.lm_head;
    if (o->output_forward)
        MK_CHECK(o->output_forward(be, m->s.losses, m->s.logits, m->s.lnf, W, tied, m->s.targets,
                                   N, V, D, train));
    else
        MK_CHECK(mk_output_forward_ops(be, m->s.losses, m->s.logits, m->s.lnf, W, tied,
                                       m->s.targets, N, V, D, train));
    MK_CHECK(o->to_host(be, m->host_n, m->s.losses, (size_t)N * sizeof(mk_real)));
    for (int n = 0; n < N; n++)
        if (targets_host[n] >= 0) {
            st->ce_sum += m->host_n[n];
            st->targets++;
        }
    st->lbl = m->lbl_host;
    st->counts = m->counts_host;
    m->last_B = B;
    m->last_train = train;
    return MK_OK;
}

/* ------------------------------------------------------------------ backward */

/* On entry s->dresid is dL/d(layer output); on exit dL/dh (the attention residual). */
static int moe_block_backward(mk_model *m, int l, const layer_params *p, layer_params *g,
                              layer_acts *a, int B, double aux_scale)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    scratch *s = &m->s;
    const int N = B * m->T, D = m->D, E = m->E, K = m->K, Fs = m->Fs;
    const int *offs = a->offs_host;
    const int R = offs[E];

    if (Fs > 0) {
        MK_CHECK(o->matmul(be, s->dsh, s->dresid, p->shared_w2, N, Fs, D, 0, 1, 1, 0));
        MK_CHECK(o->matmul(be, g->shared_w2, a->sh, s->dresid, Fs, D, N, 1, 0, 1, 1));
        MK_CHECK(o->swiglu_backward(be, s->dsa1, s->dsa3, s->dsh, a->sa1, a->sa3, (size_t)N * Fs));
        MK_CHECK(o->matmul(be, s->dln, s->dsa1, p->shared_w1, N, D, Fs, 0, 1, 1, 0));
        MK_CHECK(o->matmul(be, s->dln, s->dsa3, p->shared_w3, N, D, Fs, 0, 1, 1, 1));
        MK_CHECK(o->matmul(be, g->shared_w1, a->ln2, s->dsa1, D, Fs, N, 1, 0, 1, 1));
        MK_CHECK(o->matmul(be, g->shared_w3, a->ln2, s->dsa3, D, Fs, N, 1, 0, 1, 1));
    } else if (m->ep > 1) {
        MK_CHECK(o->zero(be, s->dln, (size_t)N * D * sizeof(mk_real)));
    } /* else the combine below writes dln from 0 */

    if (m->ep > 1) {
        MK_CHECK(mk_moe_ep_backward(m, l, p, g, N));
    } else {
        mk_rows_gather dout = {s->dresid, a->row_slot, a->gates, K, N, NULL, NULL};
        MK_CHECK(mk_combine_backward(m, s->dgates, s->dy, &dout, a->y, a->slot_row));
        MK_CHECK(mk_expert_ffn_backward(m, p, g, offs, E, R, &dout, s->dy, a->xp, a->a1, a->a3,
                                        a->hact, s->dhact, s->da1, s->da3, s->dxp));
        MK_CHECK(o->combine_rows(be, s->dln, Fs > 0 ? s->dln : NULL, s->dxp, a->slot_row, NULL, N, K, D));
    }

    const mk_real zscale = (mk_real)(m->cfg.router.zloss_coeff * aux_scale / N);
    MK_CHECK(o->router_backward(be, s->dz, s->dgates, s->lbl_ds + (size_t)l * E, zscale, a->probs, a->lse, a->topk,
                                a->gates, N, E, K, m->cfg.router.norm_topk));
    if (o->moe_input_backward)
        return o->moe_input_backward(be, s->dresid, g->mlp_norm, g->router, s->dln, s->dz, a->h, a->ln2, a->ln2_op,
                                     a->rstd2, p->mlp_norm, p->router, N, D, E);
    return mk_moe_input_backward_ops(be, s->dresid, g->mlp_norm, g->router, s->dln, s->dz, a->h, a->ln2, a->rstd2,
                                     p->mlp_norm, p->router, N, D, E);
}

/* On entry s->dresid is dL/dh; on exit dL/d(layer input). */
static int attention_block_backward(mk_model *m, const layer_params *p, layer_params *g,
                                    layer_acts *a, int B)
{
    mk_backend *be = m->be;
    scratch *s = &m->s;
    const mk_attn_block ab = attn_block_of(p, a);
    const mk_attn_block_grads gb = {g->attn_norm, g->qkv, g->attn_out, s->datty, s->dqkv, s->datt, s->dln};
    if (be->ops->attention_block_backward)
        return be->ops->attention_block_backward(be, s->dresid, &gb, &ab, B, m->T, m->D, m->H, MK_ROPE_THETA);
    return mk_attention_block_backward_ops(be, s->dresid, &gb, &ab, B, m->T, m->D, m->H, MK_ROPE_THETA);
}

static int attention_role(tensor_role r)
{
    return r == R_ATTN_NORM || r == R_QKV || r == R_ATTN_OUT;
}

/* The hook for layer l's MoE block (moe = 1) or attention block: each is one run of
 * neighbours in the table (build_tensor_table). Starting the MoE block's sums before the
 * attention backward lets the largest of them (the experts') run beside that backward
 * rather than beside the next layer's expert GEMMs. */
static int block_grads_ready(mk_model *m, int l, int moe)
{
    if (!m->layer_grads) return MK_OK;
    size_t i0 = 0;
    while (i0 < m->ntensors && !(m->tensors[i0].layer == l && attention_role(m->roles[i0]) != moe)) i0++;
    size_t i1 = i0;
    while (i1 < m->ntensors && m->tensors[i1].layer == l && attention_role(m->roles[i1]) != moe) i1++;
    return i1 > i0 ? m->layer_grads(m->layer_grads_ctx, l, i0, i1) : MK_OK;
}

int mk_model_backward(mk_model *m, double ce_scale, double aux_scale)
{
    mk_backend *be = m->be;
    const mk_backend_ops *o = be->ops;
    scratch *s = &m->s;
    const int B = m->last_B;
    if (B == 0 || !m->last_train)
        return MK_FAIL(MK_ERR_INTERNAL, "model backward without a training forward");
    const int N = B * m->T, D = m->D, V = m->V;

    const int tied = m->pv.lm_head == NULL;
    const mk_real *W = tied ? m->pv.wte : m->pv.lm_head;
    mk_real *dW = tied ? m->gv.wte : m->gv.lm_head;
    if (o->output_backward)
        MK_CHECK(o->output_backward(be, s->dln, dW, s->lnf, W, tied, s->logits, N, V, D,
                                    (mk_real)ce_scale));
    else
        MK_CHECK(mk_output_backward_ops(be, s->dln, dW, s->lnf, W, tied, s->logits, N, V, D,
                                        (mk_real)ce_scale));
    /* dLBL/dprobs_{n,i} = E f_i / N for every token; f is a constant of the scope. Every
     * layer's in one copy: a copy from the host waits for the GPU. */
    const int E = m->E;
    const double lbl_coeff = m->cfg.lbl.mode == MK_LBL_NONE ? 0.0 : m->cfg.lbl.coeff;
    const double c = aux_scale * (double)E / N;
    for (int l = 0; l < m->L; l++) {
        const layer_acts *a = &m->acts[l];
        for (int i = 0; i < E; i++)
            m->lbl_ds_host[(size_t)l * E + i] =
                (mk_real)(c * (lbl_coeff * a->f[i] + m->cfg.lbl.micro_coeff * a->f_micro[i]));
    }
    MK_CHECK(o->from_host(be, s->lbl_ds, m->lbl_ds_host, (size_t)m->L * E * sizeof(mk_real)));
    MK_CHECK(o->zero(be, s->dresid, (size_t)N * D * sizeof(mk_real)));
    MK_CHECK(o->rmsnorm_backward(be, s->dresid, m->gv.final_norm, s->dln, s->x_final,
                                 m->pv.final_norm, s->rstdf, N, D));
    for (int l = m->L - 1; l >= 0; l--) {
        MK_CHECK(moe_block_backward(m, l, &m->pv.layers[l], &m->gv.layers[l], &m->acts[l], B, aux_scale));
        MK_CHECK(block_grads_ready(m, l, 1));
        MK_CHECK(attention_block_backward(m, &m->pv.layers[l], &m->gv.layers[l], &m->acts[l], B));
        MK_CHECK(block_grads_ready(m, l, 0));
    }
    MK_CHECK(o->embedding_backward(be, m->gv.wte, s->tokens, s->dresid, N, D, V));
    /* The logits buffer now holds gradients: a second backward would be wrong. */
    m->last_train = 0;
    return MK_OK;
}

void mk_model_set_layer_grads_hook(mk_model *m, mk_layer_grads_fn fn, void *ctx)
{
    m->layer_grads = fn;
    m->layer_grads_ctx = ctx;
}

const int32_t *mk_model_sequence_counts(const mk_model *m, int layer)
{
    if (layer < 0 || layer >= m->L || m->last_B == 0) return NULL;
    return (const int32_t *)((const char *)m->acts[layer].stats_host + route_stats_layout(m).seqc);
}

int mk_model_topk_host(mk_model *m, int layer, int32_t *out_host)
{
    if (layer < 0 || layer >= m->L || m->last_B == 0)
        return MK_FAIL(MK_ERR_INTERNAL, "topk of layer %d: no such layer or no forward yet", layer);
    const size_t n = (size_t)m->last_B * m->T * m->K;
    return m->be->ops->to_host(m->be, out_host, m->acts[layer].topk, n * sizeof(int32_t));
}
