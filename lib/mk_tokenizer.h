/* mk_tokenizer.h - text <-> token ids: the built-in byte-level tokenizer and byte-level BPE.
 *
 * byte  token = byte value (0..255), end-of-document = 256, vocabulary 257.
 * bpe   GPT-2/tiktoken-style byte-level BPE: text is split into pre-tokens by a PCRE2 regular
 *       expression (the GPT-2 pattern by default), and each pre-token's bytes are merged by
 *       rank. The vocabulary is a tiktoken ranks file: one line per token,
 *       "base64(token bytes) rank", ranks 0..n-1 with the 256 single bytes among them, so
 *       tiktoken.Encoding(mergeable_ranks=load_tiktoken_bpe(path), pat_str=GPT-2 pattern)
 *       encodes the same ids. End-of-document is the id right after the ranks (n).
 * For both, decode(encode(x)) == x for every byte string x (not only valid UTF-8).
 */
#ifndef MK_TOKENIZER_H
#define MK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct mk_tokenizer mk_tokenizer;

/* The GPT-2 pre-tokenization pattern (PCRE2 syntax, UTF mode). */
extern const char *const MK_BPE_GPT2_PATTERN;

int mk_tokenizer_byte(mk_tokenizer **out);

/* Load a tiktoken ranks file. MK_ERR_INPUT naming the path and line for a malformed file
 * (bad base64, ranks not 0..n-1 in order, duplicate token, a single byte missing). */
int mk_tokenizer_bpe_load(const char *ranks_path, mk_tokenizer **out);

/* Train a BPE vocabulary of vocab_size ranks (>= 256; the end-of-document id comes on top)
 * on the given documents: pre-tokenize with the pattern, count pre-tokens, then repeatedly
 * merge the most frequent adjacent pair (ties broken by the smaller pair of token byte
 * strings, so the result is deterministic). */
int mk_tokenizer_bpe_train(const char *const *docs, const size_t *lens, size_t ndocs,
                           int vocab_size, mk_tokenizer **out);

/* Write the ranks file (tiktoken format) atomically (temp name, fsync, rename). */
int mk_tokenizer_bpe_save(const mk_tokenizer *tok, const char *path);

void mk_tokenizer_free(mk_tokenizer **tok);

/* "byte" or "bpe". */
const char *mk_tokenizer_kind(const mk_tokenizer *tok);
/* Ids 0..vocab-1, the end-of-document id included. */
int mk_tokenizer_vocab(const mk_tokenizer *tok);
int32_t mk_tokenizer_eod(const mk_tokenizer *tok);
/* A stable identity: "byte", or "bpe:" + hex sha256 of the ranks file's bytes. */
const char *mk_tokenizer_id(const mk_tokenizer *tok);

/* Encode len bytes of text (no end-of-document added). *ids is grown with realloc as
 * needed (*cap elements); *n gets the count. Thread-safe for one tokenizer used from
 * several threads (no hidden mutable state). */
int mk_tokenizer_encode(const mk_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n, size_t *cap);

/* Decode n ids into bytes (end-of-document decodes to nothing). *out grown like ids above.
 * MK_ERR_INPUT for an id outside the vocabulary. */
int mk_tokenizer_decode(const mk_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                        size_t *len, size_t *cap);

#endif
