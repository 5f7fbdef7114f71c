/* mk_model.h - the MoE transformer of DESIGN section 2, written once over mk_backend.
 *
 * A model owns its parameters, gradients and AdamW moments, each one allocation in backend
 * memory laid out by the same tensor table (mk_model_tensor), and the activations of one
 * micro-batch of B = train.micro_batch sequences of T = model.seq_len tokens.
 *
 * A training micro-step is mk_model_forward() then mk_model_backward(); gradients
 * accumulate across micro-steps until mk_model_zero_grad(). The loss that backward
 * differentiates is
 *     ce_scale * sum_n CE_n
 *   + aux_scale * sum_l ( lbl.coeff * LBL_l(f) + lbl.micro_coeff * LBL_l(f_micro)
 *                         + router.zloss_coeff * mean_n lse_n^2 )
 * where the caller picks ce_scale (1 / target tokens of the global batch) and aux_scale
 * (1 / grad_accum), and f comes from the LBL scope of lbl.mode (mk_lbl.h).
 */
#ifndef MK_MODEL_H
#define MK_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "mk_backend.h"
#include "mk_comm.h"
#include "mk_config.h"
#include "mk_lbl.h"

#define MK_TENSOR_NAME_MAX 48

/* One parameter tensor: name as in DESIGN section 6, global shape, place in the blocks. */
typedef struct mk_tensor {
    char name[MK_TENSOR_NAME_MAX];
    int ndim;
    int shape[3];
    size_t numel;
    size_t offset;      /* elements from the start of the parameter block */
    int decay;          /* AdamW weight decay applies (not to norms) */
    int layer;          /* layer index, -1 for wte, final_norm, lm_head */
    int expert;         /* 1 when dim 0 is the expert dimension (w1, w3, w2) */
    int dim0_offset;    /* expert tensors under expert parallelism hold global experts */
    int dim0_global;    /*   dim0_offset .. dim0_offset + shape[0] - 1 of dim0_global */
} mk_tensor;

/* What one forward pass reports (host memory, owned by the model). */
typedef struct mk_forward_stats {
    double ce_sum;          /* sum of CE over target tokens of this micro-batch */
    long targets;           /* target tokens counted (targets >= 0) */
    double zloss;           /* sum over layers of mean_n lse_n^2 */
    const double *lbl;      /* [L] LBL_l with the scope f of lbl.mode (micro f for none) */
    const int32_t *counts;  /* [L, E] tokens that chose each expert in this micro-batch */
    long dropped;           /* routing choices dropped by the capacity factor */
} mk_forward_stats;

typedef struct mk_model mk_model;

/* Build a model of cfg's shape on be, with activations for cfg->train.micro_batch
 * sequences. Parameters start at zero: call mk_model_init or load a checkpoint. */
int mk_model_create(const mk_config *cfg, mk_backend *be, mk_model **out);
/* The same with expert parallelism: ep is the expert-parallel group (size parallel.ep);
 * this rank holds experts [r E/ep, (r+1) E/ep) of every layer, r = its rank in ep, and
 * tokens travel to their experts and back by all-to-all (each token once per destination
 * rank). ep may be NULL when parallel.ep = 1. */
int mk_model_create_ep(const mk_config *cfg, mk_backend *be, const mk_comm *ep, mk_model **out);
void mk_model_destroy(mk_model **m);

/* DESIGN initialisation: normal(0, 0.02), attn_out and w2 scaled by 1/sqrt(2L), norms 1.
 * A pure function of seed. */
int mk_model_init(mk_model *m, unsigned long seed);

size_t mk_model_tensor_count(const mk_model *m);
const mk_tensor *mk_model_tensor(const mk_model *m, size_t i);
/* Index of the tensor called name; MK_ERR_USAGE naming it if there is none. */
int mk_model_find(const mk_model *m, const char *name, size_t *idx);
size_t mk_model_param_count(const mk_model *m);
/* Active parameters per token (non-routed + K of E experts), for FLOP counting. */
size_t mk_model_active_param_count(const mk_model *m);

/* Backend pointers to the blocks (numel = mk_model_param_count). */
/* Training FLOPs per token as Megatron-LM counts them (num_floating_point_operations):
 * 6 x the active matmul parameters (qkv, attn_out, K experts' SwiGLU, the shared expert,
 * the logits D x V) plus causal attention 6 T D per layer; the router and recomputation
 * are not counted. MFU = tokens/s x this / (GPUs x peak). */
double mk_model_flops_per_token(const mk_model *m);

mk_real *mk_model_params(mk_model *m);
mk_real *mk_model_grads(mk_model *m);
mk_real *mk_model_adam_m(mk_model *m);
mk_real *mk_model_adam_v(mk_model *m);

/* Forward one micro-batch: tokens and targets are host int32 [B, T] with B <= micro_batch;
 * a target < 0 is ignored. lbl supplies the scope of f (it may be NULL for lbl.mode none
 * and evaluation). train != 0 keeps what backward needs. */
int mk_model_forward(mk_model *m, const int32_t *tokens_host, const int32_t *targets_host, int B,
                     mk_lbl *lbl, int train, mk_forward_stats *stats);

/* Backward of the last forward (see the loss above); gradients accumulate. */
int mk_model_backward(mk_model *m, double ce_scale, double aux_scale);

/* Called by mk_model_backward as soon as the gradients of tensors i0..i1-1 (neighbours in
 * the tensor table, all of layer `layer`) are complete for this backward (queued on the
 * backend, before the rest of the backward runs), so that a trainer can start summing them
 * over ranks meanwhile. Twice per layer, in backward order: its MoE block's tensors
 * (mlp_norm, router, experts, shared expert) once that block's backward is queued, then
 * its attention block's (attn_norm, qkv, attn_out). NULL (the default) turns it off; an
 * error it returns ends the backward. */
typedef int (*mk_layer_grads_fn)(void *ctx, int layer, size_t i0, size_t i1);
void mk_model_set_layer_grads_hook(mk_model *m, mk_layer_grads_fn fn, void *ctx);

int mk_model_zero_grad(mk_model *m);

/* Top-k choices of layer l from the last forward: host-readable copy, [B*T, K]. */
int mk_model_topk_host(mk_model *m, int layer, int32_t *out_host);

/* [B, E] host counts of layer l from the last forward: row b counts how many of sequence
 * b's T x K choices picked each expert (the forward copied them with the routing
 * statistics); NULL before a forward or for a layer out of range. */
const int32_t *mk_model_sequence_counts(const mk_model *m, int layer);

/* Seconds spent in expert-parallel all-to-alls since the model was made (0 with ep = 1). */
double mk_model_a2a_seconds(const mk_model *m);

/* The optimizer step (1-based) that the next forward belongs to, for its NaN/Inf messages;
 * 0 (the default) for passes outside training. */
void mk_model_set_step(mk_model *m, long step);

const mk_config *mk_model_config(const mk_model *m);
mk_backend *mk_model_backend(mk_model *m);

#endif
