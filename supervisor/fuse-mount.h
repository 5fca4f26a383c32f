/* Mounting and detaching holdfast FUSE filesystems (mount(2), not
 * fusermount: the supervisor runs as root). No state; never logs: errors
 * are -errno plus one sentence in ErrMsg. */
#pragma once

#include "common/util/errmsg.h"

/* Validates a MOUNT request (absolute paths; mountpoint an existing empty
 * directory that is not a FUSE mount; source a readable regular file),
 * opens /dev/fuse and mounts it read-only at mountpoint. On success the
 * canonical paths (malloc'd) and the fd are returned; on failure nothing
 * is left mounted or open. */
int fuse_mount_new(const char *source, const char *mountpoint, char **ret_source, char **ret_mountpoint,
                   int *ret_fd, ErrMsg *err);

/* umount2(MNT_DETACH). A mountpoint that is no longer mounted (someone
 * else unmounted it) is not an error. */
int fuse_mount_detach(const char *mountpoint);
