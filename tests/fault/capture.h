/* capture.h - stderr of one operation into a file, and its "moekit: error:" lines, for the
 * fault loops (alloc_loop, h5_loop) that check each failed run says exactly one line. */
#ifndef MK_TEST_CAPTURE_H
#define MK_TEST_CAPTURE_H

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct capture {
    char path[4096]; /* the file that receives stderr */
    int saved;       /* the real stderr while capturing */
} capture;

static inline void capture_begin(capture *c)
{
    fflush(stderr);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
}

/* Restores stderr; returns how many "moekit: error:" lines were written, the first in first. */
static inline int capture_end(capture *c, char *first, size_t n)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    first[0] = 0;
    FILE *f = fopen(c->path, "r");
    int lines = 0;
    char line[2048];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "moekit: error:", 14) == 0 && lines++ == 0) snprintf(first, n, "%s", line);
    if (f) fclose(f);
    size_t l = strlen(first);
    if (l && first[l - 1] == '\n') first[l - 1] = 0;
    return lines;
}

#endif
