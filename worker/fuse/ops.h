/* The read-only FUSE operations over a layer Index, and the dispatcher
 * that routes a request read from /dev/fuse to them. Handlers run on any
 * serving thread, concurrently: they only read the immutable Index and
 * their thread's buffers. Each returns 0 after exactly one fuse_reply*(),
 * or a negative errno for the dispatcher to answer. */
#pragma once

#include "worker/fuse/request.h"

/* Called after FUSE_INIT has been answered on a session (serving thread). */
typedef void (*FuseInitFn)(void *userdata, FuseSession *s);

typedef struct FuseDispatchHooks {
        FuseInitFn on_init;
        void *userdata;
} FuseDispatchHooks;

/* Handles one request of len bytes in buf (read whole from s->fd). */
void fuse_dispatch(FuseSession *s, FuseThread *t, const FuseDispatchHooks *hooks, const uint8_t *buf, size_t len);

int op_init(FuseReq *r, const FuseDispatchHooks *hooks);
int op_destroy(FuseReq *r);
int op_lookup(FuseReq *r);
int op_forget(FuseReq *r);
int op_batch_forget(FuseReq *r);
int op_getattr(FuseReq *r);
int op_readlink(FuseReq *r);
int op_statfs(FuseReq *r);
int op_access(FuseReq *r);
int op_interrupt(FuseReq *r);
int op_open(FuseReq *r);
int op_read(FuseReq *r);
int op_release(FuseReq *r);
int op_opendir(FuseReq *r);
int op_readdir(FuseReq *r);
int op_readdirplus(FuseReq *r);
int op_getxattr(FuseReq *r);
int op_listxattr(FuseReq *r);
int op_erofs(FuseReq *r);

/* attr.c: an inode as the kernel wants it. */
void fuse_fill_attr(const Index *idx, uint64_t ino, const IndexInode *in, struct fuse_attr *ret);
void fuse_fill_entry(const Index *idx, uint64_t ino, const IndexInode *in, struct fuse_entry_out *ret);
