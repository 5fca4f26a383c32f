/* fetch-probe: drives worker/fetch's registry client from the integration
 * tests (test_fetch.py); built for tests only.
 *
 *   fetch-probe [OPTIONS] resolve REF [--platform P]    JSON of the image on stdout
 *   fetch-probe [OPTIONS] open LAYER_REF                {"size": N} on stdout
 *   fetch-probe [OPTIONS] read LAYER_REF OFF LEN        the bytes on stdout
 *   fetch-probe [OPTIONS] ranges LAYER_REF OFF:LEN[,OFF:LEN...]
 *                                                       the ranges' bytes, in order, on stdout
 *   fetch-probe [OPTIONS] tail LAYER_REF N [OFF LEN]    fetch_blob_open_tail(): a line
 *                                                       {"size": S, "tail": n} then the n bytes;
 *                                                       then those of a read of OFF LEN, if given
 * LAYER_REF is DOMAIN/REPO@sha256:HEX. OPTIONS:
 *   --hosts-dir D --docker-config F --timeout-ms N --retries N (0: none)
 *   --stall-ms N --max-conns N --redirect-ttl-ms N --backoff-ms N
 *   --allow-full --expect-size N --known-size (the size is --expect-size's: no request to open)
 *   --max-gap N --max-request N
 *   --repeat N --sleep-ms N    do the read N times, sleeping between
 *   --threads N                N threads do the reads at once (each must match)
 *   --stats FILE               write the client's statistics as JSON to FILE at exit
 * On failure: "fetch-probe: ENAME: message" on stderr, exit 1 (2: usage). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "worker/fetch/registry.h"

static struct {
        FetchConfig cfg;
        bool allow_full, known_size;
        uint64_t expect_size;
        uint64_t max_gap, max_request;
        unsigned repeat, threads;
        uint64_t sleep_ms;
        const char *stats_path;
        const char *platform;
} arg = { .repeat = 1, .threads = 1 };

static int fail(int r, const ErrMsg *e) {
        const char *name = strerrorname_np(-r);
        fprintf(stderr, "fetch-probe: %s: %s\n", name ? name : "E?", e && e->text[0] ? e->text : strerror(-r));
        return 1;
}

static void json_str(FILE *f, const char *s) {
        if (!s) {
                fputs("null", f);
                return;
        }
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

static void json_desc(FILE *f, const FetchDescriptor *d) {
        fputs("{\"digest\": ", f);
        json_str(f, d->digest);
        fprintf(f, ", \"size\": %" PRIu64 ", \"media_type\": ", d->size);
        json_str(f, d->media_type);
        fputs(", \"toc_digest\": ", f);
        json_str(f, fetch_layer_toc_digest(d));
        fputs(", \"annotations\": {", f);
        for (size_t i = 0; i < d->n_annotations; i++) {
                if (i)
                        fputs(", ", f);
                json_str(f, d->annotations[i].key);
                fputs(": ", f);
                json_str(f, d->annotations[i].value);
        }
        fputs("}}", f);
}

static void stats_write(FetchClient *c) {
        if (!arg.stats_path)
                return;
        FetchStats s;
        fetch_client_stats(c, &s);
        FILE *f = fopen(arg.stats_path, "we");
        if (!f)
                return;
        static const char *const kinds[_HTTP_KIND_MAX] = { "manifest", "blob_head", "blob_get", "token", "other" };
        fputs("{\"http\": {", f);
        const struct {
                const char *name;
                const uint64_t *v;
        } per[] = {
                { "requests", s.http.requests }, { "attempts", s.http.attempts }, { "retries", s.http.retries },
                { "failures", s.http.failures }, { "bytes", s.http.bytes },
        };
        for (size_t i = 0; i < ELEMENTSOF(per); i++) {
                fprintf(f, "%s\"%s\": {", i ? ", " : "", per[i].name);
                for (size_t k = 0; k < _HTTP_KIND_MAX; k++)
                        fprintf(f, "%s\"%s\": %" PRIu64, k ? ", " : "", kinds[k], per[i].v[k]);
                fputs("}", f);
        }
        fprintf(f, ", \"timeouts\": %" PRIu64 ", \"queued\": %" PRIu64 ", \"connections\": %" PRIu64
                   ", \"http2\": %" PRIu64 "}",
                s.http.timeouts, s.http.queued, s.http.connections, s.http.http2);
        fprintf(f,
                ", \"manifests_resolved\": %" PRIu64 ", \"blobs_opened\": %" PRIu64 ", \"reads\": %" PRIu64
                ", \"read_bytes\": %" PRIu64 ", \"range_requests\": %" PRIu64 ", \"ranges_coalesced\": %" PRIu64
                ", \"redirects\": %" PRIu64 ", \"redirect_cache_hits\": %" PRIu64
                ", \"redirect_cache_drops\": %" PRIu64 ", \"auth_challenges\": %" PRIu64
                ", \"tokens_fetched\": %" PRIu64 ", \"endpoint_fallbacks\": %" PRIu64
                ", \"scheme_fallbacks\": %" PRIu64 ", \"errors\": %" PRIu64 "}\n",
                s.manifests_resolved, s.blobs_opened, s.reads, s.read_bytes, s.range_requests, s.ranges_coalesced,
                s.redirects, s.redirect_cache_hits, s.redirect_cache_drops, s.auth_challenges, s.tokens_fetched,
                s.endpoint_fallbacks, s.scheme_fallbacks, s.errors);
        fclose(f);
}

static int cmd_resolve(FetchClient *c, const char *ref) {
        FetchImage *img;
        ErrMsg err = {};
        int r = fetch_image_resolve(c, ref, arg.platform, &img, &err);
        if (r < 0)
                return fail(r, &err);
        printf("{\"domain\": ");
        json_str(stdout, img->domain);
        printf(", \"repo\": ");
        json_str(stdout, img->repo);
        printf(", \"host_repo\": ");
        json_str(stdout, img->host_repo);
        printf(", \"manifest_digest\": ");
        json_str(stdout, img->manifest_digest);
        printf(", \"manifest_size\": %" PRIu64 ", \"media_type\": ", img->manifest_size);
        json_str(stdout, img->media_type);
        printf(", \"index_digest\": ");
        json_str(stdout, img->index_digest);
        printf(", \"platform\": ");
        json_str(stdout, img->platform);
        printf(", \"config\": ");
        json_desc(stdout, &img->config);
        printf(", \"layers\": [");
        for (size_t i = 0; i < img->n_layers; i++) {
                if (i)
                        printf(", ");
                json_desc(stdout, &img->layers[i]);
        }
        printf("]}\n");
        fetch_image_free(img);
        return 0;
}

static FetchBlobOptions blob_options(void) {
        return (FetchBlobOptions) { .expect_size = arg.expect_size, .allow_full = arg.allow_full,
                                    .known_size = arg.known_size };
}

static int blob_open(FetchClient *c, const char *ref, FetchBlob **ret) {
        ErrMsg err = {};
        FetchBlobOptions o = blob_options();
        int r = fetch_blob_open_ref(c, ref, &o, ret, &err);
        return r < 0 ? fail(r, &err) : 0;
}

/* fetch_blob_open_tail(), then a read through the blob it opened. */
static int cmd_tail(FetchClient *c, const char *ref, uint64_t n, bool then_read, uint64_t off, uint64_t len) {
        FetchBlob *b;
        ErrMsg err = {};
        FetchBlobOptions o = blob_options();
        uint8_t *tail = malloc(n ? n : 1), *rest = malloc(len ? len : 1);
        ssize_t got = tail && rest ? fetch_blob_open_tail(c, ref, &o, tail, n, &b, &err) : -ENOMEM;
        int rc = 0;
        if (got < 0)
                rc = fail((int) got, &err);
        ssize_t more = 0;
        if (rc == 0 && then_read) {
                more = fetch_blob_read(b, rest, len, off, &err);
                if (more < 0)
                        rc = fail((int) more, &err);
        }
        if (rc == 0) {
                printf("{\"size\": %" PRIu64 ", \"tail\": %zd}\n", fetch_blob_size(b), got);
                fwrite(tail, 1, (size_t) got, stdout);
                fwrite(rest, 1, (size_t) more, stdout);
        }
        if (got >= 0)
                fetch_blob_free(b);
        free(tail);
        free(rest);
        return rc;
}

typedef struct Job {
        FetchBlob *b;
        FetchRange *ranges;
        size_t n;
        uint8_t *out;   /* concatenation of the ranges */
        size_t out_len;
        int r;
        ErrMsg err;
        bool use_ranges;
} Job;

static void *job_run(void *p) {
        Job *j = p;
        for (unsigned i = 0; i < arg.repeat && j->r >= 0; i++) {
                if (i > 0 && arg.sleep_ms) {
                        struct timespec ts = { (time_t) (arg.sleep_ms / 1000), (long) (arg.sleep_ms % 1000) * 1000000 };
                        nanosleep(&ts, NULL);
                }
                memset(j->out, 0, j->out_len);
                if (j->use_ranges) {
                        FetchCoalesce pol = { .max_gap = arg.max_gap, .max_request = arg.max_request };
                        j->r = fetch_blob_read_ranges(j->b, j->ranges, j->n, &pol, &j->err);
                } else {
                        ssize_t n = fetch_blob_read(j->b, j->out, j->out_len, j->ranges[0].off, &j->err);
                        if (n >= 0 && (size_t) n != j->out_len) {
                                j->out_len = (size_t) n;
                        }
                        j->r = n < 0 ? (int) n : 0;
                }
        }
        return NULL;
}

static int cmd_read(FetchClient *c, const char *ref, FetchRange *spec, size_t n, bool use_ranges) {
        FetchBlob *b;
        int r = blob_open(c, ref, &b);
        if (r)
                return r;
        size_t total = 0;
        for (size_t i = 0; i < n; i++)
                total += spec[i].len;
        Job *jobs = calloc(arg.threads, sizeof(Job));
        pthread_t *tids = calloc(arg.threads, sizeof(pthread_t));
        if (!jobs || !tids)
                return fail(-ENOMEM, NULL);
        for (unsigned t = 0; t < arg.threads; t++) {
                Job *j = &jobs[t];
                j->b = b;
                j->n = n;
                j->use_ranges = use_ranges;
                j->out_len = total;
                j->out = malloc(total ? total : 1);
                j->ranges = calloc(n, sizeof(FetchRange));
                if (!j->out || !j->ranges)
                        return fail(-ENOMEM, NULL);
                size_t pos = 0;
                for (size_t i = 0; i < n; i++) {
                        j->ranges[i] = spec[i];
                        j->ranges[i].buf = j->out + pos;
                        pos += spec[i].len;
                }
        }
        for (unsigned t = 0; t < arg.threads; t++)
                pthread_create(&tids[t], NULL, job_run, &jobs[t]);
        for (unsigned t = 0; t < arg.threads; t++)
                pthread_join(tids[t], NULL);
        int rc = 0;
        for (unsigned t = 0; t < arg.threads && rc == 0; t++)
                if (jobs[t].r < 0)
                        rc = fail(jobs[t].r, &jobs[t].err);
        for (unsigned t = 1; t < arg.threads && rc == 0; t++)
                if (jobs[t].out_len != jobs[0].out_len || memcmp(jobs[t].out, jobs[0].out, jobs[0].out_len) != 0) {
                        fprintf(stderr, "fetch-probe: EBADMSG: thread %u read other bytes than thread 0\n", t);
                        rc = 1;
                }
        if (rc == 0 && use_ranges) {
                /* each range's own length (clamped at the end of the blob) */
                for (size_t i = 0; i < n; i++)
                        fwrite(jobs[0].ranges[i].buf, 1, (size_t) jobs[0].ranges[i].result, stdout);
        } else if (rc == 0)
                fwrite(jobs[0].out, 1, jobs[0].out_len, stdout);
        for (unsigned t = 0; t < arg.threads; t++) {
                free(jobs[t].out);
                free(jobs[t].ranges);
        }
        free(jobs);
        free(tids);
        fetch_blob_free(b);
        return rc;
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-')
                return -EINVAL;
        *ret = v;
        return 0;
}

static int usage(void) {
        fprintf(stderr, "usage: fetch-probe [OPTIONS] resolve REF [--platform P] | open REF | read REF OFF LEN | "
                        "ranges REF OFF:LEN[,...] | tail REF N [OFF LEN]\n");
        return 2;
}

int main(int argc, char **argv) {
        enum {
                O_HOSTS = 256, O_DOCKER, O_TIMEOUT, O_RETRIES, O_STALL, O_CONNS, O_TTL, O_BACKOFF, O_FULL, O_EXPECT,
                O_GAP, O_MAXREQ, O_REPEAT, O_SLEEP, O_THREADS, O_STATS, O_PLATFORM, O_KNOWN,
        };
        static const struct option opts[] = {
                { "hosts-dir", required_argument, NULL, O_HOSTS },
                { "docker-config", required_argument, NULL, O_DOCKER },
                { "timeout-ms", required_argument, NULL, O_TIMEOUT },
                { "retries", required_argument, NULL, O_RETRIES },
                { "stall-ms", required_argument, NULL, O_STALL },
                { "max-conns", required_argument, NULL, O_CONNS },
                { "redirect-ttl-ms", required_argument, NULL, O_TTL },
                { "backoff-ms", required_argument, NULL, O_BACKOFF },
                { "allow-full", no_argument, NULL, O_FULL },
                { "expect-size", required_argument, NULL, O_EXPECT },
                { "known-size", no_argument, NULL, O_KNOWN },
                { "max-gap", required_argument, NULL, O_GAP },
                { "max-request", required_argument, NULL, O_MAXREQ },
                { "repeat", required_argument, NULL, O_REPEAT },
                { "sleep-ms", required_argument, NULL, O_SLEEP },
                { "threads", required_argument, NULL, O_THREADS },
                { "stats", required_argument, NULL, O_STATS },
                { "platform", required_argument, NULL, O_PLATFORM },
                {},
        };
        int o;
        uint64_t v = 0;
        while ((o = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
                if (o != O_FULL && o != O_KNOWN && o != O_HOSTS && o != O_DOCKER && o != O_STATS && o != O_PLATFORM &&
                    parse_u64(optarg, &v) < 0)
                        return usage();
                switch (o) {
                case O_HOSTS: arg.cfg.hosts_dir = optarg; break;
                case O_DOCKER: arg.cfg.docker_config = optarg; break;
                case O_TIMEOUT: arg.cfg.timeout_ms = v; break;
                case O_RETRIES: arg.cfg.retries = v == 0 ? FETCH_NO_RETRIES : (unsigned) v; break;
                case O_STALL: arg.cfg.stall_ms = v; break;
                case O_CONNS: arg.cfg.max_conns_per_host = (unsigned) v; break;
                case O_TTL: arg.cfg.redirect_ttl_ms = v; break;
                case O_BACKOFF: arg.cfg.backoff_base_ms = v; break;
                case O_FULL: arg.allow_full = true; break;
                case O_KNOWN: arg.known_size = true; break;
                case O_EXPECT: arg.expect_size = v; break;
                case O_GAP: arg.max_gap = v; break;
                case O_MAXREQ: arg.max_request = v; break;
                case O_REPEAT: arg.repeat = (unsigned) MAX(v, (uint64_t) 1); break;
                case O_SLEEP: arg.sleep_ms = v; break;
                case O_THREADS: arg.threads = (unsigned) MAX(v, (uint64_t) 1); break;
                case O_STATS: arg.stats_path = optarg; break;
                case O_PLATFORM: arg.platform = optarg; break;
                default: return usage();
                }
        }
        if (optind + 2 > argc)
                return usage();
        const char *cmd = argv[optind], *ref = argv[optind + 1];
        char **rest = argv + optind + 2;
        int nrest = argc - optind - 2;
        if (strcmp(cmd, "resolve") == 0 && nrest == 2 && strcmp(rest[0], "--platform") == 0) {
                arg.platform = rest[1];
                nrest = 0;
        }

        FetchClient *c;
        ErrMsg err = {};
        int r = fetch_client_new(&arg.cfg, &c, &err);
        if (r < 0)
                return fail(r, &err);
        int rc;
        if (strcmp(cmd, "resolve") == 0 && nrest == 0)
                rc = cmd_resolve(c, ref);
        else if (strcmp(cmd, "open") == 0 && nrest == 0) {
                FetchBlob *b;
                rc = blob_open(c, ref, &b);
                if (rc == 0) {
                        printf("{\"size\": %" PRIu64 "}\n", fetch_blob_size(b));
                        fetch_blob_free(b);
                }
        } else if (strcmp(cmd, "read") == 0 && nrest == 2) {
                FetchRange one = {};
                uint64_t len;
                if (parse_u64(rest[0], &one.off) < 0 || parse_u64(rest[1], &len) < 0)
                        rc = usage();
                else {
                        one.len = (size_t) len;
                        rc = cmd_read(c, ref, &one, 1, false);
                }
        } else if (strcmp(cmd, "tail") == 0 && (nrest == 1 || nrest == 3)) {
                uint64_t n, off = 0, len = 0;
                if (parse_u64(rest[0], &n) < 0 ||
                    (nrest == 3 && (parse_u64(rest[1], &off) < 0 || parse_u64(rest[2], &len) < 0)))
                        rc = usage();
                else
                        rc = cmd_tail(c, ref, n, nrest == 3, off, len);
        } else if (strcmp(cmd, "ranges") == 0 && nrest == 1) {
                size_t n = 1;
                for (const char *p = rest[0]; *p; p++)
                        n += *p == ',';
                FetchRange *spec = calloc(n, sizeof(*spec));
                char *list = strdup(rest[0]), *save = NULL;
                size_t i = 0;
                rc = spec && list ? 0 : fail(-ENOMEM, NULL);
                for (char *tok = strtok_r(list, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
                        char *colon = strchr(tok, ':');
                        uint64_t len = 0;
                        if (!colon || i >= n)
                                rc = usage();
                        else {
                                *colon = 0;
                                if (parse_u64(tok, &spec[i].off) < 0 || parse_u64(colon + 1, &len) < 0)
                                        rc = usage();
                                else
                                        spec[i++].len = (size_t) len;
                        }
                }
                if (rc == 0)
                        rc = cmd_read(c, ref, spec, i, true);
                free(spec);
                free(list);
        } else
                rc = usage();
        fflush(stdout);
        stats_write(c);
        fetch_client_free(c);
        return rc;
}
