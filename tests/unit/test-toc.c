/* Tests of common/estargz/toc: every field of a TOC entry, unknown keys
 * skipped whatever their shape, limits, and each malformed TOC refused
 * with a message that names the problem. Also the compressed TOC of a
 * gzip and a zstd:chunked layer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/estargz/toc.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "sha256:3333333333333333333333333333333333333333333333333333333333333333"

static int parse(const char *json, const TocLimits *limits, Toc **ret, ErrMsg *err) {
        *err = (ErrMsg) {};
        return toc_parse_json(json, strlen(json), limits, ret, err);
}

static void test_fields(void) {
        const char *json =
                "{\"version\":1,\"entries\":["
                "{\"name\":\"./etc/\",\"type\":\"dir\",\"modtime\":\"2021-03-04T05:06:07Z\",\"mode\":493,"
                "\"uid\":4294967295,\"gid\":7,\"userName\":\"root\",\"groupName\":\"wheel\","
                "\"xattrs\":{\"user.a\":\"AAEC/w==\",\"trusted.overlay.opaque\":\"eQ==\",\"user.empty\":\"\"}},"
                "{\"name\":\"etc/big\",\"type\":\"reg\",\"size\":10000,\"modtime\":\"2021-03-04T07:06:07+02:00\","
                "\"mode\":420,\"offset\":123,\"digest\":\"" D1 "\",\"chunkSize\":4096,\"chunkDigest\":\"" D2 "\"},"
                "{\"name\":\"etc/big\",\"type\":\"chunk\",\"offset\":456,\"chunkOffset\":4096,\"chunkSize\":4096,"
                "\"chunkDigest\":\"" D3 "\",\"innerOffset\":77},"
                "{\"name\":\"lnk\",\"type\":\"symlink\",\"linkName\":\"etc/big\",\"modtime\":\"1969-12-31T23:59:59.5-00:30\"},"
                "{\"name\":\"hard\",\"type\":\"hardlink\",\"linkName\":\"etc/big\"},"
                "{\"name\":\"dev/sda\",\"type\":\"block\",\"devMajor\":8,\"devMinor\":4294967295},"
                "{\"name\":\"dev/null\",\"type\":\"char\",\"devMajor\":1,\"devMinor\":3},"
                "{\"name\":\"fifo\",\"type\":\"fifo\",\"modtime\":\"\"},"
                "{\"name\":\"one\",\"type\":\"reg\",\"size\":5,\"offset\":900,\"digest\":\"" D3 "\",\"chunkDigest\":\"" D3 "\"}"
                "]}";
        Toc *t = NULL;
        ErrMsg err;
        int r = parse(json, NULL, &t, &err);
        if (!is_int(r, 0, "parse a TOC with every field (%s)", err.text))
                return;
        is_int(t->version, 1, "version");
        is_int(t->n_entries, 9, "9 entries");
        const TocEntry *e = &t->entries[0];
        is_str(toc_str(t, e->name), "./etc/", "name kept raw");
        is_int(e->name_len, 6, "name_len");
        is_int(e->type, TOC_DIR, "type dir");
        is_int(e->mtime, 1614834367, "modtime Z");
        is_int(e->mode, 0755, "mode");
        is_int(e->uid, 4294967295u, "uid 2^32-1");
        is_int(e->gid, 7, "gid");
        is_int(e->digest, TOC_NO_DIGEST, "no digest");
        is_int(e->xattr_count, 3, "three xattrs");
        if (e->xattr_count == 3) {
                const TocXattr *x = &t->xattrs[e->xattr_first];
                is_str(toc_str(t, x[0].name), "user.a", "xattr name");
                ok(x[0].value_len == 4 && memcmp(toc_str(t, x[0].value), "\x00\x01\x02\xff", 4) == 0, "xattr base64 value with NUL and 0xff");
                is_str(toc_str(t, x[1].name), "trusted.overlay.opaque", "second xattr name");
                ok(x[1].value_len == 1 && toc_str(t, x[1].value)[0] == 'y', "second xattr value");
                is_int(x[2].value_len, 0, "empty xattr value");
        }

        e = &t->entries[1];
        is_int(e->type, TOC_REG, "type reg");
        is_int(e->size, 10000, "size");
        is_int(e->mtime, 1614834367, "modtime +02:00 is the same instant");
        is_int(e->offset, 123, "offset");
        is_int(e->chunk_size, 4096, "chunkSize");
        is_int(e->chunk_offset, 0, "chunkOffset absent: 0");
        ok(e->digest != TOC_NO_DIGEST && memcmp(t->digests[e->digest], "\x11\x11\x11\x11", 4) == 0, "digest");
        ok(e->chunk_digest != TOC_NO_DIGEST && memcmp(t->digests[e->chunk_digest], "\x22\x22", 2) == 0, "chunkDigest");
        is_int(e->xattr_count, 0, "no xattrs");

        e = &t->entries[2];
        is_int(e->type, TOC_CHUNK, "type chunk");
        is_int(e->offset, 456, "chunk offset");
        is_int(e->chunk_offset, 4096, "chunkOffset");
        is_int(e->inner_offset, 77, "innerOffset");
        ok(e->chunk_digest != TOC_NO_DIGEST && memcmp(t->digests[e->chunk_digest], "\x33\x33", 2) == 0, "chunk's chunkDigest");

        e = &t->entries[3];
        is_int(e->type, TOC_SYMLINK, "type symlink");
        is_str(toc_str(t, e->link), "etc/big", "linkName");
        is_int(e->link_len, 7, "link_len");
        is_int(e->mtime, 1800 - 1, "fractional modtime with -00:30 offset, before the epoch");
        is_int(t->entries[4].type, TOC_HARDLINK, "type hardlink");
        e = &t->entries[5];
        is_int(e->type, TOC_BLOCK, "type block");
        is_int(e->devmajor, 8, "devMajor");
        is_int(e->devminor, 4294967295u, "devMinor 2^32-1");
        is_int(t->entries[6].type, TOC_CHAR, "type char");
        is_int(t->entries[7].type, TOC_FIFO, "type fifo");
        is_int(t->entries[7].mtime, 0, "empty modtime: 0");
        e = &t->entries[8];
        ok(e->digest == e->chunk_digest && e->digest != TOC_NO_DIGEST, "equal digest and chunkDigest share a slot");
        toc_free(t);
        ok(toc_free(NULL) == NULL, "toc_free(NULL)");

        for (int i = 0; i < _TOC_TYPE_MAX; i++)
                ok(strcmp(toc_type_to_string((TocType) i), "unknown") != 0, "type %d has a name: %s", i, toc_type_to_string((TocType) i));
        is_str(toc_type_to_string(_TOC_TYPE_MAX), "unknown", "out-of-range type");
}

static void test_unknown_keys(void) {
        const char *json =
                "{\"extra\":{\"a\":[1,{\"b\":null},[[]]],\"c\":\"d\"},\"list\":[{},[],3.5,true],"
                "\"version\":1,\"scalar\":false,\"entries\":["
                "{\"name\":\"a\",\"x-future\":{\"nested\":{\"deep\":[1,2,{\"k\":\"v\"}]}},\"type\":\"reg\","
                "\"x-arr\":[{\"size\":5},[\"type\",\"dir\"]],\"x-null\":null,\"x-bool\":true,\"x-num\":1.5e3,"
                "\"x-str\":\"s\",\"x-empty\":{},\"size\":3,\"x-last\":[]},"
                "{\"type\":\"dir\",\"name\":\"b\",\"digest\":null,\"uid\":null}"
                "],\"trailer\":{\"entries\":[{\"name\":\"evil\",\"type\":\"reg\"}]}}";
        Toc *t = NULL;
        ErrMsg err;
        if (!is_int(parse(json, NULL, &t, &err), 0, "unknown keys of every shape are skipped (%s)", err.text))
                return;
        is_int(t->n_entries, 2, "exactly the two real entries");
        is_str(toc_str(t, t->entries[0].name), "a", "first name");
        is_int(t->entries[0].type, TOC_REG, "type not confused by skipped values");
        is_int(t->entries[0].size, 3, "size not taken from a skipped object");
        is_int(t->entries[1].type, TOC_DIR, "second entry");
        is_int(t->entries[1].digest, TOC_NO_DIGEST, "null digest reads as absent");
        toc_free(t);
}

static void expect(const char *json, const TocLimits *limits, int want, const char *needle, const char *what) {
        Toc *t = (Toc *) 0x1;
        ErrMsg err;
        int r = parse(json, limits, &t, &err);
        is_int(r, want, "%s", what);
        has_str(err.text, needle, "  message: %s", err.text);
        ok(!strchr(err.text, '\n'), "  message is one line");
        ok(t == (Toc *) 0x1, "  *ret untouched");
        if (r >= 0 && t != (Toc *) 0x1)
                toc_free(t);
}

#define E(body) "{\"version\":1,\"entries\":[" body "]}"

static void test_errors(void) {
        expect("this is not json", NULL, -EBADMSG, "not valid JSON", "not JSON");
        expect("", NULL, -EBADMSG, "TOC", "empty input");
        expect("[1,2]", NULL, -EBADMSG, "unexpected array", "top level array");
        expect("{\"version\":2,\"entries\":[]}", NULL, -EOPNOTSUPP, "version 2", "version 2");
        expect("{\"version\":0,\"entries\":[]}", NULL, -EOPNOTSUPP, "version 0", "version 0");
        expect("{\"entries\":[]}", NULL, -EBADMSG, "no version", "missing version");
        expect("{\"version\":\"1\",\"entries\":[]}", NULL, -EBADMSG, "string", "version as a string");
        expect("{\"version\":1,\"entries\":{}}", NULL, -EBADMSG, "unexpected object", "entries as an object");
        expect(E("{\"name\":\"a\",\"type\":\"socket\"}"), NULL, -EBADMSG, "unknown type 'socket'", "unknown type");
        expect(E("{\"name\":\"a\"}"), NULL, -EBADMSG, "no type", "entry without a type");
        expect(E("{\"type\":\"reg\"}"), NULL, -EBADMSG, "no name", "entry without a name");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":-1}"), NULL, -EBADMSG, "size is negative", "negative size");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"offset\":-5}"), NULL, -EBADMSG, "offset is negative", "negative offset");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"digest\":\"sha256:abc\"}"), NULL, -EBADMSG, "digest 'sha256:abc' is not a valid",
               "short digest");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"chunkDigest\":\"md5:00\"}"), NULL, -EOPNOTSUPP, "chunkDigest 'md5:00' uses an unsupported algorithm",
               "digest of another algorithm");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"digest\":5}"), NULL, -EBADMSG, "digest must not be a number", "digest as a number");
        expect(E("{\"name\":5,\"type\":\"reg\"}"), NULL, -EBADMSG, "name must not be a number", "name as a number");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":\"12\"}"), NULL, -EBADMSG, "size must not be a string", "size as a string");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":1.5}"), NULL, -EBADMSG, "size must be an integer", "size as a float");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"mode\":true}"), NULL, -EBADMSG, "boolean for mode", "mode as a boolean");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"uid\":[1]}"), NULL, -EBADMSG, "array for uid", "uid as an array");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"gid\":{}}"), NULL, -EBADMSG, "gid must not be an object", "gid as an object");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"uid\":4294967296}"), NULL, -EBADMSG, "uid 4294967296 is out of range", "uid 2^32");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"devMajor\":-1}"), NULL, -EBADMSG, "devMajor -1 is out of range", "negative devMajor");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"modtime\":\"yesterday\"}"), NULL, -EBADMSG, "modtime 'yesterday' is not RFC 3339", "bad modtime");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"modtime\":\"2021-13-01T00:00:00Z\"}"), NULL, -EBADMSG, "modtime", "month 13");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"modtime\":\"2021-01-01T00:00:00+0200\"}"), NULL, -EBADMSG, "modtime", "offset without a colon");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"xattrs\":{\"user.x\":\"abc\"}}"), NULL, -EBADMSG, "not base64", "xattr not base64");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"xattrs\":{\"user.x\":\"a=bc\"}}"), NULL, -EBADMSG, "not base64", "xattr with '=' inside");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"xattrs\":{\"user.x\":1}}"), NULL, -EBADMSG, "number", "xattr value as a number");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"xattrs\":{\"\":\"\"}}"), NULL, -EBADMSG, "empty xattr name", "empty xattr name");
        expect(E("{\"name\":\"a\\u0000b\",\"type\":\"reg\"}"), NULL, -EBADMSG, "NUL", "name with a NUL");
        expect(E("{\"name\":\"a\",\"type\":\"symlink\"}"), NULL, -EBADMSG, "no linkName", "symlink without a target");
        expect(E("{\"name\":\"a\",\"type\":\"dir\",\"size\":5}"), NULL, -EBADMSG, "dir entry has a size", "dir with a size");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":9223372036854775807,\"offset\":1}"
                 "]}trailing"), NULL, -EBADMSG, "JSON", "trailing garbage");
        expect("{\"version\":1,\"entries\":[{\"name\":\"a\",\"type\":\"reg\"}", NULL, -EBADMSG, "premature EOF", "truncated JSON");
        expect("{\"version\":1,\"entries\":[{\"name\":\"a\",\"ty", NULL, -EBADMSG, "JSON", "JSON cut inside a key");
        expect(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":99999999999999999999}"), NULL, -EBADMSG, "JSON", "integer overflow");

        /* which entry: messages count entries from 0 */
        expect(E("{\"name\":\"a\",\"type\":\"reg\"},{\"name\":\"b\",\"type\":\"reg\",\"size\":-3}"), NULL, -EBADMSG, "TOC entry 1:",
               "message names the entry index");

        TocLimits lim = { .max_json_bytes = 1 << 20, .max_entries = 3 };
        const char *four = E("{\"name\":\"a\",\"type\":\"reg\"},{\"name\":\"b\",\"type\":\"reg\"},"
                             "{\"name\":\"c\",\"type\":\"reg\"},{\"name\":\"d\",\"type\":\"reg\"}");
        expect(four, &lim, -EFBIG, "more than 3 entries", "too many entries");
        lim.max_entries = 4;
        Toc *t = NULL;
        ErrMsg err;
        is_int(parse(four, &lim, &t, &err), 0, "exactly max_entries is fine");
        toc_free(t);

        lim = (TocLimits) { .max_json_bytes = 20, .max_entries = 100 };
        expect(four, &lim, -EFBIG, "larger than the configured cap of 20 bytes", "JSON over max_json_bytes");
        lim.max_json_bytes = strlen(four);
        t = NULL;
        is_int(parse(four, &lim, &t, &err), 0, "JSON of exactly max_json_bytes is fine");
        toc_free(t);

        /* an empty entries list is a valid, empty TOC */
        t = NULL;
        is_int(parse("{\"version\":1,\"entries\":[]}", NULL, &t, &err), 0, "empty TOC");
        if (t)
                is_int(t->n_entries, 0, "  no entries");
        toc_free(t);
        t = NULL;
        is_int(parse("{\"version\":1}", NULL, &t, &err), 0, "TOC without entries");
        toc_free(t);
}

static void test_compressed(void) {
        const char *json = E("{\"name\":\"x\",\"type\":\"reg\",\"size\":1,\"offset\":10}");
        uint8_t want[SHA256_LEN], got[SHA256_LEN];
        sha256_buf(json, strlen(json), want);

        /* gzip: a tar entry named stargz.index.json in one member */
        StrBuf tar = {}, gz = {};
        tar_add(&tar, ESTARGZ_TOC_TAR_NAME, '0', 0644, json, strlen(json), NULL);
        tar_end(&tar);
        gzip_member(&gz, tar.data, tar.len, 9);
        Toc *t = NULL;
        ErrMsg err = {};
        int r = toc_parse_compressed(LAYER_FORMAT_ESTARGZ, (const uint8_t *) gz.data, gz.len, NULL, &t, got, &err);
        is_int(r, 0, "gzip TOC member parses (%s)", err.text);
        ok(r == 0 && memcmp(got, want, SHA256_LEN) == 0, "TOC digest is the sha256 of the JSON");
        if (t)
                is_int(t->n_entries, 1, "one entry");
        toc_free(t);

        /* the tar entry must have the right name */
        StrBuf tar2 = {}, gz2 = {};
        tar_add(&tar2, "other.json", '0', 0644, json, strlen(json), NULL);
        tar_end(&tar2);
        gzip_member(&gz2, tar2.data, tar2.len, 9);
        t = NULL;
        err = (ErrMsg) {};
        is_int(toc_parse_compressed(LAYER_FORMAT_ESTARGZ, (const uint8_t *) gz2.data, gz2.len, NULL, &t, got, &err), -EBADMSG,
               "TOC tar entry with another name");
        has_str(err.text, "other.json", "  message: %s", err.text);

        /* truncated member */
        err = (ErrMsg) {};
        is_int(toc_parse_compressed(LAYER_FORMAT_ESTARGZ, (const uint8_t *) gz.data, gz.len / 2, NULL, &t, got, &err), -EBADMSG,
               "truncated gzip TOC");
        ok(err.text[0], "  message: %s", err.text);
        err = (ErrMsg) {};
        is_int(toc_parse_compressed(LAYER_FORMAT_ESTARGZ, (const uint8_t *) "garbage!", 8, NULL, &t, got, &err), -EBADMSG,
               "gzip TOC that is not gzip");
        has_str(err.text, "TOC", "  message: %s", err.text);

        /* limits apply to the streamed JSON */
        TocLimits lim = { .max_json_bytes = 10, .max_entries = 10 };
        err = (ErrMsg) {};
        is_int(toc_parse_compressed(LAYER_FORMAT_ESTARGZ, (const uint8_t *) gz.data, gz.len, &lim, &t, got, &err), -EFBIG,
               "compressed TOC over max_json_bytes");
        has_str(err.text, "cap", "  message: %s", err.text);

        /* zstd:chunked: a zstd frame of JSON */
        StrBuf zs = {};
        size_t bound = ZSTD_compressBound(strlen(json));
        strbuf_reserve(&zs, bound);
        zs.len = ZSTD_compress(zs.data, bound, json, strlen(json), 3);
        t = NULL;
        err = (ErrMsg) {};
        r = toc_parse_compressed(LAYER_FORMAT_ZSTD_CHUNKED, (const uint8_t *) zs.data, zs.len, NULL, &t, got, &err);
        is_int(r, 0, "zstd TOC frame parses (%s)", err.text);
        ok(r == 0 && memcmp(got, want, SHA256_LEN) == 0, "zstd TOC digest is the sha256 of the JSON");
        toc_free(t);
        err = (ErrMsg) {};
        is_int(toc_parse_compressed(LAYER_FORMAT_ZSTD_CHUNKED, (const uint8_t *) zs.data, zs.len - 2, NULL, &t, got, &err), -EBADMSG,
               "truncated zstd TOC");
        has_str(err.text, "zstd", "  message: %s", err.text);

        strbuf_done(&tar);
        strbuf_done(&gz);
        strbuf_done(&tar2);
        strbuf_done(&gz2);
        strbuf_done(&zs);
}

int main(void) {
        test_fields();
        test_unknown_keys();
        test_errors();
        test_compressed();
        return done();
}
