/* mk_gg_cutlass_wide2.cu - the grouped GEMM kernels of schedule gg_wide2 (mk_gg_cutlass_kern.cuh),
 * in a file of their own so that make compiles the schedules in parallel. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#ifdef MK_HAVE_CUTLASS
#include "mk_gg_cutlass_kern.cuh"

int mk_gg_cl_wide2(int form, const gg_ctx *c, const gg_groups &t, float beta, const char *what)
{
    return gg_run_form<gg_wide2>(form, c, t, beta, what);
}
#endif
