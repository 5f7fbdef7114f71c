/* moe-submit - check a schedule, then submit shard -> train -> report as a Slurm job chain.
 *
 *   moe-submit SCHEDULE [--dry-run] [--nodes N] [--ntasks-per-node N] [--gpus-per-node N]
 *              [--partition P] [--account A] [--time T] [--jobs-dir DIR]
 *              [--set KEY=VALUE]... [--corpus NAME=PATH]...
 *
 * Everything that can be checked on the login node is checked before the first sbatch:
 * the schedule and the --set overrides (mk_config_load_ini, mk_config_set,
 * mk_config_validate), the dataset (data.path exists, or --corpus says how to build it),
 * the rank count against parallel.ep, and every value that travels to the jobs through
 * sbatch --export. A refusal prints one line and queues nothing.
 *
 * sbatch is started with fork + execvp and an argv array: no shell ever sees a schedule
 * value, so a value cannot run code. The job scripts (jobs/ *.sbatch) read their settings
 * from the MOEKIT_* environment variables set here and only expand them inside double
 * quotes (or, for the two lists, split on spaces with globbing off).
 */
#define _XOPEN_SOURCE 700 /* realpath */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mk_config.h"
#include "mk_error.h"
#include "mk_fs.h"
#include "mk_sbatch.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif
#ifndef MOEKIT_JOBS_DIR
#define MOEKIT_JOBS_DIR "" /* configure's $(pkgdatadir)/jobs, given by the Makefile */
#endif

#define PROG "moe-submit"
#define MAX_LIST 256        /* --set and --corpus arguments each */
#define TEXT_MAX (MK_PATH_MAX + 64)

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: moe-submit SCHEDULE [options]\n"
            "Check a schedule, then submit shard -> train -> report as Slurm jobs chained with\n"
            "--dependency=afterok (moekit " PACKAGE_VERSION ").\n"
            "\n"
            "  -n, --dry-run              check everything, print the sbatch commands, submit nothing\n"
            "  -N, --nodes N              nodes of the training job (default 1)\n"
            "  -t, --ntasks-per-node N    MPI ranks per node (default parallel.ep)\n"
            "  -g, --gpus-per-node N      GPUs per node of the training job (default: none asked)\n"
            "  -p, --partition P          Slurm partition of all three jobs\n"
            "  -A, --account A            Slurm account of all three jobs\n"
            "  -T, --time T               time limit of the training job (sbatch --time format)\n"
            "  -j, --jobs-dir DIR         where shard.sbatch, train.sbatch and report.sbatch are\n"
            "                             (default: $MOEKIT_JOBS_DIR, the installed jobs, ./jobs)\n"
            "  -S, --set KEY=VALUE        override one setting for the check and the training job\n"
            "  -c, --corpus NAME=PATH     a domain for moe-shard to build data.path from, if\n"
            "                             data.path does not exist yet (repeat for each domain)\n"
            "  -h, --help                 this help\n"
            "  -V, --version              print the version\n"
            "\n"
            "Prints 'shard ID', 'train ID' and 'report ID'. The training job checkpoints on the\n"
            "time-limit warning and on preemption, requeues itself and resumes with --resume auto.\n"
            "Job logs: RUN_DIR/slurm-NAME-JOBID.out. See moe-submit(1).\n"
            "\n"
            "Exit status: 0 ok, 2 usage (bad option, setting, rank count or a value sbatch cannot\n"
            "pass), 3 bad input (unreadable schedule, missing dataset, corpus or job script),\n"
            "4 sbatch failed (jobs submitted before the failure are cancelled).\n");
}

/* ================================================================== small helpers */

static int parse_count(const char *opt, const char *text, int min, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > 100000)
        return MK_FAIL(MK_ERR_USAGE, "%s: '%s' is not a whole number >= %d", opt, text, min);
    *out = (int)v;
    return MK_OK;
}

static int path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* An absolute version of p (relative to cwd); not resolved, so it need not exist. */
static int absolute(const char *cwd, const char *p, char *out, size_t n)
{
    int w = p[0] == '/' ? snprintf(out, n, "%s", p) : snprintf(out, n, "%s/%s", cwd, p);
    if (w < 0 || (size_t)w >= n) return MK_FAIL(MK_ERR_USAGE, "path too long: %s", p);
    return MK_OK;
}

/* Append "sep item" to a growing list (MOEKIT_SET, MOEKIT_CORPUS). */
static int list_add(char *list, size_t n, const char *item, const char *what)
{
    size_t len = strlen(list);
    int w = snprintf(list + len, n - len, "%s%s", len ? " " : "", item);
    if (w < 0 || (size_t)w >= n - len) return MK_FAIL(MK_ERR_USAGE, "too many or too long %s", what);
    return MK_OK;
}

/* ================================================================== checks */

/* data.path: comma-separated sources, each a moe-shard directory (with manifest.json),
 * NAME=PREFIX of a Megatron dataset (PREFIX.bin and PREFIX.idx) or a text file. */
static int check_dataset(const char *path, int have_corpus)
{
    if (!path[0])
        return MK_FAIL(MK_ERR_USAGE, "data.path is empty: set it in the schedule or with"
                       " --set data.path=DIR");
    if (have_corpus) {
        if (strchr(path, ',') || strchr(path, '='))
            return MK_FAIL(MK_ERR_USAGE, "data.path = %s: --corpus builds one dataset directory,"
                           " so data.path must be a single directory", path);
        if (path_exists(path) && !is_dir(path))
            return MK_FAIL(MK_ERR_INPUT, "data.path = %s exists and is not a dataset directory,"
                           " so --corpus cannot build it there", path);
        return MK_OK; /* built by the shard job, or there already (then the shard job skips) */
    }
    char buf[MK_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *save = NULL, *src = strtok_r(buf, ",", &save); src; src = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(src, '=');
        if (eq && (!strchr(src, '/') || strchr(src, '/') > eq)) { /* NAME=PREFIX */
            char f[MK_PATH_MAX + 8];
            const char *prefix = eq + 1;
            snprintf(f, sizeof f, "%s.bin", prefix);
            int ok = path_exists(f);
            snprintf(f, sizeof f, "%s.idx", prefix);
            ok = ok && path_exists(f);
            if (!ok)
                return MK_FAIL(MK_ERR_INPUT, "data.path: Megatron dataset %s: %s.bin or %s.idx"
                               " does not exist", src, prefix, prefix);
            continue;
        }
        if (!path_exists(src))
            return MK_FAIL(MK_ERR_INPUT, "data.path = %s does not exist: build it first with"
                           " moe-shard, or give --corpus NAME=PATH for each domain so the shard"
                           " job builds it", src);
        if (is_dir(src)) {
            char m[MK_PATH_MAX + 16];
            snprintf(m, sizeof m, "%s/manifest.json", src);
            if (!path_exists(m))
                return MK_FAIL(MK_ERR_INPUT, "data.path = %s is a directory without"
                               " manifest.json, so not a moe-shard dataset", src);
        }
    }
    return MK_OK;
}

/* The directory of the job scripts: --jobs-dir, $MOEKIT_JOBS_DIR, the installed one, ./jobs. */
static int find_jobs_dir(const char *opt, char *out, size_t n)
{
    static const char *const scripts[] = { "shard.sbatch", "train.sbatch", "report.sbatch" };
    const char *env = getenv("MOEKIT_JOBS_DIR");
    const char *dir, *from;
    if (opt) { dir = opt; from = "--jobs-dir"; }
    else if (env && env[0]) { dir = env; from = "$MOEKIT_JOBS_DIR"; }
    else if (MOEKIT_JOBS_DIR[0] && is_dir(MOEKIT_JOBS_DIR)) { dir = MOEKIT_JOBS_DIR; from = "the installed jobs"; }
    else { dir = "jobs"; from = "./jobs"; }
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return MK_FAIL(MK_ERR_INPUT, "job scripts: %s (%s): %s", dir, from, strerror(errno));
    for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++) {
        char f[PATH_MAX + 32];
        snprintf(f, sizeof f, "%s/%s", real, scripts[i]);
        if (access(f, R_OK) != 0)
            return MK_FAIL(MK_ERR_INPUT, "job scripts: %s (%s) has no readable %s", real, from,
                           scripts[i]);
    }
    if ((size_t)snprintf(out, n, "%s", real) >= n) return MK_FAIL(MK_ERR_USAGE, "path too long: %s", real);
    return MK_OK;
}

/* Where moe-train, moe-shard and moe-report are: $MOEKIT_BIN, else this program's own
 * directory (a libtool build runs it from .libs/, whose parent holds the wrappers). */
static void find_bin_dir(char *out, size_t n)
{
    const char *env = getenv("MOEKIT_BIN");
    out[0] = '\0';
    if (env && env[0]) {
        char real[PATH_MAX];
        snprintf(out, n, "%s", realpath(env, real) ? real : env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return;
    *slash = '\0';
    size_t l = strlen(exe);
    if (l >= 6 && strcmp(exe + l - 6, "/.libs") == 0) exe[l - 6] = '\0';
    snprintf(out, n, "%s", exe);
}

/* ================================================================== running sbatch */

/* Run argv (no shell), capture its stdout; the job id is the text up to ';' or newline. */
static int run_sbatch(const mk_sbatch_cmd *c, char *id, size_t n)
{
    int fd[2];
    if (pipe(fd) != 0) return MK_FAIL(MK_ERR_IO, "pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]); close(fd[1]);
        return MK_FAIL(MK_ERR_IO, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(fd[0]);
        if (dup2(fd[1], STDOUT_FILENO) < 0) _exit(127);
        close(fd[1]);
        execvp(c->argv[0], (char *const *)c->argv);
        fprintf(stderr, "moekit: error: cannot run %s: %s\n", c->argv[0], strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    char out[512];
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd[0], out + got, sizeof out - 1 - got)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0) got += (size_t)r;
    out[got] = '\0';
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return MK_FAIL(MK_ERR_IO, "%s %s failed (%s %d)", c->argv[0], c->argv[c->argc - 1],
                       WIFEXITED(status) ? "exit status" : "signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    size_t len = strcspn(out, ";\r\n");
    out[len] = '\0';
    int digits = len > 0;
    for (size_t i = 0; i < len && digits; i++) digits = out[i] >= '0' && out[i] <= '9';
    if (!digits || len >= n)
        return MK_FAIL(MK_ERR_IO, "%s %s printed '%s', not a job id", c->argv[0],
                       c->argv[c->argc - 1], out);
    memcpy(id, out, len + 1);
    return MK_OK;
}

/* Best effort: cancel jobs already queued when a later sbatch failed. */
static void cancel_jobs(char ids[][32], int count)
{
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execlp("scancel", "scancel", ids[i], (char *)NULL);
            _exit(127);
        }
        int status;
        if (pid > 0) while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        fprintf(stderr, PROG ": cancelled job %s\n", ids[i]);
    }
}

/* ================================================================== main */

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "dry-run", no_argument, NULL, 'n' },
        { "nodes", required_argument, NULL, 'N' },
        { "ntasks-per-node", required_argument, NULL, 't' },
        { "gpus-per-node", required_argument, NULL, 'g' },
        { "partition", required_argument, NULL, 'p' },
        { "account", required_argument, NULL, 'A' },
        { "time", required_argument, NULL, 'T' },
        { "jobs-dir", required_argument, NULL, 'j' },
        { "set", required_argument, NULL, 'S' },
        { "corpus", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int dry_run = 0, nodes = 1, tasks = 0, gpus = 0, rc, c;
    const char *partition = NULL, *account = NULL, *timelimit = NULL, *jobs_opt = NULL;
    const char *sets[MAX_LIST], *corpora[MAX_LIST];
    int n_sets = 0, n_corpora = 0;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":nN:t:g:p:A:T:j:S:c:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': dry_run = 1; break;
        case 'N': if ((rc = parse_count("--nodes", optarg, 1, &nodes))) return rc; break;
        case 't': if ((rc = parse_count("--ntasks-per-node", optarg, 1, &tasks))) return rc; break;
        case 'g': if ((rc = parse_count("--gpus-per-node", optarg, 0, &gpus))) return rc; break;
        case 'p': partition = optarg; break;
        case 'A': account = optarg; break;
        case 'T': timelimit = optarg; break;
        case 'j': jobs_opt = optarg; break;
        case 'S':
            if (n_sets == MAX_LIST) return MK_FAIL(MK_ERR_USAGE, "more than %d --set", MAX_LIST);
            sets[n_sets++] = optarg;
            break;
        case 'c':
            if (n_corpora == MAX_LIST) return MK_FAIL(MK_ERR_USAGE, "more than %d --corpus", MAX_LIST);
            corpora[n_corpora++] = optarg;
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf(PROG " (moekit) %s\n", PACKAGE_VERSION); return 0;
        default:
            if (c == ':')
                fprintf(stderr, PROG ": option '%s' needs an argument (try '" PROG " --help')\n", argv[optind - 1]);
            else if (optopt)
                fprintf(stderr, PROG ": unknown option '-%c' (try '" PROG " --help')\n", optopt);
            else
                fprintf(stderr, PROG ": unknown option '%s' (try '" PROG " --help')\n", argv[optind - 1]);
            return MK_ERR_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, PROG ": %s (try '" PROG " --help')\n",
                optind >= argc ? "missing SCHEDULE" : "exactly one SCHEDULE, please");
        return MK_ERR_USAGE;
    }
    const char *schedule = argv[optind];

    /* ---- the schedule, exactly as moe-train will see it */
    mk_config cfg;
    mk_config_defaults(&cfg);
    if ((rc = mk_config_load_ini(&cfg, schedule)) != MK_OK) return rc;
    for (int i = 0; i < n_sets; i++)
        if ((rc = mk_config_set(&cfg, sets[i], "--set")) != MK_OK) return rc;
    char origin[MK_PATH_MAX + 16];
    snprintf(origin, sizeof origin, "%s%s", schedule, n_sets ? " + --set" : "");
    if ((rc = mk_config_validate_in(&cfg, origin)) != MK_OK) return rc;

    /* Options that become sbatch arguments: each is one argv element (no shell), but a
     * control character would reach sbatch's own parser and the job's environment. */
    struct { const char *opt, *value; } plain[] = {
        { "--partition", partition }, { "--account", account }, { "--time", timelimit },
        { "--jobs-dir", jobs_opt },
    };
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        if (!plain[i].value) continue;
        for (const unsigned char *p = (const unsigned char *)plain[i].value; *p; p++)
            if (*p < 0x20 || *p == 0x7f)
                return MK_FAIL(MK_ERR_USAGE, "%s: the value contains %s (byte 0x%02x at offset %ld),"
                               " which sbatch cannot take", plain[i].opt, *p == '\n' ? "a newline" :
                               "a control character", *p, (long)(p - (const unsigned char *)plain[i].value));
        if (!plain[i].value[0] && i < 3)
            return MK_FAIL(MK_ERR_USAGE, "%s: empty value", plain[i].opt);
    }

    /* ---- ranks against expert parallelism */
    if (tasks == 0) tasks = cfg.parallel.ep;
    long world = (long)nodes * tasks;
    if (world % cfg.parallel.ep != 0)
        return MK_FAIL(MK_ERR_USAGE, "parallel.ep = %d does not divide the rank count %d nodes x"
                       " %d tasks per node = %ld (choose --nodes/--ntasks-per-node so it does)",
                       cfg.parallel.ep, nodes, tasks, world);

    /* ---- the dataset and the corpus to build it from */
    char corpus_list[8192] = "";
    for (int i = 0; i < n_corpora; i++) {
        const char *eq = strchr(corpora[i], '=');
        if (!eq || eq == corpora[i] || !eq[1])
            return MK_FAIL(MK_ERR_USAGE, "--corpus %s: expected NAME=PATH", corpora[i]);
        const char *why = mk_sbatch_bad_char(corpora[i], 1);
        if (why)
            return MK_FAIL(MK_ERR_USAGE, "--corpus %s: contains %s, which sbatch --export cannot"
                           " pass to the shard job (MOEKIT_CORPUS); one PATH per --corpus, no"
                           " commas or spaces", corpora[i], why);
        if (!path_exists(eq + 1))
            return MK_FAIL(MK_ERR_INPUT, "--corpus %s: %s does not exist", corpora[i], eq + 1);
        if ((rc = list_add(corpus_list, sizeof corpus_list, corpora[i], "--corpus")) != MK_OK) return rc;
    }
    if ((rc = check_dataset(cfg.data.path, n_corpora > 0)) != MK_OK) return rc;

    /* ---- --set overrides travel to the training job in MOEKIT_SET */
    char set_list[8192] = "";
    for (int i = 0; i < n_sets; i++) {
        const char *why = mk_sbatch_bad_char(sets[i], 1);
        if (why) {
            int klen = (int)strcspn(sets[i], "=");
            return MK_FAIL(MK_ERR_USAGE, "--set %.*s: the value contains %s, which sbatch --export"
                           " cannot pass to the training job (MOEKIT_SET); put it in the schedule"
                           " instead", klen, sets[i], why);
        }
        if ((rc = list_add(set_list, sizeof set_list, sets[i], "--set")) != MK_OK) return rc;
    }

    /* ---- paths */
    char cwd[PATH_MAX], sched_abs[PATH_MAX], jobs[PATH_MAX], bin[PATH_MAX];
    char run_abs[TEXT_MAX];
    if (!getcwd(cwd, sizeof cwd)) return MK_FAIL(MK_ERR_IO, "getcwd: %s", strerror(errno));
    if (!realpath(schedule, sched_abs))
        return MK_FAIL(MK_ERR_INPUT, "%s: %s", schedule, strerror(errno));
    if ((rc = find_jobs_dir(jobs_opt, jobs, sizeof jobs)) != MK_OK) return rc;
    find_bin_dir(bin, sizeof bin);
    if ((rc = absolute(cwd, cfg.run.dir, run_abs, sizeof run_abs)) != MK_OK) return rc;

    /* ---- the three sbatch commands; every value must survive --export=ALL,NAME=VALUE */
    const mk_sbatch_spec spec = {
        .cwd = cwd, .run_dir = run_abs, .jobs_dir = jobs,
        .partition = partition, .account = account, .timelimit = timelimit,
        .nodes = nodes, .tasks = tasks, .gpus = gpus,
        .schedule = sched_abs, .dataset = cfg.data.path, .bin_dir = bin,
        .set_list = set_list, .corpus_list = corpus_list,
        .dataset_from_schedule = n_corpora == 0,
    };
    static mk_sbatch_cmd cmds[MK_SBATCH_JOBS];
    if ((rc = mk_sbatch_build(&spec, cmds)) != MK_OK) return rc;

    if (dry_run) {
        printf("# moe-submit --dry-run: %s checked (%ld ranks = %d nodes x %d, parallel.ep = %d);"
               " nothing submitted.\n# These commands would submit the chain (sh syntax):\n",
               schedule, world, nodes, tasks, cfg.parallel.ep);
        mk_sbatch_print(stdout, cmds);
        mk_sbatch_free(cmds);
        return fflush(stdout) == 0 ? MK_OK : MK_FAIL(MK_ERR_IO, "stdout: %s", strerror(errno));
    }

    /* Slurm opens the --output file in run.dir before the job starts. */
    if ((rc = mk_fs_mkdir_p(run_abs)) != MK_OK) {
        mk_sbatch_free(cmds);
        return rc;
    }
    char ids[MK_SBATCH_JOBS][32];
    for (int j = 0; j < MK_SBATCH_JOBS; j++) {
        if (j > 0) rc = mk_sbatch_set_dependency(&cmds[j], ids[j - 1]);
        if (rc == MK_OK) rc = run_sbatch(&cmds[j], ids[j], sizeof ids[j]);
        if (rc != MK_OK) {
            cancel_jobs(ids, j);
            mk_sbatch_free(cmds);
            return rc;
        }
    }
    mk_sbatch_free(cmds);
    for (int j = 0; j < MK_SBATCH_JOBS; j++) printf("%-6s %s\n", mk_sbatch_names[j], ids[j]);
    fprintf(stderr, PROG ": logs in %s/slurm-moe-{shard,train,report}-JOBID.out\n", run_abs);
    return fflush(stdout) == 0 ? MK_OK : MK_FAIL(MK_ERR_IO, "stdout: %s", strerror(errno));
}
