/* test_routing_log.c - the routing log: create, append, close, resume, read back with the HDF5
 * C API and compare exactly; resume with another shape fails with MK_ERR_INPUT and leaves the
 * file alone; a path in a missing directory fails with MK_ERR_IO; HDF5's error printing is off
 * inside the library and the caller's handler is restored. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "mk_error.h"
#include "mk_routing_log.h"
#include "tap.h"

enum { L = 2, DM = 3, E = 4, K = 2 };
static const char *const domains[DM] = { "code", "math", "prose-\xc3\xbc" };   /* UTF-8 */

/* ------------------------------------------------------------------ known values */

typedef struct row {
    int64_t counts[L * DM * E], tokens[DM];
    double lbl[L], maxvio[L], loss[DM];     /* training rows use loss[0] */
} row;

/* The values of step s; eval rows are shifted so they differ from training rows. */
static void make_row(int64_t s, int eval, row *r)
{
    int64_t off = eval ? 5 : 0;
    for (int l = 0; l < L; l++)
        for (int d = 0; d < DM; d++)
            for (int e = 0; e < E; e++)
                r->counts[(l * DM + d) * E + e] = (INT64_C(1) << 45) + s * 100000 + l * 1000 + d * 10 + e + off;
    for (int d = 0; d < DM; d++) r->tokens[d] = (INT64_C(1) << 35) + s * 7 + d + off;
    for (int l = 0; l < L; l++) {
        r->lbl[l] = 1.0 + (double)s * 0.001 + l + (eval ? 0.3 : 0.0);
        r->maxvio[l] = 0.1 * (double)s + l * 0.01 + (eval ? 0.7 : 0.0);
    }
    if (eval)
        for (int d = 0; d < DM; d++) r->loss[d] = 2.0 + d / 3.0 + 1.0 / (double)s;
    else
        r->loss[0] = 3.0 / (double)s;
}

static int append(mk_routing_log *log, int64_t s)
{
    row r;
    make_row(s, 0, &r);
    return mk_routing_log_append(log, s, r.counts, r.tokens, r.lbl, r.maxvio, r.loss[0]);
}

static int append_eval(mk_routing_log *log, int64_t s)
{
    row r;
    make_row(s, 1, &r);
    return mk_routing_log_append_eval(log, s, r.counts, r.tokens, r.lbl, r.maxvio, r.loss);
}

/* ------------------------------------------------------------------ reading back */

/* Read a whole dataset; its dims must be [nrows, row...] with the given row shape. */
static void *read_ds(hid_t f, const char *name, hid_t memtype, int rank, const hsize_t *row_dims,
                     hsize_t *nrows)
{
    hsize_t dims[4] = { 0, 0, 0, 0 };
    void *buf = NULL;
    *nrows = 0;
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t sp = ds < 0 ? -1 : H5Dget_space(ds);
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != rank || H5Sget_simple_extent_dims(sp, dims, NULL) < 0) {
        tap_diag("%s: missing or wrong rank", name);
        goto done;
    }
    size_t n = (size_t)dims[0];
    for (int d = 1; d < rank; d++) {
        if (dims[d] != row_dims[d - 1]) {
            tap_diag("%s: dim %d is %llu, want %llu", name, d, (unsigned long long)dims[d],
                     (unsigned long long)row_dims[d - 1]);
            goto done;
        }
        n *= (size_t)dims[d];
    }
    buf = calloc(n ? n : 1, 8);
    if (!buf || (n && H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)) {
        tap_diag("%s: read failed", name);
        free(buf);
        buf = NULL;
        goto done;
    }
    *nrows = dims[0];
done:
    if (sp >= 0) H5Sclose(sp);
    if (ds >= 0) H5Dclose(ds);
    return buf;
}

/* Check table group ("" or "/eval") of the file holds exactly steps want[0..n-1]. */
static void check_table(hid_t f, const char *group, const int64_t *want, int n, const char *what)
{
    int eval = group[0] != 0;
    char name[64];
    hsize_t rows[6];
    const hsize_t counts_row[3] = { L, DM, E }, dm_row[1] = { DM }, l_row[1] = { L };
    snprintf(name, sizeof name, "%s/step", group);
    int64_t *step = read_ds(f, name, H5T_NATIVE_INT64, 1, NULL, &rows[0]);
    snprintf(name, sizeof name, "%s/counts", group);
    int64_t *counts = read_ds(f, name, H5T_NATIVE_INT64, 4, counts_row, &rows[1]);
    snprintf(name, sizeof name, "%s/tokens", group);
    int64_t *tokens = read_ds(f, name, H5T_NATIVE_INT64, 2, dm_row, &rows[2]);
    snprintf(name, sizeof name, "%s/lbl", group);
    double *lbl = read_ds(f, name, H5T_NATIVE_DOUBLE, 2, l_row, &rows[3]);
    snprintf(name, sizeof name, "%s/maxvio", group);
    double *maxvio = read_ds(f, name, H5T_NATIVE_DOUBLE, 2, l_row, &rows[4]);
    snprintf(name, sizeof name, "%s/loss", group);
    double *loss = read_ds(f, name, H5T_NATIVE_DOUBLE, eval ? 2 : 1, dm_row, &rows[5]);
    int ok = step && counts && tokens && lbl && maxvio && loss;
    for (int i = 0; ok && i < 6; i++)
        if (rows[i] != (hsize_t)n) {
            tap_diag("dataset %d of %s has %llu rows, want %d", i, group[0] ? group : "/",
                     (unsigned long long)rows[i], n);
            ok = 0;
        }
    int bad = 0;
    for (int r = 0; ok && r < n && !bad; r++) {
        row x;
        make_row(want[r], eval, &x);
        bad = step[r] != want[r];
        for (int i = 0; i < L * DM * E; i++) bad |= counts[(size_t)r * L * DM * E + i] != x.counts[i];
        for (int d = 0; d < DM; d++) bad |= tokens[r * DM + d] != x.tokens[d];
        for (int l = 0; l < L; l++) bad |= lbl[r * L + l] != x.lbl[l] || maxvio[r * L + l] != x.maxvio[l];
        if (eval)
            for (int d = 0; d < DM; d++) bad |= loss[r * DM + d] != x.loss[d];
        else
            bad |= loss[r] != x.loss[0];
        if (bad) tap_diag("row %d (step %lld) differs", r, (long long)want[r]);
    }
    tap_ok(ok && !bad, "%s: %s holds steps as written, every value exact", what,
           group[0] ? group : "/");
    free(step), free(counts), free(tokens), free(lbl), free(maxvio), free(loss);
}

static int read_int_attr(hid_t f, const char *name)
{
    int v = -12345;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a >= 0) {
        H5Aread(a, H5T_NATIVE_INT, &v);
        H5Aclose(a);
    }
    return v;
}

static void check_header(hid_t f)
{
    char fmt[64] = "";
    hid_t a = H5Aopen(f, "format", H5P_DEFAULT);
    hid_t ft = a < 0 ? -1 : H5Aget_type(a);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, sizeof fmt);
    int ok = ft >= 0 && H5Tis_variable_str(ft) == 0 && H5Aread(a, t, fmt) >= 0 &&
             strcmp(fmt, "moekit-routing-log") == 0;
    tap_ok(ok, "attribute format = \"moekit-routing-log\" (fixed-length string)");
    H5Tclose(t);
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    tap_ok(read_int_attr(f, "format_version") == 1 && read_int_attr(f, "layers") == L &&
           read_int_attr(f, "experts") == E && read_int_attr(f, "topk") == K,
           "attributes format_version, layers, experts, topk");

    hid_t ds = H5Dopen2(f, "domains", H5P_DEFAULT);
    ft = ds < 0 ? -1 : H5Dget_type(ds);
    char buf[DM][32];
    memset(buf, 0, sizeof buf);
    t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 32);
    H5Tset_cset(t, H5T_CSET_UTF8);
    ok = ft >= 0 && H5Tis_variable_str(ft) == 0 && H5Dread(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
    for (int d = 0; ok && d < DM; d++) ok = strcmp(buf[d], domains[d]) == 0;
    tap_ok(ok, "/domains: fixed-length UTF-8 names as given");
    H5Tclose(t);
    if (ft >= 0) H5Tclose(ft);
    if (ds >= 0) H5Dclose(ds);
}

/* Open path as any HDF5 reader would (no SWMR): only possible once the writer closed it. */
static void check_file(const char *path, const int64_t *steps, int n, const int64_t *esteps, int ne,
                       const char *what, int header)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (!tap_ok(f >= 0, "%s: file opens without SWMR after close", what)) return;
    if (header) check_header(f);
    check_table(f, "", steps, n, what);
    check_table(f, "/eval", esteps, ne, what);
    H5Fclose(f);
}

/* ------------------------------------------------------------------ stderr capture */

typedef struct capture { int saved; char path[256]; } capture;

static void capture_begin(capture *c, const char *dir)
{
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", dir);
    fflush(stderr);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
}

/* Restore stderr; return what was written (static buffer), echoed as diagnostics. */
static const char *capture_end(capture *c)
{
    static char text[4096];
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    FILE *fp = fopen(c->path, "r");
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    if (fp) fclose(fp);
    text[n] = 0;
    if (n) tap_diag("stderr: %.*s", (int)strcspn(text, "\n"), text);
    return text;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int hdf5_printed;
static herr_t counting_handler(hid_t stack, void *data)
{
    (void)stack, (void)data;
    hdf5_printed++;
    return 0;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ------------------------------------------------------------------ the tests */

int main(void)
{
    char dir[] = "/tmp/test_routing_log.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 99;
    }
    char path[256], tmp[280];
    snprintf(path, sizeof path, "%s/routing.h5", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    H5Eset_auto2(H5E_DEFAULT, counting_handler, NULL);

    /* 1. Create and append 5 steps (eval after steps 20 and 40). */
    mk_routing_log *log = NULL;
    int rc = mk_routing_log_open(path, L, E, K, DM, domains, MK_ROUTING_LOG_CREATE, &log);
    tap_ok(rc == MK_OK && log, "create %s", path);
    if (!log) return tap_done();
    tap_ok(exists(path) && !exists(tmp), "the log is at its name once open, no .tmp left");
    const int64_t s5[5] = { 10, 20, 30, 40, 50 }, e2[2] = { 20, 40 };
    rc = MK_OK;
    for (int i = 0; i < 5 && rc == MK_OK; i++) {
        rc = append(log, s5[i]);
        if (rc == MK_OK && s5[i] % 20 == 0) rc = append_eval(log, s5[i]);
    }
    tap_ok(rc == MK_OK && mk_routing_log_steps(log) == 5 && mk_routing_log_eval_steps(log) == 2,
           "append 5 steps and 2 eval passes");
    capture c;
    capture_begin(&c, dir);
    rc = append(log, 50);
    const char *err = capture_end(&c);
    tap_ok(rc == MK_ERR_USAGE && count_lines(err) == 1 && strstr(err, "steps must increase"),
           "a step not after the last one: MK_ERR_USAGE, one error line");
    tap_ok(mk_routing_log_flush(log) == MK_OK, "flush");
    tap_ok(mk_routing_log_close(&log) == MK_OK && log == NULL, "close");
    tap_ok(mk_routing_log_close(&log) == MK_OK, "close of NULL is fine");
    check_file(path, s5, 5, e2, 2, "after create", 1);

    /* 2. Resume keeping everything, append 2 more steps and an eval pass. */
    rc = mk_routing_log_open(path, L, E, K, DM, domains, MK_ROUTING_LOG_KEEP_ALL, &log);
    tap_ok(rc == MK_OK && log && mk_routing_log_steps(log) == 5 && mk_routing_log_eval_steps(log) == 2,
           "resume (keep all): 5 steps and 2 eval passes there");
    if (!log) return tap_done();
    rc = append(log, 60);
    if (rc == MK_OK) rc = append_eval(log, 60);
    if (rc == MK_OK) rc = append(log, 70);
    tap_ok(rc == MK_OK, "append steps 60 and 70 and eval 60");
    tap_ok(mk_routing_log_close(&log) == MK_OK, "close");
    const int64_t s7[7] = { 10, 20, 30, 40, 50, 60, 70 }, e3[3] = { 20, 40, 60 };
    check_file(path, s7, 7, e3, 3, "after resume", 1);

    /* 3. Resume from step 30: the rows after it (training and eval) are dropped. */
    rc = mk_routing_log_open(path, L, E, K, DM, domains, 30, &log);
    tap_ok(rc == MK_OK && log && mk_routing_log_steps(log) == 3 && mk_routing_log_eval_steps(log) == 1,
           "resume from step 30: 3 steps and 1 eval pass kept");
    if (!log) return tap_done();
    tap_ok(append(log, 35) == MK_OK && append_eval(log, 35) == MK_OK, "append step 35 and eval 35");
    tap_ok(mk_routing_log_close(&log) == MK_OK, "close");
    const int64_t s4[4] = { 10, 20, 30, 35 }, e2b[2] = { 20, 35 };
    check_file(path, s4, 4, e2b, 2, "after resume from 30", 0);

    /* 4. Resume with another shape: MK_ERR_INPUT naming the attribute; the file is untouched. */
    const struct { int layers, experts, topk; const char *attr; } bad[3] = {
        { L + 1, E, K, "attribute layers" }, { L, E + 2, K, "attribute experts" },
        { L, E, K + 1, "attribute topk" } };
    for (int i = 0; i < 3; i++) {
        capture_begin(&c, dir);
        rc = mk_routing_log_open(path, bad[i].layers, bad[i].experts, bad[i].topk, DM, domains,
                                 MK_ROUTING_LOG_KEEP_ALL, &log);
        err = capture_end(&c);
        tap_ok(rc == MK_ERR_INPUT && !log && strstr(err, bad[i].attr) && strstr(err, path) &&
               count_lines(err) == 1, "resume with another %s: MK_ERR_INPUT naming it", bad[i].attr + 10);
    }
    const char *const other[DM] = { "code", "maths", "prose-\xc3\xbc" };
    capture_begin(&c, dir);
    rc = mk_routing_log_open(path, L, E, K, DM, other, MK_ROUTING_LOG_KEEP_ALL, &log);
    err = capture_end(&c);
    tap_ok(rc == MK_ERR_INPUT && strstr(err, "/domains[1]"), "resume with another domain name: MK_ERR_INPUT");
    capture_begin(&c, dir);
    rc = mk_routing_log_open(path, L, E, K, DM - 1, domains, MK_ROUTING_LOG_KEEP_ALL, &log);
    err = capture_end(&c);
    tap_ok(rc == MK_ERR_INPUT && strstr(err, "/domains"), "resume with fewer domains: MK_ERR_INPUT");
    tap_ok(!exists(tmp), "failed resumes leave no .tmp");
    check_file(path, s4, 4, e2b, 2, "after failed resumes", 0);

    /* 5. Paths that cannot work. */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no/such/dir/routing.h5", dir);
    capture_begin(&c, dir);
    rc = mk_routing_log_open(missing, L, E, K, DM, domains, MK_ROUTING_LOG_CREATE, &log);
    err = capture_end(&c);
    tap_ok(rc == MK_ERR_IO && !log && strstr(err, missing) && count_lines(err) == 1,
           "create in a missing directory: MK_ERR_IO naming the path, one line");
    capture_begin(&c, dir);
    rc = mk_routing_log_open(missing, L, E, K, DM, domains, 0, &log);
    err = capture_end(&c);
    tap_ok(rc == MK_ERR_IO && !log, "resume in a missing directory: MK_ERR_IO");

    char junk[300];
    snprintf(junk, sizeof junk, "%s/junk.h5", dir);
    FILE *fp = fopen(junk, "w");
    if (fp) {
        fputs("not an HDF5 file\n", fp);
        fclose(fp);
    }
    capture_begin(&c, dir);
    rc = mk_routing_log_open(junk, L, E, K, DM, domains, MK_ROUTING_LOG_KEEP_ALL, &log);
    err = capture_end(&c);
    tap_ok(rc == MK_ERR_INPUT && !log && strstr(err, junk), "resume a file that is not HDF5: MK_ERR_INPUT");

    char fresh[300];
    snprintf(fresh, sizeof fresh, "%s/fresh.h5", dir);
    rc = mk_routing_log_open(fresh, L, E, K, DM, domains, 100, &log);
    tap_ok(rc == MK_OK && log && mk_routing_log_steps(log) == 0, "resume without a file starts a new log");
    tap_ok(append(log, 101) == MK_OK && mk_routing_log_close(&log) == MK_OK, "... which takes appends");
    const int64_t s1[1] = { 101 };
    check_file(fresh, s1, 1, NULL, 0, "new log on resume", 0);

    /* 6. Bad arguments. */
    capture_begin(&c, dir);
    int r1 = mk_routing_log_open(fresh, L, E, E + 1, DM, domains, MK_ROUTING_LOG_CREATE, &log);
    const char *const dup[2] = { "code", "code" };
    int r2 = mk_routing_log_open(fresh, L, E, K, 2, dup, MK_ROUTING_LOG_CREATE, &log);
    int r3 = mk_routing_log_open(fresh, 0, E, K, DM, domains, MK_ROUTING_LOG_CREATE, &log);
    capture_end(&c);
    tap_ok(r1 == MK_ERR_USAGE && r2 == MK_ERR_USAGE && r3 == MK_ERR_USAGE && !log,
           "topk > experts, a repeated domain, 0 layers: MK_ERR_USAGE");

    /* 7. HDF5 printed nothing through the caller's handler, which is still installed. */
    H5E_auto2_t fn = NULL;
    void *data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    tap_ok(hdf5_printed == 0 && fn == counting_handler, "HDF5's error printing off inside, handler restored");

    unlink(path), unlink(fresh), unlink(junk), unlink(c.path);
    rmdir(dir);
    return tap_done();
}
