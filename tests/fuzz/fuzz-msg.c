/* libFuzzer target: the nanopb Envelope decoder, which reads the control
 * socket (holdfastctl -> supervisor) and the worker socket; both carry
 * untrusted bytes. Decoding must never crash; what it accepts must
 * re-encode. */
#include <pb_encode.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/ipc/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        holdfast_Envelope e;
        if (size > HOLDFAST_MSG_MAX)
                return 0;
        if (msg_decode(data, size, &e) < 0)
                return 0;
        /* strings are NUL-terminated within their caps */
        if (e.which_msg == holdfast_Envelope_ctl_request_tag &&
            (strnlen(e.msg.ctl_request.source, sizeof(e.msg.ctl_request.source)) == sizeof(e.msg.ctl_request.source) ||
             strnlen(e.msg.ctl_request.mountpoint, sizeof(e.msg.ctl_request.mountpoint)) == sizeof(e.msg.ctl_request.mountpoint)))
                abort();
        if (e.which_msg == holdfast_Envelope_mount_tag && e.msg.mount.init.size > sizeof(e.msg.mount.init.bytes))
                abort();
        uint8_t out[HOLDFAST_MSG_MAX];
        pb_ostream_t os = pb_ostream_from_buffer(out, sizeof(out));
        if (!pb_encode(&os, holdfast_Envelope_fields, &e))
                abort();
        return 0;
}
