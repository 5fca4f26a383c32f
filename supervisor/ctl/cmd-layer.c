/* holdfastctl inspect / verify / cat: read an eStargz blob from a local
 * file through the same code the worker serves it with (footer, TOC,
 * index, verified chunk reads). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "common/estargz/layer.h"
#include "common/util/encode.h"
#include "common/util/macro.h"
#include "supervisor/ctl/ctl.h"

typedef struct LayerArgs {
        const char *toc_digest;
        bool no_verify;
        bool json;
        bool long_listing;
} LayerArgs;

static int exit_for(int r) {
        return r == -EBADMSG || r == -EFBIG || r == -EOPNOTSUPP || r == -ELOOP || r == -EEXIST || r == -ENOTDIR ||
                               r == -ENAMETOOLONG || r == -EOVERFLOW
                       ? CTL_EXIT_INVALID
                       : CTL_EXIT_FAILURE;
}

static int open_layer(const char *cmd, const char *path, const LayerArgs *a, int *fd, Layer **ret) {
        uint8_t want[SHA256_LEN];
        LayerOptions lo = { .allow_unverified = a->no_verify };
        if (a->toc_digest) {
                if (digest_parse(a->toc_digest, strlen(a->toc_digest), want) < 0) {
                        ctl_error("%s: --toc-digest '%s' is not a sha256 digest", cmd, a->toc_digest);
                        return CTL_EXIT_USAGE;
                }
                lo.expect_toc_digest = want;
        }
        *fd = open(path, O_RDONLY | O_CLOEXEC);
        if (*fd < 0) {
                ctl_error("%s: %s: %s", cmd, path, strerror(errno));
                return CTL_EXIT_FAILURE;
        }
        struct stat st;
        if (fstat(*fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                ctl_error("%s: %s: not a regular file", cmd, path);
                return CTL_EXIT_FAILURE;
        }
        ErrMsg err = {};
        int r = layer_open(fd_read_at, fd, (uint64_t) st.st_size, &lo, ret, &err);
        if (r < 0) {
                ctl_error("%s: %s: %s", cmd, path, err.text[0] ? err.text : strerror(-r));
                return exit_for(r);
        }
        return CTL_EXIT_OK;
}

static int parse_layer_args(const char *cmd, int argc, char **argv, LayerArgs *a, void (*help)(void), int want_args) {
        static const struct option opts[] = {
                { "toc-digest", required_argument, NULL, 't' },
                { "no-verify", no_argument, NULL, 'n' },
                { "json", no_argument, NULL, 'j' },
                { "long", no_argument, NULL, 'l' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "hl", opts, NULL)) >= 0)
                switch (c) {
                case 't': a->toc_digest = optarg; break;
                case 'n': a->no_verify = true; break;
                case 'j': a->json = true; break;
                case 'l': a->long_listing = true; break;
                case 'h': help(); return -1;
                default: return CTL_EXIT_USAGE;
                }
        if (argc - optind != want_args) {
                ctl_error("%s: wrong number of arguments; see 'holdfastctl %s --help'", cmd, cmd);
                return CTL_EXIT_USAGE;
        }
        return 0;
}

#define COMMON_OPTIONS \
"  --toc-digest DIGEST  refuse the blob unless its TOC has this sha256 (the\n" \
"                       containerd.io/snapshot/stargz/toc.digest annotation)\n" \
"  --no-verify          accept chunks that have no digest in the TOC\n" \
"  -h, --help           show this help\n"

void help_inspect(void) {
        printf(
"Usage: holdfastctl inspect [OPTIONS] BLOB\n"
"\n"
"List the files of the eStargz (or legacy stargz, or zstd:chunked) blob as a\n"
"mount would show them: whiteouts as 0:0 character devices, opaque\n"
"directories with trusted.overlay.opaque=y, prefetch landmarks hidden.\n"
"The first line names the format, TOC digest and prefetch boundary.\n"
"\n"
"Options:\n"
"  -l, --long           show inode numbers, modes, owners, sizes and times\n"
"  --json               one JSON object per path, sorted by path, with each\n"
"                       file's sha256 (reads and verifies every chunk):\n"
"                       path type mode uid gid size mtime link devmajor\n"
"                       devminor xattrs(base64) sha256 nlink\n"
COMMON_OPTIONS);
}

void help_verify(void) {
        printf(
"Usage: holdfastctl verify [OPTIONS] BLOB\n"
"\n"
"Read every chunk of BLOB, check it against its chunkDigest and each file\n"
"against its digest, and print a summary. Exits 3 at the first mismatch,\n"
"naming the chunk and both digests.\n"
"\n"
"Options:\n"
COMMON_OPTIONS);
}

void help_cat(void) {
        printf(
"Usage: holdfastctl cat [OPTIONS] BLOB PATH\n"
"\n"
"Write the regular file PATH of BLOB to stdout, verified chunk by chunk.\n"
"\n"
"Options:\n"
COMMON_OPTIONS);
}

typedef struct PathEnt {
        char *path; /* owned */
        uint32_t ino;
} PathEnt;

typedef struct Walk {
        const Index *idx;
        PathEnt *ents;
        size_t n, cap;
} Walk;

static int walk(Walk *w, uint32_t dir, char *prefix, size_t plen) {
        const IndexInode *d = index_inode(w->idx, dir);
        for (uint32_t i = 0; i < d->count; i++) {
                const IndexDirent *e = &w->idx->dirents[d->first + i];
                if (plen + e->name_len + 2 > INDEX_PATH_MAX + 2)
                        return -ENAMETOOLONG;
                size_t l = plen;
                if (l)
                        prefix[l++] = '/';
                memcpy(prefix + l, index_str(w->idx, e->name), e->name_len);
                l += e->name_len;
                prefix[l] = 0;
                if (w->n >= w->cap) {
                        size_t nc = w->cap ? w->cap * 2 : 1024;
                        PathEnt *p = reallocarray(w->ents, nc, sizeof(PathEnt));
                        if (!p)
                                return -ENOMEM;
                        w->ents = p;
                        w->cap = nc;
                }
                w->ents[w->n].path = strndup(prefix, l);
                if (!w->ents[w->n].path)
                        return -ENOMEM;
                w->ents[w->n++].ino = e->ino;
                const IndexInode *c = index_inode(w->idx, e->ino);
                /* a directory is reached by one name only, so recursion ends */
                if (S_ISDIR(c->mode)) {
                        int r = walk(w, e->ino, prefix, l);
                        if (r < 0)
                                return r;
                }
                prefix[plen] = 0;
        }
        return 0;
}

static int cmp_path(const void *a, const void *b) {
        return strcmp(((const PathEnt *) a)->path, ((const PathEnt *) b)->path);
}

static const char *type_name(uint32_t mode) {
        switch (mode & S_IFMT) {
        case S_IFDIR: return "dir";
        case S_IFREG: return "reg";
        case S_IFLNK: return "symlink";
        case S_IFCHR: return "char";
        case S_IFBLK: return "block";
        case S_IFIFO: return "fifo";
        default: return "unknown";
        }
}

static int sink_sha(void *ud, const void *data, size_t len) {
        sha256_update(ud, data, len);
        return 0;
}

typedef struct XKV {
        const char *name;
        const uint8_t *value;
        size_t len;
} XKV;

static int cmp_xkv(const void *a, const void *b) {
        return strcmp(((const XKV *) a)->name, ((const XKV *) b)->name);
}

#define GS(g, s) yajl_gen_string((g), (const unsigned char *) (s), strlen(s))

static int print_json(Layer *l, ChunkDecoder *dec, const PathEnt *pe, char (*sums)[65], ErrMsg *err) {
        const Index *idx = l->index;
        const IndexInode *in = index_inode(idx, pe->ino);
        char *sum = sums[pe->ino - 1];
        if (S_ISREG(in->mode) && !sum[0]) {
                Sha256 *sha = sha256_new();
                if (!sha)
                        return -ENOMEM;
                int r = layer_read_file(l, dec, pe->ino, sink_sha, sha, err);
                if (r >= 0) {
                        uint8_t d[SHA256_LEN];
                        char s[DIGEST_STRING_LEN + 1];
                        sha256_final(sha, d);
                        digest_format(d, s);
                        memcpy(sum, s + 7, 65);
                }
                sha256_free(sha);
                if (r < 0)
                        return r;
        }
        yajl_gen g = yajl_gen_alloc(NULL);
        if (!g)
                return -ENOMEM;
        yajl_gen_map_open(g);
        GS(g, "path"); GS(g, pe->path);
        GS(g, "type"); GS(g, type_name(in->mode));
        GS(g, "mode"); yajl_gen_integer(g, in->mode & 07777);
        GS(g, "uid"); yajl_gen_integer(g, in->uid);
        GS(g, "gid"); yajl_gen_integer(g, in->gid);
        GS(g, "size"); yajl_gen_integer(g, S_ISREG(in->mode) ? (long long) in->size : 0);
        GS(g, "mtime"); yajl_gen_integer(g, in->mtime);
        GS(g, "link");
        if (S_ISLNK(in->mode))
                yajl_gen_string(g, (const unsigned char *) index_str(idx, in->first), in->count);
        else
                GS(g, "");
        GS(g, "devmajor"); yajl_gen_integer(g, in->rdev_major);
        GS(g, "devminor"); yajl_gen_integer(g, in->rdev_minor);
        GS(g, "xattrs");
        yajl_gen_map_open(g);
        _cleanup_free_ XKV *kv = calloc((size_t) in->xattr_count + 1, sizeof(XKV));
        size_t nkv = 0;
        if (!kv) {
                yajl_gen_free(g);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < in->xattr_count; i++) {
                const IndexXattr *x = &idx->xattrs[in->xattr_first + i];
                kv[nkv++] = (XKV) { index_str(idx, x->name), (const uint8_t *) index_str(idx, x->value), x->value_len };
        }
        if (in->flags & INODE_OPAQUE)
                kv[nkv++] = (XKV) { "trusted.overlay.opaque", (const uint8_t *) "y", 1 };
        qsort(kv, nkv, sizeof(XKV), cmp_xkv);
        for (size_t i = 0; i < nkv; i++) {
                char *b = malloc(base64_encoded_size(kv[i].len));
                if (!b) {
                        yajl_gen_free(g);
                        return -ENOMEM;
                }
                base64_encode(kv[i].value, kv[i].len, b);
                GS(g, kv[i].name);
                GS(g, b);
                free(b);
        }
        yajl_gen_map_close(g);
        GS(g, "sha256"); GS(g, sum);
        GS(g, "nlink"); yajl_gen_integer(g, S_ISDIR(in->mode) ? 0 : in->nlink);
        yajl_gen_map_close(g);
        const unsigned char *buf;
        size_t len;
        yajl_gen_get_buf(g, &buf, &len);
        fwrite(buf, 1, len, stdout);
        fputc('\n', stdout);
        yajl_gen_free(g);
        return 0;
}

static void print_header(const Layer *l) {
        char toc[DIGEST_STRING_LEN + 1];
        digest_format(l->toc_digest, toc);
        printf("# %s layer, %" PRIu64 " bytes, TOC %s at %" PRIu64 ", %zu inodes, %zu chunks, ",
               layer_format_to_string(l->footer.format), l->blob_size, toc, l->footer.toc_offset,
               l->index->n_inodes, l->index->n_chunks);
        if (l->index->no_prefetch)
                printf("no prefetch\n");
        else if (l->index->prefetch_end)
                printf("prefetch up to byte %" PRIu64 "\n", l->index->prefetch_end);
        else
                printf("no landmark\n");
}

static void print_long(const Index *idx, const PathEnt *pe) {
        const IndexInode *in = index_inode(idx, pe->ino);
        static const char perm[] = "rwxrwxrwx";
        char m[11];
        m[0] = S_ISDIR(in->mode) ? 'd' : S_ISLNK(in->mode) ? 'l' : S_ISCHR(in->mode) ? 'c' : S_ISBLK(in->mode) ? 'b' : S_ISFIFO(in->mode) ? 'p' : '-';
        for (int i = 0; i < 9; i++)
                m[1 + i] = (in->mode & (1u << (8 - i))) ? perm[i] : '-';
        if (in->mode & S_ISUID) m[3] = m[3] == 'x' ? 's' : 'S';
        if (in->mode & S_ISGID) m[6] = m[6] == 'x' ? 's' : 'S';
        if (in->mode & S_ISVTX) m[9] = m[9] == 'x' ? 't' : 'T';
        m[10] = 0;
        char t[32] = "-";
        time_t tt = (time_t) in->mtime;
        struct tm tm;
        if (gmtime_r(&tt, &tm))
                strftime(t, sizeof(t), "%Y-%m-%d %H:%M", &tm);
        if (S_ISCHR(in->mode) || S_ISBLK(in->mode))
                printf("%8" PRIu32 " %s %3" PRIu32 " %6" PRIu32 " %6" PRIu32 " %5" PRIu32 ",%5" PRIu32 " %s %s", pe->ino, m, in->nlink, in->uid, in->gid, in->rdev_major, in->rdev_minor, t, pe->path);
        else
                printf("%8" PRIu32 " %s %3" PRIu32 " %6" PRIu32 " %6" PRIu32 " %11" PRIu64 " %s %s", pe->ino, m, in->nlink, in->uid, in->gid, in->size, t, pe->path);
        if (S_ISLNK(in->mode))
                printf(" -> %.*s", (int) in->count, index_str(idx, in->first));
        putchar('\n');
}

static int collect(const Index *idx, Walk *w) {
        char *prefix = malloc(INDEX_PATH_MAX + 2 + INDEX_NAME_MAX);
        if (!prefix)
                return -ENOMEM;
        prefix[0] = 0;
        *w = (Walk) { .idx = idx };
        int r = walk(w, INDEX_ROOT_INO, prefix, 0);
        free(prefix);
        if (r >= 0)
                qsort(w->ents, w->n, sizeof(PathEnt), cmp_path);
        return r;
}

static void walk_done(Walk *w) {
        for (size_t i = 0; i < w->n; i++)
                free(w->ents[i].path);
        free(w->ents);
}

int cmd_inspect(int argc, char **argv) {
        LayerArgs a = {};
        int r = parse_layer_args("inspect", argc, argv, &a, help_inspect, 1);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        const char *path = argv[optind];
        _cleanup_close_ int fd = -EBADF;
        Layer *l = NULL;
        r = open_layer("inspect", path, &a, &fd, &l);
        if (r)
                return r;
        Walk w;
        ChunkDecoder *dec = NULL;
        char (*sums)[65] = NULL;
        int ret = CTL_EXIT_FAILURE;
        if (collect(l->index, &w) < 0 || chunk_decoder_new(&dec) < 0)
                goto out;
        if (a.json) {
                sums = calloc(l->index->n_inodes, sizeof(*sums));
                if (!sums)
                        goto out;
                for (size_t i = 0; i < w.n; i++) {
                        ErrMsg err = {};
                        r = print_json(l, dec, &w.ents[i], sums, &err);
                        if (r < 0) {
                                fflush(stdout);
                                ctl_error("inspect: %s: %s: %s", path, w.ents[i].path, err.text[0] ? err.text : strerror(-r));
                                ret = exit_for(r);
                                goto out;
                        }
                }
        } else {
                print_header(l);
                for (size_t i = 0; i < w.n; i++) {
                        if (a.long_listing)
                                print_long(l->index, &w.ents[i]);
                        else
                                puts(w.ents[i].path);
                }
        }
        ret = fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
out:
        free(sums);
        chunk_decoder_free(dec);
        walk_done(&w);
        layer_free(l);
        return ret;
}

int cmd_verify(int argc, char **argv) {
        LayerArgs a = {};
        int r = parse_layer_args("verify", argc, argv, &a, help_verify, 1);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        const char *path = argv[optind];
        _cleanup_close_ int fd = -EBADF;
        Layer *l = NULL;
        r = open_layer("verify", path, &a, &fd, &l);
        if (r)
                return r;
        ChunkDecoder *dec = NULL;
        int ret = CTL_EXIT_FAILURE;
        if (chunk_decoder_new(&dec) < 0)
                goto out;
        uint64_t files = 0, bytes = 0;
        for (size_t i = 0; i < l->index->n_inodes; i++) {
                const IndexInode *in = &l->index->inodes[i];
                if (!S_ISREG(in->mode))
                        continue;
                ErrMsg err = {};
                r = layer_read_file(l, dec, i + 1, NULL, NULL, &err);
                if (r < 0) {
                        ctl_error("verify: %s: inode %zu: %s", path, i + 1, err.text[0] ? err.text : strerror(-r));
                        ret = exit_for(r);
                        goto out;
                }
                files++;
                bytes += in->size;
        }
        char toc[DIGEST_STRING_LEN + 1];
        digest_format(l->toc_digest, toc);
        printf("%s: OK: %s layer, TOC %s, %" PRIu64 " files, %zu chunks, %" PRIu64 " bytes verified\n", path,
               layer_format_to_string(l->footer.format), toc, files, l->index->n_chunks, bytes);
        ret = CTL_EXIT_OK;
out:
        chunk_decoder_free(dec);
        layer_free(l);
        return ret;
}

static int sink_stdout(void *ud, const void *data, size_t len) {
        (void) ud;
        return fwrite(data, 1, len, stdout) == len ? 0 : -EIO;
}

int cmd_cat(int argc, char **argv) {
        LayerArgs a = {};
        int r = parse_layer_args("cat", argc, argv, &a, help_cat, 2);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        const char *path = argv[optind], *file = argv[optind + 1];
        _cleanup_close_ int fd = -EBADF;
        Layer *l = NULL;
        r = open_layer("cat", path, &a, &fd, &l);
        if (r)
                return r;
        int ret = CTL_EXIT_FAILURE;
        ChunkDecoder *dec = NULL;
        uint64_t ino;
        r = index_lookup_path(l->index, file, &ino);
        if (r < 0) {
                ctl_error("cat: %s: %s: %s", path, file, strerror(-r));
                goto out;
        }
        if (!S_ISREG(index_inode(l->index, ino)->mode)) {
                ctl_error("cat: %s: %s: not a regular file", path, file);
                goto out;
        }
        if (chunk_decoder_new(&dec) < 0)
                goto out;
        ErrMsg err = {};
        r = layer_read_file(l, dec, ino, sink_stdout, NULL, &err);
        if (r < 0) {
                fflush(stdout);
                ctl_error("cat: %s: %s: %s", path, file, err.text[0] ? err.text : strerror(-r));
                ret = exit_for(r);
                goto out;
        }
        ret = fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
out:
        chunk_decoder_free(dec);
        layer_free(l);
        return ret;
}
