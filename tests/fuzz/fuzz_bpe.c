/* fuzz_bpe.c - the BPE ranks file loader (lib/mk_bpe.c through lib/mk_tokenizer.c).
 *
 * Input: a tiktoken ranks file, optionally followed by a NUL byte and a text (a ranks file
 * cannot hold a NUL). Properties of a file that loads: the id is "bpe:" + its SHA-256, the
 * vocabulary is ranks + 1, decode(encode(text)) == text with every id inside the vocabulary
 * (the text, or without one the ranks file itself), and the file mk_bpe_save writes loads
 * back to the same tokens. */
#include "fuzz_common.h"

#include "mk_bpe.h"
#include "mk_error.h"
#include "mk_sha256.h"
#include "mk_tokenizer.h"

static void check_roundtrip(const mk_tokenizer *tok, const char *text, size_t len)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, olen = 0, ocap = 0;
    char *out = NULL;
    FUZZ_ASSERT(mk_tokenizer_encode(tok, text, len, &ids, &n, &cap) == MK_OK, "encode");
    for (size_t i = 0; i < n; i++)
        FUZZ_ASSERT(ids[i] >= 0 && ids[i] < mk_tokenizer_eod(tok), "id %d of %d ranks", ids[i], mk_tokenizer_eod(tok));
    FUZZ_ASSERT(mk_tokenizer_decode(tok, ids, n, &out, &olen, &ocap) == MK_OK, "decode");
    FUZZ_ASSERT(olen == len && (len == 0 || memcmp(out, text, len) == 0), "decode(encode(x)) != x");
    free(ids);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16) return 0;
    const uint8_t *nul = memchr(data, 0, size);
    size_t flen = nul ? (size_t)(nul - data) : size;
    char path[300], saved[300];
    fuzz_path(path, sizeof path, "tok.ranks");
    fuzz_path(saved, sizeof saved, "saved.ranks");
    fuzz_write(path, data, flen);

    mk_tokenizer *tok = NULL;
    int rc = mk_tokenizer_bpe_load(path, &tok);
    if (rc != MK_OK) {
        FUZZ_ASSERT(tok == NULL && (rc == MK_ERR_INPUT || rc == MK_ERR_NOMEM), "load failed with %d", rc);
        return 0;
    }
    char hex[65];
    mk_sha256_hex(data, flen, hex);
    char want[80];
    snprintf(want, sizeof want, "bpe:%s", hex);
    FUZZ_ASSERT(strcmp(mk_tokenizer_id(tok), want) == 0, "id %s", mk_tokenizer_id(tok));
    FUZZ_ASSERT(mk_tokenizer_vocab(tok) == mk_tokenizer_eod(tok) + 1 && mk_tokenizer_eod(tok) >= 256,
                "vocab %d eod %d", mk_tokenizer_vocab(tok), mk_tokenizer_eod(tok));
    if (nul) check_roundtrip(tok, (const char *)nul + 1, size - flen - 1);
    else check_roundtrip(tok, (const char *)data, size);

    FUZZ_ASSERT(mk_tokenizer_bpe_save(tok, saved) == MK_OK, "save");
    mk_tokenizer *back = NULL;
    FUZZ_ASSERT(mk_tokenizer_bpe_load(saved, &back) == MK_OK, "the saved ranks file does not load");
    FUZZ_ASSERT(mk_tokenizer_eod(back) == mk_tokenizer_eod(tok), "saved file has another size");
    int32_t eod = mk_tokenizer_eod(tok);
    for (int32_t r = 0; r < eod; r++) {
        char *a = NULL, *b = NULL;
        size_t al = 0, ac = 0, bl = 0, bc = 0;
        FUZZ_ASSERT(mk_tokenizer_decode(tok, &r, 1, &a, &al, &ac) == MK_OK &&
                    mk_tokenizer_decode(back, &r, 1, &b, &bl, &bc) == MK_OK, "decode rank");
        FUZZ_ASSERT(al == bl && memcmp(a, b, al) == 0, "rank %d differs after save", r);
        free(a);
        free(b);
    }
    mk_tokenizer_free(&back);
    mk_tokenizer_free(&tok);
    return 0;
}
