/* The supervisor's policy: what happens when a worker becomes ready,
 * serves, dies, or when holdfastctl asks for something. Owns the decisions,
 * not the resources (those are in mount-table.c, worker.c, ctl-server.c).
 * Runs on the one libuv loop.
 *
 * Invariants:
 * - at most two workers: current (serves the mounts) and standby (holds
 *   every mount's record and fd, reads none, and takes over when current
 *   exits: after a crash, or when an upgrade drains current); a standby
 *   replaced by an upgrade is killed and only reaped;
 * - WorkerGo goes to a worker only once the previous one has exited (its
 *   pidfd is readable: no thread of it is left), so two workers never
 *   read one connection;
 * - a worker's death never drops a mount; only UMOUNT, a worker refusing a
 *   new MOUNT, or a plain stop do. */
#include "supervisor/supervisor.h"

#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common/ipc/msg.h"
#include "common/fuse/mount.h"

/* Only quick deaths back off. */
#define HEALTHY_MS 1000
/* A new standby starts this long after a worker took over, so that its
 * exec and store open do not compete with the first requests. */
#define STANDBY_DELAY_MS UINT64_C(300)

static bool holding(const Worker *w) {
        return w && w->state == WORKER_HOLDING;
}

/* Returns the delay before the next spawn and doubles it for the one after. */
static uint64_t backoff_next(Supervisor *s) {
        uint64_t delay = s->backoff_ms;
        s->backoff_ms = delay ? MIN(delay * 2, s->delay_max_ms) : 100;
        return delay;
}

static void kill_standby(Supervisor *s, const char *why) {
        s->standby->asked_to_exit = true;
        worker_kill(TAKE_PTR(s->standby), why);
        free(TAKE_PTR(s->standby_path));
}

static void remove_mount(Supervisor *s, Mount *m) {
        sd_forget_mount(m->id);
        mount_table_remove(&s->mounts, m);
        sd_store_state(s);
}

static void fail_new_mount(Supervisor *s, Mount *m, int error, const char *msg) {
        /* detach first: when holdfastctl hears of the failure, the mount
         * is gone */
        int r = fuse_mount_detach(m->mountpoint);
        if (r < 0)
                log_error_errno(r, "detach %s", m->mountpoint);
        if (m->waiter)
                ctl_conn_replyf(m->waiter, error, "%s", msg);
        remove_mount(s, m);
}

/* The respawn of current, or a while after it serves, the standby. */
static void on_spawn_timer(uv_timer_t *t) {
        Supervisor *s = container_of(t, Supervisor, spawn_timer);
        if (s->standby || s->stopping || s->gave_up)
                return;
        if (!s->current)
                return supervisor_spawn_current(s);
        if (!s->want_standby || s->upgrading || s->current->state != WORKER_SERVING)
                return; /* armed again when one serves */
        ErrMsg err = {};
        if (worker_spawn(s, s->worker_path, ++s->generation, &s->standby, &err) < 0) {
                log_error("cannot start a standby worker: %s", err.text);
                backoff_next(s);
                supervisor_want_standby(s);
        }
}

void supervisor_want_standby(Supervisor *s) {
        if (s->want_standby && s->current && !s->standby && !s->stopping && !s->gave_up)
                uv_timer_start(&s->spawn_timer, on_spawn_timer, MAX(s->backoff_ms, STANDBY_DELAY_MS), 0);
}

/* A worker died without being asked to: counts it; true when that makes
 * a crash loop (then respawning stops, and mounts stay). */
static void upgrade_done(Supervisor *s, int error, const char *fmt, ...) _printf_(3, 4);

static bool crash_loop(Supervisor *s) {
        uint64_t t = now_ms();
        if (s->n_deaths == 0 || t - s->deaths_since_ms >= s->restart_interval_ms) {
                s->deaths_since_ms = t; /* a new window, as systemd's StartLimitIntervalSec= */
                s->n_deaths = 0;
        }
        if (s->restart_burst == 0 || ++s->n_deaths < s->restart_burst)
                return false;
        s->gave_up = true;
        log_error("WORKER CRASH LOOP: %u deaths within %" PRIu64 " s; not respawning any more. "
                  "Mounts are kept but not served; 'holdfastctl restart' tries again.",
                  s->n_deaths, s->restart_interval_ms / 1000);
        /* Mounts that never got served cannot wait for a worker that will not come. */
        for (Mount *m = s->mounts.head, *n; m; m = n) {
                n = m->next;
                if (m->waiter)
                        fail_new_mount(s, m, -ESRCH, "the worker keeps dying; respawning given up");
        }
        if (s->standby)
                kill_standby(s, "respawning was given up");
        /* an upgrade waiting for that standby would wait forever, and
         * refuse every later restart and re-exec */
        if (s->upgrading)
                upgrade_done(s, -ECHILD, "the worker keeps dying; respawning given up");
        sd_status(s);
        return true;
}

/* A worker that served this long before dying was not crash-looping: its
 * successor starts at once (readers are waiting). */
static bool served_long(const Worker *dead) {
        return dead && dead->serving_ms && now_ms() - dead->serving_ms >= HEALTHY_MS;
}

/* Respawns current after the backoff unless this is a crash loop. */
static void respawn_later(Supervisor *s, const Worker *dead) {
        if (crash_loop(s))
                return;
        if (served_long(dead))
                s->backoff_ms = 0;
        uint64_t delay = backoff_next(s);
        if (delay)
                log_info("respawning the worker in %" PRIu64 " ms", delay);
        uv_timer_start(&s->spawn_timer, on_spawn_timer, delay, 0);
}

void supervisor_spawn_current(Supervisor *s) {
        ErrMsg err = {};
        if (worker_spawn(s, s->worker_path, ++s->generation, &s->current, &err) < 0) {
                log_error("cannot start the worker: %s", err.text);
                s->restarts++;
                respawn_later(s, NULL);
        }
}

/* current is gone: the standby serves (now if it holds the mounts, else
 * when its WorkerReady comes). */
static void promote_standby(Supervisor *s) {
        Worker *w = s->current = TAKE_PTR(s->standby);
        if (s->standby_path) {
                free(s->worker_path);
                s->worker_path = TAKE_PTR(s->standby_path);
        }
        if (s->upgrading && !s->drain_start_us)
                s->drain_start_us = now_us();
        if (holding(w))
                worker_go(w); /* on failure it is killed; its exit says what next */
}

static void upgrade_done(Supervisor *s, int error, const char *fmt, ...) {
        holdfast_CtlReply reply = { .error = error };
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reply.message, sizeof(reply.message), fmt, ap);
        va_end(ap);
        if (error == 0) {
                reply.stall_us = s->last_stall_us;
                reply.worker_pid = (uint32_t) s->current->pid;
                reply.generation = s->generation;
        }
        s->upgrading = false;
        s->drain_start_us = 0;
        if (s->upgrade_waiter)
                ctl_conn_reply(TAKE_PTR(s->upgrade_waiter), &reply);
}

void supervisor_on_worker_ready(Supervisor *s, Worker *w) {
        if (w != s->current && w != s->standby)
                return; /* a replaced standby, killed: its exit is on the way */
        if (worker_load(w) < 0)
                return; /* killed; its exit says what next */
        if (w == s->current)
                worker_go(w);
        else if (!s->current)
                promote_standby(s);
        /* else it holds until current exits, or (an upgrade) until Warm */
}

/* An upgrade's worker opened what it could ahead: the old one drains. */
void supervisor_on_worker_warm(Supervisor *s, Worker *w) {
        if (w != s->standby || !s->upgrading || !s->current)
                return;
        Worker *old = s->current;
        s->drain_start_us = now_us();
        old->asked_to_exit = true;
        if (old->state == WORKER_SPAWNED || old->state == WORKER_READY || old->state == WORKER_HOLDING)
                worker_kill(old, "replaced before it served");
        else if (old->state != WORKER_DRAINING)
                worker_drain(old);
}

void supervisor_on_worker_serving(Supervisor *s, Worker *w) {
        if (w != s->current)
                return;
        uint64_t since = s->upgrading ? s->drain_start_us : s->down_since_us;
        if (since)
                s->last_stall_us = now_us() - since;
        s->down_since_us = 0;
        log_info("worker %d (generation %" PRIu64 ") serves %zu mounts; stall %" PRIu64 " us", (int) w->pid,
                 w->generation, s->mounts.count, since ? s->last_stall_us : 0);
        if (s->upgrading)
                upgrade_done(s, 0, "worker %d serves %zu mounts", (int) w->pid, s->mounts.count);
        supervisor_want_standby(s);
        sd_status(s);
}

void supervisor_on_mount_status(Supervisor *s, Mount *m, const holdfast_MountStatus *st) {
        if (st->error < 0) {
                const char *why = st->message[0] ? st->message : strerror(-st->error);
                log_error("worker refused mount %" PRIu64 " (%s): %s", m->id, m->mountpoint, why);
                m->served = false;
                if (!m->initialized)
                        fail_new_mount(s, m, st->error, why);
                return;
        }
        m->served = true;
        if (st->initialized && (!m->initialized || m->init.size != st->init.size ||
                                memcmp(m->init.bytes, st->init.bytes, st->init.size) != 0)) {
                m->initialized = true;
                m->init.size = st->init.size; /* both at most 128 (holdfast.options) */
                memcpy(m->init.bytes, st->init.bytes, st->init.size);
                sd_store_state(s);
                if (holding(s->standby))
                        worker_send_mount(s->standby, m);
        }
        if (m->waiter)
                ctl_conn_replyf(TAKE_PTR(m->waiter), 0, "mounted %s (id %" PRIu64 ")", m->mountpoint, m->id);
}

/* current is gone; what it had goes to the next worker. */
static void current_gone(Supervisor *s, Worker *w, bool crashed) {
        s->current = NULL;
        s->last_drained = w->drained;
        /* Its table tells the next worker where requests may be in flight,
         * but only once its own takeover's RESENDs were all written
         * (SERVING): before that, requests of the worker before it may
         * still wait on connections it never counted. */
        closep(&s->prev_inflight_fd);
        s->prev_inflight_fd = w->serving_ms ? TAKE_FD(w->inflight_fd) : -1;
        if (crashed && !s->down_since_us)
                s->down_since_us = now_us();
        if (!s->stopping) {
                if (s->upgrading && !s->standby) /* the new worker died while taking over */
                        upgrade_done(s, -ECHILD, "the new worker %s while taking over the mounts; respawning",
                                     w->exit_text);
                if (s->standby && !(crashed && crash_loop(s))) {
                        if (crashed && served_long(w))
                                s->backoff_ms = 0;
                        promote_standby(s);
                } else if (!s->gave_up)
                        respawn_later(s, w);
        }
        /* After WorkerGo went out (readers wait for it, not for a walk
         * over a thousand mounts); no MountStatus came in between. */
        for (Mount *m = s->mounts.head; m; m = m->next)
                m->served = false;
        if (!s->stopping)
                sd_status(s);
}

static void standby_gone(Supervisor *s, Worker *w, bool crashed) {
        s->standby = NULL;
        free(TAKE_PTR(s->standby_path));
        if (s->upgrading)
                upgrade_done(s, -ECHILD, "the new worker %s before it took over; the old one keeps serving",
                             w->exit_text);
        if (s->stopping || (crashed && crash_loop(s)))
                return;
        if (crashed)
                backoff_next(s);
        if (s->current)
                supervisor_want_standby(s);
        else
                respawn_later(s, NULL);
}

void supervisor_on_worker_exit(Supervisor *s, Worker *w) {
        bool crashed = !w->asked_to_exit;
        if (crashed)
                s->restarts++;
        if (w == s->current)
                current_gone(s, w, crashed);
        else if (w == s->standby)
                standby_gone(s, w, crashed);
        /* else a standby an upgrade replaced */
        worker_free(w);
        if (s->stopping)
                supervisor_stop(s);
}

void supervisor_forget_conn(Supervisor *s, CtlConn *c) {
        if (s->upgrade_waiter == c)
                s->upgrade_waiter = NULL;
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->waiter == c)
                        m->waiter = NULL;
}

static void do_status(Supervisor *s, CtlConn *c) {
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_mount_info_tag };
        holdfast_MountInfo *mi = &e.msg.mount_info;
        for (Mount *m = s->mounts.head; m; m = m->next) {
                mi->id = m->id;
                mi->served = m->served;
                snprintf(mi->mountpoint, sizeof(mi->mountpoint), "%s", m->mountpoint);
                snprintf(mi->source, sizeof(mi->source), "%s", m->source);
                if (msg_send(c->fd, &e, -1) < 0)
                        return ctl_conn_close(c);
        }
        bool holds = holding(s->standby);
        holdfast_CtlReply reply = {
                .worker_pid = s->current ? (uint32_t) s->current->pid : 0,
                .standby_pid = holds ? (uint32_t) s->standby->pid : 0, .standby_warm = holds && s->standby->warm,
                .supervisor_pid = (uint32_t) getpid(), .uptime_ms = now_ms() - s->start_ms,
                .generation = s->generation, .restarts = s->restarts, .stall_us = s->last_stall_us,
                .mounts = (uint32_t) s->mounts.count,
        };
        const char *state = s->gave_up  ? "respawning given up after a crash loop ('holdfastctl restart' retries)"
                            : s->current ? worker_state_to_string(s->current->state)
                                         : "restarting";
        snprintf(reply.message, sizeof(reply.message), "worker %s%s", state, s->upgrading ? ", upgrading" : "");
        /* the socket's own name: right also for one from the fdstore */
        struct sockaddr_un sa = {};
        socklen_t len = sizeof(sa);
        if (s->snap_fd >= 0 && getsockname(s->snap_fd, (struct sockaddr *) &sa, &len) == 0 && sa.sun_family == AF_UNIX &&
            len > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0])
                snprintf(reply.snapshotter, sizeof(reply.snapshotter), "%.*s",
                         (int) MIN(len - offsetof(struct sockaddr_un, sun_path), sizeof(sa.sun_path)), sa.sun_path);
        ctl_conn_reply(c, &reply);
}

/* The client mounted (common/fuse/mount.c) and hands over the fd; it
 * detaches the mount itself when the answer is an error. */
static void do_mount(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req, int take_fd) {
        _cleanup_close_ int fd = take_fd;
        if (fd < 0 || !fuse_fd_is_dev(fd))
                return ctl_conn_replyf(c, -EBADMSG, "MOUNT carries the new mount's /dev/fuse fd");
        if (!req->source[0] || req->mountpoint[0] != '/')
                return ctl_conn_replyf(c, -EINVAL, "MOUNT wants a source and an absolute mountpoint");
        if (s->gave_up)
                return ctl_conn_replyf(c, -ESRCH, "no worker: respawning was given up after a crash loop; "
                                                  "run 'holdfastctl restart'");
        Mount *m = mount_table_find_path(&s->mounts, req->mountpoint);
        if (m)
                return ctl_conn_replyf(c, -EBUSY, "%s is already a holdfast mount (id %" PRIu64 ")", m->mountpoint,
                                       m->id);
        int r = mount_table_add(&s->mounts, 0, req->mountpoint, req->source, TAKE_FD(fd), &m);
        if (r < 0)
                return ctl_conn_replyf(c, r, "cannot record the mount: %s",
                                       r == -ENOSPC ? "too many mounts" : strerror(-r));
        log_info("mounted %s on %s (id %" PRIu64 ")", m->source, m->mountpoint, m->id);
        m->waiter = c;
        sd_store_mount(m);
        sd_store_state(s);
        Worker *w = s->current;
        /* A draining worker still takes mounts until its snapshotter's
         * calls are answered (a remote Prepare waits for this one); when
         * it stops before it reads the record, the standby serves it. */
        if (w && (w->state == WORKER_STARTING || w->state == WORKER_SERVING ||
                  (w->state == WORKER_DRAINING && !w->drained)))
                worker_send_mount(w, m);
        /* else the next start sequence carries it; the reply waits for it */
        if (holding(s->standby))
                worker_send_mount(s->standby, m);
}

static void do_umount(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req) {
        if (!req->mountpoint[0])
                return ctl_conn_replyf(c, -EINVAL, "no mountpoint given");
        if (req->mountpoint[0] != '/')
                return ctl_conn_replyf(c, -EINVAL, "mountpoint '%s' is not an absolute path", req->mountpoint);
        Mount *m = mount_table_find_path(&s->mounts, req->mountpoint);
        if (!m)
                return ctl_conn_replyf(c, -ENOENT, "%s is not a holdfast mount", req->mountpoint);
        int r = fuse_mount_detach(m->mountpoint);
        if (r < 0)
                return ctl_conn_replyf(c, r, "umount %s: %s", m->mountpoint, strerror(-r));
        if (s->current && m->sent_gen == s->current->generation)
                worker_send_unmount(s->current, m->id);
        if (holding(s->standby))
                worker_send_unmount(s->standby, m->id);
        if (m->waiter)
                ctl_conn_replyf(TAKE_PTR(m->waiter), -ECANCELED, "unmounted before it was served");
        log_info("unmounted %s (id %" PRIu64 ")", m->mountpoint, m->id);
        ctl_conn_replyf(c, 0, "unmounted %s", m->mountpoint);
        remove_mount(s, m);
}

static void do_upgrade(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req, bool restart) {
        if (s->upgrading)
                return ctl_conn_replyf(c, -EBUSY, "an upgrade is already in progress");
        const char *path = s->worker_path;
        if (!restart && req->worker_path[0]) {
                if (req->worker_path[0] != '/')
                        return ctl_conn_replyf(c, -EINVAL, "worker path '%s' is not absolute", req->worker_path);
                path = req->worker_path;
        }
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return ctl_conn_replyf(c, -ENOMEM, "out of memory");
        ErrMsg err = {};
        Worker *w;
        int r = worker_spawn(s, p, s->generation + 1, &w, &err);
        if (r < 0)
                return ctl_conn_replyf(c, r, "cannot start the new worker: %s%s", err.text,
                                       s->current ? "; the old one keeps serving" : "");
        /* The new worker replaces the standby (it holds the old binary). */
        if (s->standby)
                kill_standby(s, "replaced by the upgrade's worker");
        uv_timer_stop(&s->spawn_timer); /* no standby of the old binary, no respawn */
        s->generation++;
        s->standby = w;
        s->standby_path = TAKE_PTR(p);
        s->upgrading = true;
        s->upgrade_waiter = c;
        s->drain_start_us = 0;
        if (s->gave_up || !s->current) {
                /* Nobody to drain: the new worker takes over when ready. */
                s->gave_up = false;
                s->n_deaths = 0;
                s->backoff_ms = 0;
        }
}

void supervisor_on_request(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req, int take_fd) {
        _cleanup_close_ int fd = take_fd;
        if (s->stopping && req->op != holdfast_CtlRequest_Op_STATUS)
                return ctl_conn_replyf(c, -ESHUTDOWN, "the supervisor is stopping");
        ErrMsg err = {};
        switch (req->op) {
        case holdfast_CtlRequest_Op_STATUS:
                return do_status(s, c);
        case holdfast_CtlRequest_Op_MOUNT:
                return do_mount(s, c, req, TAKE_FD(fd));
        case holdfast_CtlRequest_Op_UMOUNT:
                return do_umount(s, c, req);
        case holdfast_CtlRequest_Op_UPGRADE:
        case holdfast_CtlRequest_Op_RESTART:
                return do_upgrade(s, c, req, req->op == holdfast_CtlRequest_Op_RESTART);
        case holdfast_CtlRequest_Op_REEXEC: /* returns only on failure */
                return ctl_conn_replyf(c, supervisor_reexec(s, c, &err), "cannot re-execute the supervisor: %s",
                                       err.text);
        default:
                return ctl_conn_replyf(c, -EOPNOTSUPP, "unknown request %d", (int) req->op);
        }
}

static void close_handle(uv_handle_t *h, _unused_ void *arg) {
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

/* SIGTERM/SIGINT, and each step after: drain the workers, then (unless
 * systemd keeps the fds in its store for the next start) detach every
 * mount, then let the loop end. */
void supervisor_stop(Supervisor *s) {
        if (!s->stopping) {
                log_info("stopping");
                s->stopping = true;
                ctl_server_stop(&s->ctl);
                if (s->upgrading)
                        upgrade_done(s, -ESHUTDOWN, "the supervisor is stopping");
        }
        uv_timer_stop(&s->spawn_timer);
        if (s->standby) {
                s->standby->asked_to_exit = true;
                worker_kill(s->standby, "the supervisor is stopping");
                return;
        }
        if (s->current) {
                Worker *w = s->current;
                w->asked_to_exit = true;
                if (w->state == WORKER_STARTING || w->state == WORKER_SERVING)
                        worker_drain(w);
                else if (w->state != WORKER_DRAINING)
                        worker_kill(w, "the supervisor is stopping");
                return; /* its exit calls us again */
        }
        for (Mount *m = s->mounts.head; m && !s->under_systemd; m = m->next) {
                int r = fuse_mount_detach(m->mountpoint);
                if (r < 0)
                        log_error_errno(r, "detach %s", m->mountpoint);
                else
                        log_info("unmounted %s", m->mountpoint);
        }
        if (s->under_systemd)
                log_info("keeping %zu mounts: their fds are in systemd's fdstore", s->mounts.count);
        mount_table_clear(&s->mounts);
        worker_reap_exited(s, NULL);
        /* The timers, the signal handlers; every worker and connection is
         * closing already. */
        uv_walk(s->loop, close_handle, NULL);
}
