/* The fetch thread (see http.h). It owns the libuv loop, the curl multi
 * handle, every easy handle, every socket watcher, and every submitted
 * request until its done() runs. Other threads touch only `incoming`
 * and `stopping`, under `mutex`, and wake the loop with the uv_async.
 *
 * A request goes NEW -> (QUEUED) -> ACTIVE -> [BACKOFF -> ACTIVE]* ->
 * DONE. Its embedded uv_timer_t measures the deadline while it is queued
 * or in flight (curl's own CURLOPT_TIMEOUT_MS is the first line, the
 * timer the backstop) and the backoff delay while it waits to retry;
 * backoff never starts when it would end past the deadline. A request
 * holds a slot of its host's concurrency cap from admission to DONE.
 * done() runs from the timer's close callback, so that nothing of the
 * loop refers to the request any more when its owner frees it.
 *
 * Each attempt gets a fresh easy handle (connections live in the multi
 * handle's cache and are reused across them). The body goes straight
 * into the caller's buffer for ranges; a failed attempt may leave junk
 * there, which the next attempt overwrites or the error makes moot. */
#include "worker/fetch/http.h"

/* before uv.h, whose sys/param.h has MIN and MAX of its own */
#include "common/util/macro.h"

#include <curl/curl.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

#define DEFAULT_DEADLINE_NS (30ull * 1000000000ull)
#define DEFAULT_BODY_MAX (4u << 20)
#define ERROR_BODY_MAX 4096
#define BACKOFF_CAP_MS 5000

typedef enum ReqState {
        R_NEW,
        R_QUEUED,
        R_ACTIVE,
        R_BACKOFF,
        R_DONE,
} ReqState;

typedef enum BodyMode {
        BODY_UNDECIDED,
        BODY_RANGE,      /* 206 into dest */
        BODY_RANGE_FULL, /* 200 with the whole body: cut the range out */
        BODY_BUFFER,     /* 2xx into req->body */
        BODY_ERROR,      /* non-2xx: keep the start for messages */
} BodyMode;

typedef struct HostSlot HostSlot;
typedef struct HttpRequestPriv Priv;

struct HostSlot {
        char *key;      /* owned: scheme://host:port */
        unsigned active;
        Priv *queue_head, *queue_tail;
        HostSlot *next;
};

typedef struct SockCtx {
        uv_poll_t poll;
        curl_socket_t fd;
        HttpClient *h;
        struct SockCtx *prev, *next;
} SockCtx;

struct HttpRequestPriv {
        HttpClient *h;
        HttpRequest *req;
        HttpDoneFn done;
        void *userdata;
        ReqState state;
        uv_timer_t timer;
        HostSlot *slot;
        bool holds_slot;
        Priv *next;            /* incoming list or host queue */
        Priv *live_prev, *live_next; /* every request the loop owns */

        /* the current attempt */
        CURL *easy;
        struct curl_slist *hdrs;
        char curl_error[CURL_ERROR_SIZE];
        BodyMode mode;
        uint64_t pos;          /* body bytes of this attempt */
        uint64_t want;         /* BODY_RANGE: the body's length, as the Content-Range says */
        char *content_range;   /* owned */
        char *retry_after;     /* owned */
        uint64_t progress_ns;  /* when this attempt last received anything */
        int own_error;         /* our verdict on the body, -errno */
        bool own_retryable;
        char own_msg[200];
        /* the last failure, for the final message */
        unsigned attempts;     /* transfers started */
        char last_msg[300];
};

struct HttpClient {
        HttpConfig cfg;
        char *user_agent;                /* owned */
        uv_loop_t loop;
        uv_async_t async;
        uv_timer_t curl_timer;
        CURLM *multi;
        pthread_t thread;
        bool thread_started;

        pthread_mutex_t mutex;
        Priv *incoming_head, *incoming_tail; /* protected by mutex */
        bool stopping;                       /* protected by mutex */

        /* fetch thread only */
        HostSlot *hosts;
        Priv *live;
        SockCtx *socks;
        bool closing;
        uint64_t rng;

        struct {
                _Atomic uint64_t requests[_HTTP_KIND_MAX], attempts[_HTTP_KIND_MAX], retries[_HTTP_KIND_MAX],
                        failures[_HTTP_KIND_MAX], bytes[_HTTP_KIND_MAX];
                _Atomic uint64_t timeouts, queued, connections, http2;
        } stats;
};

uint64_t http_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

const char *http_url_for_message(const char *url, char *buf, size_t size) {
        if (!url)
                return "(no URL)";
        size_t n = strcspn(url, "?#");
        snprintf(buf, size, "%.*s%s", (int) n, url, url[n] ? "?..." : "");
        return buf;
}

static const char *method_name(HttpMethod m) {
        switch (m) {
        case HTTP_GET: return "GET";
        case HTTP_HEAD: return "HEAD";
        case HTTP_POST: return "POST";
        }
        return "?";
}

void http_request_reset(HttpRequest *req) {
        strbuf_done(&req->body);
        free(req->location);
        free(req->www_authenticate);
        free(req->content_type);
        free(req->docker_digest);
        req->location = req->www_authenticate = req->content_type = req->docker_digest = NULL;
        req->error = 0;
        req->status = 0;
        req->wrong_scheme = false;
        req->content_length = -1;
        req->range_total = -1;
        req->attempts = 0;
        req->msg.text[0] = 0;
}

/* ---- the one place where CURLcodes and statuses become -errno ---- */

typedef struct Verdict {
        int error;       /* 0: a usable answer */
        bool retryable;
        bool tls;        /* the TLS handshake failed: the server may speak plain http */
        bool not_http;   /* over plain http, what a TLS server causes: no answer, no HTTP, or a 400 */
} Verdict;

static Verdict http_result_errno(CURLcode cc, long status) {
        switch (cc) {
        case CURLE_OK:
                break;
        case CURLE_COULDNT_CONNECT:
                return (Verdict) { -ECONNREFUSED, true, false };
        case CURLE_OPERATION_TIMEDOUT:
                return (Verdict) { -ETIMEDOUT, true, false };
        case CURLE_PARTIAL_FILE:
                return (Verdict) { -EIO, true, false };
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
                return (Verdict) { -ECONNRESET, true, false, true };
        case CURLE_WEIRD_SERVER_REPLY:
                return (Verdict) { -EIO, true, false, true };
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_BAD_CONTENT_ENCODING:
                return (Verdict) { -EIO, true, false };
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return (Verdict) { -EHOSTUNREACH, false, false };
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_INVALIDCERTSTATUS:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_USE_SSL_FAILED:
                return (Verdict) { -EPROTO, false, true };
        case CURLE_UNSUPPORTED_PROTOCOL:
                /* our URLs are http(s) (CURLOPT_PROTOCOLS_STR): this is an
                 * answer that is not HTTP ("Received HTTP/0.9"), such as
                 * a TLS alert */
                return (Verdict) { -EPROTO, false, false, true };
        case CURLE_URL_MALFORMAT:
                return (Verdict) { -EINVAL, false, false };
        case CURLE_OUT_OF_MEMORY:
                return (Verdict) { -ENOMEM, false, false };
        case CURLE_FILESIZE_EXCEEDED:
                return (Verdict) { -EFBIG, false, false };
        case CURLE_ABORTED_BY_CALLBACK:
                return (Verdict) { -ECANCELED, false, false };
        default:
                return (Verdict) { -EIO, false, false };
        }
        if (status >= 200 && status < 400)
                return (Verdict) { 0, false, false };
        switch (status) {
        case 401:
        case 403:
                return (Verdict) { -EACCES, false, false };
        case 404:
        case 410:
                return (Verdict) { -ENOENT, false, false };
        case 408:
        case 429:
        case 500:
        case 502:
        case 503:
        case 504:
                return (Verdict) { -EIO, true, false };
        case 416:
                return (Verdict) { -ERANGE, false, false };
        case 400:
                /* also what Go's TLS server answers to plain http ("Client
                 * sent an HTTP request to an HTTPS server.") */
                return (Verdict) { -EIO, false, false, true };
        default:
                return (Verdict) { -EIO, false, false };
        }
}

/* ---- curl callbacks ---- */

static char *header_value(const char *buf, size_t len, const char *name) {
        size_t nlen = strlen(name);
        if (len <= nlen || strncasecmp(buf, name, nlen) != 0 || buf[nlen] != ':')
                return NULL;
        const char *v = buf + nlen + 1, *end = buf + len;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
                end--;
        return strndup(v, (size_t) (end - v));
}

static void replace(char **slot, char *v) {
        free(*slot);
        *slot = v;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata) {
        Priv *p = userdata;
        HttpRequest *req = p->req;
        size_t len = size * nitems;
        p->progress_ns = http_now_ns();
        if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
                /* a new response (after a 100 Continue, say): forget the last one's headers */
                replace(&req->location, NULL);
                replace(&req->www_authenticate, NULL);
                replace(&req->content_type, NULL);
                replace(&req->docker_digest, NULL);
                replace(&p->content_range, NULL);
                replace(&p->retry_after, NULL);
                return len;
        }
        char *v;
        if ((v = header_value(buf, len, "location")))
                replace(&req->location, v);
        else if ((v = header_value(buf, len, "content-type")))
                replace(&req->content_type, v);
        else if ((v = header_value(buf, len, "docker-content-digest")))
                replace(&req->docker_digest, v);
        else if ((v = header_value(buf, len, "content-range")))
                replace(&p->content_range, v);
        else if ((v = header_value(buf, len, "retry-after")))
                replace(&p->retry_after, v);
        else if ((v = header_value(buf, len, "www-authenticate"))) {
                if (req->www_authenticate) {
                        char *joined;
                        if (asprintf(&joined, "%s, %s", req->www_authenticate, v) >= 0)
                                replace(&req->www_authenticate, joined);
                        free(v);
                } else
                        req->www_authenticate = v;
        }
        return len;
}

static bool parse_u64(const char **pp, uint64_t *ret) {
        const char *p = *pp;
        uint64_t v = 0;
        if (*p < '0' || *p > '9')
                return false;
        while (*p >= '0' && *p <= '9') {
                if (v > (UINT64_MAX - 9) / 10)
                        return false;
                v = v * 10 + (uint64_t) (*p++ - '0');
        }
        *pp = p;
        *ret = v;
        return true;
}

/* "bytes FIRST-LAST/TOTAL" of a suffix range request (see http.h): the
 * Content-Range is the only word on the entity's size, so nothing about
 * it is taken on trust. An empty entity has no last byte to name (Go
 * says "bytes 0--1/0"): -ERANGE, as a 416 would be. */
static int content_range_check_suffix(Priv *p) {
        HttpRequest *req = p->req;
        const char *s = p->content_range, *slash = s ? strrchr(s, '/') : NULL;
        uint64_t first, last, total;
        if (!s || strncasecmp(s, "bytes ", 6) != 0)
                goto bad;
        if (slash && strcmp(slash, "/0") == 0) {
                snprintf(p->own_msg, sizeof(p->own_msg), "Content-Range \"%.60s\": the entity is empty", s);
                p->own_error = -ERANGE;
                p->own_retryable = false;
                return -ERANGE;
        }
        s += 6;
        while (*s == ' ')
                s++;
        if (!parse_u64(&s, &first) || *s++ != '-' || !parse_u64(&s, &last) || *s++ != '/' ||
            !parse_u64(&s, &total) || *s || total == 0 || total > INT64_MAX)
                goto bad;
        uint64_t n = MIN(req->range_len, total);
        if (last != total - 1 || first != total - n)
                goto bad;
        req->range_total = (int64_t) total;
        p->want = n;
        return 0;
bad:
        snprintf(p->own_msg, sizeof(p->own_msg),
                 "answered the last %" PRIu64 " bytes with Content-Range \"%.60s\" (not the end of a known size)",
                 req->range_len, p->content_range ? p->content_range : "(none)");
        p->own_error = -EIO;
        p->own_retryable = true;
        return -EIO;
}

/* "bytes FIRST-LAST/TOTAL" (TOTAL may be '*') must be exactly the range asked for. */
static int content_range_check(Priv *p) {
        HttpRequest *req = p->req;
        uint64_t want_last = req->range_off + req->range_len - 1;
        const char *s = p->content_range;
        uint64_t first, last, total;
        if (req->range_suffix)
                return content_range_check_suffix(p);
        if (!s)
                goto bad;
        if (strncasecmp(s, "bytes ", 6) != 0)
                goto bad;
        s += 6;
        while (*s == ' ')
                s++;
        if (!parse_u64(&s, &first) || *s++ != '-' || !parse_u64(&s, &last) || *s++ != '/')
                goto bad;
        if (*s == '*') {
                s++;
                req->range_total = -1;
        } else {
                if (!parse_u64(&s, &total) || total > INT64_MAX || last >= total)
                        goto bad;
                req->range_total = (int64_t) total;
        }
        if (*s)
                goto bad;
        if (first != req->range_off || last != want_last)
                goto bad;
        p->want = req->range_len;
        return 0;
bad:
        snprintf(p->own_msg, sizeof(p->own_msg), "answered bytes %" PRIu64 "-%" PRIu64 " with Content-Range \"%.60s\"",
                 req->range_off, want_last, p->content_range ? p->content_range : "(none)");
        p->own_error = -EIO;
        p->own_retryable = true;
        return -EIO;
}

static size_t body_max(const HttpRequest *req) {
        return req->body_max ? req->body_max : DEFAULT_BODY_MAX;
}

/* An answer to buffer whose Content-Length is over the limit is given up
 * before its first byte is kept (a registry ignoring a suffix range may
 * be sending gigabytes). */
static bool body_too_large(Priv *p) {
        curl_off_t clen = -1;
        size_t max = body_max(p->req);
        curl_easy_getinfo(p->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &clen);
        if (clen < 0 || (uint64_t) clen <= max)
                return false;
        snprintf(p->own_msg, sizeof(p->own_msg), "answer of %" PRId64 " bytes is larger than %zu", (int64_t) clen, max);
        p->own_error = -EFBIG;
        p->own_retryable = false;
        return true;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata) {
        Priv *p = userdata;
        HttpRequest *req = p->req;
        size_t n = size * nmemb;

        p->progress_ns = http_now_ns();
        if (p->mode == BODY_UNDECIDED) {
                long status = 0;
                curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
                if (status < 200 || status >= 300)
                        p->mode = BODY_ERROR;
                else if (!req->range) {
                        if (body_too_large(p))
                                return 0;
                        p->mode = BODY_BUFFER;
                } else if (status == 206) {
                        if (content_range_check(p) < 0)
                                return 0;
                        p->mode = BODY_RANGE;
                } else if (status == 200 && req->range_suffix) {
                        /* the whole entity: taken only when it is small */
                        if (body_too_large(p))
                                return 0;
                        p->mode = BODY_BUFFER;
                } else if (status == 200 && req->allow_full) {
                        p->mode = BODY_RANGE_FULL;
                } else {
                        snprintf(p->own_msg, sizeof(p->own_msg),
                                 "answered a range request with HTTP %ld instead of 206 Partial Content", status);
                        p->own_error = -EIO;
                        p->own_retryable = true;
                        return 0;
                }
        }
        atomic_fetch_add(&p->h->stats.bytes[req->kind], n);

        switch (p->mode) {
        case BODY_RANGE:
                if (n > p->want - p->pos) {
                        snprintf(p->own_msg, sizeof(p->own_msg), "sent more than the %" PRIu64 " bytes asked for",
                                 p->want);
                        p->own_error = -EIO;
                        p->own_retryable = true;
                        return 0;
                }
                memcpy((uint8_t *) req->dest + p->pos, data, n);
                p->pos += n;
                return n;
        case BODY_RANGE_FULL: {
                uint64_t a = p->pos, b = p->pos + n;
                uint64_t lo = MAX(a, req->range_off), hi = MIN(b, req->range_off + req->range_len);
                if (lo < hi)
                        memcpy((uint8_t *) req->dest + (lo - req->range_off), data + (lo - a), hi - lo);
                p->pos = b;
                return n;
        }
        case BODY_BUFFER: {
                size_t max = body_max(req);
                if (n > max - MIN(max, req->body.len)) {
                        snprintf(p->own_msg, sizeof(p->own_msg), "answer is larger than %zu bytes", max);
                        p->own_error = -EFBIG;
                        p->own_retryable = false;
                        return 0;
                }
                if (strbuf_append(&req->body, data, n) < 0) {
                        p->own_error = -ENOMEM;
                        snprintf(p->own_msg, sizeof(p->own_msg), "out of memory");
                        return 0;
                }
                p->pos += n;
                return n;
        }
        case BODY_ERROR:
                if (req->body.len < ERROR_BODY_MAX)
                        (void) strbuf_append(&req->body, data, MIN(n, ERROR_BODY_MAX - req->body.len));
                p->pos += n;
                return n;
        case BODY_UNDECIDED:
                break;
        }
        return 0;
}

/* ---- requests ---- */

static void on_req_timer(uv_timer_t *t);
static void req_finish(Priv *p, int error);
static void check_multi_info(HttpClient *h);

static uint64_t remaining_ms(Priv *p) {
        uint64_t now = http_now_ns();
        return p->req->deadline_ns > now ? (p->req->deadline_ns - now + 999999) / 1000000 : 0;
}

static void attempt_cleanup(Priv *p) {
        if (p->easy) {
                curl_multi_remove_handle(p->h->multi, p->easy);
                curl_easy_cleanup(p->easy);
                p->easy = NULL;
        }
        curl_slist_free_all(p->hdrs);
        p->hdrs = NULL;
        replace(&p->content_range, NULL);
        replace(&p->retry_after, NULL);
}

static int slist_add(struct curl_slist **l, const char *s) {
        struct curl_slist *n = curl_slist_append(*l, s);
        if (!n)
                return -ENOMEM;
        *l = n;
        return 0;
}

static int attempt_setup(Priv *p, uint64_t left_ms) {
        HttpClient *h = p->h;
        HttpRequest *req = p->req;
        CURL *e = p->easy;
        int r = 0;
        char line[128];

        curl_easy_setopt(e, CURLOPT_URL, req->url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, p);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
        /* Waiting for a connection that may multiplex saves TLS
         * handshakes over HTTP/2, which we only ask for over TLS; over
         * plain http curl would still wait for the first answer of a
         * new connection before opening a second one, and a burst of
         * requests (the layers of an image opening together) would go
         * one round trip at a time. */
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(req->url, "https://", 8) == 0 ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
        curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, p->curl_error);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, p);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) MIN(left_ms, (uint64_t) LONG_MAX));
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) MIN(left_ms, h->cfg.connect_timeout_ms));
        if (req->skip_verify) {
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
        }
        if (req->ca_blob) {
                struct curl_blob blob = {
                        .data = (void *) req->ca_blob,
                        .len = req->ca_blob_len,
                        .flags = CURL_BLOB_COPY,
                };
                curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
        }

        switch (req->method) {
        case HTTP_HEAD:
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
                break;
        case HTTP_POST:
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->post_len);
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->post_body ? req->post_body : "");
                if (req->post_type) {
                        snprintf(line, sizeof(line), "Content-Type: %s", req->post_type);
                        r = slist_add(&p->hdrs, line);
                }
                if (r >= 0)
                        r = slist_add(&p->hdrs, "Expect:");
                break;
        case HTTP_GET:
                curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
                break;
        }
        if (r >= 0 && req->range && req->range_suffix) {
                snprintf(line, sizeof(line), "Range: bytes=-%" PRIu64, req->range_len);
                r = slist_add(&p->hdrs, line);
        } else if (r >= 0 && req->range) {
                snprintf(line, sizeof(line), "Range: bytes=%" PRIu64 "-%" PRIu64, req->range_off,
                         req->range_off + req->range_len - 1);
                r = slist_add(&p->hdrs, line);
        }
        if (r >= 0 && req->authorization) {
                _cleanup_free_ char *a = NULL;
                if (asprintf(&a, "Authorization: %s", req->authorization) < 0)
                        return -ENOMEM;
                r = slist_add(&p->hdrs, a);
                explicit_bzero(a, strlen(a));
        }
        for (size_t i = 0; r >= 0 && i < req->n_headers; i++)
                r = slist_add(&p->hdrs, req->headers[i]);
        if (r < 0)
                return r;
        if (p->hdrs)
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, p->hdrs);
        return 0;
}

static uint64_t stall_tick_ms(HttpClient *h) {
        return MIN(MAX(h->cfg.stall_ms / 4, (uint64_t) 10), (uint64_t) 1000);
}

static void attempt_done(Priv *p, CURLcode cc);

static void attempt_start(Priv *p) {
        HttpClient *h = p->h;
        uint64_t left = remaining_ms(p);
        if (left == 0) {
                atomic_fetch_add(&h->stats.timeouts, 1);
                req_finish(p, -ETIMEDOUT);
                return;
        }
        p->mode = BODY_UNDECIDED;
        p->pos = 0;
        p->want = 0;
        p->own_error = 0;
        p->own_retryable = false;
        p->own_msg[0] = 0;
        p->curl_error[0] = 0;
        http_request_reset(p->req);
        p->easy = curl_easy_init();
        if (!p->easy) {
                req_finish(p, -ENOMEM);
                return;
        }
        int r = attempt_setup(p, left);
        if (r < 0) {
                attempt_cleanup(p);
                req_finish(p, r);
                return;
        }
        if (curl_multi_add_handle(h->multi, p->easy) != CURLM_OK) {
                curl_easy_cleanup(p->easy);
                p->easy = NULL;
                attempt_cleanup(p);
                req_finish(p, -ENOMEM);
                return;
        }
        p->state = R_ACTIVE;
        p->attempts++;
        p->progress_ns = http_now_ns();
        atomic_fetch_add(&h->stats.attempts[p->req->kind], 1);
        /* ticks while in flight: the deadline, and stalls. curl's own
         * low-speed check averages over seconds of history, so a transfer
         * that stops after a fast start would go unnoticed for too long. */
        uint64_t tick = stall_tick_ms(h);
        uv_timer_start(&p->timer, on_req_timer, MIN(tick, left), tick);
}

static uint64_t rng_next(HttpClient *h) {
        h->rng ^= h->rng >> 12;
        h->rng ^= h->rng << 25;
        h->rng ^= h->rng >> 27;
        return h->rng * 2685821657736338717ull;
}

/* Retry-After: delay-seconds or an HTTP-date; -1 when absent or unreadable. */
static int64_t retry_after_ms(const char *v) {
        if (!v)
                return -1;
        const char *s = v;
        uint64_t secs;
        if (parse_u64(&s, &secs) && *s == 0)
                return secs > 86400 ? 86400 * 1000 : (int64_t) secs * 1000;
        time_t when = curl_getdate(v, NULL);
        if (when < 0)
                return -1;
        time_t now = time(NULL);
        return when > now ? (int64_t) (when - now) * 1000 : 0;
}

static void attempt_done(Priv *p, CURLcode cc) {
        HttpClient *h = p->h;
        HttpRequest *req = p->req;
        long status = 0, version = 0, conns = 0;
        curl_off_t clen = -1;
        curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(p->easy, CURLINFO_HTTP_VERSION, &version);
        curl_easy_getinfo(p->easy, CURLINFO_NUM_CONNECTS, &conns);
        curl_easy_getinfo(p->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &clen);
        if (conns > 0)
                atomic_fetch_add(&h->stats.connections, (uint64_t) conns);
        if (version == CURL_HTTP_VERSION_2_0)
                atomic_fetch_add(&h->stats.http2, 1);
        req->status = status;
        req->content_length = clen;
        _cleanup_free_ char *retry_after = TAKE_PTR(p->retry_after);

        Verdict v;
        char msg[sizeof(p->last_msg)];
        if (p->own_error < 0) {
                v = (Verdict) { p->own_error, p->own_retryable, false };
                snprintf(msg, sizeof(msg), "%s", p->own_msg);
        } else {
                v = http_result_errno(cc, status);
                if (cc != CURLE_OK)
                        snprintf(msg, sizeof(msg), "%s", p->curl_error[0] ? p->curl_error : curl_easy_strerror(cc));
                else if (v.error < 0)
                        snprintf(msg, sizeof(msg), "HTTP %ld", status);
                else
                        msg[0] = 0;
        }
        /* a 2xx range answer whose body does not add up */
        if (v.error == 0 && status >= 200 && status < 300 && req->method != HTTP_HEAD && req->range) {
                if (p->mode == BODY_UNDECIDED && status == 206) {
                        /* no body at all: the headers may still be wrong */
                        if (content_range_check(p) < 0) {
                                v = (Verdict) { p->own_error, p->own_retryable, false };
                                snprintf(msg, sizeof(msg), "%s", p->own_msg);
                        } else {
                                v = (Verdict) { -EIO, true, false };
                                snprintf(msg, sizeof(msg), "short body: 0 of %" PRIu64 " bytes", p->want);
                        }
                } else if (p->mode == BODY_RANGE) {
                        if (p->pos != p->want) {
                                v = (Verdict) { -EIO, true, false };
                                snprintf(msg, sizeof(msg), "short body: %" PRIu64 " of %" PRIu64 " bytes", p->pos,
                                         p->want);
                        }
                } else if (req->range_suffix && status == 200 &&
                           (p->mode == BODY_BUFFER || p->mode == BODY_UNDECIDED)) {
                        req->range_total = (int64_t) p->pos; /* the whole entity, in body */
                } else if (p->mode == BODY_RANGE_FULL || (p->mode == BODY_UNDECIDED && status == 200 && req->allow_full)) {
                        if (p->pos < req->range_off + req->range_len) {
                                v = (Verdict) { -EIO, true, false };
                                snprintf(msg, sizeof(msg),
                                         "whole body of %" PRIu64 " bytes ends before bytes %" PRIu64 "-%" PRIu64,
                                         p->pos, req->range_off, req->range_off + req->range_len - 1);
                        } else
                                req->range_total = (int64_t) p->pos;
                } else {
                        v = (Verdict) { -EIO, true, false };
                        snprintf(msg, sizeof(msg), "answered a range request with HTTP %ld and no body", status);
                }
        }
        req->wrong_scheme = strncasecmp(req->url, "https://", 8) == 0 ? v.tls : v.not_http;

        attempt_cleanup(p);
        if (v.error == 0) {
                req_finish(p, 0);
                return;
        }
        memcpy(p->last_msg, msg, sizeof(msg));

        if (!v.retryable || req->no_retry || (req->scheme_probe && req->wrong_scheme) ||
            p->attempts > h->cfg.retries) {
                req_finish(p, v.error);
                return;
        }
        uint64_t base = h->cfg.backoff_base_ms << MIN(p->attempts - 1, 16u);
        base = MIN(base, (uint64_t) BACKOFF_CAP_MS);
        uint64_t delay = base / 2 + rng_next(h) % (base / 2 + 1); /* "equal jitter" */
        int64_t ra = (status == 429 || status == 503) ? retry_after_ms(retry_after) : -1;
        if (ra > 0 && (uint64_t) ra > delay)
                delay = (uint64_t) ra;
        uint64_t left = remaining_ms(p);
        if (delay >= left) {
                size_t n = strlen(p->last_msg);
                snprintf(p->last_msg + n, sizeof(p->last_msg) - n, "%s; no time left for another attempt",
                         ra > 0 ? " (its Retry-After ends past the deadline)" : "");
                req_finish(p, v.error);
                return;
        }
        atomic_fetch_add(&h->stats.retries[req->kind], 1);
        p->state = R_BACKOFF;
        uv_timer_start(&p->timer, on_req_timer, delay, 0);
}

static HostSlot *host_slot_get(HttpClient *h, const char *url) {
        /* scheme://authority: enough to tell hosts (and ports) apart */
        const char *sep = strstr(url, "://");
        size_t n = sep ? (size_t) (sep - url) + 3 + strcspn(sep + 3, "/?#") : strlen(url);
        for (HostSlot *s = h->hosts; s; s = s->next)
                if (strlen(s->key) == n && strncmp(s->key, url, n) == 0)
                        return s;
        HostSlot *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->key = strndup(url, n);
        if (!s->key) {
                free(s);
                return NULL;
        }
        s->next = h->hosts;
        h->hosts = s;
        return s;
}

static void queue_remove(Priv *p) {
        HostSlot *s = p->slot;
        Priv **pp = &s->queue_head, *prev = NULL;
        while (*pp && *pp != p) {
                prev = *pp;
                pp = &(*pp)->next;
        }
        if (*pp) {
                *pp = p->next;
                if (s->queue_tail == p)
                        s->queue_tail = prev;
        }
        p->next = NULL;
}

/* Gives p's slot to the requests waiting for the same host. */
static void slot_release(Priv *p) {
        HostSlot *s = p->slot;
        if (!p->holds_slot)
                return;
        p->holds_slot = false;
        s->active--;
        while (s->queue_head && s->active < p->h->cfg.max_per_host && !p->h->closing) {
                Priv *q = s->queue_head;
                queue_remove(q);
                s->active++;
                q->holds_slot = true;
                uv_timer_stop(&q->timer);
                attempt_start(q);
        }
}

static void on_req_closed(uv_handle_t *handle) {
        Priv *p = container_of(handle, Priv, timer);
        HttpRequest *req = p->req;
        HttpDoneFn done = p->done;
        void *userdata = p->userdata;
        req->priv = NULL;
        free(p);
        done(req, userdata);
}

static void req_finish(Priv *p, int error) {
        HttpClient *h = p->h;
        HttpRequest *req = p->req;
        char ubuf[256];
        if (p->state == R_DONE)
                return;
        if (p->state == R_QUEUED)
                queue_remove(p);
        attempt_cleanup(p);
        p->state = R_DONE;
        req->attempts = p->attempts;
        req->error = error;
        if (error < 0) {
                atomic_fetch_add(&h->stats.failures[req->kind], 1);
                const char *url = http_url_for_message(req->url, ubuf, sizeof(ubuf));
                if (error == -ETIMEDOUT && p->last_msg[0])
                        errmsg_set(&req->msg, error, "%s %s: no answer within the deadline after %u attempt%s (last: %s)",
                                   method_name(req->method), url, p->attempts, p->attempts == 1 ? "" : "s",
                                   p->last_msg);
                else if (error == -ETIMEDOUT)
                        errmsg_set(&req->msg, error, "%s %s: no answer within the deadline", method_name(req->method),
                                   url);
                else if (error == -ECANCELED)
                        errmsg_set(&req->msg, error, "%s %s: cancelled, the client is shutting down",
                                   method_name(req->method), url);
                else if (p->last_msg[0])
                        errmsg_set(&req->msg, error, "%s %s: %s%s", method_name(req->method), url, p->last_msg,
                                   p->attempts > 1 ? " (after retries)" : "");
                else
                        errmsg_set(&req->msg, error, "%s %s: %s", method_name(req->method), url, strerror(-error));
        }
        if (p->slot)
                slot_release(p);
        uv_timer_stop(&p->timer);
        /* unlink from the live list now: nothing may find p after this */
        if (p->live_prev)
                p->live_prev->live_next = p->live_next;
        else
                h->live = p->live_next;
        if (p->live_next)
                p->live_next->live_prev = p->live_prev;
        p->live_prev = p->live_next = NULL;
        uv_close((uv_handle_t *) &p->timer, on_req_closed);
}

static void on_req_timer(uv_timer_t *t) {
        Priv *p = container_of(t, Priv, timer);
        switch (p->state) {
        case R_BACKOFF:
                attempt_start(p);
                break;
        case R_QUEUED:
                atomic_fetch_add(&p->h->stats.timeouts, 1);
                req_finish(p, -ETIMEDOUT);
                break;
        case R_ACTIVE: {
                uint64_t now = http_now_ns();
                if (now >= p->req->deadline_ns) {
                        atomic_fetch_add(&p->h->stats.timeouts, 1);
                        req_finish(p, -ETIMEDOUT);
                } else if (now - p->progress_ns >= p->h->cfg.stall_ms * 1000000ull) {
                        /* a stalled attempt: give it up and retry */
                        p->own_error = -ETIMEDOUT;
                        p->own_retryable = true;
                        snprintf(p->own_msg, sizeof(p->own_msg), "nothing received for %" PRIu64 " ms",
                                 (now - p->progress_ns) / 1000000);
                        attempt_done(p, CURLE_OPERATION_TIMEDOUT);
                } else if (p->req->deadline_ns - now < stall_tick_ms(p->h) * 1000000ull) {
                        /* wake exactly at the deadline */
                        uv_timer_start(&p->timer, on_req_timer, (p->req->deadline_ns - now + 999999) / 1000000, 0);
                }
                break;
        }
        default:
                break;
        }
}

/* A new request reaches the fetch thread. */
static void req_admit(HttpClient *h, Priv *p) {
        uv_timer_init(&h->loop, &p->timer);
        p->live_next = h->live;
        if (h->live)
                h->live->live_prev = p;
        h->live = p;
        p->slot = host_slot_get(h, p->req->url);
        if (!p->slot) {
                req_finish(p, -ENOMEM);
                return;
        }
        if (p->slot->active < h->cfg.max_per_host) {
                p->slot->active++;
                p->holds_slot = true;
                attempt_start(p);
                return;
        }
        /* wait for the host, but not past the deadline */
        atomic_fetch_add(&h->stats.queued, 1);
        p->state = R_QUEUED;
        if (p->slot->queue_tail)
                p->slot->queue_tail->next = p;
        else
                p->slot->queue_head = p;
        p->slot->queue_tail = p;
        uint64_t left = remaining_ms(p);
        uv_timer_start(&p->timer, on_req_timer, left, 0);
}

/* ---- the loop side of curl ---- */

static void check_multi_info(HttpClient *h) {
        CURLMsg *msg;
        int pending;
        while ((msg = curl_multi_info_read(h->multi, &pending))) {
                if (msg->msg != CURLMSG_DONE)
                        continue;
                Priv *p = NULL;
                CURL *e = msg->easy_handle;
                CURLcode cc = msg->data.result;
                curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **) &p);
                if (p && p->easy == e)
                        attempt_done(p, cc);
        }
}

static void on_poll(uv_poll_t *poll, int status, int events) {
        SockCtx *c = container_of(poll, SockCtx, poll);
        HttpClient *h = c->h;
        int flags = 0;
        if (status < 0)
                flags = CURL_CSELECT_ERR;
        else {
                if (events & UV_READABLE)
                        flags |= CURL_CSELECT_IN;
                if (events & UV_WRITABLE)
                        flags |= CURL_CSELECT_OUT;
        }
        int running;
        curl_multi_socket_action(h->multi, c->fd, flags, &running); /* may close c */
        check_multi_info(h);
}

static void on_sock_closed(uv_handle_t *handle) {
        free(container_of(handle, SockCtx, poll));
}

static void sock_close(HttpClient *h, SockCtx *c) {
        if (c->prev)
                c->prev->next = c->next;
        else
                h->socks = c->next;
        if (c->next)
                c->next->prev = c->prev;
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *) &c->poll, on_sock_closed);
}

static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
        HttpClient *h = userp;
        SockCtx *c = socketp;
        (void) e;
        if (what == CURL_POLL_REMOVE) {
                if (c) {
                        if (!h->closing)
                                curl_multi_assign(h->multi, s, NULL);
                        sock_close(h, c);
                }
                return 0;
        }
        if (!c) {
                c = calloc(1, sizeof(*c));
                if (!c)
                        return -1;
                c->fd = s;
                c->h = h;
                if (uv_poll_init_socket(&h->loop, &c->poll, s) < 0) {
                        free(c);
                        return -1;
                }
                c->next = h->socks;
                if (h->socks)
                        h->socks->prev = c;
                h->socks = c;
                curl_multi_assign(h->multi, s, c);
        }
        int events = 0;
        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
                events |= UV_READABLE;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
                events |= UV_WRITABLE;
        uv_poll_start(&c->poll, events, on_poll);
        return 0;
}

static void on_curl_timeout(uv_timer_t *t) {
        HttpClient *h = container_of(t, HttpClient, curl_timer);
        int running;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_multi_info(h);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
        HttpClient *h = userp;
        (void) multi;
        if (timeout_ms < 0)
                uv_timer_stop(&h->curl_timer);
        else
                uv_timer_start(&h->curl_timer, on_curl_timeout, (uint64_t) timeout_ms, 0);
        return 0;
}

static void loop_shutdown(HttpClient *h) {
        h->closing = true;
        while (h->live)
                req_finish(h->live, -ECANCELED);
        /* closes the cached connections; their sockets' REMOVE comes back to on_curl_socket */
        curl_multi_cleanup(h->multi);
        h->multi = NULL;
        while (h->socks)
                sock_close(h, h->socks);
        uv_close((uv_handle_t *) &h->curl_timer, NULL);
        uv_close((uv_handle_t *) &h->async, NULL);
}

static void on_async(uv_async_t *a) {
        HttpClient *h = container_of(a, HttpClient, async);
        pthread_mutex_lock(&h->mutex);
        Priv *list = h->incoming_head;
        h->incoming_head = h->incoming_tail = NULL;
        bool stopping = h->stopping;
        pthread_mutex_unlock(&h->mutex);
        while (list) {
                Priv *p = list;
                list = p->next;
                p->next = NULL;
                req_admit(h, p);
        }
        if (stopping && !h->closing)
                loop_shutdown(h);
}

static void *fetch_thread(void *arg) {
        HttpClient *h = arg;
        uv_run(&h->loop, UV_RUN_DEFAULT);
        return NULL;
}

/* ---- public ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void) {
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int http_client_new(const HttpConfig *cfg, HttpClient **ret, ErrMsg *err) {
        pthread_once(&curl_once, curl_init);
        if (curl_init_result != CURLE_OK)
                return errmsg_set(err, -EIO, "libcurl initialisation failed: %s", curl_easy_strerror(curl_init_result));
        HttpClient *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->cfg = cfg ? *cfg : (HttpConfig) {};
        if (h->cfg.max_per_host == 0)
                h->cfg.max_per_host = 8;
        if (h->cfg.retries == 0)
                h->cfg.retries = 4;
        else if (h->cfg.retries == UINT_MAX)
                h->cfg.retries = 0;
        if (h->cfg.stall_ms == 0)
                h->cfg.stall_ms = 10000;
        if (h->cfg.connect_timeout_ms == 0)
                h->cfg.connect_timeout_ms = 10000;
        if (h->cfg.backoff_base_ms == 0)
                h->cfg.backoff_base_ms = 100;
        h->user_agent = strdup(h->cfg.user_agent ? h->cfg.user_agent : "holdfast/0.1");
        h->cfg.user_agent = NULL;
        h->rng = http_now_ns() | 1;
        pthread_mutex_init(&h->mutex, NULL);
        if (!h->user_agent) {
                pthread_mutex_destroy(&h->mutex);
                free(h);
                return -ENOMEM;
        }
        int r = uv_loop_init(&h->loop);
        if (r < 0) {
                free(h->user_agent);
                pthread_mutex_destroy(&h->mutex);
                free(h);
                return errmsg_set(err, r, "uv_loop_init: %s", uv_strerror(r));
        }
        h->multi = curl_multi_init();
        if (!h->multi) {
                uv_loop_close(&h->loop);
                free(h->user_agent);
                pthread_mutex_destroy(&h->mutex);
                free(h);
                return -ENOMEM;
        }
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 64L);
        uv_async_init(&h->loop, &h->async, on_async);
        uv_timer_init(&h->loop, &h->curl_timer);
        r = -pthread_create(&h->thread, NULL, fetch_thread, h);
        if (r < 0) {
                loop_shutdown(h);
                uv_run(&h->loop, UV_RUN_DEFAULT);
                uv_loop_close(&h->loop);
                free(h->user_agent);
                pthread_mutex_destroy(&h->mutex);
                free(h);
                return errmsg_set(err, r, "cannot start the fetch thread");
        }
        pthread_setname_np(h->thread, "hf-fetch");
        h->thread_started = true;
        *ret = h;
        return 0;
}

HttpClient *http_client_free(HttpClient *h) {
        if (!h)
                return NULL;
        pthread_mutex_lock(&h->mutex);
        h->stopping = true;
        pthread_mutex_unlock(&h->mutex);
        uv_async_send(&h->async);
        pthread_join(h->thread, NULL);
        uv_loop_close(&h->loop);
        while (h->hosts) {
                HostSlot *s = h->hosts;
                h->hosts = s->next;
                free(s->key);
                free(s);
        }
        free(h->user_agent);
        pthread_mutex_destroy(&h->mutex);
        free(h);
        return NULL;
}

int http_request_submit(HttpClient *h, HttpRequest *req, HttpDoneFn done, void *userdata) {
        Priv *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->h = h;
        p->req = req;
        p->done = done;
        p->userdata = userdata;
        req->priv = p;
        req->error = 0;
        req->status = 0;
        req->content_length = -1;
        req->range_total = -1;
        if (req->deadline_ns == 0)
                req->deadline_ns = http_now_ns() + DEFAULT_DEADLINE_NS;
        atomic_fetch_add(&h->stats.requests[req->kind], 1);
        pthread_mutex_lock(&h->mutex);
        if (h->stopping) {
                pthread_mutex_unlock(&h->mutex);
                req->priv = NULL;
                free(p);
                return -ECANCELED;
        }
        if (h->incoming_tail)
                h->incoming_tail->next = p;
        else
                h->incoming_head = p;
        h->incoming_tail = p;
        pthread_mutex_unlock(&h->mutex);
        uv_async_send(&h->async);
        return 0;
}

typedef struct Waiter {
        pthread_mutex_t mutex;
        pthread_cond_t cond;
        bool done;
} Waiter;

static void on_waiter_done(HttpRequest *req, void *userdata) {
        Waiter *w = userdata;
        (void) req;
        pthread_mutex_lock(&w->mutex);
        w->done = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->mutex);
}

int http_request_run(HttpClient *h, HttpRequest *req) {
        /* the fetch thread waiting for itself would never wake */
        assert(!pthread_equal(pthread_self(), h->thread));
        Waiter w = { .done = false };
        pthread_mutex_init(&w.mutex, NULL);
        pthread_cond_init(&w.cond, NULL);
        int r = http_request_submit(h, req, on_waiter_done, &w);
        if (r >= 0) {
                pthread_mutex_lock(&w.mutex);
                while (!w.done)
                        pthread_cond_wait(&w.cond, &w.mutex);
                pthread_mutex_unlock(&w.mutex);
                r = req->error;
        } else
                errmsg_set(&req->msg, r, "%s: %s", method_name(req->method), strerror(-r));
        pthread_cond_destroy(&w.cond);
        pthread_mutex_destroy(&w.mutex);
        return r;
}

void http_client_stats(HttpClient *h, HttpStats *ret) {
        *ret = (HttpStats) {};
        for (size_t k = 0; k < _HTTP_KIND_MAX; k++) {
                ret->requests[k] = atomic_load(&h->stats.requests[k]);
                ret->attempts[k] = atomic_load(&h->stats.attempts[k]);
                ret->retries[k] = atomic_load(&h->stats.retries[k]);
                ret->failures[k] = atomic_load(&h->stats.failures[k]);
                ret->bytes[k] = atomic_load(&h->stats.bytes[k]);
        }
        ret->timeouts = atomic_load(&h->stats.timeouts);
        ret->queued = atomic_load(&h->stats.queued);
        ret->connections = atomic_load(&h->stats.connections);
        ret->http2 = atomic_load(&h->stats.http2);
}
