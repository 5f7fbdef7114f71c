/* mk_routing_log.h - the routing log routing.h5 (DESIGN section 6; docs/routing-log-format.md).
 *
 * One process (rank 0, after the counts are reduced) writes it; any number of other
 * processes read it while training runs, through HDF5's single-writer/multiple-reader mode
 * (SWMR). Layout, with S the logged steps, L layers, Dm domains, E experts:
 *   /            attributes format = "moekit-routing-log", format_version = 1,
 *                layers, experts, topk (int32)
 *   /domains     [Dm] fixed-length UTF-8 strings
 *   /step [S] int64, /counts [S, L, Dm, E] int64, /tokens [S, Dm] int64,
 *   /lbl [S, L] float64, /maxvio [S, L] float64, /loss [S] float64
 *   /eval/...    the same for evaluation passes, except /eval/loss [S, Dm] (per domain)
 * Every append writes /step last and flushes, so /step is the commit record: a reader takes
 * S = len(/step) and reads the first S rows of the other datasets, which may hold one more
 * row while an append is in progress or after a crash. Steps strictly increase.
 *
 * Crash consistency: after a SIGKILL of the writer, a SWMR reader (h5py swmr=True) reads every
 * step up to the last completed append. Tools that open without SWMR (h5dump, h5ls) refuse the
 * file until `h5clear -s --increment routing.h5`. Appends are not fsynced: a power loss of the
 * writer's node may lose recent steps.
 *
 * Files are written under PATH.tmp and renamed into place once SWMR is running, so PATH is
 * always either absent or a complete log; a resume copies the rows it keeps into a new file
 * the same way and never modifies the old one.
 *
 * HDF5 is used from the calling thread only, with the sec2 driver (serial API).
 */
#ifndef MK_ROUTING_LOG_H
#define MK_ROUTING_LOG_H

#include <stdint.h>

#define MK_ROUTING_LOG_FORMAT "moekit-routing-log"
#define MK_ROUTING_LOG_VERSION 1

/* resume_step for mk_routing_log_open: start a new log, replacing any file at path. */
#define MK_ROUTING_LOG_CREATE ((int64_t)-1)
/* resume_step for mk_routing_log_open: continue a log and keep every row it has. */
#define MK_ROUTING_LOG_KEEP_ALL INT64_MAX

typedef struct mk_routing_log mk_routing_log;

/* Open the log at path for appending.
 *   resume_step == MK_ROUTING_LOG_CREATE: a new, empty log (an existing file is replaced).
 *   resume_step >= 0: continue the log at path, keeping the rows (training and eval) whose step
 *     is <= resume_step - pass the step of the checkpoint the run resumes from, so steps logged
 *     after it by the interrupted run are dropped and logged again without duplicates. The
 *     existing file must have the same layers, experts, topk and domain names (MK_ERR_INPUT
 *     naming the attribute otherwise, the file left untouched); it may come from a writer that
 *     was killed. If no file exists at path, a new log is started.
 * layers, experts, topk, ndomains >= 1, topk <= experts; domain_names: ndomains non-empty
 * strings. Errors: MK_ERR_USAGE bad arguments, MK_ERR_INPUT unreadable or mismatched log,
 * MK_ERR_IO cannot create or write (e.g. a missing directory), MK_ERR_NOMEM. */
int mk_routing_log_open(const char *path, int layers, int experts, int topk, int ndomains,
                        const char *const *domain_names, int64_t resume_step,
                        mk_routing_log **out);

/* Append one training step and flush it (readers see it, and it survives a SIGKILL of the
 * writer, once this returns MK_OK).
 *   counts [layers, ndomains, experts]: tokens of each domain that chose each expert among
 *          their top-k, summed over the global batch
 *   tokens [ndomains]: tokens of each domain in the global batch
 *   lbl, maxvio [layers]; loss: the step's training loss.
 * step must be greater than the last logged training step (MK_ERR_USAGE otherwise).
 * On MK_ERR_IO the log may hold a partial row that readers never see (past len(/step)); the
 * log should then be closed. */
int mk_routing_log_append(mk_routing_log *log, int64_t step, const int64_t *counts,
                          const int64_t *tokens, const double *lbl, const double *maxvio,
                          double loss);

/* The same for an evaluation pass on held-out data after step `step`, under /eval;
 * loss_per_domain [ndomains]. Eval steps increase independently of training steps. */
int mk_routing_log_append_eval(mk_routing_log *log, int64_t step, const int64_t *counts,
                               const int64_t *tokens, const double *lbl, const double *maxvio,
                               const double *loss_per_domain);

/* Flush everything appended so far to the file (appends already do this). */
int mk_routing_log_flush(mk_routing_log *log);

/* Rows logged so far (training, eval). */
int64_t mk_routing_log_steps(const mk_routing_log *log);
int64_t mk_routing_log_eval_steps(const mk_routing_log *log);

/* Close the file (which clears the SWMR marks, so any HDF5 tool reads it) and free the log;
 * *log becomes NULL. NULL or *log == NULL is fine. MK_ERR_IO if the final flush fails; the
 * log is freed either way. */
int mk_routing_log_close(mk_routing_log **log);

#endif
