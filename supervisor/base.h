/* What every supervisor file uses: the C library basics, <uv.h> (whose
 * <sys/param.h> MIN/MAX clash with common/util/macro.h's), container_of,
 * logging, and the blocking sockets of uv_poll_init_blocking(). Header
 * only. */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#undef MIN
#undef MAX
#include "common/util/macro.h"

/* From a handle embedded in its owner to the owner. */
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

/* One line per event on stderr, which is the journal under systemd
 * (JOURNAL_STREAM set: lines carry a <N> priority prefix). */
#define log_at(pri, fmt, ...)                                                                       \
        do {                                                                                        \
                if (getenv("JOURNAL_STREAM"))                                                       \
                        fprintf(stderr, "<%d>" fmt "\n", pri, ##__VA_ARGS__);                       \
                else                                                                                \
                        fprintf(stderr, "holdfast-supervisor[%d]: " fmt "\n", (int) getpid(),       \
                                ##__VA_ARGS__);                                                     \
        } while (0)
#define log_info(fmt, ...) log_at(6, fmt, ##__VA_ARGS__)
#define log_warning(fmt, ...) log_at(4, fmt, ##__VA_ARGS__)
#define log_error(fmt, ...) log_at(3, fmt, ##__VA_ARGS__)
#define log_error_errno(r, fmt, ...) log_at(3, fmt ": %s", ##__VA_ARGS__, strerror(-(r)))

/* uv_poll_init() for a socket we send on blocking, with a deadline of
 * timeout_s both ways (SO_SNDTIMEO, SO_RCVTIMEO): a burst (a thousand
 * MountRecords or MountInfos) then waits for the peer to read instead of
 * failing with EAGAIN once the socket buffer is full, and a peer that never
 * reads cannot hold the loop longer than the deadline. uv_poll_init() makes
 * the fd non-blocking; this puts it back. Safe: libuv never reads or writes
 * a polled fd itself, and we read only when it is readable. Should that
 * fcntl fail, the socket stays non-blocking and a full buffer is a send
 * error. A failure leaves h uninitialized. */
static inline int uv_poll_init_blocking(uv_loop_t *loop, uv_poll_t *h, int fd, time_t timeout_s) {
        struct timeval tv = { .tv_sec = timeout_s };
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                return -errno;
        int r = uv_poll_init(loop, h, fd);
        if (r < 0)
                return r;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
                fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        return 0;
}
