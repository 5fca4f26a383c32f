/* SHA-256 digests in the OCI form "sha256:<64 hex>".
 * Thin wrapper over OpenSSL's libcrypto; no thread-shared state: each
 * Sha256 context belongs to one caller. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define SHA256_LEN 32
#define DIGEST_STRING_LEN (7 + 64) /* "sha256:" + hex, without NUL */

typedef struct Sha256 Sha256;

/* Returns NULL only on allocation failure. */
Sha256 *sha256_new(void);
Sha256 *sha256_free(Sha256 *s);
void sha256_reset(Sha256 *s);
void sha256_update(Sha256 *s, const void *data, size_t len);
void sha256_final(Sha256 *s, uint8_t ret[SHA256_LEN]);

/* One-shot hash. */
void sha256_buf(const void *data, size_t len, uint8_t ret[SHA256_LEN]);

/* Parses "sha256:<64 lowercase hex>". Returns 0, -EINVAL for any other
 * algorithm or a malformed string, -EOPNOTSUPP for a well-formed digest of
 * another algorithm (sha512:...). */
int digest_parse(const char *s, size_t len, uint8_t ret[SHA256_LEN]);

/* Writes "sha256:<hex>" and a NUL into buf (DIGEST_STRING_LEN + 1 bytes). */
void digest_format(const uint8_t d[SHA256_LEN], char buf[DIGEST_STRING_LEN + 1]);
