/* Logging for holdfast-worker: one line per message on stderr, prefixed
 * "holdfast-worker[PID]: ". Only the worker's wiring and the FUSE engine
 * (where a request's error is answered) log; the modules under common/
 * never do. Thread-safe: each line is one write(2). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/util/macro.h"

enum { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Messages above this level are dropped; LOG_LVL_INFO unless
 * HOLDFAST_DEBUG is set in the environment. */
void log_setup(void);

/* Formats like printf; "%m" is strerror(-err) when err < 0. */
void log_full(int level, int err, const char *fmt, ...) _printf_(3, 4);

/* A token bucket for one call site: at most `burst` messages per
 * `interval_ms`; the number dropped is reported with the next one. */
typedef struct LogRatelimit {
        uint64_t interval_ms;
        unsigned burst;
        uint64_t begin_ms;     /* protected by the log lock */
        unsigned emitted;      /* protected by the log lock */
        unsigned suppressed;   /* protected by the log lock */
} LogRatelimit;

/* Returns true when a message may be emitted now; *ret_suppressed is the
 * count dropped since the last one that was. */
bool log_ratelimit_test(LogRatelimit *rl, unsigned *ret_suppressed);

#define log_error_errno(err, ...) log_full(LOG_LVL_ERR, (err), __VA_ARGS__)
#define log_warn_errno(err, ...) log_full(LOG_LVL_WARN, (err), __VA_ARGS__)
#define log_error(...) log_full(LOG_LVL_ERR, 0, __VA_ARGS__)
#define log_warn(...) log_full(LOG_LVL_WARN, 0, __VA_ARGS__)
#define log_info(...) log_full(LOG_LVL_INFO, 0, __VA_ARGS__)
#define log_debug(...) log_full(LOG_LVL_DEBUG, 0, __VA_ARGS__)

/* Per-request warnings: 10 per 5 s per call site. */
#define log_warn_ratelimited(err, fmt, ...)                                                              \
        do {                                                                                             \
                static LogRatelimit _rl = { .interval_ms = 5000, .burst = 10 };                         \
                unsigned _sup;                                                                           \
                if (log_ratelimit_test(&_rl, &_sup)) {                                                   \
                        if (_sup > 0)                                                                    \
                                log_warn("(%u similar messages suppressed)", _sup);                      \
                        log_full(LOG_LVL_WARN, (err), fmt, ##__VA_ARGS__);                               \
                }                                                                                        \
        } while (0)
