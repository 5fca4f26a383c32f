/* One datagram with at most one file descriptor over SOCK_SEQPACKET.
 * Every fd received is O_CLOEXEC (MSG_CMSG_CLOEXEC); a datagram that does
 * not fit, or that carries more than one fd, is refused and every fd that
 * came with it is closed. No state: any thread. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Sends buf as one datagram, with fd attached when fd >= 0. Returns 0 or
 * -errno (-EPIPE when the peer is gone). */
int fdpass_send(int sock, const void *buf, size_t len, int fd);

/* Receives one datagram. Returns its length (0: the peer closed), or
 * -EMSGSIZE (truncated), -EBADMSG (more than one fd, or a control message
 * that is not SCM_RIGHTS), -errno. *ret_fd is the fd that came with it or
 * -EBADF. */
ssize_t fdpass_recv(int sock, void *buf, size_t size, int *ret_fd);
