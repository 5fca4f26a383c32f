/* Tests of common/util/strbuf: growth, NUL termination, printf, steal. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/strbuf.h"
#include "tests/unit/tap.h"

int main(void) {
        StrBuf b = {};

        is_int(strbuf_append(&b, "", 0), 0, "append nothing");
        ok(b.data && b.data[0] == 0 && b.len == 0, "empty append leaves a NUL-terminated buffer");

        is_int(strbuf_append(&b, "hello", 5), 0, "append");
        is_int(strbuf_putc(&b, ' '), 0, "putc");
        is_int(strbuf_printf(&b, "%s %d", "world", 42), 0, "printf");
        is_int(b.len, 14, "length counts every byte");
        is_str(b.data, "hello world 42", "contents and NUL terminator");
        ok(b.cap > b.len, "capacity leaves room for the NUL");

        /* growth across many doublings keeps the bytes */
        bool same = true;
        for (int i = 0; i < 10000; i++)
                if (strbuf_printf(&b, "%05d", i) < 0)
                        same = false;
        for (int i = 0; i < 10000 && same; i++) {
                char want[6];
                snprintf(want, sizeof(want), "%05d", i);
                same = memcmp(b.data + 14 + 5 * i, want, 5) == 0;
        }
        ok(same, "50,000 bytes appended by printf are intact");
        is_int(b.len, 14 + 50000, "length after growth");
        ok(b.data[b.len] == 0, "still NUL-terminated");

        /* binary data with NULs */
        StrBuf bin = {};
        const uint8_t raw[4] = { 0, 1, 0, 2 };
        strbuf_append(&bin, raw, 4);
        ok(bin.len == 4 && memcmp(bin.data, raw, 4) == 0, "embedded NULs kept");

        /* a reservation that would overflow fails and leaves the buffer */
        size_t len = bin.len, cap = bin.cap;
        char *data = bin.data;
        is_int(strbuf_reserve(&bin, SIZE_MAX - 2), -ENOMEM, "overflowing reserve is -ENOMEM");
        ok(bin.len == len && bin.cap == cap && bin.data == data, "buffer unchanged after a failed reserve");
        is_int(strbuf_reserve(&bin, SIZE_MAX / 2 + 10), -ENOMEM, "absurd reserve is -ENOMEM");
        ok(bin.len == len && bin.data == data, "buffer unchanged after the second failed reserve");

        size_t got_len = 0;
        char *stolen = strbuf_steal(&b, &got_len);
        is_int(got_len, 14 + 50000, "steal reports the length");
        ok(b.data == NULL && b.len == 0 && b.cap == 0, "steal empties the StrBuf");
        ok(stolen && strncmp(stolen, "hello", 5) == 0, "stolen memory holds the bytes");
        free(stolen);

        strbuf_done(&bin);
        ok(bin.data == NULL && bin.len == 0, "strbuf_done resets");
        strbuf_done(&bin); /* twice is fine */
        ok(strbuf_steal(&bin, NULL) == NULL, "stealing an empty buffer gives NULL");
        return done();
}
