/* test_report_metrics.c - analysis/mk_report_metrics.c against hand-computed values. */
#include <math.h>

#include "mk_report_metrics.h"
#include "tap.h"

int main(void)
{
    /* 4 experts, top-2, 10 tokens: counts sum to 20. */
    const int64_t c[4] = { 8, 6, 4, 2 };
    double s[4], p[4], q[4];
    mk_metric_shares(c, 10, 4, s);
    tap_close(s[0], 0.8, 0, 1e-15, "share = count / tokens (0.8)");
    tap_close(s[3], 0.2, 0, 1e-15, "share = count / tokens (0.2)");
    tap_close(mk_metric_top1(s, 4), 0.8, 0, 1e-15, "top-1 share 0.8");
    tap_close(mk_metric_topk(s, 4, 2), 0.7, 0, 1e-15, "top-K share (0.8+0.6)/2 = 0.7");
    const int64_t z[4] = { 0, 0, 0, 0 };
    mk_metric_shares(z, 0, 4, q);
    tap_ok(q[0] == 0 && q[3] == 0, "zero tokens give zero shares");
    tap_ok(mk_metric_distribution(c, 4, p), "distribution of non-zero counts");
    tap_close(p[0], 0.4, 0, 1e-15, "p = count / sum (0.4)");
    tap_ok(!mk_metric_distribution(z, 4, q), "distribution of zero counts fails");
    /* H(0.4,0.3,0.2,0.1) = 1.846439344671015 bits */
    tap_close(mk_metric_entropy_bits(p, 4), 1.846439344671015, 1e-12, 0, "entropy in bits");
    const double u[4] = { 0.25, 0.25, 0.25, 0.25 };
    tap_close(mk_metric_entropy_bits(u, 4), 2.0, 0, 1e-15, "uniform entropy = log2 E");
    const double a[2] = { 1, 0 }, b[2] = { 0, 1 }, h[2] = { 0.5, 0.5 };
    tap_close(mk_metric_js(a, b, 2), 1.0, 0, 1e-15, "JS of disjoint distributions = 1");
    tap_close(mk_metric_js(a, a, 2), 0.0, 0, 1e-15, "JS of equal distributions = 0");
    /* JS((1,0),(.5,.5)): m = (.75,.25); H(m) = 0.811278124459133, H(a) = 0, H(h) = 1 -> 0.311278124459133 */
    tap_close(mk_metric_js(a, h, 2), 0.311278124459133, 1e-12, 0, "JS((1,0),(1/2,1/2))");
    tap_close(mk_metric_js(h, a, 2), 0.311278124459133, 1e-12, 0, "JS is symmetric");
    /* loads 8,6,4,2: mean 5, max 8 -> 0.6 */
    tap_close(mk_metric_maxvio(c, 4), 0.6, 0, 1e-15, "MaxVio (8 - 5) / 5");
    const int64_t bal[3] = { 7, 7, 7 };
    tap_close(mk_metric_maxvio(bal, 3), 0.0, 0, 1e-15, "MaxVio of a balanced load = 0");
    tap_ok(isnan(mk_metric_maxvio(z, 4)), "MaxVio of no load is NaN");
    const int64_t d[5] = { 3, 0, 1, 0, 0 };
    tap_ok(mk_metric_dead(d, 5) == 3, "3 dead experts");
    tap_ok(mk_metric_dead(c, 4) == 0, "no dead experts");
    tap_close(mk_metric_maxvio(d, 5), 2.75, 0, 1e-15, "MaxVio with dead experts (3 - 0.8) / 0.8");
    return tap_done();
}
