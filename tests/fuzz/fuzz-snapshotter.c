/* libFuzzer target: what worker/snapshotter parses from containerd's
 * socket beyond nghttp2: the gRPC length prefix of a request body, the
 * nanopb decoding of each snapshots request (maps and lists through
 * callbacks), containerd's filter strings, and the reply encoders fed
 * with what was decoded. The first input byte picks the method; the rest
 * is the request body as it arrives (prefix + message; without a valid
 * prefix the bytes are decoded as a bare message, and for List also read
 * as newline-separated filter strings). Nothing may crash or leak; every
 * decoded string is a C string within its cap; what is decoded re-encodes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/snapshotter/filter.h"
#include "worker/snapshotter/grpc-frame.h"
#include "worker/snapshotter/service-pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MESSAGE (4u << 20)

static bool lookup(void *ud, char *const *path, size_t n, const char **ret) {
        const SnapInfo *info = ud;
        if (n == 0)
                return false;
        if (strcmp(path[0], "name") == 0)
                *ret = info->name;
        else if (strcmp(path[0], "parent") == 0)
                *ret = info->parent;
        else if (strcmp(path[0], "kind") == 0)
                *ret = snap_kind_to_string(info->kind);
        else if (strcmp(path[0], "labels") == 0 && n == 2)
                return (*ret = snap_labels_get(&info->labels, path[1])) != NULL;
        else
                return false;
        return true;
}

static void filters(char *const *strings, size_t n, const SnapInfo *info) {
        SnapFilter *f = NULL;
        ErrMsg err = {};
        if (snap_filter_parse((const char *const *) strings, n, &f, &err) < 0) {
                if (!err.text[0])
                        return;
                char enc[128];
                grpc_status_message_encode(err.text, enc, sizeof(enc));
                for (const char *c = enc; *c; c++)
                        if (*c < 0x20 || *c > 0x7e)
                                abort();
                return;
        }
        (void) snap_filter_match(f, lookup, (void *) info);
        snap_filter_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > (1u << 20))
                return 0;
        SnapMethod m = (SnapMethod) (data[0] % _SNAP_METHOD_MAX);
        const uint8_t *body = data + 1, *msg;
        size_t n = size - 1, len;
        if (grpc_frame_single(body, n, MAX_MESSAGE, &msg, &len) < 0) {
                uint32_t declared;
                (void) grpc_frame_peek(body, n, MAX_MESSAGE, &declared);
                msg = body;
                len = n;
        }

        SnapRequest req = {};
        ErrMsg err = {};
        SnapInfo info = { .name = (char *) "fuzz", .parent = (char *) "", .kind = SNAP_KIND_ACTIVE };
        if (snap_request_decode(m, msg, len, &req, &err) == 0) {
                const char *strs[] = { req.key, req.parent, req.name };
                for (size_t i = 0; i < 3; i++)
                        if (strs[i] && strlen(strs[i]) >= 4096)
                                abort();
                if (req.labels.n > SNAP_LABELS_MAX || req.n_filters > SNAP_FILTER_STRINGS_MAX ||
                    req.n_paths > SNAP_UPDATE_PATHS_MAX)
                        abort();
                info.labels = req.labels;
                if (req.key)
                        info.name = req.key;
                if (m == SNAP_METHOD_LIST)
                        filters(req.filters, req.n_filters, &info);
                /* what came in goes out */
                uint8_t *buf = NULL;
                size_t blen;
                const SnapInfo *out = m == SNAP_METHOD_UPDATE ? &req.info : &info;
                if (snap_reply_infos(out, 1, MAX_MESSAGE * 2, &buf, &blen) < 0)
                        abort();
                free(buf);
                buf = NULL;
                if (snap_reply_info(out, MAX_MESSAGE * 2, &buf, &blen) < 0)
                        abort();
                free(buf);
        } else if (m == SNAP_METHOD_LIST && n > 0 && n <= 8 * SNAP_FILTER_STRING_MAX) {
                /* the bytes as filter strings, straight to the parser */
                char *copy = malloc(n + 1);
                if (!copy)
                        return 0;
                memcpy(copy, body, n);
                copy[n] = 0;
                char *strings[8];
                size_t k = 0;
                for (char *save = NULL, *t = strtok_r(copy, "\n", &save); t && k < 8; t = strtok_r(NULL, "\n", &save))
                        strings[k++] = t;
                filters(strings, k, &info);
                free(copy);
        }
        snap_request_clear(&req);
        return 0;
}
