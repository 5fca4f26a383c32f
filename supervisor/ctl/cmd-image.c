/* holdfastctl image mount / umount: an image from a registry as one
 * read-only root file system, without containerd. The image is resolved
 * here (worker/fetch/: tag or digest, index and platform); each layer is
 * mounted lazily by the supervisor under ROOT/images/<manifest hex>/<n>
 * (as HOST/REPO@sha256:...#toc=... when the layer has the TOC digest
 * annotation), and DIR gets an overlayfs with those as its lower layers,
 * the topmost first, as containerd stacks them. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "common/util/strbuf.h"
#include "supervisor/ctl/ctl.h"
#include "common/ipc/ctl-client.h"
#include "worker/fetch/registry.h"

static bool tty;

static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void progress(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        if (tty) {
                fputs("\r\033[K", stderr);
                vfprintf(stderr, fmt, ap);
        }
        va_end(ap);
}

static int ctl_request(holdfast_CtlRequest_Op op, const char *source, const char *mountpoint, char *msg,
                       size_t msg_size) {
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = op;
        if (strlen(source ? source : "") >= sizeof(req.source) || strlen(mountpoint) >= sizeof(req.mountpoint)) {
                snprintf(msg, msg_size, "layer reference or mountpoint longer than %zu bytes", sizeof(req.source) - 1);
                return -ENAMETOOLONG;
        }
        if (source)
                strcpy(req.source, source);
        strcpy(req.mountpoint, mountpoint);
        DaemonReply d;
        const char *what;
        int r = daemon_call(ctl_root, &req, 0, &d, &what);
        if (r < 0) {
                snprintf(msg, msg_size, "cannot reach the supervisor at %s/supervisor.sock (%s: %s)", ctl_root,
                         what, strerror(-r));
                return r;
        }
        r = d.reply.error;
        snprintf(msg, msg_size, "%s", d.reply.message[0] ? d.reply.message : r ? strerror(-r) : "");
        daemon_reply_done(&d);
        return r;
}

static int image_dir(const char *manifest_digest, char *buf, size_t size) {
        const char *hex = strchr(manifest_digest, ':');
        return (size_t) snprintf(buf, size, "%s/images/%.16s", ctl_root, hex ? hex + 1 : manifest_digest) < size
                       ? 0
                       : -ENAMETOOLONG;
}

/* Undoes what a partial image mount left: layer mounts 0..n-1. */
static void unmount_layers(const char *dir, size_t n) {
        char mp[PATH_MAX + 32], msg[512];
        for (size_t i = n; i > 0; i--) {
                snprintf(mp, sizeof(mp), "%s/%zu", dir, i - 1);
                (void) ctl_request(holdfast_CtlRequest_Op_UMOUNT, NULL, mp, msg, sizeof(msg));
                (void) rmdir(mp);
        }
        (void) rmdir(dir);
}

typedef struct LayerJob {
        char source[1024];
        char mp[PATH_MAX + 32];
        char msg[PATH_MAX + 600];
        pthread_t thread;
        bool started;
        int r;
} LayerJob;

static void *layer_job(void *userdata) {
        LayerJob *j = userdata;
        if (mkdir(j->mp, 0700) < 0) {
                j->r = -errno;
                snprintf(j->msg, sizeof(j->msg), "%.*s: %s", PATH_MAX, j->mp, strerror(errno));
                return NULL;
        }
        j->r = ctl_request(holdfast_CtlRequest_Op_MOUNT, j->source, j->mp, j->msg, sizeof(j->msg));
        if (j->r < 0)
                (void) rmdir(j->mp);
        return NULL;
}

static int image_mount(const char *ref, const char *platform, const char *target) {
        FetchClient *fc = NULL;
        FetchImage *img = NULL;
        ErrMsg err = {};
        char dir[PATH_MAX];
        size_t mounted = 0;
        int ret = CTL_EXIT_FAILURE;
        StrBuf opts = {};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);

        FetchConfig cfg = { .hosts_dir = getenv("HOLDFAST_HOSTS_DIR") };
        int r = fetch_client_new(&cfg, &fc, &err);
        if (r < 0) {
                ctl_error("image mount: %s", err.text);
                goto out;
        }
        progress("resolving %s", ref);
        r = fetch_image_resolve(fc, ref, platform, &img, &err);
        if (r < 0) {
                progress("%s", "");
                ctl_error("image mount: %s: %s", ref, err.text[0] ? err.text : strerror(-r));
                goto out;
        }
        if (img->n_layers == 0) {
                ctl_error("image mount: %s has no layers", ref);
                goto out;
        }
        struct stat st;
        if (stat(target, &st) < 0 || !S_ISDIR(st.st_mode)) {
                ctl_error("image mount: %s is not a directory", target);
                ret = CTL_EXIT_USAGE;
                goto out;
        }
        if (image_dir(img->manifest_digest, dir, sizeof(dir)) < 0) {
                ctl_error("image mount: --root is too long");
                goto out;
        }
        char images[PATH_MAX];
        snprintf(images, sizeof(images), "%s/images", ctl_root);
        (void) mkdir(images, 0700);
        if (mkdir(dir, 0700) < 0) {
                ctl_error("image mount: %s: %s (is %s mounted already? 'holdfastctl image umount' it first)", dir,
                          strerror(errno), ref);
                goto out;
        }
        /* every layer at once: each costs the supervisor a mount and the
         * worker a round trip or two to the registry */
        progress("mounting %zu layer%s lazily", img->n_layers, img->n_layers == 1 ? "" : "s");
        LayerJob *jobs = calloc(img->n_layers, sizeof(*jobs));
        if (!jobs) {
                ctl_error("image mount: out of memory");
                goto undo;
        }
        for (size_t i = 0; i < img->n_layers; i++) {
                const FetchDescriptor *l = &img->layers[i];
                const char *toc = fetch_layer_toc_digest(l);
                LayerJob *j = &jobs[i];
                snprintf(j->source, sizeof(j->source), "%s@%s#size=%" PRIu64 "%s%s", img->host_repo, l->digest,
                         l->size, toc ? "&toc=" : "", toc ? toc : "");
                snprintf(j->mp, sizeof(j->mp), "%s/%zu", dir, i);
                j->started = pthread_create(&j->thread, NULL, layer_job, j) == 0;
                if (!j->started)
                        layer_job(j);
        }
        bool failed = false;
        for (size_t i = 0; i < img->n_layers; i++) {
                LayerJob *j = &jobs[i];
                if (j->started)
                        pthread_join(j->thread, NULL);
                if (j->r < 0 && !failed) {
                        progress("%s", "");
                        const char *toc = fetch_layer_toc_digest(&img->layers[i]);
                        ctl_error("image mount: layer %zu (%s): %s%s", i + 1, img->layers[i].digest, j->msg,
                                  toc ? "" : " (no TOC digest annotation: is the image eStargz? convert it with "
                                             "'ctr-remote image convert --estargz' or 'holdfastctl convert')");
                }
                failed |= j->r < 0;
        }
        free(jobs);
        mounted = img->n_layers;
        if (failed)
                goto undo;
        /* overlayfs: the last layer of the manifest is the top one */
        r = strbuf_printf(&opts, "lowerdir=");
        for (size_t i = img->n_layers; r >= 0 && i > 0; i--)
                r = strbuf_printf(&opts, "%s%s/%zu", i == img->n_layers ? "" : ":", dir, i - 1);
        if (r < 0) {
                ctl_error("image mount: out of memory");
                goto undo;
        }
        if (img->n_layers == 1) {
                /* overlayfs wants two lower layers without an upper one */
                if (mount(opts.data + strlen("lowerdir="), target, NULL, MS_BIND | MS_RDONLY, NULL) < 0 ||
                    mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0) {
                        ctl_error("image mount: bind mount on %s: %s", target, strerror(errno));
                        goto undo;
                }
        } else if (mount("holdfast", target, "overlay", MS_RDONLY, opts.data) < 0) {
                ctl_error("image mount: overlayfs on %s: %s", target, strerror(errno));
                goto undo;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        progress("%s", "");
        printf("mounted %s (%s, %zu layer%s) on %s in %.0f ms\n", ref, img->manifest_digest, img->n_layers,
               img->n_layers == 1 ? "" : "s", target,
               (double) (t1.tv_sec - t0.tv_sec) * 1e3 + (double) (t1.tv_nsec - t0.tv_nsec) / 1e6);
        ret = CTL_EXIT_OK;
        goto out;
undo:
        unmount_layers(dir, mounted);
out:
        strbuf_done(&opts);
        fetch_image_free(img);
        fetch_client_free(fc);
        return ret;
}

/* The layers under an overlay or bind mount at target: read from
 * /proc/self/mountinfo is overkill; the layers live in ROOT/images/ID/N,
 * and the overlay's options name them. */
static int image_umount(const char *target) {
        char *real = realpath(target, NULL);
        if (!real) {
                ctl_error("image umount: %s: %s", target, strerror(errno));
                return CTL_EXIT_USAGE;
        }
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[8192], layers_dir[PATH_MAX] = "";
        size_t n_layers = 0;
        char prefix[PATH_MAX];
        snprintf(prefix, sizeof(prefix), "%s/images/", ctl_root);
        bool found = false;
        while (f && fgets(line, sizeof(line), f)) {
                char mp[PATH_MAX];
                if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 || strcmp(mp, real) != 0)
                        continue;
                found = true;
                /* lowerdir=ROOT/images/ID/N:... or a bind of ROOT/images/ID/0 */
                char *p = strstr(line, prefix);
                if (p) {
                        char *slash = strchr(p + strlen(prefix), '/');
                        if (slash) {
                                snprintf(layers_dir, sizeof(layers_dir), "%.*s", (int) (slash - p), p);
                                for (char *q = line; (q = strstr(q, layers_dir)); q += strlen(layers_dir))
                                        n_layers++;
                        }
                }
        }
        if (f)
                fclose(f);
        if (!found) {
                ctl_error("image umount: nothing is mounted on %s", real);
                free(real);
                return CTL_EXIT_FAILURE;
        }
        if (umount2(real, MNT_DETACH) < 0) {
                ctl_error("image umount: %s: %s", real, strerror(errno));
                free(real);
                return CTL_EXIT_FAILURE;
        }
        if (layers_dir[0]) {
                /* every layer directory that exists, whatever the count said */
                size_t n = 0;
                char mp[PATH_MAX + 32];
                for (;; n++) {
                        snprintf(mp, sizeof(mp), "%s/%zu", layers_dir, n);
                        if (access(mp, F_OK) < 0)
                                break;
                }
                unmount_layers(layers_dir, MAX(n, n_layers));
        }
        printf("unmounted %s\n", real);
        free(real);
        return CTL_EXIT_OK;
}

void help_image(void) {
        printf(
"Usage: holdfastctl [--root DIR] image mount [--platform OS/ARCH] IMAGE TARGET\n"
"       holdfastctl [--root DIR] image umount TARGET\n"
"\n"
"image mount resolves IMAGE (HOST/REPO:TAG or HOST/REPO@sha256:DIGEST; an\n"
"index is narrowed to --platform, default the running one), has the\n"
"supervisor mount each of its layers lazily under ROOT/images/, and\n"
"presents the merged read-only root file system at TARGET (an existing\n"
"directory) with overlayfs, the image's last layer on top. Nothing is\n"
"downloaded but each layer's TOC; file contents are fetched when read.\n"
"Every layer must be eStargz; the TOC digest annotation\n"
"(containerd.io/snapshot/stargz/toc.digest) is checked when present.\n"
"Registries are configured as for containerd (/etc/containerd/certs.d),\n"
"credentials come from ~/.docker/config.json or $DOCKER_CONFIG.\n"
"\n"
"image umount unmounts TARGET and the image's layers.\n"
"\n"
"Exit status: 0 success; 1 the image or a layer could not be mounted (what\n"
"was mounted is undone); 2 bad command line.\n");
}

int cmd_image(int argc, char **argv) {
        static const struct option opts[] = {
                { "platform", required_argument, NULL, 'p' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *platform = NULL;
        tty = isatty(STDERR_FILENO);
        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                help_image();
                return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
        }
        const char *sub = argv[1];
        argc--, argv++;
        optind = 1;
        int c;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'p': platform = optarg; break;
                case 'h': help_image(); return CTL_EXIT_OK;
                default: return CTL_EXIT_USAGE;
                }
        int n = argc - optind;
        if (strcmp(sub, "mount") == 0 && n == 2)
                return image_mount(argv[optind], platform, argv[optind + 1]);
        if (strcmp(sub, "umount") == 0 && n == 1 && !platform)
                return image_umount(argv[optind]);
        ctl_error("image: expected 'mount [--platform P] IMAGE TARGET' or 'umount TARGET'; see 'holdfastctl image "
                  "--help'");
        return CTL_EXIT_USAGE;
}
