/* Pull-style decompressors over a source ReadFn. */
#include "common/estargz/decompress.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "common/util/macro.h"

#define IN_BUF (128u << 10)

struct Decompress {
        Compression c;
        ReadFn src;
        void *src_userdata;
        bool multi;
        bool src_eof;
        bool finished;   /* end of the (last) member reached */
        bool in_member;  /* bytes of the current member were consumed */
        uint8_t *in;     /* owned */
        size_t in_len, in_pos;
        z_stream z;
        bool z_init;
        ZSTD_DStream *zs; /* owned */
};

Compression compression_detect(const uint8_t *p, size_t len) {
        if (len >= 3 && p[0] == 0x1f && p[1] == 0x8b && p[2] == 8)
                return COMPRESSION_GZIP;
        if (len >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd)
                return COMPRESSION_ZSTD;
        if (len >= 4 && (p[0] & 0xf0) == 0x50 && p[1] == 0x2a && p[2] == 0x4d && p[3] == 0x18)
                return COMPRESSION_ZSTD;
        return COMPRESSION_NONE;
}

const char *compression_to_string(Compression c) {
        switch (c) {
        case COMPRESSION_GZIP: return "gzip";
        case COMPRESSION_ZSTD: return "zstd";
        default: return "none";
        }
}

ssize_t mem_reader_read(void *userdata, void *buf, size_t len) {
        MemReader *m = userdata;
        size_t n = MIN(len, m->len - m->pos);
        if (n == 0)
                return 0; /* an empty MemReader may have data == NULL */
        memcpy(buf, m->data + m->pos, n);
        m->pos += n;
        return (ssize_t) n;
}

ssize_t fd_reader_read(void *userdata, void *buf, size_t len) {
        FdReader *f = userdata;
        for (;;) {
                ssize_t n = read(f->fd, buf, len);
                if (n >= 0) {
                        f->nread += (uint64_t) n;
                        return n;
                }
                if (errno != EINTR)
                        return -errno;
        }
}

int decompress_new(Compression c, ReadFn src, void *src_userdata, bool multi_member, Decompress **ret) {
        _cleanup_free_ Decompress *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->c = c;
        d->src = src;
        d->src_userdata = src_userdata;
        d->multi = multi_member;
        d->in = malloc(IN_BUF);
        if (!d->in)
                return -ENOMEM;
        if (c == COMPRESSION_GZIP) {
                if (inflateInit2(&d->z, 16 + MAX_WBITS) != Z_OK) {
                        free(d->in);
                        return -ENOMEM;
                }
                d->z_init = true;
        } else if (c == COMPRESSION_ZSTD) {
                d->zs = ZSTD_createDStream();
                if (!d->zs) {
                        free(d->in);
                        return -ENOMEM;
                }
                ZSTD_initDStream(d->zs);
        }
        *ret = TAKE_PTR(d);
        return 0;
}

Decompress *decompress_free(Decompress *d) {
        if (!d)
                return NULL;
        if (d->z_init)
                inflateEnd(&d->z);
        ZSTD_freeDStream(d->zs);
        free(d->in);
        free(d);
        return NULL;
}

static int fill(Decompress *d) {
        if (d->in_pos < d->in_len || d->src_eof)
                return 0;
        ssize_t n = d->src(d->src_userdata, d->in, IN_BUF);
        if (n < 0)
                return (int) n;
        if (n == 0)
                d->src_eof = true;
        d->in_len = (size_t) n;
        d->in_pos = 0;
        return 0;
}

static ssize_t read_gzip(Decompress *d, uint8_t *buf, size_t len) {
        size_t out = 0;
        while (out < len && !d->finished) {
                int r = fill(d);
                if (r < 0)
                        return r;
                if (d->in_pos == d->in_len) {
                        /* End of input: fine between members, truncation inside one. */
                        if (d->in_member)
                                return -EBADMSG;
                        d->finished = true;
                        break;
                }
                d->z.next_in = d->in + d->in_pos;
                d->z.avail_in = (uInt) (d->in_len - d->in_pos);
                d->z.next_out = buf + out;
                d->z.avail_out = (uInt) MIN(len - out, (size_t) UINT32_MAX);
                uInt before_in = d->z.avail_in, before_out = d->z.avail_out;
                int zr = inflate(&d->z, Z_NO_FLUSH);
                d->in_pos += before_in - d->z.avail_in;
                out += before_out - d->z.avail_out;
                if (before_in != d->z.avail_in)
                        d->in_member = true;
                if (zr == Z_STREAM_END) {
                        d->in_member = false;
                        if (!d->multi)
                                d->finished = true;
                        else
                                inflateReset(&d->z);
                } else if (zr == Z_BUF_ERROR) {
                        if (before_in == d->z.avail_in && before_out == d->z.avail_out && d->src_eof)
                                return -EBADMSG;
                } else if (zr != Z_OK)
                        return zr == Z_MEM_ERROR ? -ENOMEM : -EBADMSG;
        }
        return (ssize_t) out;
}

static ssize_t read_zstd(Decompress *d, uint8_t *buf, size_t len) {
        ZSTD_outBuffer ob = { buf, len, 0 };
        while (ob.pos < ob.size && !d->finished) {
                int r = fill(d);
                if (r < 0)
                        return r;
                if (d->in_pos == d->in_len) {
                        if (d->in_member)
                                return -EBADMSG;
                        d->finished = true;
                        break;
                }
                ZSTD_inBuffer ib = { d->in, d->in_len, d->in_pos };
                size_t zr = ZSTD_decompressStream(d->zs, &ob, &ib);
                if (ZSTD_isError(zr))
                        return ZSTD_getErrorCode(zr) == ZSTD_error_memory_allocation ? -ENOMEM : -EBADMSG;
                if (ib.pos != d->in_pos)
                        d->in_member = true;
                d->in_pos = ib.pos;
                if (zr == 0) {
                        d->in_member = false;
                        if (!d->multi)
                                d->finished = true;
                }
        }
        return (ssize_t) ob.pos;
}

ssize_t decompress_read(void *userdata, void *buf, size_t len) {
        Decompress *d = userdata;
        switch (d->c) {
        case COMPRESSION_GZIP:
                return read_gzip(d, buf, len);
        case COMPRESSION_ZSTD:
                return read_zstd(d, buf, len);
        default: {
                if (d->in_pos < d->in_len) {
                        size_t n = MIN(len, d->in_len - d->in_pos);
                        memcpy(buf, d->in + d->in_pos, n);
                        d->in_pos += n;
                        return (ssize_t) n;
                }
                return d->src(d->src_userdata, buf, len);
        }
        }
}
