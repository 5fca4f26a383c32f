/* The wire codec of containerd's snapshots service: requests (from the
 * socket: untrusted, size-capped, fuzzed by tests/fuzz/fuzz-snapshotter.c)
 * decoded into owned C structs, and replies encoded from the store's
 * structs. nanopb with callbacks for the maps and lists (see
 * proto/containerd/snapshots.options). Pure: no I/O, never logs, no
 * shared state. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"
#include "worker/snapshotter/info.h"

typedef enum SnapMethod {
        SNAP_METHOD_PREPARE,
        SNAP_METHOD_VIEW,
        SNAP_METHOD_MOUNTS,
        SNAP_METHOD_COMMIT,
        SNAP_METHOD_REMOVE,
        SNAP_METHOD_STAT,
        SNAP_METHOD_UPDATE,
        SNAP_METHOD_LIST,
        SNAP_METHOD_USAGE,
        SNAP_METHOD_CLEANUP,
        _SNAP_METHOD_MAX,
} SnapMethod;

/* Bounds on one request beyond the .options file's. */
#define SNAP_UPDATE_PATHS_MAX 1024

/* One decoded request; which fields are set depends on the method. */
typedef struct SnapRequest {
        char *key;        /* owned: every method but Update, List, Cleanup */
        char *parent;     /* owned: Prepare, View */
        char *name;       /* owned: Commit */
        SnapLabels labels;/* Prepare, View, Commit */
        SnapInfo info;    /* Update */
        char **paths;     /* owned: Update's field mask */
        size_t n_paths;
        char **filters;   /* owned: List */
        size_t n_filters;
} SnapRequest;

/* Decodes a request message of method m. -EBADMSG (with a message) for
 * bytes that are not one, or break a bound; -ENOMEM. */
int snap_request_decode(SnapMethod m, const uint8_t *buf, size_t len, SnapRequest *ret, ErrMsg *err);
void snap_request_clear(SnapRequest *r);

/* Reply encoders. Each returns a malloc'd buffer with
 * GRPC_FRAME_HEADER_SIZE (5) free bytes in front of the message, as
 * grpc_call_reply_take() wants, and the message's length. -EMSGSIZE when
 * the message would exceed max. */
/* PrepareSnapshotResponse, ViewSnapshotResponse, MountsResponse (the
 * same wire format). */
int snap_reply_mounts(const SnapMounts *m, size_t max, uint8_t **ret, size_t *ret_len);
/* StatSnapshotResponse, UpdateSnapshotResponse. */
int snap_reply_info(const SnapInfo *info, size_t max, uint8_t **ret, size_t *ret_len);
/* ListSnapshotsResponse. */
int snap_reply_infos(const SnapInfo *infos, size_t n, size_t max, uint8_t **ret, size_t *ret_len);
int snap_reply_usage(const SnapUsage *u, size_t max, uint8_t **ret, size_t *ret_len);
/* google.protobuf.Empty */
int snap_reply_empty(uint8_t **ret, size_t *ret_len);
