/* The Cache: ROOT/cache/ as a whole (cache.h has the layout).
 *
 * Owns the directory fds, the table of blobs pinned by this process, the
 * list of open CacheLayers (cache-layer.c owns what is inside them), the
 * cumulative statistics, and one background thread ("hf-cache") that
 * fdatasyncs dirty data files every sync_interval_ms and runs the GC when
 * a put pushes the usage over max_bytes. cache_gc() and cache_stats() may
 * be called from any thread; the GC is serialized by gc_lock.
 *
 * Invariants:
 * - A blob directory is removed only by renaming it into .trash/ first,
 *   while holding LOCK_EX on its lock file, after checking that the lock
 *   file is still the one under ROOT/cache/<hex> (so a crash leaves either
 *   the whole directory or trash, and cache_open() deletes the trash).
 *   A worker with the blob open holds LOCK_SH, so LOCK_EX|LOCK_NB fails and
 *   the GC skips it; this process's own pins are also checked in memory,
 *   under lock, which is what cache_layer_open() pins under before it
 *   creates or locks the directory.
 * - The usage is estimated, not walked: each chunk map's header carries
 *   the accounted bytes of its chunks (kept by the puts, recomputed exactly
 *   when a layer is opened), so a scan costs a stat and a read per blob.
 *   Between scans, bytes_used grows by this process's puts. */
#include "worker/cache/cache.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/cache/cache-internal.h"
#include "worker/util/cond.h"

#define DEFAULT_SYNC_INTERVAL_MS 5000
#define DEFAULT_MAX_OPEN_FILES 64u
/* The file table is searched linearly (cache-layer.c): keep it small. */
#define MAX_OPEN_FILES_CAP 1024u
/* A temporary file older than this has no live writer: creating one and
 * linking it into place takes microseconds. */
#define TMP_MAX_AGE_SECONDS 600
/* blob dir / f / file, under .trash/<name>/ */
#define RM_MAX_DEPTH 3

typedef struct BlobInfo {
        char hex[CACHE_HEX_LEN + 1];
        uint64_t bytes;
        struct timespec last_use;
        bool valid;        /* has a chunk map that passed cache_map_header_check() */
        bool pinned;       /* by this process, when the GC looked */
} BlobInfo;

void cache_hex(const uint8_t digest[SHA256_LEN], char ret[CACHE_HEX_LEN + 1]) {
        static const char x[] = "0123456789abcdef";
        for (size_t i = 0; i < SHA256_LEN; i++) {
                ret[2 * i] = x[digest[i] >> 4];
                ret[2 * i + 1] = x[digest[i] & 15];
        }
        ret[CACHE_HEX_LEN] = 0;
}

static bool is_blob_name(const char *name) {
        size_t i;
        for (i = 0; name[i]; i++)
                if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
                        return false;
        return i == CACHE_HEX_LEN;
}

static int hex_digit(char ch) {
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        if (ch >= 'a' && ch <= 'f')
                return ch - 'a' + 10;
        if (ch >= 'A' && ch <= 'F')
                return ch - 'A' + 10;
        return -1;
}

/* The kernel's boot id, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx\n", as 16
 * bytes. Without /proc, a random id per process: every restart then
 * re-verifies what it finds, which is slow but never wrong. */
static void boot_id_read(uint8_t ret[CACHE_BOOT_ID_LEN]) {
        char s[64] = {};
        int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, s, sizeof(s) - 1) : -1;
        if (fd >= 0)
                close(fd);
        uint8_t id[CACHE_BOOT_ID_LEN];
        size_t k = 0;
        for (ssize_t i = 0; i < n && k < 2 * CACHE_BOOT_ID_LEN; i++) {
                if (s[i] == '-')
                        continue;
                int v = hex_digit(s[i]);
                if (v < 0)
                        break;
                if (k % 2 == 0)
                        id[k / 2] = (uint8_t) (v << 4);
                else
                        id[k / 2] |= (uint8_t) v;
                k++;
        }
        if (k == 2 * CACHE_BOOT_ID_LEN) {
                memcpy(ret, id, CACHE_BOOT_ID_LEN);
                return;
        }
        if (getrandom(ret, CACHE_BOOT_ID_LEN, 0) != CACHE_BOOT_ID_LEN)
                for (size_t i = 0; i < CACHE_BOOT_ID_LEN; i++)
                        ret[i] = (uint8_t) (rand() ^ getpid() ^ time(NULL));
}

static uint64_t mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* ---- removing directories ---- */

/* Deletes everything inside directory dfd, descending at most depth
 * levels. Entries that vanish meanwhile (another worker deleting the same
 * trash) are fine. Returns 0 or the last error. */
static int rm_children(int dfd, unsigned depth) {
        int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (!d) {
                int r = -errno;
                close(fd);
                return r;
        }
        int r = 0;
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                r = -errno;
                        break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                /* Linux refuses unlink() of a directory with EISDIR: no d_type needed. */
                if (unlinkat(dfd, de->d_name, 0) >= 0 || errno == ENOENT)
                        continue;
                if (errno != EISDIR || depth == 0) {
                        r = -errno;
                        continue;
                }
                int sub = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0) {
                        if (errno != ENOENT)
                                r = -errno;
                        continue;
                }
                int k = rm_children(sub, depth - 1);
                close(sub);
                if (k < 0)
                        r = k;
                if (unlinkat(dfd, de->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT)
                        r = -errno;
        }
        closedir(d);
        return r;
}

static int rm_tree_at(int dfd, const char *name) {
        _cleanup_close_ int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        int r = rm_children(fd, RM_MAX_DEPTH);
        if (unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r >= 0)
                r = -errno;
        return r;
}

/* ---- evicting one blob ---- */

uint64_t cache_unique_id(void) {
        static uint64_t counter;
        return __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
}

/* Checks that lock_fd is the lock file under ROOT/cache/hex now: an fd of
 * a directory that another worker already moved away would otherwise make
 * us rename the fresh one that replaced it. */
int cache_blob_to_trash(Cache *c, const char *hex, int lock_fd, char ret_name[CACHE_TRASH_NAME_MAX]) {
        char path[CACHE_HEX_LEN + 16];
        struct stat a, b;
        snprintf(path, sizeof(path), "%s/" CACHE_LOCK_FILE, hex);
        if (fstat(lock_fd, &a) < 0)
                return -errno;
        if (fstatat(c->root_fd, path, &b, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? -ESTALE : -errno;
        if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
                return -ESTALE;
        /* The pid is reused after a crash and the trash may still hold a
         * dead worker's entry of that name: try another. */
        for (unsigned attempt = 0;; attempt++) {
                snprintf(ret_name, CACHE_TRASH_NAME_MAX, "%s.%ld.%" PRIu64, hex, (long) getpid(), cache_unique_id());
                if (renameat(c->root_fd, hex, c->trash_fd, ret_name) >= 0)
                        return 0;
                if ((errno != EEXIST && errno != ENOTEMPTY) || attempt == 3)
                        return -errno;
        }
}

void cache_trash_delete(Cache *c, const char *name) {
        (void) rm_tree_at(c->trash_fd, name);
}

/* Takes LOCK_EX|LOCK_NB on blob hex and moves it to the trash: -EBUSY when
 * a worker has it open, -ENOENT when it is gone already. */
static int blob_evict(Cache *c, const char *hex, char ret_name[CACHE_TRASH_NAME_MAX]) {
        _cleanup_close_ int dfd = openat(c->root_fd, hex, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        _cleanup_close_ int lock_fd = openat(dfd, CACHE_LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (lock_fd < 0)
                return -errno;
        if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EBUSY : -errno;
        int r = cache_blob_to_trash(c, hex, lock_fd, ret_name);
        return r == -ESTALE ? -ENOENT : r;
}

/* ---- scanning ---- */

/* Disk usage of a blob directory whose chunk map cannot tell: a walk. */
static uint64_t dir_usage(int dfd, unsigned depth) {
        int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        DIR *d = fdopendir(fd);
        if (!d) {
                close(fd);
                return 0;
        }
        uint64_t sum = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                struct stat st;
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue;
                sum += (uint64_t) st.st_blocks * 512;
                if (S_ISDIR(st.st_mode) && depth > 0) {
                        int sub = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (sub >= 0) {
                                sum += dir_usage(sub, depth - 1);
                                close(sub);
                        }
                }
        }
        closedir(d);
        return sum;
}

static void tmp_files_remove(int dfd) {
        int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return;
        DIR *d = fdopendir(fd);
        if (!d) {
                close(fd);
                return;
        }
        time_t now = time(NULL);
        struct dirent *de;
        while ((de = readdir(d))) {
                struct stat st;
                if (strncmp(de->d_name, CACHE_TMP_PREFIX, strlen(CACHE_TMP_PREFIX)) != 0)
                        continue;
                if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                if (now - st.st_mtim.tv_sec >= TMP_MAX_AGE_SECONDS)
                        (void) unlinkat(dfd, de->d_name, 0);
        }
        closedir(d);
}

/* Looks at one blob directory. Returns 0, or -ENOENT when it is not a
 * directory or vanished. */
static int blob_info_read(Cache *c, const char *hex, bool cleanup, BlobInfo *ret) {
        _cleanup_close_ int dfd = openat(c->root_fd, hex, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return -ENOENT;
        BlobInfo info = {};
        memcpy(info.hex, hex, sizeof(info.hex));
        struct stat st;
        if (fstatat(dfd, CACHE_LOCK_FILE, &st, AT_SYMLINK_NOFOLLOW) < 0 && fstat(dfd, &st) < 0)
                return -ENOENT;
        info.last_use = st.st_mtim;

        _cleanup_close_ int mfd = openat(dfd, CACHE_MAP_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        uint8_t buf[CACHE_MAP_HEADER_SIZE];
        CacheMapHeader h;
        if (mfd >= 0 && fstat(mfd, &st) >= 0 && S_ISREG(st.st_mode) &&
            pread(mfd, buf, sizeof(buf), 0) == (ssize_t) sizeof(buf) &&
            cache_map_header_check(buf, sizeof(buf), (uint64_t) st.st_size, &h, NULL) >= 0) {
                info.valid = true;
                info.bytes = h.used_bytes + (((uint64_t) st.st_size + 4095) & ~UINT64_C(4095));
        } else
                info.bytes = dir_usage(dfd, 1);
        if (cleanup)
                tmp_files_remove(dfd);
        *ret = info;
        return 0;
}

static bool pin_find(Cache *c, const uint8_t digest[SHA256_LEN], size_t *ret_i) {
        for (size_t i = 0; i < c->n_pins; i++)
                if (memcmp(c->pins[i].digest, digest, SHA256_LEN) == 0) {
                        *ret_i = i;
                        return true;
                }
        return false;
}

static bool pinned_hex(Cache *c, const char *hex) {
        for (size_t i = 0; i < c->n_pins; i++)
                if (strcmp(c->pins[i].hex, hex) == 0)
                        return true;
        return false;
}

/* Reads every blob directory. With cleanup (cache_open()), also deletes
 * stale temporary files, and evicts directories without a valid chunk
 * map that nobody holds: a creation cut short, or a corrupt or foreign
 * map (cache_layer_open() would discard it anyway). */
static int cache_scan(Cache *c, bool cleanup, BlobInfo **ret, size_t *ret_n, ErrMsg *err) {
        int fd = openat(c->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return errmsg_set(err, -errno, "cannot open the cache directory: %s", strerror(errno));
        DIR *d = fdopendir(fd);
        if (!d) {
                int r = -errno;
                close(fd);
                return errmsg_set(err, r, "cannot read the cache directory: %s", strerror(-r));
        }
        _cleanup_free_ BlobInfo *v = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                r = errmsg_set(err, -errno, "cannot read the cache directory: %s", strerror(errno));
                        break;
                }
                if (!is_blob_name(de->d_name))
                        continue;
                BlobInfo info;
                if (blob_info_read(c, de->d_name, cleanup, &info) < 0)
                        continue;
                if (cleanup && !info.valid) {
                        char name[CACHE_TRASH_NAME_MAX];
                        pthread_mutex_lock(&c->lock);
                        int k = pinned_hex(c, info.hex) ? -EBUSY : blob_evict(c, info.hex, name);
                        if (k >= 0)
                                c->discarded++;
                        pthread_mutex_unlock(&c->lock);
                        if (k >= 0) {
                                (void) rm_tree_at(c->trash_fd, name);
                                continue;
                        }
                        if (k == -ENOENT)
                                continue;
                }
                if (n == cap) {
                        size_t ncap = cap ? 2 * cap : 64;
                        BlobInfo *p = realloc(v, ncap * sizeof(*v));
                        if (!p) {
                                r = -ENOMEM;
                                break;
                        }
                        v = p;
                        cap = ncap;
                }
                v[n++] = info;
        }
        closedir(d);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

static int cmp_last_use(const void *a, const void *b) {
        const BlobInfo *x = a, *y = b;
        if (x->last_use.tv_sec != y->last_use.tv_sec)
                return x->last_use.tv_sec < y->last_use.tv_sec ? -1 : 1;
        if (x->last_use.tv_nsec != y->last_use.tv_nsec)
                return x->last_use.tv_nsec < y->last_use.tv_nsec ? -1 : 1;
        return strcmp(x->hex, y->hex);
}

int cache_gc(Cache *c, ErrMsg *err) {
        _cleanup_free_ BlobInfo *v = NULL;
        size_t n = 0;
        pthread_mutex_lock(&c->gc_lock);
        int r = cache_scan(c, false, &v, &n, err);
        if (r < 0) {
                pthread_mutex_unlock(&c->gc_lock);
                return r;
        }
        uint64_t total = 0, pinned = 0, busy = 0, evicted_bytes = 0;
        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < n; i++) {
                total += v[i].bytes;
                v[i].pinned = pinned_hex(c, v[i].hex);
                if (v[i].pinned)
                        pinned += v[i].bytes;
        }
        pthread_mutex_unlock(&c->lock);
        qsort(v, n, sizeof(*v), cmp_last_use);

        uint64_t max = c->cfg.max_bytes;
        unsigned evicted = 0, gone = 0;
        for (size_t i = 0; i < n && max > 0 && total > max; i++) {
                if (v[i].pinned)
                        continue;
                char name[CACHE_TRASH_NAME_MAX];
                pthread_mutex_lock(&c->lock);
                /* pinned since the scan? cache_layer_open() pins under this lock */
                int k = pinned_hex(c, v[i].hex) ? -EBUSY : blob_evict(c, v[i].hex, name);
                pthread_mutex_unlock(&c->lock);
                if (k == -EBUSY) {
                        busy += v[i].bytes;
                        continue;
                }
                if (k == -ENOENT) { /* another worker evicted it */
                        total -= v[i].bytes;
                        gone++;
                        continue;
                }
                if (k < 0)
                        continue;
                (void) rm_tree_at(c->trash_fd, name);
                total -= v[i].bytes;
                evicted_bytes += v[i].bytes;
                evicted++;
        }

        pthread_mutex_lock(&c->lock);
        c->evictions += evicted;
        c->evicted_bytes += evicted_bytes;
        c->gc_runs++;
        c->bytes_pinned = pinned;
        c->bytes_busy = busy;
        c->n_blobs = n - evicted - gone;
        c->over_cap = max > 0 && total > max;
        pthread_mutex_unlock(&c->lock);
        __atomic_store_n(&c->bytes_used, total, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&c->gc_lock);
        return (int) evicted;
}

/* ---- pins and open layers ---- */

int cache_pin(Cache *c, const uint8_t digest[SHA256_LEN]) {
        size_t i;
        int r = 0;
        pthread_mutex_lock(&c->lock);
        if (pin_find(c, digest, &i))
                c->pins[i].n++;
        else {
                if (c->n_pins == c->cap_pins) {
                        size_t ncap = c->cap_pins ? 2 * c->cap_pins : 16;
                        CachePin *p = reallocarray(c->pins, ncap, sizeof(*p));
                        if (p) {
                                c->pins = p;
                                c->cap_pins = ncap;
                        } else
                                r = -ENOMEM;
                }
                if (r >= 0) {
                        CachePin *p = &c->pins[c->n_pins++];
                        *p = (CachePin) { .n = 1 };
                        memcpy(p->digest, digest, SHA256_LEN);
                        cache_hex(digest, p->hex);
                }
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

void cache_unpin(Cache *c, const uint8_t digest[SHA256_LEN]) {
        size_t i;
        pthread_mutex_lock(&c->lock);
        if (pin_find(c, digest, &i) && --c->pins[i].n == 0)
                c->pins[i] = c->pins[--c->n_pins];
        pthread_mutex_unlock(&c->lock);
}

void cache_layer_register(Cache *c, CacheLayer *cl) {
        pthread_mutex_lock(&c->lock);
        cl->prev = NULL;
        cl->next = c->layers;
        if (c->layers)
                c->layers->prev = cl;
        c->layers = cl;
        pthread_mutex_unlock(&c->lock);
}

static void counters_add(CacheCounters *sum, const CacheCounters *x) {
        sum->hits += __atomic_load_n(&x->hits, __ATOMIC_RELAXED);
        sum->misses += __atomic_load_n(&x->misses, __ATOMIC_RELAXED);
        sum->hit_bytes += __atomic_load_n(&x->hit_bytes, __ATOMIC_RELAXED);
        sum->puts += __atomic_load_n(&x->puts, __ATOMIC_RELAXED);
        sum->put_bytes += __atomic_load_n(&x->put_bytes, __ATOMIC_RELAXED);
        sum->put_errors += __atomic_load_n(&x->put_errors, __ATOMIC_RELAXED);
        sum->reverified += __atomic_load_n(&x->reverified, __ATOMIC_RELAXED);
        sum->reverify_failed += __atomic_load_n(&x->reverify_failed, __ATOMIC_RELAXED);
        sum->sync_errors += __atomic_load_n(&x->sync_errors, __ATOMIC_RELAXED);
}

void cache_layer_unregister(Cache *c, CacheLayer *cl) {
        pthread_mutex_lock(&c->lock);
        if (cl->prev)
                cl->prev->next = cl->next;
        else
                c->layers = cl->next;
        if (cl->next)
                cl->next->prev = cl->prev;
        cl->prev = cl->next = NULL;
        counters_add(&c->closed, &cl->counters);
        pthread_mutex_unlock(&c->lock);
}

void cache_note_discard(Cache *c) {
        pthread_mutex_lock(&c->lock);
        c->discarded++;
        pthread_mutex_unlock(&c->lock);
}

/* ---- the background thread ---- */

static void fds_sync(Cache *c, FdList *l) {
        uint64_t errors = 0;
        for (size_t i = 0; i < l->n; i++) {
                if (fdatasync(l->fds[i]) < 0)
                        errors++;
                close(l->fds[i]);
        }
        free(l->fds);
        *l = (FdList) {};
        if (errors) {
                pthread_mutex_lock(&c->lock);
                c->sync_errors += errors;
                pthread_mutex_unlock(&c->lock);
        }
}

/* fdatasyncs what every open layer wrote since the last pass: the data
 * files first, then the chunk maps, so that a bit reaches the disk no
 * earlier than its data when nothing else writes them back. The syncs run
 * on dup()ed fds outside every lock. */
static void cache_sync_all(Cache *c) {
        FdList data = {}, maps = {};
        pthread_mutex_lock(&c->lock);
        for (CacheLayer *cl = c->layers; cl; cl = cl->next)
                if (cache_layer_collect_dirty(cl, &data, &maps) < 0)
                        break; /* out of memory: the rest waits for the next pass */
        pthread_mutex_unlock(&c->lock);
        fds_sync(c, &data);
        fds_sync(c, &maps);
}

void cache_gc_request(Cache *c) {
        if (__atomic_exchange_n(&c->gc_wanted, true, __ATOMIC_ACQ_REL) || !c->thread_started)
                return;
        pthread_mutex_lock(&c->bg_lock);
        pthread_cond_signal(&c->bg_cond);
        pthread_mutex_unlock(&c->bg_lock);
}

static struct timespec ns_to_timespec(uint64_t ns) {
        return (struct timespec) { .tv_sec = (time_t) (ns / 1000000000u), .tv_nsec = (long) (ns % 1000000000u) };
}

/* Wakes every sync interval to sync, and on a GC request to collect. A
 * GC that cannot get under the cap (everything left is pinned) is not run
 * again before the next interval, however many puts ask. */
static void *cache_thread(void *userdata) {
        Cache *c = userdata;
        uint64_t interval = (uint64_t) c->cfg.sync_interval_ms * 1000000u;
        uint64_t next_sync = mono_ns() + interval, gc_not_before = 0;
        pthread_mutex_lock(&c->bg_lock);
        for (;;) {
                for (;;) {
                        if (c->stop)
                                break;
                        uint64_t now = mono_ns();
                        bool want = __atomic_load_n(&c->gc_wanted, __ATOMIC_ACQUIRE);
                        if (now >= next_sync || (want && now >= gc_not_before))
                                break;
                        struct timespec deadline = ns_to_timespec(want ? MIN(next_sync, gc_not_before) : next_sync);
                        pthread_cond_timedwait(&c->bg_cond, &c->bg_lock, &deadline);
                }
                bool stop = c->stop;
                pthread_mutex_unlock(&c->bg_lock);

                uint64_t now = mono_ns();
                if (stop || now >= next_sync) {
                        cache_sync_all(c);
                        next_sync = mono_ns() + interval;
                }
                if (!stop && now >= gc_not_before && __atomic_exchange_n(&c->gc_wanted, false, __ATOMIC_ACQ_REL)) {
                        (void) cache_gc(c, NULL); /* a failed scan is retried at the next request */
                        pthread_mutex_lock(&c->lock);
                        bool stuck = c->over_cap;
                        pthread_mutex_unlock(&c->lock);
                        gc_not_before = stuck ? mono_ns() + interval : 0;
                }
                pthread_mutex_lock(&c->bg_lock);
                if (stop)
                        break;
        }
        pthread_mutex_unlock(&c->bg_lock);
        return NULL;
}

/* ---- the Cache ---- */

static int dir_open_at(int dfd, const char *name, int *ret) {
        if (mkdirat(dfd, name, 0700) < 0 && errno != EEXIST)
                return -errno;
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret = fd;
        return 0;
}

int cache_open(const char *root_dir, const CacheConfig *cfg, Cache **ret, ErrMsg *err) {
        static const CacheConfig defaults = {};
        if (!cfg)
                cfg = &defaults;
        Cache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->root_fd = c->trash_fd = -EBADF;
        c->cfg = *cfg;
        if (c->cfg.sync_interval_ms == 0)
                c->cfg.sync_interval_ms = DEFAULT_SYNC_INTERVAL_MS;
        if (c->cfg.max_open_files == 0)
                c->cfg.max_open_files = DEFAULT_MAX_OPEN_FILES;
        c->cfg.max_open_files = MIN(c->cfg.max_open_files, MAX_OPEN_FILES_CAP);
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->gc_lock, NULL);
        pthread_mutex_init(&c->bg_lock, NULL);
        cond_init_monotonic(&c->bg_cond);
        boot_id_read(c->boot_id);

        _cleanup_free_ BlobInfo *v = NULL;
        size_t n = 0;
        int r;
        _cleanup_close_ int root = open(root_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root < 0) {
                r = errmsg_set(err, -errno, "cannot open cache root %s: %s", root_dir, strerror(errno));
                goto fail;
        }
        r = dir_open_at(root, CACHE_DIR, &c->root_fd);
        if (r >= 0)
                r = dir_open_at(c->root_fd, CACHE_TRASH_DIR, &c->trash_fd);
        if (r < 0) {
                errmsg_set(err, r, "cannot create %s/" CACHE_DIR ": %s", root_dir, strerror(-r));
                goto fail;
        }
        (void) rm_children(c->trash_fd, RM_MAX_DEPTH); /* what a crash left; retried at every open */
        r = cache_scan(c, true, &v, &n, err);
        if (r < 0) {
                errmsg_prefix(err, r, "%s/" CACHE_DIR, root_dir);
                goto fail;
        }
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
                total += v[i].bytes;
        c->bytes_used = total;
        c->n_blobs = n;

        if (c->cfg.sync_interval_ms > 0) {
                r = -pthread_create(&c->thread, NULL, cache_thread, c);
                if (r < 0) {
                        errmsg_set(err, r, "cannot start the cache thread: %s", strerror(-r));
                        goto fail;
                }
                pthread_setname_np(c->thread, "hf-cache");
                c->thread_started = true;
        }
        *ret = c;
        return 0;
fail:
        cache_free(c);
        return r;
}

Cache *cache_free(Cache *c) {
        if (!c)
                return NULL;
        assert(!c->layers);
        if (c->thread_started) {
                pthread_mutex_lock(&c->bg_lock);
                c->stop = true;
                pthread_cond_signal(&c->bg_cond);
                pthread_mutex_unlock(&c->bg_lock);
                pthread_join(c->thread, NULL);
        }
        if (c->root_fd >= 0)
                close(c->root_fd);
        if (c->trash_fd >= 0)
                close(c->trash_fd);
        free(c->pins);
        pthread_cond_destroy(&c->bg_cond);
        pthread_mutex_destroy(&c->bg_lock);
        pthread_mutex_destroy(&c->gc_lock);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
}

void cache_stats(Cache *c, CacheStats *ret) {
        CacheCounters sum = {};
        uint64_t n_layers = 0;
        pthread_mutex_lock(&c->lock);
        counters_add(&sum, &c->closed);
        for (CacheLayer *cl = c->layers; cl; cl = cl->next) {
                counters_add(&sum, &cl->counters);
                n_layers++;
        }
        *ret = (CacheStats) {
                .bytes_used = __atomic_load_n(&c->bytes_used, __ATOMIC_RELAXED),
                .bytes_max = c->cfg.max_bytes,
                .bytes_pinned = c->bytes_pinned,
                .bytes_busy = c->bytes_busy,
                .n_blobs = c->n_blobs,
                .n_layers = n_layers,
                .hits = sum.hits,
                .misses = sum.misses,
                .hit_bytes = sum.hit_bytes,
                .puts = sum.puts,
                .put_bytes = sum.put_bytes,
                .put_errors = sum.put_errors,
                .reverified = sum.reverified,
                .reverify_failed = sum.reverify_failed,
                .evictions = c->evictions,
                .evicted_bytes = c->evicted_bytes,
                .discarded = c->discarded,
                .sync_errors = c->sync_errors + sum.sync_errors,
                .gc_runs = c->gc_runs,
                .over_cap = c->over_cap,
        };
        pthread_mutex_unlock(&c->lock);
}
