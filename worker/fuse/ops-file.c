/* Regular files: OPEN, READ, RELEASE (also RELEASEDIR). Reads go through
 * layer_read() with the thread's ChunkDecoder into the thread's reply
 * buffer; every chunk is verified before a byte of it is returned, and a
 * read that cannot be verified fails whole with EIO: wrong bytes are
 * never answered. Serving threads. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>

#include "common/util/macro.h"
#include "worker/fuse/ops.h"
#include "worker/util/log.h"

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
