/* Small encodings shared by the format code and the tools: standard base64
 * (what Go's encoding/json uses for []byte, i.e. TOC xattr values) and a
 * 64-bit FNV-1a string hash for in-memory tables. Pure functions. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Buffer size base64_encode() needs for len input bytes, NUL included. */
static inline size_t base64_encoded_size(size_t len) {
        return (len + 2) / 3 * 4 + 1;
}

/* Writes the padded base64 of in and a NUL into out. */
void base64_encode(const uint8_t *in, size_t len, char *out);

/* FNV-1a, with the high bits folded down so that masking the low bits
 * makes a good table index. */
uint64_t hash_bytes(const void *data, size_t len);
