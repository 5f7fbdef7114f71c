/* mk_routing_log.c - the routing log routing.h5 (see mk_routing_log.h and
 * docs/routing-log-format.md).
 *
 * File: sec2 driver, libver bounds pinned to the 1.10 format (SWMR needs its checksummed
 * metadata; pinning keeps the file readable by 1.10 libraries when built against a newer one),
 * close degree strong. Everything - attributes, /domains, the /eval group, all datasets - is
 * created first, then H5Fstart_swmr_write; after that the writer only extends datasets along
 * the step axis, which is all SWMR allows.
 *
 * Appends: each dataset of the table is extended by one row, written and H5Dflush'ed, /step
 * last, then H5Fflush. write() order is what survives a SIGKILL, so every row below len(/step)
 * on disk is complete in every dataset: /step is the commit record.
 *
 * Create and resume both build the file under PATH.tmp (a resume copies the rows it keeps
 * from the old file, opened read-only with SWMR read, which also works on a file whose writer
 * was killed), start SWMR, flush, fsync and rename it over PATH, then fsync the directory. So
 * PATH is only ever absent, the previous log, or a complete new one, and resuming never
 * writes to a file a crashed writer left behind (opening that for writing would need h5clear).
 *
 * Errors: HDF5's automatic error printing is switched off for the duration of each call and
 * restored after; a failure reports the most specific message of HDF5's error stack in the
 * one MK_FAIL line, with the path and dataset.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_routing_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "mk_error.h"
#include "mk_fs.h"
#include "mk_h5.h"

/* The datasets of one table (/ or /eval), in write order: /step last, the commit record. */
enum { RL_COUNTS, RL_TOKENS, RL_LBL, RL_MAXVIO, RL_LOSS, RL_STEP, RL_NDSETS };
static const char *const rl_names[RL_NDSETS] = { "counts", "tokens", "lbl", "maxvio", "loss", "step" };

/* Chunks. /counts: one step per chunk, shuffle+deflate, so an append writes one whole chunk
 * once. With several steps per compressed chunk every append would compress the partial chunk
 * again and write it to new file space (SWMR does not recycle space): measured with 24 layers,
 * 5 domains, 64 experts and 300 appends, 4 steps per chunk gave a 13.7 MB file, 16 steps
 * 44.8 MB, one step 5.6 MB (18.4 MB of raw counts). The small datasets are not compressed, so
 * a partial chunk is rewritten in place: up to 1024 steps in about 64 KiB per chunk. */
enum { RL_SMALL_CHUNK_BYTES = 64 << 10, RL_SMALL_CHUNK_ROWS = 1024, RL_DEFLATE_LEVEL = 4,
       RL_COPY_BYTES = 8 << 20 };

typedef struct rl_table {
    const char *group;              /* "" or "/eval", for messages */
    hid_t ds[RL_NDSETS];
    int rank[RL_NDSETS];            /* including the step axis */
    hsize_t dims[RL_NDSETS][4];     /* dims[i][0] unused; the row shape follows */
    size_t row_elems[RL_NDSETS];
    hsize_t rows;                   /* committed rows = len(/step) */
    int64_t last_step;
} rl_table;

struct mk_routing_log {
    char *path;
    hid_t file;
    int layers, experts, topk, ndomains;
    rl_table train, eval;
    int write_failed;       /* an append failed and was reported: close stays quiet */
};

/* ------------------------------------------------------------------ HDF5 error handling */

typedef struct rl_quiet {
    H5E_auto2_t func;
    void *data;
    int saved;
} rl_quiet;

/* Switch off HDF5's automatic error printing, remembering what was set. */
static void rl_quiet_begin(rl_quiet *q)
{
    q->saved = H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data) >= 0;
    if (q->saved) H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void rl_quiet_end(const rl_quiet *q)
{
    if (q->saved) H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
}

static herr_t rl_walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    char *buf = data;
    (void)n;
    if (buf[0] != 0 || !e->desc || !e->desc[0]) return 0;
    /* sec2's write and read errors span lines ("file write failed: time = ...\n, filename =
     * ..., errno = 28, error message = 'No space left on device', ..."): keep one line, the
     * first phrase and the system's message (found by tests/fault). */
    const char *msg = strstr(e->desc, "error message = '");
    const char *cut = strpbrk(e->desc, ":\n");
    if (msg && cut) {
        msg += strlen("error message = '");
        const char *end = strchr(msg, '\'');
        snprintf(buf, 256, "%.*s: %.*s", (int)(cut - e->desc), e->desc, (int)(end ? end - msg : 80), msg);
    } else {
        snprintf(buf, 256, "%.*s", (int)strcspn(e->desc, "\n"), e->desc);
    }
    return 0;
}

/* Report a failed HDF5 call: "routing log PATH: WHAT: <HDF5's most specific message>". */
static int rl_fail_h5(int code, const char *path, const char *what)
{
    char reason[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, rl_walk_cb, reason);
    H5Eclear2(H5E_DEFAULT);
    return MK_FAIL(code, "routing log %s: %s%s%s", path, what, reason[0] ? ": " : "", reason);
}

/* The same with the dataset named: "... cannot write /eval/counts: ...". */
static int rl_fail_ds(int code, const char *path, const char *verb, const rl_table *t, int i)
{
    char what[128];
    snprintf(what, sizeof what, "cannot %s %s/%s", verb, t->group, rl_names[i]);
    return rl_fail_h5(code, path, what);
}

static void rl_close_id(hid_t *id, herr_t (*close_fn)(hid_t))
{
    if (*id >= 0) close_fn(*id);
    *id = H5I_INVALID_HID;
}

/* ------------------------------------------------------------------ small helpers */

static hid_t rl_mem_type(int i)
{
    return (i == RL_COUNTS || i == RL_TOKENS || i == RL_STEP) ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
}

static hid_t rl_file_type(int i)
{
    return (i == RL_COUNTS || i == RL_TOKENS || i == RL_STEP) ? H5T_STD_I64LE : H5T_IEEE_F64LE;
}

static void rl_table_init(rl_table *t, const char *group, int layers, int experts,
                          int ndomains, int eval)
{
    memset(t, 0, sizeof *t);
    t->group = group;
    for (int i = 0; i < RL_NDSETS; i++) t->ds[i] = H5I_INVALID_HID;
    hsize_t L = (hsize_t)layers, E = (hsize_t)experts, Dm = (hsize_t)ndomains;
    /* rank and row shape: counts [L, Dm, E], tokens [Dm], lbl and maxvio [L],
     * loss [] (training) or [Dm] (eval), step [] */
    static const int rank[RL_NDSETS] = { 4, 2, 2, 2, 1, 1 };
    memcpy(t->rank, rank, sizeof rank);
    t->dims[RL_COUNTS][1] = L;
    t->dims[RL_COUNTS][2] = Dm;
    t->dims[RL_COUNTS][3] = E;
    t->dims[RL_TOKENS][1] = Dm;
    t->dims[RL_LBL][1] = L;
    t->dims[RL_MAXVIO][1] = L;
    if (eval) {
        t->rank[RL_LOSS] = 2;
        t->dims[RL_LOSS][1] = Dm;
    }
    for (int i = 0; i < RL_NDSETS; i++) {
        size_t n = 1;
        for (int d = 1; d < t->rank[i]; d++) n *= (size_t)t->dims[i][d];
        t->row_elems[i] = n;
    }
}

static char *rl_strcat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb + 1);
    return s;
}

/* sec2, 1.10 file format, strong close degree. */
static hid_t rl_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return H5I_INVALID_HID;
    if (H5Pset_fapl_sec2(fapl) < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0 ||
#if H5_VERSION_GE(1, 10, 2)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110) < 0
#else
        H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST) < 0
#endif
    ) {
        H5Pclose(fapl);
        return H5I_INVALID_HID;
    }
    return fapl;
}

/* ------------------------------------------------------------------ creating */

static int rl_write_int_attr(const mk_routing_log *log, const char *name, int value)
{
    int rc = MK_OK;
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? H5I_INVALID_HID
                           : H5Acreate2(log->file, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_INT, &value) < 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot write attribute %s", name);
        rc = rl_fail_h5(MK_ERR_IO, log->path, what);
    }
    rl_close_id(&attr, H5Aclose);
    rl_close_id(&space, H5Sclose);
    return rc;
}

/* A fixed-length, null-terminated string attribute, as in the checkpoints (h5py: bytes). */
static int rl_write_str_attr(const mk_routing_log *log, const char *name, const char *value)
{
    int rc = MK_OK;
    hid_t type = H5Tcopy(H5T_C_S1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5I_INVALID_HID;
    if (type < 0 || space < 0 || H5Tset_size(type, strlen(value) + 1) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLTERM) < 0 ||
        (attr = H5Acreate2(log->file, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0 ||
        H5Awrite(attr, type, value) < 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot write attribute %s", name);
        rc = rl_fail_h5(MK_ERR_IO, log->path, what);
    }
    rl_close_id(&attr, H5Aclose);
    rl_close_id(&space, H5Sclose);
    rl_close_id(&type, H5Tclose);
    return rc;
}

/* /domains: [Dm] fixed-length, null-padded UTF-8 strings as long as the longest name. */
static int rl_write_domains(const mk_routing_log *log, const char *const *names)
{
    size_t width = 1;
    for (int d = 0; d < log->ndomains; d++)
        if (strlen(names[d]) > width) width = strlen(names[d]);
    char *buf = calloc((size_t)log->ndomains, width);
    if (!buf) return MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory for /domains", log->path);
    for (int d = 0; d < log->ndomains; d++) memcpy(buf + (size_t)d * width, names[d], strlen(names[d]));
    int rc = MK_OK;
    hsize_t n = (hsize_t)log->ndomains;
    hid_t type = H5Tcopy(H5T_C_S1);
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t ds = H5I_INVALID_HID;
    if (type < 0 || space < 0 || H5Tset_size(type, width) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLPAD) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0 ||
        (ds = H5Dcreate2(log->file, "domains", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)) < 0 ||
        H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        rc = rl_fail_h5(MK_ERR_IO, log->path, "cannot write /domains");
    rl_close_id(&ds, H5Dclose);
    rl_close_id(&space, H5Sclose);
    rl_close_id(&type, H5Tclose);
    free(buf);
    return rc;
}

/* Create the datasets of table t in loc (the root or /eval), empty and extendible. */
static int rl_create_table(const mk_routing_log *log, rl_table *t, hid_t loc)
{
    for (int i = 0; i < RL_NDSETS; i++) {
        hsize_t cur[4], max[4], chunk[4];
        size_t row_bytes = t->row_elems[i] * 8;
        cur[0] = 0;
        max[0] = H5S_UNLIMITED;
        chunk[0] = 1;
        if (i != RL_COUNTS && row_bytes < RL_SMALL_CHUNK_BYTES)
            chunk[0] = RL_SMALL_CHUNK_BYTES / row_bytes < RL_SMALL_CHUNK_ROWS
                           ? RL_SMALL_CHUNK_BYTES / row_bytes : RL_SMALL_CHUNK_ROWS;
        for (int d = 1; d < t->rank[i]; d++) cur[d] = max[d] = chunk[d] = t->dims[i][d];
        int rc = MK_OK;
        hid_t space = H5Screate_simple(t->rank[i], cur, max);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (space < 0 || dcpl < 0 || H5Pset_chunk(dcpl, t->rank[i], chunk) < 0 ||
            (i == RL_COUNTS && (H5Pset_shuffle(dcpl) < 0 || H5Pset_deflate(dcpl, RL_DEFLATE_LEVEL) < 0)) ||
            (t->ds[i] = H5Dcreate2(loc, rl_names[i], rl_file_type(i), space, H5P_DEFAULT, dcpl,
                                   H5P_DEFAULT)) < 0)
            rc = rl_fail_ds(MK_ERR_IO, log->path, "create", t, i);
        rl_close_id(&dcpl, H5Pclose);
        rl_close_id(&space, H5Sclose);
        if (rc != MK_OK) return rc;
    }
    return MK_OK;
}

/* Create file (PATH.tmp) with everything but rows; SWMR not started yet. */
static int rl_create(mk_routing_log *log, const char *file, const char *const *names)
{
    hid_t fapl = rl_fapl();
    if (fapl < 0) return rl_fail_h5(MK_ERR_IO, log->path, "cannot set up the file access properties");
    /* EXCL (the caller cleared the name): a symlink planted at PATH.tmp is not followed. */
    log->file = H5Fcreate(file, H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    if (log->file < 0) {
        char what[64 + PATH_MAX];
        snprintf(what, sizeof what, "cannot create %s", file);
        int rc = rl_fail_h5(MK_ERR_IO, log->path, what);   /* before any call clears the stack */
        H5Pclose(fapl);
        return rc;
    }
    H5Pclose(fapl);
    MK_CHECK(rl_write_str_attr(log, "format", MK_ROUTING_LOG_FORMAT));
    MK_CHECK(rl_write_int_attr(log, "format_version", MK_ROUTING_LOG_VERSION));
    MK_CHECK(rl_write_int_attr(log, "layers", log->layers));
    MK_CHECK(rl_write_int_attr(log, "experts", log->experts));
    MK_CHECK(rl_write_int_attr(log, "topk", log->topk));
    MK_CHECK(rl_write_domains(log, names));
    MK_CHECK(rl_create_table(log, &log->train, log->file));
    hid_t g = H5Gcreate2(log->file, "eval", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return rl_fail_h5(MK_ERR_IO, log->path, "cannot create group /eval");
    int rc = rl_create_table(log, &log->eval, g);
    H5Gclose(g);    /* SWMR may start with datasets open, not groups */
    return rc;
}

/* ------------------------------------------------------------------ rows */

/* Write n rows starting at row r0 of dataset i of t from buf, extending it if needed. */
static int rl_write_rows(const mk_routing_log *log, rl_table *t, int i, hsize_t r0, hsize_t n,
                         const void *buf)
{
    hsize_t start[4] = { r0, 0, 0, 0 }, count[4], cur[4];
    count[0] = n;
    for (int d = 1; d < t->rank[i]; d++) count[d] = t->dims[i][d];
    int rc = MK_OK;
    hid_t fspace = H5Dget_space(t->ds[i]), mspace = H5I_INVALID_HID;
    if (fspace < 0 || H5Sget_simple_extent_dims(fspace, cur, NULL) < 0) goto fail;
    if (cur[0] < r0 + n) {
        H5Sclose(fspace);
        fspace = H5I_INVALID_HID;
        cur[0] = r0 + n;
        if (H5Dset_extent(t->ds[i], cur) < 0 || (fspace = H5Dget_space(t->ds[i])) < 0) goto fail;
    }
    if ((mspace = H5Screate_simple(t->rank[i], count, NULL)) < 0 ||
        H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dwrite(t->ds[i], rl_mem_type(i), mspace, fspace, H5P_DEFAULT, buf) < 0)
        goto fail;
    goto done;
fail:
    rc = rl_fail_ds(MK_ERR_IO, log->path, "write", t, i);
done:
    rl_close_id(&mspace, H5Sclose);
    rl_close_id(&fspace, H5Sclose);
    return rc;
}

/* Read n rows starting at r0 of dataset ds (shaped like dataset i of t) into buf. */
static int rl_read_rows(const char *path, const rl_table *t, int i, hid_t ds, hsize_t r0,
                        hsize_t n, void *buf)
{
    hsize_t start[4] = { r0, 0, 0, 0 }, count[4];
    count[0] = n;
    for (int d = 1; d < t->rank[i]; d++) count[d] = t->dims[i][d];
    int rc = MK_OK;
    hid_t fspace = H5Dget_space(ds), mspace = H5I_INVALID_HID;
    if (fspace < 0 || (mspace = H5Screate_simple(t->rank[i], count, NULL)) < 0 ||
        H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(ds, rl_mem_type(i), mspace, fspace, H5P_DEFAULT, buf) < 0)
        rc = rl_fail_ds(MK_ERR_INPUT, path, "read", t, i);
    rl_close_id(&mspace, H5Sclose);
    rl_close_id(&fspace, H5Sclose);
    return rc;
}

static int rl_flush_table(const mk_routing_log *log, rl_table *t)
{
    for (int i = 0; i < RL_NDSETS; i++)
        if (H5Dflush(t->ds[i]) < 0) return rl_fail_ds(MK_ERR_IO, log->path, "flush", t, i);
    return MK_OK;
}

static int rl_append(mk_routing_log *log, rl_table *t, int64_t step, const void *const data[RL_NDSETS])
{
    if (t->rows > 0 && step <= t->last_step)
        return MK_FAIL(MK_ERR_USAGE, "routing log %s: step %lld logged after step %lld in %s/step; "
                       "steps must increase", log->path, (long long)step, (long long)t->last_step,
                       t->group);
    for (int i = 0; i < RL_NDSETS; i++) {
        if (!data[i])
            return MK_FAIL(MK_ERR_INTERNAL, "routing log %s: no data for %s/%s", log->path,
                           t->group, rl_names[i]);
    }
    for (int i = 0; i < RL_NDSETS; i++) {     /* /step last: the commit record */
        MK_CHECK(rl_write_rows(log, t, i, t->rows, 1, data[i]));
        if (H5Dflush(t->ds[i]) < 0) return rl_fail_ds(MK_ERR_IO, log->path, "flush", t, i);
    }
    if (H5Fflush(log->file, H5F_SCOPE_LOCAL) < 0) return rl_fail_h5(MK_ERR_IO, log->path, "cannot flush");
    t->rows++;
    t->last_step = step;
    return MK_OK;
}

/* ------------------------------------------------------------------ resuming */

static int rl_read_int_attr(const char *path, hid_t file, const char *name, int *value)
{
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    int rc = MK_OK;
    if (attr < 0 || H5Aread(attr, H5T_NATIVE_INT, value) < 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot read attribute %s", name);
        rc = rl_fail_h5(MK_ERR_INPUT, path, what);
    }
    rl_close_id(&attr, H5Aclose);
    return rc;
}

/* Read a scalar string attribute (variable or fixed length) into buf. */
static int rl_read_str_attr(const char *path, hid_t file, const char *name, char *buf, size_t n)
{
    int rc = MK_OK;
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t ftype = attr < 0 ? H5I_INVALID_HID : H5Aget_type(attr);
    hid_t mtype = H5Tcopy(H5T_C_S1);
    htri_t vl = ftype < 0 ? -1 : H5Tis_variable_str(ftype);
    buf[0] = 0;
    /* HDF5 converts no string between character sets: read in the file's. */
    if (vl < 0 || mtype < 0 || H5Tget_class(ftype) != H5T_STRING ||
        H5Tset_cset(mtype, H5Tget_cset(ftype)) < 0)
        goto fail;
    if (vl) {
        char *s = NULL;
        if (H5Tset_size(mtype, H5T_VARIABLE) < 0 || H5Aread(attr, mtype, &s) < 0) goto fail;
        snprintf(buf, n, "%s", s ? s : "");
        if (s) H5free_memory(s);
    } else {
        size_t size = H5Tget_size(ftype);
        char *s = size ? calloc(1, size + 1) : NULL;
        if (!s || H5Tset_size(mtype, size + 1) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLTERM) < 0 ||
            H5Aread(attr, mtype, s) < 0) {
            free(s);
            goto fail;
        }
        snprintf(buf, n, "%s", s);
        free(s);
    }
    goto done;
fail: {
        char what[96];
        snprintf(what, sizeof what, "cannot read string attribute %s", name);
        rc = rl_fail_h5(MK_ERR_INPUT, path, what);
    }
done:
    rl_close_id(&mtype, H5Tclose);
    rl_close_id(&ftype, H5Tclose);
    rl_close_id(&attr, H5Aclose);
    return rc;
}

/* The old file's root attributes and /domains against the run's. */
static int rl_check_old(const mk_routing_log *log, hid_t old, const char *const *names)
{
    char format[64];
    int version;
    MK_CHECK(rl_read_str_attr(log->path, old, "format", format, sizeof format));
    if (strcmp(format, MK_ROUTING_LOG_FORMAT) != 0)
        return MK_FAIL(MK_ERR_INPUT, "routing log %s: attribute format is \"%s\", not \"%s\"",
                       log->path, format, MK_ROUTING_LOG_FORMAT);
    MK_CHECK(rl_read_int_attr(log->path, old, "format_version", &version));
    if (version != MK_ROUTING_LOG_VERSION)
        return MK_FAIL(MK_ERR_INPUT, "routing log %s: attribute format_version is %d; this moekit "
                       "appends to version %d", log->path, version, MK_ROUTING_LOG_VERSION);
    const char *const keys[3] = { "layers", "experts", "topk" };
    const int want[3] = { log->layers, log->experts, log->topk };
    for (int k = 0; k < 3; k++) {
        int got;
        MK_CHECK(rl_read_int_attr(log->path, old, keys[k], &got));
        if (got != want[k])
            return MK_FAIL(MK_ERR_INPUT, "routing log %s: attribute %s is %d in the file but %d in "
                           "this run; cannot resume it", log->path, keys[k], got, want[k]);
    }

    int rc = MK_OK;
    hid_t ds = H5Dopen2(old, "domains", H5P_DEFAULT);
    hid_t ftype = ds < 0 ? H5I_INVALID_HID : H5Dget_type(ds);
    hid_t space = ds < 0 ? H5I_INVALID_HID : H5Dget_space(ds);
    hid_t mtype = H5Tcopy(H5T_C_S1);
    char *buf = NULL;
    hsize_t n = 0;
    size_t width = 0;
    if (ds < 0 || ftype < 0 || space < 0 || mtype < 0 || H5Tget_class(ftype) != H5T_STRING ||
        H5Tis_variable_str(ftype) != 0 || H5Sget_simple_extent_ndims(space) != 1 ||
        H5Sget_simple_extent_dims(space, &n, NULL) < 0 || (width = H5Tget_size(ftype)) == 0) {
        rc = rl_fail_h5(MK_ERR_INPUT, log->path, "cannot read /domains (fixed-length strings, 1-d)");
        goto done;
    }
    if (n != (hsize_t)log->ndomains) {
        rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: /domains has %llu domains but this run has %d; "
                     "cannot resume it", log->path, (unsigned long long)n, log->ndomains);
        goto done;
    }
    if (!(buf = calloc((size_t)n, width + 1))) {
        rc = MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory for /domains", log->path);
        goto done;
    }
    if (H5Tset_size(mtype, width + 1) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(mtype, H5Tget_cset(ftype)) < 0 || H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        rc = rl_fail_h5(MK_ERR_INPUT, log->path, "cannot read /domains");
        goto done;
    }
    for (int d = 0; d < log->ndomains; d++) {
        const char *got = buf + (size_t)d * (width + 1);
        if (strcmp(got, names[d]) != 0) {
            rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: /domains[%d] is \"%s\" in the file but \"%s\" "
                         "in this run; cannot resume it", log->path, d, got, names[d]);
            goto done;
        }
    }
done:
    free(buf);
    rl_close_id(&mtype, H5Tclose);
    rl_close_id(&space, H5Sclose);
    rl_close_id(&ftype, H5Tclose);
    rl_close_id(&ds, H5Dclose);
    return rc;
}

/* Copy the rows of the old table (group "/" or "/eval" of old) with step <= resume_step into
 * the new table t, which is empty. */
static int rl_copy_table(mk_routing_log *log, rl_table *t, hid_t old, const char *group,
                         int64_t resume_step)
{
    int rc = MK_OK;
    hid_t ods[RL_NDSETS];
    for (int i = 0; i < RL_NDSETS; i++) ods[i] = H5I_INVALID_HID;
    hsize_t have[RL_NDSETS], s = 0, keep = 0;
    void *buf = NULL;
    int64_t *steps = NULL;

    for (int i = 0; i < RL_NDSETS; i++) {
        char name[32];
        hsize_t dims[8];
        snprintf(name, sizeof name, "%s/%s", group, rl_names[i]);
        ods[i] = H5Dopen2(old, name, H5P_DEFAULT);
        hid_t space = ods[i] < 0 ? H5I_INVALID_HID : H5Dget_space(ods[i]);
        int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
        int ok = rank == t->rank[i] && mk_h5_dims(space, dims, 8) == rank;
        for (int d = 1; ok && d < rank; d++) ok = dims[d] == t->dims[i][d];
        rl_close_id(&space, H5Sclose);
        if (ods[i] < 0) {
            rc = rl_fail_ds(MK_ERR_INPUT, log->path, "open", t, i);
            goto done;
        }
        if (!ok) {
            H5Eclear2(H5E_DEFAULT);
            rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: %s/%s does not have the shape of this run's "
                         "rows", log->path, t->group, rl_names[i]);
            goto done;
        }
        have[i] = dims[0];
    }
    for (int i = 0; i < RL_STEP; i++)
        if (have[i] < have[RL_STEP]) {
            rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: %s/%s has %llu rows, fewer than %s/step (%llu)",
                         log->path, t->group, rl_names[i], (unsigned long long)have[i], t->group,
                         (unsigned long long)have[RL_STEP]);
            goto done;
        }

    s = have[RL_STEP];
    /* /step's shape alone decides s (a damaged file may claim 2^61 rows): s * 8 must not wrap. */
    if (s > SIZE_MAX / sizeof *steps) {
        rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: %s/step claims %llu rows, too many to address",
                     log->path, t->group, (unsigned long long)s);
        goto done;
    }
    if (s > 0) {
        if (!(steps = malloc((size_t)s * sizeof *steps))) {
            rc = MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory for %s/step", log->path, t->group);
            goto done;
        }
        MK_CHECK_GOTO(rc, rl_read_rows(log->path, t, RL_STEP, ods[RL_STEP], 0, s, steps), done);
        while (keep < s && steps[keep] <= resume_step && (keep == 0 || steps[keep] > steps[keep - 1]))
            keep++;
    }
    if (keep > 0) {
        size_t block = RL_COPY_BYTES / (t->row_elems[RL_COUNTS] * 8);
        if (block < 1) block = 1;
        if ((hsize_t)block > keep) block = (size_t)keep;
        if (!(buf = malloc(block * t->row_elems[RL_COUNTS] * 8))) {
            rc = MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory to copy %s", log->path,
                         t->group[0] ? t->group : "/");
            goto done;
        }
        for (int i = 0; i < RL_NDSETS; i++)
            for (hsize_t r = 0; r < keep; r += block) {
                hsize_t n = keep - r < block ? keep - r : block;
                MK_CHECK_GOTO(rc, rl_read_rows(log->path, t, i, ods[i], r, n, buf), done);
                MK_CHECK_GOTO(rc, rl_write_rows(log, t, i, r, n, buf), done);
            }
        t->rows = keep;
        t->last_step = steps[keep - 1];
    }
done:
    free(buf);
    free(steps);
    for (int i = 0; i < RL_NDSETS; i++) rl_close_id(&ods[i], H5Dclose);
    return rc;
}

/* Open the old log read-only: with SWMR read first (works while or after a SWMR writer ran,
 * also when it was killed), plainly otherwise. */
static int rl_open_old(const char *path, hid_t *old)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_sec2(fapl) < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        if (fapl >= 0) H5Pclose(fapl);
        return rl_fail_h5(MK_ERR_INPUT, path, "cannot set up the file access properties");
    }
    *old = mk_h5_fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl);
    if (*old < 0) {
        char reason[256] = "";
        H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, rl_walk_cb, reason);
        H5Eclear2(H5E_DEFAULT);
        *old = mk_h5_fopen(path, H5F_ACC_RDONLY, fapl);
        if (*old < 0) {
            H5Eclear2(H5E_DEFAULT);
            H5Pclose(fapl);
            return MK_FAIL(MK_ERR_INPUT, "routing log %s: cannot open it to resume%s%s", path,
                           reason[0] ? ": " : "", reason);
        }
    }
    H5Pclose(fapl);
    return MK_OK;
}

/* ------------------------------------------------------------------ open and close */

static char *rl_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return rl_strcat(".", "");
    if (slash == path) return rl_strcat("/", "");
    char *d = malloc((size_t)(slash - path) + 1);
    if (!d) return NULL;
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = 0;
    return d;
}

/* Make the new file and its name durable: fsync it (HDF5's sec2 driver never does), rename it
 * into place, fsync the directory. */
static int rl_commit(mk_routing_log *log, const char *tmp)
{
    int *fdp = NULL;
    if (H5Fget_vfd_handle(log->file, H5P_DEFAULT, (void **)&fdp) < 0 || !fdp)
        return rl_fail_h5(MK_ERR_IO, log->path, "cannot get the file descriptor to fsync");
    if (fsync(*fdp) != 0)
        return MK_FAIL(MK_ERR_IO, "routing log %s: fsync of %s failed: %s", log->path, tmp, strerror(errno));
    if (rename(tmp, log->path) != 0)
        return MK_FAIL(MK_ERR_IO, "routing log %s: cannot rename %s to it: %s", log->path, tmp,
                       strerror(errno));
    char *dir = rl_dir_of(log->path);
    if (!dir) return MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory", log->path);
    int rc = MK_OK;
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = MK_FAIL(MK_ERR_IO, "routing log %s: cannot open directory %s: %s", log->path, dir, strerror(errno));
    } else {
        if (fsync(fd) != 0 && errno != EINVAL)
            rc = MK_FAIL(MK_ERR_IO, "routing log %s: fsync of directory %s failed: %s", log->path, dir,
                         strerror(errno));
        close(fd);
    }
    free(dir);
    return rc;
}

static void rl_free(mk_routing_log *log)
{
    if (!log) return;
    for (int i = 0; i < RL_NDSETS; i++) {
        rl_close_id(&log->train.ds[i], H5Dclose);
        rl_close_id(&log->eval.ds[i], H5Dclose);
    }
    rl_close_id(&log->file, H5Fclose);
    free(log->path);
    free(log);
}

static int rl_open(const char *path, int layers, int experts, int topk, int ndomains,
                   const char *const *names, int64_t resume_step, mk_routing_log **out)
{
    int rc = MK_OK;
    hid_t old = H5I_INVALID_HID;
    char *tmp = NULL;
    int tmp_made = 0;
    mk_routing_log *log = calloc(1, sizeof *log);
    if (log) {
        log->file = H5I_INVALID_HID;
        log->layers = layers, log->experts = experts, log->topk = topk, log->ndomains = ndomains;
        rl_table_init(&log->train, "", layers, experts, ndomains, 0);
        rl_table_init(&log->eval, "/eval", layers, experts, ndomains, 1);
    }
    if (!log || !(log->path = rl_strcat(path, "")) || !(tmp = rl_strcat(path, ".tmp"))) {
        rc = MK_FAIL(MK_ERR_NOMEM, "routing log %s: no memory", path);
        goto fail;
    }

    if (resume_step >= 0) {
        struct stat st;
        if (stat(path, &st) == 0) {
            MK_CHECK_GOTO(rc, rl_open_old(path, &old), fail);
            MK_CHECK_GOTO(rc, rl_check_old(log, old, names), fail);
        } else if (errno != ENOENT) {
            rc = MK_FAIL(MK_ERR_INPUT, "routing log %s: cannot stat it to resume: %s", path, strerror(errno));
            goto fail;
        }
    }
    MK_CHECK_GOTO(rc, mk_fs_clear_tmp(tmp), fail); /* refuses a planted link, left in place */
    tmp_made = 1;
    MK_CHECK_GOTO(rc, rl_create(log, tmp, names), fail);
    if (old >= 0) {
        MK_CHECK_GOTO(rc, rl_copy_table(log, &log->train, old, "", resume_step), fail);
        MK_CHECK_GOTO(rc, rl_copy_table(log, &log->eval, old, "/eval", resume_step), fail);
        rl_close_id(&old, H5Fclose);
    }
    if (H5Fstart_swmr_write(log->file) < 0) {
        rc = rl_fail_h5(MK_ERR_IO, path, "cannot start SWMR writing");
        goto fail;
    }
    MK_CHECK_GOTO(rc, rl_flush_table(log, &log->train), fail);
    MK_CHECK_GOTO(rc, rl_flush_table(log, &log->eval), fail);
    if (H5Fflush(log->file, H5F_SCOPE_LOCAL) < 0) {
        rc = rl_fail_h5(MK_ERR_IO, path, "cannot flush");
        goto fail;
    }
    MK_CHECK_GOTO(rc, rl_commit(log, tmp), fail);
    free(tmp);
    *out = log;
    return MK_OK;

fail:
    rl_close_id(&old, H5Fclose);
    rl_free(log);
    if (tmp_made) unlink(tmp);    /* after the close; harmless when rename already moved it */
    free(tmp);
    return rc;
}

int mk_routing_log_open(const char *path, int layers, int experts, int topk, int ndomains,
                        const char *const *domain_names, int64_t resume_step,
                        mk_routing_log **out)
{
    if (!out) return MK_FAIL(MK_ERR_INTERNAL, "mk_routing_log_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return MK_FAIL(MK_ERR_USAGE, "routing log: empty path");
    if (layers < 1 || experts < 1 || topk < 1 || topk > experts || ndomains < 1 || !domain_names)
        return MK_FAIL(MK_ERR_USAGE, "routing log %s: need layers, experts, topk, domains >= 1 and "
                       "topk <= experts (got %d, %d, %d, %d)", path, layers, experts, topk, ndomains);
    /* A /counts row in bytes must fit in size_t and an HDF5 chunk (< 4 GiB). */
    if ((uint64_t)layers * (uint64_t)ndomains * (uint64_t)experts > (UINT64_C(1) << 28))
        return MK_FAIL(MK_ERR_USAGE, "routing log %s: layers x domains x experts = %d x %d x %d is "
                       "too large for one row", path, layers, ndomains, experts);
    if (resume_step < MK_ROUTING_LOG_CREATE)
        return MK_FAIL(MK_ERR_USAGE, "routing log %s: resume step %lld is negative", path,
                       (long long)resume_step);
    for (int d = 0; d < ndomains; d++) {
        if (!domain_names[d] || !domain_names[d][0])
            return MK_FAIL(MK_ERR_USAGE, "routing log %s: domain %d has no name", path, d);
        for (int e = 0; e < d; e++)
            if (strcmp(domain_names[d], domain_names[e]) == 0)
                return MK_FAIL(MK_ERR_USAGE, "routing log %s: domain name \"%s\" appears twice", path,
                               domain_names[d]);
    }
    rl_quiet q;
    rl_quiet_begin(&q);
    int rc = rl_open(path, layers, experts, topk, ndomains, domain_names, resume_step, out);
    rl_quiet_end(&q);
    return rc;
}

int mk_routing_log_append(mk_routing_log *log, int64_t step, const int64_t *counts,
                          const int64_t *tokens, const double *lbl, const double *maxvio,
                          double loss)
{
    if (!log) return MK_FAIL(MK_ERR_INTERNAL, "mk_routing_log_append: log is NULL");
    const void *const data[RL_NDSETS] = { counts, tokens, lbl, maxvio, &loss, &step };
    rl_quiet q;
    rl_quiet_begin(&q);
    int rc = rl_append(log, &log->train, step, data);
    rl_quiet_end(&q);
    if (rc != MK_OK) log->write_failed = 1;
    return rc;
}

int mk_routing_log_append_eval(mk_routing_log *log, int64_t step, const int64_t *counts,
                               const int64_t *tokens, const double *lbl, const double *maxvio,
                               const double *loss_per_domain)
{
    if (!log) return MK_FAIL(MK_ERR_INTERNAL, "mk_routing_log_append_eval: log is NULL");
    const void *const data[RL_NDSETS] = { counts, tokens, lbl, maxvio, loss_per_domain, &step };
    rl_quiet q;
    rl_quiet_begin(&q);
    int rc = rl_append(log, &log->eval, step, data);
    rl_quiet_end(&q);
    if (rc != MK_OK) log->write_failed = 1;
    return rc;
}

int mk_routing_log_flush(mk_routing_log *log)
{
    if (!log) return MK_FAIL(MK_ERR_INTERNAL, "mk_routing_log_flush: log is NULL");
    rl_quiet q;
    rl_quiet_begin(&q);
    int rc = rl_flush_table(log, &log->train);
    if (rc == MK_OK) rc = rl_flush_table(log, &log->eval);
    if (rc == MK_OK && H5Fflush(log->file, H5F_SCOPE_LOCAL) < 0)
        rc = rl_fail_h5(MK_ERR_IO, log->path, "cannot flush");
    rl_quiet_end(&q);
    return rc;
}

int64_t mk_routing_log_steps(const mk_routing_log *log)
{
    return log ? (int64_t)log->train.rows : 0;
}

int64_t mk_routing_log_eval_steps(const mk_routing_log *log)
{
    return log ? (int64_t)log->eval.rows : 0;
}

int mk_routing_log_close(mk_routing_log **plog)
{
    if (!plog || !*plog) return MK_OK;
    mk_routing_log *log = *plog;
    *plog = NULL;
    rl_quiet q;
    rl_quiet_begin(&q);
    int rc = MK_OK;
    for (int i = 0; i < RL_NDSETS; i++) {
        rl_close_id(&log->train.ds[i], H5Dclose);
        rl_close_id(&log->eval.ds[i], H5Dclose);
    }
    /* After a failed append the file cannot be flushed either; that was reported once. */
    if (log->file >= 0 && H5Fclose(log->file) < 0)
        rc = log->write_failed ? MK_ERR_IO : rl_fail_h5(MK_ERR_IO, log->path, "cannot close");
    log->file = H5I_INVALID_HID;
    rl_free(log);
    rl_quiet_end(&q);
    return rc;
}
