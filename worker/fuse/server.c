/* FuseServer: the epoll set, the serving threads and the table of
 * sessions. Each fd is registered EPOLLONESHOT: the thread that gets the
 * event reads one request, re-arms the fd and then handles the request,
 * so several threads handle one connection's requests in parallel while
 * only one reads at a time and no thread wakes up for nothing. Epoll
 * events carry a session key, not a pointer: a thread looks the key up
 * in the table and takes a reference, so a session removed meanwhile is
 * simply not found. Key 0 is the stop eventfd, which is never read: once
 * written it wakes every thread until they all have exited.
 *
 * The serving threads are created with the server and park, their buffers
 * allocated and touched, until fuse_server_start() opens the gate: a
 * standby holds its connections that way, and a takeover then costs no
 * thread creation, stack or heap growth (0.3-0.5 ms per thread here with
 * a large heap, whose new huge pages the kernel zeroes on first touch).
 *
 * While the gate is closed, the keeper thread keeps the epoll set's
 * ready list short (keeper_main says why).
 *
 * Threads: the main thread calls the fuse_server_* functions; serving
 * threads run serve_thread(), the keeper keeper_main(). */
#include "worker/fuse/server.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/fuse/ops.h"
#include "worker/util/log.h"

#define STOP_KEY 0
#define KEEPER_KEY UINT64_MAX
/* The keeper drains the ready list at most once per KEEPER_PERIOD_NS, and
 * takes at most KEEPER_MAX events a time. */
#define KEEPER_PERIOD_NS 1000000
#define KEEPER_MAX 64

struct FuseServer {
        FuseServerConfig cfg;
        int epfd;                /* owned */
        int stopfd;              /* owned; eventfd */
        bool stopping;           /* atomic */
        pthread_t *threads;      /* owned; cfg.n_threads */
        unsigned n_started;
        pthread_mutex_t gate_lock;
        pthread_cond_t gate;     /* opened: broadcast under gate_lock */
        bool open;               /* protected by gate_lock: fuse_server_start() was called */
        pthread_t keeper;
        bool keeper_started;
        int keeperfd;            /* owned; eventfd, EPOLLONESHOT: wakes the keeper at the gate */
        /* protected by gate_lock: connections the keeper disarmed and has
         * not re-armed yet (fuse_server_start re-arms them) */
        uint64_t keeper_keys[KEEPER_MAX];
        size_t n_keeper_keys;
        FuseDispatchHooks hooks;

        pthread_mutex_t lock;
        FuseSession **sessions;  /* protected by lock; each holds a reference */
        /* protected by lock: sessions[i]'s key and mount id, so that a
         * lookup (one per request) scans 16 bytes per connection and does
         * not touch a thousand cold sessions after a takeover */
        uint64_t *keys, *ids;
        size_t n_sessions, cap_sessions; /* protected by lock */
        uint64_t next_key;       /* protected by lock */

        InflightTable *inflight; /* owned; NULL when it could not be made */

        /* fuse_server_start_takeover(): the sessions to RESEND before
         * serving, one reference each; threads claim them by index */
        FuseSession **resend;    /* owned */
        size_t n_resend;
        size_t resend_next;      /* atomic */
        size_t resent;           /* atomic: RESENDs that succeeded */
        size_t resend_done;      /* atomic: RESENDs written or failed */
};

static int start_threads(FuseServer *srv);
static void *keeper_main(void *userdata);

static void on_session_init(void *userdata, FuseSession *s) {
        FuseServer *srv = userdata;
        /* we answered its INIT: no backing id of it predates us */
        inflight_backing_set_complete(s->inflight, s->slot);
        if (srv->cfg.on_init)
                srv->cfg.on_init(srv->cfg.userdata, s->id, &s->params);
}

int fuse_server_new(const FuseServerConfig *cfg, FuseServer **ret) {
        FuseServer *srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        srv->cfg = *cfg;
        if (srv->cfg.n_threads == 0)
                srv->cfg.n_threads = 4;
        srv->epfd = srv->stopfd = srv->keeperfd = -EBADF;
        srv->next_key = 1;
        pthread_mutex_init(&srv->lock, NULL);
        pthread_mutex_init(&srv->gate_lock, NULL);
        pthread_cond_init(&srv->gate, NULL);
        srv->hooks = (FuseDispatchHooks) { .on_init = on_session_init, .userdata = srv };
        int r;
        srv->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (srv->epfd < 0) {
                r = -errno;
                goto fail;
        }
        srv->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (srv->stopfd < 0) {
                r = -errno;
                goto fail;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = STOP_KEY };
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->stopfd, &ev) < 0) {
                r = -errno;
                goto fail;
        }
        srv->keeperfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        ev = (struct epoll_event) { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = KEEPER_KEY };
        if (srv->keeperfd < 0 || epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->keeperfd, &ev) < 0) {
                r = -errno;
                goto fail;
        }
        srv->keeper_started = pthread_create(&srv->keeper, NULL, keeper_main, srv) == 0;
        if (!srv->keeper_started)
                log_warn("Cannot start the keeper thread: a takeover waits longer for the first requests");
        r = inflight_table_new(&srv->inflight);
        if (r < 0)
                log_warn_errno(r, "Cannot create the in-flight table (a takeover after this worker resends every "
                               "connection first): %m");
        srv->threads = calloc(srv->cfg.n_threads, sizeof(pthread_t));
        if (!srv->threads) {
                r = -ENOMEM;
                goto fail;
        }
        /* parked until fuse_server_start(), which creates any that could
         * not be created now */
        (void) start_threads(srv);
        *ret = srv;
        return 0;
fail:
        fuse_server_free(srv);
        return r;
}

FuseServer *fuse_server_free(FuseServer *srv) {
        if (!srv)
                return NULL;
        fuse_server_stop(srv);
        for (size_t i = 0; i < srv->n_sessions; i++)
                fuse_session_unref(srv->sessions[i]);
        free(srv->sessions);
        free(srv->keys);
        free(srv->ids);
        free(srv->threads);
        for (size_t i = 0; srv->resend && i < srv->n_resend; i++)
                fuse_session_unref(srv->resend[i]);
        free(srv->resend);
        if (srv->epfd >= 0)
                close(srv->epfd);
        if (srv->stopfd >= 0)
                close(srv->stopfd);
        if (srv->keeperfd >= 0)
                close(srv->keeperfd);
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->gate);
        pthread_mutex_destroy(&srv->gate_lock);
        /* after every session: each releases its slot */
        inflight_table_free(srv->inflight);
        free(srv);
        return NULL;
}

int fuse_server_inherit_backing(FuseServer *srv, int prev_fd) {
        return srv->inflight ? inflight_backing_inherit(srv->inflight, prev_fd) : -ENOMEM;
}

int fuse_server_inflight_fd(FuseServer *srv) {
        return srv->inflight ? srv->inflight->fd : -EBADF;
}

static ssize_t find_locked(FuseServer *srv, uint64_t key, uint64_t id, bool by_id) {
        const uint64_t *v = by_id ? srv->ids : srv->keys, x = by_id ? id : key;
        for (size_t i = 0; i < srv->n_sessions; i++)
                if (v[i] == x)
                        return (ssize_t) i;
        return -1;
}

/* Room for one more session. */
static int grow_locked(FuseServer *srv) {
        if (srv->n_sessions < srv->cap_sessions)
                return 0;
        size_t cap = srv->cap_sessions ? srv->cap_sessions * 2 : 8;
        FuseSession **p = realloc(srv->sessions, cap * sizeof(*p));
        if (!p)
                return -ENOMEM;
        srv->sessions = p;
        uint64_t *k = realloc(srv->keys, cap * sizeof(*k));
        if (!k)
                return -ENOMEM;
        srv->keys = k;
        uint64_t *d = realloc(srv->ids, cap * sizeof(*d));
        if (!d)
                return -ENOMEM;
        srv->ids = d;
        srv->cap_sessions = cap;
        return 0;
}

int fuse_server_add(FuseServer *srv, uint64_t id, int take_fd, const char *source, const FuseParams *params,
                    Layer *layer, void *layer_handle) {
        _cleanup_close_ int fd = take_fd;
        int r;
        pthread_mutex_lock(&srv->lock);
        if (find_locked(srv, 0, id, true) >= 0) {
                r = -EEXIST;
                goto out_unlock;
        }
        r = grow_locked(srv);
        if (r < 0)
                goto out_unlock;
        FuseSession *s;
        r = fuse_session_new(srv->next_key++, id, TAKE_FD(fd), source, params, TAKE_PTR(layer),
                             TAKE_PTR(layer_handle), &srv->cfg.layer_ops, &s);
        if (r < 0)
                goto out_unlock;
        if (srv->inflight) {
                s->inflight = srv->inflight;
                s->slot = inflight_slot_claim(srv->inflight, id);
        }
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = s->key };
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
                r = -errno;
                fuse_session_unref(s);
                goto out_unlock;
        }
        srv->sessions[srv->n_sessions] = s;
        srv->keys[srv->n_sessions] = s->key;
        srv->ids[srv->n_sessions++] = s->id;
        r = 0;
out_unlock:
        pthread_mutex_unlock(&srv->lock);
        /* on failure before the session took them */
        if (layer_handle && srv->cfg.layer_ops.close)
                srv->cfg.layer_ops.close(srv->cfg.layer_ops.userdata, layer_handle);
        return r;
}

/* Takes session i out of the table and the epoll set; returns the table's
 * reference. */
static FuseSession *detach_locked(FuseServer *srv, size_t i) {
        FuseSession *s = srv->sessions[i];
        srv->n_sessions--;
        srv->sessions[i] = srv->sessions[srv->n_sessions];
        srv->keys[i] = srv->keys[srv->n_sessions];
        srv->ids[i] = srv->ids[srv->n_sessions];
        (void) epoll_ctl(srv->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        return s;
}

int fuse_server_remove(FuseServer *srv, uint64_t id) {
        pthread_mutex_lock(&srv->lock);
        ssize_t i = find_locked(srv, 0, id, true);
        FuseSession *s = i >= 0 ? detach_locked(srv, (size_t) i) : NULL;
        pthread_mutex_unlock(&srv->lock);
        if (!s)
                return -ENOENT;
        fuse_session_unref(s);
        return 0;
}

static FuseSession *get_by_key(FuseServer *srv, uint64_t key) {
        pthread_mutex_lock(&srv->lock);
        ssize_t i = find_locked(srv, key, 0, false);
        FuseSession *s = i >= 0 ? fuse_session_ref(srv->sessions[i]) : NULL;
        pthread_mutex_unlock(&srv->lock);
        return s;
}

size_t fuse_server_preload(FuseServer *srv, bool (*keep_going)(void *userdata), void *userdata) {
        pthread_mutex_lock(&srv->lock);
        size_t n = srv->n_sessions;
        uint64_t *keys = malloc(MAX(n, (size_t) 1) * sizeof(*keys));
        if (keys && n)
                memcpy(keys, srv->keys, n * sizeof(*keys));
        pthread_mutex_unlock(&srv->lock);
        if (!keys)
                return 0;
        size_t opened = 0;
        for (size_t i = 0; i < n && keep_going(userdata); i++) {
                FuseSession *s = get_by_key(srv, keys[i]);
                if (!s)
                        continue; /* removed meanwhile */
                if (fuse_session_initialized(s) && fuse_session_preload(s) > 0)
                        opened++;
                fuse_session_unref(s);
        }
        free(keys);
        return opened;
}

/* The connection is gone (unmounted, or aborted). */
static void session_gone(FuseServer *srv, FuseSession *s) {
        pthread_mutex_lock(&srv->lock);
        ssize_t i = find_locked(srv, s->key, 0, false);
        FuseSession *t = i >= 0 ? detach_locked(srv, (size_t) i) : NULL;
        pthread_mutex_unlock(&srv->lock);
        if (!t)
                return; /* removed meanwhile */
        log_info("mount %" PRIu64 ": connection closed by the kernel", s->id);
        if (srv->cfg.on_gone)
                srv->cfg.on_gone(srv->cfg.userdata, s->id);
        fuse_session_unref(t);
}

static void rearm(FuseServer *srv, FuseSession *s) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = s->key };
        /* ENOENT: removed meanwhile */
        if (epoll_ctl(srv->epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0 && errno != ENOENT)
                log_warn_ratelimited(-errno, "mount %" PRIu64 ": cannot re-arm /dev/fuse: %m", s->id);
}

static void serve_one(FuseServer *srv, FuseThread *t, FuseSession *s) {
        /* Counted before the read: if we die anywhere after it, the
         * request we may have taken is on the processing list and the
         * next worker must resend this connection first (inflight.h). */
        inflight_enter(s->inflight, s->slot);
        ssize_t n = read(s->fd, t->in, FUSE_IN_BUF_SIZE);
        if (n < 0) {
                int e = errno;
                inflight_leave(s->inflight, s->slot);
                /* EAGAIN: another reader or an interrupted request took it;
                 * ENOENT: the request was interrupted before we read it. */
                if (e == EAGAIN || e == EINTR || e == ENOENT)
                        rearm(srv, s);
                else if (e == ENODEV)
                        session_gone(srv, s);
                else {
                        log_warn_ratelimited(-e, "mount %" PRIu64 ": reading /dev/fuse: %m", s->id);
                        rearm(srv, s);
                }
                return;
        }
        rearm(srv, s);
        fuse_dispatch(s, t, &srv->hooks, t->in, (size_t) n);
        /* every request is answered (or needs no answer) by now */
        inflight_leave(s->inflight, s->slot);
}

/* RESEND on s, counted in our table while it runs: a kill between our
 * claim and the write leaves the requests the previous worker read on
 * the processing list, and our successor must know. */
static int resend_one(FuseSession *s) {
        inflight_enter(s->inflight, s->slot);
        int r = fuse_notify_resend(s->fd);
        inflight_leave(s->inflight, s->slot);
        if (r < 0)
                log_warn_errno(r, "mount %" PRIu64 ": FUSE_NOTIFY_RESEND failed: %m", s->id);
        return r;
}

/* Claims sessions of a takeover until none is left: RESEND each. */
static void resend_share(FuseServer *srv) {
        for (;;) {
                size_t i = __atomic_fetch_add(&srv->resend_next, 1, __ATOMIC_RELAXED);
                if (i >= srv->n_resend)
                        return;
                FuseSession *s = TAKE_PTR(srv->resend[i]);
                if (resend_one(s) >= 0)
                        __atomic_add_fetch(&srv->resent, 1, __ATOMIC_RELAXED);
                fuse_session_unref(s);
                __atomic_add_fetch(&srv->resend_done, 1, __ATOMIC_RELEASE);
        }
}

static void rearm_keys(FuseServer *srv, const uint64_t *keys, size_t n) {
        for (size_t i = 0; i < n; i++) {
                FuseSession *s = get_by_key(srv, keys[i]);
                if (s) {
                        rearm(srv, s);
                        fuse_session_unref(s);
                }
        }
}

/* The keeper, while the gate is closed. The kernel puts a connection on
 * the epoll set's ready list whenever its queue is woken (a request for
 * the worker that serves now, while we are its standby), ready or not,
 * and the first epoll_wait after the gate opens checks each entry with
 * the set's mutex held: with 1,000 busy connections that kept the
 * takeover's first requests waiting 0.15-0.4 ms. So the keeper calls
 * epoll_wait itself, at most once a KEEPER_PERIOD_NS: entries that are
 * not ready leave the list; a connection that is (a request queued for
 * the worker serving now) fires once and is disarmed (EPOLLONESHOT),
 * re-armed one period later, or at the gate by fuse_server_start. It never
 * reads a request. It exits at the gate or at a stop. */
static void *keeper_main(void *userdata) {
        FuseServer *srv = userdata;
        struct epoll_event ev[KEEPER_MAX];
        uint64_t keys[KEEPER_MAX];
        for (;;) {
                int n = epoll_wait(srv->epfd, ev, KEEPER_MAX, -1);
                if (n < 0 && errno != EINTR) {
                        log_warn_errno(-errno, "keeper: epoll_wait: %m");
                        return NULL;
                }
                size_t m = 0;
                bool stop = false;
                for (int i = 0; i < n; i++) {
                        if (ev[i].data.u64 == STOP_KEY)
                                stop = true;
                        else if (ev[i].data.u64 != KEEPER_KEY)
                                keys[m++] = ev[i].data.u64;
                }
                pthread_mutex_lock(&srv->gate_lock);
                bool open = srv->open || stop || __atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE);
                if (!open) {
                        memcpy(srv->keeper_keys, keys, m * sizeof(*keys));
                        srv->n_keeper_keys = m;
                }
                pthread_mutex_unlock(&srv->gate_lock);
                if (open) {
                        /* they are the serving threads' now */
                        rearm_keys(srv, keys, m);
                        return NULL;
                }
                /* the serving worker answers them meanwhile */
                struct timespec ts = { .tv_nsec = KEEPER_PERIOD_NS };
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                pthread_mutex_lock(&srv->gate_lock);
                m = srv->n_keeper_keys; /* 0 when fuse_server_start took them */
                memcpy(keys, srv->keeper_keys, m * sizeof(*keys));
                srv->n_keeper_keys = 0;
                open = srv->open;
                pthread_mutex_unlock(&srv->gate_lock);
                rearm_keys(srv, keys, m);
                if (open)
                        return NULL;
        }
}

/* Touched while parked, so that the first requests after the gate opens
 * fault in no page: headers and small replies (a takeover's first
 * requests are LOOKUPs and GETATTRs), and the thread's own stack. */
#define PREFAULT_SIZE (64u << 10)

static __attribute__((noinline)) void prefault(FuseThread *t) {
        volatile uint8_t stack[PREFAULT_SIZE / 4];
        for (size_t i = 0; i < sizeof(stack); i += 4096)
                stack[i] = 0;
        memset(t->in, 0, PREFAULT_SIZE);
        memset(t->out, 0, PREFAULT_SIZE);
}

static void *serve_thread(void *userdata) {
        FuseServer *srv = userdata;
        FuseThread t = {};
        int r = chunk_decoder_new(&t.decoder);
        t.in = malloc(FUSE_IN_BUF_SIZE);
        t.out = malloc(FUSE_MAX_READ_SIZE);
        if (t.in && t.out)
                prefault(&t);
        pthread_mutex_lock(&srv->gate_lock);
        while (!srv->open && !__atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE))
                pthread_cond_wait(&srv->gate, &srv->gate_lock);
        pthread_mutex_unlock(&srv->gate_lock);
        /* the share is taken even without buffers: the RESENDs need none */
        resend_share(srv);
        /* no thread waits on a connection until every RESEND is written:
         * each would wake it for nothing */
        for (int i = 0; i < 1000000 && __atomic_load_n(&srv->resend_done, __ATOMIC_ACQUIRE) < srv->n_resend; i++)
                sched_yield();
        if (r < 0 || !t.in || !t.out) {
                log_error("serving thread: out of memory");
                goto out;
        }
        while (!__atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE)) {
                struct epoll_event ev;
                int n = epoll_wait(srv->epfd, &ev, 1, -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error_errno(-errno, "epoll_wait: %m");
                        break;
                }
                if (n == 0 || ev.data.u64 == STOP_KEY || ev.data.u64 == KEEPER_KEY)
                        continue;
                FuseSession *s = get_by_key(srv, ev.data.u64);
                if (!s)
                        continue;
                serve_one(srv, &t, s);
                fuse_session_unref(s);
        }
out:
        chunk_decoder_free(t.decoder);
        free(t.in);
        free(t.out);
        return NULL;
}

static bool id_in(uint64_t id, const uint64_t *ids, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (ids[i] == id)
                        return true;
        return false;
}

int fuse_server_start_takeover(FuseServer *srv, const uint64_t *ids, ssize_t n, size_t *ret_resent) {
        pthread_mutex_lock(&srv->lock);
        srv->resend = calloc(MAX(srv->n_sessions, (size_t) 1), sizeof(*srv->resend));
        if (!srv->resend) {
                pthread_mutex_unlock(&srv->lock);
                return -ENOMEM;
        }
        for (size_t i = 0; i < srv->n_sessions; i++)
                if (n < 0 || id_in(srv->ids[i], ids, (size_t) n))
                        srv->resend[srv->n_resend++] = fuse_session_ref(srv->sessions[i]);
        pthread_mutex_unlock(&srv->lock);
        int r = fuse_server_start(srv);
        /* the threads that started did every RESEND before serving; this
         * thread takes what is left (none, unless a thread failed) */
        resend_share(srv);
        /* wait (bounded) for the ones other threads claimed to be written */
        for (int i = 0; i < 1000000 && __atomic_load_n(&srv->resend_done, __ATOMIC_ACQUIRE) < srv->n_resend; i++)
                sched_yield();
        *ret_resent = __atomic_load_n(&srv->resent, __ATOMIC_RELAXED);
        return r;
}

/* Creates the threads not created yet; they park at the gate. Returns 0
 * or the first error (-errno). */
static int start_threads(FuseServer *srv) {
        for (unsigned i = srv->n_started; i < srv->cfg.n_threads; i++) {
                int r = pthread_create(&srv->threads[i], NULL, serve_thread, srv);
                if (r != 0)
                        return -r;
                srv->n_started++;
        }
        return 0;
}

int fuse_server_start(FuseServer *srv) {
        int r = start_threads(srv);
        if (r < 0) {
                fuse_server_stop(srv);
                return r;
        }
        uint64_t keys[KEEPER_MAX];
        pthread_mutex_lock(&srv->gate_lock);
        srv->open = true;
        size_t m = srv->n_keeper_keys;
        memcpy(keys, srv->keeper_keys, m * sizeof(*keys));
        srv->n_keeper_keys = 0;
        pthread_mutex_unlock(&srv->gate_lock);
        /* out of its epoll_wait before the serving threads wait there */
        if (srv->keeper_started) {
                uint64_t one = 1;
                ssize_t _unused_ w = write(srv->keeperfd, &one, sizeof(one));
        }
        /* the connections the keeper disarmed may have requests queued */
        rearm_keys(srv, keys, m);
        pthread_mutex_lock(&srv->gate_lock);
        pthread_cond_broadcast(&srv->gate);
        pthread_mutex_unlock(&srv->gate_lock);
        /* The threads were woken on our CPU, and the scheduler lets the
         * waker run out its slice first: with two CPUs, our caller's next
         * steps (and a supervisor busy reaping the previous worker) kept
         * the first requests waiting for 0.3-0.5 ms. */
        sched_yield();
        return 0;
}

void fuse_server_stop(FuseServer *srv) {
        __atomic_store_n(&srv->stopping, true, __ATOMIC_RELEASE);
        /* parked threads exit without serving */
        pthread_mutex_lock(&srv->gate_lock);
        pthread_cond_broadcast(&srv->gate);
        pthread_mutex_unlock(&srv->gate_lock);
        if (srv->stopfd >= 0) {
                uint64_t one = 1;
                ssize_t _unused_ w = write(srv->stopfd, &one, sizeof(one));
        }
        for (unsigned i = 0; i < srv->n_started; i++)
                pthread_join(srv->threads[i], NULL);
        srv->n_started = 0;
        if (srv->keeper_started) {
                pthread_join(srv->keeper, NULL);
                srv->keeper_started = false;
        }
}
