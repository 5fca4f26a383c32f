/* ErrMsg formatting. Truncates silently: a message is for humans. */
#include "common/util/errmsg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int errmsg_set(ErrMsg *e, int r, const char *fmt, ...) {
        if (!e)
                return r;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->text, sizeof(e->text), fmt, ap);
        va_end(ap);
        return r;
}

int errmsg_prefix(ErrMsg *e, int r, const char *fmt, ...) {
        if (!e)
                return r;
        char prefix[256], old[sizeof(e->text)];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        memcpy(old, e->text, sizeof(old));
        size_t n = strlen(prefix);
        if (n + 2 >= sizeof(e->text))
                n = sizeof(e->text) - 3;
        memcpy(e->text, prefix, n);
        memcpy(e->text + n, ": ", 2);
        size_t rest = sizeof(e->text) - n - 3;
        size_t olen = strnlen(old, rest);
        memcpy(e->text + n + 2, old, olen);
        e->text[n + 2 + olen] = 0;
        return r;
}
