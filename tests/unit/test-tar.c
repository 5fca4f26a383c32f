/* Tests of common/estargz/tar: the streaming reader over ustar, GNU and
 * PAX archives (headers built byte by byte here), its refusals, and the
 * header writer round-tripped through the reader. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/estargz/decompress.h"
#include "common/estargz/tar.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

/* ---- raw headers ---- */

static void octal(uint8_t *f, size_t len, uint64_t v) {
        f[len - 1] = 0;
        for (size_t i = len - 1; i > 0; i--, v >>= 3)
                f[i - 1] = (uint8_t) ('0' + (v & 7));
}

static void base256(uint8_t *f, size_t len, uint64_t v) {
        memset(f, 0, len);
        f[0] = 0x80;
        for (size_t i = len - 1; i > 0 && v; i--, v >>= 8)
                f[i] = (uint8_t) v;
}

static void checksum(uint8_t *b) {
        memset(b + 148, ' ', 8);
        uint64_t sum = 0;
        for (size_t i = 0; i < TAR_BLOCK; i++)
                sum += b[i];
        octal(b + 148, 7, sum);
        b[155] = ' ';
}

typedef enum { POSIX, GNU, V7 } Magic;

/* A header block with checksum. */
static void raw(uint8_t *b, const char *name, char type, uint64_t size, Magic m) {
        memset(b, 0, TAR_BLOCK);
        strncpy((char *) b, name, 100);
        octal(b + 100, 8, 0644);
        octal(b + 108, 8, 1000);
        octal(b + 116, 8, 1001);
        octal(b + 124, 12, size);
        octal(b + 136, 12, 1234567890);
        b[156] = (uint8_t) type;
        if (m == POSIX)
                memcpy(b + 257, "ustar\0" "00", 8);
        else if (m == GNU)
                memcpy(b + 257, "ustar  \0", 8);
        if (m != V7) {
                strcpy((char *) b + 265, "alice");
                strcpy((char *) b + 297, "staff");
        }
        checksum(b);
}

static void add_block(StrBuf *s, const uint8_t *b) {
        strbuf_append(s, b, TAR_BLOCK);
}

static void add_data(StrBuf *s, const void *d, size_t len) {
        strbuf_append(s, d, len);
        tar_pad_write(s, len);
}

static void add_meta(StrBuf *s, char type, const void *d, size_t len) {
        uint8_t b[TAR_BLOCK];
        raw(b, type == 'x' ? "PaxHeaders/x" : "././@LongLink", type, len, type == 'x' ? POSIX : GNU);
        add_block(s, b);
        add_data(s, d, len);
}

static void add_pax(StrBuf *s, const char *key, const void *val, size_t vlen) {
        /* "<len> key=value\n" with len counting itself */
        size_t base = strlen(key) + vlen + 3, digits = 1;
        while (snprintf(NULL, 0, "%zu", base + digits) != (int) digits)
                digits++;
        strbuf_printf(s, "%zu %s=", base + digits, key);
        strbuf_append(s, val, vlen);
        strbuf_putc(s, '\n');
}

/* ---- reading helpers ---- */

typedef struct Trickle {
        MemReader m;
        size_t step;
} Trickle;

/* Hands out at most `step` bytes a call, to exercise partial reads. */
static ssize_t trickle_read(void *ud, void *buf, size_t len) {
        Trickle *t = ud;
        return mem_reader_read(&t->m, buf, MIN(len, t->step));
}

typedef struct Reader {
        Trickle src;
        TarReader *t;
        ErrMsg err;
} Reader;

static void reader_open(Reader *r, const StrBuf *s, size_t step) {
        *r = (Reader) { .src = { .m = { .data = (const uint8_t *) s->data, .len = s->len }, .step = step } };
        if (tar_reader_new(trickle_read, &r->src, &r->t) < 0)
                abort();
}

static void reader_close(Reader *r) {
        r->t = tar_reader_free(r->t);
}

static int next(Reader *r, const TarHeader **h) {
        r->err = (ErrMsg) {};
        return tar_reader_next(r->t, h, &r->err);
}

/* Reads the current entry's data whole into buf (cap bytes). */
static ssize_t read_all(Reader *r, void *buf, size_t cap) {
        size_t got = 0;
        for (;;) {
                ssize_t n = tar_reader_read(r->t, (uint8_t *) buf + got, cap - got, &r->err);
                if (n < 0)
                        return n;
                if (n == 0)
                        return (ssize_t) got;
                got += (size_t) n;
        }
}

/* ---- tests ---- */

static void test_ustar(void) {
        StrBuf s = {};
        uint8_t b[TAR_BLOCK];

        raw(b, "etc/", '5', 0, POSIX);
        add_block(&s, b);
        raw(b, "etc/hosts", '0', 11, POSIX);
        add_block(&s, b);
        add_data(&s, "127.0.0.1\n!", 11);
        /* prefix field (345) + name: "usr/share/doc" "/" "README" */
        raw(b, "README", '0', 3, POSIX);
        strcpy((char *) b + 345, "usr/share/doc");
        checksum(b);
        add_block(&s, b);
        add_data(&s, "abc", 3);
        raw(b, "lnk", '2', 0, POSIX);
        strcpy((char *) b + 157, "etc/hosts");
        checksum(b);
        add_block(&s, b);
        raw(b, "dev/null", '3', 0, POSIX);
        octal(b + 329, 8, 1);
        octal(b + 337, 8, 3);
        checksum(b);
        add_block(&s, b);
        raw(b, "old", 0, 2, V7); /* NUL typeflag: a regular file */
        add_block(&s, b);
        add_data(&s, "zz", 2);
        /* a directory with a bogus size: the size is ignored, no data follows */
        raw(b, "d2/", '5', 5000, POSIX);
        add_block(&s, b);
        raw(b, "fifo", '6', 0, POSIX);
        add_block(&s, b);
        tar_end(&s);

        for (size_t step = 1; step <= 4096; step *= 8) {
                Reader r;
                const TarHeader *h;
                char buf[64];
                reader_open(&r, &s, step);
                diag("ustar archive read %zu bytes at a time", step);
                is_int(next(&r, &h), 1, "dir entry");
                is_str(h->name, "etc/", "  name");
                is_int(h->typeflag, '5', "  type dir");
                is_int(h->mode, 0644, "  mode");
                is_int(h->uid, 1000, "  uid");
                is_int(h->gid, 1001, "  gid");
                is_int(h->mtime, 1234567890, "  mtime");
                is_str(h->uname, "alice", "  uname");
                is_str(h->gname, "staff", "  gname");
                is_int(h->size, 0, "  size 0");
                is_int(tar_reader_offset(r.t), 512, "offset after one header");

                is_int(next(&r, &h), 1, "regular file");
                is_str(h->name, "etc/hosts", "  name");
                is_int(h->size, 11, "  size");
                ssize_t n = read_all(&r, buf, sizeof(buf));
                ok(n == 11 && memcmp(buf, "127.0.0.1\n!", 11) == 0, "  data");
                is_int(tar_reader_read(r.t, buf, 10, NULL), 0, "  0 at end of data");

                is_int(next(&r, &h), 1, "file with a ustar prefix");
                is_str(h->name, "usr/share/doc/README", "  prefix joined to the name");
                /* data left unread is skipped by the next call */
                is_int(next(&r, &h), 1, "symlink (after skipping unread data)");
                is_str(h->name, "lnk", "  name");
                is_int(h->typeflag, '2', "  type symlink");
                is_str(h->linkname, "etc/hosts", "  linkname");

                is_int(next(&r, &h), 1, "char device");
                is_int(h->typeflag, '3', "  type char");
                is_int(h->devmajor, 1, "  devmajor");
                is_int(h->devminor, 3, "  devminor");

                is_int(next(&r, &h), 1, "v7 entry with NUL typeflag");
                is_int(h->typeflag, '0', "  normalized to '0'");
                is_str(h->uname, "", "  no uname in v7");

                is_int(next(&r, &h), 1, "dir with a size field");
                is_int(h->size, 0, "  size ignored for non-regular entries");
                is_int(next(&r, &h), 1, "fifo right after it (no data skipped)");
                is_int(h->typeflag, '6', "  type fifo");
                is_int(next(&r, &h), 0, "end of archive");
                is_int(next(&r, &h), 0, "still the end");
                reader_close(&r);
        }
        strbuf_done(&s);
}

static void test_gnu(void) {
        StrBuf s = {};
        uint8_t b[TAR_BLOCK];
        char longname[301], longlink[201];
        memset(longname, 'n', 300);
        longname[300] = 0;
        memcpy(longname, "dir/", 4);
        memset(longlink, 'k', 200);
        longlink[200] = 0;

        add_meta(&s, 'L', longname, 301); /* GNU writes the NUL too */
        add_meta(&s, 'K', longlink, 200);
        raw(b, "truncated-name", '1', 0, GNU);
        strcpy((char *) b + 157, "truncated-link");
        /* GNU puts atime/ctime where ustar has the prefix: must not be joined */
        memcpy(b + 345, "01234567", 8);
        checksum(b);
        add_block(&s, b);

        /* base-256 numbers: size, uid, gid, mtime */
        raw(b, "big", '0', 0, GNU);
        base256(b + 124, 12, 5);
        base256(b + 108, 8, 3000000000u);
        base256(b + 116, 8, 4000000000u);
        base256(b + 136, 12, 1ull << 34);
        checksum(b);
        add_block(&s, b);
        add_data(&s, "12345", 5);
        tar_end(&s);

        Reader r;
        const TarHeader *h;
        reader_open(&r, &s, 100);
        is_int(next(&r, &h), 1, "GNU long name + long link entry");
        is_str(h->name, longname, "  'L' long name (300 bytes)");
        is_str(h->linkname, longlink, "  'K' long link (200 bytes)");
        is_int(h->typeflag, '1', "  hardlink");
        is_int(next(&r, &h), 1, "base-256 entry");
        is_str(h->name, "big", "  name");
        is_int(h->size, 5, "  base-256 size");
        is_int(h->uid, 3000000000u, "  base-256 uid");
        is_int(h->gid, 4000000000u, "  base-256 gid");
        is_int(h->mtime, 1ll << 34, "  base-256 mtime");
        char buf[8];
        ok(read_all(&r, buf, sizeof(buf)) == 5 && memcmp(buf, "12345", 5) == 0, "  data");
        is_int(next(&r, &h), 0, "end");
        reader_close(&r);
        strbuf_done(&s);
}

static void test_pax(void) {
        StrBuf s = {}, pax = {};
        uint8_t b[TAR_BLOCK];
        char path[400];
        memset(path, 'p', sizeof(path) - 1);
        path[sizeof(path) - 1] = 0;
        path[0] = 'a';
        path[1] = '/';
        static const uint8_t bin[] = { 'v', 0, 1, 0xff, 0, '\n', '=' };

        add_pax(&pax, "path", path, strlen(path));
        add_pax(&pax, "linkpath", "target/of/a/link", 16);
        add_pax(&pax, "size", "7", 1);
        add_pax(&pax, "uid", "4294967295", 10);
        add_pax(&pax, "gid", "70000000", 8);
        add_pax(&pax, "mtime", "1700000000.123456789", 20);
        add_pax(&pax, "uname", "a-very-long-user-name-over-32-bytes-long", 40);
        add_pax(&pax, "gname", "grp", 3);
        add_pax(&pax, "SCHILY.xattr.user.bin", bin, sizeof(bin));
        add_pax(&pax, "SCHILY.xattr.security.capability", "", 0);
        add_pax(&pax, "comment", "ignored", 7);
        add_meta(&s, 'x', pax.data, pax.len);
        raw(b, "short", '0', 0 /* PAX size wins */, POSIX);
        add_block(&s, b);
        add_data(&s, "seven!!", 7);

        /* a global header is read and ignored */
        strbuf_done(&pax);
        add_pax(&pax, "path", "global/ignored", 14);
        uint8_t g[TAR_BLOCK];
        raw(g, "pax_global_header", 'g', pax.len, POSIX);
        add_block(&s, g);
        add_data(&s, pax.data, pax.len);
        strbuf_done(&pax);
        add_pax(&pax, "mtime", "-86400", 6);
        add_pax(&pax, "SCHILY.devmajor", "300", 3);
        add_pax(&pax, "SCHILY.devminor", "5000000", 7);
        add_meta(&s, 'x', pax.data, pax.len);
        raw(b, "blk", '4', 0, POSIX);
        add_block(&s, b);
        tar_end(&s);

        Reader r;
        const TarHeader *h;
        reader_open(&r, &s, 7);
        is_int(next(&r, &h), 1, "PAX entry");
        is_str(h->name, path, "  PAX path (399 bytes)");
        is_str(h->linkname, "target/of/a/link", "  PAX linkpath");
        is_int(h->size, 7, "  PAX size overrides the header's 0");
        is_int(h->uid, 4294967295u, "  PAX uid 2^32-1");
        is_int(h->gid, 70000000, "  PAX gid");
        is_int(h->mtime, 1700000000, "  PAX mtime, fraction dropped");
        is_str(h->uname, "a-very-long-user-name-over-32-bytes-long", "  PAX uname");
        is_str(h->gname, "grp", "  PAX gname");
        is_int(h->n_xattrs, 2, "  two xattrs");
        if (h->n_xattrs == 2) {
                is_str(h->xattrs[0].name, "user.bin", "  xattr name");
                ok(h->xattrs[0].len == sizeof(bin) && memcmp(h->xattrs[0].value, bin, sizeof(bin)) == 0,
                   "  binary xattr value with NULs, newline and '=' kept");
                is_str(h->xattrs[1].name, "security.capability", "  second xattr name");
                is_int(h->xattrs[1].len, 0, "  empty xattr value");
        }
        char buf[16];
        ok(read_all(&r, buf, sizeof(buf)) == 7 && memcmp(buf, "seven!!", 7) == 0, "  7 data bytes");
        is_int(next(&r, &h), 1, "entry after a global header");
        is_str(h->name, "blk", "  global path ignored");
        is_int(h->typeflag, '4', "  block device");
        is_int(h->mtime, -86400, "  negative PAX mtime");
        is_int(h->devmajor, 300, "  SCHILY.devmajor");
        is_int(h->devminor, 5000000, "  SCHILY.devminor");
        is_int(h->n_xattrs, 0, "  PAX records do not leak into the next entry");
        is_int(next(&r, &h), 0, "end");
        reader_close(&r);
        strbuf_done(&s);
        strbuf_done(&pax);
}

/* Expects the archive to fail at some header with -want and a message. */
static void expect_fail(StrBuf *s, int want, const char *needle, const char *what) {
        Reader r;
        const TarHeader *h;
        reader_open(&r, s, 4096);
        int rr;
        while ((rr = next(&r, &h)) > 0)
                ;
        is_int(rr, want, "%s", what);
        has_str(r.err.text, needle, "  message: %s", r.err.text);
        reader_close(&r);
}

static void test_errors(void) {
        StrBuf s = {};
        uint8_t b[TAR_BLOCK];

        raw(b, "x", '0', 0, POSIX);
        b[0] = 'y'; /* after the checksum */
        add_block(&s, b);
        tar_end(&s);
        expect_fail(&s, -EBADMSG, "bad checksum", "bad checksum");
        strbuf_done(&s);

        /* a checksum with junk in it */
        raw(b, "x", '0', 0, POSIX);
        memcpy(b + 148, "12x4567\0", 8);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "bad checksum", "malformed checksum field");
        strbuf_done(&s);

        raw(b, "x", '0', 0, POSIX);
        add_block(&s, b);
        s.len -= 200;
        expect_fail(&s, -EBADMSG, "truncated", "truncated header");
        strbuf_done(&s);

        /* truncated data: reading it fails, and so does skipping it */
        raw(b, "file", '0', 1000, POSIX);
        add_block(&s, b);
        strbuf_append(&s, "only a few bytes", 16);
        {
                Reader r;
                const TarHeader *h;
                char buf[2000];
                reader_open(&r, &s, 4096);
                is_int(next(&r, &h), 1, "header of a truncated file");
                is_int(read_all(&r, buf, sizeof(buf)), -EBADMSG, "reading truncated data is -EBADMSG");
                has_str(r.err.text, "truncated", "  message: %s", r.err.text);
                reader_close(&r);
                reader_open(&r, &s, 4096);
                next(&r, &h);
                is_int(next(&r, &h), -EBADMSG, "skipping truncated data is -EBADMSG");
                has_str(r.err.text, "truncated", "  message: %s", r.err.text);
                reader_close(&r);
        }
        strbuf_done(&s);

        raw(b, "sparse", 'S', 0, GNU);
        add_block(&s, b);
        tar_end(&s);
        expect_fail(&s, -EBADMSG, "unsupported type 'S'", "GNU sparse entry is unsupported");
        strbuf_done(&s);
        raw(b, "vol", 'V', 0, GNU);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "unsupported type", "volume header is unsupported");
        strbuf_done(&s);

        /* 70 long-name entries in a row: a loop that must end */
        for (int i = 0; i < 70; i++)
                add_meta(&s, 'L', "name", 5);
        raw(b, "x", '0', 0, GNU);
        add_block(&s, b);
        tar_end(&s);
        expect_fail(&s, -EBADMSG, "more than 64", "more than 64 meta entries");
        strbuf_done(&s);

        add_meta(&s, 'L', "name", 5);
        expect_fail(&s, -EBADMSG, "after a meta entry", "archive ends after a meta entry");
        tar_end(&s);
        expect_fail(&s, -EBADMSG, "after a meta entry", "zero blocks right after a meta entry");
        strbuf_done(&s);

        /* an oversized long name */
        raw(b, "././@LongLink", 'L', TAR_NAME_MAX + 1, GNU);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "cap", "long name over TAR_NAME_MAX");
        strbuf_done(&s);

        /* a negative base-256 size */
        raw(b, "neg", '0', 0, GNU);
        memset(b + 124, 0xff, 12);
        checksum(b);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "bad size", "negative base-256 size");
        strbuf_done(&s);

        /* octal with junk */
        raw(b, "junk", '0', 0, POSIX);
        memcpy(b + 100, "07x4\0\0\0\0", 8);
        checksum(b);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "malformed numeric field", "junk in the mode field");
        strbuf_done(&s);

        StrBuf pax = {};
        strbuf_append(&pax, "99 path=x\n", 10); /* length longer than the header */
        add_meta(&s, 'x', pax.data, pax.len);
        raw(b, "x", '0', 0, POSIX);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "malformed PAX record", "PAX record with a wrong length");
        strbuf_done(&s);
        strbuf_done(&pax);

        add_pax(&pax, "uid", "12a", 3);
        add_meta(&s, 'x', pax.data, pax.len);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "'uid'", "PAX uid that is not a number");
        strbuf_done(&s);
        strbuf_done(&pax);

        add_pax(&pax, "path", "a\0b", 3);
        add_meta(&s, 'x', pax.data, pax.len);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "'path'", "PAX path with a NUL byte");
        strbuf_done(&s);
        strbuf_done(&pax);

        add_pax(&pax, "uid", "4294967296", 10);
        add_meta(&s, 'x', pax.data, pax.len);
        add_block(&s, b);
        expect_fail(&s, -EOVERFLOW, "out of range", "PAX uid over 2^32-1");
        strbuf_done(&s);
        strbuf_done(&pax);

        add_pax(&pax, "size", "99999999999999999999999", 23);
        add_meta(&s, 'x', pax.data, pax.len);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "'size'", "PAX size that overflows");
        strbuf_done(&s);
        strbuf_done(&pax);

        raw(b, "", '0', 0, POSIX);
        add_block(&s, b);
        expect_fail(&s, -EBADMSG, "empty name", "entry with an empty name");
        strbuf_done(&s);

        /* the read callback's error is passed through */
        {
                TarReader *t;
                ErrMsg err = {};
                const TarHeader *h;
                tar_reader_new(fd_reader_read, &(FdReader) { .fd = -1 }, &t);
                is_int(tar_reader_next(t, &h, &err), -EBADF, "read error passed through");
                ok(err.text[0], "  with a message: %s", err.text);
                tar_reader_free(t);
        }
        /* an empty input is an empty archive */
        {
                StrBuf empty = {};
                Reader r;
                const TarHeader *h;
                reader_open(&r, &empty, 1);
                is_int(next(&r, &h), 0, "empty input: end of archive");
                reader_close(&r);
        }
}

static void test_writer_roundtrip(void) {
        char name150[151], link120[121], name100[101];
        memset(name150, 'a', 150);
        name150[150] = 0;
        name150[40] = '/';
        memset(link120, 'b', 120);
        link120[120] = 0;
        memset(name100, 'c', 100);
        name100[100] = 0;
        static const uint8_t val[] = { 0, 1, 2, 0, 'x' };
        TarXattr xattrs[] = {
                { .name = (char *) "user.a", .value = (uint8_t *) val, .len = sizeof(val) },
                { .name = (char *) "trusted.overlay.opaque", .value = (uint8_t *) "y", .len = 1 },
        };
        struct {
                TarHeader h;
                const char *data;
        } cases[] = {
                { { .name = (char *) "plain", .typeflag = '0', .mode = 0755, .uid = 1, .gid = 2, .mtime = 5, .size = 3 }, "abc" },
                { { .name = name150, .typeflag = '0', .mode = 04755, .size = 1 }, "z" },
                { { .name = name100, .linkname = (char *) "short", .typeflag = '2', .mode = 0777 }, NULL },
                { { .name = (char *) "hl", .linkname = link120, .typeflag = '1' }, NULL },
                { { .name = (char *) "bigid", .typeflag = '5', .mode = 01777, .uid = 3000000000u, .gid = 4294967295u,
                    .uname = (char *) "u", .gname = (char *) "a-group-name-that-is-longer-than-32" }, NULL },
                { { .name = (char *) "oldtime", .typeflag = '0', .mtime = -1000 }, NULL },
                { { .name = (char *) "future", .typeflag = '0', .mtime = 1ll << 40 }, NULL },
                { { .name = (char *) "dev", .typeflag = '3', .devmajor = 4000000, .devminor = 7 }, NULL },
                { { .name = (char *) "xa", .typeflag = '0', .xattrs = xattrs, .n_xattrs = 2 }, NULL },
                { { .name = (char *) "fifo", .typeflag = '6', .mode = 0600 }, NULL },
        };
        size_t n = sizeof(cases) / sizeof(cases[0]);
        StrBuf s = {};
        for (size_t i = 0; i < n; i++)
                if (tar_add_entry(&s, &cases[i].h, cases[i].data) < 0)
                        abort();
        tar_end(&s);
        ok(s.len % TAR_BLOCK == 0, "written archive is whole blocks");

        Reader r;
        const TarHeader *h;
        reader_open(&r, &s, 333);
        for (size_t i = 0; i < n; i++) {
                const TarHeader *w = &cases[i].h;
                if (!ok(next(&r, &h) == 1, "round trip '%.20s...'", w->name))
                        break;
                is_str(h->name, w->name, "  name (%zu bytes)", strlen(w->name));
                is_str(h->linkname, w->linkname ? w->linkname : "", "  linkname");
                is_int(h->typeflag, w->typeflag, "  type");
                is_int(h->mode, w->mode, "  mode %o", w->mode);
                is_int(h->uid, w->uid, "  uid");
                is_int(h->gid, w->gid, "  gid");
                is_int(h->mtime, w->mtime, "  mtime");
                is_int(h->size, w->size, "  size");
                is_str(h->uname, w->uname ? w->uname : "", "  uname");
                is_str(h->gname, w->gname ? w->gname : "", "  gname");
                if (w->typeflag == '3') {
                        is_int(h->devmajor, w->devmajor, "  devmajor");
                        is_int(h->devminor, w->devminor, "  devminor");
                }
                is_int(h->n_xattrs, w->n_xattrs, "  xattr count");
                for (size_t x = 0; x < w->n_xattrs && x < h->n_xattrs; x++) {
                        is_str(h->xattrs[x].name, w->xattrs[x].name, "  xattr %zu name", x);
                        ok(h->xattrs[x].len == w->xattrs[x].len && memcmp(h->xattrs[x].value, w->xattrs[x].value, h->xattrs[x].len) == 0,
                           "  xattr %zu value", x);
                }
                if (cases[i].data) {
                        char buf[16];
                        ssize_t got = read_all(&r, buf, sizeof(buf));
                        ok(got == (ssize_t) w->size && memcmp(buf, cases[i].data, w->size) == 0, "  data");
                }
        }
        is_int(next(&r, &h), 0, "end of written archive");
        reader_close(&r);

        /* a size that does not fit 11 octal digits goes to PAX */
        strbuf_done(&s);
        TarHeader big = { .name = (char *) "huge", .linkname = (char *) "", .typeflag = '0', .size = 9ull << 30 };
        is_int(tar_header_write(&s, &big), 0, "header of a 9 GiB file");
        reader_open(&r, &s, 4096);
        is_int(next(&r, &h), 1, "read back");
        is_int(h->size, 9ull << 30, "  9 GiB size through PAX");
        reader_close(&r);
        strbuf_done(&s);

        is_int(tar_pad_write(&s, 512), 0, "no padding after a whole block");
        is_int(s.len, 0, "  nothing written");
        tar_pad_write(&s, 513);
        is_int(s.len, 511, "511 bytes of padding after 513");
        strbuf_done(&s);
}

int main(void) {
        test_ustar();
        test_gnu();
        test_pax();
        test_errors();
        test_writer_roundtrip();
        return done();
}
