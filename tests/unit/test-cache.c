/* Tests of worker/cache: layers made by estargz_convert() in memory, their
 * chunks put into a cache under a private directory and read back against
 * the source bytes. Partial files and the missing runs, complete files for
 * passthrough, four threads putting and reading at once, a reopened cache,
 * a chunk map of an earlier boot with a corrupted data byte, a torn put
 * (data without its bit), a deleted data file, write errors (EFBIG from
 * RLIMIT_FSIZE always; ENOSPC on a 1 MiB tmpfs when root), LRU eviction
 * that never takes a pinned blob, a blob pinned by another process, the
 * background GC, and corrupt, foreign-version and foreign-layout maps.
 *
 * Paths of the on-disk layout are spelled out here on purpose: they are
 * the format (cache.h), and the tests tamper with them as a crash or a
 * disk would. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/estargz/layer.h"
#include "common/util/digest.h"
#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"
#include "worker/cache/cache-map.h"
#include "worker/cache/cache.h"

#define CHUNK 4096

static char tmp[4096];

static void skip(const char *why) {
        tap_run++;
        printf("ok %u # SKIP %s\n", tap_run, why);
        fflush(stdout);
}

/* ---- a layer in memory ---- */

typedef struct Spec {
        const char *name;
        size_t size;
} Spec;

typedef struct Fixture {
        StrBuf blob;
        Layer *layer;
        const Index *idx;
        uint8_t digest[SHA256_LEN];
        size_t n_files;
        const char *names[16];
        uint8_t *data[16];  /* owned */
        size_t sizes[16];
        uint64_t inos[16];
} Fixture;

static int fixture_make(Fixture *fx, const Spec *specs, size_t n, uint64_t chunk, uint64_t seed) {
        *fx = (Fixture) {};
        Rng rng = { seed };
        StrBuf tar = {};
        tar_add(&tar, "dir/", '5', 0755, NULL, 0, NULL);
        for (size_t i = 0; i < n; i++) {
                fx->names[i] = specs[i].name;
                fx->sizes[i] = specs[i].size;
                fx->data[i] = malloc(specs[i].size + 1);
                rng_fill(&rng, fx->data[i], specs[i].size);
                tar_add(&tar, specs[i].name, '0', 0644, fx->data[i], specs[i].size, NULL);
        }
        fx->n_files = n;
        tar_add(&tar, "hardlink", '1', 0644, NULL, 0, specs[0].name);
        tar_add(&tar, "symlink", '2', 0777, NULL, 0, specs[0].name);
        tar_end(&tar);
        ConvertOptions o = { .chunk_size = chunk };
        ConvertResult res;
        ErrMsg err = {};
        int r = convert_mem(tmp, tar.data, tar.len, &o, &res, &fx->blob, &err);
        strbuf_done(&tar);
        if (r < 0) {
                diag("convert: %s", err.text);
                return r;
        }
        MemBlob *mb = calloc(1, sizeof(*mb));
        mb->data = (const uint8_t *) fx->blob.data;
        mb->len = fx->blob.len;
        r = layer_open(mem_blob_read_at, mb, fx->blob.len, NULL, &fx->layer, &err);
        if (r < 0) {
                diag("layer_open: %s", err.text);
                free(mb);
                return r;
        }
        fx->layer->userdata = mb;
        fx->idx = fx->layer->index;
        memcpy(fx->digest, res.blob_digest, SHA256_LEN);
        for (size_t i = 0; i < n; i++)
                if (index_lookup_path(fx->idx, fx->names[i], &fx->inos[i]) < 0)
                        return -ENOENT;
        return 0;
}

static void fixture_done(Fixture *fx) {
        if (fx->layer)
                free(fx->layer->userdata);
        layer_free(fx->layer);
        for (size_t i = 0; i < fx->n_files; i++)
                free(fx->data[i]);
        strbuf_done(&fx->blob);
}

static const IndexInode *fx_inode(const Fixture *fx, size_t fi) {
        return index_inode(fx->idx, fx->inos[fi]);
}

/* Puts chunks [from, to) of file fi (relative to its first chunk), taking
 * the verified bytes from the source. Returns the first error. */
static int put_chunks(CacheLayer *cl, const Fixture *fx, size_t fi, uint32_t from, uint32_t to) {
        const IndexInode *in = fx_inode(fx, fi);
        for (uint32_t k = from; k < to && k < in->count; k++) {
                const IndexChunk *c = &fx->idx->chunks[in->first + k];
                int r = cache_layer_put(cl, in->first + k, fx->data[fi] + c->file_offset, (size_t) c->size);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int put_all(CacheLayer *cl, const Fixture *fx) {
        for (size_t fi = 0; fi < fx->n_files; fi++) {
                int r = put_chunks(cl, fx, fi, 0, UINT32_MAX);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Reads [off, off + len) of file fi through the cache: the result, and
 * whether the bytes match the source when it succeeded. */
static ssize_t read_cmp(CacheLayer *cl, const Fixture *fx, size_t fi, uint64_t off, size_t len, bool *ret_same) {
        uint8_t *buf = malloc(len + 1);
        ssize_t n = cache_layer_read(cl, fx->inos[fi], off, len, buf);
        size_t want = off >= fx->sizes[fi] ? 0 : (size_t) MIN((uint64_t) len, fx->sizes[fi] - off);
        *ret_same = n == (ssize_t) want && (want == 0 || memcmp(buf, fx->data[fi] + off, want) == 0);
        free(buf);
        return n;
}

static bool read_all_ok(CacheLayer *cl, const Fixture *fx) {
        for (size_t fi = 0; fi < fx->n_files; fi++) {
                bool same;
                read_cmp(cl, fx, fi, 0, fx->sizes[fi] + 10, &same);
                if (!same)
                        return false;
        }
        return true;
}

/* ---- paths of the on-disk format ---- */

static void blob_path(const char *root, const uint8_t digest[SHA256_LEN], const char *rest, char *out, size_t size) {
        char hex[65];
        for (size_t i = 0; i < SHA256_LEN; i++)
                snprintf(hex + 2 * i, 3, "%02x", digest[i]);
        snprintf(out, size, "%s/cache/%s%s%s", root, hex, rest ? "/" : "", rest ? rest : "");
}

static bool path_exists(const char *p) {
        struct stat st;
        return lstat(p, &st) == 0;
}

static int file_patch(const char *path, uint64_t off, const void *bytes, size_t len) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = pwrite(fd, bytes, len, (off_t) off);
        close(fd);
        return n == (ssize_t) len ? 0 : -EIO;
}

static int file_peek(const char *path, uint64_t off, void *bytes, size_t len) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = pread(fd, bytes, len, (off_t) off);
        close(fd);
        return n == (ssize_t) len ? 0 : -EIO;
}

static void fake_digest(uint8_t d[SHA256_LEN], uint8_t tag) {
        memset(d, 0, SHA256_LEN);
        d[0] = 0xfe;
        d[31] = tag;
}

static const Spec specs_main[] = {
        { "big", 10 * CHUNK + 123 },
        { "mid", 3 * CHUNK },
        { "small", 100 },
        { "empty", 0 },
        { "dir/x", 2 * CHUNK + 5 },
};
enum { F_BIG, F_MID, F_SMALL, F_EMPTY, F_X };

static Cache *open_cache(const char *root, uint64_t max, int interval_ms, unsigned max_files) {
        CacheConfig cfg = { .max_bytes = max, .sync_interval_ms = interval_ms, .max_open_files = max_files };
        Cache *c = NULL;
        ErrMsg err = {};
        int r = cache_open(root, &cfg, &c, &err);
        if (r < 0)
                diag("cache_open %s: %s", root, err.text);
        return c;
}

static CacheLayer *open_layer(Cache *c, const uint8_t *digest, const Index *idx) {
        CacheLayer *cl = NULL;
        ErrMsg err = {};
        int r = cache_layer_open(c, digest, SHA256_LEN, idx, &cl, &err);
        if (r < 0)
                diag("cache_layer_open: %s (%s)", strerror(-r), err.text);
        return cl;
}

/* ---- put, read, missing, complete files ---- */

static void test_basic(const Fixture *fx, const char *root) {
        Cache *c = open_cache(root, 0, 0, 0);
        if (!ok(c, "cache_open"))
                return;
        CacheLayer *cl = open_layer(c, fx->digest, fx->idx);
        if (!ok(cl, "cache_layer_open")) {
                cache_free(c);
                return;
        }
        char p[8192];
        struct stat st;
        snprintf(p, sizeof(p), "%s/cache", root);
        ok(stat(p, &st) == 0 && (st.st_mode & 0777) == 0700, "cache dir is 0700");
        blob_path(root, fx->digest, "chunks.map", p, sizeof(p));
        ok(stat(p, &st) == 0 && (uint64_t) st.st_size == cache_map_file_size(fx->idx->n_chunks), "chunks.map of %llu bytes",
           (unsigned long long) cache_map_file_size(fx->idx->n_chunks));

        const IndexInode *big = fx_inode(fx, F_BIG);
        uint8_t buf[64];
        is_int(cache_layer_read(cl, fx->inos[F_BIG], 0, 10, buf), -ENODATA, "empty cache: read -ENODATA");
        size_t first = 99, n = 99;
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], 0, fx->sizes[F_BIG], &first, &n), 1, "missing: 1");
        ok(first == big->first && n == big->count, "  the whole file is one run (%zu+%zu)", first, n);

        is_int(put_chunks(cl, fx, F_BIG, 0, 3), 0, "put chunks 0-2 of big");
        is_int(put_chunks(cl, fx, F_BIG, 5, 6), 0, "put chunk 5 of big");
        blob_path(root, fx->digest, "f", p, sizeof(p));
        ok(stat(p, &st) == 0 && (st.st_mode & 0777) == 0700, "f/ is 0700");
        char fpath[8300];
        snprintf(fpath, sizeof(fpath), "%s/%llu", p, (unsigned long long) fx->inos[F_BIG]);
        ok(stat(fpath, &st) == 0 && (st.st_mode & 0777) == 0600 && (uint64_t) st.st_size == fx->sizes[F_BIG],
           "f/<ino> is 0600 and has the file's size while sparse");

        bool same;
        is_int(read_cmp(cl, fx, F_BIG, 0, 3 * CHUNK, &same), 3 * CHUNK, "read chunks 0-2");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_BIG, 100, 2 * CHUNK, &same), 2 * CHUNK, "read across a chunk boundary");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_BIG, 5 * CHUNK + 7, 100, &same), 100, "read inside chunk 5");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_BIG, 0, 4 * CHUNK, &same), -ENODATA, "read into chunk 3: -ENODATA");
        is_int(read_cmp(cl, fx, F_BIG, 3 * CHUNK - 1, 2, &same), -ENODATA, "2 bytes straddling into chunk 3: -ENODATA");
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], 0, fx->sizes[F_BIG], &first, &n), 1, "missing over the file");
        ok(first == big->first + 3 && n == 2, "  first run: chunks 3-4 (%zu+%zu)", first - big->first, n);
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], 5 * CHUNK, 100 * CHUNK, &first, &n), 1, "missing from chunk 5 on");
        ok(first == big->first + 6 && n == big->count - 6, "  chunks 6-10 (%zu+%zu)", first - big->first, n);
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], 0, 3 * CHUNK, &first, &n), 0, "missing over chunks 0-2: none");
        is_int(n, 0, "  n = 0");
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], fx->sizes[F_BIG], 10, &first, &n), 0, "missing at EOF: none");
        is_int(cache_layer_file_complete(cl, fx->inos[F_BIG]), 0, "big not complete");
        int fd = -1;
        is_int(cache_layer_file_open(cl, fx->inos[F_BIG], &fd), -ENODATA, "file_open of a partial file: -ENODATA");

        is_int(put_chunks(cl, fx, F_BIG, 0, UINT32_MAX), 0, "put the rest of big (the present ones again)");
        is_int(read_cmp(cl, fx, F_BIG, 0, fx->sizes[F_BIG] + 50, &same), (ssize_t) fx->sizes[F_BIG], "read the whole of big, clamped");
        ok(same, "  byte-exact");
        Rng rng = { 7 };
        size_t bad = 0;
        for (int k = 0; k < 200; k++) {
                uint64_t off = rng_below(&rng, fx->sizes[F_BIG]);
                size_t len = 1 + (size_t) rng_below(&rng, 3 * CHUNK);
                ssize_t r = read_cmp(cl, fx, F_BIG, off, len, &same);
                if (r < 0 || !same)
                        bad++;
        }
        is_int(bad, 0, "200 random reads of big match");
        is_int(cache_layer_read(cl, fx->inos[F_BIG], fx->sizes[F_BIG], 10, buf), 0, "read at EOF: 0");
        is_int(cache_layer_read(cl, fx->inos[F_BIG], fx->sizes[F_BIG] + 99, 10, buf), 0, "read past EOF: 0");
        is_int(cache_layer_file_complete(cl, fx->inos[F_BIG]), 1, "big complete");
        if (is_int(cache_layer_file_open(cl, fx->inos[F_BIG], &fd), 0, "file_open of big")) {
                StrBuf all = {};
                fd_slurp(fd, &all);
                ok(all.len == fx->sizes[F_BIG] && memcmp(all.data, fx->data[F_BIG], all.len) == 0, "  the fd reads the whole file");
                ok((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY && (fcntl(fd, F_GETFD) & FD_CLOEXEC), "  O_RDONLY, close-on-exec");
                strbuf_done(&all);
                close(fd);
        }
        uint64_t hl;
        index_lookup_path(fx->idx, "hardlink", &hl);
        is_int(hl, fx->inos[F_BIG], "the hardlink shares big's inode");
        is_int(cache_layer_file_complete(cl, hl), 1, "  and so its cache");

        is_int(cache_layer_file_complete(cl, fx->inos[F_EMPTY]), 1, "an empty file is complete");
        fd = -1;
        if (is_int(cache_layer_file_open(cl, fx->inos[F_EMPTY], &fd), 0, "file_open of the empty file")) {
                ok(fstat(fd, &st) == 0 && st.st_size == 0, "  size 0");
                close(fd);
        }
        is_int(cache_layer_read(cl, fx->inos[F_EMPTY], 0, 10, buf), 0, "read of the empty file: 0");

        uint64_t dino, sino;
        index_lookup_path(fx->idx, "dir", &dino);
        index_lookup_path(fx->idx, "symlink", &sino);
        is_int(cache_layer_read(cl, dino, 0, 1, buf), -EISDIR, "read of a directory: -EISDIR");
        is_int(cache_layer_read(cl, sino, 0, 1, buf), -EINVAL, "read of a symlink: -EINVAL");
        is_int(cache_layer_read(cl, 999999, 0, 1, buf), -ENOENT, "read of no inode: -ENOENT");
        is_int(cache_layer_missing(cl, 0, 0, 1, &first, &n), -ENOENT, "missing of inode 0: -ENOENT");
        is_int(cache_layer_put(cl, fx->idx->n_chunks, buf, 1), -EINVAL, "put of a chunk past the index: -EINVAL");
        is_int(cache_layer_put(cl, fx_inode(fx, F_SMALL)->first, buf, 99), -EINVAL, "put of the wrong length: -EINVAL");

        CacheStats s;
        cache_stats(c, &s);
        is_int(s.puts, big->count, "stats: %u puts (repeats not counted)", big->count);
        ok(s.hits >= 200 && s.misses == 3, "stats: hits %llu, misses %llu", (unsigned long long) s.hits, (unsigned long long) s.misses);
        ok(s.bytes_used >= fx->sizes[F_BIG] && s.bytes_used < fx->sizes[F_BIG] + 16 * CHUNK, "stats: %llu bytes used",
           (unsigned long long) s.bytes_used);
        is_int(s.n_layers, 1, "stats: one open layer");

        is_int(put_chunks(cl, fx, F_MID, 0, 2), 0, "put 2 of mid's 3 chunks");
        is_int(put_chunks(cl, fx, F_SMALL, 0, 1), 0, "put small");
        is_int(put_chunks(cl, fx, F_X, 0, UINT32_MAX), 0, "put dir/x");
        cache_layer_close(cl);
        cache_free(c);
}

/* A new Cache on the same root finds every chunk; mid is still partial. */
static void test_reopen(const Fixture *fx, const char *root) {
        Cache *c = open_cache(root, 0, 0, 0);
        CacheLayer *cl = c ? open_layer(c, fx->digest, fx->idx) : NULL;
        if (!ok(cl, "reopen: cache and layer"))
                goto out;
        bool same;
        is_int(read_cmp(cl, fx, F_BIG, 0, fx->sizes[F_BIG], &same), (ssize_t) fx->sizes[F_BIG], "reopen: big whole");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_SMALL, 0, 1000, &same), 100, "reopen: small");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_X, 0, 3 * CHUNK, &same), 2 * CHUNK + 5, "reopen: dir/x");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_MID, 0, 2 * CHUNK, &same), 2 * CHUNK, "reopen: mid's first 2 chunks");
        size_t first, n;
        is_int(cache_layer_missing(cl, fx->inos[F_MID], 0, 3 * CHUNK, &first, &n), 1, "reopen: mid misses its last chunk");
        ok(first == fx_inode(fx, F_MID)->first + 2 && n == 1, "  chunk 2 (%zu+%zu)", first - fx_inode(fx, F_MID)->first, n);
        CacheStats s;
        cache_stats(c, &s);
        uint64_t want = 0;
        for (size_t fi = 0; fi < fx->n_files; fi++)
                want += (fx->sizes[fi] + CHUNK - 1) / CHUNK * CHUNK;
        want -= CHUNK; /* mid's missing chunk */
        uint64_t map = (cache_map_file_size(fx->idx->n_chunks) + 4095) / 4096 * 4096;
        is_int(s.bytes_used, want + map, "reopen: usage from the header, chunks in whole blocks plus the map");
        is_int(s.reverified, 0, "reopen in the same boot: nothing re-verified");
        is_int(s.n_blobs, 1, "reopen: one blob");
out:
        cache_layer_close(cl);
        cache_free(c);
}

/* Data written without its bit (a worker killed between the two), and a
 * data file deleted behind the cache's back. */
static void test_torn_and_deleted(const Fixture *fx, const char *root) {
        char p[8192];
        char name[64];
        snprintf(name, sizeof(name), "f/%llu", (unsigned long long) fx->inos[F_MID]);
        blob_path(root, fx->digest, name, p, sizeof(p));
        const IndexChunk *c2 = &fx->idx->chunks[fx_inode(fx, F_MID)->first + 2];
        is_int(file_patch(p, c2->file_offset, fx->data[F_MID] + c2->file_offset, (size_t) c2->size), 0,
               "torn: mid's chunk 2 written to its data file, bit not set");

        Cache *c = open_cache(root, 0, 0, 0);
        CacheLayer *cl = c ? open_layer(c, fx->digest, fx->idx) : NULL;
        if (!ok(cl, "torn: cache and layer"))
                goto out;
        bool same;
        is_int(read_cmp(cl, fx, F_MID, 2 * CHUNK, 10, &same), -ENODATA, "torn: the chunk is missing");
        is_int(cache_layer_file_complete(cl, fx->inos[F_MID]), 0, "torn: mid not complete");
        is_int(put_chunks(cl, fx, F_MID, 2, 3), 0, "torn: put it");
        is_int(read_cmp(cl, fx, F_MID, 0, 3 * CHUNK, &same), 3 * CHUNK, "torn: mid reads whole");
        ok(same, "  byte-exact");

        snprintf(name, sizeof(name), "f/%llu", (unsigned long long) fx->inos[F_X]);
        blob_path(root, fx->digest, name, p, sizeof(p));
        /* the layer may hold it open: a fresh layer on a new Cache does not */
        cache_layer_close(cl);
        cache_free(c);
        is_int(unlink(p), 0, "deleted: dir/x's data file removed");
        c = open_cache(root, 0, 0, 0);
        cl = c ? open_layer(c, fx->digest, fx->idx) : NULL;
        if (!ok(cl, "deleted: cache and layer"))
                goto out;
        is_int(read_cmp(cl, fx, F_X, 0, 10, &same), -ENODATA, "deleted: read -ENODATA");
        size_t first, n;
        is_int(cache_layer_missing(cl, fx->inos[F_X], 0, 3 * CHUNK, &first, &n), 1, "deleted: missing");
        ok(first == fx_inode(fx, F_X)->first && n == fx_inode(fx, F_X)->count, "  every chunk of it");
        is_int(put_chunks(cl, fx, F_X, 0, UINT32_MAX), 0, "deleted: put again");
        ok(read_all_ok(cl, fx), "every file reads back");
out:
        cache_layer_close(cl);
        cache_free(c);
}

/* The map was last trusted in another boot (power loss: data may not have
 * reached the disk), and one data byte is wrong. */
static void test_other_boot(const Fixture *fx, const char *root) {
        char map[8192], p[8192], name[64];
        blob_path(root, fx->digest, "chunks.map", map, sizeof(map));
        uint8_t other[CACHE_BOOT_ID_LEN], cur[CACHE_BOOT_ID_LEN];
        memset(other, 0x42, sizeof(other));
        file_peek(map, offsetof(CacheMapHeader, boot_id), cur, sizeof(cur));
        is_int(file_patch(map, offsetof(CacheMapHeader, boot_id), other, sizeof(other)), 0, "other boot: boot id rewritten");
        snprintf(name, sizeof(name), "f/%llu", (unsigned long long) fx->inos[F_BIG]);
        blob_path(root, fx->digest, name, p, sizeof(p));
        uint64_t bad_off = 4 * CHUNK + 77;
        uint8_t flipped = (uint8_t) ~fx->data[F_BIG][bad_off];
        is_int(file_patch(p, bad_off, &flipped, 1), 0, "other boot: one byte of big's chunk 4 flipped");

        Cache *c = open_cache(root, 0, 0, 0);
        CacheLayer *cl = c ? open_layer(c, fx->digest, fx->idx) : NULL;
        if (!ok(cl, "other boot: cache and layer"))
                goto out;
        uint8_t now[CACHE_BOOT_ID_LEN];
        file_peek(map, offsetof(CacheMapHeader, boot_id), now, sizeof(now));
        ok(memcmp(now, cur, sizeof(now)) == 0, "other boot: the header took this boot's id");
        bool same;
        is_int(read_cmp(cl, fx, F_BIG, 0, 4 * CHUNK, &same), 4 * CHUNK, "other boot: chunks 0-3 verify and read");
        ok(same, "  byte-exact");
        is_int(read_cmp(cl, fx, F_BIG, 4 * CHUNK, 10, &same), -ENODATA, "other boot: the corrupted chunk is missing");
        size_t first, n;
        const IndexInode *big = fx_inode(fx, F_BIG);
        is_int(cache_layer_missing(cl, fx->inos[F_BIG], 0, fx->sizes[F_BIG], &first, &n), 1, "other boot: missing");
        ok(first == big->first + 4 && n == 1, "  exactly chunk 4 (%zu+%zu)", first - big->first, n);
        is_int(cache_layer_file_complete(cl, fx->inos[F_BIG]), 0, "other boot: big not complete");
        CacheStats s;
        cache_stats(c, &s);
        is_int(s.reverify_failed, 1, "stats: one chunk failed re-verification");
        /* chunks 0-3 by the read, 5 by missing (it ends the run) */
        is_int(s.reverified, 5, "stats: 5 re-verified so far");
        is_int(put_chunks(cl, fx, F_BIG, 4, 5), 0, "other boot: refetched chunk put");
        is_int(read_cmp(cl, fx, F_BIG, 0, fx->sizes[F_BIG], &same), (ssize_t) fx->sizes[F_BIG], "other boot: big whole");
        ok(same, "  byte-exact again");
        ok(read_all_ok(cl, fx), "other boot: every file verifies and reads");
        cache_layer_close(cl);
        cache_free(c);

        /* a worker killed right after: same boot, nothing to verify again */
        c = open_cache(root, 0, 0, 0);
        cl = c ? open_layer(c, fx->digest, fx->idx) : NULL;
        if (!ok(cl, "same boot again: layer"))
                goto out;
        ok(read_all_ok(cl, fx), "same boot again: every file reads");
        cache_stats(c, &s);
        is_int(s.reverified + s.reverify_failed, 0, "same boot again: nothing re-verified");
out:
        cache_layer_close(cl);
        cache_free(c);
}

/* ---- four threads ---- */

typedef struct Worker {
        CacheLayer *cl;
        const Fixture *fx;
        uint64_t seed;
        unsigned bad, puts, reads;
} Worker;

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        Rng rng = { w->seed };
        uint8_t *buf = malloc(4 * CHUNK);
        for (int k = 0; k < 4000; k++) {
                size_t fi = (size_t) rng_below(&rng, w->fx->n_files);
                size_t size = w->fx->sizes[fi];
                if (size == 0)
                        continue;
                uint64_t off = rng_below(&rng, size);
                size_t len = 1 + (size_t) rng_below(&rng, 4 * CHUNK);
                size_t want = (size_t) MIN((uint64_t) len, size - off);
                ssize_t n = cache_layer_read(w->cl, w->fx->inos[fi], off, len, buf);
                if (n == -ENODATA) {
                        size_t first, cnt;
                        while (cache_layer_missing(w->cl, w->fx->inos[fi], off, len, &first, &cnt) > 0) {
                                for (size_t ci = first; ci < first + cnt; ci++) {
                                        const IndexChunk *c = &w->fx->idx->chunks[ci];
                                        if (cache_layer_put(w->cl, ci, w->fx->data[fi] + c->file_offset, (size_t) c->size) < 0)
                                                w->bad++;
                                        w->puts++;
                                }
                        }
                        n = cache_layer_read(w->cl, w->fx->inos[fi], off, len, buf);
                }
                w->reads++;
                if (n != (ssize_t) want || memcmp(buf, w->fx->data[fi] + off, want) != 0)
                        w->bad++;
                if (k % 500 == 0) {
                        int fd;
                        if (cache_layer_file_open(w->cl, w->fx->inos[fi], &fd) == 0) {
                                struct stat st;
                                if (fstat(fd, &st) < 0 || (uint64_t) st.st_size != size)
                                        w->bad++;
                                close(fd);
                        }
                }
        }
        free(buf);
        return NULL;
}

static void test_threads(const char *root) {
        static const Spec specs[] = {
                { "a", 64 * CHUNK }, { "b", 40 * CHUNK + 1 }, { "c", 17 * CHUNK + 999 }, { "d", 3 * CHUNK }, { "e", 500 },
        };
        Fixture fx;
        if (!is_int(fixture_make(&fx, specs, ELEMENTSOF(specs), CHUNK, 99), 0, "threads: a 5-file layer")) {
                fixture_done(&fx);
                return;
        }
        /* two open files for five: the table evicts and falls back to
         * temporary fds all the time */
        Cache *c = open_cache(root, 0, 20, 2);
        CacheLayer *cl = c ? open_layer(c, fx.digest, fx.idx) : NULL;
        if (!ok(cl, "threads: cache and layer")) {
                cache_free(c);
                fixture_done(&fx);
                return;
        }
        Worker w[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
                w[i] = (Worker) { .cl = cl, .fx = &fx, .seed = 1000 + (uint64_t) i };
                pthread_create(&t[i], NULL, worker_run, &w[i]);
        }
        unsigned bad = 0, puts = 0, reads = 0;
        for (int i = 0; i < 4; i++) {
                pthread_join(t[i], NULL);
                bad += w[i].bad;
                puts += w[i].puts;
                reads += w[i].reads;
        }
        is_int(bad, 0, "threads: %u reads and %u puts from 4 threads, every byte right", reads, puts);
        size_t first, n, missing = 0;
        for (size_t fi = 0; fi < fx.n_files; fi++) {
                put_chunks(cl, &fx, fi, 0, UINT32_MAX);
                missing += (size_t) cache_layer_missing(cl, fx.inos[fi], 0, fx.sizes[fi], &first, &n);
        }
        is_int(missing, 0, "threads: complete after the last puts");
        ok(read_all_ok(cl, &fx), "threads: every file reads back");
        CacheStats s;
        cache_stats(c, &s);
        size_t owned = 0; /* the hidden .no.prefetch.landmark has a chunk too */
        for (size_t fi = 0; fi < fx.n_files; fi++)
                owned += fx_inode(&fx, fi)->count;
        is_int(s.puts, owned, "threads: each chunk counted as put once (%llu)", (unsigned long long) s.puts);
        cache_layer_close(cl);
        cache_free(c);
        fixture_done(&fx);
}

/* ---- write errors ---- */

/* RLIMIT_FSIZE makes the data file's creation at full size fail with
 * EFBIG: the put fails and leaves no bit; needs no privilege. */
static void test_efbig(const Fixture *fx, const char *root) {
        uint8_t d[SHA256_LEN];
        fake_digest(d, 0xb0);
        Cache *c = open_cache(root, 0, -1, 0);
        CacheLayer *cl = c ? open_layer(c, d, fx->idx) : NULL;
        if (!ok(cl, "EFBIG: cache and layer")) {
                cache_free(c);
                return;
        }
        struct rlimit old, lim;
        getrlimit(RLIMIT_FSIZE, &old);
        lim = old;
        lim.rlim_cur = 2 * CHUNK;
        void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &lim);
        int r = put_chunks(cl, fx, F_BIG, 0, 1);
        setrlimit(RLIMIT_FSIZE, &old);
        signal(SIGXFSZ, prev);
        is_int(r, -EFBIG, "EFBIG: put fails with the write's error");
        uint8_t buf[16];
        is_int(cache_layer_read(cl, fx->inos[F_BIG], 0, 10, buf), -ENODATA, "EFBIG: the chunk is missing");
        is_int(put_chunks(cl, fx, F_BIG, 0, 1), 0, "EFBIG: put succeeds once the limit is gone");
        bool same;
        is_int(read_cmp(cl, fx, F_BIG, 0, CHUNK, &same), CHUNK, "EFBIG: and reads");
        ok(same, "  byte-exact");
        CacheStats s;
        cache_stats(c, &s);
        is_int(s.put_errors, 1, "stats: one put error");
        cache_layer_close(cl);
        cache_free(c);
}

static void test_enospc(void) {
        static const Spec specs[] = { { "large", 600 * 1024 }, { "other", 600 * 1024 } };
        if (geteuid() != 0) {
                skip("ENOSPC needs root to mount a 1 MiB tmpfs");
                return;
        }
        char mnt[4200];
        snprintf(mnt, sizeof(mnt), "%s/small", tmp);
        mkdir(mnt, 0700);
        if (mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700") < 0) {
                diag("mount tmpfs: %s", strerror(errno));
                skip("ENOSPC: cannot mount a tmpfs here");
                return;
        }
        Fixture fx;
        if (!is_int(fixture_make(&fx, specs, ELEMENTSOF(specs), 64 * 1024, 5), 0, "ENOSPC: a 1.2 MB layer in 64 KiB chunks"))
                goto out;
        Cache *c = open_cache(mnt, 0, -1, 0);
        CacheLayer *cl = c ? open_layer(c, fx.digest, fx.idx) : NULL;
        if (ok(cl, "ENOSPC: cache and layer on the tmpfs")) {
                int r = 0;
                size_t failed = SIZE_MAX;
                for (size_t fi = 0; fi < fx.n_files && r >= 0; fi++) {
                        const IndexInode *in = fx_inode(&fx, fi);
                        for (uint32_t k = 0; k < in->count; k++) {
                                r = put_chunks(cl, &fx, fi, k, k + 1);
                                if (r < 0) {
                                        failed = in->first + k;
                                        break;
                                }
                        }
                }
                is_int(r, -ENOSPC, "ENOSPC: a put fails with -ENOSPC");
                if (failed != SIZE_MAX) {
                        uint32_t owner = 0;
                        for (size_t fi = 0; fi < fx.n_files; fi++) {
                                const IndexInode *in = fx_inode(&fx, fi);
                                if (failed >= in->first && failed < in->first + in->count)
                                        owner = (uint32_t) fi;
                        }
                        const IndexChunk *ch = &fx.idx->chunks[failed];
                        uint8_t buf[16];
                        is_int(cache_layer_read(cl, fx.inos[owner], ch->file_offset, 10, buf), -ENODATA,
                               "ENOSPC: the failed chunk has no bit");
                        size_t first, n;
                        cache_layer_missing(cl, fx.inos[owner], ch->file_offset, 1, &first, &n);
                        ok(first == failed && n == 1, "ENOSPC: missing reports it");
                        bool same;
                        is_int(read_cmp(cl, &fx, 0, 0, 64 * 1024, &same), 64 * 1024, "ENOSPC: chunks put before still read");
                        ok(same, "  byte-exact");
                }
                CacheStats s;
                cache_stats(c, &s);
                ok(s.put_errors >= 1, "stats: put errors counted");
        }
        cache_layer_close(cl);
        cache_free(c);
out:
        fixture_done(&fx);
        umount2(mnt, MNT_DETACH);
}

/* ---- GC ---- */

static void set_last_use(const char *root, const uint8_t digest[SHA256_LEN], time_t t) {
        char p[8192];
        blob_path(root, digest, "lock", p, sizeof(p));
        struct timespec ts[2] = { { .tv_sec = t }, { .tv_sec = t } };
        utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW);
}

static bool blob_exists(const char *root, const uint8_t digest[SHA256_LEN]) {
        char p[8192];
        blob_path(root, digest, NULL, p, sizeof(p));
        return path_exists(p);
}

static bool trash_empty(const char *root) {
        char p[8192];
        snprintf(p, sizeof(p), "%s/cache/.trash", root);
        DIR *d = opendir(p);
        if (!d)
                return false;
        struct dirent *de;
        size_t n = 0;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                        n++;
        closedir(d);
        return n == 0;
}

static int fill_blob(const char *root, const Fixture *fx, const uint8_t digest[SHA256_LEN], time_t last_use) {
        Cache *c = open_cache(root, 0, -1, 0);
        CacheLayer *cl = c ? open_layer(c, digest, fx->idx) : NULL;
        int r = cl ? put_all(cl, fx) : -EIO;
        cache_layer_close(cl);
        cache_free(c);
        set_last_use(root, digest, last_use);
        return r;
}

static void test_gc(const Fixture *fx) {
        char root[4200];
        snprintf(root, sizeof(root), "%s/gc", tmp);
        mkdir(root, 0700);
        uint8_t d[5][SHA256_LEN];
        time_t now = time(NULL);
        int r = 0;
        for (int i = 0; i < 4; i++) {
                fake_digest(d[i], (uint8_t) (0x10 + i));
                r |= fill_blob(root, fx, d[i], now - 10000 + 1000 * i); /* d[0] oldest */
        }
        is_int(r, 0, "gc: four blobs filled, last used in order 0 < 1 < 2 < 3");
        Cache *c = open_cache(root, 0, -1, 0);
        CacheStats s;
        cache_stats(c, &s);
        uint64_t one = s.bytes_used / 4;
        is_int(s.n_blobs, 4, "gc: cache_open finds 4 blobs");
        cache_free(c);

        /* cap at 2.5 blobs; the oldest is pinned */
        c = open_cache(root, one * 5 / 2, -1, 0);
        CacheLayer *pinned = open_layer(c, d[0], fx->idx);
        ok(pinned, "gc: the oldest blob opened (pinned)");
        set_last_use(root, d[0], now - 10000); /* opening touched it: make it the oldest again */
        is_int(cache_gc(c, NULL), 2, "gc: evicts 2 blobs");
        ok(blob_exists(root, d[0]), "gc: the pinned, oldest blob stays");
        ok(!blob_exists(root, d[1]) && !blob_exists(root, d[2]), "gc: the next two least recently used are gone");
        ok(blob_exists(root, d[3]), "gc: the most recently used stays");
        ok(trash_empty(root), "gc: the trash is empty");
        cache_stats(c, &s);
        ok(s.evictions == 2 && s.evicted_bytes == 2 * one, "gc stats: 2 evictions, %llu bytes", (unsigned long long) s.evicted_bytes);
        ok(!s.over_cap && s.bytes_used <= one * 5 / 2, "gc stats: under the cap (%llu)", (unsigned long long) s.bytes_used);
        ok(read_all_ok(pinned, fx), "gc: the pinned blob still reads");
        cache_layer_close(pinned);
        cache_free(c);

        /* a cap below what is pinned: reported, nothing pinned evicted */
        c = open_cache(root, 1, -1, 0);
        CacheLayer *p0 = open_layer(c, d[0], fx->idx), *p3 = open_layer(c, d[3], fx->idx);
        CacheLayer *p0b = open_layer(c, d[0], fx->idx); /* the same blob mounted twice */
        ok(p0 && p3 && p0b, "gc: both blobs pinned, one of them twice");
        is_int(cache_gc(c, NULL), 0, "gc over pinned data: evicts nothing");
        cache_stats(c, &s);
        ok(s.over_cap && s.bytes_pinned == 2 * one, "gc stats: over the cap, %llu bytes pinned", (unsigned long long) s.bytes_pinned);
        cache_layer_close(p0);
        is_int(cache_gc(c, NULL), 0, "gc: still pinned by the second layer of the same blob");
        ok(read_all_ok(p0b, fx), "gc: which reads fine");
        cache_layer_close(p0b);
        set_last_use(root, d[0], now - 10000);
        is_int(cache_gc(c, NULL), 1, "gc: unpinned, it goes");
        ok(!blob_exists(root, d[0]) && blob_exists(root, d[3]), "gc: blob 0 gone, pinned blob 3 stays");
        cache_stats(c, &s);
        ok(s.over_cap, "gc stats: still over the cap (blob 3 pinned)");
        cache_layer_close(p3);
        is_int(cache_gc(c, NULL), 1, "gc: the last one goes once closed");
        cache_stats(c, &s);
        ok(!s.over_cap && s.n_blobs == 0 && s.bytes_used == 0, "gc stats: empty, under the cap");
        cache_free(c);

        /* another process has the blob open: its LOCK_SH blocks eviction */
        fake_digest(d[4], 0x20);
        is_int(fill_blob(root, fx, d[4], now - 5000), 0, "flock: a blob filled");
        int to_child[2], to_parent[2];
        if (pipe2(to_child, O_CLOEXEC) < 0 || pipe2(to_parent, O_CLOEXEC) < 0)
                return;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                Cache *cc = open_cache(root, 0, -1, 0);
                CacheLayer *ccl = cc ? open_layer(cc, d[4], fx->idx) : NULL;
                char b = ccl ? 'y' : 'n';
                if (write(to_parent[1], &b, 1) != 1)
                        _exit(2);
                if (read(to_child[0], &b, 1) < 0)
                        _exit(2);
                cache_layer_close(ccl);
                cache_free(cc);
                _exit(0);
        }
        char b = 0;
        ok(pid > 0 && read(to_parent[0], &b, 1) == 1 && b == 'y', "flock: a child process opened the blob");
        c = open_cache(root, 1, -1, 0);
        is_int(cache_gc(c, NULL), 0, "flock: gc evicts nothing");
        ok(blob_exists(root, d[4]), "flock: the blob the child holds stays");
        cache_stats(c, &s);
        ok(s.over_cap && s.bytes_busy > 0, "gc stats: over the cap, %llu bytes busy", (unsigned long long) s.bytes_busy);
        if (write(to_child[1], "x", 1) != 1)
                diag("write to child: %s", strerror(errno));
        int status = -1;
        waitpid(pid, &status, 0);
        is_int(status, 0, "flock: the child closed the blob and exited");
        is_int(cache_gc(c, NULL), 1, "flock: now gc evicts it");
        ok(!blob_exists(root, d[4]), "flock: gone");
        cache_free(c);
        close(to_child[0]);
        close(to_child[1]);
        close(to_parent[0]);
        close(to_parent[1]);

        /* the background thread collects when a put crosses the cap */
        uint8_t old[SHA256_LEN], fresh[SHA256_LEN];
        fake_digest(old, 0x30);
        fake_digest(fresh, 0x31);
        is_int(fill_blob(root, fx, old, now - 3000), 0, "background gc: an old blob");
        c = open_cache(root, one * 3 / 2, 20, 0);
        CacheLayer *cl = c ? open_layer(c, fresh, fx->idx) : NULL;
        is_int(cl ? put_all(cl, fx) : -1, 0, "background gc: a new blob filled past the cap");
        for (int i = 0; i < 200 && blob_exists(root, old); i++)
                usleep(10000);
        ok(!blob_exists(root, old), "background gc: the old blob was evicted");
        ok(blob_exists(root, fresh) && read_all_ok(cl, fx), "background gc: the open one stays and reads");
        cache_layer_close(cl);
        cache_free(c);
}

/* ---- bad input ---- */

static void test_bad_maps(const Fixture *fx, const char *root) {
        uint8_t d[SHA256_LEN];
        fake_digest(d, 0x40);
        char map[8192], data[8192], name[64];
        blob_path(root, d, "chunks.map", map, sizeof(map));
        snprintf(name, sizeof(name), "f/%llu", (unsigned long long) fx->inos[F_BIG]);
        blob_path(root, d, name, data, sizeof(data));

        Cache *c = open_cache(root, 0, -1, 0);
        CacheLayer *cl = NULL;
        ErrMsg err = {};
        is_int(cache_layer_open(c, d, 31, fx->idx, &cl, &err), -EINVAL, "a 31-byte digest: -EINVAL");
        ok(!cl, "  no layer");
        is_int(cache_layer_open(c, NULL, 32, fx->idx, &cl, &err), -EINVAL, "a NULL digest: -EINVAL");
        cache_free(c);

        /* before_open: cache_open() finds it (no layer has the blob open);
         * otherwise cache_layer_open() does */
        struct {
                const char *what;
                size_t off;
                uint8_t byte;
                bool before_open;
        } cases[] = {
                { "magic", 0, 'X', true },
                { "magic", 0, 'X', false },
                { "checksum", offsetof(CacheMapHeader, checksum), 0, false },
                { "n_chunks", offsetof(CacheMapHeader, n_chunks), 0xff, false },
                { "version", offsetof(CacheMapHeader, version), 2, true },
                { "version", offsetof(CacheMapHeader, version), 2, false },
                { "truncated", SIZE_MAX, 0, false },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const char *when = cases[i].before_open ? "before cache_open" : "before cache_layer_open";
                is_int(fill_blob(root, fx, d, time(NULL)), 0, "%s %s: blob filled", cases[i].what, when);
                c = cases[i].before_open ? NULL : open_cache(root, 0, -1, 0);
                uint8_t b = cases[i].byte;
                if (cases[i].off == SIZE_MAX) {
                        if (truncate(map, 100) < 0)
                                diag("truncate: %s", strerror(errno));
                } else {
                        if (cases[i].off == offsetof(CacheMapHeader, checksum)) {
                                file_peek(map, cases[i].off, &b, 1);
                                b ^= 1;
                        }
                        file_patch(map, cases[i].off, &b, 1);
                }
                if (!c)
                        c = open_cache(root, 0, -1, 0);
                cl = open_layer(c, d, fx->idx);
                CacheStats s;
                cache_stats(c, &s);
                if (!ok(cl, "%s corrupt %s: the layer opens", cases[i].what, when)) {
                        cache_free(c);
                        continue;
                }
                is_int(s.discarded, 1, "  the blob directory was discarded");
                ok(!path_exists(data), "  the old data files are gone");
                uint8_t buf[8];
                is_int(cache_layer_read(cl, fx->inos[F_BIG], 0, 8, buf), -ENODATA, "  and the cache starts empty");
                is_int(put_all(cl, fx), 0, "  puts work");
                ok(read_all_ok(cl, fx), "  reads work");
                ok(trash_empty(root), "  nothing left in the trash");
                cache_layer_close(cl);
                cache_free(c);
        }

        /* a well-formed map of another index (another layout of the blob) */
        static const Spec other_specs[] = { { "big", 10 * CHUNK + 123 }, { "other", 5 } };
        Fixture other;
        if (is_int(fixture_make(&other, other_specs, ELEMENTSOF(other_specs), CHUNK, 77), 0, "layout: another index")) {
                is_int(fill_blob(root, fx, d, time(NULL)), 0, "layout: blob filled for the first index");
                c = open_cache(root, 0, -1, 0);
                cl = open_layer(c, d, other.idx);
                CacheStats s;
                cache_stats(c, &s);
                if (ok(cl, "layout: opened with the other index")) {
                        is_int(s.discarded, 1, "  the map was discarded");
                        uint8_t buf[8];
                        is_int(cache_layer_read(cl, other.inos[0], 0, 8, buf), -ENODATA, "  and the cache starts empty");
                }
                cache_layer_close(cl);
                cache_free(c);
                /* the same, while another layer of this process holds it */
                is_int(fill_blob(root, fx, d, time(NULL)), 0, "layout: refilled");
                c = open_cache(root, 0, -1, 0);
                CacheLayer *holder = open_layer(c, d, fx->idx);
                cl = NULL;
                is_int(cache_layer_open(c, d, SHA256_LEN, other.idx, &cl, &err), -EBUSY, "layout: held by another layer: -EBUSY");
                has_str(err.text, "open elsewhere", "  says why (%s)", err.text);
                ok(holder && read_all_ok(holder, fx), "  the holder still reads");
                cache_layer_close(holder);
                cache_free(c);
        }
        fixture_done(&other);
}

/* cache_open() clears what crashes leave: trash, old temporary files,
 * directories without a chunk map; young temporary files and strange
 * names stay. */
static void test_open_cleanup(const Fixture *fx, const char *root) {
        char p[8400], q[8192];
        uint8_t d[SHA256_LEN], nomap[SHA256_LEN];
        fake_digest(d, 0x50);
        fake_digest(nomap, 0x51);
        is_int(fill_blob(root, fx, d, time(NULL)), 0, "cleanup: a blob");
        snprintf(q, sizeof(q), "%s/cache/.trash/junk", root);
        mkdir(q, 0700);
        snprintf(p, sizeof(p), "%s/f", q);
        mkdir(p, 0700);
        snprintf(p + strlen(p), sizeof(p) - strlen(p), "/1");
        close(open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        blob_path(root, d, ".tmp.chunks.map.1.1", p, sizeof(p));
        close(open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        struct timespec ts[2] = { { .tv_sec = time(NULL) - 3600 }, { .tv_sec = time(NULL) - 3600 } };
        utimensat(AT_FDCWD, p, ts, 0);
        blob_path(root, d, ".tmp.chunks.map.1.2", q, sizeof(q));
        close(open(q, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        blob_path(root, nomap, NULL, p, sizeof(p));
        mkdir(p, 0700);
        char stray[8192];
        snprintf(stray, sizeof(stray), "%s/cache/not-a-blob", root);
        mkdir(stray, 0700);

        Cache *c = open_cache(root, 0, -1, 0);
        ok(c && trash_empty(root), "cleanup: the trash is emptied");
        blob_path(root, d, ".tmp.chunks.map.1.1", p, sizeof(p));
        ok(!path_exists(p), "cleanup: an hour-old temporary file is deleted");
        ok(path_exists(q), "cleanup: a fresh one stays (its writer may be alive)");
        ok(!blob_exists(root, nomap), "cleanup: a directory without a chunk map is removed");
        ok(path_exists(stray), "cleanup: a name that is no digest is left alone");
        CacheLayer *cl = c ? open_layer(c, d, fx->idx) : NULL;
        ok(cl && read_all_ok(cl, fx), "cleanup: the blob is intact");
        cache_layer_close(cl);
        cache_free(c);
        ok(cache_free(NULL) == NULL && cache_layer_close(NULL) == NULL, "NULL-safe destructors");
}

int main(void) {
        if (tmpdir_make(tmp) < 0) {
                printf("Bail out! cannot create a temporary directory\n");
                return 1;
        }
        Fixture fx;
        if (!is_int(fixture_make(&fx, specs_main, ELEMENTSOF(specs_main), CHUNK, 1), 0, "a 5-file layer in 4 KiB chunks")) {
                fixture_done(&fx);
                tmpdir_remove(tmp);
                return done();
        }
        char root[4200];
        snprintf(root, sizeof(root), "%s/root", tmp);
        mkdir(root, 0700);

        test_basic(&fx, root);
        test_reopen(&fx, root);
        test_torn_and_deleted(&fx, root);
        test_other_boot(&fx, root);
        test_threads(root);
        test_efbig(&fx, root);
        test_enospc();
        test_gc(&fx);
        test_bad_maps(&fx, root);
        test_open_cleanup(&fx, root);

        fixture_done(&fx);
        tmpdir_remove(tmp);
        return done();
}
