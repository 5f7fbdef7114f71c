/* mk_model_impl.h - the model's private layout, shared by mk_model.c and mk_moe_ep.c.
 * Not installed; nothing outside the model uses it.
 */
#ifndef MK_MODEL_IMPL_H
#define MK_MODEL_IMPL_H

#include "mk_model.h"

/* Local experts per rank a layer can hold under expert parallelism. */
#define MK_EP_MAX_LOCAL 4096

/* Expert-row buffers of a layer under expert parallelism: xp a1 a3 hact y, dy dhact da1
 * da3 dxp (mk_moe_ep.c). */
#define EP_ROWBUFS 10

typedef enum {
    R_WTE, R_ATTN_NORM, R_QKV, R_ATTN_OUT, R_MLP_NORM, R_ROUTER, R_W1, R_W3, R_W2,
    R_SHARED_W1, R_SHARED_W3, R_SHARED_W2, R_FINAL_NORM, R_LM_HEAD
} tensor_role;

typedef struct layer_params {
    mk_real *attn_norm, *qkv, *attn_out, *mlp_norm, *router, *w1, *w3, *w2;
    mk_real *shared_w1, *shared_w3, *shared_w2;
} layer_params;

/* Named pointers into one block (parameters or gradients). */
typedef struct params_view {
    mk_real *wte, *final_norm, *lm_head;
    layer_params *layers;   /* [L] */
} params_view;

typedef struct layer_acts {
    mk_real *x_in;                      /* [N, D] residual stream into the layer */
    mk_real *ln1, *rstd1, *qkv, *att, *atty, *h, *ln2, *rstd2;
    void *ln2_op;                       /* ln2 in the backend's GEMM operand format (NULL:
                                         * the backend has no moe_input_forward) */
    mk_real *z, *probs, *lse, *gates, *psum;
    int32_t *topk, *counts, *offs, *row_slot, *slot_row;
    int32_t *bad;                       /* router logits not finite (flag), beside offs */
    int32_t *seqc;                      /* [B, E] choices of each expert in each sequence */
    mk_real *xp, *a1, *a3, *hact, *y;   /* [N*K, D|F] rows grouped by expert */
    mk_real *sa1, *sa3, *sh;            /* shared expert [N, Fs] */
    void *stats_host;                   /* host copy of the routing statistics block (offs,
                                         * bad, counts, psum, seqc, lse: one copy a layer) */
    int *offs_host;                     /* [E+1] in stats_host, sizes of the expert GEMMs */
    double *f, *f_micro;                /* [E] host: LBL f of the scope, and of the micro-batch */
    double *psum_h;                     /* [E] host: sum of router probabilities over tokens */
} layer_acts;

typedef struct scratch {
    int32_t *tokens, *targets;          /* [N] */
    mk_real *x_final, *lnf, *rstdf, *logits, *losses;
    mk_real *dresid, *dln, *dqkv, *datt, *datty, *dz, *dgates, *dxp, *dy, *dhact, *da1, *da3;
    mk_real *dsh, *dsa1, *dsa3, *lbl_ds;     /* lbl_ds [L, E]: every layer's, one copy */
} scratch;

/* Expert parallelism, per layer: who gets which token, and the buffers the all-to-alls
 * fill, kept from forward for backward. "send" rows are this rank's tokens going to a
 * destination rank (each token once per destination), "recv" rows are tokens that arrived
 * for this rank's experts. The plans are made by the backend (ep_send_plan, ep_recv_plan),
 * in its memory; the host reads only the row counts and the experts' offsets. */
typedef struct ep_layer {
    /* Expert rows [rows, D|F], kept from forward for backward: the layer's own activation
     * and the scratch buffers (sized for N * K rows, which expert parallelism leaves
     * unused) while they fit; beyond that, own[] (cap_rows rows), grown as needed. */
    size_t cap_rows;
    mk_real *own[EP_ROWBUFS];
    int offs[MK_EP_MAX_LOCAL + 1];          /* rows of each local expert (host) */
    int32_t *plan_h;            /* [ep + 1 + El + 2] host copy of plan_offs */
    int32_t *plan_offs;         /* [ep + 1] send rows per rank, then [El + 2] ep_recv_plan's offs */
    int32_t *row_tok;           /* [N * ep] token * ep + rank of each send row */
    int32_t *send_row_of;       /* [N * ep] send row of (token, destination) or -1 */
    mk_ep_rec *send_rec;        /* [N * ep, K] each send row's choices */
    int32_t *back_of;           /* [N, K] where choice t * K + j's record (and its gate
                                 * gradient, coming back) is: send row * K + j, or -1 */
    size_t *send_n, *recv_n;    /* rows per destination / source (host) */
    size_t R_send, R_recv;
    mk_ep_rec *recv_rec;                /* [N * ep, K] the arrived records */
    mk_real *recv_g;                    /* [N * ep, K] their gates */
    int32_t *row_slot, *slot_row;       /* [N * ep, K] recv expert rows <-> recv choices u * K + j */
    mk_real *dg_recv;                   /* [N * ep, K] gate gradients going back */
} ep_layer;

/* The exchanges' row buffers, used within one layer's forward or backward only: all layers
 * share them, sized once for the most rows a micro-batch can make, so that a step never
 * allocates (a device allocation waits for the GPU). */
typedef struct ep_io {
    mk_real *send_x, *back;     /* [N * min(ep, K), D] rows out, rows back home */
    mk_real *recv_x, *partial;  /* [N * ep, D] rows arrived, rows going back */
    mk_real *dg_back;           /* [N * min(ep, K), K] gate gradients back home */
    int own_rows;               /* MOEKIT_EP_OWN_ROWS=1: expert rows always in the layers'
                                 * own buffers (the path of a skewed routing; tests) */
} ep_io;

struct mk_model {
    mk_config cfg;
    mk_backend *be;
    int V, D, L, H, E, K, F, Fs, T, Bmax;
    int El, ep, ep_rank;        /* local experts, expert-parallel size and rank */
    double a2a_seconds;         /* wall time inside expert-parallel all-to-alls */
    const mk_comm *ep_comm;
    struct mk_devcomm *ep_dev;  /* the same group for backend buffers (NCCL on CUDA) */
    ep_layer *epl;              /* [L] when ep > 1 */
    ep_io epio;                 /* when ep > 1 */
    size_t ntensors;
    mk_tensor *tensors;
    tensor_role *roles;
    size_t nparams;
    mk_real *params, *grads, *adam_m, *adam_v;
    params_view pv, gv;
    layer_acts *acts;                   /* [L] */
    scratch s;
    void *arena;                        /* backend memory holding every activation buffer */
    /* host side */
    double *lbl_host;                   /* [L] */
    int32_t *counts_host;               /* [L, E] */
    mk_real *host_n;                    /* [N] losses */
    mk_real *lbl_ds_host;               /* [L, E] */
    int32_t *targets_host;              /* [N] last forward's targets */
    int last_B;                         /* sequences in the last forward, 0 = none */
    int last_train;
    mk_layer_grads_fn layer_grads;      /* mk_model_set_layer_grads_hook; NULL: none */
    void *layer_grads_ctx;
    long step;                          /* optimizer step (1-based) for messages; 0 = none */
};


/* Expert FFN over rows grouped by (local) expert: y = (silu(x w1) * (x w3)) w2, the rows
 * gathered from tokens as x says into xp (kept, with a1, a3, hact, for the backward). */
int mk_expert_ffn_forward(mk_model *m, const layer_params *p, const int *offs, int nexp, int rows,
                          const mk_rows_gather *x, mk_real *xp, mk_real *a1, mk_real *a3,
                          mk_real *hact, mk_real *y);
/* The combine's backward: dgates, and where the backend has combine_backward, the expert
 * FFN's output-gradient rows in dy as well (dout->rows_op then points at them). */
int mk_combine_backward(mk_model *m, mk_real *dgates, mk_real *dy, mk_rows_gather *dout, const mk_real *y,
                        const int32_t *slot_row);
/* Its backward from the output gradient rows gathered as dout says (into the scratch dy):
 * weight gradients accumulate into g, dxp is written. */
int mk_expert_ffn_backward(mk_model *m, const layer_params *p, layer_params *g, const int *offs,
                           int nexp, int rows, const mk_rows_gather *dout, mk_real *dy,
                           const mk_real *xp, const mk_real *a1, const mk_real *a3,
                           const mk_real *hact, mk_real *dhact, mk_real *da1, mk_real *da3,
                           mk_real *dxp);

/* Expert parallelism (mk_moe_ep.c). Forward: from the layer's routing (topk, gates,
 * slot_row of route_plan over all E experts), send tokens to the ranks of their experts,
 * run the local experts, bring the weighted outputs back and add them to out.
 * Backward: dresid in, gate gradients into m->s.dgates and input gradients added to
 * m->s.dln. */
int mk_moe_ep_forward(mk_model *m, int l, const layer_params *p, layer_acts *a, int N, mk_real *out);
int mk_moe_ep_backward(mk_model *m, int l, const layer_params *p, layer_params *g, int N);
void mk_moe_ep_free(mk_model *m, ep_layer *e);
void mk_moe_ep_io_free(mk_model *m);

#endif
