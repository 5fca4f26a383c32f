/* Streaming decompression (gzip via zlib, zstd via libzstd) between two
 * ReadFn callbacks, plus a ReadFn over memory and over a file descriptor.
 * One owner, one thread. The only place zlib and zstd stream errors are
 * turned into errno values (-EBADMSG: corrupt data). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/estargz/tar.h"

typedef enum Compression {
        COMPRESSION_NONE,
        COMPRESSION_GZIP,
        COMPRESSION_ZSTD,
} Compression;

/* Guesses from the first bytes: gzip magic, zstd magic (or a zstd
 * skippable frame), else none. */
Compression compression_detect(const uint8_t *p, size_t len);
const char *compression_to_string(Compression c);

typedef struct MemReader {
        const uint8_t *data;
        size_t len, pos;
} MemReader;
ssize_t mem_reader_read(void *userdata, void *buf, size_t len);

typedef struct FdReader {
        int fd;
        uint64_t nread;
} FdReader;
ssize_t fd_reader_read(void *userdata, void *buf, size_t len);

typedef struct Decompress Decompress;

/* multi_member: keep going across concatenated gzip members / zstd frames
 * (a whole layer); false stops at the end of the first one (a TOC). */
int decompress_new(Compression c, ReadFn src, void *src_userdata, bool multi_member, Decompress **ret);
Decompress *decompress_free(Decompress *d);
/* A ReadFn: decompressed bytes, 0 at the end, -EBADMSG on corrupt or
 * truncated input. */
ssize_t decompress_read(void *d, void *buf, size_t len);
