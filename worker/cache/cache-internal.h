/* Shared between cache.c (the Cache: scan, GC, background thread) and
 * cache-layer.c (one blob's chunks). Not part of the API.
 *
 * Lock order: Cache.gc_lock, then Cache.lock, then CacheLayer.files_lock.
 * The read and put paths take only their own layer's files_lock, and only
 * to find or open a data file. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "worker/cache/cache-map.h"
#include "worker/cache/cache.h"

#define CACHE_DIR "cache"
#define CACHE_TRASH_DIR ".trash"
#define CACHE_LOCK_FILE "lock"
#define CACHE_MAP_FILE "chunks.map"
#define CACHE_FILES_DIR "f"
#define CACHE_TMP_PREFIX ".tmp."
#define CACHE_HEX_LEN (2 * SHA256_LEN)
/* How often the last-use time of an open blob is refreshed. */
#define CACHE_TOUCH_SECONDS 60

/* Per-layer counters, updated with relaxed atomics by serving threads and
 * summed by cache_stats(). */
typedef struct CacheCounters {
        uint64_t hits, misses, hit_bytes;
        uint64_t puts, put_bytes, put_errors;
        uint64_t reverified, reverify_failed;
        uint64_t sync_errors;
} CacheCounters;

/* A blob open in this process: GC in this process skips it without a
 * syscall (the flock keeps other processes away). */
typedef struct CachePin {
        uint8_t digest[SHA256_LEN];
        char hex[CACHE_HEX_LEN + 1];
        unsigned n;                   /* CacheLayers open on it */
} CachePin;

/* fds collected for a sync pass; each is owned (a dup()). */
typedef struct FdList {
        int *fds;                     /* owned */
        size_t n, cap;
} FdList;

struct Cache {
        int root_fd;                  /* owned: ROOT/cache */
        int trash_fd;                 /* owned: ROOT/cache/.trash */
        CacheConfig cfg;              /* defaults filled in */
        uint8_t boot_id[CACHE_BOOT_ID_LEN];

        pthread_mutex_t lock;
        CachePin *pins;               /* owned; protected by lock */
        size_t n_pins, cap_pins;      /* protected by lock */
        CacheLayer *layers;           /* open layers, a list; protected by lock */
        CacheCounters closed;         /* counters of closed layers; protected by lock */
        uint64_t evictions, evicted_bytes, discarded, gc_runs, sync_errors; /* protected by lock */
        uint64_t bytes_pinned, bytes_busy, n_blobs; /* last scan / GC; protected by lock */
        bool over_cap;                /* protected by lock */

        uint64_t bytes_used;          /* atomic: last scan plus puts since */

        pthread_mutex_t gc_lock;      /* one GC at a time */

        pthread_t thread;
        bool thread_started;
        pthread_mutex_t bg_lock;
        pthread_cond_t bg_cond;       /* CLOCK_MONOTONIC */
        bool stop;                    /* protected by bg_lock */
        bool gc_wanted;               /* atomic; a put crossed max_bytes */
};

/* One data file kept open by a layer. */
typedef struct CacheFile {
        uint64_t ino;                 /* 0: free slot */
        int fd;                       /* owned; O_RDWR */
        unsigned refs;                /* readers/writers using fd now */
        bool dirty;                   /* written since the last fdatasync */
        uint64_t last_use;            /* files_clock at the last acquire: the LRU order */
} CacheFile;

struct CacheLayer {
        Cache *cache;
        const Index *idx;             /* borrowed */
        uint8_t digest[SHA256_LEN];
        char hex[CACHE_HEX_LEN + 1];
        int dir_fd;                   /* owned: the blob directory */
        int files_fd;                 /* owned: its f/ */
        int lock_fd;                  /* owned: flock(LOCK_SH) held while open */
        int map_fd;                   /* owned: chunks.map */
        void *map;                    /* owned: the whole of chunks.map, MAP_SHARED */
        size_t map_size;
        CacheMapHeader *hdr;          /* in map */
        uint64_t *present, *suspect;  /* in map; atomic words */
        uint32_t *chunk_ino;          /* owned: chunk index -> owning inode, 0 for none */

        pthread_mutex_t files_lock;
        CacheFile *files;             /* owned; cfg.max_open_files slots; protected by files_lock */
        uint64_t files_clock;         /* protected by files_lock */
        bool map_dirty;               /* atomic: bits set since the last sync */

        int64_t last_touch;           /* atomic: wall-clock seconds of the last lock mtime update */
        CacheCounters counters;       /* atomic, relaxed */
        CacheLayer *prev, *next;      /* in cache->layers; protected by cache->lock */
};

static inline void cache_count(uint64_t *counter, uint64_t n) {
        __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* cache.c */
int cache_pin(Cache *c, const uint8_t digest[SHA256_LEN]);      /* takes c->lock; -ENOMEM */
void cache_unpin(Cache *c, const uint8_t digest[SHA256_LEN]);   /* takes c->lock */
void cache_layer_register(Cache *c, CacheLayer *cl);             /* takes c->lock */
void cache_layer_unregister(Cache *c, CacheLayer *cl);           /* takes c->lock */
#define CACHE_TRASH_NAME_MAX (CACHE_HEX_LEN + 64)
/* Renames blob directory hex into the trash, returning the name there.
 * lock_fd is an fd of its lock file on which the caller holds LOCK_EX;
 * checks first that it is still the lock of ROOT/cache/hex (-ESTALE if
 * not: another worker moved the directory meanwhile). */
int cache_blob_to_trash(Cache *c, const char *hex, int lock_fd, char ret_name[CACHE_TRASH_NAME_MAX]);
/* Deletes a directory cache_blob_to_trash() moved; best effort (what
 * stays is deleted by the next cache_open()). */
void cache_trash_delete(Cache *c, const char *name);
/* Unique in this process, for temporary and trash names (with the pid). */
uint64_t cache_unique_id(void);
/* Asks the background thread for a GC (a put crossed max_bytes). */
void cache_gc_request(Cache *c);
void cache_note_discard(Cache *c);                               /* takes c->lock */
void cache_hex(const uint8_t digest[SHA256_LEN], char ret[CACHE_HEX_LEN + 1]);

/* cache-layer.c */
/* Appends dup()s of the layer's dirty data files to data and of its chunk
 * map, if bits were set, to maps, clearing the dirty marks. Called with
 * cache->lock held by the sync pass. -ENOMEM (the marks of what was not
 * collected stay). */
int cache_layer_collect_dirty(CacheLayer *cl, FdList *data, FdList *maps);
