/* Reads of a LayerSource (layers.h): through the chunk cache when the
 * layer has one, else straight from the blob (layer_read()). Serving
 * threads, and the prefetch thread through layer_fetch_chunks().
 *
 * A miss fetches every missing chunk of the range, and of the next
 * READAHEAD bytes of the same file, with one range request per run of
 * consecutive missing chunks (a file's chunks are consecutive in the
 * blob, and eStargz writes chunk members back to back), decodes and verifies each chunk, stores it and copies what the
 * reader asked for. The chunks that follow in the blob come along in
 * the same request, or, past NEIGHBOURS_ASYNC for a reader that does
 * not walk the blob, in a request of the layer's readahead thread made
 * at the same time. A chunk is handed
 * to the threads waiting for it as soon as it is stored, before the
 * rest of its span. A chunk that cannot be stored (a full disk) is still
 * answered from memory; a chunk that cannot be verified is never
 * answered. Two threads missing the same chunk both fetch it: the cache
 * keeps one copy. */
#include "worker/layers/layers.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/estargz/chunk.h"
#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/fetch/registry.h"
#include "worker/layers/prefetch.h"

/* Past the end of a read, the file's next chunks are fetched too. */
#define READAHEAD (1u << 20)
/* One range request fetches at most this many compressed bytes. */
#define RUN_MAX (16u << 20)
/* A miss brings along the chunks that follow it in the blob: from
 * NEIGHBOURS_MIN bytes, growing up to NEIGHBOURS_MAX_SPAN for a reader
 * that walks the blob, up to NEIGHBOURS_NEAR_SPAN for one whose misses
 * stay within NEIGHBOURS_NEAR of each other, and at most NEIGHBOURS_MAX
 * chunks. */
#define NEIGHBOURS_MIN (128u << 10)
#define NEIGHBOURS_MAX_SPAN (8u << 20)
#define NEIGHBOURS_NEAR (2u << 20)
#define NEIGHBOURS_NEAR_SPAN (1u << 20)
#define NEIGHBOURS_MAX 4096
/* Neighbours of at least this many bytes are fetched by the readahead
 * thread, in a request of their own, while the reader's own chunks come
 * (fewer bytes to wait for on a slow link, and the decoding of the
 * neighbours runs on another core). */
#define NEIGHBOURS_ASYNC (256u << 10)

/* Claims ids[0..n) for fetching, as far as no other thread fetches them
 * already: returns how many (a prefix), or 0 after waiting for the
 * thread that fetches ids[0] (then look at the cache again: it has the
 * chunk, or that fetch failed and it is ours to try). */
static size_t claim(LayerSource *ls, const uint32_t *ids, size_t n) {
        if (!ls->fetching)
                return n;
        pthread_mutex_lock(&ls->fetch_lock);
        if (ls->fetching[ids[0]]) {
                /* bounded: every fetch ends by its deadline */
                while (ls->fetching[ids[0]])
                        pthread_cond_wait(&ls->fetch_cond, &ls->fetch_lock);
                pthread_mutex_unlock(&ls->fetch_lock);
                return 0;
        }
        /* a chunk cached since the caller looked (fetching is cleared
         * only after the chunk was stored) is not fetched again: 0 sends
         * the caller to look again */
        size_t k = 0;
        while (k < n && !ls->fetching[ids[k]] && !cache_layer_chunk_present(ls->cache, ids[k]))
                ls->fetching[ids[k++]] = 1;
        pthread_mutex_unlock(&ls->fetch_lock);
        return k;
}

static void unclaim(LayerSource *ls, const uint32_t *ids, size_t n) {
        if (!ls->fetching)
                return;
        pthread_mutex_lock(&ls->fetch_lock);
        for (size_t i = 0; i < n; i++)
                ls->fetching[ids[i]] = 0;
        pthread_cond_broadcast(&ls->fetch_cond);
        pthread_mutex_unlock(&ls->fetch_lock);
}

/* Fetches chunks ids[0..n) of ls's index (ascending blob offsets, their
 * compressed ranges one contiguous span of the blob) with one range
 * request, verifies and stores each, and copies into want the part of
 * each of the first n_want chunks (the reader's file's) that falls in
 * [want_off, want_off + want_len) of its file. The others are neighbours
 * in the blob, of other files: stored only. */
static int fetch_span(LayerSource *ls, ChunkDecoder *d, const uint32_t *ids, size_t n, size_t n_want,
                      uint64_t want_off, size_t want_len, uint8_t *want, ErrMsg *err) {
        const Index *idx = ls->layer->index;
        const IndexChunk *c0 = &idx->chunks[ids[0]], *cn = &idx->chunks[ids[n - 1]];
        if (cn->blob_end < c0->blob_offset || cn->blob_end - c0->blob_offset > SIZE_MAX / 2)
                return errmsg_set(err, -EBADMSG, "chunks %" PRIu32 "..%" PRIu32 " are not in blob order", ids[0],
                                  ids[n - 1]);
        size_t span = (size_t) (cn->blob_end - c0->blob_offset);
        _cleanup_free_ uint8_t *comp = malloc(MAX(span, (size_t) 1));
        if (!comp)
                return -ENOMEM;
        ssize_t got = ls->blob ? fetch_blob_read(ls->blob, comp, span, c0->blob_offset, err)
                               : ls->layer->read_at(ls->layer->userdata, comp, span, c0->blob_offset);
        if (got < 0)
                return errmsg_prefix(err, (int) got, "blob bytes %" PRIu64 "+%zu", c0->blob_offset, span);
        if ((size_t) got != span)
                return errmsg_set(err, -EIO, "the blob ends at %" PRIu64 ", inside chunk data",
                                  c0->blob_offset + (uint64_t) got);
        for (size_t i = 0; i < n; i++) {
                const IndexChunk *c = &idx->chunks[ids[i]];
                if (c->blob_offset < c0->blob_offset || c->blob_end > cn->blob_end)
                        return errmsg_set(err, -EBADMSG, "chunk %" PRIu32 " is outside the span fetched", ids[i]);
                uint8_t *out = chunk_decoder_slot(d, (size_t) c->size);
                if (!out)
                        return -ENOMEM;
                int r = chunk_decode(d, ls->layer->footer.format, idx, c, comp + (c->blob_offset - c0->blob_offset),
                                     (size_t) (c->blob_end - c->blob_offset), out, ls->layer->verify, err);
                if (r < 0)
                        return errmsg_prefix(err, r, "chunk at blob offset %" PRIu64, c->blob_offset);
                /* a chunk not stored (a full disk) is still answered below */
                (void) cache_layer_put(ls->cache, ids[i], out, (size_t) c->size);
                /* a reader waiting for this chunk need not wait for the
                 * rest of the span (our caller unclaims it again) */
                if (i + 1 < n)
                        unclaim(ls, ids + i, 1);
                if (want && i < n_want) {
                        uint64_t lo = MAX(want_off, c->file_offset);
                        uint64_t hi = MIN(want_off + want_len, c->file_offset + c->size);
                        if (lo < hi)
                                memcpy(want + (lo - want_off), out + (lo - c->file_offset), (size_t) (hi - lo));
                }
        }
        return 0;
}

/* How many of ids[0..n) one request fetches: at most RUN_MAX bytes of
 * blob, and only a contiguous span. */
static size_t span_len(const Index *idx, const uint32_t *ids, size_t n) {
        size_t k = 1;
        while (k < n && idx->chunks[ids[k]].blob_offset == idx->chunks[ids[k - 1]].blob_end &&
               idx->chunks[ids[k]].blob_end - idx->chunks[ids[0]].blob_offset <= RUN_MAX)
                k++;
        return k;
}

/* The chunks that follow ids[n - 1] in the blob, back to back and not
 * cached, appended (up to cap ids and the layer's readahead span of
 * blob in all): files next to each other in a layer are mostly read
 * together (a directory's files, a package's modules), so one request
 * brings the neighbours of a small file along. The span starts small
 * (a random reader, like an interpreter importing modules, pays little
 * for it) and grows fourfold while each miss starts where the last fetch ended
 * (a reader walking the layer, like a copy, then streams it in large
 * requests), as the kernel's readahead does. It doubles, up to
 * NEIGHBOURS_NEAR_SPAN, while misses land near the last fetch, before
 * or after it: an interpreter importing modules jumps around one
 * directory (__pycache__), and each request saved is a round trip to
 * the registry, while the bytes are mostly the directory's anyway.
 * Returns the new count; *ret_span is the span, for the caller to keep
 * (ra_span, ra_end) once the fetch is its own. */
static size_t add_neighbours(LayerSource *ls, uint32_t *ids, size_t n, size_t cap, bool *ret_walking,
                             uint64_t *ret_span) {
        const Index *idx = ls->layer->index;
        *ret_walking = false;
        *ret_span = 0;
        if (!ls->blob_order)
                return n;
        uint64_t start = idx->chunks[ids[0]].blob_offset;
        uint64_t last = __atomic_load_n(&ls->ra_end, __ATOMIC_RELAXED);
        uint64_t span = __atomic_load_n(&ls->ra_span, __ATOMIC_RELAXED);
        if (last && start >= last && start - last <= NEIGHBOURS_MIN) {
                span = MIN(span * 4, (uint64_t) NEIGHBOURS_MAX_SPAN);
                *ret_walking = true;
        } else if (last && (start >= last ? start - last : last - start) <= NEIGHBOURS_NEAR)
                span = span < NEIGHBOURS_NEAR_SPAN / 2 ? MAX(span * 2, (uint64_t) NEIGHBOURS_MIN)
                                                       : MAX(span, (uint64_t) NEIGHBOURS_NEAR_SPAN);
        else
                span = NEIGHBOURS_MIN;
        for (size_t p = ls->blob_pos[ids[n - 1]] + 1; n < cap && p < idx->n_chunks; p++) {
                const IndexChunk *prev = &idx->chunks[ids[n - 1]], *c = &idx->chunks[ls->blob_order[p]];
                if (c->blob_offset != prev->blob_end || c->blob_end - start > span ||
                    cache_layer_chunk_present(ls->cache, ls->blob_order[p]))
                        break;
                ids[n++] = ls->blob_order[p];
        }
        *ret_span = span;
        return n;
}

static int by_blob_offset(const void *a, const void *b, void *userdata) {
        const Index *idx = userdata;
        uint64_t x = idx->chunks[*(const uint32_t *) a].blob_offset, y = idx->chunks[*(const uint32_t *) b].blob_offset;
        return x < y ? -1 : x > y;
}

void layer_chunks_sort(const Index *idx, uint32_t *ids, size_t n) {
        qsort_r(ids, n, sizeof(*ids), by_blob_offset, (void *) idx);
}

int layer_source_sort_chunks(LayerSource *ls) {
        const Index *idx = ls->layer->index;
        if (idx->n_chunks == 0 || idx->n_chunks > UINT32_MAX)
                return 0;
        ls->blob_order = malloc(idx->n_chunks * sizeof(uint32_t));
        ls->blob_pos = malloc(idx->n_chunks * sizeof(uint32_t));
        if (!ls->blob_order || !ls->blob_pos) {
                free(TAKE_PTR(ls->blob_order));
                free(TAKE_PTR(ls->blob_pos));
                return -ENOMEM;
        }
        for (size_t i = 0; i < idx->n_chunks; i++)
                ls->blob_order[i] = (uint32_t) i;
        layer_chunks_sort(idx, ls->blob_order, idx->n_chunks);
        for (size_t p = 0; p < idx->n_chunks; p++)
                ls->blob_pos[ls->blob_order[p]] = (uint32_t) p;
        ls->fetching = calloc(idx->n_chunks, 1);
        if (!ls->fetching)
                return -ENOMEM;
        pthread_mutex_init(&ls->fetch_lock, NULL);
        pthread_cond_init(&ls->fetch_cond, NULL);
        return 0;
}

int layer_fetch_chunks(LayerSource *ls, ChunkDecoder *d, const uint32_t *ids, size_t n, ErrMsg *err) {
        while (n > 0) {
                if (cache_layer_chunk_present(ls->cache, ids[0])) {
                        ids++, n--;
                        continue;
                }
                size_t k = claim(ls, ids, span_len(ls->layer->index, ids, n));
                if (k == 0)
                        continue; /* another thread fetched it (or failed: ours now) */
                int r = fetch_span(ls, d, ids, k, 0, 0, 0, NULL, err);
                unclaim(ls, ids, k);
                if (r < 0)
                        return r;
                ids += k;
                n -= k;
        }
        return 0;
}

/* ---- asynchronous readahead ----
 * A reader that walks the blob (the neighbours' span has grown past
 * READAHEAD_ASYNC) and reads into the second half of what the last fetch
 * brought gets the next span fetched by a thread of the layer's own
 * while it reads this one, so that a copy of the layer streams instead
 * of stopping at every span. Two threads take the asks, so that the
 * next span's request is on the wire while the last one is decoded;
 * they also fetch the neighbours of a miss that are not worth waiting
 * for (NEIGHBOURS_ASYNC). While the last miss was a walking reader's
 * (not one that jumps around a directory, like an interpreter's
 * imports: for those it fetched 1.7 MiB more), a span that the miss or
 * an ask cut short (more of the blob missing right after it) has the
 * next one asked for as its own request goes out, up to RA_CHAIN spans
 * ahead of the reader's last ask: the link never idles for a round trip
 * between two spans (on a 20 ms, 100 Mbit/s link a copy of the layer
 * had waited 30-165 ms before each of its requests). */
#define READAHEAD_ASYNC (1u << 20)
#define RA_CHAIN 2

/* Under fetch_lock: asks for the span after one that ends at `end`, from
 * a fetch under way, unless a newer ask waits or the chain is long
 * enough already. */
static void chain_locked(LayerSource *ls, uint64_t end, uint64_t span) {
        if (ls->ra_stop || ls->ra_started == 0 || ls->ra_want || ls->ra_chain >= RA_CHAIN ||
            !__atomic_load_n(&ls->ra_walking, __ATOMIC_RELAXED) ||
            __atomic_load_n(&ls->ra_from, __ATOMIC_RELAXED) >= end)
                return;
        ls->ra_chain++;
        __atomic_store_n(&ls->ra_from, end, __ATOMIC_RELAXED);
        ls->ra_want = MIN(span * 2, (uint64_t) NEIGHBOURS_MAX_SPAN);
        pthread_cond_broadcast(&ls->fetch_cond);
}

static void *readahead_main(void *userdata) {
        LayerSource *ls = userdata;
        ChunkDecoder *d = NULL;
        if (chunk_decoder_new(&d) < 0)
                return NULL;
        const Index *idx = ls->layer->index;
        uint32_t *ids = malloc(NEIGHBOURS_MAX * sizeof(*ids));
        pthread_mutex_lock(&ls->fetch_lock);
        while (ids && !ls->ra_stop) {
                if (!ls->ra_want) {
                        pthread_cond_wait(&ls->fetch_cond, &ls->fetch_lock);
                        continue;
                }
                uint64_t from = __atomic_load_n(&ls->ra_from, __ATOMIC_RELAXED), span = ls->ra_want;
                ls->ra_want = 0;
                pthread_mutex_unlock(&ls->fetch_lock);
                /* the missing chunks from `from` on, back to back, within span */
                size_t n = 0, lo = 0, hi = idx->n_chunks;
                uint64_t start = 0, prev_end = 0;
                bool cut = false; /* more is missing right after the batch */
                while (lo < hi) { /* the first chunk at or after `from` */
                        size_t mid = lo + (hi - lo) / 2;
                        if (idx->chunks[ls->blob_order[mid]].blob_offset < from)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                for (size_t p = lo; p < idx->n_chunks && n < NEIGHBOURS_MAX; p++) {
                        const IndexChunk *c = &idx->chunks[ls->blob_order[p]];
                        bool present = cache_layer_chunk_present(ls->cache, ls->blob_order[p]);
                        if (n == 0 && present && c->blob_end - from <= span)
                                continue; /* a reader was quicker */
                        if (n == 0)
                                start = c->blob_offset;
                        else if (c->blob_offset != prev_end)
                                break;
                        if (present)
                                break;
                        if (n > 0 && (c->blob_end - start > span || n == NEIGHBOURS_MAX - 1)) {
                                cut = true;
                                break;
                        }
                        ids[n++] = ls->blob_order[p];
                        prev_end = c->blob_end;
                }
                if (cut) {
                        pthread_mutex_lock(&ls->fetch_lock);
                        chain_locked(ls, prev_end, span);
                        pthread_mutex_unlock(&ls->fetch_lock);
                }
                if (n > 0) {
                        __atomic_store_n(&ls->ra_end, prev_end, __ATOMIC_RELAXED);
                        ErrMsg ignored = {};
                        (void) layer_fetch_chunks(ls, d, ids, n, &ignored);
                }
                pthread_mutex_lock(&ls->fetch_lock);
        }
        pthread_mutex_unlock(&ls->fetch_lock);
        free(ids);
        chunk_decoder_free(d);
        return NULL;
}

/* Whether the chunk right after chunk id in the blob is missing and
 * back to back with it. */
static bool missing_after(LayerSource *ls, uint32_t id) {
        const Index *idx = ls->layer->index;
        size_t p = (size_t) ls->blob_pos[id] + 1;
        return p < idx->n_chunks && idx->chunks[ls->blob_order[p]].blob_offset == idx->chunks[id].blob_end &&
               !cache_layer_chunk_present(ls->cache, ls->blob_order[p]);
}

/* Asks the readahead thread for the missing chunks from blob offset
 * from on, back to back, within want bytes; an ask it has not started
 * on yet is replaced. */
static void readahead_ask(LayerSource *ls, uint64_t from, uint64_t want) {
        pthread_mutex_lock(&ls->fetch_lock);
        while (ls->ra_started < ELEMENTSOF(ls->ra_threads) && !ls->ra_stop &&
               pthread_create(&ls->ra_threads[ls->ra_started], NULL, readahead_main, ls) == 0)
                ls->ra_started++;
        if (ls->ra_started > 0 && ls->ra_from != from) {
                __atomic_store_n(&ls->ra_from, from, __ATOMIC_RELAXED);
                ls->ra_want = want;
                ls->ra_chain = 0;
                pthread_cond_broadcast(&ls->fetch_cond);
        }
        pthread_mutex_unlock(&ls->fetch_lock);
}

void layer_source_fetch_async(LayerSource *ls, uint64_t from, uint64_t len) {
        if (ls->fetching)
                readahead_ask(ls, from, len);
}

static void readahead_maybe(LayerSource *ls, uint64_t ino, uint64_t last_byte) {
        uint64_t span = __atomic_load_n(&ls->ra_span, __ATOMIC_RELAXED);
        uint64_t end = __atomic_load_n(&ls->ra_end, __ATOMIC_RELAXED);
        if (!ls->fetching || span < READAHEAD_ASYNC || end == 0)
                return;
        int64_t ci = index_chunk_find(ls->layer->index, ino, last_byte);
        if (ci < 0)
                return;
        uint64_t at = ls->layer->index->chunks[ci].blob_end;
        if (at > end || end - at > span / 2)
                return;
        /* asked for already: most reads of a span's second half end here,
         * without the lock (ra_from is written under it; a stale value
         * only costs the locked check below) */
        if (__atomic_load_n(&ls->ra_from, __ATOMIC_RELAXED) == end)
                return;
        span = MIN(span * 2, (uint64_t) NEIGHBOURS_MAX_SPAN);
        __atomic_store_n(&ls->ra_span, span, __ATOMIC_RELAXED);
        readahead_ask(ls, end, span);
}

void layer_source_readahead_stop(LayerSource *ls) {
        if (!ls->fetching)
                return;
        pthread_mutex_lock(&ls->fetch_lock);
        ls->ra_stop = true;
        unsigned started = ls->ra_started;
        pthread_cond_broadcast(&ls->fetch_cond);
        pthread_mutex_unlock(&ls->fetch_lock);
        for (unsigned i = 0; i < started; i++)
                pthread_join(ls->ra_threads[i], NULL);
}

ssize_t layer_source_read(LayerSource *ls, ChunkDecoder *d, uint64_t ino, uint64_t off, size_t len, void *buf,
                          ErrMsg *err) {
        if (!ls->cache)
                return layer_read(ls->layer, d, ino, off, len, buf, err);
        ssize_t n = cache_layer_read(ls->cache, ino, off, len, buf);
        if (n > 0)
                readahead_maybe(ls, ino, off + (uint64_t) n - 1);
        if (n != -ENODATA)
                return n >= 0 ? n : layer_read(ls->layer, d, ino, off, len, buf, err);
        const IndexInode *in = index_inode(ls->layer->index, ino);
        if (!in || off >= in->size)
                return 0;
        len = (size_t) MIN((uint64_t) len, in->size - off);
        uint64_t ahead = MIN(in->size - off, (uint64_t) len + READAHEAD);
        const Index *idx = ls->layer->index;
        /* Every missing run in [off, off + ahead), in file order: fetched,
         * stored, and the part in [off, off + len) copied to buf. Each
         * round moves the cursor past one run or waits for the thread
         * that fetches it; past the bound, what is still missing is read
         * straight from the blob below. */
        uint64_t cursor = off, end = off + ahead;
        for (uint64_t round = 0; cursor < end && round <= 2 * (uint64_t) in->count + 2; round++) {
                size_t first, cnt;
                int r = cache_layer_missing(ls->cache, ino, cursor, (size_t) (end - cursor), &first, &cnt);
                if (r < 0)
                        return layer_read(ls->layer, d, ino, off, len, buf, err);
                if (r == 0)
                        break;
                uint32_t ids[NEIGHBOURS_MAX];
                size_t k = MIN(cnt, ELEMENTSOF(ids));
                for (size_t i = 0; i < k; i++)
                        ids[i] = (uint32_t) (first + i);
                k = span_len(idx, ids, k);
                size_t own = k;
                bool walking;
                uint64_t span;
                size_t total = add_neighbours(ls, ids, k, ELEMENTSOF(ids), &walking, &span);
                if ((walking || span >= NEIGHBOURS_NEAR_SPAN) && ls->env)
                        /* a reader walking the blob, or whose misses
                         * keep landing near each other (a copy of a
                         * tree, in readdir order): the background keeps
                         * off its way */
                        layer_env_walking(ls->env);
                if (!walking && round == 0)
                        /* a reader that walks the blob reads the
                         * directory next anyway */
                        layer_sweep_note(ls, in->parent);
                uint64_t nb_from = idx->chunks[ids[own - 1]].blob_end, nb_end = idx->chunks[ids[total - 1]].blob_end;
                /* the reader waits for its own chunks only (a reader
                 * walking the blob reads the neighbours next: one
                 * request, and the readahead below, serve it better) */
                bool split = !walking && total > own && ls->fetching && nb_end - nb_from >= NEIGHBOURS_ASYNC;
                k = claim(ls, ids, split ? own : total);
                if (k == 0)
                        continue; /* fetched by another thread meanwhile: look again */
                if (span > 0) {
                        /* racy between threads by design: a hint, not a
                         * contract; only fetches count (a reader that
                         * waited for another's fetch walks nothing) */
                        __atomic_store_n(&ls->ra_span, span, __ATOMIC_RELAXED);
                        __atomic_store_n(&ls->ra_end, nb_end, __ATOMIC_RELAXED);
                        __atomic_store_n(&ls->ra_walking, walking, __ATOMIC_RELAXED);
                }
                if (split)
                        readahead_ask(ls, nb_from, nb_end - nb_from);
                else if (walking && span >= READAHEAD_ASYNC && k == total && missing_after(ls, ids[total - 1]))
                        /* the next span goes out while this one comes */
                        readahead_ask(ls, nb_end, MIN(span * 2, (uint64_t) NEIGHBOURS_MAX_SPAN));
                own = MIN(own, k);
                r = fetch_span(ls, d, ids, k, own, off, len, buf, err);
                unclaim(ls, ids, k);
                if (r < 0)
                        return r == -ENOMEM || r == -EBADMSG ? r : -EIO;
                k = own;
                const IndexChunk *last = &idx->chunks[first + k - 1];
                cursor = last->file_offset + last->size;
        }
        n = cache_layer_read(ls->cache, ino, off, len, buf);
        if (n == -ENODATA)
                /* not kept (disk full): decode it again, straight from the blob */
                return layer_read(ls->layer, d, ino, off, len, buf, err);
        if (n > 0)
                readahead_maybe(ls, ino, off + (uint64_t) n - 1);
        return n;
}
