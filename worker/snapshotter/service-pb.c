/* Wire codec of the snapshots service (worker/snapshotter/service-pb.h).
 *
 * Decoding: the generated structs are large (fixed 4 KiB arrays) and live
 * on the heap; callbacks copy each map entry and list element into the
 * SnapRequest as it is decoded, so a request's memory is bounded by its
 * size plus the per-entry caps. The five LabelsEntry types nanopb makes
 * (one per map field) have the same layout; one decoder serves all,
 * checked at compile time. */
#include "worker/snapshotter/service-pb.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "common/util/macro.h"
#include "snapshots.pb.h"
#include "worker/snapshotter/filter.h"
#include "worker/snapshotter/grpc-frame.h"

typedef containerd_services_snapshots_v1_Info_LabelsEntry LabelsEntry;

#define SAME_LAYOUT(T)                                                                              \
        _Static_assert(sizeof(T) == sizeof(LabelsEntry) && offsetof(T, value) == offsetof(LabelsEntry, value), \
                       #T " differs from Info.LabelsEntry")
SAME_LAYOUT(containerd_services_snapshots_v1_PrepareSnapshotRequest_LabelsEntry);
SAME_LAYOUT(containerd_services_snapshots_v1_ViewSnapshotRequest_LabelsEntry);
SAME_LAYOUT(containerd_services_snapshots_v1_CommitSnapshotRequest_LabelsEntry);

/* What a decoding callback writes to, and why it stopped. */
typedef struct DecodeCtx {
        SnapLabels *labels;
        const pb_msgdesc_t *entry_fields;
        char ***list;
        size_t *n_list;
        size_t list_max, item_max;
        const char *what;
        const char *why; /* static; set when a callback refuses */
} DecodeCtx;

static bool decode_label(pb_istream_t *stream, const pb_field_t *field, void **arg) {
        (void) field;
        DecodeCtx *ctx = *arg;
        LabelsEntry *e = malloc(sizeof(*e));
        if (!e) {
                ctx->why = "out of memory";
                return false;
        }
        *e = (LabelsEntry) containerd_services_snapshots_v1_Info_LabelsEntry_init_zero;
        bool ok = pb_decode(stream, ctx->entry_fields, e);
        if (ok) {
                int r = snap_labels_set(ctx->labels, e->key, e->value);
                if (r < 0) {
                        ctx->why = r == -E2BIG ? "too many labels" : "out of memory";
                        ok = false;
                }
        }
        free(e);
        return ok;
}

static bool decode_string_item(pb_istream_t *stream, const pb_field_t *field, void **arg) {
        (void) field;
        DecodeCtx *ctx = *arg;
        size_t len = stream->bytes_left;
        if (*ctx->n_list >= ctx->list_max) {
                ctx->why = "too many list entries";
                return false;
        }
        if (len > ctx->item_max) {
                ctx->why = "list entry too long";
                return false;
        }
        char *s = malloc(len + 1);
        if (!s) {
                ctx->why = "out of memory";
                return false;
        }
        if (!pb_read(stream, (pb_byte_t *) s, len)) {
                free(s);
                return false;
        }
        s[len] = 0;
        if (strlen(s) != len) {
                free(s);
                ctx->why = "list entry with a NUL byte";
                return false;
        }
        char **l = realloc(*ctx->list, (*ctx->n_list + 1) * sizeof(*l));
        if (!l) {
                free(s);
                ctx->why = "out of memory";
                return false;
        }
        *ctx->list = l;
        l[(*ctx->n_list)++] = s;
        return true;
}

static void set_labels_cb(pb_callback_t *cb, DecodeCtx *ctx, SnapLabels *labels, const pb_msgdesc_t *fields) {
        ctx->labels = labels;
        ctx->entry_fields = fields;
        cb->funcs.decode = decode_label;
        cb->arg = ctx;
}

void snap_request_clear(SnapRequest *r) {
        free(r->key);
        free(r->parent);
        free(r->name);
        snap_labels_clear(&r->labels);
        snap_info_clear(&r->info);
        for (size_t i = 0; i < r->n_paths; i++)
                free(r->paths[i]);
        free(r->paths);
        for (size_t i = 0; i < r->n_filters; i++)
                free(r->filters[i]);
        free(r->filters);
        *r = (SnapRequest) {};
}

/* The generated request types, for one heap allocation of the largest. */
typedef union AnyRequest {
        containerd_services_snapshots_v1_PrepareSnapshotRequest prepare;
        containerd_services_snapshots_v1_ViewSnapshotRequest view;
        containerd_services_snapshots_v1_MountsRequest mounts;
        containerd_services_snapshots_v1_CommitSnapshotRequest commit;
        containerd_services_snapshots_v1_RemoveSnapshotRequest remove;
        containerd_services_snapshots_v1_StatSnapshotRequest stat;
        containerd_services_snapshots_v1_UpdateSnapshotRequest update;
        containerd_services_snapshots_v1_ListSnapshotsRequest list;
        containerd_services_snapshots_v1_UsageRequest usage;
        containerd_services_snapshots_v1_CleanupRequest cleanup;
} AnyRequest;

int snap_request_decode(SnapMethod m, const uint8_t *buf, size_t len, SnapRequest *ret, ErrMsg *err) {
        _cleanup_free_ AnyRequest *pb = calloc(1, sizeof(*pb));
        if (!pb)
                return -ENOMEM;
        SnapRequest req = {};
        DecodeCtx ctx = {};
        const pb_msgdesc_t *fields;
        switch (m) {
        case SNAP_METHOD_PREPARE:
                fields = containerd_services_snapshots_v1_PrepareSnapshotRequest_fields;
                set_labels_cb(&pb->prepare.labels, &ctx, &req.labels,
                              containerd_services_snapshots_v1_PrepareSnapshotRequest_LabelsEntry_fields);
                break;
        case SNAP_METHOD_VIEW:
                fields = containerd_services_snapshots_v1_ViewSnapshotRequest_fields;
                set_labels_cb(&pb->view.labels, &ctx, &req.labels,
                              containerd_services_snapshots_v1_ViewSnapshotRequest_LabelsEntry_fields);
                break;
        case SNAP_METHOD_MOUNTS:
                fields = containerd_services_snapshots_v1_MountsRequest_fields;
                break;
        case SNAP_METHOD_COMMIT:
                fields = containerd_services_snapshots_v1_CommitSnapshotRequest_fields;
                set_labels_cb(&pb->commit.labels, &ctx, &req.labels,
                              containerd_services_snapshots_v1_CommitSnapshotRequest_LabelsEntry_fields);
                break;
        case SNAP_METHOD_REMOVE:
                fields = containerd_services_snapshots_v1_RemoveSnapshotRequest_fields;
                break;
        case SNAP_METHOD_STAT:
                fields = containerd_services_snapshots_v1_StatSnapshotRequest_fields;
                break;
        case SNAP_METHOD_UPDATE:
                fields = containerd_services_snapshots_v1_UpdateSnapshotRequest_fields;
                set_labels_cb(&pb->update.info.labels, &ctx, &req.info.labels,
                              containerd_services_snapshots_v1_Info_LabelsEntry_fields);
                ctx.list = &req.paths;
                ctx.n_list = &req.n_paths;
                ctx.list_max = SNAP_UPDATE_PATHS_MAX;
                ctx.item_max = SNAP_LABEL_MAX + 16;
                pb->update.update_mask.paths.funcs.decode = decode_string_item;
                pb->update.update_mask.paths.arg = &ctx;
                break;
        case SNAP_METHOD_LIST:
                fields = containerd_services_snapshots_v1_ListSnapshotsRequest_fields;
                ctx.list = &req.filters;
                ctx.n_list = &req.n_filters;
                ctx.list_max = SNAP_FILTER_STRINGS_MAX;
                ctx.item_max = SNAP_FILTER_STRING_MAX;
                pb->list.filters.funcs.decode = decode_string_item;
                pb->list.filters.arg = &ctx;
                break;
        case SNAP_METHOD_USAGE:
                fields = containerd_services_snapshots_v1_UsageRequest_fields;
                break;
        case SNAP_METHOD_CLEANUP:
                fields = containerd_services_snapshots_v1_CleanupRequest_fields;
                break;
        default:
                return -EINVAL;
        }

        pb_istream_t in = pb_istream_from_buffer(buf, len);
        if (!pb_decode(&in, fields, pb)) {
                snap_request_clear(&req);
                return errmsg_set(err, -EBADMSG, "grpc: error unmarshalling request: %s",
                                  ctx.why ? ctx.why : PB_GET_ERROR(&in));
        }

        const char *key = NULL, *parent = NULL, *name = NULL;
        switch (m) {
        case SNAP_METHOD_PREPARE:
                key = pb->prepare.key, parent = pb->prepare.parent;
                break;
        case SNAP_METHOD_VIEW:
                key = pb->view.key, parent = pb->view.parent;
                break;
        case SNAP_METHOD_MOUNTS:
                key = pb->mounts.key;
                break;
        case SNAP_METHOD_COMMIT:
                key = pb->commit.key, name = pb->commit.name;
                break;
        case SNAP_METHOD_REMOVE:
                key = pb->remove.key;
                break;
        case SNAP_METHOD_STAT:
                key = pb->stat.key;
                break;
        case SNAP_METHOD_USAGE:
                key = pb->usage.key;
                break;
        case SNAP_METHOD_UPDATE: {
                const containerd_services_snapshots_v1_Info *i = &pb->update.info;
                req.info.name = strdup(i->name);
                req.info.parent = strdup(i->parent);
                req.info.kind = (SnapKind) i->kind;
                if (!req.info.name || !req.info.parent) {
                        snap_request_clear(&req);
                        return -ENOMEM;
                }
                break;
        }
        default:
                break;
        }
        if ((key && !(req.key = strdup(key))) || (parent && !(req.parent = strdup(parent))) ||
            (name && !(req.name = strdup(name)))) {
                snap_request_clear(&req);
                return -ENOMEM;
        }
        *ret = req;
        return 0;
}

/* ---- replies ---- */

static bool encode_cstring(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const char *s = *arg;
        if (!s || !s[0])
                return true; /* proto3: the default is not written */
        return pb_encode_tag_for_field(stream, field) && pb_encode_string(stream, (const pb_byte_t *) s, strlen(s));
}

typedef struct StrList {
        char *const *items;
        size_t n;
} StrList;

static bool encode_string_list(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const StrList *l = *arg;
        for (size_t i = 0; i < l->n; i++)
                if (!pb_encode_tag_for_field(stream, field) ||
                    !pb_encode_string(stream, (const pb_byte_t *) l->items[i], strlen(l->items[i])))
                        return false;
        return true;
}

static bool encode_mounts(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const SnapMounts *ms = *arg;
        for (size_t i = 0; i < ms->n; i++) {
                const SnapMount *m = &ms->items[i];
                StrList opts = { m->options, m->n_options };
                containerd_types_Mount pm = {
                        .type = { .funcs.encode = encode_cstring, .arg = m->type },
                        .source = { .funcs.encode = encode_cstring, .arg = m->source },
                        .options = { .funcs.encode = encode_string_list, .arg = &opts },
                };
                if (!pb_encode_tag_for_field(stream, field) ||
                    !pb_encode_submessage(stream, containerd_types_Mount_fields, &pm))
                        return false;
        }
        return true;
}

static size_t varint_size(uint64_t v) {
        size_t n = 1;
        while (v >= 0x80) { /* bounded: at most 10 rounds */
                v >>= 7;
                n++;
        }
        return n;
}

/* A map<string, string>: each entry a submessage { key = 1; value = 2 },
 * written from the strings without copying them into nanopb's fixed
 * entry struct. */
static bool encode_labels(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const SnapLabels *l = *arg;
        for (size_t i = 0; i < l->n; i++) {
                const char *k = l->items[i].key, *v = l->items[i].value;
                size_t kl = strlen(k), vl = strlen(v);
                size_t sz = (kl ? 1 + varint_size(kl) + kl : 0) + (vl ? 1 + varint_size(vl) + vl : 0);
                if (!pb_encode_tag(stream, PB_WT_STRING, field->tag) || !pb_encode_varint(stream, sz))
                        return false;
                if (kl && (!pb_encode_tag(stream, PB_WT_STRING, 1) || !pb_encode_string(stream, (const pb_byte_t *) k, kl)))
                        return false;
                if (vl && (!pb_encode_tag(stream, PB_WT_STRING, 2) || !pb_encode_string(stream, (const pb_byte_t *) v, vl)))
                        return false;
        }
        return true;
}

static google_protobuf_Timestamp timestamp(int64_t ns) {
        int64_t sec = ns / 1000000000, rem = ns % 1000000000;
        if (rem < 0) {
                rem += 1000000000;
                sec--;
        }
        return (google_protobuf_Timestamp) { .seconds = sec, .nanos = (int32_t) rem };
}

static int info_to_pb(const SnapInfo *info, containerd_services_snapshots_v1_Info *pb) {
        const char *parent = info->parent ? info->parent : "";
        if (strlen(info->name) >= sizeof(pb->name) || strlen(parent) >= sizeof(pb->parent))
                return -ENAMETOOLONG;
        strcpy(pb->name, info->name);
        strcpy(pb->parent, parent);
        pb->kind = (containerd_services_snapshots_v1_Kind) info->kind;
        pb->has_created_at = pb->has_updated_at = true;
        pb->created_at = timestamp(info->created_ns);
        pb->updated_at = timestamp(info->updated_ns);
        pb->labels.funcs.encode = encode_labels;
        pb->labels.arg = (void *) &info->labels;
        return 0;
}

/* Encodes msg into a new buffer with the gRPC prefix's room in front. */
static int encode_with_room(const pb_msgdesc_t *fields, const void *msg, size_t max, uint8_t **ret, size_t *ret_len) {
        size_t len;
        if (!pb_get_encoded_size(&len, fields, msg))
                return -EINVAL;
        if (len > max)
                return -EMSGSIZE;
        uint8_t *buf = malloc(GRPC_FRAME_HEADER_SIZE + len + 1);
        if (!buf)
                return -ENOMEM;
        pb_ostream_t out = pb_ostream_from_buffer(buf + GRPC_FRAME_HEADER_SIZE, len);
        if (!pb_encode(&out, fields, msg)) {
                free(buf);
                return -EINVAL;
        }
        *ret = buf;
        *ret_len = out.bytes_written;
        return 0;
}

int snap_reply_mounts(const SnapMounts *m, size_t max, uint8_t **ret, size_t *ret_len) {
        containerd_services_snapshots_v1_PrepareSnapshotResponse pb = {
                .mounts = { .funcs.encode = encode_mounts, .arg = (void *) m },
        };
        return encode_with_room(containerd_services_snapshots_v1_PrepareSnapshotResponse_fields, &pb, max, ret, ret_len);
}

int snap_reply_info(const SnapInfo *info, size_t max, uint8_t **ret, size_t *ret_len) {
        _cleanup_free_ containerd_services_snapshots_v1_StatSnapshotResponse *pb = calloc(1, sizeof(*pb));
        if (!pb)
                return -ENOMEM;
        pb->has_info = true;
        int r = info_to_pb(info, &pb->info);
        if (r < 0)
                return r;
        return encode_with_room(containerd_services_snapshots_v1_StatSnapshotResponse_fields, pb, max, ret, ret_len);
}

typedef struct InfoList {
        const SnapInfo *infos;
        size_t n;
        containerd_services_snapshots_v1_Info *scratch; /* one at a time */
} InfoList;

static bool encode_infos(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const InfoList *l = *arg;
        for (size_t i = 0; i < l->n; i++) {
                memset(l->scratch, 0, sizeof(*l->scratch));
                if (info_to_pb(&l->infos[i], l->scratch) < 0 || !pb_encode_tag_for_field(stream, field) ||
                    !pb_encode_submessage(stream, containerd_services_snapshots_v1_Info_fields, l->scratch))
                        return false;
        }
        return true;
}

int snap_reply_infos(const SnapInfo *infos, size_t n, size_t max, uint8_t **ret, size_t *ret_len) {
        _cleanup_free_ containerd_services_snapshots_v1_Info *scratch = malloc(sizeof(*scratch));
        if (!scratch)
                return -ENOMEM;
        InfoList l = { infos, n, scratch };
        containerd_services_snapshots_v1_ListSnapshotsResponse pb = {
                .info = { .funcs.encode = encode_infos, .arg = &l },
        };
        return encode_with_room(containerd_services_snapshots_v1_ListSnapshotsResponse_fields, &pb, max, ret, ret_len);
}

int snap_reply_usage(const SnapUsage *u, size_t max, uint8_t **ret, size_t *ret_len) {
        containerd_services_snapshots_v1_UsageResponse pb = { .size = u->size, .inodes = u->inodes };
        return encode_with_room(containerd_services_snapshots_v1_UsageResponse_fields, &pb, max, ret, ret_len);
}

int snap_reply_empty(uint8_t **ret, size_t *ret_len) {
        google_protobuf_Empty pb = {};
        return encode_with_room(google_protobuf_Empty_fields, &pb, 16, ret, ret_len);
}
