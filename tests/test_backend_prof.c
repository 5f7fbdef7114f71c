/* test_backend_prof.c - the op-by-op profiler (mk_backend_prof.c) in both modes.
 *
 * The timeline mode needs device timestamps; here the CPU backend gets stand-in ones taken
 * from the host's clock (a mark is "reached" when it is recorded), so an op's time is its
 * host time and a pause between two ops is idle time before the second. That is enough to
 * check what the profiler adds up: which op the idle time is charged to, the number of
 * calls, and that more ops than there are timestamp slots between two reads lose nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mk_backend.h"
#include "mk_backend_prof.h"
#include "mk_error.h"
#include "tap.h"

/* The CPU backend with stand-in timestamps. ops comes first: an op finds this struct
 * through be->ops. */
typedef struct fake {
    mk_backend_ops ops;
    double t[MK_MARKS];
    unsigned char recorded[MK_MARKS];
    long marks;
    int overlap_sms;    /* what comm_overlap was last told */
} fake;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static int fake_mark(mk_backend *be, int i)
{
    fake *f = (fake *)be->ops;
    if (i < 0 || i >= MK_MARKS) return MK_FAIL(MK_ERR_INTERNAL, "fake mark %d", i);
    f->t[i] = now_ms();
    f->recorded[i] = 1;
    f->marks++;
    return MK_OK;
}

static int fake_mark_ms(mk_backend *be, int a, int b, double *ms)
{
    fake *f = (fake *)be->ops;
    if (a < 0 || b < 0 || a >= MK_MARKS || b >= MK_MARKS || !f->recorded[a] || !f->recorded[b])
        return MK_FAIL(MK_ERR_INTERNAL, "fake mark_ms(%d, %d): not recorded", a, b);
    *ms = f->t[b] - f->t[a];
    return MK_OK;
}

static int fake_comm_overlap(mk_backend *be, int sms)
{
    ((fake *)be->ops)->overlap_sms = sms;
    return MK_OK;
}

/* A CPU backend whose ops table is f's (f outlives it). */
static mk_backend *with_marks(fake *f)
{
    mk_backend *be;
    if (mk_backend_cpu_create(1, &be) != MK_OK) return NULL;
    memset(f, 0, sizeof *f);
    f->ops = *be->ops;
    f->ops.mark = fake_mark;
    f->ops.mark_ms = fake_mark_ms;
    f->ops.comm_overlap = fake_comm_overlap;
    be->ops = &f->ops;
    return be;
}

static void pause_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* A profiler (timeline over the stand-in timestamps when f is given, else synchronised
 * over the CPU backend) with one buffer of `bytes`, its times reset; NULL after a failed
 * check. */
static mk_backend *profiled(fake *f, size_t bytes, float **buf)
{
    mk_backend *inner = NULL, *be = NULL;
    if (f) inner = with_marks(f);
    else if (mk_backend_cpu_create(1, &inner) != MK_OK) inner = NULL;
    if (!inner || mk_backend_prof_create(inner, f != NULL, &be) != MK_OK) {
        tap_ok(0, "%s profiler", f ? "timeline" : "synchronised");
        return NULL;
    }
    if (be->ops->alloc(be, bytes, (void **)buf) != MK_OK) {
        tap_ok(0, "buffer");
        mk_backend_destroy(&be);
        return NULL;
    }
    mk_backend_prof_reset(be); /* allocations left out, as moe-train leaves out step 1 */
    return be;
}

/* One op's line of the report: its ms per step, calls per step and idle ms before it. */
typedef struct line {
    double ms, idle;
    long calls;
    int found;
} line;

static line report_line(mk_backend *be, long steps, const char *op, char *head, size_t head_size)
{
    line l = {0, 0, 0, 0};
    FILE *f = tmpfile();
    if (!f) return l;
    mk_backend_prof_report(be, f, steps);
    rewind(f);
    char buf[512], name[64];
    int first = 1;
    while (fgets(buf, sizeof buf, f)) {
        if (first && head) snprintf(head, head_size, "%.*s", (int)strcspn(buf, "\n"), buf);
        first = 0;
        double ms, pct, idle = 0;
        long calls;
        const int n = sscanf(buf, "profile: %63s %lf ms/step %lf%% %ld calls %lf", name, &ms, &pct, &calls, &idle);
        if (n >= 4 && strcmp(name, op) == 0) l.ms = ms, l.calls = calls, l.idle = n == 5 ? idle : 0, l.found = 1;
    }
    fclose(f);
    return l;
}

static void test_needs_marks(void)
{
    mk_backend *cpu, *p = NULL;
    if (mk_backend_cpu_create(1, &cpu) != MK_OK) {
        tap_ok(0, "cpu backend");
        return;
    }
    const int rc = mk_backend_prof_create(cpu, 1, &p); /* its message goes to stderr */
    tap_ok(rc == MK_ERR_USAGE && p == NULL, "timeline over a backend without timestamps: a usage error (%d)", rc);
    mk_backend_destroy(&cpu); /* still the caller's */
}

static void test_idle_charged_to_next_op(void)
{
    fake f;
    float *a = NULL, *b = NULL, h[16];
    mk_backend *be = profiled(&f, sizeof h, &a);
    if (!be) return;
    const int ok = be->ops->alloc(be, sizeof h, (void **)&b) == MK_OK;
    mk_backend_prof_reset(be);
    for (int step = 0; ok && step < 2; step++) {
        be->ops->zero(be, a, sizeof h);
        pause_ms(30); /* the host is late with the next op: the queue idles */
        be->ops->copy(be, b, a, sizeof h);
        be->ops->to_host(be, h, b, sizeof h);
    }
    tap_ok(ok, "buffers");
    char head[256] = "";
    const line z = report_line(be, 2, "zero", head, sizeof head);
    const line c = report_line(be, 2, "copy", NULL, 0);
    const line t = report_line(be, 2, "to_host", NULL, 0);
    tap_ok(strstr(head, "timeline of 2 steps") != NULL, "the report says timeline: %s", head);
    tap_ok(z.found && c.found && t.found, "zero, copy and to_host reported");
    tap_ok(z.calls == 1 && c.calls == 1 && t.calls == 1, "one call of each per step (%ld %ld %ld)", z.calls,
           c.calls, t.calls);
    tap_ok(c.idle >= 29.0 && c.idle < 500.0, "the pause is idle time before copy: %.3f ms per step", c.idle);
    /* zero's first call follows nothing read yet; its second follows to_host at once */
    tap_ok(z.idle < 15.0, "little idle before zero: %.3f ms per step", z.idle);
    tap_ok(t.idle < 15.0, "little idle before to_host: %.3f ms per step", t.idle);
    tap_ok(c.ms < 15.0 && z.ms < 15.0, "the ops themselves are short: %.3f, %.3f ms", z.ms, c.ms);
    be->ops->free(be, a);
    be->ops->free(be, b);
    mk_backend_destroy(&be);
}

/* More ops between two reads than the slots hold: read in batches, nothing lost. */
static void test_many_ops_between_reads(void)
{
    fake f;
    float *a = NULL, h[4];
    mk_backend *be = profiled(&f, sizeof h, &a);
    if (!be) return;
    const int n = 3 * MK_MARKS + 7;
    for (int i = 0; i < n; i++) be->ops->zero(be, a, sizeof h);
    be->ops->to_host(be, h, a, sizeof h);
    char head[256] = "";
    const line z = report_line(be, 1, "zero", head, sizeof head);
    tap_ok(z.found && z.calls == n, "%d zero calls counted (%ld)", n, z.calls);
    tap_ok(strstr(head, "could not be read") == NULL, "every timestamp read: %s", head);
    tap_ok(f.marks == 2L * (n + 1) + 2, "two marks per op (%ld)", f.marks);
    be->ops->free(be, a);
    mk_backend_destroy(&be);
}

static void test_synchronised_mode(void)
{
    float *a = NULL, h[8];
    mk_backend *be = profiled(NULL, sizeof h, &a);
    if (!be) return;
    for (int i = 0; i < 6; i++) be->ops->zero(be, a, sizeof h);
    be->ops->to_host(be, h, a, sizeof h);
    char head[256] = "";
    const line z = report_line(be, 3, "zero", head, sizeof head);
    tap_ok(strstr(head, "synchronised op time") != NULL, "the report says synchronised: %s", head);
    tap_ok(z.found && z.calls == 2, "6 zero calls over 3 steps: 2 per step (%ld)", z.calls);
    be->ops->free(be, a);
    mk_backend_destroy(&be);
}

/* The profiler passes comm_overlap on where the backend has it, and has none where it has
 * none (the trainer then skips it). */
static void test_comm_overlap_passed_on(void)
{
    fake f;
    float *a = NULL;
    mk_backend *be = profiled(&f, 64, &a);
    if (!be) return;
    int rc = be->ops->comm_overlap ? be->ops->comm_overlap(be, 16) : MK_ERR_INTERNAL;
    tap_ok(rc == MK_OK && f.overlap_sms == 16, "comm_overlap(16) reaches the backend (%d)", f.overlap_sms);
    rc = be->ops->comm_overlap(be, 0);
    tap_ok(rc == MK_OK && f.overlap_sms == 0, "comm_overlap(0) reaches the backend (%d)", f.overlap_sms);
    be->ops->free(be, a);
    mk_backend_destroy(&be);
    be = profiled(NULL, 64, &a);
    if (!be) return;
    tap_ok(be->ops->comm_overlap == NULL, "over the CPU backend, no comm_overlap");
    be->ops->free(be, a);
    mk_backend_destroy(&be);
}

int main(void)
{
    test_needs_marks();
    test_comm_overlap_passed_on();
    test_idle_charged_to_next_op();
    test_many_ops_between_reads();
    test_synchronised_mode();
    return tap_done();
}
