/* Tests of common/estargz/writer: plain, gzip and zstd inputs give the same
 * blob; the ConvertResult digests are what they claim; prefetch ordering
 * and landmarks; later duplicates win; bad inputs are refused clearly. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zstd.h>

#include "common/estargz/decompress.h"
#include "common/estargz/layer.h"
#include "common/estargz/toc.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

static char tmp[4096];

static int zstd_frame(StrBuf *out, const void *data, size_t len) {
        size_t bound = ZSTD_compressBound(len);
        int r = strbuf_reserve(out, bound);
        if (r < 0)
                return r;
        size_t n = ZSTD_compress(out->data + out->len, bound, data, len, 3);
        if (ZSTD_isError(n))
                return -EIO;
        out->len += n;
        return 0;
}

static Toc *toc_of(const StrBuf *blob) {
        Footer f;
        Toc *t = NULL;
        uint8_t dg[SHA256_LEN];
        ErrMsg err = {};
        size_t tail = MIN(blob->len, (size_t) LAYER_FOOTER_MAX_SIZE);
        if (footer_parse((const uint8_t *) blob->data + blob->len - tail, tail, blob->len, &f, &err) < 0 ||
            toc_parse_compressed(f.format, (const uint8_t *) blob->data + f.toc_offset, (size_t) f.toc_size, NULL, &t, dg, &err) < 0)
                diag("TOC of the blob: %s", err.text);
        return t;
}

/* Position of the first TOC entry named name (raw), or -1. */
static long pos_of(const Toc *t, const char *name) {
        for (size_t i = 0; t && i < t->n_entries; i++)
                if (t->entries[i].type != TOC_CHUNK && strcmp(toc_str(t, t->entries[i].name), name) == 0)
                        return (long) i;
        return -1;
}

static int convert(const StrBuf *in, const ConvertOptions *o, ConvertResult *res, StrBuf *blob, ErrMsg *err) {
        *err = (ErrMsg) {};
        *res = (ConvertResult) {};
        return convert_mem(tmp, in->data, in->len, o, res, blob, err);
}

static Layer *open_blob(const StrBuf *blob, MemBlob *mb) {
        Layer *l = NULL;
        ErrMsg err = {};
        *mb = (MemBlob) { .data = (const uint8_t *) blob->data, .len = blob->len };
        if (layer_open(mem_blob_read_at, mb, blob->len, NULL, &l, &err) < 0)
                diag("layer_open: %s", err.text);
        return l;
}

static bool file_is(Layer *l, const char *path, const void *want, size_t len) {
        uint64_t ino;
        if (index_lookup_path(l->index, path, &ino) < 0)
                return false;
        ChunkDecoder *d;
        chunk_decoder_new(&d);
        uint8_t *buf = malloc(len + 10);
        ErrMsg err = {};
        ssize_t n = layer_read(l, d, ino, 0, len + 10, buf, &err);
        bool r = n == (ssize_t) len && memcmp(buf, want, len) == 0;
        if (!r)
                diag("%s: read %zd (%s)", path, n, err.text);
        free(buf);
        chunk_decoder_free(d);
        return r;
}

static void test_inputs(void) {
        Rng rng = { 5 };
        static uint8_t big[70000];
        rng_fill(&rng, big, sizeof(big));
        StrBuf tar = {};
        TarXattr xa = { .name = (char *) "user.note", .value = (uint8_t *) "v\0w", .len = 3 };
        tar_add(&tar, "./", '5', 0755, NULL, 0, NULL);
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./etc/", .typeflag = '5', .mode = 0750, .uid = 7, .gid = 8,
                                          .mtime = 1500000000, .uname = (char *) "seven", .gname = (char *) "eight" }, NULL);
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./etc/conf", .typeflag = '0', .mode = 0600, .uid = 3000000000u,
                                          .size = 5, .xattrs = &xa, .n_xattrs = 1 }, "hello");
        tar_add(&tar, "./big", '0', 0644, big, sizeof(big), NULL);
        tar_add(&tar, "./etc/link", '2', 0777, NULL, 0, "conf");
        tar_add(&tar, "./hard", '1', 0, NULL, 0, "./etc/conf");
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "./dev-null", .typeflag = '3', .mode = 0666, .devmajor = 1, .devminor = 3 }, NULL);
        tar_end(&tar);

        /* the same tar as two gzip members and as two zstd frames */
        StrBuf gz = {}, zs = {};
        size_t cut = tar.len / 3;
        gzip_member(&gz, tar.data, cut, 6);
        gzip_member(&gz, tar.data + cut, tar.len - cut, 9);
        zstd_frame(&zs, tar.data, cut);
        zstd_frame(&zs, tar.data + cut, tar.len - cut);

        ConvertOptions o = { .chunk_size = 16384 };
        ConvertResult rp, rg, rz;
        StrBuf bp = {}, bg = {}, bz = {};
        ErrMsg err;
        if (!is_int(convert(&tar, &o, &rp, &bp, &err), 0, "convert a plain tar (%s)", err.text))
                goto out;
        is_int(convert(&gz, &o, &rg, &bg, &err), 0, "convert a gzip tar of two members (%s)", err.text);
        is_int(convert(&zs, &o, &rz, &bz, &err), 0, "convert a zstd tar of two frames (%s)", err.text);
        ok(memcmp(rp.blob_digest, rg.blob_digest, SHA256_LEN) == 0, "gzip input gives the same blob");
        ok(memcmp(rp.blob_digest, rz.blob_digest, SHA256_LEN) == 0, "zstd input gives the same blob");
        ok(bp.len == bg.len && bp.len == bz.len && memcmp(bp.data, bz.data, bp.len) == 0, "  byte for byte");

        /* the result's numbers */
        uint8_t dg[SHA256_LEN];
        is_int(rp.blob_size, bp.len, "blob_size is the bytes written");
        sha256_buf(bp.data, bp.len, dg);
        ok(memcmp(dg, rp.blob_digest, SHA256_LEN) == 0, "blob_digest is the sha256 of the blob");

        StrBuf plain = {};
        MemReader m = { .data = (const uint8_t *) bp.data, .len = bp.len };
        Decompress *dz;
        decompress_new(COMPRESSION_GZIP, mem_reader_read, &m, true, &dz);
        uint8_t buf[65536];
        ssize_t n;
        while ((n = decompress_read(dz, buf, sizeof(buf))) > 0)
                strbuf_append(&plain, buf, (size_t) n);
        decompress_free(dz);
        is_int(n, 0, "the blob is a valid series of gzip members");
        is_int(rp.uncompressed_size, plain.len, "uncompressed_size is the decompressed length");
        sha256_buf(plain.data, plain.len, dg);
        ok(memcmp(dg, rp.diff_id, SHA256_LEN) == 0, "diff_id is the sha256 of the concatenated decompressed members");

        /* which is a tar holding the entries, the TOC last */
        MemReader pm = { .data = (const uint8_t *) plain.data, .len = plain.len };
        TarReader *tr;
        tar_reader_new(mem_reader_read, &pm, &tr);
        const TarHeader *h;
        size_t count = 0;
        char last[256] = "";
        uint8_t toc_dg[SHA256_LEN];
        Sha256 *sha = sha256_new();
        while (tar_reader_next(tr, &h, &err) > 0) {
                count++;
                snprintf(last, sizeof(last), "%s", h->name);
                if (strcmp(h->name, ESTARGZ_TOC_TAR_NAME) == 0) {
                        ssize_t k;
                        while ((k = tar_reader_read(tr, buf, sizeof(buf), &err)) > 0)
                                sha256_update(sha, buf, (size_t) k);
                }
        }
        sha256_final(sha, toc_dg);
        sha256_free(sha);
        tar_reader_free(tr);
        is_int(count, 9, "7 entries + landmark + TOC in the decompressed tar");
        is_str(last, ESTARGZ_TOC_TAR_NAME, "the TOC is the last tar entry");
        ok(memcmp(toc_dg, rp.toc_digest, SHA256_LEN) == 0, "toc_digest is the sha256 of the TOC JSON");
        Toc *t = toc_of(&bp);
        is_int(t ? t->n_entries : 0, rp.n_entries, "n_entries counts TOC entries (chunks too)");
        is_int(rp.n_entries, 8 + 4, "8 entries + 4 more chunks of big");
        toc_free(t);
        strbuf_done(&plain);

        MemBlob mb;
        Layer *l = open_blob(&bp, &mb);
        if (!ok(l, "the blob opens with verification"))
                goto out;
        ok(file_is(l, "etc/conf", "hello", 5), "etc/conf reads back");
        ok(file_is(l, "big", big, sizeof(big)), "big (5 chunks) reads back");
        uint64_t ino;
        index_lookup_path(l->index, "etc", &ino);
        const IndexInode *in = index_inode(l->index, ino);
        ok(in->mode == (S_IFDIR | 0750) && in->uid == 7 && in->gid == 8 && in->mtime == 1500000000, "etc: mode, owner, mtime kept");
        index_lookup_path(l->index, "etc/conf", &ino);
        in = index_inode(l->index, ino);
        is_int(in->uid, 3000000000u, "big uid kept");
        is_int(in->nlink, 2, "etc/conf and hard share an inode");
        ok(in->xattr_count == 1 && memcmp(index_str(l->index, l->index->xattrs[in->xattr_first].value), "v\0w", 3) == 0,
           "binary xattr kept");
        uint64_t hard;
        index_lookup_path(l->index, "hard", &hard);
        is_int(hard, ino, "hardlink resolves to the same inode");
        index_lookup_path(l->index, "dev-null", &ino);
        in = index_inode(l->index, ino);
        ok(S_ISCHR(in->mode) && in->rdev_major == 1 && in->rdev_minor == 3, "char device 1:3 kept");
        index_lookup_path(l->index, "etc/link", &ino);
        in = index_inode(l->index, ino);
        ok(S_ISLNK(in->mode) && in->count == 4 && memcmp(index_str(l->index, in->first), "conf", 4) == 0, "symlink target kept");
        ok(l->index->no_prefetch, "no prefetch list: .no.prefetch.landmark");
        layer_free(l);

        /* the spool file is unlinked: the temporary directory holds only our files */
        DIR *dir = opendir(tmp);
        size_t n_files = 0;
        for (struct dirent *de; dir && (de = readdir(dir));)
                if (de->d_name[0] != '.')
                        n_files++;
        if (dir)
                closedir(dir);
        is_int(n_files, 2, "no spool file left behind");
out:
        strbuf_done(&tar);
        strbuf_done(&gz);
        strbuf_done(&zs);
        strbuf_done(&bp);
        strbuf_done(&bg);
        strbuf_done(&bz);
}

static void test_prefetch(void) {
        StrBuf tar = {};
        tar_add(&tar, "z", '0', 0644, "zz", 2, NULL);
        tar_add(&tar, "a/", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, "a/b/", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, "a/b/c", '0', 0644, "ccc", 3, NULL);
        tar_add(&tar, "a/other", '0', 0644, "o", 1, NULL);
        tar_add(&tar, "t/", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, "t/target", '0', 0644, "target", 6, NULL);
        tar_add(&tar, "h", '1', 0, NULL, 0, "t/target");
        tar_add(&tar, "y", '0', 0644, "y", 1, NULL);
        tar_end(&tar);

        const char *list[] = { "a/b/c", "/h", "./y" };
        ConvertOptions o = { .prefetch = list, .n_prefetch = 3 };
        ConvertResult res;
        StrBuf blob = {};
        ErrMsg err;
        if (!is_int(convert(&tar, &o, &res, &blob, &err), 0, "convert with a prefetch list (%s)", err.text))
                goto out;
        Toc *t = toc_of(&blob);
        long lm = pos_of(t, ESTARGZ_PREFETCH_LANDMARK);
        ok(lm >= 0, ".prefetch.landmark present");
        is_int(pos_of(t, ESTARGZ_NO_PREFETCH_LANDMARK), -1, "no .no.prefetch.landmark");
        const char *before[] = { "a/", "a/b/", "a/b/c", "t/", "t/target", "h", "y" };
        for (size_t i = 0; i < ELEMENTSOF(before); i++) {
                long p = pos_of(t, before[i]);
                ok(p >= 0 && p < lm, "%s before the landmark (%ld < %ld)", before[i], p, lm);
        }
        ok(pos_of(t, "a/") < pos_of(t, "a/b/") && pos_of(t, "a/b/") < pos_of(t, "a/b/c"), "parents before their children");
        ok(pos_of(t, "t/target") < pos_of(t, "h"), "hardlink target before the hardlink");
        ok(pos_of(t, "a/b/c") < pos_of(t, "h") && pos_of(t, "h") < pos_of(t, "y"), "listed files in list order");
        ok(pos_of(t, "z") > lm && pos_of(t, "a/other") > lm, "unlisted files after the landmark");
        ok(pos_of(t, "z") < pos_of(t, "a/other"), "  in tar order");
        MemBlob mb;
        Layer *l = open_blob(&blob, &mb);
        if (ok(l, "prefetched blob opens")) {
                ok(l->index->prefetch_end > 0 && !l->index->no_prefetch, "index records prefetch_end %llu",
                   (unsigned long long) l->index->prefetch_end);
                ok(t && l->index->prefetch_end == t->entries[lm].offset, "  the landmark's offset");
                ok(file_is(l, "a/b/c", "ccc", 3) && file_is(l, "h", "target", 6) && file_is(l, "z", "zz", 2), "files read back");
                layer_free(l);
        }
        toc_free(t);
        strbuf_done(&blob);

        /* without a list */
        o = (ConvertOptions) {};
        is_int(convert(&tar, &o, &res, &blob, &err), 0, "convert without a prefetch list");
        t = toc_of(&blob);
        is_int(pos_of(t, ESTARGZ_NO_PREFETCH_LANDMARK), 0, ".no.prefetch.landmark is the first entry");
        is_int(pos_of(t, "z"), 1, "then the tar in order");
        is_int(pos_of(t, ESTARGZ_PREFETCH_LANDMARK), -1, "no .prefetch.landmark");
        toc_free(t);
        strbuf_done(&blob);

        const char *missing[] = { "a/b/c", "nope" };
        o = (ConvertOptions) { .prefetch = missing, .n_prefetch = 2 };
        is_int(convert(&tar, &o, &res, &blob, &err), -ENOENT, "missing prefetch path: -ENOENT");
        has_str(err.text, "prefetch path 'nope' is not in the layer", "  message: %s", err.text);
        strbuf_done(&blob);
        o.allow_missing_prefetch = true;
        is_int(convert(&tar, &o, &res, &blob, &err), 0, "allowed with allow_missing_prefetch");
        is_int(res.n_missing_prefetch, 1, "  one missing path counted");
        t = toc_of(&blob);
        ok(pos_of(t, "a/b/c") < pos_of(t, ESTARGZ_PREFETCH_LANDMARK), "  the present path is still prefetched");
        toc_free(t);
        strbuf_done(&blob);
out:
        strbuf_done(&tar);
}

static void test_duplicates(void) {
        StrBuf tar = {};
        tar_add(&tar, "dup", '0', 0644, "old content", 11, NULL);
        tar_add(&tar, "other", '0', 0644, "x", 1, NULL);
        tar_add(&tar, "./dup", '0', 0600, "new content!", 12, NULL);
        tar_add(&tar, "d/", '5', 0700, NULL, 0, NULL);
        tar_add(&tar, "d/f", '0', 0644, "f", 1, NULL);
        tar_add(&tar, "d", '5', 0755, NULL, 0, NULL);
        tar_add(&tar, ESTARGZ_TOC_TAR_NAME, '0', 0644, "{}", 2, NULL); /* dropped: the writer adds its own */
        tar_end(&tar);
        ConvertOptions o = {};
        ConvertResult res;
        StrBuf blob = {};
        ErrMsg err;
        if (!is_int(convert(&tar, &o, &res, &blob, &err), 0, "convert a tar with duplicate names (%s)", err.text))
                goto out;
        Toc *t = toc_of(&blob);
        size_t n_dup = 0;
        for (size_t i = 0; t && i < t->n_entries; i++)
                if (strstr(toc_str(t, t->entries[i].name), "dup"))
                        n_dup++;
        is_int(n_dup, 1, "one TOC entry for dup");
        toc_free(t);
        MemBlob mb;
        Layer *l = open_blob(&blob, &mb);
        if (ok(l, "opens")) {
                ok(file_is(l, "dup", "new content!", 12), "the later entry wins");
                uint64_t ino;
                index_lookup_path(l->index, "dup", &ino);
                is_int(index_inode(l->index, ino)->mode, S_IFREG | 0600, "  with its mode");
                index_lookup_path(l->index, "d", &ino);
                is_int(index_inode(l->index, ino)->mode, S_IFDIR | 0755, "later directory entry wins");
                ok(file_is(l, "d/f", "f", 1), "  and keeps its children");
                layer_free(l);
        }
out:
        strbuf_done(&blob);
        strbuf_done(&tar);
}

static void test_bad_input(void) {
        ConvertOptions o = {};
        ConvertResult res;
        StrBuf in = {}, blob = {};
        ErrMsg err;

        is_int(convert(&in, &o, &res, &blob, &err), -EBADMSG, "empty input refused");
        has_str(err.text, "empty", "  message: %s", err.text);

        strbuf_append(&in, "This is a text file, not a tar archive.\n", 40);
        is_int(convert(&in, &o, &res, &blob, &err), -EBADMSG, "short text is not a tar");
        has_str(err.text, "tar", "  message: %s", err.text);
        strbuf_done(&in);

        for (int i = 0; i < 40; i++)
                strbuf_append(&in, "This is a text file, not a tar archive.\n", 40);
        is_int(convert(&in, &o, &res, &blob, &err), -EBADMSG, "longer text is not a tar");
        has_str(err.text, "checksum", "  message: %s", err.text);
        StrBuf gz = {};
        gzip_member(&gz, in.data, in.len, 6);
        is_int(convert(&gz, &o, &res, &blob, &err), -EBADMSG, "gzip of text is not a tar");
        has_str(err.text, "checksum", "  message: %s", err.text);
        strbuf_done(&gz);
        strbuf_done(&in);

        StrBuf tar = {};
        static uint8_t data[3000];
        tar_add(&tar, "file", '0', 0644, data, sizeof(data), NULL);
        tar_end(&tar);
        gzip_member(&gz, tar.data, tar.len, 1);
        gz.len -= 20;
        is_int(convert(&gz, &o, &res, &blob, &err), -EBADMSG, "truncated gzip input");
        ok(err.text[0], "  message: %s", err.text);
        strbuf_done(&gz);
        strbuf_append(&in, tar.data, 512 + 1000);
        is_int(convert(&in, &o, &res, &blob, &err), -EBADMSG, "tar truncated inside a file");
        has_str(err.text, "truncated", "  message: %s", err.text);
        strbuf_done(&in);
        strbuf_done(&tar);

        tar_add(&tar, "bad-\xff-name", '0', 0644, "x", 1, NULL);
        tar_end(&tar);
        is_int(convert(&tar, &o, &res, &blob, &err), -EBADMSG, "a name that is not UTF-8");
        has_str(err.text, "not UTF-8", "  message: %s", err.text);
        strbuf_done(&tar);

        tar_add(&tar, "f", '0', 0644, "x", 1, NULL);
        tar_end(&tar);
        o.chunk_size = (1ull << 30) + 1;
        is_int(convert(&tar, &o, &res, &blob, &err), -EINVAL, "chunk size over 1 GiB");
        has_str(err.text, "chunk size", "  message: %s", err.text);
        o = (ConvertOptions) { .level = 13 };
        is_int(convert(&tar, &o, &res, &blob, &err), -EINVAL, "compression level 13");
        has_str(err.text, "level 13", "  message: %s", err.text);
        o = (ConvertOptions) { .tmpdir = "/nonexistent/holdfast-unit" };
        is_int(convert(&tar, &o, &res, &blob, &err), -ENOENT, "missing tmpdir");
        has_str(err.text, "spool", "  message: %s", err.text);
        strbuf_done(&tar);
        strbuf_done(&blob);
}

static void test_odd_headers(void) {
        /* user, group and xattr names are not refused for bad UTF-8 as paths
         * are: they must still make a well-formed TOC, every field in place */
        StrBuf tar = {}, blob = {};
        TarXattr xa = { .name = (char *) "user.\xff\xfe", .value = (uint8_t *) "val", .len = 3 };
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "f", .typeflag = '0', .size = 1, .uname = (char *) "caf\xe9",
                                          .gname = (char *) "staff", .uid = 9 }, "x");
        tar_add_entry(&tar, &(TarHeader) { .name = (char *) "g", .typeflag = '0', .size = 1, .mtime = -5, .gname = (char *) "\xc3",
                                          .xattrs = &xa, .n_xattrs = 1, .mode = 0640 }, "y");
        tar_end(&tar);
        ConvertOptions o = {};
        ConvertResult res;
        ErrMsg err;
        if (!is_int(convert(&tar, &o, &res, &blob, &err), 0, "user/group/xattr names that are not UTF-8 (%s)", err.text))
                goto out;
        Toc *t = toc_of(&blob);
        ok(t, "  the TOC is valid JSON");
        for (const char *const *n = (const char *const[]) { "f", "g", NULL }; t && *n; n++) {
                const TocEntry *e = &t->entries[pos_of(t, *n)];
                ok(e->offset > 0 && e->digest != TOC_NO_DIGEST && e->size == 1, "  entry %s keeps offset, digest and size", *n);
        }
        if (t) {
                is_int(t->entries[pos_of(t, "f")].uid, 9, "  f keeps its uid after a bad userName");
                is_int(t->entries[pos_of(t, "g")].mode, 0640, "  g keeps its mode after a bad groupName");
        }
        toc_free(t);
        MemBlob mb;
        Layer *l = open_blob(&blob, &mb);
        if (ok(l, "  the blob opens")) {
                ok(file_is(l, "f", "x", 1) && file_is(l, "g", "y", 1), "  files read back");
                uint64_t ino;
                index_lookup_path(l->index, "g", &ino);
                const IndexInode *in = index_inode(l->index, ino);
                is_int(in->mtime, -5, "  mtime before the epoch kept");
                ok(in->xattr_count == 1 && memcmp(index_str(l->index, l->index->xattrs[in->xattr_first].name), "user.\xef\xbf\xbd\xef\xbf\xbd", 11) == 0 &&
                   memcmp(index_str(l->index, l->index->xattrs[in->xattr_first].value), "val", 3) == 0,
                   "  bad xattr name bytes become U+FFFD, as Go's encoding/json writes them; value kept");
                layer_free(l);
        }
out:
        strbuf_done(&tar);
        strbuf_done(&blob);
}

int main(void) {
        if (tmpdir_make(tmp) < 0) {
                ok(0, "mkdtemp");
                return done();
        }
        test_inputs();
        test_prefetch();
        test_duplicates();
        test_bad_input();
        test_odd_headers();
        tmpdir_remove(tmp);
        return done();
}
