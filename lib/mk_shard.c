/* mk_shard.c - corpus -> dataset directory (see mk_shard.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_shard.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mk_error.h"
#include "mk_fs.h"
#include "mk_indexed.h"
#include "mk_sha256.h"
#include "mk_tokenizer.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* Documents handed out per collective round: bounds memory, keeps ranks busy. */
#define BATCH_DOCS 2048
#define BATCH_BYTES (8u << 20)

typedef struct split_out {
    const char *split;          /* "train" or "val" */
    mk_indexed_writer *w;
    int shard;                  /* number of the open shard */
    uint64_t shard_docs, shard_tokens;
    uint64_t docs, tokens;
    json_t *shards;             /* finished shards for the manifest */
} split_out;

typedef struct shard_run {
    const mk_shard_opts *o;
    MPI_Comm comm;
    int rank, world;
    char tmp[4096];
    mk_tokenizer *tok;
    int dtype, vocab;
    uint64_t total_bytes, done_bytes, done_tokens;
    double t0, last_print;
} shard_run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Every rank learns the worst status of all ranks, so all take the same branch. */
static int agree(MPI_Comm comm, int rc)
{
    int worst = rc;
    if (MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) return MK_ERR_COMM;
    return worst;
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static int is_val(const char *domain, const mk_doc *d, double frac)
{
    if (frac <= 0) return 0;
    uint64_t h = fnv1a(d->text, d->len, fnv1a(domain, strlen(domain) + 1, 0xcbf29ce484222325ull));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (double)(h >> 11) * 0x1.0p-53 < frac;
}

/* ------------------------------------------------------------------ output files */

static int remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir) return unlink(path) == 0 || errno == ENOENT ? MK_OK : MK_ERR_IO;
    struct dirent *e;
    char sub[4400];
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(dir);
    return rmdir(path) == 0 ? MK_OK : MK_ERR_IO;
}

static int split_open_shard(shard_run *r, const char *domain, split_out *s)
{
    char prefix[4400];
    snprintf(prefix, sizeof prefix, "%s/%s/%s_%05d", r->tmp, domain, s->split, s->shard);
    s->shard_docs = s->shard_tokens = 0;
    return mk_indexed_writer_open(prefix, r->dtype, r->vocab, &s->w);
}

static int split_close_shard(shard_run *r, const char *domain, split_out *s)
{
    if (!s->w) return MK_OK;
    int rc = mk_indexed_writer_finish(s->w);
    if (rc) mk_indexed_writer_abort(s->w); /* a failed finish keeps the writer for abort */
    s->w = NULL;
    if (rc) return rc;
    char rel[512], full[4700], hex_bin[65], hex_idx[65];
    uint64_t bytes;
    snprintf(rel, sizeof rel, "%s/%s_%05d", domain, s->split, s->shard);
    snprintf(full, sizeof full, "%s/%s.bin", r->tmp, rel);
    MK_CHECK(mk_sha256_file(full, hex_bin, &bytes));
    snprintf(full, sizeof full, "%s/%s.idx", r->tmp, rel);
    MK_CHECK(mk_sha256_file(full, hex_idx, NULL));
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:s, s:s}", "prefix", rel, "documents",
                          (json_int_t)s->shard_docs, "tokens", (json_int_t)s->shard_tokens, "bin_bytes",
                          (json_int_t)bytes, "bin_sha256", hex_bin, "idx_sha256", hex_idx);
    if (!j || json_array_append_new(s->shards, j)) return MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    s->shard++;
    return MK_OK;
}

static int split_add(shard_run *r, const char *domain, split_out *s, const int32_t *t, size_t n)
{
    size_t tsz = mk_indexed_dtype_size(r->dtype);
    if (s->w && s->shard_docs > 0 && mk_indexed_writer_bytes(s->w) + n * tsz > r->o->shard_bytes)
        MK_CHECK(split_close_shard(r, domain, s));
    if (!s->w) MK_CHECK(split_open_shard(r, domain, s));
    MK_CHECK(mk_indexed_writer_add(s->w, t, n));
    s->shard_docs++;
    s->shard_tokens += n;
    s->docs++;
    s->tokens += n;
    return MK_OK;
}

/* ------------------------------------------------------------------ progress */

static void progress(shard_run *r, int final)
{
    FILE *f = r->o->progress;
    if (!f || r->rank != 0) return;
    double t = now_s(), el = t - r->t0;
    if (!final && t - r->last_print < 2.0) return;
    r->last_print = t;
    double mb = r->done_bytes / 1e6, rate = el > 0 ? mb / el : 0;
    double eta = rate > 0 ? (r->total_bytes - r->done_bytes) / 1e6 / rate : 0;
    fprintf(f, "moe-shard: %.1f/%.1f MB | %.2f MB/s | %.0f tok/s | eta %.0fs%s\n", mb,
            r->total_bytes / 1e6, rate, el > 0 ? r->done_tokens / el : 0, eta, final ? " | done" : "");
    fflush(f);
}

/* ------------------------------------------------------------------ tokenizing rounds */

/* Tokenize docs[lo..hi) where (index % world == rank), send them to rank 0, which writes
 * all of them in order. */
static int shard_round(shard_run *r, const char *domain, const mk_doc *docs, size_t lo, size_t hi,
                       split_out *train, split_out *val)
{
    const size_t n = hi - lo;
    int rc = MK_OK;
    size_t mine = 0;
    for (size_t j = lo; j < hi; j++) mine += (int)(j % (size_t)r->world) == r->rank;
    int32_t **ids = calloc(mine ? mine : 1, sizeof *ids);
    size_t *lens = calloc(mine ? mine : 1, sizeof *lens);
    if (!ids || !lens) rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
    int trc = MK_OK;
    if (rc == MK_OK) {
        #pragma omp parallel for schedule(dynamic, 4) reduction(max : trc)
        for (size_t k = 0; k < mine; k++) {
            size_t j = lo + (size_t)r->rank + k * (size_t)r->world, cap = 0;
            int e = mk_tokenizer_encode(r->tok, docs[j].text, docs[j].len, &ids[k], &lens[k], &cap);
            if (e > trc) trc = e;
        }
        rc = trc;
    }
    rc = agree(r->comm, rc);

    /* Gather lengths, then tokens, to rank 0. */
    int *counts = NULL, *displs = NULL;
    int64_t *all_lens = NULL;
    int32_t *all_tok = NULL, *my_tok = NULL;
    long long my_total = 0;
    for (size_t k = 0; rc == MK_OK && k < mine; k++) my_total += (long long)lens[k];
    if (rc == MK_OK && my_total > INT32_MAX) rc = MK_FAIL(MK_ERR_INPUT, "moe-shard: one round exceeds 2^31 tokens");
    rc = agree(r->comm, rc);
    if (rc == MK_OK) {
        int64_t *my_lens = malloc((mine ? mine : 1) * sizeof *my_lens);
        my_tok = malloc((size_t)(my_total ? my_total : 1) * sizeof *my_tok);
        if (r->rank == 0) {
            counts = calloc((size_t)r->world, sizeof *counts);
            displs = calloc((size_t)r->world, sizeof *displs);
            all_lens = malloc(n * sizeof *all_lens);
        }
        if (!my_lens || !my_tok || (r->rank == 0 && (!counts || !displs || !all_lens)))
            rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
        size_t at = 0;
        for (size_t k = 0; rc == MK_OK && k < mine; k++) {
            my_lens[k] = (int64_t)lens[k];
            memcpy(my_tok + at, ids[k], lens[k] * sizeof *my_tok);
            at += lens[k];
        }
        rc = agree(r->comm, rc);
        int cnt = (int)mine, tot = (int)my_total;
        if (rc == MK_OK && MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, r->comm) != MPI_SUCCESS) rc = MK_ERR_COMM;
        if (rc == MK_OK && r->rank == 0)
            for (int q = 1; q < r->world; q++) displs[q] = displs[q - 1] + counts[q - 1];
        if (rc == MK_OK && MPI_Gatherv(my_lens, cnt, MPI_INT64_T, all_lens, counts, displs, MPI_INT64_T, 0,
                                       r->comm) != MPI_SUCCESS)
            rc = MK_ERR_COMM;
        if (rc == MK_OK && MPI_Gather(&tot, 1, MPI_INT, counts, 1, MPI_INT, 0, r->comm) != MPI_SUCCESS) rc = MK_ERR_COMM;
        if (rc == MK_OK && r->rank == 0) {
            long long sum = 0;
            for (int q = 0; q < r->world; q++) {
                displs[q] = (int)sum;
                sum += counts[q];
            }
            if (sum > INT32_MAX) rc = MK_FAIL(MK_ERR_INPUT, "moe-shard: one round exceeds 2^31 tokens");
            else if (!(all_tok = malloc((size_t)(sum ? sum : 1) * sizeof *all_tok)))
                rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
        }
        rc = agree(r->comm, rc);
        if (rc == MK_OK && MPI_Gatherv(my_tok, tot, MPI_INT32_T, all_tok, counts, displs, MPI_INT32_T, 0,
                                       r->comm) != MPI_SUCCESS)
            rc = MK_ERR_COMM;
        free(my_lens);
    }

    /* Rank 0: documents of rank q are the q-th, (q+world)-th, ... of the round. */
    if (rc == MK_OK && r->rank == 0) {
        size_t *lens_at = calloc((size_t)r->world, sizeof *lens_at), *tok_at = calloc((size_t)r->world, sizeof *tok_at);
        int32_t *doc = NULL;
        if (!lens_at || !tok_at) rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
        int64_t *lens_base = all_lens;
        /* per-rank starts in all_lens: the earlier gather used the same rank order */
        size_t *len_start = calloc((size_t)r->world, sizeof *len_start);
        if (!len_start) rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
        for (int q = 1; rc == MK_OK && q < r->world; q++) {
            size_t cq = 0;
            for (size_t j = lo; j < hi; j++) cq += (int)(j % (size_t)r->world) == q - 1;
            len_start[q] = len_start[q - 1] + cq;
        }
        for (size_t j = lo; rc == MK_OK && j < hi; j++) {
            int q = (int)(j % (size_t)r->world);
            int64_t L = lens_base[len_start[q] + lens_at[q]++];
            const int32_t *t = all_tok + displs[q] + tok_at[q];
            tok_at[q] += (size_t)L;
            int32_t *withe = realloc(doc, ((size_t)L + 1) * sizeof *doc);
            if (!withe) {
                rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory");
                break;
            }
            doc = withe;
            memcpy(doc, t, (size_t)L * sizeof *doc);
            doc[L] = mk_tokenizer_eod(r->tok);
            split_out *s = is_val(domain, &docs[j], r->o->val_fraction) ? val : train;
            rc = split_add(r, domain, s, doc, (size_t)L + 1);
            r->done_tokens += (uint64_t)L + 1;
        }
        free(doc);
        free(lens_at);
        free(tok_at);
        free(len_start);
    }
    rc = agree(r->comm, rc);
    for (size_t k = 0; k < mine; k++) free(ids[k]);
    free(ids);
    free(lens);
    free(my_tok);
    free(counts);
    free(displs);
    free(all_lens);
    free(all_tok);
    return rc;
}

static int shard_domain(shard_run *r, const mk_shard_domain *dom, json_t *domains_json)
{
    const mk_shard_opts *o = r->o;
    split_out train = { .split = "train" }, val = { .split = "val" };
    train.shards = json_array();
    val.shards = json_array();
    json_t *inputs = json_array();
    int rc = (train.shards && val.shards && inputs) ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    if (rc == MK_OK && r->rank == 0) {
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/%s", r->tmp, dom->name);
        if (mkdir(dir, 0777) != 0) rc = MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    }
    rc = agree(r->comm, rc);
    for (int p = 0; rc == MK_OK && p < dom->npaths; p++) {
        mk_corpus_file f;
        mk_corpus_format fmt = mk_corpus_guess(dom->paths[p], o->text_format);
        rc = agree(r->comm, mk_corpus_load(dom->paths[p], fmt, o->text_field, &f));
        if (rc) break;
        if (r->rank == 0) {
            char hex[65];
            uint64_t bytes;
            rc = mk_sha256_file(dom->paths[p], hex, &bytes);
            json_t *in = json_pack("{s:s, s:s, s:I, s:s, s:I}", "path", dom->paths[p], "format",
                                   fmt == MK_CORPUS_JSONL ? "jsonl" : fmt == MK_CORPUS_TEXT_FILE ? "text-file" : "text",
                                   "bytes", (json_int_t)bytes, "sha256", hex, "documents", (json_int_t)f.ndocs);
            if (rc == MK_OK && (!in || json_array_append_new(inputs, in)))
                rc = MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
        }
        rc = agree(r->comm, rc);
        const uint64_t file_base = r->done_bytes;
        size_t lo = 0;
        while (rc == MK_OK && lo < f.ndocs) {
            size_t hi = lo, bytes = 0;
            while (hi < f.ndocs && hi - lo < BATCH_DOCS && bytes < BATCH_BYTES) bytes += f.docs[hi++].len;
            rc = shard_round(r, dom->name, f.docs, lo, hi, &train, &val);
            /* Progress by share of documents: JSONL texts live outside the mapped file. */
            r->done_bytes = file_base + (uint64_t)((double)f.size * (double)hi / (double)f.ndocs);
            lo = hi;
            progress(r, 0);
        }
        mk_corpus_free(&f);
    }
    if (rc == MK_OK && r->rank == 0) {
        if (train.docs == 0)
            rc = MK_FAIL(MK_ERR_INPUT, "domain '%s': no training documents (%llu in val); give it more "
                         "documents or lower --val-fraction", dom->name, (unsigned long long)val.docs);
        if (rc == MK_OK) rc = split_close_shard(r, dom->name, &train);
        if (rc == MK_OK) rc = split_close_shard(r, dom->name, &val);
        if (rc == MK_OK && val.docs == 0 && o->val_fraction > 0 && o->progress)
            fprintf(o->progress, "moe-shard: warning: domain '%s' has no validation documents\n", dom->name);
        json_t *dj = json_pack("{s:s, s:o, s:{s:{s:I, s:I, s:o}, s:{s:I, s:I, s:o}}}", "name", dom->name,
                               "inputs", inputs, "splits", "train", "documents", (json_int_t)train.docs,
                               "tokens", (json_int_t)train.tokens, "shards", train.shards, "val",
                               "documents", (json_int_t)val.docs, "tokens", (json_int_t)val.tokens,
                               "shards", val.shards);
        inputs = train.shards = val.shards = NULL; /* json_pack "o" took them */
        if (rc == MK_OK && (!dj || json_array_append_new(domains_json, dj)))
            rc = MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    }
    if (train.w) mk_indexed_writer_abort(train.w);
    if (val.w) mk_indexed_writer_abort(val.w);
    json_decref(inputs);
    json_decref(train.shards);
    json_decref(val.shards);
    return agree(r->comm, rc);
}

/* ------------------------------------------------------------------ tokenizer */

static int setup_tokenizer(shard_run *r)
{
    const mk_shard_opts *o = r->o;
    int rc = MK_OK;
    char ranks[4400];
    snprintf(ranks, sizeof ranks, "%s/tokenizer.ranks", r->tmp);
    if (o->bpe_train > 0) {
        if (r->rank == 0) {
            /* Train on the train split of every domain (val documents stay unseen). */
            mk_corpus_file *files = calloc(1, sizeof *files);
            const char **texts = NULL;
            size_t *lens = NULL, n = 0, cap = 0, nf = 0;
            for (int d = 0; rc == MK_OK && d < o->ndomains; d++)
                for (int p = 0; rc == MK_OK && p < o->domains[d].npaths; p++) {
                    mk_corpus_file *nfiles = realloc(files, (nf + 1) * sizeof *files);
                    if (!nfiles) { rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory"); break; }
                    files = nfiles;
                    const char *path = o->domains[d].paths[p];
                    if ((rc = mk_corpus_load(path, mk_corpus_guess(path, o->text_format), o->text_field, &files[nf])))
                        break;
                    mk_corpus_file *f = &files[nf++];
                    for (size_t i = 0; rc == MK_OK && i < f->ndocs; i++) {
                        if (is_val(o->domains[d].name, &f->docs[i], o->val_fraction)) continue;
                        if (n == cap) {
                            cap = cap ? 2 * cap : 1024;
                            const char **nt = realloc(texts, cap * sizeof *texts);
                            size_t *nl = realloc(lens, cap * sizeof *lens);
                            if (nt) texts = nt;
                            if (nl) lens = nl;
                            if (!nt || !nl) { rc = MK_FAIL(MK_ERR_NOMEM, "moe-shard: out of memory"); break; }
                        }
                        texts[n] = f->docs[i].text;
                        lens[n++] = f->docs[i].len;
                    }
                }
            if (rc == MK_OK) {
                if (o->progress)
                    fprintf(o->progress, "moe-shard: training a BPE vocabulary of %d on %zu documents\n",
                            o->bpe_train, n);
                rc = mk_tokenizer_bpe_train(texts, lens, n, o->bpe_train, &r->tok);
            }
            if (rc == MK_OK) rc = mk_tokenizer_bpe_save(r->tok, ranks);
            for (size_t i = 0; i < nf; i++) mk_corpus_free(&files[i]);
            free(files);
            free(texts);
            free(lens);
        }
        rc = agree(r->comm, rc);
        if (rc == MK_OK && r->rank != 0) rc = mk_tokenizer_bpe_load(ranks, &r->tok);
    } else if (!o->tokenizer || strcmp(o->tokenizer, "byte") == 0) {
        rc = mk_tokenizer_byte(&r->tok);
    } else {
        rc = mk_tokenizer_bpe_load(o->tokenizer, &r->tok);
        /* The dataset carries its vocabulary: copy the ranks file in, byte for byte. */
        if (rc == MK_OK && r->rank == 0) {
            FILE *in = fopen(o->tokenizer, "rb"), *out = fopen(ranks, "wb");
            char buf[1 << 16];
            size_t k;
            if (!in || !out) rc = MK_FAIL(MK_ERR_IO, "%s: cannot copy the ranks file", ranks);
            while (rc == MK_OK && (k = fread(buf, 1, sizeof buf, in)) > 0)
                if (fwrite(buf, 1, k, out) != k) rc = MK_FAIL(MK_ERR_IO, "%s: write failed", ranks);
            if (in) fclose(in);
            if (out && fclose(out) != 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "%s: write failed", ranks);
            if (rc == MK_OK) rc = mk_fs_fsync(ranks, 0);
        }
    }
    rc = agree(r->comm, rc);
    if (rc) return rc;
    r->vocab = mk_tokenizer_vocab(r->tok);
    r->dtype = o->dtype ? o->dtype : mk_indexed_dtype_for_vocab(r->vocab);
    return MK_OK;
}

/* ------------------------------------------------------------------ manifest and run */

static int write_manifest(shard_run *r, json_t *domains)
{
    const mk_shard_opts *o = r->o;
    json_t *tok = json_pack("{s:s, s:s, s:i, s:i}", "kind", mk_tokenizer_kind(r->tok), "id",
                            mk_tokenizer_id(r->tok), "vocab", r->vocab, "eod", (int)mk_tokenizer_eod(r->tok));
    if (tok && strcmp(mk_tokenizer_kind(r->tok), "bpe") == 0) {
        json_object_set_new(tok, "ranks_file", json_string("tokenizer.ranks"));
        json_object_set_new(tok, "pattern", json_string(MK_BPE_GPT2_PATTERN));
    }
    json_t *m = json_pack("{s:s, s:i, s:s, s:o, s:s, s:f, s:I, s:O}", "format", "moekit-dataset",
                          "format_version", 1, "moekit_version", PACKAGE_VERSION, "tokenizer", tok, "dtype",
                          r->dtype == MK_DTYPE_UINT16 ? "uint16" : r->dtype == MK_DTYPE_INT32 ? "int32" : "other",
                          "val_fraction", o->val_fraction, "shard_bytes", (json_int_t)o->shard_bytes,
                          "domains", domains);
    if (!m) return MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    char *text = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(m);
    if (!text) return MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    char path[4400];
    snprintf(path, sizeof path, "%s/manifest.json", r->tmp);
    FILE *f = fopen(path, "w");
    int rc = MK_OK;
    if (!f || fputs(text, f) < 0 || fputc('\n', f) == EOF) rc = MK_FAIL(MK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (f && fclose(f) != 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    free(text);
    if (rc == MK_OK) rc = mk_fs_fsync(path, 0);
    return rc;
}

static int check_name(const char *name)
{
    if (!name[0] || name[0] == '.' || strlen(name) > 100)
        return MK_FAIL(MK_ERR_USAGE, "--domain: bad domain name '%s'", name);
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '.'))
            return MK_FAIL(MK_ERR_USAGE, "--domain: domain name '%s' may only hold letters, digits, '_', '-' and '.'", name);
    return MK_OK;
}

static int check_options(const mk_shard_opts *o)
{
    if (o->ndomains < 1) return MK_FAIL(MK_ERR_USAGE, "no --domain given");
    for (int i = 0; i < o->ndomains; i++) {
        MK_CHECK(check_name(o->domains[i].name));
        if (o->domains[i].npaths < 1) return MK_FAIL(MK_ERR_USAGE, "--domain %s: no input files", o->domains[i].name);
        for (int j = 0; j < i; j++)
            if (strcmp(o->domains[i].name, o->domains[j].name) == 0)
                return MK_FAIL(MK_ERR_USAGE, "--domain: '%s' is given twice", o->domains[i].name);
    }
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        return MK_FAIL(MK_ERR_USAGE, "--val-fraction %g: must be in [0, 1)", o->val_fraction);
    if (o->shard_bytes < 1024) return MK_FAIL(MK_ERR_USAGE, "--shard-size %llu: at least 1024 bytes",
                                              (unsigned long long)o->shard_bytes);
    if (o->bpe_train && (o->bpe_train < 256 || o->bpe_train > 1 << 20))
        return MK_FAIL(MK_ERR_USAGE, "--bpe-train %d: between 256 and 1048576", o->bpe_train);
    if (strlen(o->out_dir) > 3000) return MK_FAIL(MK_ERR_USAGE, "output path too long");
    struct stat st;
    if (lstat(o->out_dir, &st) == 0) /* a dangling symlink there counts too */
        return MK_FAIL(MK_ERR_USAGE, "%s already exists; remove it or choose another output", o->out_dir);
    return MK_OK;
}

int mk_shard_run(const mk_shard_opts *o, MPI_Comm comm, mk_shard_result *res)
{
    shard_run r = { .o = o, .comm = comm };
    memset(res, 0, sizeof *res);
    MPI_Comm_rank(comm, &r.rank);
    MPI_Comm_size(comm, &r.world);
    int rc = r.rank == 0 ? check_options(o) : MK_OK;
    if ((rc = agree(comm, rc))) return rc;
    r.t0 = r.last_print = now_s();

    /* One temporary directory, named by rank 0, next to the output. */
    if (r.rank == 0) {
        snprintf(r.tmp, sizeof r.tmp, "%s.tmp-%ld", o->out_dir, (long)getpid());
        if (mkdir(r.tmp, 0777) != 0) rc = MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", r.tmp, strerror(errno));
        for (int d = 0; d < o->ndomains; d++)
            for (int p = 0; p < o->domains[d].npaths; p++) {
                struct stat st;
                if (stat(o->domains[d].paths[p], &st) == 0) r.total_bytes += (uint64_t)st.st_size;
            }
    }
    if (MPI_Bcast(r.tmp, sizeof r.tmp, MPI_CHAR, 0, comm) != MPI_SUCCESS) rc = MK_ERR_COMM;
    if ((rc = agree(comm, rc))) return rc;

    json_t *domains = json_array();
    if (!domains) rc = MK_FAIL(MK_ERR_NOMEM, "manifest: out of memory");
    rc = agree(comm, rc);
    if (rc == MK_OK) rc = setup_tokenizer(&r);
    for (int d = 0; rc == MK_OK && d < o->ndomains; d++) rc = shard_domain(&r, &o->domains[d], domains);
    if (rc == MK_OK && r.rank == 0) {
        rc = write_manifest(&r, domains);
        for (int d = 0; rc == MK_OK && d < o->ndomains; d++) {
            char dir[4400];
            snprintf(dir, sizeof dir, "%s/%s", r.tmp, o->domains[d].name);
            rc = mk_fs_fsync(dir, 1);
        }
        if (rc == MK_OK) rc = mk_fs_fsync(r.tmp, 1);
        if (rc == MK_OK && rename(r.tmp, o->out_dir) != 0)
            rc = MK_FAIL(MK_ERR_IO, "cannot rename %s to %s: %s", r.tmp, o->out_dir, strerror(errno));
        if (rc == MK_OK) {
            rc = mk_fs_fsync_parent(o->out_dir); /* make the rename durable */
        }
        if (rc == MK_OK) {
            size_t i;
            json_t *dj;
            json_array_foreach(domains, i, dj) {
                json_t *s = json_object_get(dj, "splits");
                for (int k = 0; k < 2; k++) {
                    json_t *sp = json_object_get(s, k ? "val" : "train");
                    res->documents += (uint64_t)json_integer_value(json_object_get(sp, "documents"));
                    res->tokens += (uint64_t)json_integer_value(json_object_get(sp, "tokens"));
                }
            }
            res->input_bytes = r.total_bytes;
            res->seconds = now_s() - r.t0;
            progress(&r, 1);
        }
    }
    if (rc && r.rank == 0) remove_tree(r.tmp);
    json_decref(domains);
    mk_tokenizer_free(&r.tok);
    return agree(comm, rc);
}
