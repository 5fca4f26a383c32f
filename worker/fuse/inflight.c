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
#define INFLIGHT_VERSION 1u
#define INFLIGHT_SIZE (sizeof(InflightHeader) + (size_t) INFLIGHT_SLOTS * sizeof(InflightSlot))

_Static_assert(sizeof(InflightHeader) == 64, "header is 64 bytes");
_Static_assert(sizeof(InflightSlot) == 16, "slot is 16 bytes");

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
        t->slots = (InflightSlot *) (t->hdr + 1);
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

int inflight_table_read_busy(int fd, uint64_t **ret_ids) {
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != INFLIGHT_SIZE)
                return -EBADMSG;
        const void *map = mmap(NULL, INFLIGHT_SIZE, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
                return -errno;
        const InflightHeader *hdr = map;
        const InflightSlot *slots = (const InflightSlot *) (hdr + 1);
        int r;
        uint64_t *ids = NULL;
        size_t n = 0, cap = 0;
        if (memcmp(hdr->magic, inflight_magic, sizeof(inflight_magic)) != 0 || hdr->version != INFLIGHT_VERSION ||
            hdr->n_slots != INFLIGHT_SLOTS) {
                r = -EBADMSG;
                goto out;
        }
        if (__atomic_load_n(&hdr->overflow, __ATOMIC_ACQUIRE)) {
                r = -EOVERFLOW;
                goto out;
        }
        /* only the slots ever claimed: the rest are holes, and reading
         * them would fault in pages for nothing */
        uint32_t end = MIN(__atomic_load_n(&hdr->hiwater, __ATOMIC_ACQUIRE), INFLIGHT_SLOTS);
        for (uint32_t i = 0; i < end; i++) {
                uint64_t id = __atomic_load_n(&slots[i].mount_id, __ATOMIC_ACQUIRE);
                if (id == 0 || __atomic_load_n(&slots[i].busy, __ATOMIC_ACQUIRE) == 0)
                        continue;
                if (n == cap) {
                        cap = cap ? cap * 2 : 16;
                        uint64_t *p = realloc(ids, cap * sizeof(*p));
                        if (!p) {
                                r = -ENOMEM;
                                goto out;
                        }
                        ids = p;
                }
                ids[n++] = id;
        }
        *ret_ids = TAKE_PTR(ids);
        r = (int) n;
out:
        free(ids);
        munmap((void *) map, INFLIGHT_SIZE);
        return r;
}
