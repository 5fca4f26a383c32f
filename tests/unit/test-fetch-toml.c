/* Tests of worker/fetch/toml: the TOML subset of hosts.toml (tables,
 * dotted and quoted keys, strings with escapes, booleans, integers,
 * arrays, inline tables, comments), key order, and clear errors with
 * line and column for everything outside the subset or outside TOML. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util/strbuf.h"
#include "tests/unit/tap.h"
#include "worker/fetch/toml.h"

static TomlValue *parse_ok(const char *text, const char *what) {
        TomlValue *v = NULL;
        ErrMsg err = {};
        int r = toml_parse(text, strlen(text), &v, &err);
        if (!is_int(r, 0, "parse: %s", what))
                diag("%s", err.text);
        return v;
}

static void parse_bad(const char *text, const char *msg) {
        TomlValue *v = (TomlValue *) 0x1;
        ErrMsg err = {};
        int r = toml_parse(text, strlen(text), &v, &err);
        is_int(r, -EINVAL, "refuse: %s", msg);
        has_str(err.text, msg, "  message");
        ok(v == (TomlValue *) 0x1, "  *ret untouched");
}

static const TomlValue *get(const TomlValue *t, const char *k) {
        return toml_table_get(t, k);
}

int main(void) {
        TomlValue *v = parse_ok(
                "# containerd hosts.toml\n"
                "server = \"https://registry-1.docker.io\"   # the server\n"
                "\n"
                "[host.\"http://127.0.0.1:5001\"]\n"
                "  capabilities = [\"pull\", \"resolve\"]\n"
                "  skip_verify = true\n"
                "  ca = [ \"/a.pem\",\n"
                "         \"b.pem\", # trailing comma next\n"
                "       ]\n"
                "\n"
                "[host.\"https://mirror.example\"]\n"
                "  override_path = false\n"
                "  [host.\"https://mirror.example\".header]\n"
                "    x-a = \"1\"\n"
                "    x-b = [\"2\", '3']\n",
                "a containerd hosts.toml");
        const TomlValue *s = get(v, "server");
        ok(s && s->type == TOML_STRING && strcmp(s->str, "https://registry-1.docker.io") == 0, "server string");
        const TomlValue *hosts = get(v, "host");
        ok(hosts && hosts->type == TOML_TABLE && hosts->n_keys == 2, "two host tables");
        is_str(hosts->keys[0], "http://127.0.0.1:5001", "file order kept: first");
        is_str(hosts->keys[1], "https://mirror.example", "file order kept: second");
        const TomlValue *h0 = hosts->values[0];
        const TomlValue *caps = get(h0, "capabilities");
        ok(caps && caps->type == TOML_ARRAY && caps->n_items == 2 && strcmp(caps->items[1]->str, "resolve") == 0,
           "capabilities array");
        ok(get(h0, "skip_verify")->type == TOML_BOOL && get(h0, "skip_verify")->boolean, "skip_verify true");
        is_int(get(h0, "ca")->n_items, 2, "multi-line array with comment and trailing comma");
        is_int(get(h0, "ca")->line, 7, "line numbers");
        const TomlValue *hdr = get(hosts->values[1], "header");
        ok(hdr && hdr->type == TOML_TABLE && hdr->n_keys == 2, "sub-table header");
        is_str(get(hdr, "x-b")->items[1]->str, "3", "literal string in array");
        toml_free(v);

        v = parse_ok("a = \"tab\\there \\\"q\\\" \\\\ \\u00e9 \\U0001F600\"\nb = 'C:\\path\\n'\n", "escapes");
        is_str(get(v, "a")->str, "tab\there \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80", "basic string escapes");
        is_str(get(v, "b")->str, "C:\\path\\n", "literal string keeps backslashes");
        toml_free(v);

        v = parse_ok("i = 42\nj = -17\nk = +1_000\nz = 0\nmax = 9223372036854775807\nmin = -9223372036854775808\n",
                     "integers");
        is_int(get(v, "i")->integer, 42, "42");
        is_int(get(v, "j")->integer, -17, "-17");
        is_int(get(v, "k")->integer, 1000, "+1_000");
        is_int(get(v, "z")->integer, 0, "0");
        ok(get(v, "max")->integer == INT64_MAX, "INT64_MAX");
        ok(get(v, "min")->integer == INT64_MIN, "INT64_MIN");
        toml_free(v);

        v = parse_ok("a.b.c = 1\na.b.d = 2\n\"q.k\" = 3\nt = { x = 1, y.z = \"s\" }\ne = {}\nempty = []\n",
                     "dotted keys, quoted keys, inline tables");
        const TomlValue *ab = get(get(v, "a"), "b");
        ok(ab && ab->n_keys == 2, "dotted keys build nested tables");
        ok(get(v, "q.k") && get(v, "q.k")->integer == 3, "quoted key with a dot is one key");
        ok(get(get(get(v, "t"), "y"), "z") != NULL, "dotted key in an inline table");
        is_int(get(v, "e")->n_keys, 0, "empty inline table");
        is_int(get(v, "empty")->n_items, 0, "empty array");
        toml_free(v);

        v = parse_ok("\xef\xbb\xbf" "a = 1\r\nb = 2\r\n", "BOM and CRLF");
        is_int(get(v, "b")->integer, 2, "CRLF lines");
        toml_free(v);
        v = parse_ok("", "empty document");
        is_int(v->n_keys, 0, "no keys");
        toml_free(v);
        v = parse_ok("[a.b]\nx = 1\n[a]\ny = 2\n", "super-table defined after its child");
        is_int(get(v, "a")->n_keys, 2, "both keys in a");
        toml_free(v);

        parse_bad("a = 1\na = 2\n", "line 2, column 5: duplicate key \"a\" (first defined on line 1)");
        parse_bad("[t]\n[t]\n", "table \"t\" is defined twice");
        parse_bad("a = 1\n[a]\n", "key \"a\" is not a table (it is the integer defined on line 1)");
        parse_bad("a.b.c = 1\n[a.b]\n", "defined twice");
        parse_bad("t = {x = 1}\n[t]\n", "defined twice");
        parse_bad("t = {x = 1}\nt.y = 2\n", "inline table");
        parse_bad("a = \"\"\"multi\"\"\"\n", "multi-line strings are not supported");
        parse_bad("a = '''multi'''\n", "multi-line strings are not supported");
        parse_bad("a = 1.5\n", "floats are not supported");
        parse_bad("a = 1e3\n", "floats are not supported");
        parse_bad("a = inf\n", "floats are not supported");
        parse_bad("a = -nan\n", "floats are not supported");
        parse_bad("a = 1979-05-27\n", "dates and times are not supported");
        parse_bad("a = 0x1f\n", "hexadecimal");
        parse_bad("a = 012\n", "leading zeros");
        parse_bad("a = 1__0\n", "'_' in an integer");
        parse_bad("a = 9223372036854775808\n", "out of the 64-bit range");
        parse_bad("[[arr]]\n", "arrays of tables");
        parse_bad("a = \"unterminated\n", "unterminated string");
        parse_bad("a = \"bad \\q escape\"\n", "invalid escape sequence \\q");
        parse_bad("a = \"\\u12\"\n", "needs 4 hex digits");
        parse_bad("a = \"\\uD800\"\n", "not a Unicode scalar value");
        parse_bad("a = \"\\u0000\"\n", "\\u0000");
        parse_bad("a = \"ctl \x01\"\n", "control character 0x01 in a string");
        parse_bad("# comment \x7f\n", "control character 0x7f in a comment");
        parse_bad("a = 1 b = 2\n", "unexpected 'b' after the value");
        parse_bad("a = \n", "expected a value");
        parse_bad("a = bare\n", "expected a value");
        parse_bad("= 1\n", "expected a key");
        parse_bad("a 1\n", "expected '=' after the key \"a\"");
        parse_bad("a = [1, 2\n", "unterminated array");
        parse_bad("a = [1 2]\n", "expected ',' or ']'");
        parse_bad("a = {x = 1,}\n", "trailing comma");
        parse_bad("a = {x = 1\n}\n", "newlines are not allowed");
        parse_bad("[t\n", "expected ']'");
        parse_bad("a = 1\rb = 2\n", "carriage return without a line feed");
        parse_bad("a = \"\xc3\x28\"\n", "line 1, column 6: invalid UTF-8");
        parse_bad("a = \"x\"\n\xed\xa0\x80 = 1\n", "line 2, column 1: invalid UTF-8");
        const char nul[] = "a = 1\nb\0 = 2\n";
        TomlValue *nv = NULL;
        ErrMsg err = {};
        is_int(toml_parse(nul, sizeof(nul) - 1, &nv, &err), -EINVAL, "NUL byte refused");
        has_str(err.text, "line 2, column 2: a NUL byte", "  message");

        /* nesting limits */
        char deep[200];
        memset(deep, '[', 40);
        strcpy(deep, "a = ");
        memset(deep + 4, '[', 40);
        deep[44] = 0;
        parse_bad(deep, "nested more than 32 deep");
        char keys[300] = "";
        for (int i = 0; i < 40; i++)
                strcat(keys, i ? ".k" : "k");
        strcat(keys, " = 1\n");
        parse_bad(keys, "more than 32 parts");
        /* too large */
        size_t big = TOML_MAX_SIZE + 1;
        char *huge = calloc(1, big);
        memset(huge, '#', big);
        is_int(toml_parse(huge, big, &nv, &err), -EFBIG, "a document over 1 MiB is refused");
        free(huge);
        /* a table with too many keys */
        StrBuf many = {};
        for (int i = 0; i < 4097; i++)
                strbuf_printf(&many, "k%d = 1\n", i);
        is_int(toml_parse(many.data, many.len, &nv, &err), -EINVAL, "a table with 4097 keys is refused");
        has_str(err.text, "more than 4096 keys", "  message");
        strbuf_done(&many);
        is_str(toml_type_to_string(TOML_ARRAY), "array", "type names");
        return done();
}
