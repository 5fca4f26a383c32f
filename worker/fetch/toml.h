/* A small strict TOML reader for the subset containerd's hosts.toml
 * uses: tables ([a."b".c]), dotted and quoted keys, basic and literal
 * strings (one line), booleans, decimal integers, arrays, and inline
 * tables, with comments anywhere TOML allows them. Everything else TOML
 * has (multi-line strings, floats, dates, arrays of tables, hex/octal
 * integers) is refused with a message that names it, as is anything that
 * is not TOML: duplicate keys, a table defined twice, bad escapes, invalid
 * UTF-8, control characters.
 *
 * Keys keep the order of the file (containerd tries mirrors in file
 * order). The tree is immutable once built; no thread-shared state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/errmsg.h"

#define TOML_MAX_SIZE (1u << 20)  /* bytes of input */
#define TOML_MAX_DEPTH 32         /* nesting of tables and arrays */

typedef enum TomlType {
        TOML_STRING,
        TOML_BOOL,
        TOML_INT,
        TOML_ARRAY,
        TOML_TABLE,
} TomlType;

typedef struct TomlValue TomlValue;
struct TomlValue {
        TomlType type;
        unsigned line; /* where it was defined, for the caller's messages */
        union {
                struct {
                        char *str; /* owned, NUL-terminated; a NUL inside is refused */
                        size_t len;
                };
                bool boolean;
                int64_t integer;
                struct {
                        TomlValue **items; /* owned */
                        size_t n_items;
                };
                struct {
                        char **keys;        /* owned, file order */
                        TomlValue **values; /* owned, parallel to keys */
                        size_t n_keys;
                        bool explicit_header; /* defined by a [header] */
                        bool inline_table;    /* { ... }: closed to later additions */
                        bool dotted;          /* created by a dotted key */
                };
        };
};

/* Parses len bytes into a root table. */
int toml_parse(const char *data, size_t len, TomlValue **ret, ErrMsg *err);
TomlValue *toml_free(TomlValue *v);
static inline void toml_freep(TomlValue **v) {
        toml_free(*v);
}

/* The value of key in table t, or NULL. */
const TomlValue *toml_table_get(const TomlValue *t, const char *key);

const char *toml_type_to_string(TomlType t);
