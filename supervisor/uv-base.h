/* <uv.h> for the supervisor: it pulls in <sys/param.h>, whose MIN/MAX
 * clash with common/util/macro.h's. Include this before macro.h. */
#pragma once

#include <uv.h>
#undef MIN
#undef MAX
#include "common/util/macro.h"

#include <fcntl.h>

/* uv_poll_init() makes its fd non-blocking. Our sends on the worker and
 * control sockets are blocking with a deadline (SO_SNDTIMEO), so that a
 * burst (a thousand MountRecords or MountInfos) waits for the peer to read
 * instead of failing with EAGAIN once the socket buffer is full; this puts
 * the fd back. Safe: libuv never reads or writes a polled fd itself, and we
 * read only when it is readable. */
static inline int fd_blocking_after_uv_poll(int fd) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
                return -errno;
        return 0;
}
