/* ref_dump.c - run one training micro-step of the C model and dump everything the PyTorch
 * reference (tests/reference/moe_ref.py) needs to check it.
 *
 *   ref_dump OUT.bin [--set key=value]...
 *
 * Builds the configuration (defaults, --set overrides, validation), a CPU-backend model
 * initialised from train.seed, deterministic pseudo-random tokens for B = train.micro_batch
 * sequences of T = model.seq_len (targets = next token, a few set to -1), then runs
 * zero_grad, forward and backward(1/targets, 1) and writes OUT.bin:
 *
 *   "MKREF1\n"
 *   one line of space-separated key=value pairs, every setting (values with '%', spaces,
 *   '=' or control bytes written as %XX), "\n"
 *   tensors, each a header line "NAME DTYPE NDIM D0 [D1 [D2]]\n" (DTYPE f32, f64 or i32)
 *   followed by the raw little-endian data:
 *     tokens [B,T] i32, targets [B,T] i32,
 *     every parameter under its mk_tensor name (f32, or f64 in an MK_REAL_DOUBLE build),
 *     out.ce_mean [1] f64, out.lbl [L] f64, out.zloss [1] f64, out.targets [1] i32,
 *     out.counts [L,E] i32, out.dropped [1] i32, topk.<l> [B*T,K] i32,
 *     grad.<name> for every parameter.
 *
 * With lbl.mode global (one rank, one micro-step) the scope is the micro-batch; with
 * global-exact a counting forward pass supplies the exact counts first.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_backend.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "mk_model.h"
#include "mk_real.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ref_dump writes host byte order and the format is little-endian"
#endif

static const char *usage_text = "usage: ref_dump OUT.bin [--set key=value]...\n";

/* splitmix64: a small deterministic generator for the tokens. */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct dump_file {
    FILE *f;
    const char *path;
} dump_file;

static int put_bytes(dump_file *d, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, d->f) != n)
        return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    return MK_OK;
}

static int put_header(dump_file *d, const char *name, const char *dtype, int ndim, const int *dims)
{
    if (fprintf(d->f, "%s %s %d", name, dtype, ndim) < 0)
        return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    for (int i = 0; i < ndim; i++)
        if (fprintf(d->f, " %d", dims[i]) < 0)
            return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    if (fputc('\n', d->f) == EOF)
        return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    return MK_OK;
}

static int put_tensor(dump_file *d, const char *name, const char *dtype, size_t elsize,
                      int ndim, const int *dims, const void *data)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)dims[i];
    MK_CHECK(put_header(d, name, dtype, ndim, dims));
    return put_bytes(d, data, n * elsize);
}

static int put_f64(dump_file *d, const char *name, int n, const double *v)
{
    return put_tensor(d, name, "f64", sizeof(double), 1, &n, v);
}

static int put_i32(dump_file *d, const char *name, int ndim, const int *dims, const int32_t *v)
{
    return put_tensor(d, name, "i32", sizeof(int32_t), ndim, dims, v);
}

/* Write one value of the settings line, escaping what would break "key=value key=value". */
static int put_setting_value(dump_file *d, const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        int r;
        if (*p <= ' ' || *p == '%' || *p == '=' || *p >= 0x7f)
            r = fprintf(d->f, "%%%02X", (unsigned)*p);
        else
            r = fputc(*p, d->f);
        if (r < 0)
            return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    }
    return MK_OK;
}

static int put_settings(dump_file *d, const mk_config *cfg)
{
    static char buf[2 * MK_PATH_MAX];
    size_t count = mk_config_setting_count();
    for (size_t i = 0; i < count; i++) {
        const mk_setting_info *s = mk_config_setting(i);
        MK_CHECK(mk_config_get_text(cfg, s->key, buf, sizeof buf));
        if (fprintf(d->f, "%s%s=", i ? " " : "", s->key) < 0)
            return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
        MK_CHECK(put_setting_value(d, buf));
    }
    if (fputc('\n', d->f) == EOF)
        return MK_FAIL(MK_ERR_IO, "%s: write failed", d->path);
    return MK_OK;
}

/* Copy one parameter-sized block (params or grads) tensor by tensor. */
static int put_block(dump_file *d, mk_model *m, mk_backend *be, const mk_real *block,
                     const char *prefix, mk_real *host)
{
    const char *dtype = sizeof(mk_real) == 8 ? "f64" : "f32";
    char name[MK_TENSOR_NAME_MAX + 16];
    size_t nt = mk_model_tensor_count(m);
    for (size_t i = 0; i < nt; i++) {
        const mk_tensor *t = mk_model_tensor(m, i);
        MK_CHECK(be->ops->to_host(be, host, block + t->offset, t->numel * sizeof(mk_real)));
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        MK_CHECK(put_tensor(d, name, dtype, sizeof(mk_real), t->ndim, t->shape, host));
    }
    return MK_OK;
}

/* Pseudo-random tokens for B sequences of T + 1 tokens; targets = the next token, with
 * every 7th target ignored (-1) so the CE mean must skip them. */
static void make_tokens(const mk_config *cfg, int32_t *tokens, int32_t *targets, int32_t *seq)
{
    const int B = cfg->train.micro_batch, T = cfg->model.seq_len, V = cfg->model.vocab;
    uint64_t rng = 0x5EEDull ^ ((uint64_t)cfg->train.seed * 0x100000001B3ull);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t <= T; t++)
            seq[t] = (int32_t)(next_u64(&rng) % (uint64_t)V);
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)b * (size_t)T + (size_t)t;
            tokens[n] = seq[t];
            targets[n] = (n % 7 == 3) ? -1 : seq[t + 1];
        }
    }
}

static int parse_args(int argc, char **argv, mk_config *cfg)
{
    if (argc < 2 || argv[1][0] == '-') {
        fputs(usage_text, stderr);
        return MK_FAIL(MK_ERR_USAGE, "ref_dump: an output file is required");
    }
    mk_config_defaults(cfg);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--set") == 0) {
            if (i + 1 >= argc) {
                fputs(usage_text, stderr);
                return MK_FAIL(MK_ERR_USAGE, "ref_dump: --set needs key=value");
            }
            MK_CHECK(mk_config_set(cfg, argv[++i], "--set"));
        } else if (strncmp(a, "--set=", 6) == 0) {
            MK_CHECK(mk_config_set(cfg, a + 6, "--set"));
        } else {
            fputs(usage_text, stderr);
            return MK_FAIL(MK_ERR_USAGE, "ref_dump: unknown argument '%s'", a);
        }
    }
    MK_CHECK(mk_config_validate(cfg));
    return MK_OK;
}

static int run(int argc, char **argv)
{
    int rc = MK_OK;
    mk_config cfg;
    mk_backend *be = NULL;
    mk_model *m = NULL;
    mk_lbl *lbl = NULL, *count_lbl = NULL;
    int32_t *tokens = NULL, *targets = NULL, *topk = NULL, *seq = NULL, *counts = NULL;
    double *lbl_v = NULL;
    mk_real *host = NULL;
    int64_t *exact = NULL;
    dump_file d = { NULL, NULL };
    mk_forward_stats stats;
    int B, T, L, E, K;
    size_t N, maxnumel = 0;
    double ce_mean, zloss;
    int32_t ntargets, dropped;

    MK_CHECK(parse_args(argc, argv, &cfg));
    d.path = argv[1];
    B = cfg.train.micro_batch;
    T = cfg.model.seq_len;
    L = cfg.model.layers;
    E = cfg.model.experts;
    K = cfg.model.topk;
    N = (size_t)B * (size_t)T;

    MK_CHECK_GOTO(rc, mk_backend_cpu_create(1, &be), out);
    MK_CHECK_GOTO(rc, mk_model_create(&cfg, be, &m), out);
    MK_CHECK_GOTO(rc, mk_model_init(m, cfg.train.seed), out);
    for (size_t i = 0; i < mk_model_tensor_count(m); i++)
        if (mk_model_tensor(m, i)->numel > maxnumel)
            maxnumel = mk_model_tensor(m, i)->numel;

    tokens = malloc(N * sizeof *tokens);
    targets = malloc(N * sizeof *targets);
    seq = malloc(((size_t)T + 1) * sizeof *seq);
    topk = malloc(N * (size_t)K * sizeof *topk);
    counts = malloc((size_t)L * (size_t)E * sizeof *counts);
    exact = malloc((size_t)L * (size_t)E * sizeof *exact);
    lbl_v = malloc((size_t)L * sizeof *lbl_v);
    host = malloc(maxnumel * sizeof *host);
    if (!tokens || !targets || !seq || !topk || !counts || !exact || !lbl_v || !host) {
        rc = MK_FAIL(MK_ERR_NOMEM, "ref_dump: out of memory (%zu tokens)", N);
        goto out;
    }
    make_tokens(&cfg, tokens, targets, seq);

    if (cfg.lbl.mode != MK_LBL_NONE) {
        MK_CHECK_GOTO(rc, mk_lbl_create(cfg.lbl.mode, L, E, K, &lbl), out);
        mk_lbl_reset(lbl);
    }
    if (cfg.lbl.mode == MK_LBL_GLOBAL_EXACT) {
        /* The counting pass of global-exact: one forward with a micro scope; its counts
         * are those of the whole (one-rank, one-micro-step) global batch. */
        MK_CHECK_GOTO(rc, mk_lbl_create(MK_LBL_MICRO, L, E, K, &count_lbl), out);
        MK_CHECK_GOTO(rc, mk_model_forward(m, tokens, targets, B, count_lbl, 0, &stats), out);
        for (size_t i = 0; i < (size_t)L * (size_t)E; i++)
            exact[i] = stats.counts[i];
        MK_CHECK_GOTO(rc, mk_lbl_set_exact(lbl, exact, (long)N), out);
    }

    MK_CHECK_GOTO(rc, mk_model_zero_grad(m), out);
    MK_CHECK_GOTO(rc, mk_model_forward(m, tokens, targets, B, lbl, 1, &stats), out);
    if (stats.targets <= 0) {
        rc = MK_FAIL(MK_ERR_INTERNAL, "ref_dump: forward counted %ld target tokens", stats.targets);
        goto out;
    }
    /* Keep what forward reported: stats points into the model. */
    ce_mean = stats.ce_sum / (double)stats.targets;
    zloss = stats.zloss;
    memcpy(lbl_v, stats.lbl, (size_t)L * sizeof *lbl_v);
    memcpy(counts, stats.counts, (size_t)L * (size_t)E * sizeof *counts);
    ntargets = (int32_t)stats.targets;
    dropped = (int32_t)stats.dropped;
    MK_CHECK_GOTO(rc, mk_model_backward(m, 1.0 / (double)stats.targets, 1.0), out);

    d.f = fopen(d.path, "wb");
    if (!d.f) {
        rc = MK_FAIL(MK_ERR_IO, "%s: cannot create", d.path);
        goto out;
    }
    {
        int bt[2] = { B, T }, le[2] = { L, E }, nk[2] = { (int)N, K }, one = 1;
        char name[32];
        MK_CHECK_GOTO(rc, put_bytes(&d, "MKREF1\n", 7), out);
        MK_CHECK_GOTO(rc, put_settings(&d, &cfg), out);
        MK_CHECK_GOTO(rc, put_i32(&d, "tokens", 2, bt, tokens), out);
        MK_CHECK_GOTO(rc, put_i32(&d, "targets", 2, bt, targets), out);
        MK_CHECK_GOTO(rc, put_block(&d, m, be, mk_model_params(m), "", host), out);
        MK_CHECK_GOTO(rc, put_f64(&d, "out.ce_mean", 1, &ce_mean), out);
        MK_CHECK_GOTO(rc, put_f64(&d, "out.lbl", L, lbl_v), out);
        MK_CHECK_GOTO(rc, put_f64(&d, "out.zloss", 1, &zloss), out);
        MK_CHECK_GOTO(rc, put_i32(&d, "out.targets", 1, &one, &ntargets), out);
        MK_CHECK_GOTO(rc, put_i32(&d, "out.counts", 2, le, counts), out);
        MK_CHECK_GOTO(rc, put_i32(&d, "out.dropped", 1, &one, &dropped), out);
        for (int l = 0; l < L; l++) {
            MK_CHECK_GOTO(rc, mk_model_topk_host(m, l, topk), out);
            snprintf(name, sizeof name, "topk.%d", l);
            MK_CHECK_GOTO(rc, put_i32(&d, name, 2, nk, topk), out);
        }
        MK_CHECK_GOTO(rc, put_block(&d, m, be, mk_model_grads(m), "grad.", host), out);
    }
    rc = fclose(d.f) == 0 ? MK_OK : MK_FAIL(MK_ERR_IO, "%s: write failed", d.path);
    d.f = NULL;
    if (rc != MK_OK)
        remove(d.path);

out:
    if (d.f) {
        fclose(d.f);
        remove(d.path);     /* no half-written dump */
    }
    free(host);
    free(lbl_v);
    free(exact);
    free(counts);
    free(topk);
    free(seq);
    free(targets);
    free(tokens);
    if (count_lbl) mk_lbl_destroy(&count_lbl);
    if (lbl) mk_lbl_destroy(&lbl);
    if (m) mk_model_destroy(&m);
    mk_backend_destroy(&be);
    return rc;
}

int main(int argc, char **argv)
{
    return run(argc, argv);
}
