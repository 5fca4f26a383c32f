/* Deferred teardown of a worker. A killed process frees its address
 * space and closes its files before its pidfd reports the exit, and the
 * supervisor hands the mounts to the next worker only after that report:
 * freeing hundreds of MB of layer indexes and closing a thousand blob fds
 * and an epoll set of a thousand connections is a stall for every reader.
 * The keeper is a tiny child that shares the worker's memory and file
 * table (CLONE_VM | CLONE_FILES) and nothing else: it runs no code of the
 * worker, reads nothing, blocks every signal, and only sleeps in ppoll(2)
 * with raw system calls. While it lives, the worker's exit skips that
 * teardown. It waits on a pidfd of the worker and exits 300 ms after the
 * worker did, when the next worker has taken over; the kernel then frees
 * what the worker held (the store's lock too: see meta/store.c). Main
 * thread only. */
#pragma once

#include <stdbool.h>

/* Starts the keeper; 0 or -errno (then exits cost what they did). */
int mm_keeper_start(void);

/* Sockets the keeper shuts down (SHUT_RDWR) as soon as the worker died,
 * before its grace period: their peers (containerd's connections to the
 * snapshotter) see the end at once, not 300 ms later after sending calls
 * nobody reads, and reconnect to the next worker. add: registers fd;
 * else forgets it (before the fd is closed). At most 256 at once (more
 * are not registered); any thread. */
void mm_keeper_shutdown_on_death(int fd, bool add);
/* Files the keeper closes as soon as the worker died: a lock file whose
 * lock the next worker waits for (the snapshotter's RocksDB). Same rules. */
void mm_keeper_close_on_death(int fd, bool add);
