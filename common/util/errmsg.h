/* A caller-provided slot for a human-readable error message.
 *
 * Library code never logs (STYLE.md); when it rejects input it returns
 * -errno and, if the caller passed an ErrMsg, writes one sentence saying
 * what is wrong ("TOC entry 12 (usr/bin/x): chunkOffset 4096 past file size
 * 100"). The caller logs it once, with its own context. */
#pragma once

#include <stddef.h>

typedef struct ErrMsg {
        char text[512];
} ErrMsg;

/* Formats into e (if not NULL) and returns r, which must be negative. */
int errmsg_set(ErrMsg *e, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to the message already in e. Returns r. */
int errmsg_prefix(ErrMsg *e, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
