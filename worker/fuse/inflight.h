/* The in-flight table: which connections may hold requests that this
 * worker read from /dev/fuse and has not answered yet.
 *
 * A killed worker's unanswered requests stay on their connection's
 * processing list until the next worker writes FUSE_NOTIFY_RESEND on that
 * connection. With a thousand connections, resending all of them before
 * serving costs milliseconds while the one request a reader waits for
 * sits behind the others. The dead worker knew which connections had
 * requests in flight; this table keeps that knowledge in a memfd the
 * supervisor holds, so the next worker resends those first and serves at
 * once.
 *
 * Exact or conservative, never short: a slot's count is raised BEFORE a
 * read(2) or a RESEND on its connection and lowered only after the reply
 * was written (or the read found nothing, or the RESEND returned). A kill
 * at any instant leaves every connection that may have requests on its
 * processing list counted. Stores to a MAP_SHARED page are not lost when
 * a process dies; they are plain memory.
 *
 * The same memfd carries the connections' passthrough backing ids
 * (FUSE_DEV_IOC_BACKING_OPEN): a backing id belongs to the connection and
 * outlives the worker that registered it, and once an inode has files
 * open in passthrough mode the kernel refuses (EIO) an open that names
 * another backing id for it. So every worker must reuse its
 * predecessors' ids: it copies them from the previous worker's table at
 * takeover, and uses passthrough on a connection only while its map is
 * known to be complete (INFLIGHT_BACKING_COMPLETE: the connection's INIT
 * was answered by this worker, or its map was copied whole from a
 * predecessor whose map was complete).
 *
 * Layout (little-endian, this host only): a 64-byte header (magic,
 * version, slot count, an overflow flag, ...), then INFLIGHT_SLOTS slots
 * of {mount id, count, flags}, then INFLIGHT_BACKING_CAP backing entries
 * {mount id << 32 | inode, backing id} in an open-addressed hash table.
 * The file is sparse: untouched slots and entries cost nothing.
 *
 * Threads: claim and release take the table's lock (a session claims a
 * slot when it is added and releases it when its last reference goes);
 * enter/leave are atomic and run on any serving thread. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define INFLIGHT_SLOTS 65536u
#define INFLIGHT_NONE UINT32_MAX
#define INFLIGHT_BACKING_CAP 65536u   /* a power of two */

enum {
        INFLIGHT_BACKING_COMPLETE = 1 << 0, /* every backing id of the connection is in the table */
};

typedef struct InflightSlot {
        uint64_t mount_id;       /* 0: free */
        uint32_t busy;           /* atomic: reads/RESENDs not finished */
        uint32_t flags;          /* atomic: INFLIGHT_BACKING_* */
} InflightSlot;

typedef struct InflightBacking {
        uint64_t key;            /* atomic: mount id << 32 | inode; 0: free */
        uint32_t id;             /* the backing id, written before key */
        uint32_t _pad;
} InflightBacking;

typedef struct InflightHeader {
        char magic[8];           /* "hfinflt\0" */
        uint32_t version;        /* 1 */
        uint32_t n_slots;
        uint32_t overflow;       /* atomic: a connection got no slot */
        uint32_t hiwater;        /* atomic: slots below it were ever claimed */
        uint32_t backing_cap;
        uint32_t backing_count;  /* atomic: entries in use */
        uint8_t _pad[32];
} InflightHeader;

typedef struct InflightTable {
        int fd;                  /* owned; memfd, O_CLOEXEC */
        InflightHeader *hdr;     /* owned mapping: header + slots */
        InflightSlot *slots;
        InflightBacking *backing;
        pthread_mutex_t lock;    /* slot claims and backing inserts */
        uint32_t hint;           /* every slot below it is taken; protected by lock */
} InflightTable;

/* Creates an empty table in a new memfd. */
int inflight_table_new(InflightTable **ret);
InflightTable *inflight_table_free(InflightTable *t);

/* A slot for mount id, or INFLIGHT_NONE when the table is full (the
 * overflow flag is then set, and the next worker resends every
 * connection). */
uint32_t inflight_slot_claim(InflightTable *t, uint64_t mount_id);
void inflight_slot_release(InflightTable *t, uint32_t slot);

static inline void inflight_enter(InflightTable *t, uint32_t slot) {
        if (t && slot != INFLIGHT_NONE)
                __atomic_add_fetch(&t->slots[slot].busy, 1, __ATOMIC_SEQ_CST);
}

static inline void inflight_leave(InflightTable *t, uint32_t slot) {
        if (t && slot != INFLIGHT_NONE)
                __atomic_sub_fetch(&t->slots[slot].busy, 1, __ATOMIC_RELEASE);
}

/* Recorded instead of a backing id for an inode opened without
 * passthrough (its file was not whole in the cache then): the kernel
 * fails with EIO an open whose I/O mode (passthrough or cached) differs
 * from that of the inode's opens still open, so an inode opened one way
 * on a connection is opened that way for as long as the connection
 * lives, by every worker. Kernel backing ids are small. */
#define INFLIGHT_BACKING_CACHED UINT32_MAX

/* The backing id recorded for (mount_id, ino) (or
 * INFLIGHT_BACKING_CACHED): 0 with *ret_id, or -ENOENT. Lock-free. */
int inflight_backing_get(InflightTable *t, uint64_t mount_id, uint32_t ino, uint32_t *ret_id);
/* Returns the id recorded for (mount_id, ino) (maybe
 * INFLIGHT_BACKING_CACHED), or registers one with register_fn(userdata)
 * (which returns the new id or -errno) and records it, under the table's
 * lock so that two threads never register two.
 * -ENOSPC when the table is full (then: no passthrough). */
int inflight_backing_get_or_register(InflightTable *t, uint64_t mount_id, uint32_t ino,
                                     int (*register_fn)(void *userdata), void *userdata, uint32_t *ret_id);
/* Records INFLIGHT_BACKING_CACHED for (mount_id, ino) unless something
 * is recorded already: 0 with *ret_id, what is recorded now (a backing
 * id another thread registered first, or the mark), or -ENOSPC, -ERANGE. */
int inflight_backing_mark_cached(InflightTable *t, uint64_t mount_id, uint32_t ino, uint32_t *ret_id);
static inline bool inflight_backing_complete(InflightTable *t, uint32_t slot) {
        return t && slot != INFLIGHT_NONE &&
               (__atomic_load_n(&t->slots[slot].flags, __ATOMIC_ACQUIRE) & INFLIGHT_BACKING_COMPLETE);
}
void inflight_backing_set_complete(InflightTable *t, uint32_t slot);
/* Copies from a previous worker's table (fd, borrowed) the backing ids
 * of every connection of ours whose map was complete there, and marks
 * them complete here. Returns how many connections, or -EBADMSG (not a
 * table of this version), -errno. */
int inflight_backing_inherit(InflightTable *t, int prev_fd);

/* Reads a previous worker's table from fd (borrowed): the mount ids whose
 * count is not zero, in *ret_ids (owned by the caller). Returns how many,
 * or -EBADMSG for a file that is not a table of this version (size,
 * magic), -EOVERFLOW when the table overflowed (then nothing can be
 * told: resend everything), -errno. */
int inflight_table_read_busy(int fd, uint64_t **ret_ids);
