/* The TOML subset reader (see toml.h): a hand-written recursive-descent
 * parser over a buffer checked for UTF-8 first. Errors say "line L,
 * column C: ..." with columns counted in bytes from 1. Nesting is bounded
 * (TOML_MAX_DEPTH for arrays and inline tables, and as many key parts per
 * header or dotted key) so that neither the parser nor toml_free()
 * recurses without limit, and a table holds at most TOML_MAX_KEYS keys so
 * that the linear key lookup stays cheap. Pure; any thread. */
#include "worker/fetch/toml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/macro.h"
#include "common/util/strbuf.h"

#define TOML_MAX_KEYS 4096

typedef struct Parser {
        const char *p, *end;
        const char *line_start;
        unsigned line;
        ErrMsg *err;
        TomlValue *root;
        TomlValue *cur; /* the table that key = value lines go to */
} Parser;

const char *toml_type_to_string(TomlType t) {
        switch (t) {
        case TOML_STRING: return "string";
        case TOML_BOOL: return "boolean";
        case TOML_INT: return "integer";
        case TOML_ARRAY: return "array";
        case TOML_TABLE: return "table";
        }
        return "unknown";
}

_printf_(2, 3)
static int perr(Parser *P, const char *fmt, ...) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return errmsg_set(P->err, -EINVAL, "line %u, column %u: %s", P->line,
                          (unsigned) (P->p - P->line_start) + 1, msg);
}

TomlValue *toml_free(TomlValue *v) {
        if (!v)
                return NULL;
        switch (v->type) {
        case TOML_STRING:
                free(v->str);
                break;
        case TOML_ARRAY:
                for (size_t i = 0; i < v->n_items; i++)
                        toml_free(v->items[i]);
                free(v->items);
                break;
        case TOML_TABLE:
                for (size_t i = 0; i < v->n_keys; i++) {
                        free(v->keys[i]);
                        toml_free(v->values[i]);
                }
                free(v->keys);
                free(v->values);
                break;
        default:
                break;
        }
        free(v);
        return NULL;
}

static TomlValue *value_new(Parser *P, TomlType type) {
        TomlValue *v = calloc(1, sizeof(*v));
        if (v) {
                v->type = type;
                v->line = P ? P->line : 0;
        }
        return v;
}

const TomlValue *toml_table_get(const TomlValue *t, const char *key) {
        if (!t || t->type != TOML_TABLE)
                return NULL;
        for (size_t i = 0; i < t->n_keys; i++)
                if (strcmp(t->keys[i], key) == 0)
                        return t->values[i];
        return NULL;
}

static TomlValue *table_find(TomlValue *t, const char *key) {
        return (TomlValue *) toml_table_get(t, key);
}

/* Takes key and v (freed on failure too). */
static int table_put(Parser *P, TomlValue *t, char *key, TomlValue *v) {
        if (t->n_keys >= TOML_MAX_KEYS) {
                free(key);
                toml_free(v);
                return perr(P, "a table has more than %d keys", TOML_MAX_KEYS);
        }
        if ((t->n_keys & (t->n_keys - 1)) == 0) { /* 0, 1, 2, 4, ...: grow */
                size_t cap = t->n_keys ? t->n_keys * 2 : 1;
                char **k = realloc(t->keys, cap * sizeof(*k));
                if (k)
                        t->keys = k;
                TomlValue **vs = k ? realloc(t->values, cap * sizeof(*vs)) : NULL;
                if (!vs) {
                        free(key);
                        toml_free(v);
                        return -ENOMEM;
                }
                t->values = vs;
        }
        t->keys[t->n_keys] = key;
        t->values[t->n_keys] = v;
        t->n_keys++;
        return 0;
}

static int array_push(TomlValue *a, TomlValue *v) {
        if ((a->n_items & (a->n_items - 1)) == 0) {
                size_t cap = a->n_items ? a->n_items * 2 : 1;
                TomlValue **items = realloc(a->items, cap * sizeof(*items));
                if (!items) {
                        toml_free(v);
                        return -ENOMEM;
                }
                a->items = items;
        }
        a->items[a->n_items++] = v;
        return 0;
}

/* ---- lexing ---- */

/* Returns the offset of the first byte that is not valid UTF-8 (or a
 * NUL), or len. Overlongs, surrogates and code points past U+10FFFF are
 * invalid. */
static size_t utf8_check(const unsigned char *s, size_t len) {
        size_t i = 0;
        while (i < len) {
                unsigned char c = s[i];
                if (c == 0)
                        return i;
                if (c < 0x80) {
                        i++;
                        continue;
                }
                size_t n;
                uint32_t cp, min;
                if ((c & 0xe0) == 0xc0) {
                        n = 2, cp = c & 0x1f, min = 0x80;
                } else if ((c & 0xf0) == 0xe0) {
                        n = 3, cp = c & 0x0f, min = 0x800;
                } else if ((c & 0xf8) == 0xf0) {
                        n = 4, cp = c & 0x07, min = 0x10000;
                } else
                        return i;
                if (len - i < n)
                        return i;
                for (size_t k = 1; k < n; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return i;
                        cp = (cp << 6) | (s[i + k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return i;
                i += n;
        }
        return len;
}

static bool at_end(Parser *P) {
        return P->p >= P->end;
}

static void skip_ws(Parser *P) {
        while (!at_end(P) && (*P->p == ' ' || *P->p == '\t'))
                P->p++;
}

/* A comment runs to the end of the line; control characters other than
 * tab are not allowed in it. */
static int skip_comment(Parser *P) {
        if (at_end(P) || *P->p != '#')
                return 0;
        while (!at_end(P) && *P->p != '\n') {
                unsigned char c = (unsigned char) *P->p;
                if (c == '\r' && P->p + 1 < P->end && P->p[1] == '\n')
                        break;
                if ((c < 0x20 && c != '\t') || c == 0x7f)
                        return perr(P, "control character 0x%02x in a comment", c);
                P->p++;
        }
        return 0;
}

/* Consumes one newline (LF or CRLF) if there is one; returns 1 then. */
static int take_newline(Parser *P) {
        if (at_end(P))
                return 0;
        if (*P->p == '\n') {
                P->p++;
        } else if (*P->p == '\r' && P->p + 1 < P->end && P->p[1] == '\n') {
                P->p += 2;
        } else
                return 0;
        P->line++;
        P->line_start = P->p;
        return 1;
}

/* Whitespace, comments and newlines: inside arrays. */
static int skip_ws_nl(Parser *P) {
        for (;;) {
                skip_ws(P);
                int r = skip_comment(P);
                if (r < 0)
                        return r;
                if (!take_newline(P))
                        return 0;
        }
}

/* After a key/value pair or a header: only a comment, then the end of the line. */
static int expect_eol(Parser *P) {
        skip_ws(P);
        int r = skip_comment(P);
        if (r < 0)
                return r;
        if (at_end(P) || take_newline(P))
                return 0;
        if (*P->p == '\r')
                return perr(P, "carriage return without a line feed");
        return perr(P, "unexpected '%c' after the value (one key = value per line)", *P->p);
}

static int hex_digit(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static int utf8_put(StrBuf *b, uint32_t cp) {
        char u[4];
        size_t n;
        if (cp < 0x80) {
                u[0] = (char) cp, n = 1;
        } else if (cp < 0x800) {
                u[0] = (char) (0xc0 | (cp >> 6));
                u[1] = (char) (0x80 | (cp & 0x3f));
                n = 2;
        } else if (cp < 0x10000) {
                u[0] = (char) (0xe0 | (cp >> 12));
                u[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
                u[2] = (char) (0x80 | (cp & 0x3f));
                n = 3;
        } else {
                u[0] = (char) (0xf0 | (cp >> 18));
                u[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
                u[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
                u[3] = (char) (0x80 | (cp & 0x3f));
                n = 4;
        }
        return strbuf_append(b, u, n);
}

/* A one-line basic ("...") or literal ('...') string; P->p is on the
 * opening quote. Returns the text in *ret (owned). */
static int parse_string(Parser *P, char **ret, size_t *ret_len) {
        char q = *P->p;
        if (P->end - P->p >= 3 && P->p[1] == q && P->p[2] == q)
                return perr(P, "multi-line strings are not supported");
        P->p++;
        _cleanup_(strbuf_done) StrBuf b = {};
        int r = strbuf_reserve(&b, 16);
        if (r < 0)
                return r;
        for (;;) {
                if (at_end(P) || *P->p == '\n' || *P->p == '\r')
                        return perr(P, "unterminated string");
                unsigned char c = (unsigned char) *P->p;
                if (c == (unsigned char) q) {
                        P->p++;
                        break;
                }
                if ((c < 0x20 && c != '\t') || c == 0x7f)
                        return perr(P, "control character 0x%02x in a string (escape it)", c);
                if (c != '\\' || q == '\'') {
                        r = strbuf_putc(&b, (char) c);
                        if (r < 0)
                                return r;
                        P->p++;
                        continue;
                }
                /* an escape */
                if (P->end - P->p < 2)
                        return perr(P, "unterminated string");
                char e = P->p[1];
                char out = 0;
                switch (e) {
                case 'b': out = '\b'; break;
                case 't': out = '\t'; break;
                case 'n': out = '\n'; break;
                case 'f': out = '\f'; break;
                case 'r': out = '\r'; break;
                case '"': out = '"'; break;
                case '\\': out = '\\'; break;
                case 'u':
                case 'U': {
                        int digits = e == 'u' ? 4 : 8;
                        if (P->end - P->p < 2 + digits)
                                return perr(P, "\\%c escape needs %d hex digits", e, digits);
                        uint32_t cp = 0;
                        for (int i = 0; i < digits; i++) {
                                int h = hex_digit(P->p[2 + i]);
                                if (h < 0)
                                        return perr(P, "\\%c escape needs %d hex digits", e, digits);
                                cp = (cp << 4) | (uint32_t) h;
                        }
                        if (cp == 0)
                                return perr(P, "\\u0000 is not allowed here");
                        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                                return perr(P, "\\%c escape is not a Unicode scalar value", e);
                        r = utf8_put(&b, cp);
                        if (r < 0)
                                return r;
                        P->p += 2 + digits;
                        continue;
                }
                default:
                        if ((unsigned char) e < 0x20 || (unsigned char) e >= 0x7f)
                                return perr(P, "invalid escape sequence");
                        return perr(P, "invalid escape sequence \\%c", e);
                }
                r = strbuf_putc(&b, out);
                if (r < 0)
                        return r;
                P->p += 2;
        }
        r = strbuf_putc(&b, 0);
        if (r < 0)
                return r;
        *ret_len = b.len - 1;
        *ret = strbuf_steal(&b, NULL);
        return 0;
}

static bool is_bare(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int parse_simple_key(Parser *P, char **ret) {
        if (at_end(P))
                return perr(P, "expected a key");
        if (*P->p == '"' || *P->p == '\'') {
                size_t len;
                int r = parse_string(P, ret, &len);
                if (r < 0)
                        return r;
                return 0;
        }
        const char *s = P->p;
        while (!at_end(P) && is_bare(*P->p))
                P->p++;
        if (P->p == s) {
                if (*P->p == '\n' || *P->p == '\r')
                        return perr(P, "expected a key, got the end of the line");
                return perr(P, "expected a key, got '%c'", *P->p);
        }
        *ret = strndup(s, (size_t) (P->p - s));
        return *ret ? 0 : -ENOMEM;
}

typedef struct Key {
        char *parts[TOML_MAX_DEPTH];
        size_t n;
} Key;

static void key_done(Key *k) {
        for (size_t i = 0; i < k->n; i++)
                free(k->parts[i]);
        k->n = 0;
}

/* simple-key *( ws "." ws simple-key ) */
static int parse_key(Parser *P, Key *k) {
        for (;;) {
                if (k->n >= TOML_MAX_DEPTH)
                        return perr(P, "a key has more than %d parts", TOML_MAX_DEPTH);
                int r = parse_simple_key(P, &k->parts[k->n]);
                if (r < 0)
                        return r;
                k->n++;
                skip_ws(P);
                if (at_end(P) || *P->p != '.')
                        return 0;
                P->p++;
                skip_ws(P);
        }
}

/* Walks (creating) the tables for parts[0..n) below t; dotted says the
 * walk is for a dotted key (a.b = 1) rather than a [header]. */
static int walk_tables(Parser *P, TomlValue *t, Key *k, size_t n, bool dotted, TomlValue **ret) {
        for (size_t i = 0; i < n; i++) {
                TomlValue *next = table_find(t, k->parts[i]);
                if (!next) {
                        next = value_new(P, TOML_TABLE);
                        if (!next)
                                return -ENOMEM;
                        next->dotted = dotted;
                        char *key = strdup(k->parts[i]);
                        if (!key) {
                                toml_free(next);
                                return -ENOMEM;
                        }
                        int r = table_put(P, t, key, next);
                        if (r < 0)
                                return r;
                } else if (next->type != TOML_TABLE) {
                        return perr(P, "key \"%s\" is not a table (it is the %s defined on line %u)",
                                    k->parts[i], toml_type_to_string(next->type), next->line);
                } else if (next->inline_table) {
                        return perr(P, "table \"%s\" is an inline table (line %u) and cannot be extended",
                                    k->parts[i], next->line);
                } else if (dotted && next->explicit_header) {
                        return perr(P, "table \"%s\" was defined by a [header] (line %u); a dotted key cannot add to it",
                                    k->parts[i], next->line);
                }
                t = next;
        }
        *ret = t;
        return 0;
}

static int parse_value(Parser *P, unsigned depth, TomlValue **ret);

/* key = value into table t (the current table, or an inline table). */
static int parse_keyval(Parser *P, TomlValue *t, unsigned depth) {
        _cleanup_(key_done) Key k = {};
        int r = parse_key(P, &k);
        if (r < 0)
                return r;
        skip_ws(P);
        if (at_end(P) || *P->p != '=')
                return perr(P, "expected '=' after the key \"%s\"", k.parts[k.n - 1]);
        P->p++;
        skip_ws(P);
        TomlValue *dest;
        r = walk_tables(P, t, &k, k.n - 1, true, &dest);
        if (r < 0)
                return r;
        const char *last = k.parts[k.n - 1];
        const TomlValue *old = table_find(dest, last);
        if (old)
                return perr(P, "duplicate key \"%s\" (first defined on line %u)", last, old->line);
        TomlValue *v;
        r = parse_value(P, depth, &v);
        if (r < 0)
                return r;
        char *key = k.parts[--k.n];
        return table_put(P, dest, key, v);
}

static int parse_integer(Parser *P, TomlValue **ret) {
        const char *s = P->p;
        bool neg = false;
        if (*P->p == '+' || *P->p == '-') {
                neg = *P->p == '-';
                P->p++;
        }
        if (P->end - P->p >= 3 && (strncmp(P->p, "inf", 3) == 0 || strncmp(P->p, "nan", 3) == 0))
                return perr(P, "floats are not supported");
        if (P->end - P->p >= 2 && P->p[0] == '0' && (P->p[1] == 'x' || P->p[1] == 'o' || P->p[1] == 'b'))
                return perr(P, "hexadecimal, octal and binary integers are not supported");
        uint64_t v = 0, limit = neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
        size_t digits = 0;
        bool prev_digit = false;
        const char *first = P->p;
        while (!at_end(P)) {
                char c = *P->p;
                if (c == '_') {
                        if (!prev_digit || P->p + 1 >= P->end || P->p[1] < '0' || P->p[1] > '9')
                                return perr(P, "'_' in an integer must sit between digits");
                        prev_digit = false;
                        P->p++;
                        continue;
                }
                if (c < '0' || c > '9')
                        break;
                if (v > (limit - (uint64_t) (c - '0')) / 10)
                        return perr(P, "integer out of the 64-bit range");
                v = v * 10 + (uint64_t) (c - '0');
                digits++;
                prev_digit = true;
                P->p++;
        }
        if (digits == 0) {
                P->p = s;
                return perr(P, "expected a value");
        }
        if (!at_end(P) && (*P->p == '.' || *P->p == 'e' || *P->p == 'E'))
                return perr(P, "floats are not supported");
        if (!at_end(P) && (*P->p == ':' || *P->p == '-' || *P->p == 'T'))
                return perr(P, "dates and times are not supported");
        if (*first == '0' && digits > 1)
                return perr(P, "integers must not have leading zeros");
        TomlValue *val = value_new(P, TOML_INT);
        if (!val)
                return -ENOMEM;
        val->integer = neg ? (int64_t) (0 - v) : (int64_t) v;
        *ret = val;
        return 0;
}

static bool word_at(Parser *P, const char *w) {
        size_t n = strlen(w);
        if ((size_t) (P->end - P->p) < n || strncmp(P->p, w, n) != 0)
                return false;
        return P->p + n == P->end || !is_bare(P->p[n]);
}

static int parse_array(Parser *P, unsigned depth, TomlValue **ret) {
        P->p++; /* [ */
        _cleanup_(toml_freep) TomlValue *a = value_new(P, TOML_ARRAY);
        if (!a)
                return -ENOMEM;
        for (;;) {
                int r = skip_ws_nl(P);
                if (r < 0)
                        return r;
                if (at_end(P))
                        return perr(P, "unterminated array (opened on line %u)", a->line);
                if (*P->p == ']') {
                        P->p++;
                        break;
                }
                TomlValue *v;
                r = parse_value(P, depth + 1, &v);
                if (r < 0)
                        return r;
                r = array_push(a, v);
                if (r < 0)
                        return r;
                r = skip_ws_nl(P);
                if (r < 0)
                        return r;
                if (at_end(P))
                        return perr(P, "unterminated array (opened on line %u)", a->line);
                if (*P->p == ',') {
                        P->p++;
                        continue;
                }
                if (*P->p == ']') {
                        P->p++;
                        break;
                }
                return perr(P, "expected ',' or ']' in an array, got '%c'", *P->p);
        }
        *ret = TAKE_PTR(a);
        return 0;
}

static int parse_inline_table(Parser *P, unsigned depth, TomlValue **ret) {
        P->p++; /* { */
        _cleanup_(toml_freep) TomlValue *t = value_new(P, TOML_TABLE);
        if (!t)
                return -ENOMEM;
        skip_ws(P);
        if (!at_end(P) && *P->p == '}') {
                P->p++;
        } else
                for (;;) {
                        skip_ws(P);
                        int r = parse_keyval(P, t, depth + 1);
                        if (r < 0)
                                return r;
                        skip_ws(P);
                        if (at_end(P) || *P->p == '\n' || *P->p == '\r')
                                return perr(P, "unterminated inline table (newlines are not allowed inside { })");
                        if (*P->p == ',') {
                                P->p++;
                                skip_ws(P);
                                if (!at_end(P) && *P->p == '}')
                                        return perr(P, "trailing comma in an inline table");
                                continue;
                        }
                        if (*P->p == '}') {
                                P->p++;
                                break;
                        }
                        return perr(P, "expected ',' or '}' in an inline table, got '%c'", *P->p);
                }
        /* closed for good, and so is everything defined inside it */
        t->inline_table = true;
        for (size_t i = 0; i < t->n_keys; i++)
                if (t->values[i]->type == TOML_TABLE)
                        t->values[i]->inline_table = true;
        *ret = TAKE_PTR(t);
        return 0;
}

static int parse_value(Parser *P, unsigned depth, TomlValue **ret) {
        if (depth >= TOML_MAX_DEPTH)
                return perr(P, "values nested more than %d deep", TOML_MAX_DEPTH);
        if (at_end(P) || *P->p == '\n' || *P->p == '\r' || *P->p == '#')
                return perr(P, "expected a value");
        char c = *P->p;
        if (c == '"' || c == '\'') {
                TomlValue *v = value_new(P, TOML_STRING);
                if (!v)
                        return -ENOMEM;
                int r = parse_string(P, &v->str, &v->len);
                if (r < 0) {
                        toml_free(v);
                        return r;
                }
                *ret = v;
                return 0;
        }
        if (word_at(P, "true") || word_at(P, "false")) {
                TomlValue *v = value_new(P, TOML_BOOL);
                if (!v)
                        return -ENOMEM;
                v->boolean = c == 't';
                P->p += v->boolean ? 4 : 5;
                *ret = v;
                return 0;
        }
        if (c == '[')
                return parse_array(P, depth, ret);
        if (c == '{')
                return parse_inline_table(P, depth, ret);
        if ((c >= '0' && c <= '9') || c == '+' || c == '-')
                return parse_integer(P, ret);
        if (word_at(P, "inf") || word_at(P, "nan"))
                return perr(P, "floats are not supported");
        return perr(P, "expected a value (string, boolean, integer, array or inline table)");
}

static int parse_header(Parser *P) {
        P->p++; /* [ */
        if (!at_end(P) && *P->p == '[')
                return perr(P, "arrays of tables ([[...]]) are not supported");
        skip_ws(P);
        _cleanup_(key_done) Key k = {};
        int r = parse_key(P, &k);
        if (r < 0)
                return r;
        skip_ws(P);
        if (at_end(P) || *P->p != ']')
                return perr(P, "expected ']' to close the table header");
        P->p++;
        TomlValue *parent;
        r = walk_tables(P, P->root, &k, k.n - 1, false, &parent);
        if (r < 0)
                return r;
        const char *last = k.parts[k.n - 1];
        TomlValue *t = table_find(parent, last);
        if (t) {
                if (t->type != TOML_TABLE)
                        return perr(P, "key \"%s\" is not a table (it is the %s defined on line %u)", last,
                                    toml_type_to_string(t->type), t->line);
                if (t->explicit_header || t->inline_table || t->dotted)
                        return perr(P, "table \"%s\" is defined twice (first on line %u)", last, t->line);
                t->explicit_header = true;
                t->line = P->line;
        } else {
                t = value_new(P, TOML_TABLE);
                if (!t)
                        return -ENOMEM;
                t->explicit_header = true;
                char *key = k.parts[--k.n];
                r = table_put(P, parent, key, t);
                if (r < 0)
                        return r;
        }
        P->cur = t;
        return 0;
}

int toml_parse(const char *data, size_t len, TomlValue **ret, ErrMsg *err) {
        if (len > TOML_MAX_SIZE)
                return errmsg_set(err, -EFBIG, "TOML document is larger than %u bytes", TOML_MAX_SIZE);
        Parser P = {
                .p = data,
                .end = data + len,
                .line_start = data,
                .line = 1,
                .err = err,
        };
        size_t bad = utf8_check((const unsigned char *) data, len);
        if (bad < len) {
                unsigned line = 1;
                const char *ls = data;
                for (size_t i = 0; i < bad; i++)
                        if (data[i] == '\n')
                                line++, ls = data + i + 1;
                const char *what = data[bad] == 0 ? "a NUL byte" : "invalid UTF-8";
                return errmsg_set(err, -EINVAL, "line %u, column %u: %s", line, (unsigned) (data + bad - ls) + 1,
                                  what);
        }
        _cleanup_(toml_freep) TomlValue *root = value_new(NULL, TOML_TABLE);
        if (!root)
                return -ENOMEM;
        root->explicit_header = true;
        P.root = P.cur = root;

        /* a UTF-8 byte order mark is allowed before anything else */
        if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
                P.p += 3;

        while (!at_end(&P)) {
                skip_ws(&P);
                int r = skip_comment(&P);
                if (r < 0)
                        return r;
                if (at_end(&P))
                        break;
                if (take_newline(&P))
                        continue;
                if (*P.p == '\r')
                        return perr(&P, "carriage return without a line feed");
                if (*P.p == '[')
                        r = parse_header(&P);
                else
                        r = parse_keyval(&P, P.cur, 0);
                if (r < 0)
                        return r;
                r = expect_eol(&P);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(root);
        return 0;
}
