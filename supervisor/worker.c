/* holdfast-worker processes (worker.h). Owns each worker's pidfd, our end
 * of its socketpair and the uv handles on them; the Worker is freed in the
 * last uv_close callback. Runs on the supervisor's loop.
 *
 * Invariants: a worker's fds go to it only between WorkerReady and its
 * exit; a worker is never given a connection while another process might
 * still read it (supervisor.c sends the start sequence only after the
 * previous worker's pidfd reported its exit and it was reaped). Our end of
 * the socket is blocking with a send deadline: a worker that stops reading
 * is killed rather than stalling the loop. */
#include "supervisor/worker.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/ipc/msg.h"
#include "common/util/macro.h"
#include "supervisor/log.h"
#include "supervisor/supervisor.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define WORKER_READY_TIMEOUT_MS 10000
#define WORKER_SEND_TIMEOUT_S 5
/* An upgrade waits this long at most for the new worker's Warm. */
#define WORKER_WARM_TIMEOUT_MS 10000

const char *worker_state_to_string(WorkerState st) {
        static const char *const names[] = {
                [WORKER_SPAWNED] = "spawned",   [WORKER_READY] = "ready",
                [WORKER_HOLDING] = "holding",   [WORKER_STARTING] = "starting",
                [WORKER_SERVING] = "serving",
                [WORKER_DRAINING] = "draining", [WORKER_EXITED] = "exited",
        };
        return st < ELEMENTSOF(names) ? names[st] : "?";
}

static void on_sock(uv_poll_t *h, int status, int events);
static void on_pidfd(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *t);

static void worker_close_fds_and_free(Worker *w) {
        if (w->pidfd >= 0)
                close(w->pidfd);
        if (w->sock >= 0)
                close(w->sock);
        if (w->inflight_fd >= 0)
                close(w->inflight_fd);
        free(w);
}

static void on_handle_closed(uv_handle_t *h) {
        Worker *w = h->data;
        if (--w->open_handles == 0)
                worker_close_fds_and_free(w);
}

static int worker_setup(Supervisor *s, Worker *w) {
        w->sup = s;
        int r = uv_poll_init(s->loop, &w->pid_poll, w->pidfd);
        if (r < 0)
                return r;
        w->pid_poll.data = w;
        w->open_handles++;
        r = uv_poll_init(s->loop, &w->sock_poll, w->sock);
        if (r < 0)
                return r;
        r = fd_blocking_after_uv_poll(w->sock);
        if (r < 0)
                return r;
        w->sock_poll.data = w;
        w->open_handles++;
        r = uv_timer_init(s->loop, &w->timer);
        if (r < 0)
                return r;
        w->timer.data = w;
        w->open_handles++;
        r = uv_poll_start(&w->pid_poll, UV_READABLE, on_pidfd);
        if (r < 0)
                return r;
        r = uv_poll_start(&w->sock_poll, UV_READABLE, on_sock);
        if (r < 0)
                return r;
        w->sock_polling = true;
        struct timeval tv = { .tv_sec = WORKER_SEND_TIMEOUT_S };
        if (setsockopt(w->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(w->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                return -errno;
        return 0;
}

/* Frees a worker whose handles were never started, or closes them. */
void worker_free(Worker *w) {
        if (!w)
                return;
        if (w->open_handles == 0) {
                worker_close_fds_and_free(w);
                return;
        }
        uv_close((uv_handle_t *) &w->pid_poll, on_handle_closed);
        if (w->open_handles >= 2)
                uv_close((uv_handle_t *) &w->sock_poll, on_handle_closed);
        if (w->open_handles >= 3)
                uv_close((uv_handle_t *) &w->timer, on_handle_closed);
}

static void child_exec(const char *path, const char *root, int sock) {
        /* In the child: only async-signal-safe calls until execv. */
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (sock == 3) {
                if (fcntl(3, F_SETFD, 0) < 0)
                        _exit(127);
        } else if (dup2(sock, 3) < 0)
                _exit(127);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0 && null != 0) {
                dup2(null, 0);
                close(null);
        }
        char *const argv[] = { (char *) path, "--root", (char *) root, "--supervisor-fd", "3", NULL };
        execv(path, argv);
        _exit(127);
}

int worker_spawn(Supervisor *s, const char *path, uint64_t generation, Worker **ret, ErrMsg *err) {
        if (access(path, X_OK) < 0)
                return errmsg_set(err, -errno, "worker %s: %s", path, strerror(errno));
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
                return errmsg_set(err, -errno, "socketpair: %s", strerror(errno));
        /* The worker's heap on transparent huge pages: a killed worker's
         * memory is freed before its pidfd reports the exit, and with 4 KiB
         * pages that costs about 0.1 ms per MB here (16 ms for 200 MB, 2 ms
         * with huge pages), all of it a stall for the readers. */
        char tunables[512];
        const char *prev = getenv("GLIBC_TUNABLES");
        snprintf(tunables, sizeof(tunables), "%s%sglibc.malloc.hugetlb=1:glibc.malloc.arena_max=1", prev ? prev : "", prev ? ":" : "");
        /* The child must not see systemd's variables: they are the
         * supervisor's (NotifyAccess=main), and LISTEN_FDS was consumed. */
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(sv[0]);
                close(sv[1]);
                return errmsg_set(err, r, "fork: %s", strerror(-r));
        }
        if (pid == 0) {
                unsetenv("NOTIFY_SOCKET");
                unsetenv("WATCHDOG_USEC");
                unsetenv("WATCHDOG_PID");
                unsetenv("LISTEN_FDS");
                unsetenv("LISTEN_PID");
                unsetenv("LISTEN_FDNAMES");
                setenv("GLIBC_TUNABLES", tunables, 1);
                close(sv[0]);
                child_exec(path, s->root, sv[1]);
        }
        close(sv[1]);
        int pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) {
                int r = -errno;
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                close(sv[0]);
                return errmsg_set(err, r, "pidfd_open: %s", strerror(-r));
        }
        Worker *w = calloc(1, sizeof(*w));
        if (!w) {
                syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
                waitpid(pid, NULL, 0);
                close(pidfd);
                close(sv[0]);
                return errmsg_set(err, -ENOMEM, "out of memory");
        }
        w->pid = pid;
        w->pidfd = pidfd;
        w->sock = sv[0];
        w->inflight_fd = -1;
        w->generation = generation;
        w->state = WORKER_SPAWNED;
        w->spawned_ms = now_ms();
        int r = worker_setup(s, w);
        if (r < 0) {
                /* Kill and reap before the pidfd goes: nothing was sent. */
                syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
                waitpid(pid, NULL, 0);
                worker_free(w);
                return errmsg_set(err, r, "worker setup: %s", strerror(-r));
        }
        uv_timer_start(&w->timer, on_timer, WORKER_READY_TIMEOUT_MS, 0);
        log_info("worker %d (generation %" PRIu64 ", %s) started", (int) pid, generation, path);
        *ret = w;
        return 0;
}

int worker_adopt(Supervisor *s, pid_t pid, int take_pidfd, int take_sock, int take_inflight_fd,
                 uint64_t generation, uint64_t serving_ms, Worker **ret) {
        Worker *w = calloc(1, sizeof(*w));
        if (!w) {
                close(take_pidfd);
                close(take_sock);
                if (take_inflight_fd >= 0)
                        close(take_inflight_fd);
                return -ENOMEM;
        }
        w->pid = pid;
        w->pidfd = take_pidfd;
        w->sock = take_sock;
        w->inflight_fd = take_inflight_fd;
        w->generation = generation;
        w->state = WORKER_SERVING;
        w->spawned_ms = serving_ms;
        w->serving_ms = serving_ms;
        int r = worker_setup(s, w);
        if (r < 0) {
                /* Not reaped here: the pidfd stays ours until the caller decides. */
                worker_free(w);
                return r;
        }
        *ret = w;
        return 0;
}

void worker_kill(Worker *w, const char *why) {
        if (w->state == WORKER_EXITED)
                return;
        log_warning("killing worker %d (%s): %s", (int) w->pid, worker_state_to_string(w->state), why);
        if (syscall(SYS_pidfd_send_signal, w->pidfd, SIGKILL, NULL, 0) < 0)
                log_error("pidfd_send_signal(%d): %s", (int) w->pid, strerror(errno));
}

void worker_reap_now(Worker *w, const char *why) {
        worker_kill(w, why);
        if (w->state != WORKER_EXITED) {
                /* the pidfd is non-blocking (uv_poll_init): poll it, bounded */
                struct pollfd p = { .fd = w->pidfd, .events = POLLIN };
                siginfo_t si = {};
                if (poll(&p, 1, 10000) != 1 || waitid((idtype_t) P_PIDFD, (id_t) w->pidfd, &si, WEXITED | WNOHANG) < 0)
                        log_error("worker %d did not exit after SIGKILL: %s", (int) w->pid, strerror(errno));
        }
        w->state = WORKER_EXITED;
        if (w->open_handles) {
                uv_poll_stop(&w->pid_poll);
                uv_poll_stop(&w->sock_poll);
                uv_timer_stop(&w->timer);
        }
}

static void worker_garbage(Worker *w, const char *what) {
        w->misbehaved = true;
        if (w->sock_polling) {
                uv_poll_stop(&w->sock_poll);
                w->sock_polling = false;
        }
        worker_kill(w, what);
}

static int send_env(Worker *w, holdfast_Envelope *e, int fd) {
        int r = msg_send(w->sock, e, fd);
        if (r < 0) {
                log_error_errno(r, "send to worker %d", (int) w->pid);
                worker_kill(w, "cannot send to it");
        }
        return r;
}

static void mount_record(Mount *m, holdfast_Envelope *e) {
        *e = (holdfast_Envelope) holdfast_Envelope_init_zero;
        e->which_msg = holdfast_Envelope_mount_tag;
        holdfast_MountRecord *mr = &e->msg.mount;
        mr->id = m->id;
        snprintf(mr->mountpoint, sizeof(mr->mountpoint), "%s", m->mountpoint);
        snprintf(mr->source, sizeof(mr->source), "%s", m->source);
        mr->initialized = m->initialized;
        memcpy(mr->init.bytes, m->init, m->init_size);
        mr->init.size = (pb_size_t) m->init_size;
}

int worker_load(Worker *w) {
        Supervisor *s = w->sup;
        assert(w->state == WORKER_READY);
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_worker_start_tag;
        e.msg.worker_start.generation = w->generation;
        snprintf(e.msg.worker_start.root, sizeof(e.msg.worker_start.root), "%s", s->root);
        e.msg.worker_start.n_mounts = (uint32_t) s->mounts.count;
        int r = send_env(w, &e, -1);
        if (r < 0)
                return r;
        for (Mount *m = s->mounts.head; m; m = m->next) {
                mount_record(m, &e);
                r = send_env(w, &e, m->fd);
                if (r < 0)
                        return r;
        }
        w->state = WORKER_HOLDING;
        uv_timer_start(&w->timer, on_timer, WORKER_WARM_TIMEOUT_MS, 0);
        return 0;
}

int worker_go(Worker *w) {
        Supervisor *s = w->sup;
        assert(w->state == WORKER_HOLDING);
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_worker_go_tag;
        uv_timer_stop(&w->timer);
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->sent_gen != 0 || m->initialized)
                        e.msg.worker_go.takeover = true;
        e.msg.worker_go.drained = e.msg.worker_go.takeover && s->last_drained;
        /* the previous worker's in-flight table: which connections to
         * resend first */
        _cleanup_close_ int table = TAKE_FD(s->prev_inflight_fd);
        int r = send_env(w, &e, e.msg.worker_go.takeover ? table : -1);
        if (r < 0)
                return r;
        /* Serving means: every connection that was served before is
         * again. A new one (no INIT answered yet) reports after its INIT,
         * which may wait for its layer to be indexed. */
        w->pending = 0;
        for (Mount *m = s->mounts.head; m; m = m->next) {
                m->sent_gen = w->generation;
                m->in_batch = m->initialized;
                m->served = false;
                w->pending += m->initialized;
        }
        w->state = WORKER_STARTING;
        if (w->pending == 0) {
                w->state = WORKER_SERVING;
                w->serving_ms = now_ms();
                supervisor_on_worker_serving(s, w);
        }
        return 0;
}

int worker_send_mount(Worker *w, Mount *m) {
        holdfast_Envelope e;
        mount_record(m, &e);
        int r = send_env(w, &e, m->fd);
        if (r < 0 || w->state == WORKER_HOLDING)
                return r;
        m->sent_gen = w->generation;
        m->in_batch = false;
        m->served = false;
        return 0;
}

int worker_send_unmount(Worker *w, uint64_t id) {
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_unmount_tag;
        e.msg.unmount.id = id;
        return send_env(w, &e, -1);
}

int worker_drain(Worker *w, uint64_t timeout_ms) {
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_drain_tag;
        w->asked_to_exit = true;
        w->state = WORKER_DRAINING;
        uv_timer_start(&w->timer, on_timer, timeout_ms, 0);
        return send_env(w, &e, -1);
}

static void on_timer(uv_timer_t *t) {
        Worker *w = t->data;
        if (w->sock_closed && w->state != WORKER_DRAINING)
                worker_garbage(w, "closed its socket but did not exit");
        else if (w->state == WORKER_SPAWNED)
                worker_garbage(w, "no WorkerReady within 10 s");
        else if (w->state == WORKER_HOLDING && !w->warm) {
                log_warning("worker %d: no Warm within %d s; going on without", (int) w->pid,
                            WORKER_WARM_TIMEOUT_MS / 1000);
                w->warm = true;
                supervisor_on_worker_warm(w->sup, w);
        }
        else if (w->state == WORKER_DRAINING)
                worker_kill(w, "did not exit after Drain");
}

static void handle_mount_status(Worker *w, const holdfast_MountStatus *st) {
        Supervisor *s = w->sup;
        if (w->state != WORKER_STARTING && w->state != WORKER_SERVING && w->state != WORKER_DRAINING)
                return worker_garbage(w, "MountStatus before WorkerGo");
        if (st->error > 0 || st->error < -4095)
                return worker_garbage(w, "MountStatus with an error out of range");
        Mount *m = mount_table_find(&s->mounts, st->id);
        if (!m) {
                /* Unmounted meanwhile (ids are never reused): a race, not garbage. */
                if (st->id == 0 || st->id >= s->mounts.next_id)
                        worker_garbage(w, "MountStatus for an unknown mount");
                return;
        }
        if (m->sent_gen != w->generation)
                return worker_garbage(w, "MountStatus for a mount it was not given");
        bool batch = m->in_batch;
        m->in_batch = false;
        supervisor_on_mount_status(s, w, m, st); /* may remove m */
        if (batch && w->pending > 0)
                w->pending--;
        if (w->state == WORKER_STARTING && w->pending == 0) {
                w->state = WORKER_SERVING;
                w->serving_ms = now_ms();
                supervisor_on_worker_serving(s, w);
        }
}

/* Serving: every mount of the start batch not refused by a MountStatus
 * is served again. */
static void handle_serving(Worker *w) {
        Supervisor *s = w->sup;
        if (w->state != WORKER_STARTING && w->state != WORKER_SERVING && w->state != WORKER_DRAINING)
                return worker_garbage(w, "Serving before WorkerGo");
        if (w->state != WORKER_STARTING)
                return; /* every adopted mount was refused: SERVING already */
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->in_batch) {
                        m->in_batch = false;
                        m->served = true;
                }
        w->pending = 0;
        w->state = WORKER_SERVING;
        w->serving_ms = now_ms();
        supervisor_on_worker_serving(s, w);
}

static bool fd_is_memfd(int fd) {
        char path[64], target[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = 0;
        return strncmp(target, "/memfd:", 7) == 0;
}

static void on_sock(uv_poll_t *h, int status, int events) {
        Worker *w = h->data;
        (void) events;
        holdfast_Envelope e;
        int fd = -EBADF;
        int r = status < 0 ? status : msg_recv(w->sock, &e, &fd);
        if (r == -EAGAIN || r == -EINTR)
                return;
        if (r <= 0) {
                /* EOF or a broken socket: stop listening; the pidfd tells
                 * when it is gone. A worker that hangs up but lives on is
                 * no use. */
                uv_poll_stop(&w->sock_poll);
                w->sock_polling = false;
                if (r < 0 && r != -ECONNRESET)
                        worker_garbage(w, r == -EBADMSG || r == -EPROTO || r == -EMSGSIZE
                                                  ? "undecodable message"
                                                  : "socket error");
                else if (w->state != WORKER_DRAINING) {
                        /* Usually it died and the pidfd says so next; a
                         * worker that hangs up and lives on is no use. */
                        w->sock_closed = true;
                        uv_timer_start(&w->timer, on_timer, 1000, 0);
                }
                return;
        }
        if (fd >= 0 && e.which_msg != holdfast_Envelope_worker_ready_tag) {
                close(fd);
                return worker_garbage(w, "sent a file descriptor");
        }
        switch (e.which_msg) {
        case holdfast_Envelope_worker_ready_tag:
                if (w->state != WORKER_SPAWNED || e.msg.worker_ready.pid != (uint32_t) w->pid) {
                        if (fd >= 0)
                                close(fd);
                        return worker_garbage(w, "WorkerReady out of order or with a wrong pid");
                }
                /* Its in-flight table, kept for its successor. Only a
                 * memfd is taken: nothing the worker sends may make us
                 * block or touch the file system. */
                if (fd >= 0 && !fd_is_memfd(fd)) {
                        close(fd);
                        return worker_garbage(w, "WorkerReady with an fd that is not a memfd");
                }
                w->inflight_fd = fd;
                uv_timer_stop(&w->timer);
                w->state = WORKER_READY;
                supervisor_on_worker_ready(w->sup, w);
                return;
        case holdfast_Envelope_mount_status_tag:
                return handle_mount_status(w, &e.msg.mount_status);
        case holdfast_Envelope_warm_tag:
                if (w->state == WORKER_SPAWNED || w->state == WORKER_READY)
                        return worker_garbage(w, "Warm before WorkerStart");
                if (w->state != WORKER_HOLDING || w->warm)
                        return; /* late: WorkerGo overtook it */
                uv_timer_stop(&w->timer);
                w->warm = true;
                log_info("worker %d holds %zu mounts, %" PRIu32 " layers opened ahead", (int) w->pid,
                         w->sup->mounts.count, e.msg.warm.layers);
                supervisor_on_worker_warm(w->sup, w);
                return;
        case holdfast_Envelope_serving_tag:
                return handle_serving(w);
        case holdfast_Envelope_drained_tag:
                if (w->state != WORKER_DRAINING)
                        return worker_garbage(w, "Drained without Drain");
                w->drained = true;
                return;
        default:
                return worker_garbage(w, "unexpected message");
        }
}

static void on_pidfd(uv_poll_t *h, int status, int events) {
        Worker *w = h->data;
        (void) status;
        (void) events;
        siginfo_t si = {};
        if (waitid((idtype_t) P_PIDFD, (id_t) w->pidfd, &si, WEXITED | WNOHANG) < 0) {
                if (errno != ECHILD) {
                        log_error("waitid(worker %d): %s", (int) w->pid, strerror(errno));
                        return;
                }
        } else if (si.si_pid == 0)
                return; /* spurious */
        if (si.si_code == CLD_EXITED)
                snprintf(w->exit_text, sizeof(w->exit_text), "exited with status %d", si.si_status);
        else
                snprintf(w->exit_text, sizeof(w->exit_text), "killed by signal %d (%s)", si.si_status,
                         sigabbrev_np(si.si_status) ?: "?");
        w->state = WORKER_EXITED;
        uv_poll_stop(&w->pid_poll);
        uv_poll_stop(&w->sock_poll);
        uv_timer_stop(&w->timer);
        log_info("worker %d (generation %" PRIu64 ") %s", (int) w->pid, w->generation, w->exit_text);
        supervisor_on_worker_exit(w->sup, w);
}
