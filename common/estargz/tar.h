/* Tar archives: a streaming reader (ustar, GNU long names, PAX with
 * SCHILY.xattr records) and a header writer (ustar + PAX).
 *
 * The reader pulls bytes through a callback, so it works over a pipe, a
 * decompressor or memory. One reader, one thread. Headers returned by
 * tar_reader_next() stay valid until the next call. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util/errmsg.h"
#include "common/util/strbuf.h"

/* Returns bytes read (> 0), 0 at end of input, or -errno. */
typedef ssize_t (*ReadFn)(void *userdata, void *buf, size_t len);

#define TAR_BLOCK 512
#define TAR_NAME_MAX 65536   /* cap for GNU long names and PAX paths */
#define TAR_PAX_MAX (8u << 20) /* cap for one PAX extended header */

typedef struct TarXattr {
        char *name;     /* owned, NUL-terminated */
        uint8_t *value; /* owned, may hold NULs */
        size_t len;
} TarXattr;

typedef struct TarHeader {
        char *name;     /* as in the archive, e.g. "./usr/bin/" */
        char *linkname;
        char *uname;
        char *gname;
        char typeflag;  /* normalized: '0' reg, '1' hardlink, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo */
        uint32_t mode;  /* permission and setuid/setgid/sticky bits */
        uint64_t uid, gid;
        int64_t mtime;
        uint64_t size;  /* data bytes that follow (0 for everything but regular files) */
        uint32_t devmajor, devminor;
        TarXattr *xattrs;
        size_t n_xattrs;
} TarHeader;

typedef struct TarReader TarReader;

int tar_reader_new(ReadFn fn, void *userdata, TarReader **ret);
TarReader *tar_reader_free(TarReader *t);

/* Skips what is left of the current entry and reads the next header.
 * Returns 1 with *ret set, 0 at the end of the archive, or with a message
 * -EBADMSG (bad checksum, truncated archive, unsupported entry type,
 * oversized PAX header, ...) or -EOVERFLOW (an id, size or device number
 * out of range). */
int tar_reader_next(TarReader *t, const TarHeader **ret, ErrMsg *err);

/* Reads data of the current entry. Returns bytes (> 0), 0 at its end, or
 * -errno (-EBADMSG on a truncated archive). */
ssize_t tar_reader_read(TarReader *t, void *buf, size_t len, ErrMsg *err);

/* Archive bytes consumed so far. */
uint64_t tar_reader_offset(const TarReader *t);

/* Appends the header block(s) for h to out: a PAX extended header first when
 * a field does not fit ustar (long names, big ids or sizes, xattrs). */
int tar_header_write(StrBuf *out, const TarHeader *h);

/* Appends zero padding so that data_len bytes of data fill whole blocks. */
int tar_pad_write(StrBuf *out, uint64_t data_len);

void tar_header_done(TarHeader *h);
