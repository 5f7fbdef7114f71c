/* mk_backend_prof.h - op-by-op timing of any backend (MOEKIT_PROFILE=1 or =timeline in
 * moe-train).
 */
#ifndef MK_BACKEND_PROF_H
#define MK_BACKEND_PROF_H

#include <stdio.h>

#include "mk_backend.h"

/* A backend that runs inner's ops and times each: inner synchronised after every op, or,
 * with timeline, bracketed by inner's device timestamps (mark/mark_ms; MK_ERR_USAGE
 * without them) and nothing synchronised. It owns inner from now on: destroying it
 * destroys inner. */
int mk_backend_prof_create(mk_backend *inner, int timeline, mk_backend **out);
/* Forget the times so far (moe-train does after the first step: start-up costs). */
void mk_backend_prof_reset(mk_backend *be);
/* Per-op time per step, largest first (timeline: with the idle time before each op). Does
 * nothing for a backend not made here. */
void mk_backend_prof_report(mk_backend *be, FILE *f, long steps);

#endif
