/* Tests of worker/snapshotter's snapshot store (snapshots.c, its RocksDB
 * module and its directory walks): containerd's overlay snapshotter
 * semantics (kinds, parents, mounts, labels, usage, the error of each
 * refusal), persistence across close and reopen, ids never reused after a
 * crash between a directory and its record, Cleanup of orphans, the
 * remote-snapshot hook, List's walk with containerd filters, several
 * threads at once, and trees deeper than PATH_MAX. No root: the
 * snapshots' directories are made, never mounted. Everything lives in a
 * private mkdtemp directory. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"
#include "worker/snapshotter/snapshots-fs.h"
#include "worker/snapshotter/snapshots.h"

static char tmp[4096];

static Snapshotter *open_at(const char *root, const SnapshotterHooks *hooks) {
        Snapshotter *s = NULL;
        ErrMsg err = {};
        SnapshotterConfig cfg = { .root = root };
        if (hooks)
                cfg.hooks = *hooks;
        int r = snapshotter_new(&cfg, &s, &err);
        if (r < 0)
                diag("snapshotter_new(%s): %d %s", root, r, err.text);
        return s;
}

static SnapLabels labels_of(const char *k1, const char *v1, const char *k2, const char *v2) {
        SnapLabels l = {};
        if (k1)
                snap_labels_set(&l, k1, v1);
        if (k2)
                snap_labels_set(&l, k2, v2);
        return l;
}

/* The mounts as one string: "type source opt,opt,...". */
static char *mounts_str(const SnapMounts *m) {
        StrBuf b = {};
        for (size_t i = 0; i < m->n; i++) {
                strbuf_printf(&b, "%s%s %s ", i ? "; " : "", m->items[i].type, m->items[i].source);
                for (size_t j = 0; j < m->items[i].n_options; j++)
                        strbuf_printf(&b, "%s%s", j ? "," : "", m->items[i].options[j]);
        }
        strbuf_putc(&b, 0);
        return strbuf_steal(&b, NULL);
}

static int prepare(Snapshotter *s, const char *key, const char *parent, char **ret_mounts) {
        SnapMounts m = {};
        ErrMsg err = {};
        int r = snapshotter_prepare(s, key, parent, NULL, &m, &err);
        if (r == 0 && ret_mounts)
                *ret_mounts = mounts_str(&m);
        snap_mounts_clear(&m);
        return r;
}

static int view(Snapshotter *s, const char *key, const char *parent, char **ret_mounts) {
        SnapMounts m = {};
        int r = snapshotter_view(s, key, parent, NULL, &m, NULL);
        if (r == 0 && ret_mounts)
                *ret_mounts = mounts_str(&m);
        snap_mounts_clear(&m);
        return r;
}

static int commit(Snapshotter *s, const char *name, const char *key) {
        ErrMsg err = {};
        int r = snapshotter_commit(s, name, key, NULL, &err);
        if (r < 0 && r != -EEXIST && r != -ENOENT && r != -EMEDIUMTYPE)
                diag("commit %s %s: %s", name, key, err.text);
        return r;
}

static int stat_kind(Snapshotter *s, const char *key) {
        SnapInfo i = {};
        int r = snapshotter_stat(s, key, &i, NULL);
        if (r < 0)
                return r;
        r = (int) i.kind;
        snap_info_clear(&i);
        return r;
}

static bool exists(const char *root, const char *rel) {
        char p[8192];
        snprintf(p, sizeof(p), "%s/%s", root, rel);
        return access(p, F_OK) == 0;
}

static void write_file(const char *root, const char *rel, size_t size) {
        char p[8192];
        snprintf(p, sizeof(p), "%s/%s", root, rel);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        char buf[4096];
        memset(buf, 'x', sizeof(buf));
        for (size_t done_ = 0; fd >= 0 && done_ < size; done_ += sizeof(buf))
                if (write(fd, buf, MIN(sizeof(buf), size - done_)) < 0)
                        break;
        if (fd >= 0)
                close(fd);
}

static void test_kinds_and_mounts(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open creates the store"))
                return;
        ok(exists(root, "snapshots") && exists(root, "db/CURRENT"), "ROOT/snapshots and ROOT/db exist");

        char *m = NULL;
        char want[16384];
        is_int(prepare(s, "a", "", &m), 0, "prepare a (no parent)");
        snprintf(want, sizeof(want), "bind %s/snapshots/1/fs rw,rbind", root);
        is_str(m, want, "an active snapshot without parent is a rw bind mount of its fs/");
        free(m);
        ok(exists(root, "snapshots/1/fs") && exists(root, "snapshots/1/work"), "its fs/ and work/ exist");
        is_int(stat_kind(s, "a"), SNAP_KIND_ACTIVE, "stat: active");
        is_int(prepare(s, "a", "", NULL), -EEXIST, "prepare of an existing key: -EEXIST");
        is_int(prepare(s, "", "", NULL), -EINVAL, "prepare of an empty key: -EINVAL");
        is_int(prepare(s, "b", "none", NULL), -ENOENT, "prepare on a missing parent: -ENOENT");
        is_int(prepare(s, "b", "a", NULL), -EINVAL, "prepare on an active parent: -EINVAL");
        is_int(prepare(s, "b", "", NULL) == 0 && prepare(s, "b2", "", NULL) == 0, 1, "two more");

        is_int(commit(s, "c1", "a"), 0, "commit a as c1");
        is_int(stat_kind(s, "c1"), SNAP_KIND_COMMITTED, "c1 is committed");
        is_int(stat_kind(s, "a"), -ENOENT, "the key a is gone");
        ok(exists(root, "snapshots/1/fs") && exists(root, "snapshots/1/work"), "same id, same directory");
        is_int(commit(s, "c1", "b"), -EEXIST, "commit to an existing name: -EEXIST");
        is_int(commit(s, "c9", "a"), -ENOENT, "commit of a missing key: -ENOENT");
        is_int(commit(s, "c9", "c1"), -EMEDIUMTYPE, "commit of a committed snapshot: -EMEDIUMTYPE");
        is_int(commit(s, "", "b"), -EINVAL, "commit to an empty name: -EINVAL");

        SnapMounts mm = {};
        is_int(snapshotter_mounts(s, "c1", &mm, NULL), -EMEDIUMTYPE, "mounts of a committed snapshot: -EMEDIUMTYPE");
        is_int(snapshotter_mounts(s, "zz", &mm, NULL), -ENOENT, "mounts of a missing key: -ENOENT");

        /* a chain c1 <- c2 <- c3 */
        is_int(prepare(s, "k2", "c1", &m), 0, "prepare k2 on c1");
        bool index_off = access("/sys/module/overlay/parameters/index", F_OK) == 0;
        snprintf(want, sizeof(want), "overlay overlay %sworkdir=%s/snapshots/4/work,upperdir=%s/snapshots/4/fs,lowerdir=%s/snapshots/1/fs",
                 index_off ? "index=off," : "", root, root, root);
        is_str(m, want, "an active snapshot with a parent is an overlay (upper, work, lower)");
        free(m);
        is_int(commit(s, "c2", "k2"), 0, "commit c2");
        is_int(prepare(s, "k3", "c2", NULL), 0, "prepare k3 on c2");
        is_int(commit(s, "c3", "k3"), 0, "commit c3");
        is_int(prepare(s, "k4", "c3", &m), 0, "prepare k4 on c3");
        snprintf(want, sizeof(want), "lowerdir=%s/snapshots/5/fs:%s/snapshots/4/fs:%s/snapshots/1/fs", root, root, root);
        has_str(m, want, "lowerdir: the ancestors, nearest first");
        free(m);

        SnapInfo info = {};
        is_int(snapshotter_stat(s, "c3", &info, NULL), 0, "stat c3");
        is_str(info.parent, "c2", "c3's parent is c2");
        snap_info_clear(&info);

        /* views */
        is_int(view(s, "v0", "", &m), 0, "view without parent");
        snprintf(want, sizeof(want), "bind %s/snapshots/7/fs ro,rbind", root);
        is_str(m, want, "a view without parent: its own fs/, ro");
        free(m);
        ok(exists(root, "snapshots/7/fs") && !exists(root, "snapshots/7/work"), "a view has no work/");
        is_int(view(s, "v1", "c1", &m), 0, "view on c1");
        snprintf(want, sizeof(want), "bind %s/snapshots/1/fs ro,rbind", root);
        is_str(m, want, "a view on one layer: a ro bind of the parent's fs/");
        free(m);
        is_int(view(s, "v2", "c2", &m), 0, "view on c2");
        snprintf(want, sizeof(want), "overlay overlay %slowerdir=%s/snapshots/4/fs:%s/snapshots/1/fs",
                 index_off ? "index=off," : "", root, root);
        is_str(m, want, "a view on two layers: an overlay of lower layers only");
        free(m);
        is_int(commit(s, "cv", "v2"), -EMEDIUMTYPE, "commit of a view: -EMEDIUMTYPE");
        is_int(snapshotter_mounts(s, "v2", &mm, NULL), 0, "mounts of a view");
        snap_mounts_clear(&mm);

        /* remove */
        is_int(snapshotter_remove(s, "c1", NULL), -ENOTEMPTY, "remove of a parent: -ENOTEMPTY");
        is_int(snapshotter_remove(s, "nope", NULL), -ENOENT, "remove of a missing key: -ENOENT");
        is_int(snapshotter_remove(s, "k4", NULL), 0, "remove k4");
        ok(!exists(root, "snapshots/6"), "its directory is gone");
        is_int(snapshotter_remove(s, "c3", NULL), 0, "remove c3 once its child is gone");
        is_int(snapshotter_remove(s, "v2", NULL), 0, "remove v2");
        is_int(snapshotter_remove(s, "c2", NULL), 0, "remove c2 once its children are gone");
        is_int(stat_kind(s, "c2"), -ENOENT, "c2 is gone");
        snapshotter_free(s);
}

static void test_labels_update_persist(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open"))
                return;
        SnapLabels l = labels_of("a", "1", "empty", "");
        SnapMounts m = {};
        ErrMsg err = {};
        is_int(snapshotter_prepare(s, "k", "", &l, &m, &err), 0, "prepare with labels");
        snap_mounts_clear(&m);
        snap_labels_clear(&l);
        SnapInfo i = {};
        snapshotter_stat(s, "k", &i, NULL);
        is_int(i.labels.n, 1, "an empty label value is not stored");
        is_str(snap_labels_get(&i.labels, "a"), "1", "a=1");
        ok(i.created_ns > 0 && i.created_ns == i.updated_ns, "created == updated");
        snap_info_clear(&i);

        char big[5000];
        memset(big, 'x', sizeof(big) - 1);
        big[4095] = 0; /* "kk" + 4095 bytes: one over containerd's 4,096 */
        l = labels_of("kk", big, NULL, NULL);
        is_int(snapshotter_prepare(s, "big", "", &l, &m, &err), -EINVAL, "a label over 4,096 bytes: -EINVAL");
        has_str(err.text, "maximum size", "message: %s", err.text);
        snap_labels_clear(&l);
        big[4094] = 0;
        l = labels_of("kk", big, NULL, NULL);
        is_int(snapshotter_prepare(s, "big", "", &l, &m, &err), 0, "a label of exactly 4,096 bytes is fine");
        snap_labels_clear(&l);
        snap_mounts_clear(&m);

        l = labels_of("c", "3", NULL, NULL);
        is_int(snapshotter_commit(s, "kc", "k", &l, &err), 0, "commit with labels");
        snap_labels_clear(&l);
        snapshotter_stat(s, "kc", &i, NULL);
        ok(i.labels.n == 1 && snap_labels_get(&i.labels, "c"), "commit replaces the labels, no inheritance");
        int64_t created = i.created_ns;
        snap_info_clear(&i);

        /* update */
        SnapInfo u = { .name = strdup("kc"), .parent = strdup(""), .labels = labels_of("d", "4", "c", "") };
        SnapInfo out = {};
        char *paths1[] = { (char *) "labels.d" };
        is_int(snapshotter_update(s, &u, paths1, 1, &out, &err), 0, "update labels.d");
        ok(out.labels.n == 2 && strcmp(snap_labels_get(&out.labels, "d"), "4") == 0, "c and d");
        ok(out.updated_ns > created && out.created_ns == created, "updated moves, created stays");
        snap_info_clear(&out);
        char *paths2[] = { (char *) "labels.c" };
        is_int(snapshotter_update(s, &u, paths2, 1, &out, &err), 0, "update labels.c to empty");
        ok(out.labels.n == 1 && !snap_labels_get(&out.labels, "c"), "an empty value removes the label");
        snap_info_clear(&out);
        char *paths3[] = { (char *) "parent" };
        is_int(snapshotter_update(s, &u, paths3, 1, &out, &err), -EINVAL, "update of parent: -EINVAL");
        is_int(snapshotter_update(s, &u, NULL, 0, &out, &err), 0, "update without paths: all labels");
        ok(out.labels.n == 1 && snap_labels_get(&out.labels, "d"), "replaced by the request's (empty dropped)");
        snap_info_clear(&out);
        free(u.name);
        u.name = strdup("none");
        is_int(snapshotter_update(s, &u, NULL, 0, &out, &err), -ENOENT, "update of a missing snapshot: -ENOENT");
        snap_info_clear(&u);

        SnapInfo before = {};
        snapshotter_stat(s, "kc", &before, NULL);
        snapshotter_free(s);
        s = open_at(root, NULL);
        if (!ok(s, "reopen"))
                return;
        SnapInfo after = {};
        is_int(snapshotter_stat(s, "kc", &after, NULL), 0, "kc is still there after a reopen");
        ok(after.kind == before.kind && after.created_ns == before.created_ns &&
           after.updated_ns == before.updated_ns && after.labels.n == before.labels.n,
           "with its kind, times and labels");
        snap_info_clear(&before);
        snap_info_clear(&after);
        Snapshotter *again = NULL;
        SnapshotterConfig cfg = { .root = root };
        is_int(snapshotter_new(&cfg, &again, &err), -EBUSY, "a second open of the same root: -EBUSY");
        snapshotter_free(s);
}

static void test_usage(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open"))
                return;
        prepare(s, "u", "", NULL);
        char fs[4300];
        snprintf(fs, sizeof(fs), "%s/snapshots/1/fs", root);
        write_file(fs, "big", 1 << 20);
        char a[4400], b[4400];
        snprintf(a, sizeof(a), "%s/big", fs);
        snprintf(b, sizeof(b), "%s/link", fs);
        is_int(link(a, b), 0, "a hard link");
        char d[4400];
        snprintf(d, sizeof(d), "%s/dir", fs);
        mkdir(d, 0755);
        write_file(fs, "dir/small", 10);
        SnapUsage u = {};
        is_int(snapshotter_usage(s, "u", &u, NULL), 0, "usage of an active snapshot");
        is_int(u.inodes, 4, "fs/, big (once, with its link), dir, dir/small");
        ok(u.size >= (1 << 20) && u.size < (1 << 20) + 64 * 1024, "size counts big's blocks once: %jd", (intmax_t) u.size);
        is_int(commit(s, "uc", "u"), 0, "commit");
        unlink(b);
        SnapUsage uc = {};
        is_int(snapshotter_usage(s, "uc", &uc, NULL), 0, "usage of a committed snapshot");
        ok(uc.size == u.size && uc.inodes == u.inodes, "as measured at commit");
        view(s, "uv", "uc", NULL);
        SnapUsage uv = { 1, 1 };
        is_int(snapshotter_usage(s, "uv", &uv, NULL), 0, "usage of a view");
        ok(uv.size == 0 && uv.inodes == 0, "a view holds nothing");
        is_int(snapshotter_usage(s, "none", &uv, NULL), -ENOENT, "usage of a missing key: -ENOENT");
        snapshotter_free(s);
}

static void test_orphans_and_ids(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open"))
                return;
        prepare(s, "o1", "", NULL);
        snapshotter_free(s);
        /* A crash between a directory and its record: a directory with the
         * next id, and a temporary one. */
        char p[8192];
        snprintf(p, sizeof(p), "%s/snapshots/2", root);
        mkdir(p, 0700);
        write_file(p, "marker", 1);
        snprintf(p, sizeof(p), "%s/snapshots/new-abcdef", root);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/snapshots/999", root);
        mkdir(p, 0700);
        s = open_at(root, NULL);
        char *m = NULL;
        is_int(prepare(s, "o2", "", &m), 0, "prepare after the crash");
        has_str(m, "/snapshots/1000/fs", "the new snapshot takes an id above every directory: %s", m);
        free(m);
        ok(exists(root, "snapshots/2/marker"), "the orphan is untouched until a cleanup");
        is_int(snapshotter_cleanup(s, NULL), 0, "cleanup");
        ok(!exists(root, "snapshots/2") && !exists(root, "snapshots/new-abcdef") && !exists(root, "snapshots/999"),
           "orphans removed");
        ok(exists(root, "snapshots/1/fs") && exists(root, "snapshots/1000/fs"), "live snapshots stay");
        /* a Remove also removes orphans */
        snprintf(p, sizeof(p), "%s/snapshots/junk", root);
        mkdir(p, 0700);
        is_int(snapshotter_remove(s, "o1", NULL), 0, "remove o1");
        ok(!exists(root, "snapshots/junk") && !exists(root, "snapshots/1"), "its directory and the orphan are gone");
        snapshotter_free(s);
}

/* ---- walk ---- */

typedef struct Names {
        char buf[4096];
        int stop_after;
        int n;
} Names;

static int collect(void *ud, const SnapInfo *info, uint64_t id, bool remote) {
        (void) id;
        (void) remote;
        Names *n = ud;
        size_t l = strlen(n->buf);
        snprintf(n->buf + l, sizeof(n->buf) - l, "%s%s", l ? " " : "", info->name);
        n->n++;
        return n->stop_after && n->n >= n->stop_after ? 7 : 0;
}

static const char *walk_names(Snapshotter *s, const char *filter, Names *n) {
        memset(n->buf, 0, sizeof(n->buf));
        n->n = 0;
        SnapFilter *f = NULL;
        ErrMsg err = {};
        const char *fs[] = { filter };
        if (snap_filter_parse(fs, filter ? 1 : 0, &f, &err) < 0) {
                diag("filter %s: %s", filter, err.text);
                return "(bad filter)";
        }
        snapshotter_walk(s, f, collect, n, NULL);
        snap_filter_free(f);
        return n->buf;
}

/* ---- the remote hook ---- */

typedef struct HookLog {
        int answer;
        int prepared, released;
        char last_target[256], last_dir[4200];
        uint64_t released_id;
} HookLog;

static int hook_prepare(void *ud, const SnapRemoteRequest *req) {
        HookLog *h = ud;
        h->prepared++;
        snprintf(h->last_target, sizeof(h->last_target), "%s", req->target);
        snprintf(h->last_dir, sizeof(h->last_dir), "%s", req->fs_dir);
        if (h->answer > 0)
                write_file(req->fs_dir, "from-remote", 100);
        return h->answer;
}

static void hook_release(void *ud, uint64_t id, const char *fs_dir) {
        (void) fs_dir;
        HookLog *h = ud;
        h->released++;
        h->released_id = id;
}

static void test_remote_hook(const char *root) {
        HookLog h = { .answer = 1 };
        SnapshotterHooks hooks = { .prepare_remote = hook_prepare, .release_remote = hook_release, .userdata = &h };
        Snapshotter *s = open_at(root, &hooks);
        if (!ok(s, "open with hooks"))
                return;
        SnapMounts m = {};
        ErrMsg err = {};
        is_int(snapshotter_prepare(s, "plain", "", NULL, &m, &err), 0, "a prepare without snapshot.ref");
        is_int(h.prepared, 0, "does not ask the hook");
        snap_mounts_clear(&m);

        SnapLabels l = labels_of(SNAP_LABEL_SNAPSHOT_REF, "sha256:aaa", "containerd.io/snapshot/remote/x", "y");
        is_int(snapshotter_prepare(s, "ns/1/extract-1 sha256:aaa", "", &l, &m, &err), -EEXIST,
               "a provided remote snapshot: -EEXIST");
        has_str(err.text, "sha256:aaa", "message names the target: %s", err.text);
        is_int(h.prepared, 1, "the hook was asked");
        is_str(h.last_target, "sha256:aaa", "with the chain ID");
        has_str(h.last_dir, "/snapshots/2/fs", "and the new snapshot's fs/");
        SnapInfo i = {};
        is_int(snapshotter_stat(s, "sha256:aaa", &i, NULL), 0, "committed under the chain ID");
        ok(i.kind == SNAP_KIND_COMMITTED && i.labels.n == 2, "committed, with the request's labels");
        snap_info_clear(&i);
        is_int(stat_kind(s, "ns/1/extract-1 sha256:aaa"), -ENOENT, "the extraction key is gone");
        SnapUsage u = { 1, 1 };
        snapshotter_usage(s, "sha256:aaa", &u, NULL);
        ok(u.size == 0 && u.inodes == 0, "a remote snapshot is not measured");
        snap_labels_clear(&l);

        /* a child of the remote one, declined: normal overlay */
        h.answer = 0;
        l = labels_of(SNAP_LABEL_SNAPSHOT_REF, "sha256:bbb", NULL, NULL);
        char *ms = NULL;
        is_int(snapshotter_prepare(s, "ns/2/extract-2 sha256:bbb", "sha256:aaa", &l, &m, &err), 0,
               "a declined one: the active snapshot's mounts");
        ms = mounts_str(&m);
        has_str(ms, "/snapshots/2/fs", "on the remote parent's fs/");
        free(ms);
        snap_mounts_clear(&m);
        is_int(h.prepared, 2, "the hook was asked again");
        h.answer = -EIO;
        is_int(snapshotter_prepare(s, "ns/3/extract-3 sha256:bbb", "sha256:aaa", &l, &m, &err), 0,
               "a failed one falls back too");
        snap_mounts_clear(&m);
        snap_labels_clear(&l);

        /* a target that exists already */
        h.answer = 1;
        l = labels_of(SNAP_LABEL_SNAPSHOT_REF, "sha256:aaa", NULL, NULL);
        is_int(snapshotter_prepare(s, "ns/4/extract-4 sha256:aaa", "", &l, &m, &err), -EEXIST,
               "a target committed meanwhile: -EEXIST");
        is_int(stat_kind(s, "ns/4/extract-4 sha256:aaa"), -ENOENT, "and the extra key is removed");
        snap_labels_clear(&l);

        /* containerd's metadata layer then looks the target up so */
        Names n = {};
        is_str(walk_names(s, "labels.\"containerd.io/snapshot.ref\"==sha256:aaa,parent==\"\"", &n), "sha256:aaa",
               "containerd's filter finds it");

        int released = h.released;
        is_int(snapshotter_remove(s, "ns/2/extract-2 sha256:bbb", NULL), 0, "remove a child");
        is_int(snapshotter_remove(s, "ns/3/extract-3 sha256:bbb", NULL), 0, "remove the other");
        is_int(h.released, released, "no release for snapshots that are not remote");
        is_int(snapshotter_remove(s, "sha256:aaa", NULL), 0, "remove the remote one");
        is_int(h.released, released + 1, "release was called");
        is_int(h.released_id, 2, "for its id");
        snapshotter_free(s);
}

static void test_walk(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open"))
                return;
        SnapLabels l = labels_of("containerd.io/snapshot.ref", "sha256:x", "team", "a b");
        SnapMounts m = {};
        snapshotter_prepare(s, "w1", "", &l, &m, NULL);
        snap_mounts_clear(&m);
        snapshotter_commit(s, "wc", "w1", &l, NULL);
        snap_labels_clear(&l);
        prepare(s, "w2", "wc", NULL);
        view(s, "w3", "wc", NULL);
        Names n = {};
        is_str(walk_names(s, NULL, &n), "w2 w3 wc", "all, in name order");
        is_str(walk_names(s, "parent==wc", &n), "w2 w3", "parent==wc");
        is_str(walk_names(s, "parent==\"\"", &n), "wc", "parent==\"\" (containerd's quoting)");
        is_str(walk_names(s, "labels.\"containerd.io/snapshot.ref\"==sha256:x,parent==\"\"", &n), "wc",
               "containerd's remote-snapshot filter");
        is_str(walk_names(s, "labels.containerd.io/snapshot.ref", &n), "(bad filter)", "a / in a plain field is refused");
        is_str(walk_names(s, "labels.\"containerd.io/snapshot.ref\"", &n), "wc", "presence of a label");
        is_str(walk_names(s, "labels.team==\"a b\"", &n), "wc", "a quoted value with a space");
        is_str(walk_names(s, "kind==active", &n), "w2", "kind==active");
        is_str(walk_names(s, "kind!=active", &n), "w3 wc", "kind!=active");
        is_str(walk_names(s, "name~=/^w[23]$/", &n), "w2 w3", "name~=/regex/");
        is_str(walk_names(s, "labels.nope!=x", &n), "w2 w3 wc", "!= matches an absent field");
        n.stop_after = 2;
        is_str(walk_names(s, NULL, &n), "w2 w3", "the callback can stop the walk");
        snapshotter_free(s);
}

/* ---- threads ---- */

typedef struct ThreadArg {
        Snapshotter *s;
        int id;
        int failures;
} ThreadArg;

static void *thread_main(void *p) {
        ThreadArg *a = p;
        for (int i = 0; i < 20; i++) {
                char k[64], c[64], k2[64];
                snprintf(k, sizeof(k), "t%d-%d", a->id, i);
                snprintf(c, sizeof(c), "t%d-%d-c", a->id, i);
                snprintf(k2, sizeof(k2), "t%d-%d-k2", a->id, i);
                if (prepare(a->s, k, "", NULL) < 0 || commit(a->s, c, k) < 0 || prepare(a->s, k2, c, NULL) < 0)
                        a->failures++;
                if (i % 2 == 0 && (snapshotter_remove(a->s, k2, NULL) < 0 || snapshotter_remove(a->s, c, NULL) < 0))
                        a->failures++;
                /* everyone else's work in parallel: a cleanup must never
                 * take a live directory */
                if (i % 5 == 0 && snapshotter_cleanup(a->s, NULL) < 0)
                        a->failures++;
        }
        return NULL;
}

static int count_cb(void *ud, const SnapInfo *info, uint64_t id, bool remote) {
        (void) info;
        (void) remote;
        (void) id;
        (*(int *) ud)++;
        return 0;
}

static void test_threads(const char *root) {
        Snapshotter *s = open_at(root, NULL);
        if (!ok(s, "open"))
                return;
        enum { N = 6 };
        pthread_t t[N];
        ThreadArg a[N];
        for (int i = 0; i < N; i++) {
                a[i] = (ThreadArg) { .s = s, .id = i };
                pthread_create(&t[i], NULL, thread_main, &a[i]);
        }
        int failures = 0;
        for (int i = 0; i < N; i++) {
                pthread_join(t[i], NULL);
                failures += a[i].failures;
        }
        is_int(failures, 0, "%d threads preparing, committing, removing and cleaning at once", N);
        int count = 0;
        snapshotter_walk(s, NULL, count_cb, &count, NULL);
        is_int(count, N * 10 * 2, "the snapshots that should be left are");
        char p[8192];
        snprintf(p, sizeof(p), "%s/snapshots", root);
        DIR *d = opendir(p);
        int dirs = 0;
        struct dirent *de;
        while (d && (de = readdir(d)))
                if (de->d_name[0] != '.')
                        dirs++;
        if (d)
                closedir(d);
        is_int(dirs, count, "one directory each, no more");
        snapshotter_free(s);
}

/* ---- deep trees ---- */

static void test_deep_tree(const char *root) {
        mkdir(root, 0700);
        char top[4300];
        snprintf(top, sizeof(top), "%s/deep", root);
        mkdir(top, 0700);
        int fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        /* 3,000 levels of "dd/": 9,000 bytes of path, past PATH_MAX */
        int levels = 0;
        for (; fd >= 0 && levels < 3000; levels++) {
                if (mkdirat(fd, "dd", 0700) < 0)
                        break;
                int f = openat(fd, "f", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
                if (f >= 0)
                        close(f);
                int n = openat(fd, "dd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                close(fd);
                fd = n;
        }
        if (fd >= 0)
                close(fd);
        is_int(levels, 3000, "a tree 3,000 levels deep");
        SnapUsage u = {};
        ErrMsg err = {};
        is_int(snap_fs_usage(top, &u, &err), 0, "usage walks it (%s)", err.text);
        is_int(u.inodes, 1 + 3000 * 2, "every directory and file, once");
        is_int(snap_fs_remove_tree(top, &err), 0, "removal walks it (%s)", err.text);
        ok(access(top, F_OK) < 0, "and it is gone");
        is_int(snap_fs_remove_tree(top, &err), 0, "removing a missing tree is fine");
}

int main(void) {
        if (tmpdir_make(tmp) < 0) {
                printf("Bail out! mkdtemp: %s\n", strerror(errno));
                return 1;
        }
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s/kinds", tmp);
        test_kinds_and_mounts(dir);
        snprintf(dir, sizeof(dir), "%s/labels", tmp);
        test_labels_update_persist(dir);
        snprintf(dir, sizeof(dir), "%s/usage", tmp);
        test_usage(dir);
        snprintf(dir, sizeof(dir), "%s/orphans", tmp);
        test_orphans_and_ids(dir);
        snprintf(dir, sizeof(dir), "%s/remote", tmp);
        test_remote_hook(dir);
        snprintf(dir, sizeof(dir), "%s/walk", tmp);
        test_walk(dir);
        snprintf(dir, sizeof(dir), "%s/threads", tmp);
        test_threads(dir);
        snprintf(dir, sizeof(dir), "%s/deep", tmp);
        test_deep_tree(dir);
        tmpdir_remove(tmp);
        return done();
}
