/* libFuzzer target for worker/fetch's other parsers of untrusted bytes;
 * the first input byte picks one, the rest is its input:
 *   0 image reference        1 layer reference     2 WWW-Authenticate
 *   3 Docker config.json     4 token answer        5 manifest (no type)
 *   6 manifest served as an OCI index              7 platform string
 * Each must fail with a message and leave its outputs untouched, or
 * succeed with outputs that keep the documented invariants (digests
 * valid, references within their limits, index selection returning one
 * of the index's entries). Any violation aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/fetch/auth.h"
#include "worker/fetch/manifest.h"
#include "worker/fetch/reference.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(const ErrMsg *e) {
        if (!memchr(e->text, 0, sizeof(e->text)) || e->text[0] == 0)
                abort();
}

static void check_ref(const char *s, bool layer) {
        FetchRef *r = (FetchRef *) 0x1;
        ErrMsg err = {};
        int rc = layer ? fetch_ref_parse_layer(s, &r, &err) : fetch_ref_parse(s, &r, &err);
        if (rc < 0) {
                if (r != (FetchRef *) 0x1)
                        abort();
                check_message(&err);
                return;
        }
        if (!r->domain || !r->repo || (!r->tag && !r->digest))
                abort();
        if (r->digest && !fetch_digest_is_valid(r->digest))
                abort();
        if (layer && (!r->digest || r->tag))
                abort();
        if (strlen(r->domain) + 1 + strlen(r->repo) > FETCH_REF_NAME_MAX)
                abort();
        if (r->tag && (strlen(r->tag) == 0 || strlen(r->tag) > FETCH_REF_TAG_MAX))
                abort();
        fetch_ref_free(r);
}

static void check_manifest(const char *s, size_t len, const char *ct) {
        FetchManifest *m = (FetchManifest *) 0x1;
        ErrMsg err = {};
        int rc = fetch_manifest_parse(s, len, ct, &m, &err);
        if (rc < 0) {
                if (m != (FetchManifest *) 0x1)
                        abort();
                check_message(&err);
                return;
        }
        for (size_t i = 0; i < m->n_entries; i++)
                if (!fetch_digest_is_valid(m->entries[i].digest))
                        abort();
        if (m->kind == FETCH_MANIFEST_IMAGE && !fetch_digest_is_valid(m->config.digest))
                abort();
        if (m->kind == FETCH_MANIFEST_INDEX) {
                const FetchDescriptor *d = NULL;
                const char *plats[] = { NULL, "linux/arm64", "linux/arm/v6", "windows/amd64" };
                for (size_t i = 0; i < sizeof(plats) / sizeof(plats[0]); i++) {
                        ErrMsg e2 = {};
                        if (fetch_manifest_select(m, plats[i], &d, &e2) == 0) {
                                if (d < m->entries || d >= m->entries + m->n_entries)
                                        abort();
                        } else
                                check_message(&e2);
                }
        }
        fetch_manifest_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        uint8_t which = data[0] % 8;
        const char *in = (const char *) data + 1;
        size_t len = size - 1;
        char *s = malloc(len + 1);
        if (!s)
                abort();
        memcpy(s, in, len);
        s[len] = 0;
        ErrMsg err = {};

        switch (which) {
        case 0:
        case 1:
                check_ref(s, which == 1);
                break;
        case 2: {
                FetchChallenges c = {};
                if (fetch_challenges_parse(s, &c, &err) < 0) {
                        if (c.n || c.v)
                                abort();
                        check_message(&err);
                } else {
                        if (c.n == 0)
                                abort();
                        for (size_t i = 0; i < c.n; i++)
                                if (!c.v[i].scheme_name || !c.v[i].scheme_name[0])
                                        abort();
                        fetch_challenges_done(&c);
                }
                break;
        }
        case 3: {
                FetchDockerConfig c = {};
                if (fetch_docker_config_parse(in, len, &c, &err) < 0) {
                        if (c.n || c.v)
                                abort();
                        check_message(&err);
                } else {
                        for (size_t i = 0; i < c.n; i++) {
                                const FetchCred *cr = &c.v[i];
                                if (!cr->registry || (!cr->identity_token && !(cr->username && cr->password)))
                                        abort();
                                if (fetch_docker_config_find(&c, cr->registry) == NULL)
                                        abort();
                        }
                        fetch_docker_config_done(&c);
                }
                break;
        }
        case 4: {
                char *tok = (char *) 0x1;
                uint64_t exp = 0;
                if (fetch_token_parse(in, len, &tok, &exp, &err) < 0) {
                        if (tok != (char *) 0x1)
                                abort();
                        check_message(&err);
                } else {
                        if (!tok[0] || exp == 0 || strpbrk(tok, " \r\n"))
                                abort();
                        free(tok);
                }
                break;
        }
        case 5:
                check_manifest(in, len, NULL);
                break;
        case 6:
                check_manifest(in, len, MT_OCI_INDEX);
                break;
        case 7: {
                char *p = NULL;
                if (fetch_platform_normalize(s, &p, &err) < 0)
                        check_message(&err);
                else
                        free(p);
                break;
        }
        }
        free(s);
        return 0;
}
