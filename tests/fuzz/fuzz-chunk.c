/* libFuzzer target for the read path: the input is a whole layer blob.
 *
 * 1. layer_open() over the input (footer, gzip/zstd TOC, index), then
 *    every regular file read twice, with layer_read() in odd pieces and
 *    with layer_read_file(): both must succeed or fail together and agree
 *    on the bytes. Files, chunks and the total are capped so that a TOC
 *    claiming huge files costs nothing. Files whose chunks all have
 *    digests are read once more with verification on.
 * 2. chunk_decode() straight on the input, as a gzip and as a zstd chunk
 *    with a synthetic Index: the length to ask for comes from the
 *    streaming decompressor (decompress.c), whose bytes chunk_decode()
 *    must reproduce exactly, also with an inner offset; then, when the
 *    stream ended cleanly, once asking for more than there is, which must
 *    fail cleanly.
 * Any disagreement aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/estargz/chunk.h"
#include "common/estargz/decompress.h"
#include "common/estargz/layer.h"
#include "common/util/digest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILE_SIZE (256u << 10)   /* larger files are skipped */
#define MAX_TOTAL (2u << 20)         /* decoded bytes per input, all files */
#define MAX_FILES 64
#define MAX_DECODE (1u << 20)        /* raw chunk_decode() output */

#define CHECK(x)                        \
        do {                            \
                if (!(x))               \
                        abort();        \
        } while (0)

typedef struct Blob {
        const uint8_t *data;
        size_t len;
} Blob;

static ssize_t blob_read_at(void *userdata, void *buf, size_t len, uint64_t off) {
        const Blob *b = userdata;
        if (off >= b->len)
                return 0;
        size_t n = len < b->len - off ? len : b->len - (size_t) off;
        memcpy(buf, b->data + off, n);
        return (ssize_t) n;
}

typedef struct Sink {
        uint8_t *buf;
        size_t len, cap;
} Sink;

static int sink_append(void *userdata, const void *data, size_t len) {
        Sink *s = userdata;
        CHECK(len <= s->cap - s->len); /* never more than the file size */
        memcpy(s->buf + s->len, data, len);
        s->len += len;
        return 0;
}

static bool file_is_verifiable(const Index *idx, const IndexInode *in) {
        for (uint32_t i = 0; i < in->count; i++)
                if (idx->chunks[in->first + i].digest == INDEX_NONE)
                        return false;
        return true;
}

static void fuzz_layer(const uint8_t *data, size_t size, ChunkDecoder *d) {
        Blob blob = { data, size };
        LayerOptions opts = {
                .limits = { .max_json_bytes = 4u << 20, .max_entries = 20000 },
                .allow_unverified = true,
        };
        Layer *l = NULL;
        ErrMsg err = {};
        int r = layer_open(blob_read_at, &blob, size, &opts, &l, &err);
        if (r < 0) {
                CHECK(l == NULL);
                return;
        }
        CHECK(l && l->index && l->blob_size == size);

        size_t total = 0, files = 0;
        for (uint64_t ino = 1; ino <= l->index->n_inodes && files < MAX_FILES; ino++) {
                const IndexInode *in = index_inode(l->index, ino);
                if (!S_ISREG(in->mode)) {
                        uint8_t c;
                        CHECK(layer_read(l, d, ino, 0, 1, &c, &err) == (S_ISDIR(in->mode) ? -EISDIR : -EINVAL));
                        continue;
                }
                if (in->size > MAX_FILE_SIZE || total + 2 * in->size > MAX_TOTAL)
                        continue;
                files++;
                total += 2 * (size_t) in->size;

                size_t fsize = (size_t) in->size;
                uint8_t *a = malloc(fsize + 1);
                Sink s = { .buf = malloc(fsize + 1), .cap = fsize };
                CHECK(a && s.buf);

                /* layer_read() in pieces of odd sizes */
                bool ok_a = true;
                size_t piece = 1 + (size_t) (ino * 4093 % 65521);
                for (size_t off = 0; off < fsize;) {
                        ssize_t n = layer_read(l, d, ino, off, piece, a + off, &err);
                        if (n < 0) {
                                ok_a = false;
                                break;
                        }
                        CHECK(n > 0 && (size_t) n <= piece && (size_t) n <= fsize - off);
                        CHECK((size_t) n == piece || off + (size_t) n == fsize); /* short only at EOF */
                        off += (size_t) n;
                }
                if (ok_a) {
                        uint8_t c;
                        CHECK(layer_read(l, d, ino, fsize, 1, &c, &err) == 0);
                }

                r = layer_read_file(l, d, ino, sink_append, &s, &err);
                bool ok_b = r >= 0;
                /* Unverified, both walk the same chunks with the same decoder. */
                CHECK(ok_a == ok_b);
                if (ok_a && ok_b)
                        CHECK(s.len == fsize && memcmp(a, s.buf, fsize) == 0);

                if (ok_a && file_is_verifiable(l->index, in)) {
                        l->verify = true;
                        s.len = 0;
                        r = layer_read_file(l, d, ino, sink_append, &s, &err);
                        if (r >= 0)
                                CHECK(s.len == fsize && memcmp(a, s.buf, fsize) == 0);
                        l->verify = false;
                }
                free(a);
                free(s.buf);
        }

        CHECK(layer_read(l, d, 0, 0, 1, &(uint8_t) { 0 }, &err) == -ENOENT);
        CHECK(layer_read(l, d, l->index->n_inodes + 1, 0, 1, &(uint8_t) { 0 }, &err) == -ENOENT);
        layer_free(l);
}

/* The streaming decompressor's output, up to MAX_DECODE bytes, or as far
 * as it got before an error (a failing call may have written bytes it does
 * not count, so it is read in small pieces). *ret_clean says whether the
 * input ended cleanly within the cap. */
static size_t stream_decode(Compression c, const uint8_t *data, size_t size, uint8_t *out, bool *ret_clean) {
        MemReader m = { .data = data, .len = size };
        Decompress *dz = NULL;
        CHECK(decompress_new(c, mem_reader_read, &m, true, &dz) >= 0);
        size_t got = 0;
        *ret_clean = false;
        while (got < MAX_DECODE) {
                size_t want = MAX_DECODE - got < 4096 ? MAX_DECODE - got : 4096;
                ssize_t n = decompress_read(dz, out + got, want);
                if (n == 0)
                        *ret_clean = true;
                if (n <= 0)
                        break;
                CHECK((size_t) n <= want);
                got += (size_t) n;
        }
        decompress_free(dz);
        return got;
}

static void fuzz_chunk_decode(const uint8_t *data, size_t size, ChunkDecoder *d) {
        static const struct {
                LayerFormat format;
                Compression c;
        } kinds[] = {
                { LAYER_FORMAT_ESTARGZ, COMPRESSION_GZIP },
                { LAYER_FORMAT_ZSTD_CHUNKED, COMPRESSION_ZSTD },
        };
        /* static: a fresh MiB per input costs ASan more than the decoding */
        static uint8_t want[MAX_DECODE], out[MAX_DECODE + 1];
        uint8_t(*digests)[SHA256_LEN] = malloc(SHA256_LEN);
        CHECK(digests);

        for (size_t k = 0; k < 2; k++) {
                bool clean;
                size_t n = stream_decode(kinds[k].c, data, size, want, &clean);
                sha256_buf(want, n, digests[0]);
                Index idx = { .digests = digests, .n_digests = 1 };
                IndexChunk c = {
                        .size = n,
                        .blob_offset = 1,
                        .blob_end = 1 + (uint64_t) size,
                        .digest = 0,
                };
                ErrMsg err = {};

                /* exactly what the streaming decoder produced, verified */
                int r = chunk_decode(d, kinds[k].format, &idx, &c, data, size, out, true, &err);
                CHECK(r == 0 && memcmp(out, want, n) == 0);

                /* the same with an inner offset: the tail of it */
                if (n > 1) {
                        IndexChunk ci = c;
                        ci.inner_offset = n / 3 + 1;
                        ci.size = n - ci.inner_offset;
                        ci.digest = INDEX_NONE;
                        r = chunk_decode(d, kinds[k].format, &idx, &ci, data, size, out, false, &err);
                        CHECK(r == 0 && memcmp(out, want + ci.inner_offset, (size_t) ci.size) == 0);
                }

                /* one byte more than the data holds (when the stream ended
                 * cleanly within the cap): must fail, not overrun */
                if (clean) {
                        IndexChunk cm = c;
                        cm.size = n + 1;
                        cm.digest = INDEX_NONE;
                        r = chunk_decode(d, kinds[k].format, &idx, &cm, data, size, out, false, &err);
                        CHECK(r == -EBADMSG);
                }

                /* verification refuses a chunk without a digest, and a wrong one */
                IndexChunk cv = c;
                cv.digest = INDEX_NONE;
                CHECK(chunk_decode(d, kinds[k].format, &idx, &cv, data, size, out, true, &err) == -EBADMSG);
                if (n > 0) {
                        digests[0][0] ^= 1;
                        CHECK(chunk_decode(d, kinds[k].format, &idx, &c, data, size, out, true, &err) == -EBADMSG);
                }
        }
        free(digests);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static ChunkDecoder *d;
        if (!d)
                CHECK(chunk_decoder_new(&d) >= 0);
        fuzz_layer(data, size, d);
        fuzz_chunk_decode(data, size, d);
        return 0;
}
