/* Tests of common/estargz/decompress: detection, gzip members and zstd
 * frames (one or many, read in pieces of every size), pass-through, and
 * corrupt or truncated input turning into -EBADMSG. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/estargz/decompress.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

static int zstd_frame(StrBuf *out, const void *data, size_t len, int level) {
        size_t bound = ZSTD_compressBound(len);
        int r = strbuf_reserve(out, bound);
        if (r < 0)
                return r;
        size_t n = ZSTD_compress(out->data + out->len, bound, data, len, level);
        if (ZSTD_isError(n))
                return -EIO;
        out->len += n;
        return 0;
}

/* Decompresses all of src with reads of `step` bytes; returns the length
 * or -errno, output in out. */
static ssize_t inflate_all(Compression c, const StrBuf *src, bool multi, size_t step, StrBuf *out) {
        MemReader m = { .data = (const uint8_t *) src->data, .len = src->len };
        Decompress *d;
        int r = decompress_new(c, mem_reader_read, &m, multi, &d);
        if (r < 0)
                return r;
        uint8_t *buf = malloc(step);
        ssize_t total = 0;
        for (;;) {
                ssize_t n = decompress_read(d, buf, step);
                if (n < 0) {
                        total = n;
                        break;
                }
                if (n == 0)
                        break;
                strbuf_append(out, buf, (size_t) n);
                total += n;
        }
        free(buf);
        decompress_free(d);
        return total;
}

static void test_detect(void) {
        const uint8_t gz[] = { 0x1f, 0x8b, 0x08, 0 };
        const uint8_t zs[] = { 0x28, 0xb5, 0x2f, 0xfd };
        const uint8_t skip[] = { 0x5e, 0x2a, 0x4d, 0x18 };
        const uint8_t tar[] = { 'e', 't', 'c', '/' };
        is_int(compression_detect(gz, 4), COMPRESSION_GZIP, "gzip magic");
        is_int(compression_detect(gz, 2), COMPRESSION_NONE, "two bytes are not enough for gzip");
        is_int(compression_detect(zs, 4), COMPRESSION_ZSTD, "zstd magic");
        is_int(compression_detect(skip, 4), COMPRESSION_ZSTD, "zstd skippable frame");
        is_int(compression_detect(tar, 4), COMPRESSION_NONE, "plain bytes");
        is_int(compression_detect(NULL, 0), COMPRESSION_NONE, "nothing");
        is_str(compression_to_string(COMPRESSION_GZIP), "gzip", "name of gzip");
        is_str(compression_to_string(COMPRESSION_ZSTD), "zstd", "name of zstd");
        is_str(compression_to_string(COMPRESSION_NONE), "none", "name of none");
}

static void test_roundtrip(void) {
        Rng rng = { 42 };
        size_t len = 300000;
        uint8_t *plain = malloc(len);
        /* half random, half text: both stored and compressed blocks */
        rng_fill(&rng, plain, len / 2);
        for (size_t i = len / 2; i < len; i++)
                plain[i] = (uint8_t) "the quick brown fox "[i % 20];

        StrBuf gz = {}, zs = {};
        /* three members / frames, the middle one empty */
        gzip_member(&gz, plain, 100000, 6);
        gzip_member(&gz, plain, 0, 6);
        gzip_member(&gz, plain + 100000, len - 100000, 1);
        zstd_frame(&zs, plain, 100000, 3);
        /* a skippable frame between data frames, as zstd:chunked writes */
        static const uint8_t skippable[12] = { 0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'a', 'b', 'c', 'd' };
        strbuf_append(&zs, skippable, sizeof(skippable));
        zstd_frame(&zs, plain + 100000, len - 100000, 19);

        static const size_t steps[] = { 1, 7, 511, 4096, 1 << 20 };
        for (size_t s = 0; s < ELEMENTSOF(steps); s++) {
                size_t step = steps[s];
                if (step == 1 && s > 0)
                        continue;
                StrBuf out = {};
                /* byte-at-a-time only over a prefix would be slow; 1-byte steps still
                 * run the whole stream but it is only 300 KB */
                ssize_t n = inflate_all(COMPRESSION_GZIP, &gz, true, step, &out);
                ok(n == (ssize_t) len && memcmp(out.data, plain, len) == 0, "gzip, 3 members, reads of %zu bytes", step);
                strbuf_done(&out);
                n = inflate_all(COMPRESSION_ZSTD, &zs, true, step, &out);
                ok(n == (ssize_t) len && memcmp(out.data, plain, len) == 0, "zstd, 2 frames + skippable, reads of %zu bytes (got %zd)", step, n);
                strbuf_done(&out);
        }

        StrBuf out = {};
        ssize_t n = inflate_all(COMPRESSION_GZIP, &gz, false, 4096, &out);
        ok(n == 100000 && memcmp(out.data, plain, 100000) == 0, "gzip single-member mode stops after the first member");
        strbuf_done(&out);
        n = inflate_all(COMPRESSION_ZSTD, &zs, false, 4096, &out);
        ok(n == 100000 && memcmp(out.data, plain, 100000) == 0, "zstd single-frame mode stops after the first frame");
        strbuf_done(&out);

        /* a small frame read with small buffers: the decoder holds output
         * after it has consumed all of the input */
        StrBuf small = {};
        zstd_frame(&small, plain + len / 2, 5000, 3);
        n = inflate_all(COMPRESSION_ZSTD, &small, true, 1, &out);
        ok(n == 5000 && memcmp(out.data, plain + len / 2, 5000) == 0, "small zstd frame read 1 byte at a time (got %zd)", n);
        strbuf_done(&out);
        n = inflate_all(COMPRESSION_ZSTD, &small, true, 512, &out);
        ok(n == 5000 && memcmp(out.data, plain + len / 2, 5000) == 0, "small zstd frame read 512 bytes at a time (got %zd)", n);
        strbuf_done(&out);
        strbuf_done(&small);

        StrBuf raw = {};
        strbuf_append(&raw, plain, 10000);
        n = inflate_all(COMPRESSION_NONE, &raw, true, 333, &out);
        ok(n == 10000 && memcmp(out.data, plain, 10000) == 0, "COMPRESSION_NONE passes bytes through");
        strbuf_done(&out);
        strbuf_done(&raw);

        StrBuf empty = {};
        is_int(inflate_all(COMPRESSION_GZIP, &empty, true, 100, &out), 0, "empty gzip input: 0 bytes, no error");
        is_int(inflate_all(COMPRESSION_ZSTD, &empty, true, 100, &out), 0, "empty zstd input: 0 bytes, no error");

        /* truncation inside a member / frame */
        StrBuf cut = {};
        strbuf_append(&cut, gz.data, gz.len - 3);
        is_int(inflate_all(COMPRESSION_GZIP, &cut, true, 4096, &out), -EBADMSG, "truncated gzip member is -EBADMSG");
        strbuf_done(&out);
        strbuf_done(&cut);
        strbuf_append(&cut, zs.data, zs.len - 3);
        is_int(inflate_all(COMPRESSION_ZSTD, &cut, true, 4096, &out), -EBADMSG, "truncated zstd frame is -EBADMSG");
        strbuf_done(&out);
        strbuf_done(&cut);

        /* corruption */
        strbuf_append(&cut, gz.data, gz.len);
        cut.data[gz.len - 6] ^= 0x40; /* inside the CRC32 of the last member */
        is_int(inflate_all(COMPRESSION_GZIP, &cut, true, 4096, &out), -EBADMSG, "gzip CRC mismatch is -EBADMSG");
        strbuf_done(&out);
        strbuf_done(&cut);
        strbuf_append(&cut, gz.data, gz.len);
        strbuf_append(&cut, "trailing garbage", 16);
        is_int(inflate_all(COMPRESSION_GZIP, &cut, true, 4096, &out), -EBADMSG, "garbage after the last gzip member is -EBADMSG");
        strbuf_done(&out);
        strbuf_done(&cut);
        strbuf_append(&cut, "not zstd at all, no", 19);
        is_int(inflate_all(COMPRESSION_ZSTD, &cut, true, 4096, &out), -EBADMSG, "garbage as zstd is -EBADMSG");
        strbuf_done(&out);
        strbuf_done(&cut);

        strbuf_done(&gz);
        strbuf_done(&zs);
        free(plain);
}

static ssize_t failing_read(void *ud, void *buf, size_t len) {
        (void) ud;
        (void) buf;
        (void) len;
        return -EIO;
}

static void test_readers(void) {
        uint8_t buf[8];
        MemReader m = { .data = (const uint8_t *) "hello", .len = 5 };
        is_int(mem_reader_read(&m, buf, 3), 3, "mem reader: 3 bytes");
        is_int(mem_reader_read(&m, buf, 8), 2, "mem reader: the last 2");
        is_int(mem_reader_read(&m, buf, 8), 0, "mem reader: end");

        char dir[4096];
        if (tmpdir_make(dir) < 0) {
                ok(0, "mkdtemp");
                return;
        }
        int fd = file_write(dir, "f", "0123456789", 10);
        FdReader f = { .fd = fd };
        is_int(fd_reader_read(&f, buf, 8), 8, "fd reader: 8 bytes");
        is_int(fd_reader_read(&f, buf, 8), 2, "fd reader: 2 bytes");
        is_int(fd_reader_read(&f, buf, 8), 0, "fd reader: end");
        is_int(f.nread, 10, "fd reader counts bytes");
        close(fd);
        is_int(fd_reader_read(&(FdReader) { .fd = -1 }, buf, 8), -EBADF, "fd reader: -errno");
        tmpdir_remove(dir);

        Decompress *d;
        decompress_new(COMPRESSION_GZIP, failing_read, NULL, true, &d);
        is_int(decompress_read(d, buf, sizeof(buf)), -EIO, "source error passed through (gzip)");
        decompress_free(d);
        decompress_new(COMPRESSION_ZSTD, failing_read, NULL, true, &d);
        is_int(decompress_read(d, buf, sizeof(buf)), -EIO, "source error passed through (zstd)");
        decompress_free(d);
        ok(decompress_free(NULL) == NULL, "decompress_free(NULL)");
}

int main(void) {
        test_detect();
        test_roundtrip();
        test_readers();
        return done();
}
