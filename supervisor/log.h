/* The supervisor's logging: one line per event on stderr, which is the
 * journal under systemd (JOURNAL_STREAM set: lines carry a <N> priority
 * prefix). Header only. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG_PRI_ERR 3
#define LOG_PRI_WARNING 4
#define LOG_PRI_INFO 6

#define log_at(pri, fmt, ...)                                                               \
        do {                                                                                \
                if (getenv("JOURNAL_STREAM"))                                               \
                        fprintf(stderr, "<%d>" fmt "\n", pri, ##__VA_ARGS__);               \
                else                                                                        \
                        fprintf(stderr, "holdfast-supervisor[%d]: " fmt "\n", (int) getpid(), \
                                ##__VA_ARGS__);                                             \
        } while (0)
#define log_info(fmt, ...) log_at(LOG_PRI_INFO, fmt, ##__VA_ARGS__)
#define log_warning(fmt, ...) log_at(LOG_PRI_WARNING, fmt, ##__VA_ARGS__)
#define log_error(fmt, ...) log_at(LOG_PRI_ERR, fmt, ##__VA_ARGS__)
#define log_error_errno(r, fmt, ...) log_at(LOG_PRI_ERR, fmt ": %s", ##__VA_ARGS__, strerror(-(r)))
