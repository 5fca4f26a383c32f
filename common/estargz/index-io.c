/* LayerImage <-> bytes: the record a worker stores in RocksDB so that a
 * restarted worker serves a layer without reading its TOC again.
 *
 * Layout (version 1), every integer little-endian, written field by field
 * so that the bytes do not depend on the host's struct layout or byte
 * order:
 *
 *   header (HDR_SIZE bytes, see the H_* offsets below): "HFLI", version,
 *   flags (0), the count of every Index array and the pool length, the
 *   footer, blob size, TOC digest, prefetch_end, no_prefetch,
 *   n_unverified, the payload length, and a sha256 over the header up to
 *   the checksum field followed by the whole payload;
 *   payload: inodes (64 bytes each), dirents (12), chunks (48), xattrs
 *   (16), digests (32), pool; each array starts 8-byte aligned, padding is
 *   zero.
 *
 * Decoding checks the checksum and then every invariant index.h promises
 * and the serving code relies on, so that a decoded Index needs no further
 * checks: a bad record is refused with -EBADMSG and a message saying what
 * is wrong, never served. Pure functions, any thread; nothing is logged. */
#include "common/estargz/index-io.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util/macro.h"

#define MAGIC "HFLI"

enum {
        H_MAGIC = 0,
        H_VERSION = 4,
        H_FLAGS = 8,
        H_PAD0 = 12,          /* reserved, zero */
        H_N_INODES = 16,
        H_N_DIRENTS = 24,
        H_N_CHUNKS = 32,
        H_N_XATTRS = 40,
        H_N_DIGESTS = 48,
        H_POOL_LEN = 56,
        H_FORMAT = 64,
        H_NO_PREFETCH = 68,
        H_FOOTER_SIZE = 72,
        H_TOC_OFFSET = 80,
        H_TOC_SIZE = 88,
        H_TOC_RAW_SIZE = 96,
        H_BLOB_SIZE = 104,
        H_TOC_DIGEST = 112,   /* 32 bytes */
        H_PREFETCH_END = 144,
        H_N_UNVERIFIED = 152,
        H_PAYLOAD_LEN = 160,
        H_CHECKSUM = 168,     /* 32 bytes: sha256(header[0, H_CHECKSUM) || payload) */
        HDR_SIZE = 200,
};

enum {
        INODE_REC = 64,
        DIRENT_REC = 12,
        CHUNK_REC = 48,
        XATTR_REC = 16,
        DIGEST_REC = SHA256_LEN,
};

/* ---- little-endian fields ---- */

static inline void put16(uint8_t *p, uint16_t v) {
        v = htole16(v);
        memcpy(p, &v, sizeof(v));
}

static inline void put32(uint8_t *p, uint32_t v) {
        v = htole32(v);
        memcpy(p, &v, sizeof(v));
}

static inline void put64(uint8_t *p, uint64_t v) {
        v = htole64(v);
        memcpy(p, &v, sizeof(v));
}

static inline uint16_t get16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, sizeof(v));
        return le16toh(v);
}

static inline uint32_t get32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        return le32toh(v);
}

static inline uint64_t get64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return le64toh(v);
}

static inline uint64_t align8(uint64_t n) {
        return (n + 7) & ~(uint64_t) 7;
}

/* Where each array starts in the payload, and the payload's length. The
 * counts are bounded by the caller (at most UINT32_MAX each), so none of
 * this can overflow 64 bits. */
typedef struct Sections {
        uint64_t inodes, dirents, chunks, xattrs, digests, pool, end;
} Sections;

static void sections_of(uint64_t n_inodes, uint64_t n_dirents, uint64_t n_chunks, uint64_t n_xattrs, uint64_t n_digests,
                        uint64_t pool_len, Sections *ret) {
        Sections s = { .inodes = 0 };
        s.dirents = s.inodes + align8(n_inodes * INODE_REC);
        s.chunks = s.dirents + align8(n_dirents * DIRENT_REC);
        s.xattrs = s.chunks + align8(n_chunks * CHUNK_REC);
        s.digests = s.xattrs + align8(n_xattrs * XATTR_REC);
        s.pool = s.digests + align8(n_digests * DIGEST_REC);
        s.end = s.pool + align8(pool_len);
        *ret = s;
}

static int checksum(const uint8_t *buf, size_t len, uint8_t ret[SHA256_LEN]) {
        Sha256 *s = sha256_new();
        if (!s)
                return -ENOMEM;
        sha256_update(s, buf, H_CHECKSUM);
        sha256_update(s, buf + HDR_SIZE, len - HDR_SIZE);
        sha256_final(s, ret);
        sha256_free(s);
        return 0;
}

/* ---- encoding ---- */

static void inode_put(uint8_t *p, const IndexInode *in) {
        put64(p + 0, in->size);
        put64(p + 8, (uint64_t) in->mtime);
        put32(p + 16, in->mode);
        put32(p + 20, in->uid);
        put32(p + 24, in->gid);
        put32(p + 28, in->nlink);
        put32(p + 32, in->rdev_major);
        put32(p + 36, in->rdev_minor);
        put32(p + 40, in->parent);
        put32(p + 44, in->first);
        put32(p + 48, in->count);
        put32(p + 52, in->xattr_first);
        put16(p + 56, in->xattr_count);
        put16(p + 58, in->flags);
        put32(p + 60, in->digest);
}

static void chunk_put(uint8_t *p, const IndexChunk *c) {
        put64(p + 0, c->file_offset);
        put64(p + 8, c->size);
        put64(p + 16, c->blob_offset);
        put64(p + 24, c->blob_end);
        put64(p + 32, c->inner_offset);
        put32(p + 40, c->digest);
        put32(p + 44, 0);
}

int layer_image_encode(const LayerImage *img, uint8_t **ret, size_t *ret_len) {
        const Index *idx = img->index;

        if (idx->n_inodes > UINT32_MAX || idx->n_dirents > UINT32_MAX || idx->n_chunks > UINT32_MAX ||
            idx->n_xattrs > UINT32_MAX || idx->n_digests > UINT32_MAX || idx->pool_len > UINT32_MAX)
                return -ENOMEM; /* an Index cannot be this large: its references are 32-bit */
        Sections s;
        sections_of(idx->n_inodes, idx->n_dirents, idx->n_chunks, idx->n_xattrs, idx->n_digests, idx->pool_len, &s);
        if (s.end > SIZE_MAX - HDR_SIZE)
                return -ENOMEM;
        size_t len = HDR_SIZE + (size_t) s.end;
        uint8_t *buf = calloc(1, len); /* zero padding everywhere */
        if (!buf)
                return -ENOMEM;

        memcpy(buf + H_MAGIC, MAGIC, 4);
        put32(buf + H_VERSION, LAYER_IMAGE_VERSION);
        put32(buf + H_FLAGS, 0);
        put64(buf + H_N_INODES, idx->n_inodes);
        put64(buf + H_N_DIRENTS, idx->n_dirents);
        put64(buf + H_N_CHUNKS, idx->n_chunks);
        put64(buf + H_N_XATTRS, idx->n_xattrs);
        put64(buf + H_N_DIGESTS, idx->n_digests);
        put64(buf + H_POOL_LEN, idx->pool_len);
        put32(buf + H_FORMAT, (uint32_t) img->footer.format);
        put32(buf + H_NO_PREFETCH, idx->no_prefetch);
        put64(buf + H_FOOTER_SIZE, img->footer.footer_size);
        put64(buf + H_TOC_OFFSET, img->footer.toc_offset);
        put64(buf + H_TOC_SIZE, img->footer.toc_size);
        put64(buf + H_TOC_RAW_SIZE, img->footer.toc_raw_size);
        put64(buf + H_BLOB_SIZE, img->blob_size);
        memcpy(buf + H_TOC_DIGEST, img->toc_digest, SHA256_LEN);
        put64(buf + H_PREFETCH_END, idx->prefetch_end);
        put64(buf + H_N_UNVERIFIED, idx->n_unverified);
        put64(buf + H_PAYLOAD_LEN, s.end);

        uint8_t *pl = buf + HDR_SIZE;
        for (size_t i = 0; i < idx->n_inodes; i++)
                inode_put(pl + s.inodes + i * INODE_REC, &idx->inodes[i]);
        for (size_t i = 0; i < idx->n_dirents; i++) {
                uint8_t *p = pl + s.dirents + i * DIRENT_REC;
                put32(p + 0, idx->dirents[i].name);
                put32(p + 4, idx->dirents[i].name_len);
                put32(p + 8, idx->dirents[i].ino);
        }
        for (size_t i = 0; i < idx->n_chunks; i++)
                chunk_put(pl + s.chunks + i * CHUNK_REC, &idx->chunks[i]);
        for (size_t i = 0; i < idx->n_xattrs; i++) {
                uint8_t *p = pl + s.xattrs + i * XATTR_REC;
                put32(p + 0, idx->xattrs[i].name);
                put32(p + 4, idx->xattrs[i].name_len);
                put32(p + 8, idx->xattrs[i].value);
                put32(p + 12, idx->xattrs[i].value_len);
        }
        if (idx->n_digests > 0)
                memcpy(pl + s.digests, idx->digests, idx->n_digests * DIGEST_REC);
        if (idx->pool_len > 0)
                memcpy(pl + s.pool, idx->pool, idx->pool_len);

        int r = checksum(buf, len, buf + H_CHECKSUM);
        if (r < 0) {
                free(buf);
                return r;
        }
        *ret = buf;
        *ret_len = len;
        return 0;
}

/* ---- decoding ---- */

static void inode_get(const uint8_t *p, IndexInode *ret) {
        *ret = (IndexInode) {
                .size = get64(p + 0),
                .mtime = (int64_t) get64(p + 8),
                .mode = get32(p + 16),
                .uid = get32(p + 20),
                .gid = get32(p + 24),
                .nlink = get32(p + 28),
                .rdev_major = get32(p + 32),
                .rdev_minor = get32(p + 36),
                .parent = get32(p + 40),
                .first = get32(p + 44),
                .count = get32(p + 48),
                .xattr_first = get32(p + 52),
                .xattr_count = get16(p + 56),
                .flags = get16(p + 58),
                .digest = get32(p + 60),
        };
}

static void chunk_get(const uint8_t *p, IndexChunk *ret) {
        *ret = (IndexChunk) {
                .file_offset = get64(p + 0),
                .size = get64(p + 8),
                .blob_offset = get64(p + 16),
                .blob_end = get64(p + 24),
                .inner_offset = get64(p + 32),
                .digest = get32(p + 40),
        };
}

/* A string of the pool: [off, off + len) followed by its NUL, all inside
 * the pool. */
static bool pool_str_ok(const Index *idx, uint32_t off, uint32_t len) {
        return off < idx->pool_len && len < idx->pool_len - off && idx->pool[off + len] == 0;
}

static bool name_ok(const char *s, uint32_t len) {
        if (len == 0 || len > INDEX_NAME_MAX)
                return false;
        if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
                return false;
        return !memchr(s, '/', len) && !memchr(s, 0, len);
}

static int name_cmp(const Index *idx, const IndexDirent *a, const IndexDirent *b) {
        int c = memcmp(idx->pool + a->name, idx->pool + b->name, MIN(a->name_len, b->name_len));
        if (c != 0)
                return c;
        return a->name_len < b->name_len ? -1 : a->name_len > b->name_len;
}

static bool digest_ok(const Index *idx, uint32_t d) {
        return d == INDEX_NONE || d < idx->n_digests;
}

static int check_dir(const Index *idx, uint64_t ino, const IndexInode *in, uint64_t *next_dirent, uint32_t *names, ErrMsg *err) {
        if (in->first != *next_dirent)
                return errmsg_set(err, -EBADMSG, "directory inode %" PRIu64 ": entries start at %" PRIu32 ", not at %" PRIu64 " (runs must follow inode order)",
                                  ino, in->first, *next_dirent);
        if ((uint64_t) in->first + in->count > idx->n_dirents)
                return errmsg_set(err, -EBADMSG, "directory inode %" PRIu64 ": entries [%" PRIu32 ", +%" PRIu32 ") run past the %zu dirents",
                                  ino, in->first, in->count, idx->n_dirents);
        *next_dirent += in->count;
        for (uint32_t i = 0; i < in->count; i++) {
                size_t di = (size_t) in->first + i;
                const IndexDirent *d = &idx->dirents[di];
                if (!pool_str_ok(idx, d->name, d->name_len))
                        return errmsg_set(err, -EBADMSG, "dirent %zu: name [%" PRIu32 ", +%" PRIu32 ") is not a string inside the pool of %zu bytes",
                                          di, d->name, d->name_len, idx->pool_len);
                if (!name_ok(idx->pool + d->name, d->name_len))
                        return errmsg_set(err, -EBADMSG, "dirent %zu: '%.*s' is not a valid name (empty, '.', '..', over %u bytes, or with '/' or NUL)",
                                          di, (int) MIN(d->name_len, 200u), idx->pool + d->name, INDEX_NAME_MAX);
                if (d->ino < 2 || d->ino > idx->n_inodes)
                        return errmsg_set(err, -EBADMSG, "dirent %zu '%.*s': inode %" PRIu32 " is not in [2, %zu]",
                                          di, (int) MIN(d->name_len, 200u), idx->pool + d->name, d->ino, idx->n_inodes);
                if (i > 0 && name_cmp(idx, &idx->dirents[di - 1], d) >= 0)
                        return errmsg_set(err, -EBADMSG, "directory inode %" PRIu64 ": entry '%.*s' is not after the previous one (unsorted or duplicate)",
                                          ino, (int) MIN(d->name_len, 200u), idx->pool + d->name);
                const IndexInode *child = &idx->inodes[d->ino - 1];
                if (S_ISDIR(child->mode) && child->parent != ino)
                        return errmsg_set(err, -EBADMSG, "directory inode %" PRIu32 " is named in directory %" PRIu64 " but its parent is %" PRIu32,
                                          d->ino, ino, child->parent);
                if (names[d->ino] < UINT32_MAX)
                        names[d->ino]++;
        }
        return 0;
}

static int check_file(const Index *idx, uint64_t ino, const IndexInode *in, ErrMsg *err) {
        if ((uint64_t) in->first + in->count > idx->n_chunks)
                return errmsg_set(err, -EBADMSG, "file inode %" PRIu64 ": chunks [%" PRIu32 ", +%" PRIu32 ") run past the %zu chunks",
                                  ino, in->first, in->count, idx->n_chunks);
        if ((in->size == 0) != (in->count == 0))
                return errmsg_set(err, -EBADMSG, "file inode %" PRIu64 ": %" PRIu32 " chunks for %" PRIu64 " bytes", ino, in->count, in->size);
        uint64_t pos = 0;
        for (uint32_t i = 0; i < in->count; i++) {
                const IndexChunk *c = &idx->chunks[in->first + i];
                if (c->file_offset != pos || c->size == 0 || c->size > in->size - pos)
                        return errmsg_set(err, -EBADMSG, "file inode %" PRIu64 ": chunk %" PRIu32 " [%" PRIu64 ", +%" PRIu64 ") does not continue at %" PRIu64 " inside the file's %" PRIu64 " bytes",
                                          ino, in->first + i, c->file_offset, c->size, pos, in->size);
                pos += c->size;
        }
        if (pos != in->size)
                return errmsg_set(err, -EBADMSG, "file inode %" PRIu64 ": chunks cover %" PRIu64 " of %" PRIu64 " bytes", ino, pos, in->size);
        return 0;
}

static int check_inode(const Index *idx, uint64_t ino, uint64_t *next_dirent, uint32_t *names, ErrMsg *err) {
        const IndexInode *in = &idx->inodes[ino - 1];
        uint32_t type = in->mode & S_IFMT;

        if (type != S_IFDIR && type != S_IFREG && type != S_IFLNK && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO)
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": mode 0%" PRIo32 " is not a directory, file, symlink, device or fifo", ino, in->mode);
        if (in->flags & ~(uint16_t) INODE_OPAQUE || ((in->flags & INODE_OPAQUE) && type != S_IFDIR))
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": bad flags 0x%" PRIx16, ino, in->flags);
        if (ino == INDEX_ROOT_INO ? in->parent != INDEX_ROOT_INO : in->parent < 1 || in->parent >= ino)
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": parent %" PRIu32 " is out of range", ino, in->parent);
        if (!S_ISDIR(idx->inodes[in->parent - 1].mode))
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": parent %" PRIu32 " is not a directory", ino, in->parent);
        if ((uint64_t) in->xattr_first + in->xattr_count > idx->n_xattrs)
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": xattrs [%" PRIu32 ", +%" PRIu16 ") run past the %zu xattrs",
                                  ino, in->xattr_first, in->xattr_count, idx->n_xattrs);
        if (!digest_ok(idx, in->digest))
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": digest %" PRIu32 " is not one of the %zu digests", ino, in->digest, idx->n_digests);
        if (in->size > INT64_MAX)
                return errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": size %" PRIu64 " is too large", ino, in->size);

        switch (type) {
        case S_IFDIR:
                return check_dir(idx, ino, in, next_dirent, names, err);
        case S_IFREG:
                return check_file(idx, ino, in, err);
        case S_IFLNK:
                if (in->count == 0 || in->size != in->count || !pool_str_ok(idx, in->first, in->count))
                        return errmsg_set(err, -EBADMSG, "symlink inode %" PRIu64 ": target [%" PRIu32 ", +%" PRIu32 ") of size %" PRIu64 " is not a string inside the pool of %zu bytes",
                                          ino, in->first, in->count, in->size, idx->pool_len);
                return 0;
        default:
                if (in->size != 0)
                        return errmsg_set(err, -EBADMSG, "device or fifo inode %" PRIu64 ": size %" PRIu64, ino, in->size);
                return 0;
        }
}

/* Blob ranges: inside [1, toc_offset), in blob order; gzip chunks never
 * share a member, zstd:chunked chunks may share a frame with growing inner
 * offsets (as index.c's pass_ranges builds them). */
static int check_chunks(const Index *idx, const Footer *f, ErrMsg *err) {
        bool zstd = f->format == LAYER_FORMAT_ZSTD_CHUNKED;
        size_t unverified = 0;
        for (size_t i = 0; i < idx->n_chunks; i++) {
                const IndexChunk *c = &idx->chunks[i];
                if (c->blob_offset < 1 || c->blob_offset >= c->blob_end || c->blob_end > f->toc_offset)
                        return errmsg_set(err, -EBADMSG, "chunk %zu: blob range [%" PRIu64 ", %" PRIu64 ") is not inside [1, %" PRIu64 ")",
                                          i, c->blob_offset, c->blob_end, f->toc_offset);
                if (!digest_ok(idx, c->digest))
                        return errmsg_set(err, -EBADMSG, "chunk %zu: digest %" PRIu32 " is not one of the %zu digests", i, c->digest, idx->n_digests);
                if (!zstd && c->inner_offset != 0)
                        return errmsg_set(err, -EBADMSG, "chunk %zu: inner offset in a gzip layer", i);
                if (i > 0) {
                        const IndexChunk *p = &idx->chunks[i - 1];
                        bool ordered = p->blob_end <= c->blob_offset ||
                                       (zstd && p->blob_offset == c->blob_offset && p->blob_end == c->blob_end &&
                                        p->inner_offset < c->inner_offset);
                        if (!ordered)
                                return errmsg_set(err, -EBADMSG, "chunk %zu: blob range [%" PRIu64 ", %" PRIu64 ") is not after the previous chunk's [%" PRIu64 ", %" PRIu64 ")",
                                                  i, c->blob_offset, c->blob_end, p->blob_offset, p->blob_end);
                }
                unverified += c->digest == INDEX_NONE;
        }
        if (unverified != idx->n_unverified)
                return errmsg_set(err, -EBADMSG, "%zu chunks have no digest, the header says %zu", unverified, idx->n_unverified);
        return 0;
}

static int check_index(const Index *idx, const Footer *f, ErrMsg *err) {
        if (idx->pool_len == 0 || idx->pool[idx->pool_len - 1] != 0)
                return errmsg_set(err, -EBADMSG, "the string pool does not end with a NUL");
        if (!S_ISDIR(idx->inodes[0].mode))
                return errmsg_set(err, -EBADMSG, "inode 1 (the root) is not a directory");
        if (idx->prefetch_end > f->toc_offset)
                return errmsg_set(err, -EBADMSG, "prefetch end %" PRIu64 " is past the TOC at %" PRIu64, idx->prefetch_end, f->toc_offset);

        uint32_t *names = calloc(idx->n_inodes + 1, sizeof(uint32_t));
        if (!names)
                return -ENOMEM;
        uint64_t next_dirent = 0;
        int r = 0;
        for (uint64_t ino = 1; ino <= idx->n_inodes && r >= 0; ino++)
                r = check_inode(idx, ino, &next_dirent, names, err);
        if (r >= 0 && next_dirent != idx->n_dirents)
                r = errmsg_set(err, -EBADMSG, "directories list %" PRIu64 " of the %zu dirents", next_dirent, idx->n_dirents);
        /* Every inode is reachable: a directory by exactly one name (so the
         * tree has no cycles, as parents are smaller than children), anything
         * else by at least one. */
        for (uint64_t ino = 2; ino <= idx->n_inodes && r >= 0; ino++) {
                bool dir = S_ISDIR(idx->inodes[ino - 1].mode);
                if (dir ? names[ino] != 1 : names[ino] == 0)
                        r = errmsg_set(err, -EBADMSG, "%s inode %" PRIu64 " has %" PRIu32 " names", dir ? "directory" : "non-directory", ino, names[ino]);
        }
        if (r >= 0 && names[INDEX_ROOT_INO] != 0)
                r = errmsg_set(err, -EBADMSG, "the root directory is named in a directory");
        free(names);
        if (r < 0)
                return r;

        for (size_t i = 0; i < idx->n_xattrs; i++) {
                const IndexXattr *x = &idx->xattrs[i];
                if (!pool_str_ok(idx, x->name, x->name_len) || !pool_str_ok(idx, x->value, x->value_len))
                        return errmsg_set(err, -EBADMSG, "xattr %zu: name [%" PRIu32 ", +%" PRIu32 ") or value [%" PRIu32 ", +%" PRIu32 ") is not inside the pool of %zu bytes",
                                          i, x->name, x->name_len, x->value, x->value_len, idx->pool_len);
        }
        return check_chunks(idx, f, err);
}

static int check_footer(const Footer *f, uint64_t blob_size, ErrMsg *err) {
        static const uint64_t footer_sizes[_LAYER_FORMAT_MAX] = {
                [LAYER_FORMAT_ESTARGZ] = ESTARGZ_FOOTER_SIZE,
                [LAYER_FORMAT_STARGZ_LEGACY] = STARGZ_LEGACY_FOOTER_SIZE,
                [LAYER_FORMAT_ZSTD_CHUNKED] = ZSTD_CHUNKED_FOOTER_SIZE,
        };
        if ((unsigned) f->format >= _LAYER_FORMAT_MAX)
                return errmsg_set(err, -EBADMSG, "unknown layer format %u", (unsigned) f->format);
        if (f->footer_size != footer_sizes[f->format])
                return errmsg_set(err, -EBADMSG, "footer of %" PRIu64 " bytes for a %s layer", f->footer_size, layer_format_to_string(f->format));
        if (f->footer_size > blob_size || f->toc_offset >= blob_size || f->toc_size > blob_size - f->toc_offset)
                return errmsg_set(err, -EBADMSG, "TOC [%" PRIu64 ", +%" PRIu64 ") or footer (%" PRIu64 " bytes) outside the blob of %" PRIu64 " bytes",
                                  f->toc_offset, f->toc_size, f->footer_size, blob_size);
        return 0;
}

static bool all_zero(const uint8_t *p, uint64_t from, uint64_t to) {
        for (uint64_t i = from; i < to; i++)
                if (p[i] != 0)
                        return false;
        return true;
}

/* The bytes the encoder writes as zero (the alignment after each array and
 * the reserved word of every chunk) must be zero, so that an image that
 * decodes is the one encoding of its Index. */
static int check_padding(const uint8_t *pl, const Sections *s, const Index *idx, ErrMsg *err) {
        if (!all_zero(pl, s->inodes + idx->n_inodes * INODE_REC, s->dirents) ||
            !all_zero(pl, s->dirents + idx->n_dirents * DIRENT_REC, s->chunks) ||
            !all_zero(pl, s->chunks + idx->n_chunks * CHUNK_REC, s->xattrs) ||
            !all_zero(pl, s->xattrs + idx->n_xattrs * XATTR_REC, s->digests) ||
            !all_zero(pl, s->digests + idx->n_digests * DIGEST_REC, s->pool) ||
            !all_zero(pl, s->pool + idx->pool_len, s->end))
                return errmsg_set(err, -EBADMSG, "layer image: non-zero padding between arrays");
        for (size_t i = 0; i < idx->n_chunks; i++)
                if (get32(pl + s->chunks + i * CHUNK_REC + 44) != 0)
                        return errmsg_set(err, -EBADMSG, "chunk %zu: non-zero reserved field", i);
        return 0;
}

/* Copies the arrays out of the payload into a new Index. Every array gets
 * at least one element of memory, and the pool one NUL past its end, so
 * that nothing is NULL. */
static int arrays_get(const uint8_t *pl, const Sections *s, Index *idx) {
        idx->inodes = malloc(MAX(idx->n_inodes, (size_t) 1) * sizeof(IndexInode));
        idx->dirents = malloc(MAX(idx->n_dirents, (size_t) 1) * sizeof(IndexDirent));
        idx->chunks = malloc(MAX(idx->n_chunks, (size_t) 1) * sizeof(IndexChunk));
        idx->xattrs = malloc(MAX(idx->n_xattrs, (size_t) 1) * sizeof(IndexXattr));
        idx->digests = malloc(MAX(idx->n_digests, (size_t) 1) * SHA256_LEN);
        idx->pool = malloc(idx->pool_len + 1);
        if (!idx->inodes || !idx->dirents || !idx->chunks || !idx->xattrs || !idx->digests || !idx->pool)
                return -ENOMEM;

        for (size_t i = 0; i < idx->n_inodes; i++)
                inode_get(pl + s->inodes + i * INODE_REC, &idx->inodes[i]);
        for (size_t i = 0; i < idx->n_dirents; i++) {
                const uint8_t *p = pl + s->dirents + i * DIRENT_REC;
                idx->dirents[i] = (IndexDirent) { .name = get32(p), .name_len = get32(p + 4), .ino = get32(p + 8) };
        }
        for (size_t i = 0; i < idx->n_chunks; i++)
                chunk_get(pl + s->chunks + i * CHUNK_REC, &idx->chunks[i]);
        for (size_t i = 0; i < idx->n_xattrs; i++) {
                const uint8_t *p = pl + s->xattrs + i * XATTR_REC;
                idx->xattrs[i] = (IndexXattr) { .name = get32(p), .name_len = get32(p + 4), .value = get32(p + 8), .value_len = get32(p + 12) };
        }
        memcpy(idx->digests, pl + s->digests, idx->n_digests * SHA256_LEN);
        memcpy(idx->pool, pl + s->pool, idx->pool_len);
        idx->pool[idx->pool_len] = 0;
        return 0;
}

int layer_image_decode(const void *buf, size_t len, LayerImage *ret_img, Index **ret_index, ErrMsg *err) {
        const uint8_t *b = buf;

        if (len < H_VERSION + 4)
                return errmsg_set(err, -EBADMSG, "layer image of %zu bytes is truncated", len);
        if (memcmp(b + H_MAGIC, MAGIC, 4) != 0)
                return errmsg_set(err, -EBADMSG, "not a layer image (bad magic)");
        uint32_t version = get32(b + H_VERSION);
        if (version != LAYER_IMAGE_VERSION)
                return errmsg_set(err, -EPROTO, "layer image version %" PRIu32 ", this build reads version %d", version, LAYER_IMAGE_VERSION);
        if (len < HDR_SIZE)
                return errmsg_set(err, -EBADMSG, "layer image of %zu bytes is shorter than its %d-byte header", len, HDR_SIZE);

        uint64_t n_inodes = get64(b + H_N_INODES), n_dirents = get64(b + H_N_DIRENTS), n_chunks = get64(b + H_N_CHUNKS),
                 n_xattrs = get64(b + H_N_XATTRS), n_digests = get64(b + H_N_DIGESTS), pool_len = get64(b + H_POOL_LEN);
        /* 32-bit references: larger counts cannot be right (and keep the
         * size arithmetic below far from overflowing) */
        if (n_inodes < 1 || n_inodes >= UINT32_MAX || n_dirents > UINT32_MAX || n_chunks > UINT32_MAX || n_xattrs > UINT32_MAX ||
            n_digests > UINT32_MAX || pool_len < 1 || pool_len > UINT32_MAX)
                return errmsg_set(err, -EBADMSG, "layer image header: counts out of range (%" PRIu64 " inodes, %" PRIu64 " dirents, %" PRIu64 " chunks, %" PRIu64 " xattrs, %" PRIu64 " digests, %" PRIu64 " pool bytes)",
                                  n_inodes, n_dirents, n_chunks, n_xattrs, n_digests, pool_len);
        Sections s;
        sections_of(n_inodes, n_dirents, n_chunks, n_xattrs, n_digests, pool_len, &s);
        uint64_t payload_len = get64(b + H_PAYLOAD_LEN);
        if (payload_len != s.end || len - HDR_SIZE != s.end)
                return errmsg_set(err, -EBADMSG, "layer image of %zu bytes: the header's counts need %" PRIu64 " payload bytes, it says %" PRIu64 " and has %zu",
                                  len, s.end, payload_len, len - HDR_SIZE);

        uint8_t sum[SHA256_LEN];
        int r = checksum(b, len, sum);
        if (r < 0)
                return r;
        if (memcmp(sum, b + H_CHECKSUM, SHA256_LEN) != 0)
                return errmsg_set(err, -EBADMSG, "layer image checksum mismatch");

        uint32_t flags = get32(b + H_FLAGS), pad0 = get32(b + H_PAD0), no_prefetch = get32(b + H_NO_PREFETCH);
        if (flags != 0 || pad0 != 0)
                return errmsg_set(err, -EBADMSG, "layer image header: unknown flags 0x%" PRIx32 " 0x%" PRIx32, flags, pad0);
        if (no_prefetch > 1)
                return errmsg_set(err, -EBADMSG, "layer image header: no_prefetch is %" PRIu32 ", not 0 or 1", no_prefetch);
        LayerImage img = {
                .footer = {
                        .format = (LayerFormat) get32(b + H_FORMAT),
                        .footer_size = get64(b + H_FOOTER_SIZE),
                        .toc_offset = get64(b + H_TOC_OFFSET),
                        .toc_size = get64(b + H_TOC_SIZE),
                        .toc_raw_size = get64(b + H_TOC_RAW_SIZE),
                },
                .blob_size = get64(b + H_BLOB_SIZE),
        };
        memcpy(img.toc_digest, b + H_TOC_DIGEST, SHA256_LEN);
        r = check_footer(&img.footer, img.blob_size, err);
        if (r < 0)
                return r;
        uint64_t n_unverified = get64(b + H_N_UNVERIFIED);
        if (n_unverified > n_chunks)
                return errmsg_set(err, -EBADMSG, "%" PRIu64 " unverified chunks of %" PRIu64, n_unverified, n_chunks);

        Index *idx = calloc(1, sizeof(Index));
        if (!idx)
                return -ENOMEM;
        idx->n_inodes = (size_t) n_inodes;
        idx->n_dirents = (size_t) n_dirents;
        idx->n_chunks = (size_t) n_chunks;
        idx->n_xattrs = (size_t) n_xattrs;
        idx->n_digests = (size_t) n_digests;
        idx->pool_len = (size_t) pool_len;
        idx->prefetch_end = get64(b + H_PREFETCH_END);
        idx->no_prefetch = no_prefetch;
        idx->n_unverified = (size_t) n_unverified;
        r = check_padding(b + HDR_SIZE, &s, idx, err);
        if (r >= 0)
                r = arrays_get(b + HDR_SIZE, &s, idx);
        if (r >= 0)
                r = check_index(idx, &img.footer, err);
        if (r < 0) {
                index_free(idx);
                return r;
        }
        img.index = idx;
        *ret_img = img;
        *ret_index = idx;
        return 0;
}
