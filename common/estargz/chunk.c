/* Chunk decoding. In eStargz every chunk starts a gzip member of its own
 * (the writer closes the member before each chunk), so decoding starts at
 * the first byte of the range and stops as soon as the chunk's bytes are
 * out; the tar padding and headers that follow in the member are never
 * inflated. zstd:chunked is the same with frames, plus an inner offset.
 *
 * gzip members are inflated whole by libdeflate (about twice zlib's
 * speed) straight into the decoder's slot, which has MEMBER_SLACK bytes of
 * room past the chunk for the padding and headers that end its member; a
 * member with more than that, an inner offset, or a buffer without the
 * room goes through zlib's streaming inflate, which stops at the chunk's
 * end; so does a member libdeflate finds bad, so that both ways give the
 * same answer (zlib never reads past the chunk's bytes). */
#include "common/estargz/chunk.h"

#include <errno.h>
#include <inttypes.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "common/util/digest.h"
#include "common/util/macro.h"

struct ChunkDecoder {
        z_stream z;
        bool z_init;
        struct libdeflate_decompressor *ld;  /* owned */
        ZSTD_DCtx *zctx;   /* owned */
        uint8_t *scratch;  /* owned: discarded bytes (inner offsets) */
        uint8_t *slot;     /* owned: the remembered decoded chunk */
        size_t slot_cap;
        bool slot_valid;
        uint64_t slot_layer;
        size_t slot_chunk;
        uint8_t *input;    /* owned: compressed bytes */
        size_t input_cap;
};

#define SCRATCH (64u << 10)
#define MEMBER_SLACK (64u << 10)

int chunk_decoder_new(ChunkDecoder **ret) {
        ChunkDecoder *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        if (inflateInit2(&d->z, 16 + MAX_WBITS) != Z_OK) {
                free(d);
                return -ENOMEM;
        }
        d->z_init = true;
        d->zctx = ZSTD_createDCtx();
        d->ld = libdeflate_alloc_decompressor();
        d->scratch = malloc(SCRATCH);
        if (!d->zctx || !d->ld || !d->scratch) {
                chunk_decoder_free(d);
                return -ENOMEM;
        }
        *ret = d;
        return 0;
}

ChunkDecoder *chunk_decoder_free(ChunkDecoder *d) {
        if (!d)
                return NULL;
        if (d->z_init)
                inflateEnd(&d->z);
        ZSTD_freeDCtx(d->zctx);
        if (d->ld)
                libdeflate_free_decompressor(d->ld);
        free(d->scratch);
        free(d->slot);
        free(d->input);
        free(d);
        return NULL;
}

const uint8_t *chunk_decoder_cached(ChunkDecoder *d, uint64_t layer_id, size_t chunk) {
        return d->slot_valid && d->slot_layer == layer_id && d->slot_chunk == chunk ? d->slot : NULL;
}

static uint8_t *grow(uint8_t **buf, size_t *cap, size_t size) {
        if (size > *cap) {
                uint8_t *p = realloc(*buf, size);
                if (!p)
                        return NULL;
                *buf = p;
                *cap = size;
        }
        return *buf ? *buf : (*buf = malloc(1));
}

uint8_t *chunk_decoder_slot(ChunkDecoder *d, size_t size) {
        d->slot_valid = false;
        /* room for the rest of the chunk's member (whole-member inflate) */
        return size <= SIZE_MAX - MEMBER_SLACK ? grow(&d->slot, &d->slot_cap, size + MEMBER_SLACK) : NULL;
}

void chunk_decoder_remember(ChunkDecoder *d, uint64_t layer_id, size_t chunk) {
        d->slot_valid = true;
        d->slot_layer = layer_id;
        d->slot_chunk = chunk;
}

uint8_t *chunk_decoder_input(ChunkDecoder *d, size_t size) {
        return grow(&d->input, &d->input_cap, size);
}

/* Inflates until `want` bytes went to out (after discarding `skip`),
 * crossing member boundaries if the chunk continues in the next member. */
static int inflate_range(ChunkDecoder *d, const uint8_t *in, size_t in_len, uint64_t skip, uint8_t *out, uint64_t want) {
        inflateReset2(&d->z, 16 + MAX_WBITS);
        d->z.next_in = (Bytef *) in;
        d->z.avail_in = (uInt) MIN(in_len, (size_t) UINT32_MAX);
        size_t in_left = in_len - d->z.avail_in;
        uint64_t done = 0;
        while (done < want) {
                bool skipping = skip > 0;
                uint8_t *dst = skipping ? d->scratch : out + done;
                uint64_t room = skipping ? MIN(skip, (uint64_t) SCRATCH) : want - done;
                d->z.next_out = dst;
                d->z.avail_out = (uInt) MIN(room, (uint64_t) UINT32_MAX);
                uInt before = d->z.avail_out;
                if (d->z.avail_in == 0 && in_left > 0) {
                        d->z.avail_in = (uInt) MIN(in_left, (size_t) UINT32_MAX);
                        in_left -= d->z.avail_in;
                }
                int zr = inflate(&d->z, Z_NO_FLUSH);
                uint64_t n = before - d->z.avail_out;
                if (skipping)
                        skip -= n;
                else
                        done += n;
                if (zr == Z_STREAM_END) {
                        if (done == want)
                                break;
                        if (d->z.avail_in == 0 && in_left == 0)
                                return -EBADMSG; /* member ended before the chunk did */
                        inflateReset2(&d->z, 16 + MAX_WBITS);
                        continue;
                }
                if (zr == Z_BUF_ERROR && n == 0)
                        return -EBADMSG; /* input ran out */
                if (zr != Z_OK && zr != Z_BUF_ERROR)
                        return zr == Z_MEM_ERROR ? -ENOMEM : -EBADMSG;
        }
        return 0;
}

/* Whole members into out, which has room for cap bytes: -ENOBUFS when a
 * member does not fit (the caller streams it instead). */
static int deflate_members(ChunkDecoder *d, const uint8_t *in, size_t in_len, uint8_t *out, uint64_t want,
                           size_t cap) {
        size_t pos = 0;
        uint64_t done = 0;
        while (done < want) {
                size_t used = 0, n = 0;
                if (pos >= in_len)
                        return -EBADMSG; /* member ended before the chunk did */
                enum libdeflate_result lr =
                        libdeflate_gzip_decompress_ex(d->ld, in + pos, in_len - pos, out + done, cap - done, &used, &n);
                if (lr == LIBDEFLATE_INSUFFICIENT_SPACE)
                        return -ENOBUFS;
                if (lr != LIBDEFLATE_SUCCESS || used == 0)
                        return -EBADMSG;
                pos += used;
                done += n;
        }
        return 0;
}

static int zstd_range(ChunkDecoder *d, const uint8_t *in, size_t in_len, uint64_t skip, uint8_t *out, uint64_t want) {
        ZSTD_DCtx_reset(d->zctx, ZSTD_reset_session_only);
        ZSTD_inBuffer ib = { in, in_len, 0 };
        uint64_t done = 0;
        while (done < want) {
                bool skipping = skip > 0;
                ZSTD_outBuffer ob = {
                        skipping ? d->scratch : out + done,
                        skipping ? (size_t) MIN(skip, (uint64_t) SCRATCH) : (size_t) (want - done),
                        0,
                };
                size_t zr = ZSTD_decompressStream(d->zctx, &ob, &ib);
                if (ZSTD_isError(zr))
                        return ZSTD_getErrorCode(zr) == ZSTD_error_memory_allocation ? -ENOMEM : -EBADMSG;
                if (skipping)
                        skip -= ob.pos;
                else
                        done += ob.pos;
                if (ob.pos == 0 && ib.pos == ib.size)
                        return -EBADMSG; /* input ran out */
        }
        return 0;
}

int chunk_decode(ChunkDecoder *d, LayerFormat format, const Index *idx, const IndexChunk *c,
                 const uint8_t *comp, size_t comp_len, uint8_t *out, bool verify, ErrMsg *err) {
        if (comp_len > c->blob_end - c->blob_offset)
                return errmsg_set(err, -EINVAL, "chunk at %" PRIu64 ": %zu compressed bytes given for a %" PRIu64 "-byte range",
                                  c->blob_offset, comp_len, c->blob_end - c->blob_offset);
        if (verify && c->digest == INDEX_NONE)
                return errmsg_set(err, -EBADMSG, "chunk at %" PRIu64 " has no digest in the TOC; cannot verify it", c->blob_offset);
        if (c->size == 0)
                return 0;
        int r = -ENOBUFS;
        if (layer_format_is_gzip(format) && c->inner_offset == 0 && out == d->slot &&
            d->slot_cap >= (size_t) c->size + MEMBER_SLACK)
                r = deflate_members(d, comp, comp_len, out, c->size, d->slot_cap);
        /* zlib decides every case the fast path does not take or cannot
         * finish: a member past the room, and bad data (libdeflate checks
         * the whole member, CRC included; a chunk that ends before a
         * damaged part of its member is still whole, as zlib sees it) */
        if (r == -ENOBUFS || r == -EBADMSG)
                r = layer_format_is_gzip(format) ? inflate_range(d, comp, comp_len, c->inner_offset, out, c->size)
                                                 : zstd_range(d, comp, comp_len, c->inner_offset, out, c->size);
        if (r == -EBADMSG)
                return errmsg_set(err, r, "chunk at blob offset %" PRIu64 ": corrupt or truncated %s data",
                                  c->blob_offset, layer_format_is_gzip(format) ? "gzip" : "zstd");
        if (r < 0)
                return errmsg_set(err, r, "chunk at blob offset %" PRIu64 ": out of memory", c->blob_offset);
        if (verify) {
                uint8_t got[SHA256_LEN];
                sha256_buf(out, (size_t) c->size, got);
                if (memcmp(got, idx->digests[c->digest], SHA256_LEN) != 0) {
                        char want_s[DIGEST_STRING_LEN + 1], got_s[DIGEST_STRING_LEN + 1];
                        digest_format(idx->digests[c->digest], want_s);
                        digest_format(got, got_s);
                        return errmsg_set(err, -EBADMSG, "chunk at blob offset %" PRIu64 ": digest mismatch: TOC says %s, data is %s",
                                          c->blob_offset, want_s, got_s);
                }
        }
        return 0;
}
