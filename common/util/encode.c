/* base64 and FNV-1a; see encode.h. */
#include "common/util/encode.h"

void base64_encode(const uint8_t *in, size_t len, char *out) {
        static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t o = 0;
        for (size_t i = 0; i < len; i += 3) {
                uint32_t v = (uint32_t) in[i] << 16 | (i + 1 < len ? (uint32_t) in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
                out[o++] = tbl[v >> 18 & 63];
                out[o++] = tbl[v >> 12 & 63];
                out[o++] = i + 1 < len ? tbl[v >> 6 & 63] : '=';
                out[o++] = i + 2 < len ? tbl[v & 63] : '=';
        }
        out[o] = 0;
}

uint64_t hash_bytes(const void *data, size_t len) {
        const uint8_t *p = data;
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= 1099511628211ull;
        }
        return h ^ (h >> 29);
}
