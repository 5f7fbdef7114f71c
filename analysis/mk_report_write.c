/* mk_report_write.c - report.md and the CSV tables (see mk_report_write.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_report_write.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"

#define DOM(r, i) ((r)->log.domains[(r)->dom[i]])

static FILE *open_out(const char *dir, const char *name, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    return f;
}

static int close_out(FILE *f, const char *path)
{
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return MK_FAIL(MK_ERR_IO, "%s: write failed", path);
    return MK_OK;
}

/* %.12g, or "nan". */
static const char *num(char *b, double v)
{
    if (isnan(v)) return strcpy(b, "nan");
    snprintf(b, 32, "%.12g", v);
    return b;
}

int mk_report_write_csv(const char *dir, int nrun, const mk_run_report *runs)
{
    char path[4096], a[32], b[32], c[32], d[32], e2[32], f2[32];
    FILE *f;
    /* summary.csv */
    if (!(f = open_out(dir, "summary.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,source,window_first_step,window_last_step,window_rows,layers,experts,topk,domains,"
               "uniform_share,mean_top1_share,mean_topk_share,mean_js_divergence,mean_entropy_bits,"
               "max_entropy_bits,maxvio_global_mean,maxvio_batch_mean,dead_experts_total,lbl_mode\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        int dead = 0;
        for (int l = 0; l < r->L; l++) dead += r->dead[l];
        fprintf(f, "%s,%s,%lld,%lld,%lld,%d,%d,%d,%d,%s,%s,%s,%s,%s,%s,", r->name,
                r->src == MK_SRC_EVAL ? "eval" : "train", (long long)r->step_first, (long long)r->step_last,
                (long long)r->rows, r->L, r->E, r->K, r->nd, num(a, (double)r->K / r->E), num(b, r->mean_top1),
                num(c, r->mean_topk), num(d, r->mean_js), num(e2, r->mean_entropy), num(f2, log2(r->E)));
        fprintf(f, "%s,%s,%d,%s\n", num(a, r->mean_maxvio_global), num(b, r->mean_maxvio_batch), dead,
                r->lbl_mode[0] ? r->lbl_mode : "unknown");
    }
    MK_CHECK(close_out(f, path));
    /* expert_shares.csv */
    if (!(f = open_out(dir, "expert_shares.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,layer,domain,expert,count,tokens,share,uniform_share\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++)
            for (int k = 0; k < r->nd; k++)
                for (int e = 0; e < r->E; e++) {
                    int64_t x = (l * r->nd + k) * r->E + e;
                    fprintf(f, "%s,%d,%s,%d,%lld,%lld,%s,%s\n", r->name, l, DOM(r, k), e, (long long)r->counts[x],
                            (long long)r->tokens[k], num(a, r->share[x]), num(b, (double)r->K / r->E));
                }
    }
    MK_CHECK(close_out(f, path));
    /* concentration.csv */
    if (!(f = open_out(dir, "concentration.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,layer,domain,tokens,top1_share,topk_share,uniform_share,entropy_bits\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++)
            for (int k = 0; k < r->nd; k++)
                fprintf(f, "%s,%d,%s,%lld,%s,%s,%s,%s\n", r->name, l, DOM(r, k), (long long)r->tokens[k],
                        num(a, r->top1[l * r->nd + k]), num(b, r->topk[l * r->nd + k]),
                        num(c, (double)r->K / r->E), num(d, r->entropy[l * r->nd + k]));
    }
    MK_CHECK(close_out(f, path));
    /* js_divergence.csv */
    if (!(f = open_out(dir, "js_divergence.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,layer,domain_a,domain_b,js_divergence\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++)
            for (int p = 0; p < r->nd; p++)
                for (int q = p + 1; q < r->nd; q++)
                    fprintf(f, "%s,%d,%s,%s,%s\n", r->name, l, DOM(r, p), DOM(r, q),
                            num(a, r->js[(l * r->nd + p) * r->nd + q]));
    }
    MK_CHECK(close_out(f, path));
    /* layers.csv */
    if (!(f = open_out(dir, "layers.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,layer,js_mean,entropy_mean_bits,maxvio_global,maxvio_batch_mean,lbl_mean,dead_experts,dead_list\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++) {
            double h = 0;
            for (int k = 0; k < r->nd; k++) h += r->entropy[l * r->nd + k] / r->nd;
            fprintf(f, "%s,%d,%s,%s,%s,%s,%s,%d,", r->name, l, num(a, r->js_mean[l]), num(b, h),
                    num(c, r->maxvio_global[l]), num(d, r->maxvio_win[l]), num(e2, r->lbl_win[l]), r->dead[l]);
            int first = 1;
            for (int e = 0; e < r->E; e++)
                if (r->load[l * r->E + e] == 0) { fprintf(f, "%s%d", first ? "" : ";", e); first = 0; }
            fprintf(f, "\n");
        }
    }
    MK_CHECK(close_out(f, path));
    /* train_steps.csv, eval_steps.csv */
    for (int ev = 0; ev < 2; ev++) {
        if (!(f = open_out(dir, ev ? "eval_steps.csv" : "train_steps.csv", path, sizeof path))) return MK_ERR_IO;
        fprintf(f, ev ? "run,step,layer,lbl,maxvio\n" : "run,step,layer,loss,lbl,maxvio\n");
        for (int i = 0; i < nrun; i++) {
            const mk_run_report *r = &runs[i];
            const mk_rl_series *s = ev ? &r->log.eval : &r->log.train;
            for (int64_t t = 0; t < s->rows; t++)
                for (int l = 0; l < r->L; l++) {
                    fprintf(f, "%s,%lld,%d,", r->name, (long long)s->step[t], l);
                    if (!ev) fprintf(f, "%s,", num(a, s->loss[t]));
                    fprintf(f, "%s,%s\n", num(b, s->lbl[t * r->L + l]), num(c, s->maxvio[t * r->L + l]));
                }
        }
        MK_CHECK(close_out(f, path));
    }
    /* val_loss.csv */
    if (!(f = open_out(dir, "val_loss.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "run,step,domain,loss,perplexity\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        const mk_rl_series *s = &r->log.eval;
        for (int64_t t = 0; t < s->rows; t++)
            for (int k = 0; k < r->nd; k++) {
                double v = s->loss[t * r->log.ndomains + r->dom[k]];
                fprintf(f, "%s,%lld,%s,%s,%s\n", r->name, (long long)s->step[t], DOM(r, k), num(a, v), num(b, exp(v)));
            }
    }
    MK_CHECK(close_out(f, path));
    /* comparison.csv: one column per run */
    if (!(f = open_out(dir, "comparison.csv", path, sizeof path))) return MK_ERR_IO;
    fprintf(f, "metric");
    for (int i = 0; i < nrun; i++) fprintf(f, ",%s", runs[i].name);
    fprintf(f, "\n");
    static const char *names[] = { "uniform_share", "mean_top1_share", "mean_topk_share", "mean_js_divergence",
                                   "mean_entropy_bits", "maxvio_global_mean", "maxvio_batch_mean" };
    for (int m = 0; m < 7; m++) {
        fprintf(f, "%s", names[m]);
        for (int i = 0; i < nrun; i++) {
            const mk_run_report *r = &runs[i];
            double v[] = { (double)r->K / r->E, r->mean_top1, r->mean_topk, r->mean_js, r->mean_entropy,
                           r->mean_maxvio_global, r->mean_maxvio_batch };
            fprintf(f, ",%s", num(a, v[m]));
        }
        fprintf(f, "\n");
    }
    MK_CHECK(close_out(f, path));
    return MK_OK;
}

static const char *fx(char *b, double v, int prec)
{
    if (isnan(v)) return strcpy(b, "n/a");
    snprintf(b, 32, "%.*f", prec, v);
    return b;
}

int mk_report_write_md(const char *dir, int nrun, const mk_run_report *runs, const char *window_text)
{
    char path[4096], a[32], b[32], c[32], d[32], e2[32], g1[32], g2[32], g3[32], g4[32];
    FILE *f = open_out(dir, "report.md", path, sizeof path);
    if (!f) return MK_ERR_IO;
    fprintf(f, "# moe-report: expert specialisation and load balance\n\n## Summary\n\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        double u = (double)r->K / r->E;
        fprintf(f, "**%s** (%s rows, window %s: %lld row%s, steps %lld..%lld; L=%d, E=%d, K=%d; lbl.mode %s). "
                   "Mean top-1 expert share **%s** against the uniform K/E = %s (%s times uniform); "
                   "mean top-K share %s; mean Jensen-Shannon divergence between domains **%s** (0..1); "
                   "mean routing entropy %s bits (max %s). MaxVio (mean over layers): global **%s**, "
                   "batch %s. ",
                r->name, r->src == MK_SRC_EVAL ? "evaluation" : "training", window_text, (long long)r->rows,
                r->rows == 1 ? "" : "s", (long long)r->step_first, (long long)r->step_last, r->L, r->E, r->K,
                r->lbl_mode[0] ? r->lbl_mode : "unknown", fx(a, r->mean_top1, 4), fx(b, u, 4),
                fx(c, r->mean_top1 / u, 2), fx(d, r->mean_topk, 4), fx(e2, r->mean_js, 4),
                fx(g1, r->mean_entropy, 3), fx(g2, log2(r->E), 3), fx(g3, r->mean_maxvio_global, 3),
                fx(g4, r->mean_maxvio_batch, 3));
        const mk_rl_series *s = &r->log.eval;
        if (s->rows > 0) {
            fprintf(f, "Final validation loss (step %lld):", (long long)s->step[s->rows - 1]);
            for (int k = 0; k < r->nd; k++) {
                double v = s->loss[(s->rows - 1) * r->log.ndomains + r->dom[k]];
                fprintf(f, "%s %s %s (ppl %s)", k ? "," : "", DOM(r, k), fx(a, v, 4), fx(b, exp(v), 2));
            }
            fprintf(f, ".");
        } else
            fprintf(f, "No evaluation pass logged (no validation loss).");
        int dead = 0;
        for (int l = 0; l < r->L; l++) dead += r->dead[l];
        fprintf(f, " Dead experts over the window: %d.\n\n", dead);
    }
    if (nrun > 1) {
        fprintf(f, "### Comparison (comparison.csv)\n\n| metric |");
        for (int i = 0; i < nrun; i++) fprintf(f, " %s |", runs[i].name);
        fprintf(f, "\n|---|");
        for (int i = 0; i < nrun; i++) fprintf(f, "---|");
        fprintf(f, "\n");
        static const char *names[] = { "uniform share K/E", "mean top-1 share", "mean top-K share",
                                       "mean JS divergence", "mean entropy (bits)", "MaxVio global",
                                       "MaxVio batch" };
        for (int m = 0; m < 7; m++) {
            fprintf(f, "| %s |", names[m]);
            for (int i = 0; i < nrun; i++) {
                const mk_run_report *r = &runs[i];
                double v[] = { (double)r->K / r->E, r->mean_top1, r->mean_topk, r->mean_js, r->mean_entropy,
                               r->mean_maxvio_global, r->mean_maxvio_batch };
                fprintf(f, " %s |", fx(a, v[m], 4));
            }
            fprintf(f, "\n");
        }
        fprintf(f, "\n");
    }
    fprintf(f, "## Definitions\n\n"
               "Over the window's rows of the chosen source (evaluation passes `/eval/...` when present, "
               "training steps otherwise), counts are summed: C[l,d,e] and T[d].\n\n"
               "- **share** of expert e for domain d in layer l = C[l,d,e] / T[d]: the fraction of the domain's "
               "tokens that chose e among their top-K (sums to K over e); uniform reference K/E.\n"
               "- **top-1 share** = max_e share; **top-K share** = (sum of the K largest shares) / K "
               "(both equal K/E under uniform routing, 1 when all tokens pick the same experts).\n"
               "- **p_d** = C[l,d,:] / sum_e C[l,d,e]; **entropy** H(p_d) = -sum p log2 p bits (max log2 E); "
               "**JS divergence** JS(p_a,p_b) = H((p_a+p_b)/2) - (H(p_a)+H(p_b))/2 in bits (0..1), "
               "averaged over domain pairs.\n"
               "- **MaxVio global** per layer = (max_e load_e - mean_e load_e) / mean_e load_e with "
               "load_e = sum_d C[l,d,e]; **MaxVio batch** = the logged per-step `/maxvio` of training steps in "
               "the window's step range, averaged; **LBL** = logged `/lbl`.\n"
               "- **dead expert**: load_e = 0 over the window. **perplexity** = exp(validation loss).\n\n"
               "See docs/report-metrics.md for the CSV columns.\n\n");
    fprintf(f, "## Tables\n\n### Concentration per layer and domain (concentration.csv)\n\n"
               "| run | layer | domain | tokens | top-1 share | top-K share | entropy (bits) |\n|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++)
            for (int k = 0; k < r->nd; k++)
                fprintf(f, "| %s | %d | %s | %lld | %s | %s | %s |\n", r->name, l, DOM(r, k), (long long)r->tokens[k],
                        fx(a, r->top1[l * r->nd + k], 4), fx(b, r->topk[l * r->nd + k], 4),
                        fx(c, r->entropy[l * r->nd + k], 3));
    }
    fprintf(f, "\n### Per layer (layers.csv)\n\n| run | layer | mean JS | MaxVio global | MaxVio batch | LBL | dead experts |\n"
               "|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nrun; i++) {
        const mk_run_report *r = &runs[i];
        for (int l = 0; l < r->L; l++)
            fprintf(f, "| %s | %d | %s | %s | %s | %s | %d |\n", r->name, l, fx(a, r->js_mean[l], 4),
                    fx(b, r->maxvio_global[l], 4), fx(c, r->maxvio_win[l], 4), fx(d, r->lbl_win[l], 4), r->dead[l]);
    }
    fprintf(f, "\nPairwise JS divergences: js_divergence.csv; every share: expert_shares.csv; per-step LBL "
               "and MaxVio: train_steps.csv, eval_steps.csv; validation loss over time: val_loss.csv.\n\n");
    fprintf(f, "## Figures\n\nEach figure is %dx%d (PNG pixels; SVG points), runs side by side on the same scales.\n\n",
            900, 600);
    for (int l = 0; l < runs[0].L; l++)
        fprintf(f, "![layer %d heatmap](heatmap_layer%d.png)\n![layer %d sorted frequencies](freq_bars_layer%d.png)\n\n",
                l, l, l, l);
    fprintf(f, "![training loss](curve_loss.png)\n![LBL](curve_lbl.png)\n![MaxVio](curve_maxvio.png)\n"
               "![validation loss](curve_val_loss.png)\n");
    return close_out(f, path);
}
