/* The chunks.map header: building, checking and the index layout digest
 * (cache-map.h has the file format). Owns nothing; pure functions that
 * any thread may call. Invariant: a header that passes
 * cache_map_header_check() describes a file whose size is exactly
 * cache_map_file_size(n_chunks), so mapping it and indexing its bit words
 * by any chunk < n_chunks stays inside the file. */
#include "worker/cache/cache-map.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util/digest.h"
#include "common/util/macro.h"

static void header_checksum(const CacheMapHeader *h, uint8_t ret[CACHE_MAP_CHECKSUM_LEN]) {
        uint8_t d[SHA256_LEN];
        sha256_buf(h, offsetof(CacheMapHeader, checksum), d);
        memcpy(ret, d, CACHE_MAP_CHECKSUM_LEN);
}

void cache_map_header_init(CacheMapHeader *h, uint64_t n_chunks, const uint8_t layout[SHA256_LEN],
                           const uint8_t boot_id[CACHE_BOOT_ID_LEN]) {
        *h = (CacheMapHeader) {
                .version = CACHE_MAP_VERSION,
                .header_size = CACHE_MAP_HEADER_SIZE,
                .n_chunks = n_chunks,
        };
        memcpy(h->magic, CACHE_MAP_MAGIC, sizeof(h->magic));
        memcpy(h->layout, layout, SHA256_LEN);
        memcpy(h->boot_id, boot_id, CACHE_BOOT_ID_LEN);
        header_checksum(h, h->checksum);
}

int cache_map_header_check(const void *buf, size_t len, uint64_t file_size, CacheMapHeader *ret, ErrMsg *err) {
        CacheMapHeader h;
        if (len < sizeof(h) || file_size < sizeof(h))
                return errmsg_set(err, -EBADMSG, "chunk map is %" PRIu64 " bytes, shorter than its %u-byte header",
                                  MIN((uint64_t) len, file_size), CACHE_MAP_HEADER_SIZE);
        memcpy(&h, buf, sizeof(h));
        if (memcmp(h.magic, CACHE_MAP_MAGIC, sizeof(h.magic)) != 0)
                return errmsg_set(err, -EBADMSG, "chunk map has no holdfast magic");
        if (h.version != CACHE_MAP_VERSION)
                return errmsg_set(err, -EPROTONOSUPPORT, "chunk map version %" PRIu32 ", this holdfast knows %u",
                                  h.version, CACHE_MAP_VERSION);
        uint8_t sum[CACHE_MAP_CHECKSUM_LEN];
        header_checksum(&h, sum);
        if (memcmp(sum, h.checksum, sizeof(sum)) != 0)
                return errmsg_set(err, -EBADMSG, "chunk map header checksum mismatch");
        /* Checked after the checksum: a version 1 writer never writes anything else. */
        if (h.header_size != CACHE_MAP_HEADER_SIZE)
                return errmsg_set(err, -EBADMSG, "chunk map header size %" PRIu32 ", expected %u",
                                  h.header_size, CACHE_MAP_HEADER_SIZE);
        if (h.n_chunks > CACHE_MAP_MAX_CHUNKS)
                return errmsg_set(err, -EBADMSG, "chunk map claims %" PRIu64 " chunks", h.n_chunks);
        if (file_size != cache_map_file_size(h.n_chunks))
                return errmsg_set(err, -EBADMSG, "chunk map is %" PRIu64 " bytes, %" PRIu64 " chunks need %" PRIu64,
                                  file_size, h.n_chunks, cache_map_file_size(h.n_chunks));
        *ret = h;
        return 0;
}

int cache_map_header_match(const CacheMapHeader *h, uint64_t n_chunks, const uint8_t layout[SHA256_LEN], ErrMsg *err) {
        if (h->n_chunks != n_chunks)
                return errmsg_set(err, -ESTALE, "chunk map has %" PRIu64 " chunks, the index %" PRIu64,
                                  h->n_chunks, n_chunks);
        if (memcmp(h->layout, layout, SHA256_LEN) != 0)
                return errmsg_set(err, -ESTALE, "chunk map was written for another inode/chunk layout of this blob");
        return 0;
}

/* Feeds little-endian u64s to a SHA-256 through a buffer: one EVP call per
 * 4 KiB instead of one per field keeps a million-chunk index at a few ms. */
typedef struct LayoutHash {
        Sha256 *sha;
        uint8_t buf[4096];
        size_t len;
} LayoutHash;

static void layout_put(LayoutHash *lh, uint64_t v) {
        if (lh->len + 8 > sizeof(lh->buf)) {
                sha256_update(lh->sha, lh->buf, lh->len);
                lh->len = 0;
        }
        for (unsigned i = 0; i < 8; i++)
                lh->buf[lh->len++] = (uint8_t) (v >> (8 * i));
}

int cache_map_layout(const Index *idx, uint8_t ret[SHA256_LEN]) {
        static const char tag[] = "holdfast cache layout 1";
        _cleanup_free_ LayoutHash *lh = calloc(1, sizeof(*lh));
        if (!lh)
                return -ENOMEM;
        lh->sha = sha256_new();
        if (!lh->sha)
                return -ENOMEM;
        sha256_update(lh->sha, tag, sizeof(tag));
        layout_put(lh, idx->n_inodes);
        layout_put(lh, idx->n_chunks);
        for (size_t i = 0; i < idx->n_inodes; i++) {
                const IndexInode *in = &idx->inodes[i];
                if (!S_ISREG(in->mode))
                        continue;
                layout_put(lh, i + 1);
                layout_put(lh, in->size);
                layout_put(lh, in->first);
                layout_put(lh, in->count);
        }
        for (size_t i = 0; i < idx->n_chunks; i++) {
                layout_put(lh, idx->chunks[i].file_offset);
                layout_put(lh, idx->chunks[i].size);
        }
        sha256_update(lh->sha, lh->buf, lh->len);
        sha256_final(lh->sha, ret);
        sha256_free(lh->sha);
        return 0;
}
