/* mk_bpe.h - byte-level BPE behind mk_tokenizer.h (private to lib/ and its tests).
 *
 * An mk_bpe holds the ranks (token bytes, index = rank), a hash table from token bytes to
 * rank, and the compiled GPT-2 pre-tokenization pattern. Nothing in it changes after
 * load/train, so encode may run from several threads on one mk_bpe at once.
 *
 * Pre-tokenization of arbitrary bytes: tiktoken takes a Python str, so it never sees
 * invalid UTF-8. Here the input is split into maximal valid-UTF-8 runs and single invalid
 * bytes; the pattern runs on each valid run by itself (a run's end is the end of the
 * subject for the pattern's lookahead), and every invalid byte is a pre-token of its own,
 * which encodes to its single-byte token. So decode(encode(x)) == x for every byte string,
 * and for valid UTF-8 the ids equal tiktoken's, except where PCRE2's Unicode tables differ
 * from those of tiktoken's Rust regex engine: U+180E (PCRE2's \s includes it as a
 * horizontal space, Unicode's White_Space no longer does) and characters assigned after the
 * Unicode version of the installed PCRE2 (14.0 in PCRE2 10.42; tiktoken 0.14 knows 16.0).
 * Over every code point assigned in Unicode 14.0, U+180E is the only difference.
 */
#ifndef MK_BPE_H
#define MK_BPE_H

#include <stddef.h>
#include <stdint.h>

typedef struct mk_bpe mk_bpe;

/* Load and strictly validate a tiktoken ranks file (MK_ERR_INPUT naming path:line). */
int mk_bpe_load(const char *path, mk_bpe **out);

/* Train vocab_size ranks (>= 256). When the documents run out of pairs to merge before
 * vocab_size, training stops there: the vocabulary is smaller (mk_bpe_ranks says how big). */
int mk_bpe_train(const char *const *docs, const size_t *lens, size_t ndocs, int vocab_size,
                 mk_bpe **out);

/* Write the ranks file atomically: path.tmp, fflush, fsync, rename, fsync of the directory. */
int mk_bpe_save(const mk_bpe *b, const char *path);

void mk_bpe_free(mk_bpe **b);

/* Number of ranks n (ids 0..n-1). */
int32_t mk_bpe_ranks(const mk_bpe *b);

/* Lowercase hex SHA-256 (64 characters) of the ranks file's bytes (for a trained mk_bpe,
 * of the bytes mk_bpe_save writes). */
const char *mk_bpe_sha256_hex(const mk_bpe *b);

/* Encode like mk_tokenizer_encode (overwrites *ids from 0; grows *ids / *cap). */
int mk_bpe_encode(const mk_bpe *b, const char *text, size_t len, int32_t **ids, size_t *n,
                  size_t *cap);

/* The bytes of token rank (0 <= rank < mk_bpe_ranks). */
const unsigned char *mk_bpe_token(const mk_bpe *b, int32_t rank, size_t *len);

/* Grow *ids (realloc) so it holds at least need elements; *cap is updated. Shared by the
 * byte and BPE encoders (defined in mk_tokenizer.c). */
int mk_ids_reserve(int32_t **ids, size_t *cap, size_t need);

#endif
