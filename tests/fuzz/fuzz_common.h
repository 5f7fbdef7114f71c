/* fuzz_common.h - what every harness of tests/fuzz/ shares.
 *
 * The harnesses are libFuzzer targets (LLVMFuzzerTestOneInput). `make fuzz` links them with
 * clang's -fsanitize=fuzzer; `make check` links the same files with replay.c, a main() that
 * feeds them the committed corpus and crashers. Parsers that take a path get the input as a
 * file in a per-process scratch directory (under /dev/shm when there is one: the HDF5
 * harnesses open a file per input). A broken property is reported through FUZZ_ASSERT, which
 * aborts, so libFuzzer records the input as a crash.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700 /* nftw */
#endif

#include <fcntl.h>
#include <ftw.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond, ...)                                                   \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "fuzz property broken at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            abort();                                                             \
        }                                                                        \
    } while (0)

/* The scratch directory, made once per process and removed at exit. */
static char fuzz_dir_[256];

static inline int fuzz_rm_(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(p);
    return 0;
}

static inline void fuzz_dir_cleanup_(void)
{
    if (fuzz_dir_[0]) nftw(fuzz_dir_, fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
}

static inline const char *fuzz_dir(void)
{
    if (fuzz_dir_[0]) return fuzz_dir_;
    struct stat st;
    const char *base = getenv("FUZZ_TMPDIR");
    if (!base || !*base) base = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NULL;
    if (!base) base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/moekit-fuzz-XXXXXX", base);
    if (!mkdtemp(fuzz_dir_)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(fuzz_dir_cleanup_);
    return fuzz_dir_;
}

/* dir/name, in a static buffer per call site's choice of buf. */
static inline const char *fuzz_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", fuzz_dir(), name);
    return buf;
}

/* Write size bytes to path (replacing it). */
static inline void fuzz_write(const char *path, const void *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    const char *p = data;
    while (size > 0) {
        ssize_t w = write(fd, p, size);
        if (w <= 0) {
            perror(path);
            abort();
        }
        p += w;
        size -= (size_t)w;
    }
    close(fd);
}

#endif
