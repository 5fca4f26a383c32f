/* libFuzzer target for layer_image_decode(): the bytes a worker reads back
 * from RocksDB. Each input is decoded twice: as it is (almost always
 * refused by the checksum), and with the checksum recomputed, so that the
 * fuzzer reaches the checks behind it. On failure the outputs must be
 * untouched and a message set. On success the decoded Index must hold
 * everything index-io.h promises, so that serving it needs no checks:
 *   - the root is a directory and its own parent; every other inode's
 *     parent is a smaller directory;
 *   - each directory's entries are one run of dirents, the runs tile the
 *     array in inode order, names are valid path components inside the
 *     pool, strictly sorted, and index_lookup() finds each of them;
 *   - every inode but the root has a name, a directory exactly one, by
 *     the directory its parent field names;
 *   - a regular file's chunks tile its size and index_chunk_find() returns
 *     the covering chunk; blob ranges are ordered inside [1, toc_offset);
 *   - symlink targets and xattrs are strings inside the pool; digest
 *     references are in range;
 *   - encoding the result gives back the (checksum-fixed) input byte for
 *     byte: an image that decodes is the one encoding of its Index.
 * Any violation aborts.
 *
 * Seeds (corpus/fuzz-layer-image/) are the images of the eStargz and
 * zstd:chunked blobs in corpus/fuzz-chunk/, made by layer_open() and
 * layer_image_encode(). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/estargz/index-io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The version 1 header: the checksum covers [0, H_CHECKSUM) and the
 * payload after HDR_SIZE. */
#define H_CHECKSUM 168
#define HDR_SIZE 200

#define CHECK(x)                        \
        do {                            \
                if (!(x))               \
                        abort();        \
        } while (0)

static void check_pool_str(const Index *idx, uint64_t off, uint64_t len) {
        CHECK(off < idx->pool_len && len < idx->pool_len - off);
        CHECK(idx->pool[off + len] == 0);
}

static int name_cmp(const Index *idx, const IndexDirent *a, const IndexDirent *b) {
        size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
        int c = memcmp(index_str(idx, a->name), index_str(idx, b->name), n);
        if (c != 0)
                return c;
        return a->name_len < b->name_len ? -1 : a->name_len > b->name_len;
}

static void check_file(const Index *idx, uint64_t ino, const IndexInode *in) {
        CHECK((uint64_t) in->first + in->count <= idx->n_chunks);
        CHECK(in->size <= INT64_MAX);
        CHECK((in->size == 0) == (in->count == 0));
        uint64_t pos = 0;
        for (uint32_t i = 0; i < in->count; i++) {
                const IndexChunk *c = &idx->chunks[in->first + i];
                CHECK(c->file_offset == pos);
                CHECK(c->size > 0 && c->size <= in->size - pos);
                pos += c->size;
                uint64_t probes[3] = { c->file_offset, c->file_offset + c->size / 2, c->file_offset + c->size - 1 };
                for (size_t k = 0; k < 3; k++)
                        CHECK(index_chunk_find(idx, ino, probes[k]) == (int64_t) in->first + i);
        }
        CHECK(pos == in->size);
        CHECK(index_chunk_find(idx, ino, in->size) == -ERANGE);
}

static void check_index(const LayerImage *img, const Index *idx) {
        CHECK(idx->n_inodes >= 1 && idx->n_inodes < UINT32_MAX);
        CHECK(idx->pool && idx->pool_len > 0 && idx->pool[idx->pool_len - 1] == 0);
        const IndexInode *root = index_inode(idx, INDEX_ROOT_INO);
        CHECK(root && S_ISDIR(root->mode) && root->parent == INDEX_ROOT_INO);
        CHECK(index_inode(idx, 0) == NULL && index_inode(idx, idx->n_inodes + 1) == NULL);
        CHECK((unsigned) img->footer.format < _LAYER_FORMAT_MAX);
        CHECK(img->footer.toc_offset < img->blob_size);
        CHECK(idx->prefetch_end <= img->footer.toc_offset);

        uint32_t *names = calloc(idx->n_inodes + 1, sizeof(uint32_t));
        CHECK(names);
        size_t next_dirent = 0;
        for (uint64_t ino = 1; ino <= idx->n_inodes; ino++) {
                const IndexInode *in = index_inode(idx, ino);
                CHECK(in->parent >= 1 && (ino == 1 || in->parent < ino));
                CHECK(S_ISDIR(index_inode(idx, in->parent)->mode));
                CHECK((uint64_t) in->xattr_first + in->xattr_count <= idx->n_xattrs);
                CHECK(in->digest == INDEX_NONE || in->digest < idx->n_digests);
                for (uint32_t x = 0; x < in->xattr_count; x++) {
                        const IndexXattr *ix = &idx->xattrs[in->xattr_first + x];
                        check_pool_str(idx, ix->name, ix->name_len);
                        check_pool_str(idx, ix->value, ix->value_len);
                }
                switch (in->mode & S_IFMT) {
                case S_IFDIR:
                        CHECK(in->first == next_dirent);
                        CHECK((uint64_t) in->first + in->count <= idx->n_dirents);
                        next_dirent += in->count;
                        for (uint32_t i = 0; i < in->count; i++) {
                                const IndexDirent *d = &idx->dirents[in->first + i];
                                check_pool_str(idx, d->name, d->name_len);
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
                                if (S_ISDIR(child->mode))
                                        CHECK(child->parent == ino);
                                uint64_t found = 0;
                                CHECK(index_lookup(idx, ino, name, d->name_len, &found) == 0 && found == d->ino);
                        }
                        uint64_t dummy;
                        CHECK(index_lookup(idx, ino, "", 0, &dummy) == -ENOENT);
                        CHECK(index_chunk_find(idx, ino, 0) == -EISDIR);
                        break;
                case S_IFREG:
                        check_file(idx, ino, in);
                        break;
                case S_IFLNK:
                        check_pool_str(idx, in->first, in->count);
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
        }
        CHECK(next_dirent == idx->n_dirents);
        for (uint64_t ino = 1; ino <= idx->n_inodes; ino++) {
                if (ino == INDEX_ROOT_INO)
                        CHECK(names[ino] == 0);
                else if (S_ISDIR(index_inode(idx, ino)->mode))
                        CHECK(names[ino] == 1);
                else
                        CHECK(names[ino] >= 1);
        }
        free(names);

        size_t unverified = 0;
        for (size_t i = 0; i < idx->n_chunks; i++) {
                const IndexChunk *c = &idx->chunks[i];
                CHECK(c->blob_offset >= 1 && c->blob_offset < c->blob_end && c->blob_end <= img->footer.toc_offset);
                CHECK(c->digest == INDEX_NONE || c->digest < idx->n_digests);
                if (i > 0) {
                        const IndexChunk *p = &idx->chunks[i - 1];
                        if (img->footer.format == LAYER_FORMAT_ZSTD_CHUNKED)
                                CHECK(p->blob_end <= c->blob_offset ||
                                      (p->blob_offset == c->blob_offset && p->inner_offset < c->inner_offset));
                        else
                                CHECK(p->blob_end <= c->blob_offset && c->inner_offset == 0);
                }
                unverified += c->digest == INDEX_NONE;
        }
        CHECK(unverified == idx->n_unverified);

        uint64_t ino;
        CHECK(index_lookup_path(idx, "", &ino) == 0 && ino == INDEX_ROOT_INO);
}

static void decode_one(const uint8_t *data, size_t size) {
        static const LayerImage sentinel = { .blob_size = 0x5a5a5a5a };
        LayerImage img = sentinel;
        Index *idx = (Index *) (uintptr_t) 1;
        ErrMsg err = {};

        /* a copy of its own, so that ASan sees any read past the end */
        uint8_t *buf = malloc(size ? size : 1);
        CHECK(buf);
        memcpy(buf, data, size);
        int r = layer_image_decode(buf, size, &img, &idx, &err);
        if (r < 0) {
                CHECK(r == -EBADMSG || r == -EPROTO || r == -ENOMEM);
                CHECK(memcmp(&img, &sentinel, sizeof(img)) == 0 && idx == (Index *) (uintptr_t) 1);
                CHECK(r == -ENOMEM || (memchr(err.text, 0, sizeof(err.text)) && err.text[0] != 0));
                free(buf);
                return;
        }
        CHECK(r == 0 && idx && img.index == idx);
        check_index(&img, idx);

        uint8_t *again = NULL;
        size_t again_len = 0;
        CHECK(layer_image_encode(&img, &again, &again_len) == 0);
        CHECK(again_len == size && memcmp(again, buf, size) == 0);
        free(again);
        index_free(idx);
        free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        decode_one(data, size);
        if (size < HDR_SIZE)
                return 0;

        uint8_t *fixed = malloc(size);
        CHECK(fixed);
        memcpy(fixed, data, size);
        Sha256 *s = sha256_new();
        CHECK(s);
        sha256_update(s, fixed, H_CHECKSUM);
        sha256_update(s, fixed + HDR_SIZE, size - HDR_SIZE);
        sha256_final(s, fixed + H_CHECKSUM);
        sha256_free(s);
        decode_one(fixed, size);
        free(fixed);
        return 0;
}
