/* eStargz writer. The input tar is spooled to an unlinked temporary file
 * (headers in memory, data on disk) so that entries can be reordered for
 * prefetch; then members are built in memory and compressed whole with
 * libdeflate: a member is at most one chunk of data plus the tar headers
 * around it. Single-threaded; one call owns everything it allocates. */
#include "common/estargz/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "common/estargz/decompress.h"
#include "common/estargz/footer.h"
#include "common/estargz/format.h"
#include "common/estargz/tar.h"
#include "common/estargz/toc.h"
#include "common/util/encode.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"

/* A member that only holds headers is cut at this size so that a layer of
 * a million directories does not become one giant member. */
#define MEMBER_SOFT_MAX (8u << 20)

typedef struct SpoolEntry {
        TarHeader h;        /* owned */
        char *clean;        /* owned: cleaned name for matching */
        uint64_t data_off;  /* in the spool file */
        uint8_t digest[SHA256_LEN]; /* of the file data */
        bool removed, moved;
} SpoolEntry;

typedef struct Writer {
        const ConvertOptions *opts;
        ErrMsg *err;
        int out_fd;
        int spool_fd;
        SpoolEntry *ents;
        size_t n_ents, cap_ents;
        uint32_t *names;    /* open addressing: clean name -> live entry */
        size_t names_mask;
        uint32_t *order;    /* entry indices in output order */
        size_t n_order, cap_order;
        StrBuf member;      /* uncompressed bytes of the open member */
        bool member_open;
        uint8_t *cbuf;      /* compressed output buffer */
        size_t cbuf_cap;
        struct libdeflate_compressor *comp;
        uint64_t out_off;
        Sha256 *diff, *blob, *chunk, *file;
        uint64_t uncompressed;
        yajl_gen toc;
        size_t n_toc_entries;
        uint8_t *data_buf;  /* owned: one chunk */
        /* userName/groupName are written only when they change for an id, as
         * the reference writer does */
        uint64_t last_uid, last_gid;
        char *last_uname, *last_gname;
} Writer;

static int out_write(Writer *w, const void *buf, size_t len) {
        const uint8_t *p = buf;
        size_t done = 0;
        while (done < len) {
                ssize_t n = write(w->out_fd, p + done, len - done);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errmsg_set(w->err, -errno, "writing the blob at byte %" PRIu64 ": %s", w->out_off + done, strerror(errno));
                }
                done += (size_t) n;
        }
        sha256_update(w->blob, buf, len);
        w->out_off += len;
        return 0;
}

static int member_close(Writer *w) {
        if (!w->member_open)
                return 0;
        size_t bound = libdeflate_gzip_compress_bound(w->comp, w->member.len);
        if (bound > w->cbuf_cap) {
                uint8_t *p = realloc(w->cbuf, bound);
                if (!p)
                        return -ENOMEM;
                w->cbuf = p;
                w->cbuf_cap = bound;
        }
        size_t n = libdeflate_gzip_compress(w->comp, w->member.data ? w->member.data : "", w->member.len, w->cbuf, w->cbuf_cap);
        if (n == 0)
                return errmsg_set(w->err, -EIO, "gzip compression failed");
        w->member.len = 0;
        w->member_open = false;
        return out_write(w, w->cbuf, n);
}

/* Appends uncompressed bytes to the open member (opening one if needed). */
static int member_put(Writer *w, const void *data, size_t len) {
        w->member_open = true;
        sha256_update(w->diff, data, len);
        w->uncompressed += len;
        return strbuf_append(&w->member, data, len);
}

static int spool_read_at(Writer *w, void *buf, size_t len, uint64_t off) {
        size_t done = 0;
        while (done < len) {
                ssize_t n = pread(w->spool_fd, (uint8_t *) buf + done, len - done, (off_t) (off + done));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return errmsg_set(w->err, n < 0 ? -errno : -EIO, "reading back the spooled input");
                done += (size_t) n;
        }
        return 0;
}

static bool utf8_valid(const char *s) {
        const uint8_t *p = (const uint8_t *) s;
        while (*p) {
                uint32_t c = *p;
                int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
                if (n < 0)
                        return false;
                p++;
                for (int i = 0; i < n; i++, p++)
                        if ((*p & 0xc0) != 0x80)
                                return false;
        }
        return true;
}

/* Name as the reference compares them: path.Clean("/"+name) without "/". */
static char *clean_name(const char *name) {
        size_t len = strlen(name);
        char *out = malloc(len + 1);
        if (!out)
                return NULL;
        size_t o = 0;
        const char *p = name;
        while (*p) {
                while (*p == '/')
                        p++;
                if (!*p)
                        break;
                const char *e = strchrnul(p, '/');
                size_t cl = (size_t) (e - p);
                if (cl == 1 && p[0] == '.')
                        ;
                else if (cl == 2 && p[0] == '.' && p[1] == '.') {
                        while (o > 0 && out[o - 1] != '/')
                                o--;
                        if (o > 0)
                                o--;
                } else {
                        if (o > 0)
                                out[o++] = '/';
                        memcpy(out + o, p, cl);
                        o += cl;
                }
                p = e;
        }
        out[o] = 0;
        return out;
}

/* Slot of clean in the name table: the live entry of that name, or the
 * empty slot where it would go. */
static uint32_t *name_slot(Writer *w, const char *clean) {
        for (size_t i = hash_bytes(clean, strlen(clean)) & w->names_mask;; i = (i + 1) & w->names_mask) {
                uint32_t e = w->names[i];
                if (e == UINT32_MAX || strcmp(w->ents[e].clean, clean) == 0)
                        return &w->names[i];
        }
}

static int names_grow(Writer *w) {
        size_t size = w->names ? (w->names_mask + 1) * 2 : 1024;
        uint32_t *t = malloc(size * sizeof(uint32_t));
        if (!t)
                return -ENOMEM;
        memset(t, 0xff, size * sizeof(uint32_t));
        free(w->names);
        w->names = t;
        w->names_mask = size - 1;
        for (size_t i = 0; i < w->n_ents; i++)
                if (!w->ents[i].removed)
                        *name_slot(w, w->ents[i].clean) = (uint32_t) i;
        return 0;
}

static bool has_dotdot(const char *name) {
        for (const char *p = name; *p;) {
                const char *e = strchrnul(p, '/');
                if (e - p == 2 && p[0] == '.' && p[1] == '.')
                        return true;
                p = *e ? e + 1 : e;
        }
        return false;
}

/* Whether the reader takes the name as it is (index.c's rules): relative,
 * "./" prefixes, one trailing '/', no empty or "." components elsewhere. */
static bool name_acceptable(const char *name) {
        const char *p = name;
        if (*p == '/')
                return false;
        while (p[0] == '.' && p[1] == '/')
                p += 2;
        if (p[0] == '.' && p[1] == 0)
                return true;
        while (*p) {
                const char *e = strchrnul(p, '/');
                if (e == p || (e - p == 1 && p[0] == '.'))
                        return false;
                if (*e == '/' && e[1] == 0)
                        return true;
                p = *e ? e + 1 : e;
        }
        return true;
}

/* The name to write: the input's own when the reader takes it, else its
 * cleaned form (absolute names, "//", "/./" are rewritten, as the
 * reference reader would read them anyway). */
static char *output_name(const char *name, const char *clean, bool dir) {
        if (name_acceptable(name))
                return strdup(name);
        char *s = NULL;
        if (clean[0] == 0)
                return strdup("./");
        return asprintf(&s, "%s%s", clean, dir ? "/" : "") < 0 ? NULL : s;
}

static int find_entry(Writer *w, const char *clean) {
        if (!w->names)
                return -1;
        uint32_t e = *name_slot(w, clean);
        return e == UINT32_MAX ? -1 : (int) e;
}

static int order_push(Writer *w, uint32_t v) {
        if (w->n_order >= w->cap_order) {
                size_t nc = w->cap_order ? w->cap_order * 2 : 256;
                uint32_t *p = reallocarray(w->order, nc, sizeof(uint32_t));
                if (!p)
                        return -ENOMEM;
                w->order = p;
                w->cap_order = nc;
        }
        w->order[w->n_order++] = v;
        return 0;
}

/* Moves name, after its parents and its hardlink target, to the output. */
static int move_rec(Writer *w, const char *name, unsigned depth) {
        if (depth > 4096)
                return errmsg_set(w->err, -ELOOP, "prefetch: hardlinks form a loop at '%.200s'", name);
        _cleanup_free_ char *clean = clean_name(name);
        if (!clean)
                return -ENOMEM;
        if (clean[0] == 0) {
                int i = find_entry(w, "");
                if (i >= 0 && !w->ents[i].moved) {
                        w->ents[i].moved = true;
                        return order_push(w, (uint32_t) i);
                }
                return 0;
        }
        int i = find_entry(w, clean);
        if (i < 0)
                return -ENOENT;
        if (w->ents[i].moved)
                return 0;
        char *slash = strrchr(clean, '/');
        _cleanup_free_ char *parent = strndup(clean, slash ? (size_t) (slash - clean) : 0);
        if (!parent)
                return -ENOMEM;
        int r = move_rec(w, parent, depth + 1);
        if (r < 0 && r != -ENOENT)
                return r;
        if (w->ents[i].h.typeflag == '1') {
                r = move_rec(w, w->ents[i].h.linkname, depth + 1);
                if (r < 0 && r != -ENOENT)
                        return r;
        }
        if (w->ents[i].moved)
                return 0;
        w->ents[i].moved = true;
        return order_push(w, (uint32_t) i);
}

/* Replays the bytes peeked to detect the compression, then reads the fd. */
typedef struct PeekReader {
        const uint8_t *p;
        size_t len, pos;
        FdReader fd;
} PeekReader;

static ssize_t peek_read(void *ud, void *buf, size_t len) {
        PeekReader *src = ud;
        if (src->pos < src->len) {
                size_t n = MIN(len, src->len - src->pos);
                memcpy(buf, src->p + src->pos, n);
                src->pos += n;
                return (ssize_t) n;
        }
        return fd_reader_read(&src->fd, buf, len);
}

static int spool_input(Writer *w, int in_fd) {
        uint8_t peek[8];
        size_t peeked = 0;
        while (peeked < sizeof(peek)) {
                ssize_t n = read(in_fd, peek + peeked, sizeof(peek) - peeked);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return errmsg_set(w->err, -errno, "reading the input tar: %s", strerror(errno));
                if (n == 0)
                        break;
                peeked += (size_t) n;
        }
        if (peeked == 0)
                return errmsg_set(w->err, -EBADMSG, "the input is empty, not a tar archive");

        PeekReader src = { peek, peeked, 0, { .fd = in_fd } };
        Compression c = compression_detect(peek, peeked);
        Decompress *dz = NULL;
        TarReader *tar = NULL;
        int r;

        r = decompress_new(c, peek_read, &src, true, &dz);
        if (r < 0)
                return r;
        r = tar_reader_new(decompress_read, dz, &tar);
        if (r < 0)
                goto out;

        uint64_t spool_off = 0;
        for (;;) {
                const TarHeader *h;
                r = tar_reader_next(tar, &h, w->err);
                if (r == -EBADMSG && c != COMPRESSION_NONE && strstr(w->err ? w->err->text : "", "truncated"))
                        errmsg_prefix(w->err, r, "input (%s)", compression_to_string(c));
                if (r < 0)
                        goto out;
                if (r == 0)
                        break;
                _cleanup_free_ char *clean = clean_name(h->name);
                if (!clean) {
                        r = -ENOMEM;
                        goto out;
                }
                if (strcmp(clean, ESTARGZ_TOC_TAR_NAME) == 0 || strcmp(clean, ESTARGZ_PREFETCH_LANDMARK) == 0 ||
                    strcmp(clean, ESTARGZ_NO_PREFETCH_LANDMARK) == 0)
                        continue;
                if (!utf8_valid(h->name) || !utf8_valid(h->linkname)) {
                        r = errmsg_set(w->err, -EBADMSG, "tar entry name or link target is not UTF-8: '%.200s'", h->name);
                        goto out;
                }
                /* ".." could point outside the layer: refused, as the reader
                 * refuses it (the reference would silently clean it away) */
                if (has_dotdot(h->name) || (h->typeflag == '1' && has_dotdot(h->linkname))) {
                        r = errmsg_set(w->err, -EBADMSG, "tar entry '%.200s'%s has a '..' path component", h->name,
                                       has_dotdot(h->name) ? "" : " (its hardlink target)");
                        goto out;
                }
                if (!w->names || (w->n_ents + 1) * 2 > w->names_mask + 1) {
                        r = names_grow(w);
                        if (r < 0)
                                goto out;
                }
                int prev = find_entry(w, clean);
                if (prev >= 0)
                        w->ents[prev].removed = true;
                if (w->n_ents >= w->cap_ents) {
                        size_t nc = w->cap_ents ? w->cap_ents * 2 : 256;
                        SpoolEntry *p = reallocarray(w->ents, nc, sizeof(SpoolEntry));
                        if (!p) {
                                r = -ENOMEM;
                                goto out;
                        }
                        w->ents = p;
                        w->cap_ents = nc;
                }
                SpoolEntry *e = &w->ents[w->n_ents];
                *e = (SpoolEntry) { .h = *h, .data_off = spool_off };
                /* deep copy: the reader's strings die at the next header */
                e->h.name = output_name(h->name, clean, h->typeflag == '5');
                if (h->typeflag == '1') {
                        _cleanup_free_ char *lclean = clean_name(h->linkname);
                        e->h.linkname = lclean ? output_name(h->linkname, lclean, false) : NULL;
                } else
                        e->h.linkname = strdup(h->linkname);
                e->h.uname = strdup(h->uname);
                e->h.gname = strdup(h->gname);
                e->h.xattrs = h->n_xattrs ? calloc(h->n_xattrs, sizeof(TarXattr)) : NULL;
                e->h.n_xattrs = 0;
                e->clean = TAKE_PTR(clean);
                w->n_ents++;
                *name_slot(w, e->clean) = (uint32_t) (w->n_ents - 1);
                if (!e->h.name || !e->h.linkname || !e->h.uname || !e->h.gname || (h->n_xattrs && !e->h.xattrs)) {
                        r = -ENOMEM;
                        goto out;
                }
                for (size_t i = 0; i < h->n_xattrs; i++) {
                        TarXattr *x = &e->h.xattrs[i];
                        x->name = strdup(h->xattrs[i].name);
                        x->value = malloc(h->xattrs[i].len ? h->xattrs[i].len : 1);
                        e->h.n_xattrs++;
                        if (!x->name || !x->value) {
                                r = -ENOMEM;
                                goto out;
                        }
                        memcpy(x->value, h->xattrs[i].value, h->xattrs[i].len);
                        x->len = h->xattrs[i].len;
                }
                sha256_reset(w->file);
                for (uint64_t left = h->size; left > 0;) {
                        ssize_t n = tar_reader_read(tar, w->data_buf, (size_t) MIN(left, (uint64_t) (1u << 20)), w->err);
                        if (n < 0) {
                                r = (int) n;
                                goto out;
                        }
                        for (ssize_t done = 0; done < n;) {
                                ssize_t k = pwrite(w->spool_fd, w->data_buf + done, (size_t) (n - done), (off_t) spool_off);
                                if (k < 0 && errno == EINTR)
                                        continue;
                                if (k < 0) {
                                        r = errmsg_set(w->err, -errno, "spooling the input: %s", strerror(errno));
                                        goto out;
                                }
                                done += k;
                                spool_off += (uint64_t) k;
                        }
                        sha256_update(w->file, w->data_buf, (size_t) n);
                        left -= (uint64_t) n;
                }
                sha256_final(w->file, e->digest);
        }
        r = 0;
out:
        tar_reader_free(tar);
        decompress_free(dz);
        return r;
}

/* ---- TOC JSON ---- */

/* Writes s as a JSON string. yajl refuses a string that is not UTF-8 and
 * emits nothing, which would pair the next key with this key's value (a
 * TOC entry whose fields slide); Go's encoding/json, which the reference
 * writer uses, replaces each bad byte with U+FFFD, and so do we. Names and
 * link targets are refused earlier; this covers user and group names and
 * xattr names. */
static void gen_string(yajl_gen g, const char *s) {
        size_t len = strlen(s);
        if (yajl_gen_string(g, (const unsigned char *) s, len) != yajl_gen_invalid_string)
                return;
        _cleanup_free_ char *fixed = malloc(len * 3 + 1);
        size_t o = 0;
        for (size_t i = 0; fixed && i < len;) {
                uint8_t c = (uint8_t) s[i];
                int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
                bool valid = n >= 0;
                for (int j = 1; valid && j <= n; j++)
                        valid = i + (size_t) j < len && ((uint8_t) s[i + j] & 0xc0) == 0x80;
                if (valid) {
                        memcpy(fixed + o, s + i, (size_t) n + 1);
                        o += (size_t) n + 1;
                        i += (size_t) n + 1;
                } else {
                        memcpy(fixed + o, "\xef\xbf\xbd", 3);
                        o += 3;
                        i++;
                }
        }
        /* out of memory: an empty string still keeps the JSON well formed */
        yajl_gen_string(g, (const unsigned char *) (fixed ? fixed : ""), fixed ? o : 0);
}

#define GEN_KEY(g, k) gen_string((g), (k))

static void gen_str(yajl_gen g, const char *k, const char *v) {
        GEN_KEY(g, k);
        gen_string(g, v);
}

static void gen_int(yajl_gen g, const char *k, long long v) {
        GEN_KEY(g, k);
        yajl_gen_integer(g, v);
}

static void gen_digest(yajl_gen g, const char *k, const uint8_t d[SHA256_LEN]) {
        char s[DIGEST_STRING_LEN + 1];
        digest_format(d, s);
        gen_str(g, k, s);
}

static int cmp_xattr(const void *a, const void *b) {
        return strcmp(((const TarXattr *) a)->name, ((const TarXattr *) b)->name);
}

static const char *type_of(char t) {
        switch (t) {
        case '1': return "hardlink";
        case '2': return "symlink";
        case '3': return "char";
        case '4': return "block";
        case '5': return "dir";
        case '6': return "fifo";
        default: return "reg";
        }
}

/* Opens a TOC entry for the header part; the caller adds the data fields
 * and closes the map. */
static int toc_entry_begin(Writer *w, const TarHeader *h) {
        yajl_gen g = w->toc;
        yajl_gen_map_open(g);
        gen_str(g, "name", h->name);
        gen_str(g, "type", type_of(h->typeflag));
        if (h->typeflag == '0' && h->size)
                gen_int(g, "size", (long long) h->size);
        if (h->mtime != 0) {
                char buf[64];
                struct tm tm;
                time_t t = (time_t) h->mtime;
                if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0)
                        return errmsg_set(w->err, -EOVERFLOW, "'%.200s': modification time out of range", h->name);
                strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
                gen_str(g, "modtime", buf);
        }
        if ((h->typeflag == '1' || h->typeflag == '2') && h->linkname[0])
                gen_str(g, "linkName", h->linkname);
        if (h->mode)
                gen_int(g, "mode", h->mode);
        if (h->uid)
                gen_int(g, "uid", (long long) h->uid);
        if (h->gid)
                gen_int(g, "gid", (long long) h->gid);
        if (h->uname[0] && (!w->last_uname || w->last_uid != h->uid || strcmp(w->last_uname, h->uname) != 0)) {
                gen_str(g, "userName", h->uname);
                free(w->last_uname);
                w->last_uname = strdup(h->uname);
                w->last_uid = h->uid;
        }
        if (h->gname[0] && (!w->last_gname || w->last_gid != h->gid || strcmp(w->last_gname, h->gname) != 0)) {
                gen_str(g, "groupName", h->gname);
                free(w->last_gname);
                w->last_gname = strdup(h->gname);
                w->last_gid = h->gid;
        }
        if (h->typeflag == '3' || h->typeflag == '4') {
                if (h->devmajor)
                        gen_int(g, "devMajor", h->devmajor);
                if (h->devminor)
                        gen_int(g, "devMinor", h->devminor);
        }
        if (h->n_xattrs > 0) {
                GEN_KEY(g, "xattrs");
                yajl_gen_map_open(g);
                qsort(h->xattrs, h->n_xattrs, sizeof(TarXattr), cmp_xattr);
                for (size_t i = 0; i < h->n_xattrs; i++) {
                        _cleanup_free_ char *b = malloc(base64_encoded_size(h->xattrs[i].len));
                        if (!b)
                                return -ENOMEM;
                        base64_encode(h->xattrs[i].value, h->xattrs[i].len, b);
                        gen_str(g, h->xattrs[i].name, b);
                }
                yajl_gen_map_close(g);
        }
        w->n_toc_entries++;
        return 0;
}

static const uint8_t zeros[1024];

static int write_entry(Writer *w, SpoolEntry *se) {
        TarHeader *h = &se->h;
        StrBuf hdr = {};
        int r = tar_header_write(&hdr, h);
        if (r >= 0)
                r = member_put(w, hdr.data, hdr.len);
        strbuf_done(&hdr);
        if (r < 0)
                return r;
        r = toc_entry_begin(w, h);
        if (r < 0)
                return r;
        if (h->typeflag == '0')
                gen_digest(w->toc, "digest", se->digest);
        if (h->typeflag != '0' || h->size == 0) {
                yajl_gen_map_close(w->toc);
                return w->member.len >= MEMBER_SOFT_MAX ? member_close(w) : 0;
        }

        /* Each chunk opens a gzip member of its own; the tar header above
         * stays at the end of the previous member, as in the reference. */
        uint64_t chunk = w->opts->chunk_size ? w->opts->chunk_size : ESTARGZ_DEFAULT_CHUNK_SIZE;
        for (uint64_t written = 0; written < h->size;) {
                uint64_t n = MIN(chunk, h->size - written);
                r = member_close(w);
                if (r < 0)
                        return r;
                if (written > 0) {
                        yajl_gen_map_open(w->toc);
                        gen_str(w->toc, "name", h->name);
                        gen_str(w->toc, "type", "chunk");
                        w->n_toc_entries++;
                }
                gen_int(w->toc, "offset", (long long) w->out_off);
                r = spool_read_at(w, w->data_buf, (size_t) n, se->data_off + written);
                if (r < 0)
                        return r;
                r = member_put(w, w->data_buf, (size_t) n);
                if (r < 0)
                        return r;
                uint8_t d[SHA256_LEN];
                sha256_buf(w->data_buf, (size_t) n, d);
                if (written)
                        gen_int(w->toc, "chunkOffset", (long long) written);
                /* a chunk shorter than the chunk size (the last) leaves
                 * chunkSize out: readers take "the rest of the file" */
                if (n == chunk)
                        gen_int(w->toc, "chunkSize", (long long) n);
                gen_digest(w->toc, "chunkDigest", d);
                yajl_gen_map_close(w->toc);
                written += n;
        }
        return member_put(w, zeros, (size_t) ((TAR_BLOCK - h->size % TAR_BLOCK) % TAR_BLOCK));
}

static int open_spool(const char *dir, ErrMsg *err) {
        int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0)
                return fd;
        char path[4096];
        snprintf(path, sizeof(path), "%s/holdfast-spool-XXXXXX", dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0)
                return errmsg_set(err, -errno, "creating a spool file in %s: %s", dir, strerror(errno));
        unlink(path);
        return fd;
}

static int add_landmark(Writer *w, const char *name) {
        /* the landmark's one byte lives at the end of the spool */
        uint64_t off = (uint64_t) lseek(w->spool_fd, 0, SEEK_END);
        uint8_t b = ESTARGZ_LANDMARK_CONTENTS;
        if (pwrite(w->spool_fd, &b, 1, (off_t) off) != 1)
                return errmsg_set(w->err, -errno, "spooling: %s", strerror(errno));
        if (w->n_ents >= w->cap_ents) {
                size_t nc = w->cap_ents ? w->cap_ents * 2 : 16;
                SpoolEntry *p = reallocarray(w->ents, nc, sizeof(SpoolEntry));
                if (!p)
                        return -ENOMEM;
                w->ents = p;
                w->cap_ents = nc;
        }
        SpoolEntry *e = &w->ents[w->n_ents];
        *e = (SpoolEntry) {
                .h = {
                        .name = strdup(name),
                        .linkname = strdup(""),
                        .uname = strdup(""),
                        .gname = strdup(""),
                        .typeflag = '0',
                        .size = 1,
                },
                .clean = strdup(name),
                .data_off = off,
                .moved = true,
        };
        sha256_buf(&b, 1, e->digest);
        w->n_ents++;
        if (!e->h.name || !e->h.linkname || !e->h.uname || !e->h.gname || !e->clean)
                return -ENOMEM;
        return order_push(w, (uint32_t) (w->n_ents - 1));
}

static int write_toc_and_footer(Writer *w, ConvertResult *res) {
        const unsigned char *json;
        size_t json_len;
        int r = member_close(w);
        if (r < 0)
                return r;
        yajl_gen_array_close(w->toc);
        yajl_gen_map_close(w->toc);
        if (yajl_gen_get_buf(w->toc, &json, &json_len) != yajl_gen_status_ok)
                return errmsg_set(w->err, -EIO, "generating the TOC JSON failed");
        sha256_buf(json, json_len, res->toc_digest);

        uint64_t toc_offset = w->out_off;
        TarHeader h = {
                .name = (char *) ESTARGZ_TOC_TAR_NAME,
                .linkname = (char *) "",
                .uname = (char *) "",
                .gname = (char *) "",
                .typeflag = '0',
                .size = json_len,
        };
        StrBuf hdr = {};
        r = tar_header_write(&hdr, &h);
        if (r >= 0)
                r = member_put(w, hdr.data, hdr.len);
        strbuf_done(&hdr);
        if (r >= 0)
                r = member_put(w, json, json_len);
        if (r >= 0)
                r = member_put(w, zeros, (size_t) ((TAR_BLOCK - json_len % TAR_BLOCK) % TAR_BLOCK));
        if (r >= 0)
                r = member_put(w, zeros, 2 * TAR_BLOCK); /* end of archive */
        if (r >= 0)
                r = member_close(w);
        if (r < 0)
                return r;
        uint8_t footer[ESTARGZ_FOOTER_SIZE];
        footer_estargz_build(toc_offset, footer);
        return out_write(w, footer, sizeof(footer));
}

int estargz_convert(int in_fd, int out_fd, const ConvertOptions *opts, ConvertResult *ret, ErrMsg *err) {
        Writer w = { .opts = opts, .err = err, .out_fd = out_fd, .spool_fd = -EBADF };
        ConvertResult res = {};
        uint64_t chunk = opts->chunk_size ? opts->chunk_size : ESTARGZ_DEFAULT_CHUNK_SIZE;
        int r;

        if (chunk > TOC_DEFAULT_MAX_CHUNK_BYTES)
                return errmsg_set(err, -EINVAL, "chunk size %" PRIu64 " is larger than %llu, the most a reader accepts by default",
                                  chunk, TOC_DEFAULT_MAX_CHUNK_BYTES);
        w.comp = libdeflate_alloc_compressor(opts->level > 0 ? opts->level : 6);
        w.diff = sha256_new();
        w.blob = sha256_new();
        w.file = sha256_new();
        w.toc = yajl_gen_alloc(NULL);
        w.data_buf = malloc((size_t) MAX(chunk, (uint64_t) (1u << 20)));
        if (!w.comp || !w.diff || !w.blob || !w.file || !w.toc || !w.data_buf) {
                r = opts->level > 12 ? errmsg_set(err, -EINVAL, "compression level %d is out of range (1-12)", opts->level) : -ENOMEM;
                goto out;
        }
        yajl_gen_config(w.toc, yajl_gen_validate_utf8, 1);

        r = open_spool(opts->tmpdir ? opts->tmpdir : "/var/tmp", err);
        if (r < 0)
                goto out;
        w.spool_fd = r;
        r = spool_input(&w, in_fd);
        if (r < 0)
                goto out;

        if (opts->n_prefetch > 0) {
                for (size_t i = 0; i < opts->n_prefetch; i++) {
                        r = move_rec(&w, opts->prefetch[i], 0);
                        if (r == -ENOENT) {
                                if (!opts->allow_missing_prefetch) {
                                        r = errmsg_set(err, -ENOENT, "prefetch path '%.200s' is not in the layer", opts->prefetch[i]);
                                        goto out;
                                }
                                res.n_missing_prefetch++;
                                continue;
                        }
                        if (r < 0)
                                goto out;
                }
                r = add_landmark(&w, ESTARGZ_PREFETCH_LANDMARK);
        } else
                r = add_landmark(&w, ESTARGZ_NO_PREFETCH_LANDMARK);
        if (r < 0)
                goto out;
        size_t n_spooled = w.n_ents;
        for (size_t i = 0; i < n_spooled; i++)
                if (!w.ents[i].removed && !w.ents[i].moved) {
                        r = order_push(&w, (uint32_t) i);
                        if (r < 0)
                                goto out;
                }

        yajl_gen_map_open(w.toc);
        gen_int(w.toc, "version", 1);
        GEN_KEY(w.toc, "entries");
        yajl_gen_array_open(w.toc);
        for (size_t i = 0; i < w.n_order; i++) {
                r = write_entry(&w, &w.ents[w.order[i]]);
                if (r < 0)
                        goto out;
        }
        r = write_toc_and_footer(&w, &res);
        if (r < 0)
                goto out;

        sha256_final(w.diff, res.diff_id);
        sha256_final(w.blob, res.blob_digest);
        res.blob_size = w.out_off;
        res.uncompressed_size = w.uncompressed;
        res.n_entries = w.n_toc_entries;
        *ret = res;
        r = 0;
out:
        for (size_t i = 0; i < w.n_ents; i++) {
                tar_header_done(&w.ents[i].h);
                free(w.ents[i].clean);
        }
        free(w.ents);
        free(w.names);
        free(w.order);
        free(w.cbuf);
        free(w.data_buf);
        free(w.last_uname);
        free(w.last_gname);
        strbuf_done(&w.member);
        if (w.comp)
                libdeflate_free_compressor(w.comp);
        sha256_free(w.diff);
        sha256_free(w.blob);
        sha256_free(w.file);
        if (w.toc)
                yajl_gen_free(w.toc);
        if (w.spool_fd >= 0)
                close(w.spool_fd);
        return r;
}
