/* moe-report - expert-specialisation and load-balance report from routing logs
 * (DESIGN section 7; metrics: docs/report-metrics.md; moe-report(1)). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mk_error.h"
#include "mk_report.h"
#include "mk_report_write.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: moe-report RUN... -o DIR [options]\n"
            "Expert-specialisation and load-balance report from the routing logs of one or more runs\n"
            "(moekit " PACKAGE_VERSION ").\n\n"
            "RUN is a run directory holding routing.h5 (or the path of a routing log itself).\n\n"
            "  -o, --output DIR        write report.md, the CSV tables and the figures (PNG, SVG) here\n"
            "  -w, --window WIN        rows the metrics sum over: all (default), last:N (the last N rows),\n"
            "                          steps:A-B (rows with A <= step <= B)\n"
            "  -s, --source SRC        eval, train or auto (default: eval rows when the log has any)\n"
            "  -d, --domains A,B,...   only these domains (an unknown name is an error)\n"
            "  -h, --help              print this help\n"
            "  -V, --version           print the version\n\n"
            "Exit status: 0 ok, 2 usage, 3 bad input (missing, empty or truncated log, runs of different\n"
            "shape, unknown domain), 4 I/O error, 5 out of memory.\n");
}

static int parse_window(const char *s, mk_window *w)
{
    char *end;
    long long a, b;
    if (strcmp(s, "all") == 0) { w->kind = 0; return 1; }
    if (strncmp(s, "last:", 5) == 0) {
        errno = 0;
        a = strtoll(s + 5, &end, 10);
        if (errno || end == s + 5 || *end || a < 1) return 0;
        w->kind = 1; w->n = a;
        return 1;
    }
    if (strncmp(s, "steps:", 6) == 0) {
        errno = 0;
        a = strtoll(s + 6, &end, 10);
        if (errno || end == s + 6 || *end != '-' || a < 0) return 0;
        const char *p = end + 1;
        b = strtoll(p, &end, 10);
        if (errno || end == p || *end || b < a) return 0;
        w->kind = 2; w->a = a; w->b = b;
        return 1;
    }
    return 0;
}

static int run_name(const char *arg, char *dir, size_t n, const char **name)
{
    struct stat st;
    snprintf(dir, n, "%s", arg);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') dir[--len] = 0;
    int is_file = stat(dir, &st) == 0 && S_ISREG(st.st_mode);
    if (is_file) { /* a routing log itself: its directory is the run */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, n, ".");
    }
    const char *base = strrchr(dir, '/');
    *name = base ? base + 1 : dir;
    return is_file;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "output", required_argument, NULL, 'o' }, { "window", required_argument, NULL, 'w' },
        { "source", required_argument, NULL, 's' }, { "domains", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    const char *out = NULL, *domains = NULL, *wtext = "all";
    mk_window win = { 0, 0, 0, 0 };
    int source = MK_SRC_AUTO, c;
    while ((c = getopt_long(argc, argv, "o:w:s:d:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'w':
            if (!parse_window(optarg, &win))
                return MK_FAIL(MK_ERR_USAGE, "--window '%s': expected all, last:N (N >= 1) or steps:A-B (A <= B)", optarg);
            wtext = optarg;
            break;
        case 's':
            if (strcmp(optarg, "eval") == 0) source = MK_SRC_EVAL;
            else if (strcmp(optarg, "train") == 0) source = MK_SRC_TRAIN;
            else if (strcmp(optarg, "auto") == 0) source = MK_SRC_AUTO;
            else return MK_FAIL(MK_ERR_USAGE, "--source '%s': expected eval, train or auto", optarg);
            break;
        case 'd':
            if (!*optarg) return MK_FAIL(MK_ERR_USAGE, "--domains: empty list");
            domains = optarg;
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("moe-report (moekit) %s\n", PACKAGE_VERSION); return 0;
        default: usage(stderr); return MK_ERR_USAGE;
        }
    }
    int nrun = argc - optind;
    if (nrun < 1) { usage(stderr); return MK_FAIL(MK_ERR_USAGE, "no RUN given"); }
    if (!out) return MK_FAIL(MK_ERR_USAGE, "no output directory: give -o DIR");
    if (nrun > 64) return MK_FAIL(MK_ERR_USAGE, "at most 64 runs per report");
    mk_run_report *runs = calloc((size_t)nrun, sizeof *runs);
    char (*dirs)[4096] = calloc((size_t)nrun, sizeof *dirs);
    int rc = MK_OK;
    if (!runs || !dirs) { free(runs); free(dirs); return MK_FAIL(MK_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < nrun && rc == MK_OK; i++) {
        const char *arg = argv[optind + i];
        char path[4200];
        int is_file = run_name(arg, dirs[i], sizeof dirs[i], &runs[i].name);
        runs[i].dir = dirs[i];
        if (is_file) snprintf(path, sizeof path, "%s", arg);
        else snprintf(path, sizeof path, "%s/routing.h5", dirs[i]);
        rc = mk_rl_read(path, &runs[i].log);
        if (rc != MK_OK) break;
        mk_rl_ckpt_config(dirs[i], "lbl.mode", runs[i].lbl_mode, sizeof runs[i].lbl_mode);
        for (int j = 0; j < i && rc == MK_OK; j++)
            if (runs[j].log.layers != runs[i].log.layers || runs[j].log.experts != runs[i].log.experts)
                rc = MK_FAIL(MK_ERR_INPUT, "runs %s (%d layers, %d experts) and %s (%d layers, %d experts) "
                             "cannot be compared: different layer or expert counts", runs[j].dir,
                             runs[j].log.layers, runs[j].log.experts, runs[i].dir, runs[i].log.layers,
                             runs[i].log.experts);
        if (rc == MK_OK) rc = mk_report_compute(&runs[i], source, &win, domains);
    }
    struct stat ost;
    if (rc == MK_OK && mkdir(out, 0777) != 0 &&
        (errno != EEXIST || stat(out, &ost) != 0 || !S_ISDIR(ost.st_mode)))
        rc = MK_FAIL(MK_ERR_IO, "%s: cannot create the output directory: %s", out,
                     errno == EEXIST ? "it exists and is not a directory" : strerror(errno));
    if (rc == MK_OK) rc = mk_report_write_csv(out, nrun, runs);
    if (rc == MK_OK) rc = mk_report_write_figures(out, nrun, runs);
    if (rc == MK_OK) rc = mk_report_write_md(out, nrun, runs, wtext);
    if (rc == MK_OK)
        fprintf(stderr, "moe-report: wrote %s/report.md (%d run%s)\n", out, nrun, nrun > 1 ? "s" : "");
    for (int i = 0; i < nrun; i++) mk_report_free(&runs[i]);
    free(runs);
    free(dirs);
    return rc;
}
