/* Inode attributes and directory entries as the kernel wants them
 * (struct fuse_attr, fuse_entry_out). Pure; any serving thread. */
#include <string.h>
#include <sys/stat.h>

#include "worker/fuse/ops.h"

/* The kernel decodes rdev with new_decode_dev() (fs/fuse/inode.c): 12 bits
 * of major, 20 of minor, split around the low byte of the minor. */
static uint32_t new_encode_dev(uint32_t major, uint32_t minor) {
        return (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xffu) << 12);
}

void fuse_fill_attr(const Index *idx, uint64_t ino, const IndexInode *in, struct fuse_attr *ret) {
        (void) idx;
        struct fuse_attr a = {
                .ino = ino,
                .size = in->size,
                .blocks = (in->size + 511) / 512,
                .atime = (uint64_t) in->mtime,
                .mtime = (uint64_t) in->mtime,
                .ctime = (uint64_t) in->mtime,
                .mode = in->mode,
                .nlink = in->nlink ? in->nlink : 1,
                .uid = in->uid,
                .gid = in->gid,
                .blksize = 4096,
        };
        if (S_ISCHR(in->mode) || S_ISBLK(in->mode))
                a.rdev = new_encode_dev(in->rdev_major, in->rdev_minor);
        *ret = a;
}

void fuse_fill_entry(const Index *idx, uint64_t ino, const IndexInode *in, struct fuse_entry_out *ret) {
        memset(ret, 0, sizeof(*ret));
        ret->nodeid = ino;
        ret->generation = 0;
        ret->entry_valid = FUSE_TIMEOUT_SEC;
        ret->attr_valid = FUSE_TIMEOUT_SEC;
        fuse_fill_attr(idx, ino, in, &ret->attr);
}
