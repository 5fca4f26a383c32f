/* Tests of worker/snapshotter's parsers of socket bytes and its reply
 * encoders: the gRPC length prefix (grpc-frame.c) and grpc-message
 * encoding, the snapshots requests (service-pb.c: maps, lists, caps), and
 * containerd's filter language (filter.c: syntax, quoting and escapes,
 * the regular expressions it accepts, matching). Pure: no files, no
 * sockets. Requests are built here with a few protobuf wire helpers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/strbuf.h"
#include "tests/unit/tap.h"
#include "worker/snapshotter/filter.h"
#include "worker/snapshotter/grpc-frame.h"
#include "worker/snapshotter/service-pb.h"

/* ---- protobuf by hand ---- */

static void pb_varint(StrBuf *b, uint64_t v) {
        while (v >= 0x80) {
                strbuf_putc(b, (char) (v | 0x80));
                v >>= 7;
        }
        strbuf_putc(b, (char) v);
}

static void pb_bytes(StrBuf *b, unsigned field, const void *data, size_t len) {
        pb_varint(b, field << 3 | 2);
        pb_varint(b, len);
        strbuf_append(b, data, len);
}

static void pb_str(StrBuf *b, unsigned field, const char *s) {
        pb_bytes(b, field, s, strlen(s));
}

static void pb_label(StrBuf *b, unsigned field, const char *k, const char *v) {
        StrBuf e = {};
        pb_str(&e, 1, k);
        pb_str(&e, 2, v);
        pb_bytes(b, field, e.data, e.len);
        strbuf_done(&e);
}

/* ---- framing ---- */

static void test_frame(void) {
        uint8_t buf[32] = { 0, 0, 0, 0, 3, 'a', 'b', 'c' };
        uint32_t len;
        const uint8_t *msg;
        size_t mlen;
        is_int(grpc_frame_peek(buf, 4, 100, &len), 0, "peek: 4 bytes are not a prefix yet");
        is_int(grpc_frame_peek(buf, 5, 100, &len), 1, "peek: a prefix");
        is_int(len, 3, "declares 3 bytes");
        is_int(grpc_frame_peek(buf, 5, 2, &len), -EMSGSIZE, "over the cap: -EMSGSIZE");
        is_int(grpc_frame_single(buf, 8, 100, &msg, &mlen), 0, "one whole message");
        ok(mlen == 3 && memcmp(msg, "abc", 3) == 0, "the message bytes");
        is_int(grpc_frame_single(buf, 7, 100, &msg, &mlen), -EBADMSG, "cut: -EBADMSG");
        is_int(grpc_frame_single(buf, 9, 100, &msg, &mlen), -EBADMSG, "trailing bytes: -EBADMSG");
        is_int(grpc_frame_single(buf, 0, 100, &msg, &mlen), -EBADMSG, "nothing: -EBADMSG");
        is_int(grpc_frame_single(buf, 3, 100, &msg, &mlen), -EBADMSG, "a cut prefix: -EBADMSG");
        buf[0] = 1;
        is_int(grpc_frame_single(buf, 8, 100, &msg, &mlen), -EPROTONOSUPPORT, "compressed: -EPROTONOSUPPORT");
        buf[0] = 2;
        is_int(grpc_frame_single(buf, 8, 100, &msg, &mlen), -EBADMSG, "flag 2: -EBADMSG");
        uint8_t empty[5] = { 0 };
        is_int(grpc_frame_single(empty, 5, 100, &msg, &mlen), 0, "an empty message is one message");
        is_int(mlen, 0, "of length 0");
        uint8_t h[5];
        grpc_frame_header(h, 0x01020304);
        ok(h[0] == 0 && h[1] == 1 && h[2] == 2 && h[3] == 3 && h[4] == 4, "header: flag 0, big-endian length");

        char out[16];
        grpc_status_message_encode("a%b\nc\xff", out, sizeof(out));
        is_str(out, "a%25b%0Ac%FF", "grpc-message: percent, control and high bytes percent-encoded");
        grpc_status_message_encode("abcdefgh%", out, 11);
        is_str(out, "abcdefgh", "truncation never splits an escape");
}

/* ---- requests ---- */

static int decode(SnapMethod m, const StrBuf *b, SnapRequest *req, ErrMsg *err) {
        return snap_request_decode(m, (const uint8_t *) b->data, b->len, req, err);
}

static void test_requests(void) {
        StrBuf b = {};
        SnapRequest req = {};
        ErrMsg err = {};
        pb_str(&b, 1, "holdfast");
        pb_str(&b, 2, "default/3/extract-1 sha256:abc");
        pb_str(&b, 3, "sha256:parent");
        pb_label(&b, 4, "containerd.io/snapshot.ref", "sha256:abc");
        pb_label(&b, 4, "a", "1");
        pb_label(&b, 4, "a", "2");
        is_int(decode(SNAP_METHOD_PREPARE, &b, &req, &err), 0, "Prepare decodes (%s)", err.text);
        is_str(req.key, "default/3/extract-1 sha256:abc", "key");
        is_str(req.parent, "sha256:parent", "parent");
        is_int(req.labels.n, 2, "two labels (a map: the last of a key wins)");
        is_str(snap_labels_get(&req.labels, "a"), "2", "a=2");
        snap_request_clear(&req);

        /* View shares the layout; Commit's name and key */
        strbuf_done(&b);
        pb_str(&b, 2, "name");
        pb_str(&b, 3, "key");
        pb_label(&b, 4, "l", "v");
        is_int(decode(SNAP_METHOD_COMMIT, &b, &req, &err), 0, "Commit decodes");
        ok(req.name && strcmp(req.name, "name") == 0 && strcmp(req.key, "key") == 0 && req.labels.n == 1,
           "name, key, labels");
        snap_request_clear(&req);

        /* caps */
        strbuf_done(&b);
        char *longkey = malloc(5000);
        memset(longkey, 'k', 4999);
        longkey[4999] = 0;
        pb_str(&b, 2, longkey);
        is_int(decode(SNAP_METHOD_STAT, &b, &req, &err), -EBADMSG, "a key over 4,095 bytes: -EBADMSG");
        has_str(err.text, "unmarshalling", "message: %s", err.text);
        strbuf_done(&b);
        longkey[4095] = 0;
        pb_str(&b, 2, longkey);
        is_int(decode(SNAP_METHOD_STAT, &b, &req, &err), 0, "a key of 4,095 bytes is fine");
        snap_request_clear(&req);
        free(longkey);

        strbuf_done(&b);
        pb_str(&b, 2, "k");
        for (int i = 0; i < SNAP_LABELS_MAX + 1; i++) {
                char k[16];
                snprintf(k, sizeof(k), "l%d", i);
                pb_label(&b, 4, k, "v");
        }
        is_int(decode(SNAP_METHOD_PREPARE, &b, &req, &err), -EBADMSG, "more than %d labels: -EBADMSG", SNAP_LABELS_MAX);
        has_str(err.text, "too many labels", "message: %s", err.text);

        strbuf_done(&b);
        for (int i = 0; i < SNAP_FILTER_STRINGS_MAX + 1; i++)
                pb_str(&b, 2, "name==x");
        is_int(decode(SNAP_METHOD_LIST, &b, &req, &err), -EBADMSG, "more than %d filters: -EBADMSG",
               SNAP_FILTER_STRINGS_MAX);
        strbuf_done(&b);
        pb_bytes(&b, 2, "a\0b", 3);
        is_int(decode(SNAP_METHOD_LIST, &b, &req, &err), -EBADMSG, "a filter with a NUL: -EBADMSG");
        strbuf_done(&b);
        pb_str(&b, 2, "name==x");
        pb_str(&b, 2, "kind==view");
        is_int(decode(SNAP_METHOD_LIST, &b, &req, &err), 0, "List decodes");
        ok(req.n_filters == 2 && strcmp(req.filters[1], "kind==view") == 0, "its filters, in order");
        snap_request_clear(&req);

        /* Update: an Info and a FieldMask, both with callbacks inside */
        strbuf_done(&b);
        StrBuf info = {}, mask = {};
        pb_str(&info, 1, "snap");
        pb_label(&info, 6, "x", "y");
        pb_str(&mask, 1, "labels.x");
        pb_str(&mask, 1, "labels");
        pb_bytes(&b, 2, info.data, info.len);
        pb_bytes(&b, 3, mask.data, mask.len);
        is_int(decode(SNAP_METHOD_UPDATE, &b, &req, &err), 0, "Update decodes");
        is_str(req.info.name, "snap", "info.name");
        ok(req.info.labels.n == 1 && req.n_paths == 2 && strcmp(req.paths[0], "labels.x") == 0, "labels and paths");
        snap_request_clear(&req);
        strbuf_done(&info);
        strbuf_done(&mask);

        /* garbage */
        strbuf_done(&b);
        strbuf_append(&b, "\xff\xff\xff\xff", 4);
        is_int(decode(SNAP_METHOD_MOUNTS, &b, &req, &err), -EBADMSG, "garbage: -EBADMSG");
        strbuf_done(&b);
        pb_varint(&b, 4 << 3 | 2);
        pb_varint(&b, 100); /* a label longer than the message */
        is_int(decode(SNAP_METHOD_PREPARE, &b, &req, &err), -EBADMSG, "a cut label: -EBADMSG");
        strbuf_done(&b);
        is_int(decode(SNAP_METHOD_CLEANUP, &b, &req, &err), 0, "an empty Cleanup decodes");
        snap_request_clear(&req);
        strbuf_done(&b);
}

static void test_replies(void) {
        char *opts[] = { (char *) "ro", (char *) "rbind" };
        SnapMount mt = { .type = (char *) "bind", .source = (char *) "/x/fs", .options = opts, .n_options = 2 };
        SnapMounts ms = { .items = &mt, .n = 1 };
        uint8_t *buf = NULL;
        size_t len = 0;
        is_int(snap_reply_mounts(&ms, 1 << 20, &buf, &len), 0, "mounts encode");
        /* field 1 { 1: "bind", 2: "/x/fs", 4: "ro", 4: "rbind" } */
        static const uint8_t want[] = { 0x0a, 0x18, 0x0a, 4, 'b', 'i', 'n', 'd', 0x12, 5, '/', 'x', '/', 'f', 's',
                                        0x22, 2, 'r', 'o', 0x22, 5, 'r', 'b', 'i', 'n', 'd' };
        ok(len == sizeof(want) && memcmp(buf + GRPC_FRAME_HEADER_SIZE, want, len) == 0,
           "after 5 bytes of room: the Mount, byte for byte");
        free(buf);
        is_int(snap_reply_mounts(&ms, 10, &buf, &len), -EMSGSIZE, "over the cap: -EMSGSIZE");

        SnapInfo info = { .name = (char *) "n", .parent = (char *) "p", .kind = SNAP_KIND_COMMITTED,
                          .created_ns = 1500000000, .updated_ns = -1 };
        snap_labels_set(&info.labels, "k", "v");
        is_int(snap_reply_info(&info, 1 << 20, &buf, &len), 0, "an Info encodes");
        free(buf);
        SnapInfo many[3] = { info, info, info };
        is_int(snap_reply_infos(many, 3, 1 << 20, &buf, &len), 0, "a List reply encodes");
        ok(len > 3 * 20, "three infos");
        free(buf);
        snap_labels_clear(&info.labels);
        SnapUsage u = { 1 << 20, 3 };
        is_int(snap_reply_usage(&u, 1 << 20, &buf, &len), 0, "usage encodes");
        static const uint8_t wu[] = { 0x08, 0x80, 0x80, 0x40, 0x10, 3 };
        ok(len == sizeof(wu) && memcmp(buf + 5, wu, len) == 0, "size and inodes as varints");
        free(buf);
        is_int(snap_reply_empty(&buf, &len), 0, "Empty encodes");
        is_int(len, 0, "to nothing");
        free(buf);
}

/* ---- filters ---- */

typedef struct Obj {
        const char *name, *parent, *kind;
        const char *lk[3], *lv[3];
} Obj;

static bool obj_lookup(void *ud, char *const *path, size_t n, const char **ret) {
        const Obj *o = ud;
        if (n == 1 && strcmp(path[0], "name") == 0)
                return (*ret = o->name), true;
        if (n == 1 && strcmp(path[0], "parent") == 0)
                return (*ret = o->parent), true;
        if (n == 1 && strcmp(path[0], "kind") == 0)
                return (*ret = o->kind), true;
        if (n == 2 && strcmp(path[0], "labels") == 0)
                for (int i = 0; i < 3 && o->lk[i]; i++)
                        if (strcmp(o->lk[i], path[1]) == 0)
                                return (*ret = o->lv[i]), true;
        return false;
}

static int match(const char *filter, const Obj *o) {
        SnapFilter *f = NULL;
        ErrMsg err = {};
        const char *fs[] = { filter };
        int r = snap_filter_parse(fs, 1, &f, &err);
        if (r < 0)
                return r;
        r = snap_filter_match(f, obj_lookup, (void *) o);
        snap_filter_free(f);
        return r;
}

static void test_filters(void) {
        Obj o = { "sha256:aa", "", "committed", { "containerd.io/snapshot.ref", "é", "q\"x" }, { "sha256:aa", "u", "1" } };
        is_int(match("labels.\"containerd.io/snapshot.ref\"==sha256:aa,parent==\"\"", &o), 1, "containerd's remote filter");
        is_int(match("labels.\"containerd.io/snapshot.ref\"==sha256:aa,parent==\"x\"", &o), 0, "with another parent");
        is_int(match("name==sha256:aa", &o), 1, "an unquoted value with a colon");
        is_int(match("  name  ==  sha256:aa", &o), 1, "white space around tokens");
        is_int(match("name==sha256:aa ,kind==committed", &o), -EINVAL, "white space before a comma: an error (as containerd)");
        is_int(match("labels.\"\\u00e9\"==u", &o), 1, "\\u escape in a quoted field");
        is_int(match("labels.\"\\303\\251\"==u", &o), 1, "octal escapes");
        is_int(match("labels.\"\\xc3\\xa9\"==\"\\x75\"", &o), 1, "\\x escapes");
        is_int(match("labels.\"q\\\"x\"==1", &o), 1, "an escaped quote");
        is_int(match("labels.\"a\\qb\"==1", &o), -EINVAL, "an unknown escape");
        is_int(match("labels.\"\\x00\"==1", &o), -EINVAL, "a NUL from an escape");
        is_int(match("labels.\"unterminated==1", &o), -EINVAL, "an unterminated quote");
        is_int(match("name==/sha/", &o), -EINVAL, "/.../ quoting only after ~=");
        is_int(match("name~=/^sha256:a+$/", &o), 1, "a regular expression");
        is_int(match("name~=|^sha|", &o), 1, "|...| quoting");
        is_int(match("name~=\"^x\"", &o), 0, "a regex that does not match");
        is_int(match("name~=/((a+)+)+/", &o), -EINVAL, "nested quantifiers are refused");
        is_int(match("name~=/a{2,3}/", &o), -EINVAL, "intervals are refused");
        is_int(match("name~=/(a)\\\\1/", &o), -EINVAL, "back-references are refused");
        is_int(match("name~=/a**/", &o), -EINVAL, "a quantifier on a quantifier is refused");
        is_int(match("name~=/(ab)+[[:alpha:]]*/", &o), 0, "a quantified plain group and a class are fine");
        is_int(match("name~=/[/", &o), -EINVAL, "an open bracket is refused");
        is_int(match("labels.none", &o), 0, "presence of an absent label");
        is_int(match("labels.\"containerd.io/snapshot.ref\"", &o), 1, "presence of a label");
        is_int(match("labels.none!=x", &o), 1, "!= matches an absent field");
        is_int(match("labels.none==", &o), -EINVAL, "an operator without a value");
        is_int(match("name=x", &o), -EINVAL, "an unknown operator");
        is_int(match("name==x,", &o), -EINVAL, "a trailing comma");
        is_int(match(",", &o), -EINVAL, "a lone comma");
        is_int(match("name==x y", &o), -EINVAL, "two values");

        SnapFilter *f = NULL;
        ErrMsg err = {};
        const char *two[] = { "name==nope", "kind==committed" };
        is_int(snap_filter_parse(two, 2, &f, &err), 0, "two filters");
        ok(snap_filter_match(f, obj_lookup, &o), "match when any does");
        snap_filter_free(f);
        const char *empty[] = { "name==nope", "" };
        is_int(snap_filter_parse(empty, 2, &f, &err), 0, "an empty filter");
        ok(snap_filter_match(f, obj_lookup, &o), "matches everything (as containerd)");
        snap_filter_free(f);
        is_int(snap_filter_parse(NULL, 0, &f, &err), 0, "no filters");
        ok(snap_filter_match(f, obj_lookup, &o), "match everything");
        snap_filter_free(f);
        is_int(snap_filter_parse((const char *[]) { "a==" }, 1, &f, &err), -EINVAL, "an error");
        has_str(err.text, "parse error at byte", "names the position: %s", err.text);
}

int main(void) {
        test_frame();
        test_requests();
        test_replies();
        test_filters();
        return done();
}
