/* What worker/main.c shares with the two ways the worker runs: under the
 * supervisor (main-supervised.c) and alone (main-standalone.c). Main
 * thread only. */
#pragma once

#include <stdbool.h>

#include "worker/fuse/server.h"

typedef struct MetaStore MetaStore;
typedef struct LayerEnv LayerEnv;

typedef struct WorkerArgs {
        const char *root;        /* --root; NULL: none */
        int supervisor_fd;       /* --supervisor-fd; -1: none */
        unsigned threads;        /* --threads */
        const char *blob;        /* --standalone BLOB MOUNTPOINT */
        const char *mountpoint;
} WorkerArgs;

/* Opens ROOT/meta (creating ROOT if needed). Returns 0, or -errno
 * (logged; the worker then serves without the store). */
int worker_store_open(const char *root, MetaStore **ret);
MetaStore *worker_store_close(MetaStore *s);

/* What layers are opened with (worker/layers/): the store (*store, read
 * at each open), the chunk cache under ROOT/cache (none without root,
 * or when it cannot be opened) and the registry client.
 * HOLDFAST_CACHE_MAX_BYTES caps the cache (default 20 GiB),
 * HOLDFAST_HOSTS_DIR replaces /etc/containerd/certs.d,
 * HOLDFAST_NO_PREFETCH turns the mount-time prefetch off,
 * HOLDFAST_BACKGROUND_FETCH fetches the rest of each registry layer
 * in the background: unset or 1 (no budget), MBPS (a budget), 0 (off). */
int worker_env_open(const char *root, MetaStore **store, LayerEnv **ret);
LayerEnv *worker_env_close(LayerEnv *env);

/* FuseLayerOps over worker/layers/ with env. */
FuseLayerOps worker_layer_ops(LayerEnv *env);
/* The open of a new mount (its prefetch starts), for eager opens;
 * userdata is the LayerEnv. */
int worker_layer_open(void *userdata, const char *source, Layer **ret_layer, void **ret_handle, ErrMsg *err);
void worker_layer_close(void *userdata, void *handle);
/* Opens a layer (no prefetch) and closes it: its record is then in the
 * store and its tail in the cache, so that its mount needs no request. */
int worker_layer_warm(LayerEnv *env, const char *source, ErrMsg *err);

/* containerd's snapshotter (main-snapshotter.c): served on take_listen_fd
 * from a thread that opens ROOT/snapshotter first; its remote snapshots
 * are mounts the supervisor at ROOT/supervisor.sock makes. */
typedef struct SnapNode SnapNode;
int snap_node_start(const char *root, LayerEnv *env, int take_listen_fd, SnapNode **ret);
/* Stops accepting and waits a moment for the calls in flight: for a
 * worker that exits right after. */
void snap_node_drain(SnapNode *n);
/* NULL-safe; returns NULL. Calls in flight are cancelled. */
SnapNode *snap_node_free(SnapNode *n);

int worker_run_supervised(const WorkerArgs *args);
int worker_run_standalone(const WorkerArgs *args);
