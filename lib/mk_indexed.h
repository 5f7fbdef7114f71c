/* mk_indexed.h - Megatron-LM indexed datasets (prefix.bin + prefix.idx), MMIDIDX version 1.
 *
 * .idx, little-endian, packed: magic "MMIDIDX\0\0" (9 bytes), uint64 version = 1, uint8 dtype
 * code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16), uint64
 * sequence_count S, uint64 document_count (D+1), int32 sequence_lengths[S], int64
 * sequence_pointers[S] (byte offsets into .bin), int64 document_indices[D+1] (0 first,
 * S last). .bin: the tokens, no header. moekit writes one sequence per document, tokens as
 * uint16 when the vocabulary is below 65500 and int32 otherwise (Megatron's rule), and reads
 * any file of that layout with integer dtype.
 */
#ifndef MK_INDEXED_H
#define MK_INDEXED_H

#include <stddef.h>
#include <stdint.h>

enum { MK_DTYPE_UINT8 = 1, MK_DTYPE_INT8 = 2, MK_DTYPE_INT16 = 3, MK_DTYPE_INT32 = 4,
       MK_DTYPE_INT64 = 5, MK_DTYPE_UINT16 = 8 };

/* Megatron's choice: uint16 for vocab < 65500, else int32. */
int mk_indexed_dtype_for_vocab(int vocab);
size_t mk_indexed_dtype_size(int dtype);    /* 0 for codes moekit cannot read */

/* --- writing ----------------------------------------------------------------------- */
typedef struct mk_indexed_writer mk_indexed_writer;

/* Create prefix.bin and prefix.idx under temporary names; nothing is visible at the final
 * names until mk_indexed_writer_finish. MK_ERR_USAGE if vocab does not fit dtype. */
int mk_indexed_writer_open(const char *prefix, int dtype, int vocab, mk_indexed_writer **out);
/* Append one document (one sequence). MK_ERR_INPUT for a token outside 0..vocab-1. */
int mk_indexed_writer_add(mk_indexed_writer *w, const int32_t *tokens, size_t n);
/* Bytes of .bin written so far (for shard size caps). */
uint64_t mk_indexed_writer_bytes(const mk_indexed_writer *w);
/* Write the .idx, fsync both, rename both into place. On success w is freed; on failure
 * nothing is left at the final names and w must still go to mk_indexed_writer_abort. */
int mk_indexed_writer_finish(mk_indexed_writer *w);
/* Abandon: remove the temporaries. Safe after a failed call; NULL is fine. */
void mk_indexed_writer_abort(mk_indexed_writer *w);

/* --- reading ----------------------------------------------------------------------- */
typedef struct mk_indexed mk_indexed;

/* Map prefix.idx and prefix.bin read-only and check them against each other: magic,
 * version, dtype, counts, contiguous sequences (pointer[i+1] = pointer[i] + bytes of i), lengths summing to .bin's size,
 * document_indices from 0 to S. Every failure is MK_ERR_INPUT naming the file and field. */
int mk_indexed_open(const char *prefix, mk_indexed **out);
void mk_indexed_close(mk_indexed **d);

int mk_indexed_dtype(const mk_indexed *d);
uint64_t mk_indexed_sequences(const mk_indexed *d);
uint64_t mk_indexed_documents(const mk_indexed *d);
uint64_t mk_indexed_tokens(const mk_indexed *d);            /* over all sequences */
uint64_t mk_indexed_seq_length(const mk_indexed *d, uint64_t i);
/* Largest token id in the file (computed once, at open). */
int64_t mk_indexed_max_token(const mk_indexed *d);
/* The .bin file's path, for messages. */
const char *mk_indexed_bin_path(const mk_indexed *d);

/* Copy n tokens starting at token offset `at` of the concatenation of all sequences into
 * out as int32 (sequences are contiguous in .bin, so this is one read). */
int mk_indexed_read(const mk_indexed *d, uint64_t at, size_t n, int32_t *out);

#endif
