/* The gRPC server (worker/snapshotter/grpc.h).
 *
 * Owns: the listening socket, every accepted connection (a uv_pipe_t and
 * its nghttp2 server session), every call (one per HTTP/2 stream that
 * carries a request) and the handler threads.
 *
 * Threads and locks: the libuv loop thread owns the connections, the
 * nghttp2 sessions and every field marked "loop"; handler threads only
 * touch a call through the fields marked "lock" (under GrpcServer.lock)
 * and the request bytes, which are immutable once the call is queued.
 * Handler threads tell the loop about new output with `ready_async`; the
 * loop thread never waits for a handler.
 *
 * A call's life: allocated when a request's HEADERS begin; its body is
 * collected (at most max_message_size + 5 bytes); at END_STREAM the body
 * must be exactly one message and the call is queued for a handler. The
 * stream holds one reference, a queued or running job one, and a call on
 * the ready list one, so a call outlives whichever of the stream (closed
 * by the client or with its connection) and the handler ends first.
 * Errors found before a handler runs (unknown method, oversize message,
 * bad framing) are answered at once with a trailers-only response.
 *
 * nghttp2 callbacks never close a connection: they fail with
 * NGHTTP2_ERR_CALLBACK_FAILURE, and the uv callback that fed the session
 * closes it once nghttp2 has returned. */
#include "worker/snapshotter/grpc.h"

/* before <uv.h>: its <sys/param.h> defines MIN/MAX only if missing */
#include "common/ipc/listen.h"
#include "common/util/macro.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "worker/snapshotter/grpc-frame.h"
#include "worker/util/cond.h"

#define READ_BUF_SIZE (64u << 10)
/* Bytes gathered from nghttp2 before one uv_write. */
#define WRITE_CHUNK (64u << 10)
/* Per call: replies queued for the client beyond this make the handler
 * wait. */
#define REPLY_QUEUE_MAX (1u << 20)
/* How long a handler waits for the client to read that much. */
#define REPLY_WAIT_MAX_S 30
/* Calls queued for handler threads, over all connections. */
#define JOBS_QUEUED_MAX 1024
/* Request bytes held by calls not yet handled, over all connections. */
#define REQUEST_BYTES_MAX (64u << 20)
#define PATH_MAX_LEN 256
#define STREAM_WINDOW (1u << 20)
#define CONN_WINDOW (4u << 20)

typedef struct OutMsg {
        struct OutMsg *next;
        uint8_t *buf; /* owned: prefix + message */
        size_t len;
        size_t off;   /* bytes already given to nghttp2 */
} OutMsg;

typedef struct Conn Conn;

typedef enum CallState {
        CALL_COLLECTING, /* reading the request body */
        CALL_ANSWERED,   /* answered before dispatch; further data ignored */
        CALL_DISPATCHED, /* queued for, or run by, a handler */
} CallState;

struct GrpcCall {
        GrpcServer *server;
        int32_t stream_id;
        const GrpcMethod *method;  /* loop until dispatch, then immutable */
        uint8_t *body;             /* owned; immutable after dispatch */
        size_t body_len, body_cap;
        const uint8_t *msg;        /* into body */
        size_t msg_len;

        /* loop */
        Conn *conn;                /* NULL once the stream is gone */
        GrpcCall *conn_prev, *conn_next;
        CallState state;
        char *path;                /* owned */
        bool post, grpc_content_type, compressed_encoding, remote_ended;
        bool response_started, rst_after_response;
        int http_status;           /* non-200 answer to a malformed request */

        /* lock */
        unsigned refs;
        OutMsg *out_head, *out_tail;
        size_t out_bytes;
        unsigned n_replies;
        bool handler_done;
        bool cancelled;
        bool on_ready_list;
        GrpcCall *ready_next, *job_next;
        GrpcCode code;
        char *status_message;      /* owned */
};

struct Conn {
        uv_pipe_t pipe;           /* embedded; the Conn is freed in its close callback */
        int fd;                   /* pipe's, when on_conn_fd was told of it; else -1 */
        GrpcServer *server;
        nghttp2_session *session; /* owned */
        Conn *prev, *next;        /* the server's list */
        GrpcCall *calls;          /* streams with a call, linked by conn_next */
        uv_write_t write_req;
        bool writing;
        uint8_t *wbuf;            /* owned; what the pending write sends */
        size_t wlen, wcap;
        uint8_t *rbuf;            /* owned; READ_BUF_SIZE */
        bool closing;
        bool close_when_flushed;  /* a GOAWAY is on its way: close after it */
};

struct GrpcServer {
        GrpcServerConfig cfg;
        uv_loop_t loop;
        uv_pipe_t listener;
        uv_async_t ready_async;
        uv_async_t stop_async;
        uv_async_t drain_async;
        pthread_t loop_thread;
        bool loop_started;
        nghttp2_session_callbacks *callbacks; /* owned */
        nghttp2_option *options;              /* owned */

        /* loop */
        Conn *conns;
        unsigned n_conns;
        bool listener_closed;
        size_t request_bytes;     /* bodies held by calls not yet handled */

        pthread_mutex_t lock;
        pthread_cond_t work_cond;  /* a job was queued, or stopping */
        pthread_cond_t space_cond; /* a call's output shrank, or cancelled */
        pthread_cond_t drain_cond; /* drained */
        /* lock */
        GrpcCall *jobs_head, *jobs_tail;
        unsigned n_jobs;
        GrpcCall *ready;           /* calls with news for the loop */
        bool stopping;
        bool draining, drained;
        bool asyncs_closed;        /* no uv_async_send() any more */

        pthread_t *threads;        /* owned */
        unsigned n_threads;
};

static void call_free(GrpcCall *c) {
        for (OutMsg *m = c->out_head, *next; m; m = next) {
                next = m->next;
                free(m->buf);
                free(m);
        }
        free(c->body);
        free(c->path);
        free(c->status_message);
        free(c);
}

static void call_unref(GrpcCall *c) {
        GrpcServer *s = c->server;
        pthread_mutex_lock(&s->lock);
        assert(c->refs > 0);
        bool last = --c->refs == 0;
        pthread_mutex_unlock(&s->lock);
        if (last)
                call_free(c);
}

/* Under lock: puts c on the ready list (taking a reference) and wakes
 * the loop. */
static void call_notify_locked(GrpcCall *c) {
        GrpcServer *s = c->server;
        if (c->on_ready_list || s->asyncs_closed)
                return;
        c->on_ready_list = true;
        c->refs++;
        c->ready_next = s->ready;
        s->ready = c;
        uv_async_send(&s->ready_async);
}

static void report(GrpcServer *s, int err, const char *fmt, ...) _printf_(3, 4);
static void report(GrpcServer *s, int err, const char *fmt, ...) {
        if (!s->cfg.on_error)
                return;
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        s->cfg.on_error(s->cfg.error_userdata, err, msg);
}

/* ---- handler side ---- */

void grpc_call_request(GrpcCall *c, const uint8_t **ret_msg, size_t *ret_len) {
        *ret_msg = c->msg;
        *ret_len = c->msg_len;
}

size_t grpc_call_max_message(GrpcCall *c) {
        return c->server->cfg.max_message_size;
}

bool grpc_call_cancelled(GrpcCall *c) {
        pthread_mutex_lock(&c->server->lock);
        bool r = c->cancelled;
        pthread_mutex_unlock(&c->server->lock);
        return r;
}

void grpc_call_set_status(GrpcCall *c, GrpcCode code, const char *fmt, ...) {
        char *msg = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        pthread_mutex_lock(&c->server->lock);
        c->code = code;
        free(c->status_message);
        c->status_message = msg;
        pthread_mutex_unlock(&c->server->lock);
}

int grpc_call_reply_take(GrpcCall *c, uint8_t *take_buf, size_t len) {
        GrpcServer *s = c->server;
        if (len > s->cfg.max_message_size) {
                free(take_buf);
                return -EMSGSIZE;
        }
        OutMsg *m = malloc(sizeof(*m));
        if (!m) {
                free(take_buf);
                return -ENOMEM;
        }
        grpc_frame_header(take_buf, (uint32_t) len);
        *m = (OutMsg) { .buf = take_buf, .len = len + GRPC_FRAME_HEADER_SIZE };

        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += REPLY_WAIT_MAX_S;
        pthread_mutex_lock(&s->lock);
        int r = 0;
        if (!c->method->server_streaming && c->n_replies > 0)
                r = -EINVAL;
        /* Bounded by the deadline: a client that stops reading must not
         * hold a handler thread forever. */
        while (r == 0 && !c->cancelled && !s->stopping && c->out_bytes > REPLY_QUEUE_MAX)
                if (pthread_cond_timedwait(&s->space_cond, &s->lock, &deadline) == ETIMEDOUT)
                        r = -ETIMEDOUT;
        if (r == 0 && (c->cancelled || s->stopping))
                r = -ECANCELED;
        if (r == 0) {
                if (c->out_tail)
                        c->out_tail->next = m;
                else
                        c->out_head = m;
                c->out_tail = m;
                c->out_bytes += m->len;
                c->n_replies++;
                call_notify_locked(c);
        }
        pthread_mutex_unlock(&s->lock);
        if (r < 0) {
                free(m->buf);
                free(m);
        }
        return r;
}

static void *handler_thread(void *arg) {
        GrpcServer *s = arg;
        pthread_mutex_lock(&s->lock);
        for (;;) {
                while (!s->jobs_head && !s->stopping)
                        pthread_cond_wait(&s->work_cond, &s->lock);
                if (s->stopping)
                        break;
                GrpcCall *c = s->jobs_head;
                s->jobs_head = c->job_next;
                if (!s->jobs_head)
                        s->jobs_tail = NULL;
                s->n_jobs--;
                bool skip = c->cancelled;
                pthread_mutex_unlock(&s->lock);

                if (!skip)
                        c->method->handler(c, s->cfg.userdata);

                pthread_mutex_lock(&s->lock);
                c->handler_done = true;
                call_notify_locked(c);
                pthread_mutex_unlock(&s->lock);
                call_unref(c); /* the job's reference */
                pthread_mutex_lock(&s->lock);
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

/* ---- loop side: responses ---- */

static void status_trailers(GrpcCode code, const char *message, char code_buf[16], char *msg_buf, size_t msg_size,
                            nghttp2_nv *nv, size_t *n) {
        snprintf(code_buf, 16, "%d", (int) code);
        nv[(*n)++] = (nghttp2_nv) { (uint8_t *) "grpc-status", (uint8_t *) code_buf, 11, strlen(code_buf),
                                    NGHTTP2_NV_FLAG_NONE };
        if (message && message[0]) {
                grpc_status_message_encode(message, msg_buf, msg_size);
                nv[(*n)++] = (nghttp2_nv) { (uint8_t *) "grpc-message", (uint8_t *) msg_buf, 12, strlen(msg_buf),
                                            NGHTTP2_NV_FLAG_NONE };
        }
}

#define NV(n, v) { (uint8_t *) (n), (uint8_t *) (v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE }

/* A trailers-only response: HEADERS with the status and END_STREAM. */
static int respond_status(Conn *conn, GrpcCall *c, int http_status, GrpcCode code, const char *message) {
        char http[8], code_buf[16], msg_buf[1024];
        snprintf(http, sizeof(http), "%d", http_status);
        nghttp2_nv nv[6] = {
                { (uint8_t *) ":status", (uint8_t *) http, 7, strlen(http), NGHTTP2_NV_FLAG_NONE },
                NV("content-type", "application/grpc"),
                NV("grpc-accept-encoding", "identity"),
        };
        size_t n = 3;
        status_trailers(code, message, code_buf, msg_buf, sizeof(msg_buf), nv, &n);
        c->response_started = true;
        c->rst_after_response = !c->remote_ended;
        return nghttp2_submit_response(conn->session, c->stream_id, nv, n, NULL);
}

/* An early answer (before a handler): the rest of the request is not
 * read. */
static int answer_early(Conn *conn, GrpcCall *c, GrpcCode code, const char *message) {
        if (c->state == CALL_ANSWERED)
                return 0;
        c->state = CALL_ANSWERED;
        if (c->body) {
                conn->server->request_bytes -= c->body_cap;
                free(c->body);
                c->body = NULL;
                c->body_len = c->body_cap = 0;
        }
        return respond_status(conn, c, c->http_status ? c->http_status : 200, code, message);
}

static ssize_t on_data_source_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                                   uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
        (void) user_data;
        GrpcCall *c = source->ptr;
        GrpcServer *s = c->server;
        size_t n = 0;
        bool eof = false, drained = false;
        GrpcCode code = GRPC_OK;
        char *message = NULL;

        pthread_mutex_lock(&s->lock);
        bool was_full = c->out_bytes > REPLY_QUEUE_MAX;
        /* Bounded by length and by the queue. */
        while (n < length && c->out_head) {
                OutMsg *m = c->out_head;
                size_t k = MIN(length - n, m->len - m->off);
                memcpy(buf + n, m->buf + m->off, k);
                m->off += k;
                n += k;
                c->out_bytes -= k;
                if (m->off == m->len) {
                        c->out_head = m->next;
                        if (!c->out_head)
                                c->out_tail = NULL;
                        free(m->buf);
                        free(m);
                }
        }
        drained = was_full && c->out_bytes <= REPLY_QUEUE_MAX;
        if (!c->out_head && c->handler_done) {
                eof = true;
                code = c->code;
                message = c->status_message ? strdup(c->status_message) : NULL;
        }
        pthread_mutex_unlock(&s->lock);
        if (drained)
                pthread_cond_broadcast(&s->space_cond);

        if (eof) {
                char code_buf[16], msg_buf[1024];
                nghttp2_nv nv[2];
                size_t nn = 0;
                status_trailers(code, message, code_buf, msg_buf, sizeof(msg_buf), nv, &nn);
                free(message);
                *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
                if (nghttp2_submit_trailer(session, stream_id, nv, nn) != 0)
                        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
                return (ssize_t) n;
        }
        if (n == 0)
                return NGHTTP2_ERR_DEFERRED;
        return (ssize_t) n;
}

/* The loop's view of a call that has news: start its response, resume
 * its data, or answer with trailers only. */
static void call_progress(GrpcCall *c) {
        Conn *conn = c->conn;
        if (!conn || conn->closing)
                return;
        GrpcServer *s = c->server;
        pthread_mutex_lock(&s->lock);
        bool has_output = c->out_head != NULL;
        bool done = c->handler_done;
        GrpcCode code = c->code;
        char *message = c->status_message ? strdup(c->status_message) : NULL;
        unsigned n_replies = c->n_replies;
        pthread_mutex_unlock(&s->lock);

        if (c->response_started) {
                nghttp2_session_resume_data(conn->session, c->stream_id);
        } else if (has_output) {
                nghttp2_nv nv[] = {
                        NV(":status", "200"),
                        NV("content-type", "application/grpc"),
                        NV("grpc-accept-encoding", "identity"),
                };
                nghttp2_data_provider dp = { .source.ptr = c, .read_callback = on_data_source_read };
                c->response_started = true;
                nghttp2_submit_response(conn->session, c->stream_id, nv, ELEMENTSOF(nv), &dp);
        } else if (done) {
                if (code == GRPC_OK && !c->method->server_streaming && n_replies == 0)
                        respond_status(conn, c, 200, GRPC_INTERNAL, "handler sent no reply");
                else
                        respond_status(conn, c, 200, code, message);
        }
        free(message);
}

/* ---- loop side: requests ---- */

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

static void conn_flush(Conn *conn);

/* The request body stops counting against REQUEST_BYTES_MAX. */
static void call_release_body_budget(GrpcCall *c) {
        if (c->body_cap == 0)
                return;
        c->server->request_bytes -= c->body_cap;
        c->body_cap = 0; /* the body itself stays until the call is freed */
}

/* The stream is gone (closed, reset, or its connection closed): a handler
 * still running sees the call cancelled, and its output is dropped. */
static void call_detach(GrpcCall *c) {
        GrpcServer *s = c->server;
        Conn *conn = c->conn;
        if (!conn)
                return;
        if (c->conn_prev)
                c->conn_prev->conn_next = c->conn_next;
        else
                conn->calls = c->conn_next;
        if (c->conn_next)
                c->conn_next->conn_prev = c->conn_prev;
        c->conn = NULL;
        c->conn_prev = c->conn_next = NULL;
        call_release_body_budget(c);
        pthread_mutex_lock(&s->lock);
        c->cancelled = true;
        pthread_mutex_unlock(&s->lock);
        pthread_cond_broadcast(&s->space_cond);
        call_unref(c); /* the stream's reference */
}

static GrpcCall *stream_call(nghttp2_session *session, int32_t stream_id) {
        return nghttp2_session_get_stream_user_data(session, stream_id);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
        Conn *conn = user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0;
        GrpcCall *c = calloc(1, sizeof(*c));
        if (!c)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->server = conn->server;
        c->stream_id = frame->hd.stream_id;
        c->refs = 1;
        c->conn = conn;
        c->conn_next = conn->calls;
        if (conn->calls)
                conn->calls->conn_prev = c;
        conn->calls = c;
        if (nghttp2_session_set_stream_user_data(session, c->stream_id, c) != 0) {
                call_detach(c);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
}

static bool header_is(const uint8_t *name, size_t len, const char *want) {
        return len == strlen(want) && memcmp(name, want, len) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
        (void) flags;
        (void) user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0; /* request trailers carry nothing we use */
        GrpcCall *c = stream_call(session, frame->hd.stream_id);
        if (!c)
                return 0;
        if (header_is(name, namelen, ":method"))
                c->post = header_is(value, valuelen, "POST");
        else if (header_is(name, namelen, ":path")) {
                free(c->path);
                c->path = valuelen <= PATH_MAX_LEN ? strndup((const char *) value, valuelen) : NULL;
        } else if (header_is(name, namelen, "content-type")) {
                /* application/grpc, application/grpc+proto,
                 * application/grpc;charset=... */
                const size_t n = strlen("application/grpc");
                c->grpc_content_type = valuelen >= n && memcmp(value, "application/grpc", n) == 0 &&
                                       (valuelen == n || value[n] == '+' || value[n] == ';');
        } else if (header_is(name, namelen, "grpc-encoding"))
                c->compressed_encoding = !header_is(value, valuelen, "identity");
        return 0;
}

static const GrpcMethod *method_find(GrpcServer *s, const char *path) {
        if (!path)
                return NULL;
        for (size_t i = 0; i < s->cfg.n_methods; i++)
                if (strcmp(s->cfg.methods[i].path, path) == 0)
                        return &s->cfg.methods[i];
        return NULL;
}

static int request_headers_done(Conn *conn, GrpcCall *c) {
        GrpcServer *s = conn->server;
        if (!c->post) {
                c->http_status = 405;
                return answer_early(conn, c, GRPC_INTERNAL, "gRPC requires POST");
        }
        if (!c->grpc_content_type) {
                c->http_status = 415;
                return answer_early(conn, c, GRPC_INTERNAL, "invalid gRPC request content-type");
        }
        c->method = method_find(s, c->path);
        if (!c->method) {
                char msg[PATH_MAX_LEN + 64];
                snprintf(msg, sizeof(msg), "unknown method %s", c->path ? c->path : "(none or too long)");
                return answer_early(conn, c, GRPC_UNIMPLEMENTED, msg);
        }
        if (c->compressed_encoding)
                return answer_early(conn, c, GRPC_UNIMPLEMENTED, "grpc-encoding not supported (identity only)");
        c->state = CALL_COLLECTING;
        return 0;
}

static int frame_error_answer(Conn *conn, GrpcCall *c, int r, uint32_t declared) {
        char msg[128];
        switch (r) {
        case -EMSGSIZE:
                snprintf(msg, sizeof(msg), "grpc: received message larger than max (%" PRIu32 " vs. %zu)", declared,
                         conn->server->cfg.max_message_size);
                return answer_early(conn, c, GRPC_RESOURCE_EXHAUSTED, msg);
        case -EPROTONOSUPPORT:
                return answer_early(conn, c, GRPC_INTERNAL, "grpc: compressed flag set with identity or empty encoding");
        default:
                return answer_early(conn, c, GRPC_INTERNAL,
                                    "grpc: request body must be exactly one length-prefixed message");
        }
}

static void dispatch(Conn *conn, GrpcCall *c) {
        GrpcServer *s = conn->server;
        size_t max = s->cfg.max_message_size;
        uint32_t declared = 0;
        if (c->body_len >= GRPC_FRAME_HEADER_SIZE)
                (void) grpc_frame_peek(c->body, c->body_len, UINT32_MAX, &declared);
        int r = grpc_frame_single(c->body, c->body_len, max, &c->msg, &c->msg_len);
        if (r < 0) {
                frame_error_answer(conn, c, r, declared);
                return;
        }
        pthread_mutex_lock(&s->lock);
        if (s->stopping || s->n_jobs >= JOBS_QUEUED_MAX) {
                bool stopping = s->stopping;
                pthread_mutex_unlock(&s->lock);
                if (stopping)
                        answer_early(conn, c, GRPC_UNAVAILABLE, "server stopping");
                else
                        answer_early(conn, c, GRPC_RESOURCE_EXHAUSTED, "too many calls queued");
                return;
        }
        c->state = CALL_DISPATCHED;
        c->refs++; /* the job's */
        if (s->jobs_tail)
                s->jobs_tail->job_next = c;
        else
                s->jobs_head = c;
        s->jobs_tail = c;
        s->n_jobs++;
        pthread_mutex_unlock(&s->lock);
        pthread_cond_signal(&s->work_cond);
}

static void request_ended(Conn *conn, GrpcCall *c) {
        c->remote_ended = true;
        if (c->state == CALL_COLLECTING)
                dispatch(conn, c);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
        Conn *conn = user_data;
        GrpcCall *c;
        switch (frame->hd.type) {
        case NGHTTP2_HEADERS:
                c = stream_call(session, frame->hd.stream_id);
                if (!c)
                        return 0;
                if (frame->headers.cat == NGHTTP2_HCAT_REQUEST && request_headers_done(conn, c) != 0)
                        return NGHTTP2_ERR_CALLBACK_FAILURE;
                if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
                        request_ended(conn, c);
                break;
        case NGHTTP2_DATA:
                if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                        break;
                c = stream_call(session, frame->hd.stream_id);
                if (c)
                        request_ended(conn, c);
                break;
        default:
                break;
        }
        return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data) {
        (void) flags;
        Conn *conn = user_data;
        GrpcServer *s = conn->server;
        GrpcCall *c = stream_call(session, stream_id);
        if (!c || c->state != CALL_COLLECTING)
                return 0; /* answered already: flow control is credited by nghttp2 */
        size_t max = s->cfg.max_message_size + GRPC_FRAME_HEADER_SIZE;
        if (c->body_len + len > max) {
                uint32_t declared = 0;
                if (c->body_len >= GRPC_FRAME_HEADER_SIZE)
                        (void) grpc_frame_peek(c->body, c->body_len, UINT32_MAX, &declared);
                int r = declared > s->cfg.max_message_size ? -EMSGSIZE : -EBADMSG;
                return frame_error_answer(conn, c, r, declared) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
        }
        if (c->body_len + len > c->body_cap) {
                size_t need = MAX(c->body_len + len, (size_t) 256);
                size_t cap = MAX(c->body_cap * 2, need);
                cap = MIN(cap, max);
                if (s->request_bytes + (cap - c->body_cap) > REQUEST_BYTES_MAX)
                        return answer_early(conn, c, GRPC_RESOURCE_EXHAUSTED, "server busy: too many request bytes held") < 0
                                       ? NGHTTP2_ERR_CALLBACK_FAILURE
                                       : 0;
                uint8_t *b = realloc(c->body, cap);
                if (!b)
                        return answer_early(conn, c, GRPC_RESOURCE_EXHAUSTED, "out of memory") < 0
                                       ? NGHTTP2_ERR_CALLBACK_FAILURE
                                       : 0;
                s->request_bytes += cap - c->body_cap;
                c->body = b;
                c->body_cap = cap;
        }
        memcpy(c->body + c->body_len, data, len);
        c->body_len += len;

        /* Refuse an oversize or compressed message as soon as its prefix
         * is in, not after buffering it. */
        uint32_t declared;
        int r = grpc_frame_peek(c->body, c->body_len, s->cfg.max_message_size, &declared);
        if (r < 0) {
                (void) grpc_frame_peek(c->body, c->body_len, UINT32_MAX, &declared);
                return frame_error_answer(conn, c, r, declared) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
        }
        return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
        (void) user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                return 0;
        GrpcCall *c = stream_call(session, frame->hd.stream_id);
        /* A complete response to a request the client is still sending:
         * RST_STREAM(NO_ERROR) asks it to stop (RFC 9113 8.1), after the
         * response, never before it. */
        if (c && c->rst_after_response && !c->remote_ended) {
                c->rst_after_response = false;
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_NO_ERROR);
        }
        return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
        (void) error_code;
        (void) user_data;
        GrpcCall *c = stream_call(session, stream_id);
        if (c) {
                nghttp2_session_set_stream_user_data(session, stream_id, NULL);
                call_detach(c);
        }
        return 0;
}

/* ---- loop side: connections ---- */

static void on_conn_closed(uv_handle_t *h) {
        Conn *conn = container_of(h, Conn, pipe);
        free(conn->wbuf);
        free(conn->rbuf);
        free(conn);
}

/* Tells grpc_server_drain() when the last connection is gone. */
static void check_drained(GrpcServer *s) {
        pthread_mutex_lock(&s->lock);
        bool now = s->draining && !s->drained && s->n_conns == 0;
        if (now)
                s->drained = true;
        pthread_mutex_unlock(&s->lock);
        if (now)
                pthread_cond_broadcast(&s->drain_cond);
}

/* Never from inside an nghttp2 callback. */
static void conn_close(Conn *conn) {
        if (conn->closing)
                return;
        GrpcServer *s = conn->server;
        conn->closing = true;
        /* Bounded: each detach unlinks one call. */
        while (conn->calls)
                call_detach(conn->calls);
        if (conn->session)
                nghttp2_session_del(conn->session);
        conn->session = NULL;
        if (conn->prev)
                conn->prev->next = conn->next;
        else
                s->conns = conn->next;
        if (conn->next)
                conn->next->prev = conn->prev;
        s->n_conns--;
        if (conn->fd >= 0 && s->cfg.on_conn_fd)
                s->cfg.on_conn_fd(s->cfg.error_userdata, conn->fd, false);
        uv_close((uv_handle_t *) &conn->pipe, on_conn_closed);
        check_drained(s);
}

static void on_write(uv_write_t *req, int status) {
        Conn *conn = container_of(req, Conn, write_req);
        conn->writing = false;
        conn->wlen = 0;
        if (conn->closing)
                return;
        if (status < 0) {
                conn_close(conn);
                return;
        }
        conn_flush(conn);
}

static void conn_flush(Conn *conn) {
        if (conn->closing || conn->writing)
                return;
        conn->wlen = 0;
        /* Bounded: each round adds bytes, and it stops at WRITE_CHUNK or
         * when nghttp2 has nothing more to send. */
        while (conn->wlen < WRITE_CHUNK) {
                const uint8_t *data;
                ssize_t n = nghttp2_session_mem_send(conn->session, &data);
                if (n < 0) {
                        report(conn->server, -EPROTO, "HTTP/2 send failed, closing the connection: %s",
                               nghttp2_strerror((int) n));
                        conn_close(conn);
                        return;
                }
                if (n == 0)
                        break;
                if (conn->wlen + (size_t) n > conn->wcap) {
                        size_t cap = MAX(conn->wcap * 2, conn->wlen + (size_t) n);
                        uint8_t *b = realloc(conn->wbuf, cap);
                        if (!b) {
                                conn_close(conn);
                                return;
                        }
                        conn->wbuf = b;
                        conn->wcap = cap;
                }
                memcpy(conn->wbuf + conn->wlen, data, (size_t) n);
                conn->wlen += (size_t) n;
        }
        if (conn->wlen > 0) {
                uv_buf_t b = uv_buf_init((char *) conn->wbuf, (unsigned) conn->wlen);
                if (uv_write(&conn->write_req, (uv_stream_t *) &conn->pipe, &b, 1, on_write) < 0) {
                        conn_close(conn);
                        return;
                }
                conn->writing = true;
                return;
        }
        if (conn->close_when_flushed ||
            (!nghttp2_session_want_read(conn->session) && !nghttp2_session_want_write(conn->session)))
                conn_close(conn);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        (void) suggested;
        Conn *conn = container_of(h, Conn, pipe);
        *buf = uv_buf_init((char *) conn->rbuf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
        Conn *conn = container_of(stream, Conn, pipe);
        if (conn->closing)
                return;
        if (nread < 0) {
                conn_close(conn); /* EOF or a reset */
                return;
        }
        if (nread == 0)
                return;
        ssize_t rv = nghttp2_session_mem_recv(conn->session, (const uint8_t *) buf->base, (size_t) nread);
        if (rv < 0) {
                /* Not HTTP/2, or it broke a rule: nghttp2 may have queued
                 * a GOAWAY saying why. Send that, read nothing more. */
                report(conn->server, -EPROTO, "closing a connection: %s", nghttp2_strerror((int) rv));
                conn->close_when_flushed = true;
                uv_read_stop(stream);
        }
        conn_flush(conn);
}

static void on_connection(uv_stream_t *listener, int status) {
        GrpcServer *s = listener->data;
        if (status < 0) {
                report(s, status, "accept failed: %s", uv_strerror(status));
                return;
        }
        Conn *conn = calloc(1, sizeof(*conn));
        if (!conn)
                return;
        conn->server = s;
        conn->fd = -1;
        uv_pipe_init(&s->loop, &conn->pipe, 0);
        conn->rbuf = malloc(READ_BUF_SIZE);
        if (!conn->rbuf || uv_accept(listener, (uv_stream_t *) &conn->pipe) < 0) {
                uv_close((uv_handle_t *) &conn->pipe, on_conn_closed);
                return;
        }
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *) &conn->pipe, &fd) == 0 && s->cfg.on_conn_fd) {
                conn->fd = fd;
                s->cfg.on_conn_fd(s->cfg.error_userdata, fd, true);
        }
        conn->next = s->conns;
        if (s->conns)
                s->conns->prev = conn;
        s->conns = conn;
        s->n_conns++;
        if (s->n_conns > s->cfg.max_connections) {
                report(s, -EMFILE, "refusing a connection: %u open", s->n_conns - 1);
                conn_close(conn);
                return;
        }
        if (nghttp2_session_server_new2(&conn->session, s->callbacks, conn, s->options) != 0) {
                conn->session = NULL;
                conn_close(conn);
                return;
        }
        nghttp2_settings_entry iv[] = {
                { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->cfg.max_streams },
                { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW },
                { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16u << 10 },
        };
        if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, iv, ELEMENTSOF(iv)) != 0 ||
            nghttp2_session_set_local_window_size(conn->session, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0 ||
            uv_read_start((uv_stream_t *) &conn->pipe, on_alloc, on_read) < 0) {
                conn_close(conn);
                return;
        }
        conn_flush(conn);
}

/* ---- loop side: news from handlers, stop ---- */

static GrpcCall *ready_take(GrpcServer *s) {
        pthread_mutex_lock(&s->lock);
        GrpcCall *list = s->ready;
        s->ready = NULL;
        for (GrpcCall *c = list; c; c = c->ready_next)
                c->on_ready_list = false;
        pthread_mutex_unlock(&s->lock);
        return list;
}

static void on_ready(uv_async_t *a) {
        GrpcServer *s = a->data;
        /* Bounded: the list taken now; later news wakes us again. */
        for (GrpcCall *c = ready_take(s), *next; c; c = next) {
                next = c->ready_next;
                pthread_mutex_lock(&s->lock);
                bool done = c->handler_done;
                pthread_mutex_unlock(&s->lock);
                if (done)
                        call_release_body_budget(c);
                Conn *conn = c->conn;
                if (conn) {
                        call_progress(c);
                        conn_flush(conn);
                }
                call_unref(c); /* the ready list's */
        }
}

static void close_listener(GrpcServer *s) {
        if (s->listener_closed)
                return;
        s->listener_closed = true;
        uv_close((uv_handle_t *) &s->listener, NULL);
}

/* GOAWAY on every connection: nghttp2 refuses streams the client opens
 * after it, and a connection whose streams are all answered then wants
 * neither to read nor to write, and conn_flush() closes it. */
static void on_drain(uv_async_t *a) {
        GrpcServer *s = a->data;
        close_listener(s);
        for (Conn *conn = s->conns, *next; conn; conn = next) {
                next = conn->next;
                nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE,
                                      nghttp2_session_get_last_proc_stream_id(conn->session), NGHTTP2_NO_ERROR, NULL, 0);
                conn_flush(conn);
        }
        check_drained(s);
}

static void on_stop(uv_async_t *a) {
        GrpcServer *s = a->data;
        close_listener(s);
        while (s->conns) /* bounded: each close unlinks one */
                conn_close(s->conns);
        pthread_mutex_lock(&s->lock);
        s->asyncs_closed = true;
        pthread_mutex_unlock(&s->lock);
        for (GrpcCall *c = ready_take(s), *next; c; c = next) {
                next = c->ready_next;
                call_unref(c);
        }
        uv_close((uv_handle_t *) &s->ready_async, NULL);
        uv_close((uv_handle_t *) &s->stop_async, NULL);
        uv_close((uv_handle_t *) &s->drain_async, NULL);
}

static void *loop_thread(void *arg) {
        GrpcServer *s = arg;
        uv_run(&s->loop, UV_RUN_DEFAULT);
        return NULL;
}

/* ---- lifecycle ---- */

GrpcServer *grpc_server_free(GrpcServer *s) {
        if (!s)
                return NULL;
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_mutex_unlock(&s->lock);
        pthread_cond_broadcast(&s->work_cond);
        pthread_cond_broadcast(&s->space_cond);
        if (s->loop_started) {
                uv_async_send(&s->stop_async);
                pthread_join(s->loop_thread, NULL);
        }
        for (unsigned i = 0; i < s->n_threads; i++)
                pthread_join(s->threads[i], NULL);
        /* Jobs no handler took: their calls are detached already. */
        for (GrpcCall *c = s->jobs_head, *next; c; c = next) {
                next = c->job_next;
                call_unref(c);
        }
        s->jobs_head = s->jobs_tail = NULL;
        if (s->loop_started)
                uv_loop_close(&s->loop);
        if (s->callbacks)
                nghttp2_session_callbacks_del(s->callbacks);
        if (s->options)
                nghttp2_option_del(s->options);
        pthread_cond_destroy(&s->work_cond);
        pthread_cond_destroy(&s->space_cond);
        pthread_cond_destroy(&s->drain_cond);
        pthread_mutex_destroy(&s->lock);
        free(s->threads);
        free(s);
        return NULL;
}

int grpc_server_drain(GrpcServer *s, unsigned timeout_ms) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long) (timeout_ms % 1000) * 1000000;
        if (deadline.tv_nsec >= 1000000000) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&s->lock);
        if (s->asyncs_closed) { /* stopped: nothing is served any more */
                pthread_mutex_unlock(&s->lock);
                return 0;
        }
        if (!s->draining) {
                s->draining = true;
                uv_async_send(&s->drain_async);
        }
        int r = 0;
        /* Bounded by the deadline. */
        while (!s->drained && r == 0)
                if (pthread_cond_timedwait(&s->drain_cond, &s->lock, &deadline) == ETIMEDOUT)
                        r = -ETIMEDOUT;
        if (s->drained)
                r = 0;
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* Threads of ours take no signals: the process's main thread does. */
static int thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int r = -pthread_create(t, NULL, fn, arg);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return r;
}

int grpc_server_new(const GrpcServerConfig *cfg, int take_listen_fd, GrpcServer **ret, ErrMsg *err) {
        _cleanup_close_ int fd = take_listen_fd;
        if (!cfg->methods || cfg->n_methods == 0)
                return errmsg_set(err, -EINVAL, "gRPC server without methods");
        GrpcServer *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->cfg = *cfg;
        if (!s->cfg.max_message_size)
                s->cfg.max_message_size = GRPC_MAX_MESSAGE_DEFAULT;
        s->cfg.max_message_size = MIN(s->cfg.max_message_size, (size_t) UINT32_MAX);
        if (!s->cfg.max_streams)
                s->cfg.max_streams = 32;
        if (!s->cfg.max_connections)
                s->cfg.max_connections = 64;
        if (!s->cfg.threads)
                s->cfg.threads = 4;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->work_cond, NULL);
        cond_init_monotonic(&s->space_cond);
        cond_init_monotonic(&s->drain_cond);

        int r;
        if (nghttp2_session_callbacks_new(&s->callbacks) != 0 || nghttp2_option_new(&s->options) != 0) {
                r = -ENOMEM;
                goto fail;
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(s->callbacks, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(s->callbacks, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(s->callbacks, on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s->callbacks, on_data_chunk_recv);
        nghttp2_session_callbacks_set_on_frame_send_callback(s->callbacks, on_frame_send);
        nghttp2_session_callbacks_set_on_stream_close_callback(s->callbacks, on_stream_close);

        r = uv_loop_init(&s->loop);
        if (r < 0) {
                errmsg_set(err, r, "uv_loop_init: %s", uv_strerror(r));
                goto fail;
        }
        uv_pipe_init(&s->loop, &s->listener, 0);
        s->listener.data = s;
        uv_async_init(&s->loop, &s->ready_async, on_ready);
        s->ready_async.data = s;
        uv_async_init(&s->loop, &s->stop_async, on_stop);
        s->stop_async.data = s;
        uv_async_init(&s->loop, &s->drain_async, on_drain);
        s->drain_async.data = s;
        s->loop_started = true; /* from here on, the loop must run to close its handles */
        r = uv_pipe_open(&s->listener, fd);
        if (r >= 0) {
                fd = -EBADF; /* the pipe has it */
                r = uv_listen((uv_stream_t *) &s->listener, 128, on_connection);
        }
        if (r < 0) {
                errmsg_set(err, r, "cannot listen on the snapshotter socket: %s", uv_strerror(r));
                goto fail_loop;
        }

        s->threads = calloc(s->cfg.threads, sizeof(*s->threads));
        if (!s->threads) {
                r = -ENOMEM;
                goto fail_loop;
        }
        for (; s->n_threads < s->cfg.threads; s->n_threads++) {
                r = thread_start(&s->threads[s->n_threads], handler_thread, s);
                if (r < 0) {
                        errmsg_set(err, r, "cannot start a handler thread: %s", strerror(-r));
                        goto fail_loop;
                }
        }
        r = thread_start(&s->loop_thread, loop_thread, s);
        if (r < 0) {
                errmsg_set(err, r, "cannot start the gRPC loop thread: %s", strerror(-r));
                goto fail_loop;
        }
        *ret = s;
        return 0;

fail_loop:
        /* Close the handles on this thread's run of the loop. */
        on_stop(&s->stop_async);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        s->loop_started = false;
        uv_loop_close(&s->loop);
fail:
        grpc_server_free(s);
        return r;
}

int grpc_listen_unix(const char *path, int *ret_fd, ErrMsg *err) {
        int fd = ipc_listen_unix(path, SOCK_STREAM, false);
        if (fd < 0)
                return errmsg_set(err, fd, "cannot listen on %s: %s%s", path, strerror(-fd),
                                  fd == -EADDRINUSE ? " (a server answers there)" :
                                  fd == -EEXIST ? " (not a socket)" : "");
        *ret_fd = fd;
        return 0;
}
