/* The control socket ROOT/supervisor.sock: SOCK_SEQPACKET, one Envelope
 * per datagram, root only. Each connection carries one request at a time;
 * a request the supervisor cannot answer at once (MOUNT, UPGRADE, ...)
 * keeps its CtlConn until it is answered. Requests are untrusted: this
 * file only decodes and hands over CtlRequests; supervisor.c validates
 * them. Runs on the supervisor's loop. */
#pragma once

#include "holdfast.pb.h"
#include "supervisor/base.h"

typedef struct Supervisor Supervisor;
typedef struct CtlServer CtlServer;

#define CTL_CONN_MAX 64

typedef struct CtlConn {
        CtlServer *srv;
        int fd;                   /* owned */
        uv_poll_t poll;           /* stopped while a request is answered */
        bool closing;
        struct CtlConn *next;
} CtlConn;

struct CtlServer {
        Supervisor *sup;
        int fd;                   /* owned: the listening socket */
        uv_poll_t poll;
        bool started;
        CtlConn *conns;           /* owned */
        unsigned n_conns;
};

/* Binds path (replacing a stale socket) or, with take_fd >= 0, adopts a
 * listening socket carried over an exec. */
int ctl_server_start(CtlServer *srv, Supervisor *s, const char *path, int take_fd);
void ctl_server_stop(CtlServer *srv);

/* Adopts a connection whose request is pending across a re-exec. */
int ctl_server_adopt_conn(CtlServer *srv, int take_fd, CtlConn **ret);

/* Sends the reply and reads the next request (or closes on failure). */
void ctl_conn_reply(CtlConn *c, const holdfast_CtlReply *reply);
/* The same with only an error (0: success) and a message. */
void ctl_conn_replyf(CtlConn *c, int error, const char *fmt, ...) _printf_(3, 4);
void ctl_conn_close(CtlConn *c);
