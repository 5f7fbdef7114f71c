/* alloc_loop.c - T5: SQLite's OOM loop (https://sqlite.org/testing.html §3.1) over moekit's
 * readers. For each operation, k = 1, 2, ...: the k-th allocation fails (transient: only
 * that one; persistent: that one and every later one), until the operation completes
 * without reaching k. Every failed run must return MK_ERR_NOMEM (or, transient only, succeed
 * with the same result as an undisturbed run), print exactly one "moekit: error:" line that
 * says memory, and free everything it allocated.
 *
 * The hook is the linker's --wrap on malloc, calloc, realloc, posix_memalign, strdup and
 * free, applied to the library's objects compiled into this program (fault.am). So exactly
 * moekit's own allocations are counted and failed, not those inside libc, HDF5, jansson or
 * inih, and lib/ carries no hook. Each live allocation is kept in a table, which makes the
 * leak check exact and independent of LeakSanitizer (which also runs in sanitizer builds).
 *
 * usage: alloc_loop DIR   (DIR holds ds/ and bpe/ from moe-shard and corpus.jsonl; the
 * script tests/fault/test_alloc.sh makes them)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_bpe.h"
#include "mk_ckpt.h"
#include "mk_comm.h"
#include "mk_config.h"
#include "mk_corpus.h"
#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_indexed.h"
#include "mk_model.h"
#include "mk_trainer.h"
#include "../tap.h"
#include "capture.h"
#include "fixture.h"

/* ------------------------------------------------------------------ the hook */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
char *__real_strdup(const char *s);
void __real_free(void *p);

/* One process, one thread at a time through the readers: plain globals are enough here. */
static long fail_at;    /* 0: never */
static int persistent;
static long counted;    /* allocations since the operation started */
static long hits;       /* allocations failed */
#define LIVE_CAP (1 << 16)
static void *live[LIVE_CAP];
static volatile long live_n; /* volatile: the compiler assumes malloc leaves globals alone */

static void live_add(void *p)
{
    if (!p) return;
    size_t h = ((size_t)p >> 4) & (LIVE_CAP - 1);
    while (live[h]) h = (h + 1) & (LIVE_CAP - 1);
    live[h] = p;
    live_n++;
}
static void live_del(void *p)
{
    if (!p) return;
    size_t h = ((size_t)p >> 4) & (LIVE_CAP - 1);
    for (size_t i = 0; i < LIVE_CAP && live[h]; i++, h = (h + 1) & (LIVE_CAP - 1))
        if (live[h] == p) {
            /* backward-shift deletion keeps every chain reachable */
            size_t hole = h, j = h;
            for (;;) {
                j = (j + 1) & (LIVE_CAP - 1);
                if (!live[j]) break;
                size_t home = ((size_t)live[j] >> 4) & (LIVE_CAP - 1);
                if ((hole < j) ? (home <= hole || home > j) : (home <= hole && home > j)) {
                    live[hole] = live[j];
                    hole = j;
                }
            }
            live[hole] = NULL;
            live_n--;
            return;
        }
}
static int fail_now(void)
{
    counted++;
    if (fail_at > 0 && (counted == fail_at || (persistent && counted > fail_at))) {
        hits++;
        return 1;
    }
    return 0;
}

void *__wrap_malloc(size_t n)
{
    if (fail_now()) return errno = ENOMEM, NULL;
    void *p = __real_malloc(n);
    live_add(p);
    return p;
}
void *__wrap_calloc(size_t n, size_t m)
{
    if (fail_now()) return errno = ENOMEM, NULL;
    void *p = __real_calloc(n, m);
    live_add(p);
    return p;
}
void *__wrap_realloc(void *p, size_t n)
{
    if (fail_now()) return errno = ENOMEM, NULL;
    void *q = __real_realloc(p, n);
    if (q || n == 0) live_del(p);
    live_add(q);
    return q;
}
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    if (fail_now()) return ENOMEM;
    int r = __real_posix_memalign(p, a, n);
    if (r == 0) live_add(*p);
    return r;
}
char *__wrap_strdup(const char *s)
{
    if (fail_now()) return errno = ENOMEM, NULL;
    char *p = __real_strdup(s);
    live_add(p);
    return p;
}
void __wrap_free(void *p)
{
    live_del(p);
    __real_free(p);
}

/* stderr capture: capture.h */
static capture cap;

/* ------------------------------------------------------------------ the operations */
static char dir[3000], ds[4200], idx_prefix[4300], ranks[4300], jsonl[4300], ini[4300], ckdir[4300], ckfile[4400];
static mk_trainer *tr;
static unsigned long ref_sum; /* result of the undisturbed run, per operation */

static unsigned long mix(unsigned long h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ul;
    return h;
}

/* Each op returns a status and sets *sum to a digest of its result on success. */
static int op_ini(unsigned long *sum)
{
    mk_config c;
    mk_config_defaults(&c);
    int rc = mk_config_load_ini(&c, ini);
    if (rc == MK_OK) rc = mk_config_set(&c, "train.steps=100", "test");
    if (rc == MK_OK) rc = mk_config_validate(&c);
    char v[256] = "";
    if (rc == MK_OK) rc = mk_config_get_text(&c, "model.experts", v, sizeof v);
    *sum = mix(14695981039346656037ul, v, strlen(v));
    return rc;
}
static int op_idx(unsigned long *sum)
{
    mk_indexed *d = NULL;
    int rc = mk_indexed_open(idx_prefix, &d);
    if (rc) return rc;
    int32_t tok[256];
    rc = mk_indexed_read(d, 0, 256, tok);
    *sum = mix(mix(14695981039346656037ul, tok, sizeof tok), &(uint64_t){ mk_indexed_tokens(d) }, 8);
    mk_indexed_close(&d);
    return rc;
}
static int op_manifest(unsigned long *sum)
{
    mk_dataset_opts o = { .path = ds, .mixture = "natural", .seq_len = 32, .seed = 7, .tokenizer = "",
                          .model_vocab = 257 };
    mk_dataset *d = NULL;
    int rc = mk_dataset_open(&o, &d);
    if (rc) return rc;
    int32_t tok[4 * 32], tgt[4 * 32], dom[4];
    rc = mk_dataset_samples(d, 3, 4, tok, tgt, dom);
    *sum = mix(mix(14695981039346656037ul, tok, sizeof tok), dom, sizeof dom);
    mk_dataset_close(&d);
    return rc;
}
static int op_bpe(unsigned long *sum)
{
    mk_bpe *b = NULL;
    int rc = mk_bpe_load(ranks, &b);
    if (rc) return rc;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    const char text[] = "The tokenizer splits this sentence, and 12345 numbers.";
    rc = mk_bpe_encode(b, text, sizeof text - 1, &ids, &n, &cap);
    *sum = rc == MK_OK ? mix(14695981039346656037ul, ids, n * sizeof *ids) : 0;
    free(ids);
    mk_bpe_free(&b);
    return rc;
}
/* BPE training on three short documents, then the atomic save of its ranks file. */
static int op_bpe_train(unsigned long *sum)
{
    static const char *const docs[] = {
        "the quick brown fox jumps over the lazy dog, then the dog sleeps and the fox runs",
        "def f(x):\n    return x * x + 2 * x  # the square and twice the value\n",
        "Der schnelle braune Fuchs springt ueber den faulen Hund; the the the fox fox",
    };
    size_t lens[3];
    for (int i = 0; i < 3; i++) lens[i] = strlen(docs[i]);
    mk_bpe *b = NULL;
    int rc = mk_bpe_train(docs, lens, 3, 300, &b);
    char path[4400];
    snprintf(path, sizeof path, "%s/trained.ranks", dir);
    if (rc == MK_OK) rc = mk_bpe_save(b, path);
    *sum = rc == MK_OK ? mix(14695981039346656037ul, mk_bpe_sha256_hex(b), 64) : 0;
    mk_bpe_free(&b);
    return rc;
}
static int op_corpus(unsigned long *sum)
{
    mk_corpus_file f;
    memset(&f, 0, sizeof f);
    int rc = mk_corpus_load(jsonl, MK_CORPUS_JSONL, "text", &f);
    if (rc) return rc;
    unsigned long h = 14695981039346656037ul;
    for (size_t i = 0; i < f.ndocs; i++) h = mix(h, f.docs[i].text, f.docs[i].len);
    *sum = h;
    mk_corpus_free(&f);
    return rc;
}
static int op_ckpt_load(unsigned long *sum)
{
    mk_ckpt_meta meta;
    mk_model *m = mk_trainer_model(tr);
    memset(mk_model_params(m), 0, mk_model_param_count(m) * sizeof(mk_real));
    int rc = mk_ckpt_load(tr, ckfile, &meta);
    *sum = mix(mix(14695981039346656037ul, mk_model_params(m), mk_model_param_count(m) * sizeof(mk_real)),
               &meta.samples_consumed, sizeof meta.samples_consumed);
    return rc;
}
static int op_ckpt_verify(unsigned long *sum)
{
    char why[1024] = "";
    *sum = 1;
    int rc = mk_ckpt_verify(ckfile, why, sizeof why);
    if (rc) fprintf(stderr, "moekit: error: %s\n", why); /* as moe-ckpt verify reports it */
    return rc;
}
static int op_ckpt_find(unsigned long *sum)
{
    char p[4600] = "";
    int rc = mk_ckpt_find(dir, p, sizeof p, NULL);
    *sum = mix(14695981039346656037ul, p, strlen(p));
    return rc;
}

typedef struct op { const char *name; int (*fn)(unsigned long *); } op;

static void loop(const op *o, int persist)
{
    unsigned long sum = 0;
    counted = 0;
    fail_at = 0;
    capture_begin(&cap);
    int rc0 = o->fn(&ref_sum);
    char line[2048];
    capture_end(&cap, line, sizeof line);
    const long total = counted;
    if (!tap_ok(rc0 == MK_OK, "%s: undisturbed run succeeds (%ld allocations)", o->name, total)) {
        printf("# %s\n", line);
        return;
    }
    long runs = 0, bad_status = 0, bad_msg = 0, leaks = 0, wrong = 0, ok_runs = 0;
    char example[2100] = "";
    for (long k = 1;; k++) {
        persistent = persist;
        counted = hits = 0;
        const long before = live_n;
        fail_at = k;
        capture_begin(&cap);
        int rc = o->fn(&sum);
        fail_at = 0;
        const int lines = capture_end(&cap, line, sizeof line);
        runs++;
        if (live_n != before) {
            leaks++;
            printf("# %s k=%ld: %ld allocation(s) not freed\n", o->name, k, live_n - before);
            /* forget them so the next k starts clean */
        }
        if (hits == 0) { /* ran to the end without reaching k: done */
            if (rc != MK_OK || sum != ref_sum) wrong++;
            break;
        }
        if (rc == MK_OK) {
            ok_runs++;
            if (persist || sum != ref_sum) {
                wrong++;
                printf("# %s k=%ld: %s allocation failure ignored (%s)\n", o->name, k,
                       persist ? "persistent" : "transient", sum != ref_sum ? "wrong result" : "status 0");
            }
        } else if (rc != MK_ERR_NOMEM) {
            bad_status++;
            printf("# %s k=%ld: status %d, not %d (out of memory): %s\n", o->name, k, rc, MK_ERR_NOMEM, line);
        } else if (lines != 1 || !strstr(line, "memory")) {
            bad_msg++;
            printf("# %s k=%ld: %d error line(s), first: '%s'\n", o->name, k, lines, line);
        } else if (!example[0]) {
            snprintf(example, sizeof example, "%s", line);
        }
        if (k > 100000) break;
    }
    if (example[0]) printf("# %s: e.g. %s\n", o->name, example);
    tap_ok(bad_status == 0 && bad_msg == 0 && leaks == 0 && wrong == 0,
           "%s, %s: %ld runs (k = 1..%ld): every failure MK_ERR_NOMEM with one line saying memory, "
           "0 leaks (%ld leaked, %ld other status, %ld bad message, %ld wrong result, %ld absorbed)",
           o->name, persist ? "persistent" : "transient", runs, runs, leaks, bad_status, bad_msg, wrong, ok_runs);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: alloc_loop DIR\n");
        return 2;
    }
    const char *srcdir = getenv("srcdir") ? getenv("srcdir") : ".";
    if (strlen(argv[1]) >= sizeof dir) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(ds, sizeof ds, "%s/ds", dir);
    snprintf(idx_prefix, sizeof idx_prefix, "%s/ds/english/train_00000", dir);
    snprintf(ranks, sizeof ranks, "%s/bpe/tokenizer.ranks", dir);
    snprintf(jsonl, sizeof jsonl, "%s/corpus.jsonl", dir);
    snprintf(ini, sizeof ini, "%s/schedules/tiny.ini", srcdir);
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", dir);
    snprintf(ckfile, sizeof ckfile, "%s/ckpt/step_00000003.h5", dir);
    snprintf(cap.path, sizeof cap.path, "%s/stderr.txt", dir);

    /* the hook sees this file's allocations too: a self-check that the leak count can fail */
    static void *volatile probe; /* volatile: the compiler may not drop the pair */
    const long before = live_n;
    probe = malloc(24);
    const int seen = live_n == before + 1;
    free(probe);
    tap_ok(seen && live_n == before, "the allocation hook counts a live allocation and its free");

    /* a trainer of a small model, and its checkpoint to load back */
    mk_config c;
    mk_comm *self = NULL;
    int rc = fixture_trainer(srcdir, &c, &self, &tr);
    mk_ckpt_meta meta = { .step = 3, .tokens_seen = 99, .samples_consumed = 12 };
    snprintf(meta.tokenizer, sizeof meta.tokenizer, "byte");
    if (rc == MK_OK) rc = mk_ckpt_save(tr, dir, &meta, 1, NULL, NULL, 0);
    if (!tap_ok(rc == MK_OK, "setup: a trainer and its checkpoint")) return tap_done();

    const op ops[] = { { "INI schedule (mk_config_load_ini + validate)", op_ini },
                       { ".idx/.bin reader (mk_indexed_open + read)", op_idx },
                       { "dataset manifest (mk_dataset_open + samples)", op_manifest },
                       { "BPE ranks file (mk_bpe_load + encode)", op_bpe },
                       { "BPE training (mk_bpe_train + save)", op_bpe_train },
                       { "JSONL corpus (mk_corpus_load)", op_corpus },
                       { "checkpoint loader (mk_ckpt_load)", op_ckpt_load },
                       { "checkpoint verify (mk_ckpt_verify)", op_ckpt_verify },
                       { "checkpoint search (mk_ckpt_find)", op_ckpt_find } };
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        loop(&ops[i], 0);
        loop(&ops[i], 1);
    }
    mk_trainer_free(&tr);
    mk_comm_free(&self);
    return tap_done();
}
