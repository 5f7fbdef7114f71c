/* mpi_comm.c - the collectives of mk_comm.h under mpirun (tests/test_comm_mpi.sh runs it on
 * 1, 2 and 4 ranks).
 *
 * Every rank runs every check; a check passes when it passes on all ranks (combined with
 * raw MPI on MPI_COMM_WORLD, not with the code under test), and rank 0 prints the TAP line.
 * Other ranks write their diagnostics to stderr. The self backend is checked before
 * MPI_Init, where any MPI call would abort the program, so "no MPI calls" is checked too.
 *
 * MK_TEST_BIG=1 adds an all-to-all of more than 2 GiB per rank pair (needs about
 * 4.5 GiB of memory per rank); it is off in make check.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_comm.h"
#include "mk_error.h"
#include "tap.h"

static int g_rank, g_size; /* of MPI_COMM_WORLD, set once after MPI_Init */

/* One TAP check over all ranks: passes when ok holds on every rank. */
static int all_ok(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int all_ok(int ok, const char *fmt, ...)
{
    int first_bad = ok ? INT_MAX : g_rank, nbad = !ok;
    MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &nbad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (g_rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        tap_vok(nbad == 0, fmt, ap);
        va_end(ap);
        if (nbad) tap_diag("failed on %d of %d ranks, first on rank %d", nbad, g_size, first_bad);
    }
    return nbad == 0;
}

/* A rank's own explanation of a failure (stderr: only rank 0 writes the TAP stream). */
static void rank_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void rank_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "# rank %d: ", g_rank);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* FNV-1a over bytes: equal results give equal hashes, and a hash is one number to gather. */
static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Same hash on every rank of the world. */
static int same_everywhere(uint64_t h)
{
    uint64_t *all = malloc((size_t)g_size * sizeof *all);
    MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    int ok = 1;
    for (int r = 0; r < g_size; r++) ok &= all[r] == all[0];
    free(all);
    return ok;
}

/* ------------------------------------------------------------------ before MPI_Init */

#define MAX_PRE 16
struct pre { int n; int ok[MAX_PRE]; const char *what[MAX_PRE]; };

static void pre_ok(struct pre *p, int ok, const char *what)
{
    if (p->n < MAX_PRE) {
        p->ok[p->n] = ok;
        p->what[p->n++] = what;
    }
}

/* The self backend and the world's fallback to it, with MPI not yet initialised. */
static void check_self(struct pre *p)
{
    mk_comm *w = NULL, *s = NULL, *g = NULL;
    int rc = mk_comm_world(&w);
    pre_ok(p, rc == MK_OK && w && strcmp(mk_comm_backend(w), "self") == 0 && mk_comm_rank(w) == 0 &&
                  mk_comm_size(w) == 1 && mk_comm_local_rank(w) == 0 && mk_comm_node(w) == 0,
           "before MPI_Init: mk_comm_world is the self backend, rank 0 of 1");
    rc = mk_comm_self(&s);
    pre_ok(p, rc == MK_OK && s && strcmp(mk_comm_backend(s), "self") == 0 && mk_comm_rank(s) == 0 &&
                  mk_comm_size(s) == 1,
           "mk_comm_self: self backend, rank 0 of 1");
    if (rc != MK_OK) return;

    mk_real r[3] = { 1.5f, -2.0f, 3.25f };
    double d[2] = { 0.1, -7.0 };
    int64_t i[2] = { -5, INT64_C(1) << 40 };
    int m[2] = { -3, 9 };
    int ok = mk_comm_allreduce_real(s, r, 3) == MK_OK && mk_comm_allreduce_f64(s, d, 2) == MK_OK &&
             mk_comm_allreduce_i64(s, i, 2) == MK_OK && mk_comm_allreduce_max_int(s, m, 2) == MK_OK &&
             mk_comm_allreduce_real(s, NULL, 0) == MK_OK;
    ok = ok && r[0] == 1.5f && r[1] == -2.0f && r[2] == 3.25f && d[0] == 0.1 && d[1] == -7.0 &&
         i[0] == -5 && i[1] == INT64_C(1) << 40 && m[0] == -3 && m[1] == 9;
    pre_ok(p, ok, "self: all-reduces leave the values as they are");

    unsigned char sb[16], rb[16];
    for (int k = 0; k < 16; k++) sb[k] = (unsigned char)(k + 1), rb[k] = 0xee;
    size_t sc = 5, sd = 3, rcnt = 5, rd = 9;
    ok = mk_comm_alltoallv(s, sb, &sc, &sd, rb, &rcnt, &rd) == MK_OK;
    for (int k = 0; k < 16; k++) ok &= rb[k] == (k >= 9 && k < 14 ? sb[k - 6] : 0xee);
    size_t z = 0;
    ok = ok && mk_comm_alltoallv(s, sb, &z, &z, rb, &z, &z) == MK_OK;
    int64_t a = 42, b = 0;
    ok = ok && mk_comm_alltoall_int(s, &a, &b) == MK_OK && b == 42;
    pre_ok(p, ok, "self: alltoallv copies send+displ to recv+displ, alltoall_int copies");

    ok = mk_comm_bcast(s, sb, sizeof sb, 0) == MK_OK && sb[0] == 1 && mk_comm_barrier(s) == MK_OK;
    ok = ok && mk_comm_split(s, 3, 0, &g) == MK_OK && g && mk_comm_size(g) == 1 && mk_comm_rank(g) == 0 &&
         strcmp(mk_comm_backend(g), "self") == 0;
    pre_ok(p, ok, "self: bcast, barrier and split work");

    mk_comm_free(&g);
    mk_comm_free(&s);
    mk_comm_free(&w);
    pre_ok(p, s == NULL && w == NULL, "self: mk_comm_free clears the handle");
    mk_comm_free(&s); /* freeing a cleared handle is harmless */
}

/* ------------------------------------------------------------------ the world */

/* A contribution that makes the order of additions visible in the last bits. */
static mk_real real_val(int rank, size_t i)
{
    return (mk_real)(1.0 / (rank + 3.0) + (double)i * 1e-3 * (rank % 2 ? -1.0 : 1.0));
}

static void check_allreduce_real(const mk_comm *w)
{
    const size_t n = 1000;
    mk_real *v = malloc(n * sizeof *v), *v2 = malloc(n * sizeof *v2), *want = malloc(n * sizeof *want);
    for (size_t i = 0; i < n; i++) {
        v[i] = v2[i] = real_val(g_rank, i);
        want[i] = real_val(0, i);
        for (int r = 1; r < g_size; r++) want[i] += real_val(r, i); /* rank order, by hand */
    }
    int rc = mk_comm_allreduce_real(w, v, n), rc2 = mk_comm_allreduce_real(w, v2, n);
    all_ok(rc == MK_OK && rc2 == MK_OK, "allreduce_real returns MK_OK");
    int ok = memcmp(v, want, n * sizeof *v) == 0;
    if (!ok) rank_diag("allreduce_real[0] = %.9g, hand sum %.9g", (double)v[0], (double)want[0]);
    all_ok(ok, "allreduce_real equals the rank-order hand sum bit for bit (%zu values)", n);
    all_ok(same_everywhere(fnv1a(v, n * sizeof *v)), "allreduce_real gives the same bits on every rank");
    all_ok(memcmp(v, v2, n * sizeof *v) == 0, "allreduce_real repeats exactly on a second call");
    free(v);
    free(v2);
    free(want);
}

/* Larger than one gather chunk (16 MiB / (size x 4 bytes) floats), and not a multiple of it. */
static void check_allreduce_large(const mk_comm *w)
{
    const size_t n = ((size_t)5 << 20) + 17;
    mk_real *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (mk_real)(i % 1000 + (size_t)g_rank);
    int rc = mk_comm_allreduce_real(w, v, n);
    /* Small integers: every order gives the exact sum size*(i%1000) + size(size-1)/2. */
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] != (mk_real)((double)g_size * (double)(i % 1000) + g_size * (g_size - 1) / 2.0)) bad++;
    if (bad) rank_diag("%zu of %zu sums wrong", bad, n);
    all_ok(rc == MK_OK && bad == 0, "allreduce_real of %zu floats (more than one chunk) is exact", n);
    all_ok(same_everywhere(fnv1a(v, n * sizeof *v)), "large allreduce_real: same bits on every rank");
    free(v);
}

static void check_allreduce_other(const mk_comm *w)
{
    /* f64: 1e16 + 1 + 1 ... depends on the order; rank order is the contract. */
    enum { N = 64 };
    double d[N], dw[N];
    for (int i = 0; i < N; i++) {
        d[i] = g_rank == 0 ? 1e16 * (i + 1) : 1.0 + 0.1 * g_rank - i * 0.25;
        dw[i] = 1e16 * (i + 1);
        for (int r = 1; r < g_size; r++) dw[i] += 1.0 + 0.1 * r - i * 0.25;
    }
    int rc = mk_comm_allreduce_f64(w, d, N);
    all_ok(rc == MK_OK && memcmp(d, dw, sizeof d) == 0, "allreduce_f64 equals the rank-order hand sum bit for bit");
    all_ok(same_everywhere(fnv1a(d, sizeof d)), "allreduce_f64 gives the same bits on every rank");

    int64_t l[N];
    for (int i = 0; i < N; i++) l[i] = (int64_t)g_rank * INT64_C(1000000000000) - i;
    rc = mk_comm_allreduce_i64(w, l, N);
    int ok = rc == MK_OK;
    for (int i = 0; i < N; i++)
        ok &= l[i] == (int64_t)g_size * (g_size - 1) / 2 * INT64_C(1000000000000) - (int64_t)g_size * i;
    all_ok(ok, "allreduce_i64 sums exactly beyond 32 bits");

    int m[N];
    for (int i = 0; i < N; i++) m[i] = (i % 2 ? -1 : 1) * (g_rank * 10 - i);
    rc = mk_comm_allreduce_max_int(w, m, N);
    ok = rc == MK_OK;
    for (int i = 0; i < N; i++) {
        int want = INT_MIN;
        for (int r = 0; r < g_size; r++) {
            int x = (i % 2 ? -1 : 1) * (r * 10 - i);
            if (x > want) want = x;
        }
        ok &= m[i] == want;
    }
    all_ok(ok, "allreduce_max_int takes the element-wise maximum");
    ok = mk_comm_allreduce_f64(w, NULL, 0) == MK_OK && mk_comm_allreduce_i64(w, NULL, 0) == MK_OK;
    all_ok(ok, "all-reduces of zero elements are no-ops");
}

/* Bytes rank p sends to rank q: uneven, zero for some pairs, including p == q. */
static size_t a2a_count(int p, int q) { return (size_t)((p * 7 + q * 3) % 5) * 3; }
static unsigned char a2a_byte(int p, int q, size_t j) { return (unsigned char)(p * 31 + q * 17 + (int)j); }

static void check_alltoall(const mk_comm *w)
{
    const int P = g_size, me = g_rank;
    int64_t *si = calloc((size_t)P, sizeof *si), *ri = calloc((size_t)P, sizeof *ri);
    for (int q = 0; q < P; q++) si[q] = ((int64_t)me << 40) + q, ri[q] = -1;
    int ok = mk_comm_alltoall_int(w, si, ri) == MK_OK;
    for (int p = 0; p < P; p++) ok &= ri[p] == ((int64_t)p << 40) + me;
    all_ok(ok, "alltoall_int: recv[p] is what rank p sent here");

    /* Counts first, as the trainer does. */
    for (int q = 0; q < P; q++) si[q] = (int64_t)a2a_count(me, q);
    ok = mk_comm_alltoall_int(w, si, ri) == MK_OK;
    for (int p = 0; p < P; p++) ok &= ri[p] == (int64_t)a2a_count(p, me);
    all_ok(ok, "alltoall_int exchanges the all-to-all byte counts");

    size_t *sc = calloc(4 * (size_t)P, sizeof *sc), *sd = sc + P, *rc = sc + 2 * P, *rd = sc + 3 * P;
    /* Displacements in reverse rank order with 5-byte gaps: the layout is the caller's. */
    size_t stot = 5, rtot = 5;
    for (int q = P - 1; q >= 0; q--) {
        sc[q] = a2a_count(me, q), sd[q] = stot, stot += sc[q] + 5;
        rc[q] = (size_t)ri[q], rd[q] = rtot, rtot += rc[q] + 5;
    }
    unsigned char *sb = malloc(stot), *rb = malloc(rtot);
    memset(sb, 0xdd, stot);
    memset(rb, 0xee, rtot);
    for (int q = 0; q < P; q++)
        for (size_t j = 0; j < sc[q]; j++) sb[sd[q] + j] = a2a_byte(me, q, j);
    ok = mk_comm_alltoallv(w, sb, sc, sd, rb, rc, rd) == MK_OK;
    unsigned char *want = malloc(rtot);
    memset(want, 0xee, rtot);
    for (int p = 0; p < P; p++)
        for (size_t j = 0; j < rc[p]; j++) want[rd[p] + j] = a2a_byte(p, me, j);
    int same = memcmp(rb, want, rtot) == 0;
    if (!same) rank_diag("alltoallv: received bytes differ from the expected layout");
    all_ok(ok && same, "alltoallv: uneven, zero and self counts land at their displacements, gaps untouched");

    /* Nothing at all to send. */
    size_t *z = calloc(4 * (size_t)P, sizeof *z);
    ok = mk_comm_alltoallv(w, sb, z, z + P, rb, z + 2 * P, z + 3 * P) == MK_OK && memcmp(rb, want, rtot) == 0;
    all_ok(ok, "alltoallv with all counts zero");
    free(z);
    free(sb);
    free(rb);
    free(want);

    /* Rank 0 receives at a displacement beyond INT_MAX, so every rank must agree on the
     * point-to-point path. The buffer is reserved, not touched: only the bytes written
     * and the 0xee border around them become resident. */
    const size_t far = (size_t)INT_MAX + 4096;
    size_t rlen = me == 0 ? far + (size_t)P * 64 : (size_t)P * 64;
    unsigned char *big = malloc(rlen);
    unsigned char sbuf[64 * 64];
    if (!big || P > 64) {
        all_ok(0, "alltoallv with a displacement beyond INT_MAX (no memory)");
    } else {
        for (int q = 0; q < P; q++) {
            sc[q] = (size_t)(q + 1) * 3, sd[q] = (size_t)q * 64;
            for (size_t j = 0; j < sc[q]; j++) sbuf[sd[q] + j] = a2a_byte(me, q, j);
            rc[q] = (size_t)(me + 1) * 3, rd[q] = (me == 0 ? far : 0) + (size_t)q * 64;
        }
        unsigned char *rbase = big + (me == 0 ? far : 0);
        memset(rbase, 0xee, (size_t)P * 64);
        ok = mk_comm_alltoallv(w, sbuf, sc, sd, big, rc, rd) == MK_OK;
        for (int p = 0; p < P; p++)
            for (size_t j = 0; j < 64; j++)
                ok &= rbase[(size_t)p * 64 + j] == (j < rc[p] ? a2a_byte(p, me, j) : 0xee);
        all_ok(ok, "alltoallv with a displacement beyond INT_MAX on rank 0 (point-to-point path)");
    }
    free(big);

    /* An MPI failure comes back as MK_ERR_COMM instead of aborting the job from inside MPI
     * (MPI_ERRORS_RETURN on moekit's communicators): in a group of ranks 0 and 1, rank 1
     * expects 4 bytes from rank 0, which sends 8, and MPI reports a truncation on rank 1.
     * Only two ranks take part: in a larger group a rank that fails mid-collective can
     * leave the others waiting (the caller's mk_comm_abort ends such a job). */
    mk_comm *two = NULL;
    int in2 = me < 2 && P >= 2;
    ok = mk_comm_split(w, in2 ? 0 : 1, me, &two) == MK_OK;
    if (ok && in2) {
        unsigned char s8[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, r8[8] = { 0 };
        size_t z4[8] = { 0 }, *c2s = z4, *c2sd = z4 + 2, *c2r = z4 + 4, *c2rd = z4 + 6;
        if (me == 0) c2s[1] = 8;
        if (me == 1) c2r[0] = 4;
        if (me == 1) fprintf(stderr, "# (an expected MPI truncation error line follows on rank 1)\n");
        int r = mk_comm_alltoallv(two, s8, c2s, c2sd, r8, c2r, c2rd);
        ok = me == 1 ? r == MK_ERR_COMM : r == MK_OK;
        if (!ok) rank_diag("truncated alltoallv returned %d", r);
    }
    mk_comm_free(&two);
    if (P >= 2) all_ok(ok, "an MPI error (truncated receive) returns MK_ERR_COMM on that rank, no abort");
    free(sc);
    free(si);
    free(ri);
}

/* More than 2 GiB from every rank to the next: counts beyond INT_MAX. Opt-in (memory). */
static void check_alltoall_huge(const mk_comm *w)
{
    const int P = g_size, me = g_rank;
    const size_t n = ((size_t)INT_MAX + 1) + 12345; /* bytes */
    int to = (me + 1) % P, from = (me - 1 + P) % P;
    size_t *v = calloc(4 * (size_t)P, sizeof *v), *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P;
    unsigned char *sb = malloc(n), *rb = malloc(n);
    int ok = v && sb && rb;
    if (ok) {
        for (size_t j = 0; j < n; j += 4093) sb[j] = a2a_byte(me, to, j / 4093);
        sb[n - 1] = 0x5a;
        memset(rb, 0, n);
        sc[to] = n, rc[from] = n;
        ok = mk_comm_alltoallv(w, sb, sc, sd, rb, rc, rd) == MK_OK;
        for (size_t j = 0; ok && j < n; j += 4093) ok &= rb[j] == a2a_byte(from, me, j / 4093);
        ok = ok && rb[n - 1] == 0x5a;
    }
    all_ok(ok, "alltoallv of %zu bytes (> INT_MAX) to the next rank", n);
    free(sb);
    free(rb);
    free(v);
}

static void check_bcast(const mk_comm *w)
{
    unsigned char b[1000];
    const int root = g_size - 1;
    for (int i = 0; i < 1000; i++) b[i] = g_rank == root ? (unsigned char)(i * 7 + 1) : 0;
    int ok = mk_comm_bcast(w, b, sizeof b, root) == MK_OK;
    for (int i = 0; i < 1000; i++) ok &= b[i] == (unsigned char)(i * 7 + 1);
    all_ok(ok, "bcast from the last rank reaches every rank");
    ok = mk_comm_bcast(w, b, 0, 0) == MK_OK && mk_comm_barrier(w) == MK_OK;
    all_ok(ok, "bcast of 0 bytes and barrier");
    if (g_rank == 0) fprintf(stderr, "# (expected error lines follow: a bcast root outside the group)\n");
    ok = mk_comm_bcast(w, b, sizeof b, g_size) == MK_ERR_INTERNAL;
    all_ok(ok, "bcast with a root outside the group fails on every rank instead of hanging");
}

static void check_split(const mk_comm *w)
{
    mk_comm *pair = NULL, *stride = NULL, *rev = NULL;
    /* Groups of 2 consecutive ranks (expert-parallel style). */
    int rc = mk_comm_split(w, g_rank / 2, g_rank, &pair);
    int psize = g_size - 2 * (g_rank / 2) < 2 ? 1 : 2;
    all_ok(rc == MK_OK && pair && mk_comm_size(pair) == psize && mk_comm_rank(pair) == g_rank % 2 &&
               strcmp(mk_comm_backend(pair), "mpi") == 0 && mk_comm_local_rank(pair) == 0 &&
               mk_comm_node(pair) == 0,
           "split color rank/2: size, rank, backend; local rank and node 0 for groups");
    if (rc == MK_OK) {
        mk_real v[3] = { (mk_real)(g_rank + 1), (mk_real)0.1, (mk_real)-g_rank };
        int64_t l = g_rank;
        rc = mk_comm_allreduce_real(pair, v, 3);
        int lo = 2 * (g_rank / 2), hi = lo + psize;
        mk_real w0 = 0, w1 = (mk_real)0.1, w2 = 0;
        for (int r = lo + 1; r < hi; r++) w1 += (mk_real)0.1;
        for (int r = lo; r < hi; r++) w0 += (mk_real)(r + 1), w2 += (mk_real)-r;
        int ok = rc == MK_OK && v[0] == w0 && v[1] == w1 && v[2] == w2;
        ok = ok && mk_comm_allreduce_i64(pair, &l, 1) == MK_OK && l == (int64_t)(lo + hi - 1) * psize / 2;
        all_ok(ok, "split color rank/2: all-reduces stay within the pair");
    }
    /* Stride groups (expert-data-parallel style). */
    rc = mk_comm_split(w, g_rank % 2, g_rank, &stride);
    int ssize = (g_size - g_rank % 2 + 1) / 2;
    all_ok(rc == MK_OK && stride && mk_comm_size(stride) == ssize && mk_comm_rank(stride) == g_rank / 2,
           "split color rank%%2: size and rank");
    if (rc == MK_OK) {
        int64_t l[2] = { g_rank, 1 };
        double d = g_rank + 0.5;
        int ok = mk_comm_allreduce_i64(stride, l, 2) == MK_OK && mk_comm_allreduce_f64(stride, &d, 1) == MK_OK;
        int64_t want = 0;
        double wd = 0;
        for (int r = g_rank % 2; r < g_size; r += 2) want += r;
        for (int r = g_rank % 2; r < g_size; r += 2) wd = r == g_rank % 2 ? r + 0.5 : wd + (r + 0.5);
        ok = ok && l[0] == want && l[1] == ssize && d == wd;
        all_ok(ok, "split color rank%%2: all-reduces stay within the stride group");
    }
    /* Key orders the group: key = -rank reverses it. */
    rc = mk_comm_split(w, 0, -g_rank, &rev);
    int ok = rc == MK_OK && rev && mk_comm_rank(rev) == g_size - 1 - g_rank;
    if (ok) {
        int64_t s[64], r[64];
        if (g_size <= 64) {
            for (int q = 0; q < g_size; q++) s[q] = mk_comm_rank(rev) * 100 + q;
            ok = mk_comm_alltoall_int(rev, s, r) == MK_OK;
            for (int p = 0; p < g_size; p++) ok &= r[p] == p * 100 + mk_comm_rank(rev);
        }
    }
    all_ok(ok, "split with key -rank reverses the order; alltoall_int in the new order");
    mk_comm *sub = NULL;
    ok = pair && mk_comm_split(pair, 0, 0, &sub) == MK_OK && sub && mk_comm_size(sub) == psize;
    mk_comm_free(&sub);
    all_ok(ok, "split of a split");
    if (g_rank == 0) fprintf(stderr, "# (an expected error line follows: a negative color on rank 0)\n");
    rc = mk_comm_split(w, g_rank == 0 ? -1 : 1, 0, &sub);
    ok = g_rank == 0 ? rc == MK_ERR_INTERNAL && sub == NULL
                     : rc == MK_OK && sub && mk_comm_size(sub) == g_size - 1;
    mk_comm_free(&sub);
    all_ok(ok, "split: a negative color fails on that rank, the others still get their group");
    mk_comm_free(&pair);
    mk_comm_free(&stride);
    mk_comm_free(&rev);
    all_ok(pair == NULL && stride == NULL && rev == NULL, "freed groups");
}

int main(int argc, char **argv)
{
    struct pre pre = { 0 };
    check_self(&pre);

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    for (int i = 0; i < pre.n; i++) all_ok(pre.ok[i], "%s", pre.what[i]);

    mk_comm *w = NULL;
    int rc = mk_comm_world(&w);
    if (!all_ok(rc == MK_OK && w, "mk_comm_world after MPI_Init")) {
        if (g_rank == 0) tap_done();
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    all_ok(strcmp(mk_comm_backend(w), "mpi") == 0 && mk_comm_rank(w) == g_rank && mk_comm_size(w) == g_size,
           "world: mpi backend, rank and size as MPI_COMM_WORLD (%d ranks)", g_size);
    /* One host here: every rank is on node 0 and its local rank is its rank. */
    all_ok(mk_comm_local_rank(w) == g_rank && mk_comm_node(w) == 0, "world: local rank == rank, node 0");

    check_allreduce_real(w);
    check_allreduce_large(w);
    check_allreduce_other(w);
    check_alltoall(w);
    const char *big = getenv("MK_TEST_BIG");
    if (big && strcmp(big, "1") == 0 && g_size > 1) check_alltoall_huge(w);
    check_bcast(w);
    check_split(w);

    mk_comm *w2 = NULL;
    rc = mk_comm_world(&w2);
    int ok = rc == MK_OK && mk_comm_size(w2) == g_size;
    mk_comm_free(&w2);
    all_ok(ok, "a second world handle can be made and freed");

    /* Rank 0 holds the verdict of every combined check; the other ranks exit with it too,
     * so mpirun fails if any check did. */
    int failed = g_rank == 0 ? tap_state_.failed : 0;
    MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();

    /* After MPI_Finalize: freeing an MPI handle makes no MPI call, the world is self again.
     * Each rank checks; rank 0 prints its line (no MPI left to combine them), the others
     * report through their exit status. */
    mk_comm_free(&w);
    mk_comm *after = NULL;
    ok = w == NULL && mk_comm_world(&after) == MK_OK && strcmp(mk_comm_backend(after), "self") == 0;
    mk_comm_free(&after);
    if (g_rank == 0) {
        tap_ok(ok, "after MPI_Finalize: mk_comm_free makes no MPI call, mk_comm_world is self");
        return tap_done();
    }
    if (!ok) fprintf(stderr, "# rank %d: after MPI_Finalize: mk_comm_world is not the self backend\n", g_rank);
    return failed || !ok ? 1 : 0;
}
