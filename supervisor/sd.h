/* systemd integration: sd_notify (READY, STATUS, WATCHDOG), and the
 * file descriptor store that keeps every /dev/fuse fd (FDNAME=
 * holdfast-mount-<id>) and the records (a memfd, FDNAME=holdfast-state)
 * alive while the supervisor itself restarts. Everything is a no-op when
 * NOTIFY_SOCKET is not set. Runs on the supervisor's loop. */
#pragma once

#include <stdint.h>

#include "common/util/errmsg.h"

typedef struct Supervisor Supervisor;
typedef struct Mount Mount;

void sd_setup(Supervisor *s);
void sd_ready(Supervisor *s);
void sd_status(Supervisor *s);
void sd_store_mount(Supervisor *s, Mount *m);
void sd_forget_mount(Supervisor *s, uint64_t id);
/* Replaces the holdfast-state memfd in the store with the current records. */
void sd_store_state(Supervisor *s);
/* Takes the mounts back from LISTEN_FDS after systemd restarted us.
 * Returns the number of mounts restored. */
int sd_restore(Supervisor *s, ErrMsg *err);
