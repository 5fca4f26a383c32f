/* A registry layer's fetch thread, for guesses of what its readers will
 * want. At mount, the files before the layer's .prefetch.landmark
 * (eStargz puts the files a container reads first there) are fetched in
 * large contiguous range requests, verified and stored in the chunk
 * cache, so that the first reads hit the cache. Chunks already cached
 * are skipped (a restarted worker fetches only what the previous one had
 * not). Reads never wait for it: they fetch what they miss themselves.
 * .no.prefetch.landmark, or no landmark, prefetches none of them. The
 * layer's /etc/passwd and /etc/group, which every container start reads,
 * are prefetched in any case. Then, while the layer is open: the
 * directory sweeps its readers' misses ask for (sweep.c), and with the
 * background fetch (on by default) the rest of the layer, a piece per
 * turn over all layers, within a bandwidth budget. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/estargz/chunk.h"
#include "common/util/errmsg.h"

typedef struct LayerEnv LayerEnv;
typedef struct LayerSource LayerSource;
typedef struct Prefetch Prefetch;

/* Starts it for ls (0 with *ret NULL without a cache). Without
 * env->prefetch, no landmark or start files. With env->background, the
 * rest of the layer follows, at most env->background_bytes_per_s (0: no
 * limit). Before each request of the landmark's it lets the layer opens
 * in flight in env go first (a pull waits for those; for at most
 * OPENS_FIRST_MS over the whole prefetch). */
int prefetch_start(LayerSource *ls, LayerEnv *env, Prefetch **ret);
/* After ls->sweep_wanted was set: the thread looks at it. */
void prefetch_wake(Prefetch *p);
/* Stops it between two requests, joins and frees (NULL-safe). */
void prefetch_stop(Prefetch *p);

/* read.c: fetches chunks ids[0..n) (ascending blob offsets) in as few
 * range requests as their contiguity allows, into the cache. */
int layer_fetch_chunks(LayerSource *ls, ChunkDecoder *d, const uint32_t *ids, size_t n, ErrMsg *err);
