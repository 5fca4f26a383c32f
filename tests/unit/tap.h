/* A tiny TAP (Test Anything Protocol) producer for the unit tests.
 *
 * plan(n) announces n tests up front (or call done() alone to print the
 * plan at the end); ok(), is_int(), is_str() and has_str() each print one
 * "ok N - ..." / "not ok N - ..." line; diag() prints a "# " comment;
 * done() returns the exit status for main(). Single-threaded. */
#pragma once

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static unsigned tap_run, tap_failed, tap_planned;

_Pragma("GCC diagnostic push")
_Pragma("GCC diagnostic ignored \"-Wunused-function\"")

static void plan(unsigned n) {
        tap_planned = n;
        printf("1..%u\n", n);
        fflush(stdout);
}

__attribute__((format(printf, 1, 0)))
static void tap_vdiag(const char *fmt, va_list ap) {
        char buf[2048];
        vsnprintf(buf, sizeof(buf), fmt, ap);
        /* one "# " per line, so that a message with newlines stays a comment */
        for (char *line = buf, *nl; line; line = nl) {
                nl = strchr(line, '\n');
                if (nl)
                        *nl++ = 0;
                printf("# %s\n", line);
        }
        fflush(stdout);
}

__attribute__((format(printf, 1, 2)))
static void diag(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        tap_vdiag(fmt, ap);
        va_end(ap);
}

__attribute__((format(printf, 4, 0)))
static bool tap_vok(bool pass, const char *file, int line, const char *fmt, va_list ap) {
        char name[1024];
        vsnprintf(name, sizeof(name), fmt, ap);
        for (char *p = name; *p; p++)
                if (*p == '\n' || *p == '#')
                        *p = ' ';
        tap_run++;
        printf("%s %u - %s\n", pass ? "ok" : "not ok", tap_run, name);
        if (!pass) {
                tap_failed++;
                printf("#   Failed at %s:%d\n", file, line);
        }
        fflush(stdout);
        return pass;
}

__attribute__((format(printf, 4, 5)))
static bool tap_ok(bool pass, const char *file, int line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bool r = tap_vok(pass, file, line, fmt, ap);
        va_end(ap);
        return r;
}

__attribute__((format(printf, 5, 6)))
static bool tap_is_int(intmax_t got, intmax_t want, const char *file, int line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bool r = tap_vok(got == want, file, line, fmt, ap);
        va_end(ap);
        if (!r)
                diag("       got: %jd\n  expected: %jd", got, want);
        return r;
}

__attribute__((format(printf, 5, 6)))
static bool tap_is_str(const char *got, const char *want, const char *file, int line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bool pass = got && want ? strcmp(got, want) == 0 : got == want;
        bool r = tap_vok(pass, file, line, fmt, ap);
        va_end(ap);
        if (!r)
                diag("       got: '%s'\n  expected: '%s'", got ? got : "(null)", want ? want : "(null)");
        return r;
}

/* Passes when `needle` occurs in `haystack`: for error messages. */
__attribute__((format(printf, 5, 6)))
static bool tap_has_str(const char *haystack, const char *needle, const char *file, int line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bool r = tap_vok(haystack && strstr(haystack, needle), file, line, fmt, ap);
        va_end(ap);
        if (!r)
                diag("  '%s'\n  does not contain '%s'", haystack ? haystack : "(null)", needle);
        return r;
}

/* Returns the exit status for main(). */
static int done(void) {
        if (!tap_planned)
                printf("1..%u\n", tap_run);
        else if (tap_run != tap_planned)
                diag("planned %u tests but ran %u", tap_planned, tap_run);
        if (tap_failed)
                diag("failed %u of %u tests", tap_failed, tap_run);
        fflush(stdout);
        return tap_failed || (tap_planned && tap_run != tap_planned) ? 1 : 0;
}

_Pragma("GCC diagnostic pop")

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define is_int(got, want, ...) tap_is_int((intmax_t) (got), (intmax_t) (want), __FILE__, __LINE__, __VA_ARGS__)
#define is_str(got, want, ...) tap_is_str((got), (want), __FILE__, __LINE__, __VA_ARGS__)
#define has_str(haystack, needle, ...) tap_has_str((haystack), (needle), __FILE__, __LINE__, __VA_ARGS__)
