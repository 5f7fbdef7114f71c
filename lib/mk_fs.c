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
