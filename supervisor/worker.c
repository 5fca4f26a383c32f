/* holdfast-worker processes (worker.h). Owns each worker's pidfd, our end
 * of its socketpair and the uv handles on them; the Worker is freed in the
 * last uv_close callback. Runs on the supervisor's loop.
 *
 * Invariants: a worker's fds go to it only between WorkerReady and its
 * exit; a worker is never given a connection while another process might
 * still read it (supervisor.c sends the start sequence only after the
 * previous worker's pidfd reported its exit: every thread of it is gone,
 * only a zombie is left, reaped at the next spawn). Our end of
 * the socket is blocking with a send deadline: a worker that stops reading
 * is killed rather than stalling the loop. */
#include "supervisor/worker.h"

#include <assert.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "common/ipc/msg.h"
#include "supervisor/supervisor.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define WORKER_READY_TIMEOUT_MS 10000
#define WORKER_SEND_TIMEOUT_S 5
/* An upgrade waits this long at most for the new worker's Warm. */
#define WORKER_WARM_TIMEOUT_MS 10000
#define WORKER_DRAIN_TIMEOUT_MS 5000

const char *worker_state_to_string(WorkerState st) {
        static const char *const names[] = {
                [WORKER_SPAWNED] = "spawned",   [WORKER_READY] = "ready",     [WORKER_HOLDING] = "holding",
                [WORKER_STARTING] = "starting", [WORKER_SERVING] = "serving", [WORKER_DRAINING] = "draining",
                [WORKER_EXITED] = "exited",
        };
        return st < ELEMENTSOF(names) ? names[st] : "?";
}

static void on_sock(uv_poll_t *h, int status, int events);
static void on_pidfd(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *t);

/* Exited workers are reaped after the next fork: never while readers
 * wait for a takeover (on_pidfd says why), and with a standby at least
 * 300 ms after one (its replacement's spawn). */
void worker_reap_exited(Supervisor *s, const Worker *also) {
        for (int i = 0; i < 64; i++) {
                siginfo_t si = {};
                if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0 ||
                    (also && si.si_pid == also->pid) || (s->current && si.si_pid == s->current->pid) ||
                    (s->standby && si.si_pid == s->standby->pid))
                        return;
                (void) waitpid(si.si_pid, NULL, WNOHANG);
        }
}

static void worker_destroy(Worker *w) {
        closep(&w->pidfd);
        closep(&w->sock);
        closep(&w->inflight_fd);
        free(w);
}

static void on_handle_closed(uv_handle_t *h) {
        Worker *w = h->data;
        if (--w->open_handles == 0)
                worker_destroy(w);
}

/* On failure, worker_free() closes the handles set up so far. */
static int worker_setup(Supervisor *s, Worker *w) {
        w->sup = s;
        w->timer.data = w->pid_poll.data = w->sock_poll.data = w;
        uv_timer_init(s->loop, &w->timer);
        w->open_handles = 1;
        int r = uv_poll_init(s->loop, &w->pid_poll, w->pidfd);
        if (r < 0)
                return r;
        w->open_handles++;
        r = uv_poll_init_blocking(s->loop, &w->sock_poll, w->sock, WORKER_SEND_TIMEOUT_S);
        if (r < 0)
                return r;
        w->open_handles++;
        r = uv_poll_start(&w->pid_poll, UV_READABLE, on_pidfd);
        if (r < 0)
                return r;
        return uv_poll_start(&w->sock_poll, UV_READABLE, on_sock);
}

void worker_free(Worker *w) {
        if (!w)
                return;
        if (w->open_handles == 0)
                return worker_destroy(w);
        uv_handle_t *handles[] = { (uv_handle_t *) &w->timer, (uv_handle_t *) &w->pid_poll,
                                   (uv_handle_t *) &w->sock_poll };
        for (unsigned i = 0, n = w->open_handles; i < n; i++)
                uv_close(handles[i], on_handle_closed);
}

/* In the child of our single-threaded process, so no lock is held and
 * setenv() is safe; then execv (our other fds are O_CLOEXEC). The child
 * must not see systemd's variables: they are the supervisor's
 * (NotifyAccess=main), and LISTEN_FDS was consumed. */
static _Noreturn void child_exec(const char *path, const char *root, int sock, const char *tunables) {
        static const char *const sd_vars[] = { "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                               "LISTEN_FDS",    "LISTEN_PID",    "LISTEN_FDNAMES" };
        for (size_t i = 0; i < ELEMENTSOF(sd_vars); i++)
                unsetenv(sd_vars[i]);
        setenv("GLIBC_TUNABLES", tunables, 1);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (sock == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(sock, 3) < 0)
                _exit(127);
        int null = open("/dev/null", O_RDONLY);
        if (null > 0) {
                dup2(null, 0);
                close(null);
        }
        char *const argv[] = { (char *) path, "--root", (char *) root, "--supervisor-fd", "3", NULL };
        execv(path, argv);
        _exit(127);
}

static void worker_freep(Worker **w) {
        worker_free(*w);
}

int worker_spawn(Supervisor *s, const char *path, uint64_t generation, Worker **ret, ErrMsg *err) {
        if (access(path, X_OK) < 0)
                return errmsg_set(err, -errno, "worker %s: %s", path, strerror(errno));
        _cleanup_(worker_freep) Worker *w = calloc(1, sizeof(*w));
        if (!w)
                return errmsg_set(err, -ENOMEM, "out of memory");
        *w = (Worker) { .pidfd = -EBADF, .sock = -EBADF, .inflight_fd = -EBADF, .generation = generation,
                        .state = WORKER_SPAWNED };
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
                return errmsg_set(err, -errno, "socketpair: %s", strerror(errno));
        w->sock = sv[0];
        _cleanup_close_ int child_sock = sv[1];
        /* The worker's heap on transparent huge pages: a killed worker's
         * memory is freed before its pidfd reports the exit, and with 4 KiB
         * pages that costs about 0.1 ms per MB here (16 ms for 200 MB, 2 ms
         * with huge pages), all of it a stall for the readers. */
        char tunables[512];
        const char *prev = getenv("GLIBC_TUNABLES");
        snprintf(tunables, sizeof(tunables), "%s%sglibc.malloc.hugetlb=1:glibc.malloc.arena_max=1", prev ?: "",
                 prev ? ":" : "");
        w->pid = fork();
        if (w->pid < 0)
                return errmsg_set(err, -errno, "fork: %s", strerror(errno));
        if (w->pid == 0)
                child_exec(path, s->root, child_sock, tunables);
        w->pidfd = (int) syscall(SYS_pidfd_open, w->pid, 0);
        int r = w->pidfd < 0 ? -errno : worker_setup(s, w);
        if (r < 0) {
                /* Nothing was sent: kill and reap it (its pid cannot be
                 * reused before that). */
                kill(w->pid, SIGKILL);
                waitpid(w->pid, NULL, 0);
                return errmsg_set(err, r, "worker setup: %s", strerror(-r));
        }
        uv_timer_start(&w->timer, on_timer, WORKER_READY_TIMEOUT_MS, 0);
        log_info("worker %d (generation %" PRIu64 ", %s) started", (int) w->pid, generation, path);
        worker_reap_exited(s, w);
        *ret = TAKE_PTR(w);
        return 0;
}

int worker_adopt(Supervisor *s, const holdfast_SupervisorState *st, Worker **ret) {
        _cleanup_close_ int pidfd = st->worker_pidfd, sock = st->worker_sock, inflight = st->worker_inflight_fd;
        _cleanup_(worker_freep) Worker *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (Worker) { .pid = st->worker_pid, .pidfd = TAKE_FD(pidfd), .sock = TAKE_FD(sock),
                        .inflight_fd = TAKE_FD(inflight), .generation = st->worker_generation,
                        .state = WORKER_SERVING, .serving_ms = st->worker_serving_ms };
        int r = worker_setup(s, w);
        if (r < 0)
                return r;
        worker_reap_exited(s, w); /* what the image before our execve left */
        *ret = TAKE_PTR(w);
        return 0;
}

void worker_kill(Worker *w, const char *why) {
        if (w->state == WORKER_EXITED)
                return;
        log_warning("killing worker %d (%s): %s", (int) w->pid, worker_state_to_string(w->state), why);
        if (syscall(SYS_pidfd_send_signal, w->pidfd, SIGKILL, NULL, 0) < 0)
                log_error("pidfd_send_signal(%d): %s", (int) w->pid, strerror(errno));
}

static void worker_exited(Worker *w) {
        w->state = WORKER_EXITED;
        uv_poll_stop(&w->pid_poll);
        uv_poll_stop(&w->sock_poll);
        uv_timer_stop(&w->timer);
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
        worker_exited(w);
}

static void worker_garbage(Worker *w, const char *what) {
        uv_poll_stop(&w->sock_poll);
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

static int send_record(Worker *w, Mount *m) {
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_mount_tag };
        mount_to_record(m, &e.msg.mount);
        return send_env(w, &e, m->fd);
}

static void worker_serving(Worker *w) {
        w->pending = 0;
        w->state = WORKER_SERVING;
        w->serving_ms = now_ms();
        supervisor_on_worker_serving(w->sup, w);
}

int worker_load(Worker *w) {
        Supervisor *s = w->sup;
        assert(w->state == WORKER_READY);
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_worker_start_tag,
                                .msg.worker_start = { .generation = w->generation, .n_mounts = s->mounts.count } };
        snprintf(e.msg.worker_start.root, sizeof(e.msg.worker_start.root), "%s", s->root);
        e.msg.worker_start.snapshotter = s->snap_fd >= 0;
        int r = send_env(w, &e, s->snap_fd);
        for (Mount *m = s->mounts.head; m && r >= 0; m = m->next)
                r = send_record(w, m);
        if (r < 0)
                return r;
        w->state = WORKER_HOLDING;
        uv_timer_start(&w->timer, on_timer, WORKER_WARM_TIMEOUT_MS, 0);
        return 0;
}

void worker_go(Worker *w) {
        Supervisor *s = w->sup;
        assert(w->state == WORKER_HOLDING);
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_worker_go_tag };
        uv_timer_stop(&w->timer);
        /* readers wait for this message: no walk over every mount before it */
        for (Mount *m = s->mounts.head; m && !e.msg.worker_go.takeover; m = m->next)
                if (m->sent_gen != 0 || m->initialized)
                        e.msg.worker_go.takeover = true;
        e.msg.worker_go.drained = e.msg.worker_go.takeover && s->last_drained;
        /* the previous worker's in-flight table: which connections to
         * resend first */
        _cleanup_close_ int table = TAKE_FD(s->prev_inflight_fd);
        if (send_env(w, &e, e.msg.worker_go.takeover ? table : -1) < 0)
                return;
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
        if (w->pending == 0)
                worker_serving(w);
}

void worker_send_mount(Worker *w, Mount *m) {
        if (send_record(w, m) < 0 || w->state == WORKER_HOLDING)
                return;
        m->sent_gen = w->generation;
        m->in_batch = false;
        m->served = false;
}

void worker_send_unmount(Worker *w, uint64_t id) {
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_unmount_tag, .msg.unmount.id = id };
        send_env(w, &e, -1);
}

void worker_drain(Worker *w) {
        holdfast_Envelope e = { .which_msg = holdfast_Envelope_drain_tag };
        w->asked_to_exit = true;
        w->state = WORKER_DRAINING;
        uv_timer_start(&w->timer, on_timer, WORKER_DRAIN_TIMEOUT_MS, 0);
        send_env(w, &e, -1);
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
        } else if (w->state == WORKER_DRAINING)
                worker_kill(w, "did not exit after Drain");
}

/* MountStatus and Serving come only after WorkerGo. */
static bool worker_went(const Worker *w) {
        return w->state == WORKER_STARTING || w->state == WORKER_SERVING || w->state == WORKER_DRAINING;
}

static void handle_ready(Worker *w, const holdfast_WorkerReady *ready, int fd) {
        if (w->state != WORKER_SPAWNED || ready->pid != (uint32_t) w->pid) {
                closep(&fd);
                return worker_garbage(w, "WorkerReady out of order or with a wrong pid");
        }
        /* Its in-flight table, kept for its successor. Only a memfd (or
         * another shmem file: those alone have seals) is taken: nothing
         * the worker sends may make us block or touch a disk. */
        if (fd >= 0 && fcntl(fd, F_GET_SEALS) < 0) {
                close(fd);
                return worker_garbage(w, "WorkerReady with an fd that is not a memfd");
        }
        w->inflight_fd = fd;
        uv_timer_stop(&w->timer);
        w->state = WORKER_READY;
        supervisor_on_worker_ready(w->sup, w);
}

static void handle_mount_status(Worker *w, const holdfast_MountStatus *st) {
        Supervisor *s = w->sup;
        if (!worker_went(w))
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
        supervisor_on_mount_status(s, m, st); /* may remove m */
        if (batch && w->pending > 0)
                w->pending--;
        if (w->state == WORKER_STARTING && w->pending == 0)
                worker_serving(w);
}

/* Serving: every mount of the start batch not refused by a MountStatus
 * is served again. */
static void handle_serving(Worker *w) {
        if (!worker_went(w))
                return worker_garbage(w, "Serving before WorkerGo");
        if (w->state != WORKER_STARTING)
                return; /* every adopted mount was refused: SERVING already */
        for (Mount *m = w->sup->mounts.head; m; m = m->next)
                if (m->in_batch) {
                        m->in_batch = false;
                        m->served = true;
                }
        worker_serving(w);
}

static void handle_warm(Worker *w, const holdfast_Warm *warm) {
        if (w->state == WORKER_SPAWNED || w->state == WORKER_READY)
                return worker_garbage(w, "Warm before WorkerStart");
        if (w->state != WORKER_HOLDING || w->warm)
                return; /* late: WorkerGo overtook it */
        uv_timer_stop(&w->timer);
        w->warm = true;
        log_info("worker %d holds %zu mounts, %" PRIu32 " layers opened ahead", (int) w->pid,
                 w->sup->mounts.count, warm->layers);
        supervisor_on_worker_warm(w->sup, w);
}

static void on_sock(uv_poll_t *h, int status, _unused_ int events) {
        Worker *w = h->data;
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
                if (r < 0 && r != -ECONNRESET)
                        worker_garbage(w, r == -EBADMSG || r == -EPROTO || r == -EMSGSIZE ? "undecodable message"
                                                                                          : "socket error");
                else if (w->state != WORKER_DRAINING) {
                        /* Usually it died and the pidfd says so next. */
                        w->sock_closed = true;
                        uv_timer_start(&w->timer, on_timer, 1000, 0);
                }
                return;
        }
        if (e.which_msg == holdfast_Envelope_worker_ready_tag)
                return handle_ready(w, &e.msg.worker_ready, fd);
        if (fd >= 0) {
                close(fd);
                return worker_garbage(w, "sent a file descriptor");
        }
        switch (e.which_msg) {
        case holdfast_Envelope_mount_status_tag:
                return handle_mount_status(w, &e.msg.mount_status);
        case holdfast_Envelope_warm_tag:
                return handle_warm(w, &e.msg.warm);
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

/* The pidfd is readable once every thread of the worker has exited: it
 * cannot read a connection any more, and its successor may take over.
 * The status is read with WNOWAIT and the zombie reaped at the next spawn
 * (reap_exited), well after supervisor_on_worker_exit() sent WorkerGo:
 * reaping is not free, the kernel then drops the process's /proc
 * dentries, and when something on the machine has walked /proc/PID/fd
 * (monitoring agents, lsof, ss -p) those are one per open fd. With 1,000
 * layers (2,000 fds) that took 1-3 ms of kernel time here, not preempted:
 * before WorkerGo readers waited for it, and right after it a reader
 * woken on that CPU did. */
static void on_pidfd(uv_poll_t *h, _unused_ int status, _unused_ int events) {
        Worker *w = h->data;
        /* What it sent before it exited comes first (a MountStatus of a
         * mount it served while draining, Drained): the loop may see the
         * pidfd before the socket. Bounded: its socket buffer. */
        for (int i = 0; i < 4096 && uv_is_active((uv_handle_t *) &w->sock_poll); i++) {
                struct pollfd p = { .fd = w->sock, .events = POLLIN };
                if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP)))
                        break;
                on_sock(&w->sock_poll, 0, UV_READABLE);
        }
        siginfo_t si = {};
        if (waitid((idtype_t) P_PIDFD, (id_t) w->pidfd, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
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
        worker_exited(w);
        log_info("worker %d (generation %" PRIu64 ") %s", (int) w->pid, w->generation, w->exit_text);
        supervisor_on_worker_exit(w->sup, w);
}
