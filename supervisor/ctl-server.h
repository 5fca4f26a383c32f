/* The control socket ROOT/supervisor.sock: SOCK_SEQPACKET, one Envelope
 * per datagram, root only. Each connection carries one request at a time;
 * a request the supervisor cannot answer at once (MOUNT, UPGRADE, ...)
 * keeps its CtlConn until ctl_conn_reply(). Requests are untrusted: this
 * file only decodes and hands over CtlRequests; supervisor.c validates
 * them. Runs on the supervisor's loop. */
#pragma once

#include <stdbool.h>
#include "supervisor/uv-base.h"

#include "holdfast.pb.h"

typedef struct Supervisor Supervisor;
typedef struct CtlServer CtlServer;

#define CTL_CONN_MAX 64

typedef struct CtlConn {
        CtlServer *srv;
        int fd;                   /* owned */
        uv_poll_t poll;
        bool busy;                /* a request is being answered */
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

int ctl_conn_send_info(CtlConn *c, const holdfast_MountInfo *mi);
/* Sends the reply and reads the next request (or closes on failure). */
void ctl_conn_reply(CtlConn *c, const holdfast_CtlReply *reply);
void ctl_conn_reply_error(CtlConn *c, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void ctl_conn_close(CtlConn *c);
