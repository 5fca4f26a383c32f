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
 * stargz-snapshotter's handlers set: ctr-remote, nerdctl, CRI) mounts
 * that layer at the new snapshot's fs/ exactly as `holdfastctl mount REF
 * DIR` does (daemon_call(): mount(2) here, the fd deposited with the
 * supervisor, which owns every FUSE connection), and the supervisor sends
 * its MountRecord back to this worker (whose main thread opens the layer:
 * a layer that is not eStargz is refused there) and answers once
 * FUSE_INIT was. Every later worker serves the mount. A
 * refusal makes the Prepare fall back to a snapshot containerd unpacks.
 *
 * Warm-ahead: containerd prepares an image's layers one after the other,
 * each waiting for its mount, which costs a round trip or two to the
 * registry (the layer's footer and TOC). The labels of the first one name
 * the layers that follow (stargz.layers, cri.image-layers): they are
 * opened at once, WARM_MAX at a time, so that their own Prepares find
 * their records in the store and mount without a request. A Prepare whose
 * layer is being warmed waits for that first. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#include "common/ipc/ctl-client.h"
#include "common/util/macro.h"
#include "worker/fetch/reference.h"
#include "worker/layers/layers.h"
#include "worker/main.h"
#include "worker/snapshotter/service.h"
#include "worker/snapshotter/snapshots.h"
#include "worker/util/log.h"
#include "worker/util/mm-keeper.h"

#define SNAP_BUSY_WAIT_MS 2000
/* A layer's open fetches its footer and TOC: bounded by the registry
 * client's own deadlines, this only guards against a supervisor that
 * never answers. */
#define SNAP_MOUNT_TIMEOUT_MS 120000
/* Drain: calls in flight get this long to finish. The mounts are served
 * meanwhile and a remote Prepare's mount is still made by this worker
 * (main-supervised.c), so only the upgrade waits: long enough for a
 * registry that is slow to give a TOC. */
#define SNAP_DRAIN_MS 10000
#define WARM_MAX 4
#define WARM_RECENT 64          /* digests warmed lately: not again */
#define DIGEST_STR_MAX 71       /* "sha256:" + 64 hex */

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

struct SnapNode {
        char *root;              /* owned; the worker's (ROOT/supervisor.sock) */
        char *dir;               /* owned; ROOT/snapshotter */
        int listen_fd;           /* owned until the server takes it */
        pthread_t thread;
        bool started;
        Snapshotter *store;      /* owned; set by the thread */
        GrpcServer *grpc;        /* owned; set by the thread */
        LayerEnv *env;           /* borrowed */
        int lock_fd;             /* the store's RocksDB LOCK, closed by the
                                  * memory keeper at our death; -1 */
        pthread_mutex_t lock;    /* protects the rest */
        bool draining;           /* Drain came: the thread serves nothing */
        pthread_cond_t cond;     /* a warmer ended */
        char warming[WARM_MAX][DIGEST_STR_MAX + 1];  /* "" : a free slot */
        unsigned n_warming;
        char recent[WARM_RECENT][DIGEST_STR_MAX + 1];
        unsigned recent_next;
};

typedef struct Warmer {
        SnapNode *n;
        unsigned slot;
        char *source;            /* owned */
} Warmer;

/* The labels' image reference and layer digest as a layer source
 * ("DOMAIN/REPO@sha256:HEX[#toc=sha256:HEX]"), with *ret_repo
 * ("DOMAIN/REPO") and *ret_digest (in labels). 0 when the labels name no
 * layer (a Prepare of containerd's own: decline quietly). */
static int remote_source(const SnapLabels *labels, char **ret, char **ret_repo, const char **ret_digest,
                         ErrMsg *err) {
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
        k = asprintf(ret_repo, "%s/%s", r->domain, r->repo);
        fetch_ref_free(r);
        if (k < 0)
                return -ENOMEM;
        if (asprintf(ret, "%s@%s%s%s", *ret_repo, digest, toc ? "#toc=" : "", toc ? toc : "") < 0) {
                free(TAKE_PTR(*ret_repo));
                return -ENOMEM;
        }
        *ret_digest = digest;
        return 1;
}

static void *warm_main(void *userdata) {
        Warmer *x = userdata;
        SnapNode *n = x->n;
        ErrMsg err = {};
        uint64_t t0 = now_usec();
        int r = worker_layer_warm(n->env, x->source, &err);
        if (r < 0)
                log_info("warm-ahead of %s: %s (its Prepare will try again)", x->source,
                         err.text[0] ? err.text : strerror(-r));
        else
                log_debug("warm-ahead of %s: %" PRIu64 " us", x->source, now_usec() - t0);
        pthread_mutex_lock(&n->lock);
        n->warming[x->slot][0] = 0;
        n->n_warming--;
        pthread_cond_broadcast(&n->cond);
        pthread_mutex_unlock(&n->lock);
        free(x->source);
        free(x);
        return NULL;
}

/* Under n->lock. */
static bool warm_seen(SnapNode *n, const char *digest) {
        for (unsigned i = 0; i < WARM_RECENT; i++)
                if (strcmp(n->recent[i], digest) == 0)
                        return true;
        return false;
}

/* Starts the warm-up of the layers the labels name after this one. */
static void warm_ahead(SnapNode *n, const SnapLabels *labels, const char *repo, const char *self) {
        const char *list = snap_labels_get(labels, "containerd.io/snapshot/remote/stargz.layers");
        if (!list)
                list = snap_labels_get(labels, "containerd.io/snapshot/cri.image-layers");
        for (const char *p = list; p && *p;) {
                size_t len = strcspn(p, ",");
                char digest[DIGEST_STR_MAX + 1];
                bool ok = len <= DIGEST_STR_MAX;
                if (ok) {
                        memcpy(digest, p, len);
                        digest[len] = 0;
                        ok = fetch_digest_is_valid(digest) && strcmp(digest, self) != 0;
                }
                p += len + (p[len] == ',');
                if (!ok)
                        continue;
                pthread_mutex_lock(&n->lock);
                unsigned slot = WARM_MAX;
                if (!warm_seen(n, digest))
                        for (slot = 0; slot < WARM_MAX && n->warming[slot][0]; slot++)
                                ;
                Warmer *x = slot < WARM_MAX ? calloc(1, sizeof(*x)) : NULL;
                if (x && asprintf(&x->source, "%s@%s", repo, digest) >= 0) {
                        *x = (Warmer) { .n = n, .slot = slot, .source = x->source };
                        pthread_attr_t attr;
                        pthread_attr_init(&attr);
                        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                        pthread_t t;
                        if (pthread_create(&t, &attr, warm_main, x) == 0) {
                                strcpy(n->warming[slot], digest);
                                strcpy(n->recent[n->recent_next++ % WARM_RECENT], digest);
                                n->n_warming++;
                                x = NULL;
                        }
                        pthread_attr_destroy(&attr);
                }
                if (x)
                        free(x->source);
                free(x);
                pthread_mutex_unlock(&n->lock);
        }
}

/* A Prepare whose layer is being warmed lets that finish (its mount then
 * reads the record) rather than fetch the same bytes. */
static void warm_wait(SnapNode *n, const char *digest) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += SNAP_MOUNT_TIMEOUT_MS / 1000;
        pthread_mutex_lock(&n->lock);
        for (;;) {
                bool busy = false;
                for (unsigned i = 0; i < WARM_MAX; i++)
                        busy |= strcmp(n->warming[i], digest) == 0;
                if (!busy || pthread_cond_timedwait(&n->cond, &n->lock, &deadline) == ETIMEDOUT)
                        break;
        }
        pthread_mutex_unlock(&n->lock);
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
        _cleanup_free_ char *source = NULL, *repo = NULL;
        const char *digest = NULL;
        ErrMsg err = {};
        int r = remote_source(req->labels, &source, &repo, &digest, &err);
        if (r <= 0) {
                if (r < 0)
                        log_warn("snapshot %s: not mounted lazily (unpacked instead): %s", req->target, err.text);
                return r;
        }
        uint64_t t0 = now_usec();
        warm_ahead(n, req->labels, repo, digest);
        warm_wait(n, digest);
        uint64_t t1 = now_usec();
        char msg[512];
        r = supervisor_call(n, holdfast_CtlRequest_Op_MOUNT, source, req->fs_dir, msg, sizeof(msg));
        log_debug("snapshot %s: waited %" PRIu64 " us for its warm-ahead, mount call %" PRIu64 " us", req->target,
                  t1 - t0, now_usec() - t1);
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

/* A worker killed with containerd's connections open: they end at once
 * (mm-keeper.h), so containerd reconnects to the next worker. */
static void on_conn_fd(_unused_ void *userdata, int fd, bool open) {
        mm_keeper_shutdown_on_death(fd, open);
}

/* The fd of path in our table, or -1. */
static int fd_of(const char *path) {
        DIR *d = opendir("/proc/self/fd");
        int found = -1;
        for (struct dirent *de; d && found < 0 && (de = readdir(d));) {
                char target[PATH_MAX];
                ssize_t len = readlinkat(dirfd(d), de->d_name, target, sizeof(target) - 1);
                if (len > 0) {
                        target[len] = 0;
                        if (strcmp(target, path) == 0)
                                found = atoi(de->d_name);
                }
        }
        if (d)
                closedir(d);
        return found;
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
        /* A killed worker's keeper would hold RocksDB's lock 300 ms
         * (mm-keeper.h): containerd's calls would wait that long for the
         * next worker. It closes the lock file at once instead. */
        char lock_path[PATH_MAX];
        if (realpath(n->dir, lock_path) && strlen(lock_path) + 9 < sizeof(lock_path)) {
                strcat(lock_path, "/db/LOCK");
                n->lock_fd = fd_of(lock_path);
                if (n->lock_fd >= 0)
                        mm_keeper_close_on_death(n->lock_fd, true);
        }
        GrpcServerConfig tuning = { .on_error = on_grpc_error, .on_conn_fd = on_conn_fd };
        pthread_mutex_lock(&n->lock);
        if (!n->draining)
                r = snap_service_start(n->store, TAKE_FD(n->listen_fd), &tuning, &n->grpc, &err);
        pthread_mutex_unlock(&n->lock);
        if (r < 0)
                log_error("Cannot serve containerd's snapshotter: %s", err.text[0] ? err.text : strerror(-r));
        else if (n->grpc) {
                log_info("serving containerd's snapshotter (%s)", n->dir);
                /* the registry client now, not on the first Prepare's path
                 * (its failure is that Prepare's to report) */
                ErrMsg ignored = {};
                (void) layer_env_fetch_ready(n->env, &ignored);
        }
        return NULL;
}

int snap_node_start(const char *root, LayerEnv *env, int take_listen_fd, SnapNode **ret) {
        _cleanup_close_ int fd = take_listen_fd;
        SnapNode *n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        n->env = env;
        n->lock_fd = -1;
        pthread_mutex_init(&n->lock, NULL);
        pthread_cond_init(&n->cond, NULL);
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
        /* A store still opening (waiting for a predecessor's lock) is not
         * waited for: it will serve nothing. */
        pthread_mutex_lock(&n->lock);
        n->draining = true;
        GrpcServer *g = n->grpc;
        pthread_mutex_unlock(&n->lock);
        if (!g)
                return;
        if (grpc_server_drain(g, SNAP_DRAIN_MS) < 0) {
                log_warn("snapshotter: calls still in flight after %d ms are cut off", SNAP_DRAIN_MS);
                return;
        }
        /* Every call was answered: close the store now, while the mounts
         * are still served, so that the next worker opens it at once. */
        if (n->started)
                pthread_join(n->thread, NULL);
        n->started = false;
        n->grpc = grpc_server_free(n->grpc);
        if (n->lock_fd >= 0)
                mm_keeper_close_on_death(TAKE_FD(n->lock_fd), false);
        n->store = snapshotter_free(n->store);
}

SnapNode *snap_node_free(SnapNode *n) {
        if (!n)
                return NULL;
        if (n->started)
                pthread_join(n->thread, NULL);
        n->grpc = grpc_server_free(n->grpc);
        if (n->lock_fd >= 0)
                mm_keeper_close_on_death(TAKE_FD(n->lock_fd), false);
        n->store = snapshotter_free(n->store);
        /* warmers use the LayerEnv: they end within the fetch deadlines */
        pthread_mutex_lock(&n->lock);
        while (n->n_warming)
                pthread_cond_wait(&n->cond, &n->lock);
        pthread_mutex_unlock(&n->lock);
        pthread_cond_destroy(&n->cond);
        pthread_mutex_destroy(&n->lock);
        closep(&n->listen_fd);
        free(n->root);
        free(n->dir);
        free(n);
        return NULL;
}
