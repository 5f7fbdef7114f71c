/* mk_shard.h - corpus -> dataset directory, the engine of moe-shard (DESIGN sections 6, 7).
 *
 * Output directory:
 *   manifest.json                  what is here: tokenizer, domains, documents, tokens, hashes
 *   tokenizer.ranks                the BPE vocabulary (tiktoken format), for bpe only
 *   <domain>/train_00000.bin|.idx  Megatron MMIDIDX v1, one sequence per document, each
 *   <domain>/val_00000.bin|.idx    document followed by the end-of-document token
 * A document goes to val when a hash of (domain, its bytes) falls below val_fraction, so
 * the split does not depend on order, rank count or duplicates. Everything is written under
 * OUT.tmp-<id> and renamed to OUT at the very end: an error leaves nothing behind.
 *
 * With several MPI ranks, every rank maps the inputs, rank r tokenizes documents
 * r, r+world, ..., and rank 0 writes them in input order: the output is byte-identical for
 * any rank count.
 */
#ifndef MK_SHARD_H
#define MK_SHARD_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "mk_corpus.h"

typedef struct mk_shard_domain {
    const char *name;
    const char **paths;
    int npaths;
} mk_shard_domain;

typedef struct mk_shard_opts {
    const mk_shard_domain *domains;
    int ndomains;
    const char *out_dir;
    const char *tokenizer;      /* "byte", or a tiktoken ranks file; ignored with bpe_train */
    int bpe_train;              /* > 0: train a BPE of this many ranks on the train split */
    double val_fraction;
    uint64_t shard_bytes;       /* cap on one .bin */
    mk_corpus_format text_format;
    const char *text_field;     /* JSONL field */
    int dtype;                  /* MK_DTYPE_UINT16 / MK_DTYPE_INT32, 0 = from the vocabulary */
    FILE *progress;             /* rank 0's progress lines; NULL = quiet */
} mk_shard_opts;

typedef struct mk_shard_result {
    uint64_t documents, tokens, input_bytes;
    double seconds;
} mk_shard_result;

/* Collective over comm. Returns the same status on every rank. */
int mk_shard_run(const mk_shard_opts *o, MPI_Comm comm, mk_shard_result *res);

#endif
