/* mk_indexed.c - Megatron-LM indexed datasets, MMIDIDX version 1 (see mk_indexed.h).
 *
 * Writing: tokens go to prefix.bin.tmp through one buffer; the lengths and byte pointers of
 * the sequences stay in memory until finish writes prefix.idx.tmp. Both files are fsynced
 * and renamed into place, .bin first and .idx last, then the directory is fsynced: the .idx
 * is the commit record, so a reader never sees a final .idx whose .bin is not in place.
 *
 * Reading: both files are mapped read-only and every field is checked against the file
 * sizes before anything else is read, with arithmetic that cannot overflow, because the
 * .idx of a damaged or hostile file can hold any 64-bit counts. The .idx arrays start at
 * offset 34 and are therefore misaligned; fields are loaded with memcpy, never through a
 * cast pointer.
 *
 * Byte order: the format is little-endian and this file stores and loads host integers
 * directly, so it requires a little-endian host (x86_64, aarch64). The check below makes
 * a big-endian build fail instead of silently writing byte-swapped datasets.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_indexed.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mk_error.h"
#include "mk_fs.h"

#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__) || \
    __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mk_indexed.c stores the little-endian MMIDIDX fields as host integers: little-endian hosts only"
#endif

static const char mk_idx_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
enum {
    MK_IDX_MAGIC_LEN = 9,
    MK_IDX_OFF_VERSION = 9,
    MK_IDX_OFF_DTYPE = 17,
    MK_IDX_OFF_SEQS = 18,
    MK_IDX_OFF_DOCS = 26,
    MK_IDX_HEADER = 34,
    MK_IDX_WBUF = 1 << 20 /* write buffer: large enough that write(2) calls are rare */
};

/* ------------------------------------------------------------------ dtypes */

static const char *dtype_name(int dtype)
{
    switch (dtype) {
    case 1: return "uint8";
    case 2: return "int8";
    case 3: return "int16";
    case 4: return "int32";
    case 5: return "int64";
    case 6: return "float64";
    case 7: return "float32";
    case 8: return "uint16";
    default: return "unknown";
    }
}

int mk_indexed_dtype_for_vocab(int vocab)
{
    return vocab < 65500 ? MK_DTYPE_UINT16 : MK_DTYPE_INT32;
}

size_t mk_indexed_dtype_size(int dtype)
{
    switch (dtype) {
    case MK_DTYPE_UINT8:
    case MK_DTYPE_INT8: return 1;
    case MK_DTYPE_INT16:
    case MK_DTYPE_UINT16: return 2;
    case MK_DTYPE_INT32: return 4;
    case MK_DTYPE_INT64: return 8;
    default: return 0; /* float64, float32 and unknown codes hold no token ids */
    }
}

/* Largest vocabulary whose ids 0..vocab-1 all fit the dtype. */
static int64_t dtype_max_vocab(int dtype)
{
    switch (dtype) {
    case MK_DTYPE_UINT8: return 256;
    case MK_DTYPE_INT8: return 128;
    case MK_DTYPE_INT16: return 32768;
    case MK_DTYPE_UINT16: return 65536;
    default: return INT64_MAX; /* int32, int64: every int vocabulary fits */
    }
}

/* ------------------------------------------------------------------ overflow-safe u64 */

static int add_u64(uint64_t a, uint64_t b, uint64_t *r)
{
    if (b > UINT64_MAX - a) return 0;
    *r = a + b;
    return 1;
}

static uint64_t ld_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static int64_t ld_i64(const unsigned char *p) { int64_t v; memcpy(&v, p, 8); return v; }
static int32_t ld_i32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* prefix + suffix in fresh memory, or NULL. */
static char *path_cat(const char *prefix, const char *suffix)
{
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (!s) return NULL;
    memcpy(s, prefix, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

/* ================================================================== writing */

struct mk_indexed_writer {
    char *bin_path, *idx_path, *bin_tmp, *idx_tmp, *dir;
    int bin_fd, idx_fd;
    int dtype, vocab;
    size_t esz;
    unsigned char *buf; /* MK_IDX_WBUF bytes, shared: .bin is complete before .idx starts */
    size_t buf_used;
    uint64_t bin_bytes; /* bytes of .bin so far, buffered ones included */
    int32_t *lengths;
    int64_t *pointers;
    uint64_t nseq, cap;
    int failed;         /* an I/O error happened: the files are gone, only abort remains */
    int idx_created, bin_renamed, idx_renamed; /* what discard_files has to undo */
    int discarded;
};

static void discard_files(mk_indexed_writer *w);

static int write_all(int fd, const unsigned char *p, size_t n, const char *path)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            /* write(2) returning 0 for a regular file means no progress is possible. */
            int e = k < 0 ? errno : ENOSPC;
            return MK_FAIL(MK_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
        p += k;
        n -= (size_t)k;
    }
    return MK_OK;
}

static int wbuf_flush(mk_indexed_writer *w, int fd, const char *path)
{
    int rc = write_all(fd, w->buf, w->buf_used, path);
    w->buf_used = 0;
    return rc;
}

static int wbuf_put(mk_indexed_writer *w, int fd, const char *path, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        if (w->buf_used == MK_IDX_WBUF) MK_CHECK(wbuf_flush(w, fd, path));
        size_t k = MK_IDX_WBUF - w->buf_used;
        if (k > n) k = n;
        memcpy(w->buf + w->buf_used, p, k);
        w->buf_used += k;
        p += k;
        n -= k;
    }
    return MK_OK;
}

static void writer_free(mk_indexed_writer *w)
{
    if (w->bin_fd >= 0) close(w->bin_fd);
    if (w->idx_fd >= 0) close(w->idx_fd);
    free(w->bin_path);
    free(w->idx_path);
    free(w->bin_tmp);
    free(w->idx_tmp);
    free(w->dir);
    free(w->buf);
    free(w->lengths);
    free(w->pointers);
    free(w);
}

/* The directory holding prefix's files, for the fsync that makes the renames durable. */
static char *dir_of(const char *prefix)
{
    const char *slash = strrchr(prefix, '/');
    if (!slash) return path_cat(".", "");
    if (slash == prefix) return path_cat("/", "");
    char *d = malloc((size_t)(slash - prefix) + 1);
    if (!d) return NULL;
    memcpy(d, prefix, (size_t)(slash - prefix));
    d[slash - prefix] = 0;
    return d;
}

int mk_indexed_writer_open(const char *prefix, int dtype, int vocab, mk_indexed_writer **out)
{
    *out = NULL;
    if (!prefix || !*prefix) return MK_FAIL(MK_ERR_USAGE, "indexed dataset: empty output prefix");
    size_t esz = mk_indexed_dtype_size(dtype);
    if (esz == 0)
        return MK_FAIL(MK_ERR_USAGE, "%s: dtype code %d (%s) cannot hold token ids; use uint16 "
                       "(8) or int32 (4)", prefix, dtype, dtype_name(dtype));
    if (vocab < 1)
        return MK_FAIL(MK_ERR_USAGE, "%s: vocabulary size %d, must be at least 1", prefix, vocab);
    if ((int64_t)vocab > dtype_max_vocab(dtype))
        return MK_FAIL(MK_ERR_USAGE, "%s: a vocabulary of %d tokens does not fit dtype %s "
                       "(at most %lld token ids); use int32", prefix, vocab, dtype_name(dtype),
                       (long long)dtype_max_vocab(dtype));

    mk_indexed_writer *w = calloc(1, sizeof *w);
    if (!w) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", prefix);
    w->bin_fd = w->idx_fd = -1;
    w->dtype = dtype;
    w->vocab = vocab;
    w->esz = esz;
    w->bin_path = path_cat(prefix, ".bin");
    w->idx_path = path_cat(prefix, ".idx");
    w->bin_tmp = path_cat(prefix, ".bin.tmp");
    w->idx_tmp = path_cat(prefix, ".idx.tmp");
    w->dir = dir_of(prefix);
    w->buf = malloc(MK_IDX_WBUF);
    if (!w->bin_path || !w->idx_path || !w->bin_tmp || !w->idx_tmp || !w->dir || !w->buf) {
        writer_free(w);
        return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", prefix);
    }
    /* Exclusive and not through a symlink: a link planted at the name is refused. */
    int rc = mk_fs_create_tmp(w->bin_tmp, &w->bin_fd);
    if (rc != MK_OK) {
        writer_free(w);
        return rc;
    }
    *out = w;
    return MK_OK;
}

static void store_token(unsigned char *dst, int dtype, int32_t t)
{
    switch (dtype) {
    case MK_DTYPE_UINT8: { uint8_t v = (uint8_t)t; memcpy(dst, &v, 1); break; }
    case MK_DTYPE_INT8: { int8_t v = (int8_t)t; memcpy(dst, &v, 1); break; }
    case MK_DTYPE_INT16: { int16_t v = (int16_t)t; memcpy(dst, &v, 2); break; }
    case MK_DTYPE_UINT16: { uint16_t v = (uint16_t)t; memcpy(dst, &v, 2); break; }
    case MK_DTYPE_INT32: memcpy(dst, &t, 4); break;
    default: { int64_t v = t; memcpy(dst, &v, 8); break; } /* int64 */
    }
}

static int grow_arrays(mk_indexed_writer *w)
{
    if (w->nseq < w->cap) return MK_OK;
    uint64_t cap = w->cap ? 2 * w->cap : 1024;
    if (cap > SIZE_MAX / sizeof(int64_t))
        return MK_FAIL(MK_ERR_NOMEM, "%s: too many sequences for this machine", w->idx_tmp);
    int32_t *l = realloc(w->lengths, (size_t)cap * sizeof *l);
    if (l) w->lengths = l;
    int64_t *p = l ? realloc(w->pointers, (size_t)cap * sizeof *p) : NULL;
    if (!p) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory at sequence %llu", w->idx_tmp,
                           (unsigned long long)w->nseq);
    w->pointers = p;
    w->cap = cap;
    return MK_OK;
}

int mk_indexed_writer_add(mk_indexed_writer *w, const int32_t *tokens, size_t n)
{
    if (w->failed)
        return MK_FAIL(MK_ERR_IO, "%s: the writer failed earlier; only abort is possible",
                       w->bin_tmp);
    /* Check the whole document first, so a rejected document leaves the files untouched and
     * the caller may skip it and go on. */
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= w->vocab)
            return MK_FAIL(MK_ERR_INPUT, "%s: document %llu, token %zu: id %d is outside the "
                           "vocabulary 0..%d", w->bin_tmp, (unsigned long long)w->nseq, i,
                           (int)tokens[i], w->vocab - 1);
    if (n > (size_t)INT32_MAX)
        return MK_FAIL(MK_ERR_INPUT, "%s: document %llu has %zu tokens; sequence_lengths are "
                       "int32, so a document holds at most %d", w->bin_tmp,
                       (unsigned long long)w->nseq, n, (int)INT32_MAX);
    uint64_t bytes = (uint64_t)n * w->esz, end;
    if (!add_u64(w->bin_bytes, bytes, &end) || end > (uint64_t)INT64_MAX)
        return MK_FAIL(MK_ERR_INPUT, "%s: more than 2^63-1 bytes; sequence_pointers are int64",
                       w->bin_tmp);
    MK_CHECK(grow_arrays(w));

    for (size_t i = 0; i < n; i++) {
        if (w->buf_used + w->esz > MK_IDX_WBUF) {
            int rc = wbuf_flush(w, w->bin_fd, w->bin_tmp);
            if (rc != MK_OK) {
                w->failed = 1;
                discard_files(w);
                return mk_trace(rc, __FILE__, __LINE__, __func__);
            }
        }
        store_token(w->buf + w->buf_used, w->dtype, tokens[i]);
        w->buf_used += w->esz;
    }
    w->lengths[w->nseq] = (int32_t)n;
    w->pointers[w->nseq] = (int64_t)w->bin_bytes;
    w->nseq++;
    w->bin_bytes = end;
    return MK_OK;
}

uint64_t mk_indexed_writer_bytes(const mk_indexed_writer *w) { return w->bin_bytes; }

/* fsync then close, reporting either failure: close can be where NFS reports a lost write. */
static int sync_close(int *fd, const char *path)
{
    int rc = MK_OK;
    if (fsync(*fd) != 0)
        rc = MK_FAIL(MK_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (close(*fd) != 0 && rc == MK_OK)
        rc = MK_FAIL(MK_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    *fd = -1;
    return rc;
}

static int write_index(mk_indexed_writer *w)
{
    MK_CHECK(mk_fs_create_tmp(w->idx_tmp, &w->idx_fd));
    w->idx_created = 1;

    unsigned char head[MK_IDX_HEADER];
    uint64_t version = 1, nseq = w->nseq, ndoc = w->nseq + 1;
    memcpy(head, mk_idx_magic, MK_IDX_MAGIC_LEN);
    memcpy(head + MK_IDX_OFF_VERSION, &version, 8);
    head[MK_IDX_OFF_DTYPE] = (unsigned char)w->dtype;
    memcpy(head + MK_IDX_OFF_SEQS, &nseq, 8);
    memcpy(head + MK_IDX_OFF_DOCS, &ndoc, 8);
    int fd = w->idx_fd;
    const char *p = w->idx_tmp;
    MK_CHECK(wbuf_put(w, fd, p, head, sizeof head));
    if (w->nseq > 0) {
        MK_CHECK(wbuf_put(w, fd, p, w->lengths, (size_t)w->nseq * sizeof *w->lengths));
        MK_CHECK(wbuf_put(w, fd, p, w->pointers, (size_t)w->nseq * sizeof *w->pointers));
    }
    /* One sequence per document: document i ends at sequence i+1. */
    for (uint64_t i = 0; i <= w->nseq; i++) {
        int64_t v = (int64_t)i;
        MK_CHECK(wbuf_put(w, fd, p, &v, sizeof v));
    }
    MK_CHECK(wbuf_flush(w, fd, p));
    return sync_close(&w->idx_fd, p);
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = MK_OK;
    /* EINVAL: the file system cannot sync directories; the renames are as durable as it gets. */
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = MK_FAIL(MK_ERR_IO, "%s: fsync of the directory failed: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

static int finish(mk_indexed_writer *w)
{
    if (w->failed)
        return MK_FAIL(MK_ERR_IO, "%s: the writer failed earlier; only abort is possible",
                       w->bin_tmp);
    MK_CHECK(wbuf_flush(w, w->bin_fd, w->bin_tmp));
    MK_CHECK(sync_close(&w->bin_fd, w->bin_tmp));
    MK_CHECK(write_index(w));
    if (rename(w->bin_tmp, w->bin_path) != 0)
        return MK_FAIL(MK_ERR_IO, "%s: cannot rename to %s: %s", w->bin_tmp, w->bin_path,
                       strerror(errno));
    w->bin_renamed = 1;
    if (rename(w->idx_tmp, w->idx_path) != 0)
        return MK_FAIL(MK_ERR_IO, "%s: cannot rename to %s: %s", w->idx_tmp, w->idx_path,
                       strerror(errno));
    w->idx_renamed = 1;
    return sync_dir(w->dir);
}

/* Close the files and remove everything this writer created, once. A finish that failed
 * after its first rename leaves a new .bin beside an older .idx (or a pair whose directory
 * entries are not durable), so what was already moved into place goes too, .idx first
 * because it is the file readers trust. */
static void discard_files(mk_indexed_writer *w)
{
    if (w->bin_fd >= 0) close(w->bin_fd);
    if (w->idx_fd >= 0) close(w->idx_fd);
    w->bin_fd = w->idx_fd = -1;
    if (w->discarded) return;
    w->discarded = 1;
    if (w->idx_renamed) unlink(w->idx_path);
    if (w->bin_renamed) unlink(w->bin_path);
    if (w->idx_created && !w->idx_renamed) unlink(w->idx_tmp);
    if (!w->bin_renamed) unlink(w->bin_tmp);
}

int mk_indexed_writer_finish(mk_indexed_writer *w)
{
    int rc = finish(w);
    if (rc != MK_OK) {
        /* The files go now, so a caller that drops w without aborting leaves none behind
         * (only w's memory, which abort frees). */
        w->failed = 1;
        discard_files(w);
        return mk_trace(rc, __FILE__, __LINE__, __func__);
    }
    writer_free(w);
    return MK_OK;
}

void mk_indexed_writer_abort(mk_indexed_writer *w)
{
    if (!w) return;
    discard_files(w);
    writer_free(w);
}

/* ================================================================== reading */

struct mk_indexed {
    char *bin_path, *idx_path;
    const unsigned char *idx, *bin; /* mappings; bin is NULL for an empty .bin */
    size_t idx_size, bin_size;
    int dtype;
    size_t esz;
    uint64_t nseq, ndoc_entries, ntok;
    const unsigned char *lengths, *pointers, *docs; /* arrays inside idx, unaligned */
    int64_t max_token;
};

/* Map path read-only; a 0-byte file gives *p = NULL (mmap refuses length 0). A file changed
 * by another process while mapped is outside what any reader can defend against. */
static int map_file(const char *path, const unsigned char **p, size_t *size)
{
    *p = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return MK_FAIL(MK_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = MK_OK;
    if (fstat(fd, &st) != 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: not a regular file", path);
    else if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: %lld bytes, too large to map on this machine", path,
                     (long long)st.st_size);
    else if (st.st_size > 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED)
            rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot map: %s", path, strerror(errno));
        else {
            *p = m;
            *size = (size_t)st.st_size;
        }
    }
    close(fd);
    return rc;
}

/* Header, sizes and the three arrays. d->idx and d->bin are mapped. */
static int check_index(mk_indexed *d)
{
    const char *ip = d->idx_path, *bp = d->bin_path;
    const unsigned char *x = d->idx;
    if (d->idx_size < MK_IDX_HEADER)
        return MK_FAIL(MK_ERR_INPUT, "%s: %zu bytes, shorter than the %d-byte MMIDIDX header",
                       ip, d->idx_size, MK_IDX_HEADER);
    if (memcmp(x, mk_idx_magic, MK_IDX_MAGIC_LEN) != 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: bad magic at byte 0 (want \"MMIDIDX\\0\\0\"): not a "
                       "Megatron indexed dataset", ip);
    uint64_t version = ld_u64(x + MK_IDX_OFF_VERSION);
    if (version != 1)
        return MK_FAIL(MK_ERR_INPUT, "%s: version %llu at byte %d, only version 1 is supported",
                       ip, (unsigned long long)version, MK_IDX_OFF_VERSION);
    d->dtype = x[MK_IDX_OFF_DTYPE];
    d->esz = mk_indexed_dtype_size(d->dtype);
    if (d->esz == 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: dtype code %d (%s) at byte %d: token ids must be an "
                       "integer type", ip, d->dtype, dtype_name(d->dtype), MK_IDX_OFF_DTYPE);
    uint64_t S = ld_u64(x + MK_IDX_OFF_SEQS), D1 = ld_u64(x + MK_IDX_OFF_DOCS);
    d->nseq = S;
    d->ndoc_entries = D1;
    if (D1 == 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: document_count 0 at byte %d; document_indices holds "
                       "at least its leading 0", ip, MK_IDX_OFF_DOCS);

    /* Exact size 34 + 12 S + 8 D1, plus S bytes when sequence_modes is present. Peel the
     * terms off the remaining size so nothing is multiplied out of range. */
    uint64_t rest = (uint64_t)d->idx_size - MK_IDX_HEADER, tail = 0;
    int ok = S <= rest / 12;
    if (ok) {
        rest -= 12 * S;
        ok = D1 <= rest / 8;
    }
    if (ok) {
        tail = rest - 8 * D1;
        ok = tail == 0 || tail == S;
    }
    if (!ok)
        return MK_FAIL(MK_ERR_INPUT, "%s: %zu bytes do not match sequence_count %llu and "
                       "document_count %llu (the file must be 34 + 12*sequence_count + "
                       "8*document_count bytes, optionally + sequence_count): truncated or "
                       "corrupt", ip, d->idx_size, (unsigned long long)S,
                       (unsigned long long)D1);
    d->lengths = x + MK_IDX_HEADER;
    d->pointers = d->lengths + 4 * S;
    d->docs = d->pointers + 8 * S;

    /* Lengths and pointers: moekit reads a token range as one slice of .bin, so sequence i+1
     * must start where sequence i ends. */
    uint64_t off = 0, ntok = 0;
    for (uint64_t i = 0; i < S; i++) {
        int32_t len = ld_i32(d->lengths + 4 * i);
        int64_t ptr = ld_i64(d->pointers + 8 * i);
        if (len < 0)
            return MK_FAIL(MK_ERR_INPUT, "%s: sequence_lengths[%llu] = %d (at byte %llu) is "
                           "negative", ip, (unsigned long long)i, (int)len,
                           (unsigned long long)(MK_IDX_HEADER + 4 * i));
        if (ptr < 0 || (uint64_t)ptr != off)
            return MK_FAIL(MK_ERR_INPUT, "%s: sequence_pointers[%llu] = %lld (at byte %llu), "
                           "expected %llu: moekit requires the sequences to be contiguous in "
                           "%s, in order", ip, (unsigned long long)i, (long long)ptr,
                           (unsigned long long)(d->pointers - x + 8 * i),
                           (unsigned long long)off, bp);
        ntok += (uint64_t)len; /* cannot overflow: S < 2^60 and len < 2^31 */
        if (!add_u64(off, (uint64_t)len * d->esz, &off))
            return MK_FAIL(MK_ERR_INPUT, "%s: sequence_lengths overflow 64-bit byte offsets at "
                           "sequence %llu", ip, (unsigned long long)i);
    }
    if (off != (uint64_t)d->bin_size)
        return MK_FAIL(MK_ERR_INPUT, "%s: %zu bytes, but %s describes %llu tokens of %s = %llu "
                       "bytes (%s)", bp, d->bin_size, ip, (unsigned long long)ntok,
                       dtype_name(d->dtype), (unsigned long long)off,
                       off > (uint64_t)d->bin_size ? "truncated .bin" : "extra bytes in .bin");
    d->ntok = ntok;

    int64_t prev = 0;
    for (uint64_t j = 0; j < D1; j++) {
        int64_t v = ld_i64(d->docs + 8 * j);
        unsigned long long at = (unsigned long long)(d->docs - x + 8 * j);
        if (j == 0 && v != 0)
            return MK_FAIL(MK_ERR_INPUT, "%s: document_indices[0] = %lld (at byte %llu), must "
                           "be 0", ip, (long long)v, at);
        if (v < prev)
            return MK_FAIL(MK_ERR_INPUT, "%s: document_indices[%llu] = %lld (at byte %llu) is "
                           "below document_indices[%llu] = %lld; they must not decrease", ip,
                           (unsigned long long)j, (long long)v, at, (unsigned long long)j - 1,
                           (long long)prev);
        prev = v;
    }
    if ((uint64_t)prev != S)
        return MK_FAIL(MK_ERR_INPUT, "%s: document_indices[%llu] = %lld, must equal "
                       "sequence_count %llu", ip, (unsigned long long)D1 - 1, (long long)prev,
                       (unsigned long long)S);
    return MK_OK;
}

/* One pass over the tokens: the largest id, and no negative ids (never a valid token, and
 * callers compare only the maximum with their vocabulary). -1 when there are no tokens. */
#define MK_SCAN(type)                                                           \
    do {                                                                        \
        for (uint64_t i = 0; i < d->ntok; i++) {                                \
            type v;                                                             \
            memcpy(&v, d->bin + i * sizeof v, sizeof v);                        \
            int64_t x = (int64_t)v;                                             \
            if (x < 0) { bad = i; badv = x; break; }                            \
            if (x > max) max = x;                                               \
        }                                                                       \
    } while (0)

static int scan_tokens(mk_indexed *d)
{
    int64_t max = -1, badv = 0;
    uint64_t bad = UINT64_MAX;
    switch (d->dtype) {
    case MK_DTYPE_UINT8: MK_SCAN(uint8_t); break;
    case MK_DTYPE_INT8: MK_SCAN(int8_t); break;
    case MK_DTYPE_INT16: MK_SCAN(int16_t); break;
    case MK_DTYPE_UINT16: MK_SCAN(uint16_t); break;
    case MK_DTYPE_INT32: MK_SCAN(int32_t); break;
    default: MK_SCAN(int64_t); break;
    }
    if (bad != UINT64_MAX)
        return MK_FAIL(MK_ERR_INPUT, "%s: token %llu (at byte %llu) is %lld; token ids cannot be "
                       "negative", d->bin_path, (unsigned long long)bad,
                       (unsigned long long)(bad * d->esz), (long long)badv);
    d->max_token = max;
    return MK_OK;
}
#undef MK_SCAN

int mk_indexed_open(const char *prefix, mk_indexed **out)
{
    *out = NULL;
    mk_indexed *d = calloc(1, sizeof *d);
    if (!d) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", prefix);
    int rc = MK_OK;
    d->idx_path = path_cat(prefix, ".idx");
    d->bin_path = path_cat(prefix, ".bin");
    if (!d->idx_path || !d->bin_path) {
        rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", prefix);
        goto fail;
    }
    MK_CHECK_GOTO(rc, map_file(d->idx_path, &d->idx, &d->idx_size), fail);
    MK_CHECK_GOTO(rc, map_file(d->bin_path, &d->bin, &d->bin_size), fail);
    MK_CHECK_GOTO(rc, check_index(d), fail);
    MK_CHECK_GOTO(rc, scan_tokens(d), fail);
    *out = d;
    return MK_OK;
fail:
    mk_indexed_close(&d);
    return rc;
}

void mk_indexed_close(mk_indexed **dp)
{
    if (!dp || !*dp) return;
    mk_indexed *d = *dp;
    if (d->idx) munmap((void *)d->idx, d->idx_size);
    if (d->bin) munmap((void *)d->bin, d->bin_size);
    free(d->idx_path);
    free(d->bin_path);
    free(d);
    *dp = NULL;
}

int mk_indexed_dtype(const mk_indexed *d) { return d->dtype; }
uint64_t mk_indexed_sequences(const mk_indexed *d) { return d->nseq; }
/* Documents, not entries of document_indices (which has one more). */
uint64_t mk_indexed_documents(const mk_indexed *d) { return d->ndoc_entries - 1; }
uint64_t mk_indexed_tokens(const mk_indexed *d) { return d->ntok; }
int64_t mk_indexed_max_token(const mk_indexed *d) { return d->max_token; }
const char *mk_indexed_bin_path(const mk_indexed *d) { return d->bin_path; }

uint64_t mk_indexed_seq_length(const mk_indexed *d, uint64_t i)
{
    return i < d->nseq ? (uint64_t)ld_i32(d->lengths + 4 * i) : 0;
}

int mk_indexed_read(const mk_indexed *d, uint64_t at, size_t n, int32_t *out)
{
    if (at > d->ntok || (uint64_t)n > d->ntok - at)
        return MK_FAIL(MK_ERR_INTERNAL, "%s: read of %zu tokens at token %llu is past the end "
                       "(%llu tokens)", d->bin_path, n, (unsigned long long)at,
                       (unsigned long long)d->ntok);
    if (n == 0) return MK_OK; /* d->bin may be NULL (empty .bin): no pointer arithmetic on it */
    const unsigned char *p = d->bin + at * d->esz;
    switch (d->dtype) {
    case MK_DTYPE_UINT8:
        for (size_t i = 0; i < n; i++) out[i] = p[i];
        break;
    case MK_DTYPE_INT8:
        for (size_t i = 0; i < n; i++) { int8_t v; memcpy(&v, p + i, 1); out[i] = v; }
        break;
    case MK_DTYPE_INT16:
        for (size_t i = 0; i < n; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; }
        break;
    case MK_DTYPE_UINT16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; }
        break;
    case MK_DTYPE_INT32:
        if (n > 0) memcpy(out, p, n * 4);
        break;
    default: /* int64 */
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            if (v > INT32_MAX)
                return MK_FAIL(MK_ERR_INPUT, "%s: token %llu (at byte %llu) is %lld, beyond the "
                               "int32 token ids moekit uses", d->bin_path,
                               (unsigned long long)(at + i),
                               (unsigned long long)((at + i) * 8), (long long)v);
            out[i] = (int32_t)v;
        }
        break;
    }
    return MK_OK;
}
