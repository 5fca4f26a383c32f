/* holdfastctl entry point: global options, command dispatch, help. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ipc/ctl-client.h"
#include "common/util/macro.h"
#include "supervisor/ctl/ctl.h"

static const CtlCommand commands[] = {
        { "convert", "turn a layer tar into an eStargz blob", cmd_convert, help_convert },
        { "inspect", "list the files of an eStargz blob", cmd_inspect, help_inspect },
        { "verify", "check every chunk and file of an eStargz blob", cmd_verify, help_verify },
        { "cat", "write one file of an eStargz blob to stdout", cmd_cat, help_cat },
        { "status", "show the supervisor, its worker and the mounts", cmd_status, help_status },
        { "mounts", "list the mounts", cmd_mounts, help_mounts },
        { "mount", "mount an eStargz layer (a local blob or a registry layer)", cmd_mount, help_mount },
        { "umount", "unmount a holdfast mount", cmd_umount, help_umount },
        { "upgrade", "replace the worker (or the supervisor) keeping the mounts", cmd_upgrade, help_upgrade },
        { "restart", "replace the worker with a fresh one", cmd_restart, help_restart },
        { "image", "mount an image from a registry lazily as one root file system", cmd_image, help_image },
};

void ctl_error(const char *fmt, ...) {
        va_list ap;
        fputs("holdfastctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

int parse_size(const char *s, uint64_t *ret) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || s[0] == '-')
                return -EINVAL;
        uint64_t mul = 1;
        if (*end) {
                char u = *end;
                const char *rest = end + 1;
                if (u == 'k' || u == 'K')
                        mul = 1ull << 10;
                else if (u == 'm' || u == 'M')
                        mul = 1ull << 20;
                else if (u == 'g' || u == 'G')
                        mul = 1ull << 30;
                else
                        return -EINVAL;
                if (*rest && strcmp(rest, "iB") != 0 && strcmp(rest, "B") != 0)
                        return -EINVAL;
        }
        if (v > UINT64_MAX / mul)
                return -ERANGE;
        *ret = v * mul;
        return 0;
}

static void help(FILE *f) {
        fprintf(f,
"Usage: holdfastctl [--root DIR] COMMAND [OPTIONS] [ARGS]\n"
"\n"
"holdfast serves container image layers in the eStargz format lazily over\n"
"FUSE. holdfastctl converts and checks layers (convert, inspect, verify,\n"
"cat) and drives holdfast-supervisor (status, mounts, mount, umount,\n"
"upgrade, restart) through DIR/supervisor.sock.\n"
"\n"
"Global options:\n"
"  --root DIR  the supervisor's state directory (default " DEFAULT_ROOT ")\n"
"\n"
"Commands:\n");
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
        fprintf(f,
"\n"
"Run 'holdfastctl COMMAND --help' for a command's options.\n"
"\n"
"Exit status:\n"
"  0  success\n"
"  1  the operation failed (I/O error, out of space, the supervisor refused\n"
"     the request or cannot be reached, ...)\n"
"  2  bad command line\n"
"  3  the input is malformed or does not verify (bad footer or TOC, digest\n"
"     mismatch, corrupt data)\n");
}

const char *ctl_root = DEFAULT_ROOT;

int main(int argc, char **argv) {
        while (argc >= 2 && (strcmp(argv[1], "--root") == 0 || strncmp(argv[1], "--root=", 7) == 0)) {
                if (argv[1][6] == '=')
                        ctl_root = argv[1] + 7;
                else if (argc >= 3) {
                        ctl_root = argv[2];
                        argc--;
                        argv++;
                } else {
                        ctl_error("--root needs a directory");
                        return CTL_EXIT_USAGE;
                }
                argc--;
                argv++;
                argv[0] = (char *) "holdfastctl";
        }
        if (!ctl_root[0]) {
                ctl_error("--root needs a directory");
                return CTL_EXIT_USAGE;
        }
        if (argc < 2) {
                help(stderr);
                return CTL_EXIT_USAGE;
        }
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
                if (argc > 2 && strcmp(argv[1], "help") == 0)
                        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                                if (strcmp(argv[2], commands[i].name) == 0) {
                                        commands[i].help();
                                        return CTL_EXIT_OK;
                                }
                help(stdout);
                return CTL_EXIT_OK;
        }
        if (strcmp(argv[1], "--version") == 0) {
                printf("holdfastctl %s\n", HOLDFAST_VERSION);
                return CTL_EXIT_OK;
        }
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                if (strcmp(argv[1], commands[i].name) == 0)
                        return commands[i].run(argc - 1, argv + 1);
        ctl_error("unknown command '%s'; see 'holdfastctl --help'", argv[1]);
        return CTL_EXIT_USAGE;
}
