/* mk_lbl.h - the balance scope of the load-balancing loss (DESIGN section 3).
 *
 * For one MoE layer LBL = E * sum_i f_i * P_i, f_i = c_i / (K * N_f) over the balance scope,
 * P_i the mean router probability over this rank's tokens of this micro-step. This module
 * owns the scope: which counts c and token count N_f make f.
 *   micro         c = this micro-batch's counts.
 *   global        c = counts of micro-steps 1..g of every data-parallel rank, kept in a buffer
 *                 that mk_lbl_reset() clears after each optimizer step.
 *   global-exact  c = counts of the whole global batch, supplied up front by a counting pass
 *                 (mk_lbl_set_exact).
 * The all-reduce over data-parallel ranks is a callback so this file does not depend on the
 * comms layer; with one process it is the identity.
 */
#ifndef MK_LBL_H
#define MK_LBL_H

#include <stdint.h>

#include "mk_config.h"

/* Sum counts[n] (int64) over every data-parallel rank, in place. */
typedef int (*mk_lbl_allreduce_fn)(void *ctx, int64_t *counts, int n);

typedef struct mk_lbl mk_lbl;

int mk_lbl_create(mk_lbl_mode mode, int layers, int experts, int topk, mk_lbl **out);
void mk_lbl_destroy(mk_lbl **lbl);
void mk_lbl_set_allreduce(mk_lbl *lbl, mk_lbl_allreduce_fn fn, void *ctx);
mk_lbl_mode mk_lbl_mode_of(const mk_lbl *lbl);

/* Start of an optimizer step: clear the buffer (global) and the exact counts. */
void mk_lbl_reset(mk_lbl *lbl);

/* A micro-step in two phases, so the global scope needs one all-reduce for all layers:
 * mk_lbl_record, once per layer, takes this rank's counts [E] (each token counted once per
 * expert among its top-K) and ntokens and writes the micro-batch's f_micro (may be NULL);
 * mk_lbl_commit then all-reduces every recorded layer at once and adds it to the buffer
 * (global); mk_lbl_f gives a layer's f of the scope afterwards. */
int mk_lbl_record(mk_lbl *lbl, int layer, const int32_t *counts, long ntokens, double *f_micro);
int mk_lbl_commit(mk_lbl *lbl);
int mk_lbl_f(const mk_lbl *lbl, int layer, double *f);

/* record + commit + f for one layer (the per-layer all-reduce of the paper's Alg. 1). */
int mk_lbl_scope(mk_lbl *lbl, int layer, const int32_t *counts, long ntokens,
                 double *f, double *f_micro);

/* global-exact: the whole global batch's counts [L, E] and tokens, all-reduced by caller. */
int mk_lbl_set_exact(mk_lbl *lbl, const int64_t *counts, long ntokens);

/* LBL = E * sum_i f_i * psum_i / ntokens. */
double mk_lbl_value(const double *f, const double *psum, long ntokens, int experts);

/* MaxVio = (max_i c_i - mean c) / mean c, 0 when there are no counts. */
double mk_lbl_maxvio(const int64_t *counts, int experts);

#endif
