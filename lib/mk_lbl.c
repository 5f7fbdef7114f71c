/* mk_lbl.c - balance scopes of the load-balancing loss (see mk_lbl.h, DESIGN section 3).
 *
 * The global buffer keeps counts in int64 and the token count next to them, so N_f is the
 * number of tokens really counted (uneven or padded micro-batches included) rather than
 * "micro-steps so far times tokens per micro-step" (Megatron's buffer assumes the latter).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_lbl.h"

#include <stdlib.h>
#include <string.h>

#include "mk_error.h"

struct mk_lbl {
    mk_lbl_mode mode;
    int layers, experts, topk;
    int64_t *buf;           /* [L, E+1]: counts of the scope, then its token count */
    int64_t *pending;       /* [L, E+1]: recorded, not yet committed (global) */
    unsigned char *has_pending; /* [L] */
    int64_t *scratch;       /* [L (E+1)] for the all-reduce */
    int have_exact;
    mk_lbl_allreduce_fn allreduce;
    void *allreduce_ctx;
};

int mk_lbl_create(mk_lbl_mode mode, int layers, int experts, int topk, mk_lbl **out)
{
    *out = NULL;
    if (layers < 1 || experts < 1 || topk < 1 || topk > experts)
        return MK_FAIL(MK_ERR_USAGE, "lbl: bad shape (layers %d, experts %d, topk %d)", layers,
                       experts, topk);
    mk_lbl *l = calloc(1, sizeof *l);
    if (!l) return MK_FAIL(MK_ERR_NOMEM, "lbl: out of memory");
    l->mode = mode;
    l->layers = layers;
    l->experts = experts;
    l->topk = topk;
    l->buf = calloc((size_t)layers * (experts + 1), sizeof *l->buf);
    l->scratch = calloc((size_t)layers * (experts + 1), sizeof *l->scratch);
    l->pending = calloc((size_t)layers * (experts + 1), sizeof *l->pending);
    l->has_pending = calloc((size_t)layers, 1);
    if (!l->buf || !l->scratch || !l->pending || !l->has_pending) {
        mk_lbl_destroy(&l);
        return MK_FAIL(MK_ERR_NOMEM, "lbl: out of memory");
    }
    *out = l;
    return MK_OK;
}

void mk_lbl_destroy(mk_lbl **lbl)
{
    if (!lbl || !*lbl) return;
    free((*lbl)->buf);
    free((*lbl)->scratch);
    free((*lbl)->pending);
    free((*lbl)->has_pending);
    free(*lbl);
    *lbl = NULL;
}

void mk_lbl_set_allreduce(mk_lbl *lbl, mk_lbl_allreduce_fn fn, void *ctx)
{
    lbl->allreduce = fn;
    lbl->allreduce_ctx = ctx;
}

mk_lbl_mode mk_lbl_mode_of(const mk_lbl *lbl) { return lbl->mode; }

void mk_lbl_reset(mk_lbl *lbl)
{
    memset(lbl->buf, 0, (size_t)lbl->layers * (lbl->experts + 1) * sizeof *lbl->buf);
    memset(lbl->has_pending, 0, (size_t)lbl->layers);
    lbl->have_exact = 0;
}

static void f_from_counts(const int64_t *c, int64_t ntokens, int E, int K, double *f)
{
    for (int i = 0; i < E; i++)
        f[i] = ntokens > 0 ? (double)c[i] / ((double)K * (double)ntokens) : 0.0;
}

int mk_lbl_record(mk_lbl *lbl, int layer, const int32_t *counts, long ntokens, double *f_micro)
{
    const int E = lbl->experts;
    if (layer < 0 || layer >= lbl->layers)
        return MK_FAIL(MK_ERR_INTERNAL, "lbl: layer %d out of range", layer);
    int64_t *mine = lbl->pending + (size_t)layer * (E + 1);
    for (int i = 0; i < E; i++) mine[i] = counts[i];
    mine[E] = ntokens;
    if (f_micro) f_from_counts(mine, ntokens, E, lbl->topk, f_micro);
    lbl->has_pending[layer] = 1;
    return MK_OK;
}

int mk_lbl_commit(mk_lbl *lbl)
{
    const size_t row = (size_t)lbl->experts + 1;
    if (lbl->mode == MK_LBL_GLOBAL) {
        /* One all-reduce of every recorded layer, packed, then added to the buffer. */
        size_t n = 0;
        for (int l = 0; l < lbl->layers; l++)
            if (lbl->has_pending[l]) memcpy(lbl->scratch + row * n++, lbl->pending + row * l, row * sizeof *lbl->scratch);
        if (n && lbl->allreduce) MK_CHECK(lbl->allreduce(lbl->allreduce_ctx, lbl->scratch, (int)(row * n)));
        n = 0;
        for (int l = 0; l < lbl->layers; l++) {
            if (!lbl->has_pending[l]) continue;
            for (size_t i = 0; i < row; i++) lbl->buf[row * l + i] += lbl->scratch[row * n + i];
            n++;
        }
    } else if (lbl->mode != MK_LBL_GLOBAL_EXACT) {
        for (int l = 0; l < lbl->layers; l++)
            if (lbl->has_pending[l]) memcpy(lbl->buf + row * l, lbl->pending + row * l, row * sizeof *lbl->buf);
    }
    memset(lbl->has_pending, 0, (size_t)lbl->layers);
    return MK_OK;
}

int mk_lbl_f(const mk_lbl *lbl, int layer, double *f)
{
    const int E = lbl->experts;
    if (layer < 0 || layer >= lbl->layers)
        return MK_FAIL(MK_ERR_INTERNAL, "lbl: layer %d out of range", layer);
    if (lbl->has_pending[layer])
        return MK_FAIL(MK_ERR_INTERNAL, "lbl: layer %d recorded but not committed", layer);
    if (lbl->mode == MK_LBL_GLOBAL_EXACT && !lbl->have_exact)
        return MK_FAIL(MK_ERR_INTERNAL, "lbl: global-exact scope used before its counting pass");
    const int64_t *b = lbl->buf + (size_t)layer * (E + 1);
    f_from_counts(b, b[E], E, lbl->topk, f);
    return MK_OK;
}

int mk_lbl_scope(mk_lbl *lbl, int layer, const int32_t *counts, long ntokens, double *f, double *f_micro)
{
    if (lbl->mode == MK_LBL_GLOBAL_EXACT && !lbl->have_exact)
        return MK_FAIL(MK_ERR_INTERNAL, "lbl: global-exact scope used before its counting pass");
    MK_CHECK(mk_lbl_record(lbl, layer, counts, ntokens, f_micro));
    MK_CHECK(mk_lbl_commit(lbl));
    return mk_lbl_f(lbl, layer, f);
}

int mk_lbl_set_exact(mk_lbl *lbl, const int64_t *counts, long ntokens)
{
    const int E = lbl->experts;
    for (int l = 0; l < lbl->layers; l++) {
        int64_t *b = lbl->buf + (size_t)l * (E + 1);
        memcpy(b, counts + (size_t)l * E, (size_t)E * sizeof *b);
        b[E] = ntokens;
    }
    lbl->have_exact = 1;
    return MK_OK;
}

double mk_lbl_value(const double *f, const double *psum, long ntokens, int experts)
{
    if (ntokens <= 0) return 0.0;
    double s = 0.0;
    for (int i = 0; i < experts; i++) s += f[i] * psum[i];
    return (double)experts * s / (double)ntokens;
}

double mk_lbl_maxvio(const int64_t *counts, int experts)
{
    double total = 0.0, max = 0.0;
    for (int i = 0; i < experts; i++) {
        total += (double)counts[i];
        if ((double)counts[i] > max) max = (double)counts[i];
    }
    if (total <= 0.0) return 0.0;
    double mean = total / experts;
    return (max - mean) / mean;
}
