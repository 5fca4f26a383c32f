/* The snapshot store behind holdfast's containerd proxy snapshotter:
 * containerd's overlay snapshotter semantics (snapshots/overlay and
 * snapshots/storage in containerd 1.6), its records in RocksDB
 * (ROOT/db), the snapshots' directories under ROOT/snapshots/<id>/{fs,work}.
 *
 * Kinds: Prepare makes an active (writable) snapshot, View a read-only
 * one, both on an optional committed parent; Commit turns an active one
 * into a committed one under a new name (same id, same directory).
 * Mounts: a bind mount of fs/ for a snapshot without a parent (rw for
 * active, ro for a view), a read-only bind of the parent's fs/ for a view
 * with one ancestor, else an overlay with lowerdir= the ancestors' fs/
 * (nearest first) and, for an active one, upperdir=fs/ and workdir=work/.
 *
 * Errors (each with a message in the ErrMsg):
 *   -ENOENT       no such snapshot, or parent
 *   -EEXIST       key or name in use (and: a remote snapshot was made,
 *                 see SnapshotterHooks)
 *   -EINVAL       an empty key, a parent that is not committed, a label
 *                 over 4,096 bytes, an Update of anything but labels
 *   -ENOTEMPTY    Remove of a snapshot that has children
 *   -EMEDIUMTYPE  the wrong kind for the operation: Commit of a view or a
 *                 committed snapshot, Mounts of a committed one
 *   -EBUSY        (open) the database is held by another process
 *   others        I/O
 * Each operation that changes the store is one synced RocksDB write
 * batch; directories are created before it (and renamed into place) and
 * removed after it, so a crash leaves at worst a directory no record
 * refers to, which Cleanup (or the next Remove) deletes.
 *
 * Thread-safe: any thread may call anything between snapshotter_new()
 * and snapshotter_free(). One mutex orders every change; directory walks
 * (Usage, a Commit's usage, removals) and the remote hook run outside
 * it. Library code: never logs. */
#pragma once

#include <stdint.h>

#include "common/util/errmsg.h"
#include "worker/snapshotter/filter.h"
#include "worker/snapshotter/info.h"

typedef struct Snapshotter Snapshotter;

/* What a Prepare that may become a remote snapshot tells the hook. */
typedef struct SnapRemoteRequest {
        const char *key;          /* the active snapshot just made for it */
        const char *parent;       /* its parent's name, "" for none */
        const char *target;       /* labels[SNAP_LABEL_SNAPSHOT_REF]: the chain ID */
        const SnapLabels *labels; /* all of containerd's labels (the layer's
                                   * containerd.io/snapshot/... annotations) */
        uint64_t id;
        const char *fs_dir;       /* ROOT/snapshots/<id>/fs: empty; where the
                                   * layer must appear (a mount point) */
} SnapRemoteRequest;

typedef struct SnapshotterHooks {
        /* Called for a Prepare whose labels carry
         * containerd.io/snapshot.ref, on the calling thread, without the
         * store's lock, after the active snapshot exists. Returns 1 when
         * the layer is now at req->fs_dir (e.g. a FUSE mount of its
         * eStargz blob): the snapshot is committed as req->target with
         * the request's labels, marked remote, and Prepare returns
         * -EEXIST, which containerd takes as "already unpacked". Returns
         * 0 to decline and < 0 when it tried and failed (it logs why):
         * either way Prepare returns the active snapshot's mounts and
         * containerd downloads and unpacks the layer itself. NULL: always
         * declines. */
        int (*prepare_remote)(void *userdata, const SnapRemoteRequest *req);
        /* Called before the directory of a remote snapshot is removed
         * (Remove, Cleanup; also for a directory no record refers to whose
         * fs/ is a mount point): undo what prepare_remote put at fs_dir
         * (unmount). Without the lock. */
        void (*release_remote)(void *userdata, uint64_t id, const char *fs_dir);
        void *userdata;
} SnapshotterHooks;

typedef struct SnapshotterConfig {
        const char *root;       /* created if missing (0700) */
        SnapshotterHooks hooks;
        /* While another process holds ROOT/db (a previous worker, or its
         * memory keeper, which keeps its file table and so RocksDB's lock
         * for 300 ms after it died), retry the open for this long before
         * failing with -EBUSY. 0: fail at once. */
        unsigned busy_wait_ms;
} SnapshotterConfig;

int snapshotter_new(const SnapshotterConfig *cfg, Snapshotter **ret, ErrMsg *err);
/* NULL-safe; returns NULL. Mounts made by hooks are left as they are. */
Snapshotter *snapshotter_free(Snapshotter *s);

int snapshotter_prepare(Snapshotter *s, const char *key, const char *parent, const SnapLabels *labels,
                        SnapMounts *ret_mounts, ErrMsg *err);
int snapshotter_view(Snapshotter *s, const char *key, const char *parent, const SnapLabels *labels,
                     SnapMounts *ret_mounts, ErrMsg *err);
int snapshotter_mounts(Snapshotter *s, const char *key, SnapMounts *ret_mounts, ErrMsg *err);
/* Labels replace the active snapshot's (they are not inherited). */
int snapshotter_commit(Snapshotter *s, const char *name, const char *key, const SnapLabels *labels, ErrMsg *err);
/* Removes the record, then its directory and any directory no record
 * refers to (failures there are not errors: Cleanup retries). */
int snapshotter_remove(Snapshotter *s, const char *key, ErrMsg *err);
int snapshotter_stat(Snapshotter *s, const char *key, SnapInfo *ret_info, ErrMsg *err);
/* Updates labels: paths "labels" (all, replaced by info's) or
 * "labels.KEY" (one; absent or empty in info: removed); no paths means
 * "labels". Labels with empty values are never stored. */
int snapshotter_update(Snapshotter *s, const SnapInfo *info, char *const *paths, size_t n_paths,
                       SnapInfo *ret_info, ErrMsg *err);
/* Active: a walk of fs/ now; committed: as measured at Commit; views and
 * remote snapshots: zero. */
int snapshotter_usage(Snapshotter *s, const char *key, SnapUsage *ret, ErrMsg *err);

/* Calls fn for each snapshot matching filter (NULL: all), in name order,
 * on a consistent view of the store, without the lock: fn may take its
 * time. fn returns 0 to go on, != 0 to stop (returned). */
typedef int (*SnapWalkFn)(void *userdata, const SnapInfo *info, uint64_t id, bool remote);
int snapshotter_walk(Snapshotter *s, const SnapFilter *filter, SnapWalkFn fn, void *userdata, ErrMsg *err);

/* Removes directories under ROOT/snapshots that no record refers to. */
int snapshotter_cleanup(Snapshotter *s, ErrMsg *err);

/* ROOT/snapshots/<id>/fs (malloc'd), for the lead's remote layer code. */
char *snapshotter_fs_dir(Snapshotter *s, uint64_t id);
