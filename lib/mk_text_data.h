/* mk_text_data.h - training samples from one text file through the byte-level tokenizer.
 *
 * A stand-in for the dataset format of moe-shard: token = byte value (0..255), the model's
 * vocabulary must hold at least 256 tokens. Sample i (a global sample number, counted
 * from the start of the run) is T+1 consecutive bytes at an offset drawn from
 * (seed, i) alone, so the sample sequence does not depend on how many processes read it
 * or where a run was resumed.
 */
#ifndef MK_TEXT_DATA_H
#define MK_TEXT_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct mk_text_data mk_text_data;

/* Read path whole. MK_ERR_INPUT naming the path if it cannot be read or holds fewer than
 * seq_len + 2 bytes. */
int mk_text_data_open(const char *path, int seq_len, mk_text_data **out);
void mk_text_data_close(mk_text_data **d);
size_t mk_text_data_size(const mk_text_data *d);

/* Samples first..first+count-1 into tokens and targets [count, T] (targets = tokens shifted
 * by one). */
int mk_text_data_batch(const mk_text_data *d, uint64_t seed, uint64_t first, int count,
                       int32_t *tokens, int32_t *targets);

#endif
