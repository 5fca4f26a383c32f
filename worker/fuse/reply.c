/* Writing replies and notifications to /dev/fuse. Called by whichever
 * serving thread handles the request; a reply is one writev(2), which the
 * kernel takes whole or not at all. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/fuse/request.h"
#include "worker/fuse/server.h"
#include "worker/util/log.h"

static int write_iov(int fd, struct iovec *iov, int n) {
        for (;;) {
                ssize_t w = writev(fd, iov, n);
                if (w >= 0)
                        return 0;
                if (errno != EINTR)
                        return -errno;
        }
}

static int reply_raw(FuseReq *r, int error, const struct iovec *data, int n) {
        assert(!r->replied);
        r->replied = true;
        struct iovec iov[1 + 4];
        assert(n <= 4);
        struct fuse_out_header oh = { .len = sizeof(oh), .error = error, .unique = r->hdr->unique };
        iov[0] = (struct iovec) { &oh, sizeof(oh) };
        int k = 1;
        for (int i = 0; i < n; i++) {
                if (data[i].iov_len == 0)
                        continue;
                iov[k++] = data[i];
                oh.len += (uint32_t) data[i].iov_len;
        }
        int w = write_iov(r->session->fd, iov, k);
        /* -ENOENT: the request was interrupted and the kernel dropped it;
         * -ENODEV: the connection is gone. Neither is ours to report. */
        if (w < 0 && w != -ENOENT && w != -ENODEV)
                log_warn_ratelimited(w, "mount %" PRIu64 ": cannot answer request %" PRIu64 " (opcode %" PRIu32 "): %m",
                                     r->session->id, (uint64_t) r->hdr->unique, r->hdr->opcode);
        return 0;
}

int fuse_reply_iov(FuseReq *r, const struct iovec *iov, int n) {
        return reply_raw(r, 0, iov, n);
}

int fuse_reply(FuseReq *r, const void *data, size_t len) {
        struct iovec iov = { (void *) data, len };
        return reply_raw(r, 0, &iov, len ? 1 : 0);
}

int fuse_reply_error(FuseReq *r, int err) {
        /* the kernel refuses errors outside (-1000, 0) */
        if (err >= 0 || err <= -512)
                err = -EIO;
        return reply_raw(r, err, NULL, 0);
}

int fuse_notify_resend(int fd) {
        struct fuse_out_header oh = { .len = sizeof(oh), .error = FUSE_NOTIFY_RESEND, .unique = 0 };
        struct iovec iov = { &oh, sizeof(oh) };
        return write_iov(fd, &iov, 1);
}
