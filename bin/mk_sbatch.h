/* mk_sbatch.h - the sbatch command lines of moe-submit, built as argv arrays.
 *
 * moe-submit runs sbatch with execvp, never through a shell; --dry-run prints the same
 * argv shell-quoted, so pasting it into sh gives back each element unchanged. This module
 * holds the part between the checked settings and those argv arrays, apart from main(), so
 * tests/fuzz/fuzz_sbatch.c can check the property "re-parse of the dry-run text = argv"
 * on arbitrary values. Every value is refused (MK_ERR_USAGE, one line naming it) if it holds
 * a character that sbatch --export or a job script cannot carry unchanged, a newline above
 * all; an argv element is never cut short.
 */
#ifndef MK_SBATCH_H
#define MK_SBATCH_H

#include <stdio.h>

#define MK_SBATCH_JOBS 3       /* shard, train, report, chained with afterok */
#define MK_SBATCH_MAX_ARGS 24  /* argv entries of one command, the final NULL included */

extern const char *const mk_sbatch_names[MK_SBATCH_JOBS];

/* Everything the commands carry. Strings are NUL-terminated; NULL for an optional value
 * means "not given". */
typedef struct mk_sbatch_spec {
    const char *cwd;          /* --chdir of every job */
    const char *run_dir;      /* absolute run.dir: --output goes there */
    const char *jobs_dir;     /* where shard.sbatch, train.sbatch, report.sbatch are */
    const char *partition, *account, *timelimit;
    int nodes, tasks, gpus;   /* of the training job; tasks also of the shard job */
    const char *schedule;     /* absolute schedule path -> MOEKIT_SCHEDULE */
    const char *dataset;      /* data.path -> MOEKIT_DATASET */
    const char *bin_dir;      /* -> MOEKIT_BIN */
    const char *set_list;     /* --set items joined by spaces -> MOEKIT_SET */
    const char *corpus_list;  /* --corpus items joined by spaces -> MOEKIT_CORPUS */
    int dataset_from_schedule; /* no --corpus: a data.path with commas stays out of the
                                * exports, the jobs read it from the schedule */
} mk_sbatch_spec;

typedef struct mk_sbatch_cmd {
    char *argv[MK_SBATCH_MAX_ARGS]; /* argv[argc] == NULL; each element malloc'd */
    int argc;
    int dep_arg;              /* index of --dependency=afterok:<previous job>, or -1 */
} mk_sbatch_cmd;

/* A character that sbatch --export=ALL,NAME=VALUE,... cannot carry unchanged (a comma, a
 * quote, a newline or another control character; in a list also a space). Returns a
 * description ("a comma") or NULL. */
const char *mk_sbatch_bad_char(const char *value, int in_list);

/* Build the three commands. On failure nothing is left allocated. The training and report
 * commands carry the dependency as a placeholder until mk_sbatch_set_dependency. */
int mk_sbatch_build(const mk_sbatch_spec *spec, mk_sbatch_cmd cmds[MK_SBATCH_JOBS]);

/* Fill in the job id of the previous job (digits only). */
int mk_sbatch_set_dependency(mk_sbatch_cmd *cmd, const char *prev_id);

/* The commands as sh text, one "NAME_id=$(sbatch ...)" line per job, each element quoted
 * so that sh gives it back unchanged; the dependency refers to the previous line's id. */
void mk_sbatch_print(FILE *f, const mk_sbatch_cmd cmds[MK_SBATCH_JOBS]);

void mk_sbatch_free(mk_sbatch_cmd cmds[MK_SBATCH_JOBS]);

#endif
