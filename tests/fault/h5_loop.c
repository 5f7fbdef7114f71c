/* h5_loop.c - T4/T18: the k-th HDF5 call fails, for k = 1, 2, ... over one checkpoint save,
 * load, verify and search (SQLite's I/O-error loop, https://sqlite.org/testing.html §3.2,
 * one level up: at the HDF5 API instead of the system calls).
 *
 * Why: the checkpoint writer builds its file in memory (the core driver) and only then
 * writes it with plain POSIX calls, so the preload shim of test_io_errors.sh never reaches
 * a failing H5Gcreate2, H5Dcreate2 or attribute write. Those error returns were T18's
 * largest unreached group. Here the linker's --wrap (fault.am) puts a counter in front of
 * every HDF5 call that can fail and that the library's objects, compiled into this
 * program, make; closes and the error-stack switches are not counted.
 *
 * The rules, for each k, transient (only call k fails) and persistent (k and every later
 * counted call fail):
 *   - a failed operation returns an MK_ERR_* status with exactly one "moekit: error:" line
 *     that names the file (or, for the save, the checkpoint directory);
 *   - it leaves no HDF5 identifier open (files, groups, datasets, attributes, dataspaces,
 *     datatypes, property lists: H5Inmembers before and after);
 *   - a failed save leaves the previous checkpoint and `latest` byte-identical and nothing
 *     else in ckpt/ (no temporary file);
 *   - an operation that still succeeds (a failure it may absorb) gives the undisturbed
 *     result: a saved checkpoint verifies and loads to the same parameters, a load the same
 *     parameters and metadata, a search the same path; a persistent failure is never
 *     absorbed by a load.
 * The loop ends at the first k that the operation does not reach.
 *
 * usage: h5_loop DIR   (an empty directory; tests/fault/test_h5_errors.sh)
 */
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_ckpt.h"
#include "mk_comm.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_model.h"
#include "mk_trainer.h"
#include "../tap.h"
#include "capture.h"
#include "fixture.h"

/* ------------------------------------------------------------------ the hook */
/* One process, one thread through the checkpoint code: plain globals are enough here. */
static long fail_at; /* 0: never */
static int persistent;
static long counted;
static long hits;
static const char *first_failed; /* the function failed first in this run */
#define MAX_CALLS (1 << 17)
static const void *site[MAX_CALLS + 1]; /* call k's return address, in the undisturbed run */
static hid_t made[MAX_CALLS];           /* identifiers the library got in this run */
static long made_n;
static int recording; /* the undisturbed run: note each call's site */

static int fail_now(const char *fn, const void *where)
{
    counted++;
    if (recording && counted <= MAX_CALLS) site[counted] = where;
    if (fail_at > 0 && (counted == fail_at || (persistent && counted > fail_at))) {
        if (hits++ == 0) first_failed = fn;
        return 1;
    }
    return 0;
}
static hid_t keep_id(hid_t id)
{
    if (id >= 0 && made_n < MAX_CALLS) made[made_n++] = id;
    return id;
}

/* __typeof__ makes the compiler check each wrapper against HDF5's own prototype. The
 * return address tells the call sites apart (make check fails the first call of each). */
#define WRAP(ret, fail, name, params, args)                                  \
    __typeof__(name) __real_##name;                                          \
    __typeof__(name) __wrap_##name;                                          \
    ret __wrap_##name params                                                 \
    {                                                                        \
        if (fail_now(#name, __builtin_return_address(0))) return fail;       \
        return __real_##name args;                                           \
    }
/* the same for functions that return a new identifier, which is kept for the leak check */
#define WRAP_ID(name, params, args)                                          \
    __typeof__(name) __real_##name;                                          \
    __typeof__(name) __wrap_##name;                                          \
    hid_t __wrap_##name params                                               \
    {                                                                        \
        if (fail_now(#name, __builtin_return_address(0))) return H5I_INVALID_HID; \
        return keep_id(__real_##name args);                                  \
    }

WRAP_ID(H5Fcreate, (const char *n, unsigned fl, hid_t c, hid_t a), (n, fl, c, a))
WRAP_ID(H5Fopen, (const char *n, unsigned fl, hid_t a), (n, fl, a))
WRAP(herr_t, -1, H5Fflush, (hid_t o, H5F_scope_t s), (o, s))
WRAP(ssize_t, -1, H5Fget_file_image, (hid_t f, void *b, size_t n), (f, b, n))
WRAP(herr_t, -1, H5PLset_loading_state, (unsigned int m), (m))
WRAP_ID(H5Gcreate2, (hid_t l, const char *n, hid_t a, hid_t b, hid_t c), (l, n, a, b, c))
WRAP_ID(H5Gopen2, (hid_t l, const char *n, hid_t a), (l, n, a))
WRAP(herr_t, -1, H5Gget_info, (hid_t l, H5G_info_t *i), (l, i))
WRAP_ID(H5Dcreate2, (hid_t l, const char *n, hid_t t, hid_t s, hid_t a, hid_t b, hid_t c), (l, n, t, s, a, b, c))
WRAP_ID(H5Dopen2, (hid_t l, const char *n, hid_t a), (l, n, a))
WRAP(herr_t, -1, H5Dwrite, (hid_t d, hid_t t, hid_t m, hid_t f, hid_t x, const void *b), (d, t, m, f, x, b))
WRAP(herr_t, -1, H5Dread, (hid_t d, hid_t t, hid_t m, hid_t f, hid_t x, void *b), (d, t, m, f, x, b))
WRAP_ID(H5Dget_space, (hid_t d), (d))
WRAP_ID(H5Dget_type, (hid_t d), (d))
WRAP_ID(H5Dget_create_plist, (hid_t d), (d))
WRAP_ID(H5Acreate2, (hid_t l, const char *n, hid_t t, hid_t s, hid_t a, hid_t b),
     (l, n, t, s, a, b))
WRAP_ID(H5Aopen, (hid_t o, const char *n, hid_t a), (o, n, a))
WRAP(herr_t, -1, H5Awrite, (hid_t a, hid_t t, const void *b), (a, t, b))
WRAP(herr_t, -1, H5Aread, (hid_t a, hid_t t, void *b), (a, t, b))
WRAP(htri_t, -1, H5Aexists, (hid_t o, const char *n), (o, n))
WRAP_ID(H5Aget_type, (hid_t a), (a))
WRAP_ID(H5Aget_space, (hid_t a), (a))
WRAP(herr_t, -1, H5Aiterate_by_name,
     (hid_t l, const char *o, H5_index_t i, H5_iter_order_t r, hsize_t *n, H5A_operator2_t op, void *d, hid_t a),
     (l, o, i, r, n, op, d, a))
WRAP(herr_t, -1, H5Ovisit, (hid_t o, H5_index_t i, H5_iter_order_t r, H5O_iterate_t op, void *d), (o, i, r, op, d))
WRAP(htri_t, -1, H5Lexists, (hid_t l, const char *n, hid_t a), (l, n, a))
WRAP(ssize_t, -1, H5Lget_name_by_idx,
     (hid_t l, const char *g, H5_index_t i, H5_iter_order_t r, hsize_t n, char *b, size_t s, hid_t a),
     (l, g, i, r, n, b, s, a))
WRAP_ID(H5Screate, (H5S_class_t c), (c))
WRAP_ID(H5Screate_simple, (int r, const hsize_t *d, const hsize_t *m), (r, d, m))
WRAP(herr_t, -1, H5Sselect_hyperslab,
     (hid_t s, H5S_seloper_t o, const hsize_t *a, const hsize_t *b, const hsize_t *c, const hsize_t *d),
     (s, o, a, b, c, d))
WRAP(herr_t, -1, H5Sselect_none, (hid_t s), (s))
WRAP(hssize_t, -1, H5Sget_simple_extent_npoints, (hid_t s), (s))
WRAP(int, -1, H5Sget_simple_extent_ndims, (hid_t s), (s))
WRAP(int, -1, H5Sget_simple_extent_dims, (hid_t s, hsize_t *d, hsize_t *m), (s, d, m))
WRAP_ID(H5Pcreate, (hid_t c), (c))
WRAP(herr_t, -1, H5Pset_chunk, (hid_t p, int n, const hsize_t *d), (p, n, d))
WRAP(herr_t, -1, H5Pset_fletcher32, (hid_t p), (p))
WRAP(herr_t, -1, H5Pset_fill_time, (hid_t p, H5D_fill_time_t t), (p, t))
WRAP(herr_t, -1, H5Pset_libver_bounds, (hid_t p, H5F_libver_t a, H5F_libver_t b), (p, a, b))
WRAP(herr_t, -1, H5Pset_fapl_core, (hid_t p, size_t i, hbool_t b), (p, i, b))
WRAP(herr_t, -1, H5Pset_file_image_callbacks, (hid_t p, H5FD_file_image_callbacks_t *c), (p, c))
WRAP(int, -1, H5Pget_nfilters, (hid_t p), (p))
WRAP(H5Z_filter_t, -1, H5Pget_filter2,
     (hid_t p, unsigned i, unsigned int *f, size_t *n, unsigned *c, size_t l, char *nm, unsigned *fc),
     (p, i, f, n, c, l, nm, fc))
WRAP_ID(H5Tcopy, (hid_t t), (t))
WRAP(herr_t, -1, H5Tset_size, (hid_t t, size_t s), (t, s))
WRAP(H5T_class_t, H5T_NO_CLASS, H5Tget_class, (hid_t t), (t))
WRAP(size_t, 0, H5Tget_size, (hid_t t), (t))
WRAP(htri_t, -1, H5Tis_variable_str, (hid_t t), (t))
WRAP_ID(H5Tget_native_type, (hid_t t, H5T_direction_t d), (t, d))

/* How many identifiers the library got since made_n was reset are still open. */
static long open_ids(void)
{
    long n = 0;
    for (long i = 0; i < made_n; i++) n += H5Iis_valid(made[i]) > 0;
    return n;
}

/* stderr capture: capture.h */
static capture cap;

/* ------------------------------------------------------------------ files */
static int read_all(const char *path, char **buf, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    size_t r;
    while (b && (r = fread(b + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (!b) return -1;
    *buf = b;
    *n = len;
    return 0;
}
static int same_bytes(const char *path, const char *want, size_t want_n)
{
    char *b = NULL;
    size_t n = 0;
    if (read_all(path, &b, &n) != 0) return 0;
    const int same = n == want_n && memcmp(b, want, n) == 0;
    free(b);
    return same;
}
/* the names in a directory, sorted and space-separated */
static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static void list_dir(const char *path, char *out, size_t n)
{
    char *names[64];
    int k = 0;
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && k < 64 && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[k++] = strdup(e->d_name);
    if (d) closedir(d);
    qsort(names, (size_t)k, sizeof *names, cmp_name);
    out[0] = 0;
    for (int i = 0; i < k; i++) {
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s%s", i ? " " : "", names[i] ? names[i] : "?");
        free(names[i]);
    }
}

/* ------------------------------------------------------------------ the operations */
static char dir[3000], ckdir[3100], ck2[3200], ck3[3200], latest[3200], ranks[3200];
static char *ck2_bytes, *latest_bytes;
static size_t ck2_n, latest_n;
static mk_trainer *tr;
static unsigned long params_sum; /* the trainer's parameters, which no operation here changes */

static unsigned long mix(unsigned long h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ul;
    return h;
}
static unsigned long model_sum(void)
{
    mk_model *m = mk_trainer_model(tr);
    return mix(14695981039346656037ul, mk_model_params(m), mk_model_param_count(m) * sizeof(mk_real));
}

/* Load path undisturbed: the digest of the parameters and metadata it gives (0 if it fails).
 * The trainer's own parameters are put back afterwards. */
static unsigned long load_sum(const char *path)
{
    mk_model *m = mk_trainer_model(tr);
    const size_t bytes = mk_model_param_count(m) * sizeof(mk_real);
    mk_real *keep = malloc(bytes);
    if (!keep) return 0;
    memcpy(keep, mk_model_params(m), bytes);
    memset(mk_model_params(m), 0, bytes);
    mk_ckpt_meta meta;
    const long saved = fail_at;
    fail_at = 0;
    const int rc = mk_ckpt_load(tr, path, &meta);
    fail_at = saved;
    unsigned long h = rc == MK_OK ? mix(model_sum(), &meta.step, sizeof meta.step) : 0;
    if (rc == MK_OK) h = mix(h, &meta.samples_consumed, sizeof meta.samples_consumed);
    memcpy(mk_model_params(m), keep, bytes);
    free(keep);
    return h;
}

/* Each op returns a status, sets *sum to a digest of its result on success and *why to
 * what breaks a rule that only the op itself can check (empty: nothing). */
typedef struct op {
    const char *name;
    const char *names; /* what its error line must contain */
    int (*fn)(unsigned long *sum, char *why, size_t n);
    int absorb_persistent; /* may it succeed under a persistent failure? */
} op;

/* A save of step 3 next to step 2, with the BPE ranks file embedded or not. */
static int save_step3(const char *ranks_path, unsigned long *sum, char *why, size_t n)
{
    mk_ckpt_meta meta = { .step = 3, .tokens_seen = 99, .samples_consumed = 12 };
    snprintf(meta.tokenizer, sizeof meta.tokenizer, "%s", ranks_path ? "bpe" : "byte");
    const int rc = mk_ckpt_save(tr, dir, &meta, 2, ranks_path, NULL, 0);
    const long save_calls = counted; /* the checks below are not the save's */
    const long saved = fail_at;
    fail_at = 0;
    why[0] = 0;
    *sum = 0;
    char files[1024];
    list_dir(ckdir, files, sizeof files);
    if (rc != MK_OK) {
        if (strcmp(files, "latest step_00000002.h5") != 0)
            snprintf(why, n, "failed save left ckpt/: %s", files);
        else if (!same_bytes(ck2, ck2_bytes, ck2_n))
            snprintf(why, n, "failed save changed step_00000002.h5");
        else if (!same_bytes(latest, latest_bytes, latest_n))
            snprintf(why, n, "failed save changed latest");
    } else {
        char vwhy[1024] = "";
        if (strcmp(files, "latest step_00000002.h5 step_00000003.h5") != 0)
            snprintf(why, n, "save succeeded but ckpt/ holds: %s", files);
        else if (mk_ckpt_verify(ck3, vwhy, sizeof vwhy) != MK_OK)
            snprintf(why, n, "save succeeded but the file fails verify: %s", vwhy);
        else
            *sum = load_sum(ck3);
        /* back to the state before the save */
        unlink(ck3);
        FILE *f = fopen(latest, "wb");
        if (!f || fwrite(latest_bytes, 1, latest_n, f) != latest_n) snprintf(why, n, "cannot restore latest");
        if (f) fclose(f);
    }
    fail_at = saved;
    counted = save_calls;
    return rc;
}
static int op_save(unsigned long *sum, char *why, size_t n) { return save_step3(NULL, sum, why, n); }
static int op_save_ranks(unsigned long *sum, char *why, size_t n) { return save_step3(ranks, sum, why, n); }
static int op_load(unsigned long *sum, char *why, size_t n)
{
    (void)why, (void)n;
    mk_model *m = mk_trainer_model(tr);
    const size_t bytes = mk_model_param_count(m) * sizeof(mk_real);
    mk_real *keep = malloc(bytes);
    if (!keep) return MK_ERR_NOMEM;
    memcpy(keep, mk_model_params(m), bytes);
    memset(mk_model_params(m), 0, bytes);
    mk_ckpt_meta meta;
    const int rc = mk_ckpt_load(tr, ck2, &meta);
    *sum = rc == MK_OK ? mix(model_sum(), &meta.step, sizeof meta.step) : 0;
    if (rc == MK_OK) *sum = mix(*sum, &meta.samples_consumed, sizeof meta.samples_consumed);
    memcpy(mk_model_params(m), keep, bytes);
    free(keep);
    return rc;
}
static int op_verify(unsigned long *sum, char *why, size_t n)
{
    (void)why, (void)n;
    char vwhy[1024] = "";
    *sum = 1;
    const int rc = mk_ckpt_verify(ck2, vwhy, sizeof vwhy);
    if (rc) fprintf(stderr, "moekit: error: %s\n", vwhy); /* as moe-ckpt verify reports it */
    return rc;
}
static int op_find(unsigned long *sum, char *why, size_t n)
{
    (void)why, (void)n;
    char p[4600] = "";
    const int rc = mk_ckpt_find(dir, p, sizeof p, NULL);
    *sum = mix(14695981039346656037ul, p, strlen(p));
    return rc;
}

static void loop(const op *o, int persist)
{
    unsigned long ref = 0, sum = 0;
    char why[1100], line[2048];
    counted = 0;
    fail_at = 0;
    recording = 1;
    capture_begin(&cap);
    int rc0 = o->fn(&ref, why, sizeof why);
    recording = 0;
    capture_end(&cap, line, sizeof line);
    const long total = counted;
    if (!tap_ok(rc0 == MK_OK && !why[0] && ref != 0, "%s: undisturbed run succeeds (%ld HDF5 calls counted)",
                o->name, total)) {
        printf("# %s %s\n", line, why);
        return;
    }
    /* make check: the first call of each call site; H5LOOP_FULL=1: every call, and one past */
    const int full = getenv("H5LOOP_FULL") && atoi(getenv("H5LOOP_FULL")) == 1;
    const long last = total < MAX_CALLS ? total : MAX_CALLS;
    long runs = 0, broke = 0, absorbed = 0, sites = 0;
    char example[2400] = "";
    for (long k = 1; k <= last + 1; k++) {
        int first = k <= last;
        for (long j = 1; first && j < k; j++) first = site[j] != site[k];
        sites += first;
        if (!full && !first) continue;
        persistent = persist;
        counted = hits = 0;
        first_failed = NULL;
        made_n = 0;
        fail_at = k;
        capture_begin(&cap);
        int rc = o->fn(&sum, why, sizeof why);
        fail_at = 0;
        const int lines = capture_end(&cap, line, sizeof line);
        const long leaked = open_ids();
        runs++;
        if (hits == 0) { /* the operation did not reach call k: done */
            if (rc != MK_OK || sum != ref) {
                broke++;
                printf("# %s k=%ld (not reached): status %d, %s\n", o->name, k, rc, sum != ref ? "other result" : line);
            }
            break;
        }
        char bad[4400] = "";
        if (leaked != 0)
            snprintf(bad, sizeof bad, "%ld HDF5 identifier(s) left open", leaked);
        else if (why[0])
            snprintf(bad, sizeof bad, "%s", why);
        else if (rc == MK_OK) {
            absorbed++;
            if (getenv("H5LOOP_SHOW_ABSORBED")) printf("# %s k=%ld: absorbed a failed %s\n", o->name, k, first_failed);
            if (sum != ref) snprintf(bad, sizeof bad, "status 0 with another result");
            else if (persist && !o->absorb_persistent) snprintf(bad, sizeof bad, "persistent failure ignored");
        } else if (rc < MK_ERR_USAGE || rc > MK_ERR_COMM)
            snprintf(bad, sizeof bad, "status %d is no MK_ERR_* code", rc);
        else if (lines != 1)
            snprintf(bad, sizeof bad, "%d error lines, first '%s'", lines, line);
        else if (!strstr(line, o->names))
            snprintf(bad, sizeof bad, "the error line does not name %s: '%s'", o->names, line);
        else if (!example[0])
            snprintf(example, sizeof example, "%s fails: %s", first_failed, line);
        if (bad[0]) {
            broke++;
            printf("# %s k=%ld (%s fails first): %s\n", o->name, k, first_failed ? first_failed : "?", bad);
        }
    }
    if (example[0]) printf("# %s: e.g. %s\n", o->name, example);
    tap_ok(broke == 0, "%s, %s: %ld runs (%s of %ld calls from %ld call sites): every failure one named "
           "error line, no open identifier, nothing changed on disk (%ld broke a rule, %ld absorbed with the "
           "same result)", o->name, persist ? "persistent" : "transient", runs, full ? "every k" : "first call of each site",
           total, sites, broke, absorbed);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: h5_loop DIR\n");
        return 2;
    }
    const char *srcdir = getenv("srcdir") ? getenv("srcdir") : ".";
    if (strlen(argv[1]) >= sizeof dir) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", dir);
    snprintf(ck2, sizeof ck2, "%s/step_00000002.h5", ckdir);
    snprintf(ck3, sizeof ck3, "%s/step_00000003.h5", ckdir);
    snprintf(latest, sizeof latest, "%s/latest", ckdir);
    snprintf(ranks, sizeof ranks, "%s/tokenizer.ranks", dir);
    snprintf(cap.path, sizeof cap.path, "%s/stderr.txt", dir);

    /* a trainer of a small model, and its step-2 checkpoint */
    mk_config c;
    mk_comm *self = NULL;
    int rc = fixture_trainer(srcdir, &c, &self, &tr);
    mk_ckpt_meta meta = { .step = 2, .tokens_seen = 64, .samples_consumed = 8 };
    snprintf(meta.tokenizer, sizeof meta.tokenizer, "byte");
    if (rc == MK_OK) rc = mk_ckpt_save(tr, dir, &meta, 2, NULL, NULL, 0);
    if (rc == MK_OK && (read_all(ck2, &ck2_bytes, &ck2_n) != 0 || read_all(latest, &latest_bytes, &latest_n) != 0))
        rc = MK_ERR_IO;
    if (!tap_ok(rc == MK_OK, "setup: a trainer and its step-2 checkpoint")) return tap_done();
    params_sum = model_sum();

    /* the hook reaches the library's HDF5 calls: a save whose first one fails must fail */
    fail_at = 1;
    counted = hits = 0;
    capture_begin(&cap);
    unsigned long s;
    char why[1100], line[2048];
    rc = op_save(&s, why, sizeof why);
    fail_at = 0;
    capture_end(&cap, line, sizeof line);
    tap_ok(hits == 1 && rc != MK_OK, "the hook fails the library's HDF5 calls (the first, %s: status %d)",
           first_failed ? first_failed : "none", rc);

    /* two refusals before any HDF5 call */
    char nowhere[3300], file_dir[3300];
    snprintf(nowhere, sizeof nowhere, "%s/no-such.ranks", dir);
    capture_begin(&cap);
    rc = save_step3(nowhere, &s, why, sizeof why);
    int lines = capture_end(&cap, line, sizeof line);
    tap_ok(rc == MK_ERR_INPUT && lines == 1 && strstr(line, nowhere) && !why[0],
           "a save whose BPE ranks file is missing fails with status %d, one line naming it: %s", rc, line);
    snprintf(file_dir, sizeof file_dir, "%s/ranks-as-run-dir", dir);
    FILE *rf = fopen(ranks, "wb"), *ff = fopen(file_dir, "wb");
    const int made = rf && ff && fputs("Zm9v 0\nYmFy 1\n", rf) >= 0;
    if (rf) fclose(rf);
    if (ff) fclose(ff);
    mk_ckpt_meta m3 = { .step = 3 };
    capture_begin(&cap);
    rc = made ? mk_ckpt_save(tr, file_dir, &m3, 2, NULL, NULL, 0) : MK_ERR_IO;
    lines = capture_end(&cap, line, sizeof line);
    tap_ok(made && rc == MK_ERR_IO && lines == 1 && strstr(line, file_dir),
           "a save into a run.dir that is a file fails with status %d, one line naming it: %s", rc, line);

    const op ops[] = { { "checkpoint save (mk_ckpt_save)", ckdir, op_save, 0 },
                       { "checkpoint save with BPE ranks (mk_ckpt_save)", ckdir, op_save_ranks, 0 },
                       { "checkpoint load (mk_ckpt_load)", ck2, op_load, 0 },
                       { "checkpoint verify (mk_ckpt_verify)", ck2, op_verify, 0 },
                       { "checkpoint search (mk_ckpt_find)", dir, op_find, 1 } };
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        loop(&ops[i], 0);
        loop(&ops[i], 1);
    }
    tap_ok(model_sum() == params_sum, "the trainer's parameters are unchanged at the end");
    free(ck2_bytes);
    free(latest_bytes);
    mk_trainer_free(&tr);
    mk_comm_free(&self);
    return tap_done();
}
