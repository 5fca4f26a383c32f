/* The state memfd (state.h): a byte format with a magic, a version and
 * little-endian fixed fields (both ends are this host), then per mount its
 * fd number and a length-prefixed nanopb MountRecord. Owns nothing beyond
 * the call. The reader trusts nothing: every length is bounded, every fd
 * number is checked by the caller before use. */
#include "supervisor/supervisor.h"
#include "supervisor/state.h"

#include <errno.h>
#include <fcntl.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "holdfast.pb.h"

typedef struct Buf {
        uint8_t *data;
        size_t size, alloc;
} Buf;

static int buf_put(Buf *b, const void *p, size_t n) {
        if (b->size + n > b->alloc) {
                size_t a = MAX(b->alloc * 2, b->size + n + 4096);
                uint8_t *d = realloc(b->data, a);
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->alloc = a;
        }
        memcpy(b->data + b->size, p, n);
        b->size += n;
        return 0;
}
#define PUT(b, v)                                                \
        do {                                                     \
                __typeof__(v) _v = (v);                          \
                if (buf_put(b, &_v, sizeof(_v)) < 0)             \
                        return -ENOMEM;                          \
        } while (0)

static int encode(Supervisor *s, const StateExtra *x, Buf *b) {
        if (buf_put(b, STATE_MAGIC, sizeof(STATE_MAGIC) - 1) < 0)
                return -ENOMEM;
        PUT(b, (uint32_t) STATE_VERSION);
        PUT(b, s->generation);
        PUT(b, s->restarts);
        PUT(b, s->start_ms);
        PUT(b, s->mounts.next_id);
        PUT(b, s->last_stall_us);
        PUT(b, (uint32_t) s->gave_up);
        PUT(b, (int32_t) x->listen_fd);
        PUT(b, (int32_t) x->reply_fd);
        PUT(b, (int32_t) x->worker_pidfd);
        PUT(b, (int32_t) x->worker_sock);
        PUT(b, (int32_t) x->worker_pid);
        PUT(b, x->worker_generation);
        PUT(b, x->worker_serving_ms);
        PUT(b, (int32_t) x->worker_inflight_fd);
        PUT(b, (uint32_t) s->mounts.count);
        holdfast_MountRecord *mr = malloc(sizeof(*mr));
        uint8_t *pb = malloc(holdfast_MountRecord_size);
        int r = mr && pb ? 0 : -ENOMEM;
        for (Mount *m = s->mounts.head; m && r == 0; m = m->next) {
                *mr = (holdfast_MountRecord) holdfast_MountRecord_init_zero;
                mr->id = m->id;
                snprintf(mr->mountpoint, sizeof(mr->mountpoint), "%s", m->mountpoint);
                snprintf(mr->source, sizeof(mr->source), "%s", m->source);
                mr->initialized = m->initialized;
                memcpy(mr->init.bytes, m->init, m->init_size);
                mr->init.size = (pb_size_t) m->init_size;
                pb_ostream_t os = pb_ostream_from_buffer(pb, holdfast_MountRecord_size);
                if (!pb_encode(&os, holdfast_MountRecord_fields, mr)) {
                        r = -EMSGSIZE;
                        break;
                }
                int32_t fd = x->with_fds ? m->fd : -1;
                uint32_t len = (uint32_t) os.bytes_written;
                if (buf_put(b, &fd, sizeof(fd)) < 0 || buf_put(b, &len, sizeof(len)) < 0 ||
                    buf_put(b, pb, len) < 0)
                        r = -ENOMEM;
        }
        free(mr);
        free(pb);
        return r;
}

int state_save(Supervisor *s, const StateExtra *x, int *ret_memfd) {
        Buf b = {};
        int r = encode(s, x, &b);
        if (r < 0) {
                free(b.data);
                return r;
        }
        _cleanup_close_ int fd = memfd_create("holdfast-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) {
                free(b.data);
                return -errno;
        }
        size_t off = 0;
        while (off < b.size) {
                ssize_t n = write(fd, b.data + off, b.size - off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        free(b.data);
                        return n < 0 ? -errno : -EIO;
                }
                off += (size_t) n;
        }
        free(b.data);
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return -errno;
        *ret_memfd = TAKE_FD(fd);
        return 0;
}

typedef struct Cursor {
        const uint8_t *p;
        size_t left;
} Cursor;

static bool get(Cursor *c, void *out, size_t n) {
        if (c->left < n)
                return false;
        memcpy(out, c->p, n);
        c->p += n;
        c->left -= n;
        return true;
}
#define GET(c, v) get(c, &(v), sizeof(v))

int state_load(Supervisor *s, int fd, StateExtra *x, ErrMsg *err) {
        struct stat st;
        if (fstat(fd, &st) < 0)
                return errmsg_set(err, -errno, "state fd: %s", strerror(errno));
        if (st.st_size <= 0 || st.st_size > 512 * 1024 * 1024)
                return errmsg_set(err, -EBADMSG, "state fd has a bad size");
        void *map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
                return errmsg_set(err, -errno, "mmap state: %s", strerror(errno));
        Cursor c = { map, (size_t) st.st_size };
        char magic[sizeof(STATE_MAGIC) - 1];
        uint32_t version = 0, gave_up = 0, n = 0;
        int32_t listen_fd, reply_fd, pidfd, sock, pid, inflight = -1;
        int r = 0;
        if (!get(&c, magic, sizeof(magic)) || memcmp(magic, STATE_MAGIC, sizeof(magic)) != 0 ||
            !GET(&c, version)) {
                r = errmsg_set(err, -EBADMSG, "not a holdfast state file");
                goto out;
        }
        if (version != STATE_VERSION && version != 1) {
                r = errmsg_set(err, -EPROTO, "state version %u, this binary reads %u", version, STATE_VERSION);
                goto out;
        }
        if (!GET(&c, s->generation) || !GET(&c, s->restarts) || !GET(&c, s->start_ms) ||
            !GET(&c, s->mounts.next_id) || !GET(&c, s->last_stall_us) || !GET(&c, gave_up) ||
            !GET(&c, listen_fd) || !GET(&c, reply_fd) || !GET(&c, pidfd) || !GET(&c, sock) || !GET(&c, pid) ||
            !GET(&c, x->worker_generation) || !GET(&c, x->worker_serving_ms) ||
            (version >= 2 && !GET(&c, inflight)) || !GET(&c, n)) {
                r = errmsg_set(err, -EBADMSG, "state file truncated");
                goto out;
        }
        s->gave_up = gave_up != 0;
        x->listen_fd = listen_fd;
        x->reply_fd = reply_fd;
        x->worker_pidfd = pidfd;
        x->worker_sock = sock;
        x->worker_inflight_fd = inflight;
        x->worker_pid = pid;
        holdfast_MountRecord *mr = malloc(sizeof(*mr));
        if (!mr) {
                r = errmsg_set(err, -ENOMEM, "out of memory");
                goto out;
        }
        for (uint32_t i = 0; i < n && r == 0; i++) {
                int32_t mfd;
                uint32_t len;
                if (!GET(&c, mfd) || !GET(&c, len) || len > c.left) {
                        r = errmsg_set(err, -EBADMSG, "state file truncated in mount %u", i);
                        break;
                }
                *mr = (holdfast_MountRecord) holdfast_MountRecord_init_zero;
                pb_istream_t is = pb_istream_from_buffer(c.p, len);
                c.p += len;
                c.left -= len;
                if (!pb_decode(&is, holdfast_MountRecord_fields, mr) || mr->id == 0 ||
                    mr->id >= s->mounts.next_id || mr->mountpoint[0] != '/') {
                        r = errmsg_set(err, -EBADMSG, "state file: bad mount record %u", i);
                        break;
                }
                Mount *m;
                /* The table takes the fd; -1 when it comes from elsewhere. */
                r = mount_table_add(&s->mounts, mr->mountpoint, mr->source, mfd >= 0 ? mfd : -EBADF, &m);
                if (r < 0) {
                        errmsg_set(err, r, "state file: mount %u: %s", i, strerror(-r));
                        break;
                }
                /* mount_table_add numbers records; keep the saved id. */
                s->mounts.next_id--;
                m->id = mr->id;
                m->initialized = mr->initialized;
                memcpy(m->init, mr->init.bytes, mr->init.size);
                m->init_size = mr->init.size;
                m->sent_gen = x->worker_generation;
                m->served = pidfd >= 0;
        }
        free(mr);
out:
        munmap(map, (size_t) st.st_size);
        return r;
}
