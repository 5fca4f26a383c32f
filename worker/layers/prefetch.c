/* A registry layer's fetch thread (prefetch.h), started by the open and
 * joined by the close. First the mount-time prefetch: the chunks whose
 * compressed bytes end before the landmark and are not cached yet, in
 * blob order (LayerSource.blob_order), in pieces of at most 4 MiB,
 * looking between pieces whether it should stop. Then, at SCHED_IDLE
 * (only when the CPUs have nothing else to do), until the layer closes:
 * the directory sweeps readers ask for (sweep.c) as they come, and with
 * the background fetch the rest of the layer in blob order, a piece per
 * turn (turns.c), within a bandwidth budget. Never logs: what it could
 * not fetch, a read fetches later (and reports). */
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
/* A background piece: a reader's request shares the link with at most
 * this much of it. On the bench's 20 ms, 100 Mbit/s link, 14 stdlib
 * imports took 1351-1380 ms with 512 KiB, 1418 ms with 256 KiB and
 * 1476 ms with 1 MiB; two pieces at a time over all layers 1434 ms, and
 * none while a reader fetched 1454 ms (the link idles through each
 * request's round trip). */
#define BACKGROUND_PIECE (512u << 10)
/* At most this many chunks in a sweep's or background piece. */
#define PIECE_CHUNKS 4096
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
        bool stop;               /* atomic; then waiter is woken */
        LayerWaiter waiter;
        uint32_t *ids;           /* owned: the landmark's chunks, blob order
                                  * (then each piece's) */
        size_t n;                /* before the landmark, or a start file */
        size_t cap;              /* ids' room */
        bool background;         /* then the rest of the layer */
        uint64_t bytes_per_s;    /* the background fetch's budget; 0: none */
        size_t low;              /* the background fetch is past blob_order[0..low) */
        /* the start files past the landmark, when it has files of its own:
         * asked of the readahead as the landmark's first piece goes out */
        uint64_t start_from, start_len;
};

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static bool stopped(Prefetch *p) {
        return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

/* Sleeps in small steps until t_ns, or until told to stop (false) or
 * that a sweep waits. */
static bool pace_until(Prefetch *p, uint64_t t_ns) {
        while (now_ns() < t_ns) {
                if (stopped(p))
                        return false;
                if (__atomic_load_n(&p->ls->sweep_wanted, __ATOMIC_ACQUIRE))
                        return true;
                struct timespec ts = { .tv_nsec = 10 * 1000000 };
                nanosleep(&ts, NULL);
        }
        return !stopped(p);
}

/* The first missing chunk in blob_order[from..), or SIZE_MAX. */
static size_t first_missing(LayerSource *ls, size_t from) {
        for (size_t pos = from; pos < ls->layer->index->n_chunks; pos++)
                if (!cache_layer_chunk_present(ls->cache, ls->blob_order[pos]))
                        return pos;
        return SIZE_MAX;
}

/* The background fetch's next piece, into p->ids: the first missing
 * chunk in blob order and the missing ones after it, within
 * BACKGROUND_PIECE of the blob (one request per run of back-to-back
 * chunks). Returns the count, 0 when the layer is whole. In one pass: a
 * chunk that could not be kept (a full disk) is not fetched again.
 * (Going on from where the readers' last fetch ended instead fetched 1.5
 * MiB more and took 6% longer for the imports: the readers' neighbours
 * are there already.) */
static size_t background_piece(Prefetch *p) {
        LayerSource *ls = p->ls;
        const Index *idx = ls->layer->index;
        size_t pos = first_missing(ls, p->low), n = 0;
        if (pos == SIZE_MAX)
                return 0;
        uint64_t from = idx->chunks[ls->blob_order[pos]].blob_offset;
        for (; pos < idx->n_chunks && n < PIECE_CHUNKS; pos++) {
                const IndexChunk *c = &idx->chunks[ls->blob_order[pos]];
                if (n > 0 && c->blob_end - from > BACKGROUND_PIECE)
                        break;
                if (!cache_layer_chunk_present(ls->cache, ls->blob_order[pos]))
                        p->ids[n++] = ls->blob_order[pos];
        }
        p->low = pos;
        return n;
}

/* The mount-time prefetch: false when it was stopped. */
static bool landmark_fetch(Prefetch *p, ChunkDecoder *d) {
        const Index *idx = p->ls->layer->index;
        uint64_t opens_first_until = now_ns() + OPENS_FIRST_MS * 1000000ull;
        for (size_t i = 0; i < p->n;) {
                layer_env_wait_opens(p->env, opens_first_until, &p->stop);
                if (stopped(p))
                        return false;
                if (p->start_len) {
                        layer_source_fetch_async(p->ls, p->start_from, p->start_len);
                        p->start_len = 0;
                }
                /* one request: ascending neighbours within PIECE */
                size_t k = 1;
                while (i + k < p->n && idx->chunks[p->ids[i + k]].blob_end - idx->chunks[p->ids[i]].blob_offset <= PIECE)
                        k++;
                ErrMsg err = {};
                if (layer_fetch_chunks(p->ls, d, p->ids + i, k, &err) < 0) {
                        p->background = false; /* the registry is unwell: reads will tell */
                        return true;
                }
                i += k;
        }
        return true;
}

static void *prefetch_main(void *userdata) {
        Prefetch *p = userdata;
        LayerSource *ls = p->ls;
        const Index *idx = ls->layer->index;
        ChunkDecoder *d = NULL;
        bool go = chunk_decoder_new(&d) >= 0 && landmark_fetch(p, d);
        if (p->n > 0)
                layer_env_landmark_end(p->env);
        /* from here on a piece at a time: the landmark's list is done */
        if (p->cap > PIECE_CHUNKS) {
                uint32_t *ids = realloc(p->ids, PIECE_CHUNKS * sizeof(*ids));
                if (ids) {
                        p->ids = ids;
                        p->cap = PIECE_CHUNKS;
                }
        }
        /* the rest is guesswork: only when no one else wants the CPU */
        struct sched_param sp = {};
        (void) pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
        uint64_t start = now_ns(), sent = 0, next_at = 0; /* next_at: within the budget */
        while (go && !stopped(p)) {
                /* a decoder holds a chunk's worth of memory (4 MiB by
                 * default): none while this thread waits, which it does
                 * for most of a mounted layer's life */
                if (!d && chunk_decoder_new(&d) < 0)
                        break; /* out of memory: reads will fetch what they need */
                ErrMsg err = {};
                size_t n = layer_sweep_piece(ls, p->ids, MIN(p->cap, (size_t) PIECE_CHUNKS));
                if (n > 0) {
                        (void) layer_fetch_chunks(ls, d, p->ids, n, &err); /* a guess: reads will tell */
                        continue;
                }
                d = chunk_decoder_free(d);
                if (!p->background) {
                        go = layer_env_sleep(p->env, &p->waiter, &p->stop, &ls->sweep_wanted);
                        continue;
                }
                uint64_t not_before = MAX(next_at, __atomic_load_n(&p->env->walking_until, __ATOMIC_RELAXED));
                if (now_ns() < not_before) {
                        go = pace_until(p, not_before);
                        continue;
                }
                int t = layer_env_background_take(p->env, &p->waiter, &p->stop, &ls->sweep_wanted);
                if (t != 1) {
                        go = t == 2;
                        continue;
                }
                n = background_piece(p);
                int r = n > 0 && chunk_decoder_new(&d) >= 0 ? layer_fetch_chunks(ls, d, p->ids, n, &err) : -ENOMEM;
                layer_env_background_give(p->env);
                if (n == 0 || r < 0) {
                        p->background = false; /* whole, or the registry is unwell: reads will tell */
                        continue;
                }
                sent += idx->chunks[p->ids[n - 1]].blob_end - idx->chunks[p->ids[0]].blob_offset;
                if (p->bytes_per_s)
                        next_at = start + sent * 1000000000ull / p->bytes_per_s;
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
        const Index *idx = ls->layer->index;
        if (!ls->cache || !ls->blob_order)
                return 0;
        uint64_t landmark = !env->prefetch || idx->no_prefetch ? 0 : idx->prefetch_end;
        ChunkSpan start[ELEMENTSOF(START_FILES)];
        size_t n_start = env->prefetch ? start_file_chunks(idx, start) : 0;
        Prefetch *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->ls = ls;
        p->env = env;
        p->bytes_per_s = env->background_bytes_per_s;
        p->cap = MAX(idx->n_chunks, (size_t) PIECE_CHUNKS);
        p->ids = malloc(p->cap * sizeof(*p->ids));
        if (!p->ids) {
                free(p);
                return -ENOMEM;
        }
        /* every chunk that is missing before the landmark, and the start
         * files', in blob order (then the background fetch picks its
         * pieces as it goes) */
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
                                        if (!cache_layer_chunk_present(ls->cache, ls->blob_order[q]))
                                                p->ids[p->n++] = ls->blob_order[q];
                        p->ids[p->n++] = c;
                }
                prev = pos;
        }
        p->background = env->background && first_missing(ls, 0) != SIZE_MAX;
        layer_waiter_init(&p->waiter);
        if (p->n > 0)
                layer_env_landmark_begin(env);
        int r = -pthread_create(&p->thread, NULL, prefetch_main, p);
        if (r < 0) {
                if (p->n > 0)
                        layer_env_landmark_end(env);
                layer_waiter_done(&p->waiter);
                free(p->ids);
                free(p);
                return r;
        }
        *ret = p;
        return 0;
}

void prefetch_wake(Prefetch *p) {
        layer_env_wake(p->env, &p->waiter);
}

void prefetch_stop(Prefetch *p) {
        if (!p)
                return;
        __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
        prefetch_wake(p);
        pthread_join(p->thread, NULL);
        layer_waiter_done(&p->waiter);
        free(p->ids);
        free(p);
}
