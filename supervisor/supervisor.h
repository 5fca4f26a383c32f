/* The supervisor: one libuv loop, no threads. It owns the mounts (their
 * /dev/fuse fds), at most two worker processes (the one serving and a
 * standby that holds every mount, ready to take over), the control socket and the
 * systemd hooks. Each piece lives in its own file; this header is the
 * state they share and the events they report to supervisor.c, which
 * holds the policy (when to respawn, how an upgrade proceeds). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include "supervisor/uv-base.h"

#include "common/util/errmsg.h"
#include "holdfast.pb.h"
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

        Worker *current;           /* serving, or about to: gets the mounts */
        Worker *standby;           /* holds the mounts, reads none; takes
                                    * over when current exits (a crash, or
                                    * an UPGRADE/RESTART that drains it) */
        char *standby_path;        /* owned; binary of standby */
        bool want_standby;         /* --standby (default on) */
        uv_timer_t standby_timer;  /* spawns the standby a while after a start */
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
         * when a worker served for 30 s; restart_burst deaths within
         * restart_interval_ms give up respawning (never dropping a mount). */
        unsigned restart_burst;
        uint64_t restart_interval_ms;
        uint64_t delay_max_ms;
        uint64_t backoff_ms;
        uint64_t deaths[RESTART_BURST_MAX];  /* ring of death times (ms) */
        unsigned n_deaths;
        bool gave_up;
        uv_timer_t respawn_timer;

        uv_signal_t sigterm, sigint;
        uv_timer_t watchdog_timer;
        uint64_t watchdog_usec;
        bool under_systemd;        /* NOTIFY_SOCKET: fds go to the fdstore */
        bool stopping;
        int exit_code;
} Supervisor;

uint64_t now_us(void);
static inline uint64_t now_ms(void) {
        return now_us() / 1000;
}

/* supervisor.c: events from the workers and the control socket. */
void supervisor_on_worker_ready(Supervisor *s, Worker *w);
void supervisor_on_worker_serving(Supervisor *s, Worker *w);
void supervisor_on_worker_warm(Supervisor *s, Worker *w);
void supervisor_on_mount_status(Supervisor *s, Worker *w, Mount *m, const holdfast_MountStatus *st);
void supervisor_on_worker_exit(Supervisor *s, Worker *w);
void supervisor_on_request(Supervisor *s, CtlConn *c, const holdfast_CtlRequest *req);
/* The control connection c is going away: forget any pointer to it. */
void supervisor_forget_conn(Supervisor *s, CtlConn *c);
int supervisor_spawn_current(Supervisor *s);
/* Arms the standby timer when a standby is wanted and missing. */
void supervisor_want_standby(Supervisor *s);
void supervisor_stop(Supervisor *s);

/* reexec.c */
int supervisor_reexec(Supervisor *s, CtlConn *c, ErrMsg *err);
int supervisor_restore(Supervisor *s, int state_fd, ErrMsg *err);
