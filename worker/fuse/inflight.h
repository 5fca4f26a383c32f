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
 * Layout (little-endian, this host only): a 64-byte header (magic,
 * version, slot count, an overflow flag), then INFLIGHT_SLOTS slots of
 * {mount id, count}. The file is sparse: untouched slots cost nothing.
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

typedef struct InflightSlot {
        uint64_t mount_id;       /* 0: free */
        uint32_t busy;           /* atomic: reads/RESENDs not finished */
        uint32_t _pad;
} InflightSlot;

typedef struct InflightHeader {
        char magic[8];           /* "hfinflt\0" */
        uint32_t version;        /* 1 */
        uint32_t n_slots;
        uint32_t overflow;       /* atomic: a connection got no slot */
        uint32_t hiwater;        /* atomic: slots below it were ever claimed */
        uint8_t _pad[40];
} InflightHeader;

typedef struct InflightTable {
        int fd;                  /* owned; memfd, O_CLOEXEC */
        InflightHeader *hdr;     /* owned mapping: header + slots */
        InflightSlot *slots;
        pthread_mutex_t lock;
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

/* Reads a previous worker's table from fd (borrowed): the mount ids whose
 * count is not zero, in *ret_ids (owned by the caller). Returns how many,
 * or -EBADMSG for a file that is not a table of this version (size,
 * magic), -EOVERFLOW when the table overflowed (then nothing can be
 * told: resend everything), -errno. */
int inflight_table_read_busy(int fd, uint64_t **ret_ids);
