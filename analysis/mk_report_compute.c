/* mk_report_compute.c - window selection and per-run metrics (see mk_report.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"
#include "mk_report_metrics.h"

const mk_rl_series *mk_report_series(const mk_run_report *r)
{
    return r->src == MK_SRC_EVAL ? &r->log.eval : &r->log.train;
}

static int select_domains(mk_run_report *r, const char *list)
{
    const mk_rl *g = &r->log;
    r->dom = calloc((size_t)g->ndomains, sizeof *r->dom);
    if (!r->dom) return MK_FAIL(MK_ERR_NOMEM, "out of memory");
    if (!list) {
        for (int d = 0; d < g->ndomains; d++) r->dom[d] = d;
        r->nd = g->ndomains;
        return MK_OK;
    }
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = -1;
        for (int d = 0; d < g->ndomains; d++)
            if (strlen(g->domains[d]) == n && strncmp(g->domains[d], p, n) == 0) found = d;
        if (found < 0)
            return MK_FAIL(MK_ERR_INPUT, "%s: unknown domain '%.*s' (the log has:%s%s%s%s)", r->log.path,
                           (int)n, p, " ", g->domains[0], g->ndomains > 1 ? ", " : "",
                           g->ndomains > 1 ? g->domains[1] : "");
        int dup = 0;
        for (int i = 0; i < r->nd; i++) dup |= r->dom[i] == found;
        if (!dup) r->dom[r->nd++] = found;
        p += n;
        if (*p == ',') p++;
    }
    if (r->nd == 0) return MK_FAIL(MK_ERR_USAGE, "--domains: empty list");
    return MK_OK;
}

#define ALLOC(p, n)                                                             \
    do {                                                                        \
        if (!((p) = calloc((size_t)(n) > 0 ? (size_t)(n) : 1, sizeof *(p))))   \
            return MK_FAIL(MK_ERR_NOMEM, "out of memory");                      \
    } while (0)

int mk_report_compute(mk_run_report *r, int source, const mk_window *w, const char *domains)
{
    const mk_rl *g = &r->log;
    r->L = g->layers; r->E = g->experts; r->K = g->topk;
    r->src = source == MK_SRC_AUTO ? (g->eval.rows > 0 ? MK_SRC_EVAL : MK_SRC_TRAIN) : source;
    const mk_rl_series *s = mk_report_series(r);
    if (s->rows == 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: no %s rows logged (try --source %s)", g->path,
                       r->src == MK_SRC_EVAL ? "evaluation" : "training",
                       r->src == MK_SRC_EVAL ? "train" : "eval");
    MK_CHECK(select_domains(r, domains));
    int L = r->L, E = r->E, D = r->nd, Dm = g->ndomains;
    /* Window rows [r0, r1). */
    int64_t r0 = 0, r1 = s->rows;
    if (w->kind == 1) r0 = s->rows > w->n ? s->rows - w->n : 0;
    if (w->kind == 2) {
        while (r0 < s->rows && s->step[r0] < w->a) r0++;
        r1 = r0;
        while (r1 < s->rows && s->step[r1] <= w->b) r1++;
    }
    if (r1 <= r0)
        return MK_FAIL(MK_ERR_INPUT, "%s: the window steps:%lld-%lld holds no %s row (logged steps %lld..%lld)",
                       g->path, (long long)w->a, (long long)w->b, r->src == MK_SRC_EVAL ? "evaluation" : "training",
                       (long long)s->step[0], (long long)s->step[s->rows - 1]);
    r->rows = r1 - r0;
    r->step_first = s->step[r0];
    r->step_last = s->step[r1 - 1];
    ALLOC(r->counts, L * D * E); ALLOC(r->tokens, D); ALLOC(r->load, L * E);
    ALLOC(r->share, L * D * E); ALLOC(r->top1, L * D); ALLOC(r->topk, L * D);
    ALLOC(r->entropy, L * D); ALLOC(r->js, L * D * D); ALLOC(r->js_mean, L);
    ALLOC(r->maxvio_global, L); ALLOC(r->dead, L); ALLOC(r->lbl_win, L); ALLOC(r->maxvio_win, L);
    for (int64_t row = r0; row < r1; row++) {
        for (int i = 0; i < D; i++) r->tokens[i] += s->tokens[row * Dm + r->dom[i]];
        for (int l = 0; l < L; l++) {
            for (int i = 0; i < D; i++)
                for (int e = 0; e < E; e++)
                    r->counts[(l * D + i) * E + e] += s->counts[((row * L + l) * Dm + r->dom[i]) * E + e];
        }
    }
    /* Batch MaxVio and LBL: the training rows whose step lies in the window's step range. */
    const mk_rl_series *t = &g->train;
    int64_t nt = 0;
    for (int64_t row = 0; row < t->rows; row++)
        if (t->step[row] >= r->step_first && t->step[row] <= r->step_last) {
            nt++;
            for (int l = 0; l < L; l++) { r->lbl_win[l] += t->lbl[row * L + l]; r->maxvio_win[l] += t->maxvio[row * L + l]; }
        }
    for (int l = 0; l < L; l++) {
        r->lbl_win[l] = nt ? r->lbl_win[l] / (double)nt : NAN;
        r->maxvio_win[l] = nt ? r->maxvio_win[l] / (double)nt : NAN;
    }
    double *p = malloc(sizeof(double) * (size_t)D * (size_t)E);
    int *ok = malloc(sizeof(int) * (size_t)D);
    if (!p || !ok) { free(p); free(ok); return MK_FAIL(MK_ERR_NOMEM, "out of memory"); }
    double n_t1 = 0, n_js = 0, n_h = 0, n_mv = 0, n_b = 0;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < D; i++) {
            const int64_t *c = r->counts + (l * D + i) * E;
            double *sh = r->share + (l * D + i) * E;
            mk_metric_shares(c, r->tokens[i], E, sh);
            r->top1[l * D + i] = r->tokens[i] > 0 ? mk_metric_top1(sh, E) : NAN;
            r->topk[l * D + i] = r->tokens[i] > 0 ? mk_metric_topk(sh, E, r->K) : NAN;
            ok[i] = mk_metric_distribution(c, E, p + i * E);
            r->entropy[l * D + i] = ok[i] ? mk_metric_entropy_bits(p + i * E, E) : NAN;
            for (int e = 0; e < E; e++) r->load[l * E + e] += c[e];
            if (ok[i]) { r->mean_top1 += r->top1[l * D + i]; r->mean_topk += r->topk[l * D + i];
                         r->mean_entropy += r->entropy[l * D + i]; n_t1++; n_h++; }
        }
        double sum = 0; int pairs = 0;
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double v = ok[i] && ok[j] ? mk_metric_js(p + i * E, p + j * E, E) : NAN;
                r->js[(l * D + i) * D + j] = i == j && ok[i] ? 0.0 : v;
                if (i < j && ok[i] && ok[j]) { sum += v; pairs++; }
            }
        r->js_mean[l] = pairs ? sum / pairs : NAN;
        if (pairs) { r->mean_js += r->js_mean[l]; n_js++; }
        r->maxvio_global[l] = mk_metric_maxvio(r->load + l * E, E);
        if (!isnan(r->maxvio_global[l])) { r->mean_maxvio_global += r->maxvio_global[l]; n_mv++; }
        r->dead[l] = mk_metric_dead(r->load + l * E, E);
        if (nt) { r->mean_maxvio_batch += r->maxvio_win[l]; n_b++; }
    }
    free(p); free(ok);
    r->mean_top1 = n_t1 ? r->mean_top1 / n_t1 : NAN;
    r->mean_topk = n_t1 ? r->mean_topk / n_t1 : NAN;
    r->mean_entropy = n_h ? r->mean_entropy / n_h : NAN;
    r->mean_js = n_js ? r->mean_js / n_js : NAN;
    r->mean_maxvio_global = n_mv ? r->mean_maxvio_global / n_mv : NAN;
    r->mean_maxvio_batch = n_b ? r->mean_maxvio_batch / n_b : NAN;
    return MK_OK;
}

void mk_report_free(mk_run_report *r)
{
    free(r->dom); free(r->counts); free(r->tokens); free(r->load); free(r->share);
    free(r->top1); free(r->topk); free(r->entropy); free(r->js); free(r->js_mean);
    free(r->maxvio_global); free(r->dead); free(r->lbl_win); free(r->maxvio_win);
    mk_rl_free(&r->log);
    memset(r, 0, sizeof *r);
}
