/* Listening unix sockets (listen.h). */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/ipc/listen.h"
#include "common/util/macro.h"

int ipc_listen_unix(const char *path, int type, bool mkdir_parent) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (!path[0])
                return -EINVAL;
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        if (mkdir_parent) {
                char *slash = strrchr(sa.sun_path, '/');
                if (slash && slash != sa.sun_path) {
                        *slash = 0;
                        if (mkdir(sa.sun_path, 0711) < 0 && errno != EEXIST)
                                return -errno;
                        *slash = '/';
                }
        }
        _cleanup_close_ int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        /* A socket left by a server that died is stale; a live one would
         * answer connect(). */
        _cleanup_close_ int probe = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                return -EADDRINUSE;
        /* only a socket is replaced: a path naming anything else is a mistake */
        struct stat st;
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                unlink(path);
        }
        mode_t old = umask(0177);
        int r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
        umask(old);
        if (r < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0)
                return -errno;
        return TAKE_FD(fd);
}
