/* The HTTP engine of the registry client: ONE fetch thread per HttpClient
 * runs a libuv loop that drives a curl multi handle through
 * curl_multi_socket_action() (a uv_poll per socket, a uv_timer for curl's
 * timeouts, a uv_async to take new requests). HTTP/2 is negotiated over
 * TLS and multiplexed; connections are reused; at most max_per_host
 * transfers run per scheme://host:port at once, the rest wait in a queue.
 *
 * Retries (exponential backoff with jitter) happen here, for 408, 429 and
 * 5xx answers (Retry-After is honoured when it fits the deadline),
 * connection resets, stalls and timeouts of one attempt, and short, long
 * or mis-ranged bodies (not when a scheme_probe fails the way a server
 * speaking the other scheme makes it fail). Every request has a deadline
 * (absolute, on CLOCK_MONOTONIC): when it passes, the request ends with
 * -ETIMEDOUT whatever state it is in: queued, in flight or waiting to
 * retry.
 *
 * Redirects are not followed here (the registry layer decides where
 * Authorization may go). HTTP statuses and CURLcodes become -errno in
 * exactly one place, http_result_errno().
 *
 * Threads: http_request_run() blocks the calling thread (any thread but
 * the fetch thread) until the request is over; http_request_submit()
 * returns at once and calls done() on the fetch thread. An HttpRequest
 * belongs to the fetch thread from submission until done()/return; the
 * caller must not touch it (nor the buffers it points to) in between. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"
#include "common/util/strbuf.h"

typedef struct HttpClient HttpClient;

typedef struct HttpConfig {
        unsigned max_per_host;  /* 0: 8 */
        unsigned retries;       /* extra attempts after the first; UINT_MAX: 0, 0: 4 */
        uint64_t stall_ms;      /* an attempt that receives nothing for this long is retried; 0: 10 s */
        uint64_t connect_timeout_ms; /* 0: 10 s */
        uint64_t backoff_base_ms;    /* 0: 100 ms (doubles per attempt, capped at 5 s, with jitter) */
        const char *user_agent; /* NULL: "holdfast/VERSION" */
} HttpConfig;

typedef enum HttpMethod {
        HTTP_GET,
        HTTP_HEAD,
        HTTP_POST,
} HttpMethod;

/* What a request is for; counted separately in the statistics. */
typedef enum HttpKind {
        HTTP_KIND_MANIFEST,
        HTTP_KIND_BLOB_HEAD,
        HTTP_KIND_BLOB_GET,
        HTTP_KIND_TOKEN,
        HTTP_KIND_OTHER,
        _HTTP_KIND_MAX,
} HttpKind;

typedef struct HttpStats {
        uint64_t requests[_HTTP_KIND_MAX]; /* requests submitted */
        uint64_t attempts[_HTTP_KIND_MAX]; /* transfers started, retries included */
        uint64_t retries[_HTTP_KIND_MAX];
        uint64_t failures[_HTTP_KIND_MAX]; /* requests that ended with an error */
        uint64_t bytes[_HTTP_KIND_MAX];    /* body bytes received */
        uint64_t timeouts;                 /* requests ended by their deadline */
        uint64_t queued;                   /* requests that waited for the per-host cap */
        uint64_t connections;              /* new connections opened */
        uint64_t http2;                    /* transfers that ran over HTTP/2 */
} HttpStats;

typedef struct HttpRequest HttpRequest;
typedef void (*HttpDoneFn)(HttpRequest *req, void *userdata);

struct HttpRequest {
        /* ---- in: set by the caller before submission ---- */
        HttpMethod method;
        HttpKind kind;
        const char *url;
        const char *authorization;   /* "Bearer ..." / "Basic ...", or NULL; never logged */
        const char *const *headers;  /* extra "Name: value" lines */
        size_t n_headers;
        const char *post_body;       /* POST: the body (a form) */
        size_t post_len;
        const char *post_type;       /* POST: its Content-Type */

        /* A range request: [range_off, range_off + range_len) into dest.
         * The answer must be 206 with exactly that Content-Range, or, when
         * allow_full, 200 with the whole body (the range is cut out). */
        bool range;
        uint64_t range_off;
        uint64_t range_len;          /* > 0 */
        void *dest;                  /* range_len bytes */
        bool allow_full;

        /* With range: a suffix range instead ("bytes=-range_len", range_off
         * unused), for an entity whose size we do not know yet. The answer
         * must be 206 with "bytes T-n-(T-1)/T", T a number and n =
         * MIN(range_len, T), and exactly n bytes, which go to dest; or 200
         * with the whole entity, buffered in body (larger than body_max:
         * -EFBIG, given up at once). Either way range_total is T. */
        bool range_suffix;

        size_t body_max;             /* buffered answers (not ranges; a suffix range's 200): larger is -EFBIG; 0: 4 MiB */
        uint64_t deadline_ns;        /* CLOCK_MONOTONIC; 0: now + 30 s */
        bool skip_verify;
        const char *ca_blob;         /* PEM certificates to trust instead of the system's, or NULL */
        size_t ca_blob_len;
        bool no_retry;               /* one attempt only */
        bool scheme_probe;           /* the URL's scheme is a guess: a failure with wrong_scheme is not retried */

        /* ---- out: valid after completion ---- */
        int error;                   /* 0, or -errno (see http_result_errno()) */
        long status;                 /* last HTTP status, 0 when none came */
        /* The last attempt failed the way a server speaking the other
         * scheme makes it fail: over https, the TLS handshake; over plain
         * http, no answer (a reset, a close), a TLS alert (not HTTP) or a
         * 400 (what Go's TLS server answers to a plain request). */
        bool wrong_scheme;
        StrBuf body;                 /* owned by the request: buffered body, or the start of an error body */
        char *location;              /* owned: Location of a 3xx */
        char *www_authenticate;      /* owned: every WWW-Authenticate, joined with ", " */
        char *content_type;          /* owned */
        char *docker_digest;         /* owned: Docker-Content-Digest */
        int64_t content_length;      /* -1 when unknown */
        int64_t range_total;         /* 206: the total after '/' in Content-Range; -1 when '*'.
                                      * A whole 200 body taken for a range: its length */
        unsigned attempts;
        ErrMsg msg;                  /* when error < 0: what went wrong, without credentials */

        /* ---- private: the fetch thread's ---- */
        struct HttpRequestPriv *priv;
};

int http_client_new(const HttpConfig *cfg, HttpClient **ret, ErrMsg *err);
/* Stops the fetch thread; requests still pending end with -ECANCELED. */
HttpClient *http_client_free(HttpClient *h);

/* Runs req to completion on the fetch thread and returns req->error. */
int http_request_run(HttpClient *h, HttpRequest *req);

/* Starts req; done(req, userdata) runs on the fetch thread when it is
 * over (it may free req). Returns -errno only when req was not taken. */
int http_request_submit(HttpClient *h, HttpRequest *req, HttpDoneFn done, void *userdata);

/* Frees the outputs (body, headers) so that req can be submitted again;
 * the inputs stay. */
void http_request_reset(HttpRequest *req);

void http_client_stats(HttpClient *h, HttpStats *ret);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t http_now_ns(void);

/* url without its query string and fragment, for messages: presigned
 * blob-store URLs carry credentials there. Writes into buf. */
const char *http_url_for_message(const char *url, char *buf, size_t size);
