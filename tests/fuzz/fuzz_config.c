/* fuzz_config.c - the schedule INI reader, --set and validation (lib/mk_config.c).
 *
 * Input: an INI file, optionally followed by a line "--" and one --set assignment per line.
 * Properties: a failed load leaves the configuration untouched; after a successful load
 * and sets, every key formats (mk_config_get_text), and mk_config_write_ini writes a file
 * that loads back to the same values (a string longer than libinih's line may be refused,
 * as documented, but never misread). */
#include "fuzz_common.h"

#include "mk_config.h"
#include "mk_error.h"

static int same_config(const mk_config *a, const mk_config *b)
{
    char x[MK_PATH_MAX + 64], y[MK_PATH_MAX + 64];
    for (size_t i = 0; i < mk_config_setting_count(); i++) {
        const char *key = mk_config_setting(i)->key;
        if (mk_config_get_text(a, key, x, sizeof x) != MK_OK || mk_config_get_text(b, key, y, sizeof y) != MK_OK)
            return 0;
        if (strcmp(x, y) != 0) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16) return 0;
    const uint8_t *sep = NULL;
    for (size_t i = 0; i + 4 <= size; i++)
        if (memcmp(data + i, "\n--\n", 4) == 0) {
            sep = data + i;
            break;
        }
    size_t ini_len = sep ? (size_t)(sep - data) + 1 : size;

    char path[300], back[300];
    fuzz_path(path, sizeof path, "schedule.ini");
    fuzz_path(back, sizeof back, "written.ini");
    fuzz_write(path, data, ini_len);

    mk_config cfg, before;
    mk_config_defaults(&cfg);
    before = cfg;
    int rc = mk_config_load_ini(&cfg, path);
    if (rc != MK_OK) {
        FUZZ_ASSERT(rc == MK_ERR_USAGE || rc == MK_ERR_INPUT, "load_ini returned %d", rc);
        FUZZ_ASSERT(memcmp(&cfg, &before, sizeof cfg) == 0, "a failed load changed the configuration");
        return 0;
    }
    if (sep) {
        const uint8_t *p = sep + 4, *end = data + size;
        while (p < end) {
            const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
            size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
            char *s = malloc(len + 1);
            FUZZ_ASSERT(s != NULL, "malloc");
            memcpy(s, p, len);
            s[len] = '\0'; /* an embedded NUL ends the string, as in argv */
            mk_config keep = cfg;
            int r = mk_config_set(&cfg, s, "--set");
            if (r != MK_OK) {
                FUZZ_ASSERT(r == MK_ERR_USAGE, "mk_config_set returned %d", r);
                FUZZ_ASSERT(memcmp(&cfg, &keep, sizeof cfg) == 0, "a failed --set changed the configuration");
            }
            free(s);
            p += len + 1;
        }
    }
    int v = mk_config_validate(&cfg);
    FUZZ_ASSERT(v == MK_OK || v == MK_ERR_USAGE, "validate returned %d", v);

    char text[MK_PATH_MAX + 64];
    for (size_t i = 0; i < mk_config_setting_count(); i++)
        FUZZ_ASSERT(mk_config_get_text(&cfg, mk_config_setting(i)->key, text, sizeof text) == MK_OK,
                    "get_text of %s", mk_config_setting(i)->key);

    FILE *f = fopen(back, "w");
    FUZZ_ASSERT(f != NULL, "fopen");
    FUZZ_ASSERT(mk_config_write_ini(&cfg, f) == MK_OK, "write_ini");
    fclose(f);
    mk_config again;
    mk_config_defaults(&again);
    int r2 = mk_config_load_ini(&again, back);
    if (r2 == MK_OK)
        FUZZ_ASSERT(same_config(&cfg, &again), "written schedule reads back differently");
    else {
        /* Only a long string value may stop the round trip. */
        int long_string = strlen(cfg.data.path) > 150 || strlen(cfg.data.mixture) > 150 ||
                          strlen(cfg.data.tokenizer) > 150 || strlen(cfg.run.dir) > 150;
        FUZZ_ASSERT(long_string, "written schedule does not load (%d)", r2);
    }
    return 0;
}
