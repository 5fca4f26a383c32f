/* holdfast-supervisor: options, the loop, signals. Owns the Supervisor
 * and the loop; everything else is wired from here and runs on that one
 * loop (no threads). See docs/design.md, "Serving: supervisor, worker,
 * takeover". */
#include "supervisor/supervisor.h"
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "supervisor/log.h"
#include "supervisor/sd.h"

#define DEFAULT_ROOT "/var/lib/holdfast"
#define WORKER_NAME "holdfast-worker"

static void help(FILE *f) {
        fprintf(f,
"Usage: holdfast-supervisor [OPTIONS]\n"
"\n"
"Keeps holdfast's FUSE mounts alive: mounts them, holds their /dev/fuse\n"
"connections, runs holdfast-worker to serve them and replaces it when it\n"
"dies or is upgraded, without the mounts noticing more than a stall.\n"
"Controlled with holdfastctl through ROOT/supervisor.sock (root only).\n"
"\n"
"Options:\n"
"  --root DIR                 state directory (default " DEFAULT_ROOT ",\n"
"                             created 0700)\n"
"  --worker PATH              the worker binary (default: " WORKER_NAME " next\n"
"                             to this binary, else the first in $PATH)\n"
"  --restart-limit N/SECONDS  stop respawning a worker that died N times\n"
"                             within SECONDS (default 10/60; 0 never stops);\n"
"                             mounts are kept, 'holdfastctl restart' retries\n"
"  --restart-delay-max MS     longest wait between respawns (default 5000);\n"
"                             a worker that served for a second or more is\n"
"                             replaced at once; quicker deaths wait 100 ms,\n"
"                             doubling\n"
"  --no-standby               do not keep a standby worker. By default one\n"
"                             holds every mount (reading none), opens their\n"
"                             layers from the store while idle (up to 1 GiB)\n"
"                             and takes over the moment the serving worker\n"
"                             exits: a crash costs no process start and no\n"
"                             layer restore\n"
"  --help                     show this help\n"
"\n"
"Signals: SIGTERM and SIGINT drain the worker and stop. Mounts are detached\n"
"unless systemd runs the supervisor (NOTIFY_SOCKET): then their fds stay in\n"
"its fdstore for the next start.\n");
}

static char *find_worker(const char *self) {
        char buf[PATH_MAX];
        snprintf(buf, sizeof(buf), "%s", self);
        char *slash = strrchr(buf, '/');
        if (slash && (size_t) (slash - buf) + sizeof(WORKER_NAME) + 1 < sizeof(buf)) {
                strcpy(slash + 1, WORKER_NAME);
                if (access(buf, X_OK) == 0)
                        return strdup(buf);
        }
        const char *path = getenv("PATH");
        while (path && *path) {
                size_t n = strcspn(path, ":");
                if (n > 0 && path[0] == '/' && n + sizeof(WORKER_NAME) + 1 < sizeof(buf)) {
                        snprintf(buf, sizeof(buf), "%.*s/%s", (int) n, path, WORKER_NAME);
                        if (access(buf, X_OK) == 0)
                                return strdup(buf);
                }
                path += n + (path[n] == ':');
        }
        return NULL;
}

static int make_root(const char *root, char **ret) {
        if (mkdir(root, 0700) < 0 && errno != EEXIST)
                return -errno;
        struct stat st;
        if (stat(root, &st) < 0)
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

static int parse_limit(const char *arg, Supervisor *s) {
        unsigned burst;
        unsigned long secs;
        char tail;
        if (sscanf(arg, "%u/%lu%c", &burst, &secs, &tail) != 2 || burst > RESTART_BURST_MAX || secs == 0)
                return -EINVAL;
        s->restart_burst = burst;
        s->restart_interval_ms = secs * 1000;
        return 0;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "root", required_argument, NULL, 'r' },
                { "worker", required_argument, NULL, 'w' },
                { "restart-limit", required_argument, NULL, 'l' },
                { "restart-delay-max", required_argument, NULL, 'd' },
                { "restore-fd", required_argument, NULL, 'R' },
                { "no-standby", no_argument, NULL, 'S' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        static Supervisor sup;
        Supervisor *s = &sup;
        const char *root = DEFAULT_ROOT, *worker = NULL;
        int restore_fd = -1, c;
        s->restart_burst = 10;
        s->restart_interval_ms = 60000;
        s->delay_max_ms = 5000;
        s->want_standby = true;
        s->prev_inflight_fd = -1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'r': root = optarg; break;
                case 'w': worker = optarg; break;
                case 'l':
                        if (parse_limit(optarg, s) < 0) {
                                fprintf(stderr, "holdfast-supervisor: --restart-limit wants N/SECONDS, got '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'd': {
                        char *end;
                        unsigned long long v = strtoull(optarg, &end, 10);
                        if (*end || end == optarg || v > 3600000) {
                                fprintf(stderr, "holdfast-supervisor: bad --restart-delay-max '%s'\n", optarg);
                                return 2;
                        }
                        s->delay_max_ms = MAX((uint64_t) v, (uint64_t) 100);
                        break;
                }
                case 'R': restore_fd = atoi(optarg); break;
                case 'S': s->want_standby = false; break;
                case 'h': help(stdout); return 0;
                default: help(stderr); return 2;
                }
        if (optind < argc) {
                fprintf(stderr, "holdfast-supervisor: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }
        if (geteuid() != 0) {
                fprintf(stderr, "holdfast-supervisor: must run as root (mount(2), /dev/fuse)\n");
                return 1;
        }
        signal(SIGPIPE, SIG_IGN);
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0) {
                log_error("readlink /proc/self/exe: %s", strerror(errno));
                return 1;
        }
        self[n] = 0;
        /* After a package upgrade the running image is "(deleted)"; the
         * path is where the new one is. */
        char *del = strstr(self, " (deleted)");
        if (del && del[10] == 0)
                *del = 0;
        s->self_path = strdup(self);
        int r = make_root(root, &s->root);
        if (r < 0) {
                log_error_errno(r, "state directory %s", root);
                return 1;
        }
        s->worker_path = worker ? (worker[0] == '/' ? strdup(worker) : realpath(worker, NULL)) : find_worker(self);
        if (!s->worker_path) {
                log_error("no %s found (next to %s or in $PATH); use --worker", WORKER_NAME, self);
                return 1;
        }
        uv_loop_t loop;
        uv_loop_init(&loop);
        s->loop = &loop;
        s->start_ms = now_ms();
        uv_timer_init(&loop, &s->respawn_timer);
        s->respawn_timer.data = s;
        uv_timer_init(&loop, &s->standby_timer);
        s->standby_timer.data = s;
        uv_signal_init(&loop, &s->sigterm);
        uv_signal_init(&loop, &s->sigint);
        s->sigterm.data = s->sigint.data = s;
        uv_signal_start(&s->sigterm, on_signal, SIGTERM);
        uv_signal_start(&s->sigint, on_signal, SIGINT);
        sd_setup(s);

        ErrMsg err = {};
        if (restore_fd >= 0) {
                r = supervisor_restore(s, restore_fd, &err);
                if (r < 0) {
                        log_error("cannot restore after re-exec: %s", err.text);
                        return 1;
                }
        } else {
                r = sd_restore(s, &err);
                if (r < 0)
                        log_error("cannot take the mounts back from the fdstore: %s", err.text);
                else if (r > 0)
                        log_info("took %d mounts back from the fdstore", r);
                _cleanup_free_ char *sock = NULL;
                if (asprintf(&sock, "%s/supervisor.sock", s->root) < 0)
                        return 1;
                r = ctl_server_start(&s->ctl, s, sock, -1);
                if (r < 0) {
                        log_error_errno(r, "control socket %s%s", sock,
                                        r == -EADDRINUSE ? " (another supervisor runs there)" : "");
                        return 1;
                }
                log_info("listening on %s; worker %s", sock, s->worker_path);
        }
        if (!s->current && !s->gave_up)
                supervisor_spawn_current(s);
        sd_ready(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        if (s->prev_inflight_fd >= 0)
                close(s->prev_inflight_fd);
        free(s->root);
        free(s->worker_path);
        free(s->self_path);
        free(s->standby_path);
        log_info("stopped");
        return s->exit_code;
}
