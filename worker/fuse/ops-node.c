/* Operations on nodes as such: LOOKUP, FORGET, BATCH_FORGET, GETATTR,
 * READLINK, STATFS, ACCESS, INTERRUPT, and the EROFS answer for every
 * change. Node ids are inode numbers of the immutable index, so there is
 * no lookup count to keep: FORGET is accepted for any node id (after a
 * takeover the kernel forgets nodes this worker never handed out).
 * Serving threads. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/fuse/ops.h"

int op_lookup(FuseReq *r) {
        const char *name = r->arg;
        size_t len = strnlen(name, r->arg_len);
        if (len == r->arg_len)
                return -EINVAL; /* not NUL-terminated */
        if (!S_ISDIR(r->inode->mode))
                return -ENOTDIR;
        const Index *idx = r->layer->index;
        uint64_t ino;
        int ret = index_lookup(idx, r->hdr->nodeid, name, len, &ino);
        struct fuse_entry_out e;
        if (ret == -ENOENT) {
                /* A negative entry (node id 0) with the long timeout: the
                 * kernel caches the absence, which never changes either. */
                memset(&e, 0, sizeof(e));
                e.entry_valid = FUSE_TIMEOUT_SEC;
                return fuse_reply(r, &e, sizeof(e));
        }
        if (ret < 0)
                return ret;
        fuse_fill_entry(idx, ino, index_inode(idx, ino), &e);
        return fuse_reply(r, &e, sizeof(e));
}

int op_forget(FuseReq *r) {
        (void) r;
        return 0;
}

int op_batch_forget(FuseReq *r) {
        (void) r;
        return 0;
}

int op_interrupt(FuseReq *r) {
        /* Every request is answered promptly; nothing to interrupt. */
        (void) r;
        return 0;
}

int op_getattr(FuseReq *r) {
        struct fuse_attr_out out = { .attr_valid = FUSE_TIMEOUT_SEC };
        fuse_fill_attr(r->layer->index, r->hdr->nodeid, r->inode, &out.attr);
        return fuse_reply(r, &out, sizeof(out));
}

int op_readlink(FuseReq *r) {
        if (!S_ISLNK(r->inode->mode))
                return -EINVAL;
        return fuse_reply(r, index_str(r->layer->index, r->inode->first), r->inode->count);
}

int op_statfs(FuseReq *r) {
        const Index *idx = r->layer->index;
        uint64_t blocks = 0;
        for (size_t i = 0; i < idx->n_inodes; i++)
                if (S_ISREG(idx->inodes[i].mode))
                        blocks += (idx->inodes[i].size + 4095) / 4096;
        struct fuse_statfs_out out = {
                .st = {
                        .blocks = blocks,
                        .files = idx->n_inodes,
                        .bsize = 4096,
                        .frsize = 4096,
                        .namelen = INDEX_NAME_MAX,
                },
        };
        return fuse_reply(r, &out, sizeof(out));
}

int op_access(FuseReq *r) {
        /* default_permissions: the kernel checks modes itself */
        return fuse_reply(r, NULL, 0);
}

int op_erofs(FuseReq *r) {
        (void) r;
        return -EROFS;
}
