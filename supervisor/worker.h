/* One holdfast-worker process and our end of its socket: spawning it,
 * watching it with a pidfd, and the supervisor's half of the worker
 * protocol (docs/design.md, "The worker protocol"). Messages that arrive
 * out of order or out of range get the worker SIGKILLed; the supervisor
 * hears about it through supervisor_on_worker_exit() like any death.
 * Runs on the supervisor's loop; no thread safety. */
#pragma once

#include "common/util/errmsg.h"
#include "holdfast.pb.h"
#include "supervisor/base.h"

typedef struct Supervisor Supervisor;
typedef struct Mount Mount;

typedef enum WorkerState {
        WORKER_SPAWNED,   /* waiting for WorkerReady */
        WORKER_READY,     /* WorkerReady came; nothing sent yet */
        WORKER_HOLDING,   /* has every mount's record and fd; reads none */
        WORKER_STARTING,  /* WorkerGo sent; MountStatus pending */
        WORKER_SERVING,
        WORKER_DRAINING,  /* Drain sent; waiting for its exit */
        WORKER_EXITED,    /* exited (pidfd readable); handles closing; the
                           * zombie is reaped a moment later (worker.c) */
} WorkerState;

typedef struct Worker {
        Supervisor *sup;
        pid_t pid;
        int pidfd;                /* owned */
        int sock;                 /* owned; our end of the socketpair */
        int inflight_fd;          /* owned; its in-flight table (WorkerReady), or -1 */
        uv_timer_t timer;         /* WorkerReady / Warm / Drained deadlines */
        uv_poll_t pid_poll;       /* readable when the process exited */
        uv_poll_t sock_poll;
        unsigned open_handles;    /* of the three above, in that order; the
                                   * Worker is freed when the last one closed */
        bool sock_closed;         /* EOF seen; exit expected within 1 s */

        WorkerState state;
        uint64_t generation;
        size_t pending;           /* start-sequence mounts without MountStatus */
        bool asked_to_exit;       /* Drain or our SIGKILL: not a crash */
        bool warm;                /* Warm came (or its deadline passed) */
        bool drained;             /* Drained came */
        uint64_t serving_ms;      /* 0 until SERVING */
        char exit_text[64];
} Worker;

const char *worker_state_to_string(WorkerState st);

int worker_spawn(Supervisor *s, const char *path, uint64_t generation, Worker **ret, ErrMsg *err);
/* Re-adopts the serving worker st carried over the supervisor's execve
 * (taking its fds). */
int worker_adopt(Supervisor *s, const holdfast_SupervisorState *st, Worker **ret);

/* WorkerStart and every mount with its fd: READY -> HOLDING. */
int worker_load(Worker *w);
/* The senders below kill a worker they cannot send to: its exit says what
 * next. */
/* WorkerGo: HOLDING -> STARTING (or SERVING with no mounts). Only once
 * the previous holder of the mounts exited (its pidfd said so). */
void worker_go(Worker *w);
/* A new mount, or one whose INIT parameters changed, to a worker that
 * holds or serves the others. */
void worker_send_mount(Worker *w, Mount *m);
void worker_send_unmount(Worker *w, uint64_t id);
/* Sends Drain, arms the SIGKILL deadline. */
void worker_drain(Worker *w);
void worker_kill(Worker *w, const char *why);
/* SIGKILL and wait for the exit right here (blocking): for a worker that
 * must be gone before the next step, and whose exit nobody reports. */
void worker_reap_now(Worker *w, const char *why);
/* Reaps exited children but also and the tracked workers (whose pidfd
 * still wants the status: one of them stops the walk). Bounded. */
void worker_reap_exited(Supervisor *s, const Worker *also);
/* After supervisor_on_worker_exit(): closes the handles, frees. */
void worker_free(Worker *w);
