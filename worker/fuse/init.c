/* FUSE_INIT negotiation and the versioned init blob (see init.h). Pure:
 * no state, no I/O; called by whichever serving thread reads FUSE_INIT
 * and by the main thread when it restores a connection.
 *
 * Blob layout, version 1, little-endian, 40 bytes:
 *   0 "HFI" + version byte   4 major   8 minor   12 max_readahead
 *  16 flags (u64)            24 max_write        28 max_pages
 *  32 time_gran              36 reserved (0) */
#include "worker/fuse/init.h"

#include <errno.h>
#include <string.h>

#include "common/util/macro.h"

static const uint8_t magic[3] = { 'H', 'F', 'I' };

static void put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint32_t get32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

int fuse_params_negotiate(const void *arg, size_t len, FuseParams *ret_params, struct fuse_init_out *ret_out,
                          size_t *ret_out_len) {
        struct fuse_init_in in = {};
        /* The kernel's fuse_init_in grew over time (flags2 in 7.36); take
         * what it sent and leave the rest zero. */
        if (len < offsetof(struct fuse_init_in, flags) + sizeof(in.flags))
                return -EINVAL;
        memcpy(&in, arg, MIN(len, sizeof(in)));

        struct fuse_init_out out = {};
        if (in.major > FUSE_KERNEL_VERSION) {
                /* The kernel retries with our major (fuse_process_init_reply). */
                out.major = FUSE_KERNEL_VERSION;
                out.minor = HOLDFAST_FUSE_MINOR;
                *ret_out = out;
                *ret_out_len = FUSE_COMPAT_INIT_OUT_SIZE;
                return 1;
        }
        if (in.major < FUSE_KERNEL_VERSION || in.minor < FUSE_PARAMS_MIN_MINOR)
                return -EPROTO;

        uint64_t offered = in.flags;
        if ((in.flags & FUSE_INIT_EXT) && len >= offsetof(struct fuse_init_in, flags2) + sizeof(in.flags2))
                offered |= (uint64_t) in.flags2 << 32;
        uint64_t flags = offered & FUSE_PARAMS_WANTED_FLAGS;

        FuseParams p = {
                .major = FUSE_KERNEL_VERSION,
                .minor = MIN(in.minor, (uint32_t) HOLDFAST_FUSE_MINOR),
                .max_readahead = in.max_readahead,
                .flags = flags,
                .max_write = FUSE_PARAMS_MAX_WRITE,
                .max_pages = (flags & FUSE_MAX_PAGES) ? FUSE_PARAMS_MAX_PAGES : 0,
                .time_gran = 1,
        };
        out.major = p.major;
        out.minor = p.minor;
        out.max_readahead = p.max_readahead;
        out.flags = (uint32_t) p.flags;
        out.flags2 = (uint32_t) (p.flags >> 32);
        out.max_write = p.max_write;
        out.time_gran = p.time_gran;
        out.max_pages = (uint16_t) p.max_pages;
        /* max_stack_depth (7.40; `unused[0]` in older headers): our backing
         * files are plain files of the host, so 1. The mount then counts
         * as one level of stacking: overlayfs over it still fits the
         * kernel's limit of two. */
        if (p.flags & FUSE_PASSTHROUGH)
                out.unused[0] = 1;
        *ret_params = p;
        *ret_out = out;
        *ret_out_len = p.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof(out);
        return 0;
}

void fuse_params_encode(const FuseParams *p, uint8_t buf[FUSE_PARAMS_BLOB_SIZE]) {
        memset(buf, 0, FUSE_PARAMS_BLOB_SIZE);
        memcpy(buf, magic, sizeof(magic));
        buf[3] = FUSE_PARAMS_BLOB_VERSION;
        put32(buf + 4, p->major);
        put32(buf + 8, p->minor);
        put32(buf + 12, p->max_readahead);
        put32(buf + 16, (uint32_t) p->flags);
        put32(buf + 20, (uint32_t) (p->flags >> 32));
        put32(buf + 24, p->max_write);
        put32(buf + 28, p->max_pages);
        put32(buf + 32, p->time_gran);
}

int fuse_params_decode(const void *buf, size_t len, FuseParams *ret) {
        const uint8_t *b = buf;
        if (len < 4 || memcmp(b, magic, sizeof(magic)) != 0)
                return -EBADMSG;
        if (b[3] != FUSE_PARAMS_BLOB_VERSION)
                return -EPROTO;
        if (len != FUSE_PARAMS_BLOB_SIZE)
                return -EBADMSG;
        FuseParams p = {
                .major = get32(b + 4),
                .minor = get32(b + 8),
                .max_readahead = get32(b + 12),
                .flags = get32(b + 16) | (uint64_t) get32(b + 20) << 32,
                .max_write = get32(b + 24),
                .max_pages = get32(b + 28),
                .time_gran = get32(b + 32),
        };
        if (p.major != FUSE_KERNEL_VERSION || p.minor < FUSE_PARAMS_MIN_MINOR || p.minor > HOLDFAST_FUSE_MINOR)
                return -EBADMSG;
        if (p.flags & ~FUSE_PARAMS_WANTED_FLAGS)
                return -EBADMSG;
        if (p.max_write != FUSE_PARAMS_MAX_WRITE || p.max_pages > FUSE_PARAMS_MAX_PAGES)
                return -EBADMSG;
        if (p.time_gran < 1 || p.time_gran > 1000000000 || get32(b + 36) != 0)
                return -EBADMSG;
        *ret = p;
        return 0;
}
