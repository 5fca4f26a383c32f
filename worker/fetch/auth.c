/* Registry authentication (see auth.h): the WWW-Authenticate parser, the
 * Docker config reader, the token answer parser (pure, fuzzable), and
 * the token cache, whose mutex is held only to look up or store; token
 * requests run on the caller's thread through the blocking HTTP API.
 * Invariant: no secret (password, identity token, bearer token, Basic
 * value) is ever written into an ErrMsg or returned anywhere but as an
 * Authorization value. */
#include "worker/fetch/auth.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_tree.h>

#include "common/util/encode.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"

#define AUTH_CACHE_MAX 256
#define TOKEN_BODY_MAX (1u << 20)

/* ---- WWW-Authenticate ---- */

static bool is_tchar(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_token68_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("-._~+/", c));
}

static const char *skip_ows(const char *p) {
        while (*p == ' ' || *p == '\t')
                p++;
        return p;
}

static size_t token_len(const char *p) {
        size_t n = 0;
        while (is_tchar(p[n]))
                n++;
        return n;
}

void fetch_challenges_done(FetchChallenges *c) {
        for (size_t i = 0; i < c->n; i++) {
                free(c->v[i].scheme_name);
                free(c->v[i].realm);
                free(c->v[i].service);
                free(c->v[i].scope);
        }
        free(c->v);
        *c = (FetchChallenges) {};
}

/* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE */
static int parse_quoted(const char **pp, char **ret, ErrMsg *err) {
        const char *p = *pp + 1;
        _cleanup_(strbuf_done) StrBuf b = {};
        int r = strbuf_reserve(&b, 32);
        if (r < 0)
                return r;
        for (;;) {
                unsigned char c = (unsigned char) *p;
                if (c == 0)
                        return errmsg_set(err, -EINVAL, "WWW-Authenticate: unterminated quoted string");
                if (c == '"')
                        break;
                if (c == '\\') {
                        p++;
                        c = (unsigned char) *p;
                        if (c == 0)
                                return errmsg_set(err, -EINVAL, "WWW-Authenticate: unterminated quoted string");
                }
                if ((c < 0x20 && c != '\t') || c == 0x7f)
                        return errmsg_set(err, -EINVAL, "WWW-Authenticate: control character in a quoted string");
                r = strbuf_putc(&b, (char) c);
                if (r < 0)
                        return r;
                p++;
        }
        r = strbuf_putc(&b, 0);
        if (r < 0)
                return r;
        *pp = p + 1;
        *ret = strbuf_steal(&b, NULL);
        return 0;
}

/* name BWS "=" BWS ( token / quoted-string ), p on the name */
static int parse_param(const char **pp, FetchChallenge *ch, ErrMsg *err) {
        const char *p = *pp;
        size_t nlen = token_len(p);
        const char *name = p;
        p = skip_ows(p + nlen);
        if (*p != '=')
                return errmsg_set(err, -EINVAL, "WWW-Authenticate: expected '=' after parameter name");
        p = skip_ows(p + 1);
        _cleanup_free_ char *value = NULL;
        if (*p == '"') {
                int r = parse_quoted(&p, &value, err);
                if (r < 0)
                        return r;
        } else {
                size_t vlen = token_len(p);
                /* be lenient like Go's parser: a bare value may hold '/' or ':' (realm=http://x/token) */
                while (p[vlen] && p[vlen] != ',' && p[vlen] != ' ' && p[vlen] != '\t' && p[vlen] != '"' &&
                       (unsigned char) p[vlen] > 0x20 && (unsigned char) p[vlen] < 0x7f)
                        vlen++;
                if (vlen == 0)
                        return errmsg_set(err, -EINVAL, "WWW-Authenticate: parameter without a value");
                value = strndup(p, vlen);
                if (!value)
                        return -ENOMEM;
                p += vlen;
        }
        char **slot = NULL;
        if (nlen == 5 && strncasecmp(name, "realm", 5) == 0)
                slot = &ch->realm;
        else if (nlen == 7 && strncasecmp(name, "service", 7) == 0)
                slot = &ch->service;
        else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0)
                slot = &ch->scope;
        if (slot && !*slot)
                *slot = TAKE_PTR(value);
        *pp = p;
        return 0;
}

/* After a comma: does an auth-param (name "=" ...) follow, rather than
 * the next challenge's scheme? */
static bool param_follows(const char *p) {
        size_t n = token_len(p);
        if (n == 0)
                return false;
        p = skip_ows(p + n);
        return *p == '=';
}

int fetch_challenges_parse(const char *header, FetchChallenges *ret, ErrMsg *err) {
        _cleanup_(fetch_challenges_done) FetchChallenges out = {};
        const char *p = header;
        for (;;) {
                while (*p == ' ' || *p == '\t' || *p == ',')
                        p++;
                if (!*p)
                        break;
                size_t slen = token_len(p);
                if (slen == 0)
                        return errmsg_set(err, -EINVAL, "WWW-Authenticate: expected an auth scheme at \"%.20s\"", p);
                FetchChallenge *v = realloc(out.v, (out.n + 1) * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                out.v = v;
                FetchChallenge *ch = &out.v[out.n++];
                *ch = (FetchChallenge) {};
                ch->scheme_name = strndup(p, slen);
                if (!ch->scheme_name)
                        return -ENOMEM;
                if (strcasecmp(ch->scheme_name, "basic") == 0)
                        ch->scheme = FETCH_AUTH_BASIC;
                else if (strcasecmp(ch->scheme_name, "bearer") == 0)
                        ch->scheme = FETCH_AUTH_BEARER;
                else
                        ch->scheme = FETCH_AUTH_OTHER;
                p += slen;
                if (*p && *p != ' ' && *p != '\t' && *p != ',')
                        return errmsg_set(err, -EINVAL, "WWW-Authenticate: bad character after scheme \"%s\"",
                                          ch->scheme_name);
                p = skip_ows(p);
                if (!*p)
                        break;
                /* the first parameter, or a token68 */
                if (*p != ',') {
                        if (param_follows(p) && !(p[token_len(p)] == '=' && (p[token_len(p) + 1] == '=' ||
                                                                          p[token_len(p) + 1] == ',' ||
                                                                          p[token_len(p) + 1] == 0))) {
                                int r = parse_param(&p, ch, err);
                                if (r < 0)
                                        return r;
                        } else {
                                size_t n = 0;
                                while (is_token68_char(p[n]))
                                        n++;
                                if (n == 0)
                                        return errmsg_set(err, -EINVAL,
                                                          "WWW-Authenticate: unexpected '%c' after scheme \"%s\"",
                                                          *p, ch->scheme_name);
                                while (p[n] == '=')
                                        n++;
                                p += n;
                        }
                }
                /* more parameters, each after a comma */
                for (;;) {
                        p = skip_ows(p);
                        if (!*p)
                                break;
                        if (*p != ',')
                                return errmsg_set(err, -EINVAL, "WWW-Authenticate: expected ',' at \"%.20s\"", p);
                        const char *q = p;
                        while (*q == ',' || *q == ' ' || *q == '\t')
                                q++;
                        if (!param_follows(q))
                                break; /* the next challenge */
                        p = q;
                        int r = parse_param(&p, ch, err);
                        if (r < 0)
                                return r;
                }
        }
        if (out.n == 0)
                return errmsg_set(err, -EINVAL, "WWW-Authenticate: no challenge");
        *ret = out;
        out = (FetchChallenges) {};
        return 0;
}

/* ---- base64 ---- */

static int b64_value(char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int fetch_base64_decode(const char *in, size_t len, char **ret, size_t *ret_len) {
        /* padding is optional (some tools write it, some don't) */
        while (len > 0 && in[len - 1] == '=')
                len--;
        if (len % 4 == 1)
                return -EINVAL;
        _cleanup_free_ char *out = malloc(len / 4 * 3 + 3 + 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        uint32_t acc = 0;
        unsigned bits = 0;
        for (size_t i = 0; i < len; i++) {
                int v = b64_value(in[i]);
                if (v < 0)
                        return -EINVAL;
                acc = (acc << 6) | (uint32_t) v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (char) ((acc >> bits) & 0xff);
                }
        }
        /* leftover bits must be zero, or the encoding was not canonical */
        if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
                return -EINVAL;
        out[o] = 0;
        if (ret_len)
                *ret_len = o;
        *ret = TAKE_PTR(out);
        return 0;
}

/* ---- Docker config ---- */

static void cred_done(FetchCred *c) {
        free(c->registry);
        if (c->password)
                explicit_bzero(c->password, strlen(c->password));
        free(c->password);
        free(c->username);
        if (c->identity_token)
                explicit_bzero(c->identity_token, strlen(c->identity_token));
        free(c->identity_token);
        *c = (FetchCred) {};
}

void fetch_docker_config_done(FetchDockerConfig *c) {
        for (size_t i = 0; i < c->n; i++)
                cred_done(&c->v[i]);
        free(c->v);
        *c = (FetchDockerConfig) {};
}

/* Docker's ConvertToHostname plus its docker.io aliases. */
static char *registry_key_normalize(const char *key) {
        const char *p = key;
        if (strncmp(p, "http://", 7) == 0)
                p += 7;
        else if (strncmp(p, "https://", 8) == 0)
                p += 8;
        size_t n = strcspn(p, "/");
        if ((n == 15 && strncmp(p, "index.docker.io", 15) == 0) ||
            (n == 20 && strncmp(p, "registry-1.docker.io", 20) == 0))
                return strdup("docker.io");
        return strndup(p, n);
}

static void yajl_tree_freep(yajl_val *v) {
        if (*v)
                yajl_tree_free(*v);
}

static const char *obj_string(yajl_val obj, const char *key) {
        const char *path[] = { key, NULL };
        yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
        return v ? YAJL_GET_STRING(v) : NULL;
}

static int dup_nonempty(const char *s, char **ret) {
        if (!s || !*s)
                return 0;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

static int json_parse(const char *json, size_t len, yajl_val *ret, const char *what, ErrMsg *err) {
        _cleanup_free_ char *copy = strndup(json, len);
        if (!copy)
                return -ENOMEM;
        if (strlen(copy) != len)
                return errmsg_set(err, -EINVAL, "%s: NUL byte in JSON", what);
        char ebuf[256] = "";
        yajl_val root = yajl_tree_parse(copy, ebuf, sizeof(ebuf));
        if (!root) {
                /* yajl quotes the offending input; keep only its first line */
                ebuf[strcspn(ebuf, "\n")] = 0;
                return errmsg_set(err, -EINVAL, "%s: invalid JSON (%s)", what, ebuf[0] ? ebuf : "parse error");
        }
        *ret = root;
        return 0;
}

int fetch_docker_config_parse(const char *json, size_t len, FetchDockerConfig *ret, ErrMsg *err) {
        _cleanup_(yajl_tree_freep) yajl_val root = NULL;
        int r = json_parse(json, len, &root, "Docker config", err);
        if (r < 0)
                return r;
        if (!YAJL_IS_OBJECT(root))
                return errmsg_set(err, -EINVAL, "Docker config: not a JSON object");
        _cleanup_(fetch_docker_config_done) FetchDockerConfig out = {};
        const char *path[] = { "auths", NULL };
        yajl_val auths = yajl_tree_get(root, path, yajl_t_any);
        if (auths && !YAJL_IS_OBJECT(auths))
                return errmsg_set(err, -EINVAL, "Docker config: \"auths\" is not an object");
        for (size_t i = 0; auths && i < auths->u.object.len; i++) {
                const char *key = auths->u.object.keys[i];
                yajl_val e = auths->u.object.values[i];
                if (!YAJL_IS_OBJECT(e))
                        return errmsg_set(err, -EINVAL, "Docker config: auths entry \"%s\" is not an object", key);
                FetchCred c = {};
                const char *auth = obj_string(e, "auth");
                if (auth && *auth) {
                        _cleanup_free_ char *plain = NULL;
                        size_t plen;
                        r = fetch_base64_decode(auth, strlen(auth), &plain, &plen);
                        if (r == -ENOMEM)
                                return r;
                        char *colon = r < 0 ? NULL : memchr(plain, ':', plen);
                        if (!colon || strlen(plain) != plen) {
                                if (plain)
                                        explicit_bzero(plain, plen);
                                return errmsg_set(err, -EINVAL,
                                                  "Docker config: \"auth\" of \"%s\" is not base64 of user:password",
                                                  key);
                        }
                        *colon = 0;
                        c.username = strdup(plain);
                        c.password = strdup(colon + 1);
                        explicit_bzero(plain, plen);
                        if (!c.username || !c.password) {
                                cred_done(&c);
                                return -ENOMEM;
                        }
                } else {
                        r = dup_nonempty(obj_string(e, "username"), &c.username);
                        if (r >= 0)
                                r = dup_nonempty(obj_string(e, "password"), &c.password);
                        if (r < 0) {
                                cred_done(&c);
                                return r;
                        }
                }
                r = dup_nonempty(obj_string(e, "identitytoken"), &c.identity_token);
                if (r < 0) {
                        cred_done(&c);
                        return r;
                }
                if (!c.identity_token && !(c.username && c.password)) {
                        cred_done(&c); /* nothing usable (a credential helper's entry) */
                        continue;
                }
                c.registry = registry_key_normalize(key);
                FetchCred *v = c.registry ? realloc(out.v, (out.n + 1) * sizeof(*v)) : NULL;
                if (!v) {
                        cred_done(&c);
                        return -ENOMEM;
                }
                out.v = v;
                out.v[out.n++] = c;
        }
        *ret = out;
        out = (FetchDockerConfig) {};
        return 0;
}

int fetch_docker_config_load(const char *path, FetchDockerConfig *ret, ErrMsg *err) {
        _cleanup_free_ char *def = NULL;
        if (!path) {
                const char *dir = getenv("DOCKER_CONFIG");
                if (dir && *dir) {
                        if (asprintf(&def, "%s/config.json", dir) < 0)
                                return -ENOMEM;
                } else {
                        const char *home = getenv("HOME");
                        if (!home || !*home) {
                                *ret = (FetchDockerConfig) {};
                                return 0;
                        }
                        if (asprintf(&def, "%s/.docker/config.json", home) < 0)
                                return -ENOMEM;
                }
                path = def;
        }
        FILE *f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT) {
                        *ret = (FetchDockerConfig) {};
                        return 0;
                }
                return errmsg_set(err, -errno, "%s: cannot open", path);
        }
        _cleanup_(strbuf_done) StrBuf b = {};
        char buf[4096];
        size_t n;
        int r = 0;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
                if (b.len + n > TOKEN_BODY_MAX) {
                        r = errmsg_set(err, -EFBIG, "%s is larger than %u bytes", path, TOKEN_BODY_MAX);
                        break;
                }
                r = strbuf_append(&b, buf, n);
                if (r < 0)
                        break;
        }
        if (r >= 0 && ferror(f))
                r = errmsg_set(err, -EIO, "%s: read error", path);
        fclose(f);
        if (r >= 0)
                r = fetch_docker_config_parse(b.data ? b.data : "", b.len, ret, err);
        if (b.data)
                explicit_bzero(b.data, b.len);
        if (r < 0)
                return errmsg_prefix(err, r, "%s", path);
        return 0;
}

const FetchCred *fetch_docker_config_find(const FetchDockerConfig *c, const char *host) {
        _cleanup_free_ char *key = registry_key_normalize(host);
        if (!key)
                return NULL;
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->v[i].registry, key) == 0)
                        return &c->v[i];
        return NULL;
}

/* ---- tokens ---- */

int fetch_token_parse(const char *json, size_t len, char **ret_token, uint64_t *ret_expires_in, ErrMsg *err) {
        _cleanup_(yajl_tree_freep) yajl_val root = NULL;
        int r = json_parse(json, len, &root, "token answer", err);
        if (r < 0)
                return r;
        if (!YAJL_IS_OBJECT(root))
                return errmsg_set(err, -EINVAL, "token answer is not a JSON object");
        const char *tok = obj_string(root, "token");
        if (!tok || !*tok)
                tok = obj_string(root, "access_token");
        if (!tok || !*tok)
                return errmsg_set(err, -EINVAL, "token answer has neither \"token\" nor \"access_token\"");
        for (const char *p = tok; *p; p++)
                if ((unsigned char) *p <= ' ' || (unsigned char) *p >= 0x7f)
                        return errmsg_set(err, -EINVAL, "token answer: the token has a character not allowed in a header");
        uint64_t expires = 60;
        const char *path[] = { "expires_in", NULL };
        yajl_val e = yajl_tree_get(root, path, yajl_t_any);
        if (e && YAJL_IS_INTEGER(e)) {
                long long v = YAJL_GET_INTEGER(e);
                if (v > 0)
                        expires = (uint64_t) v;
        } else if (e && YAJL_IS_DOUBLE(e)) {
                double v = YAJL_GET_DOUBLE(e);
                if (v >= 1 && v < 1e9)
                        expires = (uint64_t) v;
        } else if (e && !YAJL_IS_NULL(e))
                return errmsg_set(err, -EINVAL, "token answer: \"expires_in\" is not a number");
        if (expires > 86400 * 365)
                expires = 86400 * 365;
        char *t = strdup(tok);
        if (!t)
                return -ENOMEM;
        *ret_token = t;
        *ret_expires_in = expires;
        return 0;
}

/* ---- the cache ---- */

typedef struct AuthEntry {
        char *host;      /* owned */
        char *scope;     /* owned */
        char *value;     /* owned: the Authorization value; a secret */
        uint64_t expires_ns;
} AuthEntry;

typedef struct HostScheme {
        char *host; /* owned */
        FetchAuthScheme scheme;
} HostScheme;

struct FetchAuth {
        pthread_mutex_t mutex;
        FetchDockerConfig config;   /* immutable after new */
        AuthEntry entries[AUTH_CACHE_MAX]; /* protected by mutex */
        size_t n_entries;           /* protected by mutex */
        HostScheme *schemes;        /* protected by mutex */
        size_t n_schemes;           /* protected by mutex */
        _Atomic uint64_t tokens_fetched;
};

static void entry_done(AuthEntry *e) {
        free(e->host);
        free(e->scope);
        if (e->value)
                explicit_bzero(e->value, strlen(e->value));
        free(e->value);
        *e = (AuthEntry) {};
}

int fetch_auth_new(FetchDockerConfig *take_config, FetchAuth **ret) {
        FetchAuth *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        pthread_mutex_init(&a->mutex, NULL);
        if (take_config) {
                a->config = *take_config;
                *take_config = (FetchDockerConfig) {};
        }
        *ret = a;
        return 0;
}

FetchAuth *fetch_auth_free(FetchAuth *a) {
        if (!a)
                return NULL;
        for (size_t i = 0; i < a->n_entries; i++)
                entry_done(&a->entries[i]);
        for (size_t i = 0; i < a->n_schemes; i++)
                free(a->schemes[i].host);
        free(a->schemes);
        fetch_docker_config_done(&a->config);
        pthread_mutex_destroy(&a->mutex);
        free(a);
        return NULL;
}

uint64_t fetch_auth_tokens_fetched(FetchAuth *a) {
        return atomic_load(&a->tokens_fetched);
}

static int scope_for(const char *repo, char **ret) {
        return asprintf(ret, "repository:%s:pull", repo) < 0 ? -ENOMEM : 0;
}

static int basic_value(const FetchCred *c, char **ret) {
        _cleanup_free_ char *plain = NULL;
        int n = asprintf(&plain, "%s:%s", c->username, c->password);
        if (n < 0)
                return -ENOMEM;
        char *v = malloc(6 + base64_encoded_size((size_t) n));
        if (!v) {
                explicit_bzero(plain, (size_t) n);
                return -ENOMEM;
        }
        memcpy(v, "Basic ", 6);
        base64_encode((const uint8_t *) plain, (size_t) n, v + 6);
        explicit_bzero(plain, (size_t) n);
        *ret = v;
        return 0;
}

static FetchAuthScheme host_scheme_locked(FetchAuth *a, const char *host) {
        for (size_t i = 0; i < a->n_schemes; i++)
                if (strcmp(a->schemes[i].host, host) == 0)
                        return a->schemes[i].scheme;
        return FETCH_AUTH_NONE;
}

static void host_scheme_set(FetchAuth *a, const char *host, FetchAuthScheme s) {
        pthread_mutex_lock(&a->mutex);
        for (size_t i = 0; i < a->n_schemes; i++)
                if (strcmp(a->schemes[i].host, host) == 0) {
                        a->schemes[i].scheme = s;
                        pthread_mutex_unlock(&a->mutex);
                        return;
                }
        HostScheme *n = realloc(a->schemes, (a->n_schemes + 1) * sizeof(*n));
        char *h = strdup(host);
        if (n)
                a->schemes = n;
        if (n && h) {
                a->schemes[a->n_schemes++] = (HostScheme) { .host = h, .scheme = s };
                h = NULL;
        }
        free(h); /* out of memory: we only lose a shortcut */
        pthread_mutex_unlock(&a->mutex);
}

int fetch_auth_header(FetchAuth *a, const char *host, const char *repo, char **ret) {
        _cleanup_free_ char *scope = NULL;
        int r = scope_for(repo, &scope);
        if (r < 0)
                return r;
        uint64_t now = http_now_ns();
        char *v = NULL;
        pthread_mutex_lock(&a->mutex);
        for (size_t i = 0; i < a->n_entries; i++) {
                AuthEntry *e = &a->entries[i];
                if (strcmp(e->host, host) == 0 && strcmp(e->scope, scope) == 0 && e->expires_ns > now) {
                        v = strdup(e->value);
                        if (!v)
                                r = -ENOMEM;
                        break;
                }
        }
        FetchAuthScheme s = host_scheme_locked(a, host);
        pthread_mutex_unlock(&a->mutex);
        if (r < 0)
                return r;
        if (!v && s == FETCH_AUTH_BASIC) {
                const FetchCred *c = fetch_docker_config_find(&a->config, host);
                if (c && c->username && c->password) {
                        r = basic_value(c, &v);
                        if (r < 0)
                                return r;
                }
        }
        *ret = v;
        return 0;
}

static void cache_store(FetchAuth *a, const char *host, const char *scope, const char *value, uint64_t expires_ns) {
        AuthEntry n = {
                .host = strdup(host),
                .scope = strdup(scope),
                .value = strdup(value),
                .expires_ns = expires_ns,
        };
        if (!n.host || !n.scope || !n.value) {
                entry_done(&n);
                return; /* out of memory: the next request asks again */
        }
        uint64_t now = http_now_ns();
        pthread_mutex_lock(&a->mutex);
        size_t slot = a->n_entries;
        for (size_t i = 0; i < a->n_entries; i++) {
                AuthEntry *e = &a->entries[i];
                if ((strcmp(e->host, host) == 0 && strcmp(e->scope, scope) == 0) || e->expires_ns <= now) {
                        slot = i;
                        break;
                }
        }
        if (slot == AUTH_CACHE_MAX) {
                /* full of live tokens: replace the one that expires first */
                slot = 0;
                for (size_t i = 1; i < a->n_entries; i++)
                        if (a->entries[i].expires_ns < a->entries[slot].expires_ns)
                                slot = i;
        }
        if (slot < a->n_entries)
                entry_done(&a->entries[slot]);
        else
                a->n_entries++;
        a->entries[slot] = n;
        pthread_mutex_unlock(&a->mutex);
}

void fetch_auth_invalidate(FetchAuth *a, const char *host, const char *repo) {
        _cleanup_free_ char *scope = NULL;
        if (scope_for(repo, &scope) < 0)
                return;
        pthread_mutex_lock(&a->mutex);
        for (size_t i = 0; i < a->n_entries; i++)
                if (strcmp(a->entries[i].host, host) == 0 && strcmp(a->entries[i].scope, scope) == 0)
                        a->entries[i].expires_ns = 0;
        pthread_mutex_unlock(&a->mutex);
}

static int url_escape_append(StrBuf *b, const char *s) {
        static const char hex[] = "0123456789ABCDEF";
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                int r;
                if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~", c))
                        r = strbuf_putc(b, (char) c);
                else
                        r = strbuf_printf(b, "%%%c%c", hex[c >> 4], hex[c & 15]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int token_fetch(FetchAuth *a, HttpClient *http, const char *host, const FetchChallenge *ch, const char *scope,
                       uint64_t deadline_ns, char **ret, uint64_t *ret_expires_ns, ErrMsg *err) {
        if (!ch->realm || (strncmp(ch->realm, "https://", 8) != 0 && strncmp(ch->realm, "http://", 7) != 0))
                return errmsg_set(err, -EACCES, "%s asks for a bearer token without an http(s) realm", host);
        const FetchCred *cred = fetch_docker_config_find(&a->config, host);
        _cleanup_(strbuf_done) StrBuf url = {};
        _cleanup_(strbuf_done) StrBuf form = {};
        _cleanup_free_ char *basic = NULL;
        int r = strbuf_append(&url, ch->realm, strlen(ch->realm) + 1);
        if (r < 0)
                return r;
        url.len--;
        HttpRequest req = {
                .kind = HTTP_KIND_TOKEN,
                .deadline_ns = deadline_ns,
                .body_max = TOKEN_BODY_MAX,
        };
        if (cred && cred->identity_token) {
                /* OAuth2 refresh-token grant, as docker login leaves it */
                r = strbuf_printf(&form, "grant_type=refresh_token&client_id=holdfast&refresh_token=");
                if (r >= 0)
                        r = url_escape_append(&form, cred->identity_token);
                if (r >= 0 && ch->service) {
                        r = strbuf_printf(&form, "&service=");
                        if (r >= 0)
                                r = url_escape_append(&form, ch->service);
                }
                if (r >= 0)
                        r = strbuf_printf(&form, "&scope=");
                if (r >= 0)
                        r = url_escape_append(&form, scope);
                if (r < 0)
                        return r;
                req.method = HTTP_POST;
                req.post_body = form.data;
                req.post_len = form.len;
                req.post_type = "application/x-www-form-urlencoded";
        } else {
                char sep = strchr(ch->realm, '?') ? '&' : '?';
                if (ch->service) {
                        r = strbuf_printf(&url, "%cservice=", sep);
                        if (r >= 0)
                                r = url_escape_append(&url, ch->service);
                        sep = '&';
                }
                if (r >= 0)
                        r = strbuf_printf(&url, "%cscope=", sep);
                if (r >= 0)
                        r = url_escape_append(&url, scope);
                if (r < 0)
                        return r;
                req.method = HTTP_GET;
                if (cred && cred->username && cred->password) {
                        r = basic_value(cred, &basic);
                        if (r < 0)
                                return r;
                        req.authorization = basic;
                }
        }
        req.url = url.data;
        r = http_request_run(http, &req);
        atomic_fetch_add(&a->tokens_fetched, 1);
        char ubuf[256];
        const char *shown = http_url_for_message(ch->realm, ubuf, sizeof(ubuf));
        if (form.data)
                explicit_bzero(form.data, form.len);
        if (basic)
                explicit_bzero(basic, strlen(basic));
        if (r < 0) {
                if (req.status == 401 || req.status == 403)
                        errmsg_set(err, -EACCES, "token request to %s refused (HTTP %ld)%s", shown, req.status,
                                   cred ? "" : "; no credentials for this registry in the Docker config");
                else
                        errmsg_set(err, r, "token request to %s: %s", shown, req.msg.text);
                long status = req.status;
                http_request_reset(&req);
                return status == 401 || status == 403 ? -EACCES : r;
        }
        char *tok = NULL;
        uint64_t expires_in = 0;
        r = fetch_token_parse(req.body.data ? req.body.data : "", req.body.len, &tok, &expires_in, err);
        if (req.body.data)
                explicit_bzero(req.body.data, req.body.len);
        http_request_reset(&req);
        if (r < 0)
                return errmsg_prefix(err, r, "%s", shown);
        char *value;
        int n = asprintf(&value, "Bearer %s", tok);
        explicit_bzero(tok, strlen(tok));
        free(tok);
        if (n < 0)
                return -ENOMEM;
        /* renew a little early, so that a request does not leave with a token about to lapse */
        uint64_t margin = expires_in >= 30 ? 5 : 0;
        *ret_expires_ns = http_now_ns() + (expires_in - margin) * 1000000000ull;
        *ret = value;
        return 0;
}

int fetch_auth_challenge(FetchAuth *a, HttpClient *http, const char *host, const char *repo,
                         const char *www_authenticate, uint64_t deadline_ns, char **ret, ErrMsg *err) {
        if (!www_authenticate || !*www_authenticate)
                return errmsg_set(err, -EACCES, "%s answered 401 without a WWW-Authenticate challenge", host);
        _cleanup_(fetch_challenges_done) FetchChallenges chs = {};
        int r = fetch_challenges_parse(www_authenticate, &chs, err);
        if (r < 0)
                return errmsg_prefix(err, r, "%s", host);
        const FetchChallenge *bearer = NULL, *basic = NULL;
        for (size_t i = 0; i < chs.n; i++) {
                if (chs.v[i].scheme == FETCH_AUTH_BEARER && !bearer)
                        bearer = &chs.v[i];
                else if (chs.v[i].scheme == FETCH_AUTH_BASIC && !basic)
                        basic = &chs.v[i];
        }
        _cleanup_free_ char *scope = NULL;
        r = scope_for(repo, &scope);
        if (r < 0)
                return r;
        if (bearer) {
                char *value;
                uint64_t expires_ns;
                r = token_fetch(a, http, host, bearer, scope, deadline_ns, &value, &expires_ns, err);
                if (r < 0)
                        return r;
                host_scheme_set(a, host, FETCH_AUTH_BEARER);
                cache_store(a, host, scope, value, expires_ns);
                *ret = value;
                return 0;
        }
        if (basic) {
                const FetchCred *c = fetch_docker_config_find(&a->config, host);
                if (!c || !c->username || !c->password)
                        return errmsg_set(err, -EACCES,
                                          "%s asks for a user name and password (Basic) and the Docker config has "
                                          "none for it", host);
                host_scheme_set(a, host, FETCH_AUTH_BASIC);
                return basic_value(c, ret);
        }
        return errmsg_set(err, -EACCES, "%s asks for authentication scheme \"%s\", which is not supported", host,
                          chs.v[0].scheme_name);
}
