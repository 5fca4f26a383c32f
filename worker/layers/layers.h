/* Layers for the FUSE engine: a SOURCE opened into a Layer.
 *
 * A SOURCE is either
 *   - an absolute path of a local eStargz blob, read with pread(2); its
 *     record in the store is keyed by the file ("layer/" realpath ":" size
 *     ":" mtime_ns ":" inode); or
 *   - a registry layer, "HOST/REPO@sha256:HEX", optionally followed by
 *     '#' and, joined by '&', "toc=sha256:HEX" (the
 *     containerd.io/snapshot/stargz/toc.digest annotation, checked before
 *     the TOC is parsed) and "size=N" (the blob's size in the manifest,
 *     which saves a HEAD request). It is read lazily
 *     with HTTP range requests (worker/fetch/), each chunk decoded,
 *     verified and kept in the chunk cache (worker/cache/) so that it is
 *     fetched once; its record is keyed by the blob digest ("blob:sha256:
 *     HEX"), so a restarted worker serves it without the network.
 * A missing, corrupt or old-version record makes the layer re-index from
 * its blob. Verification is on (default LayerOptions).
 *
 * Any thread; a LayerSource is immutable once opened and may be read from
 * any thread. Never logs. */
#pragma once

#include <pthread.h>

#include "common/estargz/layer.h"
#include "common/util/errmsg.h"

typedef struct MetaStore MetaStore;
typedef struct Cache Cache;
typedef struct CacheLayer CacheLayer;
typedef struct FetchClient FetchClient;
typedef struct FetchBlob FetchBlob;
typedef struct Prefetch Prefetch;

/* What opening a layer needs. Shared by every thread; main.c owns it. */
typedef struct LayerEnv {
        MetaStore **store;       /* borrowed; *store may be NULL (read at each open) */
        Cache *cache;            /* borrowed; NULL: chunks are not kept */
        const char *hosts_dir;   /* borrowed; NULL: /etc/containerd/certs.d */
        bool prefetch;           /* fetch the prefetch landmark's files at mount */
        bool background;         /* then the rest of the layer, when idle */
        uint64_t background_bytes_per_s; /* its budget; 0: none */
        pthread_mutex_t lock;
        FetchClient *fetch;      /* owned; made on the first registry layer; protected by lock */
        pthread_mutex_t opens_lock; /* not lock: that one is held while the client is made */
        unsigned opening;        /* layer opens in flight; protected by opens_lock */
        pthread_cond_t opened;   /* opening went down */
        /* turns.c: the background fetch goes one piece at a time over
         * every layer, in turns, and only once no prefetch is in its
         * landmark's part (the link is the readers' and the landmarks'
         * first). Protected by turn_lock. */
        pthread_mutex_t turn_lock;
        unsigned landmarks;      /* prefetches still in their landmark's part */
        bool background_busy;    /* a background piece is under way */
        struct LayerWaiter *turn_head, *turn_tail; /* waiting for their turn, in order */
        uint64_t walking_until;  /* atomic, CLOCK_MONOTONIC ns: a reader walks a
                                  * layer, so no background piece before then */
} LayerEnv;

void layer_env_init(LayerEnv *env, MetaStore **store, Cache *cache);
void layer_env_done(LayerEnv *env);
/* Makes the registry client now (it is otherwise made by the first
 * registry layer's open, which then waits for it). */
int layer_env_fetch_ready(LayerEnv *env, ErrMsg *err);

/* Opening a layer is on someone's path (containerd's Prepare, a mount
 * waits for its TOC); a prefetch is a guess. Around each open, begin/end
 * count it; a prefetch calls wait_opens before each request, which
 * returns once no open is in flight, or at deadline_ns (CLOCK_MONOTONIC),
 * or when *stop is set (checked every 10 ms). */
void layer_env_open_begin(LayerEnv *env);
void layer_env_open_end(LayerEnv *env);
void layer_env_wait_opens(LayerEnv *env, uint64_t deadline_ns, const bool *stop);
/* A layer's fetch thread (prefetch.c) waiting for its background turn
 * or for work; woken by layer_env_wake() (turns.c). */
typedef struct LayerWaiter {
        pthread_cond_t cond;     /* signalled under env->turn_lock */
        bool granted;            /* the turn is ours */
        struct LayerWaiter *next;
} LayerWaiter;

void layer_waiter_init(LayerWaiter *w);
void layer_waiter_done(LayerWaiter *w);
/* A prefetch counts itself while in its landmark's part. */
void layer_env_landmark_begin(LayerEnv *env);
void layer_env_landmark_end(LayerEnv *env);
/* Waits for the background turn: 1 with it (give it back after one
 * piece), 0 once *stop is set, 2 (without it) once *wake is. Turns go
 * round the waiting layers in order. */
int layer_env_background_take(LayerEnv *env, LayerWaiter *w, const bool *stop, const bool *wake);
void layer_env_background_give(LayerEnv *env);
/* A reader walks a layer's blob (a copy: it reads all of it, and its
 * readahead streams it): the background fetch keeps off the link and the
 * CPUs for WALKING_QUIET_MS. */
void layer_env_walking(LayerEnv *env);
/* Waits until *stop or *wake is set: false once *stop is. */
bool layer_env_sleep(LayerEnv *env, LayerWaiter *w, const bool *stop, const bool *wake);
/* After setting the *stop or *wake that w's thread waits on. */
void layer_env_wake(LayerEnv *env, LayerWaiter *w);

#define LAYER_SWEEPS 8
#define LAYER_SWEPT 64

typedef struct LayerSource {
        Layer *layer;            /* owned */
        int fd;                  /* owned; a local blob, O_RDONLY|O_CLOEXEC; else -1 */
        FetchBlob *blob;         /* owned; a registry blob; else NULL */
        CacheLayer *cache;       /* owned; its cached chunks, or NULL */
        Prefetch *prefetch;      /* owned; the mount-time prefetch, or NULL */
        uint32_t *blob_order;    /* owned; chunk ids by blob offset (with a cache), or NULL */
        uint32_t *blob_pos;      /* owned; the inverse: a chunk's place in blob_order */
        uint64_t ra_end;         /* atomic: where the last fetch of a miss ended in the blob */
        uint64_t ra_span;        /* atomic: the neighbours' span it used */
        bool ra_walking;         /* atomic: that miss's reader walks the blob */
        pthread_mutex_t fetch_lock;
        pthread_cond_t fetch_cond;   /* a fetch ended */
        uint8_t *fetching;       /* owned; per chunk: a thread fetches it now (with a
                                  * cache; else NULL); protected by fetch_lock */
        pthread_t ra_threads[2]; /* the asynchronous readahead (read.c): one
                                  * fetches while the other decodes */
        unsigned ra_started;     /* protected by fetch_lock */
        bool ra_stop;            /* protected by fetch_lock */
        uint64_t ra_from, ra_want; /* written under fetch_lock (ra_from also read
                                  * atomically without it): the next span asked for */
        unsigned ra_chain;       /* protected by fetch_lock: spans the readahead
                                  * asked for itself since a reader last did */
        bool from_store;         /* the index came from the store */
        LayerEnv *env;           /* borrowed; a registry layer's; else NULL */
        /* sweep.c: a reader's miss in a directory has the layer's fetch
         * thread fetch the directory's other small files, once per
         * directory, the latest directory first. Protected by fetch_lock. */
        struct { uint32_t dir; uint64_t from; } sweeps[LAYER_SWEEPS]; /* to do, latest first */
        unsigned n_sweeps;
        uint32_t swept[LAYER_SWEPT]; /* a ring: directories swept or to be */
        unsigned swept_next;
        bool sweep_wanted;       /* atomic: n_sweeps > 0 (the fetch thread's wake) */
        uint8_t *tail;           /* owned; the blob's end, only while opening */
        uint64_t tail_off;
        size_t tail_len;
} LayerSource;

/* Returns 0, -EINVAL (neither an absolute path nor a layer reference), or
 * what opening the blob or its TOC failed with (message in err). With
 * prefetch (and env->prefetch), a registry layer with a prefetch landmark
 * starts fetching its files in the background. */
int layer_source_open(const char *source, LayerEnv *env, bool prefetch, LayerSource **ret, ErrMsg *err);
/* Only from a stored record: -ENOENT (or the record's error) instead of
 * indexing the blob. Never uses the network. For warming up. */
int layer_source_open_stored(const char *source, LayerEnv *env, LayerSource **ret, ErrMsg *err);
LayerSource *layer_source_close(LayerSource *ls);

/* Reads [off, off + len) of regular file ino: from the chunk cache, else
 * from the blob (fetching the missing chunks of the range and a little
 * of what follows in the file in one request, verified, then cached).
 * Returns as layer_read(). d is the calling thread's decoder. */
ssize_t layer_source_read(LayerSource *ls, ChunkDecoder *d, uint64_t ino, uint64_t off, size_t len, void *buf,
                          ErrMsg *err);

/* Stops and joins the asynchronous readahead (before anything it reads
 * from goes away). */
void layer_source_readahead_stop(LayerSource *ls);
/* Has the readahead thread fetch the missing chunks from blob offset from
 * on, back to back, within len bytes, while the caller goes on (an ask
 * it has not started on yet is replaced by a newer one). */
void layer_source_fetch_async(LayerSource *ls, uint64_t from, uint64_t len);

/* Sorts the chunks by blob offset (blob_order, blob_pos), so that a miss
 * can bring along its neighbours in the blob, and sets up `fetching`, so
 * that threads missing the same chunk fetch it once. */
int layer_source_sort_chunks(LayerSource *ls);
/* Sorts chunk ids[0..n) of idx by blob offset. */
void layer_chunks_sort(const Index *idx, uint32_t *ids, size_t n);

/* sweep.c. A reader missed a file of directory dir. */
void layer_sweep_note(LayerSource *ls, uint32_t dir);
/* The fetch thread's next piece of the latest sweep, into ids (at most
 * cap chunks, ascending blob offsets): 0 when none is left (and
 * sweep_wanted is cleared). */
size_t layer_sweep_piece(LayerSource *ls, uint32_t *ids, size_t cap);

/* remote.c: the registry half of the above. */
bool layer_source_is_remote(const char *source);
int layer_remote_open(const char *source, LayerEnv *env, bool stored_only, bool prefetch, LayerSource **ret,
                      ErrMsg *err);
