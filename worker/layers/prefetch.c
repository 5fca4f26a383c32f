/* The mount-time prefetch (prefetch.h). One thread per prefetching
 * layer, started by the open and joined by the close. It lists the chunks
 * whose compressed bytes end before the landmark and are not cached yet,
 * in blob order (LayerSource.blob_order), and fetches them in pieces of at most 4 MiB, checking
 * between pieces whether it should stop. With the background fetch, it
 * goes on with the rest of the layer at SCHED_IDLE (only when the CPUs
 * have nothing else to do) within a bandwidth budget. Never logs: what
 * it could not fetch, a read fetches later (and reports). */
#include "worker/layers/prefetch.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/layers/layers.h"

#define PIECE (4u << 20)

struct Prefetch {
        LayerSource *ls;         /* borrowed; outlives us */
        pthread_t thread;
        bool stop;               /* atomic */
        uint32_t *ids;           /* owned: the chunks to fetch, blob order */
        size_t n;
        size_t n_landmark;       /* ids[0..n_landmark) are before the landmark */
        uint64_t bytes_per_s;    /* the background fetch's budget; 0: none */
};

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

/* Sleeps in small steps until t_ns, or until told to stop. */
static bool pace_until(Prefetch *p, uint64_t t_ns) {
        while (now_ns() < t_ns) {
                if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
                        return false;
                struct timespec ts = { .tv_nsec = 10 * 1000000 };
                nanosleep(&ts, NULL);
        }
        return !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

static void *prefetch_main(void *userdata) {
        Prefetch *p = userdata;
        const Index *idx = p->ls->layer->index;
        ChunkDecoder *d = NULL;
        if (chunk_decoder_new(&d) < 0)
                return NULL;
        size_t i = 0;
        uint64_t start = now_ns(), sent = 0;
        while (i < p->n && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
                if (i == p->n_landmark) {
                        /* the rest is background work: only when no one
                         * else wants the CPU, and within the budget */
                        struct sched_param sp = {};
                        (void) pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
                        start = now_ns();
                        sent = 0;
                }
                size_t k = 1;
                while (i + k < p->n && idx->chunks[p->ids[i + k]].blob_end - idx->chunks[p->ids[i]].blob_offset <= PIECE)
                        k++;
                ErrMsg err = {};
                if (layer_fetch_chunks(p->ls, d, p->ids + i, k, &err) < 0)
                        break; /* the registry is unwell: reads will tell */
                sent += idx->chunks[p->ids[i + k - 1]].blob_end - idx->chunks[p->ids[i]].blob_offset;
                i += k;
                if (i > p->n_landmark && p->bytes_per_s &&
                    !pace_until(p, start + sent * 1000000000ull / p->bytes_per_s))
                        break;
        }
        chunk_decoder_free(d);
        return NULL;
}

int prefetch_start(LayerSource *ls, bool background, uint64_t bytes_per_s, Prefetch **ret) {
        *ret = NULL;
        const Index *idx = ls->layer->index;
        if (!ls->cache || !ls->blob_order)
                return 0;
        uint64_t landmark = idx->no_prefetch ? 0 : idx->prefetch_end;
        if (landmark == 0 && !background)
                return 0;
        Prefetch *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->ls = ls;
        p->bytes_per_s = bytes_per_s;
        p->ids = malloc(MAX(idx->n_chunks, (size_t) 1) * sizeof(*p->ids));
        if (!p->ids) {
                free(p);
                return -ENOMEM;
        }
        /* every chunk that is missing, in blob order: those before the
         * landmark first (all of them with the background fetch) */
        for (size_t pos = 0; pos < idx->n_chunks; pos++) {
                uint32_t c = ls->blob_order[pos];
                bool before = idx->chunks[c].blob_end <= landmark;
                if (!before && !background)
                        break;
                if (cache_layer_chunk_present(ls->cache, c))
                        continue;
                p->ids[p->n++] = c;
                if (before)
                        p->n_landmark = p->n;
        }
        if (p->n == 0) {
                free(p->ids);
                free(p);
                return 0;
        }
        int r = -pthread_create(&p->thread, NULL, prefetch_main, p);
        if (r < 0) {
                free(p->ids);
                free(p);
                return r;
        }
        *ret = p;
        return 0;
}

void prefetch_stop(Prefetch *p) {
        if (!p)
                return;
        __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
        pthread_join(p->thread, NULL);
        free(p->ids);
        free(p);
}
