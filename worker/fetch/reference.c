/* Image reference parsing (see reference.h): the grammar of
 * distribution/reference, which containerd uses, checked by hand one
 * component at a time so that every error names the part that is wrong.
 * Pure functions, any thread. */
#include "worker/fetch/reference.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/macro.h"

static bool is_lower_alnum(char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c) {
        return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static bool is_hex_lower(char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

bool fetch_digest_is_valid(const char *s) {
        if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
                return false;
        for (size_t i = 7; i < 7 + 64; i++)
                if (!is_hex_lower(s[i]))
                        return false;
        return true;
}

/* One DNS label or a run of them: [A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?
 * separated by '.'. */
static bool host_name_valid(const char *s, size_t len) {
        if (len == 0)
                return false;
        size_t label = 0;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                if (c == '.') {
                        if (label == 0 || s[i - 1] == '-')
                                return false;
                        label = 0;
                } else if (is_alnum(c)) {
                        label++;
                } else if (c == '-') {
                        if (label == 0)
                                return false;
                        label++;
                } else
                        return false;
        }
        return label > 0 && s[len - 1] != '-';
}

/* host[:port] or [ipv6][:port] */
static int domain_check(const char *s, size_t len, ErrMsg *err) {
        const char *port = NULL;
        size_t host_len = len;
        if (len > 0 && s[0] == '[') {
                const char *close = memchr(s, ']', len);
                if (!close || close == s + 1)
                        return errmsg_set(err, -EINVAL, "registry host \"%.*s\": unterminated IPv6 address", (int) len, s);
                for (const char *p = s + 1; p < close; p++)
                        if (!(is_hex_lower(*p) || (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
                                return errmsg_set(err, -EINVAL, "registry host \"%.*s\": bad IPv6 address", (int) len, s);
                host_len = (size_t) (close - s) + 1;
                if (host_len < len) {
                        if (s[host_len] != ':')
                                return errmsg_set(err, -EINVAL, "registry host \"%.*s\": junk after the IPv6 address",
                                                  (int) len, s);
                        port = s + host_len + 1;
                }
        } else {
                const char *colon = memchr(s, ':', len);
                if (colon) {
                        host_len = (size_t) (colon - s);
                        port = colon + 1;
                }
                if (!host_name_valid(s, host_len))
                        return errmsg_set(err, -EINVAL, "registry host \"%.*s\" is not a valid host name", (int) len, s);
        }
        if (port) {
                size_t plen = len - (size_t) (port - s);
                if (plen == 0 || plen > 5)
                        return errmsg_set(err, -EINVAL, "registry host \"%.*s\": bad port", (int) len, s);
                unsigned v = 0;
                for (size_t i = 0; i < plen; i++) {
                        if (port[i] < '0' || port[i] > '9')
                                return errmsg_set(err, -EINVAL, "registry host \"%.*s\": bad port", (int) len, s);
                        v = v * 10 + (unsigned) (port[i] - '0');
                }
                if (v == 0 || v > 65535)
                        return errmsg_set(err, -EINVAL, "registry host \"%.*s\": port out of range", (int) len, s);
        }
        return 0;
}

/* A path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
static bool component_valid(const char *s, size_t len) {
        size_t i = 0;
        if (len == 0 || !is_lower_alnum(s[0]))
                return false;
        while (i < len) {
                while (i < len && is_lower_alnum(s[i]))
                        i++;
                if (i == len)
                        return true;
                /* a separator, then at least one alnum */
                if (s[i] == '.')
                        i++;
                else if (s[i] == '_')
                        i += (i + 1 < len && s[i + 1] == '_') ? 2 : 1;
                else if (s[i] == '-')
                        while (i < len && s[i] == '-')
                                i++;
                else
                        return false;
                if (i == len || !is_lower_alnum(s[i]))
                        return false;
        }
        return true;
}

static int path_check(const char *s, size_t len, ErrMsg *err) {
        if (len == 0)
                return errmsg_set(err, -EINVAL, "reference has an empty repository name");
        const char *p = s, *end = s + len;
        while (p <= end) {
                const char *slash = memchr(p, '/', (size_t) (end - p));
                const char *ce = slash ? slash : end;
                if (!component_valid(p, (size_t) (ce - p))) {
                        if (ce == p)
                                return errmsg_set(err, -EINVAL, "repository \"%.*s\" has an empty path component",
                                                  (int) len, s);
                        return errmsg_set(err, -EINVAL,
                                          "repository path component \"%.*s\" is invalid (lower-case letters, digits "
                                          "and single separators . _ __ - only)",
                                          (int) (ce - p), p);
                }
                if (!slash)
                        break;
                p = slash + 1;
        }
        return 0;
}

static int tag_check(const char *s, size_t len, ErrMsg *err) {
        if (len == 0)
                return errmsg_set(err, -EINVAL, "reference has an empty tag");
        if (len > FETCH_REF_TAG_MAX)
                return errmsg_set(err, -EINVAL, "tag is longer than %d characters", FETCH_REF_TAG_MAX);
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                bool word = is_alnum(c) || c == '_';
                if (!(word || (i > 0 && (c == '.' || c == '-'))))
                        return errmsg_set(err, -EINVAL, "tag \"%.*s\" is invalid (letters, digits, _ . - only, "
                                          "not starting with . or -)", (int) len, s);
        }
        return 0;
}

static int digest_check(const char *s, ErrMsg *err) {
        const char *colon = strchr(s, ':');
        if (!colon || colon == s)
                return errmsg_set(err, -EINVAL, "digest \"%s\" is not ALGORITHM:HEX", s);
        if ((size_t) (colon - s) != 6 || strncmp(s, "sha256", 6) != 0) {
                for (const char *p = s; p < colon; p++)
                        if (!(is_lower_alnum(*p) || *p == '+' || *p == '.' || *p == '_' || *p == '-'))
                                return errmsg_set(err, -EINVAL, "digest \"%s\" has a malformed algorithm", s);
                return errmsg_set(err, -EOPNOTSUPP, "digest algorithm \"%.*s\" is not supported (only sha256)",
                                  (int) (colon - s), s);
        }
        if (!fetch_digest_is_valid(s))
                return errmsg_set(err, -EINVAL, "digest \"%s\" is not sha256: and 64 lower-case hex digits", s);
        return 0;
}

FetchRef *fetch_ref_free(FetchRef *r) {
        if (!r)
                return NULL;
        free(r->domain);
        free(r->repo);
        free(r->tag);
        free(r->digest);
        free(r);
        return NULL;
}

static void fetch_ref_freep(FetchRef **r) {
        fetch_ref_free(*r);
}

static bool has_upper(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (s[i] >= 'A' && s[i] <= 'Z')
                        return true;
        return false;
}

static int ref_parse(const char *s, bool layer, FetchRef **ret, ErrMsg *err) {
        if (!s || !*s)
                return errmsg_set(err, -EINVAL, "empty image reference");
        size_t slen = strlen(s);
        if (slen > 4096)
                return errmsg_set(err, -EINVAL, "image reference is longer than 4096 bytes");
        for (size_t i = 0; i < slen; i++)
                if ((unsigned char) s[i] <= ' ' || (unsigned char) s[i] >= 0x7f)
                        return errmsg_set(err, -EINVAL, "image reference contains a space, control or non-ASCII byte");
        if (strstr(s, "://"))
                return errmsg_set(err, -EINVAL, "image reference \"%s\" must not have a URL scheme", s);

        _cleanup_(fetch_ref_freep) FetchRef *ref = calloc(1, sizeof(*ref));
        if (!ref)
                return -ENOMEM;

        /* split off "@digest" first: the digest has a ':' of its own */
        const char *at = strchr(s, '@');
        size_t name_len = at ? (size_t) (at - s) : slen;
        if (at) {
                if (strchr(at + 1, '@'))
                        return errmsg_set(err, -EINVAL, "image reference \"%s\" has more than one '@'", s);
                int r = digest_check(at + 1, err);
                if (r < 0)
                        return r;
                ref->digest = strdup(at + 1);
                if (!ref->digest)
                        return -ENOMEM;
        }

        /* domain: the first component if it looks like a host */
        const char *name = s;
        const char *slash = memchr(name, '/', name_len);
        size_t dom_len = 0;
        if (slash) {
                size_t first = (size_t) (slash - name);
                if (memchr(name, '.', first) || memchr(name, ':', first) ||
                    (first == 9 && strncmp(name, "localhost", 9) == 0) || has_upper(name, first))
                        dom_len = first;
        }
        const char *rest = dom_len ? name + dom_len + 1 : name;
        size_t rest_len = name_len - (dom_len ? dom_len + 1 : 0);

        /* the tag is after the last ':' of the path part (ports live in the domain) */
        const char *colon = memrchr(rest, ':', rest_len);
        size_t path_len = colon ? (size_t) (colon - rest) : rest_len;
        if (colon) {
                int r = tag_check(colon + 1, rest_len - path_len - 1, err);
                if (r < 0)
                        return r;
                ref->tag = strndup(colon + 1, rest_len - path_len - 1);
                if (!ref->tag)
                        return -ENOMEM;
        }

        if (dom_len) {
                int r = domain_check(name, dom_len, err);
                if (r < 0)
                        return r;
                if (dom_len == 15 && strncmp(name, "index.docker.io", 15) == 0)
                        ref->domain = strdup("docker.io");
                else
                        ref->domain = strndup(name, dom_len);
        } else
                ref->domain = strdup("docker.io");
        if (!ref->domain)
                return -ENOMEM;

        int r = path_check(rest, path_len, err);
        if (r < 0)
                return r;
        bool library = strcmp(ref->domain, "docker.io") == 0 && !memchr(rest, '/', path_len);
        if (library) {
                ref->repo = malloc(8 + path_len + 1);
                if (ref->repo) {
                        memcpy(ref->repo, "library/", 8);
                        memcpy(ref->repo + 8, rest, path_len);
                        ref->repo[8 + path_len] = 0;
                }
        } else
                ref->repo = strndup(rest, path_len);
        if (!ref->repo)
                return -ENOMEM;
        if (strlen(ref->domain) + 1 + strlen(ref->repo) > FETCH_REF_NAME_MAX)
                return errmsg_set(err, -EINVAL, "repository name is longer than %d characters", FETCH_REF_NAME_MAX);

        if (layer) {
                if (!ref->digest)
                        return errmsg_set(err, -EINVAL, "layer reference \"%s\" has no @sha256: digest", s);
                if (ref->tag)
                        return errmsg_set(err, -EINVAL, "layer reference \"%s\" must not have a tag", s);
        } else if (!ref->tag && !ref->digest) {
                ref->tag = strdup("latest");
                if (!ref->tag)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(ref);
        return 0;
}

int fetch_ref_parse(const char *s, FetchRef **ret, ErrMsg *err) {
        return ref_parse(s, false, ret, err);
}

int fetch_ref_parse_layer(const char *s, FetchRef **ret, ErrMsg *err) {
        return ref_parse(s, true, ret, err);
}

const char *fetch_ref_api_host(const char *domain) {
        return strcmp(domain, "docker.io") == 0 ? "registry-1.docker.io" : domain;
}

bool fetch_host_is_local(const char *domain) {
        size_t len = strlen(domain);
        const char *colon = NULL;
        if (domain[0] == '[') {
                const char *close = strchr(domain, ']');
                if (!close)
                        return false;
                return close - domain == 4 && strncmp(domain, "[::1]", 5) == 0;
        }
        colon = strchr(domain, ':');
        size_t host_len = colon ? (size_t) (colon - domain) : len;
        if (host_len == 9 && strncmp(domain, "localhost", 9) == 0)
                return true;
        if (host_len == 3 && strncmp(domain, "::1", 3) == 0)
                return true;
        if (host_len >= 4 && strncmp(domain, "127.", 4) == 0) {
                for (size_t i = 4; i < host_len; i++)
                        if (!((domain[i] >= '0' && domain[i] <= '9') || domain[i] == '.'))
                                return false;
                return true;
        }
        return false;
}
