/* Tests of common/estargz/footer: the 51-byte eStargz footer byte for
 * byte, round trips through footer_parse(), the legacy 47-byte and the
 * zstd:chunked 40-byte footers, and every way a tail can be wrong. */
#include <errno.h>
#include <string.h>

#include "common/estargz/footer.h"
#include "tests/unit/tap.h"

static void put_le64(uint8_t *p, uint64_t v) {
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static void test_estargz_bytes(void) {
        uint8_t f[ESTARGZ_FOOTER_SIZE];
        footer_estargz_build(0x123456789abcdefull, f);
        static const uint8_t want[ESTARGZ_FOOTER_SIZE] = {
                0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff, /* gzip header, FLG=FEXTRA, OS=255 */
                26, 0,                                          /* XLEN */
                'S', 'G', 22, 0,                                /* subfield id, length */
                '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
                'S', 'T', 'A', 'R', 'G', 'Z',
                0x01, 0x00, 0x00, 0xff, 0xff,                   /* empty final stored block */
                0, 0, 0, 0, 0, 0, 0, 0,                         /* CRC32, ISIZE */
        };
        ok(memcmp(f, want, sizeof(want)) == 0, "eStargz footer is byte-exact for offset 0x0123456789abcdef");

        footer_estargz_build(0, f);
        ok(memcmp(f + 16, "0000000000000000STARGZ", 22) == 0, "offset 0 is 16 zeros");
}

static void test_estargz_roundtrip(void) {
        static const uint64_t offsets[] = { 0, 1, 4096, 0xdeadbeefull, (1ull << 40) + 7 };
        for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
                uint64_t off = offsets[i];
                uint64_t blob = off + 100 + ESTARGZ_FOOTER_SIZE;
                uint8_t f[ESTARGZ_FOOTER_SIZE];
                footer_estargz_build(off, f);
                Footer ft = {};
                ErrMsg err = {};
                int r = footer_parse(f, sizeof(f), blob, &ft, &err);
                is_int(r, 0, "parse eStargz footer with offset %llu", (unsigned long long) off);
                is_int(ft.format, LAYER_FORMAT_ESTARGZ, "  format eStargz");
                is_int(ft.footer_size, ESTARGZ_FOOTER_SIZE, "  footer size 51");
                is_int(ft.toc_offset, off, "  TOC offset");
                is_int(ft.toc_size, 100, "  TOC size is what lies between the offset and the footer");
                is_int(ft.toc_raw_size, 0, "  raw size unknown");
        }

        /* a longer tail (more than 51 bytes of blob) still finds the footer at its end */
        uint8_t tail[80];
        memset(tail, 0x5a, sizeof(tail));
        footer_estargz_build(10, tail + sizeof(tail) - ESTARGZ_FOOTER_SIZE);
        Footer ft;
        is_int(footer_parse(tail + sizeof(tail) - LAYER_FOOTER_MAX_SIZE, LAYER_FOOTER_MAX_SIZE, 1000, &ft, NULL), 0,
               "footer found in the last LAYER_FOOTER_MAX_SIZE bytes");
        is_int(ft.toc_size, 1000 - 51 - 10, "  toc size");
}

static void build_legacy(uint64_t off, uint8_t f[STARGZ_LEGACY_FOOTER_SIZE]) {
        static const uint8_t hdr[10] = { 0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff };
        memcpy(f, hdr, 10);
        f[10] = 22;
        f[11] = 0;
        char hex[17];
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long) off);
        memcpy(f + 12, hex, 16);
        memcpy(f + 28, "STARGZ", 6);
        static const uint8_t tail[13] = { 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0 };
        memcpy(f + 34, tail, 13);
}

static void test_legacy(void) {
        uint8_t f[STARGZ_LEGACY_FOOTER_SIZE];
        build_legacy(777, f);
        Footer ft = {};
        ErrMsg err = {};
        is_int(footer_parse(f, sizeof(f), 5000, &ft, &err), 0, "legacy 47-byte footer parses (tail of 47 bytes)");
        is_int(ft.format, LAYER_FORMAT_STARGZ_LEGACY, "  format legacy stargz");
        is_int(ft.footer_size, STARGZ_LEGACY_FOOTER_SIZE, "  footer size 47");
        is_int(ft.toc_offset, 777, "  TOC offset");
        is_int(ft.toc_size, 5000 - 47 - 777, "  TOC size");

        /* 51-byte tail: 4 bytes of the TOC member before the legacy footer */
        uint8_t tail[LAYER_FOOTER_MAX_SIZE] = { 0x11, 0x22, 0x33, 0x44 };
        memcpy(tail + 4, f, sizeof(f));
        ft = (Footer) {};
        is_int(footer_parse(tail, sizeof(tail), 5000, &ft, &err), 0, "legacy footer inside a 51-byte tail");
        is_int(ft.format, LAYER_FORMAT_STARGZ_LEGACY, "  format legacy stargz");

        /* uppercase hex is what some old writers produced */
        build_legacy(0xabc, f);
        for (int i = 12; i < 28; i++)
                if (f[i] >= 'a' && f[i] <= 'f')
                        f[i] = (uint8_t) (f[i] - 'a' + 'A');
        is_int(footer_parse(f, sizeof(f), 1 << 20, &ft, NULL), 0, "uppercase hex offset accepted");
        is_int(ft.toc_offset, 0xabc, "  offset");

        build_legacy(5000, f);
        err = (ErrMsg) {};
        is_int(footer_parse(f, sizeof(f), 5000, &ft, &err), -EBADMSG, "legacy TOC offset past the end");
        has_str(err.text, "past the end", "  message: %s", err.text);
}

static void build_zstd(uint8_t tail[48], uint64_t off, uint64_t len, uint64_t raw, uint64_t type) {
        static const uint8_t skippable[4] = { 0x50, 0x2a, 0x4d, 0x18 };
        memcpy(tail, skippable, 4);
        tail[4] = 40; tail[5] = 0; tail[6] = 0; tail[7] = 0;
        put_le64(tail + 8, off);
        put_le64(tail + 16, len);
        put_le64(tail + 24, raw);
        put_le64(tail + 32, type);
        static const uint8_t magic[8] = { 0x47, 0x6e, 0x55, 0x6c, 0x49, 0x6e, 0x55, 0x78 };
        memcpy(tail + 40, magic, 8);
}

static void test_zstd(void) {
        uint8_t tail[LAYER_FOOTER_MAX_SIZE] = { 0xee, 0xee, 0xee };
        build_zstd(tail + 3, 1000, 200, 5000, 1);
        Footer ft = {};
        ErrMsg err = {};
        is_int(footer_parse(tail, sizeof(tail), 2000, &ft, &err), 0, "zstd:chunked footer parses");
        is_int(ft.format, LAYER_FORMAT_ZSTD_CHUNKED, "  format zstd:chunked");
        is_int(ft.footer_size, ZSTD_CHUNKED_FOOTER_SIZE, "  footer size 40");
        is_int(ft.toc_offset, 1000, "  TOC offset (LE u64)");
        is_int(ft.toc_size, 200, "  compressed TOC size");
        is_int(ft.toc_raw_size, 5000, "  raw TOC size");

        /* only the 40 bytes: no room to check the frame header */
        is_int(footer_parse(tail + 11, 40, 2000, &ft, NULL), 0, "a 40-byte tail is enough");

        uint8_t bad[LAYER_FOOTER_MAX_SIZE];
        memcpy(bad, tail, sizeof(bad));
        bad[3] = 0x00; /* skippable frame magic 50 2a 4d 18 broken */
        err = (ErrMsg) {};
        is_int(footer_parse(bad, sizeof(bad), 2000, &ft, &err), -EBADMSG, "footer not in a skippable frame");
        has_str(err.text, "skippable frame", "  message: %s", err.text);

        memcpy(bad, tail, sizeof(bad));
        bad[7] = 41; /* frame length must be 40 */
        err = (ErrMsg) {};
        is_int(footer_parse(bad, sizeof(bad), 2000, &ft, &err), -EBADMSG, "skippable frame of the wrong length");
        has_str(err.text, "skippable frame", "  message: %s", err.text);

        build_zstd(tail + 3, 1000, 200, 5000, 2);
        err = (ErrMsg) {};
        ok(footer_parse(tail, sizeof(tail), 2000, &ft, &err) < 0, "manifest type 2 refused");
        has_str(err.text, "manifest type 2", "  message: %s", err.text);

        build_zstd(tail + 3, 1900, 200, 5000, 1);
        err = (ErrMsg) {};
        is_int(footer_parse(tail, sizeof(tail), 2000, &ft, &err), -EBADMSG, "zstd TOC range past the end");
        has_str(err.text, "outside", "  message: %s", err.text);

        build_zstd(tail + 3, UINT64_MAX - 10, 200, 5000, 1);
        is_int(footer_parse(tail, sizeof(tail), 2000, &ft, NULL), -EBADMSG, "zstd TOC range that overflows");
        build_zstd(tail + 3, 100, 0, 5000, 1);
        is_int(footer_parse(tail, sizeof(tail), 2000, &ft, NULL), -EBADMSG, "empty zstd TOC");
}

static void test_errors(void) {
        uint8_t f[ESTARGZ_FOOTER_SIZE];
        Footer ft, untouched;
        ErrMsg err = {};
        memset(&ft, 0x77, sizeof(ft));
        untouched = ft;

        footer_estargz_build(0, f);
        is_int(footer_parse(f + 20, 31, 31, &ft, &err), -EBADMSG, "blob shorter than any footer");
        has_str(err.text, "no footer", "  message: %s", err.text);
        has_str(err.text, "shorter than the footer", "  names the short blob");
        ok(memcmp(&ft, &untouched, sizeof(ft)) == 0, "  *ret untouched on failure");

        is_int(footer_parse(f, 0, 0, &ft, &err), -EBADMSG, "empty blob");

        /* truncated: the last 46 bytes of a real footer */
        err = (ErrMsg) {};
        is_int(footer_parse(f + 5, 46, 46, &ft, &err), -EBADMSG, "truncated eStargz footer");
        ok(err.text[0] != 0, "  with a message: %s", err.text);

        footer_estargz_build(1000, f);
        err = (ErrMsg) {};
        is_int(footer_parse(f, sizeof(f), 1000 + 51, &ft, &err), -EBADMSG, "TOC offset at the footer");
        has_str(err.text, "past the end", "  message: %s", err.text);
        err = (ErrMsg) {};
        is_int(footer_parse(f, sizeof(f), 200, &ft, &err), -EBADMSG, "TOC offset past the end of the blob");
        has_str(err.text, "TOC offset 1000", "  message names the offset: %s", err.text);
        ok(memcmp(&ft, &untouched, sizeof(ft)) == 0, "  *ret untouched on failure");

        footer_estargz_build(0xffffffffffffffffull, f);
        is_int(footer_parse(f, sizeof(f), 1000, &ft, NULL), -EBADMSG, "offset above INT64_MAX refused");

        uint8_t garbage[LAYER_FOOTER_MAX_SIZE];
        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (uint8_t) (i * 37 + 11);
        err = (ErrMsg) {};
        is_int(footer_parse(garbage, sizeof(garbage), 1 << 20, &ft, &err), -EBADMSG, "garbage");
        has_str(err.text, "estargz:", "  message names the eStargz reason: %s", err.text);
        has_str(err.text, "zstd:chunked: no zstd:chunked magic", "  and the zstd reason");

        /* each field of the footer broken in turn */
        struct { size_t at; uint8_t v; const char *why; } breaks[] = {
                { 0, 0x1e, "no gzip header" },
                { 3, 0x0c, "flags are not FEXTRA" },
                { 10, 27, "wrong length" },
                { 12, 'X', "not 'SG'" },
                { 14, 21, "subfield has the wrong length" },
                { 20, 'g', "hex digits" },
                { 33, 'x', "hex digits" },
        };
        for (size_t i = 0; i < sizeof(breaks) / sizeof(breaks[0]); i++) {
                footer_estargz_build(100, f);
                f[breaks[i].at] = breaks[i].v;
                err = (ErrMsg) {};
                is_int(footer_parse(f, sizeof(f), 10000, &ft, &err), -EBADMSG, "byte %zu broken", breaks[i].at);
                has_str(err.text, breaks[i].why, "  message says '%s': %s", breaks[i].why, err.text);
        }

        is_int(footer_parse(f, sizeof(f), 10, &ft, &err), -EINVAL, "tail longer than the blob is a caller error");
}

int main(void) {
        test_estargz_bytes();
        test_estargz_roundtrip();
        test_legacy();
        test_zstd();
        test_errors();
        return done();
}
