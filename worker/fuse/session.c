/* FuseSession: lifetime and lazy layer opening (see session.h). Any
 * serving thread; the main thread creates sessions and drops the table's
 * reference. Invariant: once s->layer is non-NULL it never changes until
 * the session is freed. */
#include "worker/fuse/session.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/util/log.h"

#define LAYER_RETRY_MS 1000

int fuse_session_new(uint64_t key, uint64_t id, int take_fd, const char *source, const FuseParams *params,
                     Layer *layer, void *layer_handle, const FuseLayerOps *ops, FuseSession **ret) {
        _cleanup_close_ int fd = take_fd;
        FuseSession *s = calloc(1, sizeof(*s));
        if (s)
                s->source = strdup(source);
        if (!s || !s->source) {
                free(s);
                if (layer_handle && ops && ops->close)
                        ops->close(ops->userdata, layer_handle);
                return -ENOMEM;
        }
        pthread_mutex_init(&s->lock, NULL);
        s->key = key;
        s->id = id;
        s->fd = TAKE_FD(fd);
        s->ops = ops;
        s->refs = 1;
        s->slot = INFLIGHT_NONE;
        if (params) {
                s->params = *params;
                s->initialized = true;
        }
        s->layer = layer;
        s->layer_handle = layer_handle;
        *ret = s;
        return 0;
}

FuseSession *fuse_session_ref(FuseSession *s) {
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
        return s;
}

FuseSession *fuse_session_unref(FuseSession *s) {
        if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;
        if (s->layer_handle && s->ops && s->ops->close)
                s->ops->close(s->ops->userdata, s->layer_handle);
        if (s->fd >= 0)
                close(s->fd);
        /* after the close: no request of ours can be in flight any more */
        if (s->inflight)
                inflight_slot_release(s->inflight, s->slot);
        pthread_mutex_destroy(&s->lock);
        free(s->source);
        free(s);
        return NULL;
}

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

int fuse_session_layer(FuseSession *s, Layer **ret) {
        Layer *l = __atomic_load_n(&s->layer, __ATOMIC_ACQUIRE);
        if (l) {
                *ret = l;
                return 0;
        }
        int r = 0;
        pthread_mutex_lock(&s->lock);
        if (s->layer) {
                *ret = s->layer;
                goto out;
        }
        uint64_t now = now_ms();
        if (s->layer_failed_ms && now - s->layer_failed_ms < LAYER_RETRY_MS) {
                r = -EIO;
                goto out;
        }
        if (!s->ops || !s->ops->open) {
                r = -EIO;
                goto out;
        }
        ErrMsg err = {};
        void *handle = NULL;
        r = s->ops->open(s->ops->userdata, s->source, &l, &handle, &err);
        if (r < 0) {
                log_error_errno(r, "mount %" PRIu64 ": cannot open layer %s: %s", s->id, s->source,
                                err.text[0] ? err.text : strerror(-r));
                s->layer_failed_ms = now ? now : 1;
                s->layer_error = r;
                r = -EIO;
                goto out;
        }
        s->layer_handle = handle;
        __atomic_store_n(&s->layer, l, __ATOMIC_RELEASE);
        log_info("mount %" PRIu64 ": opened layer %s", s->id, s->source);
        *ret = l;
out:
        pthread_mutex_unlock(&s->lock);
        return r;
}

int fuse_session_preload(FuseSession *s) {
        if (__atomic_load_n(&s->layer, __ATOMIC_ACQUIRE))
                return 0;
        if (!s->ops || !s->ops->preload)
                return -EOPNOTSUPP;
        int r = 1;
        pthread_mutex_lock(&s->lock);
        if (s->layer)
                r = 0;
        else {
                ErrMsg err = {};
                Layer *l;
                void *handle = NULL;
                r = s->ops->preload(s->ops->userdata, s->source, &l, &handle, &err);
                if (r >= 0) {
                        s->layer_handle = handle;
                        __atomic_store_n(&s->layer, l, __ATOMIC_RELEASE);
                        r = 1;
                }
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

int fuse_session_set_params(FuseSession *s, const FuseParams *p) {
        int r = 0;
        pthread_mutex_lock(&s->lock);
        if (s->initialized)
                r = -EALREADY;
        else {
                s->params = *p;
                __atomic_store_n(&s->initialized, true, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

bool fuse_session_initialized(FuseSession *s) {
        /* Set once, under the lock, before the INIT reply is written; the
         * kernel sends nothing else before it has that reply. */
        return __atomic_load_n(&s->initialized, __ATOMIC_ACQUIRE);
}
