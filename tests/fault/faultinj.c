/* faultinj.c - LD_PRELOAD fault injector for moekit's file I/O (tests only).
 *
 * Counts the I/O operations a process makes on paths under FAULTINJ_PREFIX and acts at the
 * k-th one, so a test can walk k = 1..N over one checkpoint save (SQLite's crash and I/O-error
 * loops, https://sqlite.org/testing.html §3.2-3.3). A preload reaches the pwrite calls HDF5
 * makes inside H5Fclose without touching HDF5 or moekit; only paths under the prefix count,
 * so MPI, the log and the data set are never disturbed.
 *
 * Environment (all optional; without FAULTINJ_PREFIX the shim only forwards calls):
 *   FAULTINJ_PREFIX   absolute path; files and directories under it are watched
 *   FAULTINJ_OPS      comma list of op kinds to count: open (creating or writing opens),
 *                     write (write/pwrite/writev/pwritev and stdio output), trunc, fsync
 *                     (fsync/fdatasync), rename, unlink, mkdir; "all" (default) = every kind
 *   FAULTINJ_AT       k: act at the k-th counted op (1-based); 0 or unset: only count
 *   FAULTINJ_MODE     crash (_exit before op k), torn (like crash, but a write op k writes
 *                     its first FAULTINJ_TORN eighths first, default 4), enospc, eio, power
 *                     (simulated power loss)
 *   FAULTINJ_PERSIST  1: enospc/eio fail op k and every later counted op (else only op k)
 *   FAULTINJ_EXIT     exit status of a crash (default 42)
 *   FAULTINJ_REPORT   file; at exit the shim writes "ops N" and one "k kind path" line per
 *                     counted op there (a crash writes "crash k" first)
 *   FAULTINJ_SEED, FAULTINJ_PATTERN, FAULTINJ_STASH   power mode, below
 *
 * Power mode follows SQLite's crash VFS (src/test6.c): a write is durable only after an
 * fsync of its file, a directory entry (create, rename, unlink) only after an fsync of its
 * directory. Writes go to the real files as usual while the shim remembers each file's
 * content at its last fsync and every write since; at op k it rebuilds what a disk could
 * hold after a power cut (per FAULTINJ_PATTERN 0-9: unsynced writes kept, dropped or
 * replaced by garbage sectors; unsynced namespace changes all lost, all kept, or lost from
 * a random point on, in order like a journalling file system) and exits. Files replaced by
 * rename or unlinked are kept as hard links in FAULTINJ_STASH (same file system, outside
 * the prefix) so that a lost rename or unlink can be undone.
 *
 * One process, calls serialised by a mutex; the shim's own I/O goes through the real
 * functions. Descriptors above 4095 are not watched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { K_OPEN = 1, K_WRITE = 2, K_TRUNC = 4, K_FSYNC = 8, K_RENAME = 16, K_UNLINK = 32, K_MKDIR = 64 };
static const char *const kind_name[] = { "open", "write", "trunc", "fsync", "rename", "unlink", "mkdir" };
enum { M_COUNT, M_CRASH, M_TORN, M_ENOSPC, M_EIO, M_POWER };
#define MAXFD 4096

static struct {
    int init;
    char prefix[4096];
    size_t prefix_len;
    unsigned kinds;
    long at;
    int mode, persist, exit_code, pattern, torn;
    unsigned long long seed;
    char report[4096], stash[4096];
    long count;
    char *trace; /* "k kind path\n" lines */
    size_t trace_len, trace_cap;
    unsigned char watched[MAXFD];
} S;
static pthread_mutex_t mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

/* ------------------------------------------------------------------ real functions */
#define REAL(ret, name, args)                                     \
    static ret(*real_##name) args;                                \
    __attribute__((unused)) static void load_##name(void)         \
    {                                                             \
        if (!real_##name) real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name); \
    }
REAL(int, open, (const char *, int, ...))
REAL(int, open64, (const char *, int, ...))
REAL(int, openat, (int, const char *, int, ...))
REAL(int, openat64, (int, const char *, int, ...))
REAL(int, __open_2, (const char *, int))
REAL(int, __open64_2, (const char *, int))
REAL(int, creat, (const char *, mode_t))
REAL(int, creat64, (const char *, mode_t))
REAL(FILE *, fopen, (const char *, const char *))
REAL(FILE *, fopen64, (const char *, const char *))
REAL(ssize_t, write, (int, const void *, size_t))
REAL(ssize_t, pwrite, (int, const void *, size_t, off_t))
REAL(ssize_t, pwrite64, (int, const void *, size_t, off_t))
REAL(ssize_t, writev, (int, const struct iovec *, int))
REAL(ssize_t, pwritev, (int, const struct iovec *, int, off_t))
REAL(int, ftruncate, (int, off_t))
REAL(int, ftruncate64, (int, off_t))
REAL(int, fsync, (int))
REAL(int, fdatasync, (int))
REAL(int, close, (int))
REAL(int, rename, (const char *, const char *))
REAL(int, renameat, (int, const char *, int, const char *))
REAL(int, unlink, (const char *))
REAL(int, unlinkat, (int, const char *, int))
REAL(int, mkdir, (const char *, mode_t))

static int raw_open(const char *p, int flags, mode_t mode)
{
    load_open();
    return real_open(p, flags, mode);
}
static ssize_t raw_pwrite(int fd, const void *b, size_t n, off_t o)
{
    load_pwrite();
    return real_pwrite(fd, b, n, o);
}
static int raw_close(int fd)
{
    load_close();
    return real_close(fd);
}

static void setup(void)
{
    if (S.init) return;
    S.init = 1;
    const char *p = getenv("FAULTINJ_PREFIX");
    if (p && *p) {
        snprintf(S.prefix, sizeof S.prefix, "%s", p);
        S.prefix_len = strlen(S.prefix);
        while (S.prefix_len > 1 && S.prefix[S.prefix_len - 1] == '/') S.prefix[--S.prefix_len] = 0;
    }
    const char *k = getenv("FAULTINJ_OPS");
    if (!k || !*k || strcmp(k, "all") == 0) S.kinds = 0x7f;
    else
        for (int i = 0; i < 7; i++) {
            const char *hit = strstr(k, kind_name[i]);
            if (hit) S.kinds |= 1u << i;
        }
    S.at = getenv("FAULTINJ_AT") ? atol(getenv("FAULTINJ_AT")) : 0;
    const char *m = getenv("FAULTINJ_MODE");
    S.mode = !m || !*m ? M_COUNT
             : strcmp(m, "crash") == 0  ? M_CRASH
             : strcmp(m, "torn") == 0   ? M_TORN
             : strcmp(m, "enospc") == 0 ? M_ENOSPC
             : strcmp(m, "eio") == 0    ? M_EIO
             : strcmp(m, "power") == 0  ? M_POWER
                                        : M_COUNT;
    S.persist = getenv("FAULTINJ_PERSIST") && atoi(getenv("FAULTINJ_PERSIST")) != 0;
    S.exit_code = getenv("FAULTINJ_EXIT") ? atoi(getenv("FAULTINJ_EXIT")) : 42;
    S.seed = getenv("FAULTINJ_SEED") ? strtoull(getenv("FAULTINJ_SEED"), NULL, 10) : 1;
    S.pattern = getenv("FAULTINJ_PATTERN") ? atoi(getenv("FAULTINJ_PATTERN")) : 0;
    S.torn = getenv("FAULTINJ_TORN") ? atoi(getenv("FAULTINJ_TORN")) : 4;
    if (getenv("FAULTINJ_REPORT")) snprintf(S.report, sizeof S.report, "%s", getenv("FAULTINJ_REPORT"));
    if (getenv("FAULTINJ_STASH")) snprintf(S.stash, sizeof S.stash, "%s", getenv("FAULTINJ_STASH"));
}

/* Absolute form of p (relative to the working directory; no .. folding). */
static void absolute(const char *p, char *out, size_t n)
{
    if (p[0] == '/') {
        snprintf(out, n, "%s", p);
        return;
    }
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    snprintf(out, n, "%s/%s", cwd, p[0] == '.' && p[1] == '/' ? p + 2 : p);
}

static int under_prefix(const char *p)
{
    setup();
    if (!S.prefix_len || !p) return 0;
    char a[8192];
    absolute(p, a, sizeof a);
    return strncmp(a, S.prefix, S.prefix_len) == 0 && (a[S.prefix_len] == 0 || a[S.prefix_len] == '/');
}

static void trace_add(long k, int kind, const char *path)
{
    char line[4200];
    int bit = 0;
    while (bit < 7 && !((unsigned)kind & (1u << bit))) bit++;
    int len = snprintf(line, sizeof line, "%ld %s %s\n", k, kind_name[bit < 7 ? bit : 0], path ? path : "-");
    if (len < 0) return;
    if ((size_t)len >= sizeof line) len = sizeof line - 1;
    if (S.trace_len + (size_t)len + 1 > S.trace_cap) {
        size_t cap = S.trace_cap ? 2 * S.trace_cap : 65536;
        while (cap < S.trace_len + (size_t)len + 1) cap *= 2;
        char *t = realloc(S.trace, cap);
        if (!t) return;
        S.trace = t;
        S.trace_cap = cap;
    }
    memcpy(S.trace + S.trace_len, line, (size_t)len);
    S.trace_len += (size_t)len;
}

static void write_report(const char *head)
{
    if (!S.report[0]) return;
    int fd = raw_open(S.report, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    char h[128];
    int n = snprintf(h, sizeof h, "%sops %ld\n", head ? head : "", S.count);
    off_t off = 0;
    raw_pwrite(fd, h, (size_t)n, off);
    off += n;
    if (S.trace_len) raw_pwrite(fd, S.trace, S.trace_len, off);
    raw_close(fd);
}

__attribute__((destructor)) static void at_exit_report(void)
{
    /* children that share the environment (MPI helpers) touch nothing and stay quiet */
    if (S.init && S.prefix_len && S.count > 0) write_report(NULL);
}

/* moe-train leaves by _exit after an I/O error (it skips libhdf5's exit-time clean-up,
 * bin/moe-train.c), which runs no destructors: report here too. */
REAL(void, _exit, (int status))
void _exit(int status)
{
    at_exit_report();
    load__exit();
    real__exit(status);
    for (;;) {
    }
}

static char fd_path[MAXFD][512]; /* the watched descriptors' paths (power mode, trace) */

/* ------------------------------------------------------------------ power-loss model */
typedef struct pending { off_t off; size_t len; unsigned char *data; int trunc; } pending;
typedef struct tracked {
    dev_t dev;
    ino_t ino;
    char path[512];       /* where it is now */
    unsigned char *durable; /* content at the last fsync (or when first seen) */
    size_t durable_len;
    pending *p;
    size_t np, capp;
} tracked;
typedef struct nsop { int kind; char a[512], b[512], stash[4200]; int synced; } nsop; /* K_OPEN = create */
static tracked *T;
static size_t nT, capT;
static nsop *NS;
static size_t nNS, capNS;
static long stash_seq;

static unsigned char *slurp_fd(int fd, size_t *len)
{
    struct stat st;
    *len = 0;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) return NULL;
    unsigned char *b = malloc((size_t)st.st_size);
    if (!b) return NULL;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(fd, b + got, (size_t)st.st_size - got, (off_t)got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    *len = got;
    return b;
}

static tracked *find_tracked(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return NULL;
    for (size_t i = 0; i < nT; i++)
        if (T[i].dev == st.st_dev && T[i].ino == st.st_ino) return &T[i];
    return NULL;
}

/* A watched regular file opened for writing: remember it (its content is durable now). */
static void power_track(int fd, const char *path, const unsigned char *before, size_t before_len, int existed, int truncated)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    tracked *t = find_tracked(fd);
    if (!t) {
        if (nT == capT) {
            capT = capT ? 2 * capT : 16;
            T = realloc(T, capT * sizeof *T);
        }
        t = &T[nT++];
        memset(t, 0, sizeof *t);
        t->dev = st.st_dev;
        t->ino = st.st_ino;
        if (existed && before_len) {
            t->durable = malloc(before_len);
            memcpy(t->durable, before, before_len);
            t->durable_len = before_len;
        }
    }
    absolute(path, t->path, sizeof t->path);
    if (truncated) {
        if (t->np == t->capp) t->p = realloc(t->p, (t->capp = t->capp ? 2 * t->capp : 64) * sizeof *t->p);
        t->p[t->np++] = (pending){ .off = 0, .trunc = 1 };
    }
}

static void power_write(int fd, off_t off, const void *buf, size_t len)
{
    tracked *t = find_tracked(fd);
    if (!t || len == 0) return;
    if (t->np == t->capp) t->p = realloc(t->p, (t->capp = t->capp ? 2 * t->capp : 64) * sizeof *t->p);
    pending *p = &t->p[t->np++];
    p->off = off;
    p->len = len;
    p->trunc = 0;
    p->data = malloc(len);
    memcpy(p->data, buf, len);
}

static void power_trunc(int fd, off_t len)
{
    tracked *t = find_tracked(fd);
    if (!t) return;
    if (t->np == t->capp) t->p = realloc(t->p, (t->capp = t->capp ? 2 * t->capp : 64) * sizeof *t->p);
    t->p[t->np++] = (pending){ .off = len, .trunc = 1 };
}

static void power_fsync(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) { /* the directory's entries are durable now */
        char dir[512];
        snprintf(dir, sizeof dir, "%s", fd_path[fd]);
        size_t dl = strlen(dir);
        for (size_t i = 0; i < nNS; i++) {
            const char *a = NS[i].kind == K_RENAME ? NS[i].b : NS[i].a;
            if (strncmp(a, dir, dl) == 0 && a[dl] == '/' && !strchr(a + dl + 1, '/')) NS[i].synced = 1;
            if (NS[i].kind == K_RENAME && strncmp(NS[i].a, dir, dl) == 0 && NS[i].a[dl] == '/') NS[i].synced = 1;
        }
        return;
    }
    tracked *t = find_tracked(fd);
    if (!t) return;
    free(t->durable);
    t->durable = slurp_fd(fd, &t->durable_len);
    for (size_t i = 0; i < t->np; i++) free(t->p[i].data);
    t->np = 0;
}

static void ns_add(int kind, const char *a, const char *b, int stash_it)
{
    if (nNS == capNS) NS = realloc(NS, (capNS = capNS ? 2 * capNS : 32) * sizeof *NS);
    nsop *o = &NS[nNS++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    absolute(a, o->a, sizeof o->a);
    if (b) absolute(b, o->b, sizeof o->b);
    /* what the op destroys (rename's target, unlink's file) survives as a hard link */
    const char *victim = kind == K_RENAME ? o->b : kind == K_UNLINK ? o->a : NULL;
    if (stash_it && victim && S.stash[0] && access(victim, F_OK) == 0) {
        snprintf(o->stash, sizeof o->stash, "%s/s%ld", S.stash, stash_seq++);
        if (link(victim, o->stash) != 0) o->stash[0] = 0;
    }
}

static unsigned long long rng_state;
static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 11);
}

static void rewrite(const char *path, const unsigned char *b, size_t n)
{
    int fd = raw_open(path, O_WRONLY | O_TRUNC, 0);
    if (fd < 0) return;
    size_t done = 0;
    while (done < n) {
        ssize_t w = raw_pwrite(fd, b + done, n - done, (off_t)done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    raw_close(fd);
}

/* Patterns: namespace changes since the last directory fsync (L lost, K kept, R lost from
 * a random point on) x unsynced writes (drop, keep, garbage, mix, ordered prefix). */
static void power_cut(void)
{
    static const char ns_rule[10] = { 'L', 'K', 'L', 'K', 'R', 'R', 'L', 'K', 'R', 'R' };
    static const char data_rule[10] = { 'd', 'k', 'k', 'd', 'm', 'M', 'g', 'g', 'o', 's' };
    const int p = S.pattern >= 0 && S.pattern < 10 ? S.pattern : 0;
    rng_state = S.seed * 0x9E3779B97F4A7C15ull + (unsigned long long)p + 1;
    size_t unsynced = 0;
    for (size_t i = 0; i < nNS; i++) unsynced += !NS[i].synced;
    size_t keep = ns_rule[p] == 'K' ? unsynced : ns_rule[p] == 'L' ? 0 : rnd() % (unsynced + 1);
    /* undo the unsynced namespace changes after the first `keep`, newest first */
    size_t seen = 0, *order = calloc(nNS + 1, sizeof *order), no = 0;
    for (size_t i = 0; i < nNS; i++)
        if (!NS[i].synced && seen++ >= keep) order[no++] = i;
    for (size_t j = no; j-- > 0;) {
        nsop *o = &NS[order[j]];
        load_rename();
        load_unlink();
        if (o->kind == K_OPEN) {
            real_unlink(o->a);
        } else if (o->kind == K_RENAME) {
            real_rename(o->b, o->a);
            for (size_t i = 0; i < nT; i++)
                if (strcmp(T[i].path, o->b) == 0) snprintf(T[i].path, sizeof T[i].path, "%s", o->a);
            if (o->stash[0]) link(o->stash, o->b);
        } else if (o->kind == K_UNLINK) {
            if (o->stash[0]) link(o->stash, o->a);
        } else if (o->kind == K_MKDIR) {
            rmdir(o->a);
        }
    }
    free(order);
    /* each file's content: its durable image plus what survives of the unsynced writes */
    for (size_t i = 0; i < nT; i++) {
        tracked *t = &T[i];
        struct stat st;
        if (t->np == 0 || stat(t->path, &st) != 0 || st.st_ino != t->ino) continue;
        size_t len = t->durable_len, cap = len + 1;
        unsigned char *b = malloc(cap);
        if (len) memcpy(b, t->durable, len);
        const size_t cut = t->np ? rnd() % (t->np + 1) : 0;
        for (size_t w = 0; w < t->np; w++) {
            pending *q = &t->p[w];
            char what = data_rule[p];
            if (what == 'm') what = "kd"[rnd() % 2];
            else if (what == 'M') what = "kdg"[rnd() % 3];
            else if (what == 'o') what = w < cut ? 'k' : 'd';
            if (what == 'd') continue;
            if (q->trunc) {
                if (what == 'g' || what == 's') continue; /* a size change is kept or not */
                if ((size_t)q->off < len) len = (size_t)q->off;
                else if ((size_t)q->off > len) {
                    if ((size_t)q->off + 1 > cap) b = realloc(b, cap = (size_t)q->off + 1);
                    memset(b + len, 0, (size_t)q->off - len);
                    len = (size_t)q->off;
                }
                continue;
            }
            size_t end = (size_t)q->off + q->len;
            if (end + 1 > cap) b = realloc(b, cap = end + 1);
            if ((size_t)q->off > len) memset(b + len, 0, (size_t)q->off - len);
            if (end > len) len = end;
            if (what == 'k') {
                memcpy(b + q->off, q->data, q->len);
            } else if (what == 'g') {
                for (size_t x = 0; x < q->len; x++) b[q->off + x] = (unsigned char)rnd();
            } else { /* 's': each 512-byte sector of the write kept, dropped (zero) or garbage */
                for (size_t s0 = 0; s0 < q->len; s0 += 512) {
                    size_t sl = q->len - s0 < 512 ? q->len - s0 : 512;
                    unsigned r = rnd() % 3;
                    for (size_t x = 0; x < sl; x++)
                        b[q->off + s0 + x] = r == 0 ? q->data[s0 + x] : r == 1 ? 0 : (unsigned char)rnd();
                }
            }
        }
        rewrite(t->path, b, len);
        free(b);
    }
}

/* ------------------------------------------------------------------ the counter */

/* Count one op of `kind` on `path`; returns 0 to go on, or -1 with errno set to fail it.
 * torn_fd >= 0: a write that a torn crash half-performs first. */
static int hit(int kind, const char *path, int torn_fd, const void *buf, size_t n, off_t off, int use_off)
{
    setup();
    if (!((unsigned)kind & S.kinds)) return 0;
    long k = ++S.count;
    if (S.report[0]) trace_add(k, kind, path);
    if (S.at <= 0 || S.mode == M_COUNT) return 0;
    const int now = k == S.at || (S.persist && k > S.at);
    if (!now) return 0;
    char head[64];
    switch (S.mode) {
    case M_TORN:
        if (torn_fd >= 0 && n > 1) {
            const size_t part = n / 8 * (size_t)(S.torn > 0 && S.torn < 8 ? S.torn : 4);
            if (use_off) raw_pwrite(torn_fd, buf, part, off);
            else {
                load_write();
                real_write(torn_fd, buf, part);
            }
        }
        /* fall through */
    case M_CRASH:
        snprintf(head, sizeof head, "crash %ld\n", k);
        write_report(head);
        _exit(S.exit_code);
    case M_POWER:
        power_cut();
        snprintf(head, sizeof head, "power %ld pattern %d seed %llu\n", k, S.pattern, S.seed);
        write_report(head);
        _exit(S.exit_code);
    case M_ENOSPC: errno = ENOSPC; return -1;
    case M_EIO: errno = EIO; return -1;
    default: return 0;
    }
}

static int watched(int fd) { return fd >= 0 && fd < MAXFD && S.watched[fd]; }

/* ------------------------------------------------------------------ opens */
static int do_open(int dirfd, const char *path, int flags, mode_t mode, int which)
{
    pthread_mutex_lock(&mu);
    setup();
    const int w = dirfd == AT_FDCWD && under_prefix(path);
    const int writes = (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0;
    unsigned char *before = NULL;
    size_t before_len = 0;
    int existed = 0;
    if (w && writes) {
        if (hit(K_OPEN, path, -1, NULL, 0, 0, 0) != 0) {
            pthread_mutex_unlock(&mu);
            return -1;
        }
        existed = access(path, F_OK) == 0;
        if (S.mode == M_POWER && existed) {
            int rfd = raw_open(path, O_RDONLY, 0);
            if (rfd >= 0) {
                before = slurp_fd(rfd, &before_len);
                raw_close(rfd);
            }
        }
    }
    int fd;
    switch (which) {
    case 0: load_open(); fd = real_open(path, flags, mode); break;
    case 1: load_open64(); fd = real_open64(path, flags, mode); break;
    case 2: load_openat(); fd = real_openat(dirfd, path, flags, mode); break;
    default: load_openat64(); fd = real_openat64(dirfd, path, flags, mode); break;
    }
    if (w && fd >= 0 && fd < MAXFD) {
        S.watched[fd] = 1;
        absolute(path, fd_path[fd], sizeof fd_path[fd]);
        if (S.mode == M_POWER && writes) {
            if (!existed) ns_add(K_OPEN, path, NULL, 0);
            power_track(fd, path, before, before_len, existed, (flags & O_TRUNC) && existed);
        }
    }
    free(before);
    pthread_mutex_unlock(&mu);
    return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 0);
}
int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 1);
}
int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return do_open(path[0] == '/' ? AT_FDCWD : dirfd, path, flags, m, 2);
}
int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return do_open(path[0] == '/' ? AT_FDCWD : dirfd, path, flags, m, 3);
}
int __open_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0, 0); }
int __open64_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0, 1); }
int creat(const char *path, mode_t m) { return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, m, 0); }
int creat64(const char *path, mode_t m) { return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, m, 1); }

int close(int fd)
{
    load_close();
    if (fd >= 0 && fd < MAXFD) {
        pthread_mutex_lock(&mu);
        S.watched[fd] = 0;
        pthread_mutex_unlock(&mu);
    }
    return real_close(fd);
}

/* ------------------------------------------------------------------ writes */
static ssize_t do_write(int fd, const void *buf, size_t n, off_t off, int use_off)
{
    if (!watched(fd)) {
        if (use_off) return raw_pwrite(fd, buf, n, off);
        load_write();
        return real_write(fd, buf, n);
    }
    pthread_mutex_lock(&mu);
    if (hit(K_WRITE, fd_path[fd], fd, buf, n, off, use_off) != 0) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    if (S.mode == M_POWER) {
        off_t at = off;
        if (!use_off) {
            int fl = fcntl(fd, F_GETFL);
            at = fl >= 0 && (fl & O_APPEND) ? lseek(fd, 0, SEEK_END) : lseek(fd, 0, SEEK_CUR);
        }
        power_write(fd, at, buf, n);
    }
    ssize_t r;
    if (use_off) r = raw_pwrite(fd, buf, n, off);
    else {
        load_write();
        r = real_write(fd, buf, n);
    }
    pthread_mutex_unlock(&mu);
    return r;
}

ssize_t write(int fd, const void *buf, size_t n) { return do_write(fd, buf, n, 0, 0); }
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_write(fd, buf, n, off, 1); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return do_write(fd, buf, n, off, 1); }

/* vectored writes: one op, performed as one buffer */
static ssize_t do_writev(int fd, const struct iovec *iov, int cnt, off_t off, int use_off)
{
    size_t n = 0;
    for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        errno = ENOMEM;
        return -1;
    }
    size_t at = 0;
    for (int i = 0; i < cnt; i++) {
        memcpy(b + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    ssize_t r = do_write(fd, b, n, off, use_off);
    free(b);
    return r;
}
ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (!watched(fd)) {
        load_writev();
        return real_writev(fd, iov, cnt);
    }
    return do_writev(fd, iov, cnt, 0, 0);
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (!watched(fd)) {
        load_pwritev();
        return real_pwritev(fd, iov, cnt, off);
    }
    return do_writev(fd, iov, cnt, off, 1);
}

static int do_trunc(int fd, off_t len, int is64)
{
    if (watched(fd)) {
        pthread_mutex_lock(&mu);
        int r = hit(K_TRUNC, fd_path[fd], -1, NULL, 0, 0, 0);
        if (r == 0 && S.mode == M_POWER) power_trunc(fd, len);
        pthread_mutex_unlock(&mu);
        if (r != 0) return -1;
    }
    if (is64) {
        load_ftruncate64();
        return real_ftruncate64(fd, len);
    }
    load_ftruncate();
    return real_ftruncate(fd, len);
}
int ftruncate(int fd, off_t len) { return do_trunc(fd, len, 0); }
int ftruncate64(int fd, off_t len) { return do_trunc(fd, len, 1); }

static int do_fsync(int fd, int data)
{
    if (watched(fd)) {
        pthread_mutex_lock(&mu);
        int r = hit(K_FSYNC, fd_path[fd], -1, NULL, 0, 0, 0);
        if (r == 0 && S.mode == M_POWER) power_fsync(fd);
        pthread_mutex_unlock(&mu);
        if (r != 0) return -1;
    }
    if (data) {
        load_fdatasync();
        return real_fdatasync(fd);
    }
    load_fsync();
    return real_fsync(fd);
}
int fsync(int fd) { return do_fsync(fd, 0); }
int fdatasync(int fd) { return do_fsync(fd, 1); }

/* ------------------------------------------------------------------ namespace */
int rename(const char *a, const char *b)
{
    load_rename();
    if (!under_prefix(a) && !under_prefix(b)) return real_rename(a, b);
    pthread_mutex_lock(&mu);
    int r = hit(K_RENAME, b, -1, NULL, 0, 0, 0);
    if (r == 0 && S.mode == M_POWER) {
        ns_add(K_RENAME, a, b, 1);
        char ab[512];
        absolute(b, ab, sizeof ab);
        r = real_rename(a, b);
        if (r == 0) {
            char aa[512];
            absolute(a, aa, sizeof aa);
            for (size_t i = 0; i < nT; i++)
                if (strcmp(T[i].path, aa) == 0) snprintf(T[i].path, sizeof T[i].path, "%s", ab);
        } else {
            nNS--;
        }
        pthread_mutex_unlock(&mu);
        return r;
    }
    pthread_mutex_unlock(&mu);
    if (r != 0) return -1;
    return real_rename(a, b);
}
int renameat(int da, const char *a, int db, const char *b)
{
    if ((da == AT_FDCWD || a[0] == '/') && (db == AT_FDCWD || b[0] == '/')) return rename(a, b);
    load_renameat();
    return real_renameat(da, a, db, b);
}

int unlink(const char *p)
{
    load_unlink();
    if (!under_prefix(p)) return real_unlink(p);
    pthread_mutex_lock(&mu);
    int r = hit(K_UNLINK, p, -1, NULL, 0, 0, 0);
    if (r == 0 && S.mode == M_POWER) {
        ns_add(K_UNLINK, p, NULL, 1);
        r = real_unlink(p);
        if (r != 0) nNS--;
        pthread_mutex_unlock(&mu);
        return r;
    }
    pthread_mutex_unlock(&mu);
    if (r != 0) return -1;
    return real_unlink(p);
}
int unlinkat(int dirfd, const char *p, int flags)
{
    if ((dirfd == AT_FDCWD || p[0] == '/') && !(flags & AT_REMOVEDIR)) return unlink(p);
    load_unlinkat();
    return real_unlinkat(dirfd, p, flags);
}

int mkdir(const char *p, mode_t m)
{
    load_mkdir();
    if (!under_prefix(p)) return real_mkdir(p, m);
    pthread_mutex_lock(&mu);
    int r = hit(K_MKDIR, p, -1, NULL, 0, 0, 0);
    pthread_mutex_unlock(&mu);
    if (r != 0) return -1;
    r = real_mkdir(p, m);
    if (r == 0 && S.mode == M_POWER) {
        pthread_mutex_lock(&mu);
        ns_add(K_MKDIR, p, NULL, 0);
        pthread_mutex_unlock(&mu);
    }
    return r;
}

/* ------------------------------------------------------------------ stdio output */
/* glibc's stdio writes through internal calls a preload cannot see, so a watched file opened
 * with fopen becomes a cookie stream whose writes pass through do_write. */
typedef struct cookie { int fd; } cookie;
static ssize_t ck_read(void *c, char *b, size_t n) { return read(((cookie *)c)->fd, b, n); }
static ssize_t ck_write(void *c, const char *b, size_t n)
{
    ssize_t r = do_write(((cookie *)c)->fd, b, n, 0, 0);
    return r < 0 ? -1 : r; /* glibc: -1 marks the stream's error */
}
static int ck_seek(void *c, off64_t *off, int whence)
{
    off_t r = lseek(((cookie *)c)->fd, (off_t)*off, whence);
    if (r < 0) return -1;
    *off = r;
    return 0;
}
static int ck_close(void *c)
{
    int r = close(((cookie *)c)->fd);
    free(c);
    return r;
}

static FILE *do_fopen(const char *path, const char *mode, int is64)
{
    const int writes = strpbrk(mode, "wa+") != NULL;
    if (!writes || !under_prefix(path)) {
        if (is64) {
            load_fopen64();
            return real_fopen64(path, mode);
        }
        load_fopen();
        return real_fopen(path, mode);
    }
    int flags = strchr(mode, '+') ? O_RDWR : mode[0] == 'r' ? O_RDONLY : O_WRONLY;
    if (mode[0] == 'w') flags |= O_CREAT | O_TRUNC;
    if (mode[0] == 'a') flags |= O_CREAT | O_APPEND;
    if (strchr(mode, 'x')) flags |= O_EXCL;
    if (strchr(mode, 'e')) flags |= O_CLOEXEC;
    int fd = do_open(AT_FDCWD, path, flags, 0666, 0);
    if (fd < 0) return NULL;
    cookie *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->fd = fd;
    cookie_io_functions_t io = { ck_read, ck_write, ck_seek, ck_close };
    FILE *f = fopencookie(c, mode, io);
    if (!f) {
        close(fd);
        free(c);
    }
    return f;
}
FILE *fopen(const char *path, const char *mode) { return do_fopen(path, mode, 0); }
FILE *fopen64(const char *path, const char *mode) { return do_fopen(path, mode, 1); }
