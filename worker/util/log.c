/* Logging to stderr (see log.h). Any thread; the rate limiters share one
 * mutex, taken only for the bookkeeping, never around the write. */
#include "worker/util/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int max_level = LOG_LVL_INFO;
static pthread_mutex_t rl_lock = PTHREAD_MUTEX_INITIALIZER;

void log_setup(void) {
        if (getenv("HOLDFAST_DEBUG"))
                max_level = LOG_LVL_DEBUG;
}

void log_full(int level, int err, const char *fmt, ...) {
        static const char *const names[] = { "error: ", "warning: ", "", "debug: " };
        if (level > max_level)
                return;
        char line[2048];
        int n;
        if (max_level >= LOG_LVL_DEBUG) {
                /* HOLDFAST_DEBUG: every line with the monotonic clock, to
                 * line it up with other processes' timelines */
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                n = snprintf(line, sizeof(line), "holdfast-worker[%d]: %lld.%06ld %s", (int) getpid(),
                             (long long) ts.tv_sec, ts.tv_nsec / 1000, names[level]);
        } else
                n = snprintf(line, sizeof(line), "holdfast-worker[%d]: %s", (int) getpid(), names[level]);
        va_list ap;
        va_start(ap, fmt);
        /* vsnprintf expands %m from errno */
        int saved = errno;
        errno = err < 0 ? -err : saved;
        _Pragma("GCC diagnostic push")
        _Pragma("GCC diagnostic ignored \"-Wformat-nonliteral\"")
        int m = vsnprintf(line + n, sizeof(line) - (size_t) n - 1, fmt, ap);
        _Pragma("GCC diagnostic pop")
        errno = saved;
        va_end(ap);
        size_t len = (size_t) n + (m < 0 ? 0 : MIN((size_t) m, sizeof(line) - (size_t) n - 2));
        line[len++] = '\n';
        ssize_t _unused_ w = write(STDERR_FILENO, line, len);
}

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

bool log_ratelimit_test(LogRatelimit *rl, unsigned *ret_suppressed) {
        uint64_t now = now_ms();
        bool ok;
        pthread_mutex_lock(&rl_lock);
        if (rl->begin_ms == 0 || now - rl->begin_ms >= rl->interval_ms) {
                rl->begin_ms = now;
                rl->emitted = 0;
        }
        ok = rl->emitted < rl->burst;
        if (ok) {
                rl->emitted++;
                *ret_suppressed = rl->suppressed;
                rl->suppressed = 0;
        } else
                rl->suppressed++;
        pthread_mutex_unlock(&rl_lock);
        return ok;
}
