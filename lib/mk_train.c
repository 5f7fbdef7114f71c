/* mk_train.c - the single-process training loop (see mk_train.h).
 *
 * One optimizer step = grad_accum micro-steps of micro_batch sequences. The CE gradient is
 * scaled by 1 / (target tokens of the whole step) and the auxiliary losses by
 * 1 / grad_accum, so accumulating micro-steps gives the gradient of the step's mean loss.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_train.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mk_backend.h"
#include "mk_backend_prof.h"
#include "mk_comm.h"
#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_failpoint.h"
#include "mk_fs.h"
#include "mk_ckpt.h"
#include "mk_lbl.h"
#include "mk_routing_log.h"
#include "mk_trainer.h"
#include "mk_text_data.h"

/* The dense bf16 tensor-core peak of an H100/H200 SXM (data sheet, without sparsity): the
 * figure published MFUs use, so moekit's MFU compares with theirs. */
#define MK_PEAK_FLOPS 989e12

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The watchdog (parallel.timeout). MPI has no timeout: a rank that stops (SIGSTOP, a hung
 * file system, a deadlock) leaves the others blocked in a collective for ever. The training
 * loop names each phase as it enters it; a thread wakes up every second and, when one phase
 * has lasted longer than the timeout, prints one line naming the rank, phase and step and
 * ends the process with MK_ERR_COMM. _exit, not MPI_Abort: MPI was initialised for one
 * thread, and the launcher (mpirun, srun -K) ends the other ranks when one exits non-zero.
 *
 * After a stop signal the wait is shorter. srun -K ends the survivors of a dead rank with
 * SIGTERM, and SIGKILL only KillWait (30 s by default) later; moekit takes that SIGTERM
 * for a request to checkpoint, which a rank stuck in a collective can never do. So once a
 * stop is requested, a phase that has lasted more than twice its longest duration so far
 * plus 5 s ends the job the same way (a phase never seen before keeps the timeout). */
enum { WD_PHASES = 12 };
typedef struct watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, done, rank;
    double timeout, since;
    const char *phase;              /* NULL between runs of the loop: nothing to watch */
    long step;
    volatile sig_atomic_t *stop;    /* the signal handler's flag, or NULL */
    const char *seen[WD_PHASES];    /* phases (string literals) and their longest duration */
    double longest[WD_PHASES];
} watchdog;

/* The slot of phase p in the table of longest durations, or -1 when it is full. */
static int wd_slot(watchdog *w, const char *p)
{
    for (int i = 0; i < WD_PHASES; i++) {
        if (w->seen[i] == p) return i;
        if (!w->seen[i]) {
            w->seen[i] = p;
            return i;
        }
    }
    return -1;
}

static void *watchdog_main(void *arg)
{
    watchdog *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        if (w->done || !w->phase) continue;
        const double el = now_s() - w->since;
        const int k = wd_slot(w, w->phase);
        const double lim = k >= 0 && w->longest[k] > 0 ? 2 * w->longest[k] + 5 : w->timeout;
        if (el > w->timeout) {
            fprintf(stderr, "moe-train: rank %d: %s of step %ld has not finished after %.0f s "
                    "(parallel.timeout = %g s): a rank is hung or gone; ending the job\n",
                    w->rank, w->phase, w->step, el, w->timeout);
        } else if (w->stop && *w->stop && el > lim) {
            fprintf(stderr, "moe-train: rank %d: asked to stop, but %s of step %ld has taken %.0f s "
                    "(at most %.1f s before): a rank is hung or gone; ending the job\n",
                    w->rank, w->phase, w->step, el, w->longest[k]);
        } else {
            continue;
        }
        fflush(stderr);
        _exit(MK_ERR_COMM);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int watchdog_start(watchdog *w, double timeout, int rank, volatile sig_atomic_t *stop)
{
    if (timeout <= 0) return MK_OK;
    w->timeout = timeout;
    w->rank = rank;
    w->stop = stop;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, watchdog_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return MK_FAIL(MK_ERR_INTERNAL, "cannot start the watchdog thread (parallel.timeout)");
    }
    w->started = 1;
    return MK_OK;
}

/* Enter phase (a string literal) of step; NULL: nothing to watch until the next phase. */
static void watchdog_phase(watchdog *w, const char *phase, long step)
{
    if (!w->started) return;
    pthread_mutex_lock(&w->mu);
    const double t = now_s();
    const int k = w->phase ? wd_slot(w, w->phase) : -1;
    if (k >= 0 && t - w->since > w->longest[k]) w->longest[k] = t - w->since;
    w->phase = phase;
    w->step = step;
    w->since = t;
    pthread_mutex_unlock(&w->mu);
}

static void watchdog_stop(watchdog *w)
{
    if (!w->started) return;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->started = 0;
}

/* The data side of a run; the step itself is mk_trainer's. */
typedef struct run {
    const mk_config *cfg;
    mk_trainer *tr;
    mk_comm *own_world;
    const mk_comm *world;
    mk_text_data *text;             /* data.path is a plain text file, or */
    mk_dataset *ds;                 /* a blend of indexed datasets */
    int32_t *tokens, *targets;      /* [grad_accum, micro_batch, T] host */
    int32_t *sample_domain;         /* [grad_accum, micro_batch] */
    FILE *log;
    long step_base;                 /* a resumed run's first step, and the global samples */
    uint64_t sample_base;           /*   consumed before it (the world size may differ) */
    char ranks_path[MK_PATH_MAX + 32];  /* BPE ranks file to embed in checkpoints, or "" */
    mk_routing_log *rlog;           /* rank 0: run.dir/routing.h5 */
    int ndomains;
    watchdog wd;
} run;

/* MaxVio of each layer from the global counts [L, E]. */
static void maxvio_layers(const int64_t *counts, int L, int E, double *out)
{
    for (int l = 0; l < L; l++) out[l] = mk_lbl_maxvio(counts + (size_t)l * E, E);
}

/* An evaluation pass over each domain's held-out windows (at most eval_cap per domain):
 * loss per domain, and routing counts per layer, domain and expert. Every rank runs the
 * same number of forward passes (ranks without windows left run padding), because expert
 * parallelism needs all ranks of a group in every all-to-all. */
static int eval_pass(run *r, long step)
{
    const mk_config *cfg = r->cfg;
    const int B = cfg->train.micro_batch, T = cfg->model.seq_len, L = cfg->model.layers,
              E = cfg->model.experts, Dm = r->ndomains;
    const int rank = mk_trainer_rank(r->tr), ranks = mk_trainer_ranks(r->tr);
    const uint64_t eval_cap = 256;
    mk_model *m = mk_trainer_model(r->tr);
    const size_t nc = (size_t)L * Dm * E;
    /* counts [L, Dm, E], tokens [Dm], then loss sums [Dm] and lbl sums [L] and batches */
    int64_t *ci = calloc(nc + Dm, sizeof *ci);
    double *cd = calloc((size_t)Dm + L + 1, sizeof *cd);
    int rc = ci && cd ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "eval: out of memory");
    for (int d = 0; rc == MK_OK && d < Dm; d++) {
        uint64_t W = mk_dataset_val_windows(r->ds, d);
        if (W > eval_cap) W = eval_cap;
        const uint64_t per_round = (uint64_t)B * ranks, rounds = (W + per_round - 1) / per_round;
        for (uint64_t q = 0; rc == MK_OK && q < rounds; q++) {
            const uint64_t first = q * per_round + (uint64_t)rank * B;
            const int nb = first >= W ? 0 : (int)(W - first < (uint64_t)B ? W - first : (uint64_t)B);
            if (nb > 0) rc = mk_dataset_val_samples(r->ds, d, first, nb, r->tokens, r->targets);
            if (rc) break;
            if (nb == 0) { /* padding: one sequence nobody learns from */
                memset(r->tokens, 0, (size_t)T * sizeof *r->tokens);
                for (int t = 0; t < T; t++) r->targets[t] = -1;
            }
            mk_forward_stats st;
            rc = mk_model_forward(m, r->tokens, r->targets, nb > 0 ? nb : 1, NULL, 0, &st);
            if (rc || nb == 0) continue;
            cd[d] += st.ce_sum;
            ci[nc + d] += st.targets;
            for (int l = 0; l < L; l++) cd[Dm + l] += st.lbl[l];
            cd[Dm + L] += 1;
            for (int l = 0; rc == MK_OK && l < L; l++) {
                const int32_t *sc = mk_model_sequence_counts(m, l);
                if (!sc) {
                    rc = MK_FAIL(MK_ERR_INTERNAL, "evaluation: no routing counts of layer %d", l);
                    break;
                }
                for (int i = 0; i < nb * E; i++) ci[((size_t)l * Dm + d) * E + i % E] += sc[i];
            }
        }
    }
    if (rc == MK_OK) rc = mk_comm_allreduce_i64(mk_trainer_world(r->tr), ci, nc + Dm);
    if (rc == MK_OK) rc = mk_comm_allreduce_f64(mk_trainer_world(r->tr), cd, (size_t)Dm + L + 1);
    if (rc == MK_OK && r->rlog) {
        double loss[Dm], lbl[L], mv[L];
        int64_t *tot = calloc((size_t)L * E, sizeof *tot);
        for (int d = 0; d < Dm; d++) loss[d] = ci[nc + d] > 0 ? cd[d] / (double)ci[nc + d] : NAN;
        for (int l = 0; l < L; l++) lbl[l] = cd[Dm + L] > 0 ? cd[Dm + l] / cd[Dm + L] : 0;
        for (int l = 0; tot && l < L; l++)
            for (int d = 0; d < Dm; d++)
                for (int e = 0; e < E; e++) tot[(size_t)l * E + e] += ci[((size_t)l * Dm + d) * E + e];
        if (tot) maxvio_layers(tot, L, E, mv);
        int64_t ntok[Dm];
        for (int d = 0; d < Dm; d++) ntok[d] = ci[nc + d];
        rc = tot ? mk_routing_log_append_eval(r->rlog, step, ci, ntok, lbl, mv, loss) : MK_FAIL(MK_ERR_NOMEM, "eval: out of memory");
        free(tot);
    }
    free(ci);
    free(cd);
    return rc;
}

/* This rank's slice of every micro-step of global batch `step`. */
static int load_step(run *r, long step)
{
    const mk_config *cfg = r->cfg;
    const int G = cfg->train.grad_accum, B = cfg->train.micro_batch, T = cfg->model.seq_len;
    const size_t per_micro = (size_t)B * T;
    const int rank = mk_trainer_rank(r->tr), ranks = mk_trainer_ranks(r->tr);
    /* tests/test_mpi_train.sh, tests/failure: a rank failing here, the way a bad shard or
     * a full disk would, must end the whole job promptly. */
    MK_CHECK(mk_failpoint("load"));
    for (int g = 0; g < G; g++) {
        const uint64_t first = r->sample_base + mk_sample_index((uint64_t)(step - r->step_base), g, rank, ranks, B, G, 0);
        if (r->ds)
            MK_CHECK(mk_dataset_samples(r->ds, first, B, r->tokens + g * per_micro,
                                        r->targets + g * per_micro, r->sample_domain + g * B));
        else
            MK_CHECK(mk_text_data_batch(r->text, cfg->train.seed, first, B, r->tokens + g * per_micro,
                                        r->targets + g * per_micro));
    }
    return MK_OK;
}

static void format_eta(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void run_free(run *r)
{
    watchdog_stop(&r->wd);
    mk_text_data_close(&r->text);
    mk_dataset_close(&r->ds);
    mk_routing_log_close(&r->rlog);
    mk_trainer_free(&r->tr);
    mk_comm_free(&r->own_world);
    free(r->tokens);
    free(r->targets);
    free(r->sample_domain);
    if (r->log) fclose(r->log);
}

int mk_train_run(const mk_config *cfg, const mk_train_opts *opts, mk_train_result *res)
{
    int rc = MK_OK;
    run r = { .cfg = cfg };
    memset(res, 0, sizeof *res);
    MK_CHECK(mk_config_validate(cfg));
    const char *path = opts->data_path ? opts->data_path : cfg->data.path;
    if (!path || !*path)
        return MK_FAIL(MK_ERR_USAGE, "no training data: set data.path or pass --data FILE");
    const int G = cfg->train.grad_accum, B = cfg->train.micro_batch, T = cfg->model.seq_len;
    const int L = cfg->model.layers, E = cfg->model.experts;
    struct stat st;
    const int text_file = !strchr(path, ',') && !strchr(path, '=') && stat(path, &st) == 0 && S_ISREG(st.st_mode);
    if (text_file) {
        if (cfg->model.vocab < 256)
            return MK_FAIL(MK_ERR_USAGE, "model.vocab = %d: the byte-level tokenizer needs at least 256",
                           cfg->model.vocab);
        MK_CHECK_GOTO(rc, mk_text_data_open(path, T, &r.text), done);
    } else {
        mk_dataset_opts dopts = { .path = path, .mixture = cfg->data.mixture,
                                  .repeat_cap = cfg->data.repeat_cap, .seq_len = T,
                                  .seed = cfg->train.seed, .tokenizer = cfg->data.tokenizer,
                                  .model_vocab = cfg->model.vocab };
        MK_CHECK_GOTO(rc, mk_dataset_open(&dopts, &r.ds), done);
    }
    MK_CHECK_GOTO(rc, mk_trainer_create(cfg, opts->world, &r.tr), done);
    const int rank = mk_trainer_rank(r.tr), ranks = mk_trainer_ranks(r.tr);
    if (r.ds) MK_CHECK_GOTO(rc, mk_trainer_set_domains(r.tr, mk_dataset_domains(r.ds)), done);
    MK_CHECK_GOTO(rc, watchdog_start(&r.wd, cfg->parallel.timeout, rank, opts->stop), done);
    const char *tok_id = r.ds ? mk_dataset_tokenizer(r.ds) : "byte";
    if (r.ds && strncmp(tok_id, "bpe:", 4) == 0 && !strchr(path, ','))
        snprintf(r.ranks_path, sizeof r.ranks_path, "%s/tokenizer.ranks", path);

    if (opts->resume) {
        char ck[MK_PATH_MAX + 64] = "";
        char dir[MK_PATH_MAX + 8];
        struct stat cst;
        snprintf(dir, sizeof dir, "%s/ckpt", cfg->run.dir);
        if (strcmp(opts->resume, "auto") != 0)
            snprintf(ck, sizeof ck, "%s", opts->resume);
        else if (stat(dir, &cst) == 0)
            MK_CHECK_GOTO(rc, mk_ckpt_find(cfg->run.dir, ck, sizeof ck, rank == 0 ? stderr : NULL), done);
        if (ck[0]) {
            mk_ckpt_meta meta;
            const double lt = now_s();
            watchdog_phase(&r.wd, "checkpoint load", 0);
            MK_CHECK_GOTO(rc, mk_ckpt_load(r.tr, ck, &meta), done);
            watchdog_phase(&r.wd, NULL, 0);
            const double load_s = now_s() - lt;
            if (strcmp(meta.tokenizer, tok_id) != 0 && strcmp(meta.tokenizer, "unknown") != 0) {
                rc = MK_FAIL(MK_ERR_USAGE, "%s was trained on data of tokenizer %s, this run reads %s",
                             ck, meta.tokenizer, tok_id);
                goto done;
            }
            r.step_base = meta.step;
            r.sample_base = meta.samples_consumed;
            res->first_step = meta.step;
            if (opts->out)
                fprintf(opts->out, "moe-train: resuming from %s (step %ld, %llu samples consumed; loaded in %.2f s)\n",
                        ck, meta.step, (unsigned long long)meta.samples_consumed, load_s);
        } else if (opts->out) {
            fprintf(opts->out, "moe-train: no checkpoint in %s; starting from step 0\n", dir);
        }
    }
    r.tokens = malloc((size_t)G * B * T * sizeof *r.tokens);
    r.targets = malloc((size_t)G * B * T * sizeof *r.targets);
    r.sample_domain = calloc((size_t)G * B, sizeof *r.sample_domain);
    if (!r.tokens || !r.targets || !r.sample_domain) {
        rc = MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
        goto done;
    }
    char logpath[MK_PATH_MAX + 16];
    snprintf(logpath, sizeof logpath, "%s/log.tsv", cfg->run.dir);
    if (rank == 0) { /* one writer for the run directory */
        MK_CHECK_GOTO(rc, mk_fs_mkdir_p(cfg->run.dir), done);
        r.log = fopen(logpath, r.step_base > 0 ? "a+" : "w");
        if (!r.log) {
            rc = MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", logpath, strerror(errno));
            goto done;
        }
        if (r.step_base == 0) fprintf(r.log, "step\tloss\tlbl\tmaxvio\tgnorm\tlr\n");
        /* A run killed mid-line left a partial row: the resumed rows start on a new line. */
        if (r.step_base > 0 && fseek(r.log, -1, SEEK_END) == 0 && fgetc(r.log) != '\n') {
            fseek(r.log, 0, SEEK_END);
            fputc('\n', r.log);
        }
    }
    r.ndomains = r.ds ? mk_dataset_domains(r.ds) : 1;
    if (rank == 0) {
        char rpath[MK_PATH_MAX + 16];
        const char *names[r.ndomains];
        for (int i = 0; i < r.ndomains; i++) names[i] = r.ds ? mk_dataset_domain_name(r.ds, i) : "text";
        snprintf(rpath, sizeof rpath, "%s/routing.h5", cfg->run.dir);
        MK_CHECK_GOTO(rc, mk_routing_log_open(rpath, L, E, cfg->model.topk, r.ndomains, names,
                                              r.step_base > 0 ? r.step_base : MK_ROUTING_LOG_CREATE, &r.rlog), done);
    }
    mk_model *model = mk_trainer_model(r.tr);
    if (opts->out) {
        fprintf(opts->out,
                "moe-train: %zu parameters on this rank (%zu active per token), %d layers, %d experts "
                "top-%d, lbl %s, global batch %d x %d tokens, %d rank%s (ep %d)\n",
                mk_model_param_count(model), mk_model_active_param_count(model), L, E,
                cfg->model.topk, mk_lbl_mode_name(cfg->lbl.mode), G * B * ranks, T, ranks,
                ranks > 1 ? "s" : "", cfg->parallel.ep);
        if (cfg->train.backend == MK_BACKEND_CUDA)
            fprintf(opts->out, "moe-train: backend cuda (rank %d on GPU %d, %s GEMMs), gradients over %s;"
                    " MFU against %.0f TFLOP/s per GPU (H100/H200 dense bf16)\n", rank,
                    mk_trainer_device(r.tr), cfg->train.precision == MK_PRECISION_FP32 ? "fp32" : "bf16",
                    mk_trainer_transport(r.tr), MK_PEAK_FLOPS / 1e12);
        else
            fprintf(opts->out, "moe-train: backend cpu, gradients over %s\n", mk_trainer_transport(r.tr));
        if (r.text)
            fprintf(opts->out, "moe-train: data %s: %zu bytes of text, byte-level tokens\n", path,
                    mk_text_data_size(r.text));
        for (int i = 0; r.ds && i < mk_dataset_domains(r.ds); i++)
            fprintf(opts->out, "moe-train: domain %-12s weight %.3f, %llu train / %llu val tokens (%s)\n",
                    mk_dataset_domain_name(r.ds, i), mk_dataset_domain_weight(r.ds, i),
                    (unsigned long long)mk_dataset_domain_tokens(r.ds, i, 0),
                    (unsigned long long)mk_dataset_domain_tokens(r.ds, i, 1), mk_dataset_tokenizer(r.ds));
    }

    const double t0 = now_s();
    long tokens_done = 0;
    /* The step line's tok/s covers the steps since the previous line (the first one
     * includes start-up: cuBLAS heuristics, NCCL set-up, first-touch allocations). */
    double t_line = t0;
    long tokens_line = 0;
    const double flops_tok = mk_model_flops_per_token(model);
    const long global_batch = (long)G * B * ranks;
    for (long step = r.step_base; step < cfg->train.steps; step++) {
        mk_step_stats ss;
        mk_failpoint_at(rank, step + 1);
        watchdog_phase(&r.wd, "data load", step + 1);
        MK_CHECK_GOTO(rc, load_step(&r, step), done);
        watchdog_phase(&r.wd, "forward/backward (expert all-to-all, gradient all-reduce)", step + 1);
        MK_CHECK_GOTO(rc, mk_trainer_grads(r.tr, step, r.tokens, r.targets, r.ds ? r.sample_domain : NULL, &ss), done);
        watchdog_phase(&r.wd, "optimizer update", step + 1);
        MK_CHECK_GOTO(rc, mk_trainer_update(r.tr, step, &ss), done);
        tokens_done += global_batch * T;
        if (step == r.step_base) {
            res->first_loss = ss.loss;
            mk_backend_prof_reset(mk_model_backend(model)); /* the profile leaves start-up out */
        }
        res->final_loss = ss.loss;
        res->steps = step + 1;
        if (r.log) { /* one row per step, flushed: a kill loses at most the row being written */
            fprintf(r.log, "%ld\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\n", step + 1, ss.loss, ss.lbl, ss.maxvio,
                    ss.gnorm, ss.lr);
            fflush(r.log);
        }
        /* log.every = 0 turns step lines off; the summary line still comes. */
        const int every = cfg->log.every;
        const int logged = every > 0 && (step == r.step_base || (step + 1) % every == 0 || step + 1 == cfg->train.steps);
        if (logged && r.rlog) {
            watchdog_phase(&r.wd, "routing log write", step + 1);
            double mv[L];
            maxvio_layers(ss.counts, L, E, mv);
            MK_CHECK_GOTO(rc, mk_routing_log_append(r.rlog, step + 1, ss.domain_counts, ss.domain_tokens,
                                                    ss.lbl_layers, mv, ss.loss), done);
        }
        if (r.ds && cfg->eval.every > 0 && ((step + 1) % cfg->eval.every == 0 || step + 1 == cfg->train.steps)) {
            watchdog_phase(&r.wd, "evaluation", step + 1);
            MK_CHECK_GOTO(rc, eval_pass(&r, step + 1), done);
        }
        if (opts->out && logged) {
            double el = now_s() - t0;
            char eta[32];
            format_eta(el / (step + 1 - r.step_base) * (cfg->train.steps - step - 1), eta, sizeof eta);
            const double now = now_s(), win = now - t_line;
            const double tps = (tokens_done - tokens_line) / (win > 0 ? win : 1e-9);
            char mfu[32] = "";
            if (cfg->train.backend == MK_BACKEND_CUDA)
                snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * tps * flops_tok / (ranks * MK_PEAK_FLOPS));
            fprintf(opts->out,
                    "step %6ld/%ld | loss %.4f | lbl %.4f | maxvio %.3f | gnorm %.3f | lr %.2e | "
                    "%.0f tok/s%s | eta %s\n",
                    step + 1, (long)cfg->train.steps, ss.loss, ss.lbl, ss.maxvio, ss.gnorm, ss.lr,
                    tps, mfu, eta);
            t_line = now;
            tokens_line = tokens_done;
            fflush(opts->out);
        }
        /* Checkpoint on schedule, and when a signal asks (every rank must agree first). */
        int stop = opts->stop ? (int)*opts->stop : 0;
        watchdog_phase(&r.wd, "stop vote (all-reduce)", step + 1);
        if (ranks > 1) MK_CHECK_GOTO(rc, mk_comm_allreduce_max_int(mk_trainer_world(r.tr), &stop, 1), done);
        const int due = cfg->ckpt.every > 0 && ((step + 1) % cfg->ckpt.every == 0 || step + 1 == cfg->train.steps);
        if (due || stop) {
            mk_ckpt_meta meta = { .step = step + 1, .tokens_seen = (step + 1) * global_batch * T,
                                  .samples_consumed = r.sample_base + (uint64_t)(step + 1 - r.step_base) * (uint64_t)global_batch };
            snprintf(meta.tokenizer, sizeof meta.tokenizer, "%s", tok_id);
            char written[MK_PATH_MAX + 32];
            const double cs = now_s();
            watchdog_phase(&r.wd, "checkpoint write", step + 1);
            MK_CHECK_GOTO(rc, mk_ckpt_save(r.tr, cfg->run.dir, &meta, cfg->ckpt.keep,
                                           r.ranks_path[0] ? r.ranks_path : NULL, written, sizeof written), done);
            if (opts->out)
                fprintf(opts->out, "moe-train: checkpoint %s (%.2f s)\n", written, now_s() - cs);
            /* A signal that came during a scheduled save: this checkpoint is the newest, stop
             * now rather than after one more step and save. */
            if (!stop && opts->stop) {
                stop = (int)*opts->stop;
                watchdog_phase(&r.wd, "stop vote (all-reduce)", step + 1);
                if (ranks > 1) MK_CHECK_GOTO(rc, mk_comm_allreduce_max_int(mk_trainer_world(r.tr), &stop, 1), done);
            }
        }
        if (stop && ranks > 1) {
            /* Every rank must stop after the same step (the save above was collective, so a
             * disagreement is a moekit bug): check it before telling the scheduler to requeue. */
            int span[2] = { (int)(step + 1), -(int)(step + 1) };
            MK_CHECK_GOTO(rc, mk_comm_allreduce_max_int(mk_trainer_world(r.tr), span, 2), done);
            if (span[0] != -span[1]) {
                rc = MK_FAIL(MK_ERR_INTERNAL, "ranks stopped after different steps (%d to %d)", -span[1], span[0]);
                goto done;
            }
        }
        if (stop) {
            res->stopped = 1;
            if (opts->out) fprintf(opts->out, "moe-train: stopped by a signal after step %ld; resume with --resume auto\n", step + 1);
            break;
        }
    }
    watchdog_phase(&r.wd, NULL, 0);
    res->seconds = now_s() - t0;
    res->tokens_per_s = tokens_done / (res->seconds > 0 ? res->seconds : 1e-9);
    if (r.log && (fflush(r.log) != 0 || ferror(r.log))) {
        rc = MK_FAIL(MK_ERR_IO, "%s: write failed: %s", logpath, strerror(errno));
        goto done;
    }
    if (opts->out && tokens_done == 0)
        fprintf(opts->out, "done: the run already has its %ld steps; nothing to train\n", (long)cfg->train.steps);
    else if (opts->out)
        fprintf(opts->out, "done: %ld steps in %.1f s, %.0f tok/s (%.1f TFLOP/s per rank), loss %.4f -> %.4f (%.1f%% lower)\n",
                res->steps - r.step_base, res->seconds, res->tokens_per_s, res->tokens_per_s * flops_tok / ranks / 1e12,
                res->first_loss, res->final_loss, 100.0 * (1.0 - res->final_loss / res->first_loss));
    if (opts->out && res->steps > r.step_base + 1)
        mk_backend_prof_report(mk_model_backend(model), opts->out, res->steps - r.step_base - 1);
    if (opts->out && cfg->parallel.ep > 1 && res->steps > 0)
        fprintf(opts->out, "expert all-to-all: %.2f ms per step on rank 0 (%.1f%% of the step time)\n",
                1e3 * mk_model_a2a_seconds(model) / res->steps,
                100.0 * mk_model_a2a_seconds(model) / (res->seconds > 0 ? res->seconds : 1e-9));
done:
    run_free(&r);
    return rc;
}
