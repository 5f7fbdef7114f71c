/* mk_config.c - the settings table and everything it drives (see mk_config.h).
 *
 * What stays true:
 *  1. table[] holds exactly one entry per field of mk_config. Each key is the field path
 *     itself (the macros stringify it), and _Generic checks at compile time that the field
 *     has the C type the entry claims. tests/test_config.c checks that every field is
 *     reached by exactly one key.
 *  2. A setting changes only once its whole text has parsed and passed its range check.
 *     A failed mk_config_load_ini leaves cfg as it was.
 *  3. mk_config_get_text prints a value that parses back to the same value, bit for bit,
 *     so mk_config_write_ini followed by mk_config_load_ini gives back the same config.
 *
 * Numbers are read and printed in the C locale. moekit never calls setlocale(), and a
 * program that does must restore LC_NUMERIC to "C" before it uses this module.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_config.h"
#include "mk_error.h"

#include <ini.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ the table */

enum { LO_OPEN = 1, HI_OPEN = 2 }; /* the bound itself is not allowed */
enum { NOT_ENUM, ENUM_LBL_MODE, ENUM_LR_SCHEDULE, ENUM_BACKEND, ENUM_PRECISION };

typedef struct setting {
    mk_setting_info info;     /* first, so mk_config_setting can return &table[i].info */
    size_t offset, size;      /* where the field is in mk_config and how big it is */
    double lo, hi;            /* range of numbers (INT, DOUBLE) */
    unsigned open;            /* LO_OPEN | HI_OPEN */
    int enum_kind;            /* which C enum type the field has */
    const char *const *names; /* enum names, indexed by value, NULL-terminated */
} setting;

static const char *const lbl_mode_names[] = {
    [MK_LBL_NONE] = "none", [MK_LBL_MICRO] = "micro", [MK_LBL_GLOBAL] = "global",
    [MK_LBL_GLOBAL_EXACT] = "global-exact", NULL
};
static const char *const lr_schedule_names[] = {
    [MK_LR_CONSTANT] = "constant", [MK_LR_COSINE] = "cosine", [MK_LR_WSD] = "wsd", NULL
};
static const char *const backend_names[] = {
    [MK_BACKEND_CPU] = "cpu", [MK_BACKEND_CUDA] = "cuda", NULL
};
static const char *const precision_names[] = {
    [MK_PRECISION_AUTO] = "auto", [MK_PRECISION_FP32] = "fp32", [MK_PRECISION_BF16] = "bf16", NULL
};

/* The offset of field f, which must have type T: a field whose type changes in
 * mk_config.h stops the build here rather than being written through the wrong type. */
#define OFF(f, T) _Generic(((mk_config *)0)->f, T: offsetof(mk_config, f))
#define SIZE(f) sizeof(((mk_config *)0)->f)

#define INT(f, def, min, doc) \
    { { #f, MK_SET_INT, def, doc }, OFF(f, int), SIZE(f), min, INT_MAX, 0, NOT_ENUM, NULL }
#define ULONG(f, def, doc) \
    { { #f, MK_SET_ULONG, def, doc }, OFF(f, unsigned long), SIZE(f), 0, 0, 0, NOT_ENUM, NULL }
#define DOUBLE(f, def, min, max, open, doc) \
    { { #f, MK_SET_DOUBLE, def, doc }, OFF(f, double), SIZE(f), min, max, open, NOT_ENUM, NULL }
#define BOOL(f, def, doc) \
    { { #f, MK_SET_BOOL, def, doc }, OFF(f, int), SIZE(f), 0, 1, 0, NOT_ENUM, NULL }
#define STRING(f, def, doc) \
    { { #f, MK_SET_STRING, def, doc }, OFF(f, char *), SIZE(f), 0, 0, 0, NOT_ENUM, NULL }
#define ENUM(f, T, kind, names, def, doc) \
    { { #f, MK_SET_ENUM, def, doc }, OFF(f, T), SIZE(f), 0, 0, 0, kind, names }

/* Default texts are written exactly as mk_config_get_text prints them, so the docs, the
 * INI files written by moekit and this table show the same text. Sections are kept
 * together here only for readability: mk_config_write_ini groups keys by section. */
static const setting table[] = {
    INT(model.vocab, "257", 2, "vocabulary size (256 byte tokens + end-of-document)"),
    INT(model.d_model, "64", 1, "model width D"),
    INT(model.layers, "2", 1, "transformer blocks L (attention + MoE layer each)"),
    INT(model.heads, "4", 1, "attention heads H; the head size D/H must be even (RoPE)"),
    INT(model.experts, "8", 1, "routed experts E per MoE layer"),
    INT(model.topk, "2", 1, "experts K that each token is routed to (K <= E)"),
    INT(model.ffn, "64", 1, "hidden size F of each expert's SwiGLU"),
    INT(model.shared_ffn, "0", 0, "hidden size Fs of the shared expert; 0 = no shared expert"),
    INT(model.seq_len, "64", 2, "tokens per training sequence T"),
    BOOL(model.tie_embeddings, "true", "output projection is wte^T; false adds lm_head [D, V]"),

    BOOL(router.norm_topk, "false", "renormalise the K gates of a token to sum to 1"),
    DOUBLE(router.zloss_coeff, "0", 0, HUGE_VAL, 0,
           "coefficient of the router z-loss mean(logsumexp(z)^2); 0 = off"),
    DOUBLE(router.capacity_factor, "0", 0, HUGE_VAL, 0,
           "expert capacity = factor * K * tokens / E, overflow dropped; 0 = dropless"),

    ENUM(lbl.mode, mk_lbl_mode, ENUM_LBL_MODE, lbl_mode_names, "micro",
         "balance scope of the LBL: none, micro, global or global-exact"),
    DOUBLE(lbl.coeff, "0.01", 0, HUGE_VAL, 0, "coefficient of the LBL of lbl.mode"),
    DOUBLE(lbl.micro_coeff, "0", 0, HUGE_VAL, 0,
           "coefficient of an extra micro-batch LBL next to a global one; 0 = off"),

    INT(train.micro_batch, "8", 1, "sequences per rank per micro-step"),
    INT(train.grad_accum, "1", 1, "micro-steps per optimizer step"),
    INT(train.steps, "100", 1, "optimizer steps to train"),
    INT(train.warmup, "10", 0, "steps of linear learning-rate warmup (<= train.steps)"),
    ULONG(train.seed, "1234", "seed of the initialisation and the data order"),
    DOUBLE(train.lr, "0.001", 0, HUGE_VAL, LO_OPEN, "peak learning rate, reached after warmup"),
    DOUBLE(train.min_lr_ratio, "0.1", 0, 1, 0,
           "final learning rate of cosine and wsd, as a fraction of train.lr"),
    DOUBLE(train.decay_frac, "0.2", 0, 1, 0, "fraction of train.steps in the decay phase of wsd"),
    DOUBLE(train.weight_decay, "0.1", 0, HUGE_VAL, 0, "AdamW decoupled weight decay"),
    DOUBLE(train.grad_clip, "1", 0, HUGE_VAL, 0, "largest global gradient norm; 0 = no clipping"),
    DOUBLE(train.beta1, "0.9", 0, 1, HI_OPEN, "AdamW decay rate of the first moment"),
    DOUBLE(train.beta2, "0.95", 0, 1, HI_OPEN, "AdamW decay rate of the second moment"),
    DOUBLE(train.eps, "1e-8", 0, HUGE_VAL, LO_OPEN, "AdamW epsilon"),
    ENUM(train.lr_schedule, mk_lr_schedule, ENUM_LR_SCHEDULE, lr_schedule_names, "cosine",
         "learning-rate schedule after warmup: constant, cosine or wsd"),
    INT(train.threads, "0", 0, "CPU threads per rank; 0 = the OpenMP default"),
    ENUM(train.backend, mk_backend_kind, ENUM_BACKEND, backend_names, "cpu",
         "compute backend: cpu, or cuda (one GPU per rank: the rank's local rank)"),
    ENUM(train.precision, mk_precision, ENUM_PRECISION, precision_names, "auto",
         "GEMM precision: auto (cpu fp32, cuda bf16), fp32, or bf16 (cuda: bf16 tensor-core "
         "operands, fp32 accumulate and master weights)"),

    INT(parallel.ep, "1", 1, "expert-parallel group size; divides model.experts and the world"),
    DOUBLE(parallel.timeout, "300", 0, HUGE_VAL, 0,
           "seconds one phase of a step may take before the job is ended as hung; 0 = off"),

    STRING(data.path, "", "dataset directory made by moe-shard, NAME=PREFIX Megatron datasets, or a text file; comma-separated"),
    STRING(data.mixture, "natural", "domain mixture: natural, uniform, temperature:T or NAME:W,NAME:W,..."),
    INT(data.repeat_cap, "4", 0, "most epochs any domain's train split may be repeated; 0 = no cap"),
    STRING(data.tokenizer, "", "tokenizer the run expects: empty = the dataset's, byte, bpe:SHA256 or a ranks file"),

    STRING(run.dir, "run", "run directory: ckpt/, routing.h5 and the log go here"),

    INT(ckpt.every, "0", 0, "write a checkpoint every this many steps; 0 = no periodic ones"),
    INT(ckpt.keep, "3", 1, "checkpoints kept; older ones are deleted"),

    INT(log.every, "10", 0, "print a log line every this many steps; 0 = off"),

    INT(eval.every, "0", 0, "evaluate on the held-out split every this many steps; 0 = off"),
};

#define N_SETTINGS (sizeof table / sizeof table[0])

size_t mk_config_setting_count(void) { return N_SETTINGS; }

const mk_setting_info *mk_config_setting(size_t i)
{
    return i < N_SETTINGS ? &table[i].info : NULL;
}

const char *mk_lbl_mode_name(mk_lbl_mode m)
{
    return (unsigned)m < MK_LBL_GLOBAL_EXACT + 1u ? lbl_mode_names[m] : "unknown";
}

static const setting *find(const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(table[i].info.key, key) == 0) return &table[i];
    return NULL;
}

static void *field(mk_config *cfg, const setting *s) { return (char *)cfg + s->offset; }
static const void *cfield(const mk_config *cfg, const setting *s)
{
    return (const char *)cfg + s->offset;
}

/* Enum fields are written through their own C type: the size and signedness of an enum
 * are the compiler's choice, so an int pointer would not be portable. */
static void put_enum(mk_config *cfg, const setting *s, int v)
{
    switch (s->enum_kind) {
    case ENUM_LBL_MODE: *(mk_lbl_mode *)field(cfg, s) = (mk_lbl_mode)v; break;
    case ENUM_BACKEND: *(mk_backend_kind *)field(cfg, s) = (mk_backend_kind)v; break;
    case ENUM_PRECISION: *(mk_precision *)field(cfg, s) = (mk_precision)v; break;
    default: *(mk_lr_schedule *)field(cfg, s) = (mk_lr_schedule)v; break;
    }
}

static long get_enum(const mk_config *cfg, const setting *s)
{
    switch (s->enum_kind) {
    case ENUM_LBL_MODE: return (long)*(const mk_lbl_mode *)cfield(cfg, s);
    case ENUM_BACKEND: return (long)*(const mk_backend_kind *)cfield(cfg, s);
    case ENUM_PRECISION: return (long)*(const mk_precision *)cfield(cfg, s);
    default: return (long)*(const mk_lr_schedule *)cfield(cfg, s);
    }
}

static size_t n_names(const setting *s)
{
    size_t n = 0;
    while (s->names[n]) n++;
    return n;
}

/* ------------------------------------------------------------------ did you mean */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

/* Levenshtein distance, ignoring case; SIZE_MAX for words too long to be a typo. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b), row[128];
    if (na >= 128 || nb >= 128) return (size_t)-1;
    for (size_t j = 0; j <= nb; j++) row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (lower(a[i - 1]) != lower(b[j - 1]));
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

static const char *name_part(const char *key)
{
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

/* A distance small enough that word is probably a misspelling, not another word. Judged on
 * the part after the section, so "model.nope" is not taken for "model.topk". */
static int close_enough(size_t d, const char *word)
{
    size_t n = strlen(name_part(word));
    return d <= (n <= 4 ? 1 : n <= 8 ? 2 : 3);
}

/* text made fit for a one-line message: control characters escaped, long text cut. */
static const char *shown(const char *text, char *buf, size_t n)
{
    size_t w = 0;
    const char *p = text;
    for (; *p && w + 8 <= n; p++) { /* room for one escape (4), "..." and the NUL */
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != 0x7f) buf[w++] = (char)c;
        else if (c == '\n') w += (size_t)snprintf(buf + w, n - w, "\\n");
        else if (c == '\t') w += (size_t)snprintf(buf + w, n - w, "\\t");
        else w += (size_t)snprintf(buf + w, n - w, "\\x%02x", c);
    }
    strcpy(buf + w, *p ? "..." : "");
    return buf;
}

/* The key the user probably meant, or NULL. In order: a known key after a stray prefix
 * ("model.model.d_model"), the right name in the wrong or no section ("train.ep",
 * "d_model"), then the nearest key by edit distance ("model.d_modl"). */
static const char *suggest_key(const char *key)
{
    for (const char *p = strchr(key, '.'); p; p = strchr(p + 1, '.')) {
        const setting *s = find(p + 1);
        if (s) return s->info.key;
    }

    const char *name = name_part(key), *only = NULL;
    int matches = 0;
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(name_part(table[i].info.key), name) == 0) {
            only = table[i].info.key;
            matches++;
        }
    if (matches == 1) return only;

    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        size_t d = edit_distance(key, table[i].info.key);
        if (d < best_d) {
            best_d = d;
            best = table[i].info.key;
        }
    }
    return best && close_enough(best_d, key) ? best : NULL;
}

static int fail_unknown_key(const char *key, const char *origin)
{
    char k[100];
    const char *hint = suggest_key(key);
    if (hint)
        return MK_FAIL(MK_ERR_USAGE, "%s: unknown key '%s' (did you mean '%s'?)", origin,
                       shown(key, k, sizeof k), hint);
    return MK_FAIL(MK_ERR_USAGE, "%s: unknown key '%s' (docs/settings.md lists them all)",
                   origin, shown(key, k, sizeof k));
}

/* ------------------------------------------------------------------ text -> value */

/* The shortest text that reads back as exactly v (%.17g always would, but prints 0.1 as
 * 0.10000000000000001), in fixed notation for whole numbers below 1e17 (100, not 1e2),
 * with the exponent's '+' and leading zeros dropped (1e-8, not 1e-08). */
static void format_double(double v, char *buf, size_t n)
{
    char tmp[40];
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
    const char *e = strchr(tmp, 'e');
    long exp10 = e ? strtol(e + 1, NULL, 10) : 0;
    if (exp10 >= prec && exp10 < 17) prec = (int)exp10 + 1;
    snprintf(tmp, sizeof tmp, "%.*g", prec, v);

    char *x = strchr(tmp, 'e');
    if (x) {
        char *r = x + 1, *w = x + 1;
        if (*r == '+') r++;
        else if (*r == '-') *w++ = *r++;
        while (*r == '0' && r[1]) r++;
        memmove(w, r, strlen(r) + 1);
    }
    snprintf(buf, n, "%s", tmp);
}

static int fail_range(const setting *s, const char *text, const char *origin, double bound,
                      const char *what)
{
    char b[40], t[100];
    format_double(bound, b, sizeof b);
    return MK_FAIL(MK_ERR_USAGE, "%s: %s: %s %s %s", origin, s->info.key,
                   shown(text, t, sizeof t), what, b);
}

static int check_range(const setting *s, double v, const char *text, const char *origin)
{
    if ((s->open & LO_OPEN) ? !(v > s->lo) : !(v >= s->lo))
        return fail_range(s, text, origin, s->lo,
                          (s->open & LO_OPEN) ? "must be greater than" : "is below the minimum");
    if ((s->open & HI_OPEN) ? !(v < s->hi) : !(v <= s->hi))
        return fail_range(s, text, origin, s->hi,
                          (s->open & HI_OPEN) ? "must be less than" : "is above the maximum");
    return MK_OK;
}

static int fail_value(const setting *s, const char *text, const char *origin, const char *what)
{
    char t[100];
    return MK_FAIL(MK_ERR_USAGE, "%s: %s: '%s' %s", origin, s->info.key,
                   shown(text, t, sizeof t), what);
}

/* Whole text or nothing: strtol alone would read "12abc" as 12 and "1e3" as 1. */
static int parse_int(const setting *s, const char *text, const char *origin, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end) return fail_value(s, text, origin, "is not an integer");
    if (errno == ERANGE) return fail_value(s, text, origin, "is out of range");
    MK_CHECK(check_range(s, (double)v, text, origin)); /* the range lies within int */
    *out = (int)v;
    return MK_OK;
}

static int parse_ulong(const setting *s, const char *text, const char *origin, unsigned long *out)
{
    const char *p = text;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '-') /* strtoul would wrap "-1" round to ULONG_MAX */
        return fail_value(s, text, origin, "is not a non-negative integer");
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (end == text || *end) return fail_value(s, text, origin, "is not an integer");
    if (errno == ERANGE) return fail_value(s, text, origin, "is out of range");
    *out = v;
    return MK_OK;
}

static int parse_double(const setting *s, const char *text, const char *origin, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end) return fail_value(s, text, origin, "is not a number");
    if (!isfinite(v)) return fail_value(s, text, origin, "is not a finite number");
    /* glibc also sets ERANGE for subnormal results, which are exact enough to keep. */
    if (errno == ERANGE && v == 0) return fail_value(s, text, origin, "underflows to 0");
    MK_CHECK(check_range(s, v, text, origin));
    *out = v;
    return MK_OK;
}

static int same_word(const char *a, const char *b)
{
    for (; *a && lower(*a) == lower(*b); a++) b++;
    return *a == 0 && *b == 0;
}

static int parse_bool(const setting *s, const char *text, const char *origin, int *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };
    for (size_t i = 0; i < 4; i++) {
        if (same_word(text, yes[i]) || same_word(text, no[i])) {
            *out = same_word(text, yes[i]);
            return MK_OK;
        }
    }
    return fail_value(s, text, origin, "is not a boolean (true or false)");
}

static int parse_enum(const setting *s, const char *text, const char *origin, int *out)
{
    size_t n = n_names(s), best = 0, best_d = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(text, s->names[i]) == 0) {
            *out = (int)i;
            return MK_OK;
        }
        size_t d = edit_distance(text, s->names[i]);
        if (d < best_d) {
            best_d = d;
            best = i;
        }
    }
    char list[128] = "", hint[64] = "", t[100];
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", s->names[i]);
    }
    if (close_enough(best_d, text))
        snprintf(hint, sizeof hint, " (did you mean '%s'?)", s->names[best]);
    return MK_FAIL(MK_ERR_USAGE, "%s: %s: '%s' is not one of %s%s", origin, s->info.key,
                   shown(text, t, sizeof t), list, hint);
}

/* A string must fit its buffer and survive a trip through an INI file: inih strips
 * whitespace at both ends, ends the value at " ;" (an inline comment) and at a newline. */
static long utf8_bad(const unsigned char *s, size_t n);

static int parse_string(const setting *s, const char *text, const char *origin)
{
    size_t len = strlen(text);
    if (len >= s->size)
        return MK_FAIL(MK_ERR_USAGE, "%s: %s: the value is %zu characters long, the most is %zu",
                       origin, s->info.key, len, s->size - 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f)
            return fail_value(s, text, origin, "contains a control character");
        if (c == ';' && i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t'))
            return fail_value(s, text, origin, "contains ' ;', which starts an INI comment");
        /* Written as "key = ;...", the ';' follows a space too (found by fuzz_config). */
        if (c == ';' && i == 0)
            return fail_value(s, text, origin, "starts with ';', which starts an INI comment");
    }
    /* A schedule file must be UTF-8, so a --set value that is not could not be written back
     * (the checkpoint's /config, --print-config) and read again (found by fuzz_config). */
    if (utf8_bad((const unsigned char *)text, len) >= 0)
        return fail_value(s, text, origin, "is not UTF-8 text");
    if (len > 0 && (text[0] == ' ' || text[0] == '\t' || text[len - 1] == ' ' ||
                    text[len - 1] == '\t'))
        return fail_value(s, text, origin, "starts or ends with whitespace");
    return MK_OK;
}

/* Parse text as setting s and store it in cfg; nothing changes unless it is valid. */
static int apply(mk_config *cfg, const setting *s, const char *text, const char *origin)
{
    int i = 0; /* set by the parsers below; zeroed to quiet -Wmaybe-uninitialized */
    switch (s->info.type) {
    case MK_SET_INT:
        MK_CHECK(parse_int(s, text, origin, &i));
        *(int *)field(cfg, s) = i;
        break;
    case MK_SET_ULONG: {
        unsigned long u = 0;
        MK_CHECK(parse_ulong(s, text, origin, &u));
        *(unsigned long *)field(cfg, s) = u;
        break;
    }
    case MK_SET_DOUBLE: {
        double d = 0;
        MK_CHECK(parse_double(s, text, origin, &d));
        *(double *)field(cfg, s) = d;
        break;
    }
    case MK_SET_BOOL:
        MK_CHECK(parse_bool(s, text, origin, &i));
        *(int *)field(cfg, s) = i;
        break;
    case MK_SET_ENUM:
        MK_CHECK(parse_enum(s, text, origin, &i));
        put_enum(cfg, s, i);
        break;
    case MK_SET_STRING:
        MK_CHECK(parse_string(s, text, origin));
        /* Zero the whole buffer, not just past the end: equal configs are equal bytes. */
        memset(field(cfg, s), 0, s->size);
        memcpy(field(cfg, s), text, strlen(text));
        break;
    }
    return MK_OK;
}

/* ------------------------------------------------------------------ value -> text */

static void format_value(const mk_config *cfg, const setting *s, char *buf, size_t n)
{
    const void *p = cfield(cfg, s);
    switch (s->info.type) {
    case MK_SET_INT: snprintf(buf, n, "%d", *(const int *)p); break;
    case MK_SET_ULONG: snprintf(buf, n, "%lu", *(const unsigned long *)p); break;
    case MK_SET_DOUBLE: format_double(*(const double *)p, buf, n); break;
    case MK_SET_BOOL: snprintf(buf, n, "%s", *(const int *)p ? "true" : "false"); break;
    case MK_SET_ENUM: {
        long v = get_enum(cfg, s);
        if (v >= 0 && (size_t)v < n_names(s)) snprintf(buf, n, "%s", s->names[v]);
        else snprintf(buf, n, "%ld", v); /* only a struct filled in by hand gets here */
        break;
    }
    case MK_SET_STRING: snprintf(buf, n, "%.*s", (int)s->size, (const char *)p); break;
    }
}

int mk_config_get_text(const mk_config *cfg, const char *key, char *buf, size_t n)
{
    if (!cfg || !key || !buf || n == 0)
        return MK_FAIL(MK_ERR_INTERNAL, "mk_config_get_text: NULL argument or empty buffer");
    const setting *s = find(key);
    if (!s) return fail_unknown_key(key, "mk_config_get_text");
    char tmp[MK_PATH_MAX + 1];
    format_value(cfg, s, tmp, sizeof tmp);
    if (strlen(tmp) >= n)
        return MK_FAIL(MK_ERR_INTERNAL, "mk_config_get_text: %s needs %zu bytes, got %zu", key,
                       strlen(tmp) + 1, n);
    memcpy(buf, tmp, strlen(tmp) + 1);
    return MK_OK;
}

/* ------------------------------------------------------------------ defaults, --set */

void mk_config_defaults(mk_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_SETTINGS; i++)
        /* Only a typo in table[] can fail here, and test_config parses every default. */
        if (apply(cfg, &table[i], table[i].info.default_text, "default") != MK_OK) abort();
}

int mk_config_set_kv(mk_config *cfg, const char *key, const char *value, const char *origin)
{
    if (!origin) origin = "--set";
    if (!cfg || !key) return MK_FAIL(MK_ERR_INTERNAL, "mk_config_set_kv: NULL argument");
    const setting *s = find(key);
    if (!s) return fail_unknown_key(key, origin);
    if (!value) return MK_FAIL(MK_ERR_USAGE, "%s: %s: no value", origin, key);
    return apply(cfg, s, value, origin);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

int mk_config_set(mk_config *cfg, const char *assignment, const char *origin)
{
    if (!origin) origin = "--set";
    if (!cfg || !assignment) return MK_FAIL(MK_ERR_INTERNAL, "mk_config_set: NULL argument");
    size_t len = strlen(assignment);
    char *copy = malloc(len + 1);
    if (!copy) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", origin);
    memcpy(copy, assignment, len + 1);

    int rc;
    char *eq = strchr(copy, '=');
    if (eq) *eq = '\0';
    /* Whitespace around the key and the value is dropped, as in an INI file. */
    const char *key = trim(copy);
    char t[100];
    if (!eq || !*key)
        rc = MK_FAIL(MK_ERR_USAGE, "%s: '%s' is not of the form section.key=value", origin,
                     shown(assignment, t, sizeof t));
    else
        rc = mk_config_set_kv(cfg, key, trim(eq + 1), origin);
    free(copy);
    return rc;
}

/* ------------------------------------------------------------------ INI files */

/* inih's handler gets no line number (INI_HANDLER_LINENO is fixed when libinih is built),
 * so the file is fed through ini_parse_stream with a reader that counts lines. The
 * handler then always reports success to inih and keeps its own count of bad lines, which
 * makes inih's return value mean only "first syntax error at this line". */
enum { MAX_ERRORS = 20 }; /* then stop: a binary file would give one error per line */
#define BROKEN_SECTION "\x01" /* stands in for a section header without its ']' */

typedef struct ini_state {
    mk_config *cfg;
    const char *path;
    FILE *f;
    int lineno;
    long offset;    /* bytes read before the current line */
    int indented;   /* the current line starts with whitespace */
    int errors;     /* bad lines so far */
    int binary;     /* a NUL or a byte that is not UTF-8 was met: reading stopped */
    int read_errno; /* errno of a failed read, 0 if none */
} ini_state;

/* Offset of the first byte of s[0..n) that does not belong to well-formed UTF-8 (no
 * overlong forms, surrogates or code points past U+10FFFF), or -1 when all do. */
static long utf8_bad(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (len == 0 || i + len > n) return (long)i;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return (long)i;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F) ||
            (c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] > 0x8F))
            return (long)i;
        i += len;
    }
    return -1;
}

/* Lines are read byte by byte, not with fgets: fgets cannot tell an embedded NUL from the
 * end of the line, so "d_model = 6<NUL>4" would silently become "d_model = 6". A NUL or a
 * byte that is not UTF-8 means the file is not a schedule (a binary file, another
 * encoding): one error naming the byte's offset, and reading stops there rather than
 * reporting every garbage line. */
static char *ini_read_line(char *str, int num, void *stream)
{
    ini_state *st = stream;
    if (st->errors >= MAX_ERRORS || st->binary || num < 3) return NULL;
    int c = EOF, len = 0, nul = -1;
    while (len < num - 1 && (c = getc(st->f)) != EOF) {
        if (c == 0 && nul < 0) nul = len;
        str[len++] = (char)c;
        if (c == '\n') break;
    }
    if (len == 0) {
        if (ferror(st->f)) st->read_errno = errno ? errno : EIO;
        return NULL;
    }
    str[len] = '\0';
    st->lineno++;
    const long line_start = st->offset;
    st->offset += len;
    /* A line cut at the buffer's end may end inside a character: its last 3 bytes wait. */
    const int cut = len == num - 1 && str[len - 1] != '\n';
    long bad = nul >= 0 ? nul : utf8_bad((const unsigned char *)str, (size_t)(cut ? len - 3 : len));
    if (bad >= 0) {
        MK_FAIL(MK_ERR_USAGE, "%s:%d: byte %ld of the file is 0x%02x: %s; a schedule is UTF-8"
                " text", st->path, st->lineno, line_start + bad, (unsigned char)str[bad],
                nul >= 0 ? "a NUL byte" : "not UTF-8");
        st->errors++;
        st->binary = 1;
        return NULL;
    }
    if (cut) {
        /* Longer than inih's line buffer: inih would cut it (or, in old versions, parse
         * the rest as a line of its own). Skip it whole and say so instead. */
        while ((c = getc(st->f)) != EOF && c != '\n') st->offset++;
        if (c == '\n') st->offset++;
        MK_FAIL(MK_ERR_USAGE, "%s:%d: line longer than %d characters, the most libinih reads"
                " (set long values with --set)", st->path, st->lineno, num - 2);
        st->errors++;
        strcpy(str, "\n"); /* a blank line to inih */
        return str;
    }
    const char *p = str;
    if (st->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* UTF-8 BOM */
    st->indented = *p == ' ' || *p == '\t' || *p == '\v' || *p == '\f';
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '[' && !strchr(p, ']')) {
        /* inih would report this line only at the end and file the keys after it under no
         * section, one more error each: say it once, and keep those keys quiet. */
        char t[100];
        str[strcspn(str, "\r\n")] = '\0';
        MK_FAIL(MK_ERR_USAGE, "%s:%d: section header '%s' has no closing ']'", st->path, st->lineno,
                shown(p, t, sizeof t));
        st->errors++;
        strcpy(str, "[" BROKEN_SECTION "]\n");
    }
    return str;
}

static int ini_on_value(void *user, const char *section, const char *name, const char *value)
{
    ini_state *st = user;
    char origin[MK_PATH_MAX + 32], key[256];
    snprintf(origin, sizeof origin, "%s:%d", st->path, st->lineno);

    if (strcmp(section, BROKEN_SECTION) == 0) {
        return 1; /* under a broken header, reported once by ini_read_line */
    } else if (st->indented) {
        /* inih reads an indented line as the continuation of the previous value (Python
         * configparser style). No moekit setting spans lines, so it is always a mistake. */
        MK_FAIL(MK_ERR_USAGE, "%s: indented line; remove the leading whitespace (an indented"
                " line continues the previous value)", origin);
    } else if (!*section) {
        const char *hint = suggest_key(name);
        if (hint)
            MK_FAIL(MK_ERR_USAGE, "%s: '%s' comes before any [section] (did you mean to put it"
                    " under [%.*s]?)", origin, name, (int)(name_part(hint) - hint - 1), hint);
        else
            MK_FAIL(MK_ERR_USAGE, "%s: '%s' comes before any [section]", origin, name);
    } else if ((size_t)snprintf(key, sizeof key, "%s.%s", section, name) >= sizeof key) {
        MK_FAIL(MK_ERR_USAGE, "%s: unknown key '%s.%.40s...'", origin, section, name);
    } else if (mk_config_set_kv(st->cfg, key, value, origin) == MK_OK) {
        /* A key given twice is not an error: the last one wins, as with --set after the
         * schedule, so a schedule can be extended by appending lines. */
        return 1;
    }
    st->errors++;
    return 1;
}

int mk_config_load_ini(mk_config *cfg, const char *path)
{
    if (!cfg || !path) return MK_FAIL(MK_ERR_INTERNAL, "mk_config_load_ini: NULL argument");
    FILE *f = fopen(path, "r");
    if (!f) return MK_FAIL(MK_ERR_INPUT, "cannot open schedule '%s': %s", path, strerror(errno));

    /* Parse into a copy so that a bad file leaves cfg as it was. */
    mk_config work = *cfg;
    ini_state st = { .cfg = &work, .path = path, .f = f };
    int syntax = ini_parse_stream(ini_read_line, &st, ini_on_value, &st);
    int rc = MK_OK;
    if (st.read_errno) {
        rc = MK_FAIL(MK_ERR_INPUT, "cannot read schedule '%s': %s", path,
                     strerror(st.read_errno));
    } else {
        if (syntax > 0 && !st.binary) /* a binary file was reported once, by its byte */
            MK_FAIL(MK_ERR_USAGE, "%s:%d: not a '[section]', 'key = value' or comment line",
                    path, syntax);
        else if (syntax < 0)
            rc = MK_FAIL(MK_ERR_NOMEM, "%s: libinih could not allocate its line buffer", path);
        if (st.errors >= MAX_ERRORS)
            MK_FAIL(MK_ERR_USAGE, "%s: too many errors, stopped reading", path);
        if (rc == MK_OK && (syntax > 0 || st.errors)) rc = MK_ERR_USAGE;
    }
    fclose(f);
    if (rc == MK_OK) *cfg = work;
    return rc;
}

/* Every key, grouped by section (in the order sections first appear in table[]), each
 * under its doc line. Values come from format_value, so loading the file gives back cfg;
 * a string value longer than libinih's line buffer (about 200 characters) is the one
 * exception, and mk_config_load_ini says so rather than misreading it. */
int mk_config_write_ini(const mk_config *cfg, FILE *f)
{
    if (!cfg || !f) return MK_FAIL(MK_ERR_INTERNAL, "mk_config_write_ini: NULL argument");
    char value[MK_PATH_MAX + 1];
    fprintf(f, "; moekit schedule: every setting (docs/settings.md explains them)\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *key = table[i].info.key;
        int seclen = (int)(name_part(key) - key - 1);
        size_t first = 0;
        while (strncmp(table[first].info.key, key, (size_t)seclen + 1) != 0) first++;
        if (first < i) continue; /* this section was written with its first key */
        fprintf(f, "\n[%.*s]\n", seclen, key);
        for (size_t j = i; j < N_SETTINGS; j++) {
            const setting *s = &table[j];
            if (strncmp(s->info.key, key, (size_t)seclen + 1) != 0) continue;
            format_value(cfg, s, value, sizeof value);
            fprintf(f, "; %s\n%s =%s%s\n", s->info.doc, name_part(s->info.key),
                    *value ? " " : "", value);
        }
    }
    if (fflush(f) != 0 || ferror(f))
        return MK_FAIL(MK_ERR_IO, "cannot write schedule: %s", strerror(errno));
    return MK_OK;
}

/* ------------------------------------------------------------------ validation */

/* Each field against its own range, for configs that did not come through the parser
 * (built in code, read from an old checkpoint). */
static int validate_one(const mk_config *cfg, const setting *s, const char *origin)
{
    char text[64];
    const void *p = cfield(cfg, s);
    switch (s->info.type) {
    case MK_SET_INT:
        snprintf(text, sizeof text, "%d", *(const int *)p);
        return check_range(s, *(const int *)p, text, origin);
    case MK_SET_DOUBLE: {
        double v = *(const double *)p;
        format_double(v, text, sizeof text);
        if (!isfinite(v)) return fail_value(s, text, origin, "is not a finite number");
        return check_range(s, v, text, origin);
    }
    case MK_SET_BOOL:
        if (*(const int *)p != 0 && *(const int *)p != 1)
            return MK_FAIL(MK_ERR_USAGE, "%s: %s: %d is not a boolean (0 or 1)", origin, s->info.key,
                           *(const int *)p);
        return MK_OK;
    case MK_SET_ENUM:
        if (get_enum(cfg, s) < 0 || (size_t)get_enum(cfg, s) >= n_names(s))
            return MK_FAIL(MK_ERR_USAGE, "%s: %s: %ld is not a valid value", origin, s->info.key,
                           get_enum(cfg, s));
        return MK_OK;
    case MK_SET_STRING:
        if (!memchr(p, '\0', s->size))
            return MK_FAIL(MK_ERR_USAGE, "%s: %s: the string is not NUL-terminated",
                           origin, s->info.key);
        return MK_OK;
    case MK_SET_ULONG:
        return MK_OK;
    }
    return MK_OK;
}

int mk_config_validate(const mk_config *cfg) { return mk_config_validate_in(cfg, NULL); }

/* Reports every broken rule, one line each, then returns MK_ERR_USAGE if there was one.
 * Each line starts with origin, so a rule broken by two keys still names the file. */
int mk_config_validate_in(const mk_config *cfg, const char *origin)
{
    if (!cfg) return MK_FAIL(MK_ERR_INTERNAL, "mk_config_validate: NULL argument");
    const char *o = origin ? origin : "config", *sep = origin ? ": " : "";
    if (!origin) origin = "";
    int bad = 0;
    for (size_t i = 0; i < N_SETTINGS; i++) bad |= validate_one(cfg, &table[i], o) != MK_OK;
    if (bad) return MK_ERR_USAGE; /* the rules below divide by these fields */

    const int D = cfg->model.d_model, H = cfg->model.heads;
    if (D % H != 0)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%smodel.d_model = %d is not a multiple of model.heads = %d", origin, sep,
                       D, H);
    else if ((D / H) % 2 != 0)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%smodel.d_model / model.heads = %d / %d = %d is the head"
                       " size, which must be even (RoPE rotates pairs)", origin, sep, D, H, D / H);
    if (cfg->model.topk > cfg->model.experts)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%smodel.topk = %d is more than model.experts = %d", origin, sep,
                       cfg->model.topk, cfg->model.experts);
    if (cfg->model.experts % cfg->parallel.ep != 0)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%smodel.experts = %d is not a multiple of parallel.ep = %d"
                       " (each rank of an expert-parallel group holds experts/ep experts)", origin, sep,
                       cfg->model.experts, cfg->parallel.ep);
    if (cfg->train.warmup > cfg->train.steps)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%strain.warmup = %d is more than train.steps = %d", origin, sep,
                       cfg->train.warmup, cfg->train.steps);
    if (cfg->lbl.micro_coeff > 0 && cfg->lbl.mode != MK_LBL_GLOBAL &&
        cfg->lbl.mode != MK_LBL_GLOBAL_EXACT)
        bad |= MK_FAIL(MK_ERR_USAGE, "%s%slbl.micro_coeff > 0 adds a micro-batch LBL next to a"
                       " global one, so it needs lbl.mode = global or global-exact, not %s", origin, sep,
                       mk_lbl_mode_name(cfg->lbl.mode));
    if (cfg->train.backend == MK_BACKEND_CPU && cfg->train.precision == MK_PRECISION_BF16)
        bad |= MK_FAIL(MK_ERR_USAGE, "train.precision = bf16 needs train.backend = cuda (the CPU"
                       " backend computes in fp32)");
    /* model.vocab >= 2 and model.seq_len >= 2 are the table's minimums, checked above. */
    return bad ? MK_ERR_USAGE : MK_OK;
}
