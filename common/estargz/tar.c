/* Streaming tar reader. Understands what layer tars contain in practice:
 * POSIX ustar, GNU ('ustar  ') with 'L'/'K' long names, base-256 numbers,
 * and PAX 'x' headers (path, linkpath, size, uid, gid, mtime, uname,
 * gname, SCHILY.xattr.*, SCHILY.devmajor/devminor). PAX 'g' global headers
 * are read and ignored, as containerd's archive code does. Everything is
 * bounds-checked: the bytes come from registries. */
#include "common/estargz/tar.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/macro.h"

struct TarReader {
        ReadFn read;
        void *userdata;
        uint64_t offset;     /* archive bytes consumed */
        uint64_t remaining;  /* data bytes left in the current entry */
        uint64_t padding;    /* padding after the current entry's data */
        TarHeader hdr;       /* owned strings */
        bool done;
};

void tar_header_done(TarHeader *h) {
        free(h->name);
        free(h->linkname);
        free(h->uname);
        free(h->gname);
        for (size_t i = 0; i < h->n_xattrs; i++) {
                free(h->xattrs[i].name);
                free(h->xattrs[i].value);
        }
        free(h->xattrs);
        *h = (TarHeader) {};
}

int tar_reader_new(ReadFn fn, void *userdata, TarReader **ret) {
        TarReader *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->read = fn;
        t->userdata = userdata;
        *ret = t;
        return 0;
}

TarReader *tar_reader_free(TarReader *t) {
        if (!t)
                return NULL;
        tar_header_done(&t->hdr);
        free(t);
        return NULL;
}

uint64_t tar_reader_offset(const TarReader *t) {
        return t->offset;
}

/* Reads exactly len bytes. -EBADMSG when the input ends early. */
static int read_full(TarReader *t, void *buf, size_t len, ErrMsg *err) {
        uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = t->read(t->userdata, p, len);
                if (n < 0)
                        return errmsg_set(err, (int) n, "reading tar archive at byte %" PRIu64 ": %s", t->offset, strerror((int) -n));
                if (n == 0)
                        return errmsg_set(err, -EBADMSG, "tar archive truncated at byte %" PRIu64, t->offset);
                p += n;
                len -= (size_t) n;
                t->offset += (uint64_t) n;
        }
        return 0;
}

static int skip(TarReader *t, uint64_t len, ErrMsg *err) {
        uint8_t buf[16384];
        while (len > 0) {
                size_t n = (size_t) MIN(len, (uint64_t) sizeof(buf));
                int r = read_full(t, buf, n, err);
                if (r < 0)
                        return r;
                len -= n;
        }
        return 0;
}

/* Numeric field: octal ASCII padded with spaces/NULs, or GNU base-256 when
 * the high bit of the first byte is set. Negative values are refused. */
static int parse_number(const uint8_t *f, size_t len, uint64_t *ret) {
        uint64_t v = 0;
        if (f[0] & 0x80) {
                if (f[0] & 0x40)
                        return -EBADMSG; /* negative */
                v = f[0] & 0x3f;
                for (size_t i = 1; i < len; i++) {
                        if (v >> 56)
                                return -EOVERFLOW;
                        v = v << 8 | f[i];
                }
                *ret = v;
                return 0;
        }
        size_t i = 0;
        while (i < len && (f[i] == ' ' || f[i] == 0))
                i++;
        if (i == len) {
                *ret = 0;
                return 0;
        }
        bool any = false;
        for (; i < len && f[i] >= '0' && f[i] <= '7'; i++) {
                if (v >> 61)
                        return -EOVERFLOW;
                v = v << 3 | (uint64_t) (f[i] - '0');
                any = true;
        }
        for (; i < len; i++)
                if (f[i] != ' ' && f[i] != 0)
                        return -EBADMSG;
        if (!any)
                return -EBADMSG;
        *ret = v;
        return 0;
}

static char *field_dup(const uint8_t *f, size_t len) {
        size_t n = strnlen((const char *) f, len);
        return strndup((const char *) f, n);
}

static bool block_is_zero(const uint8_t *b) {
        for (size_t i = 0; i < TAR_BLOCK; i++)
                if (b[i])
                        return false;
        return true;
}

static int verify_checksum(const uint8_t *b) {
        uint64_t want;
        if (parse_number(b + 148, 8, &want) < 0)
                return -EBADMSG;
        uint64_t usum = 0;
        int64_t ssum = 0;
        for (size_t i = 0; i < TAR_BLOCK; i++) {
                uint8_t c = (i >= 148 && i < 156) ? ' ' : b[i];
                usum += c;
                ssum += (int8_t) c;
        }
        return (usum == want || (uint64_t) ssum == want) ? 0 : -EBADMSG;
}

/* Reads `size` bytes of a meta entry (long name, PAX) into a NUL-terminated
 * buffer and skips its padding. */
static int read_meta(TarReader *t, uint64_t size, uint64_t cap, char **ret, ErrMsg *err) {
        if (size > cap)
                return errmsg_set(err, -EBADMSG, "tar meta entry of %" PRIu64 " bytes exceeds the %" PRIu64 "-byte cap", size, cap);
        char *buf = malloc((size_t) size + 1);
        if (!buf)
                return -ENOMEM;
        int r = read_full(t, buf, (size_t) size, err);
        if (r >= 0)
                r = skip(t, (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK, err);
        if (r < 0) {
                free(buf);
                return r;
        }
        buf[size] = 0;
        *ret = buf;
        return 0;
}

typedef struct Pax {
        char *path, *linkpath, *uname, *gname;
        bool has_size, has_uid, has_gid, has_mtime, has_major, has_minor;
        uint64_t size, uid, gid, major, minor;
        int64_t mtime;
        TarXattr *xattrs;
        size_t n_xattrs;
} Pax;

static void pax_done(Pax *p) {
        free(p->path);
        free(p->linkpath);
        free(p->uname);
        free(p->gname);
        for (size_t i = 0; i < p->n_xattrs; i++) {
                free(p->xattrs[i].name);
                free(p->xattrs[i].value);
        }
        free(p->xattrs);
        *p = (Pax) {};
}

static int parse_decimal(const char *s, size_t len, uint64_t *ret) {
        uint64_t v = 0;
        if (len == 0)
                return -EBADMSG;
        for (size_t i = 0; i < len; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EBADMSG;
                if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t) (s[i] - '0'), &v))
                        return -EOVERFLOW;
        }
        *ret = v;
        return 0;
}

static int replace_str(char **dst, const char *v, size_t len) {
        char *s = strndup(v, len);
        if (!s)
                return -ENOMEM;
        if (strlen(s) != len) { /* embedded NUL in a name */
                free(s);
                return -EBADMSG;
        }
        free(*dst);
        *dst = s;
        return 0;
}

/* PAX records are "<len> <key>=<value>\n" where len counts the whole record. */
static int parse_pax(char *buf, size_t size, Pax *pax, ErrMsg *err) {
        size_t pos = 0;
        while (pos < size) {
                size_t i = pos;
                uint64_t reclen = 0;
                while (i < size && buf[i] >= '0' && buf[i] <= '9' && i - pos < 20)
                        i++;
                if (i == pos || i >= size || buf[i] != ' ' || parse_decimal(buf + pos, i - pos, &reclen) < 0 ||
                    reclen < (i - pos) + 3 || reclen > size - pos || buf[pos + reclen - 1] != '\n')
                        return errmsg_set(err, -EBADMSG, "malformed PAX record at byte %zu of the extended header", pos);
                const char *key = buf + i + 1;
                const char *end = buf + pos + reclen - 1; /* the '\n' */
                const char *eq = memchr(key, '=', (size_t) (end - key));
                if (!eq)
                        return errmsg_set(err, -EBADMSG, "PAX record without '=' at byte %zu", pos);
                size_t klen = (size_t) (eq - key);
                if (klen == 0 || memchr(key, 0, klen))
                        return errmsg_set(err, -EBADMSG, "PAX record with an empty key or a NUL in its key at byte %zu", pos);
                const char *val = eq + 1;
                size_t vlen = (size_t) (end - val);
                int r = 0;
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(key, s, klen) == 0)
                if (KEY("path"))
                        r = replace_str(&pax->path, val, vlen);
                else if (KEY("linkpath"))
                        r = replace_str(&pax->linkpath, val, vlen);
                else if (KEY("uname"))
                        r = replace_str(&pax->uname, val, vlen);
                else if (KEY("gname"))
                        r = replace_str(&pax->gname, val, vlen);
                else if (KEY("size"))
                        r = parse_decimal(val, vlen, &pax->size), pax->has_size = true;
                else if (KEY("uid"))
                        r = parse_decimal(val, vlen, &pax->uid), pax->has_uid = true;
                else if (KEY("gid"))
                        r = parse_decimal(val, vlen, &pax->gid), pax->has_gid = true;
                else if (KEY("SCHILY.devmajor"))
                        r = parse_decimal(val, vlen, &pax->major), pax->has_major = true;
                else if (KEY("SCHILY.devminor"))
                        r = parse_decimal(val, vlen, &pax->minor), pax->has_minor = true;
                else if (KEY("mtime")) {
                        /* Seconds with an optional fraction. The TOC keeps whole
                         * seconds, rounded to the nearest with halves going up,
                         * as Go's Time.Round(time.Second) does for the reference
                         * writer: 0.5 -> 1, -2.5 -> -2, -2.7 -> -3. */
                        const char *dot = memchr(val, '.', vlen);
                        size_t ilen = dot ? (size_t) (dot - val) : vlen;
                        bool neg = ilen > 0 && val[0] == '-';
                        uint64_t s = 0;
                        r = parse_decimal(val + neg, ilen - neg, &s);
                        if (r >= 0 && s >= INT64_MAX)
                                r = -EOVERFLOW;
                        int cmp_half = 0; /* fraction compared with .5 */
                        if (r >= 0 && dot) {
                                const char *f = dot + 1, *fend = val + vlen;
                                if (f == fend)
                                        r = -EBADMSG;
                                for (const char *q = f; r >= 0 && q < fend; q++)
                                        if (*q < '0' || *q > '9')
                                                r = -EBADMSG;
                                if (r >= 0) {
                                        if (*f > '5')
                                                cmp_half = 1;
                                        else if (*f < '5')
                                                cmp_half = -1;
                                        else
                                                for (const char *q = f + 1; q < fend; q++)
                                                        if (*q != '0') {
                                                                cmp_half = 1;
                                                                break;
                                                        }
                                }
                        }
                        if (r >= 0) {
                                int64_t v = (int64_t) s;
                                if (!neg && cmp_half >= 0 && dot)
                                        v++;
                                pax->mtime = neg ? -(v + (cmp_half > 0)) : v;
                                pax->has_mtime = true;
                        }
                } else if (klen > 13 && memcmp(key, "SCHILY.xattr.", 13) == 0) {
                        TarXattr *x = reallocarray(pax->xattrs, pax->n_xattrs + 1, sizeof(TarXattr));
                        if (!x)
                                return -ENOMEM;
                        pax->xattrs = x;
                        x = &x[pax->n_xattrs];
                        x->name = strndup(key + 13, klen - 13);
                        x->value = malloc(vlen ? vlen : 1);
                        if (!x->name || !x->value) {
                                free(x->name);
                                free(x->value);
                                return -ENOMEM;
                        }
                        memcpy(x->value, val, vlen);
                        x->len = vlen;
                        pax->n_xattrs++;
                }
#undef KEY
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        return errmsg_set(err, -EBADMSG, "bad value for PAX key '%.*s'", (int) MIN(klen, (size_t) 64), key);
                pos += reclen;
        }
        return 0;
}

int tar_reader_next(TarReader *t, const TarHeader **ret, ErrMsg *err) {
        _cleanup_free_ char *longname = NULL, *longlink = NULL;
        Pax pax = {};
        uint8_t b[TAR_BLOCK];
        int r;

        if (t->done)
                return 0;
        r = skip(t, t->remaining + t->padding, err);
        if (r < 0)
                goto fail;
        t->remaining = t->padding = 0;
        tar_header_done(&t->hdr);

        for (unsigned meta = 0;; meta++) {
                if (meta > 64) {
                        r = errmsg_set(err, -EBADMSG, "more than 64 consecutive tar meta entries at byte %" PRIu64, t->offset);
                        goto fail;
                }
                uint64_t at = t->offset;
                ssize_t n = t->read(t->userdata, b, 1);
                if (n == 0 && meta == 0) {
                        /* End of input without the two zero blocks: accepted, as
                         * GNU tar does for an archive that was cut at an entry
                         * boundary; layers written by the reference end this way
                         * before their TOC entry. */
                        t->done = true;
                        r = 0;
                        goto fail;
                }
                if (n < 0) {
                        r = errmsg_set(err, (int) n, "reading tar archive: %s", strerror((int) -n));
                        goto fail;
                }
                if (n == 0) {
                        r = errmsg_set(err, -EBADMSG, "tar archive ends after a meta entry at byte %" PRIu64, at);
                        goto fail;
                }
                t->offset += 1;
                r = read_full(t, b + 1, TAR_BLOCK - 1, err);
                if (r < 0)
                        goto fail;
                if (block_is_zero(b)) {
                        if (meta > 0) {
                                r = errmsg_set(err, -EBADMSG, "tar archive ends after a meta entry at byte %" PRIu64, at);
                                goto fail;
                        }
                        t->done = true;
                        r = 0;
                        goto fail;
                }
                if (verify_checksum(b) < 0) {
                        r = errmsg_set(err, -EBADMSG, "tar header at byte %" PRIu64 " has a bad checksum", at);
                        goto fail;
                }
                uint64_t size;
                if (parse_number(b + 124, 12, &size) < 0 || size > INT64_MAX) {
                        r = errmsg_set(err, -EBADMSG, "tar header at byte %" PRIu64 " has a bad size field", at);
                        goto fail;
                }
                char type = (char) b[156];
                if (type == 'L' || type == 'K') {
                        char *s;
                        r = read_meta(t, size, TAR_NAME_MAX, &s, err);
                        if (r < 0)
                                goto fail;
                        if (type == 'L') {
                                free(longname);
                                longname = s;
                        } else {
                                free(longlink);
                                longlink = s;
                        }
                        continue;
                }
                if (type == 'x' || type == 'g') {
                        _cleanup_free_ char *s = NULL;
                        r = read_meta(t, size, TAR_PAX_MAX, &s, err);
                        if (r < 0)
                                goto fail;
                        if (type == 'x') {
                                r = parse_pax(s, (size_t) size, &pax, err);
                                if (r < 0)
                                        goto fail;
                        }
                        continue;
                }

                TarHeader *h = &t->hdr;
                switch (type) {
                case 0: case '0': case '7': h->typeflag = '0'; break;
                case '1': case '2': case '3': case '4': case '5': case '6': h->typeflag = type; break;
                default:
                        r = errmsg_set(err, -EBADMSG, "tar entry at byte %" PRIu64 " has unsupported type '%c' (0x%02x)",
                                       at, type >= 32 && type < 127 ? type : '?', (unsigned char) type);
                        goto fail;
                }

                bool posix = memcmp(b + 257, "ustar\0", 6) == 0;
                if (pax.path)
                        h->name = TAKE_PTR(pax.path);
                else if (longname)
                        h->name = TAKE_PTR(longname);
                else if (posix && b[345]) {
                        _cleanup_free_ char *prefix = field_dup(b + 345, 155), *base = field_dup(b, 100);
                        if (prefix && base && asprintf(&h->name, "%s/%s", prefix, base) < 0)
                                h->name = NULL;
                } else
                        h->name = field_dup(b, 100);
                if (pax.linkpath)
                        h->linkname = TAKE_PTR(pax.linkpath);
                else if (longlink)
                        h->linkname = TAKE_PTR(longlink);
                else
                        h->linkname = field_dup(b + 157, 100);
                h->uname = pax.uname ? TAKE_PTR(pax.uname) : field_dup(b + 265, 32);
                h->gname = pax.gname ? TAKE_PTR(pax.gname) : field_dup(b + 297, 32);
                if (!h->name || !h->linkname || !h->uname || !h->gname) {
                        r = -ENOMEM;
                        goto fail;
                }
                /* pre-POSIX archives mark directories with a NUL type and a
                 * trailing slash, as Go's archive/tar also reads them */
                if (type == 0 && h->name[0] && h->name[strlen(h->name) - 1] == '/')
                        h->typeflag = '5';
                if (h->name[0] == 0) {
                        r = errmsg_set(err, -EBADMSG, "tar entry at byte %" PRIu64 " has an empty name", at);
                        goto fail;
                }

                uint64_t mode, uid, gid, mtime, major = 0, minor = 0;
                if (parse_number(b + 100, 8, &mode) < 0 || parse_number(b + 108, 8, &uid) < 0 ||
                    parse_number(b + 116, 8, &gid) < 0 || parse_number(b + 136, 12, &mtime) < 0 ||
                    ((type == '3' || type == '4') &&
                     (parse_number(b + 329, 8, &major) < 0 || parse_number(b + 337, 8, &minor) < 0))) {
                        r = errmsg_set(err, -EBADMSG, "tar header of '%s' has a malformed numeric field", h->name);
                        goto fail;
                }
                h->mode = (uint32_t) (mode & 07777);
                h->uid = pax.has_uid ? pax.uid : uid;
                h->gid = pax.has_gid ? pax.gid : gid;
                h->mtime = pax.has_mtime ? pax.mtime : (int64_t) MIN(mtime, (uint64_t) INT64_MAX);
                if (pax.has_size)
                        size = pax.size;
                if (pax.has_major)
                        major = pax.major;
                if (pax.has_minor)
                        minor = pax.minor;
                if (major > UINT32_MAX || minor > UINT32_MAX || h->uid > UINT32_MAX || h->gid > UINT32_MAX || size > INT64_MAX) {
                        r = errmsg_set(err, -EOVERFLOW, "tar header of '%s': id, size or device number out of range", h->name);
                        goto fail;
                }
                h->devmajor = (uint32_t) major;
                h->devminor = (uint32_t) minor;
                h->xattrs = TAKE_PTR(pax.xattrs);
                h->n_xattrs = pax.n_xattrs;
                pax.n_xattrs = 0;
                /* Only regular files carry data; other types' size fields are
                 * ignored, as Go's archive/tar does. */
                h->size = h->typeflag == '0' ? size : 0;
                t->remaining = h->size;
                t->padding = (TAR_BLOCK - h->size % TAR_BLOCK) % TAR_BLOCK;
                pax_done(&pax);
                *ret = h;
                return 1;
        }

fail:
        pax_done(&pax);
        return r;
}

ssize_t tar_reader_read(TarReader *t, void *buf, size_t len, ErrMsg *err) {
        if (t->remaining == 0 || len == 0)
                return 0;
        size_t want = (size_t) MIN((uint64_t) len, t->remaining);
        ssize_t n = t->read(t->userdata, buf, want);
        if (n < 0)
                return errmsg_set(err, (int) n, "reading tar data of '%s': %s", t->hdr.name, strerror((int) -n));
        if (n == 0)
                return errmsg_set(err, -EBADMSG, "tar archive truncated inside the data of '%s'", t->hdr.name);
        t->remaining -= (uint64_t) n;
        t->offset += (uint64_t) n;
        return n;
}

/* ---- writer ---- */

static void put_octal(uint8_t *f, size_t len, uint64_t v) {
        /* len-1 digits and a NUL, zero padded */
        f[len - 1] = 0;
        for (size_t i = len - 1; i > 0; i--) {
                f[i - 1] = (uint8_t) ('0' + (v & 7));
                v >>= 3;
        }
}

static bool fits_octal(uint64_t v, size_t len) {
        return v < (1ull << (3 * (len - 1)));
}

static int pax_record(StrBuf *b, const char *key, const void *val, size_t vlen) {
        /* the length prefix counts itself: find the fixed point */
        size_t base = strlen(key) + vlen + 3; /* ' ', '=', '\n' */
        size_t digits = 1;
        for (size_t tot = base + digits; snprintf(NULL, 0, "%zu", tot) != (int) digits; tot = base + digits)
                digits++;
        int r = strbuf_printf(b, "%zu %s=", base + digits, key);
        if (r < 0)
                return r;
        r = strbuf_append(b, val, vlen);
        if (r < 0)
                return r;
        return strbuf_putc(b, '\n');
}

static void header_block(uint8_t *b, const char *name, char type, uint32_t mode, uint64_t uid, uint64_t gid,
                         uint64_t size, int64_t mtime, const char *link, const char *uname, const char *gname,
                         uint32_t major, uint32_t minor) {
        memset(b, 0, TAR_BLOCK);
        strncpy((char *) b, name, 100);
        put_octal(b + 100, 8, mode & 07777);
        put_octal(b + 108, 8, fits_octal(uid, 8) ? uid : 0);
        put_octal(b + 116, 8, fits_octal(gid, 8) ? gid : 0);
        put_octal(b + 124, 12, fits_octal(size, 12) ? size : 0);
        put_octal(b + 136, 12, mtime >= 0 && fits_octal((uint64_t) mtime, 12) ? (uint64_t) mtime : 0);
        memset(b + 148, ' ', 8);
        b[156] = (uint8_t) type;
        strncpy((char *) b + 157, link ? link : "", 100);
        memcpy(b + 257, "ustar\0" "00", 8);
        strncpy((char *) b + 265, uname ? uname : "", 32);
        strncpy((char *) b + 297, gname ? gname : "", 32);
        put_octal(b + 329, 8, fits_octal(major, 8) ? major : 0);
        put_octal(b + 337, 8, fits_octal(minor, 8) ? minor : 0);
        uint64_t sum = 0;
        for (size_t i = 0; i < TAR_BLOCK; i++)
                sum += b[i];
        put_octal(b + 148, 7, sum);
        b[155] = ' ';
}

int tar_header_write(StrBuf *out, const TarHeader *h) {
        StrBuf pax = {};
        char num[32];
        int r = 0;
        const char *link = h->linkname ? h->linkname : "";

        if (strlen(h->name) > 100)
                r = pax_record(&pax, "path", h->name, strlen(h->name));
        if (r >= 0 && strlen(link) > 100)
                r = pax_record(&pax, "linkpath", link, strlen(link));
        if (r >= 0 && h->uname && strlen(h->uname) > 32)
                r = pax_record(&pax, "uname", h->uname, strlen(h->uname));
        if (r >= 0 && h->gname && strlen(h->gname) > 32)
                r = pax_record(&pax, "gname", h->gname, strlen(h->gname));
        if (r >= 0 && !fits_octal(h->uid, 8))
                r = pax_record(&pax, "uid", num, (size_t) snprintf(num, sizeof(num), "%" PRIu64, h->uid));
        if (r >= 0 && !fits_octal(h->gid, 8))
                r = pax_record(&pax, "gid", num, (size_t) snprintf(num, sizeof(num), "%" PRIu64, h->gid));
        if (r >= 0 && !fits_octal(h->size, 12))
                r = pax_record(&pax, "size", num, (size_t) snprintf(num, sizeof(num), "%" PRIu64, h->size));
        if (r >= 0 && (h->mtime < 0 || !fits_octal((uint64_t) h->mtime, 12)))
                r = pax_record(&pax, "mtime", num, (size_t) snprintf(num, sizeof(num), "%" PRId64, h->mtime));
        if (r >= 0 && !fits_octal(h->devmajor, 8))
                r = pax_record(&pax, "SCHILY.devmajor", num, (size_t) snprintf(num, sizeof(num), "%" PRIu32, h->devmajor));
        if (r >= 0 && !fits_octal(h->devminor, 8))
                r = pax_record(&pax, "SCHILY.devminor", num, (size_t) snprintf(num, sizeof(num), "%" PRIu32, h->devminor));
        for (size_t i = 0; r >= 0 && i < h->n_xattrs; i++) {
                _cleanup_free_ char *key = NULL;
                if (asprintf(&key, "SCHILY.xattr.%s", h->xattrs[i].name) < 0)
                        r = -ENOMEM;
                else
                        r = pax_record(&pax, key, h->xattrs[i].value, h->xattrs[i].len);
        }
        if (r < 0)
                goto done;

        uint8_t b[TAR_BLOCK];
        if (pax.len > 0) {
                header_block(b, "PaxHeaders/entry", 'x', 0644, 0, 0, pax.len, 0, NULL, NULL, NULL, 0, 0);
                r = strbuf_append(out, b, TAR_BLOCK);
                if (r >= 0)
                        r = strbuf_append(out, pax.data, pax.len);
                if (r >= 0)
                        r = tar_pad_write(out, pax.len);
                if (r < 0)
                        goto done;
        }
        header_block(b, h->name, h->typeflag, h->mode, h->uid, h->gid, h->size, h->mtime, link, h->uname, h->gname,
                     h->devmajor, h->devminor);
        r = strbuf_append(out, b, TAR_BLOCK);
done:
        strbuf_done(&pax);
        return r;
}

int tar_pad_write(StrBuf *out, uint64_t data_len) {
        static const uint8_t zero[TAR_BLOCK];
        size_t pad = (size_t) ((TAR_BLOCK - data_len % TAR_BLOCK) % TAR_BLOCK);
        return strbuf_append(out, zero, pad);
}
