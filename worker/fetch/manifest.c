/* Manifest and index parsing (see manifest.h) with yajl_tree: the
 * documents are small (the client caps them at 4 MiB) and random access
 * keeps the checks readable. Every field we use is type-checked; unknown
 * fields are ignored, as the OCI spec asks. Pure; any thread. */
#include "worker/fetch/manifest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_tree.h>

#include "common/util/macro.h"
#include "common/util/strbuf.h"
#include "worker/fetch/reference.h"

static void yajl_tree_freep(yajl_val *v) {
        if (*v)
                yajl_tree_free(*v);
}

void fetch_descriptor_done(FetchDescriptor *d) {
        free(d->media_type);
        free(d->digest);
        for (size_t i = 0; i < d->n_annotations; i++) {
                free(d->annotations[i].key);
                free(d->annotations[i].value);
        }
        free(d->annotations);
        free(d->os);
        free(d->arch);
        free(d->variant);
        *d = (FetchDescriptor) {};
}

FetchManifest *fetch_manifest_free(FetchManifest *m) {
        if (!m)
                return NULL;
        free(m->media_type);
        fetch_descriptor_done(&m->config);
        for (size_t i = 0; i < m->n_entries; i++)
                fetch_descriptor_done(&m->entries[i]);
        free(m->entries);
        free(m);
        return NULL;
}

static void fetch_manifest_freep(FetchManifest **m) {
        fetch_manifest_free(*m);
}

const char *fetch_descriptor_annotation(const FetchDescriptor *d, const char *key) {
        for (size_t i = 0; i < d->n_annotations; i++)
                if (strcmp(d->annotations[i].key, key) == 0)
                        return d->annotations[i].value;
        return NULL;
}

static yajl_val field(yajl_val obj, const char *key) {
        const char *path[] = { key, NULL };
        return yajl_tree_get(obj, path, yajl_t_any);
}

/* A string field: absent is NULL (0), wrong type -EINVAL. */
static int field_string(yajl_val obj, const char *key, const char *what, char **ret, ErrMsg *err) {
        yajl_val v = field(obj, key);
        *ret = NULL;
        if (!v || YAJL_IS_NULL(v))
                return 0;
        if (!YAJL_IS_STRING(v))
                return errmsg_set(err, -EINVAL, "%s: \"%s\" is not a string", what, key);
        *ret = strdup(v->u.string);
        return *ret ? 0 : -ENOMEM;
}

static int descriptor_parse(yajl_val v, const char *what, bool platform, FetchDescriptor *d, ErrMsg *err) {
        if (!YAJL_IS_OBJECT(v))
                return errmsg_set(err, -EINVAL, "%s is not an object", what);
        int r = field_string(v, "mediaType", what, &d->media_type, err);
        if (r < 0)
                return r;
        r = field_string(v, "digest", what, &d->digest, err);
        if (r < 0)
                return r;
        if (!d->digest)
                return errmsg_set(err, -EINVAL, "%s has no digest", what);
        if (!fetch_digest_is_valid(d->digest)) {
                if (strncmp(d->digest, "sha256:", 7) != 0 && strchr(d->digest, ':'))
                        return errmsg_set(err, -EOPNOTSUPP, "%s: digest algorithm of \"%.80s\" is not supported", what,
                                          d->digest);
                return errmsg_set(err, -EINVAL, "%s: \"%.80s\" is not a sha256 digest", what, d->digest);
        }
        yajl_val size = field(v, "size");
        if (!size || !YAJL_IS_INTEGER(size) || YAJL_GET_INTEGER(size) < 0)
                return errmsg_set(err, -EINVAL, "%s has no valid size", what);
        d->size = (uint64_t) YAJL_GET_INTEGER(size);

        yajl_val ann = field(v, "annotations");
        if (ann && !YAJL_IS_NULL(ann)) {
                if (!YAJL_IS_OBJECT(ann))
                        return errmsg_set(err, -EINVAL, "%s: annotations is not an object", what);
                size_t n = ann->u.object.len;
                d->annotations = calloc(n ? n : 1, sizeof(*d->annotations));
                if (!d->annotations)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        yajl_val av = ann->u.object.values[i];
                        if (!YAJL_IS_STRING(av))
                                return errmsg_set(err, -EINVAL, "%s: annotation \"%.80s\" is not a string", what,
                                                  ann->u.object.keys[i]);
                        FetchAnnotation *a = &d->annotations[d->n_annotations++];
                        a->key = strdup(ann->u.object.keys[i]);
                        a->value = strdup(av->u.string);
                        if (!a->key || !a->value)
                                return -ENOMEM;
                }
        }
        if (platform) {
                yajl_val p = field(v, "platform");
                if (p && !YAJL_IS_NULL(p)) {
                        if (!YAJL_IS_OBJECT(p))
                                return errmsg_set(err, -EINVAL, "%s: platform is not an object", what);
                        r = field_string(p, "os", what, &d->os, err);
                        if (r >= 0)
                                r = field_string(p, "architecture", what, &d->arch, err);
                        if (r >= 0)
                                r = field_string(p, "variant", what, &d->variant, err);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static const char *known_type(const char *s, size_t len) {
        static const char *const types[] = { MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST };
        for (size_t i = 0; i < ELEMENTSOF(types); i++)
                if (strlen(types[i]) == len && strncasecmp(types[i], s, len) == 0)
                        return types[i];
        return NULL;
}

int fetch_manifest_parse(const char *json, size_t len, const char *content_type, FetchManifest **ret, ErrMsg *err) {
        _cleanup_free_ char *copy = strndup(json, len);
        if (!copy)
                return -ENOMEM;
        if (strlen(copy) != len)
                return errmsg_set(err, -EINVAL, "manifest: NUL byte in JSON");
        char ebuf[256] = "";
        _cleanup_(yajl_tree_freep) yajl_val root = yajl_tree_parse(copy, ebuf, sizeof(ebuf));
        if (!root) {
                ebuf[strcspn(ebuf, "\n")] = 0;
                return errmsg_set(err, -EINVAL, "manifest: invalid JSON (%s)", ebuf[0] ? ebuf : "parse error");
        }
        if (!YAJL_IS_OBJECT(root))
                return errmsg_set(err, -EINVAL, "manifest is not a JSON object");

        yajl_val sv = field(root, "schemaVersion");
        if (!sv || !YAJL_IS_INTEGER(sv))
                return errmsg_set(err, -EINVAL, "manifest has no schemaVersion");
        if (YAJL_GET_INTEGER(sv) == 1)
                return errmsg_set(err, -EOPNOTSUPP, "Docker schema 1 manifests are not supported");
        if (YAJL_GET_INTEGER(sv) != 2)
                return errmsg_set(err, -EINVAL, "manifest schemaVersion %lld is not 2", YAJL_GET_INTEGER(sv));

        /* the type: the document's mediaType, else what it was served as, else its shape */
        const char *served = NULL;
        if (content_type) {
                size_t n = strcspn(content_type, ";");
                while (n > 0 && (content_type[n - 1] == ' ' || content_type[n - 1] == '\t'))
                        n--;
                served = known_type(content_type, n);
                if (!served && n >= 41 && strncmp(content_type, "application/vnd.docker.distribution.manifest.v1", 47) == 0)
                        return errmsg_set(err, -EOPNOTSUPP, "Docker schema 1 manifests are not supported");
        }
        const char *type = NULL;
        yajl_val mt = field(root, "mediaType");
        if (mt && !YAJL_IS_NULL(mt)) {
                if (!YAJL_IS_STRING(mt))
                        return errmsg_set(err, -EINVAL, "manifest: mediaType is not a string");
                const char *s = YAJL_GET_STRING(mt);
                type = known_type(s, strlen(s));
                if (!type)
                        return errmsg_set(err, -EOPNOTSUPP, "manifest media type \"%.100s\" is not supported", s);
                if (served && served != type)
                        return errmsg_set(err, -EINVAL, "manifest says it is %s but was served as %s", type, served);
        }
        if (!type)
                type = served;
        yajl_val manifests = field(root, "manifests"), layers = field(root, "layers");
        if (!type) {
                if (manifests && !layers)
                        type = MT_OCI_INDEX;
                else if (layers && !manifests)
                        type = MT_OCI_MANIFEST;
                else
                        return errmsg_set(err, -EINVAL, "manifest has no mediaType and is neither an index nor an image");
        }

        _cleanup_(fetch_manifest_freep) FetchManifest *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->media_type = strdup(type);
        if (!m->media_type)
                return -ENOMEM;
        bool index = strcmp(type, MT_OCI_INDEX) == 0 || strcmp(type, MT_DOCKER_LIST) == 0;
        m->kind = index ? FETCH_MANIFEST_INDEX : FETCH_MANIFEST_IMAGE;
        yajl_val list = index ? manifests : layers;
        const char *list_name = index ? "manifests" : "layers";
        if (!list || !YAJL_IS_ARRAY(list))
                return errmsg_set(err, -EINVAL, "%s has no \"%s\" array", index ? "index" : "image manifest", list_name);
        if (!index) {
                yajl_val config = field(root, "config");
                if (!config)
                        return errmsg_set(err, -EINVAL, "image manifest has no config");
                int r = descriptor_parse(config, "config", false, &m->config, err);
                if (r < 0)
                        return r;
        }
        size_t n = list->u.array.len;
        m->entries = calloc(n ? n : 1, sizeof(*m->entries));
        if (!m->entries)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                char what[64];
                snprintf(what, sizeof(what), "%s[%zu]", list_name, i);
                int r = descriptor_parse(list->u.array.values[i], what, index, &m->entries[i], err);
                m->n_entries++;
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(m);
        return 0;
}

/* ---- platforms ---- */

static const char *host_arch(void) {
#if defined(__x86_64__)
        return "amd64";
#elif defined(__aarch64__)
        return "arm64";
#elif defined(__i386__)
        return "386";
#elif defined(__arm__)
        return "arm";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return "ppc64le";
#elif defined(__s390x__)
        return "s390x";
#elif defined(__riscv) && __riscv_xlen == 64
        return "riscv64";
#else
        return "amd64";
#endif
}

static bool valid_part(const char *s, size_t n) {
        if (n == 0 || n > 64)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
                      s[i] == '_' || s[i] == '-' || s[i] == '.'))
                        return false;
        return true;
}

/* containerd's platforms.Normalize for the architecture and variant. */
static void arch_normalize(char *arch, size_t asize, char *variant, size_t vsize) {
        for (char *p = arch; *p; p++)
                *p = (char) (*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        if (strcmp(arch, "i386") == 0) {
                snprintf(arch, asize, "386");
                variant[0] = 0;
        } else if (strcmp(arch, "x86_64") == 0 || strcmp(arch, "x86-64") == 0 || strcmp(arch, "amd64") == 0) {
                snprintf(arch, asize, "amd64");
                if (strcmp(variant, "v1") == 0)
                        variant[0] = 0;
        } else if (strcmp(arch, "aarch64") == 0 || strcmp(arch, "arm64") == 0) {
                snprintf(arch, asize, "arm64");
                if (strcmp(variant, "8") == 0 || strcmp(variant, "v8") == 0)
                        variant[0] = 0;
        } else if (strcmp(arch, "armhf") == 0) {
                snprintf(arch, asize, "arm");
                snprintf(variant, vsize, "v7");
        } else if (strcmp(arch, "armel") == 0) {
                snprintf(arch, asize, "arm");
                snprintf(variant, vsize, "v6");
        } else if (strcmp(arch, "arm") == 0) {
                if (variant[0] == 0 || strcmp(variant, "7") == 0)
                        snprintf(variant, vsize, "v7");
                else if (strcmp(variant, "5") == 0 || strcmp(variant, "6") == 0 || strcmp(variant, "8") == 0) {
                        char v[8];
                        snprintf(v, sizeof(v), "v%s", variant);
                        snprintf(variant, vsize, "%s", v);
                }
        }
}

int fetch_platform_normalize(const char *platform, char **ret, ErrMsg *err) {
        char os[65] = "linux", arch[65], variant[65] = "";
        snprintf(arch, sizeof(arch), "%s", host_arch());
        if (platform && *platform) {
                const char *s1 = strchr(platform, '/');
                if (!s1)
                        return errmsg_set(err, -EINVAL, "platform \"%.80s\" is not OS/ARCH[/VARIANT]", platform);
                const char *s2 = strchr(s1 + 1, '/');
                size_t osn = (size_t) (s1 - platform);
                size_t an = s2 ? (size_t) (s2 - s1 - 1) : strlen(s1 + 1);
                const char *v = s2 ? s2 + 1 : "";
                if (!valid_part(platform, osn) || !valid_part(s1 + 1, an) || (s2 && !valid_part(v, strlen(v))))
                        return errmsg_set(err, -EINVAL, "platform \"%.80s\" is not OS/ARCH[/VARIANT]", platform);
                snprintf(os, sizeof(os), "%.*s", (int) osn, platform);
                for (char *p = os; *p; p++)
                        *p = (char) (*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
                if (strcmp(os, "macos") == 0)
                        snprintf(os, sizeof(os), "darwin");
                snprintf(arch, sizeof(arch), "%.*s", (int) an, s1 + 1);
                snprintf(variant, sizeof(variant), "%s", v);
        }
        arch_normalize(arch, sizeof(arch), variant, sizeof(variant));
        int n = variant[0] ? asprintf(ret, "%s/%s/%s", os, arch, variant) : asprintf(ret, "%s/%s", os, arch);
        return n < 0 ? -ENOMEM : 0;
}

int fetch_manifest_select(const FetchManifest *index, const char *platform, const FetchDescriptor **ret, ErrMsg *err) {
        _cleanup_free_ char *want = NULL;
        int r = fetch_platform_normalize(platform, &want, err);
        if (r < 0)
                return r;
        const FetchDescriptor *best = NULL;
        int best_score = -1;
        for (size_t i = 0; i < index->n_entries; i++) {
                const FetchDescriptor *d = &index->entries[i];
                if (!d->os || !d->arch)
                        continue;
                char *have = NULL;
                char buf[200];
                snprintf(buf, sizeof(buf), "%s/%s%s%s", d->os, d->arch, d->variant && *d->variant ? "/" : "",
                         d->variant ? d->variant : "");
                if (fetch_platform_normalize(buf, &have, NULL) < 0)
                        continue;
                int score = -1;
                if (strcmp(have, want) == 0)
                        score = 2;
                else {
                        /* os/arch match and we asked for no variant (want is a prefix
                         * of have): acceptable, not exact */
                        size_t wn = strlen(want);
                        if (strncmp(have, want, wn) == 0 && have[wn] == '/')
                                score = 1;
                }
                free(have);
                if (score > best_score) {
                        best = d;
                        best_score = score;
                }
        }
        if (best && best_score >= 1) {
                *ret = best;
                return 0;
        }
        _cleanup_(strbuf_done) StrBuf offers = {};
        for (size_t i = 0; i < index->n_entries && offers.len < 300; i++) {
                const FetchDescriptor *d = &index->entries[i];
                if (d->os && d->arch)
                        (void) strbuf_printf(&offers, "%s%s/%s%s%s", offers.len ? ", " : "", d->os, d->arch,
                                             d->variant ? "/" : "", d->variant ? d->variant : "");
        }
        return errmsg_set(err, -ENOENT, "no manifest for platform %s in the index (it has: %s)", want,
                          offers.len ? offers.data : "no platforms");
}
