/* systemd hooks (supervisor.h). Owns the watchdog timer. The fdstore holds
 * duplicates of our fds (systemd keeps its own references), so storing
 * never transfers ownership; FDSTOREREMOVE drops systemd's copy. Without
 * NOTIFY_SOCKET every sd_notify*() is a no-op. Runs on the supervisor's
 * loop. */
#include "supervisor/supervisor.h"

#include <systemd/sd-daemon.h>

#define STATE_FDNAME "holdfast-state"
#define MOUNT_FDNAME "holdfast-mount-"
#define SNAP_FDNAME "holdfast-snapshotter"

static void on_watchdog(_unused_ uv_timer_t *t) {
        sd_notify(0, "WATCHDOG=1");
}

void sd_setup(Supervisor *s) {
        s->under_systemd = getenv("NOTIFY_SOCKET") != NULL;
        uv_timer_init(s->loop, &s->watchdog_timer);
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                uint64_t ms = MAX(usec / 2000, (uint64_t) 1);
                uv_timer_start(&s->watchdog_timer, on_watchdog, ms, ms);
        }
}

void sd_ready(Supervisor *s) {
        sd_notifyf(0, "READY=1\nMAINPID=%d", (int) getpid());
        sd_status(s);
}

void sd_status(Supervisor *s) {
        if (s->gave_up)
                sd_notifyf(0, "STATUS=worker crash loop: respawning given up, %zu mounts not served", s->mounts.count);
        else
                sd_notifyf(0, "STATUS=%zu mounts, worker %d (generation %" PRIu64 "), %" PRIu64 " restarts",
                           s->mounts.count, s->current ? (int) s->current->pid : 0, s->generation, s->restarts);
}

void sd_store_mount(const Mount *m) {
        char msg[96];
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=" MOUNT_FDNAME "%" PRIu64, m->id);
        int r = sd_pid_notify_with_fds(0, 0, msg, &m->fd, 1);
        if (r < 0)
                log_error_errno(r, "cannot store mount %" PRIu64 " in the fdstore", m->id);
}

void sd_forget_mount(uint64_t id) {
        sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=" MOUNT_FDNAME "%" PRIu64, id);
}

void sd_store_snapshotter(Supervisor *s) {
        if (s->snap_fd < 0)
                return;
        int r = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=" SNAP_FDNAME, &s->snap_fd, 1);
        if (r < 0)
                log_error_errno(r, "cannot store the snapshotter socket in the fdstore");
}

void sd_store_state(Supervisor *s) {
        if (!s->under_systemd)
                return; /* not worth a state_save() */
        _cleanup_close_ int fd = -EBADF;
        int r = state_save(s, NULL, &fd);
        if (r >= 0) {
                sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=" STATE_FDNAME);
                r = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=" STATE_FDNAME, &fd, 1);
        }
        if (r < 0)
                log_error_errno(r, "cannot store the records in the fdstore");
}

int sd_restore(Supervisor *s, ErrMsg *err) {
        char **names = NULL;
        int n = sd_listen_fds_with_names(1, &names);
        if (n <= 0)
                return n < 0 ? errmsg_set(err, n, "LISTEN_FDS: %s", strerror(-n)) : 0;
        /* names[] has n entries ("unknown" when systemd does not know). */
        int state_fd = -EBADF, r = 0;
        for (int i = 0; i < n && state_fd < 0; i++)
                if (strcmp(names[i], STATE_FDNAME) == 0)
                        state_fd = SD_LISTEN_FDS_START + i;
        /* Its records name no worker and no fd: the cgroup was emptied
         * before systemd restarted us, and the fds come by name. */
        holdfast_SupervisorState st;
        if (state_fd >= 0)
                r = state_load(s, state_fd, &st, err);
        s->gave_up = false; /* a fresh start, whatever the old image's worker was */
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                uint64_t id = 0;
                Mount *m = NULL;
                if (sscanf(names[i], MOUNT_FDNAME "%" SCNu64, &id) == 1)
                        m = mount_table_find(&s->mounts, id);
                if (m && m->fd < 0)
                        m->fd = TAKE_FD(fd);
                else if (strcmp(names[i], SNAP_FDNAME) == 0 && s->snap_fd < 0)
                        s->snap_fd = TAKE_FD(fd);
                else if (fd != state_fd) {
                        log_warning("fdstore entry %s has no record; dropping it", names[i]);
                        sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=%s", names[i]);
                }
                closep(&fd);
                free(names[i]);
        }
        free(names);
        state_drop_fdless(s, "has no fd in the fdstore");
        sd_store_state(s);
        return r < 0 ? r : (int) s->mounts.count;
}
