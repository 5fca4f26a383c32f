/* holdfastctl convert: layer tar -> eStargz blob. Writes to a temporary
 * file next to OUT and renames it into place, so OUT is either the whole
 * blob or untouched. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/estargz/writer.h"
#include "common/util/macro.h"
#include "supervisor/ctl/ctl.h"

void help_convert(void) {
        printf(
"Usage: holdfastctl convert [OPTIONS] IN OUT\n"
"\n"
"Convert the layer tar IN (plain, gzip or zstd; '-' reads stdin) into an\n"
"eStargz blob OUT that stargz-snapshotter and holdfast can mount lazily.\n"
"Prints the TOC digest (for the containerd.io/snapshot/stargz/toc.digest\n"
"annotation), the diffID (the sha256 of the uncompressed tar, for the\n"
"image config's rootfs.diff_ids), the blob digest and its size.\n"
"\n"
"Options:\n"
"  --chunk-size SIZE        split files into chunks of SIZE bytes (default\n"
"                           4MiB; suffixes k, M, G); a chunk is the unit of\n"
"                           lazy fetching and verification\n"
"  --level N                gzip compression level, 1-12 (default 6)\n"
"  --prefetch-list FILE     paths (one per line, '#' comments) to place first\n"
"                           and mark with .prefetch.landmark; without it,\n"
"                           .no.prefetch.landmark is written\n"
"  --allow-missing-prefetch skip listed paths that are not in the layer\n"
"                           (default: fail)\n"
"  --tmpdir DIR             where the input is spooled (default: OUT's\n"
"                           directory)\n"
"  --json                   print the result as one JSON object\n"
"  -h, --help               show this help\n"
"\n"
"Example:\n"
"  holdfastctl convert --prefetch-list boot.txt layer.tar.gz layer.esgz\n");
}

static int read_list(const char *path, char ***ret, size_t *ret_n) {
        FILE *f = fopen(path, "re");
        if (!f)
                return -errno;
        char **list = NULL, *line = NULL;
        size_t n = 0, cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, f)) >= 0) {
                while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
                        line[--len] = 0;
                char *p = line;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (!*p || *p == '#')
                        continue;
                char **nl = reallocarray(list, n + 1, sizeof(char *));
                if (!nl || !(nl[n] = strdup(p))) {
                        list = nl ? nl : list;
                        break;
                }
                list = nl;
                n++;
        }
        free(line);
        fclose(f);
        *ret = list;
        *ret_n = n;
        return 0;
}

int cmd_convert(int argc, char **argv) {
        static const struct option opts[] = {
                { "chunk-size", required_argument, NULL, 'c' },
                { "level", required_argument, NULL, 'l' },
                { "prefetch-list", required_argument, NULL, 'p' },
                { "allow-missing-prefetch", no_argument, NULL, 'a' },
                { "tmpdir", required_argument, NULL, 't' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        ConvertOptions co = {};
        const char *list_path = NULL;
        bool json = false;
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (c) {
                case 'c':
                        if (parse_size(optarg, &co.chunk_size) < 0 || co.chunk_size == 0) {
                                ctl_error("convert: --chunk-size '%s' is not a size", optarg);
                                return CTL_EXIT_USAGE;
                        }
                        break;
                case 'l': {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*end || v < 1 || v > 12) {
                                ctl_error("convert: --level must be 1-12");
                                return CTL_EXIT_USAGE;
                        }
                        co.level = (int) v;
                        break;
                }
                case 'p': list_path = optarg; break;
                case 'a': co.allow_missing_prefetch = true; break;
                case 't': co.tmpdir = optarg; break;
                case 'j': json = true; break;
                case 'h': help_convert(); return CTL_EXIT_OK;
                default: return CTL_EXIT_USAGE;
                }
        if (argc - optind != 2) {
                ctl_error("convert: expected IN and OUT; see 'holdfastctl convert --help'");
                return CTL_EXIT_USAGE;
        }
        const char *in = argv[optind], *out = argv[optind + 1];

        char **list = NULL;
        size_t n_list = 0;
        if (list_path) {
                int r = read_list(list_path, &list, &n_list);
                if (r < 0) {
                        ctl_error("convert: reading %s: %s", list_path, strerror(-r));
                        return CTL_EXIT_FAILURE;
                }
                co.prefetch = (const char *const *) list;
                co.n_prefetch = n_list;
        }

        int ret = CTL_EXIT_FAILURE;
        _cleanup_close_ int in_fd = strcmp(in, "-") == 0 ? dup(STDIN_FILENO) : open(in, O_RDONLY | O_CLOEXEC);
        _cleanup_free_ char *dir = strdup(out), *tmp = NULL;
        _cleanup_close_ int out_fd = -EBADF;
        if (in_fd < 0) {
                ctl_error("convert: %s: %s", in, strerror(errno));
                goto out;
        }
        if (!dir)
                goto out;
        char *slash = strrchr(dir, '/');
        if (slash)
                slash[slash == dir ? 1 : 0] = 0;
        else
                strcpy(dir, ".");
        if (!co.tmpdir)
                co.tmpdir = dir;
        if (asprintf(&tmp, "%s.tmp-XXXXXX", out) < 0)
                goto out;
        out_fd = mkostemp(tmp, O_CLOEXEC);
        if (out_fd < 0) {
                ctl_error("convert: creating %s: %s", tmp, strerror(errno));
                goto out;
        }

        ConvertResult res;
        ErrMsg err = {};
        int r = estargz_convert(in_fd, out_fd, &co, &res, &err);
        if (r >= 0 && (fchmod(out_fd, 0644) < 0 || fsync(out_fd) < 0))
                r = errmsg_set(&err, -errno, "syncing %s: %s", tmp, strerror(errno));
        if (r >= 0 && rename(tmp, out) < 0)
                r = errmsg_set(&err, -errno, "renaming %s to %s: %s", tmp, out, strerror(errno));
        if (r < 0) {
                unlink(tmp);
                ctl_error("convert: %s: %s", in, err.text[0] ? err.text : strerror(-r));
                ret = r == -EBADMSG || r == -ENOENT || r == -EOVERFLOW ? CTL_EXIT_INVALID : CTL_EXIT_FAILURE;
                goto out;
        }

        char toc[DIGEST_STRING_LEN + 1], diff[DIGEST_STRING_LEN + 1], blob[DIGEST_STRING_LEN + 1];
        digest_format(res.toc_digest, toc);
        digest_format(res.diff_id, diff);
        digest_format(res.blob_digest, blob);
        if (json)
                printf("{\"toc_digest\":\"%s\",\"diff_id\":\"%s\",\"blob_digest\":\"%s\",\"size\":%" PRIu64
                       ",\"uncompressed_size\":%" PRIu64 ",\"entries\":%zu,\"missing_prefetch\":%zu}\n",
                       toc, diff, blob, res.blob_size, res.uncompressed_size, res.n_entries, res.n_missing_prefetch);
        else
                printf("toc digest:  %s\ndiff id:     %s\nblob digest: %s\nsize:        %" PRIu64 " bytes (%" PRIu64 " uncompressed, %zu TOC entries)\n",
                       toc, diff, blob, res.blob_size, res.uncompressed_size, res.n_entries);
        if (res.n_missing_prefetch)
                fprintf(stderr, "holdfastctl: convert: %zu prefetch paths were not in the layer and were skipped\n", res.n_missing_prefetch);
        ret = CTL_EXIT_OK;
out:
        for (size_t i = 0; i < n_list; i++)
                free(list[i]);
        free(list);
        return ret;
}
