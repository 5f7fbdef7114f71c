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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "mk_backend.h"
#include "mk_comm.h"
#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_lbl.h"
#include "mk_model.h"
#include "mk_optim.h"
#include "mk_text_data.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int make_dir(const char *path)
{
    char buf[MK_PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return MK_FAIL(MK_ERR_USAGE, "run.dir: path too long");
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return MK_FAIL(MK_ERR_IO, "run.dir: cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return MK_FAIL(MK_ERR_IO, "run.dir: cannot create %s: %s", buf, strerror(errno));
    return MK_OK;
}

/* Per-run state of the loop, so the step function needs no globals. */
typedef struct trainer {
    const mk_config *cfg;
    mk_backend *be;
    mk_model *model;
    mk_lbl *lbl;
    mk_text_data *text;             /* data.path is a plain text file, or */
    mk_dataset *ds;                 /* a blend of indexed datasets */
    int32_t *tokens, *targets;      /* [grad_accum, micro_batch, T] host */
    int32_t *sample_domain;         /* [grad_accum, micro_batch] */
    int64_t *counts;                /* [L, E] summed over the step's micro-steps */
    double *lbl_sum;                /* [L] */
    FILE *log;
    const mk_comm *world;           /* every data-parallel rank */
    mk_comm *own_world;             /* the self communicator when the caller gave none */
    mk_comm *ep, *edp;              /* expert-parallel and expert-data-parallel groups */
    int rank, nranks;
} trainer;

static int lbl_allreduce(void *ctx, int64_t *counts, int n)
{
    return mk_comm_allreduce_i64(ctx, counts, (size_t)n);
}

/* Sum gradients over the ranks that share each parameter: expert tensors over the ranks
 * holding the same experts (expert-data-parallel group), everything else over the world. */
static int allreduce_grads(trainer *tr)
{
    if (tr->nranks == 1) return MK_OK;
    mk_real *g = mk_model_grads(tr->model);
    for (size_t i = 0; i < mk_model_tensor_count(tr->model); i++) {
        const mk_tensor *t = mk_model_tensor(tr->model, i);
        const mk_comm *c = t->expert && tr->edp ? tr->edp : tr->world;
        MK_CHECK(mk_comm_allreduce_real(c, g + t->offset, t->numel));
    }
    return MK_OK;
}

/* The global gradient norm: replicated tensors count once, expert shards are summed over
 * the expert-parallel group. Every rank gets the same value. */
static int global_grad_norm(trainer *tr, double *norm)
{
    mk_backend *be = mk_model_backend(tr->model);
    const mk_real *g = mk_model_grads(tr->model);
    double ss[2] = { 0, 0 };
    for (size_t i = 0; i < mk_model_tensor_count(tr->model); i++) {
        const mk_tensor *t = mk_model_tensor(tr->model, i);
        double v;
        MK_CHECK(be->ops->sumsq(be, g + t->offset, t->numel, &v));
        ss[t->expert && tr->ep] += v;
    }
    if (tr->ep) MK_CHECK(mk_comm_allreduce_f64(tr->ep, &ss[1], 1));
    *norm = sqrt(ss[0] + ss[1]);
    return MK_OK;
}

typedef struct step_stats { double loss, lbl, maxvio, gnorm, lr; long targets; } step_stats;

/* global-exact: count the whole step's routing first, so every micro-step uses final f. */
static int counting_pass(trainer *tr, int G, int B, size_t per_micro)
{
    const mk_config *cfg = tr->cfg;
    const int L = cfg->model.layers, E = cfg->model.experts;
    int64_t *exact = calloc((size_t)L * E, sizeof *exact);
    if (!exact) return MK_FAIL(MK_ERR_NOMEM, "global-exact counting pass: out of memory");
    int rc = MK_OK;
    long ntok = 0;
    for (int g = 0; g < G && rc == MK_OK; g++) {
        mk_forward_stats st;
        rc = mk_model_forward(tr->model, tr->tokens + g * per_micro, tr->targets + g * per_micro, B,
                              NULL, 0, &st);
        for (int i = 0; rc == MK_OK && i < L * E; i++) exact[i] += st.counts[i];
        ntok += (long)B * cfg->model.seq_len;
    }
    int64_t nt = ntok;
    if (rc == MK_OK) rc = mk_comm_allreduce_i64(tr->world, exact, (size_t)L * E);
    if (rc == MK_OK) rc = mk_comm_allreduce_i64(tr->world, &nt, 1);
    if (rc == MK_OK) rc = mk_lbl_set_exact(tr->lbl, exact, (long)nt);
    free(exact);
    return rc;
}

static int train_step(trainer *tr, long step, step_stats *out)
{
    const mk_config *cfg = tr->cfg;
    const int G = cfg->train.grad_accum, B = cfg->train.micro_batch, T = cfg->model.seq_len;
    const int L = cfg->model.layers, E = cfg->model.experts;
    const size_t per_micro = (size_t)B * T;

    /* This rank's slice of every micro-step of the global batch. */
    for (int g = 0; g < G; g++) {
        const uint64_t first = mk_sample_index((uint64_t)step, g, tr->rank, tr->nranks, B, G, 0);
        if (tr->ds)
            MK_CHECK(mk_dataset_samples(tr->ds, first, B, tr->tokens + g * per_micro,
                                        tr->targets + g * per_micro, tr->sample_domain + g * B));
        else
            MK_CHECK(mk_text_data_batch(tr->text, cfg->train.seed, first, B, tr->tokens + g * per_micro,
                                        tr->targets + g * per_micro));
    }
    /* The CE gradient is the mean over the target tokens of the whole global batch. */
    int64_t targets = 0;
    for (size_t i = 0; i < per_micro * G; i++) targets += tr->targets[i] >= 0;
    MK_CHECK(mk_comm_allreduce_i64(tr->world, &targets, 1));
    if (targets == 0) return MK_FAIL(MK_ERR_INPUT, "step %ld: no target tokens", step + 1);

    MK_CHECK(mk_model_zero_grad(tr->model));
    mk_lbl_reset(tr->lbl);
    if (cfg->lbl.mode == MK_LBL_GLOBAL_EXACT) MK_CHECK(counting_pass(tr, G, B, per_micro));
    memset(tr->counts, 0, (size_t)L * E * sizeof *tr->counts);
    memset(tr->lbl_sum, 0, (size_t)L * sizeof *tr->lbl_sum);

    /* Auxiliary losses are means over micro-steps and ranks: each rank's share is
     * 1 / (G * ranks), and the gradient sum over ranks makes the mean (not 1/ranks of it). */
    const double aux_scale = 1.0 / ((double)G * tr->nranks);
    double sums[1] = { 0 };
    for (int g = 0; g < G; g++) {
        mk_forward_stats st;
        MK_CHECK(mk_model_forward(tr->model, tr->tokens + g * per_micro, tr->targets + g * per_micro,
                                  B, tr->lbl, 1, &st));
        MK_CHECK(mk_model_backward(tr->model, 1.0 / (double)targets, aux_scale));
        sums[0] += st.ce_sum;
        for (int i = 0; i < L * E; i++) tr->counts[i] += st.counts[i];
        for (int l = 0; l < L; l++) tr->lbl_sum[l] += st.lbl[l] * aux_scale;
    }
    MK_CHECK(allreduce_grads(tr));
    MK_CHECK(mk_comm_allreduce_f64(tr->world, sums, 1));
    MK_CHECK(mk_comm_allreduce_f64(tr->world, tr->lbl_sum, (size_t)L));
    MK_CHECK(mk_comm_allreduce_i64(tr->world, tr->counts, (size_t)L * E));
    out->loss = sums[0] / (double)targets;
    if (!isfinite(out->loss))
        return MK_FAIL(MK_ERR_NUMERIC, "step %ld: loss is %g", step + 1, out->loss);
    out->lbl = out->maxvio = 0;
    for (int l = 0; l < L; l++) {
        out->lbl += tr->lbl_sum[l] / L;
        out->maxvio += mk_lbl_maxvio(tr->counts + (size_t)l * E, E) / L;
    }
    out->lr = mk_lr_at(cfg, step);
    out->targets = (long)targets;
    MK_CHECK(global_grad_norm(tr, &out->gnorm));
    MK_CHECK(mk_optim_step(tr->model, step + 1, out->lr, out->gnorm));
    return MK_OK;
}

static void format_eta(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void trainer_free(trainer *tr)
{
    mk_text_data_close(&tr->text);
    mk_dataset_close(&tr->ds);
    free(tr->sample_domain);
    mk_lbl_destroy(&tr->lbl);
    mk_model_destroy(&tr->model);
    mk_backend_destroy(&tr->be);
    mk_comm_free(&tr->ep);
    mk_comm_free(&tr->edp);
    mk_comm_free(&tr->own_world);
    free(tr->tokens);
    free(tr->targets);
    free(tr->counts);
    free(tr->lbl_sum);
    if (tr->log) fclose(tr->log);
}

int mk_train_run(const mk_config *cfg, const mk_train_opts *opts, mk_train_result *res)
{
    int rc = MK_OK;
    trainer tr = { .cfg = cfg };
    memset(res, 0, sizeof *res);
    MK_CHECK(mk_config_validate(cfg));
    if (opts->world) {
        tr.world = opts->world;
    } else {
        MK_CHECK(mk_comm_self(&tr.own_world));
        tr.world = tr.own_world;
    }
    tr.rank = mk_comm_rank(tr.world);
    tr.nranks = mk_comm_size(tr.world);
    const int ep = cfg->parallel.ep;
    if (tr.nranks % ep != 0) {
        rc = MK_FAIL(MK_ERR_USAGE, "parallel.ep = %d does not divide the %d ranks", ep, tr.nranks);
        goto done;
    }
    if (ep > 1) {
        /* Consecutive ranks form an expert-parallel group (they share a node first); ranks
         * with the same position in their group hold the same experts. */
        MK_CHECK_GOTO(rc, mk_comm_split(tr.world, tr.rank / ep, tr.rank, &tr.ep), done);
        MK_CHECK_GOTO(rc, mk_comm_split(tr.world, tr.rank % ep, tr.rank, &tr.edp), done);
    }
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
        MK_CHECK_GOTO(rc, mk_text_data_open(path, T, &tr.text), done);
    } else {
        mk_dataset_opts dopts = { .path = path, .mixture = cfg->data.mixture,
                                  .repeat_cap = cfg->data.repeat_cap, .seq_len = T,
                                  .seed = cfg->train.seed, .tokenizer = cfg->data.tokenizer,
                                  .model_vocab = cfg->model.vocab };
        MK_CHECK_GOTO(rc, mk_dataset_open(&dopts, &tr.ds), done);
    }
    MK_CHECK_GOTO(rc, mk_backend_cpu_create(cfg->train.threads, &tr.be), done);
    MK_CHECK_GOTO(rc, mk_model_create_ep(cfg, tr.be, tr.ep, &tr.model), done);
    MK_CHECK_GOTO(rc, mk_model_init(tr.model, cfg->train.seed), done);
    MK_CHECK_GOTO(rc, mk_lbl_create(cfg->lbl.mode, L, E, cfg->model.topk, &tr.lbl), done);
    /* The global scope spans every data-parallel rank: the whole world. */
    mk_lbl_set_allreduce(tr.lbl, lbl_allreduce, (void *)tr.world);
    tr.tokens = malloc((size_t)G * B * T * sizeof *tr.tokens);
    tr.targets = malloc((size_t)G * B * T * sizeof *tr.targets);
    tr.sample_domain = calloc((size_t)G * B, sizeof *tr.sample_domain);
    tr.counts = malloc((size_t)L * E * sizeof *tr.counts);
    tr.lbl_sum = malloc((size_t)L * sizeof *tr.lbl_sum);
    if (!tr.tokens || !tr.targets || !tr.sample_domain || !tr.counts || !tr.lbl_sum) {
        rc = MK_FAIL(MK_ERR_NOMEM, "trainer: out of memory");
        goto done;
    }
    char logpath[MK_PATH_MAX + 16];
    snprintf(logpath, sizeof logpath, "%s/log.tsv", cfg->run.dir);
    if (tr.rank == 0) { /* one writer for the run directory */
        MK_CHECK_GOTO(rc, make_dir(cfg->run.dir), done);
        tr.log = fopen(logpath, "w");
        if (!tr.log) {
            rc = MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", logpath, strerror(errno));
            goto done;
        }
        fprintf(tr.log, "step\tloss\tlbl\tmaxvio\tgnorm\tlr\n");
    }

    if (opts->out) {
        fprintf(opts->out,
                "moe-train: %zu parameters (%zu active per token), %d layers, %d experts top-%d, "
                "lbl %s, global batch %d x %d tokens, %d rank%s (ep %d)\n",
                mk_model_param_count(tr.model), mk_model_active_param_count(tr.model), L, E,
                cfg->model.topk, mk_lbl_mode_name(cfg->lbl.mode), G * B * tr.nranks, T, tr.nranks,
                tr.nranks > 1 ? "s" : "", ep);
        if (tr.text)
            fprintf(opts->out, "moe-train: data %s: %zu bytes of text, byte-level tokens\n", path,
                    mk_text_data_size(tr.text));
        for (int i = 0; tr.ds && i < mk_dataset_domains(tr.ds); i++)
            fprintf(opts->out, "moe-train: domain %-12s weight %.3f, %llu train / %llu val tokens (%s)\n",
                    mk_dataset_domain_name(tr.ds, i), mk_dataset_domain_weight(tr.ds, i),
                    (unsigned long long)mk_dataset_domain_tokens(tr.ds, i, 0),
                    (unsigned long long)mk_dataset_domain_tokens(tr.ds, i, 1), mk_dataset_tokenizer(tr.ds));
    }

    const double t0 = now_s();
    long tokens_done = 0;
    for (long step = 0; step < cfg->train.steps; step++) {
        step_stats st = { 0 };
        MK_CHECK_GOTO(rc, train_step(&tr, step, &st), done);
        tokens_done += (long)G * B * T * tr.nranks;
        if (step == 0) res->first_loss = st.loss;
        res->final_loss = st.loss;
        res->steps = step + 1;
        if (tr.log)
            fprintf(tr.log, "%ld\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\n", step + 1, st.loss, st.lbl, st.maxvio,
                st.gnorm, st.lr);
        /* log.every = 0 turns step lines off; the summary line still comes. */
        const int every = cfg->log.every;
        if (opts->out && every > 0 &&
            (step == 0 || (step + 1) % every == 0 || step + 1 == cfg->train.steps)) {
            double el = now_s() - t0;
            char eta[32];
            format_eta(el / (step + 1) * (cfg->train.steps - step - 1), eta, sizeof eta);
            fprintf(opts->out,
                    "step %6ld/%ld | loss %.4f | lbl %.4f | maxvio %.3f | gnorm %.3f | lr %.2e | "
                    "%.0f tok/s | eta %s\n",
                    step + 1, (long)cfg->train.steps, st.loss, st.lbl, st.maxvio, st.gnorm, st.lr,
                    tokens_done / (el > 0 ? el : 1e-9), eta);
            fflush(opts->out);
        }
    }
    res->seconds = now_s() - t0;
    res->tokens_per_s = tokens_done / (res->seconds > 0 ? res->seconds : 1e-9);
    if (tr.log && (fflush(tr.log) != 0 || ferror(tr.log))) {
        rc = MK_FAIL(MK_ERR_IO, "%s: write failed: %s", logpath, strerror(errno));
        goto done;
    }
    if (opts->out)
        fprintf(opts->out, "done: %ld steps in %.1f s, %.0f tok/s, loss %.4f -> %.4f (%.1f%% lower)\n",
                res->steps, res->seconds, res->tokens_per_s, res->first_loss, res->final_loss,
                100.0 * (1.0 - res->final_loss / res->first_loss));
done:
    trainer_free(&tr);
    return rc;
}
