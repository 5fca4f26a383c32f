/* nanopb encode/decode of Envelopes; the one place pb_ errors become
 * errno values. */
#include "common/ipc/msg.h"

#include <errno.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <unistd.h>

#include "common/ipc/fdpass.h"

int msg_send(int sock, holdfast_Envelope *e, int fd) {
        uint8_t buf[HOLDFAST_MSG_MAX];
        e->version = HOLDFAST_PROTO_VERSION;
        pb_ostream_t os = pb_ostream_from_buffer(buf, sizeof(buf));
        if (!pb_encode(&os, holdfast_Envelope_fields, e))
                return -EMSGSIZE;
        return fdpass_send(sock, buf, os.bytes_written, fd);
}

int msg_decode(const void *buf, size_t len, holdfast_Envelope *e) {
        *e = (holdfast_Envelope) holdfast_Envelope_init_zero;
        pb_istream_t is = pb_istream_from_buffer(buf, len);
        if (!pb_decode(&is, holdfast_Envelope_fields, e))
                return -EBADMSG;
        if (e->version != HOLDFAST_PROTO_VERSION)
                return -EPROTO;
        return 0;
}

int msg_recv(int sock, holdfast_Envelope *e, int *ret_fd) {
        uint8_t buf[HOLDFAST_MSG_MAX];
        ssize_t n = fdpass_recv(sock, buf, sizeof(buf), ret_fd);
        if (n <= 0)
                return (int) n;
        int r = msg_decode(buf, (size_t) n, e);
        if (r < 0) {
                if (*ret_fd >= 0)
                        close(*ret_fd);
                *ret_fd = -EBADF;
                return r;
        }
        return 1;
}
