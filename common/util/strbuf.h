/* A growable byte buffer. Single owner, no thread safety. Allocation
 * failure is reported as -ENOMEM and leaves the buffer as it was. */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef struct StrBuf {
        char *data;     /* owned; NUL-terminated when len > 0 or after strbuf_putc(0) */
        size_t len;
        size_t cap;
} StrBuf;

void strbuf_done(StrBuf *b);
int strbuf_reserve(StrBuf *b, size_t extra);
int strbuf_append(StrBuf *b, const void *data, size_t len);
int strbuf_putc(StrBuf *b, char c);
int strbuf_printf(StrBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Takes the buffer's memory; the StrBuf is empty afterwards. */
char *strbuf_steal(StrBuf *b, size_t *ret_len);
