/* mk_corpus.c - split moe-shard input files into documents (see mk_corpus.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_corpus.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mk_error.h"

mk_corpus_format mk_corpus_guess(const char *path, mk_corpus_format text_default)
{
    size_t n = strlen(path);
    if ((n >= 6 && strcmp(path + n - 6, ".jsonl") == 0) || (n >= 5 && strcmp(path + n - 5, ".json") == 0))
        return MK_CORPUS_JSONL;
    return text_default;
}

static int push_doc(mk_corpus_file *f, size_t *cap, const char *text, size_t len)
{
    if (len == 0) return MK_OK;
    if (f->ndocs == *cap) {
        size_t ncap = *cap ? 2 * *cap : 256;
        mk_doc *d = realloc(f->docs, ncap * sizeof *d);
        if (!d) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", f->path);
        f->docs = d;
        *cap = ncap;
    }
    f->docs[f->ndocs].text = text;
    f->docs[f->ndocs].len = len;
    f->ndocs++;
    return MK_OK;
}

static int split_blank(mk_corpus_file *f)
{
    const char *p = f->map, *end = p + f->size;
    size_t cap = 0;
    while (p < end) {
        while (p < end && *p == '\n') p++; /* empty lines between documents */
        const char *start = p, *last_end = p;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *line_end = nl ? nl : end;
            if (line_end == p) break; /* an empty line ends the document */
            last_end = line_end;
            p = nl ? nl + 1 : end;
        }
        MK_CHECK(push_doc(f, &cap, start, (size_t)(last_end - start)));
    }
    return MK_OK;
}

static int split_jsonl(mk_corpus_file *f, const char *field)
{
    const char *p = f->map, *end = p + f->size;
    size_t cap = 0, line = 0, used = 0;
    /* Decoded strings are never longer than their JSON source, so one arena of the file's
     * size holds them all and the document pointers stay valid. */
    f->arena = malloc(f->size ? f->size : 1);
    if (!f->arena) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", f->path);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        size_t len = (size_t)(le - p);
        int blank = 1;
        for (size_t i = 0; i < len; i++)
            if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') blank = 0;
        if (!blank) {
            json_error_t err;
            json_t *obj = json_loadb(p, len, JSON_ALLOW_NUL, &err);
            if (!obj) return MK_FAIL(MK_ERR_INPUT, "%s:%zu: bad JSON: %s", f->path, line, err.text);
            json_t *t = json_object_get(obj, field);
            if (!json_is_string(t)) {
                json_decref(obj);
                return MK_FAIL(MK_ERR_INPUT, "%s:%zu: no string field \"%s\"", f->path, line, field);
            }
            size_t tl = json_string_length(t);
            memcpy(f->arena + used, json_string_value(t), tl);
            json_decref(obj);
            int rc = push_doc(f, &cap, f->arena + used, tl);
            used += tl;
            if (rc) return rc;
        }
        p = nl ? nl + 1 : end;
    }
    return MK_OK;
}

int mk_corpus_load(const char *path, mk_corpus_format fmt, const char *text_field, mk_corpus_file *f)
{
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        int e = errno;
        mk_corpus_free(f);
        return MK_FAIL(MK_ERR_INPUT, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    int rc = MK_OK;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: not a regular file", path);
    else if (st.st_size == 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: empty file", path);
    else {
        f->size = (size_t)st.st_size;
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot map: %s", path, strerror(errno));
        }
    }
    close(fd);
    if (rc == MK_OK) {
        if (fmt == MK_CORPUS_JSONL) rc = split_jsonl(f, text_field);
        else if (fmt == MK_CORPUS_TEXT_FILE) { size_t cap = 0; rc = push_doc(f, &cap, f->map, f->size); }
        else rc = split_blank(f);
    }
    if (rc == MK_OK && f->ndocs == 0) rc = MK_FAIL(MK_ERR_INPUT, "%s: no documents (only empty ones)", path);
    if (rc) mk_corpus_free(f);
    return rc;
}

void mk_corpus_free(mk_corpus_file *f)
{
    if (f->map) munmap(f->map, f->size);
    free(f->docs);
    free(f->arena);
    free(f->path);
    memset(f, 0, sizeof *f);
}
