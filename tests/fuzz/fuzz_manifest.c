/* fuzz_manifest.c - the dataset manifest reader (lib/mk_dataset.c, JSON through Jansson).
 *
 * Input: manifest.json of a dataset directory that also holds two small valid shards
 * (code/train_00000 and english/train_00000, made once with mk_indexed_writer), so the
 * fuzzer reaches past the JSON into the shard and mixture checks. Property: an open either
 * fails with a documented code or gives a dataset whose domains have names, weights summing
 * to 1, and whose first samples read with tokens inside the vocabulary. */
#include "fuzz_common.h"

#include <math.h>

#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_indexed.h"

enum { T = 4, VOCAB = 257 };

static char ds_dir[300];

static void make_shard(const char *rel, int salt)
{
    char prefix[400], sub[400];
    snprintf(sub, sizeof sub, "%s/%.*s", ds_dir, (int)(strchr(rel, '/') - rel), rel);
    mkdir(sub, 0700);
    snprintf(prefix, sizeof prefix, "%s/%s", ds_dir, rel);
    mk_indexed_writer *w;
    FUZZ_ASSERT(mk_indexed_writer_open(prefix, MK_DTYPE_UINT16, VOCAB, &w) == MK_OK, "writer");
    int32_t tok[24];
    for (int doc = 0; doc < 3; doc++) {
        for (int i = 0; i < 24; i++) tok[i] = (i * 7 + doc * 13 + salt) % 256;
        tok[23] = 256;
        FUZZ_ASSERT(mk_indexed_writer_add(w, tok, 24) == MK_OK, "writer add");
    }
    FUZZ_ASSERT(mk_indexed_writer_finish(w) == MK_OK, "writer finish");
}

static void setup(void)
{
    if (ds_dir[0]) return;
    fuzz_path(ds_dir, sizeof ds_dir, "ds");
    mkdir(ds_dir, 0700);
    make_shard("code/train_00000", 1);
    make_shard("english/train_00000", 2);
    make_shard("english/val_00000", 3);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16) return 0;
    setup();
    char mpath[400];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", ds_dir);
    fuzz_write(mpath, data, size);

    static const char *const mixtures[] = { "natural", "uniform", "code:1,english:2" };
    mk_dataset_opts o = { .path = ds_dir, .mixture = mixtures[size % 3], .seq_len = T, .seed = 7,
                          .tokenizer = "", .model_vocab = VOCAB };
    mk_dataset *d = NULL;
    int rc = mk_dataset_open(&o, &d);
    if (rc != MK_OK) {
        FUZZ_ASSERT(d == NULL && (rc == MK_ERR_INPUT || rc == MK_ERR_USAGE || rc == MK_ERR_NOMEM),
                    "open failed with %d", rc);
        return 0;
    }
    double total = 0;
    int n = mk_dataset_domains(d);
    FUZZ_ASSERT(n >= 1, "a dataset without domains opened");
    for (int i = 0; i < n; i++) {
        FUZZ_ASSERT(mk_dataset_domain_name(d, i)[0] != '\0', "empty domain name");
        double w = mk_dataset_domain_weight(d, i);
        FUZZ_ASSERT(w >= 0 && isfinite(w), "weight %g", w);
        total += w;
    }
    FUZZ_ASSERT(fabs(total - 1) < 1e-9, "weights sum to %.17g", total);
    int32_t tok[8 * T], tgt[8 * T], dom[8];
    rc = mk_dataset_samples(d, 0, 8, tok, tgt, dom);
    FUZZ_ASSERT(rc == MK_OK || rc == MK_ERR_INPUT, "samples: %d", rc);
    if (rc == MK_OK)
        for (int i = 0; i < 8 * T; i++) {
            FUZZ_ASSERT(tok[i] >= 0 && tok[i] < VOCAB && tgt[i] >= 0 && tgt[i] < VOCAB, "token %d", tok[i]);
            FUZZ_ASSERT(dom[i / T] >= 0 && dom[i / T] < n, "domain %d", dom[i / T]);
        }
    for (int i = 0; i < n; i++)
        if (mk_dataset_val_windows(d, i) > 0)
            FUZZ_ASSERT(mk_dataset_val_samples(d, i, 0, 1, tok, tgt) == MK_OK, "val sample of domain %d", i);
    mk_dataset_close(&d);
    return 0;
}
