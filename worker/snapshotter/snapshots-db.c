/* The snapshotter's RocksDB database (worker/snapshotter/snapshots-db.h).
 * Owns the rocksdb_t and its options; nothing here changes after open.
 *
 * Its own database, not worker/meta's store: that one is a put/get/delete
 * of single layer records, opened as a secondary so that a standby worker
 * can read it while another writes. Snapshots need atomic multi-key
 * batches (Commit renames a record and moves its parent link) and prefix
 * scans (List, Cleanup, the children check), and they are written only by
 * the worker that serves containerd's socket.
 *
 * RocksDB's errors become errno in worker/meta/rocks-error.c, for this
 * database and the layer store alike. */
#include "worker/snapshotter/snapshots-db.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <rocksdb/c.h>

#include "worker/meta/rocks-error.h"

struct SnapDb {
        rocksdb_t *db;                         /* owned */
        rocksdb_options_t *options;            /* owned */
        rocksdb_readoptions_t *read_options;   /* owned */
        rocksdb_writeoptions_t *write_options; /* owned; sync */
};

struct SnapDbBatch {
        rocksdb_writebatch_t *wb; /* owned */
};


SnapDb *snap_db_close(SnapDb *db) {
        if (!db)
                return NULL;
        if (db->db)
                rocksdb_close(db->db);
        if (db->write_options)
                rocksdb_writeoptions_destroy(db->write_options);
        if (db->read_options)
                rocksdb_readoptions_destroy(db->read_options);
        if (db->options)
                rocksdb_options_destroy(db->options);
        free(db);
        return NULL;
}

int snap_db_open(const char *dir, SnapDb **ret, ErrMsg *err) {
        SnapDb *db = calloc(1, sizeof(*db));
        if (!db)
                return -ENOMEM;
        db->options = rocksdb_options_create();
        db->read_options = rocksdb_readoptions_create();
        db->write_options = rocksdb_writeoptions_create();
        if (!db->options || !db->read_options || !db->write_options) {
                snap_db_close(db);
                return -ENOMEM;
        }
        rocksdb_options_set_create_if_missing(db->options, 1);
        rocksdb_options_set_keep_log_file_num(db->options, 2);
        /* Records are small (a few hundred bytes): a small memtable keeps
         * the WAL replayed at the next open short. */
        rocksdb_options_set_write_buffer_size(db->options, 4u << 20);
        rocksdb_options_set_max_write_buffer_number(db->options, 2);
        rocksdb_writeoptions_set_sync(db->write_options, 1);

        char *e = NULL;
        db->db = rocksdb_open(db->options, dir, &e);
        if (e) {
                int r = meta_rocks_error(e, err, "open", "");
                db->db = NULL;
                snap_db_close(db);
                return errmsg_prefix(err, r, "%s", dir);
        }
        *ret = db;
        return 0;
}

int snap_db_get(SnapDb *db, const void *key, size_t klen, void **ret_val, size_t *ret_len, ErrMsg *err) {
        char *e = NULL;
        rocksdb_pinnableslice_t *v = rocksdb_get_pinned(db->db, db->read_options, key, klen, &e);
        if (e)
                return meta_rocks_error(e, err, "get", "");
        if (!v)
                return -ENOENT;
        size_t len;
        const char *data = rocksdb_pinnableslice_value(v, &len);
        /* one byte more, so that an empty value is not a NULL */
        void *copy = malloc(len + 1);
        if (!copy) {
                rocksdb_pinnableslice_destroy(v);
                return -ENOMEM;
        }
        memcpy(copy, data, len);
        rocksdb_pinnableslice_destroy(v);
        *ret_val = copy;
        *ret_len = len;
        return 0;
}

int snap_db_scan(SnapDb *db, const void *prefix, size_t plen, SnapDbScanFn fn, void *userdata, ErrMsg *err) {
        rocksdb_iterator_t *it = rocksdb_create_iterator(db->db, db->read_options);
        if (!it)
                return -ENOMEM;
        int r = 0;
        /* Bounded by the keys under the prefix in the iterator's snapshot. */
        for (rocksdb_iter_seek(it, prefix, plen); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                size_t klen, vlen;
                const char *k = rocksdb_iter_key(it, &klen);
                if (klen < plen || memcmp(k, prefix, plen) != 0)
                        break;
                const char *v = rocksdb_iter_value(it, &vlen);
                r = fn(userdata, k, klen, v, vlen);
                if (r != 0)
                        break;
        }
        if (r == 0) {
                char *e = NULL;
                rocksdb_iter_get_error(it, &e);
                if (e)
                        r = meta_rocks_error(e, err, "scan", "");
        }
        rocksdb_iter_destroy(it);
        return r;
}

SnapDbBatch *snap_db_batch_new(void) {
        SnapDbBatch *b = calloc(1, sizeof(*b));
        if (!b)
                return NULL;
        b->wb = rocksdb_writebatch_create();
        if (!b->wb) {
                free(b);
                return NULL;
        }
        return b;
}

SnapDbBatch *snap_db_batch_free(SnapDbBatch *b) {
        if (!b)
                return NULL;
        rocksdb_writebatch_destroy(b->wb);
        free(b);
        return NULL;
}

void snap_db_batch_put(SnapDbBatch *b, const void *key, size_t klen, const void *val, size_t vlen) {
        rocksdb_writebatch_put(b->wb, key, klen, val, vlen);
}

void snap_db_batch_delete(SnapDbBatch *b, const void *key, size_t klen) {
        rocksdb_writebatch_delete(b->wb, key, klen);
}

int snap_db_batch_write(SnapDb *db, SnapDbBatch *b, ErrMsg *err) {
        char *e = NULL;
        rocksdb_write(db->db, db->write_options, b->wb, &e);
        if (e)
                return meta_rocks_error(e, err, "write", "");
        return 0;
}
