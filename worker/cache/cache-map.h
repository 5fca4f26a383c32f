/* chunks.map: the on-disk record of which chunks of one layer blob are
 * cached. Pure functions over bytes (no I/O, no state), so that the header
 * parser can be fuzzed (tests/fuzz/fuzz-cache-map.c).
 *
 * The file, in host byte order (the cache never leaves this machine):
 *
 *   [0, 128)                 CacheMapHeader
 *   [128, 128 + 8 W)         present bits: bit i of word i / 64 is chunk i
 *                            (index into Index.chunks); set only after the
 *                            chunk's verified bytes were written
 *   [128 + 8 W, 128 + 16 W)  suspect bits: chunks that were present in an
 *                            earlier boot and must be verified again before
 *                            they are served
 *   where W = ceil(n_chunks / 64); the file is exactly that long.
 *
 * The checksum covers the fields that never change after creation. The
 * fields after it change while the file is mapped and in use, so they are
 * outside the checksum; any value there is safe: a wrong boot_id only
 * causes a re-verification, a wrong used_bytes only a wrong size estimate
 * until the layer is opened again. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/estargz/index.h"
#include "common/util/errmsg.h"

#define CACHE_MAP_MAGIC "HFCHUNK\0"
#define CACHE_MAP_VERSION 1u
#define CACHE_MAP_HEADER_SIZE 128u
#define CACHE_BOOT_ID_LEN 16
#define CACHE_MAP_CHECKSUM_LEN 8
/* The largest n_chunks accepted: far above any TOC the parser admits, and
 * small enough that the file size cannot overflow anything. */
#define CACHE_MAP_MAX_CHUNKS (UINT64_C(1) << 40)

typedef struct CacheMapHeader {
        uint8_t magic[8];            /* CACHE_MAP_MAGIC */
        uint32_t version;            /* CACHE_MAP_VERSION */
        uint32_t header_size;        /* CACHE_MAP_HEADER_SIZE: where the bit words start */
        uint64_t n_chunks;           /* bits in each bitmap: Index.n_chunks */
        uint8_t layout[SHA256_LEN];  /* cache_map_layout() of the index the bits refer to */
        uint8_t checksum[CACHE_MAP_CHECKSUM_LEN]; /* SHA-256 of the 56 bytes above, first 8 bytes */
        /* mutable while mapped; not covered by the checksum */
        uint8_t boot_id[CACHE_BOOT_ID_LEN]; /* the boot in which the present bits were set */
        uint64_t used_bytes;         /* accounted bytes of present + suspect chunks; atomic */
        uint8_t reserved[40];        /* zero */
} CacheMapHeader;

_Static_assert(sizeof(CacheMapHeader) == CACHE_MAP_HEADER_SIZE, "CacheMapHeader must be 128 bytes");
_Static_assert(offsetof(CacheMapHeader, checksum) == 56, "checksum covers bytes [0, 56)");
_Static_assert(offsetof(CacheMapHeader, boot_id) % 8 == 0, "boot_id is stored as two atomic words");
_Static_assert(offsetof(CacheMapHeader, used_bytes) % 8 == 0, "used_bytes is updated atomically");

static inline uint64_t cache_map_words(uint64_t n_chunks) {
        return n_chunks / 64 + (n_chunks % 64 != 0);
}

/* The size of the whole file for n_chunks (n_chunks <= CACHE_MAP_MAX_CHUNKS). */
static inline uint64_t cache_map_file_size(uint64_t n_chunks) {
        return CACHE_MAP_HEADER_SIZE + 16 * cache_map_words(n_chunks);
}

/* Disk space a chunk is accounted for: its size in whole 4 KiB blocks.
 * Chunks start at multiples of the chunk size except inside tiny files,
 * so this matches st_blocks closely, including the one block a small
 * file costs. */
static inline uint64_t cache_map_chunk_cost(const IndexChunk *c) {
        return (c->size + 4095) & ~UINT64_C(4095);
}

/* A digest of everything in the index that decides where a chunk's bytes
 * go: which inode owns which run of chunks, file sizes and chunk offsets.
 * The inode numbering is code, not data: a holdfast that numbers
 * differently must not read another's data files as its own. -ENOMEM. */
int cache_map_layout(const Index *idx, uint8_t ret[SHA256_LEN]);

/* Fills a fresh header (used_bytes 0, reserved zero) and its checksum. */
void cache_map_header_init(CacheMapHeader *h, uint64_t n_chunks, const uint8_t layout[SHA256_LEN],
                           const uint8_t boot_id[CACHE_BOOT_ID_LEN]);

/* Checks the first bytes of a chunks.map whose total size is file_size,
 * without knowing the index: magic, version, header size, n_chunks in
 * range, checksum, file size. buf holds len >= 0 bytes (fewer than a
 * header is simply corrupt). Returns 0 and copies the header into *ret,
 * -EBADMSG (corrupt or truncated, with a message) or -EPROTONOSUPPORT
 * (another version). *ret is untouched on failure. */
int cache_map_header_check(const void *buf, size_t len, uint64_t file_size, CacheMapHeader *ret, ErrMsg *err);

/* Whether a checked header belongs to this index: 0, or -ESTALE with a
 * message when n_chunks or the layout differ. */
int cache_map_header_match(const CacheMapHeader *h, uint64_t n_chunks, const uint8_t layout[SHA256_LEN], ErrMsg *err);
