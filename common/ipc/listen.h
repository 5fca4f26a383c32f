/* A listening unix socket at a path, for the sockets holdfast serves (the
 * supervisor's control socket, containerd's snapshotter socket). Never
 * logs. */
#pragma once

#include <stdbool.h>

/* Binds a socket of type (SOCK_STREAM, SOCK_SEQPACKET) at path with mode
 * 0600 and listens, O_CLOEXEC and O_NONBLOCK. A socket file left by a
 * dead server is replaced; one a live server answers on is not
 * (-EADDRINUSE), nor is anything but a socket (-EEXIST). When mkdir_parent, a missing parent directory is made
 * (0711). Returns the fd, or -errno. */
int ipc_listen_unix(const char *path, int type, bool mkdir_parent);
