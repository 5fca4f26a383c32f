/* The eStargz table of contents (stargz.index.json, version 1), parsed with
 * a streaming JSON parser into a flat array of entries in TOC order.
 *
 * This module checks each entry on its own (types, ranges, digests); the
 * tree-wide checks (names, duplicates, chunk tiling, hardlink targets) are
 * index.c's. A Toc has one owner and no thread safety. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/estargz/format.h"
#include "common/util/digest.h"
#include "common/util/errmsg.h"

typedef enum TocType {
        TOC_DIR,
        TOC_REG,
        TOC_SYMLINK,
        TOC_HARDLINK,
        TOC_CHAR,
        TOC_BLOCK,
        TOC_FIFO,
        TOC_CHUNK,
        _TOC_TYPE_MAX,
} TocType;

#define TOC_NO_DIGEST UINT32_MAX

typedef struct TocEntry {
        uint64_t size;
        uint64_t offset;       /* blob offset of the compressed data (0 = none) */
        uint64_t chunk_offset; /* offset of this chunk in the file */
        uint64_t chunk_size;   /* 0 = the rest of the file */
        uint64_t inner_offset; /* offset in the decompressed frame (zstd:chunked) */
        int64_t mtime;         /* seconds since the epoch */
        uint32_t name, name_len;  /* in the string pool; raw, as in the TOC */
        uint32_t link, link_len;
        uint32_t mode;
        uint32_t uid, gid;
        uint32_t devmajor, devminor;
        uint32_t digest;       /* whole-file digest, index into Toc.digests */
        uint32_t chunk_digest;
        uint32_t xattr_first, xattr_count;
        uint8_t type;          /* TocType */
} TocEntry;

typedef struct TocXattr {
        uint32_t name, name_len;
        uint32_t value, value_len;
} TocXattr;

typedef struct Toc {
        TocEntry *entries;  /* owned */
        size_t n_entries;
        TocXattr *xattrs;   /* owned */
        size_t n_xattrs;
        uint8_t (*digests)[SHA256_LEN]; /* owned */
        size_t n_digests;
        char *pool;         /* owned: names, link targets, xattr names and values */
        size_t pool_len;
        int version;
} Toc;

typedef struct TocLimits {
        uint64_t max_json_bytes; /* uncompressed TOC JSON */
        uint64_t max_entries;
        uint64_t max_chunk_bytes; /* uncompressed bytes of one chunk: a read
                                   * decodes and verifies a whole chunk */
} TocLimits;

#define TOC_DEFAULT_MAX_JSON_BYTES (512ull << 20)
#define TOC_DEFAULT_MAX_ENTRIES 8000000ull
#define TOC_DEFAULT_MAX_CHUNK_BYTES (64ull << 20)

Toc *toc_free(Toc *t);
const char *toc_type_to_string(TocType t);

/* Parses TOC JSON. limits may be NULL for the defaults. Returns 0, or with
 * a message naming the entry and field: -EBADMSG (malformed), -EFBIG (over
 * a limit), -EOVERFLOW (a size or offset beyond 2^63), -EOPNOTSUPP (TOC
 * version other than 1, a digest algorithm other than sha256), -ENOMEM. */
int toc_parse_json(const void *json, size_t len, const TocLimits *limits, Toc **ret, ErrMsg *err);

/* Decompresses the TOC region of a blob ([footer.toc_offset, +toc_size)):
 * for gzip formats a gzip member holding a tar entry named
 * stargz.index.json; for zstd:chunked a zstd frame of JSON. Streams the JSON
 * into the parser (the JSON is never held whole) and returns its SHA-256,
 * the TOC digest of the containerd.io/snapshot/stargz/toc.digest
 * annotation. */
int toc_parse_compressed(LayerFormat format, const uint8_t *data, size_t len, const TocLimits *limits,
                         Toc **ret, uint8_t ret_digest[SHA256_LEN], ErrMsg *err);

static inline const char *toc_str(const Toc *t, uint32_t off) {
        return t->pool + off;
}
