/* Layers for the FUSE engine: a SOURCE (today an absolute path of a local
 * eStargz blob) opened into a Layer that reads the blob with pread(2).
 * With a store, the layer's index is kept in RocksDB under a key that
 * names this exact file (stored as "layer/" realpath ":" size ":" mtime_ns ":"
 * inode), so a restarted worker serves without reading the TOC again; a
 * missing, corrupt or old-version record just makes the layer re-index
 * from its blob. Verification is on (default LayerOptions).
 *
 * Any thread; a LayerSource is immutable once opened and may be read
 * from any thread (pread on one fd). Never logs. */
#pragma once

#include "common/estargz/layer.h"
#include "common/util/errmsg.h"

typedef struct MetaStore MetaStore;

typedef struct LayerSource {
        Layer *layer;            /* owned */
        int fd;                  /* owned; the blob, O_RDONLY|O_CLOEXEC */
        bool from_store;         /* the index came from the store */
} LayerSource;

/* store may be NULL. Returns 0, -EINVAL (not an absolute path), or what
 * opening the blob or its TOC failed with (message in err). */
int layer_source_open(const char *source, MetaStore *store, LayerSource **ret, ErrMsg *err);
/* Only from a stored record: -ENOENT (or the record's error) instead of
 * indexing the blob. For warming up, where indexing would cost too much. */
int layer_source_open_stored(const char *source, MetaStore *store, LayerSource **ret, ErrMsg *err);
LayerSource *layer_source_close(LayerSource *ls);
