/* libFuzzer target for the TOC: toc_parse_json() on the input and, when
 * it parses, index_build() for a gzip and a zstd:chunked layer, then a
 * walk over the whole index checking what index.h promises:
 *   - every array reference (dirents, chunks, xattrs, digests, pool
 *     strings) is in range, and pool strings are NUL-terminated;
 *   - the root is a directory; each directory's entries are one run of
 *     dirents, strictly sorted, with names that are valid path components;
 *     the runs of all directories tile `dirents` in inode order;
 *   - every inode is named at least once; a directory is named exactly
 *     once, by its parent, and its parent's number is smaller than its own;
 *     link counts match the names;
 *   - index_lookup() finds every dirent name in its directory;
 *   - a regular file's chunks are contiguous, non-empty and cover its
 *     size; index_chunk_find() returns the covering chunk; compressed
 *     ranges lie inside [1, toc_offset) and are ordered.
 * Any violation aborts. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/estargz/index.h"
#include "common/estargz/toc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TOC_OFFSET (1ull << 40)

#define CHECK(x)                        \
        do {                            \
                if (!(x))               \
                        abort();        \
        } while (0)

static void check_pool_str(const char *pool, size_t pool_len, uint64_t off, uint64_t len) {
        CHECK(off < pool_len && len < pool_len - off);
        CHECK(pool[off + len] == 0);
}

static void check_toc(const Toc *t) {
        CHECK(t->pool != NULL);
        for (size_t i = 0; i < t->n_entries; i++) {
                const TocEntry *e = &t->entries[i];
                CHECK(e->type < _TOC_TYPE_MAX);
                if (e->name_len > 0 || e->type != TOC_CHUNK)
                        check_pool_str(t->pool, t->pool_len, e->name, e->name_len);
                if (e->link_len > 0)
                        check_pool_str(t->pool, t->pool_len, e->link, e->link_len);
                CHECK(e->digest == TOC_NO_DIGEST || e->digest < t->n_digests);
                CHECK(e->chunk_digest == TOC_NO_DIGEST || e->chunk_digest < t->n_digests);
                CHECK((uint64_t) e->xattr_first + e->xattr_count <= t->n_xattrs);
        }
        for (size_t i = 0; i < t->n_xattrs; i++) {
                check_pool_str(t->pool, t->pool_len, t->xattrs[i].name, t->xattrs[i].name_len);
                check_pool_str(t->pool, t->pool_len, t->xattrs[i].value, t->xattrs[i].value_len);
        }
}

static int name_cmp(const Index *idx, const IndexDirent *a, const IndexDirent *b) {
        size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
        int c = memcmp(index_str(idx, a->name), index_str(idx, b->name), n);
        if (c != 0)
                return c;
        return a->name_len < b->name_len ? -1 : a->name_len > b->name_len;
}

static void check_chunks_of(const Index *idx, uint64_t ino, const IndexInode *in) {
        CHECK((uint64_t) in->first + in->count <= idx->n_chunks);
        CHECK(in->digest == INDEX_NONE || in->digest < idx->n_digests);
        CHECK(in->size <= INT64_MAX);
        if (in->size == 0)
                CHECK(in->count == 0);
        else
                CHECK(in->count > 0);
        uint64_t pos = 0;
        for (uint32_t i = 0; i < in->count; i++) {
                const IndexChunk *c = &idx->chunks[in->first + i];
                CHECK(c->file_offset == pos);
                CHECK(c->size > 0 && c->size <= in->size - pos);
                pos += c->size;
                /* index_chunk_find() at the chunk's first, middle and last byte */
                uint64_t probes[3] = { c->file_offset, c->file_offset + c->size / 2, c->file_offset + c->size - 1 };
                for (size_t k = 0; k < 3; k++)
                        CHECK(index_chunk_find(idx, ino, probes[k]) == (int64_t) in->first + i);
        }
        CHECK(pos == in->size);
        CHECK(index_chunk_find(idx, ino, in->size) == -ERANGE);
        CHECK(index_chunk_find(idx, ino, UINT64_MAX) == -ERANGE);
}

static void check_index(const Index *idx, const IndexOptions *opts) {
        CHECK(idx->n_inodes >= 1 && idx->n_inodes < UINT32_MAX);
        CHECK(idx->pool && idx->pool_len > 0);
        const IndexInode *root = index_inode(idx, INDEX_ROOT_INO);
        CHECK(root && S_ISDIR(root->mode));
        CHECK(index_inode(idx, 0) == NULL && index_inode(idx, idx->n_inodes + 1) == NULL);

        uint32_t *names = calloc(idx->n_inodes + 1, sizeof(uint32_t));
        uint32_t *subdirs = calloc(idx->n_inodes + 1, sizeof(uint32_t));
        CHECK(names && subdirs);

        size_t next_dirent = 0;
        for (uint64_t ino = 1; ino <= idx->n_inodes; ino++) {
                const IndexInode *in = index_inode(idx, ino);
                CHECK(in);
                CHECK(in->parent >= 1 && in->parent <= idx->n_inodes);
                CHECK(S_ISDIR(index_inode(idx, in->parent)->mode));
                CHECK((uint64_t) in->xattr_first + in->xattr_count <= idx->n_xattrs);
                for (uint32_t x = 0; x < in->xattr_count; x++) {
                        const IndexXattr *ix = &idx->xattrs[in->xattr_first + x];
                        check_pool_str(idx->pool, idx->pool_len, ix->name, ix->name_len);
                        check_pool_str(idx->pool, idx->pool_len, ix->value, ix->value_len);
                }
                switch (in->mode & S_IFMT) {
                case S_IFDIR: {
                        CHECK(in->first == next_dirent); /* runs tile dirents in inode order */
                        CHECK((uint64_t) in->first + in->count <= idx->n_dirents);
                        next_dirent += in->count;
                        for (uint32_t i = 0; i < in->count; i++) {
                                const IndexDirent *d = &idx->dirents[in->first + i];
                                check_pool_str(idx->pool, idx->pool_len, d->name, d->name_len);
                                const char *name = index_str(idx, d->name);
                                CHECK(d->name_len >= 1 && d->name_len <= INDEX_NAME_MAX);
                                CHECK(!memchr(name, '/', d->name_len) && !memchr(name, 0, d->name_len));
                                CHECK(!(d->name_len == 1 && name[0] == '.'));
                                CHECK(!(d->name_len == 2 && name[0] == '.' && name[1] == '.'));
                                CHECK(d->ino >= 2 && d->ino <= idx->n_inodes);
                                if (i > 0)
                                        CHECK(name_cmp(idx, &idx->dirents[in->first + i - 1], d) < 0);
                                names[d->ino]++;
                                const IndexInode *child = index_inode(idx, d->ino);
                                if (S_ISDIR(child->mode)) {
                                        CHECK(child->parent == ino && ino < d->ino);
                                        subdirs[ino]++;
                                }
                                uint64_t found = 0;
                                CHECK(index_lookup(idx, ino, name, d->name_len, &found) == 0 && found == d->ino);
                        }
                        uint64_t dummy;
                        CHECK(index_lookup(idx, ino, "", 0, &dummy) == -ENOENT);
                        CHECK(index_chunk_find(idx, ino, 0) == -EISDIR);
                        break;
                }
                case S_IFREG:
                        check_chunks_of(idx, ino, in);
                        break;
                case S_IFLNK:
                        check_pool_str(idx->pool, idx->pool_len, in->first, in->count);
                        CHECK(in->size == in->count && in->count > 0);
                        break;
                case S_IFCHR: case S_IFBLK: case S_IFIFO:
                        CHECK(in->size == 0);
                        break;
                default:
                        abort();
                }
                if (!S_ISDIR(in->mode)) {
                        uint64_t dummy;
                        CHECK(index_lookup(idx, ino, "a", 1, &dummy) == -ENOTDIR);
                }
                if (!S_ISREG(in->mode) && !S_ISDIR(in->mode))
                        CHECK(index_chunk_find(idx, ino, 0) == -EINVAL);
        }
        CHECK(next_dirent == idx->n_dirents);

        for (uint64_t ino = 1; ino <= idx->n_inodes; ino++) {
                const IndexInode *in = index_inode(idx, ino);
                if (ino == INDEX_ROOT_INO) {
                        CHECK(names[ino] == 0);
                } else if (S_ISDIR(in->mode)) {
                        CHECK(names[ino] == 1);
                } else {
                        CHECK(names[ino] >= 1);
                }
                if (S_ISDIR(in->mode))
                        CHECK(in->nlink == 2 + subdirs[ino]);
                else
                        CHECK(in->nlink == names[ino]);
        }

        /* Chunks: in blob order, inside the layer data. */
        size_t unverified = 0;
        for (size_t i = 0; i < idx->n_chunks; i++) {
                const IndexChunk *c = &idx->chunks[i];
                CHECK(c->blob_offset >= 1 && c->blob_offset < c->blob_end && c->blob_end <= opts->toc_offset);
                CHECK(c->digest == INDEX_NONE || c->digest < idx->n_digests);
                if (i > 0) {
                        const IndexChunk *p = &idx->chunks[i - 1];
                        if (opts->format == LAYER_FORMAT_ZSTD_CHUNKED)
                                CHECK(p->blob_offset < c->blob_offset ||
                                      (p->blob_offset == c->blob_offset && p->inner_offset < c->inner_offset));
                        else
                                CHECK(p->blob_end <= c->blob_offset && c->inner_offset == 0);
                }
                if (c->digest == INDEX_NONE)
                        unverified++;
        }
        (void) unverified; /* n_unverified counts before whole-file digests fill in */

        uint64_t ino;
        CHECK(index_lookup_path(idx, "", &ino) == 0 && ino == INDEX_ROOT_INO);
        CHECK(index_lookup_path(idx, "/", &ino) == 0 && ino == INDEX_ROOT_INO);

        free(names);
        free(subdirs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const TocLimits limits = { .max_json_bytes = 1u << 20, .max_entries = 20000 };
        Toc *toc = NULL;
        ErrMsg err = {};

        int r = toc_parse_json(data, size, &limits, &toc, &err);
        if (r < 0) {
                CHECK(toc == NULL);
                CHECK(err.text[0] != 0 || r == -ENOMEM);
                return 0;
        }
        CHECK(r == 0 && toc);
        CHECK(toc->n_entries <= limits.max_entries);
        check_toc(toc);

        const LayerFormat formats[] = { LAYER_FORMAT_ESTARGZ, LAYER_FORMAT_ZSTD_CHUNKED };
        for (size_t f = 0; f < 2; f++) {
                IndexOptions opts = { .toc_offset = TOC_OFFSET, .format = formats[f] };
                Index *idx = NULL;
                ErrMsg ierr = {};
                r = index_build(toc, &opts, &idx, &ierr);
                if (r < 0) {
                        CHECK(idx == NULL);
                        CHECK(ierr.text[0] != 0 || r == -ENOMEM);
                        continue;
                }
                CHECK(r == 0 && idx);
                check_index(idx, &opts);
                index_free(idx);
        }
        toc_free(toc);
        return 0;
}
