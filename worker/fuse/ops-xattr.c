/* GETXATTR and LISTXATTR: the TOC's xattrs, plus the overlay's opaque
 * marker on INODE_OPAQUE directories, served as both
 * "trusted.overlay.opaque" (overlayfs as root) and "user.overlay.opaque"
 * (overlayfs with userxattr) = "y", unless the TOC names them itself.
 * Size 0 asks for the size; a value or list that does not fit is ERANGE.
 * Serving threads. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/fuse/ops.h"

static const char *const opaque_names[] = { "trusted.overlay.opaque", "user.overlay.opaque" };

static bool toc_has(const Index *idx, const IndexInode *in, const char *name, size_t len, const IndexXattr **ret) {
        for (uint32_t i = 0; i < in->xattr_count; i++) {
                const IndexXattr *x = &idx->xattrs[in->xattr_first + i];
                if (x->name_len == len && memcmp(index_str(idx, x->name), name, len) == 0) {
                        if (ret)
                                *ret = x;
                        return true;
                }
        }
        return false;
}

/* Answers a size probe, ERANGE, or the bytes. */
static int reply_sized(FuseReq *r, uint32_t want, const void *data, size_t len) {
        if (want == 0) {
                struct fuse_getxattr_out out = { .size = (uint32_t) len };
                return fuse_reply(r, &out, sizeof(out));
        }
        if (len > want)
                return -ERANGE;
        return fuse_reply(r, data, len);
}

int op_getxattr(FuseReq *r) {
        const struct fuse_getxattr_in *in = r->arg;
        const char *name = (const char *) (in + 1);
        size_t max = r->arg_len - sizeof(*in);
        size_t len = strnlen(name, max);
        if (len == max)
                return -EINVAL;
        const Index *idx = r->layer->index;
        const IndexXattr *x;
        if (toc_has(idx, r->inode, name, len, &x))
                return reply_sized(r, in->size, index_str(idx, x->value), x->value_len);
        if (S_ISDIR(r->inode->mode) && (r->inode->flags & INODE_OPAQUE))
                for (size_t i = 0; i < 2; i++)
                        if (strcmp(name, opaque_names[i]) == 0)
                                return reply_sized(r, in->size, "y", 1);
        return -ENODATA;
}

int op_listxattr(FuseReq *r) {
        const struct fuse_getxattr_in *in = r->arg;
        const Index *idx = r->layer->index;
        const IndexInode *ino = r->inode;
        uint8_t *buf = r->thread->out;
        size_t used = 0;
        /* Names are at most 255 bytes and a node has at most 65535 of
         * them, which can exceed the buffer: count first, copy while it fits. */
        size_t total = 0;
        for (uint32_t i = 0; i < ino->xattr_count; i++) {
                const IndexXattr *x = &idx->xattrs[ino->xattr_first + i];
                total += x->name_len + 1;
                if (total <= FUSE_MAX_READ_SIZE) {
                        memcpy(buf + used, index_str(idx, x->name), x->name_len);
                        buf[used + x->name_len] = 0;
                        used += x->name_len + 1;
                }
        }
        if (S_ISDIR(ino->mode) && (ino->flags & INODE_OPAQUE))
                for (size_t i = 0; i < 2; i++) {
                        size_t n = strlen(opaque_names[i]);
                        if (toc_has(idx, ino, opaque_names[i], n, NULL))
                                continue;
                        total += n + 1;
                        if (total <= FUSE_MAX_READ_SIZE) {
                                memcpy(buf + used, opaque_names[i], n + 1);
                                used += n + 1;
                        }
                }
        if (total > FUSE_MAX_READ_SIZE && in->size != 0)
                return -E2BIG;
        return reply_sized(r, in->size, buf, total == used ? used : total);
}
