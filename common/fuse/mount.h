/* Mounting and detaching holdfast FUSE filesystems with mount(2) (the
 * callers run as root: holdfastctl and the worker's snapshotter). The
 * caller that mounts hands the /dev/fuse fd to the supervisor with its
 * MOUNT request (common/ipc/ctl-client.c), so the supervisor itself never
 * opens a path a request names. No state; never logs: errors are -errno
 * plus one sentence in ErrMsg. */
#pragma once

#include <stdbool.h>

#include "common/util/errmsg.h"

/* Validates a mount (source: an absolute path to a readable regular file
 * or a layer reference HOST/REPO@sha256:HEX; mountpoint: an absolute path
 * to an existing empty directory that is not a FUSE mount), opens
 * /dev/fuse and mounts it read-only at mountpoint. On success the
 * canonical paths (malloc'd) and the fd (O_CLOEXEC) are returned; on
 * failure nothing is left mounted or open. */
int fuse_mount_new(const char *source, const char *mountpoint, char **ret_source, char **ret_mountpoint,
                   int *ret_fd, ErrMsg *err);

/* umount2(MNT_DETACH). A mountpoint that is no longer mounted (someone
 * else unmounted it) is not an error. */
int fuse_mount_detach(const char *mountpoint);

/* Whether fd is an open /dev/fuse (the character device 10:229). */
bool fuse_fd_is_dev(int fd);

/* Whether mountpoint is a holdfast mount whose connection is gone (its
 * statfs fails with ENOTCONN): one whose client was killed between its
 * mount(2) and handing the fd to the supervisor, which therefore never
 * knew it. Only reads /proc/self/mountinfo. */
bool fuse_mount_is_orphan(const char *mountpoint);
