/* mk_comm.c - process groups and collectives over MPI, or one process without MPI
 * (mk_comm.h, DESIGN section 4).
 *
 * Every MPI communicator here is moekit's own (a duplicate of the world, or a split of
 * one), so moekit's messages never match the caller's, and it carries MPI_ERRORS_RETURN so
 * a failing call comes back as MK_ERR_COMM with MPI's own words instead of killing the job
 * from inside MPI. Ending the job on an error is the caller's decision (mk_comm_abort).
 *
 * Floating-point sums do not use MPI_Allreduce: its reduction order depends on the
 * algorithm MPI picks (message size, rank count, tuning), so the bits could change between
 * runs and even between ranks. Instead every rank gathers all contributions and adds them
 * in rank order 0..size-1 itself. This file must not be compiled with -ffast-math, which
 * would let the compiler reorder those additions.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"

#ifdef MK_REAL_DOUBLE
#define MK_MPI_REAL MPI_DOUBLE
#else
#define MK_MPI_REAL MPI_FLOAT
#endif

/* The gather buffer of the deterministic sums stays below this many bytes, so summing a
 * large gradient costs size x 16 MiB of traffic per chunk, not size x the gradient in memory. */
#define MK_GATHER_BYTES ((size_t)16 << 20)
/* Point-to-point pieces for messages MPI's int counts cannot describe: 1 GiB <= INT_MAX. */
#define MK_P2P_CHUNK ((size_t)1 << 30)
/* Tag of the point-to-point fallback of mk_comm_alltoallv; the communicator is moekit's
 * own, so any tag is free, and one call's messages complete before the next call starts. */
#define MK_P2P_TAG 0x6d6b

enum mk_comm_kind { MK_COMM_SELF, MK_COMM_MPI };

int mk_comm_mpi_handle(const mk_comm *c, void *out);

struct mk_comm {
    enum mk_comm_kind kind;
    MPI_Comm comm;      /* MPI_COMM_NULL for the self backend */
    int rank, size;
    int local_rank;     /* rank among the ranks of this node (world only) */
    int node;           /* index of this node, ordered by the world rank of its first rank */
};

/* Report an MPI failure once, with MPI's own description, at the caller's file and line. */
#define MK_MPI_FAIL(c, err, what) mk_mpi_fail_((c), (err), (what), __FILE__, __LINE__, __func__)

static int mk_mpi_fail_(const mk_comm *c, int err, const char *what, const char *file, int line,
                        const char *func)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS || len <= 0)
        snprintf(msg, sizeof msg, "error code %d", err);
    else
        msg[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    /* The group size tells which communicator failed; mk_error adds the world rank. */
    return mk_error(MK_ERR_COMM, file, line, func, "%s (group of %d): MPI error: %s", what,
                    c ? c->size : -1, msg);
}

static mk_comm *mk_comm_new(enum mk_comm_kind kind)
{
    mk_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->kind = kind;
    c->comm = MPI_COMM_NULL;
    c->rank = 0;
    c->size = 1;
    return c;
}

/* MPI may be used between MPI_Init and MPI_Finalize only. */
static int mk_mpi_live(void)
{
    int init = 0, fin = 0;
    if (MPI_Initialized(&init) != MPI_SUCCESS || !init) return 0;
    if (MPI_Finalized(&fin) != MPI_SUCCESS || fin) return 0;
    return 1;
}

/* Take ownership of a fresh communicator: errors come back to us, rank and size cached. */
static int mk_comm_adopt(mk_comm *c, MPI_Comm comm, const char *what)
{
    int err;
    c->comm = comm;
    if ((err = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (err = MPI_Comm_rank(comm, &c->rank)) != MPI_SUCCESS ||
        (err = MPI_Comm_size(comm, &c->size)) != MPI_SUCCESS)
        return MK_MPI_FAIL(c, err, what);
    return MK_OK;
}

/* Local rank from the shared-memory split; node index = rank among the local-rank-0
 * processes, sent to the other ranks of the node. Collective over c. */
static int mk_comm_locate(mk_comm *c)
{
    MPI_Comm local = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
    int rc = MK_OK, err;
    if ((err = MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL,
                                   &local)) != MPI_SUCCESS) {
        rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Comm_split_type");
        goto out;
    }
    MPI_Comm_set_errhandler(local, MPI_ERRORS_RETURN);
    if ((err = MPI_Comm_rank(local, &c->local_rank)) != MPI_SUCCESS) {
        rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Comm_rank (node)");
        goto out;
    }
    /* Every rank takes part in the split (a collective); only local rank 0 gets a group. */
    if ((err = MPI_Comm_split(c->comm, c->local_rank == 0 ? 0 : MPI_UNDEFINED, c->rank,
                              &leaders)) != MPI_SUCCESS) {
        rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Comm_split (node leaders)");
        goto out;
    }
    c->node = 0;
    if (leaders != MPI_COMM_NULL) {
        MPI_Comm_set_errhandler(leaders, MPI_ERRORS_RETURN);
        if ((err = MPI_Comm_rank(leaders, &c->node)) != MPI_SUCCESS) {
            rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Comm_rank (node leaders)");
            goto out;
        }
    }
    if ((err = MPI_Bcast(&c->node, 1, MPI_INT, 0, local)) != MPI_SUCCESS)
        rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Bcast (node index)");
out:
    if (leaders != MPI_COMM_NULL) MPI_Comm_free(&leaders);
    if (local != MPI_COMM_NULL) MPI_Comm_free(&local);
    return rc;
}

int mk_comm_world(mk_comm **out)
{
    *out = NULL;
    if (!mk_mpi_live()) return mk_comm_self(out);
    mk_comm *c = mk_comm_new(MK_COMM_MPI);
    if (!c) return MK_FAIL(MK_ERR_NOMEM, "mk_comm_world: out of memory");
    MPI_Comm dup = MPI_COMM_NULL;
    /* The duplicate inherits MPI_COMM_WORLD's error handler until mk_comm_adopt sets ours;
     * the caller's world keeps its own handler (not ours to change). */
    int rc, err = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    if (err != MPI_SUCCESS) {
        rc = MK_MPI_FAIL(c, err, "mk_comm_world: MPI_Comm_dup");
        free(c);
        return rc;
    }
    if ((rc = mk_comm_adopt(c, dup, "mk_comm_world")) != MK_OK ||
        (rc = mk_comm_locate(c)) != MK_OK) {
        mk_comm_free(&c);
        return rc;
    }
    *out = c;
    return MK_OK;
}

int mk_comm_self(mk_comm **out)
{
    *out = mk_comm_new(MK_COMM_SELF);
    return *out ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "mk_comm_self: out of memory");
}

int mk_comm_split(const mk_comm *c, int color, int key, mk_comm **out)
{
    *out = NULL;
    if (c->kind == MK_COMM_SELF) {
        if (color < 0) return MK_FAIL(MK_ERR_INTERNAL, "mk_comm_split: negative color %d", color);
        return mk_comm_self(out);
    }
    /* A rank with a bad color still takes part in the collective split (as MPI_UNDEFINED),
     * so the other ranks do not hang waiting for it, and reports afterwards. */
    MPI_Comm nc = MPI_COMM_NULL;
    int err = MPI_Comm_split(c->comm, color < 0 ? MPI_UNDEFINED : color, key, &nc);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_split: MPI_Comm_split");
    if (color < 0) {
        if (nc != MPI_COMM_NULL) MPI_Comm_free(&nc);
        return MK_FAIL(MK_ERR_INTERNAL, "mk_comm_split: negative color %d", color);
    }
    mk_comm *g = mk_comm_new(MK_COMM_MPI);
    if (!g) {
        MPI_Comm_free(&nc);
        return MK_FAIL(MK_ERR_NOMEM, "mk_comm_split: out of memory");
    }
    int rc = mk_comm_adopt(g, nc, "mk_comm_split");
    if (rc != MK_OK) {
        mk_comm_free(&g);
        return rc;
    }
    /* Local rank and node describe the world only (mk_comm.h): a group reports 0. */
    *out = g;
    return MK_OK;
}

void mk_comm_free(mk_comm **c)
{
    if (!c || !*c) return;
    /* After MPI_Finalize no MPI call is allowed, and MPI has released everything anyway. */
    if ((*c)->comm != MPI_COMM_NULL && mk_mpi_live()) MPI_Comm_free(&(*c)->comm);
    free(*c);
    *c = NULL;
}

int mk_comm_rank(const mk_comm *c) { return c->rank; }
int mk_comm_size(const mk_comm *c) { return c->size; }
int mk_comm_local_rank(const mk_comm *c) { return c->local_rank; }
int mk_comm_node(const mk_comm *c) { return c->node; }
const char *mk_comm_backend(const mk_comm *c) { return c->kind == MK_COMM_MPI ? "mpi" : "self"; }

/* ------------------------------------------------------------------ deterministic sums */

/* dst[i] = all[0][i] + all[1][i] + ... + all[size-1][i], added left to right; all holds
 * size rows of m elements. Rank-outer loops keep the per-element order and vectorise. */
static void mk_sum_real(void *dst, const void *all, size_t m, int size)
{
    mk_real *d = dst;
    const mk_real *a = all;
    memcpy(d, a, m * sizeof *d);
    for (int r = 1; r < size; r++) {
        const mk_real *ar = a + (size_t)r * m;
        for (size_t i = 0; i < m; i++) d[i] += ar[i];
    }
}

static void mk_sum_f64(void *dst, const void *all, size_t m, int size)
{
    double *d = dst;
    const double *a = all;
    memcpy(d, a, m * sizeof *d);
    for (int r = 1; r < size; r++) {
        const double *ar = a + (size_t)r * m;
        for (size_t i = 0; i < m; i++) d[i] += ar[i];
    }
}

/* Allgather in chunks, then add in rank order: identical bits on every rank and every run. */
static int mk_allreduce_ordered(const mk_comm *c, void *buf, size_t n, size_t esz,
                                MPI_Datatype type, void (*sum)(void *, const void *, size_t, int),
                                const char *what)
{
    /* One rank: the sum is its own contribution. */
    if (c->kind == MK_COMM_SELF || c->size == 1 || n == 0) return MK_OK;
    size_t chunk = MK_GATHER_BYTES / ((size_t)c->size * esz);
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    /* chunk <= 16 MiB / esz, far below INT_MAX, so the int count below is exact. */
    unsigned char *all = malloc((size_t)c->size * chunk * esz);
    if (!all) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory for %zu x %zu bytes", what,
                             (size_t)c->size, chunk * esz);
    unsigned char *b = buf;
    int rc = MK_OK;
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        int err = MPI_Allgather(b + off * esz, (int)m, type, all, (int)m, type, c->comm);
        if (err != MPI_SUCCESS) {
            rc = MK_MPI_FAIL(c, err, what);
            break;
        }
        sum(b + off * esz, all, m, c->size);
    }
    free(all);
    return rc;
}

int mk_comm_allreduce_real(const mk_comm *c, mk_real *buf, size_t n)
{
    return mk_allreduce_ordered(c, buf, n, sizeof *buf, MK_MPI_REAL, mk_sum_real,
                                "mk_comm_allreduce_real: MPI_Allgather");
}

int mk_comm_allreduce_f64(const mk_comm *c, double *buf, size_t n)
{
    return mk_allreduce_ordered(c, buf, n, sizeof *buf, MPI_DOUBLE, mk_sum_f64,
                                "mk_comm_allreduce_f64: MPI_Allgather");
}

/* Integer sums and maxima are exact in any order, so MPI's own reduction is deterministic.
 * Counts go in pieces of at most INT_MAX elements (MPI counts are int). */
static int mk_allreduce_exact(const mk_comm *c, void *buf, size_t n, size_t esz,
                              MPI_Datatype type, MPI_Op op, const char *what)
{
    if (c->kind == MK_COMM_SELF || c->size == 1) return MK_OK;
    unsigned char *b = buf;
    for (size_t off = 0; off < n; off += (size_t)INT_MAX) {
        size_t m = n - off < (size_t)INT_MAX ? n - off : (size_t)INT_MAX;
        int err = MPI_Allreduce(MPI_IN_PLACE, b + off * esz, (int)m, type, op, c->comm);
        if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, what);
    }
    return MK_OK;
}

int mk_comm_allreduce_i64(const mk_comm *c, int64_t *buf, size_t n)
{
    return mk_allreduce_exact(c, buf, n, sizeof *buf, MPI_INT64_T, MPI_SUM,
                              "mk_comm_allreduce_i64: MPI_Allreduce");
}

int mk_comm_allreduce_max_int(const mk_comm *c, int *buf, size_t n)
{
    return mk_allreduce_exact(c, buf, n, sizeof *buf, MPI_INT, MPI_MAX,
                              "mk_comm_allreduce_max_int: MPI_Allreduce");
}

/* ------------------------------------------------------------------ all-to-all */

static size_t mk_pieces(size_t bytes) { return (bytes + MK_P2P_CHUNK - 1) / MK_P2P_CHUNK; }

/* The all-to-all as point-to-point messages of at most 1 GiB, for counts or displacements
 * beyond MPI_Alltoallv's int. Pieces between two ranks match in order: MPI does not let
 * messages with the same source, tag and communicator overtake each other. */
static int mk_alltoallv_p2p(const mk_comm *c, const unsigned char *send, const size_t *scount,
                            const size_t *sdispl, unsigned char *recv, const size_t *rcount,
                            const size_t *rdispl)
{
    const int me = c->rank, P = c->size;
    size_t nreq = 0;
    for (int q = 0; q < P; q++)
        if (q != me) nreq += mk_pieces(scount[q]) + mk_pieces(rcount[q]);
    MPI_Request *req = malloc((nreq ? nreq : 1) * sizeof *req);
    if (!req) return MK_FAIL(MK_ERR_NOMEM, "mk_comm_alltoallv: out of memory for %zu requests", nreq);
    size_t k = 0;
    int err = MPI_SUCCESS;
    /* Receives first, so sends find them posted; peers in a rotating order spread the load. */
    for (int i = 1; i < P && err == MPI_SUCCESS; i++) {
        int p = (me - i + P) % P;
        for (size_t off = 0; off < rcount[p] && err == MPI_SUCCESS; off += MK_P2P_CHUNK) {
            size_t m = rcount[p] - off < MK_P2P_CHUNK ? rcount[p] - off : MK_P2P_CHUNK;
            err = MPI_Irecv(recv + rdispl[p] + off, (int)m, MPI_BYTE, p, MK_P2P_TAG, c->comm, &req[k++]);
        }
    }
    for (int i = 1; i < P && err == MPI_SUCCESS; i++) {
        int q = (me + i) % P;
        for (size_t off = 0; off < scount[q] && err == MPI_SUCCESS; off += MK_P2P_CHUNK) {
            size_t m = scount[q] - off < MK_P2P_CHUNK ? scount[q] - off : MK_P2P_CHUNK;
            err = MPI_Isend(send + sdispl[q] + off, (int)m, MPI_BYTE, q, MK_P2P_TAG, c->comm, &req[k++]);
        }
    }
    if (err != MPI_SUCCESS) {
        /* Posted requests are left behind: the job is about to be aborted by the caller. */
        free(req);
        return MK_MPI_FAIL(c, err, "mk_comm_alltoallv: MPI_Isend/MPI_Irecv");
    }
    if (scount[me]) memcpy(recv + rdispl[me], send + sdispl[me], scount[me]);
    err = MPI_Waitall((int)k, req, MPI_STATUSES_IGNORE);
    free(req);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_alltoallv: MPI_Waitall");
    return MK_OK;
}

int mk_comm_alltoallv(const mk_comm *c, const void *send, const size_t *send_counts,
                      const size_t *send_displs, void *recv, const size_t *recv_counts,
                      const size_t *recv_displs)
{
    const int me = c->rank, P = c->size;
    /* What this rank sends itself must fit what it receives from itself; between ranks
     * the counts are the caller's contract (MPI reports a truncation if they differ). */
    if (send_counts[me] != recv_counts[me])
        return MK_FAIL(MK_ERR_INTERNAL, "mk_comm_alltoallv: group rank %d sends itself %zu bytes but receives %zu",
                       me, send_counts[me], recv_counts[me]);
    if (c->kind == MK_COMM_SELF) {
        if (send_counts[0])
            memcpy((unsigned char *)recv + recv_displs[0],
                   (const unsigned char *)send + send_displs[0], send_counts[0]);
        return MK_OK;
    }
    int big = 0;
    for (int q = 0; q < P; q++)
        if (send_counts[q] > INT_MAX || send_displs[q] > INT_MAX || recv_counts[q] > INT_MAX ||
            recv_displs[q] > INT_MAX)
            big = 1;
    /* Every rank must take the same path (a collective on some ranks and point-to-point
     * on others would never match), so the ranks agree on it first. */
    int err = MPI_Allreduce(MPI_IN_PLACE, &big, 1, MPI_INT, MPI_MAX, c->comm);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_alltoallv: MPI_Allreduce");
    if (big) return mk_alltoallv_p2p(c, send, send_counts, send_displs, recv, recv_counts, recv_displs);
    int *v = malloc(4 * (size_t)P * sizeof *v);
    if (!v) return MK_FAIL(MK_ERR_NOMEM, "mk_comm_alltoallv: out of memory");
    int *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P;
    for (int q = 0; q < P; q++) {
        sc[q] = (int)send_counts[q];
        sd[q] = (int)send_displs[q];
        rc[q] = (int)recv_counts[q];
        rd[q] = (int)recv_displs[q];
    }
    err = MPI_Alltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, c->comm);
    free(v);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_alltoallv: MPI_Alltoallv");
    return MK_OK;
}

int mk_comm_alltoall_int(const mk_comm *c, const int64_t *send, int64_t *recv)
{
    if (c->kind == MK_COMM_SELF) {
        recv[0] = send[0];
        return MK_OK;
    }
    int err = MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, c->comm);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_alltoall_int: MPI_Alltoall");
    return MK_OK;
}

/* ------------------------------------------------------------------ the rest */

int mk_comm_bcast(const mk_comm *c, void *buf, size_t bytes, int root)
{
    /* root is the same on every rank, so every rank fails here alike: no rank hangs. */
    if (root < 0 || root >= c->size)
        return MK_FAIL(MK_ERR_INTERNAL, "mk_comm_bcast: root %d outside a group of %d ranks", root, c->size);
    if (c->kind == MK_COMM_SELF || c->size == 1) return MK_OK;
    unsigned char *b = buf;
    /* Every rank has the same byte count, so every rank cuts the same pieces. */
    for (size_t off = 0; off < bytes; off += MK_P2P_CHUNK) {
        size_t m = bytes - off < MK_P2P_CHUNK ? bytes - off : MK_P2P_CHUNK;
        int err = MPI_Bcast(b + off, (int)m, MPI_BYTE, root, c->comm);
        if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_bcast: MPI_Bcast");
    }
    return MK_OK;
}

int mk_comm_barrier(const mk_comm *c)
{
    if (c->kind == MK_COMM_SELF) return MK_OK;
    int err = MPI_Barrier(c->comm);
    if (err != MPI_SUCCESS) return MK_MPI_FAIL(c, err, "mk_comm_barrier: MPI_Barrier");
    return MK_OK;
}

void mk_comm_abort(const mk_comm *c, int code)
{
    /* MPI_Abort kills the processes without running atexit handlers or flushing stdio:
     * flush first so the error line and the last log lines are not lost. */
    fflush(stdout);
    fflush(stderr);
    /* The world, not c's group: a failure on one rank must end every rank of the job. */
    if (c && c->kind == MK_COMM_MPI && mk_mpi_live()) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

int mk_comm_mpi_handle(const mk_comm *c, void *out)
{
    if (!c || c->comm == MPI_COMM_NULL) return MK_FAIL(MK_ERR_INTERNAL, "no MPI communicator behind this group");
    *(MPI_Comm *)out = c->comm;
    return MK_OK;
}
