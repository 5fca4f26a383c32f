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

#include <stdarg.h>

#include "common/ipc/listen.h"
#include "common/ipc/msg.h"
#include "supervisor/supervisor.h"

static void on_conn_closed(uv_handle_t *h) {
        CtlConn *c = container_of(h, CtlConn, poll);
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

/* A connection that does not read yet: its first reply starts that. */
int ctl_server_adopt_conn(CtlServer *srv, int take_fd, CtlConn **ret) {
        _cleanup_close_ int fd = take_fd;
        CtlConn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        int r = uv_poll_init_blocking(srv->sup->loop, &c->poll, fd, 1);
        if (r < 0) {
                free(c);
                return r;
        }
        c->srv = srv;
        c->fd = TAKE_FD(fd);
        c->next = srv->conns;
        srv->conns = c;
        srv->n_conns++;
        *ret = c;
        return 0;
}

static void on_conn_readable(uv_poll_t *h, int status, _unused_ int events) {
        CtlConn *c = container_of(h, CtlConn, poll);
        holdfast_Envelope e;
        int fd = -EBADF;
        int r = status < 0 ? status : msg_recv(c->fd, &e, &fd);
        if (r == -EAGAIN || r == -EINTR)
                return;
        if (r == 0 || r == -ECONNRESET || r == -EPIPE)
                return ctl_conn_close(c);
        /* Say why once, then hang up: a peer that sends garbage gets no
         * second chance on this connection. */
        if (r == -EPROTO)
                ctl_conn_replyf(c, -EPROTO, "protocol version mismatch (want %d)", HOLDFAST_PROTO_VERSION);
        else if (r < 0)
                ctl_conn_replyf(c, -EBADMSG, "undecodable request (not a holdfast Envelope)");
        else if (e.which_msg != holdfast_Envelope_ctl_request_tag)
                ctl_conn_replyf(c, -EBADMSG, "expected a CtlRequest");
        else if (fd >= 0 && e.msg.ctl_request.op != holdfast_CtlRequest_Op_MOUNT)
                ctl_conn_replyf(c, -EBADMSG, "only MOUNT carries a file descriptor");
        else {
                uv_poll_stop(&c->poll);
                return supervisor_on_request(c->srv->sup, c, &e.msg.ctl_request, fd);
        }
        closep(&fd);
        ctl_conn_close(c);
}

static void on_accept(uv_poll_t *h, _unused_ int status, _unused_ int events) {
        CtlServer *srv = container_of(h, CtlServer, poll);
        int fd = accept4(srv->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        log_error("accept on the control socket: %s", strerror(errno));
                return;
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != 0 ||
            srv->n_conns >= CTL_CONN_MAX) {
                close(fd);
                return;
        }
        CtlConn *c;
        int r = ctl_server_adopt_conn(srv, fd, &c);
        if (r < 0)
                log_error_errno(r, "control connection");
        else if (uv_poll_start(&c->poll, UV_READABLE, on_conn_readable) < 0)
                ctl_conn_close(c);
}

void ctl_conn_reply(CtlConn *c, const holdfast_CtlReply *reply) {
        if (c->closing)
                return;
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_ctl_reply_tag, .msg.ctl_reply = *reply };
        if (msg_send(c->fd, &e, -1) < 0 || uv_poll_start(&c->poll, UV_READABLE, on_conn_readable) < 0)
                ctl_conn_close(c);
}

void ctl_conn_replyf(CtlConn *c, int error, const char *fmt, ...) {
        holdfast_CtlReply reply = { .error = error };
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
        if (fd < 0)
                fd = ipc_listen_unix(path, SOCK_SEQPACKET, false);
        if (fd < 0)
                return fd;
        int r = uv_poll_init(s->loop, &srv->poll, fd);
        if (r < 0)
                return r;
        srv->fd = TAKE_FD(fd);
        srv->started = true;
        return uv_poll_start(&srv->poll, UV_READABLE, on_accept);
}

void ctl_server_stop(CtlServer *srv) {
        while (srv->conns)
                ctl_conn_close(srv->conns);
        if (srv->started) {
                srv->started = false;
                /* libuv: a polled fd may be closed right after uv_close(). */
                uv_close((uv_handle_t *) &srv->poll, NULL);
                close(TAKE_FD(srv->fd));
        }
}
