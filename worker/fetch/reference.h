/* Image and layer references, parsed the way containerd's
 * reference/docker package reads them:
 *
 *   [DOMAIN/]PATH[:TAG][@sha256:HEX]
 *
 * DOMAIN is the first component when it has a '.' or a ':', is
 * "localhost", or has an upper-case letter; otherwise the domain is
 * docker.io, and a single-component path gets the "library/" prefix.
 * "index.docker.io" is the same registry as "docker.io". A reference with
 * neither a tag nor a digest means ":latest".
 *
 * Pure functions; no thread-shared state. */
#pragma once

#include <stdbool.h>

#include "common/util/errmsg.h"

#define FETCH_REF_NAME_MAX 255      /* DOMAIN/PATH, as docker limits it */
#define FETCH_REF_TAG_MAX 128

typedef struct FetchRef {
        char *domain; /* owned: "docker.io", "localhost:5000", "[::1]:5000" */
        char *repo;   /* owned: "library/busybox" */
        char *tag;    /* owned, or NULL when only a digest was given */
        char *digest; /* owned "sha256:<64 hex>", or NULL */
} FetchRef;

/* Parses an image reference. Fails with -EINVAL and a message naming the
 * offending part; -EOPNOTSUPP for a digest of another algorithm. */
int fetch_ref_parse(const char *s, FetchRef **ret, ErrMsg *err);

/* Parses a layer reference "DOMAIN/REPO@sha256:HEX": a digest is required
 * and a tag is refused. */
int fetch_ref_parse_layer(const char *s, FetchRef **ret, ErrMsg *err);

FetchRef *fetch_ref_free(FetchRef *r);

/* The host the registry API lives on: "registry-1.docker.io" for
 * docker.io, the domain itself otherwise. */
const char *fetch_ref_api_host(const char *domain);

/* True for localhost, 127.0.0.0/8 and ::1, with or without a port: hosts
 * containerd also tries over plain http. */
bool fetch_host_is_local(const char *domain);

/* True when s is "sha256:<64 lowercase hex>". */
bool fetch_digest_is_valid(const char *s);
