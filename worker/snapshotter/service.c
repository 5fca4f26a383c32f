/* The snapshots service (worker/snapshotter/service.h): one handler per
 * method, run on the gRPC server's handler threads. Each decodes its
 * request (service-pb.c), calls the Snapshotter, and answers with a reply
 * or a status; snap_service_code() is the only errno -> gRPC mapping.
 * List streams its infos in batches of at most LIST_BATCH or about half
 * the message cap, stopping early if the client goes away. */
#include "worker/snapshotter/service.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/macro.h"
#include "worker/snapshotter/filter.h"
#include "worker/snapshotter/service-pb.h"

#define LIST_BATCH 100

GrpcCode snap_service_code(int err) {
        switch (err) {
        case 0:
                return GRPC_OK;
        case -ENOENT:
                return GRPC_NOT_FOUND;
        case -EEXIST:
                return GRPC_ALREADY_EXISTS;
        case -EINVAL:
        case -E2BIG:
        case -ENAMETOOLONG:
                return GRPC_INVALID_ARGUMENT;
        case -ENOTEMPTY:
        case -EMEDIUMTYPE:
                return GRPC_FAILED_PRECONDITION;
        case -EBUSY:
        case -EAGAIN:
                return GRPC_UNAVAILABLE;
        case -ENOMEM:
        case -EMSGSIZE:
                return GRPC_RESOURCE_EXHAUSTED;
        case -ECANCELED:
                return GRPC_CANCELLED;
        case -ETIMEDOUT:
                return GRPC_DEADLINE_EXCEEDED;
        case -EOPNOTSUPP:
                return GRPC_UNIMPLEMENTED;
        default:
                return GRPC_INTERNAL;
        }
}

static void fail(GrpcCall *c, int r, const ErrMsg *err) {
        const char *msg = err && err->text[0] ? err->text : strerror(-r);
        grpc_call_set_status(c, snap_service_code(r), "%s", msg);
}

/* Sends one encoded reply (or the encoder's failure as the status). */
static void reply(GrpcCall *c, int r, uint8_t *take_buf, size_t len) {
        if (r < 0) {
                free(take_buf);
                ErrMsg e = {};
                errmsg_set(&e, r, "cannot encode the reply: %s", strerror(-r));
                fail(c, r, &e);
                return;
        }
        r = grpc_call_reply_take(c, take_buf, len);
        if (r < 0 && r != -ECANCELED) {
                ErrMsg e = {};
                errmsg_set(&e, r, "cannot send the reply: %s", strerror(-r));
                fail(c, r, &e);
        }
}

static int decode(GrpcCall *c, SnapMethod m, SnapRequest *req) {
        const uint8_t *msg;
        size_t len;
        grpc_call_request(c, &msg, &len);
        ErrMsg err = {};
        int r = snap_request_decode(m, msg, len, req, &err);
        if (r < 0)
                fail(c, r, &err);
        return r;
}

static void create(GrpcCall *c, Snapshotter *s, SnapMethod m) {
        SnapRequest req = {};
        if (decode(c, m, &req) < 0)
                return;
        SnapMounts mounts = {};
        ErrMsg err = {};
        int r = m == SNAP_METHOD_PREPARE ? snapshotter_prepare(s, req.key, req.parent, &req.labels, &mounts, &err)
                                         : snapshotter_view(s, req.key, req.parent, &req.labels, &mounts, &err);
        if (r < 0)
                fail(c, r, &err);
        else {
                uint8_t *buf = NULL;
                size_t len = 0;
                r = snap_reply_mounts(&mounts, grpc_call_max_message(c), &buf, &len);
                reply(c, r, buf, len);
        }
        snap_mounts_clear(&mounts);
        snap_request_clear(&req);
}

static void handle_prepare(GrpcCall *c, void *ud) {
        create(c, ud, SNAP_METHOD_PREPARE);
}

static void handle_view(GrpcCall *c, void *ud) {
        create(c, ud, SNAP_METHOD_VIEW);
}

static void handle_mounts(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_MOUNTS, &req) < 0)
                return;
        SnapMounts mounts = {};
        ErrMsg err = {};
        int r = snapshotter_mounts(ud, req.key, &mounts, &err);
        if (r < 0)
                fail(c, r, &err);
        else {
                uint8_t *buf = NULL;
                size_t len = 0;
                r = snap_reply_mounts(&mounts, grpc_call_max_message(c), &buf, &len);
                reply(c, r, buf, len);
        }
        snap_mounts_clear(&mounts);
        snap_request_clear(&req);
}

static void reply_empty(GrpcCall *c) {
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = snap_reply_empty(&buf, &len);
        reply(c, r, buf, len);
}

static void handle_commit(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_COMMIT, &req) < 0)
                return;
        ErrMsg err = {};
        int r = snapshotter_commit(ud, req.name, req.key, &req.labels, &err);
        if (r < 0)
                fail(c, r, &err);
        else
                reply_empty(c);
        snap_request_clear(&req);
}

static void handle_remove(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_REMOVE, &req) < 0)
                return;
        ErrMsg err = {};
        int r = snapshotter_remove(ud, req.key, &err);
        if (r < 0)
                fail(c, r, &err);
        else
                reply_empty(c);
        snap_request_clear(&req);
}

static void reply_info(GrpcCall *c, int r, SnapInfo *info, const ErrMsg *err) {
        if (r < 0) {
                fail(c, r, err);
                return;
        }
        uint8_t *buf = NULL;
        size_t len = 0;
        r = snap_reply_info(info, grpc_call_max_message(c), &buf, &len);
        reply(c, r, buf, len);
}

static void handle_stat(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_STAT, &req) < 0)
                return;
        SnapInfo info = {};
        ErrMsg err = {};
        int r = snapshotter_stat(ud, req.key, &info, &err);
        reply_info(c, r, &info, &err);
        snap_info_clear(&info);
        snap_request_clear(&req);
}

static void handle_update(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_UPDATE, &req) < 0)
                return;
        SnapInfo info = {};
        ErrMsg err = {};
        int r = snapshotter_update(ud, &req.info, req.paths, req.n_paths, &info, &err);
        reply_info(c, r, &info, &err);
        snap_info_clear(&info);
        snap_request_clear(&req);
}

static void handle_usage(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_USAGE, &req) < 0)
                return;
        SnapUsage u = {};
        ErrMsg err = {};
        int r = snapshotter_usage(ud, req.key, &u, &err);
        if (r < 0)
                fail(c, r, &err);
        else {
                uint8_t *buf = NULL;
                size_t len = 0;
                r = snap_reply_usage(&u, grpc_call_max_message(c), &buf, &len);
                reply(c, r, buf, len);
        }
        snap_request_clear(&req);
}

static void handle_cleanup(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_CLEANUP, &req) < 0)
                return;
        ErrMsg err = {};
        int r = snapshotter_cleanup(ud, &err);
        if (r < 0)
                fail(c, r, &err);
        else
                reply_empty(c);
        snap_request_clear(&req);
}

typedef struct ListBatch {
        GrpcCall *call;
        SnapInfo items[LIST_BATCH];
        size_t n;
        size_t bytes; /* an estimate of the encoded size */
        size_t limit;
        int error;    /* a send that failed */
} ListBatch;

static void batch_clear(ListBatch *b) {
        for (size_t i = 0; i < b->n; i++)
                snap_info_clear(&b->items[i]);
        b->n = 0;
        b->bytes = 0;
}

static int batch_send(ListBatch *b) {
        if (b->n == 0)
                return 0;
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = snap_reply_infos(b->items, b->n, grpc_call_max_message(b->call), &buf, &len);
        batch_clear(b);
        if (r < 0)
                return r;
        return grpc_call_reply_take(b->call, buf, len);
}

static size_t info_estimate(const SnapInfo *info) {
        size_t n = 64 + strlen(info->name) + strlen(info->parent);
        for (size_t i = 0; i < info->labels.n; i++)
                n += 16 + strlen(info->labels.items[i].key) + strlen(info->labels.items[i].value);
        return n;
}

static int list_one(void *ud, const SnapInfo *info, uint64_t id, bool remote) {
        (void) id;
        (void) remote;
        ListBatch *b = ud;
        size_t est = info_estimate(info);
        if (b->n == LIST_BATCH || (b->n > 0 && b->bytes + est > b->limit)) {
                int r = batch_send(b);
                if (r < 0) {
                        b->error = r;
                        return 1; /* stop the walk */
                }
        }
        int r = snap_info_copy(info, &b->items[b->n]);
        if (r < 0) {
                b->error = r;
                return 1;
        }
        b->n++;
        b->bytes += est;
        return 0;
}

static void handle_list(GrpcCall *c, void *ud) {
        SnapRequest req = {};
        if (decode(c, SNAP_METHOD_LIST, &req) < 0)
                return;
        ErrMsg err = {};
        SnapFilter *filter = NULL;
        int r = snap_filter_parse((const char *const *) req.filters, req.n_filters, &filter, &err);
        if (r < 0) {
                fail(c, r, &err);
                snap_request_clear(&req);
                return;
        }
        ListBatch *b = calloc(1, sizeof(*b));
        if (!b) {
                fail(c, -ENOMEM, NULL);
                snap_filter_free(filter);
                snap_request_clear(&req);
                return;
        }
        b->call = c;
        b->limit = grpc_call_max_message(c) / 2;
        r = snapshotter_walk(ud, filter, list_one, b, &err);
        if (r < 0)
                fail(c, r, &err);
        else if (b->error < 0) {
                if (b->error != -ECANCELED)
                        fail(c, b->error, NULL);
        } else {
                r = batch_send(b);
                if (r < 0 && r != -ECANCELED)
                        fail(c, r, NULL);
        }
        batch_clear(b);
        free(b);
        snap_filter_free(filter);
        snap_request_clear(&req);
}

#define SVC "/containerd.services.snapshots.v1.Snapshots/"

static const GrpcMethod methods[] = {
        { SVC "Prepare", handle_prepare, false },
        { SVC "View", handle_view, false },
        { SVC "Mounts", handle_mounts, false },
        { SVC "Commit", handle_commit, false },
        { SVC "Remove", handle_remove, false },
        { SVC "Stat", handle_stat, false },
        { SVC "Update", handle_update, false },
        { SVC "List", handle_list, true },
        { SVC "Usage", handle_usage, false },
        { SVC "Cleanup", handle_cleanup, false },
};

const GrpcMethod *snap_service_methods(size_t *ret_n) {
        *ret_n = ELEMENTSOF(methods);
        return methods;
}

int snap_service_start(Snapshotter *s, int take_listen_fd, const GrpcServerConfig *tuning, GrpcServer **ret,
                       ErrMsg *err) {
        GrpcServerConfig cfg = tuning ? *tuning : (GrpcServerConfig) {};
        cfg.methods = snap_service_methods(&cfg.n_methods);
        cfg.userdata = s;
        return grpc_server_new(&cfg, take_listen_fd, ret, err);
}
