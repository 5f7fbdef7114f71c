/* mk_fs.h - the few file-system steps durable output needs, in one place. */
#ifndef MK_FS_H
#define MK_FS_H

#include <stddef.h>

/* fsync a file (dir = 0) or a directory (dir = 1) by path: a rename is durable only once
 * the directory holding it is synced. MK_ERR_IO naming the path. */
int mk_fs_fsync(const char *path, int dir);

/* fsync the directory that holds path (after renaming something to path). */
int mk_fs_fsync_parent(const char *path);

/* mkdir -p. MK_ERR_IO naming the part that could not be made. */
int mk_fs_mkdir_p(const char *path);

/* Before a temporary name is created: a regular file left there by a crashed run (the pid
 * in the name repeats after a restart) is removed; a symbolic link or anything else is
 * refused, so a link planted at the name cannot redirect the write. MK_ERR_IO naming it. */
int mk_fs_clear_tmp(const char *path);

/* Create a temporary file for writing: mk_fs_clear_tmp, then open(O_CREAT | O_EXCL |
 * O_NOFOLLOW), mode 0666 & ~umask. *fd gets the descriptor. MK_ERR_IO naming the path. */
int mk_fs_create_tmp(const char *path, int *fd);

/* Write all n bytes to fd (retrying short writes and EINTR). MK_ERR_IO naming path and the
 * system's message; a write that returns 0 counts as EIO. */
int mk_fs_write_all(int fd, const void *buf, size_t n, const char *path);

/* 1 if name can be one path component that stays where it is put: not empty, not "." or
 * "..", no '/', '\\' or control characters, at most 100 bytes. */
int mk_fs_safe_name(const char *name);

#endif
