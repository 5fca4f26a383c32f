/* containerd's filter language (worker/snapshotter/filter.h): a scanner
 * and a recursive-descent parser that follow containerd's filters package
 * token for token (including its quirks: the lookahead after a selector
 * is the raw next byte, so "a==b ,c" is an error there and here), and a
 * matcher over a caller's field lookup.
 *
 * Every loop advances through the input or the parsed arrays, so parsing
 * is linear in the input and matching linear in the selectors. Regular
 * expressions are compiled at parse time; one that does not compile never
 * matches (containerd compiles lazily and logs). Patterns are capped at
 * SNAP_FILTER_REGEX_MAX bytes and back-references (a glibc extension to
 * ERE with exponential worst cases) are refused. */
#include "worker/snapshotter/filter.h"

#include <errno.h>
#include <regex.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/macro.h"

typedef enum Op {
        OP_PRESENT,
        OP_EQUAL,
        OP_NOT_EQUAL,
        OP_MATCHES,
} Op;

typedef struct Selector {
        char **path;  /* owned, each owned */
        size_t n_path;
        Op op;
        char *value;  /* owned; NULL for OP_PRESENT */
        regex_t re;   /* OP_MATCHES with re_ok */
        bool re_ok;
} Selector;

typedef struct Conjunction {
        Selector *sel; /* owned */
        size_t n;
} Conjunction;

struct SnapFilter {
        Conjunction *any; /* owned; no entries: always matches */
        size_t n;
};

enum {
        TOK_EOF,
        TOK_QUOTED,
        TOK_VALUE,
        TOK_FIELD,
        TOK_SEPARATOR,
        TOK_OPERATOR,
        TOK_ILLEGAL,
        TOK_OTHER,
};

typedef struct Scanner {
        const char *in;
        size_t len;
        size_t pos;
        bool value;      /* the next plain token is a value */
        const char *err; /* the scanner's first error, static */
} Scanner;

static bool is_field_char(unsigned char c) {
        return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_quote_char(unsigned char c) {
        return c == '/' || c == '|' || c == '"';
}

static bool is_space_char(unsigned char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Go's unicode.IsGraphic/IsPunct/... for ASCII: printable, not space;
 * bytes of multibyte UTF-8 sequences count as value characters. */
static bool is_value_char(unsigned char c) {
        if (c == ',' || is_space_char(c))
                return false;
        return c >= 0x80 || (c > 0x20 && c < 0x7f);
}

static int hexval(unsigned char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return 16;
}

static void scan_error(Scanner *s, const char *msg) {
        if (!s->err)
                s->err = msg;
}

/* After a backslash at s->pos - 1: checks one escape as the scanner does
 * (the unquoting below interprets it). */
static bool scan_escape(Scanner *s, unsigned char quote) {
        if (s->pos >= s->len) {
                scan_error(s, "illegal escape sequence");
                return false;
        }
        unsigned char c = (unsigned char) s->in[s->pos++];
        int base, n;
        switch (c) {
        case 'a': case 'b': case 'f': case 'n': case 'r': case 't': case 'v': case '\\':
                return true;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
                base = 8, n = 2; /* the first digit is c */
                break;
        case 'x':
                base = 16, n = 2;
                break;
        case 'u':
                base = 16, n = 4;
                break;
        case 'U':
                base = 16, n = 8;
                break;
        default:
                if (c == quote)
                        return true;
                scan_error(s, "illegal escape sequence");
                return false;
        }
        for (; n > 0 && s->pos < s->len && hexval((unsigned char) s->in[s->pos]) < base; n--)
                s->pos++;
        if (n > 0) {
                scan_error(s, "illegal numeric escape sequence");
                return false;
        }
        return true;
}

/* The opening quote is at s->pos - 1. */
static bool scan_quoted(Scanner *s, unsigned char quote) {
        bool legal = true;
        for (;;) {
                if (s->pos >= s->len || s->in[s->pos] == '\n') {
                        scan_error(s, "quoted literal not terminated");
                        return false;
                }
                unsigned char c = (unsigned char) s->in[s->pos++];
                if (c == quote)
                        return legal;
                if (c == '\\' && !scan_escape(s, quote))
                        legal = false;
        }
}

static int scan(Scanner *s, size_t *ret_start) {
        while (s->pos < s->len && is_space_char((unsigned char) s->in[s->pos]))
                s->pos++;
        *ret_start = s->pos;
        if (s->pos >= s->len)
                return TOK_EOF;
        unsigned char c = (unsigned char) s->in[s->pos++];
        if (is_quote_char(c))
                return scan_quoted(s, c) ? TOK_QUOTED : TOK_ILLEGAL;
        if (c == ',' || c == '.') {
                s->value = false;
                return TOK_SEPARATOR;
        }
        if (c == '=' || c == '!' || c == '~') {
                while (s->pos < s->len && strchr("=!~", s->in[s->pos]))
                        s->pos++;
                s->value = true;
                return TOK_OPERATOR;
        }
        if (s->value) {
                while (s->pos < s->len && is_value_char((unsigned char) s->in[s->pos]))
                        s->pos++;
                s->value = false;
                return TOK_VALUE;
        }
        if (is_field_char(c)) {
                while (s->pos < s->len && is_field_char((unsigned char) s->in[s->pos]))
                        s->pos++;
                return TOK_FIELD;
        }
        return TOK_OTHER;
}

/* The raw next byte, or -1 at the end. */
static int peek(const Scanner *s) {
        return s->pos < s->len ? (unsigned char) s->in[s->pos] : -1;
}

static void put_utf8(char *out, size_t *o, uint32_t r) {
        if (r < 0x80)
                out[(*o)++] = (char) r;
        else if (r < 0x800) {
                out[(*o)++] = (char) (0xc0 | (r >> 6));
                out[(*o)++] = (char) (0x80 | (r & 0x3f));
        } else if (r < 0x10000) {
                out[(*o)++] = (char) (0xe0 | (r >> 12));
                out[(*o)++] = (char) (0x80 | ((r >> 6) & 0x3f));
                out[(*o)++] = (char) (0x80 | (r & 0x3f));
        } else {
                out[(*o)++] = (char) (0xf0 | (r >> 18));
                out[(*o)++] = (char) (0x80 | ((r >> 12) & 0x3f));
                out[(*o)++] = (char) (0x80 | ((r >> 6) & 0x3f));
                out[(*o)++] = (char) (0x80 | (r & 0x3f));
        }
}

/* Unquotes s[0..len) (quotes included) into a new string. A decoded NUL
 * is refused: every string here is a C string. */
static int unquote(const char *s, size_t len, bool allow_alt, char **ret) {
        if (len < 2 || s[0] != s[len - 1])
                return -EINVAL;
        unsigned char quote = (unsigned char) s[0];
        if (quote != '"' && !(allow_alt && (quote == '/' || quote == '|')))
                return -EINVAL;
        s++;
        len -= 2;
        /* Escapes only shrink, except \uXXXX (6 bytes -> at most 3) and
         * \UXXXXXXXX (10 -> 4): len + 1 is enough. */
        char *out = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < len;) {
                unsigned char c = (unsigned char) s[i];
                if (c == quote || c == '\n')
                        goto bad;
                if (c != '\\') {
                        out[o++] = (char) c;
                        i++;
                        continue;
                }
                if (i + 1 >= len)
                        goto bad;
                c = (unsigned char) s[i + 1];
                i += 2;
                uint32_t v = 0;
                int n = 0;
                switch (c) {
                case 'a': v = '\a'; break;
                case 'b': v = '\b'; break;
                case 'f': v = '\f'; break;
                case 'n': v = '\n'; break;
                case 'r': v = '\r'; break;
                case 't': v = '\t'; break;
                case 'v': v = '\v'; break;
                case '\\': v = '\\'; break;
                case 'x': n = 2; break;
                case 'u': n = 4; break;
                case 'U': n = 8; break;
                case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
                        if (i + 2 > len)
                                goto bad;
                        v = c - '0';
                        for (int j = 0; j < 2; j++) {
                                unsigned char d = (unsigned char) s[i + j];
                                if (d < '0' || d > '7')
                                        goto bad;
                                v = (v << 3) | (d - '0');
                        }
                        i += 2;
                        if (v > 255)
                                goto bad;
                        break;
                case '"': case '|': case '/':
                        if (c != quote)
                                goto bad;
                        v = c;
                        break;
                default:
                        goto bad;
                }
                if (n > 0) {
                        if (i + (size_t) n > len)
                                goto bad;
                        for (int j = 0; j < n; j++) {
                                int h = hexval((unsigned char) s[i + j]);
                                if (h >= 16)
                                        goto bad;
                                v = (v << 4) | (uint32_t) h;
                        }
                        i += (size_t) n;
                        if (c == 'x') {
                                /* one byte, possibly not UTF-8 */
                                if (v == 0)
                                        goto bad;
                                out[o++] = (char) v;
                                continue;
                        }
                        if (v > 0x10ffff || (v >= 0xd800 && v < 0xe000))
                                goto bad;
                        if (v == 0)
                                goto bad;
                        put_utf8(out, &o, v);
                        continue;
                }
                if (v == 0)
                        goto bad;
                out[o++] = (char) v;
        }
        out[o] = 0;
        *ret = out;
        return 0;
bad:
        free(out);
        return -EINVAL;
}

static void selector_done(Selector *sel) {
        for (size_t i = 0; i < sel->n_path; i++)
                free(sel->path[i]);
        free(sel->path);
        free(sel->value);
        if (sel->re_ok)
                regfree(&sel->re);
        *sel = (Selector) {};
}

SnapFilter *snap_filter_free(SnapFilter *f) {
        if (!f)
                return NULL;
        for (size_t i = 0; i < f->n; i++) {
                for (size_t j = 0; j < f->any[i].n; j++)
                        selector_done(&f->any[i].sel[j]);
                free(f->any[i].sel);
        }
        free(f->any);
        free(f);
        return NULL;
}

typedef struct Parser {
        Scanner s;
        ErrMsg *err;
} Parser;

static int parse_error(Parser *p, size_t pos, const char *msg) {
        return errmsg_set(p->err, -EINVAL, "filter \"%.*s\": parse error at byte %zu: %s",
                          (int) MIN(p->s.len, (size_t) 200), p->s.in, pos, msg);
}

static int parse_field(Parser *p, char **ret) {
        size_t start;
        int tok = scan(&p->s, &start);
        if (tok == TOK_FIELD) {
                char *f = strndup(p->s.in + start, p->s.pos - start);
                if (!f)
                        return -ENOMEM;
                *ret = f;
                return 0;
        }
        if (tok == TOK_QUOTED) {
                int r = unquote(p->s.in + start, p->s.pos - start, false, ret);
                if (r == -EINVAL)
                        return parse_error(p, start, "unquoting failed");
                return r;
        }
        if (tok == TOK_ILLEGAL)
                return parse_error(p, start, p->s.err ? p->s.err : "illegal token");
        return parse_error(p, start, "expected field or quoted");
}

/* Refuses patterns that make glibc's regcomp() blow up. It expands "X+"
 * to "XX*" and intervals "X{n,m}" to copies of X, so a quantifier on a
 * group that holds a quantifier doubles its size per level of nesting
 * ("((a+)+)+..." exhausts memory within 256 bytes), and intervals
 * multiply. Accepted: literals, ".", "^", "$", bracket expressions,
 * "|", groups, and one "*", "+" or "?" after an atom or after a group
 * without quantifiers inside; no intervals, no back-references. The
 * compiled size is then linear in the pattern. */
#define REGEX_GROUPS_MAX 16

static bool regex_acceptable(const char *re) {
        size_t len = strlen(re);
        if (len > SNAP_FILTER_REGEX_MAX)
                return false;
        bool group_quantified[REGEX_GROUPS_MAX + 1] = { false };
        size_t depth = 0;
        enum { PREV_NONE, PREV_ATOM, PREV_QUANT, PREV_GROUP_PLAIN, PREV_GROUP_QUANT } prev = PREV_NONE;
        for (size_t i = 0; i < len; i++) {
                char c = re[i];
                switch (c) {
                case '\\':
                        if (i + 1 >= len || (re[i + 1] >= '1' && re[i + 1] <= '9'))
                                return false;
                        i++;
                        prev = PREV_ATOM;
                        break;
                case '[': {
                        /* to the closing "]": a "]" first (after an
                         * optional "^") is a member; "[:class:]" inside */
                        size_t k = i + 1;
                        if (k < len && re[k] == '^')
                                k++;
                        if (k < len && re[k] == ']')
                                k++;
                        while (k < len && re[k] != ']') { /* bounded by len */
                                if (re[k] == '[' && k + 1 < len && (re[k + 1] == ':' || re[k + 1] == '.' || re[k + 1] == '=')) {
                                        const char *end = strstr(re + k + 2, (char[]) { re[k + 1], ']', 0 });
                                        if (!end)
                                                return false;
                                        k = (size_t) (end - re) + 2;
                                        continue;
                                }
                                k++;
                        }
                        if (k >= len)
                                return false;
                        i = k;
                        prev = PREV_ATOM;
                        break;
                }
                case '{':
                        return false;
                case '(':
                        if (depth == REGEX_GROUPS_MAX)
                                return false;
                        group_quantified[++depth] = false;
                        prev = PREV_NONE;
                        break;
                case ')':
                        if (depth == 0)
                                return false;
                        prev = group_quantified[depth] ? PREV_GROUP_QUANT : PREV_GROUP_PLAIN;
                        depth--;
                        if (prev == PREV_GROUP_QUANT)
                                group_quantified[depth] = true;
                        break;
                case '*':
                case '+':
                case '?':
                        if (prev != PREV_ATOM && prev != PREV_GROUP_PLAIN)
                                return false;
                        group_quantified[depth] = true;
                        prev = PREV_QUANT;
                        break;
                case '|':
                        prev = PREV_NONE;
                        break;
                default:
                        prev = PREV_ATOM;
                        break;
                }
        }
        return depth == 0;
}

static int parse_selector(Parser *p, Selector *sel) {
        /* fieldpath */
        for (;;) {
                char *f = NULL;
                int r = parse_field(p, &f);
                if (r < 0)
                        return r;
                char **path = realloc(sel->path, (sel->n_path + 1) * sizeof(*path));
                if (!path) {
                        free(f);
                        return -ENOMEM;
                }
                sel->path = path;
                sel->path[sel->n_path++] = f;
                if (peek(&p->s) != '.')
                        break;
                p->s.pos++; /* the separator */
                p->s.value = false;
        }

        int c = peek(&p->s);
        if (c == ',' || c == '.' || c < 0) {
                sel->op = OP_PRESENT;
                return 0;
        }

        size_t start;
        int tok = scan(&p->s, &start);
        if (tok == TOK_ILLEGAL)
                return parse_error(p, start, p->s.err ? p->s.err : "illegal token");
        if (tok != TOK_OPERATOR)
                return parse_error(p, start, "expected an operator (\"==\"|\"!=\"|\"~=\")");
        size_t oplen = p->s.pos - start;
        const char *op = p->s.in + start;
        if (oplen == 2 && memcmp(op, "==", 2) == 0)
                sel->op = OP_EQUAL;
        else if (oplen == 2 && memcmp(op, "!=", 2) == 0)
                sel->op = OP_NOT_EQUAL;
        else if (oplen == 2 && memcmp(op, "~=", 2) == 0)
                sel->op = OP_MATCHES;
        else
                return parse_error(p, start, "unsupported operator");

        tok = scan(&p->s, &start);
        if (tok == TOK_VALUE || tok == TOK_FIELD) {
                sel->value = strndup(p->s.in + start, p->s.pos - start);
                if (!sel->value)
                        return -ENOMEM;
        } else if (tok == TOK_QUOTED) {
                int r = unquote(p->s.in + start, p->s.pos - start, sel->op == OP_MATCHES, &sel->value);
                if (r == -EINVAL)
                        return parse_error(p, start, "unquoting failed");
                if (r < 0)
                        return r;
        } else if (tok == TOK_ILLEGAL)
                return parse_error(p, start, p->s.err ? p->s.err : "illegal token");
        else if (tok == TOK_EOF)
                return parse_error(p, start, "unexpected end of input");
        else
                return parse_error(p, start, "expected value or quoted");

        if (sel->op == OP_MATCHES) {
                if (!regex_acceptable(sel->value))
                        return parse_error(p, start, "regular expression not supported (over 256 bytes, intervals, "
                                                     "back-references, or nested quantifiers)");
                sel->re_ok = regcomp(&sel->re, sel->value, REG_EXTENDED | REG_NOSUB) == 0;
        }
        return 0;
}

static int parse_one(const char *in, Conjunction *ret, ErrMsg *err) {
        Parser p = { .s = { .in = in, .len = strlen(in) }, .err = err };
        Conjunction c = {};
        int r;
        for (;;) {
                Selector *sel = realloc(c.sel, (c.n + 1) * sizeof(*sel));
                if (!sel) {
                        r = -ENOMEM;
                        goto fail;
                }
                c.sel = sel;
                c.sel[c.n] = (Selector) {};
                r = parse_selector(&p, &c.sel[c.n]);
                c.n++;
                if (r < 0)
                        goto fail;
                int ch = peek(&p.s);
                if (ch < 0)
                        break;
                if (ch != ',') {
                        r = parse_error(&p, p.s.pos, "unexpected input");
                        goto fail;
                }
                p.s.pos++;
                p.s.value = false;
        }
        *ret = c;
        return 0;
fail:
        for (size_t i = 0; i < c.n; i++)
                selector_done(&c.sel[i]);
        free(c.sel);
        return r;
}

int snap_filter_parse(const char *const *strings, size_t n, SnapFilter **ret, ErrMsg *err) {
        if (n > SNAP_FILTER_STRINGS_MAX)
                return errmsg_set(err, -E2BIG, "%zu filters, at most %d", n, SNAP_FILTER_STRINGS_MAX);
        SnapFilter *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (strlen(strings[i]) > SNAP_FILTER_STRING_MAX) {
                        snap_filter_free(f);
                        return errmsg_set(err, -E2BIG, "filter of %zu bytes, at most %d",
                                          strlen(strings[i]), SNAP_FILTER_STRING_MAX);
                }
                /* containerd: an empty string always matches */
                if (!strings[i][0]) {
                        for (size_t j = 0; j < f->n; j++) {
                                for (size_t k = 0; k < f->any[j].n; k++)
                                        selector_done(&f->any[j].sel[k]);
                                free(f->any[j].sel);
                        }
                        free(f->any);
                        f->any = NULL;
                        f->n = 0;
                        break;
                }
                Conjunction *any = realloc(f->any, (f->n + 1) * sizeof(*any));
                if (!any) {
                        snap_filter_free(f);
                        return -ENOMEM;
                }
                f->any = any;
                int r = parse_one(strings[i], &f->any[f->n], err);
                if (r < 0) {
                        snap_filter_free(f);
                        return r;
                }
                f->n++;
        }
        *ret = f;
        return 0;
}

static bool selector_match(const Selector *sel, SnapFilterLookup lookup, void *userdata) {
        const char *v = NULL;
        bool present = lookup(userdata, sel->path, sel->n_path, &v);
        if (!present)
                v = "";
        switch (sel->op) {
        case OP_PRESENT:
                return present;
        case OP_EQUAL:
                return present && strcmp(v, sel->value) == 0;
        case OP_NOT_EQUAL:
                return strcmp(v, sel->value) != 0;
        case OP_MATCHES:
                return sel->re_ok && regexec(&sel->re, v, 0, NULL, 0) == 0;
        }
        return false;
}

bool snap_filter_match(const SnapFilter *f, SnapFilterLookup lookup, void *userdata) {
        if (!f || f->n == 0)
                return true;
        for (size_t i = 0; i < f->n; i++) {
                bool all = true;
                for (size_t j = 0; j < f->any[i].n && all; j++)
                        all = selector_match(&f->any[i].sel[j], lookup, userdata);
                if (all)
                        return true;
        }
        return false;
}
