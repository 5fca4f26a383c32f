/* Tests of worker/fetch/reference: image and layer references the way
 * containerd reads them (default domain, library/ prefix, ports, IPv6,
 * tags and digests), and every way one can be malformed. */
#include <errno.h>
#include <string.h>

#include "tests/unit/tap.h"
#include "worker/fetch/reference.h"

#define D64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void good(const char *s, const char *domain, const char *repo, const char *tag, const char *digest) {
        FetchRef *r = NULL;
        ErrMsg err = {};
        int rc = fetch_ref_parse(s, &r, &err);
        if (!is_int(rc, 0, "parse \"%s\"", s)) {
                diag("%s", err.text);
                return;
        }
        is_str(r->domain, domain, "  domain");
        is_str(r->repo, repo, "  repo");
        is_str(r->tag, tag, "  tag");
        is_str(r->digest, digest, "  digest");
        fetch_ref_free(r);
}

static void bad(const char *s, int want, const char *msg) {
        FetchRef *r = (FetchRef *) 0x1;
        ErrMsg err = {};
        int rc = fetch_ref_parse(s, &r, &err);
        is_int(rc, want, "refuse \"%s\"", s);
        has_str(err.text, msg, "  message says \"%s\"", msg);
        ok(r == (FetchRef *) 0x1, "  *ret untouched");
}

int main(void) {
        good("busybox", "docker.io", "library/busybox", "latest", NULL);
        good("busybox:1.36", "docker.io", "library/busybox", "1.36", NULL);
        good("docker.io/busybox", "docker.io", "library/busybox", "latest", NULL);
        good("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", NULL);
        good("user/app", "docker.io", "user/app", "latest", NULL);
        good("ghcr.io/a/b/c:v1", "ghcr.io", "a/b/c", "v1", NULL);
        good("localhost/app", "localhost", "app", "latest", NULL);
        good("localhost:5000/app:tag", "localhost:5000", "app", "tag", NULL);
        good("127.0.0.1:5000/holdfast/app:v1", "127.0.0.1:5000", "holdfast/app", "v1", NULL);
        good("[::1]:5000/app", "[::1]:5000", "app", "latest", NULL);
        good("Registry/app", "Registry", "app", "latest", NULL); /* upper case: a domain */
        good("app@sha256:" D64, "docker.io", "library/app", NULL, "sha256:" D64);
        good("r.io/app:v2@sha256:" D64, "r.io", "app", "v2", "sha256:" D64);
        good("r.io/a.b_c__d-e--f/x", "r.io", "a.b_c__d-e--f/x", "latest", NULL);
        good("r.io/app:V_1.2-rc", "r.io", "app", "V_1.2-rc", NULL);

        bad("", -EINVAL, "empty");
        bad("r.io/App", -EINVAL, "\"App\" is invalid");
        bad("r.io/a//b", -EINVAL, "empty path component");
        bad("r.io/a__-b", -EINVAL, "is invalid");
        bad("r.io/a.", -EINVAL, "is invalid");
        bad("r.io/app:", -EINVAL, "empty tag");
        bad("r.io/app:.x", -EINVAL, "tag \".x\" is invalid");
        bad("r.io/app@sha256:abc", -EINVAL, "64 lower-case hex");
        bad("r.io/app@sha256:" D64 "@sha256:" D64, -EINVAL, "more than one '@'");
        bad("r.io/app@sha512:abcd", -EOPNOTSUPP, "not supported");
        bad("r.io/app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", -EINVAL, "hex");
        bad("https://r.io/app", -EINVAL, "URL scheme");
        bad("r.io:99999/app", -EINVAL, "port out of range");
        bad("r.io:x/app", -EINVAL, "bad port");
        bad("-r.io/app", -EINVAL, "not a valid host name");
        bad("r .io/app", -EINVAL, "space");
        bad("[::1/app", -EINVAL, "IPv6");
        bad("r.io/", -EINVAL, "empty repository");

        char longtag[200];
        memset(longtag, 'a', sizeof(longtag));
        memcpy(longtag, "r.io/x:", 7);
        longtag[7 + 129] = 0;
        bad(longtag, -EINVAL, "longer than 128");

        char longname[300] = "r.io/";
        memset(longname + 5, 'a', 260);
        longname[265] = 0;
        bad(longname, -EINVAL, "longer than 255");

        /* layer references */
        FetchRef *r;
        ErrMsg err = {};
        is_int(fetch_ref_parse_layer("127.0.0.1:5000/app@sha256:" D64, &r, &err), 0, "layer reference");
        is_str(r->digest, "sha256:" D64, "  digest");
        is_str(r->tag, NULL, "  no default tag for a layer");
        fetch_ref_free(r);
        is_int(fetch_ref_parse_layer("r.io/app", &r, &err), -EINVAL, "layer reference needs a digest");
        has_str(err.text, "no @sha256: digest", "  message");
        is_int(fetch_ref_parse_layer("r.io/app:v1@sha256:" D64, &r, &err), -EINVAL, "layer reference with a tag");
        has_str(err.text, "must not have a tag", "  message");

        is_str(fetch_ref_api_host("docker.io"), "registry-1.docker.io", "docker.io API host");
        is_str(fetch_ref_api_host("r.io:5000"), "r.io:5000", "other API host");
        ok(fetch_host_is_local("localhost"), "localhost is local");
        ok(fetch_host_is_local("localhost:5000"), "localhost:5000 is local");
        ok(fetch_host_is_local("127.0.0.1:5000"), "127.0.0.1:5000 is local");
        ok(fetch_host_is_local("127.1.2.3"), "127/8 is local");
        ok(fetch_host_is_local("[::1]:5000"), "[::1]:5000 is local");
        ok(!fetch_host_is_local("127.0.0.1.evil.com"), "127.0.0.1.evil.com is not local");
        ok(!fetch_host_is_local("r.io"), "r.io is not local");
        ok(!fetch_host_is_local("localhost.evil.com"), "localhost.evil.com is not local");
        ok(fetch_digest_is_valid("sha256:" D64), "valid digest");
        ok(!fetch_digest_is_valid("sha256:" D64 "0"), "too long digest");
        ok(!fetch_digest_is_valid(NULL), "NULL digest");
        return done();
}
