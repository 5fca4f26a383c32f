/* Tests of worker/fetch/manifest: OCI and Docker image manifests and
 * indexes, media type from the document or the Content-Type, platform
 * normalisation and selection, and malformed documents. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/tap.h"
#include "worker/fetch/manifest.h"

#define D(c) "sha256:" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c

static FetchManifest *parse(const char *json, const char *ct, int want, const char *msg) {
        FetchManifest *m = NULL;
        ErrMsg err = {};
        int r = fetch_manifest_parse(json, strlen(json), ct, &m, &err);
        is_int(r, want, "%s", msg);
        if (want < 0)
                has_str(err.text, msg, "  message");
        else if (r < 0)
                diag("%s", err.text);
        return m;
}

int main(void) {
        const char *img = "{\"schemaVersion\": 2, \"mediaType\": \"" MT_OCI_MANIFEST "\","
                          "\"config\": {\"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"digest\": \"" D("a") "\", \"size\": 7},"
                          "\"layers\": [{\"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\", \"digest\": \"" D("b") "\", \"size\": 100,"
                          "  \"annotations\": {\"" FETCH_ANNOTATION_TOC_DIGEST "\": \"" D("c") "\", \"x\": \"y\"}},"
                          " {\"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\", \"digest\": \"" D("d") "\", \"size\": 0}],"
                          "\"annotations\": {\"future\": 1}, \"unknown\": [1, 2]}";
        FetchManifest *m = parse(img, "application/vnd.oci.image.manifest.v1+json; charset=utf-8", 0, "OCI image manifest");
        if (m) {
                is_int(m->kind, FETCH_MANIFEST_IMAGE, "  an image");
                is_str(m->config.digest, D("a"), "  config digest");
                is_int(m->n_entries, 2, "  two layers");
                is_int(m->entries[0].size, 100, "  layer size");
                is_str(fetch_descriptor_annotation(&m->entries[0], FETCH_ANNOTATION_TOC_DIGEST), D("c"), "  TOC digest");
                ok(!fetch_descriptor_annotation(&m->entries[1], FETCH_ANNOTATION_TOC_DIGEST), "  none on layer 2");
        }
        fetch_manifest_free(m);

        const char *docker = "{\"schemaVersion\": 2, \"config\": {\"digest\": \"" D("a") "\", \"size\": 1}, \"layers\": []}";
        m = parse(docker, MT_DOCKER_MANIFEST, 0, "Docker manifest typed by Content-Type");
        ok(m && strcmp(m->media_type, MT_DOCKER_MANIFEST) == 0, "  media type from Content-Type");
        fetch_manifest_free(m);
        m = parse(docker, "application/json", 0, "untyped manifest");
        ok(m && m->kind == FETCH_MANIFEST_IMAGE, "  an image by its shape");
        fetch_manifest_free(m);

        const char *index = "{\"schemaVersion\": 2, \"mediaType\": \"" MT_DOCKER_LIST "\", \"manifests\": ["
                            "{\"digest\": \"" D("1") "\", \"size\": 10, \"platform\": {\"os\": \"linux\", \"architecture\": \"amd64\"}},"
                            "{\"digest\": \"" D("2") "\", \"size\": 11, \"platform\": {\"os\": \"linux\", \"architecture\": \"arm64\", \"variant\": \"v8\"}},"
                            "{\"digest\": \"" D("3") "\", \"size\": 12, \"platform\": {\"os\": \"linux\", \"architecture\": \"arm\", \"variant\": \"v6\"}},"
                            "{\"digest\": \"" D("4") "\", \"size\": 13, \"platform\": {\"os\": \"linux\", \"architecture\": \"arm\", \"variant\": \"v7\"}},"
                            "{\"digest\": \"" D("5") "\", \"size\": 14, \"platform\": {\"os\": \"unknown\", \"architecture\": \"unknown\"}},"
                            "{\"digest\": \"" D("6") "\", \"size\": 15}]}";
        m = parse(index, NULL, 0, "Docker manifest list");
        if (m) {
                is_int(m->kind, FETCH_MANIFEST_INDEX, "  an index");
                const FetchDescriptor *d;
                ErrMsg err = {};
                is_int(fetch_manifest_select(m, "linux/amd64", &d, &err), 0, "select linux/amd64");
                is_str(d->digest, D("1"), "  the amd64 one");
                is_int(fetch_manifest_select(m, "linux/x86_64", &d, &err), 0, "select linux/x86_64");
                is_str(d->digest, D("1"), "  normalised to amd64");
                is_int(fetch_manifest_select(m, "linux/arm64", &d, &err), 0, "select linux/arm64");
                is_str(d->digest, D("2"), "  arm64 matches variant v8");
                is_int(fetch_manifest_select(m, "linux/aarch64/v8", &d, &err), 0, "select linux/aarch64/v8");
                is_str(d->digest, D("2"), "  aarch64 is arm64");
                is_int(fetch_manifest_select(m, "linux/arm/v6", &d, &err), 0, "select linux/arm/v6");
                is_str(d->digest, D("3"), "  exact variant");
                is_int(fetch_manifest_select(m, "linux/arm", &d, &err), 0, "select linux/arm");
                is_str(d->digest, D("4"), "  arm means v7");
                is_int(fetch_manifest_select(m, "Linux/AMD64", &d, &err), 0, "case-insensitive");
                is_int(fetch_manifest_select(m, "windows/amd64", &d, &err), -ENOENT, "no windows");
                has_str(err.text, "no manifest for platform windows/amd64 in the index (it has: linux/amd64, linux/arm64/v8",
                        "  message lists what there is");
                is_int(fetch_manifest_select(m, "linux", &d, &err), -EINVAL, "bad platform");
                has_str(err.text, "not OS/ARCH", "  message");
                is_int(fetch_manifest_select(m, NULL, &d, &err), 0, "default platform");
        }
        fetch_manifest_free(m);
        char *p;
        ErrMsg err = {};
        is_int(fetch_platform_normalize("linux/armhf", &p, &err), 0, "armhf");
        is_str(p, "linux/arm/v7", "  is arm/v7");
        free(p);
        is_int(fetch_platform_normalize("linux/amd64/v1", &p, &err), 0, "amd64/v1");
        is_str(p, "linux/amd64", "  is amd64");
        free(p);
        is_int(fetch_platform_normalize("linux//x", &p, &err), -EINVAL, "empty arch");
        is_int(fetch_platform_normalize("linux/a b", &p, &err), -EINVAL, "space");

        parse("[]", NULL, -EINVAL, "manifest is not a JSON object");
        parse("{", NULL, -EINVAL, "invalid JSON");
        parse("{\"schemaVersion\": 1}", NULL, -EOPNOTSUPP, "schema 1");
        parse("{\"schemaVersion\": 3, \"layers\": []}", NULL, -EINVAL, "schemaVersion 3 is not 2");
        parse("{\"layers\": []}", NULL, -EINVAL, "no schemaVersion");
        parse("{\"schemaVersion\": 2, \"mediaType\": \"x/y\"}", NULL, -EOPNOTSUPP, "\"x/y\" is not supported");
        parse("{\"schemaVersion\": 2, \"mediaType\": \"" MT_OCI_MANIFEST "\"}", MT_OCI_INDEX, -EINVAL, "but was served as");
        parse("{\"schemaVersion\": 2}", NULL, -EINVAL, "neither an index nor an image");
        parse("{\"schemaVersion\": 2, \"mediaType\": \"" MT_OCI_MANIFEST "\", \"layers\": []}", NULL, -EINVAL, "no config");
        parse("{\"schemaVersion\": 2, \"mediaType\": \"" MT_OCI_INDEX "\", \"layers\": []}", NULL, -EINVAL, "no \"manifests\" array");
        parse("{\"schemaVersion\": 2, \"config\": {\"digest\": \"" D("a") "\", \"size\": -1}, \"layers\": []}", NULL, -EINVAL,
              "config has no valid size");
        parse("{\"schemaVersion\": 2, \"config\": {\"digest\": \"sha256:abc\", \"size\": 1}, \"layers\": []}", NULL, -EINVAL,
              "is not a sha256 digest");
        parse("{\"schemaVersion\": 2, \"config\": {\"digest\": \"sha512:abc\", \"size\": 1}, \"layers\": []}", NULL,
              -EOPNOTSUPP, "not supported");
        parse("{\"schemaVersion\": 2, \"config\": {\"digest\": \"" D("a") "\", \"size\": 1}, \"layers\": [1]}", NULL, -EINVAL,
              "layers[0] is not an object");
        parse("{\"schemaVersion\": 2, \"config\": {\"digest\": \"" D("a") "\", \"size\": 1}, \"layers\": [{\"digest\": \"" D("a")
              "\", \"size\": 1, \"annotations\": {\"k\": 1}}]}", NULL, -EINVAL, "annotation \"k\" is not a string");
        parse("{\"schemaVersion\": 2, \"config\": {\"mediaType\": 5, \"digest\": \"" D("a") "\", \"size\": 1}, \"layers\": []}",
              NULL, -EINVAL, "\"mediaType\" is not a string");
        parse("{\"schemaVersion\": 2, \"manifests\": [{\"digest\": \"" D("a") "\", \"size\": 1, \"platform\": 3}]}", NULL,
              -EINVAL, "platform is not an object");
        parse("{\"schemaVersion\": 2, \"layers\": []}", "application/vnd.docker.distribution.manifest.v1+prettyjws",
              -EOPNOTSUPP, "schema 1");
        return done();
}
