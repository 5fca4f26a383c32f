/* Tests of common/estargz/layer: a blob made by estargz_convert() opened
 * through fd_read_at and read back at random offsets against the source
 * bytes; corruption, a wrong TOC digest, unverifiable chunks, and blobs
 * that are shorter than they claim or read in small pieces. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/estargz/layer.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

#define CHUNK 4096

typedef struct File {
        const char *name;
        size_t size;
        uint8_t *data;
} File;

static File files[] = {
        { "empty", 0, NULL },
        { "one", 1, NULL },
        { "exact", CHUNK, NULL },
        { "dir/exact-plus-one", CHUNK + 1, NULL },
        { "dir/sub/several", 5 * CHUNK + 1234, NULL },
        { "text", 3 * CHUNK + 17, NULL },
};

static char tmp[4096];

/* The converted blob of files[], in memory and in tmp/output.blob. */
static int make_blob(StrBuf *blob, ConvertResult *res) {
        Rng rng = { 2024 };
        StrBuf tar = {};
        tar_add(&tar, "dir/", '5', 0755, NULL, 0, NULL);
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                File *f = &files[i];
                f->data = malloc(f->size + 1);
                if (strcmp(f->name, "text") == 0)
                        for (size_t k = 0; k < f->size; k++)
                                f->data[k] = (uint8_t) "lorem ipsum dolor sit amet\n"[k % 27];
                else
                        rng_fill(&rng, f->data, f->size);
                tar_add(&tar, f->name, '0', 0644, f->data, f->size, NULL);
        }
        tar_add(&tar, "link", '2', 0777, NULL, 0, "one");
        tar_end(&tar);
        ConvertOptions o = { .chunk_size = CHUNK };
        ErrMsg err = {};
        int r = convert_mem(tmp, tar.data, tar.len, &o, res, blob, &err);
        if (r < 0)
                diag("convert: %s", err.text);
        strbuf_done(&tar);
        return r;
}

static void test_read_back(const StrBuf *blob, const ConvertResult *res) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/output.blob", tmp);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        Layer *l = NULL;
        ErrMsg err = {};
        LayerOptions o = { .expect_toc_digest = res->toc_digest };
        if (!is_int(layer_open(fd_read_at, &fd, blob->len, &o, &l, &err), 0, "layer_open over fd_read_at (%s)", err.text)) {
                close(fd);
                return;
        }
        is_int(l->footer.format, LAYER_FORMAT_ESTARGZ, "eStargz footer");
        ok(memcmp(l->toc_digest, res->toc_digest, SHA256_LEN) == 0, "TOC digest as the writer reported");
        ok(l->verify, "verification on by default");
        is_int(l->index->n_unverified, 0, "every chunk has a digest");

        ChunkDecoder *d;
        chunk_decoder_new(&d);
        Rng rng = { 11 };
        uint8_t *buf = malloc(8 * CHUNK);
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                const File *f = &files[i];
                uint64_t ino;
                if (!is_int(index_lookup_path(l->index, f->name, &ino), 0, "%s found", f->name))
                        continue;
                const IndexInode *in = index_inode(l->index, ino);
                is_int(in->size, f->size, "  size %zu", f->size);
                is_int(in->count, (f->size + CHUNK - 1) / CHUNK, "  %u chunks", in->count);
                ssize_t n = layer_read(l, d, ino, 0, f->size + 100, buf, &err);
                ok(n == (ssize_t) f->size && (f->size == 0 || memcmp(buf, f->data, f->size) == 0), "  whole file read (%zd)", n);
                is_int(layer_read(l, d, ino, f->size, 10, buf, &err), 0, "  read at the end: 0");
                is_int(layer_read(l, d, ino, f->size + 5000, 10, buf, &err), 0, "  read past the end: 0");
                size_t bad = 0;
                for (int k = 0; k < 60 && f->size > 0; k++) {
                        uint64_t off = rng_below(&rng, f->size);
                        size_t len = 1 + (size_t) rng_below(&rng, MIN((uint64_t) 8 * CHUNK, f->size + 10));
                        if (k % 10 == 0) /* chunk boundaries */
                                off = MIN((uint64_t) (k / 10) * CHUNK, f->size - 1);
                        size_t want = (size_t) MIN((uint64_t) len, f->size - off);
                        n = layer_read(l, d, ino, off, len, buf, &err);
                        if (n != (ssize_t) want || memcmp(buf, f->data + off, want) != 0) {
                                diag("read of %zu at %llu: %zd (%s)", len, (unsigned long long) off, n, err.text);
                                bad++;
                        }
                }
                is_int(bad, 0, "  60 random reads match the source");
                is_int(layer_read_file(l, d, ino, NULL, NULL, &err), 0, "  layer_read_file verifies the whole file (%s)", err.text);
        }
        uint64_t ino;
        index_lookup_path(l->index, "dir", &ino);
        is_int(layer_read(l, d, ino, 0, 1, buf, &err), -EISDIR, "layer_read of a directory: -EISDIR");
        index_lookup_path(l->index, "link", &ino);
        is_int(layer_read(l, d, ino, 0, 1, buf, &err), -EINVAL, "layer_read of a symlink: -EINVAL");
        is_int(layer_read(l, d, 12345, 0, 1, buf, &err), -ENOENT, "layer_read of a missing inode: -ENOENT");
        free(buf);
        chunk_decoder_free(d);
        layer_free(l);
        close(fd);
        ok(layer_free(NULL) == NULL, "layer_free(NULL)");
}

static ssize_t read_file_ino(Layer *l, const char *name, uint8_t *buf, size_t len, ErrMsg *err) {
        uint64_t ino;
        if (index_lookup_path(l->index, name, &ino) < 0)
                return -ENOENT;
        ChunkDecoder *d;
        chunk_decoder_new(&d);
        *err = (ErrMsg) {};
        ssize_t n = layer_read(l, d, ino, 0, len, buf, err);
        chunk_decoder_free(d);
        return n;
}

static void test_corruption(const StrBuf *blob) {
        Layer *l = NULL;
        ErrMsg err = {};
        MemBlob mb = { .data = (const uint8_t *) blob->data, .len = blob->len };
        if (!is_int(layer_open(mem_blob_read_at, &mb, blob->len, NULL, &l, &err), 0, "layer_open over memory"))
                return;
        /* flip bytes inside the compressed ranges of several's chunks */
        uint64_t ino;
        index_lookup_path(l->index, "dir/sub/several", &ino);
        const IndexInode *in = index_inode(l->index, ino);
        const File *f = &files[4];
        uint8_t *buf = malloc(f->size);
        StrBuf bad = {};
        strbuf_append(&bad, blob->data, blob->len);
        mb.data = (const uint8_t *) bad.data;
        size_t caught = 0, tries = 0, wrong = 0;
        for (uint32_t ci = 0; ci < in->count; ci++) {
                const IndexChunk *c = &l->index->chunks[in->first + ci];
                for (uint64_t at = c->blob_offset; at < c->blob_end; at += (c->blob_end - c->blob_offset) / 5 + 1) {
                        bad.data[at] ^= 0x01;
                        ssize_t n = read_file_ino(l, f->name, buf, f->size, &err);
                        tries++;
                        if (n == -EBADMSG && (strstr(err.text, "digest mismatch") || strstr(err.text, "corrupt")))
                                caught++;
                        else if (n != (ssize_t) f->size || memcmp(buf, f->data, f->size) != 0) {
                                diag("flip at %llu: %zd (%s)", (unsigned long long) at, n, err.text);
                                wrong++;
                        }
                        bad.data[at] ^= 0x01;
                }
        }
        is_int(wrong, 0, "a flipped byte never gives wrong bytes or another error (%zu flips)", tries);
        ok(caught >= tries / 2, "flipped bytes are caught: %zu of %zu", caught, tries);
        /* the middle of a chunk of random data is stored verbatim: a flip there must be a digest mismatch */
        const IndexChunk *c = &l->index->chunks[in->first + 1];
        bad.data[(c->blob_offset + c->blob_end) / 2] ^= 0x80;
        ssize_t n = read_file_ino(l, f->name, buf, f->size, &err);
        is_int(n, -EBADMSG, "flip in the middle of a chunk: -EBADMSG");
        ok(strstr(err.text, "digest mismatch") || strstr(err.text, "corrupt"), "  message: %s", err.text);
        strbuf_done(&bad);
        free(buf);
        layer_free(l);
}

static void test_open_errors(const StrBuf *blob, const ConvertResult *res) {
        Layer *l = NULL;
        ErrMsg err = {};
        MemBlob mb = { .data = (const uint8_t *) blob->data, .len = blob->len };

        uint8_t wrong[SHA256_LEN];
        memcpy(wrong, res->toc_digest, SHA256_LEN);
        wrong[0] ^= 1;
        LayerOptions o = { .expect_toc_digest = wrong };
        is_int(layer_open(mem_blob_read_at, &mb, blob->len, &o, &l, &err), -EBADMSG, "wrong expected TOC digest");
        has_str(err.text, "TOC digest mismatch", "  message: %s", err.text);

        /* short reads are fine */
        mb.max_read = 7;
        err = (ErrMsg) {};
        if (is_int(layer_open(mem_blob_read_at, &mb, blob->len, NULL, &l, &err), 0, "reads of 7 bytes at a time (%s)", err.text)) {
                uint8_t buf[CHUNK + 1];
                ssize_t n = read_file_ino(l, "dir/exact-plus-one", buf, sizeof(buf), &err);
                ok(n == CHUNK + 1 && memcmp(buf, files[3].data, CHUNK + 1) == 0, "  file read through short reads");
                /* the blob now ends early: reads of the data fail with -EIO */
                mb.len = l->index->chunks[0].blob_offset;
                mb.max_read = 0;
                n = read_file_ino(l, "dir/exact-plus-one", buf, sizeof(buf), &err);
                is_int(n, -EIO, "blob ends before the chunk: -EIO");
                has_str(err.text, "blob ends at", "  message: %s", err.text);
                mb.len = blob->len;
                mb.fail_errno = EPERM;
                n = read_file_ino(l, "dir/exact-plus-one", buf, sizeof(buf), &err);
                is_int(n, -EIO, "read callback error: -EIO");
                has_str(err.text, "Operation not permitted", "  message keeps the cause: %s", err.text);
                mb.fail_errno = 0;
                layer_free(l);
        }
        mb.max_read = 0;

        /* a blob that claims more bytes than it has: the footer read comes back short */
        err = (ErrMsg) {};
        is_int(layer_open(mem_blob_read_at, &mb, blob->len + 100, NULL, &l, &err), -EIO, "blob shorter than its size: -EIO");
        ok(err.text[0], "  message: %s", err.text);
        err = (ErrMsg) {};
        is_int(layer_open(mem_blob_read_at, &mb, blob->len - 1, NULL, &l, &err), -EBADMSG, "a blob cut by one byte has no footer");
        has_str(err.text, "no footer", "  message: %s", err.text);
        err = (ErrMsg) {};
        is_int(layer_open(mem_blob_read_at, &mb, 0, NULL, &l, &err), -EBADMSG, "empty blob");
        err = (ErrMsg) {};
        o = (LayerOptions) { .limits = { .max_json_bytes = 100 } };
        is_int(layer_open(mem_blob_read_at, &mb, blob->len, &o, &l, &err), -EFBIG, "TOC over the configured cap");
        ok(err.text[0], "  message: %s", err.text);
        o = (LayerOptions) { .limits = { .max_entries = 2 } };
        is_int(layer_open(mem_blob_read_at, &mb, blob->len, &o, &l, &err), -EFBIG, "more entries than the cap");
        has_str(err.text, "entries", "  message: %s", err.text);
}

static void test_unverified(void) {
        uint8_t data[300];
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t) (i * 13);
        StrBuf blob = {};
        char json[1024], dg[72];
        blob_add(&blob, "", 0); /* offset 0 holds tar headers, never a chunk */
        int64_t o0 = blob_add(&blob, data, 200);
        int64_t o1 = blob_add(&blob, data + 200, 100);
        int64_t o2 = blob_add(&blob, data, 50);
        sha256_hex(data, 50, dg);
        /* f: two chunks without chunkDigest; g: one chunk verified by its file digest */
        snprintf(json, sizeof(json),
                 "{\"version\":1,\"entries\":["
                 "{\"name\":\"f\",\"type\":\"reg\",\"size\":300,\"offset\":%lld,\"chunkSize\":200},"
                 "{\"name\":\"f\",\"type\":\"chunk\",\"offset\":%lld,\"chunkOffset\":200},"
                 "{\"name\":\"g\",\"type\":\"reg\",\"size\":50,\"offset\":%lld,\"digest\":\"%s\"}]}",
                 (long long) o0, (long long) o1, (long long) o2, dg);
        blob_finish(&blob, json);
        MemBlob mb = { .data = (const uint8_t *) blob.data, .len = blob.len };
        Layer *l = NULL;
        ErrMsg err = {};
        is_int(layer_open(mem_blob_read_at, &mb, blob.len, NULL, &l, &err), -EBADMSG, "chunks without chunkDigest are refused");
        has_str(err.text, "2 of 3 chunks have no digest", "  message: %s", err.text);
        LayerOptions o = { .allow_unverified = true };
        err = (ErrMsg) {};
        if (is_int(layer_open(mem_blob_read_at, &mb, blob.len, &o, &l, &err), 0, "accepted with allow_unverified (%s)", err.text)) {
                ok(!l->verify, "  verification off");
                uint8_t buf[300];
                ssize_t n = read_file_ino(l, "f", buf, sizeof(buf), &err);
                ok(n == 300 && memcmp(buf, data, 300) == 0, "  unverified file reads");
                layer_free(l);
        }

        /* g alone (one chunk, file digest) is verifiable */
        StrBuf b2 = {};
        blob_add(&b2, "", 0);
        o2 = blob_add(&b2, data, 50);
        snprintf(json, sizeof(json), "{\"version\":1,\"entries\":[{\"name\":\"g\",\"type\":\"reg\",\"size\":50,\"offset\":%lld,\"digest\":\"%s\"}]}",
                 (long long) o2, dg);
        blob_finish(&b2, json);
        mb = (MemBlob) { .data = (const uint8_t *) b2.data, .len = b2.len };
        err = (ErrMsg) {};
        if (is_int(layer_open(mem_blob_read_at, &mb, b2.len, NULL, &l, &err), 0, "a one-chunk file with only a file digest opens (%s)",
                   err.text)) {
                uint8_t buf[50];
                ssize_t n = read_file_ino(l, "g", buf, sizeof(buf), &err);
                ok(n == 50 && memcmp(buf, data, 50) == 0, "  and reads");
                layer_free(l);
        }
        /* the same TOC over other bytes: the file digest catches it */
        StrBuf b3 = {};
        uint8_t other[50];
        memcpy(other, data, 50);
        other[49] ^= 1;
        blob_add(&b3, "", 0);
        blob_add(&b3, other, 50);
        blob_finish(&b3, json);
        mb = (MemBlob) { .data = (const uint8_t *) b3.data, .len = b3.len };
        if (is_int(layer_open(mem_blob_read_at, &mb, b3.len, NULL, &l, &err), 0, "same TOC over other data opens")) {
                uint8_t buf[50];
                ssize_t n = read_file_ino(l, "g", buf, sizeof(buf), &err);
                is_int(n, -EBADMSG, "  the file digest catches the changed byte");
                has_str(err.text, "digest mismatch", "  message: %s", err.text);
                layer_free(l);
        }
        strbuf_done(&b3);
        strbuf_done(&b2);
        strbuf_done(&blob);
}

int main(void) {
        if (tmpdir_make(tmp) < 0) {
                ok(0, "mkdtemp");
                return done();
        }
        StrBuf blob = {};
        ConvertResult res = {};
        if (is_int(make_blob(&blob, &res), 0, "convert the test tar")) {
                test_read_back(&blob, &res);
                test_corruption(&blob);
                test_open_errors(&blob, &res);
        }
        test_unverified();
        strbuf_done(&blob);
        for (size_t i = 0; i < ELEMENTSOF(files); i++)
                free(files[i].data);
        tmpdir_remove(tmp);
        return done();
}
