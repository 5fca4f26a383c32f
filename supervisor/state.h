/* The supervisor's state as bytes, for re-exec (fds carried across
 * execve, their numbers in the records) and for systemd's fdstore (fds
 * stored by name, numbers absent). Versioned: a header with a magic and a
 * version, then fixed fields, then one nanopb MountRecord per mount.
 * No state of its own; never logs. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util/errmsg.h"

typedef struct Supervisor Supervisor;

#define STATE_MAGIC "holdfast-state\n"
#define STATE_VERSION 2   /* 2 added worker_inflight_fd; 1 is still read */

/* Fields that are not in the Supervisor's mount table. */
typedef struct StateExtra {
        bool with_fds;            /* record fd numbers (re-exec), or -1 (fdstore) */
        int listen_fd;            /* -1: none */
        int reply_fd;             /* the REEXEC request's connection, or -1 */
        int worker_pidfd, worker_sock;   /* -1: no worker carried */
        int worker_inflight_fd;   /* -1: none (its successor resends everything first) */
        pid_t worker_pid;
        uint64_t worker_generation;
        uint64_t worker_serving_ms;
} StateExtra;

/* Writes s (and x) into a new sealed memfd named holdfast-state. */
int state_save(Supervisor *s, const StateExtra *x, int *ret_memfd);
/* Reads a memfd written by state_save into s (counters and mount records;
 * each record's fd is the number written, or -EBADF) and x. */
int state_load(Supervisor *s, int fd, StateExtra *x, ErrMsg *err);
