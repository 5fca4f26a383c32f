/* A FUSE request being handled, the serving thread's buffers, and the
 * reply functions. Every request that expects a reply gets exactly one:
 * a handler either calls one fuse_reply_*() and returns 0, or returns a
 * negative errno and the dispatcher answers it (fuse_reply_error(), the
 * one place that turns -errno into a FUSE reply). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/estargz/chunk.h"
#include "common/estargz/layer.h"
#include "common/fuse/abi.h"
#include "worker/fuse/session.h"

/* The largest request: a header, a write_in, max_write bytes. The kernel
 * refuses reads into anything smaller (fuse_dev_do_read). */
#define FUSE_IN_BUF_SIZE (FUSE_PARAMS_MAX_WRITE + 4096)
#define FUSE_MAX_READ_SIZE ((size_t) FUSE_PARAMS_MAX_PAGES * 4096)

/* Per serving thread, never shared. */
typedef struct FuseThread {
        ChunkDecoder *decoder;   /* owned */
        uint8_t *in;             /* owned, FUSE_IN_BUF_SIZE */
        uint8_t *out;            /* owned, FUSE_MAX_READ_SIZE */
} FuseThread;

typedef struct FuseReq {
        FuseSession *session;    /* borrowed; the thread holds a reference */
        FuseThread *thread;
        const struct fuse_in_header *hdr;
        const void *arg;         /* the bytes after the header */
        size_t arg_len;
        Layer *layer;            /* set before ops that need it */
        const IndexInode *inode; /* hdr->nodeid's inode, for ops that need it */
        bool replied;
} FuseReq;

/* Answers with data (none: len 0). Always returns 0; a failed write is
 * logged (rate-limited) and dropped: the kernel forgot the request
 * (-ENOENT: interrupted) or the connection is gone. */
int fuse_reply_iov(FuseReq *r, const struct iovec *iov, int n);
int fuse_reply(FuseReq *r, const void *data, size_t len);
/* err: a negative errno; anything else is answered as -EIO. */
int fuse_reply_error(FuseReq *r, int err);

/* The one-year timeouts: a layer never changes. */
#define FUSE_TIMEOUT_SEC (365ULL * 24 * 3600)
