/* holdfast-supervisor: options, the loop, signals. Owns the Supervisor
 * and the loop; everything else is wired from here and runs on that one
 * loop (no threads). See docs/design.md, "Serving: supervisor, worker,
 * takeover". */
#include "supervisor/supervisor.h"

#include "common/ipc/listen.h"

#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>

#define DEFAULT_ROOT "/var/lib/holdfast"
#define DEFAULT_SNAPSHOTTER_SOCKET "/run/holdfast/snapshotter.sock"
#define WORKER_NAME "holdfast-worker"

static const char help[] =
"Usage: holdfast-supervisor [OPTIONS]\n"
"Keeps holdfast's FUSE mounts, served by " WORKER_NAME ", alive across its crashes\n"
"and upgrades. Controlled with holdfastctl through ROOT/supervisor.sock.\n"
"\n"
"  --root DIR                 state directory (default " DEFAULT_ROOT ")\n"
"  --worker PATH              the worker (default: next to this binary, else in $PATH)\n"
"  --restart-limit N/SECONDS  give up respawning a worker that died N times within\n"
"                             SECONDS, keeping the mounts (default 10/60; 0: never)\n"
"  --restart-delay-max MS     longest wait between respawns (default 5000)\n"
"  --no-standby               keep no standby worker ready to take over\n"
"  --snapshotter-socket PATH  serve containerd's snapshots API (a proxy snapshotter)\n"
"                             on PATH (default " DEFAULT_SNAPSHOTTER_SOCKET ")\n"
"  --no-snapshotter           serve no snapshotter socket\n"
"  --help                     show this help\n"
"\n"
"The supervisor owns the snapshotter socket: a worker that dies or is upgraded\n"
"never refuses containerd, whose connections wait in the socket's backlog.\n"
"SIGTERM and SIGINT drain the worker and stop. Mounts are detached unless\n"
"systemd runs the supervisor: then their fds stay in its fdstore.\n";

/* WORKER_NAME next to self, else the first in $PATH. */
static char *find_worker(const char *self) {
        char buf[PATH_MAX];
        snprintf(buf, sizeof(buf), "%.*s/" WORKER_NAME, (int) (strrchr(self, '/') - self), self);
        if (access(buf, X_OK) == 0)
                return strdup(buf);
        /* where `meson install` puts it */
        if (access(HOLDFAST_LIBEXECDIR "/" WORKER_NAME, X_OK) == 0)
                return strdup(HOLDFAST_LIBEXECDIR "/" WORKER_NAME);
        for (const char *path = getenv("PATH"); path && *path;) {
                size_t n = strcspn(path, ":");
                if (path[0] == '/' && snprintf(buf, sizeof(buf), "%.*s/" WORKER_NAME, (int) n, path) < PATH_MAX &&
                    access(buf, X_OK) == 0)
                        return strdup(buf);
                path += n + (path[n] == ':');
        }
        return NULL;
}

static int make_root(const char *root, char **ret) {
        struct stat st;
        if ((mkdir(root, 0700) < 0 && errno != EEXIST) || stat(root, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        if ((st.st_mode & 07777) != 0700 && chmod(root, 0700) < 0)
                return -errno;
        char *c = realpath(root, NULL);
        if (!c)
                return -errno;
        *ret = c;
        return 0;
}

static void on_signal(uv_signal_t *h, int signum) {
        Supervisor *s = h->data;
        log_info("got %s", sigabbrev_np(signum) ?: "a signal");
        if (!s->stopping)
                supervisor_stop(s);
}

/* Everything between the options and the loop. */
/* containerd's socket, unless the fdstore gave it back. Without it the
 * mounts are still served: a failure is logged, not fatal. */
static void snapshotter_listen(Supervisor *s, const char *path) {
        if (!path || s->snap_fd >= 0)
                return;
        s->snap_fd = ipc_listen_unix(path, SOCK_STREAM, true);
        if (s->snap_fd < 0) {
                log_error_errno(s->snap_fd, "cannot serve the snapshotter on %s%s", path,
                                s->snap_fd == -EADDRINUSE ? " (another snapshotter answers there)" :
                                s->snap_fd == -EEXIST ? " (it is not a socket; left as it is)" : "");
                return;
        }
        log_info("containerd's snapshotter socket: %s", path);
        sd_store_snapshotter(s);
}

static int start(Supervisor *s, const char *root, const char *worker, const char *snap_path, int restore_fd,
                 ErrMsg *err) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
                return errmsg_set(err, -errno, "readlink /proc/self/exe: %s", strerror(errno));
        /* After a package upgrade the running image is "(deleted)"; the
         * path is where the new one is. */
        self[n] = 0;
        if (n > 10 && strcmp(self + n - 10, " (deleted)") == 0)
                self[n - 10] = 0;
        s->self_path = strdup(self);
        int r = make_root(root, &s->root);
        if (r < 0)
                return errmsg_set(err, r, "state directory %s: %s", root, strerror(-r));
        s->worker_path = worker ? (worker[0] == '/' ? strdup(worker) : realpath(worker, NULL)) : find_worker(self);
        if (!s->worker_path)
                return errmsg_set(err, -ENOENT, "no " WORKER_NAME " next to %s, in " HOLDFAST_LIBEXECDIR " or in $PATH; use --worker", self);
        s->start_ms = now_ms();
        uv_timer_init(s->loop, &s->spawn_timer);
        uv_signal_init(s->loop, &s->sigterm);
        uv_signal_init(s->loop, &s->sigint);
        s->sigterm.data = s->sigint.data = s;
        uv_signal_start(&s->sigterm, on_signal, SIGTERM);
        uv_signal_start(&s->sigint, on_signal, SIGINT);
        sd_setup(s);
        if (restore_fd >= 0) {
                r = supervisor_restore(s, restore_fd, err);
                return r < 0 ? errmsg_prefix(err, r, "cannot restore after re-exec") : 0;
        }
        r = sd_restore(s, err);
        if (r < 0)
                log_error("cannot take the mounts back from the fdstore: %s", err->text);
        else if (r > 0)
                log_info("took %d mounts back from the fdstore", r);
        snapshotter_listen(s, snap_path);
        _cleanup_free_ char *sock = NULL;
        if (asprintf(&sock, "%s/supervisor.sock", s->root) < 0)
                return errmsg_set(err, -ENOMEM, "out of memory");
        r = ctl_server_start(&s->ctl, s, sock, -1);
        if (r < 0)
                return errmsg_set(err, r, "control socket %s%s: %s", sock,
                                  r == -EADDRINUSE ? " (another supervisor runs there)" : "", strerror(-r));
        log_info("listening on %s; worker %s", sock, s->worker_path);
        return 0;
}

static int bad_usage(const char *what, const char *arg) {
        fprintf(stderr, "holdfast-supervisor: %s '%s'\n", what, arg);
        return 2;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "root", required_argument, NULL, 'r' },
                { "worker", required_argument, NULL, 'w' },
                { "restart-limit", required_argument, NULL, 'l' },
                { "restart-delay-max", required_argument, NULL, 'd' },
                { "restore-fd", required_argument, NULL, 'R' },
                { "no-standby", no_argument, NULL, 'S' },
                { "snapshotter-socket", required_argument, NULL, 's' },
                { "no-snapshotter", no_argument, NULL, 'N' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        static Supervisor sup = {
                .restart_burst = 10, .restart_interval_ms = 60000, .delay_max_ms = 5000, /* see help */
                .want_standby = true, .prev_inflight_fd = -EBADF, .snap_fd = -EBADF,
        };
        Supervisor *s = &sup;
        const char *root = DEFAULT_ROOT, *worker = NULL, *snap_path = DEFAULT_SNAPSHOTTER_SOCKET;
        int restore_fd = -1, c;
        uint64_t secs;
        char tail;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'r': root = optarg; break;
                case 'w': worker = optarg; break;
                case 'l':
                        if (sscanf(optarg, "%u/%" SCNu64 "%c", &s->restart_burst, &secs, &tail) != 2 ||
                            s->restart_burst > RESTART_BURST_MAX || secs == 0)
                                return bad_usage("--restart-limit wants N/SECONDS, got", optarg);
                        s->restart_interval_ms = secs * 1000;
                        break;
                case 'd':
                        if (sscanf(optarg, "%" SCNu64 "%c", &s->delay_max_ms, &tail) != 1 || s->delay_max_ms > 3600000)
                                return bad_usage("bad --restart-delay-max", optarg);
                        s->delay_max_ms = MAX(s->delay_max_ms, (uint64_t) 100);
                        break;
                case 'R': restore_fd = atoi(optarg); break;
                case 'S': s->want_standby = false; break;
                case 's':
                        if (optarg[0] != '/')
                                return bad_usage("--snapshotter-socket wants an absolute path, got", optarg);
                        snap_path = optarg;
                        break;
                case 'N': snap_path = NULL; break;
                case 'h': fputs(help, stdout); return 0;
                default: fputs(help, stderr); return 2;
                }
        if (optind < argc)
                return bad_usage("unexpected argument", argv[optind]);
        if (geteuid() != 0) {
                fputs("holdfast-supervisor: must run as root (it holds /dev/fuse connections and detaches mounts)\n", stderr);
                return 1;
        }
        signal(SIGPIPE, SIG_IGN);
        uv_loop_t loop;
        uv_loop_init(&loop);
        s->loop = &loop;
        ErrMsg err = {};
        if (start(s, root, worker, snap_path, restore_fd, &err) < 0) {
                log_error("%s", err.text);
                return 1;
        }
        if (!s->current && !s->gave_up)
                supervisor_spawn_current(s);
        sd_ready(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        closep(&s->prev_inflight_fd);
        closep(&s->snap_fd);
        free(s->root);
        free(s->worker_path);
        free(s->self_path);
        free(s->standby_path);
        log_info("stopped");
        return 0;
}
