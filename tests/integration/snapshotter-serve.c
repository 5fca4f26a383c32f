/* snapshotter-serve: serves worker/snapshotter (the snapshot store and
 * its gRPC service) on a unix socket, for test_snapshotter.py and by hand.
 * Built for tests only, never installed.
 *
 *   snapshotter-serve --root DIR (--socket PATH | --listen-fd N)
 *                     [--max-message BYTES] [--fake-remote]
 *
 * Prints "ready" on stdout once it accepts connections, logs connection
 * errors and remote-hook calls on stderr, and on SIGTERM or SIGINT drains
 * (GOAWAY, calls in flight answered) and stops cleanly (exit 0). --fake-remote answers every remote-snapshot Prepare
 * with "provided" after writing a marker file into the snapshot's fs/
 * (no mount): it drives containerd's remote-snapshot protocol without a
 * layer behind it. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/snapshotter/service.h"

static void on_error(void *userdata, int err, const char *message) {
        (void) userdata;
        fprintf(stderr, "snapshotter-serve: %s (%s)\n", message, strerror(-err));
}

static int fake_remote(void *userdata, const SnapRemoteRequest *req) {
        (void) userdata;
        char path[4200];
        snprintf(path, sizeof(path), "%s/.holdfast-fake-remote", req->fs_dir);
        FILE *f = fopen(path, "we");
        if (!f) {
                fprintf(stderr, "snapshotter-serve: fake remote %s: %m\n", path);
                return -errno;
        }
        fprintf(f, "%s\n", req->target);
        fclose(f);
        fprintf(stderr, "snapshotter-serve: remote snapshot %s (id %" PRIu64 ", parent \"%s\")\n", req->target,
                req->id, req->parent);
        for (size_t i = 0; i < req->labels->n; i++)
                fprintf(stderr, "snapshotter-serve:   label %s=%.200s\n", req->labels->items[i].key,
                        req->labels->items[i].value);
        return 1;
}

static void release_remote(void *userdata, uint64_t id, const char *fs_dir) {
        (void) userdata;
        fprintf(stderr, "snapshotter-serve: release remote snapshot %" PRIu64 " at %s\n", id, fs_dir);
}

static void usage(FILE *f) {
        fprintf(f, "usage: snapshotter-serve --root DIR (--socket PATH | --listen-fd N) "
                   "[--max-message BYTES] [--fake-remote]\n");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "root", required_argument, NULL, 'r' },
                { "socket", required_argument, NULL, 's' },
                { "listen-fd", required_argument, NULL, 'f' },
                { "max-message", required_argument, NULL, 'm' },
                { "fake-remote", no_argument, NULL, 'R' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *root = NULL, *sock = NULL;
        int listen_fd = -1;
        size_t max_message = 0;
        bool remote = false;
        int c;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                switch (c) {
                case 'r':
                        root = optarg;
                        break;
                case 's':
                        sock = optarg;
                        break;
                case 'f':
                        listen_fd = atoi(optarg);
                        break;
                case 'm':
                        max_message = strtoull(optarg, NULL, 10);
                        break;
                case 'R':
                        remote = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (!root || (!sock) == (listen_fd < 0) || optind != argc) {
                usage(stderr);
                return 2;
        }

        /* Every signal we stop on is taken by sigwait() here; the
         * server's threads start with all signals blocked. */
        signal(SIGPIPE, SIG_IGN);
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        pthread_sigmask(SIG_BLOCK, &stop, NULL);

        ErrMsg err = {};
        Snapshotter *s = NULL;
        SnapshotterConfig cfg = { .root = root, .busy_wait_ms = 2000 };
        if (remote)
                cfg.hooks = (SnapshotterHooks) { .prepare_remote = fake_remote, .release_remote = release_remote };
        int r = snapshotter_new(&cfg, &s, &err);
        if (r < 0) {
                fprintf(stderr, "snapshotter-serve: cannot open the snapshotter in %s: %s\n", root,
                        err.text[0] ? err.text : strerror(-r));
                return 1;
        }
        if (sock) {
                r = grpc_listen_unix(sock, &listen_fd, &err);
                if (r < 0) {
                        fprintf(stderr, "snapshotter-serve: %s\n", err.text);
                        snapshotter_free(s);
                        return 1;
                }
        }
        GrpcServerConfig tuning = { .max_message_size = max_message, .on_error = on_error };
        GrpcServer *g = NULL;
        r = snap_service_start(s, listen_fd, &tuning, &g, &err);
        if (r < 0) {
                fprintf(stderr, "snapshotter-serve: cannot serve: %s\n", err.text[0] ? err.text : strerror(-r));
                snapshotter_free(s);
                return 1;
        }
        printf("ready\n");
        fflush(stdout);

        int sig = 0;
        sigwait(&stop, &sig);
        /* as a worker handing over would: GOAWAY, let calls end */
        if (grpc_server_drain(g, 5000) < 0)
                fprintf(stderr, "snapshotter-serve: calls still in flight after 5 s, stopping anyway\n");
        grpc_server_free(g);
        snapshotter_free(s);
        if (sock)
                unlink(sock);
        return 0;
}
