/* mk_rng.c - splitmix64 (Steele, Lea, Flood 2014): tiny state, good equidistribution. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

mk_rng mk_rng_make(uint64_t seed, uint64_t stream)
{
    /* Hash seed and stream together so nearby seeds and streams do not overlap. */
    uint64_t s = seed ^ 0x6A09E667F3BCC909ull;
    uint64_t a = splitmix64(&s);
    s = stream ^ a;
    mk_rng r = { splitmix64(&s) };
    return r;
}

uint64_t mk_rng_u64(mk_rng *r) { return splitmix64(&r->state); }

double mk_rng_uniform(mk_rng *r) { return (double)(mk_rng_u64(r) >> 11) * 0x1.0p-53; }

uint64_t mk_rng_below(mk_rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = mk_rng_u64(r); while (x >= limit);
    return x % n;
}

double mk_rng_normal(mk_rng *r)
{
    double u1 = 1.0 - mk_rng_uniform(r); /* (0, 1]: log is finite */
    double u2 = mk_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}
