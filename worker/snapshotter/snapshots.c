/* The snapshot store (worker/snapshotter/snapshots.h).
 *
 * Owns the database (snapshots-db.c), ROOT/snapshots and every directory
 * in it. Records, in RocksDB:
 *   "v"                          schema version (1)
 *   "n"                          the next id (8 bytes, big endian)
 *   "s/" NAME                    SnapshotRecord (proto/containerd/snapshot-record.proto)
 *   "c/" PARENT_ID CHILD_ID      the child's name: a parent's children by
 *                                prefix scan (ids 8 bytes, big endian)
 *
 * Invariants, each kept by one synced write batch under `lock`:
 *   - every record's id has a directory ROOT/snapshots/<id> (made and
 *     renamed into place before the batch; after a crash in between the
 *     directory is an orphan for Cleanup);
 *   - ids are never reused: `next_id` is above every id in a record and
 *     every numeric directory name (both checked at open), so an orphan's
 *     directory is never taken for a new snapshot;
 *   - a record with a parent has a "c/" link from it, so the parent cannot
 *     be removed.
 * Directory removals happen after the batch and outside the lock, like
 * containerd's; they only touch directories no record refers to, and
 * Prepare makes its temporary directories (new-XXXXXX) under the lock, so
 * the orphan list computed under the lock never holds one being built. */
#include "worker/snapshotter/snapshots.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "common/util/macro.h"
#include "snapshot-record.pb.h"
#include "worker/snapshotter/snapshots-db.h"
#include "worker/snapshotter/snapshots-fs.h"

#define SCHEMA_VERSION 1
/* Ancestors of one snapshot; overlayfs itself stops at 500 lower layers. */
#define CHAIN_MAX 1024
#define NAME_MAX_LEN 4095 /* the wire's fixed arrays, minus the NUL */
#define TMPFS_MAGIC_VALUE 0x01021994

struct Snapshotter {
        char *root;           /* owned */
        char *snapshots_dir;  /* owned: ROOT/snapshots */
        SnapDb *db;           /* owned */
        SnapshotterHooks hooks;
        bool index_off;       /* overlay's "index=off" is known to this kernel */
        bool userxattr;       /* overlay needs "userxattr" (a user namespace) */
        pthread_mutex_t lock; /* orders every change of records and directories */
        uint64_t next_id;     /* protected by lock */
        /* Orphans some thread is removing now (outside the lock): a
         * second scan must not hand them out again, or two removals of one
         * tree race. Protected by lock. */
        char **removing;      /* owned, each owned */
        size_t n_removing;
};

/* A decoded record. */
typedef struct Record {
        uint64_t id;
        SnapKind kind;
        char *parent;         /* owned; "" for none */
        uint64_t parent_id;
        int64_t created_ns, updated_ns;
        SnapLabels labels;
        int64_t size, inodes;
        bool remote;
} Record;

static void record_clear(Record *r) {
        free(r->parent);
        snap_labels_clear(&r->labels);
        *r = (Record) {};
}

static int64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void be64_put(uint8_t *p, uint64_t v) {
        for (int i = 7; i >= 0; i--, v >>= 8)
                p[i] = (uint8_t) v;
}

static uint64_t be64_get(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}

/* "s/" + name; malloc'd. */
static char *name_key(const char *name, size_t *ret_len) {
        size_t n = strlen(name);
        char *k = malloc(n + 2);
        if (!k)
                return NULL;
        memcpy(k, "s/", 2);
        memcpy(k + 2, name, n);
        *ret_len = n + 2;
        return k;
}

static void child_key(uint8_t out[18], uint64_t parent_id, uint64_t child_id) {
        out[0] = 'c';
        out[1] = '/';
        be64_put(out + 2, parent_id);
        be64_put(out + 10, child_id);
}

/* ---- record codec ---- */

static bool labels_decode_cb(pb_istream_t *stream, const pb_field_t *field, void **arg) {
        (void) field;
        SnapLabels *labels = *arg;
        holdfast_snapshotter_SnapshotLabel l = holdfast_snapshotter_SnapshotLabel_init_zero;
        if (!pb_decode(stream, holdfast_snapshotter_SnapshotLabel_fields, &l))
                return false;
        return snap_labels_set(labels, l.key, l.value) == 0;
}

static bool labels_encode_cb(pb_ostream_t *stream, const pb_field_t *field, void *const *arg) {
        const SnapLabels *labels = *arg;
        for (size_t i = 0; i < labels->n; i++) {
                holdfast_snapshotter_SnapshotLabel l;
                if (strlen(labels->items[i].key) >= sizeof(l.key) || strlen(labels->items[i].value) >= sizeof(l.value))
                        return false;
                strcpy(l.key, labels->items[i].key);
                strcpy(l.value, labels->items[i].value);
                if (!pb_encode_tag_for_field(stream, field) ||
                    !pb_encode_submessage(stream, holdfast_snapshotter_SnapshotLabel_fields, &l))
                        return false;
        }
        return true;
}

static int record_decode(const void *buf, size_t len, Record *ret) {
        _cleanup_free_ holdfast_snapshotter_SnapshotRecord *pb = malloc(sizeof(*pb));
        if (!pb)
                return -ENOMEM;
        *pb = (holdfast_snapshotter_SnapshotRecord) holdfast_snapshotter_SnapshotRecord_init_zero;
        Record r = {};
        pb->labels.funcs.decode = labels_decode_cb;
        pb->labels.arg = &r.labels;
        pb_istream_t in = pb_istream_from_buffer(buf, len);
        if (!pb_decode(&in, holdfast_snapshotter_SnapshotRecord_fields, pb) || pb->id == 0 ||
            pb->kind < SNAP_KIND_VIEW || pb->kind > SNAP_KIND_COMMITTED) {
                snap_labels_clear(&r.labels);
                return -EBADMSG;
        }
        r.parent = strdup(pb->parent);
        if (!r.parent) {
                snap_labels_clear(&r.labels);
                return -ENOMEM;
        }
        r.id = pb->id;
        r.kind = (SnapKind) pb->kind;
        r.parent_id = pb->parent_id;
        r.created_ns = pb->created_ns;
        r.updated_ns = pb->updated_ns;
        r.size = pb->size;
        r.inodes = pb->inodes;
        r.remote = pb->remote;
        *ret = r;
        return 0;
}

static int record_encode(const Record *r, uint8_t **ret, size_t *ret_len) {
        _cleanup_free_ holdfast_snapshotter_SnapshotRecord *pb = calloc(1, sizeof(*pb));
        if (!pb)
                return -ENOMEM;
        if (strlen(r->parent) >= sizeof(pb->parent))
                return -ENAMETOOLONG;
        pb->id = r->id;
        pb->kind = r->kind;
        strcpy(pb->parent, r->parent);
        pb->parent_id = r->parent_id;
        pb->created_ns = r->created_ns;
        pb->updated_ns = r->updated_ns;
        pb->labels.funcs.encode = labels_encode_cb;
        pb->labels.arg = (void *) &r->labels;
        pb->size = r->size;
        pb->inodes = r->inodes;
        pb->remote = r->remote;
        size_t len;
        if (!pb_get_encoded_size(&len, holdfast_snapshotter_SnapshotRecord_fields, pb))
                return -EINVAL;
        uint8_t *buf = malloc(len + 1);
        if (!buf)
                return -ENOMEM;
        pb_ostream_t out = pb_ostream_from_buffer(buf, len);
        if (!pb_encode(&out, holdfast_snapshotter_SnapshotRecord_fields, pb)) {
                free(buf);
                return -EINVAL;
        }
        *ret = buf;
        *ret_len = out.bytes_written;
        return 0;
}

static int record_get(Snapshotter *s, const char *name, Record *ret, ErrMsg *err) {
        size_t klen;
        _cleanup_free_ char *k = name_key(name, &klen);
        if (!k)
                return -ENOMEM;
        _cleanup_free_ void *v = NULL;
        size_t vlen;
        int r = snap_db_get(s->db, k, klen, &v, &vlen, err);
        if (r < 0)
                return r;
        r = record_decode(v, vlen, ret);
        if (r == -EBADMSG)
                return errmsg_set(err, r, "record of snapshot %s is corrupt", name);
        return r;
}

static int batch_put_record(SnapDbBatch *b, const char *name, const Record *rec) {
        size_t klen;
        _cleanup_free_ char *k = name_key(name, &klen);
        if (!k)
                return -ENOMEM;
        _cleanup_free_ uint8_t *v = NULL;
        size_t vlen;
        int r = record_encode(rec, &v, &vlen);
        if (r < 0)
                return r;
        snap_db_batch_put(b, k, klen, v, vlen);
        return 0;
}

static int batch_delete_record(SnapDbBatch *b, const char *name) {
        size_t klen;
        _cleanup_free_ char *k = name_key(name, &klen);
        if (!k)
                return -ENOMEM;
        snap_db_batch_delete(b, k, klen);
        return 0;
}

static void batch_put_next_id(SnapDbBatch *b, uint64_t next) {
        uint8_t v[8];
        be64_put(v, next);
        snap_db_batch_put(b, "n", 1, v, sizeof(v));
}

/* ---- labels, names ---- */

/* containerd's labels.Validate, and what the wire and the record can
 * carry. */
static int labels_validate(const SnapLabels *l, ErrMsg *err) {
        for (size_t i = 0; i < l->n; i++) {
                size_t n = strlen(l->items[i].key) + strlen(l->items[i].value);
                if (n > SNAP_LABEL_MAX)
                        return errmsg_set(err, -EINVAL, "label key and value greater than maximum size (%d bytes), key: %.64s",
                                          SNAP_LABEL_MAX, l->items[i].key);
        }
        return 0;
}

/* A copy without the empty values (containerd never stores those). */
static int labels_stored(const SnapLabels *in, SnapLabels *ret) {
        SnapLabels l = {};
        if (in)
                for (size_t i = 0; i < in->n; i++) {
                        if (!in->items[i].value[0])
                                continue;
                        int r = snap_labels_set(&l, in->items[i].key, in->items[i].value);
                        if (r < 0) {
                                snap_labels_clear(&l);
                                return r;
                        }
                }
        *ret = l;
        return 0;
}

static int name_validate(const char *what, const char *name, ErrMsg *err) {
        if (!name || !name[0])
                return errmsg_set(err, -EINVAL, "%s must not be empty", what);
        if (strlen(name) > NAME_MAX_LEN)
                return errmsg_set(err, -EINVAL, "%s longer than %d bytes", what, NAME_MAX_LEN);
        return 0;
}

/* ---- paths, mounts ---- */

static char *id_path(Snapshotter *s, uint64_t id, const char *sub) {
        char *p;
        if (asprintf(&p, "%s/%" PRIu64 "%s%s", s->snapshots_dir, id, sub ? "/" : "", sub ? sub : "") < 0)
                return NULL;
        return p;
}

char *snapshotter_fs_dir(Snapshotter *s, uint64_t id) {
        return id_path(s, id, "fs");
}

/* The ids of name's ancestors, nearest first: at most CHAIN_MAX, each
 * link checked against the record it names. */
static int parent_chain(Snapshotter *s, const Record *rec, uint64_t **ret, size_t *ret_n, ErrMsg *err) {
        uint64_t *ids = NULL;
        size_t n = 0;
        _cleanup_free_ char *parent = strdup(rec->parent);
        if (!parent)
                return -ENOMEM;
        uint64_t want = rec->parent_id;
        /* Bounded by CHAIN_MAX: a cycle in corrupt records ends there. */
        while (parent[0]) {
                if (n == CHAIN_MAX) {
                        free(ids);
                        return errmsg_set(err, -ELOOP, "snapshot parent chain longer than %d", CHAIN_MAX);
                }
                Record p = {};
                int r = record_get(s, parent, &p, err);
                if (r == -ENOENT)
                        r = errmsg_set(err, -ENOENT, "parent %s does not exist", parent);
                if (r == 0 && p.id != want) {
                        record_clear(&p);
                        r = errmsg_set(err, -EBADMSG, "parent %s is not the snapshot its child was made on", parent);
                }
                if (r < 0) {
                        free(ids);
                        return r;
                }
                uint64_t *nids = realloc(ids, (n + 1) * sizeof(*ids));
                if (!nids) {
                        record_clear(&p);
                        free(ids);
                        return -ENOMEM;
                }
                ids = nids;
                ids[n++] = p.id;
                free(parent);
                parent = TAKE_PTR(p.parent);
                want = p.parent_id;
                record_clear(&p);
        }
        *ret = ids;
        *ret_n = n;
        return 0;
}

static int mount_add_option(SnapMount *m, char *take_opt) {
        if (!take_opt)
                return -ENOMEM;
        char **o = realloc(m->options, (m->n_options + 1) * sizeof(*o));
        if (!o) {
                free(take_opt);
                return -ENOMEM;
        }
        m->options = o;
        m->options[m->n_options++] = take_opt;
        return 0;
}

static char *strdup_printf(const char *fmt, ...) _printf_(1, 2);
static char *strdup_printf(const char *fmt, ...) {
        char *p;
        va_list ap;
        va_start(ap, fmt);
        int r = vasprintf(&p, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : p;
}

/* containerd's overlay snapshotter's mounts(), exactly. */
static int build_mounts(Snapshotter *s, SnapKind kind, uint64_t id, const uint64_t *parents, size_t n_parents,
                        SnapMounts *ret) {
        SnapMounts ms = { .items = calloc(1, sizeof(SnapMount)), .n = 1 };
        if (!ms.items)
                return -ENOMEM;
        SnapMount *m = &ms.items[0];
        int r = 0;
        if (n_parents == 0 || (kind == SNAP_KIND_VIEW && n_parents == 1)) {
                /* overlay needs a lower layer: a bind mount instead */
                m->type = strdup("bind");
                m->source = id_path(s, n_parents == 0 ? id : parents[0], "fs");
                if (!m->type || !m->source)
                        r = -ENOMEM;
                if (r == 0)
                        r = mount_add_option(m, strdup(kind == SNAP_KIND_ACTIVE ? "rw" : "ro"));
                if (r == 0)
                        r = mount_add_option(m, strdup("rbind"));
                goto done;
        }
        m->type = strdup("overlay");
        m->source = strdup("overlay");
        if (!m->type || !m->source) {
                r = -ENOMEM;
                goto done;
        }
        if (s->index_off && (r = mount_add_option(m, strdup("index=off"))) < 0)
                goto done;
        if (s->userxattr && (r = mount_add_option(m, strdup("userxattr"))) < 0)
                goto done;
        if (kind == SNAP_KIND_ACTIVE) {
                r = mount_add_option(m, strdup_printf("workdir=%s/%" PRIu64 "/work", s->snapshots_dir, id));
                if (r == 0)
                        r = mount_add_option(m, strdup_printf("upperdir=%s/%" PRIu64 "/fs", s->snapshots_dir, id));
                if (r < 0)
                        goto done;
        }
        size_t per = strlen(s->snapshots_dir) + 1 + 20 + 4;
        char *lower = malloc(strlen("lowerdir=") + n_parents * (per + 1) + 1);
        if (!lower) {
                r = -ENOMEM;
                goto done;
        }
        char *p = stpcpy(lower, "lowerdir=");
        for (size_t i = 0; i < n_parents; i++)
                p += sprintf(p, "%s%s/%" PRIu64 "/fs", i ? ":" : "", s->snapshots_dir, parents[i]);
        r = mount_add_option(m, lower);
done:
        if (r < 0) {
                snap_mounts_clear(&ms);
                return r;
        }
        *ret = ms;
        return 0;
}

/* ---- orphans ---- */

typedef struct IdList {
        uint64_t *ids;
        size_t n, cap;
} IdList;

static int id_list_add(IdList *l, uint64_t id) {
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 64;
                uint64_t *ids = realloc(l->ids, cap * sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
                l->ids = ids;
                l->cap = cap;
        }
        l->ids[l->n++] = id;
        return 0;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static int collect_id(void *ud, const void *k, size_t klen, const void *v, size_t vlen) {
        (void) k;
        (void) klen;
        Record rec = {};
        int r = record_decode(v, vlen, &rec);
        if (r == -EBADMSG)
                return 0; /* a corrupt record keeps nothing alive, and harms nothing */
        if (r < 0)
                return r;
        r = id_list_add(ud, rec.id);
        record_clear(&rec);
        return r;
}

/* A decimal id as a directory name, or 0. */
static uint64_t parse_id(const char *name) {
        if (!name[0] || name[0] == '0' || strlen(name) > 20)
                return 0;
        uint64_t v = 0;
        for (const char *c = name; *c; c++) {
                if (*c < '0' || *c > '9')
                        return 0;
                if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t) (*c - '0'), &v))
                        return 0;
        }
        return v;
}

static bool removing_has(Snapshotter *s, const char *name) {
        for (size_t i = 0; i < s->n_removing; i++)
                if (strcmp(s->removing[i], name) == 0)
                        return true;
        return false;
}

/* Under lock: the names under ROOT/snapshots that no record refers to and
 * nobody removes yet; they are the caller's to remove (remove_dirs()). */
static int orphans_locked(Snapshotter *s, char ***ret, size_t *ret_n, ErrMsg *err) {
        IdList live = {};
        int r = snap_db_scan(s->db, "s/", 2, collect_id, &live, err);
        if (r < 0) {
                free(live.ids);
                return r;
        }
        if (live.n > 0)
                qsort(live.ids, live.n, sizeof(uint64_t), cmp_u64);
        DIR *d = opendir(s->snapshots_dir);
        if (!d) {
                free(live.ids);
                return errmsg_set(err, -errno, "cannot read %s: %m", s->snapshots_dir);
        }
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        /* Bounded by the directory's entries. */
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                uint64_t id = parse_id(de->d_name);
                if (id && live.n > 0 && bsearch(&id, live.ids, live.n, sizeof(uint64_t), cmp_u64))
                        continue;
                if (removing_has(s, de->d_name))
                        continue;
                char **nn = realloc(names, (n + 1) * sizeof(*nn));
                if (!nn || !(nn[n] = strdup(de->d_name))) {
                        names = nn ? nn : names;
                        r = -ENOMEM;
                        break;
                }
                names = nn;
                n++;
        }
        closedir(d);
        free(live.ids);
        /* Register them: the copies in s->removing are its own. */
        if (r == 0 && n > 0) {
                char **rm = realloc(s->removing, (s->n_removing + n) * sizeof(*rm));
                if (!rm)
                        r = -ENOMEM;
                else
                        s->removing = rm;
                for (size_t i = 0; r == 0 && i < n; i++) {
                        rm[s->n_removing + i] = strdup(names[i]);
                        if (!rm[s->n_removing + i]) {
                                while (i > 0)
                                        free(rm[s->n_removing + --i]);
                                r = -ENOMEM;
                        }
                }
        }
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        free(names[i]);
                free(names);
                return r;
        }
        s->n_removing += n;
        *ret = names;
        *ret_n = n;
        return 0;
}

/* Under lock: the removal of name is over. */
static void removing_done_locked(Snapshotter *s, const char *name) {
        for (size_t i = 0; i < s->n_removing; i++)
                if (strcmp(s->removing[i], name) == 0) {
                        free(s->removing[i]);
                        s->removing[i] = s->removing[--s->n_removing];
                        return;
                }
}

/* Outside the lock: removes the directories (best effort: what stays is
 * an orphan for the next Cleanup), calling the release hook first for
 * remote_id (a remote snapshot just removed) and for any whose fs/ is a
 * mount point. Returns the first error. */
static int remove_dirs(Snapshotter *s, char **take_names, size_t n, uint64_t remote_id, ErrMsg *err) {
        int first = 0;
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *dir = NULL, *fs = NULL;
                if (asprintf(&dir, "%s/%s", s->snapshots_dir, take_names[i]) < 0 ||
                    asprintf(&fs, "%s/%s/fs", s->snapshots_dir, take_names[i]) < 0) {
                        first = first ?: -ENOMEM;
                        continue;
                }
                uint64_t id = parse_id(take_names[i]);
                if (id && s->hooks.release_remote && (id == remote_id || snap_fs_is_mountpoint(fs) == 1))
                        s->hooks.release_remote(s->hooks.userdata, id, fs);
                ErrMsg e = {};
                int r = snap_fs_remove_tree(dir, &e);
                if (r < 0 && first == 0) {
                        first = r;
                        if (err)
                                *err = e;
                }
        }
        pthread_mutex_lock(&s->lock);
        for (size_t i = 0; i < n; i++)
                removing_done_locked(s, take_names[i]);
        pthread_mutex_unlock(&s->lock);
        for (size_t i = 0; i < n; i++)
                free(take_names[i]);
        free(take_names);
        return first;
}

/* ---- open ---- */

static bool in_user_namespace(void) {
        FILE *f = fopen("/proc/self/uid_map", "re");
        if (!f)
                return false;
        unsigned long a, b, c;
        int n = fscanf(f, "%lu %lu %lu", &a, &b, &c);
        fclose(f);
        return !(n == 3 && a == 0 && b == 0 && c == 4294967295ul);
}

static int max_id_cb(void *ud, const void *k, size_t klen, const void *v, size_t vlen) {
        (void) k;
        (void) klen;
        uint64_t *max = ud;
        Record rec = {};
        if (record_decode(v, vlen, &rec) == 0) {
                *max = MAX(*max, rec.id);
                record_clear(&rec);
        }
        return 0;
}

static int load_next_id(Snapshotter *s, ErrMsg *err) {
        uint64_t next = 1;
        _cleanup_free_ void *v = NULL;
        size_t vlen;
        int r = snap_db_get(s->db, "n", 1, &v, &vlen, err);
        if (r == 0 && vlen == 8)
                next = MAX(be64_get(v), (uint64_t) 1);
        else if (r < 0 && r != -ENOENT)
                return r;
        uint64_t max = 0;
        r = snap_db_scan(s->db, "s/", 2, max_id_cb, &max, err);
        if (r < 0)
                return r;
        DIR *d = opendir(s->snapshots_dir);
        if (!d)
                return errmsg_set(err, -errno, "cannot read %s: %m", s->snapshots_dir);
        struct dirent *de;
        while ((de = readdir(d)))
                max = MAX(max, parse_id(de->d_name));
        closedir(d);
        s->next_id = MAX(next, max + 1);
        return 0;
}

static int schema_check(Snapshotter *s, ErrMsg *err) {
        _cleanup_free_ void *v = NULL;
        size_t vlen;
        int r = snap_db_get(s->db, "v", 1, &v, &vlen, err);
        if (r == -ENOENT) {
                SnapDbBatch *b = snap_db_batch_new();
                if (!b)
                        return -ENOMEM;
                uint8_t ver = SCHEMA_VERSION;
                snap_db_batch_put(b, "v", 1, &ver, 1);
                r = snap_db_batch_write(s->db, b, err);
                snap_db_batch_free(b);
                return r;
        }
        if (r < 0)
                return r;
        if (vlen != 1 || ((uint8_t *) v)[0] != SCHEMA_VERSION)
                return errmsg_set(err, -EPROTONOSUPPORT, "snapshot database %s/db has schema %u, this holdfast reads %d",
                                  s->root, vlen == 1 ? ((uint8_t *) v)[0] : 0u, SCHEMA_VERSION);
        return 0;
}

/* Bounded by busy_wait_ms: retries every 20 ms while the lock is held. */
static int db_open_waiting(const char *dir, unsigned busy_wait_ms, SnapDb **ret, ErrMsg *err) {
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                int r = snap_db_open(dir, ret, err);
                if (r != -EBUSY)
                        return r;
                clock_gettime(CLOCK_MONOTONIC, &now);
                int64_t waited_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
                if (waited_ms >= busy_wait_ms)
                        return r;
                nanosleep(&(struct timespec) { .tv_nsec = 20 * 1000000 }, NULL);
        }
}

Snapshotter *snapshotter_free(Snapshotter *s) {
        if (!s)
                return NULL;
        snap_db_close(s->db);
        for (size_t i = 0; i < s->n_removing; i++)
                free(s->removing[i]);
        free(s->removing);
        pthread_mutex_destroy(&s->lock);
        free(s->snapshots_dir);
        free(s->root);
        free(s);
        return NULL;
}

int snapshotter_new(const SnapshotterConfig *cfg, Snapshotter **ret, ErrMsg *err) {
        if (!cfg->root || cfg->root[0] != '/')
                return errmsg_set(err, -EINVAL, "snapshotter root must be an absolute path");
        Snapshotter *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        pthread_mutex_init(&s->lock, NULL);
        s->hooks = cfg->hooks;
        s->root = strdup(cfg->root);
        if (!s->root || asprintf(&s->snapshots_dir, "%s/snapshots", cfg->root) < 0) {
                s->snapshots_dir = NULL;
                snapshotter_free(s);
                return -ENOMEM;
        }
        int r = 0;
        if (mkdir(s->root, 0700) < 0 && errno != EEXIST)
                r = errmsg_set(err, -errno, "cannot create %s: %m", s->root);
        if (r == 0 && mkdir(s->snapshots_dir, 0700) < 0 && errno != EEXIST)
                r = errmsg_set(err, -errno, "cannot create %s: %m", s->snapshots_dir);
        _cleanup_free_ char *dbdir = NULL;
        if (r == 0 && asprintf(&dbdir, "%s/db", s->root) < 0) {
                dbdir = NULL;
                r = -ENOMEM;
        }
        if (r == 0)
                r = db_open_waiting(dbdir, cfg->busy_wait_ms, &s->db, err);
        if (r == 0)
                r = schema_check(s, err);
        if (r == 0)
                r = load_next_id(s, err);
        if (r < 0) {
                snapshotter_free(s);
                return r;
        }
        s->index_off = access("/sys/module/overlay/parameters/index", F_OK) == 0;
        if (in_user_namespace()) {
                struct statfs sfs;
                s->userxattr = !(statfs(s->root, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC_VALUE);
        }
        *ret = s;
        return 0;
}

/* ---- create ---- */

/* Under lock: makes the directory and the record of a new active snapshot
 * or view; returns its id and ancestors. */
static int create_locked(Snapshotter *s, SnapKind kind, const char *key, const char *parent, const SnapLabels *labels,
                         uint64_t *ret_id, uint64_t **ret_chain, size_t *ret_n_chain, ErrMsg *err) {
        Record existing = {};
        int r = record_get(s, key, &existing, err);
        if (r == 0) {
                record_clear(&existing);
                return errmsg_set(err, -EEXIST, "snapshot %s already exists", key);
        }
        if (r != -ENOENT)
                return r;

        Record rec = { .kind = kind, .parent = (char *) parent };
        _cleanup_free_ uint64_t *chain = NULL;
        size_t n_chain = 0;
        struct stat parent_st = {};
        if (parent[0]) {
                Record p = {};
                r = record_get(s, parent, &p, err);
                if (r == -ENOENT)
                        return errmsg_set(err, -ENOENT, "missing parent %s", parent);
                if (r < 0)
                        return r;
                if (p.kind != SNAP_KIND_COMMITTED) {
                        record_clear(&p);
                        return errmsg_set(err, -EINVAL, "parent %s is not a committed snapshot", parent);
                }
                rec.parent_id = p.id;
                r = parent_chain(s, &rec, &chain, &n_chain, err);
                record_clear(&p);
                if (r < 0)
                        return r;
                _cleanup_free_ char *pfs = id_path(s, rec.parent_id, "fs");
                if (!pfs)
                        return -ENOMEM;
                if (stat(pfs, &parent_st) < 0)
                        return errmsg_set(err, -errno, "cannot stat parent %s: %m", pfs);
        }
        r = labels_stored(labels, &rec.labels);
        if (r < 0)
                return r;

        uint64_t id = s->next_id;
        rec.id = id;
        rec.created_ns = rec.updated_ns = now_ns();

        _cleanup_free_ char *tmp = NULL, *final = id_path(s, id, NULL);
        if (!final || asprintf(&tmp, "%s/new-XXXXXX", s->snapshots_dir) < 0) {
                tmp = NULL;
                snap_labels_clear(&rec.labels);
                return -ENOMEM;
        }
        SnapDbBatch *b = NULL;
        if (!mkdtemp(tmp)) {
                r = errmsg_set(err, -errno, "cannot create a snapshot directory in %s: %m", s->snapshots_dir);
                free(tmp);
                tmp = NULL;
                goto fail;
        }
        {
                _cleanup_free_ char *fs = NULL, *work = NULL;
                if (asprintf(&fs, "%s/fs", tmp) < 0 || asprintf(&work, "%s/work", tmp) < 0) {
                        r = -ENOMEM;
                        goto fail;
                }
                if (mkdir(fs, 0755) < 0 || (kind == SNAP_KIND_ACTIVE && mkdir(work, 0711) < 0)) {
                        r = errmsg_set(err, -errno, "cannot create %s: %m", tmp);
                        goto fail;
                }
                /* The upper directory takes its owner from the parent's,
                 * as containerd's overlay does. */
                if (parent[0] && lchown(fs, parent_st.st_uid, parent_st.st_gid) < 0) {
                        r = errmsg_set(err, -errno, "cannot chown %s: %m", fs);
                        goto fail;
                }
        }
        if (rename(tmp, final) < 0) {
                r = errmsg_set(err, -errno, "cannot rename %s to %s: %m", tmp, final);
                goto fail;
        }
        free(tmp);
        tmp = NULL;

        b = snap_db_batch_new();
        if (!b) {
                r = -ENOMEM;
                goto fail_final;
        }
        r = batch_put_record(b, key, &rec);
        if (r < 0)
                goto fail_final;
        if (rec.parent_id) {
                uint8_t ck[18];
                child_key(ck, rec.parent_id, id);
                snap_db_batch_put(b, ck, sizeof(ck), key, strlen(key));
        }
        batch_put_next_id(b, id + 1);
        r = snap_db_batch_write(s->db, b, err);
        if (r < 0)
                goto fail_final;
        snap_db_batch_free(b);
        snap_labels_clear(&rec.labels);
        s->next_id = id + 1;
        *ret_id = id;
        *ret_chain = TAKE_PTR(chain);
        *ret_n_chain = n_chain;
        return 0;

fail_final:
        (void) snap_fs_remove_tree(final, NULL);
        /* The id may have a leftover directory: never hand it out again. */
        s->next_id = id + 1;
fail:
        if (tmp)
                (void) snap_fs_remove_tree(tmp, NULL);
        snap_db_batch_free(b);
        snap_labels_clear(&rec.labels);
        return r;
}

static int create_snapshot(Snapshotter *s, SnapKind kind, const char *key, const char *parent,
                           const SnapLabels *labels, uint64_t *ret_id, SnapMounts *ret_mounts, ErrMsg *err) {
        int r = name_validate("key", key, err);
        if (r < 0)
                return r;
        if (!parent)
                parent = "";
        if (strlen(parent) > NAME_MAX_LEN)
                return errmsg_set(err, -EINVAL, "parent longer than %d bytes", NAME_MAX_LEN);
        if (labels && (r = labels_validate(labels, err)) < 0)
                return r;
        uint64_t id = 0, *chain = NULL;
        size_t n_chain = 0;
        pthread_mutex_lock(&s->lock);
        r = create_locked(s, kind, key, parent, labels, &id, &chain, &n_chain, err);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        r = build_mounts(s, kind, id, chain, n_chain, ret_mounts);
        free(chain);
        if (r == 0 && ret_id)
                *ret_id = id;
        return r;
}

/* ---- commit ---- */

/* Under lock: the checks a Commit makes before and after measuring. */
static int commit_check_locked(Snapshotter *s, const char *name, const char *key, Record *ret, ErrMsg *err) {
        Record other = {};
        int r = record_get(s, name, &other, err);
        if (r == 0) {
                record_clear(&other);
                return errmsg_set(err, -EEXIST, "committed snapshot %s already exists", name);
        }
        if (r != -ENOENT)
                return r;
        r = record_get(s, key, ret, err);
        if (r == -ENOENT)
                return errmsg_set(err, -ENOENT, "active snapshot %s does not exist", key);
        if (r < 0)
                return r;
        if (ret->kind != SNAP_KIND_ACTIVE) {
                record_clear(ret);
                return errmsg_set(err, -EMEDIUMTYPE, "snapshot %s is not active", key);
        }
        return 0;
}

static int commit_impl(Snapshotter *s, const char *name, const char *key, const SnapLabels *labels, bool remote,
                       ErrMsg *err) {
        int r = name_validate("name", name, err);
        if (r == 0)
                r = name_validate("key", key, err);
        if (r == 0 && labels)
                r = labels_validate(labels, err);
        if (r < 0)
                return r;

        Record rec = {};
        pthread_mutex_lock(&s->lock);
        r = commit_check_locked(s, name, key, &rec, err);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        uint64_t id = rec.id;
        bool was_remote = rec.remote;
        record_clear(&rec);

        /* Measured outside the lock (a big upper directory takes a while),
         * then everything checked again. */
        SnapUsage usage = {};
        if (!remote && !was_remote) {
                _cleanup_free_ char *fs = id_path(s, id, "fs");
                if (!fs)
                        return -ENOMEM;
                r = snap_fs_usage(fs, &usage, err);
                if (r < 0)
                        return r;
        }

        pthread_mutex_lock(&s->lock);
        r = commit_check_locked(s, name, key, &rec, err);
        if (r == 0 && rec.id != id)
                r = errmsg_set(err, -ENOENT, "active snapshot %s was replaced during its commit", key);
        SnapDbBatch *b = NULL;
        if (r == 0) {
                snap_labels_clear(&rec.labels);
                r = labels_stored(labels, &rec.labels);
        }
        if (r == 0 && !(b = snap_db_batch_new()))
                r = -ENOMEM;
        if (r == 0) {
                rec.kind = SNAP_KIND_COMMITTED;
                rec.created_ns = rec.updated_ns = now_ns();
                rec.size = usage.size;
                rec.inodes = usage.inodes;
                rec.remote = rec.remote || remote;
                r = batch_delete_record(b, key);
        }
        if (r == 0)
                r = batch_put_record(b, name, &rec);
        if (r == 0) {
                if (rec.parent_id) {
                        uint8_t ck[18];
                        child_key(ck, rec.parent_id, rec.id);
                        snap_db_batch_put(b, ck, sizeof(ck), name, strlen(name));
                }
                r = snap_db_batch_write(s->db, b, err);
        }
        pthread_mutex_unlock(&s->lock);
        snap_db_batch_free(b);
        record_clear(&rec);
        return r;
}

int snapshotter_commit(Snapshotter *s, const char *name, const char *key, const SnapLabels *labels, ErrMsg *err) {
        return commit_impl(s, name, key, labels, false, err);
}

/* ---- remove, cleanup ---- */

static int first_child(void *ud, const void *k, size_t klen, const void *v, size_t vlen) {
        (void) ud;
        (void) k;
        (void) klen;
        (void) v;
        (void) vlen;
        return 1;
}

static int remove_locked(Snapshotter *s, const char *key, char ***ret_orphans, size_t *ret_n, uint64_t *ret_remote_id,
                         ErrMsg *err) {
        Record rec = {};
        int r = record_get(s, key, &rec, err);
        if (r == -ENOENT)
                return errmsg_set(err, -ENOENT, "snapshot %s does not exist", key);
        if (r < 0)
                return r;
        uint8_t prefix[10] = { 'c', '/' };
        be64_put(prefix + 2, rec.id);
        r = snap_db_scan(s->db, prefix, sizeof(prefix), first_child, NULL, err);
        if (r > 0)
                r = errmsg_set(err, -ENOTEMPTY, "cannot remove snapshot %s with child", key);
        SnapDbBatch *b = NULL;
        if (r == 0 && !(b = snap_db_batch_new()))
                r = -ENOMEM;
        if (r == 0)
                r = batch_delete_record(b, key);
        if (r == 0) {
                if (rec.parent_id) {
                        uint8_t ck[18];
                        child_key(ck, rec.parent_id, rec.id);
                        snap_db_batch_delete(b, ck, sizeof(ck));
                }
                r = snap_db_batch_write(s->db, b, err);
        }
        snap_db_batch_free(b);
        *ret_remote_id = rec.remote ? rec.id : 0;
        record_clear(&rec);
        if (r < 0)
                return r;
        ErrMsg ignored = {};
        if (orphans_locked(s, ret_orphans, ret_n, &ignored) < 0) {
                /* The record is gone, which is what Remove promises: the
                 * directory waits for Cleanup. */
                *ret_orphans = NULL;
                *ret_n = 0;
        }
        return 0;
}

int snapshotter_remove(Snapshotter *s, const char *key, ErrMsg *err) {
        int r = name_validate("key", key, err);
        if (r < 0)
                return r;
        char **orphans = NULL;
        size_t n = 0;
        uint64_t remote_id = 0;
        pthread_mutex_lock(&s->lock);
        r = remove_locked(s, key, &orphans, &n, &remote_id, err);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        (void) remove_dirs(s, orphans, n, remote_id, NULL);
        return 0;
}

int snapshotter_cleanup(Snapshotter *s, ErrMsg *err) {
        char **orphans = NULL;
        size_t n = 0;
        pthread_mutex_lock(&s->lock);
        int r = orphans_locked(s, &orphans, &n, err);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        return remove_dirs(s, orphans, n, 0, err);
}

/* ---- prepare, view, mounts ---- */

int snapshotter_prepare(Snapshotter *s, const char *key, const char *parent, const SnapLabels *labels,
                        SnapMounts *ret_mounts, ErrMsg *err) {
        uint64_t id;
        SnapMounts mounts = {};
        int r = create_snapshot(s, SNAP_KIND_ACTIVE, key, parent, labels, &id, &mounts, err);
        if (r < 0)
                return r;
        const char *target = labels ? snap_labels_get(labels, SNAP_LABEL_SNAPSHOT_REF) : NULL;
        if (!target || !target[0] || !s->hooks.prepare_remote) {
                *ret_mounts = mounts;
                return 0;
        }

        _cleanup_free_ char *fs = id_path(s, id, "fs");
        if (!fs) {
                snap_mounts_clear(&mounts);
                return -ENOMEM;
        }
        SnapRemoteRequest req = {
                .key = key,
                .parent = parent ? parent : "",
                .target = target,
                .labels = labels,
                .id = id,
                .fs_dir = fs,
        };
        if (s->hooks.prepare_remote(s->hooks.userdata, &req) <= 0) {
                /* declined or failed: containerd unpacks into it */
                *ret_mounts = mounts;
                return 0;
        }
        snap_mounts_clear(&mounts);

        /* The layer is there: commit it as the chain ID containerd asked
         * for, and tell containerd it exists. */
        r = commit_impl(s, target, key, labels, true, err);
        if (r == -EEXIST) {
                /* Committed meanwhile by someone else: ours is not needed. */
                (void) snapshotter_remove(s, key, NULL);
        } else if (r < 0) {
                /* Not falling back: the hook has put a layer in this
                 * snapshot's directory. containerd removes the key. */
                return errmsg_prefix(err, r, "committing remote snapshot %s", target);
        }
        return errmsg_set(err, -EEXIST, "target snapshot %s: already exists", target);
}

int snapshotter_view(Snapshotter *s, const char *key, const char *parent, const SnapLabels *labels,
                     SnapMounts *ret_mounts, ErrMsg *err) {
        return create_snapshot(s, SNAP_KIND_VIEW, key, parent, labels, NULL, ret_mounts, err);
}

int snapshotter_mounts(Snapshotter *s, const char *key, SnapMounts *ret_mounts, ErrMsg *err) {
        int r = name_validate("key", key, err);
        if (r < 0)
                return r;
        Record rec = {};
        uint64_t *chain = NULL;
        size_t n_chain = 0;
        pthread_mutex_lock(&s->lock);
        r = record_get(s, key, &rec, err);
        if (r == -ENOENT)
                r = errmsg_set(err, -ENOENT, "snapshot %s does not exist", key);
        if (r == 0 && rec.kind != SNAP_KIND_ACTIVE && rec.kind != SNAP_KIND_VIEW)
                r = errmsg_set(err, -EMEDIUMTYPE, "requested snapshot %s not active or view", key);
        if (r == 0)
                r = parent_chain(s, &rec, &chain, &n_chain, err);
        pthread_mutex_unlock(&s->lock);
        if (r == 0)
                r = build_mounts(s, rec.kind, rec.id, chain, n_chain, ret_mounts);
        free(chain);
        record_clear(&rec);
        return r;
}

/* ---- stat, update, usage, walk ---- */

static int record_to_info(const char *name, Record *take_rec, SnapInfo *ret) {
        SnapInfo info = {
                .name = strdup(name),
                .parent = TAKE_PTR(take_rec->parent),
                .kind = take_rec->kind,
                .created_ns = take_rec->created_ns,
                .updated_ns = take_rec->updated_ns,
                .labels = take_rec->labels,
        };
        take_rec->labels = (SnapLabels) {};
        record_clear(take_rec);
        if (!info.name || !info.parent) {
                snap_info_clear(&info);
                return -ENOMEM;
        }
        *ret = info;
        return 0;
}

int snapshotter_stat(Snapshotter *s, const char *key, SnapInfo *ret_info, ErrMsg *err) {
        int r = name_validate("key", key, err);
        if (r < 0)
                return r;
        Record rec = {};
        r = record_get(s, key, &rec, err);
        if (r == -ENOENT)
                return errmsg_set(err, -ENOENT, "snapshot %s does not exist", key);
        if (r < 0)
                return r;
        return record_to_info(key, &rec, ret_info);
}

int snapshotter_update(Snapshotter *s, const SnapInfo *info, char *const *paths, size_t n_paths,
                       SnapInfo *ret_info, ErrMsg *err) {
        int r = name_validate("name", info->name, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_paths; i++)
                if (strcmp(paths[i], "labels") != 0 && strncmp(paths[i], "labels.", 7) != 0)
                        return errmsg_set(err, -EINVAL, "cannot update \"%.128s\" field on snapshot %s", paths[i],
                                          info->name);
        Record rec = {};
        SnapLabels next = {};
        SnapDbBatch *b = NULL;
        pthread_mutex_lock(&s->lock);
        r = record_get(s, info->name, &rec, err);
        if (r == -ENOENT)
                r = errmsg_set(err, -ENOENT, "snapshot %s does not exist", info->name);
        if (r < 0)
                goto out;
        if (n_paths == 0)
                r = snap_labels_copy(&next, &info->labels);
        else {
                r = snap_labels_copy(&next, &rec.labels);
                for (size_t i = 0; r == 0 && i < n_paths; i++) {
                        if (strcmp(paths[i], "labels") == 0) {
                                r = snap_labels_copy(&next, &info->labels);
                                continue;
                        }
                        const char *k = paths[i] + 7;
                        const char *v = snap_labels_get(&info->labels, k);
                        if (v && v[0])
                                r = snap_labels_set(&next, k, v);
                        else
                                snap_labels_unset(&next, k);
                }
        }
        if (r == 0)
                r = labels_validate(&next, err);
        if (r < 0)
                goto out;
        snap_labels_clear(&rec.labels);
        r = labels_stored(&next, &rec.labels);
        if (r < 0)
                goto out;
        rec.updated_ns = now_ns();
        if (!(b = snap_db_batch_new())) {
                r = -ENOMEM;
                goto out;
        }
        r = batch_put_record(b, info->name, &rec);
        if (r == 0)
                r = snap_db_batch_write(s->db, b, err);
out:
        pthread_mutex_unlock(&s->lock);
        snap_db_batch_free(b);
        snap_labels_clear(&next);
        if (r < 0) {
                record_clear(&rec);
                return r;
        }
        return record_to_info(info->name, &rec, ret_info);
}

int snapshotter_usage(Snapshotter *s, const char *key, SnapUsage *ret, ErrMsg *err) {
        int r = name_validate("key", key, err);
        if (r < 0)
                return r;
        Record rec = {};
        r = record_get(s, key, &rec, err);
        if (r == -ENOENT)
                return errmsg_set(err, -ENOENT, "snapshot %s does not exist", key);
        if (r < 0)
                return r;
        SnapUsage u = { .size = rec.size, .inodes = rec.inodes };
        if (rec.kind == SNAP_KIND_ACTIVE && !rec.remote) {
                _cleanup_free_ char *fs = id_path(s, rec.id, "fs");
                r = fs ? snap_fs_usage(fs, &u, err) : -ENOMEM;
        }
        record_clear(&rec);
        if (r < 0)
                return r;
        *ret = u;
        return 0;
}

typedef struct WalkCtx {
        const SnapFilter *filter;
        SnapWalkFn fn;
        void *userdata;
        const SnapInfo *info; /* the one being matched */
} WalkCtx;

/* containerd's adaptSnapshot(). */
static bool info_lookup(void *ud, char *const *path, size_t n, const char **ret) {
        const SnapInfo *info = ((WalkCtx *) ud)->info;
        if (n == 0)
                return false;
        if (strcmp(path[0], "kind") == 0) {
                if (info->kind < SNAP_KIND_VIEW || info->kind > SNAP_KIND_COMMITTED)
                        return false;
                *ret = snap_kind_to_string(info->kind);
                return true;
        }
        if (strcmp(path[0], "name") == 0) {
                *ret = info->name;
                return true;
        }
        if (strcmp(path[0], "parent") == 0) {
                *ret = info->parent;
                return true;
        }
        if (strcmp(path[0], "labels") == 0) {
                if (info->labels.n == 0)
                        return false;
                /* the rest of the path, joined with "." */
                char key[SNAP_LABEL_MAX + 2];
                size_t o = 0;
                for (size_t i = 1; i < n; i++) {
                        size_t l = strlen(path[i]);
                        if (o + l + 1 >= sizeof(key))
                                return false;
                        if (i > 1)
                                key[o++] = '.';
                        memcpy(key + o, path[i], l);
                        o += l;
                }
                key[o] = 0;
                const char *v = snap_labels_get(&info->labels, key);
                if (!v)
                        return false;
                *ret = v;
                return true;
        }
        return false;
}

static int walk_one(void *ud, const void *k, size_t klen, const void *v, size_t vlen) {
        WalkCtx *ctx = ud;
        Record rec = {};
        int r = record_decode(v, vlen, &rec);
        if (r == -EBADMSG)
                return 0; /* skipped: a corrupt record is nobody's snapshot */
        if (r < 0)
                return r;
        uint64_t id = rec.id;
        bool remote = rec.remote;
        _cleanup_free_ char *name = strndup((const char *) k + 2, klen - 2);
        if (!name) {
                record_clear(&rec);
                return -ENOMEM;
        }
        SnapInfo info = {};
        r = record_to_info(name, &rec, &info);
        if (r < 0)
                return r;
        ctx->info = &info;
        if (snap_filter_match(ctx->filter, info_lookup, ctx))
                r = ctx->fn(ctx->userdata, &info, id, remote);
        snap_info_clear(&info);
        return r;
}

int snapshotter_walk(Snapshotter *s, const SnapFilter *filter, SnapWalkFn fn, void *userdata, ErrMsg *err) {
        WalkCtx ctx = { .filter = filter, .fn = fn, .userdata = userdata };
        return snap_db_scan(s->db, "s/", 2, walk_one, &ctx, err);
}
