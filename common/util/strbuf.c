/* Growable buffer; doubles its capacity, never shrinks. */
#include "common/util/strbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_done(StrBuf *b) {
        free(b->data);
        *b = (StrBuf) {};
}

int strbuf_reserve(StrBuf *b, size_t extra) {
        size_t need;
        if (__builtin_add_overflow(b->len, extra, &need) || need == SIZE_MAX)
                return -ENOMEM;
        need++; /* room for a NUL */
        if (need <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 64;
        while (cap < need) {
                if (cap > SIZE_MAX / 2)
                        return -ENOMEM;
                cap *= 2;
        }
        char *p = realloc(b->data, cap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

int strbuf_append(StrBuf *b, const void *data, size_t len) {
        int r = strbuf_reserve(b, len);
        if (r < 0)
                return r;
        if (len > 0)
                memcpy(b->data + b->len, data, len);
        b->len += len;
        b->data[b->len] = 0;
        return 0;
}

int strbuf_putc(StrBuf *b, char c) {
        return strbuf_append(b, &c, 1);
}

int strbuf_printf(StrBuf *b, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        int r = strbuf_reserve(b, (size_t) n);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t) n;
        return 0;
}

char *strbuf_steal(StrBuf *b, size_t *ret_len) {
        char *p = b->data;
        if (ret_len)
                *ret_len = b->len;
        *b = (StrBuf) {};
        return p;
}
