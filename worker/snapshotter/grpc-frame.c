/* gRPC length-prefixed messages and grpc-message encoding
 * (worker/snapshotter/grpc-frame.h). Pure functions of their arguments. */
#include "worker/snapshotter/grpc-frame.h"

#include <errno.h>
#include <string.h>

int grpc_frame_peek(const uint8_t *buf, size_t size, size_t max, uint32_t *ret_len) {
        if (size < GRPC_FRAME_HEADER_SIZE)
                return 0;
        if (buf[0] == 1)
                return -EPROTONOSUPPORT;
        if (buf[0] != 0)
                return -EBADMSG;
        uint32_t len = (uint32_t) buf[1] << 24 | (uint32_t) buf[2] << 16 | (uint32_t) buf[3] << 8 | buf[4];
        if (len > max)
                return -EMSGSIZE;
        *ret_len = len;
        return 1;
}

int grpc_frame_single(const uint8_t *buf, size_t size, size_t max, const uint8_t **ret_msg, size_t *ret_len) {
        uint32_t len;
        int r = grpc_frame_peek(buf, size, max, &len);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG; /* no message, or a cut prefix */
        if (size - GRPC_FRAME_HEADER_SIZE != len)
                return -EBADMSG; /* truncated, or a second message */
        *ret_msg = buf + GRPC_FRAME_HEADER_SIZE;
        *ret_len = len;
        return 0;
}

void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_SIZE], uint32_t len) {
        out[0] = 0;
        out[1] = (uint8_t) (len >> 24);
        out[2] = (uint8_t) (len >> 16);
        out[3] = (uint8_t) (len >> 8);
        out[4] = (uint8_t) len;
}

void grpc_status_message_encode(const char *in, char *out, size_t size) {
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *c = (const unsigned char *) in; *c; c++) {
                if (*c >= 0x20 && *c <= 0x7e && *c != '%') {
                        if (o + 1 >= size)
                                break;
                        out[o++] = (char) *c;
                } else {
                        if (o + 3 >= size)
                                break;
                        out[o++] = '%';
                        out[o++] = hex[*c >> 4];
                        out[o++] = hex[*c & 15];
                }
        }
        out[o] = 0;
}
