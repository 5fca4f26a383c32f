/* holdfast's OCI registry client: the API the worker uses to resolve
 * images and to read layer blobs lazily with HTTP range requests.
 *
 *   FetchClient *c;  fetch_client_new(&cfg, &c, &err);
 *   FetchImage *img; fetch_image_resolve(c, "127.0.0.1:5000/app:v1", NULL, &img, &err);
 *   FetchBlob *b;    fetch_blob_open(c, img->host_repo, img->layers[0].digest,
 *                                    &(FetchBlobOptions) { .expect_size = img->layers[0].size }, &b, &err);
 *   fetch_blob_read(b, buf, len, off, &err);   // exactly [off, off+len), or -errno
 *   fetch_blob_open_tail(c, "127.0.0.1:5000/app@sha256:...", NULL, tail, 65536, &b, &err);
 *                                              // open + the last 64 KiB, one GET
 *
 * Endpoints come from containerd's hosts directory (hosts.h), credentials
 * from the Docker config (auth.h); HTTP runs on the client's one fetch
 * thread (http.h). Every call has a deadline (FetchConfig.timeout_ms) that
 * covers all of it: endpoints, redirects, token requests, retries; past
 * it the call fails with -ETIMEDOUT and a message.
 *
 * Threads: everything here may be called from any thread but the fetch
 * thread, concurrently; a FetchBlob may be read by many threads at once.
 * A FetchBlob must be freed before its client. Nothing here logs;
 * messages go to the caller's ErrMsg and never hold a credential. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util/errmsg.h"
#include "worker/fetch/http.h"
#include "worker/fetch/manifest.h"

typedef struct FetchConfig {
        const char *hosts_dir;       /* NULL: /etc/containerd/certs.d */
        const char *docker_config;   /* config.json path; NULL: $DOCKER_CONFIG or ~/.docker */
        uint64_t timeout_ms;         /* deadline of one call; 0: 30 s */
        unsigned max_conns_per_host; /* concurrent transfers per host; 0: 8 */
        unsigned retries;            /* extra attempts per request; 0: 4; FETCH_NO_RETRIES: none */
        uint64_t stall_ms;           /* an attempt silent this long is retried; 0: 10 s */
        uint64_t redirect_ttl_ms;    /* how long a blob's redirected URL is reused; 0: 5 min */
        uint64_t backoff_base_ms;    /* first retry delay; 0: 100 ms */
        const char *user_agent;      /* NULL: holdfast/VERSION */
} FetchConfig;

#define FETCH_NO_RETRIES UINT32_MAX

typedef struct FetchClient FetchClient;

int fetch_client_new(const FetchConfig *cfg, FetchClient **ret, ErrMsg *err);
FetchClient *fetch_client_free(FetchClient *c);

/* ---- images ---- */

typedef struct FetchImage {
        char *domain;          /* owned: "docker.io", "127.0.0.1:5000" */
        char *repo;            /* owned: "library/busybox" */
        char *host_repo;       /* owned: "DOMAIN/REPO", for fetch_blob_open() */
        char *manifest_digest; /* owned: of the image manifest */
        char *media_type;      /* owned: of the image manifest */
        uint64_t manifest_size;
        char *index_digest;    /* owned: the index it was chosen from, or NULL */
        char *platform;        /* owned: the platform chosen from the index, or NULL */
        FetchDescriptor config;
        FetchDescriptor *layers; /* owned; annotations included */
        size_t n_layers;
} FetchImage;

/* Resolves ref (a tag or a digest) to an image manifest, through an
 * index or manifest list when there is one, for platform ("os/arch[/
 * variant]"; NULL: the one we run on). The digest of each document
 * fetched is checked: against the reference's digest, the index entry,
 * or the registry's Docker-Content-Digest. */
int fetch_image_resolve(FetchClient *c, const char *ref, const char *platform, FetchImage **ret, ErrMsg *err);
FetchImage *fetch_image_free(FetchImage *img);

/* The containerd.io/snapshot/stargz/toc.digest annotation, or NULL. */
const char *fetch_layer_toc_digest(const FetchDescriptor *layer);

/* ---- blobs ---- */

typedef struct FetchBlob FetchBlob;

typedef struct FetchBlobOptions {
        uint64_t expect_size; /* the descriptor's size; 0: unknown. A different size is -EBADMSG */
        bool allow_full;      /* accept a 200 with the whole blob for a range (and cut the range out) */
        bool known_size;      /* expect_size is known (a stored record): open without a request */
} FetchBlobOptions;

/* Finds the blob (HEAD, following redirects) and its size. host_repo is
 * "DOMAIN/REPO" (docker.io names as in references); opts may be NULL. */
int fetch_blob_open(FetchClient *c, const char *host_repo, const char *digest, const FetchBlobOptions *opts,
                    FetchBlob **ret, ErrMsg *err);
/* As fetch_blob_open(), from a layer reference "DOMAIN/REPO@sha256:HEX". */
int fetch_blob_open_ref(FetchClient *c, const char *layer_ref, const FetchBlobOptions *opts, FetchBlob **ret,
                        ErrMsg *err);

/* As fetch_blob_open_ref(), and reads the blob's last MIN(len, size)
 * bytes into buf (an eStargz footer and TOC are there): returns that
 * count, or -errno. One request when the registry allows: a suffix range
 * GET ("Range: bytes=-len") whose 206 Content-Range gives the size,
 * checked strictly (it must end the blob and name its size); a 200 with
 * the whole blob is taken when it is at most MAX(4 * len, 1 MiB) (the
 * size is its length, and it is checked against the digest), a larger
 * one is given up at once and the blob is opened the HEAD way. A tail
 * that is the whole blob is checked against the digest too. With
 * known_size, no request opens the blob and the tail is a plain range. */
ssize_t fetch_blob_open_tail(FetchClient *c, const char *layer_ref, const FetchBlobOptions *opts, void *buf,
                             size_t len, FetchBlob **ret, ErrMsg *err);
FetchBlob *fetch_blob_free(FetchBlob *b);

uint64_t fetch_blob_size(const FetchBlob *b);
const char *fetch_blob_digest(const FetchBlob *b);

/* Reads [off, off + len) clamped to the blob's size: returns the bytes
 * read (len, or fewer only at the end of the blob; 0 at or past it) or
 * -errno. A read of the whole blob is checked against its digest
 * (-EBADMSG). Never returns bytes the registry did not vouch for with an
 * exact Content-Range (or a whole 200 body when allow_full). */
ssize_t fetch_blob_read(FetchBlob *b, void *buf, size_t len, uint64_t off, ErrMsg *err);

/* ReadAtFn (common/estargz/layer.h) over fetch_blob_read(); userdata is
 * the FetchBlob. The message of its last failure is kept for
 * fetch_blob_last_error(). */
ssize_t fetch_blob_read_at(void *userdata, void *buf, size_t len, uint64_t off);
void fetch_blob_last_error(FetchBlob *b, ErrMsg *ret);

typedef struct FetchRange {
        uint64_t off;
        size_t len;
        void *buf;      /* len bytes */
        ssize_t result; /* out: as fetch_blob_read() */
} FetchRange;

typedef struct FetchCoalesce {
        uint64_t max_gap;     /* neighbours closer than this share a request; 0: 0 (only touching ones) */
        uint64_t max_request; /* bytes one request may span; 0: 16 MiB */
} FetchCoalesce;

/* Reads several ranges (any order, may overlap): neighbours whose gap is
 * at most max_gap are fetched by one request of at most max_request
 * bytes, and the requests run concurrently. Returns 0 when every range
 * was read, else the first error (each range's result says which). */
int fetch_blob_read_ranges(FetchBlob *b, FetchRange *ranges, size_t n, const FetchCoalesce *policy, ErrMsg *err);

/* ---- statistics ---- */

typedef struct FetchStats {
        HttpStats http;
        uint64_t manifests_resolved;
        uint64_t blobs_opened;
        uint64_t reads;               /* fetch_blob_read() and ranges, as the caller asked */
        uint64_t read_bytes;          /* bytes handed to callers */
        uint64_t range_requests;      /* blob GETs sent for them */
        uint64_t ranges_coalesced;    /* caller ranges served by another range's request */
        uint64_t redirects;           /* redirects followed */
        uint64_t redirect_cache_hits; /* reads sent straight to a remembered blob URL */
        uint64_t redirect_cache_drops;/* remembered URLs given up (expired, 401/403/404/410, failing) */
        uint64_t auth_challenges;     /* 401s answered */
        uint64_t tokens_fetched;
        uint64_t endpoint_fallbacks;  /* requests that moved on to the next endpoint */
        uint64_t scheme_fallbacks;    /* requests tried again over the endpoint's other scheme (http <-> https) */
        uint64_t errors;              /* calls that failed */
} FetchStats;

void fetch_client_stats(FetchClient *c, FetchStats *ret);
