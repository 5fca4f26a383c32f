/* The in-flight table (inflight.h): a sealed-size memfd mapped shared.
 * Owns the memfd and its mapping. Claim/release under the table's lock;
 * enter/leave on serving threads; reading a previous worker's table on the
 * main thread at WorkerGo. Never logs. */
#include "worker/fuse/inflight.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"

static const char inflight_magic[8] = "hfinflt";
#define INFLIGHT_VERSION 2u
#define SLOTS_END (sizeof(InflightHeader) + (size_t) INFLIGHT_SLOTS * sizeof(InflightSlot))
#define INFLIGHT_SIZE (SLOTS_END + (size_t) INFLIGHT_BACKING_CAP * sizeof(InflightBacking))

_Static_assert(sizeof(InflightHeader) == 64, "header is 64 bytes");
_Static_assert(sizeof(InflightSlot) == 16, "slot is 16 bytes");
_Static_assert(sizeof(InflightBacking) == 16, "backing entry is 16 bytes");

int inflight_table_new(InflightTable **ret) {
        _cleanup_close_ int fd = memfd_create("holdfast-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) INFLIGHT_SIZE) < 0)
                return -errno;
        /* The size never changes: a reader can trust its mapping. */
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
                return -errno;
        void *map = mmap(NULL, INFLIGHT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
                return -errno;
        InflightTable *t = calloc(1, sizeof(*t));
        if (!t) {
                munmap(map, INFLIGHT_SIZE);
                return -ENOMEM;
        }
        t->hdr = map;
        pthread_mutex_init(&t->lock, NULL);
        memcpy(t->hdr->magic, inflight_magic, sizeof(inflight_magic));
        t->hdr->version = INFLIGHT_VERSION;
        t->hdr->n_slots = INFLIGHT_SLOTS;
        t->hdr->backing_cap = INFLIGHT_BACKING_CAP;
        t->slots = (InflightSlot *) (t->hdr + 1);
        t->backing = (InflightBacking *) ((uint8_t *) map + SLOTS_END);
        t->fd = TAKE_FD(fd);
        *ret = t;
        return 0;
}

InflightTable *inflight_table_free(InflightTable *t) {
        if (!t)
                return NULL;
        if (t->hdr)
                munmap(t->hdr, INFLIGHT_SIZE);
        if (t->fd >= 0)
                close(t->fd);
        pthread_mutex_destroy(&t->lock);
        free(t);
        return NULL;
}

uint32_t inflight_slot_claim(InflightTable *t, uint64_t mount_id) {
        pthread_mutex_lock(&t->lock);
        /* The lowest free slot: every slot below the hint is taken, so a
         * table of N connections stays within its first N slots and a
         * reader scans no more than that. */
        for (uint32_t i = t->hint; i < INFLIGHT_SLOTS; i++) {
                InflightSlot *s = &t->slots[i];
                if (__atomic_load_n(&s->mount_id, __ATOMIC_RELAXED) != 0)
                        continue;
                __atomic_store_n(&s->busy, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&s->flags, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&s->mount_id, mount_id, __ATOMIC_RELEASE);
                if (i >= t->hdr->hiwater)
                        __atomic_store_n(&t->hdr->hiwater, i + 1, __ATOMIC_RELEASE);
                t->hint = i + 1;
                pthread_mutex_unlock(&t->lock);
                return i;
        }
        __atomic_store_n(&t->hdr->overflow, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&t->lock);
        return INFLIGHT_NONE;
}

void inflight_slot_release(InflightTable *t, uint32_t slot) {
        if (slot == INFLIGHT_NONE)
                return;
        /* The session is gone, and with it every thread that could read
         * or answer on its connection: nothing to resend. */
        pthread_mutex_lock(&t->lock);
        __atomic_store_n(&t->slots[slot].mount_id, 0, __ATOMIC_RELEASE);
        if (slot < t->hint)
                t->hint = slot;
        pthread_mutex_unlock(&t->lock);
}

/* Reads len bytes at off of fd, or -EBADMSG when the file is shorter. */
static int read_at(int fd, void *buf, size_t len, off_t off) {
        for (size_t done = 0; done < len;) {
                ssize_t n = pread(fd, (uint8_t *) buf + done, len - done, off + (off_t) done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EBADMSG;
                done += (size_t) n;
        }
        return 0;
}

int inflight_table_read_busy(int fd, uint64_t **ret_ids) {
        /* Read, not mapped: this runs while readers wait for the takeover,
         * and unmapping costs a TLB shootdown on every CPU our threads ran
         * on. The writer is dead (WorkerGo comes after its exit): plain
         * copies see its last stores. */
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != INFLIGHT_SIZE)
                return -EBADMSG;
        InflightHeader hdr;
        int r = read_at(fd, &hdr, sizeof(hdr), 0);
        if (r < 0)
                return r;
        if (memcmp(hdr.magic, inflight_magic, sizeof(inflight_magic)) != 0 || hdr.version != INFLIGHT_VERSION ||
            hdr.n_slots != INFLIGHT_SLOTS)
                return -EBADMSG;
        if (hdr.overflow)
                return -EOVERFLOW;
        /* only the slots ever claimed: the rest are holes */
        uint32_t end = MIN(hdr.hiwater, INFLIGHT_SLOTS);
        _cleanup_free_ InflightSlot *slots = malloc(MAX(end, 1u) * sizeof(InflightSlot));
        _cleanup_free_ uint64_t *ids = malloc(MAX(end, 1u) * sizeof(uint64_t));
        if (!slots || !ids)
                return -ENOMEM;
        r = read_at(fd, slots, (size_t) end * sizeof(InflightSlot), (off_t) sizeof(InflightHeader));
        if (r < 0)
                return r;
        size_t n = 0;
        for (uint32_t i = 0; i < end; i++)
                if (slots[i].mount_id != 0 && slots[i].busy != 0)
                        ids[n++] = slots[i].mount_id;
        *ret_ids = TAKE_PTR(ids);
        return (int) n;
}

/* ---- backing ids ---- */

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static uint64_t backing_key(uint64_t mount_id, uint32_t ino) {
        return mount_id << 32 | ino;
}

static uint32_t backing_hash(uint64_t key) {
        key ^= key >> 33;
        key *= 0xff51afd7ed558ccdull;
        key ^= key >> 33;
        return (uint32_t) key & (INFLIGHT_BACKING_CAP - 1);
}

/* The entry of key, or the free one where it would go; NULL when full. */
static InflightBacking *backing_find(InflightBacking *tab, uint64_t key) {
        uint32_t h = backing_hash(key);
        for (uint32_t n = 0; n < INFLIGHT_BACKING_CAP; n++) {
                InflightBacking *e = &tab[(h + n) & (INFLIGHT_BACKING_CAP - 1)];
                uint64_t k = __atomic_load_n(&e->key, __ATOMIC_ACQUIRE);
                if (k == key || k == 0)
                        return e;
        }
        return NULL;
}

int inflight_backing_get(InflightTable *t, uint64_t mount_id, uint32_t ino, uint32_t *ret_id) {
        if (mount_id == 0 || mount_id > UINT32_MAX)
                return -ENOENT;
        uint64_t key = backing_key(mount_id, ino);
        InflightBacking *e = backing_find(t->backing, key);
        if (!e || __atomic_load_n(&e->key, __ATOMIC_ACQUIRE) != key)
                return -ENOENT;
        *ret_id = e->id;
        return 0;
}

/* Under t->lock. */
static int backing_put_locked(InflightTable *t, uint64_t key, uint32_t id) {
        InflightBacking *e = backing_find(t->backing, key);
        if (!e)
                return -ENOSPC;
        bool fresh = __atomic_load_n(&e->key, __ATOMIC_RELAXED) == 0;
        e->id = id;
        __atomic_store_n(&e->key, key, __ATOMIC_RELEASE);
        if (fresh)
                __atomic_add_fetch(&t->hdr->backing_count, 1, __ATOMIC_RELEASE);
        return 0;
}

int inflight_backing_get_or_register(InflightTable *t, uint64_t mount_id, uint32_t ino,
                                     int (*register_fn)(void *userdata), void *userdata, uint32_t *ret_id) {
        if (inflight_backing_get(t, mount_id, ino, ret_id) == 0)
                return 0;
        if (mount_id == 0 || mount_id > UINT32_MAX)
                return -ERANGE;
        uint64_t key = backing_key(mount_id, ino);
        pthread_mutex_lock(&t->lock);
        int r = inflight_backing_get(t, mount_id, ino, ret_id);
        if (r < 0) {
                InflightBacking *e = backing_find(t->backing, key);
                /* keep a quarter free: probes stay short */
                r = e ? register_fn(userdata) : -ENOSPC;
                if (r >= 0) {
                        /* Recorded before any open names it: a successor
                         * that never saw this id never meets an inode
                         * that uses it. A kill between the ioctl and this
                         * store only leaks the id until the unmount. */
                        uint32_t id = (uint32_t) r;
                        r = backing_put_locked(t, key, id);
                        if (r >= 0)
                                *ret_id = id;
                }
        }
        pthread_mutex_unlock(&t->lock);
        return r;
}

int inflight_backing_mark_cached(InflightTable *t, uint64_t mount_id, uint32_t ino, uint32_t *ret_id) {
        if (inflight_backing_get(t, mount_id, ino, ret_id) == 0)
                return 0;
        if (mount_id == 0 || mount_id > UINT32_MAX)
                return -ERANGE;
        pthread_mutex_lock(&t->lock);
        int r = inflight_backing_get(t, mount_id, ino, ret_id);
        if (r < 0) {
                r = backing_put_locked(t, backing_key(mount_id, ino), INFLIGHT_BACKING_CACHED);
                if (r >= 0)
                        *ret_id = INFLIGHT_BACKING_CACHED;
        }
        pthread_mutex_unlock(&t->lock);
        return r;
}

void inflight_backing_set_complete(InflightTable *t, uint32_t slot) {
        if (t && slot != INFLIGHT_NONE)
                __atomic_or_fetch(&t->slots[slot].flags, INFLIGHT_BACKING_COMPLETE, __ATOMIC_RELEASE);
}

int inflight_backing_inherit(InflightTable *t, int prev_fd) {
        struct stat st;
        if (fstat(prev_fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != INFLIGHT_SIZE)
                return -EBADMSG;
        const uint8_t *map = mmap(NULL, INFLIGHT_SIZE, PROT_READ, MAP_SHARED, prev_fd, 0);
        if (map == MAP_FAILED)
                return -errno;
        const InflightHeader *hdr = (const InflightHeader *) map;
        const InflightSlot *old = (const InflightSlot *) (hdr + 1);
        const InflightBacking *tab = (const InflightBacking *) (map + SLOTS_END);
        int r = 0;
        if (memcmp(hdr->magic, inflight_magic, sizeof(inflight_magic)) != 0 || hdr->version != INFLIGHT_VERSION ||
            hdr->n_slots != INFLIGHT_SLOTS || hdr->backing_cap != INFLIGHT_BACKING_CAP) {
                r = -EBADMSG;
                goto out;
        }
        /* Our slots whose mount was complete in the old table. This runs
         * while the threads serve, on the same CPUs: keep it O(n log n). */
        uint32_t end = MIN(__atomic_load_n(&hdr->hiwater, __ATOMIC_ACQUIRE), INFLIGHT_SLOTS);
        uint32_t mine_end = MIN(__atomic_load_n(&t->hdr->hiwater, __ATOMIC_ACQUIRE), INFLIGHT_SLOTS);
        bool any = __atomic_load_n(&hdr->backing_count, __ATOMIC_ACQUIRE) > 0;
        uint64_t *complete = malloc(MAX(end, 1u) * sizeof(uint64_t));
        bool *take = calloc(MAX(mine_end, 1u), sizeof(bool));
        if (!take || !complete) {
                free(complete);
                free(take);
                r = -ENOMEM;
                goto out;
        }
        size_t n_complete = 0;
        for (uint32_t i = 0; i < end; i++) {
                uint64_t id = __atomic_load_n(&old[i].mount_id, __ATOMIC_ACQUIRE);
                if (id && (__atomic_load_n(&old[i].flags, __ATOMIC_ACQUIRE) & INFLIGHT_BACKING_COMPLETE))
                        complete[n_complete++] = id;
        }
        qsort(complete, n_complete, sizeof(uint64_t), cmp_u64);
        /* complete[] becomes the sorted ids we take */
        size_t n_taken = 0;
        for (uint32_t j = 0; j < mine_end; j++) {
                uint64_t id = __atomic_load_n(&t->slots[j].mount_id, __ATOMIC_ACQUIRE);
                take[j] = id && bsearch(&id, complete, n_complete, sizeof(uint64_t), cmp_u64);
        }
        for (uint32_t j = 0; j < mine_end; j++)
                if (take[j])
                        complete[n_taken++] = t->slots[j].mount_id;
        qsort(complete, n_taken, sizeof(uint64_t), cmp_u64);
        pthread_mutex_lock(&t->lock);
        for (uint32_t i = 0; any && i < INFLIGHT_BACKING_CAP && r >= 0; i++) {
                uint64_t key = __atomic_load_n(&tab[i].key, __ATOMIC_ACQUIRE);
                if (key == 0)
                        continue;
                uint64_t mount_id = key >> 32;
                if (bsearch(&mount_id, complete, n_taken, sizeof(uint64_t), cmp_u64))
                        r = backing_put_locked(t, key, tab[i].id);
        }
        pthread_mutex_unlock(&t->lock);
        for (uint32_t j = 0; r >= 0 && j < mine_end; j++)
                if (take[j]) {
                        inflight_backing_set_complete(t, j);
                        r++;
                }
        free(complete);
        free(take);
out:
        munmap((void *) map, INFLIGHT_SIZE);
        return r;
}
