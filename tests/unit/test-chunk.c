/* Tests of common/estargz/chunk: decoding chunks of gzip members (one per
 * chunk, or one chunk across two members) and of zstd frames shared by
 * several chunks through innerOffset; verification against the TOC's
 * digests; truncated, corrupt and oversized input. The blobs are laid out
 * by hand so that every byte offset is known. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/estargz/chunk.h"
#include "common/estargz/toc.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

static Index *index_of(const char *json, uint64_t toc_offset, LayerFormat fmt) {
        Toc *t = NULL;
        Index *idx = NULL;
        ErrMsg err = {};
        if (toc_parse_json(json, strlen(json), NULL, &t, &err) < 0) {
                diag("TOC: %s", err.text);
                return NULL;
        }
        IndexOptions o = { .toc_offset = toc_offset, .format = fmt };
        if (index_build(t, &o, &idx, &err) < 0)
                diag("index: %s", err.text);
        toc_free(t);
        return idx;
}

static const IndexChunk *chunk_of(const Index *idx, const char *path, uint32_t i) {
        uint64_t ino;
        if (index_lookup_path(idx, path, &ino) < 0)
                return NULL;
        const IndexInode *in = index_inode(idx, ino);
        return i < in->count ? &idx->chunks[in->first + i] : NULL;
}

static int decode(ChunkDecoder *d, LayerFormat fmt, const Index *idx, const IndexChunk *c, const StrBuf *blob, uint8_t *out,
                  bool verify, ErrMsg *err) {
        *err = (ErrMsg) {};
        return chunk_decode(d, fmt, idx, c, (const uint8_t *) blob->data + c->blob_offset, (size_t) (c->blob_end - c->blob_offset),
                            out, verify, err);
}

/* in_slot: decode into the decoder's slot (room past the chunk: members
 * inflate whole, with libdeflate), else into a buffer of exactly the
 * chunk's size (zlib streams the member). */
static void test_gzip(ChunkDecoder *d, bool in_slot) {
        Rng rng = { 7 };
        enum { CH = 5000, SIZE = 12000 };
        static uint8_t data[SIZE], out_buf[SIZE];
        uint8_t *out = in_slot ? chunk_decoder_slot(d, SIZE) : out_buf;
        if (!ok(out, "an output buffer"))
                return;
        diag("gzip chunks decoded into %s", in_slot ? "the decoder's slot" : "a buffer of their size");
        rng_fill(&rng, data, SIZE / 2);
        for (size_t i = SIZE / 2; i < SIZE; i++)
                data[i] = (uint8_t) "compressible "[i % 13];

        StrBuf blob = {};
        strbuf_append(&blob, "pad", 3); /* offset 0 is never a chunk */
        int64_t o0 = blob_add(&blob, data, CH);
        int64_t o1 = blob_add(&blob, data + CH, CH);
        int64_t o2 = blob_add(&blob, data + 2 * CH, SIZE - 2 * CH);
        /* one chunk across two members: the writer never does it, readers must cope */
        int64_t o3 = blob_add(&blob, data, 100);
        blob_add(&blob, data + 100, 200);
        /* a chunk whose member holds fewer bytes than the TOC claims */
        int64_t o4 = blob_add(&blob, data, 50);
        uint64_t toc_off = blob.len;

        char d0[72], d1[72], d2[72], d3[72], d4[72], json[4096];
        sha256_hex(data, CH, d0);
        sha256_hex(data + CH, CH, d1);
        sha256_hex(data + 2 * CH, SIZE - 2 * CH, d2);
        sha256_hex(data, 300, d3);
        sha256_hex(data, 60, d4);
        snprintf(json, sizeof(json),
                 "{\"version\":1,\"entries\":["
                 "{\"name\":\"f\",\"type\":\"reg\",\"size\":%d,\"offset\":%lld,\"chunkSize\":%d,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":%lld,\"chunkOffset\":%d,\"chunkSize\":%d,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":%lld,\"chunkOffset\":%d},"
                 "{\"name\":\"two\",\"type\":\"reg\",\"size\":300,\"offset\":%lld,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"short\",\"type\":\"reg\",\"size\":60,\"offset\":%lld,\"chunkDigest\":\"%s\"}]}",
                 SIZE, (long long) o0, CH, d0, (long long) o1, CH, CH, d1, (long long) o2, 2 * CH, (long long) o3, d3,
                 (long long) o4, d4);
        Index *idx = index_of(json, toc_off, LAYER_FORMAT_ESTARGZ);
        if (!ok(idx, "index of the hand-made gzip blob"))
                return;
        ErrMsg err;
        const IndexChunk *c0 = chunk_of(idx, "f", 0), *c1 = chunk_of(idx, "f", 1), *c2 = chunk_of(idx, "f", 2);

        memset(out, 0, SIZE);
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, c0, &blob, out, true, &err), 0, "chunk 0 decodes and verifies (%s)", err.text);
        ok(memcmp(out, data, CH) == 0, "  bytes of chunk 0 (random data, stored blocks)");
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, c1, &blob, out, true, &err), 0, "chunk 1 decodes and verifies (%s)", err.text);
        ok(memcmp(out, data + CH, CH) == 0, "  bytes of chunk 1 (half text)");
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, c2, &blob, out, true, &err), -EBADMSG, "chunk 2 has no digest: refused with verify");
        has_str(err.text, "no digest", "  message: %s", err.text);
        memset(out, 0, SIZE);
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, c2, &blob, out, false, &err), 0, "chunk 2 decodes without verify");
        ok(memcmp(out, data + 2 * CH, SIZE - 2 * CH) == 0, "  bytes of chunk 2 (compressible)");

        memset(out, 0, SIZE);
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, chunk_of(idx, "two", 0), &blob, out, true, &err), 0,
               "a chunk that continues into the next member (%s)", err.text);
        ok(memcmp(out, data, 300) == 0, "  bytes across the member boundary");
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, chunk_of(idx, "short", 0), &blob, out, true, &err), -EBADMSG,
               "member shorter than the chunk: -EBADMSG");
        has_str(err.text, "corrupt or truncated gzip", "  message: %s", err.text);

        /* wrong digest: chunk 1's bytes checked against chunk 0's digest */
        IndexChunk wrong = *c1;
        wrong.digest = c0->digest;
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, &wrong, &blob, out, true, &err), -EBADMSG, "digest mismatch: -EBADMSG");
        has_str(err.text, "digest mismatch", "  message: %s", err.text);
        has_str(err.text, d1, "  message names the digest of the data");

        /* too many compressed bytes is a caller error */
        err = (ErrMsg) {};
        is_int(chunk_decode(d, LAYER_FORMAT_ESTARGZ, idx, c0, (const uint8_t *) blob.data + c0->blob_offset,
                            (size_t) (c0->blob_end - c0->blob_offset) + 1, out, true, &err), -EINVAL, "comp_len past the range: -EINVAL");
        /* truncated range */
        err = (ErrMsg) {};
        is_int(chunk_decode(d, LAYER_FORMAT_ESTARGZ, idx, c1, (const uint8_t *) blob.data + c1->blob_offset,
                            (size_t) (c1->blob_end - c1->blob_offset) / 2, out, true, &err), -EBADMSG, "half the member: -EBADMSG");
        has_str(err.text, "corrupt or truncated", "  message: %s", err.text);

        /* a flipped byte in the compressed range: an error or the right bytes, never wrong bytes */
        size_t errors = 0, wrong_bytes = 0;
        uint64_t len = c1->blob_end - c1->blob_offset;
        for (uint64_t at = 0; at < len; at += 7) {
                StrBuf bad = {};
                strbuf_append(&bad, blob.data, blob.len);
                bad.data[c1->blob_offset + at] ^= 0x10;
                memset(out, 0, SIZE);
                int r = decode(d, LAYER_FORMAT_ESTARGZ, idx, c1, &bad, out, true, &err);
                if (r == -EBADMSG && (strstr(err.text, "digest mismatch") || strstr(err.text, "corrupt")))
                        errors++;
                else if (r != 0 || memcmp(out, data + CH, CH) != 0)
                        wrong_bytes++;
                strbuf_done(&bad);
        }
        is_int(wrong_bytes, 0, "no flipped byte yields wrong data or another error");
        ok(errors > len / 7 / 2, "most flipped bytes are caught (%zu of %llu)", errors, (unsigned long long) (len / 7 + 1));

        /* a member holding far more than its chunk (headers of many
         * entries after it): more than the slot's room, streamed */
        enum { BIG = 200000 };
        uint8_t *big = malloc(BIG);
        if (big) {
                for (size_t i = 0; i < BIG; i++)
                        big[i] = (uint8_t) (i * 7 + i / 1000);
                StrBuf b2 = {};
                strbuf_append(&b2, "pad", 3);
                int64_t ob = blob_add(&b2, big, BIG);
                char db[72], json2[1024];
                sha256_hex(big, 100, db);
                snprintf(json2, sizeof(json2),
                         "{\"version\":1,\"entries\":[{\"name\":\"h\",\"type\":\"reg\",\"size\":100,"
                         "\"offset\":%lld,\"chunkDigest\":\"%s\"}]}", (long long) ob, db);
                Index *i2 = index_of(json2, b2.len, LAYER_FORMAT_ESTARGZ);
                uint8_t *hb = in_slot ? chunk_decoder_slot(d, 100) : out;
                if (ok(i2 && hb, "index of a blob whose member outgrows its chunk")) {
                        memset(hb, 0, 100);
                        is_int(decode(d, LAYER_FORMAT_ESTARGZ, i2, chunk_of(i2, "h", 0), &b2, hb, true, &err), 0,
                               "a 100-byte chunk in a %d-byte member (%s)", BIG, err.text);
                        ok(memcmp(hb, big, 100) == 0, "  right bytes");
                }
                index_free(i2);
                strbuf_done(&b2);
                free(big);
                out = in_slot ? chunk_decoder_slot(d, SIZE) : out_buf;
        }

        /* the decoder is reusable after errors */
        is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx, c0, &blob, out, true, &err), 0, "decoder still works after errors");
        ok(memcmp(out, data, CH) == 0, "  right bytes");

        index_free(idx);
        strbuf_done(&blob);
}

static void test_zstd(ChunkDecoder *d) {
        /* three chunks in one zstd frame, the second starting past the 64 KiB
         * scratch buffer; then a chunk with a frame of its own */
        enum { CH = 70000, SIZE = 3 * CH - 123 };
        uint8_t *data = malloc(SIZE), *out = malloc(SIZE);
        Rng rng = { 99 };
        rng_fill(&rng, data, SIZE);
        for (size_t i = 0; i < SIZE; i += 3)
                data[i] = 'z';

        StrBuf blob = {};
        strbuf_append(&blob, "x", 1);
        uint64_t frame = blob.len;
        size_t bound = ZSTD_compressBound(SIZE);
        strbuf_reserve(&blob, bound);
        blob.len += ZSTD_compress(blob.data + blob.len, bound, data, SIZE, 3);
        uint64_t frame2 = blob.len;
        strbuf_reserve(&blob, ZSTD_compressBound(1000));
        blob.len += ZSTD_compress(blob.data + blob.len, ZSTD_compressBound(1000), data, 1000, 3);
        uint64_t toc_off = blob.len;

        char dg[3][72], dsmall[72], json[4096];
        for (int i = 0; i < 3; i++)
                sha256_hex(data + i * CH, i < 2 ? CH : SIZE - 2 * CH, dg[i]);
        sha256_hex(data, 1000, dsmall);
        snprintf(json, sizeof(json),
                 "{\"version\":1,\"entries\":["
                 "{\"name\":\"f\",\"type\":\"reg\",\"size\":%d,\"offset\":%llu,\"chunkSize\":%d,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":%llu,\"chunkOffset\":%d,\"chunkSize\":%d,\"innerOffset\":%d,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":%llu,\"chunkOffset\":%d,\"innerOffset\":%d,\"chunkDigest\":\"%s\"},"
                 "{\"name\":\"g\",\"type\":\"reg\",\"size\":1000,\"offset\":%llu,\"chunkDigest\":\"%s\"}]}",
                 SIZE, (unsigned long long) frame, CH, dg[0], (unsigned long long) frame, CH, CH, CH, dg[1],
                 (unsigned long long) frame, 2 * CH, 2 * CH, dg[2], (unsigned long long) frame2, dsmall);
        Index *idx = index_of(json, toc_off, LAYER_FORMAT_ZSTD_CHUNKED);
        if (!ok(idx, "index of the hand-made zstd:chunked blob"))
                goto out;
        ErrMsg err;
        for (uint32_t i = 0; i < 3; i++) {
                const IndexChunk *c = chunk_of(idx, "f", i);
                memset(out, 0, SIZE);
                is_int(decode(d, LAYER_FORMAT_ZSTD_CHUNKED, idx, c, &blob, out, true, &err), 0,
                       "zstd chunk %u (innerOffset %llu) decodes and verifies (%s)", i, (unsigned long long) c->inner_offset, err.text);
                ok(memcmp(out, data + i * CH, c->size) == 0, "  bytes");
        }
        const IndexChunk *g = chunk_of(idx, "g", 0);
        is_int(decode(d, LAYER_FORMAT_ZSTD_CHUNKED, idx, g, &blob, out, true, &err), 0, "zstd frame of its own");
        ok(memcmp(out, data, 1000) == 0, "  bytes");

        const IndexChunk *c2 = chunk_of(idx, "f", 2);
        err = (ErrMsg) {};
        is_int(chunk_decode(d, LAYER_FORMAT_ZSTD_CHUNKED, idx, c2, (const uint8_t *) blob.data + c2->blob_offset, 100, out, true, &err),
               -EBADMSG, "truncated zstd frame: -EBADMSG");
        has_str(err.text, "corrupt or truncated zstd", "  message: %s", err.text);
        StrBuf bad = {};
        strbuf_append(&bad, blob.data, blob.len);
        memset(bad.data + frame2 + 4, 0xa5, 8); /* the frame header */
        is_int(decode(d, LAYER_FORMAT_ZSTD_CHUNKED, idx, g, &bad, out, true, &err), -EBADMSG, "garbage zstd frame: -EBADMSG");
        strbuf_done(&bad);

        /* a gzip decode after zstd ones: one decoder serves both */
        StrBuf gz = {};
        strbuf_append(&gz, "x", 1);
        blob_add(&gz, data, 1000);
        char j2[512];
        snprintf(j2, sizeof(j2), "{\"version\":1,\"entries\":[{\"name\":\"g\",\"type\":\"reg\",\"size\":1000,\"offset\":1,\"chunkDigest\":\"%s\"}]}",
                 dsmall);
        Index *idx2 = index_of(j2, gz.len, LAYER_FORMAT_ESTARGZ);
        if (idx2) {
                is_int(decode(d, LAYER_FORMAT_ESTARGZ, idx2, &idx2->chunks[0], &gz, out, true, &err), 0, "gzip after zstd on one decoder");
                ok(memcmp(out, data, 1000) == 0, "  bytes");
        }
        index_free(idx2);
        strbuf_done(&gz);
out:
        index_free(idx);
        strbuf_done(&blob);
        free(data);
        free(out);
}

int main(void) {
        ChunkDecoder *d = NULL;
        if (!is_int(chunk_decoder_new(&d), 0, "chunk_decoder_new"))
                return done();
        test_gzip(d, false);
        test_gzip(d, true);
        test_zstd(d);
        ok(chunk_decoder_free(d) == NULL, "chunk_decoder_free");
        ok(chunk_decoder_free(NULL) == NULL, "chunk_decoder_free(NULL)");
        return done();
}
