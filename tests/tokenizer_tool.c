/* tokenizer_tool.c - command-line access to the BPE tokenizer for the tiktoken parity test
 * (test_tiktoken.sh) and the tokenizer benchmark.
 *
 *   tokenizer_tool train VOCAB OUT.ranks FILE...   train on the files (one document each), save
 *   tokenizer_tool encode RANKS FILE               print FILE's ids, space-separated, one line
 *   tokenizer_tool bench RANKS FILE...             encode speed: "moekit: MB/s=... tokens/s=..."
 *                                                  (one thread, best of 3)
 * The exit status is the moekit status code (mk_error.h).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_error.h"
#include "mk_tokenizer.h"

static const char usage[] =
    "usage: tokenizer_tool train VOCAB OUT.ranks FILE...\n"
    "       tokenizer_tool encode RANKS FILE\n"
    "       tokenizer_tool bench RANKS FILE...\n";

static int read_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return MK_FAIL(MK_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    int rc = MK_OK;
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *b = realloc(buf, cap * 2);
        if (!b) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = b;
        cap *= 2;
    }
    if (!buf) rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory reading the file", path);
    else if (ferror(f)) rc = MK_FAIL(MK_ERR_INPUT, "%s: read error: %s", path, strerror(errno));
    fclose(f);
    if (rc != MK_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return MK_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Read nfiles files; on failure everything read so far is freed. */
static int read_files(char *const *paths, int nfiles, char ***docs, size_t **lens)
{
    *docs = calloc((size_t)nfiles, sizeof **docs);
    *lens = calloc((size_t)nfiles, sizeof **lens);
    if (!*docs || !*lens) return MK_FAIL(MK_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nfiles; i++) MK_CHECK(read_file(paths[i], &(*docs)[i], &(*lens)[i]));
    return MK_OK;
}

static void free_files(char **docs, size_t *lens, int nfiles)
{
    for (int i = 0; docs && i < nfiles; i++) free(docs[i]);
    free(docs);
    free(lens);
}

static int cmd_train(int vocab, const char *out, char *const *paths, int nfiles)
{
    char **docs;
    size_t *lens;
    mk_tokenizer *tok = NULL;
    int rc = read_files(paths, nfiles, &docs, &lens);
    double t0 = now_s();
    if (rc == MK_OK) rc = mk_tokenizer_bpe_train((const char *const *)docs, lens, (size_t)nfiles,
                                                 vocab, &tok);
    double t1 = now_s();
    if (rc == MK_OK) rc = mk_tokenizer_bpe_save(tok, out);
    if (rc == MK_OK) {
        size_t bytes = 0;
        for (int i = 0; i < nfiles; i++) bytes += lens[i];
        printf("trained %d ranks on %zu bytes in %.2f s: %s\n", mk_tokenizer_vocab(tok) - 1, bytes,
               t1 - t0, mk_tokenizer_id(tok));
    }
    mk_tokenizer_free(&tok);
    free_files(docs, lens, nfiles);
    return rc;
}

static int cmd_encode(const char *ranks, const char *path)
{
    mk_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0, n = 0, cap = 0;
    int32_t *ids = NULL;
    int rc = mk_tokenizer_bpe_load(ranks, &tok);
    if (rc == MK_OK) rc = read_file(path, &text, &len);
    if (rc == MK_OK) rc = mk_tokenizer_encode(tok, text, len, &ids, &n, &cap);
    if (rc == MK_OK) {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)ids[i]);
        printf("\n");
        if (fflush(stdout) != 0) rc = MK_FAIL(MK_ERR_IO, "writing the ids: %s", strerror(errno));
    }
    free(ids);
    free(text);
    mk_tokenizer_free(&tok);
    return rc;
}

static int cmd_bench(const char *ranks, char *const *paths, int nfiles)
{
    char **docs;
    size_t *lens;
    mk_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, bytes = 0, tokens = 0;
    double best = 1e300;
    int rc = read_files(paths, nfiles, &docs, &lens);
    if (rc == MK_OK) rc = mk_tokenizer_bpe_load(ranks, &tok);
    for (int rep = 0; rep < 3 && rc == MK_OK; rep++) {
        bytes = tokens = 0;
        double t0 = now_s();
        for (int i = 0; i < nfiles && rc == MK_OK; i++) {
            rc = mk_tokenizer_encode(tok, docs[i], lens[i], &ids, &n, &cap);
            bytes += lens[i];
            tokens += n;
        }
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    if (rc == MK_OK)
        printf("moekit: MB/s=%.2f tokens/s=%.0f\n", bytes / best / 1e6, tokens / best);
    free(ids);
    mk_tokenizer_free(&tok);
    free_files(docs, lens, nfiles);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "train") == 0) {
        char *end;
        long vocab = strtol(argv[2], &end, 10);
        if (*end || vocab < 256 || vocab > 1 << 30)
            return MK_FAIL(MK_ERR_USAGE, "train: VOCAB must be a number >= 256, not '%s'", argv[2]);
        return cmd_train((int)vocab, argv[3], argv + 4, argc - 4);
    }
    if (argc == 4 && strcmp(argv[1], "encode") == 0) return cmd_encode(argv[2], argv[3]);
    if (argc >= 4 && strcmp(argv[1], "bench") == 0) return cmd_bench(argv[2], argv + 3, argc - 3);
    fputs(usage, stderr);
    return MK_ERR_USAGE;
}
