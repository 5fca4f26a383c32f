/* The control socket (ctl-server.h). Owns the listening fd, every
 * connection's fd and their uv_poll handles (a CtlConn is freed in its
 * uv_close callback). Runs on the supervisor's loop.
 *
 * Why uv_poll and not uv_pipe: requests are SOCK_SEQPACKET datagrams,
 * which libuv's streams do not preserve. Connections are blocking with a
 * send deadline so that a STATUS with thousands of MountInfos waits for a
 * reading client but a client that never reads cannot hold the loop for
 * more than a second; reads happen only when poll says readable. */
#include "supervisor/ctl-server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/ipc/msg.h"
#include "common/util/macro.h"
#include "supervisor/log.h"
#include "supervisor/supervisor.h"

static void on_conn_readable(uv_poll_t *h, int status, int events);

static void on_conn_closed(uv_handle_t *h) {
        CtlConn *c = h->data;
        close(c->fd);
        free(c);
}

void ctl_conn_close(CtlConn *c) {
        if (!c || c->closing)
                return;
        c->closing = true;
        supervisor_forget_conn(c->srv->sup, c);
        for (CtlConn **p = &c->srv->conns; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        break;
                }
        c->srv->n_conns--;
        uv_close((uv_handle_t *) &c->poll, on_conn_closed);
}

static int conn_new(CtlServer *srv, int take_fd, CtlConn **ret) {
        _cleanup_close_ int fd = take_fd;
        struct timeval tv = { .tv_sec = 1 };
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                return -errno;
        CtlConn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        int r = uv_poll_init(srv->sup->loop, &c->poll, fd);
        if (r < 0) {
                free(c);
                return r;
        }
        (void) fd_blocking_after_uv_poll(fd);
        c->poll.data = c;
        c->srv = srv;
        c->fd = TAKE_FD(fd);
        c->next = srv->conns;
        srv->conns = c;
        srv->n_conns++;
        *ret = c;
        return 0;
}

int ctl_server_adopt_conn(CtlServer *srv, int take_fd, CtlConn **ret) {
        CtlConn *c;
        int r = conn_new(srv, take_fd, &c);
        if (r < 0)
                return r;
        c->busy = true;
        *ret = c;
        return 0;
}

static void on_accept(uv_poll_t *h, int status, int events) {
        CtlServer *srv = h->data;
        (void) status;
        (void) events;
        int fd = accept4(srv->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        log_error("accept on the control socket: %s", strerror(errno));
                return;
        }
        /* Blocking from here on, with the deadlines set in conn_new(). */
        int fl = fcntl(fd, F_GETFL);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != 0 ||
            srv->n_conns >= CTL_CONN_MAX) {
                close(fd);
                return;
        }
        CtlConn *c;
        int r = conn_new(srv, fd, &c);
        if (r < 0) {
                log_error_errno(r, "control connection");
                return;
        }
        r = uv_poll_start(&c->poll, UV_READABLE, on_conn_readable);
        if (r < 0)
                ctl_conn_close(c);
}

static void on_conn_readable(uv_poll_t *h, int status, int events) {
        CtlConn *c = h->data;
        (void) events;
        if (c->busy || c->closing)
                return;
        holdfast_Envelope e;
        int fd = -EBADF;
        int r = status < 0 ? status : msg_recv(c->fd, &e, &fd);
        if (r == -EAGAIN || r == -EINTR)
                return;
        if (r == 0 || r == -ECONNRESET || r == -EPIPE)
                return ctl_conn_close(c);
        if (r < 0) {
                /* Say why once, then hang up: a peer that sends garbage
                 * gets no second chance on this connection. */
                ctl_conn_reply_error(c, r == -EPROTO ? -EPROTO : -EBADMSG,
                                     r == -EPROTO ? "protocol version mismatch (want %d)"
                                                  : "undecodable request (not a holdfast Envelope)",
                                     HOLDFAST_PROTO_VERSION);
                return ctl_conn_close(c);
        }
        if (fd >= 0) {
                close(fd);
                ctl_conn_reply_error(c, -EBADMSG, "requests carry no file descriptors");
                return ctl_conn_close(c);
        }
        if (e.which_msg != holdfast_Envelope_ctl_request_tag) {
                ctl_conn_reply_error(c, -EBADMSG, "expected a CtlRequest");
                return ctl_conn_close(c);
        }
        c->busy = true;
        uv_poll_stop(&c->poll);
        supervisor_on_request(c->srv->sup, c, &e.msg.ctl_request);
}

int ctl_conn_send_info(CtlConn *c, const holdfast_MountInfo *mi) {
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_mount_info_tag;
        e.msg.mount_info = *mi;
        return msg_send(c->fd, &e, -1);
}

void ctl_conn_reply(CtlConn *c, const holdfast_CtlReply *reply) {
        if (c->closing)
                return;
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_ctl_reply_tag;
        e.msg.ctl_reply = *reply;
        int r = msg_send(c->fd, &e, -1);
        c->busy = false;
        if (r < 0 || uv_poll_start(&c->poll, UV_READABLE, on_conn_readable) < 0)
                ctl_conn_close(c);
}

void ctl_conn_reply_error(CtlConn *c, int error, const char *fmt, ...) {
        holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
        reply.error = error;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reply.message, sizeof(reply.message), fmt, ap);
        va_end(ap);
        ctl_conn_reply(c, &reply);
}

int ctl_server_start(CtlServer *srv, Supervisor *s, const char *path, int take_fd) {
        _cleanup_close_ int fd = take_fd;
        srv->sup = s;
        srv->fd = -EBADF;
        if (fd < 0) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                if (strlen(path) >= sizeof(sa.sun_path))
                        return -ENAMETOOLONG;
                strcpy(sa.sun_path, path);
                fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (fd < 0)
                        return -errno;
                /* A socket left by a supervisor that died is stale; a live
                 * one would answer connect(). */
                int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
                if (probe >= 0) {
                        bool live = connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0;
                        close(probe);
                        if (live)
                                return -EADDRINUSE;
                }
                unlink(path);
                mode_t old = umask(0177);
                int r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
                umask(old);
                if (r < 0)
                        return -errno;
                if (chmod(path, 0600) < 0 || listen(fd, 64) < 0)
                        return -errno;
        }
        int r = uv_poll_init(s->loop, &srv->poll, fd);
        if (r < 0)
                return r;
        srv->poll.data = srv;
        srv->fd = TAKE_FD(fd);
        srv->started = true;
        return uv_poll_start(&srv->poll, UV_READABLE, on_accept);
}

static void on_listen_closed(uv_handle_t *h) {
        CtlServer *srv = h->data;
        close(srv->fd);
        srv->fd = -EBADF;
}

void ctl_server_stop(CtlServer *srv) {
        while (srv->conns)
                ctl_conn_close(srv->conns);
        if (srv->started) {
                srv->started = false;
                uv_close((uv_handle_t *) &srv->poll, on_listen_closed);
        }
}
