/* mk_routing_read.c - read routing.h5 (see mk_routing_read.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_routing_read.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mk_error.h"
#include "mk_h5.h"

static int read_int_attr(hid_t f, const char *name, int *v)
{
    if (H5Aexists(f, name) <= 0) return 0;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    int ok = a >= 0 && H5Aread(a, H5T_NATIVE_INT, v) >= 0;
    if (a >= 0) H5Aclose(a);
    return ok;
}

/* Read a fixed- or variable-length string attribute of loc into buf. */
static int read_str_attr(hid_t loc, const char *name, char *buf, int size)
{
    if (H5Aexists(loc, name) <= 0) return 0;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT), ft = a >= 0 ? H5Aget_type(a) : -1;
    int ok = 0;
    if (ft >= 0 && H5Tget_class(ft) == H5T_STRING) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        if (H5Tis_variable_str(ft) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(ft));
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, (size_t)size, "%s", s);
                ok = 1;
                H5free_memory(s);
            }
        } else {
            size_t n = H5Tget_size(ft);
            char *s = calloc(n + 1, 1);
            H5Tset_size(mt, n + 1);
            H5Tset_strpad(mt, H5T_STR_NULLTERM);
            H5Tset_cset(mt, H5Tget_cset(ft));
            if (s && H5Aread(a, mt, s) >= 0) {
                snprintf(buf, (size_t)size, "%s", s);
                ok = 1;
            }
            free(s);
        }
        H5Tclose(mt);
    }
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    return ok;
}

/* Rows currently in dataset name (refreshing it first under SWMR); -1 if absent/unreadable. */
static int64_t ds_rows(hid_t f, const char *name, int swmr)
{
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    if (swmr) H5Drefresh(d);
    hid_t sp = H5Dget_space(d);
    hsize_t dims[4] = { 0 };
    int nd = mk_h5_dims(sp, dims, 4);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return nd >= 1 ? (int64_t)dims[0] : -1;
}

/* Read the first rows rows of dataset name, whose rows hold rowlen elements, into *out. */
static int read_rows(const char *path, hid_t f, const char *name, int swmr, int64_t rows,
                     int64_t rowlen, hid_t mtype, size_t esize, void **out)
{
    if (rows == 0) {
        *out = calloc((size_t)rowlen, esize);
        return *out ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "out of memory reading %s", path);
    }
    hid_t d = H5Lexists(f, name, H5P_DEFAULT) > 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    if (d < 0) return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: no dataset /%s", path, name);
    if (swmr) H5Drefresh(d);
    hid_t fs = H5Dget_space(d);
    hsize_t dims[4] = { 0 }, start[4] = { 0 }, cnt[4];
    int nd = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : -1;
    int rc = MK_OK;
    if (nd < 1 || nd > 4 || H5Sget_simple_extent_dims(fs, dims, NULL) < 0) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: bad shape of /%s", path, name);
        goto done;
    }
    int64_t len = 1;
    for (int i = 1; i < nd; i++) len *= (int64_t)dims[i];
    if (len != rowlen) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: /%s rows hold %lld values, expected %lld",
                     path, name, (long long)len, (long long)rowlen);
        goto done;
    }
    if ((int64_t)dims[0] < rows) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: truncated routing log: /%s has %lld rows, /step commits %lld",
                     path, name, (long long)dims[0], (long long)rows);
        goto done;
    }
    /* /step's shape alone decides rows (a damaged file once claimed 2^60): the product must
     * not wrap, or the read below would overrun a small buffer. */
    if ((uint64_t)rows > SIZE_MAX / ((uint64_t)rowlen * esize)) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: /%s claims %lld rows of %lld values",
                     path, name, (long long)rows, (long long)rowlen);
        goto done;
    }
    *out = calloc((size_t)rows * (size_t)rowlen, esize);
    if (!*out) {
        rc = MK_FAIL(MK_ERR_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    memcpy(cnt, dims, sizeof cnt);
    cnt[0] = (hsize_t)rows;
    hid_t ms = H5Screate_simple(nd, cnt, NULL);
    if (ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL) < 0 ||
        H5Dread(d, mtype, ms, fs, H5P_DEFAULT, *out) < 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: truncated or damaged routing log: cannot read /%s", path, name);
    if (ms >= 0) H5Sclose(ms);
done:
    if (fs >= 0) H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

static int read_series(const char *path, hid_t f, const char *pre, int swmr, const mk_rl *rl,
                       mk_rl_series *s)
{
    char n[64];
    snprintf(n, sizeof n, "%sstep", pre);
    int64_t rows = ds_rows(f, n, swmr); /* /step first: the commit record */
    if (rows < 0) {
        if (*pre) { s->rows = 0; return MK_OK; } /* no eval group: no eval rows */
        return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: no dataset /step", path);
    }
    s->rows = rows;
    int64_t L = rl->layers, D = rl->ndomains, E = rl->experts;
    const struct { const char *name; int64_t len; int i64; void **dst; } t[] = {
        { "step", 1, 1, (void **)&s->step },          { "counts", L * D * E, 1, (void **)&s->counts },
        { "tokens", D, 1, (void **)&s->tokens },      { "lbl", L, 0, (void **)&s->lbl },
        { "maxvio", L, 0, (void **)&s->maxvio },      { "loss", *pre ? D : 1, 0, (void **)&s->loss },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        snprintf(n, sizeof n, "%s%s", pre, t[i].name);
        MK_CHECK(read_rows(path, f, n, swmr, rows, t[i].len, t[i].i64 ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE,
                           t[i].i64 ? sizeof(int64_t) : sizeof(double), t[i].dst));
    }
    for (int64_t r = 1; r < rows; r++)
        if (s->step[r] <= s->step[r - 1])
            return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: /%sstep not increasing at row %lld",
                           path, pre, (long long)r);
    return MK_OK;
}

static int read_domains(const char *path, hid_t f, mk_rl *rl)
{
    hid_t d = H5Lexists(f, "domains", H5P_DEFAULT) > 0 ? H5Dopen2(f, "domains", H5P_DEFAULT) : -1;
    if (d < 0) return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: no dataset /domains", path);
    hid_t ft = H5Dget_type(d), sp = H5Dget_space(d);
    hsize_t n = 0;
    int rc = MK_OK;
    if (ft < 0 || sp < 0 || H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) > 0 ||
        mk_h5_dims(sp, &n, 1) != 1 || n != (hsize_t)rl->ndomains) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: /domains is not %d fixed-length strings",
                     path, rl->ndomains);
        goto done;
    }
    size_t w = H5Tget_size(ft);
    char *buf = calloc(n, w + 1);
    rl->domains = calloc(n, sizeof *rl->domains);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, w + 1);
    H5Tset_strpad(mt, H5T_STR_NULLTERM);
    H5Tset_cset(mt, H5Tget_cset(ft));
    if (!buf || !rl->domains) rc = MK_FAIL(MK_ERR_NOMEM, "out of memory reading %s", path);
    else if (H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: cannot read /domains", path);
    else
        for (hsize_t i = 0; i < n && rc == MK_OK; i++)
            if (!(rl->domains[i] = strdup(buf + i * (w + 1))))
                rc = MK_FAIL(MK_ERR_NOMEM, "out of memory reading %s", path);
    H5Tclose(mt);
    free(buf);
done:
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

static int read_open(const char *path, hid_t f, mk_rl *rl)
{
    char fmt[64] = "";
    int ver = 0;
    if (!read_str_attr(f, "format", fmt, sizeof fmt) || strcmp(fmt, "moekit-routing-log") != 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: not a moekit routing log (format attribute missing or wrong)", path);
    if (!read_int_attr(f, "format_version", &ver) || ver < 1 || ver > 1)
        return MK_FAIL(MK_ERR_INPUT, "%s: routing log format version %d not supported (this reads 1)", path, ver);
    if (!read_int_attr(f, "layers", &rl->layers) || !read_int_attr(f, "experts", &rl->experts) ||
        !read_int_attr(f, "topk", &rl->topk) || rl->layers < 1 || rl->experts < 1 || rl->topk < 1 ||
        rl->topk > rl->experts)
        return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: bad layers/experts/topk attributes", path);
    hid_t d = H5Lexists(f, "domains", H5P_DEFAULT) > 0 ? H5Dopen2(f, "domains", H5P_DEFAULT) : -1;
    hsize_t n = 0;
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        if (sp >= 0) { if (mk_h5_dims(sp, &n, 1) != 1) n = 0; H5Sclose(sp); }
        H5Dclose(d);
    }
    if (n < 1) return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: no domains", path);
    /* The writer's own limit (mk_routing_log_open): one /counts row below 2^28 values. */
    if ((uint64_t)rl->layers * n * (uint64_t)rl->experts > (UINT64_C(1) << 28))
        return MK_FAIL(MK_ERR_INPUT, "%s: damaged routing log: layers x domains x experts = %d x %llu x %d"
                       " is larger than any log moekit writes", path, rl->layers, (unsigned long long)n,
                       rl->experts);
    rl->ndomains = (int)n;
    MK_CHECK(read_domains(path, f, rl));
    MK_CHECK(read_series(path, f, "", rl->swmr, rl, &rl->train));
    MK_CHECK(read_series(path, f, "eval/", rl->swmr, rl, &rl->eval));
    if (rl->train.rows == 0 && rl->eval.rows == 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: empty routing log: no step logged yet", path);
    return MK_OK;
}

int mk_rl_read(const char *path, mk_rl *rl)
{
    memset(rl, 0, sizeof *rl);
    struct stat st;
    if (stat(path, &st) != 0) return MK_FAIL(MK_ERR_INPUT, "%s: no routing log (file not found)", path);
    if (st.st_size == 0) return MK_FAIL(MK_ERR_INPUT, "%s: empty routing log (0 bytes)", path);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    rl->path = strdup(path);
    if (!rl->path) return MK_FAIL(MK_ERR_NOMEM, "out of memory");
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    hid_t f = mk_h5_fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl);
    rl->swmr = f >= 0;
    if (f < 0) f = mk_h5_fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    H5Pclose(fapl);
    if (f < 0) {
        mk_rl_free(rl);
        return MK_FAIL(MK_ERR_INPUT, "%s: truncated or unreadable routing log (not a valid HDF5 file)", path);
    }
    int rc = read_open(path, f, rl);
    H5Fclose(f);
    if (rc != MK_OK) mk_rl_free(rl);
    return rc;
}

static void series_free(mk_rl_series *s)
{
    free(s->step); free(s->counts); free(s->tokens); free(s->lbl); free(s->maxvio); free(s->loss);
    memset(s, 0, sizeof *s);
}

void mk_rl_free(mk_rl *rl)
{
    if (!rl) return;
    if (rl->domains)
        for (int i = 0; i < rl->ndomains; i++) free(rl->domains[i]);
    free(rl->domains);
    free(rl->path);
    series_free(&rl->train);
    series_free(&rl->eval);
    memset(rl, 0, sizeof *rl);
}

int mk_rl_ckpt_config(const char *run_dir, const char *name, char *buf, int size)
{
    char p[4096], file[1024] = "";
    snprintf(p, sizeof p, "%s/ckpt/latest", run_dir);
    FILE *fp = fopen(p, "r");
    if (!fp) return 0;
    int got = fgets(file, sizeof file, fp) != NULL;
    fclose(fp);
    file[strcspn(file, "\r\n")] = 0;
    if (!got || !*file || strchr(file, '/')) return 0;
    snprintf(p, sizeof p, "%s/ckpt/%s", run_dir, file);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = mk_h5_fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return 0;
    int ok = 0;
    if (H5Lexists(f, "config", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "config", H5P_DEFAULT);
        if (g >= 0) { ok = read_str_attr(g, name, buf, size); H5Gclose(g); }
    }
    H5Fclose(f);
    return ok;
}
