/* A layer blob opened for reading: footer, TOC digest, index, and reads of
 * file bytes through a caller-supplied pread-like callback (a local file
 * now, HTTP range requests in the worker). Verification is on by default:
 * every chunk is checked against its TOC digest before a byte is returned.
 * Reads may run from several threads, each with its own ChunkDecoder, if
 * the callback allows it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/estargz/chunk.h"
#include "common/estargz/footer.h"
#include "common/estargz/index.h"
#include "common/estargz/toc.h"

/* Reads up to len bytes at off; returns bytes read, 0 past the end, -errno. */
typedef ssize_t (*ReadAtFn)(void *userdata, void *buf, size_t len, uint64_t off);

typedef struct LayerOptions {
        TocLimits limits;                 /* zeros: the defaults */
        const uint8_t *expect_toc_digest; /* the toc.digest annotation, or NULL */
        bool allow_unverified;            /* accept chunks without a digest */
} LayerOptions;

typedef struct Layer {
        uint64_t id;         /* unique in this process, never reused */
        Footer footer;
        uint64_t blob_size;
        uint8_t toc_digest[SHA256_LEN];
        Index *index;        /* owned */
        bool verify;
        ReadAtFn read_at;
        void *userdata;
} Layer;

/* Reads the footer and the TOC, checks the TOC digest when one is expected,
 * and builds the index. Fails with a message for anything malformed; a TOC
 * whose chunks lack digests is refused unless allow_unverified. */
int layer_open(ReadAtFn read_at, void *userdata, uint64_t blob_size, const LayerOptions *opts, Layer **ret, ErrMsg *err);
Layer *layer_free(Layer *l);

/* Reads [off, off + len) of regular file ino into buf. Returns the bytes
 * read (fewer only at the end of the file), or -errno: -EIO when the blob
 * cannot be read, -EBADMSG when its bytes do not match the TOC. */
ssize_t layer_read(Layer *l, ChunkDecoder *d, uint64_t ino, uint64_t off, size_t len, void *buf, ErrMsg *err);

/* Reads file ino whole, chunk by chunk, passing each verified chunk to
 * sink (may be NULL), and checks the whole-file digest when the TOC has
 * one. */
typedef int (*ChunkSinkFn)(void *userdata, const void *data, size_t len);
int layer_read_file(Layer *l, ChunkDecoder *d, uint64_t ino, ChunkSinkFn sink, void *userdata, ErrMsg *err);

/* ReadAtFn over a file descriptor (pread). userdata is an int* fd. */
ssize_t fd_read_at(void *userdata, void *buf, size_t len, uint64_t off);

/* Builds a Layer from metadata restored from the store (no TOC read):
 * takes ownership of index (freed on failure too). */
int layer_new_from_image(ReadAtFn read_at, void *userdata, const Footer *footer, uint64_t blob_size,
                         const uint8_t toc_digest[SHA256_LEN], Index *take_index, const LayerOptions *opts,
                         Layer **ret, ErrMsg *err);
