/* Tests of common/util/digest: SHA-256 against known vectors, streaming
 * equals one-shot, and the "sha256:<hex>" parser's contract. */
#include <errno.h>
#include <string.h>

#include "common/util/digest.h"
#include "tests/unit/tap.h"

static const char empty_hex[] = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
static const char abc_hex[] = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

static void test_vectors(void) {
        uint8_t d[SHA256_LEN];
        char s[DIGEST_STRING_LEN + 1];

        sha256_buf("", 0, d);
        digest_format(d, s);
        is_str(s, empty_hex, "sha256 of the empty string");
        sha256_buf("abc", 3, d);
        digest_format(d, s);
        is_str(s, abc_hex, "sha256 of 'abc'");
        is_int(strlen(s), DIGEST_STRING_LEN, "formatted digest is DIGEST_STRING_LEN long");
}

static void test_streaming(void) {
        static uint8_t buf[100000];
        for (size_t i = 0; i < sizeof(buf); i++)
                buf[i] = (uint8_t) (i * 7 + (i >> 9));
        uint8_t one[SHA256_LEN], two[SHA256_LEN], three[SHA256_LEN];
        sha256_buf(buf, sizeof(buf), one);

        Sha256 *s = sha256_new();
        ok(s, "sha256_new");
        if (!s)
                return;
        size_t steps[] = { 0, 1, 63, 64, 65, 1000, 4096, 30000 };
        size_t pos = 0;
        for (size_t i = 0; pos < sizeof(buf); i++) {
                size_t n = steps[i % 8];
                if (n > sizeof(buf) - pos)
                        n = sizeof(buf) - pos;
                sha256_update(s, buf + pos, n);
                pos += n;
        }
        sha256_final(s, two);
        ok(memcmp(one, two, SHA256_LEN) == 0, "streaming in odd pieces equals one-shot");

        /* final resets: the context is reusable */
        sha256_update(s, "abc", 3);
        sha256_final(s, three);
        char str[DIGEST_STRING_LEN + 1];
        digest_format(three, str);
        is_str(str, abc_hex, "context is reusable after sha256_final");

        sha256_update(s, "garbage", 7);
        sha256_reset(s);
        sha256_final(s, three);
        digest_format(three, str);
        is_str(str, empty_hex, "sha256_reset drops what was fed");
        ok(sha256_free(s) == NULL, "sha256_free returns NULL");
        ok(sha256_free(NULL) == NULL, "sha256_free(NULL) is a no-op");
}

static void test_parse(void) {
        uint8_t d[SHA256_LEN], want[SHA256_LEN];
        sha256_buf("abc", 3, want);

        memset(d, 0, sizeof(d));
        is_int(digest_parse(abc_hex, strlen(abc_hex), d), 0, "parse a valid digest");
        ok(memcmp(d, want, SHA256_LEN) == 0, "parsed bytes match");

        /* the length argument bounds the input: no NUL needed */
        char padded[100];
        memcpy(padded, abc_hex, DIGEST_STRING_LEN);
        memcpy(padded + DIGEST_STRING_LEN, "zzzz", 5);
        is_int(digest_parse(padded, DIGEST_STRING_LEN, d), 0, "parse reads only len bytes");

        uint8_t untouched[SHA256_LEN];
        memset(untouched, 0xab, sizeof(untouched));
        memcpy(d, untouched, SHA256_LEN);
        char upper[DIGEST_STRING_LEN + 1];
        strcpy(upper, abc_hex);
        upper[10] = 'F';
        is_int(digest_parse(upper, strlen(upper), d), -EINVAL, "uppercase hex is refused");
        ok(memcmp(d, untouched, SHA256_LEN) == 0, "output untouched on failure");

        is_int(digest_parse(abc_hex, strlen(abc_hex) - 1, d), -EINVAL, "63 hex digits refused");
        is_int(digest_parse(padded, DIGEST_STRING_LEN + 1, d), -EINVAL, "65 characters refused");
        is_int(digest_parse("sha256", 6, d), -EINVAL, "no colon refused");
        is_int(digest_parse(":abc", 4, d), -EINVAL, "empty algorithm refused");
        is_int(digest_parse("", 0, d), -EINVAL, "empty string refused");
        is_int(digest_parse("sha512:abcd", 11, d), -EOPNOTSUPP, "other algorithm: -EOPNOTSUPP");
        is_int(digest_parse("SHA256:abcd", 11, d), -EINVAL, "malformed algorithm: -EINVAL");
        is_int(digest_parse("md 5:abcd", 9, d), -EINVAL, "algorithm with a space: -EINVAL");
        char bad[DIGEST_STRING_LEN + 1];
        strcpy(bad, abc_hex);
        bad[DIGEST_STRING_LEN - 1] = 'g';
        is_int(digest_parse(bad, strlen(bad), d), -EINVAL, "non-hex digit refused");
}

int main(void) {
        test_vectors();
        test_streaming();
        test_parse();
        return done();
}
