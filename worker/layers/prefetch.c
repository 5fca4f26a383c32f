/* The mount-time prefetch (prefetch.h). One thread per prefetching
 * layer, started by the open and joined by the close. It lists the chunks
 * whose compressed bytes end before the landmark and are not cached yet,
 * in blob order (LayerSource.blob_order), and fetches them in pieces of at most 16 MiB, checking
 * between pieces whether it should stop. Never logs: what it could not
 * fetch, a read fetches later (and reports). */
#include "worker/layers/prefetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/layers/layers.h"

#define PIECE (16u << 20)

struct Prefetch {
        LayerSource *ls;         /* borrowed; outlives us */
        pthread_t thread;
        bool stop;               /* atomic */
        uint32_t *ids;           /* owned: the chunks to fetch, blob order */
        size_t n;
};

static void *prefetch_main(void *userdata) {
        Prefetch *p = userdata;
        const Index *idx = p->ls->layer->index;
        ChunkDecoder *d = NULL;
        if (chunk_decoder_new(&d) < 0)
                return NULL;
        size_t i = 0;
        while (i < p->n && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
                size_t k = 1;
                while (i + k < p->n && idx->chunks[p->ids[i + k]].blob_end - idx->chunks[p->ids[i]].blob_offset <= PIECE)
                        k++;
                ErrMsg err = {};
                if (layer_fetch_chunks(p->ls, d, p->ids + i, k, &err) < 0)
                        break; /* the registry is unwell: reads will tell */
                i += k;
        }
        chunk_decoder_free(d);
        return NULL;
}

int prefetch_start(LayerSource *ls, Prefetch **ret) {
        *ret = NULL;
        const Index *idx = ls->layer->index;
        if (!ls->cache || !ls->blob_order || idx->no_prefetch || idx->prefetch_end == 0)
                return 0;
        Prefetch *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->ls = ls;
        p->ids = malloc(MAX(idx->n_chunks, (size_t) 1) * sizeof(*p->ids));
        if (!p->ids) {
                free(p);
                return -ENOMEM;
        }
        /* every chunk before the landmark that is missing, in blob order */
        for (size_t pos = 0; pos < idx->n_chunks; pos++) {
                uint32_t c = ls->blob_order[pos];
                if (idx->chunks[c].blob_end > idx->prefetch_end)
                        break;
                if (!cache_layer_chunk_present(ls->cache, c))
                        p->ids[p->n++] = c;
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
