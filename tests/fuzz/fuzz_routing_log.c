/* fuzz_routing_log.c - the routing log readers: the resume path of lib/mk_routing_log.c
 * (mk_routing_log_open on an existing log, which checks it and copies its rows into a new
 * file) and moe-report's reader analysis/mk_routing_read.c (mk_rl_read).
 *
 * Input: a flags byte (which resume step), then the bytes of routing.h5. The log is opened
 * with the shape of the seed logs (1 layer, 4 experts, top-2, domains code and english).
 * Properties: both return documented statuses; when mk_rl_read accepts a log of that shape
 * whose steps increase, after a successful resume the new log holds exactly the rows with
 * step <= the resume step, and mk_rl_read reads it. */
#include "fuzz_common.h"

#include "mk_error.h"
#include "mk_routing_log.h"
#include "mk_routing_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20) return 0;
    int64_t resume = (data[0] & 1) ? MK_ROUTING_LOG_KEEP_ALL : (int64_t)(data[0] >> 1);
    data++;
    size--;
    char path[300];
    fuzz_path(path, sizeof path, "routing.h5");
    fuzz_write(path, data, size);

    mk_rl rl;
    int r = mk_rl_read(path, &rl);
    FUZZ_ASSERT(r == MK_OK || r == MK_ERR_INPUT || r == MK_ERR_NOMEM, "mk_rl_read returned %d", r);
    int64_t expect = -1;
    if (r == MK_OK) {
        int increasing = 1;
        for (int64_t i = 1; i < rl.train.rows; i++) increasing &= rl.train.step[i] > rl.train.step[i - 1];
        expect = 0;
        for (int64_t i = 0; i < rl.train.rows; i++) expect += rl.train.step[i] <= resume;
        if (rl.layers != 1 || rl.experts != 4 || rl.topk != 2 || rl.ndomains != 2 ||
            strcmp(rl.domains[0], "code") != 0 || strcmp(rl.domains[1], "english") != 0)
            expect = -1; /* another shape: the resume must refuse it */
        if (!increasing) expect = -1; /* not a log moekit writes: no row count to expect */
        mk_rl_free(&rl);
    }

    static const char *const names[] = { "code", "english" };
    mk_routing_log *log = NULL;
    int o = mk_routing_log_open(path, 1, 4, 2, 2, names, resume, &log);
    FUZZ_ASSERT(o == MK_OK || o == MK_ERR_INPUT || o == MK_ERR_NOMEM || o == MK_ERR_IO, "open returned %d", o);
    if (o != MK_OK) {
        FUZZ_ASSERT(log == NULL, "failed open left a log");
        return 0;
    }
    int64_t kept = mk_routing_log_steps(log);
    if (expect >= 0) FUZZ_ASSERT(kept == expect, "resume kept %lld rows, expected %lld", (long long)kept, (long long)expect);
    FUZZ_ASSERT(mk_routing_log_close(&log) == MK_OK && log == NULL, "close");
    if (kept > 0) {
        r = mk_rl_read(path, &rl);
        FUZZ_ASSERT(r == MK_OK && rl.train.rows == kept, "the resumed log does not read back (%d)", r);
        mk_rl_free(&rl);
    }
    return 0;
}
