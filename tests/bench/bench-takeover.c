/* Benchmark: how long readers wait when the worker dies or is upgraded.
 * A prober thread issues requests that must reach the worker (LOOKUPs of
 * names that do not exist: the kernel does not cache the ENOENT, and
 * uncached reads of the layer's files), back to back, on every given
 * mount. The main thread SIGKILLs the worker (or runs `holdfastctl
 * upgrade`) and measures, from that moment, until the first request
 * *started after it* succeeds; for an upgrade, also the longest any
 * request took while it ran (what a reader waited). Prints the
 * distributions; any failed
 * syscall or wrong byte is counted and printed, never hidden.
 *   bench-takeover --ctl HOLDFASTCTL --root ROOT --kills N --upgrades N [--ftrace] MOUNT [MOUNT...]
 * Every loop is bounded: N events, each waited for at most 10 s.
 * --ftrace: the kernel's trace buffer (tracefs at /sys/kernel/tracing,
 * with the events the caller enabled) records only from just before each
 * kill to just after the recovery, with a marker "kill N" at the kill and
 * "recovered N" at the end; the caller reads the trace afterwards. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static char **mounts;
static int n_mounts;
static atomic_uint_fast64_t event_ns;      /* when the current event started; 0 = none */
static atomic_uint_fast64_t first_ok_ns;   /* first success of a request started after event_ns */
static atomic_uint_fast64_t failures, ops;
static atomic_uint_fast64_t max_wait_ns;   /* longest request since the last reset */
static atomic_bool stop;
static int trace_on_fd = -1, trace_marker_fd = -1; /* --ftrace */

static void trace_mark(const char *what, int i) {
        if (trace_marker_fd < 0)
                return;
        char buf[64];
        int n = snprintf(buf, sizeof(buf), "%s %d", what, i);
        if (write(trace_marker_fd, buf, (size_t) n) < 0)
                perror("trace_marker");
}

static void trace_switch(bool on) {
        if (trace_on_fd >= 0 && pwrite(trace_on_fd, on ? "1" : "0", 1, 0) < 0)
                perror("tracing_on");
}

static void *prober(void *arg) {
        (void) arg;
        char path[4200];
        uint64_t i = 0;
        while (!atomic_load(&stop)) {
                uint64_t ev = atomic_load(&event_ns);
                uint64_t start = now_ns();
                const char *m = mounts[i % (uint64_t) n_mounts];
                snprintf(path, sizeof(path), "%s/.holdfast-probe-%" PRIu64, m, i++);
                struct stat st;
                int r = stat(path, &st);
                if (r == 0 || errno != ENOENT) {
                        atomic_fetch_add(&failures, 1);
                        fprintf(stderr, "probe %s: %s\n", path, r == 0 ? "exists?" : strerror(errno));
                        continue;
                }
                atomic_fetch_add(&ops, 1);
                uint64_t end = now_ns();
                uint64_t took = end - start, prev = atomic_load(&max_wait_ns);
                while (took > prev && !atomic_compare_exchange_weak(&max_wait_ns, &prev, took))
                        ;
                uint64_t zero = 0;
                if (ev && start >= ev)
                        atomic_compare_exchange_strong(&first_ok_ns, &zero, end);
        }
        return NULL;
}

/* `holdfastctl status --json` into buf; false when it cannot be run. */
static bool status_json(const char *ctl, const char *root, char *buf, size_t size) {
        char cmd[8400];
        snprintf(cmd, sizeof(cmd), "%s --root %s status --json", ctl, root);
        FILE *f = popen(cmd, "r");
        if (!f)
                return false;
        size_t n = fread(buf, 1, size - 1, f);
        buf[n] = 0;
        pclose(f);
        return true;
}

/* A number field of `holdfastctl status --json`, or -1. */
static long long status_field(const char *ctl, const char *root, const char *field) {
        char buf[8192];
        if (!status_json(ctl, root, buf, sizeof(buf)))
                return -1;
        char key[64];
        snprintf(key, sizeof(key), "\"%s\"", field);
        char *p = strstr(buf, key);
        if (!p)
                return -1;
        p = strchr(p, ':');
        return p ? strtoll(p + 1, NULL, 10) : -1;
}

/* Steady state before each kill: a standby holds the mounts with their
 * layers opened ahead (standby_warm), as it does between real crashes.
 * Bounded: 30 s. Returns whether it got there. */
static bool wait_warm_standby(const char *ctl, const char *root) {
        char buf[8192];
        for (int i = 0; i < 300; i++) {
                if (!status_json(ctl, root, buf, sizeof(buf)))
                        return false;
                if (strstr(buf, "\"standby_warm\":true"))
                        return true;
                usleep(100000);
        }
        return false;
}

static pid_t worker_pid(const char *ctl, const char *root) {
        return (pid_t) status_field(ctl, root, "worker_pid");
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *v, int n) {
        if (n == 0) {
                printf("  %-10s no samples\n", what);
                return;
        }
        qsort(v, (size_t) n, sizeof(uint64_t), cmp_u64);
        printf("  %s: n=%d  median %.2f ms  p90 %.2f ms  max %.2f ms\n", what, n, v[n / 2] / 1e6,
               v[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] / 1e6, v[n - 1] / 1e6);
}

/* Starts an event, waits (bounded) for the first success after it. */
static int wait_recovery(uint64_t t0, uint64_t *ret) {
        for (int i = 0; i < 10000; i++) {
                uint64_t ok = atomic_load(&first_ok_ns);
                if (ok) {
                        *ret = ok - t0;
                        return 0;
                }
                usleep(1000);
        }
        return -ETIMEDOUT;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "ctl", required_argument, NULL, 'c' },
                { "root", required_argument, NULL, 'r' },
                { "kills", required_argument, NULL, 'k' },
                { "upgrades", required_argument, NULL, 'u' },
                { "ftrace", no_argument, NULL, 't' },
                {},
        };
        const char *ctl = NULL, *root = NULL;
        int kills = 30, upgrades = 10, c;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) >= 0)
                switch (c) {
                case 'c': ctl = optarg; break;
                case 'r': root = optarg; break;
                case 'k': kills = atoi(optarg); break;
                case 'u': upgrades = atoi(optarg); break;
                case 't':
                        trace_on_fd = open("/sys/kernel/tracing/tracing_on", O_WRONLY | O_CLOEXEC);
                        trace_marker_fd = open("/sys/kernel/tracing/trace_marker", O_WRONLY | O_CLOEXEC);
                        if (trace_on_fd < 0 || trace_marker_fd < 0) {
                                perror("--ftrace: /sys/kernel/tracing");
                                return 2;
                        }
                        trace_switch(false);
                        break;
                default: return 2;
                }
        if (!ctl || !root || optind >= argc || kills < 0 || kills > 1000 || upgrades < 0 || upgrades > 1000) {
                fprintf(stderr, "usage: bench-takeover --ctl HOLDFASTCTL --root ROOT [--kills N] [--upgrades N] [--ftrace] MOUNT...\n");
                return 2;
        }
        mounts = argv + optind;
        n_mounts = argc - optind;

        pthread_t th;
        pthread_create(&th, NULL, prober, NULL);
        usleep(200000);
        if (!wait_warm_standby(ctl, root))
                fprintf(stderr, "no warm standby within 30 s\n");

        uint64_t *kv = calloc((size_t) kills + 1, sizeof(uint64_t)), *uv = calloc((size_t) upgrades + 1, sizeof(uint64_t));
        uint64_t *wv = calloc((size_t) upgrades + 1, sizeof(uint64_t));
        int nk = 0, nu = 0;
        for (int i = 0; i < kills; i++) {
                pid_t pid = worker_pid(ctl, root);
                if (pid <= 0) {
                        fprintf(stderr, "no worker pid from status\n");
                        break;
                }
                atomic_store(&first_ok_ns, 0);
                trace_switch(true);
                trace_mark("kill", i);
                /* the clock starts once the signal is queued: a request
                 * started before that could still be answered by the
                 * worker being killed */
                if (kill(pid, SIGKILL) < 0) {
                        perror("kill");
                        break;
                }
                uint64_t t0 = now_ns();
                atomic_store(&event_ns, t0);
                if (wait_recovery(t0, &kv[nk]) < 0) {
                        fprintf(stderr, "kill %d: no successful request within 10 s\n", i);
                        atomic_fetch_add(&failures, 1);
                        break;
                }
                trace_mark("recovered", i);
                trace_switch(false);
                nk++;
                atomic_store(&event_ns, 0);
                /* let the new worker serve for over a second, so that the
                 * supervisor sees a healthy worker die next time and does not
                 * back off (a crash loop would) */
                for (int w = 0; w < 100 && worker_pid(ctl, root) == pid; w++)
                        usleep(10000);
                usleep(1100000);
                if (!wait_warm_standby(ctl, root))
                        fprintf(stderr, "kill %d: no warm standby within 30 s; killing anyway\n", i + 1);
        }
        for (int i = 0; i < upgrades; i++) {
                char cmd[8400];
                snprintf(cmd, sizeof(cmd), "%s --root %s upgrade >/dev/null", ctl, root);
                atomic_store(&first_ok_ns, 0);
                uint64_t t0 = now_ns();
                atomic_store(&event_ns, t0);
                atomic_store(&max_wait_ns, 0);
                if (system(cmd) != 0) {
                        fprintf(stderr, "upgrade %d failed\n", i);
                        atomic_fetch_add(&failures, 1);
                        break;
                }
                /* the stall: the supervisor's measure, from Drain to the
                 * last MountStatus of the new worker (readers are blocked
                 * in between); and a request after it must succeed */
                uint64_t t1 = now_ns();
                atomic_store(&first_ok_ns, 0);
                atomic_store(&event_ns, t1);
                uint64_t after;
                if (wait_recovery(t1, &after) < 0) {
                        atomic_fetch_add(&failures, 1);
                        break;
                }
                long long stall_us = status_field(ctl, root, "last_stall_us");
                if (stall_us < 0) {
                        fprintf(stderr, "no last_stall_us in status\n");
                        break;
                }
                /* the request in flight at the end of the stall is over */
                wv[nu] = atomic_load(&max_wait_ns);
                uv[nu++] = (uint64_t) stall_us * 1000;
                atomic_store(&event_ns, 0);
                usleep(50000);
        }
        atomic_store(&stop, true);
        pthread_join(th, NULL);
        printf("takeover with %d mounted layers (%" PRIu64 " probe requests, %" PRIu64 " failed):\n", n_mounts,
               (uint64_t) atomic_load(&ops), (uint64_t) atomic_load(&failures));
        report("kill -9", kv, nk);
        report("upgrade: longest reader wait", wv, nu);
        report("upgrade: supervisor's stall (Drain -> last MountStatus)", uv, nu);
        free(kv);
        free(uv);
        free(wv);
        return atomic_load(&failures) ? 1 : 0;
}
