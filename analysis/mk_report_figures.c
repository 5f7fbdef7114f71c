/* mk_report_figures.c - builds the report's figures from the runs' data (drawing is in
 * mk_report_plot.c): heatmap_layerL, freq_bars_layerL, curve_loss, curve_lbl, curve_maxvio,
 * curve_val_loss, each .png and .svg. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mk_error.h"
#include "mk_report_plot.h"
#include "mk_report_write.h"

enum { MAXP = 64 };

static int layer_figures(const char *dir, int nrun, const mk_run_report *runs, int l)
{
    char base[4096], title[128];
    mk_heat_panel hp[MAXP];
    double vmax = 0, ref = (double)runs[0].K / runs[0].E;
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        const char **labels = malloc(sizeof(char *) * (size_t)r->nd);
        if (!labels) { for (int j = 0; j < i; j++) free((void *)hp[j].row_labels); return MK_FAIL(MK_ERR_NOMEM, "out of memory"); }
        for (int k = 0; k < r->nd; k++) labels[k] = r->log.domains[r->dom[k]];
        hp[i] = (mk_heat_panel){ r->name, r->nd, r->E, r->share + (size_t)l * r->nd * r->E, labels };
        for (int k = 0; k < r->nd * r->E; k++) vmax = fmax(vmax, hp[i].v[k]);
    }
    snprintf(base, sizeof base, "%s/heatmap_layer%d", dir, l);
    snprintf(title, sizeof title, "Layer %d: share of each domain's tokens choosing each expert", l);
    int rc = mk_plot_heatmap(base, title, nrun, hp, vmax, ref);
    for (int i = 0; i < nrun; i++) free((void *)hp[i].row_labels);
    MK_CHECK(rc);
    int ncol = 0;
    for (int i = 0; i < nrun; i++) ncol = runs[i].nd > ncol ? runs[i].nd : ncol;
    mk_bar_panel *bp = calloc((size_t)(nrun * ncol), sizeof *bp);
    char (*names)[96] = calloc((size_t)(nrun * ncol), sizeof *names);
    if (!bp || !names) { free(bp); free(names); return MK_FAIL(MK_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < nrun; i++)
        for (int k = 0; k < ncol; k++) {
            const mk_run_report *r = &runs[i];
            mk_bar_panel *p = &bp[i * ncol + k];
            if (k < r->nd) {
                snprintf(names[i * ncol + k], 96, "%s: %s", r->name, r->log.domains[r->dom[k]]);
                *p = (mk_bar_panel){ names[i * ncol + k], r->E, r->share + ((size_t)l * r->nd + k) * r->E };
            } else
                *p = (mk_bar_panel){ "", 0, NULL };
        }
    snprintf(base, sizeof base, "%s/freq_bars_layer%d", dir, l);
    snprintf(title, sizeof title, "Layer %d: expert selection frequency per domain, sorted", l);
    rc = mk_plot_bars(base, title, nrun, ncol, bp, vmax, ref);
    free(bp);
    free(names);
    return rc;
}

/* what: 0 train loss, 1 lbl per layer, 2 maxvio per layer, 3 val loss per domain. */
static int curve(const char *dir, int nrun, const mk_run_report *runs, int what)
{
    static const char *file[] = { "curve_loss", "curve_lbl", "curve_maxvio", "curve_val_loss" };
    static const char *title[] = { "Training loss", "Load-balancing loss per layer (training steps)",
                                   "MaxVio (batch) per layer (training steps)", "Validation loss per domain" };
    static const char *ylab[] = { "loss", "LBL", "MaxVio", "loss" };
    mk_line_panel panels[MAXP];
    int total = 0;
    for (int i = 0; i < nrun; i++) total += what == 0 ? 1 : what == 3 ? runs[i].nd : runs[i].L;
    mk_line *lines = calloc((size_t)total, sizeof *lines);
    double **bufs = calloc((size_t)total * 2, sizeof *bufs);
    char (*labels)[64] = calloc((size_t)total, sizeof *labels);
    int n = 0, rc = MK_OK;
    if (!lines || !bufs || !labels) { rc = MK_FAIL(MK_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        const mk_rl_series *s = what == 3 ? &r->log.eval : &r->log.train;
        int nl = what == 0 ? 1 : what == 3 ? r->nd : r->L;
        panels[i] = (mk_line_panel){ r->name, nl, lines + n };
        for (int j = 0; j < nl; j++, n++) {
            double *x = bufs[2 * n] = malloc(sizeof(double) * (size_t)(s->rows + 1));
            double *y = bufs[2 * n + 1] = malloc(sizeof(double) * (size_t)(s->rows + 1));
            if (!x || !y) { rc = MK_FAIL(MK_ERR_NOMEM, "out of memory"); goto done; }
            for (int64_t t = 0; t < s->rows; t++) {
                x[t] = (double)s->step[t];
                y[t] = what == 0 ? s->loss[t] : what == 1 ? s->lbl[t * r->L + j] : what == 2 ? s->maxvio[t * r->L + j]
                                                                  : s->loss[t * r->log.ndomains + r->dom[j]];
            }
            if (what == 0) snprintf(labels[n], 64, "loss");
            else if (what == 3) snprintf(labels[n], 64, "%s", r->log.domains[r->dom[j]]);
            else snprintf(labels[n], 64, "layer %d", j);
            lines[n] = (mk_line){ labels[n], (int)s->rows, x, y };
        }
    }
    char base[4096];
    snprintf(base, sizeof base, "%s/%s", dir, file[what]);
    rc = mk_plot_lines(base, title[what], "step", ylab[what], nrun, panels);
done:
    if (bufs)
        for (int k = 0; k < 2 * total; k++) free(bufs[k]);
    free(bufs); free(lines); free(labels);
    return rc;
}

int mk_report_write_figures(const char *dir, int nrun, const mk_run_report *runs)
{
    if (nrun > MAXP) return MK_FAIL(MK_ERR_USAGE, "at most %d runs per report", MAXP);
    for (int l = 0; l < runs[0].L; l++) MK_CHECK(layer_figures(dir, nrun, runs, l));
    for (int w = 0; w < 4; w++) MK_CHECK(curve(dir, nrun, runs, w));
    return MK_OK;
}
