/* A small gRPC server: HTTP/2 cleartext (nghttp2) on a listening unix
 * socket, unary and server-streaming methods, for containerd's proxy
 * plugins. No TLS, no compression (we announce identity and refuse a
 * compressed message), no client streaming, grpc-timeout is not enforced
 * (containerd's calls are short; a handler may poll
 * grpc_call_cancelled()).
 *
 * Threads: one libuv loop on its own thread does all socket and HTTP/2
 * work; handlers run on a small pool of handler threads (blocking calls -
 * RocksDB's synced writes, directory walks - never stall the loop or each
 * other's connections). A handler reads its one request message and
 * sends replies; the loop writes them as the client's flow control
 * allows, and a handler that produces faster than the client reads waits
 * in grpc_call_reply_take().
 *
 * Bounds: a message over max_message_size (either direction) fails the
 * call with RESOURCE_EXHAUSTED; each connection allows max_streams
 * concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS, enforced by
 * nghttp2); connections past max_connections are closed at once; bytes
 * that are not HTTP/2 (or break its rules) close their connection, never
 * the server. The process must ignore SIGPIPE (worker/main.c does). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"

/* google.golang.org/grpc/codes */
typedef enum GrpcCode {
        GRPC_OK = 0,
        GRPC_CANCELLED = 1,
        GRPC_UNKNOWN = 2,
        GRPC_INVALID_ARGUMENT = 3,
        GRPC_DEADLINE_EXCEEDED = 4,
        GRPC_NOT_FOUND = 5,
        GRPC_ALREADY_EXISTS = 6,
        GRPC_PERMISSION_DENIED = 7,
        GRPC_RESOURCE_EXHAUSTED = 8,
        GRPC_FAILED_PRECONDITION = 9,
        GRPC_ABORTED = 10,
        GRPC_OUT_OF_RANGE = 11,
        GRPC_UNIMPLEMENTED = 12,
        GRPC_INTERNAL = 13,
        GRPC_UNAVAILABLE = 14,
        GRPC_DATA_LOSS = 15,
        GRPC_UNAUTHENTICATED = 16,
} GrpcCode;

#define GRPC_MAX_MESSAGE_DEFAULT (4u << 20)

typedef struct GrpcServer GrpcServer;
typedef struct GrpcCall GrpcCall;

/* Runs on a handler thread. Reads the request (grpc_call_request()),
 * sends its reply (one for a unary method, any number for a streaming
 * one), sets a status unless it is OK, and returns: the call's trailers
 * follow its last reply. */
typedef void (*GrpcHandler)(GrpcCall *call, void *userdata);

typedef struct GrpcMethod {
        const char *path;      /* "/package.Service/Method" */
        GrpcHandler handler;
        bool server_streaming;
} GrpcMethod;

typedef struct GrpcServerConfig {
        const GrpcMethod *methods; /* borrowed; must outlive the server */
        size_t n_methods;
        void *userdata;            /* passed to every handler */
        size_t max_message_size;   /* 0: GRPC_MAX_MESSAGE_DEFAULT */
        unsigned max_streams;      /* per connection; 0: 32 */
        unsigned max_connections;  /* 0: 64 */
        unsigned threads;          /* handler threads; 0: 4 */
        /* Optional, called on the loop thread when a connection is closed
         * for cause (garbage, an HTTP/2 error, too many connections), for
         * the caller to log (rate-limited: a peer controls how often). */
        void (*on_error)(void *error_userdata, int err, const char *message);
        void *error_userdata;
        /* Optional, on the loop thread: an accepted connection's fd
         * (open), and the same fd before it is closed (!open). */
        void (*on_conn_fd)(void *error_userdata, int fd, bool open);
} GrpcServerConfig;

/* Starts serving on listen_fd (a listening SOCK_STREAM unix socket; the
 * server takes it, also on failure: the caller keeps its own copy if it
 * wants one, as the supervisor does). */
int grpc_server_new(const GrpcServerConfig *cfg, int take_listen_fd, GrpcServer **ret, ErrMsg *err);
/* For a takeover: stops accepting (closes this server's copy of the
 * listening socket: connections wait in its backlog for the next server),
 * sends GOAWAY on every connection (containerd's client opens a new
 * connection for its next call), and waits up to timeout_ms until every
 * call in flight is answered and every connection closed. 0 when they
 * were, -ETIMEDOUT when not. Handlers go on running meanwhile; the
 * server must still be freed. Not from a handler. */
int grpc_server_drain(GrpcServer *s, unsigned timeout_ms);
/* Stops: closes the listener and every connection (calls in flight are
 * cancelled), waits for the handlers to return and frees. Call from any
 * thread but a handler's. NULL-safe; returns NULL. */
GrpcServer *grpc_server_free(GrpcServer *s);

/* A listening socket bound to path (an existing socket file there is
 * replaced), mode 0600, O_CLOEXEC. For tests and standalone use; the
 * supervisor makes its own. */
int grpc_listen_unix(const char *path, int *ret_fd, ErrMsg *err);

/* ---- in a handler ---- */

/* The request message (without the 5-byte prefix); valid until the
 * handler returns. */
void grpc_call_request(GrpcCall *c, const uint8_t **ret_msg, size_t *ret_len);
/* Sends one reply: buf holds GRPC_FRAME_HEADER_SIZE (5) free bytes and
 * then the len-byte encoded message. Takes buf (frees it, also on
 * failure). Waits while too much of this call's output is queued (1 MiB;
 * at most 30 s, then -ETIMEDOUT: a client that stops reading does not
 * hold a handler thread). -ECANCELED when the client is gone or the
 * server stops (stop producing), -EMSGSIZE over max_message_size,
 * -EINVAL for a second reply of a unary call. */
int grpc_call_reply_take(GrpcCall *c, uint8_t *take_buf, size_t len);
/* The call's status (GRPC_OK unless set); the message is copied. */
void grpc_call_set_status(GrpcCall *c, GrpcCode code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool grpc_call_cancelled(GrpcCall *c);
size_t grpc_call_max_message(GrpcCall *c);
