/* fuzz_sbatch.c - the sbatch command builder of moe-submit (bin/mk_sbatch.c).
 *
 * Input: a flags byte, then up to 11 values separated by 0x01 bytes (a value is a C string,
 * so a NUL ends it, as it would end an argv element): cwd, run.dir, jobs dir, partition,
 * account, time, schedule, data.path, bin dir, the --set list, the --corpus list.
 * Properties of a build that succeeds:
 *   - no argv element holds a newline or another control character; every element
 *     between sbatch and the script is a --option, and the script path is absolute;
 *   - the dry-run text (mk_sbatch_print), split into words by a POSIX shell-word splitter,
 *     gives back exactly the argv elements, none of them subject to expansion, except the
 *     dependency, which is the documented "${PREV_id%%;*}" form;
 *   - the values arrive unchanged: --partition=P, --account=A, --time=T, --chdir=CWD,
 *     --output=RUN (with % doubled), JOBS/NAME.sbatch, and --export=ALL,...,NAME=VALUE,...;
 *   - with a real job id the dependency element is --dependency=afterok:ID.
 * And a value with a newline is always refused. */
#include "fuzz_common.h"

#include "mk_error.h"
#include "mk_sbatch.h"

enum { NV = 11 };

/* One word of POSIX sh: its unquoted value, and whether the shell would expand something
 * in it ($ or ` outside single quotes, or an unquoted glob, tilde or operator character). */
typedef struct {
    char *value;
    size_t len;
    const char *raw;
    size_t raw_len;
    int expands;
} word;

/* Split s from *pos up to an unquoted ')' (returned in *pos). Returns the word count, or -1
 * for a syntax the renderer must never produce (an unterminated quote). */
static int split_words(const char *s, size_t n, size_t *pos, word *w, int maxw)
{
    size_t i = *pos;
    int nw = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
        if (i >= n) return -1;
        if (s[i] == ')') {
            *pos = i + 1;
            return nw;
        }
        if (nw == maxw) return -1;
        word *cur = &w[nw++];
        cur->value = malloc(n + 1);
        FUZZ_ASSERT(cur->value != NULL, "malloc");
        cur->len = 0;
        cur->raw = s + i;
        cur->expands = 0;
        int start = 1;
        while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != ')') {
            char c = s[i];
            if (c == '\'') {
                size_t j = i + 1;
                while (j < n && s[j] != '\'') cur->value[cur->len++] = s[j++];
                if (j >= n) return -1;
                i = j + 1;
            } else if (c == '"') {
                size_t j = i + 1;
                while (j < n && s[j] != '"') {
                    if (s[j] == '$' || s[j] == '`') cur->expands = 1;
                    if (s[j] == '\\' && j + 1 < n && strchr("$`\"\\\n", s[j + 1])) j++;
                    cur->value[cur->len++] = s[j++];
                }
                if (j >= n) return -1;
                i = j + 1;
            } else if (c == '\\') {
                if (i + 1 >= n) return -1;
                if (s[i + 1] != '\n') cur->value[cur->len++] = s[i + 1];
                i += 2;
            } else {
                if (strchr("$`*?[|&;<>(\n", c) || (start && (c == '~' || c == '#'))) cur->expands = 1;
                cur->value[cur->len++] = c;
                i++;
            }
            start = 0;
        }
        cur->raw_len = (size_t)(s + i - cur->raw);
        cur->value[cur->len] = '\0';
    }
}

static char *join(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    FUZZ_ASSERT(s != NULL, "malloc");
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

static int has_arg(const mk_sbatch_cmd *c, const char *want)
{
    for (int a = 0; a < c->argc; a++)
        if (strcmp(c->argv[a], want) == 0) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 14) return 0;
    uint8_t flags = data[0];
    char *buf = malloc(size);
    FUZZ_ASSERT(buf != NULL, "malloc");
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    const char *v[NV];
    int nv = 0;
    char *p = buf;
    v[nv++] = p;
    for (size_t i = 0; i + 1 < size && nv < NV; i++)
        if (buf[i] == '\x01') {
            buf[i] = '\0';
            v[nv++] = buf + i + 1;
        }
    while (nv < NV) v[nv++] = "";

    mk_sbatch_spec spec = {
        .cwd = v[0], .run_dir = v[1], .jobs_dir = v[2],
        .partition = (flags & 1) ? v[3] : NULL,
        .account = (flags & 2) ? v[4] : NULL,
        .timelimit = (flags & 4) ? v[5] : NULL,
        .nodes = 1 + (flags >> 6), .tasks = 1 + ((flags >> 4) & 3), .gpus = (flags >> 3) & 1,
        .schedule = v[6], .dataset = v[7], .bin_dir = v[8], .set_list = v[9], .corpus_list = v[10],
        .dataset_from_schedule = (flags >> 5) & 1,
    };
    int newline = 0;
    const char *checked[] = { spec.cwd, spec.run_dir, spec.jobs_dir, spec.partition, spec.account,
                              spec.timelimit, spec.schedule, spec.bin_dir, spec.set_list,
                              spec.corpus_list, spec.dataset };
    for (size_t i = 0; i < sizeof checked / sizeof *checked; i++)
        if (checked[i] && strpbrk(checked[i], "\n\r")) newline = 1;

    mk_sbatch_cmd cmds[MK_SBATCH_JOBS];
    int rc = mk_sbatch_build(&spec, cmds);
    if (rc != MK_OK) {
        FUZZ_ASSERT(rc == MK_ERR_USAGE, "build failed with %d", rc);
        free(buf);
        return 0;
    }
    FUZZ_ASSERT(!newline, "a value with a newline was accepted");

    for (int j = 0; j < MK_SBATCH_JOBS; j++)
        for (int a = 0; a < cmds[j].argc; a++)
            for (const unsigned char *q = (const unsigned char *)cmds[j].argv[a]; *q; q++)
                FUZZ_ASSERT(*q >= 0x20 && *q != 0x7f, "control character 0x%02x in argv[%d] of job %d", *q, a, j);

    /* The values, unchanged. */
    for (int j = 0; j < MK_SBATCH_JOBS; j++) {
        const mk_sbatch_cmd *c = &cmds[j];
        char *e;
        e = join("--chdir=", spec.cwd, "");
        FUZZ_ASSERT(has_arg(c, e), "--chdir of job %d", j);
        free(e);
        if (spec.partition) {
            e = join("--partition=", spec.partition, "");
            FUZZ_ASSERT(has_arg(c, e), "--partition of job %d", j);
            free(e);
        }
        if (spec.account) {
            e = join("--account=", spec.account, "");
            FUZZ_ASSERT(has_arg(c, e), "--account of job %d", j);
            free(e);
        }
        if (j == 1 && spec.timelimit) {
            e = join("--time=", spec.timelimit, "");
            FUZZ_ASSERT(has_arg(c, e), "--time");
            free(e);
        }
        char script[64];
        snprintf(script, sizeof script, "/%s.sbatch", mk_sbatch_names[j]);
        e = join(spec.jobs_dir, script, "");
        FUZZ_ASSERT(strcmp(c->argv[c->argc - 1], e) == 0, "script of job %d", j);
        free(e);
        /* --output: run.dir with every % doubled, then the pattern. */
        const char *out = NULL;
        for (int a = 0; a < c->argc - 2; a++)
            if (strncmp(c->argv[a], "--output=", 9) == 0) out = c->argv[a] + 9;
        FUZZ_ASSERT(c->argv[c->argc - 1][0] == '/', "job %d: the script is not an absolute path", j);
        for (int a = 1; a < c->argc - 1; a++)
            FUZZ_ASSERT(strncmp(c->argv[a], "--", 2) == 0, "job %d: argv[%d] is not an option", j, a);
        FUZZ_ASSERT(out != NULL, "no --output");
        const char *r = spec.run_dir;
        while (*r) {
            FUZZ_ASSERT(*out == *r, "--output differs from run.dir");
            if (*r == '%') {
                out++;
                FUZZ_ASSERT(*out == '%', "a %% of run.dir is not doubled");
            }
            out++;
            r++;
        }
        FUZZ_ASSERT(strcmp(out, "/slurm-%x-%j.out") == 0, "--output tail %s", out);
        /* --export: NAME=VALUE items, none containing a comma, in order. */
        const char *ex = c->argv[c->argc - 2];
        FUZZ_ASSERT(strncmp(ex, "--export=ALL", 12) == 0, "no --export before the script");
        const struct { const char *name, *value; } want[] = {
            { "MOEKIT_SCHEDULE", spec.schedule }, { "MOEKIT_RUN_DIR", spec.run_dir },
            { "MOEKIT_DATASET", spec.dataset }, { "MOEKIT_BIN", spec.bin_dir },
            { "MOEKIT_SET", spec.set_list }, { "MOEKIT_CORPUS", spec.corpus_list },
        };
        const char *x = ex + 12;
        for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
            char *item = join(",", want[k].name, "=");
            if (k == 2 && strncmp(x, item, strlen(item)) != 0) {
                /* data.path left to the schedule: only when allowed and it has a comma. */
                FUZZ_ASSERT(spec.dataset_from_schedule && strchr(spec.dataset, ','), "MOEKIT_DATASET missing");
                free(item);
                continue;
            }
            FUZZ_ASSERT(strncmp(x, item, strlen(item)) == 0, "export %s missing", want[k].name);
            x += strlen(item);
            size_t vl = strlen(want[k].value);
            FUZZ_ASSERT(strncmp(x, want[k].value, vl) == 0 && (x[vl] == ',' || x[vl] == '\0'),
                        "export %s has another value", want[k].name);
            FUZZ_ASSERT(!memchr(x, ',', vl), "export %s value holds a comma", want[k].name);
            x += vl;
            free(item);
        }
        FUZZ_ASSERT(*x == '\0', "extra text after the exports");
    }

    /* The dry-run text re-parses to the argv. */
    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    FUZZ_ASSERT(f != NULL, "open_memstream");
    mk_sbatch_print(f, cmds);
    fclose(f);
    size_t pos = 0;
    for (int j = 0; j < MK_SBATCH_JOBS; j++) {
        char head[32];
        snprintf(head, sizeof head, "%s_id=$(", mk_sbatch_names[j]);
        FUZZ_ASSERT(strncmp(text + pos, head, strlen(head)) == 0, "line %d does not start with %s", j, head);
        pos += strlen(head);
        word w[MK_SBATCH_MAX_ARGS];
        int nw = split_words(text, tlen, &pos, w, MK_SBATCH_MAX_ARGS);
        FUZZ_ASSERT(nw == cmds[j].argc, "job %d: %d words for %d argv elements", j, nw, cmds[j].argc);
        for (int a = 0; a < nw; a++) {
            if (a == cmds[j].dep_arg) {
                char dep[80];
                snprintf(dep, sizeof dep, "--dependency=afterok:\"${%s_id%%%%;*}\"", mk_sbatch_names[j - 1]);
                FUZZ_ASSERT(w[a].raw_len == strlen(dep) && memcmp(w[a].raw, dep, w[a].raw_len) == 0,
                            "job %d: dependency word", j);
            } else {
                FUZZ_ASSERT(!w[a].expands, "job %d: word %d would be expanded by sh", j, a);
                FUZZ_ASSERT(w[a].len == strlen(cmds[j].argv[a]) && memcmp(w[a].value, cmds[j].argv[a], w[a].len) == 0,
                            "job %d: word %d re-parses to another string", j, a);
            }
        }
        for (int a = 0; a < nw; a++) free(w[a].value);
        FUZZ_ASSERT(pos < tlen && text[pos] == '\n', "job %d: line does not end after ')'", j);
        pos++;
    }
    FUZZ_ASSERT(pos == tlen, "text after the three lines");
    free(text);

    FUZZ_ASSERT(mk_sbatch_set_dependency(&cmds[1], "4101") == MK_OK && has_arg(&cmds[1], "--dependency=afterok:4101"),
                "dependency of the training job");
    mk_sbatch_free(cmds);
    free(buf);
    return 0;
}
