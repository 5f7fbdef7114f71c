/* mk_text_data.c - byte-level samples from a text file (see mk_text_data.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_text_data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"
#include "mk_rng.h"

struct mk_text_data {
    unsigned char *bytes;
    size_t size;
    int T;
};

/* Sample stream ids start here so they never meet the model-init streams (tensor indices). */
#define MK_SAMPLE_STREAM (1ull << 40)

int mk_text_data_open(const char *path, int seq_len, mk_text_data **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return MK_FAIL(MK_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    int rc = MK_OK;
    mk_text_data *d = calloc(1, sizeof *d);
    if (!d) {
        fclose(f);
        return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t cap = 1 << 20;
    d->bytes = malloc(cap);
    while (d->bytes) {
        size_t n = fread(d->bytes + d->size, 1, cap - d->size, f);
        d->size += n;
        if (n == 0) break;
        if (d->size == cap) {
            unsigned char *b = realloc(d->bytes, cap * 2);
            if (!b) {
                free(d->bytes);
                d->bytes = NULL;
                break;
            }
            d->bytes = b;
            cap *= 2;
        }
    }
    if (!d->bytes)
        rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory reading the file", path);
    else if (ferror(f))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: read error: %s", path, strerror(errno));
    else if (d->size < (size_t)seq_len + 2)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: %zu bytes, too short for model.seq_len = %d (needs %d)",
                     path, d->size, seq_len, seq_len + 2);
    fclose(f);
    if (rc != MK_OK) {
        mk_text_data_close(&d);
        return rc;
    }
    d->T = seq_len;
    *out = d;
    return MK_OK;
}

void mk_text_data_close(mk_text_data **d)
{
    if (!d || !*d) return;
    free((*d)->bytes);
    free(*d);
    *d = NULL;
}

size_t mk_text_data_size(const mk_text_data *d) { return d->size; }

int mk_text_data_batch(const mk_text_data *d, uint64_t seed, uint64_t first, int count,
                       int32_t *tokens, int32_t *targets)
{
    const int T = d->T;
    const uint64_t positions = d->size - (size_t)T; /* T+1 bytes fit from offsets 0..size-T-1 */
    for (int b = 0; b < count; b++) {
        mk_rng r = mk_rng_make(seed, MK_SAMPLE_STREAM + first + (uint64_t)b);
        const unsigned char *src = d->bytes + mk_rng_below(&r, positions);
        for (int t = 0; t < T; t++) {
            tokens[(size_t)b * T + t] = src[t];
            targets[(size_t)b * T + t] = src[t + 1];
        }
    }
    return MK_OK;
}
