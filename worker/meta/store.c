/* The worker's RocksDB database (worker/meta/store.h). Owns the rocksdb_t
 * and its options; RocksDB does its own locking, so any serving thread may
 * call in between meta_store_open() and meta_store_close(), and nothing
 * here is mutable after open.
 *
 * RocksDB's error strings become errno in rocks-error.c. A put has written
 * its record to the WAL (the kernel's page cache) when it returns, so a
 * worker killed right after storing a layer finds it again. It is not
 * fsynced: every record can be rebuilt from its blob, and what a lost
 * record would serve, FUSE mounts, does not outlive the machine's crash
 * either (fsync cost 1-3 ms on each layer open, on containerd's path). */
#include "worker/meta/store.h"
#include "worker/meta/rocks-error.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "common/util/macro.h"

#define LAYER_PREFIX "layer/"
#define BLOCK_CACHE_BYTES (8u << 20)

struct MetaStore {
        rocksdb_t *db;                         /* owned; read-write, set once (atomically) */
        rocksdb_t *ro;                         /* owned; secondary, meta_store_open_lazy() */
        char *dir;                             /* owned */
        char *secondary_dir;                   /* owned; the secondary's own files */
        pthread_mutex_t open_lock;             /* serializes the lazy read-write open */
        rocksdb_options_t *options;            /* owned */
        rocksdb_block_based_table_options_t *table_options; /* owned */
        rocksdb_cache_t *cache;                /* owned */
        rocksdb_readoptions_t *read_options;   /* owned */
        rocksdb_writeoptions_t *write_options; /* owned; to the WAL, not fsynced */
};


/* Removes dir and the plain files in it (a secondary's LOG files). */
static void remove_dir_files(const char *dir) {
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        rmdir(dir);
}

/* DIR.secondary/PID of secondaries whose process is gone. */
static void remove_stale_secondaries(const char *parent) {
        DIR *d = opendir(parent);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d))) {
                char *end;
                long pid = strtol(de->d_name, &end, 10);
                if (*end || pid <= 0)
                        continue;
                char proc[64];
                snprintf(proc, sizeof(proc), "/proc/%ld", pid);
                if (access(proc, F_OK) == 0)
                        continue;
                _cleanup_free_ char *path = NULL;
                if (asprintf(&path, "%s/%ld", parent, pid) >= 0)
                        remove_dir_files(path);
        }
        closedir(d);
}

MetaStore *meta_store_close(MetaStore *s) {
        if (!s)
                return NULL;
        /* No flush: every record is in the WAL when its put returns, and a
         * worker closes its store while the next one waits for its exit.
         * The next read-write open replays the WAL. */
        if (s->db)
                rocksdb_close(s->db);
        if (s->ro)
                rocksdb_close(s->ro);
        if (s->secondary_dir)
                remove_dir_files(s->secondary_dir);
        free(s->secondary_dir);
        free(s->dir);
        pthread_mutex_destroy(&s->open_lock);
        if (s->write_options)
                rocksdb_writeoptions_destroy(s->write_options);
        if (s->read_options)
                rocksdb_readoptions_destroy(s->read_options);
        if (s->options)
                rocksdb_options_destroy(s->options);
        if (s->table_options)
                rocksdb_block_based_options_destroy(s->table_options);
        if (s->cache)
                rocksdb_cache_destroy(s->cache);
        free(s);
        return NULL;
}

static int store_options(MetaStore *s) {
        s->options = rocksdb_options_create();
        s->table_options = rocksdb_block_based_options_create();
        s->cache = rocksdb_cache_create_lru(BLOCK_CACHE_BYTES);
        s->read_options = rocksdb_readoptions_create();
        s->write_options = rocksdb_writeoptions_create();
        if (!s->options || !s->table_options || !s->cache || !s->read_options || !s->write_options) {
                return -ENOMEM;
        }
        rocksdb_block_based_options_set_block_cache(s->table_options, s->cache);
        rocksdb_options_set_block_based_table_factory(s->options, s->table_options);
        rocksdb_options_set_create_if_missing(s->options, 1);
        /* A background error (a bad SST met by a compaction) must not turn
         * the store read-only: every record carries its own checksum
         * (index-io.c) and a refused one is rebuilt from its blob. */
        rocksdb_options_set_paranoid_checks(s->options, 0);
        rocksdb_options_set_keep_log_file_num(s->options, 2);
        /* Small memtables: the WAL that a secondary open or a read-write
         * open replays stays a few MB, so a standby is ready in
         * milliseconds (records are large: a 2,000-entry layer is about
         * 200 KB). */
        rocksdb_options_set_write_buffer_size(s->options, 4u << 20);
        rocksdb_options_set_max_write_buffer_number(s->options, 2);
        /* -1 (every table file stays open) is what a secondary instance
         * needs; the store is small: a few files. */
        rocksdb_options_set_max_open_files(s->options, -1);
        rocksdb_writeoptions_set_sync(s->write_options, 0);
        return 0;
}

static MetaStore *store_new(const char *dir) {
        MetaStore *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        pthread_mutex_init(&s->open_lock, NULL);
        s->dir = strdup(dir);
        if (!s->dir) {
                pthread_mutex_destroy(&s->open_lock);
                free(s);
                return NULL;
        }
        return s;
}

/* A store with its options set and no database open yet. */
static int store_prepare(const char *dir, MetaStore **ret) {
        MetaStore *s = store_new(dir);
        if (!s)
                return -ENOMEM;
        int r = store_options(s);
        if (r < 0) {
                meta_store_close(s);
                return r;
        }
        *ret = s;
        return 0;
}

int meta_store_open(const char *dir, MetaStore **ret, ErrMsg *err) {
        MetaStore *s;
        int r = store_prepare(dir, &s);
        if (r < 0)
                return r;

        char *e = NULL;
        s->db = rocksdb_open(s->options, dir, &e);
        if (e) {
                r = meta_rocks_error(e, err, "open of", dir);
                s->db = NULL;
                meta_store_close(s);
                return r;
        }
        *ret = s;
        return 0;
}

int meta_store_open_lazy(const char *dir, MetaStore **ret, ErrMsg *err) {
        char current[4096];
        snprintf(current, sizeof(current), "%s/CURRENT", dir);
        if (access(current, F_OK) < 0)
                return meta_store_open(dir, ret, err); /* creates it */
        MetaStore *s;
        int r = store_prepare(dir, &s);
        if (r < 0)
                return r;
        char parent[4200];
        snprintf(parent, sizeof(parent), "%s.secondary", dir);
        if (mkdir(parent, 0700) < 0 && errno != EEXIST) {
                r = -errno;
                meta_store_close(s);
                return errmsg_set(err, r, "cannot create %s: %s", parent, strerror(-r));
        }
        remove_stale_secondaries(parent);
        if (asprintf(&s->secondary_dir, "%s/%d", parent, (int) getpid()) < 0) {
                s->secondary_dir = NULL;
                meta_store_close(s);
                return -ENOMEM;
        }
        char *e = NULL;
        s->ro = rocksdb_open_as_secondary(s->options, dir, s->secondary_dir, &e);
        if (e) {
                /* e.g. a store written by an older RocksDB: the read-write
                 * open says more, or repairs it */
                s->ro = NULL;
                rocksdb_free(e);
                meta_store_close(s);
                return meta_store_open(dir, ret, err);
        }
        *ret = s;
        return 0;
}

/* A secondary's miss: reads what the primary wrote since (its MANIFEST
 * and WAL). Returns 1 when there is something new to look at. Serialized:
 * one catch-up at a time. */
static int catch_up(MetaStore *s, ErrMsg *err) {
        if (!s->ro || __atomic_load_n(&s->db, __ATOMIC_ACQUIRE))
                return 0;
        pthread_mutex_lock(&s->open_lock);
        char *e = NULL;
        rocksdb_try_catch_up_with_primary(s->ro, &e);
        pthread_mutex_unlock(&s->open_lock);
        if (e)
                return meta_rocks_error(e, err, "catch-up of", s->dir);
        return 1;
}

static rocksdb_t *reader(MetaStore *s) {
        rocksdb_t *db = __atomic_load_n(&s->db, __ATOMIC_ACQUIRE);
        return db ? db : s->ro;
}

/* The read-write handle, opened on first use by a lazy store. */
static int writer(MetaStore *s, rocksdb_t **ret, ErrMsg *err) {
        rocksdb_t *db = __atomic_load_n(&s->db, __ATOMIC_ACQUIRE);
        if (db) {
                *ret = db;
                return 0;
        }
        pthread_mutex_lock(&s->open_lock);
        int r = 0;
        /* The previous worker's lock goes when its memory keeper exits
         * (worker/util/mm-keeper.h), a few hundred ms after the worker:
         * retry a busy store for up to 2 s. */
        for (int tries = 0; !s->db; tries++) {
                char *e = NULL;
                db = rocksdb_open(s->options, s->dir, &e);
                if (!e) {
                        __atomic_store_n(&s->db, db, __ATOMIC_RELEASE);
                        break;
                }
                r = meta_rocks_error(e, err, "read-write open of", s->dir);
                if (r != -EBUSY || tries >= 100)
                        break;
                r = 0;
                usleep(20000);
        }
        pthread_mutex_unlock(&s->open_lock);
        if (r < 0)
                return r;
        *ret = s->db;
        return 0;
}

/* "layer/<key>" in a malloc'd buffer. */
static char *layer_key(const char *key, size_t *ret_len) {
        size_t len = strlen(LAYER_PREFIX) + strlen(key);
        char *k = malloc(len + 1);
        if (!k)
                return NULL;
        memcpy(k, LAYER_PREFIX, strlen(LAYER_PREFIX));
        memcpy(k + strlen(LAYER_PREFIX), key, strlen(key) + 1);
        *ret_len = len;
        return k;
}

int meta_layer_put(MetaStore *s, const char *key, const void *val, size_t len, ErrMsg *err) {
        size_t klen;
        _cleanup_free_ char *k = layer_key(key, &klen);
        if (!k)
                return -ENOMEM;
        rocksdb_t *db;
        int r = writer(s, &db, err);
        if (r < 0)
                return r;
        char *e = NULL;
        rocksdb_put(db, s->write_options, k, klen, val, len, &e);
        if (e)
                return meta_rocks_error(e, err, "put of", k);
        return 0;
}

/* One get: 0, -ENOENT, or a RocksDB error. */
static int get_pinned(MetaStore *s, const char *k, size_t klen, rocksdb_pinnableslice_t **ret, ErrMsg *err) {
        char *e = NULL;
        /* pinned: one copy, straight from the memtable or block cache */
        rocksdb_pinnableslice_t *v = rocksdb_get_pinned(reader(s), s->read_options, k, klen, &e);
        if (e) {
                rocksdb_pinnableslice_destroy(v);
                return meta_rocks_error(e, err, "get of", k);
        }
        *ret = v;
        return v ? 0 : -ENOENT;
}

int meta_layer_get(MetaStore *s, const char *key, void **ret_val, size_t *ret_len, ErrMsg *err) {
        size_t klen;
        _cleanup_free_ char *k = layer_key(key, &klen);
        if (!k)
                return -ENOMEM;
        rocksdb_pinnableslice_t *v;
        int r = get_pinned(s, k, klen, &v, err);
        /* A secondary misses what the previous worker stored after this
         * one opened the store: catch up, look again. */
        if (r == -ENOENT) {
                ErrMsg ignored = {}; /* a failed catch-up leaves a miss a miss */
                if (catch_up(s, &ignored) > 0)
                        r = get_pinned(s, k, klen, &v, err);
        }
        if (r < 0)
                return r;
        size_t len;
        const char *data = rocksdb_pinnableslice_value(v, &len);
        void *copy = malloc(MAX(len, (size_t) 1));
        if (!copy) {
                rocksdb_pinnableslice_destroy(v);
                return -ENOMEM;
        }
        if (len > 0)
                memcpy(copy, data, len);
        rocksdb_pinnableslice_destroy(v);
        *ret_val = copy;
        *ret_len = len;
        return 0;
}

int meta_layer_delete(MetaStore *s, const char *key, ErrMsg *err) {
        size_t klen;
        _cleanup_free_ char *k = layer_key(key, &klen);
        if (!k)
                return -ENOMEM;
        rocksdb_t *db;
        int r = writer(s, &db, err);
        if (r < 0)
                return r;
        char *e = NULL;
        rocksdb_delete(db, s->write_options, k, klen, &e);
        if (e)
                return meta_rocks_error(e, err, "delete of", k);
        return 0;
}
