/* mount(2)/umount2(2) of /dev/fuse connections (mount.h), with the checks
 * that give a user a clear error before anything is mounted. Blocks only
 * in these syscalls: mount(2) of FUSE does not wait for FUSE_INIT (the
 * kernel sends it asynchronously), so the worker may mount a filesystem
 * it serves itself. */
#include "common/fuse/mount.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/util/macro.h"

#define FUSE_SUPER_MAGIC 0x65735546

static int check_absolute(const char *what, const char *p, ErrMsg *err) {
        if (!p[0])
                return errmsg_set(err, -EINVAL, "%s is empty", what);
        if (p[0] != '/')
                return errmsg_set(err, -EINVAL, "%s '%s' is not an absolute path", what, p);
        return 0;
}

/* The last step of a check: the canonical path. */
static int canonical(const char *what, const char *p, char **ret, ErrMsg *err) {
        char *c = realpath(p, NULL);
        if (!c)
                return errmsg_set(err, -errno, "%s %s: %s", what, p, strerror(errno));
        *ret = c;
        return 0;
}

static int check_source(const char *source, char **ret, ErrMsg *err) {
        /* O_NONBLOCK: opening a FIFO must not hang the loop. */
        _cleanup_close_ int fd = open(source, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
                return errmsg_set(err, -errno, "source %s: %s", source, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return errmsg_set(err, -EINVAL, "source %s is not a regular file", source);
        char b;
        if (pread(fd, &b, 1, 0) < 0)
                return errmsg_set(err, -errno, "source %s is not readable: %s", source, strerror(errno));
        return canonical("source", source, ret, err);
}

static int check_mountpoint(const char *mountpoint, char **ret, ErrMsg *err) {
        _cleanup_close_ int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
        struct statfs sfs;
        if (fd < 0 || fstatfs(fd, &sfs) < 0)
                return errmsg_set(err, -errno, "mountpoint %s: %s", mountpoint, strerror(errno));
        if (sfs.f_type == FUSE_SUPER_MAGIC)
                return errmsg_set(err, -EBUSY, "mountpoint %s is already a FUSE mount", mountpoint);
        DIR *d = fdopendir(fd);
        if (!d)
                return errmsg_set(err, -errno, "mountpoint %s: %s", mountpoint, strerror(errno));
        fd = -EBADF; /* d owns it */
        struct dirent *de;
        int r = 0;
        errno = 0;
        while (r == 0 && (de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        r = errmsg_set(err, -ENOTEMPTY, "mountpoint %s is not empty", mountpoint);
        if (r == 0 && errno != 0)
                r = errmsg_set(err, -errno, "mountpoint %s: %s", mountpoint, strerror(errno));
        closedir(d);
        return r < 0 ? r : canonical("mountpoint", mountpoint, ret, err);
}

/* A registry layer ("HOST/REPO@sha256:HEX[#toc=sha256:HEX]"): only its
 * shape is checked here; the worker parses it, and refuses it with a
 * message if it cannot be had. */
static int check_reference(const char *source, char **ret, ErrMsg *err) {
        for (const char *p = source; *p; p++)
                if (*p <= ' ' || *p == 0x7f)
                        return errmsg_set(err, -EINVAL, "source '%s' has a space or a control character", source);
        if (!strstr(source, "@sha256:"))
                return errmsg_set(err, -EINVAL, "source '%s' is neither an absolute path nor a layer reference "
                                  "(HOST/REPO@sha256:DIGEST)", source);
        *ret = strdup(source);
        return *ret ? 0 : -ENOMEM;
}

int fuse_mount_new(const char *source, const char *mountpoint, char **ret_source, char **ret_mountpoint,
                   int *ret_fd, ErrMsg *err) {
        int r = source[0] == '/' || !source[0] ? check_absolute("source", source, err) : 0;
        if (r < 0)
                return r;
        r = check_absolute("mountpoint", mountpoint, err);
        if (r < 0)
                return r;
        _cleanup_free_ char *src = NULL, *mp = NULL;
        r = source[0] == '/' ? check_source(source, &src, err) : check_reference(source, &src, err);
        if (r < 0)
                return r;
        r = check_mountpoint(mountpoint, &mp, err);
        if (r < 0)
                return r;

        _cleanup_close_ int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return errmsg_set(err, -errno, "cannot open /dev/fuse: %s", strerror(errno));
        char opts[128];
        snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions", fd);
        if (mount("holdfast", mp, "fuse.holdfast", MS_RDONLY | MS_NOSUID | MS_NODEV, opts) < 0)
                return errmsg_set(err, -errno, "mount %s: %s", mp, strerror(errno));
        *ret_source = TAKE_PTR(src);
        *ret_mountpoint = TAKE_PTR(mp);
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int fuse_mount_detach(const char *mountpoint) {
        if (umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT)
                return -errno;
        return 0;
}

bool fuse_fd_is_dev(int fd) {
        struct stat st;
        return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(10, 229);
}

/* /proc/self/mountinfo escapes space, tab, newline and backslash in paths
 * as \ooo; a is the escaped field, b the plain path. */
static bool mountinfo_path_eq(const char *a, const char *b) {
        for (; *a && *b; b++) {
                if (a[0] == '\\' && a[1] >= '0' && a[1] <= '3' && a[2] >= '0' && a[2] <= '7' && a[3] >= '0' &&
                    a[3] <= '7') {
                        if (*b != (char) ((a[1] - '0') * 64 + (a[2] - '0') * 8 + (a[3] - '0')))
                                return false;
                        a += 4;
                } else if (*a++ != *b)
                        return false;
        }
        return !*a && !*b;
}

bool fuse_mount_is_orphan(const char *mountpoint) {
        struct statfs sfs;
        if (statfs(mountpoint, &sfs) == 0 || errno != ENOTCONN)
                return false;
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
                return false;
        char *line = NULL, mp[4096], fstype[64];
        size_t cap = 0;
        bool found = false;
        while (!found && getline(&line, &cap, f) > 0) {
                const char *sep = strstr(line, " - ");
                found = sep && sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 &&
                        sscanf(sep + 3, "%63s", fstype) == 1 && strcmp(fstype, "fuse.holdfast") == 0 &&
                        mountinfo_path_eq(mp, mountpoint);
        }
        free(line);
        fclose(f);
        return found;
}
