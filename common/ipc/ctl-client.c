/* The control-socket client (daemon-client.h). Blocking; one request per
 * connection. */
#include "common/ipc/ctl-client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/ipc/msg.h"
#include "common/util/macro.h"

void daemon_reply_done(DaemonReply *r) {
        free(r->mounts);
        r->mounts = NULL;
        r->n_mounts = 0;
}

int daemon_call(const char *root, const holdfast_CtlRequest *req, unsigned timeout_ms, DaemonReply *ret,
                const char **ret_what) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        *ret_what = "connect";
        if ((size_t) snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/supervisor.sock", root) >=
            sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
        if (timeout_ms && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                return -errno;
        holdfast_Envelope *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->which_msg = holdfast_Envelope_ctl_request_tag;
        e->msg.ctl_request = *req;
        *ret_what = "send";
        int r = msg_send(fd, e, -1);
        *ret = (DaemonReply) {};
        *ret_what = "receive";
        while (r >= 0) {
                int rfd;
                r = msg_recv(fd, e, &rfd);
                if (r == 0)
                        r = -ECONNRESET; /* hung up without a reply */
                if (r < 0)
                        break;
                if (rfd >= 0) {
                        close(rfd);
                        r = -EBADMSG;
                        break;
                }
                if (e->which_msg == holdfast_Envelope_ctl_reply_tag) {
                        ret->reply = e->msg.ctl_reply;
                        free(e);
                        return 0;
                }
                if (e->which_msg != holdfast_Envelope_mount_info_tag) {
                        r = -EBADMSG;
                        break;
                }
                /* grow geometrically: a MountInfo is 8 KiB, and a node may
                 * have thousands of mounts */
                size_t n = ret->n_mounts;
                if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) {
                        holdfast_MountInfo *m = realloc(ret->mounts, (n ? 2 * n : 16) * sizeof(*m));
                        if (!m) {
                                r = -ENOMEM;
                                break;
                        }
                        ret->mounts = m;
                }
                ret->mounts[ret->n_mounts++] = e->msg.mount_info;
        }
        free(e);
        daemon_reply_done(ret);
        return r;
}
