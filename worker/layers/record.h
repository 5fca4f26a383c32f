/* Layer records in the worker's store: a Layer's metadata
 * (common/estargz/index-io.h) under a key. Any thread; never logs. */
#pragma once

#include "common/estargz/layer.h"
#include "common/util/errmsg.h"

typedef struct MetaStore MetaStore;

/* Builds a Layer reading through read_at/userdata from the record under
 * key, for a blob of blob_size bytes (0: as large as the record says).
 * -ENOENT (no record), -EBADMSG (corrupt), -EPROTO (another image
 * version), -ENOMEM, or the store's error. */
int layer_record_load(MetaStore *store, const char *key, ReadAtFn read_at, void *userdata, uint64_t blob_size,
                      Layer **ret, ErrMsg *err);

/* Stores l's metadata under key. */
int layer_record_save(MetaStore *store, const char *key, const Layer *l, ErrMsg *err);
