/* The opcode table and the dispatcher: checks a request's framing, finds
 * its layer and inode when the operation needs them, calls the handler
 * and makes sure exactly one reply goes out (none for FORGET,
 * BATCH_FORGET and INTERRUPT, which the kernel does not wait for). Runs
 * on every serving thread. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "common/util/macro.h"
#include "worker/fuse/ops.h"
#include "worker/util/log.h"

enum {
        F_LAYER = 1 << 0,   /* needs the session's layer */
        F_INODE = 1 << 1,   /* needs hdr->nodeid's inode (implies F_LAYER) */
        F_NOREPLY = 1 << 2, /* the kernel expects no answer */
        F_NOINIT = 1 << 3,  /* allowed before FUSE_INIT */
};

typedef struct FuseOp {
        int (*fn)(FuseReq *r);
        const char *name;
        unsigned flags;
        size_t min_arg;     /* bytes of argument the handler reads at least */
} FuseOp;

/* Anything not listed here is answered ENOSYS. */
static const FuseOp fuse_ops[] = {
        [FUSE_INIT] = { NULL, "INIT", F_NOINIT, 0 },
        [FUSE_DESTROY] = { op_destroy, "DESTROY", 0, 0 },
        [FUSE_LOOKUP] = { op_lookup, "LOOKUP", F_INODE, 1 },
        [FUSE_FORGET] = { op_forget, "FORGET", F_NOREPLY, sizeof(struct fuse_forget_in) },
        [FUSE_BATCH_FORGET] = { op_batch_forget, "BATCH_FORGET", F_NOREPLY, sizeof(struct fuse_batch_forget_in) },
        [FUSE_GETATTR] = { op_getattr, "GETATTR", F_INODE, 0 },
        [FUSE_READLINK] = { op_readlink, "READLINK", F_INODE, 0 },
        [FUSE_STATFS] = { op_statfs, "STATFS", F_LAYER, 0 },
        [FUSE_ACCESS] = { op_access, "ACCESS", 0, 0 },
        [FUSE_INTERRUPT] = { op_interrupt, "INTERRUPT", F_NOREPLY, 0 },
        [FUSE_OPEN] = { op_open, "OPEN", F_INODE, sizeof(struct fuse_open_in) },
        [FUSE_READ] = { op_read, "READ", F_INODE, sizeof(struct fuse_read_in) },
        [FUSE_RELEASE] = { op_release, "RELEASE", 0, 0 },
        [FUSE_OPENDIR] = { op_opendir, "OPENDIR", F_INODE, sizeof(struct fuse_open_in) },
        [FUSE_READDIR] = { op_readdir, "READDIR", F_INODE, sizeof(struct fuse_read_in) },
        [FUSE_READDIRPLUS] = { op_readdirplus, "READDIRPLUS", F_INODE, sizeof(struct fuse_read_in) },
        [FUSE_RELEASEDIR] = { op_release, "RELEASEDIR", 0, 0 },
        [FUSE_GETXATTR] = { op_getxattr, "GETXATTR", F_INODE, sizeof(struct fuse_getxattr_in) + 1 },
        [FUSE_LISTXATTR] = { op_listxattr, "LISTXATTR", F_INODE, sizeof(struct fuse_getxattr_in) },
        /* a read-only layer: every change is EROFS */
        [FUSE_SETATTR] = { op_erofs, "SETATTR", 0, 0 },
        [FUSE_SYMLINK] = { op_erofs, "SYMLINK", 0, 0 },
        [FUSE_MKNOD] = { op_erofs, "MKNOD", 0, 0 },
        [FUSE_MKDIR] = { op_erofs, "MKDIR", 0, 0 },
        [FUSE_UNLINK] = { op_erofs, "UNLINK", 0, 0 },
        [FUSE_RMDIR] = { op_erofs, "RMDIR", 0, 0 },
        [FUSE_RENAME] = { op_erofs, "RENAME", 0, 0 },
        [FUSE_RENAME2] = { op_erofs, "RENAME2", 0, 0 },
        [FUSE_LINK] = { op_erofs, "LINK", 0, 0 },
        [FUSE_WRITE] = { op_erofs, "WRITE", 0, 0 },
        [FUSE_SETXATTR] = { op_erofs, "SETXATTR", 0, 0 },
        [FUSE_REMOVEXATTR] = { op_erofs, "REMOVEXATTR", 0, 0 },
        [FUSE_CREATE] = { op_erofs, "CREATE", 0, 0 },
        [FUSE_FALLOCATE] = { op_erofs, "FALLOCATE", 0, 0 },
        [FUSE_COPY_FILE_RANGE] = { op_erofs, "COPY_FILE_RANGE", 0, 0 },
};

static void answer(FuseReq *r, const FuseOp *op, int ret) {
        if (op && (op->flags & F_NOREPLY))
                return;
        if (ret < 0) {
                if (!r->replied)
                        fuse_reply_error(r, ret);
                return;
        }
        if (!r->replied) {
                /* a handler that returned 0 without answering: our bug, but
                 * the kernel must still get its one reply */
                log_warn_ratelimited(0, "mount %" PRIu64 ": %s returned without a reply", r->session->id,
                                     op && op->name ? op->name : "?");
                fuse_reply_error(r, -EIO);
        }
}

void fuse_dispatch(FuseSession *s, FuseThread *t, const FuseDispatchHooks *hooks, const uint8_t *buf, size_t len) {
        struct fuse_in_header hdr;
        if (len < sizeof(hdr)) {
                log_warn_ratelimited(0, "mount %" PRIu64 ": short request (%zu bytes) dropped", s->id, len);
                return;
        }
        memcpy(&hdr, buf, sizeof(hdr));
        FuseReq r = {
                .session = s,
                .thread = t,
                .hdr = &hdr,
                .arg = buf + sizeof(hdr),
                .arg_len = len - sizeof(hdr),
        };
        const FuseOp *op = hdr.opcode < ELEMENTSOF(fuse_ops) && fuse_ops[hdr.opcode].name ? &fuse_ops[hdr.opcode] : NULL;
        int ret;
        if (hdr.len != len) {
                log_warn_ratelimited(0, "mount %" PRIu64 ": request length %" PRIu32 " but %zu bytes read", s->id,
                                     hdr.len, len);
                ret = -EIO;
        } else if (!op) {
                ret = -ENOSYS;
        } else if (hdr.opcode == FUSE_INIT) {
                ret = op_init(&r, hooks);
        } else if (!fuse_session_initialized(s)) {
                log_warn_ratelimited(0, "mount %" PRIu64 ": %s before INIT", s->id, op->name);
                ret = -EIO;
        } else if (r.arg_len < op->min_arg) {
                ret = -EINVAL;
        } else {
                ret = 0;
                if (op->flags & (F_LAYER | F_INODE))
                        ret = fuse_session_layer(s, &r.layer);
                if (ret >= 0 && (op->flags & F_INODE)) {
                        r.inode = index_inode(r.layer->index, hdr.nodeid);
                        if (!r.inode)
                                ret = -ENOENT;
                }
                if (ret >= 0)
                        ret = op->fn(&r);
        }
        answer(&r, op, ret);
}
