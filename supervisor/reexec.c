/* Re-executing the supervisor in place (holdfastctl upgrade --supervisor),
 * after the cvmfs loader's sequence: stop at a quiet point, save state,
 * load the new image, restore state, resume. Across execve the process
 * keeps its pid, its children and every fd without FD_CLOEXEC: the mounts'
 * /dev/fuse fds, the control socket, the worker's socket and pidfd, the
 * connection of the holdfastctl that asked (answered by the new image) and
 * the memfd with the records. The running worker is adopted, not
 * replaced: it never notices. Runs on the supervisor's loop. */
#include "supervisor/supervisor.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "supervisor/log.h"
#include "supervisor/sd.h"
#include "supervisor/state.h"

static int set_cloexec(int fd, bool on) {
        int fl = fcntl(fd, F_GETFD);
        if (fl < 0)
                return -errno;
        fl = on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC;
        return fcntl(fd, F_SETFD, fl) < 0 ? -errno : 0;
}

static void set_cloexec_all(Supervisor *s, const StateExtra *x, int memfd, bool on) {
        for (Mount *m = s->mounts.head; m; m = m->next)
                set_cloexec(m->fd, on);
        int fds[] = { x->listen_fd, x->reply_fd, x->worker_pidfd, x->worker_sock, x->worker_inflight_fd, memfd };
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] >= 0)
                        set_cloexec(fds[i], on);
}

int supervisor_reexec(Supervisor *s, CtlConn *c, ErrMsg *err) {
        if (s->upgrading)
                return errmsg_set(err, -EBUSY, "a worker upgrade is in progress; try again");
        Worker *w = s->current;
        if (w && w->state != WORKER_SERVING)
                return errmsg_set(err, -EBUSY, "the worker is %s; try again when it serves",
                                  worker_state_to_string(w->state));
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->waiter)
                        return errmsg_set(err, -EBUSY, "mount %s is being set up; try again", m->mountpoint);
        StateExtra x = {
                .with_fds = true,
                .listen_fd = s->ctl.fd,
                .reply_fd = c->fd,
                .worker_pidfd = w ? w->pidfd : -1,
                .worker_sock = w ? w->sock : -1,
                .worker_inflight_fd = w ? w->inflight_fd : -1,
                .worker_pid = w ? w->pid : 0,
                .worker_generation = w ? w->generation : 0,
                .worker_serving_ms = w ? w->serving_ms : 0,
        };
        /* The standby is not carried across: the new image starts one. */
        if (s->standby) {
                worker_reap_now(s->standby, "the supervisor re-executes");
                worker_free(TAKE_PTR(s->standby));
                free(TAKE_PTR(s->standby_path));
        }
        int memfd;
        int r = state_save(s, &x, &memfd);
        if (r < 0)
                supervisor_want_standby(s);
        if (r < 0)
                return errmsg_set(err, r, "cannot save the state: %s", strerror(-r));
        char fdarg[16], limit[48], delay[24];
        snprintf(fdarg, sizeof(fdarg), "%d", memfd);
        snprintf(limit, sizeof(limit), "%u/%" PRIu64, s->restart_burst, s->restart_interval_ms / 1000);
        snprintf(delay, sizeof(delay), "%" PRIu64, s->delay_max_ms);
        char *const argv[] = {
                s->self_path, "--root", s->root, "--worker", s->worker_path, "--restart-limit", limit,
                "--restart-delay-max", delay, "--restore-fd", fdarg, s->want_standby ? NULL : "--no-standby", NULL,
        };
        log_info("re-executing %s with %zu mounts%s", s->self_path, s->mounts.count,
                 w ? ", keeping the worker" : "");
        set_cloexec_all(s, &x, memfd, false);
        fflush(stdout);
        fflush(stderr);
        execv(s->self_path, argv);
        r = -errno;
        set_cloexec_all(s, &x, memfd, true);
        close(memfd);
        supervisor_want_standby(s);
        return errmsg_set(err, r, "execv %s: %s", s->self_path, strerror(-r));
}

int supervisor_restore(Supervisor *s, int state_fd, ErrMsg *err) {
        StateExtra x = {};
        int r = state_load(s, state_fd, &x, err);
        close(state_fd);
        if (r < 0)
                return r;
        /* Everything we were handed is ours again; none of it may leak
         * into a worker. A record whose fd did not survive is useless. */
        for (Mount *m = s->mounts.head, *n; m; m = n) {
                n = m->next;
                if (m->fd < 0 || set_cloexec(m->fd, true) < 0) {
                        log_error("mount %s lost its fd across exec; dropping it", m->mountpoint);
                        m->fd = -EBADF;
                        mount_table_remove(&s->mounts, m);
                }
        }
        int fds[] = { x.listen_fd, x.reply_fd, x.worker_pidfd, x.worker_sock, x.worker_inflight_fd };
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] >= 0 && set_cloexec(fds[i], true) < 0)
                        return errmsg_set(err, -EBADF, "fd %d did not survive the exec", fds[i]);
        r = ctl_server_start(&s->ctl, s, NULL, x.listen_fd);
        if (r < 0)
                return errmsg_set(err, r, "control socket: %s", strerror(-r));
        if (x.worker_pidfd >= 0) {
                r = worker_adopt(s, x.worker_pid, x.worker_pidfd, x.worker_sock, x.worker_inflight_fd,
                                 x.worker_generation, x.worker_serving_ms, &s->current);
                if (r < 0)
                        return errmsg_set(err, r, "cannot adopt worker %d: %s", (int) x.worker_pid, strerror(-r));
                supervisor_want_standby(s);
        }
        log_info("re-executed: %zu mounts, worker %d (generation %" PRIu64 ")", s->mounts.count,
                 s->current ? (int) s->current->pid : 0, s->generation);
        if (x.reply_fd >= 0) {
                CtlConn *c;
                r = ctl_server_adopt_conn(&s->ctl, x.reply_fd, &c);
                if (r >= 0) {
                        holdfast_CtlReply reply = holdfast_CtlReply_init_zero;
                        reply.worker_pid = s->current ? (uint32_t) s->current->pid : 0;
                        reply.generation = s->generation;
                        reply.supervisor_pid = (uint32_t) getpid();
                        reply.mounts = (uint32_t) s->mounts.count;
                        snprintf(reply.message, sizeof(reply.message), "supervisor re-executed; %zu mounts kept",
                                 s->mounts.count);
                        ctl_conn_reply(c, &reply);
                }
        }
        return 0;
}
