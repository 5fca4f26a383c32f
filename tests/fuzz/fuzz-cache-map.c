/* libFuzzer target for the chunk map header (worker/cache/cache-map.c):
 * the first bytes of a chunks.map, which a crash, a bad disk or another
 * holdfast version may have left in any state.
 *
 * The file size comes from fstat(), not from the bytes, so each input is
 * checked against several sizes: its own length, one more and one less,
 * the bare header, and the size its own n_chunks field asks for. The
 * bytes are copied into a buffer of their own so that ASan sees a read
 * past the end. On success the header must be the input's first 128
 * bytes, describe a file of exactly that size with n_chunks in range, and
 * match its own n_chunks and layout but no other n_chunks; on failure
 * *ret must be untouched and a message written. Any violation aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cache/cache-map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_one(const uint8_t *buf, size_t len, uint64_t file_size) {
        CacheMapHeader h, sentinel;
        memset(&sentinel, 0x5a, sizeof(sentinel));
        h = sentinel;
        ErrMsg err = {};
        int r = cache_map_header_check(buf, len, file_size, &h, &err);
        if (r < 0) {
                if (r != -EBADMSG && r != -EPROTONOSUPPORT)
                        abort();
                if (memcmp(&h, &sentinel, sizeof(h)) != 0)
                        abort(); /* *ret touched on failure */
                if (!memchr(err.text, 0, sizeof(err.text)) || err.text[0] == 0)
                        abort(); /* failure without a message */
                return;
        }
        if (r != 0 || len < sizeof(h) || memcmp(&h, buf, sizeof(h)) != 0)
                abort();
        if (h.n_chunks > CACHE_MAP_MAX_CHUNKS || file_size != cache_map_file_size(h.n_chunks))
                abort();
        if (cache_map_header_match(&h, h.n_chunks, h.layout, NULL) != 0)
                abort();
        if (cache_map_header_match(&h, h.n_chunks + 1, h.layout, &err) != -ESTALE)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint8_t *buf = malloc(size ? size : 1);
        if (!buf)
                abort();
        memcpy(buf, data, size);
        uint64_t sizes[5] = { size, (uint64_t) size + 1, size ? size - 1 : 0, CACHE_MAP_HEADER_SIZE, 0 };
        size_t n = 4;
        if (size >= CACHE_MAP_HEADER_SIZE) {
                CacheMapHeader h;
                memcpy(&h, buf, sizeof(h));
                if (h.n_chunks <= CACHE_MAP_MAX_CHUNKS)
                        sizes[n++] = cache_map_file_size(h.n_chunks);
        }
        for (size_t i = 0; i < n; i++)
                check_one(buf, size, sizes[i]);

        /* A header built from the input's own fields checks. */
        if (size >= CACHE_MAP_HEADER_SIZE) {
                CacheMapHeader in, h;
                memcpy(&in, buf, sizeof(in));
                uint64_t n_chunks = in.n_chunks % (CACHE_MAP_MAX_CHUNKS + 1);
                cache_map_header_init(&h, n_chunks, in.layout, in.boot_id);
                CacheMapHeader got;
                if (cache_map_header_check(&h, sizeof(h), cache_map_file_size(n_chunks), &got, NULL) != 0)
                        abort();
        }
        free(buf);
        return 0;
}
