/* mk_report_metrics.c - see mk_report_metrics.h. */
#include "mk_report_metrics.h"

#include <math.h>

void mk_metric_shares(const int64_t *counts, int64_t tokens, int experts, double *share)
{
    for (int e = 0; e < experts; e++) share[e] = tokens > 0 ? (double)counts[e] / (double)tokens : 0.0;
}

double mk_metric_top1(const double *share, int experts)
{
    double m = share[0];
    for (int e = 1; e < experts; e++)
        if (share[e] > m) m = share[e];
    return m;
}

double mk_metric_topk(const double *share, int experts, int k)
{
    /* k passes of "largest not yet taken" (E is small); ties are taken by index. */
    double sum = 0.0;
    unsigned char taken[4096] = { 0 };
    if (experts > 4096 || k < 1 || k > experts) return NAN;
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int e = 0; e < experts; e++)
            if (!taken[e] && (best < 0 || share[e] > share[best])) best = e;
        taken[best] = 1;
        sum += share[best];
    }
    return sum / k;
}

int mk_metric_distribution(const int64_t *counts, int experts, double *p)
{
    double s = 0.0;
    for (int e = 0; e < experts; e++) s += (double)counts[e];
    for (int e = 0; e < experts; e++) p[e] = s > 0 ? (double)counts[e] / s : 0.0;
    return s > 0;
}

double mk_metric_entropy_bits(const double *p, int experts)
{
    double h = 0.0;
    for (int e = 0; e < experts; e++)
        if (p[e] > 0) h -= p[e] * log2(p[e]);
    return h;
}

double mk_metric_js(const double *p, const double *q, int experts)
{
    double js = 0.0;
    for (int e = 0; e < experts; e++) {
        double m = 0.5 * (p[e] + q[e]);
        if (p[e] > 0) js += 0.5 * p[e] * log2(p[e] / m);
        if (q[e] > 0) js += 0.5 * q[e] * log2(q[e] / m);
    }
    return js < 0 ? 0.0 : js;
}

double mk_metric_maxvio(const int64_t *load, int experts)
{
    double mx = (double)load[0], s = 0.0;
    for (int e = 0; e < experts; e++) {
        s += (double)load[e];
        if ((double)load[e] > mx) mx = (double)load[e];
    }
    double mean = s / experts;
    return mean > 0 ? (mx - mean) / mean : NAN;
}

int mk_metric_dead(const int64_t *load, int experts)
{
    int n = 0;
    for (int e = 0; e < experts; e++) n += load[e] == 0;
    return n;
}
