/* Tests of common/estargz/index-io: layers converted by estargz_convert()
 * (directories, multi-chunk and empty files, symlinks, hardlinks, devices,
 * whiteouts, an opaque directory, xattrs, both prefetch landmarks) are
 * encoded and decoded, and the decoded Index must equal the original field
 * by field and serve lookups, chunk searches and reads identically. Then
 * the decoder is attacked: every single-byte flip, every truncation, other
 * versions, header fields made inconsistent with a recomputed checksum, and
 * Index corruptions (bad inode numbers, unsorted entries, ranges past their
 * arrays, strings past the pool, ...) encoded with a valid checksum; each
 * must be refused with a message saying what is wrong. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/estargz/index-io.h"
#include "common/estargz/layer.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

/* The version 1 layout, pinned here on purpose: moving any of these needs
 * a LAYER_IMAGE_VERSION bump. */
#define HDR_SIZE 200
#define H_VERSION 4
#define H_FLAGS 8
#define H_N_INODES 16
#define H_N_DIRENTS 24
#define H_POOL_LEN 56
#define H_FORMAT 64
#define H_NO_PREFETCH 68
#define H_FOOTER_SIZE 72
#define H_TOC_OFFSET 80
#define H_BLOB_SIZE 104
#define H_PREFETCH_END 144
#define H_N_UNVERIFIED 152
#define H_PAYLOAD_LEN 160
#define H_CHECKSUM 168

#define CHUNK 4096

static char tmp[4096];

typedef struct Fixture {
        StrBuf blob;
        MemBlob mem;
        Layer *layer;
} Fixture;

static void put_le64(uint8_t *p, uint64_t v) {
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

/* What the encoder does: sha256 of the header up to the checksum, then the
 * payload. */
static void rehash(uint8_t *buf, size_t len) {
        Sha256 *s = sha256_new();
        sha256_update(s, buf, H_CHECKSUM);
        sha256_update(s, buf + HDR_SIZE, len - HDR_SIZE);
        sha256_final(s, buf + H_CHECKSUM);
        sha256_free(s);
}

static uint8_t big_data[5 * CHUNK + 123], conf_data[] = "key=value\n";

/* A layer with a bit of everything. prefetch: ".prefetch.landmark" after
 * "big"; otherwise ".no.prefetch.landmark". */
static int fixture_make(Fixture *f, bool prefetch) {
        Rng rng = { 99 };
        rng_fill(&rng, big_data, sizeof(big_data));
        StrBuf tar = {};
        TarXattr xa[2] = {
                { .name = (char *) "user.a", .value = (uint8_t *) "1", .len = 1 },
                { .name = (char *) "user.bin", .value = (uint8_t *) "v\0w", .len = 3 },
        };
        tar_add(&tar, "./", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, "./etc/", '5', 0750, NULL, 0, NULL);
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./etc/conf", .typeflag = '0', .mode = 0600, .uid = 7, .gid = 8,
                                           .mtime = 1500000000, .size = sizeof(conf_data), .xattrs = xa, .n_xattrs = 2 },
                      conf_data);
        tar_add(&tar, "./big", '0', 0644, big_data, sizeof(big_data), NULL);
        tar_add(&tar, "./empty", '0', 0644, NULL, 0, NULL);
        tar_add(&tar, "./dir/sub/deep", '0', 0644, "deep", 4, NULL);
        tar_add(&tar, "./etc/link", '2', 0777, NULL, 0, "conf");
        tar_add(&tar, "./hard", '1', 0, NULL, 0, "./etc/conf");
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./dev-null", .typeflag = '3', .mode = 0666, .devmajor = 1, .devminor = 3 }, NULL);
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./blk", .typeflag = '4', .mode = 0660, .devmajor = 8 }, NULL);
        tar_add(&tar, "./fifo", '6', 0644, NULL, 0, NULL);
        tar_add(&tar, "./d/.wh.gone", '0', 0, NULL, 0, NULL);
        tar_add(&tar, "./o/", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, "./o/.wh..wh..opq", '0', 0, NULL, 0, NULL);
        tar_add(&tar, "./o/keep", '0', 0644, "k", 1, NULL);
        tar_end(&tar);

        static const char *const list[] = { "big" };
        ConvertOptions o = { .chunk_size = CHUNK, .prefetch = prefetch ? list : NULL, .n_prefetch = prefetch ? 1 : 0 };
        ConvertResult res;
        ErrMsg err = {};
        *f = (Fixture) {};
        int r = convert_mem(tmp, tar.data, tar.len, &o, &res, &f->blob, &err);
        strbuf_done(&tar);
        if (r < 0) {
                diag("convert: %s", err.text);
                return r;
        }
        f->mem = (MemBlob) { .data = (const uint8_t *) f->blob.data, .len = f->blob.len };
        r = layer_open(mem_blob_read_at, &f->mem, f->blob.len, NULL, &f->layer, &err);
        if (r < 0)
                diag("layer_open: %s", err.text);
        return r;
}

static void fixture_done(Fixture *f) {
        layer_free(f->layer);
        strbuf_done(&f->blob);
}

static LayerImage image_of(const Layer *l, const Index *idx) {
        LayerImage img = { .footer = l->footer, .blob_size = l->blob_size, .index = idx };
        memcpy(img.toc_digest, l->toc_digest, SHA256_LEN);
        return img;
}

static void *dup_mem(const void *p, size_t n) {
        void *c = malloc(MAX(n, (size_t) 1));
        if (n)
                memcpy(c, p, n);
        return c;
}

static Index *index_clone(const Index *s) {
        Index *c = malloc(sizeof(*c));
        *c = *s;
        c->inodes = dup_mem(s->inodes, s->n_inodes * sizeof(IndexInode));
        c->dirents = dup_mem(s->dirents, s->n_dirents * sizeof(IndexDirent));
        c->chunks = dup_mem(s->chunks, s->n_chunks * sizeof(IndexChunk));
        c->xattrs = dup_mem(s->xattrs, s->n_xattrs * sizeof(IndexXattr));
        c->digests = dup_mem(s->digests, s->n_digests * SHA256_LEN);
        c->pool = dup_mem(s->pool, s->pool_len + 1);
        return c;
}

/* Field by field; IndexInode, IndexDirent, IndexChunk and IndexXattr have
 * no padding the encoder could lose (IndexChunk's _pad is always 0). */
static bool index_equal(const Index *a, const Index *b) {
        return a->n_inodes == b->n_inodes && a->n_dirents == b->n_dirents && a->n_chunks == b->n_chunks &&
               a->n_xattrs == b->n_xattrs && a->n_digests == b->n_digests && a->pool_len == b->pool_len &&
               a->prefetch_end == b->prefetch_end && a->no_prefetch == b->no_prefetch && a->n_unverified == b->n_unverified &&
               memcmp(a->inodes, b->inodes, a->n_inodes * sizeof(IndexInode)) == 0 &&
               memcmp(a->dirents, b->dirents, a->n_dirents * sizeof(IndexDirent)) == 0 &&
               memcmp(a->chunks, b->chunks, a->n_chunks * sizeof(IndexChunk)) == 0 &&
               memcmp(a->xattrs, b->xattrs, a->n_xattrs * sizeof(IndexXattr)) == 0 &&
               (a->n_digests == 0 || memcmp(a->digests, b->digests, a->n_digests * SHA256_LEN) == 0) &&
               memcmp(a->pool, b->pool, a->pool_len) == 0;
}

/* lookup of every dirent, chunk search at every chunk edge, and whole-file
 * reads through both layers give the same answers */
static bool same_behaviour(Layer *a, Layer *b) {
        const Index *x = a->index, *y = b->index;
        for (uint64_t ino = 1; ino <= x->n_inodes; ino++) {
                const IndexInode *in = index_inode(x, ino);
                if (S_ISDIR(in->mode)) {
                        for (uint32_t i = 0; i < in->count; i++) {
                                const IndexDirent *d = &x->dirents[in->first + i];
                                uint64_t p = 0, q = 0;
                                int r1 = index_lookup(x, ino, index_str(x, d->name), d->name_len, &p);
                                int r2 = index_lookup(y, ino, index_str(x, d->name), d->name_len, &q);
                                if (r1 != 0 || r2 != 0 || p != q || p != d->ino)
                                        return false;
                        }
                        uint64_t dummy;
                        if (index_lookup(y, ino, "no such name", 12, &dummy) != -ENOENT)
                                return false;
                }
                if (S_ISREG(in->mode)) {
                        for (uint32_t i = 0; i < in->count; i++) {
                                const IndexChunk *c = &x->chunks[in->first + i];
                                uint64_t probes[] = { c->file_offset, c->file_offset + c->size - 1 };
                                for (size_t k = 0; k < ELEMENTSOF(probes); k++)
                                        if (index_chunk_find(x, ino, probes[k]) != index_chunk_find(y, ino, probes[k]))
                                                return false;
                        }
                        if (index_chunk_find(y, ino, in->size) != -ERANGE)
                                return false;
                        uint8_t *p = malloc(in->size + 1), *q = malloc(in->size + 1);
                        ErrMsg err = {};
                        ChunkDecoder *d1 = NULL, *d2 = NULL;
                        chunk_decoder_new(&d1);
                        chunk_decoder_new(&d2);
                        ssize_t n1 = layer_read(a, d1, ino, 0, in->size + 1, p, &err);
                        ssize_t n2 = layer_read(b, d2, ino, 0, in->size + 1, q, &err);
                        bool same = n1 == (ssize_t) in->size && n2 == n1 && memcmp(p, q, in->size) == 0;
                        chunk_decoder_free(d1);
                        chunk_decoder_free(d2);
                        free(p);
                        free(q);
                        if (!same) {
                                diag("inode %" PRIu64 ": reads differ (%zd, %zd: %s)", ino, n1, n2, err.text);
                                return false;
                        }
                }
        }
        return true;
}

static void test_round_trip(bool prefetch) {
        Fixture f;
        const char *what = prefetch ? "prefetch landmark" : "no-prefetch landmark";
        if (!is_int(fixture_make(&f, prefetch), 0, "%s: layer made and opened", what)) {
                fixture_done(&f);
                return;
        }
        const Index *idx = f.layer->index;
        ok(idx->n_chunks > 6 && idx->n_xattrs == 2 && idx->n_digests > 0, "%s: %zu inodes, %zu chunks, %zu xattrs", what,
           idx->n_inodes, idx->n_chunks, idx->n_xattrs);
        ok(prefetch ? idx->prefetch_end > 0 && !idx->no_prefetch : idx->prefetch_end == 0 && idx->no_prefetch,
           "%s: landmark recorded", what);

        LayerImage img = image_of(f.layer, idx);
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = layer_image_encode(&img, &buf, &len);
        is_int(r, 0, "%s: encode (%zu bytes)", what, len);
        ok(len % 8 == 0, "%s: image length is a multiple of 8", what);

        LayerImage out = {};
        Index *dec = NULL;
        ErrMsg err = {};
        if (!is_int(layer_image_decode(buf, len, &out, &dec, &err), 0, "%s: decode (%s)", what, err.text)) {
                free(buf);
                fixture_done(&f);
                return;
        }
        ok(out.index == dec, "%s: the image points at the decoded index", what);
        ok(memcmp(&out.footer, &f.layer->footer, sizeof(Footer)) == 0, "%s: footer equal", what);
        is_int(out.blob_size, f.layer->blob_size, "%s: blob size equal", what);
        ok(memcmp(out.toc_digest, f.layer->toc_digest, SHA256_LEN) == 0, "%s: TOC digest equal", what);
        ok(index_equal(idx, dec), "%s: index equal field by field", what);

        /* deterministic, and stable across a round trip */
        uint8_t *buf2 = NULL, *buf3 = NULL;
        size_t len2 = 0, len3 = 0;
        layer_image_encode(&img, &buf2, &len2);
        LayerImage img2 = image_of(f.layer, dec);
        layer_image_encode(&img2, &buf3, &len3);
        ok(len2 == len && memcmp(buf, buf2, len) == 0, "%s: encoding is deterministic", what);
        ok(len3 == len && memcmp(buf, buf3, len) == 0, "%s: re-encoding the decoded index gives the same bytes", what);
        free(buf2);
        free(buf3);

        /* served from the image: the same lookups, chunks and bytes */
        Layer *restored = NULL;
        MemBlob mem2 = f.mem;
        is_int(layer_new_from_image(mem_blob_read_at, &mem2, &out.footer, out.blob_size, out.toc_digest, dec, NULL, &restored, &err), 0,
               "%s: layer_new_from_image (%s)", what, err.text);
        if (restored) {
                ok(same_behaviour(f.layer, restored), "%s: lookups, chunk searches and reads identical", what);
                uint64_t a = 0, b = 0;
                ok(index_lookup_path(restored->index, "etc/conf", &a) == 0 && index_lookup_path(restored->index, "hard", &b) == 0 && a == b,
                   "%s: hardlink shares its inode", what);
                ok(index_lookup_path(restored->index, "d/gone", &a) == 0 && S_ISCHR(index_inode(restored->index, a)->mode),
                   "%s: whiteout is a character device", what);
                ok(index_lookup_path(restored->index, "o", &a) == 0 && (index_inode(restored->index, a)->flags & INODE_OPAQUE),
                   "%s: opaque directory", what);
        }
        layer_free(restored);
        free(buf);
        fixture_done(&f);
}

/* ---- refusals ---- */

static int decode_r(const uint8_t *buf, size_t len, ErrMsg *err) {
        LayerImage img;
        Index *idx = NULL;
        int r = layer_image_decode(buf, len, &img, &idx, err);
        index_free(idx);
        return r;
}

static void test_flips_and_truncation(const Fixture *f) {
        LayerImage img = image_of(f->layer, f->layer->index);
        uint8_t *buf = NULL;
        size_t len = 0;
        layer_image_encode(&img, &buf, &len);
        diag("image of %zu inodes: %zu bytes", f->layer->index->n_inodes, len);

        static const uint8_t masks[] = { 0x01, 0x80, 0xff };
        size_t accepted = 0, wrong_errno = 0, no_message = 0;
        for (size_t i = 0; i < len; i++)
                for (size_t m = 0; m < ELEMENTSOF(masks); m++) {
                        buf[i] ^= masks[m];
                        ErrMsg err = {};
                        int r = decode_r(buf, len, &err);
                        buf[i] ^= masks[m];
                        int want = i >= H_VERSION && i < H_VERSION + 4 ? -EPROTO : -EBADMSG;
                        accepted += r == 0;
                        wrong_errno += r != 0 && r != want;
                        no_message += r != 0 && !err.text[0];
                }
        is_int(accepted, 0, "every single-byte flip (3 masks x %zu bytes) is refused", len);
        is_int(wrong_errno, 0, "  with -EBADMSG (-EPROTO in the version field)");
        is_int(no_message, 0, "  each with a message");

        size_t bad = 0;
        for (size_t n = 0; n < len; n++)
                bad += decode_r(buf, n, NULL) != -EBADMSG;
        is_int(bad, 0, "every truncation (0 to %zu bytes) is refused with -EBADMSG", len - 1);
        uint8_t *longer = malloc(len + 8);
        memcpy(longer, buf, len);
        memset(longer + len, 0, 8);
        is_int(decode_r(longer, len + 8, NULL), -EBADMSG, "trailing bytes are refused");
        free(longer);
        is_int(decode_r(buf, len, NULL), 0, "the untouched image still decodes");

        ErrMsg err = {};
        put_le32(buf + H_VERSION, LAYER_IMAGE_VERSION + 1);
        is_int(decode_r(buf, len, &err), -EPROTO, "version + 1: -EPROTO");
        has_str(err.text, "version 2", "  message names the version");
        rehash(buf, len);
        is_int(decode_r(buf, len, NULL), -EPROTO, "version + 1 with a valid checksum: -EPROTO");
        put_le32(buf + H_VERSION, 0);
        is_int(decode_r(buf, len, NULL), -EPROTO, "version 0: -EPROTO");
        free(buf);
}

/* Header fields made inconsistent, with the checksum recomputed. */
static void test_header_fields(const Fixture *f) {
        const Index *idx = f->layer->index;
        LayerImage img = image_of(f->layer, idx);
        uint8_t *orig = NULL;
        size_t len = 0;
        layer_image_encode(&img, &orig, &len);
        uint64_t toc_offset = f->layer->footer.toc_offset;
        struct {
                size_t off;
                int width;
                uint64_t value;
                const char *what, *msg;
        } cases[] = {
                { H_N_INODES, 8, 0, "no inodes", "counts out of range" },
                { H_N_INODES, 8, 1ull << 40, "2^40 inodes", "counts out of range" },
                { H_N_INODES, 8, UINT64_MAX, "2^64-1 inodes", "counts out of range" },
                { H_POOL_LEN, 8, UINT64_MAX / 2, "a huge pool", "counts out of range" },
                { H_POOL_LEN, 8, 0, "no pool", "counts out of range" },
                { H_N_DIRENTS, 8, idx->n_dirents + 1, "one dirent more than stored", "payload bytes" },
                { H_N_INODES, 8, idx->n_inodes - 1, "one inode less than stored", "payload bytes" },
                { H_PAYLOAD_LEN, 8, len - HDR_SIZE + 8, "payload length off by 8", "payload bytes" },
                { H_FLAGS, 4, 1, "unknown header flag", "unknown flags" },
                { H_NO_PREFETCH, 4, 2, "no_prefetch 2", "no_prefetch" },
                { H_FORMAT, 4, 7, "unknown layer format", "unknown layer format" },
                { H_FOOTER_SIZE, 8, 50, "footer size wrong for the format", "footer of 50 bytes" },
                { H_TOC_OFFSET, 8, f->layer->blob_size, "TOC at the end of the blob", "outside the blob" },
                { H_BLOB_SIZE, 8, 10, "blob smaller than the TOC offset", "outside the blob" },
                { H_N_UNVERIFIED, 8, 1, "unverified count wrong", "have no digest, the header says 1" },
                { H_N_UNVERIFIED, 8, idx->n_chunks + 1, "unverified count over the chunks", "unverified chunks of" },
                { H_PREFETCH_END, 8, toc_offset + 1, "prefetch end past the TOC", "prefetch end" },
        };
        uint8_t *buf = malloc(len);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                memcpy(buf, orig, len);
                if (cases[i].width == 8)
                        put_le64(buf + cases[i].off, cases[i].value);
                else
                        put_le32(buf + cases[i].off, (uint32_t) cases[i].value);
                rehash(buf, len);
                ErrMsg err = {};
                is_int(decode_r(buf, len, &err), -EBADMSG, "header, %s: -EBADMSG", cases[i].what);
                has_str(err.text, cases[i].msg, "  message: %s", err.text);
        }
        /* bytes the encoder writes as zero: chunk 0's reserved word, and the
         * padding after the pool (when its length is not a multiple of 8) */
        size_t chunks_at = HDR_SIZE + ((idx->n_inodes * 64 + 7) & ~(size_t) 7) + ((idx->n_dirents * 12 + 7) & ~(size_t) 7);
        memcpy(buf, orig, len);
        buf[chunks_at + 44] = 1;
        rehash(buf, len);
        ErrMsg perr = {};
        is_int(decode_r(buf, len, &perr), -EBADMSG, "chunk with a non-zero reserved field: -EBADMSG");
        has_str(perr.text, "reserved", "  message: %s", perr.text);
        if (idx->pool_len % 8) {
                memcpy(buf, orig, len);
                buf[len - 1] = 1;
                rehash(buf, len);
                perr = (ErrMsg) {};
                is_int(decode_r(buf, len, &perr), -EBADMSG, "non-zero padding after the pool: -EBADMSG");
                has_str(perr.text, "padding", "  message: %s", perr.text);
        }

        /* the pool's last byte is its last string's NUL */
        memcpy(buf, orig, len);
        size_t pool_end = len - 1;
        while (buf[pool_end] == 0 && pool_end > HDR_SIZE)
                pool_end--; /* padding and the final NUL are zero; the last name is not */
        buf[pool_end + 1] = 'x';
        rehash(buf, len);
        ErrMsg err = {};
        is_int(decode_r(buf, len, &err), -EBADMSG, "pool without its final NUL: -EBADMSG");
        ok(err.text[0], "  message: %s", err.text);
        free(buf);
        free(orig);
}

/* ---- Index corruptions, encoded with a valid checksum ---- */

typedef struct Inos {
        uint64_t big, conf, link, chr, etc, sub, blk, keep;
        uint32_t root_blk, root_hard; /* dirent indexes in the root */
} Inos;

static uint32_t dirent_of(const Index *idx, uint64_t dir, const char *name) {
        const IndexInode *d = index_inode(idx, dir);
        for (uint32_t i = d->first; i < d->first + d->count; i++)
                if (idx->dirents[i].name_len == strlen(name) && memcmp(index_str(idx, idx->dirents[i].name), name, strlen(name)) == 0)
                        return i;
        return INDEX_NONE;
}

static uint64_t ino_of(const Index *idx, const char *path) {
        uint64_t ino = 0;
        return index_lookup_path(idx, path, &ino) == 0 ? ino : 0;
}

typedef void (*MutateFn)(Index *x, LayerImage *img, const Inos *n);

#define MUT(name, ...) static void name(Index *x, LayerImage *img, const Inos *n) { (void) x; (void) img; (void) n; __VA_ARGS__; }

MUT(m_dirent_ino0, x->dirents[0].ino = 0)
MUT(m_dirent_ino_past, x->dirents[0].ino = (uint32_t) x->n_inodes + 1)
MUT(m_dirent_root, x->dirents[0].ino = 1)
MUT(m_unsorted, IndexDirent t = x->dirents[0]; x->dirents[0] = x->dirents[1]; x->dirents[1] = t)
MUT(m_duplicate, x->dirents[1].name = x->dirents[0].name; x->dirents[1].name_len = x->dirents[0].name_len)
MUT(m_dir_past, x->inodes[0].count = (uint32_t) x->n_dirents + 1)
MUT(m_dir_order, x->inodes[n->etc - 1].first++)
MUT(m_dir_unlisted, for (size_t i = x->n_inodes; i-- > 0;) if (S_ISDIR(x->inodes[i].mode) && x->inodes[i].count) { x->inodes[i].count--; break; })
MUT(m_dir_parent, x->inodes[n->sub - 1].parent = 1)
MUT(m_dir_twice, x->dirents[n->root_hard].ino = (uint32_t) n->etc)
MUT(m_unnamed, x->dirents[n->root_blk].ino = (uint32_t) n->big)
MUT(m_chunks_past, x->inodes[n->big - 1].first = (uint32_t) x->n_chunks - 1)
MUT(m_chunk_gap, x->chunks[x->inodes[n->big - 1].first + 1].file_offset++)
MUT(m_chunk_short, x->inodes[n->big - 1].size++)
MUT(m_chunk_empty, x->inodes[n->big - 1].count = 0)
MUT(m_size_huge, x->inodes[n->big - 1].size = 1ull << 63)
MUT(m_blob_past_toc, x->chunks[x->n_chunks - 1].blob_end = img->footer.toc_offset + 1)
MUT(m_blob_zero, x->chunks[0].blob_offset = 0)
MUT(m_blob_unordered, IndexChunk *c = &x->chunks[x->inodes[n->big - 1].first]; uint64_t o = c[0].blob_offset, e = c[0].blob_end;
    c[0].blob_offset = c[1].blob_offset; c[0].blob_end = c[1].blob_end; c[1].blob_offset = o; c[1].blob_end = e)
MUT(m_chunk_digest, x->chunks[0].digest = (uint32_t) x->n_digests)
MUT(m_inner_gzip, x->chunks[0].inner_offset = 1)
MUT(m_file_digest, x->inodes[n->big - 1].digest = (uint32_t) x->n_digests)
MUT(m_unverified, x->n_unverified = 1)
MUT(m_name_past_pool, x->dirents[0].name = (uint32_t) x->pool_len - 1; x->dirents[0].name_len = 4)
MUT(m_name_huge_off, x->dirents[0].name = UINT32_MAX)
MUT(m_name_no_nul, x->dirents[0].name_len--)
MUT(m_name_slash, x->pool[x->dirents[0].name + 1] = '/')
MUT(m_name_nul, x->pool[x->dirents[0].name + 1] = 0)
MUT(m_name_empty, x->dirents[0].name = 0; x->dirents[0].name_len = 0)
MUT(m_name_dot, x->pool[x->dirents[0].name] = '.'; x->pool[x->dirents[0].name + 1] = 0; x->dirents[0].name_len = 1)
MUT(m_name_dotdot, x->pool[x->dirents[0].name] = '.'; x->pool[x->dirents[0].name + 1] = '.'; x->pool[x->dirents[0].name + 2] = 0;
    x->dirents[0].name_len = 2)
MUT(m_link_past_pool, x->inodes[n->link - 1].count = (uint32_t) x->pool_len; x->inodes[n->link - 1].size = x->pool_len)
MUT(m_link_size, x->inodes[n->link - 1].size++)
MUT(m_link_empty, x->inodes[n->link - 1].count = 0; x->inodes[n->link - 1].size = 0)
MUT(m_xattr_past, x->inodes[n->conf - 1].xattr_count = (uint16_t) (x->n_xattrs + 1))
MUT(m_xattr_value, x->xattrs[0].value = (uint32_t) x->pool_len)
MUT(m_xattr_name, x->xattrs[1].name_len = UINT32_MAX)
MUT(m_parent_zero, x->inodes[n->keep - 1].parent = 0)
MUT(m_parent_past, x->inodes[n->keep - 1].parent = (uint32_t) n->keep)
MUT(m_parent_file, x->inodes[n->keep - 1].parent = (uint32_t) n->big)
MUT(m_root_parent, x->inodes[0].parent = 2)
MUT(m_mode_sock, x->inodes[n->chr - 1].mode = S_IFSOCK | 0644)
MUT(m_mode_zero, x->inodes[n->chr - 1].mode = 0)
MUT(m_root_file, x->inodes[0].mode = S_IFREG | 0644)
MUT(m_dev_size, x->inodes[n->chr - 1].size = 1)
MUT(m_flag_unknown, x->inodes[n->etc - 1].flags = 0x8000)
MUT(m_flag_opaque_file, x->inodes[n->big - 1].flags = INODE_OPAQUE)
MUT(m_prefetch, x->prefetch_end = img->footer.toc_offset + 1)
MUT(m_format, img->footer.format = (LayerFormat) 9)
MUT(m_footer_size, img->footer.footer_size = ZSTD_CHUNKED_FOOTER_SIZE)
MUT(m_toc_outside, img->blob_size = img->footer.toc_offset)

static const struct {
        MutateFn fn;
        const char *what, *msg;
} mutations[] = {
        { m_dirent_ino0, "dirent naming inode 0", "is not in [2," },
        { m_dirent_ino_past, "dirent naming an inode past the last", "is not in [2," },
        { m_dirent_root, "dirent naming the root", "is not in [2," },
        { m_unsorted, "unsorted dirents", "is not after the previous one" },
        { m_duplicate, "duplicate names", "is not after the previous one" },
        { m_dir_past, "directory entries past the array", "run past the" },
        { m_dir_order, "directory entries out of inode order", "runs must follow inode order" },
        { m_dir_unlisted, "a dirent listed by no directory", "directories list" },
        { m_dir_parent, "directory whose parent does not name it", "but its parent is" },
        { m_dir_twice, "directory with two names", "has 2 names" },
        { m_unnamed, "file with no name", "has 0 names" },
        { m_chunks_past, "chunk range past the array", "run past the" },
        { m_chunk_gap, "gap between chunks", "does not continue" },
        { m_chunk_short, "chunks shorter than the file", "chunks cover" },
        { m_chunk_empty, "file with bytes and no chunks", "chunks for" },
        { m_size_huge, "file size over INT64_MAX", "is too large" },
        { m_blob_past_toc, "blob range past the TOC", "is not inside [1," },
        { m_blob_zero, "blob range at 0", "is not inside [1," },
        { m_blob_unordered, "blob ranges out of order", "is not after the previous chunk" },
        { m_chunk_digest, "chunk digest out of range", "is not one of the" },
        { m_inner_gzip, "inner offset in a gzip layer", "inner offset" },
        { m_file_digest, "file digest out of range", "is not one of the" },
        { m_unverified, "unverified count wrong", "have no digest" },
        { m_name_past_pool, "name past the pool", "is not a string inside the pool" },
        { m_name_huge_off, "name offset 2^32-1", "is not a string inside the pool" },
        { m_name_no_nul, "name not followed by its NUL", "is not a string inside the pool" },
        { m_name_slash, "name with '/'", "is not a valid name" },
        { m_name_nul, "name with a NUL", "is not a valid name" },
        { m_name_empty, "empty name", "is not a valid name" },
        { m_name_dot, "name '.'", "is not a valid name" },
        { m_name_dotdot, "name '..'", "is not a valid name" },
        { m_link_past_pool, "symlink target past the pool", "is not a string inside the pool" },
        { m_link_size, "symlink size not its target's", "is not a string inside the pool" },
        { m_link_empty, "empty symlink target", "is not a string inside the pool" },
        { m_xattr_past, "xattr range past the array", "run past the" },
        { m_xattr_value, "xattr value past the pool", "is not inside the pool" },
        { m_xattr_name, "xattr name longer than the pool", "is not inside the pool" },
        { m_parent_zero, "parent 0", "is out of range" },
        { m_parent_past, "parent not smaller than the inode", "is out of range" },
        { m_parent_file, "parent that is a file", "is not a directory" },
        { m_root_parent, "root with another parent", "is out of range" },
        { m_mode_sock, "socket", "is not a directory, file" },
        { m_mode_zero, "mode 0", "is not a directory, file" },
        { m_root_file, "root that is a file", "root" },
        { m_dev_size, "device with a size", "size 1" },
        { m_flag_unknown, "unknown inode flag", "bad flags" },
        { m_flag_opaque_file, "opaque file", "bad flags" },
        { m_prefetch, "prefetch end past the TOC", "prefetch end" },
        { m_format, "unknown layer format", "unknown layer format" },
        { m_footer_size, "footer size of another format", "footer of" },
        { m_toc_outside, "TOC outside the blob", "outside the blob" },
};

static void test_corruptions(const Fixture *f) {
        const Index *idx = f->layer->index;
        Inos n = {
                .big = ino_of(idx, "big"),
                .conf = ino_of(idx, "etc/conf"),
                .link = ino_of(idx, "etc/link"),
                .chr = ino_of(idx, "dev-null"),
                .etc = ino_of(idx, "etc"),
                .sub = ino_of(idx, "dir/sub"),
                .blk = ino_of(idx, "blk"),
                .keep = ino_of(idx, "o/keep"),
                .root_blk = dirent_of(idx, INDEX_ROOT_INO, "blk"),
                .root_hard = dirent_of(idx, INDEX_ROOT_INO, "hard"),
        };
        ok(n.big && n.conf && n.link && n.chr && n.etc && n.sub && n.blk && n.keep && n.root_blk != INDEX_NONE && n.root_hard != INDEX_NONE &&
           index_inode(idx, n.big)->count >= 2 && index_inode(idx, n.conf)->xattr_count == 2 && idx->n_unverified == 0 &&
           idx->dirents[0].name_len >= 3 && index_inode(idx, n.keep)->parent < n.keep && n.big < n.keep,
           "the fixture has what the corruptions need");

        /* the unmodified clone goes through */
        Index *x = index_clone(idx);
        LayerImage img = image_of(f->layer, x);
        uint8_t *buf = NULL;
        size_t len = 0;
        layer_image_encode(&img, &buf, &len);
        is_int(decode_r(buf, len, NULL), 0, "an unmodified copy decodes");
        free(buf);
        index_free(x);

        for (size_t i = 0; i < ELEMENTSOF(mutations); i++) {
                x = index_clone(idx);
                img = image_of(f->layer, x);
                mutations[i].fn(x, &img, &n);
                buf = NULL;
                layer_image_encode(&img, &buf, &len);
                ErrMsg err = {};
                is_int(decode_r(buf, len, &err), -EBADMSG, "%s: -EBADMSG", mutations[i].what);
                has_str(err.text, mutations[i].msg, "  message: %s", err.text);
                free(buf);
                index_free(x);
        }
}

int main(void) {
        if (tmpdir_make(tmp) < 0) {
                printf("Bail out! mkdtemp: %s\n", strerror(errno));
                return 1;
        }
        test_round_trip(true);
        test_round_trip(false);

        Fixture f;
        if (is_int(fixture_make(&f, true), 0, "fixture for the refusals")) {
                test_flips_and_truncation(&f);
                test_header_fields(&f);
                test_corruptions(&f);
        }
        fixture_done(&f);
        tmpdir_remove(tmp);
        return done();
}
