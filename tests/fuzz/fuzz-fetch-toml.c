/* libFuzzer target for worker/fetch's TOML reader and the hosts.toml
 * interpretation on top of it: toml_parse() on the input, then
 * fetch_hosts_parse() on the same bytes. Checks what the headers promise:
 *   - on failure, *ret is untouched and the message is a non-empty,
 *     NUL-terminated string;
 *   - on success, every string in the tree is NUL-terminated at its
 *     length with no NUL inside, every table's keys are distinct, and
 *     nesting stays within the limits;
 *   - hosts: at least one endpoint (the server, last), each with an http
 *     or https scheme, a host, a path empty or starting with '/' and
 *     without a trailing '/', and header lines without CR or LF.
 * Any violation aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/fetch/hosts.h"
#include "worker/fetch/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(const ErrMsg *e) {
        if (!memchr(e->text, 0, sizeof(e->text)) || e->text[0] == 0)
                abort();
}

static void walk(const TomlValue *v, unsigned depth) {
        if (depth > 3 * TOML_MAX_DEPTH + 2)
                abort();
        switch (v->type) {
        case TOML_STRING:
                if (!v->str || strlen(v->str) != v->len)
                        abort();
                break;
        case TOML_BOOL:
        case TOML_INT:
                break;
        case TOML_ARRAY:
                for (size_t i = 0; i < v->n_items; i++)
                        walk(v->items[i], depth + 1);
                break;
        case TOML_TABLE:
                for (size_t i = 0; i < v->n_keys; i++) {
                        for (size_t k = 0; k < i; k++)
                                if (strcmp(v->keys[i], v->keys[k]) == 0)
                                        abort();
                        if (toml_table_get(v, v->keys[i]) != v->values[i])
                                abort();
                        walk(v->values[i], depth + 1);
                }
                break;
        default:
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        TomlValue *v = (TomlValue *) 0x1;
        ErrMsg err = {};
        int r = toml_parse((const char *) data, size, &v, &err);
        if (r < 0) {
                if (v != (TomlValue *) 0x1)
                        abort();
                check_message(&err);
        } else {
                if (r != 0 || !v || v->type != TOML_TABLE)
                        abort();
                walk(v, 0);
                toml_free(v);
        }

        FetchHosts *h = (FetchHosts *) 0x1;
        ErrMsg herr = {};
        r = fetch_hosts_parse((const char *) data, size, "fuzz.example:5000", "/base", &h, &herr);
        if (r < 0) {
                if (h != (FetchHosts *) 0x1)
                        abort();
                check_message(&herr);
                return 0;
        }
        if (h->n_endpoints == 0 || h->endpoints[h->n_endpoints - 1].mirror)
                abort();
        for (size_t i = 0; i < h->n_endpoints; i++) {
                const FetchEndpoint *e = &h->endpoints[i];
                if (strcmp(e->scheme, "http") != 0 && strcmp(e->scheme, "https") != 0)
                        abort();
                if (!e->host[0] || strchr(e->host, '/') || strchr(e->host, '@'))
                        abort();
                /* empty only with override_path and no path: URLs are then host/REPO/... */
                size_t pl = strlen(e->path);
                if (pl > 0 && (e->path[0] != '/' || e->path[pl - 1] == '/'))
                        abort();
                for (size_t k = 0; k < e->n_headers; k++)
                        if (strpbrk(e->headers[k], "\r\n"))
                                abort();
                for (size_t k = 0; k < e->n_ca; k++)
                        if (!e->ca[k][0])
                                abort();
        }
        fetch_hosts_free(h);
        return 0;
}
