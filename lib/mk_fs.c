/* mk_fs.c - fsync by path and mkdir -p (see mk_fs.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mk_config.h"
#include "mk_error.h"

int mk_fs_fsync(const char *path, int dir)
{
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot open for fsync: %s", path, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems cannot sync a directory (EINVAL); nothing more can be done there. */
    if (r != 0 && !(dir && e == EINVAL)) return MK_FAIL(MK_ERR_IO, "%s: fsync failed: %s", path, strerror(e));
    return MK_OK;
}

int mk_fs_fsync_parent(const char *path)
{
    char dir[MK_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    return mk_fs_fsync(dir, 1);
}

int mk_fs_mkdir_p(const char *path)
{
    char buf[MK_PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return MK_FAIL(MK_ERR_USAGE, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return MK_FAIL(MK_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return MK_FAIL(MK_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    return MK_OK;
}

int mk_fs_clear_tmp(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return MK_OK;
        return MK_FAIL(MK_ERR_IO, "%s: cannot check the temporary name: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return MK_FAIL(MK_ERR_IO, "%s: the temporary name is taken by a %s; refusing to write through"
                       " it (remove it if it is yours)", path,
                       S_ISLNK(st.st_mode) ? "symbolic link" : S_ISDIR(st.st_mode) ? "directory" : "special file");
    if (unlink(path) != 0 && errno != ENOENT)
        return MK_FAIL(MK_ERR_IO, "%s: cannot remove a leftover temporary file: %s", path, strerror(errno));
    return MK_OK;
}

int mk_fs_create_tmp(const char *path, int *fd)
{
    *fd = -1;
    MK_CHECK(mk_fs_clear_tmp(path));
    /* O_EXCL: whatever appears at the name after the check (a race) makes this fail rather
     * than be followed or truncated; O_NOFOLLOW says so for a symlink even without it. */
    int f = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (f < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    *fd = f;
    return MK_OK;
}

int mk_fs_write_all(int fd, const void *buf, size_t n, const char *path)
{
    const unsigned char *b = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, b + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return MK_FAIL(MK_ERR_IO, "%s: write failed: %s", path, strerror(w < 0 ? errno : EIO));
        done += (size_t)w;
    }
    return MK_OK;
}

int mk_fs_safe_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 100 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p == '/' || *p == '\\' || *p < 0x20 || *p == 0x7f) return 0;
    return 1;
}
