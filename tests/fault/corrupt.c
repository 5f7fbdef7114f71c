/* corrupt.c - T6: damage a good file from outside and check that moekit notices or is
 * unaffected (SQLite's malformed-database tests, https://sqlite.org/testing.html §4.2).
 *
 *   corrupt DIR NDATA NMETA NTRUNC NFLIP NDTRUNC SEED
 *
 *   Checkpoint: DIR/ckpt holds step_00000002.h5 and step_00000004.h5 (good). Each case rewrites
 *       step 4 with one byte changed inside a tensor's stored chunk (NDATA cases), one byte
 *       changed anywhere else (NMETA), or cut at a random length (NTRUNC), then in a child
 *       process: mk_ckpt_verify must fail, naming the tensor for a chunk byte, or pass with
 *       every tensor, every attribute (root, /config, /state) and the tokenizer bytes equal
 *       to the good file's; and mk_ckpt_find (what --resume auto uses) must pick step 4
 *       exactly when it verifies, else step 2.
 *   Dataset: DIR/ds is a moe-shard dataset with one domain. Each case changes one byte of the
 *       train shard's .idx or .bin (NFLIP), or cuts one of them (NDTRUNC); mk_dataset_open must fail with one
 *       error line naming the file, or the shard must read back identical tokens.
 *
 * A child that crashes or runs 20 s counts as a failure. Prints TAP with the tallies.
 */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../tap.h"
#include "mk_ckpt.h"
#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_indexed.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) len = -1;
    fclose(f);
    *n = len > 0 ? (size_t)len : 0;
    return b;
}
static int spill(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* ------------------------------------------------------------------ checkpoint contents */
/* A digest of everything a load takes from the file: each dataset's bytes and every
 * attribute, as one text of "name:hash" entries. */
typedef struct region { char name[128]; haddr_t addr; hsize_t size; } region;
static region regions[512];
static int nregions;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

typedef struct digest { char *text; size_t len, cap; int collect; } digest;
static void dput(digest *d, const char *s)
{
    size_t l = strlen(s);
    if (d->len + l + 1 > d->cap) {
        d->cap = (d->len + l + 1) * 2;
        d->text = realloc(d->text, d->cap);
    }
    memcpy(d->text + d->len, s, l + 1);
    d->len += l;
}

static herr_t attr_cb(hid_t loc, const char *name, const H5A_info_t *info, void *op)
{
    (void)info;
    digest *d = op;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    size_t sz = H5Tget_size(t);
    hid_t s = H5Aget_space(a);
    hssize_t np = H5Sget_simple_extent_npoints(s);
    size_t n = sz * (size_t)(np > 0 ? np : 1);
    unsigned char *buf = n < (1u << 24) ? calloc(n + 1, 1) : NULL;
    int ok = buf && H5Aread(a, t, buf) >= 0;
    char line[400];
    snprintf(line, sizeof line, "@%s:%llx;", name, ok ? (unsigned long long)fnv(1469598103934665603ull, buf, n) : 0ull);
    dput(d, line);
    free(buf);
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return ok ? 0 : -1;
}

static herr_t visit_cb(hid_t o, const char *name, const H5O_info_t *info, void *op)
{
    digest *d = op;
    char line[400];
    snprintf(line, sizeof line, "[%s]", name);
    dput(d, line);
    if (H5Aiterate_by_name(o, name, H5_INDEX_NAME, H5_ITER_INC, NULL, attr_cb, d, H5P_DEFAULT) < 0) return -1;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(o, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t t = H5Dget_type(ds), s = H5Dget_space(ds);
    size_t n = H5Tget_size(t) * (size_t)H5Sget_simple_extent_npoints(s);
    unsigned char *buf = n < (1u << 28) ? malloc(n ? n : 1) : NULL;
    int ok = buf && H5Dread(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
    snprintf(line, sizeof line, "=%llx;", ok ? (unsigned long long)fnv(1469598103934665603ull, buf, n) : 0ull);
    dput(d, line);
    if (d->collect) { /* where the tensor's chunks lie in the file */
        hsize_t nch = 0;
        H5Dget_num_chunks(ds, s, &nch);
        for (hsize_t c = 0; c < nch && nregions < 512; c++) {
            region *r = &regions[nregions];
            unsigned mask;
            if (H5Dget_chunk_info(ds, s, c, NULL, &mask, &r->addr, &r->size) >= 0) {
                snprintf(r->name, sizeof r->name, "/%s", name);
                nregions++;
            }
        }
    }
    free(buf);
    H5Sclose(s);
    H5Tclose(t);
    H5Dclose(ds);
    return ok ? 0 : -1;
}

/* 0 and the digest in d, or -1 when HDF5 cannot read it all */
static int ckpt_digest(const char *path, digest *d)
{
    H5E_auto2_t f0;
    void *d0;
    H5Eget_auto2(H5E_DEFAULT, &f0, &d0);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int rc = -1;
    if (f >= 0) {
        dput(d, "");
        rc = H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_INC, NULL, attr_cb, d) < 0 ||
                     H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, visit_cb, d) < 0
                 ? -1
                 : 0;
        H5Fclose(f);
    }
    H5Eset_auto2(H5E_DEFAULT, f0, d0);
    return rc;
}

/* outcomes, as child exit statuses */
enum { C_DETECTED = 0, C_SAME = 1, C_CHANGED = 2, C_UNNAMED = 3, C_FIND = 4, C_SETUP = 5 };
static const char *const outcome_name[] = { "detected", "unaffected", "UNDETECTED CHANGE", "error without the tensor's name",
                                            "wrong --resume auto choice", "setup" };

static int ckpt_case(const char *dir, const char *path, const char *want_name, const char *ref, char *why, size_t whyn)
{
    why[0] = 0;
    int vr = mk_ckpt_verify(path, why, whyn);
    char found[4200] = "";
    int fr = mk_ckpt_find(dir, found, sizeof found, NULL);
    const int picked4 = fr == MK_OK && strstr(found, "step_00000004.h5") != NULL;
    const int picked2 = fr == MK_OK && strstr(found, "step_00000002.h5") != NULL;
    if (vr != MK_OK) {
        if (!picked2) return C_FIND;
        if (want_name && !strstr(why, want_name)) return C_UNNAMED;
        return C_DETECTED;
    }
    if (!picked4) return C_FIND;
    digest d = { 0 };
    if (ckpt_digest(path, &d) != 0 || strcmp(d.text, ref) != 0) {
        size_t at = 0; /* show where the digests part */
        while (d.text && d.text[at] && d.text[at] == ref[at]) at++;
        size_t from = at > 60 ? at - 60 : 0;
        snprintf(why, whyn, "verify passed but the contents differ: ...%.90s", ref + from);
        return C_CHANGED;
    }
    return C_SAME;
}

/* run fn in a child with a 20 s limit; returns its outcome, or -signal */
static int in_child(int (*fn)(void *), void *arg, int *status_out)
{
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    if (p == 0) {
        alarm(20);
        int r = fn(arg);
        fflush(stdout);
        _exit(r);
    }
    int st = 0;
    waitpid(p, &st, 0);
    *status_out = st;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

typedef struct ckarg { const char *dir, *path, *name, *ref; char why[1024]; int pipefd; } ckarg;
static int ckpt_child(void *v)
{
    ckarg *a = v;
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2); /* mk_ckpt_find's lines */
    int r = ckpt_case(a->dir, a->path, a->name, a->ref, a->why, sizeof a->why);
    if (write(a->pipefd, a->why, strlen(a->why) + 1) < 0) r = C_SETUP;
    return r;
}

static int run_ckpt(const char *dir, int ndata, int nmeta, int ntrunc)
{
    char p4[4200], keep[4300];
    snprintf(p4, sizeof p4, "%s/ckpt/step_00000004.h5", dir);
    snprintf(keep, sizeof keep, "%s/good4.h5", dir);
    size_t n;
    unsigned char *orig = slurp(p4, &n);
    digest ref = { .collect = 1 };
    const int read_ok = orig && n > 0 && ckpt_digest(p4, &ref) == 0;
    if (!tap_ok(read_ok && nregions > 0,
                "the good step-4 checkpoint reads (%zu bytes, %d tensor chunks)", n, nregions))
        return 1;
    spill(keep, orig, n);
    size_t data_bytes = 0;
    for (int i = 0; i < nregions; i++) data_bytes += regions[i].size;
    printf("# %zu of %zu bytes are tensor chunks (Fletcher32 covers them)\n", data_bytes, n);
    unsigned char *bad = malloc(n);
    const char *kinds[3] = { "tensor-data flip", "metadata flip", "truncation" };
    const int counts[3] = { ndata, nmeta, ntrunc };
    int all_ok = 1;
    for (int kind = 0; kind < 3; kind++) {
        int tally[6] = { 0 }, crashes = 0;
        char example[3][1200] = { "", "", "" };
        for (int c = 0; c < counts[kind]; c++) {
            memcpy(bad, orig, n);
            size_t len = n;
            char name[140] = "", what[200];
            if (kind == 0) {
                size_t off = rnd() % data_bytes;
                int r = 0;
                while (off >= regions[r].size) off -= regions[r++].size;
                size_t at = (size_t)regions[r].addr + off;
                bad[at] ^= (unsigned char)(1 + rnd() % 255);
                snprintf(name, sizeof name, "%s", regions[r].name);
                snprintf(what, sizeof what, "byte %zu (%s)", at, name);
            } else if (kind == 1) {
                size_t at;
                for (;;) {
                    at = rnd() % n;
                    int inside = 0;
                    for (int r = 0; r < nregions; r++)
                        if (at >= regions[r].addr && at < regions[r].addr + regions[r].size) inside = 1;
                    if (!inside) break;
                }
                bad[at] ^= (unsigned char)(1 + rnd() % 255);
                snprintf(what, sizeof what, "byte %zu", at);
            } else {
                len = rnd() % n;
                snprintf(what, sizeof what, "cut to %zu bytes", len);
            }
            spill(p4, bad, len);
            int fds[2];
            if (pipe(fds) != 0) return 1;
            ckarg a = { .dir = dir, .path = p4, .name = name[0] ? name : NULL, .ref = ref.text, .pipefd = fds[1] };
            int st;
            int r = in_child(ckpt_child, &a, &st);
            close(fds[1]);
            char why[1024] = "";
            ssize_t got = read(fds[0], why, sizeof why - 1);
            why[got > 0 ? got : 0] = 0;
            close(fds[0]);
            if (r < 0 || r > C_SETUP) {
                crashes++;
                printf("# %s %s: the check died (%s %d)\n", kinds[kind], what, r < 0 ? "signal" : "status", r < 0 ? -r : r);
                continue;
            }
            tally[r]++;
            if (r >= C_CHANGED) printf("# %s %s: %s: %s\n", kinds[kind], what, outcome_name[r], why);
            else if (!example[r][0]) snprintf(example[r], sizeof example[r], "%s: %s", what, why);
        }
        for (int r = 0; r < 2; r++)
            if (example[r][0]) printf("# %s, %s e.g. %s\n", kinds[kind], outcome_name[r], example[r]);
        const int ok = tally[C_CHANGED] + tally[C_UNNAMED] + tally[C_FIND] + tally[C_SETUP] + crashes == 0;
        all_ok &= ok;
        tap_ok(ok, "%d %ss: %d detected by verify%s, %d with identical contents, %d undetected changes, %d unnamed, "
               "%d wrong auto choices, %d crashes/timeouts",
               counts[kind], kinds[kind], tally[C_DETECTED], kind == 0 ? " naming the tensor" : "", tally[C_SAME],
               tally[C_CHANGED], tally[C_UNNAMED], tally[C_FIND], crashes);
    }
    spill(p4, orig, n);
    free(bad);
    free(orig);
    free(ref.text);
    return all_ok ? 0 : 1;
}

/* ------------------------------------------------------------------ datasets */
typedef struct darg { const char *ds, *prefix, *file; const int32_t *ref; uint64_t nref; char errpath[4300]; } darg;
enum { D_ERROR = 0, D_SAME = 1, D_CHANGED = 2, D_UNNAMED = 3 };
static const char *const d_outcome[] = { "refused", "identical tokens", "CHANGED TOKENS", "error not naming the file" };

static int data_child(void *v)
{
    darg *a = v;
    int fd = open(a->errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
    mk_dataset_opts o = { .path = a->ds, .mixture = "natural", .seq_len = 32, .seed = 1, .tokenizer = "",
                          .model_vocab = 257 };
    mk_dataset *d = NULL;
    int rc = mk_dataset_open(&o, &d);
    if (rc == MK_OK) mk_dataset_close(&d);
    mk_indexed *ix = NULL;
    if (rc == MK_OK) rc = mk_indexed_open(a->prefix, &ix);
    if (rc != MK_OK) {
        fflush(stderr);
        FILE *f = fopen(a->errpath, "r");
        char line[2048] = "";
        int lines = 0, named = 0;
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "moekit: error:", 14) == 0) lines++, named |= strstr(line, a->file) != NULL;
        if (f) fclose(f);
        if (!(lines == 1 && named)) printf("#   %s", line);
        return lines == 1 && named ? D_ERROR : D_UNNAMED;
    }
    uint64_t nt = mk_indexed_tokens(ix);
    int32_t *tok = malloc((nt ? nt : 1) * sizeof *tok);
    int same = nt == a->nref && mk_indexed_read(ix, 0, (size_t)nt, tok) == MK_OK &&
               memcmp(tok, a->ref, (size_t)nt * sizeof *tok) == 0;
    mk_indexed_close(&ix);
    free(tok);
    return same ? D_SAME : D_CHANGED;
}

static int run_data(const char *dir, int nflip, int ntrunc)
{
    char ds[4200], prefix[4300], files[2][4400];
    snprintf(ds, sizeof ds, "%s/ds", dir);
    snprintf(prefix, sizeof prefix, "%s/ds/english/train_00000", dir);
    snprintf(files[0], sizeof files[0], "%s.idx", prefix);
    snprintf(files[1], sizeof files[1], "%s.bin", prefix);
    mk_indexed *ix = NULL;
    if (!tap_ok(mk_indexed_open(prefix, &ix) == MK_OK, "the good shard opens")) return 1;
    uint64_t nref = mk_indexed_tokens(ix);
    int32_t *ref = malloc(nref * sizeof *ref);
    mk_indexed_read(ix, 0, (size_t)nref, ref);
    mk_indexed_close(&ix);
    size_t len[2];
    unsigned char *orig[2] = { slurp(files[0], &len[0]), slurp(files[1], &len[1]) };
    int all_ok = 1;
    const char *kinds[2] = { "flip", "truncation" };
    for (int kind = 0; kind < 2; kind++) {
        int tally[2][4] = { { 0 } }, crashes = 0, cases = kind ? ntrunc : nflip;
        for (int c = 0; c < cases; c++) {
            const int which = (int)(rnd() % 2);
            unsigned char *b = malloc(len[which]);
            memcpy(b, orig[which], len[which]);
            size_t n = len[which];
            char what[200];
            if (kind == 0) {
                size_t at = rnd() % n;
                b[at] ^= (unsigned char)(1 + rnd() % 255);
                snprintf(what, sizeof what, "%s byte %zu", which ? ".bin" : ".idx", at);
            } else {
                n = rnd() % n;
                snprintf(what, sizeof what, "%s cut to %zu bytes", which ? ".bin" : ".idx", n);
            }
            spill(files[which], b, n);
            free(b);
            darg a = { .ds = ds, .prefix = prefix, .file = strrchr(files[which], '/') + 1, .ref = ref, .nref = nref };
            snprintf(a.errpath, sizeof a.errpath, "%s/err.txt", dir);
            int st;
            int r = in_child(data_child, &a, &st);
            spill(files[which], orig[which], len[which]);
            if (r < 0 || r > D_UNNAMED) {
                crashes++;
                printf("# %s: the check died (%d)\n", what, r);
                continue;
            }
            tally[which][r]++;
            if (r >= D_CHANGED && tally[which][r] <= 3) printf("# %s: %s\n", what, d_outcome[r]);
        }
        for (int w = 0; w < 2; w++) {
            const int ok = tally[w][D_CHANGED] + tally[w][D_UNNAMED] == 0 && (w == 1 || crashes == 0);
            all_ok &= ok;
            tap_ok(ok, "dataset %s %ss: %d refused naming the file, %d read identical tokens, %d changed tokens, "
                   "%d errors not naming the file%s",
                   w ? ".bin" : ".idx", kinds[kind], tally[w][D_ERROR], tally[w][D_SAME], tally[w][D_CHANGED],
                   tally[w][D_UNNAMED], w == 0 && crashes ? " (+crashes)" : "");
        }
    }
    free(orig[0]);
    free(orig[1]);
    free(ref);
    return all_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: corrupt DIR NDATA NMETA NTRUNC NFLIP NDTRUNC SEED\n");
        return 2;
    }
    rng ^= strtoull(argv[7], NULL, 10) * 0x9E3779B97F4A7C15ull;
    run_ckpt(argv[1], atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    run_data(argv[1], atoi(argv[5]), atoi(argv[6]));
    return tap_done();
}
