/* The chunk cache: decoded, verified chunks of layer blobs on local disk,
 * so that a chunk is fetched from a registry once.
 *
 * On disk, under ROOT/cache/ (0700), one directory per blob, named by the
 * blob's sha256 in hex:
 *
 *   <64 hex>/lock         empty; flock(LOCK_SH) while a worker has the blob
 *                         open, its mtime is the blob's last use (updated
 *                         at most once a minute)
 *   <64 hex>/chunks.map   which chunks are present (cache-map.h)
 *   <64 hex>/f/<ino>      regular file <ino> (decimal, the Index number) at
 *                         its own offsets: sparse while incomplete, an
 *                         ordinary file once complete (FUSE passthrough)
 *   .trash/               blob directories being deleted
 *
 * Path components come only from hex digests and decimal inode numbers.
 *
 * Contract:
 * - cache_layer_put() takes bytes the caller already verified against the
 *   chunk's digest. The data is written before the chunk's present bit is
 *   set, so a killed worker never leaves a bit over missing bytes. After a
 *   reboot (another /proc/sys/kernel/random/boot_id) every bit is
 *   distrusted: such chunks are verified again against Index.digests on
 *   first use and reported missing if they do not match (or have no
 *   digest).
 * - Data files are fdatasync'd lazily: every sync_interval_ms by a
 *   background thread, and at cache_layer_close(). Durability is only an
 *   optimization: power loss costs at most a re-fetch, never a wrong byte.
 * - An open CacheLayer pins its blob: no GC, in this or another worker
 *   process, removes it. GC removes least recently used unpinned blobs
 *   until the usage is under max_bytes.
 * - Thread safety: cache_layer_read(), _missing(), _put(), _file_complete()
 *   and _file_open() may be called from any number of threads on the same
 *   CacheLayer; they take no lock shared between layers. cache_gc(),
 *   cache_stats() and cache_layer_open()/_close() may be called from any
 *   thread. cache_layer_close() must not race with calls on the same
 *   layer, and every layer must be closed before cache_free().
 * - The Index passed to cache_layer_open() is borrowed and must outlive
 *   the CacheLayer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/estargz/index.h"
#include "common/util/errmsg.h"

typedef struct Cache Cache;
typedef struct CacheLayer CacheLayer;

typedef struct CacheConfig {
        uint64_t max_bytes;       /* GC target; 0: no cap */
        int sync_interval_ms;     /* 0: 5000; < 0: no background thread (no periodic sync,
                                   * GC only through cache_gc()) */
        unsigned max_open_files;  /* data files kept open per layer; 0: 64; at most 1024 */
} CacheConfig;

typedef struct CacheStats {
        uint64_t bytes_used;      /* estimate for the whole cache: the last scan plus puts since */
        uint64_t bytes_max;
        uint64_t bytes_pinned;    /* last GC: blobs open in this process */
        uint64_t bytes_busy;      /* last GC: blobs another worker has open */
        uint64_t n_blobs;         /* last scan */
        uint64_t n_layers;        /* open CacheLayers */
        uint64_t hits, misses;    /* cache_layer_read() calls served / answered -ENODATA */
        uint64_t hit_bytes;
        uint64_t puts, put_bytes; /* chunks newly stored */
        uint64_t put_errors;      /* puts that could not write (ENOSPC, EIO, ...) */
        uint64_t reverified;      /* chunks of an earlier boot that matched their digest */
        uint64_t reverify_failed; /* ... that did not, or had none: now missing */
        uint64_t evictions, evicted_bytes;
        uint64_t discarded;       /* blob directories dropped as corrupt or of another format */
        uint64_t sync_errors;     /* failed fdatasync()s */
        uint64_t gc_runs;
        bool over_cap;            /* the last GC ended above max_bytes: the rest is pinned */
} CacheStats;

/* Opens (creating) ROOT/cache, deletes leftover trash and temporary files
 * and abandoned or corrupt blob directories nobody holds, estimates the
 * usage from the chunk map headers (one read per blob, no file walk), and
 * starts the background thread. -errno with a message. */
int cache_open(const char *root_dir, const CacheConfig *cfg, Cache **ret, ErrMsg *err);

/* Stops the background thread after a last sync. Every CacheLayer must be
 * closed. NULL-safe; returns NULL. */
Cache *cache_free(Cache *c);

/* Rescans ROOT/cache and removes least recently used blobs that no worker
 * has open until the usage is at most max_bytes. Returns the number of
 * blobs removed, or -errno with a message (a failed scan). Serialized with
 * itself and with the background GC. */
int cache_gc(Cache *c, ErrMsg *err);

void cache_stats(Cache *c, CacheStats *ret);

/* Opens the cache of one blob for the chunks of idx, pinning it. The blob
 * directory is created if missing; a chunk map that is corrupt, of another
 * version or of another index layout is discarded (the directory goes to
 * the trash) and the cache of this blob starts empty. digest_len must be
 * 32 (-EINVAL). -EBUSY when the directory must be discarded but another
 * worker holds it. -errno with a message. */
int cache_layer_open(Cache *c, const uint8_t *blob_digest, size_t digest_len, const Index *idx, CacheLayer **ret,
                     ErrMsg *err);

/* Syncs what this layer wrote, closes its files and unpins the blob.
 * NULL-safe; returns NULL. */
CacheLayer *cache_layer_close(CacheLayer *cl);

/* Reads [off, off + len) of regular file ino, clamped to the file size,
 * from the cache. Returns the bytes read (0 at or past the end), -ENODATA
 * when a chunk of the range is missing (cache_layer_missing() says which),
 * -ENOENT (no such inode), -EISDIR, -EINVAL (not a regular file), or -EIO
 * and such from the data file. Chunks of an earlier boot are verified here
 * first. */
ssize_t cache_layer_read(CacheLayer *cl, uint64_t ino, uint64_t off, size_t len, void *buf);

/* The first run of consecutive missing chunks covering [off, off + len) of
 * file ino: returns 1 with the run [*ret_first, *ret_first + *ret_n) of
 * indexes into idx->chunks, 0 with *ret_n = 0 when nothing in the range is
 * missing, or the errors of cache_layer_read(). Loop until 0 to fetch
 * every missing run. */
int cache_layer_missing(CacheLayer *cl, uint64_t ino, uint64_t off, size_t len, size_t *ret_first, size_t *ret_n);

/* Whether chunk ci is kept (present, or of an earlier boot and still to be
 * verified on its first read): a fetch need not ask for it. Lock-free. */
bool cache_layer_chunk_present(CacheLayer *cl, size_t ci);

/* Stores the verified, decoded bytes of chunk chunk_index (len must be the
 * chunk's size: -EINVAL otherwise, or -EINVAL for a chunk no file owns).
 * 0 also when the chunk was already present. On a write error (-ENOSPC,
 * -EIO, -EDQUOT, -EFBIG) the chunk stays missing; the caller still has
 * the bytes to answer with. */
int cache_layer_put(CacheLayer *cl, size_t chunk_index, const void *data, size_t len);

/* 1 when every chunk of regular file ino is present (verifying chunks of
 * an earlier boot), 0 when not, or the errors of cache_layer_read(). */
int cache_layer_file_complete(CacheLayer *cl, uint64_t ino);

/* An O_RDONLY|O_CLOEXEC fd of the complete data file of ino (offset 0 =
 * file offset 0, size = file size), for FUSE passthrough; the caller owns
 * it. -ENODATA when the file is not complete. */
int cache_layer_file_open(CacheLayer *cl, uint64_t ino, int *ret_fd);
