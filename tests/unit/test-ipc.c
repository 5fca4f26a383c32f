/* common/ipc: SCM_RIGHTS datagrams and the nanopb message codec. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/ipc/fdpass.h"
#include "common/ipc/msg.h"
#include "tap.h"

static int count_fds(void) {
        int n = 0;
        for (int fd = 0; fd < 1024; fd++)
                if (fcntl(fd, F_GETFD) >= 0)
                        n++;
        return n;
}

static void test_fdpass(void) {
        int sp[2];
        ok(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
        int p[2];
        ok(pipe2(p, O_CLOEXEC) == 0, "pipe");

        is_int(fdpass_send(sp[0], "hello", 5, p[1]), 0, "send with an fd");
        char buf[64];
        int fd;
        ssize_t n = fdpass_recv(sp[1], buf, sizeof(buf), &fd);
        is_int(n, 5, "datagram length");
        ok(memcmp(buf, "hello", 5) == 0, "datagram bytes");
        ok(fd >= 0, "an fd arrived");
        ok(fcntl(fd, F_GETFD) & FD_CLOEXEC, "the received fd is O_CLOEXEC");
        ok(write(fd, "x", 1) == 1, "the fd is the pipe's write end");
        char c = 0;
        ok(read(p[0], &c, 1) == 1 && c == 'x', "bytes went through the passed fd");
        close(fd);

        is_int(fdpass_send(sp[0], "no fd", 5, -1), 0, "send without an fd");
        n = fdpass_recv(sp[1], buf, sizeof(buf), &fd);
        ok(n == 5 && fd == -EBADF, "no fd: -EBADF");

        /* a datagram larger than the buffer is refused, and its fd closed */
        char big[256] = { 1 };
        int before = count_fds();
        is_int(fdpass_send(sp[0], big, sizeof(big), p[1]), 0, "send a large datagram with an fd");
        n = fdpass_recv(sp[1], buf, 16, &fd);
        is_int(n, -EMSGSIZE, "truncated datagram refused");
        is_int(fd, -EBADF, "no fd handed out on truncation");
        is_int(count_fds(), before, "the fd that came with it was closed");

        /* two fds in one datagram: refused, both closed */
        struct iovec iov = { .iov_base = "2", .iov_len = 1 };
        union {
                struct cmsghdr a;
                char b[CMSG_SPACE(2 * sizeof(int))];
        } ctl = {};
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
        int two[2] = { p[0], p[1] };
        memcpy(CMSG_DATA(cm), two, sizeof(two));
        ok(sendmsg(sp[0], &mh, 0) == 1, "send two fds");
        n = fdpass_recv(sp[1], buf, sizeof(buf), &fd);
        is_int(n, -EBADMSG, "two fds refused");
        is_int(count_fds(), before, "both received fds were closed");

        close(sp[0]);
        n = fdpass_recv(sp[1], buf, sizeof(buf), &fd);
        is_int(n, 0, "peer closed: 0");
        close(sp[1]);
        close(p[0]);
        close(p[1]);
}

static void test_msg(void) {
        int sp[2];
        ok(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
        holdfast_Envelope e = holdfast_Envelope_init_zero;
        e.which_msg = holdfast_Envelope_mount_tag;
        e.msg.mount.id = 42;
        strcpy(e.msg.mount.mountpoint, "/mnt/x");
        strcpy(e.msg.mount.source, "/var/lib/blob");
        e.msg.mount.initialized = true;
        e.msg.mount.init.size = 3;
        memcpy(e.msg.mount.init.bytes, "abc", 3);
        int p[2];
        ok(pipe2(p, O_CLOEXEC) == 0, "pipe");
        is_int(msg_send(sp[0], &e, p[0]), 0, "msg_send");

        holdfast_Envelope got;
        int fd;
        is_int(msg_recv(sp[1], &got, &fd), 1, "msg_recv");
        is_int(got.version, HOLDFAST_PROTO_VERSION, "version set by msg_send");
        is_int(got.which_msg, holdfast_Envelope_mount_tag, "which");
        ok(got.msg.mount.id == 42 && strcmp(got.msg.mount.mountpoint, "/mnt/x") == 0 &&
                   strcmp(got.msg.mount.source, "/var/lib/blob") == 0 && got.msg.mount.initialized &&
                   got.msg.mount.init.size == 3 && memcmp(got.msg.mount.init.bytes, "abc", 3) == 0,
           "fields round trip");
        ok(fd >= 0, "fd round trip");
        close(fd);

        /* garbage and a wrong version are refused, their fd closed */
        int before = count_fds();
        is_int(fdpass_send(sp[0], "\xff\xff\xff\xff", 4, p[1]), 0, "send garbage with an fd");
        is_int(msg_recv(sp[1], &got, &fd), -EBADMSG, "garbage refused");
        is_int(fd, -EBADF, "no fd for garbage");
        is_int(count_fds(), before, "its fd closed");
        uint8_t v2[] = { 0x08, 0x02 }; /* version = 2 */
        is_int(msg_decode(v2, sizeof(v2), &got), -EPROTO, "another protocol version refused");
        /* a string over its cap */
        uint8_t longstr[5000];
        size_t k = 0;
        longstr[k++] = 0x08;
        longstr[k++] = 0x01;
        longstr[k++] = (10 << 3) | 2; /* ctl_request */
        longstr[k++] = 0x80 | ((4100 + 3) & 0x7f);
        longstr[k++] = (uint8_t) ((4100 + 3) >> 7);
        longstr[k++] = (2 << 3) | 2; /* source */
        longstr[k++] = 0x80 | (4100 & 0x7f);
        longstr[k++] = (uint8_t) (4100 >> 7);
        memset(longstr + k, 'a', 4100);
        k += 4100;
        is_int(msg_decode(longstr, k, &got), -EBADMSG, "a string over its size cap is refused");
        close(p[0]);
        close(p[1]);
        close(sp[0]);
        close(sp[1]);
}

int main(void) {
        test_fdpass();
        test_msg();
        return done();
}
