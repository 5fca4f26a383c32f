/* The worker side of the worker protocol (docs/design.md, "The worker
 * protocol"), on the main thread:
 *
 *      open the store (a secondary: no lock)
 *   -> WorkerReady{pid} + our in-flight table (memfd)
 *   <- WorkerStart (+ containerd's snapshotter socket, if the supervisor
 *      serves one), MountRecord (+fd) per mount
 *   <- MountRecord | Unmount       any number: the hold (a standby)
 *   -> Warm                        once the announced records came and their
 *                                  layers were opened from the store
 *   <- WorkerGo (+ the previous worker's in-flight table, if any): the
 *      previous worker is gone; adopt every connection (initialized ones:
 *      restore the INIT blob, write FUSE_NOTIFY_RESEND where requests
 *      may be in flight, serve; new ones: open the layer, wait for
 *      FUSE_INIT)
 *   -> MountStatus for each adopted connection that failed, then Serving;
 *      a MountStatus for each new one after its FUSE_INIT; the
 *      snapshotter starts serving (main-snapshotter.c)
 *   <- MountRecord (new mount) | Unmount | Drain, any number of times
 *   -> Drained after Drain (also during the hold; the snapshotter's calls
 *      in flight are answered first, while the mounts are still served
 *      and MountRecords and Unmounts still taken: a remote Prepare in
 *      flight waits for its mount), then exit 0
 *
 * Anything undecodable, unexpected or out of range from the supervisor is
 * logged and ends the worker with status 1: the supervisor then replaces
 * it, and the mounts stay. MountStatus for a new mount is sent by the
 * serving thread that answered its FUSE_INIT; sends are serialized by
 * send_lock (one datagram each, but one sender at a time keeps ordering
 * obvious). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/ipc/msg.h"
#include "common/util/macro.h"
#include "worker/layers/layers.h"
#include "worker/main.h"
#include "worker/util/log.h"
#include "worker/util/mm-keeper.h"

#define MAX_MOUNTS 65536

typedef struct Preloader Preloader;
typedef struct Openers Openers;

typedef struct Supervised {
        int sock;                /* borrowed: --supervisor-fd */
        Preloader *preload;      /* owned; the hold's warm-up thread */
        Openers *openers;        /* owned; new mounts' layer opens (mount_new_async) */
        pthread_mutex_t send_lock;
        MetaStore *store;        /* owned */
        LayerEnv *env;           /* owned; opens layers with store */
        FuseLayerOps layer_ops;
        FuseServer *srv;         /* owned */
        int snap_fd;             /* owned; the snapshotter socket until WorkerGo */
        SnapNode *snap;          /* owned; from WorkerGo */
} Supervised;

static int send_env_fd(Supervised *w, holdfast_Envelope *e, int fd) {
        pthread_mutex_lock(&w->send_lock);
        int r = msg_send(w->sock, e, fd);
        pthread_mutex_unlock(&w->send_lock);
        if (r < 0)
                log_error_errno(r, "Cannot send to the supervisor: %m");
        return r;
}

static int send_env(Supervised *w, holdfast_Envelope *e) {
        return send_env_fd(w, e, -EBADF);
}

static int send_warm(Supervised *w, size_t layers) {
        static holdfast_Envelope e_zero;
        holdfast_Envelope e = e_zero;
        e.which_msg = holdfast_Envelope_warm_tag;
        e.msg.warm.layers = (uint32_t) MIN(layers, (size_t) UINT32_MAX);
        return send_env(w, &e);
}

static int send_status(Supervised *w, uint64_t id, int error, const char *message, const FuseParams *params) {
        static holdfast_Envelope e_zero;
        holdfast_Envelope e = e_zero;
        e.which_msg = holdfast_Envelope_mount_status_tag;
        holdfast_MountStatus *st = &e.msg.mount_status;
        st->id = id;
        st->error = error;
        if (message)
                snprintf(st->message, sizeof(st->message), "%s", message);
        if (params) {
                st->initialized = true;
                fuse_params_encode(params, st->init.bytes);
                st->init.size = FUSE_PARAMS_BLOB_SIZE;
        }
        return send_env(w, &e);
}

/* After WorkerGo: every connection handed over initialized is served
 * (the ones that could not be were reported with a MountStatus each). */
static int send_serving(Supervised *w, size_t adopted) {
        static holdfast_Envelope e_zero;
        holdfast_Envelope e = e_zero;
        e.which_msg = holdfast_Envelope_serving_tag;
        e.msg.serving.adopted = (uint32_t) MIN(adopted, (size_t) UINT32_MAX);
        return send_env(w, &e);
}

static void on_init(void *userdata, uint64_t id, const FuseParams *params) {
        Supervised *w = userdata;
        (void) send_status(w, id, 0, NULL, params);
}

static void on_gone(void *userdata, uint64_t id) {
        (void) userdata;
        log_info("mount %" PRIu64 ": unmounted", id);
}

/* Receives the next message; exits the protocol on anything but a
 * well-formed one. */
static int recv_env(Supervised *w, holdfast_Envelope *e, int *ret_fd) {
        int r = msg_recv(w->sock, e, ret_fd);
        if (r == 0) {
                log_error("The supervisor closed the socket");
                return -ECONNRESET;
        }
        if (r < 0)
                log_error_errno(r, "Cannot receive from the supervisor: %m");
        return r;
}

static const char *msg_name(pb_size_t tag) {
        switch (tag) {
        case holdfast_Envelope_worker_start_tag: return "WorkerStart";
        case holdfast_Envelope_mount_tag: return "MountRecord";
        case holdfast_Envelope_worker_go_tag: return "WorkerGo";
        case holdfast_Envelope_unmount_tag: return "Unmount";
        case holdfast_Envelope_drain_tag: return "Drain";
        default: return "a message not meant for a worker";
        }
}

static int unexpected(const holdfast_Envelope *e, const char *expected, int fd) {
        if (fd >= 0)
                close(fd);
        log_error("Protocol error: expected %s from the supervisor, got %s", expected, msg_name(e->which_msg));
        return -EPROTO;
}

/* A new connection: open its layer now (so a bad one is refused), then
 * serve it; its MountStatus follows FUSE_INIT (on_init). */
static int mount_new(Supervised *w, const holdfast_MountRecord *m, int take_fd) {
        _cleanup_close_ int fd = take_fd;
        ErrMsg err = {};
        Layer *layer;
        void *handle;
        int r = worker_layer_open(w->env, m->source, &layer, &handle, &err);
        if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 " (%s): refusing %s: %s", m->id, m->mountpoint, m->source,
                                err.text[0] ? err.text : strerror(-r));
                return send_status(w, m->id, r, err.text[0] ? err.text : strerror(-r), NULL);
        }
        r = fuse_server_add(w->srv, m->id, TAKE_FD(fd), m->source, NULL, layer, handle);
        if (r == -EEXIST) {
                log_error("Protocol error: mount %" PRIu64 " is served already", m->id);
                return -EPROTO;
        }
        if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 ": cannot serve: %m", m->id);
                return send_status(w, m->id, r, "cannot serve the connection", NULL);
        }
        log_info("mount %" PRIu64 ": serving %s on %s", m->id, m->source, m->mountpoint);
        return 0;
}

/* ---- new mounts' layers, opened in parallel ----
 * Opening a registry layer costs a round trip or two to the registry, and
 * `holdfastctl image mount` mounts every layer of an image at once: on
 * the main thread their opens would queue behind each other. So a new
 * mount that arrives while we serve is opened on a thread of its own (at
 * most OPENERS at once; the main thread waits for a free one) and served
 * from there, as mount_new() would. An Unmount of a mount still opening
 * cancels it: the opener closes what it opened and serves nothing (the
 * supervisor answered its waiter already). serve() returns only once no
 * opener runs, so nothing is added to the server after it stops. */
#define OPENERS 8

typedef struct Opening {
        Supervised *w;
        Openers *ops;
        holdfast_MountRecord rec;
        int fd;                  /* owned until served */
        bool cancelled;          /* protected by Openers.lock */
        struct Opening *next;    /* protected by Openers.lock */
} Opening;

struct Openers {
        pthread_mutex_t lock;
        pthread_cond_t cond;     /* an opener ended */
        Opening *running;        /* protected by lock */
        size_t n;                /* protected by lock */
};

static void *opener_main(void *userdata) {
        Opening *o = userdata;
        Supervised *w = o->w;
        Openers *ops = o->ops;
        _cleanup_close_ int fd = TAKE_FD(o->fd);
        ErrMsg err = {};
        Layer *layer = NULL;
        void *handle = NULL;
        int r = worker_layer_open(w->env, o->rec.source, &layer, &handle, &err);
        bool opened = r >= 0;

        pthread_mutex_lock(&ops->lock);
        bool cancelled = o->cancelled;
        if (opened && !cancelled)
                /* under the lock: an Unmount either finds us running (and
                 * cancels) or finds the mount served (and removes it) */
                r = fuse_server_add(w->srv, o->rec.id, TAKE_FD(fd), o->rec.source, NULL, TAKE_PTR(layer),
                                    TAKE_PTR(handle));
        for (Opening **p = &ops->running; *p; p = &(*p)->next)
                if (*p == o) {
                        *p = o->next;
                        break;
                }
        pthread_mutex_unlock(&ops->lock);

        if (cancelled) {
                if (handle)
                        worker_layer_close(w->env, handle);
                log_info("mount %" PRIu64 ": unmounted while its layer was opening", o->rec.id);
        } else if (!opened) {
                log_error_errno(r, "mount %" PRIu64 " (%s): refusing %s: %s", o->rec.id, o->rec.mountpoint,
                                o->rec.source, err.text[0] ? err.text : strerror(-r));
                (void) send_status(w, o->rec.id, r, err.text[0] ? err.text : strerror(-r), NULL);
        } else if (r == -EEXIST) {
                /* ids are never reused: the supervisor is confused. This
                 * one is refused; the one served stays. */
                log_error("Protocol error: mount %" PRIu64 " is served already", o->rec.id);
                (void) send_status(w, o->rec.id, -EPROTO, "the mount is served already", NULL);
        } else if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 ": cannot serve: %m", o->rec.id);
                (void) send_status(w, o->rec.id, r, "cannot serve the connection", NULL);
        } else
                log_info("mount %" PRIu64 ": serving %s on %s", o->rec.id, o->rec.source, o->rec.mountpoint);
        free(o);

        pthread_mutex_lock(&ops->lock);
        ops->n--;
        pthread_cond_broadcast(&ops->cond);
        pthread_mutex_unlock(&ops->lock);
        return NULL;
}

/* mount_new() on an opener thread; falls back to mount_new() when no
 * thread can be had. */
static int mount_new_async(Supervised *w, const holdfast_MountRecord *m, int take_fd) {
        if (!w->openers) {
                Openers *ops = calloc(1, sizeof(*ops));
                if (!ops)
                        return mount_new(w, m, take_fd);
                pthread_mutex_init(&ops->lock, NULL);
                pthread_cond_init(&ops->cond, NULL);
                w->openers = ops;
        }
        Openers *ops = w->openers;
        Opening *o = malloc(sizeof(*o));
        if (!o)
                return mount_new(w, m, take_fd);
        *o = (Opening) { .w = w, .ops = ops, .rec = *m, .fd = take_fd };
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_mutex_lock(&ops->lock);
        while (ops->n >= OPENERS)
                pthread_cond_wait(&ops->cond, &ops->lock);
        pthread_t t;
        int r = -pthread_create(&t, &attr, opener_main, o);
        if (r >= 0) {
                o->next = ops->running;
                ops->running = o;
                ops->n++;
        }
        pthread_mutex_unlock(&ops->lock);
        pthread_attr_destroy(&attr);
        if (r < 0) {
                log_warn_errno(r, "mount %" PRIu64 ": no thread to open its layer on, opening it here: %m", m->id);
                free(o);
                return mount_new(w, m, take_fd);
        }
        return 0;
}

/* An Unmount of a mount whose layer is still opening: true when it was
 * (it is cancelled now). */
static bool mount_opening_cancel(Supervised *w, uint64_t id) {
        Openers *ops = w->openers;
        bool found = false;
        if (!ops)
                return false;
        pthread_mutex_lock(&ops->lock);
        for (Opening *o = ops->running; o; o = o->next)
                if (o->rec.id == id) {
                        o->cancelled = found = true;
                        break;
                }
        pthread_mutex_unlock(&ops->lock);
        return found;
}

/* Waits for every opener to end, and frees what they shared. */
static void mount_openers_wait(Supervised *w) {
        Openers *ops = TAKE_PTR(w->openers);
        if (!ops)
                return;
        pthread_mutex_lock(&ops->lock);
        while (ops->n > 0)
                pthread_cond_wait(&ops->cond, &ops->lock);
        pthread_mutex_unlock(&ops->lock);
        pthread_cond_destroy(&ops->cond);
        pthread_mutex_destroy(&ops->lock);
        free(ops);
}

/* A connection a previous worker served (no INIT will come), set up
 * during the hold: a session with the recorded parameters, in the epoll
 * set, not read until the threads start at WorkerGo. Takes fd. On failure
 * *why says what MountStatus will tell at WorkerGo. */
static int mount_prepare(Supervised *w, const holdfast_MountRecord *m, int take_fd, FuseParams *p,
                         const char **why) {
        _cleanup_close_ int fd = take_fd;
        int r = fuse_params_decode(m->init.bytes, m->init.size, p);
        if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 ": the recorded INIT parameters are unusable: %m", m->id);
                *why = "recorded FUSE_INIT parameters are invalid";
                return r;
        }
        r = fuse_server_add(w->srv, m->id, TAKE_FD(fd), m->source, p, NULL, NULL);
        if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 ": cannot serve: %m", m->id);
                *why = "cannot serve the connection";
        }
        return r;
}

static int check_record(const holdfast_MountRecord *m, int fd) {
        if (fd < 0) {
                log_error("Protocol error: MountRecord %" PRIu64 " without a /dev/fuse fd", m->id);
                return -EPROTO;
        }
        if (m->source[0] != '/' && !layer_source_is_remote(m->source)) {
                log_error("Protocol error: MountRecord %" PRIu64 ": source %s is neither a path nor a layer reference",
                          m->id, m->source);
                return -EPROTO;
        }
        /* our reads are non-blocking: EAGAIN is how a thread learns that
         * another one took the request */
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
                int r = -errno;
                log_error_errno(r, "mount %" PRIu64 ": fcntl: %m", m->id);
                return r;
        }
        return 0;
}

static uint64_t mono_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* The mounts a worker holds before WorkerGo, in the order they came. An
 * initialized one is prepared at once (mount_prepare: its fd then belongs
 * to the server); a new one keeps its fd and its record until WorkerGo.
 * Small on purpose: a record is 8 KiB, and freeing a thousand of them
 * right after WorkerGo cost the readers 0.2 ms (a munmap on their CPU). */
typedef struct Held {
        uint64_t id;
        bool initialized;
        holdfast_MountRecord *rec; /* owned; a new mount's, until WorkerGo */
        int fd;                  /* owned until prepared; then the session's */
        bool prepared;
        int error;               /* preparing failed: MountStatus at WorkerGo */
        const char *why;
        FuseParams params;
} Held;

typedef struct HeldSet {
        Held *v;
        size_t n, cap;
} HeldSet;

static void held_clear(HeldSet *h) {
        for (size_t i = 0; i < h->n; i++) {
                if (!h->v[i].prepared && h->v[i].fd >= 0)
                        close(h->v[i].fd);
                free(h->v[i].rec);
        }
        free(h->v);
        *h = (HeldSet) {};
}

static Held *held_find(HeldSet *h, uint64_t id) {
        for (size_t i = h->n; i > 0; i--)
                if (h->v[i - 1].id == id)
                        return &h->v[i - 1];
        return NULL;
}

/* Lets go of a held mount (its session too, when prepared). */
static void held_release(Supervised *w, Held *x) {
        if (x->prepared)
                (void) fuse_server_remove(w->srv, x->id);
        else if (x->fd >= 0)
                close(x->fd);
        x->prepared = false;
        x->fd = -EBADF;
        free(x->rec);
        x->rec = NULL;
}

/* A record for a new mount, or a newer one (FUSE_INIT answered since) for
 * a held mount. Takes fd. */
static int held_put(Supervised *w, HeldSet *h, const holdfast_MountRecord *m, int take_fd) {
        _cleanup_close_ int fd = take_fd;
        Held *x = held_find(h, m->id);
        if (!x) {
                if (h->n >= MAX_MOUNTS) {
                        log_error("Protocol error: more than %d mounts", MAX_MOUNTS);
                        return -EPROTO;
                }
                if (h->n == h->cap) {
                        size_t cap = h->cap ? h->cap * 2 : 64;
                        Held *v = realloc(h->v, cap * sizeof(*v));
                        if (!v)
                                return -ENOMEM;
                        h->v = v;
                        h->cap = cap;
                }
                x = &h->v[h->n++];
                *x = (Held) { .fd = -EBADF };
        }
        held_release(w, x);
        x->id = m->id;
        x->initialized = m->initialized;
        x->error = 0;
        if (!m->initialized) {
                x->rec = malloc(sizeof(*x->rec));
                if (!x->rec)
                        return -ENOMEM;
                *x->rec = *m;
                x->fd = TAKE_FD(fd);
                return 0;
        }
        x->fd = TAKE_FD(fd);
        int r = mount_prepare(w, m, x->fd, &x->params, &x->why);
        if (r == -EEXIST) {
                log_error("Protocol error: two sessions for mount %" PRIu64, m->id);
                return -EPROTO;
        }
        x->prepared = r >= 0;
        if (r < 0) {
                x->fd = -EBADF; /* closed by mount_prepare */
                x->error = r;
        }
        return 0;
}

static void held_drop(Supervised *w, HeldSet *h, uint64_t id) {
        Held *x = held_find(h, id);
        if (!x) {
                log_warn("Unmount of mount %" PRIu64 ", which is not held", id);
                return;
        }
        held_release(w, x);
        memmove(x, x + 1, (size_t) (h->v + h->n - (x + 1)) * sizeof(*x));
        h->n--;
}

/* Which connections to RESEND before serving: those the previous
 * worker's in-flight table (prev_fd, or -EBADF when the supervisor had
 * none to give) counts, none after a drain without one (the old worker
 * answered every request it read), else all. *ret_ids and the count, or
 * -1 for "all of them". The table is exact or errs on the side of a
 * connection too many (inflight.h): the others have nothing to resend,
 * and a RESEND on an idle connection is not free (it wakes a thread that
 * reads nothing). */
static ssize_t resend_first(int prev_fd, bool drained, uint64_t **ret_ids) {
        *ret_ids = NULL;
        if (prev_fd < 0)
                return drained ? 0 : -1;
        int n = inflight_table_read_busy(prev_fd, ret_ids);
        if (n < 0) {
                log_warn_errno(n, "The previous worker's in-flight table is unusable, resending every connection: %m");
                return -1;
        }
        return n;
}

/* WorkerGo: the previous holder of these connections is gone. The
 * sessions of initialized connections were set up during the hold; the
 * serving threads start and first write FUSE_NOTIFY_RESEND on the
 * connections the previous worker may have had requests in flight on
 * (its in-flight table says which; without one, on all of them): the
 * requests it had read but not answered go back to the queue, bit 63
 * set in their unique. Then one Serving tells the supervisor (after a
 * MountStatus for each connection that could not be adopted), and the
 * new mounts open their layers. */
static int go(Supervised *w, HeldSet *h, bool takeover, bool drained, int prev_inflight_fd) {
        uint64_t t0 = mono_us();
        size_t adopted = 0, resent = 0;
        for (size_t i = 0; i < h->n; i++)
                adopted += h->v[i].prepared;
        _cleanup_free_ uint64_t *first = NULL;
        ssize_t n_first = resend_first(prev_inflight_fd, drained, &first);
        int r = fuse_server_start_takeover(w->srv, first, n_first, &resent);
        if (r < 0) {
                log_error_errno(r, "Cannot start serving threads: %m");
                return r;
        }
        uint64_t t1 = mono_us();
        for (size_t i = 0; i < h->n; i++) {
                Held *x = &h->v[i];
                if (x->initialized && !x->prepared) {
                        r = send_status(w, x->id, x->error ? x->error : -EIO, x->why, NULL);
                        if (r < 0)
                                return r;
                }
        }
        r = send_serving(w, adopted);
        if (r < 0)
                return r;
        /* Off the readers' path: until this is done, opens on adopted
         * connections do not use passthrough (they read through us). */
        if (prev_inflight_fd >= 0 && adopted) {
                int n = fuse_server_inherit_backing(w->srv, prev_inflight_fd);
                if (n < 0)
                        log_warn_errno(n, "No passthrough on the connections taken over (the previous worker's "
                                       "backing ids are unknown): %m");
        }
        if (adopted)
                log_info("took over %zu mount(s): %zu of %zd RESENDs written, serving after %" PRIu64
                         " us, reported after %" PRIu64 " us",
                         adopted, resent, n_first < 0 ? (ssize_t) adopted : n_first, t1 - t0, mono_us() - t0);
        for (size_t i = 0; i < h->n; i++) {
                Held *x = &h->v[i];
                if (x->initialized)
                        continue;
                /* INIT may have been read by the previous worker */
                if (takeover)
                        (void) fuse_notify_resend(x->fd);
                r = mount_new(w, x->rec, TAKE_FD(x->fd));
                if (r < 0)
                        return r;
        }
        return 0;
}

/* A standby warms up: a thread at SCHED_IDLE (it runs only when no other
 * thread wants the CPU) opens the held connections' layers from their
 * stored records, so that after WorkerGo no request waits for a restore.
 * It stops at WorkerGo (or Drain), or when the process has grown to
 * PRELOAD_MAX_RSS: past that, layers open on their first request. */
#define PRELOAD_MAX_RSS (1024ull << 20)

struct Preloader {
        FuseServer *srv;
        Supervised *w;           /* to send Warm */
        bool report;             /* under lock: send Warm after the next pass */
        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool more;               /* under lock: records came since the last pass */
        bool stop;               /* under lock, and read atomically */
        size_t opened;           /* the thread's */
};

static uint64_t rss_bytes(void) {
        FILE *f = fopen("/proc/self/statm", "re");
        unsigned long long size = 0, resident = 0;
        if (f) {
                if (fscanf(f, "%llu %llu", &size, &resident) != 2)
                        resident = 0;
                fclose(f);
        }
        return resident * (uint64_t) sysconf(_SC_PAGESIZE);
}

static bool preload_keep_going(void *userdata) {
        Preloader *p = userdata;
        return !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) && rss_bytes() < PRELOAD_MAX_RSS;
}

static void *preload_main(void *userdata) {
        Preloader *p = userdata;
        struct sched_param sp = {};
        (void) pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
        for (;;) {
                pthread_mutex_lock(&p->lock);
                while (!p->more && !p->stop)
                        pthread_cond_wait(&p->cond, &p->lock);
                bool stop = p->stop, report = p->report;
                p->more = false;
                p->report = false;
                pthread_mutex_unlock(&p->lock);
                if (stop)
                        break;
                p->opened += fuse_server_preload(p->srv, preload_keep_going, p);
                if (report)
                        (void) send_warm(p->w, p->opened);
        }
        return NULL;
}

/* After the announced records: one more pass, then Warm. */
static void preload_report(Preloader *p) {
        pthread_mutex_lock(&p->lock);
        p->more = p->report = true;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
}

static void preload_kick(Preloader *p, bool stop) {
        pthread_mutex_lock(&p->lock);
        if (stop && !p->stop && p->started) {
                /* It may hold a session's lock that a serving thread is
                 * about to wait for: no more SCHED_IDLE, or it could
                 * starve while the CPUs serve. */
                struct sched_param sp = {};
                (void) pthread_setschedparam(p->thread, SCHED_OTHER, &sp);
        }
        if (stop)
                __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
        else
                p->more = true;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
}

static Preloader *preload_start(Supervised *w) {
        Preloader *p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        p->srv = w->srv;
        p->w = w;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cond, NULL);
        p->started = pthread_create(&p->thread, NULL, preload_main, p) == 0;
        if (!p->started)
                log_warn("Cannot start the warm-up thread; layers open on their first request");
        return p;
}

/* Stops, joins and frees (NULL-safe). */
static Preloader *preload_end(Preloader *p) {
        if (!p)
                return NULL;
        if (p->started) {
                preload_kick(p, true);
                pthread_join(p->thread, NULL);
                if (p->opened)
                        log_info("opened %zu layer(s) ahead of their first request", p->opened);
        }
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
}

/* WorkerStart, then the hold: records, replaced records and Unmounts
 * until WorkerGo (serve: returns 1) or Drain (a standby that is not
 * wanted any more: returns 0). */
static int startup(Supervised *w, holdfast_Envelope *e, const WorkerArgs *args) {
        int fd = -EBADF, r;
        r = recv_env(w, e, &fd);
        if (r < 0)
                return r;
        if (e->which_msg != holdfast_Envelope_worker_start_tag ||
            (fd >= 0) != e->msg.worker_start.snapshotter)
                return unexpected(e, "WorkerStart (with an fd when, and only when, snapshotter is set)", fd);
        w->snap_fd = fd;
        holdfast_WorkerStart ws = e->msg.worker_start;
        if (ws.n_mounts > MAX_MOUNTS) {
                log_error("Protocol error: WorkerStart announces %" PRIu32 " mounts", ws.n_mounts);
                return -EPROTO;
        }
        if (ws.root[0] && strcmp(ws.root, args->root) != 0)
                log_warn("WorkerStart names root %s, serving with --root %s", ws.root, args->root);
        log_info("generation %" PRIu64 ": holding %" PRIu32 " mount(s)", ws.generation, ws.n_mounts);

        HeldSet h = {};
        w->preload = preload_start(w);
        uint32_t records = 0;
        if (ws.n_mounts == 0)
                (void) send_warm(w, 0);
        for (;;) {
                r = recv_env(w, e, &fd);
                if (r < 0)
                        break;
                if (e->which_msg == holdfast_Envelope_mount_tag) {
                        r = check_record(&e->msg.mount, fd);
                        if (r < 0) {
                                if (fd >= 0)
                                        close(fd);
                                break;
                        }
                        r = held_put(w, &h, &e->msg.mount, fd);
                        if (r < 0)
                                break;
                        if (e->msg.mount.initialized && w->preload)
                                preload_kick(w->preload, false);
                        if (++records == ws.n_mounts) {
                                if (w->preload && w->preload->started)
                                        preload_report(w->preload);
                                else
                                        (void) send_warm(w, 0);
                        }
                        continue;
                }
                if (e->which_msg == holdfast_Envelope_worker_go_tag) {
                        log_info("generation %" PRIu64 ": serving %zu mount(s)%s", ws.generation, h.n,
                                 e->msg.worker_go.takeover ? ", taking over" : "");
                        /* stop warming up; joined at exit, not now */
                        if (w->preload)
                                preload_kick(w->preload, true);
                        /* the fd, if any, is the previous worker's in-flight table */
                        r = go(w, &h, e->msg.worker_go.takeover, e->msg.worker_go.drained, fd);
                        if (fd >= 0)
                                close(fd);
                        if (r >= 0 && w->snap_fd >= 0 && snap_node_start(args->root, w->env, TAKE_FD(w->snap_fd), &w->snap) < 0)
                                log_error("containerd's snapshotter is not served by this worker");
                        if (r >= 0)
                                r = 1;
                        break;
                }
                if (fd >= 0) {
                        r = unexpected(e, "a MountRecord or WorkerGo (the only messages with an fd)", fd);
                        break;
                }
                if (e->which_msg == holdfast_Envelope_unmount_tag) {
                        held_drop(w, &h, e->msg.unmount.id);
                        continue;
                }
                if (e->which_msg == holdfast_Envelope_drain_tag) {
                        w->preload = preload_end(w->preload);
                        r = 0;
                        break;
                }
                r = unexpected(e, "MountRecord, Unmount, WorkerGo or Drain", fd);
                break;
        }
        held_clear(&h);
        return r;
}

/* One message while serving: 0 to go on, 1 for Drain, or < 0 (a
 * protocol error: the worker exits). */
static int serve_one(Supervised *w, holdfast_Envelope *e) {
        int fd = -EBADF;
        int r = recv_env(w, e, &fd);
        if (r < 0)
                return r;
        switch (e->which_msg) {
        case holdfast_Envelope_mount_tag:
                if (e->msg.mount.initialized)
                        return unexpected(e, "MountRecord{initialized=false}", fd);
                r = check_record(&e->msg.mount, fd);
                if (r < 0) {
                        if (fd >= 0)
                                close(fd);
                        return r;
                }
                r = mount_new_async(w, &e->msg.mount, fd);
                return r < 0 ? r : 0;
        case holdfast_Envelope_unmount_tag:
                if (fd >= 0)
                        return unexpected(e, "Unmount without an fd", fd);
                if (mount_opening_cancel(w, e->msg.unmount.id))
                        return 0;
                if (fuse_server_remove(w->srv, e->msg.unmount.id) < 0)
                        log_warn("Unmount of mount %" PRIu64 ", which is not served", e->msg.unmount.id);
                else
                        log_info("mount %" PRIu64 ": stopped serving", e->msg.unmount.id);
                return 0;
        case holdfast_Envelope_drain_tag:
                if (fd >= 0)
                        return unexpected(e, "Drain without an fd", fd);
                return 1;
        default:
                return unexpected(e, "MountRecord, Unmount or Drain", fd);
        }
}

typedef struct SnapDrain {
        SnapNode *snap;
        int efd;                 /* written when the drain is over */
} SnapDrain;

static void *snap_drain_main(void *userdata) {
        SnapDrain *d = userdata;
        snap_node_drain(d->snap);
        uint64_t one = 1;
        ssize_t _unused_ n = write(d->efd, &one, sizeof(one));
        return NULL;
}

/* Drain, first: containerd's calls in flight get their time
 * (snap_node_drain) while this worker still serves FUSE and takes
 * MountRecords and Unmounts, since a remote Prepare in flight waits for
 * its layer's mount to be served, by us (the supervisor sends new mounts
 * to a draining worker too, and to the standby, which gets the record
 * again once we initialized it). A second Drain changes nothing. */
static int drain_snapshotter(Supervised *w, holdfast_Envelope *e) {
        if (!w->snap)
                return 0;
        SnapDrain d = { .snap = w->snap, .efd = eventfd(0, EFD_CLOEXEC) };
        pthread_t t;
        if (d.efd < 0 || pthread_create(&t, NULL, snap_drain_main, &d) != 0) {
                closep(&d.efd);
                snap_node_drain(w->snap); /* without taking mounts meanwhile */
                return 0;
        }
        int r = 0;
        for (;;) {
                struct pollfd p[2] = { { .fd = d.efd, .events = POLLIN }, { .fd = w->sock, .events = POLLIN } };
                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (p[0].revents)
                        break;
                r = serve_one(w, e);
                if (r < 0)
                        break;
        }
        pthread_join(t, NULL);
        close(d.efd);
        return r < 0 ? r : 0;
}

static int serve(Supervised *w, holdfast_Envelope *e) {
        int r;
        while ((r = serve_one(w, e)) == 0)
                ;
        if (r > 0)
                r = drain_snapshotter(w, e);
        /* nothing may be added to the server once it stops */
        mount_openers_wait(w);
        return r;
}

int worker_run_supervised(const WorkerArgs *args) {
        Supervised w = { .sock = args->supervisor_fd, .snap_fd = -EBADF };
        pthread_mutex_init(&w.send_lock, NULL);
        int r = worker_env_open(args->root, &w.store, &w.env);
        if (r < 0)
                return r;
        w.layer_ops = worker_layer_ops(w.env);
        holdfast_Envelope *e = calloc(1, sizeof(*e));
        if (!e) {
                w.env = worker_env_close(w.env);
                return -ENOMEM;
        }
        if (fcntl(w.sock, F_SETFD, FD_CLOEXEC) < 0) {
                r = -errno;
                log_error_errno(r, "--supervisor-fd %d: %m", w.sock);
                goto out;
        }
        r = mm_keeper_start();
        if (r < 0)
                log_warn_errno(r, "Cannot start the memory keeper (a killed worker frees its memory before its "
                               "successor serves): %m");
        FuseServerConfig cfg = {
                .n_threads = args->threads,
                .layer_ops = w.layer_ops,
                .on_init = on_init,
                .on_gone = on_gone,
                .userdata = &w,
        };
        r = fuse_server_new(&cfg, &w.srv);
        if (r < 0) {
                log_error_errno(r, "Cannot set up serving: %m");
                goto out;
        }

        /* Open the store first, as a secondary (meta_store_open_lazy): no
         * lock is needed, so a standby opens it while the serving worker
         * holds it, and WorkerGo only catches up. Ready means ready: an
         * upgrade drains the old worker only after this. A store that
         * cannot be opened costs speed (every layer indexed from its
         * blob), not service. */
        if (worker_store_open(args->root, &w.store) < 0)
                log_warn("Serving without the layer store");
        memset(e, 0, sizeof(*e));
        e->which_msg = holdfast_Envelope_worker_ready_tag;
        e->msg.worker_ready.pid = (uint32_t) getpid();
        /* with our in-flight table: the supervisor keeps it for our successor */
        r = send_env_fd(&w, e, fuse_server_inflight_fd(w.srv));
        if (r < 0)
                goto out;
        r = startup(&w, e, args);
        if (r < 0)
                goto out;
        if (r > 0)
                r = serve(&w, e);
        if (r < 0)
                goto out;

        /* Drain: stop reading at a request boundary; every request read
         * is answered before the threads exit. Then say so and exit at
         * once: the next worker gets the mounts when our pidfd reports the
         * exit, so every millisecond here is a stall. Nothing is lost by
         * not tearing down: each store write is in RocksDB's WAL when it
         * returns, and the kernel drops the store's lock. The snapshotter
         * was drained in serve(). */
        fuse_server_stop(w.srv);
        memset(e, 0, sizeof(*e));
        e->which_msg = holdfast_Envelope_drained_tag;
        r = send_env(&w, e);
        if (r >= 0) {
                log_info("Drained");
                fflush(stderr);
                _exit(0);
        }
out:
        /* Stop the threads before anything they use goes away. */
        w.snap = snap_node_free(w.snap);
        closep(&w.snap_fd);
        w.preload = preload_end(w.preload);
        w.srv = fuse_server_free(w.srv);
        w.env = worker_env_close(w.env);
        w.store = worker_store_close(w.store);
        pthread_mutex_destroy(&w.send_lock);
        free(e);
        return r;
}
