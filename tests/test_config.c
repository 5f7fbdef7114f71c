/* test_config.c - the settings table, INI schedules, --set, validation and docs/settings.md.
 *
 * Usage: test_config [path/to/docs/settings.md]; without an argument the docs are read from
 * $srcdir/docs/settings.md (make check sets srcdir). Error messages go to stderr, as in use;
 * the checks look at the returned codes and at the config only.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_config.h"
#include "mk_error.h"
#include "tap.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every field of mk_config, written out by hand so the table can be checked against it. */
#define F(f) { #f, offsetof(mk_config, f), sizeof(((mk_config *)0)->f) }
static const struct field {
    const char *key;
    size_t off, size;
} fields[] = {
    F(model.vocab), F(model.d_model), F(model.layers), F(model.heads), F(model.experts),
    F(model.topk), F(model.ffn), F(model.shared_ffn), F(model.seq_len),
    F(model.tie_embeddings),
    F(router.norm_topk), F(router.zloss_coeff), F(router.capacity_factor),
    F(lbl.mode), F(lbl.coeff), F(lbl.micro_coeff),
    F(train.micro_batch), F(train.grad_accum), F(train.steps), F(train.warmup), F(train.seed),
    F(train.lr), F(train.min_lr_ratio), F(train.decay_frac), F(train.weight_decay),
    F(train.grad_clip), F(train.beta1), F(train.beta2), F(train.eps), F(train.lr_schedule),
    F(train.threads), F(train.backend), F(train.precision),
    F(parallel.ep),
    F(parallel.timeout),
    F(data.path), F(data.mixture), F(data.repeat_cap), F(data.tokenizer),
    F(run.dir),
    F(ckpt.every), F(ckpt.keep),
    F(log.every),
    F(eval.every),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

/* For every key a valid value that differs from the default; the doubles are the ones
 * that a careless printer would not give back exactly. Together they pass validation. */
static const struct { const char *key, *text; } other[] = {
    { "model.vocab", "50304" }, { "model.d_model", "96" }, { "model.layers", "3" },
    { "model.heads", "6" }, { "model.experts", "16" }, { "model.topk", "4" },
    { "model.ffn", "48" }, { "model.shared_ffn", "32" }, { "model.seq_len", "128" },
    { "model.tie_embeddings", "false" },
    { "router.norm_topk", "true" }, { "router.zloss_coeff", "0.001" },
    { "router.capacity_factor", "1.25" },
    { "lbl.mode", "global" }, { "lbl.coeff", "0.30000000000000004" },
    { "lbl.micro_coeff", "1e-300" },
    { "train.micro_batch", "4" }, { "train.grad_accum", "3" }, { "train.steps", "2000" },
    { "train.warmup", "0" }, { "train.seed", "4294967295" },
    { "train.lr", "4.9406564584124654e-324" }, { "train.min_lr_ratio", "0.33333333333333331" },
    { "train.decay_frac", "1" }, { "train.weight_decay", "0" }, { "train.grad_clip", "100" },
    { "train.beta1", "0" }, { "train.beta2", "0.99999999999999989" }, { "train.eps", "1e-12" },
    { "train.lr_schedule", "wsd" }, { "train.threads", "16" },
    { "train.backend", "cuda" }, { "train.precision", "fp32" },
    { "parallel.ep", "4" }, { "parallel.timeout", "2.5" },
    { "data.path", "/scratch/my corpus/v2;final=1:x" }, { "data.mixture", "temperature:0.7" },
    { "data.repeat_cap", "0" }, { "data.tokenizer", "bpe:0123abcd" },
    { "run.dir", "runs/a b" },
    { "ckpt.every", "500" }, { "ckpt.keep", "1" },
    { "log.every", "0" },
    { "eval.every", "250" },
};
#define N_OTHER (sizeof other / sizeof other[0])

static const char *other_text(const char *key)
{
    for (size_t i = 0; i < N_OTHER; i++)
        if (strcmp(other[i].key, key) == 0) return other[i].text;
    return NULL;
}

/* text with newlines and tabs escaped, so it can go into a TAP line. */
static const char *esc(const char *text)
{
    static char buf[80];
    size_t w = 0;
    for (; *text && w + 3 < sizeof buf; text++) {
        if (*text == '\n' || *text == '\t') {
            buf[w++] = '\\';
            buf[w++] = *text == '\n' ? 'n' : 't';
        } else {
            buf[w++] = *text;
        }
    }
    buf[w] = '\0';
    return buf;
}

static const struct field *find_field(const char *key)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (strcmp(fields[i].key, key) == 0) return &fields[i];
    return NULL;
}

static int same_field(const mk_config *a, const mk_config *b, const struct field *f)
{
    return memcmp((const char *)a + f->off, (const char *)b + f->off, f->size) == 0;
}

static int same_config(const mk_config *a, const mk_config *b)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!same_field(a, b, &fields[i])) return 0;
    return 1;
}

static mk_config other_config(void)
{
    mk_config c;
    mk_config_defaults(&c);
    for (size_t i = 0; i < N_OTHER; i++) mk_config_set_kv(&c, other[i].key, other[i].text, "test");
    return c;
}

/* ------------------------------------------------------------------ temp files */

static char tmpdir[64];
static int n_files;

/* Write text to a new file in tmpdir; the path goes to buf. */
static const char *write_file(char *buf, size_t n, const char *text)
{
    snprintf(buf, n, "%s/f%03d.ini", tmpdir, n_files++);
    FILE *f = fopen(buf, "w");
    if (!f) {
        perror(buf);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return buf;
}

static int load_text(mk_config *cfg, const char *text)
{
    char path[128];
    return mk_config_load_ini(cfg, write_file(path, sizeof path, text));
}

static void remove_tmpdir(void)
{
    char path[128];
    for (int i = 0; i < n_files; i++) {
        snprintf(path, sizeof path, "%s/f%03d.ini", tmpdir, i);
        remove(path);
    }
    rmdir(tmpdir);
}

/* ------------------------------------------------------------------ the table */

static void test_table(void)
{
    size_t n = mk_config_setting_count();
    tap_ok(n == N_FIELDS, "the table has one setting per field of mk_config (%zu, %zu fields)", n,
           N_FIELDS);
    tap_ok(mk_config_setting(n) == NULL, "mk_config_setting past the end is NULL");

    int ok_keys = 1, unique = 1, docs = 1;
    for (size_t i = 0; i < n; i++) {
        const mk_setting_info *s = mk_config_setting(i);
        const char *dot = strchr(s->key, '.');
        if (!find_field(s->key) || !dot || strchr(dot + 1, '.')) {
            ok_keys = 0;
            tap_diag("key '%s' is not a field path of mk_config", s->key);
        }
        if (!s->doc || !*s->doc || strchr(s->doc, '\n')) docs = 0;
        for (size_t j = 0; j < i; j++)
            if (strcmp(mk_config_setting(j)->key, s->key) == 0) unique = 0;
    }
    tap_ok(ok_keys, "every key is section.name and names a field of mk_config");
    tap_ok(unique, "no key appears twice");
    tap_ok(docs, "every setting has a one-line doc");

    /* Setting every key on a config of 0x00 bytes and on one of 0xff bytes must leave no
     * byte of any field different: each field is written whole by some key. */
    mk_config a, b;
    memset(&a, 0x00, sizeof a);
    memset(&b, 0xff, sizeof b);
    for (size_t i = 0; i < n; i++) {
        mk_config_set_kv(&a, mk_config_setting(i)->key, mk_config_setting(i)->default_text, "t");
        mk_config_set_kv(&b, mk_config_setting(i)->key, mk_config_setting(i)->default_text, "t");
    }
    int covered = 1;
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!same_field(&a, &b, &fields[i])) {
            covered = 0;
            tap_diag("field %s is not (fully) written by any key", fields[i].key);
        }
    tap_ok(covered, "every byte of every field is written by its key");

    /* And each key writes its own field and no other. */
    mk_config def;
    mk_config_defaults(&def);
    int own = 1;
    for (size_t i = 0; i < n; i++) {
        const char *key = mk_config_setting(i)->key, *text = other_text(key);
        mk_config c = def;
        if (!text || mk_config_set_kv(&c, key, text, "test") != MK_OK) {
            own = 0;
            tap_diag("no usable other value for %s", key);
            continue;
        }
        for (size_t j = 0; j < N_FIELDS; j++)
            if (same_field(&c, &def, &fields[j]) != (strcmp(fields[j].key, key) != 0)) {
                own = 0;
                tap_diag("setting %s = %s changed field %s wrongly", key, text, fields[j].key);
            }
    }
    tap_ok(own, "setting a key changes its own field and nothing else");
}

/* ------------------------------------------------------------------ defaults */

static void test_defaults(void)
{
    mk_config c;
    mk_config_defaults(&c);
    tap_ok(c.model.vocab == 257 && c.model.d_model == 64 && c.model.layers == 2 &&
               c.model.heads == 4 && c.model.experts == 8 && c.model.topk == 2 &&
               c.model.ffn == 64 && c.model.shared_ffn == 0 && c.model.seq_len == 64 &&
               c.model.tie_embeddings == 1,
           "model defaults: the tiny CPU model");
    tap_ok(c.router.norm_topk == 0 && c.router.zloss_coeff == 0 && c.router.capacity_factor == 0,
           "router defaults: no renormalisation, no z-loss, dropless");
    tap_ok(c.lbl.mode == MK_LBL_MICRO && c.lbl.coeff == 0.01 && c.lbl.micro_coeff == 0,
           "lbl defaults: micro, 0.01");
    tap_ok(c.train.micro_batch == 8 && c.train.grad_accum == 1 && c.train.steps == 100 &&
               c.train.warmup == 10 && c.train.seed == 1234 && c.train.lr == 1e-3 &&
               c.train.min_lr_ratio == 0.1 && c.train.decay_frac == 0.2 &&
               c.train.weight_decay == 0.1 && c.train.grad_clip == 1.0 &&
               c.train.beta1 == 0.9 && c.train.beta2 == 0.95 && c.train.eps == 1e-8 &&
               c.train.lr_schedule == MK_LR_COSINE && c.train.threads == 0,
           "train defaults");
    tap_ok(c.parallel.ep == 1 && c.parallel.timeout == 300 && strcmp(c.data.path, "") == 0 &&
               strcmp(c.data.mixture, "natural") == 0 && strcmp(c.run.dir, "run") == 0 &&
               c.ckpt.every == 0 && c.ckpt.keep == 3 && c.log.every == 10 && c.eval.every == 0,
           "parallel, data, run, ckpt, log and eval defaults");

    int same = 1;
    char buf[MK_PATH_MAX + 1];
    for (size_t i = 0; i < mk_config_setting_count(); i++) {
        const mk_setting_info *s = mk_config_setting(i);
        if (mk_config_get_text(&c, s->key, buf, sizeof buf) != MK_OK ||
            strcmp(buf, s->default_text) != 0) {
            same = 0;
            tap_diag("%s: default text '%s', value prints as '%s'", s->key, s->default_text, buf);
        }
    }
    tap_ok(same, "every default prints exactly as its documented default text");
    tap_ok(mk_config_validate(&c) == MK_OK, "the defaults pass validation");
    tap_ok(strcmp(mk_lbl_mode_name(MK_LBL_GLOBAL_EXACT), "global-exact") == 0 &&
               strcmp(mk_lbl_mode_name(MK_LBL_NONE), "none") == 0,
           "mk_lbl_mode_name names the modes");
}

/* ------------------------------------------------------------------ values */

static void test_values(void)
{
    static const struct { const char *key, *text; int want; } cases[] = {
        /* integers parse whole, in range */
        { "model.heads", "abc", MK_ERR_USAGE }, { "model.heads", "12abc", MK_ERR_USAGE },
        { "model.heads", "", MK_ERR_USAGE }, { "model.heads", "1e3", MK_ERR_USAGE },
        { "model.heads", "1.0", MK_ERR_USAGE }, { "model.heads", "0x10", MK_ERR_USAGE },
        { "model.heads", "99999999999", MK_ERR_USAGE },
        { "model.heads", "-99999999999", MK_ERR_USAGE },
        { "model.heads", "999999999999999999999999", MK_ERR_USAGE },
        { "model.heads", "2147483648", MK_ERR_USAGE }, { "model.heads", "0", MK_ERR_USAGE },
        { "model.heads", "16", MK_OK }, { "model.heads", "2147483647", MK_OK },
        { "model.topk", "0", MK_ERR_USAGE }, { "model.vocab", "1", MK_ERR_USAGE },
        { "model.seq_len", "1", MK_ERR_USAGE }, { "model.shared_ffn", "-1", MK_ERR_USAGE },
        { "model.shared_ffn", "0", MK_OK }, { "train.threads", "-1", MK_ERR_USAGE },
        { "train.backend", "gpu", MK_ERR_USAGE }, { "train.precision", "fp16", MK_ERR_USAGE },
        { "train.warmup", "-1", MK_ERR_USAGE }, { "train.warmup", "0", MK_OK },
        { "ckpt.every", "-1", MK_ERR_USAGE }, { "ckpt.keep", "0", MK_ERR_USAGE },
        { "log.every", "-1", MK_ERR_USAGE }, { "eval.every", "-1", MK_ERR_USAGE },
        { "parallel.ep", "0", MK_ERR_USAGE }, { "train.micro_batch", "0", MK_ERR_USAGE },
        { "parallel.timeout", "-1", MK_ERR_USAGE }, { "parallel.timeout", "0", MK_OK },
        /* unsigned */
        { "train.seed", "-1", MK_ERR_USAGE }, { "train.seed", "abc", MK_ERR_USAGE },
        { "train.seed", "", MK_ERR_USAGE }, { "train.seed", "1.5", MK_ERR_USAGE },
        { "train.seed", "999999999999999999999999", MK_ERR_USAGE },
        { "train.seed", "0", MK_OK },
        /* doubles parse whole, finite, in range */
        { "train.lr", "abc", MK_ERR_USAGE }, { "train.lr", "", MK_ERR_USAGE },
        { "train.lr", "1.5x", MK_ERR_USAGE }, { "train.lr", "nan", MK_ERR_USAGE },
        { "train.lr", "inf", MK_ERR_USAGE }, { "train.lr", "1e999", MK_ERR_USAGE },
        { "train.lr", "1e-999", MK_ERR_USAGE }, { "train.lr", "0", MK_ERR_USAGE },
        { "train.lr", "-1e-3", MK_ERR_USAGE }, { "train.lr", "3e-4", MK_OK },
        { "train.lr", "5e-324", MK_OK }, { "train.eps", "0", MK_ERR_USAGE },
        { "train.beta1", "1", MK_ERR_USAGE }, { "train.beta1", "-0.1", MK_ERR_USAGE },
        { "train.beta1", "0", MK_OK }, { "train.beta2", "1", MK_ERR_USAGE },
        { "train.beta2", "0.999", MK_OK }, { "train.min_lr_ratio", "1.5", MK_ERR_USAGE },
        { "train.min_lr_ratio", "1", MK_OK }, { "train.min_lr_ratio", "0", MK_OK },
        { "train.decay_frac", "-0.01", MK_ERR_USAGE }, { "train.decay_frac", "1.01", MK_ERR_USAGE },
        { "train.weight_decay", "-0.1", MK_ERR_USAGE }, { "train.grad_clip", "-1", MK_ERR_USAGE },
        { "train.grad_clip", "0", MK_OK }, { "router.zloss_coeff", "-1", MK_ERR_USAGE },
        { "router.capacity_factor", "-0.5", MK_ERR_USAGE },
        { "router.capacity_factor", "0", MK_OK }, { "lbl.coeff", "-0.01", MK_ERR_USAGE },
        { "lbl.micro_coeff", "-1", MK_ERR_USAGE },
        /* booleans */
        { "model.tie_embeddings", "maybe", MK_ERR_USAGE },
        { "model.tie_embeddings", "", MK_ERR_USAGE },
        { "model.tie_embeddings", "2", MK_ERR_USAGE },
        { "model.tie_embeddings", "truex", MK_ERR_USAGE },
        /* enums */
        { "lbl.mode", "globl", MK_ERR_USAGE }, { "lbl.mode", "", MK_ERR_USAGE },
        { "lbl.mode", "global_exact", MK_ERR_USAGE }, { "lbl.mode", "global-exact", MK_OK },
        { "train.lr_schedule", "linear", MK_ERR_USAGE }, { "train.lr_schedule", "wsd", MK_OK },
        /* strings that cannot survive an INI file */
        { "data.path", "a\nb", MK_ERR_USAGE }, { "data.path", " a", MK_ERR_USAGE },
        { "data.path", "a\t", MK_ERR_USAGE }, { "data.path", "a ;b", MK_ERR_USAGE },
        { "data.path", "a;b c=d:e #f", MK_OK }, { "data.path", "", MK_OK },
        /* keys */
        { "model.d_modl", "64", MK_ERR_USAGE }, { "d_model", "64", MK_ERR_USAGE },
        { "", "64", MK_ERR_USAGE }, { "model", "64", MK_ERR_USAGE },
        { "Model.D_Model", "64", MK_ERR_USAGE },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mk_config c, before;
        mk_config_defaults(&c);
        before = c;
        int rc = mk_config_set_kv(&c, cases[i].key, cases[i].text, "test");
        tap_ok(rc == cases[i].want, "%s = '%s' gives status %s", cases[i].key,
               esc(cases[i].text), mk_status_name(cases[i].want));
        if (rc != MK_OK && !same_config(&c, &before))
            tap_ok(0, "a rejected %s = '%s' leaves the config unchanged", cases[i].key,
                   esc(cases[i].text));
    }

    mk_config c;
    mk_config_defaults(&c);
    static const char *const truths[] = { "true", "yes", "on", "1", "TRUE", "Yes" };
    static const char *const lies[] = { "false", "no", "off", "0", "FALSE", "Off" };
    int bools = 1;
    for (size_t i = 0; i < 6; i++) {
        bools &= mk_config_set_kv(&c, "router.norm_topk", truths[i], "t") == MK_OK &&
                 c.router.norm_topk == 1;
        bools &= mk_config_set_kv(&c, "router.norm_topk", lies[i], "t") == MK_OK &&
                 c.router.norm_topk == 0;
    }
    tap_ok(bools, "booleans accept true/false/yes/no/on/off/1/0 in any case");

    /* Strings fill their buffers at most. */
    static char longer[MK_PATH_MAX + 1];
    memset(longer, 'p', MK_PATH_MAX);
    longer[MK_PATH_MAX] = '\0';
    tap_ok(mk_config_set_kv(&c, "data.path", longer, "t") == MK_ERR_USAGE,
           "a data.path of %d characters does not fit", MK_PATH_MAX);
    longer[MK_PATH_MAX - 1] = '\0';
    tap_ok(mk_config_set_kv(&c, "data.path", longer, "t") == MK_OK &&
               strlen(c.data.path) == MK_PATH_MAX - 1,
           "a data.path of %d characters fits", MK_PATH_MAX - 1);
    longer[sizeof c.data.mixture] = '\0';
    tap_ok(mk_config_set_kv(&c, "data.mixture", longer, "t") == MK_ERR_USAGE,
           "a data.mixture of %zu characters does not fit", sizeof c.data.mixture);
    longer[sizeof c.data.mixture - 1] = '\0';
    tap_ok(mk_config_set_kv(&c, "data.mixture", longer, "t") == MK_OK,
           "a data.mixture of %zu characters fits", sizeof c.data.mixture - 1);

    /* get_text */
    char buf[64];
    tap_ok(mk_config_get_text(&c, "model.nope", buf, sizeof buf) == MK_ERR_USAGE,
           "get_text of an unknown key is a usage error");
    tap_ok(mk_config_get_text(&c, "model.vocab", buf, 3) == MK_ERR_INTERNAL,
           "get_text into a buffer too small is an internal error");
    tap_ok(mk_config_get_text(&c, "model.vocab", buf, 0) == MK_ERR_INTERNAL &&
               mk_config_get_text(&c, NULL, buf, sizeof buf) == MK_ERR_INTERNAL,
           "get_text with no room or no key is an internal error");
    static const struct { const char *key, *in, *out; } prints[] = {
        { "train.lr", "1e-3", "0.001" }, { "train.lr", "0.1", "0.1" },
        { "train.grad_clip", "100", "100" }, { "train.grad_clip", "1.0", "1" },
        { "train.eps", "1e-08", "1e-8" }, { "router.zloss_coeff", "1e20", "1e20" },
        { "train.lr", "0.30000000000000004", "0.30000000000000004" },
        { "train.lr", "2.5e-5", "2.5e-5" }, { "lbl.coeff", "123456.5", "123456.5" },
        { "model.tie_embeddings", "on", "true" }, { "train.seed", "+7", "7" },
    };
    for (size_t i = 0; i < sizeof prints / sizeof prints[0]; i++) {
        int rc = mk_config_set_kv(&c, prints[i].key, prints[i].in, "t");
        rc |= mk_config_get_text(&c, prints[i].key, buf, sizeof buf);
        tap_ok(rc == MK_OK && strcmp(buf, prints[i].out) == 0, "%s = %s prints as %s (got %s)",
               prints[i].key, prints[i].in, prints[i].out, buf);
    }
}

/* ------------------------------------------------------------------ INI files */

static void test_ini(void)
{
    mk_config c, def;
    mk_config_defaults(&def);
    c = def;
    int rc = load_text(&c,
                       "; a schedule\n"
                       "# another comment\n"
                       "\n"
                       "[model]\n"
                       "d_model = 128\n"
                       "heads: 8          ; name: value and an inline comment\n"
                       "tie_embeddings = no\n"
                       "[lbl]\n"
                       "mode = global-exact ; comment\n"
                       "micro_coeff = 0.5\n"
                       "[train]\n"
                       "lr = 3e-4\n"
                       "lr = 6e-4\n" /* the last one wins */
                       "seed = 4294967295\n"
                       "lr_schedule=wsd\n"
                       "[data]\n"
                       "path = /data/my corpus;v2=x\n"
                       "mixture =\n");
    tap_ok(rc == MK_OK, "a schedule with comments, blank lines and name: value loads");
    tap_ok(c.model.d_model == 128 && c.model.heads == 8 && c.model.tie_embeddings == 0,
           "[model] values are read");
    tap_ok(c.lbl.mode == MK_LBL_GLOBAL_EXACT && c.lbl.micro_coeff == 0.5,
           "[lbl] values are read (inline comment stripped)");
    tap_ok(c.train.lr == 6e-4, "a key given twice: the last one wins");
    tap_ok(c.train.seed == 4294967295ul && c.train.lr_schedule == MK_LR_WSD,
           "[train] values are read");
    tap_ok(strcmp(c.data.path, "/data/my corpus;v2=x") == 0 && strcmp(c.data.mixture, "") == 0,
           "string values keep inner spaces, ';', '=' and may be empty");
    tap_ok(c.model.layers == def.model.layers && c.train.steps == def.train.steps,
           "keys not in the file keep their values");

    c = def;
    tap_ok(load_text(&c, "\xEF\xBB\xBF[model]\r\nlayers = 5\r\n") == MK_OK && c.model.layers == 5,
           "a UTF-8 BOM and CRLF line ends are fine");
    tap_ok(load_text(&c, "") == MK_OK && c.model.layers == 5, "an empty file changes nothing");

    /* Lines up to inih's limit load; longer ones are an error, not a silent cut. */
    char text[512], value[400];
    memset(value, 'a', 150);
    value[150] = '\0';
    snprintf(text, sizeof text, "[data]\npath = %s\n", value);
    c = def;
    tap_ok(load_text(&c, text) == MK_OK && strcmp(c.data.path, value) == 0,
           "a 157-character line loads");
    memset(value, 'b', 300);
    value[300] = '\0';
    snprintf(text, sizeof text, "[data]\npath = %s\n[model]\nlayers = 7\n", value);
    c = def;
    tap_ok(load_text(&c, text) == MK_ERR_USAGE && same_config(&c, &def),
           "a 307-character line is a usage error");

    static const struct { const char *what, *text; } bad[] = {
        { "an unknown key", "[model]\nd_modl = 64\n" },
        { "an unknown section", "[modle]\nd_model = 64\n" },
        { "a bad integer", "[model]\nheads = abc\n" },
        { "an integer below its minimum", "[model]\ntopk = 0\n" },
        { "a bad double", "[train]\nlr = fast\n" },
        { "a bad boolean", "[router]\nnorm_topk = sometimes\n" },
        { "a bad enum", "[lbl]\nmode = globl\n" },
        { "a line without '='", "[model]\nd_model 64\n" },
        { "a section without ']'", "[model\nd_model = 64\n" },
        { "a key before any section", "d_model = 64\n" },
        { "an indented key after a key", "[model]\nd_model = 64\n  heads = 8\n" },
        { "an indented first key", "[model]\n  d_model = 64\n" },
        { "a key with the section repeated", "[model]\nmodel.d_model = 64\n" },
        { "a good line, then a bad one", "[model]\nd_model = 128\nheads = x\n" },
        { "a bad line, then a syntax error", "[model]\nheads = x\nlayers\n" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = def;
        rc = load_text(&c, bad[i].text);
        tap_ok(rc == MK_ERR_USAGE && same_config(&c, &def),
               "a file with %s is a usage error and changes nothing", bad[i].what);
    }

    /* Many bad lines: all fail, reading stops, no hang. */
    static char junk[4096];
    size_t used = (size_t)snprintf(junk, sizeof junk, "[model]\n");
    for (int i = 0; i < 100; i++)
        used += (size_t)snprintf(junk + used, sizeof junk - used, "bad%d = 1\n", i);
    c = def;
    tap_ok(load_text(&c, junk) == MK_ERR_USAGE, "a file of 100 bad lines is a usage error");

    char path[160];
    snprintf(path, sizeof path, "%s/does-not-exist.ini", tmpdir);
    tap_ok(mk_config_load_ini(&c, path) == MK_ERR_INPUT, "a missing file is an input error");
    tap_ok(mk_config_load_ini(&c, tmpdir) == MK_ERR_INPUT, "a directory is an input error");
}

/* ------------------------------------------------------------------ --set */

static void test_set(void)
{
    mk_config c;
    mk_config_defaults(&c);
    tap_ok(load_text(&c, "[model]\ntopk = 1\n[train]\nlr = 0.01\n") == MK_OK &&
               mk_config_set(&c, "model.topk=4", "--set") == MK_OK && c.model.topk == 4 &&
               c.train.lr == 0.01,
           "--set overrides a value read from a schedule");
    tap_ok(mk_config_set(&c, "  train.steps = 7  ", NULL) == MK_OK && c.train.steps == 7,
           "--set trims whitespace around key and value; origin may be NULL");
    tap_ok(mk_config_set(&c, "data.path=/a=b", "--set") == MK_OK && strcmp(c.data.path, "/a=b") == 0,
           "--set splits at the first '='");
    tap_ok(mk_config_set(&c, "data.mixture=", "--set") == MK_OK && strcmp(c.data.mixture, "") == 0,
           "--set with an empty value sets an empty string");
    static const char *const bad[] = { "model.topk", "=5", "", " = 5", "model.nope=1",
                                       "model.topk=", "model.topk=0", "lbl.mode=Global" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mk_config before = c;
        tap_ok(mk_config_set(&c, bad[i], "--set") == MK_ERR_USAGE && same_config(&c, &before),
               "--set '%s' is a usage error and changes nothing", bad[i]);
    }
}

/* ------------------------------------------------------------------ round trip */

static int write_and_load(const mk_config *in, mk_config *out)
{
    char path[128];
    snprintf(path, sizeof path, "%s/f%03d.ini", tmpdir, n_files++);
    FILE *f = fopen(path, "w");
    if (!f) return MK_ERR_IO;
    int rc = mk_config_write_ini(in, f);
    fclose(f);
    if (rc != MK_OK) return rc;
    mk_config_defaults(out);
    return mk_config_load_ini(out, path);
}

static int same_texts(const mk_config *a, const mk_config *b)
{
    static char ta[MK_PATH_MAX + 1], tb[MK_PATH_MAX + 1];
    int same = 1;
    for (size_t i = 0; i < mk_config_setting_count(); i++) {
        const char *key = mk_config_setting(i)->key;
        mk_config_get_text(a, key, ta, sizeof ta);
        mk_config_get_text(b, key, tb, sizeof tb);
        if (strcmp(ta, tb) != 0) {
            same = 0;
            tap_diag("%s: '%s' came back as '%s'", key, ta, tb);
        }
    }
    return same;
}

static void test_round_trip(void)
{
    mk_config def, x = other_config(), back;
    mk_config_defaults(&def);

    int differs = 1;
    char ta[MK_PATH_MAX + 1], tb[MK_PATH_MAX + 1];
    for (size_t i = 0; i < mk_config_setting_count(); i++) {
        const char *key = mk_config_setting(i)->key;
        mk_config_get_text(&def, key, ta, sizeof ta);
        mk_config_get_text(&x, key, tb, sizeof tb);
        if (strcmp(ta, tb) == 0) differs = 0;
    }
    tap_ok(differs, "the test config differs from the defaults in every key");
    tap_ok(mk_config_validate(&x) == MK_OK, "the test config passes validation");

    tap_ok(write_and_load(&def, &back) == MK_OK && same_texts(&def, &back) &&
               same_config(&def, &back),
           "write_ini then load_ini gives back the defaults exactly");
    back = def;
    tap_ok(write_and_load(&x, &back) == MK_OK && same_texts(&x, &back) && same_config(&x, &back),
           "write_ini then load_ini gives back every non-default key exactly");

    FILE *full = fopen("/dev/full", "w");
    if (full) {
        tap_ok(mk_config_write_ini(&def, full) == MK_ERR_IO, "write_ini to a full disk is an I/O error");
        fclose(full);
    } else {
        tap_ok(1, "# SKIP no /dev/full");
    }
}

/* ------------------------------------------------------------------ validation */

static void test_validate(void)
{
    mk_config def;
    mk_config_defaults(&def);
    mk_config c;

#define BREAKS(change, what)                                                          \
    do {                                                                              \
        c = def;                                                                      \
        change;                                                                       \
        tap_ok(mk_config_validate(&c) == MK_ERR_USAGE, "validate rejects %s", what);   \
    } while (0)
#define KEEPS(change, what)                                                           \
    do {                                                                              \
        c = def;                                                                      \
        change;                                                                       \
        tap_ok(mk_config_validate(&c) == MK_OK, "validate accepts %s", what);          \
    } while (0)

    BREAKS((c.model.d_model = 64, c.model.heads = 3), "d_model 64 with 3 heads");
    BREAKS((c.model.d_model = 60, c.model.heads = 4), "an odd head size (60 / 4 = 15)");
    KEEPS((c.model.d_model = 64, c.model.heads = 32), "head size 2");
    BREAKS(c.model.topk = 9, "topk 9 of 8 experts");
    KEEPS(c.model.topk = 8, "topk 8 of 8 experts");
    BREAKS(c.parallel.ep = 3, "8 experts over ep 3");
    KEEPS(c.parallel.ep = 8, "8 experts over ep 8");
    BREAKS(c.train.warmup = 101, "warmup 101 of 100 steps");
    KEEPS(c.train.warmup = 100, "warmup 100 of 100 steps");
    BREAKS(c.lbl.micro_coeff = 0.1, "lbl.micro_coeff > 0 with lbl.mode micro");
    BREAKS((c.lbl.micro_coeff = 0.1, c.lbl.mode = MK_LBL_NONE), "lbl.micro_coeff > 0 with none");
    KEEPS((c.lbl.micro_coeff = 0.1, c.lbl.mode = MK_LBL_GLOBAL), "lbl.micro_coeff with global");
    KEEPS((c.lbl.micro_coeff = 0.1, c.lbl.mode = MK_LBL_GLOBAL_EXACT),
          "lbl.micro_coeff with global-exact");
    BREAKS(c.model.vocab = 1, "vocab 1");
    BREAKS(c.model.seq_len = 1, "seq_len 1");
    BREAKS(c.model.heads = 0, "0 heads (without dividing by it)");
    BREAKS(c.parallel.ep = 0, "ep 0 (without dividing by it)");
    BREAKS(c.train.precision = MK_PRECISION_BF16, "bf16 on the cpu backend");
    BREAKS(c.train.lr = -1, "a negative lr set in code");
    BREAKS(c.train.eps = NAN, "a NaN eps set in code");
    BREAKS(c.train.beta2 = 1, "beta2 1 set in code");
    BREAKS(c.lbl.mode = (mk_lbl_mode)7, "an lbl.mode out of range");
    BREAKS(c.model.tie_embeddings = 2, "a boolean that is neither 0 nor 1");
    BREAKS(memset(c.run.dir, 'r', sizeof c.run.dir), "a string without its NUL");
#undef BREAKS
#undef KEEPS
}

/* ------------------------------------------------------------------ docs */

static const char *type_word(mk_setting_type t)
{
    switch (t) {
    case MK_SET_INT: return "int";
    case MK_SET_ULONG: return "unsigned";
    case MK_SET_DOUBLE: return "float";
    case MK_SET_BOOL: return "bool";
    case MK_SET_STRING: return "string";
    case MK_SET_ENUM: return "enum";
    }
    return "?";
}

static void test_docs(int argc, char **argv)
{
    char path[MK_PATH_MAX];
    const char *srcdir = getenv("srcdir");
    if (argc > 1) snprintf(path, sizeof path, "%s", argv[1]);
    else snprintf(path, sizeof path, "%s/docs/settings.md", srcdir ? srcdir : ".");
    FILE *f = fopen(path, "r");
    if (!f) {
        tap_ok(1, "# SKIP %s not found", path);
        return;
    }
    /* Each key must have a table row "| `key` | type | `default` | ...". */
    size_t n = mk_config_setting_count();
    char line[2048], want[160];
    int *found = calloc(n, sizeof *found);
    while (fgets(line, sizeof line, f))
        for (size_t i = 0; i < n; i++) {
            const mk_setting_info *s = mk_config_setting(i);
            snprintf(want, sizeof want, "| `%s` |", s->key);
            if (strncmp(line, want, strlen(want)) != 0) continue;
            found[i] = 1;
            snprintf(want, sizeof want, "| %s |", type_word(s->type));
            int type_ok = strstr(line, want) != NULL;
            if (*s->default_text) snprintf(want, sizeof want, "| `%s` |", s->default_text);
            else snprintf(want, sizeof want, "| (empty) |");
            int default_ok = strstr(line, want) != NULL;
            if (!type_ok || !default_ok) {
                found[i] = 2;
                tap_diag("docs row of %s should show type %s and default '%s'", s->key,
                         type_word(s->type), s->default_text);
            }
        }
    fclose(f);
    int all = 1;
    for (size_t i = 0; i < n; i++)
        if (found[i] != 1) {
            all = 0;
            if (!found[i]) tap_diag("%s has no row in %s", mk_config_setting(i)->key, path);
        }
    free(found);
    tap_ok(all, "every key has a row in docs/settings.md with its type and default");
}

int main(int argc, char **argv)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mk_test_config.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_table();
    test_defaults();
    test_values();
    test_ini();
    test_set();
    test_round_trip();
    test_validate();
    test_docs(argc, argv);
    remove_tmpdir();
    return tap_done();
}
