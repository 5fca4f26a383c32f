/* Decoding one chunk of a layer: its compressed bytes in, its verified
 * uncompressed bytes out. A ChunkDecoder keeps the zlib/zstd state between
 * calls so that the hot path allocates nothing; one decoder per thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/estargz/format.h"
#include "common/estargz/index.h"
#include "common/util/errmsg.h"

typedef struct ChunkDecoder ChunkDecoder;

int chunk_decoder_new(ChunkDecoder **ret);
ChunkDecoder *chunk_decoder_free(ChunkDecoder *d);

/* comp holds the blob bytes [c->blob_offset, c->blob_offset + comp_len);
 * comp_len is normally c->blob_end - c->blob_offset and must not exceed it.
 * Writes exactly c->size bytes to out. With verify, checks the chunk's
 * sha256 and fails with -EBADMSG when the TOC has no digest for it.
 * Returns 0, -EBADMSG on corrupt data, a short member or a digest mismatch
 * (out then holds garbage that must not be used). */
int chunk_decode(ChunkDecoder *d, LayerFormat format, const Index *idx, const IndexChunk *c,
                 const uint8_t *comp, size_t comp_len, uint8_t *out, bool verify, ErrMsg *err);
