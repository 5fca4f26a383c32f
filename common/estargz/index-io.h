/* A layer's metadata as bytes, for RocksDB: the footer, blob size, TOC
 * digest and the whole Index (its flat arrays), behind a versioned,
 * checksummed header. Decoding trusts nothing: every count, offset and
 * cross-reference is checked (dirents point at existing inodes, chunk and
 * dirent ranges are inside their arrays, strings inside the pool, the
 * sha256 of the payload matches), so a corrupt record is refused with
 * -EBADMSG and the caller re-indexes the layer from its blob.
 * Pure functions, any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/estargz/footer.h"
#include "common/estargz/index.h"
#include "common/util/digest.h"
#include "common/util/errmsg.h"

#define LAYER_IMAGE_VERSION 1

typedef struct LayerImage {
        Footer footer;
        uint64_t blob_size;
        uint8_t toc_digest[SHA256_LEN];
        const Index *index;  /* encode: borrowed */
} LayerImage;

/* Returns 0 and a malloc'd buffer in *ret / *ret_len, or -ENOMEM. */
int layer_image_encode(const LayerImage *img, uint8_t **ret, size_t *ret_len);

/* Decodes and validates. On success *ret_img is filled and
 * *ret_index is a new Index the caller owns (index_free). Returns 0,
 * -EBADMSG (corrupt, truncated, wrong checksum), -EPROTO (another
 * LAYER_IMAGE_VERSION), -ENOMEM. */
int layer_image_decode(const void *buf, size_t len, LayerImage *ret_img, Index **ret_index, ErrMsg *err);
