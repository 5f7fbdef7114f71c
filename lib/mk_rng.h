/* mk_rng.h - small deterministic random numbers (splitmix64).
 *
 * Everything random in moekit (initialisation, sample order) is a pure function of the seed
 * and a stream id, so a run repeats exactly and a resumed run can rebuild its position
 * from counters instead of storing generator state. The state is 8 bytes and lives with
 * its user; there is no global generator.
 */
#ifndef MK_RNG_H
#define MK_RNG_H

#include <stdint.h>

typedef struct mk_rng { uint64_t state; } mk_rng;

/* A generator for (seed, stream): different streams give independent sequences. */
mk_rng mk_rng_make(uint64_t seed, uint64_t stream);
uint64_t mk_rng_u64(mk_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double mk_rng_uniform(mk_rng *r);
/* Uniform integer in [0, n), n >= 1, without modulo bias. */
uint64_t mk_rng_below(mk_rng *r, uint64_t n);
/* Standard normal (Box-Muller; two uniforms per call, no cached spare, so the sequence
 * does not depend on call history beyond the state). */
double mk_rng_normal(mk_rng *r);

#endif
