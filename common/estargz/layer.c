/* Opening a layer blob and reading verified file bytes from it. The blob
 * is reached only through ReadAtFn, so the same code serves a local file,
 * a cache file and (in the worker) a registry. */
#include "common/estargz/layer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"

static uint64_t next_layer_id(void) {
        static uint64_t counter;
        return __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
}

ssize_t fd_read_at(void *userdata, void *buf, size_t len, uint64_t off) {
        int fd = *(int *) userdata;
        for (;;) {
                ssize_t n = pread(fd, buf, len, (off_t) off);
                if (n >= 0)
                        return n;
                if (errno != EINTR)
                        return -errno;
        }
}

static int read_exact(Layer *l, void *buf, size_t len, uint64_t off, ErrMsg *err) {
        uint8_t *p = buf;
        size_t done = 0;
        while (done < len) {
                ssize_t n = l->read_at(l->userdata, p + done, len - done, off + done);
                if (n < 0)
                        return errmsg_set(err, -EIO, "reading %zu blob bytes at %" PRIu64 ": %s", len, off, strerror((int) -n));
                if (n == 0)
                        return errmsg_set(err, -EIO, "blob ends at %" PRIu64 ", before the %zu bytes at %" PRIu64 " (blob shorter than its size %" PRIu64 ")",
                                          off + done, len, off, l->blob_size);
                done += (size_t) n;
        }
        return 0;
}

Layer *layer_free(Layer *l) {
        if (!l)
                return NULL;
        index_free(l->index);
        free(l);
        return NULL;
}

int layer_open(ReadAtFn read_at, void *userdata, uint64_t blob_size, const LayerOptions *opts, Layer **ret, ErrMsg *err) {
        static const LayerOptions defaults = {};
        _cleanup_free_ uint8_t *toc_bytes = NULL;
        Toc *toc = NULL;
        Layer *l;
        int r;

        if (!opts)
                opts = &defaults;
        TocLimits limits = opts->limits;
        if (!limits.max_json_bytes)
                limits.max_json_bytes = TOC_DEFAULT_MAX_JSON_BYTES;
        if (!limits.max_entries)
                limits.max_entries = TOC_DEFAULT_MAX_ENTRIES;
        if (!limits.max_chunk_bytes)
                limits.max_chunk_bytes = TOC_DEFAULT_MAX_CHUNK_BYTES;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->id = next_layer_id();
        l->read_at = read_at;
        l->userdata = userdata;
        l->blob_size = blob_size;
        l->verify = !opts->allow_unverified;

        uint8_t tail[LAYER_FOOTER_MAX_SIZE];
        size_t tail_len = (size_t) MIN(blob_size, (uint64_t) sizeof(tail));
        r = read_exact(l, tail, tail_len, blob_size - tail_len, err);
        if (r < 0)
                goto fail;
        r = footer_parse(tail, tail_len, blob_size, &l->footer, err);
        if (r < 0)
                goto fail;
        if (l->footer.toc_size > limits.max_json_bytes) {
                r = errmsg_set(err, -EFBIG, "compressed TOC is %" PRIu64 " bytes, over the configured cap of %" PRIu64,
                               l->footer.toc_size, limits.max_json_bytes);
                goto fail;
        }
        toc_bytes = malloc((size_t) l->footer.toc_size);
        if (!toc_bytes) {
                r = -ENOMEM;
                goto fail;
        }
        r = read_exact(l, toc_bytes, (size_t) l->footer.toc_size, l->footer.toc_offset, err);
        if (r < 0)
                goto fail;
        r = toc_parse_compressed(l->footer.format, toc_bytes, (size_t) l->footer.toc_size, &limits, &toc, l->toc_digest, err);
        if (r < 0)
                goto fail;
        free(TAKE_PTR(toc_bytes));
        if (opts->expect_toc_digest && memcmp(opts->expect_toc_digest, l->toc_digest, SHA256_LEN) != 0) {
                char want[DIGEST_STRING_LEN + 1], got[DIGEST_STRING_LEN + 1];
                digest_format(opts->expect_toc_digest, want);
                digest_format(l->toc_digest, got);
                r = errmsg_set(err, -EBADMSG, "TOC digest mismatch: expected %s, the blob's TOC is %s", want, got);
                goto fail;
        }
        IndexOptions iopts = {
                .format = l->footer.format,
                /* zstd:chunked: the TOC's skippable-frame header precedes toc_offset */
                .toc_offset = l->footer.format == LAYER_FORMAT_ZSTD_CHUNKED && l->footer.toc_offset >= 8
                                      ? l->footer.toc_offset - 8 : l->footer.toc_offset,
                .max_chunk_size = limits.max_chunk_bytes,
        };
        r = index_build(toc, &iopts, &l->index, err);
        if (r < 0)
                goto fail;
        if (l->verify && l->index->n_unverified > 0) {
                r = errmsg_set(err, -EBADMSG, "%zu of %zu chunks have no digest in the TOC, so they cannot be verified",
                               l->index->n_unverified, l->index->n_chunks);
                goto fail;
        }
        toc_free(toc);
        *ret = l;
        return 0;
fail:
        toc_free(toc);
        layer_free(l);
        return r;
}

/* Fetches and decodes chunk ci into out (c->size bytes). */
static int read_chunk(Layer *l, ChunkDecoder *d, size_t ci, uint8_t *out, uint8_t **comp_buf, size_t *comp_cap, ErrMsg *err) {
        const IndexChunk *c = &l->index->chunks[ci];
        uint64_t clen = c->blob_end - c->blob_offset;
        if (clen > SIZE_MAX / 2)
                return -EFBIG;
        if (*comp_cap < clen) {
                uint8_t *p = realloc(*comp_buf, (size_t) clen);
                if (!p)
                        return -ENOMEM;
                *comp_buf = p;
                *comp_cap = (size_t) clen;
        }
        int r = read_exact(l, *comp_buf, (size_t) clen, c->blob_offset, err);
        if (r < 0)
                return r;
        return chunk_decode(d, l->footer.format, l->index, c, *comp_buf, (size_t) clen, out, l->verify, err);
}

/* The verified bytes of chunk ci: the decoder's remembered chunk, or
 * fetched and decoded into its slot. */
static const uint8_t *chunk_bytes(Layer *l, ChunkDecoder *d, size_t ci, ErrMsg *err, int *ret_r) {
        const uint8_t *p = chunk_decoder_cached(d, l->id, ci);
        if (p)
                return p;
        const IndexChunk *c = &l->index->chunks[ci];
        uint64_t clen = c->blob_end - c->blob_offset;
        uint8_t *out = chunk_decoder_slot(d, (size_t) c->size);
        uint8_t *in = clen <= SIZE_MAX / 2 ? chunk_decoder_input(d, (size_t) clen) : NULL;
        if (!out || !in) {
                *ret_r = -ENOMEM;
                return NULL;
        }
        int r = read_exact(l, in, (size_t) clen, c->blob_offset, err);
        if (r >= 0)
                r = chunk_decode(d, l->footer.format, l->index, c, in, (size_t) clen, out, l->verify, err);
        if (r < 0) {
                *ret_r = r;
                return NULL;
        }
        chunk_decoder_remember(d, l->id, ci);
        return out;
}

ssize_t layer_read(Layer *l, ChunkDecoder *d, uint64_t ino, uint64_t off, size_t len, void *buf, ErrMsg *err) {
        const IndexInode *in = index_inode(l->index, ino);
        if (!in)
                return errmsg_set(err, -ENOENT, "no inode %" PRIu64, ino);
        if (!S_ISREG(in->mode))
                return errmsg_set(err, S_ISDIR(in->mode) ? -EISDIR : -EINVAL, "inode %" PRIu64 " is not a regular file", ino);
        if (off >= in->size || len == 0)
                return 0;
        len = (size_t) MIN((uint64_t) len, in->size - off);

        size_t done = 0;
        int64_t ci = index_chunk_find(l->index, ino, off);
        if (ci < 0)
                return errmsg_set(err, (int) ci, "inode %" PRIu64 ": no chunk at %" PRIu64, ino, off);
        while (done < len) {
                const IndexChunk *c = &l->index->chunks[ci];
                int r = 0;
                const uint8_t *plain = chunk_bytes(l, d, (size_t) ci, err, &r);
                if (!plain)
                        return r;
                uint64_t in_chunk = off + done - c->file_offset;
                size_t n = (size_t) MIN((uint64_t) (len - done), c->size - in_chunk);
                memcpy((uint8_t *) buf + done, plain + in_chunk, n);
                done += n;
                ci++;
        }
        return (ssize_t) done;
}

int layer_read_file(Layer *l, ChunkDecoder *d, uint64_t ino, ChunkSinkFn sink, void *userdata, ErrMsg *err) {
        const IndexInode *in = index_inode(l->index, ino);
        if (!in || !S_ISREG(in->mode))
                return errmsg_set(err, -EINVAL, "inode %" PRIu64 " is not a regular file", ino);
        _cleanup_free_ uint8_t *comp = NULL, *plain = NULL;
        size_t comp_cap = 0, plain_cap = 0;
        Sha256 *sha = in->digest != INDEX_NONE ? sha256_new() : NULL;
        if (in->digest != INDEX_NONE && !sha)
                return -ENOMEM;
        int r = 0;
        for (uint32_t i = 0; i < in->count; i++) {
                size_t ci = in->first + i;
                const IndexChunk *c = &l->index->chunks[ci];
                if (plain_cap < c->size) {
                        uint8_t *p = realloc(plain, (size_t) c->size);
                        if (!p) {
                                r = -ENOMEM;
                                goto out;
                        }
                        plain = p;
                        plain_cap = (size_t) c->size;
                }
                r = read_chunk(l, d, ci, plain, &comp, &comp_cap, err);
                if (r < 0)
                        goto out;
                if (sha)
                        sha256_update(sha, plain, (size_t) c->size);
                if (sink) {
                        r = sink(userdata, plain, (size_t) c->size);
                        if (r < 0)
                                goto out;
                }
        }
        if (sha && l->verify) {
                uint8_t got[SHA256_LEN];
                sha256_final(sha, got);
                if (memcmp(got, l->index->digests[in->digest], SHA256_LEN) != 0) {
                        char want_s[DIGEST_STRING_LEN + 1], got_s[DIGEST_STRING_LEN + 1];
                        digest_format(l->index->digests[in->digest], want_s);
                        digest_format(got, got_s);
                        r = errmsg_set(err, -EBADMSG, "inode %" PRIu64 ": file digest mismatch: TOC says %s, data is %s", ino, want_s, got_s);
                }
        }
out:
        sha256_free(sha);
        return r;
}

int layer_new_from_image(ReadAtFn read_at, void *userdata, const Footer *footer, uint64_t blob_size,
                         const uint8_t toc_digest[SHA256_LEN], Index *take_index, const LayerOptions *opts,
                         Layer **ret, ErrMsg *err) {
        static const LayerOptions defaults = {};
        if (!opts)
                opts = &defaults;
        if (opts->expect_toc_digest && memcmp(opts->expect_toc_digest, toc_digest, SHA256_LEN) != 0) {
                index_free(take_index);
                return errmsg_set(err, -EBADMSG, "stored TOC digest does not match the expected one");
        }
        if (!opts->allow_unverified && take_index->n_unverified > 0) {
                index_free(take_index);
                return errmsg_set(err, -EBADMSG, "%zu chunks have no digest in the TOC, so they cannot be verified",
                                  take_index->n_unverified);
        }
        Layer *l = calloc(1, sizeof(*l));
        if (!l) {
                index_free(take_index);
                return -ENOMEM;
        }
        l->id = next_layer_id();
        l->footer = *footer;
        l->blob_size = blob_size;
        memcpy(l->toc_digest, toc_digest, SHA256_LEN);
        l->index = take_index;
        l->verify = !opts->allow_unverified;
        l->read_at = read_at;
        l->userdata = userdata;
        *ret = l;
        return 0;
}
