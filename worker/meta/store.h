/* The worker's persistent metadata: a RocksDB database under
 * ROOT/meta. Keys and values are opaque bytes here; layer records are
 * LayerImage bytes (common/estargz/index-io.h) under "layer/<key>".
 * RocksDB allows one writer process: the worker opens the store when it
 * takes its mounts and closes it before it answers Drained.
 * Thread-safe (RocksDB's own locking): any serving thread may call it. */
#pragma once

#include <stddef.h>

#include "common/util/errmsg.h"

typedef struct MetaStore MetaStore;

/* Opens (creating) the database in dir. -EBUSY when another process holds
 * it (RocksDB's LOCK). */
int meta_store_open(const char *dir, MetaStore **ret, ErrMsg *err);
/* The worker's open, possible while another worker holds the store: a
 * RocksDB secondary instance (no lock, no recovery writes, its own LOG
 * under DIR.secondary/PID), switching to read-write on the first put or
 * delete. Creates the database read-write when there is none yet. A get
 * that misses catches up with what other processes wrote since (their
 * WAL) and looks again, so a standby opened long ago finds every record;
 * a record replaced by another process may be seen in its older version
 * (records are checksummed and rebuilt when refused). */
int meta_store_open_lazy(const char *dir, MetaStore **ret, ErrMsg *err);
/* Closes (no flush: the WAL holds every record); NULL-safe; returns NULL. */
MetaStore *meta_store_close(MetaStore *s);

/* Stores a layer record (in the WAL, not fsynced, when it returns). */
int meta_layer_put(MetaStore *s, const char *key, const void *val, size_t len, ErrMsg *err);
/* Fetches a record into a malloc'd buffer. -ENOENT when absent. */
int meta_layer_get(MetaStore *s, const char *key, void **ret_val, size_t *ret_len, ErrMsg *err);
int meta_layer_delete(MetaStore *s, const char *key, ErrMsg *err);
