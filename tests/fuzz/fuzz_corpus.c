/* fuzz_corpus.c - JSONL and text corpus ingest (lib/mk_corpus.c).
 *
 * Input: one byte choosing the format (text/blank, text/file, jsonl with field "text" or
 * "body"), then the file. Properties: a load either fails with MK_ERR_INPUT or gives at least
 * one document, none empty; text/file is the whole file; text/blank documents are slices of
 * the file with no empty line inside and no newline at either end, in file order; a jsonl
 * document is the field of the line it came from, which Jansson parses again to the same
 * bytes. */
#include "fuzz_common.h"

#include <jansson.h>

#include "mk_corpus.h"
#include "mk_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 16) return 0;
    int mode = data[0] % 4;
    mk_corpus_format fmt = mode == 0 ? MK_CORPUS_TEXT_BLANK : mode == 1 ? MK_CORPUS_TEXT_FILE : MK_CORPUS_JSONL;
    const char *field = mode == 3 ? "body" : "text";
    data++;
    size--;
    char path[300];
    fuzz_path(path, sizeof path, fmt == MK_CORPUS_JSONL ? "c.jsonl" : "c.txt");
    fuzz_write(path, data, size);

    mk_corpus_file f;
    int rc = mk_corpus_load(path, fmt, field, &f);
    if (rc != MK_OK) {
        FUZZ_ASSERT(rc == MK_ERR_INPUT || rc == MK_ERR_NOMEM, "load failed with %d", rc);
        FUZZ_ASSERT(f.docs == NULL && f.map == NULL && f.arena == NULL && f.path == NULL, "failed load left state");
        return 0;
    }
    FUZZ_ASSERT(f.ndocs >= 1 && f.size == size, "%zu documents, size %zu", f.ndocs, f.size);
    const char *map = f.map;
    const char *prev_end = map;
    size_t total = 0;
    for (size_t i = 0; i < f.ndocs; i++) {
        const mk_doc *d = &f.docs[i];
        FUZZ_ASSERT(d->len > 0, "empty document %zu", i);
        total += d->len;
        if (fmt == MK_CORPUS_JSONL) {
            FUZZ_ASSERT(d->text >= f.arena && d->text + d->len <= f.arena + size, "document %zu outside the arena", i);
            continue;
        }
        FUZZ_ASSERT(d->text >= map && d->text + d->len <= map + size, "document %zu outside the file", i);
        if (fmt == MK_CORPUS_TEXT_FILE) {
            FUZZ_ASSERT(f.ndocs == 1 && d->text == map && d->len == size, "text/file is not the whole file");
            continue;
        }
        FUZZ_ASSERT(d->text >= prev_end, "document %zu out of order or overlapping", i);
        FUZZ_ASSERT(d->text[0] != '\n' && d->text[d->len - 1] != '\n', "document %zu has a newline at an end", i);
        for (size_t k = 0; k + 1 < d->len; k++)
            FUZZ_ASSERT(!(d->text[k] == '\n' && d->text[k + 1] == '\n'), "document %zu holds an empty line", i);
        /* Nothing but newlines between documents. */
        for (const char *p = prev_end; p < d->text; p++)
            FUZZ_ASSERT(*p == '\n', "byte %zu between documents dropped", (size_t)(p - map));
        prev_end = d->text + d->len;
    }
    if (fmt == MK_CORPUS_JSONL) {
        FUZZ_ASSERT(total <= size, "decoded %zu bytes from a %zu-byte file", total, size);
        /* Line by line: each non-blank line gives one document (or none if the string is empty). */
        const char *p = map, *end = map + size;
        size_t k = 0;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *le = nl ? nl : end;
            json_t *o = json_loadb(p, (size_t)(le - p), JSON_ALLOW_NUL, NULL);
            if (o) {
                json_t *t = json_object_get(o, field);
                FUZZ_ASSERT(json_is_string(t), "accepted a line without the field");
                size_t tl = json_string_length(t);
                if (tl > 0) {
                    FUZZ_ASSERT(k < f.ndocs && f.docs[k].len == tl &&
                                memcmp(f.docs[k].text, json_string_value(t), tl) == 0,
                                "document %zu differs from its line", k);
                    k++;
                }
                json_decref(o);
            }
            p = nl ? nl + 1 : end;
        }
        FUZZ_ASSERT(k == f.ndocs, "%zu documents, %zu from the lines", f.ndocs, k);
    } else if (fmt == MK_CORPUS_TEXT_BLANK) {
        for (const char *p = prev_end; p < map + size; p++)
            FUZZ_ASSERT(*p == '\n', "trailing byte %zu dropped", (size_t)(p - map));
    }
    mk_corpus_free(&f);
    return 0;
}
