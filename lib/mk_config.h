/* mk_config.h - run settings: defaults, INI schedules, --set overrides, validation.
 *
 * One table (mk_config.c) lists every setting with its DESIGN section 8 name, type,
 * default, range and one-line doc. The INI reader, --set, the checkpoint /config group,
 * `moe-train --help-settings` and docs/settings.md are all driven by that table, so a
 * setting is added in exactly one place.
 *
 * Keys are "section.key". An INI file "[model]\nd_model = 64" sets model.d_model.
 * Unknown keys, bad values and out-of-range values are MK_ERR_USAGE errors whose message
 * names the file and line (or "--set") and the key.
 */
#ifndef MK_CONFIG_H
#define MK_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define MK_PATH_MAX 4096

typedef enum { MK_LBL_NONE = 0, MK_LBL_MICRO, MK_LBL_GLOBAL, MK_LBL_GLOBAL_EXACT } mk_lbl_mode;
typedef enum { MK_LR_CONSTANT = 0, MK_LR_COSINE, MK_LR_WSD } mk_lr_schedule;
typedef enum { MK_BACKEND_CPU = 0, MK_BACKEND_CUDA } mk_backend_kind;
/* auto: fp32 on the CPU, bf16 on CUDA. bf16: GEMM operands rounded to bf16 on tensor cores,
 * fp32 accumulation, fp32 master weights and optimizer state. */
typedef enum { MK_PRECISION_AUTO = 0, MK_PRECISION_FP32, MK_PRECISION_BF16 } mk_precision;

typedef struct mk_config {
    struct {
        int vocab, d_model, layers, heads, experts, topk, ffn, shared_ffn, seq_len;
        int tie_embeddings;                 /* bool */
    } model;
    struct {
        int norm_topk;                      /* bool */
        double zloss_coeff;
        double capacity_factor;             /* 0 = dropless */
    } router;
    struct {
        mk_lbl_mode mode;
        double coeff;                       /* coefficient of lbl.mode's LBL */
        double micro_coeff;                 /* extra micro LBL next to global (paper Sec. 5) */
    } lbl;
    struct {
        int micro_batch, grad_accum, steps, warmup;
        unsigned long seed;
        double lr, min_lr_ratio, decay_frac, weight_decay, grad_clip;
        double beta1, beta2, eps;
        mk_lr_schedule lr_schedule;
        int threads;                        /* 0 = OMP default */
        mk_backend_kind backend;
        mk_precision precision;
    } train;
    struct {
        int ep;
        double timeout;                     /* seconds; 0 = no watchdog */
    } parallel;
    struct {
        char path[MK_PATH_MAX];
        char mixture[256];
        int repeat_cap;                     /* most epochs of any domain, 0 = no cap */
        char tokenizer[MK_PATH_MAX];        /* "" = the dataset's; byte, bpe:SHA256 or a ranks file */
    } data;
    struct {
        char dir[MK_PATH_MAX];
    } run;
    struct {
        int every, keep;
    } ckpt;
    struct {
        int every;
    } log;
    struct {
        int every;
    } eval;
} mk_config;

typedef enum { MK_SET_INT, MK_SET_ULONG, MK_SET_DOUBLE, MK_SET_BOOL, MK_SET_STRING, MK_SET_ENUM } mk_setting_type;

typedef struct mk_setting_info {
    const char *key;          /* "model.d_model" */
    mk_setting_type type;
    const char *default_text; /* the default, as it would be written in an INI file */
    const char *doc;          /* one line for --help-settings and docs/settings.md */
} mk_setting_info;

/* Fill cfg with every setting's documented default. Cannot fail. */
void mk_config_defaults(mk_config *cfg);

/* Read an INI schedule into cfg (on top of what is there). MK_ERR_INPUT if the file
 * cannot be read, MK_ERR_USAGE for an unknown key or bad value (message: path:line: key). */
int mk_config_load_ini(mk_config *cfg, const char *path);

/* Apply one "section.key=value". origin names the source in messages ("--set"). */
int mk_config_set(mk_config *cfg, const char *assignment, const char *origin);

/* Apply key and value separately (what load_ini and set both use). */
int mk_config_set_kv(mk_config *cfg, const char *key, const char *value, const char *origin);

/* Cross-setting checks (d_model % heads, even head size, topk <= experts, ep | experts,
 * ...). MK_ERR_USAGE naming the key(s) on failure. */
int mk_config_validate(const mk_config *cfg);
/* The same, each message starting with "origin: " (where the settings came from, e.g.
 * "s.ini + --set"); NULL for none. */
int mk_config_validate_in(const mk_config *cfg, const char *origin);

/* The value of key formatted as it would appear in an INI file. MK_ERR_USAGE for an
 * unknown key. */
int mk_config_get_text(const mk_config *cfg, const char *key, char *buf, size_t n);

/* Write cfg as a complete INI schedule (every key, grouped by section). */
int mk_config_write_ini(const mk_config *cfg, FILE *f);

/* The settings table: count and entry i (0 <= i < count). */
size_t mk_config_setting_count(void);
const mk_setting_info *mk_config_setting(size_t i);

const char *mk_lbl_mode_name(mk_lbl_mode m);

#endif
