/* mk_corpus.h - documents of one input file of moe-shard.
 *
 * text/blank  documents are separated by one or more empty lines; a document is its lines
 *             joined with "\n", without the newline that ends its last line. "a\nb\n\nc\n"
 *             holds "a\nb" and "c".
 * text/file   the whole file is one document (byte for byte).
 * jsonl       one JSON object per line; the document is the string in field text_field.
 *             Empty lines are skipped; anything else that is not such an object is an error
 *             naming the file and line.
 * Empty documents are dropped.
 */
#ifndef MK_CORPUS_H
#define MK_CORPUS_H

#include <stddef.h>

typedef enum { MK_CORPUS_TEXT_BLANK, MK_CORPUS_TEXT_FILE, MK_CORPUS_JSONL } mk_corpus_format;

typedef struct mk_doc { const char *text; size_t len; } mk_doc;

typedef struct mk_corpus_file {
    char *path;
    void *map;          /* the file, mapped read-only */
    size_t size;
    mk_doc *docs;
    size_t ndocs;
    char *arena;        /* decoded JSONL strings */
} mk_corpus_file;

/* Format from the file name: .jsonl or .json -> jsonl, anything else -> text_default. */
mk_corpus_format mk_corpus_guess(const char *path, mk_corpus_format text_default);

/* Map and split path. MK_ERR_INPUT for a missing, unreadable or empty file, or bad JSONL. */
int mk_corpus_load(const char *path, mk_corpus_format fmt, const char *text_field, mk_corpus_file *out);
void mk_corpus_free(mk_corpus_file *f);

#endif
