/* Tests of worker/meta/store: put/get/delete, persistence across close and
 * reopen, -ENOENT for absent keys, -EBUSY for a store another process (or
 * this one) holds, -EBADMSG for a corrupt one, values of tens of MB, and
 * several threads at once. Everything lives in a private mkdtemp
 * directory. The "held by another process" case runs this binary again
 * (argv[1] == "--try-open DIR"), so that RocksDB's fcntl lock is what
 * refuses it. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"
#include "worker/meta/store.h"

static char tmp[4096];

static bool get_is(MetaStore *s, const char *key, const void *want, size_t want_len) {
        void *v = NULL;
        size_t len = 0;
        ErrMsg err = {};
        int r = meta_layer_get(s, key, &v, &len, &err);
        bool same = r == 0 && len == want_len && memcmp(v, want, len) == 0;
        if (r < 0)
                diag("get %s: %d %s", key, r, err.text);
        free(v);
        return same;
}

static int get_r(MetaStore *s, const char *key) {
        void *v = NULL;
        size_t len = 0;
        int r = meta_layer_get(s, key, &v, &len, NULL);
        free(v);
        return r;
}

/* Opens dir in a new process: returns its meta_store_open() result. */
static int open_in_child(const char *dir) {
        pid_t pid = fork();
        if (pid == 0) {
                execl("/proc/self/exe", "test-meta-store", "--try-open", dir, (char *) NULL);
                _exit(127);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
                return -ECHILD;
        return -WEXITSTATUS(status);
}

static void test_basic(const char *dir) {
        MetaStore *s = NULL;
        ErrMsg err = {};
        if (!is_int(meta_store_open(dir, &s, &err), 0, "open creates the store (%s)", err.text))
                return;
        is_int(get_r(s, "nope"), -ENOENT, "get of a missing key: -ENOENT");

        is_int(meta_layer_put(s, "sha256:aa", "first", 5, &err), 0, "put");
        ok(get_is(s, "sha256:aa", "first", 5), "get returns it");
        is_int(meta_layer_put(s, "sha256:aa", "second value", 12, &err), 0, "put again");
        ok(get_is(s, "sha256:aa", "second value", 12), "get returns the new value");
        is_int(meta_layer_put(s, "empty", "", 0, &err), 0, "put an empty value");
        ok(get_is(s, "empty", "", 0), "get returns an empty value");
        is_int(get_r(s, "sha256:a"), -ENOENT, "a prefix of a key is not the key");

        is_int(meta_layer_put(s, "gone", "x", 1, &err), 0, "put another");
        is_int(meta_layer_delete(s, "gone", &err), 0, "delete");
        is_int(get_r(s, "gone"), -ENOENT, "deleted key is absent");
        is_int(meta_layer_delete(s, "never", &err), 0, "delete of an absent key is fine");

        /* tens of MB, random so that no compression shrinks them */
        size_t big_len = 40u << 20;
        uint8_t *big = malloc(big_len);
        Rng rng = { 77 };
        rng_fill(&rng, big, big_len);
        is_int(meta_layer_put(s, "big", big, big_len, &err), 0, "put of 40 MiB (%s)", err.text);
        ok(get_is(s, "big", big, big_len), "get of 40 MiB returns the same bytes");

        /* the same directory again while it is open */
        MetaStore *s2 = NULL;
        ErrMsg err2 = {};
        is_int(meta_store_open(dir, &s2, &err2), -EBUSY, "second open in this process: -EBUSY");
        has_str(err2.text, "lock", "  message names the lock (%s)", err2.text);
        ok(s2 == NULL, "  *ret untouched");
        is_int(open_in_child(dir), -EBUSY, "open from another process while held: -EBUSY");

        ok(meta_store_close(s) == NULL, "close returns NULL");

        /* reopen: everything persisted, deletes too */
        if (!is_int(meta_store_open(dir, &s, &err), 0, "reopen (%s)", err.text)) {
                free(big);
                return;
        }
        ok(get_is(s, "sha256:aa", "second value", 12), "value persisted across close");
        ok(get_is(s, "big", big, big_len), "40 MiB value persisted");
        ok(get_is(s, "empty", "", 0), "empty value persisted");
        is_int(get_r(s, "gone"), -ENOENT, "delete persisted");
        meta_store_close(s);
        free(big);

        is_int(open_in_child(dir), 0, "another process opens it once it is closed");
}

typedef struct Worker {
        MetaStore *s;
        int id;
        int failures;
} Worker;

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        char key[64], val[128];
        for (int i = 0; i < 50; i++) {
                snprintf(key, sizeof(key), "t%d/%d", w->id, i);
                int n = snprintf(val, sizeof(val), "value of thread %d, item %d", w->id, i);
                if (meta_layer_put(w->s, key, val, (size_t) n, NULL) < 0 || !get_is(w->s, key, val, (size_t) n))
                        w->failures++;
                if (i % 2 == 0 && (meta_layer_delete(w->s, key, NULL) < 0 || get_r(w->s, key) != -ENOENT))
                        w->failures++;
        }
        return NULL;
}

static void test_threads(const char *dir) {
        MetaStore *s = NULL;
        ErrMsg err = {};
        if (!is_int(meta_store_open(dir, &s, &err), 0, "open for threads (%s)", err.text))
                return;
        Worker w[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
                w[i] = (Worker) { .s = s, .id = i };
                pthread_create(&th[i], NULL, worker_run, &w[i]);
        }
        int failures = 0;
        for (int i = 0; i < 4; i++) {
                pthread_join(th[i], NULL);
                failures += w[i].failures;
        }
        is_int(failures, 0, "4 threads put/get/delete at once");
        ok(get_is(s, "t3/49", "value of thread 3, item 49", 26), "a record written by a thread");
        meta_store_close(s);
}

static void test_errors(void) {
        char dir[4200];
        MetaStore *s = NULL;
        ErrMsg err = {};

        /* a CURRENT file that names no manifest: RocksDB reports Corruption */
        snprintf(dir, sizeof(dir), "%s/corrupt", tmp);
        mkdir(dir, 0700);
        close(file_write(dir, "CURRENT", "garbage", 7));
        is_int(meta_store_open(dir, &s, &err), -EBADMSG, "corrupt store: -EBADMSG");
        has_str(err.text, "Corruption", "  with RocksDB's message (%s)", err.text);

        /* a path under a regular file cannot be created: an IO error */
        close(file_write(tmp, "file", "x", 1));
        snprintf(dir, sizeof(dir), "%s/file/db", tmp);
        err = (ErrMsg) {};
        is_int(meta_store_open(dir, &s, &err), -EIO, "store under a regular file: -EIO");
        has_str(err.text, dir, "  message names the directory");

        ok(meta_store_close(NULL) == NULL, "close(NULL)");
}

int main(int argc, char **argv) {
        if (argc == 3 && strcmp(argv[1], "--try-open") == 0) {
                MetaStore *s = NULL;
                int r = meta_store_open(argv[2], &s, NULL);
                meta_store_close(s);
                return -r;
        }
        if (tmpdir_make(tmp) < 0) {
                printf("Bail out! mkdtemp: %s\n", strerror(errno));
                return 1;
        }
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s/meta", tmp);
        test_basic(dir);
        snprintf(dir, sizeof(dir), "%s/threads", tmp);
        test_threads(dir);
        test_errors();
        tmpdir_remove(tmp);
        return done();
}
