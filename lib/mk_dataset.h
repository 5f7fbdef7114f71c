/* mk_dataset.h - training samples from moe-shard datasets and Megatron indexed datasets,
 * blended across domains (DESIGN sections 6 and 7).
 *
 * data.path lists sources separated by commas: a dataset directory made by moe-shard (its
 * manifest.json names the domains, their shards and the tokenizer), or NAME=PREFIX for an
 * existing Megatron dataset (PREFIX.bin/.idx; it becomes domain NAME).
 *
 * Global sample i (counted from the start of the run) is a pure function of (seed, i,
 * mixture): its domain is the one whose realised share lags its weight most
 * (argmax_d w_d (i+1) - count_d, ties to the lower index — Megatron's blending rule, which
 * keeps every share within one sample of its weight), and it is the count_d-th sample of
 * that domain: window (T+1 tokens at a multiple of T in the domain's train stream) number
 * perm_{seed, d, epoch}(count_d mod W_d), a keyed bijection, epoch = count_d / W_d. No
 * table is built, ranks agree without talking, and a checkpoint only stores how many
 * samples were consumed.
 */
#ifndef MK_DATASET_H
#define MK_DATASET_H

#include <stdint.h>

typedef struct mk_dataset_opts {
    const char *path;       /* data.path */
    const char *mixture;    /* natural | uniform | temperature:T | NAME:W,NAME:W,... */
    int repeat_cap;         /* most epochs of any domain's train split; 0 = no cap */
    int seq_len;            /* T */
    uint64_t seed;
    const char *tokenizer;  /* "" = the manifest's; "byte", "bpe:SHA256", or a ranks file */
    int model_vocab;        /* tokens must be below this */
} mk_dataset_opts;

typedef struct mk_dataset mk_dataset;

/* Open and check every source. MK_ERR_INPUT for unreadable or inconsistent files (named),
 * MK_ERR_USAGE for a bad mixture, duplicate domain, tokenizer mismatch, or a vocabulary
 * larger than the model's. */
int mk_dataset_open(const mk_dataset_opts *o, mk_dataset **out);
void mk_dataset_close(mk_dataset **d);

int mk_dataset_domains(const mk_dataset *d);
const char *mk_dataset_domain_name(const mk_dataset *d, int i);
double mk_dataset_domain_weight(const mk_dataset *d, int i);        /* normalised */
uint64_t mk_dataset_domain_tokens(const mk_dataset *d, int i, int val);
/* The tokenizer id of the data ("byte", "bpe:..."), or "unknown" for Megatron sources. */
const char *mk_dataset_tokenizer(const mk_dataset *d);

/* Samples first..first+count-1: tokens and targets [count, T], domain [count] (every token
 * of a sample belongs to its domain). Requests are fastest in increasing order (the blend
 * is replayed from sample 0 when a request goes backwards). MK_ERR_INPUT when a domain
 * would exceed repeat_cap epochs. */
int mk_dataset_samples(mk_dataset *d, uint64_t first, int count, int32_t *tokens,
                       int32_t *targets, int32_t *domain);

/* The global sample index of sequence b of micro-step g of `rank` in optimizer step `step`,
 * with B sequences per rank per micro-step and G micro-steps: each global batch is samples
 * step*G*world*B onwards, micro-step g is the next world*B of them, and rank r takes its B.
 * The global batch's contents thus depend on (seed, step, mixture) only. */
static inline uint64_t mk_sample_index(uint64_t step, int g, int rank, int world, int B, int G, int b)
{
    return (step * (uint64_t)G + (uint64_t)g) * (uint64_t)world * (uint64_t)B + (uint64_t)rank * B + (uint64_t)b;
}

/* Held-out split: number of windows of domain i, and windows first..first+count-1 in order. */
uint64_t mk_dataset_val_windows(const mk_dataset *d, int i);
int mk_dataset_val_samples(const mk_dataset *d, int i, uint64_t first, int count,
                           int32_t *tokens, int32_t *targets);

#endif
