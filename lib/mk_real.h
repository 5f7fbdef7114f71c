/* mk_real.h - the floating-point type of the CPU reference backend.
 *
 * moekit's CPU backend computes in fp32 (mk_real = float). The gradient-check tests build
 * the same sources a second time with -DMK_REAL_DOUBLE so finite differences can be compared
 * at 1e-6 instead of fighting fp32 round-off; nothing else uses the double build.
 */
#ifndef MK_REAL_H
#define MK_REAL_H

#ifdef MK_REAL_DOUBLE
typedef double mk_real;
#define MK_REAL_NAME "float64"
#else
typedef float mk_real;
#define MK_REAL_NAME "float32"
#endif

#endif
