/* The FUSE kernel ABI: <linux/fuse.h> (Debian 12 ships 7.38) plus what
 * protocol 7.40 added that holdfast uses: FUSE_NOTIFY_RESEND, the resend
 * bit in `unique`, passthrough. Values are the kernel's
 * (include/uapi/linux/fuse.h). */
#pragma once

#include <linux/fuse.h>
#include <stdint.h>
#include <sys/ioctl.h>

#define HOLDFAST_FUSE_MINOR 40

#ifndef FUSE_NOTIFY_RESEND
#define FUSE_NOTIFY_RESEND 7
#endif
/* Set in `unique` of a request the kernel queued again after RESEND. */
#ifndef FUSE_UNIQUE_RESEND
#define FUSE_UNIQUE_RESEND (1ULL << 63)
#endif
/* init flags (64-bit: flags | flags2 << 32) */
#ifndef FUSE_PASSTHROUGH
#define FUSE_PASSTHROUGH (1ULL << 37)
#endif
#ifndef FUSE_NO_EXPORT_SUPPORT
#define FUSE_NO_EXPORT_SUPPORT (1ULL << 38)
#endif
#ifndef FUSE_HAS_RESEND
#define FUSE_HAS_RESEND (1ULL << 39)
#endif
#ifndef FOPEN_PASSTHROUGH
#define FOPEN_PASSTHROUGH (1 << 7)
#endif

struct holdfast_fuse_backing_map {
        int32_t fd;
        uint32_t flags;
        uint64_t padding;
};
#ifndef FUSE_DEV_IOC_BACKING_OPEN
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct holdfast_fuse_backing_map)
#endif
#ifndef FUSE_DEV_IOC_BACKING_CLOSE
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
#endif
