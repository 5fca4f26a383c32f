/* One FUSE connection being served: its /dev/fuse fd, the parameters
 * negotiated by FUSE_INIT (now or by an earlier worker), and its layer,
 * opened eagerly for a new mount or lazily on the first request after a
 * takeover.
 *
 * Reference counted: the server's table holds one reference, and every
 * serving thread holds one while it reads from or answers on the fd, so
 * the fd is closed only when nobody can write a reply to it any more (a
 * reply must never reach an fd number that was reused). */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/estargz/layer.h"
#include "common/util/errmsg.h"
#include "worker/fuse/inflight.h"
#include "worker/fuse/init.h"

/* How the engine opens a layer on demand (worker/layers/, wired by main). */
typedef struct FuseLayerOps {
        int (*open)(void *userdata, const char *source, Layer **ret_layer, void **ret_handle, ErrMsg *err);
        /* The same from a stored record only (-ENOENT: none); optional. */
        int (*preload)(void *userdata, const char *source, Layer **ret_layer, void **ret_handle, ErrMsg *err);
        void (*close)(void *userdata, void *handle);
        /* Reads file bytes as layer_read() does; optional (NULL:
         * layer_read() on the Layer). handle is what open returned. */
        ssize_t (*read)(void *userdata, void *handle, ChunkDecoder *d, uint64_t ino, uint64_t off, size_t len,
                        void *buf, ErrMsg *err);
        /* An O_RDONLY fd of a local file holding all of regular file ino,
         * for passthrough (-ENODATA: none); optional. */
        int (*file_fd)(void *userdata, void *handle, uint64_t ino, int *ret_fd);
        void *userdata;
} FuseLayerOps;

typedef struct FuseSession {
        uint64_t key;            /* the server's epoll key; immutable */
        uint64_t id;             /* the supervisor's mount id; immutable */
        int fd;                  /* owned; O_NONBLOCK|O_CLOEXEC */
        char *source;            /* owned; immutable */
        const FuseLayerOps *ops; /* borrowed from the server */
        int refs;                /* atomic */
        InflightTable *inflight; /* borrowed from the server; NULL: none */
        uint32_t slot;           /* ours in inflight (released when freed) */

        pthread_mutex_t lock;
        bool initialized;        /* written under lock, once; read with acquire loads */
        FuseParams params;       /* protected by lock until initialized, then immutable */
        Layer *layer;            /* written under lock once, read with acquire loads */
        void *layer_handle;      /* owned through ops->close; written under lock before
                                  * layer, so readable once layer was loaded (acquire) */
        uint64_t layer_failed_ms; /* protected by lock: last failed open */
        int layer_error;         /* protected by lock */
} FuseSession;

/* take_fd is always consumed; params NULL: wait for FUSE_INIT. layer is
 * owned by layer_handle (both NULL: opened on demand), which is taken and
 * released through ops->close, on failure too. */
int fuse_session_new(uint64_t key, uint64_t id, int take_fd, const char *source, const FuseParams *params,
                     Layer *layer, void *layer_handle, const FuseLayerOps *ops, FuseSession **ret);
FuseSession *fuse_session_ref(FuseSession *s);
FuseSession *fuse_session_unref(FuseSession *s);

/* The layer, opening it on first use. Fails with -EIO (logged; a failed
 * open is retried at most once a second). */
int fuse_session_layer(FuseSession *s, Layer **ret);

/* Opens the layer ahead of its first request, from a stored record only
 * (ops->preload). 1: opened now, 0: open already, < 0: not possible (no
 * record; the first request opens it the usual way). */
int fuse_session_preload(FuseSession *s);

/* Records what FUSE_INIT negotiated. -EALREADY if initialized before. */
int fuse_session_set_params(FuseSession *s, const FuseParams *p);
bool fuse_session_initialized(FuseSession *s);
