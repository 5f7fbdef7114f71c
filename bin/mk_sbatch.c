/* mk_sbatch.c - the sbatch argv arrays of moe-submit (see mk_sbatch.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_sbatch.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"

const char *const mk_sbatch_names[MK_SBATCH_JOBS] = { "shard", "train", "report" };

#define DEP_PREFIX "--dependency=afterok:"

const char *mk_sbatch_bad_char(const char *v, int in_list)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == ',') return "a comma";
        if (*p == '"' || *p == '\'') return "a quote";
        if (*p == '\n' || *p == '\r') return "a newline";
        if (*p < 0x20 || *p == 0x7f) return "a control character";
        if (in_list && *p == ' ') return "a space";
    }
    return NULL;
}

/* Values that only become argv elements (never exported) may hold anything printable: the
 * quoting of mk_sbatch_print and execvp carry them. A newline or another control character
 * is still refused: sbatch and the job logs are line-oriented, and a value that looks like
 * two lines in the dry-run is a trap for whoever pastes it. */
static const char *bad_arg_char(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '\n' || *p == '\r') return "a newline";
        if (*p < 0x20 || *p == 0x7f) return "a control character";
    }
    return NULL;
}

/* "%" is a replacement symbol in sbatch --output names; "%%" is a literal one. */
static char *escape_percent(const char *in)
{
    size_t n = strlen(in), extra = 0;
    for (const char *p = in; *p; p++) extra += *p == '%';
    char *out = malloc(n + extra + 1);
    if (!out) return NULL;
    size_t j = 0;
    for (const char *p = in; *p; p++) {
        if (*p == '%') out[j++] = '%';
        out[j++] = *p;
    }
    out[j] = '\0';
    return out;
}

static int cmd_add(mk_sbatch_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cmd_add(mk_sbatch_cmd *c, const char *fmt, ...)
{
    if (c->argc >= MK_SBATCH_MAX_ARGS - 1)
        return MK_FAIL(MK_ERR_INTERNAL, "sbatch command: more than %d arguments", MK_SBATCH_MAX_ARGS - 1);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0) return MK_FAIL(MK_ERR_INTERNAL, "sbatch command: cannot format an argument");
    char *s = malloc((size_t)len + 1);
    if (!s) return MK_FAIL(MK_ERR_NOMEM, "sbatch command: out of memory");
    va_start(ap, fmt);
    vsnprintf(s, (size_t)len + 1, fmt, ap);
    va_end(ap);
    c->argv[c->argc++] = s;
    c->argv[c->argc] = NULL;
    return MK_OK;
}

/* --export=ALL,NAME=VALUE,...: every value checked, in a heap buffer of the right size. The
 * two lists hold items separated by spaces; main() checks each item with in_list = 1. */
static int build_exports(const mk_sbatch_spec *s, char **out)
{
    const struct { const char *name, *what, *value; } exports[] = {
        { "MOEKIT_SCHEDULE", "the schedule path", s->schedule },
        { "MOEKIT_RUN_DIR", "run.dir", s->run_dir },
        { "MOEKIT_DATASET", "data.path", s->dataset },
        { "MOEKIT_BIN", "the program directory (MOEKIT_BIN)", s->bin_dir },
        { "MOEKIT_SET", "--set", s->set_list },
        { "MOEKIT_CORPUS", "--corpus", s->corpus_list },
    };
    enum { N = sizeof exports / sizeof *exports };
    int skip[N] = { 0 };
    size_t len = strlen("--export=ALL") + 1;
    for (size_t i = 0; i < N; i++) {
        const char *v = exports[i].value ? exports[i].value : "";
        const char *why = mk_sbatch_bad_char(v, 0);
        if (why && s->dataset_from_schedule && strcmp(exports[i].name, "MOEKIT_DATASET") == 0 &&
            strcmp(why, "a comma") == 0 && !bad_arg_char(v)) {
            skip[i] = 1; /* several existing sources: the jobs read data.path from the schedule */
            continue;
        }
        if (why)
            return MK_FAIL(MK_ERR_USAGE, "%s = %s contains %s, which sbatch --export cannot pass"
                           " to the jobs (%s); rename it", exports[i].what, v, why, exports[i].name);
        len += 1 + strlen(exports[i].name) + 1 + strlen(v);
    }
    char *buf = malloc(len);
    if (!buf) return MK_FAIL(MK_ERR_NOMEM, "sbatch command: out of memory");
    size_t used = (size_t)snprintf(buf, len, "--export=ALL");
    for (size_t i = 0; i < N; i++)
        if (!skip[i])
            used += (size_t)snprintf(buf + used, len - used, ",%s=%s", exports[i].name,
                                     exports[i].value ? exports[i].value : "");
    *out = buf;
    return MK_OK;
}

int mk_sbatch_build(const mk_sbatch_spec *s, mk_sbatch_cmd cmds[MK_SBATCH_JOBS])
{
    memset(cmds, 0, MK_SBATCH_JOBS * sizeof *cmds);
    const struct { const char *what, *value; } args[] = {
        { "the working directory", s->cwd },
        { "--jobs-dir", s->jobs_dir },
        { "--partition", s->partition },
        { "--account", s->account },
        { "--time", s->timelimit },
        { "run.dir", s->run_dir },
    };
    for (size_t i = 0; i < sizeof args / sizeof *args; i++) {
        const char *why = args[i].value ? bad_arg_char(args[i].value) : NULL;
        if (why)
            return MK_FAIL(MK_ERR_USAGE, "%s = %s contains %s, which moe-submit does not put on an"
                           " sbatch command line; rename it", args[i].what, args[i].value, why);
    }
    /* The script is the one bare argument: relative, or starting with '-', sbatch would take
     * it for an option. main() passes realpath()s, so this only catches misuse. */
    if (!s->jobs_dir || s->jobs_dir[0] != '/' || !s->cwd || s->cwd[0] != '/' || !s->run_dir || s->run_dir[0] != '/')
        return MK_FAIL(MK_ERR_USAGE, "sbatch command: the job script directory, working directory and"
                       " run.dir must be absolute paths");
    char *exports = NULL, *run_pct = escape_percent(s->run_dir);
    int rc = run_pct ? build_exports(s, &exports) : MK_FAIL(MK_ERR_NOMEM, "sbatch command: out of memory");
    for (int j = 0; j < MK_SBATCH_JOBS && rc == MK_OK; j++) {
        mk_sbatch_cmd *k = &cmds[j];
        k->dep_arg = -1;
        rc = cmd_add(k, "sbatch");
        if (!rc) rc = cmd_add(k, "--parsable");
        if (!rc) rc = cmd_add(k, "--job-name=moe-%s", mk_sbatch_names[j]);
        if (!rc && j > 0) {
            k->dep_arg = k->argc;
            rc = cmd_add(k, DEP_PREFIX "@PREV@"); /* mk_sbatch_set_dependency fills it in */
            if (!rc) rc = cmd_add(k, "--kill-on-invalid-dep=yes");
        }
        if (!rc) rc = cmd_add(k, "--chdir=%s", s->cwd);
        if (!rc) rc = cmd_add(k, "--output=%s/slurm-%%x-%%j.out", run_pct);
        if (!rc) rc = cmd_add(k, "--open-mode=append");
        if (!rc && s->partition) rc = cmd_add(k, "--partition=%s", s->partition);
        if (!rc && s->account) rc = cmd_add(k, "--account=%s", s->account);
        if (!rc && j == 0) {
            rc = cmd_add(k, "--nodes=1");
            if (!rc) rc = cmd_add(k, "--ntasks-per-node=%d", s->tasks);
        }
        if (!rc && j == 1) {
            rc = cmd_add(k, "--nodes=%d", s->nodes);
            if (!rc) rc = cmd_add(k, "--ntasks-per-node=%d", s->tasks);
            if (!rc && s->gpus > 0) rc = cmd_add(k, "--gpus-per-node=%d", s->gpus);
            if (!rc && s->timelimit) rc = cmd_add(k, "--time=%s", s->timelimit);
        }
        if (!rc && j == 2) {
            rc = cmd_add(k, "--nodes=1");
            if (!rc) rc = cmd_add(k, "--ntasks=1");
        }
        if (!rc) rc = cmd_add(k, "%s", exports);
        if (!rc) rc = cmd_add(k, "%s/%s.sbatch", s->jobs_dir, mk_sbatch_names[j]);
    }
    free(exports);
    free(run_pct);
    if (rc) mk_sbatch_free(cmds);
    return rc;
}

int mk_sbatch_set_dependency(mk_sbatch_cmd *c, const char *prev_id)
{
    if (c->dep_arg < 0) return MK_OK;
    size_t n = strlen(DEP_PREFIX) + strlen(prev_id) + 1;
    char *s = malloc(n);
    if (!s) return MK_FAIL(MK_ERR_NOMEM, "sbatch command: out of memory");
    snprintf(s, n, DEP_PREFIX "%s", prev_id);
    free(c->argv[c->dep_arg]);
    c->argv[c->dep_arg] = s;
    return MK_OK;
}

/* Shell-quote s: bare when it only has characters that need no quoting, else in single
 * quotes, with each ' written as '\''. */
static void print_quoted(FILE *f, const char *s)
{
    int plain = *s != '\0';
    for (const char *p = s; *p && plain; p++)
        plain = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                       "_@%+=:,./-", *p) != NULL;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++) {
        if (*p == '\'') fputs("'\\''", f);
        else fputc(*p, f);
    }
    fputc('\'', f);
}

void mk_sbatch_print(FILE *f, const mk_sbatch_cmd cmds[MK_SBATCH_JOBS])
{
    for (int j = 0; j < MK_SBATCH_JOBS; j++) {
        fprintf(f, "%s_id=$(", mk_sbatch_names[j]);
        for (int a = 0; a < cmds[j].argc; a++) {
            if (a) fputc(' ', f);
            if (a == cmds[j].dep_arg && j > 0)
                fprintf(f, DEP_PREFIX "\"${%s_id%%%%;*}\"", mk_sbatch_names[j - 1]);
            else
                print_quoted(f, cmds[j].argv[a]);
        }
        fputs(")\n", f);
    }
}

void mk_sbatch_free(mk_sbatch_cmd cmds[MK_SBATCH_JOBS])
{
    for (int j = 0; j < MK_SBATCH_JOBS; j++) {
        for (int a = 0; a < cmds[j].argc; a++) free(cmds[j].argv[a]);
        cmds[j].argc = 0;
        cmds[j].argv[0] = NULL;
    }
}
