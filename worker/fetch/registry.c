/* The registry client (see registry.h): the distribution API on top of
 * http.c, hosts.c and auth.c. It owns the per-domain endpoint cache, the
 * auth cache and the per-blob redirect cache. Runs on the callers'
 * threads and blocks them; HTTP itself runs on http.c's fetch thread.
 *
 * Invariants:
 *  - Authorization goes only to the endpoint's own origin (scheme, host
 *    and port); a redirect elsewhere (a blob store) gets none, and a 401
 *    from elsewhere is an error, not a challenge.
 *  - Every call computes one deadline when it starts and hands it to every
 *    request it makes, so no call outlives FetchConfig.timeout_ms.
 *  - A byte reaches the caller only from a 206 whose Content-Range is
 *    exactly the range asked for (a blob's tail: the end of the size it
 *    names), or a whole 200 body when allowed, from a blob whose size
 *    matches; whole-blob reads (a whole 200 for a tail, a tail that is
 *    the whole blob) and manifests are also checked against their digests.
 *  - Endpoint lists, once cached, live as long as the client; the hosts
 *    mutex guards only the cache's list; what an endpoint's answers taught
 *    about its scheme (HostsEntry.scheme) is atomic, learned by any
 *    thread. Each blob's mutex guards its redirect URL and preferred
 *    endpoint. */
#include "worker/fetch/registry.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/digest.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"
#include "worker/fetch/auth.h"
#include "worker/fetch/hosts.h"
#include "worker/fetch/reference.h"

#define MANIFEST_MAX (4u << 20)
#define REDIRECT_HOPS_MAX 10
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_REDIRECT_TTL_MS (5 * 60 * 1000)
#define DEFAULT_MAX_REQUEST (16u << 20)
#define CA_FILE_MAX (1u << 20)

typedef struct EndpointTls {
        char *ca_blob; /* owned: every CA file of the endpoint, concatenated */
        size_t ca_len;
} EndpointTls;

/* What an endpoint's answers taught about its scheme. */
typedef enum SchemeState {
        SCHEME_GUESS, /* nothing answered yet: its own scheme, as a probe (no retries when it looks wrong) */
        SCHEME_OWN,   /* its own scheme answered */
        SCHEME_OTHER, /* the other one answered (scheme_fallback endpoints only) */
} SchemeState;

typedef struct HostsEntry {
        FetchHosts *hosts;  /* owned */
        EndpointTls *tls;   /* owned, parallel to hosts->endpoints */
        _Atomic int *scheme; /* owned, parallel: SchemeState, learned by any thread */
        struct HostsEntry *next;
} HostsEntry;

typedef enum StatId {
        ST_MANIFESTS,
        ST_BLOBS,
        ST_READS,
        ST_READ_BYTES,
        ST_RANGE_REQUESTS,
        ST_COALESCED,
        ST_REDIRECTS,
        ST_REDIRECT_HITS,
        ST_REDIRECT_DROPS,
        ST_CHALLENGES,
        ST_FALLBACKS,
        ST_SCHEME_FALLBACKS,
        ST_ERRORS,
        _ST_MAX,
} StatId;

struct FetchClient {
        FetchConfig cfg;          /* strings owned (copies) */
        HttpClient *http;         /* owned */
        FetchAuth *auth;          /* owned */
        pthread_mutex_t mutex;
        HostsEntry *hosts;        /* protected by mutex (the list, not the entries) */
        _Atomic uint64_t stats[_ST_MAX];
};

struct FetchBlob {
        FetchClient *c;
        char *domain, *repo, *digest; /* owned */
        uint64_t size;
        bool allow_full;
        HostsEntry *he;               /* the client's */
        pthread_mutex_t mutex;
        char *redirect_url;           /* owned; protected by mutex */
        uint64_t redirect_expires_ns; /* protected by mutex */
        size_t endpoint;              /* the endpoint that answered last; protected by mutex */
        ErrMsg last_error;            /* protected by mutex */
};

static void stat_add(FetchClient *c, StatId id, uint64_t n) {
        atomic_fetch_add(&c->stats[id], n);
}

/* ---- the client ---- */

static void hosts_entry_free(HostsEntry *he) {
        if (!he)
                return;
        for (size_t i = 0; he->tls && i < he->hosts->n_endpoints; i++)
                free(he->tls[i].ca_blob);
        free(he->tls);
        free(he->scheme);
        fetch_hosts_free(he->hosts);
        free(he);
}

static char *strdup_or_null(const char *s, bool *oom) {
        if (!s)
                return NULL;
        char *d = strdup(s);
        if (!d)
                *oom = true;
        return d;
}

FetchClient *fetch_client_free(FetchClient *c) {
        if (!c)
                return NULL;
        http_client_free(c->http);
        fetch_auth_free(c->auth);
        while (c->hosts) {
                HostsEntry *he = c->hosts;
                c->hosts = he->next;
                hosts_entry_free(he);
        }
        free((char *) c->cfg.hosts_dir);
        free((char *) c->cfg.docker_config);
        free((char *) c->cfg.user_agent);
        pthread_mutex_destroy(&c->mutex);
        free(c);
        return NULL;
}

static void fetch_client_freep(FetchClient **c) {
        fetch_client_free(*c);
}

int fetch_client_new(const FetchConfig *cfg, FetchClient **ret, ErrMsg *err) {
        _cleanup_(fetch_client_freep) FetchClient *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        pthread_mutex_init(&c->mutex, NULL);
        FetchConfig in = cfg ? *cfg : (FetchConfig) {};
        bool oom = false;
        c->cfg = in;
        c->cfg.hosts_dir = strdup_or_null(in.hosts_dir, &oom);
        c->cfg.docker_config = strdup_or_null(in.docker_config, &oom);
        c->cfg.user_agent = strdup_or_null(in.user_agent, &oom);
        if (oom)
                return -ENOMEM;
        if (c->cfg.timeout_ms == 0)
                c->cfg.timeout_ms = DEFAULT_TIMEOUT_MS;
        if (c->cfg.redirect_ttl_ms == 0)
                c->cfg.redirect_ttl_ms = DEFAULT_REDIRECT_TTL_MS;

        FetchDockerConfig dc = {};
        int r = fetch_docker_config_load(in.docker_config, &dc, err);
        if (r < 0)
                return r;
        r = fetch_auth_new(&dc, &c->auth);
        fetch_docker_config_done(&dc);
        if (r < 0)
                return r;

        HttpConfig hc = {
                .max_per_host = in.max_conns_per_host,
                .retries = in.retries,
                .stall_ms = in.stall_ms,
                .backoff_base_ms = in.backoff_base_ms,
                .user_agent = in.user_agent,
        };
        r = http_client_new(&hc, &c->http, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

void fetch_client_stats(FetchClient *c, FetchStats *ret) {
        *ret = (FetchStats) {};
        http_client_stats(c->http, &ret->http);
        ret->manifests_resolved = atomic_load(&c->stats[ST_MANIFESTS]);
        ret->blobs_opened = atomic_load(&c->stats[ST_BLOBS]);
        ret->reads = atomic_load(&c->stats[ST_READS]);
        ret->read_bytes = atomic_load(&c->stats[ST_READ_BYTES]);
        ret->range_requests = atomic_load(&c->stats[ST_RANGE_REQUESTS]);
        ret->ranges_coalesced = atomic_load(&c->stats[ST_COALESCED]);
        ret->redirects = atomic_load(&c->stats[ST_REDIRECTS]);
        ret->redirect_cache_hits = atomic_load(&c->stats[ST_REDIRECT_HITS]);
        ret->redirect_cache_drops = atomic_load(&c->stats[ST_REDIRECT_DROPS]);
        ret->auth_challenges = atomic_load(&c->stats[ST_CHALLENGES]);
        ret->tokens_fetched = fetch_auth_tokens_fetched(c->auth);
        ret->endpoint_fallbacks = atomic_load(&c->stats[ST_FALLBACKS]);
        ret->scheme_fallbacks = atomic_load(&c->stats[ST_SCHEME_FALLBACKS]);
        ret->errors = atomic_load(&c->stats[ST_ERRORS]);
}

static int file_append(StrBuf *b, const char *path, ErrMsg *err) {
        FILE *f = fopen(path, "re");
        if (!f)
                return errmsg_set(err, -errno, "CA file %s: %m", path);
        char buf[8192];
        size_t n;
        int r = 0;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
                if (b->len + n > CA_FILE_MAX) {
                        r = errmsg_set(err, -EFBIG, "CA files are larger than %u bytes", CA_FILE_MAX);
                        break;
                }
                r = strbuf_append(b, buf, n);
                if (r < 0)
                        break;
        }
        if (r >= 0 && ferror(f))
                r = errmsg_set(err, -EIO, "CA file %s: read error", path);
        fclose(f);
        if (r >= 0)
                r = strbuf_putc(b, '\n');
        return r;
}

/* The endpoints of domain, loaded once per client. */
static int client_hosts(FetchClient *c, const char *domain, HostsEntry **ret, ErrMsg *err) {
        pthread_mutex_lock(&c->mutex);
        for (HostsEntry *he = c->hosts; he; he = he->next)
                if (strcmp(he->hosts->domain, domain) == 0) {
                        pthread_mutex_unlock(&c->mutex);
                        *ret = he;
                        return 0;
                }
        pthread_mutex_unlock(&c->mutex);

        HostsEntry *he = calloc(1, sizeof(*he));
        if (!he)
                return -ENOMEM;
        int r = fetch_hosts_load(c->cfg.hosts_dir, domain, &he->hosts, err);
        if (r < 0) {
                free(he);
                return r;
        }
        size_t n = he->hosts->n_endpoints;
        he->tls = calloc(n, sizeof(*he->tls));
        he->scheme = calloc(n, sizeof(*he->scheme));
        if (!he->tls || !he->scheme) {
                hosts_entry_free(he);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                const FetchEndpoint *e = &he->hosts->endpoints[i];
                StrBuf b = {};
                for (size_t k = 0; k < e->n_ca && r >= 0; k++)
                        r = file_append(&b, e->ca[k], err);
                if (r < 0) {
                        strbuf_done(&b);
                        r = errmsg_prefix(err, r, "%s", he->hosts->source ? he->hosts->source : domain);
                        hosts_entry_free(he);
                        return r;
                }
                he->tls[i].ca_len = b.len;
                he->tls[i].ca_blob = strbuf_steal(&b, NULL);
        }

        pthread_mutex_lock(&c->mutex);
        /* another thread may have loaded it meanwhile: keep the first */
        for (HostsEntry *o = c->hosts; o; o = o->next)
                if (strcmp(o->hosts->domain, domain) == 0) {
                        pthread_mutex_unlock(&c->mutex);
                        hosts_entry_free(he);
                        *ret = o;
                        return 0;
                }
        he->next = c->hosts;
        c->hosts = he;
        pthread_mutex_unlock(&c->mutex);
        *ret = he;
        return 0;
}

/* ---- one request, redirects and 401s included ---- */

typedef struct Call {
        FetchClient *c;
        HostsEntry *he;
        const char *domain;
        const char *repo;
        uint64_t deadline_ns;
        ErrMsg *err;
        /* call_send()'s first exchange, with the endpoint itself */
        bool probe;        /* in: its scheme is a guess (HttpRequest.scheme_probe) */
        bool answered;     /* out: it answered in HTTP, in the scheme asked */
        bool wrong_scheme; /* out: its failure says it speaks the other scheme */
} Call;

/* scheme://host[:port] of url, lower-cased scheme and host, default port explicit. */
static int url_origin(const char *url, char **ret) {
        CURLU *u = curl_url();
        if (!u)
                return -ENOMEM;
        char *scheme = NULL, *host = NULL, *port = NULL;
        int r = -EINVAL;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
                for (char *p = host; *p; p++)
                        if (*p >= 'A' && *p <= 'Z')
                                *p = (char) (*p - 'A' + 'a');
                r = asprintf(ret, "%s://%s:%s", scheme, host, port) < 0 ? -ENOMEM : 0;
        }
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        return r;
}

/* Resolves a Location against the URL it came from. */
static int url_resolve(const char *base, const char *location, char **ret) {
        CURLU *u = curl_url();
        if (!u)
                return -ENOMEM;
        char *out = NULL;
        int r = -EINVAL;
        if (curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
            curl_url_set(u, CURLUPART_URL, location, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_URL, &out, 0) == CURLUE_OK) {
                if (strncmp(out, "http://", 7) == 0 || strncmp(out, "https://", 8) == 0) {
                        *ret = strdup(out);
                        r = *ret ? 0 : -ENOMEM;
                }
        }
        curl_free(out);
        curl_url_cleanup(u);
        return r;
}

static bool is_redirect(long status) {
        return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

static void bzero_free(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

/* Sends req to url and follows redirects and one 401 challenge.
 * auth_origin is the origin that may receive credentials (the
 * endpoint's), or NULL for none; ep the endpoint for TLS settings and
 * the auth host. On success *ret_final is the URL that answered when a
 * redirect took us to another origin (owned), else NULL. */
static int call_send_headers(Call *call, size_t ep_index, const char *url, const char *auth_origin,
                             HttpRequest *req, const char *const *ep_headers, size_t n_ep_headers, char **ret_final);

#define HEADERS_MAX 64

static int call_send(Call *call, size_t ep_index, const char *url, const char *auth_origin, HttpRequest *req,
                     char **ret_final) {
        /* the caller's headers (Accept), then the endpoint's from hosts.toml */
        const FetchEndpoint *ep = &call->he->hosts->endpoints[ep_index];
        const char *const *caller = req->headers;
        size_t n_caller = req->n_headers;
        const char *merged[HEADERS_MAX];
        size_t n = 0;
        for (size_t i = 0; i < n_caller && n < HEADERS_MAX; i++)
                merged[n++] = caller[i];
        for (size_t i = 0; i < ep->n_headers && n < HEADERS_MAX; i++)
                merged[n++] = ep->headers[i];
        int r = call_send_headers(call, ep_index, url, auth_origin, req, merged, n, ret_final);
        req->headers = caller;
        req->n_headers = n_caller;
        return r;
}

/* As call_send(); the endpoint's headers go only to its own origin. */
static int call_send_headers(Call *call, size_t ep_index, const char *url, const char *auth_origin,
                             HttpRequest *req, const char *const *ep_headers, size_t n_ep_headers, char **ret_final) {
        const char *const *caller = req->headers;
        size_t n_caller = req->n_headers;
        FetchClient *c = call->c;
        const FetchEndpoint *ep = &call->he->hosts->endpoints[ep_index];
        const EndpointTls *tls = &call->he->tls[ep_index];
        _cleanup_free_ char *cur = strdup(url);
        if (!cur)
                return -ENOMEM;
        bool challenged = false, first = true;
        char ubuf[256];
        call->answered = call->wrong_scheme = false;
        for (unsigned hops = 0;;) {
                _cleanup_free_ char *origin = NULL;
                int r = url_origin(cur, &origin);
                if (r < 0)
                        return errmsg_set(call->err, r, "\"%s\" is not a valid URL",
                                          http_url_for_message(cur, ubuf, sizeof(ubuf)));
                bool trusted = auth_origin && strcmp(origin, auth_origin) == 0;
                char *authz = NULL;
                if (trusted) {
                        r = fetch_auth_header(c->auth, ep->host, call->repo, &authz);
                        if (r < 0)
                                return r;
                }
                http_request_reset(req);
                req->url = cur;
                req->authorization = authz;
                req->headers = trusted ? ep_headers : caller;
                req->n_headers = trusted ? n_ep_headers : n_caller;
                req->deadline_ns = call->deadline_ns;
                req->skip_verify = trusted && ep->skip_verify;
                req->ca_blob = trusted && tls->ca_len ? tls->ca_blob : NULL;
                req->ca_blob_len = trusted ? tls->ca_len : 0;
                req->scheme_probe = first && call->probe;
                r = http_request_run(c->http, req);
                req->authorization = NULL;
                req->scheme_probe = false;
                bzero_free(authz);
                if (first) {
                        call->wrong_scheme = r < 0 && req->wrong_scheme;
                        call->answered = req->status != 0 && !call->wrong_scheme;
                        first = false;
                }

                if (req->status == 401 && trusted && !challenged) {
                        challenged = true;
                        stat_add(c, ST_CHALLENGES, 1);
                        _cleanup_free_ char *www = TAKE_PTR(req->www_authenticate);
                        char *value = NULL;
                        fetch_auth_invalidate(c->auth, ep->host, call->repo);
                        r = fetch_auth_challenge(c->auth, c->http, ep->host, call->repo, www, call->deadline_ns, &value,
                                                 call->err);
                        bzero_free(value);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (is_redirect(req->status)) {
                        if (!req->location)
                                return errmsg_set(call->err, -EIO, "%s answered HTTP %ld without a Location",
                                                  http_url_for_message(cur, ubuf, sizeof(ubuf)), req->status);
                        if (++hops > REDIRECT_HOPS_MAX)
                                return errmsg_set(call->err, -ELOOP, "more than %d redirects, starting at %s",
                                                  REDIRECT_HOPS_MAX, http_url_for_message(url, ubuf, sizeof(ubuf)));
                        char *next;
                        r = url_resolve(cur, req->location, &next);
                        if (r < 0)
                                return errmsg_set(call->err, r == -ENOMEM ? r : -EIO,
                                                  "%s redirected to an invalid or non-http(s) Location",
                                                  http_url_for_message(cur, ubuf, sizeof(ubuf)));
                        stat_add(c, ST_REDIRECTS, 1);
                        if (req->status == 303 && req->method == HTTP_POST)
                                req->method = HTTP_GET;
                        free(cur);
                        cur = next;
                        continue;
                }
                if (r < 0) {
                        if (req->status == 401 && trusted)
                                return errmsg_set(call->err, -EACCES, "%s: still unauthorized after authenticating",
                                                  http_url_for_message(cur, ubuf, sizeof(ubuf)));
                        return errmsg_set(call->err, r, "%s", req->msg.text);
                }
                if (ret_final)
                        *ret_final = hops > 0 ? TAKE_PTR(cur) : NULL;
                return 0;
        }
}

/* The endpoint's own scheme, or the other one. */
static const char *endpoint_scheme(const FetchEndpoint *ep, bool other) {
        if (!other)
                return ep->scheme;
        return strcmp(ep->scheme, "http") == 0 ? "https" : "http";
}

static int endpoint_url_scheme(Call *call, size_t ep_index, bool other, const char *suffix, char **ret) {
        const FetchEndpoint *ep = &call->he->hosts->endpoints[ep_index];
        const char *scheme = endpoint_scheme(ep, other);
        int n;
        if (ep->mirror)
                n = asprintf(ret, "%s://%s%s/%s/%s?ns=%s", scheme, ep->host, ep->path, call->repo, suffix, call->domain);
        else
                n = asprintf(ret, "%s://%s%s/%s/%s", scheme, ep->host, ep->path, call->repo, suffix);
        return n < 0 ? -ENOMEM : 0;
}

static bool endpoint_other_scheme(Call *call, size_t ep_index) {
        return atomic_load(&call->he->scheme[ep_index]) == SCHEME_OTHER;
}

static int endpoint_url(Call *call, size_t ep_index, const char *suffix, char **ret) {
        return endpoint_url_scheme(call, ep_index, endpoint_other_scheme(call, ep_index), suffix, ret);
}

/* One try of endpoint i over its own scheme or the other; its message
 * goes to *e. probe: a failure that says "the other scheme" is not
 * retried. An answer in HTTP teaches the endpoint's scheme. */
static int call_endpoint_scheme(Call *call, size_t i, bool other, bool probe, const char *suffix, HttpRequest *req,
                                char **ret_final, ErrMsg *e) {
        const FetchEndpoint *ep = &call->he->hosts->endpoints[i];
        _cleanup_free_ char *url = NULL, *origin = NULL;
        int r = endpoint_url_scheme(call, i, other, suffix, &url);
        if (r >= 0)
                r = url_origin(url, &origin);
        if (r < 0)
                return errmsg_set(e, r, "cannot build the URL for %s", ep->host);
        ErrMsg *saved = call->err;
        call->err = e;
        call->probe = probe;
        r = call_send(call, i, url, origin, req, ret_final);
        call->probe = false;
        call->err = saved;
        if (call->answered && ep->scheme_fallback)
                atomic_store(&call->he->scheme[i], other ? SCHEME_OTHER : SCHEME_OWN);
        return r;
}

/* One endpoint. One with scheme_fallback (a local registry without
 * hosts.toml, plain http first) is tried over the scheme it last answered
 * in, and over the other one when the failure says the server speaks
 * that (a plain request to a TLS server, or the reverse; see
 * HttpRequest.wrong_scheme), or when another thread learned the other
 * scheme while this attempt ran (it may have waited on a connection that
 * was never going to work).
 *
 * Until the endpoint has answered at all, its first try is a probe: a
 * reset or a close is taken for a TLS server at once rather than retried
 * with backoff. When the other scheme gets no answer either, the first
 * one is tried again, retried as any request (a plain registry that reset
 * one connection), and its error is the one reported: it is about the
 * scheme the registry is expected to speak. */
static int call_endpoint(Call *call, size_t i, const char *suffix, HttpRequest *req, char **ret_final) {
        const FetchEndpoint *ep = &call->he->hosts->endpoints[i];
        int state = atomic_load(&call->he->scheme[i]);
        bool other = state == SCHEME_OTHER, probe = ep->scheme_fallback && state == SCHEME_GUESS;
        ErrMsg first = {};
        int r = call_endpoint_scheme(call, i, other, probe, suffix, req, ret_final, &first);
        bool raced = ep->scheme_fallback && endpoint_other_scheme(call, i) != other;
        if (r >= 0 || !ep->scheme_fallback || (call->answered && !raced) || !(call->wrong_scheme || raced))
                return r < 0 ? errmsg_set(call->err, r, "%s", first.text) : r;

        stat_add(call->c, ST_SCHEME_FALLBACKS, 1);
        ErrMsg second = {};
        int r2 = call_endpoint_scheme(call, i, !other, probe && !raced, suffix, req, ret_final, &second);
        if (r2 >= 0 || call->answered || raced)
                return r2 < 0 ? errmsg_set(call->err, r2, "%s", second.text) : r2;
        if (probe) {
                r = call_endpoint_scheme(call, i, other, false, suffix, req, ret_final, &first);
                if (r >= 0 || call->answered)
                        return r < 0 ? errmsg_set(call->err, r, "%s", first.text) : r;
        }
        return errmsg_set(call->err, r, "%s (and over %s: %s)", first.text, endpoint_scheme(ep, !other), second.text);
}

/* Tries the endpoints with cap, preferred one first; *ret_used says which answered. */
static int call_endpoints(Call *call, unsigned cap, size_t preferred, const char *suffix, HttpRequest *req,
                          char **ret_final, size_t *ret_used) {
        const FetchHosts *hosts = call->he->hosts;
        ErrMsg first = {};
        int first_r = 0;
        size_t tried = 0;
        for (size_t k = 0; k < hosts->n_endpoints; k++) {
                size_t i = preferred < hosts->n_endpoints ? (preferred + k) % hosts->n_endpoints : k;
                const FetchEndpoint *ep = &hosts->endpoints[i];
                if (!(ep->caps & cap))
                        continue;
                if (tried > 0) {
                        if (http_now_ns() >= call->deadline_ns)
                                break;
                        stat_add(call->c, ST_FALLBACKS, 1);
                }
                tried++;
                ErrMsg e = {};
                ErrMsg *saved = call->err;
                call->err = &e;
                int r = call_endpoint(call, i, suffix, req, ret_final);
                call->err = saved;
                if (r >= 0) {
                        if (ret_used)
                                *ret_used = i;
                        return r;
                }
                if (r == -ENOMEM)
                        return r;
                /* the server's own answer matters more than a mirror's */
                if (first_r == 0 || (!ep->mirror && first_r == -ENOENT) || (first_r == -ENOENT && r != -ENOENT)) {
                        first_r = r;
                        if (ep->mirror)
                                errmsg_set(&first, r, "mirror %s: %s", ep->host, e.text);
                        else
                                first = e;
                }
        }
        if (tried == 0)
                return errmsg_set(call->err, -ENOENT, "no endpoint of %s may %s (see %s)", call->domain,
                                  cap == FETCH_CAP_RESOLVE ? "resolve tags" : "pull",
                                  hosts->source ? hosts->source : "hosts.toml");
        if (http_now_ns() >= call->deadline_ns && first_r != -ETIMEDOUT && tried < hosts->n_endpoints)
                return errmsg_set(call->err, -ETIMEDOUT, "%s (and no time left for the other endpoints)", first.text);
        return errmsg_set(call->err, first_r, "%s", first.text);
}

static int call_init(Call *call, FetchClient *c, const char *domain, const char *repo, ErrMsg *err) {
        *call = (Call) {
                .c = c,
                .domain = domain,
                .repo = repo,
                .deadline_ns = http_now_ns() + c->cfg.timeout_ms * 1000000ull,
                .err = err,
        };
        return client_hosts(c, domain, &call->he, err);
}

/* ---- images ---- */

FetchImage *fetch_image_free(FetchImage *img) {
        if (!img)
                return NULL;
        free(img->domain);
        free(img->repo);
        free(img->host_repo);
        free(img->manifest_digest);
        free(img->media_type);
        free(img->index_digest);
        free(img->platform);
        fetch_descriptor_done(&img->config);
        for (size_t i = 0; i < img->n_layers; i++)
                fetch_descriptor_done(&img->layers[i]);
        free(img->layers);
        free(img);
        return NULL;
}

static void fetch_image_freep(FetchImage **i) {
        fetch_image_free(*i);
}

static void fetch_manifest_freep(FetchManifest **m) {
        fetch_manifest_free(*m);
}

static void fetch_ref_freep(FetchRef **r) {
        fetch_ref_free(*r);
}

const char *fetch_layer_toc_digest(const FetchDescriptor *layer) {
        return fetch_descriptor_annotation(layer, FETCH_ANNOTATION_TOC_DIGEST);
}

/* GETs manifests/REF and checks its digest against want (when given) or
 * the registry's Docker-Content-Digest. */
static int manifest_get(Call *call, const char *refpart, unsigned cap, const char *want_digest, uint64_t want_size,
                        FetchManifest **ret, char **ret_digest, uint64_t *ret_size) {
        _cleanup_free_ char *suffix = NULL;
        if (asprintf(&suffix, "manifests/%s", refpart) < 0)
                return -ENOMEM;
        static const char *const accept[] = { "Accept: " FETCH_MANIFEST_ACCEPT };
        HttpRequest req = {
                .method = HTTP_GET,
                .kind = HTTP_KIND_MANIFEST,
                .body_max = MANIFEST_MAX,
                .headers = accept,
                .n_headers = 1,
        };
        int r = call_endpoints(call, cap, SIZE_MAX, suffix, &req, NULL, NULL);
        if (r < 0) {
                http_request_reset(&req);
                return errmsg_prefix(call->err, r, "manifest %s/%s:%s", call->domain, call->repo, refpart);
        }
        uint8_t d[SHA256_LEN];
        char got[DIGEST_STRING_LEN + 1];
        sha256_buf(req.body.data ? req.body.data : "", req.body.len, d);
        digest_format(d, got);
        if (want_digest && strcmp(got, want_digest) != 0)
                r = errmsg_set(call->err, -EBADMSG, "manifest %s/%s@%s: the registry sent a document with digest %s",
                               call->domain, call->repo, want_digest, got);
        else if (want_digest && want_size && req.body.len != want_size)
                r = errmsg_set(call->err, -EBADMSG, "manifest %s/%s@%s: %zu bytes, the index says %" PRIu64,
                               call->domain, call->repo, want_digest, req.body.len, want_size);
        else if (!want_digest && req.docker_digest && strncmp(req.docker_digest, "sha256:", 7) == 0 &&
                 strcmp(req.docker_digest, got) != 0)
                r = errmsg_set(call->err, -EBADMSG,
                               "manifest %s/%s:%s: Docker-Content-Digest says %.80s but the document is %s",
                               call->domain, call->repo, refpart, req.docker_digest, got);
        if (r >= 0) {
                r = fetch_manifest_parse(req.body.data ? req.body.data : "", req.body.len, req.content_type, ret,
                                         call->err);
                if (r < 0)
                        errmsg_prefix(call->err, r, "manifest %s/%s@%s", call->domain, call->repo, got);
        }
        if (r >= 0) {
                *ret_digest = strdup(got);
                *ret_size = req.body.len;
                if (!*ret_digest) {
                        *ret = fetch_manifest_free(*ret);
                        r = -ENOMEM;
                }
        }
        http_request_reset(&req);
        return r;
}

int fetch_image_resolve(FetchClient *c, const char *ref, const char *platform, FetchImage **ret, ErrMsg *err) {
        _cleanup_(fetch_ref_freep) FetchRef *fr = NULL;
        _cleanup_(fetch_image_freep) FetchImage *img = NULL;
        _cleanup_(fetch_manifest_freep) FetchManifest *m = NULL;
        int r = fetch_ref_parse(ref, &fr, err);
        if (r < 0)
                return r;
        Call call;
        r = call_init(&call, c, fr->domain, fr->repo, err);
        if (r < 0)
                goto fail;
        img = calloc(1, sizeof(*img));
        if (!img)
                return -ENOMEM;
        char *digest = NULL;
        uint64_t size = 0;
        r = manifest_get(&call, fr->digest ? fr->digest : fr->tag, fr->digest ? FETCH_CAP_PULL : FETCH_CAP_RESOLVE,
                         fr->digest, 0, &m, &digest, &size);
        if (r < 0)
                goto fail;
        if (m->kind == FETCH_MANIFEST_INDEX) {
                img->index_digest = digest;
                const FetchDescriptor *d;
                r = fetch_manifest_select(m, platform, &d, err);
                if (r < 0) {
                        errmsg_prefix(err, r, "%s", ref);
                        goto fail;
                }
                r = fetch_platform_normalize(platform, &img->platform, err);
                if (r < 0)
                        goto fail;
                _cleanup_free_ char *child = strdup(d->digest);
                if (!child)
                        return -ENOMEM;
                uint64_t child_size = d->size;
                m = fetch_manifest_free(m);
                r = manifest_get(&call, child, FETCH_CAP_PULL, child, child_size, &m, &digest, &size);
                if (r < 0)
                        goto fail;
                if (m->kind != FETCH_MANIFEST_IMAGE) {
                        free(digest);
                        r = errmsg_set(err, -EOPNOTSUPP, "%s: the index entry for %s is another index", ref,
                                       img->platform);
                        goto fail;
                }
        }
        img->manifest_digest = digest;
        img->manifest_size = size;
        img->media_type = TAKE_PTR(m->media_type);
        img->config = m->config;
        m->config = (FetchDescriptor) {};
        img->layers = TAKE_PTR(m->entries);
        img->n_layers = m->n_entries;
        m->n_entries = 0;
        img->domain = TAKE_PTR(fr->domain);
        img->repo = TAKE_PTR(fr->repo);
        if (asprintf(&img->host_repo, "%s/%s", img->domain, img->repo) < 0) {
                img->host_repo = NULL;
                return -ENOMEM;
        }
        stat_add(c, ST_MANIFESTS, 1);
        *ret = TAKE_PTR(img);
        return 0;
fail:
        stat_add(c, ST_ERRORS, 1);
        return r;
}

/* ---- blobs ---- */

FetchBlob *fetch_blob_free(FetchBlob *b) {
        if (!b)
                return NULL;
        free(b->domain);
        free(b->repo);
        free(b->digest);
        bzero_free(b->redirect_url);
        pthread_mutex_destroy(&b->mutex);
        free(b);
        return NULL;
}

static void fetch_blob_freep(FetchBlob **b) {
        fetch_blob_free(*b);
}

uint64_t fetch_blob_size(const FetchBlob *b) {
        return b->size;
}

const char *fetch_blob_digest(const FetchBlob *b) {
        return b->digest;
}

void fetch_blob_last_error(FetchBlob *b, ErrMsg *ret) {
        pthread_mutex_lock(&b->mutex);
        *ret = b->last_error;
        pthread_mutex_unlock(&b->mutex);
}

static void blob_call_init(FetchBlob *b, Call *call, uint64_t deadline_ns, ErrMsg *err) {
        *call = (Call) {
                .c = b->c,
                .he = b->he,
                .domain = b->domain,
                .repo = b->repo,
                .deadline_ns = deadline_ns,
                .err = err,
        };
}

static int blob_head(FetchBlob *b, Call *call, ErrMsg *err) {
        _cleanup_free_ char *suffix = NULL;
        if (asprintf(&suffix, "blobs/%s", b->digest) < 0)
                return -ENOMEM;
        HttpRequest req = {
                .method = HTTP_HEAD,
                .kind = HTTP_KIND_BLOB_HEAD,
        };
        size_t used = 0;
        _cleanup_free_ char *final = NULL;
        int r = call_endpoints(call, FETCH_CAP_PULL, SIZE_MAX, suffix, &req, &final, &used);
        if (r >= 0 && req.docker_digest && strncmp(req.docker_digest, "sha256:", 7) == 0 &&
            strcmp(req.docker_digest, b->digest) != 0)
                r = errmsg_set(err, -EBADMSG, "the registry says blob %s has digest %.80s", b->digest,
                               req.docker_digest);
        int64_t len = req.content_length;
        http_request_reset(&req);
        if (r >= 0 && len < 0) {
                /* no Content-Length on HEAD: ask for one byte and read the total */
                uint8_t one;
                HttpRequest g = {
                        .method = HTTP_GET,
                        .kind = HTTP_KIND_BLOB_GET,
                        .range = true,
                        .range_off = 0,
                        .range_len = 1,
                        .dest = &one,
                };
                r = call_endpoints(call, FETCH_CAP_PULL, used, suffix, &g, NULL, &used);
                len = g.range_total;
                http_request_reset(&g);
                if (r >= 0 && len < 0)
                        r = errmsg_set(err, -EIO, "the registry does not say how large blob %s is", b->digest);
        }
        if (r < 0)
                return r;
        b->size = (uint64_t) len;
        b->endpoint = used;
        return 0;
}

int fetch_blob_open(FetchClient *c, const char *host_repo, const char *digest, const FetchBlobOptions *opts,
                    FetchBlob **ret, ErrMsg *err) {
        _cleanup_free_ char *ref = NULL;
        if (!host_repo || !digest)
                return errmsg_set(err, -EINVAL, "blob reference without a repository or a digest");
        if (asprintf(&ref, "%s@%s", host_repo, digest) < 0)
                return -ENOMEM;
        return fetch_blob_open_ref(c, ref, opts, ret, err);
}

/* A FetchBlob for layer_ref, no request made yet; *call is ready for its first. */
static int blob_new(FetchClient *c, const char *layer_ref, const FetchBlobOptions *opts, FetchBlob **ret, Call *call,
                    ErrMsg *err) {
        _cleanup_(fetch_ref_freep) FetchRef *fr = NULL;
        _cleanup_(fetch_blob_freep) FetchBlob *b = NULL;
        int r = fetch_ref_parse_layer(layer_ref, &fr, err);
        if (r < 0)
                return r;
        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        pthread_mutex_init(&b->mutex, NULL);
        b->c = c;
        b->domain = TAKE_PTR(fr->domain);
        b->repo = TAKE_PTR(fr->repo);
        b->digest = TAKE_PTR(fr->digest);
        b->allow_full = opts && opts->allow_full;
        r = call_init(call, c, b->domain, b->repo, err);
        if (r < 0)
                return r;
        b->he = call->he;
        *ret = TAKE_PTR(b);
        return 0;
}

/* The blob's size from a HEAD, checked against the manifest's. */
static int blob_open_head(FetchBlob *b, Call *call, const FetchBlobOptions *opts, ErrMsg *err) {
        int r = blob_head(b, call, err);
        if (r < 0)
                return errmsg_prefix(err, r, "blob %s/%s@%s", b->domain, b->repo, b->digest);
        if (opts && opts->expect_size && b->size != opts->expect_size)
                return errmsg_set(err, -EBADMSG, "blob %s/%s@%s: the registry says %" PRIu64 " bytes, the manifest %" PRIu64,
                                  b->domain, b->repo, b->digest, b->size, opts->expect_size);
        return 0;
}

int fetch_blob_open_ref(FetchClient *c, const char *layer_ref, const FetchBlobOptions *opts, FetchBlob **ret,
                        ErrMsg *err) {
        _cleanup_(fetch_blob_freep) FetchBlob *b = NULL;
        Call call;
        int r = blob_new(c, layer_ref, opts, &b, &call, err);
        if (r < 0)
                goto fail;
        if (opts && opts->known_size)
                /* from our own records: no request now; every range
                 * answer's total is still checked against it */
                b->size = opts->expect_size;
        else {
                r = blob_open_head(b, &call, opts, err);
                if (r < 0)
                        goto fail;
        }
        stat_add(c, ST_BLOBS, 1);
        *ret = TAKE_PTR(b);
        return 0;
fail:
        stat_add(c, ST_ERRORS, 1);
        return r;
}

/* One GET of [off, off + len) into dest: the remembered blob-store URL
 * first, then the registry (which may redirect us to a fresh one). */
static int blob_get(FetchBlob *b, uint64_t off, uint64_t len, void *dest, uint64_t deadline_ns, ErrMsg *err) {
        FetchClient *c = b->c;
        HttpRequest req = {
                .method = HTTP_GET,
                .kind = HTTP_KIND_BLOB_GET,
                .range = true,
                .range_off = off,
                .range_len = len,
                .dest = dest,
                .allow_full = b->allow_full,
        };
        char ubuf[256];
        int r;

        _cleanup_free_ char *cached = NULL;
        size_t preferred;
        pthread_mutex_lock(&b->mutex);
        if (b->redirect_url && b->redirect_expires_ns > http_now_ns())
                cached = strdup(b->redirect_url);
        else if (b->redirect_url) {
                bzero_free(b->redirect_url);
                b->redirect_url = NULL;
                stat_add(c, ST_REDIRECT_DROPS, 1);
        }
        preferred = b->endpoint;
        pthread_mutex_unlock(&b->mutex);

        stat_add(c, ST_RANGE_REQUESTS, 1);
        Call call;
        blob_call_init(b, &call, deadline_ns, err);
        if (cached) {
                /* the blob store: credentials only if it is the endpoint's
                 * own origin; any failure sends us back to the registry */
                ErrMsg ignored = {};
                _cleanup_free_ char *url = NULL, *origin = NULL, *again = NULL;
                size_t ep = MIN(preferred, b->he->hosts->n_endpoints - 1);
                r = endpoint_url(&call, ep, "", &url);
                if (r >= 0)
                        r = url_origin(url, &origin);
                if (r < 0)
                        return r;
                call.err = &ignored;
                r = call_send(&call, ep, cached, origin, &req, &again);
                call.err = err;
                bool ok = r >= 0 && (req.range_total < 0 || (uint64_t) req.range_total == b->size);
                http_request_reset(&req);
                if (ok) {
                        stat_add(c, ST_REDIRECT_HITS, 1);
                        return 0;
                }
                pthread_mutex_lock(&b->mutex);
                if (b->redirect_url && strcmp(b->redirect_url, cached) == 0) {
                        bzero_free(b->redirect_url);
                        b->redirect_url = NULL;
                }
                pthread_mutex_unlock(&b->mutex);
                stat_add(c, ST_REDIRECT_DROPS, 1);
                if (http_now_ns() >= deadline_ns)
                        return errmsg_set(err, -ETIMEDOUT, "blob %s: the remembered blob URL %s failed and no time is "
                                          "left to ask the registry", b->digest,
                                          http_url_for_message(cached, ubuf, sizeof(ubuf)));
        }

        _cleanup_free_ char *suffix = NULL;
        if (asprintf(&suffix, "blobs/%s", b->digest) < 0)
                return -ENOMEM;
        char *final = NULL;
        size_t used = preferred;
        r = call_endpoints(&call, FETCH_CAP_PULL, preferred, suffix, &req, &final, &used);
        int64_t total = req.range_total;
        http_request_reset(&req);
        if (r < 0) {
                free(final);
                return r;
        }
        if (total >= 0 && (uint64_t) total != b->size) {
                free(final);
                return errmsg_set(err, -EBADMSG, "blob %s: the registry now says it has %" PRId64 " bytes, not %" PRIu64,
                                  b->digest, total, b->size);
        }
        pthread_mutex_lock(&b->mutex);
        b->endpoint = used;
        if (final) {
                bzero_free(b->redirect_url);
                b->redirect_url = final;
                b->redirect_expires_ns = http_now_ns() + c->cfg.redirect_ttl_ms * 1000000ull;
        }
        pthread_mutex_unlock(&b->mutex);
        return 0;
}

static void blob_note_error(FetchBlob *b, int r, const ErrMsg *e) {
        FetchClient *c = b->c;
        stat_add(c, ST_ERRORS, 1);
        pthread_mutex_lock(&b->mutex);
        if (e && e->text[0])
                b->last_error = *e;
        else
                errmsg_set(&b->last_error, r, "blob %s: %s", b->digest, strerror(-r));
        pthread_mutex_unlock(&b->mutex);
}

/* The whole blob, which we can check. */
static int blob_check_whole(const FetchBlob *b, const void *data, size_t n, ErrMsg *err) {
        uint8_t d[SHA256_LEN];
        char got[DIGEST_STRING_LEN + 1];
        sha256_buf(n ? data : "", n, d);
        digest_format(d, got);
        if (strcmp(got, b->digest) != 0)
                return errmsg_set(err, -EBADMSG, "blob %s: the registry sent bytes with digest %s", b->digest, got);
        return 0;
}

/* fetch_blob_read() within a deadline. */
static ssize_t blob_read(FetchBlob *b, void *buf, size_t len, uint64_t off, uint64_t deadline_ns, ErrMsg *err) {
        FetchClient *c = b->c;
        stat_add(c, ST_READS, 1);
        if (off >= b->size || len == 0)
                return 0;
        uint64_t n = MIN((uint64_t) len, b->size - off);
        if (n > SSIZE_MAX)
                n = SSIZE_MAX;
        ErrMsg local = {};
        ErrMsg *e = err ? err : &local;
        int r = blob_get(b, off, n, buf, deadline_ns, e);
        if (r >= 0 && off == 0 && n == b->size)
                r = blob_check_whole(b, buf, n, e);
        if (r < 0) {
                errmsg_prefix(e, r, "reading %s/%s@%s at %" PRIu64 "+%" PRIu64, b->domain, b->repo, b->digest, off, n);
                blob_note_error(b, r, e);
                return r;
        }
        stat_add(c, ST_READ_BYTES, n);
        return (ssize_t) n;
}

ssize_t fetch_blob_read(FetchBlob *b, void *buf, size_t len, uint64_t off, ErrMsg *err) {
        return blob_read(b, buf, len, off, http_now_ns() + b->c->cfg.timeout_ms * 1000000ull, err);
}

ssize_t fetch_blob_read_at(void *userdata, void *buf, size_t len, uint64_t off) {
        return fetch_blob_read(userdata, buf, len, off, NULL);
}

/* ---- open with the tail ---- */

/* The largest whole blob a server that ignores a suffix range may send
 * us: MAX(4 * the tail, this). */
#define TAIL_WHOLE_MIN (1u << 20)

/* The suffix GET of fetch_blob_open_tail(): sets the blob's size, the
 * endpoint that answered and the blob-store URL a redirect led to (as
 * blob_get() does), and returns the bytes put into buf. -EFBIG (a whole
 * 200 too large to take) and -ERANGE (416: an empty blob, or a server
 * that refuses suffix ranges) tell the caller to try the HEAD way. */
static ssize_t blob_get_tail(FetchBlob *b, Call *call, void *buf, size_t len, uint64_t expect_size) {
        FetchClient *c = b->c;
        ErrMsg *err = call->err;
        _cleanup_free_ char *suffix = NULL, *final = NULL;
        if (asprintf(&suffix, "blobs/%s", b->digest) < 0)
                return -ENOMEM;
        HttpRequest req = {
                .method = HTTP_GET,
                .kind = HTTP_KIND_BLOB_GET,
                .range = true,
                .range_suffix = true,
                .range_len = len,
                .dest = buf,
                .body_max = len > SIZE_MAX / 4 ? SIZE_MAX : MAX(4 * len, (size_t) TAIL_WHOLE_MIN),
        };
        size_t used = 0;
        stat_add(c, ST_RANGE_REQUESTS, 1);
        int r = call_endpoints(call, FETCH_CAP_PULL, SIZE_MAX, suffix, &req, &final, &used);
        uint64_t total = req.range_total >= 0 ? (uint64_t) req.range_total : 0;
        size_t n = (size_t) MIN((uint64_t) len, total);
        if (r >= 0 && req.range_total < 0)
                r = errmsg_set(err, -EIO, "the registry does not say how large blob %s is", b->digest);
        else if (r >= 0 && req.docker_digest && strncmp(req.docker_digest, "sha256:", 7) == 0 &&
                 strcmp(req.docker_digest, b->digest) != 0)
                r = errmsg_set(err, -EBADMSG, "the registry says blob %s has digest %.80s", b->digest,
                               req.docker_digest);
        else if (r >= 0 && expect_size && total != expect_size)
                r = errmsg_set(err, -EBADMSG, "the registry says %" PRIu64 " bytes, the manifest %" PRIu64, total,
                               expect_size);
        else if (r >= 0 && req.status == 200) {
                /* a server that ignored the Range: the whole blob (body_max
                 * at most), the tail cut out of it */
                r = blob_check_whole(b, req.body.data, req.body.len, err);
                if (r >= 0 && n > 0)
                        memcpy(buf, req.body.data + (total - n), n);
        } else if (r >= 0 && n == total)
                r = blob_check_whole(b, buf, n, err); /* the tail is the whole blob */
        http_request_reset(&req);
        if (r < 0)
                return r;
        b->size = total;
        b->endpoint = used;
        if (final) {
                b->redirect_url = TAKE_PTR(final);
                b->redirect_expires_ns = http_now_ns() + c->cfg.redirect_ttl_ms * 1000000ull;
        }
        return (ssize_t) n;
}

ssize_t fetch_blob_open_tail(FetchClient *c, const char *layer_ref, const FetchBlobOptions *opts, void *buf,
                             size_t len, FetchBlob **ret, ErrMsg *err) {
        _cleanup_(fetch_blob_freep) FetchBlob *b = NULL;
        ssize_t n;
        if ((opts && opts->known_size) || len == 0) {
                /* the size is known (or nothing to read): the tail is a plain range */
                int r = fetch_blob_open_ref(c, layer_ref, opts, &b, err);
                if (r < 0)
                        return r;
                uint64_t k = MIN(b->size, (uint64_t) len);
                n = fetch_blob_read(b, buf, (size_t) k, b->size - k, err);
                if (n < 0)
                        return n;
                *ret = TAKE_PTR(b);
                return n;
        }

        Call call;
        int r = blob_new(c, layer_ref, opts, &b, &call, err);
        if (r < 0) {
                stat_add(c, ST_ERRORS, 1);
                return r;
        }
        n = blob_get_tail(b, &call, buf, len, opts ? opts->expect_size : 0);
        if (n == -EFBIG || n == -ERANGE) {
                /* a server that sends blobs whole, or refuses suffix
                 * ranges: the size from a HEAD, then a plain range */
                r = blob_open_head(b, &call, opts, err);
                if (r < 0) {
                        stat_add(c, ST_ERRORS, 1);
                        return r;
                }
                uint64_t k = MIN(b->size, (uint64_t) len);
                n = blob_read(b, buf, (size_t) k, b->size - k, call.deadline_ns, err);
                if (n < 0)
                        return n;
        } else if (n < 0) {
                stat_add(c, ST_ERRORS, 1);
                return errmsg_prefix(err, (int) n, "blob %s/%s@%s", b->domain, b->repo, b->digest);
        } else {
                stat_add(c, ST_READS, 1);
                stat_add(c, ST_READ_BYTES, (uint64_t) n);
        }
        stat_add(c, ST_BLOBS, 1);
        *ret = TAKE_PTR(b);
        return n;
}

/* ---- several ranges ---- */

typedef struct Group {
        uint64_t off, len;
        uint8_t *buf;       /* a range's own buffer, or tmp */
        uint8_t *tmp;       /* owned, when the group spans several ranges */
        size_t first, last; /* [first, last] in the sorted order */
        HttpRequest req;
        char *url;          /* owned */
        char *authz;        /* owned; a secret */
        bool submitted;
        int r;
} Group;

typedef struct Batch {
        pthread_mutex_t mutex;
        pthread_cond_t cond;
        size_t pending;
} Batch;

typedef struct SortKey {
        uint64_t off;
        size_t index;
} SortKey;

static int cmp_key(const void *a, const void *b) {
        const SortKey *x = a, *y = b;
        return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->index < y->index ? -1 : x->index > y->index);
}

static void on_group_done(HttpRequest *req, void *userdata) {
        Batch *batch = userdata;
        (void) req;
        pthread_mutex_lock(&batch->mutex);
        if (--batch->pending == 0)
                pthread_cond_signal(&batch->cond);
        pthread_mutex_unlock(&batch->mutex);
}

/* Starts g on the fetch thread the quick way: the remembered blob URL, or
 * the preferred endpoint with whatever Authorization is cached. */
static int group_submit(FetchBlob *b, Group *g, uint64_t deadline_ns, Batch *batch) {
        FetchClient *c = b->c;
        size_t ep;
        pthread_mutex_lock(&b->mutex);
        if (b->redirect_url && b->redirect_expires_ns > http_now_ns())
                g->url = strdup(b->redirect_url);
        ep = b->endpoint;
        pthread_mutex_unlock(&b->mutex);
        g->req = (HttpRequest) {
                .method = HTTP_GET,
                .kind = HTTP_KIND_BLOB_GET,
                .range = true,
                .range_off = g->off,
                .range_len = g->len,
                .dest = g->buf,
                .allow_full = b->allow_full,
                .deadline_ns = deadline_ns,
        };
        Call call;
        blob_call_init(b, &call, deadline_ns, NULL);
        if (ep >= b->he->hosts->n_endpoints)
                ep = b->he->hosts->n_endpoints - 1;
        _cleanup_free_ char *suffix = NULL, *ep_origin = NULL, *origin = NULL;
        if (asprintf(&suffix, "blobs/%s", b->digest) < 0)
                return -ENOMEM;
        int r = 0;
        if (!g->url)
                r = endpoint_url(&call, ep, suffix, &g->url);
        if (r >= 0)
                r = url_origin(g->url, &origin);
        if (r >= 0)
                r = endpoint_url(&call, ep, "", &ep_origin);
        if (r >= 0) {
                char *o;
                r = url_origin(ep_origin, &o);
                free(ep_origin);
                ep_origin = o;
        }
        if (r < 0)
                return r;
        if (strcmp(origin, ep_origin) == 0) {
                /* the endpoint itself: its credentials and TLS settings */
                r = fetch_auth_header(c->auth, b->he->hosts->endpoints[ep].host, b->repo, &g->authz);
                if (r < 0)
                        return r;
                g->req.authorization = g->authz;
                g->req.headers = (const char *const *) b->he->hosts->endpoints[ep].headers;
                g->req.n_headers = b->he->hosts->endpoints[ep].n_headers;
                g->req.skip_verify = b->he->hosts->endpoints[ep].skip_verify;
                g->req.ca_blob = b->he->tls[ep].ca_len ? b->he->tls[ep].ca_blob : NULL;
                g->req.ca_blob_len = b->he->tls[ep].ca_len;
        }
        g->req.url = g->url;
        pthread_mutex_lock(&batch->mutex);
        batch->pending++;
        pthread_mutex_unlock(&batch->mutex);
        r = http_request_submit(c->http, &g->req, on_group_done, batch);
        if (r < 0) {
                pthread_mutex_lock(&batch->mutex);
                batch->pending--;
                pthread_mutex_unlock(&batch->mutex);
                return r;
        }
        g->submitted = true;
        stat_add(c, ST_RANGE_REQUESTS, 1);
        return 0;
}

int fetch_blob_read_ranges(FetchBlob *b, FetchRange *ranges, size_t n, const FetchCoalesce *policy, ErrMsg *err) {
        FetchClient *c = b->c;
        uint64_t max_gap = policy ? policy->max_gap : 0;
        uint64_t max_req = policy && policy->max_request ? policy->max_request : DEFAULT_MAX_REQUEST;
        uint64_t deadline = http_now_ns() + c->cfg.timeout_ms * 1000000ull;
        if (n == 0)
                return 0;

        _cleanup_free_ SortKey *keys = calloc(n, sizeof(*keys));
        _cleanup_free_ Group *groups = calloc(n, sizeof(*groups));
        if (!keys || !groups)
                return -ENOMEM;
        size_t nk = 0;
        for (size_t i = 0; i < n; i++) {
                stat_add(c, ST_READS, 1);
                ranges[i].result = 0;
                if (ranges[i].len == 0 || ranges[i].off >= b->size)
                        continue;
                if (ranges[i].len > b->size - ranges[i].off)
                        ranges[i].len = (size_t) (b->size - ranges[i].off);
                keys[nk++] = (SortKey) { ranges[i].off, i };
        }
        qsort(keys, nk, sizeof(*keys), cmp_key);

        /* coalesce neighbours */
        size_t ng = 0;
        for (size_t k = 0; k < nk; k++) {
                const FetchRange *rg = &ranges[keys[k].index];
                uint64_t end = rg->off + rg->len;
                if (ng > 0) {
                        Group *g = &groups[ng - 1];
                        uint64_t gend = g->off + g->len;
                        uint64_t new_end = MAX(gend, end);
                        if (rg->off <= gend + max_gap && new_end - g->off <= max_req) {
                                g->len = new_end - g->off;
                                g->last = k;
                                stat_add(c, ST_COALESCED, 1);
                                continue;
                        }
                }
                groups[ng++] = (Group) { .off = rg->off, .len = rg->len, .first = k, .last = k, .r = 1 };
        }

        int r = 0;
        Batch batch = { .pending = 0 };
        pthread_mutex_init(&batch.mutex, NULL);
        pthread_cond_init(&batch.cond, NULL);
        for (size_t i = 0; i < ng && r >= 0; i++) {
                Group *g = &groups[i];
                if (g->first == g->last)
                        g->buf = ranges[keys[g->first].index].buf;
                else {
                        g->tmp = malloc(g->len);
                        if (!g->tmp) {
                                r = -ENOMEM;
                                break;
                        }
                        g->buf = g->tmp;
                }
                r = group_submit(b, g, deadline, &batch);
        }
        /* wait for every submitted request, even after a failure: they write into our buffers */
        pthread_mutex_lock(&batch.mutex);
        while (batch.pending > 0)
                pthread_cond_wait(&batch.cond, &batch.mutex);
        pthread_mutex_unlock(&batch.mutex);
        pthread_cond_destroy(&batch.cond);
        pthread_mutex_destroy(&batch.mutex);

        ErrMsg first = {};
        int first_r = r;
        if (r < 0)
                errmsg_set(&first, r, "cannot start the range requests");
        /* g->r: 1 not read yet, 0 read, < 0 failed */
        for (size_t i = 0; i < ng; i++) {
                Group *g = &groups[i];
                if (g->submitted) {
                        HttpRequest *q = &g->req;
                        bool ok = q->error >= 0 && q->status >= 200 && q->status < 300 &&
                                  (q->range_total < 0 || (uint64_t) q->range_total == b->size);
                        http_request_reset(q);
                        bzero_free(g->authz);
                        g->authz = NULL;
                        free(g->url);
                        g->url = NULL;
                        g->r = ok ? 0 : 1;
                }
                if (g->r > 0 && first_r >= 0) {
                        /* the slow way: redirects, a 401, another endpoint, ... */
                        ErrMsg e = {};
                        g->r = blob_get(b, g->off, g->len, g->buf, deadline, &e);
                        if (g->r < 0) {
                                errmsg_prefix(&e, g->r, "reading %s/%s@%s at %" PRIu64 "+%" PRIu64, b->domain, b->repo,
                                              b->digest, g->off, g->len);
                                blob_note_error(b, g->r, &e);
                                if (first_r >= 0) {
                                        first_r = g->r;
                                        first = e;
                                }
                        }
                } else if (g->r > 0)
                        g->r = first_r;
                for (size_t k = g->first; k <= g->last; k++) {
                        FetchRange *rg = &ranges[keys[k].index];
                        if (g->r < 0) {
                                rg->result = g->r;
                                continue;
                        }
                        if (g->tmp)
                                memcpy(rg->buf, g->tmp + (rg->off - g->off), rg->len);
                        rg->result = (ssize_t) rg->len;
                        stat_add(c, ST_READ_BYTES, rg->len);
                }
                free(g->tmp);
                g->tmp = NULL;
        }
        if (first_r < 0)
                return errmsg_set(err, first_r, "%s", first.text);
        return 0;
}
