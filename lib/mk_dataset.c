/* mk_dataset.c - domain-blended training samples over indexed datasets (see mk_dataset.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_dataset.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mk_config.h"
#include "mk_error.h"
#include "mk_indexed.h"
#include "mk_sha256.h"

#define MK_NAME_MAX 128

/* One split of one domain: its shards read as one token stream. */
typedef struct stream {
    mk_indexed **shards;
    uint64_t *start;        /* [nshards + 1] token offset of each shard in the stream */
    int nshards;
    uint64_t windows;       /* samples of T+1 tokens at multiples of T */
} stream;

typedef struct domain {
    char name[MK_NAME_MAX];
    stream train, val;
    double weight;
} domain;

struct mk_dataset {
    domain *dom;
    int ndom, T, repeat_cap;
    uint64_t seed;
    char tokenizer[80];
    /* blend cursor: the next global sample and how many each domain has given so far */
    uint64_t next;
    uint64_t *count;
};

/* ------------------------------------------------------------------ streams */

static int stream_add(stream *s, mk_indexed *ix)
{
    mk_indexed **sh = realloc(s->shards, (size_t)(s->nshards + 1) * sizeof *sh);
    if (!sh) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    s->shards = sh;
    uint64_t *st = realloc(s->start, (size_t)(s->nshards + 2) * sizeof *st);
    if (!st) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    s->start = st;
    if (s->nshards == 0) s->start[0] = 0;
    s->shards[s->nshards] = ix;
    s->start[s->nshards + 1] = s->start[s->nshards] + mk_indexed_tokens(ix);
    s->nshards++;
    return MK_OK;
}

static uint64_t stream_tokens(const stream *s) { return s->nshards ? s->start[s->nshards] : 0; }

static void stream_free(stream *s)
{
    for (int i = 0; i < s->nshards; i++) mk_indexed_close(&s->shards[i]);
    free(s->shards);
    free(s->start);
}

/* n tokens from stream offset `at`, crossing shard boundaries as needed. */
static int stream_read(const stream *s, uint64_t at, size_t n, int32_t *out)
{
    int lo = 0, hi = s->nshards - 1;
    while (lo < hi) { /* last shard whose start <= at */
        int mid = (lo + hi + 1) / 2;
        if (s->start[mid] <= at) lo = mid; else hi = mid - 1;
    }
    for (int i = lo; n > 0 && i < s->nshards; i++) {
        uint64_t off = at - s->start[i], avail = s->start[i + 1] - at;
        size_t take = avail < n ? (size_t)avail : n;
        if (take) MK_CHECK(mk_indexed_read(s->shards[i], off, take, out));
        out += take;
        at += take;
        n -= take;
    }
    if (n) return MK_FAIL(MK_ERR_INTERNAL, "dataset: read past the end of a stream");
    return MK_OK;
}

/* ------------------------------------------------------------------ permutation */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A keyed bijection of [0, n): a 4-round Feistel network on the smallest even number of
 * bits that holds n, cycle-walked back into range. */
static uint64_t permute(uint64_t j, uint64_t n, uint64_t key)
{
    if (n <= 1) return 0;
    int bits = 64 - __builtin_clzll(n - 1);
    bits += bits & 1;
    const int half = bits / 2;
    const uint64_t mask = (half == 64) ? ~0ull : ((1ull << half) - 1);
    do {
        uint64_t l = j >> half, r = j & mask;
        for (uint64_t round = 0; round < 4; round++) {
            uint64_t f = mix64(r ^ key ^ (round + 1) * 0x9E3779B97F4A7C15ull) & mask;
            uint64_t t = r;
            r = l ^ f;
            l = t;
        }
        j = (l << half) | r;
    } while (j >= n);
    return j;
}

/* ------------------------------------------------------------------ opening */

static int add_domain(mk_dataset *d, const char *name, const char *where)
{
    for (int i = 0; i < d->ndom; i++)
        if (strcmp(d->dom[i].name, name) == 0)
            return MK_FAIL(MK_ERR_USAGE, "data.path: domain '%s' appears twice (again in %s)", name, where);
    if (strlen(name) == 0 || strlen(name) >= MK_NAME_MAX)
        return MK_FAIL(MK_ERR_USAGE, "data.path: bad domain name '%s' in %s", name, where);
    domain *nd = realloc(d->dom, (size_t)(d->ndom + 1) * sizeof *nd);
    if (!nd) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    d->dom = nd;
    memset(&d->dom[d->ndom], 0, sizeof d->dom[d->ndom]);
    snprintf(d->dom[d->ndom].name, MK_NAME_MAX, "%s", name);
    d->ndom++;
    return MK_OK;
}

static int open_shards(stream *s, const char *dir, json_t *split, const char *mpath, const char *dname,
                       const char *sname)
{
    json_t *shards = split ? json_object_get(split, "shards") : NULL;
    if (!split) return MK_OK; /* a split may be absent (no val) */
    if (!json_is_array(shards))
        return MK_FAIL(MK_ERR_INPUT, "%s: domains.%s.splits.%s.shards is not a list", mpath, dname, sname);
    size_t i;
    json_t *sh;
    json_array_foreach(shards, i, sh) {
        const char *prefix = json_string_value(json_object_get(sh, "prefix"));
        if (!prefix || strstr(prefix, ".."))
            return MK_FAIL(MK_ERR_INPUT, "%s: domains.%s.splits.%s.shards[%zu].prefix missing or unsafe",
                           mpath, dname, sname, i);
        char full[MK_PATH_MAX];
        if (snprintf(full, sizeof full, "%s/%s", dir, prefix) >= (int)sizeof full)
            return MK_FAIL(MK_ERR_INPUT, "%s: shard path too long", mpath);
        mk_indexed *ix;
        MK_CHECK(mk_indexed_open(full, &ix));
        /* The manifest's hashes catch what the structural checks cannot: a token changed to
         * another one below the vocabulary (found by tests/fault/test_corrupt.sh). One more
         * read of each shard at open, beside the max-token scan; older manifests have none. */
        int rc = MK_OK;
        for (int e = 0; e < 2 && rc == MK_OK; e++) {
            const char *key = e ? "bin_sha256" : "idx_sha256";
            const char *want = json_string_value(json_object_get(sh, key));
            char fp[MK_PATH_MAX + 8], hex[65];
            if (!want) continue;
            snprintf(fp, sizeof fp, "%s.%s", full, e ? "bin" : "idx");
            rc = mk_sha256_file(fp, hex, NULL);
            if (rc == MK_OK && strcmp(hex, want) != 0)
                rc = MK_FAIL(MK_ERR_INPUT, "%s: SHA-256 differs from domains.%s.splits.%s.shards[%zu].%s in %s "
                             "(the file was changed or damaged)", fp, dname, sname, i, key, mpath);
        }
        if (rc == MK_OK) rc = stream_add(s, ix);
        if (rc) {
            mk_indexed_close(&ix);
            return rc;
        }
    }
    return MK_OK;
}

static int open_manifest_dir(mk_dataset *d, const char *dir, char *tok_id, size_t tok_n, int *vocab)
{
    char mpath[MK_PATH_MAX];
    if (snprintf(mpath, sizeof mpath, "%s/manifest.json", dir) >= (int)sizeof mpath)
        return MK_FAIL(MK_ERR_USAGE, "data.path: path too long");
    json_error_t jerr;
    json_t *m = json_load_file(mpath, 0, &jerr);
    if (!m) return MK_FAIL(MK_ERR_INPUT, "%s:%d: %s", mpath, jerr.line, jerr.text);
    int rc = MK_OK;
    const char *fmt = json_string_value(json_object_get(m, "format"));
    json_t *tok = json_object_get(m, "tokenizer");
    json_t *doms = json_object_get(m, "domains");
    const char *tid = json_string_value(json_object_get(tok, "id"));
    json_int_t v = json_integer_value(json_object_get(tok, "vocab"));
    if (!fmt || strcmp(fmt, "moekit-dataset") != 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: format is not \"moekit-dataset\"", mpath);
    else if (json_integer_value(json_object_get(m, "format_version")) != 1)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: format_version is not 1", mpath);
    else if (!tid || v < 2 || v > INT32_MAX)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: tokenizer.id or tokenizer.vocab missing or invalid", mpath);
    else if (!json_is_array(doms) || json_array_size(doms) == 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: no domains", mpath);
    else if (tok_id[0] && strcmp(tok_id, tid) != 0)
        rc = MK_FAIL(MK_ERR_USAGE, "data.path: %s was made with tokenizer %s, another source with %s",
                     mpath, tid, tok_id);
    if (rc == MK_OK) {
        snprintf(tok_id, tok_n, "%s", tid);
        if ((int)v > *vocab) *vocab = (int)v;
        size_t i;
        json_t *dj;
        json_array_foreach(doms, i, dj) {
            const char *name = json_string_value(json_object_get(dj, "name"));
            json_t *splits = json_object_get(dj, "splits");
            if (!name || !json_is_object(splits)) {
                rc = MK_FAIL(MK_ERR_INPUT, "%s: domains[%zu] has no name or splits", mpath, i);
                break;
            }
            if ((rc = add_domain(d, name, mpath))) break;
            domain *dm = &d->dom[d->ndom - 1];
            if ((rc = open_shards(&dm->train, dir, json_object_get(splits, "train"), mpath, name, "train")) ||
                (rc = open_shards(&dm->val, dir, json_object_get(splits, "val"), mpath, name, "val")))
                break;
        }
    }
    json_decref(m);
    return rc;
}

static int open_megatron(mk_dataset *d, const char *spec)
{
    const char *eq = strchr(spec, '=');
    char name[MK_NAME_MAX];
    size_t nlen = (size_t)(eq - spec);
    if (nlen >= sizeof name) return MK_FAIL(MK_ERR_USAGE, "data.path: domain name too long in '%s'", spec);
    memcpy(name, spec, nlen);
    name[nlen] = 0;
    MK_CHECK(add_domain(d, name, spec));
    mk_indexed *ix;
    MK_CHECK(mk_indexed_open(eq + 1, &ix));
    int rc = stream_add(&d->dom[d->ndom - 1].train, ix);
    if (rc) mk_indexed_close(&ix);
    return rc;
}

/* natural | uniform | temperature:T | NAME:W,NAME:W,... */
static int parse_mixture(mk_dataset *d, const char *mix)
{
    double total = 0;
    if (strcmp(mix, "natural") == 0 || strcmp(mix, "uniform") == 0 || strncmp(mix, "temperature:", 12) == 0) {
        double inv_t = 1.0;
        if (mix[0] == 't') {
            char *end;
            double t = strtod(mix + 12, &end);
            if (*end || !(t > 0) || !isfinite(t))
                return MK_FAIL(MK_ERR_USAGE, "data.mixture: temperature '%s' must be a positive number", mix + 12);
            inv_t = 1.0 / t;
        }
        for (int i = 0; i < d->ndom; i++) {
            double n = (double)stream_tokens(&d->dom[i].train);
            d->dom[i].weight = mix[0] == 'u' ? (n > 0) : pow(n, inv_t);
        }
    } else {
        char buf[1024];
        if (snprintf(buf, sizeof buf, "%s", mix) >= (int)sizeof buf)
            return MK_FAIL(MK_ERR_USAGE, "data.mixture: too long");
        for (int i = 0; i < d->ndom; i++) d->dom[i].weight = 0;
        char *save = NULL;
        for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
            char *colon = strrchr(item, ':');
            if (!colon)
                return MK_FAIL(MK_ERR_USAGE, "data.mixture: '%s' is not NAME:WEIGHT (or natural, uniform, temperature:T)", item);
            *colon = 0;
            char *end;
            double w = strtod(colon + 1, &end);
            if (*end || colon[1] == 0 || !isfinite(w))
                return MK_FAIL(MK_ERR_USAGE, "data.mixture: weight '%s' of domain '%s' is not a number", colon + 1, item);
            if (w < 0) return MK_FAIL(MK_ERR_USAGE, "data.mixture: weight %g of domain '%s' is negative", w, item);
            int found = -1;
            for (int i = 0; i < d->ndom; i++)
                if (strcmp(d->dom[i].name, item) == 0) found = i;
            if (found < 0) {
                char names[512] = "";
                for (int i = 0; i < d->ndom; i++) {
                    size_t l = strlen(names);
                    snprintf(names + l, sizeof names - l, "%s%s", i ? ", " : "", d->dom[i].name);
                }
                return MK_FAIL(MK_ERR_USAGE, "data.mixture: unknown domain '%s' (domains: %s)", item, names);
            }
            d->dom[found].weight = w;
        }
    }
    for (int i = 0; i < d->ndom; i++) total += d->dom[i].weight;
    if (!(total > 0)) return MK_FAIL(MK_ERR_USAGE, "data.mixture: '%s' gives every domain weight 0", mix);
    for (int i = 0; i < d->ndom; i++) d->dom[i].weight /= total;
    return MK_OK;
}

/* The tokenizer the run asks for, as an id comparable with the manifest's. */
static int wanted_tokenizer(const char *want, char *id, size_t n)
{
    if (strcmp(want, "byte") == 0 || strncmp(want, "bpe:", 4) == 0) {
        snprintf(id, n, "%s", want);
        return MK_OK;
    }
    char hex[65];
    MK_CHECK(mk_sha256_file(want, hex, NULL)); /* a ranks file: its id is its hash */
    snprintf(id, n, "bpe:%s", hex);
    return MK_OK;
}

int mk_dataset_open(const mk_dataset_opts *o, mk_dataset **out)
{
    *out = NULL;
    if (!o->path || !*o->path) return MK_FAIL(MK_ERR_USAGE, "data.path is empty");
    if (o->seq_len < 1) return MK_FAIL(MK_ERR_USAGE, "dataset: sequence length %d", o->seq_len);
    mk_dataset *d = calloc(1, sizeof *d);
    if (!d) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    d->T = o->seq_len;
    d->seed = o->seed;
    d->repeat_cap = o->repeat_cap;
    int rc = MK_OK, vocab = 0, have_megatron = 0;
    char tok_id[80] = "";

    char *list = strdup(o->path);
    if (!list) {
        rc = MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
        goto done;
    }
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item && rc == MK_OK; item = strtok_r(NULL, ",", &save)) {
        struct stat st;
        if (strchr(item, '=')) {
            rc = open_megatron(d, item);
            have_megatron = 1;
        } else if (stat(item, &st) != 0) {
            rc = MK_FAIL(MK_ERR_INPUT, "data.path: %s: %s", item, strerror(errno));
        } else if (!S_ISDIR(st.st_mode)) {
            rc = MK_FAIL(MK_ERR_USAGE, "data.path: %s is not a dataset directory (use NAME=PREFIX for a Megatron dataset)", item);
        } else {
            rc = open_manifest_dir(d, item, tok_id, sizeof tok_id, &vocab);
        }
    }
    free(list);
    if (rc) goto done;
    snprintf(d->tokenizer, sizeof d->tokenizer, "%s", tok_id[0] ? tok_id : "unknown");
    if (tok_id[0] && have_megatron)
        fprintf(stderr, "moe-train: note: Megatron sources carry no tokenizer; assuming they match %s\n", tok_id);

    if (o->tokenizer && *o->tokenizer) {
        char want[80];
        if ((rc = wanted_tokenizer(o->tokenizer, want, sizeof want))) goto done;
        if (tok_id[0] && strcmp(want, tok_id) != 0) {
            rc = MK_FAIL(MK_ERR_USAGE, "data.tokenizer: the run asks for %s but the dataset was made with %s",
                         want, tok_id);
            goto done;
        }
    }
    if (vocab > o->model_vocab) {
        rc = MK_FAIL(MK_ERR_USAGE, "model.vocab = %d is smaller than the dataset's vocabulary (%d)",
                     o->model_vocab, vocab);
        goto done;
    }
    for (int i = 0; i < d->ndom; i++) {
        stream *s[2] = { &d->dom[i].train, &d->dom[i].val };
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < s[k]->nshards; j++)
                if (mk_indexed_max_token(s[k]->shards[j]) >= o->model_vocab) {
                    rc = MK_FAIL(MK_ERR_USAGE, "domain '%s': token %lld is outside model.vocab = %d",
                                 d->dom[i].name, (long long)mk_indexed_max_token(s[k]->shards[j]),
                                 o->model_vocab);
                    goto done;
                }
        for (int k = 0; k < 2; k++) {
            uint64_t n = stream_tokens(s[k]);
            s[k]->windows = n > 0 ? (n - 1) / (uint64_t)d->T : 0;
        }
    }
    if ((rc = parse_mixture(d, o->mixture && *o->mixture ? o->mixture : "natural"))) goto done;
    for (int i = 0; i < d->ndom; i++)
        if (d->dom[i].weight > 0 && d->dom[i].train.windows == 0) {
            rc = MK_FAIL(MK_ERR_INPUT, "domain '%s': %llu train tokens, fewer than one sample of model.seq_len + 1 = %d",
                         d->dom[i].name, (unsigned long long)stream_tokens(&d->dom[i].train), d->T + 1);
            goto done;
        }
    d->count = calloc((size_t)d->ndom, sizeof *d->count);
    if (!d->count) rc = MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
done:
    if (rc) {
        mk_dataset_close(&d);
        return rc;
    }
    *out = d;
    return MK_OK;
}

void mk_dataset_close(mk_dataset **dp)
{
    if (!dp || !*dp) return;
    mk_dataset *d = *dp;
    for (int i = 0; i < d->ndom; i++) {
        stream_free(&d->dom[i].train);
        stream_free(&d->dom[i].val);
    }
    free(d->dom);
    free(d->count);
    free(d);
    *dp = NULL;
}

int mk_dataset_domains(const mk_dataset *d) { return d->ndom; }
const char *mk_dataset_domain_name(const mk_dataset *d, int i) { return d->dom[i].name; }
double mk_dataset_domain_weight(const mk_dataset *d, int i) { return d->dom[i].weight; }
uint64_t mk_dataset_domain_tokens(const mk_dataset *d, int i, int val)
{
    return stream_tokens(val ? &d->dom[i].val : &d->dom[i].train);
}
const char *mk_dataset_tokenizer(const mk_dataset *d) { return d->tokenizer; }

/* ------------------------------------------------------------------ samples */

static int next_domain(const mk_dataset *d, uint64_t n)
{
    int best = 0;
    double best_err = -INFINITY;
    for (int i = 0; i < d->ndom; i++) {
        double err = d->dom[i].weight * (double)(n + 1) - (double)d->count[i];
        if (err > best_err) {
            best_err = err;
            best = i;
        }
    }
    return best;
}

static int read_window(const mk_dataset *d, int di, uint64_t c, int32_t *tok, int32_t *tgt,
                       int32_t *scratch)
{
    const domain *dm = &d->dom[di];
    const uint64_t W = dm->train.windows, epoch = c / W;
    if (d->repeat_cap > 0 && epoch >= (uint64_t)d->repeat_cap)
        return MK_FAIL(MK_ERR_INPUT, "domain '%s' is exhausted: the mixture needs more than "
                       "data.repeat_cap = %d epochs of its %llu samples; raise the cap, lower its "
                       "weight or add data", dm->name, d->repeat_cap, (unsigned long long)W);
    const uint64_t key = mix64(d->seed ^ mix64((uint64_t)di + 1) ^ mix64((epoch + 1) * 0xD1B54A32D192ED03ull));
    const uint64_t w = permute(c % W, W, key);
    MK_CHECK(stream_read(&dm->train, w * (uint64_t)d->T, (size_t)d->T + 1, scratch));
    memcpy(tok, scratch, (size_t)d->T * sizeof *tok);
    memcpy(tgt, scratch + 1, (size_t)d->T * sizeof *tgt);
    return MK_OK;
}

int mk_dataset_samples(mk_dataset *d, uint64_t first, int count, int32_t *tokens, int32_t *targets,
                       int32_t *domain)
{
    const int T = d->T;
    if (first < d->next) { /* going backwards: replay the blend from the start */
        d->next = 0;
        memset(d->count, 0, (size_t)d->ndom * sizeof *d->count);
    }
    int32_t *scratch = malloc(((size_t)T + 1) * sizeof *scratch);
    if (!scratch) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    int rc = MK_OK;
    for (; rc == MK_OK && d->next < first + (uint64_t)count; d->next++) {
        int di = next_domain(d, d->next);
        uint64_t c = d->count[di]++;
        if (d->next < first) continue;
        size_t b = (size_t)(d->next - first);
        if (domain) domain[b] = di;
        rc = read_window(d, di, c, tokens + b * T, targets + b * T, scratch);
    }
    free(scratch);
    return rc;
}

uint64_t mk_dataset_val_windows(const mk_dataset *d, int i) { return d->dom[i].val.windows; }

int mk_dataset_val_samples(const mk_dataset *d, int i, uint64_t first, int count, int32_t *tokens,
                           int32_t *targets)
{
    const stream *s = &d->dom[i].val;
    const int T = d->T;
    if (first + (uint64_t)count > s->windows)
        return MK_FAIL(MK_ERR_INTERNAL, "domain '%s': validation windows %llu..%llu of %llu",
                       d->dom[i].name, (unsigned long long)first,
                       (unsigned long long)(first + count), (unsigned long long)s->windows);
    int32_t *scratch = malloc(((size_t)T + 1) * sizeof *scratch);
    if (!scratch) return MK_FAIL(MK_ERR_NOMEM, "dataset: out of memory");
    int rc = MK_OK;
    for (int b = 0; b < count && rc == MK_OK; b++) {
        rc = stream_read(s, (first + b) * (uint64_t)T, (size_t)T + 1, scratch);
        memcpy(tokens + (size_t)b * T, scratch, (size_t)T * sizeof *tokens);
        memcpy(targets + (size_t)b * T, scratch + 1, (size_t)T * sizeof *targets);
    }
    free(scratch);
    return rc;
}
