/* One blob's chunks in the cache: its directory, chunk map and data files
 * (cache.h has the layout, cache-map.h the map).
 *
 * Owns the blob directory fds, the LOCK_SH on its lock file (the pin that
 * keeps every worker's GC away), the shared mapping of chunks.map, and a
 * small table of open data files. Any serving thread calls read, missing,
 * put and the file calls concurrently; open and close run on one thread
 * each, and the Cache's background thread visits the file table to sync.
 *
 * Invariants:
 * - A present bit is set only after the chunk's bytes were written in full
 *   (pwrite, then an atomic OR with release ordering; readers test with
 *   acquire before they pread). The page cache outlives a killed process,
 *   so a bit never covers bytes that are not there, short of power loss.
 * - Power loss is caught by the boot id in the map header: a map last
 *   trusted in another boot has its present bits moved to the suspect
 *   bits when opened (under flock(LOCK_EX) on the map, before the header
 *   takes the new boot id). A suspect chunk is read back and checked
 *   against its chunkDigest before it counts as present; one that fails,
 *   or has no digest, becomes missing.
 * - A data file is created with the file's full size (sparse), so its
 *   offsets are the file's, and a complete one is the file itself.
 * - The file table (files, files_clock) is protected by files_lock; a
 *   slot's fd stays open while its refs > 0. The bits need no lock. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util/digest.h"
#include "common/util/macro.h"
#include "worker/cache/cache-internal.h"
#include "worker/cache/cache.h"

/* Attempts at locking a blob directory that another worker keeps
 * replacing (evicting and recreating) under us. */
#define LOCK_ATTEMPTS 16

typedef struct FileRef {
        CacheFile *slot; /* NULL: fd is a temporary, closed on release */
        int fd;
} FileRef;

/* ---- bits ---- */

static inline uint64_t bit_mask(size_t i) {
        return UINT64_C(1) << (i % 64);
}

static inline bool bit_test(uint64_t *words, size_t i) {
        return __atomic_load_n(&words[i / 64], __ATOMIC_ACQUIRE) & bit_mask(i);
}

/* Returns whether the bit was set before. */
static inline bool bit_set(uint64_t *words, size_t i) {
        return __atomic_fetch_or(&words[i / 64], bit_mask(i), __ATOMIC_RELEASE) & bit_mask(i);
}

static inline bool bit_clear(uint64_t *words, size_t i) {
        return __atomic_fetch_and(&words[i / 64], ~bit_mask(i), __ATOMIC_ACQ_REL) & bit_mask(i);
}

static void atomic_sub_floor0(uint64_t *p, uint64_t n) {
        uint64_t old = __atomic_load_n(p, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(p, &old, old > n ? old - n : 0, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                ;
}

static void usage_add(CacheLayer *cl, uint64_t n) {
        __atomic_fetch_add(&cl->hdr->used_bytes, n, __ATOMIC_RELAXED);
        uint64_t total = __atomic_add_fetch(&cl->cache->bytes_used, n, __ATOMIC_RELAXED);
        if (cl->cache->cfg.max_bytes > 0 && total > cl->cache->cfg.max_bytes)
                cache_gc_request(cl->cache);
}

static void usage_sub(CacheLayer *cl, uint64_t n) {
        atomic_sub_floor0(&cl->hdr->used_bytes, n);
        atomic_sub_floor0(&cl->cache->bytes_used, n);
}

/* The blob's last use, for the LRU: the lock file's mtime, written at most
 * once a minute whatever the read rate. */
static void layer_touch(CacheLayer *cl, bool force) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME_COARSE, &ts);
        int64_t last = __atomic_load_n(&cl->last_touch, __ATOMIC_RELAXED);
        if (!force && ts.tv_sec - last < CACHE_TOUCH_SECONDS)
                return;
        if (__atomic_compare_exchange_n(&cl->last_touch, &last, (int64_t) ts.tv_sec, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                (void) futimens(cl->lock_fd, NULL);
}

/* ---- plain I/O ---- */

static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off) {
        size_t done = 0;
        while (done < len) {
                ssize_t n = pread(fd, (uint8_t *) buf + done, len - done, (off_t) (off + done));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                done += (size_t) n;
        }
        return (ssize_t) done;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off) {
        size_t done = 0;
        while (done < len) {
                ssize_t n = pwrite(fd, (const uint8_t *) buf + done, len - done, (off_t) (off + done));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                done += (size_t) n;
        }
        return 0;
}

/* ---- the table of open data files ---- */

static int data_file_open(CacheLayer *cl, uint64_t ino, bool create, int *ret_fd) {
        char name[24];
        snprintf(name, sizeof(name), "%" PRIu64, ino);
        _cleanup_close_ int fd = openat(cl->files_fd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EIO;
        /* New (or cut short by a crash before this ftruncate): give it the
         * file's size, so that its offsets are the file's. Never shorter
         * than a chunk already written: every chunk lies below the size. */
        uint64_t size = index_inode(cl->idx, ino)->size;
        if (create && (uint64_t) st.st_size != size && ftruncate(fd, (off_t) size) < 0)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static CacheFile *slot_find(CacheLayer *cl, uint64_t ino) {
        for (unsigned i = 0; i < cl->cache->cfg.max_open_files; i++)
                if (cl->files[i].ino == ino)
                        return &cl->files[i];
        return NULL;
}

/* A free slot, else the least recently used idle one, else NULL. */
static CacheFile *slot_victim(CacheLayer *cl) {
        CacheFile *best = NULL;
        for (unsigned i = 0; i < cl->cache->cfg.max_open_files; i++) {
                CacheFile *s = &cl->files[i];
                if (s->ino == 0)
                        return s;
                if (s->refs == 0 && (!best || s->last_use < best->last_use))
                        best = s;
        }
        return best;
}

/* The data file of ino, opened if needed (with create, created). The open
 * runs outside the lock; when two threads race, one fd is kept. A file
 * pushed out of the table is closed without a sync: the kernel writes it
 * back within dirty_expire_centisecs, and only power loss before that
 * costs anything (a re-verification). */
static int file_acquire(CacheLayer *cl, uint64_t ino, bool create, FileRef *ret) {
        pthread_mutex_lock(&cl->files_lock);
        CacheFile *s = slot_find(cl, ino);
        if (s) {
                s->refs++;
                s->last_use = ++cl->files_clock;
                *ret = (FileRef) { s, s->fd };
                pthread_mutex_unlock(&cl->files_lock);
                return 0;
        }
        pthread_mutex_unlock(&cl->files_lock);

        int fd = -EBADF;
        int r = data_file_open(cl, ino, create, &fd);
        if (r < 0)
                return r;

        int old = -EBADF;
        pthread_mutex_lock(&cl->files_lock);
        s = slot_find(cl, ino);
        if (s) {
                old = fd; /* lost the race */
                s->refs++;
                s->last_use = ++cl->files_clock;
                *ret = (FileRef) { s, s->fd };
        } else if ((s = slot_victim(cl))) {
                if (s->ino != 0)
                        old = s->fd;
                *s = (CacheFile) { .ino = ino, .fd = fd, .refs = 1, .last_use = ++cl->files_clock };
                *ret = (FileRef) { s, fd };
        } else
                *ret = (FileRef) { NULL, fd }; /* every slot busy */
        pthread_mutex_unlock(&cl->files_lock);
        if (old >= 0)
                close(old);
        return 0;
}

static void file_release(CacheLayer *cl, FileRef *ref, bool wrote) {
        if (!ref->slot) {
                close(ref->fd);
                return;
        }
        pthread_mutex_lock(&cl->files_lock);
        ref->slot->refs--;
        if (wrote)
                ref->slot->dirty = true;
        pthread_mutex_unlock(&cl->files_lock);
}

static int fdlist_push_dup(FdList *l, int fd) {
        if (l->n == l->cap) {
                size_t ncap = l->cap ? 2 * l->cap : 32;
                int *p = reallocarray(l->fds, ncap, sizeof(int));
                if (!p)
                        return -ENOMEM;
                l->fds = p;
                l->cap = ncap;
        }
        int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (d < 0)
                return -errno;
        l->fds[l->n++] = d;
        return 0;
}

int cache_layer_collect_dirty(CacheLayer *cl, FdList *data, FdList *maps) {
        int r = 0;
        pthread_mutex_lock(&cl->files_lock);
        for (unsigned i = 0; i < cl->cache->cfg.max_open_files && r >= 0; i++) {
                CacheFile *s = &cl->files[i];
                if (s->ino == 0 || !s->dirty)
                        continue;
                r = fdlist_push_dup(data, s->fd);
                if (r >= 0)
                        s->dirty = false;
        }
        pthread_mutex_unlock(&cl->files_lock);
        if (r >= 0 && __atomic_exchange_n(&cl->map_dirty, false, __ATOMIC_RELAXED)) {
                r = fdlist_push_dup(maps, cl->map_fd);
                if (r < 0)
                        __atomic_store_n(&cl->map_dirty, true, __ATOMIC_RELAXED);
        }
        return r;
}

/* ---- chunks ---- */

/* Marks every chunk of ino missing: its data file is gone or shorter than
 * the file (someone deleted or cut it), so a refetch must rewrite it. */
static void file_forget(CacheLayer *cl, uint64_t ino) {
        const IndexInode *in = index_inode(cl->idx, ino);
        for (uint32_t k = 0; k < in->count; k++) {
                size_t ci = (size_t) in->first + k;
                bool p = bit_clear(cl->present, ci);
                bool s = bit_clear(cl->suspect, ci);
                if (p || s)
                        usage_sub(cl, cache_map_chunk_cost(&cl->idx->chunks[ci]));
        }
        __atomic_store_n(&cl->map_dirty, true, __ATOMIC_RELAXED);
}

/* Reads back a chunk of an earlier boot and checks it against its digest.
 * Returns 1 (now present), 0 (did not match, or no digest: now missing),
 * or -errno when it could not be read (it stays suspect). */
static int chunk_reverify(CacheLayer *cl, size_t ci) {
        const IndexChunk *c = &cl->idx->chunks[ci];
        uint32_t ino = cl->chunk_ino[ci];
        bool good = false;
        if (c->digest != INDEX_NONE && ino != 0 && c->size <= SIZE_MAX / 2) {
                _cleanup_free_ uint8_t *buf = malloc(c->size ? (size_t) c->size : 1);
                if (!buf)
                        return -ENOMEM;
                FileRef f;
                int r = file_acquire(cl, ino, false, &f);
                if (r < 0 && r != -ENOENT)
                        return r;
                if (r >= 0) {
                        ssize_t n = pread_full(f.fd, buf, (size_t) c->size, c->file_offset);
                        file_release(cl, &f, false);
                        if (n < 0)
                                return (int) n;
                        if ((uint64_t) n == c->size) {
                                uint8_t got[SHA256_LEN];
                                sha256_buf(buf, (size_t) c->size, got);
                                good = memcmp(got, cl->idx->digests[c->digest], SHA256_LEN) == 0;
                        }
                }
        }
        if (good) {
                bit_set(cl->present, ci);
                bit_clear(cl->suspect, ci);
                __atomic_store_n(&cl->map_dirty, true, __ATOMIC_RELAXED);
                cache_count(&cl->counters.reverified, 1);
                return 1;
        }
        /* Only the thread that clears the bit accounts for it; a put that
         * raced us has set present and owns the accounting. */
        if (bit_clear(cl->suspect, ci)) {
                if (!bit_test(cl->present, ci))
                        usage_sub(cl, cache_map_chunk_cost(c));
                __atomic_store_n(&cl->map_dirty, true, __ATOMIC_RELAXED);
                cache_count(&cl->counters.reverify_failed, 1);
        }
        return bit_test(cl->present, ci) ? 1 : 0;
}

/* 1 when chunk ci may be served, 0 when missing, -errno. */
static int chunk_ready(CacheLayer *cl, size_t ci) {
        if (bit_test(cl->present, ci))
                return 1;
        if (!bit_test(cl->suspect, ci))
                return 0;
        return chunk_reverify(cl, ci);
}

bool cache_layer_chunk_present(CacheLayer *cl, size_t ci) {
        return ci < cl->idx->n_chunks && (bit_test(cl->present, ci) || bit_test(cl->suspect, ci));
}

static int file_inode(CacheLayer *cl, uint64_t ino, const IndexInode **ret) {
        const IndexInode *in = index_inode(cl->idx, ino);
        if (!in)
                return -ENOENT;
        if (S_ISDIR(in->mode))
                return -EISDIR;
        if (!S_ISREG(in->mode))
                return -EINVAL;
        *ret = in;
        return 0;
}

/* The chunks of ino covering [off, off + len), len > 0, off < size:
 * [*ret_first, *ret_end). */
static void range_chunks(CacheLayer *cl, uint64_t ino, const IndexInode *in, uint64_t off, size_t len,
                         size_t *ret_first, size_t *ret_end) {
        int64_t ci = index_chunk_find(cl->idx, ino, off);
        size_t end = (size_t) in->first + in->count;
        size_t i = ci < 0 ? end : (size_t) ci;
        *ret_first = i;
        while (i < end && cl->idx->chunks[i].file_offset < off + len)
                i++;
        *ret_end = i;
}

ssize_t cache_layer_read(CacheLayer *cl, uint64_t ino, uint64_t off, size_t len, void *buf) {
        const IndexInode *in;
        int r = file_inode(cl, ino, &in);
        if (r < 0)
                return r;
        if (off >= in->size || len == 0)
                return 0;
        len = (size_t) MIN((uint64_t) len, in->size - off);
        size_t first, end;
        range_chunks(cl, ino, in, off, len, &first, &end);
        for (size_t ci = first; ci < end; ci++) {
                r = chunk_ready(cl, ci);
                if (r < 0)
                        return r;
                if (r == 0) {
                        cache_count(&cl->counters.misses, 1);
                        return -ENODATA;
                }
        }
        FileRef f;
        r = file_acquire(cl, ino, false, &f);
        if (r == -ENOENT) {
                file_forget(cl, ino);
                cache_count(&cl->counters.misses, 1);
                return -ENODATA;
        }
        if (r < 0)
                return r;
        ssize_t n = pread_full(f.fd, buf, len, off);
        file_release(cl, &f, false);
        if (n < 0)
                return n;
        if ((size_t) n < len) {
                file_forget(cl, ino);
                cache_count(&cl->counters.misses, 1);
                return -ENODATA;
        }
        cache_count(&cl->counters.hits, 1);
        cache_count(&cl->counters.hit_bytes, len);
        layer_touch(cl, false);
        return (ssize_t) len;
}

int cache_layer_missing(CacheLayer *cl, uint64_t ino, uint64_t off, size_t len, size_t *ret_first, size_t *ret_n) {
        const IndexInode *in;
        int r = file_inode(cl, ino, &in);
        if (r < 0)
                return r;
        size_t first = SIZE_MAX, n = 0;
        if (off < in->size && len > 0) {
                len = (size_t) MIN((uint64_t) len, in->size - off);
                size_t start, end;
                range_chunks(cl, ino, in, off, len, &start, &end);
                for (size_t ci = start; ci < end; ci++) {
                        r = chunk_ready(cl, ci);
                        if (r < 0)
                                return r;
                        if (r == 0) {
                                if (n++ == 0)
                                        first = ci;
                        } else if (n > 0)
                                break;
                }
        }
        *ret_first = n > 0 ? first : 0;
        *ret_n = n;
        return n > 0;
}

int cache_layer_put(CacheLayer *cl, size_t chunk_index, const void *data, size_t len) {
        if (chunk_index >= cl->idx->n_chunks)
                return -EINVAL;
        const IndexChunk *c = &cl->idx->chunks[chunk_index];
        uint32_t ino = cl->chunk_ino[chunk_index];
        if (len != c->size || ino == 0)
                return -EINVAL;
        if (bit_test(cl->present, chunk_index))
                return 0;
        FileRef f;
        int r = file_acquire(cl, ino, true, &f);
        if (r >= 0) {
                r = pwrite_full(f.fd, data, len, c->file_offset);
                file_release(cl, &f, true);
        }
        if (r < 0) {
                /* The bytes may be half there; without the bit they are
                 * just missing, and a later put rewrites them. */
                cache_count(&cl->counters.put_errors, 1);
                if (r == -ENOSPC || r == -EDQUOT)
                        cache_gc_request(cl->cache);
                return r;
        }
        bool was_present = bit_set(cl->present, chunk_index);
        bool was_suspect = bit_clear(cl->suspect, chunk_index);
        __atomic_store_n(&cl->map_dirty, true, __ATOMIC_RELAXED);
        if (!was_present) {
                cache_count(&cl->counters.puts, 1);
                cache_count(&cl->counters.put_bytes, len);
                if (!was_suspect)
                        usage_add(cl, cache_map_chunk_cost(c));
        }
        layer_touch(cl, false);
        return 0;
}

int cache_layer_file_complete(CacheLayer *cl, uint64_t ino) {
        const IndexInode *in;
        int r = file_inode(cl, ino, &in);
        if (r < 0)
                return r;
        for (uint32_t k = 0; k < in->count; k++) {
                r = chunk_ready(cl, (size_t) in->first + k);
                if (r <= 0)
                        return r;
        }
        return 1;
}

int cache_layer_file_open(CacheLayer *cl, uint64_t ino, int *ret_fd) {
        int r = cache_layer_file_complete(cl, ino);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENODATA;
        const IndexInode *in = index_inode(cl->idx, ino);
        if (in->count == 0) {
                /* an empty file has no chunk to put: create it here */
                FileRef f;
                r = file_acquire(cl, ino, true, &f);
                if (r < 0)
                        return r;
                file_release(cl, &f, false);
        }
        char name[24];
        snprintf(name, sizeof(name), "%" PRIu64, ino);
        _cleanup_close_ int fd = openat(cl->files_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno != ENOENT)
                return -errno;
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) < 0)
                return -errno;
        if (fd < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size != in->size) {
                file_forget(cl, ino);
                return -ENODATA;
        }
        layer_touch(cl, false);
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* ---- open and close ---- */

/* At close: fdatasync what this layer wrote since the last background
 * pass, data before the map. The dirty marks are read under files_lock
 * because the background pass may be collecting them right now. */
static void layer_sync_own(CacheLayer *cl) {
        unsigned n_files = cl->cache->cfg.max_open_files;
        _cleanup_free_ int *fds = calloc(n_files, sizeof(int));
        size_t n = 0;
        uint64_t errors = 0;
        pthread_mutex_lock(&cl->files_lock);
        for (unsigned i = 0; i < n_files; i++) {
                CacheFile *s = &cl->files[i];
                if (s->ino == 0 || !s->dirty)
                        continue;
                if (fds)
                        fds[n++] = s->fd; /* stays open: only close() closes the slots */
                else if (fdatasync(s->fd) < 0)
                        errors++;
                s->dirty = false;
        }
        pthread_mutex_unlock(&cl->files_lock);
        for (size_t i = 0; i < n; i++)
                if (fdatasync(fds[i]) < 0)
                        errors++;
        if (__atomic_exchange_n(&cl->map_dirty, false, __ATOMIC_RELAXED) && fdatasync(cl->map_fd) < 0)
                errors++;
        cache_count(&cl->counters.sync_errors, errors);
}

/* Frees whatever part of cl is set up; the unwinding of a failed open too. */
static void layer_free(CacheLayer *cl, bool registered, bool pinned) {
        if (cl->files) {
                if (registered) {
                        /* data before the bits, as the background pass does */
                        layer_sync_own(cl);
                        cache_layer_unregister(cl->cache, cl);
                }
                for (unsigned i = 0; i < cl->cache->cfg.max_open_files; i++)
                        if (cl->files[i].ino != 0)
                                close(cl->files[i].fd);
                free(cl->files);
        }
        if (cl->map)
                munmap(cl->map, cl->map_size);
        if (registered)
                layer_touch(cl, true);
        if (cl->map_fd >= 0)
                close(cl->map_fd);
        if (cl->files_fd >= 0)
                close(cl->files_fd);
        if (cl->dir_fd >= 0)
                close(cl->dir_fd);
        if (cl->lock_fd >= 0)
                close(cl->lock_fd); /* drops LOCK_SH: other workers' GC may now evict */
        if (pinned)
                cache_unpin(cl->cache, cl->digest);
        free(cl->chunk_ino);
        pthread_mutex_destroy(&cl->files_lock);
        free(cl);
}

CacheLayer *cache_layer_close(CacheLayer *cl) {
        if (cl)
                layer_free(cl, true, true);
        return NULL;
}

static void layer_close_dir(CacheLayer *cl) {
        if (cl->lock_fd >= 0)
                close(cl->lock_fd);
        if (cl->dir_fd >= 0)
                close(cl->dir_fd);
        cl->lock_fd = cl->dir_fd = -EBADF;
}

/* Creates ROOT/cache/<hex> if needed and takes LOCK_SH on its lock file,
 * then checks that the locked file is still the one at that path: a GC
 * (ours or another worker's) may have moved the directory to the trash
 * between our open and our lock, and then we start over. */
static int blob_dir_lock(CacheLayer *cl, ErrMsg *err) {
        int root = cl->cache->root_fd;
        for (unsigned attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
                if (mkdirat(root, cl->hex, 0700) < 0 && errno != EEXIST)
                        return errmsg_set(err, -errno, "cannot create the blob directory: %s", strerror(errno));
                cl->dir_fd = openat(root, cl->hex, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (cl->dir_fd < 0) {
                        if (errno == ENOENT)
                                continue;
                        return errmsg_set(err, -errno, "cannot open the blob directory: %s", strerror(errno));
                }
                cl->lock_fd = openat(cl->dir_fd, CACHE_LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
                if (cl->lock_fd < 0) {
                        int r = -errno;
                        layer_close_dir(cl);
                        if (r == -ENOENT)
                                continue;
                        return errmsg_set(err, r, "cannot open the blob lock file: %s", strerror(-r));
                }
                /* Blocks only while a GC holds LOCK_EX to rename the directory away. */
                while (flock(cl->lock_fd, LOCK_SH) < 0)
                        if (errno != EINTR) {
                                int r = -errno;
                                layer_close_dir(cl);
                                return errmsg_set(err, r, "cannot lock the blob directory: %s", strerror(-r));
                        }
                char path[CACHE_HEX_LEN + 16];
                struct stat a, b;
                snprintf(path, sizeof(path), "%s/" CACHE_LOCK_FILE, cl->hex);
                if (fstat(cl->lock_fd, &a) >= 0 && fstatat(root, path, &b, AT_SYMLINK_NOFOLLOW) >= 0 &&
                    a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                        return 0;
                layer_close_dir(cl);
        }
        return errmsg_set(err, -EAGAIN, "the blob directory was replaced %u times while being locked", LOCK_ATTEMPTS);
}

/* Writes a fresh, empty chunk map under a temporary name and links it
 * into place; link() fails with EEXIST when another worker was first, and
 * either way nobody sees a half-written map. */
static int map_create(CacheLayer *cl, const uint8_t layout[SHA256_LEN], uint64_t size) {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), CACHE_TMP_PREFIX CACHE_MAP_FILE ".%ld.%" PRIu64, (long) getpid(), cache_unique_id());
        _cleanup_close_ int fd = openat(cl->dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        CacheMapHeader h;
        cache_map_header_init(&h, cl->idx->n_chunks, layout, cl->cache->boot_id);
        int r = ftruncate(fd, (off_t) size) < 0 ? -errno : 0;
        if (r >= 0)
                r = pwrite_full(fd, &h, sizeof(h), 0);
        if (r >= 0) {
                if (linkat(cl->dir_fd, tmp, cl->dir_fd, CACHE_MAP_FILE, 0) >= 0)
                        __atomic_fetch_add(&cl->cache->bytes_used, (size + 4095) & ~UINT64_C(4095), __ATOMIC_RELAXED);
                else if (errno != EEXIST)
                        r = -errno;
        }
        (void) unlinkat(cl->dir_fd, tmp, 0);
        return r;
}

/* Called with the map's LOCK_EX: no other worker is between its open and
 * this point, and one that opened it in this boot has already moved the
 * bits. Suspect first, then clear present, then the new boot id: a kill
 * at any step leaves the old boot id, and the next open repeats it. */
static void map_distrust(CacheLayer *cl) {
        size_t words = (size_t) cache_map_words(cl->idx->n_chunks);
        for (size_t w = 0; w < words; w++) {
                uint64_t p = __atomic_load_n(&cl->present[w], __ATOMIC_ACQUIRE);
                if (p) {
                        __atomic_fetch_or(&cl->suspect[w], p, __ATOMIC_RELEASE);
                        __atomic_fetch_and(&cl->present[w], ~p, __ATOMIC_RELEASE);
                }
        }
        /* release stores: whoever sees the new id sees the moved bits */
        uint64_t id[2];
        memcpy(id, cl->cache->boot_id, sizeof(id));
        uint64_t *dst = (uint64_t *) (void *) cl->hdr->boot_id;
        __atomic_store_n(&dst[0], id[0], __ATOMIC_RELEASE);
        __atomic_store_n(&dst[1], id[1], __ATOMIC_RELEASE);
}

/* Opens (creating) chunks.map, checks it against the index and maps it.
 * -EBADMSG, -EPROTONOSUPPORT or -ESTALE (with a message) for a map to
 * discard. */
static int map_open(CacheLayer *cl, const uint8_t layout[SHA256_LEN], ErrMsg *err) {
        uint64_t size = cache_map_file_size(cl->idx->n_chunks);
        _cleanup_close_ int fd = -EBADF;
        for (unsigned attempt = 0; fd < 0; attempt++) {
                fd = openat(cl->dir_fd, CACHE_MAP_FILE, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
                if (fd >= 0)
                        break;
                if (errno != ENOENT || attempt == 3)
                        return errmsg_set(err, -errno, "cannot open the chunk map: %s", strerror(errno));
                int r = map_create(cl, layout, size);
                if (r < 0)
                        return errmsg_set(err, r, "cannot create the chunk map: %s", strerror(-r));
        }
        while (flock(fd, LOCK_EX) < 0)
                if (errno != EINTR)
                        return errmsg_set(err, -errno, "cannot lock the chunk map: %s", strerror(errno));

        uint8_t buf[CACHE_MAP_HEADER_SIZE];
        struct stat st;
        CacheMapHeader h;
        int r = fstat(fd, &st) < 0 ? -errno : 0;
        if (r >= 0 && !S_ISREG(st.st_mode))
                r = errmsg_set(err, -EBADMSG, "chunk map is not a regular file");
        if (r >= 0) {
                ssize_t n = pread_full(fd, buf, sizeof(buf), 0);
                if (n < 0)
                        r = errmsg_set(err, (int) n, "cannot read the chunk map: %s", strerror((int) -n));
                else
                        r = cache_map_header_check(buf, (size_t) n, (uint64_t) st.st_size, &h, err);
        }
        if (r >= 0)
                r = cache_map_header_match(&h, cl->idx->n_chunks, layout, err);
        if (r >= 0) {
                cl->map = mmap(NULL, (size_t) size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (cl->map == MAP_FAILED) {
                        cl->map = NULL;
                        r = errmsg_set(err, -errno, "cannot map the chunk map: %s", strerror(errno));
                }
        }
        if (r < 0) {
                (void) flock(fd, LOCK_UN);
                return r;
        }
        cl->map_size = (size_t) size;
        cl->hdr = cl->map;
        cl->present = (uint64_t *) ((uint8_t *) cl->map + CACHE_MAP_HEADER_SIZE);
        cl->suspect = cl->present + cache_map_words(cl->idx->n_chunks);

        if (memcmp(cl->hdr->boot_id, cl->cache->boot_id, CACHE_BOOT_ID_LEN) != 0)
                map_distrust(cl);

        /* The header's estimate drifts by a chunk when a worker dies between
         * a bit and its accounting: set it right while we hold the lock. */
        uint64_t used = 0;
        for (size_t ci = 0; ci < cl->idx->n_chunks; ci++)
                if (bit_test(cl->present, ci) || bit_test(cl->suspect, ci))
                        used += cache_map_chunk_cost(&cl->idx->chunks[ci]);
        uint64_t old = __atomic_exchange_n(&cl->hdr->used_bytes, used, __ATOMIC_RELAXED);
        if (used > old)
                __atomic_fetch_add(&cl->cache->bytes_used, used - old, __ATOMIC_RELAXED);
        else
                atomic_sub_floor0(&cl->cache->bytes_used, old - used);
        (void) flock(fd, LOCK_UN);
        cl->map_fd = TAKE_FD(fd);
        return 0;
}

int cache_layer_open(Cache *c, const uint8_t *blob_digest, size_t digest_len, const Index *idx, CacheLayer **ret,
                     ErrMsg *err) {
        if (!blob_digest || digest_len != SHA256_LEN)
                return errmsg_set(err, -EINVAL, "blob digest is %zu bytes, not %d", blob_digest ? digest_len : 0, SHA256_LEN);
        if (idx->n_chunks > CACHE_MAP_MAX_CHUNKS || idx->n_inodes >= UINT32_MAX)
                return errmsg_set(err, -EFBIG, "index of %zu inodes and %zu chunks is too large to cache",
                                  idx->n_inodes, idx->n_chunks);
        uint8_t layout[SHA256_LEN];
        int r = cache_map_layout(idx, layout);
        if (r < 0)
                return r;

        CacheLayer *cl = calloc(1, sizeof(*cl));
        if (!cl)
                return -ENOMEM;
        cl->cache = c;
        cl->idx = idx;
        cl->dir_fd = cl->files_fd = cl->lock_fd = cl->map_fd = -EBADF;
        pthread_mutex_init(&cl->files_lock, NULL);
        memcpy(cl->digest, blob_digest, SHA256_LEN);
        cache_hex(cl->digest, cl->hex);
        cl->chunk_ino = calloc(MAX(idx->n_chunks, (size_t) 1), sizeof(uint32_t));
        if (!cl->chunk_ino) {
                layer_free(cl, false, false);
                return -ENOMEM;
        }
        for (size_t i = 0; i < idx->n_inodes; i++) {
                const IndexInode *in = &idx->inodes[i];
                if (!S_ISREG(in->mode))
                        continue;
                if ((uint64_t) in->first + in->count > idx->n_chunks) {
                        layer_free(cl, false, false);
                        return errmsg_set(err, -EBADMSG, "index inode %zu owns chunks past the end", i + 1);
                }
                for (uint32_t k = 0; k < in->count; k++)
                        cl->chunk_ino[in->first + k] = (uint32_t) (i + 1);
        }

        /* Pinned before the directory is created or locked: our own GC
         * checks pins under the same lock it evicts under. */
        r = cache_pin(c, cl->digest);
        if (r < 0) {
                layer_free(cl, false, false);
                return r;
        }
        for (unsigned attempt = 0;; attempt++) {
                r = blob_dir_lock(cl, err);
                if (r < 0)
                        break;
                r = map_open(cl, layout, err);
                if (r != -EBADMSG && r != -EPROTONOSUPPORT && r != -ESTALE)
                        break;
                if (attempt > 0) {
                        errmsg_prefix(err, r, "a chunk map just created does not check");
                        break;
                }
                /* Not ours to read: discard the whole directory, unless
                 * another worker holds it (it may read it fine). */
                if (flock(cl->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                        errmsg_prefix(err, -EBUSY, "chunk map unusable, and the blob is open elsewhere (another layer or worker)");
                        r = -EBUSY;
                        break;
                }
                char trash[CACHE_TRASH_NAME_MAX];
                r = cache_blob_to_trash(c, cl->hex, cl->lock_fd, trash);
                layer_close_dir(cl); /* drops LOCK_EX before the slow part */
                if (r >= 0)
                        cache_trash_delete(c, trash);
                else if (r != -ESTALE) { /* ESTALE: someone else moved it already */
                        errmsg_set(err, r, "cannot discard an unusable chunk map: %s", strerror(-r));
                        break;
                }
                cache_note_discard(c);
                if (err)
                        err->text[0] = 0;
        }
        if (r >= 0) {
                if (mkdirat(cl->dir_fd, CACHE_FILES_DIR, 0700) < 0 && errno != EEXIST)
                        r = errmsg_set(err, -errno, "cannot create the data directory: %s", strerror(errno));
                else {
                        cl->files_fd = openat(cl->dir_fd, CACHE_FILES_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (cl->files_fd < 0)
                                r = errmsg_set(err, -errno, "cannot open the data directory: %s", strerror(errno));
                }
        }
        if (r >= 0) {
                cl->files = calloc(c->cfg.max_open_files, sizeof(CacheFile));
                if (!cl->files)
                        r = -ENOMEM;
        }
        if (r < 0) {
                errmsg_prefix(err, r, "cache of blob %s", cl->hex);
                layer_free(cl, false, true);
                return r;
        }
        layer_touch(cl, true);
        cache_layer_register(c, cl);
        *ret = cl;
        return 0;
}
