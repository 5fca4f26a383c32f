/* The snapshotter's plain data: labels, a snapshot's Info, its usage and
 * the mounts that give a container its view of it. Shared by the store
 * (snapshots.c), the wire codec (service-pb.c) and the filters
 * (filter.c). Every string here is malloc'd and owned by the struct that
 * holds it; *_clear() frees and zeroes. No thread safety: one owner. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* containerd.services.snapshots.v1.Kind, same numbers. */
typedef enum SnapKind {
        SNAP_KIND_UNKNOWN = 0,
        SNAP_KIND_VIEW = 1,
        SNAP_KIND_ACTIVE = 2,
        SNAP_KIND_COMMITTED = 3,
} SnapKind;

/* containerd's own limit (labels.Validate): key and value together. */
#define SNAP_LABEL_MAX 4096
/* Ours: a bound on the work one request can cause (no containerd client
 * comes near it). */
#define SNAP_LABELS_MAX 1024

/* The label containerd's unpacker sets to the chain ID a layer will be
 * committed as; its presence on a Prepare asks for a remote snapshot. */
#define SNAP_LABEL_SNAPSHOT_REF "containerd.io/snapshot.ref"

typedef struct SnapLabel {
        char *key;   /* owned */
        char *value; /* owned */
} SnapLabel;

/* A map: at most one entry per key, in insertion order. */
typedef struct SnapLabels {
        SnapLabel *items; /* owned */
        size_t n;
        size_t cap;
} SnapLabels;

/* Sets key to value (replacing an existing one). -E2BIG past
 * SNAP_LABELS_MAX entries, -ENOMEM. */
int snap_labels_set(SnapLabels *l, const char *key, const char *value);
/* Removes key if present. */
void snap_labels_unset(SnapLabels *l, const char *key);
/* The value of key, or NULL. */
const char *snap_labels_get(const SnapLabels *l, const char *key);
/* Replaces *dst by a copy of src. */
int snap_labels_copy(SnapLabels *dst, const SnapLabels *src);
void snap_labels_clear(SnapLabels *l);

typedef struct SnapInfo {
        char *name;      /* owned; the key (active, view) or name (committed) */
        char *parent;    /* owned; "" for none, never NULL once filled */
        SnapKind kind;
        int64_t created_ns; /* since the epoch, UTC */
        int64_t updated_ns;
        SnapLabels labels;
} SnapInfo;

void snap_info_clear(SnapInfo *i);
/* A deep copy into *ret (which is overwritten, not cleared). */
int snap_info_copy(const SnapInfo *src, SnapInfo *ret);
/* "view", "active", "committed" (containerd's filter values), or
 * "unknown". */
const char *snap_kind_to_string(SnapKind k);

typedef struct SnapUsage {
        int64_t size;   /* bytes in allocated blocks (st_blocks * 512) */
        int64_t inodes;
} SnapUsage;

typedef struct SnapMount {
        char *type;     /* owned: "overlay", "bind" */
        char *source;   /* owned */
        char **options; /* owned, each owned */
        size_t n_options;
} SnapMount;

typedef struct SnapMounts {
        SnapMount *items; /* owned */
        size_t n;
} SnapMounts;

void snap_mounts_clear(SnapMounts *m);
