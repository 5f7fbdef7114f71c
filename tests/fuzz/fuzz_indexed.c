/* fuzz_indexed.c - the Megatron .idx/.bin pair reader (lib/mk_indexed.c).
 *
 * Input: a 4-byte little-endian length L, then L bytes of .idx (fewer if the input is
 * shorter), then the .bin. Property: an open that succeeds gives a reader whose counts
 * agree with each other and which reads every token, sequence by sequence and in one go,
 * with the same values; a failed open is one MK_ERR_INPUT (or NOMEM). */
#include "fuzz_common.h"

#include "mk_error.h"
#include "mk_indexed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    uint32_t l = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    data += 4;
    size -= 4;
    size_t nidx = l < size ? l : size;

    char prefix[300], p[320];
    fuzz_path(prefix, sizeof prefix, "d");
    snprintf(p, sizeof p, "%s.idx", prefix);
    fuzz_write(p, data, nidx);
    snprintf(p, sizeof p, "%s.bin", prefix);
    fuzz_write(p, data + nidx, size - nidx);

    mk_indexed *d = NULL;
    int rc = mk_indexed_open(prefix, &d);
    if (rc != MK_OK) {
        FUZZ_ASSERT(d == NULL && (rc == MK_ERR_INPUT || rc == MK_ERR_NOMEM), "open failed with %d", rc);
        return 0;
    }
    uint64_t nseq = mk_indexed_sequences(d), ntok = mk_indexed_tokens(d), sum = 0;
    size_t esz = mk_indexed_dtype_size(mk_indexed_dtype(d));
    FUZZ_ASSERT(esz > 0, "opened a dtype it cannot read");
    FUZZ_ASSERT(ntok * esz == size - nidx, "%llu tokens of %zu bytes in a .bin of %zu bytes",
                (unsigned long long)ntok, esz, size - nidx);
    FUZZ_ASSERT(mk_indexed_documents(d) <= nseq || nseq == 0, "more documents than sequences");
    int32_t *all = malloc((ntok ? ntok : 1) * sizeof *all);
    FUZZ_ASSERT(all != NULL, "malloc");
    int rc_all = mk_indexed_read(d, 0, (size_t)ntok, all);
    int64_t max = INT64_MIN;
    for (uint64_t i = 0; i < nseq; i++) {
        uint64_t len = mk_indexed_seq_length(d, i);
        FUZZ_ASSERT(len <= ntok - sum, "sequence %llu runs past the tokens", (unsigned long long)i);
        if (rc_all == MK_OK && len > 0) {
            int32_t *one = malloc(len * sizeof *one);
            FUZZ_ASSERT(one != NULL, "malloc");
            FUZZ_ASSERT(mk_indexed_read(d, sum, (size_t)len, one) == MK_OK, "read of sequence %llu", (unsigned long long)i);
            FUZZ_ASSERT(memcmp(one, all + sum, len * sizeof *one) == 0, "sequence %llu reads differently", (unsigned long long)i);
            free(one);
        }
        sum += len;
    }
    FUZZ_ASSERT(sum == ntok, "lengths sum to %llu, tokens %llu", (unsigned long long)sum, (unsigned long long)ntok);
    if (rc_all == MK_OK)
        for (uint64_t i = 0; i < ntok; i++)
            if (all[i] > max) max = all[i];
    if (rc_all == MK_OK && ntok > 0)
        FUZZ_ASSERT(max == mk_indexed_max_token(d), "max token %lld, reader says %lld", (long long)max,
                    (long long)mk_indexed_max_token(d));
    /* Past the end is refused, not read. */
    int32_t t;
    FUZZ_ASSERT(mk_indexed_read(d, ntok, 1, &t) != MK_OK, "read past the end succeeded");
    free(all);
    mk_indexed_close(&d);
    FUZZ_ASSERT(d == NULL, "close left the pointer");
    return 0;
}
