/* containerd hosts directory (see hosts.h): finds the directory for a
 * domain, reads hosts.toml through toml.c and turns it into an ordered
 * endpoint list. Runs on whichever thread asks (the client caches the
 * result per domain); the only I/O is reading the directory and the file.
 * Unknown keys are ignored, as containerd ignores them, so that files
 * written for newer containerd versions still load; known keys with the
 * wrong type are errors. */
#include "worker/fetch/hosts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util/macro.h"
#include "common/util/strbuf.h"
#include "worker/fetch/reference.h"
#include "worker/fetch/toml.h"

static void endpoint_done(FetchEndpoint *e) {
        free(e->scheme);
        free(e->host);
        free(e->path);
        for (size_t i = 0; i < e->n_ca; i++)
                free(e->ca[i]);
        free(e->ca);
        for (size_t i = 0; i < e->n_headers; i++)
                free(e->headers[i]);
        free(e->headers);
        *e = (FetchEndpoint) {};
}

FetchHosts *fetch_hosts_free(FetchHosts *h) {
        if (!h)
                return NULL;
        for (size_t i = 0; i < h->n_endpoints; i++)
                endpoint_done(&h->endpoints[i]);
        free(h->endpoints);
        free(h->domain);
        free(h->source);
        free(h);
        return NULL;
}

static void fetch_hosts_freep(FetchHosts **h) {
        fetch_hosts_free(*h);
}

static int strv_push(char ***v, size_t *n, char *take_s) {
        if (!take_s)
                return -ENOMEM;
        char **nv = realloc(*v, (*n + 1) * sizeof(char *));
        if (!nv) {
                free(take_s);
                return -ENOMEM;
        }
        nv[(*n)++] = take_s;
        *v = nv;
        return 0;
}

static FetchEndpoint *hosts_add(FetchHosts *h) {
        FetchEndpoint *n = realloc(h->endpoints, (h->n_endpoints + 1) * sizeof(*n));
        if (!n)
                return NULL;
        h->endpoints = n;
        FetchEndpoint *e = &n[h->n_endpoints++];
        *e = (FetchEndpoint) {};
        return e;
}

/* scheme://host[:port][/path], nothing else: no user info, query or fragment. */
static int endpoint_set_url(FetchEndpoint *e, const char *url, bool override_path, ErrMsg *err) {
        const char *sep = strstr(url, "://");
        if (!sep)
                return errmsg_set(err, -EINVAL, "\"%s\" is not a URL (scheme://host[:port][/path])", url);
        size_t slen = (size_t) (sep - url);
        if (!((slen == 5 && strncmp(url, "https", 5) == 0) || (slen == 4 && strncmp(url, "http", 4) == 0)))
                return errmsg_set(err, -EINVAL, "\"%s\": only http and https URLs are supported", url);
        const char *host = sep + 3;
        size_t hlen = strcspn(host, "/?#");
        if (hlen == 0)
                return errmsg_set(err, -EINVAL, "\"%s\" has no host", url);
        if (memchr(host, '@', hlen))
                return errmsg_set(err, -EINVAL, "\"%s\": credentials in URLs are not supported (use the Docker config)",
                                  url);
        for (size_t i = 0; i < hlen; i++) {
                char c = host[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '-' || c == ':' || c == '[' || c == ']' || c == '_'))
                        return errmsg_set(err, -EINVAL, "\"%s\" has an invalid host", url);
        }
        const char *path = host + hlen;
        if (strpbrk(path, "?#"))
                return errmsg_set(err, -EINVAL, "\"%s\": query strings and fragments are not supported", url);
        for (const char *p = path; *p; p++)
                if ((unsigned char) *p <= ' ' || (unsigned char) *p >= 0x7f)
                        return errmsg_set(err, -EINVAL, "\"%s\" has a space or control character in its path", url);

        /* clean the path: no empty or "." components, no trailing '/' */
        _cleanup_(strbuf_done) StrBuf clean = {};
        int r = strbuf_reserve(&clean, strlen(path) + 4);
        if (r < 0)
                return r;
        for (const char *p = path; *p;) {
                while (*p == '/')
                        p++;
                size_t n = strcspn(p, "/");
                if (n == 0)
                        break;
                if (n == 2 && strncmp(p, "..", 2) == 0)
                        return errmsg_set(err, -EINVAL, "\"%s\": \"..\" in the path is not supported", url);
                if (!(n == 1 && *p == '.')) {
                        r = strbuf_putc(&clean, '/');
                        if (r >= 0)
                                r = strbuf_append(&clean, p, n);
                        if (r < 0)
                                return r;
                }
                p += n;
        }
        /* containerd: the path gets "/v2" unless it ends with it or
         * override_path says the path is the whole API prefix */
        if (!override_path && !(clean.len >= 3 && strcmp(clean.data + clean.len - 3, "/v2") == 0)) {
                r = strbuf_append(&clean, "/v2", 3);
                if (r < 0)
                        return r;
        }
        r = strbuf_putc(&clean, 0);
        if (r < 0)
                return r;
        e->scheme = strndup(url, slen);
        e->host = strndup(host, hlen);
        e->path = strbuf_steal(&clean, NULL);
        if (!e->scheme || !e->host || !e->path)
                return -ENOMEM;
        return 0;
}

static int path_join(const char *base, const char *p, char **ret) {
        if (p[0] == '/' || !base) {
                *ret = strdup(p);
                return *ret ? 0 : -ENOMEM;
        }
        return asprintf(ret, "%s/%s", base, p) < 0 ? -ENOMEM : 0;
}

static int parse_caps(const TomlValue *v, unsigned *ret, ErrMsg *err) {
        if (v->type != TOML_ARRAY)
                return errmsg_set(err, -EINVAL, "line %u: capabilities must be an array of strings", v->line);
        unsigned caps = 0;
        for (size_t i = 0; i < v->n_items; i++) {
                const TomlValue *s = v->items[i];
                if (s->type != TOML_STRING)
                        return errmsg_set(err, -EINVAL, "line %u: capabilities must be an array of strings", s->line);
                if (strcmp(s->str, "pull") == 0)
                        caps |= FETCH_CAP_PULL;
                else if (strcmp(s->str, "resolve") == 0)
                        caps |= FETCH_CAP_RESOLVE;
                else if (strcmp(s->str, "push") == 0)
                        caps |= FETCH_CAP_PUSH;
                else
                        return errmsg_set(err, -EINVAL,
                                          "line %u: unknown capability \"%s\" (pull, resolve or push)", s->line, s->str);
        }
        *ret = caps;
        return 0;
}

static bool header_name_valid(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      strchr("!#$%&'*+-.^_`|~", *s)))
                        return false;
        return true;
}

static int header_add(FetchEndpoint *e, const char *name, const TomlValue *v, ErrMsg *err) {
        if (v->type != TOML_STRING)
                return errmsg_set(err, -EINVAL, "line %u: header \"%s\" must be a string or an array of strings",
                                  v->line, name);
        if (strpbrk(v->str, "\r\n"))
                return errmsg_set(err, -EINVAL, "line %u: header \"%s\" has a line break in its value", v->line, name);
        char *line;
        if (asprintf(&line, "%s: %s", name, v->str) < 0)
                return -ENOMEM;
        return strv_push(&e->headers, &e->n_headers, line);
}

/* The keys shared by the top level (for server) and [host."URL"] tables. */
static int endpoint_apply(FetchEndpoint *e, const TomlValue *t, const char *base_dir, ErrMsg *err) {
        const TomlValue *v;
        int r;

        if ((v = toml_table_get(t, "capabilities"))) {
                r = parse_caps(v, &e->caps, err);
                if (r < 0)
                        return r;
        }
        if ((v = toml_table_get(t, "skip_verify"))) {
                if (v->type != TOML_BOOL)
                        return errmsg_set(err, -EINVAL, "line %u: skip_verify must be true or false", v->line);
                e->skip_verify = v->boolean;
        }
        if ((v = toml_table_get(t, "ca"))) {
                size_t n = v->type == TOML_ARRAY ? v->n_items : 1;
                for (size_t i = 0; i < n; i++) {
                        const TomlValue *s = v->type == TOML_ARRAY ? v->items[i] : v;
                        if (s->type != TOML_STRING || s->len == 0)
                                return errmsg_set(err, -EINVAL, "line %u: ca must be a path or an array of paths",
                                                  s->line);
                        char *p;
                        r = path_join(base_dir, s->str, &p);
                        if (r < 0)
                                return r;
                        r = strv_push(&e->ca, &e->n_ca, p);
                        if (r < 0)
                                return r;
                }
        }
        if ((v = toml_table_get(t, "client")))
                return errmsg_set(err, -EOPNOTSUPP, "line %u: TLS client certificates (client) are not supported",
                                  v->line);
        if ((v = toml_table_get(t, "header"))) {
                if (v->type != TOML_TABLE)
                        return errmsg_set(err, -EINVAL, "line %u: header must be a table", v->line);
                for (size_t i = 0; i < v->n_keys; i++) {
                        const char *name = v->keys[i];
                        const TomlValue *hv = v->values[i];
                        if (!header_name_valid(name))
                                return errmsg_set(err, -EINVAL, "line %u: \"%s\" is not a valid header name",
                                                  hv->line, name);
                        if (strcasecmp(name, "authorization") == 0 || strcasecmp(name, "host") == 0 ||
                            strcasecmp(name, "range") == 0)
                                return errmsg_set(err, -EINVAL, "line %u: header \"%s\" cannot be set here",
                                                  hv->line, name);
                        size_t n = hv->type == TOML_ARRAY ? hv->n_items : 1;
                        for (size_t k = 0; k < n; k++) {
                                r = header_add(e, name, hv->type == TOML_ARRAY ? hv->items[k] : hv, err);
                                if (r < 0)
                                        return r;
                        }
                }
        }
        return 0;
}

static int bool_key(const TomlValue *t, const char *key, bool *ret, ErrMsg *err) {
        const TomlValue *v = toml_table_get(t, key);
        *ret = false;
        if (!v)
                return 0;
        if (v->type != TOML_BOOL)
                return errmsg_set(err, -EINVAL, "line %u: %s must be true or false", v->line, key);
        *ret = v->boolean;
        return 0;
}

/* The domain's own server when nothing names one. */
static int endpoint_default(FetchEndpoint *e, const char *domain, ErrMsg *err) {
        /* containerd and stargz-snapshotter: a local registry is plain
         * http, and its certificate, if it has one after all (then we
         * fall back to https), is not worth checking */
        bool local = fetch_host_is_local(domain);
        char *url;
        if (asprintf(&url, "%s://%s", local ? "http" : "https", fetch_ref_api_host(domain)) < 0)
                return -ENOMEM;
        int r = endpoint_set_url(e, url, false, err);
        free(url);
        if (r < 0)
                return r;
        e->caps = FETCH_CAP_PULL | FETCH_CAP_RESOLVE | FETCH_CAP_PUSH;
        if (local) {
                e->scheme_fallback = true;
                e->skip_verify = true;
        }
        return 0;
}

/* A CA or skip_verify said for a default endpoint: TLS is meant, only. */
static int endpoint_want_tls(FetchEndpoint *e) {
        if (!e->scheme_fallback)
                return 0;
        char *s = strdup("https");
        if (!s)
                return -ENOMEM;
        free(e->scheme);
        e->scheme = s;
        e->scheme_fallback = false;
        return 0;
}

static int hosts_new(const char *domain, FetchHosts **ret) {
        FetchHosts *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->domain = strdup(domain);
        if (!h->domain) {
                free(h);
                return -ENOMEM;
        }
        *ret = h;
        return 0;
}

int fetch_hosts_default(const char *domain, FetchHosts **ret, ErrMsg *err) {
        _cleanup_(fetch_hosts_freep) FetchHosts *h = NULL;
        int r = hosts_new(domain, &h);
        if (r < 0)
                return r;
        FetchEndpoint *e = hosts_add(h);
        if (!e)
                return -ENOMEM;
        r = endpoint_default(e, domain, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(h);
        return 0;
}

int fetch_hosts_parse(const char *toml, size_t len, const char *domain, const char *base_dir, FetchHosts **ret,
                      ErrMsg *err) {
        _cleanup_(toml_freep) TomlValue *root = NULL;
        int r = toml_parse(toml, len, &root, err);
        if (r < 0)
                return r;

        _cleanup_(fetch_hosts_freep) FetchHosts *h = NULL;
        r = hosts_new(domain, &h);
        if (r < 0)
                return r;

        const TomlValue *hosts = toml_table_get(root, "host");
        if (hosts && hosts->type != TOML_TABLE)
                return errmsg_set(err, -EINVAL, "line %u: host must be a table of [host.\"URL\"] tables", hosts->line);
        for (size_t i = 0; hosts && i < hosts->n_keys; i++) {
                const TomlValue *t = hosts->values[i];
                if (t->type != TOML_TABLE)
                        return errmsg_set(err, -EINVAL, "line %u: host.\"%s\" must be a table", t->line, hosts->keys[i]);
                bool override;
                r = bool_key(t, "override_path", &override, err);
                if (r < 0)
                        return r;
                FetchEndpoint *e = hosts_add(h);
                if (!e)
                        return -ENOMEM;
                e->mirror = true;
                e->caps = FETCH_CAP_PULL | FETCH_CAP_RESOLVE;
                r = endpoint_set_url(e, hosts->keys[i], override, err);
                if (r >= 0)
                        r = endpoint_apply(e, t, base_dir, err);
                if (r < 0)
                        return errmsg_prefix(err, r, "host \"%s\"", hosts->keys[i]);
        }

        /* the server: the domain's own registry, last */
        const TomlValue *server = toml_table_get(root, "server");
        if (server && (server->type != TOML_STRING || server->len == 0))
                return errmsg_set(err, -EINVAL, "line %u: server must be a URL string", server->line);
        FetchEndpoint *e = hosts_add(h);
        if (!e)
                return -ENOMEM;
        if (server) {
                bool override;
                r = bool_key(root, "override_path", &override, err);
                if (r < 0)
                        return r;
                r = endpoint_set_url(e, server->str, override, err);
                if (r < 0)
                        return errmsg_prefix(err, r, "server");
                e->caps = FETCH_CAP_PULL | FETCH_CAP_RESOLVE | FETCH_CAP_PUSH;
        } else {
                r = endpoint_default(e, domain, err);
                if (r < 0)
                        return r;
        }
        r = endpoint_apply(e, root, base_dir, err);
        if (r < 0)
                return errmsg_prefix(err, r, "server");
        /* with a CA or skip_verify said explicitly, https is meant */
        if (e->n_ca > 0 || toml_table_get(root, "skip_verify")) {
                r = endpoint_want_tls(e);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(h);
        return 0;
}

static int file_read(const char *path, char **ret, size_t *ret_len, ErrMsg *err) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return errmsg_set(err, -errno, "%s: cannot open", path);
        struct stat st;
        if (fstat(fd, &st) < 0)
                return errmsg_set(err, -errno, "%s: cannot stat", path);
        if (!S_ISREG(st.st_mode))
                return errmsg_set(err, -EINVAL, "%s is not a regular file", path);
        if (st.st_size > TOML_MAX_SIZE)
                return errmsg_set(err, -EFBIG, "%s is larger than %u bytes", path, TOML_MAX_SIZE);
        _cleanup_free_ char *buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        size_t got = 0;
        while (got < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t) st.st_size - got);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errmsg_set(err, -errno, "%s: read failed", path);
                }
                if (n == 0)
                        break;
                got += (size_t) n;
        }
        buf[got] = 0;
        *ret_len = got;
        *ret = TAKE_PTR(buf);
        return 0;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Docker's certs.d layout: the DIR/DOMAIN/NAME.crt files are CA certificates. */
static int legacy_certs(FetchEndpoint *e, const char *dir) {
        DIR *d = opendir(dir);
        if (!d)
                return -errno;
        int r = 0;
        struct dirent *de;
        size_t first = e->n_ca;
        while ((de = readdir(d))) {
                size_t n = strlen(de->d_name);
                if (n <= 4 || strcmp(de->d_name + n - 4, ".crt") != 0)
                        continue;
                char *p;
                if (asprintf(&p, "%s/%s", dir, de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = strv_push(&e->ca, &e->n_ca, p);
                if (r < 0)
                        break;
        }
        closedir(d);
        if (e->n_ca > first)
                qsort(e->ca + first, e->n_ca - first, sizeof(char *), cmp_str);
        return r;
}

int fetch_hosts_load(const char *dir, const char *domain, FetchHosts **ret, ErrMsg *err) {
        if (!dir)
                dir = FETCH_HOSTS_DIR_DEFAULT;
        if (!*domain || strchr(domain, '/') || strcmp(domain, ".") == 0 || strcmp(domain, "..") == 0)
                return errmsg_set(err, -EINVAL, "\"%s\" is not a registry host", domain);

        _cleanup_free_ char *host_dir = NULL;
        const char *names[] = { domain, "_default" };
        struct stat st;
        for (size_t i = 0; i < ELEMENTSOF(names) && !host_dir; i++) {
                char *p;
                if (asprintf(&p, "%s/%s", dir, names[i]) < 0)
                        return -ENOMEM;
                if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                        host_dir = p;
                        break;
                }
                int e = errno;
                free(p);
                if (e != ENOENT && e != ENOTDIR && e != 0)
                        return errmsg_set(err, -e, "%s/%s: cannot stat", dir, names[i]);
        }
        if (!host_dir)
                return fetch_hosts_default(domain, ret, err);

        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/hosts.toml", host_dir) < 0)
                return -ENOMEM;
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = file_read(path, &text, &len, err);
        if (r == -ENOENT) {
                _cleanup_(fetch_hosts_freep) FetchHosts *h = NULL;
                r = fetch_hosts_default(domain, &h, err);
                if (r < 0)
                        return r;
                r = legacy_certs(&h->endpoints[0], host_dir);
                if (r < 0)
                        return errmsg_set(err, r, "%s: cannot list certificates", host_dir);
                if (h->endpoints[0].n_ca > 0) {
                        r = endpoint_want_tls(&h->endpoints[0]);
                        if (r < 0)
                                return r;
                }
                h->source = TAKE_PTR(host_dir);
                *ret = TAKE_PTR(h);
                return 0;
        }
        if (r < 0)
                return r;
        FetchHosts *h;
        r = fetch_hosts_parse(text, len, domain, host_dir, &h, err);
        if (r < 0)
                return errmsg_prefix(err, r, "%s", path);
        h->source = TAKE_PTR(path);
        *ret = h;
        return 0;
}
