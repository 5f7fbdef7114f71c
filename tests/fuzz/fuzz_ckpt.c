/* fuzz_ckpt.c - the HDF5 checkpoint reader (lib/mk_ckpt.c: mk_ckpt_verify, mk_ckpt_load).
 *
 * Input: the bytes of a checkpoint file. It is written to a scratch file, verified, and
 * loaded into a one-process trainer of the shape of tests/fuzz/seed.ini (the shape of the
 * seed checkpoints). Properties: verify and load return a documented status and never
 * crash in moekit code; a file that verifies and loads gives finite parameters. Crashes
 * inside libhdf5 are the library's (see docs/reliability.md, T8); LLVMFuzzerTestOneInput
 * is where moekit's frames end. */
#include "fuzz_common.h"

#include <math.h>

#include "mk_ckpt.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_model.h"
#include "mk_trainer.h"

static mk_trainer *tr;

static void setup(void)
{
    if (tr) return;
    static const char *const sets[] = { "model.vocab=257", "model.d_model=8", "model.layers=1",
                                        "model.heads=2", "model.experts=4", "model.topk=2",
                                        "model.ffn=8", "model.seq_len=8", "train.micro_batch=2",
                                        "train.grad_accum=1", "train.threads=1" };
    static mk_config cfg; /* the trainer keeps a pointer to it */
    mk_config_defaults(&cfg);
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++)
        FUZZ_ASSERT(mk_config_set(&cfg, sets[i], "fuzz") == MK_OK, "%s", sets[i]);
    FUZZ_ASSERT(mk_trainer_create(&cfg, NULL, &tr) == MK_OK, "trainer");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) return 0;
    setup();
    char path[300];
    fuzz_path(path, sizeof path, "step_00000002.h5");
    fuzz_write(path, data, size);

    char why[1024] = "";
    int v = mk_ckpt_verify(path, why, sizeof why);
    FUZZ_ASSERT(v == MK_OK || v == MK_ERR_INPUT || v == MK_ERR_NOMEM, "verify returned %d", v);
    FUZZ_ASSERT(v == MK_OK || why[0] != '\0', "verify failed without saying why");

    mk_ckpt_meta meta;
    int l = mk_ckpt_load(tr, path, &meta);
    FUZZ_ASSERT(l == MK_OK || l == MK_ERR_INPUT || l == MK_ERR_USAGE || l == MK_ERR_NOMEM, "load returned %d", l);
    if (v == MK_OK && l == MK_OK) {
        mk_model *m = mk_trainer_model(tr);
        const mk_real *p = mk_model_params(m);
        size_t n = mk_model_param_count(m);
        for (size_t i = 0; i < n; i++) FUZZ_ASSERT(isfinite(p[i]), "parameter %zu is not finite after a verified load", i);
    }
    return 0;
}
