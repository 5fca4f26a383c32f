/* Registry layers (layers.h): "HOST/REPO@sha256:HEX[#toc=sha256:HEX][&size=N]"
 * opened through worker/fetch/, with the record keyed by the blob digest
 * and the chunks kept in worker/cache/. Any thread; never logs.
 *
 * The Layer reads through remote_read_at() with the LayerSource as its
 * userdata, so a layer restored from its record gets its FetchBlob (whose
 * size the record gives: no request) after the Layer is built. */
#include "worker/layers/layers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util/digest.h"
#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/fetch/registry.h"
#include "worker/layers/prefetch.h"
#include "worker/layers/record.h"
#include "worker/util/cond.h"


void layer_env_init(LayerEnv *env, MetaStore **store, Cache *cache) {
        *env = (LayerEnv) { .store = store, .cache = cache, .prefetch = true };
        pthread_mutex_init(&env->lock, NULL);
        pthread_mutex_init(&env->opens_lock, NULL);
        cond_init_monotonic(&env->opened);
        pthread_mutex_init(&env->turn_lock, NULL);
}

void layer_env_done(LayerEnv *env) {
        env->fetch = fetch_client_free(env->fetch);
        pthread_cond_destroy(&env->opened);
        pthread_mutex_destroy(&env->turn_lock);
        pthread_mutex_destroy(&env->opens_lock);
        pthread_mutex_destroy(&env->lock);
}

void layer_env_open_begin(LayerEnv *env) {
        pthread_mutex_lock(&env->opens_lock);
        env->opening++;
        pthread_mutex_unlock(&env->opens_lock);
}

void layer_env_open_end(LayerEnv *env) {
        pthread_mutex_lock(&env->opens_lock);
        if (--env->opening == 0)
                pthread_cond_broadcast(&env->opened);
        pthread_mutex_unlock(&env->opens_lock);
}

void layer_env_wait_opens(LayerEnv *env, uint64_t deadline_ns, const bool *stop) {
        pthread_mutex_lock(&env->opens_lock);
        while (env->opening > 0 && !__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t now = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
                if (now >= deadline_ns)
                        break;
                uint64_t until = MIN(deadline_ns, now + 10 * 1000000ull);
                ts = (struct timespec) { .tv_sec = (time_t) (until / 1000000000ull),
                                         .tv_nsec = (long) (until % 1000000000ull) };
                (void) pthread_cond_timedwait(&env->opened, &env->opens_lock, &ts);
        }
        pthread_mutex_unlock(&env->opens_lock);
}

static int env_fetch(LayerEnv *env, FetchClient **ret, ErrMsg *err) {
        int r = 0;
        pthread_mutex_lock(&env->lock);
        if (!env->fetch) {
                FetchConfig cfg = { .hosts_dir = env->hosts_dir };
                r = fetch_client_new(&cfg, &env->fetch, err);
        }
        *ret = env->fetch;
        pthread_mutex_unlock(&env->lock);
        return r;
}

int layer_env_fetch_ready(LayerEnv *env, ErrMsg *err) {
        FetchClient *fc;
        return env_fetch(env, &fc, err);
}

bool layer_source_is_remote(const char *source) {
        return source[0] != '/' && strstr(source, "@sha256:") != NULL;
}

static ssize_t remote_read_at(void *userdata, void *buf, size_t len, uint64_t off) {
        LayerSource *ls = userdata;
        /* the tail is there only while the layer is being opened (one thread) */
        if (ls->tail && off >= ls->tail_off && off - ls->tail_off + len <= ls->tail_len) {
                memcpy(buf, ls->tail + (off - ls->tail_off), len);
                return (ssize_t) len;
        }
        if (!ls->blob)
                return -EIO;
        if (ls->tail && off < ls->tail_off && off + len > ls->tail_off && off + len <= ls->tail_off + ls->tail_len) {
                /* a TOC larger than the tail read: only its start is fetched */
                size_t head = (size_t) (ls->tail_off - off);
                ssize_t got = fetch_blob_read_at(ls->blob, buf, head, off);
                if (got < 0 || (size_t) got != head)
                        return got < 0 ? got : -EIO;
                memcpy((uint8_t *) buf + head, ls->tail, len - head);
                return (ssize_t) len;
        }
        return fetch_blob_read_at(ls->blob, buf, len, off);
}

/* Splits source into the layer reference (owned) and what follows '#':
 * "toc=sha256:HEX" (the TOC digest to expect) and "size=N" (the blob's
 * size from the manifest; without it the registry's answer to the tail
 * read tells it), joined by '&'. */
static int parse_source(const char *source, char **ret_ref, uint8_t toc[SHA256_LEN], bool *ret_has_toc,
                        uint64_t *ret_size, uint8_t blob_digest[SHA256_LEN], ErrMsg *err) {
        const char *hash = strchr(source, '#');
        size_t ref_len = hash ? (size_t) (hash - source) : strlen(source);
        *ret_has_toc = false;
        *ret_size = 0;
        for (const char *p = hash ? hash + 1 : NULL; p && *p;) {
                const char *amp = strchr(p, '&');
                size_t n = amp ? (size_t) (amp - p) : strlen(p);
                if (n > 4 && strncmp(p, "toc=", 4) == 0 && digest_parse(p + 4, n - 4, toc) >= 0)
                        *ret_has_toc = true;
                else if (n > 5 && strncmp(p, "size=", 5) == 0 && p[5] != '-') {
                        char *end;
                        errno = 0;
                        *ret_size = strtoull(p + 5, &end, 10);
                        if (errno || end != p + n || *ret_size == 0)
                                return errmsg_set(err, -EINVAL, "layer %s: size= is not a number of bytes", source);
                } else
                        return errmsg_set(err, -EINVAL, "layer %s: after '#', expected toc=sha256:<64 hex> or "
                                          "size=BYTES, joined by '&'", source);
                p = amp ? amp + 1 : NULL;
        }
        const char *at = memmem(source, ref_len, "@sha256:", 8);
        const char *d = at ? at + 1 : source;
        size_t dlen = ref_len - (size_t) (d - source);
        if (!at || digest_parse(d, dlen, blob_digest) < 0)
                return errmsg_set(err, -EINVAL, "layer %s: the blob digest is not sha256:<64 hex>", source);
        *ret_ref = strndup(source, ref_len);
        return *ret_ref ? 0 : -ENOMEM;
}

/* The blob's last bytes, read in one request before the footer and the
 * TOC are (they are at the end of the blob): one round trip instead of
 * two for every layer whose compressed TOC is smaller than this. On a
 * 100 Mbit/s link with 20 ms round trips, 64 KiB costs about a quarter
 * of the round trip it saves; a larger guess costs more than it saves
 * for the many small layers. */
#define TAIL_READ (64u << 10)

/* Opens the blob and reads its tail, in one request either way: a plain
 * range when the size is known (size=, or our record), else a suffix
 * range whose answer tells the size too (containerd gives no size; a
 * HEAD first would cost a round trip). */
static int read_tail(LayerSource *ls, FetchClient *fc, const char *ref, const FetchBlobOptions *o, ErrMsg *err) {
        ls->tail = malloc(TAIL_READ);
        if (!ls->tail)
                return -ENOMEM;
        ssize_t got = fetch_blob_open_tail(fc, ref, o, ls->tail, TAIL_READ, &ls->blob, err);
        if (got < 0) {
                free(TAKE_PTR(ls->tail));
                return (int) got;
        }
        ls->tail_len = (size_t) got;
        ls->tail_off = fetch_blob_size(ls->blob) - ls->tail_len;
        return 0;
}

int layer_remote_open(const char *source, LayerEnv *env, bool stored_only, bool prefetch, LayerSource **ret,
                      ErrMsg *err) {
        _cleanup_free_ char *ref = NULL;
        uint8_t toc[SHA256_LEN], blob_digest[SHA256_LEN];
        bool has_toc;
        uint64_t size;
        int r = parse_source(source, &ref, toc, &has_toc, &size, blob_digest, err);
        if (r < 0)
                return r;
        char dstr[DIGEST_STRING_LEN + 1], key[DIGEST_STRING_LEN + 16];
        digest_format(blob_digest, dstr);
        snprintf(key, sizeof(key), "blob:%s", dstr);
        MetaStore *store = env->store ? *env->store : NULL;
        FetchClient *fc;
        r = env_fetch(env, &fc, err);
        if (r < 0)
                return errmsg_prefix(err, r, "registry client");

        LayerSource *ls = calloc(1, sizeof(*ls));
        if (!ls)
                return -ENOMEM;
        ls->fd = -EBADF;
        ls->env = env;
        if (store) {
                ErrMsg ignored = {};
                r = layer_record_load(store, key, remote_read_at, ls, 0, &ls->layer, &ignored);
                if (r >= 0 && has_toc && memcmp(ls->layer->toc_digest, toc, SHA256_LEN) != 0) {
                        /* indexed under another TOC digest: not what we are told to trust */
                        ls->layer = layer_free(ls->layer);
                        r = -EBADMSG;
                }
                if (r >= 0) {
                        ls->from_store = true;
                        FetchBlobOptions o = { .expect_size = ls->layer->blob_size, .known_size = true };
                        r = fetch_blob_open_ref(fc, ref, &o, &ls->blob, err);
                        if (r < 0)
                                goto fail;
                }
        }
        if (!ls->layer) {
                if (stored_only) {
                        r = -ENOENT;
                        goto fail;
                }
                FetchBlobOptions o = { .expect_size = size, .known_size = size > 0 };
                r = read_tail(ls, fc, ref, &o, err);
                if (r < 0)
                        goto fail;
                LayerOptions lo = { .expect_toc_digest = has_toc ? toc : NULL };
                r = layer_open(remote_read_at, ls, fetch_blob_size(ls->blob), &lo, &ls->layer, err);
                free(TAKE_PTR(ls->tail));
                if (r < 0) {
                        errmsg_prefix(err, r, "%s", ref);
                        goto fail;
                }
                if (store) {
                        ErrMsg ignored = {};
                        (void) layer_record_save(store, key, ls->layer, &ignored);
                }
        }
        if (env->cache) {
                /* without the cache the layer is still served, fetching
                 * every read */
                ErrMsg ignored = {};
                (void) cache_layer_open(env->cache, blob_digest, SHA256_LEN, ls->layer->index, &ls->cache, &ignored);
        }
        if (ls->cache)
                (void) layer_source_sort_chunks(ls); /* without: no neighbours fetched along */
        if (prefetch && ls->cache)
                (void) prefetch_start(ls, env, &ls->prefetch);
        *ret = ls;
        return 0;
fail:
        layer_source_close(ls);
        return r;
}
