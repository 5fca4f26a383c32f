/* holdfast-worker: command line, logging, and the pieces both modes
 * share (the store, the layer opener handed to the FUSE engine). Only
 * this file and main-*.c wire worker/'s areas together. Main thread. */
#include "worker/main.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/util/macro.h"
#include "worker/cache/cache.h"
#include "worker/layers/layers.h"
#include "worker/util/log.h"
#include "worker/meta/store.h"

static const char usage_text[] =
        "NAME\n"
        "       holdfast-worker - serve eStargz layers over FUSE for holdfast-supervisor\n"
        "\n"
        "SYNOPSIS\n"
        "       holdfast-worker --root DIR --supervisor-fd N [--threads N]\n"
        "       holdfast-worker --standalone BLOB MOUNTPOINT [--root DIR] [--threads N]\n"
        "       holdfast-worker --help\n"
        "\n"
        "DESCRIPTION\n"
        "       holdfast-worker answers the kernel's FUSE requests for every holdfast\n"
        "       mount: a read-only view of an eStargz layer, read lazily from its\n"
        "       blob, every chunk verified against the TOC before a byte of it is\n"
        "       returned. Layer indexes are kept in RocksDB under DIR/meta so that a\n"
        "       restarted worker serves without reading any TOC again.\n"
        "\n"
        "       Normally the worker is started by holdfast-supervisor, which owns the\n"
        "       mounts and their /dev/fuse connections and passes them over the socket\n"
        "       N (see docs/design.md, \"The worker protocol\"). A worker can take over\n"
        "       connections already initialized by a previous worker, including\n"
        "       requests it had read but not answered (FUSE_NOTIFY_RESEND).\n"
        "\n"
        "       With --standalone, the worker mounts BLOB (an eStargz blob, a local\n"
        "       file) on MOUNTPOINT itself, serves it until SIGINT or SIGTERM, and then\n"
        "       unmounts it. This is for tests and debugging; it needs root.\n"
        "\n"
        "OPTIONS\n"
        "       --root DIR\n"
        "              State directory. The layer store is DIR/meta. Required with\n"
        "              --supervisor-fd; optional with --standalone (no store without it).\n"
        "\n"
        "       --supervisor-fd N\n"
        "              The SOCK_SEQPACKET socket to the supervisor.\n"
        "\n"
        "       --threads N\n"
        "              Threads serving FUSE requests (1-256, default 4).\n"
        "\n"
        "       --standalone BLOB MOUNTPOINT\n"
        "              Mount and serve one layer without a supervisor.\n"
        "\n"
        "       -h, --help\n"
        "              Print this text and exit.\n"
        "\n"
        "EXIT STATUS\n"
        "       0 after Drain (supervised) or a signal (standalone); 1 on any error,\n"
        "       including a message from the supervisor that is undecodable or out of\n"
        "       order; 2 on a usage error.\n"
        "\n"
        "ENVIRONMENT\n"
        "       HOLDFAST_DEBUG  log debug messages too.\n"
        "\n"
        "SEE ALSO\n"
        "       holdfast-supervisor(8), holdfastctl(8), fuse(4)\n";

int worker_store_open(const char *root, MetaStore **ret) {
        *ret = NULL;
        if (mkdir(root, 0700) < 0 && errno != EEXIST) {
                int r = -errno;
                log_error_errno(r, "Cannot create %s: %m", root);
                return r;
        }
        _cleanup_free_ char *dir = NULL;
        if (asprintf(&dir, "%s/meta", root) < 0)
                return -ENOMEM;
        ErrMsg err = {};
        int r = meta_store_open_lazy(dir, ret, &err);
        if (r < 0) {
                log_error_errno(r, "Cannot open the layer store %s: %s", dir, err.text[0] ? err.text : strerror(-r));
                return r;
        }
        return 0;
}

MetaStore *worker_store_close(MetaStore *s) {
        return meta_store_close(s);
}

int worker_env_open(const char *root, MetaStore **store, LayerEnv **ret) {
        LayerEnv *env = calloc(1, sizeof(*env));
        if (!env)
                return -ENOMEM;
        Cache *cache = NULL;
        if (root) {
                CacheConfig cfg = { .max_bytes = 20ull << 30 };
                const char *max = getenv("HOLDFAST_CACHE_MAX_BYTES");
                if (max) {
                        char *end;
                        unsigned long long v = strtoull(max, &end, 10);
                        if (*end || end == max)
                                log_warn("HOLDFAST_CACHE_MAX_BYTES=%s is not a number of bytes; using %" PRIu64, max,
                                         cfg.max_bytes);
                        else
                                cfg.max_bytes = v;
                }
                ErrMsg err = {};
                int r = cache_open(root, &cfg, &cache, &err);
                if (r < 0)
                        log_warn_errno(r, "Serving registry layers without the chunk cache (every read fetches): %s",
                                       err.text[0] ? err.text : strerror(-r));
        }
        layer_env_init(env, store, cache);
        env->hosts_dir = getenv("HOLDFAST_HOSTS_DIR");
        if (getenv("HOLDFAST_NO_PREFETCH"))
                env->prefetch = false;
        /* unset or "1": on, no budget; "0": off; else a budget in MB/s */
        env->background = true;
        const char *bg = getenv("HOLDFAST_BACKGROUND_FETCH");
        if (bg && bg[0]) {
                char *end;
                unsigned long long mbps = strtoull(bg, &end, 10);
                if (*end || end == bg || mbps > UINT64_MAX / 1000000)
                        log_warn("HOLDFAST_BACKGROUND_FETCH=%s is not 0, 1 or a number of MB/s; background fetch stays on",
                                 bg);
                else if (mbps == 0)
                        env->background = false;
                else if (mbps > 1)
                        env->background_bytes_per_s = mbps * 1000000ull;
        }
        *ret = env;
        return 0;
}

LayerEnv *worker_env_close(LayerEnv *env) {
        if (!env)
                return NULL;
        Cache *cache = env->cache;
        layer_env_done(env);
        cache_free(cache);
        free(env);
        return NULL;
}

static int open_layer(LayerEnv *env, const char *source, bool stored_only, bool prefetch, Layer **ret_layer,
                      void **ret_handle, ErrMsg *err) {
        LayerSource *ls;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int r;
        if (stored_only)
                r = layer_source_open_stored(source, env, &ls, err);
        else {
                layer_env_open_begin(env);
                r = layer_source_open(source, env, prefetch, &ls, err);
                layer_env_open_end(env);
        }
        if (r < 0)
                return r;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        log_debug("layer %s: index %s in %lld us", source, ls->from_store ? "from the store" : "built from the TOC",
                  (long long) (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
        *ret_layer = ls->layer;
        *ret_handle = ls;
        return 0;
}

int worker_layer_open(void *userdata, const char *source, Layer **ret_layer, void **ret_handle, ErrMsg *err) {
        /* a new mount: its prefetch starts now */
        return open_layer(userdata, source, false, true, ret_layer, ret_handle, err);
}

/* A connection a previous worker served, on its first request. */
static int worker_layer_reopen(void *userdata, const char *source, Layer **ret_layer, void **ret_handle,
                               ErrMsg *err) {
        return open_layer(userdata, source, false, false, ret_layer, ret_handle, err);
}

int worker_layer_warm(LayerEnv *env, const char *source, ErrMsg *err) {
        Layer *layer;
        void *handle;
        int r = open_layer(env, source, false, false, &layer, &handle, err);
        if (r >= 0)
                layer_source_close(handle);
        return r;
}

void worker_layer_close(void *userdata, void *handle) {
        (void) userdata;
        layer_source_close(handle);
}

static int worker_layer_preload(void *userdata, const char *source, Layer **ret_layer, void **ret_handle,
                                ErrMsg *err) {
        LayerEnv *env = userdata;
        if (!env->store || !*env->store)
                return -ENOENT;
        return open_layer(env, source, true, false, ret_layer, ret_handle, err);
}

static ssize_t worker_layer_read(void *userdata, void *handle, ChunkDecoder *d, uint64_t ino, uint64_t off,
                                 size_t len, void *buf, ErrMsg *err) {
        (void) userdata;
        return layer_source_read(handle, d, ino, off, len, buf, err);
}

static int worker_layer_file_fd(void *userdata, void *handle, uint64_t ino, int *ret_fd) {
        (void) userdata;
        LayerSource *ls = handle;
        if (!ls->cache || cache_layer_file_complete(ls->cache, ino) != 1)
                return -ENODATA;
        return cache_layer_file_open(ls->cache, ino, ret_fd);
}

FuseLayerOps worker_layer_ops(LayerEnv *env) {
        return (FuseLayerOps) {
                .open = worker_layer_reopen,
                .preload = worker_layer_preload,
                .close = worker_layer_close,
                .read = worker_layer_read,
                .file_fd = worker_layer_file_fd,
                .userdata = env,
        };
}

static int parse_uint(const char *s, unsigned long max, unsigned long *ret) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

int main(int argc, char **argv) {
        enum { OPT_ROOT = 0x100, OPT_FD, OPT_THREADS, OPT_STANDALONE };
        static const struct option options[] = {
                { "root", required_argument, NULL, OPT_ROOT },
                { "supervisor-fd", required_argument, NULL, OPT_FD },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "standalone", no_argument, NULL, OPT_STANDALONE },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        WorkerArgs args = { .supervisor_fd = -1, .threads = 4 };
        bool standalone = false;
        unsigned long v;
        int c;
        log_setup();
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case OPT_ROOT:
                        args.root = optarg;
                        break;
                case OPT_FD:
                        if (parse_uint(optarg, INT_MAX, &v) < 0) {
                                fprintf(stderr, "holdfast-worker: --supervisor-fd: not a file descriptor: %s\n", optarg);
                                return 2;
                        }
                        args.supervisor_fd = (int) v;
                        break;
                case OPT_THREADS:
                        if (parse_uint(optarg, 256, &v) < 0 || v == 0) {
                                fprintf(stderr, "holdfast-worker: --threads: expected 1 to 256, got %s\n", optarg);
                                return 2;
                        }
                        args.threads = (unsigned) v;
                        break;
                case OPT_STANDALONE:
                        standalone = true;
                        break;
                case 'h':
                        fputs(usage_text, stdout);
                        return 0;
                default:
                        fprintf(stderr, "Try 'holdfast-worker --help'.\n");
                        return 2;
                }
        }
        signal(SIGPIPE, SIG_IGN);
        if (standalone) {
                if (argc - optind != 2 || args.supervisor_fd >= 0) {
                        fprintf(stderr, "holdfast-worker: --standalone takes BLOB MOUNTPOINT and no --supervisor-fd\n"
                                        "Try 'holdfast-worker --help'.\n");
                        return 2;
                }
                args.blob = argv[optind];
                args.mountpoint = argv[optind + 1];
                return worker_run_standalone(&args) < 0 ? 1 : 0;
        }
        if (optind != argc || !args.root || args.supervisor_fd < 0) {
                fprintf(stderr, "holdfast-worker: needs --root DIR and --supervisor-fd N (or --standalone)\n"
                                "Try 'holdfast-worker --help'.\n");
                return 2;
        }
        return worker_run_supervised(&args) < 0 ? 1 : 0;
}
