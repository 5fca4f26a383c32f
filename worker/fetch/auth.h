/* Registry authentication, as Docker and containerd do it:
 *
 *  - WWW-Authenticate challenges (RFC 7235: several per header, quoted
 *    strings with escapes): Basic realm=..., Bearer realm=,service=,scope=;
 *  - credentials from the Docker config ($DOCKER_CONFIG/config.json, else
 *    ~/.docker/config.json): "auths" entries with "auth" (base64
 *    user:pass), "username"/"password", or "identitytoken" (an OAuth2
 *    refresh token);
 *  - bearer tokens from the realm: GET realm?service=S&scope=repository:
 *    REPO:pull with Basic credentials when we have them, or, with an
 *    identity token, the OAuth2 POST grant_type=refresh_token; the answer's
 *    "token" or "access_token", valid for "expires_in" seconds (60 when
 *    absent);
 *  - a cache of the Authorization value per (host, scope) until it
 *    expires, and per host the kind of challenge last seen, so that later
 *    requests carry credentials from the start.
 *
 * FetchAuth is thread-safe (one mutex around the cache; token fetches run
 * outside it). Nothing here logs, and no message ever holds a secret:
 * credentials and tokens never enter an ErrMsg. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"
#include "worker/fetch/http.h"

/* ---- challenges ---- */

typedef enum FetchAuthScheme {
        FETCH_AUTH_NONE,
        FETCH_AUTH_BASIC,
        FETCH_AUTH_BEARER,
        FETCH_AUTH_OTHER,
} FetchAuthScheme;

typedef struct FetchChallenge {
        FetchAuthScheme scheme;
        char *scheme_name; /* owned, as sent */
        char *realm;       /* owned, or NULL */
        char *service;     /* owned, or NULL */
        char *scope;       /* owned, or NULL */
} FetchChallenge;

typedef struct FetchChallenges {
        FetchChallenge *v; /* owned */
        size_t n;
} FetchChallenges;

/* Parses one or more challenges (headers joined by ", "). Unknown
 * parameters are skipped; a malformed header is -EINVAL. */
int fetch_challenges_parse(const char *header, FetchChallenges *ret, ErrMsg *err);
void fetch_challenges_done(FetchChallenges *c);

/* ---- Docker config ---- */

typedef struct FetchCred {
        char *registry;       /* owned: the key, normalised to a host[:port] */
        char *username;       /* owned, or NULL */
        char *password;       /* owned, or NULL */
        char *identity_token; /* owned, or NULL */
} FetchCred;

typedef struct FetchDockerConfig {
        FetchCred *v; /* owned */
        size_t n;
} FetchDockerConfig;

/* Parses config.json text. Entries without usable credentials are
 * skipped; malformed JSON or a bad base64 "auth" is -EINVAL (the message
 * names the registry, never the secret). */
int fetch_docker_config_parse(const char *json, size_t len, FetchDockerConfig *ret, ErrMsg *err);
/* path NULL: $DOCKER_CONFIG/config.json, else $HOME/.docker/config.json.
 * A missing file is an empty config. */
int fetch_docker_config_load(const char *path, FetchDockerConfig *ret, ErrMsg *err);
void fetch_docker_config_done(FetchDockerConfig *c);
/* The credentials for a registry host (docker.io, index.docker.io and
 * registry-1.docker.io are one), or NULL. Borrowed from c. */
const FetchCred *fetch_docker_config_find(const FetchDockerConfig *c, const char *host);

/* ---- tokens ---- */

/* Parses a token endpoint's JSON answer. ret_token is owned; expires_in
 * is 60 when the answer has none. A refresh token in the answer is
 * ignored. */
int fetch_token_parse(const char *json, size_t len, char **ret_token, uint64_t *ret_expires_in, ErrMsg *err);

/* ---- the cache ---- */

typedef struct FetchAuth FetchAuth;

/* Takes the config's entries (config is left empty). */
int fetch_auth_new(FetchDockerConfig *take_config, FetchAuth **ret);
FetchAuth *fetch_auth_free(FetchAuth *a);

/* The Authorization value to send to host for repo, from the cache, or
 * NULL (owned by the caller) when none is known yet. */
int fetch_auth_header(FetchAuth *a, const char *host, const char *repo, char **ret);

/* Answers a 401 from host: parses its WWW-Authenticate, fetches a token
 * (Bearer) or uses the stored password (Basic), caches it and returns the
 * Authorization value to retry with. -EACCES with a message when there is
 * nothing to answer with. */
int fetch_auth_challenge(FetchAuth *a, HttpClient *http, const char *host, const char *repo,
                         const char *www_authenticate, uint64_t deadline_ns, char **ret, ErrMsg *err);

/* Forgets what is cached for (host, repo): after a 401 with a token that
 * should still have been good. */
void fetch_auth_invalidate(FetchAuth *a, const char *host, const char *repo);

/* Number of tokens fetched so far (for tests and statistics). */
uint64_t fetch_auth_tokens_fetched(FetchAuth *a);

/* Standard base64 decode; -EINVAL on anything malformed. Result owned,
 * NUL-terminated. */
int fetch_base64_decode(const char *in, size_t len, char **ret, size_t *ret_len);
