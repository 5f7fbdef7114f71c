/* mk_fs.h - the few file-system steps durable output needs, in one place. */
#ifndef MK_FS_H
#define MK_FS_H

/* fsync a file (dir = 0) or a directory (dir = 1) by path: a rename is durable only once
 * the directory holding it is synced. MK_ERR_IO naming the path. */
int mk_fs_fsync(const char *path, int dir);

/* fsync the directory that holds path (after renaming something to path). */
int mk_fs_fsync_parent(const char *path);

/* mkdir -p. MK_ERR_IO naming the part that could not be made. */
int mk_fs_mkdir_p(const char *path);

#endif
