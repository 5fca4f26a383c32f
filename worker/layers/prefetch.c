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
/* How long a prefetch lets layer opens go first, over all its requests:
 * containerd's pull waits for each layer's TOC, while the container that
 * reads what is prefetched starts only after the pull. */
#define OPENS_FIRST_MS 1000
/* Chunks between two prefetched ones less than this apart in the blob are
 * fetched too: one request instead of two. */
#define GAP_FILL (64u << 10)
/* The start files are fetched in one request when they lie within this. */
#define START_NEAR (256u << 10)

struct Prefetch {
        LayerSource *ls;         /* borrowed; outlives us */
        LayerEnv *env;           /* borrowed; outlives us */
        pthread_t thread;
        bool stop;               /* atomic */
        uint32_t *ids;           /* owned: the chunks to fetch, blob order */
        size_t n;
        size_t n_landmark;       /* ids[0..n_landmark): before the landmark, or a start file */
        uint64_t bytes_per_s;    /* the background fetch's budget; 0: none */
        /* the start files past the landmark, when it has files of its own:
         * asked of the readahead as the landmark's first piece goes out */
        uint64_t start_from, start_len;
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
        uint64_t opens_first_until = start + OPENS_FIRST_MS * 1000000ull;
        while (i < p->n && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
                layer_env_wait_opens(p->env, opens_first_until, &p->stop);
                if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
                        break;
                if (p->start_len) {
                        layer_source_fetch_async(p->ls, p->start_from, p->start_len);
                        p->start_len = 0;
                }
                if (i == p->n_landmark) {
                        /* the rest is background work: only when no one
                         * else wants the CPU, and within the budget */
                        struct sched_param sp = {};
                        (void) pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
                        start = now_ns();
                        sent = 0;
                }
                /* one request: ascending neighbours within PIECE, never
                 * across from the first list to the rest */
                size_t end = i < p->n_landmark ? p->n_landmark : p->n;
                size_t k = 1;
                while (i + k < end && idx->chunks[p->ids[i + k]].blob_end - idx->chunks[p->ids[i]].blob_offset <= PIECE)
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

/* Files every container start reads, whatever the image's prefetch list
 * says: containerd (WithAdditionalGIDs) and runc (the user lookup) read
 * the rootfs' user and group databases before the container runs. They
 * are fetched at mount, alone in a layer without a landmark or with
 * .no.prefetch.landmark (which stops the landmark's prefetch, not this),
 * else in a request of their own made with the landmark's first: one
 * small request at mount instead of a round trip in the container's
 * start. Not in the landmark's request: they lie past the landmark's
 * files, so they would arrive last, and containerd's read of
 * /etc/passwd waited for all of it (40 ms of a 260 ms cold start on
 * loopback, the whole 4 MiB transfer on a slow link). */
static const char *const START_FILES[] = { "etc/passwd", "etc/group" };

typedef struct ChunkSpan {
        uint32_t first, end;
} ChunkSpan;

static size_t start_file_chunks(const Index *idx, ChunkSpan out[static ELEMENTSOF(START_FILES)]) {
        size_t n = 0;
        for (size_t i = 0; i < ELEMENTSOF(START_FILES); i++) {
                uint64_t ino;
                if (index_lookup_path(idx, START_FILES[i], &ino) < 0)
                        continue;
                const IndexInode *in = index_inode(idx, ino);
                if (in && S_ISREG(in->mode) && in->count > 0)
                        out[n++] = (ChunkSpan) { in->first, in->first + in->count };
        }
        return n;
}

static bool in_spans(const ChunkSpan *spans, size_t n, uint32_t c) {
        for (size_t i = 0; i < n; i++)
                if (c >= spans[i].first && c < spans[i].end)
                        return true;
        return false;
}

int prefetch_start(LayerSource *ls, LayerEnv *env, Prefetch **ret) {
        *ret = NULL;
        bool background = env->background;
        const Index *idx = ls->layer->index;
        if (!ls->cache || !ls->blob_order)
                return 0;
        uint64_t landmark = idx->no_prefetch ? 0 : idx->prefetch_end;
        ChunkSpan start[ELEMENTSOF(START_FILES)];
        size_t n_start = start_file_chunks(idx, start);
        if (landmark == 0 && n_start == 0 && !background)
                return 0;
        Prefetch *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->ls = ls;
        p->env = env;
        p->bytes_per_s = env->background_bytes_per_s;
        p->ids = malloc(MAX(idx->n_chunks, (size_t) 1) * sizeof(*p->ids));
        if (!p->ids) {
                free(p);
                return -ENOMEM;
        }
        /* every chunk that is missing, in blob order: those before the
         * landmark and the start files' first, then (with the background
         * fetch) the rest, in blob order again */
        bool *taken = calloc(MAX(idx->n_chunks, (size_t) 1), sizeof(*taken));
        if (!taken) {
                free(p->ids);
                free(p);
                return -ENOMEM;
        }
        /* with files of the landmark's own, the start files past it go
         * to the readahead, in one ask when they lie within START_NEAR */
        uint64_t s_from = UINT64_MAX, s_end = 0;
        bool landmark_files = false;
        for (size_t pos = 0; pos < idx->n_chunks; pos++) {
                uint32_t c = ls->blob_order[pos];
                if (cache_layer_chunk_present(ls->cache, c))
                        continue;
                if (idx->chunks[c].blob_end <= landmark)
                        landmark_files = true;
                else if (in_spans(start, n_start, c)) {
                        s_from = MIN(s_from, idx->chunks[c].blob_offset);
                        s_end = MAX(s_end, idx->chunks[c].blob_end);
                }
        }
        if (landmark_files && s_end > s_from && s_end - s_from <= START_NEAR) {
                p->start_from = s_from;
                p->start_len = s_end - s_from;
                n_start = 0;
        }
        size_t prev = SIZE_MAX;
        for (size_t pos = 0; pos < idx->n_chunks; pos++) {
                uint32_t c = ls->blob_order[pos];
                if (idx->chunks[c].blob_end > landmark && !in_spans(start, n_start, c))
                        continue;
                if (!cache_layer_chunk_present(ls->cache, c)) {
                        /* a start file just past the landmark: the few
                         * chunks in between come along, one request
                         * instead of two */
                        if (prev != SIZE_MAX && pos > prev + 1 &&
                            idx->chunks[c].blob_offset - idx->chunks[ls->blob_order[prev]].blob_end <= GAP_FILL)
                                for (size_t q = prev + 1; q < pos; q++)
                                        if (!cache_layer_chunk_present(ls->cache, ls->blob_order[q])) {
                                                p->ids[p->n++] = ls->blob_order[q];
                                                taken[ls->blob_order[q]] = true;
                                        }
                        p->ids[p->n++] = c;
                        taken[c] = true;
                }
                prev = pos;
        }
        p->n_landmark = p->n;
        for (size_t pos = 0; background && pos < idx->n_chunks; pos++) {
                uint32_t c = ls->blob_order[pos];
                if (!taken[c] && !cache_layer_chunk_present(ls->cache, c))
                        p->ids[p->n++] = c;
        }
        free(taken);
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
