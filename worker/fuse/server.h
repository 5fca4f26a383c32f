/* The serving side of holdfast-worker: N threads over one epoll set of
 * every connection's /dev/fuse fd, plus an eventfd that stops them.
 *
 * Lifecycle (main thread): fuse_server_new (creates the threads, which
 * read nothing until fuse_server_start), fuse_server_add (any time),
 * fuse_server_start, fuse_server_remove (any time), fuse_server_stop
 * (drain: each thread finishes and answers the request it read, then
 * exits; nothing more is read), fuse_server_free. Callbacks run on
 * serving threads. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "worker/fuse/init.h"
#include "worker/fuse/session.h"

typedef struct FuseServer FuseServer;

typedef struct FuseServerConfig {
        unsigned n_threads;      /* 0: 4 */
        FuseLayerOps layer_ops;  /* opens layers on demand */
        /* FUSE_INIT answered on mount id: params are what was negotiated. */
        void (*on_init)(void *userdata, uint64_t id, const FuseParams *params);
        /* The connection of mount id went away (ENODEV: unmounted). */
        void (*on_gone)(void *userdata, uint64_t id);
        void *userdata;
} FuseServerConfig;

int fuse_server_new(const FuseServerConfig *cfg, FuseServer **ret);
FuseServer *fuse_server_free(FuseServer *srv);

/* Any thread (new mounts' layers open on threads of their own). Serves
 * the connection take_fd (always consumed) of mount id. params:
 * restored parameters of an initialized connection, or NULL to wait for
 * FUSE_INIT. layer/layer_handle: an opened layer (taken), or NULL to open
 * it from source on the first request. -EEXIST for an id served already. */
int fuse_server_add(FuseServer *srv, uint64_t id, int take_fd, const char *source, const FuseParams *params,
                    Layer *layer, void *layer_handle);
/* Stops serving mount id and closes its fd once no thread uses it.
 * -ENOENT when unknown. */
int fuse_server_remove(FuseServer *srv, uint64_t id);

/* Opens, from stored records, the layers of initialized connections that
 * have none yet, one at a time, while keep_going(userdata) says so (asked
 * before each), until every one was tried (see fuse_session_preload). Any
 * thread; meant for a low-priority one while nothing reads. Returns how
 * many it opened. */
size_t fuse_server_preload(FuseServer *srv, bool (*keep_going)(void *userdata), void *userdata);

int fuse_server_start(FuseServer *srv);
/* The same for a takeover: every thread first writes FUSE_NOTIFY_RESEND
 * on its share of the connections of mount ids ids[0..n) (n < 0: of
 * every connection), on every CPU before any thread waits for requests
 * (a RESEND wakes the waiters of its connection), then serves. Returns
 * once those RESENDs were written; *ret_resent: how many succeeded. */
int fuse_server_start_takeover(FuseServer *srv, const uint64_t *ids, ssize_t n, size_t *ret_resent);
/* Takes over the passthrough backing ids of the previous worker's table
 * (prev_fd, borrowed) for the connections we serve (inflight.h). Returns
 * how many connections may use passthrough, or -errno. */
int fuse_server_inherit_backing(FuseServer *srv, int prev_fd);
/* The in-flight table's memfd (inflight.h), for the supervisor to hand to
 * our successor; -EBADF when there is none. Borrowed. */
int fuse_server_inflight_fd(FuseServer *srv);
/* Drains: returns once every serving thread has exited. */
void fuse_server_stop(FuseServer *srv);

/* Writes FUSE_NOTIFY_RESEND on a connection: the kernel queues again the
 * requests a dead worker had read but not answered, with
 * FUSE_UNIQUE_RESEND set in their unique (protocol 7.40). Only when no
 * other process reads fd. Returns 0 or -errno. */
int fuse_notify_resend(int fd);
