/* The control-socket client (ctl-client.h). Blocking; one request per
 * connection. */
#include "common/ipc/ctl-client.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/fuse/mount.h"
#include "common/ipc/msg.h"
#include "common/util/macro.h"

void daemon_reply_done(DaemonReply *r) {
        free(r->mounts);
        r->mounts = NULL;
        r->n_mounts = 0;
}

/* MOUNT: the mount is made here, req's paths become the canonical ones,
 * and the fd goes with the request. A failed check is answered like a
 * refusal of the supervisor (reply->error). */
static int mount_here(holdfast_CtlRequest *req, holdfast_CtlReply *reply, int *ret_fd) {
        ErrMsg err = {};
        _cleanup_free_ char *src = NULL, *mp = NULL;
        int fd = -EBADF;
        int r = fuse_mount_new(req->source, req->mountpoint, &src, &mp, &fd, &err);
        if (r >= 0 && (strlen(src) >= sizeof(req->source) || strlen(mp) >= sizeof(req->mountpoint))) {
                (void) fuse_mount_detach(mp);
                close(fd);
                r = errmsg_set(&err, -ENAMETOOLONG, "canonical path of %s too long", req->mountpoint);
        }
        if (r < 0) {
                reply->error = r;
                snprintf(reply->message, sizeof(reply->message), "%s", err.text);
                return r;
        }
        strcpy(req->source, src);
        strcpy(req->mountpoint, mp);
        *ret_fd = fd;
        return 0;
}

/* UMOUNT: the supervisor knows a mount by its canonical path. Only the
 * parent is resolved: the mount's own root may be a FUSE mount waiting
 * for its worker. */
static void canonicalize(char *path, size_t size) {
        char dir[PATH_MAX], base[PATH_MAX], canon[PATH_MAX];
        if (path[0] != '/' || strlen(path) >= PATH_MAX)
                return;
        strcpy(dir, path);
        strcpy(base, path);
        const char *b = basename(base);
        if (!realpath(dirname(dir), canon) || !strcmp(b, "/") || !strcmp(b, ".") || !strcmp(b, ".."))
                return;
        size_t n = strlen(canon), bn = strlen(b);
        if (n + 1 + bn >= size)
                return;
        memcpy(path, canon, n);
        if (n > 1)
                path[n++] = '/';
        memcpy(path + n, b, bn + 1);
}

static int call(int fd, holdfast_Envelope *e, int send_fd, DaemonReply *ret, const char **ret_what);

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
        *ret = (DaemonReply) {};
        bool mount = req->op == holdfast_CtlRequest_Op_MOUNT;
        int mount_fd = -EBADF;
        char mp[sizeof(req->mountpoint)];
        if (mount && mount_here(&e->msg.ctl_request, &ret->reply, &mount_fd) < 0) {
                free(e);
                return 0;
        }
        if (req->op == holdfast_CtlRequest_Op_UMOUNT)
                canonicalize(e->msg.ctl_request.mountpoint, sizeof(e->msg.ctl_request.mountpoint));
        strcpy(mp, e->msg.ctl_request.mountpoint);
        int r = call(fd, e, mount_fd, ret, ret_what);
        /* Not taken (or no word of it): never left mounted. When the
         * supervisor took it and a worker refused it, it detached it
         * already. */
        if (mount && (r < 0 || ret->reply.error < 0))
                (void) fuse_mount_detach(mp);
        /* A mount the supervisor never got (mount.h): ours to detach. */
        if (req->op == holdfast_CtlRequest_Op_UMOUNT && r == 0 && ret->reply.error == -ENOENT &&
            fuse_mount_is_orphan(mp) && fuse_mount_detach(mp) == 0) {
                ret->reply.error = 0;
                snprintf(ret->reply.message, sizeof(ret->reply.message),
                         "detached %.400s: a holdfast mount that had lost its connection", mp);
        }
        return r;
}

/* Sends e (with send_fd, closed here) and collects the reply; frees e. */
static int call(int fd, holdfast_Envelope *e, int send_fd, DaemonReply *ret, const char **ret_what) {
        *ret_what = "send";
        int r = msg_send(fd, e, send_fd);
        if (send_fd >= 0)
                close(send_fd);
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
