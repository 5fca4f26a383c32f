/* Registry endpoints for a domain, from containerd's hosts directory:
 *
 *   DIR/DOMAIN/hosts.toml      (DOMAIN as in the reference: docker.io,
 *                               localhost:5000)
 *   DIR/_default/hosts.toml    when DIR/DOMAIN does not exist
 *
 * hosts.toml keys understood: server; [host."URL"] tables with
 * capabilities ("pull", "resolve", "push"), skip_verify, ca (a path or a
 * list; relative to the domain's directory), override_path, header (name
 * = string or list); the same keys at the top level apply to server.
 * Mirrors come first, in file order, then the server. A domain directory
 * without hosts.toml is the old Docker certs.d layout: its *.crt files are
 * CAs for the default server.
 *
 * With no directory at all, the endpoint is https://DOMAIN/v2 (docker.io:
 * https://registry-1.docker.io/v2), except for localhost, 127.0.0.0/8 and
 * ::1: http://DOMAIN/v2, as containerd (docker.WithPlainHTTP(
 * docker.MatchLocalhost), and its hosts directory's default) and
 * stargz-snapshotter do: a local registry is nearly always plain, and a
 * fresh worker would otherwise pay a failed TLS handshake before its
 * first request. Such an endpoint (scheme_fallback) still reaches a local
 * registry that speaks TLS: the client tries https, unverified, when the
 * plain answer says so (see registry.c). A scheme, CA or skip_verify
 * written in hosts.toml is taken as it is.
 *
 * The lists are immutable after loading; what the client learns about an
 * endpoint's scheme it keeps on its side. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "common/util/errmsg.h"

#define FETCH_HOSTS_DIR_DEFAULT "/etc/containerd/certs.d"

typedef enum FetchCap {
        FETCH_CAP_PULL = 1 << 0,
        FETCH_CAP_RESOLVE = 1 << 1,
        FETCH_CAP_PUSH = 1 << 2,
} FetchCap;

typedef struct FetchEndpoint {
        char *scheme;       /* owned: "https" or "http" (the one tried first) */
        char *host;         /* owned: host[:port] as it goes into a URL */
        char *path;         /* owned: "/v2", or the override path (maybe ""); no trailing '/' */
        unsigned caps;      /* FetchCap bits */
        bool skip_verify;
        bool mirror;        /* not the domain's own server: requests carry ?ns=DOMAIN */
        bool scheme_fallback; /* no scheme was asked for: the other one is tried when an answer says the
                               * server speaks it */
        char **ca;          /* owned: CA file paths, absolute */
        size_t n_ca;
        char **headers;     /* owned: "Name: value" lines */
        size_t n_headers;
} FetchEndpoint;

typedef struct FetchHosts {
        char *domain;       /* owned */
        FetchEndpoint *endpoints; /* owned */
        size_t n_endpoints;
        char *source;       /* owned: the file read, or NULL for the defaults */
} FetchHosts;

/* Loads the endpoints for domain from dir (NULL: the default). A missing
 * directory is not an error. */
int fetch_hosts_load(const char *dir, const char *domain, FetchHosts **ret, ErrMsg *err);

/* Builds the endpoints from hosts.toml text; base_dir resolves relative
 * ca paths (NULL: leave them as they are). */
int fetch_hosts_parse(const char *toml, size_t len, const char *domain, const char *base_dir, FetchHosts **ret,
                      ErrMsg *err);

/* The endpoints with no hosts directory entry. */
int fetch_hosts_default(const char *domain, FetchHosts **ret, ErrMsg *err);

FetchHosts *fetch_hosts_free(FetchHosts *h);
