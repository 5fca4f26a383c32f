/* OCI and Docker v2 manifests: image manifests (OCI, Docker schema 2)
 * and indexes (OCI image index, Docker manifest list), parsed from JSON
 * with yajl_tree; platform selection in an index the way containerd's
 * platforms matcher does it ("linux/arm64" matches variant v8 or none).
 * Docker schema 1 is refused. Pure functions, fuzzable; no thread-shared
 * state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"

#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define FETCH_MANIFEST_ACCEPT \
        MT_OCI_INDEX ", " MT_DOCKER_LIST ", " MT_OCI_MANIFEST ", " MT_DOCKER_MANIFEST

#define FETCH_ANNOTATION_TOC_DIGEST "containerd.io/snapshot/stargz/toc.digest"
#define FETCH_ANNOTATION_UNCOMPRESSED_SIZE "io.containers.estargz.uncompressed-size"

typedef struct FetchAnnotation {
        char *key;   /* owned */
        char *value; /* owned */
} FetchAnnotation;

typedef struct FetchDescriptor {
        char *media_type; /* owned, may be NULL in an index entry */
        char *digest;     /* owned: "sha256:<hex>" */
        uint64_t size;
        FetchAnnotation *annotations; /* owned */
        size_t n_annotations;
        char *os, *arch, *variant;    /* owned, index entries only; NULL when absent */
} FetchDescriptor;

typedef enum FetchManifestKind {
        FETCH_MANIFEST_IMAGE,
        FETCH_MANIFEST_INDEX,
} FetchManifestKind;

typedef struct FetchManifest {
        FetchManifestKind kind;
        char *media_type;          /* owned: one of the MT_* above */
        FetchDescriptor config;    /* images */
        FetchDescriptor *entries;  /* owned: layers (image) or manifests (index) */
        size_t n_entries;
} FetchManifest;

/* content_type is the Content-Type the registry served (parameters
 * allowed), or NULL. */
int fetch_manifest_parse(const char *json, size_t len, const char *content_type, FetchManifest **ret, ErrMsg *err);
FetchManifest *fetch_manifest_free(FetchManifest *m);
void fetch_descriptor_done(FetchDescriptor *d);

/* The value of an annotation, or NULL. */
const char *fetch_descriptor_annotation(const FetchDescriptor *d, const char *key);

/* "os/arch[/variant]" with containerd's normalisation (x86_64 -> amd64,
 * aarch64 -> arm64, ...); NULL: the platform this binary runs on. The
 * result is owned. */
int fetch_platform_normalize(const char *platform, char **ret, ErrMsg *err);

/* The index entry for platform (normalised), or -ENOENT with a message
 * listing what the index offers. */
int fetch_manifest_select(const FetchManifest *index, const char *platform, const FetchDescriptor **ret, ErrMsg *err);
