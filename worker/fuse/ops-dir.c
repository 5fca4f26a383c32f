/* Directories: OPENDIR, READDIR, READDIRPLUS. A directory's entries are
 * one sorted run of the index's dirents; the stream is ".", "..", then
 * that run, and an entry's offset is its position + 1, so a directory
 * offset is stable across workers (a takeover mid-readdir continues where
 * the kernel left off). Serving threads. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util/macro.h"
#include "worker/fuse/ops.h"

int op_opendir(FuseReq *r) {
        if (!S_ISDIR(r->inode->mode))
                return -ENOTDIR;
        const struct fuse_open_in *in = r->arg;
        if ((in->flags & O_ACCMODE) != O_RDONLY)
                return -EROFS;
        /* CACHE_DIR: the kernel keeps the listing in its page cache. */
        struct fuse_open_out out = { .open_flags = FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR };
        return fuse_reply(r, &out, sizeof(out));
}

typedef struct DirItem {
        const char *name;
        size_t len;
        uint64_t ino;
        const IndexInode *in;
} DirItem;

/* The entry at stream position pos; false past the end. */
static bool dir_item(const Index *idx, uint64_t dir, const IndexInode *d, uint64_t pos, DirItem *ret) {
        if (pos == 0) {
                *ret = (DirItem) { ".", 1, dir, d };
                return true;
        }
        if (pos == 1) {
                uint64_t parent = dir == INDEX_ROOT_INO ? INDEX_ROOT_INO : d->parent;
                *ret = (DirItem) { "..", 2, parent, index_inode(idx, parent) };
                return ret->in != NULL;
        }
        if (pos - 2 >= d->count)
                return false;
        const IndexDirent *de = &idx->dirents[d->first + (pos - 2)];
        *ret = (DirItem) { index_str(idx, de->name), de->name_len, de->ino, index_inode(idx, de->ino) };
        return ret->in != NULL;
}

static int readdir_common(FuseReq *r, bool plus) {
        if (!S_ISDIR(r->inode->mode))
                return -ENOTDIR;
        const struct fuse_read_in *in = r->arg;
        const Index *idx = r->layer->index;
        size_t cap = MIN((size_t) in->size, FUSE_MAX_READ_SIZE);
        uint8_t *buf = r->thread->out;
        size_t used = 0;
        DirItem it;
        for (uint64_t pos = in->offset; dir_item(idx, r->hdr->nodeid, r->inode, pos, &it); pos++) {
                size_t head = plus ? FUSE_NAME_OFFSET_DIRENTPLUS : FUSE_NAME_OFFSET;
                size_t entlen = FUSE_DIRENT_ALIGN(head + it.len);
                if (used + entlen > cap)
                        break;
                uint8_t *p = buf + used;
                memset(p, 0, entlen);
                struct fuse_dirent *de;
                if (plus) {
                        struct fuse_direntplus *dp = (struct fuse_direntplus *) p;
                        /* "." and "..": node id 0 means "no entry to
                         * instantiate"; the kernel skips them anyway and
                         * takes no lookup reference. */
                        if (pos >= 2)
                                fuse_fill_entry(idx, it.ino, it.in, &dp->entry_out);
                        de = &dp->dirent;
                } else
                        de = (struct fuse_dirent *) p;
                de->ino = it.ino;
                de->off = pos + 1;
                de->namelen = (uint32_t) it.len;
                de->type = (it.in->mode & S_IFMT) >> 12;
                memcpy(de->name, it.name, it.len);
                used += entlen;
        }
        return fuse_reply(r, buf, used);
}

int op_readdir(FuseReq *r) {
        return readdir_common(r, false);
}

int op_readdirplus(FuseReq *r) {
        return readdir_common(r, true);
}
