/* SHA-256 over OpenSSL EVP. The only place libcrypto is called. */
#include "common/util/digest.h"

#include <errno.h>
#include <openssl/evp.h>
#include <string.h>

#include "common/util/macro.h"

struct Sha256 {
        EVP_MD_CTX *ctx; /* owned */
};

Sha256 *sha256_new(void) {
        Sha256 *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->ctx = EVP_MD_CTX_new();
        if (!s->ctx || EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(s->ctx);
                free(s);
                return NULL;
        }
        return s;
}

Sha256 *sha256_free(Sha256 *s) {
        if (!s)
                return NULL;
        EVP_MD_CTX_free(s->ctx);
        free(s);
        return NULL;
}

void sha256_reset(Sha256 *s) {
        EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL);
}

void sha256_update(Sha256 *s, const void *data, size_t len) {
        if (len > 0)
                EVP_DigestUpdate(s->ctx, data, len);
}

void sha256_final(Sha256 *s, uint8_t ret[SHA256_LEN]) {
        unsigned n = 0;
        EVP_DigestFinal_ex(s->ctx, ret, &n);
        EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL);
}

void sha256_buf(const void *data, size_t len, uint8_t ret[SHA256_LEN]) {
        unsigned n = 0;
        EVP_Digest(data, len, ret, &n, EVP_sha256(), NULL);
}

/* Lowercase hex digit values plus one; 0 for anything else (OCI digests
 * are lowercase). A table: this runs twice per TOC entry. */
static const uint8_t unhex_table[256] = {
        ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
        ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

int digest_parse(const char *s, size_t len, uint8_t ret[SHA256_LEN]) {
        const char *colon = memchr(s, ':', len);
        if (!colon || colon == s)
                return -EINVAL;
        size_t alg_len = (size_t) (colon - s);
        if (alg_len != 6 || memcmp(s, "sha256", 6) != 0) {
                for (size_t i = 0; i < alg_len; i++)
                        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '+' || s[i] == '.' || s[i] == '_' || s[i] == '-'))
                                return -EINVAL;
                return -EOPNOTSUPP;
        }
        if (len != DIGEST_STRING_LEN)
                return -EINVAL;
        uint8_t d[SHA256_LEN];
        bool bad = false;
        for (size_t i = 0; i < SHA256_LEN; i++) {
                int hi = unhex_table[(uint8_t) s[7 + 2 * i]], lo = unhex_table[(uint8_t) s[8 + 2 * i]];
                bad |= hi == 0 || lo == 0;
                d[i] = (uint8_t) (((unsigned) hi - 1) << 4 | ((unsigned) lo - 1));
        }
        if (bad)
                return -EINVAL;
        memcpy(ret, d, SHA256_LEN);
        return 0;
}

void digest_format(const uint8_t d[SHA256_LEN], char buf[DIGEST_STRING_LEN + 1]) {
        static const char hex[] = "0123456789abcdef";
        memcpy(buf, "sha256:", 7);
        for (size_t i = 0; i < SHA256_LEN; i++) {
                buf[7 + 2 * i] = hex[d[i] >> 4];
                buf[8 + 2 * i] = hex[d[i] & 15];
        }
        buf[DIGEST_STRING_LEN] = 0;
}
