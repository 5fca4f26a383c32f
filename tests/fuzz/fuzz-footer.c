/* libFuzzer target for footer_parse(): the input is the tail of a layer
 * blob, the last bytes a client reads before it knows anything else.
 *
 * Each input is tried against several blob sizes (exactly the input, a
 * little more, much more, the extremes), both as the whole input and as
 * the last LAYER_FOOTER_MAX_SIZE bytes the way layer_open() reads it. The
 * tail is copied into a buffer of its own so that ASan sees a read before
 * its start. On success the footer must describe a TOC inside the blob;
 * on failure *ret must be untouched. Any violation aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/estargz/footer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_one(const uint8_t *data, size_t len, uint64_t blob_size) {
        static const Footer sentinel = {
                .format = _LAYER_FORMAT_MAX,
                .footer_size = 0x5a5a5a5a,
                .toc_offset = 0x5a5a5a5a,
                .toc_size = 0x5a5a5a5a,
                .toc_raw_size = 0x5a5a5a5a,
        };
        uint8_t *tail = malloc(len ? len : 1);
        if (!tail)
                abort();
        memcpy(tail, data, len);

        Footer f = sentinel;
        ErrMsg err = {};
        int r = footer_parse(tail, len, blob_size, &f, &err);
        if (r < 0) {
                if (memcmp(&f, &sentinel, sizeof(f)) != 0)
                        abort(); /* *ret touched on failure */
                if (!memchr(err.text, 0, sizeof(err.text)) || err.text[0] == 0)
                        abort(); /* failure without a message */
        } else {
                if (r != 0 || len > blob_size)
                        abort();
                uint64_t want_size;
                switch (f.format) {
                case LAYER_FORMAT_ESTARGZ: want_size = ESTARGZ_FOOTER_SIZE; break;
                case LAYER_FORMAT_STARGZ_LEGACY: want_size = STARGZ_LEGACY_FOOTER_SIZE; break;
                case LAYER_FORMAT_ZSTD_CHUNKED: want_size = ZSTD_CHUNKED_FOOTER_SIZE; break;
                default: abort();
                }
                if (f.footer_size != want_size || f.footer_size > len || f.toc_size == 0)
                        abort();
                /* the TOC lies inside the blob, before the footer */
                if (f.toc_offset > blob_size - f.footer_size ||
                    f.toc_size > blob_size - f.footer_size - f.toc_offset)
                        abort();
                if (layer_format_is_gzip(f.format) && f.toc_offset + f.toc_size + f.footer_size != blob_size)
                        abort();
        }
        free(tail);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint64_t blob_sizes[] = {
                size,
                (uint64_t) size + 1,
                (uint64_t) size + ESTARGZ_FOOTER_SIZE,
                (uint64_t) size + (1u << 20),
                (uint64_t) INT64_MAX,
                UINT64_MAX,
                size > 0 ? size - 1 : 0, /* smaller than the buffer: must be refused */
        };
        size_t tail_len = size < LAYER_FOOTER_MAX_SIZE ? size : LAYER_FOOTER_MAX_SIZE;

        for (size_t i = 0; i < sizeof(blob_sizes) / sizeof(blob_sizes[0]); i++) {
                check_one(data, size, blob_sizes[i]);
                if (tail_len != size)
                        check_one(data + size - tail_len, tail_len, blob_sizes[i]);
        }

        /* Round trip: what footer_estargz_build() writes parses back. */
        if (size >= 8) {
                uint64_t off = 0;
                memcpy(&off, data, 8);
                off &= INT64_MAX >> 8;
                uint8_t b[ESTARGZ_FOOTER_SIZE];
                footer_estargz_build(off, b);
                Footer f;
                uint64_t blob = off + 1 + ESTARGZ_FOOTER_SIZE;
                if (footer_parse(b, sizeof(b), blob, &f, NULL) != 0 ||
                    f.format != LAYER_FORMAT_ESTARGZ || f.toc_offset != off || f.toc_size != 1)
                        abort();
        }
        return 0;
}
