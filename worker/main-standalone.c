/* holdfast-worker --standalone BLOB MOUNTPOINT: the worker mounts one
 * layer itself (as the supervisor would: docs/design.md, "Processes"),
 * serves it until SIGINT/SIGTERM or until it is unmounted from outside,
 * then unmounts it (lazily: open files keep it alive, answered by nobody,
 * so they get ENOTCONN). For tests and debugging. Main thread; serving
 * threads only through the FuseServer. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/main.h"
#include "worker/util/log.h"

#define STANDALONE_ID 1

static void on_gone(void *userdata, uint64_t id) {
        int *efd = userdata;
        uint64_t one = 1;
        (void) id;
        ssize_t _unused_ w = write(*efd, &one, sizeof(one));
}

static int do_mount(int fd, const char *mountpoint) {
        char opts[256];
        snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other,default_permissions", fd,
                 (unsigned) getuid(), (unsigned) getgid());
        if (mount("holdfast", mountpoint, "fuse.holdfast", MS_RDONLY | MS_NOSUID | MS_NODEV, opts) < 0)
                return -errno;
        return 0;
}

int worker_run_standalone(const WorkerArgs *args) {
        MetaStore *store = NULL;
        LayerEnv *env = NULL;
        FuseServer *srv = NULL;
        _cleanup_close_ int gone = -EBADF, sfd = -EBADF, fuse = -EBADF;
        bool mounted = false;
        int r;

        /* Blocked before any thread exists, so that every thread inherits
         * the mask and SIGINT/SIGTERM reach only the signalfd. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);

        if (args->root && worker_store_open(args->root, &store) < 0)
                log_warn("Serving without the layer store");
        r = worker_env_open(args->root, &store, &env);
        if (r < 0)
                goto out;

        /* Open the layer first: a bad blob is refused before anything is
         * mounted. */
        ErrMsg err = {};
        Layer *layer;
        void *handle;
        r = worker_layer_open(env, args->blob, &layer, &handle, &err);
        if (r < 0) {
                log_error_errno(r, "Cannot mount %s: %s", args->blob, err.text[0] ? err.text : strerror(-r));
                goto out;
        }

        gone = eventfd(0, EFD_CLOEXEC);
        fuse = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
        if (gone < 0 || fuse < 0) {
                r = -errno;
                log_error_errno(r, "Cannot open /dev/fuse: %m");
                worker_layer_close(NULL, handle);
                goto out;
        }
        FuseServerConfig cfg = {
                .n_threads = args->threads,
                .layer_ops = worker_layer_ops(env),
                .on_gone = on_gone,
                .userdata = &gone,
        };
        r = fuse_server_new(&cfg, &srv);
        if (r < 0) {
                worker_layer_close(NULL, handle);
                log_error_errno(r, "Cannot set up serving: %m");
                goto out;
        }
        r = do_mount(fuse, args->mountpoint);
        if (r < 0) {
                worker_layer_close(NULL, handle);
                log_error_errno(r, "Cannot mount on %s: %m", args->mountpoint);
                goto out;
        }
        mounted = true;
        /* The server keeps its own fd: once ours is closed, the server's
         * going away is what ends the connection. */
        int dup_fd = fcntl(fuse, F_DUPFD_CLOEXEC, 3);
        if (dup_fd < 0) {
                r = -errno;
                worker_layer_close(NULL, handle);
                log_error_errno(r, "dup: %m");
                goto out;
        }
        r = fuse_server_add(srv, STANDALONE_ID, dup_fd, args->blob, NULL, layer, handle);
        if (r >= 0)
                r = fuse_server_start(srv);
        if (r < 0) {
                log_error_errno(r, "Cannot serve: %m");
                goto out;
        }
        close(TAKE_FD(fuse));

        sfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sfd < 0) {
                r = -errno;
                log_error_errno(r, "signalfd: %m");
                goto out;
        }
        log_info("Serving %s on %s", args->blob, args->mountpoint);
        struct pollfd pfd[2] = { { .fd = sfd, .events = POLLIN }, { .fd = gone, .events = POLLIN } };
        while (poll(pfd, 2, -1) < 0)
                if (errno != EINTR) {
                        r = -errno;
                        log_error_errno(r, "poll: %m");
                        goto out;
                }
        if (pfd[1].revents) {
                log_info("%s was unmounted", args->mountpoint);
                mounted = false;
        }
        r = 0;
out:
        /* Unmount while still serving, so that nothing in flight is left
         * unanswered; then stop. */
        if (mounted && umount2(args->mountpoint, MNT_DETACH) < 0)
                log_warn_errno(-errno, "Cannot unmount %s: %m", args->mountpoint);
        srv = fuse_server_free(srv);
        env = worker_env_close(env);
        store = worker_store_close(store);
        return r;
}
