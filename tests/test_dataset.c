/* test_dataset.c - the trainer's data loader over a dataset made by mk_shard_run: mixture
 * shares, determinism and replay, sample contents against the stream, validation windows,
 * and every bad-input case of data.path / data.mixture / data.tokenizer / repeat cap.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_shard.h"
#include "tap.h"

static char dir[256];

/* Three domains of clearly different sizes; documents of letters unique to each domain. */
static void make_corpus(void)
{
    const char *names[3] = { "small", "medium", "large" };
    const int docs[3] = { 40, 120, 360 };
    for (int d = 0; d < 3; d++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.txt", dir, names[d]);
        FILE *f = fopen(path, "w");
        for (int i = 0; i < docs[d]; i++) {
            for (int k = 0; k < 50 + (i * 7) % 40; k++) fputc('a' + d * 8 + (i + k) % 8, f);
            fputs("\n\n", f);
        }
        fclose(f);
    }
}

static int shard(const char *out, const char *tokenizer)
{
    char p[3][512];
    const char *paths[3] = { p[0], p[1], p[2] };
    const char *names[3] = { "small", "medium", "large" };
    mk_shard_domain doms[3];
    for (int d = 0; d < 3; d++) {
        snprintf(p[d], sizeof p[d], "%s/%s.txt", dir, names[d]);
        doms[d] = (mk_shard_domain){ names[d], &paths[d], 1 };
    }
    mk_shard_opts o = { .domains = doms, .ndomains = 3, .out_dir = out, .tokenizer = tokenizer,
                        .val_fraction = 0.1, .shard_bytes = 4096, .text_field = "text" };
    mk_shard_result r;
    return mk_shard_run(&o, MPI_COMM_WORLD, &r);
}

static mk_dataset *open_ds(const char *path, const char *mixture, int cap, const char *tok, int vocab, int *rc)
{
    mk_dataset_opts o = { .path = path, .mixture = mixture, .repeat_cap = cap, .seq_len = 16,
                          .seed = 42, .tokenizer = tok, .model_vocab = vocab };
    mk_dataset *d = NULL;
    *rc = mk_dataset_open(&o, &d);
    return d;
}

static void check_shares(const char *ds_path, const char *mixture, const double *want)
{
    int rc;
    mk_dataset *d = open_ds(ds_path, mixture, 0, "", 257, &rc);
    if (!tap_ok(rc == MK_OK, "open with mixture %s", mixture)) return;
    enum { N = 10000, T = 16 };
    int32_t *tok = malloc(sizeof(int32_t) * N * T), *tgt = malloc(sizeof(int32_t) * N * T), dom[N];
    rc = mk_dataset_samples(d, 0, N, tok, tgt, dom);
    double share[3] = { 0 };
    for (int i = 0; i < N; i++) share[dom[i]] += 1.0 / N;
    double worst = 0;
    for (int k = 0; k < 3; k++) {
        double w = want ? want[k] : mk_dataset_domain_weight(d, k);
        worst = fmax(worst, fabs(share[k] - w));
    }
    tap_ok(rc == MK_OK && worst < 0.01, "%s: realised shares over 10000 samples %.4f/%.4f/%.4f, worst "
           "deviation %.5f (< 1 point)", mixture, share[0], share[1], share[2], worst);
    /* Every token of a sample comes from its domain's letters (a-h, i-p, q-x) or is EOD. */
    int wrong = 0;
    for (int i = 0; i < N; i++)
        for (int t = 0; t < T; t++) {
            int v = tok[i * T + t];
            if (v != 256 && (v < 'a' + 8 * dom[i] || v >= 'a' + 8 * dom[i] + 8)) wrong++;
        }
    tap_ok(wrong == 0, "%s: every token belongs to its sample's domain (%d wrong)", mixture, wrong);
    free(tok);
    free(tgt);
    mk_dataset_close(&d);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    snprintf(dir, sizeof dir, "/tmp/mk_test_dataset_XXXXXX");
    if (!mkdtemp(dir)) return 99;
    make_corpus();
    char ds[512], ds2[600];
    snprintf(ds, sizeof ds, "%s/ds", dir);
    tap_ok(shard(ds, "byte") == MK_OK, "mk_shard_run makes a dataset of 3 domains");

    /* natural: in proportion to train tokens; uniform; temperature; explicit */
    check_shares(ds, "natural", NULL);
    const double uni[3] = { 1.0 / 3, 1.0 / 3, 1.0 / 3 };
    check_shares(ds, "uniform", uni);
    check_shares(ds, "temperature:3", NULL);
    const double expl[3] = { 0.5, 0.2, 0.3 };
    check_shares(ds, "small:5,medium:2,large:3", expl);

    int rc;
    mk_dataset *d = open_ds(ds, "uniform", 0, "", 257, &rc);
    double tsum = 0;
    for (int k = 0; k < 3; k++) tsum += mk_dataset_domain_weight(d, k);
    tap_close(tsum, 1.0, 0, 1e-12, "weights are normalised");
    /* determinism: the same samples after a reopen, and after going backwards */
    enum { M = 64, T = 16 };
    static int32_t a[M * T], b[M * T], ta[M * T], tb[M * T], da[M], db[M];
    mk_dataset_samples(d, 100, M, a, ta, da);
    mk_dataset_samples(d, 0, 5, b, tb, db); /* backwards: replays */
    mk_dataset_samples(d, 100, M, b, tb, db);
    tap_ok(memcmp(a, b, sizeof a) == 0 && memcmp(da, db, sizeof da) == 0, "samples 100..163 are the same after a backwards request");
    mk_dataset *d2 = open_ds(ds, "uniform", 0, "", 257, &rc);
    mk_dataset_samples(d2, 100, M, b, tb, db);
    tap_ok(memcmp(a, b, sizeof a) == 0, "a reopened loader gives the same samples");
    int shifted = 1;
    for (int i = 0; i < M; i++)
        for (int t = 0; t + 1 < T; t++) shifted &= ta[i * T + t] == a[i * T + t + 1];
    tap_ok(shifted, "targets are the tokens shifted by one");
    mk_dataset_close(&d2);
    /* another seed changes the order */
    mk_dataset_opts o2 = { .path = ds, .mixture = "uniform", .seq_len = 16, .seed = 43, .tokenizer = "", .model_vocab = 257 };
    mk_dataset_open(&o2, &d2);
    mk_dataset_samples(d2, 100, M, b, tb, db);
    tap_ok(memcmp(a, b, sizeof a) != 0, "another seed gives other samples");
    mk_dataset_close(&d2);
    /* validation windows are sequential and finite */
    uint64_t vw = mk_dataset_val_windows(d, 2);
    tap_ok(vw > 0, "domain 'large' has %llu validation windows", (unsigned long long)vw);
    tap_ok(mk_dataset_val_samples(d, 2, 0, 2, a, ta) == MK_OK && ta[0] == a[1], "validation samples read");
    tap_ok(mk_dataset_val_samples(d, 2, vw, 1, a, ta) == MK_ERR_INTERNAL, "reading past the validation windows is refused");
    mk_dataset_close(&d);

    /* repeat cap: 'small' holds few windows; asking 90%% of samples from it exhausts it */
    d = open_ds(ds, "small:9,large:1", 2, "", 257, &rc);
    int32_t *big = malloc(sizeof(int32_t) * 4000 * T), *bigt = malloc(sizeof(int32_t) * 4000 * T);
    tap_ok(mk_dataset_samples(d, 0, 4000, big, bigt, NULL) == MK_ERR_INPUT, "a domain past data.repeat_cap epochs stops with an input error");
    free(big);
    free(bigt);
    mk_dataset_close(&d);

    /* bad inputs */
    tap_ok(!open_ds(ds, "small:-1,large:1", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "negative mixture weight");
    tap_ok(!open_ds(ds, "tiny:1", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "mixture names an unknown domain");
    tap_ok(!open_ds(ds, "small:0", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "all-zero mixture");
    tap_ok(!open_ds(ds, "temperature:0", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "temperature 0");
    tap_ok(!open_ds(ds, "weird", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "unknown mixture form");
    tap_ok(!open_ds(ds, "natural", 0, "bpe:0123", 257, &rc) && rc == MK_ERR_USAGE, "dataset made by another tokenizer than the run asks for");
    tap_ok((d = open_ds(ds, "natural", 0, "byte", 257, &rc)) && rc == MK_OK, "the right tokenizer is accepted");
    mk_dataset_close(&d);
    tap_ok(!open_ds(ds, "natural", 0, "", 200, &rc) && rc == MK_ERR_USAGE, "model.vocab smaller than the dataset's vocabulary");
    snprintf(ds2, sizeof ds2, "%s,%s", ds, ds);
    tap_ok(!open_ds(ds2, "natural", 0, "", 257, &rc) && rc == MK_ERR_USAGE, "a domain listed twice");
    snprintf(ds2, sizeof ds2, "%s/nope", dir);
    tap_ok(!open_ds(ds2, "natural", 0, "", 257, &rc) && rc == MK_ERR_INPUT, "missing dataset directory");
    /* A Megatron source listed by NAME=PREFIX */
    snprintf(ds2, sizeof ds2, "extra=%s/large/train_00000", ds);
    tap_ok((d = open_ds(ds2, "natural", 0, "", 257, &rc)) && mk_dataset_domains(d) == 1 &&
           strcmp(mk_dataset_domain_name(d, 0), "extra") == 0, "a Megatron dataset without manifest as a domain");
    mk_dataset_close(&d);
    /* corrupt manifest */
    snprintf(ds2, sizeof ds2, "%s/bad", dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp -r %s %s && printf '{\"format\": 1' > %s/manifest.json", ds, ds2, ds2);
    if (system(cmd) != 0) return 99;
    tap_ok(!open_ds(ds2, "natural", 0, "", 257, &rc) && rc == MK_ERR_INPUT, "truncated manifest.json");
    /* shard errors: output exists, duplicate domains */
    tap_ok(shard(ds, "byte") == MK_ERR_USAGE, "moe-shard refuses an existing output directory");

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 99;
    MPI_Finalize();
    return tap_done();
}
