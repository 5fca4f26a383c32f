/* Regular files: OPEN, READ, RELEASE (also RELEASEDIR). Reads go through
 * layer_read() with the thread's ChunkDecoder into the thread's reply
 * buffer; every chunk is verified before a byte of it is returned, and a
 * read that cannot be verified fails whole with EIO: wrong bytes are
 * never answered. Serving threads. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/fuse/ops.h"
#include "worker/util/log.h"

typedef struct Backing {
        FuseSession *s;
        int fd;
} Backing;

static int backing_register(void *userdata) {
        Backing *b = userdata;
        struct holdfast_fuse_backing_map map = { .fd = b->fd };
        int id = ioctl(b->s->fd, FUSE_DEV_IOC_BACKING_OPEN, &map);
        return id < 0 ? -errno : id;
}

/* FUSE passthrough for r's inode when the connection negotiated it, the
 * file is whole in a local file (the chunk cache), and every backing id
 * of the connection is known (inflight.h: never two ids for one inode).
 * An inode opened once without passthrough on a connection never gets
 * it there (INFLIGHT_BACKING_CACHED): the kernel refuses with EIO an open
 * whose I/O mode differs from that of the inode's other opens. */
static int passthrough_backing(FuseReq *r, uint32_t *ret_id) {
        FuseSession *s = r->session;
        const FuseLayerOps *ops = s->ops;
        if (!(s->params.flags & FUSE_PASSTHROUGH) || !ops || !ops->file_fd || !s->layer_handle ||
            !inflight_backing_complete(s->inflight, s->slot))
                return -EOPNOTSUPP;
        uint64_t ino = r->hdr->nodeid;
        if (inflight_backing_get(s->inflight, s->id, (uint32_t) ino, ret_id) == 0)
                return *ret_id == INFLIGHT_BACKING_CACHED ? -EOPNOTSUPP : 0;
        Backing b = { .s = s, .fd = -EBADF };
        int ret = ops->file_fd(ops->userdata, s->layer_handle, ino, &b.fd);
        if (ret < 0) {
                /* opened cached from now on, unless a thread registered
                 * an id meanwhile (then its file is whole: use it) */
                if (inflight_backing_mark_cached(s->inflight, s->id, (uint32_t) ino, ret_id) == 0 &&
                    *ret_id != INFLIGHT_BACKING_CACHED)
                        return 0;
                return ret;
        }
        ret = inflight_backing_get_or_register(s->inflight, s->id, (uint32_t) ino, backing_register, &b, ret_id);
        /* the kernel holds the file now (or we do not use it) */
        close(b.fd);
        if (ret >= 0 && *ret_id == INFLIGHT_BACKING_CACHED)
                return -EOPNOTSUPP;
        if (ret < 0 && ret != -ENOSPC)
                log_warn_ratelimited(ret, "mount %" PRIu64 ": no passthrough for inode %" PRIu64 ": %m", s->id, ino);
        return ret;
}

int op_open(FuseReq *r) {
        const struct fuse_open_in *in = r->arg;
        if ((in->flags & O_ACCMODE) != O_RDONLY || (in->flags & O_TRUNC))
                return -EROFS;
        if (S_ISDIR(r->inode->mode))
                return -EISDIR;
        if (!S_ISREG(r->inode->mode))
                return -EINVAL;
        /* The layer never changes: let the kernel keep its page cache
         * across opens. fh is unused: every read names its inode. */
        struct fuse_open_out out = { .open_flags = FOPEN_KEEP_CACHE };
        uint32_t backing;
        if (passthrough_backing(r, &backing) >= 0) {
                /* Reads go to the cached file, never through us; its own
                 * page cache serves them. The kernel refuses any flag but
                 * DIRECT_IO, PARALLEL_DIRECT_WRITES and NOFLUSH beside
                 * PASSTHROUGH (EIO at open), KEEP_CACHE included. */
                out.open_flags = FOPEN_PASSTHROUGH;
                out.padding = backing; /* backing_id in 7.40 headers */
        }
        return fuse_reply(r, &out, sizeof(out));
}

int op_read(FuseReq *r) {
        const struct fuse_read_in *in = r->arg;
        if (!S_ISREG(r->inode->mode))
                return S_ISDIR(r->inode->mode) ? -EISDIR : -EINVAL;
        size_t size = MIN((size_t) in->size, FUSE_MAX_READ_SIZE);
        ErrMsg err = {};
        const FuseLayerOps *ops = r->session->ops;
        ssize_t n = ops && ops->read ? ops->read(ops->userdata, r->session->layer_handle, r->thread->decoder,
                                                 r->hdr->nodeid, in->offset, size, r->thread->out, &err)
                                     : layer_read(r->layer, r->thread->decoder, r->hdr->nodeid, in->offset, size,
                                                  r->thread->out, &err);
        if (n < 0) {
                log_warn_ratelimited((int) n, "mount %" PRIu64 ": read of inode %" PRIu64 " at %" PRIu64 "+%zu failed: %s",
                                     r->session->id, (uint64_t) r->hdr->nodeid, (uint64_t) in->offset, size,
                                     err.text[0] ? err.text : "(no detail)");
                /* -EBADMSG (corrupt or unverifiable bytes), -EIO (blob
                 * unreadable) and anything unexpected: the application
                 * gets EIO, never the bytes. */
                return n == -ENOMEM ? -ENOMEM : -EIO;
        }
        return fuse_reply(r, r->thread->out, (size_t) n);
}

int op_release(FuseReq *r) {
        return fuse_reply(r, NULL, 0);
}
