/* Opening a layer from its SOURCE (see layers.h): for a local blob its
 * fd, the store key, the record or a fresh index (registry layers are
 * remote.c's). Any thread; never logs: a record that cannot be stored is
 * not an error of the open (the layer is served, just indexed again next
 * time). */
#include "worker/layers/layers.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/fetch/registry.h"
#include "worker/layers/prefetch.h"
#include "worker/layers/record.h"

LayerSource *layer_source_close(LayerSource *ls) {
        if (!ls)
                return NULL;
        /* the prefetch and the readahead read through everything below:
         * they go first */
        prefetch_stop(ls->prefetch);
        layer_source_readahead_stop(ls);
        cache_layer_close(ls->cache);
        layer_free(ls->layer);
        fetch_blob_free(ls->blob);
        free(ls->tail);
        free(ls->blob_order);
        free(ls->blob_pos);
        if (ls->fetching) {
                free(ls->fetching);
                pthread_mutex_destroy(&ls->fetch_lock);
                pthread_cond_destroy(&ls->fetch_cond);
        }
        if (ls->fd >= 0)
                close(ls->fd);
        free(ls);
        return NULL;
}

static int source_key(const char *path, int fd, char **ret, uint64_t *ret_size, ErrMsg *err) {
        struct stat st;
        if (fstat(fd, &st) < 0)
                return errmsg_set(err, -errno, "cannot stat %s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return errmsg_set(err, -EINVAL, "%s is not a regular file", path);
        _cleanup_free_ char *real = realpath(path, NULL);
        if (!real)
                return errmsg_set(err, -errno, "cannot resolve %s: %s", path, strerror(errno));
        uint64_t mtime_ns = (uint64_t) st.st_mtim.tv_sec * 1000000000ull + (uint64_t) st.st_mtim.tv_nsec;
        /* the store prefixes "layer/" (worker/meta/store.c) */
        if (asprintf(ret, "%s:%" PRIu64 ":%" PRIu64 ":%" PRIu64, real, (uint64_t) st.st_size, mtime_ns,
                     (uint64_t) st.st_ino) < 0)
                return -ENOMEM;
        *ret_size = (uint64_t) st.st_size;
        return 0;
}

static int source_open(const char *source, LayerEnv *env, bool stored_only, bool prefetch, LayerSource **ret,
                       ErrMsg *err) {
        if (source && layer_source_is_remote(source))
                return layer_remote_open(source, env, stored_only, prefetch, ret, err);
        if (!source || source[0] != '/')
                return errmsg_set(err, -EINVAL, "layer source %s is neither an absolute path nor a layer reference "
                                  "(HOST/REPO@sha256:DIGEST)", source ? source : "(null)");
        MetaStore *store = env && env->store ? *env->store : NULL;
        LayerSource *ls = calloc(1, sizeof(*ls));
        if (!ls)
                return -ENOMEM;
        int r;
        _cleanup_free_ char *key = NULL;
        ls->fd = open(source, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (ls->fd < 0) {
                int e = errno;
                r = errmsg_set(err, -e, "cannot open %s: %s", source, strerror(e));
                goto fail;
        }
        uint64_t size = 0;
        r = source_key(source, ls->fd, &key, &size, err);
        if (r < 0)
                goto fail;
        if (store) {
                ErrMsg ignored = {};
                r = layer_record_load(store, key, fd_read_at, &ls->fd, size, &ls->layer, &ignored);
                if (r >= 0) {
                        ls->from_store = true;
                        *ret = ls;
                        return 0;
                }
                /* -ENOENT, -EBADMSG, -EPROTO, a store error: index the blob */
                if (stored_only)
                        goto fail;
        } else if (stored_only) {
                r = -ENOENT;
                goto fail;
        }
        r = layer_open(fd_read_at, &ls->fd, size, NULL, &ls->layer, err);
        if (r < 0) {
                errmsg_prefix(err, r, "%s", source);
                goto fail;
        }
        if (store) {
                ErrMsg ignored = {};
                (void) layer_record_save(store, key, ls->layer, &ignored);
        }
        *ret = ls;
        return 0;
fail:
        layer_source_close(ls);
        return r;
}

int layer_source_open(const char *source, LayerEnv *env, bool prefetch, LayerSource **ret, ErrMsg *err) {
        return source_open(source, env, false, prefetch, ret, err);
}

int layer_source_open_stored(const char *source, LayerEnv *env, LayerSource **ret, ErrMsg *err) {
        return source_open(source, env, true, false, ret, err);
}
