/* What worker/main.c shares with the two ways the worker runs: under the
 * supervisor (main-supervised.c) and alone (main-standalone.c). Main
 * thread only. */
#pragma once

#include <stdbool.h>

#include "worker/fuse/server.h"

typedef struct MetaStore MetaStore;

typedef struct WorkerArgs {
        const char *root;        /* --root; NULL: none */
        int supervisor_fd;       /* --supervisor-fd; -1: none */
        unsigned threads;        /* --threads */
        const char *blob;        /* --standalone BLOB MOUNTPOINT */
        const char *mountpoint;
} WorkerArgs;

/* Opens ROOT/meta (creating ROOT if needed). Returns 0 with *ret NULL
 * when holdfast was built without worker/meta. */
int worker_store_open(const char *root, MetaStore **ret);
MetaStore *worker_store_close(MetaStore *s);

/* FuseLayerOps over worker/layers/ and *store (read at each open). */
FuseLayerOps worker_layer_ops(MetaStore **store);
/* The same open as a function, for eager opens. */
int worker_layer_open(void *userdata, const char *source, Layer **ret_layer, void **ret_handle, ErrMsg *err);
void worker_layer_close(void *userdata, void *handle);

int worker_run_supervised(const WorkerArgs *args);
int worker_run_standalone(const WorkerArgs *args);
