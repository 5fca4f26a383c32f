/* Tests of common/estargz/index: deterministic numbering, the tree's
 * shape (implicit parents, hardlinks, nlink), overlay whiteouts and
 * landmarks, every tree-wide refusal, lookups at chunk boundaries, and a
 * 200,000-entry TOC. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/estargz/index.h"
#include "common/estargz/toc.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"
#include "tests/unit/tap.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "sha256:3333333333333333333333333333333333333333333333333333333333333333"
#define E(body) "{\"version\":1,\"entries\":[" body "]}"
#define TOC_OFF (1ull << 40)

static int build_fmt(const char *json, uint64_t toc_offset, LayerFormat fmt, Index **ret, ErrMsg *err) {
        Toc *t = NULL;
        *err = (ErrMsg) {};
        int r = toc_parse_json(json, strlen(json), NULL, &t, err);
        if (r < 0) {
                diag("TOC does not parse: %s", err->text);
                return r;
        }
        IndexOptions o = { .toc_offset = toc_offset, .format = fmt };
        r = index_build(t, &o, ret, err);
        toc_free(t);
        return r;
}

static int build(const char *json, Index **ret, ErrMsg *err) {
        return build_fmt(json, TOC_OFF, LAYER_FORMAT_ESTARGZ, ret, err);
}

static uint64_t ino_of(const Index *idx, const char *path) {
        uint64_t ino = 0;
        if (index_lookup_path(idx, path, &ino) < 0)
                return 0;
        return ino;
}

/* ---- numbering ---- */

static const char *tree_a = E(
        "{\"name\":\"./\",\"type\":\"dir\",\"mode\":493},"
        "{\"name\":\"z/\",\"type\":\"dir\",\"mode\":448},"
        "{\"name\":\"z/b\",\"type\":\"reg\"},"
        "{\"name\":\"bin/\",\"type\":\"dir\"},"
        "{\"name\":\"bin/sh\",\"type\":\"reg\",\"mode\":493},"
        "{\"name\":\"usr/lib/x\",\"type\":\"reg\"},"
        "{\"name\":\"a\",\"type\":\"reg\"},"
        "{\"name\":\"B\",\"type\":\"symlink\",\"linkName\":\"bin/sh\"},"
        "{\"name\":\"bin/ash\",\"type\":\"hardlink\",\"linkName\":\"bin/sh\"},"
        "{\"name\":\"a\\u00e9\",\"type\":\"reg\"},"
        "{\"name\":\"a-\",\"type\":\"reg\"}");

/* the same tree, entries in another order (parents after children too) */
static const char *tree_b = E(
        "{\"name\":\"a-\",\"type\":\"reg\"},"
        "{\"name\":\"usr/lib/x\",\"type\":\"reg\"},"
        "{\"name\":\"z/b\",\"type\":\"reg\"},"
        "{\"name\":\"B\",\"type\":\"symlink\",\"linkName\":\"bin/sh\"},"
        "{\"name\":\"bin/sh\",\"type\":\"reg\",\"mode\":493},"
        "{\"name\":\"a\\u00e9\",\"type\":\"reg\"},"
        "{\"name\":\"z\",\"type\":\"dir\",\"mode\":448},"
        "{\"name\":\"./bin/ash\",\"type\":\"hardlink\",\"linkName\":\"./bin/sh\"},"
        "{\"name\":\"a\",\"type\":\"reg\"},"
        "{\"name\":\"bin\",\"type\":\"dir\"},"
        "{\"name\":\".\",\"type\":\"dir\",\"mode\":493}");

static bool same_index(const Index *x, const Index *y) {
        if (x->n_inodes != y->n_inodes || x->n_dirents != y->n_dirents)
                return false;
        for (size_t i = 0; i < x->n_inodes; i++) {
                const IndexInode *a = &x->inodes[i], *b = &y->inodes[i];
                if (a->mode != b->mode || a->nlink != b->nlink || a->parent != b->parent || a->size != b->size ||
                    a->count != b->count || a->flags != b->flags)
                        return false;
        }
        for (size_t i = 0; i < x->n_dirents; i++) {
                const IndexDirent *a = &x->dirents[i], *b = &y->dirents[i];
                if (a->ino != b->ino || a->name_len != b->name_len ||
                    memcmp(index_str(x, a->name), index_str(y, b->name), a->name_len) != 0)
                        return false;
        }
        return true;
}

static void test_numbering(void) {
        Index *a = NULL, *a2 = NULL, *b = NULL;
        ErrMsg err;
        if (!is_int(build(tree_a, &a, &err), 0, "build tree A (%s)", err.text))
                return;
        /* root's children in byte order: "B" < "a" < "a-" < "a\xc3\xa9" < "bin" < "usr" < "z" */
        is_int(ino_of(a, ""), 1, "root is 1");
        is_int(ino_of(a, "B"), 2, "B is 2 (uppercase sorts first)");
        is_int(ino_of(a, "a"), 3, "a is 3");
        is_int(ino_of(a, "a-"), 4, "a- is 4");
        is_int(ino_of(a, "a\xc3\xa9"), 5, "a\\u00e9 is 5 (UTF-8 bytes sort after ASCII)");
        is_int(ino_of(a, "bin"), 6, "bin is 6");
        is_int(ino_of(a, "usr"), 7, "usr is 7");
        is_int(ino_of(a, "z"), 8, "z is 8");
        is_int(ino_of(a, "bin/ash"), 9, "bin/ash is 9 (first name of the shared inode)");
        is_int(ino_of(a, "bin/sh"), 9, "bin/sh shares it");
        is_int(ino_of(a, "usr/lib"), 10, "usr/lib is 10");
        is_int(ino_of(a, "z/b"), 11, "z/b is 11");
        is_int(ino_of(a, "usr/lib/x"), 12, "usr/lib/x is 12");
        is_int(a->n_inodes, 12, "12 inodes");

        bool parents_first = true;
        for (size_t i = 1; i < a->n_inodes; i++)
                if (a->inodes[i].parent >= i + 1)
                        parents_first = false;
        ok(parents_first, "every inode's parent has a smaller number");

        /* each directory's dirents are one sorted run */
        bool sorted = true;
        for (size_t i = 0; i < a->n_inodes; i++) {
                const IndexInode *in = &a->inodes[i];
                if (!S_ISDIR(in->mode))
                        continue;
                for (uint32_t k = 1; k < in->count; k++) {
                        const IndexDirent *p = &a->dirents[in->first + k - 1], *q = &a->dirents[in->first + k];
                        int c = memcmp(index_str(a, p->name), index_str(a, q->name), MIN(p->name_len, q->name_len));
                        if (c > 0 || (c == 0 && p->name_len >= q->name_len))
                                sorted = false;
                }
        }
        ok(sorted, "dirents of each directory are sorted bytewise");

        is_int(build(tree_a, &a2, &err), 0, "build tree A again");
        ok(a2 && same_index(a, a2), "same TOC, same index");
        is_int(build(tree_b, &b, &err), 0, "build tree B, same tree in another order (%s)", err.text);
        ok(b && same_index(a, b), "same tree, same numbers and dirents");

        const IndexInode *root = index_inode(a, 1);
        is_int(root->mode, S_IFDIR | 0755, "root mode from its entry");
        is_int(root->nlink, 2 + 3, "root nlink = 2 + 3 subdirectories");
        is_int(root->parent, 1, "root's parent is itself");
        const IndexInode *usr = index_inode(a, 7);
        is_int(usr->mode, S_IFDIR | 0755, "implicit dir usr has mode 0755");
        is_int(usr->nlink, 3, "usr nlink = 2 + 1");
        is_int(usr->uid, 0, "implicit dir owned by root");
        is_int(index_inode(a, 10)->nlink, 2, "leaf dir nlink 2");
        is_int(index_inode(a, 8)->mode, S_IFDIR | 0700, "z mode from its entry");
        is_int(index_inode(a, 9)->nlink, 2, "bin/sh + bin/ash: nlink 2");
        is_int(index_inode(a, 9)->mode, S_IFREG | 0755, "hardlinked inode has the target's mode");
        is_int(index_inode(a, 9)->parent, 6, "hardlinked inode's parent is bin");
        is_int(index_inode(a, 12)->parent, 10, "usr/lib/x's parent is usr/lib");
        const IndexInode *lnk = index_inode(a, 2);
        is_int(lnk->mode & S_IFMT, S_IFLNK, "B is a symlink");
        is_int(lnk->size, 6, "symlink size is the target length");
        ok(lnk->count == 6 && memcmp(index_str(a, lnk->first), "bin/sh", 6) == 0, "symlink target in the pool");
        ok(index_inode(a, 0) == NULL && index_inode(a, 13) == NULL, "index_inode out of range is NULL");

        index_free(a);
        index_free(a2);
        index_free(b);
        ok(index_free(NULL) == NULL, "index_free(NULL)");
}

static void test_shape(void) {
        const char *json = E(
                "{\"name\":\"./f\",\"type\":\"reg\",\"size\":1,\"offset\":10,\"uid\":5,\"gid\":6,\"modtime\":\"2000-01-01T00:00:00Z\","
                "\"xattrs\":{\"user.k\":\"dg==\"}},"
                "{\"name\":\"h1\",\"type\":\"hardlink\",\"linkName\":\"f\"},"
                "{\"name\":\"./d/h2\",\"type\":\"hardlink\",\"linkName\":\"./f\"},"
                "{\"name\":\"h3\",\"type\":\"hardlink\",\"linkName\":\"h1\"},"
                "{\"name\":\"h4\",\"type\":\"hardlink\",\"linkName\":\"/f\"},"
                "{\"name\":\"./././e/\",\"type\":\"dir\",\"mode\":1023},"
                "{\"name\":\"e/sub/\",\"type\":\"dir\"},"
                "{\"name\":\"e/sub2\",\"type\":\"dir\"},"
                "{\"name\":\"e/file\",\"type\":\"reg\"},"
                "{\"name\":\"e/null\",\"type\":\"char\",\"devMajor\":1,\"devMinor\":3,\"mode\":438},"
                "{\"name\":\"e/fifo\",\"type\":\"fifo\"},"
                "{\"name\":\"e/sda\",\"type\":\"block\",\"devMajor\":8}");
        Index *idx = NULL;
        ErrMsg err;
        if (!is_int(build(json, &idx, &err), 0, "build (%s)", err.text))
                return;
        uint64_t f = ino_of(idx, "f");
        ok(f && ino_of(idx, "h1") == f && ino_of(idx, "d/h2") == f && ino_of(idx, "h3") == f && ino_of(idx, "h4") == f,
           "all five names (chained and absolute hardlinks too) share one inode");
        const IndexInode *in = index_inode(idx, f);
        is_int(in->nlink, 5, "nlink counts the names");
        is_int(in->size, 1, "size");
        is_int(in->uid, 5, "uid");
        is_int(in->gid, 6, "gid");
        is_int(in->mtime, 946684800, "mtime");
        is_int(in->xattr_count, 1, "one xattr");
        if (in->xattr_count == 1) {
                const IndexXattr *x = &idx->xattrs[in->xattr_first];
                is_str(index_str(idx, x->name), "user.k", "xattr name");
                ok(x->value_len == 1 && index_str(idx, x->value)[0] == 'v', "xattr value");
        }
        is_int(in->count, 1, "one chunk");
        uint64_t e = ino_of(idx, "e");
        is_int(index_inode(idx, e)->mode, S_IFDIR | 01777, "./././e/ is e, mode with sticky bit");
        is_int(index_inode(idx, e)->nlink, 4, "e nlink = 2 + sub + sub2");
        is_int(index_inode(idx, ino_of(idx, "d"))->mode, S_IFDIR | 0755, "implicit d");
        const IndexInode *nul = index_inode(idx, ino_of(idx, "e/null"));
        ok(nul && nul->mode == (S_IFCHR | 0666) && nul->rdev_major == 1 && nul->rdev_minor == 3, "char device 1:3");
        ok(index_inode(idx, ino_of(idx, "e/fifo"))->mode == S_IFIFO, "fifo");
        const IndexInode *blk = index_inode(idx, ino_of(idx, "e/sda"));
        ok(blk->mode == S_IFBLK && blk->rdev_major == 8 && blk->rdev_minor == 0, "block device 8:0");
        is_int(index_inode(idx, ino_of(idx, "e/file"))->count, 0, "empty file has no chunks");

        uint64_t ino;
        is_int(index_lookup(idx, 1, "f", 1, &ino), 0, "index_lookup finds f");
        is_int(ino, f, "  its inode");
        is_int(index_lookup(idx, 1, "nope", 4, &ino), -ENOENT, "missing name: -ENOENT");
        is_int(index_lookup(idx, 1, "", 0, &ino), -ENOENT, "empty name: -ENOENT");
        is_int(index_lookup(idx, f, "x", 1, &ino), -ENOTDIR, "lookup in a file: -ENOTDIR");
        is_int(index_lookup(idx, 9999, "x", 1, &ino), -ENOTDIR, "lookup in a missing inode: -ENOTDIR");
        is_int(index_lookup(idx, 1, "fx", 1, &ino), 0, "length bounds the name");
        is_int(index_lookup_path(idx, "/e//sub/", &ino), 0, "index_lookup_path tolerates extra slashes");
        is_int(ino, ino_of(idx, "e/sub"), "  same inode");
        is_int(index_lookup_path(idx, "f/x", &ino), -ENOTDIR, "path through a file: -ENOTDIR");
        is_int(index_lookup_path(idx, "e/zzz", &ino), -ENOENT, "missing path: -ENOENT");
        index_free(idx);
}

/* ---- refusals ---- */

static void expect_fail(const char *json, uint64_t toc_off, int want, const char *needle, const char *what) {
        Index *idx = (Index *) 0x1;
        ErrMsg err;
        int r = build_fmt(json, toc_off, LAYER_FORMAT_ESTARGZ, &idx, &err);
        is_int(r, want, "%s", what);
        has_str(err.text, needle, "  message: %s", err.text);
        ok(idx == (Index *) 0x1, "  *ret untouched");
}

static void test_errors(void) {
        char name[400], json[1000];
        expect_fail(E("{\"name\":\"a/../b\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "'..' path component", "'..' component");
        expect_fail(E("{\"name\":\"..\",\"type\":\"dir\"}"), TOC_OFF, -EBADMSG, "'..'", "'..' alone");
        expect_fail(E("{\"name\":\"/etc/passwd\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "absolute path", "absolute path");
        expect_fail(E("{\"name\":\"a//b\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "empty path component", "empty component a//b");
        expect_fail(E("{\"name\":\"a/./b\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "'.' path component", "'.' component");
        memset(name, 'n', 256);
        name[256] = 0;
        snprintf(json, sizeof(json), E("{\"name\":\"d/%s\",\"type\":\"reg\"}"), name);
        expect_fail(json, TOC_OFF, -ENAMETOOLONG, "longer than 255", "component of 256 bytes");
        name[255] = 0;
        snprintf(json, sizeof(json), E("{\"name\":\"d/%s\",\"type\":\"reg\"}"), name);
        Index *idx = NULL;
        ErrMsg err;
        is_int(build(json, &idx, &err), 0, "component of 255 bytes is fine");
        index_free(idx);

        expect_fail(E("{\"name\":\"a\",\"type\":\"reg\"},{\"name\":\"./a\",\"type\":\"reg\"}"), TOC_OFF, -EEXIST, "duplicate entry 'a'",
                    "duplicate names");
        expect_fail(E("{\"name\":\"d/\",\"type\":\"dir\"},{\"name\":\"d\",\"type\":\"dir\"}"), TOC_OFF, -EEXIST, "duplicate", "duplicate dirs");
        expect_fail(E("{\"name\":\"./\",\"type\":\"dir\"},{\"name\":\".\",\"type\":\"dir\"}"), TOC_OFF, -EBADMSG, "duplicate root",
                    "duplicate root");
        expect_fail(E("{\"name\":\"./\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "root must be a directory", "root as a file");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\"},{\"name\":\"f/x\",\"type\":\"reg\"}"), TOC_OFF, -ENOTDIR, "parent 'f' is not a directory",
                    "file used as a parent directory");
        expect_fail(E("{\"name\":\"l\",\"type\":\"symlink\",\"linkName\":\"d\"},{\"name\":\"l/x/y\",\"type\":\"reg\"}"), TOC_OFF, -ENOTDIR,
                    "not a directory", "symlink used as a grandparent directory");
        expect_fail(E("{\"name\":\"a/b\",\"type\":\"reg\"},{\"name\":\"a\",\"type\":\"reg\"}"), TOC_OFF, -EEXIST, "duplicate entry 'a'",
                    "file replacing an implicit directory");

        expect_fail(E("{\"name\":\"h\",\"type\":\"hardlink\",\"linkName\":\"missing\"}"), TOC_OFF, -EBADMSG, "target 'missing' does not exist",
                    "hardlink to a missing target");
        expect_fail(E("{\"name\":\"d/x\",\"type\":\"reg\"},{\"name\":\"h\",\"type\":\"hardlink\",\"linkName\":\"d\"}"), TOC_OFF, -EBADMSG,
                    "does not exist", "hardlink to an implicit directory");
        expect_fail(E("{\"name\":\"d\",\"type\":\"dir\"},{\"name\":\"h\",\"type\":\"hardlink\",\"linkName\":\"d\"}"), TOC_OFF, -EBADMSG,
                    "hardlink to directory 'd'", "hardlink to a directory");
        expect_fail(E("{\"name\":\"h1\",\"type\":\"hardlink\",\"linkName\":\"h2\"},{\"name\":\"h2\",\"type\":\"hardlink\",\"linkName\":\"h1\"}"),
                    TOC_OFF, -ELOOP, "loop", "hardlink loop");
        expect_fail(E("{\"name\":\"h\",\"type\":\"hardlink\",\"linkName\":\"h\"}"), TOC_OFF, -ELOOP, "loop", "hardlink to itself");

        /* chunks */
        expect_fail(E("{\"name\":\"c\",\"type\":\"chunk\",\"offset\":10,\"chunkOffset\":0}"), TOC_OFF, -EBADMSG,
                    "chunk does not follow a regular file", "chunk first");
        expect_fail(E("{\"name\":\"d\",\"type\":\"dir\"},{\"name\":\"d\",\"type\":\"chunk\",\"offset\":10}"), TOC_OFF, -EBADMSG,
                    "does not follow a regular file", "chunk after a directory");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50},"
                      "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":20,\"chunkOffset\":60}"), TOC_OFF, -EBADMSG,
                    "chunkOffset 60 should be 50 (gap or overlap)", "chunk gap");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50},"
                      "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":20,\"chunkOffset\":40}"), TOC_OFF, -EBADMSG,
                    "gap or overlap", "chunk overlap");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50},"
                      "{\"name\":\"g\",\"type\":\"reg\"}"), TOC_OFF, -EBADMSG, "chunks cover 50 of 100 bytes",
                    "chunks not covering the file (next entry)");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50}"), TOC_OFF, -EBADMSG,
                    "chunks cover 50 of 100", "chunks not covering the file (end of TOC)");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50},"
                      "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":20,\"chunkOffset\":50,\"chunkSize\":60}"), TOC_OFF, -EBADMSG,
                    "runs past the file size 100", "chunk past the size");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10},"
                      "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":20,\"chunkOffset\":100}"), TOC_OFF, -EBADMSG,
                    "past the file size", "chunk starting at the size");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":150}"), TOC_OFF, -EBADMSG,
                    "chunkSize 150 is larger than the file", "first chunk larger than the file");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkOffset\":5}"), TOC_OFF, -EBADMSG,
                    "first chunk has chunkOffset 5", "first chunk not at 0");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":50},{\"name\":\"g\",\"type\":\"reg\",\"size\":1,\"offset\":40}"),
                    TOC_OFF, -EBADMSG, "offsets must increase", "decreasing blob offsets");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":50},{\"name\":\"g\",\"type\":\"reg\",\"size\":1,\"offset\":50}"),
                    TOC_OFF, -EBADMSG, "offsets must increase", "duplicate blob offsets");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":1000}"), 1000, -EBADMSG, "outside the layer data",
                    "offset equal to the TOC offset");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":5000}"), 1000, -EBADMSG, "offset 5000 is outside",
                    "offset past the TOC offset");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100}"), 1000, -EBADMSG, "offset 0 is outside", "file data without an offset");
        expect_fail(E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"innerOffset\":5}"), 1000, -EBADMSG,
                    "innerOffset is only valid in zstd:chunked", "innerOffset in a gzip layer");

        /* zstd:chunked: chunks may share a frame with growing innerOffset */
        const char *zs = E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50},"
                           "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":10,\"chunkOffset\":50,\"innerOffset\":50}");
        idx = NULL;
        is_int(build_fmt(zs, 1000, LAYER_FORMAT_ZSTD_CHUNKED, &idx, &err), 0, "zstd:chunked chunks sharing a frame (%s)", err.text);
        if (idx) {
                ok(idx->chunks[0].blob_end == 1000 && idx->chunks[1].blob_end == 1000, "  both end at the TOC");
                is_int(idx->chunks[1].inner_offset, 50, "  inner offset kept");
        }
        index_free(idx);
        is_int(build_fmt(zs, 1000, LAYER_FORMAT_ESTARGZ, &idx, &err), -EBADMSG, "the same in a gzip layer is refused");
        const char *zs_bad = E("{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":10,\"chunkSize\":50,\"innerOffset\":50},"
                               "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":10,\"chunkOffset\":50,\"innerOffset\":50}");
        is_int(build_fmt(zs_bad, 1000, LAYER_FORMAT_ZSTD_CHUNKED, &idx, &err), -EBADMSG, "shared frame without a larger innerOffset");
        has_str(err.text, "innerOffset", "  message: %s", err.text);
}

/* ---- overlay ---- */

static void test_overlay(void) {
        const char *json = E(
                "{\"name\":\".no.prefetch.landmark\",\"type\":\"reg\",\"size\":1,\"offset\":10},"
                "{\"name\":\"d/\",\"type\":\"dir\"},"
                "{\"name\":\"d/.wh.gone\",\"type\":\"reg\",\"uid\":3},"
                "{\"name\":\"d/.wh.both\",\"type\":\"reg\"},"
                "{\"name\":\"d/both\",\"type\":\"reg\"},"
                "{\"name\":\"d/keep\",\"type\":\"reg\"},"
                "{\"name\":\"o/.wh..wh..opq\",\"type\":\"reg\"},"
                "{\"name\":\"o/inside\",\"type\":\"reg\"},"
                "{\"name\":\"sub/.prefetch.landmark\",\"type\":\"reg\",\"size\":1,\"offset\":20},"
                "{\"name\":\".wh.top\",\"type\":\"reg\"},"
                "{\"name\":\"d/.wh.dir\",\"type\":\"dir\"}");
        Index *idx = NULL;
        ErrMsg err;
        if (!is_int(build(json, &idx, &err), 0, "build overlay tree (%s)", err.text))
                return;
        uint64_t ino;
        uint64_t gone = ino_of(idx, "d/gone");
        ok(gone, ".wh.gone without gone: shown as 'gone'");
        const IndexInode *g = index_inode(idx, gone);
        ok(g && g->mode == S_IFCHR && g->rdev_major == 0 && g->rdev_minor == 0, "  a 0:0 character device with no permission bits");
        is_int(g ? g->uid : 0, 3, "  owner from its entry");
        is_int(index_lookup_path(idx, "d/.wh.gone", &ino), -ENOENT, "  '.wh.gone' itself is not listed");
        is_int(index_lookup_path(idx, "d/.wh.both", &ino), -ENOENT, ".wh.both with both: hidden");
        ok(ino_of(idx, "d/both") && S_ISREG(index_inode(idx, ino_of(idx, "d/both"))->mode), "  both is the regular file");
        ok(ino_of(idx, "d/.wh.dir") && S_ISDIR(index_inode(idx, ino_of(idx, "d/.wh.dir"))->mode), "a directory named .wh.dir is a directory");
        ok(ino_of(idx, "top") && S_ISCHR(index_inode(idx, ino_of(idx, "top"))->mode), "whiteout at the root");
        const IndexInode *d = index_inode(idx, ino_of(idx, "d"));
        is_int(d->count, 4, "d lists gone, both, keep and .wh.dir");
        is_int(d->nlink, 3, "d nlink = 2 + .wh.dir (whiteouts are not subdirectories)");
        is_int(d->flags & INODE_OPAQUE, 0, "d is not opaque");

        const IndexInode *o = index_inode(idx, ino_of(idx, "o"));
        is_int(o->flags & INODE_OPAQUE, INODE_OPAQUE, ".wh..wh..opq marks o opaque");
        is_int(o->count, 1, "  and is hidden: o lists only 'inside'");
        is_int(index_lookup_path(idx, "o/.wh..wh..opq", &ino), -ENOENT, "  lookup of the marker fails");
        is_int(index_inode(idx, 1)->flags & INODE_OPAQUE, 0, "root is not opaque");

        is_int(index_lookup_path(idx, ".no.prefetch.landmark", &ino), -ENOENT, "root landmark hidden");
        ok(idx->no_prefetch, "no_prefetch set");
        is_int(idx->prefetch_end, 0, "prefetch_end 0 without .prefetch.landmark");
        ok(ino_of(idx, "sub/.prefetch.landmark"), "a landmark outside the root is an ordinary file");
        index_free(idx);

        json = E("{\"name\":\"a\",\"type\":\"reg\",\"size\":3,\"offset\":10},"
                 "{\"name\":\"./.prefetch.landmark\",\"type\":\"reg\",\"size\":1,\"offset\":4242},"
                 "{\"name\":\"b\",\"type\":\"reg\",\"size\":3,\"offset\":5000}");
        idx = NULL;
        if (is_int(build(json, &idx, &err), 0, "build with .prefetch.landmark (%s)", err.text)) {
                is_int(idx->prefetch_end, 4242, "prefetch_end is the landmark's offset");
                ok(!idx->no_prefetch, "no_prefetch not set");
                is_int(index_lookup_path(idx, ".prefetch.landmark", &ino), -ENOENT, "landmark hidden");
                is_int(index_inode(idx, 1)->count, 2, "root lists a and b only");
        }
        index_free(idx);
}

/* ---- chunks ---- */

static void test_chunks(void) {
        const char *json = E(
                "{\"name\":\"f\",\"type\":\"reg\",\"size\":10000,\"offset\":100,\"chunkSize\":4096,\"chunkDigest\":\"" D1 "\"},"
                "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":200,\"chunkOffset\":4096,\"chunkSize\":4096,\"chunkDigest\":\"" D2 "\"},"
                "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":300,\"chunkOffset\":8192},"
                "{\"name\":\"one\",\"type\":\"reg\",\"size\":7,\"offset\":400,\"digest\":\"" D3 "\"},"
                "{\"name\":\"d\",\"type\":\"dir\"},"
                "{\"name\":\"s\",\"type\":\"symlink\",\"linkName\":\"f\"},"
                "{\"name\":\"empty\",\"type\":\"reg\"}");
        Index *idx = NULL;
        ErrMsg err;
        if (!is_int(build_fmt(json, 500, LAYER_FORMAT_ESTARGZ, &idx, &err), 0, "build chunked file (%s)", err.text))
                return;
        uint64_t f = ino_of(idx, "f");
        const IndexInode *in = index_inode(idx, f);
        is_int(in->count, 3, "three chunks");
        is_int(idx->n_chunks, 4, "four chunks in the layer");
        const IndexChunk *c = &idx->chunks[in->first];
        ok(c[0].file_offset == 0 && c[0].size == 4096 && c[0].blob_offset == 100 && c[0].blob_end == 200, "chunk 0: [0,4096) at [100,200)");
        ok(c[1].file_offset == 4096 && c[1].size == 4096 && c[1].blob_offset == 200 && c[1].blob_end == 300, "chunk 1: [4096,8192) at [200,300)");
        ok(c[2].file_offset == 8192 && c[2].size == 1808 && c[2].blob_offset == 300 && c[2].blob_end == 400,
           "chunk 2: the rest, [8192,10000) at [300,400)");
        ok(c[0].digest != INDEX_NONE && memcmp(idx->digests[c[0].digest], "\x11", 1) == 0, "chunk 0 digest");
        ok(c[1].digest != INDEX_NONE && memcmp(idx->digests[c[1].digest], "\x22", 1) == 0, "chunk 1 digest");
        is_int(c[2].digest, INDEX_NONE, "chunk 2 has no digest");
        const IndexChunk *one = &idx->chunks[index_inode(idx, ino_of(idx, "one"))->first];
        ok(one->digest != INDEX_NONE && memcmp(idx->digests[one->digest], "\x33", 1) == 0,
           "a one-chunk file's digest verifies its chunk");
        is_int(one->blob_end, 500, "the last chunk ends at the TOC");
        is_int(idx->n_unverified, 1, "one unverified chunk");

        struct { uint64_t off; int64_t want; } probes[] = {
                { 0, 0 }, { 1, 0 }, { 4095, 0 }, { 4096, 1 }, { 4097, 1 }, { 8191, 1 }, { 8192, 2 }, { 9999, 2 },
                { 10000, -ERANGE }, { 1ull << 62, -ERANGE },
        };
        for (size_t i = 0; i < ELEMENTSOF(probes); i++) {
                int64_t r = index_chunk_find(idx, f, probes[i].off);
                is_int(r < 0 ? r : r - (int64_t) in->first, probes[i].want, "index_chunk_find at %llu", (unsigned long long) probes[i].off);
        }
        is_int(index_chunk_find(idx, ino_of(idx, "empty"), 0), -ERANGE, "empty file: -ERANGE at 0");
        is_int(index_chunk_find(idx, ino_of(idx, "d"), 0), -EISDIR, "directory: -EISDIR");
        is_int(index_chunk_find(idx, ino_of(idx, "s"), 0), -EINVAL, "symlink: -EINVAL");
        is_int(index_chunk_find(idx, 0, 0), -EINVAL, "inode 0: -EINVAL");
        is_int(index_chunk_find(idx, 1000, 0), -EINVAL, "missing inode: -EINVAL");
        index_free(idx);
}

/* ---- scale ---- */

static void test_scale(void) {
        const int dirs = 500, per = 399; /* 500 + 500 * 399 = 200,000 entries */
        StrBuf j = {};
        strbuf_printf(&j, "{\"version\":1,\"entries\":[");
        for (int d = 0; d < dirs; d++) {
                strbuf_printf(&j, "%s{\"name\":\"dir%03d/\",\"type\":\"dir\",\"mode\":493}", d ? "," : "", d);
                for (int f = 0; f < per; f++)
                        strbuf_printf(&j, ",{\"name\":\"dir%03d/file%04d\",\"type\":\"reg\",\"mode\":420,\"uid\":%d}", d, f, f);
        }
        strbuf_printf(&j, "]}");

        struct timespec t0, t1, t2;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        Toc *t = NULL;
        ErrMsg err = {};
        int r = toc_parse_json(j.data, j.len, NULL, &t, &err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (!is_int(r, 0, "parse a 200,000-entry TOC (%s)", err.text)) {
                strbuf_done(&j);
                return;
        }
        is_int(t->n_entries, 200000, "200,000 entries");
        Index *idx = NULL;
        IndexOptions o = { .toc_offset = TOC_OFF, .format = LAYER_FORMAT_ESTARGZ };
        r = index_build(t, &o, &idx, &err);
        clock_gettime(CLOCK_MONOTONIC, &t2);
        if (is_int(r, 0, "index it (%s)", err.text)) {
                is_int(idx->n_inodes, 200001, "200,001 inodes with the root");
                uint64_t ino;
                is_int(index_lookup_path(idx, "dir000/file0000", &ino), 0, "first file found");
                is_int(ino, 1 + dirs + 1, "  numbered right after the directories");
                is_int(index_lookup_path(idx, "dir499/file0398", &ino), 0, "last file found");
                is_int(ino, 200001, "  last number");
                is_int(index_lookup_path(idx, "dir250/file0200", &ino), 0, "a middle file found");
                is_int(index_inode(idx, ino)->uid, 200, "  its uid");
                is_int(index_lookup_path(idx, "dir250/file0399", &ino), -ENOENT, "a missing file");
                size_t bytes = idx->n_inodes * sizeof(IndexInode) + idx->n_dirents * sizeof(IndexDirent) +
                               idx->n_chunks * sizeof(IndexChunk) + idx->n_xattrs * sizeof(IndexXattr) +
                               idx->n_digests * SHA256_LEN + idx->pool_len + sizeof(Index);
                diag("index of %zu entries: %zu bytes, %.1f bytes per entry (JSON %zu bytes, %.1f per entry)", t->n_entries, bytes,
                     (double) bytes / (double) t->n_entries, j.len, (double) j.len / (double) t->n_entries);
                diag("parse %.0f ms, index %.0f ms (informational, not asserted)",
                     (double) (t1.tv_sec - t0.tv_sec) * 1e3 + (double) (t1.tv_nsec - t0.tv_nsec) / 1e6,
                     (double) (t2.tv_sec - t1.tv_sec) * 1e3 + (double) (t2.tv_nsec - t1.tv_nsec) / 1e6);
        }
        index_free(idx);
        toc_free(t);
        strbuf_done(&j);
}

int main(void) {
        test_numbering();
        test_shape();
        test_errors();
        test_overlay();
        test_chunks();
        test_scale();
        return done();
}
