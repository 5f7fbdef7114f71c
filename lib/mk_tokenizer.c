/* mk_tokenizer.c - the tokenizer interface of mk_tokenizer.h: the byte-level tokenizer,
 * and dispatch to the BPE of mk_bpe.c. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_bpe.h"
#include "mk_error.h"

#define BYTE_EOD 256

struct mk_tokenizer {
    mk_bpe *bpe; /* NULL for the byte-level tokenizer */
    int32_t eod; /* also the number of ordinary ids */
    char id[4 + 64 + 1];
};

static int tokenizer_new(mk_bpe *bpe, mk_tokenizer **out)
{
    mk_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return MK_FAIL(MK_ERR_NOMEM, "out of memory for a tokenizer");
    t->bpe = bpe;
    if (bpe) {
        t->eod = mk_bpe_ranks(bpe);
        snprintf(t->id, sizeof t->id, "bpe:%s", mk_bpe_sha256_hex(bpe));
    } else {
        t->eod = BYTE_EOD;
        snprintf(t->id, sizeof t->id, "byte");
    }
    *out = t;
    return MK_OK;
}

/* Wrap a fresh mk_bpe; it is freed if the wrapper cannot be made. */
static int wrap_bpe(int rc, mk_bpe *bpe, mk_tokenizer **out)
{
    MK_CHECK(rc);
    rc = tokenizer_new(bpe, out);
    if (rc != MK_OK) mk_bpe_free(&bpe);
    return rc;
}

int mk_tokenizer_byte(mk_tokenizer **out)
{
    *out = NULL;
    return tokenizer_new(NULL, out);
}

int mk_tokenizer_bpe_load(const char *ranks_path, mk_tokenizer **out)
{
    *out = NULL;
    mk_bpe *bpe = NULL;
    int rc = mk_bpe_load(ranks_path, &bpe);
    return wrap_bpe(rc, bpe, out);
}

int mk_tokenizer_bpe_train(const char *const *docs, const size_t *lens, size_t ndocs,
                           int vocab_size, mk_tokenizer **out)
{
    *out = NULL;
    mk_bpe *bpe = NULL;
    int rc = mk_bpe_train(docs, lens, ndocs, vocab_size, &bpe);
    return wrap_bpe(rc, bpe, out);
}

int mk_tokenizer_bpe_save(const mk_tokenizer *tok, const char *path)
{
    if (!tok->bpe)
        return MK_FAIL(MK_ERR_USAGE, "%s: the byte tokenizer has no ranks file to save", path);
    return mk_bpe_save(tok->bpe, path);
}

void mk_tokenizer_free(mk_tokenizer **tok)
{
    if (!tok || !*tok) return;
    mk_bpe_free(&(*tok)->bpe);
    free(*tok);
    *tok = NULL;
}

const char *mk_tokenizer_kind(const mk_tokenizer *tok) { return tok->bpe ? "bpe" : "byte"; }

int mk_tokenizer_vocab(const mk_tokenizer *tok) { return (int)tok->eod + 1; }

int32_t mk_tokenizer_eod(const mk_tokenizer *tok) { return tok->eod; }

const char *mk_tokenizer_id(const mk_tokenizer *tok) { return tok->id; }

int mk_ids_reserve(int32_t **ids, size_t *cap, size_t need)
{
    if (need <= *cap && *ids) return MK_OK;
    size_t c = *cap > 256 ? *cap : 256;
    while (c < need) c *= 2;
    if (c > SIZE_MAX / sizeof **ids)
        return MK_FAIL(MK_ERR_NOMEM, "%zu token ids overflow the address space", c);
    int32_t *p = realloc(*ids, c * sizeof *p);
    if (!p) return MK_FAIL(MK_ERR_NOMEM, "out of memory for %zu token ids", c);
    *ids = p;
    *cap = c;
    return MK_OK;
}

static int bytes_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap && *buf) return MK_OK;
    size_t c = *cap > 256 ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 2) return MK_FAIL(MK_ERR_NOMEM, "%zu bytes overflow", need);
        c *= 2;
    }
    char *p = realloc(*buf, c);
    if (!p) return MK_FAIL(MK_ERR_NOMEM, "out of memory for %zu decoded bytes", c);
    *buf = p;
    *cap = c;
    return MK_OK;
}

int mk_tokenizer_encode(const mk_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n, size_t *cap)
{
    *n = 0;
    if (tok->bpe) return mk_bpe_encode(tok->bpe, text, len, ids, n, cap);
    MK_CHECK(mk_ids_reserve(ids, cap, len));
    for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
    *n = len;
    return MK_OK;
}

int mk_tokenizer_decode(const mk_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                        size_t *len, size_t *cap)
{
    *len = 0;
    /* One pass to size and check, so a bad id leaves *len at 0 and *out untouched. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] > tok->eod)
            return MK_FAIL(MK_ERR_INPUT, "token id %ld at position %zu is outside the "
                           "vocabulary of %d (tokenizer %s)", (long)ids[i], i,
                           mk_tokenizer_vocab(tok), tok->id);
        if (ids[i] == tok->eod) continue;
        size_t k = 1;
        if (tok->bpe) mk_bpe_token(tok->bpe, ids[i], &k);
        total += k;
    }
    MK_CHECK(bytes_reserve(out, cap, total));
    char *p = *out;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == tok->eod) continue;
        if (!tok->bpe) {
            *p++ = (char)(unsigned char)ids[i];
            continue;
        }
        size_t k;
        const unsigned char *b = mk_bpe_token(tok->bpe, ids[i], &k);
        memcpy(p, b, k);
        p += k;
    }
    *len = total;
    return MK_OK;
}
