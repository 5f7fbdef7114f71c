/* test_tokenizer.c - the byte tokenizer and the BPE of mk_tokenizer.h: ids, SHA-256 known
 * answers, strict loading of hand-written and malformed ranks files, training (against
 * fixed expectations, determinism, save + reload), decode(encode(x)) == x on the demo files,
 * random bytes and several scripts, compression, and encoding from several threads.
 * tiktoken parity is test_tiktoken.sh.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_bpe.h"
#include "mk_error.h"
#include "mk_sha256.h"
#include "mk_tokenizer.h"
#include "tap.h"

static char tmpdir[] = "/tmp/test_tokenizer.XXXXXX";

/* ---------------------------------------------------------------------------- helpers */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *b = realloc(buf, cap *= 2);
        if (!b) free(buf);
        buf = b;
    }
    fclose(f);
    *len = n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(1);
    }
}

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void demo_path(char *out, size_t cap, const char *name)
{
    const char *srcdir = getenv("srcdir");
    snprintf(out, cap, "%s/data/demo/%s", srcdir ? srcdir : ".", name);
}

/* decode(encode(x)) == x; on failure a diagnostic names the first differing byte. */
static int roundtrip(const mk_tokenizer *tok, const char *x, size_t len)
{
    int32_t *ids = NULL;
    char *back = NULL;
    size_t n = 0, cap = 0, blen = 0, bcap = 0;
    int ok = mk_tokenizer_encode(tok, x, len, &ids, &n, &cap) == MK_OK &&
             mk_tokenizer_decode(tok, ids, n, &back, &blen, &bcap) == MK_OK && blen == len &&
             (len == 0 || memcmp(back, x, len) == 0);
    if (!ok) {
        size_t i = 0;
        while (back && i < len && i < blen && back[i] == x[i]) i++;
        tap_diag("round trip: %zu bytes in, %zu ids, %zu bytes back, first difference at %zu",
                 len, n, blen, i);
    }
    free(ids);
    free(back);
    return ok;
}

static int encode(const mk_tokenizer *tok, const char *x, size_t len, int32_t **ids, size_t *n)
{
    size_t cap = 0;
    *ids = NULL;
    return mk_tokenizer_encode(tok, x, len, ids, n, &cap);
}

/* The ids of x equal want[0..nwant). */
static int encodes_to(const mk_tokenizer *tok, const char *x, const int32_t *want, size_t nwant)
{
    int32_t *ids;
    size_t n;
    int ok = encode(tok, x, strlen(x), &ids, &n) == MK_OK && n == nwant &&
             (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!ok) {
        char got[256] = "";
        for (size_t i = 0, k = 0; i < n && k < sizeof got - 12; i++)
            k += (size_t)snprintf(got + k, sizeof got - k, " %d", (int)ids[i]);
        tap_diag("\"%s\" encodes to%s", x, got);
    }
    free(ids);
    return ok;
}

/* ---------------------------------------------------------------------- byte tokenizer */

static void test_byte(void)
{
    mk_tokenizer *tok;
    tap_ok(mk_tokenizer_byte(&tok) == MK_OK, "byte tokenizer created");
    tap_ok(strcmp(mk_tokenizer_kind(tok), "byte") == 0 && strcmp(mk_tokenizer_id(tok), "byte") == 0,
           "byte: kind and id are \"byte\"");
    tap_ok(mk_tokenizer_vocab(tok) == 257 && mk_tokenizer_eod(tok) == 256,
           "byte: vocab 257, end-of-document 256");
    const char x[] = "A\0\xff\x80 z";
    int32_t *ids;
    size_t n;
    int32_t want[] = {65, 0, 255, 128, 32, 122};
    tap_ok(encode(tok, x, 6, &ids, &n) == MK_OK && n == 6 && memcmp(ids, want, sizeof want) == 0,
           "byte: ids are the byte values (NUL and 0xff included)");
    free(ids);
    int32_t with_eod[] = {104, 256, 105};
    char *out = NULL;
    size_t len, cap = 0;
    tap_ok(mk_tokenizer_decode(tok, with_eod, 3, &out, &len, &cap) == MK_OK && len == 2 &&
               memcmp(out, "hi", 2) == 0,
           "byte: end-of-document decodes to nothing");
    int32_t bad[] = {257};
    int32_t neg[] = {-1};
    tap_ok(mk_tokenizer_decode(tok, bad, 1, &out, &len, &cap) == MK_ERR_INPUT &&
               mk_tokenizer_decode(tok, neg, 1, &out, &len, &cap) == MK_ERR_INPUT,
           "byte: decoding 257 or -1 is MK_ERR_INPUT");
    free(out);
    tap_ok(roundtrip(tok, "", 0) && roundtrip(tok, x, 6), "byte: round trip");
    tap_ok(mk_tokenizer_bpe_save(tok, "/nonexistent/x") == MK_ERR_USAGE,
           "byte: has no ranks file to save (MK_ERR_USAGE)");
    mk_tokenizer_free(&tok);
    tap_ok(tok == NULL, "free clears the handle");
    mk_tokenizer_free(&tok);
}

/* ----------------------------------------------------------------------------- SHA-256 */

static int sha_is(const void *data, size_t len, const char *want)
{
    char got[65];
    mk_sha256_hex(data, len, got);
    if (strcmp(got, want) != 0) tap_diag("sha256: got %s, want %s", got, want);
    return strcmp(got, want) == 0;
}

/* The tokenizer id hashes with mk_sha256.h: FIPS 180-4 known answers and sha256sum's. */
static void test_sha256(void)
{
    tap_ok(sha_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
           "sha256(\"\")");
    tap_ok(sha_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
           "sha256(\"abc\")");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    tap_ok(sha_is(two, strlen(two),
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
           "sha256 of the 56-byte FIPS vector (padding spills into a second block)");
    char *a = malloc(1000000);
    if (a) memset(a, 'a', 1000000);
    tap_ok(a && sha_is(a, 1000000,
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
           "sha256 of one million 'a'");
    free(a);
}

/* ------------------------------------------------------------------ hand-written ranks */

static size_t b64(const unsigned char *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[k++] = a[v >> 18 & 63];
        out[k++] = a[v >> 12 & 63];
        out[k++] = i + 1 < n ? a[v >> 6 & 63] : '=';
        out[k++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[k] = '\0';
    return k;
}

/* 256 single-byte lines: byte b gets rank b (reversed: 255 - b); skip < 0 leaves one out. */
static size_t single_bytes(char *buf, int reversed, int skip)
{
    size_t k = 0;
    int rank = 0;
    for (int r = 0; r < 256; r++) {
        unsigned char b = (unsigned char)(reversed ? 255 - r : r);
        if (b == skip) continue;
        char e[8];
        b64(&b, 1, e);
        k += (size_t)sprintf(buf + k, "%s %d\n", e, rank++);
    }
    return k;
}

/* "he" 256, "ll" 257, "hell" 258, "hello" 259, "aa" 260 */
static const char hand_merges[] = "aGU= 256\nbGw= 257\naGVsbA== 258\naGVsbG8= 259\nYWE= 260\n";

static void test_hand_written(void)
{
    char buf[8192], path[4096], again[4096];
    size_t k = single_bytes(buf, 0, -1);
    k += (size_t)sprintf(buf + k, "%s", hand_merges);
    tmp_path(path, sizeof path, "hand.ranks");
    write_file(path, buf, k);
    mk_tokenizer *tok;
    if (!tap_ok(mk_tokenizer_bpe_load(path, &tok) == MK_OK, "hand-written ranks file loads"))
        return;
    tap_ok(strcmp(mk_tokenizer_kind(tok), "bpe") == 0, "hand: kind \"bpe\"");
    tap_ok(mk_tokenizer_vocab(tok) == 262 && mk_tokenizer_eod(tok) == 261,
           "hand: 261 ranks, end-of-document 261, vocab 262");
    char want_id[4 + 65] = "bpe:";
    mk_sha256_hex(buf, k, want_id + 4);
    tap_ok(strcmp(mk_tokenizer_id(tok), want_id) == 0, "hand: id is bpe: + sha256 of the file");

    tap_ok(encodes_to(tok, "hello", (int32_t[]){259}, 1), "hand: a whole pre-token that is a token");
    tap_ok(encodes_to(tok, "hellx", (int32_t[]){258, 'x'}, 2), "hand: he + ll -> hell, then x");
    tap_ok(encodes_to(tok, " hello", (int32_t[]){' ', 259}, 2), "hand: merges reach hello after a space");
    tap_ok(encodes_to(tok, "ll he", (int32_t[]){257, ' ', 256}, 3), "hand: two pre-tokens");
    tap_ok(encodes_to(tok, "aaa", (int32_t[]){260, 'a'}, 2), "hand: equal ranks merge leftmost first");
    tap_ok(encodes_to(tok, "a\xff" "b", (int32_t[]){'a', 255, 'b'}, 3),
           "hand: an invalid UTF-8 byte is a pre-token of its own");
    tap_ok(encodes_to(tok, "", NULL, 0), "hand: empty text, no ids");

    int32_t ids[] = {259, 261, 32, 260};
    char *out = NULL;
    size_t len, cap = 0;
    tap_ok(mk_tokenizer_decode(tok, ids, 4, &out, &len, &cap) == MK_OK && len == 8 &&
               memcmp(out, "hello aa", 8) == 0,
           "hand: decode (end-of-document decodes to nothing)");
    int32_t bad[] = {1, 262};
    tap_ok(mk_tokenizer_decode(tok, bad, 2, &out, &len, &cap) == MK_ERR_INPUT && len == 0,
           "hand: decoding id 262 is MK_ERR_INPUT");
    free(out);

    tmp_path(again, sizeof again, "hand-saved.ranks");
    size_t slen = 0;
    char *saved = NULL;
    tap_ok(mk_tokenizer_bpe_save(tok, again) == MK_OK && (saved = read_file(again, &slen)) &&
               slen == k && memcmp(saved, buf, k) == 0,
           "hand: saving a loaded file writes the same bytes");
    free(saved);
    tmp_path(again, sizeof again, "hand-saved.ranks.tmp");
    tap_ok(access(again, F_OK) != 0, "hand: no .tmp file is left behind");
    mk_tokenizer_free(&tok);

    /* The single bytes need not be ranks 0..255 in byte order. */
    k = single_bytes(buf, 1, -1);
    tmp_path(path, sizeof path, "reversed.ranks");
    write_file(path, buf, k);
    if (tap_ok(mk_tokenizer_bpe_load(path, &tok) == MK_OK, "reversed single bytes load")) {
        tap_ok(encodes_to(tok, "AB", (int32_t[]){255 - 'A', 255 - 'B'}, 2),
               "reversed: byte b is rank 255 - b");
        tap_ok(roundtrip(tok, "Gr\xc3\xb6\xc3\x9f" "e \xff\x00 x", 11), "reversed: round trip");
        mk_tokenizer_free(&tok);
    }
}

/* ----------------------------------------------------------------------- malformed files */

/* Load path with stderr captured into msg. */
static int load_captured(const char *path, mk_tokenizer **tok, char *msg, size_t cap)
{
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    if (saved < 0 || !tmp) {
        printf("Bail out! cannot capture stderr\n");
        exit(1);
    }
    dup2(fileno(tmp), 2);
    int rc = mk_tokenizer_bpe_load(path, tok);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(msg, 1, cap - 1, tmp);
    msg[n] = '\0';
    if (n && msg[n - 1] == '\n') msg[n - 1] = '\0';
    fclose(tmp);
    return rc;
}

static void test_malformed(void)
{
    static const struct {
        const char *what, *tail; /* tail follows the 256 single-byte lines */
        int base;                /* 0: the file is tail alone */
        long line;               /* the line the message must name, 0: any */
        const char *says;        /* and a word it must contain */
    } cases[] = {
        {"an empty file", "", 0, 0, "empty"},
        {"a bad base64 character", "YW$= 256\n", 1, 257, "base64"},
        {"base64 of a bad length", "YWJjZ 256\n", 1, 257, "base64"},
        {"base64 with non-zero padding bits", "YWJ= 256\n", 1, 257, "base64"},
        {"base64 padding inside", "YQ==YQ== 256\n", 1, 257, "base64"},
        {"an empty token", " 256\n", 1, 257, "base64"},
        {"a rank out of order", "YWI= 257\n", 1, 257, "order"},
        {"a repeated rank", "YWI= 256\nYWM= 256\n", 1, 258, "repeats"},
        {"a first rank that is not 0", "AA== 1\n", 0, 1, "order"},
        {"a repeated token", "YWI= 256\nYWI= 257\n", 1, 258, "repeats"},
        {"a repeated single byte", "YQ== 256\n", 1, 257, "repeats"},
        {"a missing rank", "YWI=\n", 1, 257, "space"},
        {"text after the rank", "YWI= 256 x\n", 1, 257, "rank"},
        {"a negative rank", "YWI= -256\n", 1, 257, "rank"},
        {"a rank with a leading zero", "YWI= 0256\n", 1, 257, "rank"},
        {"a huge rank", "YWI= 99999999999\n", 1, 257, "rank"},
        {"two spaces", "YWI=  256\n", 1, 257, "rank"},
        {"CRLF line ends", "YWI= 256\r\n", 1, 257, "CRLF"},
        {"no final newline", "YWI= 256", 1, 257, "newline"},
        {"a blank line", "\nYWI= 256\n", 1, 257, "empty line"},
        {"only a blank line", "\n", 0, 1, "empty line"},
    };
    char buf[8192], path[4096], msg[2048], want[4200];
    tmp_path(path, sizeof path, "bad.ranks");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        size_t k = cases[c].base ? single_bytes(buf, 0, -1) : 0;
        k += (size_t)sprintf(buf + k, "%s", cases[c].tail);
        write_file(path, buf, k);
        mk_tokenizer *tok = (mk_tokenizer *)&tok;
        int rc = load_captured(path, &tok, msg, sizeof msg);
        if (cases[c].line) snprintf(want, sizeof want, "%s:%ld: ", path, cases[c].line);
        else snprintf(want, sizeof want, "%s: ", path);
        int ok = rc == MK_ERR_INPUT && tok == NULL && strstr(msg, want) && strstr(msg, cases[c].says);
        tap_ok(ok, "malformed: %s is MK_ERR_INPUT naming %s", cases[c].what,
               cases[c].line ? "path:line" : "the path");
        tap_diag("%s", msg);
        if (!ok) tap_diag("rc %d, want the message to contain \"%s\" and \"%s\"", rc, want,
                          cases[c].says);
    }

    /* 255 single bytes: 'A' is missing. */
    size_t k = single_bytes(buf, 0, 'A');
    write_file(path, buf, k);
    mk_tokenizer *tok;
    int rc = load_captured(path, &tok, msg, sizeof msg);
    tap_ok(rc == MK_ERR_INPUT && tok == NULL && strstr(msg, path) && strstr(msg, "0x41"),
           "malformed: a missing single byte is MK_ERR_INPUT naming the byte");
    tap_diag("%s", msg);
    tmp_path(path, sizeof path, "does-not-exist.ranks");
    rc = load_captured(path, &tok, msg, sizeof msg);
    tap_ok(rc == MK_ERR_INPUT && tok == NULL && strstr(msg, path),
           "malformed: a missing file is MK_ERR_INPUT naming it");
    tap_diag("%s", msg);
}

/* ----------------------------------------------------------------------------- training */

/* The demo corpus: the files data/demo/SHA256SUMS lists (checked against it), and all of
 * them joined as one more text. */
#define MAXDEMO 16
typedef struct {
    int n;
    char name[MAXDEMO][256];
    char *doc[MAXDEMO + 1]; /* doc[n]: all files joined */
    size_t len[MAXDEMO + 1];
    int prose; /* the English prose file */
} demo_set;

static int load_demo(demo_set *d)
{
    char path[4096], want[65], got[65];
    demo_path(path, sizeof path, "SHA256SUMS");
    FILE *f = fopen(path, "r");
    if (!f) {
        tap_diag("cannot read %s (is srcdir set?)", path);
        return 0;
    }
    int ok = 1;
    d->prose = -1;
    size_t total = 0;
    while (d->n < MAXDEMO && fscanf(f, "%64s %255s", want, d->name[d->n]) == 2) {
        int i = d->n++;
        demo_path(path, sizeof path, d->name[i]);
        d->doc[i] = read_file(path, &d->len[i]);
        if (!d->doc[i]) {
            tap_diag("cannot read %s", path);
            ok = 0;
            break;
        }
        mk_sha256_hex(d->doc[i], d->len[i], got);
        ok &= strcmp(got, want) == 0;
        total += d->len[i];
        if (strcmp(d->name[i], "english.txt") == 0 || strcmp(d->name[i], "prose.txt") == 0)
            d->prose = i;
    }
    fclose(f);
    tap_ok(ok && d->n >= 2 && d->prose >= 0,
           "%d demo files (%zu bytes, English prose among them) match their SHA256SUMS", d->n,
           total);
    if (!ok || d->n < 2 || d->prose < 0) return 0;
    d->doc[d->n] = malloc(total);
    if (!d->doc[d->n]) return 0;
    for (int i = 0; i < d->n; i++) {
        memcpy(d->doc[d->n] + d->len[d->n], d->doc[i], d->len[i]);
        d->len[d->n] += d->len[i];
    }
    return 1;
}

static int same_encoding(const mk_tokenizer *a, const mk_tokenizer *b, const char *x, size_t len)
{
    int32_t *ia, *ib;
    size_t na, nb;
    int ok = encode(a, x, len, &ia, &na) == MK_OK && encode(b, x, len, &ib, &nb) == MK_OK &&
             na == nb && memcmp(ia, ib, na * sizeof *ia) == 0;
    free(ia);
    free(ib);
    return ok;
}

/* Encoding one text from several threads on one tokenizer gives the single-thread ids. */
typedef struct {
    const mk_tokenizer *tok;
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    int rc;
} enc_job;

static void *enc_thread(void *arg)
{
    enc_job *j = arg;
    for (int rep = 0; rep < 3 && j->rc == MK_OK; rep++) {
        free(j->ids);
        j->rc = encode(j->tok, j->text, j->len, &j->ids, &j->n);
    }
    return NULL;
}

static void test_threads(const mk_tokenizer *tok, const demo_set *d)
{
    enum { NT = 4 };
    enc_job jobs[NT];
    pthread_t th[NT];
    int started = 0;
    for (int t = 0; t < NT; t++) {
        jobs[t] = (enc_job){tok, d->doc[d->n], d->len[d->n], NULL, 0, MK_OK};
        started += pthread_create(&th[t], NULL, enc_thread, &jobs[t]) == 0;
    }
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    int32_t *ids;
    size_t n;
    int ok = started == NT && encode(tok, d->doc[d->n], d->len[d->n], &ids, &n) == MK_OK;
    for (int t = 0; t < NT; t++) {
        ok = ok && jobs[t].rc == MK_OK && jobs[t].n == n &&
             memcmp(jobs[t].ids, ids, n * sizeof *ids) == 0;
        free(jobs[t].ids);
    }
    if (started == NT) free(ids);
    tap_ok(ok, "%d threads encoding all demo text on one tokenizer agree with one thread", NT);
}

static void test_training(const demo_set *d, mk_tokenizer **trained)
{
    const char *const *docs = (const char *const *)d->doc;
    mk_tokenizer *tok, *again = NULL, *reloaded = NULL;
    *trained = NULL;
    if (!tap_ok(mk_tokenizer_bpe_train(docs, d->len, d->n, 1024, &tok) == MK_OK,
                "train a vocab of 1024 on the %d demo files", d->n))
        return;
    tap_ok(mk_tokenizer_vocab(tok) == 1025 && mk_tokenizer_eod(tok) == 1024,
           "trained: 1024 ranks, end-of-document 1024, vocab 1025");
    tap_ok(strncmp(mk_tokenizer_id(tok), "bpe:", 4) == 0 && strlen(mk_tokenizer_id(tok)) == 68,
           "trained: id is bpe: + 64 hex digits");
    tap_ok(mk_tokenizer_bpe_train(docs, d->len, d->n, 1024, &again) == MK_OK &&
               strcmp(mk_tokenizer_id(again), mk_tokenizer_id(tok)) == 0,
           "training is deterministic (same ranks, same id)");
    mk_tokenizer_free(&again);
    tap_ok(encodes_to(tok, "a\xff" "b", (int32_t[]){'a', 255, 'b'}, 3),
           "trained: ranks 0..255 are the bytes in byte order");

    char path[4096];
    tmp_path(path, sizeof path, "demo.ranks");
    size_t flen = 0;
    char *file = NULL;
    char fid[4 + 65] = "bpe:";
    tap_ok(mk_tokenizer_bpe_save(tok, path) == MK_OK && (file = read_file(path, &flen)),
           "trained: saved");
    if (file) mk_sha256_hex(file, flen, fid + 4);
    tap_ok(file && strcmp(fid, mk_tokenizer_id(tok)) == 0,
           "trained: the id is the sha256 of the saved file");
    free(file);
    if (tap_ok(mk_tokenizer_bpe_load(path, &reloaded) == MK_OK, "trained: reloaded")) {
        tap_ok(strcmp(mk_tokenizer_id(reloaded), mk_tokenizer_id(tok)) == 0,
               "reloaded: same id");
        int same = 1;
        for (int i = 0; i <= d->n; i++) same &= same_encoding(tok, reloaded, d->doc[i], d->len[i]);
        tap_ok(same, "reloaded: encodes the %d demo files identically", d->n);
        mk_tokenizer_free(&reloaded);
    }

    int32_t *ids;
    size_t n;
    int pr = d->prose;
    if (encode(tok, d->doc[pr], d->len[pr], &ids, &n) == MK_OK) {
        tap_ok(2 * n <= d->len[pr], "compression: %s is %zu bytes, %zu tokens (%.2f bytes/token)",
               d->name[pr], d->len[pr], n, (double)d->len[pr] / n);
        free(ids);
    }

    /* Edge cases of training. */
    mk_tokenizer *t256;
    if (tap_ok(mk_tokenizer_bpe_train(docs, d->len, d->n, 256, &t256) == MK_OK &&
                   mk_tokenizer_vocab(t256) == 257,
               "train 256: no merges, vocab 257")) {
        tap_ok(encodes_to(t256, "hi!", (int32_t[]){'h', 'i', '!'}, 3), "train 256: ids are bytes");
        mk_tokenizer_free(&t256);
    }
    tap_ok(mk_tokenizer_bpe_train(docs, d->len, d->n, 255, &t256) == MK_ERR_USAGE && !t256,
           "train 255: MK_ERR_USAGE");
    const char *tiny[] = {"ab ab abc"};
    size_t tlen[] = {9};
    mk_tokenizer *small;
    if (tap_ok(mk_tokenizer_bpe_train(tiny, tlen, 1, 1000, &small) == MK_OK,
               "train 1000 on 9 bytes: stops when no pair is left")) {
        /* pre-tokens "ab", " ab", " abc": ab (3), then " ab" (2), then " abc" (1) */
        tap_ok(mk_tokenizer_vocab(small) == 260, "tiny: 259 ranks (got %d)",
               mk_tokenizer_vocab(small) - 1);
        tap_ok(encodes_to(small, "ab ab abc", (int32_t[]){256, 257, 258}, 3), "tiny: merges as expected");
        mk_tokenizer_free(&small);
    }
    /* Ties: "ba" and "ab" both occur twice; "ab" < "ba", so it is rank 256. */
    const char *ties[] = {"ba", "ab", "ba", "ab"};
    size_t tielen[] = {2, 2, 2, 2};
    if (tap_ok(mk_tokenizer_bpe_train(ties, tielen, 4, 257, &small) == MK_OK, "train on ties")) {
        tap_ok(encodes_to(small, "ab ba", (int32_t[]){256, ' ', 'b', 'a'}, 4),
               "ties: the smaller pair of byte strings merges first");
        mk_tokenizer_free(&small);
    }
    *trained = tok;
}

/* ------------------------------------------------------------------------- round trips */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random bytes that mix ASCII words, whitespace, NULs, lone continuation bytes, valid and
 * truncated multi-byte characters and arbitrary bytes. */
static size_t random_text(uint64_t *s, char *out)
{
    static const char *const pieces[] = {
        "\xc3\xa4", "\xe6\x97\xa5", "\xf0\x9f\x98\x80", "\xe6\x97", "\xf0\x9f", "\xed\xa0\x80",
        "\xc0\xaf", "\xf4\x90\x80\x80", "'s", "'ll", " the", "  ", "\n\n", "\t", "123"};
    size_t len = rng_next(s) % 301, k = 0;
    while (k < len) {
        unsigned r = (unsigned)(rng_next(s) % 10);
        if (r < 3) out[k++] = "abcdefgh XYZ.,;!?"[rng_next(s) % 17];
        else if (r == 3) out[k++] = '\0';
        else if (r == 4) out[k++] = (char)(0x80 + rng_next(s) % 64);
        else if (r == 5 || r == 6) out[k++] = (char)(rng_next(s) % 256);
        else {
            const char *p = pieces[rng_next(s) % (sizeof pieces / sizeof *pieces)];
            for (; *p && k < len; p++) out[k++] = *p;
        }
    }
    return len;
}

static void test_roundtrips(const mk_tokenizer *bpe, const demo_set *d)
{
    mk_tokenizer *byte, *hand = NULL;
    char path[4096];
    mk_tokenizer_byte(&byte);
    tmp_path(path, sizeof path, "hand.ranks");
    mk_tokenizer_bpe_load(path, &hand);
    const mk_tokenizer *toks[] = {bpe, byte, hand};
    const char *names[] = {"bpe 1024", "byte", "hand-written bpe"};
    static const char *const scripts[] = {
        "Gr\xc3\xb6\xc3\x9f" "e, \xc3\x9c" "bermut und \xc3\x84pfel: sch\xc3\xb6n!",
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87\xe7\xab\xa0\xe3\x80\x82"
        "\xe4\xb8\xad\xe6\x96\x87\xe5\x8f\xa5\xe5\xad\x90",
        "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xeb\xac\xb8\xec\x9e\xa5",
        "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d"
        "\xf0\x9f\x91\xa7 \xf0\x9f\x87\xa9\xf0\x9f\x87\xaa \xe2\x9d\xa4\xef\xb8\x8f",
        "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xd0\xbc\xd0\xb8\xd1\x80! "
        "\xce\x93\xce\xb5\xce\xb9\xce\xac \xcf\x83\xce\xbf\xcf\x85",
        "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d"
        "\xe0\xa4\xa4\xe0\xa5\x87",
        "don't I'll we've  \t\n\n  x   \xc2\xa0\xe2\x80\x83 y\r\n",
    };
    static char buf[1 << 20];
    for (int t = 0; t < 3; t++) {
        if (!toks[t]) continue;
        int ok = 1;
        for (int i = 0; i <= d->n; i++) ok &= roundtrip(toks[t], d->doc[i], d->len[i]);
        tap_ok(ok, "%s: round trip of the %d demo files and their concatenation", names[t], d->n);
        ok = 1;
        for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++)
            ok &= roundtrip(toks[t], scripts[i], strlen(scripts[i]));
        tap_ok(ok, "%s: round trip of German, CJK, Korean, emoji, Cyrillic, Greek, Arabic, "
               "Hindi and whitespace", names[t]);
        uint64_t seed = 42;
        int bad = 0;
        for (int i = 0; i < 1000; i++) {
            size_t len = random_text(&seed, buf);
            if (!roundtrip(toks[t], buf, len) && bad++ == 0) tap_diag("random string %d fails", i);
        }
        tap_ok(bad == 0, "%s: round trip of 1000 random byte strings (%d fail)", names[t], bad);
        /* Long pre-tokens take the heap merge path; long runs stress PCRE2. */
        size_t n = 0;
        for (; n < 200000; n++) buf[n] = "thequickbrownfox"[n % 16];
        ok = roundtrip(toks[t], buf, n);
        memset(buf, ' ', n);
        ok &= roundtrip(toks[t], buf, n);
        for (size_t i = 0; i < n; i++) buf[i] = i % 3 ? '\xe6' : '\x97'; /* all invalid */
        ok &= roundtrip(toks[t], buf, n);
        tap_ok(ok, "%s: round trip of 200 kB long words, spaces and invalid bytes", names[t]);
    }
    mk_tokenizer_free(&byte);
    mk_tokenizer_free(&hand);
}

/* Pre-tokens over 256 bytes merge through a heap, shorter ones by linear scans. Both must
 * give tiktoken's result. No merge crosses a boundary between two final tokens, so the
 * merges on each side happen as if that side were alone: cutting a long word at token
 * boundaries into chunks of at most 256 bytes, and encoding each chunk (linear path), gives
 * the ids of the whole word (heap path). */
static int heap_matches_linear(const mk_tokenizer *tok, const char *word, size_t n)
{
    int32_t *whole, *part;
    size_t nw, np, len, cap = 0;
    char *bytes = NULL;
    if (encode(tok, word, n, &whole, &nw) != MK_OK) return 0;
    int ok = 1;
    size_t start = 0, pos = 0, k0 = 0; /* the chunk is word[start..pos), ids whole[k0..k) */
    for (size_t k = 0; k <= nw && ok; k++) {
        len = 0;
        if (k < nw) ok = mk_tokenizer_decode(tok, &whole[k], 1, &bytes, &len, &cap) == MK_OK;
        if (k == nw || pos + len - start > 256) {
            part = NULL;
            ok = ok && encode(tok, word + start, pos - start, &part, &np) == MK_OK;
            ok = ok && np == k - k0 && (np == 0 || memcmp(part, whole + k0, np * sizeof *part) == 0);
            free(part);
            start = pos;
            k0 = k;
        }
        pos += len;
    }
    free(bytes);
    free(whole);
    return ok && pos == n;
}

static void test_long_pieces(const mk_tokenizer *tok, const demo_set *d)
{
    static char word[5000];
    size_t n = 0;
    for (size_t i = 0; i < d->len[d->prose] && n < sizeof word; i++) {
        char c = d->doc[d->prose][i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) word[n++] = c;
    }
    int ok = heap_matches_linear(tok, word, n);
    uint64_t seed = 7;
    for (int rep = 0; rep < 20; rep++) {
        size_t len = 257 + rng_next(&seed) % 3000;
        for (size_t i = 0; i < len; i++) word[i] = "etaoinshr"[rng_next(&seed) % (rep % 8 + 2)];
        ok &= heap_matches_linear(tok, word, len);
    }
    tap_ok(ok, "long pre-tokens: the heap merge agrees with the linear merge");
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        printf("Bail out! cannot create a temporary directory\n");
        return 1;
    }
    test_byte();
    test_sha256();
    test_hand_written();
    test_malformed();
    static demo_set d;
    if (load_demo(&d)) {
        mk_tokenizer *bpe;
        test_training(&d, &bpe);
        if (bpe) {
            test_roundtrips(bpe, &d);
            test_threads(bpe, &d);
            test_long_pieces(bpe, &d);
        }
        mk_tokenizer_free(&bpe);
    } else {
        tap_ok(0, "demo files readable");
    }
    for (int i = 0; i <= d.n; i++) free(d.doc[i]);
    const char *files[] = {"hand.ranks", "hand-saved.ranks", "reversed.ranks", "bad.ranks",
                           "demo.ranks"};
    char path[4096];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        tmp_path(path, sizeof path, files[i]);
        unlink(path);
    }
    rmdir(tmpdir);
    return tap_done();
}
