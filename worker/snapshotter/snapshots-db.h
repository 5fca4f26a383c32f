/* The snapshotter's RocksDB database (ROOT/db): opaque keys and values,
 * write batches applied atomically and synced to the WAL before they
 * return, prefix scans over a consistent view. The record layout is
 * snapshots.c's. One process at a time (RocksDB's LOCK): -EBUSY while
 * another holds it. Thread-safe (RocksDB's own locking); callers
 * serialize their read-modify-write sequences themselves. */
#pragma once

#include <stddef.h>

#include "common/util/errmsg.h"

typedef struct SnapDb SnapDb;
typedef struct SnapDbBatch SnapDbBatch;

/* Opens (creating) the database in dir. -EBUSY when another process (or
 * this one) holds it, -EBADMSG when it is corrupt. */
int snap_db_open(const char *dir, SnapDb **ret, ErrMsg *err);
/* NULL-safe; returns NULL. No flush: every batch is in the synced WAL. */
SnapDb *snap_db_close(SnapDb *db);

/* -ENOENT when absent; else a malloc'd copy in *ret_val. */
int snap_db_get(SnapDb *db, const void *key, size_t klen, void **ret_val, size_t *ret_len, ErrMsg *err);

/* Visits every key starting with prefix, in byte order, on a snapshot of
 * the database taken at the call: fn returns 0 to go on, > 0 to stop
 * (returned), < 0 to fail (returned). */
typedef int (*SnapDbScanFn)(void *userdata, const void *key, size_t klen, const void *val, size_t vlen);
int snap_db_scan(SnapDb *db, const void *prefix, size_t plen, SnapDbScanFn fn, void *userdata, ErrMsg *err);

SnapDbBatch *snap_db_batch_new(void);
SnapDbBatch *snap_db_batch_free(SnapDbBatch *b);
void snap_db_batch_put(SnapDbBatch *b, const void *key, size_t klen, const void *val, size_t vlen);
void snap_db_batch_delete(SnapDbBatch *b, const void *key, size_t klen);
/* Applies the batch atomically, synced. */
int snap_db_batch_write(SnapDb *db, SnapDbBatch *b, ErrMsg *err);
