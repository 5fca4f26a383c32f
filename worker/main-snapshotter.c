/* containerd's snapshotter in a supervised worker (main.h): the store and
 * the gRPC service of worker/snapshotter/ on the listening socket the
 * supervisor owns and hands every worker with WorkerStart.
 *
 * Started at WorkerGo on its own thread (opening the store may wait up to
 * SNAP_BUSY_WAIT_MS for the previous worker's lock: a killed worker's
 * memory keeper holds it a moment longer), so the FUSE takeover never
 * waits for it; until it serves, containerd's new connections wait in
 * the socket's backlog. Stopped at Drain while the mounts are still
 * served: calls in flight are answered, connections get GOAWAY.
 *
 * Remote snapshots: a Prepare that names an image layer (the labels
 * stargz-snapshotter's handlers set: ctr-remote, nerdctl, CRI) asks the
 * supervisor to mount that layer at the new snapshot's fs/, exactly as
 * `holdfastctl mount REF DIR` does: the supervisor owns every FUSE
 * connection, sends its MountRecord back to this worker (whose main thread
 * opens the layer: a layer that is not eStargz is refused there) and
 * answers once FUSE_INIT was. Every later worker serves the mount. A
 * refusal makes the Prepare fall back to a snapshot containerd unpacks. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "common/ipc/ctl-client.h"
#include "common/util/macro.h"
#include "worker/fetch/reference.h"
#include "worker/main.h"
#include "worker/snapshotter/service.h"
#include "worker/snapshotter/snapshots.h"
#include "worker/util/log.h"

#define SNAP_BUSY_WAIT_MS 2000
/* A layer's open fetches its footer and TOC: bounded by the registry
 * client's own deadlines, this only guards against a supervisor that
 * never answers. */
#define SNAP_MOUNT_TIMEOUT_MS 120000
/* Drain: calls in flight get this long to finish (a remote Prepare whose
 * mount the next worker would answer cannot: it fails after this). */
#define SNAP_DRAIN_MS 3000

struct SnapNode {
        char *root;              /* owned; the worker's (ROOT/supervisor.sock) */
        char *dir;               /* owned; ROOT/snapshotter */
        int listen_fd;           /* owned until the server takes it */
        pthread_t thread;
        bool started;
        Snapshotter *store;      /* owned; set by the thread */
        GrpcServer *grpc;        /* owned; set by the thread */
};

/* The labels' image reference and layer digest as a layer source
 * ("DOMAIN/REPO@sha256:HEX[#toc=sha256:HEX]"). 0 when the labels name no
 * layer (a Prepare of containerd's own: decline quietly). */
static int remote_source(const SnapLabels *labels, char **ret, ErrMsg *err) {
        static const char *const refs[] = { "containerd.io/snapshot/remote/stargz.reference",
                                            "containerd.io/snapshot/cri.image-ref" };
        static const char *const digests[] = { "containerd.io/snapshot/remote/stargz.digest",
                                               "containerd.io/snapshot/cri.layer-digest" };
        const char *ref = NULL, *digest = NULL;
        for (size_t i = 0; i < ELEMENTSOF(refs) && !(ref && digest); i++) {
                ref = snap_labels_get(labels, refs[i]);
                digest = snap_labels_get(labels, digests[i]);
        }
        if (!ref || !digest)
                return 0;
        const char *toc = snap_labels_get(labels, "containerd.io/snapshot/stargz/toc.digest");
        if (!fetch_digest_is_valid(digest))
                return errmsg_set(err, -EINVAL, "layer digest '%.80s' is not sha256:<64 hex>", digest);
        if (toc && !fetch_digest_is_valid(toc))
                return errmsg_set(err, -EINVAL, "TOC digest annotation '%.80s' is not sha256:<64 hex>", toc);
        FetchRef *r = NULL;
        int k = fetch_ref_parse(ref, &r, err);
        if (k < 0)
                return errmsg_prefix(err, k, "image reference");
        k = asprintf(ret, "%s/%s@%s%s%s", r->domain, r->repo, digest, toc ? "#toc=" : "", toc ? toc : "");
        fetch_ref_free(r);
        return k < 0 ? -ENOMEM : 1;
}

static int supervisor_call(SnapNode *n, holdfast_CtlRequest_Op op, const char *source, const char *dir,
                           char *msg, size_t msg_size) {
        holdfast_CtlRequest req = { .op = op };
        if ((size_t) snprintf(req.source, sizeof(req.source), "%s", source) >= sizeof(req.source) ||
            (size_t) snprintf(req.mountpoint, sizeof(req.mountpoint), "%s", dir) >= sizeof(req.mountpoint))
                return snprintf(msg, msg_size, "path or reference too long"), -ENAMETOOLONG;
        DaemonReply d;
        const char *what;
        int r = daemon_call(n->root, &req, SNAP_MOUNT_TIMEOUT_MS, &d, &what);
        if (r < 0)
                return snprintf(msg, msg_size, "the supervisor (%s/supervisor.sock): %s: %s", n->root, what,
                                r == -EAGAIN ? "no answer in time" : strerror(-r)), r;
        snprintf(msg, msg_size, "%s", d.reply.message);
        daemon_reply_done(&d);
        return d.reply.error;
}

static int prepare_remote(void *userdata, const SnapRemoteRequest *req) {
        SnapNode *n = userdata;
        _cleanup_free_ char *source = NULL;
        ErrMsg err = {};
        int r = remote_source(req->labels, &source, &err);
        if (r <= 0) {
                if (r < 0)
                        log_warn("snapshot %s: not mounted lazily (unpacked instead): %s", req->target, err.text);
                return r;
        }
        char msg[512];
        r = supervisor_call(n, holdfast_CtlRequest_Op_MOUNT, source, req->fs_dir, msg, sizeof(msg));
        if (r >= 0) {
                log_info("snapshot %s: %s mounted lazily at %s", req->target, source, req->fs_dir);
                return 1;
        }
        log_warn("snapshot %s: %s is not mounted lazily (unpacked instead): %s", req->target, source, msg);
        /* a mount that timed out may still be made: never leave one
         * under a snapshot containerd now unpacks into */
        (void) supervisor_call(n, holdfast_CtlRequest_Op_UMOUNT, "", req->fs_dir, msg, sizeof(msg));
        return r;
}

static void release_remote(void *userdata, uint64_t id, const char *fs_dir) {
        SnapNode *n = userdata;
        char msg[512];
        int r = supervisor_call(n, holdfast_CtlRequest_Op_UMOUNT, "", fs_dir, msg, sizeof(msg));
        if (r >= 0)
                log_info("snapshot %" PRIu64 ": unmounted %s", id, fs_dir);
        else if (r != -ENOENT)
                log_warn("snapshot %" PRIu64 ": cannot unmount %s through the supervisor: %s", id, fs_dir, msg);
        /* not (or no longer) the supervisor's: a mount left by anything
         * else must not keep the directory from being removed */
        if (r < 0 && umount2(fs_dir, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
                log_info("snapshot %" PRIu64 ": detached %s", id, fs_dir);
}

static void on_grpc_error(_unused_ void *userdata, int err, const char *message) {
        log_warn_ratelimited(err, "snapshotter socket: closed a connection: %s: %m", message);
}

static void *snap_main(void *userdata) {
        SnapNode *n = userdata;
        ErrMsg err = {};
        SnapshotterConfig cfg = {
                .root = n->dir,
                .hooks = { .prepare_remote = prepare_remote, .release_remote = release_remote, .userdata = n },
                .busy_wait_ms = SNAP_BUSY_WAIT_MS,
        };
        int r = snapshotter_new(&cfg, &n->store, &err);
        if (r < 0) {
                log_error("Cannot open the snapshotter's store in %s; containerd is not served: %s", n->dir,
                          err.text[0] ? err.text : strerror(-r));
                return NULL;
        }
        GrpcServerConfig tuning = { .on_error = on_grpc_error };
        r = snap_service_start(n->store, TAKE_FD(n->listen_fd), &tuning, &n->grpc, &err);
        if (r < 0) {
                log_error("Cannot serve containerd's snapshotter: %s", err.text[0] ? err.text : strerror(-r));
                return NULL;
        }
        log_info("serving containerd's snapshotter (%s)", n->dir);
        return NULL;
}

int snap_node_start(const char *root, int take_listen_fd, SnapNode **ret) {
        _cleanup_close_ int fd = take_listen_fd;
        SnapNode *n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        n->listen_fd = TAKE_FD(fd);
        n->root = strdup(root);
        if (!n->root || asprintf(&n->dir, "%s/snapshotter", root) < 0) {
                n->dir = NULL;
                return snap_node_free(n), -ENOMEM;
        }
        int r = -pthread_create(&n->thread, NULL, snap_main, n);
        if (r < 0) {
                log_error_errno(r, "Cannot start the snapshotter's thread: %m");
                return snap_node_free(n), r;
        }
        n->started = true;
        *ret = n;
        return 0;
}

void snap_node_drain(SnapNode *n) {
        if (!n)
                return;
        if (n->started)
                pthread_join(n->thread, NULL);
        n->started = false;
        if (n->grpc && grpc_server_drain(n->grpc, SNAP_DRAIN_MS) < 0)
                log_warn("snapshotter: calls still in flight after %d ms are cut off", SNAP_DRAIN_MS);
}

SnapNode *snap_node_free(SnapNode *n) {
        if (!n)
                return NULL;
        if (n->started)
                pthread_join(n->thread, NULL);
        n->grpc = grpc_server_free(n->grpc);
        n->store = snapshotter_free(n->store);
        closep(&n->listen_fd);
        free(n->root);
        free(n->dir);
        free(n);
        return NULL;
}
