/* systemd hooks (sd.h). Owns the watchdog timer. The fdstore holds
 * duplicates of our fds (systemd keeps its own references), so storing
 * never transfers ownership; FDSTOREREMOVE drops systemd's copy. Runs on
 * the supervisor's loop. */
#include "supervisor/supervisor.h"
#include "supervisor/sd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "supervisor/log.h"
#include "supervisor/state.h"

#define STATE_FDNAME "holdfast-state"
#define MOUNT_FDNAME "holdfast-mount-"

static void on_watchdog(uv_timer_t *t) {
        (void) t;
        sd_notify(0, "WATCHDOG=1");
}

void sd_setup(Supervisor *s) {
        s->under_systemd = getenv("NOTIFY_SOCKET") != NULL;
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                s->watchdog_usec = usec;
                uv_timer_init(s->loop, &s->watchdog_timer);
                uint64_t ms = MAX(usec / 2000, (uint64_t) 1);
                uv_timer_start(&s->watchdog_timer, on_watchdog, ms, ms);
        }
}

void sd_ready(Supervisor *s) {
        if (!s->under_systemd)
                return;
        sd_notifyf(0, "READY=1\nMAINPID=%d", (int) getpid());
        sd_status(s);
}

void sd_status(Supervisor *s) {
        if (!s->under_systemd)
                return;
        if (s->gave_up)
                sd_notifyf(0, "STATUS=worker crash loop: respawning given up, %zu mounts not served", s->mounts.count);
        else
                sd_notifyf(0, "STATUS=%zu mounts, worker %d (generation %" PRIu64 "), %" PRIu64 " restarts",
                           s->mounts.count, s->current ? (int) s->current->pid : 0, s->generation, s->restarts);
}

void sd_store_mount(Supervisor *s, Mount *m) {
        if (!s->under_systemd)
                return;
        char msg[96];
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=" MOUNT_FDNAME "%" PRIu64, m->id);
        int r = sd_pid_notify_with_fds(0, 0, msg, &m->fd, 1);
        if (r < 0)
                log_error_errno(r, "cannot store mount %" PRIu64 " in the fdstore", m->id);
}

void sd_forget_mount(Supervisor *s, uint64_t id) {
        if (!s->under_systemd)
                return;
        sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=" MOUNT_FDNAME "%" PRIu64, id);
}

void sd_store_state(Supervisor *s) {
        if (!s->under_systemd)
                return;
        StateExtra x = { .listen_fd = -1, .reply_fd = -1, .worker_pidfd = -1, .worker_sock = -1,
                         .worker_inflight_fd = -1 };
        int fd;
        int r = state_save(s, &x, &fd);
        if (r < 0) {
                log_error_errno(r, "cannot save the records for the fdstore");
                return;
        }
        sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=" STATE_FDNAME);
        r = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=" STATE_FDNAME, &fd, 1);
        if (r < 0)
                log_error_errno(r, "cannot store the records in the fdstore");
        close(fd);
}

int sd_restore(Supervisor *s, ErrMsg *err) {
        char **names = NULL;
        int n = sd_listen_fds_with_names(1, &names);
        if (n <= 0)
                return n < 0 ? errmsg_set(err, n, "LISTEN_FDS: %s", strerror(-n)) : 0;
        int state_fd = -EBADF;
        for (int i = 0; i < n; i++)
                if (names && names[i] && strcmp(names[i], STATE_FDNAME) == 0 && state_fd < 0)
                        state_fd = SD_LISTEN_FDS_START + i;
        int r = 0;
        if (state_fd >= 0) {
                StateExtra x = {};
                r = state_load(s, state_fd, &x, err);
                /* A fresh start, whatever the old image's worker was: the
                 * cgroup was emptied before systemd restarted us. */
                s->gave_up = false;
        }
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                const char *name = names ? names[i] : NULL;
                uint64_t id = 0;
                Mount *m = NULL;
                if (name && strncmp(name, MOUNT_FDNAME, strlen(MOUNT_FDNAME)) == 0 &&
                    sscanf(name + strlen(MOUNT_FDNAME), "%" SCNu64, &id) == 1)
                        m = mount_table_find(&s->mounts, id);
                if (m && m->fd < 0) {
                        m->fd = fd;
                        continue;
                }
                if (fd != state_fd) {
                        log_warning("fdstore entry %s has no record; dropping it", name ? name : "?");
                        if (name)
                                sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=%s", name);
                }
                close(fd);
        }
        for (int i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        for (Mount *m = s->mounts.head, *next; m; m = next) {
                next = m->next;
                m->sent_gen = 0;
                m->served = false;
                if (m->fd < 0) {
                        log_error("mount %s has no fd in the fdstore; dropping its record", m->mountpoint);
                        mount_table_remove(&s->mounts, m);
                }
        }
        sd_store_state(s);
        return r < 0 ? r : (int) s->mounts.count;
}
