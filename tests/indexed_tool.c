/* indexed_tool.c - text in and out of mk_indexed, for the interoperability test with
 * tests/megatron_ref.py (same text format: one document per line, token ids separated by
 * single spaces, an empty line for an empty document).
 *
 *   indexed_tool write PREFIX DTYPE VOCAB < docs.txt    DTYPE: uint8 int8 int16 uint16 int32 int64
 *   indexed_tool read PREFIX > docs.txt
 *
 * mk_indexed.h exposes sequences, not document_indices, so `read` prints one line per
 * sequence and refuses files where sequences and documents differ (moekit and Megatron
 * without sentence splitting write one sequence per document). Exit status: the MK_ERR_*
 * code of the failure, 0 on success.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"
#include "mk_indexed.h"

static int dtype_code(const char *name)
{
    static const struct { const char *name; int code; } t[] = {
        {"uint8", MK_DTYPE_UINT8}, {"int8", MK_DTYPE_INT8}, {"int16", MK_DTYPE_INT16},
        {"uint16", MK_DTYPE_UINT16}, {"int32", MK_DTYPE_INT32}, {"int64", MK_DTYPE_INT64}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(name, t[i].name) == 0) return t[i].code;
    return 0;
}

/* Parse the space-separated ids of one line into *tok (grown as needed). */
static int parse_line(char *line, long lineno, int32_t **tok, size_t *cap, size_t *n)
{
    *n = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p == 0) return MK_OK;
        errno = 0;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno != 0 || v < INT32_MIN || v > INT32_MAX ||
            (*end != 0 && *end != ' ' && *end != '\t' && *end != '\r'))
            return MK_FAIL(MK_ERR_INPUT, "stdin line %ld: bad token id near \"%.20s\"", lineno, p);
        if (*n == *cap) {
            size_t c = *cap ? 2 * *cap : 256;
            int32_t *t = realloc(*tok, c * sizeof *t);
            if (!t) return MK_FAIL(MK_ERR_NOMEM, "stdin line %ld: out of memory", lineno);
            *tok = t;
            *cap = c;
        }
        (*tok)[(*n)++] = (int32_t)v;
        p = end;
    }
}

static int cmd_write(const char *prefix, const char *dtype_s, const char *vocab_s)
{
    int dtype = dtype_code(dtype_s);
    if (!dtype) return MK_FAIL(MK_ERR_USAGE, "unknown dtype '%s'", dtype_s);
    char *end;
    errno = 0;
    long vocab = strtol(vocab_s, &end, 10);
    if (*vocab_s == 0 || *end != 0 || errno != 0 || vocab < 1 || vocab > INT_MAX)
        return MK_FAIL(MK_ERR_USAGE, "bad vocabulary size '%s'", vocab_s);
    mk_indexed_writer *w;
    MK_CHECK(mk_indexed_writer_open(prefix, dtype, (int)vocab, &w));
    char *line = NULL;
    size_t linecap = 0, cap = 0, n = 0;
    int32_t *tok = NULL;
    long lineno = 0;
    int rc = MK_OK;
    ssize_t len;
    while ((len = getline(&line, &linecap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') line[len - 1] = 0;
        MK_CHECK_GOTO(rc, parse_line(line, lineno, &tok, &cap, &n), out);
        MK_CHECK_GOTO(rc, mk_indexed_writer_add(w, tok, n), out);
    }
    if (ferror(stdin)) {
        rc = MK_FAIL(MK_ERR_INPUT, "stdin: read error: %s", strerror(errno));
        goto out;
    }
    rc = mk_indexed_writer_finish(w);
    if (rc == MK_OK) w = NULL;
out:
    mk_indexed_writer_abort(w);
    free(line);
    free(tok);
    return rc;
}

static int cmd_read(const char *prefix)
{
    mk_indexed *d;
    MK_CHECK(mk_indexed_open(prefix, &d));
    int rc = MK_OK;
    int32_t *tok = NULL;
    if (mk_indexed_documents(d) != mk_indexed_sequences(d)) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: %llu documents in %llu sequences; this tool prints "
                     "one line per sequence and needs one sequence per document", prefix,
                     (unsigned long long)mk_indexed_documents(d),
                     (unsigned long long)mk_indexed_sequences(d));
        goto out;
    }
    uint64_t at = 0;
    for (uint64_t i = 0; i < mk_indexed_sequences(d); i++) {
        size_t n = (size_t)mk_indexed_seq_length(d, i);
        int32_t *t = realloc(tok, (n ? n : 1) * sizeof *t);
        if (!t) {
            rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", prefix);
            goto out;
        }
        tok = t;
        MK_CHECK_GOTO(rc, mk_indexed_read(d, at, n, tok), out);
        for (size_t k = 0; k < n; k++) printf(k ? " %d" : "%d", (int)tok[k]);
        putchar('\n');
        at += n;
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = MK_FAIL(MK_ERR_IO, "stdout: write error");
out:
    free(tok);
    mk_indexed_close(&d);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "write") == 0) return cmd_write(argv[2], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[1], "read") == 0) return cmd_read(argv[2]);
    fprintf(stderr, "usage: indexed_tool write PREFIX DTYPE VOCAB < docs.txt\n"
                    "       indexed_tool read PREFIX > docs.txt\n");
    return MK_ERR_USAGE;
}
