/* Tests of worker/fetch/hosts: containerd's hosts directory (DIR/HOST/
 * hosts.toml, _default, the old certs.d layout), the defaults without one
 * (docker.io's API host, plain http first for local registries, with
 * https to fall back on), and
 * every hosts.toml key: server, [host."URL"], capabilities, skip_verify,
 * ca, override_path, header; bad files give messages naming the file,
 * line and key. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"
#include "worker/fetch/hosts.h"

static char dir[4096];

static void put(const char *host, const char *name, const char *text) {
        char p[8400];
        snprintf(p, sizeof(p), "%s/%s", dir, host);
        mkdir(p, 0755);
        if (name) {
                snprintf(p, sizeof(p), "%s/%s/%s", dir, host, name);
                FILE *f = fopen(p, "we");
                if (f) {
                        fputs(text, f);
                        fclose(f);
                }
        }
}

static FetchHosts *load_ok(const char *domain, const char *what) {
        FetchHosts *h = NULL;
        ErrMsg err = {};
        int r = fetch_hosts_load(dir, domain, &h, &err);
        if (!is_int(r, 0, "load %s: %s", domain, what))
                diag("%s", err.text);
        return h;
}

static void parse_bad(const char *text, int want, const char *msg) {
        FetchHosts *h = (FetchHosts *) 0x1;
        ErrMsg err = {};
        int r = fetch_hosts_parse(text, strlen(text), "r.io", "/base", &h, &err);
        is_int(r, want, "refuse: %s", msg);
        has_str(err.text, msg, "  message");
        ok(h == (FetchHosts *) 0x1, "  *ret untouched");
}

int main(void) {
        if (tmpdir_make(dir) < 0)
                return 1;

        FetchHosts *h = load_ok("r.io", "no directory");
        is_int(h->n_endpoints, 1, "one endpoint");
        is_str(h->endpoints[0].scheme, "https", "  https");
        is_str(h->endpoints[0].host, "r.io", "  the domain");
        is_str(h->endpoints[0].path, "/v2", "  /v2");
        is_int(h->endpoints[0].caps, FETCH_CAP_PULL | FETCH_CAP_RESOLVE | FETCH_CAP_PUSH, "  every capability");
        ok(!h->endpoints[0].mirror && !h->endpoints[0].scheme_fallback && !h->endpoints[0].skip_verify,
           "  not a mirror, no scheme fallback, verified");
        is_str(h->source, NULL, "  no source file");
        fetch_hosts_free(h);

        h = load_ok("docker.io", "docker.io default");
        is_str(h->endpoints[0].host, "registry-1.docker.io", "  docker.io API host");
        fetch_hosts_free(h);

        h = load_ok("localhost:5000", "local default");
        is_str(h->endpoints[0].scheme, "http", "  local: plain http first, as containerd and stargz-snapshotter");
        is_str(h->endpoints[0].host, "localhost:5000", "  local: the domain");
        ok(h->endpoints[0].scheme_fallback && h->endpoints[0].skip_verify,
           "  local: https to fall back on, without verification");
        fetch_hosts_free(h);
        h = load_ok("127.0.0.1:5000", "loopback default");
        is_str(h->endpoints[0].scheme, "http", "  127.0.0.1: plain http");
        ok(h->endpoints[0].scheme_fallback, "  127.0.0.1: scheme fallback");
        fetch_hosts_free(h);
        h = load_ok("[::1]:5000", "IPv6 loopback default");
        is_str(h->endpoints[0].scheme, "http", "  [::1]: plain http");
        fetch_hosts_free(h);
        h = load_ok("127.0.0.1.evil.com", "a name that only starts like a loopback address");
        is_str(h->endpoints[0].scheme, "https", "  https");
        ok(!h->endpoints[0].scheme_fallback && !h->endpoints[0].skip_verify, "  no fallback, verified");
        fetch_hosts_free(h);

        put("r.io", "hosts.toml",
            "server = \"https://r.io\"\n"
            "[host.\"http://127.0.0.1:5001\"]\n"
            "  capabilities = [\"pull\"]\n"
            "  skip_verify = true\n"
            "[host.\"https://m.example/prefix/\"]\n"
            "  capabilities = [\"pull\", \"resolve\"]\n"
            "  ca = [\"m.pem\", \"/etc/abs.pem\"]\n"
            "  [host.\"https://m.example/prefix/\".header]\n"
            "    X-Mirror = \"yes\"\n"
            "    X-Multi = [\"a\", \"b\"]\n"
            "[host.\"https://o.example/custom/api\"]\n"
            "  override_path = true\n"
            "  ca = \"single.pem\"\n");
        h = load_ok("r.io", "hosts.toml with mirrors");
        if (h) {
                is_int(h->n_endpoints, 4, "three mirrors and the server");
                const FetchEndpoint *e = h->endpoints;
                is_str(e[0].scheme, "http", "mirror 1: http");
                is_str(e[0].host, "127.0.0.1:5001", "mirror 1: host and port");
                is_str(e[0].path, "/v2", "mirror 1: /v2");
                is_int(e[0].caps, FETCH_CAP_PULL, "mirror 1: pull only");
                ok(e[0].mirror && e[0].skip_verify, "mirror 1: mirror, skip_verify");
                is_str(e[1].path, "/prefix/v2", "mirror 2: path gets /v2");
                is_int(e[1].caps, FETCH_CAP_PULL | FETCH_CAP_RESOLVE, "mirror 2: pull and resolve");
                is_int(e[1].n_ca, 2, "mirror 2: two CAs");
                char want[4200];
                snprintf(want, sizeof(want), "%s/r.io/m.pem", dir);
                is_str(e[1].ca[0], want, "mirror 2: relative CA is under the host directory");
                is_str(e[1].ca[1], "/etc/abs.pem", "mirror 2: absolute CA as is");
                is_int(e[1].n_headers, 3, "mirror 2: three header lines");
                is_str(e[1].headers[0], "X-Mirror: yes", "mirror 2: header");
                is_str(e[1].headers[2], "X-Multi: b", "mirror 2: repeated header");
                is_str(e[2].path, "/custom/api", "mirror 3: override_path keeps the path");
                is_int(e[2].n_ca, 1, "mirror 3: ca as a string");
                is_str(e[3].host, "r.io", "server last");
                ok(!e[3].mirror, "server is not a mirror");
                is_int(e[3].caps, FETCH_CAP_PULL | FETCH_CAP_RESOLVE | FETCH_CAP_PUSH, "server: every capability");
                has_str(h->source, "r.io/hosts.toml", "source names the file");
        }
        fetch_hosts_free(h);

        put("_default", "hosts.toml", "[host.\"https://mirror.local\"]\n");
        h = load_ok("other.io", "_default");
        if (h) {
                is_int(h->n_endpoints, 2, "_default mirror and the default server");
                is_str(h->endpoints[0].host, "mirror.local", "  mirror from _default");
                is_str(h->endpoints[1].host, "other.io", "  default server for the domain");
        }
        fetch_hosts_free(h);

        put("legacy.io", NULL, NULL);
        put("legacy.io", "b.crt", "x");
        put("legacy.io", "a.crt", "x");
        put("legacy.io", "client.cert", "x");
        h = load_ok("legacy.io", "certs.d layout");
        if (h) {
                is_int(h->endpoints[0].n_ca, 2, "  *.crt files are CAs");
                has_str(h->endpoints[0].ca[0], "legacy.io/a.crt", "  sorted");
        }
        fetch_hosts_free(h);

        put("localhost:5000", "hosts.toml", "server = \"https://localhost:5000\"\nca = \"x.pem\"\n");
        h = load_ok("localhost:5000", "local with a CA");
        ok(h && !h->endpoints[0].scheme_fallback, "  a CA means https only");
        fetch_hosts_free(h);

        /* an explicit scheme is never second-guessed */
        put("127.0.0.1:5001", "hosts.toml", "server = \"https://127.0.0.1:5001\"\n");
        h = load_ok("127.0.0.1:5001", "local server said to be https");
        if (h) {
                is_str(h->endpoints[0].scheme, "https", "  https");
                ok(!h->endpoints[0].scheme_fallback && !h->endpoints[0].skip_verify, "  only, verified");
        }
        fetch_hosts_free(h);
        put("127.0.0.1:5002", "hosts.toml", "server = \"http://127.0.0.1:5002\"\n");
        h = load_ok("127.0.0.1:5002", "local server said to be http");
        ok(h && strcmp(h->endpoints[0].scheme, "http") == 0 && !h->endpoints[0].scheme_fallback, "  http only");
        fetch_hosts_free(h);
        /* no server in hosts.toml: the default's scheme, unless TLS is meant */
        put("127.0.0.1:5003", "hosts.toml", "[host.\"http://127.0.0.1:6000\"]\n");
        h = load_ok("127.0.0.1:5003", "local, a mirror and no server");
        if (h) {
                is_int(h->n_endpoints, 2, "  the mirror and the default server");
                is_str(h->endpoints[1].scheme, "http", "  server: plain http first");
                ok(h->endpoints[1].scheme_fallback, "  server: https to fall back on");
                ok(!h->endpoints[0].scheme_fallback, "  mirror: its own scheme only");
        }
        fetch_hosts_free(h);
        put("127.0.0.1:5004", "hosts.toml", "skip_verify = false\n");
        h = load_ok("127.0.0.1:5004", "local, no server, skip_verify said");
        if (h) {
                is_str(h->endpoints[0].scheme, "https", "  https is meant");
                ok(!h->endpoints[0].scheme_fallback && !h->endpoints[0].skip_verify, "  only, verified");
        }
        fetch_hosts_free(h);
        put("127.0.0.1:5005", NULL, NULL);
        put("127.0.0.1:5005", "ca.crt", "x");
        h = load_ok("127.0.0.1:5005", "local, certs.d layout with a CA");
        if (h) {
                is_str(h->endpoints[0].scheme, "https", "  a CA means https");
                ok(!h->endpoints[0].scheme_fallback, "  only");
        }
        fetch_hosts_free(h);
        put("127.0.0.1:5006", NULL, NULL);
        h = load_ok("127.0.0.1:5006", "local, empty certs.d directory");
        ok(h && strcmp(h->endpoints[0].scheme, "http") == 0 && h->endpoints[0].scheme_fallback,
           "  plain http first, https to fall back on");
        fetch_hosts_free(h);

        put("bad.io", "hosts.toml", "server = \"https://bad.io\"\n[host.\"https://m\"]\ncapabilities = [\"fly\"]\n");
        ErrMsg err = {};
        is_int(fetch_hosts_load(dir, "bad.io", &h, &err), -EINVAL, "a bad file is an error");
        has_str(err.text, "bad.io/hosts.toml: host \"https://m\": line 3: unknown capability \"fly\"",
                "  message names the file, host, line and value");
        put("syntax.io", "hosts.toml", "server = \n");
        is_int(fetch_hosts_load(dir, "syntax.io", &h, &err), -EINVAL, "a TOML syntax error");
        has_str(err.text, "syntax.io/hosts.toml: line 1, column 10: expected a value", "  message");
        is_int(fetch_hosts_load(dir, "../etc", &h, &err), -EINVAL, "a domain with a slash is refused");
        is_int(fetch_hosts_load(dir, "..", &h, &err), -EINVAL, "\"..\" is refused");

        parse_bad("server = 1\n", -EINVAL, "server must be a URL string");
        parse_bad("server = \"ftp://x\"\n", -EINVAL, "only http and https");
        parse_bad("server = \"r.io\"\n", -EINVAL, "is not a URL");
        parse_bad("server = \"https://\"\n", -EINVAL, "has no host");
        parse_bad("server = \"https://u:p@r.io\"\n", -EINVAL, "credentials in URLs are not supported");
        parse_bad("server = \"https://r.io/v2?x=1\"\n", -EINVAL, "query strings");
        parse_bad("server = \"https://r.io/../x\"\n", -EINVAL, "\"..\"");
        parse_bad("skip_verify = \"yes\"\n", -EINVAL, "skip_verify must be true or false");
        parse_bad("[host.\"https://m\"]\nskip_verify = 1\n", -EINVAL, "host \"https://m\": line 2: skip_verify");
        parse_bad("[host.\"https://m\"]\nca = 5\n", -EINVAL, "ca must be a path or an array of paths");
        parse_bad("[host.\"https://m\"]\nca = [\"\"]\n", -EINVAL, "ca must be a path");
        parse_bad("[host.\"https://m\"]\ncapabilities = \"pull\"\n", -EINVAL, "capabilities must be an array");
        parse_bad("[host.\"https://m\"]\nclient = \"c.pem\"\n", -EOPNOTSUPP, "client certificates");
        parse_bad("[host.\"https://m\"]\noverride_path = \"x\"\n", -EINVAL, "override_path must be true or false");
        parse_bad("[host.\"https://m\".header]\n\"bad name\" = \"x\"\n", -EINVAL, "not a valid header name");
        parse_bad("[header]\nAuthorization = \"x\"\n", -EINVAL, "cannot be set here");
        parse_bad("[header]\nx = \"a\\nb\"\n", -EINVAL, "line break");
        parse_bad("[header]\nx = 1\n", -EINVAL, "must be a string or an array of strings");
        parse_bad("host = 1\n", -EINVAL, "host must be a table");
        parse_bad("[host]\n\"https://m\" = 1\n", -EINVAL, "must be a table");

        /* unknown keys are ignored, as containerd ignores them */
        h = NULL;
        const char *unknown = "dial_timeout = \"5s\"\n[host.\"https://m\"]\nnew_key = true\n";
        is_int(fetch_hosts_parse(unknown, strlen(unknown), "r.io", NULL, &h, &err), 0, "unknown keys are ignored");
        fetch_hosts_free(h);

        tmpdir_remove(dir);
        return done();
}
