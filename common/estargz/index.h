/* The layer index: a TOC turned into a tree of inodes with deterministic
 * numbers, in flat arrays (no pointers), ready to serve FUSE and to be
 * stored as-is.
 *
 * Numbering: the root is 1 (FUSE_ROOT_ID). Directories are walked
 * breadth-first, each directory's names in byte order, and an inode gets
 * the next number the first time one of its names is reached. So the same
 * TOC always yields the same numbers, a parent's number is smaller than its
 * children's, hardlinks share one inode, and a directory's entries are one
 * sorted run of `dirents` (lookup is a binary search).
 *
 * The tree is the layer as overlayfs expects a lower layer: ".wh.NAME"
 * becomes a 0:0 character device NAME (hidden when NAME exists too),
 * ".wh..wh..opq" marks its directory opaque (INODE_OPAQUE), and the
 * prefetch landmarks at the root are hidden (recorded in prefetch_end /
 * no_prefetch).
 *
 * An Index is immutable once built and may be read from any thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/estargz/toc.h"
#include "common/util/digest.h"
#include "common/util/errmsg.h"

#define INDEX_ROOT_INO 1u
#define INDEX_NONE UINT32_MAX
#define INDEX_NAME_MAX 255u
#define INDEX_PATH_MAX 4096u

enum {
        INODE_OPAQUE = 1 << 0, /* directory hides the lower layers (overlay opaque xattr) */
};

typedef struct IndexInode {
        uint64_t size;          /* regular files; symlinks: target length */
        int64_t mtime;
        uint32_t mode;          /* S_IFMT | permission bits */
        uint32_t uid, gid;
        uint32_t nlink;
        uint32_t rdev_major, rdev_minor;
        uint32_t parent;        /* ino of the directory that first names it */
        uint32_t first, count;  /* dir: dirents; reg: chunks; symlink: target in the pool */
        uint32_t xattr_first;
        uint16_t xattr_count;
        uint16_t flags;
        uint32_t digest;        /* reg: whole-file digest, or INDEX_NONE */
} IndexInode;

typedef struct IndexDirent {
        uint32_t name, name_len; /* in the pool */
        uint32_t ino;
} IndexDirent;

typedef struct IndexChunk {
        uint64_t file_offset;    /* where the chunk starts in the file */
        uint64_t size;           /* uncompressed bytes */
        uint64_t blob_offset;    /* compressed member/frame: [blob_offset, blob_end) */
        uint64_t blob_end;
        uint64_t inner_offset;   /* bytes to skip in the decompressed member */
        uint32_t digest;         /* chunk digest, or INDEX_NONE */
        uint32_t _pad;
} IndexChunk;

typedef struct IndexXattr {
        uint32_t name, name_len;
        uint32_t value, value_len;
} IndexXattr;

typedef struct Index {
        IndexInode *inodes;      /* owned; inodes[ino - 1] */
        size_t n_inodes;
        IndexDirent *dirents;    /* owned */
        size_t n_dirents;
        IndexChunk *chunks;      /* owned */
        size_t n_chunks;
        IndexXattr *xattrs;      /* owned */
        size_t n_xattrs;
        uint8_t (*digests)[SHA256_LEN]; /* owned */
        size_t n_digests;
        char *pool;              /* owned */
        size_t pool_len;
        uint64_t prefetch_end;   /* blob bytes before .prefetch.landmark; 0 = none */
        bool no_prefetch;        /* .no.prefetch.landmark present */
        size_t n_unverified;     /* chunks with no digest in the TOC */
} Index;

typedef struct IndexOptions {
        uint64_t toc_offset;     /* end of the last chunk's compressed range */
        LayerFormat format;
        uint64_t max_chunk_size;  /* 0: no cap */
} IndexOptions;

/* Builds the index, checking the TOC as a whole: names (no "..", no
 * absolute or empty components, at most 255 bytes a component), no
 * duplicates, parents are directories, hardlinks name an existing
 * non-directory, chunks tile each file exactly and their compressed ranges
 * are ordered, inside the blob and do not overlap. Returns 0, or with a
 * message naming the entry: -EBADMSG (malformed), -ENAMETOOLONG (a
 * component over 255 bytes or a path over 4096), -EEXIST (duplicate name),
 * -ENOTDIR (a parent that is not a directory), -ELOOP (hardlink loop),
 * -EFBIG, -ENOMEM. The Toc is only read. */
int index_build(const Toc *toc, const IndexOptions *opts, Index **ret, ErrMsg *err);
Index *index_free(Index *idx);

static inline const IndexInode *index_inode(const Index *idx, uint64_t ino) {
        return ino >= 1 && ino <= idx->n_inodes ? &idx->inodes[ino - 1] : NULL;
}

static inline const char *index_str(const Index *idx, uint32_t off) {
        return idx->pool + off;
}

/* Finds name in directory `parent`. Returns 0 with *ret_ino, -ENOENT,
 * or -ENOTDIR when parent is not a directory (or does not exist). */
int index_lookup(const Index *idx, uint64_t parent, const char *name, size_t len, uint64_t *ret_ino);

/* Resolves a slash-separated path from the root (no "." or ".."). */
int index_lookup_path(const Index *idx, const char *path, uint64_t *ret_ino);

/* The chunk of regular file `ino` that holds byte `offset`: returns its
 * index into idx->chunks, -EISDIR/-EINVAL for a non-regular file, or
 * -ERANGE at or past the end of the file. */
int64_t index_chunk_find(const Index *idx, uint64_t ino, uint64_t offset);
