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
/* The decoder remembers the last chunk decoded through
 * chunk_decoder_slot(), so that reads smaller than a chunk (the kernel asks
 * for 128 KiB at a time) decode and verify each chunk once.
 * chunk_decoder_cached() returns that chunk's bytes if (layer_id, chunk)
 * is the one remembered, else NULL. chunk_decoder_slot() returns a buffer
 * of at least size bytes to decode into and forgets what was remembered;
 * chunk_decoder_remember() marks it valid once verified. Layer ids are
 * never reused (layer.c), so a freed layer's chunk is never served. */
const uint8_t *chunk_decoder_cached(ChunkDecoder *d, uint64_t layer_id, size_t chunk);
uint8_t *chunk_decoder_slot(ChunkDecoder *d, size_t size);
void chunk_decoder_remember(ChunkDecoder *d, uint64_t layer_id, size_t chunk);
/* A reusable buffer for compressed bytes, at least size bytes. */
uint8_t *chunk_decoder_input(ChunkDecoder *d, size_t size);

int chunk_decode(ChunkDecoder *d, LayerFormat format, const Index *idx, const IndexChunk *c,
                 const uint8_t *comp, size_t comp_len, uint8_t *out, bool verify, ErrMsg *err);
