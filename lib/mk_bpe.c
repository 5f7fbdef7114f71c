/* mk_bpe.c - byte-level BPE: tiktoken ranks files, training, encoding (see mk_bpe.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_bpe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "mk_error.h"
#include "mk_fs.h"
#include "mk_sha256.h"
#include "mk_tokenizer.h"

const char *const MK_BPE_GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Ranks are stored as uint32 while merging; no token has this one. */
#define NO_RANK UINT32_MAX
/* The largest rank count: the end-of-document id n must still fit an int32_t. */
#define MAX_RANKS (INT32_MAX - 1)

/* ------------------------------------------------------------------------------- base64 */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }

static void b64_encode(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        *out++ = b64_alphabet[v >> 18 & 63];
        *out++ = b64_alphabet[v >> 12 & 63];
        *out++ = i + 1 < n ? b64_alphabet[v >> 6 & 63] : '=';
        *out++ = i + 2 < n ? b64_alphabet[v & 63] : '=';
    }
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict: a multiple of 4 characters, '=' only as the last one or two, and the unused bits
 * zero, so every token has exactly one spelling and a loaded file re-saves byte-identically
 * (its id, the hash of those bytes, survives a save). Returns the decoded length, or -1. */
static long b64_decode(const char *in, size_t n, unsigned char *out)
{
    if (n == 0 || n % 4) return -1;
    size_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    long m = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int last = i + 4 == n;
        for (int j = 0; j < 4; j++) {
            int quiet = last && j >= 4 - (int)pad;
            v[j] = quiet ? 0 : b64_value((unsigned char)in[i + j]);
            if (v[j] < 0) return -1;
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | v[3];
        out[m++] = (unsigned char)(x >> 16);
        if (!last || pad < 2) out[m++] = (unsigned char)(x >> 8);
        if (!last || pad < 1) out[m++] = (unsigned char)x;
        if (last && (pad == 1 ? (x & 0xff) : pad == 2 ? (x & 0xffff) : 0)) return -1;
    }
    return m;
}

/* --------------------------------------------------------------- interned byte strings */
/* A table of distinct byte strings numbered in insertion order (for the vocabulary, the
 * number is the rank) with an open-addressing hash index over them. */

typedef struct {
    uint32_t hash; /* 32 bits of the string's hash: most probes end without a memcmp */
    int32_t idx;   /* -1: empty */
} strtab_slot;

typedef struct {
    unsigned char *bytes; /* string i is bytes[off[i] .. off[i+1]) */
    size_t nbytes, capbytes;
    size_t *off;
    int32_t n;
    size_t cap;
    strtab_slot *slots; /* power-of-two size, at most half full */
    size_t nslots;
} strtab;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Eight bytes at a time (the tail byte by byte: most tokens are short, and a
 * variable-length memcpy is a call); the value only has to be stable within one process. */
static uint32_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = mix64(h ^ v);
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    h = mix64(h ^ v ^ 0xff);
    return (uint32_t)(h ^ h >> 32);
}

static const unsigned char *strtab_get(const strtab *t, int32_t i, size_t *n)
{
    *n = t->off[i + 1] - t->off[i];
    return t->bytes + t->off[i];
}

static int32_t strtab_find(const strtab *t, const unsigned char *p, size_t n, uint32_t h)
{
    if (!t->nslots) return -1;
    size_t mask = t->nslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const strtab_slot *s = &t->slots[i];
        if (s->idx < 0) return -1;
        if (s->hash == h && t->off[s->idx + 1] - t->off[s->idx] == n &&
            memcmp(t->bytes + t->off[s->idx], p, n) == 0)
            return s->idx;
    }
}

static void strtab_place(strtab_slot *slots, size_t nslots, uint32_t h, int32_t idx)
{
    size_t i = h & (nslots - 1);
    while (slots[i].idx >= 0) i = (i + 1) & (nslots - 1);
    slots[i].hash = h;
    slots[i].idx = idx;
}

static int strtab_rehash(strtab *t, size_t nslots)
{
    strtab_slot *s = malloc(nslots * sizeof *s);
    if (!s) return MK_FAIL(MK_ERR_NOMEM, "out of memory for a %zu-slot hash table", nslots);
    for (size_t i = 0; i < nslots; i++) s[i].idx = -1;
    for (size_t i = 0; i < t->nslots; i++)
        if (t->slots[i].idx >= 0) strtab_place(s, nslots, t->slots[i].hash, t->slots[i].idx);
    free(t->slots);
    t->slots = s;
    t->nslots = nslots;
    return MK_OK;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem, const char *what)
{
    if (need <= *cap && *p) return MK_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need && c <= SIZE_MAX / 2) c *= 2;
    if (c < need || c > SIZE_MAX / elem)
        return MK_FAIL(MK_ERR_NOMEM, "%s: %zu elements overflow", what, need);
    void *q = realloc(*p, c * elem);
    if (!q) return MK_FAIL(MK_ERR_NOMEM, "out of memory for %zu %s", c, what);
    *p = q;
    *cap = c;
    return MK_OK;
}

/* Append a string the caller knows is absent; *idx gets its number. */
static int strtab_add(strtab *t, const unsigned char *p, size_t n, uint32_t h, int32_t *idx)
{
    if (t->n >= MAX_RANKS) return MK_FAIL(MK_ERR_INPUT, "more than %d distinct strings", MAX_RANKS);
    if ((size_t)(t->n + 1) * 2 > t->nslots)
        MK_CHECK(strtab_rehash(t, t->nslots ? t->nslots * 2 : 1024));
    MK_CHECK(grow((void **)&t->off, &t->cap, (size_t)t->n + 2, sizeof *t->off, "string offsets"));
    MK_CHECK(grow((void **)&t->bytes, &t->capbytes, t->nbytes + n, 1, "string bytes"));
    if (t->n == 0) t->off[0] = 0;
    memcpy(t->bytes + t->nbytes, p, n);
    t->nbytes += n;
    t->off[t->n + 1] = t->nbytes;
    strtab_place(t->slots, t->nslots, h, t->n);
    *idx = t->n++;
    return MK_OK;
}

static void strtab_free(strtab *t)
{
    free(t->bytes);
    free(t->off);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* --------------------------------------------------------------------- the BPE object */

struct mk_bpe {
    strtab tok;              /* index = rank */
    uint32_t byte_rank[256]; /* the single bytes' ranks, NO_RANK where missing */
    uint32_t *pair_rank;     /* [256 * 256]: ranks of the two-byte strings, or NO_RANK */
    pcre2_code *re;          /* GPT-2 pattern; read-only once compiled, so shared by threads */
    char sha_hex[65];
};

static int bpe_new(mk_bpe **out)
{
    *out = NULL;
    mk_bpe *b = calloc(1, sizeof *b);
    if (!b) return MK_FAIL(MK_ERR_NOMEM, "out of memory for a BPE tokenizer");
    int err;
    PCRE2_SIZE at;
    b->re = pcre2_compile((PCRE2_SPTR)MK_BPE_GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP, &err, &at, NULL);
    if (!b->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        free(b);
        return MK_FAIL(MK_ERR_INTERNAL, "PCRE2 cannot compile the GPT-2 pattern at offset %zu: %s",
                       (size_t)at, (const char *)msg);
    }
    /* JIT is only a speed-up: without it (PCRE2 built without JIT, no executable memory)
     * pcre2_match interprets the same pattern with the same results. */
    (void)pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE);
    *out = b;
    return MK_OK;
}

void mk_bpe_free(mk_bpe **b)
{
    if (!b || !*b) return;
    strtab_free(&(*b)->tok);
    free((*b)->pair_rank);
    pcre2_code_free((*b)->re);
    free(*b);
    *b = NULL;
}

int32_t mk_bpe_ranks(const mk_bpe *b) { return b->tok.n; }

const char *mk_bpe_sha256_hex(const mk_bpe *b) { return b->sha_hex; }

const unsigned char *mk_bpe_token(const mk_bpe *b, int32_t rank, size_t *len)
{
    return strtab_get(&b->tok, rank, len);
}

static uint32_t rank_of(const strtab *t, const unsigned char *p, size_t n)
{
    int32_t r = strtab_find(t, p, n, hash_bytes(p, n));
    return r < 0 ? NO_RANK : (uint32_t)r;
}

/* Fill byte_rank and pair_rank once the ranks are complete: merging starts from single
 * bytes and their adjacent pairs, and tables save a hash lookup for each (most of the
 * lookups of encoding). */
static int index_short(mk_bpe *b)
{
    b->pair_rank = malloc(256 * 256 * sizeof *b->pair_rank);
    if (!b->pair_rank) return MK_FAIL(MK_ERR_NOMEM, "out of memory for the pair table");
    for (int c = 0; c < 256; c++) {
        unsigned char byte = (unsigned char)c;
        b->byte_rank[c] = rank_of(&b->tok, &byte, 1);
    }
    for (int c = 0; c < 256 * 256; c++) {
        unsigned char two[2] = {(unsigned char)(c >> 8), (unsigned char)c};
        b->pair_rank[c] = rank_of(&b->tok, two, 2);
    }
    return MK_OK;
}

static uint32_t pair_rank_at(const mk_bpe *b, const unsigned char *p)
{
    return b->pair_rank[p[0] << 8 | p[1]];
}

/* The ranks file's bytes: "base64 rank\n" per rank, in rank order. */
static int bpe_serialize(const mk_bpe *b, char **out, size_t *outlen)
{
    size_t total = 0;
    for (int32_t r = 0; r < b->tok.n; r++) {
        size_t n;
        strtab_get(&b->tok, r, &n);
        total += b64_encoded_len(n) + 13; /* space, up to 10 digits, newline */
    }
    char *buf = malloc(total + 1);
    if (!buf) return MK_FAIL(MK_ERR_NOMEM, "out of memory for a %zu-byte ranks file", total);
    size_t len = 0;
    for (int32_t r = 0; r < b->tok.n; r++) {
        size_t n;
        const unsigned char *p = strtab_get(&b->tok, r, &n);
        b64_encode(p, n, buf + len);
        len += b64_encoded_len(n);
        len += (size_t)snprintf(buf + len, total + 1 - len, " %d\n", (int)r);
    }
    *out = buf;
    *outlen = len;
    return MK_OK;
}

/* --------------------------------------------------------------------- pre-tokenizing */

typedef int (*piece_fn)(void *ctx, const unsigned char *p, size_t n);

/* Length of the well-formed UTF-8 character at p (Unicode table 3-7: no overlongs, no
 * surrogates, nothing above U+10FFFF, which is what PCRE2's own UTF check accepts), or 0. */
static size_t utf8_char_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    return len;
}

static size_t utf8_valid_prefix(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_char_len(p + i, n - i);
        if (!k) break;
        i += k;
    }
    return i;
}

/* Split one valid UTF-8 run by the pattern. The GPT-2 pattern matches every character
 * somewhere, so gaps and empty matches cannot happen; they are still passed on as pieces
 * so that no byte is ever dropped (tiktoken would drop gap bytes). */
static int split_run(const mk_bpe *b, pcre2_match_data *md, const unsigned char *p, size_t n,
                     piece_fn fn, void *ctx)
{
    size_t pos = 0;
    while (pos < n) {
        int rc = pcre2_match(b->re, p, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return fn(ctx, p + pos, n - pos);
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return MK_FAIL(MK_ERR_INTERNAL, "PCRE2 match failed at byte %zu of a %zu-byte run: %s",
                           pos, n, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s > pos) MK_CHECK(fn(ctx, p + pos, s - pos));
        if (e == s) e = s + utf8_char_len(p + s, n - s);
        MK_CHECK(fn(ctx, p + s, e - s));
        pos = e;
    }
    return MK_OK;
}

/* Valid runs go to the pattern; each invalid byte is a piece of its own (see mk_bpe.h). */
static int pretokenize(const mk_bpe *b, pcre2_match_data *md, const unsigned char *p, size_t n,
                       piece_fn fn, void *ctx)
{
    size_t i = 0;
    while (i < n) {
        size_t run = utf8_valid_prefix(p + i, n - i);
        if (run) MK_CHECK(split_run(b, md, p + i, run, fn, ctx));
        i += run;
        if (i < n) MK_CHECK(fn(ctx, p + i++, 1));
    }
    return MK_OK;
}

static int match_data_new(const mk_bpe *b, pcre2_match_data **md)
{
    *md = pcre2_match_data_create_from_pattern(b->re, NULL);
    return *md ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "out of memory for PCRE2 match data");
}

/* ----------------------------------------------------------------------------- encoding */
/* tiktoken's _byte_pair_merge: parts start as single bytes; repeatedly the adjacent pair of
 * parts whose concatenated bytes have the lowest rank merges, the leftmost one on a tie. */

/* Pieces up to this long merge by linear scans over small stack arrays, as tiktoken does;
 * longer ones use a heap so a megabyte-long word is not quadratic. */
#define MERGE_LINEAR_MAX 256

struct merge_ent {
    uint32_t rank;
    size_t pos;
};

typedef struct {
    const mk_bpe *b;
    int32_t *ids;
    size_t n, cap;
    /* scratch of the heap path, owned by one encode call (nothing shared between threads) */
    size_t *nxt, *prv;
    uint32_t *pr, *tk;
    size_t scap;
    struct merge_ent *heap;
} enc_ctx;

/* Returns the number of final parts, written to out as ranks. */
static size_t merge_linear(const mk_bpe *b, const unsigned char *p, size_t n, int32_t *out)
{
    const strtab *t = &b->tok;
    size_t start[MERGE_LINEAR_MAX + 1];
    uint32_t pr[MERGE_LINEAR_MAX], tk[MERGE_LINEAR_MAX];
    size_t m = n;
    for (size_t i = 0; i < n; i++) {
        start[i] = i;
        tk[i] = b->byte_rank[p[i]];
        pr[i] = i + 1 < n ? pair_rank_at(b, p + i) : NO_RANK;
    }
    start[n] = n;
    for (;;) {
        size_t i = 0;
        uint32_t r = NO_RANK;
        for (size_t k = 0; k + 1 < m; k++)
            if (pr[k] < r) r = pr[k], i = k;
        if (r == NO_RANK) break;
        /* part i absorbs part i+1 */
        tk[i] = r;
        memmove(start + i + 1, start + i + 2, (m - i - 1) * sizeof *start);
        memmove(tk + i + 1, tk + i + 2, (m - i - 2) * sizeof *tk);
        memmove(pr + i + 1, pr + i + 2, (m - i - 2) * sizeof *pr);
        m--;
        pr[i] = i + 1 < m ? rank_of(t, p + start[i], start[i + 2] - start[i]) : NO_RANK;
        if (i > 0) pr[i - 1] = rank_of(t, p + start[i - 1], start[i + 1] - start[i - 1]);
    }
    for (size_t i = 0; i < m; i++) out[i] = (int32_t)tk[i];
    return m;
}

static int ent_less(struct merge_ent a, struct merge_ent b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void ent_push(struct merge_ent *h, size_t *n, struct merge_ent e)
{
    size_t i = (*n)++;
    while (i > 0 && ent_less(e, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static struct merge_ent ent_pop(struct merge_ent *h, size_t *n)
{
    struct merge_ent top = h[0], e = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && ent_less(h[c + 1], h[c])) c++;
        if (!ent_less(h[c], e)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = e;
    return top;
}

static int enc_scratch(enc_ctx *c, size_t n)
{
    if (n <= c->scap) return MK_OK;
    /* Each merge pushes at most two entries on top of the n-1 initial ones. */
    if (n > SIZE_MAX / (3 * sizeof *c->heap))
        return MK_FAIL(MK_ERR_NOMEM, "a %zu-byte pre-token is too long to merge", n);
    size_t *nxt = realloc(c->nxt, n * sizeof *nxt);
    if (nxt) c->nxt = nxt;
    size_t *prv = realloc(c->prv, n * sizeof *prv);
    if (prv) c->prv = prv;
    uint32_t *pr = realloc(c->pr, n * sizeof *pr);
    if (pr) c->pr = pr;
    uint32_t *tk = realloc(c->tk, n * sizeof *tk);
    if (tk) c->tk = tk;
    struct merge_ent *heap = realloc(c->heap, 3 * n * sizeof *heap);
    if (heap) c->heap = heap;
    if (!nxt || !prv || !pr || !tk || !heap)
        return MK_FAIL(MK_ERR_NOMEM, "out of memory merging a %zu-byte pre-token", n);
    c->scap = n;
    return MK_OK;
}

/* The same merges as merge_linear, from a heap keyed by (rank, position) instead of a scan:
 * a part is named by its first byte, which never changes, so the leftmost-on-tie rule is
 * the smaller position. An entry is current while pr[] of its part still holds its rank: a
 * part's rank changes only when its span grows, and a longer string has another rank. */
static size_t merge_heap(enc_ctx *c, const unsigned char *p, size_t n, int32_t *out)
{
    const mk_bpe *b = c->b;
    const strtab *t = &b->tok;
    size_t *nxt = c->nxt, *prv = c->prv, nh = 0;
    uint32_t *pr = c->pr, *tk = c->tk;
    for (size_t i = 0; i < n; i++) {
        nxt[i] = i + 1;
        prv[i] = i - 1; /* SIZE_MAX for the first part */
        tk[i] = b->byte_rank[p[i]];
        pr[i] = i + 1 < n ? pair_rank_at(b, p + i) : NO_RANK;
        if (pr[i] != NO_RANK) ent_push(c->heap, &nh, (struct merge_ent){pr[i], i});
    }
    while (nh) {
        struct merge_ent e = ent_pop(c->heap, &nh);
        size_t i = e.pos;
        if (pr[i] != e.rank) continue;
        size_t j = nxt[i];
        tk[i] = e.rank;
        pr[j] = NO_RANK; /* part j is gone; its entries go stale */
        nxt[i] = nxt[j];
        if (nxt[i] < n) prv[nxt[i]] = i;
        pr[i] = nxt[i] < n ? rank_of(t, p + i, nxt[nxt[i]] - i) : NO_RANK;
        if (pr[i] != NO_RANK) ent_push(c->heap, &nh, (struct merge_ent){pr[i], i});
        size_t h = prv[i];
        if (h != SIZE_MAX) {
            pr[h] = rank_of(t, p + h, nxt[i] - h);
            if (pr[h] != NO_RANK) ent_push(c->heap, &nh, (struct merge_ent){pr[h], h});
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i = nxt[i]) out[m++] = (int32_t)tk[i];
    return m;
}

static int encode_piece(void *vctx, const unsigned char *p, size_t n)
{
    enc_ctx *c = vctx;
    MK_CHECK(mk_ids_reserve(&c->ids, &c->cap, c->n + n));
    /* A whole piece that is a token is that token, even where merging would split it
     * differently: tiktoken does the same lookup first. */
    uint32_t r = rank_of(&c->b->tok, p, n);
    if (r != NO_RANK) {
        c->ids[c->n++] = (int32_t)r;
        return MK_OK;
    }
    if (n <= MERGE_LINEAR_MAX) {
        c->n += merge_linear(c->b, p, n, c->ids + c->n);
        return MK_OK;
    }
    MK_CHECK(enc_scratch(c, n));
    c->n += merge_heap(c, p, n, c->ids + c->n);
    return MK_OK;
}

int mk_bpe_encode(const mk_bpe *b, const char *text, size_t len, int32_t **ids, size_t *n,
                  size_t *cap)
{
    *n = 0;
    pcre2_match_data *md;
    MK_CHECK(match_data_new(b, &md));
    enc_ctx c = {.b = b, .ids = *ids, .cap = *cap};
    int rc = pretokenize(b, md, (const unsigned char *)text, len, encode_piece, &c);
    pcre2_match_data_free(md);
    free(c.nxt);
    free(c.prv);
    free(c.pr);
    free(c.tk);
    free(c.heap);
    *ids = c.ids;
    *cap = c.cap;
    *n = rc == MK_OK ? c.n : 0;
    return rc;
}

/* ------------------------------------------------------------------- ranks file: load */

static int read_all(const char *path, unsigned char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return MK_FAIL(MK_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = MK_OK;
    for (;;) {
        if ((rc = grow((void **)&buf, &cap, n + 65536, 1, "ranks file bytes")) != MK_OK) break;
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (rc == MK_OK && ferror(f))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: read error: %s", path, strerror(errno));
    fclose(f);
    if (rc != MK_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return MK_OK;
}

/* Decimal digits only, no sign, no leading zero (one spelling per rank, as for base64). */
static int parse_rank(const char *s, size_t n, long *out)
{
    if (n == 0 || n > 10 || (n > 1 && s[0] == '0')) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v >= MAX_RANKS) return -1;
    *out = v;
    return 0;
}

/* One line without its newline; the token goes in as rank b->tok.n. */
static int load_line(mk_bpe *b, const char *path, long line, const char *s, size_t n,
                     unsigned char **tmp, size_t *tmpcap)
{
    if (n == 0) return MK_FAIL(MK_ERR_INPUT, "%s:%ld: empty line", path, line);
    if (s[n - 1] == '\r')
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: carriage return before the newline "
                       "(CRLF line ends are not accepted)", path, line);
    const char *sp = memchr(s, ' ', n);
    if (!sp)
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: expected \"base64 rank\", found no space",
                       path, line);
    size_t nb = (size_t)(sp - s);
    MK_CHECK(grow((void **)tmp, tmpcap, nb / 4 * 3 + 3, 1, "token bytes"));
    long len = b64_decode(s, nb, *tmp);
    if (len < 0)
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: bad base64 token \"%.*s\"", path, line,
                       (int)(nb < 40 ? nb : 40), s);
    long rank;
    if (parse_rank(sp + 1, n - nb - 1, &rank))
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: bad rank \"%.*s\" (a decimal number below %d)",
                       path, line, (int)(n - nb - 1 < 40 ? n - nb - 1 : 40), sp + 1, MAX_RANKS);
    long want = b->tok.n;
    if (rank < want)
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: rank %ld repeats (ranks must be 0, 1, 2, ...)",
                       path, line, rank);
    if (rank > want)
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: rank %ld out of order: expected %ld", path, line,
                       rank, want);
    uint32_t h = hash_bytes(*tmp, (size_t)len);
    int32_t dup = strtab_find(&b->tok, *tmp, (size_t)len, h);
    if (dup >= 0)
        return MK_FAIL(MK_ERR_INPUT, "%s:%ld: token \"%.*s\" repeats the token of rank %d (line %d)",
                       path, line, (int)nb, s, (int)dup, (int)dup + 1);
    int32_t idx;
    return strtab_add(&b->tok, *tmp, (size_t)len, h, &idx);
}

static int load_lines(mk_bpe *b, const char *path, const unsigned char *buf, size_t n)
{
    if (n == 0) return MK_FAIL(MK_ERR_INPUT, "%s: empty ranks file", path);
    unsigned char *tmp = NULL;
    size_t tmpcap = 0;
    int rc = MK_OK;
    long line = 1;
    for (const char *p = (const char *)buf, *end = p + n; p < end && rc == MK_OK; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            rc = MK_FAIL(MK_ERR_INPUT, "%s:%ld: no newline at the end of the file", path, line);
            break;
        }
        rc = load_line(b, path, line, p, (size_t)(nl - p), &tmp, &tmpcap);
        p = nl + 1;
    }
    free(tmp);
    MK_CHECK(rc);
    MK_CHECK(index_short(b));
    for (int c = 0; c < 256; c++) {
        if (b->byte_rank[c] == NO_RANK)
            return MK_FAIL(MK_ERR_INPUT, "%s:%ld: no token for the single byte 0x%02x "
                           "(every byte needs a rank)", path, line - 1, c);
    }
    return MK_OK;
}

int mk_bpe_load(const char *path, mk_bpe **out)
{
    *out = NULL;
    unsigned char *buf;
    size_t n;
    MK_CHECK(read_all(path, &buf, &n));
    mk_bpe *b;
    int rc = bpe_new(&b);
    if (rc == MK_OK) rc = load_lines(b, path, buf, n);
    if (rc == MK_OK) mk_sha256_hex(buf, n, b->sha_hex);
    free(buf);
    if (rc != MK_OK) {
        mk_bpe_free(&b);
        return mk_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = b;
    return MK_OK;
}

/* ------------------------------------------------------------------- ranks file: save */

/* O_EXCL | O_NOFOLLOW through mk_fs_create_tmp: a link planted at path.tmp is refused,
 * not followed (as for checkpoints). */
static int write_synced(const char *path, const char *buf, size_t len)
{
    int fd;
    MK_CHECK(mk_fs_create_tmp(path, &fd));
    int rc = mk_fs_write_all(fd, buf, len, path);
    if (rc == MK_OK && fsync(fd) != 0) rc = MK_FAIL(MK_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

int mk_bpe_save(const mk_bpe *b, const char *path)
{
    char *buf;
    size_t len;
    MK_CHECK(bpe_serialize(b, &buf, &len));
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        free(buf);
        return MK_FAIL(MK_ERR_NOMEM, "out of memory");
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int rc = write_synced(tmp, buf, len);
    if (rc == MK_OK && rename(tmp, path) != 0)
        rc = MK_FAIL(MK_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc == MK_OK) rc = mk_fs_fsync_parent(path); /* the rename is durable now */
    else unlink(tmp);
    free(tmp);
    free(buf);
    return rc;
}

/* ----------------------------------------------------------------------------- training */
/* Words are the distinct pre-tokens (with their counts) as symbol sequences. Each pair of
 * adjacent symbols has a count over all words and a list of the words that hold it, so a
 * merge visits only those words and updates counts locally; a max-heap with lazy deletion
 * finds the best pair. Counts of pairs without the new symbol only fall, so a popped entry
 * whose count is stale is re-pushed with the true count; pairs whose count rose (those
 * with the new symbol) are pushed after each merge. */

typedef struct {
    uint64_t key;   /* left << 32 | right */
    int64_t count;  /* occurrences, weighted by word counts */
    int32_t *words; /* words that held the pair at some point: may be stale or repeat */
    size_t nwords, capwords;
    uint32_t stamp; /* the merge step that last raised count */
} bpe_pair;

typedef struct {
    int64_t count;
    int32_t pair;
} pair_ent;

typedef struct {
    strtab *tok;
    int32_t *sym;         /* word w is sym[wstart[w] .. wstart[w] + wlen[w]) */
    const size_t *wstart;
    size_t *wlen;
    const int64_t *wcount;
    int32_t nwords;
    bpe_pair *pairs;
    size_t npairs, cappairs;
    int32_t *pslots; /* open addressing over pairs[], -1 empty */
    size_t npslots;
    pair_ent *heap;
    size_t nheap, capheap;
    int32_t *raised; /* pairs whose count rose in this step */
    size_t nraised, capraised;
    uint32_t step;
    unsigned char *cat; /* the merged token's bytes */
    size_t capcat;
} trainer;

static int pair_rehash(trainer *tr, size_t nslots)
{
    int32_t *s = malloc(nslots * sizeof *s);
    if (!s) return MK_FAIL(MK_ERR_NOMEM, "out of memory for %zu pair slots", nslots);
    for (size_t i = 0; i < nslots; i++) s[i] = -1;
    for (size_t q = 0; q < tr->npairs; q++) {
        size_t i = mix64(tr->pairs[q].key) & (nslots - 1);
        while (s[i] >= 0) i = (i + 1) & (nslots - 1);
        s[i] = (int32_t)q;
    }
    free(tr->pslots);
    tr->pslots = s;
    tr->npslots = nslots;
    return MK_OK;
}

static int pair_index(trainer *tr, int32_t a, int32_t b, int32_t *out)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    if ((tr->npairs + 1) * 2 > tr->npslots)
        MK_CHECK(pair_rehash(tr, tr->npslots ? tr->npslots * 2 : 4096));
    size_t i = mix64(key) & (tr->npslots - 1);
    for (; tr->pslots[i] >= 0; i = (i + 1) & (tr->npslots - 1))
        if (tr->pairs[tr->pslots[i]].key == key) {
            *out = tr->pslots[i];
            return MK_OK;
        }
    if (tr->npairs >= INT32_MAX) return MK_FAIL(MK_ERR_NOMEM, "more than %d distinct pairs", INT32_MAX);
    MK_CHECK(grow((void **)&tr->pairs, &tr->cappairs, tr->npairs + 1, sizeof *tr->pairs, "pairs"));
    tr->pairs[tr->npairs] = (bpe_pair){.key = key};
    tr->pslots[i] = (int32_t)tr->npairs;
    *out = (int32_t)tr->npairs++;
    return MK_OK;
}

/* Add delta occurrences of (a, b) in word w. */
static int pair_add(trainer *tr, int32_t a, int32_t b, int64_t delta, int32_t w)
{
    int32_t q = -1;
    MK_CHECK(pair_index(tr, a, b, &q));
    bpe_pair *p = &tr->pairs[q];
    p->count += delta;
    if (delta <= 0) return MK_OK;
    if (!p->nwords || p->words[p->nwords - 1] != w) {
        MK_CHECK(grow((void **)&p->words, &p->capwords, p->nwords + 1, sizeof *p->words,
                      "pair word lists"));
        p->words[p->nwords++] = w;
    }
    if (p->stamp != tr->step) {
        p->stamp = tr->step;
        MK_CHECK(grow((void **)&tr->raised, &tr->capraised, tr->nraised + 1,
                      sizeof *tr->raised, "raised pairs"));
        tr->raised[tr->nraised++] = q;
    }
    return MK_OK;
}

static int bytes_cmp(const unsigned char *a, size_t na, const unsigned char *b, size_t nb)
{
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

/* Heap order: higher count first, then the smaller (left bytes, right bytes). */
static int ent_first(const trainer *tr, pair_ent x, pair_ent y)
{
    if (x.count != y.count) return x.count > y.count;
    uint64_t kx = tr->pairs[x.pair].key, ky = tr->pairs[y.pair].key;
    for (int side = 32; side >= 0; side -= 32) {
        size_t nx, ny;
        const unsigned char *bx = strtab_get(tr->tok, (int32_t)(kx >> side & 0xffffffff), &nx);
        const unsigned char *by = strtab_get(tr->tok, (int32_t)(ky >> side & 0xffffffff), &ny);
        int c = bytes_cmp(bx, nx, by, ny);
        if (c) return c < 0;
    }
    return 0;
}

static int heap_push(trainer *tr, pair_ent e)
{
    MK_CHECK(grow((void **)&tr->heap, &tr->capheap, tr->nheap + 1, sizeof *tr->heap, "pair heap"));
    size_t i = tr->nheap++;
    while (i > 0 && ent_first(tr, e, tr->heap[(i - 1) / 2])) {
        tr->heap[i] = tr->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    tr->heap[i] = e;
    return MK_OK;
}

static pair_ent heap_pop(trainer *tr)
{
    pair_ent top = tr->heap[0], e = tr->heap[--tr->nheap];
    size_t i = 0, n = tr->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ent_first(tr, tr->heap[c + 1], tr->heap[c])) c++;
        if (!ent_first(tr, tr->heap[c], e)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (n) tr->heap[i] = e;
    return top;
}

static int push_raised(trainer *tr)
{
    for (size_t k = 0; k < tr->nraised; k++) {
        int32_t q = tr->raised[k];
        if (tr->pairs[q].count > 0) MK_CHECK(heap_push(tr, (pair_ent){tr->pairs[q].count, q}));
    }
    tr->nraised = 0;
    return MK_OK;
}

/* The most frequent pair into *q, or -1 when no pair is left. */
static int best_pair(trainer *tr, int32_t *q)
{
    *q = -1;
    while (tr->nheap) {
        pair_ent e = heap_pop(tr);
        int64_t now = tr->pairs[e.pair].count;
        if (now == e.count && now > 0) {
            *q = e.pair;
            return MK_OK;
        }
        if (now > 0) MK_CHECK(heap_push(tr, (pair_ent){now, e.pair}));
    }
    return MK_OK;
}

/* Replace (a, b) by c left to right in word w, moving the counts of the neighbouring
 * pairs: the left neighbour is read from the already-rewritten output, so in "a b a b" the
 * second merge sees c on its left and "c c" is counted once. */
static int merge_word(trainer *tr, int32_t w, int32_t a, int32_t b, int32_t c)
{
    int32_t *s = tr->sym + tr->wstart[w];
    size_t len = tr->wlen[w], out = 0;
    int64_t cnt = tr->wcount[w];
    for (size_t i = 0; i < len;) {
        if (i + 1 < len && s[i] == a && s[i + 1] == b) {
            if (out > 0) {
                MK_CHECK(pair_add(tr, s[out - 1], a, -cnt, w));
                MK_CHECK(pair_add(tr, s[out - 1], c, cnt, w));
            }
            MK_CHECK(pair_add(tr, a, b, -cnt, w));
            if (i + 2 < len) {
                MK_CHECK(pair_add(tr, b, s[i + 2], -cnt, w));
                MK_CHECK(pair_add(tr, c, s[i + 2], cnt, w));
            }
            s[out++] = c;
            i += 2;
        } else {
            s[out++] = s[i++];
        }
    }
    tr->wlen[w] = out;
    return MK_OK;
}

/* Merge pair q everywhere; the token for its bytes is added unless one exists already (a
 * string can arise from two different pairs; ranks stay distinct byte strings). */
static int merge_pair(trainer *tr, int32_t q)
{
    uint64_t key = tr->pairs[q].key;
    int32_t a = (int32_t)(key >> 32), b = (int32_t)(key & 0xffffffff);
    size_t na, nb;
    const unsigned char *ba = strtab_get(tr->tok, a, &na), *bb = strtab_get(tr->tok, b, &nb);
    MK_CHECK(grow((void **)&tr->cat, &tr->capcat, na + nb, 1, "token bytes"));
    memcpy(tr->cat, ba, na);
    memcpy(tr->cat + na, bb, nb);
    uint32_t h = hash_bytes(tr->cat, na + nb);
    int32_t c = strtab_find(tr->tok, tr->cat, na + nb, h);
    if (c < 0) MK_CHECK(strtab_add(tr->tok, tr->cat, na + nb, h, &c));

    tr->step++;
    int32_t *list = tr->pairs[q].words;
    size_t nlist = tr->pairs[q].nwords;
    tr->pairs[q].words = NULL;
    tr->pairs[q].nwords = tr->pairs[q].capwords = 0;
    int rc = MK_OK;
    for (size_t k = 0; k < nlist && rc == MK_OK; k++) rc = merge_word(tr, list[k], a, b, c);
    free(list);
    MK_CHECK(rc);
    if (tr->pairs[q].count != 0)
        return MK_FAIL(MK_ERR_INTERNAL, "BPE training: pair (%d, %d) still counts %lld after "
                       "its merge", (int)a, (int)b, (long long)tr->pairs[q].count);
    return push_raised(tr);
}

/* Distinct pre-tokens and their counts. */
typedef struct {
    strtab words;
    int64_t *counts;
    size_t capcounts;
} count_ctx;

static int count_piece(void *vctx, const unsigned char *p, size_t n)
{
    count_ctx *c = vctx;
    if (n < 2) return MK_OK; /* holds no pair: nothing to learn from */
    uint32_t h = hash_bytes(p, n);
    int32_t w = strtab_find(&c->words, p, n, h);
    if (w < 0) {
        MK_CHECK(strtab_add(&c->words, p, n, h, &w));
        MK_CHECK(grow((void **)&c->counts, &c->capcounts, (size_t)w + 1, sizeof *c->counts,
                      "pre-token counts"));
        c->counts[w] = 0;
    }
    c->counts[w]++;
    return MK_OK;
}

static int count_pretokens(const mk_bpe *b, const char *const *docs, const size_t *lens,
                           size_t ndocs, count_ctx *cc)
{
    pcre2_match_data *md;
    MK_CHECK(match_data_new(b, &md));
    int rc = MK_OK;
    for (size_t d = 0; d < ndocs && rc == MK_OK; d++)
        rc = pretokenize(b, md, (const unsigned char *)docs[d], lens[d], count_piece, cc);
    pcre2_match_data_free(md);
    return rc;
}

/* Symbols start as the bytes, whose ranks equal their values in a trained vocabulary. */
static int trainer_init(trainer *tr, const count_ctx *cc)
{
    const strtab *ws = &cc->words;
    tr->nwords = ws->n;
    tr->wstart = ws->off;
    tr->wcount = cc->counts;
    tr->sym = malloc((ws->nbytes ? ws->nbytes : 1) * sizeof *tr->sym);
    tr->wlen = malloc((ws->n ? (size_t)ws->n : 1) * sizeof *tr->wlen);
    if (!tr->sym || !tr->wlen)
        return MK_FAIL(MK_ERR_NOMEM, "out of memory for %zu pre-token bytes", ws->nbytes);
    for (size_t k = 0; k < ws->nbytes; k++) tr->sym[k] = ws->bytes[k];
    tr->step = 1;
    for (int32_t w = 0; w < tr->nwords; w++) {
        tr->wlen[w] = ws->off[w + 1] - ws->off[w];
        const int32_t *s = tr->sym + ws->off[w];
        for (size_t i = 0; i + 1 < tr->wlen[w]; i++)
            MK_CHECK(pair_add(tr, s[i], s[i + 1], tr->wcount[w], w));
    }
    return push_raised(tr);
}

static void trainer_free(trainer *tr)
{
    for (size_t q = 0; q < tr->npairs; q++) free(tr->pairs[q].words);
    free(tr->pairs);
    free(tr->pslots);
    free(tr->heap);
    free(tr->raised);
    free(tr->sym);
    free(tr->wlen);
    free(tr->cat);
}

static int train_into(mk_bpe *b, const char *const *docs, const size_t *lens, size_t ndocs,
                      int vocab_size)
{
    for (int c = 0; c < 256; c++) {
        unsigned char byte = (unsigned char)c;
        int32_t idx;
        MK_CHECK(strtab_add(&b->tok, &byte, 1, hash_bytes(&byte, 1), &idx));
    }
    count_ctx cc = {0};
    trainer tr = {.tok = &b->tok};
    int rc = count_pretokens(b, docs, lens, ndocs, &cc);
    if (rc == MK_OK) rc = trainer_init(&tr, &cc);
    while (rc == MK_OK && b->tok.n < vocab_size) {
        int32_t q;
        rc = best_pair(&tr, &q);
        if (rc != MK_OK || q < 0) break;
        rc = merge_pair(&tr, q);
    }
    trainer_free(&tr);
    strtab_free(&cc.words);
    free(cc.counts);
    return rc;
}

int mk_bpe_train(const char *const *docs, const size_t *lens, size_t ndocs, int vocab_size,
                 mk_bpe **out)
{
    *out = NULL;
    if (vocab_size < 256 || vocab_size > MAX_RANKS)
        return MK_FAIL(MK_ERR_USAGE, "BPE vocab_size %d: must be 256 (the single bytes) to %d",
                       vocab_size, MAX_RANKS);
    mk_bpe *b;
    MK_CHECK(bpe_new(&b));
    char *buf = NULL;
    size_t len = 0;
    int rc = train_into(b, docs, lens, ndocs, vocab_size);
    if (rc == MK_OK) rc = index_short(b);
    /* The id is the hash of the file mk_bpe_save writes, so a saved and reloaded vocabulary
     * keeps it. */
    if (rc == MK_OK) rc = bpe_serialize(b, &buf, &len);
    if (rc == MK_OK) mk_sha256_hex(buf, len, b->sha_hex);
    free(buf);
    if (rc != MK_OK) {
        mk_bpe_free(&b);
        return mk_trace(rc, __FILE__, __LINE__, __func__);
    }
    *out = b;
    return MK_OK;
}
