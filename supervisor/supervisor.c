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
 * - WorkerGo goes to a worker only once the previous one is reaped, so two
 *   workers never read one connection;
 * - a worker's death never drops a mount; only UMOUNT, a worker refusing a
 *   new MOUNT, or a plain stop do. */
#include "supervisor/supervisor.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "supervisor/fuse-mount.h"
#include "supervisor/log.h"
#include "supervisor/sd.h"

#define DRAIN_TIMEOUT_MS 5000
/* A worker that served this long before dying was not crash-looping: its
 * successor starts at once (readers are waiting); only quick deaths back
 * off. */
#define HEALTHY_MS 1000
/* A new standby starts this long after a worker took over, so that its
 * exec and store open do not compete with the first requests. */
#define STANDBY_DELAY_MS UINT64_C(300)

uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static bool worker_alive(const Worker *w) {
        return w && w->state != WORKER_EXITED;
}

static void fail_new_mount(Supervisor *s, Mount *m, int error, const char *msg) {
        /* detach first: when holdfastctl hears of the failure, the mount
         * is gone */
        int r = fuse_mount_detach(m->mountpoint);
        if (r < 0)
                log_error_errno(r, "detach %s", m->mountpoint);
        if (m->waiter)
                ctl_conn_reply_error(m->waiter, error, "%s", msg);
        sd_forget_mount(s, m->id);
        mount_table_remove(&s->mounts, m);
        sd_store_state(s);
}

/* Mounts that never got served cannot wait for a worker that will not come. */
static void fail_waiting_mounts(Supervisor *s, const char *why) {
        for (Mount *m = s->mounts.head, *n; m; m = n) {
                n = m->next;
                if (m->waiter)
                        fail_new_mount(s, m, -ESRCH, why);
        }
}

static void on_respawn_timer(uv_timer_t *t) {
        Supervisor *s = t->data;
        if (!s->current && !s->standby && !s->stopping && !s->gave_up)
                supervisor_spawn_current(s);
}

static void on_standby_timer(uv_timer_t *t) {
        Supervisor *s = t->data;
        if (!s->want_standby || s->standby || s->stopping || s->gave_up || s->upgrading)
                return;
        if (!s->current || s->current->state != WORKER_SERVING)
                return; /* armed again when one serves */
        ErrMsg err = {};
        Worker *w;
        if (worker_spawn(s, s->worker_path, ++s->generation, &w, &err) < 0) {
                log_error("cannot start a standby worker: %s", err.text);
                s->backoff_ms = s->backoff_ms ? MIN(s->backoff_ms * 2, s->delay_max_ms) : 100;
                supervisor_want_standby(s);
                return;
        }
        s->standby = w;
}

void supervisor_want_standby(Supervisor *s) {
        if (s->want_standby && !s->standby && !s->stopping && !s->gave_up)
                uv_timer_start(&s->standby_timer, on_standby_timer, MAX(s->backoff_ms, STANDBY_DELAY_MS), 0);
}

/* A worker died without being asked to: counts it; true when that makes
 * a crash loop (then respawning stops, and mounts stay). */
static bool crash_loop(Supervisor *s) {
        uint64_t t = now_ms();
        s->deaths[s->n_deaths++ % RESTART_BURST_MAX] = t;
        unsigned recent = 0;
        for (unsigned i = 0; i < MIN(s->n_deaths, (unsigned) RESTART_BURST_MAX); i++)
                if (t - s->deaths[i] < s->restart_interval_ms)
                        recent++;
        if (s->restart_burst > 0 && recent >= s->restart_burst) {
                s->gave_up = true;
                log_error("WORKER CRASH LOOP: %u deaths within %" PRIu64 " s; not respawning any more. "
                          "Mounts are kept but not served; 'holdfastctl restart' tries again.",
                          recent, s->restart_interval_ms / 1000);
                fail_waiting_mounts(s, "the worker keeps dying; respawning given up");
                if (s->standby) {
                        s->standby->asked_to_exit = true;
                        worker_kill(TAKE_PTR(s->standby), "respawning was given up");
                }
                sd_status(s);
                return true;
        }
        return false;
}

/* Respawns current after the backoff unless this is a crash loop. */
static void respawn_later(Supervisor *s, const Worker *dead) {
        if (crash_loop(s))
                return;
        uint64_t t = now_ms();
        if (dead && dead->serving_ms && t - dead->serving_ms >= HEALTHY_MS)
                s->backoff_ms = 0;
        uint64_t delay = s->backoff_ms;
        s->backoff_ms = delay == 0 ? 100 : MIN(delay * 2, s->delay_max_ms);
        if (delay)
                log_info("respawning the worker in %" PRIu64 " ms", delay);
        uv_timer_start(&s->respawn_timer, on_respawn_timer, delay, 0);
}

int supervisor_spawn_current(Supervisor *s) {
        ErrMsg err = {};
        Worker *w;
        int r = worker_spawn(s, s->worker_path, ++s->generation, &w, &err);
        if (r < 0) {
                log_error("cannot start the worker: %s", err.text);
                s->restarts++;
                respawn_later(s, NULL);
                return r;
        }
        s->current = w;
        return 0;
}

/* current is gone: the standby serves (now if it holds the mounts, else
 * when its WorkerReady comes). */
static void promote_standby(Supervisor *s) {
        Worker *w = TAKE_PTR(s->standby);
        s->current = w;
        if (s->standby_path) {
                free(s->worker_path);
                s->worker_path = TAKE_PTR(s->standby_path);
        }
        if (s->upgrading && !s->drain_start_us)
                s->drain_start_us = now_us();
        if (w->state == WORKER_HOLDING)
                worker_go(w); /* on failure it is killed; its exit says what next */
}

static void upgrade_done(Supervisor *s, int error, const char *fmt, ...) _printf_(3, 4);
static void upgrade_done(Supervisor *s, int error, const char *fmt, ...) {
        holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
        reply.error = error;
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
        if (w == s->current) {
                worker_go(w);
                return;
        }
        assert(w == s->standby);
        if (!s->current)
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
                worker_drain(old, DRAIN_TIMEOUT_MS);
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

void supervisor_on_mount_status(Supervisor *s, Worker *w, Mount *m, const holdfast_MountStatus *st) {
        (void) w;
        if (st->error < 0) {
                log_error("worker refused mount %" PRIu64 " (%s): %s", m->id, m->mountpoint,
                          st->message[0] ? st->message : strerror(-st->error));
                m->served = false;
                if (!m->initialized)
                        fail_new_mount(s, m, st->error, st->message[0] ? st->message : strerror(-st->error));
                return;
        }
        m->served = true;
        if (st->initialized && st->init.size <= sizeof(m->init)) {
                bool changed = !m->initialized || m->init_size != st->init.size ||
                               memcmp(m->init, st->init.bytes, st->init.size) != 0;
                m->initialized = true;
                memcpy(m->init, st->init.bytes, st->init.size);
                m->init_size = st->init.size;
                if (changed) {
                        sd_store_state(s);
                        if (s->standby && s->standby->state == WORKER_HOLDING)
                                worker_send_mount(s->standby, m);
                }
        }
        if (m->waiter) {
                holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
                snprintf(reply.message, sizeof(reply.message), "mounted %s (id %" PRIu64 ")", m->mountpoint, m->id);
                ctl_conn_reply(TAKE_PTR(m->waiter), &reply);
        }
}

void supervisor_on_worker_exit(Supervisor *s, Worker *w) {
        bool crashed = !w->asked_to_exit;
        if (crashed)
                s->restarts++;
        if (w == s->standby) {
                s->standby = NULL;
                free(TAKE_PTR(s->standby_path));
                if (s->upgrading)
                        upgrade_done(s, -ECHILD, "the new worker %s before it took over; the old one keeps serving",
                                     w->exit_text);
                worker_free(w);
                if (s->stopping)
                        return supervisor_stop(s);
                if (crashed && crash_loop(s))
                        return;
                if (crashed)
                        s->backoff_ms = s->backoff_ms ? MIN(s->backoff_ms * 2, s->delay_max_ms) : 100;
                if (!s->current)
                        respawn_later(s, NULL);
                else
                        supervisor_want_standby(s);
                return;
        }
        if (w != s->current) {
                worker_free(w); /* a standby an upgrade replaced */
                if (s->stopping)
                        supervisor_stop(s);
                return;
        }
        s->current = NULL;
        s->last_drained = w->drained;
        /* Its table tells the next worker where requests may be in flight,
         * but only once its own takeover's RESENDs were all written
         * (SERVING): before that, requests of the worker before it may
         * still wait on connections it never counted. */
        if (s->prev_inflight_fd >= 0)
                close(s->prev_inflight_fd);
        s->prev_inflight_fd = w->serving_ms ? TAKE_FD(w->inflight_fd) : -1;
        for (Mount *m = s->mounts.head; m; m = m->next)
                m->served = false;
        if (crashed && !s->down_since_us)
                s->down_since_us = now_us();
        if (s->stopping) {
                worker_free(w);
                supervisor_stop(s);
                return;
        }
        if (s->upgrading && !s->standby)
                /* The new worker died while taking over. */
                upgrade_done(s, -ECHILD, "the new worker %s while taking over the mounts; respawning",
                             w->exit_text);
        if (s->standby && !(crashed && crash_loop(s))) {
                if (crashed && w->serving_ms && now_ms() - w->serving_ms >= HEALTHY_MS)
                        s->backoff_ms = 0;
                promote_standby(s);
        } else if (!s->gave_up)
                respawn_later(s, w);
        worker_free(w);
        sd_status(s);
}

void supervisor_forget_conn(Supervisor *s, CtlConn *c) {
        if (s->upgrade_waiter == c)
                s->upgrade_waiter = NULL;
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->waiter == c)
                        m->waiter = NULL;
}

static void fill_status(Supervisor *s, holdfast_CtlReply *reply) {
        reply->worker_pid = worker_alive(s->current) ? (uint32_t) s->current->pid : 0;
        reply->generation = s->generation;
        reply->restarts = s->restarts;
        reply->uptime_ms = now_ms() - s->start_ms;
        reply->mounts = (uint32_t) s->mounts.count;
        reply->stall_us = s->last_stall_us;
        reply->supervisor_pid = (uint32_t) getpid();
        bool holding = worker_alive(s->standby) && s->standby->state == WORKER_HOLDING;
        reply->standby_pid = holding ? (uint32_t) s->standby->pid : 0;
        reply->standby_warm = holding && s->standby->warm;
}

static void do_status(Supervisor *s, CtlConn *c) {
        holdfast_MountInfo *mi = malloc(sizeof(*mi));
        if (!mi)
                return ctl_conn_reply_error(c, -ENOMEM, "out of memory");
        for (Mount *m = s->mounts.head; m; m = m->next) {
                *mi = (holdfast_MountInfo) holdfast_MountInfo_init_zero;
                mi->id = m->id;
                snprintf(mi->mountpoint, sizeof(mi->mountpoint), "%s", m->mountpoint);
                snprintf(mi->source, sizeof(mi->source), "%s", m->source);
                mi->served = m->served;
                if (ctl_conn_send_info(c, mi) < 0) {
                        free(mi);
                        return ctl_conn_close(c);
                }
        }
        free(mi);
        holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
        fill_status(s, &reply);
        const char *state = s->gave_up  ? "respawning given up after a crash loop ('holdfastctl restart' retries)"
                            : s->current ? worker_state_to_string(s->current->state)
                                         : "restarting";
        snprintf(reply.message, sizeof(reply.message), "worker %s%s", state, s->upgrading ? ", upgrading" : "");
        ctl_conn_reply(c, &reply);
}

static void do_mount(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req) {
        if (s->gave_up)
                return ctl_conn_reply_error(c, -ESRCH, "no worker: respawning was given up after a crash loop; "
                                                       "run 'holdfastctl restart'");
        if (req->mountpoint[0] == '/') {
                _cleanup_free_ char *canon = fuse_mount_canonical(req->mountpoint);
                Mount *dup = canon ? mount_table_find_path(&s->mounts, canon) : NULL;
                if (dup)
                        return ctl_conn_reply_error(c, -EBUSY, "%s is already a holdfast mount (id %" PRIu64 ")",
                                                    dup->mountpoint, dup->id);
        }
        if (s->mounts.count >= MOUNT_TABLE_MAX)
                return ctl_conn_reply_error(c, -ENOSPC, "too many mounts (%d)", MOUNT_TABLE_MAX);
        ErrMsg err = {};
        _cleanup_free_ char *src = NULL, *mp = NULL;
        int fd;
        int r = fuse_mount_new(req->source, req->mountpoint, &src, &mp, &fd, &err);
        if (r < 0)
                return ctl_conn_reply_error(c, r, "%s", err.text);
        Mount *m;
        r = mount_table_add(&s->mounts, mp, src, fd, &m);
        if (r < 0) {
                fuse_mount_detach(mp);
                return ctl_conn_reply_error(c, r, "cannot record the mount: %s", strerror(-r));
        }
        log_info("mounted %s on %s (id %" PRIu64 ")", m->source, m->mountpoint, m->id);
        m->waiter = c;
        sd_store_mount(s, m);
        sd_store_state(s);
        Worker *w = s->current;
        if (w && (w->state == WORKER_STARTING || w->state == WORKER_SERVING))
                worker_send_mount(w, m);
        /* else the next start sequence carries it; the reply waits for it */
        if (s->standby && s->standby->state == WORKER_HOLDING)
                worker_send_mount(s->standby, m);
}

static void do_umount(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req) {
        if (!req->mountpoint[0])
                return ctl_conn_reply_error(c, -EINVAL, "no mountpoint given");
        if (req->mountpoint[0] != '/')
                return ctl_conn_reply_error(c, -EINVAL, "mountpoint '%s' is not an absolute path", req->mountpoint);
        Mount *m = mount_table_find_path(&s->mounts, req->mountpoint);
        if (!m) {
                _cleanup_free_ char *canon = fuse_mount_canonical(req->mountpoint);
                m = canon ? mount_table_find_path(&s->mounts, canon) : NULL;
        }
        if (!m)
                return ctl_conn_reply_error(c, -ENOENT, "%s is not a holdfast mount", req->mountpoint);
        int r = fuse_mount_detach(m->mountpoint);
        if (r < 0)
                return ctl_conn_reply_error(c, r, "umount %s: %s", m->mountpoint, strerror(-r));
        if (worker_alive(s->current) && m->sent_gen == s->current->generation)
                worker_send_unmount(s->current, m->id);
        if (s->standby && s->standby->state == WORKER_HOLDING)
                worker_send_unmount(s->standby, m->id);
        if (m->waiter)
                ctl_conn_reply_error(TAKE_PTR(m->waiter), -ECANCELED, "unmounted before it was served");
        log_info("unmounted %s (id %" PRIu64 ")", m->mountpoint, m->id);
        holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
        snprintf(reply.message, sizeof(reply.message), "unmounted %s", m->mountpoint);
        sd_forget_mount(s, m->id);
        mount_table_remove(&s->mounts, m);
        sd_store_state(s);
        ctl_conn_reply(c, &reply);
}

static void do_upgrade(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req, bool restart) {
        if (s->upgrading)
                return ctl_conn_reply_error(c, -EBUSY, "an upgrade is already in progress");
        const char *path = s->worker_path;
        if (!restart && req->worker_path[0]) {
                if (req->worker_path[0] != '/')
                        return ctl_conn_reply_error(c, -EINVAL, "worker path '%s' is not absolute",
                                                    req->worker_path);
                path = req->worker_path;
        }
        char *p = strdup(path);
        if (!p)
                return ctl_conn_reply_error(c, -ENOMEM, "out of memory");
        ErrMsg err = {};
        Worker *w;
        int r = worker_spawn(s, p, s->generation + 1, &w, &err);
        if (r < 0) {
                free(p);
                return ctl_conn_reply_error(c, r, "cannot start the new worker: %s%s", err.text,
                                            worker_alive(s->current) ? "; the old one keeps serving" : "");
        }
        /* The new worker replaces the standby (it holds the old binary). */
        if (s->standby) {
                s->standby->asked_to_exit = true;
                worker_kill(TAKE_PTR(s->standby), "replaced by the upgrade's worker");
                free(TAKE_PTR(s->standby_path));
        }
        uv_timer_stop(&s->standby_timer);
        s->generation++;
        s->standby = w;
        s->standby_path = p;
        s->upgrading = true;
        s->upgrade_waiter = c;
        s->drain_start_us = 0;
        if (s->gave_up || !s->current) {
                /* Nobody to drain: the new worker takes over when ready. */
                s->gave_up = false;
                s->n_deaths = 0;
                s->backoff_ms = 0;
                uv_timer_stop(&s->respawn_timer);
        }
}

void supervisor_on_request(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req) {
        if (s->stopping && req->op != holdfast_CtlRequest_Op_STATUS)
                return ctl_conn_reply_error(c, -ESHUTDOWN, "the supervisor is stopping");
        switch (req->op) {
        case holdfast_CtlRequest_Op_STATUS:
                return do_status(s, c);
        case holdfast_CtlRequest_Op_MOUNT:
                return do_mount(s, c, req);
        case holdfast_CtlRequest_Op_UMOUNT:
                return do_umount(s, c, req);
        case holdfast_CtlRequest_Op_UPGRADE:
                return do_upgrade(s, c, req, false);
        case holdfast_CtlRequest_Op_RESTART:
                return do_upgrade(s, c, req, true);
        case holdfast_CtlRequest_Op_REEXEC: {
                ErrMsg err = {};
                int r = supervisor_reexec(s, c, &err);
                /* Only returns on failure. */
                return ctl_conn_reply_error(c, r, "cannot re-execute the supervisor: %s", err.text);
        }
        default:
                return ctl_conn_reply_error(c, -EOPNOTSUPP, "unknown request %d", (int) req->op);
        }
}

/* SIGTERM/SIGINT, and each step after: drain the workers, then (unless
 * systemd keeps the fds in its store for the next start) detach every
 * mount, then let the loop end. */
void supervisor_stop(Supervisor *s) {
        if (!s->stopping) {
                log_info("stopping");
                s->stopping = true;
                ctl_server_stop(&s->ctl);
                uv_timer_stop(&s->respawn_timer);
                if (s->upgrading)
                        upgrade_done(s, -ESHUTDOWN, "the supervisor is stopping");
        }
        uv_timer_stop(&s->standby_timer);
        if (worker_alive(s->standby)) {
                s->standby->asked_to_exit = true;
                worker_kill(s->standby, "the supervisor is stopping");
                return;
        }
        if (worker_alive(s->current)) {
                Worker *w = s->current;
                w->asked_to_exit = true;
                if (w->state == WORKER_STARTING || w->state == WORKER_SERVING)
                        worker_drain(w, DRAIN_TIMEOUT_MS);
                else if (w->state != WORKER_DRAINING)
                        worker_kill(w, "the supervisor is stopping");
                return;
        }
        if (s->standby)
                return; /* its exit calls us again */
        if (!s->under_systemd) {
                for (Mount *m = s->mounts.head; m; m = m->next) {
                        int r = fuse_mount_detach(m->mountpoint);
                        if (r < 0)
                                log_error_errno(r, "detach %s", m->mountpoint);
                        else
                                log_info("unmounted %s", m->mountpoint);
                }
        } else
                log_info("keeping %zu mounts: their fds are in systemd's fdstore", s->mounts.count);
        mount_table_clear(&s->mounts);
        uv_close((uv_handle_t *) &s->respawn_timer, NULL);
        uv_close((uv_handle_t *) &s->standby_timer, NULL);
        uv_close((uv_handle_t *) &s->sigterm, NULL);
        uv_close((uv_handle_t *) &s->sigint, NULL);
        if (uv_is_active((uv_handle_t *) &s->watchdog_timer) || s->watchdog_usec)
                uv_close((uv_handle_t *) &s->watchdog_timer, NULL);
}
