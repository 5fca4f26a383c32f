/* holdfastctl status / mounts / mount / umount / upgrade / restart: the
 * commands that talk to holdfast-supervisor over ROOT/supervisor.sock. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "common/util/macro.h"
#include "supervisor/ctl/ctl.h"
#include "common/ipc/ctl-client.h"

#define DAEMON_NOTES \
"\n" \
"The supervisor is reached at ROOT/supervisor.sock, ROOT being the global\n" \
"--root option (holdfastctl --root DIR COMMAND ...; default " DEFAULT_ROOT ").\n" \
"\n" \
"Exit status: 0 success; 1 the supervisor refused or failed the request, or\n" \
"cannot be reached; 2 bad command line.\n"

/* Parses only --help (and the options in extra); returns -1 after help,
 * CTL_EXIT_USAGE on error, 0 otherwise. */
static int parse_simple(const char *cmd, int argc, char **argv, void (*help)(void), int min_args, int max_args) {
        static const struct option opts[] = {
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'h': help(); return -1;
                default: return CTL_EXIT_USAGE;
                }
        int n = argc - optind;
        if (n < min_args || n > max_args) {
                ctl_error("%s: expected %d argument%s, got %d; see 'holdfastctl %s --help'", cmd, min_args,
                          min_args == 1 ? "" : "s", n, cmd);
                return CTL_EXIT_USAGE;
        }
        return 0;
}

/* Sends req; on any failure prints why and returns the exit code. */
static int call(const char *cmd, const holdfast_CtlRequest *req, DaemonReply *ret) {
        const char *what;
        int r = daemon_call(ctl_root, req, 0, ret, &what);
        if (r < 0) {
                if (strcmp(what, "connect") == 0)
                        ctl_error("cannot reach the supervisor at %s/supervisor.sock: %s", ctl_root, strerror(-r));
                else
                        ctl_error("%s: the supervisor at %s/supervisor.sock did not answer (%s: %s)", cmd, ctl_root,
                                  what, strerror(-r));
                return CTL_EXIT_FAILURE;
        }
        if (ret->reply.error < 0) {
                ctl_error("%s: %s", cmd, ret->reply.message[0] ? ret->reply.message : strerror(-ret->reply.error));
                daemon_reply_done(ret);
                return CTL_EXIT_FAILURE;
        }
        return CTL_EXIT_OK;
}

/* Relative paths are relative to holdfastctl's cwd, not the supervisor's. */
static int absolute(const char *cmd, const char *in, char *out, size_t size) {
        if (in[0] == '/') {
                if (strlen(in) >= size)
                        goto too_long;
                strcpy(out, in);
                return 0;
        }
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd))) {
                ctl_error("%s: getcwd: %s", cmd, strerror(errno));
                return CTL_EXIT_FAILURE;
        }
        if ((size_t) snprintf(out, size, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, in) < size)
                return 0;
too_long:
        ctl_error("%s: path too long: %s", cmd, in);
        return CTL_EXIT_USAGE;
}

static void fmt_duration(char *buf, size_t size, uint64_t ms) {
        uint64_t s = ms / 1000;
        if (s >= 86400)
                snprintf(buf, size, "%" PRIu64 "d %02" PRIu64 "h%02" PRIu64 "m", s / 86400, s / 3600 % 24, s / 60 % 60);
        else if (s >= 3600)
                snprintf(buf, size, "%" PRIu64 "h%02" PRIu64 "m%02" PRIu64 "s", s / 3600, s / 60 % 60, s % 60);
        else
                snprintf(buf, size, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
}

static void json_str(yajl_gen g, const char *s) {
        yajl_gen_string(g, (const unsigned char *) s, strlen(s));
}

static void json_int(yajl_gen g, const char *k, uint64_t v) {
        json_str(g, k);
        yajl_gen_integer(g, (long long) v);
}

static int print_status_json(const DaemonReply *d) {
        yajl_gen g = yajl_gen_alloc(NULL);
        if (!g)
                return CTL_EXIT_FAILURE;
        yajl_gen_config(g, yajl_gen_validate_utf8, 0);
        const holdfast_CtlReply *r = &d->reply;
        yajl_gen_map_open(g);
        json_int(g, "supervisor_pid", r->supervisor_pid);
        json_int(g, "worker_pid", r->worker_pid);
        json_int(g, "standby_pid", r->standby_pid);
        json_str(g, "standby_warm");
        yajl_gen_bool(g, r->standby_warm);
        json_int(g, "generation", r->generation);
        json_int(g, "restarts", r->restarts);
        json_int(g, "uptime_ms", r->uptime_ms);
        json_int(g, "last_stall_us", r->stall_us);
        json_str(g, "snapshotter_socket");
        json_str(g, r->snapshotter);
        json_str(g, "state");
        json_str(g, r->message);
        json_str(g, "mounts");
        yajl_gen_array_open(g);
        for (size_t i = 0; i < d->n_mounts; i++) {
                const holdfast_MountInfo *m = &d->mounts[i];
                yajl_gen_map_open(g);
                json_int(g, "id", m->id);
                json_str(g, "mountpoint");
                json_str(g, m->mountpoint);
                json_str(g, "source");
                json_str(g, m->source);
                json_str(g, "served");
                yajl_gen_bool(g, m->served);
                yajl_gen_map_close(g);
        }
        yajl_gen_array_close(g);
        yajl_gen_map_close(g);
        const unsigned char *buf;
        size_t len;
        yajl_gen_get_buf(g, &buf, &len);
        fwrite(buf, 1, len, stdout);
        fputc('\n', stdout);
        yajl_gen_free(g);
        return CTL_EXIT_OK;
}

int cmd_status(int argc, char **argv) {
        static const struct option opts[] = {
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        bool json = false;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'j': json = true; break;
                case 'h': help_status(); return CTL_EXIT_OK;
                default: return CTL_EXIT_USAGE;
                }
        if (optind != argc) {
                ctl_error("status: unexpected argument '%s'", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = holdfast_CtlRequest_Op_STATUS;
        DaemonReply d;
        int r = call("status", &req, &d);
        if (r)
                return r;
        if (json)
                r = print_status_json(&d);
        else {
                char up[32];
                fmt_duration(up, sizeof(up), d.reply.uptime_ms);
                size_t served = 0;
                for (size_t i = 0; i < d.n_mounts; i++)
                        served += d.mounts[i].served;
                printf("supervisor: pid %" PRIu32 ", up %s\n", d.reply.supervisor_pid, up);
                if (d.reply.worker_pid)
                        printf("worker:     pid %" PRIu32 ", %s\n", d.reply.worker_pid, d.reply.message);
                else
                        printf("worker:     none, %s\n", d.reply.message);
                if (d.reply.standby_pid)
                        printf("standby:    pid %" PRIu32 " (holds the mounts%s; takes over if the worker exits)\n",
                               d.reply.standby_pid, d.reply.standby_warm ? ", layers opened ahead" : ", warming up");
                else
                        printf("standby:    none\n");
                printf("generation: %" PRIu64 " (workers started), %" PRIu64 " restarts after a crash\n",
                       d.reply.generation, d.reply.restarts);
                printf("last stall: %.1f ms\n", (double) d.reply.stall_us / 1000.0);
                printf("mounts:     %zu (%zu served)\n", d.n_mounts, served);
                printf("containerd: %s\n", d.reply.snapshotter[0] ? d.reply.snapshotter
                                                                 : "no snapshotter socket (--no-snapshotter)");
        }
        daemon_reply_done(&d);
        return r;
}

void help_status(void) {
        printf(
"Usage: holdfastctl [--root DIR] status [--json]\n"
"\n"
"Show the supervisor's pid and uptime, the worker's pid and state, the\n"
"standby worker's pid (it takes over the moment the worker exits), how many\n"
"workers were started (generation) and how many died unasked (restarts),\n"
"the last stall (how long the mounts were not served during the last\n"
"restart or upgrade), containerd's snapshotter socket and the mounts.\n"
"\n"
"Options:\n"
"  --json    one JSON object: supervisor_pid, worker_pid (0: none),\n"
"            standby_pid (0: none), standby_warm (its layers are open),\n"
"            generation, restarts, uptime_ms, last_stall_us, state,\n"
"            snapshotter_socket (\"\": none), mounts\n"
"            (a list of {id, mountpoint, source, served})\n"
DAEMON_NOTES);
}

int cmd_mounts(int argc, char **argv) {
        int r = parse_simple("mounts", argc, argv, help_mounts, 0, 0);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = holdfast_CtlRequest_Op_STATUS;
        DaemonReply d;
        r = call("mounts", &req, &d);
        if (r)
                return r;
        printf("%-6s %-6s %-40s %s\n", "ID", "SERVED", "MOUNTPOINT", "SOURCE");
        for (size_t i = 0; i < d.n_mounts; i++)
                printf("%-6" PRIu64 " %-6s %-40s %s\n", d.mounts[i].id, d.mounts[i].served ? "yes" : "no",
                       d.mounts[i].mountpoint, d.mounts[i].source);
        daemon_reply_done(&d);
        return CTL_EXIT_OK;
}

void help_mounts(void) {
        printf(
"Usage: holdfastctl [--root DIR] mounts\n"
"\n"
"List the supervisor's mounts: id, whether the current worker serves it,\n"
"mountpoint and source blob. A mount that is not served is kept, and its\n"
"readers wait, until a worker takes it over.\n"
DAEMON_NOTES);
}

int cmd_mount(int argc, char **argv) {
        int r = parse_simple("mount", argc, argv, help_mount, 2, 2);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = holdfast_CtlRequest_Op_MOUNT;
        const char *src = argv[optind];
        if (src[0] != '/' && strstr(src, "@sha256:") && access(src, F_OK) < 0) {
                /* a registry layer, passed as it is */
                if (strlen(src) >= sizeof(req.source)) {
                        ctl_error("mount: layer reference too long: %s", src);
                        return CTL_EXIT_USAGE;
                }
                strcpy(req.source, src);
        } else {
                r = absolute("mount", src, req.source, sizeof(req.source));
                if (r)
                        return r;
        }
        r = absolute("mount", argv[optind + 1], req.mountpoint, sizeof(req.mountpoint));
        if (r)
                return r;
        DaemonReply d;
        r = call("mount", &req, &d);
        if (r)
                return r;
        printf("%s\n", d.reply.message);
        daemon_reply_done(&d);
        return CTL_EXIT_OK;
}

void help_mount(void) {
        printf(
"Usage: holdfastctl [--root DIR] mount SOURCE MOUNTPOINT\n"
"\n"
"Mount the eStargz layer SOURCE read-only at MOUNTPOINT, an existing empty\n"
"directory. SOURCE is a local blob file, or a layer in a registry:\n"
"\n"
"    HOST/REPO@sha256:DIGEST[#toc=sha256:TOCDIGEST]\n"
"\n"
"(e.g. 127.0.0.1:5000/app@sha256:4f2c...). A registry layer is read\n"
"lazily: only the chunks that are read are fetched, with HTTP range\n"
"requests, each verified against the layer's TOC and kept in the chunk\n"
"cache under the supervisor's root. With #toc=, the TOC must have that\n"
"digest (the containerd.io/snapshot/stargz/toc.digest annotation).\n"
"Registries are configured as for containerd (/etc/containerd/certs.d/\n"
"HOST/hosts.toml; plain HTTP for 127.0.0.1), credentials come from\n"
"~/.docker/config.json or $DOCKER_CONFIG.\n"
"\n"
"holdfastctl mounts it and gives the FUSE connection to the supervisor,\n"
"which keeps it and hands it to the worker. The command returns once the\n"
"worker serves it (or has refused the layer, in which case nothing stays\n"
"mounted). Relative paths are taken from the current directory.\n"
DAEMON_NOTES);
}

int cmd_umount(int argc, char **argv) {
        int r = parse_simple("umount", argc, argv, help_umount, 1, 1);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = holdfast_CtlRequest_Op_UMOUNT;
        r = absolute("umount", argv[optind], req.mountpoint, sizeof(req.mountpoint));
        if (r)
                return r;
        DaemonReply d;
        r = call("umount", &req, &d);
        if (r)
                return r;
        printf("%s\n", d.reply.message);
        daemon_reply_done(&d);
        return CTL_EXIT_OK;
}

void help_umount(void) {
        printf(
"Usage: holdfastctl [--root DIR] umount MOUNTPOINT\n"
"\n"
"Detach a holdfast mount (lazily, like umount -l: open files keep working\n"
"until closed... as long as the worker still serves them, which it stops\n"
"doing now) and forget it.\n"
DAEMON_NOTES);
}

int cmd_upgrade(int argc, char **argv) {
        static const struct option opts[] = {
                { "worker", required_argument, NULL, 'w' },
                { "supervisor", no_argument, NULL, 's' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *worker = NULL;
        bool supervisor = false;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'w': worker = optarg; break;
                case 's': supervisor = true; break;
                case 'h': help_upgrade(); return CTL_EXIT_OK;
                default: return CTL_EXIT_USAGE;
                }
        if (optind != argc) {
                ctl_error("upgrade: unexpected argument '%s'", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        if (worker && supervisor) {
                ctl_error("upgrade: --worker and --supervisor are separate steps; run one, then the other");
                return CTL_EXIT_USAGE;
        }
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = supervisor ? holdfast_CtlRequest_Op_REEXEC : holdfast_CtlRequest_Op_UPGRADE;
        if (worker) {
                int r = absolute("upgrade", worker, req.worker_path, sizeof(req.worker_path));
                if (r)
                        return r;
        }
        DaemonReply d;
        int r = call("upgrade", &req, &d);
        if (r)
                return r;
        if (supervisor)
                printf("%s (supervisor pid %" PRIu32 ", worker pid %" PRIu32 ")\n", d.reply.message,
                       d.reply.supervisor_pid, d.reply.worker_pid);
        else
                printf("%s; generation %" PRIu64 ", stall %.1f ms\n", d.reply.message, d.reply.generation,
                       (double) d.reply.stall_us / 1000.0);
        daemon_reply_done(&d);
        return CTL_EXIT_OK;
}

void help_upgrade(void) {
        printf(
"Usage: holdfastctl [--root DIR] upgrade [--worker PATH | --supervisor]\n"
"\n"
"Replace the worker without unmounting anything: the supervisor starts the\n"
"new worker (PATH, default the current binary, which may have been replaced\n"
"on disk), waits until it runs, tells the old one to drain (finish the\n"
"requests it has read, then exit), and once the old one is gone hands every\n"
"FUSE connection to the new one. Readers see a stall, never an error; the\n"
"stall is printed. If the new worker does not start, the old one keeps\n"
"serving and the command fails.\n"
"\n"
"Options:\n"
"  --worker PATH   the new worker binary (later respawns use it too)\n"
"  --supervisor    re-execute the supervisor binary in place instead: every\n"
"                  mount, the control socket and the running worker are kept\n"
"                  across execve; the worker does not notice\n"
DAEMON_NOTES);
}

int cmd_restart(int argc, char **argv) {
        int r = parse_simple("restart", argc, argv, help_restart, 0, 0);
        if (r)
                return r < 0 ? CTL_EXIT_OK : r;
        holdfast_CtlRequest req = holdfast_CtlRequest_init_zero;
        req.op = holdfast_CtlRequest_Op_RESTART;
        DaemonReply d;
        r = call("restart", &req, &d);
        if (r)
                return r;
        printf("%s; generation %" PRIu64 ", stall %.1f ms\n", d.reply.message, d.reply.generation,
               (double) d.reply.stall_us / 1000.0);
        daemon_reply_done(&d);
        return CTL_EXIT_OK;
}

void help_restart(void) {
        printf(
"Usage: holdfastctl [--root DIR] restart\n"
"\n"
"Replace the worker with a fresh process of the same binary, the way\n"
"'upgrade' does (drain, then hand over; mounts stay). After a crash loop,\n"
"when the supervisor gave up respawning the worker, this starts one again.\n"
DAEMON_NOTES);
}
