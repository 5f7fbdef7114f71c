/* moe-train - train a Mixture-of-Experts transformer from a schedule.
 *
 * Settings come, in increasing priority, from the defaults, the --schedule INI file, and
 * --set/--data/--threads in command-line order. See moe-train(1) and docs/settings.md.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <fcntl.h>
#include <getopt.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mk_comm.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_train.h"

/* Set by SIGUSR1/SIGTERM (Slurm's warning before the time limit, or preemption); the
 * training loop checkpoints at the end of the step and stops. The one piece of global
 * state in moekit: a signal handler has nowhere else to write. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1; /* a second signal during the save just sets it again */
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: moe-train --schedule FILE [--set section.key=value]... [options]\n"
            "Train a Mixture-of-Experts transformer (moekit " PACKAGE_VERSION ").\n"
            "\n"
            "  -s, --schedule FILE    INI schedule (see schedules/ and docs/settings.md)\n"
            "  -S, --set KEY=VALUE    override one setting, e.g. --set train.steps=200\n"
            "  -d, --data PATH        dataset directory (moe-shard), NAME=PREFIX Megatron datasets,\n"
            "                         or a text file (byte-level tokens); same as data.path\n"
            "  -j, --threads N        CPU threads; same as train.threads\n"
            "  -r, --resume WHAT      auto: continue from the newest checkpoint of run.dir that\n"
            "                         verifies (start fresh if none); or a checkpoint file\n"
            "  -q, --quiet            no progress lines\n"
            "      --print-config     print the final settings as an INI schedule and exit\n"
            "      --help-settings    list every setting with its default and meaning\n"
            "  -h, --help             this help\n"
            "  -V, --version          print the version\n"
            "\n"
            "Each logged step prints: step, loss (cross-entropy), lbl (load-balancing loss,\n"
            "mean over layers; 1 = perfect balance), maxvio (mean over layers), gnorm\n"
            "(gradient norm before clipping), lr, tok/s and ETA. run.dir/log.tsv gets every\n"
            "step at full precision.\n"
            "\n"
            "SIGUSR1 or SIGTERM: finish the step, write a checkpoint, exit with status 75.\n"
            "\n"
            "Exit status: 0 ok, 2 usage, 3 bad input, 4 I/O, 5 out of memory, 6 NaN/Inf,\n"
            "7 internal error, 8 another rank or a collective failed, 75 stopped by a signal\n"
            "after a checkpoint (requeue the job and run again with --resume auto).\n");
}

static void help_settings(void)
{
    for (size_t i = 0; i < mk_config_setting_count(); i++) {
        const mk_setting_info *s = mk_config_setting(i);
        printf("%-24s %-10s %s\n", s->key, s->default_text, s->doc);
    }
}

/* What the command line asks for: settings to train with, or done (help, version or
 * --print-config answered it). */
typedef struct train_args {
    mk_config cfg;
    const char *resume;
    int quiet;
    int done;
} train_args;

static int parse_args(int argc, char **argv, int rank, train_args *a);
static int parse_args_once(int argc, char **argv, int rank, int size, train_args *a, int *agreed);
static int train(const train_args *a, int rank);

/* Under mpirun or srun every rank runs this; a rank that fails ends the whole job at once
 * (MPI_Abort) after its one error line, so no rank waits forever in a collective. */
int main(int argc, char **argv)
{
    /* Before MPI_Init: a signal that comes while the job starts (Slurm may preempt at any
     * moment) must not kill the rank, only ask for a checkpoint after the first step.
     * SA_RESTART: a signal during a checkpoint write must not fail the write with EINTR. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "moe-train: MPI_Init failed\n");
        return MK_ERR_COMM;
    }
    int rank = 0, size = 1, agreed = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    train_args a;
    int rc = parse_args_once(argc, argv, rank, size, &a, &agreed);
    if (rc == MK_OK && !a.done) rc = train(&a, rank);
    /* A failure every rank already knows of (the command line or schedule) needs no abort:
     * each rank leaves with its status. */
    if (rc != MK_OK && rc != MK_EXIT_REQUEUE && size > 1 && !agreed) {
        fprintf(stderr, "moe-train: rank %d stops the job (status %d: %s)\n", rank, rc, mk_status_name(rc));
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, rc);
    }
    if (rc == MK_ERR_IO) {
        /* HDF5 1.10.8 can crash in its exit-time clean-up after a write to a file failed
         * (the file it could not flush stays half-closed: H5F__close_cb, "slist already
         * enabled?"), which would turn a clean status 4 into a segfault. Every file moekit
         * writes is closed or abandoned by now, so leave without the library destructors
         * (tests/fault/test_log_errors.sh). */
        fflush(NULL);
        _exit(rc);
    }
    MPI_Finalize();
    return rc;
}

/* stderr to /dev/null; returns the saved descriptor to give to unmute_stderr, or -1 when it
 * could not (then nothing is muted). */
static int mute_stderr(void)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY);
    if (saved < 0 || null < 0 || dup2(null, STDERR_FILENO) < 0) {
        if (saved >= 0) close(saved);
        if (null >= 0) close(null);
        return -1;
    }
    close(null);
    return saved;
}

static void unmute_stderr(int saved)
{
    if (saved < 0) return;
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
}

/* Every rank parses the same command line and schedule, so a mistake in them is the same
 * mistake on every rank: rank 0 reports it and the others parse with stderr muted, instead
 * of one identical line per rank. A rank whose outcome differs from rank 0's (a schedule
 * only it cannot read) parses again aloud, and then every rank stops. *agreed = 1 when the
 * outcome is known to all ranks (no MPI_Abort needed). */
static int parse_args_once(int argc, char **argv, int rank, int size, train_args *a, int *agreed)
{
    *agreed = 0;
    if (size == 1) return parse_args(argc, argv, rank, a);
    const int saved = rank ? mute_stderr() : -1;
    int rc = parse_args(argc, argv, rank, a);
    unmute_stderr(saved);
    int rc0 = rc;
    if (MPI_Bcast(&rc0, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS) return MK_ERR_COMM;
    if (rank && rc != MK_OK && rc != rc0) rc = parse_args(argc, argv, rank, a);
    /* the lowest failing rank, or size when none failed */
    int first = rc != MK_OK ? rank : size;
    if (MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return MK_ERR_COMM;
    if (first == size) return MK_OK;
    *agreed = 1;
    if (rc == MK_OK) {
        if (rank == 0)
            fprintf(stderr, "moe-train: rank %d could not read its settings (above); the job stops\n", first);
        rc = MK_ERR_COMM;
    }
    return rc;
}

static int parse_args(int argc, char **argv, int rank, train_args *a)
{
    enum { OPT_PRINT_CONFIG = 256, OPT_HELP_SETTINGS };
    static const struct option longopts[] = {
        { "schedule", required_argument, NULL, 's' },
        { "set", required_argument, NULL, 'S' },
        { "data", required_argument, NULL, 'd' },
        { "threads", required_argument, NULL, 'j' },
        { "resume", required_argument, NULL, 'r' },
        { "quiet", no_argument, NULL, 'q' },
        { "print-config", no_argument, NULL, OPT_PRINT_CONFIG },
        { "help-settings", no_argument, NULL, OPT_HELP_SETTINGS },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    mk_config *cfg = &a->cfg;
    mk_config_defaults(cfg);
    a->resume = NULL, a->quiet = 0, a->done = 0;
    int print_config = 0, rc;
    const char *schedule = NULL;

    /* First pass: only the schedule, so --set always wins over it whatever the order. */
    int c;
    opterr = 0;
    optind = 0; /* a fresh scan (GNU getopt): this may be the second parse of the same argv */
    while ((c = getopt_long(argc, argv, ":s:S:d:j:r:qhV", longopts, NULL)) != -1) {
        if (c == 's') schedule = optarg;
        else if (c == 'h') { if (!rank) usage(stdout); a->done = 1; return 0; }
        else if (c == 'V') { if (!rank) printf("moe-train (moekit) %s\n", PACKAGE_VERSION); a->done = 1; return 0; }
        else if (c == OPT_HELP_SETTINGS) { if (!rank) help_settings(); a->done = 1; return 0; }
        else if (c == '?' || c == ':') {
            /* One line, like every other error (the hint rides along at its end). */
            if (c == ':')
                fprintf(stderr, "moe-train: option '%s' needs an argument (try 'moe-train --help')\n", argv[optind - 1]);
            else if (optopt)
                fprintf(stderr, "moe-train: unknown option '-%c' (try 'moe-train --help')\n", optopt);
            else
                fprintf(stderr, "moe-train: unknown option '%s' (try 'moe-train --help')\n", argv[optind - 1]);
            return MK_ERR_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moe-train: unexpected argument '%s' (try 'moe-train --help')\n", argv[optind]);
        return MK_ERR_USAGE;
    }
    if (schedule && (rc = mk_config_load_ini(cfg, schedule)) != MK_OK) return rc;

    int overrides = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":s:S:d:j:r:qhV", longopts, NULL)) != -1) {
        char buf[MK_PATH_MAX + 32];
        switch (c) {
        case 'S':
            overrides++;
            if ((rc = mk_config_set(cfg, optarg, "--set")) != MK_OK) return rc;
            break;
        case 'd':
            overrides++;
            snprintf(buf, sizeof buf, "data.path=%s", optarg);
            if ((rc = mk_config_set(cfg, buf, "--data")) != MK_OK) return rc;
            break;
        case 'j':
            overrides++;
            snprintf(buf, sizeof buf, "train.threads=%s", optarg);
            if ((rc = mk_config_set(cfg, buf, "--threads")) != MK_OK) return rc;
            break;
        case 'q': a->quiet = 1; break;
        case 'r': a->resume = optarg; break;
        case OPT_PRINT_CONFIG: print_config = 1; break;
        default: break;
        }
    }
    /* A rule between two keys names where they came from: the schedule and/or the options. */
    char origin[MK_PATH_MAX + 32];
    snprintf(origin, sizeof origin, "%s%s%s", schedule ? schedule : "", schedule && overrides ? " + " : "",
             overrides ? "command-line settings" : "");
    if ((rc = mk_config_validate_in(cfg, origin[0] ? origin : "defaults")) != MK_OK) return rc;
    if (print_config) {
        a->done = 1;
        return rank ? MK_OK : mk_config_write_ini(cfg, stdout);
    }
    return MK_OK;
}

static int train(const train_args *a, int rank)
{
    mk_comm *world = NULL;
    int rc = mk_comm_world(&world);
    if (rc != MK_OK) return rc;
    mk_train_opts opts = { .data_path = NULL, .out = a->quiet || rank != 0 ? NULL : stdout, .world = world,
                           .resume = a->resume, .stop = &stop_requested };
    mk_train_result res;
    rc = mk_train_run(&a->cfg, &opts, &res);
    if (rc == MK_OK && res.stopped) rc = MK_EXIT_REQUEUE;
    mk_comm_free(&world);
    return rc;
}
