/* libFuzzer target for the tar reader: the input is a tar archive, read
 * through a MemReader the way convert reads a decompressed layer.
 *
 * Walks at most MAX_ENTRIES headers and reads each entry's data in odd
 * sized pieces, checking what the header contract promises (normalized
 * type, no data outside regular files, offsets that only grow and never
 * pass the input). Each header that comes back is also written again with
 * tar_header_write() and read back: the writer's output must parse to the
 * same header. Any violation aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/estargz/decompress.h"
#include "common/estargz/tar.h"
#include "common/util/strbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ENTRIES 256

static bool str_eq(const char *a, const char *b) {
        return strcmp(a ? a : "", b ? b : "") == 0;
}

static void check_header(const TarHeader *h) {
        if (!h->name || !h->linkname || !h->uname || !h->gname || h->name[0] == 0)
                abort();
        if (!strchr("0123456", h->typeflag) || h->typeflag == 0)
                abort();
        if (h->typeflag != '0' && h->size != 0)
                abort();
        if ((h->mode & ~07777u) != 0 || h->size > INT64_MAX)
                abort();
        if (h->uid > UINT32_MAX || h->gid > UINT32_MAX)
                abort();
        if (h->n_xattrs > 0 && !h->xattrs)
                abort();
        for (size_t i = 0; i < h->n_xattrs; i++)
                if (!h->xattrs[i].name || (!h->xattrs[i].value && h->xattrs[i].len > 0))
                        abort();
}

/* Writes h with the writer and parses it back. */
static void check_round_trip(const TarHeader *h) {
        StrBuf out = {};
        if (tar_header_write(&out, h) < 0)
                abort();
        /* Only the header blocks: tar_reader_next() returns before the data. */
        MemReader m = { .data = (const uint8_t *) out.data, .len = out.len };
        TarReader *t = NULL;
        if (tar_reader_new(mem_reader_read, &m, &t) < 0)
                abort();
        const TarHeader *g = NULL;
        ErrMsg err = {};
        int r = tar_reader_next(t, &g, &err);
        if (r != 1)
                abort();
        if (!str_eq(h->name, g->name) || !str_eq(h->linkname, g->linkname) || !str_eq(h->uname, g->uname) ||
            !str_eq(h->gname, g->gname) || h->typeflag != g->typeflag || h->mode != g->mode || h->uid != g->uid ||
            h->gid != g->gid || h->mtime != g->mtime || h->size != g->size || h->n_xattrs != g->n_xattrs)
                abort();
        if ((h->typeflag == '3' || h->typeflag == '4') && (h->devmajor != g->devmajor || h->devminor != g->devminor))
                abort();
        for (size_t i = 0; i < h->n_xattrs; i++)
                if (strcmp(h->xattrs[i].name, g->xattrs[i].name) != 0 || h->xattrs[i].len != g->xattrs[i].len ||
                    memcmp(h->xattrs[i].value, g->xattrs[i].value, h->xattrs[i].len) != 0)
                        abort();
        tar_reader_free(t);
        strbuf_done(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        MemReader m = { .data = data, .len = size };
        TarReader *t = NULL;
        if (tar_reader_new(mem_reader_read, &m, &t) < 0)
                abort();

        uint8_t buf[777];
        uint64_t last = 0;
        for (unsigned n = 0; n < MAX_ENTRIES; n++) {
                const TarHeader *h = NULL;
                ErrMsg err = {};
                int r = tar_reader_next(t, &h, &err);
                if (tar_reader_offset(t) < last || tar_reader_offset(t) > size)
                        abort();
                last = tar_reader_offset(t);
                if (r <= 0) {
                        if (r < 0 && err.text[0] == 0 && r != -ENOMEM)
                                abort(); /* refused without saying why */
                        /* once done, the reader stays done */
                        if (r == 0 && tar_reader_next(t, &h, &err) != 0)
                                abort();
                        break;
                }
                if (r != 1 || !h)
                        abort();
                check_header(h);
                check_round_trip(h);

                /* Read part of the data (every other entry), leave the rest
                 * for tar_reader_next() to skip. */
                uint64_t got = 0;
                for (;;) {
                        if ((n & 1) && got >= sizeof(buf))
                                break;
                        ssize_t k = tar_reader_read(t, buf, sizeof(buf) - (n % 7), &err);
                        if (k < 0)
                                goto out;
                        if (k == 0)
                                break;
                        got += (uint64_t) k;
                        if (got > h->size || tar_reader_offset(t) > size)
                                abort();
                }
        }
out:
        tar_reader_free(t);
        return 0;
}
