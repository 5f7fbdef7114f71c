/* mk_report_metrics.h - the report's metrics as pure functions over count arrays
 * (definitions: docs/report-metrics.md). No I/O, no allocation. */
#ifndef MK_REPORT_METRICS_H
#define MK_REPORT_METRICS_H

#include <stdint.h>

/* share[e] = counts[e] / tokens: the fraction of a domain's tokens that chose expert e among
 * their top-k (sums to k over e). tokens == 0 gives 0 everywhere. */
void mk_metric_shares(const int64_t *counts, int64_t tokens, int experts, double *share);

/* The largest of share[0..E-1] (top-1 share). */
double mk_metric_top1(const double *share, int experts);

/* The sum of the k largest shares divided by k (top-K share); k <= experts. */
double mk_metric_topk(const double *share, int experts, int k);

/* Normalise counts into a distribution p (p[e] = counts[e] / sum); returns 0 if sum == 0. */
int mk_metric_distribution(const int64_t *counts, int experts, double *p);

/* Shannon entropy of distribution p in bits (0 log 0 = 0). */
double mk_metric_entropy_bits(const double *p, int experts);

/* Jensen-Shannon divergence of p and q with base-2 logarithms (0..1). */
double mk_metric_js(const double *p, const double *q, int experts);

/* MaxVio = (max_e load[e] - mean_e load[e]) / mean_e load[e]; NaN if all loads are 0. */
double mk_metric_maxvio(const int64_t *load, int experts);

/* Number of experts with load 0. */
int mk_metric_dead(const int64_t *load, int experts);

#endif
