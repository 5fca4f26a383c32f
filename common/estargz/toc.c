/* TOC JSON -> Toc, with yajl's event parser: entries are built as the
 * bytes stream in, no DOM is kept, so a TOC of a million entries costs the
 * entries and their strings and nothing more. Unknown keys are skipped
 * (newer writers add fields); known keys with the wrong JSON type are
 * errors. */
#include "common/estargz/toc.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_parse.h>

#include "common/estargz/decompress.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"

typedef enum Field {
        F_NONE,
        F_NAME, F_TYPE, F_SIZE, F_MODTIME, F_LINKNAME, F_MODE, F_UID, F_GID,
        F_USERNAME, F_GROUPNAME, F_OFFSET, F_DEVMAJOR, F_DEVMINOR, F_XATTRS,
        F_DIGEST, F_CHUNKOFFSET, F_CHUNKSIZE, F_CHUNKDIGEST, F_INNEROFFSET,
} Field;

static const struct {
        const char *key;
        Field field;
        size_t len;
} entry_keys[] = {
        { "name", F_NAME, 4 },           { "type", F_TYPE, 4 },
        { "size", F_SIZE, 4 },           { "modtime", F_MODTIME, 7 },
        { "linkName", F_LINKNAME, 8 },   { "mode", F_MODE, 4 },
        { "uid", F_UID, 3 },             { "gid", F_GID, 3 },
        { "userName", F_USERNAME, 8 },   { "groupName", F_GROUPNAME, 9 },
        { "offset", F_OFFSET, 6 },       { "devMajor", F_DEVMAJOR, 8 },
        { "devMinor", F_DEVMINOR, 8 },   { "xattrs", F_XATTRS, 6 },
        { "digest", F_DIGEST, 6 },       { "chunkOffset", F_CHUNKOFFSET, 11 },
        { "chunkSize", F_CHUNKSIZE, 9 }, { "chunkDigest", F_CHUNKDIGEST, 11 },
        { "innerOffset", F_INNEROFFSET, 11 },
};

static const char *const type_names[_TOC_TYPE_MAX] = {
        [TOC_DIR] = "dir",         [TOC_REG] = "reg",   [TOC_SYMLINK] = "symlink",
        [TOC_HARDLINK] = "hardlink", [TOC_CHAR] = "char", [TOC_BLOCK] = "block",
        [TOC_FIFO] = "fifo",       [TOC_CHUNK] = "chunk",
};

const char *toc_type_to_string(TocType t) {
        return (unsigned) t < _TOC_TYPE_MAX ? type_names[t] : "unknown";
}

typedef enum State {
        S_TOP,          /* before the top-level object */
        S_ROOT,         /* in the top-level object, expecting a key */
        S_ROOT_VERSION,
        S_ENTRIES,      /* expecting "[" */
        S_ENTRY_LIST,   /* in the array: "{" or "]" */
        S_ENTRY,        /* in an entry, expecting a key */
        S_ENTRY_VALUE,  /* expecting the value of `field` */
        S_XATTRS,       /* in "xattrs": key or "}" */
        S_XATTR_VALUE,
        S_END,
} State;

typedef struct Parser {
        Toc *toc;
        const TocLimits *limits;
        ErrMsg *err;
        int error;           /* first error, as -errno */
        State state;
        Field field;
        unsigned skip_depth; /* > 0 while skipping an unknown value */
        bool skipping;
        size_t cap_entries, cap_xattrs, cap_digests;
        StrBuf pool;
        TocEntry cur;
        bool have_type;
        uint32_t xattr_name, xattr_name_len;
        bool version_seen;
} Parser;

static int fail(Parser *p, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(Parser *p, int r, const char *fmt, ...) {
        if (p->error == 0) {
                char msg[400];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, sizeof(msg), fmt, ap);
                va_end(ap);
                if (p->state >= S_ENTRY && p->state <= S_XATTR_VALUE)
                        errmsg_set(p->err, r, "TOC entry %zu: %s", p->toc->n_entries, msg);
                else
                        errmsg_set(p->err, r, "TOC: %s", msg);
                p->error = r;
        }
        return 0; /* tells yajl to stop */
}

static int pool_add(Parser *p, const void *s, size_t len, uint32_t *ret_off, uint32_t *ret_len) {
        if (p->pool.len + len + 1 > UINT32_MAX)
                return fail(p, -EFBIG, "string pool exceeds 4 GiB");
        *ret_off = (uint32_t) p->pool.len;
        *ret_len = (uint32_t) len;
        if (strbuf_append(&p->pool, s, len) < 0 || strbuf_putc(&p->pool, 0) < 0)
                return fail(p, -ENOMEM, "out of memory");
        return 1;
}

static int grow(void **arr, size_t *cap, size_t n, size_t size) {
        if (n < *cap)
                return 0;
        size_t nc = *cap ? *cap * 2 : 256;
        void *a = reallocarray(*arr, nc, size);
        if (!a)
                return -ENOMEM;
        *arr = a;
        *cap = nc;
        return 0;
}

/* Returns true when the event was consumed by skipping. */
static bool skip_event(Parser *p, int delta) {
        if (!p->skipping)
                return false;
        if (delta > 0)
                p->skip_depth++;
        else if (delta < 0 && --p->skip_depth == 0)
                p->skipping = false;
        return true;
}

static int after_value(Parser *p) {
        if (p->state == S_ENTRY_VALUE)
                p->state = S_ENTRY;
        else if (p->state == S_XATTR_VALUE)
                p->state = S_XATTRS;
        else if (p->state == S_ROOT_VERSION)
                p->state = S_ROOT;
        return 1;
}

static const char *field_name(Field f) {
        for (size_t i = 0; i < ELEMENTSOF(entry_keys); i++)
                if (entry_keys[i].field == f)
                        return entry_keys[i].key;
        return "?";
}

static int on_null(void *ctx) {
        Parser *p = ctx;
        if (skip_event(p, 0))
                return 1;
        if (p->state == S_ENTRY_VALUE || p->state == S_ROOT_VERSION)
                return after_value(p); /* null reads as absent, as in Go */
        return fail(p, -EBADMSG, "unexpected null");
}

static int on_boolean(void *ctx, int v) {
        Parser *p = ctx;
        (void) v;
        if (skip_event(p, 0))
                return 1;
        return fail(p, -EBADMSG, "unexpected boolean%s%s", p->state == S_ENTRY_VALUE ? " for " : "",
                    p->state == S_ENTRY_VALUE ? field_name(p->field) : "");
}

static int on_integer(void *ctx, long long v) {
        Parser *p = ctx;
        if (skip_event(p, 0))
                return 1;
        if (p->state == S_ROOT_VERSION) {
                if (v != 1)
                        return fail(p, -EOPNOTSUPP, "TOC version %lld is not supported (only 1)", v);
                p->toc->version = (int) v;
                p->version_seen = true;
                return after_value(p);
        }
        if (p->state != S_ENTRY_VALUE)
                return fail(p, -EBADMSG, "unexpected number");
        TocEntry *e = &p->cur;
        const char *f = field_name(p->field);
        switch (p->field) {
        case F_SIZE: case F_OFFSET: case F_CHUNKOFFSET: case F_CHUNKSIZE: case F_INNEROFFSET:
                if (v < 0)
                        return fail(p, -EBADMSG, "%s is negative (%lld)", f, v);
                if (p->field == F_SIZE) e->size = (uint64_t) v;
                else if (p->field == F_OFFSET) e->offset = (uint64_t) v;
                else if (p->field == F_CHUNKOFFSET) e->chunk_offset = (uint64_t) v;
                else if (p->field == F_CHUNKSIZE) e->chunk_size = (uint64_t) v;
                else e->inner_offset = (uint64_t) v;
                break;
        case F_MODE: case F_UID: case F_GID: case F_DEVMAJOR: case F_DEVMINOR:
                if (v < 0 || v > UINT32_MAX)
                        return fail(p, -EBADMSG, "%s %lld is out of range", f, v);
                if (p->field == F_MODE) e->mode = (uint32_t) v;
                else if (p->field == F_UID) e->uid = (uint32_t) v;
                else if (p->field == F_GID) e->gid = (uint32_t) v;
                else if (p->field == F_DEVMAJOR) e->devmajor = (uint32_t) v;
                else e->devminor = (uint32_t) v;
                break;
        default:
                return fail(p, -EBADMSG, "%s must not be a number", f);
        }
        return after_value(p);
}

static int on_double(void *ctx, double v) {
        Parser *p = ctx;
        (void) v;
        if (skip_event(p, 0))
                return 1;
        return fail(p, -EBADMSG, "%s must be an integer", p->state == S_ENTRY_VALUE ? field_name(p->field) : "value");
}

static int add_digest(Parser *p, const unsigned char *s, size_t len, uint32_t *ret) {
        uint8_t d[SHA256_LEN];
        int r = digest_parse((const char *) s, len, d);
        if (r == -EOPNOTSUPP)
                return fail(p, -EOPNOTSUPP, "%s '%.*s' uses an unsupported algorithm (only sha256)",
                            field_name(p->field), (int) MIN(len, (size_t) 80), s);
        if (r < 0)
                return fail(p, -EBADMSG, "%s '%.*s' is not a valid sha256 digest", field_name(p->field),
                            (int) MIN(len, (size_t) 80), s);
        Toc *t = p->toc;
        /* A file of one chunk has digest == chunkDigest: store it once. */
        if (t->n_digests > 0 && memcmp(t->digests[t->n_digests - 1], d, SHA256_LEN) == 0) {
                *ret = (uint32_t) (t->n_digests - 1);
                return 1;
        }
        if (t->n_digests >= UINT32_MAX - 1)
                return fail(p, -EFBIG, "too many digests");
        if (grow((void **) &t->digests, &p->cap_digests, t->n_digests, SHA256_LEN) < 0)
                return fail(p, -ENOMEM, "out of memory");
        memcpy(t->digests[t->n_digests], d, SHA256_LEN);
        *ret = (uint32_t) t->n_digests++;
        return 1;
}

/* Reads exactly n decimal digits. */
static bool digits(const char *s, size_t n, int *ret) {
        int v = 0;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        *ret = v;
        return true;
}

/* RFC 3339 as Go's time.Parse(time.RFC3339) accepts it:
 * YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM), with the day checked
 * against the month. Hand-parsed: it runs once per TOC entry. */
static int parse_rfc3339(const char *s, size_t len, int64_t *ret) {
        static const int mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        int y, mo, d, h, mi, sec;
        if (len < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
            !digits(s + 8, 2, &d) || s[10] != 'T' || !digits(s + 11, 2, &h) || s[13] != ':' ||
            !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &sec))
                return -EBADMSG;
        size_t q = 19;
        if (s[q] == '.') {
                size_t start = ++q;
                while (q < len && s[q] >= '0' && s[q] <= '9')
                        q++;
                if (q == start)
                        return -EBADMSG;
        }
        int64_t off = 0;
        if (q + 1 == len && s[q] == 'Z')
                ;
        else if (q + 6 == len && (s[q] == '+' || s[q] == '-') && s[q + 3] == ':') {
                int oh, om;
                if (!digits(s + q + 1, 2, &oh) || !digits(s + q + 4, 2, &om) || oh > 23 || om > 59)
                        return -EBADMSG;
                off = (int64_t) (oh * 3600 + om * 60) * (s[q] == '-' ? -1 : 1);
        } else
                return -EBADMSG;
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) || h > 23 || mi > 59 ||
            sec > 59)
                return -EBADMSG;
        /* days from civil, proleptic Gregorian */
        int64_t yy = y - (mo <= 2);
        int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
        int64_t yoe = yy - era * 400;
        int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        int64_t days = era * 146097 + doe - 719468;
        *ret = days * 86400 + h * 3600 + mi * 60 + sec - off;
        return 0;
}

static int on_string(void *ctx, const unsigned char *s, size_t len) {
        Parser *p = ctx;
        if (skip_event(p, 0))
                return 1;
        TocEntry *e = &p->cur;
        if (p->state == S_XATTR_VALUE) {
                /* Go encodes []byte as standard base64 with padding. */
                if (len % 4 != 0)
                        return fail(p, -EBADMSG, "xattr value is not base64");
                _cleanup_free_ uint8_t *out = malloc(len / 4 * 3 + 1);
                if (!out)
                        return fail(p, -ENOMEM, "out of memory");
                size_t o = 0;
                for (size_t i = 0; i < len; i += 4) {
                        uint32_t v = 0;
                        int pad = 0;
                        for (size_t j = 0; j < 4; j++) {
                                unsigned char c = s[i + j];
                                int d;
                                if (c >= 'A' && c <= 'Z') d = c - 'A';
                                else if (c >= 'a' && c <= 'z') d = c - 'a' + 26;
                                else if (c >= '0' && c <= '9') d = c - '0' + 52;
                                else if (c == '+') d = 62;
                                else if (c == '/') d = 63;
                                else if (c == '=' && i + 4 == len && j >= 2) { d = 0; pad++; }
                                else return fail(p, -EBADMSG, "xattr value is not base64");
                                if (pad && c != '=')
                                        return fail(p, -EBADMSG, "xattr value is not base64");
                                v = v << 6 | (uint32_t) d;
                        }
                        out[o++] = (uint8_t) (v >> 16);
                        if (pad < 2) out[o++] = (uint8_t) (v >> 8);
                        if (pad < 1) out[o++] = (uint8_t) v;
                }
                Toc *t = p->toc;
                if (grow((void **) &t->xattrs, &p->cap_xattrs, t->n_xattrs, sizeof(TocXattr)) < 0)
                        return fail(p, -ENOMEM, "out of memory");
                TocXattr *x = &t->xattrs[t->n_xattrs];
                x->name = p->xattr_name;
                x->name_len = p->xattr_name_len;
                if (!pool_add(p, out, o, &x->value, &x->value_len))
                        return 0;
                t->n_xattrs++;
                e->xattr_count++;
                return after_value(p);
        }
        if (p->state != S_ENTRY_VALUE)
                return fail(p, -EBADMSG, "unexpected string");
        switch (p->field) {
        case F_NAME:
                if (!pool_add(p, s, len, &e->name, &e->name_len))
                        return 0;
                break;
        case F_LINKNAME:
                if (!pool_add(p, s, len, &e->link, &e->link_len))
                        return 0;
                break;
        case F_TYPE: {
                TocType t = _TOC_TYPE_MAX;
                for (size_t i = 0; i < _TOC_TYPE_MAX; i++)
                        if (strlen(type_names[i]) == len && memcmp(type_names[i], s, len) == 0) {
                                t = (TocType) i;
                                break;
                        }
                if (t == _TOC_TYPE_MAX)
                        return fail(p, -EBADMSG, "unknown type '%.*s'", (int) MIN(len, (size_t) 32), s);
                e->type = (uint8_t) t;
                p->have_type = true;
                break;
        }
        case F_MODTIME:
                if (len > 0 && parse_rfc3339((const char *) s, len, &e->mtime) < 0)
                        return fail(p, -EBADMSG, "modtime '%.*s' is not RFC 3339", (int) MIN(len, (size_t) 64), s);
                break;
        case F_USERNAME: case F_GROUPNAME:
                /* Names are informational: the kernel sees numeric ids. */
                break;
        case F_DIGEST:
                if (len > 0 && !add_digest(p, s, len, &e->digest))
                        return 0;
                break;
        case F_CHUNKDIGEST:
                if (len > 0 && !add_digest(p, s, len, &e->chunk_digest))
                        return 0;
                break;
        default:
                return fail(p, -EBADMSG, "%s must not be a string", field_name(p->field));
        }
        return after_value(p);
}

static int on_start_map(void *ctx) {
        Parser *p = ctx;
        if (skip_event(p, +1))
                return 1;
        switch (p->state) {
        case S_TOP:
                p->state = S_ROOT;
                return 1;
        case S_ENTRY_LIST:
                if (p->toc->n_entries >= p->limits->max_entries)
                        return fail(p, -EFBIG, "more than %" PRIu64 " entries (the configured cap)", p->limits->max_entries);
                p->cur = (TocEntry) {
                        .digest = TOC_NO_DIGEST,
                        .chunk_digest = TOC_NO_DIGEST,
                        .xattr_first = (uint32_t) p->toc->n_xattrs,
                };
                p->have_type = false;
                p->state = S_ENTRY;
                return 1;
        case S_ENTRY_VALUE:
                if (p->field == F_XATTRS) {
                        if (p->cur.xattr_count > 0)
                                return fail(p, -EBADMSG, "xattrs given twice");
                        p->cur.xattr_first = (uint32_t) p->toc->n_xattrs;
                        p->state = S_XATTRS;
                        return 1;
                }
                return fail(p, -EBADMSG, "%s must not be an object", field_name(p->field));
        default:
                return fail(p, -EBADMSG, "unexpected object");
        }
}

static int on_map_key(void *ctx, const unsigned char *k, size_t len) {
        Parser *p = ctx;
        if (skip_event(p, 0))
                return 1;
        switch (p->state) {
        case S_ROOT:
                if (len == 7 && memcmp(k, "version", 7) == 0)
                        p->state = S_ROOT_VERSION;
                else if (len == 7 && memcmp(k, "entries", 7) == 0)
                        p->state = S_ENTRIES;
                else {
                        p->state = S_ROOT_VERSION; /* reused as "any root value" */
                        p->field = F_NONE;
                        p->skipping = true;
                        p->skip_depth = 0;
                }
                return 1;
        case S_ENTRY:
                p->field = F_NONE;
                for (size_t i = 0; i < ELEMENTSOF(entry_keys); i++)
                        if (entry_keys[i].len == len && memcmp(entry_keys[i].key, k, len) == 0) {
                                p->field = entry_keys[i].field;
                                break;
                        }
                p->state = S_ENTRY_VALUE;
                if (p->field == F_NONE) {
                        p->skipping = true;
                        p->skip_depth = 0;
                }
                return 1;
        case S_XATTRS:
                if (len == 0)
                        return fail(p, -EBADMSG, "empty xattr name");
                if (!pool_add(p, k, len, &p->xattr_name, &p->xattr_name_len))
                        return 0;
                if (memchr(k, 0, len))
                        return fail(p, -EBADMSG, "xattr name contains a NUL byte");
                for (uint32_t i = 0; i < p->cur.xattr_count; i++) {
                        const TocXattr *x = &p->toc->xattrs[p->cur.xattr_first + i];
                        if (x->name_len == len && memcmp(p->pool.data + x->name, k, len) == 0)
                                return fail(p, -EBADMSG, "xattr '%.*s' given twice", (int) MIN(len, (size_t) 100), k);
                }
                p->state = S_XATTR_VALUE;
                return 1;
        default:
                return fail(p, -EBADMSG, "unexpected key");
        }
}

/* Structural checks on one entry, before it is appended. */
static int entry_check(Parser *p, TocEntry *e) {
        if (!p->have_type)
                return fail(p, -EBADMSG, "entry has no type");
        if (e->type != TOC_CHUNK && e->name_len == 0)
                return fail(p, -EBADMSG, "%s entry has no name", toc_type_to_string(e->type));
        if (e->name_len > 0 && memchr(p->pool.data + e->name, 0, e->name_len))
                return fail(p, -EBADMSG, "name contains a NUL byte");
        if (e->link_len > 0 && memchr(p->pool.data + e->link, 0, e->link_len))
                return fail(p, -EBADMSG, "linkName contains a NUL byte");
        if ((e->type == TOC_SYMLINK || e->type == TOC_HARDLINK) && e->link_len == 0)
                return fail(p, -EBADMSG, "%s entry has no linkName", toc_type_to_string(e->type));
        if (e->size > INT64_MAX || e->offset > INT64_MAX || e->chunk_offset > INT64_MAX || e->chunk_size > INT64_MAX)
                return fail(p, -EOVERFLOW, "size or offset overflows");
        if (e->type != TOC_REG && e->type != TOC_CHUNK && e->size != 0)
                return fail(p, -EBADMSG, "%s entry has a size", toc_type_to_string(e->type));
        return 1;
}

static int on_end_map(void *ctx) {
        Parser *p = ctx;
        if (skip_event(p, -1)) {
                if (!p->skipping)
                        after_value(p);
                return 1;
        }
        switch (p->state) {
        case S_ROOT:
                if (!p->version_seen)
                        return fail(p, -EBADMSG, "no version field");
                p->state = S_END;
                return 1;
        case S_ENTRY: {
                if (!entry_check(p, &p->cur))
                        return 0;
                Toc *t = p->toc;
                if (grow((void **) &t->entries, &p->cap_entries, t->n_entries, sizeof(TocEntry)) < 0)
                        return fail(p, -ENOMEM, "out of memory");
                t->entries[t->n_entries++] = p->cur;
                p->state = S_ENTRY_LIST;
                return 1;
        }
        case S_XATTRS:
                p->state = S_ENTRY;
                return 1;
        default:
                return fail(p, -EBADMSG, "unexpected end of object");
        }
}

static int on_start_array(void *ctx) {
        Parser *p = ctx;
        if (skip_event(p, +1))
                return 1;
        if (p->state == S_ENTRIES) {
                p->state = S_ENTRY_LIST;
                return 1;
        }
        return fail(p, -EBADMSG, "unexpected array%s%s", p->state == S_ENTRY_VALUE ? " for " : "",
                    p->state == S_ENTRY_VALUE ? field_name(p->field) : "");
}

static int on_end_array(void *ctx) {
        Parser *p = ctx;
        if (skip_event(p, -1)) {
                if (!p->skipping)
                        after_value(p);
                return 1;
        }
        if (p->state == S_ENTRY_LIST) {
                p->state = S_ROOT;
                return 1;
        }
        return fail(p, -EBADMSG, "unexpected end of array");
}

/* Scalars inside a skipped value, or a skipped scalar value itself. */
static int wrap_scalar(Parser *p) {
        if (p->skipping && p->skip_depth == 0) {
                p->skipping = false;
                return after_value(p);
        }
        return -1;
}

static int cb_null(void *ctx) { int r = wrap_scalar(ctx); return r >= 0 ? r : on_null(ctx); }
static int cb_boolean(void *ctx, int v) { int r = wrap_scalar(ctx); return r >= 0 ? r : on_boolean(ctx, v); }
static int cb_integer(void *ctx, long long v) { int r = wrap_scalar(ctx); return r >= 0 ? r : on_integer(ctx, v); }
static int cb_double(void *ctx, double v) { int r = wrap_scalar(ctx); return r >= 0 ? r : on_double(ctx, v); }
static int cb_string(void *ctx, const unsigned char *s, size_t l) { int r = wrap_scalar(ctx); return r >= 0 ? r : on_string(ctx, s, l); }

static const yajl_callbacks callbacks = {
        .yajl_null = cb_null,
        .yajl_boolean = cb_boolean,
        .yajl_integer = cb_integer,
        .yajl_double = cb_double,
        .yajl_string = cb_string,
        .yajl_start_map = on_start_map,
        .yajl_map_key = on_map_key,
        .yajl_end_map = on_end_map,
        .yajl_start_array = on_start_array,
        .yajl_end_array = on_end_array,
};

Toc *toc_free(Toc *t) {
        if (!t)
                return NULL;
        free(t->entries);
        free(t->xattrs);
        free(t->digests);
        free(t->pool);
        free(t);
        return NULL;
}

static const TocLimits default_limits = {
        .max_json_bytes = TOC_DEFAULT_MAX_JSON_BYTES,
        .max_entries = TOC_DEFAULT_MAX_ENTRIES,
};

typedef struct JsonStream {
        Parser p;
        yajl_handle h;
        uint64_t fed;
} JsonStream;

static int json_stream_init(JsonStream *s, const TocLimits *limits, ErrMsg *err) {
        *s = (JsonStream) {};
        s->p.toc = calloc(1, sizeof(Toc));
        if (!s->p.toc)
                return -ENOMEM;
        s->p.limits = limits ? limits : &default_limits;
        s->p.err = err;
        s->h = yajl_alloc(&callbacks, NULL, &s->p);
        if (!s->h) {
                free(s->p.toc);
                return -ENOMEM;
        }
        return 0;
}

static void json_stream_done(JsonStream *s) {
        if (s->h)
                yajl_free(s->h);
        toc_free(s->p.toc);
        strbuf_done(&s->p.pool);
}

static int yajl_fail(JsonStream *s, const unsigned char *buf, size_t len) {
        if (s->p.error)
                return s->p.error;
        unsigned char *msg = yajl_get_error(s->h, 0, buf, len);
        const char *text = msg ? (const char *) msg : "parse error";
        /* yajl ends its message with a newline; ours is one line */
        size_t n = strlen(text);
        while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
                n--;
        int r = errmsg_set(s->p.err, -EBADMSG, "TOC is not valid JSON: %.*s", (int) n, text);
        if (msg)
                yajl_free_error(s->h, msg);
        return r;
}

static int json_stream_feed(JsonStream *s, const void *buf, size_t len) {
        if (s->fed + len > s->p.limits->max_json_bytes)
                return errmsg_set(s->p.err, -EFBIG, "TOC JSON is larger than the configured cap of %" PRIu64 " bytes",
                                  s->p.limits->max_json_bytes);
        s->fed += len;
        if (yajl_parse(s->h, buf, len) != yajl_status_ok)
                return yajl_fail(s, buf, len);
        return 0;
}

static int json_stream_finish(JsonStream *s, Toc **ret) {
        if (yajl_complete_parse(s->h) != yajl_status_ok)
                return yajl_fail(s, NULL, 0);
        if (s->p.state != S_END)
                return errmsg_set(s->p.err, -EBADMSG, "TOC JSON ends early");
        Toc *t = s->p.toc;
        t->pool = strbuf_steal(&s->p.pool, &t->pool_len);
        if (!t->pool) {
                t->pool = strdup("");
                if (!t->pool)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(s->p.toc);
        return 0;
}

int toc_parse_json(const void *json, size_t len, const TocLimits *limits, Toc **ret, ErrMsg *err) {
        JsonStream s;
        int r = json_stream_init(&s, limits, err);
        if (r < 0)
                return r;
        r = json_stream_feed(&s, json, len);
        if (r >= 0)
                r = json_stream_finish(&s, ret);
        json_stream_done(&s);
        return r;
}

int toc_parse_compressed(LayerFormat format, const uint8_t *data, size_t len, const TocLimits *limits,
                         Toc **ret, uint8_t ret_digest[SHA256_LEN], ErrMsg *err) {
        MemReader mem = { .data = data, .len = len };
        Decompress *dz = NULL;
        TarReader *tar = NULL;
        Sha256 *sha = NULL;
        JsonStream s = {};
        uint8_t *buf = NULL;
        ReadFn json_read;
        void *json_ud;
        int r;

        r = decompress_new(layer_format_is_gzip(format) ? COMPRESSION_GZIP : COMPRESSION_ZSTD, mem_reader_read, &mem,
                           false, &dz);
        if (r < 0)
                goto out;
        if (layer_format_is_gzip(format)) {
                const TarHeader *h;
                r = tar_reader_new(decompress_read, dz, &tar);
                if (r < 0)
                        goto out;
                r = tar_reader_next(tar, &h, err);
                if (r == -EBADMSG && err)
                        errmsg_prefix(err, r, "TOC");
                if (r < 0)
                        goto out;
                if (r == 0) {
                        r = errmsg_set(err, -EBADMSG, "TOC: the gzip member holds no tar entry");
                        goto out;
                }
                if (strcmp(h->name, ESTARGZ_TOC_TAR_NAME) != 0) {
                        r = errmsg_set(err, -EBADMSG, "TOC: tar entry is named '%.100s', not '" ESTARGZ_TOC_TAR_NAME "'", h->name);
                        goto out;
                }
                json_read = NULL;
                json_ud = tar;
        } else {
                json_read = decompress_read;
                json_ud = dz;
        }

        sha = sha256_new();
        buf = malloc(256u << 10);
        if (!sha || !buf) {
                r = -ENOMEM;
                goto out;
        }
        r = json_stream_init(&s, limits, err);
        if (r < 0)
                goto out;
        for (;;) {
                ssize_t n = json_read ? json_read(json_ud, buf, 256u << 10)
                                      : tar_reader_read(json_ud, buf, 256u << 10, err);
                if (n == -EBADMSG && json_read)
                        n = errmsg_set(err, -EBADMSG, "TOC: corrupt or truncated %s data", layer_format_is_gzip(format) ? "gzip" : "zstd");
                else if (n == -EBADMSG)
                        n = errmsg_set(err, -EBADMSG, "TOC: corrupt or truncated gzip data or tar entry");
                if (n < 0) {
                        r = (int) n;
                        goto out;
                }
                if (n == 0)
                        break;
                sha256_update(sha, buf, (size_t) n);
                r = json_stream_feed(&s, buf, (size_t) n);
                if (r < 0)
                        goto out;
        }
        r = json_stream_finish(&s, ret);
        if (r < 0)
                goto out;
        sha256_final(sha, ret_digest);
out:
        json_stream_done(&s);
        free(buf);
        sha256_free(sha);
        tar_reader_free(tar);
        decompress_free(dz);
        return r;
}
