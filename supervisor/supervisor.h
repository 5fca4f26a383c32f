/* The supervisor: one libuv loop, no threads. It owns the mounts (their
 * /dev/fuse fds), at most two worker processes (the one serving and a
 * standby that holds every mount, ready to take over), the control socket
 * and the systemd hooks. Objects with a life of their own have their own
 * files (worker.c, ctl-server.c, mount-table.c); this header
 * is the state they share and the functions that act on all of it:
 * supervisor.c holds the policy (when to respawn, how an upgrade
 * proceeds), state.c the state across an execve, sd.c the systemd hooks. */
#pragma once

#include <time.h>

#include "common/util/errmsg.h"
#include "holdfast.pb.h"
#include "supervisor/base.h"
#include "supervisor/ctl-server.h"
#include "supervisor/mount-table.h"
#include "supervisor/worker.h"

#define RESTART_BURST_MAX 1024

typedef struct Supervisor {
        uv_loop_t *loop;
        char *root;                /* owned; the state directory */
        char *worker_path;         /* owned; binary respawns use */
        char *self_path;           /* owned; /proc/self/exe at start, for REEXEC */

        MountTable mounts;
        CtlServer ctl;
        int snap_fd;               /* owned; containerd's snapshotter socket,
                                    * listening (every worker gets a copy and
                                    * serves it from WorkerGo), or -1 */

        /* Neither is ever an exited worker: supervisor_on_worker_exit()
         * forgets it first. */
        Worker *current;           /* serving, or about to: gets the mounts */
        Worker *standby;           /* holds the mounts, reads none; takes
                                    * over when current exits (a crash, or
                                    * an UPGRADE/RESTART that drains it) */
        char *standby_path;        /* owned; binary of standby */
        bool want_standby;         /* unless --no-standby */
        bool upgrading;
        bool last_drained;         /* the last worker to exit said Drained */
        int prev_inflight_fd;      /* owned; the in-flight table of the last
                                    * serving worker that exited, for WorkerGo */
        CtlConn *upgrade_waiter;   /* borrowed; NULL when the client is gone */
        uint64_t drain_start_us;   /* Drain (or death) -> last MountStatus */
        uint64_t down_since_us;    /* crash: death seen -> last MountStatus */
        uint64_t last_stall_us;

        uint64_t generation;       /* workers started so far */
        uint64_t restarts;         /* workers that died without being asked to */
        uint64_t start_ms;         /* CLOCK_MONOTONIC of the first supervisor image */

        /* Respawn policy: backoff 0, 100 ms, doubling to delay_max_ms, reset
         * when a worker served for a second; restart_burst deaths within a
         * window of restart_interval_ms give up respawning (never dropping
         * a mount). */
        unsigned restart_burst;
        uint64_t restart_interval_ms;
        uint64_t delay_max_ms;
        uint64_t backoff_ms;
        uint64_t deaths_since_ms;  /* start of the window */
        unsigned n_deaths;         /* within it */
        bool gave_up;
        uv_timer_t spawn_timer;    /* respawns current; with current serving,
                                    * spawns the standby */

        uv_signal_t sigterm, sigint;
        uv_timer_t watchdog_timer;
        bool under_systemd;        /* NOTIFY_SOCKET: fds go to the fdstore */
        bool stopping;
} Supervisor;

static inline uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}
static inline uint64_t now_ms(void) {
        return now_us() / 1000;
}

/* supervisor.c: events from the workers and the control socket. */
void supervisor_on_worker_ready(Supervisor *s, Worker *w);
void supervisor_on_worker_serving(Supervisor *s, Worker *w);
void supervisor_on_worker_warm(Supervisor *s, Worker *w);
void supervisor_on_mount_status(Supervisor *s, Mount *m, const holdfast_MountStatus *st);
void supervisor_on_worker_exit(Supervisor *s, Worker *w);
/* Takes fd, which only a MOUNT carries: the new mount's /dev/fuse. */
void supervisor_on_request(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req, int take_fd);
/* The control connection c is going away: forget any pointer to it. */
void supervisor_forget_conn(Supervisor *s, CtlConn *c);
void supervisor_spawn_current(Supervisor *s);
/* Arms the standby timer when a standby is wanted and missing. */
void supervisor_want_standby(Supervisor *s);
void supervisor_stop(Supervisor *s);

/* state.c: the supervisor's state as bytes, in a sealed memfd. With
 * reexec_conn (the REEXEC request answered after the execve) the record
 * carries the numbers of every fd that survives the execve: the mounts',
 * the control socket's, the serving worker's and reexec_conn's; without
 * (systemd's fdstore keeps the fds by name) it carries none. */
int state_save(Supervisor *s, const CtlConn *reexec_conn, int *ret_memfd);
/* Reads a state memfd into s (counters and mount records, each with the
 * fd number recorded, or -EBADF) and *ret (the rest). */
int state_load(Supervisor *s, int fd, holdfast_SupervisorState *ret, ErrMsg *err);
/* Drops the records whose fd did not come back: the mount is lost. */
void state_drop_fdless(Supervisor *s, const char *why);
int supervisor_reexec(Supervisor *s, CtlConn *c, ErrMsg *err);
/* In the new image: takes everything back from the memfd state_fd. */
int supervisor_restore(Supervisor *s, int state_fd, ErrMsg *err);

/* sd.c: sd_notify (READY, STATUS, WATCHDOG) and the fdstore, which keeps
 * every /dev/fuse fd (FDNAME=holdfast-mount-<id>) and the records (a
 * memfd, FDNAME=holdfast-state) while the supervisor itself restarts.
 * No-ops when NOTIFY_SOCKET is not set. */
void sd_setup(Supervisor *s);
void sd_ready(Supervisor *s);
void sd_status(Supervisor *s);
void sd_store_mount(const Mount *m);
void sd_forget_mount(uint64_t id);
/* The snapshotter socket (FDNAME=holdfast-snapshotter). */
void sd_store_snapshotter(Supervisor *s);
/* Replaces the holdfast-state memfd in the store with the current records. */
void sd_store_state(Supervisor *s);
/* Takes the mounts back from LISTEN_FDS after systemd restarted us.
 * Returns the number of mounts restored. */
int sd_restore(Supervisor *s, ErrMsg *err);
