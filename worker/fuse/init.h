/* FUSE_INIT negotiation and the "init blob": the negotiated parameters as
 * a small versioned byte string the supervisor keeps (MountStatus.init)
 * and hands to the next worker (MountRecord.init), which serves the
 * connection with them instead of waiting for an INIT that the kernel
 * will never send again. Pure functions, any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/fuse/abi.h"

#define FUSE_PARAMS_BLOB_VERSION 1
#define FUSE_PARAMS_BLOB_SIZE 40
#define FUSE_PARAMS_MIN_MINOR 12       /* 7.12: fuse_attr with blksize, stable arg layouts */
#define FUSE_PARAMS_MAX_PAGES 256
#define FUSE_PARAMS_MAX_WRITE (1u << 20)

/* What we ask for; the reply keeps those the kernel offered. */
#define FUSE_PARAMS_WANTED_FLAGS                                                                       \
        ((uint64_t) FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_CACHE_SYMLINKS | FUSE_PARALLEL_DIROPS | \
         FUSE_MAX_PAGES | FUSE_INIT_EXT | FUSE_HAS_RESEND | FUSE_PASSTHROUGH)

typedef struct FuseParams {
        uint32_t major, minor;
        uint32_t max_readahead;
        uint64_t flags;          /* flags | flags2 << 32, as replied */
        uint32_t max_write;
        uint32_t max_pages;
        uint32_t time_gran;
} FuseParams;

/* Negotiates from the kernel's fuse_init_in (arg, len bytes). Returns:
 * 0 with *ret_params, *ret_out and *ret_out_len (how many bytes of out to
 * send, smaller for old minors); 1 when the kernel's major is newer than
 * 7: *ret_out holds only our major/minor and the kernel will send INIT
 * again; -EPROTO for a major below 7 or a minor below
 * FUSE_PARAMS_MIN_MINOR; -EINVAL for a short argument. */
int fuse_params_negotiate(const void *arg, size_t len, FuseParams *ret_params, struct fuse_init_out *ret_out,
                          size_t *ret_out_len);

/* Writes exactly FUSE_PARAMS_BLOB_SIZE bytes to buf (little-endian). */
void fuse_params_encode(const FuseParams *p, uint8_t buf[FUSE_PARAMS_BLOB_SIZE]);

/* Parses and validates a blob. Returns 0, -EBADMSG (wrong size, magic or
 * a value out of range), -EPROTO (another blob version). */
int fuse_params_decode(const void *buf, size_t len, FuseParams *ret);
