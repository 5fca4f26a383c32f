/* Shared fixtures for the unit tests: a seeded PRNG, a private temporary
 * directory, tar archives and gzip members built in memory, eStargz blobs
 * made by estargz_convert() or by hand, and a ReadAtFn over memory that
 * can play a short or truncated blob. Header only; single-threaded. */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/estargz/footer.h"
#include "common/estargz/layer.h"
#include "common/estargz/tar.h"
#include "common/estargz/writer.h"
#include "common/util/strbuf.h"

_Pragma("GCC diagnostic push")
_Pragma("GCC diagnostic ignored \"-Wunused-function\"")

/* ---- PRNG: xorshift64*, fixed seeds keep every run the same ---- */

typedef struct Rng {
        uint64_t s;
} Rng;

static uint64_t rng_next(Rng *r) {
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * 2685821657736338717ull;
}

static uint64_t rng_below(Rng *r, uint64_t n) {
        return n ? rng_next(r) % n : 0;
}

static void rng_fill(Rng *r, uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (rng_next(r) >> 56);
}

/* ---- temporary directory ---- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) flag;
        (void) ftw;
        return remove(path);
}

/* Creates a fresh directory under $TMPDIR (or /tmp); path must hold 4096 bytes. */
static int tmpdir_make(char *path) {
        const char *base = getenv("TMPDIR");
        snprintf(path, 4096, "%s/holdfast-unit-XXXXXX", base && *base ? base : "/tmp");
        return mkdtemp(path) ? 0 : -errno;
}

static void tmpdir_remove(const char *path) {
        if (path && path[0])
                nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- tar in memory ---- */

/* Appends one entry (header, data, padding). Fields left zero in h get
 * defaults: linkname/uname/gname "". */
static int tar_add_entry(StrBuf *tar, const TarHeader *h, const void *data) {
        TarHeader c = *h;
        if (!c.linkname)
                c.linkname = (char *) "";
        if (!c.uname)
                c.uname = (char *) "";
        if (!c.gname)
                c.gname = (char *) "";
        int r = tar_header_write(tar, &c);
        if (r < 0)
                return r;
        if (c.typeflag == '0' && c.size > 0) {
                r = strbuf_append(tar, data, (size_t) c.size);
                if (r < 0)
                        return r;
                r = tar_pad_write(tar, c.size);
        }
        return r;
}

static int tar_add(StrBuf *tar, const char *name, char type, uint32_t mode, const void *data, size_t len, const char *link) {
        TarHeader h = {
                .name = (char *) name,
                .linkname = (char *) (link ? link : ""),
                .typeflag = type,
                .mode = mode,
                .mtime = 1600000000,
                .size = type == '0' ? len : 0,
        };
        return tar_add_entry(tar, &h, data);
}

static int tar_end(StrBuf *tar) {
        static const uint8_t zero[2 * TAR_BLOCK];
        return strbuf_append(tar, zero, sizeof(zero));
}

/* ---- gzip ---- */

/* Appends one gzip member holding data to out. */
static int gzip_member(StrBuf *out, const void *data, size_t len, int level) {
        z_stream z = {};
        if (deflateInit2(&z, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
                return -ENOMEM;
        uLong bound = deflateBound(&z, (uLong) len) + 64;
        int r = strbuf_reserve(out, bound);
        if (r < 0) {
                deflateEnd(&z);
                return r;
        }
        z.next_in = (Bytef *) data;
        z.avail_in = (uInt) len;
        z.next_out = (Bytef *) out->data + out->len;
        z.avail_out = (uInt) bound;
        int zr = deflate(&z, Z_FINISH);
        if (zr == Z_STREAM_END)
                out->len += bound - z.avail_out;
        deflateEnd(&z);
        return zr == Z_STREAM_END ? 0 : -EIO;
}

/* ---- files ---- */

static int file_write(const char *dir, const char *name, const void *data, size_t len) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        const uint8_t *p = data;
        for (size_t done = 0; done < len;) {
                ssize_t n = write(fd, p + done, len - done);
                if (n < 0) {
                        int r = -errno;
                        close(fd);
                        return r;
                }
                done += (size_t) n;
        }
        if (lseek(fd, 0, SEEK_SET) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

static int fd_slurp(int fd, StrBuf *out) {
        uint8_t buf[65536];
        if (lseek(fd, 0, SEEK_SET) < 0)
                return -errno;
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return 0;
                int r = strbuf_append(out, buf, (size_t) n);
                if (r < 0)
                        return r;
        }
}

/* Converts the input bytes (a tar, possibly compressed) with
 * estargz_convert(), through files in dir, and appends the blob to blob. */
static int convert_mem(const char *dir, const void *in, size_t in_len, const ConvertOptions *opts, ConvertResult *res,
                       StrBuf *blob, ErrMsg *err) {
        ConvertOptions o = *opts;
        if (!o.tmpdir)
                o.tmpdir = dir;
        int in_fd = file_write(dir, "input.tar", in, in_len);
        if (in_fd < 0)
                return in_fd;
        int out_fd = file_write(dir, "output.blob", NULL, 0);
        if (out_fd < 0) {
                close(in_fd);
                return out_fd;
        }
        int r = estargz_convert(in_fd, out_fd, &o, res, err);
        if (r >= 0 && blob)
                r = fd_slurp(out_fd, blob);
        close(in_fd);
        close(out_fd);
        return r;
}

/* ---- a hand-made eStargz blob ---- */

/* Appends a gzip member holding data; returns its blob offset. */
static int64_t blob_add(StrBuf *blob, const void *data, size_t len) {
        uint64_t off = blob->len;
        int r = gzip_member(blob, data, len, 6);
        return r < 0 ? r : (int64_t) off;
}

/* Appends the TOC member (tar entry stargz.index.json + end of archive)
 * and the 51-byte footer. */
static int blob_finish(StrBuf *blob, const char *json) {
        StrBuf t = {};
        uint64_t toc_off = blob->len;
        int r = tar_add(&t, ESTARGZ_TOC_TAR_NAME, '0', 0644, json, strlen(json), NULL);
        if (r >= 0)
                r = tar_end(&t);
        if (r >= 0)
                r = gzip_member(blob, t.data, t.len, 6);
        strbuf_done(&t);
        if (r < 0)
                return r;
        uint8_t f[ESTARGZ_FOOTER_SIZE];
        footer_estargz_build(toc_off, f);
        return strbuf_append(blob, f, sizeof(f));
}

/* ---- ReadAtFn over memory ---- */

typedef struct MemBlob {
        const uint8_t *data;
        uint64_t len;        /* bytes that really exist: reads past it return 0 */
        size_t max_read;     /* > 0: return at most this many bytes per call */
        int fail_errno;      /* > 0: every read fails with -fail_errno */
        unsigned n_reads;
} MemBlob;

static ssize_t mem_blob_read_at(void *userdata, void *buf, size_t len, uint64_t off) {
        MemBlob *m = userdata;
        m->n_reads++;
        if (m->fail_errno)
                return -m->fail_errno;
        if (off >= m->len)
                return 0;
        size_t n = (size_t) (len < m->len - off ? len : m->len - off);
        if (m->max_read && n > m->max_read)
                n = m->max_read;
        memcpy(buf, m->data + off, n);
        return (ssize_t) n;
}

static void sha256_hex(const void *data, size_t len, char out[DIGEST_STRING_LEN + 1]) {
        uint8_t d[SHA256_LEN];
        sha256_buf(data, len, d);
        digest_format(d, out);
}

_Pragma("GCC diagnostic pop")
