/* The filesystem work of the snapshotter: removing a snapshot's directory
 * tree and measuring what it holds. Both walk with one directory fd at a
 * time (a directory's names are read into memory, its children opened by
 * name, its parent reopened through ".." and checked by device and inode),
 * so depth costs memory, not file descriptors, and a tree deeper than
 * PATH_MAX is handled. Neither crosses into another filesystem: a mount
 * point inside (a remote snapshot's FUSE mount, a container's bind mount
 * left behind) is never descended into. No thread safety needed: no
 * state. */
#pragma once

#include "common/util/errmsg.h"
#include "worker/snapshotter/info.h"

/* Removes the tree at path and path itself. Goes on past errors and
 * returns the first: -EBUSY when a mount point inside was left. */
int snap_fs_remove_tree(const char *path, ErrMsg *err);

/* Allocated bytes (st_blocks * 512) and inodes under path, path included,
 * each inode counted once (hard links), as containerd's fs.DiskUsage.
 * Entries that vanish during the walk are skipped. */
int snap_fs_usage(const char *path, SnapUsage *ret, ErrMsg *err);

/* 1 when path is a directory on another filesystem than its parent (a
 * mount point), 0 when not, -errno. */
int snap_fs_is_mountpoint(const char *path);
