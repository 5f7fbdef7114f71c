/* test_train.c - the training loop learns: on the demo corpus, a small model's loss falls
 * well below its starting value, with every LBL mode a single process supports, and the
 * loop refuses bad data with the right status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_config.h"
#include "mk_error.h"
#include "mk_train.h"
#include "tap.h"

static int run(const char *data, const char *rundir, const char *const *sets, mk_train_result *res)
{
    mk_config c;
    mk_config_defaults(&c);
    const char *base[] = { "train.steps=60", "train.warmup=5", "train.lr=3e-3", "train.micro_batch=4",
                           "train.grad_accum=2", "model.seq_len=32", "log.every=1000", NULL };
    for (int i = 0; base[i]; i++) mk_config_set(&c, base[i], "test");
    for (int i = 0; sets && sets[i]; i++) mk_config_set(&c, sets[i], "test");
    char buf[MK_PATH_MAX + 16];
    snprintf(buf, sizeof buf, "run.dir=%s", rundir);
    mk_config_set(&c, buf, "test");
    mk_train_opts o = { .data_path = data, .out = NULL };
    return mk_train_run(&c, &o, res);
}

int main(void)
{
    const char *srcdir = getenv("srcdir") ? getenv("srcdir") : ".";
    char data[MK_PATH_MAX], tmpl[] = "/tmp/mk_test_train_XXXXXX";
    snprintf(data, sizeof data, "%s/data/demo/english.txt", srcdir);
    char *dir = mkdtemp(tmpl);
    if (!dir) return 99;

    const char *modes[][3] = { { "lbl.mode=micro", NULL }, { "lbl.mode=global", NULL },
                               { "lbl.mode=global-exact", NULL }, { "lbl.mode=none", NULL } };
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        mk_train_result r;
        int rc = run(data, dir, modes[i], &r);
        tap_ok(rc == MK_OK && r.steps == 60 && r.final_loss < 0.75 * r.first_loss,
               "%s: loss %.3f -> %.3f in 60 steps (wanted at least 25%% lower)", modes[i][0],
               r.first_loss, r.final_loss);
    }
    mk_train_result r;
    tap_ok(run("/nonexistent/corpus.txt", dir, NULL, &r) == MK_ERR_INPUT, "missing data file: input error");
    char tiny[MK_PATH_MAX + 16];
    snprintf(tiny, sizeof tiny, "%s/short.txt", dir);
    FILE *f = fopen(tiny, "w");
    fputs("too short", f);
    fclose(f);
    tap_ok(run(tiny, dir, NULL, &r) == MK_ERR_INPUT, "data shorter than one sample: input error");
    const char *small_vocab[] = { "model.vocab=100", NULL };
    tap_ok(run(data, dir, small_vocab, &r) == MK_ERR_USAGE, "vocabulary below 256 bytes: usage error");
    remove(tiny);
    char logp[MK_PATH_MAX + 16];
    snprintf(logp, sizeof logp, "%s/log.tsv", dir);
    remove(logp);
    rmdir(dir);
    return tap_done();
}
