/* The supervisor's state across an execve (holdfastctl upgrade
 * --supervisor) and in systemd's fdstore: its format, and the re-exec
 * after the cvmfs loader's sequence: stop at a quiet point, save state,
 * load the new image, restore state, resume. Across execve the process
 * keeps its pid, its children and every fd without FD_CLOEXEC: the mounts'
 * /dev/fuse fds, the control socket, the worker's socket and pidfd, the
 * connection of the holdfastctl that asked (answered by the new image) and
 * the memfd with the records. The running worker is adopted, not
 * replaced: it never notices. Runs on the supervisor's loop.
 *
 * The format: a magic, a version (both ends are this host: host order),
 * then nanopb messages (SupervisorState in proto/holdfast.proto). The
 * reader trusts nothing: every length is bounded, every fd number is
 * checked before use. */
#include "supervisor/supervisor.h"

#include <pb_decode.h>
#include <pb_encode.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define STATE_MAGIC "holdfast-state\n"
#define STATE_MAGIC_LEN (sizeof(STATE_MAGIC) - 1)
/* 3: nanopb messages (2, fixed-size fields, is no longer read). */
#define STATE_VERSION 3

static bool write_file(pb_ostream_t *os, const pb_byte_t *buf, size_t n) {
        return fwrite(buf, 1, n, os->state) == n;
}

static int encode(Supervisor *s, const CtlConn *c, FILE *f) {
        Worker *w = c ? s->current : NULL;
        holdfast_SupervisorState st = {
                .generation = s->generation, .restarts = s->restarts, .start_ms = s->start_ms,
                .next_mount_id = s->mounts.next_id, .last_stall_us = s->last_stall_us, .gave_up = s->gave_up,
                .listen_fd = c ? s->ctl.fd : -1, .reply_fd = c ? c->fd : -1,
                .worker_pidfd = w ? w->pidfd : -1, .worker_sock = w ? w->sock : -1,
                .worker_inflight_fd = w ? w->inflight_fd : -1, .worker_pid = w ? w->pid : 0,
                .worker_generation = w ? w->generation : 0, .worker_serving_ms = w ? w->serving_ms : 0,
                .n_mounts = (uint32_t) s->mounts.count,
                .snapshotter_fd = c ? s->snap_fd : -1, .has_snapshotter = true,
        };
        uint32_t version = STATE_VERSION;
        pb_ostream_t os = { .callback = write_file, .state = f, .max_size = SIZE_MAX };
        if (fwrite(STATE_MAGIC, STATE_MAGIC_LEN, 1, f) != 1 || fwrite(&version, sizeof(version), 1, f) != 1 ||
            !pb_encode_delimited(&os, holdfast_SupervisorState_fields, &st))
                return -ENOMEM;
        holdfast_SavedMount sm = { .has_record = true };
        for (Mount *m = s->mounts.head; m; m = m->next) {
                sm.fd = c ? m->fd : -1;
                mount_to_record(m, &sm.record);
                if (!pb_encode_delimited(&os, holdfast_SavedMount_fields, &sm))
                        return -ENOMEM;
        }
        return 0;
}

int state_save(Supervisor *s, const CtlConn *reexec_conn, int *ret_memfd) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        int r = encode(s, reexec_conn, f);
        if (fclose(f) != 0 && r == 0)
                r = -ENOMEM;
        if (r < 0)
                return r;
        _cleanup_close_ int fd = memfd_create("holdfast-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        /* A write to tmpfs is whole unless it fails (ENOSPC). */
        ssize_t n = write(fd, buf, size);
        if (n != (ssize_t) size)
                return n < 0 ? -errno : -EIO;
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return -errno;
        *ret_memfd = TAKE_FD(fd);
        return 0;
}

#define READ(is, v) pb_read(is, (pb_byte_t *) &(v), sizeof(v))

static int decode(Supervisor *s, pb_istream_t *is, holdfast_SupervisorState *st, ErrMsg *err) {
        char magic[STATE_MAGIC_LEN];
        uint32_t version = 0;
        if (!READ(is, magic) || memcmp(magic, STATE_MAGIC, STATE_MAGIC_LEN) != 0 || !READ(is, version))
                return errmsg_set(err, -EBADMSG, "not a holdfast state file");
        if (version != STATE_VERSION)
                return errmsg_set(err, -EPROTO, "state version %u, this binary reads %u", version, STATE_VERSION);
        *st = (holdfast_SupervisorState) holdfast_SupervisorState_init_zero;
        if (!pb_decode_delimited(is, holdfast_SupervisorState_fields, st))
                return errmsg_set(err, -EBADMSG, "state file truncated");
        s->generation = st->generation;
        s->restarts = st->restarts;
        s->start_ms = st->start_ms;
        s->mounts.next_id = st->next_mount_id;
        s->last_stall_us = st->last_stall_us;
        s->gave_up = st->gave_up;
        holdfast_SavedMount sm;
        for (uint32_t i = 0; i < st->n_mounts; i++) {
                const holdfast_MountRecord *mr = &sm.record;
                bool ok = pb_decode_delimited(is, holdfast_SavedMount_fields, &sm);
                if (!ok || mr->id == 0 || mr->id >= s->mounts.next_id || mr->mountpoint[0] != '/')
                        return errmsg_set(err, -EBADMSG, "state file: bad mount record %u", i);
                Mount *m;
                /* The table takes the fd; -1 when it comes from elsewhere. */
                int r = mount_table_add(&s->mounts, mr->id, mr->mountpoint, mr->source, sm.fd, &m);
                if (r < 0)
                        return errmsg_set(err, r, "state file: mount %u: %s", i, strerror(-r));
                m->initialized = mr->initialized;
                m->init = mr->init;
                m->sent_gen = st->worker_generation;
                m->served = st->worker_pidfd >= 0;
        }
        return 0;
}

int state_load(Supervisor *s, int fd, holdfast_SupervisorState *ret, ErrMsg *err) {
        struct stat sb;
        if (fstat(fd, &sb) < 0)
                return errmsg_set(err, -errno, "state fd: %s", strerror(errno));
        if (sb.st_size <= 0 || sb.st_size > 512 * 1024 * 1024)
                return errmsg_set(err, -EBADMSG, "state fd has a bad size");
        void *map = mmap(NULL, (size_t) sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
                return errmsg_set(err, -errno, "mmap state: %s", strerror(errno));
        pb_istream_t is = pb_istream_from_buffer(map, (size_t) sb.st_size);
        int r = decode(s, &is, ret, err);
        munmap(map, (size_t) sb.st_size);
        return r;
}

void state_drop_fdless(Supervisor *s, const char *why) {
        for (Mount *m = s->mounts.head, *next; m; m = next) {
                next = m->next;
                if (m->fd < 0) {
                        log_error("mount %s %s; dropping its record", m->mountpoint, why);
                        mount_table_remove(&s->mounts, m);
                }
        }
}

/* The fds state_save() recorded for a re-exec, and the memfd. FD_CLOEXEC
 * is the only fd flag. */
static void set_cloexec_all(Supervisor *s, const CtlConn *c, int memfd, bool on) {
        Worker *w = s->current;
        int fds[] = { s->ctl.fd, c->fd, w ? w->pidfd : -1, w ? w->sock : -1, w ? w->inflight_fd : -1, memfd,
                      s->snap_fd };
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] >= 0)
                        fcntl(fds[i], F_SETFD, on ? FD_CLOEXEC : 0);
        for (Mount *m = s->mounts.head; m; m = m->next)
                fcntl(m->fd, F_SETFD, on ? FD_CLOEXEC : 0);
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
        int memfd;
        int r = state_save(s, c, &memfd);
        if (r < 0)
                return errmsg_set(err, r, "cannot save the state: %s", strerror(-r));
        /* The standby is not carried across: the new image starts one. */
        if (s->standby) {
                worker_reap_now(s->standby, "the supervisor re-executes");
                worker_free(TAKE_PTR(s->standby));
                free(TAKE_PTR(s->standby_path));
        }
        char fdarg[16], limit[48], delay[24];
        snprintf(fdarg, sizeof(fdarg), "%d", memfd);
        snprintf(limit, sizeof(limit), "%u/%" PRIu64, s->restart_burst, s->restart_interval_ms / 1000);
        snprintf(delay, sizeof(delay), "%" PRIu64, s->delay_max_ms);
        char *const argv[] = {
                s->self_path, "--root", s->root, "--worker", s->worker_path, "--restart-limit", limit,
                "--restart-delay-max", delay, "--restore-fd", fdarg, s->want_standby ? NULL : "--no-standby", NULL,
        };
        log_info("re-executing %s with %zu mounts%s", s->self_path, s->mounts.count, w ? ", keeping the worker" : "");
        set_cloexec_all(s, c, memfd, false);
        fflush(stdout);
        fflush(stderr);
        execv(s->self_path, argv);
        r = -errno;
        set_cloexec_all(s, c, memfd, true);
        close(memfd);
        supervisor_want_standby(s);
        return errmsg_set(err, r, "execv %s: %s", s->self_path, strerror(-r));
}

int supervisor_restore(Supervisor *s, int state_fd, ErrMsg *err) {
        holdfast_SupervisorState st;
        int r = state_load(s, state_fd, &st, err);
        close(state_fd);
        if (r < 0)
                return r;
        /* Everything we were handed is ours again; none of it may leak
         * into a worker. A record whose fd did not survive is useless. */
        for (Mount *m = s->mounts.head; m; m = m->next)
                if (m->fd >= 0 && fcntl(m->fd, F_SETFD, FD_CLOEXEC) < 0)
                        m->fd = -EBADF;
        state_drop_fdless(s, "lost its fd across exec");
        if (!st.has_snapshotter)
                st.snapshotter_fd = -1;
        int fds[] = { st.listen_fd, st.reply_fd, st.worker_pidfd, st.worker_sock, st.worker_inflight_fd,
                      st.snapshotter_fd };
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] >= 0 && fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0)
                        return errmsg_set(err, -EBADF, "fd %d did not survive the exec", fds[i]);
        s->snap_fd = st.snapshotter_fd;
        r = ctl_server_start(&s->ctl, s, NULL, st.listen_fd);
        if (r < 0)
                return errmsg_set(err, r, "control socket: %s", strerror(-r));
        if (st.worker_pidfd >= 0) {
                r = worker_adopt(s, &st, &s->current);
                if (r < 0)
                        return errmsg_set(err, r, "cannot adopt worker %d: %s", (int) st.worker_pid, strerror(-r));
                supervisor_want_standby(s);
        }
        log_info("re-executed: %zu mounts, worker %d (generation %" PRIu64 ")", s->mounts.count,
                 s->current ? (int) s->current->pid : 0, s->generation);
        CtlConn *c;
        if (st.reply_fd >= 0 && ctl_server_adopt_conn(&s->ctl, st.reply_fd, &c) >= 0) {
                holdfast_CtlReply reply = { .worker_pid = s->current ? (uint32_t) s->current->pid : 0,
                                            .generation = s->generation, .supervisor_pid = (uint32_t) getpid(),
                                            .mounts = (uint32_t) s->mounts.count };
                snprintf(reply.message, sizeof(reply.message), "supervisor re-executed; %zu mounts kept",
                         s->mounts.count);
                ctl_conn_reply(c, &reply);
        }
        return 0;
}
