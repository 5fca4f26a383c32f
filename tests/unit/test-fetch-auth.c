/* Tests of worker/fetch/auth: WWW-Authenticate challenges (several per
 * header, quoted strings with escapes, token68, odd spacing), the Docker
 * config (auth, username/password, identitytoken, key normalisation,
 * docker.io aliases), token answers, base64, and the cache's Basic path;
 * no message may ever contain a secret. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/helpers.h"
#include "tests/unit/tap.h"
#include "worker/fetch/auth.h"

static void challenge_ok(const char *h, size_t n, const char *what) {
        FetchChallenges c = {};
        ErrMsg err = {};
        int r = fetch_challenges_parse(h, &c, &err);
        if (!is_int(r, 0, "parse %s", what))
                diag("%s", err.text);
        is_int(c.n, n, "  %zu challenge(s)", n);
        fetch_challenges_done(&c);
}

static void challenge_bad(const char *h, const char *msg) {
        FetchChallenges c = {};
        ErrMsg err = {};
        is_int(fetch_challenges_parse(h, &c, &err), -EINVAL, "refuse \"%s\"", h);
        has_str(err.text, msg, "  message");
        ok(c.n == 0 && !c.v, "  nothing returned");
}

static void test_challenges(void) {
        FetchChallenges c = {};
        ErrMsg err = {};
        is_int(fetch_challenges_parse("Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
                                      "scope=\"repository:library/busybox:pull\"",
                                      &c, &err),
               0, "Docker Hub challenge");
        is_int(c.n, 1, "  one challenge");
        is_int(c.v[0].scheme, FETCH_AUTH_BEARER, "  Bearer");
        is_str(c.v[0].realm, "https://auth.docker.io/token", "  realm");
        is_str(c.v[0].service, "registry.docker.io", "  service");
        is_str(c.v[0].scope, "repository:library/busybox:pull", "  scope");
        fetch_challenges_done(&c);

        is_int(fetch_challenges_parse("Basic realm=\"a \\\"quoted\\\" \\\\ realm\", Bearer REALM = \"http://t/x\" , "
                                      "Service=svc,foo=\"bar, baz\"",
                                      &c, &err),
               0, "two challenges, escapes, case and spaces");
        is_int(c.n, 2, "  two challenges");
        is_int(c.v[0].scheme, FETCH_AUTH_BASIC, "  first Basic");
        is_str(c.v[0].realm, "a \"quoted\" \\ realm", "  quoted-pairs unescaped");
        is_int(c.v[1].scheme, FETCH_AUTH_BEARER, "  then Bearer");
        is_str(c.v[1].realm, "http://t/x", "  parameter names are case-insensitive");
        is_str(c.v[1].service, "svc", "  token value");
        is_str(c.v[1].scope, NULL, "  no scope");
        fetch_challenges_done(&c);

        is_int(fetch_challenges_parse("Negotiate abc123==, basic realm=r", &c, &err), 0, "token68 then Basic");
        is_int(c.n, 2, "  two challenges");
        is_int(c.v[0].scheme, FETCH_AUTH_OTHER, "  Negotiate is other");
        is_int(c.v[1].scheme, FETCH_AUTH_BASIC, "  basic (lower case)");
        fetch_challenges_done(&c);

        challenge_ok("Bearer realm=http://127.0.0.1:1/token,service=x", 1, "unquoted URL realm");
        challenge_ok("Basic", 1, "a bare scheme");
        challenge_ok("Basic, Bearer", 2, "two bare schemes");
        challenge_ok(" ,, Basic realm=\"x\" ,, ", 1, "empty list elements");
        challenge_bad("", "no challenge");
        challenge_bad("Bearer realm=\"unterminated", "unterminated quoted string");
        challenge_bad("Bearer realm=\"ctl\x01\"", "control character");
        challenge_bad("Bearer realm=\"x\", service=", "parameter without a value");
        challenge_bad("Bearer realm=\"x\" service=\"y\"", "expected ','");
        challenge_bad("=x", "expected an auth scheme");
        challenge_bad("Bearer(x)", "bad character after scheme");
}

static void test_base64(void) {
        char *out;
        size_t n;
        is_int(fetch_base64_decode("dXNlcjpwYXNz", 12, &out, &n), 0, "decode");
        is_str(out, "user:pass", "  user:pass");
        free(out);
        is_int(fetch_base64_decode("YQ==", 4, &out, &n), 0, "padded");
        is_int(n, 1, "  one byte");
        free(out);
        is_int(fetch_base64_decode("YQ", 2, &out, &n), 0, "unpadded");
        free(out);
        is_int(fetch_base64_decode("YR==", 4, &out, &n), -EINVAL, "non-canonical trailing bits");
        is_int(fetch_base64_decode("Y", 1, &out, &n), -EINVAL, "one character");
        is_int(fetch_base64_decode("a*b=", 4, &out, &n), -EINVAL, "bad character");
        is_int(fetch_base64_decode("", 0, &out, &n), 0, "empty");
        free(out);
}

static void test_config(void) {
        const char *json =
                "{\"auths\": {"
                "  \"https://index.docker.io/v1/\": {\"auth\": \"aHViOmh1Yi1wdw==\"},"
                "  \"127.0.0.1:5000\": {\"username\": \"u\", \"password\": \"p:w\"},"
                "  \"http://r.io/some/path\": {\"identitytoken\": \"refresh-me\"},"
                "  \"helper.io\": {},"
                "  \"colon.io\": {\"auth\": \"dTpwOnc=\"}"
                "}, \"credsStore\": \"desktop\", \"credHelpers\": {\"x.io\": \"ecr\"}}";
        FetchDockerConfig c = {};
        ErrMsg err = {};
        is_int(fetch_docker_config_parse(json, strlen(json), &c, &err), 0, "parse a Docker config");
        is_int(c.n, 4, "  four usable entries (a helper's empty entry skipped)");
        const FetchCred *cr = fetch_docker_config_find(&c, "docker.io");
        ok(cr && strcmp(cr->username, "hub") == 0 && strcmp(cr->password, "hub-pw") == 0,
           "  docker.io from https://index.docker.io/v1/");
        ok(fetch_docker_config_find(&c, "registry-1.docker.io") == cr, "  registry-1.docker.io is docker.io");
        cr = fetch_docker_config_find(&c, "127.0.0.1:5000");
        ok(cr && strcmp(cr->password, "p:w") == 0, "  username/password fields");
        cr = fetch_docker_config_find(&c, "r.io");
        ok(cr && cr->identity_token && strcmp(cr->identity_token, "refresh-me") == 0 && !cr->username,
           "  identity token, key with scheme and path");
        cr = fetch_docker_config_find(&c, "colon.io");
        ok(cr && strcmp(cr->username, "u") == 0 && strcmp(cr->password, "p:w") == 0,
           "  auth splits at the first colon");
        ok(!fetch_docker_config_find(&c, "helper.io"), "  no credentials for a helper's entry");
        ok(!fetch_docker_config_find(&c, "127.0.0.1:5001"), "  the port matters");
        fetch_docker_config_done(&c);

        const char *badauth = "{\"auths\": {\"r.io\": {\"auth\": \"c2VjcmV0LXdpdGhvdXQtY29sb24=\"}}}";
        is_int(fetch_docker_config_parse(badauth, strlen(badauth), &c, &err), -EINVAL, "auth without a colon");
        has_str(err.text, "\"auth\" of \"r.io\" is not base64 of user:password", "  message names the registry");
        ok(!strstr(err.text, "secret") && !strstr(err.text, "c2VjcmV0"), "  and not the secret");
        const char *bad64 = "{\"auths\": {\"r.io\": {\"auth\": \"!!!\"}}}";
        is_int(fetch_docker_config_parse(bad64, strlen(bad64), &c, &err), -EINVAL, "auth not base64");
        is_int(fetch_docker_config_parse("{\"auths\": [1]}", 14, &c, &err), -EINVAL, "auths not an object");
        has_str(err.text, "\"auths\" is not an object", "  message");
        is_int(fetch_docker_config_parse("{\"auths\": {\"r.io\": 1}}", 22, &c, &err), -EINVAL, "entry not an object");
        is_int(fetch_docker_config_parse("{nope", 5, &c, &err), -EINVAL, "invalid JSON");
        has_str(err.text, "invalid JSON", "  message");
        is_int(fetch_docker_config_parse("[]", 2, &c, &err), -EINVAL, "not an object");
        is_int(fetch_docker_config_parse("{}", 2, &c, &err), 0, "no auths");
        is_int(c.n, 0, "  empty");

        /* files */
        char dir[4096], path[4200];
        if (tmpdir_make(dir) < 0)
                return;
        snprintf(path, sizeof(path), "%s/config.json", dir);
        int fd = file_write(dir, "config.json", json, strlen(json));
        close(fd);
        is_int(fetch_docker_config_load(path, &c, &err), 0, "load a file");
        is_int(c.n, 4, "  entries");
        fetch_docker_config_done(&c);
        setenv("DOCKER_CONFIG", dir, 1);
        is_int(fetch_docker_config_load(NULL, &c, &err), 0, "load from $DOCKER_CONFIG");
        is_int(c.n, 4, "  entries");
        fetch_docker_config_done(&c);
        snprintf(path, sizeof(path), "%s/missing.json", dir);
        is_int(fetch_docker_config_load(path, &c, &err), 0, "a missing file is an empty config");
        is_int(c.n, 0, "  empty");
        fd = file_write(dir, "bad.json", "{", 1);
        close(fd);
        snprintf(path, sizeof(path), "%s/bad.json", dir);
        is_int(fetch_docker_config_load(path, &c, &err), -EINVAL, "a broken file");
        has_str(err.text, "bad.json: Docker config: invalid JSON", "  message names the file");
        unsetenv("DOCKER_CONFIG");
        tmpdir_remove(dir);
}

static void test_tokens(void) {
        char *t;
        uint64_t exp;
        ErrMsg err = {};
        const char *a = "{\"token\": \"abc\", \"access_token\": \"other\", \"expires_in\": 300, \"issued_at\": \"x\"}";
        is_int(fetch_token_parse(a, strlen(a), &t, &exp, &err), 0, "token answer");
        is_str(t, "abc", "  token wins over access_token");
        is_int(exp, 300, "  expires_in");
        free(t);
        const char *b = "{\"access_token\": \"oauth\"}";
        is_int(fetch_token_parse(b, strlen(b), &t, &exp, &err), 0, "OAuth2 answer");
        is_str(t, "oauth", "  access_token");
        is_int(exp, 60, "  expires_in defaults to 60");
        free(t);
        const char *c = "{\"token\": \"x\", \"expires_in\": 2.5}";
        is_int(fetch_token_parse(c, strlen(c), &t, &exp, &err), 0, "fractional expires_in");
        is_int(exp, 2, "  truncated");
        free(t);
        const char *d = "{\"token\": \"x\", \"expires_in\": 0}";
        is_int(fetch_token_parse(d, strlen(d), &t, &exp, &err), 0, "zero expires_in");
        is_int(exp, 60, "  means the default");
        free(t);
        const char *e = "{\"token\": \"x\", \"expires_in\": \"soon\"}";
        is_int(fetch_token_parse(e, strlen(e), &t, &exp, &err), -EINVAL, "expires_in not a number");
        const char *f = "{\"token\": \"\"}";
        is_int(fetch_token_parse(f, strlen(f), &t, &exp, &err), -EINVAL, "empty token");
        has_str(err.text, "neither \"token\" nor \"access_token\"", "  message");
        const char *g = "{\"token\": \"bad token\\r\\nX: y\"}";
        is_int(fetch_token_parse(g, strlen(g), &t, &exp, &err), -EINVAL, "a token that would split the header");
        ok(!strstr(err.text, "bad token"), "  the message does not quote it");
        is_int(fetch_token_parse("[1]", 3, &t, &exp, &err), -EINVAL, "not an object");
        is_int(fetch_token_parse("{\"token\"", 8, &t, &exp, &err), -EINVAL, "truncated JSON");
}

static void test_cache(void) {
        const char *json = "{\"auths\": {\"r.io\": {\"username\": \"u\", \"password\": \"sekrit\"}}}";
        FetchDockerConfig c = {};
        ErrMsg err = {};
        fetch_docker_config_parse(json, strlen(json), &c, &err);
        FetchAuth *a;
        is_int(fetch_auth_new(&c, &a), 0, "auth cache");
        ok(c.n == 0 && !c.v, "  took the config");
        char *v = (char *) 0x1;
        is_int(fetch_auth_header(a, "r.io", "app", &v), 0, "nothing cached yet");
        ok(v == NULL, "  no Authorization");
        is_int(fetch_auth_challenge(a, NULL, "r.io", "app", "Basic realm=\"r\"", 0, &v, &err), 0, "Basic challenge");
        is_str(v, "Basic dTpzZWtyaXQ=", "  Basic user:password");
        free(v);
        is_int(fetch_auth_header(a, "r.io", "other/repo", &v), 0, "after a Basic challenge");
        is_str(v, "Basic dTpzZWtyaXQ=", "  every repository of the host gets Basic from the start");
        free(v);
        is_int(fetch_auth_challenge(a, NULL, "s.io", "app", "Basic realm=\"r\"", 0, &v, &err), -EACCES,
               "Basic without credentials");
        has_str(err.text, "s.io asks for a user name and password", "  message");
        is_int(fetch_auth_challenge(a, NULL, "r.io", "app", "", 0, &v, &err), -EACCES, "401 without a challenge");
        has_str(err.text, "without a WWW-Authenticate", "  message");
        is_int(fetch_auth_challenge(a, NULL, "r.io", "app", "Negotiate abc", 0, &v, &err), -EACCES,
               "unsupported scheme");
        has_str(err.text, "\"Negotiate\", which is not supported", "  message");
        is_int(fetch_auth_challenge(a, NULL, "r.io", "app", "Bearer service=x", 0, &v, &err), -EACCES,
               "Bearer without a realm");
        has_str(err.text, "without an http(s) realm", "  message");
        is_int(fetch_auth_challenge(a, NULL, "r.io", "app", "Bearer realm=\"ftp://x\"", 0, &v, &err), -EACCES,
               "Bearer with a non-http realm");
        ok(!strstr(err.text, "sekrit"), "  no secret in any message");
        fetch_auth_invalidate(a, "r.io", "app");
        is_int(fetch_auth_tokens_fetched(a), 0, "no tokens fetched");
        fetch_auth_free(a);
}

int main(void) {
        test_challenges();
        test_base64();
        test_config();
        test_tokens();
        test_cache();
        return done();
}
