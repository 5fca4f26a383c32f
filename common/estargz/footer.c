/* Layer footers: eStargz (51 bytes), legacy stargz (47) and zstd:chunked
 * (40). Each gzip footer is an empty gzip member whose header's extra field
 * carries the TOC offset as 16 hex digits followed by "STARGZ". The zstd
 * footer is the payload of a skippable frame: four little-endian u64s
 * (TOC offset, compressed TOC size, raw TOC size, manifest type) and an
 * 8-byte magic. */
#include "common/estargz/footer.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "common/util/macro.h"

static const uint8_t zstd_chunked_magic[8] = { 0x47, 0x6e, 0x55, 0x6c, 0x49, 0x6e, 0x55, 0x78 };
static const uint8_t zstd_skippable_magic[4] = { 0x50, 0x2a, 0x4d, 0x18 };

const char *layer_format_to_string(LayerFormat f) {
        static const char *const names[_LAYER_FORMAT_MAX] = {
                [LAYER_FORMAT_ESTARGZ] = "estargz",
                [LAYER_FORMAT_STARGZ_LEGACY] = "stargz",
                [LAYER_FORMAT_ZSTD_CHUNKED] = "zstd:chunked",
        };
        return (unsigned) f < _LAYER_FORMAT_MAX ? names[f] : "unknown";
}

static uint64_t le64(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}

/* Parses 16 hex digits followed by "STARGZ". */
static int parse_hex_offset(const uint8_t *p, uint64_t *ret) {
        uint64_t v = 0;
        for (size_t i = 0; i < 16; i++) {
                uint8_t c = p[i];
                unsigned d;
                if (c >= '0' && c <= '9')
                        d = c - '0';
                else if (c >= 'a' && c <= 'f')
                        d = c - 'a' + 10;
                else if (c >= 'A' && c <= 'F')
                        d = c - 'A' + 10;
                else
                        return -EBADMSG;
                v = v << 4 | d;
        }
        if (memcmp(p + 16, "STARGZ", 6) != 0)
                return -EBADMSG;
        if (v > INT64_MAX)
                return -EBADMSG;
        *ret = v;
        return 0;
}

/* Checks the fixed gzip header fields and returns the extra field. The
 * reference writes FLG=FEXTRA only; other flags would move the extra field
 * and the footer would not have its fixed size, so they are refused. */
static int gzip_footer_extra(const uint8_t *p, size_t len, size_t want_xlen, const uint8_t **ret_extra, const char **why) {
        if (len < 12 + want_xlen) {
                *why = "too short";
                return -EBADMSG;
        }
        if (p[0] != 0x1f || p[1] != 0x8b || p[2] != 8) {
                *why = "no gzip header";
                return -EBADMSG;
        }
        if (p[3] != 0x04) {
                *why = "gzip header flags are not FEXTRA";
                return -EBADMSG;
        }
        size_t xlen = (size_t) p[10] | (size_t) p[11] << 8;
        if (xlen != want_xlen) {
                *why = "gzip extra field has the wrong length";
                return -EBADMSG;
        }
        *ret_extra = p + 12;
        return 0;
}

static int parse_estargz(const uint8_t *p, uint64_t *ret_off, const char **why) {
        const uint8_t *x;
        int r = gzip_footer_extra(p, ESTARGZ_FOOTER_SIZE, 26, &x, why);
        if (r < 0)
                return r;
        if (x[0] != 'S' || x[1] != 'G') {
                *why = "extra subfield is not 'SG'";
                return -EBADMSG;
        }
        if ((x[2] | x[3] << 8) != 22) {
                *why = "'SG' subfield has the wrong length";
                return -EBADMSG;
        }
        if (parse_hex_offset(x + 4, ret_off) < 0) {
                *why = "'SG' subfield is not <16 hex digits>STARGZ";
                return -EBADMSG;
        }
        return 0;
}

static int parse_legacy(const uint8_t *p, uint64_t *ret_off, const char **why) {
        const uint8_t *x;
        int r = gzip_footer_extra(p, STARGZ_LEGACY_FOOTER_SIZE, 22, &x, why);
        if (r < 0)
                return r;
        if (parse_hex_offset(x, ret_off) < 0) {
                *why = "extra field is not <16 hex digits>STARGZ";
                return -EBADMSG;
        }
        return 0;
}

int footer_parse(const uint8_t *tail, size_t tail_len, uint64_t blob_size, Footer *ret, ErrMsg *err) {
        const char *why_e = "blob shorter than the footer", *why_l = why_e, *why_z = why_e;
        uint64_t off;

        if (tail_len > blob_size)
                return errmsg_set(err, -EINVAL, "footer buffer (%zu bytes) larger than the blob (%" PRIu64 ")", tail_len, blob_size);

        if (tail_len >= ESTARGZ_FOOTER_SIZE &&
            parse_estargz(tail + tail_len - ESTARGZ_FOOTER_SIZE, &off, &why_e) >= 0) {
                if (off >= blob_size - ESTARGZ_FOOTER_SIZE)
                        return errmsg_set(err, -EBADMSG, "eStargz footer: TOC offset %" PRIu64 " is past the end of the %" PRIu64 "-byte blob", off, blob_size);
                *ret = (Footer) {
                        .format = LAYER_FORMAT_ESTARGZ,
                        .footer_size = ESTARGZ_FOOTER_SIZE,
                        .toc_offset = off,
                        .toc_size = blob_size - ESTARGZ_FOOTER_SIZE - off,
                };
                return 0;
        }

        if (tail_len >= STARGZ_LEGACY_FOOTER_SIZE &&
            parse_legacy(tail + tail_len - STARGZ_LEGACY_FOOTER_SIZE, &off, &why_l) >= 0) {
                if (off >= blob_size - STARGZ_LEGACY_FOOTER_SIZE)
                        return errmsg_set(err, -EBADMSG, "stargz footer: TOC offset %" PRIu64 " is past the end of the %" PRIu64 "-byte blob", off, blob_size);
                *ret = (Footer) {
                        .format = LAYER_FORMAT_STARGZ_LEGACY,
                        .footer_size = STARGZ_LEGACY_FOOTER_SIZE,
                        .toc_offset = off,
                        .toc_size = blob_size - STARGZ_LEGACY_FOOTER_SIZE - off,
                };
                return 0;
        }

        if (tail_len >= ZSTD_CHUNKED_FOOTER_SIZE) {
                const uint8_t *p = tail + tail_len - ZSTD_CHUNKED_FOOTER_SIZE;
                if (memcmp(p + 32, zstd_chunked_magic, 8) != 0)
                        why_z = "no zstd:chunked magic";
                else if (tail_len >= ZSTD_CHUNKED_FOOTER_SIZE + 8 &&
                         (memcmp(p - 8, zstd_skippable_magic, 4) != 0 || le64(p - 4) % (1ull << 32) != ZSTD_CHUNKED_FOOTER_SIZE))
                        why_z = "footer is not in a 40-byte skippable frame";
                else {
                        uint64_t toc_off = le64(p), toc_len = le64(p + 8), raw = le64(p + 16), type = le64(p + 24);
                        uint64_t end;
                        if (type != 1)
                                return errmsg_set(err, -EOPNOTSUPP, "zstd:chunked footer: manifest type %" PRIu64 " is not supported (only 1, the stargz TOC)", type);
                        /* the footer's frame is 8 + 40 bytes; the TOC's frame
                         * header (8 bytes) sits just before toc_off */
                        if (toc_len == 0 || toc_off < 8 || add_overflow_u64(toc_off, toc_len, &end) ||
                            blob_size < ZSTD_CHUNKED_FOOTER_SIZE + 8 || end > blob_size - ZSTD_CHUNKED_FOOTER_SIZE - 8)
                                return errmsg_set(err, -EBADMSG, "zstd:chunked footer: TOC [%" PRIu64 ", +%" PRIu64 ") is outside the %" PRIu64 "-byte blob", toc_off, toc_len, blob_size);
                        *ret = (Footer) {
                                .format = LAYER_FORMAT_ZSTD_CHUNKED,
                                .footer_size = ZSTD_CHUNKED_FOOTER_SIZE,
                                .toc_offset = toc_off,
                                .toc_size = toc_len,
                                .toc_raw_size = raw,
                        };
                        return 0;
                }
        }

        return errmsg_set(err, -EBADMSG, "not an eStargz layer: no footer found (estargz: %s; stargz: %s; zstd:chunked: %s)", why_e, why_l, why_z);
}

void footer_estargz_build(uint64_t toc_offset, uint8_t ret[ESTARGZ_FOOTER_SIZE]) {
        static const char hex[] = "0123456789abcdef";
        uint8_t *p = ret;
        /* gzip header: magic, CM=deflate, FLG=FEXTRA, MTIME=0, XFL=0, OS=255 */
        static const uint8_t hdr[10] = { 0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff };
        memcpy(p, hdr, 10);
        p += 10;
        *p++ = 26; /* XLEN */
        *p++ = 0;
        *p++ = 'S';
        *p++ = 'G';
        *p++ = 22; /* subfield length */
        *p++ = 0;
        for (int i = 15; i >= 0; i--)
                *p++ = (uint8_t) hex[(toc_offset >> (4 * i)) & 15];
        memcpy(p, "STARGZ", 6);
        p += 6;
        /* an empty final stored deflate block, CRC32 0, ISIZE 0 */
        static const uint8_t tail[13] = { 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0 };
        memcpy(p, tail, 13);
}
